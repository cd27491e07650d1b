//! Which file an exec will really run on the host, asked of the host
//! itself: a bare name goes through the login shell's PATH (`command -v`
//! in a side exec on blastgate's own upstream connection, the way the
//! agent's exec will look it up), a relative path is taken from the
//! login's home (where sshd starts the command). Answers are cached per
//! target in [`HostMemory`](super::hosts::HostMemory) until an agent
//! writes something there. Whatever cannot be told is left empty, and the
//! shipped policies hold it.

use std::time::Duration;

use russh::ChannelMsg;

use super::{command::ExecCommand, context::SshContext, hosts, upstream, SshTarget, Upstream};
use crate::protocols::gateway::Gateway;

/// Longest answer read from a side exec: a path or two.
const MAX_ANSWER: usize = 4096;
/// How long a side exec may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(15);

/// Prefix of the errors that mean the host could not be reached at all
/// (rather than that it gave no usable answer).
const UNREACHABLE: &str = "upstream: ";

/// The parts of a session a lookup needs.
pub struct Host<'a> {
    pub gw: &'a Gateway,
    pub cfg: &'a SshTarget,
    pub upstream: &'a Upstream,
}

impl Host<'_> {
    fn target(&self) -> &str {
        &self.gw.target.name
    }

    /// The login's home directory (sshd's working directory for commands
    /// and sftp); learned with the login shell's PATH.
    pub async fn home(&self) -> Result<String, String> {
        let memory = &self.gw.services.ssh_hosts;
        if let Some(home) = memory.home(self.target()) {
            return Ok(home);
        }
        let answer = self.ask("pwd && printf '%s\\n' \"$PATH\"").await?;
        let mut lines = answer.lines();
        let home = lines.next().unwrap_or_default().to_string();
        if !home.starts_with('/') {
            return Err(format!("the host's working directory is {home:?}"));
        }
        let dirs = lines
            .next()
            .unwrap_or_default()
            .split(':')
            .filter_map(|d| {
                d.starts_with('/')
                    .then(|| hosts::normalize("/", d))
                    .flatten()
            })
            .collect();
        memory.set_home(self.target(), &home, dirs);
        Ok(home)
    }

    /// What the login shell runs for the bare `name`, if it is a file.
    async fn lookup(&self, name: &str) -> Result<String, String> {
        let memory = &self.gw.services.ssh_hosts;
        if let Some(path) = memory.resolved(self.target(), name) {
            return Ok(path);
        }
        if !plain_name(name) {
            return Err(format!("{name:?} is not a plain program name"));
        }
        let path = self.ask(&format!("command -v -- {name}")).await?;
        if path.contains('\n') {
            return Err(format!("{name}: more than one answer"));
        }
        // Builtins, functions, aliases and keywords answer with their name.
        let path = match hosts::normalize("/", &path) {
            Some(p) if path.starts_with('/') && p == path => p,
            _ => return Err(format!("{name} is not a file on the host ({path:?})")),
        };
        memory.remember(self.target(), name, &path);
        Ok(path)
    }

    /// Fills the exec facts of `ctx` for `cmd`: the path that will run,
    /// whether it lies in a directory of the host's PATH, whether an agent
    /// wrote it or the paths among its arguments.
    /// Err: the host cannot be reached, so nothing can run there.
    pub async fn program(&self, cmd: &ExecCommand, ctx: &mut SshContext) -> Result<(), String> {
        let memory = &self.gw.services.ssh_hosts;
        let typed = cmd.program.as_str();
        let path = if typed.contains('/') {
            let has_dotdot = typed.split('/').any(|p| p == "..");
            match (typed.starts_with('/'), has_dotdot) {
                (_, true) => None,
                (true, false) => hosts::normalize("/", typed),
                (false, false) => {
                    unreached(self.home().await)?.and_then(|home| hosts::normalize(&home, typed))
                }
            }
        } else {
            match self.lookup(typed).await {
                Ok(path) => Some(path),
                Err(why) if why.starts_with(UNREACHABLE) => return Err(why),
                Err(why) => {
                    tracing::info!("ssh: {why}");
                    None
                }
            }
        };
        let Some(path) = path else { return Ok(()) };
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        // In a PATH directory (any of them: a system copy behind a newer
        // one in /usr/local/bin is still installed, not uploaded).
        ctx.program_on_path = match self.home().await {
            Ok(_) => memory.on_path(self.target(), hosts::parent(&path)),
            Err(_) => false,
        };
        ctx.uploaded = memory.uploaded(self.target(), &path);
        if let Ok(home) = self.home().await {
            ctx.uploaded_args = cmd
                .args
                .iter()
                .filter(|a| !a.starts_with('-'))
                .filter(|a| {
                    hosts::normalize(&home, a).is_some_and(|p| memory.touched(self.target(), &p))
                })
                .cloned()
                .collect();
        }
        ctx.program = path;
        ctx.program_name = name;
        Ok(())
    }

    /// Runs `command` on the host over blastgate's own connection: its
    /// stdout, trimmed, if it exits 0.
    pub(super) async fn ask(&self, command: &str) -> Result<String, String> {
        // A cut session (shutdown, a reload) asks no more: the channel
        // waiting on the answer ends with it.
        let tasks = &self.gw.tasks;
        tokio::select! {
            answer = self.ask_host(command) => answer,
            _ = tasks.cancelled() => Err(format!(
                "{command:?}: not asked: {}",
                tasks.why()
            )),
        }
    }

    async fn ask_host(&self, command: &str) -> Result<String, String> {
        let mut ch = upstream::session_channel(self.gw, self.cfg, self.upstream)
            .await
            .map_err(|e| format!("{UNREACHABLE}{e}"))?;
        ch.exec(true, command.as_bytes())
            .await
            .map_err(|e| format!("side exec: {e}"))?;
        let read = async {
            let mut out = Vec::new();
            let mut status = None;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        if out.len() + data.len() > MAX_ANSWER {
                            return Err(format!("{command:?}: answer over {MAX_ANSWER} bytes"));
                        }
                        out.extend_from_slice(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            Ok((out, status))
        };
        let (out, status) = tokio::time::timeout(ASK_TIMEOUT, read)
            .await
            .map_err(|_| format!("{command:?}: no answer within {ASK_TIMEOUT:?}"))??;
        let _ = ch.close().await;
        if status != Some(0) {
            return Err(format!("{command:?}: exit status {status:?}"));
        }
        let text = String::from_utf8(out).map_err(|_| format!("{command:?}: not UTF-8"))?;
        Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
    }
}

/// The home directory, or why the host gave none; Err only when it could
/// not be reached.
fn unreached(home: Result<String, String>) -> Result<Option<String>, String> {
    match home {
        Ok(home) => Ok(Some(home)),
        Err(why) if why.starts_with(UNREACHABLE) => Err(why),
        Err(why) => {
            tracing::info!("ssh: {why}");
            Ok(None)
        }
    }
}

/// A name safe to put on a shell line unquoted, and not an option.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_reach_the_host_shell() {
        for ok in ["git-upload-pack", "deploy.sh", "g++", "python3.11"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["", "-v", "a b", "a;b", "$(id)", "a'b", "x\ny", "é"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}

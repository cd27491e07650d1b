//! `[jobs]`: CI runner job hooks. Which local users may register a job
//! (the runner's account), where they do it, and whether a runner's
//! processes outside a registered, live job are refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file names beside the control socket and the spool directory when
/// `socket` and `state_file` are not set: a daemon with its own control
/// socket and spool (a test's, a second daemon's) then never shares a
/// jobs socket or state with the host's daemon.
const SOCKET_NAME: &str = "jobs.sock";
const STATE_NAME: &str = "jobs.json";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// The socket the runner's hooks register jobs on: mode 0666, but
    /// only root and `runners` are served (SO_PEERCRED). Unset:
    /// `jobs.sock` beside the control socket (`/run/blastgate/jobs.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// User names or uids allowed to register jobs. Unset: the `[enrol]
    /// uids` (a runner is the account its agents run as).
    #[serde(default)]
    pub runners: Option<Vec<RunnerRef>>,
    /// Refuse (and record) every connection of a runner uid's process that
    /// is not inside a registered, live job. Default: on when `runners` is
    /// set (off otherwise, so a config that only enrols uids keeps working
    /// as before it had jobs).
    #[serde(default)]
    pub require: Option<bool>,
    /// Registered jobs and spent tokens, kept across daemon restarts.
    /// Unset: `jobs.json` beside the spool directory
    /// (`/var/lib/blastgate/jobs.json`).
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

/// A runner account: `1001` or `"github-runner"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RunnerRef {
    Uid(u32),
    Name(String),
}

/// `name` in the directory that holds `beside`.
fn sibling(beside: &Path, name: &str) -> PathBuf {
    beside
        .parent()
        .map_or_else(|| PathBuf::from(name), |d| d.join(name))
}

impl JobsConfig {
    /// The jobs socket, given the control socket's path.
    pub fn socket_path(&self, control_socket: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| sibling(control_socket, SOCKET_NAME))
    }

    /// The state file, given the spool directory.
    pub fn state_path(&self, spool_dir: &Path) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| sibling(spool_dir, STATE_NAME))
    }

    /// The runner uids: `runners` resolved (a name that is no local user
    /// is an error: a typo must not silently let nobody register), or the
    /// enrolled uids.
    pub fn runner_uids(&self, enrolled: &[u32]) -> Result<Vec<u32>, String> {
        let Some(runners) = &self.runners else {
            return Ok(enrolled.to_vec());
        };
        runners
            .iter()
            .map(|r| match r {
                RunnerRef::Uid(u) => Ok(*u),
                RunnerRef::Name(n) => crate::identity::users::lookup(n)
                    .map(|u| u.uid)
                    .ok_or_else(|| format!("jobs.runners: no local user {n:?}")),
            })
            .collect()
    }

    /// Whether runner processes outside a live job are refused.
    pub fn require(&self) -> bool {
        self.require.unwrap_or(self.runners.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners_default_to_the_enrolled_uids_and_require_to_runners_being_named() {
        let c: JobsConfig = toml::from_str("").expect("empty");
        assert_eq!(c.runner_uids(&[1001]).expect("uids"), vec![1001]);
        assert!(!c.require(), "enrolled uids alone keep working as before");
        let c: JobsConfig = toml::from_str("runners = [0, 42]").expect("set");
        assert!(c.require());
        let c: JobsConfig = toml::from_str("runners = [0, 42]\nrequire = false").expect("set");
        assert_eq!(c.runner_uids(&[1001]).expect("uids"), vec![0, 42]);
        assert!(!c.require());
        let c: JobsConfig = toml::from_str("runners = [\"no-such-user-here\"]").expect("names");
        assert!(c.runner_uids(&[]).is_err());
    }
}

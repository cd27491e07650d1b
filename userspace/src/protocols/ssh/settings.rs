//! `[targets.ssh]`: who blastgate logs in as upstream, with which key, and
//! how it knows the real server.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTarget {
    /// The upstream account.
    pub user: String,
    /// Private key (OpenSSH format) only the daemon can read.
    pub key_file: PathBuf,
    /// An OpenSSH user certificate for that key (`…-cert.pub`), for servers
    /// that trust a user CA instead of listing keys.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// known_hosts file to check the server against...
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// ... or its pinned host key ("ssh-ed25519 AAAA…").
    #[serde(default)]
    pub host_key: Option<String>,
}

impl SshTarget {
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_empty() {
            return Err("[targets.ssh] user is empty".into());
        }
        match (&self.known_hosts, &self.host_key) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("[targets.ssh] needs exactly one of known_hosts or host_key".into()),
        }
    }
}

//! `[targets.postgres]`: how blastgate logs in upstream, and what agents
//! must present.

use std::path::PathBuf;

use serde::Deserialize;

/// Upstream TLS, as libpq names the modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted, server certificate not verified (libpq's `require`).
    Require,
    /// Encrypted, certificate verified against `ca_file` (or the bundled
    /// web roots) and the host name.
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// The upstream role blastgate logs in as.
    pub user: String,
    /// The upstream role's password, first line of this file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// ... or in this environment variable of the daemon.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Server name checked by `verify-full` (default: the upstream IP).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The role name agents connect as (default: `user`). Agents asking
    /// for another role are refused: one target, one upstream identity.
    #[serde(default)]
    pub agent_user: Option<String>,
    /// If set, agents must send this password (first line of the file);
    /// otherwise any password is accepted (the kernel already said who the
    /// caller is).
    #[serde(default)]
    pub agent_password_file: Option<PathBuf>,
    /// Largest message accepted from an agent (COPY data chunks, huge
    /// queries). Default 64 MiB.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
}

fn default_max_message() -> usize {
    64 << 20
}

impl PostgresTarget {
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_empty() {
            return Err("[targets.postgres] user is empty".into());
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err("[targets.postgres]: password_file and password_env are exclusive".into());
        }
        if self.tls != UpstreamTls::VerifyFull && self.ca_file.is_some() {
            return Err(
                "[targets.postgres]: ca_file is only used with tls = \"verify-full\"".into(),
            );
        }
        if self.max_message_bytes < 8192 {
            return Err("[targets.postgres]: max_message_bytes must be at least 8192".into());
        }
        Ok(())
    }

    pub fn agent_user(&self) -> &str {
        self.agent_user.as_deref().unwrap_or(&self.user)
    }

    /// The upstream password, read now (rotation needs no restart).
    pub fn password(&self) -> Result<Option<String>, String> {
        let secret = crate::config::Secret {
            file: self.password_file.clone(),
            env: self.password_env.clone(),
        };
        if secret.file.is_none() && secret.env.is_none() {
            return Ok(None);
        }
        secret.read().map(Some)
    }
}

//! The CLI: argument definitions and one module per subcommand.

pub mod approvals;
pub mod ca;
pub mod cli;
pub mod events;
pub mod install;
pub mod job;
pub mod policy;
pub mod run;
pub mod sessions;
pub mod status;
pub mod uninstall;

use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_CONFIG};

/// The config for client commands: the named file, else the default file if
/// it exists, else built-in defaults (so `blastgate status` works on a host
/// that uses default paths).
pub fn client_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG);
            if default.exists() {
                Ok(Config::load(&default)?)
            } else {
                Ok(Config::default())
            }
        }
    }
}

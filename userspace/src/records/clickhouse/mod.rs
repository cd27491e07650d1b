//! ClickHouse: the record of truth security teams query.
//!
//! - [`schema`]: versioned, idempotent migrations run at daemon start;
//! - [`query`]: reading it back (session lists, timelines, asciicasts) for
//!   the CLI and the web console;
//! - [`rows`]: the spool event as `events`, `sessions` and `io` rows;
//! - [`rowbinary`]: spool lines encoded straight into those rows' blocks
//!   (what the shipper sends);
//! - [`shipper`]: ships the spool in order, deletes segments only once
//!   ClickHouse acknowledged them, survives outages and restarts.

pub mod query;
pub mod rowbinary;
pub mod rows;
pub mod schema;
pub mod shipper;

use crate::config::ClickhouseConfig;

#[derive(Debug, thiserror::Error)]
pub enum ChError {
    #[error("clickhouse at {url}: {source}")]
    Client {
        url: String,
        source: clickhouse::error::Error,
    },
    #[error("clickhouse password file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("spool: {0}")]
    Spool(std::io::Error),
}

/// A client for the configured server and database.
pub fn client(cfg: &ClickhouseConfig) -> Result<clickhouse::Client, ChError> {
    let mut c = clickhouse::Client::default()
        .with_url(cfg.url.clone())
        .with_user(cfg.user.clone());
    if let Some(path) = cfg
        .password_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let pw = std::fs::read_to_string(path).map_err(|source| ChError::Password {
            path: path.display().to_string(),
            source,
        })?;
        c = c.with_password(pw.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(c)
}

pub fn wrap(cfg: &ClickhouseConfig) -> impl Fn(clickhouse::error::Error) -> ChError + '_ {
    move |source| ChError::Client {
        url: cfg.url.clone(),
        source,
    }
}

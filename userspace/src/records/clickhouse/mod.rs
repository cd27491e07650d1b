//! ClickHouse: the record of truth security teams query.
//!
//! - [`schema`]: versioned, idempotent migrations run at daemon start;
//! - [`layout`]: those migrations for one server or for every node of a
//!   cluster (local tables behind `Distributed` ones);
//! - [`query`]: reading it back (session lists, timelines, asciicasts) for
//!   the CLI and the web console;
//! - [`rows`]: the spool event as `events`, `sessions` and `io` rows;
//! - [`rowbinary`]: spool lines encoded straight into those rows' blocks
//!   (what the shipper sends);
//! - [`shipper`]: ships the spool in order, deletes segments only once
//!   ClickHouse acknowledged them, survives outages and restarts.

pub mod layout;
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
    /// The cluster's servers are not set up as `[clickhouse]` says: the
    /// ClickHouse admin's or the blastgate config's to fix.
    #[error("clickhouse node {node}: {message}")]
    Node { node: String, message: String },
    /// A migration the cluster layout cannot place (a blastgate bug; the
    /// unit tests over the migrations catch it first).
    #[error("clickhouse schema: {0}")]
    Layout(#[from] layout::LayoutError),
}

/// A client for the configured server (`url`), with its credentials.
pub fn client(cfg: &ClickhouseConfig) -> Result<clickhouse::Client, ChError> {
    client_at(cfg, &cfg.url)
}

/// A client for one node of the cluster, with the configured credentials.
pub fn client_at(cfg: &ClickhouseConfig, url: &str) -> Result<clickhouse::Client, ChError> {
    let mut c = clickhouse::Client::default()
        .with_url(url)
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
    wrap_at(&cfg.url)
}

pub fn wrap_at(url: &str) -> impl Fn(clickhouse::error::Error) -> ChError + '_ {
    move |source| ChError::Client {
        url: url.to_string(),
        source,
    }
}

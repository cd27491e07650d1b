//! Versioned migrations. Each runs once (recorded in `schema_migrations`)
//! and is itself idempotent, so two daemons starting together are safe.
//!
//! Engines: `events` is a ReplacingMergeTree ordered by (target, agent, ts,
//! id): duplicates from a re-sent batch share the whole key and collapse on
//! merge, and the shipped views read `FINAL`, so nothing is counted twice
//! even before a merge. `sessions` keeps the latest row per session
//! (opened, then closed) by `version`.

use super::{wrap, ChError};
use crate::config::ClickhouseConfig;

/// (version, statements). Append only: never edit a shipped migration.
pub const MIGRATIONS: &[(u32, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS {db}.events (
            id UUID,
            session_id UUID,
            seq UInt32,
            ts DateTime64(6, 'UTC'),
            kind LowCardinality(String),
            verdict LowCardinality(String),
            reason String,
            agent LowCardinality(String),
            pid UInt32,
            uid UInt32,
            comm String,
            exe String,
            lineage Array(String),
            target LowCardinality(String),
            protocol LowCardinality(String),
            orig_dst String,
            action LowCardinality(String),
            policy_id LowCardinality(String),
            shadow Bool,
            approval_id Nullable(UUID),
            approver String,
            text String CODEC(ZSTD(3)),
            bytes_from_agent UInt64,
            bytes_to_agent UInt64,
            duration_us UInt64,
            masked_fields UInt64
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(ts)
        ORDER BY (target, agent, ts, id)
        SETTINGS non_replicated_deduplication_window = 1000",
        "CREATE TABLE IF NOT EXISTS {db}.sessions (
            session_id UUID,
            version UInt8,
            agent LowCardinality(String),
            pid UInt32,
            uid UInt32,
            exe String,
            comm String,
            lineage Array(String),
            oidc_sub String,
            oidc_iss String,
            target LowCardinality(String),
            protocol LowCardinality(String),
            orig_dst String,
            start DateTime64(6, 'UTC'),
            end Nullable(DateTime64(6, 'UTC')),
            bytes_from_agent UInt64,
            bytes_to_agent UInt64,
            verdict LowCardinality(String)
        ) ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(start)
        ORDER BY session_id
        SETTINGS non_replicated_deduplication_window = 1000",
    ],
)];

/// Creates the database and applies missing migrations in order.
pub async fn migrate(cfg: &ClickhouseConfig) -> Result<u32, ChError> {
    let err = wrap(cfg);
    let root = super::client(cfg)?;
    let db = &cfg.database;
    root.query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
        .execute()
        .await
        .map_err(&err)?;
    root.query(&format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.schema_migrations (version UInt32, applied DateTime DEFAULT now()) \
         ENGINE = ReplacingMergeTree ORDER BY version"
    ))
    .execute()
    .await
    .map_err(&err)?;
    let applied: Vec<u32> = root
        .query(&format!(
            "SELECT version FROM `{db}`.schema_migrations FINAL ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(&err)?;
    let mut latest = applied.last().copied().unwrap_or(0);
    for (version, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for sql in *statements {
            root.query(&sql.replace("{db}", &format!("`{db}`")))
                .execute()
                .await
                .map_err(&err)?;
        }
        root.query(&format!(
            "INSERT INTO `{db}`.schema_migrations (version) VALUES ({version})"
        ))
        .execute()
        .await
        .map_err(&err)?;
        tracing::info!(version, "clickhouse schema migrated");
        latest = *version;
    }
    Ok(latest)
}

//! Versioned migrations. Each runs once (recorded in `schema_migrations`)
//! and is itself idempotent, so two daemons starting together are safe.
//!
//! Engines: `events` is a ReplacingMergeTree ordered by (target, agent, ts,
//! id): duplicates from a re-sent batch share the whole key and collapse on
//! merge, and the shipped views read `FINAL`, so nothing is counted twice
//! even before a merge. `sessions` keeps the latest row per session
//! (opened, then closed) by `version`. On a cluster each node gets the
//! same migrations through [`super::layout`]: `NAME_local` tables sharded
//! by session behind `Distributed` ones named as here.

use super::{
    layout::{self, Layout},
    wrap_at, ChError,
};
use crate::config::ClickhouseConfig;

/// (version, statements). Append only: never edit a shipped migration.
pub const MIGRATIONS: &[(u32, &[&str])] = &[
    (
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
    ),
    (2, VIEWS),
    (
        3,
        &[
            // Replay data, apart from the audit tables: bulky, compressed
            // harder, and expired by TTL (`clickhouse.io_ttl_days`, applied
            // by `apply_io_ttl` at every start). Ordered for reading one
            // session back in order.
            "CREATE TABLE IF NOT EXISTS {db}.io (
            id UUID,
            session_id UUID,
            seq UInt32,
            ts DateTime64(6, 'UTC'),
            offset_us UInt64,
            stream LowCardinality(String),
            data String CODEC(ZSTD(6))
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMMDD(ts)
        ORDER BY (session_id, seq, id)
        TTL toDateTime(ts) + toIntervalDay(30)
        SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1",
        ],
    ),
    (
        4,
        &[
            // Rows a statement returned or changed.
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS rows UInt64 DEFAULT 0",
            // How long an action waited for a human.
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS approval_wait_us UInt64 DEFAULT 0",
        ],
    ),
    (
        5,
        &[
            // How a remote command ended, and how much of its output was
            // stderr (SSH exec).
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS exit_status Nullable(Int32)",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS stderr_bytes UInt64 DEFAULT 0",
        ],
    ),
    (
        6,
        &[
            // The HTTP status an agent's request got (0: not HTTP).
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS status UInt16 DEFAULT 0",
        ],
    ),
    (
        7,
        &[
            // The DNS name a query asked or a connection was known by.
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS dst_name String DEFAULT ''",
        ],
    ),
    (
        8,
        &[
            // The CI job the agent proved to be (a verified OIDC token):
            // issuer, subject, and the policy attributes (repository, ref,
            // workflow, actor, environment, run_id).
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS oidc_iss LowCardinality(String) DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS oidc_sub String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS oidc_claims Map(String, String)",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS oidc_claims Map(String, String)",
        ],
    ),
    (
        9,
        &[
            // What an action was about in its protocol's terms (a git
            // push's ref/old/new/forced, an AWS call's service/operation/
            // region/resource), queryable as context['ref'].
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS context Map(String, String)",
        ],
    ),
    (
        10,
        &[
            // The CI job a session belongs to (registered by the runner's
            // hook): provider, repository, workflow, run id and attempt,
            // job name and id, actor, ref; `job_verified` names the fields
            // a verified token attested (the others are what the job's
            // environment said).
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_provider LowCardinality(String) DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_repository String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_workflow String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_run_id String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_run_attempt String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_job String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_job_id String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_actor String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_ref String DEFAULT ''",
            "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS job_verified Array(String)",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_provider LowCardinality(String) DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_repository String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_workflow String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_run_id String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_run_attempt String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_job String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_job_id String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_actor String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_ref String DEFAULT ''",
            "ALTER TABLE {db}.sessions ADD COLUMN IF NOT EXISTS job_verified Array(String)",
        ],
    ),
];

/// The questions security teams ask, as views. Every view reads `FINAL`,
/// so a re-sent batch is never counted twice.
const VIEWS: &[&str] = &[
    "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS approval_group LowCardinality(String) DEFAULT ''",
    // Who ran what where: every decision about an agent's action.
    "CREATE OR REPLACE VIEW {db}.who_ran_what_where AS
     SELECT ts, agent, uid, comm, exe, target, protocol, orig_dst, kind, action, text, verdict,
            policy_id, reason, shadow, session_id
     FROM {db}.events FINAL
     WHERE kind IN ('session_opened', 'session_denied', 'statement', 'command', 'request')",
    // Share of refused decisions, per hour.
    "CREATE OR REPLACE VIEW {db}.rejection_rate AS
     SELECT toStartOfHour(ts) AS hour,
            count() AS decisions,
            countIf(verdict IN ('deny', 'error')) AS rejected,
            round(rejected / decisions, 4) AS rate
     FROM {db}.events FINAL
     WHERE kind IN ('session_opened', 'session_denied', 'statement', 'command', 'request')
     GROUP BY hour ORDER BY hour",
    // How long humans take to decide, per approver group.
    "CREATE OR REPLACE VIEW {db}.approval_latency AS
     SELECT approval_group,
            count() AS decided,
            countIf(verdict = 'allow') AS approved,
            round(quantileExact(0.5)(duration_us) / 1e6, 3) AS p50_s,
            round(quantileExact(0.95)(duration_us) / 1e6, 3) AS p95_s
     FROM {db}.events FINAL
     WHERE kind = 'approval_decided'
     GROUP BY approval_group ORDER BY approval_group",
    // Values masked in what each session returned to the agent.
    "CREATE OR REPLACE VIEW {db}.masked_fields_per_session AS
     SELECT session_id, any(agent) AS agent, any(target) AS target,
            sum(masked_fields) AS masked_fields
     FROM {db}.events FINAL
     WHERE kind = 'session_closed'
     GROUP BY session_id",
    // Session durations in buckets, per target.
    "CREATE OR REPLACE VIEW {db}.session_durations AS
     SELECT target,
            multiIf(d < 1, '<1s', d < 10, '1-10s', d < 60, '10-60s', d < 600, '1-10m', '>=10m') AS bucket,
            count() AS sessions
     FROM (SELECT target, dateDiff('millisecond', start, end) / 1000 AS d
           FROM {db}.sessions FINAL WHERE end IS NOT NULL AND verdict != 'deny')
     GROUP BY target, bucket ORDER BY target, bucket",
    // Which policies refuse the most.
    "CREATE OR REPLACE VIEW {db}.top_denied_policies AS
     SELECT policy_id, count() AS denials, uniqExact(agent) AS agents
     FROM {db}.events FINAL
     WHERE verdict = 'deny' AND policy_id != ''
     GROUP BY policy_id ORDER BY denials DESC, policy_id",
];

/// Creates the database and applies missing migrations in order: on the
/// server, or on every node of a cluster (each keeps its own
/// `schema_migrations`). Returns the latest version applied.
pub async fn migrate(cfg: &ClickhouseConfig) -> Result<u32, ChError> {
    let layout = cfg.layout();
    let nodes = match layout {
        Layout::Single => std::slice::from_ref(&cfg.url),
        Layout::Cluster(_) => &cfg.nodes[..],
    };
    let mut latest = 0;
    for node in nodes {
        latest = migrate_node(cfg, node, layout).await?;
    }
    Ok(latest)
}

async fn migrate_node(
    cfg: &ClickhouseConfig,
    node: &str,
    layout: Layout<'_>,
) -> Result<u32, ChError> {
    let err = wrap_at(node);
    let root = super::client_at(cfg, node)?;
    let db = &cfg.database;
    if let Layout::Cluster(name) = layout {
        let known: u64 = root
            .query("SELECT count() FROM system.clusters WHERE cluster = ?")
            .bind(name)
            .fetch_one()
            .await
            .map_err(&err)?;
        if known == 0 {
            return Err(ChError::Node {
                node: node.to_string(),
                message: format!(
                    "no cluster {name:?} in its remote_servers (clickhouse.cluster must name one \
                     every node defines)"
                ),
            });
        }
    }
    root.query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
        .execute()
        .await
        .map_err(&err)?;
    if let Layout::Cluster(_) = layout {
        require_distributed(&root, cfg, node).await?;
    }
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
            for sql in layout::statements(layout, sql)? {
                root.query(&sql.replace("{db}", &format!("`{db}`")))
                    .execute()
                    .await
                    .map_err(&err)?;
            }
        }
        root.query(&format!(
            "INSERT INTO `{db}`.schema_migrations (version) VALUES ({version})"
        ))
        .execute()
        .await
        .map_err(&err)?;
        tracing::info!(version, node, "clickhouse schema migrated");
        latest = *version;
    }
    let io = match layout {
        Layout::Single => "io".to_string(),
        Layout::Cluster(_) => format!("io{}", layout::LOCAL_SUFFIX),
    };
    apply_io_ttl(&root, cfg, node, &io).await?;
    Ok(latest)
}

/// In a cluster, the tables the shipper writes must be the `Distributed`
/// ones: a database that already holds a single server's tables would keep
/// them (`IF NOT EXISTS`), and rows written there would bypass the
/// sharding. Checked before any migration touches the node.
async fn require_distributed(
    root: &clickhouse::Client,
    cfg: &ClickhouseConfig,
    node: &str,
) -> Result<(), ChError> {
    let tables: Vec<(String, String)> = root
        .query(
            "SELECT name, engine FROM system.tables \
             WHERE database = ? AND name IN ('events', 'sessions', 'io') ORDER BY name",
        )
        .bind(cfg.database.as_str())
        .fetch_all()
        .await
        .map_err(wrap_at(node))?;
    match tables.iter().find(|(_, engine)| engine != "Distributed") {
        Some((name, engine)) => Err(ChError::Node {
            node: node.to_string(),
            message: format!(
                "database {:?} already has a {engine} table {name:?} (a single server's \
                 schema): a cluster needs a database of its own",
                cfg.database
            ),
        }),
        None => Ok(()),
    }
}

/// Brings the replay table's TTL to the configured number of days. Only
/// when it differs: `MODIFY TTL` rewrites parts, which a restart should not
/// cost.
async fn apply_io_ttl(
    root: &clickhouse::Client,
    cfg: &ClickhouseConfig,
    node: &str,
    table: &str,
) -> Result<(), ChError> {
    let err = wrap_at(node);
    let want = format!("toIntervalDay({})", cfg.io_ttl_days);
    let engine: Vec<String> = root
        .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
        .bind(cfg.database.as_str())
        .bind(table)
        .fetch_all()
        .await
        .map_err(&err)?;
    if engine.iter().any(|e| e.contains(&want)) {
        return Ok(());
    }
    // A table of the admins' own making (say, Distributed over replicated
    // tables on a single-server config): retention is theirs.
    if !engine.iter().any(|e| e.contains("MergeTree")) {
        tracing::info!(
            table,
            "clickhouse io is not a MergeTree table; its TTL is left to its admins"
        );
        return Ok(());
    }
    root.query(&format!(
        "ALTER TABLE `{}`.`{table}` MODIFY TTL toDateTime(ts) + {want}",
        cfg.database
    ))
    .execute()
    .await
    .map_err(&err)?;
    tracing::info!(days = cfg.io_ttl_days, node, "clickhouse io retention set");
    Ok(())
}

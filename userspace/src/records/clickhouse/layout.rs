//! One migration list, two layouts. A single server runs each migration
//! statement as written; a cluster without ZooKeeper/Keeper (no `ON
//! CLUSTER`) runs, on every node, the same statement against a local
//! `NAME_local` table and puts a `Distributed` table under the name the
//! shipper and the queries use in front of it. Translating the statements,
//! instead of keeping a second list, means a future migration reaches
//! both layouts, or fails [`statements`] (and its unit test) until it says
//! how.
//!
//! Rows are sharded by `cityHash64(session_id)`: every row of a session,
//! and every copy of a re-sent row, lands on the shard that holds the
//! others, where `FINAL` collapses them.

/// Where the schema lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    Single,
    /// The cluster's name in the servers' `remote_servers`.
    Cluster(&'a str),
}

/// The suffix of the per-node tables behind a cluster's `Distributed` ones.
pub const LOCAL_SUFFIX: &str = "_local";

/// The sharding key: a session's rows stay together.
pub const SHARDING_KEY: &str = "cityHash64(session_id)";

/// A migration statement the cluster layout cannot place: a developer's
/// mistake, caught by the unit test over `MIGRATIONS`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "a migration statement the cluster layout does not know (CREATE TABLE IF NOT EXISTS, \
         ALTER TABLE, CREATE [OR REPLACE] VIEW): {0:.80}"
    )]
    Unknown(String),
    #[error("table {0} has no session_id column to shard by")]
    NoShardingColumn(String),
    #[error(
        "ALTER TABLE {0}: only column changes (both tables) and TTL, settings, indexes and \
         projections (local table) are placed on a cluster: {1:.80}"
    )]
    UnknownAlter(String, String),
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS {db}.";
const ALTER_TABLE: &str = "ALTER TABLE {db}.";
/// ALTERs that change the columns: the `Distributed` table must follow.
const COLUMN_ALTERS: &[&str] = &[
    "ADD COLUMN",
    "DROP COLUMN",
    "MODIFY COLUMN",
    "RENAME COLUMN",
    "COMMENT COLUMN",
];
/// ALTERs of storage only: the local table's business.
const STORAGE_ALTERS: &[&str] = &[
    "MODIFY TTL",
    "REMOVE TTL",
    "MODIFY SETTING",
    "RESET SETTING",
    "ADD INDEX",
    "DROP INDEX",
    "MATERIALIZE",
    "ADD PROJECTION",
    "DROP PROJECTION",
];

/// The statements to run on each node for one migration statement
/// (`{db}` is still to be replaced by the quoted database name).
pub fn statements(layout: Layout<'_>, sql: &str) -> Result<Vec<String>, LayoutError> {
    let Layout::Cluster(cluster) = layout else {
        return Ok(vec![sql.to_string()]);
    };
    let s = sql.trim_start();
    if let Some(rest) = s.strip_prefix(CREATE_TABLE) {
        let (table, body) = split_name(rest);
        let columns = body.split(") ENGINE").next().unwrap_or_default();
        if !columns.contains("session_id ") {
            return Err(LayoutError::NoShardingColumn(table.to_string()));
        }
        let local = format!("{table}{LOCAL_SUFFIX}");
        return Ok(vec![
            format!("{CREATE_TABLE}{local}{body}"),
            format!(
                "{CREATE_TABLE}{table} AS {{db}}.{local} \
                 ENGINE = Distributed(`{cluster}`, {{db}}, {local}, {SHARDING_KEY})"
            ),
        ]);
    }
    if let Some(rest) = s.strip_prefix(ALTER_TABLE) {
        let (table, body) = split_name(rest);
        let op = body.trim_start().to_ascii_uppercase();
        let local = format!("{ALTER_TABLE}{table}{LOCAL_SUFFIX}{body}");
        if COLUMN_ALTERS.iter().any(|a| op.starts_with(a)) {
            return Ok(vec![local, s.to_string()]);
        }
        if STORAGE_ALTERS.iter().any(|a| op.starts_with(a)) {
            return Ok(vec![local]);
        }
        return Err(LayoutError::UnknownAlter(table.to_string(), op));
    }
    // Views read the Distributed tables by their usual names.
    if s.starts_with("CREATE OR REPLACE VIEW {db}.")
        || s.starts_with("CREATE VIEW IF NOT EXISTS {db}.")
    {
        return Ok(vec![s.to_string()]);
    }
    Err(LayoutError::Unknown(s.to_string()))
}

/// `name rest…` → (`name`, ` rest…`).
fn split_name(rest: &str) -> (&str, &str) {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    rest.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::clickhouse::schema::MIGRATIONS;

    const C: Layout<'static> = Layout::Cluster("fleet");

    /// Every migration, past and future, has a cluster form: a statement
    /// the layout cannot place fails here, not on a customer's cluster.
    #[test]
    fn every_migration_has_a_cluster_form() {
        for (version, stmts) in MIGRATIONS {
            for sql in *stmts {
                let out = statements(C, sql).unwrap_or_else(|e| panic!("migration {version}: {e}"));
                assert!(!out.is_empty());
                for s in &out {
                    assert!(!s.contains("ON CLUSTER"), "no Keeper here: {s}");
                }
            }
        }
    }

    #[test]
    fn a_table_becomes_a_local_table_behind_a_distributed_one() {
        let out = statements(
            C,
            "CREATE TABLE IF NOT EXISTS {db}.io (\n id UUID,\n session_id UUID\n) ENGINE = ReplacingMergeTree ORDER BY id",
        )
        .expect("placed");
        assert_eq!(
            out,
            [
                "CREATE TABLE IF NOT EXISTS {db}.io_local (\n id UUID,\n session_id UUID\n) ENGINE = ReplacingMergeTree ORDER BY id",
                "CREATE TABLE IF NOT EXISTS {db}.io AS {db}.io_local ENGINE = Distributed(`fleet`, {db}, io_local, cityHash64(session_id))",
            ]
        );
        assert_eq!(
            statements(
                C,
                "CREATE TABLE IF NOT EXISTS {db}.t (id UUID) ENGINE = MergeTree ORDER BY id"
            ),
            Err(LayoutError::NoShardingColumn("t".into()))
        );
    }

    #[test]
    fn column_changes_reach_both_tables_and_storage_changes_the_local_one() {
        let add = "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS x UInt8 DEFAULT 0";
        assert_eq!(
            statements(C, add).expect("placed"),
            [
                "ALTER TABLE {db}.events_local ADD COLUMN IF NOT EXISTS x UInt8 DEFAULT 0",
                add
            ]
        );
        assert_eq!(
            statements(
                C,
                "ALTER TABLE {db}.io MODIFY TTL toDateTime(ts) + toIntervalDay(3)"
            )
            .expect("placed"),
            ["ALTER TABLE {db}.io_local MODIFY TTL toDateTime(ts) + toIntervalDay(3)"]
        );
        assert!(matches!(
            statements(C, "ALTER TABLE {db}.io DELETE WHERE 1"),
            Err(LayoutError::UnknownAlter(..))
        ));
        assert!(matches!(
            statements(C, "DROP TABLE {db}.io"),
            Err(LayoutError::Unknown(_))
        ));
    }

    #[test]
    fn a_single_server_runs_the_statements_as_written() {
        assert_eq!(
            statements(Layout::Single, "DROP TABLE {db}.io").expect("as is"),
            ["DROP TABLE {db}.io"]
        );
    }
}

//! Measuring what a write really changes. A statement's text says little
//! about its reach (`WHERE true`, `WHERE id = id`, a writable CTE, a
//! trigger that deletes elsewhere, a rule): the server's own per-
//! transaction counters do. Before and after the statement, inside a
//! transaction or savepoint blastgate controls, it reads the rows updated
//! and deleted so far in the transaction, across every table; the
//! difference is the statement's effect, including what its triggers,
//! rules and functions changed.

/// Rows updated and deleted so far in this transaction, in every table
/// outside the system schemas (two counter reads per table: the catalog
/// view `pg_stat_xact_all_tables` reads twenty, for catalogs too, and cost
/// 0.5 ms a call in the benchmark);
/// NULL when the server is not counting (`track_counts = off`), which
/// blastgate takes as "cannot be measured".
///
/// It runs in the agent's session, under the agent's `search_path`: every
/// name, operator and type in it is schema-qualified, so nothing the agent
/// created can stand in for them.
pub const COUNT_SQL: &str = "SELECT CASE WHEN pg_catalog.current_setting('track_counts')::pg_catalog.bool \
     THEN (SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) \
                  OPERATOR(pg_catalog.+) pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)), 0)::pg_catalog.int8 \
           FROM pg_catalog.pg_class c \
           WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,m}'::pg_catalog.\"char\"[]) \
             AND c.relnamespace OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog'::pg_catalog.regnamespace, \
                 'information_schema'::pg_catalog.regnamespace, 'pg_toast'::pg_catalog.regnamespace]::pg_catalog.oid[])) \
     END";

/// The savepoint a write is measured under inside the agent's own
/// transaction block: named per session, so an agent cannot name it.
pub fn savepoint() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("blastgate_effect_{}", &id[..12])
}

/// How a write is wrapped, by the transaction status before it.
pub struct Wrapper {
    pub open: String,
    pub keep: String,
    pub undo: String,
}

/// `None` in a failed transaction: the server refuses the write anyway.
pub fn wrapper(status: u8, savepoint: &str) -> Option<Wrapper> {
    match status {
        b'I' => Some(Wrapper {
            open: "BEGIN".into(),
            keep: "COMMIT".into(),
            undo: "ROLLBACK".into(),
        }),
        b'T' => Some(Wrapper {
            open: format!("SAVEPOINT {savepoint}"),
            keep: format!("RELEASE SAVEPOINT {savepoint}"),
            undo: format!("ROLLBACK TO SAVEPOINT {savepoint}; RELEASE SAVEPOINT {savepoint}"),
        }),
        _ => None,
    }
}

/// The effect between two counts; `None` when either is missing.
pub fn rows(before: Option<&str>, after: Option<&str>) -> Option<i64> {
    let before: i64 = before?.trim().parse().ok()?;
    let after: i64 = after?.trim().parse().ok()?;
    after.checked_sub(before).filter(|n| *n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_are_differences_of_counts() {
        assert_eq!(rows(Some("10"), Some("13")), Some(3));
        assert_eq!(rows(None, Some("3")), None);
        assert_eq!(rows(Some("5"), Some("4")), None);
        assert!(wrapper(b'E', "s").is_none());
        assert_eq!(
            wrapper(b'T', "s").map(|w| w.keep),
            Some("RELEASE SAVEPOINT s".to_string())
        );
        assert_ne!(savepoint(), savepoint());
    }
}

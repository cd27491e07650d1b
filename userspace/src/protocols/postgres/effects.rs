//! Measuring what a write really changes. A statement's text says little
//! about its reach (`WHERE true`, `WHERE id = id`, a writable CTE, a
//! trigger that deletes elsewhere, a rule): the server's own per-
//! transaction counters do. Before and after the statement, inside a
//! transaction or savepoint blastgate controls, it reads the rows updated
//! and deleted so far in the transaction, across every table; the
//! difference is the statement's effect, including what its triggers,
//! rules and functions changed.

/// Rows updated and deleted so far in this transaction, all tables;
/// NULL when the server is not counting (`track_counts = off`), which
/// blastgate takes as "cannot be measured".
pub const COUNT_SQL: &str = "SELECT CASE WHEN pg_catalog.current_setting('track_counts')::bool \
     THEN (SELECT pg_catalog.sum(n_tup_upd + n_tup_del)::int8 FROM pg_catalog.pg_stat_xact_all_tables) \
     END";

/// The savepoint a write is measured under inside the agent's own
/// transaction block.
pub const SAVEPOINT: &str = "blastgate_effect";

/// How a write is wrapped, by the transaction status before it.
pub struct Wrapper {
    pub open: String,
    pub keep: &'static str,
    pub undo: &'static str,
}

/// `None` in a failed transaction: the server refuses the write anyway.
pub fn wrapper(status: u8) -> Option<Wrapper> {
    match status {
        b'I' => Some(Wrapper {
            open: format!("BEGIN; {COUNT_SQL}"),
            keep: "COMMIT",
            undo: "ROLLBACK",
        }),
        b'T' => Some(Wrapper {
            open: format!("SAVEPOINT {SAVEPOINT}; {COUNT_SQL}"),
            keep: "RELEASE SAVEPOINT blastgate_effect",
            undo: "ROLLBACK TO SAVEPOINT blastgate_effect; RELEASE SAVEPOINT blastgate_effect",
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
        assert!(wrapper(b'E').is_none());
        assert_eq!(
            wrapper(b'T').map(|w| w.keep),
            Some("RELEASE SAVEPOINT blastgate_effect")
        );
    }
}

//! The tripwire: every CommandComplete tag the server sends is checked
//! against the command the gateway read for that statement. They differ
//! only when the gateway and the server read the same bytes differently,
//! the one failure statement policy cannot survive, so the relay ends the
//! session on a mismatch.
//!
//! The classifier names commands as PostgreSQL's tags do; the exceptions
//! are listed here, each one a known, harmless difference in naming.

use super::classify::{ACTION_DCL, ACTION_DDL, ACTION_OPAQUE, ACTION_SESSION, ACTION_TRANSACTION};

/// Whether the server's CommandComplete `tag` ("DELETE 3", "DROP TABLE")
/// is one the statement read as `command` can produce.
pub fn agrees(action: &str, command: &str, tag: &str) -> bool {
    // Opaque statements were decided as such (held or refused by default):
    // their tag is whatever the hidden statement was (EXECUTE p → "DELETE 1").
    if action == ACTION_OPAQUE {
        return true;
    }
    let name = tag_name(tag);
    if name == command || name == "EXPLAIN" {
        // EXPLAIN is read as the statement it explains (ANALYZE runs it).
        return true;
    }
    // Schema, privilege, session and transaction commands are decided by
    // their verb and class; the server names some objects otherwise
    // ("TRUNCATE TABLE", "ALTER VIEW" for a view's column renamed with
    // ALTER TABLE, "CREATE ROLE" for CREATE USER).
    let verb = |s: &str| s.split(' ').next().unwrap_or_default().to_string();
    if matches!(
        action,
        ACTION_DDL | ACTION_DCL | ACTION_SESSION | ACTION_TRANSACTION
    ) && verb(name) == verb(command)
    {
        return true;
    }
    match command {
        // These complete with the row count of their query.
        "SELECT INTO" | "CREATE TABLE AS" | "CREATE MATERIALIZED VIEW" => {
            matches!(
                name,
                "SELECT" | "CREATE TABLE AS" | "CREATE MATERIALIZED VIEW"
            )
        }
        // A transaction that failed ends in a rollback whatever ended it.
        "COMMIT" | "PREPARE TRANSACTION" => name == "ROLLBACK",
        // COPY (DELETE … RETURNING) TO is read as that statement's action
        // but tagged COPY; the command stays COPY either way.
        _ => false,
    }
}

/// The tag without its trailing row counts ("INSERT 0 5" → "INSERT").
fn tag_name(tag: &str) -> &str {
    let mut end = tag.len();
    for word in tag.rsplit(' ') {
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        // The first word is the name, even when it is a number.
        match end.checked_sub(word.len() + 1) {
            Some(shorter) => end = shorter,
            None => break,
        }
    }
    tag.get(..end).unwrap_or(tag).trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::postgres::classify::{ACTION_DELETE, ACTION_INSERT, ACTION_SELECT};

    #[test]
    fn counts_are_not_part_of_the_name() {
        assert_eq!(tag_name("INSERT 0 5"), "INSERT");
        assert_eq!(tag_name("SELECT 3"), "SELECT");
        assert_eq!(tag_name("DROP TABLE"), "DROP TABLE");
        assert_eq!(tag_name("CLOSE CURSOR ALL"), "CLOSE CURSOR ALL");
        assert_eq!(tag_name(""), "");
    }

    /// A tag that is all counts (from a broken or hostile server) has no
    /// name to take them from: it used to underflow (a panic in debug
    /// builds, ending the session's relay half); it now trips, as a tag
    /// naming no command the gateway read.
    #[test]
    fn a_tag_of_counts_only_is_its_own_name_and_trips() {
        assert_eq!(tag_name("5"), "5");
        assert_eq!(tag_name("1 2"), "1");
        assert!(!agrees(ACTION_SELECT, "SELECT", "5"));
        assert!(!agrees(ACTION_INSERT, "INSERT", "0 1"));
    }

    #[test]
    fn a_drop_where_a_select_was_read_trips() {
        assert!(!agrees(ACTION_SELECT, "SELECT", "DROP TABLE"));
        assert!(agrees(ACTION_SELECT, "SELECT", "SELECT 1"));
        assert!(agrees(ACTION_DDL, "CREATE TABLE AS", "SELECT 10"));
        assert!(agrees(ACTION_OPAQUE, "EXECUTE", "DELETE 1"));
        assert!(agrees(ACTION_SELECT, "SELECT", "EXPLAIN"));
        assert!(agrees(ACTION_DDL, "TRUNCATE", "TRUNCATE TABLE"));
        assert!(agrees(ACTION_DCL, "CREATE USER", "CREATE ROLE"));
        assert!(!agrees(ACTION_DDL, "CREATE TABLE", "DROP TABLE"));
        assert!(!agrees(ACTION_INSERT, "INSERT", "DELETE 3"));
        assert!(agrees(ACTION_DELETE, "SELECT", "SELECT 2"));
    }
}

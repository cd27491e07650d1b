//! The shape cache's key: a statement's text with its literal values
//! blanked, computed by one scan instead of a parse.
//!
//! The classifier's shape cache lets `… WHERE aid = 1` and `… WHERE aid = 2`
//! share one classification. Its key used to be `pg_query::normalize`, a
//! whole parse by libpg_query per statement and the largest single cost a
//! cached statement paid. This scan is a small fraction of that, and it is
//! deliberately narrow: it answers only where its token boundaries are
//! provably PostgreSQL's own, and otherwise says `None` (the statement then
//! goes the full way: exact-text cache, parse, classify).
//!
//! Two texts get one key only if they are byte for byte the same outside
//! plain string and numeric literals. For that to be safe, every literal it
//! blanks must be one whose value cannot change the reading:
//! - only `SELECT`, `INSERT`, `UPDATE` and `DELETE` qualify. In them a
//!   literal is a constant of an expression, or a precision; in utility
//!   statements a string may be a program (`COPY … PROGRAM`), a function
//!   body (`CREATE FUNCTION … AS '…'`, `DO '…'`) or a setting, which is
//!   why they never get a key here;
//! - functions that read their literal arguments (`set_config`,
//!   `query_to_xml`, …) are still kept out of the cache by the classifier,
//!   which checks the statement it stores;
//! - what the server lexes differently is refused rather than guessed:
//!   anything not ASCII, any backslash, comments, dollar quoting, prefixed
//!   strings (`E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `U&"…"`), numbers
//!   run into a name (`123abc`, `0x1F`, `1_000`) or another dot, and more
//!   than one statement. The cache serves the default lexing only
//!   (`standard_conforming_strings` on), where a quote inside a string is
//!   written `''` and nothing else escapes.

/// Stands for one literal in a key; a byte the scan refuses in any text,
/// so no text can spell it.
const LITERAL: u8 = 0x01;

/// The statements that may get a key, matched case-insensitively as the
/// first word.
const KEYED: [&str; 4] = ["select", "insert", "update", "delete"];

/// The key of `sql`'s shape, or `None` where only a parse can tell.
pub fn key(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if !keyed_first_word(b) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                // A name's `$`, or a quote right after a word: `E'…'`,
                // `U&'…'` and their kind lex as something else.
                if matches!(b.get(i), Some(b'$' | b'\'' | b'"' | b'&')) {
                    return None;
                }
                out.extend_from_slice(&b[start..i]);
            }
            b'0'..=b'9' => {
                i = number(b, i)?;
                out.push(LITERAL);
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number(b, i)?;
                out.push(LITERAL);
            }
            b'\'' => {
                i = string(b, i)?;
                out.push(LITERAL);
            }
            b'"' => {
                let end = quoted_name(b, i)?;
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            b'$' => {
                // A parameter, `$1`; anything else is dollar quoting.
                let start = i;
                i += 1;
                if !b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if b.get(i).is_some_and(|&n| is_ident(n) || n == b'$') {
                    return None;
                }
                out.extend_from_slice(&b[start..i]);
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b';' => {
                // Only a last one: two statements are the classifier's.
                if !b[i + 1..].iter().all(|&w| is_space(w)) {
                    return None;
                }
                out.push(c);
                i += 1;
            }
            b'\\' => return None,
            _ if is_space(c) || c.is_ascii_punctuation() => {
                out.push(c);
                i += 1;
            }
            // Control characters, and anything not ASCII.
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

fn keyed_first_word(b: &[u8]) -> bool {
    let start = b.iter().position(|&c| !is_space(c)).unwrap_or(b.len());
    let rest = &b[start..];
    let end = rest
        .iter()
        .position(|&c| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    // The word must end at a space or a parenthesis, not run into a name.
    let ends_cleanly = rest.get(end).is_some_and(|&c| is_space(c) || c == b'(');
    ends_cleanly
        && KEYED
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
}

/// PostgreSQL's whitespace: space, tab, newline, carriage return, form
/// feed and vertical tab.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// A numeric literal from `i`: `12`, `1.5`, `.5`, `1.`, `1e-3`. Its end,
/// or `None` when it runs into what the server reads otherwise.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if b.get(i) == Some(&b'.') {
        // `1..2` is lexed apart.
        if b.get(i + 1) == Some(&b'.') {
            return None;
        }
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = j;
        digits(&mut i);
    }
    // Junk after a number (`123abc`, `0x1F`, `1_000`, `1.2.3`) is an error
    // on some servers and another token on others.
    if b.get(i)
        .is_some_and(|&n| is_ident(n) || n == b'.' || n == b'$')
    {
        return None;
    }
    Some(i)
}

/// A plain string literal from the quote at `i`: its end, after the
/// closing quote. `''` is a quote inside it; a backslash is refused (it
/// escapes under `standard_conforming_strings = off`).
fn string(b: &[u8], i: usize) -> Option<usize> {
    let end = quoted(b, i, |c| {
        c != b'\\' && (!c.is_ascii_control() || is_space(c))
    })?;
    // A word run into the closing quote is read apart by some servers.
    if b.get(end).is_some_and(|&n| is_ident(n) || n == b'$') {
        return None;
    }
    Some(end)
}

/// A quoted name from the quote at `i` (kept as written: it names a table
/// or column): its end.
fn quoted_name(b: &[u8], i: usize) -> Option<usize> {
    quoted(b, i, |c| !c.is_ascii_control())
}

/// The end of the run quoted by the byte at `i`, where a doubled quote
/// stands for one; `None` if it never closes or holds a byte that is
/// not ASCII or not `allowed`.
fn quoted(b: &[u8], mut i: usize, allowed: impl Fn(u8) -> bool) -> Option<usize> {
    let q = *b.get(i)?;
    i += 1;
    loop {
        match *b.get(i)? {
            c if c == q && b.get(i + 1) == Some(&q) => i += 2,
            c if c == q => return Some(i + 1),
            c if c.is_ascii() && allowed(c) => i += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_blanked_and_nothing_else() {
        let k = |s| key(s).unwrap_or_else(|| panic!("no key for {s}"));
        assert_eq!(
            k("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"),
            k("SELECT abalance FROM pgbench_accounts WHERE aid = 99999;")
        );
        assert_eq!(
            k("UPDATE t SET x = 'a;b' WHERE id = 4"),
            k("UPDATE t SET x = 'it''s' WHERE id = 5")
        );
        assert_eq!(
            k("select x from t where y in (1.5, .5, 1e-3, 2.)"),
            k("select x from t where y in (2, 3, 4, 5)")
        );
        assert_eq!(
            k("DELETE FROM t WHERE id = $1"),
            "DELETE FROM t WHERE id = $1"
        );
        assert_eq!(
            k("INSERT INTO \"My \"\"T\"\"\" VALUES ('x')"),
            "INSERT INTO \"My \"\"T\"\"\" VALUES (\u{1})"
        );
        // Names, operators, spacing and parameters are kept as written.
        for (a, b) in [
            (
                "SELECT a FROM t WHERE id = 1",
                "SELECT b FROM t WHERE id = 1",
            ),
            (
                "SELECT a FROM t WHERE id = 1",
                "SELECT a FROM u WHERE id = 1",
            ),
            (
                "SELECT a FROM t WHERE id = 1",
                "SELECT a FROM t WHERE id < 1",
            ),
            (
                "SELECT a FROM t1 WHERE id = 1",
                "SELECT a FROM t2 WHERE id = 1",
            ),
            (
                "SELECT a FROM t WHERE id = $1",
                "SELECT a FROM t WHERE id = $2",
            ),
            ("SELECT \"a\" FROM t", "SELECT \"b\" FROM t"),
            ("SELECT 1 FROM t", "SELECT  1 FROM t"),
            ("SELECT 'a'\n'b'", "SELECT 'ab'"),
        ] {
            assert_ne!(k(a), k(b), "{a} / {b}");
        }
    }

    #[test]
    fn what_the_server_reads_otherwise_gets_no_key() {
        for sql in [
            // Not a statement whose literals are only values.
            "COPY t TO PROGRAM 'cat'",
            "DO 'BEGIN DELETE FROM t; END'",
            "CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql",
            "SET search_path = 'x'",
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT 1",
            "EXPLAIN SELECT 1",
            "SELECTx 1",
            "selected 1",
            // Prefixed and escaped strings, dollar quoting.
            "SELECT E'\\x27; DROP TABLE t; --'",
            "SELECT e'a'",
            "SELECT B'0101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"d\\0061t\" FROM t",
            "SELECT $$a$$",
            "SELECT $tag$a$tag$",
            "SELECT 'a\\'",
            // Comments, more statements.
            "SELECT 1 -- x",
            "SELECT /* x */ 1",
            "SELECT 1; DROP TABLE t",
            "SELECT 1;;",
            // Numbers the server lexes otherwise, or refuses.
            "SELECT 123abc",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1..2",
            "SELECT 1.2.3",
            "SELECT 1e",
            "SELECT 1e+",
            "SELECT $1abc",
            "SELECT $1$",
            "SELECT 'x'abc",
            "SELECT a$b FROM t",
            // Not ASCII, control characters.
            "SELECT 'é'",
            "SELECT \u{0}1",
            "SELECT '\u{7}'",
            "SELECT \"\u{1}\" FROM t",
        ] {
            assert_eq!(key(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn a_key_never_spells_a_literal_marker_from_text() {
        // The marker byte is refused wherever it appears in a text.
        assert_eq!(key("SELECT \u{1}"), None);
        assert_eq!(key("SELECT '\u{1}'"), None);
    }
}

//! Masking result rows on the wire: which columns of a RowDescription are
//! masked (field rules by `schema.table.column`, resolved through the
//! upstream catalog) or scanned (detectors, on text values), and DataRow
//! messages rewritten accordingly with correct lengths.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::RowDescription;

use super::frame::{decode, Frame, PgError};
use crate::policy::masking::{MaskPlan, Style};

/// Types whose binary format is their text: masking them in binary is the
/// same as in text. (text, varchar, bpchar, name, "char", unknown, json)
const TEXT_LIKE: &[u32] = &[25, 1043, 1042, 19, 18, 705, 114];

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub format: i16,
}

pub fn fields(frame: &Frame) -> Result<Vec<Field>, PgError> {
    let rd: RowDescription = decode(frame, "RowDescription")?;
    Ok(rd
        .fields
        .into_iter()
        .map(|f| Field {
            name: f.name,
            table_oid: f.table_id as u32,
            column: f.column_id,
            type_oid: f.type_id,
            format: f.format_code,
        })
        .collect())
}

/// The formats Bind asked for, applied to described fields (a statement's
/// Describe reports text for every column; the portal's Bind decides).
pub fn with_formats(fields: &[Field], formats: &[i16]) -> Vec<Field> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| Field {
            format: match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            },
            ..f.clone()
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Pass,
    /// Replace the whole value with this style (NULL if it cannot be
    /// written in the column's binary format).
    Rule(Style),
    /// Text: run the detectors over it.
    Scan,
}

/// What to do with each column of the current result.
#[derive(Debug, Clone, Default)]
pub struct RowPlan {
    columns: Vec<(Column, bool)>,
}

impl RowPlan {
    /// Nothing to do: rows are forwarded untouched.
    pub fn is_noop(&self) -> bool {
        self.columns.iter().all(|(c, _)| *c == Column::Pass)
    }

    /// Masks whole the columns whose values derive from masked columns
    /// (`styles` from lineage, one per column). A column a field rule
    /// names directly keeps that rule's style.
    pub fn derive(&mut self, styles: &[Option<Style>]) {
        for ((col, _), style) in self.columns.iter_mut().zip(styles) {
            if let (Some(s), false) = (style, matches!(col, Column::Rule(_))) {
                *col = Column::Rule(*s);
            }
        }
    }
}

/// `schema.table.column` names of table columns, from the upstream catalog.
pub type Names = HashMap<(u32, i16), String>;

/// Builds the plan. A column from a table whose name could not be
/// resolved is masked whole when field rules exist (fail closed).
pub fn plan(fields: &[Field], names: Option<&Names>, mask: &MaskPlan) -> RowPlan {
    let columns = fields
        .iter()
        .map(|f| {
            let text = f.format == 0 || TEXT_LIKE.contains(&f.type_oid);
            let rule = if mask.has_fields() {
                if f.table_oid == 0 {
                    mask.column("", "", &f.name).map(|(s, _)| s)
                } else {
                    match names.and_then(|n| n.get(&(f.table_oid, f.column))) {
                        Some(full) => {
                            let mut parts = full.splitn(3, '.');
                            let (s, t, c) = (
                                parts.next().unwrap_or_default(),
                                parts.next().unwrap_or_default(),
                                parts.next().unwrap_or_default(),
                            );
                            mask.column(s, t, c).map(|(s, _)| s)
                        }
                        None => Some(Style::Fixed),
                    }
                }
            } else {
                None
            };
            let col = match rule {
                Some(style) => Column::Rule(style),
                None if text && mask.has_detectors() => Column::Scan,
                None => Column::Pass,
            };
            (col, text)
        })
        .collect();
    RowPlan { columns }
}

/// Rewrites one DataRow into `out`; returns how many values were masked.
/// A row whose values are all unchanged is copied as it came.
pub fn rewrite(
    frame: &Frame,
    plan: &RowPlan,
    mask: &MaskPlan,
    out: &mut BytesMut,
) -> Result<u64, PgError> {
    let mut masked = 0u64;
    let mut values: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::new();
    for (i, value) in row_values(frame)?.into_iter().enumerate() {
        let Some(value) = value else {
            values.push(None);
            continue;
        };
        let (col, text) = plan
            .columns
            .get(i)
            .copied()
            .unwrap_or((Column::Pass, false));
        let replaced = match col {
            Column::Pass => None,
            Column::Rule(style) => {
                masked += 1;
                if text {
                    let s = String::from_utf8_lossy(value);
                    Some(Some(mask.apply(style, &s).into_bytes()))
                } else {
                    // A binary number or date cannot hold "****": NULL.
                    Some(None)
                }
            }
            Column::Scan => match std::str::from_utf8(value) {
                Ok(s) => {
                    let (scanned, n) = mask.scan(s);
                    if n > 0 {
                        masked += n;
                        Some(Some(scanned.into_bytes()))
                    } else {
                        None
                    }
                }
                Err(_) => None,
            },
        };
        values.push(match replaced {
            None => Some(std::borrow::Cow::Borrowed(value)),
            Some(v) => v.map(std::borrow::Cow::Owned),
        });
    }
    if masked == 0 {
        out.extend_from_slice(&frame.bytes);
        return Ok(0);
    }
    write_row(values.iter().map(|v| v.as_deref()), out);
    Ok(masked)
}

/// The values of a DataRow, `None` for NULL; bounds-checked, so a
/// malformed row is an error, never a panic.
pub fn row_values(frame: &Frame) -> Result<Vec<Option<&[u8]>>, PgError> {
    let bad = || PgError::Malformed { what: "DataRow" };
    let body = frame.body();
    let count = i16::from_be_bytes(
        body.get(0..2)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut at = 2;
    let mut values = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let len = i32::from_be_bytes(
            body.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        at += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        values.push(Some(body.get(at..at + len as usize).ok_or_else(bad)?));
        at += len as usize;
    }
    Ok(values)
}

/// Appends a DataRow of these values, lengths computed.
pub fn write_row<'v>(values: impl ExactSizeIterator<Item = Option<&'v [u8]>>, out: &mut BytesMut) {
    let start = out.len();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
        }
    }
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Runs the detectors over COPY OUT data (text format lines).
pub fn scan_copy(frame: &Frame, mask: &MaskPlan, out: &mut BytesMut) -> u64 {
    let body = frame.body();
    match std::str::from_utf8(body) {
        Ok(s) if mask.has_detectors() => {
            let (scanned, n) = mask.scan(s);
            if n == 0 {
                out.extend_from_slice(&frame.bytes);
                return 0;
            }
            out.put_u8(b'd');
            out.put_i32(4 + scanned.len() as i32);
            out.put_slice(scanned.as_bytes());
            n
        }
        _ => {
            out.extend_from_slice(&frame.bytes);
            0
        }
    }
}

/// A text-format COPY field's value (COPY's backslash escapes undone).
fn copy_unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// A value written as a text-format COPY field.
fn copy_escape(value: &str, delimiter: u8, out: &mut Vec<u8>) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            11 => out.extend_from_slice(b"\\v"),
            d if d == delimiter => {
                out.push(b'\\');
                out.push(d);
            }
            other => out.push(other),
        }
    }
}

/// Masks one CopyData message of a text-format `COPY … TO` (the server
/// sends one row per message; several lines are handled too): the fields
/// of columns derived from masked columns replaced whole with their
/// style, as the same value in a DataRow would be, then the detectors
/// over the rest. A line with another number of fields than the result
/// has columns is masked whole. Returns how many values were masked.
pub fn mask_copy_text(
    frame: &Frame,
    styles: &[Option<Style>],
    delimiter: u8,
    null: &str,
    mask: &MaskPlan,
    out: &mut BytesMut,
) -> u64 {
    let body = frame.body();
    let mut masked = 0u64;
    let mut data: Vec<u8> = Vec::with_capacity(body.len());
    let lines: Vec<&[u8]> = body.split_inclusive(|b| *b == b'\n').collect();
    for line in lines {
        let (content, newline) = match line.strip_suffix(b"\n") {
            Some(c) => (c, true),
            None => (line, false),
        };
        let fields: Vec<&[u8]> = content.split(|b| *b == delimiter).collect();
        let whole = fields.len() != styles.len();
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                data.push(delimiter);
            }
            let style = if whole {
                Some(Style::Fixed)
            } else {
                styles.get(i).copied().flatten()
            };
            if *field == null.as_bytes() {
                data.extend_from_slice(field);
                continue;
            }
            let value = String::from_utf8_lossy(&copy_unescape(field)).into_owned();
            match style {
                Some(s) => {
                    masked += 1;
                    copy_escape(&mask.apply(s, &value), delimiter, &mut data);
                }
                None if mask.has_detectors() => {
                    let (scanned, n) = mask.scan(&value);
                    if n == 0 {
                        data.extend_from_slice(field);
                    } else {
                        masked += n;
                        copy_escape(&scanned, delimiter, &mut data);
                    }
                }
                None => data.extend_from_slice(field),
            }
        }
        if newline {
            data.push(b'\n');
        }
    }
    if masked == 0 {
        out.extend_from_slice(&frame.bytes);
        return 0;
    }
    out.put_u8(b'd');
    out.put_i32(4 + data.len() as i32);
    out.put_slice(&data);
    masked
}

/// SQLSTATE classes whose texts are about names and states, not values:
/// syntax and access errors (42), unsupported features, transaction
/// state, resources, operator intervention, connections, invalid names.
const NAME_CLASSES: &[&str] = &[
    "42", "0A", "25", "40", "53", "54", "55", "57", "08", "3D", "3F", "28", "26", "34", "0B", "2D",
    "3B",
];

/// The text that replaces error and notice fields hidden for masking.
const HIDDEN: &str = "(hidden by blastgate: the statement reads masked columns)";

/// Hides the quoted spans of a message about names whose text neither the
/// statement (`known`, lower case) nor the error's name fields contain:
/// a name typed by the agent stays (`column "emial" does not exist`), a
/// name that came from data (`email::regclass` → `relation
/// "alice@example.com" does not exist`) goes. From the first unknown span
/// on, everything is hidden (a value can contain quotes itself).
fn hide_unknown_names(text: &str, known: &str, names: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else {
            break;
        };
        let content = &after[..close];
        let lower = content.to_lowercase();
        let typed = content.is_empty() || known.contains(&lower);
        if !typed && !names.iter().any(|n| n == content) {
            out.push_str(&rest[..open]);
            out.push_str("\"****\"");
            return out;
        }
        out.push_str(&rest[..open + 1 + close + 1]);
        rest = &after[close + 1..];
    }
    if rest.contains('"') {
        // An unterminated quote: what follows it could be anything.
        if let Some(open) = rest.find('"') {
            out.push_str(&rest[..open]);
            out.push_str("\"****\"");
            return out;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites an ErrorResponse or NoticeResponse: detectors over its texts,
/// and, when `redact` holds the statement in flight (it reads masked
/// columns), the texts that can quote a value hidden. The SQLSTATE and the
/// name fields (schema, table, column, constraint, type) are kept, so
/// clients behave. `None`: nothing changed (forward the frame as it is).
pub fn server_message(frame: &Frame, redact: Option<&str>, mask: &MaskPlan) -> Option<BytesMut> {
    let body = frame.body();
    let mut fields: Vec<(u8, &[u8])> = Vec::new();
    let mut at = 0;
    while let Some(&code) = body.get(at) {
        if code == 0 {
            break;
        }
        let rest = body.get(at + 1..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        fields.push((code, &rest[..end]));
        at += end + 2;
    }
    let sqlstate = fields
        .iter()
        .find(|(c, _)| *c == b'C')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let class = sqlstate.get(..2).unwrap_or_default();
    let names: Vec<String> = fields
        .iter()
        .filter(|(c, _)| matches!(c, b's' | b't' | b'c' | b'd' | b'n'))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    let known = redact.map(str::to_lowercase);
    let about_names = NAME_CLASSES.contains(&class);
    let mut changed = false;
    let mut out_fields: Vec<(u8, Vec<u8>)> = Vec::with_capacity(fields.len());
    for (code, value) in fields {
        let mut text = String::from_utf8_lossy(value).into_owned();
        if matches!(code, b'M' | b'D' | b'H' | b'W' | b'q') {
            if let Some(known) = &known {
                text = match code {
                    // Names in quotes: the agent's own, or hidden.
                    _ if about_names => hide_unknown_names(&text, known, &names),
                    // Data errors quote the value after a fixed text: one
                    // the agent typed stays, one from a table goes.
                    b'M' if class == "22" || class == "23" => {
                        hide_unknown_names(&text, known, &names)
                    }
                    b'M' => format!("blastgate: message {HIDDEN} (SQLSTATE {sqlstate})"),
                    _ => HIDDEN.to_string(),
                };
            }
            if mask.has_detectors() {
                text = mask.scan(&text).0;
            }
        }
        changed |= text.as_bytes() != value;
        out_fields.push((code, text.into_bytes()));
    }
    if !changed {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_u8(frame.tag);
    out.put_i32(0);
    for (code, value) in out_fields {
        out.put_u8(code);
        // A NUL inside would end the field early: none can come from UTF-8
        // text of the server's, but a lossy conversion must not add one.
        out.put_slice(
            &value
                .iter()
                .copied()
                .filter(|b| *b != 0)
                .collect::<Vec<_>>(),
        );
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// Rewrites a NotificationResponse: the payload can carry any value a
/// notifying session read (a trigger's `pg_notify(…, NEW.email)`, another
/// session's `SELECT pg_notify('c', email) FROM customers`), and nothing
/// on this side tells where it came from. So while column rules apply the
/// payload is replaced whole; otherwise the detectors run over it.
pub fn notification(frame: &Frame, field_rules: bool, mask: &MaskPlan) -> Option<BytesMut> {
    let body = frame.body();
    let pid = body.get(..4)?;
    let rest = body.get(4..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    let channel = &rest[..end];
    let after = rest.get(end + 1..)?;
    let pend = after.iter().position(|b| *b == 0)?;
    let payload = String::from_utf8_lossy(&after[..pend]).into_owned();
    let masked = if field_rules && !payload.is_empty() {
        "****".to_string()
    } else if mask.has_detectors() {
        mask.scan(&payload).0
    } else {
        payload.clone()
    };
    if masked == payload {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_u8(b'A');
    out.put_i32(0);
    out.put_slice(pid);
    out.put_slice(channel);
    out.put_u8(0);
    out.put_slice(masked.as_bytes());
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// Rewrites a FunctionCallResponse (fast-path calls name functions by
/// OID, so their result's origin is unknown): masked whole while column
/// rules apply.
pub fn function_result(frame: &Frame) -> Option<BytesMut> {
    let body = frame.body();
    let len = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    if len < 0 {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_u8(b'V');
    out.put_i32(12);
    out.put_i32(4);
    out.put_slice(b"****");
    Some(out)
}

/// The catalog query that names table columns.
pub fn catalog_query(oids: &[u32]) -> String {
    let list: Vec<String> = oids.iter().map(u32::to_string).collect();
    format!(
        "SELECT a.attrelid::int8, a.attnum::int4, n.nspname || '.' || c.relname || '.' || a.attname \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attnum > 0 AND a.attrelid IN ({})",
        list.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: BytesMut) -> Frame {
        Frame { tag: b'D', bytes }
    }

    fn plan_with(rules: &str) -> MaskPlan {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(crate::policy::masking::MASKING_FILE), rules)
            .expect("rules");
        crate::policy::masking::Masking::load(dir.path())
            .unwrap_or_else(|p| panic!("{p:?}"))
            .plan("a", "t")
    }

    fn message(tag: u8, fields: &[(u8, &str)]) -> Frame {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(0);
        for (c, v) in fields {
            out.put_u8(*c);
            out.put_slice(v.as_bytes());
            out.put_u8(0);
        }
        out.put_u8(0);
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Frame { tag, bytes: out }
    }

    fn field(f: &[u8], code: u8) -> String {
        let body = &f[5..];
        let mut at = 0;
        while body[at] != 0 {
            let end = at + 1 + body[at + 1..].iter().position(|b| *b == 0).unwrap();
            if body[at] == code {
                return String::from_utf8_lossy(&body[at + 1..end]).into_owned();
            }
            at = end + 1;
        }
        String::new()
    }

    #[test]
    fn error_texts_that_quote_values_are_hidden_and_sqlstates_kept() {
        let plan = plan_with("[[detector]]\nkind = \"card\"\nstyle = \"last4\"\n");
        let e = message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'C', "22P02"),
                (
                    b'M',
                    "invalid input syntax for type integer: \"alice@example.com\"",
                ),
                (b'D', "Key (email)=(alice@example.com) already exists."),
                (b'W', "JSON data, line 1: alice"),
                (b't', "customers"),
            ],
        );
        let out =
            server_message(&e, Some("SELECT email::int FROM customers"), &plan).expect("rewritten");
        assert_eq!(field(&out, b'C'), "22P02");
        assert_eq!(
            field(&out, b'M'),
            "invalid input syntax for type integer: \"****\""
        );
        assert_eq!(field(&out, b'D'), HIDDEN);
        assert_eq!(field(&out, b'W'), HIDDEN);
        assert_eq!(field(&out, b't'), "customers");
        // A RAISE can put a value anywhere in its message.
        let raise = message(b'N', &[(b'C', "00000"), (b'M', "value alice@example.com")]);
        let out = server_message(&raise, Some("SELECT shout(1)"), &plan).expect("rewritten");
        assert!(
            !field(&out, b'M').contains("alice"),
            "{:?}",
            field(&out, b'M')
        );
        // Errors about names keep their text; detectors still run.
        let name = message(
            b'E',
            &[(b'C', "42703"), (b'M', "column \"emial\" does not exist")],
        );
        assert!(server_message(&name, Some("SELECT Emial FROM customers"), &plan).is_none());
        // … unless the name came from data.
        let data = message(
            b'E',
            &[
                (b'C', "42P01"),
                (b'M', "relation \"alice@example.com\" does not exist"),
            ],
        );
        let out = server_message(&data, Some("SELECT email::regclass FROM customers"), &plan)
            .expect("rewritten");
        assert_eq!(field(&out, b'M'), "relation \"****\"");
        let quoted = message(
            b'E',
            &[
                (b'C', "42703"),
                (b'M', "column \"x\" of \"a\"b\" does not exist"),
            ],
        );
        let out = server_message(&quoted, Some("select x"), &plan).expect("rewritten");
        assert_eq!(field(&out, b'M'), "column \"x\" of \"****\"");
        // The error's own name fields are names, not values.
        let unique = message(
            b'E',
            &[
                (b'C', "42P07"),
                (b'M', "relation \"customers_pkey\" already exists"),
                (b'n', "customers_pkey"),
            ],
        );
        assert!(server_message(&unique, Some("create index …"), &plan).is_none());
        let card = message(b'E', &[(b'C', "P0001"), (b'M', "card 4111111111111111")]);
        let out = server_message(&card, None, &plan).expect("detector");
        assert_eq!(field(&out, b'M'), "card ****1111");
    }

    #[test]
    fn notification_payloads_are_masked_while_column_rules_apply() {
        let plan = plan_with("");
        let mut f = BytesMut::new();
        f.put_u8(b'A');
        f.put_i32(4 + 4 + 2 + 18);
        f.put_i32(42);
        f.put_slice(b"c\0alice@example.com\0");
        let frame = Frame {
            tag: b'A',
            bytes: f,
        };
        let out = notification(&frame, true, &plan).expect("masked");
        assert_eq!(&out[5..], b"\0\0\0\x2ac\0****\0");
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        assert!(notification(&frame, false, &plan).is_none());
    }

    #[test]
    fn copy_text_rows_are_masked_by_column_with_escapes_undone_and_redone() {
        let plan = plan_with("[[detector]]\nkind = \"card\"\nstyle = \"last4\"\n");
        assert_eq!(copy_unescape(b"a\\tb\\\\c\\nd\\101\\x41"), b"a\tb\\c\ndAA");
        let mut esc = Vec::new();
        copy_escape("x\ty\\z\n|", b'|', &mut esc);
        assert_eq!(esc, b"x\\ty\\\\z\\n\\|");
        let mut body = BytesMut::new();
        body.put_u8(b'd');
        let line = b"1\tAlice\\tA\tx@y.z\t4111111111111111\t\\N\n";
        body.put_i32(4 + line.len() as i32);
        body.put_slice(line);
        let frame = Frame {
            tag: b'd',
            bytes: body,
        };
        let styles = [
            None,
            Some(Style::Fixed),
            Some(Style::Last4),
            None,
            Some(Style::Fixed),
        ];
        let mut out = BytesMut::new();
        let n = mask_copy_text(&frame, &styles, b'\t', "\\N", &plan, &mut out);
        // The escaped tab is inside one field: five fields, two masked by
        // rule, one card by the detector, NULL left as NULL.
        assert_eq!(n, 3);
        assert_eq!(&out[5..], b"1\t****\t****@y.z\t****1111\t\\N\n");
        // A line that does not have the result's width is masked whole.
        let mut out = BytesMut::new();
        mask_copy_text(&frame, &styles[..2], b'\t', "\\N", &plan, &mut out);
        assert_eq!(&out[5..], b"****\t****\t****\t****\t\\N\n");
    }

    #[test]
    fn rows_round_trip_and_malformed_rows_are_errors() {
        let mut out = BytesMut::new();
        let values: [Option<&[u8]>; 3] = [Some(b"alice"), None, Some(b"")];
        write_row(values.iter().copied(), &mut out);
        let f = frame(out.clone());
        assert_eq!(row_values(&f).unwrap(), values.to_vec());
        // Cut short: the last value's length points past the end.
        let mut short = out.clone();
        short.truncate(out.len() - 1);
        assert!(row_values(&frame(short)).is_err());
        assert!(row_values(&frame(BytesMut::from(&b"D\0\0\0\x04"[..]))).is_err());
    }
}

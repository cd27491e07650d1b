//! Lineage of result columns: for each column a statement returns, which
//! table columns its values may be computed from.
//!
//! Column masking by RowDescription alone sees only columns that *are*
//! table columns; `lower(email)`, `email || ''`, `row_to_json(c)`,
//! `(SELECT email …)`, a CTE or a `UNION` branch hand the same values back
//! in a column the server reports as computed. So the statement itself is
//! walked (the real Postgres parser's tree, as in `classify`) and every
//! output column gets an [`Origin`]: the `(relation, column)` pairs read
//! into it, the functions and operators applied on the way, and whether
//! anything could not be seen through.
//!
//! The walk is pure and cached per statement text ([`Analyzer`]); what the
//! names mean (which schema an unqualified table is in, whether it is a
//! view, which columns `*` expands to, whether a function is user-defined)
//! is asked of the server per statement and applied in [`evaluate`].
//!
//! What counts as "derived": a value computed from the column's value
//! (expressions, casts, aggregates, window functions over it, whole rows,
//! subqueries returning it, set operation branches). What does not: a
//! column used only to filter, join, group or order (`WHERE`, `ON`,
//! `GROUP BY`, `ORDER BY`, `OVER (…)`, `CASE WHEN <condition>`, `EXISTS`,
//! `IN (subquery)`), and `count(…)`, which returns no value of its
//! argument. Those reveal what a `WHERE` clause reveals, which masking
//! never hid.
//!
//! Views are followed through their definitions (asked of the server with
//! the other names). It errs towards masking: anything it cannot trace (a
//! function outside `pg_catalog`, a builtin that runs SQL given as text, a
//! foreign table, an unknown node type, a statement that does not parse)
//! makes the column opaque, and opaque columns are masked whole while
//! column rules apply.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::policy::masking::{MaskPlan, Style};

/// A relation as the statement names it: `schema` is `None` when the
/// name is unqualified (then every schema's relation of that name counts,
/// which errs towards masking).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rel {
    pub schema: Option<String>,
    pub name: String,
}

/// Where the values of one output column may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Table columns read into the value; a `None` column is the whole row.
    pub columns: BTreeSet<(Rel, Option<String>)>,
    /// Functions and operators applied on the way (bare names): one
    /// defined outside `pg_catalog` could return anything it can read.
    pub routines: BTreeSet<String>,
    /// Something on the way could not be seen through.
    pub opaque: bool,
}

impl Origin {
    fn opaque() -> Origin {
        Origin {
            opaque: true,
            ..Origin::default()
        }
    }

    fn merge(&mut self, other: Origin) {
        self.columns.extend(other.columns);
        self.routines.extend(other.routines);
        self.opaque |= other.opaque;
    }

    fn whole(rel: &Rel) -> Origin {
        let mut o = Origin::default();
        o.columns.insert((rel.clone(), None));
        o
    }
}

/// Output columns, before `*` is expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// One column (its name, for references from an enclosing query).
    Col { name: String, origin: Origin },
    /// Every column of a relation, in its order (`*`, `t.*`, `COPY t`).
    Star(Rel),
    /// Columns whose number the text does not tell (`*` over a function
    /// in FROM): each may come from `origin`.
    Many(Origin),
}

/// Values a statement writes into a table (INSERT, UPDATE, MERGE,
/// ON CONFLICT DO UPDATE, CREATE TABLE AS, SELECT INTO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub target: Rel,
    /// The columns written, in order; `None`: the table's, in its order.
    pub columns: Option<Vec<String>>,
    /// What goes into them, position by position.
    pub values: Vec<Out>,
}

/// What one statement returns and reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The result's columns in order (empty for statements returning none).
    pub outputs: Vec<Out>,
    /// Every relation the statement names, read or written: an error or
    /// notice raised while it runs may quote their values.
    pub touches: BTreeSet<Rel>,
    /// The statement's rows cannot be traced at all (unparsable, a cursor
    /// FETCH, EXECUTE, CALL): every column is opaque.
    pub opaque: bool,
    /// `COPY … TO` in text format with options blastgate can parse the
    /// rows of exactly; `None` for other statements and other COPYs.
    pub copy_text: Option<CopyText>,
    /// It stores a computed value where a later statement reads it back
    /// untraced (see [`STORES`]).
    pub stores: bool,
    /// The statement's text: names the agent typed itself may be quoted
    /// back in errors; other quoted names came from data.
    pub text: String,
    /// What it writes where: a masked value written into an unmasked
    /// column would be read back unmasked.
    pub writes: Vec<Write>,
    /// Its analysis holds for any literals in its place (SELECT and DML;
    /// not COPY, whose options are literals that matter).
    pub shapeable: bool,
}

/// How a text-format COPY writes its rows (the options that matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyText {
    /// Field separator (tab unless DELIMITER says otherwise).
    pub delimiter: u8,
    /// What a NULL is written as (`\N` unless NULL says otherwise).
    pub null: String,
}

/// The text-format options of a `COPY … TO`, if it is one whose rows can
/// be parsed exactly: format text, a one-byte ASCII delimiter, any NULL
/// string; nothing else (CSV quoting, BINARY, HEADER, ENCODING).
fn copy_text(f: &Map<String, Value>) -> Option<CopyText> {
    // Only TO STDOUT: a server-side file or program is no stream to mask.
    if f.get("is_from") == Some(&Value::Bool(true))
        || f.get("is_program") == Some(&Value::Bool(true))
        || string(f.get("filename")).is_some()
    {
        return None;
    }
    let mut text = CopyText {
        delimiter: b'\t',
        null: "\\N".into(),
    };
    for opt in items(f.get("options")) {
        let Some(("DefElem", d)) = node_of(opt) else {
            return None;
        };
        let arg = d.get("arg").and_then(|a| match node_of(a) {
            Some(("String", s)) => s.get("sval").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        });
        match (string(d.get("defname"))?, arg) {
            ("format", Some(v)) if v == "text" => {}
            ("delimiter", Some(v)) if v.len() == 1 && v.is_ascii() && v != "\\" => {
                text.delimiter = v.as_bytes()[0];
            }
            ("null", Some(v)) => text.null = v,
            _ => return None,
        }
    }
    Some(text)
}

impl Lineage {
    fn opaque(sql: &str) -> Lineage {
        Lineage {
            opaque: true,
            text: sql.to_owned(),
            ..Lineage::default()
        }
    }

    /// Whether an error or notice raised while it runs could quote a
    /// table's value: it names a table or calls a function (which may read
    /// one), or cannot be traced. Errors of `SELECT 1/0` or of a
    /// mistyped `SET` keep their texts.
    pub fn may_quote_values(&self) -> bool {
        // Operators are symbols: making one of them read a table is DDL.
        let function = |r: &String| r.chars().any(char::is_alphanumeric);
        self.opaque || !self.relations().is_empty() || self.routines().iter().any(function)
    }

    /// Relations [`evaluate`] needs facts about.
    pub fn relations(&self) -> BTreeSet<Rel> {
        let mut rels = self.touches.clone();
        let written = self.writes.iter().flat_map(|w| {
            std::iter::once(&w.target)
                .cloned()
                .chain(w.values.iter().flat_map(out_relations))
        });
        rels.extend(written);
        for out in &self.outputs {
            match out {
                Out::Col { origin, .. } | Out::Many(origin) => {
                    rels.extend(origin.columns.iter().map(|(r, _)| r.clone()))
                }
                Out::Star(r) => {
                    rels.insert(r.clone());
                }
            }
        }
        rels
    }

    /// Functions and operators [`evaluate`] needs facts about.
    pub fn routines(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for out in self
            .outputs
            .iter()
            .chain(self.writes.iter().flat_map(|w| &w.values))
        {
            if let Out::Col { origin, .. } | Out::Many(origin) = out {
                names.extend(origin.routines.iter().cloned());
            }
        }
        names
    }
}

fn out_relations(out: &Out) -> Vec<Rel> {
    match out {
        Out::Col { origin, .. } | Out::Many(origin) => {
            origin.columns.iter().map(|(r, _)| r.clone()).collect()
        }
        Out::Star(r) => vec![r.clone()],
    }
}

/// Builtins that run SQL handed to them as text, or read rows by name or
/// from outside any table's columns (a cursor, statistics, the WAL): what
/// they return cannot be traced from the statement.
const RUNS_SQL: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_get_wal_record_info",
    "pg_get_wal_records_info",
    "dblink",
    "dblink_fetch",
    "dblink_exec",
];

/// Builtins that store a value where a later statement reads it back with
/// no lineage to the table it came from: a setting (`current_setting`,
/// `SHOW`, a ParameterStatus for `application_name`), a large object, the
/// WAL. Called with anything but constants while column rules apply,
/// the statement is refused.
pub const STORES: &[&str] = &[
    "set_config",
    "lo_from_bytea",
    "lo_put",
    "lowrite",
    "pg_logical_emit_message",
];

/// Whether the tree calls one of [`STORES`] with an argument that is not a
/// constant or a parameter (casts of them included).
fn stores(v: &Value) -> bool {
    match v {
        Value::Array(list) => list.iter().any(stores),
        Value::Object(map) => {
            if let Some(("FuncCall", f)) = node_of(v) {
                let name = strings(f.get("funcname")).pop().unwrap_or_default();
                if STORES.contains(&name.as_str()) && !items(f.get("args")).iter().all(constant) {
                    return true;
                }
            }
            map.values().any(stores)
        }
        _ => false,
    }
}

fn constant(v: &Value) -> bool {
    match node_of(v) {
        Some(("AConst" | "ParamRef", _)) => true,
        Some(("TypeCast", f)) => f.get("arg").is_some_and(constant),
        _ => false,
    }
}

/// Catalog relations holding copies of column values (planner
/// statistics keep the most common values of every column).
const HOLDS_VALUES: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_statistic_ext_data",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
];

/// Analyses one statement's text (a single statement, as `classify` cuts
/// them). Never fails: what does not parse is opaque.
pub fn analyze(sql: &str) -> Lineage {
    // pg_query can panic on shapes it does not expect (see classify).
    let parsed = match std::panic::catch_unwind(|| pg_query::parse(sql, 0)) {
        Ok(Ok(parsed)) => parsed,
        _ => return Lineage::opaque(sql),
    };
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return Lineage::opaque(sql);
    };
    let Some(node) = raw.stmt.as_deref() else {
        return Lineage::opaque(sql);
    };
    let Ok(tree) = serde_json::to_value(node) else {
        return Lineage::opaque(sql);
    };
    let mut walk = Walk::default();
    let mut copy = None;
    let shapeable = matches!(
        node_of(&tree),
        Some((
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt",
            _
        ))
    );
    let outputs = match node_of(&tree) {
        Some(("SelectStmt", f)) => {
            let outs = walk.select(f, None);
            match f.get("into_clause").and_then(Value::as_object) {
                // SELECT … INTO t: no rows to the agent, a new table.
                Some(into) => {
                    walk.new_table(into, outs);
                    Vec::new()
                }
                None => outs,
            }
        }
        Some(("CreateTableAsStmt", f)) => {
            let outs = match f.get("query") {
                Some(q) => walk.statement(q, None),
                None => vec![Out::Many(Origin::opaque())],
            };
            // A materialized view is followed through its definition when
            // read; a table made of masked values would not be.
            let matview = f.get("objtype").and_then(Value::as_i64) == Some(24);
            if let (false, Some(into)) = (matview, f.get("into").and_then(Value::as_object)) {
                walk.new_table(into, outs);
            }
            Vec::new()
        }
        Some(("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt", f)) => walk.dml(f, None),
        Some(("CopyStmt", f)) => {
            copy = copy_text(f);
            walk.copy(f)
        }
        Some(("DeclareCursorStmt" | "ExplainStmt" | "PrepareStmt", f)) => {
            // No rows now (EXPLAIN's are plan text); what the query
            // touches still matters for errors raised while it runs.
            if let Some(q) = f.get("query") {
                walk.statement(q, None);
            }
            Vec::new()
        }
        Some(("VariableShowStmt" | "TransactionStmt" | "VariableSetStmt", _)) => Vec::new(),
        // FETCH, EXECUTE, CALL and the rest: rows whose source the text
        // does not show.
        _ => return Lineage::opaque(sql),
    };
    Lineage {
        outputs,
        touches: walk.touches,
        opaque: false,
        copy_text: copy,
        stores: stores(&tree),
        text: sql.to_owned(),
        writes: walk.writes,
        shapeable,
    }
}

/// `{"node": {"Type": {..}}}` → `("Type", fields)`.
fn node_of(v: &Value) -> Option<(&str, &Map<String, Value>)> {
    let inner = v.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    let (name, fields) = inner.iter().next()?;
    Some((name.as_str(), fields.as_object()?))
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn string(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The strings of a list of `String` nodes (names, column aliases).
fn strings(v: Option<&Value>) -> Vec<String> {
    items(v)
        .iter()
        .filter_map(|n| match node_of(n) {
            Some(("String", f)) => string(f.get("sval")).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// A relation or subquery in a FROM list, as columns can reach it.
#[derive(Debug, Clone)]
enum Item {
    /// A relation: its columns are known to the server only.
    Table { alias: String, rel: Rel },
    /// A subquery, CTE reference: its output columns.
    Derived { alias: String, outs: Vec<Out> },
    /// Columns with no names known (a function, a renamed table, a join
    /// alias): every one may come from `origin`.
    Rows { alias: String, origin: Origin },
}

impl Item {
    fn alias(&self) -> &str {
        match self {
            Item::Table { alias, .. } | Item::Derived { alias, .. } | Item::Rows { alias, .. } => {
                alias
            }
        }
    }

    /// `alias.*`
    fn star(&self) -> Vec<Out> {
        match self {
            Item::Table { rel, .. } => vec![Out::Star(rel.clone())],
            Item::Derived { outs, .. } => outs.clone(),
            Item::Rows { origin, .. } => vec![Out::Many(origin.clone())],
        }
    }

    /// `alias.column`: `None` when this item has no such column for sure.
    fn column(&self, name: &str) -> Option<Origin> {
        match self {
            Item::Table { rel, .. } => {
                let mut o = Origin::default();
                o.columns.insert((rel.clone(), Some(name.to_owned())));
                Some(o)
            }
            Item::Rows { origin, .. } => Some(origin.clone()),
            Item::Derived { outs, .. } => {
                let mut found = None::<Origin>;
                for out in outs {
                    let hit = match out {
                        Out::Col { name: n, origin } if n == name => Some(origin.clone()),
                        Out::Col { .. } => None,
                        Out::Star(rel) => {
                            let mut o = Origin::default();
                            o.columns.insert((rel.clone(), Some(name.to_owned())));
                            Some(o)
                        }
                        Out::Many(origin) => Some(origin.clone()),
                    };
                    if let Some(h) = hit {
                        found.get_or_insert_with(Origin::default).merge(h);
                    }
                }
                found
            }
        }
    }
}

/// Names visible at one query level, and the level around it.
struct Scope<'p> {
    items: Vec<Item>,
    ctes: Vec<(String, Vec<Out>)>,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn new(parent: Option<&'p Scope<'p>>) -> Scope<'p> {
        Scope {
            items: Vec::new(),
            ctes: Vec::new(),
            parent,
        }
    }

    fn cte(&self, name: &str) -> Option<Vec<Out>> {
        // Later CTEs of one WITH shadow earlier ones of the same level.
        self.ctes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, outs)| outs.clone())
            .or_else(|| self.parent.and_then(|p| p.cte(name)))
    }

    fn levels(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |s| s.parent)
    }
}

/// Union of everything some output columns may come from.
fn flatten(outs: &[Out]) -> Origin {
    let mut o = Origin::default();
    for out in outs {
        match out {
            Out::Col { origin, .. } | Out::Many(origin) => o.merge(origin.clone()),
            Out::Star(rel) => o.merge(Origin::whole(rel)),
        }
    }
    o
}

/// Positional renaming by an alias's column list (`AS s(a, b)`); columns
/// past the list keep their names. Without known positions (a `*` inside)
/// every name may be any column.
fn rename(outs: Vec<Out>, names: &[String]) -> Vec<Out> {
    if names.is_empty() {
        return outs;
    }
    if outs.iter().all(|o| matches!(o, Out::Col { .. })) {
        return outs
            .into_iter()
            .enumerate()
            .map(|(i, o)| match (o, names.get(i)) {
                (Out::Col { origin, .. }, Some(n)) => Out::Col {
                    name: n.clone(),
                    origin,
                },
                (o, _) => o,
            })
            .collect();
    }
    vec![Out::Many(flatten(&outs))]
}

/// Columns of set operation branches or VALUES rows: column i of every
/// branch. Without known positions in all of them, every column may come
/// from anything any branch returns.
fn combine(branches: Vec<Vec<Out>>) -> Vec<Out> {
    let Some(first) = branches.first() else {
        return Vec::new();
    };
    let width = first.len();
    let positional = branches
        .iter()
        .all(|b| b.len() == width && b.iter().all(|o| matches!(o, Out::Col { .. })));
    if !positional {
        let mut o = Origin::default();
        for b in &branches {
            o.merge(flatten(b));
        }
        return vec![Out::Many(o)];
    }
    let mut outs = first.clone();
    for branch in branches.into_iter().skip(1) {
        for (into, from) in outs.iter_mut().zip(branch) {
            if let (Out::Col { origin, .. }, Out::Col { origin: o, .. }) = (into, from) {
                origin.merge(o);
            }
        }
    }
    outs
}

#[derive(Default)]
struct Walk {
    touches: BTreeSet<Rel>,
    writes: Vec<Write>,
}

impl Walk {
    /// Any statement that can stand as a subquery or CTE body.
    fn statement(&mut self, v: &Value, parent: Option<&Scope>) -> Vec<Out> {
        match node_of(v) {
            Some(("SelectStmt", f)) => self.select(f, parent),
            Some(("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt", f)) => {
                self.dml(f, parent)
            }
            _ => vec![Out::Many(Origin::opaque())],
        }
    }

    /// `INTO t` / `CREATE TABLE t AS`: a write of `outs` into a new table.
    fn new_table(&mut self, into: &Map<String, Value>, outs: Vec<Out>) {
        let Some(rel) = into.get("rel").and_then(Value::as_object) else {
            return;
        };
        let columns = strings(into.get("col_names"));
        self.writes.push(Write {
            target: Rel {
                schema: string(rel.get("schemaname")).map(str::to_owned),
                name: string(rel.get("relname")).unwrap_or_default().to_owned(),
            },
            columns: (!columns.is_empty()).then_some(columns),
            values: outs,
        });
    }

    fn with(&mut self, fields: &Map<String, Value>, scope: &mut Scope) {
        let Some(with) = fields.get("with_clause").and_then(Value::as_object) else {
            return;
        };
        let recursive = with.get("recursive") == Some(&Value::Bool(true));
        for cte in items(with.get("ctes")) {
            let Some(("CommonTableExpr", c)) = node_of(cte) else {
                continue;
            };
            let name = string(c.get("ctename")).unwrap_or_default().to_owned();
            let colnames = strings(c.get("aliascolnames"));
            let Some(query) = c.get("ctequery") else {
                continue;
            };
            let outs = if recursive {
                // The CTE's own name inside it carries what earlier rounds
                // returned: first nothing, then all its first pass found.
                scope
                    .ctes
                    .push((name.clone(), vec![Out::Many(Origin::default())]));
                let first = self.statement(query, Some(scope));
                if let Some(last) = scope.ctes.last_mut() {
                    last.1 = vec![Out::Many(flatten(&first))];
                }
                let second = self.statement(query, Some(scope));
                scope.ctes.pop();
                second
            } else {
                self.statement(query, Some(scope))
            };
            scope.ctes.push((name, rename(outs, &colnames)));
        }
    }

    fn select(&mut self, f: &Map<String, Value>, parent: Option<&Scope>) -> Vec<Out> {
        let mut scope = Scope::new(parent);
        self.with(f, &mut scope);
        let op = f.get("op").and_then(Value::as_i64).unwrap_or(1);
        if op > 1 {
            let mut branches = Vec::new();
            for side in ["larg", "rarg"] {
                match f.get(side).and_then(Value::as_object) {
                    Some(s) => branches.push(self.select(s, Some(&scope))),
                    None => branches.push(vec![Out::Many(Origin::opaque())]),
                }
            }
            return combine(branches);
        }
        let rows = items(f.get("values_lists"));
        if !rows.is_empty() {
            let branches = rows
                .iter()
                .map(|row| {
                    let exprs = match node_of(row) {
                        Some(("List", l)) => items(l.get("items")),
                        _ => &[],
                    };
                    exprs
                        .iter()
                        .enumerate()
                        .map(|(i, e)| Out::Col {
                            name: format!("column{}", i + 1),
                            origin: self.expr(e, &scope),
                        })
                        .collect()
                })
                .collect();
            return combine(branches);
        }
        for item in items(f.get("from_clause")) {
            self.range_item(item, &mut scope);
        }
        // Filters and groupings return no values, but an error raised in
        // them may quote one; and their subqueries name relations.
        for key in ["where_clause", "having_clause"] {
            if let Some(v) = f.get(key) {
                self.expr(v, &scope);
            }
        }
        self.targets(items(f.get("target_list")), &scope)
    }

    /// INSERT/UPDATE/DELETE/MERGE: what RETURNING returns; what it writes
    /// where is noted in [`Walk::writes`].
    fn dml(&mut self, f: &Map<String, Value>, parent: Option<&Scope>) -> Vec<Out> {
        let mut scope = Scope::new(parent);
        self.with(f, &mut scope);
        // INSERT's query does not see the table it inserts into.
        let inserted = f
            .get("select_stmt")
            .filter(|v| !v.is_null())
            .map(|select| self.statement(select, Some(&scope)));
        let target = f.get("relation").and_then(Value::as_object).map(|rel| Rel {
            schema: string(rel.get("schemaname")).map(str::to_owned),
            name: string(rel.get("relname")).unwrap_or_default().to_owned(),
        });
        if let Some(rel) = f.get("relation").and_then(Value::as_object) {
            self.range_var(rel, &mut scope);
        }
        for key in ["from_clause", "using_clause"] {
            for item in items(f.get(key)) {
                self.range_item(item, &mut scope);
            }
        }
        if let Some(source) = f.get("source_relation").filter(|v| !v.is_null()) {
            self.range_item(source, &mut scope);
        }
        let mut set = Vec::new();
        if let Some(values) = inserted {
            let columns: Vec<String> = items(f.get("cols"))
                .iter()
                .filter_map(|c| match node_of(c) {
                    Some(("ResTarget", r)) => string(r.get("name")).map(str::to_owned),
                    _ => None,
                })
                .collect();
            if let Some(target) = &target {
                self.writes.push(Write {
                    target: target.clone(),
                    columns: (!columns.is_empty()).then_some(columns),
                    values: values.clone(),
                });
            }
            // ON CONFLICT DO UPDATE sees the row proposed as `excluded`.
            if let Some(conflict) = f.get("on_conflict_clause").and_then(Value::as_object) {
                scope.items.push(Item::Rows {
                    alias: "excluded".into(),
                    origin: flatten(&values),
                });
                set.extend(self.assignments(items(conflict.get("target_list")), &scope));
                if let Some(w) = conflict.get("where_clause") {
                    self.expr(w, &scope);
                }
            }
        }
        set.extend(self.assignments(items(f.get("target_list")), &scope));
        let mut merged = Origin::default();
        for clause in items(f.get("merge_when_clauses")) {
            if let Some(("MergeWhenClause", c)) = node_of(clause) {
                merged.merge(self.children(c, &scope));
            }
        }
        if let Some(target) = &target {
            if !set.is_empty() {
                let (columns, values) = set
                    .into_iter()
                    .map(|(c, o)| (c.clone(), Out::Col { name: c, origin: o }))
                    .unzip();
                self.writes.push(Write {
                    target: target.clone(),
                    columns: Some(columns),
                    values,
                });
            }
            if !items(f.get("merge_when_clauses")).is_empty() {
                // MERGE: any of its values may go into any column.
                self.writes.push(Write {
                    target: target.clone(),
                    columns: None,
                    values: vec![Out::Many(merged)],
                });
            }
        }
        for key in ["where_clause", "join_condition"] {
            if let Some(v) = f.get(key) {
                self.expr(v, &scope);
            }
        }
        let returning = f
            .get("returning_clause")
            .and_then(|r| r.get("exprs"))
            .or_else(|| f.get("returning_list"));
        self.targets(items(returning), &scope)
    }

    /// `SET column = value` lists: each column with its value's origin.
    fn assignments(&mut self, list: &[Value], scope: &Scope) -> Vec<(String, Origin)> {
        list.iter()
            .filter_map(|t| match node_of(t) {
                Some(("ResTarget", r)) => {
                    let name = string(r.get("name")).unwrap_or_default().to_owned();
                    let origin = match r.get("val") {
                        Some(v) => self.expr(v, scope),
                        None => Origin::default(),
                    };
                    Some((name, origin))
                }
                _ => None,
            })
            .collect()
    }

    fn copy(&mut self, f: &Map<String, Value>) -> Vec<Out> {
        if f.get("is_from") == Some(&Value::Bool(true)) {
            if let Some(rel) = f.get("relation").and_then(Value::as_object) {
                self.range_var(rel, &mut Scope::new(None));
            }
            return Vec::new();
        }
        if let Some(q) = f.get("query").filter(|q| !q.is_null()) {
            return self.statement(q, None);
        }
        let Some(rel) = f.get("relation").and_then(Value::as_object) else {
            return vec![Out::Many(Origin::opaque())];
        };
        let mut scope = Scope::new(None);
        self.range_var(rel, &mut scope);
        let Some(item) = scope.items.pop() else {
            return vec![Out::Many(Origin::opaque())];
        };
        let cols = strings(f.get("attlist"));
        if cols.is_empty() {
            return item.star();
        }
        cols.into_iter()
            .map(|c| Out::Col {
                origin: item.column(&c).unwrap_or_else(Origin::opaque),
                name: c,
            })
            .collect()
    }

    fn range_var(&mut self, r: &Map<String, Value>, scope: &mut Scope) {
        let name = string(r.get("relname")).unwrap_or_default().to_owned();
        let schema = string(r.get("schemaname")).map(str::to_owned);
        let alias = r.get("alias").filter(|a| !a.is_null());
        let alias_name = alias
            .and_then(|a| string(a.get("aliasname")))
            .unwrap_or(&name)
            .to_owned();
        let colnames = strings(alias.and_then(|a| a.get("colnames")));
        if schema.is_none() {
            if let Some(outs) = scope.cte(&name) {
                scope.items.push(Item::Derived {
                    alias: alias_name,
                    outs: rename(outs, &colnames),
                });
                return;
            }
        }
        let rel = Rel { schema, name };
        self.touches.insert(rel.clone());
        if colnames.is_empty() {
            scope.items.push(Item::Table {
                alias: alias_name,
                rel,
            });
        } else {
            // Renamed columns: which is which needs the catalog; any
            // reference may be any column.
            scope.items.push(Item::Rows {
                alias: alias_name,
                origin: Origin::whole(&rel),
            });
        }
    }

    fn range_item(&mut self, v: &Value, scope: &mut Scope) {
        let Some((kind, f)) = node_of(v) else {
            return;
        };
        let alias = f.get("alias").filter(|a| !a.is_null());
        let alias_name = alias
            .and_then(|a| string(a.get("aliasname")))
            .map(str::to_owned);
        match kind {
            "RangeVar" => self.range_var(f, scope),
            "RangeSubselect" => {
                let outs = match f.get("subquery") {
                    Some(q) => self.statement(q, Some(scope)),
                    None => vec![Out::Many(Origin::opaque())],
                };
                let colnames = strings(alias.and_then(|a| a.get("colnames")));
                scope.items.push(Item::Derived {
                    alias: alias_name.unwrap_or_default(),
                    outs: rename(outs, &colnames),
                });
            }
            "JoinExpr" => {
                let before = scope.items.len();
                for side in ["larg", "rarg"] {
                    if let Some(s) = f.get(side) {
                        self.range_item(s, scope);
                    }
                }
                if let Some(q) = f.get("quals") {
                    self.expr(q, scope);
                }
                let joined: Vec<Out> = scope.items[before..].iter().flat_map(Item::star).collect();
                let using_alias = f
                    .get("join_using_alias")
                    .and_then(|a| string(a.get("aliasname")))
                    .map(str::to_owned);
                for name in [alias_name, using_alias].into_iter().flatten() {
                    scope.items.push(Item::Rows {
                        alias: name,
                        origin: flatten(&joined),
                    });
                }
            }
            "RangeFunction" => {
                let mut origin = Origin::default();
                let mut first_name = None;
                for entry in items(f.get("functions")) {
                    // Each entry is a list: [function call, column definitions].
                    let call = match node_of(entry) {
                        Some(("List", l)) => items(l.get("items")).first(),
                        _ => Some(entry),
                    };
                    if let Some(call) = call {
                        if first_name.is_none() {
                            if let Some(("FuncCall", c)) = node_of(call) {
                                first_name = strings(c.get("funcname")).pop();
                            }
                        }
                        origin.merge(self.expr(call, scope));
                    }
                }
                scope.items.push(Item::Rows {
                    alias: alias_name.or(first_name).unwrap_or_default(),
                    origin,
                });
            }
            "RangeTableSample" => {
                if let Some(r) = f.get("relation") {
                    self.range_item(r, scope);
                }
            }
            _ => {
                // XMLTABLE, JSON_TABLE and what else may come: traced by
                // nothing here.
                scope.items.push(Item::Rows {
                    alias: alias_name.unwrap_or_default(),
                    origin: Origin::opaque(),
                });
            }
        }
    }

    fn targets(&mut self, list: &[Value], scope: &Scope) -> Vec<Out> {
        let mut outs = Vec::new();
        for t in list {
            let Some(("ResTarget", r)) = node_of(t) else {
                outs.push(Out::Many(Origin::opaque()));
                continue;
            };
            let Some(val) = r.get("val") else {
                continue;
            };
            if let Some(("ColumnRef", c)) = node_of(val) {
                if let Some(star) = self.star(c, scope) {
                    outs.extend(star);
                    continue;
                }
            }
            let name = string(r.get("name"))
                .map(str::to_owned)
                .unwrap_or_else(|| figure_name(val));
            outs.push(Out::Col {
                name,
                origin: self.expr(val, scope),
            });
        }
        outs
    }

    /// `*` or `alias.*`: `None` for other column references.
    fn star(&mut self, c: &Map<String, Value>, scope: &Scope) -> Option<Vec<Out>> {
        let fields = items(c.get("fields"));
        let (last, qualifier) = fields.split_last()?;
        if !matches!(node_of(last), Some(("AStar", _))) {
            return None;
        }
        let names: Vec<String> = qualifier
            .iter()
            .filter_map(|n| match node_of(n) {
                Some(("String", f)) => string(f.get("sval")).map(str::to_owned),
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Some(scope.items.iter().flat_map(Item::star).collect());
        }
        Some(match self.item(&names, scope) {
            Some(item) => item.star(),
            None => vec![Out::Many(Origin::opaque())],
        })
    }

    /// The FROM item a qualifier names (`t`, `s.t`, `db.s.t`).
    fn item<'s>(&self, names: &[String], scope: &'s Scope) -> Option<&'s Item> {
        let (name, schema) = match names {
            [t] => (t, None),
            [.., s, t] => (t, Some(s)),
            [] => return None,
        };
        scope.levels().find_map(|level| {
            level.items.iter().rev().find(|i| match (i, schema) {
                (_, None) => i.alias() == name,
                (Item::Table { rel, alias }, Some(s)) => {
                    alias == name && rel.name == *name && rel.schema.as_ref() == Some(s)
                }
                _ => false,
            })
        })
    }

    fn column_ref(&mut self, c: &Map<String, Value>, scope: &Scope) -> Origin {
        if let Some(star) = self.star(c, scope) {
            return flatten(&star);
        }
        let names: Vec<String> = items(c.get("fields"))
            .iter()
            .filter_map(|n| match node_of(n) {
                Some(("String", f)) => string(f.get("sval")).map(str::to_owned),
                _ => None,
            })
            .collect();
        match names.as_slice() {
            [] => Origin::opaque(),
            [column] => self.unqualified(column, scope),
            [qualifier @ .., column] => {
                if let Some(item) = self.item(qualifier, scope) {
                    return item.column(column).unwrap_or_else(Origin::opaque);
                }
                // `a.b` with no FROM item `a`: a composite column's field.
                match qualifier {
                    [composite] => self.unqualified(composite, scope),
                    _ => Origin::opaque(),
                }
            }
        }
    }

    /// An unqualified name: a column of any FROM item at any level that may
    /// have it, or a whole row named by its alias. Table columns are known
    /// to the server only, so every table in reach is a candidate; the
    /// catalog drops those without such a column.
    fn unqualified(&mut self, column: &str, scope: &Scope) -> Origin {
        let mut found = None::<Origin>;
        for level in scope.levels() {
            let mut exact = false;
            for item in &level.items {
                if let Some(o) = item.column(column) {
                    exact |= matches!(item, Item::Derived { .. });
                    found.get_or_insert_with(Origin::default).merge(o);
                }
                if item.alias() == column {
                    found
                        .get_or_insert_with(Origin::default)
                        .merge(flatten(&item.star()));
                }
            }
            if exact {
                break;
            }
        }
        found.unwrap_or_else(Origin::opaque)
    }

    fn exprs(&mut self, list: &[Value], scope: &Scope) -> Origin {
        let mut o = Origin::default();
        for e in list {
            o.merge(self.expr(e, scope));
        }
        o
    }

    /// Where an expression's value may come from.
    fn expr(&mut self, v: &Value, scope: &Scope) -> Origin {
        let Some((kind, f)) = node_of(v) else {
            return match v {
                Value::Array(list) => self.exprs(list, scope),
                _ => Origin::default(),
            };
        };
        match kind {
            "ColumnRef" => self.column_ref(f, scope),
            "AConst" | "ParamRef" | "SqlvalueFunction" | "SetToDefault" | "String" | "Integer"
            | "Float" | "Boolean" | "BitString" | "AStar" => Origin::default(),
            "FuncCall" => self.function(f, scope),
            "SubLink" => self.sublink(f, scope),
            "CaseExpr" => {
                // The conditions decide which result; they return nothing.
                let mut o = Origin::default();
                for w in items(f.get("args")) {
                    if let Some(("CaseWhen", cw)) = node_of(w) {
                        if let Some(e) = cw.get("expr") {
                            self.expr(e, scope);
                        }
                        if let Some(r) = cw.get("result") {
                            o.merge(self.expr(r, scope));
                        }
                    }
                }
                if let Some(arg) = f.get("arg") {
                    self.expr(arg, scope);
                }
                if let Some(d) = f.get("defresult") {
                    o.merge(self.expr(d, scope));
                }
                o
            }
            "MultiAssignRef" => match f.get("source") {
                Some(a) => self.expr(a, scope),
                None => Origin::default(),
            },
            "TypeCast" | "CollateClause" | "NamedArgExpr" => match f.get("arg") {
                Some(a) => self.expr(a, scope),
                None => Origin::default(),
            },
            "AExpr" => {
                let mut o = Origin::default();
                o.routines.extend(strings(f.get("name")));
                for side in ["lexpr", "rexpr"] {
                    if let Some(e) = f.get(side) {
                        o.merge(self.expr(e, scope));
                    }
                }
                o
            }
            "SelectStmt" => {
                let outs = self.select(f, Some(scope));
                flatten(&outs)
            }
            // Nodes whose value is made of their children's.
            "AIndirection"
            | "AArrayExpr"
            | "RowExpr"
            | "CoalesceExpr"
            | "MinMaxExpr"
            | "NullTest"
            | "BooleanTest"
            | "BoolExpr"
            | "List"
            | "GroupingFunc"
            | "XmlExpr"
            | "XmlSerialize"
            | "AIndices"
            | "JsonValueExpr"
            | "JsonKeyValue"
            | "JsonObjectConstructor"
            | "JsonArrayConstructor"
            | "JsonArrayQueryConstructor"
            | "JsonObjectAgg"
            | "JsonArrayAgg"
            | "JsonAggConstructor"
            | "JsonIsPredicate"
            | "JsonScalarExpr"
            | "JsonSerializeExpr"
            | "JsonParseExpr"
            | "JsonFuncExpr"
            | "JsonOutput"
            | "JsonReturning"
            | "JsonFormat"
            | "JsonArgument"
            | "SortBy"
            | "TypeName" => self.children(f, scope),
            _ => Origin::opaque(),
        }
    }

    /// Every child node of a transparent node, typed sub-messages included.
    fn children(&mut self, f: &Map<String, Value>, scope: &Scope) -> Origin {
        let mut o = Origin::default();
        for value in f.values() {
            o.merge(self.child(value, scope));
        }
        o
    }

    fn child(&mut self, v: &Value, scope: &Scope) -> Origin {
        match v {
            Value::Object(m) if m.contains_key("node") => self.expr(v, scope),
            Value::Object(m) => self.children(m, scope),
            Value::Array(list) => {
                let mut o = Origin::default();
                for e in list {
                    o.merge(self.child(e, scope));
                }
                o
            }
            _ => Origin::default(),
        }
    }

    fn function(&mut self, f: &Map<String, Value>, scope: &Scope) -> Origin {
        let names = strings(f.get("funcname"));
        let name = names.last().cloned().unwrap_or_default();
        let schema = (names.len() > 1).then(|| names[names.len() - 2].clone());
        // Filters and window clauses return nothing (but may name relations).
        if let Some(filter) = f.get("agg_filter") {
            self.expr(filter, scope);
        }
        if let Some(over) = f.get("over").and_then(Value::as_object) {
            self.children(over, scope);
        }
        let ordered_set = f.get("agg_within_group") == Some(&Value::Bool(true));
        let order = self.exprs(items(f.get("agg_order")), scope);
        let mut o = self.exprs(items(f.get("args")), scope);
        // percentile_disc(…) WITHIN GROUP (ORDER BY email) returns an email.
        if ordered_set {
            o.merge(order);
        }
        let builtin = schema.as_deref().is_none_or(|s| s == "pg_catalog");
        if !builtin || RUNS_SQL.contains(&name.as_str()) {
            return Origin::opaque();
        }
        if name == "count" {
            // A number of rows, not a value of its argument.
            return Origin {
                routines: BTreeSet::from([name]),
                ..Origin::default()
            };
        }
        if schema.is_none() {
            o.routines.insert(name);
        }
        o
    }

    fn sublink(&mut self, f: &Map<String, Value>, scope: &Scope) -> Origin {
        // EXISTS = 1, ALL = 2, ANY = 3 (also IN): a truth value, like a
        // WHERE clause; EXPR = 5, ARRAY = 7 and the rest return values.
        let kind = f.get("sub_link_type").and_then(Value::as_i64).unwrap_or(0);
        let outs = match f.get("subselect") {
            Some(q) => self.statement(q, Some(scope)),
            None => vec![Out::Many(Origin::opaque())],
        };
        let test = match f.get("testexpr") {
            Some(t) => self.expr(t, scope),
            None => Origin::default(),
        };
        match kind {
            1..=3 => Origin::default(),
            _ => {
                let mut o = flatten(&outs);
                o.merge(test);
                o
            }
        }
    }
}

/// The name Postgres gives an unnamed output column (close enough for
/// references from an enclosing query; a miss there is opaque, not open).
fn figure_name(v: &Value) -> String {
    match node_of(v) {
        Some(("ColumnRef", c)) => strings(c.get("fields"))
            .pop()
            .unwrap_or_else(|| "?column?".into()),
        Some(("FuncCall", c)) => strings(c.get("funcname"))
            .pop()
            .unwrap_or_else(|| "?column?".into()),
        Some(("TypeCast", c)) => match c.get("arg") {
            Some(a) if figure_name(a) != "?column?" => figure_name(a),
            _ => c
                .get("type_name")
                .map(|t| strings(t.get("names")).pop().unwrap_or_default())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "?column?".into()),
        },
        Some(("CaseExpr", _)) => "case".into(),
        Some(("CoalesceExpr", _)) => "coalesce".into(),
        Some(("SubLink", s)) => match s.get("subselect").and_then(node_of) {
            Some(("SelectStmt", sel))
                if s.get("sub_link_type").and_then(Value::as_i64) == Some(5) =>
            {
                items(sel.get("target_list"))
                    .first()
                    .and_then(|t| match node_of(t) {
                        Some(("ResTarget", r)) => string(r.get("name"))
                            .map(str::to_owned)
                            .or_else(|| r.get("val").map(figure_name)),
                        _ => None,
                    })
                    .unwrap_or_else(|| "?column?".into())
            }
            Some(_) if s.get("sub_link_type").and_then(Value::as_i64) == Some(7) => "array".into(),
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// What the server says a relation name means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelInfo {
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, …
    pub kind: char,
    /// Found first on the search path (what an unqualified name means).
    pub visible: bool,
    /// Column names in order (dropped columns left out).
    pub columns: Vec<String>,
    /// A view's or materialized view's query (`pg_get_viewdef`).
    pub definition: Option<String>,
}

/// Facts from the server about the names of one statement.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Every relation with each referenced name, in any schema.
    pub relations: Vec<RelInfo>,
    /// Function and operator names defined outside `pg_catalog`.
    pub user_routines: HashSet<String>,
    /// The tables a table inherits from or is a partition of (any depth),
    /// by `(schema, name)`: a partition's or child's rows are the parent's
    /// data, so the parent's column rules apply to them.
    pub ancestors: HashMap<(String, String), Vec<(String, String)>>,
}

impl Facts {
    /// The style a field rule gives a table's column, its own or an
    /// ancestor's (the first found).
    fn rule(&self, mask: &MaskPlan, info: &RelInfo, column: &str) -> Option<Style> {
        let own = (info.schema.clone(), info.name.clone());
        let ancestors = self.ancestors.get(&own).into_iter().flatten();
        std::iter::once(&own)
            .chain(ancestors)
            .find_map(|(schema, table)| mask.column(schema, table, column).map(|(s, _)| s))
    }

    fn matches<'f>(&'f self, rel: &'f Rel) -> impl Iterator<Item = &'f RelInfo> {
        self.relations.iter().filter(move |r| {
            r.name == rel.name && rel.schema.as_ref().is_none_or(|s| *s == r.schema)
        })
    }
}

/// Views the server ships (`pg_roles`, `information_schema.columns`, …):
/// catalog data, not table values, so not opaque the way a user's view is
/// (the ones holding values are in [`HOLDS_VALUES`]).
fn system_view(info: &RelInfo) -> bool {
    matches!(info.schema.as_str(), "pg_catalog" | "information_schema")
}

/// The style a value from `origin` is masked with, if any. More than one
/// style among its sources: the plainest (`fixed`).
fn style_of(origin: &Origin, facts: &Facts, mask: &MaskPlan, depth: usize) -> Option<Style> {
    if origin.opaque
        || origin
            .routines
            .iter()
            .any(|r| facts.user_routines.contains(r))
    {
        return Some(Style::Fixed);
    }
    let mut styles = BTreeSet::new();
    for (rel, column) in &origin.columns {
        let mut known = false;
        for info in facts.matches(rel) {
            known = true;
            if HOLDS_VALUES.contains(&info.name.as_str()) && info.schema == "pg_catalog" {
                return Some(Style::Fixed);
            }
            let wanted: Vec<usize> = match column {
                Some(c) => info
                    .columns
                    .iter()
                    .position(|have| have == c)
                    .into_iter()
                    .collect(),
                None => (0..info.columns.len()).collect(),
            };
            if wanted.is_empty() {
                continue;
            }
            for &i in &wanted {
                if let Some(s) = facts.rule(mask, info, &info.columns[i]) {
                    styles.insert(style_key(s));
                }
            }
            if matches!(info.kind, 'r' | 'p') || system_view(info) {
                continue;
            }
            // A view's column is what its definition makes it; a foreign
            // table's (or a view too deep) cannot be followed.
            match view_styles(info, facts, mask, depth) {
                Some(view) => {
                    for &i in &wanted {
                        match view.get(i) {
                            Some(Some(s)) => {
                                styles.insert(style_key(*s));
                            }
                            Some(None) => {}
                            None => return Some(Style::Fixed),
                        }
                    }
                }
                None => return Some(Style::Fixed),
            }
        }
        if !known {
            // Nothing of that name on the server (or not visible to
            // blastgate's catalog connection): fail closed.
            return Some(Style::Fixed);
        }
    }
    match styles.len() {
        0 => None,
        1 => styles.into_iter().next().map(style_from_key),
        _ => Some(Style::Fixed),
    }
}

fn style_key(s: Style) -> u8 {
    match s {
        Style::Fixed => 0,
        Style::Last4 => 1,
        Style::Hash => 2,
    }
}

fn style_from_key(k: u8) -> Style {
    match k {
        1 => Style::Last4,
        2 => Style::Hash,
        _ => Style::Fixed,
    }
}

/// The masking style for each of a result's `width` columns (`None`:
/// not derived from a masked column). When the expanded outputs do not
/// line up with the columns the server described, every column may come
/// from anything the statement returns.
pub fn evaluate(
    lineage: &Lineage,
    facts: &Facts,
    mask: &MaskPlan,
    width: usize,
) -> Vec<Option<Style>> {
    evaluate_at(lineage, facts, mask, width, 0)
}

/// [`evaluate`] inside `depth` view definitions.
fn evaluate_at(
    lineage: &Lineage,
    facts: &Facts,
    mask: &MaskPlan,
    width: usize,
    depth: usize,
) -> Vec<Option<Style>> {
    if lineage.opaque {
        return vec![Some(Style::Fixed); width];
    }
    let mut expanded: Option<Vec<Origin>> = Some(Vec::new());
    for out in &lineage.outputs {
        let Some(list) = expanded.as_mut() else { break };
        match out {
            Out::Col { origin, .. } => list.push(origin.clone()),
            Out::Star(rel) => {
                // What the unqualified name means to the server: the
                // relation first on the search path.
                let mut infos: Vec<&RelInfo> = facts.matches(rel).collect();
                if rel.schema.is_none() {
                    infos.retain(|i| i.visible);
                }
                match infos.as_slice() {
                    [one] => {
                        for c in &one.columns {
                            let mut o = Origin::default();
                            o.columns.insert((rel.clone(), Some(c.clone())));
                            list.push(o);
                        }
                    }
                    _ => expanded = None,
                }
            }
            Out::Many(_) => expanded = None,
        }
    }
    match expanded {
        Some(list) if list.len() == width => list
            .iter()
            .map(|o| style_of(o, facts, mask, depth))
            .collect(),
        _ => {
            let all = flatten(&lineage.outputs);
            vec![style_of(&all, facts, mask, depth); width]
        }
    }
}

/// A name as SQL the server reads the same in any client encoding and
/// with any `standard_conforming_strings`: hex digits only.
fn name_literal(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')::name")
}

fn name_array(names: &BTreeSet<String>) -> String {
    let list: Vec<String> = names.iter().map(|n| name_literal(n)).collect();
    format!("ARRAY[{}]::name[]", list.join(", "))
}

/// The catalog query for [`Facts`] about a statement's names; `None` when
/// it names nothing to look up.
pub fn facts_query(l: &Lineage) -> Option<String> {
    let rels: BTreeSet<String> = l.relations().into_iter().map(|r| r.name).collect();
    names_query(&rels, &l.routines())
}

fn names_query(rels: &BTreeSet<String>, routines: &BTreeSet<String>) -> Option<String> {
    if rels.is_empty() && routines.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT 'r', n.nspname::text, c.relname::text, c.relkind::text, \
                pg_catalog.pg_table_is_visible(c.oid)::text, a.attname::text, \
                c.oid::int8, coalesce(a.attnum, 0)::int4, \
                CASE WHEN c.relkind IN ('v', 'm') AND coalesce(a.attnum, 1) = 1 \
                     THEN pg_catalog.pg_get_viewdef(c.oid) END \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_attribute a \
                ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relname = ANY ({rels}) \
         UNION ALL \
         SELECT 'a', n.nspname::text, c.relname::text, '', '', pn.nspname::text, \
                c.oid::int8, 0, p.relname::text \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN LATERAL (WITH RECURSIVE up(oid) AS ( \
                 SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid \
                 UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i \
                       JOIN up ON i.inhrelid = up.oid) \
               SELECT oid FROM up) anc ON true \
         JOIN pg_catalog.pg_class p ON p.oid = anc.oid \
         JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
         WHERE c.relname = ANY ({rels}) \
         UNION ALL \
         SELECT 'f', '', p.proname::text, '', '', '', 0, 0, NULL FROM pg_catalog.pg_proc p \
         WHERE p.pronamespace <> 'pg_catalog'::regnamespace AND p.proname = ANY ({routines}) \
         UNION ALL \
         SELECT 'f', '', o.oprname::text, '', '', '', 0, 0, NULL FROM pg_catalog.pg_operator o \
         WHERE o.oprnamespace <> 'pg_catalog'::regnamespace AND o.oprname = ANY ({routines}) \
         ORDER BY 1, 7, 8",
        rels = name_array(rels),
        routines = name_array(routines),
    ))
}

/// How deep views over views are followed before their columns count as
/// opaque.
const MAX_VIEW_DEPTH: usize = 4;

/// Asking the server about a statement's names, in rounds: the views among
/// the answers bring the names of their definitions.
pub struct Lookup {
    pub facts: Facts,
    wanted: (BTreeSet<String>, BTreeSet<String>),
    asked: (BTreeSet<String>, BTreeSet<String>),
    rounds: usize,
}

impl Lookup {
    pub fn new(l: &Lineage) -> Lookup {
        let mut lookup = Lookup {
            facts: Facts::default(),
            wanted: Default::default(),
            asked: Default::default(),
            rounds: 0,
        };
        lookup.want(l);
        lookup
    }

    fn want(&mut self, l: &Lineage) {
        self.wanted
            .0
            .extend(l.relations().into_iter().map(|r| r.name));
        self.wanted.1.extend(l.routines());
    }

    /// The next catalog query, `None` once every name is known (or the
    /// views nest deeper than blastgate follows: those stay opaque).
    pub fn next_query(&mut self) -> Option<String> {
        if self.rounds > MAX_VIEW_DEPTH {
            return None;
        }
        self.rounds += 1;
        let rels: BTreeSet<String> = self.wanted.0.difference(&self.asked.0).cloned().collect();
        let routines: BTreeSet<String> = self.wanted.1.difference(&self.asked.1).cloned().collect();
        self.asked.0.extend(rels.iter().cloned());
        self.asked.1.extend(routines.iter().cloned());
        names_query(&rels, &routines)
    }

    /// Adds the rows of the last query.
    pub fn add(&mut self, rows: &[Vec<Option<String>>]) {
        let new = facts_from_rows(rows);
        for info in &new.relations {
            if let Some(def) = &info.definition {
                let l = super::analyzer().analyze(def);
                self.want(&l);
            }
        }
        let Facts {
            relations,
            user_routines,
            ancestors,
        } = new;
        self.facts.relations.extend(relations);
        self.facts.user_routines.extend(user_routines);
        self.facts.ancestors.extend(ancestors);
    }
}

/// The styles of a view's columns, from its definition; `None` when it is
/// not a view blastgate follows (foreign tables, nesting too deep).
fn view_styles(
    info: &RelInfo,
    facts: &Facts,
    mask: &MaskPlan,
    depth: usize,
) -> Option<Vec<Option<Style>>> {
    if depth >= MAX_VIEW_DEPTH || !matches!(info.kind, 'v' | 'm') {
        return None;
    }
    let l = super::analyzer().analyze(info.definition.as_deref()?);
    Some(evaluate_at(&l, facts, mask, info.columns.len(), depth + 1))
}

/// [`Facts`] from the rows of [`facts_query`] (text values).
pub fn facts_from_rows(rows: &[Vec<Option<String>>]) -> Facts {
    let mut facts = Facts::default();
    let mut last_oid = None;
    for row in rows {
        let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        match text(0).as_str() {
            "r" => {
                let oid = text(6);
                if last_oid.as_ref() != Some(&oid) {
                    facts.relations.push(RelInfo {
                        schema: text(1),
                        name: text(2),
                        kind: text(3).chars().next().unwrap_or('?'),
                        visible: text(4) == "true",
                        columns: Vec::new(),
                        definition: row.get(8).cloned().flatten(),
                    });
                    last_oid = Some(oid);
                }
                let column = row.get(5).cloned().flatten();
                if let (Some(c), Some(info)) = (column, facts.relations.last_mut()) {
                    info.columns.push(c);
                }
            }
            "f" => {
                facts.user_routines.insert(text(2));
            }
            "a" => {
                facts
                    .ancestors
                    .entry((text(1), text(2)))
                    .or_default()
                    .push((text(5), text(8)));
            }
            _ => {}
        }
    }
    facts
}

/// The refusal for a statement that writes a value derived from a masked
/// column into a column not masked alike (same style, or `fixed`): read
/// back, it would come out unmasked. `None`: every write is fine.
pub fn write_refusal(l: &Lineage, facts: &Facts, mask: &MaskPlan) -> Option<String> {
    for w in &l.writes {
        let mut infos: Vec<&RelInfo> = facts.matches(&w.target).collect();
        if w.target.schema.is_none() && infos.iter().any(|i| i.visible) {
            infos.retain(|i| i.visible);
        }
        let info = infos.first().copied();
        let columns: Vec<String> = match (&w.columns, info) {
            (Some(c), _) => c.clone(),
            (None, Some(i)) => i.columns.clone(),
            (None, None) => Vec::new(),
        };
        let values = Lineage {
            outputs: w.values.clone(),
            ..Lineage::default()
        };
        let width = if columns.is_empty() { 1 } else { columns.len() };
        let styles = evaluate(&values, facts, mask, width);
        for (i, style) in styles.iter().enumerate() {
            let Some(value_style) = style else {
                continue;
            };
            let column = columns.get(i).map(String::as_str).unwrap_or("?");
            let kept = info.is_some_and(|info| {
                let target = if matches!(info.kind, 'v' | 'm') {
                    let at = info.columns.iter().position(|c| c == column);
                    view_styles(info, facts, mask, 0).and_then(|v| v.get(at?).copied().flatten())
                } else {
                    facts.rule(mask, info, column)
                };
                target == Some(Style::Fixed) || target == Some(*value_style)
            });
            if !kept {
                return Some(format!(
                    "blastgate: writing a value derived from a masked column into {}.{column}, \
                     which is not masked alike, is refused while column masking rules apply \
                     to this session (it would be read back unmasked)",
                    w.target.name
                ));
            }
        }
    }
    None
}

/// Statement texts longer than this are analysed but not cached.
const MAX_CACHED_BYTES: usize = 64 * 1024;

/// Analyses by statement text, and the texts oldest first.
type Cache = (HashMap<String, Arc<Lineage>>, VecDeque<String>);

/// A bounded cache in front of [`analyze`], keyed by the exact statement
/// text (the analysis depends on every identifier in it); oldest evicted.
pub struct Analyzer {
    capacity: usize,
    cache: Mutex<Cache>,
    /// Analyses by normalized text (literals replaced by `$n`).
    shapes: Mutex<HashMap<String, Arc<Lineage>>>,
}

impl Analyzer {
    pub fn new(capacity: usize) -> Analyzer {
        Analyzer {
            capacity,
            cache: Mutex::default(),
            shapes: Mutex::default(),
        }
    }

    pub fn analyze(&self, sql: &str) -> Arc<Lineage> {
        let cacheable = self.capacity > 0 && sql.len() <= MAX_CACHED_BYTES;
        if cacheable {
            if let Some(hit) = self.lock().0.get(sql) {
                return Arc::clone(hit);
            }
        }
        // Literals change no lineage: `… WHERE id = 1` and `… WHERE id = 2`
        // share one analysis (normalizing costs a fraction of a parse and
        // walk). Only its text is the statement's own.
        let shape = if cacheable {
            std::panic::catch_unwind(|| pg_query::normalize(sql).ok())
                .ok()
                .flatten()
        } else {
            None
        };
        let shaped = shape
            .as_ref()
            .and_then(|key| self.shapes().get(key).cloned())
            .map(|hit| {
                Arc::new(Lineage {
                    text: sql.to_owned(),
                    ..(*hit).clone()
                })
            });
        let fresh = match shaped {
            Some(hit) => hit,
            None => {
                let fresh = Arc::new(analyze(sql));
                if let (Some(key), true) = (shape, fresh.shapeable) {
                    let mut shapes = self.shapes();
                    if shapes.len() >= self.capacity {
                        shapes.clear();
                    }
                    shapes.insert(key, Arc::clone(&fresh));
                }
                fresh
            }
        };
        if cacheable {
            let mut cache = self.lock();
            while cache.0.len() >= self.capacity {
                match cache.1.pop_front() {
                    Some(old) => {
                        cache.0.remove(&old);
                    }
                    None => {
                        cache.0.clear();
                        break;
                    }
                }
            }
            if cache.0.insert(sql.to_owned(), Arc::clone(&fresh)).is_none() {
                cache.1.push_back(sql.to_owned());
            }
        }
        fresh
    }

    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Lineage>>> {
        self.shapes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Nothing a panicking thread could leave half-done matters more
        // than staying available.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped rule's shape: customers' email hashed, every `ssn`
    /// fixed.
    fn mask() -> MaskPlan {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(crate::policy::masking::MASKING_FILE),
            "[[field]]\nid = \"pii\"\ncolumns = [\"public.customers.email\", \"*.*.ssn\"]\nstyle = \"hash\"\n",
        )
        .expect("write rules");
        crate::policy::masking::Masking::load(dir.path())
            .unwrap_or_else(|p| panic!("{p:?}"))
            .plan("agent", "orders-db")
    }

    fn table(schema: &str, name: &str, kind: char, columns: &[&str]) -> RelInfo {
        RelInfo {
            schema: schema.into(),
            name: name.into(),
            kind,
            visible: true,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            definition: None,
        }
    }

    /// The e2e fixture's tables, a view over customers, a foreign table
    /// and one user-defined function.
    fn facts() -> Facts {
        let view = |name: &str, columns: &[&str], def: &str| RelInfo {
            definition: Some(def.into()),
            ..table("public", name, 'v', columns)
        };
        Facts {
            relations: vec![
                view(
                    "customer_contacts",
                    &["id", "who", "mail"],
                    " SELECT customers.id,\n    customers.name AS who,\n    lower(customers.email) AS mail\n   FROM customers;",
                ),
                view(
                    "contact_names",
                    &["who", "n"],
                    " SELECT customer_contacts.who, length(customer_contacts.mail) AS n\n   FROM customer_contacts;",
                ),
                table(
                    "public",
                    "customers",
                    'r',
                    &["id", "name", "email", "card", "note"],
                ),
                table(
                    "public",
                    "orders",
                    'r',
                    &["id", "customer_id", "total", "status"],
                ),
                table(
                    "public",
                    "customers_2024",
                    'r',
                    &["id", "name", "email", "card", "note"],
                ),
                table("public", "customer_emails", 'v', &["id", "email"]),
                table("public", "remote", 'f', &["id", "x"]),
                table("hr", "people", 'r', &["id", "ssn"]),
                table("pg_catalog", "pg_roles", 'v', &["rolname", "rolsuper"]),
                table(
                    "information_schema",
                    "columns",
                    'v',
                    &["table_name", "column_name"],
                ),
                table(
                    "pg_catalog",
                    "pg_stats",
                    'v',
                    &["attname", "most_common_vals"],
                ),
            ],
            user_routines: HashSet::from(["my_get_email".to_string()]),
            ancestors: HashMap::from([(
                ("public".to_string(), "customers_2024".to_string()),
                vec![("public".to_string(), "customers".to_string())],
            )]),
        }
    }

    /// Which of the result's columns are masked (`width` columns).
    fn masked(sql: &str, width: usize) -> Vec<bool> {
        evaluate(&analyze(sql), &facts(), &mask(), width)
            .into_iter()
            .map(|s| s.is_some())
            .collect()
    }

    #[test]
    fn expressions_over_a_masked_column_are_masked() {
        for sql in [
            "SELECT lower(email) FROM customers",
            "SELECT email || '' FROM customers",
            "SELECT email::text FROM customers",
            "SELECT CAST(email AS varchar) FROM public.customers",
            "SELECT c.email FROM customers c",
            "SELECT upper(c.email) AS e FROM customers AS c",
            "SELECT reverse(translate(email, 'a', 'b')) FROM customers",
            "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
            "SELECT array_agg(email) FROM customers",
            "SELECT string_agg(email, ',') FROM customers",
            "SELECT min(email) FROM customers",
            "SELECT max(email) FILTER (WHERE id > 1) FROM customers",
            "SELECT lag(email) OVER (ORDER BY id) FROM customers",
            "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
            "SELECT row_to_json(c) FROM customers c",
            "SELECT c::text FROM customers c",
            "SELECT row_to_json(c.*) FROM customers c",
            "SELECT to_json(customers) FROM customers",
            "SELECT ROW(id, email) FROM customers",
            "SELECT ARRAY[email] FROM customers",
            "SELECT coalesce(email, 'x') FROM customers",
            "SELECT CASE WHEN id = 1 THEN email ELSE 'x' END FROM customers",
            "SELECT (SELECT email FROM customers LIMIT 1)",
            "SELECT ARRAY(SELECT email FROM customers)",
            "SELECT x FROM (SELECT email AS x FROM customers) s",
            "SELECT s.e FROM (SELECT lower(email) FROM customers) s(e)",
            "WITH t AS (SELECT email FROM customers) SELECT email FROM t",
            "WITH t(e) AS (SELECT email FROM customers) SELECT upper(e) FROM t",
            "WITH RECURSIVE r(v, n) AS (SELECT email, 1 FROM customers UNION ALL SELECT v, n + 1 FROM r WHERE n < 2) SELECT v FROM r",
            "SELECT 'x' UNION SELECT email FROM customers",
            "SELECT email FROM customers INTERSECT SELECT 'a'",
            "VALUES ((SELECT email FROM customers LIMIT 1))",
            "SELECT e FROM customers, LATERAL (SELECT email AS e) l",
            "SELECT j.email FROM (customers JOIN orders ON orders.customer_id = customers.id) AS j",
            "SELECT t.v FROM unnest((SELECT array_agg(email) FROM customers)) AS t(v)",
            "SELECT json_build_object('e', email) FROM customers",
            "SELECT format('%s', email) FROM customers",
            "SELECT ssn FROM hr.people",
            "SELECT email FROM customers_2024",
            "SELECT lower(c.email) FROM customers_2024 c",
            "SELECT substr(p.ssn, 1, 3) FROM hr.people p",
            "SELECT my_get_email(1)",
            "SELECT lower(my_get_email(1))",
            "SELECT public.whatever(1)",
            "SELECT query_to_xml('select email from customers', true, true, '')",
            "SELECT cursor_to_xml('c', 10, false, false, '')",
            "SELECT email FROM customer_emails",
            "SELECT lower(email) FROM customer_emails",
            "SELECT x FROM remote",
            "SELECT most_common_vals FROM pg_stats",
            "SELECT * FROM customer_emails",
            "INSERT INTO customers (name) VALUES ('x') RETURNING email",
            "UPDATE customers SET name = 'x' WHERE id = 1 RETURNING lower(email)",
            "DELETE FROM customers WHERE id = 1 RETURNING customers.*::text",
            "WITH d AS (DELETE FROM customers WHERE id = 9 RETURNING email) SELECT * FROM d",
            "COPY (SELECT lower(email) FROM customers) TO STDOUT",
            "COPY customers (email) TO STDOUT",
            "FETCH ALL FROM c",
            "EXECUTE p",
            "SELECT email FROM",
            "SELECT email FROM nowhere_known",
            "SELECT xmltable.* FROM customers, XMLTABLE('/a' PASSING email COLUMNS x text)",
        ] {
            assert_eq!(masked(sql, 1), vec![true], "{sql}");
        }
    }

    #[test]
    fn filtering_grouping_joining_and_ordering_do_not_mask() {
        for sql in [
            "SELECT count(*) FROM customers WHERE email LIKE '%@example.com'",
            "SELECT count(email) FROM customers",
            "SELECT name FROM customers ORDER BY email",
            "SELECT name FROM customers WHERE email = 'alice@example.com'",
            "SELECT count(*) FROM customers GROUP BY email",
            "SELECT o.total FROM orders o JOIN customers c ON c.id = o.customer_id AND c.email <> ''",
            "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.email = c.email)",
            "SELECT name FROM customers WHERE email IN (SELECT email FROM customers)",
            "SELECT CASE WHEN email LIKE 'a%' THEN 'a' ELSE 'b' END FROM customers",
            "SELECT row_number() OVER (PARTITION BY email ORDER BY email) FROM customers",
            "SELECT status FROM orders",
            "SELECT (SELECT status FROM orders LIMIT 1) FROM customers",
            "SELECT 1",
            "SELECT now()",
            "SELECT current_user",
            "SELECT name FROM customers HAVING true",
            "SELECT s.name FROM (SELECT name, email FROM customers) s",
            "WITH t AS (SELECT name, email FROM customers) SELECT name FROM t",
            "SELECT name FROM customers UNION SELECT status FROM orders",
            "SELECT n FROM generate_series(1, 3) AS n",
            "SHOW search_path",
            "SELECT pg_catalog.lower(name) FROM customers",
            "SELECT id FROM hr.people",
            "SELECT rolname FROM pg_roles",
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers'",
        ] {
            assert_eq!(masked(sql, 1), vec![false], "{sql}");
        }
    }

    #[test]
    fn columns_are_told_apart_by_position() {
        assert_eq!(
            masked("SELECT name, lower(email), id FROM customers", 3),
            [false, true, false]
        );
        // `*` expands through the catalog: email is the third column.
        assert_eq!(
            masked("SELECT *, upper(name) FROM customers", 6),
            [false, false, true, false, false, false]
        );
        assert_eq!(
            masked("SELECT o.*, c.email FROM orders o, customers c", 5),
            [false, false, false, false, true]
        );
        assert_eq!(
            masked(
                "SELECT 'a', email FROM customers UNION ALL SELECT name, 'b' FROM customers",
                2
            ),
            [false, true]
        );
        // The server described more columns than the text shows (a
        // function's row type): every column gets everything.
        assert_eq!(
            masked("SELECT * FROM customers, json_each('{}')", 7),
            [true; 7]
        );
        assert_eq!(
            masked("COPY customers TO STDOUT", 5),
            [false, false, true, false, false]
        );
    }

    #[test]
    fn views_are_followed_through_their_definitions() {
        assert_eq!(
            masked("SELECT id, who, mail FROM customer_contacts", 3),
            [false, false, true]
        );
        assert_eq!(
            masked("SELECT * FROM customer_contacts", 3),
            [false, false, true]
        );
        assert_eq!(
            masked("SELECT upper(who) FROM customer_contacts", 1),
            [false]
        );
        // A view over a view.
        assert_eq!(masked("SELECT who, n FROM contact_names", 2), [false, true]);
        assert_eq!(
            masked("SELECT row_to_json(c) FROM customer_contacts c", 1),
            [true]
        );
        // The style is the rule's, through the view.
        let s = evaluate(
            &analyze("SELECT mail FROM customer_contacts"),
            &facts(),
            &mask(),
            1,
        );
        assert_eq!(s, [Some(Style::Hash)]);
    }

    #[test]
    fn styles_follow_the_rule_and_opaque_is_fixed() {
        let m = mask();
        let f = facts();
        let style = |sql: &str| evaluate(&analyze(sql), &f, &m, 1)[0];
        assert_eq!(
            style("SELECT lower(email) FROM customers"),
            Some(Style::Hash)
        );
        assert_eq!(style("SELECT my_get_email(1)"), Some(Style::Fixed));
        // A name shadowing a builtin outside pg_catalog could return anything.
        let mut shadowed = facts();
        shadowed.user_routines.insert("lower".into());
        assert_eq!(
            evaluate(
                &analyze("SELECT lower(name) FROM customers"),
                &shadowed,
                &m,
                1
            )[0],
            Some(Style::Fixed)
        );
        shadowed.user_routines.insert("||".into());
        assert_eq!(
            evaluate(
                &analyze("SELECT name || '' FROM customers"),
                &shadowed,
                &m,
                1
            )[0],
            Some(Style::Fixed)
        );
    }

    #[test]
    fn errors_are_redacted_when_the_statement_could_quote_a_value() {
        let may = |sql: &str| analyze(sql).may_quote_values();
        assert!(may("SELECT email::int FROM customers"));
        assert!(may("SELECT 1 FROM customers WHERE email::int = 1"));
        assert!(may("UPDATE customers SET note = 'x' WHERE id = 1"));
        assert!(may("SELECT my_get_email(1)"));
        assert!(may("FETCH ALL FROM c"));
        assert!(!may("SELECT 1/0"));
        assert!(!may("SELECT 'abc'::int"));
        assert!(!may("SET statement_timeout = 'x'"));
    }

    #[test]
    fn the_facts_query_quotes_nothing_the_agent_wrote() {
        let l = analyze("SELECT lower(x) FROM \"we'ird\"\"name\" t");
        let q = facts_query(&l).expect("names to look up");
        assert!(!q.contains("we'ird"), "{q}");
        assert!(q.contains(
            &"we'ird\"name"
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        assert_eq!(facts_query(&analyze("SELECT 1")), None);
        let rows = vec![
            vec![
                Some("r".into()),
                Some("public".into()),
                Some("t".into()),
                Some("r".into()),
                Some("true".into()),
                Some("a".into()),
                Some("10".into()),
                Some("1".into()),
            ],
            vec![
                Some("r".into()),
                Some("public".into()),
                Some("t".into()),
                Some("r".into()),
                Some("true".into()),
                Some("b".into()),
                Some("10".into()),
                Some("2".into()),
            ],
            vec![
                Some("r".into()),
                Some("x".into()),
                Some("t".into()),
                Some("v".into()),
                Some("false".into()),
                None,
                Some("11".into()),
                Some("0".into()),
            ],
            vec![
                Some("f".into()),
                Some("".into()),
                Some("lower".into()),
                None,
                None,
                None,
                None,
                None,
            ],
        ];
        let f = facts_from_rows(&rows);
        assert_eq!(f.relations.len(), 2);
        assert_eq!(f.relations[0].columns, ["a", "b"]);
        assert!(f.relations[1].columns.is_empty() && !f.relations[1].visible);
        assert!(f.user_routines.contains("lower"));
    }

    #[test]
    fn storing_computed_values_untraced_is_noticed() {
        for sql in [
            "SELECT set_config('x.y', email, false) FROM customers",
            "SELECT 1 FROM customers ORDER BY set_config('x.y', email, false)",
            "SELECT pg_catalog.set_config('application_name', my_get_email(1), false)",
            "SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers",
            "UPDATE orders SET status = set_config('a.b', status, true) WHERE id = 1",
        ] {
            assert!(analyze(sql).stores, "{sql}");
        }
        for sql in [
            "SELECT set_config('search_path', 'public', false)",
            "SELECT set_config('x.y', $1, false)",
            "SELECT set_config('statement_timeout', '5s'::text, true)",
            "SELECT current_setting('x.y')",
        ] {
            assert!(!analyze(sql).stores, "{sql}");
        }
    }

    #[test]
    fn masked_values_written_where_they_would_be_read_unmasked_are_refused() {
        let (m, f) = (mask(), facts());
        let refused = |sql: &str| write_refusal(&analyze(sql), &f, &m).is_some();
        for sql in [
            "UPDATE customers SET note = email WHERE id = 1",
            "UPDATE customers SET note = lower(email) WHERE id = 1",
            "UPDATE customers c SET (note, name) = (SELECT email, 'x' FROM customers d WHERE d.id = c.id) WHERE id = 1",
            "UPDATE orders o SET status = c.email FROM customers c WHERE c.id = o.customer_id",
            "INSERT INTO orders (status) SELECT email FROM customers",
            "INSERT INTO orders (customer_id, total, status) VALUES (1, 1, (SELECT min(email) FROM customers))",
            "INSERT INTO orders SELECT id, id, 1, email FROM customers",
            "INSERT INTO customers (id, note) SELECT id + 100, email FROM customers",
            "INSERT INTO customers (id, note) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET note = customers.email",
            "WITH e AS (SELECT email FROM customers) INSERT INTO orders (status) SELECT email FROM e",
            "CREATE TABLE leak AS SELECT email FROM customers",
            "SELECT email INTO leak FROM customers",
            "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET status = c.email",
            "UPDATE orders SET status = my_get_email(1) WHERE id = 1",
        ] {
            assert!(refused(sql), "{sql}");
        }
        for sql in [
            "UPDATE customers SET email = lower(email) WHERE id = 1",
            "UPDATE customers SET note = name WHERE email = 'alice@example.com'",
            "UPDATE orders SET total = total * 2 WHERE id = 1",
            "INSERT INTO orders (customer_id, total, status) SELECT id, 1, 'new' FROM customers WHERE email LIKE '%.com'",
            "INSERT INTO customers (name, email) VALUES ('x', 'x@y.z')",
            "INSERT INTO customers (name, email) SELECT name, email FROM customers WHERE id = 1",
            "INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3)",
            "DELETE FROM customers WHERE email = 'x'",
            "CREATE MATERIALIZED VIEW mv AS SELECT email FROM customers",
            "CREATE TABLE t AS SELECT name FROM customers",
        ] {
            assert!(!refused(sql), "{sql}");
        }
    }

    #[test]
    fn lookups_gather_every_kind_of_fact_across_rounds() {
        let mut lookup = Lookup::new(&analyze("SELECT email FROM customers_archive"));
        assert!(lookup.next_query().is_some());
        let row =
            |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|x| Some(x.to_string())).collect() };
        lookup.add(&[
            row(&[
                "a",
                "public",
                "customers_archive",
                "",
                "",
                "public",
                "9",
                "0",
                "customers",
            ]),
            row(&["f", "", "lower", "", "", "", "0", "0", ""]),
            row(&[
                "r",
                "public",
                "customers_archive",
                "r",
                "true",
                "email",
                "9",
                "1",
                "",
            ]),
        ]);
        // Nothing new to ask: the names are known.
        assert!(lookup.next_query().is_none());
        let f = &lookup.facts;
        assert_eq!(f.relations.len(), 1);
        assert!(f.user_routines.contains("lower"));
        assert_eq!(
            f.ancestors[&("public".to_string(), "customers_archive".to_string())],
            [("public".to_string(), "customers".to_string())]
        );
        let l = analyze("SELECT email FROM customers_archive");
        assert_eq!(evaluate(&l, f, &mask(), 1), [Some(Style::Hash)]);
    }

    #[test]
    fn the_analyzer_shares_analyses_between_literals_but_not_texts() {
        let a = Analyzer::new(16);
        let one = a.analyze("SELECT lower(email) FROM customers WHERE id = 1");
        let two = a.analyze("SELECT lower(email) FROM customers WHERE id = 2");
        assert_eq!(two.text, "SELECT lower(email) FROM customers WHERE id = 2");
        assert_eq!(one.outputs, two.outputs);
        // COPY's options are literals that matter.
        let text = a.analyze("COPY (SELECT 1) TO STDOUT (DELIMITER '|')");
        let csv = a.analyze("COPY (SELECT 1) TO STDOUT (FORMAT 'csv')");
        assert!(text.copy_text.is_some() && csv.copy_text.is_none());
    }

    #[test]
    fn the_analyzer_caches_by_text() {
        let a = Analyzer::new(2);
        let one = a.analyze("SELECT email FROM customers");
        assert!(Arc::ptr_eq(&one, &a.analyze("SELECT email FROM customers")));
        a.analyze("SELECT 1");
        a.analyze("SELECT 2");
        assert!(!Arc::ptr_eq(
            &one,
            &a.analyze("SELECT email FROM customers")
        ));
    }
}

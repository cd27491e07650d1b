//! Which functions a statement really runs, from the server's catalog: a
//! call of a user-defined function (anything outside `pg_catalog` and
//! `information_schema`) can change data while the statement reads as a
//! `SELECT`, and so can the functions a table runs on its own (triggers,
//! column defaults, row security policies, check constraints, a view's
//! definition).
//!
//! Looked up on a side connection of the session's own (the session's
//! connection is busy relaying), and cached briefly: a function created
//! after the lookup is seen once the entry expires, and at once in the
//! session that created it (the cache is cleared after every statement
//! that may change the catalog).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    classify::Statement,
    frame::PgError,
    settings::PostgresTarget,
    upstream::{self, Upstream},
};

/// How long a lookup stands for other sessions' catalog changes.
const FRESH: Duration = Duration::from_secs(2);

/// Volatility as PostgreSQL orders it; `Volatile` also stands for "could
/// not be looked up".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    fn from_catalog(c: &str) -> Volatility {
        match c {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Volatility::Immutable => "immutable",
            Volatility::Stable => "stable",
            Volatility::Volatile => "volatile",
        }
    }
}

/// The user-defined functions one statement runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFunctions {
    /// Function names (lower case, without schema).
    pub names: BTreeSet<String>,
    /// The most volatile of them; `None` when there are none.
    pub volatility: Option<Volatility>,
}

impl UserFunctions {
    fn add(&mut self, name: &str, v: Volatility) {
        self.names.insert(name.to_string());
        self.volatility = self.volatility.max(Some(v));
    }
}

/// What a name was found to be, and when.
#[derive(Debug, Clone)]
struct Entry {
    at: Instant,
    /// (function name, volatility) for each user-defined function the name
    /// stands for: the function itself, or those a table runs.
    runs: Vec<(String, Volatility)>,
}

pub struct Functions {
    addr: SocketAddr,
    cfg: PostgresTarget,
    params: Vec<(String, String)>,
    timeout: Duration,
    conn: Option<Upstream>,
    /// "f:name" for functions, "r:name" for relations.
    cache: HashMap<String, Entry>,
}

impl Functions {
    pub fn new(
        addr: SocketAddr,
        cfg: PostgresTarget,
        params: Vec<(String, String)>,
        timeout: Duration,
    ) -> Functions {
        let params = upstream::side_params(&params);
        Functions {
            addr,
            cfg,
            params,
            timeout,
            conn: None,
            cache: HashMap::new(),
        }
    }

    /// Forgets every lookup: the session ran something that may have
    /// created or replaced a function, trigger, rule or view.
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// The user-defined functions `st` calls or makes its tables run. A
    /// lookup that fails counts every function called as user-defined and
    /// volatile (fail closed).
    pub async fn of(&mut self, st: &Statement) -> UserFunctions {
        let now = Instant::now();
        let fresh = |e: &Entry| now.duration_since(e.at) < FRESH;
        let keys: Vec<String> = st
            .functions
            .iter()
            .map(|f| format!("f:{f}"))
            .chain(st.operators.iter().map(|o| format!("o:{o}")))
            .chain(st.attributes.iter().map(|a| format!("f:{a}")))
            .chain(st.cast_types.iter().map(|t| format!("t:{t}")))
            .chain(
                st.tables_read
                    .iter()
                    .chain(&st.tables_written)
                    .map(|t| format!("r:{t}")),
            )
            .collect();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !self.cache.get(*k).is_some_and(fresh))
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|k| k.to_string()).collect();
            if let Err(e) = self.lookup(&names, now).await {
                tracing::warn!(error = %e, "looking up functions failed; counting every call as user-defined");
                self.conn = None;
                // Nothing the statement names or its tables run is known:
                // it counts as running unknown volatile code.
                let mut all = UserFunctions::default();
                for f in &st.functions {
                    all.add(f, Volatility::Volatile);
                }
                all.add("(lookup failed)", Volatility::Volatile);
                return all;
            }
        }
        let mut found = UserFunctions::default();
        for k in &keys {
            if let Some(e) = self.cache.get(k) {
                for (name, v) in &e.runs {
                    found.add(name, *v);
                }
            }
        }
        found
    }

    async fn lookup(&mut self, keys: &[String], now: Instant) -> Result<(), PgError> {
        let functions: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("f:")).collect();
        let operators: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("o:")).collect();
        let types: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("t:")).collect();
        let relations: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("r:")).collect();
        let rows = self
            .query(&lookup_query(&functions, &operators, &types, &relations))
            .await?;
        for k in keys {
            self.cache.insert(
                k.clone(),
                Entry {
                    at: now,
                    runs: Vec::new(),
                },
            );
        }
        for row in rows {
            let [Some(key), Some(name), Some(v)] = row.as_slice() else {
                continue;
            };
            // A bare relation name was matched in every schema; the row
            // carries the name as the statement wrote it.
            if let Some(e) = self.cache.get_mut(key) {
                e.runs
                    .push((name.to_lowercase(), Volatility::from_catalog(v)));
            }
        }
        Ok(())
    }

    /// Runs one simple query on the side connection: its rows as text.
    async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        if self.conn.is_none() {
            self.conn =
                Some(upstream::connect(self.addr, &self.cfg, &self.params, self.timeout).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        upstream::query_rows(conn, sql, Some(self.timeout)).await
    }
}

/// A string literal for the side connection, which sets
/// `standard_conforming_strings` on before anything else.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''").replace('\0', ""))
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "NULL".into()
    } else {
        items.join(", ")
    }
}

/// One query for every name: (key, function name, provolatile) for each
/// user-defined function a name is (in any case: a quoted mixed-case name
/// is found too), an operator runs, or a relation of that name runs; a
/// foreign table counts as running unknown code (its writes happen on
/// another server, where blastgate cannot count them).
fn lookup_query(
    functions: &[&str],
    operators: &[&str],
    types: &[&str],
    relations: &[&str],
) -> String {
    let fn_list = list(functions.iter().map(|f| literal(&f.to_lowercase())));
    let op_list = list(operators.iter().map(|o| literal(o)));
    let type_list = list(types.iter().map(|t| literal(&t.to_lowercase())));
    // "schema.table", "db.schema.table" or a bare name matched in every
    // schema (errs towards seeing more functions, never fewer).
    let rel_match = list(relations.iter().map(|r| literal(r)));
    format!(
        "SET standard_conforming_strings = on; SET search_path = pg_catalog; \
         SELECT 'f:' || lower(p.proname), p.proname, p.provolatile::text \
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND lower(p.proname) IN ({fn_list}) \
         UNION ALL \
         SELECT 'o:' || o.oprname, p.proname, p.provolatile::text \
           FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND o.oprname IN ({op_list}) \
         UNION ALL \
         SELECT 't:' || lower(t.typname), p.proname, p.provolatile::text \
           FROM pg_catalog.pg_type t \
           JOIN pg_catalog.pg_cast k ON k.casttarget = t.oid \
           JOIN pg_catalog.pg_proc p ON p.oid = k.castfunc \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND lower(t.typname) IN ({type_list}) \
         UNION ALL \
         SELECT 't:' || lower(t.typname), p.proname, p.provolatile::text \
           FROM pg_catalog.pg_type t \
           JOIN pg_catalog.pg_constraint co ON co.contypid = t.oid \
           JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::regclass \
                AND d.objid = co.oid AND d.refclassid = 'pg_catalog.pg_proc'::regclass \
           JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND lower(t.typname) IN ({type_list}) \
         UNION ALL \
         (WITH RECURSIVE rels(oid, key, depth) AS ( \
            SELECT c.oid, m.key, 0 \
              FROM pg_catalog.pg_class c \
              JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
              JOIN (SELECT k AS key FROM unnest(ARRAY[{rel_match}]::text[]) AS k) m \
                ON m.key = c.relname OR m.key = cn.nspname || '.' || c.relname \
                OR m.key = current_database() || '.' || cn.nspname || '.' || c.relname \
            UNION \
            SELECT d.refobjid, r.key, r.depth + 1 \
              FROM rels r \
              JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = r.oid \
              JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                   AND d.objid = rw.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                   AND d.refobjid <> r.oid \
             WHERE r.depth < 8) \
          SELECT 'r:' || r.key, '(foreign table ' || c.relname || ')', 'v' \
            FROM rels r JOIN pg_catalog.pg_class c ON c.oid = r.oid \
           WHERE c.relkind = 'f' \
          UNION ALL \
          SELECT 'r:' || r.key, p.proname, p.provolatile::text \
            FROM rels r JOIN pg_catalog.pg_class c ON c.oid = r.oid \
            JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_proc'::regclass AND ( \
                 (d.classid = 'pg_catalog.pg_rewrite'::regclass \
                  AND d.objid IN (SELECT oid FROM pg_catalog.pg_rewrite WHERE ev_class = c.oid)) \
              OR (d.classid = 'pg_catalog.pg_trigger'::regclass \
                  AND d.objid IN (SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = c.oid)) \
              OR (d.classid = 'pg_catalog.pg_attrdef'::regclass \
                  AND d.objid IN (SELECT oid FROM pg_catalog.pg_attrdef WHERE adrelid = c.oid)) \
              OR (d.classid = 'pg_catalog.pg_policy'::regclass \
                  AND d.objid IN (SELECT oid FROM pg_catalog.pg_policy WHERE polrelid = c.oid)) \
              OR (d.classid = 'pg_catalog.pg_constraint'::regclass \
                  AND d.objid IN (SELECT oid FROM pg_catalog.pg_constraint WHERE conrelid = c.oid))) \
            JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
            JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
           WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_the_lookup() {
        let q = lookup_query(&["O'Brien"], &[], &[], &[]);
        assert!(q.contains("IN ('o''brien')"), "{q}");
        assert!(q.contains("ARRAY[NULL]"), "{q}");
        let v = [
            Volatility::Stable,
            Volatility::Volatile,
            Volatility::Immutable,
        ];
        assert_eq!(v.iter().max(), Some(&Volatility::Volatile));
    }
}

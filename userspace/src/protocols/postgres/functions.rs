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

use bytes::BytesMut;
use pgwire::messages::simplequery::Query;
use tokio::io::AsyncWriteExt;

use super::{
    classify::Statement,
    frame::{encode, PgError},
    mask,
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
                let mut all = UserFunctions::default();
                for f in &st.functions {
                    all.add(f, Volatility::Volatile);
                }
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
        let relations: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix("r:")).collect();
        let rows = self.query(&lookup_query(&functions, &relations)).await?;
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
        let mut out = BytesMut::new();
        encode(&Query::new(sql.to_string()), &mut out)?;
        conn.writer.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let f = tokio::time::timeout(self.timeout, conn.reader.next())
                .await
                .map_err(|_| PgError::Upstream("catalog lookup timed out".into()))??;
            match f.tag {
                b'D' => rows.push(
                    mask::row_values(&f)?
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                ),
                b'E' => failed = Some(upstream::error_text(&f)),
                b'Z' => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(PgError::Upstream(e)),
            None => Ok(rows),
        }
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
/// user-defined function a name is, or a relation of that name runs.
fn lookup_query(functions: &[&str], relations: &[&str]) -> String {
    let fn_list = list(functions.iter().map(|f| literal(f)));
    // "schema.table" or a bare name matched in every schema (errs towards
    // seeing more functions, never fewer).
    let rel_match = list(relations.iter().map(|r| literal(r)));
    format!(
        "SET standard_conforming_strings = on; \
         SELECT 'f:' || p.proname, p.proname, p.provolatile::text \
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
            AND p.proname IN ({fn_list}) \
         UNION ALL \
         SELECT 'r:' || m.key, p.proname, p.provolatile::text \
           FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
           JOIN (SELECT k AS key FROM unnest(ARRAY[{rel_match}]::text[]) AS k) m \
             ON m.key = c.relname OR m.key = cn.nspname || '.' || c.relname \
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
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_the_lookup() {
        let q = lookup_query(&["o'brien"], &[]);
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

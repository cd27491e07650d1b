//! The PostgreSQL gateway against an agent that tries every spelling: the
//! shipped policies, a target labelled `env = "production"`, a real
//! PostgreSQL 15, real psql and a raw protocol client, every agent
//! redirected by the real kernel hooks.
//!
//! Each attack below ran `DROP TABLE orders` (or worse) through the
//! gateway before the change that added its test; each harmless
//! look-alike beside it must keep running and answer as it does direct.
//!
//! What was tried and held (besides the tests):
//! - a multibyte character hiding a quote or backslash in every client
//!   encoding PostgreSQL has whose trail bytes can be ASCII (SJIS, BIG5,
//!   GBK, GB18030, UHC, JOHAB), through the startup packet, `SET`,
//!   `SET NAMES` and `set_config`;
//! - `standard_conforming_strings = off` by `SET`, `set_config`,
//!   `ALTER ROLE … SET` (a new session starts with it off) and in the same
//!   pipeline as the statement it changes (the gateway waits for the
//!   server's report before reading);
//! - the same in the extended protocol, in one pipeline: refused, since the
//!   server reports settings only at Sync;
//! - invalid bytes (a lone lead byte, 0x80 in SJIS, an overlong UTF-8
//!   form): refused, never replaced.

mod harness;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Output,
    time::Duration,
};

use harness::{pg_gateway::*, *};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a psycopg script printed, without the warnings its garbage
/// collector prints when it happens to finalize an aborted pipeline
/// object ("error ignored terminating <psycopg.Pipeline …>"): they come
/// or not from one run to the next, direct as well as through blastgate.
fn settled(o: &Output) -> String {
    text(o)
        .lines()
        .filter(|l| !l.starts_with("error ignored terminating <psycopg.Pipeline"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The attack: `SELECT E'<c>\'; DROP TABLE orders; --'` where `<c>` is a
/// lead byte whose multibyte character swallows the backslash.
fn hidden_drop(lead: u8) -> Vec<u8> {
    let mut q = b"SELECT E'".to_vec();
    q.push(lead);
    q.extend_from_slice(b"\\'; DROP TABLE orders; --'");
    q
}

/// Each client encoding whose multibyte characters can end in a
/// backslash byte, with a lead byte that makes one with 0x5C.
const HIDING: &[(&str, u8)] = &[
    ("SJIS", 0x95),
    ("BIG5", 0xa5),
    ("GBK", 0x81),
    ("GB18030", 0x81),
    ("UHC", 0x81),
    ("JOHAB", 0x8a),
];

/// A way to reach the attack: its name, psql's environment and arguments.
type Route<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a [u8]>);

fn orders_exist(s: &Setup) -> bool {
    s.pg.sql("orders", "SELECT to_regclass('public.orders') IS NOT NULL") == "t"
}

#[test]
fn multibyte_characters_cannot_hide_a_statement() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    for (enc, lead) in HIDING {
        let attack = hidden_drop(*lead);
        let set = format!("SET client_encoding TO '{enc}'");
        let names = format!("SET NAMES '{enc}'");
        let config = format!("SELECT set_config('client_encoding', '{enc}', false)");
        let routes: [Route; 4] = [
            (
                "startup",
                vec![("PGCLIENTENCODING", enc)],
                vec![b"-c", &attack],
            ),
            ("SET", vec![], vec![b"-c", set.as_bytes(), b"-c", &attack]),
            (
                "SET NAMES",
                vec![],
                vec![b"-c", names.as_bytes(), b"-c", &attack],
            ),
            (
                "set_config",
                vec![],
                vec![b"-c", config.as_bytes(), b"-c", &attack],
            ),
        ];
        for (route, env, args) in routes {
            let out = s.psql_bytes(&env, &args);
            let t = text(&out);
            assert!(orders_exist(&s), "{enc} via {route}: orders dropped\n{t}");
            assert!(
                t.contains("denied by policy sql-destroy-production")
                    || t.contains("blastgate: invalid byte sequence")
                    || t.contains("blastgate does not read client_encoding"),
                "{enc} via {route}: not refused by blastgate\n{t}"
            );
        }
    }
    // Look-alikes: real characters in each encoding the gateway reads run
    // and come back as they do direct.
    for (enc, text_bytes) in [
        ("SJIS", &b"SELECT '\x95\x5c' AS c, length('\x95\x5c')"[..]),
        ("BIG5", &b"SELECT '\xa5\x5c' AS c, length('\xa5\x5c')"[..]),
        ("GBK", &b"SELECT '\x81\x5c' AS c, length('\x81\x5c')"[..]),
        ("GB18030", &b"SELECT '\x81\x30\x81\x30' AS c"[..]),
        ("UHC", &b"SELECT '\xb0\xa1' AS c"[..]),
        ("EUC_JP", &b"SELECT '\xa4\xa2' AS c"[..]),
        ("LATIN1", &b"SELECT '\xe9\\' AS c"[..]),
    ] {
        let env = [("PGCLIENTENCODING", enc)];
        let through = s.psql_bytes(&env, &[b"-c", text_bytes]);
        let direct = s.psql_bytes_direct(&env, &[b"-c", text_bytes]);
        assert!(through.status.success(), "{enc}: {}", text(&through));
        assert_eq!(
            through.stdout,
            direct.stdout,
            "{enc}: {} vs direct {}",
            text(&through),
            text(&direct)
        );
        assert!(
            !text(&through).contains("ERROR"),
            "{enc}: {}",
            text(&through)
        );
    }
    // Pure ASCII reads the same in every encoding, so it runs even in one
    // blastgate does not convert.
    let out = s.psql_bytes(&[("PGCLIENTENCODING", "JOHAB")], &[b"-c", b"SELECT 40 + 2"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        text(&out)
    );
}

#[test]
fn invalid_bytes_are_refused_not_replaced() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    for (enc, bytes) in [
        ("UTF8", &b"SELECT '\xc0\xa7'; DROP TABLE orders; --'"[..]),
        ("UTF8", &b"SELECT '\xff'"[..]),
        ("SJIS", &b"SELECT E'\x80\\'; DROP TABLE orders; --'"[..]),
        ("SJIS", &b"SELECT '\x95"[..]),
    ] {
        let out = s.psql_bytes(&[("PGCLIENTENCODING", enc)], &[b"-c", bytes]);
        let t = text(&out);
        assert!(orders_exist(&s), "{enc}: {t}");
        assert!(t.contains("blastgate: invalid byte sequence"), "{enc}: {t}");
    }
    let refused = s.env.wait_count(4, |e| {
        e["kind"] == "statement"
            && e["verdict"] == "deny"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("invalid byte sequence"))
    });
    assert_eq!(refused, 4, "{:#?}", s.statements());
}

/// `SELECT 'x\' , ' ; DROP TABLE orders; --'`: one harmless SELECT with
/// standard_conforming_strings on, a SELECT and a DROP with it off.
const BACKSLASH_ATTACK: &str = r"SELECT 'x\' , ' ; DROP TABLE orders; --'";

#[test]
fn standard_conforming_strings_off_cannot_hide_a_statement() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    for (route, first) in [
        ("SET", "SET standard_conforming_strings = off"),
        ("SET TO", "SET standard_conforming_strings TO 'off'"),
        (
            "set_config",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
        ),
    ] {
        let out = s.psql(&["-At", "-c", first, "-c", BACKSLASH_ATTACK]);
        let t = text(&out);
        assert!(orders_exist(&s), "{route}: {t}");
        assert!(
            t.contains("denied by policy sql-destroy-production"),
            "{route}: {t}"
        );
    }
    // Set for the role by an administrator: new sessions start with it off,
    // and the server says so at login.
    s.pg.sql(
        "orders",
        "ALTER ROLE app SET standard_conforming_strings = off",
    );
    let out = s.psql(&["-At", "-c", BACKSLASH_ATTACK]);
    s.pg.sql("orders", "ALTER ROLE app RESET standard_conforming_strings");
    assert!(orders_exist(&s), "{}", text(&out));
    assert!(
        text(&out).contains("denied by policy sql-destroy-production"),
        "{}",
        text(&out)
    );
    // Look-alike: with the setting on the same text is one SELECT of two
    // literals, and runs as it does direct.
    let through = s.psql(&["-At", "-c", BACKSLASH_ATTACK]);
    let direct = s.psql_direct(&["-At", "-c", BACKSLASH_ATTACK]);
    assert!(through.status.success(), "{}", text(&through));
    assert_eq!(through.stdout, direct.stdout);
    // One string: the server parses all of it before the SET runs, so the
    // SELECT is read with the setting on, by both.
    let one = format!("SET standard_conforming_strings = off; {BACKSLASH_ATTACK}");
    let through = s.psql(&["-At", "-c", &one]);
    let direct = s.psql_direct(&["-At", "-c", &one]);
    assert!(through.status.success(), "{}", text(&through));
    assert_eq!(through.stdout, direct.stdout, "{}", text(&through));
}

#[test]
fn pipelined_settings_are_read_before_the_statement_they_change() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let out = s.run_child("raw_pipeline_child");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(orders_exist(&s), "{t}");
    // The child's lines follow libtest's own "test … " prefix.
    let line = |label: &str| {
        t.lines()
            .find_map(|l| l.split_once(label).map(|(_, rest)| rest.to_string()))
            .unwrap_or_default()
    };
    assert!(
        line("simple:").contains("denied by policy sql-destroy-production"),
        "{t}"
    );
    assert!(
        line("extended:").contains("blastgate: this statement reads differently"),
        "{t}"
    );
    assert!(
        line("encoding:").contains("denied by policy sql-destroy-production"),
        "{t}"
    );
}

/// A minimal frontend that writes exactly the bytes it is given.
struct Raw {
    tcp: TcpStream,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for kv in ["user", "app", "database", "orders"] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        tcp.write_all(&packet).expect("startup");
        let mut raw = Raw { tcp };
        raw.until_ready();
        raw
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn query(sql: &[u8]) -> Vec<u8> {
        let mut body = sql.to_vec();
        body.push(0);
        Raw::message(b'Q', &body)
    }

    /// Parse (unnamed) + Bind + Execute.
    fn extended(sql: &[u8]) -> Vec<u8> {
        let mut parse = vec![0];
        parse.extend_from_slice(sql);
        parse.extend_from_slice(&[0, 0, 0]);
        let mut out = Raw::message(b'P', &parse);
        out.extend(Raw::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        out.extend(Raw::message(b'E', &[0, 0, 0, 0, 0]));
        out
    }

    /// Error messages until the next ReadyForQuery.
    fn until_ready(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        loop {
            let mut head = [0u8; 5];
            self.tcp.read_exact(&mut head).expect("message head");
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            self.tcp.read_exact(&mut body).expect("message body");
            match head[0] {
                b'E' => {
                    let m = body
                        .split(|b| *b == 0)
                        .find(|f| f.first() == Some(&b'M'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                        .unwrap_or_default();
                    errors.push(m);
                }
                b'R' if body[..4] != [0, 0, 0, 0] => panic!("authentication asked"),
                b'Z' => return errors,
                _ => {}
            }
        }
    }
}

/// Sends a setting change and the statement it would change in one
/// write, for the parent test.
#[test]
fn raw_pipeline_child() {
    let Ok(addr) = std::env::var("BLASTGATE_PG_RAW") else {
        return;
    };
    // Simple protocol: two Query messages in one write.
    let mut raw = Raw::connect(&addr);
    let mut batch = Raw::query(b"SET standard_conforming_strings = off");
    batch.extend(Raw::query(BACKSLASH_ATTACK.as_bytes()));
    raw.tcp.write_all(&batch).expect("write");
    let first = raw.until_ready();
    assert!(first.is_empty(), "{first:?}");
    println!("simple: {}", raw.until_ready().join("; "));

    // Extended protocol, one pipeline: the server reports the change only
    // at Sync, after the second statement would have been parsed.
    let mut raw = Raw::connect(&addr);
    let mut batch = Raw::extended(b"SET standard_conforming_strings = off");
    batch.extend(Raw::extended(
        br"SELECT 'x\' , ' , (SELECT count(*) FROM orders)'",
    ));
    batch.extend(Raw::message(b'S', &[]));
    raw.tcp.write_all(&batch).expect("write");
    println!("extended: refused: {}", raw.until_ready().join("; "));

    // The client encoding, changed in the same write.
    let mut raw = Raw::connect(&addr);
    let mut batch = Raw::query(b"SET client_encoding TO 'SJIS'");
    batch.extend(Raw::query(&hidden_drop(0x95)));
    raw.tcp.write_all(&batch).expect("write");
    let first = raw.until_ready();
    assert!(first.is_empty(), "{first:?}");
    println!("encoding: {}", raw.until_ready().join("; "));
}

/// Statements covering the command tags the classifier names, run in order
/// in a scratch schema; every object they touch is their own.
const CORPUS: &[&str] = &[
    "CREATE SCHEMA scratch",
    "SET search_path TO scratch, public",
    "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric DEFAULT 0)",
    "CREATE TABLE u (id int, t_id int REFERENCES t (id))",
    "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    "INSERT INTO t VALUES (4, 'd') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
    "UPDATE t SET v = v || '!' WHERE id = 1",
    "DELETE FROM t WHERE id = 4",
    "MERGE INTO t USING (VALUES (5, 'e')) s(id, v) ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
    "WITH d AS (DELETE FROM t WHERE id = 5 RETURNING *) SELECT count(*) FROM d",
    "SELECT * FROM t ORDER BY id",
    "VALUES (1), (2)",
    "TABLE t",
    "SELECT * INTO t_copy FROM t",
    "CREATE TABLE t_as AS SELECT * FROM t",
    "CREATE MATERIALIZED VIEW mv AS SELECT id FROM t",
    "REFRESH MATERIALIZED VIEW mv",
    "CREATE VIEW v AS SELECT id, v FROM t",
    "ALTER TABLE v RENAME COLUMN v TO w",
    "ALTER VIEW v RENAME TO v2",
    "CREATE INDEX t_v ON t (v)",
    "ALTER INDEX t_v RENAME TO t_v2",
    "CREATE SEQUENCE s",
    "ALTER SEQUENCE s RESTART",
    "SELECT nextval('s')",
    "CREATE FUNCTION f(i int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT i + 1 $$",
    "ALTER FUNCTION f(int) STABLE",
    "CREATE PROCEDURE p() LANGUAGE sql AS $body$ SELECT 1 $body$",
    "CREATE TYPE mood AS ENUM ('ok', 'sad')",
    "ALTER TYPE mood ADD VALUE 'meh'",
    "CREATE TYPE pair AS (a int, b int)",
    "CREATE DOMAIN pos AS int CHECK (VALUE > 0)",
    "ALTER DOMAIN pos SET DEFAULT 1",
    "CREATE TRIGGER trg BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "ALTER TRIGGER trg ON t RENAME TO trg2",
    "DROP TRIGGER trg2 ON t",
    "CREATE RULE r AS ON INSERT TO u WHERE false DO INSTEAD NOTHING",
    "DROP RULE r ON u",
    "COMMENT ON TABLE t IS 'scratch'",
    "ALTER TABLE t ADD COLUMN extra text",
    "ALTER TABLE t ALTER COLUMN extra SET DEFAULT 'x'",
    "ALTER TABLE t RENAME COLUMN extra TO extra2",
    "ALTER TABLE t ADD CONSTRAINT pos_n CHECK (n >= 0)",
    "ALTER TABLE t RENAME CONSTRAINT pos_n TO pos_n2",
    "CREATE ROLE scratch_role NOLOGIN",
    "CREATE USER scratch_user NOLOGIN",
    "ALTER USER scratch_user CONNECTION LIMIT 1",
    "ALTER ROLE scratch_role SET work_mem = '8MB'",
    "GRANT SELECT ON t TO scratch_role",
    "REVOKE SELECT ON t FROM scratch_role",
    "GRANT scratch_role TO scratch_user",
    "REVOKE scratch_role FROM scratch_user",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA scratch GRANT SELECT ON TABLES TO scratch_role",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA scratch REVOKE SELECT ON TABLES FROM scratch_role",
    "DROP USER scratch_user",
    "DROP ROLE scratch_role",
    "SET work_mem = '8MB'",
    "SET LOCAL work_mem = '8MB'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET TIME ZONE 'UTC'",
    "RESET work_mem",
    "RESET ALL",
    "SET search_path TO scratch, public",
    "SHOW work_mem",
    "SHOW ALL",
    "BEGIN",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SAVEPOINT a",
    "INSERT INTO t (id, v) VALUES (10, 'x')",
    "ROLLBACK TO SAVEPOINT a",
    "RELEASE SAVEPOINT a",
    "DECLARE c CURSOR FOR SELECT * FROM t",
    "FETCH 2 FROM c",
    "MOVE 1 IN c",
    "CLOSE c",
    "SET CONSTRAINTS ALL DEFERRED",
    "COMMIT",
    "START TRANSACTION READ ONLY",
    "SELECT 1 / 0",
    "COMMIT",
    "BEGIN",
    "ABORT",
    "BEGIN; SELECT 1; END",
    "PREPARE q (int) AS SELECT * FROM t WHERE id = $1",
    "EXECUTE q(1)",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) DELETE FROM t WHERE id = 99",
    "LISTEN chan",
    "NOTIFY chan, 'payload'",
    "UNLISTEN *",
    "DISCARD PLANS",
    "DISCARD SEQUENCES",
    "DISCARD TEMP",
    "COPY (SELECT 1) TO STDOUT",
    "LOCK TABLE t IN SHARE MODE",
    "DO $$ BEGIN PERFORM 1; END $$",
    "CALL p()",
    "ANALYZE t",
    "VACUUM t",
    "CLUSTER t USING t_pkey",
    "REINDEX TABLE t",
    "CHECKPOINT",
    "CREATE EXTENSION IF NOT EXISTS plpgsql",
    "CREATE TEMP TABLE tmp (a int)",
    "CREATE UNLOGGED TABLE ul (a int)",
    "CREATE TABLE part (a int) PARTITION BY RANGE (a)",
    "CREATE TABLE part1 PARTITION OF part FOR VALUES FROM (0) TO (10)",
    "CREATE STATISTICS st ON id, v FROM t",
    "ALTER STATISTICS st RENAME TO st2",
    "CREATE POLICY pol ON t USING (true)",
    "ALTER POLICY pol ON t RENAME TO pol2",
    "CREATE COLLATION scratch_c FROM \"C\"",
    "CREATE TEXT SEARCH CONFIGURATION scratch_ts (COPY = simple)",
    "CREATE AGGREGATE my_sum (int) (SFUNC = int4pl, STYPE = int)",
    "CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq)",
    "CREATE CAST (pair AS text) WITH INOUT",
    "DROP CAST (pair AS text)",
    "ALTER SCHEMA scratch OWNER TO CURRENT_USER",
    "ALTER TABLE u OWNER TO CURRENT_USER",
    "ALTER TABLE u SET SCHEMA public",
    "ALTER TABLE public.u SET SCHEMA scratch",
    "TRUNCATE u",
    "TRUNCATE TABLE u, part CASCADE",
    "DROP OPERATOR === (int, int)",
    "DROP AGGREGATE my_sum (int)",
    "DROP TEXT SEARCH CONFIGURATION scratch_ts",
    "DROP COLLATION scratch_c",
    "DROP POLICY pol2 ON t",
    "DROP STATISTICS st2",
    "DROP TABLE part",
    "DROP MATERIALIZED VIEW mv",
    "DROP VIEW v2",
    "DROP INDEX t_v2",
    "DROP SEQUENCE s",
    "DROP FUNCTION f(int)",
    "DROP PROCEDURE p()",
    "DROP DOMAIN pos",
    "DROP TYPE mood, pair",
    "DROP TABLE t_copy, t_as, tmp, ul",
    "DROP SCHEMA scratch CASCADE",
];

/// Quoting, comment and dollar-quote edge cases around a literal, each
/// wrapped in statements of several kinds.
fn generated() -> Vec<String> {
    let literals = [
        "'plain'",
        "'it''s'",
        "E'back\\\\slash'",
        "E'quote\\''",
        "E'\\x41\\101\\u0041'",
        "U&'\\0041'",
        "$$dollar ' \" ; -- $$",
        "$a$ $$ nested $$ ; $a$",
        "'semi;colon'",
        "'-- not a comment'",
        "'/* not a comment */'",
        "/* c1 /* nested */ c2 */ 'after comment'",
        "-- line comment\n'after line comment'",
        "'multi' \n 'line continuation'",
        "B'1010'::text",
        "X'ff'::text",
        "'x'::\"text\"",
    ];
    let mut out = vec!["CREATE TABLE gen (id serial, v text)".to_string()];
    for lit in literals {
        out.push(format!("SELECT {lit} AS v"));
        out.push(format!("INSERT INTO gen (v) VALUES ({lit})"));
        out.push(format!("UPDATE gen SET v = {lit} WHERE v = {lit}"));
        out.push(format!("DELETE FROM gen WHERE v = {lit}"));
        out.push(format!("SELECT count(*) FROM gen WHERE v <> {lit} /* ; */"));
    }
    out.push("DROP TABLE gen".to_string());
    out
}

#[test]
fn classification_agrees_with_the_server_on_a_generated_corpus() {
    let _g = serial();
    let Some(s) = setup("corpus-db", "staging", Some(permissive_policies())) else {
        return;
    };
    s.pg.sql("orders", "ALTER ROLE app CREATEROLE");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut script = String::new();
    for st in CORPUS.iter().map(|s| s.to_string()).chain(generated()) {
        script.push_str(&st);
        script.push_str(";\n");
    }
    // The same literals again with standard_conforming_strings off: psql's
    // own lexer follows the server's report, as the gateway does.
    script.push_str("SET standard_conforming_strings = off;\n");
    for st in generated() {
        script.push_str(&st);
        script.push_str(";\n");
    }
    script.push_str("RESET standard_conforming_strings;\n");
    let file = dir.path().join("corpus.sql");
    std::fs::write(&file, &script).expect("corpus");
    let out = s.psql(&["-v", "ON_ERROR_STOP=0", "-f", &file.to_string_lossy()]);
    let t = text(&out);
    if std::env::var("BLASTGATE_SHOW_CORPUS").is_ok() {
        println!("{t}");
    }
    assert!(!t.contains("FATAL"), "{t}");
    // SJIS text, including characters whose trail byte is a backslash.
    let sjis = b"SELECT '\x95\x5c' AS a, E'\x95\x5c' AS b, $$\x95\x5c$$ AS c;\n\
                 SET standard_conforming_strings = off;\n\
                 SELECT '\x95\x5c' AS a, 'x\\' AS b;\n";
    let sjis_file = dir.path().join("sjis.sql");
    std::fs::write(&sjis_file, sjis).expect("sjis corpus");
    let out = s.psql_bytes(
        &[("PGCLIENTENCODING", "SJIS")],
        &[b"-f", sjis_file.to_string_lossy().as_bytes()],
    );
    assert!(!text(&out).contains("FATAL"), "{}", text(&out));
    // The count first: the differentials check then reads a spool with
    // the statements in.
    let ran = s.env.wait_count(CORPUS.len() + 1, |e| {
        e["kind"] == "statement" && e["verdict"] == "allow"
    });
    let differentials: Vec<_> = s
        .env
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "differential")
        .collect();
    assert!(differentials.is_empty(), "{differentials:#?}");
    assert!(ran > CORPUS.len(), "only {ran} statements ran:\n{t}");
}

#[test]
fn functions_that_change_data_are_seen_whatever_calls_them() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    // Made by an administrator, as an agent would find them.
    s.pg.sql(
        "orders",
        "CREATE FUNCTION public.purge_orders() RETURNS bigint LANGUAGE sql AS \
           $$ WITH d AS (DELETE FROM public.orders RETURNING 1) SELECT count(*) FROM d $$;
         CREATE FUNCTION public.purge_trigger() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN DELETE FROM public.orders; RETURN NEW; END $$;
         CREATE TABLE public.audit (note text);
         CREATE TRIGGER purge AFTER INSERT ON public.audit \
           FOR EACH ROW EXECUTE FUNCTION public.purge_trigger();
         CREATE VIEW public.purging AS SELECT public.purge_orders() AS n;
         CREATE FUNCTION public.shout(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(t) $$;
         ALTER FUNCTION public.purge_orders() OWNER TO app;
         ALTER FUNCTION public.shout(text) OWNER TO app;
         ALTER TABLE public.audit OWNER TO app;
         ALTER VIEW public.purging OWNER TO app;",
    );
    let count = || s.pg.sql("orders", "SELECT count(*) FROM orders");
    for (q, needle) in [
        ("SELECT purge_orders()", "purge_orders()"),
        ("SELECT public.PURGE_ORDERS() AS n", "PURGE_ORDERS"),
        ("SELECT * FROM purging", "FROM purging"),
        ("INSERT INTO audit VALUES ('hello')", "INTO audit"),
        (
            "SELECT query_to_xml(current_setting('application_name'), true, true, '')",
            "query_to_xml",
        ),
    ] {
        let agent = s.spawn_psql(&["-At", "-c", q]);
        s.decide(needle, false);
        let out = agent.wait_with_output().expect("psql");
        assert!(text(&out).contains("e2e test"), "{q}: {}", text(&out));
        assert_eq!(count(), "10", "{q}");
    }
    let held = s.env.wait_count(5, |e| {
        e["kind"] == "statement" && e["policy_id"] == "sql-user-functions-production"
    });
    assert_eq!(held, 5, "{:#?}", s.statements());
    // The SQL text of a built-in that runs SQL is read like any statement.
    let out = s.psql(&[
        "-At",
        "-c",
        "SELECT query_to_xml('SELECT 1; DROP TABLE orders', true, true, '')",
    ]);
    assert!(
        text(&out).contains("denied by policy sql-destroy-production"),
        "{}",
        text(&out)
    );
    // set_config of the role is a privilege change (held, denied here).
    let agent = s.spawn_psql(&["-At", "-c", "SELECT set_config('role', 'postgres', false)"]);
    s.decide("set_config", false);
    let out = agent.wait_with_output().expect("psql");
    assert!(text(&out).contains("e2e test"), "{}", text(&out));
    // Look-alikes: built-ins and constant SQL text run at once.
    for q in [
        "SELECT count(*), lower('X'), now() IS NOT NULL FROM orders",
        "SELECT query_to_xml('SELECT 1 AS one', true, true, '') IS NOT NULL",
        "SELECT set_config('application_name', 'agent', false)",
    ] {
        let out = s.psql(&["-At", "-c", q]);
        assert!(
            out.status.success() && !text(&out).contains("ERROR"),
            "{q}: {}",
            text(&out)
        );
    }
    assert_eq!(count(), "10");
}

#[test]
fn writes_are_limited_by_the_rows_they_really_change() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let count = || s.pg.sql("orders", "SELECT count(*) FROM orders");
    let changed = || {
        s.pg.sql(
            "orders",
            "SELECT count(*) FROM orders WHERE status NOT IN ('new', 'paid', 'shipped')",
        )
    };
    // Tautologies of every shape: each has a WHERE clause, each touches
    // every row; measured, rolled back, held (denied here).
    for q in [
        "DELETE FROM orders WHERE true",
        "DELETE FROM orders WHERE id = id",
        "DELETE FROM orders WHERE id > 0 OR status IS NULL",
        "UPDATE orders SET status = 'gone' WHERE 1 = 1",
        "UPDATE orders SET status = 'gone' WHERE id IN (SELECT id FROM orders)",
        "WITH d AS (DELETE FROM orders WHERE true RETURNING *) SELECT count(*) FROM d",
    ] {
        let agent = s.spawn_psql(&["-At", "-c", q]);
        let id = s.decide(q, false);
        let out = agent.wait_with_output().expect("psql");
        let t = text(&out);
        assert!(
            t.contains(&format!("waiting for approval {id}")),
            "{q}: {t}"
        );
        assert!(t.contains("sql-production-write-limit"), "{q}: {t}");
        assert!(
            !t.contains("DELETE 10") && !t.contains("UPDATE 10"),
            "{q}: {t}"
        );
        assert_eq!((count(), changed()), ("10".into(), "0".into()), "{q}: {t}");
    }
    // Inside the agent's own transaction the write is measured under a
    // savepoint; refused, it fails the transaction as an error would.
    let agent = s.spawn_psql(&[
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "UPDATE orders SET status = 'gone' WHERE true",
        "-c",
        "COMMIT",
    ]);
    s.decide("UPDATE orders SET status = 'gone' WHERE true", false);
    let out = agent.wait_with_output().expect("psql");
    assert!(text(&out).contains("ROLLBACK"), "{}", text(&out));
    assert_eq!(changed(), "0");
    // Approved, the write runs again, for real.
    let agent = s.spawn_psql(&["-At", "-c", "DELETE FROM orders WHERE id <= 7"]);
    let id = s.decide("DELETE FROM orders WHERE id <= 7", true);
    let out = agent.wait_with_output().expect("psql");
    assert!(text(&out).contains("DELETE 7"), "{}", text(&out));
    assert_eq!(count(), "3");
    let rec = s.env.wait_event("the approved write", |e| {
        e["kind"] == "statement" && e["approval_id"] == id.as_str()
    });
    assert_eq!(rec["rows"], 7, "{rec}");
    assert_eq!(rec["policy_id"], "sql-production-write-limit", "{rec}");

    // Look-alikes within the limit run at once and answer as direct.
    for q in [
        "DELETE FROM orders WHERE id = 8 RETURNING id, status",
        "UPDATE orders SET status = 'paid' WHERE id IN (9, 10) RETURNING id",
        "UPDATE orders SET total = total WHERE false",
    ] {
        let out = s.psql(&["-At", "-c", q]);
        let t = text(&out);
        assert!(out.status.success() && !t.contains("ERROR"), "{q}: {t}");
        assert!(!t.contains("waiting for approval"), "{q}: {t}");
    }
    let out = s.psql(&["-c", "DELETE FROM orders WHERE id = 9 RETURNING id"]);
    assert!(text(&out).contains("DELETE 1"), "{}", text(&out));
    assert!(text(&out).contains(" 9\n"), "{}", text(&out));
    // In a transaction: within the limit it runs, and the agent's own
    // ROLLBACK still undoes it.
    let out = s.psql(&[
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "UPDATE orders SET status = 'tx' WHERE id = 10",
        "-c",
        "SELECT status FROM orders WHERE id = 10",
        "-c",
        "ROLLBACK",
    ]);
    assert!(text(&out).contains("\ntx\n"), "{}", text(&out));
    assert_eq!(
        s.pg.sql("orders", "SELECT status FROM orders WHERE id = 10"),
        "paid"
    );
    // A write that fails fails as direct, and the session goes on.
    let q = "UPDATE orders SET total = 1 / 0 WHERE id = 10";
    let through = s.psql(&["-At", "-c", q, "-c", "SELECT 'after'"]);
    let direct = s.psql_direct(&["-At", "-c", q, "-c", "SELECT 'after'"]);
    assert_eq!(text(&through), text(&direct));
    let out = s.psql(&[
        "-At", "-c", "BEGIN", "-c", q, "-c", "SELECT 1", "-c", "COMMIT",
    ]);
    let t = text(&out);
    assert!(t.contains("current transaction is aborted"), "{t}");
    assert!(t.contains("ROLLBACK"), "{t}");
}

/// psycopg sends parameterised statements in the extended protocol; its
/// writes are measured inside the pipeline as a Query's are.
#[test]
fn extended_protocol_writes_are_measured_too() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let Some(python) = harness::postgres::python_with_psycopg() else {
        return;
    };
    let script = format!(
        r#"
import psycopg
conninfo = {conn:?}
pw = {pw:?}
def refused(f):
    try:
        f()
        return "ran"
    except psycopg.errors.InsufficientPrivilege as e:
        return "refused: " + str(e).splitlines()[0]
with psycopg.connect(conninfo, password=pw, autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("DELETE FROM orders WHERE id = %s RETURNING id", (1,))
    print("small delete:", cur.fetchall(), cur.rowcount)
    cur.executemany("UPDATE orders SET total = total + 1 WHERE id = %s", [(2,), (3,), (4,)])
    print("executemany:", cur.rowcount)
    print("tautology:", refused(lambda: cur.execute("UPDATE orders SET status = %s WHERE true", ("gone",))))
    print("after:", conn.execute("SELECT count(*) FROM orders WHERE status = 'gone'").fetchone()[0])
with psycopg.connect(conninfo, password=pw) as conn:
    cur = conn.cursor()
    cur.execute("UPDATE orders SET total = 0 WHERE id = %s", (2,))
    print("in transaction:", refused(lambda: cur.execute("DELETE FROM orders WHERE id > %s", (0,))))
    conn.rollback()
    cur.execute("SELECT total FROM orders WHERE id = 2")
    print("rolled back:", cur.fetchone()[0] != 0)
    conn.commit()
with psycopg.connect(conninfo, password=pw, autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("DELETE FROM orders WHERE id > %s AND status <> %s", (2, "x"))
    print("approved:", cur.rowcount)
print("psycopg done")
"#,
        conn = s.conninfo("disable"),
        pw = AGENT_PASSWORD
    );
    let child = s
        .env
        .agent(
            "claude",
            &[python.to_str().unwrap_or_default(), "-c", &script],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    s.decide("UPDATE orders SET status = $1 WHERE true", false);
    s.decide("DELETE FROM orders WHERE id > $1", false);
    s.decide("DELETE FROM orders WHERE id > $1 AND status", true);
    let out = child.wait_with_output().expect("python");
    let t = text(&out);
    assert!(t.contains("psycopg done"), "{t}");
    assert!(t.contains("small delete: [(1,)] 1"), "{t}");
    assert!(t.contains("executemany: 3"), "{t}");
    assert!(
        t.contains("tautology: refused:") && t.contains("after: 0"),
        "{t}"
    );
    assert!(
        t.contains("in transaction: refused:") && t.contains("rolled back: True"),
        "{t}"
    );
    assert!(t.contains("approved: 8"), "{t}");
    assert_eq!(
        s.pg.sql("orders", "SELECT count(*) FROM orders"),
        "1",
        "{t}"
    );
}

/// A pipeline mixing measured writes, an error and later statements
/// answers through the gateway as it does direct, and leaves the same data.
#[test]
fn pipelines_with_measured_writes_behave_as_direct() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let Some(python) = harness::postgres::python_with_psycopg() else {
        return;
    };
    let script = |pw: &str| {
        format!(
            r#"
import psycopg
def run(autocommit):
    out = []
    with psycopg.connect({conn:?}, password={pw:?}, autocommit=autocommit) as conn:
        try:
            with conn.pipeline():
                cur = conn.cursor()
                cur.execute("UPDATE orders SET total = total + 1 WHERE id = %s", (5,))
                cur.execute("DELETE FROM orders WHERE id = %s RETURNING id", (6,))
                cur.execute("SELECT 1 / 0")
                cur.execute("UPDATE orders SET total = 0 WHERE id = %s", (7,))
        except psycopg.Error as e:
            out.append(type(e).__name__)
        if not autocommit:
            conn.rollback()
        with conn.pipeline():
            cur = conn.cursor()
            cur.execute("UPDATE orders SET status = %s WHERE id = %s", ("p", 8))
            cur.execute("SELECT id, status, total FROM orders ORDER BY id")
            out.append(cur.fetchall())
        if not autocommit:
            conn.commit()
    return out
print("autocommit", run(True))
print("transaction", run(False))
"#,
            conn = s.conninfo("disable"),
        )
    };
    let reset = || {
        s.pg.sql(
            "orders",
            "DELETE FROM orders; ALTER SEQUENCE orders_id_seq RESTART; \
             INSERT INTO orders (customer_id, total, status) SELECT 1 + (i % 3), round(i * 12.5, 2), \
             (ARRAY['new', 'paid', 'shipped'])[1 + (i % 3)] FROM generate_series(1, 10) AS i",
        )
    };
    let through = s
        .env
        .agent(
            "claude",
            &[
                python.to_str().unwrap_or_default(),
                "-c",
                &script(AGENT_PASSWORD),
            ],
        )
        .output()
        .expect("python");
    let after_through = s.pg.sql(
        "orders",
        "SELECT string_agg(id || ':' || status || ':' || total, ',' ORDER BY id) FROM orders",
    );
    reset();
    let direct = std::process::Command::new(&python)
        .args(["-c", &script(SECRET)])
        .output()
        .expect("python");
    let after_direct = s.pg.sql(
        "orders",
        "SELECT string_agg(id || ':' || status || ':' || total, ',' ORDER BY id) FROM orders",
    );
    assert!(direct.status.success(), "{}", text(&direct));
    assert_eq!(
        settled(&through),
        settled(&direct),
        "daemon log:\n{}",
        s.daemon.log_text()
    );
    assert_eq!(after_through, after_direct);
    let differentials = s.env.count_events(|e| e["kind"] == "differential");
    assert_eq!(differentials, 0);
}

//! Masking by lineage in the PostgreSQL gateway, attacked with real psql
//! and tokio-postgres through the real daemon (real kernel redirect, real
//! PostgreSQL 15), with the shipped policies and masking rules on a
//! target named `orders-db` labelled env=production: `customers.email`
//! is masked by rule (style hash), card numbers by detector (last4).
//!
//! Attacks tried, each answered with masked values (or refused, never the
//! raw value):
//! - expressions and casts: `lower(email)`, `email || ''`, `email::text`,
//!   `reverse(email)`, `encode(convert_to(email,'UTF8'),'base64')`;
//! - aggregates and windows: `array_agg`, `string_agg`, `min`,
//!   `lag(email) OVER ()`, `mode() WITHIN GROUP (ORDER BY email)`;
//! - whole rows: `row_to_json(c)`, `c::text`, `to_json(c.*)`;
//! - subqueries, CTEs, UNION branches, LATERAL, VALUES;
//! - a table inheriting from customers (the parent's rules apply to it);
//! - a view over customers (followed through its definition: its `id`
//!   stays readable), a user-defined SQL function, a set-returning
//!   user function in FROM, `query_to_xml('select email …')`;
//! - `UPDATE … RETURNING email`, a data-modifying CTE's RETURNING;
//! - `COPY (SELECT email …) TO STDOUT` and `COPY customers TO STDOUT`
//!   (masked in text format, as SELECT masks; CSV and BINARY refused),
//!   while `COPY orders TO STDOUT` and COPY of a query over unmasked
//!   columns come out unchanged;
//! - error texts echoing a value (`email::int`, `email::json`'s DETAIL
//!   and CONTEXT, `to_date(email, …)`), names that came from data
//!   (`email::regclass`, `current_setting(email)`), a NOTICE raised with a
//!   value by a function, `pg_notify('c', email)` to a listening session;
//! - storing a value to read it back untraced: `set_config('x.y', email,
//!   false)` then `current_setting('x.y')` (refused);
//! - the extended protocol (tokio-postgres: Parse/Bind/Describe/Execute,
//!   binary results);
//! - card numbers reversed (`reverse(card)`) are caught by the detector.
//!
//! - writing a masked value into an unmasked column to read it back
//!   (`UPDATE customers SET note = email`, `INSERT … SELECT lower(email)`,
//!   `ON CONFLICT DO UPDATE SET note = customers.email`): refused.
//!
//! Known to get through (not masked here, see README "Masking"): card
//! numbers (a detector, not a column rule, in the shipped rules) encoded
//! other than reversed (base64, translate); side channels that reveal one
//! bit per query (`WHERE email LIKE 'a%'`), which filtering on masked
//! columns has always allowed; values a trigger or a function with side
//! effects copies elsewhere (blastgate sees the statement, not the code it
//! runs); another session's or a human's DDL within the one second a
//! lookup of names is reused.

mod harness;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use harness::{postgres::TestPostgres, *};
use serde_json::Value;

/// What blastgate logs in upstream with.
const SECRET: &str = "upstream-Secret-51c0de";
/// What agents type; any password is accepted.
const AGENT_PASSWORD: &str = "whatever-the-agent-says";

/// The fixture's raw values that must never reach an agent, in any of
/// the forms the attacks below produce.
const RAW: &[&str] = &[
    "alice@example.com",
    "bob@example.com",
    "carol@example.org",
    "dan@example.com",
    "moc.elpmaxe@ecila",
    "ALICE@EXAMPLE.COM",
    // base64 of "alice@example.com"
    "YWxpY2VAZXhhbXBsZS5jb20",
    "4111111111111111",
    "1111111111111114",
    "5555555555554444",
];

struct Setup {
    pg: TestPostgres,
    env: Env,
    _daemon: Daemon,
    _secrets: tempfile::TempDir,
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn setup() -> Option<Setup> {
    setup_target("orders-db")
}

/// [`setup`] with another target name (`orders-*` is what the shipped
/// column rules apply to).
fn setup_target(target: &str) -> Option<Setup> {
    if !kernel_ready() || !TestPostgres::available() {
        return None;
    }
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("app", SECRET, true);
    pg.create_db("orders", "app");
    pg.load_fixture("orders", "app");
    // What an agent cannot create itself in production (DDL waits for a
    // human), set up directly: a view, functions that read emails.
    pg.sql(
        "orders",
        "CREATE VIEW public.customer_emails AS SELECT id, email FROM public.customers;
         CREATE FUNCTION public.my_get_email(i int) RETURNS text LANGUAGE sql
             AS 'SELECT email FROM public.customers WHERE id = i';
         CREATE FUNCTION public.my_emails() RETURNS SETOF text LANGUAGE sql
             AS 'SELECT email FROM public.customers ORDER BY id';
         CREATE FUNCTION public.shout(i int) RETURNS int LANGUAGE plpgsql AS $$
             BEGIN RAISE NOTICE 'value %', (SELECT email FROM public.customers WHERE id = i);
             RETURN i; END $$;
         CREATE TABLE public.customers_archive () INHERITS (public.customers);
         INSERT INTO public.customers_archive (name, email, card, note)
             VALUES ('Dan Doe', 'dan@example.com', '4012888888881881', 'archived');
         ALTER TABLE public.customers_archive OWNER TO app;
         ALTER VIEW public.customer_emails OWNER TO app;
         ALTER FUNCTION public.my_get_email(int) OWNER TO app;
         ALTER FUNCTION public.my_emails() OWNER TO app;
         ALTER FUNCTION public.shout(int) OWNER TO app;",
    );
    let secrets = tempfile::tempdir().expect("secrets dir");
    let secret_file = secrets.path().join("orders-db");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"{target}\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\
         labels = {{ env = \"production\" }}\n\n[targets.postgres]\nuser = \"app\"\n\
         password_file = \"{}\"\n",
        policies_dir().display(),
        pg.addr(),
        secret_file.display()
    ));
    let daemon = Daemon::start(&env);
    Some(Setup {
        pg,
        env,
        _daemon: daemon,
        _secrets: secrets,
    })
}

impl Setup {
    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=app dbname=orders sslmode=disable",
            self.pg.addr().ip(),
            self.pg.port()
        )
    }

    /// psql as an agent: `-At -c SQL` (unaligned, tuples only).
    fn psql(&self, sql: &str) -> Output {
        let conn = self.conninfo();
        let mut c = self.env.agent("claude", &[]);
        c.args(["psql", "-X", "-At", &conn, "-c", sql]);
        c.env("PGPASSWORD", AGENT_PASSWORD);
        c.output().expect("psql through blastgate")
    }

    /// [`Setup::psql`], approving whatever the statement waits for (policy
    /// may hold user-defined functions in production for a human).
    fn psql_approving(&self, sql: &str) -> Output {
        let conn = self.conninfo();
        let mut c = self.env.agent("claude", &[]);
        c.args(["psql", "-X", "-At", &conn, "-c", sql])
            .env("PGPASSWORD", AGENT_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("psql through blastgate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            let out = self.env.blastgate(&["approvals", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            for r in list.as_array().into_iter().flatten() {
                if let Some(id) = r["id"].as_str() {
                    self.env.answer_approval("approve", id);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("psql output")
    }

    /// The same psql directly, with the real password: the reference.
    fn psql_direct(&self, sql: &str) -> Output {
        Command::new("psql")
            .args(["-X", "-At", &self.conninfo(), "-c", sql])
            .env("PGPASSWORD", SECRET)
            .output()
            .expect("psql direct")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_raw(what: &str, out: &str) {
    for raw in RAW {
        assert!(!out.contains(raw), "{what}: {raw} leaked:\n{out}");
    }
}

/// Every line of the output is a masked value.
fn assert_all_masked(sql: &str, o: &Output) {
    let out = text(o);
    assert!(o.status.success(), "{sql}: {out}");
    assert_no_raw(sql, &out);
    // psql prints the command tag of a DML statement with RETURNING.
    let tag = regex::Regex::new(r"^(UPDATE|INSERT 0|DELETE) \d+$").expect("regex");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| {
            !l.is_empty() && !tag.is_match(l) && !l.starts_with("NOTICE:  waiting for approval")
        })
        .collect();
    assert!(!lines.is_empty(), "{sql}: no rows");
    for l in lines {
        assert!(
            l.starts_with("hash:") || l.starts_with("****"),
            "{sql}: not masked: {l:?}\n{out}"
        );
    }
}

#[test]
fn values_derived_from_masked_columns_are_masked() {
    let _g = serial();
    let Some(s) = setup() else {
        return;
    };
    for sql in [
        "SELECT lower(email) FROM customers",
        "SELECT upper(email) FROM customers",
        "SELECT email || '' FROM customers",
        "SELECT email::text FROM customers",
        "SELECT reverse(email) FROM customers",
        "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
        "SELECT array_agg(email) FROM customers",
        "SELECT string_agg(email, ',') FROM customers",
        "SELECT min(email) FROM customers",
        "SELECT lag(email) OVER (ORDER BY id) FROM customers OFFSET 1",
        "SELECT mode() WITHIN GROUP (ORDER BY email) FROM customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT c::text FROM customers c",
        "SELECT to_json(c.*) FROM customers c",
        "SELECT (SELECT email FROM customers ORDER BY id LIMIT 1)",
        "SELECT e FROM (SELECT lower(email) AS e FROM customers) s",
        "WITH t AS (SELECT email FROM customers) SELECT lower(email) FROM t",
        "SELECT 'x' || email FROM customers UNION ALL SELECT 'y' || email FROM customers",
        "SELECT l.e FROM customers c, LATERAL (SELECT c.email || '' AS e) l",
        "VALUES ((SELECT min(email) FROM customers))",
        "SELECT email FROM customer_emails",
        "SELECT email FROM customers_archive",
        "SELECT lower(email) FROM ONLY customers_archive",
        "SELECT lower(email) FROM customer_emails",
        "SELECT my_get_email(1)",
        "SELECT * FROM my_emails()",
        "SELECT query_to_xml('SELECT email FROM customers', true, true, '')",
        "UPDATE customers SET note = note WHERE id = 1 RETURNING lower(email)",
        "WITH u AS (UPDATE customers SET note = note WHERE id = 2 RETURNING email) SELECT * FROM u",
        "SELECT reverse(card) FROM customers",
    ] {
        assert_all_masked(sql, &s.psql_approving(sql));
    }

    // hash keeps equal values equal, through expressions too: agents can
    // still group and join on them.
    let a = text(&s.psql("SELECT email FROM customers WHERE id = 1"));
    let b = text(&s.psql("SELECT e FROM (SELECT email AS e FROM customers) s ORDER BY e LIMIT 1"));
    let c = text(&s.psql("SELECT email::text FROM customers WHERE id = 1"));
    assert!(a.starts_with("hash:"), "{a}");
    assert_eq!(a, c, "a cast of a value hashes as the value");
    assert!(b.starts_with("hash:"), "{b}");
    // Through a view, followed through its definition.
    let v = text(&s.psql("SELECT email FROM customer_emails WHERE id = 1"));
    assert_eq!(a, v, "a view's column masks as the table's");

    // Extended protocol, binary results.
    let exe = std::env::current_exe().expect("test binary");
    let out = s
        .env
        .agent(
            "claude",
            &[
                exe.to_str().unwrap_or_default(),
                "--exact",
                "extended_protocol_child",
                "--nocapture",
                "--test-threads=1",
            ],
        )
        .env("BLASTGATE_PG_CHILD", s.conninfo())
        .env("PGPASSWORD", AGENT_PASSWORD)
        .output()
        .expect("child test");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("lowered=hash:"), "{t}");
    assert!(t.contains("whole="), "{t}");
    assert_no_raw("extended protocol", &t);
}

#[test]
fn errors_notices_notifications_and_copy_do_not_leak() {
    let _g = serial();
    let Some(s) = setup() else {
        return;
    };
    // An error quoting the value.
    let o = s.psql("SELECT email::int FROM customers");
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("invalid input syntax for type integer"), "{t}");
    assert_no_raw("error", &t);
    // Errors about names, where the name came from data.
    for sql in [
        "SELECT email::regclass FROM customers",
        "SELECT current_setting(email) FROM customers",
        "SELECT has_table_privilege(email, 'customers', 'select') FROM customers",
        "SELECT email::json FROM customers",
        "SELECT to_date(email, 'YYYY-MM-DD') FROM customers",
    ] {
        let o = s.psql(sql);
        let t = text(&o);
        assert!(!o.status.success(), "{sql}: {t}");
        assert!(t.contains("ERROR"), "{sql}: {t}");
        assert_no_raw(sql, &t);
        assert!(!t.contains("alice"), "{sql}: {t}");
    }
    // A notice raised with a value by a function the statement calls.
    let o = s.psql_approving("SELECT shout(1)");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("NOTICE"), "{t}");
    assert_no_raw("notice", &t);
    // A notification carrying a value, to this session's own LISTEN.
    let o = s.psql("LISTEN c; SELECT pg_notify('c', email) FROM customers WHERE id = 1;");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Asynchronous notification \"c\""), "{t}");
    assert_no_raw("notification", &t);
    // A value stored in a setting (or a large object) to be read back
    // later untraced is refused; constants still go.
    let o = s.psql(
        "SELECT set_config('x.y', email, false) FROM customers WHERE id = 1; \
         SELECT current_setting('x.y', true)",
    );
    let t = text(&o);
    assert!(t.contains("storing a computed value"), "{t}");
    assert_no_raw("set_config", &t);
    let o = s.psql("SELECT set_config('x.y', 'plain', false)");
    assert_eq!(text(&o).trim(), "plain", "{}", text(&o));
    // Errors about names keep their text.
    let t = text(&s.psql("SELECT emial FROM customers"));
    assert!(t.contains("column \"emial\" does not exist"), "{t}");

    // COPY in text format: masked columns masked as SELECT masks them.
    let hashed = text(&s.psql("SELECT email FROM customers ORDER BY id"));
    let sql = "COPY (SELECT email FROM customers ORDER BY id) TO STDOUT";
    let o = s.psql(sql);
    assert!(o.status.success(), "{sql}: {}", text(&o));
    assert_eq!(text(&o), hashed, "{sql}");
    let sql = "COPY (SELECT lower(email), id FROM customers ORDER BY id) TO STDOUT (DELIMITER '|')";
    let o = s.psql(sql);
    let t = text(&o);
    assert!(o.status.success(), "{sql}: {t}");
    assert_no_raw(sql, &t);
    assert!(t.lines().all(|l| l.starts_with("hash:")), "{sql}: {t}");
    let sql = "COPY customers TO STDOUT";
    let o = s.psql(sql);
    let t = text(&o);
    assert!(o.status.success(), "{sql}: {t}");
    assert_no_raw(sql, &t);
    let first: Vec<&str> = t.lines().next().unwrap_or_default().split('\t').collect();
    assert_eq!(first.len(), 5, "{t}");
    assert_eq!(first[1], "Alice Archer", "{t}");
    assert_eq!(first[2], hashed.lines().next().unwrap_or_default(), "{t}");
    assert_eq!(first[3], "****1111", "{t}");
    assert_eq!(first[4], "prefers email", "{t}");
    // Formats whose rows blastgate does not parse are refused.
    for sql in [
        "COPY customers TO STDOUT (FORMAT csv)",
        "COPY (SELECT email FROM customers) TO STDOUT (FORMAT binary)",
    ] {
        let o = s.psql(sql);
        let t = text(&o);
        assert!(!o.status.success(), "{sql}: {t}");
        assert!(t.contains("COPY ... TO is refused"), "{sql}: {t}");
        assert_no_raw(sql, &t);
    }
    // Unmasked columns come out as they are.
    for sql in [
        "COPY (SELECT id, name FROM customers ORDER BY id) TO STDOUT",
        "COPY orders TO STDOUT",
    ] {
        let o = s.psql(sql);
        assert!(o.status.success(), "{sql}: {}", text(&o));
        assert_eq!(text(&o), text(&s.psql_direct(sql)), "{sql}");
    }
}

#[test]
fn filtering_grouping_and_joining_on_masked_columns_still_answer() {
    let _g = serial();
    let Some(s) = setup() else {
        return;
    };
    for sql in [
        "SELECT count(*) FROM customers WHERE email LIKE '%@example.com'",
        "SELECT name FROM customers ORDER BY email",
        "SELECT count(*) FROM customers GROUP BY split_part(email, '@', 2) ORDER BY 1",
        "SELECT c.name, sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE c.email = 'alice@example.com' GROUP BY c.name",
        "SELECT name FROM customers c WHERE EXISTS \
         (SELECT 1 FROM customers d WHERE d.email = c.email AND d.id <> c.id) OR id = 2",
        "SELECT CASE WHEN email LIKE 'a%' THEN 'a' ELSE 'other' END FROM customers ORDER BY id",
        "SELECT id, name, note FROM customers ORDER BY id",
        "SELECT count(email), count(DISTINCT email) FROM customers",
        "SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 1",
        "SELECT id FROM customer_emails ORDER BY id",
        "SELECT name FROM customers WHERE email IN (SELECT email FROM customers WHERE id < 3) ORDER BY 1",
    ] {
        let through = s.psql(sql);
        let direct = s.psql_direct(sql);
        assert!(through.status.success(), "{sql}: {}", text(&through));
        assert!(!text(&direct).is_empty(), "{sql}: no rows direct");
        assert_eq!(text(&through), text(&direct), "{sql}");
    }
    assert_eq!(
        text(&s.psql("SELECT count(*) FROM customers WHERE email LIKE '%@example.com'")).trim(),
        "3",
        "Alice, Bob and Dan (in a child table)"
    );
}

/// A refusal names the table and column the agent wrote to, and the server
/// raises it from a dollar-quoted string. Names spelled so that stripping
/// the quote tags from them joined the text into a tag again (`$$m$m$`
/// became `$m$`) ended the string early: the rest ran as PL/pgSQL, here an
/// exception handler that creates a table, and the agent saw no error.
#[test]
fn a_refusal_naming_the_agents_table_and_column_runs_nothing_else() {
    let _g = serial();
    let Some(s) = setup() else {
        return;
    };
    let pwned = "SELECT to_regclass('public.p') IS NULL AND to_regclass('public.q') IS NULL";
    assert_eq!(text(&s.psql_direct(pwned)).trim(), "t");
    for sql in [
        "INSERT INTO \"x$$m$m$;EXCEPTION WHEN OTHERS THEN PERFORM $$m$m$\" \
         (\"$$m$m$;CREATE TABLE p();PERFORM $$m$m$\") SELECT email FROM customers",
        "INSERT INTO \"x$$blastgate$blastgate$;CREATE TABLE q();--\" (y) \
         SELECT email FROM customers",
        // A harmless look-alike: dollars in a name, refused, named whole.
        "INSERT INTO \"cost$\" (\"$usd$\") SELECT email FROM customers",
    ] {
        let o = s.psql(sql);
        let t = text(&o);
        assert!(!o.status.success(), "{sql}: {t}");
        assert!(t.contains("not masked alike"), "{sql}: {t}");
        assert_eq!(
            text(&s.psql_direct(pwned)).trim(),
            "t",
            "{sql} ran more: {t}"
        );
    }
    let t = text(&s.psql("INSERT INTO \"cost$\" (\"$usd$\") SELECT email FROM customers"));
    assert!(t.contains("cost$.$usd$"), "the names are kept whole: {t}");
}

#[test]
fn writing_masked_values_where_they_would_read_back_unmasked_is_refused() {
    let _g = serial();
    let Some(s) = setup() else {
        return;
    };
    for sql in [
        "UPDATE customers SET note = email WHERE id = 1",
        "UPDATE orders o SET status = c.email FROM customers c WHERE c.id = o.customer_id AND o.id = 1",
        "INSERT INTO orders (customer_id, total, status) SELECT id, 1, lower(email) FROM customers",
        "INSERT INTO customers (id, name, note) VALUES (1, 'x', 'y') \
         ON CONFLICT (id) DO UPDATE SET note = customers.email",
    ] {
        let o = s.psql(sql);
        let t = text(&o);
        assert!(!o.status.success(), "{sql}: {t}");
        assert!(t.contains("not masked alike"), "{sql}: {t}");
    }
    // Nothing was written: the raw value is nowhere to read back.
    let o = s.psql("SELECT note FROM customers ORDER BY id; SELECT status FROM orders ORDER BY id");
    assert_no_raw("read back", &text(&o));
    assert_eq!(
        text(&s.psql_direct("SELECT count(*) FROM orders WHERE status LIKE '%@%'")).trim(),
        "0"
    );
    // Writes that keep masked values masked, or use them only to filter,
    // go through.
    for sql in [
        "UPDATE customers SET email = lower(email) WHERE id = 3",
        "UPDATE customers SET note = 'vip!' WHERE email = 'carol@example.org'",
        "INSERT INTO orders (customer_id, total, status) \
         SELECT id, 5, 'new' FROM customers WHERE email LIKE '%.com'",
    ] {
        let o = s.psql(sql);
        assert!(o.status.success(), "{sql}: {}", text(&o));
    }
    assert_eq!(
        text(&s.psql_direct("SELECT note FROM customers WHERE id = 3")).trim(),
        "vip!"
    );
}

/// What masking by lineage costs: pgbench (one client, 5 s, each
/// protocol) through blastgate with the shipped rules, on a target the
/// column rules apply to (`orders-db`) and on one they do not (`app-db`,
/// detectors only), for a query with a column masked by lineage. Prints
/// transactions per second, and direct for scale; run by hand:
/// `cargo test -p blastgate --test pg_masking masking_overhead -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn masking_overhead() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let tps = |o: &Output| -> f64 {
        let t = text(o);
        t.lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tps in pgbench output:\n{t}"))
    };
    let script = dir.path().join("masked.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 1000000)\nSELECT name, lower(email) FROM customers WHERE id = :id;\n",
    )
    .expect("script");
    let script = script.to_string_lossy().to_string();
    for target in ["orders-db", "app-db"] {
        let Some(s) = setup_target(target) else {
            return;
        };
        for protocol in ["simple", "prepared"] {
            let args = ["-n", "-T", "5", "-c", "1", "-M", protocol, "-f", &script];
            let host = s.pg.addr().ip().to_string();
            let port = s.pg.port().to_string();
            let conn = [
                "-h",
                host.as_str(),
                "-p",
                port.as_str(),
                "-U",
                "app",
                "orders",
            ];
            let mut through = s.env.agent("claude", &[]);
            through
                .arg("pgbench")
                .args(args)
                .args(conn)
                .env("PGPASSWORD", AGENT_PASSWORD);
            let through = through.output().expect("pgbench through blastgate");
            let direct = Command::new("pgbench")
                .args(args)
                .args(conn)
                .env("PGPASSWORD", SECRET)
                .output()
                .expect("pgbench direct");
            let (t, d) = (tps(&through), tps(&direct));
            println!(
                "{target:10} {protocol:8} through {t:8.0} tps, direct {d:8.0} tps, ratio {:.2}",
                t / d
            );
        }
    }
}

/// The extended protocol through tokio-postgres (binary results), run as
/// an agent by the test above.
#[test]
fn extended_protocol_child() {
    let Ok(conninfo) = std::env::var("BLASTGATE_PG_CHILD") else {
        return;
    };
    let conninfo = format!("{conninfo} password={AGENT_PASSWORD}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT lower(email), row_to_json(c)::text, name FROM customers c WHERE id = $1",
                &[&1i32],
            )
            .await
            .expect("query");
        let lowered: String = row.get(0);
        let whole: Option<String> = row.get(1);
        let name: String = row.get(2);
        println!("lowered={lowered}");
        println!("whole={}", whole.unwrap_or_default());
        assert_eq!(name, "Alice Archer");
    });
}

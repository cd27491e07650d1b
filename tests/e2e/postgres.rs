//! The PostgreSQL gateway against a real PostgreSQL 15 and real clients
//! (psql, pgbench, tokio-postgres, psycopg 3), every agent redirected by
//! the real kernel hooks.

mod harness;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{pg_gateway::*, postgres::TestPostgres, *};
use serde_json::Value;

/// Process ids differ between runs; nothing else may.
fn without_pids(s: &str) -> String {
    let re = regex::Regex::new(r"process with PID \d+").expect("regex");
    re.replace_all(s, "process with PID N").into_owned()
}

#[test]
fn psql_behaves_as_it_does_direct() {
    let _g = serial();
    let Some(s) = setup("app-db", "staging", None) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let csv_in = dir.path().join("in.csv");
    std::fs::write(&csv_in, "1,10.50,new\n2,20.25,paid\n").expect("csv");
    let csv_out = dir.path().join("out.csv");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        format!(
            "\\d orders\n\
             SELECT c.name, count(*), sum(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY 1 ORDER BY 1;\n\
             BEGIN;\nINSERT INTO orders (customer_id, total, status) VALUES (3, 1.00, 'tx');\nSAVEPOINT a;\n\
             UPDATE orders SET status = 'rolled back' WHERE status = 'tx';\nROLLBACK TO a;\nCOMMIT;\n\
             SELECT status, count(*) FROM orders GROUP BY 1 ORDER BY 1;\n\
             BEGIN;\nDECLARE c CURSOR FOR SELECT id, status FROM orders ORDER BY id;\nFETCH 3 FROM c;\nFETCH NEXT FROM c;\nCLOSE c;\nCOMMIT;\n\
             \\copy orders (customer_id, total, status) FROM '{}' CSV\n\
             \\copy (SELECT id, total, status FROM orders ORDER BY id) TO '{}' CSV\n\
             SET search_path TO public;\nSHOW search_path;\n\
             LISTEN ch;\nNOTIFY ch, 'hello';\n\
             SELECT count(*) FROM orders;\n\
             DELETE FROM orders WHERE customer_id = 2 AND status = 'paid';\n",
            csv_in.display(),
            csv_out.display()
        ),
    )
    .expect("script");
    let script = script.to_string_lossy().to_string();
    let through = s.psql(&["-f", &script]);
    let copied_through = std::fs::read_to_string(&csv_out).expect("copy out through blastgate");
    // Put the data back as it was, then run the same script directly.
    s.pg.sql(
        "orders",
        "DELETE FROM orders; ALTER SEQUENCE orders_id_seq RESTART; \
         INSERT INTO orders (customer_id, total, status) SELECT 1 + (i % 3), round(i * 12.5, 2), \
         (ARRAY['new', 'paid', 'shipped'])[1 + (i % 3)] FROM generate_series(1, 10) AS i",
    );
    let direct = s.psql_direct(&["-f", &script]);
    let copied_direct = std::fs::read_to_string(&csv_out).expect("copy out direct");
    assert!(through.status.success(), "{}", text(&through));
    assert_eq!(
        without_pids(&text(&through)),
        without_pids(&text(&direct)),
        "psql output through blastgate differs from direct"
    );
    assert!(
        text(&through).contains("Asynchronous notification \"ch\" with payload \"hello\""),
        "{}",
        text(&through)
    );
    assert_eq!(copied_through, copied_direct);
    assert_eq!(copied_through.lines().count(), 13, "{copied_through}");

    // Every statement is recorded, with rows and the deciding policy.
    let deleted = s.env.wait_event("the DELETE's record", |e| {
        e["kind"] == "statement"
            && e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("DELETE FROM orders"))
    });
    assert_eq!(deleted["verdict"], "allow");
    assert_eq!(deleted["action"], "sql:delete");
    assert_eq!(deleted["policy_id"], "sql-write");
    assert!(deleted["rows"].as_u64().is_some(), "{deleted}");
    assert!(deleted["duration_us"].as_u64().is_some(), "{deleted}");

    // TLS from the local CA: psql verifies it against `blastgate ca export`.
    let ca = dir.path().join("ca.pem");
    let out = s.env.blastgate(&["ca", "export"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&ca, &out.stdout).expect("ca");
    let conn = format!(
        "{} sslmode=verify-full sslrootcert={}",
        s.conninfo("verify-full")
            .replace(" sslmode=verify-full", ""),
        ca.display()
    );
    let out = s
        .env
        .agent(
            "claude",
            &["psql", "-X", "-At", &conn, "-c", "SELECT 'over tls'"],
        )
        .env("PGPASSWORD", AGENT_PASSWORD)
        .output()
        .expect("psql tls");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "over tls",
        "{}",
        text(&out)
    );
}

#[test]
fn queries_are_cancelled_both_ways() {
    let _g = serial();
    let Some(s) = setup("app-db", "staging", None) else {
        return;
    };
    // A CancelRequest from the client: psql sends one on SIGINT.
    let sleeper = s.spawn_psql(&["-c", "SELECT pg_sleep(60)"]);
    let running = wait_until(Duration::from_secs(10), || {
        let n = s.pg.sql(
            "orders",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        );
        (n == "1").then_some(())
    });
    assert!(running.is_some(), "the sleep never started");
    // `blastgate run` execs psql: same pid.
    let psql_pid = sleeper.id() as i32;
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(psql_pid, libc::SIGINT) };
    let out = sleeper.wait_with_output().expect("psql exit");
    assert!(
        text(&out).contains("canceling statement due to user request"),
        "{}",
        text(&out)
    );
    s.env.wait_event("the allowed cancel", |e| {
        e["action"] == "sql:cancel" && e["verdict"] == "allow"
    });

    // pg_cancel_backend from another agent session.
    let sleeper = s.spawn_psql(&["-c", "SELECT pg_sleep(61)"]);
    wait_until(Duration::from_secs(10), || {
        (s.pg.sql(
            "orders",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(61)'",
        ) == "1")
            .then_some(())
    })
    .expect("second sleep started");
    let out = s.psql(&[
        "-At",
        "-c",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(61)'",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        text(&out)
    );
    let out = sleeper.wait_with_output().expect("psql exit");
    assert!(
        text(&out).contains("canceling statement due to user request"),
        "{}",
        text(&out)
    );
}

#[test]
fn pgbench_runs_with_zero_errors_in_every_protocol() {
    let _g = serial();
    let Some(s) = setup("bench-db", "staging", Some(permissive_policies())) else {
        return;
    };
    let bench = |args: &[&str]| {
        let mut c = s.env.agent("pgbench", &[]);
        c.args([
            "pgbench",
            "-h",
            "127.0.0.2",
            "-p",
            &s.pg.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .arg("orders")
        .env("PGPASSWORD", AGENT_PASSWORD)
        .env("PGSSLMODE", "disable");
        c.output().expect("pgbench")
    };
    let init = bench(&["-i", "-s", "2"]);
    assert!(init.status.success(), "{}", text(&init));
    for mode in ["simple", "extended", "prepared"] {
        let out = bench(&["-T", "10", "-c", "4", "-j", "2", "-M", mode]);
        let t = text(&out);
        assert!(out.status.success(), "{mode}: {t}");
        assert!(
            t.contains("number of failed transactions: 0 (0.000%)"),
            "{mode}: {t}"
        );
        let processed: u64 = t
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(processed > 0, "{mode}: {t}");
    }
    let errors = s
        .statements()
        .into_iter()
        .filter(|e| e["verdict"] != "allow")
        .count();
    assert_eq!(errors, 0, "statements recorded as refused or failed");
}

#[test]
fn policy_denies_holds_and_sees_through_disguises() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let sql = |q: &str| s.psql(&["-At", "-v", "ON_ERROR_STOP=0", "-c", q]);
    let count = || s.pg.sql("orders", "SELECT count(*) FROM orders");

    // Denied outright in production, with 42501, and the session goes on.
    let out = s.psql(&[
        "-At",
        "-v",
        "VERBOSITY=verbose",
        "-c",
        "DROP TABLE orders",
        "-c",
        "SELECT 'still usable'",
    ]);
    let t = text(&out);
    assert!(
        t.contains("ERROR:  42501: blastgate: DROP TABLE denied by policy sql-destroy-production"),
        "{t}"
    );
    assert!(t.contains("still usable"), "{t}");
    assert_eq!(count(), "10");

    // Inside a transaction the refusal fails the transaction, as a real
    // error would: COMMIT rolls back the insert before it.
    let out = s.psql(&[
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "INSERT INTO orders (customer_id, total, status) VALUES (1, 1, 'x')",
        "-c",
        "TRUNCATE orders",
        "-c",
        "COMMIT",
    ]);
    assert!(text(&out).contains("ROLLBACK"), "{}", text(&out));
    assert_eq!(count(), "10");

    // Held, approved, executed.
    let agent = s.spawn_psql(&["-At", "-c", "DELETE FROM orders"]);
    let id = s.decide("DELETE FROM orders", true);
    let out = agent.wait_with_output().expect("psql");
    let t = text(&out);
    assert!(t.contains(&format!("waiting for approval {id}")), "{t}");
    assert!(t.contains("DELETE 10"), "{t}");
    assert_eq!(count(), "0");
    let rec = s.env.wait_event("the approved statement", |e| {
        e["kind"] == "statement"
            && e["approval_id"] == id.as_str()
            && e["text"] == "DELETE FROM orders"
    });
    assert_eq!(rec["verdict"], "allow");
    assert_eq!(rec["rows"], 10);
    assert_eq!(rec["policy_id"], "sql-unbounded-write");
    assert!(
        rec["approval_wait_us"].as_u64().is_some_and(|w| w > 0),
        "{rec}"
    );

    // The same denied by a human.
    s.pg.sql(
        "orders",
        "INSERT INTO orders (customer_id, total, status) VALUES (1, 1, 'kept')",
    );
    let agent = s.spawn_psql(&["-At", "-c", "DELETE FROM orders"]);
    s.decide("DELETE FROM orders", false);
    let out = agent.wait_with_output().expect("psql");
    assert!(text(&out).contains("e2e test"), "{}", text(&out));
    assert_eq!(count(), "1");

    // Each caught, whatever it hides behind; nothing of it runs.
    for (q, policy) in [
        ("COPY orders TO PROGRAM 'cat > /tmp/x'", "sql-copy-program"),
        ("SELECT pg_read_file('/etc/passwd')", "sql-file-access"),
        ("sElEcT Pg_Read_File('/etc/passwd')", "sql-file-access"),
        ("SELECT 1; DROP TABLE customers", "sql-destroy-production"),
        (
            "/* harmless */ DrOp TaBlE customers",
            "sql-destroy-production",
        ),
        ("SELECT $$x$$; TRUNCATE customers", "sql-destroy-production"),
        (
            "SELECT E'\\x27'; DROP TABLE customers; -- '",
            "sql-destroy-production",
        ),
    ] {
        let out = sql(q);
        let t = text(&out);
        assert!(
            t.contains(&format!("denied by policy {policy}")),
            "{q}: {t}"
        );
    }
    assert_eq!(s.pg.sql("orders", "SELECT count(*) FROM customers"), "3");
    // Held: DO blocks and data-modifying CTEs (denied here by the approver).
    for (q, needle) in [
        ("DO $$ BEGIN DELETE FROM customers; END $$", "DO $$"),
        (
            "WITH x AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM x",
            "WITH x AS",
        ),
    ] {
        let agent = s.spawn_psql(&["-At", "-c", q]);
        s.decide(needle, false);
        let out = agent.wait_with_output().expect("psql");
        assert!(text(&out).contains("e2e test"), "{q}: {}", text(&out));
    }
    assert_eq!(s.pg.sql("orders", "SELECT count(*) FROM customers"), "3");
    // Text that only looks dangerous runs.
    for q in [
        "SELECT 'DROP TABLE customers'",
        "SELECT $$TRUNCATE customers$$",
        "SELECT 1 -- ; DROP TABLE customers",
        "/* DROP TABLE customers */ SELECT 2",
    ] {
        let out = sql(q);
        assert!(
            out.status.success() && !text(&out).contains("ERROR"),
            "{q}: {}",
            text(&out)
        );
    }
}

#[test]
fn result_rows_are_masked_in_text_and_binary() {
    let _g = serial();
    let Some(s) = setup("orders-db", "production", None) else {
        return;
    };
    let out = s.psql(&[
        "-At",
        "-c",
        "SELECT name, email, card FROM customers ORDER BY id",
    ]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for raw in [
        "alice@example.com",
        "bob@example.com",
        "4111111111111111",
        "5555555555554444",
    ] {
        assert!(!t.contains(raw), "{raw} leaked: {t}");
    }
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert!(lines[0].starts_with("Alice Archer|hash:"), "{t}");
    assert!(lines[0].ends_with("|****1111"), "{t}");
    assert!(lines[2].ends_with("|****0005"), "{t}");
    // COPY TO in text format is masked by column as SELECT is; CSV
    // (which blastgate does not parse) is refused while column rules apply.
    let out = s.psql(&["-c", "COPY customers TO STDOUT"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\thash:"), "{}", text(&out));
    assert!(!text(&out).contains("alice@example.com"));
    let out = s.psql(&["-c", "COPY customers TO STDOUT (FORMAT csv)"]);
    assert!(
        text(&out).contains("COPY ... TO is refused"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("alice@example.com"));

    // Binary results (tokio-postgres asks for binary) are masked too.
    let out = s.run_child("binary_results_child");
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("email=hash:"), "{t}");
    assert!(!t.contains("alice@example.com"), "{t}");

    // The psql session masked 3 emails and 3 cards. Its close is recorded
    // once the proxy has let go of it, after psql may have exited.
    s.env
        .wait_event("a session closed with 6 masked fields", |e| {
            e["kind"] == "session_closed" && e["masked_fields"].as_u64() == Some(6)
        });
}

#[test]
fn rust_and_python_clients_work_and_never_see_the_secret() {
    let _g = serial();
    let Some(s) = setup("app-db", "production", None) else {
        return;
    };
    let out = s.run_child("rust_client_child");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rust client ok"), "{}", text(&out));
    let mut seen = text(&out);

    if let Some(python) = harness::postgres::python_with_psycopg() {
        let script = format!(
            r#"
import psycopg
with psycopg.connect({conn:?}, password={pw:?}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT id, status FROM orders WHERE customer_id = %s ORDER BY id", (2,))
        rows = cur.fetchall()
        assert len(rows) == 4, rows
        cur.executemany("INSERT INTO orders (customer_id, total, status) VALUES (%s, %s, %s)",
                        [(1, 5, "py"), (2, 6, "py")])
    conn.commit()
    try:
        with conn.transaction():
            conn.execute("TRUNCATE orders")
        raise SystemExit("truncate ran")
    except psycopg.errors.InsufficientPrivilege as e:
        print("refused:", e)
    n = conn.execute("SELECT count(*) FROM orders WHERE status = 'py'").fetchone()[0]
    assert n == 2, n
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT total FROM orders WHERE status = %s", ("py",))
        assert len(cur.fetchall()) == 2
print("python client ok")
"#,
            conn = s.conninfo("prefer"),
            pw = AGENT_PASSWORD
        );
        let out = s
            .env
            .agent(
                "claude",
                &[python.to_str().unwrap_or_default(), "-c", &script],
            )
            .output()
            .expect("python");
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("python client ok"), "{}", text(&out));
        seen += &text(&out);
    }

    // The secret is in nothing an agent saw, nor in the records or logs.
    let spool = s
        .env
        .events()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for (what, haystack) in [
        ("agent output", seen.as_str()),
        ("records", spool.as_str()),
        ("daemon log", &s.daemon.log_text()),
    ] {
        assert!(
            !haystack.contains(SECRET),
            "the upstream password appears in the {what}"
        );
    }
}

fn child_conninfo() -> Option<String> {
    std::env::var("BLASTGATE_PG_CHILD")
        .ok()
        .map(|c| format!("{c} password={AGENT_PASSWORD}"))
}

/// tokio-postgres's typical usage: prepared statements with parameters
/// (extended protocol, binary results), a transaction, batch execution.
#[test]
fn rust_client_child() {
    let Some(conninfo) = child_conninfo() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let stmt = client
            .prepare(
                "SELECT id, total::text, status FROM orders WHERE customer_id = $1 ORDER BY id",
            )
            .await
            .expect("prepare");
        let rows = client.query(&stmt, &[&1i32]).await.expect("query");
        assert!(!rows.is_empty());
        let status: String = rows[0].get(2);
        assert!(!status.is_empty());
        let mut client = client;
        let tx = client.transaction().await.expect("begin");
        tx.execute(
            "INSERT INTO orders (customer_id, total, status) VALUES ($1, 1, 'rust')",
            &[&3i32],
        )
        .await
        .expect("insert");
        tx.rollback().await.expect("rollback");
        let n: i64 = client
            .query_one("SELECT count(*) FROM orders WHERE status = 'rust'", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0);
        client
            .batch_execute("SELECT 1; SELECT 2")
            .await
            .expect("batch");
        let denied = client.batch_execute("TRUNCATE orders").await;
        let err = denied.expect_err("TRUNCATE is refused in production");
        println!("refused: {err:?}");
        // Still usable after the refusal.
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("after")
            .get(0);
        assert_eq!(one, 1);
        println!("rust client ok");
    });
}

/// Binary-format results through tokio-postgres, for the masking test.
#[test]
fn binary_results_child() {
    let Some(conninfo) = child_conninfo() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let rows = client
            .query("SELECT name, email FROM customers WHERE id = $1", &[&1i32])
            .await
            .expect("query");
        let email: String = rows[0].get(1);
        println!("email={email}");
    });
}

/// Upstream TLS: `verify-full` against the server's CA and name, `require`
/// encrypted without checking, and a name mismatch refused.
#[test]
fn upstream_tls_is_verified_as_configured() {
    let _g = serial();
    if !kernel_ready() || !TestPostgres::available() {
        return;
    }
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("app", SECRET, true);
    pg.create_db("orders", "app");
    // A CA and a server certificate for db.internal, made with openssl.
    let certs = pg.socket_dir().to_path_buf();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&certs)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=e2e db CA",
        "-days",
        "2",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=db.internal",
    ]);
    openssl(&csr);
    std::fs::write(certs.join("san.ext"), "subjectAltName=DNS:db.internal\n").expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let chown = Command::new("chown")
        .args(["postgres:postgres", "server.key", "server.crt"])
        .current_dir(&certs)
        .status()
        .expect("chown");
    assert!(chown.success());
    let key = certs.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    pg.sql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            certs.join("server.crt").display()
        ),
    );
    pg.sql(
        "postgres",
        &format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
    );
    pg.sql("postgres", "ALTER SYSTEM SET ssl = on");
    pg.reload();
    let secrets = tempfile::tempdir().expect("secrets");
    let secret_file = secrets.path().join("db");
    std::fs::write(&secret_file, SECRET).expect("secret");

    pg.create_role("legacy", SECRET, false);
    pg.sql("orders", "GRANT CONNECT ON DATABASE orders TO legacy");
    let try_as = |user: &str, tls: &str| -> Output {
        let env = Env::new(&format!(
            "[[targets]]\nname = \"tls-db\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\n\
             [targets.postgres]\nuser = \"{user}\"\npassword_file = \"{}\"\n{tls}\n",
            pg.addr(),
            secret_file.display()
        ));
        let _d = Daemon::start(&env);
        let conn = format!(
            "host=127.0.0.2 port={} user={user} dbname=orders sslmode=disable",
            pg.port()
        );
        env.agent(
            "claude",
            &[
                "psql",
                "-X",
                "-At",
                &conn,
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
        )
        .env("PGPASSWORD", AGENT_PASSWORD)
        .output()
        .expect("psql")
    };
    let try_mode = |tls: &str| try_as("app", tls);
    // An md5 role (the hba line for it says md5): blastgate answers md5.
    let out = try_as("legacy", "tls = \"require\"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        text(&out)
    );
    let ca_file = certs.join("ca.crt");
    let out = try_mode(&format!(
        "tls = \"verify-full\"\nca_file = \"{}\"\nserver_name = \"db.internal\"",
        ca_file.display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        text(&out)
    );
    let out = try_mode("tls = \"require\"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        text(&out)
    );
    let out = try_mode(&format!(
        "tls = \"verify-full\"\nca_file = \"{}\"\nserver_name = \"other.internal\"",
        ca_file.display()
    ));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("could not log in to the server for this target"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(SECRET));
}

/// A statement prepared under one policy set is decided again at Execute
/// once the policies changed.
#[test]
fn prepared_statements_are_decided_again_after_a_policy_reload() {
    let _g = serial();
    let policies = tempfile::tempdir().expect("policies");
    for f in ["blastgate.cedarschema", "connect.cedar", "sql.cedar"] {
        std::fs::copy(policies_dir().join(f), policies.path().join(f)).expect("copy policy");
    }
    let dir = policies.path().to_path_buf();
    let Some(s) = setup("app-db", "staging", Some(policies)) else {
        return;
    };
    let flag = tempfile::tempdir().expect("flag dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = s
        .env
        .agent(
            "claude",
            &[
                exe.to_str().unwrap_or_default(),
                "--exact",
                "prepared_child",
                "--nocapture",
            ],
        )
        .env("BLASTGATE_PG_CHILD", s.conninfo("disable"))
        .env("BLASTGATE_PG_FLAG", flag.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("child");
    wait_until(Duration::from_secs(20), || {
        flag.path().join("prepared").exists().then_some(())
    })
    .expect("the child prepared its statement");
    std::fs::write(
        dir.join("zz-no-orders.cedar"),
        "@id(\"no-orders-reads\")\n@reason(\"orders are off limits now\")\n\
         forbid (principal, action == Action::\"sql:select\", resource)\n\
         when { context.tables_read.contains(\"orders\") };\n",
    )
    .expect("new policy");
    s.env
        .wait_event("policy_reloaded", |e| e["kind"] == "policy_reloaded");
    std::fs::write(flag.path().join("go"), "").expect("go");
    let status = wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let out = child.wait_with_output().expect("child output");
    let t = text(&out);
    assert!(status.is_some_and(|s| s.success()), "{t}");
    assert!(t.contains("before reload: 10"), "{t}");
    assert!(
        t.contains("after reload: refused") && t.contains("no-orders-reads"),
        "{t}"
    );
}

/// Prepares, executes, waits for the parent to change the policies,
/// executes the same prepared statement again.
#[test]
fn prepared_child() {
    let (Some(conninfo), Ok(flag)) = (child_conninfo(), std::env::var("BLASTGATE_PG_FLAG")) else {
        return;
    };
    let flag = PathBuf::from(flag);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let stmt = client
            .prepare("SELECT count(*) FROM orders")
            .await
            .expect("prepare");
        let n: i64 = client.query_one(&stmt, &[]).await.expect("first").get(0);
        println!("before reload: {n}");
        std::fs::write(flag.join("prepared"), "").expect("flag");
        while !flag.join("go").exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match client.query_one(&stmt, &[]).await {
            Ok(row) => println!("after reload: ran ({})", row.get::<_, i64>(0)),
            Err(e) => println!("after reload: refused: {e:?}"),
        }
    });
}

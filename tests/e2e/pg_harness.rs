//! The PostgreSQL test server itself: password logins over TCP as the
//! gateway tests will make them (SCRAM-SHA-256 and md5 roles), the masking
//! fixture, psycopg, and clean-up after a panic.

mod harness;

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use harness::postgres::{python_with_psycopg, TestPostgres};

/// psql over TCP with a password, as a client outside the harness would.
fn psql(pg: &TestPostgres, user: &str, password: &str, db: &str, sql: &str) -> Output {
    Command::new("/usr/lib/postgresql/15/bin/psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &pg.addr().ip().to_string()])
        .args([
            "-p",
            &pg.port().to_string(),
            "-U",
            user,
            "-d",
            db,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("run psql")
}

fn psql_ok(pg: &TestPostgres, user: &str, password: &str, db: &str, sql: &str) -> String {
    let out = psql(pg, user, password, db, sql);
    assert!(
        out.status.success(),
        "psql as {user} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pg.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn scram_and_md5_roles_log_in_over_tcp_and_see_the_fixture() {
    if !TestPostgres::available() {
        return;
    }
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("agent_scram", "s3cret-scram", true);
    pg.create_role("agent_md5", "s3cret-md5", false);
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT string_agg(rolname || '=' || CASE \
                 WHEN rolpassword ~ '^md5[0-9a-f]{32}$' THEN 'md5' \
                 WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' END, ' ' ORDER BY rolname) \
             FROM pg_authid WHERE rolname LIKE 'agent_%'"
        ),
        "agent_md5=md5 agent_scram=scram"
    );
    pg.create_db("shop", "agent_scram");
    pg.load_fixture("shop", "agent_scram");
    pg.sql(
        "shop",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO agent_md5",
    );

    let emails = psql_ok(
        &pg,
        "agent_scram",
        "s3cret-scram",
        "shop",
        "SELECT string_agg(email || ' ' || card, ',' ORDER BY id) FROM customers",
    );
    assert_eq!(
        emails,
        "alice@example.com 4111111111111111,bob@example.com 5555555555554444,\
         carol@example.org 378282246310005"
    );
    assert_eq!(
        psql_ok(
            &pg,
            "agent_scram",
            "s3cret-scram",
            "shop",
            "SELECT count(*), current_user FROM orders"
        ),
        "10|agent_scram"
    );
    // An md5-hashed password cannot pass a SCRAM exchange: this login
    // proves the role's md5 line of pg_hba.conf is the one in force.
    assert_eq!(
        psql_ok(
            &pg,
            "agent_md5",
            "s3cret-md5",
            "shop",
            "SELECT count(*) FROM customers"
        ),
        "3"
    );
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT string_agg(array_to_string(user_name, ',') || '=' || auth_method, ' ' \
             ORDER BY line_number) FROM pg_hba_file_rules WHERE type = 'host'"
        ),
        "agent_md5=md5 all=scram-sha-256"
    );
    for (user, wrong) in [("agent_scram", "nope"), ("agent_md5", "nope")] {
        let out = psql(&pg, user, wrong, "shop", "SELECT 1");
        assert!(
            !out.status.success(),
            "{user} logged in with a wrong password"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The superuser has no password: no way in over TCP.
    assert!(!psql(&pg, "postgres", "", "postgres", "SELECT 1")
        .status
        .success());
    // Only the requested address listens.
    assert!(TcpStream::connect(pg.addr()).is_ok());
    assert!(TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", pg.port()).parse().unwrap(),
        Duration::from_secs(2)
    )
    .is_err());
}

#[test]
fn psycopg_logs_in_with_scram() {
    if !TestPostgres::available() {
        return;
    }
    let Some(python) = python_with_psycopg() else {
        return;
    };
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("app", "app-pw", true);
    pg.create_db("app", "app");
    pg.load_fixture("app", "app");
    let script = format!(
        "import psycopg\n\
         with psycopg.connect(host='{ip}', port={port}, user='app', password='app-pw', \
         dbname='app', sslmode='disable') as c:\n\
         \x20   rows = c.execute('SELECT name FROM customers WHERE id = %s', (2,)).fetchall()\n\
         \x20   print(rows[0][0])\n",
        ip = pg.addr().ip(),
        port = pg.port()
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "psycopg failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pg.log_tail()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Bob Baker");
}

#[test]
fn drop_stops_the_server_and_removes_its_directory_even_after_a_panic() {
    if !TestPostgres::available() {
        return;
    }
    let mut seen: Option<(PathBuf, i32, std::net::SocketAddr)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pg = TestPostgres::start("127.0.0.2");
        let pid_file = pg.socket_dir().join("data/postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("postmaster.pid")
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid");
        seen = Some((pg.socket_dir().to_path_buf(), pid, pg.addr()));
        panic!("a test fails while its server runs");
    }));
    assert!(result.is_err());
    let (dir, pid, addr) = seen.expect("the server started");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // SAFETY: signal 0 only checks whether the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "postmaster {pid} still running");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

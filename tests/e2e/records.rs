//! Session records in the real ClickHouse 26.7: shipped within seconds,
//! readable with `blastgate sessions list|show`.

mod harness;

use std::time::Duration;

use harness::*;

#[test]
fn an_agent_session_reaches_clickhouse_within_five_seconds() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let server = TestServer::start(&["127.0.0.2"]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let env = Env::new(&format!(
        "[metrics]\nlisten = \"{metrics}\"\n{}\n[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
        db.config(),
        server.addr(0)
    ));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    let v = &run_json(&mut env.agent("recorded", &[PROBE, "connect", &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    let pid = v["pid"].as_u64().unwrap_or(0);
    let closed_at = std::time::Instant::now();
    let session = wait_until(Duration::from_secs(5), || {
        let out = db.try_query(&format!(
            "SELECT toString(session_id), agent, target, verdict, isNotNull(end) FROM {{db}}.sessions FINAL WHERE pid = {pid}"
        ))?;
        (!out.is_empty() && out.ends_with("\t1")).then_some(out)
    })
    .unwrap_or_else(|| panic!("session not in ClickHouse after 5 s; spool: {:#?}", env.events()));
    assert!(closed_at.elapsed() < Duration::from_secs(5));
    let fields: Vec<&str> = session.split('\t').collect();
    assert_eq!(
        &fields[1..4],
        &["recorded", "orders-db", "allow"],
        "{session}"
    );
    let id = fields[0].to_string();

    let events = db.query(&format!(
        "SELECT kind FROM {{db}}.events FINAL WHERE session_id = '{id}' ORDER BY seq"
    ));
    assert_eq!(events, "session_opened\nsession_closed");
    // Every spooled event is there, once.
    let spooled = env.events().len();
    let shipped: usize = wait_until(Duration::from_secs(5), || {
        let n: usize = db
            .query("SELECT count() FROM {db}.events FINAL")
            .parse()
            .unwrap_or(0);
        (n == spooled).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!(
            "spooled {spooled} events, ClickHouse has {}",
            db.query("SELECT count() FROM {db}.events FINAL")
        )
    });
    assert_eq!(
        shipped,
        db.query("SELECT uniqExact(id) FROM {db}.events")
            .parse::<usize>()
            .unwrap_or(0)
    );

    // The CLI reads it back.
    let out = env.blastgate(&["sessions", "list", "--agent", "recorded"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&id) && text.contains("target=orders-db"),
        "{text}"
    );
    let out = env.blastgate(&["sessions", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("session_opened") && text.contains("session_closed"),
        "{text}"
    );

    // Prometheus sees the same figures.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{metrics}/metrics"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        _d.log_text()
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    };
    assert_eq!(
        value("blastgate_events_shipped_total"),
        spooled as f64,
        "{text}"
    );
    assert!(
        value("blastgate_events_recorded_total") >= spooled as f64,
        "{text}"
    );
    assert!(
        value("blastgate_decisions_total{verdict=\"allow\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(value("blastgate_sessions_open"), 0.0, "{text}");
    assert_eq!(
        value("blastgate_clickhouse_insert_errors_total"),
        0.0,
        "{text}"
    );
    assert!(value("blastgate_spool_bytes") > 0.0, "{text}");
}

/// Spooled events, by id (the spool may have been trimmed by the shipper,
/// so this counts what the daemon recorded through its spool segments plus
/// what ClickHouse already holds is checked separately).
fn count_denied(db: &TestDatabase) -> usize {
    db.try_query("SELECT count() FROM {db}.events FINAL WHERE kind = 'session_denied'")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_outage_and_a_killed_daemon_lose_nothing_and_double_nothing() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    if clickhouse_url().is_none() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let Some(mut ch) = OwnClickhouse::start(&scratch.path().join("clickhouse")) else {
        return;
    };
    let db = TestDatabase::new(&ch.url());
    let env = Env::new(&db.config());
    let mut d = Daemon::start(&env);
    // Wait for the schema, then take ClickHouse away.
    wait_until(Duration::from_secs(20), || {
        db.try_query("SELECT count() FROM {db}.events").map(|_| ())
    })
    .expect("schema never created");
    ch.stop();

    // 10,000 refused connections = 10,000 session_denied events, spooled
    // while ClickHouse is down.
    const N: usize = 10_000;
    let unknown = "127.0.0.9:9";
    let v = &run_json(&mut env.agent("outage", &[PROBE, "bench-rtt", unknown, &N.to_string()]))[0];
    assert_eq!(
        v["failures"].as_u64(),
        Some(N as u64),
        "every connection is refused: {v}"
    );
    let spooled = wait_until(Duration::from_secs(30), || {
        let n = env.count_events(|e| e["kind"] == "session_denied");
        (n >= N).then_some(n)
    })
    .expect("10,000 denials spooled");
    assert_eq!(spooled, N);

    // ClickHouse back: everything arrives, once.
    ch.restart();
    let arrived = wait_until(Duration::from_secs(120), || {
        let n = count_denied(&db);
        (n >= N).then_some(n)
    });
    assert_eq!(
        arrived,
        Some(N),
        "after the outage: {} of {N}",
        count_denied(&db)
    );

    // Now kill the daemon while it ships a second burst.
    let v = &run_json(&mut env.agent("outage", &[PROBE, "bench-rtt", unknown, &N.to_string()]))[0];
    assert_eq!(v["failures"].as_u64(), Some(N as u64));
    d.kill9();
    let _d2 = Daemon::start(&env);
    let arrived = wait_until(Duration::from_secs(120), || {
        let n = count_denied(&db);
        (n >= 2 * N).then_some(n)
    });
    assert_eq!(
        arrived,
        Some(2 * N),
        "after the kill: {} of {}",
        count_denied(&db),
        2 * N
    );
    // Exactly once: the rows the views see are the distinct event ids.
    let distinct: usize = db
        .query("SELECT uniqExact(id) FROM {db}.events WHERE kind = 'session_denied'")
        .parse()
        .unwrap_or(0);
    assert_eq!(distinct, 2 * N);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_denied(&db), 2 * N, "no duplicates appear later");
}

/// A fixture spool with known figures, shipped by the real shipper, read
/// through every shipped view.
#[test]
fn shipped_views_return_the_right_figures() {
    use blastgate::{
        identity::Caller,
        records::{Event, EventKind, Verdict},
    };
    use std::time::{Duration as D, UNIX_EPOCH};

    let _g = serial();
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let base = UNIX_EPOCH + D::from_secs(1_795_000_000); // within one hour
    let mut events = Vec::new();
    let caller = |agent: &str| Caller {
        agent: agent.into(),
        agent_id: 1,
        pid: 42,
        tid: 42,
        uid: 1001,
        gid: 1001,
        comm: "psql".into(),
        exe: None,
        cgroup_id: 0,
        lineage: Vec::new(),
        oidc: None,
        job: None,
    };
    let mut ev = |kind, verdict, agent: &str, target: &str, at: u64, f: &dyn Fn(&mut Event)| {
        let mut e = Event::daemon(kind, verdict, "fixture");
        e.ts = base + D::from_secs(at);
        e.caller = Some(caller(agent));
        e.target = Some(target.into());
        e.session_id = uuid::Uuid::now_v7();
        f(&mut e);
        events.push(e);
    };
    let sessions = [("a", "db", 2u64, 3u64), ("a", "api", 30, 0)];
    for (agent, target, secs, masked) in sessions {
        let sid = uuid::Uuid::now_v7();
        ev(
            EventKind::SessionOpened,
            Verdict::Allow,
            agent,
            target,
            0,
            &|e| e.session_id = sid,
        );
        ev(
            EventKind::SessionClosed,
            Verdict::Allow,
            agent,
            target,
            secs,
            &|e| {
                e.session_id = sid;
                e.seq = 1;
                e.duration_us = Some(secs * 1_000_000);
                e.masked_fields = Some(masked);
            },
        );
    }
    for (agent, target, policy) in [
        ("b", "db", "p-deny"),
        ("a", "api", "p-deny"),
        ("b", "api", "p-other"),
    ] {
        ev(
            EventKind::SessionDenied,
            Verdict::Deny,
            agent,
            target,
            5,
            &|e| e.policy_id = Some(policy.into()),
        );
    }
    for (group, secs, verdict) in [
        ("dba", 2u64, Verdict::Allow),
        ("dba", 4, Verdict::Deny),
        ("dba", 6, Verdict::Deny),
        ("ops", 10, Verdict::Deny),
    ] {
        ev(EventKind::ApprovalDecided, verdict, "a", "db", 7, &|e| {
            e.approval_group = Some(group.into());
            e.duration_us = Some(secs * 1_000_000);
        });
    }
    // A line shipped twice (as after a crash) must not count twice.
    let mut lines = events.clone();
    lines.extend(events.first().cloned());
    ship_fixture(&db, &url, &lines, events.len());

    let q = |sql: &str| db.query(sql);
    assert_eq!(q("SELECT count() FROM {db}.who_ran_what_where"), "5");
    assert_eq!(
        q("SELECT decisions, rejected, rate FROM {db}.rejection_rate"),
        "5\t3\t0.6"
    );
    assert_eq!(
        q("SELECT approval_group, decided, approved, p50_s, p95_s FROM {db}.approval_latency"),
        "dba\t3\t1\t4\t6\nops\t1\t0\t10\t10"
    );
    assert_eq!(
        q("SELECT target, masked_fields FROM {db}.masked_fields_per_session ORDER BY target"),
        "api\t0\ndb\t3"
    );
    assert_eq!(
        q("SELECT target, bucket, sessions FROM {db}.session_durations"),
        "api\t10-60s\t1\ndb\t1-10s\t1"
    );
    assert_eq!(
        q("SELECT policy_id, denials, agents FROM {db}.top_denied_policies"),
        "p-deny\t2\t2\np-other\t1\t1"
    );
}

/// Two runners' spools number their segments and lines alike: their
/// batches must not share a deduplication token, or the server drops the
/// second runner's rows as a re-sent copy of the first's.
#[test]
fn two_spools_shipping_to_one_server_do_not_deduplicate_each_other() {
    use blastgate::records::{Event, EventKind, Verdict};

    let _g = serial();
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let spool = |runner: &str| -> Vec<Event> {
        (0..5)
            .map(|_| Event::daemon(EventKind::DaemonStarted, Verdict::Allow, runner))
            .collect()
    };
    ship_fixture(&db, &url, &spool("runner-a"), 5);
    ship_fixture(&db, &url, &spool("runner-b"), 10);
}

/// Writes `events` as a spool segment, runs the real shipper on it until
/// `events` and `io` together hold `expect` rows, and stops it.
fn ship_fixture(db: &TestDatabase, url: &str, events: &[blastgate::records::Event], expect: usize) {
    use blastgate::{config::ClickhouseConfig, records::clickhouse::shipper::Shipper};

    let spool = tempfile::tempdir().expect("tempdir");
    let mut text = String::new();
    for e in events {
        text += &serde_json::to_string(e).expect("json");
        text.push('\n');
    }
    std::fs::write(spool.path().join("segment-000000000001.jsonl"), text).expect("spool");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let shipper = Shipper {
        cfg: ClickhouseConfig {
            batch: 5,
            io_ttl_days: 7,
            ..ClickhouseConfig::single(url, &db.name)
        },
        spool_dir: spool.path().to_path_buf(),
        batch: 5,
        warn_bytes: u64::MAX,
    };
    let handle = rt.spawn(shipper.run(stop.clone()));
    let shipped = wait_until(Duration::from_secs(30), || {
        let n: usize = db
            .try_query(
                "SELECT (SELECT count() FROM {db}.events FINAL) + (SELECT count() FROM {db}.io FINAL)",
            )?
            .parse()
            .ok()?;
        (n == expect).then_some(n)
    });
    stop.cancel();
    let _ = rt.block_on(handle);
    assert_eq!(shipped, Some(expect), "the shipper delivered the fixture");
}

/// A recorded session with replay data, shipped by the real shipper, played
/// back by the CLI: output in order on stdout, decisions on stderr, and the
/// recorded pauses scaled by --speed.
#[test]
fn replay_plays_a_session_back_with_its_timing() {
    use blastgate::records::{Event, EventKind, IoChunk, IoStream, Verdict};
    use std::time::{Duration as D, SystemTime};

    let _g = serial();
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    assert!(
        db.query("SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'io'")
            .is_empty(),
        "no io table before the shipper migrates"
    );
    let sid = uuid::Uuid::now_v7();
    let start = SystemTime::now() - D::from_secs(60);
    let mut events = Vec::new();
    let mut seq = 0;
    let mut push = |mut e: Event, at_ms: u64| {
        e.session_id = sid;
        e.seq = seq;
        seq += 1;
        e.ts = start + D::from_millis(at_ms);
        events.push(e);
    };
    let mut opened = Event::daemon(EventKind::SessionOpened, Verdict::Allow, "fixture");
    opened.target = Some("deploy-host".into());
    push(opened, 0);
    for (at, stream, data) in [
        (100, IoStream::Output, "$ "),
        (200, IoStream::Input, "ls\r"),
        (250, IoStream::Resize, "120x40"),
        (400, IoStream::Output, "ls\r\nREADME.md\r\n"),
        (1000, IoStream::Output, "$ exit\r\n"),
    ] {
        let chunk = IoChunk {
            stream,
            offset_us: at * 1000,
            data: data.into(),
        };
        // The wall-clock ts is deliberately off: replay times io by offset.
        push(Event::io(sid, 0, chunk), at + 5000);
    }
    let mut closed = Event::daemon(EventKind::SessionClosed, Verdict::Allow, "fixture");
    closed.duration_us = Some(1_100_000);
    push(closed, 1100);
    let n = events.len();
    ship_fixture(&db, &url, &events, n);
    assert_eq!(db.query("SELECT count() FROM {db}.io FINAL"), "5");
    let engine =
        db.query("SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'io'");
    assert!(
        engine.contains("toIntervalDay(7)"),
        "configured io TTL: {engine}"
    );

    let config = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config.path(), db.config()).expect("write config");
    let replay = |speed: &str| {
        let t = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blastgate"))
            .args([
                "sessions",
                "replay",
                &sid.to_string(),
                "--speed",
                speed,
                "-c",
            ])
            .arg(config.path())
            .output()
            .expect("blastgate sessions replay");
        assert!(
            out.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out, t.elapsed())
    };
    let (out, took) = replay("2");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "$ ls\r\nREADME.md\r\n$ exit\r\n",
        "terminal output in order, without input or resizes"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("0.000s] session_opened allow"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("1.100s] session_closed allow"),
        "{stderr}"
    );
    // 1.1 s recorded at speed 2: at least 0.55 s of pauses were played.
    assert!(took >= D::from_millis(550), "pauses were played: {took:?}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_blastgate"))
        .args(["sessions", "replay", &sid.to_string(), "--speed", "0", "-c"])
        .arg(config.path())
        .output()
        .expect("blastgate");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--speed must be a positive number"));
}

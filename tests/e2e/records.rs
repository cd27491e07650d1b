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
    let env = Env::new(&format!(
        "{}\n[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
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
}

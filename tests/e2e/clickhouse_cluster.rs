//! A fleet writing to a two-shard ClickHouse cluster (README "A ClickHouse
//! cluster"): two daemons, each attached to a cgroup subtree of its own
//! with its own pins, control socket, ports and spool, ship their agents'
//! sessions to `Distributed` tables over two servers. Through a shard
//! stopped and started again, a daemon crash that leaves its cursor behind
//! what ClickHouse has and a clean restart of the other, every session is
//! seen exactly once,
//! from either node, by SQL, by `blastgate sessions` and by the console's
//! queries, and both shards hold some.

mod harness;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use blastgate::records::clickhouse::shipper::{load_cursor, Cursor};
use harness::{clickhouse_cluster::*, *};
use serde_json::Value;

const DB: &str = "blastgate";

/// One CI runner: a cgroup subtree its daemon attaches to and its agents
/// run in, and that daemon.
struct Runner {
    name: &'static str,
    /// Dropped first: the daemon running now.
    daemon: Daemon,
    /// Daemons stopped or killed earlier: dropped after the live one, so
    /// their `uninstall` cannot detach it.
    previous: Vec<Daemon>,
    env: Env,
    cgroup: TestCgroup,
    dst: String,
    /// Every session (closed) and event id seen in the spool so far: the
    /// shipper deletes segments once they are shipped and closed.
    sessions: BTreeSet<String>,
    events: BTreeSet<String>,
}

impl Runner {
    /// Ships to the cluster through node `via`.
    fn start(name: &'static str, cluster: &Cluster, via: usize, server: &TestServer) -> Runner {
        let cgroup = TestCgroup::new(name);
        let dst = server.addr(0).to_string();
        let env = Env::with_bpf(
            &format!("cgroup_root = \"{}\"", cgroup.path.display()),
            &format!(
                "{}\n[[targets]]\nname = \"web\"\nprotocol = \"tcp\"\naddress = \"{dst}\"\n",
                clickhouse_section(&cluster.urls()[via], DB, &cluster.urls())
            ),
        );
        let daemon = Daemon::start(&env);
        Runner {
            name,
            daemon,
            previous: Vec::new(),
            env,
            cgroup,
            dst,
            sessions: BTreeSet::new(),
            events: BTreeSet::new(),
        }
    }

    /// `n` sessions: curl, as agent NAME, from inside this runner's subtree
    /// (where only this runner's hooks see it).
    fn sessions(&mut self, n: usize) {
        self.refresh();
        let before = self.sessions.len();
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {BIN} run --agent {} --config {} -- sh -c \
             'for i in $(seq {n}); do curl -sS -o /dev/null --max-time 10 http://{}/ || exit 1; done'",
            self.cgroup.path.display(),
            self.name,
            self.env.config.display(),
            self.dst
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("agent");
        assert!(out.status.success(), "{}: {}", self.name, text(&out));
        let after = wait_until(Duration::from_secs(20), || {
            self.refresh();
            let n2 = self.sessions.len();
            (n2 >= before + n).then_some(n2)
        });
        assert_eq!(
            after,
            Some(before + n),
            "{}: every curl is a session of this runner's daemon; log:\n{}",
            self.name,
            self.daemon.log_text()
        );
    }

    /// Adds what the spool holds now to the sessions (closed) and event
    /// ids (of `events` rows) this runner recorded.
    fn refresh(&mut self) {
        for e in self.env.events() {
            let id = |k: &str| e[k].as_str().map(str::to_string);
            if e["kind"] == "session_closed" {
                self.sessions.extend(id("session_id"));
            }
            if e.get("io").is_none() {
                self.events.extend(id("id"));
            }
        }
    }

    /// A crash after ClickHouse acknowledged rows but before the cursor
    /// said so (the window between the INSERT and the cursor's fsync):
    /// killed, its cursor moved back to the start of its segment, started
    /// again. The spool is then sent again in one batch, whose token no
    /// earlier batch had, so the shards keep the copies and only the
    /// ReplacingMergeTree's `FINAL` collapses them.
    fn crash_and_restart(&mut self) {
        self.refresh();
        self.daemon.kill9();
        let cursor = load_cursor(&self.env.spool);
        assert!(cursor.line > 0, "{} had shipped: {cursor:?}", self.name);
        let behind = Cursor {
            segment: cursor.segment,
            line: 0,
            offset: 0,
        };
        std::fs::write(
            self.env.spool.join("shipped.cursor"),
            serde_json::to_vec(&behind).expect("json"),
        )
        .expect("rewind the cursor");
        self.start_again();
    }

    /// A clean restart: SIGTERM, then a new daemon on the same spool.
    fn restart(&mut self) {
        self.daemon.stop();
        // Its last events, before the shipper deletes their segment.
        self.refresh();
        self.start_again();
    }

    fn start_again(&mut self) {
        let old = std::mem::replace(&mut self.daemon, Daemon::start(&self.env));
        self.previous.push(old);
    }
}

/// `SELECT` rows on node `i` as tab-separated fields.
fn rows(cluster: &Cluster, i: usize, sql: &str) -> Vec<Vec<String>> {
    cluster
        .query(i, &sql.replace("{db}", DB))
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Session id → rows `sessions FINAL` returns for it, read through node `i`.
fn sessions_seen(cluster: &Cluster, i: usize) -> Option<BTreeMap<String, u64>> {
    let out = cluster.try_query(
        i,
        &format!(
            "SELECT toString(session_id), count() FROM {DB}.sessions FINAL \
             WHERE end IS NOT NULL GROUP BY session_id"
        ),
    )?;
    Some(
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, n)| (id.to_string(), n.parse().unwrap_or(0)))
            .collect(),
    )
}

/// Waits until every closed session of every runner is in ClickHouse, as
/// read through each node.
fn wait_shipped(cluster: &Cluster, runners: &[&Runner], what: &str) {
    let want: BTreeSet<String> = runners.iter().flat_map(|r| r.sessions.clone()).collect();
    for i in 0..cluster.shards.len() {
        let seen = wait_until(Duration::from_secs(60), || {
            let seen = sessions_seen(cluster, i)?;
            want.iter().all(|id| seen.contains_key(id)).then_some(seen)
        });
        assert!(
            seen.is_some(),
            "{what}: node {} is missing sessions {:?}; logs:\n{}",
            i + 1,
            want.iter()
                .filter(|id| !sessions_seen(cluster, i)
                    .unwrap_or_default()
                    .contains_key(*id))
                .collect::<Vec<_>>(),
            runners
                .iter()
                .map(|r| r.daemon.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Physical rows of a local table, over every shard (merges are stopped,
/// so copies stay until `FINAL` collapses them at query time).
fn stored(cluster: &Cluster, table: &str) -> u64 {
    (0..cluster.shards.len())
        .map(|i| {
            cluster
                .query(i, &format!("SELECT count() FROM {DB}.{table}_local"))
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn two_daemons_ship_to_two_shards_and_every_session_is_seen_once() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(mut cluster) = Cluster::start(2) else {
        return;
    };
    let server = TestServer::start(&["127.0.0.1"]);
    let mut a = Runner::start("runner-a", &cluster, 0, &server);
    let mut b = Runner::start("runner-b", &cluster, 1, &server);

    // Each node gets the schema from the daemons: local tables behind
    // Distributed ones under the names queries use.
    for i in 0..2 {
        let engines = wait_until(Duration::from_secs(30), || {
            let r = rows(
                &cluster,
                i,
                "SELECT name, engine FROM system.tables WHERE database = '{db}' \
                 AND name IN ('events', 'sessions', 'io', 'events_local', 'sessions_local', \
                 'io_local') ORDER BY name",
            );
            (r.len() == 6).then_some(r)
        })
        .unwrap_or_else(|| panic!("no schema on node {}:\n{}", i + 1, a.daemon.log_text()));
        let engines: Vec<(&str, &str)> = engines
            .iter()
            .map(|r| (r[0].as_str(), r[1].as_str()))
            .collect();
        assert_eq!(
            engines,
            [
                ("events", "Distributed"),
                ("events_local", "ReplacingMergeTree"),
                ("io", "Distributed"),
                ("io_local", "ReplacingMergeTree"),
                ("sessions", "Distributed"),
                ("sessions_local", "ReplacingMergeTree"),
            ],
            "node {}",
            i + 1
        );
    }

    // Both runners at once.
    a.sessions(10);
    b.sessions(10);
    wait_shipped(&cluster, &[&a, &b], "first sessions");
    // Shard 2 down: both keep recording (runner-b's node is that shard,
    // runner-a's INSERTs cannot reach it); then it comes back.
    cluster.shards[1].stop();
    a.sessions(10);
    b.sessions(10);
    for r in [&a, &b] {
        wait_until(Duration::from_secs(30), || {
            r.daemon
                .log_text()
                .contains("shipping to clickhouse failed")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{} never failed to ship during the outage", r.name));
    }
    cluster.shards[1].restart();
    wait_shipped(&cluster, &[&a, &b], "after the outage");

    // Copies stay stored from here on (a restarted server would merge
    // again): only FINAL may collapse them.
    for i in 0..2 {
        for t in ["events", "sessions", "io"] {
            cluster.query(i, &format!("SYSTEM STOP MERGES {DB}.{t}_local"));
        }
    }

    // A daemon crash that resends what ClickHouse already has, and a clean
    // restart of the other; sessions before and after.
    a.sessions(5);
    wait_shipped(&cluster, &[&a, &b], "before the crash");
    let before = stored(&cluster, "sessions");
    a.crash_and_restart();
    b.restart();
    a.sessions(5);
    b.sessions(5);
    wait_shipped(&cluster, &[&a, &b], "after the restart");
    let resent = wait_until(Duration::from_secs(30), || {
        let n = stored(&cluster, "sessions");
        // 5 new sessions of each runner are 20 rows (opened, closed);
        // more means runner-a's spool went in again.
        (n > before + 20).then_some(n)
    });
    assert!(
        resent.is_some(),
        "the restarted daemon sent its segment again: {} rows stored, {before} before:\n{}",
        stored(&cluster, "sessions"),
        a.daemon.log_text()
    );

    // Exactly once, through either node: sessions and events.
    a.refresh();
    b.refresh();
    let closed: BTreeSet<String> = a.sessions.union(&b.sessions).cloned().collect();
    assert_eq!(
        closed.len(),
        (10 + 5 + 5 + 10) + (10 + 5 + 10),
        "spooled sessions"
    );
    let events: BTreeSet<String> = a.events.union(&b.events).cloned().collect();
    for i in 0..2 {
        let seen = sessions_seen(&cluster, i).expect("sessions");
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "node {}: sessions seen twice: {twice:?}",
            i + 1
        );
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            closed,
            "node {}: the sessions in ClickHouse are the spooled ones",
            i + 1
        );
        let ids = rows(
            &cluster,
            i,
            "SELECT toString(id), count() FROM {db}.events FINAL GROUP BY id",
        );
        let twice: Vec<_> = ids.iter().filter(|r| r[1] != "1").collect();
        assert!(
            twice.is_empty(),
            "node {}: events seen twice: {twice:?}",
            i + 1
        );
        let shipped: BTreeSet<String> = ids.iter().map(|r| r[0].clone()).collect();
        assert_eq!(
            (
                events.difference(&shipped).collect::<Vec<_>>(),
                shipped.difference(&events).collect::<Vec<_>>()
            ),
            (vec![], vec![]),
            "node {}: the events in ClickHouse are the spooled ones (missing, extra); spools:\n{:#?}",
            i + 1,
            [&a, &b].map(|r| r.env.events())
        );
    }
    // More rows are stored than there are sessions (versions, copies):
    // only FINAL shows each once.
    assert!(
        stored(&cluster, "sessions") > closed.len() as u64,
        "one row per session stored: this test would not notice a missing FINAL"
    );
    // Both shards hold sessions, and each session's rows one shard.
    for i in 0..2 {
        let n: u64 = cluster
            .query(
                i,
                &format!("SELECT uniqExact(session_id) FROM {DB}.sessions_local"),
            )
            .parse()
            .unwrap_or(0);
        assert!(n > 0, "shard {} holds no session", i + 1);
    }
    for t in ["sessions", "events"] {
        let split = cluster.query(
            0,
            &format!(
                "SELECT count() FROM (SELECT session_id FROM {DB}.{t} \
                 GROUP BY session_id HAVING uniqExact(_shard_num) > 1)"
            ),
        );
        assert_eq!(split, "0", "a session's {t} rows on two shards");
    }

    // What people read: `blastgate sessions` and the console's queries,
    // through each runner's node.
    for r in [&a, &b] {
        let out = r
            .env
            .blastgate(&["sessions", "list", "--json", "--limit", "1000"]);
        assert!(out.status.success(), "{}", text(&out));
        let listed: Vec<String> = json_lines(&out)
            .iter()
            .filter_map(|l: &Value| l["id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(listed.len(), closed.len(), "{}: listed once each", r.name);
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), closed);
        let id = closed.iter().next().expect("a session");
        let out = r.env.blastgate(&["sessions", "show", id, "--json"]);
        let kinds: Vec<Value> = json_lines(&out).iter().map(|l| l["kind"].clone()).collect();
        assert_eq!(
            kinds,
            ["session_opened", "session_closed"],
            "{}",
            text(&out)
        );
    }
    console_reads(&cluster, &closed);
    refusals(&cluster);
}

/// A cluster the nodes do not define, and a database holding a single
/// server's tables, are refused (the shipper keeps the events spooled
/// and says why).
fn refusals(cluster: &Cluster) {
    use blastgate::{config::ClickhouseConfig, records::clickhouse::schema};
    let nodes = cluster.urls();
    let on_cluster = |name: &str, database: &str| ClickhouseConfig {
        cluster: Some(name.to_string()),
        nodes: nodes.clone(),
        ..ClickhouseConfig::single(&nodes[0], database)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let e = schema::migrate(&on_cluster("elsewhere", "blastgate_other"))
            .await
            .expect_err("an unknown cluster");
        assert!(e.to_string().contains("no cluster \"elsewhere\""), "{e}");
        schema::migrate(&ClickhouseConfig::single(&nodes[1], "blastgate_single"))
            .await
            .expect("a single server's schema");
        let e = schema::migrate(&on_cluster(CLUSTER, "blastgate_single"))
            .await
            .expect_err("a single server's database");
        assert!(e.to_string().contains("a database of its own"), "{e}");
    });
}

/// The web console's reads (records::clickhouse::query) through node 2.
fn console_reads(cluster: &Cluster, closed: &BTreeSet<String>) {
    use blastgate::{
        config::ClickhouseConfig,
        records::clickhouse::{client, query},
    };
    let cfg = ClickhouseConfig::single(&cluster.urls()[1], DB);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = client(&cfg).expect("client").with_database(DB);
        let filter = query::SessionFilter {
            limit: 1000,
            ..Default::default()
        };
        let list = query::sessions(&c, &filter).await.expect("sessions");
        assert_eq!(
            list.len(),
            closed.len(),
            "the console lists each session once"
        );
        let id: uuid::Uuid = list[0].id.parse().expect("uuid");
        let events = query::session_events(&c, id, 100).await.expect("events");
        assert_eq!(events.len(), 2, "opened and closed, once each");
        let t = query::timeline(&c, id, None).await.expect("timeline");
        assert_eq!(t.rows.len(), 2, "the timeline has each event once");
    });
}

/// README "A ClickHouse cluster" shows the server config, the
/// `[clickhouse]` section and the `Distributed` table this test uses.
#[test]
fn readme_shows_the_tested_layout() {
    use blastgate::records::clickhouse::{layout, schema::MIGRATIONS};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let xml = remote_servers_xml(&[("ch1.internal", 9000), ("ch2.internal", 9000)]);
    assert!(readme.contains(&xml), "README lacks:\n{xml}");
    let nodes = [
        "http://ch1.internal:8123".to_string(),
        "http://ch2.internal:8123".to_string(),
    ];
    let toml = clickhouse_section(&nodes[0], DB, &nodes);
    assert!(readme.contains(&toml), "README lacks:\n{toml}");
    let events = MIGRATIONS[0].1[0];
    let placed = layout::statements(layout::Layout::Cluster(CLUSTER), events).expect("placed");
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let distributed = words(&placed[1].replace("{db}", &format!("`{DB}`")));
    assert!(
        words(&readme).contains(&distributed),
        "README lacks:\n{distributed}"
    );
}

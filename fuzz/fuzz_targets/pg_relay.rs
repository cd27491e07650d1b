//! The PostgreSQL relay (`protocols::postgres::relay`, with the gate, the
//! tripwire, masking and row-limit measuring behind it), driven whole:
//! the agent's messages and the server's answers in any interleaving, over
//! in-memory streams, decided by real policies.
//!
//! Input: `[flags, records…]`, records `[kind, len_lo, len_hi, bytes…]`:
//! an even kind writes its bytes to the relay as the agent, an odd one as
//! the server; `kind >> 1` is how many times the relay may run first.
//! Then both sides hang up. `flags & 1`: policies that allow nothing
//! (else the shipped ones in `policies/`); `flags & 2`: a production
//! target (masking rules, measured writes) rather than a plain one;
//! `flags & 4`: the login reported `standard_conforming_strings = off`;
//! `(flags >> 3) & 3`: its client encoding (UTF8, SJIS, LATIN1, GBK).
//!
//! Must hold: no panic; the relay ends once both sides have hung up; it
//! writes whole messages only, either way; and with policies that allow
//! nothing, no statement of the agent's reaches the server — only
//! blastgate's own refusals (`DO $blastgate…` raising 42501), and no
//! Execute or fast-path call that is not one of them.
#![no_main]

#[path = "common.rs"]
mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, OnceLock},
    time::{Duration, Instant},
};

use blastgate::{
    approvals::Broker,
    config::RecordsConfig,
    policy::Engine,
    protocols::{
        gateway::{Gateway, Services},
        postgres::{
            classify,
            frame::{Frame, Reader},
            relay_session,
            upstream::{Upstream, MAX_BACKEND_MESSAGE},
            PostgresTarget,
        },
        stream::BoxIo,
        Target,
    },
    records::spool,
    session::{Session, SessionTasks},
};
use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The relay's own limit on an agent's message, scaled to fuzzer inputs.
const MAX_MESSAGE: usize = 8192;
/// Nothing listens here: the relay's side connections (function and
/// catalog lookups) fail at once, as when the server cannot be asked.
const UPSTREAM: &str = "127.0.0.1:9";

struct World {
    shipped: Arc<Services>,
    nothing: Arc<Services>,
    cfg: PostgresTarget,
    spool: PathBuf,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let tmp = std::env::var_os("BLASTGATE_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("pg_relay-{}", std::process::id()));
        let spool = tmp.join("spool");
        let records: RecordsConfig = serde_json::from_value(json!({
            "spool_dir": spool,
            "segment_bytes": 4 << 20,
            "flush_interval_ms": 1000,
        }))
        .unwrap_or_else(|e| panic!("records config: {e}"));
        let recorder = spool::open(&records).unwrap_or_else(|e| panic!("spool: {e}"));
        // Policies that allow nothing: one forbid of everything.
        let shipped_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let nothing_dir = tmp.join("policies-nothing");
        std::fs::create_dir_all(&nothing_dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(
            shipped_dir.join("blastgate.cedarschema"),
            nothing_dir.join("blastgate.cedarschema"),
        )
        .unwrap_or_else(|e| panic!("copying the schema: {e}"));
        std::fs::write(
            nothing_dir.join("nothing.cedar"),
            "@id(\"nothing\")\nforbid (principal, action, resource);\n",
        )
        .unwrap_or_else(|e| panic!("writing the policy: {e}"));
        let context = |dir: &PathBuf| {
            let engine = Engine::load(dir)
                .unwrap_or_else(|e| panic!("policies in {}: {e:?}", dir.display()));
            Arc::new(Services {
                // Holds time out at once: nobody approves here.
                approvals: Broker::new(Duration::ZERO, recorder.clone(), None),
                recorder: recorder.clone(),
                connect_timeout: Duration::from_millis(200),
                policy: Arc::new(engine),
                tls: None,
                https: None,
                ssh_ca: None,
                ssh_hosts: Default::default(),
                resolver: None,
            })
        };
        let cfg: PostgresTarget = serde_json::from_value(json!({
            "user": "app",
            "max_message_bytes": MAX_MESSAGE,
        }))
        .unwrap_or_else(|e| panic!("postgres target: {e}"));
        World {
            shipped: context(&shipped_dir),
            nothing: context(&nothing_dir),
            cfg,
            spool,
        }
    })
}

fn gateway(services: &Arc<Services>, production: bool) -> Gateway {
    let (name, labels) = if production {
        ("orders-db", json!({"env": "production"}))
    } else {
        ("scratch-db", json!({}))
    };
    let attrs = serde_json::from_value(json!({
        "name": name, "protocol": "postgres", "labels": labels,
    }))
    .unwrap_or_else(|e| panic!("target attrs: {e}"));
    let target = Target {
        name: name.into(),
        protocol: blastgate::config::Protocol::Postgres,
        upstream: None,
        attrs,
        enforce: true,
        names: Vec::new(),
        host_names: Vec::new(),
        postgres: Some(world().cfg.clone()),
        ssh: None,
        http: None,
    };
    let mut session = Session::new(Instant::now());
    session.caller = serde_json::from_value(json!({
        "agent": "claude", "agent_id": 1, "pid": 4242, "tid": 4242, "uid": 1001,
        "gid": 1001, "comm": "psql", "exe": "/usr/bin/psql", "cgroup_id": 1,
    }))
    .ok();
    session.target = Some(name.into());
    Gateway {
        services: services.clone(),
        session: Arc::new(session),
        target: Arc::new(target),
        upstream: UPSTREAM
            .parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("{e}")),
        counters: Default::default(),
        tasks: SessionTasks::new(&Default::default()),
    }
}

/// A ParameterStatus, as the login reports it.
fn parameter(name: &str, value: &str) -> Frame {
    let mut bytes = BytesMut::new();
    bytes.put_u8(b'S');
    bytes.put_i32((4 + name.len() + 1 + value.len() + 1) as i32);
    for s in [name, value] {
        bytes.put_slice(s.as_bytes());
        bytes.put_u8(0);
    }
    Frame { tag: b'S', bytes }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn one(data: &[u8]) {
    let [flags, script @ ..] = data else {
        return;
    };
    let w = world();
    let nothing = flags & 1 != 0;
    let ctx = if nothing { &w.nothing } else { &w.shipped };
    let gw = gateway(ctx, flags & 2 != 0);
    let encoding = ["UTF8", "SJIS", "LATIN1", "GBK"][usize::from((flags >> 3) & 3)];
    let parameters = vec![
        parameter("client_encoding", encoding),
        parameter("server_encoding", "UTF8"),
        parameter(
            "standard_conforming_strings",
            if flags & 4 != 0 { "off" } else { "on" },
        ),
    ];
    let records = common::records(script);
    let (to_server, to_agent) = common::runtime().block_on(async {
        let (mut agent, agent_io) = tokio::io::duplex(1 << 20);
        let (mut server, server_io) = tokio::io::duplex(1 << 20);
        let (agent_read, agent_write) = tokio::io::split(Box::new(agent_io) as BoxIo);
        let (server_read, server_write) = tokio::io::split(Box::new(server_io) as BoxIo);
        let upstream = Upstream {
            reader: Reader::new(server_read, MAX_BACKEND_MESSAGE),
            writer: server_write,
            parameters,
            key: None,
        };
        let relay = relay_session(
            &gw,
            &w.cfg,
            Reader::new(agent_read, w.cfg.max_message_bytes),
            agent_write,
            upstream,
            &[],
        );
        let (mut agent_in, mut agent_out) = tokio::io::split(&mut agent);
        let (mut server_in, mut server_out) = tokio::io::split(&mut server);
        let script = async {
            for (kind, bytes) in &records {
                for _ in 0..(kind >> 1) {
                    tokio::task::yield_now().await;
                }
                let side = if kind & 1 == 0 {
                    &mut agent_out
                } else {
                    &mut server_out
                };
                if side.write_all(bytes).await.is_err() {
                    break;
                }
            }
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let _ = server_out.shutdown().await;
            let _ = agent_out.shutdown().await;
        };
        let mut to_server = Vec::new();
        let mut to_agent = Vec::new();
        let drain_server = server_in.read_to_end(&mut to_server);
        let drain_agent = agent_in.read_to_end(&mut to_agent);
        let relay = async {
            // A relay that outlives both sides holds a session slot
            // forever: a hang, whatever it waits for.
            tokio::time::timeout(Duration::from_secs(5), relay)
                .await
                .unwrap_or_else(|_| panic!("the relay did not end after both sides hung up"))
        };
        let (_, (), _, _) = tokio::join!(
            async {
                let r = relay.await;
                r
            },
            script,
            drain_server,
            drain_agent
        );
        (to_server, to_agent)
    });
    let upstream = messages(&to_server, "to the server");
    messages(&to_agent, "to the agent");
    if nothing {
        only_refusals(&upstream);
    }
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2000 == 1999 {
        prune(&w.spool);
    }
}

/// The stream cut into messages; a stream that does not end on a message
/// boundary is a relay fault.
fn messages<'a>(mut stream: &'a [u8], way: &str) -> Vec<(u8, &'a [u8])> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        assert!(
            stream.len() >= 5,
            "a partial message header {way}: {stream:?}"
        );
        let len = i32::from_be_bytes([stream[1], stream[2], stream[3], stream[4]]);
        assert!(len >= 4, "a message length of {len} {way}");
        let total = len as usize + 1;
        assert!(stream.len() >= total, "a partial message {way}");
        out.push((stream[0], &stream[5..total]));
        stream = &stream[total..];
    }
    out
}

/// With policies that allow nothing, the server only ever sees
/// blastgate's refusals: any other Query or Parse is one the server itself
/// rejects unread (bytes after its string, as PostgreSQL's
/// `pq_getmsgend` checks) or one with no statement in it.
fn only_refusals(upstream: &[(u8, &[u8])]) {
    let refusal = |sql: &[u8]| sql.starts_with(b"DO $blastgate");
    let runs_nothing =
        |sql: &[u8]| std::str::from_utf8(sql).is_ok_and(|t| classify::classify(t).is_empty());
    let mut refusals_parsed = 0usize;
    for (tag, body) in upstream {
        match tag {
            b'Q' => {
                let Some((sql, b"")) = cstr(body) else {
                    continue;
                };
                assert!(
                    refusal(sql) || runs_nothing(sql),
                    "a Query reached the server though nothing is allowed: {:?}",
                    String::from_utf8_lossy(body)
                );
            }
            b'P' => {
                let Some((_, rest)) = cstr(body) else {
                    continue;
                };
                let Some((sql, rest)) = cstr(rest) else {
                    continue;
                };
                let types = rest.get(..2).map(|n| i16::from_be_bytes([n[0], n[1]]));
                if types.map(|n| 2 + 4 * i64::from(n)) != Some(rest.len() as i64) {
                    continue;
                }
                assert!(
                    refusal(sql) || runs_nothing(sql),
                    "a Parse reached the server though nothing is allowed: {:?}",
                    String::from_utf8_lossy(body)
                );
                refusals_parsed += 1;
            }
            b'E' => {
                assert!(
                    refusals_parsed > 0,
                    "an Execute reached the server though nothing is allowed"
                );
                refusals_parsed -= 1;
            }
            b'F' => panic!("a fast-path call reached the server though nothing is allowed"),
            _ => {}
        }
    }
}

/// A NUL-terminated string and what follows it, as the server reads one.
fn cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

/// Keeps the spool from filling the disk over a long run: every segment
/// but the newest is removed (the records are not what is tested here).
fn prune(dir: &std::path::Path) {
    if let Ok(mut segments) = spool::segments(dir) {
        segments.pop();
        for (_, path) in segments {
            let _ = std::fs::remove_file(path);
        }
    }
}

//! The lifecycle under tokio's paused clock, with a protocol whose phases
//! the tests script (the real gateways are tested end to end in
//! `tests/e2e`): what is recorded, in which order, on every way out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::TcpListener, sync::broadcast};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    approvals::Broker,
    config::RecordsConfig,
    policy::Engine,
    protocols::{gateway::Services, Target},
    session::Fault,
};

const SCHEMA: &str = include_str!("../../../policies/blastgate.cedarschema");
const ALLOW: &str =
    "@id(\"connect-any-target\")\npermit (principal, action == Action::\"connect\", resource);\n";
const FORBID: &str =
    "@id(\"no-connect\")\nforbid (principal, action == Action::\"connect\", resource);\n";

struct World {
    _tmp: tempfile::TempDir,
    policies: PathBuf,
    services: Arc<Services>,
    hard_stop: CancellationToken,
    events: broadcast::Receiver<Event>,
}

fn write_policy(dir: &Path, text: &str) {
    std::fs::write(dir.join("connect.cedar"), text).unwrap();
}

fn world(policy: &str) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("blastgate.cedarschema"), SCHEMA).unwrap();
    write_policy(&policies, policy);
    let recorder = crate::records::spool::open(&RecordsConfig {
        spool_dir: tmp.path().join("spool"),
        ..RecordsConfig::default()
    })
    .unwrap();
    let events = recorder.subscribe();
    let services = Arc::new(Services {
        approvals: Broker::new(Duration::from_secs(60), recorder.clone(), None),
        recorder,
        policy: Arc::new(Engine::load(&policies).unwrap()),
        connect_timeout: Duration::from_secs(5),
        tls: None,
        https: None,
        ssh_ca: None,
        ssh_hosts: Default::default(),
    });
    World {
        _tmp: tmp,
        policies,
        services,
        hard_stop: CancellationToken::new(),
        events,
    }
}

fn gateway(w: &World) -> Gateway {
    let attrs = serde_json::from_value(serde_json::json!({
        "name": "scripted", "protocol": "tcp", "labels": {},
    }))
    .unwrap();
    let target = Target {
        name: "scripted".into(),
        protocol: Protocol::Tcp,
        upstream: None,
        attrs,
        enforce: true,
        names: Vec::new(),
        postgres: None,
        ssh: None,
        http: None,
    };
    let mut session = Session::new(Instant::now());
    session.target = Some("scripted".into());
    Gateway {
        services: w.services.clone(),
        session: Arc::new(session),
        target: Arc::new(target),
        upstream: "127.0.0.1:9".parse().unwrap(),
        counters: Default::default(),
        tasks: SessionTasks::new(&w.hard_stop),
    }
}

/// A connected socket for the agent's side (the scripted phases never
/// read it).
async fn agent_conn() -> TcpStream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
    // The client end stays open for the test's length.
    std::mem::forget(client.unwrap());
    accepted.unwrap().0
}

/// A protocol whose phases do what the test says.
#[derive(Default)]
struct Scripted {
    /// The connect phase fails, blaming the upstream.
    connect_fails: bool,
    /// How long the relay runs; `None`: until the session is cut.
    relay_for: Option<Duration>,
    /// A task the relay starts that outlives it (an upgrade's tunnel),
    /// carrying 100 bytes to the agent and recording itself when it ends.
    tunnel_for: Option<Duration>,
    /// What the agent was told when refused.
    refused: Mutex<Option<SessionError>>,
}

impl Phases for Scripted {
    type Agent = TcpStream;
    type Upstream = ();

    async fn handshake(&self, conn: TcpStream, _gw: &Gateway) -> Result<TcpStream, SessionError> {
        Ok(conn)
    }

    async fn connect(&self, _agent: &mut TcpStream, _gw: &Gateway) -> Result<(), SessionError> {
        if self.connect_fails {
            return Err(SessionError::upstream("connection refused"));
        }
        Ok(())
    }

    async fn relay(&self, _agent: TcpStream, _up: (), gw: &Gateway) -> Result<(), SessionError> {
        gw.counters.add_from_agent(10);
        if let Some(t) = self.tunnel_for {
            let tunnel = gw.clone();
            gw.tasks.spawn(async move {
                let mut event = tunnel.event(EventKind::Request, Verdict::Allow);
                event.text = Some("tunnel".into());
                tokio::select! {
                    _ = tokio::time::sleep(t) => tunnel.counters.add_to_agent(100),
                    _ = tunnel.tasks.cancelled() => {
                        event.verdict = Verdict::Error;
                        event.reason = Some("tunnel cut".into());
                    }
                }
                tunnel.record(event).await;
            });
        }
        match self.relay_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        Ok(())
    }

    async fn refuse(&self, _agent: TcpStream, why: &SessionError, gw: &Gateway) {
        // What the agent is told comes after the record that says so.
        let mut told = gw.event(EventKind::Command, Verdict::Deny);
        told.text = Some("refusal told".into());
        gw.record(told).await;
        *self.refused.lock().unwrap() = Some(why.clone());
    }
}

/// This session's events, in the order they reached the spool.
fn recorded(w: &mut World, gw: &Gateway) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = w.events.try_recv() {
        if e.session_id == gw.session.id {
            out.push(e);
        }
    }
    out
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.text.as_deref() {
            Some(t @ ("tunnel" | "refusal told")) => t.to_string(),
            _ => e.kind.name().to_string(),
        })
        .collect()
}

fn orig() -> SocketAddr {
    "127.0.0.1:5432".parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_closing_record_is_last_and_counts_tasks_that_outlived_the_relay() {
    let mut w = world(ALLOW);
    let gw = gateway(&w);
    let p = Scripted {
        relay_for: Some(Duration::from_secs(1)),
        tunnel_for: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    drive(&p, agent_conn().await, gw.clone(), orig()).await;
    let events = recorded(&mut w, &gw);
    assert_eq!(
        kinds(&events),
        ["session_opened", "tunnel", "session_closed"]
    );
    let closed = events.last().unwrap();
    assert_eq!(closed.verdict, Verdict::Allow);
    assert_eq!(closed.bytes_from_agent, Some(10));
    assert_eq!(closed.bytes_to_agent, Some(100), "the tunnel's bytes");
    assert!(gw.tasks.is_empty());
}

/// A session whose hour-long tunnel (and relay, for `relay_for` or until
/// cut) runs until something cuts it, started and left running for five
/// seconds.
async fn run_until_cut(
    w: &World,
    relay_for: Option<Duration>,
) -> (Gateway, tokio::task::JoinHandle<()>) {
    let gw = gateway(w);
    let p = Scripted {
        relay_for,
        tunnel_for: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let running = {
        let gw = gw.clone();
        tokio::spawn(async move { drive(&p, agent_conn().await, gw, orig()).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    (gw, running)
}

/// Also when the relay ended on its own first (an upgrade hands the
/// connection to its tunnel): the close says the tunnel was cut.
#[tokio::test(start_paused = true)]
async fn a_daemon_stop_cuts_every_task_and_the_session_still_closes_last() {
    for relay_for in [None, Some(Duration::from_secs(1))] {
        let mut w = world(ALLOW);
        let (gw, running) = run_until_cut(&w, relay_for).await;
        assert!(!running.is_finished());
        w.hard_stop.cancel();
        running.await.unwrap();
        let events = recorded(&mut w, &gw);
        assert_eq!(
            kinds(&events),
            ["session_opened", "tunnel", "session_closed"]
        );
        assert_eq!(events[1].reason.as_deref(), Some("tunnel cut"));
        let closed = &events[2];
        assert_eq!(closed.verdict, Verdict::Error, "relay for {relay_for:?}");
        let reason = closed.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("shutting down"), "{reason}");
        assert_eq!(closed.bytes_from_agent, Some(10));
    }
}

#[tokio::test(start_paused = true)]
async fn a_policy_reload_that_refuses_the_session_ends_it() {
    let mut w = world(ALLOW);
    let (gw, running) = run_until_cut(&w, None).await;
    // A reload that still allows the session changes nothing.
    w.services.policy.reload().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!running.is_finished());
    write_policy(&w.policies, FORBID);
    w.services.policy.reload().unwrap();
    running.await.unwrap();
    let events = recorded(&mut w, &gw);
    assert_eq!(
        kinds(&events),
        ["session_opened", "tunnel", "session_closed"]
    );
    let closed = &events[2];
    let reason = closed.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("policy: the policies were reloaded") && reason.contains("no-connect"),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_recorded_before_the_agent_is_told_in_its_protocol() {
    let mut w = world(FORBID);
    let gw = gateway(&w);
    let p = Scripted::default();
    drive(&p, agent_conn().await, gw.clone(), orig()).await;
    let events = recorded(&mut w, &gw);
    assert_eq!(kinds(&events), ["session_denied", "refusal told"]);
    assert_eq!(events[0].policy_id.as_deref(), Some("no-connect"));
    let why = p.refused.lock().unwrap().clone().unwrap();
    assert_eq!(why.fault, Fault::Policy);
    assert_eq!(why.sqlstate(), "42501");
}

#[tokio::test(start_paused = true)]
async fn a_failed_upstream_connect_is_refused_and_closed_as_the_upstreams_fault() {
    let mut w = world(ALLOW);
    let gw = gateway(&w);
    let p = Scripted {
        connect_fails: true,
        ..Default::default()
    };
    drive(&p, agent_conn().await, gw.clone(), orig()).await;
    let events = recorded(&mut w, &gw);
    assert_eq!(
        kinds(&events),
        ["session_opened", "refusal told", "session_closed"]
    );
    let why = p.refused.lock().unwrap().clone().unwrap();
    assert_eq!(why.fault, Fault::Upstream);
    assert_eq!(why.http_status(), 502);
    assert_eq!(
        events[2].reason.as_deref(),
        Some("upstream: connection refused")
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_error_is_recorded_as_an_error_per_action_as_at_connect() {
    // An action the schema does not know cannot be evaluated: refused, and
    // recorded as `error` (it used to be `deny` per action, `error` at
    // connect).
    let w = world(ALLOW);
    let gw = gateway(&w);
    let ruling = gw
        .authorize("no-such-action", &Value::Null, "", |_| {})
        .await;
    assert!(!ruling.allowed);
    assert_eq!(ruling.verdict, Verdict::Error, "{}", ruling.reason);
    let e = gw.ruled(EventKind::Command, "no-such-action", String::new(), &ruling);
    assert_eq!(e.verdict, Verdict::Error);
}

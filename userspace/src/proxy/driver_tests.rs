//! The lifecycle under tokio's paused clock, with a protocol whose phases
//! the tests script (the real gateways are tested end to end in
//! `tests/e2e`): what is recorded, in which order, on every way out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
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
    world_with(policy, Duration::from_secs(5), false)
}

/// With an SSH CA (for the real SSH gateway) and the connect timeout given.
fn world_with(policy: &str, connect_timeout: Duration, ssh: bool) -> World {
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
        connect_timeout,
        tls: None,
        https: None,
        ssh_ca: ssh.then(|| {
            Arc::new(crate::tls::ssh_ca::SshCa::load_or_create(&tmp.path().join("ssh-ca")).unwrap())
        }),
        ssh_hosts: Default::default(),
        resolver: None,
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
    gateway_enforcing(w, true)
}

/// `enforce: false` is a shadow-mode target: decisions recorded, never
/// enforced.
fn gateway_enforcing(w: &World, enforce: bool) -> Gateway {
    gateway_with(w, |t| t.enforce = enforce)
}

/// The scripted target as `configure` changes it.
fn gateway_with(w: &World, configure: impl FnOnce(&mut Target)) -> Gateway {
    let attrs = serde_json::from_value(serde_json::json!({
        "name": "scripted", "protocol": "tcp", "labels": {},
    }))
    .unwrap();
    let mut target = Target {
        name: "scripted".into(),
        protocol: Protocol::Tcp,
        upstream: None,
        attrs,
        enforce: true,
        names: Vec::new(),
        host_names: Vec::new(),
        postgres: None,
        ssh: None,
        http: None,
    };
    configure(&mut target);
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
    /// The agent never finishes its opening (slowloris).
    handshake_stalls: bool,
    /// The connect phase fails, blaming the upstream.
    connect_fails: bool,
    /// How long the relay runs; `None`: until the session is cut.
    relay_for: Option<Duration>,
    /// A task the relay starts that outlives it (an upgrade's tunnel),
    /// carrying 100 bytes to the agent and recording itself when it ends.
    tunnel_for: Option<Duration>,
    /// A task that ignores every cut (a bug, or an agent that stopped
    /// reading).
    stuck_task: bool,
    /// What the agent was told when refused.
    refused: Mutex<Option<SessionError>>,
}

impl Phases for Scripted {
    type Agent = TcpStream;
    type Upstream = ();

    async fn handshake(&self, conn: TcpStream, _gw: &Gateway) -> Result<TcpStream, SessionError> {
        if self.handshake_stalls {
            std::future::pending::<()>().await;
        }
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
        if self.stuck_task {
            gw.tasks.spawn(std::future::pending());
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
    // Events reach the live feed once written, which the writer thread
    // does within a tick: what was recorded so far is written now.
    w.services.recorder.write_queued();
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
    run_until_cut_on(gateway(w), relay_for).await
}

async fn run_until_cut_on(
    gw: Gateway,
    relay_for: Option<Duration>,
) -> (Gateway, tokio::task::JoinHandle<()>) {
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

/// Connect held for a human: a permit and a forbid that asks for approval.
const HOLD: &str = "@id(\"connect-any-target\")\npermit (principal, action == Action::\"connect\", resource);\n\
@id(\"connect-needs-approval\")\n@approval(\"platform\")\nforbid (principal, action == Action::\"connect\", resource);\n";

/// Attack: a target in shadow mode whose connect policy holds for a human.
/// The session opens (shadow: nothing is enforced); then any policy reload,
/// even one that changes nothing, re-decides the connect as `hold`, finds no
/// approver on a session nobody was asked about, and cuts it: shadow mode
/// enforcing on reload.
#[tokio::test(start_paused = true)]
async fn a_reload_never_cuts_a_session_in_shadow_mode() {
    let mut w = world(HOLD);
    let (gw, running) = run_until_cut_on(gateway_enforcing(&w, false), None).await;
    let opened = recorded(&mut w, &gw);
    assert_eq!(kinds(&opened), ["session_opened"]);
    assert!(opened[0].shadow, "{:?}", opened[0].reason);
    // The same policies again, then policies that forbid connect outright.
    w.services.policy.reload().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cut_by_same = running.is_finished();
    write_policy(&w.policies, FORBID);
    w.services.policy.reload().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cut_by_forbid = running.is_finished();
    w.hard_stop.cancel();
    running.await.unwrap();
    let events = recorded(&mut w, &gw);
    assert!(
        !cut_by_same && !cut_by_forbid,
        "a shadow-mode session was cut by a reload: {:?}",
        events.last().and_then(|e| e.reason.clone())
    );
}

/// Attack: the connect is held for a human; while it waits, an admin
/// reloads policies that forbid connect outright; the human, looking at
/// the old request, approves. The reload happened before the session
/// started watching for reloads, so the session opens under policies that
/// forbid it and runs until some later reload.
#[tokio::test(start_paused = true)]
async fn a_reload_while_the_connect_is_held_is_not_missed() {
    let mut w = world(HOLD);
    let gw = gateway(&w);
    let p = Scripted::default();
    let running = {
        let gw = gw.clone();
        tokio::spawn(async move { drive(&p, agent_conn().await, gw, orig()).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = w.services.approvals.list();
    assert_eq!(held.len(), 1, "the connect is held");
    write_policy(&w.policies, FORBID);
    w.services.policy.reload().unwrap();
    w.services
        .approvals
        .decide(held[0].id, true, "alice".into(), None)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still_running = !running.is_finished();
    w.hard_stop.cancel();
    running.await.unwrap();
    let events = recorded(&mut w, &gw);
    assert!(
        !still_running,
        "the session runs under policies that forbid it: {:?}",
        kinds(&events)
    );
    let last = events.last().unwrap();
    let reason = last.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("no-connect"), "{reason}");
}

/// The real SSH gateway on a target whose upstream is never reached (no
/// channel is opened in these tests).
fn ssh_gateway(w: &World) -> Gateway {
    gateway_with(w, |t| {
        t.protocol = Protocol::Ssh;
        t.names = vec!["scripted.test".into()];
        t.ssh = Some(crate::protocols::ssh::SshTarget {
            user: "nobody".into(),
            key_file: "/nonexistent".into(),
            cert_file: None,
            known_hosts: None,
            host_key: Some("ssh-ed25519 AAAA".into()),
        });
    })
}

/// The agent's end and the proxy's end of one connection.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Whether the proxy closes the agent's connection within `limit`
/// (whatever it sent before).
async fn closed_within(agent: &mut TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(limit, async {
        while let Ok(n) = agent.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// Attack: a refused SSH agent sends its version line just before the
/// connect timeout. The refusal's bound drops the russh session it
/// started, but dropping a russh `RunningSession` does not stop its task:
/// the session goes on serving the agent (up to russh's hour of
/// inactivity, for ever with traffic) after the driver is done, outside
/// `max_connections` and untracked by daemon shutdown.
#[tokio::test]
async fn a_refused_ssh_agent_is_not_served_past_the_connect_timeout() {
    use tokio::io::AsyncWriteExt;
    let w = world_with(FORBID, Duration::from_millis(1000), true);
    let gw = ssh_gateway(&w);
    let (mut agent, conn) = pair().await;
    let driving =
        tokio::spawn(async move { drive(&crate::protocols::ssh::Ssh, conn, gw, orig()).await });
    tokio::time::sleep(Duration::from_millis(900)).await;
    agent.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), driving)
        .await
        .expect("the refusal is bounded by the connect timeout")
        .unwrap();
    assert!(
        closed_within(&mut agent, Duration::from_secs(3)).await,
        "the refused agent's SSH session still runs after its refusal ended"
    );
}

/// Attack: an agent allowed to connect starts the SSH handshake and
/// stalls it (or, once logged in, stops reading: a SIGSTOPped `ssh`).
/// At daemon shutdown the session is cut; the SSH task asks russh to
/// disconnect, which russh does not do during a key exchange (and after a
/// disconnect, it waits for the agent to close its side, up to the hour
/// of inactivity), and the driver waits for that task before
/// `session_closed`: the daemon's shutdown waits with it, far past the
/// grace period.
#[tokio::test]
async fn a_stalled_ssh_agent_does_not_hold_up_a_daemon_stop() {
    use tokio::io::AsyncWriteExt;
    let w = world_with(ALLOW, Duration::from_secs(5), true);
    let gw = ssh_gateway(&w);
    let (mut agent, conn) = pair().await;
    let driving = {
        let gw = gw.clone();
        tokio::spawn(async move { drive(&crate::protocols::ssh::Ssh, conn, gw, orig()).await })
    };
    agent.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!driving.is_finished());
    w.hard_stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), driving).await;
    assert!(
        stopped.is_ok(),
        "the session outlived the daemon's hard stop by 10 s and more"
    );
    assert!(closed_within(&mut agent, Duration::from_secs(1)).await);
}

/// Every action allowed: the HTTP tests' policies.
const ALLOW_ALL: &str = "@id(\"allow-all\")\npermit (principal, action, resource);\n";

/// A response body that sends `first`, then never ends (a watch, a log
/// stream, a slow download).
struct Endless(Option<Bytes>);

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// An HTTP/1.1 upstream answering every request with an [`Endless`] body.
async fn endless_upstream(first: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let service = hyper::service::service_fn(move |_req| async move {
                let body = Endless(Some(Bytes::from_static(first)));
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(c), service),
            );
        }
    });
    addr
}

/// The real HTTP gateway, its target `api.test` answered by an
/// [`endless_upstream`].
async fn http_gateway(w: &World) -> Gateway {
    let upstream = endless_upstream(b"first bytes").await;
    let gw = gateway_with(w, |t| {
        t.protocol = Protocol::Http;
        t.names = vec!["api.test".into()];
        t.http = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    });
    Gateway { upstream, ..gw }
}

/// The HTTP gateway's session on `conn`, running.
fn drive_http(gw: &Gateway, conn: TcpStream) -> tokio::task::JoinHandle<()> {
    let gw = gw.clone();
    tokio::spawn(async move {
        let http = crate::protocols::http::Http { tls: false };
        drive(&http, conn, gw, orig()).await
    })
}

/// An HTTP/2 agent on an allowed HTTP target with one request in flight
/// whose response never ends, its first bytes received.
struct InFlight {
    w: World,
    gw: Gateway,
    driving: tokio::task::JoinHandle<()>,
    /// The agent's socket, for hanging up under its HTTP/2 client.
    socket: std::net::TcpStream,
    received: usize,
}

/// An HTTP/2 agent's session on the HTTP gateway, running; with the
/// agent's socket, for hanging up under its client.
async fn http2_session(
    gw: &Gateway,
) -> (
    tokio::task::JoinHandle<()>,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    std::net::TcpStream,
) {
    let (agent, conn) = pair().await;
    let socket = {
        use std::os::fd::AsFd;
        std::net::TcpStream::from(agent.as_fd().try_clone_to_owned().unwrap())
    };
    let driving = drive_http(gw, conn);
    let (sender, client) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(agent),
    )
    .await
    .unwrap();
    tokio::spawn(client);
    (driving, sender, socket)
}

async fn http2_request_in_flight() -> InFlight {
    use http_body_util::BodyExt;
    let w = world(ALLOW_ALL);
    let gw = http_gateway(&w).await;
    let (driving, mut sender, socket) = http2_session(&gw).await;
    let req = http::Request::get("http://api.test/watch")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first bytes");
    // The stream stays open until the test ends it.
    std::mem::forget(body);
    std::mem::forget(sender);
    InFlight {
        w,
        gw,
        driving,
        socket,
        received: first.len(),
    }
}

/// Ends an [`InFlight`] session's test: it must have closed, with the
/// request recorded before `session_closed` and its bytes counted there.
async fn assert_closed_after_its_request(mut f: InFlight) {
    tokio::time::timeout(Duration::from_secs(10), f.driving)
        .await
        .expect("the session ends")
        .unwrap();
    // Whatever the session's tasks still had to write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = recorded(&mut f.w, &f.gw);
    let order: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    let closed = events
        .iter()
        .position(|e| e.kind == EventKind::SessionClosed)
        .expect("session_closed");
    let request = events
        .iter()
        .position(|e| e.kind == EventKind::Request)
        .expect("the request is recorded");
    assert!(
        request < closed,
        "the request's record comes after session_closed: {order:?}"
    );
    assert_eq!(
        events[closed].bytes_to_agent,
        Some(f.received as u64),
        "session_closed counts the bytes the agent received"
    );
}

/// Attack: an agent speaking HTTP/2 (ALPN h2 on HTTPS, prior knowledge on
/// HTTP) has a request in flight (a streaming response) when its session is
/// cut by a reload. hyper serves each HTTP/2 stream in a task of its own,
/// spawned outside the session's tasks: the driver does not wait for it,
/// writes `session_closed` first, and the request's record (and its bytes
/// in the session's figures) comes after the session's last event.
#[tokio::test]
async fn an_http2_request_cut_with_its_session_is_recorded_before_it_closes() {
    let f = http2_request_in_flight().await;
    write_policy(&f.w.policies, FORBID);
    f.w.services.policy.reload().unwrap();
    assert_closed_after_its_request(f).await;
}

/// The look-alike without a cut: an HTTP/2 agent that hangs up with a
/// stream in flight ends its session as before, the request recorded first.
#[tokio::test]
async fn an_http2_agent_hanging_up_mid_stream_closes_its_session_after_the_request() {
    let f = http2_request_in_flight().await;
    f.socket.shutdown(std::net::Shutdown::Both).unwrap();
    assert_closed_after_its_request(f).await;
}

/// An HTTP/1.1 agent's session on the HTTP gateway, running.
async fn http1_session(
    gw: &Gateway,
) -> (
    tokio::task::JoinHandle<()>,
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
) {
    let (agent, conn) = pair().await;
    let driving = drive_http(gw, conn);
    let (sender, client) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(agent))
            .await
            .unwrap();
    tokio::spawn(client);
    (driving, sender)
}

/// GET held for a human; everything else allowed.
const HOLD_GET: &str = "@id(\"allow-all\")\npermit (principal, action, resource);\n\
@id(\"get-needs-approval\")\n@approval(\"platform\")\nforbid (principal, action == Action::\"http:GET\", resource);\n";

/// Attack (on the records): a request is held for a human when its
/// session is cut (a reload that forbids connect; a daemon stop alike).
/// The driver drops the relay at once: the hold, withdrawn, never gets
/// to write the request's record, and the approval it opened is never
/// recorded as decided either. The operator's records show a request
/// waiting for approval for ever, and no request.
#[tokio::test]
async fn a_request_held_when_its_session_is_cut_is_still_recorded() {
    let w = world(HOLD_GET);
    let gw = http_gateway(&w).await;
    let (driving, mut sender) = http1_session(&gw).await;
    let asking = tokio::spawn(async move { sender.send_request(held_get()).await.map(|_| ()) });
    assert_held_request_recorded_at_cut(w, gw, driving, asking).await;
}

/// The same over HTTP/2, where each request runs in a stream task.
#[tokio::test]
async fn an_http2_request_held_when_its_session_is_cut_is_still_recorded() {
    let w = world(HOLD_GET);
    let gw = http_gateway(&w).await;
    let (driving, mut sender, _socket) = http2_session(&gw).await;
    let mut req = held_get();
    *req.uri_mut() = "http://api.test/held".parse().unwrap();
    let asking = tokio::spawn(async move { sender.send_request(req).await.map(|_| ()) });
    assert_held_request_recorded_at_cut(w, gw, driving, asking).await;
}

fn held_get() -> http::Request<http_body_util::Empty<Bytes>> {
    http::Request::get("/held")
        .header("host", "api.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap()
}

/// Waits for the agent's request to be held, cuts the session with a
/// reload, and checks the request and its approval were recorded as ended
/// before `session_closed`.
async fn assert_held_request_recorded_at_cut(
    mut w: World,
    gw: Gateway,
    driving: tokio::task::JoinHandle<()>,
    asking: tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let held = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if !w.services.approvals.list().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "the GET is held");
    write_policy(&w.policies, FORBID);
    w.services.policy.reload().unwrap();
    tokio::time::timeout(Duration::from_secs(10), driving)
        .await
        .expect("the reload cuts the session")
        .unwrap();
    asking.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = recorded(&mut w, &gw);
    let order: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    let closed = events
        .iter()
        .position(|e| e.kind == EventKind::SessionClosed)
        .expect("session_closed");
    let request = events.iter().position(|e| e.kind == EventKind::Request);
    assert!(
        request.is_some_and(|r| r < closed),
        "the held request's record, before session_closed: {order:?}"
    );
    let decided = events
        .iter()
        .position(|e| e.kind == EventKind::ApprovalDecided);
    assert!(
        decided.is_some_and(|d| d < closed),
        "the approval's ending, before session_closed: {order:?}"
    );
}

/// A connect held for a human when the daemon stops: refused as an error,
/// the approval recorded as withdrawn before the refusal.
#[tokio::test(start_paused = true)]
async fn a_connect_held_at_shutdown_is_refused_and_its_approval_ends_first() {
    let mut w = world(HOLD);
    let gw = gateway(&w);
    let p = Arc::new(Scripted::default());
    let running = {
        let (gw, p) = (gw.clone(), p.clone());
        tokio::spawn(async move { drive(&*p, agent_conn().await, gw, orig()).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.services.approvals.list().len(), 1, "the connect is held");
    w.hard_stop.cancel();
    running.await.unwrap();
    let events = recorded(&mut w, &gw);
    assert_eq!(
        kinds(&events),
        [
            "approval_requested",
            "approval_decided",
            "session_denied",
            "refusal told"
        ]
    );
    let denied = &events[2];
    assert_eq!(denied.verdict, Verdict::Error);
    let reason = denied.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("shutting down"), "{reason}");
    // Told as a daemon going away (come back), not as a policy refusal.
    let told = p.refused.lock().unwrap().clone().unwrap();
    assert!(told.shutdown, "{told}");
    assert_eq!(
        (told.sqlstate(), told.http_status(), told.exit_status()),
        ("57P01", 503, 255)
    );
}

/// Attack: an agent with no allowed target opens many connections to a
/// refused one and never finishes its opening (slowloris). Each refusal
/// waits the connect timeout for that opening, holding one of the
/// daemon's `max_connections` (a refused connection used to be closed at
/// once): a few thousand such connections, renewed every few seconds, and
/// no agent's connection is accepted any more.
#[tokio::test(start_paused = true)]
async fn stalled_refusals_cannot_hold_the_daemons_connections() {
    let w = world(FORBID);
    let mut running = Vec::new();
    for _ in 0..300 {
        let gw = gateway(&w);
        let p = Scripted {
            handshake_stalls: true,
            ..Default::default()
        };
        running.push(tokio::spawn(async move {
            drive(&p, agent_conn().await, gw, orig()).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = running.iter().filter(|r| !r.is_finished()).count();
    for r in running {
        r.await.unwrap();
    }
    assert!(
        waiting <= phases::MAX_REFUSING,
        "{waiting} refusals wait for their agents' openings"
    );
}

/// Attack on the wind-down a cut session gets to record its last work: a
/// request held when a reload forbids the session is refused; the agent
/// sends its next request on the same connection at once. The new
/// policies forbid the session but still permit the request: it must not
/// be forwarded by a session already cut.
#[tokio::test]
async fn a_cut_session_forwards_nothing_more() {
    let w = world(HOLD_GET);
    let gw = http_gateway(&w).await;
    let (driving, mut sender) = http1_session(&gw).await;
    let request = |method: &str| {
        http::Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "api.test")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let held = sender.send_request(request("GET"));
    let cut = async {
        while w.services.approvals.list().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        write_policy(
            &w.policies,
            "@id(\"allow-all\")\npermit (principal, action, resource);\n\
             @id(\"no-connect\")\nforbid (principal, action == Action::\"connect\", resource);\n",
        );
        w.services.policy.reload().unwrap();
    };
    let (held, ()) = tokio::join!(held, cut);
    assert_eq!(held.unwrap().status(), 403, "the held GET is refused");
    let next = sender.send_request(request("POST")).await;
    driving.await.unwrap();
    assert!(
        next.as_ref().map_or(true, |r| r.status() != 200),
        "a request was forwarded after the session was cut: {:?}",
        next.map(|r| r.status())
    );
}

/// An agent's SSH client that trusts any host key.
struct TrustingClient;

impl russh::client::Handler for TrustingClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Attack (on shutdown): an agent runs a command on an SSH target whose
/// server accepts TCP but never speaks (hung, overloaded, a tarpit).
/// Before deciding, the channel asks the host which program the command
/// runs, over a new upstream login that waits for the server's greeting
/// with no bound; that part of the channel task does not watch for the
/// session being cut, and the driver waits for the task: neither a daemon
/// stop nor a reload ends the session.
#[tokio::test]
async fn an_ssh_channel_waiting_on_a_silent_upstream_does_not_hold_up_a_stop() {
    let w = world_with(ALLOW_ALL, Duration::from_secs(5), true);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("id_ed25519");
    let key = russh::keys::PrivateKey::random(
        &mut russh::keys::key::safe_rng(),
        russh::keys::Algorithm::Ed25519,
    )
    .unwrap();
    std::fs::write(
        &key_file,
        key.to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let gw = ssh_gateway(&w);
    let mut ssh = gw.target.ssh.clone().unwrap();
    ssh.key_file = key_file;
    let gw = Gateway {
        upstream: silent.local_addr().unwrap(),
        ..gateway_with(&w, |t| {
            t.protocol = Protocol::Ssh;
            t.names = vec!["scripted.test".into()];
            t.ssh = Some(ssh);
        })
    };
    let (agent, conn) = pair().await;
    let driving = {
        let gw = gw.clone();
        tokio::spawn(async move { drive(&crate::protocols::ssh::Ssh, conn, gw, orig()).await })
    };
    let mut client = russh::client::connect_stream(Default::default(), agent, TrustingClient)
        .await
        .unwrap();
    let auth = client.authenticate_none("agent").await.unwrap();
    assert!(auth.success());
    let channel = client.channel_open_session().await.unwrap();
    channel.exec(true, "ls").await.unwrap();
    // The upstream's TCP accept, then nothing.
    let (_held, _) = tokio::time::timeout(Duration::from_secs(5), silent.accept())
        .await
        .expect("blastgate logs in upstream")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.hard_stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), driving).await;
    assert!(
        stopped.is_ok(),
        "the session outlived the daemon's hard stop by 10 s and more"
    );
}

/// Shutdown with a refusal under way (the agent never finishes its
/// opening): the refusal ends with the daemon's hard stop instead of
/// running out the connect timeout, which an operator may set high.
#[tokio::test(start_paused = true)]
async fn a_refusal_under_way_ends_at_the_hard_stop() {
    let w = world(FORBID);
    let gw = gateway(&w);
    let p = Scripted {
        handshake_stalls: true,
        ..Default::default()
    };
    let running = tokio::spawn(async move { drive(&p, agent_conn().await, gw, orig()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!running.is_finished());
    let stopping = tokio::time::Instant::now();
    w.hard_stop.cancel();
    running.await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "the refusal ran {:?} past the hard stop",
        stopping.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_that_ignores_the_cut_does_not_hold_the_session_open() {
    let mut w = world(ALLOW);
    let gw = gateway(&w);
    let p = Scripted {
        stuck_task: true,
        ..Default::default()
    };
    let running = {
        let gw = gw.clone();
        tokio::spawn(async move { drive(&p, agent_conn().await, gw, orig()).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.hard_stop.cancel();
    running.await.unwrap();
    let events = recorded(&mut w, &gw);
    assert_eq!(kinds(&events), ["session_opened", "session_closed"]);
    let reason = events[1].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("shutting down") && reason.contains("1 task(s) did not end"),
        "{reason}"
    );
}

//! One accepted connection, from identification to its closing record.
//!
//! The driver owns the order of things: identify the caller from the kernel
//! record, route the original destination to a target, deny or hand the
//! connection to the target's protocol handler, and — on every way out —
//! write the record.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use tokio::net::TcpStream;
use tracing::Instrument;
use uuid::Uuid;

use super::ProxyContext;
use crate::{
    approvals::ApprovalRequest,
    config::Protocol,
    identity::Caller,
    intercept::{is_proxy_addr, maps::sock_addr},
    policy::{AgentAttrs, Verdict as PolicyVerdict},
    protocols::{gateway::Gateway, http, postgres, relay::Counters, ssh, tcp},
    records::{Event, EventKind, IoChunk, Verdict},
};

/// Where a session failed, for the record and the logs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("upstream: {0}")]
    Upstream(String),
    #[error("relay: {0}")]
    Relay(String),
    #[error("cancelled: {0}")]
    Cancelled(&'static str),
}

/// The identity and addressing of one session, stamped on its events.
pub struct Session {
    pub id: Uuid,
    seq: AtomicU32,
    /// Values masked in responses to the agent, for the closing record.
    pub masked: std::sync::atomic::AtomicU64,
    pub caller: Option<Caller>,
    pub orig_dst: Option<SocketAddr>,
    pub target: Option<String>,
    protocol: Option<&'static str>,
    /// Replay data is timed from here (see [`Session::io`]).
    started: Instant,
}

impl Session {
    /// A session just accepted: nobody identified yet, nothing recorded.
    pub fn new(started: Instant) -> Session {
        Session {
            id: Uuid::now_v7(),
            seq: AtomicU32::new(0),
            masked: Default::default(),
            caller: None,
            orig_dst: None,
            target: None,
            protocol: None,
            started,
        }
    }

    /// Stamps a copy of an earlier event of this session as a new one
    /// (its own id, seq and time): cheaper than building it again.
    pub fn restamp(&self, template: &Event) -> Event {
        let mut e = template.clone();
        e.id = Uuid::now_v7();
        e.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        e.ts = SystemTime::now();
        e
    }

    /// Microseconds since the session started: the clock replay data
    /// runs on, immune to wall-clock steps.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A chunk of replay data of this session.
    pub fn io(&self, chunk: IoChunk) -> Event {
        let mut e = Event::io(self.id, self.seq.fetch_add(1, Ordering::Relaxed), chunk);
        e.target = self.target.clone();
        e.protocol = self.protocol.map(str::to_string);
        e
    }

    pub fn event(&self, kind: EventKind, verdict: Verdict, reason: Option<String>) -> Event {
        let mut e = Event::daemon(kind, verdict, String::new());
        e.session_id = self.id;
        e.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        e.reason = reason;
        e.caller = self.caller.clone();
        e.target = self.target.clone();
        e.protocol = self.protocol.map(str::to_string);
        e.orig_dst = self.orig_dst;
        e
    }
}

pub async fn handle(conn: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    let started = Instant::now();
    let mut session = Session::new(started);

    let found = ctx
        .maps
        .as_ref()
        .zip(ctx.agents.as_ref())
        .and_then(|(maps, agents)| Some((maps, agents, maps.take_conn(peer)?)));
    let Some((maps, agents, rec)) = found else {
        // Not redirected by our hooks: something dialled the proxy port
        // directly. Nothing to attribute, nothing to serve.
        let reason = format!(
            "no kernel record for the connection from {peer}: only redirected agent connections are served"
        );
        tracing::warn!(%peer, "{reason}");
        deny(
            &ctx,
            conn,
            session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason)),
        )
        .await;
        return;
    };
    let caller = Caller::from_kernel(&rec, agents.name_of(rec.agent_id), &ctx.processes, |pid| {
        maps.label_of(pid).is_some()
    });
    let orig = sock_addr(&rec.orig);
    let span = tracing::info_span!(
        "session",
        id = %session.id,
        agent = %caller.agent,
        pid = caller.pid,
        comm = %caller.comm,
        dst = %orig,
    );
    session.caller = Some(caller);
    session.orig_dst = Some(orig);
    drive(conn, session, orig, started, ctx)
        .instrument(span)
        .await
}

async fn drive(
    conn: TcpStream,
    mut session: Session,
    orig: SocketAddr,
    started: Instant,
    ctx: Arc<ProxyContext>,
) {
    if is_proxy_addr(&ctx.listen, orig) {
        let reason = "destination is the blastgate proxy itself".to_string();
        deny(
            &ctx,
            conn,
            session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason)),
        )
        .await;
        return;
    }
    let Some(target) = ctx.routes.lookup(orig) else {
        let reason = format!("no target is configured for {orig}: denied by default");
        tracing::info!("{reason}");
        deny(
            &ctx,
            conn,
            session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason)),
        )
        .await;
        return;
    };
    session.target = Some(target.name.clone());
    session.protocol = Some(target.protocol.as_str());
    let mut opened = session.event(EventKind::SessionOpened, Verdict::Allow, None);
    let decision = crate::protocols::gateway::decide(
        &ctx.policy,
        session.caller.as_ref(),
        &target.attrs,
        "connect",
        &serde_json::Value::Null,
    );
    opened.action = Some("connect".into());
    opened.policy_id = decision.policy_id.clone();
    opened.reason = Some(decision.reason.clone());
    if decision.verdict == PolicyVerdict::Hold && target.enforce {
        let request = ApprovalRequest {
            id: Uuid::now_v7(),
            created: SystemTime::now(),
            session_id: session.id,
            agent: session
                .caller
                .as_ref()
                .map(|c| c.agent.clone())
                .unwrap_or_default(),
            pid: session.caller.as_ref().map_or(0, |c| c.pid),
            target: target.name.clone(),
            action: "connect".into(),
            text: format!("connect to {orig}"),
            policy_id: decision.policy_id.clone(),
            group: decision.approval.clone().unwrap_or_default(),
            reason: decision.reason.clone(),
        };
        // The agent's connect() has completed; it waits for data while
        // a human decides. Cut short by shutdown like any session.
        let outcome = tokio::select! {
            o = ctx.approvals.hold(request) => o,
            _ = ctx.hard_stop.cancelled() => crate::approvals::Outcome::Withdrawn,
        };
        let said = outcome.describe(ctx.approvals.timeout());
        if outcome.approved() {
            opened.reason = Some(format!("{}; {said}", decision.reason));
        } else {
            let mut denied = opened;
            denied.kind = EventKind::SessionDenied;
            denied.verdict = Verdict::Deny;
            denied.reason = Some(format!("held for approval: {said}"));
            deny(&ctx, conn, denied).await;
            return;
        }
    } else if decision.verdict != PolicyVerdict::Allow {
        if target.enforce {
            let mut denied = opened;
            denied.kind = EventKind::SessionDenied;
            denied.verdict = if decision.verdict == PolicyVerdict::Error {
                Verdict::Error
            } else {
                Verdict::Deny
            };
            tracing::info!(policy = ?denied.policy_id, "connection denied by policy");
            deny(&ctx, conn, denied).await;
            return;
        }
        // Shadow mode: record what would have happened, let it through.
        opened.shadow = true;
        opened.reason = Some(format!(
            "shadow: would be {:?} by {}: {}",
            decision.verdict,
            decision.policy_id.as_deref().unwrap_or("default deny"),
            decision.reason
        ));
    }
    record(&ctx, opened).await;
    tracing::debug!(target = %target.name, "session opened");

    let counters = Arc::new(Counters::default());
    let upstream = target.upstream.unwrap_or(orig);
    let session = Arc::new(session);
    let gateway = Gateway {
        ctx: ctx.clone(),
        session: session.clone(),
        target: target.clone(),
        upstream,
        counters: counters.clone(),
    };
    let work = async {
        match target.protocol {
            Protocol::Tcp => tcp::serve(conn, upstream, ctx.connect_timeout, &counters).await,
            Protocol::Postgres => postgres::serve(conn, &gateway).await,
            Protocol::Ssh => ssh::serve(conn, gateway.clone()).await,
            Protocol::Http => http::serve(conn, gateway.clone(), false).await,
            Protocol::Https => http::serve(conn, gateway.clone(), true).await,
        }
    };
    let result = tokio::select! {
        r = work => r,
        _ = ctx.hard_stop.cancelled() => Err(SessionError::Cancelled("daemon shutting down")),
    };

    let (from_agent, to_agent) = counters.snapshot();
    let (verdict, reason) = match &result {
        Ok(()) => (Verdict::Allow, None),
        Err(e) => {
            tracing::info!(error = %e, "session ended with an error");
            (Verdict::Error, Some(e.to_string()))
        }
    };
    let mut closed = session.event(EventKind::SessionClosed, verdict, reason);
    closed.bytes_from_agent = Some(from_agent);
    closed.bytes_to_agent = Some(to_agent);
    closed.duration_us = Some(started.elapsed().as_micros() as u64);
    // TCP passthrough cannot see into the stream; protocol handlers count.
    closed.masked_fields = Some(session.masked.load(Ordering::Relaxed));
    record(&ctx, closed).await;
}

/// The caller as a policy principal.
pub fn agent_attrs(c: &Caller) -> AgentAttrs {
    AgentAttrs {
        name: c.agent.clone(),
        uid: c.uid,
        exe: c.exe.clone().unwrap_or_default(),
        comm: c.comm.clone(),
        lineage: c.lineage.iter().map(|a| a.comm.clone()).collect(),
        oidc: None,
    }
}

/// Records a denial, then closes the agent's connection: the agent sees
/// the close only once the record is written, so a daemon killed at any
/// point cannot lose a denial the agent observed.
async fn deny(ctx: &ProxyContext, conn: TcpStream, event: Event) {
    record(ctx, event).await;
    drop(conn);
}

async fn record(ctx: &ProxyContext, event: Event) {
    if let Err(e) = ctx.recorder.record(event).await {
        // Only possible when the writer thread died; the daemon is going down.
        tracing::error!(error = %e, "event not recorded");
    }
}

//! One accepted connection, from identification to its closing record:
//! the only place a session's lifecycle is written.
//!
//! Identify the caller from the kernel record, route the original
//! destination to a target, and take the connect decision through the same
//! [`Gateway::authorize`] every unit of work uses. A refused agent is told
//! in its protocol's own form ([`phases::refuse`]) after its refusal is
//! recorded. An allowed session runs the protocol's phases while the driver
//! watches for what ends it from outside (daemon shutdown, a policy reload
//! that no longer allows it), then waits for every task the session
//! started, and writes `session_closed` last, with complete figures, on
//! every way out.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Instant};

use serde_json::Value;
use tokio::{net::TcpStream, sync::watch};
use tracing::Instrument;

use super::ProxyContext;
use crate::{
    config::{EgressMode, Protocol},
    identity::Caller,
    intercept::{
        is_proxy_addr,
        maps::{sock_addr, sock_key},
    },
    policy::Verdict as PolicyVerdict,
    protocols::{
        egress::EgressPassthrough,
        gateway::{Gateway, Ruling},
        http::Http,
        phases::{self, Phases},
        postgres::Postgres,
        ssh::Ssh,
        tcp::Tcp,
        Target,
    },
    records::{Event, EventKind, Verdict},
    session::{Counters, Session, SessionError, SessionTasks, WIND_DOWN},
};

/// The action every session is first decided as.
const CONNECT: &str = "connect";

/// How long a cut session's tasks get to record themselves and end.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn handle(conn: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    let mut session = Session::new(Instant::now());

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
        let denied = session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason));
        deny(&ctx, conn, denied).await;
        return;
    };
    let mut caller =
        Caller::from_kernel(&rec, agents.name_of(rec.agent_id), &ctx.processes, |pid| {
            maps.label_of(pid).is_some()
        });
    let orig = sock_addr(&rec.orig);
    // The CI job (or the OIDC token) its process tree proved; a runner's
    // process outside a live job, or one its ended job left behind, is
    // refused here.
    match ctx.jobs.attach(&mut caller, rec.binding, &ctx.oidc) {
        Ok(live) => session.job = live.map(crate::jobs::OpenSession::new),
        Err(reason) => {
            session.caller = Some(caller);
            session.orig_dst = Some(orig);
            let denied = session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason));
            deny(&ctx, conn, denied).await;
            return;
        }
    }
    let span = tracing::info_span!(
        "session",
        id = %session.id,
        agent = %caller.agent,
        pid = caller.pid,
        comm = %caller.comm,
        dst = %orig,
    );
    if orig.port() == DNS_PORT {
        // DNS over TCP: answered by blastgate's resolver, each query
        // recorded; not a gateway session.
        if let Some(resolver) = ctx.dns.clone() {
            let stop = ctx.hard_stop.clone();
            crate::dns::listener::serve_tcp(conn, caller, resolver, stop)
                .instrument(span)
                .await;
            return;
        }
    }
    session.caller = Some(caller);
    session.orig_dst = Some(orig);
    route(conn, session, orig, ctx).instrument(span).await
}

/// Where agents send DNS; over TCP it reaches the proxy like any connect.
const DNS_PORT: u16 = blastgate_common::DNS_PORT as u16;

/// Finds the target, then runs the session through its protocol.
async fn route(conn: TcpStream, mut session: Session, orig: SocketAddr, ctx: Arc<ProxyContext>) {
    if is_proxy_addr(&ctx.listen, orig) {
        let reason = "destination is the blastgate proxy itself".to_string();
        let denied = session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason));
        deny(&ctx, conn, denied).await;
        return;
    }
    let agent = session
        .caller
        .as_ref()
        .map(|c| c.agent.clone())
        .unwrap_or_default();
    let learned = ctx
        .dns
        .as_ref()
        .map(|d| d.learned.names_for(&agent, orig.ip()))
        .unwrap_or_default();
    // By address; by a name this agent learned; then by a name any agent
    // learned: a server that is a target stays one, whatever other name
    // (an allowed egress name, say) also leads to its address.
    let found = ctx
        .routes
        .lookup(orig)
        .map(|t| (t, None))
        .or_else(|| ctx.routes.lookup_by_host(orig, &learned))
        .or_else(|| {
            let any = ctx.dns.as_ref()?.learned.names_for_any(orig.ip());
            ctx.routes.lookup_by_host(orig, &any)
        });
    if found
        .as_ref()
        .is_none_or(|(t, _)| t.protocol != Protocol::Tcp)
    {
        // Only passthrough targets are paired in the kernel.
        if let (Some(fast), Ok(peer)) = (ctx.maps.as_ref().and_then(|m| m.fast()), conn.peer_addr())
        {
            fast.release(sock_key(peer));
        }
    }
    let Some((target, by_name)) = found else {
        match egress_verdict(&ctx, orig, &learned) {
            Ok(()) => {
                session.dst_name = learned.first().map(|n| n.to_string());
                session.dst_name_source = session.dst_name.as_ref().map(|_| DNS_SOURCE);
                let gw = gateway(&ctx, session, egress_target(), orig);
                let p = EgressPassthrough {
                    by_range: ctx.egress.allows(None, orig).is_some(),
                    rules: ctx.egress.clone(),
                    routes: ctx.routes.clone(),
                    learned,
                };
                drive(&p, conn, gw, orig).await;
            }
            Err(reason) => {
                tracing::info!("{reason}");
                session.dst_name = learned.first().map(|n| n.to_string());
                let denied = session.event(EventKind::SessionDenied, Verdict::Deny, Some(reason));
                deny(&ctx, conn, denied).await;
            }
        }
        return;
    };
    session.dst_name = by_name.map(|n| n.to_string());
    session.dst_name_source = session.dst_name.as_ref().map(|_| DNS_SOURCE);
    let gw = gateway(&ctx, session, target.clone(), orig);
    match target.protocol {
        Protocol::Tcp => {
            let tcp = Tcp {
                maps: ctx.maps.clone(),
            };
            drive(&tcp, conn, gw, orig).await
        }
        Protocol::Postgres => drive(&Postgres, conn, gw, orig).await,
        Protocol::Ssh => drive(&Ssh, conn, gw, orig).await,
        Protocol::Http => drive(&Http { tls: false }, conn, gw, orig).await,
        Protocol::Https => drive(&Http { tls: true }, conn, gw, orig).await,
    }
}

fn gateway(
    ctx: &ProxyContext,
    mut session: Session,
    target: Arc<Target>,
    orig: SocketAddr,
) -> Gateway {
    session.target = Some(target.name.clone());
    session.protocol = Some(target.protocol.as_str());
    Gateway {
        services: ctx.services.clone(),
        session: Arc::new(session),
        upstream: target.upstream.unwrap_or(orig),
        target,
        counters: Arc::new(Counters::default()),
        tasks: SessionTasks::new(&ctx.hard_stop),
    }
}

/// Whether a destination that is no target may be reached as egress
/// (the passthrough then checks the name the opening claims). Loopback,
/// link-local (cloud metadata), unspecified and multicast addresses never
/// are: a name that resolves there is DNS rebinding, and the host's own
/// services are targets or nothing.
fn egress_verdict(
    ctx: &ProxyContext,
    orig: SocketAddr,
    learned: &[Arc<str>],
) -> Result<(), String> {
    let ip = crate::egress::pattern::canonical(orig.ip());
    if crate::egress::special_address(ip) {
        return Err(format!(
            "no target is configured for {orig}: denied by default (egress never reaches a \
             loopback, link-local (cloud metadata), unspecified or multicast address)"
        ));
    }
    if ctx.egress.mode == EgressMode::Audit {
        return Ok(());
    }
    let allowed = learned
        .iter()
        .any(|n| ctx.egress.allows(Some(n), orig).is_some())
        || ctx.egress.allows(None, orig).is_some();
    if allowed {
        return Ok(());
    }
    Err(if learned.is_empty() {
        format!(
            "no target is configured for {orig}: denied by default (the agent resolved no \
             allowed name to it)"
        )
    } else {
        format!(
            "no target is configured for {orig}: denied by default (no egress.allow entry \
             names {} on port {})",
            learned.join(", "),
            orig.port()
        )
    })
}

/// What policy sees as the resource of an egress session.
fn egress_target() -> Arc<Target> {
    Arc::new(Target {
        name: EGRESS.into(),
        protocol: Protocol::Tcp,
        upstream: None,
        attrs: crate::policy::TargetAttrs {
            name: EGRESS.into(),
            protocol: Protocol::Tcp.as_str().into(),
            labels: Default::default(),
        },
        enforce: true,
        names: Vec::new(),
        host_names: Vec::new(),
        postgres: None,
        ssh: None,
        http: None,
    })
}

/// `dst_name_source` of a name the agent learned from blastgate's resolver.
const DNS_SOURCE: &str = "dns";

/// The target name egress sessions are recorded and decided under.
pub const EGRESS: &str = "egress";

/// The lifecycle, the same for every protocol.
pub async fn drive<P: Phases>(p: &P, conn: TcpStream, gw: Gateway, orig: SocketAddr) {
    let text = format!("connect to {orig}");
    // Watched from before the decision: a reload while it is taken (a
    // human may take minutes) is seen once the session opens.
    let mut swaps = gw.services.policy.swaps();
    // A hold for a human ends, withdrawn and recorded, when the daemon
    // stops meanwhile.
    // Policies see the destination's name too, and how it is known.
    let context = match &gw.session.dst_name {
        Some(name) => serde_json::json!({
            "dst_name": name,
            "dst_name_source": gw.session.dst_name_source.unwrap_or(""),
        }),
        None => Value::Null,
    };
    let mut ruling = gw.authorize(CONNECT, &context, &text, |_| {}).await;
    if !ruling.allowed && gw.tasks.is_cancelled() {
        ruling.verdict = Verdict::Error;
        ruling.reason = format!("{}; {}", ruling.reason, SessionError::shutdown());
    }
    let kind = if ruling.allowed {
        EventKind::SessionOpened
    } else {
        EventKind::SessionDenied
    };
    let opened = gw.ruled(kind, CONNECT, text, &ruling);
    if !ruling.allowed {
        tracing::info!(policy = ?ruling.policy_id, "connection refused by policy");
        // Recorded before the agent is told: a daemon killed at any point
        // cannot lose a refusal the agent saw.
        gw.record(opened).await;
        // Told as what it was: a daemon stopping, or policies that could not
        // be evaluated, are blastgate's fault, not a refusal by policy.
        let why = if gw.tasks.is_cancelled() {
            SessionError::shutdown()
        } else if ruling.verdict == Verdict::Error {
            SessionError::blastgate(format!(
                "{CONNECT} refused: the policies could not be evaluated: {}",
                ruling.reason
            ))
        } else {
            SessionError::policy(format!(
                "{CONNECT} denied by policy {}: {}",
                ruling.policy_id.as_deref().unwrap_or("(default deny)"),
                ruling.reason
            ))
        };
        phases::refuse(p, conn, &why, &gw).await;
        return;
    }
    gw.record(opened).await;
    tracing::debug!(target = %gw.target.name, "session opened");

    let serving = phases::serve(p, conn, &gw);
    tokio::pin!(serving);
    let result = tokio::select! {
        r = &mut serving => r,
        _ = gw.tasks.cancelled() => wind_down(&gw, serving).await,
        _ = still_allowed(&gw, &ruling, &mut swaps) => wind_down(&gw, serving).await,
        _ = job_ended(&gw) => wind_down(&gw, serving).await,
    };
    // What the session started may outlive its main work (an approved
    // upgrade's tunnel, SSH channels draining): the session lasts until they
    // end, and a cut from outside still reaches them meanwhile.
    let tasks = async {
        let all_ended = tokio::select! {
            _ = gw.tasks.wait() => true,
            _ = still_allowed(&gw, &ruling, &mut swaps) => false,
            _ = job_ended(&gw) => false,
            _ = gw.tasks.cancelled() => false,
        };
        // The tasks may have ended because of a cut that came meanwhile.
        if all_ended {
            return if gw.tasks.is_cancelled() {
                TasksEnded::AfterCut
            } else {
                TasksEnded::OnTheirOwn
            };
        }
        // Cut: every task was told; each writes its record and ends. One
        // that cannot (an agent that stopped reading) is not waited for
        // past a bound, so a daemon stop always completes.
        match tokio::time::timeout(CUT_GRACE, gw.tasks.wait()).await {
            Ok(()) => TasksEnded::AfterCut,
            Err(_) => TasksEnded::Abandoned,
        }
    };
    let result = match (tasks.await, result) {
        (TasksEnded::OnTheirOwn, r) | (TasksEnded::AfterCut, r @ Err(_)) => r,
        // The main work had ended well; the cut is what ended the session.
        (TasksEnded::AfterCut, Ok(())) => Err(gw.tasks.why()),
        (TasksEnded::Abandoned, r) => {
            let left = gw.tasks.len();
            tracing::warn!(
                tasks = left,
                "session tasks did not end after the cut; abandoned"
            );
            let note = format!("{left} task(s) did not end within {CUT_GRACE:?} of the cut");
            let mut e = r.err().unwrap_or_else(|| gw.tasks.why());
            e.message = format!("{}; {note}", e.message);
            Err(e)
        }
    };
    close(&gw, result).await;
}

/// How the tasks a session left running came to an end.
enum TasksEnded {
    /// With nothing cutting the session.
    OnTheirOwn,
    /// After a cut, each within [`CUT_GRACE`].
    AfterCut,
    /// Some still ran [`CUT_GRACE`] after the cut, and were left.
    Abandoned,
}

/// Gives a cut session's main work [`WIND_DOWN`] to record how the cut
/// ended what it was doing, then drops it.
async fn wind_down(
    gw: &Gateway,
    serving: Pin<&mut impl Future<Output = Result<(), SessionError>>>,
) -> Result<(), SessionError> {
    let _ = tokio::time::timeout(WIND_DOWN, serving).await;
    Err(gw.tasks.why())
}

/// Returns once the policies in force no longer allow this session (a
/// reload changed them since `swaps` was taken, before the connect was
/// decided), having cut it; never returns otherwise. A shadow-mode target
/// is never cut: nothing is enforced there, a reload included.
async fn still_allowed(gw: &Gateway, opened: &Ruling, swaps: &mut watch::Receiver<u64>) {
    if !gw.target.enforce {
        return std::future::pending().await;
    }
    loop {
        if swaps.changed().await.is_err() {
            return std::future::pending().await;
        }
        let decision = gw.decide(CONNECT, &Value::Null);
        let approved = opened.approver.is_some();
        let keeps = match decision.verdict {
            PolicyVerdict::Allow => true,
            // A human already said yes to this very session.
            PolicyVerdict::Hold => approved,
            PolicyVerdict::Deny | PolicyVerdict::Error => false,
        };
        if !keeps {
            let why = SessionError::policy(format!(
                "the policies were reloaded and no longer allow this session: {} by {}: {}",
                match decision.verdict {
                    PolicyVerdict::Hold => "held",
                    PolicyVerdict::Error => "error",
                    _ => "denied",
                },
                decision.policy_id.as_deref().unwrap_or("default deny"),
                decision.reason
            ));
            tracing::info!("{why}");
            gw.tasks.cancel(why);
            return;
        }
    }
}

/// Returns once the session's CI job has ended, having cut the session;
/// never returns for a session of no job.
async fn job_ended(gw: &Gateway) {
    let Some(job) = &gw.session.job else {
        return std::future::pending().await;
    };
    job.ended().cancelled().await;
    let why = SessionError::policy("CI job ended: its sessions are closed");
    tracing::info!("{why}");
    gw.tasks.cancel(why);
}

/// The last record of every session that opened.
async fn close(gw: &Gateway, result: Result<(), SessionError>) {
    let (verdict, reason) = match &result {
        Ok(()) => (Verdict::Allow, None),
        Err(e) => {
            tracing::info!(error = %e, "session ended with an error");
            (Verdict::Error, Some(e.to_string()))
        }
    };
    let mut closed = gw.session.event(EventKind::SessionClosed, verdict, reason);
    let (from_agent, to_agent) = gw.counters.snapshot();
    closed.bytes_from_agent = Some(from_agent);
    closed.bytes_to_agent = Some(to_agent);
    closed.duration_us = Some(gw.session.elapsed_us());
    // TCP passthrough cannot see into the stream; protocol handlers count.
    closed.masked_fields = Some(gw.session.masked.load(std::sync::atomic::Ordering::Relaxed));
    gw.record(closed).await;
}

/// Records a denial, then closes the agent's connection: the agent sees
/// the close only once the record is written, so a daemon killed at any
/// point cannot lose a denial the agent observed.
async fn deny(ctx: &ProxyContext, conn: TcpStream, event: Event) {
    if let Err(e) = ctx.services.recorder.record(event).await {
        // Only possible when the writer thread died; the daemon is going down.
        tracing::error!(error = %e, "event not recorded");
    }
    drop(conn);
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;

//! Protocol upgrades that policy allowed (`kubectl exec` and `attach` over
//! WebSocket or SPDY once a human approved them, a WebSocket API a policy
//! permits), carried byte for byte: the upgrade request goes upstream on a
//! fresh HTTP/1.1 connection of its own, with the agent's credentials
//! swapped like any request; if the upstream switches protocols, both
//! sides are joined until either closes, and the record gets the bytes
//! each way when they do. What is inside the tunnel is not inspected:
//! that is why the shipped policies hold or refuse upgrades.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    echo::Guard,
    request::{self, Conn},
    upstream::{self, Body},
};
use crate::records::{Event, Verdict};

/// Bytes a tunnel moves per read, each way.
const TUNNEL_BUFFER: usize = 16 * 1024;

/// Sends the upgrade request upstream and, if the upstream switches
/// protocols, answers the agent with the upstream's 101 and joins the two
/// connections in a task of their own.
pub async fn carry(
    conn: &Arc<Conn>,
    mut req: Request<Body>,
    agent: OnUpgrade,
    mut event: Event,
    answering: request::Answering,
) -> Response<Body> {
    let started = answering.started;
    let guard = answering.guard.clone();
    if guard.is_some() {
        // Compressed WebSocket frames would hide an echoed credential
        // from the check of the bytes going back: offer no compression.
        req.headers_mut().remove("sec-websocket-extensions");
    }
    // A connection of our own speaks origin-form with a Host header.
    let target = req.uri().clone();
    if let Some(authority) = req.uri().authority().cloned() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let origin = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    match origin.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return request::fail(conn, event, &format!("upgrade URI: {e}")).await,
    }
    let mut response =
        match upstream::upgrade(&conn.client.upgrader, target, req, &conn.gw.tasks).await {
            Ok(r) => r,
            Err(why) => return request::fail(conn, event, &why).await,
        };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream said no, or ignored the upgrade and answered the
        // request as a plain one: masked and checked as any answer is.
        return request::respond(conn, response.map(BodyExt::boxed), event, answering).await;
    }
    let upstream_side = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    request::drop_reason(&mut parts);
    let echoes = AtomicU64::new(guard.as_ref().map_or(0, |g| g.headers(&mut parts.headers)));
    event.status = Some(101);
    let gw = conn.gw.clone();
    // The session owns the tunnel: it closes once the tunnel has, with the
    // tunnel's bytes in its figures, and a cut session cuts the tunnel.
    conn.gw.tasks.clone().spawn(async move {
        let (from_agent, to_agent) = (AtomicU64::new(0), AtomicU64::new(0));
        let joined = async {
            let (agent, upstream) = tokio::try_join!(agent, upstream_side)
                .map_err(|e| format!("the upgrade did not complete: {e}"))?;
            let (agent_read, agent_write) = tokio::io::split(TokioIo::new(agent));
            let (up_read, up_write) = tokio::io::split(TokioIo::new(upstream));
            tokio::try_join!(
                pump(agent_read, up_write, &from_agent, None, &echoes),
                pump(up_read, agent_write, &to_agent, guard.as_deref(), &echoes)
            )
            .map_err(|e| format!("tunnel: {e}"))
        };
        let cut = gw.tasks.clone();
        let ended = tokio::select! {
            r = joined => r,
            _ = cut.cancelled() => Err(format!(
                "tunnel cut: {}",
                cut.why()
            )),
        };
        if let Err(why) = ended {
            event.verdict = Verdict::Error;
            event.reason = Some(why);
        }
        let echoes = echoes.into_inner();
        if echoes > 0 {
            crate::metrics::get().credential_echoes.inc_by(echoes);
            event.reason = Some(format!(
                "the upstream echoed the injected credential: {echoes} occurrence(s) blanked before the agent"
            ));
        }
        let (from_agent, to_agent) = (from_agent.into_inner(), to_agent.into_inner());
        event.bytes_from_agent = Some(from_agent);
        event.bytes_to_agent = Some(to_agent);
        gw.counters.add_from_agent(from_agent);
        gw.counters.add_to_agent(to_agent);
        event.duration_us = Some(started.elapsed().as_micros() as u64);
        gw.record(event).await;
    });
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

/// One direction of a tunnel, counted as it goes; EOF is passed on as a
/// half-close. A TLS peer that hangs up without close_notify has still
/// ended its side: that is EOF here, not an error. With a `guard` (the
/// upstream's side), every needle is blanked and a tail that could start
/// one waits for the next read.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    count: &AtomicU64,
    guard: Option<&Guard>,
    echoes: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER];
    let mut held: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        let Some(guard) = guard else {
            if n == 0 {
                return to.shutdown().await;
            }
            to.write_all(&buf[..n]).await?;
            count.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        };
        held.extend_from_slice(&buf[..n]);
        echoes.fetch_add(guard.scrub(&mut held), Ordering::Relaxed);
        let keep = if n == 0 { 0 } else { guard.partial_tail(&held) };
        let ready = held.len() - keep;
        if ready > 0 {
            to.write_all(&held[..ready]).await?;
            count.fetch_add(ready as u64, Ordering::Relaxed);
            held.drain(..ready);
        }
        if n == 0 {
            return to.shutdown().await;
        }
    }
}

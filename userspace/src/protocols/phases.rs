//! The phases every gateway goes through, in the order the session driver
//! (`proxy::driver`) runs them: handshake with the agent, connect upstream,
//! relay units of work (each decided through [`Gateway::authorize`]), and,
//! when the session is refused, a refusal in the protocol's own form. The
//! driver owns what is common: the connect decision, the session's tasks,
//! cancellation, and the opening and closing records.

use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::net::TcpStream;

use super::gateway::Gateway;
use crate::session::{SessionError, WIND_DOWN};

pub trait Phases: Send + Sync {
    /// The agent's side once its opening is done (TLS, a startup packet).
    type Agent: Send;
    /// blastgate's side to the real server, or what stands for it where the
    /// protocol connects later (SSH opens upstream with its first channel).
    type Upstream: Send;

    /// The agent's opening. An agent whose opening failed cannot be told
    /// anything: the error is only recorded.
    fn handshake(
        &self,
        conn: TcpStream,
        gw: &Gateway,
    ) -> impl Future<Output = Result<Self::Agent, SessionError>> + Send;

    /// The checks on what the agent asked for in its opening, and
    /// blastgate's own login upstream with the credentials it holds. An
    /// error here is told to the agent through [`Phases::refuse`].
    fn connect(
        &self,
        agent: &mut Self::Agent,
        gw: &Gateway,
    ) -> impl Future<Output = Result<Self::Upstream, SessionError>> + Send;

    /// The session's work until either side ends it.
    fn relay(
        &self,
        agent: Self::Agent,
        upstream: Self::Upstream,
        gw: &Gateway,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;

    /// Tells the agent why the session is refused, as its protocol says a
    /// server refuses: a FATAL error with a SQLSTATE, an HTTP status on
    /// every request, an SSH exit status on every command.
    fn refuse(
        &self,
        agent: Self::Agent,
        why: &SessionError,
        gw: &Gateway,
    ) -> impl Future<Output = ()> + Send;
}

/// Runs a session the driver allowed: handshake, connect (refused in the
/// protocol's form if it fails), relay.
pub async fn serve<P: Phases>(p: &P, conn: TcpStream, gw: &Gateway) -> Result<(), SessionError> {
    let mut agent = p.handshake(conn, gw).await?;
    let upstream = match p.connect(&mut agent, gw).await {
        Ok(u) => u,
        Err(why) => {
            p.refuse(agent, &why, gw).await;
            return Err(why);
        }
    };
    p.relay(agent, upstream, gw).await
}

/// Tells a refused agent why, bounded: an agent that never finishes its
/// opening is not waited for past the connect timeout.
pub async fn refuse<P: Phases>(p: &P, conn: TcpStream, why: &SessionError, gw: &Gateway) {
    let Some(_slot) = Refusing::enter() else {
        tracing::debug!("{MAX_REFUSING} refusals under way: connection closed without one");
        drop(conn);
        return;
    };
    let limit = gw.services.connect_timeout;
    let told = async {
        if let Ok(agent) = p.handshake(conn, gw).await {
            p.refuse(agent, why, gw).await;
        }
    };
    // A hard stop (before or during the refusal) leaves it the wind-down
    // to tell the agent: shutdown does not wait out the connect timeout.
    tokio::pin!(told);
    tokio::select! {
        _ = tokio::time::timeout(limit, &mut told) => {}
        _ = gw.tasks.cancelled() => {
            let _ = tokio::time::timeout(WIND_DOWN, told).await;
        }
    }
}

/// Refusals told in the protocol's own form at once, daemon-wide. Each
/// may wait up to the connect timeout for the agent's opening while it
/// holds one of the daemon's connections: past this many, a refused
/// connection is closed at once (its refusal is recorded all the same),
/// so refused agents cannot take the connections allowed ones need.
pub const MAX_REFUSING: usize = 128;

static REFUSING: AtomicUsize = AtomicUsize::new(0);

/// One refusal under way, counted until dropped.
struct Refusing;

impl Refusing {
    fn enter() -> Option<Refusing> {
        if REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            REFUSING.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Refusing)
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    }
}

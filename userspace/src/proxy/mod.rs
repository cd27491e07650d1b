//! The userspace proxy: accept redirected agent connections and drive each
//! one through `session`.

pub mod session;
pub mod targets;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    approvals::Broker,
    identity::ProcessCache,
    intercept::{AgentRegistry, KernelMaps},
    policy::Engine,
    records::Recorder,
    Error,
};

pub use targets::Routes;

/// Everything a session needs, shared by all of them.
pub struct ProxyContext {
    pub approvals: Arc<Broker>,
    /// The kernel's records of redirected connections; `None` only where
    /// no kernel programs are loaded (the fuzz targets in `fuzz/` drive a
    /// gateway directly), and then no connection is served.
    pub maps: Option<Arc<KernelMaps>>,
    pub agents: Option<Arc<AgentRegistry>>,
    pub routes: Routes,
    pub recorder: Recorder,
    pub listen: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    /// Cancelled when in-flight sessions must be cut (after the grace period).
    pub hard_stop: CancellationToken,
    pub processes: ProcessCache,
    /// The policies in force: a directory's, or the built-in ones. There
    /// is no "no policy" state, so nothing is allowed by omission.
    pub policy: Arc<Engine>,
    /// Certificates for agents that ask gateways for TLS; `None` when no
    /// target needs them.
    pub tls: Option<Arc<crate::tls::LeafCache>>,
    /// The same CA's certificates for HTTPS targets (ALPN h2, http/1.1).
    pub https: Option<Arc<crate::tls::LeafCache>>,
    /// Signs the host certificates the SSH gateway presents; `None` when
    /// no target is an SSH one.
    pub ssh_ca: Option<Arc<crate::tls::ssh_ca::SshCa>>,
    /// What the SSH gateway learned of each host (home, program paths,
    /// what agents wrote there), kept for the daemon's life.
    pub ssh_hosts: crate::protocols::ssh::HostMemory,
}

/// Binds every listener; fails if any cannot be bound (the kernel would
/// otherwise redirect agents to a port nobody serves, or worse, someone else's).
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, Error> {
    let mut out = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| Error::io(format!("binding proxy listener {a}"), e))?;
        out.push(l);
    }
    Ok(out)
}

/// Accepts until `stop` is cancelled; sessions are tracked by `tracker`.
pub fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<ProxyContext>,
    max_connections: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    for listener in listeners {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let permits = permits.clone();
        let sessions = tracker.clone();
        tracker.spawn(async move {
            let mut backoff = Duration::from_millis(5);
            loop {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.cancelled() => return,
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                match accepted {
                    Ok((conn, peer)) => {
                        backoff = Duration::from_millis(5);
                        let ctx = ctx.clone();
                        let open = &crate::metrics::get().sessions_open;
                        open.inc();
                        sessions.spawn(async move {
                            session::handle(conn, peer, ctx).await;
                            open.dec();
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        });
    }
}

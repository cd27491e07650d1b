//! The userspace proxy: accept redirected agent connections and drive each
//! one through `driver`.

pub mod driver;
pub mod targets;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    identity::ProcessCache,
    intercept::{AgentRegistry, KernelMaps},
    protocols::gateway::Services,
    Error,
};

pub use targets::Routes;

/// Everything the driver needs, shared by all sessions.
pub struct ProxyContext {
    /// What gateways share (policy, approvals, records, certificates).
    pub services: Arc<Services>,
    /// The kernel's records of redirected connections; `None` only where
    /// no kernel programs are loaded (the fuzz targets in `fuzz/` drive a
    /// gateway directly), and then no connection is served.
    pub maps: Option<Arc<KernelMaps>>,
    pub agents: Option<Arc<AgentRegistry>>,
    pub routes: Routes,
    pub listen: Vec<SocketAddr>,
    /// Cancelled when in-flight sessions must be cut (after the grace
    /// period); each session's tasks are cancelled with it.
    pub hard_stop: CancellationToken,
    pub processes: ProcessCache,
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
                            driver::handle(conn, peer, ctx).await;
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

//! The userspace proxy: accept redirected agent connections and drive each
//! one through `driver`.

pub mod driver;
pub mod targets;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

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
    pub routes: Arc<Routes>,
    /// blastgate's resolver: what each agent learned (destinations by
    /// name) and the DNS-over-TCP answers. `None` where no kernel programs
    /// run (the fuzz targets).
    pub dns: Option<Arc<crate::dns::Resolver>>,
    pub egress: Arc<crate::egress::Egress>,
    pub listen: Vec<SocketAddr>,
    /// Cancelled when in-flight sessions must be cut (after the grace
    /// period); each session's tasks are cancelled with it.
    pub hard_stop: CancellationToken,
    pub processes: ProcessCache,
    /// Verified CI job identities, by the binding number in each
    /// connection's kernel record.
    pub oidc: Arc<crate::identity::oidc::Oidc>,
    /// Registered CI jobs, by the same binding number.
    pub jobs: Arc<crate::jobs::Jobs>,
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

/// The threads sessions run on: each a single-threaded runtime of its
/// own, sessions handed out in turn. Measured against tokio's
/// work-stealing runtime (pgbench, 8 clients, 2 CPUs), a session that
/// stays on one thread costs fewer wake-ups per round trip: one thread
/// reads the agent, writes the server, reads the answer. The accept loops
/// and the control plane stay on the daemon's main runtime.
pub struct SessionThreads {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl SessionThreads {
    /// `n` threads (0: one per CPU).
    pub fn start(n: usize) -> Result<SessionThreads, Error> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let stop = CancellationToken::new();
        let (mut handles, mut threads) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting a session thread".to_string(), e))?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("session-{i}"))
                .spawn(move || rt.block_on(stop.cancelled()))
                .map_err(|e| Error::io("starting a session thread".to_string(), e))?;
            threads.push(thread);
        }
        Ok(SessionThreads {
            handles,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        })
    }

    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Ends the threads, once every session on them has ended.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Accepts until `stop` is cancelled; sessions run on `threads` and are
/// tracked by `tracker`.
pub fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<ProxyContext>,
    threads: Arc<SessionThreads>,
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
        let threads = threads.clone();
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
                        // Registered again with the reactor of the thread
                        // the session runs on.
                        let conn = match conn.into_std() {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "an accepted connection could not be handed to a session thread");
                                continue;
                            }
                        };
                        let ctx = ctx.clone();
                        let open = &crate::metrics::get().sessions_open;
                        open.inc();
                        sessions.spawn_on(
                            async move {
                                match tokio::net::TcpStream::from_std(conn) {
                                    Ok(conn) => driver::handle(conn, peer, ctx).await,
                                    Err(e) => tracing::warn!(error = %e, "an accepted connection could not be registered"),
                                }
                                open.dec();
                                drop(permit);
                            },
                            threads.pick(),
                        );
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

#[cfg(test)]
mod tests {
    use std::{
        sync::{mpsc, Arc},
        time::Instant,
    };

    use super::SessionThreads;
    use crate::policy::masking::{tree, Masking};

    /// Red team (availability): a session is pinned to one thread, and
    /// so is every task it starts (each HTTP/2 stream is a task of the
    /// session, `SessionStreams`). One agent connection opening many
    /// streams whose answers are masked whole (a synchronous pass over up
    /// to `max_inspect_bytes`, 8 MiB by default, with no yield inside)
    /// queues all that work on its thread: every other session handed the
    /// same thread (one in `session_threads`, round-robin: half of all
    /// sessions on a 2-CPU host, other agents' Postgres and SSH sessions
    /// included) waits behind the whole backlog while the other thread is
    /// idle. With work stealing, the idle worker took the waiting tasks.
    /// Here: 16 streams each masking a 1 MiB list with the shipped
    /// detectors, then a session on the same thread, then how long before
    /// it first runs.
    #[test]
    fn red_team_one_session_does_not_stall_the_sessions_sharing_its_thread() {
        let threads = SessionThreads::start(2).expect("threads");
        let plan = Arc::new(
            Masking::parse(std::path::Path::new("masking.toml"), tree::SHIPPED)
                .unwrap_or_else(|e| panic!("{e:?}"))
                .plan("agent", "bench"),
        );
        let item = tree::sample_list();
        let items = item.trim().trim_start_matches('{');
        let doc: Arc<String> = Arc::new(format!(
            "[{}]",
            std::iter::repeat_n(format!("{{{items}"), 12)
                .collect::<Vec<_>>()
                .join(",")
        ));
        assert!(doc.len() > 1024 * 1024);
        let heavy = threads.pick().clone();
        let _idle = threads.pick().clone();
        let victim = threads.pick().clone();
        let (done_tx, done_rx) = mpsc::channel::<Instant>();
        for _ in 0..16 {
            let (plan, doc, done) = (plan.clone(), doc.clone(), done_tx.clone());
            heavy.spawn(async move {
                let text = bytes::Bytes::from(doc.as_bytes().to_vec());
                let masked = crate::protocols::http::mask_doc(Some(&plan), false, text).await;
                assert!(matches!(masked, Ok(Ok(_))));
                let _ = done.send(Instant::now());
            });
        }
        // A session on the same thread, handed out after them.
        let (ran_tx, ran_rx) = mpsc::channel::<Instant>();
        victim.spawn(async move {
            let _ = ran_tx.send(Instant::now());
        });
        let ran = ran_rx.recv().expect("the session ran");
        let last_done = (0..16)
            .map(|_| done_rx.recv().expect("masked"))
            .max()
            .expect("16 masked");
        threads.stop();
        // It ran while the masking was still going on, not after all of it.
        assert!(
            ran < last_done,
            "a session on the busy thread ran only after every masking on it ended"
        );
    }
}

//! Every task a session starts, owned by the session: the driver waits for
//! all of them before it writes `session_closed`, so no record and no byte
//! count of the session can come after its last event, and cancels them
//! together (daemon shutdown, a policy reload that refuses the session).

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::SessionError;

/// How long a cut session's work may take to end once told (a hold
/// withdrawn, its request refused and recorded) before it is dropped.
pub const WIND_DOWN: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct SessionTasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Why the session was cut, when something cut it (first reason wins).
    why: Arc<Mutex<Option<SessionError>>>,
}

impl SessionTasks {
    /// Tasks of a new session, cancelled with `parent` (the daemon's hard
    /// stop) as well as on their own.
    pub fn new(parent: &CancellationToken) -> SessionTasks {
        SessionTasks {
            tracker: TaskTracker::new(),
            cancel: parent.child_token(),
            why: Default::default(),
        }
    }

    /// Starts work the session waits for before it closes. The task must
    /// end on its own once [`SessionTasks::cancelled`] fires: it is never
    /// dropped half-way, so it can still write its own record then.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Starts work that is simply dropped when the session is cut (nothing
    /// of it needs recording then: a notice to the agent, a side lookup).
    pub fn spawn_cancellable<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = task => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Starts work that ends on its own once told of a cut, recording how
    /// (a hold withdrawn, its request refused), but is not trusted to:
    /// given [`WIND_DOWN`] after the cut, then dropped.
    pub fn spawn_winding_down<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::pin!(task);
            tokio::select! {
                _ = &mut task => {}
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(WIND_DOWN, task).await;
                }
            }
        });
    }

    /// Cuts the session: every task is told, the driver stops its main
    /// work, and `why` is what the closing record says.
    pub fn cancel(&self, why: SessionError) {
        let mut slot = self.why.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(why);
        drop(slot);
        self.cancel.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the session is cut.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Why the session was cut: what [`SessionTasks::cancel`] was given, or
    /// a daemon shutdown when the cancel came from the parent. Asked once
    /// the session is cut (every caller is reacting to the cut).
    pub fn why(&self) -> SessionError {
        let slot = self.why.lock().unwrap_or_else(|p| p.into_inner());
        slot.clone().unwrap_or_else(SessionError::shutdown)
    }

    /// Tasks still running, for tests and the driver's logs.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits for every task, including ones started while waiting (a
    /// record written as a response body is dropped).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

//! What the agent sends on one channel, queued for the task that writes it
//! upstream, and the window that keeps that queue bounded.
//!
//! russh runs every handler callback on the session's one loop, which also
//! carries everything sent *to* the agent, so a data callback must not
//! wait for the upstream: in a two-way transfer (`ssh host cat < big >
//! out`) the upstream stops reading our input while its output is not
//! delivered, and the loop that would deliver it is the one waiting.
//! Input is therefore queued without waiting, and bounded by the SSH
//! window instead: russh tops the agent's window up when data arrives,
//! to the target [`Handler::adjust_window`](russh::server::Handler)
//! returns. While a channel's queue is over [`HIGH_WATER`] the target is
//! [`TRICKLE_WINDOW`], so the agent can send only a few bytes per round
//! trip (enough to keep the window alive: a window of zero would never be
//! topped up again); below it, the full window comes back with the next
//! top-up. A channel still waiting for a human has nothing draining its
//! queue: its data callback also pauses, so the trickle stays slow.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use russh::Sig;
use tokio::sync::Notify;

/// Queued input above which the agent's window shrinks.
pub const HIGH_WATER: usize = 4 << 20;
/// The agent's window while its queue is over [`HIGH_WATER`].
pub const TRICKLE_WINDOW: u32 = 256;
/// How long a data callback pauses for a channel with a full queue that
/// is not running yet (held for approval).
const HELD_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// One thing the agent did on a channel, in the order it did it.
#[derive(Debug)]
pub enum Input {
    Data(Bytes),
    Eof,
    Resize {
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
    },
    Signal(Sig),
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Input>>,
    queued_bytes: AtomicUsize,
    /// The most ever queued, for the channel's log line.
    peak_bytes: AtomicUsize,
    /// The relay is writing to the upstream: the queue drains.
    running: AtomicBool,
    /// The relay is gone: nothing will drain the queue again.
    closed: AtomicBool,
    /// The agent will send nothing more (channel closed or session gone).
    hung_up: AtomicBool,
    changed: Notify,
}

/// The handler's end.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The relay's end.
pub struct Inbox {
    shared: Arc<Shared>,
}

pub fn channel() -> (Outbox, Inbox) {
    let shared = Arc::new(Shared::default());
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl Outbox {
    /// Queues without waiting; false when the relay is gone.
    pub fn send(&self, input: Input) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        if let Input::Data(d) = &input {
            let now = self
                .shared
                .queued_bytes
                .fetch_add(d.len(), Ordering::AcqRel)
                + d.len();
            self.shared.peak_bytes.fetch_max(now, Ordering::AcqRel);
        }
        if let Ok(mut q) = self.shared.queue.lock() {
            q.push_back(input);
        }
        self.shared.changed.notify_waiters();
        true
    }

    /// Whether the agent should be held to a trickle (see the module doc).
    pub fn over_high_water(&self) -> bool {
        self.shared.queued_bytes.load(Ordering::Acquire) > HIGH_WATER
    }

    /// Slows a held channel's trickle: nothing drains its queue until a
    /// human decides.
    pub async fn pace(&self) {
        if self.over_high_water() && !self.shared.running.load(Ordering::Acquire) {
            tokio::time::sleep(HELD_PAUSE).await;
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.hung_up.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl Inbox {
    /// The next input; None once the agent hung up and the queue is empty.
    pub async fn recv(&self) -> Option<Input> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = self
                .shared
                .queue
                .lock()
                .ok()
                .and_then(|mut q| q.pop_front());
            if let Some(input) = next {
                if let Input::Data(d) = &input {
                    self.shared
                        .queued_bytes
                        .fetch_sub(d.len(), Ordering::AcqRel);
                    self.shared.changed.notify_waiters();
                }
                return Some(input);
            }
            if self.shared.hung_up.load(Ordering::Acquire) {
                return None;
            }
            changed.await;
        }
    }

    /// Resolves when the agent hung up (closed the channel or left): a
    /// held request is then withdrawn rather than run for nobody.
    pub async fn hung_up(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.hung_up.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// The relay now writes upstream: the queue will drain.
    pub fn running(&self) {
        self.shared.running.store(true, Ordering::Release);
    }

    /// The most input ever queued at once.
    pub fn peak_bytes(&self) -> usize {
        self.shared.peak_bytes.load(Ordering::Acquire)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Ok(mut q) = self.shared.queue.lock() {
            q.clear();
        }
        self.shared.queued_bytes.store(0, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Input {
        Input::Data(Bytes::from(vec![0u8; n]))
    }

    #[tokio::test]
    async fn keeps_order_and_ends_after_hang_up() {
        let (out, inbox) = channel();
        assert!(out.send(data(3)));
        assert!(out.send(Input::Eof));
        drop(out);
        assert!(matches!(inbox.recv().await, Some(Input::Data(d)) if d.len() == 3));
        assert!(matches!(inbox.recv().await, Some(Input::Eof)));
        assert!(inbox.recv().await.is_none());
        inbox.hung_up().await;
    }

    #[tokio::test]
    async fn high_water_and_pacing_of_held_channels() {
        let (out, inbox) = channel();
        out.send(data(HIGH_WATER));
        assert!(!out.over_high_water());
        out.send(data(1));
        assert!(out.over_high_water());
        let t = std::time::Instant::now();
        out.pace().await;
        assert!(
            t.elapsed() >= HELD_PAUSE,
            "a held channel's trickle is slowed"
        );
        inbox.running();
        let t = std::time::Instant::now();
        out.pace().await;
        assert!(t.elapsed() < HELD_PAUSE, "a running channel's is not");
        assert!(inbox.recv().await.is_some());
        assert!(!out.over_high_water());
        assert_eq!(inbox.peak_bytes(), HIGH_WATER + 1);
        drop(inbox);
        assert!(!out.send(data(1)), "relay gone");
    }
}

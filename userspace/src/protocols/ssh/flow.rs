//! What the agent sends on one channel, queued for the task that writes it
//! upstream, with backpressure that cannot deadlock the session.
//!
//! russh runs every handler callback on the session's one loop, and that
//! loop also carries everything sent *to* the agent. A callback that waits
//! for room in a queue whose drain depends on output reaching the agent
//! deadlocks two-way transfers (`ssh host cat < big > out`): the upstream
//! stops reading our input because its output is not being read. And
//! russh tops up the agent's window when data arrives, not when it is
//! consumed, so the window alone bounds nothing.
//!
//! So the data callback waits for room only while no output of this
//! channel is on its way to the agent: the relay marks each delivery
//! ([`Inbox::delivering`]) and the waiting callback returns at once, lets
//! the loop carry the output, and waits again with the next packet. The
//! queue is bounded by [`HIGH_WATER`] plus one packet per delivery.

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

/// Queued input above which the agent's next packet waits.
pub const HIGH_WATER: usize = 4 << 20;

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
    /// Output of this channel is waiting for the session loop.
    delivering: AtomicUsize,
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
            self.shared
                .queued_bytes
                .fetch_add(d.len(), Ordering::AcqRel);
        }
        if let Ok(mut q) = self.shared.queue.lock() {
            q.push_back(input);
        }
        self.shared.changed.notify_waiters();
        true
    }

    /// Waits while the queue is over [`HIGH_WATER`], unless output of
    /// this channel needs the session loop (see the module doc).
    pub async fn room(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.closed.load(Ordering::Acquire)
                || self.shared.delivering.load(Ordering::Acquire) > 0
                || self.shared.queued_bytes.load(Ordering::Acquire) <= HIGH_WATER
            {
                return;
            }
            changed.await;
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

    /// Marks output of this channel on its way to the agent for as long as
    /// the guard lives.
    pub fn delivering(&self) -> Delivering<'_> {
        self.shared.delivering.fetch_add(1, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
        Delivering { inbox: self }
    }

    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
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

pub struct Delivering<'a> {
    inbox: &'a Inbox,
}

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.inbox.shared.delivering.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    async fn room_waits_over_high_water_until_drained_or_delivering() {
        let (out, inbox) = channel();
        out.send(data(HIGH_WATER + 1));
        let waiting = tokio::time::timeout(Duration::from_millis(50), out.room()).await;
        assert!(waiting.is_err(), "over high water must wait");
        {
            let _d = inbox.delivering();
            tokio::time::timeout(Duration::from_secs(1), out.room())
                .await
                .expect("output on its way lets the loop run");
        }
        let wait = tokio::spawn(async move {
            out.room().await;
            out
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!wait.is_finished());
        assert!(inbox.recv().await.is_some());
        let out = tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("drained")
            .expect("task");
        assert_eq!(inbox.queued_bytes(), 0);
        drop(inbox);
        assert!(!out.send(data(1)), "relay gone");
        out.room().await;
    }
}

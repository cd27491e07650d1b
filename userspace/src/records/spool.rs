//! The durable local spool: JSON lines segment files, written off the
//! sessions' path by one writer thread (group commit).
//!
//! `Recorder::record` only queues the event: it counts it, takes room in a
//! bounded queue and pushes the event under a short lock (no encoding, no
//! syscall, and no wake-up of the writer while it is busy). The writer
//! thread takes everything queued at once, encodes it into one buffer and
//! appends it with as few `write(2)` calls as the segment boundaries allow;
//! a separate flusher thread `fdatasync`s at most every
//! `records.flush_interval_ms` while events keep coming, which bounds what
//! a power loss or kernel crash can take.
//!
//! What is guaranteed, precisely:
//!
//! - **Nothing is dropped.** The queue is bounded (`MAX_QUEUED_BYTES` of
//!   events, by an estimate of their size) and room in it is only given
//!   back once an event is in the file; when it is full, `record` waits, in
//!   arrival order (a fair semaphore): a full queue slows the session, never
//!   the record.
//! - **Order.** The spool's order is the order in which `record` calls
//!   queued their events (the moment the call takes the lock), exactly as
//!   it was the order of the `write(2)` calls before. A session's events are
//!   recorded one after another, so they are in the spool in that order, and
//!   `session_closed`, recorded after every other record of its session has
//!   returned, is its last line.
//! - **Loss window on SIGKILL** (the process dies, the kernel does not):
//!   before, zero (each event was in the page cache when `record`
//!   returned); now, the events queued in the last tick. While events keep
//!   coming the writer wakes every `TICK` (1 ms) and writes everything
//!   queued, or sooner once `NUDGE_BYTES` are pending, so an event reaches
//!   the page cache within about 1 ms plus one batch's encode and write
//!   (about 1–2 ms in all here). Events that open or end something the
//!   agent can observe are not returned before they are in the file:
//!   `session_opened` (a session is served only once its opening is on
//!   disk, so a killed daemon cannot leave a served session no restart can
//!   close: recovery closes it from that record), `session_closed`,
//!   `session_denied` (the agent sees its connection refused only after the
//!   record), `daemon_started` and `daemon_stopped`. Their `record` leads
//!   the group commit: it writes everything queued, itself last, on its own
//!   task (no hand-off to the writer thread and back), so everything queued
//!   before them, the session's own events included, is in the file too. A killed daemon therefore loses at most the last
//!   millisecond or two of events of sessions still running, and
//!   `recovery` closes those sessions at the next start.
//! - **`Recorder::flush`** still returns only once everything recorded
//!   before the call is in the file and fdatasync'd (it writes what is
//!   queued itself, then syncs); it fails (rather than returning early)
//!   while the disk refuses writes.
//! - **Followers** (`blastgate events --follow`) get every event, in spool
//!   order, once it is in the file (a follower too slow for the broadcast
//!   buffer is told it lagged, as before).
//! - **A sick disk** (write errors): the writer keeps the events it could
//!   not write, in order, retries every 200 ms into a new segment, and
//!   gives room back only for what it wrote, so the queue fills and
//!   sessions wait rather than lose records. Events that end something
//!   return once queued (they cannot reach the file until the disk
//!   recovers), as the old in-memory backlog did.
//! - **Shutdown:** dropping the last `Recorder` makes the writer write
//!   everything queued and exit; the daemon calls `flush` last, which waits
//!   for that write and the fdatasync.
//!
//! The writer wakes at most once per tick while events keep coming (the
//! producers push without a wake-up); after `IDLE_AFTER` without events it
//! sleeps until the next one, which then pays the one wake-up. Encoding
//! moved to the writer with the `write(2)`: the session's task no longer
//! pays for either.
//!
//! Segments are `segment-<n>.jsonl`, `n` increasing; a restarted daemon
//! always opens a new segment and never appends to an old one, and a
//! segment whose write failed mid-line is never appended to again, so a
//! line torn by a failed write can only be the last line of a closed
//! segment, without its newline (its event is written whole into the next
//! one): readers take whole lines only ([`events_in`]). A write refused at
//! a line's start (a full disk) is retried in the same segment. The shipper (ClickHouse) reads
//! closed segments in order and deletes them once acknowledged.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, Semaphore, TryAcquireError};

use super::event::{Event, EventKind};
use crate::config::RecordsConfig;

/// Room in the queue (events queued or held by the writer), by an estimate
/// of their size in memory: what a sick disk can make the daemon hold.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// While events keep coming, the writer writes what is queued this often:
/// the loss window on SIGKILL.
const TICK: Duration = Duration::from_millis(1);
/// Queued this much, the writer is woken before the tick ends.
const NUDGE_BYTES: usize = 256 << 10;
/// After this long without events the writer stops ticking and sleeps
/// until the next event wakes it.
const IDLE_AFTER: Duration = Duration::from_millis(50);
/// While the disk refuses writes, retried this often.
const RETRY: Duration = Duration::from_millis(200);
const FOLLOW_CAPACITY: usize = 4096;
pub const SEGMENT_PREFIX: &str = "segment-";
pub const SEGMENT_SUFFIX: &str = ".jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("syncing the spool: {0}")]
    Sync(io::Error),
    #[error("the spool cannot be written (events are held and retried): {0}")]
    Write(String),
    #[error("the spool writer stopped")]
    WriterGone,
}

/// A cheap, cloneable handle for appending events. When the last clone is
/// dropped, the writer writes what is queued and exits.
#[derive(Clone)]
pub struct Recorder {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
    }
}

/// The knobs tests turn: a small queue fills quickly, a long tick shows
/// what is written only on demand.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    room_bytes: usize,
    tick: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            room_bytes: MAX_QUEUED_BYTES,
            tick: TICK,
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here.
    wake: Condvar,
    /// Room in the queue, in estimated bytes. Taken by `record`, given back
    /// by the writer only once the event is in the file: FIFO, so a waiting
    /// session is not overtaken.
    room: Semaphore,
    tuning: Tuning,
    /// Events in the file so far: ticket `t` is written once this is ≥ t.
    written: AtomicU64,
    /// The last write failed; the writer holds what it could not write.
    failing: AtomicBool,
    last_error: Mutex<String>,
    /// The file, the segment and what is held: see [`Side`].
    side: Mutex<Side>,
    follow: broadcast::Sender<Event>,
    /// The segment files to fdatasync; the flusher waits on `flush_wake`.
    files: Mutex<Files>,
    flush_wake: Condvar,
    /// Set by a write, cleared by the flusher's fdatasync.
    dirty: AtomicBool,
    interval: Duration,
    /// `write(2)` calls that appended events, and producers' wake-ups of
    /// the writer: what group commit saves, measured (`Recorder::stats`).
    writes: AtomicU64,
    wakeups: AtomicU64,
}

/// What the writer did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Events in the file.
    pub written: u64,
    /// `write(2)` calls that put them there.
    pub writes: u64,
    /// Times a `record` or `flush` had to wake the writer.
    pub wakeups: u64,
}

#[derive(Default)]
struct Files {
    current: Option<Arc<File>>,
    /// Closed segments not yet synced.
    retired: Vec<Arc<File>>,
}

/// What producers and the writer share under the lock.
struct Queue {
    events: Vec<Event>,
    /// Estimated bytes of `events`.
    bytes: usize,
    /// Tickets handed out: the number of events ever queued.
    queued: u64,
    writer: WriterState,
    closing: bool,
}

/// What the writer is doing, so a producer wakes it only when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// Taking, encoding or writing: it looks at the queue again when done.
    Busy,
    /// Waiting for the tick: woken early only for a full batch.
    Ticking,
    /// Idle: the next event wakes it.
    Sleeping,
}

impl Recorder {
    /// Queues an event. Returns once it is queued, or, for events that end
    /// something the agent observes (see [`writes_through`]), once it is in
    /// the segment file (or held by the writer while the disk refuses
    /// writes). Waits while the queue is full: it never drops an event.
    pub async fn record(&self, event: Event) -> Result<(), SpoolError> {
        count(&event);
        let shared = &self.handle.shared;
        let room = room_for(&event, shared.tuning.room_bytes);
        match shared.room.try_acquire_many(room) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => shared
                .room
                .acquire_many(room)
                .await
                .map_err(|_| SpoolError::WriterGone)?
                .forget(),
            Err(TryAcquireError::Closed) => return Err(SpoolError::WriterGone),
        }
        let through = writes_through(event.kind);
        shared.push(event, room as usize);
        if through {
            // Lead the group commit: write what is queued, this event
            // last, on this task (as every event was before), rather than
            // wake the writer and wait for it. While the disk refuses
            // writes the event stays held, as any other.
            shared.drain(&mut shared.side());
        }
        Ok(())
    }

    /// Returns once every event recorded before the call is on stable
    /// storage (in the file and fdatasync'd); fails while the disk refuses
    /// writes (the events stay held and retried).
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let shared = self.handle.shared.clone();
        tokio::task::spawn_blocking(move || {
            let ticket = shared.lock().queued;
            shared.drain(&mut shared.side());
            if shared.written.load(Ordering::Acquire) < ticket {
                let why = shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return Err(SpoolError::Write(why));
            }
            shared.sync()
        })
        .await
        .map_err(|e| SpoolError::Sync(io::Error::other(e)))?
    }

    /// Writes what is queued now, on the calling thread, as a closing
    /// event does: for a caller that must find every event recorded so
    /// far in the file and the live feed before it reads them.
    pub fn write_queued(&self) {
        let shared = &self.handle.shared;
        shared.drain(&mut shared.side());
    }

    /// Live feed of events as they reach the spool file.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.handle.shared.follow.subscribe()
    }

    pub fn stats(&self) -> SpoolStats {
        let s = &self.handle.shared;
        SpoolStats {
            written: s.written.load(Ordering::Acquire),
            writes: s.writes.load(Ordering::Relaxed),
            wakeups: s.wakeups.load(Ordering::Relaxed),
        }
    }
}

/// Events whose `record` returns only once they are in the file: they end
/// something the agent (or an operator) observes, and the file being
/// written in queue order, everything queued before them is in it too.
pub fn writes_through(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::SessionOpened
            | EventKind::SessionClosed
            | EventKind::SessionDenied
            | EventKind::DaemonStarted
            | EventKind::DaemonStopped
    )
}

/// An estimate of the memory an event holds while queued, capped at the
/// whole queue so that one huge event still fits (alone).
fn room_for(e: &Event, cap: usize) -> u32 {
    let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let strings = [
        &e.reason,
        &e.target,
        &e.protocol,
        &e.action,
        &e.policy_id,
        &e.approver,
        &e.approval_group,
        &e.text,
    ]
    .into_iter()
    .map(len)
    .sum::<usize>();
    let caller = e.caller.as_ref().map_or(0, |c| {
        c.agent.len()
            + c.comm.len()
            + len(&c.exe)
            + c.lineage
                .iter()
                .map(|a| a.comm.len() + std::mem::size_of_val(a))
                .sum::<usize>()
    });
    let io = e.io.as_ref().map_or(0, |c| c.data.len());
    let n = std::mem::size_of::<Event>() + strings + caller + io;
    u32::try_from(n.min(cap).max(1)).unwrap_or(u32::MAX)
}

/// Every recorded event counts; decisions count by verdict.
fn count(event: &Event) {
    let m = crate::metrics::get();
    m.events_recorded.inc();
    let verdict = match (event.kind, event.verdict) {
        (EventKind::ApprovalRequested, _) => "hold",
        (
            EventKind::SessionOpened
            | EventKind::SessionDenied
            | EventKind::Statement
            | EventKind::Command
            | EventKind::Request,
            v,
        ) => v.name(),
        _ => return,
    };
    m.decision(verdict);
}

/// Opens the spool directory and starts the writer and flusher threads.
pub fn open(config: &RecordsConfig) -> Result<Recorder, SpoolError> {
    open_tuned(config, Tuning::default())
}

fn open_tuned(config: &RecordsConfig, tuning: Tuning) -> Result<Recorder, SpoolError> {
    let dir = config.spool_dir.clone();
    let dir_err = |source| SpoolError::Dir {
        path: dir.clone(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(dir_err)?;
    let next = last_segment_number(&dir).map_err(dir_err)? + 1;
    let (follow, _) = broadcast::channel(FOLLOW_CAPACITY);
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            events: Vec::new(),
            bytes: 0,
            queued: 0,
            writer: WriterState::Busy,
            closing: false,
        }),
        wake: Condvar::new(),
        room: Semaphore::new(tuning.room_bytes),
        tuning,
        written: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        last_error: Mutex::new(String::new()),
        side: Mutex::new(Side {
            out: Output {
                dir: dir.clone(),
                segment_bytes: config.segment_bytes.max(1),
                next_segment: next,
                current: None,
            },
            held: Held::default(),
            taken: Vec::new(),
        }),
        follow,
        files: Mutex::new(Files::default()),
        flush_wake: Condvar::new(),
        dirty: AtomicBool::new(false),
        interval: Duration::from_millis(config.flush_interval_ms),
        writes: AtomicU64::new(0),
        wakeups: AtomicU64::new(0),
    });
    let writer = shared.clone();
    thread::Builder::new()
        .name("blastgate-spool-w".into())
        .spawn(move || write_loop(writer))
        .map_err(dir_err)?;
    let flusher = Arc::downgrade(&shared);
    thread::Builder::new()
        .name("blastgate-spool".into())
        .spawn(move || flush_loop(flusher))
        .map_err(dir_err)?;
    Ok(Recorder {
        handle: Arc::new(Handle { shared }),
    })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the event; its ticket. Wakes the writer only if it sleeps,
    /// or if it ticks and this event cannot wait for the tick.
    fn push(&self, event: Event, room: usize) {
        let mut q = self.lock();
        q.events.push(event);
        q.bytes += room;
        q.queued += 1;
        let wake = match q.writer {
            WriterState::Sleeping => true,
            WriterState::Ticking => q.bytes >= NUDGE_BYTES,
            WriterState::Busy => false,
        };
        self.wake_writer(q, wake);
    }

    /// Wakes the writer if `wake`, once: until it looks at the queue again
    /// it counts as busy, so nobody else wakes it meanwhile.
    fn wake_writer(&self, mut q: MutexGuard<'_, Queue>, wake: bool) {
        if !wake {
            return;
        }
        q.writer = WriterState::Busy;
        drop(q);
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn mark_dirty(&self) {
        // Only the clean -> dirty transition wakes the flusher: under load
        // that is once per interval, not once per write.
        if !self.dirty.swap(true, Ordering::AcqRel) {
            let _files = self.files();
            self.flush_wake.notify_one();
        }
    }

    /// fdatasync of everything written so far, outside the lock.
    fn sync(&self) -> Result<(), SpoolError> {
        self.dirty.store(false, Ordering::Release);
        let (current, retired) = {
            let mut f = self.files();
            (f.current.clone(), std::mem::take(&mut f.retired))
        };
        for f in retired.iter().chain(current.iter()) {
            if let Err(e) = f.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(SpoolError::Sync(e));
            }
        }
        Ok(())
    }
}

/// Closes the queue however the writer thread ends, so nobody waits for
/// room that would never come back.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.room.close();
    }
}

/// Events taken from the queue, encoded, not yet in the file (the head of
/// the spool's order): normally written at once; kept across retries
/// while the disk refuses writes.
#[derive(Default)]
struct Held {
    events: Vec<Event>,
    buf: Vec<u8>,
    /// End offset in `buf` of each event's line.
    ends: Vec<usize>,
}

impl Held {
    fn take(&mut self, events: &mut Vec<Event>) {
        for e in events.iter() {
            encode(e, &mut self.buf);
            self.ends.push(self.buf.len());
        }
        self.events.append(events);
    }

    /// Forgets the first `n` events (written); returns them.
    fn written(&mut self, n: usize) -> Vec<Event> {
        if n == self.events.len() {
            self.buf.clear();
            self.ends.clear();
            return std::mem::take(&mut self.events);
        }
        let cut = n.checked_sub(1).map_or(0, |i| self.ends[i]);
        self.buf.drain(..cut);
        self.ends.drain(..n);
        for end in &mut self.ends {
            *end -= cut;
        }
        self.events.drain(..n).collect()
    }
}

/// One JSON line. Encoding an `Event` into memory cannot fail in practice;
/// if it ever did, a stub with the same identity and the error as reason
/// is written instead, so the record is not lost silently.
fn encode(e: &Event, buf: &mut Vec<u8>) {
    let start = buf.len();
    if let Err(err) = serde_json::to_writer(&mut *buf, e) {
        buf.truncate(start);
        tracing::error!(id = %e.id, error = %err, "event not serialisable; recording a stub");
        let stub = Event {
            id: e.id,
            session_id: e.session_id,
            seq: e.seq,
            ts: e.ts,
            ..Event::daemon(e.kind, e.verdict, format!("event not serialisable: {err}"))
        };
        if serde_json::to_writer(&mut *buf, &stub).is_err() {
            buf.truncate(start);
        }
    }
    buf.push(b'\n');
}

/// What writes the file, behind one lock: the writer thread at each tick,
/// or a task that cannot wait for the tick (a write-through event, a
/// flush) leading the group commit itself, with no hand-off.
struct Side {
    out: Output,
    held: Held,
    taken: Vec<Event>,
}

impl Shared {
    fn side(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes everything queued and writes it after what is held, in order;
    /// then gives back its room, tells followers, and marks the file dirty.
    fn drain(&self, side: &mut Side) {
        {
            let mut q = self.lock();
            q.bytes = 0;
            std::mem::swap(&mut q.events, &mut side.taken);
        }
        if side.taken.is_empty() && side.held.events.is_empty() {
            return;
        }
        let Side { out, held, taken } = side;
        held.take(taken);
        let (n, err) = out.write(&held.buf, &held.ends, self);
        match err {
            None => self.failing.store(false, Ordering::Release),
            Some(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        dir = %out.dir.display(),
                        error = %e,
                        "cannot write the event spool; holding events in memory and retrying"
                    );
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
            }
        }
        let done = held.written(n);
        if done.is_empty() {
            return;
        }
        let room: usize = done
            .iter()
            .map(|e| room_for(e, self.tuning.room_bytes) as usize)
            .sum();
        self.written.fetch_add(done.len() as u64, Ordering::AcqRel);
        self.room.add_permits(room);
        self.mark_dirty();
        for e in done {
            // No follower is fine; a lagging one is told it lagged.
            let _ = self.follow.send(e);
        }
    }
}

fn write_loop(shared: Arc<Shared>) {
    let _gone = WriterGone(shared.clone());
    let tick = shared.tuning.tick;
    // When the writer last took events, and when it may next write.
    let mut last_take = Instant::now();
    let mut next_write = last_take;
    loop {
        let mut q = shared.lock();
        let closing = loop {
            if shared.failing.load(Ordering::Acquire) {
                // The disk refused: retry later, taking what came meanwhile.
                q.writer = WriterState::Busy;
                q = wait_timeout(&shared.wake, q, RETRY);
                break q.closing;
            }
            if q.closing {
                break true;
            }
            if q.bytes >= NUDGE_BYTES {
                break false;
            }
            let now = Instant::now();
            if !q.events.is_empty() && now >= next_write {
                break false;
            }
            if q.events.is_empty() && now >= last_take + IDLE_AFTER {
                q.writer = WriterState::Sleeping;
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                if !q.events.is_empty() {
                    break q.closing;
                }
                continue;
            }
            q.writer = WriterState::Ticking;
            let until = if q.events.is_empty() {
                now + tick
            } else {
                next_write
            };
            q = wait_timeout(&shared.wake, q, until.saturating_duration_since(now));
        };
        q.writer = WriterState::Busy;
        let idle = q.events.is_empty();
        drop(q);
        if !idle {
            last_take = Instant::now();
            next_write = last_take + tick;
        }
        let mut side = shared.side();
        shared.drain(&mut side);
        if closing && side.held.events.is_empty() && shared.lock().events.is_empty() {
            return;
        }
    }
}

fn wait_timeout<'a>(cv: &Condvar, q: MutexGuard<'a, Queue>, d: Duration) -> MutexGuard<'a, Queue> {
    match cv.wait_timeout(q, d) {
        Ok((q, _)) => q,
        Err(p) => p.into_inner().0,
    }
}

fn flush_loop(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        {
            // Sleep until there is something to sync (or recheck every
            // second so the thread notices the spool going away).
            let files = s.files();
            if !s.dirty.load(Ordering::Acquire) {
                let _ = s.flush_wake.wait_timeout(files, Duration::from_secs(1));
            }
        }
        // Let a batch gather: writes meanwhile wake nobody.
        thread::sleep(s.interval);
        if s.dirty.load(Ordering::Acquire) {
            if let Err(e) = s.sync() {
                tracing::error!(error = %e, "fdatasync of the event spool failed; retrying");
            }
        }
    }
}

/// The writer's own state: the segment being appended to.
struct Output {
    dir: PathBuf,
    segment_bytes: u64,
    next_segment: u64,
    current: Option<Segment>,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
}

impl Output {
    /// Appends the lines ending at `ends` in `buf`, one `write(2)` per run
    /// that fits the current segment. Returns how many whole lines are in
    /// the file, and the error that stopped it, if any.
    fn write(&mut self, buf: &[u8], ends: &[usize], shared: &Shared) -> (usize, Option<io::Error>) {
        let mut done = 0;
        let mut from = 0;
        while done < ends.len() {
            if self
                .current
                .as_ref()
                .is_none_or(|s| s.bytes >= self.segment_bytes)
            {
                if let Err(e) = self.rotate(shared) {
                    return (done, Some(e));
                }
            }
            let Some(seg) = self.current.as_mut() else {
                return (done, Some(io::Error::other("no open segment")));
            };
            // Lines go in while the segment is under its size before them,
            // as when they were written one by one.
            let mut to = done + 1;
            while to < ends.len() && seg.bytes + ((ends[to - 1] - from) as u64) < self.segment_bytes
            {
                to += 1;
            }
            let run = &buf[from..ends[to - 1]];
            shared.writes.fetch_add(1, Ordering::Relaxed);
            match write_all(&seg.file, run) {
                Ok(()) => {
                    seg.bytes += run.len() as u64;
                    done = to;
                    from = ends[to - 1];
                }
                Err((n, e)) => {
                    let whole = done;
                    while done < to && ends[done] <= from + n {
                        done += 1;
                    }
                    let at_line_end = n == 0 || (done > whole && ends[done - 1] == from + n);
                    if at_line_end {
                        // The file ends on a whole line (a full disk
                        // refuses the first byte): the retry appends here,
                        // rather than leave an empty segment each time.
                        seg.bytes += n as u64;
                    } else if let Some(old) = self.current.take() {
                        // Part of a line is in the file: never append
                        // after it.
                        let mut f = shared.files();
                        f.current = None;
                        f.retired.push(old.file);
                    }
                    return (done, Some(e));
                }
            }
        }
        (done, None)
    }

    fn rotate(&mut self, shared: &Shared) -> io::Result<()> {
        let path = self.dir.join(format!(
            "{SEGMENT_PREFIX}{:012}{SEGMENT_SUFFIX}",
            self.next_segment
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        // Make the new directory entry itself durable.
        File::open(&self.dir)?.sync_all()?;
        self.next_segment += 1;
        let file = Arc::new(file);
        let mut f = shared.files();
        if let Some(old) = f.current.replace(file.clone()) {
            f.retired.push(old);
        }
        self.current = Some(Segment { file, bytes: 0 });
        Ok(())
    }
}

/// The events of one segment, in order: whole lines only. A last line
/// without its newline is being written, or was torn by a failed write
/// (its event is then written whole into a later segment), so it is left
/// out even when it reads as JSON; so is a line that does not read.
pub fn events_in(path: &Path) -> io::Result<Vec<Event>> {
    let text = fs::read(path)?;
    let whole = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(&text[..0], |i| &text[..i]);
    Ok(whole
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Event>(line).ok())
        .collect())
}

/// `write_all`, telling how much went in before an error.
fn write_all(mut f: &File, buf: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut n = 0;
    while n < buf.len() {
        match f.write(&buf[n..]) {
            Ok(0) => return Err((n, io::ErrorKind::WriteZero.into())),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((n, e)),
        }
    }
    Ok(())
}

/// Segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|r| r.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn last_segment_number(dir: &Path) -> io::Result<u64> {
    Ok(segments(dir)?.last().map_or(0, |(n, _)| *n))
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;

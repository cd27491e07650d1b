//! The durable local spool: JSON lines segment files.
//!
//! Each event is appended to the current segment file by the task that
//! records it (one `write(2)` under a short lock, no thread hand-off), so a
//! crash or SIGKILL of the daemon cannot lose an event that was recorded:
//! it is already in the kernel's page cache. A flusher thread `fdatasync`s
//! the segment at most every `records.flush_interval_ms` while events keep
//! coming, which bounds what a power loss or kernel crash can take.
//!
//! If the disk refuses a write (full, read-only), events queue in a bounded
//! backlog that the flusher retries, and once that is full, recording waits:
//! a sick disk slows sessions down instead of losing their records.
//! Followers (`blastgate events --follow`) see each event once it is in the
//! file.
//!
//! Segments are `segment-<n>.jsonl`, `n` increasing; a restarted daemon
//! always opens a new segment and never appends to an old one, so a line
//! torn by a failed write can only be the last line of a closed segment.
//! The shipper (ClickHouse) reads closed segments in order and deletes them
//! once acknowledged.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
    time::Duration,
};

use tokio::sync::{broadcast, Notify};

use super::event::{Event, EventKind};
use crate::config::RecordsConfig;

/// Events held in memory while the disk refuses writes.
const MAX_BACKLOG: usize = 65_536;
const FOLLOW_CAPACITY: usize = 4096;
pub const SEGMENT_PREFIX: &str = "segment-";
pub const SEGMENT_SUFFIX: &str = ".jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("event not serialisable: {0}")]
    Encode(String),
    #[error("syncing the spool: {0}")]
    Sync(io::Error),
}

/// A cheap, cloneable handle for appending events.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Set by a write, cleared by the flusher's fdatasync.
    dirty: AtomicBool,
    /// Wakes the flusher when the spool turns dirty or a backlog appears.
    wake: Condvar,
    /// Signalled when backlog space frees up.
    space: Notify,
    follow: broadcast::Sender<Event>,
    interval: Duration,
}

struct State {
    dir: PathBuf,
    segment_bytes: u64,
    next_segment: u64,
    current: Option<Segment>,
    /// Closed segments not yet synced.
    retired: Vec<Arc<File>>,
    /// Lines (and their events) the disk refused, oldest first.
    backlog: VecDeque<(Vec<u8>, Event)>,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
}

impl Recorder {
    /// Appends an event. Returns once it is in the segment file (or, while
    /// the disk refuses writes, in the bounded backlog); waits when the
    /// backlog is full.
    pub async fn record(&self, event: Event) -> Result<(), SpoolError> {
        count(&event);
        let mut line = serde_json::to_vec(&event).map_err(|e| SpoolError::Encode(e.to_string()))?;
        line.push(b'\n');
        let mut item = Some(Box::new((line, event)));
        loop {
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if let Some(pending) = item.take() {
                match self.shared.try_append(pending) {
                    Ok(()) => return Ok(()),
                    Err(back) => item = Some(back),
                }
            }
            space.await;
        }
    }

    /// Returns once every event recorded before the call is on stable storage.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.sync())
            .await
            .map_err(|e| SpoolError::Sync(io::Error::other(e)))?
    }

    /// Live feed of events as they reach the spool file.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.follow.subscribe()
    }
}

/// Opens the spool directory and starts the flusher thread.
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

pub fn open(config: &RecordsConfig) -> Result<Recorder, SpoolError> {
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
        state: Mutex::new(State {
            dir,
            segment_bytes: config.segment_bytes.max(1),
            next_segment: next,
            current: None,
            retired: Vec::new(),
            backlog: VecDeque::new(),
        }),
        dirty: AtomicBool::new(false),
        wake: Condvar::new(),
        space: Notify::new(),
        follow,
        interval: Duration::from_millis(config.flush_interval_ms),
    });
    let flusher = Arc::downgrade(&shared);
    thread::Builder::new()
        .name("blastgate-spool".into())
        .spawn(move || flush_loop(flusher))
        .map_err(|source| SpoolError::Dir {
            path: config.spool_dir.clone(),
            source,
        })?;
    Ok(Recorder { shared })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the line now, or queues it behind a backlog; hands it back
    /// when the backlog is full.
    fn try_append(&self, pending: Box<(Vec<u8>, Event)>) -> Result<(), Box<(Vec<u8>, Event)>> {
        let mut st = self.lock();
        if !st.backlog.is_empty() && st.backlog.len() >= MAX_BACKLOG {
            return Err(pending);
        }
        let (line, event) = *pending;
        if !st.backlog.is_empty() {
            st.backlog.push_back((line, event));
            return Ok(());
        }
        match st.append(&line) {
            Ok(()) => {
                drop(st);
                // No follower is fine; a lagging one is told it lagged.
                let _ = self.follow.send(event);
                self.mark_dirty();
            }
            Err(e) => {
                tracing::error!(
                    dir = %st.dir.display(),
                    error = %e,
                    "cannot write the event spool; holding events in memory and retrying"
                );
                st.backlog.push_back((line, event));
                drop(st);
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    fn mark_dirty(&self) {
        // Only the clean -> dirty transition wakes the flusher: under load
        // that is once per interval, not once per event.
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Retries the backlog in order; true if it is now empty.
    fn drain_backlog(&self) -> bool {
        let mut st = self.lock();
        let mut written = Vec::new();
        while let Some((line, _)) = st.backlog.front() {
            let line = line.clone();
            if st.append(&line).is_err() {
                break;
            }
            if let Some((_, e)) = st.backlog.pop_front() {
                written.push(e);
            }
        }
        let empty = st.backlog.is_empty();
        drop(st);
        if !written.is_empty() {
            for e in written {
                let _ = self.follow.send(e);
            }
            self.dirty.store(true, Ordering::Release);
            self.space.notify_waiters();
        }
        empty
    }

    /// fdatasync of everything written so far, outside the lock.
    fn sync(&self) -> Result<(), SpoolError> {
        self.dirty.store(false, Ordering::Release);
        let (current, retired) = {
            let mut st = self.lock();
            let current = st.current.as_ref().map(|s| s.file.clone());
            (current, std::mem::take(&mut st.retired))
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

fn flush_loop(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        {
            // Sleep until there is something to do (or recheck every second
            // so the thread notices the daemon dropping the spool).
            let st = s.lock();
            let idle = !s.dirty.load(Ordering::Acquire) && st.backlog.is_empty();
            if idle {
                let _ = s.wake.wait_timeout(st, Duration::from_secs(1));
            }
        }
        // Let a batch gather: producers' writes meanwhile wake nobody.
        thread::sleep(s.interval);
        let backlog_clear = s.drain_backlog();
        if s.dirty.load(Ordering::Acquire) {
            if let Err(e) = s.sync() {
                tracing::error!(error = %e, "fdatasync of the event spool failed; retrying");
            }
        }
        if !backlog_clear {
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl State {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.bytes >= self.segment_bytes)
        {
            self.rotate()?;
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        if let Err(e) = (&*seg.file).write_all(line) {
            // A partial line may be in the file: never append after it.
            if let Some(old) = self.current.take() {
                self.retired.push(old.file);
            }
            return Err(e);
        }
        seg.bytes += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
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
        if let Some(old) = self.current.replace(Segment {
            file: Arc::new(file),
            bytes: 0,
        }) {
            self.retired.push(old.file);
        }
        Ok(())
    }
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
mod tests {
    use super::*;
    use crate::records::event::{EventKind, Verdict};

    fn config(dir: &Path, segment_bytes: u64) -> RecordsConfig {
        RecordsConfig {
            spool_dir: dir.to_owned(),
            segment_bytes,
            ..RecordsConfig::default()
        }
    }

    fn read_all(dir: &Path) -> Vec<Event> {
        let mut out = Vec::new();
        for (_, p) in segments(dir).unwrap() {
            for line in fs::read_to_string(p).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn events_are_on_disk_in_order_after_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = open(&config(tmp.path(), 1 << 20)).unwrap();
        let mut sent = Vec::new();
        for i in 0..500 {
            let e = Event::daemon(EventKind::DaemonStarted, Verdict::Allow, format!("e{i}"));
            sent.push(e.id);
            rec.record(e).await.unwrap();
        }
        rec.flush().await.unwrap();
        let got: Vec<_> = read_all(tmp.path()).into_iter().map(|e| e.id).collect();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn segments_rotate_and_a_restart_never_appends_to_an_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = open(&config(tmp.path(), 2000)).unwrap();
        for i in 0..50 {
            rec.record(Event::daemon(
                EventKind::DaemonStarted,
                Verdict::Allow,
                format!("{i}"),
            ))
            .await
            .unwrap();
            rec.flush().await.unwrap();
        }
        let before = segments(tmp.path()).unwrap();
        assert!(before.len() > 2, "{before:?}");
        let rec2 = open(&config(tmp.path(), 2000)).unwrap();
        rec2.record(Event::daemon(EventKind::DaemonStarted, Verdict::Allow, "x"))
            .await
            .unwrap();
        rec2.flush().await.unwrap();
        let after = segments(tmp.path()).unwrap();
        assert_eq!(after.len(), before.len() + 1);
        assert!(after.last().unwrap().0 > before.last().unwrap().0);
        assert_eq!(read_all(tmp.path()).len(), 51);
    }

    #[tokio::test]
    async fn a_recorded_event_is_in_the_file_before_any_flush() {
        // What makes a SIGKILLed daemon lose nothing: record() returns only
        // once the line is in the file (page cache), not at the next fsync.
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path(), 1 << 20);
        cfg.flush_interval_ms = 60_000;
        let rec = open(&cfg).unwrap();
        let e = Event::daemon(EventKind::DaemonStarted, Verdict::Allow, "x");
        rec.record(e.clone()).await.unwrap();
        let got = read_all(tmp.path());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, e.id);
    }

    #[tokio::test]
    async fn a_refused_write_is_held_and_retried_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = open(&config(tmp.path(), 1 << 20)).unwrap();
        let first = Event::daemon(EventKind::DaemonStarted, Verdict::Allow, "before");
        rec.record(first.clone()).await.unwrap();
        // The next write must open a new segment in a directory that does
        // not exist: a real I/O error, whoever runs the test.
        let gone = tmp.path().join("gone");
        {
            let mut st = rec.shared.lock();
            st.segment_bytes = 1;
            st.dir = gone.clone();
        }
        let held: Vec<Event> = (0..3)
            .map(|i| {
                Event::daemon(
                    EventKind::DaemonStarted,
                    Verdict::Allow,
                    format!("held {i}"),
                )
            })
            .collect();
        for e in &held {
            rec.record(e.clone()).await.unwrap();
        }
        assert_eq!(
            rec.shared.lock().backlog.len(),
            3,
            "refused events are held, not dropped"
        );
        fs::create_dir(&gone).unwrap();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while !rec.shared.lock().backlog.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(drained.is_ok(), "backlog never drained");
        let mut ids: Vec<_> = read_all(tmp.path()).into_iter().map(|e| e.id).collect();
        ids.extend(read_all(&gone).into_iter().map(|e| e.id));
        let mut want = vec![first.id];
        want.extend(held.iter().map(|e| e.id));
        assert_eq!(ids, want, "nothing lost, nothing reordered");
    }

    #[tokio::test]
    async fn followers_see_events_after_they_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = open(&config(tmp.path(), 1 << 20)).unwrap();
        let mut sub = rec.subscribe();
        let e = Event::daemon(EventKind::DaemonStarted, Verdict::Allow, "x");
        rec.record(e.clone()).await.unwrap();
        let got = sub.recv().await.unwrap();
        assert_eq!(got.id, e.id);
        assert_eq!(read_all(tmp.path()).len(), 1);
    }
}

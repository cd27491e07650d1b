//! The durable local spool: JSON lines segment files, fsync'd in batches.
//!
//! Producers (sessions, the control server) hand events to a bounded channel
//! and wait when it is full, so a slow disk slows sessions down instead of
//! losing records. One writer thread drains the channel every
//! `records.flush_interval_ms` while events keep coming, writes what has
//! accumulated as one batch, `fdatasync`s it, and only then publishes the
//! events to live followers (`blastgate events --follow`), so a follower
//! never sees an event that a crash could still lose.
//!
//! Segments are `segment-<n>.jsonl`, `n` increasing; a restarted daemon
//! always opens a new segment and never appends to an old one, so a line
//! torn by a crash can only be the last line of a closed segment. The
//! shipper (ClickHouse) reads closed segments in order and deletes them once
//! acknowledged.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::event::Event;
use crate::config::RecordsConfig;

const CHANNEL_CAPACITY: usize = 8192;
const MAX_BATCH: usize = 4096;
const FOLLOW_CAPACITY: usize = 4096;
pub const SEGMENT_PREFIX: &str = "segment-";
pub const SEGMENT_SUFFIX: &str = ".jsonl";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("the spool writer has stopped; the event was not recorded")]
    Closed,
}

enum Msg {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

/// A cheap, cloneable handle for appending events.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    follow: broadcast::Sender<Event>,
}

impl Recorder {
    /// Appends an event; waits while the spool is backed up.
    pub async fn record(&self, event: Event) -> Result<(), SpoolError> {
        self.tx
            .send(Msg::Event(Box::new(event)))
            .await
            .map_err(|_| SpoolError::Closed)
    }

    /// Returns once every event recorded before the call is on disk.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)
    }

    /// Live feed of events as they become durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.follow.subscribe()
    }
}

/// Opens the spool directory and starts the writer thread.
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
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (follow, _) = broadcast::channel(FOLLOW_CAPACITY);
    let writer = Writer {
        dir,
        segment_bytes: config.segment_bytes.max(1),
        next_segment: next,
        current: None,
        follow: follow.clone(),
        interval: Duration::from_millis(config.flush_interval_ms),
    };
    thread::Builder::new()
        .name("blastgate-spool".into())
        .spawn(move || writer.run(rx))
        .map_err(|source| SpoolError::Dir {
            path: config.spool_dir.clone(),
            source,
        })?;
    Ok(Recorder { tx, follow })
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

struct Segment {
    file: File,
    bytes: u64,
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    next_segment: u64,
    current: Option<Segment>,
    follow: broadcast::Sender<Event>,
    interval: Duration,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        // Park until the first message after an idle spell (one wake-up),
        // then let a batch gather for one interval while nobody is parked:
        // producers' sends then wake no thread, which matters on the
        // connection path far more than the batching delay does.
        while let Some(first) = rx.blocking_recv() {
            let mut closed = false;
            let mut next = Some(first);
            loop {
                while let Some(m) = next.take() {
                    match m {
                        Msg::Event(e) => batch.push(*e),
                        Msg::Flush(ack) => flushes.push(ack),
                    }
                    if batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => next = Some(m),
                            Err(mpsc::error::TryRecvError::Empty) => {}
                            Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                        }
                    }
                }
                self.write_durably(&batch);
                for e in batch.drain(..) {
                    // No follower is fine; a lagging one is told it lagged.
                    let _ = self.follow.send(e);
                }
                for ack in flushes.drain(..) {
                    let _ = ack.send(());
                }
                if closed {
                    break;
                }
                thread::sleep(self.interval);
                match rx.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(_) => break,
                }
            }
        }
        if let Some(seg) = self.current.take() {
            let _ = seg.file.sync_all();
        }
    }

    /// Writes and syncs a batch, retrying until the disk takes it: the
    /// senders wait meanwhile, which is the point.
    fn write_durably(&mut self, batch: &[Event]) {
        if batch.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for e in batch {
            // Serialising our own struct cannot fail; skip defensively if it does.
            if serde_json::to_writer(&mut buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match self.append(&buf) {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(
                        dir = %self.dir.display(),
                        error = %e,
                        "cannot write the event spool; sessions are held until it can"
                    );
                    // A failed write may have left a partial line: start a
                    // fresh segment so every segment stays line-aligned.
                    self.current = None;
                    thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self
            .current
            .as_ref()
            .is_none_or(|s| s.bytes >= self.segment_bytes)
        {
            if let Some(old) = self.current.take() {
                old.file.sync_all()?;
            }
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
            self.current = Some(Segment { file, bytes: 0 });
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(io::Error::other("no open segment"));
        };
        seg.file.write_all(buf)?;
        seg.file.sync_data()?;
        seg.bytes += buf.len() as u64;
        Ok(())
    }
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
    async fn followers_see_events_after_they_are_durable() {
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

//! Ships the spool to ClickHouse, in order, and deletes a segment only
//! after ClickHouse has acknowledged every line of it.
//!
//! Progress is a cursor file in the spool directory (segment, line, byte
//! offset), written atomically after each acknowledged batch. After a crash
//! the batch since the last cursor is sent again: with the same boundaries
//! it carries the same `insert_deduplication_token` and is dropped by the
//! server; with different ones (more lines had arrived), the duplicated
//! rows share their whole sort key and collapse in the ReplacingMergeTree,
//! and every shipped view reads `FINAL`. An outage only makes the shipper
//! wait and retry with backoff; the proxy never waits on it. On a cluster
//! an INSERT is acknowledged once every shard has its rows; a shard down
//! fails it, and the retry's shards drop the part they already have by the
//! same token.

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    rowbinary::{Blocks, EVENT_COLUMNS, IO_COLUMNS, SESSION_COLUMNS},
    wrap, ChError,
};
use crate::{config::ClickhouseConfig, records::spool};

const CURSOR_FILE: &str = "shipped.cursor";
const SPOOL_ID_FILE: &str = "spool.id";
const POLL: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub segment: u64,
    /// Lines of `segment` already acknowledged.
    pub line: u64,
    /// Byte offset just after them.
    pub offset: u64,
}

fn cursor_path(dir: &Path) -> PathBuf {
    dir.join(CURSOR_FILE)
}

pub fn load_cursor(dir: &Path) -> Cursor {
    std::fs::read(cursor_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the cursor durably.
fn save_cursor(dir: &Path, c: &Cursor) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    write_durably(dir, CURSOR_FILE, &bytes)
}

/// `dir/name` replaced whole or not at all: temp file, fsync, rename.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// This spool's identity, made on first use and kept beside its segments.
/// It is part of every batch's deduplication token: spools number their
/// segments and lines alike, so without it two runners' batches could
/// carry one token and the server would drop the second as a copy of the
/// first.
pub fn spool_id(dir: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(dir.join(SPOOL_ID_FILE)) {
        Ok(text) => {
            if let Ok(id) = uuid::Uuid::parse_str(text.trim()) {
                return Ok(id.to_string());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = uuid::Uuid::new_v4().to_string();
    write_durably(dir, SPOOL_ID_FILE, id.as_bytes())?;
    Ok(id)
}

/// One batch read from the spool, already encoded for its three tables.
struct Batch {
    segment: u64,
    first_line: u64,
    /// (table, columns, RowBinaryWithNamesAndTypes block, rows).
    tables: [Table; 3],
    /// Events in the batch (rows of `events` and `io`).
    events: usize,
    /// The first event's timestamp, µs since the epoch.
    first_ts: Option<i64>,
    lines: u64,
    /// Where the spool is acknowledged up to once this batch is.
    next: Cursor,
    /// A newer segment exists, so this one will not grow any more.
    closed: bool,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
    data: bytes::Bytes,
    rows: usize,
}

type Read = tokio::task::JoinHandle<std::io::Result<Option<Batch>>>;

pub struct Shipper {
    pub cfg: ClickhouseConfig,
    pub spool_dir: PathBuf,
    pub batch: usize,
    /// Warn when the unshipped spool grows past this.
    pub warn_bytes: u64,
}

impl Shipper {
    fn read(&self, from: Cursor) -> Read {
        let dir = self.spool_dir.clone();
        let max = self.batch;
        tokio::task::spawn_blocking(move || read_batch(&dir, from, max))
    }

    /// Ships until `stop`. The next batch is read from the spool while the
    /// current one is in flight; batches are still acknowledged, and the
    /// cursor moved, strictly in spool order.
    pub async fn run(self, stop: CancellationToken) {
        let client = match super::client(&self.cfg) {
            Ok(c) => c.with_database(self.cfg.database.clone()),
            Err(e) => {
                tracing::error!(error = %e, "clickhouse shipping disabled");
                return;
            }
        };
        let mut migrated = false;
        let mut backoff = Duration::from_millis(500);
        let mut warned = false;
        let mut acked = load_cursor(&self.spool_dir);
        remove_segments_before(&self.spool_dir, acked.segment);
        // A batch sent but not acknowledged: sent again as is.
        let mut unacked: Option<Batch> = None;
        let mut prefetch: Option<Read> = None;
        let spool_id = loop {
            match spool_id(&self.spool_dir) {
                Ok(id) => break id,
                Err(e) => {
                    tracing::error!(error = %e, "the spool's id cannot be kept; events stay in the spool");
                    if sleep_or_stop(backoff, &stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        loop {
            if !migrated {
                match super::schema::migrate(&self.cfg).await {
                    Ok(v) => {
                        tracing::info!(version = v, url = %self.cfg.url, "clickhouse schema ready");
                        migrated = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "clickhouse not ready; events stay in the spool");
                        if sleep_or_stop(backoff, &stop).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let next = match unacked.take() {
                Some(b) => Ok(Some(b)),
                None => {
                    let read = prefetch.take().unwrap_or_else(|| self.read(acked));
                    match read.await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "spool reader crashed");
                            return;
                        }
                    }
                }
            };
            let next = match next {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool for shipping");
                    if sleep_or_stop(backoff, &stop).await {
                        return;
                    }
                    continue;
                }
            };
            let metrics = crate::metrics::get();
            let (segments, pending) = spool_size(&self.spool_dir);
            metrics.spool_segments.set(segments as i64);
            metrics.spool_bytes.set(pending as i64);
            metrics.shipping_lag_seconds.set(
                next.as_ref()
                    .and_then(|b| b.first_ts)
                    .and_then(|ts| {
                        let t = std::time::UNIX_EPOCH
                            + Duration::from_micros(u64::try_from(ts).unwrap_or(0));
                        t.elapsed().ok()
                    })
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
            let Some(batch) = next else {
                if pending > self.warn_bytes && !warned {
                    tracing::warn!(
                        bytes = pending,
                        "the unshipped spool is over records.max_spool_bytes"
                    );
                    warned = true;
                } else if pending <= self.warn_bytes {
                    warned = false;
                }
                if sleep_or_stop(POLL, &stop).await {
                    return;
                }
                continue;
            };
            if batch.lines > 0 && prefetch.is_none() {
                prefetch = Some(self.read(batch.next));
            }
            match self.send(&client, &spool_id, &batch).await {
                Ok(()) => {
                    metrics.events_shipped.inc_by(batch.events as u64);
                    backoff = Duration::from_millis(500);
                    acked = batch.next;
                    if let Err(e) = save_cursor(&self.spool_dir, &acked) {
                        tracing::error!(error = %e, "saving the shipping cursor");
                    }
                    if batch.lines == 0 && batch.closed {
                        remove_segments_before(&self.spool_dir, acked.segment);
                    }
                }
                Err(e) => {
                    metrics.insert_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "shipping to clickhouse failed; retrying");
                    unacked = Some(batch);
                    if sleep_or_stop(backoff, &stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    async fn send(
        &self,
        client: &clickhouse::Client,
        spool_id: &str,
        b: &Batch,
    ) -> Result<(), ChError> {
        let token = format!(
            "blastgate-{spool_id}-{}-{}-{}",
            b.segment,
            b.first_line,
            b.first_line + b.lines
        );
        for t in &b.tables {
            self.insert(client, t, &token).await?;
        }
        Ok(())
    }

    /// One INSERT per table per batch. The token is the batch's place in the
    /// spool (which spool, segment, lines), so a batch re-sent after a crash
    /// is dropped by the server, and only such a batch.
    async fn insert(
        &self,
        client: &clickhouse::Client,
        t: &Table,
        token: &str,
    ) -> Result<(), ChError> {
        if t.rows == 0 {
            return Ok(());
        }
        let err = wrap(&self.cfg);
        let columns = t
            .columns
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut insert = client
            .insert_formatted_with(format!(
                "INSERT INTO `{}` ({columns}) FORMAT RowBinaryWithNamesAndTypes",
                t.name
            ))
            .with_setting("insert_deduplication_token", format!("{token}-{}", t.name));
        if self.cfg.cluster.is_some() {
            // Acknowledged only once every shard has its rows (the shards
            // deduplicate by the token); the default queues them on the
            // receiving node and acknowledges at once, so a node lost
            // before forwarding would lose what the spool then deleted.
            insert = insert.with_setting("distributed_foreground_insert", "1");
        }
        insert.send(t.data.clone()).await.map_err(&err)?;
        insert.end().await.map_err(&err)
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

/// Segment files and their bytes.
fn spool_size(dir: &Path) -> (usize, u64) {
    spool::segments(dir)
        .map(|s| {
            let bytes = s
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            (s.len(), bytes)
        })
        .unwrap_or((0, 0))
}

/// Segments wholly acknowledged (every one before the cursor's): deleted.
/// Also after a crash that came between the cursor and the deletion.
fn remove_segments_before(dir: &Path, segment: u64) {
    let Ok(segs) = spool::segments(dir) else {
        return;
    };
    for (_, path) in segs.iter().filter(|(n, _)| *n < segment) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::error!(error = %e, path = %path.display(), "deleting a shipped segment");
        }
    }
}

/// The next batch from `from`: complete lines only (a line still being
/// written is left for the next round). `None` when there is nothing to do.
/// Reads only: what is deleted is decided by acknowledgements.
fn read_batch(dir: &Path, from: Cursor, max: usize) -> std::io::Result<Option<Batch>> {
    let segments = spool::segments(dir)?;
    for (i, (n, path)) in segments.iter().enumerate() {
        if *n < from.segment {
            continue;
        }
        let start = if *n > from.segment {
            Cursor {
                segment: *n,
                line: 0,
                offset: 0,
            }
        } else {
            from
        };
        let closed = i + 1 < segments.len();
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(start.offset))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut blocks = Blocks::default();
        let mut lines = 0u64;
        let mut offset = start.offset;
        let mut line = Vec::with_capacity(4096);
        while (lines as usize) < max {
            line.clear();
            let len = reader.read_until(b'\n', &mut line)?;
            if len == 0 || line.last() != Some(&b'\n') {
                break;
            }
            offset += len as u64;
            lines += 1;
            if let Err(e) = blocks.push_line(&line[..len - 1]) {
                // A line torn by a failed write; its event was re-written
                // whole into a later segment by the spool's retry.
                tracing::warn!(segment = *n, error = %e, "skipping a torn spool line");
            }
        }
        if lines == 0 && !closed {
            return Ok(None);
        }
        let next = if lines == 0 {
            // Closed and fully read: acknowledged, it moves the cursor on.
            Cursor {
                segment: *n + 1,
                line: 0,
                offset: 0,
            }
        } else {
            Cursor {
                segment: *n,
                line: start.line + lines,
                offset,
            }
        };
        let events = blocks.events();
        let Blocks {
            events: ev,
            sessions,
            io,
            first_ts,
        } = blocks;
        let table = |name, columns, b: super::rowbinary::Block| Table {
            name,
            columns,
            rows: b.rows,
            data: bytes::Bytes::from(b.buf),
        };
        return Ok(Some(Batch {
            segment: *n,
            first_line: start.line,
            tables: [
                table("events", EVENT_COLUMNS, ev),
                table("sessions", SESSION_COLUMNS, sessions),
                table("io", IO_COLUMNS, io),
            ],
            events,
            first_ts,
            lines,
            next,
            closed,
        }));
    }
    Ok(None)
}

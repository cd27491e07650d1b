//! What the spool promises: nothing dropped, nothing reordered, a full
//! queue slows `record`, a sick disk holds events, `flush` means stable
//! storage, `session_closed` is the last line of its session.

use super::*;
use crate::records::event::{EventKind, Verdict};
use uuid::Uuid;

fn config(dir: &Path, segment_bytes: u64) -> RecordsConfig {
    RecordsConfig {
        spool_dir: dir.to_owned(),
        segment_bytes,
        ..RecordsConfig::default()
    }
}

/// A tick so long that only `flush`, a write-through event or closing the
/// recorder gets anything written.
fn lazy(room_bytes: usize) -> Tuning {
    Tuning {
        room_bytes,
        tick: Duration::from_secs(3600),
    }
}

fn read_all(dir: &Path) -> Vec<Event> {
    let mut out = Vec::new();
    for (_, p) in segments(dir).unwrap_or_default() {
        for line in fs::read_to_string(p).unwrap_or_default().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn ids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn session_event(kind: EventKind, sid: Uuid, seq: u32) -> Event {
    let mut e = Event::daemon(kind, Verdict::Allow, format!("{sid} {seq}"));
    e.session_id = sid;
    e.seq = seq;
    e
}

fn statement(i: u32) -> Event {
    let mut e = session_event(EventKind::Statement, Uuid::nil(), i);
    e.text = Some(format!("SELECT {i}"));
    e
}

/// Polls until `pred` holds (real time: the writer is a thread).
async fn eventually(what: &str, secs: u64, mut pred: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < end, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn unwritten(rec: &Recorder) -> u64 {
    let s = &rec.handle.shared;
    s.lock().queued - s.written.load(Ordering::Acquire)
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
    assert_eq!(ids(&read_all(tmp.path())), sent);
}

#[tokio::test]
async fn segments_rotate_and_a_restart_never_appends_to_an_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open(&config(tmp.path(), 2000)).unwrap();
    for i in 0..50 {
        rec.record(statement(i)).await.unwrap();
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
async fn a_batch_larger_than_a_segment_is_split_at_line_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1000), lazy(MAX_QUEUED_BYTES)).unwrap();
    let sent: Vec<Event> = (0..200).map(statement).collect();
    for e in &sent {
        rec.record(e.clone()).await.unwrap();
    }
    rec.flush().await.unwrap();
    let segs = segments(tmp.path()).unwrap();
    assert!(
        segs.len() > 10,
        "one write of 200 lines, {} segments",
        segs.len()
    );
    for (_, p) in &segs {
        let len = fs::metadata(p).unwrap().len();
        let line = 1 + fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap() as u64;
        assert!(len < 1000 + line, "{} is {len} bytes", p.display());
    }
    assert_eq!(ids(&read_all(tmp.path())), ids(&sent));
}

#[tokio::test]
async fn session_closed_is_in_the_file_with_everything_before_it_when_record_returns() {
    // What bounds the loss window where the agent can see it: a session's
    // end is not reported before its records are in the page cache.
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1 << 20), lazy(MAX_QUEUED_BYTES)).unwrap();
    let sid = Uuid::now_v7();
    // The opening is in the file when `record` returns: a served session
    // always has it.
    let opened = session_event(EventKind::SessionOpened, sid, 0);
    rec.record(opened.clone()).await.unwrap();
    assert_eq!(
        ids(&read_all(tmp.path())),
        ids(std::slice::from_ref(&opened))
    );
    let mut sent = vec![opened];
    let statements: Vec<Event> = (1..=10)
        .map(|i| session_event(EventKind::Statement, sid, i))
        .collect();
    for e in &statements {
        rec.record(e.clone()).await.unwrap();
    }
    sent.extend(statements);
    assert_eq!(
        read_all(tmp.path()).len(),
        1,
        "with an hour-long tick nothing more is written before it must be"
    );
    let close = session_event(EventKind::SessionClosed, sid, 11);
    sent.push(close.clone());
    rec.record(close).await.unwrap();
    assert_eq!(ids(&read_all(tmp.path())), ids(&sent));
    // A denial too: the agent sees the refusal only after it is written.
    let denied = session_event(EventKind::SessionDenied, Uuid::now_v7(), 0);
    rec.record(denied.clone()).await.unwrap();
    assert_eq!(read_all(tmp.path()).last().map(|e| e.id), Some(denied.id));
}

#[tokio::test]
async fn an_event_reaches_the_file_within_the_tick_without_any_flush() {
    // The loss window on SIGKILL: an ordinary event is queued, and the
    // writer puts it in the page cache within a tick or so.
    let tmp = tempfile::tempdir().unwrap();
    let rec = open(&config(tmp.path(), 1 << 20)).unwrap();
    for i in 0..20 {
        let e = statement(i);
        let t = Instant::now();
        rec.record(e.clone()).await.unwrap();
        eventually("a statement in the file", 5, || {
            read_all(tmp.path()).last().map(|l| l.id) == Some(e.id)
        })
        .await;
        // Generous for a loaded 2-vCPU machine; the tick is 1 ms.
        let took = t.elapsed();
        assert!(took < Duration::from_millis(500), "took {took:?}");
        // Let the writer fall asleep now and then: the wake-up path too.
        if i % 5 == 4 {
            tokio::time::sleep(IDLE_AFTER * 2).await;
        }
    }
}

#[tokio::test]
async fn flush_means_written_and_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1 << 20), lazy(MAX_QUEUED_BYTES)).unwrap();
    let sent: Vec<Event> = (0..1000).map(statement).collect();
    for e in &sent {
        rec.record(e.clone()).await.unwrap();
    }
    // The first event after idle may wake the writer (as under load it did
    // in a full-suite run), so only "not everything yet" holds before the
    // flush; after it, everything.
    assert!(read_all(tmp.path()).len() < sent.len());
    rec.flush().await.unwrap();
    assert_eq!(ids(&read_all(tmp.path())), ids(&sent));
    assert!(
        !rec.handle.shared.dirty.load(Ordering::Acquire),
        "flush returned before the fdatasync"
    );
    // Nothing recorded since: a flush returns at once.
    tokio::time::timeout(Duration::from_secs(5), rec.flush())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dropping_the_last_recorder_writes_what_is_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1 << 20), lazy(MAX_QUEUED_BYTES)).unwrap();
    let sent: Vec<Event> = (0..100).map(statement).collect();
    for e in &sent {
        rec.record(e.clone()).await.unwrap();
    }
    // The first event after idle may wake the writer, so what is in the
    // file before the close is not asserted; only that the close writes
    // all of it, in order.
    let clone = rec.clone();
    drop(rec);
    drop(clone);
    eventually("the queue written at close", 5, || {
        read_all(tmp.path()).len() == sent.len()
    })
    .await;
    assert_eq!(ids(&read_all(tmp.path())), ids(&sent));
}

/// A spool whose next write must open a new segment in a directory that
/// is gone: a real I/O error, whoever runs the test. The first event is
/// written (and lost with the directory).
async fn sick_disk(room_bytes: usize) -> (tempfile::TempDir, PathBuf, Recorder) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let rec = open_tuned(
        &config(&dir, 1),
        Tuning {
            room_bytes,
            tick: TICK,
        },
    )
    .unwrap();
    rec.record(Event::daemon(
        EventKind::DaemonStarted,
        Verdict::Allow,
        "before",
    ))
    .await
    .unwrap();
    fs::remove_dir_all(&dir).unwrap();
    (tmp, dir, rec)
}

#[tokio::test]
async fn a_refused_write_is_held_and_retried_in_order() {
    let (_tmp, dir, rec) = sick_disk(MAX_QUEUED_BYTES).await;
    let sid = Uuid::now_v7();
    let held: Vec<Event> = (0..3)
        .map(|i| session_event(EventKind::Statement, sid, i))
        .chain([session_event(EventKind::SessionClosed, sid, 3)])
        .collect();
    for e in &held {
        // The close returns too: its event is held, not lost.
        tokio::time::timeout(Duration::from_secs(5), rec.record(e.clone()))
            .await
            .unwrap()
            .unwrap();
    }
    eventually("the writer failing", 5, || {
        rec.handle.shared.failing.load(Ordering::Acquire)
    })
    .await;
    assert_eq!(unwritten(&rec), 4, "refused events are held, not dropped");
    assert!(
        matches!(rec.flush().await, Err(SpoolError::Write(_))),
        "flush cannot claim stable storage"
    );
    fs::create_dir(&dir).unwrap();
    eventually("the held events written", 10, || unwritten(&rec) == 0).await;
    rec.flush().await.unwrap();
    assert_eq!(
        ids(&read_all(&dir)),
        ids(&held),
        "nothing lost, nothing reordered"
    );
}

#[tokio::test]
async fn a_full_queue_slows_record_and_drops_nothing() {
    let one = room_for(&statement(0), usize::MAX) as usize;
    let (_tmp, dir, rec) = sick_disk(3 * one).await;
    eventually("the first event's room given back", 5, || {
        unwritten(&rec) == 0
    })
    .await;
    let sent: Vec<Event> = (0..5).map(statement).collect();
    for e in &sent[..3] {
        tokio::time::timeout(Duration::from_secs(5), rec.record(e.clone()))
            .await
            .expect("room for three")
            .unwrap();
    }
    // The queue is full and the disk refuses: the next record waits.
    let waiting = {
        let rec = rec.clone();
        let rest = sent[3..].to_vec();
        tokio::spawn(async move {
            for e in rest {
                rec.record(e).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiting.is_finished(),
        "record returned with the queue full"
    );
    assert_eq!(unwritten(&rec), 3);
    fs::create_dir(&dir).unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("record resumes once the disk takes writes")
        .unwrap();
    rec.flush().await.unwrap();
    assert_eq!(ids(&read_all(&dir)), ids(&sent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_lose_nothing_and_close_last() {
    const SESSIONS: usize = 64;
    const STATEMENTS: u32 = 150;
    let tmp = tempfile::tempdir().unwrap();
    // Small segments and a small queue: rotation and backpressure both
    // happen while sessions race.
    let rec = open_tuned(
        &config(tmp.path(), 64 << 10),
        Tuning {
            room_bytes: 64 << 10,
            tick: TICK,
        },
    )
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let rec = rec.clone();
        tasks.push(tokio::spawn(async move {
            let sid = Uuid::now_v7();
            rec.record(session_event(EventKind::SessionOpened, sid, 0))
                .await
                .unwrap();
            for seq in 1..=STATEMENTS {
                rec.record(session_event(EventKind::Statement, sid, seq))
                    .await
                    .unwrap();
                if seq % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            rec.record(session_event(EventKind::SessionClosed, sid, STATEMENTS + 1))
                .await
                .unwrap();
            sid
        }));
    }
    let mut sids = Vec::new();
    for t in tasks {
        sids.push(t.await.unwrap());
    }
    rec.flush().await.unwrap();
    let all = read_all(tmp.path());
    assert_eq!(all.len(), SESSIONS * (STATEMENTS as usize + 2));
    let unique: std::collections::HashSet<_> = all.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), all.len(), "an event twice");
    for sid in sids {
        let mine: Vec<&Event> = all.iter().filter(|e| e.session_id == sid).collect();
        let seqs: Vec<u32> = mine.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (0..=STATEMENTS + 1).collect::<Vec<_>>(),
            "session {sid}"
        );
        assert_eq!(mine.last().map(|e| e.kind), Some(EventKind::SessionClosed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_see_every_event_in_spool_order() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open(&config(tmp.path(), 1 << 20)).unwrap();
    let mut sub = rec.subscribe();
    const N: usize = 3000;
    let follower = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            match sub.recv().await {
                Ok(e) => got.push(e.id),
                Err(e) => panic!("follower: {e}"),
            }
        }
        got
    });
    for i in 0..N as u32 {
        rec.record(statement(i)).await.unwrap();
        if i % 500 == 0 {
            // Stay within the broadcast buffer: a slow follower is told it
            // lagged, which this test is not about.
            rec.flush().await.unwrap();
        }
    }
    rec.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ids(&read_all(tmp.path())));
}

/// One line per event, `len` bytes each with its newline.
fn lines_of(n: usize, len: usize) -> (Vec<u8>, Vec<usize>) {
    let (mut buf, mut ends) = (Vec::new(), Vec::new());
    for _ in 0..n {
        buf.extend(std::iter::repeat_n(b'x', len - 1));
        buf.push(b'\n');
        ends.push(buf.len());
    }
    (buf, ends)
}

/// Attack (red team): a full disk refuses every write at its first byte.
/// Each retry opened a new segment, so an outage left an empty file every
/// 200 ms. A write refused at a line's start now keeps its segment.
#[tokio::test]
async fn a_write_refused_at_its_first_byte_keeps_its_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1 << 20), lazy(MAX_QUEUED_BYTES)).unwrap();
    let shared = &rec.handle.shared;
    // /dev/full: every write(2) fails with ENOSPC, nothing written.
    let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut out = Output {
        dir: tmp.path().to_owned(),
        segment_bytes: 1 << 20,
        next_segment: 1000,
        current: Some(Segment {
            file: Arc::new(full),
            bytes: 0,
        }),
    };
    let before = segments(tmp.path()).unwrap().len();
    let (buf, ends) = lines_of(3, 100);
    for _ in 0..5 {
        let (done, err) = out.write(&buf, &ends, shared);
        assert_eq!(done, 0);
        assert_eq!(
            err.and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC),
            "the disk's own error"
        );
        assert!(out.current.is_some(), "the segment was given up");
    }
    assert_eq!(segments(tmp.path()).unwrap().len(), before, "new segments");
}

/// A write cut in the middle of a line (here a non-blocking pipe that
/// takes 64 KiB of a longer run) leaves part of a line in the file: the
/// lines before the cut count as written, and nothing is ever appended
/// after the torn one.
#[tokio::test]
async fn a_write_torn_mid_line_retires_its_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = open_tuned(&config(tmp.path(), 1 << 20), lazy(MAX_QUEUED_BYTES)).unwrap();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
        0
    );
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (_read, write) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    };
    let mut out = Output {
        dir: tmp.path().to_owned(),
        segment_bytes: 1 << 20,
        next_segment: 1000,
        current: Some(Segment {
            file: Arc::new(write),
            bytes: 0,
        }),
    };
    // 1,000-byte lines: the pipe's 65,536 bytes end inside line 66.
    let (buf, ends) = lines_of(100, 1000);
    let (done, err) = out.write(&buf, &ends, &rec.handle.shared);
    assert_eq!(done, 65, "whole lines before the cut");
    assert!(err.is_some());
    assert!(out.current.is_none(), "appending after a torn line");
}

/// Readers take whole lines only: a last line without its newline (being
/// written, or torn and written again later) is not an event yet, even
/// when it reads as JSON; that made `blastgate events` show an event
/// twice.
#[test]
fn readers_take_whole_lines_only() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("segment-000000000001.jsonl");
    let (a, b) = (statement(1), statement(2));
    let text = format!(
        "{}\nnot json\n{}",
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    fs::write(&path, text).unwrap();
    assert_eq!(ids(&events_in(&path).unwrap()), vec![a.id]);
    fs::write(&path, "").unwrap();
    assert!(events_in(&path).unwrap().is_empty());
}

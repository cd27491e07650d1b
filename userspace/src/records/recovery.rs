//! Closing the books of a daemon that died mid-session.
//!
//! A crash or SIGKILL loses no recorded event (see `spool`), but sessions
//! that were in flight never got their `session_closed`. At start-up the
//! daemon reads the previous run's spool segments and closes each such
//! session with verdict `error` and reason "interrupted", so every opened
//! session has exactly one close and "open forever" cannot hide anything.

use std::{collections::HashMap, io, path::Path, time::SystemTime};

use uuid::Uuid;

use super::{spool, Event, EventKind, Verdict};

pub const INTERRUPTED: &str = "interrupted: the daemon stopped before the session ended";

/// The `session_opened` events of the previous run that have no close.
pub fn unclosed_sessions(dir: &Path) -> io::Result<Vec<Event>> {
    let mut open: HashMap<Uuid, Event> = HashMap::new();
    let mut closed: std::collections::HashSet<Uuid> = Default::default();
    let segments = match spool::segments(dir) {
        Ok(s) => s,
        // A first start: no spool yet, nothing left open.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Newest segment first, back to the one where the previous run started.
    for (_, path) in segments.into_iter().rev() {
        let mut run_started_here = false;
        for e in spool::events_in(&path)? {
            match e.kind {
                EventKind::SessionOpened => {
                    open.insert(e.session_id, e);
                }
                EventKind::SessionClosed | EventKind::SessionDenied => {
                    closed.insert(e.session_id);
                }
                EventKind::DaemonStarted => run_started_here = true,
                _ => {}
            }
        }
        if run_started_here {
            break;
        }
    }
    let mut out: Vec<Event> = open
        .into_values()
        .filter(|e| !closed.contains(&e.session_id))
        .collect();
    out.sort_by_key(|e| e.id);
    Ok(out)
}

/// The close written on behalf of an interrupted session.
pub fn interrupted_close(opened: &Event) -> Event {
    Event {
        id: Uuid::now_v7(),
        seq: opened.seq + 1_000_000,
        ts: SystemTime::now(),
        kind: EventKind::SessionClosed,
        verdict: Verdict::Error,
        reason: Some(INTERRUPTED.to_string()),
        bytes_from_agent: None,
        bytes_to_agent: None,
        duration_us: None,
        ..opened.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::RecordsConfig, records::spool};

    fn session(kind: EventKind, sid: Uuid, seq: u32) -> Event {
        let mut e = Event::daemon(kind, Verdict::Allow, "");
        e.session_id = sid;
        e.seq = seq;
        e
    }

    #[tokio::test]
    async fn finds_sessions_opened_but_never_closed_in_the_last_run() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = RecordsConfig {
            spool_dir: tmp.path().to_owned(),
            ..RecordsConfig::default()
        };
        // An older run whose open session was already dealt with.
        let old = spool::open(&cfg).unwrap();
        let (done, cut, stale) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        old.record(Event::daemon(
            EventKind::DaemonStarted,
            Verdict::Allow,
            "run 1",
        ))
        .await
        .unwrap();
        old.record(session(EventKind::SessionOpened, stale, 0))
            .await
            .unwrap();
        drop(old);
        // The previous run: one session closed, one cut off.
        let prev = spool::open(&cfg).unwrap();
        prev.record(Event::daemon(
            EventKind::DaemonStarted,
            Verdict::Allow,
            "run 2",
        ))
        .await
        .unwrap();
        prev.record(session(EventKind::SessionOpened, done, 0))
            .await
            .unwrap();
        prev.record(session(EventKind::SessionOpened, cut, 0))
            .await
            .unwrap();
        prev.record(session(EventKind::SessionClosed, done, 1))
            .await
            .unwrap();
        let found = unclosed_sessions(tmp.path()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].session_id, cut);
        let close = interrupted_close(&found[0]);
        assert_eq!(close.kind, EventKind::SessionClosed);
        assert_eq!(close.session_id, cut);
        assert!(close.seq > found[0].seq);
        assert_ne!(close.id, found[0].id);
    }
}

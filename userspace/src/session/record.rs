//! The identity and addressing of one session, stamped on each of its
//! events in the order they happen.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime},
};

use uuid::Uuid;

use crate::{
    identity::Caller,
    policy::{masking::MaskPlan, Asker, Bundle},
    records::{Event, EventKind, IoChunk, Verdict},
};

/// The identity and addressing of one session, stamped on its events.
pub struct Session {
    pub id: Uuid,
    seq: AtomicU32,
    /// Values masked in responses to the agent, for the closing record.
    pub masked: AtomicU64,
    pub caller: Option<Caller>,
    pub orig_dst: Option<SocketAddr>,
    /// The name the destination was known by (learned from an answer of
    /// blastgate's resolver, a TLS SNI or an HTTP Host).
    pub dst_name: Option<String>,
    /// How blastgate knows that name: "dns" (learned from its own answer).
    pub dst_name_source: Option<&'static str>,
    pub target: Option<String>,
    pub protocol: Option<&'static str>,
    /// The caller and target as policy sees them, made at the first
    /// decision: neither changes for the session's life.
    pub asker: OnceLock<Asker>,
    /// The masking plan made under the policy bundle it came from: the
    /// same until a reload (`Gateway::mask_plan`).
    pub mask_plan: Mutex<Option<(Arc<Bundle>, Option<MaskPlan>)>>,
    /// The CI job the caller belongs to, counting this session open
    /// while it lives; its end cuts the session.
    pub job: Option<crate::jobs::OpenSession>,
    /// Replay data is timed from here (see [`Session::io`]).
    started: Instant,
}

impl Session {
    /// A session just accepted: nobody identified yet, nothing recorded.
    pub fn new(started: Instant) -> Session {
        Session {
            id: Uuid::now_v7(),
            seq: AtomicU32::new(0),
            masked: Default::default(),
            caller: None,
            orig_dst: None,
            dst_name: None,
            dst_name_source: None,
            target: None,
            protocol: None,
            asker: OnceLock::new(),
            mask_plan: Mutex::new(None),
            job: None,
            started,
        }
    }

    /// Stamps a copy of an earlier event of this session as a new one
    /// (its own id, seq and time): cheaper than building it again.
    pub fn restamp(&self, template: &Event) -> Event {
        let mut e = template.clone();
        e.id = Uuid::now_v7();
        e.seq = self.next_seq();
        e.ts = SystemTime::now();
        e
    }

    /// The next number in this session's order of events, for an event
    /// built elsewhere (an approval's).
    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Microseconds since the session started: the clock replay data
    /// runs on, immune to wall-clock steps.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A chunk of replay data of this session.
    pub fn io(&self, chunk: IoChunk) -> Event {
        let mut e = Event::io(self.id, self.next_seq(), chunk);
        e.target = self.target.clone();
        e.protocol = self.protocol.map(str::to_string);
        e
    }

    pub fn event(&self, kind: EventKind, verdict: Verdict, reason: Option<String>) -> Event {
        let mut e = Event::daemon(kind, verdict, String::new());
        e.session_id = self.id;
        e.seq = self.next_seq();
        e.reason = reason;
        e.caller = self.caller.clone();
        e.target = self.target.clone();
        e.protocol = self.protocol.map(str::to_string);
        e.orig_dst = self.orig_dst;
        e.dst_name = self.dst_name.clone();
        e
    }
}

//! The audit event: one line in the spool, one row in ClickHouse later.
//!
//! Every event has a unique, time-ordered id (UUIDv7) and a sequence number
//! within its session, so a shipper that re-sends a batch after a crash can
//! be deduplicated downstream and a session can be replayed in order.

use std::{collections::BTreeMap, net::SocketAddr, time::SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::identity::Caller;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A connection was accepted and handed to a protocol handler.
    SessionOpened,
    /// The session ended; carries bytes each way and duration.
    SessionClosed,
    /// The connection was refused before any byte reached an upstream.
    SessionDenied,
    /// A process was labelled as an agent over the control socket.
    AgentLabelled,
    /// `blastgate run` was refused before anything started: its OIDC
    /// token did not verify, or its agent needs one and none came.
    AgentRefused,
    /// A CI runner's hook registered a job (or added its verified token).
    JobStarted,
    /// A CI job ended (its completed hook, or its root process exited);
    /// `reason` says how many open sessions were closed.
    JobEnded,
    /// A job registration refused: re-registration, a token that did not
    /// verify, was spent, or disagrees with the job's environment, …
    JobRefused,
    /// A web console request refused: no session, a wrong CSRF token or
    /// origin, or an approver outside the request's group.
    ConsoleRefused,
    DaemonStarted,
    DaemonStopped,
    /// A policy change validated and is now in force.
    PolicyReloaded,
    /// A policy change failed validation; the previous set stays in force.
    PolicyRejected,
    /// A held action is waiting for a human.
    ApprovalRequested,
    /// Approved, denied, timed out or withdrawn; `duration_us` is the wait.
    ApprovalDecided,
    /// A SQL statement decided (and, if allowed, run): action, text after
    /// masking, policy, rows in `rows`, duration.
    Statement,
    /// An SSH exec, shell or forwarding request decided.
    Command,
    /// An HTTP request decided.
    Request,
    /// The server ran something other than what the gateway read and
    /// decided (a statement's CommandComplete names another command): the
    /// session was ended. `text` is the statement, `reason` both readings.
    Differential,
    /// A DNS query an agent asked blastgate's resolver: `dst_name`, the
    /// type in `action` (`dns:A`), the answer's addresses in `text`.
    DnsQuery,
    /// Replay data (terminal output, response summaries): shipped to the
    /// `io` table, not `events`, so the audit tables stay small.
    Io,
}

impl EventKind {
    /// The serialized name (the `kind` column).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SessionOpened => "session_opened",
            EventKind::SessionClosed => "session_closed",
            EventKind::SessionDenied => "session_denied",
            EventKind::AgentLabelled => "agent_labelled",
            EventKind::AgentRefused => "agent_refused",
            EventKind::JobStarted => "job_started",
            EventKind::JobEnded => "job_ended",
            EventKind::JobRefused => "job_refused",
            EventKind::ConsoleRefused => "console_refused",
            EventKind::DaemonStarted => "daemon_started",
            EventKind::DaemonStopped => "daemon_stopped",
            EventKind::PolicyReloaded => "policy_reloaded",
            EventKind::PolicyRejected => "policy_rejected",
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::ApprovalDecided => "approval_decided",
            EventKind::Statement => "statement",
            EventKind::Command => "command",
            EventKind::Request => "request",
            EventKind::Differential => "differential",
            EventKind::DnsQuery => "dns_query",
            EventKind::Io => "io",
        }
    }
}

/// Which way an [`IoChunk`] went. The names are asciicast v2's event codes,
/// so a recording exports without translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoStream {
    /// To the agent (terminal output, a response summary).
    #[serde(rename = "o")]
    Output,
    /// From the agent (keystrokes).
    #[serde(rename = "i")]
    Input,
    /// Terminal resized; `data` is `COLSxROWS`.
    #[serde(rename = "r")]
    Resize,
}

impl IoStream {
    pub fn code(self) -> &'static str {
        match self {
            IoStream::Output => "o",
            IoStream::Input => "i",
            IoStream::Resize => "r",
        }
    }
}

/// One chunk of replay data, already masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoChunk {
    pub stream: IoStream,
    /// Microseconds since the session started: replay timing survives clock
    /// steps between chunks.
    pub offset_us: u64,
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    /// Something failed inside blastgate; the caller was refused.
    Error,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    /// Nil for daemon-level events.
    pub session_id: Uuid,
    pub seq: u32,
    #[serde(with = "rfc3339_micros")]
    pub ts: SystemTime,
    pub kind: EventKind,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The policy action asked about (`connect`, `sql:delete`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// Shadow mode: the verdict was recorded, not enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    /// Who approved or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The approver group the policy named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_group: Option<String>,
    /// The statement, command or request (after masking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Where the agent was trying to go before the kernel redirected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_dst: Option<SocketAddr>,
    /// Bytes the agent sent (toward the upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_from_agent: Option<u64>,
    /// Bytes the agent received (from the upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_to_agent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// Values masked in what the session returned to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_fields: Option<u64>,
    /// How long the action waited for a human before it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_wait_us: Option<u64>,
    /// Rows a statement returned or changed (from the server's command tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// How a remote command ended (SSH exec): its exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The HTTP status the agent got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A DNS name: the one a query asked, or the one a connection's
    /// destination was known by (learned from an answer, a TLS SNI or an
    /// HTTP Host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_name: Option<String>,
    /// Bytes of a command's stderr (`bytes_to_agent` counts both streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    /// What the action was about, in the protocol's own terms, for
    /// queries that need more than `text`: a git push's ref, old, new and
    /// forced; an AWS call's service, operation, region and resource.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
    /// Replay data, for [`EventKind::Io`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoChunk>,
}

impl Event {
    /// A daemon-level event outside any session.
    pub fn daemon(kind: EventKind, verdict: Verdict, reason: impl Into<String>) -> Event {
        Event {
            id: Uuid::now_v7(),
            session_id: Uuid::nil(),
            seq: 0,
            ts: SystemTime::now(),
            kind,
            verdict,
            reason: Some(reason.into()),
            caller: None,
            target: None,
            protocol: None,
            action: None,
            policy_id: None,
            shadow: false,
            approval_id: None,
            approver: None,
            approval_group: None,
            text: None,
            orig_dst: None,
            bytes_from_agent: None,
            bytes_to_agent: None,
            duration_us: None,
            masked_fields: None,
            approval_wait_us: None,
            rows: None,
            exit_status: None,
            status: None,
            stderr_bytes: None,
            dst_name: None,
            context: BTreeMap::new(),
            io: None,
        }
    }

    /// A chunk of replay data for a session.
    pub fn io(session_id: Uuid, seq: u32, chunk: IoChunk) -> Event {
        Event {
            session_id,
            seq,
            reason: None,
            io: Some(chunk),
            ..Event::daemon(EventKind::Io, Verdict::Allow, "")
        }
    }
}

mod rfc3339_micros {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_verdict_names_are_their_json_names() {
        for kind in [
            EventKind::SessionOpened,
            EventKind::SessionClosed,
            EventKind::SessionDenied,
            EventKind::AgentLabelled,
            EventKind::AgentRefused,
            EventKind::JobStarted,
            EventKind::JobEnded,
            EventKind::JobRefused,
            EventKind::ConsoleRefused,
            EventKind::DaemonStarted,
            EventKind::DaemonStopped,
            EventKind::PolicyReloaded,
            EventKind::PolicyRejected,
            EventKind::ApprovalRequested,
            EventKind::ApprovalDecided,
            EventKind::Statement,
            EventKind::Command,
            EventKind::Request,
            EventKind::Differential,
            EventKind::DnsQuery,
            EventKind::Io,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
        for v in [Verdict::Allow, Verdict::Deny, Verdict::Error] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = Event::daemon(EventKind::DaemonStarted, Verdict::Allow, "hello");
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"kind\":\"daemon_started\""), "{line}");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back.id, e.id);
        // Microsecond precision survives the round trip.
        let d = back
            .ts
            .duration_since(e.ts)
            .unwrap_or_else(|e| e.duration());
        assert!(d.as_micros() < 1, "{d:?}");
    }
}

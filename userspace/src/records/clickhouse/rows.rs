//! Spool events as ClickHouse rows.

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Serialize;
use uuid::Uuid;

use crate::records::{Event, EventKind};

fn micros(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Default, Row, Serialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub seq: u32,
    /// DateTime64(6): microseconds since the epoch.
    pub ts: i64,
    pub kind: String,
    pub verdict: String,
    pub reason: String,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub lineage: Vec<String>,
    pub target: String,
    pub protocol: String,
    pub orig_dst: String,
    pub action: String,
    pub policy_id: String,
    pub shadow: bool,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub approval_id: Option<Uuid>,
    pub approver: String,
    pub text: String,
    pub bytes_from_agent: u64,
    pub bytes_to_agent: u64,
    pub duration_us: u64,
    pub masked_fields: u64,
    pub approval_group: String,
    pub rows: u64,
    pub approval_wait_us: u64,
    pub exit_status: Option<i32>,
    pub stderr_bytes: u64,
    pub status: u16,
    pub dst_name: String,
    pub oidc_iss: String,
    pub oidc_sub: String,
    pub oidc_claims: BTreeMap<String, String>,
    pub context: BTreeMap<String, String>,
    pub job_provider: String,
    pub job_repository: String,
    pub job_workflow: String,
    pub job_run_id: String,
    pub job_run_attempt: String,
    pub job_job: String,
    pub job_job_id: String,
    pub job_actor: String,
    pub job_ref: String,
    pub job_verified: Vec<String>,
}

#[derive(Debug, Default, Row, Serialize)]
pub struct SessionRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    /// 1 opened, 2 closed or denied: the highest wins.
    pub version: u8,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub exe: String,
    pub comm: String,
    pub lineage: Vec<String>,
    pub oidc_sub: String,
    pub oidc_iss: String,
    pub target: String,
    pub protocol: String,
    pub orig_dst: String,
    pub start: i64,
    pub end: Option<i64>,
    pub bytes_from_agent: u64,
    pub bytes_to_agent: u64,
    pub verdict: String,
    pub oidc_claims: BTreeMap<String, String>,
    pub job_provider: String,
    pub job_repository: String,
    pub job_workflow: String,
    pub job_run_id: String,
    pub job_run_attempt: String,
    pub job_job: String,
    pub job_job_id: String,
    pub job_actor: String,
    pub job_ref: String,
    pub job_verified: Vec<String>,
}

#[derive(Debug, Row, Serialize)]
pub struct IoRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub session_id: Uuid,
    pub seq: u32,
    pub ts: i64,
    pub offset_us: u64,
    pub stream: String,
    pub data: String,
}

/// The `io` row of a replay event; `None` for audit events.
pub fn io_row(e: &Event) -> Option<IoRow> {
    let chunk = e.io.as_ref()?;
    Some(IoRow {
        id: e.id,
        session_id: e.session_id,
        seq: e.seq,
        ts: micros(e.ts),
        offset_us: chunk.offset_us,
        stream: chunk.stream.code().to_string(),
        data: chunk.data.clone(),
    })
}

/// The caller columns both tables carry.
struct CallerCols {
    agent: String,
    pid: u32,
    uid: u32,
    comm: String,
    exe: String,
    lineage: Vec<String>,
    oidc_iss: String,
    oidc_sub: String,
    oidc_claims: BTreeMap<String, String>,
    job: JobCols,
}

/// The `job_*` columns.
#[derive(Default)]
struct JobCols {
    provider: String,
    /// [`crate::jobs::FIELDS`], in order.
    fields: Vec<String>,
    verified: Vec<String>,
}

fn job_cols(e: &Event) -> JobCols {
    let Some(j) = e.caller.as_ref().and_then(|c| c.job.as_ref()) else {
        return JobCols {
            fields: vec![String::new(); crate::jobs::FIELDS.len()],
            ..JobCols::default()
        };
    };
    JobCols {
        provider: j.provider.clone(),
        fields: crate::jobs::FIELDS
            .iter()
            .map(|f| j.field(f).to_string())
            .collect(),
        verified: j.verified.clone(),
    }
}

macro_rules! with_job {
    ($row:expr, $job:expr) => {{
        let mut row = $row;
        let mut f = $job.fields.into_iter();
        let mut next = || f.next().unwrap_or_default();
        row.job_provider = $job.provider;
        row.job_repository = next();
        row.job_workflow = next();
        row.job_run_id = next();
        row.job_run_attempt = next();
        row.job_job = next();
        row.job_job_id = next();
        row.job_actor = next();
        row.job_ref = next();
        row.job_verified = $job.verified;
        row
    }};
}

fn caller_cols(e: &Event) -> CallerCols {
    let c = e.caller.as_ref();
    let oidc = c.and_then(|c| c.oidc.as_ref());
    CallerCols {
        agent: c.map(|c| c.agent.clone()).unwrap_or_default(),
        pid: c.map_or(0, |c| c.pid),
        uid: c.map_or(0, |c| c.uid),
        comm: c.map(|c| c.comm.clone()).unwrap_or_default(),
        exe: c.and_then(|c| c.exe.clone()).unwrap_or_default(),
        lineage: c
            .map(|c| {
                c.lineage
                    .iter()
                    .map(|a| format!("{}:{}", a.pid, a.comm))
                    .collect()
            })
            .unwrap_or_default(),
        oidc_iss: oidc.map(|o| o.iss.clone()).unwrap_or_default(),
        oidc_sub: oidc.map(|o| o.sub.clone()).unwrap_or_default(),
        oidc_claims: oidc.map(|o| o.claims.clone()).unwrap_or_default(),
        job: job_cols(e),
    }
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> EventRow {
        let CallerCols {
            agent,
            pid,
            uid,
            comm,
            exe,
            lineage,
            oidc_iss,
            oidc_sub,
            oidc_claims,
            job,
        } = caller_cols(e);
        let row = EventRow {
            id: e.id,
            session_id: e.session_id,
            seq: e.seq,
            ts: micros(e.ts),
            kind: e.kind.name().to_string(),
            verdict: e.verdict.name().to_string(),
            reason: e.reason.clone().unwrap_or_default(),
            agent,
            pid,
            uid,
            comm,
            exe,
            lineage,
            target: e.target.clone().unwrap_or_default(),
            protocol: e.protocol.clone().unwrap_or_default(),
            orig_dst: e.orig_dst.map(|a| a.to_string()).unwrap_or_default(),
            action: e.action.clone().unwrap_or_default(),
            policy_id: e.policy_id.clone().unwrap_or_default(),
            shadow: e.shadow,
            approval_id: e.approval_id,
            approver: e.approver.clone().unwrap_or_default(),
            text: e.text.clone().unwrap_or_default(),
            bytes_from_agent: e.bytes_from_agent.unwrap_or(0),
            bytes_to_agent: e.bytes_to_agent.unwrap_or(0),
            duration_us: e.duration_us.unwrap_or(0),
            masked_fields: e.masked_fields.unwrap_or(0),
            approval_group: e.approval_group.clone().unwrap_or_default(),
            rows: e.rows.unwrap_or(0),
            approval_wait_us: e.approval_wait_us.unwrap_or(0),
            exit_status: e.exit_status,
            stderr_bytes: e.stderr_bytes.unwrap_or(0),
            status: e.status.unwrap_or(0),
            dst_name: e.dst_name.clone().unwrap_or_default(),
            oidc_iss,
            oidc_sub,
            oidc_claims,
            context: e.context.clone(),
            ..EventRow::default()
        };
        with_job!(row, job)
    }
}

/// The session row an event implies, if it opens or ends a session.
pub fn session_row(e: &Event) -> Option<SessionRow> {
    let (version, end) = match e.kind {
        EventKind::SessionOpened => (1, None),
        EventKind::SessionClosed | EventKind::SessionDenied => (2, Some(micros(e.ts))),
        _ => return None,
    };
    let CallerCols {
        agent,
        pid,
        uid,
        comm,
        exe,
        lineage,
        oidc_iss,
        oidc_sub,
        oidc_claims,
        job,
    } = caller_cols(e);
    let ts = micros(e.ts);
    let start = match (e.kind, e.duration_us) {
        (EventKind::SessionClosed, Some(d)) => ts - d as i64,
        _ => ts,
    };
    let row = SessionRow {
        session_id: e.session_id,
        version,
        agent,
        pid,
        uid,
        exe,
        comm,
        lineage,
        oidc_sub,
        oidc_iss,
        target: e.target.clone().unwrap_or_default(),
        protocol: e.protocol.clone().unwrap_or_default(),
        orig_dst: e.orig_dst.map(|a| a.to_string()).unwrap_or_default(),
        start,
        end,
        bytes_from_agent: e.bytes_from_agent.unwrap_or(0),
        bytes_to_agent: e.bytes_to_agent.unwrap_or(0),
        verdict: e.verdict.name().to_string(),
        oidc_claims,
        ..SessionRow::default()
    };
    Some(with_job!(row, job))
}

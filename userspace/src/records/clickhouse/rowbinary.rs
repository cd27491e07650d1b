//! Spool lines straight to `RowBinaryWithNamesAndTypes` blocks, without an
//! owned [`Event`](crate::records::Event) or row struct in between.
//!
//! The shipper's cost was parsing each line into an owned `Event` (a
//! `String` per field), copying it into a row struct (another `String` per
//! field) and serialising that with type validation on the async task. Here
//! a line is parsed into borrowed fields (`Cow`: only strings with escapes
//! allocate) and encoded at once into the three tables' blocks, on the
//! blocking thread that reads the spool, while the previous batch's INSERT
//! is in flight. The header names every column with the type the table
//! declares, so ClickHouse itself checks the block against the table (and
//! refuses it if they ever disagree) instead of the client.
//!
//! The mapping is the one [`super::rows`] documents with typed rows: every
//! column is filled exactly as `EventRow::from`, `session_row` and `io_row`
//! fill it (a unit test checks both against the same events).

use std::{borrow::Cow, net::SocketAddr, time::SystemTime};

use serde::Deserialize;
use uuid::Uuid;

use crate::records::{EventKind, IoStream, Verdict};

/// (name, type) of every column written, in block order.
pub const EVENT_COLUMNS: &[(&str, &str)] = &[
    ("id", "UUID"),
    ("session_id", "UUID"),
    ("seq", "UInt32"),
    ("ts", "DateTime64(6, 'UTC')"),
    ("kind", "LowCardinality(String)"),
    ("verdict", "LowCardinality(String)"),
    ("reason", "String"),
    ("agent", "LowCardinality(String)"),
    ("pid", "UInt32"),
    ("uid", "UInt32"),
    ("comm", "String"),
    ("exe", "String"),
    ("lineage", "Array(String)"),
    ("target", "LowCardinality(String)"),
    ("protocol", "LowCardinality(String)"),
    ("orig_dst", "String"),
    ("action", "LowCardinality(String)"),
    ("policy_id", "LowCardinality(String)"),
    ("shadow", "Bool"),
    ("approval_id", "Nullable(UUID)"),
    ("approver", "String"),
    ("text", "String"),
    ("bytes_from_agent", "UInt64"),
    ("bytes_to_agent", "UInt64"),
    ("duration_us", "UInt64"),
    ("masked_fields", "UInt64"),
    ("approval_group", "LowCardinality(String)"),
    ("rows", "UInt64"),
    ("approval_wait_us", "UInt64"),
    ("exit_status", "Nullable(Int32)"),
    ("stderr_bytes", "UInt64"),
    ("status", "UInt16"),
    ("dst_name", "String"),
    ("oidc_iss", "LowCardinality(String)"),
    ("oidc_sub", "String"),
    ("oidc_claims", "Map(String, String)"),
    ("context", "Map(String, String)"),
    ("job_provider", "LowCardinality(String)"),
    ("job_repository", "String"),
    ("job_workflow", "String"),
    ("job_run_id", "String"),
    ("job_run_attempt", "String"),
    ("job_job", "String"),
    ("job_job_id", "String"),
    ("job_actor", "String"),
    ("job_ref", "String"),
    ("job_verified", "Array(String)"),
];

pub const SESSION_COLUMNS: &[(&str, &str)] = &[
    ("session_id", "UUID"),
    ("version", "UInt8"),
    ("agent", "LowCardinality(String)"),
    ("pid", "UInt32"),
    ("uid", "UInt32"),
    ("exe", "String"),
    ("comm", "String"),
    ("lineage", "Array(String)"),
    ("oidc_sub", "String"),
    ("oidc_iss", "String"),
    ("target", "LowCardinality(String)"),
    ("protocol", "LowCardinality(String)"),
    ("orig_dst", "String"),
    ("start", "DateTime64(6, 'UTC')"),
    ("end", "Nullable(DateTime64(6, 'UTC'))"),
    ("bytes_from_agent", "UInt64"),
    ("bytes_to_agent", "UInt64"),
    ("verdict", "LowCardinality(String)"),
    ("oidc_claims", "Map(String, String)"),
    ("job_provider", "LowCardinality(String)"),
    ("job_repository", "String"),
    ("job_workflow", "String"),
    ("job_run_id", "String"),
    ("job_run_attempt", "String"),
    ("job_job", "String"),
    ("job_job_id", "String"),
    ("job_actor", "String"),
    ("job_ref", "String"),
    ("job_verified", "Array(String)"),
];

pub const IO_COLUMNS: &[(&str, &str)] = &[
    ("id", "UUID"),
    ("session_id", "UUID"),
    ("seq", "UInt32"),
    ("ts", "DateTime64(6, 'UTC')"),
    ("offset_us", "UInt64"),
    ("stream", "LowCardinality(String)"),
    ("data", "String"),
];

type Text<'a> = Option<Cow<'a, str>>;

/// The fields of a spool line the tables need, borrowed from the line.
/// Unknown fields are ignored, as by `Event`'s own `Deserialize`.
#[derive(Deserialize)]
struct Line<'a> {
    id: Uuid,
    session_id: Uuid,
    seq: u32,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    kind: EventKind,
    verdict: Verdict,
    #[serde(default, borrow)]
    reason: Text<'a>,
    #[serde(default, borrow)]
    caller: Option<LineCaller<'a>>,
    #[serde(default, borrow)]
    target: Text<'a>,
    #[serde(default, borrow)]
    protocol: Text<'a>,
    #[serde(default, borrow)]
    action: Text<'a>,
    #[serde(default, borrow)]
    policy_id: Text<'a>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    approval_id: Option<Uuid>,
    #[serde(default, borrow)]
    approver: Text<'a>,
    #[serde(default, borrow)]
    approval_group: Text<'a>,
    #[serde(default, borrow)]
    text: Text<'a>,
    /// Checked as an address, written as the same text `Display` gives.
    #[serde(default)]
    orig_dst: Option<SocketAddr>,
    #[serde(default)]
    bytes_from_agent: Option<u64>,
    #[serde(default)]
    bytes_to_agent: Option<u64>,
    #[serde(default)]
    duration_us: Option<u64>,
    #[serde(default)]
    masked_fields: Option<u64>,
    #[serde(default)]
    approval_wait_us: Option<u64>,
    #[serde(default)]
    rows: Option<u64>,
    #[serde(default)]
    exit_status: Option<i32>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    stderr_bytes: Option<u64>,
    #[serde(default, borrow)]
    dst_name: Text<'a>,
    #[serde(default, borrow)]
    context: std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default, borrow)]
    io: Option<LineIo<'a>>,
}

#[derive(Deserialize)]
struct LineCaller<'a> {
    #[serde(borrow)]
    agent: Cow<'a, str>,
    pid: u32,
    uid: u32,
    #[serde(borrow)]
    comm: Cow<'a, str>,
    #[serde(default, borrow)]
    exe: Text<'a>,
    #[serde(default, borrow)]
    lineage: Vec<LineAncestor<'a>>,
    #[serde(default, borrow)]
    oidc: Option<LineOidc<'a>>,
    #[serde(default, borrow)]
    job: Option<LineJob<'a>>,
}

#[derive(Deserialize)]
struct LineJob<'a> {
    #[serde(borrow)]
    provider: Cow<'a, str>,
    #[serde(default, borrow)]
    fields: std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default, borrow)]
    verified: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LineOidc<'a> {
    #[serde(borrow)]
    iss: Cow<'a, str>,
    #[serde(borrow)]
    sub: Cow<'a, str>,
    #[serde(default, borrow)]
    claims: std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LineAncestor<'a> {
    pid: u32,
    #[serde(borrow)]
    comm: Cow<'a, str>,
}

#[derive(Deserialize)]
struct LineIo<'a> {
    stream: IoStream,
    offset_us: u64,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("bad timestamp: {0}")]
    Time(#[from] humantime::TimestampError),
}

/// One table's rows, encoded.
#[derive(Debug)]
pub struct Block {
    pub buf: Vec<u8>,
    pub rows: usize,
    header: usize,
}

impl Block {
    pub fn new(columns: &[(&str, &str)]) -> Block {
        let mut buf = Vec::with_capacity(1 << 20);
        varint(&mut buf, columns.len() as u64);
        for (name, _) in columns {
            string(&mut buf, name);
        }
        for (_, ty) in columns {
            string(&mut buf, ty);
        }
        Block {
            header: buf.len(),
            buf,
            rows: 0,
        }
    }

    /// The encoded rows, without the header.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.header..]
    }
}

/// A batch's three blocks.
#[derive(Debug)]
pub struct Blocks {
    pub events: Block,
    pub sessions: Block,
    pub io: Block,
    /// The first event's timestamp (µs since the epoch): shipping lag.
    pub first_ts: Option<i64>,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks {
            events: Block::new(EVENT_COLUMNS),
            sessions: Block::new(SESSION_COLUMNS),
            io: Block::new(IO_COLUMNS),
            first_ts: None,
        }
    }
}

impl Blocks {
    /// Events and replay chunks encoded (sessions rows are derived).
    pub fn events(&self) -> usize {
        self.events.rows + self.io.rows
    }

    /// Encodes one spool line (without its newline). On error nothing of
    /// the line is in any block.
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), LineError> {
        let l: Line<'_> = serde_json::from_slice(line)?;
        let ts = micros(humantime::parse_rfc3339(&l.ts)?);
        self.first_ts.get_or_insert(ts);
        if let Some(io) = &l.io {
            let b = &mut self.io.buf;
            uuid(b, l.id);
            uuid(b, l.session_id);
            b.extend_from_slice(&l.seq.to_le_bytes());
            b.extend_from_slice(&ts.to_le_bytes());
            b.extend_from_slice(&io.offset_us.to_le_bytes());
            string(b, io.stream.code());
            string(b, &io.data);
            self.io.rows += 1;
            return Ok(());
        }
        let mut dst = String::new();
        if let Some(a) = l.orig_dst {
            use std::fmt::Write;
            let _ = write!(dst, "{a}");
        }
        let c = l.caller.as_ref();
        let b = &mut self.events.buf;
        uuid(b, l.id);
        uuid(b, l.session_id);
        b.extend_from_slice(&l.seq.to_le_bytes());
        b.extend_from_slice(&ts.to_le_bytes());
        string(b, l.kind.name());
        string(b, l.verdict.name());
        opt(b, &l.reason);
        caller(b, c, false);
        opt(b, &l.target);
        opt(b, &l.protocol);
        string(b, &dst);
        opt(b, &l.action);
        opt(b, &l.policy_id);
        b.push(u8::from(l.shadow));
        nullable(b, l.approval_id.map(uuid_bytes));
        opt(b, &l.approver);
        opt(b, &l.text);
        for n in [
            l.bytes_from_agent,
            l.bytes_to_agent,
            l.duration_us,
            l.masked_fields,
        ] {
            b.extend_from_slice(&n.unwrap_or(0).to_le_bytes());
        }
        opt(b, &l.approval_group);
        b.extend_from_slice(&l.rows.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&l.approval_wait_us.unwrap_or(0).to_le_bytes());
        nullable(b, l.exit_status.map(i32::to_le_bytes));
        b.extend_from_slice(&l.stderr_bytes.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&l.status.unwrap_or(0).to_le_bytes());
        opt(b, &l.dst_name);
        let oidc = c.and_then(|c| c.oidc.as_ref());
        string(b, oidc.map_or("", |o| &o.iss));
        string(b, oidc.map_or("", |o| &o.sub));
        claims(b, oidc.map(|o| &o.claims));
        claims(b, Some(&l.context));
        job(b, c.and_then(|c| c.job.as_ref()));
        self.events.rows += 1;

        // The session row an event implies, if it opens or ends a session:
        // 1 opened, 2 closed or denied (the highest version wins).
        let (version, end) = match l.kind {
            EventKind::SessionOpened => (1u8, None),
            EventKind::SessionClosed | EventKind::SessionDenied => (2, Some(ts)),
            _ => return Ok(()),
        };
        let start = match (l.kind, l.duration_us) {
            (EventKind::SessionClosed, Some(d)) => ts - d as i64,
            _ => ts,
        };
        let b = &mut self.sessions.buf;
        uuid(b, l.session_id);
        b.push(version);
        caller(b, c, true);
        let oidc = c.and_then(|c| c.oidc.as_ref());
        string(b, oidc.map_or("", |o| &o.sub));
        string(b, oidc.map_or("", |o| &o.iss));
        opt(b, &l.target);
        opt(b, &l.protocol);
        string(b, &dst);
        b.extend_from_slice(&start.to_le_bytes());
        nullable(b, end.map(i64::to_le_bytes));
        b.extend_from_slice(&l.bytes_from_agent.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&l.bytes_to_agent.unwrap_or(0).to_le_bytes());
        string(b, l.verdict.name());
        claims(b, oidc.map(|o| &o.claims));
        job(b, c.and_then(|c| c.job.as_ref()));
        self.sessions.rows += 1;
        Ok(())
    }
}

/// The caller columns: `agent, pid, uid, comm, exe, lineage` for events,
/// `agent, pid, uid, exe, comm, lineage` for sessions.
fn caller(b: &mut Vec<u8>, c: Option<&LineCaller<'_>>, exe_first: bool) {
    string(b, c.map_or("", |c| &c.agent));
    b.extend_from_slice(&c.map_or(0, |c| c.pid).to_le_bytes());
    b.extend_from_slice(&c.map_or(0, |c| c.uid).to_le_bytes());
    let comm = c.map_or("", |c| &c.comm);
    let exe = c.and_then(|c| c.exe.as_deref()).unwrap_or("");
    if exe_first {
        string(b, exe);
        string(b, comm);
    } else {
        string(b, comm);
        string(b, exe);
    }
    let lineage = c.map_or(&[][..], |c| &c.lineage[..]);
    varint(b, lineage.len() as u64);
    let mut pid = itoa_buf();
    for a in lineage {
        let digits = itoa(&mut pid, a.pid);
        varint(b, (digits.len() + 1 + a.comm.len()) as u64);
        b.extend_from_slice(digits);
        b.push(b':');
        b.extend_from_slice(a.comm.as_bytes());
    }
}

/// The `job_*` columns: provider, each of [`crate::jobs::FIELDS`], the
/// verified fields.
fn job(b: &mut Vec<u8>, j: Option<&LineJob<'_>>) {
    string(b, j.map_or("", |j| &j.provider));
    for f in crate::jobs::FIELDS {
        string(
            b,
            j.and_then(|j| j.fields.get(*f)).map_or("", |v| v.as_ref()),
        );
    }
    let verified = j.map_or(&[][..], |j| &j.verified[..]);
    varint(b, verified.len() as u64);
    for v in verified {
        string(b, v);
    }
}

/// `Map(String, String)`: the pair count, then each key and value.
/// A `Map(String, String)`: empty when absent.
fn claims(b: &mut Vec<u8>, map: Option<&std::collections::BTreeMap<Cow<'_, str>, Cow<'_, str>>>) {
    let Some(map) = map else {
        varint(b, 0);
        return;
    };
    varint(b, map.len() as u64);
    for (k, v) in map {
        string(b, k);
        string(b, v);
    }
}

fn itoa_buf() -> [u8; 10] {
    [0; 10]
}

/// Decimal digits of `n`, in `buf`.
fn itoa(buf: &mut [u8; 10], mut n: u32) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn varint(b: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        b.push((n as u8) | 0x80);
        n >>= 7;
    }
    b.push(n as u8);
}

fn string(b: &mut Vec<u8>, s: &str) {
    varint(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn opt(b: &mut Vec<u8>, s: &Text<'_>) {
    string(b, s.as_deref().unwrap_or(""));
}

/// ClickHouse's UUID: the high and the low 64 bits, each little-endian.
fn uuid_bytes(id: Uuid) -> [u8; 16] {
    let (hi, lo) = id.as_u64_pair();
    let mut out = [0; 16];
    out[..8].copy_from_slice(&hi.to_le_bytes());
    out[8..].copy_from_slice(&lo.to_le_bytes());
    out
}

fn uuid(b: &mut Vec<u8>, id: Uuid) {
    b.extend_from_slice(&uuid_bytes(id));
}

/// `Nullable(T)`: a null flag, then the value if there is one.
fn nullable<const N: usize>(b: &mut Vec<u8>, v: Option<[u8; N]>) {
    match v {
        Some(v) => {
            b.push(0);
            b.extend_from_slice(&v);
        }
        None => b.push(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::{Ancestor, Caller},
        records::{clickhouse::rows, Event, IoChunk},
    };
    use serde_json::{json, Map, Value};

    /// Reads one value of ClickHouse type `ty` from `b` as the JSON the
    /// typed rows serialise to.
    fn read(b: &mut &[u8], ty: &str) -> Value {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            let (head, rest) = b.split_at(n);
            *b = rest;
            head
        }
        fn varint(b: &mut &[u8]) -> usize {
            let (mut n, mut shift) = (0usize, 0);
            loop {
                let byte = take(b, 1)[0];
                n |= usize::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return n;
                }
                shift += 7;
            }
        }
        let le = |b: &mut &[u8], n: usize| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(take(b, n));
            u64::from_le_bytes(v)
        };
        if let Some(inner) = ty
            .strip_prefix("Nullable(")
            .and_then(|t| t.strip_suffix(')'))
        {
            return if take(b, 1)[0] == 1 {
                Value::Null
            } else {
                read(b, inner)
            };
        }
        match ty {
            "UUID" => {
                let hi = le(b, 8);
                let lo = le(b, 8);
                json!(Uuid::from_u64_pair(hi, lo).to_string())
            }
            "UInt8" => json!(le(b, 1)),
            "UInt16" => json!(le(b, 2)),
            "UInt32" => json!(le(b, 4)),
            "UInt64" => json!(le(b, 8)),
            "Int32" => json!(le(b, 4) as u32 as i32),
            "Bool" => json!(take(b, 1)[0] == 1),
            "DateTime64(6, 'UTC')" => json!(le(b, 8) as i64),
            "String" | "LowCardinality(String)" => {
                let n = varint(b);
                json!(String::from_utf8(take(b, n).to_vec()).unwrap())
            }
            "Array(String)" => {
                let n = varint(b);
                Value::Array((0..n).map(|_| read(b, "String")).collect())
            }
            "Map(String, String)" => {
                let n = varint(b);
                let mut m = Map::new();
                for _ in 0..n {
                    let k = read(b, "String");
                    m.insert(k.as_str().unwrap().to_string(), read(b, "String"));
                }
                Value::Object(m)
            }
            other => panic!("no reader for {other}"),
        }
    }

    /// The block's rows as JSON objects, after checking its header.
    fn rows_of(block: &Block, columns: &[(&str, &str)]) -> Vec<Value> {
        let mut b = &block.buf[..];
        // The column count, a varint: one byte below 128.
        assert_eq!(read(&mut b, "UInt8"), json!(columns.len()));
        for (name, _) in columns {
            assert_eq!(read(&mut b, "String"), json!(name));
        }
        for (_, ty) in columns {
            assert_eq!(read(&mut b, "String"), json!(ty));
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let mut row = Map::new();
            for (name, ty) in columns {
                row.insert(name.to_string(), read(&mut b, ty));
            }
            out.push(Value::Object(row));
        }
        assert_eq!(out.len(), block.rows);
        out
    }

    fn events() -> Vec<Event> {
        let sid = Uuid::now_v7();
        let caller = Caller {
            agent: "claude".into(),
            agent_id: 7,
            pid: 4242,
            tid: 4243,
            uid: 1001,
            gid: 1001,
            comm: "psql".into(),
            exe: Some("/usr/bin/psql".into()),
            cgroup_id: 99,
            lineage: vec![
                Ancestor {
                    pid: 0,
                    comm: "init".into(),
                },
                Ancestor {
                    pid: u32::MAX,
                    comm: "bash \"x\"".into(),
                },
            ],
            oidc: Some(crate::identity::oidc::JobIdentity {
                iss: "https://token.actions.githubusercontent.com".into(),
                sub: "repo:acme/app:ref:refs/heads/main".into(),
                aud: "blastgate".into(),
                groups: vec!["dba".into()],
                claims: [("repository", "acme/app"), ("ref", "refs/heads/\"main\" é")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                expires_at: 1_900_000_000,
            }),
            job: Some(crate::jobs::CiJob {
                id: Uuid::now_v7(),
                provider: "github".into(),
                fields: [
                    ("repository", "acme/app"),
                    ("run_id", "42"),
                    ("job", "b\"x é"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                verified: vec!["repository".into(), "run_id".into()],
            }),
        };
        let mut opened = Event::daemon(EventKind::SessionOpened, Verdict::Allow, "ok");
        opened.session_id = sid;
        opened.caller = Some(caller.clone());
        opened.target = Some("orders-db".into());
        opened.protocol = Some("postgres".into());
        opened.orig_dst = Some("[2001:db8::1]:5432".parse().unwrap());
        let mut stmt = Event {
            seq: 1,
            kind: EventKind::Statement,
            verdict: Verdict::Deny,
            text: Some("SELECT 'a\\\"b'\n\tFROM \"t\" -- é ✓ \u{1}".into()),
            action: Some("sql:select".into()),
            policy_id: Some("p1".into()),
            shadow: true,
            approval_id: Some(Uuid::now_v7()),
            approver: Some("alice".into()),
            approval_group: Some("dba".into()),
            approval_wait_us: Some(5),
            rows: Some(3),
            masked_fields: Some(2),
            ..opened.clone()
        };
        stmt.id = Uuid::now_v7();
        let mut cmd = Event::daemon(EventKind::Command, Verdict::Allow, "");
        cmd.reason = None;
        cmd.exit_status = Some(-1);
        cmd.stderr_bytes = Some(12);
        cmd.status = Some(503);
        cmd.context = [("ref", "refs/heads/\"main\" é"), ("forced", "true")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut closed = Event {
            id: Uuid::now_v7(),
            seq: 2,
            kind: EventKind::SessionClosed,
            verdict: Verdict::Error,
            bytes_from_agent: Some(10),
            bytes_to_agent: Some(u64::MAX),
            duration_us: Some(1_000_000),
            ..opened.clone()
        };
        closed.reason = Some("upstream closed".into());
        let mut denied = Event::daemon(EventKind::SessionDenied, Verdict::Deny, "no");
        denied.session_id = Uuid::now_v7();
        let io = Event::io(
            sid,
            3,
            IoChunk {
                stream: IoStream::Output,
                offset_us: 77,
                data: "\u{1b}[1mhi\r\n".into(),
            },
        );
        vec![opened, stmt, cmd, closed, denied, io]
    }

    #[test]
    fn blocks_hold_exactly_what_the_typed_rows_hold() {
        let events = events();
        let mut blocks = Blocks::default();
        for e in &events {
            blocks.push_line(&serde_json::to_vec(e).unwrap()).unwrap();
        }
        let want = |v: Vec<Value>| v;
        let audit: Vec<&Event> = events.iter().filter(|e| e.io.is_none()).collect();
        assert_eq!(
            rows_of(&blocks.events, EVENT_COLUMNS),
            want(
                audit
                    .iter()
                    .map(|e| serde_json::to_value(rows::EventRow::from(*e)).unwrap())
                    .collect()
            )
        );
        assert_eq!(
            rows_of(&blocks.sessions, SESSION_COLUMNS),
            want(
                audit
                    .iter()
                    .filter_map(|e| rows::session_row(e))
                    .map(|r| serde_json::to_value(r).unwrap())
                    .collect()
            )
        );
        assert_eq!(
            rows_of(&blocks.io, IO_COLUMNS),
            want(
                events
                    .iter()
                    .filter_map(rows::io_row)
                    .map(|r| serde_json::to_value(r).unwrap())
                    .collect()
            )
        );
        assert_eq!(blocks.events(), events.len());
        assert_eq!(
            blocks.first_ts,
            Some(
                events[0]
                    .ts
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64
            )
        );
    }

    #[test]
    fn a_torn_line_leaves_no_trace_in_any_block() {
        let line = serde_json::to_vec(&events()[3]).unwrap();
        let mut blocks = Blocks::default();
        let empty = (
            blocks.events.buf.len(),
            blocks.sessions.buf.len(),
            blocks.io.buf.len(),
        );
        assert!(blocks.push_line(&line[..line.len() / 2]).is_err());
        assert_eq!(
            (
                blocks.events.buf.len(),
                blocks.sessions.buf.len(),
                blocks.io.buf.len()
            ),
            empty
        );
        assert_eq!(blocks.events(), 0);
    }
}

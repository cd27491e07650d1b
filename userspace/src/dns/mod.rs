//! blastgate's resolver: every DNS query an agent sends, to any address,
//! over UDP or TCP, is answered here.
//!
//! A query is decided before anything leaves the host: malformed, too
//! large, too many labels, over the agent's rate, or of a type that
//! carries addresses blastgate would not learn (HTTPS/SVCB hints, zone
//! transfers, ANY) is refused locally; a name no rule allows gets
//! NXDOMAIN or REFUSED (`dns.unknown_names`) and is never forwarded, so a
//! denied name cannot carry data out through the upstream resolvers.
//! Allowed queries are forwarded as sent; the answer's addresses are
//! learned for the asking agent ([`learned`]) before the answer is sent, so
//! the agent can never connect before blastgate knows the name. Every
//! query is recorded (`dns_query`).

pub mod learned;
pub mod limits;
pub mod listener;
pub mod peer;
pub mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Instant, SystemTime},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{DnsConfig, EgressMode, UnknownNames},
    egress::pattern::{normalise_name, valid_name, HostPattern},
    identity::Caller,
    records::{spool::Recorder, Event, EventKind, Verdict},
};
use learned::Learned;
use limits::{Rate, RateLimit};

/// How a query came in: over UDP a truncated answer is passed on
/// truncated (the agent retries over TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub struct Resolver {
    config: DnsConfig,
    upstreams: Vec<SocketAddr>,
    /// Names an agent may resolve: the egress allow-list's and the
    /// targets' (`hosts`, `hostnames`, names in `address`).
    names: Vec<HostPattern>,
    /// Audit: names outside `names` are resolved too, recorded as what
    /// enforce would refuse.
    mode: EgressMode,
    pub learned: Arc<Learned>,
    rate: RateLimit,
    recorder: Recorder,
}

/// What became of one query, for its record.
struct Outcome {
    verdict: Verdict,
    shadow: bool,
    reason: Option<String>,
    answer: Option<String>,
}

impl Resolver {
    pub fn new(
        config: DnsConfig,
        names: Vec<HostPattern>,
        mode: EgressMode,
        recorder: Recorder,
    ) -> Resolver {
        let upstreams = if config.upstreams.is_empty() {
            upstream::host_resolvers()
        } else {
            config.upstreams.clone()
        };
        Resolver {
            learned: Arc::new(Learned::new(std::time::Duration::from_secs(
                config.min_ttl_secs,
            ))),
            rate: RateLimit::new(config.queries_per_sec, config.burst),
            upstreams,
            names,
            mode,
            recorder,
            config,
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn resolvable(&self, name: &str) -> bool {
        self.names.iter().any(|p| p.matches_name(name))
    }

    /// The answer to one query from `caller`, or `None` when nothing can
    /// be said (not even an id to answer to). Always recorded.
    pub async fn answer(&self, query: &[u8], caller: &Caller, via: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        // The rate first, for every datagram: a flood of anything is
        // refused, and recorded in summaries rather than one by one.
        let rate = self.rate.take(caller, started);
        if rate != Rate::Allowed {
            if let Rate::RefusedRecorded { earlier } = rate {
                let why = format!(
                    "over the agent's query rate ({}/s, burst {}); {earlier} more refused \
                     since the last record of it",
                    self.config.queries_per_sec, self.config.burst
                );
                self.record(caller, None, None, started, Outcome::refused(why))
                    .await;
            }
            return match Message::from_vec(query) {
                Ok(msg) => reply(&msg, ResponseCode::Refused),
                Err(_) => None,
            };
        }
        let Ok(msg) = Message::from_vec(query) else {
            self.record(
                caller,
                None,
                None,
                started,
                Outcome::refused("not a DNS message"),
            )
            .await;
            // With its id, a FORMERR; without one, silence.
            return (query.len() >= 2).then(|| formerr(query));
        };
        let q = match msg.queries.as_slice() {
            [q] if msg.metadata.message_type == MessageType::Query
                && msg.metadata.op_code == OpCode::Query =>
            {
                q.clone()
            }
            _ => {
                self.record(
                    caller,
                    None,
                    None,
                    started,
                    Outcome::refused("not one standard query"),
                )
                .await;
                return reply(&msg, ResponseCode::Refused);
            }
        };
        let qtype = q.query_type();
        let name = normalise_name(&q.name().to_ascii());
        let shown = Some(name.clone());
        let refuse = |why: String| Outcome::refused(why);
        let early = if query.len() > self.config.max_query_bytes {
            Some((
                ResponseCode::Refused,
                refuse(format!(
                    "query of {} bytes, over dns.max_query_bytes ({})",
                    query.len(),
                    self.config.max_query_bytes
                )),
            ))
        } else if !valid_name(&name) {
            Some((
                ResponseCode::Refused,
                refuse("the name has characters or labels no host name has".into()),
            ))
        } else if usize::from(q.name().num_labels()) > self.config.max_labels {
            Some((
                ResponseCode::Refused,
                refuse(format!(
                    "{} labels, over dns.max_labels ({})",
                    q.name().num_labels(),
                    self.config.max_labels
                )),
            ))
        } else if q.query_class() != DNSClass::IN {
            Some((ResponseCode::Refused, refuse("not class IN".into())))
        } else if matches!(
            qtype,
            RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::NULL
        ) {
            Some((
                ResponseCode::Refused,
                refuse(format!("query type {qtype} is not served")),
            ))
        } else {
            None
        };
        if let Some((code, outcome)) = early {
            self.record(caller, shown, Some(qtype), started, outcome)
                .await;
            return reply(&msg, code);
        }
        let allowed = self.resolvable(&name);
        let mut shadow = false;
        if !allowed {
            let why = format!("no rule allows the name {name}");
            if self.mode == EgressMode::Enforce {
                let code = match self.config.unknown_names {
                    UnknownNames::Nxdomain => ResponseCode::NXDomain,
                    UnknownNames::Refused => ResponseCode::Refused,
                };
                self.record(caller, shown, Some(qtype), started, refuse(why))
                    .await;
                return reply(&msg, code);
            }
            shadow = true;
        }
        if matches!(qtype, RecordType::HTTPS | RecordType::SVCB) {
            // Their address hints would reach addresses no A/AAAA answer
            // taught blastgate: an empty answer sends clients to A/AAAA.
            self.record(
                caller,
                shown,
                Some(qtype),
                started,
                Outcome {
                    verdict: Verdict::Allow,
                    shadow,
                    reason: Some(format!("{qtype} answered empty: clients use A/AAAA")),
                    answer: None,
                },
            )
            .await;
            return reply(&msg, ResponseCode::NoError);
        }
        let answer = match upstream::forward(&self.upstreams, query, via == Transport::Tcp).await {
            Ok(a) => a,
            Err(e) => {
                let outcome = Outcome::error(e.to_string());
                self.record(caller, shown, Some(qtype), started, outcome)
                    .await;
                return reply(&msg, ResponseCode::ServFail);
            }
        };
        let Ok(parsed) = Message::from_vec(&answer) else {
            let outcome = Outcome::error("the upstream's answer is not a DNS message");
            self.record(caller, shown, Some(qtype), started, outcome)
                .await;
            return reply(&msg, ResponseCode::ServFail);
        };
        let addrs = addresses(&parsed);
        // Before the answer leaves: the agent's connection cannot win.
        self.learned.learn(&caller.agent, &name, &addrs);
        let text = addrs
            .iter()
            .map(|(ip, _)| ip.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let outcome = Outcome {
            verdict: Verdict::Allow,
            shadow,
            reason: shadow.then(|| format!("would be refused: no rule allows the name {name}")),
            answer: Some(format!("{} {text}", parsed.metadata.response_code)),
        };
        self.record(caller, shown, Some(qtype), started, outcome)
            .await;
        Some(answer)
    }

    /// Resolves the targets' exact `hosts` names itself, now and then
    /// every [`TARGET_REFRESH`], learning their addresses under no agent:
    /// a connection to a target's address is that target even when the
    /// agent reached the address by another name, or by no lookup at all.
    pub async fn follow_targets(self: Arc<Self>, names: Vec<String>, stop: CancellationToken) {
        if names.is_empty() {
            return;
        }
        loop {
            for name in &names {
                for qtype in [RecordType::A, RecordType::AAAA] {
                    if let Some(answers) = self.query(name, qtype).await {
                        self.learned.learn(TARGETS, name, &answers);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TARGET_REFRESH) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The daemon's own lookup of `name` (A, then AAAA) through the
    /// upstreams agents' queries go to: blastgate reaches a name it
    /// connects to itself (STS for an AWS target) by the resolvers it
    /// trusts for agents, not by whatever the host's libc would ask.
    pub async fn lookup(&self, name: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for qtype in [RecordType::A, RecordType::AAAA] {
            if let Some(answers) = self.query(name, qtype).await {
                out.extend(answers.into_iter().map(|(ip, _)| ip));
            }
        }
        out
    }

    /// One recursive query from the daemon; `None` when it could not be
    /// asked or answered.
    async fn query(&self, name: &str, qtype: RecordType) -> Option<Vec<(IpAddr, u32)>> {
        let n = Name::from_ascii(format!("{name}.")).ok()?;
        let mut q = Message::query();
        q.metadata.id = rand_id();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(n, qtype));
        let bytes = q.to_vec().ok()?;
        let answer = upstream::forward(&self.upstreams, &bytes, false)
            .await
            .ok()?;
        Message::from_vec(&answer).ok().map(|m| addresses(&m))
    }

    /// Records, every [`limits::SUMMARY_EVERY`], the refusals over the
    /// rate that were only counted: none goes unrecorded.
    pub async fn summarise(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(limits::SUMMARY_EVERY) => false,
                _ = stop.cancelled() => true,
            };
            let now = Instant::now()
                + if stopping {
                    limits::SUMMARY_EVERY
                } else {
                    std::time::Duration::ZERO
                };
            for (caller, n) in self.rate.pending(now) {
                let why = format!(
                    "{n} queries over the agent's query rate ({}/s, burst {}) refused since \
                     the last record of it",
                    self.config.queries_per_sec, self.config.burst
                );
                self.record(&caller, None, None, Instant::now(), Outcome::refused(why))
                    .await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn record(
        &self,
        caller: &Caller,
        name: Option<String>,
        qtype: Option<RecordType>,
        started: Instant,
        o: Outcome,
    ) {
        let mut e = Event::daemon(EventKind::DnsQuery, o.verdict, o.reason.unwrap_or_default());
        if e.reason.as_deref() == Some("") {
            e.reason = None;
        }
        e.ts = SystemTime::now();
        e.caller = Some(caller.clone());
        e.protocol = Some("dns".into());
        e.action = qtype.map(|t| format!("dns:{t}"));
        e.text = o.answer;
        e.dst_name = name;
        e.shadow = o.shadow;
        e.duration_us = Some(started.elapsed().as_micros() as u64);
        if let Err(err) = self.recorder.record(e).await {
            tracing::error!(error = %err, "recording a DNS query");
        }
    }
}

impl Outcome {
    /// The upstream failed; the agent gets SERVFAIL.
    fn error(why: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Error,
            shadow: false,
            reason: Some(why.into()),
            answer: None,
        }
    }

    fn refused(why: impl Into<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Deny,
            shadow: false,
            reason: Some(why.into()),
            answer: None,
        }
    }
}

/// The A and AAAA addresses of an answer, with their TTLs.
fn addresses(m: &Message) -> Vec<(IpAddr, u32)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// A query id nobody can guess from the last one.
fn rand_id() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_ne_bytes([b[0], b[1]])
}

/// The key the daemon's own lookups are learned under: no agent has an
/// empty name.
const TARGETS: &str = "";
/// How often the daemon resolves the targets' names again.
const TARGET_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// An answer carrying only a response code, with the query's question.
fn reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m.to_vec().ok()
}

/// FORMERR for bytes that do not parse, answered to their id.
fn formerr(query: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&query[..2]);
    // QR=1, opcode 0; RA=1, RCODE=1 (FORMERR).
    out[2] = 0x80;
    out[3] = 0x81;
    out
}

//! The message-level relay. The agent's messages are read whole, checked
//! (statements) and forwarded; the server's answers come back in order,
//! with result rows masked and each statement's record completed when its
//! answer arrives.
//!
//! Both halves share one queue of what the server will answer next
//! ([`Expect`]), pushed as messages are forwarded and popped as answers
//! arrive. It is how an answer is tied to its statement (rows, duration,
//! errors), and how the answers to messages blastgate injected itself (a
//! refusal raised by the server) are kept from the agent.
//!
//! They also share the session's [`Reading`]: the `client_encoding` and
//! `standard_conforming_strings` the server reports. A statement whose
//! meaning depends on them (non-ASCII bytes, a backslash) is read only
//! once every statement before it has been answered, so the reading is
//! the server's own at the time it will parse the statement; and every
//! CommandComplete is checked against what the gateway read (the
//! tripwire): a mismatch ends the session and is recorded as a
//! `differential` event.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use bytes::BytesMut;
use pgwire::messages::{
    extendedquery::{Bind, Execute, Parse},
    response::NoticeResponse,
    simplequery::Query,
};
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    sync::{mpsc, oneshot, Notify},
};

use super::{
    classify::{Classifier, CopyDirection, Lexing, Statement, ACTION_OPAQUE, ACTION_TRANSACTION},
    effects,
    frame::{encode, Frame, PgError, Reader},
    functions::Functions,
    gate::{self, Admitted, Verdict},
    lineage::{self, Lineage},
    mask::{self, Field, Names, RowPlan},
    messages,
    reading::Reading,
    tripwire,
    upstream::{self, Upstream},
};
use crate::{
    policy::masking::MaskPlan,
    protocols::{gateway::Gateway, stream::BoxIo},
    records::{Event, EventKind, Verdict as RecVerdict},
};

/// Which columns a statement's DataRows have.
enum Columns {
    /// A RowDescription will come in the stream (simple Query).
    Inline,
    /// A portal blastgate did not see bound (a SQL cursor): rows of
    /// unknown columns.
    Unknown,
    /// Described earlier: a portal's (formats known) or a statement's
    /// (formats from Bind).
    Portal {
        portal: Vec<u8>,
        statement: Vec<u8>,
        formats: Vec<i16>,
    },
}

/// What the gateway read a statement as, for the tripwire.
#[derive(Debug, Clone)]
struct Read {
    action: &'static str,
    command: String,
}

impl Read {
    fn of(st: &Statement) -> Read {
        Read {
            action: st.action,
            command: st.tagged_as.clone().unwrap_or_else(|| st.command.clone()),
        }
    }
}

struct Pending {
    /// `None` for a refusal blastgate injected (already recorded).
    event: Option<Event>,
    /// `None` for blastgate's own statements.
    read: Option<Read>,
    started: Instant,
    columns: Columns,
    masked: u64,
    /// Where its result columns come from, while column rules apply.
    lineage: Option<Arc<Lineage>>,
}

impl Pending {
    fn new(event: Option<Event>, read: Option<Read>, columns: Columns) -> Box<Pending> {
        Box::new(Pending {
            event,
            read,
            started: Instant::now(),
            columns,
            masked: 0,
            lineage: None,
        })
    }

    fn with_lineage(mut self: Box<Self>, lineage: Option<Arc<Lineage>>) -> Box<Pending> {
        self.lineage = lineage;
        self
    }
}

enum Expect {
    /// ParseComplete, BindComplete, CloseComplete; `forward: false` for
    /// the answers to blastgate's own injected messages.
    Ack { forward: bool },
    /// RowDescription or NoData answering a Describe.
    Describe {
        statement: Option<Vec<u8>>,
        portal: Option<Vec<u8>>,
    },
    /// CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Statement(Box<Pending>),
    /// ReadyForQuery.
    Ready,
    /// Everything answering one Query blastgate sent itself, up to its
    /// ReadyForQuery: kept from the agent, its outcome handed back.
    Probe(Option<oneshot::Sender<Probed>>),
    /// Everything answering one statement blastgate ran itself inside the
    /// agent's pipeline ([`messages::run_named`]), up to its two
    /// CloseCompletes.
    Named {
        tx: Option<oneshot::Sender<Probed>>,
        closes: u8,
    },
    /// The agent's answers from here on are held back, and handed to the
    /// relay's other half whole: the write they answer may yet be undone.
    Hold(Option<oneshot::Sender<Held>>, HoldUntil),
}

/// Where held answers end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldUntil {
    /// A Query's ReadyForQuery.
    Ready,
    /// An Execute's CommandComplete (or error).
    Statement,
}

/// blastgate's own statement and portal inside an agent's pipeline.
const NAMED: &str = "blastgate_effect_9f3c";

/// The outcome of a Query blastgate sent itself.
#[derive(Debug, Default)]
pub struct Probed {
    /// The first value of the first row.
    value: Option<String>,
    /// The first ErrorResponse, as received.
    error: Option<BytesMut>,
    /// The transaction status its ReadyForQuery reported.
    status: u8,
    /// A NOTICE said a transaction was already in progress (BEGIN inside
    /// the agent's own block).
    in_block: bool,
}

/// Answers held back from the agent.
#[derive(Debug, Default)]
pub struct Held {
    /// Everything, the closing ReadyForQuery last.
    bytes: BytesMut,
    failed: bool,
}

/// What both halves know.
#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Expect>>,
    reading: Mutex<Reading>,
    /// Woken at every ReadyForQuery.
    ready: Notify,
    /// The transaction status of the last ReadyForQuery.
    status: Mutex<u8>,
    /// An error since the last ReadyForQuery: the server skips the rest
    /// of the pipeline. Set and read under the queue's lock.
    skipping: std::sync::atomic::AtomicBool,
}

type Queue = Arc<Shared>;

fn lock(q: &Queue) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
    q.queue.lock().unwrap_or_else(|p| p.into_inner())
}

fn reading(q: &Queue) -> std::sync::MutexGuard<'_, Reading> {
    q.reading.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the agent prepared: decided at Parse, re-decided at Execute when
/// the policy changed since.
struct Prepared {
    statements: Arc<Vec<Statement>>,
    generation: usize,
    events: Vec<Event>,
    /// Set when a row limit applies: each execution is measured.
    measure: Option<gate::Measure>,
}

impl Prepared {
    /// What one execution records and is checked against.
    fn template(&self) -> Option<(&Event, Read)> {
        Some((self.events.first()?, Read::of(self.statements.first()?)))
    }
}

pub struct Halves {
    pub agent_reader: Reader<ReadHalf<BoxIo>>,
    pub agent_writer: WriteHalf<BoxIo>,
    pub upstream: Upstream,
}

pub async fn run(
    gw: &Gateway,
    halves: Halves,
    classifier: &Classifier,
    mask: Option<MaskPlan>,
    catalog: Catalog<'_>,
) -> Result<(), PgError> {
    let Halves {
        agent_reader,
        agent_writer,
        upstream,
    } = halves;
    let queue: Queue = Arc::default();
    *queue.status.lock().unwrap_or_else(|p| p.into_inner()) = b'I';
    {
        // The login's reports: the reading the first statement is parsed with.
        let mut r = reading(&queue);
        for p in &upstream.parameters {
            if let Ok((name, value)) = messages::parameter_status(p) {
                r.report(&name, &value);
            }
        }
    }
    let (notices, notices_rx) = mpsc::unbounded_channel();
    let field_rules = mask.as_ref().is_some_and(MaskPlan::has_fields);
    // Shared by both halves and cloned per result row: a pointer, not the rules.
    let mask = mask.map(Arc::new);
    let mut from_agent = FromAgent {
        gw,
        reader: agent_reader,
        writer: upstream.writer,
        queue: queue.clone(),
        classifier,
        out: BytesMut::with_capacity(16 << 10),
        prepared: HashMap::new(),
        portals: HashMap::new(),
        binds: HashMap::new(),
        own_block: false,
        savepoint: effects::savepoint(),
        refusing: None,
        batch: Batch::Closed,
        functions: Functions::new(
            catalog.addr,
            catalog.cfg.clone(),
            catalog.params.clone(),
            catalog.timeout,
        ),
        notices,
        field_rules,
        mask: mask.clone(),
        catalog: catalog.sibling(),
    };
    let mut to_agent = ToAgent {
        gw,
        reader: upstream.reader,
        writer: agent_writer,
        queue,
        out: BytesMut::with_capacity(64 << 10),
        mask,
        catalog,
        statement_fields: HashMap::new(),
        portal_fields: HashMap::new(),
        plan: None,
        copy: None,
        holding: None,
        held_failed: false,
        probed: Probed::default(),
        errored: false,
    };
    let result = tokio::select! {
        r = from_agent.run() => r,
        r = to_agent.run(notices_rx) => r,
    };
    // Statements the server never answered (the connection went away).
    let left: Vec<Expect> = lock(&to_agent.queue).drain(..).collect();
    for e in left {
        if let Expect::Statement(p) = e {
            to_agent.finish(*p, Outcome::Interrupted).await;
        }
    }
    match result {
        Err(PgError::Closed) => Ok(()),
        other => other,
    }
}

struct FromAgent<'g> {
    gw: &'g Gateway,
    reader: Reader<ReadHalf<BoxIo>>,
    writer: WriteHalf<BoxIo>,
    queue: Queue,
    classifier: &'g Classifier,
    out: BytesMut,
    /// By the name's bytes: two names the agent sent are two entries.
    prepared: HashMap<Vec<u8>, Prepared>,
    /// portal -> (statement, result formats)
    portals: HashMap<Vec<u8>, (Vec<u8>, Vec<i16>)>,
    /// The Bind of each portal whose statement is measured, to bind it
    /// again when a write undone for a human runs once approved.
    binds: HashMap<Vec<u8>, BytesMut>,
    /// blastgate's BEGIN opened the transaction block the agent's
    /// pipeline runs in: it is ended, as the server would end the
    /// implicit one, at the agent's Sync.
    own_block: bool,
    /// The savepoint writes are measured under, named for this session.
    savepoint: String,
    /// An extended-protocol message was refused: the rest up to Sync is
    /// dropped, as the server itself does after an error.
    refusing: Option<String>,
    batch: Batch,
    /// User-defined functions, looked up for policy.
    functions: Functions,
    notices: mpsc::UnboundedSender<BytesMut>,
    /// Column masking rules apply to this session.
    field_rules: bool,
    /// Detectors mask literal values in recorded statement text.
    mask: Option<Arc<MaskPlan>>,
    /// Names statements' write targets, for [`lineage::write_refusal`]
    /// (its own connection: ToAgent's may be busy).
    catalog: Catalog<'g>,
}

/// A ReadyForQuery message's length on the wire.
const READY_LEN: usize = 6;

/// Sets the transaction status of the ReadyForQuery that ends `bytes`.
fn set_status(bytes: &mut BytesMut, status: u8) {
    if let Some(last) = bytes.last_mut() {
        *last = status;
    }
}

/// Extended-protocol messages forwarded since the last Sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batch {
    Closed,
    /// Parse, Bind, Describe, Close: nothing has run.
    Open,
    /// An Execute: a statement may have changed the session's settings,
    /// which the server reports only at the next ReadyForQuery.
    Executed,
}

impl Batch {
    fn max_open(self) -> Batch {
        match self {
            Batch::Closed => Batch::Open,
            other => other,
        }
    }
}

/// Text that reads the same under every client encoding and either
/// setting of `standard_conforming_strings`.
fn reads_the_same_everywhere(raw: &[u8]) -> bool {
    raw.is_ascii() && !raw.contains(&b'\\')
}

impl FromAgent<'_> {
    /// The text of a Query or Parse as the server will read it, and the
    /// lexing to parse it with; `Ok(Err(why))` when it cannot be read
    /// exactly (refused, never guessed).
    async fn read_text(&mut self, raw: &[u8]) -> Result<Result<(String, Lexing), String>, PgError> {
        if !reads_the_same_everywhere(raw) && !lock(&self.queue).is_empty() {
            if self.batch == Batch::Executed {
                return Ok(Err(
                    "blastgate: this statement reads differently under other client_encoding or \
                     standard_conforming_strings settings, which a statement executed earlier in \
                     the same pipeline may have changed; send it after a Sync"
                        .into(),
                ));
            }
            self.settle().await?;
        }
        let reading = reading(&self.queue).clone();
        Ok(match reading.decode(raw) {
            Ok(text) => Ok((
                text.into_owned(),
                Lexing {
                    standard_conforming_strings: reading.standard_conforming_strings,
                },
            )),
            Err(e) => Err(format!("blastgate: {e}")),
        })
    }

    /// Sends what is buffered and waits until the server has answered all
    /// of it: the settings it reported by then are the ones it will read
    /// the next statement with.
    async fn settle(&mut self) -> Result<(), PgError> {
        if self.batch != Batch::Closed {
            // Without a Flush the server keeps its answers until Sync.
            self.out.extend_from_slice(&messages::FLUSH);
        }
        self.flush().await?;
        loop {
            let ready = self.queue.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if lock(&self.queue).is_empty() {
                return Ok(());
            }
            ready.await;
        }
    }

    /// Refuses text that cannot be read, recorded as a denied statement.
    async fn unreadable(&self, raw: &[u8], why: &str) {
        let mut e = self.gw.event(EventKind::Statement, RecVerdict::Deny);
        e.action = Some(ACTION_OPAQUE.into());
        e.text = Some(raw.escape_ascii().to_string());
        e.reason = Some(why.to_string());
        self.gw.record(e).await;
    }

    /// The refusal statement, in bytes any client encoding reads alike.
    fn raise(&self, message: &str) -> String {
        let utf8 = reading(&self.queue).client_encoding == "UTF8";
        gate::raise(message, !utf8)
    }

    async fn run(&mut self) -> Result<(), PgError> {
        loop {
            let frame = self.reader.next().await?;
            self.gw
                .counters
                .from_agent
                .fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
            let last = self.handle(frame).await?;
            if !self.reader.has_frame() || last {
                self.flush().await?;
            }
            if last {
                return Err(PgError::Closed);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Where a statement's result columns come from; only needed (and
    /// only worked out) while column rules apply.
    fn lineage(&self, st: &Statement) -> Option<Arc<Lineage>> {
        self.field_rules
            .then(|| super::analyzer().analyze(&st.text))
    }

    /// The lineage of the statement a portal runs.
    fn portal_lineage(&self, columns: &Columns) -> Option<Arc<Lineage>> {
        let Columns::Portal { statement, .. } = columns else {
            return None;
        };
        let st = self.prepared.get(statement)?.statements.first()?;
        self.lineage(st)
    }

    /// Notes what the server will answer to a message being forwarded.
    fn await_answer(&self, e: Expect) {
        lock(&self.queue).push_back(e);
    }

    /// Tells the agent, in a NOTICE, that a statement waits for a human.
    fn waiting(&self) -> impl Fn(uuid::Uuid) + Sync + 'static {
        let notices = self.notices.clone();
        move |id: uuid::Uuid| {
            let mut buf = BytesMut::new();
            let notice = NoticeResponse::new(vec![
                (b'S', "NOTICE".into()),
                (b'V', "NOTICE".into()),
                (b'C', "00000".into()),
                (b'M', format!("waiting for approval {id}")),
            ]);
            if encode(&notice, &mut buf).is_ok() {
                let _ = notices.send(buf);
            }
        }
    }

    /// Checks statements, telling the agent when one waits for a human.
    async fn check(&mut self, statements: &Arc<Vec<Statement>>) -> Result<Verdict, PgError> {
        // Whatever is buffered goes out first: a held statement must not
        // hold up the ones before it.
        self.flush().await?;
        let notify = self.waiting();
        let verdict = gate::check(
            self.gw,
            statements,
            self.mask.as_deref(),
            &mut self.functions,
            &notify,
        )
        .await;
        let Verdict::Run(admitted) = verdict else {
            return Ok(verdict);
        };
        let refused = match self.masking_refusal(statements) {
            Some(r) => Some(r),
            None => self.write_refusal(statements).await,
        };
        let Some(refused) = refused else {
            return Ok(Verdict::Run(admitted));
        };
        for a in admitted {
            let mut e = a.event;
            e.verdict = RecVerdict::Deny;
            e.reason = Some(refused.clone());
            self.gw.record(e).await;
        }
        Ok(Verdict::Refuse(refused))
    }

    /// A masked value written into a column not masked alike would be read
    /// back unmasked: refused while column rules apply to this session
    /// (and when the server cannot be asked what the names are).
    async fn write_refusal(&mut self, statements: &[Statement]) -> Option<String> {
        let m = self.mask.clone().filter(|m| m.has_fields())?;
        for st in statements {
            let Some(l) = self.lineage(st).filter(|l| !l.writes.is_empty()) else {
                continue;
            };
            let Some(facts) = self.catalog.facts(&l).await else {
                return Some(
                    "blastgate: the names this statement writes to could not be looked up \
                     for masking; refused"
                        .to_string(),
                );
            };
            if let Some(refused) = lineage::write_refusal(&l, &facts, &m) {
                return Some(refused);
            }
        }
        None
    }

    /// What column masking cannot follow, refused while column rules apply
    /// to this session rather than let masked values out: COPY ... TO other
    /// than text format to STDOUT (whose rows are parsed and masked
    /// exactly), and values stored where a later statement reads them back
    /// untraced (`set_config(…, email, …)`, large objects).
    fn masking_refusal(&self, statements: &[Statement]) -> Option<String> {
        if self.field_rules
            && statements
                .iter()
                .any(|s| self.lineage(s).is_some_and(|l| l.stores))
        {
            return Some(format!(
                "blastgate: storing a computed value with {} is refused while column masking \
                 rules apply to this session (masking could not follow it back out); \
                 pass constants",
                super::lineage::STORES.join(", ")
            ));
        }
        let copy_out = statements.iter().any(|s| {
            s.copy_direction == Some(CopyDirection::To)
                && !s.copy_program
                && self.lineage(s).is_none_or(|l| l.copy_text.is_none())
        });
        (self.field_rules && copy_out).then(|| {
            "blastgate: COPY ... TO is refused while column masking rules apply to this session, \
             except in text format to STDOUT (no CSV, BINARY, HEADER or ENCODING); \
             use SELECT (its results are masked)"
                .to_string()
        })
    }

    /// A Query or a fast-path call: one unit the server ends with
    /// ReadyForQuery. Forwarded if every statement may run; otherwise the
    /// server is asked to raise the refusal in its place.
    async fn simple_unit(
        &mut self,
        frame: &Frame,
        statements: &Arc<Vec<Statement>>,
    ) -> Result<(), PgError> {
        self.forget_renamed(statements);
        match self.check(statements).await? {
            Verdict::Run(admitted) if admitted.iter().any(|a| a.measure.is_some()) => {
                self.measured_unit(frame, statements, admitted).await?;
            }
            Verdict::Run(admitted) => self.run_admitted(frame, statements, admitted)?,
            Verdict::Refuse(message) => self.refuse_simple(&message)?,
        }
        Ok(())
    }

    /// SQL names prepared statements and cursors in the protocol's own
    /// namespaces: a name SQL may (re)define or drop is no longer the
    /// statement or portal blastgate decided, and executing it is decided
    /// as opaque.
    fn forget_renamed(&mut self, statements: &[Statement]) {
        for st in statements {
            match (st.command.as_str(), &st.prepared_name) {
                ("PREPARE" | "DEALLOCATE", Some(name)) => {
                    self.prepared.remove(name.as_bytes());
                }
                ("DECLARE CURSOR", Some(name)) => {
                    self.portals.remove(name.as_bytes());
                }
                ("DEALLOCATE ALL" | "DISCARD ALL", _) => {
                    self.prepared.clear();
                    self.portals.clear();
                }
                _ => {}
            }
        }
    }

    /// Queues a Query of blastgate's own; its answers are kept from the
    /// agent and its outcome comes back on the receiver.
    fn send_probe(&mut self, sql: &str) -> Result<oneshot::Receiver<Probed>, PgError> {
        let (tx, rx) = oneshot::channel();
        self.await_answer(Expect::Probe(Some(tx)));
        encode(&Query::new(sql.to_string()), &mut self.out)?;
        Ok(rx)
    }

    async fn probe(&mut self, sql: &str) -> Result<Probed, PgError> {
        let rx = self.send_probe(sql)?;
        self.flush().await?;
        rx.await.map_err(|_| PgError::Closed)
    }

    /// A Query with a write a policy limits by rows: run where it can be
    /// undone, its effect counted by the server, then kept (its answers
    /// released to the agent) or undone and held for a human, or refused.
    async fn measured_unit(
        &mut self,
        frame: &Frame,
        statements: &Arc<Vec<Statement>>,
        admitted: Vec<Admitted>,
    ) -> Result<(), PgError> {
        // The transaction status decides the wrapper: only a settled
        // pipeline has one. Extended-protocol messages since the last Sync
        // (a COMMIT among them, say) leave the last reported status stale.
        let pipeline_open = self.batch != Batch::Closed;
        self.settle().await?;
        let status = *self.queue.status.lock().unwrap_or_else(|p| p.into_inner());
        let controls_transactions = statements.iter().any(|s| s.action == ACTION_TRANSACTION);
        let wrapper = if controls_transactions || pipeline_open {
            None
        } else {
            effects::wrapper(status, &self.savepoint)
        };
        let Some(w) = wrapper else {
            if status == b'E' && !pipeline_open {
                // The server refuses every write in a failed transaction.
                return self.run_admitted(frame, statements, admitted);
            }
            // BEGIN/COMMIT inside the string would end blastgate's wrapper.
            return self
                .decide_effects(frame, statements, admitted, gate::UNMEASURED)
                .await;
        };
        let started = Instant::now();
        // The wrapper must be in place before the write is sent: a Query
        // after a failed one still runs.
        let opened = self.probe(&w.open).await?;
        if opened.error.is_some() {
            tracing::warn!(
                "could not open the measuring transaction; deciding the write as unmeasured"
            );
            return self
                .decide_effects(frame, statements, admitted, gate::UNMEASURED)
                .await;
        }
        let before = self.send_probe(effects::COUNT_SQL)?;
        let (held_tx, held) = oneshot::channel();
        {
            let mut queue = lock(&self.queue);
            queue.push_back(Expect::Hold(Some(held_tx), HoldUntil::Ready));
            for st in statements.iter() {
                queue.push_back(Expect::Statement(
                    Pending::new(None, Some(Read::of(st)), Columns::Inline)
                        .with_lineage(self.lineage(st)),
                ));
            }
            queue.push_back(Expect::Ready);
        }
        self.out.extend_from_slice(&frame.bytes);
        let after = self.send_probe(effects::COUNT_SQL)?;
        self.flush().await?;
        let closed = |_| PgError::Closed;
        let before = before.await.map_err(closed)?;
        let mut held = held.await.map_err(closed)?;
        let after = after.await.map_err(closed)?;
        let elapsed = started.elapsed().as_micros() as u64;
        if held.failed {
            // Nothing was changed; the agent sees the failure as direct.
            if status == b'I' {
                let undone = self.probe(&w.undo).await?;
                set_status(&mut held.bytes, undone.status);
            }
            self.deliver(held.bytes);
            for a in admitted {
                let mut e = a.event;
                e.verdict = RecVerdict::Error;
                e.duration_us = Some(elapsed);
                e.reason = Some(format!("{}; failed upstream", e.reason.unwrap_or_default()));
                self.gw.record(e).await;
            }
            return Ok(());
        }
        let rows = effects::rows(before.value.as_deref(), after.value.as_deref())
            .unwrap_or(gate::UNMEASURED);
        let allowed = admitted.iter().all(|a| {
            a.measure.as_ref().is_none_or(|m| {
                gate::effect_decision(self.gw, m, rows).verdict == crate::policy::Verdict::Allow
            })
        });
        if allowed {
            let kept = self.probe(&w.keep).await?;
            match kept.error {
                // The commit itself failed (a deferred constraint, a
                // serialization failure): the agent gets that error.
                Some(error) => {
                    let keep = held.bytes.len().saturating_sub(READY_LEN);
                    held.bytes.truncate(keep);
                    held.bytes.extend_from_slice(&error);
                    held.bytes
                        .extend_from_slice(&[b'Z', 0, 0, 0, 5, kept.status]);
                }
                None => set_status(&mut held.bytes, kept.status),
            }
            self.deliver(held.bytes);
            for a in admitted {
                let mut e = a.event;
                e.duration_us = Some(elapsed);
                if let Some(m) = &a.measure {
                    e.rows = u64::try_from(rows).ok();
                    e.reason = Some(format!(
                        "{} ({rows} rows changed, within the limit of {})",
                        e.reason.unwrap_or_default(),
                        m.command
                    ));
                }
                self.gw.record(e).await;
            }
            return Ok(());
        }
        // Over a limit: undone before anyone is asked, so no lock is held
        // while a human decides.
        self.probe(&w.undo).await?;
        drop(held);
        self.decide_effects(frame, statements, admitted, rows).await
    }

    /// Decides limited writes on `rows` (a human is asked for holds); runs
    /// the Query if all are allowed, refuses it otherwise.
    async fn decide_effects(
        &mut self,
        frame: &Frame,
        statements: &Arc<Vec<Statement>>,
        admitted: Vec<Admitted>,
        rows: i64,
    ) -> Result<(), PgError> {
        let notify = self.waiting();
        let mut refused = None;
        let mut decided = Vec::with_capacity(admitted.len());
        for a in admitted {
            let Some(m) = &a.measure else {
                decided.push(a);
                continue;
            };
            let ruling = gate::on_effect(self.gw, m, rows, &notify).await;
            let mut event = self
                .gw
                .ruled(EventKind::Statement, m.action, m.text.clone(), &ruling);
            event.duration_us = None;
            if !ruling.allowed && refused.is_none() {
                refused = Some(gate::refusal(&m.command, &ruling));
            }
            decided.push(Admitted {
                event,
                measure: None,
            });
        }
        match refused {
            None => self.run_admitted(frame, statements, decided),
            Some(message) => {
                for a in decided {
                    let mut e = a.event;
                    if e.verdict == RecVerdict::Allow {
                        e.verdict = RecVerdict::Deny;
                        e.reason = Some(format!(
                            "not run: another statement of the query was refused ({message})"
                        ));
                    }
                    self.gw.record(e).await;
                }
                self.refuse_simple(&message)
            }
        }
    }

    /// Forwards a Query whose statements were all allowed.
    fn run_admitted(
        &mut self,
        frame: &Frame,
        statements: &Arc<Vec<Statement>>,
        admitted: Vec<Admitted>,
    ) -> Result<(), PgError> {
        let mut queue = lock(&self.queue);
        for (a, st) in admitted.into_iter().zip(statements.iter()) {
            queue.push_back(Expect::Statement(
                Pending::new(Some(a.event), Some(Read::of(st)), Columns::Inline)
                    .with_lineage(self.lineage(st)),
            ));
        }
        queue.push_back(Expect::Ready);
        drop(queue);
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// An Execute of a portal or statement blastgate did not see prepared
    /// (a SQL PREPARE or DECLARE, or a name SQL redefined): what it runs
    /// is unknown here, so it is decided as an opaque statement.
    async fn execute_unknown(&mut self, frame: &Frame) -> Result<(), PgError> {
        let statements = Arc::new(vec![super::classify::unseen(
            "EXECUTE",
            "(Execute of a portal or statement prepared outside the protocol)",
        )]);
        match self.check(&statements).await? {
            Verdict::Run(mut admitted) => {
                let event = admitted.pop().map(|a| a.event);
                self.await_answer(Expect::Statement(Pending::new(
                    event,
                    None,
                    Columns::Unknown,
                )));
                self.out.extend_from_slice(&frame.bytes);
            }
            Verdict::Refuse(message) => self.refusing = Some(message),
        }
        Ok(())
    }

    /// Queues `sql` run through blastgate's own named statement and
    /// portal, inside the agent's pipeline; answered without a
    /// ReadyForQuery.
    fn send_named(&mut self, sql: &str) -> oneshot::Receiver<Probed> {
        let (tx, rx) = oneshot::channel();
        self.await_answer(Expect::Named {
            tx: Some(tx),
            closes: 2,
        });
        messages::run_named(NAMED, sql, &mut self.out);
        rx
    }

    /// An Execute of a write a policy limits by rows, inside the agent's
    /// pipeline: run under a savepoint (in a block blastgate opens if the
    /// agent has none, ended at its Sync), measured, then kept or undone
    /// and held or refused.
    async fn measured_execute(
        &mut self,
        frame: &Frame,
        portal: Vec<u8>,
        columns: Columns,
        m: gate::Measure,
        event: Event,
        read: Option<Read>,
    ) -> Result<(), PgError> {
        let started = Instant::now();
        self.batch = Batch::Executed;
        let named = |sql: &str, out: &mut BytesMut| {
            let (tx, rx) = oneshot::channel();
            messages::run_named(NAMED, sql, out);
            (
                Expect::Named {
                    tx: Some(tx),
                    closes: 2,
                },
                rx,
            )
        };
        let mut bytes = BytesMut::new();
        let (begin_x, begin) = named("BEGIN", &mut bytes);
        let (savepoint_x, savepoint) = named(&format!("SAVEPOINT {}", self.savepoint), &mut bytes);
        let (before_x, before) = named(effects::COUNT_SQL, &mut bytes);
        bytes.extend_from_slice(&frame.bytes);
        let (after_x, after) = named(effects::COUNT_SQL, &mut bytes);
        bytes.extend_from_slice(&messages::FLUSH);
        let (held_tx, held) = oneshot::channel();
        let lineage = self.portal_lineage(&columns);
        let pending = Pending::new(None, read.clone(), columns).with_lineage(lineage);
        // Checked and queued under one lock with the other half's error
        // handling: after an error the server skips everything up to Sync,
        // blastgate's own statements included, and would answer none.
        let skipped = {
            let mut queue = lock(&self.queue);
            if self.queue.skipping.load(Ordering::SeqCst) {
                queue.push_back(Expect::Statement(pending));
                true
            } else {
                queue.push_back(begin_x);
                queue.push_back(savepoint_x);
                queue.push_back(before_x);
                queue.push_back(Expect::Hold(Some(held_tx), HoldUntil::Statement));
                queue.push_back(Expect::Statement(pending));
                queue.push_back(after_x);
                false
            }
        };
        if skipped {
            self.out.extend_from_slice(&frame.bytes);
            let mut record = event;
            record.verdict = RecVerdict::Error;
            record.reason = Some(format!(
                "{}; not run: an earlier statement of the pipeline failed",
                record.reason.unwrap_or_default()
            ));
            self.gw.record(record).await;
            return Ok(());
        }
        self.out.extend_from_slice(&bytes);
        self.flush().await?;
        let closed = |_| PgError::Closed;
        let begin = begin.await.map_err(closed)?;
        let savepoint = savepoint.await.map_err(closed)?;
        let before = before.await.map_err(closed)?;
        let held = held.await.map_err(closed)?;
        let after = after.await.map_err(closed)?;
        let elapsed = started.elapsed().as_micros() as u64;
        let mut record = event;
        record.duration_us = Some(elapsed);
        if let Some(error) = begin.error.or(savepoint.error).or(before.error) {
            // The transaction had already failed: the server skipped the
            // agent's Execute, which answers with the failure.
            self.deliver(error);
            record.verdict = RecVerdict::Error;
            record.reason = Some(format!(
                "{}; not run: the transaction had failed",
                record.reason.unwrap_or_default()
            ));
            self.gw.record(record).await;
            return Ok(());
        }
        // No "already a transaction in progress" notice: the block is ours.
        self.own_block |= !begin.in_block;
        if held.failed {
            self.deliver(held.bytes);
            record.verdict = RecVerdict::Error;
            record.reason = Some(format!(
                "{}; failed upstream",
                record.reason.unwrap_or_default()
            ));
            self.gw.record(record).await;
            return Ok(());
        }
        let rows = effects::rows(before.value.as_deref(), after.value.as_deref())
            .unwrap_or(gate::UNMEASURED);
        if gate::effect_decision(self.gw, &m, rows).verdict == crate::policy::Verdict::Allow {
            // Its answer needs no waiting: nothing is decided on it.
            drop(self.send_named(&format!("RELEASE SAVEPOINT {}", self.savepoint)));
            self.deliver(held.bytes);
            record.rows = u64::try_from(rows).ok();
            record.reason = Some(format!(
                "{} ({rows} rows changed)",
                record.reason.unwrap_or_default()
            ));
            self.gw.record(record).await;
            return Ok(());
        }
        // Over a limit: undone before anyone is asked.
        let undo = self.send_named(&format!("ROLLBACK TO SAVEPOINT {}", self.savepoint));
        let release = self.send_named(&format!("RELEASE SAVEPOINT {}", self.savepoint));
        self.out.extend_from_slice(&messages::FLUSH);
        self.flush().await?;
        undo.await.map_err(closed)?;
        release.await.map_err(closed)?;
        drop(held);
        let notify = self.waiting();
        let ruling = gate::on_effect(self.gw, &m, rows, &notify).await;
        let mut event = self
            .gw
            .ruled(EventKind::Statement, m.action, m.text.clone(), &ruling);
        event.duration_us = None;
        if !ruling.allowed {
            self.gw.record(event).await;
            self.refusing = Some(gate::refusal(&m.command, &ruling));
            return Ok(());
        }
        // Approved: the portal, undone with the savepoint, is bound again
        // and run for real.
        let Some(bind) = self.binds.get(&portal).cloned() else {
            event.verdict = RecVerdict::Error;
            event.reason = Some("approved, but the portal could not be bound again".into());
            self.gw.record(event).await;
            self.refusing = Some(
                "blastgate: the approved statement could not be run again; run it again".into(),
            );
            return Ok(());
        };
        if !portal.is_empty() {
            messages::close_portal(&portal, &mut self.out);
            self.await_answer(Expect::Ack { forward: false });
        }
        self.out.extend_from_slice(&bind);
        self.await_answer(Expect::Ack { forward: false });
        let (statement, formats) = self.portals.get(&portal).cloned().unwrap_or_default();
        let columns = Columns::Portal {
            portal,
            statement,
            formats,
        };
        let lineage = self.portal_lineage(&columns);
        self.await_answer(Expect::Statement(
            Pending::new(Some(event), read, columns).with_lineage(lineage),
        ));
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// Ends the block blastgate opened, as the server ends an implicit
    /// transaction at Sync: committed, or rolled back if anything in it
    /// failed (COMMIT of a failed block is a rollback).
    async fn end_own_block(&mut self) -> Result<(), PgError> {
        let (tx, synced) = oneshot::channel();
        self.await_answer(Expect::Probe(Some(tx)));
        self.out.extend_from_slice(&messages::SYNC);
        let committed = self.send_probe("COMMIT")?;
        self.flush().await?;
        synced.await.map_err(|_| PgError::Closed)?;
        let committed = committed.await.map_err(|_| PgError::Closed)?;
        if let Some(error) = committed.error {
            // A deferred constraint or serialization failure at commit:
            // the agent's pipeline fails, as it would direct.
            self.deliver(error);
        }
        Ok(())
    }

    /// Bytes for the agent, after everything the other half has sent it.
    fn deliver(&self, bytes: BytesMut) {
        let _ = self.notices.send(bytes);
    }

    /// The server raises `message` in place of a Query.
    fn refuse_simple(&mut self, message: &str) -> Result<(), PgError> {
        encode(&Query::new(self.raise(message)), &mut self.out)?;
        self.await_answer(Expect::Statement(Pending::new(None, None, Columns::Inline)));
        self.await_answer(Expect::Ready);
        Ok(())
    }

    /// Returns true after Terminate.
    async fn handle(&mut self, frame: Frame) -> Result<bool, PgError> {
        if self.refusing.is_some() && frame.tag != b'S' && frame.tag != b'X' {
            return Ok(false);
        }
        match frame.tag {
            b'Q' => {
                let raw = messages::query(&frame)?;
                match self.read_text(raw).await? {
                    Ok((text, lexing)) => {
                        let statements = self.classifier.classify_as(&text, lexing);
                        self.simple_unit(&frame, &statements).await?;
                    }
                    Err(why) => {
                        self.unreadable(raw, &why).await;
                        self.refuse_simple(&why)?;
                    }
                }
            }
            b'P' => {
                let (name, raw) = messages::parse(&frame)?;
                let name = name.to_vec();
                self.batch = self.batch.max_open();
                let (text, lexing) = match self.read_text(raw).await? {
                    Ok(read) => read,
                    Err(why) => {
                        self.unreadable(raw, &why).await;
                        self.refusing = Some(why);
                        return Ok(false);
                    }
                };
                let statements = self.classifier.classify_as(&text, lexing);
                match self.check(&statements).await? {
                    Verdict::Run(mut admitted) => {
                        let measure = admitted.first_mut().and_then(|a| a.measure.take());
                        self.prepared.insert(
                            name,
                            Prepared {
                                statements,
                                generation: self.gw.policy_generation(),
                                events: admitted.into_iter().map(|a| a.event).collect(),
                                measure,
                            },
                        );
                        self.await_answer(Expect::Ack { forward: true });
                        self.out.extend_from_slice(&frame.bytes);
                    }
                    Verdict::Refuse(message) => self.refusing = Some(message),
                }
            }
            b'B' => {
                let b = messages::bind(&frame)?;
                self.batch = self.batch.max_open();
                if self
                    .prepared
                    .get(b.statement)
                    .is_some_and(|p| p.measure.is_some())
                {
                    self.binds.insert(b.portal.to_vec(), frame.bytes.clone());
                }
                self.portals
                    .insert(b.portal.to_vec(), (b.statement.to_vec(), b.result_formats));
                self.await_answer(Expect::Ack { forward: true });
                self.out.extend_from_slice(&frame.bytes);
            }
            b'D' => {
                let (kind, name) = messages::target(&frame, "Describe")?;
                let name = name.to_vec();
                self.batch = self.batch.max_open();
                self.await_answer(if kind == b'S' {
                    Expect::Describe {
                        statement: Some(name),
                        portal: None,
                    }
                } else {
                    Expect::Describe {
                        statement: None,
                        portal: Some(name),
                    }
                });
                self.out.extend_from_slice(&frame.bytes);
            }
            b'E' => {
                let portal = messages::execute(&frame)?.to_vec();
                self.batch = Batch::Executed;
                let known = self
                    .portals
                    .get(&portal)
                    .filter(|(statement, _)| self.prepared.contains_key(statement))
                    .cloned();
                let Some((statement, formats)) = known else {
                    return self.execute_unknown(&frame).await.map(|_| false);
                };
                let stale = self
                    .prepared
                    .get(&statement)
                    .is_some_and(|p| p.generation != self.gw.policy_generation());
                if stale {
                    // Prepared under other policies: decided again.
                    let statements = self.prepared.get(&statement).map(|p| p.statements.clone());
                    if let Some(statements) = statements {
                        match self.check(&statements).await? {
                            Verdict::Run(mut admitted) => {
                                let generation = self.gw.policy_generation();
                                if let Some(p) = self.prepared.get_mut(&statement) {
                                    p.generation = generation;
                                    p.measure = admitted.first_mut().and_then(|a| a.measure.take());
                                    p.events = admitted.into_iter().map(|a| a.event).collect();
                                }
                            }
                            Verdict::Refuse(message) => {
                                self.refusing = Some(message);
                                return Ok(false);
                            }
                        }
                    }
                }
                // Each execution is its own record.
                let (event, read) = match self.prepared.get(&statement).and_then(Prepared::template)
                {
                    Some((template, read)) => (Some(self.gw.session.restamp(template)), Some(read)),
                    None => (None, None),
                };
                let measure = self
                    .prepared
                    .get(&statement)
                    .and_then(|p| p.measure.clone());
                if let (Some(m), Some(event)) = (measure, event.clone()) {
                    let columns = Columns::Portal {
                        portal: portal.clone(),
                        statement,
                        formats,
                    };
                    self.measured_execute(&frame, portal, columns, m, event, read)
                        .await?;
                    return Ok(false);
                }
                let columns = Columns::Portal {
                    portal,
                    statement,
                    formats,
                };
                let lineage = self.portal_lineage(&columns);
                self.await_answer(Expect::Statement(
                    Pending::new(event, read, columns).with_lineage(lineage),
                ));
                self.out.extend_from_slice(&frame.bytes);
            }
            b'C' => {
                let (kind, name) = messages::target(&frame, "Close")?;
                let name = name.to_vec();
                self.batch = self.batch.max_open();
                if kind == b'S' {
                    self.prepared.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                self.await_answer(Expect::Ack { forward: true });
                self.out.extend_from_slice(&frame.bytes);
            }
            b'S' => {
                self.batch = Batch::Closed;
                if let Some(message) = self.refusing.take() {
                    // The server raises the refusal itself, so the agent
                    // gets it in order and the transaction state is real.
                    encode(
                        &Parse::new(None, self.raise(&message), Vec::new()),
                        &mut self.out,
                    )?;
                    encode(
                        &Bind::new(None, None, Vec::new(), Vec::new(), Vec::new()),
                        &mut self.out,
                    )?;
                    encode(&Execute::new(None, 0), &mut self.out)?;
                    let mut queue = lock(&self.queue);
                    queue.push_back(Expect::Ack { forward: false });
                    queue.push_back(Expect::Ack { forward: false });
                    queue.push_back(Expect::Statement(Pending::new(None, None, Columns::Inline)));
                }
                if std::mem::take(&mut self.own_block) {
                    self.end_own_block().await?;
                }
                self.await_answer(Expect::Ready);
                self.out.extend_from_slice(&frame.bytes);
            }
            b'F' => {
                // Fast-path function calls name a function by OID: nothing
                // to see, so they are opaque statements.
                let statements = Arc::new(vec![super::classify::unseen(
                    "FUNCTION CALL",
                    "(fast-path function call)",
                )]);
                self.simple_unit(&frame, &statements).await?;
            }
            // Flush, COPY data / done / fail: forwarded as they are.
            b'H' | b'd' | b'c' | b'f' => self.out.extend_from_slice(&frame.bytes),
            b'X' => {
                self.out.extend_from_slice(&frame.bytes);
                return Ok(true);
            }
            other => {
                return Err(PgError::Protocol(format!(
                    "unexpected message {:?} from the agent",
                    other as char
                )))
            }
        }
        Ok(false)
    }
}

enum Outcome {
    Done {
        tag: String,
    },
    Failed {
        error: String,
    },
    /// Skipped by the server after an earlier error in the same batch.
    NotRun,
    Interrupted,
}

/// Names table columns for masking, through a second upstream connection
/// opened on first need (the session's own connection is busy relaying).
pub struct Catalog<'c> {
    pub addr: std::net::SocketAddr,
    pub cfg: &'c super::PostgresTarget,
    pub params: Vec<(String, String)>,
    pub timeout: std::time::Duration,
    pub conn: Option<Upstream>,
    pub names: Names,
    /// Recent answers about statements' names, by the names asked about.
    pub facts: HashMap<String, (Instant, Arc<lineage::Facts>)>,
}

/// How long an answer about a statement's names is reused: statements
/// naming the same tables and functions cost one catalog query a second,
/// not one each,
/// while a function or view created since (a DDL statement, which waits
/// for a human in production) is seen within this time.
const FACTS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Catalog<'_> {
    /// Resolves the tables of `fields` not yet known. Errors leave them
    /// unknown, and the plan masks unknown columns whole.
    async fn resolve(&mut self, fields: &[Field]) {
        let mut missing: Vec<u32> = fields
            .iter()
            .filter(|f| f.table_oid != 0 && !self.names.contains_key(&(f.table_oid, f.column)))
            .map(|f| f.table_oid)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        if let Err(e) = self.query(&missing).await {
            tracing::warn!(error = %e, "naming columns for masking failed; masking them whole");
            self.conn = None;
        }
    }

    async fn query(&mut self, oids: &[u32]) -> Result<(), PgError> {
        if self.conn.is_none() {
            self.conn =
                Some(upstream::connect(self.addr, self.cfg, &self.params, self.timeout).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        encode(&Query::new(mask::catalog_query(oids)), &mut out)?;
        conn.writer.write_all(&out).await?;
        loop {
            let f = conn.reader.next().await?;
            match f.tag {
                b'D' => {
                    if let Some((oid, attnum, name)) = catalog_row(&f) {
                        self.names.insert((oid, attnum), name);
                    }
                }
                b'E' => return Err(PgError::Upstream(upstream::error_text(&f))),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }
}

impl<'c> Catalog<'c> {
    /// Another catalog for the same server, with a connection of its own.
    fn sibling(&self) -> Catalog<'c> {
        Catalog {
            addr: self.addr,
            cfg: self.cfg,
            params: self.params.clone(),
            timeout: self.timeout,
            conn: None,
            names: Names::default(),
            facts: HashMap::new(),
        }
    }

    /// What the names of a statement mean to the server, asked again once
    /// [`FACTS_TTL`] has passed: a function or view created since (by this
    /// session or another) must not be judged by an old answer for long.
    /// `None` when the server could not be asked (the caller then masks
    /// every column).
    async fn facts(&mut self, l: &Lineage) -> Option<Arc<lineage::Facts>> {
        // The answers depend on the names only, not on the statement's
        // literals: keyed by the first question.
        let key = lineage::facts_query(l).unwrap_or_default();
        if let Some((at, facts)) = self.facts.get(&key) {
            if at.elapsed() < FACTS_TTL {
                return Some(facts.clone());
            }
        }
        let mut lookup = lineage::Lookup::new(l);
        while let Some(sql) = lookup.next_query() {
            match self.rows(&sql).await {
                Ok(rows) => lookup.add(&rows),
                Err(e) => {
                    tracing::warn!(error = %e, "looking up names for masking failed; masking every column");
                    self.conn = None;
                    return None;
                }
            }
        }
        let facts = Arc::new(lookup.facts);
        if self.facts.len() >= 256 {
            self.facts.retain(|_, (at, _)| at.elapsed() < FACTS_TTL);
            if self.facts.len() >= 256 {
                self.facts.clear();
            }
        }
        self.facts.insert(key, (Instant::now(), facts.clone()));
        Some(facts)
    }

    /// Runs one query on the catalog connection; its rows as text.
    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        if self.conn.is_none() {
            self.conn =
                Some(upstream::connect(self.addr, self.cfg, &self.params, self.timeout).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        upstream::query_rows(conn, sql, None).await
    }
}

fn catalog_row(f: &Frame) -> Option<(u32, i16, String)> {
    let values = mask::row_values(f).ok()?;
    let text = |i: usize| std::str::from_utf8(values.get(i).copied().flatten()?).ok();
    Some((
        text(0)?.parse().ok()?,
        text(1)?.parse().ok()?,
        text(2)?.to_string(),
    ))
}

struct ToAgent<'g, 'c> {
    gw: &'g Gateway,
    reader: Reader<ReadHalf<BoxIo>>,
    writer: WriteHalf<BoxIo>,
    queue: Queue,
    out: BytesMut,
    mask: Option<Arc<MaskPlan>>,
    catalog: Catalog<'c>,
    statement_fields: HashMap<Vec<u8>, Vec<Field>>,
    portal_fields: HashMap<Vec<u8>, Vec<Field>>,
    /// Masking for the rows now flowing; `None` until known.
    plan: Option<RowPlan>,
    /// Masking for a text-format COPY now flowing: each column's style.
    copy: Option<(
        Vec<Option<crate::policy::masking::Style>>,
        lineage::CopyText,
    )>,
    /// Answers being held back (a write being measured), and whether one
    /// of them is an error.
    holding: Option<(oneshot::Sender<Held>, HoldUntil)>,
    held_failed: bool,
    /// The outcome of blastgate's own Query being answered.
    probed: Probed,
    /// An error since the last ReadyForQuery: the server skips the rest
    /// of the agent's pipeline.
    errored: bool,
}

impl ToAgent<'_, '_> {
    async fn run(&mut self, mut notices: mpsc::UnboundedReceiver<BytesMut>) -> Result<(), PgError> {
        loop {
            // Bytes from the other half first: it sends answers it held
            // back before it lets the server answer anything after them.
            let frame = tokio::select! {
                biased;
                Some(n) = notices.recv() => {
                    self.out.extend_from_slice(&n);
                    self.flush().await?;
                    continue;
                }
                f = self.reader.next() => f?,
            };
            self.handle(frame).await?;
            if lock(&self.queue).is_empty() {
                // Everything sent has been answered (a Flush's answers end
                // without a ReadyForQuery): a settling statement may go.
                self.queue.ready.notify_waiters();
            }
            if !self.reader.has_frame() {
                self.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        if self.holding.is_some() {
            // Released whole, or dropped, once the write is decided.
            return Ok(());
        }
        if !self.out.is_empty() {
            self.gw
                .counters
                .to_agent
                .fetch_add(self.out.len() as u64, Ordering::Relaxed);
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    fn pop(&self) -> Option<Expect> {
        lock(&self.queue).pop_front()
    }

    /// A message answering a Query blastgate sent itself.
    async fn probe_frame(&mut self, frame: Frame) -> Result<(), PgError> {
        match frame.tag {
            b'D' if self.probed.value.is_none() => {
                let values = mask::row_values(&frame)?;
                self.probed.value = values
                    .first()
                    .copied()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            }
            b'E' if self.probed.error.is_none() => {
                // It may reach the agent (a COMMIT blastgate sent failing).
                let frame = self.server_message(frame);
                self.probed.error = Some(frame.bytes);
            }
            b'S' => self.parameter(frame)?,
            b'A' => {
                let bytes = self.notification(frame);
                self.out.extend_from_slice(&bytes);
            }
            b'Z' => {
                let status = self.ready_status(&frame);
                self.probed.status = status;
                if let Some(Expect::Probe(Some(tx))) = self.pop() {
                    let _ = tx.send(std::mem::take(&mut self.probed));
                }
                self.queue.ready.notify_waiters();
            }
            _ => {}
        }
        Ok(())
    }

    /// An error: the server skips the rest of the pipeline up to Sync. The
    /// other half checks this under the queue's lock before it queues
    /// statements of its own.
    fn mark_skipping(&mut self) {
        let _queue = lock(&self.queue);
        self.queue.skipping.store(true, Ordering::SeqCst);
        self.errored = true;
    }

    /// Notes a ReadyForQuery's transaction status for the other half.
    fn ready_status(&self, frame: &Frame) -> u8 {
        {
            let _queue = lock(&self.queue);
            self.queue.skipping.store(false, Ordering::SeqCst);
        }
        let status = frame.body().first().copied().unwrap_or(b'I');
        *self.queue.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        status
    }

    fn parameter(&mut self, frame: Frame) -> Result<(), PgError> {
        // Reported before the ReadyForQuery that ends the statement which
        // changed it: the reading the next one is parsed with.
        let (name, value) = messages::parameter_status(&frame)?;
        if reading(&self.queue).report(&name, &value) {
            tracing::debug!(%name, %value, "the server's reading changed");
        }
        self.out.extend_from_slice(&frame.bytes);
        Ok(())
    }

    /// A message answering a statement blastgate ran inside the agent's
    /// pipeline.
    async fn named_frame(&mut self, frame: Frame) -> Result<(), PgError> {
        match frame.tag {
            b'D' if self.probed.value.is_none() => {
                let values = mask::row_values(&frame)?;
                self.probed.value = values
                    .first()
                    .copied()
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            }
            b'N' => self.probed.in_block |= notice_code(&frame) == Some(&b"25001"[..]),
            b'S' => self.parameter(frame)?,
            b'A' => {
                let bytes = self.notification(frame);
                self.out.extend_from_slice(&bytes);
            }
            b'3' => {
                let done = match lock(&self.queue).front_mut() {
                    Some(Expect::Named { closes, .. }) => {
                        *closes = closes.saturating_sub(1);
                        *closes == 0
                    }
                    _ => false,
                };
                if done {
                    if let Some(Expect::Named { tx: Some(tx), .. }) = self.pop() {
                        let _ = tx.send(std::mem::take(&mut self.probed));
                    }
                }
            }
            b'E' => {
                // It may reach the agent.
                let frame = self.server_message(frame);
                self.probed.error = Some(frame.bytes);
                self.mark_skipping();
                if let Some(Expect::Named { tx: Some(tx), .. }) = self.pop() {
                    let _ = tx.send(std::mem::take(&mut self.probed));
                }
                self.skip_after_error("failed: blastgate's own statement failed first")
                    .await;
            }
            _ => {}
        }
        Ok(())
    }

    /// After an error the server skips everything up to the next Sync:
    /// each skipped statement, injected statement and held answer is
    /// settled as not run. Stops at a ReadyForQuery, or at a Query of
    /// blastgate's own (its Sync ends the skipping).
    async fn skip_after_error(&mut self, error: &str) {
        let mut first = true;
        loop {
            let stop = matches!(
                lock(&self.queue).front(),
                None | Some(Expect::Ready) | Some(Expect::Probe(_))
            );
            if stop {
                return;
            }
            match self.pop() {
                Some(Expect::Statement(p)) => {
                    let outcome = if first {
                        Outcome::Failed {
                            error: error.to_string(),
                        }
                    } else {
                        Outcome::NotRun
                    };
                    first = false;
                    self.finish(*p, outcome).await;
                }
                Some(Expect::Named { tx: Some(tx), .. }) => {
                    let _ = tx.send(Probed::default());
                }
                Some(Expect::Hold(Some(tx), _)) => {
                    let _ = tx.send(Held {
                        bytes: BytesMut::new(),
                        failed: true,
                    });
                }
                _ => {}
            }
        }
    }

    /// Hands held answers over, once the held region ends.
    fn release_held(&mut self) {
        if let Some((tx, _)) = self.holding.take() {
            let held = Held {
                bytes: std::mem::take(&mut self.out),
                failed: std::mem::take(&mut self.held_failed),
            };
            let _ = tx.send(held);
        }
    }

    fn holding_until(&self, until: HoldUntil) -> bool {
        self.holding.as_ref().is_some_and(|(_, u)| *u == until)
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), PgError> {
        let head = match lock(&self.queue).front() {
            Some(Expect::Probe(_)) => Some(0),
            Some(Expect::Named { .. }) => Some(1),
            Some(Expect::Hold(..)) => Some(2),
            _ => None,
        };
        match head {
            Some(0) => return self.probe_frame(frame).await,
            Some(1) => return self.named_frame(frame).await,
            Some(_) => {
                self.flush().await?;
                if let Some(Expect::Hold(Some(tx), until)) = self.pop() {
                    self.holding = Some((tx, until));
                    self.held_failed = false;
                }
            }
            None => {}
        }
        match frame.tag {
            b'A' if self.holding.is_some() => {
                // A notification is not part of the write's answer: it
                // goes now, whatever becomes of the write.
                let bytes = self.notification(frame);
                self.writer.write_all(&bytes).await?;
            }
            b'1' | b'2' | b'3' => {
                let forward = !matches!(self.pop(), Some(Expect::Ack { forward: false }));
                if forward {
                    self.out.extend_from_slice(&frame.bytes);
                }
            }
            b'n' => {
                self.pop();
                self.out.extend_from_slice(&frame.bytes);
            }
            b'T' => {
                let head_is_describe =
                    matches!(lock(&self.queue).front(), Some(Expect::Describe { .. }));
                if head_is_describe {
                    if let Some(Expect::Describe { statement, portal }) = self.pop() {
                        if self.mask.is_some() {
                            let fields = mask::fields(&frame)?;
                            match (statement, portal) {
                                (Some(s), _) => {
                                    self.statement_fields.insert(s, fields);
                                }
                                (_, Some(p)) => {
                                    self.portal_fields.insert(p, fields);
                                }
                                _ => {}
                            }
                        }
                    }
                } else if let Some(m) = self.mask.clone() {
                    let fields = mask::fields(&frame)?;
                    self.set_plan(&fields, &m).await;
                }
                self.out.extend_from_slice(&frame.bytes);
            }
            b'D' => self.data_row(frame).await?,
            b'H' => {
                self.copy = None;
                if let Some(m) = self.mask.clone().filter(|m| m.has_fields()) {
                    self.copy_plan(&frame, &m).await;
                }
                self.out.extend_from_slice(&frame.bytes);
            }
            b'd' if self.copy.is_some() => {
                if let (Some(m), Some((styles, text))) = (self.mask.clone(), self.copy.as_ref()) {
                    let n = mask::mask_copy_text(
                        &frame,
                        styles,
                        text.delimiter,
                        &text.null,
                        &m,
                        &mut self.out,
                    );
                    self.count_masked(n);
                }
            }
            b'd' => match &self.mask {
                Some(m) if m.has_detectors() => {
                    let n = mask::scan_copy(&frame, m, &mut self.out);
                    self.count_masked(n);
                }
                _ => self.out.extend_from_slice(&frame.bytes),
            },
            b'C' | b'I' | b's' => {
                let tag = if frame.tag == b'C' {
                    upstream_tag(&frame)
                } else {
                    String::new()
                };
                self.plan = None;
                self.copy = None;
                let head_is_statement =
                    matches!(lock(&self.queue).front(), Some(Expect::Statement(_)));
                if !head_is_statement {
                    if frame.tag == b'C' {
                        // The server completed a statement the gateway never read.
                        return self.differential(None, None, &tag).await;
                    }
                    self.out.extend_from_slice(&frame.bytes);
                    return Ok(());
                }
                if let Some(Expect::Statement(p)) = self.pop() {
                    if frame.tag == b'C' {
                        if let Some(read) = &p.read {
                            if !tripwire::agrees(read.action, &read.command, &tag) {
                                let (read, text) = (
                                    p.read.clone(),
                                    p.event.as_ref().and_then(|e| e.text.clone()),
                                );
                                self.finish(
                                    *p,
                                    Outcome::Failed {
                                        error: format!("differential: the server completed {tag}"),
                                    },
                                )
                                .await;
                                return self.differential(read, text, &tag).await;
                            }
                        }
                    }
                    self.out.extend_from_slice(&frame.bytes);
                    self.finish(*p, Outcome::Done { tag }).await;
                    if self.holding_until(HoldUntil::Statement) {
                        self.release_held();
                    }
                }
            }
            b'N' => {
                let frame = self.server_message(frame);
                self.out.extend_from_slice(&frame.bytes);
            }
            b'A' => {
                let bytes = self.notification(frame);
                self.out.extend_from_slice(&bytes);
            }
            b'V' => {
                // FunctionCallResponse: a fast-path call's answer, masked
                // whole while column rules apply (its origin is unknown).
                match (&self.mask, mask::function_result(&frame)) {
                    (Some(m), Some(bytes)) if m.has_fields() => self.out.extend_from_slice(&bytes),
                    _ => self.out.extend_from_slice(&frame.bytes),
                }
                if matches!(lock(&self.queue).front(), Some(Expect::Statement(_))) {
                    if let Some(Expect::Statement(p)) = self.pop() {
                        self.finish(*p, Outcome::Done { tag: String::new() }).await;
                    }
                }
            }
            b'E' => {
                self.plan = None;
                self.copy = None;
                if self.holding.is_some() {
                    self.held_failed = true;
                }
                let frame = self.server_message(frame);
                let error = upstream::error_text(&frame);
                self.out.extend_from_slice(&frame.bytes);
                self.mark_skipping();
                // The failed message's statement, then everything the server
                // now skips up to the next ReadyForQuery.
                self.skip_after_error(&error).await;
                if self.holding_until(HoldUntil::Statement) {
                    self.release_held();
                }
            }
            b'Z' => {
                self.plan = None;
                let errored = std::mem::take(&mut self.errored);
                let mut unanswered = None;
                loop {
                    if matches!(lock(&self.queue).front(), Some(Expect::Probe(_))) {
                        // The answer to blastgate's own Sync, which ended the
                        // skipping after an error in the agent's pipeline.
                        return self.probe_frame(frame).await;
                    }
                    match self.pop() {
                        None | Some(Expect::Ready) => break,
                        Some(Expect::Statement(p)) => {
                            // Messages after an error are skipped by the
                            // server; otherwise a statement still here was
                            // read by the gateway and never run.
                            let decided_blind =
                                p.read.as_ref().is_some_and(|r| r.action == ACTION_OPAQUE);
                            if !errored
                                && unanswered.is_none()
                                && p.read.is_some()
                                && !decided_blind
                            {
                                unanswered = Some((
                                    p.read.clone(),
                                    p.event.as_ref().and_then(|e| e.text.clone()),
                                ));
                            }
                            self.finish(*p, Outcome::NotRun).await;
                        }
                        Some(Expect::Named { tx: Some(tx), .. }) => {
                            let _ = tx.send(Probed::default());
                        }
                        Some(Expect::Hold(Some(tx), _)) => {
                            let _ = tx.send(Held {
                                bytes: BytesMut::new(),
                                failed: true,
                            });
                        }
                        Some(_) => {}
                    }
                }
                if let Some((read, text)) = unanswered {
                    return self.differential(read, text, "(no statement)").await;
                }
                self.out.extend_from_slice(&frame.bytes);
                self.ready_status(&frame);
                self.release_held();
                self.queue.ready.notify_waiters();
            }
            b'S' => self.parameter(frame)?,
            _ => self.out.extend_from_slice(&frame.bytes),
        }
        Ok(())
    }

    /// The server ran something other than what the gateway read: the
    /// reading was wrong, so nothing more of this session is trusted.
    async fn differential(
        &mut self,
        read: Option<Read>,
        text: Option<String>,
        tag: &str,
    ) -> Result<(), PgError> {
        let command = read
            .as_ref()
            .map_or("(no statement)", |r| r.command.as_str());
        let mut e = self.gw.event(EventKind::Differential, RecVerdict::Error);
        e.action = read.as_ref().map(|r| r.action.to_string());
        e.text = text;
        e.reason = Some(format!(
            "the server completed {tag:?} where blastgate read {command:?}; session ended"
        ));
        self.gw.record(e).await;
        crate::metrics::get().sql_differentials.inc();
        tracing::error!(%tag, %command, "differential: the server ran another statement than the one decided");
        let message =
            "blastgate: the server ran a statement other than the one blastgate decided; \
                       the session is ended and the difference recorded";
        let error = pgwire::messages::response::ErrorResponse::new(vec![
            (b'S', "FATAL".into()),
            (b'V', "FATAL".into()),
            (b'C', "XX000".into()),
            (b'M', message.into()),
        ]);
        encode(&error, &mut self.out)?;
        self.flush().await?;
        Err(PgError::Protocol(format!(
            "differential: server completed {tag:?}, blastgate read {command:?}"
        )))
    }

    async fn set_plan(&mut self, fields: &[Field], m: &MaskPlan) {
        if m.has_fields() {
            self.catalog.resolve(fields).await;
        }
        let mut plan = mask::plan(fields, Some(&self.catalog.names), m);
        if m.has_fields() {
            // Columns computed from masked columns are masked too.
            let styles = match self.in_flight() {
                Some(l) => match self.catalog.facts(&l).await {
                    Some(facts) => lineage::evaluate(&l, &facts, m, fields.len()),
                    None => vec![Some(crate::policy::masking::Style::Fixed); fields.len()],
                },
                // Rows of nothing blastgate forwarded: unknown origin.
                None => vec![Some(crate::policy::masking::Style::Fixed); fields.len()],
            };
            plan.derive(&styles);
        }
        self.plan = Some(plan);
    }

    /// How the rows of a `COPY … TO STDOUT` starting now (CopyOutResponse)
    /// are masked. What FromAgent let through is text format; anything
    /// else that comes (nothing should) is masked whole.
    async fn copy_plan(&mut self, frame: &Frame, m: &MaskPlan) {
        use crate::policy::masking::Style;
        let body = frame.body();
        let width = body
            .get(1..3)
            .map_or(0, |w| i16::from_be_bytes([w[0], w[1]]).max(0) as usize);
        let text_format = body.first() == Some(&0);
        let lineage = self.in_flight();
        let (styles, text) = match lineage
            .as_ref()
            .and_then(|l| Some((l, l.copy_text.clone()?)))
        {
            Some((l, text)) if text_format => match self.catalog.facts(l).await {
                Some(facts) => (lineage::evaluate(l, &facts, m, width), text),
                None => (vec![Some(Style::Fixed); width], text),
            },
            _ => (
                vec![Some(Style::Fixed); width],
                lineage::CopyText {
                    delimiter: b'\t',
                    null: "\\N".into(),
                },
            ),
        };
        self.copy = Some((styles, text));
    }

    /// A NotificationResponse as the agent may see it (every path one goes
    /// out by passes here).
    fn notification(&self, frame: Frame) -> BytesMut {
        match &self.mask {
            Some(m) => mask::notification(&frame, m.has_fields(), m).unwrap_or(frame.bytes),
            None => frame.bytes,
        }
    }

    /// The lineage of the statement the server is answering now.
    fn in_flight(&self) -> Option<Arc<Lineage>> {
        match lock(&self.queue).front() {
            Some(Expect::Statement(p)) => p.lineage.clone(),
            _ => None,
        }
    }

    /// An error or notice on its way to the agent, masked: detectors over
    /// its texts and, while column rules apply and the statement in flight
    /// names any table or function (or nothing tells which statement it
    /// is), the texts that can quote values hidden. Decided from the
    /// statement alone, with no catalog round trip: errors go out as fast
    /// as they came, and the quoted names and values the agent typed
    /// itself are kept.
    fn server_message(&self, frame: Frame) -> Frame {
        let Some(m) = self.mask.as_deref() else {
            return frame;
        };
        let statement = self.in_flight();
        let redact = m.has_fields() && statement.as_deref().is_none_or(Lineage::may_quote_values);
        let known = statement.as_ref().map_or("", |l| l.text.as_str());
        match mask::server_message(&frame, redact.then_some(known), m) {
            Some(bytes) => Frame {
                tag: frame.tag,
                bytes,
            },
            None => frame,
        }
    }

    async fn data_row(&mut self, frame: Frame) -> Result<(), PgError> {
        let Some(m) = self.mask.clone() else {
            self.out.extend_from_slice(&frame.bytes);
            return Ok(());
        };
        if self.plan.is_none() {
            // Rows of an Execute: the portal's or statement's description.
            let fields = {
                let queue = lock(&self.queue);
                match queue.front() {
                    Some(Expect::Statement(p)) => match &p.columns {
                        Columns::Portal {
                            portal,
                            statement,
                            formats,
                        } => self.portal_fields.get(portal).cloned().or_else(|| {
                            self.statement_fields
                                .get(statement)
                                .map(|f| mask::with_formats(f, formats))
                        }),
                        Columns::Inline | Columns::Unknown => None,
                    },
                    _ => None,
                }
            };
            match fields {
                Some(f) => self.set_plan(&f, &m).await,
                // Rows nobody described: every value is treated as text
                // of unknown origin, masked whole when column rules exist.
                None => {
                    self.plan = Some(RowPlan::default());
                    if m.has_fields() {
                        let n = blank_row(&frame, &mut self.out)?;
                        self.count_masked(n);
                        self.plan = None;
                        return Ok(());
                    }
                }
            }
        }
        let plan = self.plan.get_or_insert_with(RowPlan::default);
        if plan.is_noop() {
            self.out.extend_from_slice(&frame.bytes);
            return Ok(());
        }
        let n = mask::rewrite(&frame, plan, &m, &mut self.out)?;
        self.count_masked(n);
        Ok(())
    }

    fn count_masked(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.gw.masked(n);
        if let Some(Expect::Statement(p)) = lock(&self.queue).front_mut() {
            p.masked += n;
        }
    }

    async fn finish(&self, p: Pending, outcome: Outcome) {
        let Some(mut event) = p.event else { return };
        event.duration_us = Some(p.started.elapsed().as_micros() as u64);
        event.masked_fields = (p.masked > 0).then_some(p.masked);
        match outcome {
            Outcome::Done { tag } => {
                event.rows = tag.rsplit(' ').next().and_then(|n| n.parse().ok());
            }
            Outcome::Failed { error } => {
                event.verdict = RecVerdict::Error;
                event.reason = Some(format!(
                    "{}; failed upstream: {error}",
                    event.reason.unwrap_or_default()
                ));
            }
            Outcome::NotRun => {
                event.verdict = RecVerdict::Error;
                event.reason = Some(format!(
                    "{}; not run: an earlier statement of the batch failed",
                    event.reason.unwrap_or_default()
                ));
            }
            Outcome::Interrupted => {
                event.verdict = RecVerdict::Error;
                event.reason = Some(format!(
                    "{}; interrupted: the connection ended before the server answered",
                    event.reason.unwrap_or_default()
                ));
            }
        }
        self.gw.record(event).await;
    }
}

/// The SQLSTATE of a NoticeResponse or ErrorResponse.
fn notice_code(frame: &Frame) -> Option<&[u8]> {
    let mut fields = frame.body();
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|b| *b == 0)?;
        if kind == b'C' {
            return Some(&rest[..end]);
        }
        fields = rest.get(end + 1..)?;
    }
    None
}

/// CommandComplete's tag ("SELECT 3", "INSERT 0 1").
fn upstream_tag(frame: &Frame) -> String {
    let body = frame.body();
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// A row with every non-NULL value replaced by `****` (text): for rows
/// whose columns are unknown while column rules apply.
fn blank_row(frame: &Frame, out: &mut BytesMut) -> Result<u64, PgError> {
    let values = mask::row_values(frame)?;
    let n = values.iter().flatten().count() as u64;
    mask::write_row(values.iter().map(|v| v.map(|_| b"****".as_slice())), out);
    Ok(n)
}

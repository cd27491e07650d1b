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

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use bytes::BytesMut;
use pgwire::messages::{
    extendedquery::{Bind, Close, Describe, Execute, Parse},
    response::NoticeResponse,
    simplequery::Query,
};
use tokio::{
    io::{AsyncWriteExt, ReadHalf, WriteHalf},
    sync::mpsc,
};

use super::{
    classify::{Classifier, CopyDirection, Statement},
    frame::{decode, encode, Frame, PgError, Reader},
    gate::{self, Verdict},
    lineage::{self, Lineage},
    mask::{self, Field, Names, RowPlan},
    upstream::{self, Upstream},
};
use crate::{
    policy::masking::MaskPlan,
    protocols::{gateway::Gateway, stream::BoxIo},
    records::{Event, Verdict as RecVerdict},
};

/// Which columns a statement's DataRows have.
enum Columns {
    /// A RowDescription will come in the stream (simple Query).
    Inline,
    /// Described earlier: a portal's (formats known) or a statement's
    /// (formats from Bind).
    Portal {
        portal: String,
        statement: String,
        formats: Vec<i16>,
    },
}

struct Pending {
    /// `None` for a refusal blastgate injected (already recorded).
    event: Option<Event>,
    started: Instant,
    columns: Columns,
    masked: u64,
    /// Where its result columns come from, while column rules apply.
    lineage: Option<Arc<Lineage>>,
}

impl Pending {
    fn new(event: Option<Event>, columns: Columns) -> Box<Pending> {
        Box::new(Pending {
            event,
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
        statement: Option<String>,
        portal: Option<String>,
    },
    /// CommandComplete, EmptyQueryResponse, PortalSuspended or an error.
    Statement(Box<Pending>),
    /// ReadyForQuery.
    Ready,
}

type Queue = Arc<Mutex<VecDeque<Expect>>>;

fn lock(q: &Queue) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the agent prepared: decided at Parse, re-decided at Execute when
/// the policy changed since.
struct Prepared {
    statements: Arc<Vec<Statement>>,
    generation: usize,
    events: Vec<Event>,
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
        refusing: None,
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
    prepared: HashMap<String, Prepared>,
    /// portal -> (statement, result formats)
    portals: HashMap<String, (String, Vec<i16>)>,
    /// An extended-protocol message was refused: the rest up to Sync is
    /// dropped, as the server itself does after an error.
    refusing: Option<String>,
    notices: mpsc::UnboundedSender<BytesMut>,
    /// Column masking rules apply to this session.
    field_rules: bool,
    /// Detectors mask literal values in recorded statement text.
    mask: Option<Arc<MaskPlan>>,
    /// Names statements' write targets, for [`lineage::write_refusal`]
    /// (its own connection: ToAgent's may be busy).
    catalog: Catalog<'g>,
}

impl FromAgent<'_> {
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

    /// Notes what the server will answer to a message being forwarded.
    fn await_answer(&self, e: Expect) {
        lock(&self.queue).push_back(e);
    }

    /// Checks statements, telling the agent when one waits for a human.
    async fn check(&mut self, statements: &Arc<Vec<Statement>>) -> Result<Verdict, PgError> {
        // Whatever is buffered goes out first: a held statement must not
        // hold up the ones before it.
        self.flush().await?;
        let notices = self.notices.clone();
        let notify = move |id: uuid::Uuid| {
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
        };
        let verdict = gate::check(self.gw, statements, self.mask.as_deref(), &notify).await;
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
        match self.check(statements).await? {
            Verdict::Run(admitted) => {
                let mut queue = lock(&self.queue);
                for (a, st) in admitted.into_iter().zip(statements.iter()) {
                    queue.push_back(Expect::Statement(
                        Pending::new(Some(a.event), Columns::Inline).with_lineage(self.lineage(st)),
                    ));
                }
                queue.push_back(Expect::Ready);
                drop(queue);
                self.out.extend_from_slice(&frame.bytes);
            }
            Verdict::Refuse(message) => {
                encode(&Query::new(gate::raise(&message)), &mut self.out)?;
                self.await_answer(Expect::Statement(Pending::new(None, Columns::Inline)));
                self.await_answer(Expect::Ready);
            }
        }
        Ok(())
    }

    /// Returns true after Terminate.
    async fn handle(&mut self, frame: Frame) -> Result<bool, PgError> {
        if self.refusing.is_some() && frame.tag != b'S' && frame.tag != b'X' {
            return Ok(false);
        }
        match frame.tag {
            b'Q' => {
                let q: Query = decode(&frame, "Query")?;
                let statements = self.classifier.classify(&q.query);
                self.simple_unit(&frame, &statements).await?;
            }
            b'P' => {
                let p: Parse = decode(&frame, "Parse")?;
                let name = p.name.clone().unwrap_or_default();
                let statements = self.classifier.classify(&p.query);
                match self.check(&statements).await? {
                    Verdict::Run(admitted) => {
                        self.prepared.insert(
                            name,
                            Prepared {
                                statements,
                                generation: self.gw.policy_generation(),
                                events: admitted.into_iter().map(|a| a.event).collect(),
                            },
                        );
                        self.await_answer(Expect::Ack { forward: true });
                        self.out.extend_from_slice(&frame.bytes);
                    }
                    Verdict::Refuse(message) => self.refusing = Some(message),
                }
            }
            b'B' => {
                let b: Bind = decode(&frame, "Bind")?;
                self.portals.insert(
                    b.portal_name.unwrap_or_default(),
                    (
                        b.statement_name.unwrap_or_default(),
                        b.result_column_format_codes,
                    ),
                );
                self.await_answer(Expect::Ack { forward: true });
                self.out.extend_from_slice(&frame.bytes);
            }
            b'D' => {
                let d: Describe = decode(&frame, "Describe")?;
                let name = d.name.unwrap_or_default();
                self.await_answer(if d.target_type == b'S' {
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
                let ex: Execute = decode(&frame, "Execute")?;
                let portal = ex.name.unwrap_or_default();
                let (statement, formats) = self.portals.get(&portal).cloned().unwrap_or_default();
                let stale = self
                    .prepared
                    .get(&statement)
                    .is_some_and(|p| p.generation != self.gw.policy_generation());
                if stale {
                    // Prepared under other policies: decided again.
                    let statements = self.prepared.get(&statement).map(|p| p.statements.clone());
                    if let Some(statements) = statements {
                        match self.check(&statements).await? {
                            Verdict::Run(admitted) => {
                                let generation = self.gw.policy_generation();
                                if let Some(p) = self.prepared.get_mut(&statement) {
                                    p.generation = generation;
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
                let event = self
                    .prepared
                    .get(&statement)
                    .and_then(|p| p.events.first())
                    .map(|template| self.gw.session.restamp(template));
                let lineage = self
                    .prepared
                    .get(&statement)
                    .and_then(|p| p.statements.first())
                    .and_then(|st| self.lineage(st));
                self.await_answer(Expect::Statement(
                    Pending::new(
                        event,
                        Columns::Portal {
                            portal,
                            statement,
                            formats,
                        },
                    )
                    .with_lineage(lineage),
                ));
                self.out.extend_from_slice(&frame.bytes);
            }
            b'C' => {
                let c: Close = decode(&frame, "Close")?;
                let name = c.name.unwrap_or_default();
                if c.target_type == b'S' {
                    self.prepared.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                self.await_answer(Expect::Ack { forward: true });
                self.out.extend_from_slice(&frame.bytes);
            }
            b'S' => {
                if let Some(message) = self.refusing.take() {
                    // The server raises the refusal itself, so the agent
                    // gets it in order and the transaction state is real.
                    encode(
                        &Parse::new(None, gate::raise(&message), Vec::new()),
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
                    queue.push_back(Expect::Statement(Pending::new(None, Columns::Inline)));
                }
                self.await_answer(Expect::Ready);
                self.out.extend_from_slice(&frame.bytes);
            }
            b'F' => {
                // Fast-path function calls name a function by OID: nothing
                // to see, so they are opaque statements.
                let statements = Arc::new(vec![Statement {
                    action: super::classify::ACTION_OPAQUE,
                    command: "FUNCTION CALL".into(),
                    text: "(fast-path function call)".into(),
                    tables_read: Vec::new(),
                    tables_written: Vec::new(),
                    has_where: false,
                    functions: Vec::new(),
                    copy_program: false,
                    copy_direction: None,
                }]);
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
        let mut out = BytesMut::new();
        encode(&Query::new(sql.to_owned()), &mut out)?;
        conn.writer.write_all(&out).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let f = conn.reader.next().await?;
            match f.tag {
                b'D' => rows.push(
                    mask::row_values(&f)?
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                ),
                b'E' => failed = Some(upstream::error_text(&f)),
                b'Z' => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(PgError::Upstream(e)),
            None => Ok(rows),
        }
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
    statement_fields: HashMap<String, Vec<Field>>,
    portal_fields: HashMap<String, Vec<Field>>,
    /// Masking for the rows now flowing; `None` until known.
    plan: Option<RowPlan>,
    /// Masking for a text-format COPY now flowing: each column's style.
    copy: Option<(
        Vec<Option<crate::policy::masking::Style>>,
        lineage::CopyText,
    )>,
}

impl ToAgent<'_, '_> {
    async fn run(&mut self, mut notices: mpsc::UnboundedReceiver<BytesMut>) -> Result<(), PgError> {
        loop {
            let frame = tokio::select! {
                f = self.reader.next() => f?,
                Some(n) = notices.recv() => {
                    self.out.extend_from_slice(&n);
                    self.flush().await?;
                    continue;
                }
            };
            self.handle(frame).await?;
            if !self.reader.has_frame() {
                self.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
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

    async fn handle(&mut self, frame: Frame) -> Result<(), PgError> {
        match frame.tag {
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
                if let Some(Expect::Statement(p)) = self.pop() {
                    self.out.extend_from_slice(&frame.bytes);
                    self.finish(*p, Outcome::Done { tag }).await;
                    return Ok(());
                }
                self.out.extend_from_slice(&frame.bytes);
            }
            b'N' => {
                let frame = self.server_message(frame);
                self.out.extend_from_slice(&frame.bytes);
            }
            b'A' => match &self.mask {
                Some(m) => match mask::notification(&frame, m.has_fields(), m) {
                    Some(bytes) => self.out.extend_from_slice(&bytes),
                    None => self.out.extend_from_slice(&frame.bytes),
                },
                None => self.out.extend_from_slice(&frame.bytes),
            },
            b'V' => match (&self.mask, mask::function_result(&frame)) {
                (Some(m), Some(bytes)) if m.has_fields() => self.out.extend_from_slice(&bytes),
                _ => self.out.extend_from_slice(&frame.bytes),
            },
            b'E' => {
                self.plan = None;
                self.copy = None;
                let frame = self.server_message(frame);
                let error = upstream::error_text(&frame);
                self.out.extend_from_slice(&frame.bytes);
                // The failed message's statement, then everything the server
                // now skips up to the next ReadyForQuery.
                let mut failed = true;
                loop {
                    let head = lock(&self.queue)
                        .front()
                        .map(|e| matches!(e, Expect::Ready));
                    match head {
                        None | Some(true) => break,
                        Some(false) => {}
                    }
                    if let Some(Expect::Statement(p)) = self.pop() {
                        let outcome = if failed {
                            Outcome::Failed {
                                error: error.clone(),
                            }
                        } else {
                            Outcome::NotRun
                        };
                        failed = false;
                        self.finish(*p, outcome).await;
                    }
                }
            }
            b'Z' => {
                self.plan = None;
                while let Some(e) = self.pop() {
                    match e {
                        Expect::Ready => break,
                        Expect::Statement(p) => self.finish(*p, Outcome::NotRun).await,
                        _ => {}
                    }
                }
                self.out.extend_from_slice(&frame.bytes);
            }
            _ => self.out.extend_from_slice(&frame.bytes),
        }
        Ok(())
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
                        Columns::Inline => None,
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

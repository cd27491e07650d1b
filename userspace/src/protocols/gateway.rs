//! What a protocol gateway gets from the session driver: who is calling,
//! which target, what the daemon shares ([`Services`]), and the things
//! every gateway does per unit of work — authorize (decide, and hold for a
//! human when policy says so), record, and start tasks the session owns.
//!
//! The connect decision the driver takes for the whole session goes
//! through the same [`Gateway::authorize`] as each statement, command and
//! request, so the two can never disagree on what a verdict or a hold
//! means, nor record it differently.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use uuid::Uuid;

use super::target::Target;
use crate::{
    approvals::{ApprovalRequest, Broker, Outcome},
    identity::Caller,
    policy::{
        masking::MaskPlan, AgentAttrs, Asker, Decision, Engine, OidcClaims,
        Verdict as PolicyVerdict,
    },
    records::{Event, EventKind, Recorder, Verdict},
    session::{Counters, Session, SessionTasks},
};

/// What the daemon shares with every gateway, for its whole life.
pub struct Services {
    pub approvals: Arc<Broker>,
    pub recorder: Recorder,
    /// The policies in force: a directory's, or the built-in ones. There
    /// is no "no policy" state, so nothing is allowed by omission.
    pub policy: Arc<Engine>,
    pub connect_timeout: Duration,
    /// Certificates for agents that ask gateways for TLS; `None` when no
    /// target needs them.
    pub tls: Option<Arc<crate::tls::LeafCache>>,
    /// The same CA's certificates for HTTPS targets (ALPN h2, http/1.1).
    pub https: Option<Arc<crate::tls::LeafCache>>,
    /// Signs the host certificates the SSH gateway presents; `None` when
    /// no target is an SSH one.
    pub ssh_ca: Option<Arc<crate::tls::ssh_ca::SshCa>>,
    /// What the SSH gateway learned of each host (home, program paths,
    /// what agents wrote there), kept for the daemon's life.
    pub ssh_hosts: super::ssh::HostMemory,
    /// blastgate's resolver, for names the daemon itself connects to
    /// (an AWS target's STS endpoint); `None` where no kernel programs
    /// run (the fuzz targets, the driver's tests).
    pub resolver: Option<Arc<crate::dns::Resolver>>,
}

/// Owned (shared pointers only), so a gateway can hand it to tasks and
/// protocol libraries that need `'static` handlers (russh).
#[derive(Clone)]
pub struct Gateway {
    pub services: Arc<Services>,
    pub session: Arc<Session>,
    pub target: Arc<Target>,
    /// Where blastgate connects.
    pub upstream: SocketAddr,
    pub counters: Arc<Counters>,
    /// Every task the session starts goes here: the driver waits for them
    /// before the closing record, and cancels them together.
    pub tasks: SessionTasks,
}

/// What became of one action after policy and, if held, a human.
#[derive(Debug, Clone)]
pub struct Ruling {
    pub allowed: bool,
    /// As recorded: `error` when policy could not be evaluated (refused
    /// all the same), `deny` for any other refusal.
    pub verdict: Verdict,
    /// Recorded but not enforced (target in shadow mode).
    pub shadow: bool,
    pub policy_id: Option<String>,
    /// For the agent and the record.
    pub reason: String,
    pub approval_id: Option<Uuid>,
    pub approver: Option<String>,
    pub approval_group: Option<String>,
    /// Time spent waiting for a human.
    pub waited_us: Option<u64>,
}

impl Gateway {
    /// The names certificates shown to the agent carry: the target's, and
    /// the name the connection was routed by when one of the target's
    /// `hosts` covers it (a `*.suffix` target has no fixed name, and the
    /// agent checks the one it resolved).
    pub fn presented_names(&self) -> Vec<String> {
        let mut names = self.target.names.clone();
        if let Some(n) = self.session.dst_name.as_deref() {
            let covered = self.target.host_names.iter().any(|p| p.matches_name(n));
            if covered && !names.iter().any(|t| t.eq_ignore_ascii_case(n)) {
                names.push(n.to_string());
            }
        }
        names
    }

    /// An event of this session, stamped with its identity and next seq.
    pub fn event(&self, kind: EventKind, verdict: Verdict) -> Event {
        self.session.event(kind, verdict, None)
    }

    pub async fn record(&self, event: Event) {
        if let Err(e) = self.services.recorder.record(event).await {
            tracing::error!(error = %e, "event not recorded");
        }
    }

    /// Counts values masked in what the agent received.
    pub fn masked(&self, n: u64) {
        self.session.masked.fetch_add(n, Ordering::Relaxed);
    }

    pub fn agent_name(&self) -> &str {
        self.session
            .caller
            .as_ref()
            .map_or("", |c| c.agent.as_str())
    }

    /// The masking this session gets under the policies in force; None
    /// when no rule applies. Made once per policy bundle (an HTTP session
    /// asks per request, so that a reload applies at the next one).
    pub fn mask_plan(&self) -> Option<MaskPlan> {
        let bundle = self.services.policy.current();
        let mut cached = self
            .session
            .mask_plan
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((made_under, plan)) = cached.as_ref() {
            if Arc::ptr_eq(made_under, &bundle) {
                return plan.clone();
            }
        }
        let plan = bundle.masking.plan(self.agent_name(), &self.target.name);
        let plan = (!plan.is_empty()).then_some(plan);
        *cached = Some((bundle, plan.clone()));
        plan
    }

    /// Policy for one action of this session; see [`decide`].
    pub fn decide(&self, action: &str, context: &Value) -> Decision {
        let asker = self.session.asker.get_or_init(|| {
            Asker::new(
                self.session
                    .caller
                    .as_ref()
                    .map(agent_attrs)
                    .unwrap_or_default(),
                self.target.attrs.clone(),
            )
        });
        decide(&self.services.policy, asker, action, context)
    }

    /// The policy generation in force: a gateway that decided under one
    /// re-decides when it changed (prepared statements, long sessions).
    pub fn policy_generation(&self) -> usize {
        Arc::as_ptr(&self.services.policy.current()) as usize
    }

    /// Policy, then a human when policy holds: the one question every
    /// unit of work asks, the session's connect included.
    pub async fn authorize(
        &self,
        action: &str,
        context: &Value,
        text: &str,
        waiting: impl FnOnce(Uuid),
    ) -> Ruling {
        let decision = self.decide(action, context);
        self.rule(decision, action, text, waiting).await
    }

    /// Applies a decision: allow, refuse, or hold for a human first.
    /// `waiting` is called with the approval id before the wait starts, so
    /// the gateway can tell the agent in its own protocol.
    pub async fn rule(
        &self,
        decision: Decision,
        action: &str,
        text: &str,
        waiting: impl FnOnce(Uuid),
    ) -> Ruling {
        let mut ruling = Ruling {
            allowed: decision.verdict == PolicyVerdict::Allow,
            verdict: recorded_verdict(&decision.verdict),
            shadow: false,
            policy_id: decision.policy_id.clone(),
            reason: decision.reason.clone(),
            approval_id: None,
            approver: None,
            approval_group: None,
            waited_us: None,
        };
        if self.tasks.is_cancelled() {
            // Cut (shutdown, a reload that forbids the session): what is
            // still asked while the session winds down is refused, in
            // shadow mode too.
            let why = self.tasks.why();
            ruling.allowed = false;
            ruling.verdict = Verdict::Deny;
            ruling.shadow = false;
            ruling.reason = format!("not run: the session was cut ({why})");
            return ruling;
        }
        if ruling.allowed {
            return ruling;
        }
        if !self.target.enforce {
            ruling.allowed = true;
            ruling.verdict = Verdict::Allow;
            ruling.shadow = true;
            ruling.reason = format!(
                "shadow: would be {:?} by {}: {}",
                decision.verdict,
                decision.policy_id.as_deref().unwrap_or("default deny"),
                decision.reason
            );
            return ruling;
        }
        if decision.verdict != PolicyVerdict::Hold {
            return ruling;
        }
        let caller = self.session.caller.as_ref();
        let request = ApprovalRequest {
            id: Uuid::now_v7(),
            created: SystemTime::now(),
            session_id: self.session.id,
            agent: caller.map(|c| c.agent.clone()).unwrap_or_default(),
            pid: caller.map_or(0, |c| c.pid),
            target: self.target.name.clone(),
            action: action.to_string(),
            text: text.to_string(),
            policy_id: decision.policy_id.clone(),
            group: decision.approval.clone().unwrap_or_default(),
            reason: decision.reason.clone(),
            job: caller.and_then(|c| c.oidc.clone()),
            ci_job: caller.and_then(|c| c.job.clone()),
        };
        ruling.approval_id = Some(request.id);
        ruling.approval_group = Some(request.group.clone());
        waiting(request.id);
        let started = std::time::Instant::now();
        let outcome = self
            .services
            .approvals
            .hold_unless(request, self.tasks.cancelled(), || self.session.next_seq())
            .await;
        ruling.waited_us = Some(started.elapsed().as_micros() as u64);
        let said = outcome.describe(self.services.approvals.timeout());
        if let Outcome::Approved { by, .. } | Outcome::Denied { by, .. } = &outcome {
            ruling.approver = Some(by.clone());
        }
        ruling.allowed = outcome.approved();
        ruling.verdict = if ruling.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        ruling.reason = format!("{}; {said}", decision.reason);
        ruling
    }

    /// Stamps a ruling on an action event.
    pub fn ruled(&self, kind: EventKind, action: &str, text: String, r: &Ruling) -> Event {
        let mut e = self.event(kind, r.verdict);
        e.action = Some(action.to_string());
        e.text = Some(text);
        e.policy_id = r.policy_id.clone();
        e.reason = Some(r.reason.clone());
        e.shadow = r.shadow;
        e.approval_id = r.approval_id;
        e.approver = r.approver.clone();
        e.approval_group = r.approval_group.clone();
        e.approval_wait_us = r.waited_us;
        e
    }
}

/// How a decision is recorded before any human was asked: a policy that
/// could not be evaluated is an `error` (refused all the same), a hold is
/// a refusal until someone approves.
pub fn recorded_verdict(v: &PolicyVerdict) -> Verdict {
    match v {
        PolicyVerdict::Allow => Verdict::Allow,
        PolicyVerdict::Error => Verdict::Error,
        PolicyVerdict::Deny | PolicyVerdict::Hold => Verdict::Deny,
    }
}

/// The caller as a policy principal.
pub fn agent_attrs(c: &Caller) -> AgentAttrs {
    AgentAttrs {
        name: c.agent.clone(),
        uid: c.uid,
        exe: c.exe.clone().unwrap_or_default(),
        comm: c.comm.clone(),
        lineage: c.lineage.iter().map(|a| a.comm.clone()).collect(),
        oidc: c.oidc.as_ref().map(|o| OidcClaims {
            sub: o.sub.clone(),
            iss: o.iss.clone(),
            groups: o.groups.clone(),
            claims: o.claims.clone(),
        }),
        job: c.job.as_ref().map(crate::policy::decide::JobAttrs::of),
    }
}

/// Policy for one action, the one way every protocol asks; a request the
/// engine cannot evaluate is refused (fail closed).
pub fn decide(engine: &Engine, asker: &Asker, action: &str, context: &Value) -> Decision {
    engine
        .current()
        .decide_cached_for(asker, action, context)
        .unwrap_or_else(|e| Decision {
            verdict: PolicyVerdict::Error,
            policy_id: None,
            reason: format!("policy request failed, refused: {e}"),
            approval: None,
            matched: Vec::new(),
            if_approved: Vec::new(),
        })
}

/// A count shared by a gateway's halves.
pub type Tally = std::sync::atomic::AtomicU64;

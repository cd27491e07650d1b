//! Just-in-time human approval.
//!
//! A protocol handler whose action the policy holds asks the [`Broker`] and
//! waits: the broker records `approval_requested`, notifies the webhooks,
//! and resolves when an approver decides over the control socket
//! (`blastgate approvals approve|deny ID`) or the timeout passes (denied).
//! The decision, who made it and the latency are recorded as
//! `approval_decided`. A request whose session goes away is withdrawn.

mod webhook;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

pub use webhook::Notifier;

use crate::records::{Event, EventKind, Recorder, Verdict};

/// What an approver sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: Uuid,
    #[serde(with = "humantime_serde_compat")]
    pub created: SystemTime,
    pub session_id: Uuid,
    pub agent: String,
    pub pid: u32,
    pub target: String,
    pub action: String,
    /// The statement, command or request line, after masking.
    pub text: String,
    pub policy_id: Option<String>,
    /// Approver group from the policy's `@approval`.
    pub group: String,
    pub reason: String,
    /// The CI job the agent proved to be, if it presented a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::identity::oidc::JobIdentity>,
    /// The CI job the agent's process tree belongs to (registered by the
    /// runner's hook), so the approver sees which repository, run and
    /// actor asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_job: Option<crate::jobs::CiJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Approved {
        by: String,
        reason: Option<String>,
    },
    Denied {
        by: String,
        reason: Option<String>,
    },
    TimedOut,
    /// The session ended before anyone decided.
    Withdrawn,
}

impl Outcome {
    pub fn approved(&self) -> bool {
        matches!(self, Outcome::Approved { .. })
    }

    /// One line for the agent and the record.
    pub fn describe(&self, timeout: Duration) -> String {
        match self {
            Outcome::Approved { by, reason } => format!(
                "approved by {by}{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Outcome::Denied { by, reason } => format!(
                "denied by {by}{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            Outcome::TimedOut => format!("no decision within {timeout:?}: denied"),
            Outcome::Withdrawn => "withdrawn: the session ended first".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no pending approval request {0}")]
    Unknown(Uuid),
}

struct Pending {
    request: ApprovalRequest,
    decide: oneshot::Sender<Outcome>,
}

pub struct Broker {
    pending: Mutex<HashMap<Uuid, Pending>>,
    timeout: Duration,
    recorder: Recorder,
    notifier: Option<Notifier>,
}

/// Removes a request that is no longer waited on (the session's future
/// was dropped), so approvers do not see it.
struct Withdraw<'a> {
    broker: &'a Broker,
    id: Uuid,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.broker.lock().remove(&self.id);
    }
}

impl Broker {
    pub fn new(timeout: Duration, recorder: Recorder, notifier: Option<Notifier>) -> Arc<Broker> {
        Arc::new(Broker {
            pending: Mutex::new(HashMap::new()),
            timeout,
            recorder,
            notifier,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a request and waits for its outcome. `seq` numbers the
    /// request's two events among the events of its session, so that they
    /// sort where they happened (before the session's close).
    pub async fn hold(&self, request: ApprovalRequest, seq: impl Fn() -> u32) -> Outcome {
        self.hold_unless(request, std::future::pending(), seq).await
    }

    /// [`Broker::hold`], withdrawn when `withdrawn` resolves first (the
    /// session was cut): recorded as decided all the same, so no request
    /// is left pending in the records.
    pub async fn hold_unless(
        &self,
        request: ApprovalRequest,
        withdrawn: impl std::future::Future<Output = ()>,
        seq: impl Fn() -> u32,
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let id = request.id;
        self.lock().insert(
            id,
            Pending {
                request: request.clone(),
                decide: tx,
            },
        );
        let guard = Withdraw { broker: self, id };
        let started = Instant::now();
        self.record(
            &request,
            seq(),
            EventKind::ApprovalRequested,
            Verdict::Allow,
            None,
            None,
        )
        .await;
        if let Some(n) = &self.notifier {
            n.notify(webhook::Message::requested(
                &request,
                self.timeout,
                n.console.as_deref(),
            ));
        }
        tracing::info!(approval = %id, group = %request.group, action = %request.action, "held for approval");

        let outcome = tokio::select! {
            answered = tokio::time::timeout(self.timeout, rx) => match answered {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => Outcome::Withdrawn,
                Err(_) => Outcome::TimedOut,
            },
            _ = withdrawn => Outcome::Withdrawn,
        };
        drop(guard);
        let latency = started.elapsed();
        let verdict = if outcome.approved() {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        self.record(
            &request,
            seq(),
            EventKind::ApprovalDecided,
            verdict,
            Some(&outcome),
            Some(latency),
        )
        .await;
        if let Some(n) = &self.notifier {
            n.notify(webhook::Message::decided(
                &request,
                &outcome,
                latency,
                self.timeout,
            ));
        }
        outcome
    }

    pub fn list(&self) -> Vec<ApprovalRequest> {
        let mut out: Vec<_> = self.lock().values().map(|p| p.request.clone()).collect();
        out.sort_by_key(|r| r.id);
        out
    }

    /// An approver's decision; `by` is who they are.
    pub fn decide(
        &self,
        id: Uuid,
        approve: bool,
        by: String,
        reason: Option<String>,
    ) -> Result<(), ApprovalError> {
        let pending = self.lock().remove(&id).ok_or(ApprovalError::Unknown(id))?;
        let outcome = if approve {
            Outcome::Approved { by, reason }
        } else {
            Outcome::Denied { by, reason }
        };
        // The waiter may have just timed out; then the timeout stands.
        pending
            .decide
            .send(outcome)
            .map_err(|_| ApprovalError::Unknown(id))
    }

    async fn record(
        &self,
        r: &ApprovalRequest,
        seq: u32,
        kind: EventKind,
        verdict: Verdict,
        outcome: Option<&Outcome>,
        latency: Option<Duration>,
    ) {
        let mut e = Event::daemon(
            kind,
            verdict,
            match outcome {
                Some(o) => o.describe(self.timeout),
                None => format!("{} (approval by {})", r.reason, r.group),
            },
        );
        e.session_id = r.session_id;
        e.seq = seq;
        e.target = Some(r.target.clone());
        e.action = Some(r.action.clone());
        e.policy_id = r.policy_id.clone();
        e.approval_id = Some(r.id);
        e.approval_group = Some(r.group.clone());
        e.text = Some(r.text.clone());
        e.approver = match outcome {
            Some(Outcome::Approved { by, .. } | Outcome::Denied { by, .. }) => Some(by.clone()),
            _ => None,
        };
        e.duration_us = latency.map(|l| l.as_micros() as u64);
        if let Err(err) = self.recorder.record(e).await {
            tracing::error!(error = %err, "approval event not recorded");
        }
    }
}

/// RFC 3339 for the request's creation time in JSON.
mod humantime_serde_compat {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecordsConfig;

    fn broker(timeout: Duration) -> (tempfile::TempDir, Arc<Broker>) {
        let tmp = tempfile::tempdir().unwrap();
        let rec = crate::records::spool::open(&RecordsConfig {
            spool_dir: tmp.path().to_owned(),
            ..RecordsConfig::default()
        })
        .unwrap();
        (tmp, Broker::new(timeout, rec, None))
    }

    fn request() -> ApprovalRequest {
        ApprovalRequest {
            id: Uuid::now_v7(),
            created: SystemTime::now(),
            session_id: Uuid::now_v7(),
            agent: "a".into(),
            pid: 1,
            target: "t".into(),
            action: "connect".into(),
            text: String::new(),
            policy_id: Some("p".into()),
            group: "ops".into(),
            reason: "r".into(),
            job: None,
            ci_job: None,
        }
    }

    #[test]
    fn webhook_messages_link_into_the_console_when_there_is_one() {
        let r = request();
        let m = webhook::Message::requested(&r, Duration::from_secs(60), Some("https://c:8443"));
        let text = m.0["text"].as_str().unwrap_or_default().to_string();
        let approve = format!("https://c:8443/approvals/{}?decide=approve", r.id);
        assert!(text.contains(&approve), "{text}");
        assert!(text.contains("?decide=deny|Deny>"), "{text}");
        assert_eq!(
            m.0["blastgate"]["console_links"]["approve"],
            approve.as_str()
        );
        let m = webhook::Message::requested(&r, Duration::from_secs(60), None);
        let text = m.0["text"].as_str().unwrap_or_default().to_string();
        assert!(
            text.contains(&format!("blastgate approvals approve {}", r.id)),
            "{text}"
        );
        assert!(!text.contains("https://"), "{text}");
    }

    #[tokio::test]
    async fn approve_releases_the_waiter() {
        let (_t, b) = broker(Duration::from_secs(60));
        let r = request();
        let id = r.id;
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.hold(r, || 0).await }
        });
        while b.list().is_empty() {
            tokio::task::yield_now().await;
        }
        b.decide(id, true, "alice".into(), Some("ok".into()))
            .unwrap();
        assert_eq!(
            waiter.await.unwrap(),
            Outcome::Approved {
                by: "alice".into(),
                reason: Some("ok".into())
            }
        );
        assert!(b.list().is_empty());
        assert!(
            b.decide(id, true, "bob".into(), None).is_err(),
            "decided twice"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_decision_in_time_is_a_denial() {
        let (_t, b) = broker(Duration::from_secs(300));
        let outcome = b.hold(request(), || 0).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(b.list().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_session_withdraws_its_request() {
        let (_t, b) = broker(Duration::from_secs(60));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.hold(request(), || 0).await }
        });
        while b.list().is_empty() {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert!(b.list().is_empty());
    }
}

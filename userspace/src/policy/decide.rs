//! One question, asked by every protocol handler: may this agent do this
//! action on this target, given what was parsed?
//!
//! Semantics on top of Cedar:
//! - allow: Cedar allows;
//! - deny: Cedar denies and at least one determining policy is a plain
//!   `forbid`, or no policy permits (default deny);
//! - hold: every determining policy is a `forbid` with `@approval("group")`
//!   and the set without those forbids would allow: approvers can release it;
//! - error: evaluation itself failed for some policy; refused (fail closed).

use std::{collections::BTreeMap, str::FromStr};

use cedar_policy::{
    Context, Decision as CedarDecision, Entity, EntityUid, Request, RestrictedExpression,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{bundle::Bundle, cache::Bounded};
use cedar_policy::Entities;
use std::sync::Arc;

/// The principal: attributes of the calling agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAttrs {
    pub name: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub exe: String,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub lineage: Vec<String>,
    #[serde(default)]
    pub oidc: Option<OidcClaims>,
    /// The CI job the process belongs to (`principal.job`).
    #[serde(default)]
    pub job: Option<JobAttrs>,
}

/// `principal.job`: each of [`crate::jobs::FIELDS`] in `verified` (a
/// token attested it) or `unverified` (only the job's environment said
/// it), "" in the other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobAttrs {
    pub provider: String,
    #[serde(default)]
    pub verified: BTreeMap<String, String>,
    #[serde(default)]
    pub unverified: BTreeMap<String, String>,
}

impl JobAttrs {
    pub fn of(job: &crate::jobs::CiJob) -> JobAttrs {
        let (mut verified, mut unverified) = (BTreeMap::new(), BTreeMap::new());
        for (k, v) in &job.fields {
            if job.verified.contains(k) {
                verified.insert(k.clone(), v.clone());
            } else {
                unverified.insert(k.clone(), v.clone());
            }
        }
        JobAttrs {
            provider: job.provider.clone(),
            verified,
            unverified,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcClaims {
    pub sub: String,
    pub iss: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The job attributes (`principal.oidc.repository`, …): every one of
    /// [`crate::config::OIDC_ATTRIBUTES`] is set in the entity, "" where
    /// absent here.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// The resource: a configured target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetAttrs {
    pub name: String,
    pub protocol: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Who asks, about what: one session's principal and resource, with the
/// part of every cache key they make serialised once. A session asks per
/// statement, command and request; serialising the agent (its lineage
/// included) and the target for each of those was most of a cached
/// decision's cost.
#[derive(Debug, Clone)]
pub struct Asker {
    pub agent: AgentAttrs,
    pub target: TargetAttrs,
    /// Both as JSON, which escapes control characters: no NUL inside, so
    /// NUL separates the parts of a key unambiguously.
    key: String,
}

impl Asker {
    pub fn new(agent: AgentAttrs, target: TargetAttrs) -> Asker {
        let key = format!(
            "{}\u{0}{}",
            serde_json::to_string(&agent).unwrap_or_default(),
            serde_json::to_string(&target).unwrap_or_default()
        );
        Asker { agent, target, key }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    Hold,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding policy (for deny and hold, the forbid; for allow, the first permit).
    pub policy_id: Option<String>,
    pub reason: String,
    /// Approver group, for holds.
    pub approval: Option<String>,
    /// Every policy that determined Cedar's answer.
    pub matched: Vec<String>,
    /// For holds: the permits that allow it once approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub if_approved: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("context: {0}")]
    Context(String),
    #[error("request does not match the schema: {0}")]
    Schema(String),
    #[error("entities: {0}")]
    Entities(String),
}

/// Every context attribute an action family has, with its empty default,
/// so handlers and fixtures name only what they know.
fn context_defaults(action: &str) -> Option<Vec<(String, Value)>> {
    let family = action.split(':').next().unwrap_or(action);
    let s = || Value::String(String::new());
    let set = || Value::Array(Vec::new());
    let fixed: Vec<(&'static str, Value)> = match (family, action) {
        (_, "connect") => vec![("dst_name", s()), ("dst_name_source", s())],
        ("sql", _) => vec![
            ("statement", s()),
            ("command", s()),
            ("tables_read", set()),
            ("tables_written", set()),
            ("has_where", Value::Bool(false)),
            ("functions", set()),
            ("user_functions", set()),
            ("function_volatility", s()),
            ("dynamic_sql", Value::Bool(false)),
            ("copy_program", Value::Bool(false)),
            ("rows_affected", Value::from(-1)),
        ],
        // The gateway's own context type, so the two cannot drift apart.
        ("ssh", _) => {
            let Value::Object(map) = crate::protocols::ssh::SshContext::default().json() else {
                return None;
            };
            return Some(map.into_iter().collect());
        }
        ("git", _) => vec![
            ("ref", s()),
            ("old", s()),
            ("new", s()),
            ("created", Value::Bool(false)),
            ("deleted", Value::Bool(false)),
            ("forced", s()),
        ],
        ("http" | "k8s", _) => vec![
            ("method", s()),
            ("host", s()),
            ("path", s()),
            ("query", s()),
            ("k8s_resource", s()),
            ("k8s_namespace", s()),
            ("k8s_name", s()),
            ("k8s_subresource", s()),
            ("k8s_group", s()),
            ("k8s_replicas", Value::from(-1)),
            ("k8s_exec_equivalent", Value::Bool(false)),
            ("k8s_changes", set()),
            ("k8s_body", s()),
        ],
        ("aws", _) => vec![
            ("method", s()),
            ("host", s()),
            ("path", s()),
            ("service", s()),
            ("operation", s()),
            ("region", s()),
            ("region_set", set()),
            ("signature", s()),
            ("protocol", s()),
            ("resources", set()),
            ("bucket", s()),
            ("key", s()),
        ],
        _ => return None,
    };
    Some(fixed.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn to_expr(v: &Value) -> Result<RestrictedExpression, RequestError> {
    Ok(match v {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(
            n.as_i64()
                .ok_or_else(|| RequestError::Context(format!("{n} is not a 64-bit integer")))?,
        ),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(to_expr).collect::<Result<Vec<_>, _>>()?)
        }
        Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), to_expr(v)?)))
                .collect::<Result<Vec<_>, RequestError>>()?,
        )
        .map_err(|e| RequestError::Context(e.to_string()))?,
        Value::Null => return Err(RequestError::Context("null is not a Cedar value".into())),
    })
}

fn strings(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(
        items
            .iter()
            .map(|s| RestrictedExpression::new_string(s.clone())),
    )
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, RequestError> {
    let quoted = serde_json::to_string(id).map_err(|e| RequestError::Entities(e.to_string()))?;
    EntityUid::from_str(&format!("{ty}::{quoted}"))
        .map_err(|e| RequestError::Entities(e.to_string()))
}

/// The action an AWS operation the schema does not name is decided as.
pub const AWS_OTHER: &str = "aws:other";

/// Cached decisions, keyed by the whole request (principal, action,
/// resource and the canonical context JSON), never by a hash of it: a
/// collision must not hand one request another's decision.
pub struct DecisionCache(Bounded<String, Decision>);

/// Beyond this many entries the cache starts over (statements with literal
/// values rarely repeat; connects and parameterised statements do).
const CACHE_MAX: usize = 16_384;

impl Default for DecisionCache {
    fn default() -> Self {
        DecisionCache(Bounded::new(CACHE_MAX))
    }
}

impl DecisionCache {
    fn key(asker: &Asker, action: &str, context: &Value) -> String {
        // serde_json maps are ordered, so equal contexts print equally.
        format!("{}\u{0}{}\u{0}{}", asker.key, action, context)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entity store (actions + this principal + this target) per
/// (agent, target): building it computes the action hierarchy's closure,
/// the most expensive part of a request, and a session asks many times
/// with the same pair.
pub struct EntitiesCache(Bounded<String, Arc<Entities>>);

const ENTITIES_MAX: usize = 1024;

impl Default for EntitiesCache {
    fn default() -> Self {
        EntitiesCache(Bounded::new(ENTITIES_MAX))
    }
}

impl Bundle {
    fn entities_for(
        &self,
        asker: &Asker,
        principal: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Arc<Entities>, RequestError> {
        if let Some(e) = self.entities.0.get(&asker.key) {
            return Ok(e);
        }
        let (agent, target) = (&asker.agent, &asker.target);
        let mut agent_attrs = vec![
            (
                "name".to_string(),
                RestrictedExpression::new_string(agent.name.clone()),
            ),
            (
                "uid".to_string(),
                RestrictedExpression::new_long(i64::from(agent.uid)),
            ),
            (
                "exe".to_string(),
                RestrictedExpression::new_string(agent.exe.clone()),
            ),
            (
                "comm".to_string(),
                RestrictedExpression::new_string(agent.comm.clone()),
            ),
            ("lineage".to_string(), strings(&agent.lineage)),
        ];
        if let Some(o) = &agent.oidc {
            agent_attrs.push((
                "oidc".to_string(),
                RestrictedExpression::new_record(
                    [
                        (
                            "sub".to_string(),
                            RestrictedExpression::new_string(o.sub.clone()),
                        ),
                        (
                            "iss".to_string(),
                            RestrictedExpression::new_string(o.iss.clone()),
                        ),
                        ("groups".to_string(), strings(&o.groups)),
                    ]
                    .into_iter()
                    .chain(crate::config::OIDC_ATTRIBUTES.iter().map(|(attr, _)| {
                        let value = o.claims.get(*attr).cloned().unwrap_or_default();
                        (attr.to_string(), RestrictedExpression::new_string(value))
                    })),
                )
                .map_err(|e| RequestError::Entities(e.to_string()))?,
            ));
        }
        if let Some(j) = &agent.job {
            let part = |m: &BTreeMap<String, String>| {
                RestrictedExpression::new_record(crate::jobs::FIELDS.iter().map(|f| {
                    let value = m.get(*f).cloned().unwrap_or_default();
                    (f.to_string(), RestrictedExpression::new_string(value))
                }))
                .map_err(|e| RequestError::Entities(e.to_string()))
            };
            agent_attrs.push((
                "job".to_string(),
                RestrictedExpression::new_record([
                    (
                        "provider".to_string(),
                        RestrictedExpression::new_string(j.provider.clone()),
                    ),
                    ("verified".to_string(), part(&j.verified)?),
                    ("unverified".to_string(), part(&j.unverified)?),
                ])
                .map_err(|e| RequestError::Entities(e.to_string()))?,
            ));
        }
        let principal_entity = Entity::new(
            principal.clone(),
            agent_attrs.into_iter().collect(),
            [].into_iter().collect(),
        )
        .map_err(|e| RequestError::Entities(e.to_string()))?;
        let target_entity = Entity::new_with_tags(
            resource.clone(),
            [
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(target.name.clone()),
                ),
                (
                    "protocol".to_string(),
                    RestrictedExpression::new_string(target.protocol.clone()),
                ),
                (
                    "env".to_string(),
                    RestrictedExpression::new_string(
                        target.labels.get("env").cloned().unwrap_or_default(),
                    ),
                ),
            ],
            [],
            target
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
        )
        .map_err(|e| RequestError::Entities(e.to_string()))?;
        let entities = Arc::new(
            self.actions
                .clone()
                .add_entities([principal_entity, target_entity], None)
                .map_err(|e| RequestError::Entities(e.to_string()))?,
        );
        self.entities.0.insert(asker.key.clone(), entities.clone());
        Ok(entities)
    }

    /// [`Bundle::decide_for`] through the bundle's decision cache. Errors
    /// are not cached.
    pub fn decide_cached_for(
        &self,
        asker: &Asker,
        action: &str,
        context: &Value,
    ) -> Result<Decision, RequestError> {
        let key = DecisionCache::key(asker, action, context);
        if let Some(d) = self.cache.0.get(&key) {
            return Ok(d);
        }
        let d = self.decide_for(asker, action, context)?;
        if d.verdict != Verdict::Error {
            self.cache.0.insert(key, d.clone());
        }
        Ok(d)
    }

    /// Evaluates one request. `context` is a JSON object of what the
    /// protocol handler parsed; missing attributes take their defaults and
    /// unknown ones are an error.
    pub fn decide(
        &self,
        agent: &AgentAttrs,
        target: &TargetAttrs,
        action: &str,
        context: &Value,
    ) -> Result<Decision, RequestError> {
        self.decide_for(&Asker::new(agent.clone(), target.clone()), action, context)
    }

    /// [`Bundle::decide`] for an asker serialised once.
    pub fn decide_for(
        &self,
        asker: &Asker,
        action: &str,
        context: &Value,
    ) -> Result<Decision, RequestError> {
        let (agent, target) = (&asker.agent, &asker.target);
        let defaults =
            context_defaults(action).ok_or_else(|| RequestError::UnknownAction(action.into()))?;
        let given = match context {
            Value::Null => serde_json::Map::new(),
            Value::Object(m) => m.clone(),
            other => {
                return Err(RequestError::Context(format!(
                    "must be an object, not {other}"
                )))
            }
        };
        if let Some(unknown) = given
            .keys()
            .find(|k| !defaults.iter().any(|(d, _)| d == *k))
        {
            return Err(RequestError::Context(format!(
                "unknown attribute {unknown:?} for action {action:?}"
            )));
        }
        let mut pairs = Vec::with_capacity(defaults.len());
        for (k, default) in defaults {
            let v = given.get(&k).unwrap_or(&default);
            pairs.push((k, to_expr(v)?));
        }
        let context =
            Context::from_pairs(pairs).map_err(|e| RequestError::Context(e.to_string()))?;

        let principal = uid("Agent", &agent.name)?;
        let resource = uid("Target", &target.name)?;
        let mut action_uid = uid("Action", action)?;
        // AWS has thousands of operations; those the schema does not
        // declare are decided as `aws:other` (policies match them by
        // `context.service` and `context.operation`).
        if action.starts_with("aws:") && self.actions.get(&action_uid).is_none() {
            action_uid = uid("Action", AWS_OTHER)?;
        }
        let action = action_uid.id().unescaped().to_string();
        let action = action.as_str();
        let entities = self.entities_for(asker, &principal, &resource)?;
        let request = Request::new(principal, action_uid, resource, context, Some(&self.schema))
            .map_err(|e| RequestError::Schema(e.to_string()))?;

        // Only the policies whose scope can match this request. First the
        // set without the approval forbids: its answer is final unless it
        // allows; then, only if some approval forbid is in scope, whether
        // one of them matches (hold).
        let scoped = self.scopes.get(action, &agent.name, &target.name);
        let response = self
            .authorizer
            .is_authorized(&request, &scoped.relaxed, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let matched: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        let error = |errors: Vec<String>, matched: Vec<String>| Decision {
            verdict: Verdict::Error,
            policy_id: None,
            reason: format!("policy evaluation failed, refused: {}", errors.join("; ")),
            approval: None,
            matched,
            if_approved: Vec::new(),
        };
        if !errors.is_empty() {
            return Ok(error(errors, matched));
        }
        if response.decision() != CedarDecision::Allow {
            let meta_of = |id: &String| self.meta.get(id);
            return Ok(match matched.first() {
                None => Decision {
                    verdict: Verdict::Deny,
                    policy_id: None,
                    reason: format!(
                        "no policy permits {action} by agent {:?} on target {:?} (default deny)",
                        agent.name, target.name
                    ),
                    approval: None,
                    matched,
                    if_approved: Vec::new(),
                },
                Some(hard) => Decision {
                    verdict: Verdict::Deny,
                    policy_id: Some(hard.clone()),
                    reason: meta_of(hard)
                        .and_then(|m| m.reason.clone())
                        .unwrap_or_else(|| format!("denied by policy {hard}")),
                    approval: None,
                    matched: matched.clone(),
                    if_approved: Vec::new(),
                },
            });
        }
        if scoped.held.is_empty() {
            return Ok(self.allowed(matched));
        }
        // A set of forbids only: the reasons are the ones that match.
        let held = self
            .authorizer
            .is_authorized(&request, &scoped.held, &entities);
        let held_errors: Vec<String> = held.diagnostics().errors().map(|e| e.to_string()).collect();
        if !held_errors.is_empty() {
            return Ok(error(held_errors, matched));
        }
        let holding: Vec<String> = held
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        let Some(first) = holding.first().cloned() else {
            return Ok(self.allowed(matched));
        };
        let m = self.meta.get(&first);
        Ok(Decision {
            verdict: Verdict::Hold,
            policy_id: Some(first),
            reason: m
                .and_then(|m| m.reason.clone())
                .unwrap_or_else(|| "held for approval".into()),
            approval: m.and_then(|m| m.approval.clone()),
            matched: holding,
            if_approved: matched,
        })
    }

    fn allowed(&self, matched: Vec<String>) -> Decision {
        let first = matched.first().cloned();
        let reason = first
            .as_ref()
            .and_then(|id| self.meta.get(id))
            .and_then(|m| m.reason.clone())
            .unwrap_or_else(|| "allowed".into());
        Decision {
            verdict: Verdict::Allow,
            policy_id: first,
            reason,
            approval: None,
            matched,
            if_approved: Vec::new(),
        }
    }
}

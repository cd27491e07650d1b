//! A scope index over the policy set.
//!
//! Cedar evaluates every policy in the set for every request (about 2 µs a
//! policy here), so a few hundred per-agent or per-target rules would make
//! each decision cost hundreds of microseconds. A policy whose scope names
//! another action, another principal or another resource can never be
//! satisfied, so leaving it out changes no decision. This index keeps, per
//! (action, principal, resource), the sub-sets that can apply, built on
//! first use and reused after.

use std::{collections::HashSet, sync::Arc};

use super::cache::Bounded;

use cedar_policy::{
    ActionConstraint, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint, Schema,
};

struct Indexed {
    policy: Policy,
    /// Concrete actions it can apply to; `None` = any.
    actions: Option<HashSet<String>>,
    principal: Option<String>,
    resource: Option<String>,
    /// A forbid with @approval: left out of the relaxed set.
    held: bool,
}

/// The sets to evaluate one request against.
pub struct Scoped {
    /// Without the approval forbids.
    pub relaxed: PolicySet,
    /// Only the approval forbids.
    pub held: PolicySet,
}

type Key = (String, Option<String>, Option<String>);

pub struct ScopeIndex {
    entries: Vec<Indexed>,
    /// Principals / resources that some policy names exactly.
    named_principals: HashSet<String>,
    named_resources: HashSet<String>,
    built: Bounded<Key, Arc<Scoped>>,
}

/// Bound on distinct cached scopes; beyond it, start over.
const MAX_SCOPES: usize = 4096;

fn id_of(uid: &EntityUid) -> String {
    uid.id().unescaped().to_string()
}

impl ScopeIndex {
    pub fn new(
        all: &PolicySet,
        held: &dyn Fn(&Policy) -> bool,
        schema: &Schema,
        actions: &Entities,
    ) -> ScopeIndex {
        // Every concrete action and the groups it is in (itself included).
        let memberships: Vec<(String, HashSet<String>)> = schema
            .actions()
            .map(|a| {
                let mut groups: HashSet<String> = actions
                    .ancestors(a)
                    .map(|it| it.map(id_of).collect())
                    .unwrap_or_default();
                groups.insert(id_of(a));
                (id_of(a), groups)
            })
            .collect();
        let mut entries = Vec::new();
        let mut named_principals = HashSet::new();
        let mut named_resources = HashSet::new();
        for p in all.policies() {
            let actions = match p.action_constraint() {
                ActionConstraint::Any => None,
                ActionConstraint::Eq(a) => Some(HashSet::from([id_of(&a)])),
                ActionConstraint::In(list) => {
                    let wanted: HashSet<String> = list.iter().map(id_of).collect();
                    Some(
                        memberships
                            .iter()
                            .filter(|(_, groups)| !groups.is_disjoint(&wanted))
                            .map(|(a, _)| a.clone())
                            .collect(),
                    )
                }
            };
            let principal = match p.principal_constraint() {
                PrincipalConstraint::Eq(u) => Some(id_of(&u)),
                _ => None,
            };
            let resource = match p.resource_constraint() {
                ResourceConstraint::Eq(u) => Some(id_of(&u)),
                _ => None,
            };
            named_principals.extend(principal.clone());
            named_resources.extend(resource.clone());
            entries.push(Indexed {
                policy: p.clone(),
                actions,
                principal,
                resource,
                held: held(p),
            });
        }
        ScopeIndex {
            entries,
            named_principals,
            named_resources,
            built: Bounded::new(MAX_SCOPES),
        }
    }

    /// The policies that can apply to this request.
    pub fn get(&self, action: &str, principal: &str, resource: &str) -> Arc<Scoped> {
        // Requests by principals no policy names share one key, and so on.
        let key: Key = (
            action.to_string(),
            self.named_principals
                .contains(principal)
                .then(|| principal.to_string()),
            self.named_resources
                .contains(resource)
                .then(|| resource.to_string()),
        );
        if let Some(s) = self.built.get(&key) {
            return s;
        }
        let mut relaxed = PolicySet::new();
        let mut held = PolicySet::new();
        for e in &self.entries {
            let applies = e.actions.as_ref().is_none_or(|a| a.contains(action))
                && e.principal
                    .as_ref()
                    .is_none_or(|p| Some(p) == key.1.as_ref())
                && e.resource
                    .as_ref()
                    .is_none_or(|r| Some(r) == key.2.as_ref());
            if applies {
                // Ids are unique in the full set, so adding cannot fail.
                let _ = if e.held {
                    held.add(e.policy.clone())
                } else {
                    relaxed.add(e.policy.clone())
                };
            }
        }
        let scoped = Arc::new(Scoped { relaxed, held });
        self.built.insert(key, scoped.clone());
        scoped
    }
}

//! Agent identity from CI job tokens (OpenID Connect): `blastgate run
//! --oidc-token-file` presents the job's token, the daemon verifies it
//! ([`verify`]) and binds the verified claims to the process tree it labels
//! ([`Bindings`]). The kernel carries the binding's number in every
//! descendant's label and every connection's record, so the claims follow
//! the tree, not a pid that may be reused.

pub mod http;
mod verify;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use verify::{AllClaims, JobToken, Verified, Verifier};

use crate::config::{OidcConfig, OnExpiry};

/// What a verified token says about the job, as policies and records see
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobIdentity {
    pub iss: String,
    pub sub: String,
    /// The configured audience the token was checked against.
    pub aud: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Every attribute of [`crate::config::OIDC_ATTRIBUTES`] (repository,
    /// ref, workflow, actor, …); "" where the token has no such claim.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Why a token was not accepted: the token's fault, or the issuer's
/// (unreachable), never confused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's issuer {0:?} is not one of the configured [[oidc.issuers]]")]
    UnknownIssuer(String),
    #[error("the token is signed with algorithm {alg:?}; the issuer is pinned to {allowed:?}")]
    AlgorithmNotAllowed { alg: String, allowed: Vec<String> },
    #[error("the token's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the token has expired: {0}")]
    Expired(String),
    #[error("the token is not valid yet (nbf {nbf}, now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("the token was not issued for blastgate: {0}")]
    WrongAudience(String),
    #[error("the issuer's keys could not be fetched (not the token's fault): {0}")]
    IssuerUnavailable(String),
}

/// How a connection's binding stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No token was presented for this process tree.
    None,
    Verified(JobIdentity),
    /// The token has expired and `on_expiry = "refuse"`.
    Expired(JobIdentity),
    /// The label names a binding this daemon does not hold (made by a
    /// daemon before a restart): the claims are unknown.
    Unknown,
}

/// Binding number -> identity. Numbers are random and never 0, so a
/// restarted daemon (which starts empty) cannot hand an old tree's number
/// to a new job.
pub struct Bindings {
    map: Mutex<HashMap<u32, JobIdentity>>,
    on_expiry: OnExpiry,
    /// The same leeway verification gave `exp`: a token accepted at
    /// `blastgate run` is not refused at the job's first connection.
    skew_secs: u64,
}

/// Enough for every job a runner starts between restarts; past it the
/// longest-expired go first.
const MAX_BINDINGS: usize = 65_536;

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Bindings {
    pub fn new(on_expiry: OnExpiry, skew_secs: u64) -> Bindings {
        Bindings {
            map: Mutex::new(HashMap::new()),
            on_expiry,
            skew_secs,
        }
    }

    /// A new number for `identity`.
    pub fn bind(&self, identity: JobIdentity) -> u32 {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BINDINGS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, v)| v.expires_at)
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        loop {
            // The high bit is left to CI jobs' numbers (`crate::jobs`).
            let n = (uuid::Uuid::new_v4().as_u128() & 0x7fff_ffff) as u32;
            if n != 0 && !map.contains_key(&n) {
                map.insert(n, identity);
                return n;
            }
        }
    }

    /// Forgets a number no label came to carry.
    pub fn unbind(&self, binding: u32) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&binding);
    }

    pub fn standing(&self, binding: u32) -> Standing {
        if binding == 0 {
            return Standing::None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&binding) {
            None => Standing::Unknown,
            Some(id)
                if id.expires_at.saturating_add(self.skew_secs) <= now_secs()
                    && self.on_expiry == OnExpiry::Refuse =>
            {
                Standing::Expired(id.clone())
            }
            Some(id) => Standing::Verified(id.clone()),
        }
    }
}

/// The daemon's OIDC state: the verifier, the bindings, and which agents
/// must present a token.
pub struct Oidc {
    pub verifier: Verifier,
    pub bindings: Bindings,
    /// `oidc.require_for`.
    require: globset::GlobSet,
}

impl Oidc {
    pub fn new(config: &OidcConfig) -> Result<Oidc, String> {
        Ok(Oidc {
            verifier: Verifier::new(config)?,
            bindings: Bindings::new(config.on_expiry, config.clock_skew_secs),
            require: config.require_set()?,
        })
    }

    pub fn required_for(&self, agent: &str) -> bool {
        self.require.is_match(agent)
    }

    /// The identity a new connection of `agent`, whose label carries
    /// `binding`, is decided with; `Err` says why it is refused.
    pub fn for_connection(&self, agent: &str, binding: u32) -> Result<Option<JobIdentity>, String> {
        let required = self.required_for(agent);
        match self.bindings.standing(binding) {
            Standing::Verified(id) => Ok(Some(id)),
            Standing::Expired(id) => Err(format!(
                "the OIDC token of this job ({}) expired at {} (unix seconds); new connections \
                 are refused (oidc.on_expiry = \"refuse\"), open sessions go on",
                id.sub, id.expires_at
            )),
            Standing::Unknown if required => Err(format!(
                "agent {agent:?} requires an OIDC token; this process tree's token was verified \
                 by a daemon before a restart and is not known now: start the job again"
            )),
            Standing::None if required => Err(format!(
                "agent {agent:?} requires an OIDC token (oidc.require_for) and this process \
                 tree presented none (blastgate run --oidc-token-file)"
            )),
            Standing::Unknown | Standing::None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(expires_at: u64) -> JobIdentity {
        JobIdentity {
            iss: "https://issuer".into(),
            sub: "repo:acme/app".into(),
            expires_at,
            ..JobIdentity::default()
        }
    }

    #[test]
    fn expiry_follows_the_config() {
        let refuse = Bindings::new(OnExpiry::Refuse, 0);
        let live = refuse.bind(job(now_secs() + 600));
        let dead = refuse.bind(job(now_secs() - 1));
        assert_ne!(live, 0);
        assert!(matches!(refuse.standing(live), Standing::Verified(_)));
        assert!(matches!(refuse.standing(dead), Standing::Expired(_)));
        assert_eq!(refuse.standing(0), Standing::None);
        assert_eq!(refuse.standing(live ^ 1), Standing::Unknown);
        let keep = Bindings::new(OnExpiry::KeepClaims, 0);
        let dead = keep.bind(job(now_secs() - 1));
        assert!(matches!(keep.standing(dead), Standing::Verified(_)));
    }
}

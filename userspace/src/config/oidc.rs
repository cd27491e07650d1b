//! `[oidc]`: which OpenID Connect issuers may vouch for an agent (a CI
//! job's ID token), what their claims are called in policy, and which
//! agents must present one.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

/// The job attributes policies read as `principal.oidc.<name>`, and the
/// claim each is taken from unless an issuer's `claims` says otherwise
/// (GitHub Actions' names; GitLab CI calls them `project_path`,
/// `user_login`, `pipeline_id`, …). A fixed set, because the Cedar schema
/// declares them; a claim a token lacks reads as "".
pub const ATTRIBUTES: &[(&str, &str)] = &[
    ("repository", "repository"),
    ("ref", "ref"),
    ("workflow", "workflow"),
    ("actor", "actor"),
    ("environment", "environment"),
    ("run_id", "run_id"),
];

/// Signature algorithms an issuer may be pinned to. No `none`, and no
/// HMAC: a shared secret would let anyone holding it mint job tokens.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Agent names (`*` globs) that must present a valid token: `blastgate
    /// run` without one is refused, and so is every connection of such an
    /// agent's processes that no verified token covers (processes enrolled
    /// by uid or cgroup included).
    #[serde(default)]
    pub require_for: Vec<String>,
    /// What a connection opened after the token expired gets. Sessions
    /// already open are never cut.
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// Leeway for `exp` and `nbf` against clocks that disagree.
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
    /// How often each issuer's discovery document and keys are fetched
    /// again (a token signed by a key not yet known triggers a fetch at
    /// once, at most every `min_refresh_secs`).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    #[serde(default = "default_min_refresh_secs")]
    pub min_refresh_secs: u64,
}

impl Default for OidcConfig {
    fn default() -> OidcConfig {
        OidcConfig {
            issuers: Vec::new(),
            require_for: Vec::new(),
            on_expiry: OnExpiry::default(),
            clock_skew_secs: default_clock_skew_secs(),
            refresh_secs: default_refresh_secs(),
            min_refresh_secs: default_min_refresh_secs(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// New connections are refused once the token has expired.
    #[default]
    Refuse,
    /// New connections keep the claims as last verified.
    KeepClaims,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exactly as the tokens' `iss` says it (no trailing slash added).
    pub issuer: String,
    /// What `aud` must contain: blastgate's own audience, so a token minted
    /// for another service is not accepted here.
    pub audience: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Overrides of [`ATTRIBUTES`]: attribute -> claim name.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// The claim listing the subject's groups (a list of strings).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// PEM roots for an issuer served by a private CA (instead of the
    /// public web roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The CI system whose job tokens this issuer mints: a token registers
    /// a job (`blastgate job start`) only for its own provider's jobs.
    /// Unset: its tokens register no job.
    #[serde(default)]
    pub provider: Option<CiProvider>,
}

/// A CI system whose runners register jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CiProvider {
    Github,
    Gitlab,
}

impl CiProvider {
    pub fn name(self) -> &'static str {
        match self {
            CiProvider::Github => "github",
            CiProvider::Gitlab => "gitlab",
        }
    }
}

fn default_clock_skew_secs() -> u64 {
    60
}

fn default_refresh_secs() -> u64 {
    600
}

fn default_min_refresh_secs() -> u64 {
    30
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

impl OidcConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (i, iss) in self.issuers.iter().enumerate() {
            let at = format!("oidc.issuers[{i}]");
            let url = iss.issuer.as_str();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{at}.issuer {url:?} must be an http(s) URL"));
            }
            if iss.audience.is_empty() {
                return Err(format!(
                    "{at}.audience is empty: name blastgate's own audience"
                ));
            }
            if iss.algorithms.is_empty() {
                return Err(format!("{at}.algorithms is empty"));
            }
            for alg in &iss.algorithms {
                if !ALGORITHMS.contains(&alg.as_str()) {
                    return Err(format!(
                        "{at}.algorithms: {alg:?} is not one of {ALGORITHMS:?} (no `none`, no shared-secret HS*)"
                    ));
                }
            }
            for attr in iss.claims.keys() {
                if !ATTRIBUTES.iter().any(|(a, _)| a == attr) {
                    let known: Vec<&str> = ATTRIBUTES.iter().map(|(a, _)| *a).collect();
                    return Err(format!(
                        "{at}.claims: {attr:?} is not a policy attribute (one of {known:?})"
                    ));
                }
            }
            if self.issuers[..i].iter().any(|o| o.issuer == iss.issuer) {
                return Err(format!("{at}: issuer {url:?} is listed twice"));
            }
        }
        self.require_set()?;
        if !self.require_for.is_empty() && self.issuers.is_empty() {
            return Err(
                "oidc.require_for names agents but no oidc.issuers can vouch for them".into(),
            );
        }
        Ok(())
    }

    /// The agent names that must present a token, compiled once (the
    /// proxy asks for every connection).
    pub fn require_set(&self) -> Result<globset::GlobSet, String> {
        let mut set = globset::GlobSetBuilder::new();
        for (i, p) in self.require_for.iter().enumerate() {
            set.add(globset::Glob::new(p).map_err(|e| format!("oidc.require_for[{i}]: {e}"))?);
        }
        set.build().map_err(|e| format!("oidc.require_for: {e}"))
    }

    /// The claim that feeds `attribute` for `issuer`.
    pub fn claim_for<'a>(issuer: &'a IssuerConfig, attribute: &'a str) -> &'a str {
        issuer
            .claims
            .get(attribute)
            .map(String::as_str)
            .or_else(|| {
                ATTRIBUTES
                    .iter()
                    .find(|(a, _)| *a == attribute)
                    .map(|(_, c)| *c)
            })
            .unwrap_or(attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerConfig {
        IssuerConfig {
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "blastgate".into(),
            algorithms: default_algorithms(),
            claims: BTreeMap::new(),
            groups_claim: default_groups_claim(),
            ca_file: None,
            provider: None,
        }
    }

    #[test]
    fn weak_issuers_are_refused() {
        let mut c = OidcConfig {
            issuers: vec![issuer()],
            ..OidcConfig::default()
        };
        assert!(c.validate().is_ok());
        c.issuers[0].algorithms = vec!["none".into()];
        assert!(c.validate().unwrap_err().contains("none"));
        c.issuers[0].algorithms = vec!["HS256".into()];
        assert!(c.validate().is_err());
        c.issuers[0].algorithms = default_algorithms();
        c.issuers[0].audience.clear();
        assert!(c.validate().is_err());
        c.issuers[0].audience = "blastgate".into();
        c.issuers[0]
            .claims
            .insert("repo".into(), "project_path".into());
        assert!(c.validate().unwrap_err().contains("repository"));
        c.issuers[0].claims.clear();
        c.issuers.push(issuer());
        assert!(c.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn requirement_needs_an_issuer_and_matches_globs() {
        let c = OidcConfig {
            require_for: vec!["ci-*".into()],
            ..OidcConfig::default()
        };
        assert!(c.validate().is_err());
        let set = c.require_set().expect("globs");
        assert!(set.is_match("ci-build") && !set.is_match("dev"));
    }

    #[test]
    fn claim_names_default_and_override() {
        let mut i = issuer();
        assert_eq!(OidcConfig::claim_for(&i, "repository"), "repository");
        i.claims.insert("repository".into(), "project_path".into());
        assert_eq!(OidcConfig::claim_for(&i, "repository"), "project_path");
    }
}

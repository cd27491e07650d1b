//! Verifying a CI job's token against the configured issuers: which
//! issuer (by the unverified `iss`, then checked exactly), which keys (the
//! issuer's discovery document and JWKS, cached, fetched again when a token
//! names a key not yet known: key rotation), which algorithms (pinned per
//! issuer), which audience (blastgate's own), and when (expiry and
//! not-before with a bounded clock skew).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine;
use openidconnect::{
    core::{
        CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm, CoreProviderMetadata,
    },
    AdditionalClaims, ClaimsVerificationError, ClientId, IdToken, IssuerUrl, JsonWebTokenType,
    Nonce, NormalizedJsonWebTokenType, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

use super::{http::HttpClient, JobIdentity, TokenError};
use crate::config::{IssuerConfig, OidcConfig, OIDC_ATTRIBUTES};

/// Every claim of the token, for the mapped attributes and groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllClaims {
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for AllClaims {}

/// A JWT with every claim kept (job tokens here, approvers' ID tokens in
/// the console).
pub type JobToken =
    IdToken<AllClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Tokens are a few KiB; anything much larger is not one.
const MAX_TOKEN: usize = 16 * 1024;

pub struct Verifier {
    issuers: Vec<Issuer>,
    skew: Duration,
    min_refresh: Duration,
}

struct Issuer {
    config: IssuerConfig,
    url: IssuerUrl,
    http: HttpClient,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    keys: tokio::sync::Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    jwks: Option<CoreJsonWebKeySet>,
    /// The last fetch a token naming an unknown key caused.
    forced: Option<Instant>,
    /// The last fetch a token caused while no keys were held.
    attempted: Option<Instant>,
}

impl Verifier {
    pub fn new(config: &OidcConfig) -> Result<Verifier, String> {
        let mut issuers = Vec::new();
        for c in &config.issuers {
            let url = IssuerUrl::new(c.issuer.clone()).map_err(|e| format!("{}: {e}", c.issuer))?;
            let algorithms = c
                .algorithms
                .iter()
                .map(|a| {
                    serde_json::from_value(serde_json::Value::String(a.clone()))
                        .map_err(|e| format!("{}: algorithm {a}: {e}", c.issuer))
                })
                .collect::<Result<_, _>>()?;
            issuers.push(Issuer {
                http: HttpClient::new(c.ca_file.as_deref())?,
                config: c.clone(),
                url,
                algorithms,
                keys: tokio::sync::Mutex::new(KeyCache::default()),
            });
        }
        Ok(Verifier {
            issuers,
            skew: Duration::from_secs(config.clock_skew_secs),
            min_refresh: Duration::from_secs(config.min_refresh_secs),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every issuer's keys again (periodic refresh, and at start so
    /// the first `blastgate run` does not wait). A failure keeps the keys
    /// already held.
    pub async fn refresh_all(&self) {
        for issuer in &self.issuers {
            if let Err(e) = issuer.fetch_keys().await {
                tracing::warn!(issuer = %issuer.config.issuer, error = %e, "OIDC keys not refreshed");
            }
        }
    }

    pub async fn verify(&self, token: &str) -> Result<JobIdentity, TokenError> {
        self.verify_with_claims(token).await.map(|v| v.identity)
    }

    /// Verifies `token` and keeps every claim it carries, and the CI
    /// provider its issuer is configured for: a job registration checks
    /// the job's environment against claims beyond the policy attributes
    /// (run_attempt, pipeline_id, job_id, …).
    pub async fn verify_with_claims(&self, token: &str) -> Result<Verified, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed(format!(
                "{} bytes, over {MAX_TOKEN}",
                token.len()
            )));
        }
        let (header, payload) = unverified_parts(token)?;
        let iss = payload
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or_else(|| TokenError::Malformed("no `iss` claim".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.to_string()))?;
        let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
        if !issuer.config.algorithms.iter().any(|a| a == alg) {
            return Err(TokenError::AlgorithmNotAllowed {
                alg: alg.to_string(),
                allowed: issuer.config.algorithms.clone(),
            });
        }
        let parsed: JobToken = token
            .parse()
            .map_err(|e| TokenError::Malformed(format!("{e}")))?;
        let keys = issuer.keys(false, self.min_refresh).await?;
        let identity = match issuer.check(&parsed, &payload, keys, self.skew) {
            // A key this daemon has not seen: the issuer may have rotated.
            Err(TokenError::BadSignature(why)) if why.starts_with(NO_KEY) => {
                let keys = issuer.keys(true, self.min_refresh).await?;
                issuer.check(&parsed, &payload, keys, self.skew)
            }
            other => other,
        }?;
        // The payload decoded before is the one whose signature verified.
        Ok(Verified {
            identity,
            claims: payload,
            provider: issuer.config.provider,
        })
    }
}

const NO_KEY: &str = "no key of the issuer";

/// A verified token: its identity, every claim, and its issuer's provider.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: JobIdentity,
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub provider: Option<crate::config::CiProvider>,
}

impl Issuer {
    async fn fetch_jwks(&self) -> Result<CoreJsonWebKeySet, TokenError> {
        let meta = CoreProviderMetadata::discover_async(self.url.clone(), &self.http)
            .await
            .map_err(|e| TokenError::IssuerUnavailable(format!("{}: {e}", self.config.issuer)))?;
        Ok(meta.jwks().clone())
    }

    /// The periodic refresh: a failure keeps the keys already held.
    async fn fetch_keys(&self) -> Result<(), TokenError> {
        let mut cache = self.keys.lock().await;
        let jwks = self.fetch_jwks().await?;
        cache.jwks = Some(jwks);
        Ok(())
    }

    /// The cached keys; fetched when there are none, or when `rotated` (a
    /// token names a key not among them). Tokens cause at most one fetch
    /// per `min_refresh` either way (a stream of tokens naming made-up
    /// keys, or arriving while the issuer is down, cannot make the daemon
    /// hammer it), and one at a time: the cache stays locked during the
    /// fetch, so tokens that arrive meanwhile wait for its keys.
    async fn keys(
        &self,
        rotated: bool,
        min_refresh: Duration,
    ) -> Result<CoreJsonWebKeySet, TokenError> {
        let mut cache = self.keys.lock().await;
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < min_refresh);
        match &cache.jwks {
            Some(jwks) if !rotated || recent(cache.forced) => return Ok(jwks.clone()),
            Some(_) => cache.forced = Some(Instant::now()),
            None if recent(cache.attempted) => {
                return Err(TokenError::IssuerUnavailable(format!(
                    "{}: its keys could not be fetched moments ago; not asked again for {}s",
                    self.config.issuer,
                    min_refresh.as_secs()
                )))
            }
            None => cache.attempted = Some(Instant::now()),
        }
        match self.fetch_jwks().await {
            Ok(jwks) => {
                cache.jwks = Some(jwks.clone());
                Ok(jwks)
            }
            Err(e) => match &cache.jwks {
                Some(jwks) => {
                    tracing::warn!(error = %e, "OIDC keys not refreshed; keeping the last ones");
                    Ok(jwks.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Verifies `token`; `payload` is its payload as decoded before (every
    /// claim, standard ones included, which openidconnect keeps to itself),
    /// read only once the signature has verified.
    fn check(
        &self,
        token: &JobToken,
        payload: &Json,
        keys: CoreJsonWebKeySet,
        skew: Duration,
    ) -> Result<JobIdentity, TokenError> {
        let skew_chrono = chrono::Duration::from_std(skew).unwrap_or(chrono::Duration::zero());
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(self.config.audience.clone()),
            self.url.clone(),
            keys,
        )
        .set_allowed_algs(self.algorithms.clone())
        .set_allowed_jose_types(jose_types())
        // Expiry with the skew as leeway.
        .set_time_fn(move || chrono::Utc::now() - skew_chrono)
        // A job token may name other audiences beside blastgate's; only
        // blastgate's has to be there.
        .set_other_audience_verifier_fn(|_| true);
        // CI job tokens carry no nonce: nothing was sent to bind one.
        let claims = token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .map_err(|e| classify(e, &self.config.audience))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let other = payload;
        match other.get("nbf") {
            None => {}
            Some(v) => match v.as_f64().filter(|n| n.is_finite()) {
                Some(nbf) if nbf > (now + skew.as_secs()) as f64 => {
                    return Err(TokenError::NotYetValid {
                        nbf: nbf as u64,
                        now,
                    })
                }
                Some(_) => {}
                None => {
                    return Err(TokenError::Malformed(format!(
                        "nbf {v} is not a NumericDate"
                    )))
                }
            },
        }
        // An audience list may name others; the party it was issued to
        // (azp), if named, must be blastgate.
        if let Some(azp) = other.get("azp") {
            if azp.as_str() != Some(self.config.audience.as_str()) {
                return Err(TokenError::WrongAudience(format!(
                    "it was issued to {azp} (azp), not {:?}",
                    self.config.audience
                )));
            }
        }
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => String::new(),
        };
        let attributes: BTreeMap<String, String> = OIDC_ATTRIBUTES
            .iter()
            .map(|(attr, _)| {
                let claim = OidcConfig::claim_for(&self.config, attr);
                let value = other.get(claim).map(text).unwrap_or_default();
                (attr.to_string(), value)
            })
            .collect();
        let groups = match other.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        Ok(JobIdentity {
            iss: self.config.issuer.clone(),
            sub: claims.subject().to_string(),
            aud: self.config.audience.clone(),
            groups,
            claims: attributes,
            expires_at: u64::try_from(claims.expiration().timestamp()).unwrap_or(0),
        })
    }
}

/// ID tokens are `JWT` (or untyped); RFC 9068 access tokens minted for
/// blastgate's audience (`at+jwt`) vouch for the job the same way.
fn jose_types() -> Vec<NormalizedJsonWebTokenType> {
    ["JWT", "at+jwt", "application/at+jwt"]
        .iter()
        .filter_map(|t| {
            NormalizedJsonWebTokenType::try_from(&JsonWebTokenType::new(t.to_string())).ok()
        })
        .collect()
}

/// Says whose fault it is, in words an operator can act on.
fn classify(e: ClaimsVerificationError, audience: &str) -> TokenError {
    match e {
        ClaimsVerificationError::Expired(why) => TokenError::Expired(why),
        ClaimsVerificationError::InvalidAudience(why) => {
            TokenError::WrongAudience(format!("audience must include {audience:?}: {why}"))
        }
        ClaimsVerificationError::InvalidIssuer(why) => TokenError::UnknownIssuer(why),
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => TokenError::BadSignature(format!("{NO_KEY} matches the token's key id")),
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::DisallowedAlg(why),
        ) => TokenError::AlgorithmNotAllowed {
            alg: why,
            allowed: Vec::new(),
        },
        ClaimsVerificationError::SignatureVerification(s) => {
            TokenError::BadSignature(s.to_string())
        }
        other => TokenError::Malformed(other.to_string()),
    }
}

/// The header and payload, decoded but not verified: only to pick the
/// issuer and give a clear error before the real check.
type Json = serde_json::Map<String, serde_json::Value>;

fn unverified_parts(token: &str) -> Result<(Json, Json), TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not a signed JWT (three dot-separated parts)".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|e| TokenError::Malformed(format!("{what}: {e}")))?;
        serde_json::from_slice::<Json>(&bytes)
            .map_err(|e| TokenError::Malformed(format!("{what}: {e}")))
    };
    Ok((decode(h, "header")?, decode(p, "payload")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn verifier() -> Verifier {
        let config: OidcConfig = toml::from_str(
            "[[issuers]]\nissuer = \"http://127.0.0.1:9\"\naudience = \"blastgate\"\n",
        )
        .expect("config");
        Verifier::new(&config).expect("verifier")
    }

    async fn err(token: &str) -> TokenError {
        verifier().verify(token).await.expect_err("refused")
    }

    #[tokio::test]
    async fn shapes_issuers_and_algorithms_are_refused_before_any_fetch() {
        assert!(matches!(err("abc").await, TokenError::Malformed(_)));
        assert!(matches!(err("a.b.c.d").await, TokenError::Malformed(_)));
        let payload = b64(r#"{"iss":"http://127.0.0.1:9","aud":"blastgate"}"#);
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none"}"#));
        match err(&none).await {
            TokenError::AlgorithmNotAllowed { alg, .. } => assert_eq!(alg, "none"),
            e => panic!("{e}"),
        }
        let hs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"HS256"}"#));
        assert!(matches!(
            err(&hs).await,
            TokenError::AlgorithmNotAllowed { .. }
        ));
        let other = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"iss":"https://evil.example"}"#)
        );
        match err(&other).await {
            TokenError::UnknownIssuer(i) => assert_eq!(i, "https://evil.example"),
            e => panic!("{e}"),
        }
        // The issuer is down (port 9, nothing there): said so, not "bad
        // token".
        let rs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"RS256","kid":"k"}"#));
        let e = err(&rs).await;
        assert!(
            matches!(
                e,
                TokenError::IssuerUnavailable(_) | TokenError::Malformed(_)
            ),
            "{e}"
        );
    }
}

//! Approvers sign in with the authorization code flow and PKCE against the
//! configured issuer; the ID token's nonce, audience, issuer, signature
//! and expiry are checked by openidconnect, the groups read from the
//! configured claim.

use openidconnect::{
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use tokio::sync::Mutex;

use crate::{
    config::ConsoleConfig,
    identity::oidc::{http::HttpClient, JobToken},
};

type LoginClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Who signed in, as the issuer vouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub iss: String,
    pub sub: String,
    /// preferred_username, email or name: what people call them.
    pub name: String,
    pub groups: Vec<String>,
}

impl Approver {
    /// How decisions record them.
    pub fn label(&self) -> String {
        format!("{} (oidc {} at {}, console)", self.name, self.sub, self.iss)
    }
}

/// What the browser's login started with: checked at the callback.
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

pub struct Auth {
    config: ConsoleConfig,
    http: HttpClient,
    secret: Option<String>,
    /// Discovered on first use (the issuer may be down at start).
    client: Mutex<Option<LoginClient>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the issuer could not be reached or answered badly: {0}")]
    Issuer(String),
    #[error("the sign-in was refused: {0}")]
    Refused(String),
}

impl Auth {
    pub fn new(config: &ConsoleConfig) -> Result<Auth, String> {
        let secret = match &config.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("console.client_secret_file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Auth {
            http: HttpClient::new(config.issuer_ca_file.as_deref())?,
            config: config.clone(),
            secret,
            client: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<LoginClient, AuthError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| AuthError::Issuer(e.to_string()))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| AuthError::Issuer(e.to_string()))?;
        let redirect = RedirectUrl::new(format!("{}/callback", self.config.public_url()))
            .map_err(|e| AuthError::Issuer(e.to_string()))?;
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.config.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The issuer's authorization URL for a new sign-in.
    pub async fn start(&self) -> Result<Started, AuthError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".into()))
            .add_scope(Scope::new(self.config.groups_claim.clone()))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code and checks the ID token.
    pub async fn finish(
        &self,
        code: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<Approver, AuthError> {
        let client = self.client().await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| AuthError::Issuer(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| AuthError::Refused(format!("code exchange: {e}")))?;
        let raw = openidconnect::TokenResponse::id_token(&response)
            .ok_or_else(|| AuthError::Refused("the issuer sent no ID token".into()))?
            .to_string();
        let token: JobToken = raw
            .parse()
            .map_err(|e| AuthError::Refused(format!("ID token: {e}")))?;
        let nonce = Nonce::new(nonce.to_string());
        let claims = token
            .claims(&client.id_token_verifier(), &nonce)
            .map_err(|e| AuthError::Refused(format!("ID token: {e}")))?;
        let other = &claims.additional_claims().other;
        let text = |k: &str| other.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let sub = claims.subject().to_string();
        let name = text("preferred_username")
            .or_else(|| text("email"))
            .or_else(|| text("name"))
            .unwrap_or_else(|| sub.clone());
        let groups = match other.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Approver {
            iss: claims.issuer().to_string(),
            sub,
            name,
            groups,
        })
    }
}

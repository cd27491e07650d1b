//! `[console]`: the approvers' web console (HTTPS, OpenID Connect login).
//! Absent: no console; approvals stay on the control socket.

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL approvers open (links in webhook messages, the login
    /// redirect): `https://host:port`, no path. Default: from `listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The OpenID Provider approvers sign in with (exactly its `iss`).
    pub issuer: String,
    pub client_id: String,
    /// The client secret, alone in a root-only file; none for a public
    /// client (PKCE is used either way).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The ID token claim listing the approver's groups: `@approval("dba")`
    /// is decided only by members of `dba`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// PEM certificate chain and key the console presents; default: a
    /// certificate for the public URL's host from blastgate's local CA.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// PEM roots for an issuer behind a private CA.
    #[serde(default)]
    pub issuer_ca_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_session_ttl_secs() -> u64 {
    8 * 3600
}

impl ConsoleConfig {
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }

    /// The host part of the public URL (a name or an address).
    pub fn public_host(&self) -> String {
        let url = self.public_url();
        let rest = url.strip_prefix("https://").unwrap_or(&url);
        let authority = rest.split('/').next().unwrap_or(rest);
        if let Some(v6) = authority.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6).to_string();
        }
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = self.public_url();
        if !url.starts_with("https://") {
            return Err(format!(
                "console.public_url {url:?} must be https: session cookies are Secure"
            ));
        }
        if url["https://".len()..].contains('/') {
            return Err(format!("console.public_url {url:?} must have no path"));
        }
        if !(self.issuer.starts_with("https://") || self.issuer.starts_with("http://")) {
            return Err(format!(
                "console.issuer {:?} must be an http(s) URL",
                self.issuer
            ));
        }
        if self.client_id.is_empty() {
            return Err("console.client_id is empty".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("console.cert_file and console.key_file go together".into());
        }
        if self.session_ttl_secs == 0 {
            return Err("console.session_ttl_secs must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ConsoleConfig {
        toml::from_str(&format!(
            "issuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\n{extra}"
        ))
        .expect("config")
    }

    #[test]
    fn public_url_and_host() {
        let c = config("");
        assert_eq!(c.public_url(), "https://127.0.0.1:8443");
        assert_eq!(c.public_host(), "127.0.0.1");
        assert!(c.validate().is_ok());
        let c = config("public_url = \"https://console.example:9443/\"");
        assert_eq!(c.public_url(), "https://console.example:9443");
        assert_eq!(c.public_host(), "console.example");
        let c = config("listen = \"[::1]:8443\"");
        assert_eq!(c.public_host(), "::1");
        assert!(config("public_url = \"http://x\"").validate().is_err());
        assert!(config("public_url = \"https://x/app\"").validate().is_err());
        assert!(config("cert_file = \"/x\"").validate().is_err());
    }
}

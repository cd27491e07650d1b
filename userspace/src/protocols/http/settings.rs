//! `[targets.http]`: which credentials blastgate puts on requests, how it
//! reaches the real API, and what kind of API it is.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::config::Secret;

/// Largest response body read whole for masking (default 8 MiB).
const DEFAULT_INSPECT_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// Headers set on every request, replacing whatever the agent sent:
    /// `Authorization = { file = "…", prefix = "Bearer " }`.
    #[serde(default)]
    pub inject_headers: BTreeMap<String, InjectedHeader>,
    /// The agent's own credentials, removed before forwarding (names are
    /// case-insensitive). Injected headers are removed too.
    #[serde(default = "default_strip")]
    pub strip_headers: Vec<String>,
    /// CA bundle the upstream's certificate must chain to (default: the
    /// system's roots).
    #[serde(default)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether blastgate speaks TLS upstream (default: as the agent does,
    /// so `true` for `https` targets and `false` for `http`).
    #[serde(default)]
    pub upstream_tls: Option<bool>,
    /// The name checked on the upstream certificate and sent as SNI
    /// (default: the Host the agent asked for).
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub kind: ApiKind,
    /// Response bodies up to this size are read whole when masking needs
    /// them; larger ones follow `oversize`.
    #[serde(default = "default_inspect")]
    pub max_inspect_bytes: usize,
    /// What happens to a body masking would need but that is over
    /// `max_inspect_bytes`: never silently truncated.
    #[serde(default)]
    pub oversize: Oversize,
    /// What happens to a response body this target's JSON path rules
    /// cannot read (not JSON: CSV, YAML, protobuf, HTML, none labelled).
    #[serde(default)]
    pub unmaskable: Unmaskable,
    /// Bytes of each request and response body kept in the records, masked
    /// (0, the default: none; at most 64 KiB).
    #[serde(default)]
    pub record_body_bytes: usize,
    /// Required for `kind = "aws"`: the region and the held key.
    #[serde(default)]
    pub aws: Option<super::aws::AwsTarget>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    #[default]
    Generic,
    /// Requests are also mapped to Kubernetes verbs and resources.
    Kubernetes,
    /// Requests are AWS API calls: decided as `aws:<service>:<Operation>`
    /// and re-signed with the held key (`[targets.http.aws]`).
    Aws,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Refused with 502 and recorded: masking could not be applied.
    #[default]
    Refuse,
    /// Passed unmasked and recorded as such.
    Pass,
}

/// An API can hand the same fields in another form than JSON (`Accept:
/// text/csv`, `?format=yaml`, a protobuf client): a rule that masks them
/// by JSON path would not find them there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmaskable {
    /// A success is refused with 502; any other status keeps its code and
    /// headers with the body withheld. Both recorded with why.
    #[default]
    Refuse,
    /// Passed with the value detectors run over text (binary as it is):
    /// the fields masked by path reach the agent.
    Scan,
}

/// A header value from a secret, with an optional prefix (`Bearer `).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedHeader {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub prefix: String,
}

impl InjectedHeader {
    /// The value to send, read now (files may be rotated under us).
    pub fn value(&self) -> Result<String, String> {
        Ok(format!("{}{}", self.prefix, self.secret()?))
    }

    /// The secret alone, without the prefix: what an echo may quote.
    pub fn secret(&self) -> Result<String, String> {
        Secret {
            file: self.file.clone(),
            env: self.env.clone(),
        }
        .read()
    }
}

fn default_strip() -> Vec<String> {
    ["authorization", "proxy-authorization", "cookie"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_inspect() -> usize {
    DEFAULT_INSPECT_BYTES
}

impl HttpTarget {
    pub fn validate(&self) -> Result<(), String> {
        for (name, h) in &self.inject_headers {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("[targets.http] inject_headers: bad header name {name:?}"))?;
            if h.file.is_some() == h.env.is_some() {
                return Err(format!(
                    "[targets.http] inject_headers.{name}: needs exactly one of file or env"
                ));
            }
        }
        if self.record_body_bytes > super::excerpt::MAX_EXCERPT_BYTES {
            return Err(format!(
                "[targets.http] record_body_bytes is at most {}",
                super::excerpt::MAX_EXCERPT_BYTES
            ));
        }
        match (&self.kind, &self.aws) {
            (ApiKind::Aws, Some(a)) => a.validate()?,
            (ApiKind::Aws, None) => {
                return Err(
                    "[targets.http] kind = \"aws\" needs a [targets.http.aws] section".into(),
                )
            }
            (_, Some(_)) => return Err("[targets.http.aws] is only for kind = \"aws\"".into()),
            _ => {}
        }
        if self.max_inspect_bytes == 0 {
            return Err("[targets.http] max_inspect_bytes must be positive".into());
        }
        Ok(())
    }
}

//! A configured target as a gateway serves it: the name and attributes
//! policy sees, where blastgate connects, and the protocol's own settings.

use std::net::SocketAddr;

use crate::config::Protocol;

#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub protocol: Protocol,
    /// Where blastgate connects; `None` means "the address the agent dialled".
    pub upstream: Option<SocketAddr>,
    /// The target as policies see it.
    pub attrs: crate::policy::TargetAttrs,
    /// `false`: shadow mode, decisions are recorded but not enforced.
    pub enforce: bool,
    /// Names on certificates presented to agents: configured host names,
    /// else the target's addresses.
    pub names: Vec<String>,
    /// The `hosts` entries' names (exact and `*.suffix`): a TLS agent
    /// asking for a name one of them covers gets a certificate for that
    /// very name (a wildcard target has no single name to present).
    pub host_names: Vec<crate::egress::pattern::HostPattern>,
    pub postgres: Option<super::postgres::PostgresTarget>,
    pub ssh: Option<super::ssh::SshTarget>,
    pub http: Option<super::http::HttpTarget>,
}

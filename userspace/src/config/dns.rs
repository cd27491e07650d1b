//! `[dns]`: blastgate's resolver, which answers every agent's DNS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// The resolver's default port on 127.0.0.1 and ::1.
pub const DEFAULT_DNS_PORT: u16 = 15353;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Where the kernel sends agents' port-53 datagrams: `127.0.0.1:PORT`
    /// (the resolver also listens on `[::1]:PORT` for native IPv6).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Resolvers blastgate forwards allowed queries to. Empty: the host's,
    /// from /etc/resolv.conf (or systemd-resolved's upstreams when that
    /// file names its stub).
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// The answer to a name no rule allows.
    #[serde(default)]
    pub unknown_names: UnknownNames,
    /// Learned addresses stay usable at least this long after the answer,
    /// whatever its TTL: clients cache answers longer than they should.
    #[serde(default = "default_min_ttl_secs")]
    pub min_ttl_secs: u64,
    /// Queries per second one agent may ask (sustained), and in a burst:
    /// a guard against tunnelling data through lookups.
    #[serde(default = "default_queries_per_sec")]
    pub queries_per_sec: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Labels a queried name may have.
    #[serde(default = "default_max_labels")]
    pub max_labels: usize,
    /// Bytes of a query, as sent.
    #[serde(default = "default_max_query_bytes")]
    pub max_query_bytes: usize,
    /// Removed: agents' DNS now always goes to blastgate's resolver. Kept
    /// only to say so instead of "unknown field".
    #[serde(default)]
    pub resolvers: Option<toml::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownNames {
    #[default]
    Nxdomain,
    Refused,
}

fn default_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_DNS_PORT)
}
fn default_min_ttl_secs() -> u64 {
    300
}
fn default_queries_per_sec() -> u32 {
    100
}
fn default_burst() -> u32 {
    400
}
fn default_max_labels() -> usize {
    12
}
fn default_max_query_bytes() -> usize {
    512
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: default_listen(),
            upstreams: Vec::new(),
            unknown_names: UnknownNames::default(),
            min_ttl_secs: default_min_ttl_secs(),
            queries_per_sec: default_queries_per_sec(),
            burst: default_burst(),
            max_labels: default_max_labels(),
            max_query_bytes: default_max_query_bytes(),
            resolvers: None,
        }
    }
}

impl DnsConfig {
    pub fn validate(&self, proxy_port: u16) -> Result<(), String> {
        if self.resolvers.is_some() {
            return Err(
                "dns.resolvers was removed: every agent's DNS now goes to blastgate's \
                        resolver; name the servers it forwards to in dns.upstreams"
                    .into(),
            );
        }
        if self.listen.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) || self.listen.port() == 0 {
            return Err(format!(
                "dns.listen: must be 127.0.0.1:PORT with a port (the kernel sends agents' DNS \
                 there, and to [::1] on the same port), not {}",
                self.listen
            ));
        }
        if self.listen.port() == 53 {
            return Err("dns.listen: port 53 is where agents send DNS; choose another".into());
        }
        if self.listen.port() == proxy_port {
            // UDP and TCP ports do not collide, but one number for two
            // jobs makes the bind guard and the status output ambiguous.
            return Err(format!(
                "dns.listen: port {proxy_port} is the proxy's; choose another"
            ));
        }
        if self.queries_per_sec == 0 || self.burst == 0 {
            return Err("dns.queries_per_sec and dns.burst must be at least 1".into());
        }
        if !(2..=127).contains(&self.max_labels) {
            return Err("dns.max_labels must be between 2 and 127".into());
        }
        if !(64..=65535).contains(&self.max_query_bytes) {
            return Err("dns.max_query_bytes must be between 64 and 65535".into());
        }
        if let Some(u) = self.upstreams.iter().find(|u| u.port() == 0) {
            return Err(format!("dns.upstreams: {u} has no port"));
        }
        Ok(())
    }
}

//! Which configured target lives at an original destination: by the
//! address itself, or by a name the agent learned for it from blastgate's
//! resolver (`hosts`).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::TargetConfig,
    egress::pattern::{Host, HostPattern},
    protocols::Target,
};

/// Original destination -> target. Unknown destinations have no entry and
/// are denied.
#[derive(Debug, Default)]
pub struct Routes {
    by_addr: HashMap<SocketAddr, Arc<Target>>,
    /// `hosts` entries, in config order: the first match wins.
    by_host: Vec<(HostPattern, Arc<Target>)>,
}

/// `::ffff:a.b.c.d` and `a.b.c.d` are the same destination.
pub fn normalise(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

impl Routes {
    pub fn build(targets: &[TargetConfig]) -> Result<Routes, String> {
        let mut by_addr = HashMap::new();
        let mut by_host = Vec::new();
        for t in targets {
            let upstream = match &t.upstream {
                Some(u) => Some(
                    std::net::ToSocketAddrs::to_socket_addrs(u)
                        .map_err(|e| format!("target {}: upstream {u:?}: {e}", t.name))?
                        .next()
                        .ok_or_else(|| {
                            format!("target {}: upstream {u:?} resolves to nothing", t.name)
                        })?,
                ),
                None => None,
            };
            let resolved = t.resolve()?;
            let hosts = t.host_patterns()?;
            let exact_hosts = hosts.iter().filter_map(|h| match &h.host {
                Host::Exact(n) => Some(n.clone()),
                _ => None,
            });
            let names = if !t.hostnames.is_empty() {
                t.hostnames.clone()
            } else {
                let mut ips: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
                ips.dedup();
                ips.extend(exact_hosts);
                ips
            };
            let target = Arc::new(Target {
                name: t.name.clone(),
                protocol: t.protocol,
                upstream,
                attrs: t.attrs(),
                enforce: t.enforce,
                names,
                host_names: hosts
                    .iter()
                    .filter(|h| !matches!(h.host, Host::Cidr { .. }))
                    .cloned()
                    .collect(),
                postgres: t.postgres.clone(),
                ssh: t.ssh.clone(),
                http: t.http.clone(),
            });
            by_host.extend(hosts.into_iter().map(|h| (h, target.clone())));
            for addr in resolved {
                let addr = normalise(addr);
                if let Some(other) = by_addr.insert(addr, target.clone()) {
                    return Err(format!(
                        "targets {} and {} both claim {addr}",
                        other.name, t.name
                    ));
                }
            }
        }
        Ok(Routes { by_addr, by_host })
    }

    /// The target at this very address (literal `address`/`addresses`).
    pub fn lookup(&self, orig: SocketAddr) -> Option<Arc<Target>> {
        self.by_addr.get(&normalise(orig)).cloned()
    }

    /// The target a `hosts` entry makes of `orig`: by a range holding the
    /// address, or by one of `names`, the names the agent learned for the
    /// address. Returns the name it matched by.
    pub fn lookup_by_host(
        &self,
        orig: SocketAddr,
        names: &[Arc<str>],
    ) -> Option<(Arc<Target>, Option<Arc<str>>)> {
        let orig = normalise(orig);
        self.by_host.iter().find_map(|(p, t)| {
            if !p.matches_port(orig.port()) {
                return None;
            }
            if p.matches_addr(orig.ip()) {
                return Some((t.clone(), None));
            }
            let name = names.iter().find(|n| p.matches_name(n))?;
            Some((t.clone(), Some(name.clone())))
        })
    }

    /// The target whose `hosts` name `name` on `port`: a name that
    /// belongs to a target is never reached as egress.
    pub fn target_named(&self, name: &str, port: u16) -> Option<&str> {
        self.by_host
            .iter()
            .find(|(p, _)| p.matches_port(port) && p.matches_name(name))
            .map(|(_, t)| t.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_addr.len() + self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty() && self.by_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn target(name: &str, addrs: &[&str]) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            protocol: Protocol::Tcp,
            address: None,
            hosts: Vec::new(),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            upstream: None,
            credentials: None,
            labels: Default::default(),
            enforce: true,
            hostnames: Vec::new(),
            postgres: None,
            ssh: None,
            http: None,
        }
    }

    #[test]
    fn v4_mapped_destinations_find_v4_targets() {
        let r = Routes::build(&[target("db", &["127.0.0.2:5432", "[::1]:5432"])]).unwrap();
        assert_eq!(
            r.lookup("127.0.0.2:5432".parse().unwrap()).unwrap().name,
            "db"
        );
        assert_eq!(
            r.lookup("[::ffff:127.0.0.2]:5432".parse().unwrap())
                .unwrap()
                .name,
            "db"
        );
        assert_eq!(r.lookup("[::1]:5432".parse().unwrap()).unwrap().name, "db");
        assert!(r.lookup("127.0.0.2:5433".parse().unwrap()).is_none());
    }

    #[test]
    fn two_targets_cannot_share_an_address() {
        let e = Routes::build(&[target("a", &["127.0.0.2:1"]), target("b", &["127.0.0.2:1"])])
            .unwrap_err();
        assert!(e.contains("both claim"), "{e}");
    }
}

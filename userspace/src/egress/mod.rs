//! Destinations by name: which names agents may resolve, which target a
//! connection reaches by the name it was learned from, and the allow-list
//! for everything that is not a gateway target.

pub mod pattern;
pub mod suggest;

use std::net::SocketAddr;

use crate::config::{Config, EgressMode};
use pattern::HostPattern;

/// The `[egress]` section, parsed.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    pub mode: EgressMode,
    pub allow: Vec<HostPattern>,
}

impl Egress {
    pub fn from_config(config: &Config) -> Result<Egress, String> {
        Ok(Egress {
            mode: config.egress.mode,
            allow: config.egress.patterns()?,
        })
    }

    /// The allow-list entry that lets `name` (normalised) reach `dst`, if
    /// any: by name and port, or by the address's range and port.
    pub fn allows(&self, name: Option<&str>, dst: SocketAddr) -> Option<&HostPattern> {
        self.allow.iter().find(|p| {
            p.matches_port(dst.port())
                && (name.is_some_and(|n| p.matches_name(n)) || p.matches_addr(dst.ip()))
        })
    }
}

/// Cloud instance metadata services outside link-local space: they hand
/// out the runner's own credentials. AWS's IPv6 endpoint, Google Cloud's
/// IPv6 one, Alibaba Cloud's, and Azure's wire server.
const METADATA: &[std::net::IpAddr] = &[
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
];

/// Addresses egress never reaches, whatever name led there: loopback,
/// link-local (where most cloud metadata lives: 169.254.169.254),
/// unspecified, multicast and broadcast, and the [`METADATA`] services
/// elsewhere.
pub fn special_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = pattern::canonical(ip);
    if METADATA.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Every name an agent may resolve: the allow-list's and the targets'
/// (`hosts`, `hostnames` and names in `address`/`addresses`).
pub fn resolvable_names(config: &Config) -> Result<Vec<HostPattern>, String> {
    let mut out: Vec<HostPattern> = config
        .egress
        .patterns()?
        .into_iter()
        .filter(HostPattern::is_name)
        .collect();
    for t in &config.targets {
        out.extend(t.host_patterns()?.into_iter().filter(HostPattern::is_name));
        let named = t.hostnames.iter().map(String::as_str).chain(
            t.address.iter().chain(&t.addresses).filter_map(|a| {
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                host.parse::<std::net::IpAddr>().is_err().then_some(host)
            }),
        );
        for n in named {
            if let Ok(p) = HostPattern::parse(n) {
                if p.is_name() {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// The exact names of the targets' `hosts` entries, which the daemon
/// resolves itself.
pub fn target_names(config: &Config) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for t in &config.targets {
        for p in t.host_patterns()? {
            if let pattern::Host::Exact(n) = p.host {
                out.push(n);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod red_team_tests {
    use super::*;

    /// Red team: `special_address` is the DNS-rebinding guard for "cloud
    /// metadata", but knows only link-local (169.254.0.0/16) and
    /// fd00:ec2::254. Alibaba Cloud's metadata service lives at
    /// 100.100.100.200 (carrier-grade NAT space): an allowed name whose
    /// answer an agent controls (any `*.suffix` entry over a zone with
    /// user subdomains) reaches it as plain egress.
    /// Google Cloud's metadata server on IPv6-only and dual-stack
    /// instances answers at fd20:ce::254 (unique-local, like AWS's
    /// fd00:ec2::254, which is the only one named).
    #[test]
    fn red_team_alibaba_metadata_is_not_special() {
        for (ip, whose) in [
            ("100.100.100.200", "Alibaba Cloud"),
            ("fd20:ce::254", "Google Cloud (IPv6)"),
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert!(
                special_address(ip),
                "{ip} ({whose} instance metadata) is reachable as egress"
            );
        }
        // Look-alikes that must stay reachable / special as they are.
        assert!(special_address("169.254.169.254".parse().unwrap()));
        assert!(special_address("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!special_address("93.184.215.14".parse().unwrap()));
    }
}

//! Destinations by name: `host:port`, `*.suffix:port` and `cidr:port`, as
//! `[egress] allow` and a target's `hosts` write them.
//!
//! Names compare as DNS does: ASCII case-insensitive, without the root dot.
//! `*.example.com` matches every name below `example.com` (any depth), not
//! `example.com` itself. A pattern without a port matches no connection
//! (only lookups): ports are required where connections are decided, so a
//! name allowed for HTTPS does not open SSH to it.

use std::{fmt, net::IpAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Below(String),
    Cidr {
        net: IpAddr,
        prefix: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub host: Host,
    pub port: Option<u16>,
    text: String,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A name as compared: lowercase, no trailing dot.
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1–63 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| Err(format!("{text:?}: {why}"));
        let (host, port) = split_port(text)?;
        let host = if let Some((net, prefix)) = host.split_once('/') {
            let net: IpAddr = match net.trim_start_matches('[').trim_end_matches(']').parse() {
                Ok(n) => n,
                Err(_) => return bad("not an address before the /"),
            };
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = match prefix.parse() {
                Ok(p) if p <= max => p,
                _ => return bad("the prefix length is out of range"),
            };
            Host::Cidr { net, prefix }
        } else if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Host::Cidr {
                net: ip,
                prefix: if ip.is_ipv4() { 32 } else { 128 },
            }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = normalise_name(suffix);
            if !valid_name(&suffix) || !suffix.contains('.') {
                return bad("`*.` needs a name of at least two labels after it");
            }
            Host::Below(format!(".{suffix}"))
        } else {
            let name = normalise_name(host);
            if !valid_name(&name) {
                return bad("not a host name, `*.name`, address or CIDR range");
            }
            Host::Exact(name)
        };
        Ok(HostPattern {
            host,
            port,
            text: text.to_string(),
        })
    }

    /// Whether a (normalised) name matches, whatever the port.
    pub fn matches_name(&self, name: &str) -> bool {
        match &self.host {
            Host::Exact(n) => n == name,
            Host::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            Host::Cidr { .. } => false,
        }
    }

    pub fn matches_addr(&self, ip: IpAddr) -> bool {
        let Host::Cidr { net, prefix } = self.host else {
            return false;
        };
        let ip = canonical(ip);
        match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => masked(u32::from(n), u32::from(a), prefix, 32),
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(u128::from(n), u128::from(a), prefix, 128),
            _ => false,
        }
    }

    pub fn matches_port(&self, port: u16) -> bool {
        self.port == Some(port)
    }

    pub fn is_name(&self) -> bool {
        !matches!(self.host, Host::Cidr { .. })
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked<T>(net: T, addr: T, prefix: u8, bits: u8) -> bool
where
    T: Copy + std::ops::Shr<u32, Output = T> + PartialEq,
{
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    net >> shift == addr >> shift
}

/// Splits `host:port`, `[v6]:port`, `v6/len` (no port: a colon inside an
/// IPv6 address is not a port separator unless bracketed) and `host`.
fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: {p:?} is not a port"))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("{text:?}: `[` without `]`"));
        };
        let (addr_len, tail) = match after.split_once(':') {
            Some((extra, p)) => (extra, Some(port(p)?)),
            None => (after, None),
        };
        // `[v6]/len:port` keeps the prefix with the address.
        let end = 1 + inside.len() + 1 + addr_len.len();
        return Ok((&text[..end], tail));
    }
    match text.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((host, Some(port(p)?))),
        _ => Ok((text, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn names_match_case_insensitively_and_wildcards_only_below() {
        let w = p("*.Example.com:443");
        assert!(w.matches_name("api.example.com"));
        assert!(w.matches_name("a.b.example.com"));
        assert!(!w.matches_name("example.com"));
        assert!(!w.matches_name("badexample.com"));
        assert!(w.matches_port(443) && !w.matches_port(80));
        let e = p("GitHub.com.:443");
        assert!(e.matches_name("github.com"));
        assert!(!e.matches_name("api.github.com"));
    }

    #[test]
    fn ranges_and_literal_addresses() {
        let r = p("10.0.0.0/8:5432");
        assert!(r.matches_addr("10.1.2.3".parse().unwrap()));
        assert!(r.matches_addr("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.matches_addr("11.0.0.1".parse().unwrap()));
        assert!(!r.matches_name("10.1.2.3"));
        let v6 = p("[fd00::]/8:443");
        assert!(v6.matches_addr("fd12::1".parse().unwrap()));
        assert_eq!(v6.port, Some(443));
        let one = p("[::1]:80");
        assert!(one.matches_addr("::1".parse().unwrap()));
        assert!(p("0.0.0.0/0:1").matches_addr("8.8.8.8".parse().unwrap()));
        assert_eq!(p("example.com").port, None);
    }

    #[test]
    fn malformed_patterns_say_why() {
        for bad in [
            "*.com:443",
            "exa mple.com:443",
            "a..b:1",
            "host:0",
            "host:99999",
            "10.0.0.0/33:1",
            "[::1:80",
            "*:443",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}

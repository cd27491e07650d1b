//! The resolvers blastgate forwards to, and the forwarding itself.
//!
//! The agent's query goes on as it was sent (flags, EDNS and all), so the
//! answer is the one the upstream gives; blastgate reads it to learn the
//! addresses and passes it back unchanged. Over UDP a truncated answer is
//! passed back truncated: the agent retries over TCP, which reaches the
//! resolver through the proxy and is forwarded over TCP.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

/// How long one upstream gets to answer before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message over TCP (its length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream resolver answered ({0})")]
    NoAnswer(String),
}

/// `dns.upstreams`, or the host's resolvers: /etc/resolv.conf, and when
/// that names systemd-resolved's stub (127.0.0.53), the upstreams it uses.
pub fn host_resolvers() -> Vec<SocketAddr> {
    let from = |p: &str| {
        std::fs::read_to_string(Path::new(p))
            .map(|t| nameservers(&t))
            .unwrap_or_default()
    };
    let main = from("/etc/resolv.conf");
    let stub = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
    if main.iter().any(|a| a.ip() == stub) {
        let real = from("/run/systemd/resolve/resolv.conf");
        if !real.is_empty() {
            return real;
        }
    }
    main
}

fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            // `fe80::1%eth0` scopes are not kept: link-local resolvers are
            // named in dns.upstreams instead.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Sends `query` to each upstream in turn until one answers with the same
/// id; over TCP when `tcp`.
pub async fn forward(
    upstreams: &[SocketAddr],
    query: &[u8],
    tcp: bool,
) -> Result<Vec<u8>, UpstreamError> {
    let mut failures = Vec::new();
    for &up in upstreams {
        let attempt = async {
            if tcp {
                over_tcp(up, query).await
            } else {
                over_udp(up, query).await
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => failures.push(format!("{up}: {e}")),
            Err(_) => failures.push(format!("{up}: timed out")),
        }
    }
    if failures.is_empty() {
        failures.push("none configured".into());
    }
    Err(UpstreamError::NoAnswer(failures.join("; ")))
}

async fn over_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A fresh socket (random port) per query, connected: only the upstream
    // can answer it.
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = sock.recv(&mut buf).await?;
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    read_framed(&mut s)
        .await?
        .ok_or_else(|| std::io::Error::other("closed before answering"))
}

/// One length-prefixed DNS message from a TCP stream; `None` at a clean
/// end before its first byte. The length prefix bounds the read.
pub async fn read_framed<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let t = "# c\nnameserver 10.255.255.53\nsearch x\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            nameservers(t),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}

//! Egress passthrough: a connection to an allowed name that is not a
//! gateway target, passed on without terminating TLS.
//!
//! What is checked is what the server will act on: the name in the TLS
//! ClientHello (SNI), or the Host of a plain HTTP request. It must be a
//! name the allow-list names for this port *and* one the agent resolved,
//! through blastgate, to this very address. Domain fronting (an allowed
//! address, another SNI), a missing SNI, or an address the agent never
//! resolved are refused; so is anything that is neither TLS nor HTTP.
//! Once the opening is read, the bytes go on untouched, opening included.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{gateway::Gateway, phases::Phases, relay::relay};
use crate::{
    config::EgressMode,
    egress::{pattern::normalise_name, Egress},
    records::{EventKind, Verdict},
    session::SessionError,
};

/// The most of an opening read to find its name: a ClientHello with
/// post-quantum key shares is a few KiB; HTTP request headers the same.
const MAX_OPENING: usize = 16 << 10;

pub struct EgressPassthrough {
    pub rules: Arc<Egress>,
    /// The targets: a name one of them claims is reached through its
    /// gateway, never as egress.
    pub routes: Arc<crate::proxy::targets::Routes>,
    /// The names the agent learned for the address it dialled.
    pub learned: Vec<Arc<str>>,
    /// An allow entry names the address's range: no name is needed, and
    /// the bytes are not read (a server may speak first).
    pub by_range: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub name: String,
    /// "TLS server name (SNI)" or "HTTP Host".
    pub by: &'static str,
    /// Plain HTTP: the one request passed on. Every request of a plain
    /// connection names its own Host, and only the first was read, so the
    /// connection carries that request alone (`Connection: close`).
    pub one_request: Option<OneRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneRequest {
    /// The request head as sent upstream: the agent's, with its
    /// hop-by-hop headers (Connection, Upgrade, …) replaced by
    /// `Connection: close`.
    pub head: Vec<u8>,
    /// The body bytes read with the head, and how many are still to come
    /// (Content-Length).
    pub body_read: Vec<u8>,
    pub body_left: u64,
}

pub struct Opened {
    conn: TcpStream,
    opening: Vec<u8>,
    /// The name the opening asks the server for, and where it says so.
    claimed: Result<Claim, String>,
}

impl Phases for EgressPassthrough {
    type Agent = Opened;
    type Upstream = TcpStream;

    async fn handshake(&self, mut conn: TcpStream, gw: &Gateway) -> Result<Opened, SessionError> {
        let _ = conn.set_nodelay(true);
        if self.by_range {
            return Ok(Opened {
                conn,
                opening: Vec::new(),
                claimed: Err("not read: an egress.allow range names the address".into()),
            });
        }
        let mut opening = Vec::with_capacity(2048);
        let limit = gw.services.connect_timeout.max(Duration::from_millis(500));
        let claimed = tokio::time::timeout(limit, read_name(&mut conn, &mut opening))
            .await
            .unwrap_or_else(|_| {
                Err(if opening.is_empty() {
                    "the agent sent nothing to read a name from (a protocol where the server \
                     speaks first needs a `tcp` target)"
                        .into()
                } else {
                    "the opening was not complete in time".into()
                })
            });
        Ok(Opened {
            conn,
            opening,
            claimed,
        })
    }

    async fn connect(&self, agent: &mut Opened, gw: &Gateway) -> Result<TcpStream, SessionError> {
        let dst = gw.upstream;
        tracing::debug!(claimed = ?agent.claimed, %dst, "egress opening read");
        if self.by_range {
            // Allowed by address: nothing to check.
        } else if let Err(why) = self.check(&agent.claimed, dst) {
            if self.rules.mode == EgressMode::Enforce {
                return Err(SessionError::policy(format!("egress refused: {why}")));
            }
            let mut e = gw.event(EventKind::Request, Verdict::Allow);
            e.action = Some(crate::egress::suggest::AUDITED.into());
            e.shadow = true;
            e.reason = Some(format!("would be refused: {why}"));
            e.dst_name = agent.claimed.as_ref().ok().map(|c| c.name.clone());
            gw.record(e).await;
        }
        let up = tokio::time::timeout(gw.services.connect_timeout, TcpStream::connect(dst))
            .await
            .map_err(|_| SessionError::upstream(format!("connecting to {dst}: timed out")))?
            .map_err(|e| SessionError::upstream(format!("connecting to {dst}: {e}")))?;
        let _ = up.set_nodelay(true);
        tracing::debug!(%dst, "egress upstream connected");
        Ok(up)
    }

    async fn relay(
        &self,
        agent: Opened,
        mut upstream: TcpStream,
        gw: &Gateway,
    ) -> Result<(), SessionError> {
        if let Some(one) = agent
            .claimed
            .as_ref()
            .ok()
            .and_then(|c| c.one_request.clone())
        {
            return tokio::select! {
                r = one_request(agent.conn, upstream, one, gw) => r,
                _ = gw.tasks.cancelled() => Err(gw.tasks.why()),
            };
        }
        upstream
            .write_all(&agent.opening)
            .await
            .map_err(|e| SessionError::upstream(format!("writing to {}: {e}", gw.upstream)))?;
        gw.counters.add_from_agent(agent.opening.len() as u64);
        tokio::select! {
            r = relay(&agent.conn, &upstream, &gw.counters) => r,
            _ = gw.tasks.cancelled() => Err(gw.tasks.why()),
        }
    }

    async fn refuse(&self, agent: Opened, _why: &SessionError, _gw: &Gateway) {
        // Neither TLS nor HTTP can be answered without being the server:
        // the connection is closed.
        drop(agent);
    }
}

/// Plain HTTP: the one request, then the answer until the server closes.
/// Nothing more the agent sends is read.
async fn one_request(
    mut agent: TcpStream,
    mut upstream: TcpStream,
    one: OneRequest,
    gw: &Gateway,
) -> Result<(), SessionError> {
    let up = |e: std::io::Error| SessionError::upstream(format!("{}: {e}", gw.upstream));
    let ag = |e: std::io::Error| SessionError::agent(format!("the agent: {e}"));
    upstream.write_all(&one.head).await.map_err(up)?;
    upstream.write_all(&one.body_read).await.map_err(up)?;
    let (mut from_agent, _) = agent.split();
    let mut body = (&mut from_agent).take(one.body_left);
    let sent = tokio::io::copy(&mut body, &mut upstream)
        .await
        .map_err(ag)?;
    if sent < one.body_left {
        return Err(SessionError::agent(
            "the agent closed before its request body ended",
        ));
    }
    gw.counters
        .add_from_agent((one.head.len() + one.body_read.len()) as u64 + sent);
    let answered = tokio::io::copy(&mut upstream, &mut agent)
        .await
        .map_err(up)?;
    gw.counters.add_to_agent(answered);
    let _ = agent.shutdown().await;
    Ok(())
}

impl EgressPassthrough {
    /// Why the claimed name may not reach `dst`, if it may not.
    fn check(&self, claimed: &Result<Claim, String>, dst: SocketAddr) -> Result<(), String> {
        let Claim { name, by, .. } = claimed.clone()?;
        if let Some(target) = self.routes.target_named(&name, dst.port()) {
            return Err(format!(
                "the {by} {name} belongs to target {target}: it is reached through its gateway"
            ));
        }
        if !self.learned.iter().any(|n| **n == *name) {
            return Err(format!(
                "the {by} {name} was never resolved through blastgate to {} (names learned for \
                 it: {})",
                dst.ip(),
                if self.learned.is_empty() {
                    "none".to_string()
                } else {
                    self.learned.join(", ")
                }
            ));
        }
        match self.rules.allows(Some(&name), dst) {
            Some(p) if p.matches_name(&name) => Ok(()),
            _ => Err(format!(
                "no egress.allow entry names the {by} {name} on port {}",
                dst.port()
            )),
        }
    }
}

/// Reads until the opening names its server: the SNI of a TLS
/// ClientHello, the Host of an HTTP request.
async fn read_name(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Claim, String> {
    loop {
        match name_in(buf) {
            Some(r) => return r,
            None if buf.len() >= MAX_OPENING => {
                return Err(format!("no name in the first {MAX_OPENING} bytes"))
            }
            None => {}
        }
        let mut chunk = [0u8; 4096];
        let room = (MAX_OPENING - buf.len()).min(chunk.len());
        let n = conn
            .read(&mut chunk[..room])
            .await
            .map_err(|e| format!("reading the opening: {e}"))?;
        if n == 0 {
            return Err("the agent closed before naming a server".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The name an opening asks for; `None` while more bytes are needed.
fn name_in(buf: &[u8]) -> Option<Result<Claim, String>> {
    let first = *buf.first()?;
    if first == 0x16 {
        return tls_server_name(buf).map(|r| {
            r.map(|name| Claim {
                name,
                by: "TLS server name (SNI)",
                one_request: None,
            })
        });
    }
    if first.is_ascii_uppercase() {
        return http_host(buf).map(|r| {
            r.map(|(name, one)| Claim {
                name,
                by: "HTTP Host",
                one_request: Some(one),
            })
        });
    }
    Some(Err("neither TLS nor HTTP".into()))
}

fn tls_server_name(buf: &[u8]) -> Option<Result<String, String>> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut cursor = std::io::Cursor::new(buf);
    // Fed whole each time: the opening is small and this runs once per
    // chunk read.
    while (cursor.position() as usize) < buf.len() {
        if acceptor.read_tls(&mut cursor).is_err() {
            return Some(Err("a malformed TLS record".into()));
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => {
            // Encrypted Client Hello: the SNI read here is only the outer,
            // public name; the server acts on the encrypted one.
            match extensions(buf) {
                Some(exts) if exts.contains(&ECH) => {
                    return Some(Err(
                        "an Encrypted Client Hello: the server name it asks for is hidden".into(),
                    ))
                }
                Some(_) => {}
                None => return Some(Err("a ClientHello whose extensions cannot be read".into())),
            }
            Some(
                accepted
                    .client_hello()
                    .server_name()
                    .map(normalise_name)
                    .ok_or_else(|| "a TLS ClientHello without a server name (SNI)".to_string()),
            )
        }
        Err((e, _)) => Some(Err(format!("not a TLS ClientHello: {e}"))),
    }
}

/// The `encrypted_client_hello` extension (draft-ietf-tls-esni).
const ECH: u16 = 0xfe0d;

/// The extension types of the ClientHello in `buf` (TLS records, the
/// handshake message possibly spread over several), or `None` when it
/// cannot be read to the end.
fn extensions(buf: &[u8]) -> Option<Vec<u16>> {
    let mut hs = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 && rest[0] == 0x16 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let body = rest.get(5..5 + len)?;
        hs.extend_from_slice(body);
        rest = &rest[5 + len..];
    }
    // Handshake header: type 1 (ClientHello), 24-bit length.
    let (&kind, after) = hs.split_first()?;
    if kind != 1 {
        return None;
    }
    let len = usize::from(*after.first()?) << 16
        | usize::from(*after.get(1)?) << 8
        | usize::from(*after.get(2)?);
    let mut m = after.get(3..3 + len)?;
    let take = |m: &mut &[u8], n: usize| -> Option<()> {
        *m = m.get(n..)?;
        Some(())
    };
    // version, random
    take(&mut m, 2 + 32)?;
    let sid = usize::from(*m.first()?);
    take(&mut m, 1 + sid)?;
    let suites = usize::from(u16::from_be_bytes([*m.first()?, *m.get(1)?]));
    take(&mut m, 2 + suites)?;
    let comp = usize::from(*m.first()?);
    take(&mut m, 1 + comp)?;
    let total = usize::from(u16::from_be_bytes([*m.first()?, *m.get(1)?]));
    let mut e = m.get(2..2 + total)?;
    let mut out = Vec::new();
    while !e.is_empty() {
        let ty = u16::from_be_bytes([*e.first()?, *e.get(1)?]);
        let l = usize::from(u16::from_be_bytes([*e.get(2)?, *e.get(3)?]));
        out.push(ty);
        e = e.get(4 + l..)?;
    }
    Some(out)
}

/// Headers that concern one connection, not the request: dropped, and
/// `Connection: close` sent instead (no keep-alive, no upgrade, no h2c).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "http2-settings",
];

fn http_host(buf: &[u8]) -> Option<Result<(String, OneRequest), String>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(e) => Some(Err(format!("not an HTTP request: {e}"))),
        Ok(httparse::Status::Complete(head_len)) => {
            // CONNECT asks the server to tunnel elsewhere: a forward proxy
            // at an allowed address would be an open door.
            if req
                .method
                .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
            {
                return Some(Err("an HTTP CONNECT (a tunnel to elsewhere)".into()));
            }
            // An absolute-form target names the server, and servers then
            // ignore Host (RFC 9112, 3.2.2): it is the name checked, and
            // Host must agree with it.
            let target_host = req.path.and_then(absolute_form_host);
            let hosts: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value)
                .collect();
            // Two Hosts are two answers to "which server": refused, as
            // RFC 9112 asks servers to.
            let [host] = hosts.as_slice() else {
                return Some(Err(format!("{} Host headers", hosts.len())));
            };
            let Ok(host) = std::str::from_utf8(host) else {
                return Some(Err("a Host that is not text".into()));
            };
            let host = host.trim();
            let name = normalise_name(strip_port(host));
            if let Some(t) = target_host {
                if normalise_name(strip_port(t)) != name {
                    return Some(Err(format!(
                        "the request line names {t}, the Host header {host}"
                    )));
                }
            }
            Some(one_request_of(&req, &buf[head_len..]).map(|one| (name, one)))
        }
    }
}

/// The request as it is passed on, or why it cannot be: its body must be
/// delimited by Content-Length (a chunked body's end is not read), and
/// nothing may follow it (a pipelined second request).
fn one_request_of(
    req: &httparse::Request<'_, '_>,
    after_head: &[u8],
) -> Result<OneRequest, String> {
    let mut length: Option<u64> = None;
    let mut head = Vec::with_capacity(512);
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err("an incomplete request line".into());
    };
    head.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "transfer-encoding" {
            return Err("a request body with Transfer-Encoding (its end is not read)".into());
        }
        if name == "content-length" {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("a Content-Length that is not a number")?;
            if length.is_some_and(|l| l != n) {
                return Err("two Content-Lengths".into());
            }
            length = Some(n);
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let length = length.unwrap_or(0);
    if after_head.len() as u64 > length {
        return Err("more than one request on the connection (pipelined)".into());
    }
    Ok(OneRequest {
        head,
        body_read: after_head.to_vec(),
        body_left: length - after_head.len() as u64,
    })
}

/// `host[:port]` without the port.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The authority of an absolute-form request target (`scheme://host/…`),
/// without userinfo.
fn absolute_form_host(target: &str) -> Option<&str> {
    let (_, rest) = target.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_openings_name_their_host_once() {
        let ok = name_in(b"GET / HTTP/1.1\r\nHost: Allowed.Test:8080\r\n\r\n");
        assert_eq!(ok.unwrap().unwrap().name, "allowed.test");
        assert_eq!(name_in(b"GET / HTTP/1.1\r\nHost: a"), None);
        let two = name_in(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n");
        assert!(matches!(two, Some(Err(_))), "{two:?}");
        assert!(matches!(name_in(b"GET / HTTP/1.1\r\n\r\n"), Some(Err(_))));
        assert!(matches!(name_in(b"\x00\x01"), Some(Err(_))));
    }

    #[test]
    fn tls_openings_name_their_sni() {
        let hello = client_hello("allowed.test");
        assert_eq!(name_in(&hello).unwrap().unwrap().name, "allowed.test");
        assert_eq!(name_in(&hello[..hello.len() / 2]), None);
        let exts = extensions(&hello).unwrap();
        assert!(exts.contains(&0), "server_name: {exts:?}");
    }

    #[test]
    fn an_encrypted_client_hello_is_refused() {
        // The same ClientHello with one more extension of ECH's type,
        // lengths fixed up.
        let mut hello = client_hello("public.test");
        // type outer, HKDF-SHA256, AES-128-GCM, config 0, no enc, one
        // byte of payload.
        let ech = [
            0xfe, 0x0d, 0x00, 0x0b, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01,
            0xaa,
        ];
        let exts_at = extensions_offset(&hello);
        hello.splice(exts_at + 2..exts_at + 2, ech);
        for (at, width) in [(3usize, 2usize), (6, 3), (exts_at, 2)] {
            let mut v = 0usize;
            for i in 0..width {
                v = v << 8 | usize::from(hello[at + i]);
            }
            v += ech.len();
            for i in 0..width {
                hello[at + i] = (v >> (8 * (width - 1 - i))) as u8;
            }
        }
        let got = name_in(&hello);
        assert!(
            matches!(&got, Some(Err(e)) if e.contains("Encrypted Client Hello")),
            "{got:?}"
        );
    }

    /// Red team: a request line in absolute form (or CONNECT's authority
    /// form) names the server the request is for, and RFC 9112 section
    /// 3.2.2 tells an origin server to ignore Host then (nginx, Apache,
    /// any forward proxy do). The passthrough checks only Host, so an
    /// allowed Host rides along with a denied target.
    #[test]
    fn red_team_absolute_form_request_target_outranks_host() {
        let absolute = name_in(b"GET http://denied.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
        assert!(
            !matches!(&absolute, Some(Ok(c)) if c.name == "allowed.test"),
            "absolute form naming denied.test passed as allowed.test: {absolute:?}"
        );
        let connect =
            name_in(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n");
        assert!(
            !matches!(&connect, Some(Ok(c)) if c.name == "allowed.test"),
            "CONNECT to denied.test passed as allowed.test: {connect:?}"
        );
        // Look-alike that must keep working: origin form, and an absolute
        // form naming the same host as Host.
        let origin = name_in(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
        assert_eq!(origin.unwrap().unwrap().name, "allowed.test");
    }

    /// Where the extensions' length field sits in a one-record ClientHello.
    fn extensions_offset(h: &[u8]) -> usize {
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(h[at]);
        at += 2 + usize::from(u16::from_be_bytes([h[at], h[at + 1]]));
        at += 1 + usize::from(h[at]);
        at
    }

    /// A real ClientHello, from rustls's client.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }
}

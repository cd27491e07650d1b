//! The credential blastgate injects never reaches the agent, whatever the
//! upstream does with it. An upstream that echoes requests (TRACE, debug
//! and "request inspector" endpoints, error pages quoting headers) would
//! otherwise hand the agent the very secret the gateway exists to hold,
//! in a body of any type: JSON, HTML, an octet stream.
//!
//! So every byte on its way to the agent is checked, not just the bodies
//! masking reads: response headers and trailers, bodies of every content
//! type, upgraded tunnels. The secret is searched for as sent and in the
//! encodings an echo is likely to use (base64 at every alignment,
//! percent-, JSON-, HTML-escaped, hex); each occurrence is overwritten
//! with `*` of the same length, so lengths and framing stay valid.
//! Compressed bodies are unpacked first; one that cannot be is refused.

use std::{
    pin::Pin,
    sync::{atomic::Ordering, Arc, Mutex},
    task::{Context, Poll},
};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame};

use super::{lines::Tally, upstream::Body};

/// Shorter derived forms match too much ordinary text to be worth it; the
/// secret itself is always searched for, however short.
const MIN_DERIVED: usize = 8;

/// Guards kept for reuse across connections (one per set of secrets a
/// target injects, so a handful in practice).
const SHARED_GUARDS: usize = 64;

/// The byte strings that must not reach the agent, for one set of secrets.
pub struct Guard {
    finder: AhoCorasick,
    /// Longest needle: how much of a stream's tail may be the start of one.
    longest: usize,
    /// The needles: a chunk ending in a proper prefix of one is held back
    /// until the next chunk says whether the needle follows.
    needles: Vec<Vec<u8>>,
    /// Bytes some needle starts with: most positions of a tail are ruled
    /// out by one lookup.
    starts: [bool; 256],
    secrets: Vec<(String, String)>,
}

impl Guard {
    /// A guard for `secrets` (the injected header values, prefix and all);
    /// `None` when there is nothing to guard.
    pub fn new(secrets: &[(String, String)]) -> Option<Guard> {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for (prefix, secret) in secrets {
            let full = format!("{prefix}{secret}");
            for s in [full.as_str(), secret.as_str()] {
                if s.is_empty() {
                    continue;
                }
                needles.push(s.as_bytes().to_vec());
                needles.extend(derived(s.as_bytes()));
            }
            // `Basic dXNlcjpwYXNz` is echoed decoded as often as not.
            // Request inspectors show it parsed: the password on its own.
            if prefix.trim().eq_ignore_ascii_case("basic") {
                if let Ok(plain) = base64::engine::general_purpose::STANDARD.decode(secret.trim()) {
                    let password = plain
                        .iter()
                        .position(|b| *b == b':')
                        .map(|i| plain[i + 1..].to_vec());
                    for p in [Some(plain), password].into_iter().flatten() {
                        if !p.is_empty() {
                            needles.extend(derived(&p));
                            needles.push(p);
                        }
                    }
                }
            }
        }
        needles.retain(|n| !n.is_empty());
        needles.sort();
        needles.dedup();
        if needles.is_empty() {
            return None;
        }
        let longest = needles.iter().map(Vec::len).max().unwrap_or(0);
        let mut starts = [false; 256];
        for n in &needles {
            if let Some(&b) = n.first() {
                starts[usize::from(b)] = true;
            }
        }
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&needles)
            .ok()?;
        Some(Guard {
            finder,
            longest,
            needles,
            starts,
            secrets: secrets.to_vec(),
        })
    }

    /// The guard for `secrets`, shared by every connection that injects
    /// the same values: building one (an Aho-Corasick automaton over some
    /// thirty encodings of each secret) costs more than the request it
    /// guards, and clients that open a connection per request paid it
    /// every time. A rotated secret gets a new guard; the oldest of
    /// [`SHARED_GUARDS`] is forgotten.
    pub fn shared(secrets: &[(String, String)]) -> Option<Arc<Guard>> {
        static SHARED: Mutex<Vec<Arc<Guard>>> = Mutex::new(Vec::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = shared.iter().find(|g| g.is_for(secrets)) {
            return Some(g.clone());
        }
        let fresh = Arc::new(Guard::new(secrets)?);
        if shared.len() >= SHARED_GUARDS {
            shared.remove(0);
        }
        shared.push(fresh.clone());
        Some(fresh)
    }

    /// Whether this guard was built for exactly these values (secrets are
    /// read at each request, so a rotation makes a new guard).
    pub fn is_for(&self, secrets: &[(String, String)]) -> bool {
        self.secrets == secrets
    }

    /// Overwrites every occurrence in `buf`; returns how many there were.
    pub fn scrub(&self, buf: &mut [u8]) -> u64 {
        let spans: Vec<(usize, usize)> = self
            .finder
            .find_iter(&*buf)
            .map(|m| (m.start(), m.end()))
            .collect();
        for &(start, end) in &spans {
            buf[start..end].fill(b'*');
        }
        spans.len() as u64
    }

    /// How many bytes at the end of `buf` could be the start of a needle
    /// and must wait for the next chunk before they are sent (the longest
    /// such tail).
    pub fn partial_tail(&self, buf: &[u8]) -> usize {
        let most = self.longest.saturating_sub(1).min(buf.len());
        (1..=most)
            .rev()
            .find(|&k| {
                let tail = &buf[buf.len() - k..];
                self.starts[usize::from(tail[0])]
                    && self
                        .needles
                        .iter()
                        .any(|n| n.len() > k && n.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Removes every header whose value holds a needle; returns how many.
    pub fn headers(&self, headers: &mut HeaderMap) -> u64 {
        let names: Vec<http::HeaderName> = headers
            .iter()
            .filter(|(_, v)| self.finder.is_match(v.as_bytes()))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            headers.remove(n);
        }
        names.len() as u64
    }

    /// `body` with every needle overwritten as it streams.
    pub fn body(self: &Arc<Self>, body: Body, tally: Arc<Tally>) -> Body {
        use http_body_util::BodyExt;
        Guarded {
            inner: body,
            guard: self.clone(),
            carry: BytesMut::new(),
            tally,
            ended: false,
            trailers: None,
        }
        .boxed()
    }
}

/// Every encoding of `s` an echo is likely to produce, besides `s` itself.
fn derived(s: &[u8]) -> Vec<Vec<u8>> {
    if s.len() < MIN_DERIVED {
        return Vec::new();
    }
    let mut out = Vec::new();
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        // Inside a larger base64 text the secret starts at any of three
        // byte alignments; the characters that only its bits decide are
        // the same wherever it sits.
        for align in 0..3usize {
            let mut padded = vec![0u8; align];
            padded.extend_from_slice(s);
            let text = engine.encode(&padded);
            let first = (align * 8).div_ceil(6);
            let last = ((align + s.len()) * 8) / 6;
            if let Some(core) = text.as_bytes().get(first..last) {
                out.push(core.to_vec());
            }
        }
    }
    let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase().into_bytes());
    out.push(hex.into_bytes());
    let mut percent = Vec::new();
    // Python's `quote` keeps `/` by default.
    let mut path_percent = Vec::new();
    // PHP and others write `/` as `\/`; Go's encoding/json writes
    // `& < >` as `\u0026 \u003c \u003e`; .NET's System.Text.Json also
    // `+ ' "` and the backtick, in capitals.
    let mut json = Vec::new();
    let mut go_json = Vec::new();
    let mut dotnet_json = Vec::new();
    let mut html = Vec::new();
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            percent.push(b);
            path_percent.push(b);
        } else {
            percent.extend_from_slice(format!("%{b:02X}").as_bytes());
            if b == b'/' {
                path_percent.push(b);
            } else {
                path_percent.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
        }
        match b {
            b'&' | b'<' | b'>' | b'+' | b'\'' | b'"' | b'`' => {
                dotnet_json.extend_from_slice(format!("\\u{b:04X}").as_bytes())
            }
            b'\\' => dotnet_json.extend_from_slice(b"\\\\"),
            _ => dotnet_json.push(b),
        }
        match b {
            b'/' => json.extend_from_slice(b"\\/"),
            b'"' => json.extend_from_slice(b"\\\""),
            b'\\' => json.extend_from_slice(b"\\\\"),
            _ => json.push(b),
        }
        match b {
            b'&' | b'<' | b'>' => go_json.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b'"' => go_json.extend_from_slice(b"\\\""),
            b'\\' => go_json.extend_from_slice(b"\\\\"),
            _ => go_json.push(b),
        }
        match b {
            b'&' => html.extend_from_slice(b"&amp;"),
            b'<' => html.extend_from_slice(b"&lt;"),
            b'>' => html.extend_from_slice(b"&gt;"),
            b'"' => html.extend_from_slice(b"&quot;"),
            b'\'' => html.extend_from_slice(b"&#39;"),
            _ => html.push(b),
        }
    }
    out.push(lower_percent(&percent));
    out.push(percent);
    out.push(lower_percent(&path_percent));
    out.push(path_percent);
    out.push(dotnet_json);
    out.push(json);
    out.push(go_json);
    out.push(html);
    out.retain(|v| v.as_slice() != s);
    out
}

/// `%2F` → `%2f`: the other spelling percent-encoders use.
fn lower_percent(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    let mut i = 0;
    while i + 2 < out.len() {
        if out[i] == b'%' {
            out[i + 1] = out[i + 1].to_ascii_lowercase();
            out[i + 2] = out[i + 2].to_ascii_lowercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// A response body on its way to the agent, scrubbed as it streams: each
/// chunk is sent but for a tail that could start a needle, which waits for
/// the next chunk (or the end).
struct Guarded {
    inner: Body,
    guard: Arc<Guard>,
    carry: BytesMut,
    tally: Arc<Tally>,
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl Guarded {
    fn found(&self, n: u64) {
        if n > 0 {
            self.tally.credential_echoes.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                // The held tail first, then the trailers, if any.
                if !this.carry.is_empty() {
                    let mut rest = std::mem::take(&mut this.carry);
                    let n = this.guard.scrub(&mut rest);
                    this.found(n);
                    return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    // Nothing held and no needle in the chunk: it goes on
                    // as it came, without a copy, but for a tail that may
                    // start one.
                    Ok(data) if this.carry.is_empty() && !this.guard.finder.is_match(&data[..]) => {
                        let keep = this.guard.partial_tail(&data);
                        this.carry.extend_from_slice(&data[data.len() - keep..]);
                        let ready = data.len() - keep;
                        if ready > 0 {
                            return Poll::Ready(Some(Ok(Frame::data(data.slice(..ready)))));
                        }
                    }
                    Ok(data) => {
                        this.carry.extend_from_slice(&data);
                        let n = this.guard.scrub(&mut this.carry);
                        this.found(n);
                        let keep = this.guard.partial_tail(&this.carry);
                        let ready = this.carry.len() - keep;
                        if ready > 0 {
                            let out = this.carry.split_to(ready).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body; any that quote a needle
                        // are left out.
                        if let Ok(mut trailers) = frame.into_trailers() {
                            let n = this.guard.headers(&mut trailers);
                            this.found(n);
                            this.trailers = Some(trailers);
                        }
                        this.ended = true;
                    }
                },
            }
        }
    }

    /// Before the first poll too: a bodiless answer (HEAD, 204) must say
    /// so up front, or the server's HEAD handling takes the wrapper for a
    /// body and drops the answer's Content-Length (S3's object size).
    fn is_end_stream(&self) -> bool {
        (self.ended || self.inner.is_end_stream())
            && self.carry.is_empty()
            && self.trailers.is_none()
    }
}

/// Unpacks a compressed body (gzip, deflate; several codings in the order
/// applied) so it can be checked: read whole, at most `limit` bytes
/// unpacked. Other codings cannot be checked and are refused.
pub fn unpack(codings: &str, raw: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut data = raw.to_vec();
    for coding in codings
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .rev()
    {
        let mut out = Vec::new();
        let read = match coding.as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&data[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out),
            "deflate" => {
                // RFC 9110 says zlib; some servers send raw deflate.
                let zlib = flate2::read::ZlibDecoder::new(&data[..])
                    .take(limit as u64 + 1)
                    .read_to_end(&mut out);
                match zlib {
                    Ok(n) => Ok(n),
                    Err(_) => {
                        out.clear();
                        flate2::read::DeflateDecoder::new(&data[..])
                            .take(limit as u64 + 1)
                            .read_to_end(&mut out)
                    }
                }
            }
            other => {
                return Err(format!(
                    "the upstream answered with content-encoding {other:?}, which blastgate cannot unpack to check for the held credential: refused"
                ))
            }
        };
        read.map_err(|e| format!("the upstream's {coding} body is corrupt: {e}"))?;
        if out.len() > limit {
            return Err(format!(
                "the upstream's {coding} body unpacks to more than max_inspect_bytes ({limit}): refused"
            ));
        }
        data = out;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const TOKEN: &str = "tok-3f9a/71+Qz";

    fn guard() -> Arc<Guard> {
        Arc::new(Guard::new(&[("Bearer ".into(), TOKEN.into())]).expect("a guard"))
    }

    fn scrubbed(text: &[u8]) -> (Vec<u8>, u64) {
        let mut buf = text.to_vec();
        let n = guard().scrub(&mut buf);
        (buf, n)
    }

    #[test]
    fn the_credential_is_blanked_in_every_encoding() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let full = format!("Bearer {TOKEN}");
        let mut cases: Vec<Vec<u8>> = vec![
            full.clone().into_bytes(),
            TOKEN.as_bytes().to_vec(),
            TOKEN.replace('/', "\\/").into_bytes(),
            TOKEN.replace('/', "%2F").replace('+', "%2B").into_bytes(),
            TOKEN.replace('/', "%2f").replace('+', "%2b").into_bytes(),
            // Python's quote(): `/` kept.
            TOKEN.replace('+', "%2B").into_bytes(),
            // .NET's JSON encoder.
            TOKEN.replace('+', "\\u002B").into_bytes(),
            TOKEN
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
            TOKEN
                .bytes()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        ];
        for pad in 0..3 {
            let mut request = vec![b'q'; pad];
            request.extend_from_slice(
                format!("GET / HTTP/1.1\r\nAuthorization: {full}\r\n\r\n").as_bytes(),
            );
            cases.push(STANDARD.encode(&request).into_bytes());
            cases.push(URL_SAFE.encode(&request).into_bytes());
        }
        for case in cases {
            let (out, n) = scrubbed(&case);
            assert!(n >= 1, "not found in {}", String::from_utf8_lossy(&case));
            assert_eq!(out.len(), case.len(), "lengths stay");
            assert!(out.contains(&b'*'));
        }
    }

    #[test]
    fn look_alikes_are_left_alone() {
        for text in [
            "Bearer tok-3f9a/71+Qy".as_bytes(),
            b"tok-3f9a",
            b"no secrets here at all, just text",
        ] {
            assert_eq!(scrubbed(text), (text.to_vec(), 0));
        }
    }

    #[test]
    fn basic_credentials_are_also_found_decoded() {
        use base64::engine::general_purpose::STANDARD;
        let secret = STANDARD.encode("deploy:hunter2-very-secret");
        let g = Guard::new(&[("Basic ".into(), secret)]).expect("guard");
        let mut echoed = b"user=deploy:hunter2-very-secret".to_vec();
        assert_eq!(g.scrub(&mut echoed), 1);
        // Shown parsed: the password on its own.
        let mut parsed = br#"{"user":"deploy","password":"hunter2-very-secret"}"#.to_vec();
        assert_eq!(g.scrub(&mut parsed), 1);
        assert!(String::from_utf8_lossy(&parsed).contains(r#""user":"deploy""#));
    }

    #[test]
    fn only_a_tail_that_could_start_a_needle_waits() {
        let g = guard();
        assert_eq!(g.partial_tail(b"hello world!"), 0);
        assert_eq!(g.partial_tail(b"hello Bear"), 4);
        assert_eq!(g.partial_tail(b"x tok-3f9a/7"), 10);
    }

    #[test]
    fn a_credential_split_over_chunks_is_blanked_and_nothing_else_changes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let text = format!("before Authorization: Bearer {TOKEN} after; Bear");
        // One byte per chunk: the worst split.
        let chunks = text.bytes().map(|b| Bytes::from(vec![b])).collect();
        let body: Body = Chunks(chunks).boxed();
        let tally: Arc<Tally> = Default::default();
        let out = rt
            .block_on(guard().body(body, tally.clone()).collect())
            .expect("body")
            .to_bytes();
        let expected = text.replace(&format!("Bearer {TOKEN}"), &"*".repeat(7 + TOKEN.len()));
        assert_eq!(String::from_utf8_lossy(&out), expected);
        assert_eq!(tally.credential_echoes.load(Ordering::Relaxed), 1);
    }

    /// Every way of cutting a body in three: the chunks without a needle
    /// pass uncopied, the others are scrubbed, and the result is the same.
    #[test]
    fn every_cut_of_a_body_gives_the_same_scrubbed_text() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        let text = format!("a Bearer {TOKEN}, then {TOKEN}; Beare tok-3f9 end");
        let expected = text
            .replace(&format!("Bearer {TOKEN}"), &"*".repeat(7 + TOKEN.len()))
            .replace(TOKEN, &"*".repeat(TOKEN.len()));
        let b = text.as_bytes();
        for i in 0..=b.len() {
            for j in i..=b.len() {
                let chunks = [&b[..i], &b[i..j], &b[j..]]
                    .into_iter()
                    .map(Bytes::copy_from_slice)
                    .collect();
                let tally: Arc<Tally> = Default::default();
                let out = rt
                    .block_on(
                        guard()
                            .body(Chunks(chunks).boxed(), tally.clone())
                            .collect(),
                    )
                    .expect("body")
                    .to_bytes();
                assert_eq!(String::from_utf8_lossy(&out), expected, "cut at {i}, {j}");
                assert_eq!(tally.credential_echoes.load(Ordering::Relaxed), 2);
            }
        }
    }

    /// A body of ready frames.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[test]
    fn compressed_bodies_are_unpacked_and_unknown_codings_refused() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"secret body").expect("gzip");
        let packed = gz.finish().expect("gzip");
        assert_eq!(unpack("gzip", &packed, 1024).expect("gzip"), b"secret body");
        assert_eq!(
            unpack(" GZIP ", &packed, 1024).expect("gzip"),
            b"secret body"
        );
        assert!(unpack("gzip", &packed, 4).is_err(), "over the limit");
        assert!(unpack("br", &packed, 1024).is_err());
        assert!(unpack("gzip", b"not gzip", 1024).is_err());
    }
}

//! Signed streaming payloads (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD` and
//! `…-PAYLOAD-TRAILER`): the body is aws-chunked, every chunk carrying a
//! signature chained from the seed signature of the `Authorization` header
//! (the trailer variant ends with trailing headers signed the same way).
//! The agent signed with the placeholder key, so each of its signatures is
//! replaced by one blastgate computes with the held key, chained from
//! blastgate's own seed.
//!
//! A chunk's signature precedes its data on the wire and covers the data's
//! hash, so a chunk is forwarded only once it has been read whole and its
//! framing checked: memory is bounded by [`MAX_CHUNK`], never the object.
//! The framing is strict (a bounded header line, hex size, the exact
//! CRLFs, sizes summing to `x-amz-decoded-content-length`, a final empty
//! chunk, trailers exactly those `x-amz-trailer` names): anything else
//! stops the stream before bytes blastgate did not sign go upstream. The
//! agent's own signatures are not checked; they are replaced.
//!
//! Every field blastgate writes has the length of the one it replaces (the
//! agent's size digits are kept, a signature is 64 hex digits either way),
//! so the re-signed body has the byte count the agent's `Content-Length`
//! declares.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::SystemTime,
};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::{client::identity::Identity, http::Headers};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::sign::Held;

/// Largest chunk accepted. SDKs use 64 KiB to 1 MiB chunks; a chunk is
/// held whole before it is forwarded, so this bounds memory per upload.
pub const MAX_CHUNK: u64 = 16 * 1024 * 1024;

/// Longest chunk header line: up to 16 size digits, `;chunk-signature=`
/// and 64 hex digits fit with room to spare.
const MAX_HEADER_LINE: usize = 128;

/// Most bytes of trailing headers (checksums are short).
const MAX_TRAILER_BYTES: usize = 4096;

const SIGNATURE_PREFIX: &[u8] = b";chunk-signature=";
const TRAILER_SIGNATURE: &str = "x-amz-trailer-signature";

/// What the chain signs with: the held key, for the scope and time the
/// request's headers were re-signed for.
pub struct Chain {
    identity: Identity,
    region: String,
    service: String,
    time: SystemTime,
    /// The signature the next one chains from: the seed, then each chunk's.
    previous: String,
}

impl Chain {
    pub fn new(held: &Held, region: &str, service: &str, time: SystemTime, seed: String) -> Self {
        let identity = Credentials::new(
            held.access_key_id.clone(),
            held.secret_access_key.clone(),
            held.session_token.clone(),
            None,
            "blastgate",
        )
        .into();
        Chain {
            identity,
            region: region.to_string(),
            service: service.to_string(),
            time,
            previous: seed,
        }
    }

    fn params(&self) -> Result<v4::SigningParams<'_, ()>, String> {
        v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time)
            .settings(())
            .build()
            .map_err(|e| format!("chunk signing parameters: {e}"))
    }

    /// The signature of the next chunk (`data` empty: the final chunk).
    pub fn chunk(&mut self, data: &Bytes) -> Result<String, String> {
        let params = self.params()?;
        let sig = v4::sign_chunk(data, &self.previous, &params)
            .map_err(|e| format!("chunk signing: {e}"))?
            .into_parts()
            .1;
        self.previous.clone_from(&sig);
        Ok(sig)
    }

    /// The signature of the trailing headers, after the final chunk.
    pub fn trailer(&mut self, headers: &[(String, String)]) -> Result<String, String> {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.try_insert(k.clone(), v.clone())
                .map_err(|e| format!("trailing header {k}: {e}"))?;
        }
        let params = self.params()?;
        let sig = v4::sign_trailer(&h, &self.previous, &params)
            .map_err(|e| format!("trailer signing: {e}"))?
            .into_parts()
            .1;
        self.previous.clone_from(&sig);
        Ok(sig)
    }
}

/// Where the parser is in the agent's aws-chunked body.
enum State {
    /// Expecting a chunk header line.
    Header,
    /// Inside a chunk of `size` bytes whose header's size digits were
    /// `digits`.
    Data { size: usize, digits: Bytes },
    /// After the final empty chunk's header (`digits` its size digits).
    Final { digits: Bytes },
    /// The whole body was read and forwarded.
    Done,
}

/// What closes a signed aws-chunked body.
enum Ending {
    Plain,
    /// The trailing headers, as sent, in order.
    Trailer(Vec<(String, String)>),
}

/// Rewrites an aws-chunked body's signatures, a piece at a time.
pub struct Rechunker {
    chain: Chain,
    state: State,
    buf: BytesMut,
    /// The trailing header names `x-amz-trailer` declared (lowercase); None:
    /// the variant without trailer.
    trailers: Option<Vec<String>>,
    /// `x-amz-decoded-content-length`, and how much of it chunks carried.
    decoded: u64,
    seen: u64,
}

impl Rechunker {
    pub fn new(chain: Chain, decoded: u64, trailers: Option<Vec<String>>) -> Self {
        Rechunker {
            chain,
            state: State::Header,
            buf: BytesMut::new(),
            trailers,
            decoded,
            seen: 0,
        }
    }

    /// Takes the next bytes of the agent's body; gives back the re-signed
    /// bytes that can go upstream now.
    pub fn push(&mut self, input: &[u8]) -> Result<Vec<Bytes>, String> {
        if matches!(self.state, State::Done) && !input.is_empty() {
            return Err("bytes after the final chunk of a signed aws-chunked body".into());
        }
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        while let Some(piece) = self.step()? {
            if !piece.is_empty() {
                out.push(piece);
            }
        }
        // Checked before the final chunk is handed out: a body with bytes
        // after its end is never completed upstream.
        if matches!(self.state, State::Done) && !self.buf.is_empty() {
            return Err("bytes after the final chunk of a signed aws-chunked body".into());
        }
        Ok(out)
    }

    /// The agent's body ended: it must have ended exactly after the final
    /// chunk (and trailers).
    pub fn finish(&self) -> Result<(), String> {
        match self.state {
            State::Done if self.buf.is_empty() => Ok(()),
            State::Done => Err("bytes after the final chunk of a signed aws-chunked body".into()),
            _ => Err(
                "the signed aws-chunked body ended before its final chunk (truncated upload)"
                    .into(),
            ),
        }
    }

    /// One step of parsing: a re-signed piece, or None when more input is
    /// needed.
    fn step(&mut self) -> Result<Option<Bytes>, String> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Header => {
                let Some(line) = self.line(MAX_HEADER_LINE, "chunk header")? else {
                    self.state = State::Header;
                    return Ok(None);
                };
                let (digits, size) = chunk_header(&line)?;
                if size > MAX_CHUNK {
                    return Err(format!(
                        "an aws-chunked chunk of {size} bytes is over blastgate's limit of {MAX_CHUNK}"
                    ));
                }
                if self.seen.saturating_add(size) > self.decoded {
                    return Err(format!(
                        "the chunks carry more than x-amz-decoded-content-length ({}) bytes",
                        self.decoded
                    ));
                }
                self.seen += size;
                self.state = if size == 0 {
                    if self.seen != self.decoded {
                        return Err(format!(
                            "the chunks carry {} bytes, x-amz-decoded-content-length says {}",
                            self.seen, self.decoded
                        ));
                    }
                    State::Final { digits }
                } else {
                    State::Data {
                        // At most MAX_CHUNK, which fits.
                        size: usize::try_from(size).map_err(|_| "chunk size".to_string())?,
                        digits,
                    }
                };
                // Nothing to forward yet, but more to parse: an empty piece.
                Ok(Some(Bytes::new()))
            }
            State::Data { size, digits } => {
                if self.buf.len() < size + 2 {
                    self.state = State::Data { size, digits };
                    return Ok(None);
                }
                if &self.buf[size..size + 2] != b"\r\n" {
                    return Err("an aws-chunked chunk's data is not followed by CRLF".into());
                }
                let data = self.buf.split_to(size).freeze();
                let _ = self.buf.split_to(2);
                let sig = self.chain.chunk(&data)?;
                let mut piece = BytesMut::with_capacity(size + digits.len() + 90);
                piece.extend_from_slice(&header_line(&digits, &sig));
                piece.extend_from_slice(&data);
                piece.extend_from_slice(b"\r\n");
                self.state = State::Header;
                Ok(Some(piece.freeze()))
            }
            State::Final { digits } => {
                let Some(ending) = self.ending()? else {
                    self.state = State::Final { digits };
                    return Ok(None);
                };
                let sig = self.chain.chunk(&Bytes::new())?;
                let mut piece = BytesMut::from(&header_line(&digits, &sig)[..]);
                match ending {
                    Ending::Plain => piece.extend_from_slice(b"\r\n"),
                    Ending::Trailer(headers) => {
                        let sig = self.chain.trailer(&headers)?;
                        for (k, v) in &headers {
                            piece.extend_from_slice(format!("{k}:{v}\r\n").as_bytes());
                        }
                        piece.extend_from_slice(
                            format!("{TRAILER_SIGNATURE}:{sig}\r\n\r\n").as_bytes(),
                        );
                    }
                }
                Ok(Some(piece.freeze()))
            }
            State::Done => Ok(None),
        }
    }

    /// What follows the final chunk's header, once all of it is here and
    /// checked: `\r\n`, or the trailing headers (their signature line and
    /// the closing `\r\n` consumed, to be written anew).
    fn ending(&mut self) -> Result<Option<Ending>, String> {
        let Some(declared) = self.trailers.as_ref() else {
            if self.buf.len() < 2 {
                return Ok(None);
            }
            if &self.buf[..2] != b"\r\n" {
                return Err("the final aws-chunked chunk is not followed by CRLF".into());
            }
            let _ = self.buf.split_to(2);
            return Ok(Some(Ending::Plain));
        };
        // The section is forwarded only whole: found before it is consumed.
        let window = &self.buf[..self.buf.len().min(MAX_TRAILER_BYTES)];
        let Some(end) = trailer_end(window) else {
            if self.buf.len() >= MAX_TRAILER_BYTES {
                return Err(format!(
                    "the trailing headers are over {MAX_TRAILER_BYTES} bytes or not terminated by an empty line"
                ));
            }
            return Ok(None);
        };
        let section = self.buf.split_to(end).freeze();
        let body = &section[..section.len() - 4];
        let lines = split_crlf(body);
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut signed = false;
        for (i, line) in lines.iter().enumerate() {
            if line.iter().any(|&b| b == b'\r' || b == b'\n') {
                return Err("trailing headers must be separated by CRLF".into());
            }
            let text = std::str::from_utf8(line)
                .map_err(|_| "a trailing header is not text".to_string())?;
            let Some((name, value)) = text.split_once(':') else {
                return Err(format!("trailing header {text:?} has no colon"));
            };
            let bad_name = name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if bad_name {
                return Err(format!(
                    "trailing header name {name:?} is not a lowercase name"
                ));
            }
            if name == TRAILER_SIGNATURE {
                if i + 1 != lines.len() {
                    return Err("x-amz-trailer-signature must be the last trailing header".into());
                }
                if !is_signature(value.as_bytes()) {
                    return Err("x-amz-trailer-signature is not 64 lowercase hex digits".into());
                }
                signed = true;
                continue;
            }
            let bad_value = value.is_empty()
                || value.trim() != value
                || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if bad_value {
                return Err(format!(
                    "trailing header {name} has a value that is empty, padded or not printable"
                ));
            }
            if !declared.iter().any(|d| d == name) {
                return Err(format!(
                    "trailing header {name} is not one x-amz-trailer declares ({})",
                    declared.join(", ")
                ));
            }
            if headers.iter().any(|(k, _)| k == name) {
                return Err(format!("trailing header {name} is repeated"));
            }
            headers.push((name.to_string(), value.to_string()));
        }
        if !signed {
            return Err("the trailing headers carry no x-amz-trailer-signature".into());
        }
        if headers.len() != declared.len() {
            return Err(format!(
                "x-amz-trailer declares {} but the trailer carries {}",
                declared.join(", "),
                headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Some(Ending::Trailer(headers)))
    }

    /// Reads one CRLF-terminated line of at most `max` bytes.
    fn line(&mut self, max: usize, what: &str) -> Result<Option<Bytes>, String> {
        let window = &self.buf[..self.buf.len().min(max + 2)];
        match window.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let line = self.buf.split_to(i).freeze();
                let _ = self.buf.split_to(2);
                Ok(Some(line))
            }
            None if self.buf.len() >= max + 2 => Err(format!(
                "an aws-chunked {what} line is over {max} bytes or not terminated by CRLF"
            )),
            None => Ok(None),
        }
    }
}

/// Why a re-signed stream stopped: the agent's framing was refused. Read
/// by the gateway when the upstream request fails, to answer the agent
/// with the reason instead of a bare upstream error.
pub type Refusal = Arc<OnceLock<String>>;

/// The agent's body with every chunk signature replaced. On a framing
/// fault the stream ends short of the `Content-Length` it declared, so
/// the upstream request fails rather than completing with bytes blastgate
/// did not sign; the reason is left in the [`Refusal`].
pub struct Resigned<B> {
    inner: B,
    rechunker: Rechunker,
    ready: VecDeque<Bytes>,
    refusal: Refusal,
    ended: bool,
}

impl<B> Resigned<B> {
    pub fn new(inner: B, rechunker: Rechunker, refusal: Refusal) -> Self {
        Resigned {
            inner,
            rechunker,
            ready: VecDeque::new(),
            refusal,
            ended: false,
        }
    }

    fn refuse(&mut self, why: String) {
        let _ = self.refusal.set(why);
        self.ready.clear();
        self.ended = true;
    }
}

impl<B> HttpBody for Resigned<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match this.rechunker.push(&data) {
                        Ok(pieces) => this.ready.extend(pieces),
                        Err(why) => this.refuse(why),
                    },
                    Err(_) => this.refuse(
                        "HTTP trailers on a signed aws-chunked body are not re-signed".into(),
                    ),
                },
                Poll::Ready(None) => match this.rechunker.finish() {
                    Ok(()) => this.ended = true,
                    Err(why) => this.refuse(why),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // The same byte count as the agent's body (see the module doc).
        self.inner.size_hint()
    }
}

/// Whether `s` is a signature as SigV4 writes one.
fn is_signature(s: &[u8]) -> bool {
    s.len() == 64
        && s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// `SIZE;chunk-signature=SIG`: the size digits (kept as sent) and the size.
fn chunk_header(line: &[u8]) -> Result<(Bytes, u64), String> {
    let bad = || {
        format!(
            "aws-chunked chunk header {:?} is not SIZE;chunk-signature=SIGNATURE",
            String::from_utf8_lossy(&line[..line.len().min(MAX_HEADER_LINE)])
        )
    };
    let semi = line.iter().position(|&b| b == b';').ok_or_else(bad)?;
    let (digits, rest) = line.split_at(semi);
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let sig = rest.strip_prefix(SIGNATURE_PREFIX).ok_or_else(bad)?;
    if !is_signature(sig) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    let size = u64::from_str_radix(text, 16).map_err(|_| bad())?;
    Ok((Bytes::copy_from_slice(digits), size))
}

fn header_line(digits: &[u8], sig: &str) -> Vec<u8> {
    let mut l = Vec::with_capacity(digits.len() + SIGNATURE_PREFIX.len() + sig.len() + 2);
    l.extend_from_slice(digits);
    l.extend_from_slice(SIGNATURE_PREFIX);
    l.extend_from_slice(sig.as_bytes());
    l.extend_from_slice(b"\r\n");
    l
}

/// The end (exclusive) of a trailer section: the first `\r\n\r\n`.
fn trailer_end(window: &[u8]) -> Option<usize> {
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// `body` split at each `\r\n`.
fn split_crlf(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        out.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::protocols::http::aws::sign::{self, Algorithm, Payload};

    /// AWS's documented example: key, 2013-05-24T00:00:00Z, us-east-1, s3.
    fn example_held() -> Held {
        Held {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn chain(seed: &str) -> Chain {
        Chain::new(
            &example_held(),
            "us-east-1",
            "s3",
            example_time(),
            seed.into(),
        )
    }

    const GARBAGE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    /// The documented body: 65536 + 1024 bytes of 'a', then the final
    /// chunk; `sigs` its three chunk signatures, `trailer` what follows.
    fn body(sigs: [&str; 3], trailer: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(format!("10000;chunk-signature={}\r\n", sigs[0]).as_bytes());
        b.extend(std::iter::repeat_n(b'a', 65_536));
        b.extend_from_slice(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).as_bytes());
        b.extend(std::iter::repeat_n(b'a', 1024));
        b.extend_from_slice(format!("\r\n0;chunk-signature={}\r\n", sigs[2]).as_bytes());
        b.extend_from_slice(trailer.as_bytes());
        b
    }

    /// Runs `input` through a rechunker, `step` bytes at a time.
    fn run(mut r: Rechunker, input: &[u8], step: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            for b in r.push(piece)? {
                out.extend_from_slice(&b);
            }
        }
        r.finish()?;
        Ok(out)
    }

    const SIGNED: [&str; 3] = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ];
    const SIGNED_SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";

    /// AWS's "Transferring Payload in Multiple Chunks" example: the seed
    /// signature of the documented headers, as [`sign::resign`] computes it.
    #[test]
    fn seed_signature_is_the_documented_one() {
        let mut req = http::Request::builder()
            .method("PUT")
            .uri("https://s3.amazonaws.com/examplebucket/chunkObject.txt")
            .header("content-encoding", "aws-chunked")
            .header("content-length", "66824")
            .header("x-amz-decoded-content-length", "66560")
            .header("x-amz-storage-class", "REDUCED_REDUNDANCY")
            .body(())
            .unwrap();
        let seed = sign::resign(
            &mut req,
            &sign::For {
                service: "s3",
                region: "us-east-1",
                held: &example_held(),
                payload: &Payload::StreamingSigned { trailer: false },
                body: None,
                presign: None,
                algorithm: &Algorithm::V4,
                time: example_time(),
            },
        )
        .unwrap();
        assert_eq!(seed, SIGNED_SEED);
        assert_eq!(
            req.headers()["x-amz-content-sha256"],
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
        );
    }

    /// The agent's chunk signatures (garbage here) are replaced by AWS's
    /// documented chain from the documented seed, whatever the pieces the
    /// body arrives in; the length is unchanged.
    #[test]
    fn chunk_chain_is_the_documented_one() {
        let input = body([GARBAGE; 3], "\r\n");
        let want = body(SIGNED, "\r\n");
        for step in [1, 7, 4096, 65_600, input.len()] {
            let r = Rechunker::new(chain(SIGNED_SEED), 66_560, None);
            let out = run(r, &input, step).unwrap();
            assert_eq!(out.len(), input.len());
            assert!(out == want, "step {step}: the chain differs from AWS's");
        }
    }

    /// AWS's trailing-header example: chunk signatures and the trailer
    /// signature of `x-amz-checksum-crc32c:sOO8/Q==`.
    #[test]
    fn trailer_chain_is_the_documented_one() {
        let seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e";
        let sigs = [
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ];
        let trailer = |sig: &str| {
            format!("x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:{sig}\r\n\r\n")
        };
        let input = body([GARBAGE; 3], &trailer(GARBAGE));
        let want = body(
            sigs,
            &trailer("d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"),
        );
        for step in [1, 13, input.len()] {
            let r = Rechunker::new(
                chain(seed),
                66_560,
                Some(vec!["x-amz-checksum-crc32c".into()]),
            );
            let out = run(r, &input, step).unwrap();
            assert!(
                out == want,
                "step {step}: the trailer chain differs from AWS's"
            );
        }
    }

    fn refused(input: &[u8], decoded: u64, trailers: Option<&[&str]>) -> String {
        let r = Rechunker::new(
            chain(SIGNED_SEED),
            decoded,
            trailers.map(|t| t.iter().map(|s| s.to_string()).collect()),
        );
        run(r, input, 1000).expect_err("framing accepted")
    }

    /// Malformed framing stops the stream, with the reason.
    #[test]
    fn malformed_framing_is_refused() {
        let good = body([GARBAGE; 3], "\r\n");
        // Sizes that do not add up to the declared length, either way.
        assert!(refused(&good, 66_561, None).contains("x-amz-decoded-content-length"));
        assert!(refused(&good, 66_559, None).contains("more than"));
        // Truncated: no final chunk.
        assert!(refused(&good[..good.len() - 90], 66_560, None).contains("ended before"));
        // Bytes after the end, in the same piece as the final chunk: the
        // final chunk is not handed out.
        let mut extra = good.clone();
        extra.extend_from_slice(b"5;chunk-signature=");
        assert!(refused(&extra, 66_560, None).contains("after the final chunk"));
        let mut r = Rechunker::new(chain(SIGNED_SEED), 66_560, None);
        let (head, tail) = extra.split_at(66_000);
        assert!(r.push(head).is_ok());
        assert!(r.push(tail).is_err(), "the final chunk was handed out");
        // Data not followed by CRLF (a size smaller than the data).
        let short = String::from_utf8(good.clone())
            .unwrap()
            .replacen("400;", "3ff;", 1);
        assert!(refused(short.as_bytes(), 66_559, None).contains("CRLF"));
        // Not hex, an extension, an uppercase or short signature, no
        // signature at all, an endless header line.
        for header in [
            "1g;chunk-signature=",
            "10;chunk-signature=ABCDEF",
            "10;foo=bar;chunk-signature=",
            "10\r\n",
        ] {
            let mut b = header.as_bytes().to_vec();
            if header.ends_with('=') {
                b.extend_from_slice(GARBAGE.as_bytes());
                if header.starts_with("10;chunk-signature=ABCDEF") {
                    b.truncate(b.len() - 6);
                }
            }
            b.extend_from_slice(b"\r\n");
            let why = refused(&b, 16, None);
            assert!(why.contains("chunk header"), "{header}: {why}");
        }
        let long = vec![b'1'; 500];
        assert!(refused(&long, 16, None).contains("over 128 bytes"));
        // A chunk over the limit is refused before it is buffered.
        let big = format!("2000000;chunk-signature={GARBAGE}\r\n");
        assert!(refused(big.as_bytes(), 1 << 30, None).contains("over blastgate's limit"));
        // The final chunk without its closing CRLF.
        let open = body([GARBAGE; 3], "xx");
        assert!(refused(&open, 66_560, None).contains("final"));
    }

    #[test]
    fn malformed_trailers_are_refused() {
        let declared: &[&str] = &["x-amz-checksum-crc32c"];
        let with = |t: &str| body([GARBAGE; 3], t);
        let sig = format!("x-amz-trailer-signature:{GARBAGE}\r\n\r\n");
        let cases = [
            // Not declared in x-amz-trailer.
            (
                format!("x-amz-checksum-sha256:abc=\r\n{sig}"),
                "not one x-amz-trailer declares",
            ),
            // Declared but missing.
            (sig.clone(), "declares"),
            // No signature.
            (
                "x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n".to_string(),
                "no x-amz-trailer-signature",
            ),
            // Signature not last.
            (
                format!(
                    "x-amz-trailer-signature:{GARBAGE}\r\nx-amz-checksum-crc32c:sOO8/Q==\r\n\r\n"
                ),
                "last",
            ),
            // Repeated.
            (
                format!("x-amz-checksum-crc32c:a\r\nx-amz-checksum-crc32c:b\r\n{sig}"),
                "repeated",
            ),
            // Padded value, bare LF, uppercase name.
            (
                format!("x-amz-checksum-crc32c: sOO8/Q==\r\n{sig}"),
                "padded",
            ),
            (format!("x-amz-checksum-crc32c:sOO8/Q==\n{sig}"), "CRLF"),
            (
                format!("X-Amz-Checksum-Crc32c:sOO8/Q==\r\n{sig}"),
                "lowercase",
            ),
        ];
        for (trailer, want) in cases {
            let why = refused(&with(&trailer), 66_560, Some(declared));
            assert!(why.contains(want), "{trailer:?}: {why}");
        }
        // Never terminated.
        let endless = with(&"x".repeat(5000));
        assert!(refused(&endless, 66_560, Some(declared)).contains("trailing headers are over"));
    }

    /// The body wrapper: re-signed bytes out; on a fault, the stream ends
    /// short and the reason is left for the gateway.
    #[tokio::test]
    async fn resigned_body_streams_and_stops_on_faults() {
        use http_body_util::{BodyExt, Full};
        let ok = Resigned::new(
            Full::new(Bytes::from(body([GARBAGE; 3], "\r\n"))),
            Rechunker::new(chain(SIGNED_SEED), 66_560, None),
            Refusal::default(),
        );
        let out = ok.collect().await.unwrap().to_bytes();
        assert!(out == body(SIGNED, "\r\n"));

        let refusal = Refusal::default();
        let mut bad = body([GARBAGE; 3], "\r\n");
        let cut = bad.len() - 3;
        bad.truncate(cut);
        let short = Resigned::new(
            Full::new(Bytes::from(bad)),
            Rechunker::new(chain(SIGNED_SEED), 66_560, None),
            refusal.clone(),
        );
        let out = short.collect().await.unwrap().to_bytes();
        // The two data chunks, re-signed; not the final chunk.
        let full = body(SIGNED, "\r\n");
        let final_chunk = format!("0;chunk-signature={}\r\n\r\n", SIGNED[2]).len();
        assert!(
            out == full[..full.len() - final_chunk],
            "the final chunk was forwarded"
        );
        assert!(refusal.get().is_some_and(|w| w.contains("ended before")));
    }
}

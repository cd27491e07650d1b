//! Responses masked a line at a time as they arrive: Kubernetes watches
//! (one JSON event per line), followed logs, server-sent events, and any
//! other text body when masking applies. A stream is never buffered whole:
//! each complete line goes to the agent as soon as it is masked, so a
//! `kubectl logs -f` or a watch through blastgate keeps its pace.
//!
//! A line longer than the target's inspection limit is masked in pieces
//! of that size (detectors can then miss a value cut in two: the record
//! says so); a watch event on Secrets that cannot be read as JSON ends the
//! stream instead, as its values could not be masked, and so does, under
//! JSON path rules, a line of a JSON stream that is not JSON. The lines
//! masked before such a line are still sent.

use std::{
    io::Write,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};

use super::{mask, upstream::Body};
use crate::policy::masking::MaskPlan;

/// What a masked stream found, read by the request's record when the
/// response ends.
#[derive(Default)]
pub struct Tally {
    pub fields: AtomicU64,
    /// Occurrences of the injected credential blanked on the way out.
    pub credential_echoes: AtomicU64,
    /// Why the stream was cut short or masked less carefully, if it was.
    pub note: Mutex<Option<String>>,
}

impl Tally {
    fn note(&self, why: &str) {
        if let Ok(mut n) = self.note.lock() {
            n.get_or_insert_with(|| why.to_string());
        }
    }
}

/// Whether a body of this type can be masked line by line: text, JSON
/// and its streams, YAML, XML, forms, scripts. Other types (protobuf,
/// images, archives) are binary and not touched.
pub fn is_textual(headers: &HeaderMap) -> bool {
    let Some(media) = mask::media_type(headers) else {
        return false;
    };
    media.starts_with("text/")
        || ["json", "yaml", "xml"].iter().any(|t| media.contains(t))
        || media.starts_with("message/")
        || media
            .split_once('/')
            .is_some_and(|(_, sub)| TEXT_UNDER_OTHER_NAMES.contains(&sub))
}

/// Application types that are text: scripts, keys and certificates in
/// PEM (Python's `mimetypes` labels `key.pem` and `tls.key` so), mail,
/// configuration.
const TEXT_UNDER_OTHER_NAMES: &[&str] = &[
    "javascript",
    "x-javascript",
    "ecmascript",
    "x-www-form-urlencoded",
    "csv",
    "sql",
    "graphql",
    "pem-certificate-chain",
    "x-pem-file",
    "x-x509-ca-cert",
    "pgp-keys",
    "pgp-signature",
    "x-sh",
    "x-shellscript",
    "x-csh",
    "x-httpd-php",
    "x-php",
    "x-ruby",
    "x-python",
    "x-perl",
    "x-tex",
    "x-latex",
    "toml",
    "x-toml",
    "mbox",
    "rtf",
    "x-subrip",
];

/// How one response stream is masked.
pub struct Stream {
    pub plan: Option<MaskPlan>,
    /// The lines are Kubernetes watch events on Secrets, whose `data`
    /// values are always masked.
    pub secrets: bool,
    /// The session's JSON path rules hold this answer to JSON (see
    /// `request::by_path`): a line of a JSON stream that is not strict
    /// JSON ends it.
    pub by_path: bool,
    /// Longest line masked whole.
    pub limit: usize,
}

/// Wraps `body` so each line is masked on its way. Content-Length and a
/// gzip Content-Encoding are removed from `headers`, as the masked body is
/// new; any other encoding is refused.
pub fn masked(
    body: Body,
    headers: &mut HeaderMap,
    stream: Stream,
    tally: Arc<Tally>,
) -> Result<Body, String> {
    let encoding = super::mask::content_codings(headers);
    let gunzip = match encoding.as_deref() {
        None => None,
        Some("gzip") | Some("x-gzip") => Some(flate2::write::MultiGzDecoder::new(Vec::new())),
        Some(other) => {
            return Err(format!(
                "the upstream streamed with content-encoding {other:?}, which blastgate cannot unpack to mask"
            ))
        }
    };
    let kind = Kind::of(headers);
    let labelled = mask::media_type(headers).is_some_and(|m| !m.is_empty());
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(LineMasked {
        inner: body,
        gunzip,
        pending: BytesMut::new(),
        masker: Masker {
            plan: stream.plan,
            secrets: stream.secrets,
            kind,
            by_path: stream.by_path,
            labelled,
            tally,
        },
        limit: stream.limit,
        ended: false,
    }
    .boxed())
}

/// What a stream's lines are, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text that may look like JSON (a log line starting `[2026-12-07 …]`).
    Text,
    /// A JSON document per line: a JSON watch, NDJSON, JSON Lines, JSON
    /// text sequences.
    Json,
    /// Server-sent events, whose `data:` lines may carry JSON.
    Events,
}

impl Kind {
    fn of(headers: &HeaderMap) -> Kind {
        match mask::media_type(headers).as_deref() {
            Some("text/event-stream") => Kind::Events,
            _ if carries_json(headers) => Kind::Json,
            _ => Kind::Text,
        }
    }
}

struct Masker {
    plan: Option<MaskPlan>,
    secrets: bool,
    kind: Kind,
    by_path: bool,
    /// The upstream named a media type. An unlabelled body is scanned as
    /// text, but lines that are not UTF-8 pass as they are: it may be
    /// binary, which a lossy rewrite would break.
    labelled: bool,
    tally: Arc<Tally>,
}

impl Masker {
    /// Whether `b` ends a line: LF, and for server-sent events (which end
    /// lines with CRLF, LF or a bare CR) CR too.
    fn ends_line(&self, b: u8) -> bool {
        b == b'\n' || (self.kind == Kind::Events && b == b'\r')
    }

    /// Every line of `ready`, masked; `true` when one ended the stream
    /// (the lines before it are in what is returned).
    fn lines(&self, ready: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(ready.len());
        for line in ready.split_inclusive(|b| self.ends_line(*b)) {
            match self.line(line) {
                Some(masked) => out.extend_from_slice(&masked),
                None => return (out, true),
            }
        }
        (out, false)
    }

    /// One line (with its newline, if it had one), masked; `None` ends the
    /// stream.
    fn line(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let (body, newline) = split_ending(raw);
        if !self.labelled && std::str::from_utf8(body).is_err() {
            return Some(raw.to_vec());
        }
        let text = String::from_utf8_lossy(body);
        if text.trim().is_empty() {
            return Some(raw.to_vec());
        }
        // Text with NUL bytes is UTF-16 or UTF-32 to a client that guesses
        // (ASCII in UTF-16 is valid UTF-8): the detectors would read
        // `A\0K\0I\0A…` and find nothing.
        // Unlabelled, it may be binary: cut only when the detectors find
        // something once the NULs are gone.
        if body.contains(&0)
            && self
                .plan
                .as_ref()
                .is_some_and(|p| self.labelled || p.detect(&text.replace('\0', "")).is_some())
        {
            self.tally.note(
                "stream cut: a line of text holds NUL bytes (UTF-16?), which the masking cannot read",
            );
            return None;
        }
        // A JSON document per line (watch events, NDJSON), a JSON text
        // sequence's record (RFC 7464, after its RS), or an SSE data line
        // carrying one (an event stream may open with a byte-order mark,
        // which EventSource parsers drop).
        let bom = if self.kind == Kind::Events {
            text.strip_prefix('\u{feff}')
        } else {
            None
        };
        let (bom, line) = match bom {
            Some(rest) => ("\u{feff}", rest),
            None => ("", text.as_ref()),
        };
        let (prefix, json_part) = match (line.strip_prefix("data:"), line.strip_prefix('\u{1e}')) {
            (Some(rest), _) => ("data:", rest),
            (None, Some(rest)) if self.kind == Kind::Json => ("\u{1e}", rest),
            // A log line with its time first (`kubectl logs --timestamps`).
            _ if self.kind == Kind::Text => match timestamped(line) {
                Some((stamp, rest)) => (stamp, rest),
                None => ("", line),
            },
            _ => ("", line),
        };
        let prefix = format!("{bom}{prefix}");
        if let Ok(masked) = mask::json_doc(self.plan.as_ref(), self.secrets, json_part.as_bytes()) {
            let n = masked.fields;
            self.tally.fields.fetch_add(n, Ordering::Relaxed);
            if n == 0 {
                return Some(raw.to_vec());
            }
            return Some([prefix.as_bytes(), &masked.body, newline.as_bytes()].concat());
        }
        if self.secrets {
            self.tally.note(
                "stream cut: a watch event on Secrets was not JSON, so its values could not be masked",
            );
            return None;
        }
        // Under path rules, every line of a JSON stream is a document the
        // rules must read: any other line (CSV, YAML) could carry the
        // fields they mask.
        if self.by_path && self.kind == Kind::Json {
            self.tally.note(
                "stream cut: a line of a JSON stream is not strict JSON, so its fields could not be masked by path",
            );
            return None;
        }
        // A line that starts as JSON but is not strict JSON (NaN, a BOM,
        // a lone surrogate, an SSE event split over lines or ended by a
        // bare CR) is read by lenient clients all the same, with the fields
        // the rules mask by path as they were: the stream ends here.
        if self.kind != Kind::Text
            && looks_like_json(json_part)
            && self.plan.as_ref().is_some_and(MaskPlan::has_json_paths)
        {
            self.tally.note(
                "stream cut: a line that reads as JSON to lenient clients is not strict JSON, so its fields could not be masked by path",
            );
            return None;
        }
        match &self.plan {
            Some(p) => {
                let (masked, n) = p.scan(&text);
                self.tally.fields.fetch_add(n, Ordering::Relaxed);
                if n == 0 {
                    Some(raw.to_vec())
                } else {
                    Some(format!("{masked}{newline}").into_bytes())
                }
            }
            None => Some(raw.to_vec()),
        }
    }
}

/// A line that starts with an RFC 3339 time and a space, as the kubelet
/// writes logs asked for with timestamps: (the time and its space, the
/// rest).
fn timestamped(line: &str) -> Option<(&str, &str)> {
    let (stamp, _) = line.split_once(' ')?;
    let rfc3339 = stamp.len() >= 20
        && stamp.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && stamp.as_bytes().get(10) == Some(&b'T')
        && stamp
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'T' | b'Z' | b'+'));
    rfc3339.then(|| line.split_at(stamp.len() + 1))
}

/// A line and what ends it: LF, CRLF or (server-sent events) a bare CR.
fn split_ending(raw: &[u8]) -> (&[u8], &str) {
    if let Some(b) = raw.strip_suffix(b"\r\n") {
        (b, "\r\n")
    } else if let Some(b) = raw.strip_suffix(b"\n") {
        (b, "\n")
    } else if let Some(b) = raw.strip_suffix(b"\r") {
        (b, "\r")
    } else {
        (raw, "")
    }
}

/// A stream whose lines are JSON documents: a JSON media type (`+json`,
/// NDJSON, JSON Lines, JSON text sequences), or server-sent events (whose
/// `data:` lines carry them).
pub fn carries_json(headers: &HeaderMap) -> bool {
    super::mask::media_type(headers).is_some_and(|m| m.contains("json") || m == "text/event-stream")
}

/// What a lenient client may take for a JSON document: an object or a
/// list, after whitespace and a byte-order mark.
fn looks_like_json(text: &str) -> bool {
    text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .starts_with(['{', '['])
}

struct LineMasked {
    inner: Body,
    gunzip: Option<flate2::write::MultiGzDecoder<Vec<u8>>>,
    /// Bytes after the last complete line.
    pending: BytesMut,
    masker: Masker,
    limit: usize,
    ended: bool,
}

impl LineMasked {
    /// Every complete line in `pending` (and, at the end or past the
    /// limit, the rest), masked. A line that ends the stream ends it
    /// there: the lines before it are still sent, and `ended` is set.
    fn drain(&mut self, all: bool) -> Option<Bytes> {
        let cut = match self.pending.iter().rposition(|b| self.masker.ends_line(*b)) {
            Some(i) => i + 1,
            None if all && !self.pending.is_empty() => self.pending.len(),
            None if self.pending.len() > self.limit => {
                self.masker
                    .tally
                    .note("a line longer than max_inspect_bytes was masked in pieces");
                self.pending.len()
            }
            None => return None,
        };
        let ready = self.pending.split_to(cut);
        let (out, ended) = self.masker.lines(&ready);
        self.ended |= ended;
        Some(Bytes::from(out))
    }

    fn take(&mut self, data: &[u8]) -> Result<(), ()> {
        match &mut self.gunzip {
            None => self.pending.extend_from_slice(data),
            Some(d) => {
                if d.write_all(data).is_err() {
                    self.masker
                        .tally
                        .note("stream cut: the upstream's gzip stream is corrupt");
                    return Err(());
                }
                self.pending.extend_from_slice(d.get_ref());
                d.get_mut().clear();
            }
        }
        Ok(())
    }
}

impl HttpBody for LineMasked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.drain(false) {
                Some(b) if !b.is_empty() => return Poll::Ready(Some(Ok(Frame::data(b)))),
                _ if this.ended => return Poll::Ready(None),
                _ => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if this.take(&data).is_err() {
                            this.ended = true;
                            return Poll::Ready(None);
                        }
                    }
                    // Trailers pass as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    if let Some(d) = this.gunzip.take() {
                        match d.finish() {
                            Ok(rest) => this.pending.extend_from_slice(&rest),
                            Err(_) => this
                                .masker
                                .tally
                                .note("the upstream's gzip stream ended early"),
                        }
                    }
                    let last = this.drain(true);
                    this.ended = true;
                    return match last {
                        Some(b) if !b.is_empty() => Poll::Ready(Some(Ok(Frame::data(b)))),
                        _ => Poll::Ready(None),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Kind, Masker, Tally};

    fn masker(secrets: bool) -> Masker {
        Masker {
            plan: None,
            secrets,
            kind: Kind::Json,
            by_path: false,
            labelled: true,
            tally: Arc::new(Tally::default()),
        }
    }

    /// A masker under one rule masking `$.ssn` by path.
    fn ssn_masker(kind: Kind, by_path: bool) -> Masker {
        let rules = "[[field]]\nid = \"ssn\"\ntargets = [\"*\"]\njson_paths = [\"$.ssn\"]\nstyle = \"fixed\"\n";
        let masking =
            crate::policy::masking::Masking::parse(std::path::Path::new("masking.toml"), rules)
                .unwrap_or_else(|e| panic!("{e:?}"));
        Masker {
            plan: Some(masking.plan("agent", "api")),
            secrets: false,
            kind,
            by_path,
            labelled: true,
            tally: Arc::new(Tally::default()),
        }
    }

    #[test]
    fn watch_events_on_secrets_are_masked_per_line() {
        let m = masker(true);
        let line = br#"{"type":"ADDED","object":{"kind":"Secret","data":{"a":"czNjcmV0"}}}
"#;
        let out = String::from_utf8(m.line(line).unwrap()).unwrap();
        assert!(out.ends_with('\n'));
        let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_ne!(doc["object"]["data"]["a"], "czNjcmV0");
        assert_eq!(m.tally.fields.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Not JSON: the stream ends rather than pass a value unmasked.
        assert!(m.line(b"password: czNjcmV0\n").is_none());
        assert!(m.tally.note.lock().unwrap().is_some());
    }

    /// Attack: NDJSON or SSE lines a lenient client parses (NaN, a BOM, a
    /// lone surrogate, an event split over `data:` lines) would carry the
    /// path-masked field as it was: the stream ends instead. Strict JSON
    /// lines are masked and other text passes.
    #[test]
    fn a_line_lenient_clients_read_as_json_ends_the_stream_under_path_rules() {
        let m = ssn_masker(Kind::Events, false);
        for line in [
            &b"{\"ssn\":\"123-45-6789\",\"score\":NaN}\n"[..],
            b"{\"ssn\":\"123-45-6789\",\"n\":\"\\ud800\"}\n",
            b"data: {\"ssn\":\n",
            b"data: {\"ssn\":\"1\"}\rdata: {\"ssn\":\"2\"}\n",
            b"[{\"ssn\":\"1\"},\n",
        ] {
            assert!(m.line(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
        let masked = m
            .line(b"data: {\"ssn\":\"123-45-6789\"}\n")
            .expect("masked");
        assert!(!String::from_utf8_lossy(&masked).contains("123-45"));
        // The byte-order mark an event stream may open with is dropped by
        // EventSource parsers: the document after it is masked, the mark
        // kept.
        let masked = m
            .line("\u{feff}{\"ssn\":\"123-45-6789\"}\n".as_bytes())
            .expect("masked");
        assert_eq!(
            String::from_utf8_lossy(&masked),
            "\u{feff}{\"ssn\":\"****\"}\n"
        );
        for line in [
            &b"plain log line\n"[..],
            b"event: update\n",
            b": ping\n",
            b"data: 42\n",
        ] {
            assert_eq!(m.line(line).expect("passes"), line);
        }
        // Text that only looks like JSON in a text stream (a log) passes,
        // scanned by the detectors.
        let logs = Masker {
            kind: Kind::Text,
            ..m
        };
        let line = b"[2026-12-07 10:00:00] INFO started\n";
        assert_eq!(logs.line(line).expect("passes"), line);
    }

    /// Attack: under path rules, an NDJSON stream whose lines are not
    /// JSON (an API's CSV export labelled `application/x-ndjson`) would
    /// carry the masked field as text: the stream ends at the first such
    /// line. JSON lines, RFC 7464 records and blank lines are masked or
    /// pass.
    #[test]
    fn a_json_stream_under_path_rules_ends_at_a_line_that_is_not_json() {
        let m = ssn_masker(Kind::Json, true);
        let masked = m.line(b"{\"ssn\":\"123-45-6789\"}\n").expect("masked");
        assert_eq!(masked, b"{\"ssn\":\"****\"}\n");
        let record = m
            .line(b"\x1e{\"ssn\":\"123-45-6789\"}\n")
            .expect("a JSON text sequence record");
        assert_eq!(record, b"\x1e{\"ssn\":\"****\"}\n");
        assert_eq!(m.line(b"\r\n").expect("blank"), b"\r\n");
        for line in [&b"ssn,name\n"[..], b"123-45-6789,Alice\n", b"ssn: 1\n"] {
            assert!(m.line(line).is_none(), "{}", String::from_utf8_lossy(line));
        }
        // Without path rules holding it (unmaskable = "scan"), text lines
        // are scanned instead.
        let scan = Masker {
            by_path: false,
            ..m
        };
        assert_eq!(scan.line(b"ssn,name\n").expect("scanned"), b"ssn,name\n");
    }

    /// An unlabelled body is scanned as text, but a line that is not UTF-8
    /// (binary) passes untouched rather than rewritten lossily.
    #[test]
    fn unlabelled_binary_lines_pass_untouched() {
        let masking = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            "[[detector]]\nkind = \"aws_key\"\nstyle = \"fixed\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let m = Masker {
            plan: Some(masking.plan("agent", "api")),
            labelled: false,
            kind: Kind::Text,
            ..masker(false)
        };
        let binary = b"\xff\xfe AKIAABCDEFGHIJKLMNOP \x00\n";
        assert_eq!(m.line(binary).expect("passes"), binary);
        let text = m.line(b"key AKIAABCDEFGHIJKLMNOP\n").expect("scanned");
        assert_eq!(text, b"key ****\n");
    }

    /// Red team (leak): an event stream may begin with a byte-order mark,
    /// which every EventSource parser strips (WHATWG HTML 9.2.6), and .NET's
    /// `StreamWriter` with `Encoding.UTF8` writes one. The first line then
    /// does not start with `data:`, nor (after the mask's trim) with `{` or
    /// `[`: it passes as text with the path-masked field as it came.
    #[test]
    fn red_team_an_event_stream_opening_with_a_bom_is_still_masked() {
        let m = ssn_masker(Kind::Events, true);
        let line = "\u{feff}data: {\"ssn\":\"123-45-6789\"}\n".as_bytes();
        let out = m.line(line);
        assert!(
            out.as_ref()
                .is_none_or(|o| !String::from_utf8_lossy(o).contains("123-45-6789")),
            "{:?}",
            out.map(|o| String::from_utf8_lossy(&o).to_string())
        );
    }

    /// Red team (leak): server-sent events may end lines with a bare CR
    /// (WHATWG HTML 9.2.5: CRLF, LF or CR). The masker splits on LF only,
    /// so a stream using CR is one "line" starting `id:` or `event:`,
    /// neither `data:` nor JSON-looking: scanned as text, and the field
    /// the rule masks by path reaches an EventSource client as it was.
    #[test]
    fn red_team_event_lines_ended_by_cr_are_masked() {
        let m = ssn_masker(Kind::Events, true);
        for stream in [
            &b"id: 1\rdata: {\"ssn\":\"123-45-6789\"}\r\r"[..],
            b"event: update\rdata: {\"ssn\":\"123-45-6789\"}\r\r",
        ] {
            let (out, _) = m.lines(stream);
            let out = String::from_utf8_lossy(&out);
            assert!(!out.contains("123-45-6789"), "{out:?}");
            assert!(out.contains("data: {\"ssn\":\"****\"}\r"), "{out:?}");
        }
        // CRLF and LF are unchanged, byte for byte.
        let plain = b"event: a\r\ndata: 1\r\n\r\n: ping\n\n";
        assert_eq!(m.lines(plain), (plain.to_vec(), false));
    }

    /// Red team (leak): text in UTF-16 whose characters are all ASCII is
    /// valid UTF-8 byte for byte (every other byte a NUL), so nothing
    /// treats it as undecodable; the detectors, reading it as UTF-8, see
    /// `A\0K\0I\0A\0…` and find nothing. An upstream that honours
    /// `Accept-Charset` (ASP.NET Core's text formatters, Spring's string
    /// converter) answers `text/plain; charset=utf-16` when the agent asks,
    /// and curl, Python (`r.text`) decode it.
    #[test]
    fn red_team_utf16_text_is_not_passed_past_the_detectors() {
        let masking = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            "[[detector]]\nkind = \"aws_key\"\nstyle = \"fixed\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let m = Masker {
            plan: Some(masking.plan("agent", "api")),
            kind: Kind::Text,
            ..masker(false)
        };
        let utf16: Vec<u8> = "key AKIAIOSFODNN7EXAMPLE\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let out = m.line(&utf16);
        let leaked = out.as_ref().is_some_and(|o| {
            let units: Vec<u16> = o
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units).contains("AKIAIOSFODNN7EXAMPLE")
        });
        assert!(!leaked, "the AWS key passed in UTF-16");
    }

    #[test]
    fn lines_without_anything_to_mask_pass_byte_for_byte() {
        let m = masker(false);
        for line in [
            &b"plain log line\r\n"[..],
            b"{\"a\": 1}\n",
            b"\n",
            b"no newline",
        ] {
            assert_eq!(m.line(line).unwrap(), line);
        }
    }

    /// Red team (leak, detectors): the NUL check that cuts UTF-16 text
    /// applies to labelled bodies only. An unlabelled body is scanned as
    /// text (README: "Without path rules, text of any type (and an
    /// unlabelled body) is scanned"), and UTF-16 of ASCII is valid UTF-8,
    /// so its lines are scanned as `A\0K\0I\0A…` and pass with nothing
    /// found. Python's `requests` reads an unlabelled body's `.json()` by
    /// guessing UTF-16 from the NULs (`guess_json_utf`) and `.text` by
    /// charset detection; a file PowerShell 5 wrote (`Out-File`, UTF-16LE
    /// by default) served by an object store or a bare file server with
    /// no type keeps the AWS key.
    #[test]
    fn red_team_unlabelled_utf16_is_not_passed_past_the_detectors() {
        let masking = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            "[[detector]]\nkind = \"aws_key\"\nstyle = \"fixed\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let m = Masker {
            plan: Some(masking.plan("agent", "api")),
            labelled: false,
            kind: Kind::Text,
            ..masker(false)
        };
        let utf16: Vec<u8> = "{\"aws_access_key_id\": \"AKIAIOSFODNN7EXAMPLE\"}\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(std::str::from_utf8(&utf16).is_ok());
        let out = m.line(&utf16);
        let leaked = out.as_ref().is_some_and(|o| {
            let units: Vec<u16> = o
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units).contains("AKIAIOSFODNN7EXAMPLE")
        });
        assert!(!leaked, "the AWS key passed in unlabelled UTF-16");
    }

    /// Red team (leak, path rules on logs; a limit): a container's JSON log
    /// lines are masked by path when a line is strict JSON (every line is
    /// tried, whatever the stream's kind), so `kubectl logs api` shows
    /// `{"ssn":"****"}`. `kubectl logs --timestamps api` asks the kubelet
    /// for `?timestamps=true`, which puts an RFC 3339 time before each
    /// line: no longer JSON, scanned by the detectors only, the same field
    /// as it was. README says logs keep the detector scan; the masking a
    /// rule visibly gets in one spelling is gone in the other.
    #[test]
    fn red_team_timestamped_json_log_lines_keep_their_path_masking() {
        let m = ssn_masker(Kind::Text, false);
        let plain = m.line(b"{\"ssn\":\"123-45-6789\"}\n").expect("masked");
        assert_eq!(plain, b"{\"ssn\":\"****\"}\n");
        let stamped = m
            .line(b"2026-12-07T10:00:00.123456789Z {\"ssn\":\"123-45-6789\"}\n")
            .map(|o| String::from_utf8_lossy(&o).to_string());
        assert!(
            stamped
                .as_deref()
                .is_none_or(|o| !o.contains("123-45-6789")),
            "{stamped:?}"
        );
    }

    /// Red team (held): an event stream whose CRLF is cut between two
    /// chunks (the CR ends one, the LF starts the next), over a real
    /// hyper body, frame by frame: every `data:` line is masked and the
    /// bytes are the upstream's but for the masked values.
    #[tokio::test]
    async fn red_team_event_lines_split_at_chunk_edges_are_masked() {
        use http_body_util::BodyExt;
        let frames: Vec<&'static [u8]> = vec![
            b"data: {\"ssn\":\"123-45-6789\"}\r",
            b"\ndata: {\"ssn\":\"987-65-4321\"}\r",
            b"\n\r",
            b"\ndata: {\"s",
            b"sn\":\"555-12-3456\"}\r\n\r\n",
        ];
        let (mut parts, body) = super::super::test_upstream::incoming(
            vec![("content-type", "text/event-stream")],
            frames.into_iter().map(bytes::Bytes::from_static).collect(),
        )
        .await;
        let m = ssn_masker(Kind::Events, true);
        let stream = super::Stream {
            plan: m.plan.clone(),
            secrets: false,
            by_path: true,
            limit: 1 << 20,
        };
        let tally = Arc::new(Tally::default());
        let out = super::masked(body.boxed(), &mut parts.headers, stream, tally)
            .expect("masked")
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let out = String::from_utf8_lossy(&out);
        assert_eq!(
            out,
            "data: {\"ssn\":\"****\"}\r\ndata: {\"ssn\":\"****\"}\r\n\r\ndata: {\"ssn\":\"****\"}\r\n\r\n"
        );
    }
}

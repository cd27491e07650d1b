//! JSON response bodies, masked before the agent sees them: read whole (up
//! to the target's inspection limit), gunzipped if need be, masked by JSON
//! path and by the value detectors, sent back uncompressed with a fresh
//! Content-Length.

use std::{borrow::Cow, io::Read};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};

use super::upstream::Body;
use crate::policy::masking::{MaskPlan, MaskedJson, NotJson};

pub enum Outcome {
    Masked {
        body: Body,
        fields: u64,
    },
    /// Over the limit: what was read, and the rest still unread.
    TooBig {
        head: Bytes,
        rest: Option<Body>,
    },
}

/// The media type of a Content-Type, as servers read it: what comes
/// before any `;` parameter, trimmed, lower-case.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// The `charset` parameter of a Content-Type, lower-case, unquoted.
pub fn charset(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    value.split(';').skip(1).find_map(|p| {
        let (name, v) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    })
}

/// Whether text in this charset spells ASCII as ASCII, so the JSON masker
/// and the detectors read its keys, values and patterns: every charset
/// but UTF-16 and UTF-32 (every character with zero bytes beside it) and
/// UTF-7 (ASCII letters spelt in base64), by any of their names. Text
/// with zero bytes is refused or cut whatever its label says.
pub fn ascii_compatible(charset: &str) -> bool {
    let c: String = charset
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    !(c.starts_with("utf16")
        || c.starts_with("utf32")
        || c.starts_with("ucs2")
        || c.starts_with("ucs4")
        || c.starts_with("utf7")
        || c.starts_with("unicode")
        || c == "csunicode"
        || c.starts_with("iso10646"))
}

/// The codings named in every `name` line, in order (a client applies
/// them all, not just the first line's), lower-case, `identity` left out.
pub fn codings(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// The content codings a client will undo; `None` when the body is as
/// sent.
pub fn content_codings(headers: &HeaderMap) -> Option<String> {
    let codings = codings(headers, header::CONTENT_ENCODING);
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// A JSON document, read whole: `application/json`, its older spellings
/// and `+json` types. JSON Lines and sequences are streams (`lines.rs`).
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|t| {
        matches!(
            t.as_str(),
            "application/json" | "application/x-json" | "text/json"
        ) || t.ends_with("+json")
    })
}

/// What to ask the upstream for when responses may need masking: gzip only
/// if the agent takes it too (a body not masked is passed as it came).
pub fn accept_encoding(agent: Option<&HeaderValue>) -> HeaderValue {
    let takes_gzip = agent
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    HeaderValue::from_static(if takes_gzip { "gzip" } else { "identity" })
}

/// Masks a JSON body: the session's rules (`plan`) and, for Kubernetes
/// Secrets (`secrets`), every value under `data` and `stringData`.
pub async fn json_body(
    plan: Option<&MaskPlan>,
    secrets: bool,
    headers: &mut HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Outcome, String> {
    let mut raw = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the upstream response: {e}"))?;
        if let Some(d) = frame.data_ref() {
            raw.extend_from_slice(d);
            if raw.len() > limit {
                return Ok(Outcome::TooBig {
                    head: raw.freeze(),
                    rest: Some(body),
                });
            }
        }
    }
    let raw = raw.freeze();
    let encoding = content_codings(headers);
    let text = match encoding.as_deref() {
        None => raw,
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            // Read one byte past the limit to tell "at most" from "more".
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("the upstream's gzip body is corrupt: {e}"))?;
            if out.len() > limit {
                return Ok(Outcome::TooBig {
                    head: raw,
                    rest: None,
                });
            }
            Bytes::from(out)
        }
        Some(other) => {
            return Err(format!(
                "the upstream answered with content-encoding {other:?}, which blastgate cannot unpack to mask"
            ))
        }
    };
    let (masked, fields) = match mask_doc(plan, secrets, text.clone()).await? {
        Ok(masked) => masked,
        Err(_) if secrets => {
            return Err("a Kubernetes Secret response that is not JSON cannot be masked".into());
        }
        Err(why) if plan.is_some_and(MaskPlan::has_json_paths) => {
            // Clients read more than strict JSON: Python's json and
            // requests take a byte-order mark, NaN and lone surrogates, a
            // JavaScript parser lone surrogates and huge numbers. Such a
            // body would reach them with the fields the rules mask by path
            // left as they are: refused, not guessed.
            return Err(format!(
                "the upstream's response is labelled JSON but is not strict JSON ({why}), and \
                 fields of it are masked by path: refused, as a lenient client would read \
                 them unmasked"
            ));
        }
        Err(_) if unreadable_text(&text) => {
            // Python's json reads UTF-16 and UTF-32 without a byte-order
            // mark (it guesses from the zero bytes), where the detectors,
            // reading UTF-8, find nothing.
            return Err(
                "the upstream's response is labelled JSON but is not UTF-8, and blastgate \
                 reads only UTF-8: refused, as a client that guesses the encoding would read it \
                 unmasked"
                    .into(),
            );
        }
        Err(_) => {
            // Labelled JSON but not JSON: nothing to mask by path; the
            // detectors still run over the text.
            let (masked, fields) = match plan {
                Some(p) => p.scan(&String::from_utf8_lossy(&text)),
                None => (String::from_utf8_lossy(&text).into_owned(), 0),
            };
            return Ok(finish(headers, Bytes::from(masked), fields));
        }
    };
    let out = masked.map_or(text, Bytes::from);
    Ok(finish(headers, out, fields))
}

/// Documents this large are masked on the blocking pool: a session
/// thread runs many sessions, which must not wait behind one
/// connection's masking of megabytes.
const OFF_THREAD_BYTES: usize = 64 << 10;

/// [`json_doc`], owned: the masked bytes (`None` when nothing was masked)
/// and how many values were. Large documents are masked off the session's
/// thread. `Err` only when the blocking pool failed.
pub async fn mask_doc(
    plan: Option<&MaskPlan>,
    secrets: bool,
    text: Bytes,
) -> Result<Result<(Option<Vec<u8>>, u64), NotJson>, String> {
    fn owned(m: Result<MaskedJson<'_>, NotJson>) -> Result<(Option<Vec<u8>>, u64), NotJson> {
        m.map(|MaskedJson { body, fields }| {
            let masked = match body {
                Cow::Owned(masked) => Some(masked),
                Cow::Borrowed(_) => None,
            };
            (masked, fields)
        })
    }
    if text.len() < OFF_THREAD_BYTES {
        return Ok(owned(json_doc(plan, secrets, &text)));
    }
    let plan = plan.cloned();
    tokio::task::spawn_blocking(move || owned(json_doc(plan.as_ref(), secrets, &text)))
        .await
        .map_err(|e| format!("masking the response: {e}"))
}

/// One JSON document masked by the session's rules (`plan`, in one pass
/// over the bytes) and, for Kubernetes Secrets (`secrets`), every Secret
/// value: the bytes as they came when nothing was masked. `NotJson` when
/// serde_json would not read it (the caller masks it as text, or refuses
/// it).
pub fn json_doc<'a>(
    plan: Option<&MaskPlan>,
    secrets: bool,
    text: &'a [u8],
) -> Result<MaskedJson<'a>, NotJson> {
    let mut masked = plan.unwrap_or(&MaskPlan::default()).mask_json_bytes(text)?;
    if secrets {
        // Secret responses are small and rare: the tree walk is fine.
        let mut doc =
            serde_json::from_slice::<serde_json::Value>(&masked.body).map_err(|_| NotJson {
                at: 0,
                why: "a masked document did not read back",
            })?;
        let n = secret_values(&mut doc);
        if n > 0 {
            masked.fields += n;
            masked.body = Cow::Owned(doc.to_string().into_bytes());
        }
    }
    Ok(masked)
}

/// Text the detectors cannot read as a client would: not UTF-8, or with
/// NUL bytes (ASCII in UTF-16 is valid UTF-8, a NUL beside each
/// character; no JSON holds a raw NUL).
pub fn unreadable_text(text: &[u8]) -> bool {
    text.contains(&0) || std::str::from_utf8(text).is_err()
}

fn finish(headers: &mut HeaderMap, body: Bytes, fields: u64) -> Outcome {
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Outcome::Masked {
        body: Full::new(body).map_err(|never| match never {}).boxed(),
        fields,
    }
}

/// What a masked Secret `data` value becomes: `****`, base64-encoded as
/// every `data` value must be, so typed clients (client-go, the Python
/// client) still decode the object and show `****`.
pub const SECRET_DATA_MASK: &str = "KioqKg==";

/// The annotation `kubectl apply` keeps the whole applied object in, as a
/// JSON string: for a Secret, its values too.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How deep annotations holding objects holding annotations are followed.
const MAX_NESTING: usize = 8;

/// Replaces every value of a Secret's `data` (with [`SECRET_DATA_MASK`])
/// and `stringData` (with `****`), wherever a response carries Secrets: a
/// single object, a list's `items`, a watch event's `object`, or a
/// `Table`'s `rows[].object` (which holds whole objects when the client
/// asks for `includeObject=Object`, and metadata otherwise) — and inside
/// annotations that hold a JSON copy of the object ([`LAST_APPLIED`], or
/// any other annotation whose value is JSON).
pub fn secret_values(doc: &mut serde_json::Value) -> u64 {
    secret_values_within(doc, MAX_NESTING)
}

fn secret_values_within(doc: &mut serde_json::Value, depth: usize) -> u64 {
    use serde_json::Value;
    let mut n = 0;
    let mut one = |obj: &mut Value| {
        for (field, mask) in [("data", SECRET_DATA_MASK), ("stringData", "****")] {
            if let Some(Value::Object(map)) = obj.get_mut(field) {
                for v in map.values_mut() {
                    *v = Value::String(mask.into());
                    n += 1;
                }
            }
        }
        if let Some(Value::Object(notes)) = obj.pointer_mut("/metadata/annotations") {
            for (key, note) in notes.iter_mut() {
                n += annotation(key, note, depth);
            }
        }
    };
    for list in ["items", "rows"] {
        if let Some(Value::Array(entries)) = doc.get_mut(list) {
            for e in entries.iter_mut() {
                match e.get_mut("object") {
                    Some(obj) if list == "rows" => one(obj),
                    _ => one(e),
                }
            }
        }
    }
    if let Some(obj) = doc.get_mut("object") {
        one(obj);
    }
    one(doc);
    n
}

/// Masks the Secret values inside one annotation of a Secret whose value
/// is a JSON document. [`LAST_APPLIED`] is replaced whole when it cannot
/// be read (too deep, or not JSON), since it may hold the values.
fn annotation(key: &str, note: &mut serde_json::Value, depth: usize) -> u64 {
    use serde_json::Value;
    let Value::String(text) = note else {
        return 0;
    };
    let last_applied = key == LAST_APPLIED;
    let parsed = serde_json::from_str::<Value>(text)
        .ok()
        .filter(|d| d.is_object() || d.is_array());
    let masked = match parsed {
        Some(mut doc) if depth > 0 => {
            let n = secret_values_within(&mut doc, depth - 1);
            (n > 0).then(|| (doc.to_string(), n))
        }
        _ if last_applied => Some(("****".to_string(), 1)),
        _ => None,
    };
    match masked {
        Some((text, n)) => {
            *note = Value::String(text);
            n
        }
        None => 0,
    }
}

/// An `Accept` for Kubernetes requests whose answer is masked that only
/// admits JSON: the agent's own JSON choices are kept, protobuf and YAML
/// are dropped, as blastgate can mask only what it can read. A Table
/// (`as=Table`) is kept only with `tables`.
pub fn json_only_accept(agent: Option<&HeaderValue>, tables: bool) -> HeaderValue {
    let kept: Vec<&str> = agent
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|m| {
            let mut params = m.split(';');
            let media = params.next().unwrap_or("").trim();
            let table = params.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("as") && v.trim().eq_ignore_ascii_case("table")
                })
            });
            media.eq_ignore_ascii_case("application/json") && (tables || !table)
        })
        .collect();
    if kept.is_empty() {
        return HeaderValue::from_static("application/json");
    }
    HeaderValue::from_str(&kept.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_static("application/json"))
}

/// What was read, then the rest as it comes.
pub fn rejoin(head: Bytes, rest: Option<Body>) -> Body {
    Rejoined {
        head: Some(head),
        rest,
    }
    .boxed()
}

struct Rejoined {
    head: Option<Bytes>,
    rest: Option<Body>,
}

impl hyper::body::Body for Rejoined {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(head))));
        }
        match self.rest.as_mut() {
            Some(rest) => std::pin::Pin::new(rest).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use http::HeaderValue;

    use super::{json_only_accept, secret_values, LAST_APPLIED, SECRET_DATA_MASK};

    #[test]
    fn secret_values_are_masked_in_objects_lists_tables_and_watch_events() {
        let mut one = json!({"kind": "Secret", "data": {"password": "czNjcmV0", "user": "YXBw"}, "stringData": {"x": "y"}});
        assert_eq!(secret_values(&mut one), 3);
        assert_eq!(one["data"]["password"], SECRET_DATA_MASK);
        assert_eq!(one["stringData"]["x"], "****");
        let mut list =
            json!({"kind": "SecretList", "items": [{"data": {"a": "b"}}, {"data": {"c": "d"}}]});
        assert_eq!(secret_values(&mut list), 2);
        assert_eq!(list["items"][1]["data"]["c"], SECRET_DATA_MASK);
        let mut event = json!({"type": "ADDED", "object": {"data": {"a": "b"}}});
        assert_eq!(secret_values(&mut event), 1);
        let mut table = json!({"kind": "Table", "rows": [{"cells": ["x"], "object": {"kind": "Secret", "data": {"a": "b"}}}]});
        assert_eq!(secret_values(&mut table), 1);
        assert_eq!(table["rows"][0]["object"]["data"]["a"], SECRET_DATA_MASK);
        let mut plain = json!({"kind": "Status"});
        assert_eq!(secret_values(&mut plain), 0);
    }

    #[test]
    fn secret_values_are_masked_inside_the_last_applied_annotation() {
        let applied = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"password": "czNjcmV0LXB3"}, "stringData": {"token": "t0ps3cret"}});
        let secret = json!({"kind": "Secret", "metadata": {"name": "db", "annotations": {
            LAST_APPLIED: applied.to_string(), "team": "payments", "other": "{\"data\":{\"k\":\"czNj\"}}"}},
            "data": {"password": "czNjcmV0LXB3"}});
        // A single object, a list, a watch event, a table row of metadata.
        let mut docs = [
            secret.clone(),
            json!({"kind": "SecretList", "items": [secret.clone()]}),
            json!({"type": "MODIFIED", "object": secret.clone()}),
            json!({"kind": "Table", "rows": [{"cells": ["db"], "object": {"kind": "PartialObjectMetadata", "metadata": secret["metadata"].clone()}}]}),
        ];
        for doc in docs.iter_mut() {
            assert!(secret_values(doc) >= 3, "{doc}");
            let text = doc.to_string();
            for value in ["czNjcmV0LXB3", "t0ps3cret", "czNj"] {
                assert!(!text.contains(value), "{text}");
            }
            assert!(text.contains("payments"), "{text}");
        }
        // Still JSON kubectl can read back.
        let note = docs[0]["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap();
        let back: serde_json::Value = serde_json::from_str(note).unwrap();
        assert_eq!(back["data"]["password"], SECRET_DATA_MASK);
        assert_eq!(back["metadata"]["name"], "db");
        // Unreadable, it goes whole.
        let mut odd = json!({"metadata": {"annotations": {LAST_APPLIED: "{not json czNj"}}});
        assert_eq!(secret_values(&mut odd), 1);
        assert_eq!(odd["metadata"]["annotations"][LAST_APPLIED], "****");
        // Nested copies are followed, then cut.
        let mut nested = secret.clone();
        for _ in 0..12 {
            nested = json!({"metadata": {"annotations": {LAST_APPLIED: nested.to_string()}}});
        }
        secret_values(&mut nested);
        assert!(!nested.to_string().contains("czNjcmV0LXB3"));
    }

    /// Red team (leak, detectors): `json_body` refuses "a body labelled JSON
    /// that is not UTF-8 (UTF-16 that Python's json guesses)" by asking
    /// `std::str::from_utf8`. But UTF-16 of ASCII text (every key, token
    /// and card number) *is* valid UTF-8: a NUL after each byte. So the
    /// refusal never fires; the body falls to the text scan, where the
    /// detectors read `A\0K\0I\0A\0…` and mask nothing, while Python's
    /// `json.loads(r.content)` guesses UTF-16 from the NULs and reads the
    /// AWS key. ASP.NET Core answers `application/json; charset=utf-16`
    /// (UTF-16LE, no BOM) to `Accept-Charset: utf-16`. This replays
    /// `json_body`'s steps for a target with detectors only (the shipped
    /// rules for any HTTPS target).
    #[test]
    fn red_team_utf16_json_is_refused_or_masked() {
        let plan = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            include_str!("../../../../policies/masking.toml"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .plan("agent", "billing-api");
        assert!(!plan.has_json_paths());
        let body: Vec<u8> = r#"{"aws_access_key_id":"AKIAIOSFODNN7EXAMPLE"}"#
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        // What Python reads.
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert!(String::from_utf16(&units)
            .unwrap()
            .contains("AKIAIOSFODNN7EXAMPLE"));
        // json_body: not JSON to serde ...
        assert!(super::json_doc(Some(&plan), false, &body).is_err());
        // ... and refused when the text is unreadable:
        let refused = super::unreadable_text(&body);
        // ... else scanned as text.
        let (masked, n) = plan.scan(&String::from_utf8_lossy(&body));
        assert!(
            refused || n > 0,
            "UTF-16 JSON passed the UTF-8 check and the detectors found nothing: {masked:?}"
        );
    }

    /// Red team (leak): the same fields as a JSON string. `kubectl apply`
    /// keeps the whole applied object in the
    /// `kubectl.kubernetes.io/last-applied-configuration` annotation, on
    /// every kind (ConfigMaps, Deployments with their `env`, CRDs). Secrets
    /// have their values masked in it (`secret_values`), but a field rule's
    /// JSON paths never look inside it: the ConfigMap the commit's own e2e
    /// test masks (`$..data.FEATURE_FLAGS`) hands the value over in its
    /// annotation to `kubectl get cm settings -o json` (or `-o
    /// jsonpath='{.metadata.annotations.*}'`).
    #[test]
    fn red_team_path_rules_reach_into_the_last_applied_annotation() {
        let plan = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            "[[field]]\nid = \"flags\"\ntargets = [\"prod-cluster\"]\n\
             json_paths = [\"$..data.FEATURE_FLAGS\"]\nstyle = \"fixed\"\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .plan("agent", "prod-cluster");
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "prod"},
            "data": {"FEATURE_FLAGS": "checkout-v2", "LOG_LEVEL": "info"}});
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "prod",
                "annotations": {LAST_APPLIED: applied.to_string()}},
            "data": {"FEATURE_FLAGS": "checkout-v2", "LOG_LEVEL": "info"}})
        .to_string();
        let out = super::json_doc(Some(&plan), false, cm.as_bytes()).expect("JSON");
        let out = String::from_utf8_lossy(&out.body).to_string();
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_ne!(doc["data"]["FEATURE_FLAGS"], "checkout-v2");
        assert!(
            !out.contains("checkout-v2"),
            "the masked field is in the last-applied annotation: {out}"
        );
    }

    #[test]
    fn secret_requests_accept_only_json() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json";
        assert_eq!(json_only_accept(Some(&v(table)), true), table);
        // Under path rules a Table's cells are fields with no path.
        assert_eq!(json_only_accept(Some(&v(table)), false), "application/json");
        assert_eq!(
            json_only_accept(
                Some(&v("application/json;as=Table;v=v1;g=meta.k8s.io")),
                false
            ),
            "application/json"
        );
        assert_eq!(
            json_only_accept(
                Some(&v("application/vnd.kubernetes.protobuf, application/json")),
                true
            ),
            "application/json"
        );
        assert_eq!(
            json_only_accept(Some(&v("application/yaml")), true),
            "application/json"
        );
        assert_eq!(json_only_accept(None, true), "application/json");
    }

    /// Red team (fidelity): a gzip body is unpacked for masking with
    /// `flate2::read::GzDecoder`, which reads the first gzip member only
    /// (the credential guard's `echo::unpack` uses `MultiGzDecoder`).
    /// A file made of several members (`gzip -c part >> file.json.gz`,
    /// log shippers and streaming writers that close a member per flush,
    /// served by S3 or nginx `gzip_static` with `Content-Encoding: gzip`)
    /// is every member to curl, Python and browsers; through blastgate it
    /// is the first member alone, with a fresh Content-Length and a 200:
    /// silently truncated. Here the shipped detectors on a target without
    /// an injected credential (no guard to unpack it first).
    #[tokio::test]
    async fn red_team_a_gzip_body_of_several_members_is_masked_whole() {
        use std::io::Write;
        let plan = crate::policy::masking::Masking::parse(
            std::path::Path::new("masking.toml"),
            include_str!("../../../../policies/masking.toml"),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .plan("agent", "files");
        let member = |text: &str| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(text.as_bytes()).unwrap();
            e.finish().unwrap()
        };
        let whole = r#"[{"id":1,"name":"first"},{"id":2,"name":"second"}]"#;
        let body = [
            member(r#"[{"id":1,"name":"first"},"#),
            member(r#"{"id":2,"name":"second"}]"#),
        ]
        .concat();
        let (parts, incoming) = super::super::test_upstream::incoming(
            vec![
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            vec![bytes::Bytes::from(body)],
        )
        .await;
        let mut headers = parts.headers;
        let sent = match super::json_body(
            Some(&plan),
            false,
            &mut headers,
            http_body_util::BodyExt::boxed(incoming),
            1 << 20,
        )
        .await
        {
            Ok(super::Outcome::Masked { body, .. }) => {
                let bytes = http_body_util::BodyExt::collect(body)
                    .await
                    .expect("body")
                    .to_bytes();
                String::from_utf8_lossy(&bytes).to_string()
            }
            Ok(_) => "too big".to_string(),
            Err(why) => format!("refused: {why}"),
        };
        assert_eq!(sent, whole, "the agent got {sent:?}");
    }
}

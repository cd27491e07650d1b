//! Method-override conventions: many web frameworks run a `POST` as the
//! method named in `X-HTTP-Method-Override` (and its siblings), a
//! `_method` query parameter, or a `_method` form field. A policy that
//! allows POST and holds DELETE would be sidestepped by
//! `POST` + `X-HTTP-Method-Override: DELETE`, so a request that asks for
//! another method is decided as that method too (and as the one it was
//! sent with: blastgate cannot know which the upstream honours).

use http::{HeaderMap, Method};

/// Headers frameworks read the method from (Google, Microsoft, Rails,
/// Symfony, Express method-override).
pub const HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The form/query field frameworks read the method from.
const FIELD: &str = "_method";

/// Where an override was asked for, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub method: Method,
    pub from: String,
}

/// The method a request asks to be run as, from its headers and query;
/// `Err` when it asks for several different ones or one that is not a
/// method (both refused: the upstream's reading cannot be known).
pub fn requested(headers: &HeaderMap, query: &str) -> Result<Option<Override>, String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for (name, v) in headers {
        // CGI-style servers (PHP, Rack, WSGI) read `X_HTTP_METHOD_OVERRIDE`
        // as the same variable as `X-HTTP-Method-Override`.
        let dashed = name.as_str().replace('_', "-");
        if HEADERS.contains(&dashed.as_str()) {
            let v = v
                .to_str()
                .map_err(|_| format!("{name}: not a method"))?
                .to_string();
            found.push((v, name.to_string()));
        }
    }
    for (k, v) in form_pairs(query.as_bytes()) {
        if names_field(&k) {
            found.push((v, format!("query {k}")));
        }
    }
    pick(found)
}

/// Whether a form or query key is read as `_method` by some framework:
/// PHP drops leading spaces and turns `.`, ` ` and an unclosed `[` into
/// `_`; PHP, Express's qs and Rack 3 take `_method[…]` as `_method` (an
/// array whose first value Express uses); Rack 2 drops brackets around a
/// key (`[_method]`). Case is ignored: stricter than any of them.
fn names_field(key: &str) -> bool {
    let is = |k: &str| k.eq_ignore_ascii_case(FIELD);
    // PHP: the name before a closed `[…]`, mangled.
    let php = key.trim_start_matches(' ');
    let php = match php.find('[') {
        Some(i) if php[i..].contains(']') => &php[..i],
        _ => php,
    };
    let php = php.replace([' ', '.', '['], "_");
    // Rack 2: the first run of non-bracket characters after leading ones.
    let rack = key.trim_start_matches(['[', ']']);
    let rack = rack.split(['[', ']']).next().unwrap_or_default();
    is(key) || is(&php) || is(rack) || is(key.split('[').next().unwrap_or_default())
}

/// The body kinds frameworks read a `_method` field from, for a POST
/// with these headers (every Content-Type line, as servers differ on
/// which they use); empty when the body cannot name a method.
pub fn body_kinds(headers: &HeaderMap) -> Vec<BodyKind> {
    let types: Vec<&[u8]> = headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if types.is_empty() {
        // Rack parses a POST body with no Content-Type as a form.
        return vec![BodyKind::Urlencoded];
    }
    let mut kinds = Vec::new();
    for t in types {
        let t = String::from_utf8_lossy(t).to_ascii_lowercase();
        // Rack cuts the media type at `;` or `,`, PHP also at a space.
        let media = t
            .split([';', ',', ' ', '\t'])
            .find(|m| !m.is_empty())
            .unwrap_or_default();
        let kind = match media {
            "application/x-www-form-urlencoded" => Some(BodyKind::Urlencoded),
            "multipart/form-data" => Some(BodyKind::Multipart),
            // Laravel reads a JSON body as the request's fields when the
            // Content-Type merely contains `/json` or `+json`.
            _ if t.contains("/json") || t.contains("+json") => Some(BodyKind::Json),
            _ => None,
        };
        if let Some(k) = kind.filter(|k| !kinds.contains(k)) {
            kinds.push(k);
        }
    }
    kinds
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Urlencoded,
    /// Not parsed: a `_method` part in it is refused outright.
    Multipart,
    Json,
}

/// The method a POST body of these kinds asks for in its `_method` field.
pub fn from_body(kinds: &[BodyKind], body: &[u8]) -> Result<Option<Override>, String> {
    let mut found = Vec::new();
    for kind in kinds {
        match kind {
            BodyKind::Urlencoded => found.extend(
                form_pairs(body)
                    .filter(|(k, _)| names_field(k))
                    .map(|(k, v)| (v, format!("form field {k}"))),
            ),
            BodyKind::Multipart if multipart_names_field(body) => {
                return Err(
                    "a multipart form with a _method part is refused: blastgate does not read which method it names".into(),
                )
            }
            BodyKind::Multipart => {}
            BodyKind::Json => found.extend(json_field(body)?),
        }
    }
    pick(found)
}

/// A top-level `_method` member of a JSON object body (what Laravel and
/// Express's custom getters read); a body that is not JSON names none.
fn json_field(body: &[u8]) -> Result<Option<(String, String)>, String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return Ok(None);
    };
    for (k, v) in &map {
        if k.eq_ignore_ascii_case(FIELD) {
            return match v {
                serde_json::Value::String(m) => Ok(Some((m.clone(), format!("JSON member {k}")))),
                other => Err(format!(
                    "the JSON member {k} is {other}, not a method name: refused"
                )),
            };
        }
    }
    Ok(None)
}

/// Whether a multipart body names a part that some framework reads as
/// `_method`: every `name=` / `name*=` parameter anywhere in the body (a
/// superset of the part headers a server parses), quoted or not.
fn multipart_names_field(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = find(&lower[at..], b"name") {
        let mut j = at + i + 4;
        at = j;
        let extended = lower.get(j) == Some(&b'*');
        if extended {
            j += 1;
        }
        while lower.get(j).is_some_and(|b| *b == b' ' || *b == b'\t') {
            j += 1;
        }
        if lower.get(j) != Some(&b'=') {
            continue;
        }
        j += 1;
        while lower.get(j).is_some_and(|b| *b == b' ' || *b == b'\t') {
            j += 1;
        }
        let rest = &body[j..];
        let value = match rest.first() {
            Some(b'"') => rest[1..].split(|b| *b == b'"').next(),
            _ => rest.split(|b| b";\r\n".contains(b)).next(),
        }
        .unwrap_or_default();
        let value = if extended {
            // RFC 2231: charset'language'percent-encoded.
            let v = value.rsplit(|b| *b == b'\'').next().unwrap_or_default();
            decode(v)
        } else {
            String::from_utf8_lossy(value).into_owned()
        };
        if names_field(&value) {
            return true;
        }
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Methods that send the request back as the upstream received it, with
/// the credential blastgate injected: TRACE, IIS's TRACK, in any case
/// (servers that fold method case run `trace` as TRACE).
pub fn echoes(method: &Method) -> bool {
    ["TRACE", "TRACK"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m))
}

fn pick(found: Vec<(String, String)>) -> Result<Option<Override>, String> {
    let mut chosen: Option<Override> = None;
    for (value, from) in found {
        let upper = value.trim().to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes())
            .map_err(|_| format!("{from} asks for {value:?}, which is not a method"))?;
        match &chosen {
            Some(c) if c.method != method => {
                return Err(format!(
                    "the request asks to be run as {} ({}) and as {method} ({from})",
                    c.method, c.from
                ))
            }
            Some(_) => {}
            None => chosen = Some(Override { method, from }),
        }
    }
    Ok(chosen)
}

/// `k=v&k2=v2`, percent- and plus-decoded, as frameworks read forms.
fn form_pairs(text: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    text.split(|&b| b == b'&' || b == b';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (decode(k), decode(v))
        })
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_spelling_of_an_override_is_read() {
        for (h, q) in [
            (vec![("X-HTTP-Method-Override", "DELETE")], ""),
            (vec![("x-http-method", "delete")], ""),
            (vec![("X-Method-Override", " Delete ")], ""),
            (vec![], "_method=DELETE"),
            (vec![], "a=1&_METHOD=delete"),
            (vec![], "_method=%44ELETE"),
        ] {
            let got = requested(&headers(&h), q).unwrap().unwrap();
            assert_eq!(got.method, Method::DELETE, "{h:?} {q}");
        }
        assert_eq!(
            from_body(&[BodyKind::Urlencoded], b"name=x&_method=PUT")
                .unwrap()
                .unwrap()
                .method,
            Method::PUT
        );
    }

    #[test]
    fn conflicting_or_invalid_overrides_are_refused() {
        let h = headers(&[
            ("X-HTTP-Method-Override", "GET"),
            ("X-HTTP-Method", "DELETE"),
        ]);
        assert!(requested(&h, "").is_err());
        assert!(requested(&headers(&[("x-http-method", "GET")]), "_method=DELETE").is_err());
        assert!(requested(&headers(&[("x-http-method", "DE LETE")]), "").is_err());
        // The same method twice is one request.
        let h = headers(&[("X-HTTP-Method-Override", "PUT"), ("X-HTTP-Method", "put")]);
        assert_eq!(requested(&h, "").unwrap().unwrap().method, Method::PUT);
    }

    #[test]
    fn framework_spellings_of_the_field_and_header_are_read() {
        for q in [
            "_method[]=DELETE",
            "_method[0]=DELETE",
            ".method=DELETE",
            "%20_method=DELETE",
            "[method=DELETE",
            "[_method]=DELETE",
        ] {
            let got = requested(&HeaderMap::new(), q).unwrap();
            assert_eq!(got.map(|o| o.method), Some(Method::DELETE), "{q}");
        }
        let got = requested(&headers(&[("X_HTTP_Method_Override", "DELETE")]), "").unwrap();
        assert_eq!(got.map(|o| o.method), Some(Method::DELETE));
        let json = [BodyKind::Json];
        let got = from_body(&json, br#"{"a":1,"_method":"delete"}"#).unwrap();
        assert_eq!(got.map(|o| o.method), Some(Method::DELETE));
        assert!(from_body(&json, br#"{"_method":["DELETE"]}"#).is_err());
        let multipart = [BodyKind::Multipart];
        for body in [
            &b"Content-Disposition: form-data; name=\".method\"\r\n\r\nDELETE"[..],
            b"Content-Disposition: form-data; name=_method\r\n\r\nDELETE",
            b"Content-Disposition: form-data; name*=utf-8''%5Fmethod\r\n\r\nDELETE",
        ] {
            assert!(from_body(&multipart, body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn body_kinds_follow_the_laxest_server() {
        let kinds = |ct: &[&str]| {
            let pairs: Vec<(&str, &str)> = ct.iter().map(|c| ("content-type", *c)).collect();
            body_kinds(&headers(&pairs))
        };
        assert_eq!(kinds(&[]), vec![BodyKind::Urlencoded]);
        assert_eq!(
            kinds(&["application/x-www-form-urlencoded, text/plain"]),
            vec![BodyKind::Urlencoded]
        );
        assert_eq!(kinds(&["text/json"]), vec![BodyKind::Json]);
        assert_eq!(
            kinds(&["text/plain", "multipart/form-data; boundary=x"]),
            vec![BodyKind::Multipart]
        );
        assert!(kinds(&["text/plain"]).is_empty());
        assert!(kinds(&["application/octet-stream"]).is_empty());
    }

    #[test]
    fn echoing_methods_in_any_case() {
        for m in ["TRACE", "trace", "Track"] {
            assert!(echoes(&Method::from_bytes(m.as_bytes()).unwrap()), "{m}");
        }
        assert!(!echoes(&Method::OPTIONS));
    }

    #[test]
    fn look_alikes_are_not_overrides() {
        assert_eq!(
            requested(
                &HeaderMap::new(),
                "payment_method=DELETE&a.method=x&a_method=y"
            )
            .unwrap(),
            None
        );
        assert_eq!(
            requested(&headers(&[("x_request_id", "DELETE")]), "").unwrap(),
            None
        );
        let body = b"Content-Disposition: form-data; name=\"payment_method\"\r\n\r\n_method";
        assert_eq!(from_body(&[BodyKind::Multipart], body).unwrap(), None);
        let json = br#"{"method":"DELETE","payment_method":"x","note":"_method"}"#;
        assert_eq!(from_body(&[BodyKind::Json], json).unwrap(), None);
        assert_eq!(
            requested(&headers(&[("x-method", "DELETE")]), "method=DELETE").unwrap(),
            None
        );
        assert_eq!(
            requested(&HeaderMap::new(), "_methods=DELETE").unwrap(),
            None
        );
    }
}

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
    for name in HEADERS {
        for v in headers.get_all(*name) {
            let v = v
                .to_str()
                .map_err(|_| format!("{name}: not a method"))?
                .to_string();
            found.push((v, (*name).to_string()));
        }
    }
    for (k, v) in form_pairs(query.as_bytes()) {
        if k.eq_ignore_ascii_case(FIELD) {
            found.push((v, format!("query {FIELD}")));
        }
    }
    pick(found)
}

/// The method a urlencoded form body asks for in its `_method` field.
pub fn from_form(body: &[u8]) -> Result<Option<Override>, String> {
    let found = form_pairs(body)
        .filter(|(k, _)| k.eq_ignore_ascii_case(FIELD))
        .map(|(_, v)| (v, format!("form field {FIELD}")))
        .collect();
    pick(found)
}

/// Whether a request body may carry a `_method` field a framework reads.
pub fn form_kind(headers: &HeaderMap) -> Option<FormKind> {
    let media = super::mask::media_type(headers)?;
    match media.as_str() {
        "application/x-www-form-urlencoded" => Some(FormKind::Urlencoded),
        "multipart/form-data" => Some(FormKind::Multipart),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormKind {
    Urlencoded,
    /// Not parsed: a `_method` part in it is refused outright.
    Multipart,
}

/// Whether a multipart body names a `_method` part (in any quoting).
pub fn multipart_names_field(body: &[u8]) -> bool {
    let lower = body.to_ascii_lowercase();
    let needle = FIELD.as_bytes();
    lower.windows(needle.len()).any(|w| w == needle)
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
            from_form(b"name=x&_method=PUT").unwrap().unwrap().method,
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
    fn look_alikes_are_not_overrides() {
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

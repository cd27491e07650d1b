//! Kubernetes write bodies decoded as the API server decodes them, so that
//! policy judges the object the server will store and not the bytes an
//! agent chose to send.
//!
//! The server picks a decoder from `Content-Type`, two different ways:
//!
//! - create and update (POST, PUT) negotiate a serializer: the media type
//!   before `;`, trimmed and lower-cased (Go's `mime.ParseMediaType`),
//!   `application/json` when there is none; JSON, YAML (sigs.k8s.io/yaml,
//!   that is go-yaml v2 turned into JSON) or protobuf;
//! - patch (k8s.io/apiserver `handlers/patch.go`) cuts at the first `;`
//!   and compares what is left, as it is, with the four patch types; the
//!   apply patch is YAML (which JSON also is), the other three JSON.
//!
//! Wherever blastgate could read a body differently from the server (a
//! media type it cannot read, protobuf, YAML that YAML 1.1 and this
//! decoder could disagree on), the answer is [`Body::Unreadable`]: the
//! caller holds such a write, never passes it.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::TScalarStyle,
};

/// How the server applies a write body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole object (create, update).
    Object,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`: a merge patch with
    /// `$patch`, `$retainKeys`, `$setElementOrder/…` directives.
    Strategic,
    /// `application/json-patch+json` (RFC 6902).
    JsonPatch,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

/// What a write body is, once decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Decoded; `yaml` tells which decoder read it.
    Read { kind: Kind, doc: Value, yaml: bool },
    /// Not readable here; the reason is for the record.
    Unreadable(String),
}

/// The patch types the server accepts, by their exact names.
const PATCH_TYPES: &[(&str, Kind)] = &[
    ("application/json-patch+json", Kind::JsonPatch),
    ("application/merge-patch+json", Kind::Merge),
    ("application/strategic-merge-patch+json", Kind::Strategic),
    ("application/apply-patch+yaml", Kind::Apply),
];

/// Nesting past which a body is not followed (serde_json stops at 128).
const MAX_DEPTH: usize = 128;

/// Decodes the body of a `create`, `update` or `patch` (None for other
/// verbs). `content_type` is the raw header, None when absent.
pub fn decode(verb: &str, content_type: Option<&[u8]>, body: &[u8]) -> Option<Body> {
    let header = match content_type.map(std::str::from_utf8) {
        None => None,
        Some(Ok(text)) => Some(text),
        Some(Err(_)) => {
            return Some(Body::Unreadable(
                "the Content-Type header is not text".into(),
            ))
        }
    };
    let (kind, yaml) = match verb {
        "create" | "update" => match object_media_type(header) {
            Ok(yaml) => (Kind::Object, yaml),
            Err(why) => return Some(Body::Unreadable(why)),
        },
        "patch" => match patch_kind(header) {
            Some(kind) => (kind, kind == Kind::Apply),
            None => {
                return Some(Body::Unreadable(format!(
                    "{:?} is not a patch type the API server applies",
                    header.unwrap_or("")
                )))
            }
        },
        _ => return None,
    };
    // Nothing to decode (an exec's POST, a bodiless create): the server
    // changes nothing from it, or refuses it.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Body::Read {
            kind,
            doc: Value::Null,
            yaml,
        });
    }
    let doc = if yaml {
        std::str::from_utf8(body)
            .map_err(|_| "the YAML body is not UTF-8".to_string())
            .and_then(yaml_to_json)
    } else {
        serde_json::from_slice::<Unique>(body)
            .map(|u| u.0)
            .map_err(|e| format!("the JSON body does not parse: {e}"))
    };
    Some(match doc {
        Ok(doc) => Body::Read { kind, doc, yaml },
        Err(why) => Body::Unreadable(why),
    })
}

/// A JSON document in which no object has a key twice. Go decodes a
/// repeated key into a struct field by merging both values (so
/// `{"metadata":{"ownerReferences":[…]},"metadata":{"name":"x"}}` keeps
/// the owner), where serde_json keeps only the last: such a body could
/// mean two things, and is refused.
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("the key {key:?} appears twice")));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// The serializer a create or update is decoded with: `Ok(true)` for
/// YAML, `Ok(false)` for JSON.
fn object_media_type(header: Option<&str>) -> Result<bool, String> {
    let Some(header) = header.filter(|h| !h.is_empty()) else {
        return Ok(false);
    };
    let media = header
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(false),
        "application/yaml" => Ok(true),
        "application/vnd.kubernetes.protobuf" | "application/cbor" => {
            Err(format!("the body is {media}, which blastgate cannot read"))
        }
        _ => Err(format!("{media:?} is not a type the API server decodes")),
    }
}

/// The patch type as `handlers/patch.go` reads it: cut at a `;` that is
/// not the first character, compared exactly (no trimming, no case
/// folding: `application/apply-patch+yaml ` is refused there).
fn patch_kind(header: Option<&str>) -> Option<Kind> {
    let header = header.unwrap_or("");
    let media = match header.find(';') {
        Some(i) if i > 0 => &header[..i],
        _ => header,
    };
    PATCH_TYPES
        .iter()
        .find(|(name, _)| *name == media)
        .map(|(_, kind)| *kind)
}

/// One YAML document as sigs.k8s.io/yaml turns it into JSON, or why it
/// could be read differently there. Refused: tags, anchors and aliases,
/// merge keys (`<<`), duplicate keys, keys that are not strings, several
/// documents, and plain scalars that YAML 1.1 (go-yaml v2) reads as
/// something other than they look (`yes`, `on`, `0755`, `0x1F`, `1_000`,
/// `.inf`, timestamps).
pub fn yaml_to_json(text: &str) -> Result<Value, String> {
    enum Frame {
        Seq(Vec<Value>),
        Map(Map<String, Value>, Option<String>),
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Value> = None;
    let mut documents = 0;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| format!("the YAML body does not parse: {e}"))?;
        let at = || format!("line {}", mark.line());
        let value = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err("the YAML body holds several documents".into());
                }
                continue;
            }
            Event::Alias(_) => return Err(format!("YAML alias at {}", at())),
            Event::Scalar(_, _, anchor, tag)
            | Event::SequenceStart(anchor, tag)
            | Event::MappingStart(anchor, tag)
                if anchor != 0 || tag.is_some() =>
            {
                return Err(format!("YAML anchor or tag at {}", at()));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if matches!(stack.last(), Some(Frame::Map(_, None))) {
                    return Err(format!("a YAML key that is not a string at {}", at()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err("the YAML body nests too deep".into());
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq(Vec::new())
                } else {
                    Frame::Map(Map::new(), None)
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items)) => Value::Array(items),
                Some(Frame::Map(map, None)) => Value::Object(map),
                _ => return Err(format!("unbalanced YAML at {}", at())),
            },
            Event::Scalar(text, style, _, _) => {
                if let Some(Frame::Map(map, pending @ None)) = stack.last_mut() {
                    let key = match style {
                        TScalarStyle::Plain if text == "<<" => {
                            return Err(format!("YAML merge key at {}", at()))
                        }
                        TScalarStyle::Plain => match plain(&text)? {
                            Value::String(s) => s,
                            _ => {
                                return Err(format!("a YAML key that is not a string at {}", at()))
                            }
                        },
                        _ => text,
                    };
                    if map.contains_key(&key) {
                        return Err(format!("duplicate YAML key {key:?} at {}", at()));
                    }
                    *pending = Some(key);
                    continue;
                }
                match style {
                    TScalarStyle::Plain => plain(&text).map_err(|e| format!("{e} at {}", at()))?,
                    _ => Value::String(text),
                }
            }
        };
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Seq(items)) => items.push(value),
            Some(Frame::Map(map, pending)) => match pending.take() {
                Some(key) => {
                    map.insert(key, value);
                }
                None => return Err(format!("a YAML key that is not a string at {}", at())),
            },
        }
    }
    Ok(root.unwrap_or(Value::Null))
}

/// A plain (unquoted) scalar as go-yaml v2 resolves it, where this
/// decoder can be sure of the answer.
fn plain(s: &str) -> Result<Value, String> {
    const AMBIGUOUS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ if AMBIGUOUS.contains(&s) => {
            return Err(format!("the YAML value {s:?} is a boolean in YAML 1.1"))
        }
        _ => {}
    }
    let first = s.as_bytes().first().copied().unwrap_or(b'x');
    // go-yaml only tries numbers and timestamps on these first characters.
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(n) = decimal(s) {
        return Ok(Value::Number(n));
    }
    if go_numeric(s) {
        return Err(format!(
            "the YAML value {s:?} is a number or time whose reading differs between YAML versions"
        ));
    }
    Ok(Value::String(s.to_string()))
}

/// Plain decimal numbers, which every YAML reads alike: `-12`, `0`,
/// `3.5`, `1.5e3`.
fn decimal(s: &str) -> Option<Number> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac_exp) = digits
        .find(['.', 'e', 'E'])
        .map_or((digits, ""), |i| digits.split_at(i));
    let int_ok = int == "0"
        || (!int.is_empty() && !int.starts_with('0') && int.bytes().all(|b| b.is_ascii_digit()));
    if !int_ok {
        return None;
    }
    if frac_exp.is_empty() {
        return s.parse::<i64>().ok().map(Number::from);
    }
    let (frac, exp) = frac_exp
        .find(['e', 'E'])
        .map_or((frac_exp, ""), |i| frac_exp.split_at(i));
    let frac_ok = frac.is_empty()
        || (frac.len() > 1
            && frac.starts_with('.')
            && frac[1..].bytes().all(|b| b.is_ascii_digit()));
    let exp_digits = exp
        .get(1..)
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    let exp_ok = exp.is_empty()
        || exp_digits.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if !(frac_ok && exp_ok) {
        return None;
    }
    s.parse::<f64>().ok().and_then(Number::from_f64)
}

/// Whether go-yaml v2 could read this as a number or a timestamp (Go's
/// `ParseInt`/`ParseFloat` with `_` removed, `0b…`, `YYYY-…`): an
/// over-approximation, as every "yes" here is refused.
fn go_numeric(s: &str) -> bool {
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let unsigned = plain.trim_start_matches(['+', '-']);
    let timestamp =
        s.len() > 4 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && s.as_bytes()[4] == b'-';
    let prefixed = ["0x", "0X", "0o", "0O", "0b", "0B"]
        .iter()
        .any(|p| unsigned.starts_with(p));
    let special = unsigned.to_ascii_lowercase();
    timestamp
        || prefixed
        || plain.parse::<f64>().is_ok()
        || [".inf", ".nan", "inf", "infinity", "nan"].contains(&special.as_str())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(verb: &str, ct: &str, body: &str) -> Body {
        decode(verb, Some(ct.as_bytes()), body.as_bytes()).unwrap()
    }

    fn doc(b: Body) -> Value {
        match b {
            Body::Read { doc, .. } => doc,
            Body::Unreadable(why) => panic!("unreadable: {why}"),
        }
    }

    fn unreadable(b: &Body) -> bool {
        matches!(b, Body::Unreadable(_))
    }

    #[test]
    fn object_media_types_are_parsed_like_mime_parse_media_type() {
        let yaml = "spec:\n  replicas: 0\n";
        for ct in [
            "application/yaml",
            "Application/YAML; charset=utf-8",
            "  application/yaml ;x=json",
        ] {
            assert_eq!(
                doc(read("create", ct, yaml)),
                json!({"spec": {"replicas": 0}}),
                "{ct}"
            );
        }
        // No type at all is JSON.
        let b = decode("update", None, br#"{"a":1}"#).unwrap();
        assert_eq!(doc(b), json!({"a": 1}));
        for ct in [
            "application/vnd.kubernetes.protobuf",
            "application/cbor",
            "text/plain",
            "application/json-patch+json",
        ] {
            assert!(unreadable(&read("create", ct, "{}")), "{ct}");
        }
        assert!(unreadable(
            &decode("create", Some(b"application/json\xff"), b"{}").unwrap()
        ));
        assert_eq!(decode("get", None, b""), None);
        // A key twice: Go merges both into a struct, serde keeps one.
        let twice = br#"{"metadata":{"ownerReferences":[{"uid":"x"}]},"metadata":{"name":"x"}}"#;
        assert!(unreadable(&decode("update", None, twice).unwrap()));
        let nested = br#"{"spec":{"replicas":3,"replicas":0}}"#;
        let merge = Some(&b"application/merge-patch+json"[..]);
        assert!(unreadable(&decode("patch", merge, nested).unwrap()));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(unreadable(
            &decode("update", None, deep.as_bytes()).unwrap()
        ));
        let empty = decode("create", None, b"").unwrap();
        assert_eq!(doc(empty), Value::Null);
        assert_eq!(decode("delete", None, b"{}"), None);
    }

    #[test]
    fn patch_types_are_matched_exactly_before_the_first_semicolon() {
        let kind = |ct: &str| match read("patch", ct, "{}") {
            Body::Read { kind, .. } => Some(kind),
            Body::Unreadable(_) => None,
        };
        assert_eq!(
            kind("application/apply-patch+yaml; x=json"),
            Some(Kind::Apply)
        );
        assert_eq!(
            kind("application/apply-patch+yaml;charset=utf-8"),
            Some(Kind::Apply)
        );
        assert_eq!(kind("application/merge-patch+json"), Some(Kind::Merge));
        assert_eq!(
            kind("application/strategic-merge-patch+json"),
            Some(Kind::Strategic)
        );
        assert_eq!(kind("application/json-patch+json"), Some(Kind::JsonPatch));
        // The server refuses these; so do we (held, never passed).
        assert_eq!(kind("Application/apply-patch+yaml"), None);
        assert_eq!(kind("application/apply-patch+yaml ; x"), None);
        assert_eq!(kind(";application/merge-patch+json"), None);
        assert_eq!(kind("application/json"), None);
        // The apply patch is YAML; the scale-to-zero bypass reads as YAML.
        let b = read(
            "patch",
            "application/apply-patch+yaml; x=json",
            "spec:\n  replicas: 0\n",
        );
        assert_eq!(doc(b), json!({"spec": {"replicas": 0}}));
        // A merge patch is JSON only.
        assert!(unreadable(&read(
            "patch",
            "application/merge-patch+json",
            "spec:\n  replicas: 0\n"
        )));
    }

    #[test]
    fn yaml_reads_json_and_block_styles() {
        let y = |s: &str| yaml_to_json(s);
        assert_eq!(
            y(r#"{"spec": {"replicas": 0, "x": [1, "a"]}}"#).unwrap(),
            json!({"spec": {"replicas": 0, "x": [1, "a"]}})
        );
        assert_eq!(
            y("a: 'x'\nb: \"y\\u00e9\"\nc: |\n  line\nd: -3\ne: 2.5\nf: null\ng:\nh: True\ni: nginx:1.27\nj: 1.27.3\n").unwrap(),
            json!({"a": "x", "b": "yé", "c": "line\n", "d": -3, "e": 2.5, "f": null, "g": null, "h": true, "i": "nginx:1.27", "j": "1.27.3"})
        );
        assert_eq!(y("---\nspec: {}\n...\n").unwrap(), json!({"spec": {}}));
        assert_eq!(y("").unwrap(), Value::Null);
        assert_eq!(y("'0755': '0x1F'").unwrap(), json!({"0755": "0x1F"}));
    }

    #[test]
    fn yaml_that_could_be_read_otherwise_is_refused() {
        for (text, why) in [
            (
                "spec:\n  replicas: 0\n---\nspec:\n  replicas: 3\n",
                "documents",
            ),
            ("a: &x 1\nb: *x\n", "anchor"),
            ("base: &b {replicas: 0}\nspec:\n  <<: *b\n", "anchor"),
            ("spec:\n  <<: {replicas: 0}\n", "merge"),
            ("spec:\n  replicas: !!int '0'\n", "tag"),
            ("spec: !Custom {}\n", "tag"),
            ("spec:\n  replicas: 3\n  replicas: 0\n", "duplicate"),
            ("spec:\n  replicas: 00\n", "number"),
            ("spec:\n  replicas: 0x0\n", "number"),
            ("spec:\n  replicas: 0o0\n", "number"),
            ("spec:\n  replicas: 0_0\n", "number"),
            ("spec:\n  replicas: +0\n", "number"),
            ("spec:\n  replicas: .inf\n", "number"),
            ("spec:\n  replicas: 0b0\n", "number"),
            ("when: 2001-12-14\n", "number"),
            ("privileged: yes\n", "boolean"),
            ("privileged: On\n", "boolean"),
            ("yes: 1\n", "boolean"),
            ("1: a\n", "key"),
            ("? [a]\n: b\n", "key"),
            ("a: [1\n", "parse"),
        ] {
            let err = yaml_to_json(text).expect_err(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_noise() {
        use crate::testing::Rng;
        const WORDS: &str = "a : - { } [ ] , ' \" | > & * ! !! << ? # --- ... \n \n  \t 0 0x 1_0 .inf yes ~ é \u{0}";
        let words: Vec<&str> = WORDS.split(' ').collect();
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let text: String = (0..rng.next_u64() % 30).map(|_| rng.pick(&words)).collect();
            let _ = yaml_to_json(&text);
            let _ = decode(
                "patch",
                Some(b"application/apply-patch+yaml"),
                text.as_bytes(),
            );
        }
        let deep = "[".repeat(10_000);
        assert!(yaml_to_json(&deep).is_err());
    }
}

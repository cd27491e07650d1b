//! Masking rules (`masking.toml` beside the policies), compiled into the
//! plan a protocol handler applies to what flows back to the agent.
//!
//! ```toml
//! hash_key_file = "/etc/blastgate/mask.key"   # optional key for style "hash"
//!                                             # (default: the daemon's own
//!                                             # random key, mask.key in ca_dir)
//!
//! [[field]]                 # mask named fields
//! id = "customer-pii"
//! targets = ["orders-*"]    # target name globs (default: all)
//! agents = ["*"]            # agent name globs (default: all)
//! columns = ["public.customers.email", "*.*.ssn"]   # schema.table.column globs
//! json_paths = ["$.items[*].email", "$..password"]  # HTTP JSON bodies
//! style = "last4"           # fixed | last4 | hash
//!
//! [[detector]]              # mask values that look sensitive, wherever they are
//! kind = "card"             # email card iban aws_key jwt private_key bearer phone
//! style = "fixed"
//! targets = ["*"]
//! ```
//!
//! Masking never widens what the agent sees: a field matched by a rule is
//! replaced whole; a detector replaces only the matching span.

use std::{
    fmt::Write as _,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use globset::{Glob, GlobSet, GlobSetBuilder};
use hmac::{Hmac, Mac};
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::diagnostic::{line_col, Diagnostic, Severity};

mod json;
#[cfg(test)]
mod json_tests;
mod lenient;
#[cfg(any(test, feature = "json-mask-reference"))]
pub mod tree;

pub use json::{MaskedJson, NotJson};

pub const MASKING_FILE: &str = "masking.toml";

/// The daemon's own key for style `hash`, in its CA directory.
pub const DEFAULT_KEY_FILE: &str = "mask.key";

/// The key style `hash` uses when `masking.toml` names no `hash_key_file`:
/// set once at daemon start ([`load_or_create_default_key`]).
static DEFAULT_KEY: OnceLock<Arc<Vec<u8>>> = OnceLock::new();

/// Loads `dir/mask.key`, or creates it (32 random bytes, mode 0600) on
/// first start, and makes it the key of style `hash` wherever
/// `hash_key_file` is not set.
///
/// An unkeyed hash of a low-entropy value (an email, a phone number) is
/// reversed by hashing guesses; a key only the daemon holds stops that,
/// while equal values still mask equally within one installation. The key
/// is never logged or sent anywhere; a key readable by others is refused.
pub fn load_or_create_default_key(dir: &Path) -> Result<(), String> {
    let path = dir.join(DEFAULT_KEY_FILE);
    let key = match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(format!(
                    "{} is readable by others (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o7777
                ));
            }
            let key = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if key.len() < 16 {
                return Err(format!(
                    "{} holds {} bytes: too short for a key (remove it to have a new one made)",
                    path.display(),
                    key.len()
                ));
            }
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut key))
                .map_err(|e| format!("random bytes for {}: {e}", path.display()))?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            crate::tls::keyfile::write_atomically(&path, &key, 0o600)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            key
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // A second call (tests starting several daemons' worth of state in one
    // process) keeps the first key: plans already handed out use it.
    let _ = DEFAULT_KEY.set(Arc::new(key));
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// `****`
    Fixed,
    /// `****1234`: enough to tell values apart in a conversation.
    Last4,
    /// `hash:1a2b3c4d5e6f`: equal values mask equally (joins, grouping),
    /// keyed (HMAC-SHA-256) by `hash_key_file` when set, else by the
    /// daemon's own random key (`mask.key` in its CA directory).
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    Email,
    Card,
    Iban,
    AwsKey,
    Jwt,
    PrivateKey,
    Bearer,
    Phone,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldRule {
    id: String,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    json_paths: Vec<String>,
    style: Style,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorRule {
    kind: DetectorKind,
    style: Style,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MaskingFile {
    hash_key_file: Option<PathBuf>,
    #[serde(default)]
    field: Vec<FieldRule>,
    #[serde(default)]
    detector: Vec<DetectorRule>,
}

fn globs(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut b = GlobSetBuilder::new();
    if patterns.is_empty() {
        b.add(Glob::new("*")?);
    }
    for p in patterns {
        b.add(Glob::new(p)?);
    }
    b.build()
}

/// A JSON path step: `.key`, `[*]`, `[n]`, or `..key` (any depth).
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    AnyIndex,
    Index(usize),
    Descend(String),
}

fn parse_path(p: &str) -> Result<Vec<Step>, String> {
    let rest = p.strip_prefix('$').ok_or("a JSON path starts with $")?;
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    let ident = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let mut s = String::new();
        while let Some(&c) = chars.peek() {
            if c == '.' || c == '[' {
                break;
            }
            s.push(c);
            chars.next();
        }
        s
    };
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'.') => {
                chars.next();
                let k = ident(&mut chars);
                if k.is_empty() {
                    return Err("`..` needs a key".into());
                }
                steps.push(Step::Descend(k));
            }
            '.' => {
                let k = ident(&mut chars);
                if k.is_empty() {
                    return Err("empty key".into());
                }
                steps.push(Step::Key(k));
            }
            '[' => {
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inner.push(c);
                }
                steps.push(match inner.as_str() {
                    "*" => Step::AnyIndex,
                    n => Step::Index(n.parse().map_err(|_| format!("bad index [{n}]"))?),
                });
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    if steps.is_empty() {
        return Err("the path names nothing".into());
    }
    Ok(steps)
}

struct CompiledField {
    id: String,
    targets: GlobSet,
    agents: GlobSet,
    columns: GlobSet,
    json_paths: Vec<Vec<Step>>,
    /// The key each path ends on, folded, for the lenient scan (see
    /// `lenient`): worked out once here, not for every string masked.
    lenient_keys: Vec<String>,
    style: Style,
}

struct CompiledDetector {
    kind: DetectorKind,
    regex: Regex,
    style: Style,
    targets: GlobSet,
    agents: GlobSet,
}

/// Every rule of a bundle, compiled.
#[derive(Default)]
pub struct Masking {
    fields: Vec<Arc<CompiledField>>,
    detectors: Vec<Arc<CompiledDetector>>,
    key: Option<Arc<Vec<u8>>>,
}

fn detector_regex(kind: DetectorKind) -> &'static str {
    match kind {
        DetectorKind::Email => r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        DetectorKind::Card => r"\b\d(?:[ -]?\d){12,18}\b",
        DetectorKind::Iban => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
        DetectorKind::AwsKey => r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
        DetectorKind::Jwt => r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
        DetectorKind::PrivateKey => {
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
        }
        DetectorKind::Bearer => r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
        DetectorKind::Phone => r"\+?\(?\d[\d ().-]{7,}\d",
    }
}

/// Checksums and lengths that keep detectors from masking every number.
fn plausible(kind: DetectorKind, m: &str) -> bool {
    let digits: Vec<u32> = m.chars().filter_map(|c| c.to_digit(10)).collect();
    match kind {
        // Reversed (`reverse(card)`) is the same number to a reader.
        DetectorKind::Card => {
            let reversed: Vec<u32> = digits.iter().rev().copied().collect();
            (13..=19).contains(&digits.len()) && (luhn(&digits) || luhn(&reversed))
        }
        DetectorKind::Phone => (9..=15).contains(&digits.len()),
        DetectorKind::Iban => iban_ok(m),
        _ => true,
    }
}

/// Numbers inside identifiers (an account code, a hash) are not phone
/// numbers: phone matches must stand alone.
fn standalone(kind: DetectorKind, text: &str, start: usize, end: usize) -> bool {
    if kind != DetectorKind::Phone {
        return true;
    }
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(|c| c.is_alphanumeric()) && !after.is_some_and(|c| c.is_alphanumeric())
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_ok(m: &str) -> bool {
    let s: String = m.chars().filter(|c| !c.is_whitespace()).collect();
    if s.len() < 15 || s.len() > 34 {
        return false;
    }
    let rotated = format!("{}{}", &s[4..], &s[..4]);
    let mut rem: u64 = 0;
    for c in rotated.chars() {
        let v = match c {
            '0'..='9' => u64::from(c as u8 - b'0'),
            'A'..='Z' => u64::from(c as u8 - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

impl Masking {
    /// No rule at all: nothing is ever masked.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.detectors.is_empty()
    }

    /// The detectors that apply to every target and agent (as the shipped
    /// ones do), by kind: a detector narrowed to `targets = ["none"]` is
    /// as good as gone.
    pub fn universal_detectors(&self) -> Vec<DetectorKind> {
        const ANY: &str = "\u{1}any target or agent";
        self.detectors
            .iter()
            .filter(|d| d.targets.is_match(ANY) && d.agents.is_match(ANY))
            .map(|d| d.kind)
            .collect()
    }

    /// The ids of the field rules.
    pub fn field_ids(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.id.clone()).collect()
    }

    /// Loads `dir/masking.toml`; no file means no masking.
    pub fn load(dir: &Path) -> Result<Masking, Vec<Diagnostic>> {
        let path = dir.join(MASKING_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Masking::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Masking::default()),
            Err(e) => Err(vec![problem(&path, 0, 0, format!("cannot read: {e}"))]),
        }
    }

    /// Compiles the text of a `masking.toml`; `path` names it in problems.
    pub fn parse(path: &Path, text: &str) -> Result<Masking, Vec<Diagnostic>> {
        let path = path.to_path_buf();
        let file: MaskingFile = toml::from_str(text).map_err(|e| {
            let (l, c) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            vec![problem(&path, l, c, e.message().to_string())]
        })?;
        let mut problems = Vec::new();
        // Positions for errors found after parsing: the rule's id line.
        let at = |needle: &str| text.find(needle).map_or((1, 1), |o| line_col(text, o));
        let mut fields = Vec::new();
        for f in file.field {
            let (l, c) = at(&format!("\"{}\"", f.id));
            let mut paths = Vec::new();
            for p in &f.json_paths {
                match parse_path(p) {
                    Ok(s) => paths.push(s),
                    Err(e) => problems.push(problem(
                        &path,
                        l,
                        c,
                        format!("field {:?}: json path {p:?}: {e}", f.id),
                    )),
                }
            }
            match (globs(&f.targets), globs(&f.agents), globs(&f.columns)) {
                (Ok(targets), Ok(agents), Ok(columns)) => {
                    if f.columns.is_empty() && f.json_paths.is_empty() {
                        problems.push(problem(
                            &path,
                            l,
                            c,
                            format!("field {:?} names no columns and no json_paths", f.id),
                        ));
                    }
                    fields.push(Arc::new(CompiledField {
                        id: f.id,
                        targets,
                        agents,
                        columns,
                        lenient_keys: lenient::keys(&paths),
                        json_paths: paths,
                        style: f.style,
                    }));
                }
                (t, a, c2) => {
                    let e = t
                        .err()
                        .or(a.err())
                        .or(c2.err())
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    problems.push(problem(&path, l, c, format!("field {:?}: {e}", f.id)));
                }
            }
        }
        let mut detectors = Vec::new();
        for d in file.detector {
            let regex = Regex::new(detector_regex(d.kind))
                .map_err(|e| vec![problem(&path, 0, 0, e.to_string())])?;
            match (globs(&d.targets), globs(&d.agents)) {
                (Ok(targets), Ok(agents)) => detectors.push(Arc::new(CompiledDetector {
                    kind: d.kind,
                    regex,
                    style: d.style,
                    targets,
                    agents,
                })),
                (t, a) => {
                    let e = t
                        .err()
                        .or(a.err())
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    problems.push(problem(&path, 0, 0, format!("detector {:?}: {e}", d.kind)));
                }
            }
        }
        let key = match &file.hash_key_file {
            Some(k) => match std::fs::read(k) {
                Ok(bytes) if !bytes.is_empty() => Some(Arc::new(bytes)),
                Ok(_) => {
                    problems.push(problem(
                        &path,
                        0,
                        0,
                        format!("hash_key_file {} is empty", k.display()),
                    ));
                    None
                }
                Err(e) => {
                    problems.push(problem(
                        &path,
                        0,
                        0,
                        format!("hash_key_file {}: {e}", k.display()),
                    ));
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Masking {
            fields,
            detectors,
            key,
        })
    }

    /// The plan for one session (agent on target).
    pub fn plan(&self, agent: &str, target: &str) -> MaskPlan {
        MaskPlan {
            fields: self
                .fields
                .iter()
                .filter(|f| f.targets.is_match(target) && f.agents.is_match(agent))
                .cloned()
                .collect(),
            detectors: self
                .detectors
                .iter()
                .filter(|d| d.targets.is_match(target) && d.agents.is_match(agent))
                .cloned()
                .collect(),
            key: self.key.clone().or_else(|| DEFAULT_KEY.get().cloned()),
        }
    }

    pub fn rule_count(&self) -> usize {
        self.fields.len() + self.detectors.len()
    }
}

fn problem(path: &Path, line: usize, column: usize, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: path.to_owned(),
        line,
        column,
        message,
    }
}

/// What to mask in one session; handlers keep it for the session's life
/// (it shares the compiled rules, so a reload does not change it midway).
#[derive(Clone, Default)]
pub struct MaskPlan {
    fields: Vec<Arc<CompiledField>>,
    detectors: Vec<Arc<CompiledDetector>>,
    key: Option<Arc<Vec<u8>>>,
}

impl MaskPlan {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.detectors.is_empty()
    }

    /// Whether any rule masks named columns or JSON paths.
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether any rule masks JSON paths (a column rule alone does not).
    pub fn has_json_paths(&self) -> bool {
        self.fields.iter().any(|f| !f.json_paths.is_empty())
    }

    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// The style for a column, if a field rule names it
    /// (`schema.table.column`), with the rule's id.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<(Style, &str)> {
        let name = format!("{schema}.{table}.{column}");
        self.fields
            .iter()
            .find(|f| f.columns.is_match(&name))
            .map(|f| (f.style, f.id.as_str()))
    }

    /// Applies the style to a whole value.
    pub fn apply(&self, style: Style, value: &str) -> String {
        match style {
            Style::Fixed => "****".into(),
            Style::Last4 => {
                let chars: Vec<char> = value.chars().collect();
                if chars.len() <= 4 {
                    "****".into()
                } else {
                    let tail: String = chars[chars.len() - 4..].iter().collect();
                    format!("****{tail}")
                }
            }
            Style::Hash => {
                let digest: Vec<u8> = match &self.key {
                    Some(k) => match Hmac::<Sha256>::new_from_slice(k) {
                        Ok(mut m) => {
                            m.update(value.as_bytes());
                            m.finalize().into_bytes().to_vec()
                        }
                        Err(_) => Sha256::digest(value.as_bytes()).to_vec(),
                    },
                    None => Sha256::digest(value.as_bytes()).to_vec(),
                };
                let mut s = String::from("hash:");
                for b in &digest[..6] {
                    let _ = write!(s, "{b:02x}");
                }
                s
            }
        }
    }

    /// Runs every detector over free text; returns the masked text and how
    /// many values were masked.
    pub fn scan(&self, text: &str) -> (String, u64) {
        self.scan_styled(text, None)
    }

    /// The detectors over an object key: a masked key is hashed whatever
    /// the detector's style, so two keys masked stay two members (with
    /// `fixed`, both would be `****` and a client keeps one). A key of
    /// fewer than 15 digits alone is a number (a timestamp in seconds or
    /// milliseconds, an id) and is left alone, as numbers are; a card
    /// number (15 to 19 digits) is not.
    pub(crate) fn detect_key(&self, key: &str) -> Option<(String, u64)> {
        if key.len() < 15 && key.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.detect_styled(key, Some(Style::Hash))
    }

    fn scan_styled(&self, text: &str, force: Option<Style>) -> (String, u64) {
        let mut out = text.to_string();
        let mut count = 0;
        for d in &self.detectors {
            // Most text has nothing to mask: no copy for it.
            if !d.regex.is_match(&out) {
                continue;
            }
            let mut next = String::with_capacity(out.len());
            let mut last = 0;
            for m in d.regex.find_iter(&out) {
                if !plausible(d.kind, m.as_str()) || !standalone(d.kind, &out, m.start(), m.end()) {
                    continue;
                }
                next.push_str(&out[last..m.start()]);
                next.push_str(&self.apply(force.unwrap_or(d.style), m.as_str()));
                last = m.end();
                count += 1;
            }
            next.push_str(&out[last..]);
            out = next;
        }
        (out, count)
    }

    /// The detectors over one string value, as the masking of JSON runs
    /// them: the masked text and how many values were masked, or `None`
    /// when nothing was (most strings: no copy for them).
    pub(crate) fn detect(&self, text: &str) -> Option<(String, u64)> {
        self.detect_styled(text, None)
    }

    /// [`MaskPlan::detect`], each match in `force`'s style if given.
    fn detect_styled(&self, text: &str, force: Option<Style>) -> Option<(String, u64)> {
        if !self.detectors.iter().any(|d| d.regex.is_match(text)) {
            return None;
        }
        let (masked, n) = self.scan_styled(text, force);
        (n > 0).then_some((masked, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masking(toml_text: &str) -> Masking {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(MASKING_FILE), toml_text).unwrap();
        Masking::load(tmp.path()).unwrap_or_else(|p| panic!("{p:?}"))
    }

    const ALL_DETECTORS: &str = r#"
[[detector]]
kind = "email"
style = "fixed"
[[detector]]
kind = "card"
style = "last4"
[[detector]]
kind = "iban"
style = "fixed"
[[detector]]
kind = "aws_key"
style = "fixed"
[[detector]]
kind = "jwt"
style = "fixed"
[[detector]]
kind = "private_key"
style = "fixed"
[[detector]]
kind = "bearer"
style = "fixed"
[[detector]]
kind = "phone"
style = "fixed"
"#;

    #[test]
    fn detectors_find_what_they_should_and_leave_the_rest() {
        let m = masking(ALL_DETECTORS);
        let plan = m.plan("a", "t");
        let cases = [
            ("mail ann@example.com now", "mail **** now", 1),
            ("card 4111 1111 1111 1111.", "card ****1111.", 1),
            (
                "card 4111 1111 1111 1112 fails luhn",
                "card 4111 1111 1111 1112 fails luhn",
                0,
            ),
            ("iban GB82WEST12345698765432", "iban ****", 1),
            (
                "iban GB00WEST12345698765432 bad",
                "iban GB00WEST12345698765432 bad",
                0,
            ),
            ("key AKIAIOSFODNN7EXAMPLE", "key ****", 1),
            (
                "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                "t ****",
                1,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                "****",
                1,
            ),
            (
                "Authorization: Bearer abcdefgh12345678",
                "Authorization: ****",
                1,
            ),
            ("call +44 20 7946 0958", "call ****", 1),
            ("order 12345 shipped", "order 12345 shipped", 0),
            ("reversed 1111111111111114", "reversed ****1114", 1),
        ];
        for (input, want, n) in cases {
            let (got, count) = plan.scan(input);
            assert_eq!(got, want, "{input}");
            assert_eq!(count, n, "{input}");
        }
    }

    #[test]
    fn styles() {
        let m = masking("");
        let p = m.plan("a", "t");
        assert_eq!(p.apply(Style::Fixed, "secret"), "****");
        assert_eq!(p.apply(Style::Last4, "4111111111111111"), "****1111");
        assert_eq!(p.apply(Style::Last4, "abc"), "****");
        let h1 = p.apply(Style::Hash, "x@y.z");
        assert_eq!(
            h1,
            p.apply(Style::Hash, "x@y.z"),
            "equal values hash equally"
        );
        assert_ne!(h1, p.apply(Style::Hash, "y@y.z"));
        assert!(h1.starts_with("hash:") && h1.len() == 17);
    }

    #[test]
    fn field_rules_select_by_target_agent_and_column_glob() {
        let m = masking(
            r#"
[[field]]
id = "pii"
targets = ["orders-*"]
agents = ["claude", "ci-*"]
columns = ["public.customers.email", "*.*.ssn"]
style = "hash"
"#,
        );
        let p = m.plan("ci-runner", "orders-db");
        assert_eq!(
            p.column("public", "customers", "email").map(|c| c.1),
            Some("pii")
        );
        assert!(p.column("hr", "people", "ssn").is_some());
        assert!(p.column("public", "customers", "name").is_none());
        assert!(m.plan("someone", "orders-db").is_empty());
        assert!(m.plan("claude", "billing").is_empty());
    }

    #[test]
    fn json_paths_mask_whole_values_and_count_them() {
        let m = masking(
            r#"
[[field]]
id = "api"
json_paths = ["$.items[*].email", "$..password", "$.user.card"]
style = "last4"
[[detector]]
kind = "aws_key"
style = "fixed"
"#,
        );
        let p = m.plan("a", "t");
        let mut doc = json!({
            "items": [{"email": "a@b.example"}, {"email": "c@d.example"}, {"name": "x"}],
            "deep": {"auth": {"password": "hunter22"}},
            "user": {"card": 4111111111111111u64},
            "note": "key AKIAIOSFODNN7EXAMPLE leaked"
        });
        let n = p.mask_json(&mut doc);
        assert_eq!(n, 5);
        assert_eq!(doc["items"][0]["email"], "****mple");
        assert_eq!(doc["deep"]["auth"]["password"], "****er22");
        assert_eq!(doc["user"]["card"], "****1111");
        assert_eq!(doc["note"], "key **** leaked");
        assert_eq!(doc["items"][2]["name"], "x");
    }

    #[test]
    fn bad_rules_are_reported_with_positions() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join(MASKING_FILE),
            "[[detector]]\nkind = \"ssn\"\nstyle = \"fixed\"\n",
        )
        .unwrap();
        let p = Masking::load(tmp.path()).err().unwrap();
        assert_eq!((p[0].line, p[0].column), (2, 8), "{p:?}");
        std::fs::write(
            tmp.path().join(MASKING_FILE),
            "[[field]]\nid = \"x\"\njson_paths = [\"items.email\"]\nstyle = \"fixed\"\n",
        )
        .unwrap();
        let p = Masking::load(tmp.path()).err().unwrap();
        assert!(
            p[0].message.contains("json path") && p[0].line == 2,
            "{p:?}"
        );
    }

    #[test]
    fn the_default_hash_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ca");
        load_or_create_default_key(&state).unwrap();
        let path = state.join(DEFAULT_KEY_FILE);
        let key = std::fs::read(&path).unwrap();
        assert_eq!(key.len(), 32);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // Loaded, not replaced, on the next start.
        load_or_create_default_key(&state).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), key);
        // Plans without hash_key_file are keyed: the hash is not the
        // plain SHA-256 anyone can recompute.
        let plan = masking("").plan("a", "t");
        let plain = Sha256::digest(b"x@y.z");
        let unkeyed: String = plain[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(plan.apply(Style::Hash, "x@y.z"), format!("hash:{unkeyed}"));
        // A key others can read is refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_default_key(&state).is_err());
    }

    #[test]
    fn luhn_and_iban_checks() {
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        assert!(iban_ok("DE89370400440532013000"));
        assert!(!iban_ok("DE89370400440532013001"));
    }
}

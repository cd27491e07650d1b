//! Masking a JSON document in one pass over its bytes, without building a
//! tree: what is not masked is copied as it came (spacing, escapes, number
//! spelling), and a masked value is written over its own span.
//!
//! It decides exactly as the tree walk it replaced (kept as
//! `tree::mask_json` for the tests, the `json_mask` fuzz target and the
//! bench) on every document serde_json reads:
//!
//! - the document is accepted or refused as `serde_json::from_slice`
//!   would (UTF-8, grammar, escapes and surrogate pairs, numbers out of
//!   f64 range, nesting deeper than 127): whatever it refuses the caller
//!   masks as text, as before;
//! - keys and strings are compared and scanned decoded, so `"\u0065mail"`
//!   is the key `email` and an escaped `\u0040` is an `@` to the detectors:
//!   what a client's parser reads, not the bytes on the wire;
//! - `json_paths` rules apply in rule order, each to what the earlier ones
//!   left: a value matched twice is masked twice (and counted twice), a
//!   rule below a value an earlier rule replaced whole finds nothing, and a
//!   container replaced whole is first masked inside by the earlier rules
//!   (its text, for `last4` and `hash`, is serde_json's compact rendering
//!   of that); `null` is left alone; the detectors then run over every
//!   string value (not keys, not numbers), replaced ones included.
//!
//! One deliberate difference: a key repeated within one object. The tree
//! kept only the last value (and sent it re-serialized, or the original
//! bytes, duplicates and all, when nothing was masked, so a client that
//! reads the first value could see it unmasked). Here every occurrence is
//! masked in its own right and counted, whichever one a client reads.

use std::borrow::Cow;

use serde_json::Value;

use super::{MaskPlan, Step, Style};

/// serde_json refuses a container nested this deep (its recursion limit).
const MAX_DEPTH: usize = 128;

/// How many JSON documents inside strings inside documents are masked
/// as documents: deeper ones are text to the detectors.
pub const MAX_NESTED: usize = 8;

/// Whether a string may hold a JSON document of its own (an object or an
/// array), which the rules are applied to as well: `kubectl apply` keeps
/// a copy of every object in an annotation, APIs wrap exports in strings.
pub(crate) fn may_nest(text: &str, nesting: usize) -> bool {
    nesting < MAX_NESTED
        && text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with(['{', '['])
}

/// Numbers shorter than this, without an exponent, are always in f64 range;
/// others are checked by serde_json itself, whose rounding decides.
const SURE_NUMBER_LEN: usize = 300;

/// Why a body is not a JSON document serde_json would read (the caller
/// masks it as text instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not JSON at byte {at}: {why}")]
pub struct NotJson {
    pub at: usize,
    pub why: &'static str,
}

/// A JSON document, masked: the bytes as they came when nothing was
/// masked, and how many values were.
#[derive(Debug)]
pub struct MaskedJson<'a> {
    pub body: Cow<'a, [u8]>,
    pub fields: u64,
}

impl MaskPlan {
    /// Masks a JSON document's bytes by the plan's `json_paths` rules and
    /// detectors; see the module's notes for what is masked.
    pub fn mask_json_bytes<'a>(&self, src: &'a [u8]) -> Result<MaskedJson<'a>, NotJson> {
        self.mask_json_nested(src, 0)
    }

    /// [`MaskPlan::mask_json_bytes`] for a document `nesting` strings deep.
    fn mask_json_nested<'a>(
        &self,
        src: &'a [u8],
        nesting: usize,
    ) -> Result<MaskedJson<'a>, NotJson> {
        let text = std::str::from_utf8(src).map_err(|e| NotJson {
            at: e.valid_up_to(),
            why: "not UTF-8",
        })?;
        let paths: Vec<(Style, &[Step])> = self
            .fields
            .iter()
            .flat_map(|f| f.json_paths.iter().map(|p| (f.style, p.as_slice())))
            .collect();
        let mut m = Masker {
            plan: self,
            paths,
            src: text,
            pos: 0,
            out: Vec::new(),
            copied: 0,
            fields: 0,
            states: Vec::new(),
            depth: 0,
            nesting,
        };
        for ordinal in 0..m.paths.len() {
            m.states.push(State { ordinal, step: 0 });
        }
        // Strings are read for the detectors, and for documents inside
        // them that the rules may reach.
        let detect = self.has_detectors() || self.has_json_paths();
        let all = m.states.len();
        m.value(0, all, usize::MAX, detect)?;
        m.skip_ws();
        if m.pos != src.len() {
            return Err(m.err("trailing characters"));
        }
        let body = if m.copied == 0 {
            Cow::Borrowed(src)
        } else {
            m.flush_to(src.len());
            Cow::Owned(m.out)
        };
        Ok(MaskedJson {
            body,
            fields: m.fields,
        })
    }
}

/// What a string value holds, as the rules see it.
enum Nested {
    /// A document serde_json reads, masked: its compact rendering and
    /// how many values were masked in it.
    Masked(String, u64),
    /// A document serde_json reads, with nothing in it to mask.
    Clean,
    /// No document serde_json reads (or one nested too deep): a lenient
    /// reader may still find one (see `lenient`).
    NotADocument,
}

/// Where one path stands at a value: `step` steps of path `ordinal` (rules
/// in order, each rule's paths in order) led here; all of them means the
/// path names this value.
#[derive(Debug, Clone, Copy)]
struct State {
    ordinal: usize,
    step: usize,
}

/// A string as it sits in the source: its content's span (between the
/// quotes) and whether it has escapes to decode.
#[derive(Clone, Copy)]
struct RawStr {
    start: usize,
    end: usize,
    escaped: bool,
}

struct Masker<'a, 'p> {
    plan: &'p MaskPlan,
    /// Every `json_paths` entry with its rule's style, in the order the
    /// tree walk applied them.
    paths: Vec<(Style, &'p [Step])>,
    src: &'a str,
    pos: usize,
    /// The masked document so far; empty until the first replacement.
    out: Vec<u8>,
    /// `src[..copied]` is accounted for in `out` (copied or replaced).
    copied: usize,
    fields: u64,
    /// A stack of path states: each value's are a range of it, its
    /// children's pushed above and dropped after.
    states: Vec<State>,
    depth: usize,
    /// How many strings deep this document is ([`MAX_NESTED`]).
    nesting: usize,
}

impl Masker<'_, '_> {
    fn err(&self, why: &'static str) -> NotJson {
        NotJson { at: self.pos, why }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, why: &'static str) -> Result<(), NotJson> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(why))
        }
    }

    /// Brings `out` up to `at`: the source bytes not yet copied.
    fn flush_to(&mut self, at: usize) {
        if self.out.capacity() == 0 {
            self.out.reserve(self.src.len() + 64);
        }
        self.out
            .extend_from_slice(&self.src.as_bytes()[self.copied..at]);
        self.copied = at;
    }

    /// Writes `text` as a JSON string in place of `src[start..end]`.
    fn replace(&mut self, start: usize, end: usize, text: &str) {
        self.flush_to(start);
        write_json_string(&mut self.out, text);
        self.copied = end;
    }

    /// The ordinals of the paths that end at the value whose states are
    /// `states[lo..hi]`, in order.
    fn matches(&self, lo: usize, hi: usize) -> Vec<usize> {
        let done = |s: &&State| s.step == self.paths[s.ordinal].1.len();
        let states = &self.states[lo..hi];
        // Most values are named by no path: no allocation for them.
        if !states.iter().any(|s| done(&s)) {
            return Vec::new();
        }
        states.iter().filter(done).map(|s| s.ordinal).collect()
    }

    /// One value at `pos` (after whitespace). `states[lo..hi]` are the
    /// paths standing at it; only paths before `limit` apply (a later one
    /// would find an ancestor already replaced); `detect` runs the
    /// detectors over its strings (off inside a container replaced whole).
    fn value(&mut self, lo: usize, hi: usize, limit: usize, detect: bool) -> Result<(), NotJson> {
        self.skip_ws();
        let start = self.pos;
        let matched = self.matches(lo, hi);
        match self.peek() {
            Some(b'{' | b'[') => {
                let Some(&first) = matched.first() else {
                    return self.container(lo, hi, limit, detect);
                };
                // Replaced whole, after the earlier paths masked inside it.
                self.flush_to(start);
                let mark = self.out.len();
                self.container(lo, hi, first, false)?;
                self.flush_to(self.pos);
                let inner = self.out.split_off(mark);
                self.copied = start;
                let text = if self.paths[first].0 == Style::Fixed {
                    String::new()
                } else {
                    serde_json::from_slice::<Value>(&inner)
                        .map_err(|_| self.err("a masked container did not read back"))?
                        .to_string()
                };
                self.masked(start, &matched, text, detect);
                Ok(())
            }
            Some(b'"') => {
                let raw = self.string()?;
                if matched.is_empty() && !detect {
                    return Ok(());
                }
                let text = decode(self.src, raw)?;
                if !matched.is_empty() {
                    let text = text.into_owned();
                    self.masked(start, &matched, text, detect);
                    return Ok(());
                }
                match self.nested(&text)? {
                    Nested::Masked(doc, n) => {
                        self.fields += n;
                        self.replace(start, self.pos, &doc);
                        return Ok(());
                    }
                    Nested::NotADocument if self.plan.lenient_key_hit(&text) => {
                        self.fields += 1;
                        self.replace(start, self.pos, &self.plan.apply(Style::Fixed, &text));
                        return Ok(());
                    }
                    Nested::NotADocument | Nested::Clean => {}
                }
                if let Some((masked, n)) = self.plan.detect(&text) {
                    self.fields += n;
                    self.replace(start, self.pos, &masked);
                }
                Ok(())
            }
            Some(b'n') => self.literal("null"),
            Some(b't') => {
                self.literal("true")?;
                if !matched.is_empty() {
                    self.masked(start, &matched, "true".into(), detect);
                }
                Ok(())
            }
            Some(b'f') => {
                self.literal("false")?;
                if !matched.is_empty() {
                    self.masked(start, &matched, "false".into(), detect);
                }
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                if !matched.is_empty() {
                    // The tree masked a number's serde_json rendering
                    // (`1e2` is `100.0`), for `last4` and `hash`.
                    let text = if self.paths[matched[0]].0 == Style::Fixed {
                        String::new()
                    } else {
                        serde_json::from_str::<Value>(&self.src[start..self.pos])
                            .map_err(|_| self.err("number out of range"))?
                            .to_string()
                    };
                    self.masked(start, &matched, text, detect);
                }
                Ok(())
            }
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("the document ends before a value")),
        }
    }

    /// Replaces the value at `start..pos` by `text` after every matched
    /// path's style in turn, then the detectors.
    fn masked(&mut self, start: usize, matched: &[usize], mut text: String, detect: bool) {
        for &o in matched {
            text = self.plan.apply(self.paths[o].0, &text);
            self.fields += 1;
        }
        if detect {
            if let Some((masked, n)) = self.plan.detect(&text) {
                self.fields += n;
                text = masked;
            }
        }
        self.replace(start, self.pos, &text);
    }

    fn literal(&mut self, word: &'static str) -> Result<(), NotJson> {
        if self.src.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    /// A number, checked as serde_json checks it: the grammar, and a value
    /// within f64's range.
    fn number(&mut self) -> Result<(), NotJson> {
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let digits = |pos: &mut usize| {
            let from = *pos;
            while bytes.get(*pos).is_some_and(u8::is_ascii_digit) {
                *pos += 1;
            }
            *pos - from
        };
        let mut pos = self.pos;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        match bytes.get(pos) {
            Some(b'0') => pos += 1,
            Some(b'1'..=b'9') => {
                digits(&mut pos);
            }
            _ => {
                self.pos = pos;
                return Err(self.err("invalid number"));
            }
        }
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.err("invalid number"));
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = bytes.get(pos) {
            exponent = true;
            pos += 1;
            if let Some(b'+' | b'-') = bytes.get(pos) {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.err("invalid number"));
            }
        }
        self.pos = pos;
        if (exponent || pos - start >= SURE_NUMBER_LEN)
            && serde_json::from_str::<Value>(&self.src[start..pos]).is_err()
        {
            return Err(self.err("number out of range"));
        }
        Ok(())
    }

    /// A string at `pos` (its opening quote), checked as serde_json checks
    /// it: no raw control characters, known escapes, `\u` surrogates in
    /// pairs.
    fn string(&mut self) -> Result<RawStr, NotJson> {
        let bytes = self.src.as_bytes();
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Err(self.err("the document ends inside a string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(RawStr {
                        start,
                        end: self.pos - 1,
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    match bytes.get(self.pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1;
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            let n = self.hex4()?;
                            if (0xDC00..=0xDFFF).contains(&n) {
                                return Err(self.err("lone trailing surrogate"));
                            }
                            if (0xD800..=0xDBFF).contains(&n) {
                                if !bytes[self.pos..].starts_with(b"\\u") {
                                    return Err(self.err("lone leading surrogate"));
                                }
                                self.pos += 2;
                                let n2 = self.hex4()?;
                                if !(0xDC00..=0xDFFF).contains(&n2) {
                                    return Err(self.err("lone leading surrogate"));
                                }
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                0x00..=0x1F => return Err(self.err("control character in a string")),
                _ => self.pos += 1,
            }
        }
    }

    fn hex4(&mut self) -> Result<u16, NotJson> {
        let digits = self
            .src
            .as_bytes()
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("the document ends inside an escape"))?;
        let mut n = 0u16;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            n = n << 4 | v as u16;
        }
        self.pos += 4;
        Ok(n)
    }

    fn enter(&mut self) -> Result<(), NotJson> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.pos += 1;
        Ok(())
    }

    /// An object or array at `pos`, its members' path states worked out
    /// from `states[lo..hi]`.
    fn container(
        &mut self,
        lo: usize,
        hi: usize,
        limit: usize,
        detect: bool,
    ) -> Result<(), NotJson> {
        let object = self.peek() == Some(b'{');
        self.enter()?;
        let close = if object { b'}' } else { b']' };
        self.skip_ws();
        if self.peek() == Some(close) {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let child = self.states.len();
            if object {
                self.expect(b'"', "expected a key")?;
                self.pos -= 1;
                let key_start = self.pos;
                let raw = self.string()?;
                let key_end = self.pos;
                self.expect(b':', "expected ':'")?;
                self.key_states(lo, hi, limit, raw)?;
                if detect {
                    self.detect_key(key_start, key_end, raw)?;
                }
            } else {
                self.index_states(lo, hi, limit, index);
                index += 1;
            }
            let top = self.states.len();
            self.value(child, top, limit, detect)?;
            self.states.truncate(child);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b) if b == close => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or the container's end")),
            }
        }
    }

    /// A JSON document inside a string, masked as a document of its own
    /// (paths from its own root), in serde_json's compact rendering.
    fn nested(&self, text: &str) -> Result<Nested, NotJson> {
        if !may_nest(text, self.nesting) {
            return Ok(Nested::NotADocument);
        }
        let Ok(inner) = self
            .plan
            .mask_json_nested(text.as_bytes(), self.nesting + 1)
        else {
            return Ok(Nested::NotADocument);
        };
        if inner.fields == 0 {
            return Ok(Nested::Clean);
        }
        let doc = serde_json::from_slice::<Value>(&inner.body)
            .map_err(|_| self.err("a masked document in a string did not read back"))?;
        Ok(Nested::Masked(doc.to_string(), inner.fields))
    }

    /// Runs the detectors over a key (`src[start..end]`, quotes
    /// included): an object keyed by email address or card number hands
    /// them over as surely as a value does. Paths are matched on the key
    /// as it came.
    fn detect_key(&mut self, start: usize, end: usize, raw: RawStr) -> Result<(), NotJson> {
        let key = decode(self.src, raw)?;
        if let Some((masked, n)) = self.plan.detect_key(&key) {
            self.fields += n;
            self.replace(start, end, &masked);
        }
        Ok(())
    }

    /// Pushes the states of an object member named `raw`.
    fn key_states(
        &mut self,
        lo: usize,
        hi: usize,
        limit: usize,
        raw: RawStr,
    ) -> Result<(), NotJson> {
        let mut key: Option<Cow<'_, str>> = None;
        for i in lo..hi {
            let s = self.states[i];
            let steps = self.paths[s.ordinal].1;
            if s.ordinal >= limit || s.step == steps.len() {
                continue;
            }
            let (name, descend) = match &steps[s.step] {
                Step::Key(k) => (k, false),
                Step::Descend(k) => (k, true),
                Step::Index(_) | Step::AnyIndex => continue,
            };
            if key.is_none() {
                key = Some(decode(self.src, raw)?);
            }
            if key.as_deref() == Some(name.as_str()) {
                self.states.push(State {
                    ordinal: s.ordinal,
                    step: s.step + 1,
                });
            }
            // `$..a.b` names every `a` below, those inside an `a` too.
            if descend {
                self.states.push(s);
            }
        }
        Ok(())
    }

    /// Pushes the states of array element `index`.
    fn index_states(&mut self, lo: usize, hi: usize, limit: usize, index: usize) {
        for i in lo..hi {
            let s = self.states[i];
            let steps = self.paths[s.ordinal].1;
            if s.ordinal >= limit || s.step == steps.len() {
                continue;
            }
            let next = match steps[s.step] {
                Step::Key(_) => continue,
                Step::Index(n) if n != index => continue,
                Step::Index(_) | Step::AnyIndex => s.step + 1,
                Step::Descend(_) => s.step,
            };
            self.states.push(State {
                ordinal: s.ordinal,
                step: next,
            });
        }
    }
}

/// A checked string's content as a client reads it.
fn decode(src: &str, raw: RawStr) -> Result<Cow<'_, str>, NotJson> {
    let body = &src[raw.start..raw.end];
    if !raw.escaped {
        return Ok(Cow::Borrowed(body));
    }
    // Checked already: serde_json decodes it exactly as a client's parser
    // does.
    serde_json::from_str::<String>(&src[raw.start - 1..raw.end + 1])
        .map(Cow::Owned)
        .map_err(|_| NotJson {
            at: raw.start,
            why: "a string did not decode",
        })
}

/// `text` as a JSON string: quotes, backslashes and control characters
/// escaped, everything else as it is.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

//! Masking of recorded terminal data, chunk by chunk, before it is stored.
//!
//! A pty delivers whatever the remote program wrote, in whatever pieces the
//! transport made: a secret, or a UTF-8 character, can straddle two chunks
//! or more, and scanning each chunk alone would store both halves in clear.
//! So the [`Redactor`] holds text back until it can cut it where no detector
//! match can straddle the cut, scans what lies before the cut with the
//! session's [`MaskPlan`], and keeps the rest for the next chunk.
//!
//! Where a cut may fall mirrors the detector regexes of
//! `policy/masking.rs` (a new detector whose matches can contain a line
//! break or a space needs a rule here):
//! - after a line break, `\n` or `\r` (typed lines end with `\r`): only
//!   `private_key` and `bearer` matches run across lines, and both have a
//!   rule below;
//! - past the soft limit, also after whitespace, unless it is spaces that a
//!   card, IBAN or phone number may contain;
//! - never inside a private-key block (BEGIN line to END line, as the
//!   detector matches it), nor inside what may still become a BEGIN line,
//!   nor between `Bearer` and its token.
//!
//! Text with nothing masked comes back as the chunks it arrived in, each at
//! its own offset, so a replay keeps its keystroke timing; text with
//! something masked comes back as one chunk at its first offset, since the
//! masked spans no longer map onto the original chunks.
//!
//! Holding is bounded by [`Limits::hard`]: when a call returns, no more than
//! that is held (plus up to 3 bytes of an unfinished character). A key
//! block still open at that size, or at the end of the stream, is masked
//! from its BEGIN line on, whole: a truncated key is still secret, and
//! failing open would store it.
//!
//! The two streams of a channel have a redactor each and hold text
//! independently, so their returned chunks are each in order of offset but
//! not in order with each other.

use crate::policy::masking::MaskPlan;

/// How much text a [`Redactor`] may hold back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Past this many pending bytes, text is also cut at whitespace: a
    /// full-screen program can write a long way without a line break, and
    /// holding all of it would delay the recording for nothing.
    pub soft: usize,
    /// Bounds memory: an open private-key block longer than this is masked
    /// whole and let go, and text without any cut point is cut anyway.
    pub hard: usize,
}

impl Default for Limits {
    /// Real keys are far below 64 KiB (a 16384-bit RSA key is about 12 KiB
    /// of PEM); 4 KiB is a few screens of line-less output.
    fn default() -> Self {
        Limits {
            soft: 4 << 10,
            hard: 64 << 10,
        }
    }
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const LABEL: &str = "PRIVATE KEY";
const DASHES: usize = 5;
/// What an unterminated key block becomes: its style cannot apply to a
/// value whose end never came.
const FAIL_CLOSED: &str = "****";

/// The plan's detectors are private to it; whether it masks keys and bearer
/// tokens (and so whether their holding rules are worth their delay) is
/// learnt by asking it to scan one of each.
const KEY_SPECIMEN: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----";
const KEY_SPECIMEN_BODY: &str = "MIIE";
const BEARER_SPECIMEN: &str = "Authorization: Bearer abcdefgh12345678";
const BEARER_SPECIMEN_TOKEN: &str = "abcdefgh12345678";

/// Masks one stream (output or keystrokes) of one channel.
pub struct Redactor {
    plan: MaskPlan,
    limits: Limits,
    /// Without detectors, text only needs its UTF-8 mended.
    scanning: bool,
    /// Whether the plan masks private keys: only then are blocks followed
    /// and held.
    keys: bool,
    /// An incomplete UTF-8 sequence that ended the last chunk: decoded with
    /// the next one, so a character split in two is not two U+FFFDs.
    carry: Vec<u8>,
    carry_at: u64,
    /// Held text, and each held chunk's offset and start in it.
    buf: String,
    chunks: Vec<(u64, usize)>,
    /// The offset for masked text when no chunk is left to lend one.
    last_at: u64,
    cuts: Cuts,
    blocks: Blocks,
    masked: u64,
}

impl Redactor {
    pub fn new(plan: MaskPlan) -> Self {
        Self::with_limits(plan, Limits::default())
    }

    /// Other limits, for tests that reach them with little data, or for a
    /// caller with another memory budget. A soft limit above the hard one
    /// is lowered to it.
    pub fn with_limits(plan: MaskPlan, limits: Limits) -> Self {
        let scanning = plan.has_detectors();
        let keys = scanning && !plan.scan(KEY_SPECIMEN).0.contains(KEY_SPECIMEN_BODY);
        let bearer = scanning && !plan.scan(BEARER_SPECIMEN).0.contains(BEARER_SPECIMEN_TOKEN);
        Redactor {
            plan,
            limits: Limits {
                soft: limits.soft.min(limits.hard),
                hard: limits.hard,
            },
            scanning,
            keys,
            carry: Vec::new(),
            carry_at: 0,
            buf: String::new(),
            chunks: Vec::new(),
            last_at: 0,
            cuts: Cuts {
                bearer,
                ..Cuts::default()
            },
            blocks: Blocks::default(),
            masked: 0,
        }
    }

    /// One chunk as it arrived, with its time offset (µs from session
    /// start). Returns the chunks that are now safe to record: masked,
    /// valid UTF-8 (invalid bytes become U+FFFD), each with its offset.
    pub fn push(&mut self, offset_us: u64, data: &[u8]) -> Vec<(u64, String)> {
        let text = self.decode(offset_us, data);
        if text.is_empty() {
            return Vec::new();
        }
        if !self.scanning {
            return vec![(offset_us, text)];
        }
        self.append(offset_us, &text);
        self.flush()
    }

    /// End of stream: everything still held, masked. An unterminated key
    /// block is masked whole: a truncated key is still secret.
    pub fn finish(&mut self) -> Vec<(u64, String)> {
        let rest = std::mem::take(&mut self.carry);
        let tail = String::from_utf8_lossy(&rest).into_owned();
        if !self.scanning {
            return if tail.is_empty() {
                Vec::new()
            } else {
                vec![(self.carry_at, tail)]
            };
        }
        if !tail.is_empty() {
            self.append(self.carry_at, &tail);
        }
        let out = match self.blocks.open {
            Some(begin) => {
                let mut out = self.emit(begin);
                out.extend(self.fail_closed());
                out
            }
            None => self.emit(self.buf.len()),
        };
        self.clear();
        out
    }

    /// Values masked so far.
    pub fn masked(&self) -> u64 {
        self.masked
    }

    /// Bytes held back (for tests of the memory bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.len() + self.carry.len()
    }

    fn decode(&mut self, at: u64, data: &[u8]) -> String {
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            data
        } else {
            let mut v = std::mem::take(&mut self.carry);
            v.extend_from_slice(data);
            joined = v;
            &joined
        };
        let mut out = String::with_capacity(bytes.len());
        let mut pieces = bytes.utf8_chunks().peekable();
        while let Some(piece) = pieces.next() {
            out.push_str(piece.valid());
            let bad = piece.invalid();
            if bad.is_empty() {
                continue;
            }
            // Only an unfinished sequence at the very end can still become
            // a character; anything else is replaced as the whole-stream
            // lossy decoding would replace it.
            let unfinished = std::str::from_utf8(bad).is_err_and(|e| e.error_len().is_none());
            if pieces.peek().is_none() && unfinished {
                self.carry = bad.to_vec();
                self.carry_at = at;
            } else {
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
        out
    }

    fn append(&mut self, at: u64, text: &str) {
        self.chunks.push((at, self.buf.len()));
        self.last_at = at;
        self.buf.push_str(text);
        self.cuts.advance(&self.buf);
        if self.keys {
            self.blocks.advance(&self.buf);
        }
    }

    fn flush(&mut self) -> Vec<(u64, String)> {
        if let Some(begin) = self.blocks.open {
            // Nothing before a BEGIN line needs what follows it, and letting
            // it go now makes the hard limit measure the block alone.
            let mut out = self.emit(begin);
            if self.buf.len() > self.limits.hard {
                out.extend(self.fail_closed());
            }
            return out;
        }
        let len = self.buf.len();
        let mut base = self.cuts.line;
        if len > self.limits.soft {
            base = base.max(self.cuts.space);
        }
        let mut cut = self.adjust(base);
        if len.saturating_sub(cut) > self.limits.hard {
            // No cut point within the hard limit: give up keeping the last
            // token whole, but still spare a marker or `Bearer` at the very
            // end, if that keeps little.
            let forced = self.adjust(len);
            cut = if len.saturating_sub(forced) <= self.limits.soft {
                forced
            } else {
                len
            };
        }
        self.emit(cut)
    }

    /// Moves a candidate cut out of the places no match may be split at.
    fn adjust(&self, mut cut: usize) -> usize {
        if let Some((start, end)) = self.blocks.closed {
            if cut > start && cut < end {
                cut = end;
            }
        }
        if self.keys {
            cut = cut.min(self.blocks.from);
        }
        self.cuts.bearer_hold(&self.buf, cut)
    }

    /// Scans and lets go of the text before `cut`.
    fn emit(&mut self, cut: usize) -> Vec<(u64, String)> {
        let cut = floor_boundary(&self.buf, cut);
        let Some(head) = self.buf.get(..cut).filter(|h| !h.is_empty()) else {
            return Vec::new();
        };
        let (masked, n) = self.plan.scan(head);
        let out = if n == 0 {
            self.pieces(cut)
        } else {
            self.masked += n;
            vec![(self.first_at(), masked)]
        };
        self.drain(cut);
        out
    }

    /// The held chunks before `cut`, as they arrived.
    fn pieces(&self, cut: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (i, &(at, start)) in self.chunks.iter().enumerate() {
            if start >= cut {
                break;
            }
            let end = self
                .chunks
                .get(i + 1)
                .map_or(self.buf.len(), |next| next.1)
                .min(cut);
            if let Some(piece) = self.buf.get(start..end).filter(|p| !p.is_empty()) {
                out.push((at, piece.to_owned()));
            }
        }
        out
    }

    fn drain(&mut self, cut: usize) {
        self.buf.drain(..cut);
        if self.buf.is_empty() {
            self.chunks.clear();
        } else {
            // The chunk the cut falls in keeps its offset for its rest.
            let first = self.chunks.iter().rposition(|c| c.1 <= cut).unwrap_or(0);
            self.chunks.drain(..first);
            for c in &mut self.chunks {
                c.1 = c.1.saturating_sub(cut);
            }
        }
        self.cuts.drain(cut);
        self.blocks.drain(cut);
    }

    /// Masks everything from the open block's BEGIN line on as one value.
    fn fail_closed(&mut self) -> Vec<(u64, String)> {
        let Some(begin) = self.blocks.open else {
            return self.emit(self.buf.len());
        };
        let at = self.first_at();
        let head = self.buf.get(..begin).unwrap_or_default();
        let (mut text, n) = if head.is_empty() {
            (String::new(), 0)
        } else {
            self.plan.scan(head)
        };
        text.push_str(FAIL_CLOSED);
        self.masked += n + 1;
        self.clear();
        vec![(at, text)]
    }

    fn clear(&mut self) {
        let len = self.buf.len();
        self.buf.clear();
        self.chunks.clear();
        self.cuts.drain(len);
        self.blocks = Blocks::default();
    }

    fn first_at(&self) -> u64 {
        self.chunks.first().map_or(self.last_at, |c| c.0)
    }
}

/// Cut points in the held text, found as text arrives so that a stream of
/// tiny chunks costs no rescanning.
#[derive(Default)]
struct Cuts {
    /// Bytes of the held text examined.
    scanned: usize,
    /// Just past the last line break (0: none).
    line: usize,
    /// The end of the last whitespace run no match can span (0: none).
    space: usize,
    /// Inside a whitespace run, and whether it is only spaces (the only
    /// whitespace card, IBAN and phone matches contain).
    in_run: bool,
    run_spaces_only: bool,
    /// The last non-whitespace character before the current run.
    before_run: Option<char>,
    last: Option<char>,
    /// Whether the plan masks bearer tokens.
    bearer: bool,
    /// From each `Bearer` word to the start of its token (`usize::MAX`
    /// while the token has not begun): `bearer` matches the word and its
    /// token across any whitespace, line breaks included, so a cut in
    /// between would leave the token to be scanned without the word.
    bearers: Vec<(usize, usize)>,
}

impl Cuts {
    fn advance(&mut self, buf: &str) {
        let start = self.scanned;
        let Some(new) = buf.get(start..) else {
            self.scanned = buf.len();
            return;
        };
        for (i, c) in new.char_indices() {
            let at = start + i;
            if c == '\n' || c == '\r' {
                self.line = at + c.len_utf8();
            }
            if c.is_whitespace() {
                if !self.in_run {
                    if self.bearer && ends_with_bearer(buf, at) {
                        self.bearers.push((at - BEARER.len(), usize::MAX));
                    }
                    self.in_run = true;
                    self.run_spaces_only = true;
                    self.before_run = self.last;
                }
                if c != ' ' {
                    self.run_spaces_only = false;
                }
            } else {
                if self.in_run {
                    self.in_run = false;
                    if let Some(span) = self.bearers.last_mut().filter(|s| s.1 == usize::MAX) {
                        span.1 = at;
                    }
                    let inside_number =
                        self.run_spaces_only && self.before_run.is_some_and(joins) && joins(c);
                    if !inside_number {
                        self.space = at;
                    }
                }
                self.last = Some(c);
            }
        }
        self.scanned = buf.len();
    }

    /// Moves a cut that falls between a `Bearer` word and its token to
    /// before the word.
    fn bearer_hold(&self, buf: &str, mut cut: usize) -> usize {
        if !self.bearer {
            return cut;
        }
        // The word may end the text, its whitespace not yet arrived.
        if cut == buf.len() && ends_with_bearer(buf, cut) {
            cut -= BEARER.len();
        }
        loop {
            let i = self.bearers.partition_point(|s| s.0 < cut);
            match i.checked_sub(1).and_then(|i| self.bearers.get(i)) {
                Some(&(word, token)) if cut <= token => cut = word,
                _ => return cut,
            }
        }
    }

    fn drain(&mut self, n: usize) {
        self.scanned = self.scanned.saturating_sub(n);
        self.line = self.line.saturating_sub(n);
        self.space = self.space.saturating_sub(n);
        // A span the cut went through (only a forced cut does) is over.
        self.bearers.retain(|s| s.0 >= n);
        for s in &mut self.bearers {
            s.0 -= n;
            if s.1 != usize::MAX {
                s.1 -= n;
            }
        }
    }
}

const BEARER: &str = "bearer";

/// Whether the text before `at` ends with the word the `bearer` detector
/// starts with, as its regex (`(?i)\bbearer`) would find it.
fn ends_with_bearer(buf: &str, at: usize) -> bool {
    let Some(start) = at.checked_sub(BEARER.len()) else {
        return false;
    };
    if !buf
        .get(start..at)
        .is_some_and(|w| w.eq_ignore_ascii_case(BEARER))
    {
        return false;
    }
    let before = buf.get(..start).and_then(|s| s.chars().next_back());
    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Characters that card, IBAN and phone matches join with spaces.
fn joins(c: char) -> bool {
    c.is_ascii_digit() || c.is_ascii_uppercase() || matches!(c, '(' | ')' | '.' | '-')
}

/// Private-key blocks in the held text, followed the way the detector's
/// lazy regex matches them: from a BEGIN line to the first END line after
/// it, nested BEGIN lines included.
#[derive(Default)]
struct Blocks {
    /// Where the search for the next marker resumes; while no block is
    /// open, text from here on may still become a BEGIN line.
    from: usize,
    /// The BEGIN line of a block whose END line has not arrived.
    open: Option<usize>,
    /// From the first BEGIN to the last END of the closed blocks held.
    closed: Option<(usize, usize)>,
    /// How far the label of a BEGIN line still arriving at `from` is
    /// known to be `[A-Z ]`, so a long one is not read again per chunk.
    known: usize,
}

impl Blocks {
    fn advance(&mut self, buf: &str) {
        loop {
            let head = if self.open.is_some() { END } else { BEGIN };
            let known = std::mem::take(&mut self.known);
            match marker(buf, self.from, head, known) {
                Marker::Found { start, end } => {
                    match self.open.take() {
                        None => self.open = Some(start),
                        Some(begin) => {
                            self.closed = Some((self.closed.map_or(begin, |c| c.0), end));
                        }
                    }
                    self.from = end;
                }
                Marker::Partial { start, known } => {
                    self.from = start;
                    self.known = known;
                    return;
                }
                Marker::Absent(at) => {
                    self.from = at;
                    return;
                }
            }
        }
    }

    fn drain(&mut self, n: usize) {
        self.known = if self.from < n {
            0
        } else {
            self.known.saturating_sub(n)
        };
        self.from = self.from.saturating_sub(n);
        self.open = self.open.map(|b| b.saturating_sub(n));
        self.closed = self
            .closed
            .and_then(|(start, end)| (end > n).then(|| (start.saturating_sub(n), end - n)));
    }
}

enum Marker {
    Found {
        start: usize,
        end: usize,
    },
    /// Text from `start` to the end may still become a marker; its label
    /// is `[A-Z ]` up to `known`.
    Partial {
        start: usize,
        known: usize,
    },
    /// No marker; the search resumes here (past a prefix of one that ends
    /// the text).
    Absent(usize),
}

/// Finds `head` + `[A-Z ]*PRIVATE KEY-----`, the detector's marker lines.
fn marker(buf: &str, from: usize, head: &str, known: usize) -> Marker {
    let mut pos = from;
    loop {
        let Some(hay) = buf.get(pos..) else {
            return Marker::Absent(buf.len());
        };
        let Some(i) = hay.find(head) else {
            let kept = (1..head.len())
                .rev()
                .find(|&k| head.get(..k).is_some_and(|p| hay.ends_with(p)))
                .unwrap_or(0);
            return Marker::Absent(buf.len() - kept);
        };
        let start = pos + i;
        let label_start = start + head.len();
        let rest = buf.get(label_start..).unwrap_or_default();
        let skip = if start == from {
            known.saturating_sub(label_start).min(rest.len())
        } else {
            0
        };
        // `[A-Z ]*` then a dash: the run must be the whole label, since the
        // dash cannot be part of it.
        let run = skip
            + rest
                .get(skip..)
                .unwrap_or_default()
                .bytes()
                .take_while(|b| b.is_ascii_uppercase() || *b == b' ')
                .count();
        let Some((label, tail)) = rest.split_at_checked(run) else {
            return Marker::Absent(buf.len());
        };
        if tail.is_empty() {
            return Marker::Partial {
                start,
                known: buf.len(),
            };
        }
        if label.ends_with(LABEL) {
            let dashes = tail.bytes().take_while(|&b| b == b'-').count();
            if dashes >= DASHES {
                return Marker::Found {
                    start,
                    end: start + head.len() + run + DASHES,
                };
            }
            if dashes == tail.len() {
                return Marker::Partial { start, known: 0 };
            }
        }
        pos = start + 1;
    }
}

fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::masking::{Masking, MASKING_FILE};

    const DETECTORS: &str = r#"
[[detector]]
kind = "private_key"
style = "fixed"
[[detector]]
kind = "aws_key"
style = "fixed"
[[detector]]
kind = "jwt"
style = "fixed"
[[detector]]
kind = "bearer"
style = "fixed"
"#;

    const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
    const TOKEN: &str = "abcdefgh12345678";

    fn plan_from(toml_text: &str) -> MaskPlan {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MASKING_FILE), toml_text).unwrap();
        Masking::load(dir.path())
            .unwrap_or_else(|p| panic!("{p:?}"))
            .plan("agent", "target")
    }

    fn plan() -> MaskPlan {
        plan_from(DETECTORS)
    }

    fn redactor() -> Redactor {
        Redactor::new(plan())
    }

    /// Pushes `data` in `size`-byte chunks (offset = chunk index), then
    /// finishes.
    fn run(r: &mut Redactor, data: &[u8], size: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (i, c) in data.chunks(size.max(1)).enumerate() {
            out.extend(r.push(i as u64, c));
        }
        out.extend(r.finish());
        out
    }

    fn joined(out: &[(u64, String)]) -> String {
        out.iter().map(|c| c.1.as_str()).collect()
    }

    use crate::testing::Rng;

    fn marker_line(kind: &str, label: &str) -> String {
        format!("-----{kind} {label} PRIVATE KEY-----")
    }

    /// A block of the right shape, for where a real key is not needed
    /// (the detector does not decode keys).
    fn key_shaped(rng: &mut Rng, lines: usize) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = marker_line("BEGIN", "OPENSSH");
        s.push('\n');
        for _ in 0..lines {
            for _ in 0..70 {
                s.push(B64[rng.below(B64.len())] as char);
            }
            s.push('\n');
        }
        s.push_str(&marker_line("END", "OPENSSH"));
        s.push('\n');
        s
    }

    /// A fresh OpenSSH key from ssh-keygen, or one of the same shape where
    /// ssh-keygen is missing: no key is kept in the source.
    fn openssh_key() -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "redact-test", "-f"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if made {
            std::fs::read_to_string(&path).unwrap()
        } else {
            key_shaped(&mut Rng(7), 6)
        }
    }

    fn body_lines(key: &str) -> Vec<String> {
        key.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .map(str::to_owned)
            .collect()
    }

    fn assert_no_leak(out: &str, body: &[String], what: &str) {
        for line in body {
            assert!(
                !out.contains(line.as_str()),
                "{what}: {line} leaked:\n{out}"
            );
            let head = &line[..line.len().min(16)];
            assert!(!out.contains(head), "{what}: start of {line} leaked");
        }
    }

    #[test]
    fn a_private_key_is_never_recorded_whatever_the_chunking() {
        let key = openssh_key();
        let body = body_lines(&key);
        assert!(body.len() >= 3, "{key}");
        for eol in ["\n", "\r\n"] {
            let text = format!(
                "$ cat ~/.ssh/id\r\n{}$ ls\r\nsrc\r\n$ ",
                key.replace('\n', eol)
            );
            for size in [1, 5, 64, text.len()] {
                let mut r = redactor();
                let out = run(&mut r, text.as_bytes(), size);
                let all = joined(&out);
                let what = format!("chunks of {size}, eol {eol:?}");
                assert_no_leak(&all, &body, &what);
                assert!(!all.contains("PRIVATE KEY"), "{what}: {all}");
                assert_eq!(
                    all,
                    "$ cat ~/.ssh/id\r\n****".to_owned() + eol + "$ ls\r\nsrc\r\n$ "
                );
                assert_eq!(r.masked(), 1, "{what}");
                assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "{what}: {out:?}");
            }
        }
    }

    #[test]
    fn an_aws_key_split_across_chunks_is_masked() {
        let mut r = redactor();
        assert!(r.push(1, b"export AWS_ACCESS_KEY_ID=AKIAIOSF").is_empty());
        let out = r.push(2, b"ODNN7EXAMPLE\r\n");
        assert_eq!(
            out,
            vec![(1, "export AWS_ACCESS_KEY_ID=****\r\n".to_owned())]
        );
        assert_eq!(r.masked(), 1);
        assert!(r.finish().is_empty());

        // Split three ways, with no line break before the end.
        let mut r = redactor();
        let mut out = r.push(1, b"key AKI");
        out.extend(r.push(2, b"AIOSFODN"));
        out.extend(r.push(3, b"N7EXAMPLE"));
        out.extend(r.finish());
        assert_eq!(joined(&out), "key ****");
        assert_eq!(r.masked(), 1);
    }

    #[test]
    fn typing_keeps_each_keystroke_and_its_offset() {
        let mut r = redactor();
        let mut out = r.push(10, b"l");
        out.extend(r.push(20, b"s"));
        out.extend(r.push(30, b"\r\n"));
        assert_eq!(
            out,
            vec![
                (10, "l".to_owned()),
                (20, "s".to_owned()),
                (30, "\r\n".to_owned())
            ]
        );
        assert!(r.finish().is_empty());
        assert_eq!(r.masked(), 0);
    }

    #[test]
    fn a_key_typed_keystroke_by_keystroke_is_masked_at_enter() {
        let mut r = redactor();
        let mut out = Vec::new();
        for (i, b) in format!("echo {AWS}").bytes().enumerate() {
            out.extend(r.push(i as u64, &[b]));
        }
        assert!(out.is_empty(), "held until the line ends");
        out.extend(r.push(99, b"\r"));
        assert_eq!(out, vec![(0, "echo ****\r".to_owned())]);
    }

    #[test]
    fn a_character_split_across_chunks_comes_back_whole() {
        for plan in [plan(), plan_from("")] {
            let mut r = Redactor::new(plan);
            let mut out = r.push(1, b"caf\xc3");
            out.extend(r.push(2, b"\xa9\n"));
            out.extend(r.finish());
            assert_eq!(joined(&out), "café\n");
            assert!(out.iter().all(|c| !c.1.contains('\u{fffd}')), "{out:?}");

            // Split three ways, and cut short at the end.
            let mut out = r.push(3, b"\xe2");
            out.extend(r.push(4, b"\x82"));
            out.extend(r.push(5, b"\xac \xff x \xe2\x82"));
            out.extend(r.finish());
            assert_eq!(joined(&out), "€ \u{fffd} x \u{fffd}");
        }
    }

    #[test]
    fn an_unterminated_block_past_the_hard_limit_is_masked_and_let_go() {
        let mut rng = Rng(3);
        let mut r = redactor();
        let mut out = r.push(0, b"$ head -c 100000 id\n");
        assert_eq!(joined(&out), "$ head -c 100000 id\n");
        out.clear();
        let mut body = Vec::new();
        let mut i = 1;
        let mut sent = 0;
        let mut text = marker_line("BEGIN", "RSA") + "\n";
        loop {
            let line: String = (0..64)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            text.push_str(&line);
            text.push('\n');
            body.push(line);
            if text.len() >= 1024 {
                let chunk = std::mem::take(&mut text);
                let got = r.push(i, chunk.as_bytes());
                i += 1;
                sent += chunk.len();
                assert!(r.held() <= Limits::default().hard);
                if !got.is_empty() {
                    out = got;
                    break;
                }
            }
        }
        assert_eq!(out, vec![(1, "****".to_owned())]);
        assert!(sent > Limits::default().hard && sent < Limits::default().hard + 1100);
        assert_eq!(r.masked(), 1);
        assert_eq!(r.held(), 0);
        let after = r.push(i, b"$ ls\n");
        assert_eq!(after, vec![(i, "$ ls\n".to_owned())]);
    }

    #[test]
    fn finish_lets_go_of_everything() {
        let mut r = redactor();
        assert!(r.push(1, b"no line break yet ").is_empty());
        let begin = marker_line("BEGIN", "OPENSSH");
        assert!(r.push(2, &begin.as_bytes()[..20]).is_empty());
        let out = r.finish();
        assert_eq!(
            out,
            vec![
                (1, "no line break yet ".to_owned()),
                (2, begin[..20].to_owned())
            ]
        );
        assert_eq!(r.held(), 0);

        // A block cut off by the end of the stream is still a key.
        let mut r = redactor();
        let mut out = r.push(1, b"$ head -3 id\n");
        out.extend(r.push(2, format!("{begin}\nb3BlbnNzaC1rZXktdjEAAAAA\n").as_bytes()));
        out.extend(r.finish());
        assert_eq!(joined(&out), "$ head -3 id\n****");
        assert_eq!(r.masked(), 1);
    }

    #[test]
    fn other_pem_blocks_are_not_held() {
        let mut r = redactor();
        let out = r.push(1, b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n");
        assert_eq!(
            joined(&out),
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n"
        );
    }

    #[test]
    fn a_token_at_the_soft_limit_is_held_whole() {
        let mut r = redactor();
        let words = "word ".repeat(1000);
        let mut data = words.clone();
        data.push_str(&JWT[..20]);
        let out = r.push(1, data.as_bytes());
        assert_eq!(joined(&out), words, "cut after the last space");
        assert!(r.held() < 100);
        let mut out = r.push(2, format!("{} more", &JWT[20..]).as_bytes());
        out.extend(r.finish());
        assert_eq!(joined(&out), "**** more");
        assert_eq!(r.masked(), 1);
    }

    #[test]
    fn a_begin_line_at_the_soft_limit_is_held_whole() {
        let key = key_shaped(&mut Rng(5), 4);
        let (begin, rest) = key.split_at(23); // "-----BEGIN OPENSSH PRIV"
        let words = "word ".repeat(1000);
        let mut r = redactor();
        let out = r.push(1, format!("{words}{begin}").as_bytes());
        assert_eq!(joined(&out), words);
        let mut out = r.push(2, rest.as_bytes());
        out.extend(r.finish());
        assert_eq!(joined(&out), "****\n");

        // Past the hard limit without a cut point, the marker is still kept.
        let mut r = redactor();
        let blob = "x".repeat(70 << 10);
        let out = r.push(1, format!("{blob}{begin}").as_bytes());
        assert_eq!(joined(&out), blob);
        let mut out = r.push(2, rest.as_bytes());
        out.extend(r.finish());
        assert_eq!(joined(&out), "****\n");
    }

    #[test]
    fn the_hard_limit_measures_the_block_alone() {
        let limits = Limits {
            soft: 64,
            hard: 1024,
        };
        let key = key_shaped(&mut Rng(9), 12);
        assert!(key.len() < limits.hard && key.len() > limits.hard - 200);
        let token = "t".repeat(300);
        let mut r = Redactor::with_limits(plan(), limits);
        let mut out = r.push(1, token.as_bytes());
        for (i, piece) in key.as_bytes().chunks(100).enumerate() {
            out.extend(r.push(2 + i as u64, piece));
        }
        out.extend(r.finish());
        assert_eq!(joined(&out), format!("{token}****\n"));
        assert_eq!(r.masked(), 1);
    }

    #[test]
    fn a_card_number_is_not_cut_at_its_spaces() {
        let plan = plan_from("[[detector]]\nkind = \"card\"\nstyle = \"fixed\"\n");
        let mut r = Redactor::with_limits(
            plan,
            Limits {
                soft: 8,
                hard: 1024,
            },
        );
        let mut out = r.push(1, b"card 4111 1111");
        out.extend(r.push(2, b" 1111 1111 ok"));
        out.extend(r.finish());
        assert_eq!(joined(&out), "card **** ok");
    }

    #[test]
    fn a_bearer_token_on_the_next_line_is_masked() {
        let mut r = redactor();
        let mut out = r.push(1, b"Authorization: Bearer\r\n");
        out.extend(r.push(2, format!("{TOKEN}\r\n").as_bytes()));
        assert_eq!(joined(&out), "Authorization: ****\r\n");

        // Forced out past the hard limit, the word is still kept for its token.
        let mut r = redactor();
        let blob = "x".repeat(70 << 10);
        let out = r.push(1, format!("{blob}-Bearer").as_bytes());
        assert_eq!(joined(&out), format!("{blob}-"));
        let mut out = r.push(2, format!(" {TOKEN}\n").as_bytes());
        out.extend(r.finish());
        assert_eq!(joined(&out), "****\n");
    }

    #[test]
    fn without_detectors_chunks_pass_straight_through() {
        let mut r = Redactor::new(plan_from(""));
        assert_eq!(r.push(5, b"ab"), vec![(5, "ab".to_owned())]);
        assert_eq!(r.push(6, AWS.as_bytes()), vec![(6, AWS.to_owned())]);
        assert!(r.push(7, b"\xc3").is_empty());
        assert_eq!(r.finish(), vec![(7, "\u{fffd}".to_owned())]);
    }

    /// Random text made of what secrets and the cut rules care about.
    fn random_text(rng: &mut Rng) -> String {
        let seps = [" ", "  ", "\n", "\r\n", "\t", "\r", " \n"];
        let words = [
            "ls",
            "$",
            "café",
            "日本語",
            "word",
            "HTTP",
            "200",
            "OK",
            "(555)",
            "-",
            "---",
            "-----",
            "-----BEGIN",
            "-----BEGIN RSA",
            "-----BEGIN CERTIFICATE-----",
            "-----END CERTIFICATE-----",
            "-----END RSA PRIVATE KEY-----",
            "Bearer",
            "bearer:",
            "xbearer",
            "eyJ",
            "a.b",
            "AKIA",
        ];
        let mut s = String::new();
        let n = rng.below(200);
        for _ in 0..n {
            match rng.below(30) {
                0 => s.push_str(AWS),
                1 => s.push_str(JWT),
                2 => {
                    s.push_str(rng.pick(&["Bearer", "bearer", "BEARER"]));
                    s.push_str(rng.pick(&[" ", "\r\n", "\n  ", "\t"]));
                    s.push_str(TOKEN);
                }
                3 => {
                    let lines = rng.below(8);
                    s.push_str(&key_shaped(rng, lines));
                }
                4 => {
                    // A BEGIN line, then a whole block: one match.
                    s.push_str(&marker_line("BEGIN", "EC"));
                    s.push('\n');
                    s.push_str(&key_shaped(rng, 1));
                }
                _ => s.push_str(rng.pick(&words)),
            }
            s.push_str(rng.pick(&seps));
        }
        s
    }

    fn random_chunks(rng: &mut Rng, data: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let max = [1, 3, 17, 200, 5000][rng.below(5)];
        let mut out = Vec::new();
        let mut at = 0;
        let mut offset = 0;
        while at < data.len() {
            let n = 1 + rng.below(max);
            let end = (at + n).min(data.len());
            out.push((offset, data[at..end].to_vec()));
            offset += 1 + rng.below(3) as u64;
            at = end;
        }
        out
    }

    fn feed(r: &mut Redactor, chunks: &[(u64, Vec<u8>)]) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (at, c) in chunks {
            out.extend(r.push(*at, c));
            // A chunk is let go or masked before the call returns; only an
            // unfinished character outlives it beyond the hard limit.
            assert!(
                r.held() <= r.limits.hard + 3,
                "held {} of {}",
                r.held(),
                c.len()
            );
        }
        out.extend(r.finish());
        assert_eq!(r.held(), 0);
        out
    }

    #[test]
    fn chunked_masking_equals_masking_the_whole_text() {
        let plan = plan();
        for seed in 1..400u64 {
            let mut rng = Rng(seed);
            let text = random_text(&mut rng);
            let chunks = random_chunks(&mut rng, text.as_bytes());
            let (want, n) = plan.scan(&text);
            let offsets: Vec<u64> = chunks.iter().map(|c| c.0).collect();
            // A tiny soft limit cuts at every safe space.
            for limits in [
                Limits::default(),
                Limits {
                    soft: 16,
                    hard: 1 << 20,
                },
            ] {
                let mut r = Redactor::with_limits(plan.clone(), limits);
                let out = feed(&mut r, &chunks);
                let what = format!("seed {seed} {limits:?}");
                assert_eq!(joined(&out), want, "{what}");
                assert_eq!(r.masked(), n, "{what}");
                for secret in [AWS, JWT, TOKEN] {
                    assert!(!joined(&out).contains(secret), "{what}");
                }
                assert!(out.iter().all(|c| offsets.contains(&c.0)), "{what}");
                assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "{what}");
                assert!(out.iter().all(|c| !c.1.is_empty()), "{what}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_and_come_back_as_lossy_text() {
        const ALPHABET: &[u8] = b"-----BEGIN PRIVATE KEYEND \n\r\t Bearer AKIA eyJ.0123 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xff\x80";
        let plans = [plan(), plan_from("")];
        for seed in 1..300u64 {
            let mut rng = Rng(seed);
            let len = rng.below(3000);
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        rng.next_u64() as u8
                    } else {
                        ALPHABET[rng.below(ALPHABET.len())]
                    }
                })
                .collect();
            let chunks = random_chunks(&mut rng, &data);
            let want = String::from_utf8_lossy(&data);
            for (i, plan) in plans.iter().enumerate() {
                let limits = [
                    Limits::default(),
                    Limits { soft: 8, hard: 64 },
                    Limits { soft: 0, hard: 0 },
                ];
                for limits in limits {
                    let mut r = Redactor::with_limits(plan.clone(), limits);
                    let out = feed(&mut r, &chunks);
                    if r.masked() == 0 {
                        assert_eq!(joined(&out), want, "seed {seed} plan {i} {limits:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn random_secrets_with_tiny_limits_never_panic() {
        let plan = plan();
        for seed in 1..300u64 {
            let mut rng = Rng(seed);
            let text = random_text(&mut rng);
            let chunks = random_chunks(&mut rng, text.as_bytes());
            for limits in [
                Limits {
                    soft: 16,
                    hard: 256,
                },
                Limits { soft: 1, hard: 3 },
            ] {
                let mut r = Redactor::with_limits(plan.clone(), limits);
                let out = feed(&mut r, &chunks);
                assert!(out.iter().all(|c| !c.1.is_empty()), "seed {seed}");
            }
        }
    }
}

//! A push as git-receive-pack reads it (gitprotocol-pack, receive-pack
//! v0/v1; pushes have no protocol v2), and the answers blastgate gives in
//! git's own report-status form.
//!
//! The client sends optional `shallow <oid>` lines, then ref-update
//! commands `<old> <new> <ref>` (the first with `\0<capabilities>`), a
//! flush, push options and a flush if it negotiated `push-options`, then
//! the PACK unless every command is a delete. Each command is ruled on as
//! `git:push`; the allowed ones go to the server with the whole pack
//! (objects nobody references are harmless: the server prunes them), and
//! the refused ones are answered here with `ng <ref> <reason>`, merged
//! into the server's own report so the agent's git prints each reason.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::{
    pack::{hex, parse_hex, Commits, Oid},
    pktline::{self, Pkt, FLUSH},
};

/// The longest command section blastgate reads (git itself has no limit,
/// but a push of thousands of refs still fits).
pub const MAX_HEAD: usize = 1 << 20;
pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// One ref-update command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl Update {
    pub fn created(&self) -> bool {
        self.old == ZERO
    }
    pub fn deleted(&self) -> bool {
        self.new == ZERO
    }
}

/// Whether an update rewrites history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    No,
    Yes,
    /// blastgate cannot tell (commits the server holds, a thin or
    /// oversized pack): policy decides, never as a fast-forward.
    Unknown,
}

impl Forced {
    pub fn as_str(self) -> &'static str {
        match self {
            Forced::No => "false",
            Forced::Yes => "true",
            Forced::Unknown => "unknown",
        }
    }
}

/// The command section of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub shallow: Vec<Vec<u8>>,
    pub updates: Vec<Update>,
    /// The capabilities as sent after the first command's NUL.
    pub caps_raw: String,
    pub options: Vec<Vec<u8>>,
    /// Bytes of the stream the section took.
    pub len: usize,
}

impl Head {
    pub fn has(&self, cap: &str) -> bool {
        self.caps_raw.split(' ').any(|c| c == cap)
    }

    pub fn sideband(&self) -> bool {
        self.has("side-band-64k") || self.has("side-band")
    }

    pub fn reports(&self) -> bool {
        self.has("report-status") || self.has("report-status-v2")
    }

    /// Whether a pack follows the section.
    pub fn has_pack(&self) -> bool {
        self.updates.iter().any(|u| !u.deleted())
    }

    /// What goes upstream of a push whose commands are decided: the
    /// section with only the `keep` commands, then the pack (the rest of
    /// `received`, which starts with this section) when a kept command
    /// needs objects. A pack behind only refused or deleting commands is
    /// dropped, so the server never stores objects blastgate refused.
    /// The flag says whether the pack follows (the stream past
    /// `received` is then the pack's too).
    pub fn forwarded(&self, keep: &[bool], received: &[u8]) -> (Vec<u8>, bool) {
        let mut out = self.encode(keep);
        let pack_needed = self
            .updates
            .iter()
            .zip(keep)
            .any(|(u, k)| *k && !u.deleted());
        if pack_needed {
            out.extend_from_slice(received.get(self.len..).unwrap_or_default());
        }
        (out, pack_needed)
    }

    /// The section rewritten with only the `keep` commands; just a flush
    /// (the server then ends quietly) when none is kept.
    pub fn encode(&self, keep: &[bool]) -> Vec<u8> {
        let kept: Vec<&Update> = self
            .updates
            .iter()
            .zip(keep)
            .filter_map(|(u, k)| k.then_some(u))
            .collect();
        if kept.is_empty() {
            return FLUSH.to_vec();
        }
        let mut out = Vec::new();
        for s in &self.shallow {
            out.extend(pktline::encode(s));
        }
        for (i, u) in kept.iter().enumerate() {
            let mut line = format!("{} {} {}", u.old, u.new, u.name).into_bytes();
            if i == 0 {
                line.push(0);
                line.extend_from_slice(self.caps_raw.as_bytes());
            }
            line.push(b'\n');
            out.extend(pktline::encode(&line));
        }
        out.extend_from_slice(FLUSH);
        if self.has("push-options") {
            for o in &self.options {
                out.extend(pktline::encode(o));
            }
            out.extend_from_slice(FLUSH);
        }
        out
    }
}

/// The command section at the start of `buf`. Ok(None): more is needed.
/// Err: blastgate will not pass it (malformed, or a form it does not
/// read: signed pushes, SHA-256 repositories).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut at = 0;
    let mut head = Head {
        shallow: Vec::new(),
        updates: Vec::new(),
        caps_raw: String::new(),
        options: Vec::new(),
        len: 0,
    };
    let mut in_options = false;
    loop {
        if at > MAX_HEAD {
            return Err(format!("a push's commands are over {MAX_HEAD} bytes"));
        }
        let Some((pkt, used)) = pktline::read(&buf[at..])? else {
            if buf.len() > MAX_HEAD {
                return Err(format!("a push's commands are over {MAX_HEAD} bytes"));
            }
            return Ok(None);
        };
        at += used;
        match pkt {
            Pkt::Flush if in_options => break,
            Pkt::Flush => {
                if head.updates.is_empty() || !head.has("push-options") {
                    break;
                }
                in_options = true;
            }
            Pkt::Data(p) if in_options => head.options.push(p.to_vec()),
            Pkt::Data(p) if head.updates.is_empty() && p.starts_with(b"shallow ") => {
                let id = p[8..].strip_suffix(b"\n").unwrap_or(&p[8..]);
                parse_hex(id).ok_or("a shallow line without an object id")?;
                head.shallow.push(p.to_vec());
            }
            Pkt::Data(p) => {
                let p = p.strip_suffix(b"\n").unwrap_or(p);
                let (cmd, caps) = match p.iter().position(|&b| b == 0) {
                    Some(i) if head.updates.is_empty() => (&p[..i], Some(&p[i + 1..])),
                    Some(_) => return Err("capabilities after the first command".into()),
                    None => (p, None),
                };
                if head.updates.is_empty() {
                    let caps = caps.ok_or("the first command carries no capabilities")?;
                    head.caps_raw = String::from_utf8(caps.to_vec())
                        .map_err(|_| "capabilities that are not UTF-8")?;
                    if head
                        .caps_raw
                        .split(' ')
                        .any(|c| c.starts_with("object-format=") && c != "object-format=sha1")
                    {
                        return Err(
                            "SHA-256 repositories are not supported by blastgate's git gateway"
                                .into(),
                        );
                    }
                }
                if cmd.starts_with(b"push-cert") {
                    return Err(
                        "signed pushes (push-cert) are not supported by blastgate's git gateway"
                            .into(),
                    );
                }
                head.updates.push(command(cmd)?);
            }
        }
    }
    if head.updates.is_empty() && !head.shallow.is_empty() {
        return Err("shallow lines without commands".into());
    }
    head.len = at;
    Ok(Some(head))
}

/// `<old> <new> <ref>`, with a ref name the server would accept.
fn command(cmd: &[u8]) -> Result<Update, String> {
    let text = std::str::from_utf8(cmd).map_err(|_| "a command that is not UTF-8")?;
    let mut parts = text.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("a malformed command {text:?}"));
    };
    for id in [old, new] {
        if id.len() == 64 {
            return Err("SHA-256 object ids are not supported by blastgate's git gateway".into());
        }
        parse_hex(id.as_bytes()).ok_or_else(|| format!("a malformed object id {id:?}"))?;
    }
    if old == ZERO && new == ZERO {
        return Err(format!(
            "a command that neither creates nor deletes {name:?}"
        ));
    }
    if !refname_ok(name) {
        return Err(format!("a ref name git would refuse: {name:?}"));
    }
    Ok(Update {
        old: old.into(),
        new: new.into(),
        name: name.into(),
    })
}

/// git's check_refname_format for `refs/...` names: what receive-pack
/// accepts, so the name policy sees is the name the server updates.
pub fn refname_ok(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("refs/") else {
        return false;
    };
    if rest.is_empty() || name.ends_with('/') || name.ends_with('.') || name.contains("@{") {
        return false;
    }
    if name == "@" {
        return false;
    }
    name.split('/').all(|c| {
        !c.is_empty()
            && !c.starts_with('.')
            && !c.ends_with(".lock")
            && !c.contains("..")
            && !c
                .chars()
                .any(|ch| ch.is_control() || " ~^:?*[\\\u{7f}".contains(ch))
    })
}

/// Walks from `new` through the pack's commits. Ok: the answer. Err:
/// the commits outside the pack the walk reached (the server has them):
/// `new` descends from `old` iff `old` is an ancestor of one of them.
pub fn ancestry(old: &Oid, new: &Oid, commits: Option<&Commits>) -> Result<Forced, Vec<Oid>> {
    let Some(commits) = commits else {
        return Err(vec![*new]);
    };
    let mut seen = HashSet::new();
    let mut todo = vec![*new];
    let mut outside = Vec::new();
    while let Some(c) = todo.pop() {
        if &c == old {
            return Ok(Forced::No);
        }
        if !seen.insert(c) {
            continue;
        }
        match commits.parents.get(&c) {
            Some(ps) => todo.extend(ps.iter().copied()),
            None => outside.push(c),
        }
    }
    if outside.is_empty() && !commits.incomplete {
        return Ok(Forced::Yes);
    }
    Err(outside)
}

/// What policy sees of one update (the schema's `GitContext`).
pub fn context(u: &Update, forced: Forced) -> Value {
    json!({
        "ref": u.name,
        "old": u.old,
        "new": u.new,
        "created": u.created(),
        "deleted": u.deleted(),
        "forced": forced.as_str(),
    })
}

/// The same, for the record's context map.
pub fn record_context(u: &Update, forced: Forced) -> std::collections::BTreeMap<String, String> {
    [
        ("ref", u.name.clone()),
        ("old", u.old.clone()),
        ("new", u.new.clone()),
        ("created", u.created().to_string()),
        ("deleted", u.deleted().to_string()),
        ("forced", forced.as_str().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The record's line for an update.
pub fn text(u: &Update, forced: Forced) -> String {
    let what = if u.deleted() {
        format!("delete {}", u.name)
    } else if u.created() {
        format!("create {} at {}", u.name, &u.new)
    } else {
        format!("update {} {}..{}", u.name, &u.old, &u.new)
    };
    format!("git push: {what} (forced: {})", forced.as_str())
}

/// A reason as one report line can carry it.
fn one_line(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

fn ng_lines(refused: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, reason) in refused {
        out.extend(pktline::encode(
            format!("ng {name} {}\n", one_line(reason)).as_bytes(),
        ));
    }
    out
}

/// `inner` (a pkt-line stream) in side-band channel 1.
fn band1(inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in inner.chunks(pktline::MAX_PKT - 5) {
        let mut p = vec![1];
        p.extend_from_slice(chunk);
        out.extend(pktline::encode(&p));
    }
    out
}

/// The whole report when the server got no command: `unpack ok` and an
/// `ng` line per refused ref.
pub fn whole_report(refused: &[(String, String)], sideband: bool) -> Vec<u8> {
    let mut inner = pktline::encode(b"unpack ok\n");
    inner.extend(ng_lines(refused));
    inner.extend_from_slice(FLUSH);
    if sideband {
        let mut out = band1(&inner);
        out.extend_from_slice(FLUSH);
        out
    } else {
        inner
    }
}

/// The server's side of a receive-pack channel, passed through with the
/// refused refs' `ng` lines slipped into its report.
#[derive(Default)]
pub struct ReportSplice {
    /// The ref advertisement has ended.
    advertised: bool,
    /// Lines to add; None: pass everything.
    refused: Option<Vec<(String, String)>>,
    sideband: bool,
    outer: Vec<u8>,
    inner: Vec<u8>,
    done: bool,
}

impl ReportSplice {
    /// For a stateless (smart HTTP) answer: no ref advertisement comes
    /// before the report.
    pub fn stateless() -> ReportSplice {
        ReportSplice {
            advertised: true,
            ..Default::default()
        }
    }

    /// From now on the report carries these refusals.
    pub fn refuse(&mut self, refused: Vec<(String, String)>, sideband: bool) {
        if !refused.is_empty() {
            self.refused = Some(refused);
            self.sideband = sideband;
        }
    }

    /// The bytes to send the agent for the server's `data`. Err: the
    /// server's stream is not git's.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        if self.done || (self.advertised && self.refused.is_none()) {
            return Ok(data.to_vec());
        }
        self.outer.extend_from_slice(data);
        let mut out = Vec::new();
        let mut at = 0;
        while !self.done {
            if self.advertised && self.refused.is_none() {
                out.extend_from_slice(&self.outer[at..]);
                at = self.outer.len();
                break;
            }
            let Some((pkt, used)) = pktline::read(&self.outer[at..])? else {
                break;
            };
            let raw = &self.outer[at..at + used];
            match pkt {
                _ if !self.advertised => {
                    out.extend_from_slice(raw);
                    self.advertised = pkt == Pkt::Flush;
                }
                Pkt::Data([1, rest @ ..]) if self.sideband => {
                    self.inner.extend_from_slice(rest);
                    out.extend(self.inner_lines()?);
                }
                Pkt::Data(line) if !self.sideband => {
                    out.extend_from_slice(raw);
                    let _ = line;
                }
                Pkt::Flush if !self.sideband => {
                    out.extend(ng_lines(self.refused.as_deref().unwrap_or_default()));
                    out.extend_from_slice(FLUSH);
                    self.done = true;
                }
                _ => out.extend_from_slice(raw),
            }
            at += used;
        }
        if self.done {
            out.extend_from_slice(&self.outer[at..]);
            self.outer.clear();
        } else {
            self.outer.drain(..at);
        }
        Ok(out)
    }

    /// Complete report lines from side-band 1, re-wrapped; the refusals
    /// go in before the report's flush.
    fn inner_lines(&mut self) -> Result<Vec<u8>, String> {
        let mut plain = Vec::new();
        let mut at = 0;
        while let Some((pkt, used)) = pktline::read(&self.inner[at..])? {
            if pkt == Pkt::Flush {
                plain.extend(ng_lines(self.refused.as_deref().unwrap_or_default()));
                self.refused = None;
            }
            plain.extend_from_slice(&self.inner[at..at + used]);
            at += used;
        }
        self.inner.drain(..at);
        Ok(if plain.is_empty() {
            Vec::new()
        } else {
            band1(&plain)
        })
    }
}

/// The refusals for a ruled push: `allowed[i]` for each update; with
/// `atomic`, one refusal refuses all.
pub fn refusals(
    head: &Head,
    allowed: &[bool],
    reasons: &HashMap<usize, String>,
) -> (Vec<bool>, Vec<(String, String)>) {
    let atomic = head.has("atomic") && allowed.iter().any(|a| !a);
    let mut keep = Vec::new();
    let mut refused = Vec::new();
    for (i, u) in head.updates.iter().enumerate() {
        if allowed[i] && !atomic {
            keep.push(true);
            continue;
        }
        keep.push(false);
        let reason = reasons
            .get(&i)
            .cloned()
            .unwrap_or_else(|| "atomic push failed: another ref was refused by blastgate".into());
        refused.push((u.name.clone(), reason));
    }
    (keep, refused)
}

/// `oid` as hex (re-exported for callers that hold ids).
pub fn oid_text(oid: &Oid) -> String {
    hex(oid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::git::pack::{
        object_id, tests as packs, Limits, Scan, Scanner, OBJ_COMMIT,
    };

    fn line(s: &str) -> Vec<u8> {
        pktline::encode(s.as_bytes())
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn request(cmds: &[&str], caps: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            if i == 0 {
                out.extend(line(&format!("{c}\0{caps}\n")));
            } else {
                out.extend(line(&format!("{c}\n")));
            }
        }
        out.extend_from_slice(FLUSH);
        out
    }

    #[test]
    fn commands_are_parsed_and_rewritten() {
        let caps = "report-status side-band-64k atomic agent=git/2.39";
        let mut req = request(
            &[
                &format!("{A} {B} refs/heads/main"),
                &format!("{ZERO} {B} refs/heads/topic"),
                &format!("{A} {ZERO} refs/heads/release/1"),
            ],
            caps,
        );
        let len = req.len();
        req.extend_from_slice(b"PACK...");
        for cut in 0..len {
            assert_eq!(parse_head(&req[..cut]).unwrap(), None, "cut {cut}");
        }
        let head = parse_head(&req).unwrap().unwrap();
        assert_eq!(head.len, len);
        assert_eq!(head.updates.len(), 3);
        assert!(head.updates[1].created() && head.updates[2].deleted());
        assert!(head.sideband() && head.reports() && head.has("atomic") && head.has_pack());
        // Keep only the second: it carries the capabilities now.
        let again = parse_head(&head.encode(&[false, true, false]))
            .unwrap()
            .unwrap();
        assert_eq!(again.updates, vec![head.updates[1].clone()]);
        assert_eq!(again.caps_raw, caps);
        assert_eq!(head.encode(&[false, false, false]), FLUSH.to_vec());
    }

    #[test]
    fn push_options_and_shallow_lines_survive() {
        let mut req = line(&format!("shallow {A}\n"));
        req.extend(request(
            &[&format!("{A} {B} refs/heads/x")],
            "report-status push-options",
        ));
        req.extend(line("ci.skip"));
        req.extend_from_slice(FLUSH);
        let head = parse_head(&req).unwrap().unwrap();
        assert_eq!(head.len, req.len());
        assert_eq!(head.options, vec![b"ci.skip".to_vec()]);
        assert_eq!(head.encode(&[true]), req);
    }

    #[test]
    fn malformed_and_unsupported_pushes_are_refused() {
        let bad = [
            request(&[&format!("{A} {B} refs/heads//main")], "report-status"),
            request(
                &[&format!("{A} {B} refs/heads/main/../main")],
                "report-status",
            ),
            request(&[&format!("{A} {B} HEAD")], "report-status"),
            request(&[&format!("{A} {B} refs/heads/x.lock")], "report-status"),
            request(&[&format!("{A} {B} refs/heads/a b")], "report-status"),
            request(&[&format!("{A} {B}")], "report-status"),
            request(
                &[&format!(
                    "ABCDEF0123456789ABCDEF0123456789ABCDEF01 {B} refs/heads/x"
                )],
                "report-status",
            ),
            request(&[&format!("{ZERO} {ZERO} refs/heads/x")], "report-status"),
            request(&[&format!("{A} {B} refs/heads/x")], "object-format=sha256"),
            request(&["push-cert"], "report-status"),
            line(&format!("{A} {B} refs/heads/x\n")),
        ];
        for b in bad {
            let mut b = b;
            b.extend_from_slice(FLUSH);
            assert!(parse_head(&b).is_err(), "{:?}", String::from_utf8_lossy(&b));
        }
        let harmless = request(
            &[&format!("{A} {B} refs/heads/feature/x-1.2")],
            "report-status",
        );
        assert!(parse_head(&harmless).unwrap().is_some());
    }

    #[test]
    fn ancestry_from_the_pack() {
        let old = [1u8; 20];
        let c1 = packs::commit(&[old], "ff");
        let id1 = object_id(OBJ_COMMIT, &c1);
        let rewrite = packs::commit(&[[9; 20]], "rewritten");
        let id2 = object_id(OBJ_COMMIT, &rewrite);
        let root = packs::commit(&[], "orphan");
        let id3 = object_id(OBJ_COMMIT, &root);
        // A merge whose second parent is outside the pack.
        let merge = packs::commit(&[id3, [8; 20]], "merge");
        let id4 = object_id(OBJ_COMMIT, &merge);
        let p = packs::pack(&[
            packs::object(OBJ_COMMIT, &c1, None),
            packs::object(OBJ_COMMIT, &rewrite, None),
            packs::object(OBJ_COMMIT, &root, None),
            packs::object(OBJ_COMMIT, &merge, None),
        ]);
        let mut s = Scanner::new(Limits::default());
        assert!(matches!(s.feed(&p).unwrap(), Scan::Done(_)));
        let commits = s.commits().unwrap();
        assert_eq!(ancestry(&old, &id1, Some(&commits)), Ok(Forced::No));
        assert_eq!(ancestry(&old, &id2, Some(&commits)), Err(vec![[9; 20]]));
        assert_eq!(ancestry(&old, &id3, Some(&commits)), Ok(Forced::Yes));
        assert_eq!(ancestry(&old, &id4, Some(&commits)), Err(vec![[8; 20]]));
        assert_eq!(ancestry(&old, &id1, None), Err(vec![id1]));
    }

    #[test]
    fn reports_are_gits_own() {
        let refused = vec![("refs/heads/main".to_string(), "no\nforce".to_string())];
        assert_eq!(
            whole_report(&refused, false),
            [
                line("unpack ok\n"),
                line("ng refs/heads/main no force\n"),
                FLUSH.to_vec()
            ]
            .concat()
        );
        let sb = whole_report(&refused, true);
        assert_eq!(&sb[4..5], &[1]);
        assert!(sb.ends_with(b"00000000"));
    }

    #[test]
    fn server_reports_get_the_refusals_at_any_chunking() {
        let refused = vec![("refs/heads/main".to_string(), "refused".to_string())];
        let advert = [
            line(&format!("{A} refs/heads/main\0report-status\n")),
            FLUSH.to_vec(),
        ]
        .concat();
        // Plain report.
        let report = [
            line("unpack ok\n"),
            line("ok refs/heads/x\n"),
            FLUSH.to_vec(),
        ]
        .concat();
        let want = [
            advert.clone(),
            line("unpack ok\n"),
            line("ok refs/heads/x\n"),
            line("ng refs/heads/main refused\n"),
            FLUSH.to_vec(),
        ]
        .concat();
        let stream = [advert.clone(), report].concat();
        for k in [1, 3, 1000] {
            let mut s = ReportSplice::default();
            s.refuse(refused.clone(), false);
            let got: Vec<u8> = stream.chunks(k).flat_map(|c| s.feed(c).unwrap()).collect();
            assert_eq!(got, want, "k={k}");
        }
        // Side-band: progress on 2 passes, the report in 1 gains the line.
        let inner = [
            line("unpack ok\n"),
            line("ok refs/heads/x\n"),
            FLUSH.to_vec(),
        ]
        .concat();
        let stream = [
            advert.clone(),
            pktline::encode(b"\x02progress\n"),
            band1(&inner),
            FLUSH.to_vec(),
        ]
        .concat();
        for k in [1, 5, 1000] {
            let mut s = ReportSplice::default();
            s.refuse(refused.clone(), true);
            let got: Vec<u8> = stream.chunks(k).flat_map(|c| s.feed(c).unwrap()).collect();
            // Unwrap band 1 and check the report.
            let mut at = advert.len();
            let mut report = Vec::new();
            while let Some((pkt, used)) = pktline::read(&got[at..]).unwrap() {
                if let Pkt::Data([1, rest @ ..]) = pkt {
                    report.extend_from_slice(rest);
                }
                at += used;
                if at == got.len() {
                    break;
                }
            }
            assert_eq!(
                report,
                [
                    line("unpack ok\n"),
                    line("ok refs/heads/x\n"),
                    line("ng refs/heads/main refused\n"),
                    FLUSH.to_vec()
                ]
                .concat(),
                "k={k}"
            );
            assert!(got.ends_with(FLUSH));
        }
    }

    #[test]
    fn atomic_refuses_all() {
        let req = request(
            &[
                &format!("{A} {B} refs/heads/main"),
                &format!("{A} {B} refs/heads/x"),
            ],
            "report-status atomic",
        );
        let head = parse_head(&req).unwrap().unwrap();
        let reasons = HashMap::from([(0, "held".to_string())]);
        let (keep, refused) = refusals(&head, &[false, true], &reasons);
        assert_eq!(keep, vec![false, false]);
        assert_eq!(refused.len(), 2);
    }
}

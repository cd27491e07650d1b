//! git pushes under policy, for the gateways that carry git (SSH exec of
//! `git-receive-pack`, smart HTTP `POST .../git-receive-pack`).
//!
//! [`Incoming`] collects the agent's side of a push until it can be ruled
//! on: the command section ([`push::Head`]) and the pack ([`pack`]) as far
//! as [`pack::Limits`] allow. Each ref update becomes one `git:push`
//! decision with `ref`, `old`, `new`, `created`, `deleted` and `forced`
//! ([`push::Forced`]: a fast-forward or not by the pushed commits' graph,
//! `unknown` when blastgate cannot tell). Fetch and clone
//! (`git-upload-pack`) are not touched.

pub mod pack;
pub mod pktline;
pub mod push;

use pack::{Commits, Limits, Scan, Scanner};
use push::{parse_head, Head};

/// A push whose commands (and pack, as far as it is read) have arrived.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub head: Head,
    /// The pack's commits; None when the pack was not read whole (over a
    /// limit, or the agent stopped sending): ancestry is then unknown.
    pub commits: Option<Commits>,
    /// Why the pack was not read whole, for the record.
    pub pack_note: Option<String>,
}

/// The agent's side of a push until it can be ruled on.
pub struct Incoming {
    buf: Vec<u8>,
    head: Option<Head>,
    scanner: Scanner,
    /// Where the next pkt-line of the command section starts: the section
    /// is parsed only once a flush (or something that is not a pkt-line)
    /// has arrived, so a section sent a byte at a time costs linear work.
    scanned: usize,
    /// How many times the command section was parsed (for tests).
    parses: usize,
}

/// How far [`Incoming::step`] got.
enum Step {
    NotYet,
    Ready(Parsed),
    /// The pack was read whole: its deltas are to be resolved.
    Resolve(Head, Box<Scanner>),
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming::new(Limits::default())
    }
}

impl Incoming {
    pub fn new(limits: Limits) -> Incoming {
        Incoming {
            buf: Vec::new(),
            head: None,
            scanner: Scanner::new(limits),
            scanned: 0,
            parses: 0,
        }
    }

    /// Everything received so far (what is forwarded after the ruling,
    /// with the command section rewritten).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Adds `data`; `eof`: the agent will send nothing more. Ok(Some):
    /// ready to rule. Err: a push blastgate will not pass. Resolves the
    /// pack's deltas on the calling thread: async code calls
    /// [`Incoming::push_async`].
    pub fn push(&mut self, data: &[u8], eof: bool) -> Result<Option<Parsed>, String> {
        match self.step(data, eof)? {
            Step::NotYet => Ok(None),
            Step::Ready(p) => Ok(Some(p)),
            Step::Resolve(head, scanner) => Ok(Some(resolved(head, scanner.commits()?))),
        }
    }

    /// [`Incoming::push`] for async code: the deltas (bounded, but up to
    /// a few times [`Limits::max_kept`] of copying) are resolved on a
    /// blocking thread, not a runtime worker.
    pub async fn push_async(&mut self, data: &[u8], eof: bool) -> Result<Option<Parsed>, String> {
        match self.step(data, eof)? {
            Step::NotYet => Ok(None),
            Step::Ready(p) => Ok(Some(p)),
            Step::Resolve(head, scanner) => {
                let commits = tokio::task::spawn_blocking(move || scanner.commits())
                    .await
                    .map_err(|e| format!("blastgate failed resolving the pack's deltas: {e}"))??;
                Ok(Some(resolved(head, commits)))
            }
        }
    }

    fn step(&mut self, data: &[u8], eof: bool) -> Result<Step, String> {
        self.buf.extend_from_slice(data);
        if self.head.is_none() {
            if !eof && !self.section_may_have_ended() {
                return Ok(Step::NotYet);
            }
            self.parses += 1;
            match parse_head(&self.buf)? {
                Some(h) => self.head = Some(h),
                None if eof => return Err("the push ended before its commands did".into()),
                None => return Ok(Step::NotYet),
            }
        }
        let Some(head) = self.head.as_ref() else {
            return Ok(Step::NotYet);
        };
        if !head.has_pack() {
            return Ok(self.head.take().map_or(Step::NotYet, |head| {
                Step::Ready(Parsed {
                    head,
                    commits: Some(Commits::default()),
                    pack_note: None,
                })
            }));
        }
        let pack = &self.buf[head.len..];
        let note = match self.scanner.feed(pack)? {
            Scan::NeedMore if !eof => return Ok(Step::NotYet),
            Scan::NeedMore => "the pack ended early".to_string(),
            Scan::Over(why) => why,
            Scan::Done(_) => {
                let scanner = std::mem::replace(&mut self.scanner, Scanner::new(Limits::default()));
                return Ok(self
                    .head
                    .take()
                    .map_or(Step::NotYet, |head| Step::Resolve(head, Box::new(scanner))));
            }
        };
        Ok(self.head.take().map_or(Step::NotYet, |head| {
            Step::Ready(Parsed {
                head,
                commits: None,
                pack_note: Some(note),
            })
        }))
    }

    /// Reads the pkt-line framing past what was read before: true when a
    /// flush (or a malformed length, or more than [`push::MAX_HEAD`]
    /// bytes) arrived, i.e. when parsing the section could give an answer.
    fn section_may_have_ended(&mut self) -> bool {
        if self.buf.len() > push::MAX_HEAD {
            return true;
        }
        loop {
            match pktline::read(&self.buf[self.scanned..]) {
                Ok(Some((pkt, used))) => {
                    self.scanned += used;
                    if pkt == pktline::Pkt::Flush {
                        return true;
                    }
                }
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// A pack read whole, its deltas resolved: ready to rule on.
fn resolved(head: Head, commits: Commits) -> Parsed {
    Parsed {
        head,
        pack_note: commits.unresolved.clone(),
        commits: Some(commits),
    }
}

/// Whether an SSH exec line runs git-receive-pack (`git-receive-pack
/// 'path'` or `git receive-pack 'path'`, any install path): its repository
/// path then, as the agent gave it.
pub fn receive_pack_exec(program: &str, args: &[String]) -> Option<String> {
    let name = program.rsplit('/').next().unwrap_or(program);
    match (name, args) {
        ("git-receive-pack", [path]) => Some(path.clone()),
        ("git", [sub, path]) if sub == "receive-pack" => Some(path.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{pack::tests as packs, *};

    #[test]
    fn only_receive_pack_execs_are_pushes() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            receive_pack_exec("git-receive-pack", &args(&["/srv/a.git"])).as_deref(),
            Some("/srv/a.git")
        );
        assert_eq!(
            receive_pack_exec("/usr/bin/git", &args(&["receive-pack", "a.git"])).as_deref(),
            Some("a.git")
        );
        assert_eq!(
            receive_pack_exec("git-upload-pack", &args(&["a.git"])),
            None
        );
        assert_eq!(
            receive_pack_exec("git", &args(&["upload-pack", "a.git"])),
            None
        );
    }

    /// A command section sent a byte at a time is parsed once its flush
    /// arrives, not once per byte (1 MB of commands would otherwise cost
    /// ~10^12 bytes of parsing on a runtime worker).
    #[test]
    fn commands_sent_a_byte_at_a_time_are_parsed_in_linear_work() {
        let old = "1111111111111111111111111111111111111111";
        let zero = push::ZERO;
        let mut stream = Vec::new();
        let mut i = 0;
        while stream.len() < 1_000_000 {
            let caps = if i == 0 { "\0report-status" } else { "" };
            stream.extend(pktline::encode(
                format!("{old} {zero} refs/heads/branch-{i}{caps}\n").as_bytes(),
            ));
            i += 1;
        }
        stream.extend_from_slice(pktline::FLUSH);
        assert!(stream.len() <= push::MAX_HEAD);
        let mut inc = Incoming::default();
        let (last, rest) = stream.split_last().expect("bytes");
        for b in rest {
            assert!(inc.push(std::slice::from_ref(b), false).unwrap().is_none());
        }
        assert_eq!(inc.parses, 0, "parsed before the flush arrived");
        let parsed = inc.push(&[*last], false).unwrap().expect("ready");
        assert_eq!(parsed.head.updates.len(), i);
        assert_eq!(inc.parses, 1);
        // push-options: the section ends at the second flush; the first
        // makes one more parse, not one per byte after it.
        let mut stream = pktline::encode(
            format!("{old} {zero} refs/heads/x\0report-status push-options\n").as_bytes(),
        );
        stream.extend_from_slice(pktline::FLUSH);
        stream.extend(pktline::encode(b"ci.skip"));
        stream.extend_from_slice(pktline::FLUSH);
        let mut inc = Incoming::default();
        let mut got = None;
        for b in &stream {
            if let Some(p) = inc.push(std::slice::from_ref(b), false).unwrap() {
                got = Some(p);
            }
        }
        assert_eq!(got.expect("ready").head.options, vec![b"ci.skip".to_vec()]);
        assert_eq!(inc.parses, 2);
        // A malformed length is refused as soon as it arrives.
        assert!(Incoming::default().push(b"zzzz", false).is_err());
    }

    #[test]
    fn a_push_is_ready_once_its_pack_ends_or_the_agent_stops() {
        let old = "1111111111111111111111111111111111111111";
        let c = packs::commit(&[[0x11; 20]], "x");
        let new = pack::hex(&pack::object_id(pack::OBJ_COMMIT, &c));
        let mut stream =
            pktline::encode(format!("{old} {new} refs/heads/main\0report-status\n").as_bytes());
        stream.extend_from_slice(pktline::FLUSH);
        let head_len = stream.len();
        stream.extend(packs::pack(&[packs::object(pack::OBJ_COMMIT, &c, None)]));
        let mut inc = Incoming::default();
        assert!(inc
            .push(&stream[..stream.len() - 1], false)
            .unwrap()
            .is_none());
        let parsed = inc
            .push(&stream[stream.len() - 1..], false)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.pack_note, None);
        assert_eq!(inc.buffered(), &stream[..]);
        let commits = parsed.commits.expect("read whole");
        assert_eq!(commits.parents.len(), 1);
        // The agent stops mid-pack: ready, with ancestry unknown.
        let mut inc = Incoming::default();
        assert!(inc.push(&stream[..head_len + 20], false).unwrap().is_none());
        let parsed = inc.push(&[], true).unwrap().unwrap();
        assert!(parsed.commits.is_none() && parsed.pack_note.is_some());
        // Mid-commands: refused.
        assert!(Incoming::default().push(&stream[..10], true).is_err());
    }
}

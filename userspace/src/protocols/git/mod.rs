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
        }
    }

    /// Everything received so far (what is forwarded after the ruling,
    /// with the command section rewritten).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Adds `data`; `eof`: the agent will send nothing more. Ok(Some):
    /// ready to rule. Err: a push blastgate will not pass.
    pub fn push(&mut self, data: &[u8], eof: bool) -> Result<Option<Parsed>, String> {
        self.buf.extend_from_slice(data);
        if self.head.is_none() {
            match parse_head(&self.buf)? {
                Some(h) => self.head = Some(h),
                None if eof => return Err("the push ended before its commands did".into()),
                None => return Ok(None),
            }
        }
        let Some(head) = self.head.as_ref() else {
            return Ok(None);
        };
        if !head.has_pack() {
            return Ok(self.head.take().map(|head| Parsed {
                head,
                commits: Some(Commits::default()),
                pack_note: None,
            }));
        }
        let pack = &self.buf[head.len..];
        let (commits, note) = match self.scanner.feed(pack)? {
            Scan::NeedMore if !eof => return Ok(None),
            Scan::NeedMore => (None, Some("the pack ended early".to_string())),
            Scan::Over(why) => (None, Some(why)),
            Scan::Done(_) => (Some(self.scanner.commits()?), None),
        };
        Ok(self.head.take().map(|head| Parsed {
            head,
            commits,
            pack_note: note,
        }))
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

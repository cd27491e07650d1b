//! File operations read off an sftp channel, for the record.
//!
//! The relay forwards every byte as it arrives and hands this observer a
//! copy of each chunk. The observer never alters, reorders or holds back
//! data, so the channel stays byte-for-byte what the agent and the server
//! sent, and a fault here can cost a record but never a transfer.
//!
//! It frames SFTP v3 (draft-ietf-secsh-filexfer-02, what OpenSSH speaks)
//! in both directions across any chunking, pairs each request with the
//! server's reply by request id, and reports an operation once its answer
//! is in, so the record says whether the server did it. Handles are
//! resolved when the reply arrives, not when the request is seen, so the
//! relative timing of the two directions does not change the result.
//!
//! Memory stays bounded whatever the agent sends. File contents (WRITE and
//! DATA payloads, possibly hundreds of megabytes) are counted as they
//! stream past and never stored; packets nobody reads (listings,
//! attributes, stat requests) are skipped unbuffered; the rest is buffered
//! up to [`MAX_PACKET`]. Past a limit, or on input that is not SFTP, the
//! observer reports once (`op: "unparsed"`), flushes what it knew, and
//! stops watching; the relay carries on regardless.

use std::collections::BTreeMap;

/// Largest packet buffered whole. Requests and status replies carry a path
/// or a message or two (PATH_MAX is 4 KiB); larger ones are not SFTP as
/// OpenSSH sends it.
pub const MAX_PACKET: usize = 64 << 10;
/// Bytes kept of a WRITE or DATA packet: enough for its id, handle
/// (at most 256 bytes by the spec), offset and payload length.
pub const HEADER_BYTES: usize = 1024;
/// Requests awaiting a reply, and handles open, before the observer gives
/// up: OpenSSH pipelines 64 reads or writes, so this is far beyond use.
pub const MAX_OUTSTANDING: usize = 10_000;
/// Bytes of paths and handles remembered across pending requests and open
/// handles: the count limit alone would allow 10,000 paths of 64 KiB.
pub const MAX_HELD: usize = 4 << 20;
/// Rough bookkeeping cost of one entry, so that many tiny entries count.
const ENTRY_COST: usize = 64;

// Packet types.
pub(super) const OPEN: u8 = 3;
pub(super) const CLOSE: u8 = 4;
pub(super) const READ: u8 = 5;
pub(super) const WRITE: u8 = 6;
pub(super) const SETSTAT: u8 = 9;
pub(super) const FSETSTAT: u8 = 10;
pub(super) const OPENDIR: u8 = 11;
pub(super) const REMOVE: u8 = 13;
pub(super) const MKDIR: u8 = 14;
pub(super) const RMDIR: u8 = 15;
pub(super) const RENAME: u8 = 18;
pub(super) const SYMLINK: u8 = 20;
pub(super) const EXTENDED: u8 = 200;
pub(super) const STATUS: u8 = 101;
pub(super) const HANDLE: u8 = 102;
pub(super) const DATA: u8 = 103;

// SSH_FXF_* open flags.
pub(super) const PF_READ: u32 = 0x01;
pub(super) const PF_WRITE: u32 = 0x02;
pub(super) const PF_APPEND: u32 = 0x04;
pub(super) const PF_CREAT: u32 = 0x08;
pub(super) const PF_TRUNC: u32 = 0x10;
pub(super) const PF_EXCL: u32 = 0x20;

const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpRecord {
    /// "open", "read", "write", "remove", "rename", "mkdir", "rmdir",
    /// "opendir", "setstat", "symlink", "hardlink", or "unparsed" (the
    /// observer gave up; `path` says why). Lookups (stat, realpath,
    /// readdir) and close are left out: they are most of the traffic and
    /// change nothing.
    pub op: &'static str,
    pub path: String,
    /// rename, symlink, hardlink: the second path, in wire order. OpenSSH
    /// sends a symlink's target first and the new link second.
    pub target: Option<String>,
    /// read/write: bytes moved through that handle.
    pub bytes: u64,
    /// open: "r", "w", "rw" (or "-"), then "+create", "+trunc", "+append",
    /// "+excl" as requested.
    pub mode: Option<String>,
    /// The server's SSH_FX_* status (0 = OK); None if no answer was seen.
    /// A file's read/write record carries the close status, or the first
    /// failed write (or failed read other than EOF) when the close was OK.
    pub status: Option<u32>,
}

/// What the framer keeps of a packet's body.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Whole,
    Header,
    Nothing,
}

fn client_keeps(kind: u8) -> Keep {
    match kind {
        WRITE => Keep::Header,
        OPEN | CLOSE | READ | SETSTAT | FSETSTAT | OPENDIR | REMOVE | MKDIR | RMDIR | RENAME
        | SYMLINK | EXTENDED => Keep::Whole,
        _ => Keep::Nothing,
    }
}

fn server_keeps(kind: u8) -> Keep {
    match kind {
        DATA => Keep::Header,
        STATUS | HANDLE => Keep::Whole,
        _ => Keep::Nothing,
    }
}

#[derive(Clone, Copy, Default)]
enum Stage {
    #[default]
    Head,
    Body,
    Skip,
}

/// Cuts one direction's byte stream into packets, whatever the chunking.
#[derive(Default)]
struct Framer {
    stage: Stage,
    /// uint32 length and type byte.
    head: [u8; 5],
    got: usize,
    kind: u8,
    /// Declared body length (after the type byte).
    len: u64,
    /// How much of the body is kept in `body`.
    want: usize,
    body: Vec<u8>,
    /// Body bytes still to pass unread.
    skip: u64,
}

/// Takes up to `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (front, rest) = data.split_at_checked(n).unwrap_or((*data, &[]));
    *data = rest;
    front
}

impl Framer {
    /// The next packet whose body (or header) is now in `self.body`, as
    /// (type, declared body length), consuming `data` as far as it needs.
    fn next(
        &mut self,
        data: &mut &[u8],
        keeps: fn(u8) -> Keep,
    ) -> Result<Option<(u8, u64)>, String> {
        loop {
            match self.stage {
                Stage::Skip => {
                    let n = usize::try_from(self.skip).unwrap_or(usize::MAX);
                    let gone = take(data, n).len() as u64;
                    self.skip = self.skip.saturating_sub(gone);
                    if self.skip > 0 {
                        return Ok(None);
                    }
                    self.stage = Stage::Head;
                }
                Stage::Head => {
                    let src = take(data, self.head.len().saturating_sub(self.got));
                    for (d, s) in self.head.iter_mut().skip(self.got).zip(src) {
                        *d = *s;
                    }
                    self.got = self.got.saturating_add(src.len());
                    if self.got < self.head.len() {
                        return Ok(None);
                    }
                    self.got = 0;
                    let [a, b, c, d, kind] = self.head;
                    let Some(len) = u64::from(u32::from_be_bytes([a, b, c, d])).checked_sub(1)
                    else {
                        return Err("empty packet".into());
                    };
                    let want = match keeps(kind) {
                        Keep::Whole if len > MAX_PACKET as u64 => {
                            return Err(format!("packet of type {kind} over 64 KiB"));
                        }
                        Keep::Whole => len,
                        Keep::Header => len.min(HEADER_BYTES as u64),
                        Keep::Nothing => 0,
                    };
                    (self.kind, self.len, self.skip) = (kind, len, len.saturating_sub(want));
                    self.want = usize::try_from(want).unwrap_or(0);
                    self.body.clear();
                    self.stage = match keeps(kind) {
                        Keep::Nothing => Stage::Skip,
                        _ => Stage::Body,
                    };
                }
                Stage::Body => {
                    let src = take(data, self.want.saturating_sub(self.body.len()));
                    self.body.extend_from_slice(src);
                    if self.body.len() < self.want {
                        return Ok(None);
                    }
                    self.stage = Stage::Skip;
                    return Ok(Some((self.kind, self.len)));
                }
            }
        }
    }
}

/// SFTP wire fields off the front of a packet body.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn u32(&mut self) -> Option<u32> {
        let (v, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*v))
    }

    fn u64(&mut self) -> Option<u64> {
        let (v, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*v))
    }

    pub(super) fn string(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        let (v, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(v)
    }

    pub(super) fn path(&mut self) -> Option<String> {
        self.string()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }

    /// A payload length, if it fits in what the packet declared after the
    /// fields read so far (only a header of the packet may be here).
    fn payload(&mut self, kept: usize, declared: u64) -> Option<u64> {
        let n = u64::from(self.u32()?);
        let read = kept.saturating_sub(self.0.len()) as u64;
        (n <= declared.saturating_sub(read)).then_some(n)
    }
}

/// A request awaiting its reply.
enum Pending {
    /// OPEN, or OPENDIR when `mode` is None.
    Open { path: String, mode: Option<String> },
    /// READ, WRITE (of `len` bytes), CLOSE or FSETSTAT: the handle is
    /// resolved when the answer comes, as it may not be known before.
    OnHandle { kind: u8, handle: Vec<u8>, len: u64 },
    Op {
        op: &'static str,
        path: String,
        target: Option<String>,
    },
}

impl Pending {
    fn cost(&self) -> usize {
        ENTRY_COST
            + match self {
                Pending::Open { path, mode } => path.len() + mode.as_ref().map_or(0, String::len),
                Pending::OnHandle { handle, .. } => handle.len(),
                Pending::Op { path, target, .. } => {
                    path.len() + target.as_ref().map_or(0, String::len)
                }
            }
    }
}

/// A handle the server gave out, with what went through it.
struct Opened {
    path: String,
    dir: bool,
    read: u64,
    written: u64,
    /// First failed write (or read other than EOF).
    failed: Option<u32>,
}

fn record(op: &'static str, path: String, status: Option<u32>) -> SftpRecord {
    SftpRecord {
        op,
        path,
        target: None,
        bytes: 0,
        mode: None,
        status,
    }
}

fn open_record(path: String, mode: Option<String>, status: Option<u32>) -> SftpRecord {
    let op = if mode.is_some() { "open" } else { "opendir" };
    SftpRecord {
        mode,
        ..record(op, path, status)
    }
}

fn mode(flags: u32) -> String {
    let mut m = String::from(match (flags & PF_READ != 0, flags & PF_WRITE != 0) {
        (true, true) => "rw",
        (true, false) => "r",
        (false, true) => "w",
        (false, false) => "-",
    });
    for (bit, name) in [
        (PF_CREAT, "+create"),
        (PF_TRUNC, "+trunc"),
        (PF_APPEND, "+append"),
        (PF_EXCL, "+excl"),
    ] {
        if flags & bit != 0 {
            m.push_str(name);
        }
    }
    m
}

/// Requests in flight, handles open, and records ready to hand out.
#[derive(Default)]
struct Book {
    pending: BTreeMap<u32, Pending>,
    handles: BTreeMap<Vec<u8>, Opened>,
    /// Bookkeeping bytes in `pending` and `handles`, against [`MAX_HELD`].
    held: usize,
    out: Vec<SftpRecord>,
}

#[derive(Default)]
enum Health {
    #[default]
    Watching,
    /// Gave up for this reason; not yet reported.
    Failed(String),
    /// Reported (or finished): all input is ignored.
    Done,
}

/// Watches copies of both directions of one sftp channel.
#[derive(Default)]
pub struct SftpObserver {
    client: Framer,
    server: Framer,
    book: Book,
    health: Health,
}

impl SftpObserver {
    pub fn new() -> Self {
        SftpObserver::default()
    }

    /// Bytes the client (agent) sent on the channel.
    // The relay's names for the two directions, not conversions.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_client(&mut self, data: &[u8]) {
        self.feed(data, false);
    }

    /// Bytes the server sent on the channel.
    #[allow(clippy::wrong_self_convention)]
    pub fn from_server(&mut self, data: &[u8]) -> Vec<SftpRecord> {
        self.feed(data, true);
        self.report();
        std::mem::take(&mut self.book.out)
    }

    /// Channel closed: records for handles still open and requests never
    /// answered (status None).
    pub fn finish(&mut self) -> Vec<SftpRecord> {
        if let Health::Watching = self.health {
            self.book.flush();
            self.health = Health::Done;
        }
        self.report();
        std::mem::take(&mut self.book.out)
    }

    /// Why the observer stopped reading the channel, if it did: the relay
    /// then ends the channel, so nothing passes unread.
    pub fn failure(&self) -> Option<String> {
        match &self.health {
            Health::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// The path an open handle was given for.
    pub fn handle_path(&self, handle: &[u8]) -> Option<String> {
        self.book.handles.get(handle).map(|h| h.path.clone())
    }

    fn feed(&mut self, mut data: &[u8], server: bool) {
        while let Health::Watching = self.health {
            let done = if server {
                match self.server.next(&mut data, server_keeps) {
                    Ok(Some((kind, len))) => self.book.reply(kind, len, &self.server.body),
                    other => other.map(|_| ()),
                }
            } else {
                match self.client.next(&mut data, client_keeps) {
                    Ok(Some((kind, len))) => self.book.request(kind, len, &self.client.body),
                    other => other.map(|_| ()),
                }
            };
            if let Err(why) = done {
                self.health = Health::Failed(why);
                (self.client, self.server) = Default::default();
            } else if data.is_empty() {
                break;
            }
        }
    }

    /// Reports giving up, once, with what was known until then.
    fn report(&mut self) {
        if let Health::Failed(why) = &mut self.health {
            let why = std::mem::take(why);
            self.health = Health::Done;
            self.book.out.push(record("unparsed", why, None));
            self.book.flush();
        }
    }
}

impl Book {
    /// Everything outstanding, as never answered.
    fn flush(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            self.unanswered(p);
        }
        for (_, h) in std::mem::take(&mut self.handles) {
            self.closed(h, None);
        }
        self.held = 0;
    }

    fn unanswered(&mut self, p: Pending) {
        match p {
            Pending::Open { path, mode } => self.out.push(open_record(path, mode, None)),
            Pending::Op { op, path, target } => self.out.push(SftpRecord {
                target,
                ..record(op, path, None)
            }),
            Pending::OnHandle { .. } => {}
        }
    }

    fn request(&mut self, kind: u8, len: u64, body: &[u8]) -> Result<(), String> {
        let Some((id, p)) = parse_request(kind, len, body) else {
            return Err(format!("malformed request of type {kind}"));
        };
        let Some(p) = p else { return Ok(()) };
        if self.pending.contains_key(&id) {
            return Err(format!("request id {id} reused while outstanding"));
        }
        if self.pending.len() >= MAX_OUTSTANDING {
            return Err(format!("over {MAX_OUTSTANDING} requests outstanding"));
        }
        self.hold(p.cost())?;
        self.pending.insert(id, p);
        Ok(())
    }

    fn hold(&mut self, cost: usize) -> Result<(), String> {
        self.held = self.held.saturating_add(cost);
        if self.held > MAX_HELD {
            return Err(format!("over {} MiB of paths outstanding", MAX_HELD >> 20));
        }
        Ok(())
    }

    fn answer(&mut self, id: u32) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.held = self.held.saturating_sub(p.cost());
        Some(p)
    }

    fn forget(&mut self, handle: &[u8]) -> Option<Opened> {
        let h = self.handles.remove(handle)?;
        let cost = ENTRY_COST + handle.len() + h.path.len();
        self.held = self.held.saturating_sub(cost);
        Some(h)
    }

    fn reply(&mut self, kind: u8, len: u64, body: &[u8]) -> Result<(), String> {
        let malformed = || format!("malformed reply of type {kind}");
        let mut r = Reader(body);
        let id = r.u32().ok_or_else(malformed)?;
        match kind {
            STATUS => {
                let code = r.u32().ok_or_else(malformed)?;
                if let Some(p) = self.answer(id) {
                    self.status(p, code);
                }
            }
            HANDLE => {
                let handle = r.string().ok_or_else(malformed)?;
                match self.answer(id) {
                    Some(Pending::Open { path, mode }) => self.opened(handle, path, mode)?,
                    Some(other) => self.unanswered(other),
                    None => {}
                }
            }
            DATA => {
                let n = r.payload(body.len(), len).ok_or_else(malformed)?;
                match self.answer(id) {
                    Some(Pending::OnHandle {
                        kind: READ, handle, ..
                    }) => {
                        if let Some(h) = self.handles.get_mut(&handle) {
                            h.read = h.read.saturating_add(n);
                        }
                    }
                    Some(other) => self.unanswered(other),
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn opened(&mut self, handle: &[u8], path: String, mode: Option<String>) -> Result<(), String> {
        let dir = mode.is_none();
        self.out.push(open_record(path.clone(), mode, Some(FX_OK)));
        if let Some(old) = self.forget(handle) {
            self.closed(old, None);
        }
        if self.handles.len() >= MAX_OUTSTANDING {
            return Err(format!("over {MAX_OUTSTANDING} handles open"));
        }
        self.hold(ENTRY_COST + handle.len() + path.len())?;
        let h = Opened {
            path,
            dir,
            read: 0,
            written: 0,
            failed: None,
        };
        self.handles.insert(handle.to_vec(), h);
        Ok(())
    }

    fn status(&mut self, p: Pending, code: u32) {
        let (kind, handle, len) = match p {
            Pending::OnHandle { kind, handle, len } => (kind, handle, len),
            Pending::Open { path, mode } => {
                return self.out.push(open_record(path, mode, Some(code)));
            }
            Pending::Op { op, path, target } => {
                return self.out.push(SftpRecord {
                    target,
                    ..record(op, path, Some(code))
                });
            }
        };
        if kind == CLOSE {
            if let Some(h) = self.forget(&handle) {
                self.closed(h, Some(code));
            }
            return;
        }
        match (kind, self.handles.get_mut(&handle)) {
            (WRITE, Some(h)) if code == FX_OK => h.written = h.written.saturating_add(len),
            (READ | WRITE, Some(h)) if code != FX_OK && code != FX_EOF => {
                h.failed.get_or_insert(code);
            }
            (FSETSTAT, h) => {
                let path = h.map_or_else(
                    || String::from_utf8_lossy(&handle).into(),
                    |h| h.path.clone(),
                );
                self.out.push(record("setstat", path, Some(code)));
            }
            _ => {}
        }
    }

    /// A file's transfer totals, once its handle is gone.
    fn closed(&mut self, h: Opened, status: Option<u32>) {
        if h.dir {
            return;
        }
        let status = match status {
            Some(FX_OK) | None => h.failed.or(status),
            bad => bad,
        };
        for (op, bytes) in [("read", h.read), ("write", h.written)] {
            if bytes > 0 {
                self.out.push(SftpRecord {
                    bytes,
                    ..record(op, h.path.clone(), status)
                });
            }
        }
    }
}

/// A request's id and what to remember of it (None: nothing to record);
/// None overall if the packet does not parse.
fn parse_request(kind: u8, len: u64, body: &[u8]) -> Option<(u32, Option<Pending>)> {
    let mut r = Reader(body);
    let id = r.u32()?;
    let (op, two) = match kind {
        OPEN => {
            let path = r.path()?;
            let mode = Some(mode(r.u32()?));
            return Some((id, Some(Pending::Open { path, mode })));
        }
        OPENDIR => {
            let path = r.path()?;
            return Some((id, Some(Pending::Open { path, mode: None })));
        }
        CLOSE | READ | WRITE | FSETSTAT => {
            let handle = r.string()?.to_vec();
            let len = match kind {
                WRITE => r.u64().and_then(|_| r.payload(body.len(), len))?,
                _ => 0,
            };
            return Some((id, Some(Pending::OnHandle { kind, handle, len })));
        }
        SETSTAT => ("setstat", false),
        REMOVE => ("remove", false),
        MKDIR => ("mkdir", false),
        RMDIR => ("rmdir", false),
        RENAME => ("rename", true),
        SYMLINK => ("symlink", true),
        EXTENDED => match r.string()? {
            b"posix-rename@openssh.com" => ("rename", true),
            b"hardlink@openssh.com" => ("hardlink", true),
            _ => return Some((id, None)),
        },
        _ => return Some((id, None)),
    };
    let path = r.path()?;
    let target = if two { Some(r.path()?) } else { None };
    Some((id, Some(Pending::Op { op, path, target })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one SFTP packet.
    struct P(Vec<u8>);

    impl P {
        fn new(kind: u8) -> P {
            P(vec![kind])
        }
        fn u32(mut self, v: u32) -> P {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> P {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(self, v: impl AsRef<[u8]>) -> P {
            let v = v.as_ref();
            let mut p = self.u32(v.len() as u32);
            p.0.extend_from_slice(v);
            p
        }
        fn done(self) -> Vec<u8> {
            let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
            out.extend(self.0);
            out
        }
    }

    fn init() -> Vec<u8> {
        P::new(1).u32(3).done()
    }
    fn version() -> Vec<u8> {
        P::new(2).u32(3).s("posix-rename@openssh.com").s("1").done()
    }
    fn open(id: u32, path: &str, flags: u32) -> Vec<u8> {
        P::new(OPEN).u32(id).s(path).u32(flags).u32(0).done()
    }
    fn with_path(kind: u8, id: u32, path: &str) -> Vec<u8> {
        P::new(kind).u32(id).s(path).done()
    }
    /// MKDIR carries ATTRS (none set here).
    fn mkdir(id: u32, path: &str) -> Vec<u8> {
        P::new(MKDIR).u32(id).s(path).u32(0).done()
    }
    fn with_handle(kind: u8, id: u32, h: &[u8]) -> Vec<u8> {
        P::new(kind).u32(id).s(h).done()
    }
    fn two_paths(kind: u8, id: u32, a: &str, b: &str) -> Vec<u8> {
        P::new(kind).u32(id).s(a).s(b).done()
    }
    fn ext(id: u32, name: &str, a: &str, b: &str) -> Vec<u8> {
        P::new(EXTENDED).u32(id).s(name).s(a).s(b).done()
    }
    fn read(id: u32, h: &[u8], off: u64, len: u32) -> Vec<u8> {
        P::new(READ).u32(id).s(h).u64(off).u32(len).done()
    }
    fn write(id: u32, h: &[u8], off: u64, data: &[u8]) -> Vec<u8> {
        P::new(WRITE).u32(id).s(h).u64(off).s(data).done()
    }
    fn status(id: u32, code: u32) -> Vec<u8> {
        P::new(STATUS).u32(id).u32(code).s("msg").s("").done()
    }
    fn handle(id: u32, h: &[u8]) -> Vec<u8> {
        P::new(HANDLE).u32(id).s(h).done()
    }
    fn data(id: u32, d: &[u8]) -> Vec<u8> {
        P::new(DATA).u32(id).s(d).done()
    }
    /// A NAME reply with one entry (what stat-like lookups get).
    fn name(id: u32, n: &str) -> Vec<u8> {
        P::new(104).u32(id).u32(1).s(n).s(n).u32(0).done()
    }

    fn rec(op: &'static str, path: &str, status: Option<u32>) -> SftpRecord {
        record(op, path.to_string(), status)
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Dir {
        C,
        S,
    }
    use Dir::{C, S};

    /// A realistic session, in the order things cross the wire, and the
    /// records it should produce.
    fn session() -> (Vec<(Dir, Vec<u8>)>, Vec<SftpRecord>) {
        let h = b"\0\0\0\x01";
        let chunk: Vec<u8> = (0..32 * 1024).map(|i| (i % 251) as u8).collect();
        let mut ev = vec![
            (C, init()),
            (S, version()),
            (C, with_path(16, 1, ".")),
            (S, name(1, "/home/agent")),
            (C, open(2, "/tmp/up.bin", PF_WRITE | PF_CREAT | PF_TRUNC)),
            (S, handle(2, h)),
        ];
        // Pipelined writes, then their answers.
        let mut w = Vec::new();
        let mut st = Vec::new();
        for i in 0..4u32 {
            w.extend(write(10 + i, h, u64::from(i) * 32768, &chunk));
            st.extend(status(10 + i, 0));
        }
        ev.extend([(C, w), (S, st)]);
        ev.extend([
            (C, with_handle(FSETSTAT, 20, h)),
            (S, status(20, 0)),
            (C, with_handle(CLOSE, 21, h)),
            (S, status(21, 0)),
            (C, with_path(17, 22, "/tmp/up.bin")),
            (S, P::new(105).u32(22).u32(0).done()),
            (C, open(23, "/tmp/up.bin", PF_READ)),
            (S, handle(23, h)),
            (
                C,
                [read(24, h, 0, 32768), read(25, h, 32768, 32768)].concat(),
            ),
            (S, [data(24, &chunk), data(25, &chunk[..100])].concat()),
            (C, read(26, h, 32868, 32768)),
            (S, status(26, FX_EOF)),
            (C, with_handle(CLOSE, 27, h)),
            (S, status(27, 0)),
            (C, with_path(OPENDIR, 28, "/tmp")),
            (S, handle(28, b"\0\0\0\x02")),
            (C, with_handle(12, 29, b"\0\0\0\x02")),
            (S, name(29, "up.bin")),
            (C, with_handle(CLOSE, 30, b"\0\0\0\x02")),
            (S, status(30, 0)),
            (C, with_path(REMOVE, 31, "/tmp/old")),
            (S, status(31, 0)),
            (C, two_paths(RENAME, 32, "/tmp/a", "/tmp/b")),
            (S, status(32, 0)),
            (C, ext(33, "posix-rename@openssh.com", "/tmp/c", "/tmp/d")),
            (S, status(33, 0)),
            (C, ext(34, "hardlink@openssh.com", "/tmp/d", "/tmp/e")),
            (S, status(34, 0)),
            (C, ext(35, "statvfs@openssh.com", "/", "")),
            (S, P::new(201).u32(35).u64(1).done()),
            (C, two_paths(SYMLINK, 36, "/etc/hosts", "/tmp/link")),
            (S, status(36, 0)),
            (
                C,
                P::new(SETSTAT).u32(37).s("/tmp/b").u32(4).u32(0o600).done(),
            ),
            (S, status(37, 0)),
            (C, mkdir(38, "/tmp/dir")),
            (S, status(38, 0)),
            (C, with_path(RMDIR, 39, "/tmp/dir")),
            (S, status(39, 0)),
            (C, open(40, "/nope", PF_READ)),
            (S, status(40, 2)),
        ]);
        let open_rec = |path: &str, mode: &str| SftpRecord {
            mode: Some(mode.to_string()),
            ..rec("open", path, Some(0))
        };
        let two = |op, a: &str, b: &str| SftpRecord {
            target: Some(b.to_string()),
            ..rec(op, a, Some(0))
        };
        let want = vec![
            open_rec("/tmp/up.bin", "w+create+trunc"),
            rec("setstat", "/tmp/up.bin", Some(0)),
            SftpRecord {
                bytes: 4 * 32768,
                ..rec("write", "/tmp/up.bin", Some(0))
            },
            open_rec("/tmp/up.bin", "r"),
            SftpRecord {
                bytes: 32868,
                ..rec("read", "/tmp/up.bin", Some(0))
            },
            rec("opendir", "/tmp", Some(0)),
            rec("remove", "/tmp/old", Some(0)),
            two("rename", "/tmp/a", "/tmp/b"),
            two("rename", "/tmp/c", "/tmp/d"),
            two("hardlink", "/tmp/d", "/tmp/e"),
            two("symlink", "/etc/hosts", "/tmp/link"),
            rec("setstat", "/tmp/b", Some(0)),
            rec("mkdir", "/tmp/dir", Some(0)),
            rec("rmdir", "/tmp/dir", Some(0)),
            SftpRecord {
                mode: Some("r".into()),
                ..rec("open", "/nope", Some(2))
            },
        ];
        (ev, want)
    }

    fn chunks(data: &[u8], k: usize) -> impl Iterator<Item = &[u8]> {
        data.chunks(k.max(1))
    }

    /// Each event's bytes in chunks of `k`, in wire order.
    fn lockstep(ev: &[(Dir, Vec<u8>)], k: usize) -> Vec<SftpRecord> {
        let mut o = SftpObserver::new();
        let mut out = Vec::new();
        for (dir, bytes) in ev {
            for c in chunks(bytes, k) {
                match dir {
                    C => o.from_client(c),
                    S => out.extend(o.from_server(c)),
                }
            }
        }
        out.extend(o.finish());
        out
    }

    /// The whole client stream first, then the server's, both in chunks of
    /// `k` that straddle packets.
    fn client_first(ev: &[(Dir, Vec<u8>)], k: usize) -> Vec<SftpRecord> {
        let stream = |d: Dir| -> Vec<u8> {
            ev.iter()
                .filter(|e| e.0 == d)
                .flat_map(|e| e.1.clone())
                .collect()
        };
        let mut o = SftpObserver::new();
        let mut out = Vec::new();
        for c in chunks(&stream(C), k) {
            o.from_client(c);
        }
        for c in chunks(&stream(S), k) {
            out.extend(o.from_server(c));
        }
        out.extend(o.finish());
        out
    }

    #[test]
    fn session_records_do_not_depend_on_chunking() {
        let (ev, want) = session();
        for k in [1, 7, 4096, usize::MAX] {
            assert_eq!(lockstep(&ev, k), want, "lockstep, chunks of {k}");
            assert_eq!(client_first(&ev, k), want, "client first, chunks of {k}");
        }
    }

    #[test]
    fn big_write_streams_through_without_buffering() {
        let mut o = SftpObserver::new();
        o.from_client(&open(1, "/big", PF_WRITE | PF_CREAT));
        assert_eq!(o.from_server(&handle(1, b"h")).len(), 1);
        // A 300 MB WRITE: header, then the payload in 1 MiB pieces.
        let size: u32 = 300 << 20;
        let head = P::new(WRITE).u32(2).s("h").u64(0).u32(size).done();
        let mut head = head;
        let total = (head.len() - 4) as u32 + size;
        head.splice(0..4, total.to_be_bytes());
        o.from_client(&head);
        let piece = vec![0u8; 1 << 20];
        for _ in 0..300 {
            o.from_client(&piece);
            assert!(o.client.body.capacity() <= MAX_PACKET);
        }
        assert!(o.from_server(&status(2, 0)).is_empty());
        // And the server's DATA the same way.
        o.from_client(&read(3, b"h", 0, size));
        let mut head = P::new(DATA).u32(3).u32(size).done();
        head.splice(0..4, (9 + size).to_be_bytes());
        assert!(o.from_server(&head).is_empty());
        for _ in 0..300 {
            assert!(o.from_server(&piece).is_empty());
            assert!(o.server.body.capacity() <= MAX_PACKET);
        }
        o.from_client(&with_handle(CLOSE, 4, b"h"));
        let got = o.from_server(&status(4, 0));
        let bytes = u64::from(size);
        assert_eq!(
            got,
            vec![
                SftpRecord {
                    bytes,
                    ..rec("read", "/big", Some(0))
                },
                SftpRecord {
                    bytes,
                    ..rec("write", "/big", Some(0))
                },
            ]
        );
    }

    #[test]
    fn large_listing_is_skipped_not_refused() {
        let mut o = SftpObserver::new();
        o.from_client(&with_handle(12, 1, b"d"));
        let mut listing = P::new(104).u32(1).u32(1);
        listing = listing.s(vec![b'x'; 1 << 20]);
        assert!(o.from_server(&listing.done()).is_empty());
        o.from_client(&with_path(REMOVE, 2, "/x"));
        assert_eq!(
            o.from_server(&status(2, 0)),
            vec![rec("remove", "/x", Some(0))]
        );
    }

    fn unparsed(out: &[SftpRecord]) -> usize {
        out.iter().filter(|r| r.op == "unparsed").count()
    }

    #[test]
    fn oversized_request_gives_up_once() {
        let mut o = SftpObserver::new();
        o.from_client(&open(1, "/pending", PF_READ));
        o.from_client(&with_path(REMOVE, 2, &"x".repeat(MAX_PACKET)));
        let out = o.from_server(&status(1, 0));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].op, "unparsed");
        assert!(out[0].path.contains("64 KiB"), "{}", out[0].path);
        assert_eq!(out[0].status, None);
        // What was outstanding is still recorded, as unanswered.
        assert_eq!(out[1].path, "/pending");
        assert_eq!(out[1].status, None);
        o.from_client(&with_path(REMOVE, 3, "/y"));
        assert!(o.from_server(&status(3, 0)).is_empty());
        assert!(o.finish().is_empty());
    }

    #[test]
    fn malformed_packets_give_up() {
        for (dir, bytes) in [
            (C, vec![0, 0, 0, 0, 1]),
            (C, P::new(OPEN).u32(1).u32(100).done()),
            (C, P::new(WRITE).u32(1).s("h").u64(0).u32(10).done()),
            (S, P::new(STATUS).u32(1).done()),
            (S, P::new(DATA).u32(1).u32(5).done()),
            (S, P::new(HANDLE).done()),
        ] {
            let mut o = SftpObserver::new();
            let out = match dir {
                C => {
                    o.from_client(&bytes);
                    o.finish()
                }
                S => o.from_server(&bytes),
            };
            assert_eq!(unparsed(&out), 1, "{bytes:?}: {out:?}");
            assert!(o.finish().is_empty());
        }
    }

    #[test]
    fn too_many_outstanding_requests_give_up() {
        let mut o = SftpObserver::new();
        let mut burst = Vec::new();
        for id in 0..=MAX_OUTSTANDING as u32 {
            burst.extend(read(id, b"h", 0, 1));
        }
        o.from_client(&burst);
        assert!(o.book.pending.len() <= MAX_OUTSTANDING);
        let out = o.from_server(&[]);
        assert_eq!(out.len(), 1);
        assert!(out[0].path.contains("outstanding"), "{out:?}");
        assert!(o.book.pending.is_empty());
    }

    #[test]
    fn held_paths_are_bounded() {
        let mut o = SftpObserver::new();
        let long = "p".repeat(60_000);
        for id in 0..100 {
            o.from_client(&with_path(REMOVE, id, &long));
        }
        assert!(o.book.held <= MAX_HELD + MAX_PACKET + ENTRY_COST);
        let out = o.finish();
        assert_eq!(out[0].op, "unparsed");
        assert!(out[0].path.contains("MiB"), "{}", out[0].path);
    }

    #[test]
    fn reused_request_id_gives_up() {
        let mut o = SftpObserver::new();
        o.from_client(&with_path(REMOVE, 1, "/a"));
        o.from_client(&with_path(REMOVE, 1, "/b"));
        let out = o.finish();
        assert_eq!(unparsed(&out), 1);
        assert_eq!(out[1], rec("remove", "/a", None));
    }

    #[test]
    fn finish_reports_open_handles_and_unanswered_requests() {
        let mut o = SftpObserver::new();
        o.from_client(&open(1, "/f", PF_READ | PF_WRITE | PF_APPEND));
        assert_eq!(o.from_server(&handle(1, b"h")).len(), 1);
        o.from_client(&write(2, b"h", 0, b"hello"));
        o.from_client(&write(3, b"h", 5, b"world!"));
        assert!(o.from_server(&status(2, 0)).is_empty());
        o.from_client(&mkdir(4, "/d"));
        o.from_client(&open(5, "/g", PF_READ));
        let out = o.finish();
        assert_eq!(
            out,
            vec![
                rec("mkdir", "/d", None),
                SftpRecord {
                    mode: Some("r".into()),
                    ..rec("open", "/g", None)
                },
                SftpRecord {
                    bytes: 5,
                    ..rec("write", "/f", None)
                },
            ]
        );
        assert!(o.finish().is_empty());
    }

    #[test]
    fn failed_write_marks_the_record() {
        let mut o = SftpObserver::new();
        o.from_client(&open(1, "/full", PF_WRITE | PF_CREAT | PF_EXCL));
        let out = o.from_server(&handle(1, b"h"));
        assert_eq!(out[0].mode.as_deref(), Some("w+create+excl"));
        o.from_client(&write(2, b"h", 0, b"ok"));
        o.from_client(&write(3, b"h", 2, b"no space"));
        o.from_client(&with_handle(CLOSE, 4, b"h"));
        let out = o.from_server(&[status(2, 0), status(3, 4), status(4, 0)].concat());
        assert_eq!(
            out,
            vec![SftpRecord {
                bytes: 2,
                ..rec("write", "/full", Some(4))
            }]
        );
    }

    #[test]
    fn mode_strings() {
        assert_eq!(mode(PF_READ), "r");
        assert_eq!(mode(PF_READ | PF_WRITE), "rw");
        assert_eq!(mode(PF_WRITE | PF_APPEND | PF_CREAT), "w+create+append");
        assert_eq!(mode(0), "-");
    }

    #[test]
    fn paths_decode_lossily() {
        let mut o = SftpObserver::new();
        o.from_client(&P::new(REMOVE).u32(1).s(b"/a\xffb").done());
        let out = o.from_server(&status(1, 0));
        assert_eq!(out[0].path, "/a\u{fffd}b");
    }

    use crate::testing::Rng;

    /// Feeds both streams in random chunks, randomly interleaved, and
    /// checks the invariants that hold for any input.
    fn feed_randomly(rng: &mut Rng, client: &[u8], server: &[u8]) {
        let mut o = SftpObserver::new();
        let (mut c, mut s) = (client, server);
        let mut batches = Vec::new();
        while !c.is_empty() || !s.is_empty() {
            let cap = if rng.below(4) == 0 { 70_000 } else { 64 };
            let n = 1 + rng.below(cap);
            if rng.below(2) == 0 && !c.is_empty() {
                o.from_client(take(&mut c, n));
            } else {
                batches.push(o.from_server(take(&mut s, n)));
            }
            assert!(o.client.body.capacity() <= MAX_PACKET);
            assert!(o.server.body.capacity() <= MAX_PACKET);
            assert!(o.book.pending.len() <= MAX_OUTSTANDING);
            assert!(o.book.handles.len() <= MAX_OUTSTANDING);
        }
        batches.push(o.finish());
        batches.push(o.finish());
        let total: usize = batches.iter().map(|b| unparsed(b)).sum();
        assert!(total <= 1);
        // Once it gave up, nothing more is reported.
        if let Some(at) = batches.iter().position(|b| unparsed(b) == 1) {
            assert!(batches[at + 1..].iter().all(Vec::is_empty));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x5eed_1234_abcd_9876);
        for _ in 0..3000 {
            let junk = |rng: &mut Rng| -> Vec<u8> {
                let n = rng.below(2000);
                let mut v: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                // Small lengths, so packets complete and get parsed.
                if v.len() >= 4 && rng.below(2) == 0 {
                    v[0] = 0;
                    v[1] = 0;
                }
                v
            };
            let (c, s) = (junk(&mut rng), junk(&mut rng));
            feed_randomly(&mut rng, &c, &s);
        }
    }

    #[test]
    fn mutated_sessions_never_panic() {
        let (ev, _) = session();
        let stream = |d: Dir| -> Vec<u8> {
            ev.iter()
                .filter(|e| e.0 == d)
                .flat_map(|e| e.1.clone())
                .collect()
        };
        let (client, server) = (stream(C), stream(S));
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for _ in 0..300 {
            let mut c = client.clone();
            let mut s = server.clone();
            for _ in 0..rng.below(6) {
                let v = if rng.below(2) == 0 { &mut c } else { &mut s };
                let at = rng.below(v.len());
                match rng.below(3) {
                    0 => v[at] = rng.next_u64() as u8,
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, rng.next_u64() as u8),
                }
            }
            feed_randomly(&mut rng, &c, &s);
        }
        // And the unmutated session still reads right in chunks of 3.
        let (ev, want) = session();
        assert_eq!(lockstep(&ev, 3), want);
    }

    /// Random well-formed traffic over a few ids and handles, so the
    /// bookkeeping (not just the framing) meets odd orders and replies.
    #[test]
    fn random_wellformed_traffic_never_panics() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let handles: [&[u8]; 3] = [b"a", b"b", b"\0\0\0\x01"];
        for _ in 0..500 {
            let (mut c, mut s) = (Vec::new(), Vec::new());
            for _ in 0..rng.below(60) {
                let id = rng.below(8) as u32;
                let h = handles[rng.below(3)];
                let n = rng.below(100);
                let path = "/p".repeat(rng.below(3));
                c.extend(match rng.below(12) {
                    0 => open(id, &path, rng.next_u64() as u32),
                    1 => with_handle(CLOSE, id, h),
                    2 => read(id, h, 0, 10),
                    3 => write(id, h, 0, &vec![1; n]),
                    4 => with_handle(FSETSTAT, id, h),
                    5 => with_path(OPENDIR, id, &path),
                    6 => two_paths(RENAME, id, &path, "/q"),
                    7 => ext(id, "hardlink@openssh.com", &path, "/q"),
                    8 => with_path(17, id, &path),
                    _ => with_path(REMOVE, id, &path),
                });
                s.extend(match rng.below(5) {
                    0 => handle(id, h),
                    1 => data(id, &vec![2; n]),
                    2 => name(id, "x"),
                    _ => status(id, rng.below(5) as u32),
                });
            }
            feed_randomly(&mut rng, &c, &s);
        }
    }

    /// Drives OpenSSH's own sftp-server (locally, over pipes, in a temp
    /// directory) and feeds the real bytes both ways through the observer.
    #[test]
    fn real_sftp_server() {
        use std::io::{Read, Write};
        use std::process::{Command, Stdio};
        let bin = std::path::Path::new("/usr/lib/openssh/sftp-server");
        if !bin.exists() {
            eprintln!("skipped: no {}", bin.display());
            return;
        }
        let dir = std::env::temp_dir().join(format!("sftp-observer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(bin)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut o = SftpObserver::new();
        let mut out = Vec::new();
        // One request, its reply; the observer sees both in odd chunks.
        let mut ask = |req: Vec<u8>| -> (u8, Vec<u8>) {
            req.chunks(3).for_each(|c| o.from_client(c));
            stdin.write_all(&req).unwrap();
            stdin.flush().unwrap();
            let mut head = [0u8; 4];
            stdout.read_exact(&mut head).unwrap();
            let mut body = vec![0; u32::from_be_bytes(head) as usize];
            stdout.read_exact(&mut body).unwrap();
            let reply = [&head[..], &body].concat();
            reply.chunks(5).for_each(|c| out.extend(o.from_server(c)));
            (body[0], body)
        };
        let handle_of = |body: &[u8]| {
            let mut r = Reader(&body[5..]);
            r.string().unwrap().to_vec()
        };
        assert_eq!(ask(init()).0, 2);
        let (kind, body) = ask(open(1, "up.txt", PF_WRITE | PF_CREAT | PF_TRUNC));
        assert_eq!(kind, HANDLE);
        let h = handle_of(&body);
        assert_eq!(ask(write(2, &h, 0, b"hello ")).1[5..9], [0; 4]);
        assert_eq!(ask(write(3, &h, 6, &vec![b'x'; 100 << 10])).1[5..9], [0; 4]);
        ask(with_handle(CLOSE, 4, &h));
        let (kind, body) = ask(open(5, "up.txt", PF_READ));
        assert_eq!(kind, HANDLE);
        let h = handle_of(&body);
        let (mut off, mut id) = (0u64, 6);
        loop {
            let (kind, body) = ask(read(id, &h, off, 65536));
            id += 1;
            if kind != DATA {
                break;
            }
            off += u64::from(u32::from_be_bytes(body[5..9].try_into().unwrap()));
        }
        assert_eq!(off, 6 + (100 << 10));
        ask(with_handle(CLOSE, 100, &h));
        ask(two_paths(RENAME, 101, "up.txt", "moved.txt"));
        ask(ext(
            102,
            "posix-rename@openssh.com",
            "moved.txt",
            "final.txt",
        ));
        ask(ext(103, "hardlink@openssh.com", "final.txt", "link.txt"));
        ask(two_paths(SYMLINK, 104, "final.txt", "sym.txt"));
        ask(mkdir(105, "sub"));
        ask(with_path(RMDIR, 106, "sub"));
        ask(with_path(REMOVE, 107, "link.txt"));
        ask(with_path(REMOVE, 108, "missing"));
        ask(open(109, "missing", PF_READ));
        out.extend(o.finish());
        let _ = child.kill();
        let _ = child.wait();
        let size = std::fs::metadata(dir.join("final.txt")).map(|m| m.len());
        let link = std::fs::read_link(dir.join("sym.txt"));
        let gone = !dir.join("link.txt").exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size.unwrap(), 6 + (100 << 10));
        assert_eq!(link.unwrap(), std::path::Path::new("final.txt"));
        assert!(gone);
        let two = |op, a: &str, b: &str| SftpRecord {
            target: Some(b.to_string()),
            ..rec(op, a, Some(0))
        };
        let moved = |op, path: &str| SftpRecord {
            bytes: 6 + (100 << 10),
            ..rec(op, path, Some(0))
        };
        let opened = |mode: &str| SftpRecord {
            mode: Some(mode.to_string()),
            ..rec("open", "up.txt", Some(0))
        };
        assert_eq!(
            out,
            vec![
                opened("w+create+trunc"),
                moved("write", "up.txt"),
                opened("r"),
                moved("read", "up.txt"),
                two("rename", "up.txt", "moved.txt"),
                two("rename", "moved.txt", "final.txt"),
                two("hardlink", "final.txt", "link.txt"),
                two("symlink", "final.txt", "sym.txt"),
                rec("mkdir", "sub", Some(0)),
                rec("rmdir", "sub", Some(0)),
                rec("remove", "link.txt", Some(0)),
                rec("remove", "missing", Some(2)),
                SftpRecord {
                    mode: Some("r".into()),
                    ..rec("open", "missing", Some(2))
                },
            ]
        );
    }
}

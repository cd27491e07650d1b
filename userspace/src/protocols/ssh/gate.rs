//! Decides sftp writes before the server sees them.
//!
//! The agent's side of an sftp channel is cut into packets: requests that
//! may change a file (open for writing or creating, setstat, remove,
//! mkdir, rmdir, rename, links, and extensions blastgate does not know)
//! are held back whole until policy has ruled on every path they touch;
//! the rest, file contents above all, stream through as they arrive. A
//! refused request never reaches the server: the agent gets an SFTP
//! `SSH_FX_PERMISSION_DENIED` status for its id, slipped into the
//! server's stream between two of its packets. A packet larger than
//! OpenSSH accepts (256 KiB) ends the channel: nothing passes unread.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    hosts,
    sftp::{
        Reader, EXTENDED, FSETSTAT, MKDIR, OPEN, PF_APPEND, PF_CREAT, PF_EXCL, PF_TRUNC, PF_WRITE,
        REMOVE, RENAME, RMDIR, SETSTAT, STATUS, SYMLINK,
    },
};

/// OpenSSH's SFTP_MAX_MSG_LENGTH: its client and server refuse longer
/// packets (type byte and body; the length word is not counted).
pub const MAX_MESSAGE: u64 = 256 << 10;
/// SSH_FX_PERMISSION_DENIED.
const FX_PERMISSION_DENIED: u32 = 3;

/// Extensions that read, or act on a handle already decided at open.
const HARMLESS_EXTENSIONS: &[&[u8]] = &[
    b"statvfs@openssh.com",
    b"fstatvfs@openssh.com",
    b"limits@openssh.com",
    b"expand-path@openssh.com",
    b"home-directory",
    b"users-groups-by-id@openssh.com",
    b"fsync@openssh.com",
    b"copy-data",
];

/// A piece of the agent's stream.
#[derive(Debug, PartialEq)]
pub enum Unit {
    /// Bytes that go through undecided.
    Pass(Bytes),
    /// One whole request (length word included) that may be a write.
    Packet(Bytes),
}

fn withheld(kind: u8) -> bool {
    matches!(
        kind,
        OPEN | SETSTAT | FSETSTAT | REMOVE | MKDIR | RMDIR | RENAME | SYMLINK | EXTENDED
    )
}

/// The packet length a 4-byte head declares, checked against OpenSSH's
/// limit.
fn declared(head: [u8; 4]) -> Result<u64, String> {
    let len = u64::from(u32::from_be_bytes(head));
    if len == 0 {
        return Err("an empty sftp packet".into());
    }
    if len > MAX_MESSAGE {
        return Err(format!(
            "an sftp packet of {len} bytes (OpenSSH accepts at most {MAX_MESSAGE})"
        ));
    }
    Ok(len)
}

/// Cuts the agent's stream into [`Unit`]s, whatever its chunking.
#[derive(Default)]
pub struct ClientCuts {
    head: [u8; 5],
    got: usize,
    /// Bytes of the current packet still to pass through.
    passing: u64,
    /// The current packet, withheld until whole, and its full length.
    whole: Option<(BytesMut, usize)>,
}

impl ClientCuts {
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Unit>, String> {
        let mut out = Vec::new();
        let mut pass = BytesMut::new();
        while !data.is_empty() {
            if self.passing > 0 {
                let n = usize::try_from(self.passing)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                pass.extend_from_slice(&data[..n]);
                data = &data[n..];
                self.passing -= n as u64;
            } else if let Some((buf, want)) = self.whole.as_mut() {
                let n = (*want - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                if buf.len() == *want {
                    if !pass.is_empty() {
                        out.push(Unit::Pass(pass.split().freeze()));
                    }
                    let (buf, _) = self.whole.take().unwrap_or_default();
                    out.push(Unit::Packet(buf.freeze()));
                }
            } else {
                let n = (5 - self.got).min(data.len());
                self.head[self.got..self.got + n].copy_from_slice(&data[..n]);
                self.got += n;
                data = &data[n..];
                if self.got < 5 {
                    break;
                }
                self.got = 0;
                let [a, b, c, d, kind] = self.head;
                let len = declared([a, b, c, d])?;
                if withheld(kind) {
                    let total = 4 + len as usize;
                    let mut buf = BytesMut::with_capacity(total);
                    buf.extend_from_slice(&self.head);
                    if buf.len() == total {
                        out.push(Unit::Packet(buf.freeze()));
                    } else {
                        self.whole = Some((buf, total));
                    }
                } else {
                    pass.extend_from_slice(&self.head);
                    self.passing = len - 1;
                }
            }
        }
        if !pass.is_empty() {
            out.push(Unit::Pass(pass.freeze()));
        }
        Ok(out)
    }
}

/// Finds the server's packet boundaries, so a refusal can be slipped in
/// between two of its packets.
#[derive(Default)]
pub struct ServerCuts {
    head: [u8; 4],
    got: usize,
    left: u64,
}

impl ServerCuts {
    /// `data` cut after each packet that ends in it; the last piece may
    /// end inside a packet.
    pub fn cut(&mut self, data: Bytes) -> Result<Vec<Bytes>, String> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < data.len() {
            if self.left > 0 {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += n;
                self.left -= n as u64;
                if self.left == 0 {
                    out.push(data.slice(start..i));
                    start = i;
                }
            } else {
                self.head[self.got] = data[i];
                self.got += 1;
                i += 1;
                if self.got == 4 {
                    self.got = 0;
                    self.left = declared(self.head)?;
                }
            }
        }
        if start < data.len() {
            out.push(data.slice(start..));
        }
        Ok(out)
    }

    /// Between two packets: a refusal may go out now.
    pub fn at_boundary(&self) -> bool {
        self.got == 0 && self.left == 0
    }
}

/// One path a request changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub op: String,
    /// Absolute and normalized; None when it cannot be told.
    pub path: Option<String>,
}

/// A withheld request that changes files: its id and every path it
/// touches. None: the packet changes nothing.
pub fn writes(
    packet: &[u8],
    home: &str,
    handle_path: impl Fn(&[u8]) -> Option<String>,
) -> Result<Option<(u32, Vec<Write>)>, String> {
    let malformed = || "a malformed sftp request".to_string();
    let (kind, body) = match packet.get(4..) {
        Some([kind, body @ ..]) => (*kind, body),
        _ => return Err(malformed()),
    };
    let mut r = Reader(body);
    let id = r.u32().ok_or_else(malformed)?;
    let path = |r: &mut Reader| -> Result<Option<String>, String> {
        let raw = r.string().ok_or_else(malformed)?;
        Ok(std::str::from_utf8(raw)
            .ok()
            .and_then(|p| hosts::normalize(home, p)))
    };
    let one = |op: &str, path: Option<String>| {
        vec![Write {
            op: op.into(),
            path,
        }]
    };
    let list = match kind {
        OPEN => {
            let p = path(&mut r)?;
            let flags = r.u32().ok_or_else(malformed)?;
            if flags & (PF_WRITE | PF_APPEND | PF_CREAT | PF_TRUNC | PF_EXCL) == 0 {
                return Ok(None);
            }
            one("open", p)
        }
        SETSTAT => one("setstat", path(&mut r)?),
        REMOVE => one("remove", path(&mut r)?),
        MKDIR => one("mkdir", path(&mut r)?),
        RMDIR => one("rmdir", path(&mut r)?),
        FSETSTAT => {
            let handle = r.string().ok_or_else(malformed)?;
            one("setstat", handle_path(handle))
        }
        RENAME => two(&mut r, "rename-from", "rename", home, false)?,
        SYMLINK => two(&mut r, "symlink-target", "symlink", home, true)?,
        EXTENDED => {
            let name = r.string().ok_or_else(malformed)?;
            match name {
                b"posix-rename@openssh.com" => two(&mut r, "rename-from", "rename", home, false)?,
                b"hardlink@openssh.com" => two(&mut r, "hardlink-target", "hardlink", home, false)?,
                b"lsetstat@openssh.com" => one("setstat", path(&mut r)?),
                n if HARMLESS_EXTENSIONS.contains(&n) => return Ok(None),
                n => one(&format!("extension {}", String::from_utf8_lossy(n)), None),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some((id, list)))
}

/// A request naming an existing path first and a new one second (in
/// OpenSSH's wire order; for a symlink the first is the link's target,
/// read from the link's directory when relative).
fn two(
    r: &mut Reader,
    first_op: &str,
    second_op: &str,
    home: &str,
    first_from_link_dir: bool,
) -> Result<Vec<Write>, String> {
    let malformed = || "a malformed sftp request".to_string();
    let first = r.string().ok_or_else(malformed)?;
    let second = r.string().ok_or_else(malformed)?;
    let text = |raw: &[u8]| std::str::from_utf8(raw).ok().map(str::to_string);
    let second = text(second).and_then(|p| hosts::normalize(home, &p));
    let base = match (&second, first_from_link_dir) {
        (Some(link), true) => Some(hosts::parent(link).to_string()),
        (None, true) => None,
        (_, false) => Some(home.to_string()),
    };
    let first = text(first)
        .zip(base)
        .and_then(|(p, base)| hosts::normalize(&base, &p));
    Ok(vec![
        Write {
            op: first_op.into(),
            path: first,
        },
        Write {
            op: second_op.into(),
            path: second,
        },
    ])
}

/// The status packet refusing request `id`.
pub fn denied(id: u32, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    let lang = b"en";
    let len = 1 + 4 + 4 + 4 + message.len() + 4 + lang.len();
    b.put_u32(len as u32);
    b.put_u8(STATUS);
    b.put_u32(id);
    b.put_u32(FX_PERMISSION_DENIED);
    b.put_u32(message.len() as u32);
    b.put_slice(message.as_bytes());
    b.put_u32(lang.len() as u32);
    b.put_slice(lang);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend(7u32.to_be_bytes());
        for f in fields {
            body.extend((f.len() as u32).to_be_bytes());
            body.extend(*f);
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn open(path: &str, flags: u32) -> Vec<u8> {
        let mut p = packet(OPEN, &[path.as_bytes()]);
        p.extend(flags.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        let len = (p.len() - 4) as u32;
        p[..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn writes_are_withheld_whole_and_contents_stream() {
        let write = packet(6, &[b"h", &[0; 8], &[9; 100]]);
        let op = open(".bashrc", PF_WRITE | PF_CREAT);
        let stream = [write.clone(), op.clone(), write.clone()].concat();
        for k in [1, 3, 7, 1000] {
            let mut cuts = ClientCuts::default();
            let mut passed = Vec::new();
            let mut packets = Vec::new();
            for chunk in stream.chunks(k) {
                for u in cuts.push(chunk).expect("cuts") {
                    match u {
                        Unit::Pass(b) => passed.extend_from_slice(&b),
                        Unit::Packet(p) => {
                            assert_eq!(passed.len(), write.len(), "order, k={k}");
                            packets.push(p.to_vec());
                        }
                    }
                }
            }
            assert_eq!(packets, vec![op.clone()], "k={k}");
            assert_eq!(passed, [write.clone(), write.clone()].concat(), "k={k}");
        }
    }

    #[test]
    fn oversized_and_empty_packets_end_the_channel() {
        let mut cuts = ClientCuts::default();
        let big = ((MAX_MESSAGE + 1) as u32).to_be_bytes();
        assert!(cuts.push(&[&big[..], &[6]].concat()).is_err());
        assert!(ClientCuts::default().push(&[0, 0, 0, 0, 3]).is_err());
        let mut server = ServerCuts::default();
        assert!(server.cut(Bytes::from(big.to_vec())).is_err());
    }

    #[test]
    fn server_stream_is_cut_at_packet_ends() {
        let a = packet(101, &[b"x"]);
        let b = packet(103, &[&[1; 50]]);
        let stream = Bytes::from([a.clone(), b.clone()].concat());
        let mut s = ServerCuts::default();
        let pieces = s.cut(stream.slice(..a.len() + 3)).expect("cut");
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].as_ref(), &a[..]);
        assert!(!s.at_boundary());
        let pieces = s.cut(stream.slice(a.len() + 3..)).expect("cut");
        assert_eq!(pieces.len(), 1);
        assert!(s.at_boundary());
    }

    fn paths(packet: &[u8]) -> Option<Vec<(String, String)>> {
        writes(packet, "/home/d", |h| {
            (h == b"h1").then(|| "/home/d/opened".to_string())
        })
        .expect("parses")
        .map(|(id, w)| {
            assert_eq!(id, 7);
            w.into_iter()
                .map(|w| (w.op, w.path.unwrap_or_default()))
                .collect()
        })
    }

    fn pair(op: &str, path: &str) -> (String, String) {
        (op.to_string(), path.to_string())
    }

    #[test]
    fn each_write_names_every_path_it_touches() {
        assert_eq!(paths(&open("x", 1)), None, "read-only open");
        assert_eq!(
            paths(&open("./.ssh//rc", PF_WRITE)),
            Some(vec![pair("open", "/home/d/.ssh/rc")])
        );
        assert_eq!(
            paths(&open("a", 1 | PF_CREAT)),
            Some(vec![pair("open", "/home/d/a")]),
            "read with create"
        );
        assert_eq!(
            paths(&packet(SYMLINK, &[b"../.ssh", b"x/link"])),
            Some(vec![
                pair("symlink-target", "/home/d/.ssh"),
                pair("symlink", "/home/d/x/link")
            ])
        );
        assert_eq!(
            paths(&packet(
                EXTENDED,
                &[b"hardlink@openssh.com", b".bashrc", b"x/b"]
            )),
            Some(vec![
                pair("hardlink-target", "/home/d/.bashrc"),
                pair("hardlink", "/home/d/x/b")
            ])
        );
        assert_eq!(
            paths(&packet(RENAME, &[b"up", b"/home/d/.profile"])),
            Some(vec![
                pair("rename-from", "/home/d/up"),
                pair("rename", "/home/d/.profile")
            ])
        );
        assert_eq!(
            paths(&packet(FSETSTAT, &[b"h1"])),
            Some(vec![pair("setstat", "/home/d/opened")])
        );
        assert_eq!(
            paths(&packet(FSETSTAT, &[b"unknown"])),
            Some(vec![pair("setstat", "")])
        );
        assert_eq!(paths(&packet(EXTENDED, &[b"limits@openssh.com"])), None);
        assert_eq!(
            paths(&packet(EXTENDED, &[b"made-up@example.com", b"x"])),
            Some(vec![pair("extension made-up@example.com", "")])
        );
        assert_eq!(
            paths(&packet(REMOVE, &[b"\xff/../x"])),
            Some(vec![pair("remove", "")]),
            "not UTF-8"
        );
        assert!(writes(&packet(REMOVE, &[]), "/h", |_| None).is_err());
    }

    #[test]
    fn refusal_is_an_sftp_status() {
        let d = denied(9, "no");
        assert_eq!(
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
            d.len() - 4
        );
        assert_eq!(d[4], STATUS);
        assert_eq!(&d[5..9], &9u32.to_be_bytes());
        assert_eq!(&d[9..13], &3u32.to_be_bytes());
    }
}

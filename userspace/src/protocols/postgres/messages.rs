//! The agent's messages the gateway inspects, read as bytes. Names and
//! query text stay bytes until the session's reading converts them: a
//! decoder that replaced invalid bytes would make two different statement
//! names one key, and would read the query differently from the server.

use super::frame::{Frame, PgError};

/// A bounds-checked cursor over a message body.
struct Body<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn new(frame: &'a Frame, what: &'static str) -> Body<'a> {
        Body {
            bytes: frame.body(),
            what,
        }
    }

    fn bad(&self) -> PgError {
        PgError::Malformed { what: self.what }
    }

    fn cstr(&mut self) -> Result<&'a [u8], PgError> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.bad())?;
        let (s, rest) = self.bytes.split_at(end);
        self.bytes = &rest[1..];
        Ok(s)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.bytes.len() < n {
            return Err(self.bad());
        }
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(s)
    }

    fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<usize, PgError> {
        usize::try_from(self.i16()?).map_err(|_| self.bad())
    }
}

/// Query: the query string.
pub fn query(frame: &Frame) -> Result<&[u8], PgError> {
    Body::new(frame, "Query").cstr()
}

/// Parse: (statement name, query string).
pub fn parse(frame: &Frame) -> Result<(&[u8], &[u8]), PgError> {
    let mut b = Body::new(frame, "Parse");
    let name = b.cstr()?;
    let query = b.cstr()?;
    Ok((name, query))
}

pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub result_formats: Vec<i16>,
}

pub fn bind(frame: &Frame) -> Result<Bind<'_>, PgError> {
    let mut b = Body::new(frame, "Bind");
    let portal = b.cstr()?;
    let statement = b.cstr()?;
    let formats = b.count()?;
    b.take(formats.checked_mul(2).ok_or_else(|| b.bad())?)?;
    for _ in 0..b.count()? {
        let len = b.i32()?;
        if len > 0 {
            b.take(len as usize)?;
        }
    }
    let n = b.count()?;
    let mut result_formats = Vec::with_capacity(n);
    for _ in 0..n {
        result_formats.push(b.i16()?);
    }
    Ok(Bind {
        portal,
        statement,
        result_formats,
    })
}

/// Describe or Close: (b'S' or b'P', name).
pub fn target<'a>(frame: &'a Frame, what: &'static str) -> Result<(u8, &'a [u8]), PgError> {
    let mut b = Body::new(frame, what);
    let kind = b.take(1)?[0];
    if kind != b'S' && kind != b'P' {
        return Err(b.bad());
    }
    Ok((kind, b.cstr()?))
}

/// Execute: the portal name.
pub fn execute(frame: &Frame) -> Result<&[u8], PgError> {
    Body::new(frame, "Execute").cstr()
}

/// ParameterStatus from the server: (name, value).
pub fn parameter_status(frame: &Frame) -> Result<(String, String), PgError> {
    let mut b = Body::new(frame, "ParameterStatus");
    let name = String::from_utf8_lossy(b.cstr()?).into_owned();
    let value = String::from_utf8_lossy(b.cstr()?).into_owned();
    Ok((name, value))
}

/// Frontend messages blastgate writes itself, in the extended protocol:
/// `sql` run through a named statement and portal of blastgate's own
/// (the agent's unnamed ones are never touched), both closed after.
pub fn run_named(name: &str, sql: &str, out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    let message = |out: &mut bytes::BytesMut, tag: u8, body: &[u8]| {
        out.put_u8(tag);
        out.put_i32(4 + body.len() as i32);
        out.put_slice(body);
    };
    let cstr = |parts: &[&[u8]]| {
        let mut b = Vec::new();
        for p in parts {
            b.extend_from_slice(p);
            b.push(0);
        }
        b
    };
    let n = name.as_bytes();
    let mut parse = cstr(&[n, sql.as_bytes()]);
    parse.extend_from_slice(&0i16.to_be_bytes());
    message(out, b'P', &parse);
    let mut bind = cstr(&[n, n]);
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    message(out, b'B', &bind);
    let mut execute = cstr(&[n]);
    execute.extend_from_slice(&0i32.to_be_bytes());
    message(out, b'E', &execute);
    let mut close = vec![b'P'];
    close.extend(cstr(&[n]));
    message(out, b'C', &close);
    let mut close = vec![b'S'];
    close.extend(cstr(&[n]));
    message(out, b'C', &close);
}

/// Close of the agent's portal `name` (before it is bound again).
pub fn close_portal(name: &[u8], out: &mut bytes::BytesMut) {
    use bytes::BufMut;
    out.put_u8(b'C');
    out.put_i32(4 + 1 + name.len() as i32 + 1);
    out.put_u8(b'P');
    out.put_slice(name);
    out.put_u8(0);
}

/// Flush and Sync, as blastgate sends them itself.
pub const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];
pub const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut bytes = BytesMut::new();
        bytes.put_u8(tag);
        bytes.put_i32(4 + body.len() as i32);
        bytes.put_slice(body);
        Frame { tag, bytes }
    }

    #[test]
    fn names_stay_bytes_and_bodies_are_bounds_checked() {
        let p = frame(b'P', b"\xfe\0SELECT 1\0\0\0");
        assert_eq!(parse(&p).ok(), Some((&b"\xfe"[..], &b"SELECT 1"[..])));
        let b = frame(
            b'B',
            b"p\0\xff\0\0\x01\0\x01\0\x01\0\0\0\x03abc\0\x02\0\x01\0\0",
        );
        let bound = bind(&b).expect("bind");
        assert_eq!(bound.statement, b"\xff");
        assert_eq!(bound.result_formats, vec![1, 0]);
        assert!(bind(&frame(b'B', b"p\0s\0\0\x01\0")).is_err());
        assert!(query(&frame(b'Q', b"SELECT 1")).is_err());
        assert_eq!(
            target(&frame(b'D', b"Sx\0"), "Describe").ok(),
            Some((b'S', &b"x"[..]))
        );
        assert!(target(&frame(b'D', b"Qx\0"), "Describe").is_err());
    }
}

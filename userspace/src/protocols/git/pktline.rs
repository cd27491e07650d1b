//! git's pkt-line framing (gitprotocol-common): four hex digits giving the
//! length of the line including themselves, `0000` for a flush. Parsed
//! strictly: a length of 1 to 3, or over git's 65520, is malformed, and
//! so is any digit that is not hex.

/// git's LARGE_PACKET_MAX: the longest pkt-line git sends or accepts.
pub const MAX_PKT: usize = 65520;

/// One unit of a pkt-line stream.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Pkt<'a> {
    Flush,
    /// The payload (length word removed).
    Data(&'a [u8]),
}

/// Reads the pkt-line at the start of `buf`. Ok(None): more bytes are
/// needed; Ok(Some((pkt, used))) otherwise.
pub fn read(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, String> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len = 0usize;
    for &c in head {
        let d = (c as char)
            .to_digit(16)
            .ok_or_else(|| format!("a pkt-line length that is not hex: {:?}", head_text(head)))?;
        len = len * 16 + d as usize;
    }
    match len {
        0 => Ok(Some((Pkt::Flush, 4))),
        1..=3 => Err(format!(
            "a pkt-line length of {len} (special packets are not part of a push)"
        )),
        n if n > MAX_PKT => Err(format!(
            "a pkt-line of {n} bytes (git sends at most {MAX_PKT})"
        )),
        n => Ok(buf.get(4..n).map(|payload| (Pkt::Data(payload), n))),
    }
}

fn head_text(head: &[u8]) -> String {
    String::from_utf8_lossy(head).into_owned()
}

/// `payload` framed as one pkt-line.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

pub const FLUSH: &[u8] = b"0000";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_flushes_and_partial_input() {
        assert_eq!(read(b"0009hello").unwrap(), Some((Pkt::Data(b"hello"), 9)));
        assert_eq!(read(b"0000rest").unwrap(), Some((Pkt::Flush, 4)));
        assert_eq!(read(b"0009hel").unwrap(), None);
        assert_eq!(read(b"00").unwrap(), None);
        assert_eq!(read(b"0004").unwrap(), Some((Pkt::Data(b""), 4)));
        assert_eq!(encode(b"ok x\n"), b"0009ok x\n".to_vec());
    }

    #[test]
    fn malformed_lengths_are_refused() {
        for bad in [
            &b"0001"[..],
            b"0002",
            b"0003",
            b"00g0",
            b"fff1",
            b"-001",
            b" 009",
        ] {
            assert!(read(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(
            read(b"fff0").unwrap().is_none(),
            "the largest length is legal"
        );
    }
}

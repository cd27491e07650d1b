//! Bounded message framing, and pgwire's codecs wrapped so malformed input
//! is an error, never a panic.
//!
//! Frames are kept as the raw bytes read (tag, length, body): a message the
//! gateway does not need to change is forwarded as those bytes, with no
//! decode and no re-encode.

use std::panic::AssertUnwindSafe;

use bytes::{Buf, BytesMut};
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Startup-phase packets (SSLRequest, StartupMessage, CancelRequest) are
/// small; Postgres itself refuses more than 10000 bytes.
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("upstream: {0}")]
    Upstream(String),
    /// The connection ended (a normal way for a session to finish).
    #[error("connection closed")]
    Closed,
}

/// One message: `bytes` is the whole of it, tag and length included.
#[derive(Debug)]
pub struct Frame {
    pub tag: u8,
    pub bytes: BytesMut,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or_default()
    }
}

/// Reads whole messages into one reusable buffer.
pub struct Reader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max: usize) -> Reader<R> {
        Reader {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            max,
        }
    }

    /// Length of the complete message at the head of the buffer, if any.
    fn complete(&self) -> Result<Option<usize>, PgError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 {
            return Err(PgError::Malformed { what: "length" });
        }
        let total = len as usize + 1;
        if total > self.max {
            return Err(PgError::TooLarge {
                len: total,
                max: self.max,
            });
        }
        Ok((self.buf.len() >= total).then_some(total))
    }

    /// Whether another whole message is already buffered: the caller
    /// batches its writes until this turns false.
    pub fn has_frame(&self) -> bool {
        matches!(self.complete(), Ok(Some(_)))
    }

    /// The next message; [`PgError::Closed`] at a clean end of stream.
    pub async fn next(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(total) = self.complete()? {
                let bytes = self.buf.split_to(total);
                return Ok(Frame {
                    tag: bytes[0],
                    bytes,
                });
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(64 << 10);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Err(PgError::Closed)
                } else {
                    Err(PgError::Protocol("connection closed mid-message".into()))
                };
            }
        }
    }

    /// A startup-phase packet (no tag byte): its body after the length.
    pub async fn startup(&mut self) -> Result<BytesMut, PgError> {
        loop {
            if self.buf.len() >= 4 {
                let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if !(8..=MAX_STARTUP as i32).contains(&len) {
                    return Err(PgError::Malformed {
                        what: "startup packet",
                    });
                }
                if self.buf.len() >= len as usize {
                    let mut packet = self.buf.split_to(len as usize);
                    packet.advance(4);
                    return Ok(packet);
                }
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(PgError::Closed);
            }
        }
    }

    /// Bytes already read past the last message (must be none when the
    /// stream is upgraded to TLS: they would be plaintext injected into
    /// the encrypted session).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn into_inner(self) -> R {
        self.io
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }
}

/// Decodes a whole frame with pgwire. pgwire's decoders index and `get_*`
/// without bounds checks on some malformed inputs: a panic there is
/// caught and becomes [`PgError::Malformed`].
pub fn decode<T: Message>(frame: &Frame, what: &'static str) -> Result<T, PgError> {
    let mut bytes = frame.bytes.clone();
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    match std::panic::catch_unwind(AssertUnwindSafe(|| T::decode(&mut bytes, &ctx))) {
        Ok(Ok(Some(m))) => Ok(m),
        _ => Err(PgError::Malformed { what }),
    }
}

/// Appends an encoded message to `out`.
pub fn encode<T: Message>(msg: &T, out: &mut BytesMut) -> Result<(), PgError> {
    msg.encode(out)
        .map_err(|e| PgError::Protocol(format!("encoding a message: {e}")))
}

//! The agent's side of the startup: TLS or not, a session or a cancel
//! request, who it says it is.

use std::{sync::Arc, time::Duration};

use bytes::Buf;
use tokio::io::AsyncWriteExt;

use super::frame::{PgError, Reader, MAX_STARTUP};
use crate::protocols::stream::{BoxIo, Io};

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
/// An agent that opens a connection and says nothing holds a slot.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Opening {
    Session {
        io: BoxIo,
        /// Startup parameters in the order sent (`user`, `database`, …).
        params: Vec<(String, String)>,
        minor_version: u16,
        tls: bool,
    },
    Cancel {
        /// Kept so the connection ends as a server ends it: after the
        /// cancel is delivered, with a TLS close_notify when encrypted
        /// (libpq 17+ reads a bare EOF inside TLS as a failed cancel).
        io: BoxIo,
        pid: i32,
        secret: Vec<u8>,
    },
}

/// Reads the agent's opening packets: SSLRequest (answered with TLS when
/// `tls` is given), GSSENCRequest (declined), then a StartupMessage or a
/// CancelRequest. Any byte stream (the fuzz target drives it in memory).
pub async fn open(
    conn: impl Io + 'static,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Opening, PgError> {
    tokio::time::timeout(STARTUP_TIMEOUT, negotiate(conn, tls))
        .await
        .map_err(|_| PgError::Protocol("no startup message within 30 s".into()))?
}

async fn negotiate(
    conn: impl Io + 'static,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Opening, PgError> {
    let mut io: BoxIo = Box::new(conn);
    let mut encrypted = false;
    loop {
        let mut reader = Reader::new(io, MAX_STARTUP);
        let mut packet = reader.startup().await?;
        // Bytes after a negotiation request would be read as if they came
        // through TLS (the injection behind CVE-2021-23214): refused.
        if reader.buffered() > 0 {
            return Err(PgError::Protocol(
                "data pipelined after a startup packet".into(),
            ));
        }
        io = reader.into_inner();
        let code = packet.get_i32();
        match code {
            SSL_REQUEST => match (&tls, encrypted) {
                (Some(config), false) => {
                    io.write_all(b"S").await?;
                    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                    let stream = acceptor
                        .accept(io)
                        .await
                        .map_err(|e| PgError::Protocol(format!("agent TLS handshake: {e}")))?;
                    io = Box::new(stream);
                    encrypted = true;
                }
                _ => io.write_all(b"N").await?,
            },
            GSSENC_REQUEST => io.write_all(b"N").await?,
            CANCEL_REQUEST => {
                if packet.len() < 8 {
                    return Err(PgError::Malformed {
                        what: "CancelRequest",
                    });
                }
                let pid = packet.get_i32();
                return Ok(Opening::Cancel {
                    io,
                    pid,
                    secret: packet.to_vec(),
                });
            }
            version if version >> 16 == 3 => {
                return Ok(Opening::Session {
                    io,
                    params: parse_params(&packet)?,
                    minor_version: (version & 0xffff) as u16,
                    tls: encrypted,
                })
            }
            other => {
                return Err(PgError::Protocol(format!(
                    "unsupported protocol version {}.{}",
                    other >> 16,
                    other & 0xffff
                )))
            }
        }
    }
}

/// `name\0value\0 … \0`.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let bad = || PgError::Malformed {
        what: "StartupMessage",
    };
    let mut out = Vec::new();
    let mut parts = body.split(|b| *b == 0);
    loop {
        let name = parts.next().ok_or_else(bad)?;
        if name.is_empty() {
            break;
        }
        let value = parts.next().ok_or_else(bad)?;
        out.push((
            String::from_utf8(name.to_vec()).map_err(|_| bad())?,
            String::from_utf8(value.to_vec()).map_err(|_| bad())?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_parse_and_malformed_ones_are_errors() {
        let p = parse_params(b"user\0app\0database\0orders\0\0").unwrap();
        assert_eq!(
            p,
            vec![
                ("user".to_string(), "app".to_string()),
                ("database".to_string(), "orders".to_string())
            ]
        );
        assert!(parse_params(b"user\0app").is_err());
        assert!(parse_params(b"user").is_err());
        assert!(parse_params(b"\xff\0x\0\0").is_err());
    }
}

//! blastgate's own login to the real server, with the credentials it
//! holds: the agent never takes part, so it never sees them.

use std::{net::SocketAddr, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::{
    response::ErrorResponse,
    startup::{Authentication, Password, SASLInitialResponse, SASLResponse, Startup},
};
use postgres_protocol::authentication::{
    md5_hash,
    sasl::{ChannelBinding, ScramSha256},
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
};

use super::{
    frame::{decode, encode, Frame, PgError, Reader},
    settings::{PostgresTarget, UpstreamTls},
};
use crate::protocols::stream::BoxIo;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Backend messages can be large (DataRow up to 1 GiB); the upstream is
/// trusted not to be hostile, but a bound keeps a runaway one from taking
/// the daemon's memory.
pub const MAX_BACKEND_MESSAGE: usize = 1 << 30;
/// A server closes a cancel connection as soon as it has read the key.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Upstream {
    pub reader: Reader<ReadHalf<BoxIo>>,
    pub writer: WriteHalf<BoxIo>,
    /// ParameterStatus messages, as received, for the agent.
    pub parameters: Vec<Frame>,
    /// BackendKeyData: (pid, secret).
    pub key: Option<(i32, Vec<u8>)>,
}

/// Startup parameters for blastgate's own side connections (catalog
/// lookups): the agent's, but named as blastgate's in pg_stat_activity and
/// in UTF-8, whatever the agent's encoding, since blastgate writes them.
pub fn side_params(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "client_encoding" && k != "application_name")
        .cloned()
        .collect();
    out.push(("client_encoding".into(), "UTF8".into()));
    out.push((
        "application_name".into(),
        "blastgate catalog lookups".into(),
    ));
    out
}

/// Runs one simple query on a side connection of blastgate's own: its
/// rows as text (each read bounded by `timeout` when given), or the
/// server's error.
pub async fn query_rows(
    conn: &mut Upstream,
    sql: &str,
    timeout: Option<Duration>,
) -> Result<Vec<Vec<Option<String>>>, PgError> {
    let mut out = BytesMut::new();
    encode(
        &pgwire::messages::simplequery::Query::new(sql.to_owned()),
        &mut out,
    )?;
    conn.writer.write_all(&out).await?;
    let mut rows = Vec::new();
    let mut failed = None;
    loop {
        let f = match timeout {
            Some(t) => tokio::time::timeout(t, conn.reader.next())
                .await
                .map_err(|_| PgError::Upstream("catalog lookup timed out".into()))??,
            None => conn.reader.next().await?,
        };
        match f.tag {
            b'D' => rows.push(
                super::mask::row_values(&f)?
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect(),
            ),
            b'E' => failed = Some(error_text(&f)),
            b'Z' => break,
            _ => {}
        }
    }
    match failed {
        Some(e) => Err(PgError::Upstream(e)),
        None => Ok(rows),
    }
}

/// The text of an ErrorResponse, for errors and logs.
pub fn error_text(frame: &Frame) -> String {
    match decode::<ErrorResponse>(frame, "ErrorResponse") {
        Ok(e) => {
            let field = |c: u8| {
                e.fields
                    .iter()
                    .find(|(k, _)| *k == c)
                    .map(|(_, v)| v.as_str())
            };
            format!(
                "{} ({})",
                field(b'M').unwrap_or("unknown error"),
                field(b'C').unwrap_or("?")
            )
        }
        Err(_) => "unreadable error".into(),
    }
}

/// Connects, negotiates TLS as configured, starts up with `params` as
/// `cfg.user`, authenticates, and reads up to the first ReadyForQuery.
pub async fn connect(
    addr: SocketAddr,
    cfg: &PostgresTarget,
    params: &[(String, String)],
    timeout: Duration,
) -> Result<Upstream, PgError> {
    tokio::time::timeout(timeout, login(addr, cfg, params))
        .await
        .map_err(|_| PgError::Upstream(format!("{addr}: no ReadyForQuery within {timeout:?}")))?
}

async fn login(
    addr: SocketAddr,
    cfg: &PostgresTarget,
    params: &[(String, String)],
) -> Result<Upstream, PgError> {
    let up = |e: String| PgError::Upstream(format!("{addr}: {e}"));
    let io = transport(addr, cfg).await?;
    let (read, mut writer) = tokio::io::split(io);
    let mut reader = Reader::new(read, MAX_BACKEND_MESSAGE);

    let mut startup_params: std::collections::BTreeMap<String, String> =
        params.iter().cloned().collect();
    startup_params.insert("user".into(), cfg.user.clone());
    let mut startup = Startup::new();
    startup.parameters = startup_params;
    let mut out = BytesMut::new();
    encode(&startup, &mut out)?;
    writer.write_all(&out).await?;

    let password = cfg.password().map_err(up)?;
    let need = |what: &str| {
        password.clone().ok_or_else(|| {
            up(format!(
                "the server asks for a {what} password and none is configured (password_file / password_env)"
            ))
        })
    };
    let mut scram: Option<ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut key = None;
    loop {
        let frame = reader.next().await.map_err(|e| match e {
            PgError::Closed => up("closed the connection during login".into()),
            other => other,
        })?;
        out.clear();
        match frame.tag {
            b'R' => match decode::<Authentication>(&frame, "Authentication")? {
                Authentication::Ok => {}
                Authentication::CleartextPassword => {
                    encode(&Password::new(need("cleartext")?), &mut out)?;
                }
                Authentication::MD5Password(salt) => {
                    let salt: [u8; 4] = salt
                        .as_slice()
                        .try_into()
                        .map_err(|_| up("md5 salt is not 4 bytes".into()))?;
                    let hash = md5_hash(cfg.user.as_bytes(), need("md5")?.as_bytes(), salt);
                    encode(&Password::new(hash), &mut out)?;
                }
                Authentication::SASL(mechanisms) => {
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(up(format!("unsupported SASL mechanisms {mechanisms:?}")));
                    }
                    let s =
                        ScramSha256::new(need("SCRAM")?.as_bytes(), ChannelBinding::unsupported());
                    encode(
                        &SASLInitialResponse::new(
                            "SCRAM-SHA-256".into(),
                            Some(Bytes::copy_from_slice(s.message())),
                        ),
                        &mut out,
                    )?;
                    scram = Some(s);
                }
                Authentication::SASLContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| up("SASL continue without a SASL start".into()))?;
                    s.update(&data).map_err(|e| up(format!("SCRAM: {e}")))?;
                    encode(
                        &SASLResponse::new(Bytes::copy_from_slice(s.message())),
                        &mut out,
                    )?;
                }
                Authentication::SASLFinal(data) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| up("SASL final without a SASL start".into()))?;
                    // Proves the server knew the password too.
                    s.finish(&data)
                        .map_err(|e| up(format!("SCRAM server signature: {e}")))?;
                }
                other => {
                    return Err(up(format!("unsupported authentication request {other:?}")));
                }
            },
            b'S' => parameters.push(frame),
            b'K' => {
                let body = frame.body();
                if body.len() >= 8 {
                    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    key = Some((pid, body[4..].to_vec()));
                }
            }
            b'N' | b'v' => {}
            b'E' => return Err(up(format!("login refused: {}", error_text(&frame)))),
            b'Z' => {
                return Ok(Upstream {
                    reader,
                    writer,
                    parameters,
                    key,
                })
            }
            other => {
                return Err(up(format!(
                    "unexpected message {:?} during login",
                    other as char
                )))
            }
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
        }
    }
}

/// TCP to the server, then TLS as the target says.
async fn transport(addr: SocketAddr, cfg: &PostgresTarget) -> Result<BoxIo, PgError> {
    let up = |e: String| PgError::Upstream(format!("{addr}: {e}"));
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| up(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(match cfg.tls {
        UpstreamTls::Disable => Box::new(tcp),
        mode => {
            tcp.write_all(&SSL_REQUEST).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                return Err(up(
                    "the server does not accept TLS (tls is required for this target)".into(),
                ));
            }
            let config = match mode {
                UpstreamTls::Require => crate::tls::client::encrypt_only(),
                _ => crate::tls::client::verifying(cfg.ca_file.as_deref()),
            }
            .map_err(up)?;
            let name = cfg
                .server_name
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            let name = ServerName::try_from(name.clone())
                .map_err(|_| up(format!("server_name {name:?} is not a valid name")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| up(format!("TLS: {e}")))?;
            Box::new(stream)
        }
    })
}

/// A CancelRequest for the real backend, over a connection of its own
/// that is encrypted when sessions are (the secret is as good as a
/// password for cancelling). Returns once the server has closed it, which
/// it does after signalling the backend: the agent's own connection is
/// closed only then, as libpq expects of a server.
pub async fn cancel(
    addr: SocketAddr,
    cfg: &PostgresTarget,
    pid: i32,
    secret: &[u8],
) -> Result<(), PgError> {
    tokio::time::timeout(CANCEL_TIMEOUT, async {
        let mut io = transport(addr, cfg).await?;
        let mut packet = BytesMut::with_capacity(12 + secret.len());
        packet.put_i32(12 + secret.len() as i32);
        packet.put_i32(80877102);
        packet.put_i32(pid);
        packet.put_slice(secret);
        io.write_all(&packet).await?;
        io.flush().await?;
        // The server answers nothing; anything it does send is discarded.
        // A TLS close without close_notify still means the key was read.
        let mut sink = [0u8; 256];
        loop {
            match io.read(&mut sink).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    })
    .await
    .map_err(|_| {
        PgError::Upstream(format!(
            "{addr}: cancel not acknowledged within {CANCEL_TIMEOUT:?}"
        ))
    })?
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn target(tls: &str) -> PostgresTarget {
        toml::from_str(&format!("user = \"app\"\ntls = \"{tls}\"\n")).unwrap()
    }

    /// A server that reads `n` bytes, answers `answer`, waits `hold`, then
    /// closes; returns what it read.
    async fn server(
        n: usize,
        answer: &'static [u8],
        hold: Duration,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; n];
            c.read_exact(&mut got).await.unwrap();
            c.write_all(answer).await.unwrap();
            tokio::time::sleep(hold).await;
            got
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_plain_cancel_returns_once_the_server_has_closed() {
        let hold = Duration::from_millis(300);
        let (addr, task) = server(16, b"", hold).await;
        let started = std::time::Instant::now();
        cancel(addr, &target("disable"), 77, &[1, 2, 3, 4])
            .await
            .unwrap();
        assert!(
            started.elapsed() >= hold,
            "returned before the server closed"
        );
        let got = task.await.unwrap();
        assert_eq!(got, [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 77, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn with_upstream_tls_the_cancel_starts_with_an_sslrequest() {
        // A server refusing TLS: the key is not sent in the clear instead.
        let (addr, task) = server(8, b"N", Duration::ZERO).await;
        let err = cancel(addr, &target("require"), 77, &[1, 2, 3, 4])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not accept TLS"), "{err}");
        assert_eq!(task.await.unwrap(), SSL_REQUEST);
    }
}

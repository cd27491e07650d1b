//! The PostgreSQL gateway: blastgate speaks the server side to the agent
//! and the client side to the real server, message by message, so every
//! client and protocol feature keeps working while each statement is
//! classified, decided, recorded, and its results masked.
//!
//! - [`agent`]: the agent's opening (TLS from the local CA, cancel or
//!   session, who it says it is);
//! - [`upstream`]: blastgate's own login with the held credentials;
//! - [`classify`]: statements through the real Postgres parser;
//! - [`gate`]: policy and approval per statement;
//! - [`lineage`]: which table columns each result column is computed from;
//! - [`relay`]: the two directions, tied together by what the server will
//!   answer next;
//! - [`mask`]: result rows rewritten on the wire;
//! - [`cancel`]: the agent's backend keys mapped to the real ones.

pub mod agent;
mod cancel;
pub mod classify;
mod effects;
pub mod frame;
mod functions;
pub mod gate;
pub mod lineage;
pub mod mask;
pub mod messages;
pub mod reading;
mod relay;
mod settings;
mod shape;
mod tripwire;
pub mod upstream;

use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use pgwire::messages::{
    response::{ErrorResponse, ReadyForQuery, TransactionStatus},
    startup::{Authentication, NegotiateProtocolVersion, Password},
};
use tokio::{
    io::{AsyncWriteExt, WriteHalf},
    net::TcpStream,
};

pub use settings::{PostgresTarget, UpstreamTls};

use self::{
    agent::Opening,
    classify::Classifier,
    frame::{decode, encode, PgError, Reader},
};
use crate::{
    protocols::{gateway::Gateway, phases::Phases, stream::BoxIo},
    records::{EventKind, Verdict},
    session::SessionError,
};

/// Startup parameters passed on to the server. Others are dropped:
/// `options` can carry `-c role=…` and other settings that would bypass
/// statement policy; `replication` is refused outright.
const FORWARDED: &[&str] = &[
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
];

/// Classification is pure: one cache for every session.
fn classifier() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(|| Classifier::new(8192))
}

/// Lineage analysis is pure too: one cache for every session.
fn analyzer() -> &'static lineage::Analyzer {
    static A: OnceLock<lineage::Analyzer> = OnceLock::new();
    A.get_or_init(|| lineage::Analyzer::new(8192))
}

pub struct Postgres;

/// The agent's side after its opening.
pub enum Agent {
    /// A CancelRequest: nothing more is read on this connection.
    Cancel {
        io: BoxIo,
        pid: i32,
        secret: Vec<u8>,
    },
    Session {
        reader: Reader<tokio::io::ReadHalf<BoxIo>>,
        writer: WriteHalf<BoxIo>,
        params: Vec<(String, String)>,
    },
}

/// blastgate's side after its login.
pub enum Upstream {
    /// The cancel was forwarded (and recorded) in the connect phase.
    Cancelled,
    Session {
        upstream: upstream::Upstream,
        forwarded: Vec<(String, String)>,
    },
}

fn settings(gw: &Gateway) -> Result<&PostgresTarget, SessionError> {
    gw.target
        .postgres
        .as_ref()
        .ok_or_else(|| SessionError::blastgate("target has no [targets.postgres] section"))
}

/// Whose fault a relay error is: the server's when it said something
/// blastgate cannot follow; otherwise the agent's (what it sent, or its
/// connection).
fn relay_err(e: PgError) -> SessionError {
    match e {
        PgError::Upstream(_) => SessionError::upstream(e.to_string()),
        e => SessionError::agent(e.to_string()),
    }
}

impl Phases for Postgres {
    type Agent = Agent;
    type Upstream = Upstream;

    async fn handshake(&self, conn: TcpStream, gw: &Gateway) -> Result<Agent, SessionError> {
        let cfg = settings(gw)?;
        let _ = conn.set_nodelay(true);
        let tls = gw.services.tls.as_ref().and_then(|c| {
            match c.config_for(&gw.presented_names()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "no certificate for this target: TLS not offered");
                    None
                }
            }
        });
        match agent::open(conn, tls).await.map_err(relay_err)? {
            Opening::Cancel { io, pid, secret } => Ok(Agent::Cancel { io, pid, secret }),
            Opening::Session {
                io,
                params,
                minor_version,
                ..
            } => {
                let (read, mut writer) = tokio::io::split(io);
                negotiate_version(&mut writer, minor_version, &params)
                    .await
                    .map_err(relay_err)?;
                Ok(Agent::Session {
                    reader: Reader::new(read, cfg.max_message_bytes),
                    writer,
                    params,
                })
            }
        }
    }

    async fn connect(&self, agent: &mut Agent, gw: &Gateway) -> Result<Upstream, SessionError> {
        let cfg = settings(gw)?;
        let (reader, writer, params) = match agent {
            Agent::Cancel { io, pid, secret } => {
                forward_cancel(gw, cfg, io, *pid, secret).await;
                return Ok(Upstream::Cancelled);
            }
            Agent::Session {
                reader,
                writer,
                params,
            } => (reader, writer, params),
        };
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let user = param("user").unwrap_or_default();
        if user != cfg.agent_user() {
            return Err(SessionError::agent(format!(
                "role \"{user}\" is not available through blastgate; agents connect to this target as \"{}\"",
                cfg.agent_user()
            ))
            .with_code("28000"));
        }
        if param("replication").is_some_and(|v| v != "false" && v != "0") {
            return Err(SessionError::policy(
                "replication connections are not allowed through blastgate",
            ));
        }
        if let Some(file) = &cfg.agent_password_file {
            check_agent_password(reader, writer, file)
                .await
                .map_err(|msg| SessionError::agent(msg).with_code("28P01"))?;
        }
        let mut forwarded: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| FORWARDED.contains(&k.as_str()))
            .cloned()
            .collect();
        if param("database").is_none() {
            forwarded.push(("database".into(), user.to_string()));
        }
        let upstream = upstream::connect(gw.upstream, cfg, &forwarded, gw.services.connect_timeout)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "upstream login failed");
                SessionError::upstream(format!(
                    "blastgate could not log in to the server for this target: {e}"
                ))
            })?;
        Ok(Upstream::Session {
            upstream,
            forwarded,
        })
    }

    async fn relay(&self, agent: Agent, up: Upstream, gw: &Gateway) -> Result<(), SessionError> {
        let cfg = settings(gw)?;
        let (
            Agent::Session {
                reader, mut writer, ..
            },
            Upstream::Session {
                upstream,
                forwarded,
            },
        ) = (agent, up)
        else {
            // A cancel: done in the connect phase; the server tells the
            // client nothing either way, and neither does blastgate.
            return Ok(());
        };
        let mut hello = BytesMut::new();
        let mut greet = || -> Result<(), PgError> {
            encode(&Authentication::Ok, &mut hello)?;
            for p in &upstream.parameters {
                hello.extend_from_slice(&p.bytes);
            }
            Ok(())
        };
        greet().map_err(relay_err)?;
        let registration = upstream
            .key
            .clone()
            .map(|(pid, secret)| cancel::register(&gw.target.name, gw.upstream, pid, secret));
        if let Some(r) = &registration {
            hello.put_u8(b'K');
            hello.put_i32(12);
            hello.put_i32(r.pid);
            hello.put_slice(&r.secret);
        }
        encode(&ReadyForQuery::new(TransactionStatus::Idle), &mut hello).map_err(relay_err)?;
        writer
            .write_all(&hello)
            .await
            .map_err(|e| relay_err(e.into()))?;

        let result = relay_session(gw, cfg, reader, writer, upstream, &forwarded).await;
        drop(registration);
        result.map_err(relay_err)
    }

    /// A FATAL error, as the server sends one, then the connection ends.
    async fn refuse(&self, agent: Agent, why: &SessionError, _gw: &Gateway) {
        let mut io = match agent {
            // A cancel gets no answer, refused or not.
            Agent::Cancel { io, .. } => {
                let mut io = io;
                let _ = io.shutdown().await;
                return;
            }
            Agent::Session { writer, .. } => writer,
        };
        let mut out = BytesMut::new();
        let error = ErrorResponse::new(vec![
            (b'S', "FATAL".into()),
            (b'V', "FATAL".into()),
            (b'C', why.sqlstate().into()),
            (b'M', why.message.clone()),
        ]);
        if encode(&error, &mut out).is_ok() {
            let _ = io.write_all(&out).await;
            let _ = io.shutdown().await;
        }
    }
}

/// The session from the agent's first statement on, once both sides have
/// logged in: [`serve`] runs it over the agent's and the server's
/// connections, the fuzz targets (`fuzz/`) over in-memory streams.
#[doc(hidden)]
pub async fn relay_session(
    gw: &Gateway,
    cfg: &PostgresTarget,
    reader: Reader<tokio::io::ReadHalf<BoxIo>>,
    writer: WriteHalf<BoxIo>,
    upstream: upstream::Upstream,
    forwarded: &[(String, String)],
) -> Result<(), PgError> {
    let mask = gw.mask_plan();
    let catalog = relay::Catalog {
        addr: gw.upstream,
        cfg,
        params: upstream::side_params(forwarded),
        timeout: gw.services.connect_timeout,
        conn: None,
        names: Default::default(),
        facts: Default::default(),
    };
    let halves = relay::Halves {
        agent_reader: reader,
        agent_writer: writer,
        upstream,
    };
    relay::run(gw, halves, classifier(), mask, catalog).await
}

/// Answers a newer minor version (3.2 asks for longer cancel keys) or
/// `_pq_.` protocol options as PostgreSQL does, before anything else: with
/// the version it speaks, 3.0 (the one blastgate speaks upstream), and the
/// options' names.
async fn negotiate_version(
    writer: &mut WriteHalf<BoxIo>,
    minor: u16,
    params: &[(String, String)],
) -> Result<(), PgError> {
    /// In full, as PostgreSQL sends it (not the bare minor number).
    const PROTOCOL_3_0: i32 = 3 << 16;
    let options: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor == 0 && options.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    encode(
        &NegotiateProtocolVersion::new(PROTOCOL_3_0, options),
        &mut out,
    )?;
    writer.write_all(&out).await?;
    Ok(())
}

/// Asks for a cleartext password and compares it with the configured one.
async fn check_agent_password(
    reader: &mut Reader<tokio::io::ReadHalf<BoxIo>>,
    writer: &mut WriteHalf<BoxIo>,
    file: &std::path::Path,
) -> Result<(), String> {
    let expected = crate::config::Secret {
        file: Some(file.to_path_buf()),
        env: None,
    }
    .read()?;
    let mut out = BytesMut::new();
    encode(&Authentication::CleartextPassword, &mut out).map_err(|e| e.to_string())?;
    writer.write_all(&out).await.map_err(|e| e.to_string())?;
    let frame = reader.next().await.map_err(|e| e.to_string())?;
    if frame.tag != b'p' {
        return Err("expected a password message".into());
    }
    let given: Password = decode(&frame, "PasswordMessage").map_err(|e| e.to_string())?;
    let (a, b) = (given.password.as_bytes(), expected.as_bytes());
    // Constant time in the length of the expected password.
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err("password authentication failed".into())
    }
}

/// Forwards a CancelRequest with the real key, then ends the agent's
/// connection as the server would: once the server has taken the cancel,
/// with a TLS close_notify if the request came encrypted.
async fn forward_cancel(
    gw: &Gateway,
    cfg: &PostgresTarget,
    io: &mut BoxIo,
    pid: i32,
    secret: &[u8],
) {
    let mut event = gw.event(EventKind::Statement, Verdict::Allow);
    event.action = Some("sql:cancel".into());
    event.text = Some("CancelRequest".into());
    match cancel::lookup(&gw.target.name, pid, secret) {
        Some((addr, real_secret)) => {
            let sent = upstream::cancel(addr, cfg, pid, &real_secret).await;
            if let Err(e) = &sent {
                event.verdict = Verdict::Error;
                event.reason = Some(e.to_string());
            }
        }
        None => {
            event.verdict = Verdict::Deny;
            event.reason = Some("no live session issued this cancel key".into());
        }
    }
    gw.record(event).await;
    // The server tells the client nothing either way.
    let _ = io.shutdown().await;
}

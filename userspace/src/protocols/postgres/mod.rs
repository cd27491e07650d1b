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
    protocols::{gateway::Gateway, stream::BoxIo},
    proxy::session::SessionError,
    records::{EventKind, Verdict},
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

pub async fn serve(conn: TcpStream, gw: &Gateway) -> Result<(), SessionError> {
    let cfg =
        gw.target.postgres.as_ref().ok_or_else(|| {
            SessionError::Upstream("target has no [targets.postgres] section".into())
        })?;
    let _ = conn.set_nodelay(true);
    let tls = gw
        .ctx
        .tls
        .as_ref()
        .and_then(|c| match c.config_for(&gw.target.names) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no certificate for this target: TLS not offered");
                None
            }
        });
    let relay_err = |e: PgError| SessionError::Relay(e.to_string());
    let (io, params, minor) = match agent::open(conn, tls).await.map_err(relay_err)? {
        Opening::Cancel { io, pid, secret } => {
            return forward_cancel(gw, cfg, io, pid, &secret).await
        }
        Opening::Session {
            io,
            params,
            minor_version,
            ..
        } => (io, params, minor_version),
    };
    let (read, mut writer) = tokio::io::split(io);
    let mut reader = Reader::new(read, cfg.max_message_bytes);
    negotiate_version(&mut writer, minor, &params)
        .await
        .map_err(relay_err)?;
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());

    let user = param("user").unwrap_or_default();
    if user != cfg.agent_user() {
        let msg = format!(
            "role \"{user}\" is not available through blastgate; agents connect to this target as \"{}\"",
            cfg.agent_user()
        );
        return refuse(&mut writer, "28000", &msg).await;
    }
    if param("replication").is_some_and(|v| v != "false" && v != "0") {
        return refuse(
            &mut writer,
            "42501",
            "replication connections are not allowed through blastgate",
        )
        .await;
    }
    if let Some(file) = &cfg.agent_password_file {
        if let Err(msg) = check_agent_password(&mut reader, &mut writer, file).await {
            return refuse(&mut writer, "28P01", &msg).await;
        }
    }
    let mut forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| FORWARDED.contains(&k.as_str()))
        .cloned()
        .collect();
    if param("database").is_none() {
        forwarded.push(("database".into(), user.to_string()));
    }

    let upstream =
        match upstream::connect(gw.upstream, cfg, &forwarded, gw.ctx.connect_timeout).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "upstream login failed");
                let msg = format!("blastgate could not log in to the server for this target: {e}");
                return refuse(&mut writer, "08006", &msg).await;
            }
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
        timeout: gw.ctx.connect_timeout,
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

/// A FATAL error to the agent, then the session ends (recorded as an
/// error with the same message).
async fn refuse(
    writer: &mut WriteHalf<BoxIo>,
    code: &str,
    message: &str,
) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    let error = ErrorResponse::new(vec![
        (b'S', "FATAL".into()),
        (b'V', "FATAL".into()),
        (b'C', code.into()),
        (b'M', message.into()),
    ]);
    if encode(&error, &mut out).is_ok() {
        let _ = writer.write_all(&out).await;
        let _ = writer.shutdown().await;
    }
    Err(SessionError::Upstream(message.to_string()))
}

/// Forwards a CancelRequest with the real key, then ends the agent's
/// connection as the server would: once the server has taken the cancel,
/// with a TLS close_notify if the request came encrypted.
async fn forward_cancel(
    gw: &Gateway,
    cfg: &PostgresTarget,
    mut io: BoxIo,
    pid: i32,
    secret: &[u8],
) -> Result<(), SessionError> {
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
    Ok(())
}

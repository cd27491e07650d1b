//! The SSH gateway: a russh server to the agent, presenting a short-lived
//! host certificate from blastgate's SSH CA, and a russh client upstream
//! logging in with the key blastgate holds. Exec requests are decided by
//! policy per request ([`command`]); forwarding is refused per channel.
//!
//! Work in progress: exec channels only (no pty shells, sftp, recording).

pub mod command;
mod settings;
mod upstream;

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use russh::{
    server::{self, Auth, Msg, Session},
    Channel, ChannelId, ChannelMsg,
};
use serde_json::json;
use tokio::{net::TcpStream, sync::mpsc};

pub use settings::SshTarget;

use crate::{protocols::gateway::Gateway, proxy::session::SessionError, records::EventKind};

/// How long a host certificate is valid: a certificate is minted per
/// connection, so a stolen one is worth little.
const CERT_VALIDITY: Duration = Duration::from_secs(3600);

pub async fn serve(conn: TcpStream, gw: Gateway) -> Result<(), SessionError> {
    let cfg = gw
        .target
        .ssh
        .clone()
        .ok_or_else(|| SessionError::Upstream("target has no [targets.ssh] section".into()))?;
    let ca = gw
        .ctx
        .ssh_ca
        .clone()
        .ok_or_else(|| SessionError::Upstream("no SSH CA".into()))?;
    let identity = ca
        .host_identity(&gw.target.name, &gw.target.names, CERT_VALIDITY)
        .map_err(|e| SessionError::Upstream(e.to_string()))?;
    let mut config = server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-SSH".into()),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        auth_rejection_time: Duration::from_millis(0),
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    identity
        .install(&mut config)
        .map_err(|e| SessionError::Upstream(e.to_string()))?;
    let handler = AgentSide {
        gw,
        cfg: Arc::new(cfg),
        upstream: Arc::new(tokio::sync::Mutex::new(None)),
        channels: HashMap::new(),
    };
    let running = server::run_stream(Arc::new(config), conn, handler)
        .await
        .map_err(|e| SessionError::Relay(format!("ssh: {e:?}")))?;
    running
        .await
        .map_err(|e| SessionError::Relay(format!("ssh: {e:?}")))
}

type Upstream = Arc<tokio::sync::Mutex<Option<russh::client::Handle<upstream::ServerCheck>>>>;

/// Data from the agent for one channel, in order, with its EOF.
enum Input {
    Data(Bytes),
    Eof,
}

struct AgentSide {
    gw: Gateway,
    cfg: Arc<SshTarget>,
    upstream: Upstream,
    channels: HashMap<ChannelId, mpsc::Sender<Input>>,
}

#[derive(Debug, thiserror::Error)]
enum SshError {
    #[error("{0}")]
    Russh(#[from] russh::Error),
}

impl server::Handler for AgentSide {
    type Error = SshError;

    // The kernel already said who the caller is: any authentication will do,
    // and nothing the agent presents is passed on.
    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let line = String::from_utf8_lossy(data).into_owned();
        let (tx, rx) = mpsc::channel(64);
        self.channels.insert(channel, tx);
        let gw = self.gw.clone();
        let cfg = self.cfg.clone();
        let upstream = self.upstream.clone();
        let handle = session.handle();
        // The decision (possibly a long wait for a human) and the relay run
        // on their own, so this session keeps serving its other channels.
        tokio::spawn(async move {
            exec(gw, cfg, upstream, handle, channel, line, rx).await;
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel) {
            let _ = tx.send(Input::Data(Bytes::copy_from_slice(data))).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel) {
            let _ = tx.send(Input::Eof).await;
        }
        Ok(())
    }

    // Tunnels would carry traffic past every policy: each request is
    // decided and recorded, and refused; the session goes on.

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("direct-tcpip", host, port).await;
        drop(reply);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forward("tcpip-forward", address, *port).await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forward("streamlocal-forward", socket_path, 0)
            .await;
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_forward("auth-agent", "", 0).await;
        Ok(false)
    }
}

impl AgentSide {
    async fn refuse_forward(&self, kind: &str, host: &str, port: u32) {
        let text = if port == 0 {
            format!("{kind} {host}")
        } else {
            format!("{kind} {host}:{port}")
        };
        let context = json!({
            "command": text,
            "forward_host": host,
            "forward_port": port,
        });
        let decision = self.gw.decide("ssh:forward", &context);
        let mut event = self
            .gw
            .event(EventKind::Command, crate::records::Verdict::Deny);
        event.action = Some("ssh:forward".into());
        event.text = Some(text);
        event.policy_id = decision.policy_id.clone();
        event.reason = Some(match decision.verdict {
            crate::policy::Verdict::Allow => {
                "forwarding is not supported by the gateway; refused".to_string()
            }
            _ => decision.reason,
        });
        self.gw.record(event).await;
    }
}

async fn exec(
    gw: Gateway,
    cfg: Arc<SshTarget>,
    upstream: Upstream,
    agent: server::Handle,
    channel: ChannelId,
    line: String,
    mut input: mpsc::Receiver<Input>,
) {
    let parsed = command::parse(&line);
    let context = json!({
        "command": parsed.line,
        "program": parsed.program,
        "args": parsed.args,
        "shell_features": parsed.shell_features,
    });
    let decision = gw.decide("ssh:exec", &context);
    let notice = agent.clone();
    let ruling = gw
        .rule(decision, "ssh:exec", &line, move |id| {
            let notice = notice.clone();
            tokio::spawn(async move {
                let _ = notice
                    .extended_data(channel, 1, format!("waiting for approval {id}\r\n"))
                    .await;
            });
        })
        .await;
    let mut event = gw.ruled(EventKind::Command, "ssh:exec", line.clone(), &ruling);
    if !ruling.allowed {
        let message = format!(
            "blastgate: command denied by policy {}: {}\r\n",
            ruling.policy_id.as_deref().unwrap_or("(default deny)"),
            ruling.reason
        );
        end_channel(&agent, channel, message, 126).await;
        gw.record(event).await;
        return;
    }
    let started = std::time::Instant::now();
    let result = relay(&gw, &cfg, &upstream, &agent, channel, &line, &mut input).await;
    event.duration_us = Some(started.elapsed().as_micros() as u64);
    if let Err(e) = result {
        event.verdict = crate::records::Verdict::Error;
        event.reason = Some(format!("{}; {e}", event.reason.unwrap_or_default()));
        end_channel(&agent, channel, format!("blastgate: {e}\r\n"), 255).await;
    }
    gw.record(event).await;
}

/// Ends a channel the upstream never ran: why on stderr, then the exit
/// status, EOF and close, in the order OpenSSH expects them.
async fn end_channel(agent: &server::Handle, channel: ChannelId, message: String, status: u32) {
    let _ = agent.extended_data(channel, 1, message).await;
    let _ = agent.exit_status_request(channel, status).await;
    let _ = agent.eof(channel).await;
    let _ = agent.close(channel).await;
}

async fn relay(
    gw: &Gateway,
    cfg: &SshTarget,
    upstream: &Upstream,
    agent: &server::Handle,
    channel: ChannelId,
    line: &str,
    input: &mut mpsc::Receiver<Input>,
) -> Result<(), String> {
    let mut up = {
        let mut guard = upstream.lock().await;
        if guard.is_none() {
            *guard = Some(upstream::connect(gw, cfg).await?);
        }
        match guard.as_ref() {
            Some(h) => h.channel_open_session().await.map_err(|e| e.to_string())?,
            None => return Err("no upstream connection".into()),
        }
    };
    up.exec(true, line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = up.wait() => {
                let Some(msg) = msg else { break };
                let delivered = match msg {
                    ChannelMsg::Data { data } => agent.data(channel, data).await.is_ok(),
                    ChannelMsg::ExtendedData { data, ext } => {
                        agent.extended_data(channel, ext, data).await.is_ok()
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        agent.exit_status_request(channel, exit_status).await.is_ok()
                    }
                    ChannelMsg::Eof => agent.eof(channel).await.is_ok(),
                    ChannelMsg::Close => false,
                    _ => true,
                };
                if !delivered {
                    break;
                }
            }
            item = input.recv(), if input_open => match item {
                Some(Input::Data(d)) => up.data_bytes(d).await.map_err(|e| e.to_string())?,
                Some(Input::Eof) => up.eof().await.map_err(|e| e.to_string())?,
                None => input_open = false,
            },
        }
    }
    let _ = agent.close(channel).await;
    Ok(())
}

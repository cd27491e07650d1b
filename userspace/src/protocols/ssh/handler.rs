//! The russh server side facing the agent: accepts any authentication
//! (the kernel already said who is calling), collects each channel's
//! setup, starts a [`channel`] task per exec/shell/subsystem, routes the
//! agent's data and requests to it in order, and refuses every tunnel.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use russh::{
    server::{self, Msg, Session},
    Channel, ChannelId, Pty as PtyMode, Sig,
};

use super::{
    channel::{self, Job, Pty, Request, Setup},
    context::SshContext,
    flow::{self, Input, Outbox},
    SshTarget, Upstream,
};
use crate::{
    protocols::gateway::Gateway,
    records::{EventKind, Verdict},
};

/// A channel before and after it starts.
#[derive(Default)]
struct Slot {
    setup: Setup,
    /// Set once the channel runs; dropping it tells the task the agent
    /// hung up.
    outbox: Option<Outbox>,
}

pub struct AgentSide {
    pub gw: Gateway,
    pub cfg: Arc<SshTarget>,
    pub upstream: Upstream,
    channels: HashMap<ChannelId, Slot>,
    /// The channel window the server config grants.
    window: u32,
}

impl AgentSide {
    pub fn new(gw: Gateway, cfg: Arc<SshTarget>, window: u32) -> AgentSide {
        AgentSide {
            gw,
            cfg,
            upstream: Arc::new(tokio::sync::Mutex::new(None)),
            channels: HashMap::new(),
            window,
        }
    }

    fn start(&mut self, id: ChannelId, request: Request, session: &mut Session) {
        let slot = self.channels.entry(id).or_default();
        if slot.outbox.is_some() {
            // One request per channel (RFC 4254 6.5).
            let _ = session.channel_failure(id);
            return;
        }
        let _ = session.channel_success(id);
        let (outbox, inbox) = flow::channel();
        slot.outbox = Some(outbox);
        let job = Job {
            gw: self.gw.clone(),
            cfg: self.cfg.clone(),
            upstream: self.upstream.clone(),
            agent: session.handle(),
            id,
            request,
            setup: std::mem::take(&mut slot.setup),
            inbox,
        };
        // The decision (possibly a long wait for a human) and the relay run
        // on their own, so this session keeps serving its other channels;
        // the session owns the task and closes only once it has ended.
        self.gw.tasks.spawn(channel::run(job));
    }

    fn send(&self, id: ChannelId, input: Input) -> Option<&Outbox> {
        let outbox = self.channels.get(&id)?.outbox.as_ref()?;
        outbox.send(input).then_some(outbox)
    }

    async fn refuse_forward(&self, kind: &str, host: &str, port: u32) {
        let text = if port == 0 {
            format!("{kind} {host}")
        } else {
            format!("{kind} {host}:{port}")
        };
        let context = SshContext {
            forward_host: host.to_string(),
            forward_port: port,
            ..Default::default()
        };
        let decision = self.gw.decide("ssh:forward", &context.json());
        let mut event = self.gw.event(EventKind::Command, Verdict::Deny);
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

impl AgentSide {
    /// Rules on one environment variable, at once: a request inside a
    /// callback cannot wait for a human, so a hold refuses it too.
    async fn decide_env(&self, name: &str, value: &str) -> bool {
        let context = SshContext {
            env_name: name.to_string(),
            env_value: value.to_string(),
            ..Default::default()
        };
        let decision = self.gw.decide("ssh:env", &context.json());
        let verdict = crate::protocols::gateway::recorded_verdict(&decision.verdict);
        let allowed = verdict == Verdict::Allow;
        let mut event = self.gw.event(EventKind::Command, verdict);
        event.action = Some("ssh:env".into());
        event.text = Some(format!("env {name}={value}"));
        event.policy_id = decision.policy_id.clone();
        event.reason = Some(decision.reason);
        self.gw.record(event).await;
        allowed
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0}")]
    Russh(#[from] russh::Error),
}

impl server::Handler for AgentSide {
    type Error = SshError;

    super::accept_any_login!();

    // The channel object is dropped: its data arrives through the
    // callbacks below, and a full channel buffer would stall the loop.
    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), Slot::default());
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(PtyMode, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(slot) if slot.outbox.is_none() => {
                slot.setup.pty = Some(Pty {
                    term: term.to_string(),
                    cols: col_width,
                    rows: row_height,
                    pix_width,
                    pix_height,
                    modes: modes.to_vec(),
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A variable can change what the remote runs (LD_PRELOAD,
        // BASH_ENV, PATH): each is decided, and recorded; what policy lets
        // through is passed on for the server's AcceptEnv to take or not.
        let allowed = self.decide_env(name, value).await;
        match self.channels.get_mut(&channel) {
            Some(slot) if allowed && slot.outbox.is_none() && slot.setup.env.len() < 64 => {
                slot.setup.env.push((name.to_string(), value.to_string()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let line = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Request::Exec(line), session);
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Request::Shell, session);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Request::Subsystem(name.to_string()), session);
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let resize = Input::Resize {
            cols,
            rows,
            pix_width,
            pix_height,
        };
        if self.send(channel, resize).is_none() {
            if let Some(p) = self
                .channels
                .get_mut(&channel)
                .and_then(|s| s.setup.pty.as_mut())
            {
                (p.cols, p.rows, p.pix_width, p.pix_height) = (cols, rows, pix_width, pix_height);
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Signal(signal));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(outbox) = self.send(channel, Input::Data(Bytes::copy_from_slice(data))) {
            outbox.pace().await;
        }
        Ok(())
    }

    // Called when russh topped up a channel's window: the target for the
    // next top-up (see `flow`).
    fn adjust_window(&mut self, channel: ChannelId, _current: u32) -> u32 {
        let full = self
            .channels
            .get(&channel)
            .and_then(|s| s.outbox.as_ref())
            .is_some_and(Outbox::over_high_water);
        if full {
            flow::TRICKLE_WINDOW
        } else {
            self.window
        }
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Input::Eof);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
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

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("direct-streamlocal", socket_path, 0)
            .await;
        drop(reply);
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("x11", originator_address, originator_port)
            .await;
        drop(reply);
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_forward("x11-req", "", 0).await;
        session.channel_failure(channel)?;
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

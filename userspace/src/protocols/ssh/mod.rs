//! The SSH gateway: a russh server to the agent, presenting a short-lived
//! host certificate from blastgate's SSH CA, and a russh client upstream
//! logging in with the key blastgate holds.
//!
//! - [`handler`]: the agent's side; any authentication, channel setup,
//!   tunnels refused and recorded.
//! - [`channel`]: one exec, shell or sftp channel: policy, hold, relay,
//!   record.
//! - [`flow`]: the agent's input per channel, bounded by the SSH window
//!   without stalling the session (two-way transfers).
//! - [`recording`]: terminal sessions as asciicast data, exec excerpts;
//!   masked.
//! - [`sftp`]: file operations read off an sftp channel for the record.
//! - [`command`]: the command line as policy sees it.
//! - [`resolve`]: which file an exec really runs on the host.
//! - [`hosts`]: what is known of each host across sessions: home, name
//!   resolutions, every path an agent wrote.
//! - [`gate`]: sftp writes decided per path before the server sees them.
//! - [`context`]: the policy context of every `ssh:*` action.
//! - [`upstream`]: blastgate's own login to the real server.
//! - [`refusing`]: the agent's side of a session refused as a whole.

mod channel;
pub mod command;
pub mod context;
mod flow;
mod gate;
mod handler;
pub mod hosts;
mod recording;
mod refusing;
mod resolve;
mod settings;
/// Public for the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub mod sftp;
mod upstream;

use std::{sync::Arc, time::Duration};

use russh::{server, Disconnect};
use tokio::net::TcpStream;

pub use context::SshContext;
pub use hosts::HostMemory;
pub use settings::SshTarget;

use crate::{
    protocols::{gateway::Gateway, phases::Phases},
    session::SessionError,
};

/// The three logins a russh handler may be asked for, each accepted: the
/// kernel already said who is calling, and nothing the agent presents is
/// passed on (blastgate logs in upstream with its own key).
macro_rules! accept_any_login {
    () => {
        async fn auth_none(&mut self, _user: &str) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn auth_password(
            &mut self,
            _user: &str,
            _password: &str,
        ) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn auth_publickey(
            &mut self,
            _user: &str,
            _key: russh::server::VerifiedPublicKey<'_>,
        ) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }
    };
}
use accept_any_login;

/// How long a cut session's russh task gets to say goodbye.
const CUT_GRACE: Duration = Duration::from_secs(3);

/// How long a host certificate is valid: a certificate is minted per
/// connection, so a stolen one is worth little.
const CERT_VALIDITY: Duration = Duration::from_secs(3600);

pub struct Ssh;

/// The server settings the agent is shown (a host certificate minted for
/// this session), ready for its handshake.
pub struct Shown {
    config: Arc<server::Config>,
    cfg: Arc<SshTarget>,
}

impl Phases for Ssh {
    /// russh runs the whole SSH conversation, handshake included, so the
    /// agent's side is its bare connection until the relay starts.
    type Agent = TcpStream;
    /// blastgate logs in upstream with a session's first channel; until
    /// then, what the agent will be shown.
    type Upstream = Shown;

    async fn handshake(&self, conn: TcpStream, _gw: &Gateway) -> Result<TcpStream, SessionError> {
        Ok(conn)
    }

    async fn connect(&self, _agent: &mut TcpStream, gw: &Gateway) -> Result<Shown, SessionError> {
        let cfg = gw
            .target
            .ssh
            .clone()
            .ok_or_else(|| SessionError::blastgate("target has no [targets.ssh] section"))?;
        Ok(Shown {
            config: server_config(gw)?,
            cfg: Arc::new(cfg),
        })
    }

    async fn relay(
        &self,
        agent: TcpStream,
        shown: Shown,
        gw: &Gateway,
    ) -> Result<(), SessionError> {
        let handler = handler::AgentSide::new(gw.clone(), shown.cfg, shown.config.window_size);
        let running = server::run_stream(shown.config, agent, handler)
            .await
            .map_err(|e| SessionError::agent(format!("ssh: {e}")))?;
        // russh runs the session in a task of its own: the session owns it,
        // and when the session is cut, the agent is told and it is awaited.
        let (done, result) = tokio::sync::oneshot::channel();
        let tasks = gw.tasks.clone();
        gw.tasks.spawn(async move {
            let handle = running.handle();
            tokio::pin!(running);
            let ended = tokio::select! {
                r = &mut running => r,
                _ = tasks.cancelled() => {
                    let why = tasks.why().unwrap_or_else(SessionError::shutdown);
                    let told = handle.disconnect(
                        Disconnect::ByApplication,
                        format!("blastgate: {why}"),
                        String::new(),
                    );
                    // An agent that stopped reading could keep russh from
                    // ever finishing the goodbye: bounded, then dropped
                    // (the process ending takes the task with it).
                    let bye = async {
                        let _ = told.await;
                        (&mut running).await
                    };
                    tokio::time::timeout(CUT_GRACE, bye)
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            let _ = done.send(ended);
        });
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::agent(format!("ssh: {e}"))),
            Err(_) => Err(SessionError::blastgate(
                "the SSH session task ended without a result",
            )),
        }
    }

    async fn refuse(&self, agent: TcpStream, why: &SessionError, gw: &Gateway) {
        let Ok(config) = server_config(gw) else {
            return;
        };
        let handler = refusing::Refusing {
            message: format!("blastgate: {why}"),
            exit_status: why.exit_status(),
        };
        if let Ok(running) = server::run_stream(config, agent, handler).await {
            let handle = running.handle();
            let cut = tokio::time::timeout(gw.services.connect_timeout, running).await;
            if cut.is_err() {
                let _ = handle
                    .disconnect(
                        Disconnect::ByApplication,
                        format!("blastgate: {why}"),
                        String::new(),
                    )
                    .await;
            }
        }
    }
}

/// The server side shown to the agent, with a host certificate minted for
/// this session.
fn server_config(gw: &Gateway) -> Result<Arc<server::Config>, SessionError> {
    let ca = gw
        .services
        .ssh_ca
        .clone()
        .ok_or_else(|| SessionError::blastgate("no SSH CA"))?;
    let identity = ca
        .host_identity(&gw.target.name, &gw.target.names, CERT_VALIDITY)
        .map_err(|e| SessionError::blastgate(e.to_string()))?;
    let mut config = server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-SSH".into()),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        auth_rejection_time: Duration::from_millis(0),
        keepalive_interval: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    identity
        .install(&mut config)
        .map_err(|e| SessionError::blastgate(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The session's one upstream connection, opened with its first channel
/// and shared by the rest (ControlMaster multiplexes many).
type Upstream = Arc<tokio::sync::Mutex<Option<russh::client::Handle<upstream::ServerCheck>>>>;

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
mod git;
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

/// How long a session cut from outside (shutdown, a policy reload, a
/// refusal's bound) waits for russh to tell the agent and end on its own
/// before its socket is closed under it.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The agent's socket, closable from outside the russh task that owns it.
/// Dropping a russh `RunningSession` does not stop its task; a session
/// told to disconnect does not while a key exchange runs, and afterwards
/// waits for the agent to close its side (up to the inactivity timeout).
/// Shutting the socket down ends the task whatever the agent does:
/// its reads see the end, its writes fail. Done when dropped, so a
/// session's end, or its future dropped half-way, always closes it.
struct Cut(Option<std::net::TcpStream>);

impl Cut {
    fn of(conn: &TcpStream) -> Cut {
        use std::os::fd::AsFd;
        let dup = conn.as_fd().try_clone_to_owned();
        if let Err(e) = &dup {
            tracing::warn!(error = %e, "cannot keep a handle on the agent's socket");
        }
        Cut(dup.ok().map(std::net::TcpStream::from))
    }

    fn now(&self) {
        if let Some(s) = &self.0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.now();
    }
}

/// Ends a russh session from outside: tells the agent why when russh
/// takes the disconnect in time, then closes the socket under it.
async fn end_session<H: server::Handler>(
    running: std::pin::Pin<&mut server::RunningSession<H>>,
    handle: server::Handle,
    cut: &Cut,
    why: String,
) -> Result<(), H::Error> {
    let mut running = running;
    let told = handle.disconnect(Disconnect::ByApplication, why, String::new());
    let _ = tokio::time::timeout(CUT_GRACE, told).await;
    if let Ok(ended) = tokio::time::timeout(CUT_GRACE, running.as_mut()).await {
        return ended;
    }
    cut.now();
    running.await
}

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
        // Every packet is relayed as soon as it is decrypted: Nagle would
        // hold back keystrokes' echoes and sftp's many small replies.
        let _ = conn.set_nodelay(true);
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
        let cut = Cut::of(&agent);
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
                    let why = tasks.why();
                    end_session(running, handle, &cut, format!("blastgate: {why}")).await
                }
            };
            drop(cut);
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
        // The refusal's bound (`phases::refuse`) drops this future: the
        // cut then closes the agent's socket, and the russh task ends.
        let cut = Cut::of(&agent);
        if let Ok(running) = server::run_stream(config, agent, handler).await {
            let handle = running.handle();
            tokio::pin!(running);
            let limit = gw.services.connect_timeout;
            if tokio::time::timeout(limit, running.as_mut()).await.is_err() {
                let _ = end_session(running, handle, &cut, format!("blastgate: {why}")).await;
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
        .host_identity(&gw.target.name, &gw.presented_names(), CERT_VALIDITY)
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

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

mod channel;
pub mod command;
pub mod context;
mod flow;
mod gate;
mod handler;
pub mod hosts;
mod recording;
mod resolve;
mod settings;
/// Public for the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub mod sftp;
mod upstream;

use std::{sync::Arc, time::Duration};

use russh::server;
use tokio::net::TcpStream;

pub use context::SshContext;
pub use hosts::HostMemory;
pub use settings::SshTarget;

use crate::{protocols::gateway::Gateway, proxy::session::SessionError};

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
    let handler = handler::AgentSide::new(gw, Arc::new(cfg), config.window_size);
    let running = server::run_stream(Arc::new(config), conn, handler)
        .await
        .map_err(|e| SessionError::Relay(format!("ssh: {e:?}")))?;
    running
        .await
        .map_err(|e| SessionError::Relay(format!("ssh: {e:?}")))
}

/// The session's one upstream connection, opened with its first channel
/// and shared by the rest (ControlMaster multiplexes many).
type Upstream = Arc<tokio::sync::Mutex<Option<russh::client::Handle<upstream::ServerCheck>>>>;

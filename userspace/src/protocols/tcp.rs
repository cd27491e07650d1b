//! TCP passthrough: connect upstream, relay bytes, count them.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use super::relay::{relay, Counters};
use crate::proxy::session::SessionError;

pub async fn serve(
    agent: TcpStream,
    upstream: SocketAddr,
    connect_timeout: Duration,
    counters: &Counters,
) -> Result<(), SessionError> {
    let up = tokio::time::timeout(connect_timeout, TcpStream::connect(upstream))
        .await
        .map_err(|_| SessionError::Upstream(format!("connecting to {upstream}: timed out")))?
        .map_err(|e| SessionError::Upstream(format!("connecting to {upstream}: {e}")))?;
    let _ = up.set_nodelay(true);
    let _ = agent.set_nodelay(true);
    relay(&agent, &up, counters)
        .await
        .map_err(|e| SessionError::Relay(e.to_string()))
}

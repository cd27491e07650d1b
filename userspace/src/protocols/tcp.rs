//! TCP passthrough: connect upstream, relay bytes, count them. There is
//! nothing to say to a refused agent in a protocol blastgate cannot read:
//! its connection is closed.

use tokio::net::TcpStream;

use super::{gateway::Gateway, phases::Phases, relay::relay};
use crate::session::SessionError;

pub struct Tcp;

impl Phases for Tcp {
    type Agent = TcpStream;
    type Upstream = TcpStream;

    async fn handshake(&self, conn: TcpStream, _gw: &Gateway) -> Result<TcpStream, SessionError> {
        let _ = conn.set_nodelay(true);
        Ok(conn)
    }

    async fn connect(
        &self,
        _agent: &mut TcpStream,
        gw: &Gateway,
    ) -> Result<TcpStream, SessionError> {
        let to = gw.upstream;
        let up = tokio::time::timeout(gw.services.connect_timeout, TcpStream::connect(to))
            .await
            .map_err(|_| SessionError::upstream(format!("connecting to {to}: timed out")))?
            .map_err(|e| SessionError::upstream(format!("connecting to {to}: {e}")))?;
        let _ = up.set_nodelay(true);
        Ok(up)
    }

    async fn relay(
        &self,
        agent: TcpStream,
        upstream: TcpStream,
        gw: &Gateway,
    ) -> Result<(), SessionError> {
        // Nothing to decide in a stream blastgate cannot read: a cut ends
        // it at once, without the wind-down others get.
        tokio::select! {
            r = relay(&agent, &upstream, &gw.counters) => r,
            _ = gw.tasks.cancelled() => Err(gw.tasks.why()),
        }
    }

    async fn refuse(&self, agent: TcpStream, _why: &SessionError, _gw: &Gateway) {
        drop(agent);
    }
}

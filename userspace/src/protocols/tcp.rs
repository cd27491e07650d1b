//! TCP passthrough: connect upstream, relay bytes, count them. There is
//! nothing to say to a refused agent in a protocol blastgate cannot read:
//! its connection is closed.
//!
//! Policy needs no bytes here, so once the connect is allowed the agent's
//! socket is paired with the upstream socket in the kernel
//! ([`crate::intercept::fast`]) and the agent's bytes go straight to the
//! upstream socket; the relay keeps carrying everything that still reaches
//! the proxy (bytes sent before the switch, the other direction, the
//! half-close), so a kernel that refuses the pairing changes nothing but
//! speed.

use std::sync::{atomic::Ordering, Arc};

use tokio::net::TcpStream;

use super::{gateway::Gateway, phases::Phases, relay::relay_synced};
use crate::{
    intercept::{
        fast::Pairing,
        maps::{sock_key, KernelMaps},
    },
    session::SessionError,
};

pub struct Tcp {
    /// Where the fast path lives; `None` relays in userspace only.
    pub maps: Option<Arc<KernelMaps>>,
}

impl Tcp {
    /// Pairs the sockets in the kernel, or says why not (and relays).
    fn pair<'a>(
        &'a self,
        agent: &TcpStream,
        upstream: &TcpStream,
        gw: &Gateway,
    ) -> Option<Pairing<'a>> {
        let fast = self.maps.as_ref()?.fast()?;
        let peer = agent
            .peer_addr()
            .map_err(|e| tracing::debug!(error = %e, "no peer address; relaying in userspace"))
            .ok()?;
        let forwarded = gw.counters.from_agent.load(Ordering::Relaxed);
        match fast.pair(sock_key(peer), upstream, forwarded) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "TCP fast path refused; relaying in userspace");
                None
            }
        }
    }
}

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
        let pairing = self.pair(&agent, &upstream, gw);
        let sync = || {
            if let Some(p) = &pairing {
                let forwarded = gw.counters.from_agent.load(Ordering::Relaxed);
                if let Err(e) = p.publish(forwarded) {
                    // The kernel keeps the last count: the switch waits.
                    tracing::debug!(error = %e, "publishing the forwarded count");
                }
            }
        };
        // Nothing to decide in a stream blastgate cannot read: a cut ends
        // it at once, without the wind-down others get.
        let result = tokio::select! {
            r = relay_synced(&agent, &upstream, &gw.counters, Some(&sync)) => r,
            _ = gw.tasks.cancelled() => Err(gw.tasks.why()),
        };
        if let Some(p) = pairing {
            let agent_key = p.agent();
            let forwarded_at_pairing = p.published_first();
            let written = p.written_since(&upstream, result.is_ok());
            // Unpaired before the sockets close, so the redirect stops now.
            drop(p);
            let counts = self
                .maps
                .as_ref()
                .and_then(|m| m.fast())
                .and_then(|f| f.forget(agent_key));
            // What reached the upstream socket since the pairing, less
            // what the daemon wrote there itself, is what the kernel
            // redirected.
            let forwarded = gw.counters.from_agent.load(Ordering::Relaxed);
            let redirected = written
                .map(|w| w.saturating_sub(forwarded.saturating_sub(forwarded_at_pairing)))
                .unwrap_or(0);
            gw.counters.add_from_agent(redirected);
            tracing::debug!(
                redirected,
                direct = counts.is_some_and(|c| c.direct != 0),
                "TCP fast path unpaired"
            );
        }
        result
    }

    async fn refuse(&self, agent: TcpStream, _why: &SessionError, _gw: &Gateway) {
        drop(agent);
    }
}

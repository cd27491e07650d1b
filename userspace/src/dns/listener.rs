//! The resolver's UDP listeners (127.0.0.1 and ::1, one port) and its
//! DNS-over-TCP sessions (agents' TCP to port 53 reaches the proxy).

use std::{net::SocketAddr, sync::Arc};

use tokio::{io::AsyncWriteExt, net::UdpSocket, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::{peer::SockDiag, upstream, Resolver, Transport};
use crate::{
    identity::{Caller, ProcessCache},
    intercept::{agents::AgentRegistry, maps::KernelMaps},
};

/// Queries answered at once; past it the listener waits (the kernel's
/// socket buffer holds the rest, then drops: DNS clients retry).
const IN_FLIGHT: usize = 1024;

/// Who asked, from the kernel's records.
pub struct Callers {
    pub maps: Arc<KernelMaps>,
    pub agents: Arc<AgentRegistry>,
    pub processes: ProcessCache,
    /// Registered CI jobs: each query is recorded with its job.
    pub jobs: Arc<crate::jobs::Jobs>,
    diag: SockDiag,
}

impl Callers {
    pub fn new(
        maps: Arc<KernelMaps>,
        agents: Arc<AgentRegistry>,
        processes: ProcessCache,
        jobs: Arc<crate::jobs::Jobs>,
    ) -> std::io::Result<Callers> {
        Ok(Callers {
            maps,
            agents,
            processes,
            jobs,
            diag: SockDiag::open()?,
        })
    }

    /// The agent whose socket at `from` sent a datagram to `listener`.
    fn of_datagram(&self, from: SocketAddr, listener: SocketAddr) -> Option<Caller> {
        let cookie = match self.diag.udp_cookie(from, listener) {
            Ok(c) => c?,
            Err(e) => {
                tracing::warn!(error = %e, %from, "sock_diag lookup failed; query refused");
                return None;
            }
        };
        let rec = self.maps.dns_caller(cookie)?;
        Some(self.caller(&rec))
    }

    pub fn caller(&self, rec: &blastgate_common::ConnRecord) -> Caller {
        let mut c = Caller::from_kernel(
            rec,
            self.agents.name_of(rec.agent_id),
            &self.processes,
            |pid| self.maps.label_of(pid).is_some(),
        );
        if rec.binding & crate::jobs::JOB_BIT != 0 {
            c.job = self.jobs.get(rec.binding).map(|e| e.job);
        }
        c
    }
}

/// Binds both listeners; fails if either cannot be bound (the kernel would
/// send agents' DNS to a port nobody serves, or someone else's).
pub async fn bind(port: u16) -> std::io::Result<Vec<UdpSocket>> {
    let mut out = Vec::new();
    for ip in [
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, port);
        out.push(UdpSocket::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding the DNS listener {addr}: {e}"))
        })?);
    }
    Ok(out)
}

/// Serves one listener until `stop`.
pub async fn serve_udp(
    sock: UdpSocket,
    resolver: Arc<Resolver>,
    callers: Arc<Callers>,
    stop: CancellationToken,
) {
    let sock = Arc::new(sock);
    let Ok(local) = sock.local_addr() else {
        return;
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; upstream::MAX_MESSAGE];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS listener receive");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let query = buf[..n].to_vec();
        let (sock, resolver, callers) = (sock.clone(), resolver.clone(), callers.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(caller) = callers.of_datagram(from, local) else {
                // Not an agent's redirected query (something sent to the
                // port directly, or its socket is gone): not served.
                tracing::debug!(%from, "DNS query with no kernel record; not answered");
                return;
            };
            if let Some(answer) = resolver.answer(&query, &caller, Transport::Udp).await {
                let _ = sock.send_to(&answer, from).await;
            }
        });
    }
}

/// An agent's DNS over TCP (its connect to port 53, redirected to the
/// proxy): length-prefixed queries answered in order until it closes.
pub async fn serve_tcp(
    mut conn: tokio::net::TcpStream,
    caller: Caller,
    resolver: Arc<Resolver>,
    stop: CancellationToken,
) {
    loop {
        let query = tokio::select! {
            q = tokio::time::timeout(IDLE, upstream::read_framed(&mut conn)) => q,
            _ = stop.cancelled() => return,
        };
        let Ok(Ok(Some(query))) = query else {
            return;
        };
        let Some(answer) = resolver.answer(&query, &caller, Transport::Tcp).await else {
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&answer);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A DNS-over-TCP connection idle this long is closed (RFC 7766 asks
/// servers to close idle ones; clients reconnect).
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

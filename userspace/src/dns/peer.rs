//! Which agent sent a datagram: the kernel's record of the sending socket.
//!
//! A datagram carries only its source address. The kernel's sock_diag
//! interface names the socket bound there (its cookie), and the redirect
//! saved the agent that sent DNS on that socket under the same cookie
//! ([`crate::intercept::maps::KernelMaps::dns_caller`]). A socket that is
//! gone, or was never redirected, has no record: its query is refused.

use std::{net::SocketAddr, os::fd::AsRawFd, sync::Mutex};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// Opaque cookie meaning "do not check the cookie" to sock_diag.
const NO_COOKIE: [u8; 8] = [0xff; 8];

pub struct SockDiag {
    socket: Mutex<Socket>,
}

impl SockDiag {
    pub fn open() -> std::io::Result<SockDiag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // An answer the kernel never sends must not stall the resolver.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: a valid fd and a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SockDiag {
            socket: Mutex::new(socket),
        })
    }

    /// The cookie of the UDP socket bound at `agent` that sent to
    /// `resolver` (the listener the datagram arrived on).
    pub fn udp_cookie(
        &self,
        agent: SocketAddr,
        resolver: SocketAddr,
    ) -> std::io::Result<Option<u64>> {
        let family = if agent.is_ipv4() { AF_INET } else { AF_INET6 };
        // The kernel looks the socket up as it would deliver a datagram
        // from `source` to `destination`: the agent's socket is the
        // destination.
        let socket_id = SocketId {
            source_port: resolver.port(),
            destination_port: agent.port(),
            source_address: resolver.ip(),
            destination_address: agent.ip(),
            interface_id: 0,
            cookie: NO_COOKIE,
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_UDP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket.send(&buf, 0)?;
        let mut answer = vec![0u8; 8192];
        let n = socket.recv(&mut &mut answer[..], 0)?;
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[..n])
            .map_err(std::io::Error::other)?;
        Ok(match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                Some(u64::from_ne_bytes(r.header.socket_id.cookie))
            }
            // ENOENT: no such socket (closed since).
            _ => None,
        })
    }
}

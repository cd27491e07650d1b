//! Socket kinds an agent may not have: raw, ICMP, SCTP, MPTCP, packet.

use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::{cgroup_sock, tracepoint},
    programs::{SockContext, TracePointContext},
};
use aya_log_ebpf::warn;
use blastgate_common::{counter, AF_PACKET, SOCK_DGRAM, SOCK_STREAM, SYS_ENTER_ARG0_OFFSET};

use crate::agent::{count, current_agent};

const IPPROTO_IP: u32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const SIGKILL: u32 = 9;

/// Agents get plain TCP and UDP sockets and nothing else from inet_create:
/// the redirect only understands those, and everything else (raw, ICMP echo,
/// SCTP, MPTCP, UDP-Lite) would be a way around it.
#[cgroup_sock(sock_create)]
pub fn blastgate_sock_create(ctx: SockContext) -> i32 {
    if current_agent().is_none() {
        return 1;
    }
    let (ty, proto) = unsafe { ((*ctx.sock).type_, (*ctx.sock).protocol) };
    let ok = match ty {
        SOCK_STREAM => proto == IPPROTO_IP || proto == IPPROTO_TCP,
        SOCK_DGRAM => proto == IPPROTO_IP || proto == IPPROTO_UDP,
        _ => false,
    };
    if ok {
        1
    } else {
        count(counter::SOCK_DENIED);
        0
    }
}

/// Packet sockets are created outside inet_create, so no cgroup hook sees
/// them, and neither a tracepoint nor a kprobe can refuse a syscall. An
/// agent that gets this far has CAP_NET_RAW and is trying to get around the
/// redirect: it is killed before the socket() call returns to it. The BPF
/// LSM `socket_create` hook would refuse it cleanly but is unavailable on
/// many kernels (including this project's CI).
#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn blastgate_packet_create(ctx: TracePointContext) -> u32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let family: u64 = match unsafe { ctx.read_at(SYS_ENTER_ARG0_OFFSET) } {
        Ok(f) => f,
        Err(_) => return 0,
    };
    if family as u32 == AF_PACKET {
        unsafe { bpf_send_signal(SIGKILL) };
        count(counter::PACKET_KILLED);
        warn!(&ctx, "agent {} opened a packet socket: killed", agent);
    }
    0
}

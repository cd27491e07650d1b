//! Agents' DNS goes to blastgate's resolver, whatever address they ask.
//!
//! A datagram an agent sends to port 53 (connected or not, IPv4, IPv6 or
//! v4-mapped) is pointed at the daemon's resolver on loopback, and the
//! caller is saved by socket cookie ([`BG_DNS_CALLERS`]): the daemon finds
//! the cookie of the socket a query came from and, through it, which agent
//! asked. Replies get the address the agent asked as their source again
//! (`recvmsg4/6`), because resolvers check that a reply comes from the
//! server they queried. Every other UDP datagram of an agent is refused.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use blastgate_common::{counter, setting, ConnRecord, SockKey, LOOPBACK4_BE, MAX_DNS_CALLERS};

use crate::{
    agent::{count, setting},
    connect::{
        caller_record, port_host, port_net, ALLOW, LOOPBACK6_LAST_WORD, REFUSE, V4_MAPPED_WORD,
    },
};

/// Socket cookie -> the agent that sent DNS on it and the resolver it asked.
#[map]
pub static BG_DNS_CALLERS: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(MAX_DNS_CALLERS, 0);

/// An agent's datagram to `orig`: DNS is pointed at the resolver
/// (`rewrite(port)` aims the address at that loopback port), anything
/// else refused.
#[inline(always)]
pub fn redirect(
    sa: *mut bpf_sock_addr,
    agent: u32,
    orig: SockKey,
    family: u32,
    rewrite: impl FnOnce(u32),
) -> i32 {
    let resolver = setting(setting::DNS_PORT);
    if orig.port != blastgate_common::DNS_PORT || resolver == 0 || setting(setting::READY) == 0 {
        count(counter::UDP_DENIED);
        return REFUSE;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // Without a record the resolver could not say who asked: refused.
    if BG_DNS_CALLERS
        .insert(cookie, caller_record(agent, orig, family), 0)
        .is_err()
    {
        return REFUSE;
    }
    rewrite(resolver);
    ALLOW
}

/// The resolver address a socket's agent asked, if it sent DNS.
#[inline(always)]
pub fn asked(cookie: u64) -> Option<SockKey> {
    BG_DNS_CALLERS.get_ptr(cookie).map(|r| unsafe { (*r).orig })
}

/// The four address words of a key, in `bpf_sock_addr`'s layout.
#[inline(always)]
fn words(k: &SockKey) -> [u32; 4] {
    let a = k.addr;
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// A reply from the resolver on a socket that sent an agent's DNS: its
/// source becomes the address the agent asked. Cannot refuse.
#[cgroup_sock_addr(recvmsg4)]
pub fn blastgate_recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let resolver = setting(setting::DNS_PORT);
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    if resolver == 0 || ip != LOOPBACK4_BE || port_host(port) != resolver {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if let Some(orig) = asked(cookie) {
        let w = words(&orig);
        unsafe {
            (*sa).user_ip4 = w[3];
            (*sa).user_port = port_net(orig.port);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn blastgate_recvmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let resolver = setting(setting::DNS_PORT);
    let (w, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    let from_loopback = w[0] == 0
        && w[1] == 0
        && ((w[2] == 0 && w[3] == LOOPBACK6_LAST_WORD)
            || (w[2] == V4_MAPPED_WORD && w[3] == LOOPBACK4_BE));
    if resolver == 0 || !from_loopback || port_host(port) != resolver {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if let Some(orig) = asked(cookie) {
        let o = words(&orig);
        unsafe {
            (*sa).user_ip6[0] = o[0];
            (*sa).user_ip6[1] = o[1];
            (*sa).user_ip6[2] = o[2];
            (*sa).user_ip6[3] = o[3];
            (*sa).user_port = port_net(orig.port);
        }
    }
    ALLOW
}

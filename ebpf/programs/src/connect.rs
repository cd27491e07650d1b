//! The redirect: agents' TCP connects go to the proxy, their UDP only to
//! blastgate's resolver ([`crate::dns`]).

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        bpf_sock_addr, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_get_socket_cookie,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::LruHashMap,
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::debug;
use blastgate_common::{
    counter, setting, ConnRecord, SockKey, AF_INET, AF_INET6, COMM_LEN, LOOPBACK4_BE, MAX_INFLIGHT,
    SOCK_DGRAM, SOCK_STREAM,
};

use crate::agent::{count, current_agent, setting, REFUSED};

/// Socket cookie -> record, from `connect()` until `sockops` sees the local port.
#[map]
pub static BG_BY_COOKIE: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(MAX_INFLIGHT, 0);

/// Socket cookie -> original destination, for as long as the socket lives,
/// so getpeername() on a redirected socket answers what the agent dialled.
#[map]
pub static BG_ORIG: LruHashMap<u64, SockKey> = LruHashMap::pinned(MAX_INFLIGHT, 0);

/// Client local (address, port) -> record, consumed by the proxy at accept.
#[map]
pub static BG_BY_PEER: LruHashMap<SockKey, ConnRecord> = LruHashMap::pinned(MAX_INFLIGHT, 0);

pub(crate) const ALLOW: i32 = 1;
pub(crate) const REFUSE: i32 = 0;

/// `::ffff:0:0/96` as the kernel stores the third 32-bit word.
pub(crate) const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
pub(crate) const LOOPBACK6_LAST_WORD: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

#[cgroup_sock_addr(connect4)]
pub fn blastgate_connect4(ctx: SockAddrContext) -> i32 {
    let Some(agent) = current_agent() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let orig = SockKey::v4_mapped(ip.to_ne_bytes(), port_host(port));
    on_connect(
        &ctx,
        agent,
        orig,
        AF_INET,
        |proxy_port| ip == LOOPBACK4_BE && orig.port == proxy_port,
        |proxy_port| unsafe {
            (*sa).user_ip4 = LOOPBACK4_BE;
            (*sa).user_port = port_net(proxy_port);
        },
    )
}

#[cgroup_sock_addr(connect6)]
pub fn blastgate_connect6(ctx: SockAddrContext) -> i32 {
    let Some(agent) = current_agent() else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let (w, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    let orig = key6(w, port_host(port));
    let mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD;
    on_connect(
        &ctx,
        agent,
        orig,
        AF_INET6,
        |proxy_port| {
            orig.port == proxy_port
                && w[0] == 0
                && w[1] == 0
                && ((w[2] == 0 && w[3] == LOOPBACK6_LAST_WORD)
                    || (w[2] == V4_MAPPED_WORD && w[3] == LOOPBACK4_BE))
        },
        |port| unsafe { point_at_loopback6(sa, mapped, port) },
    )
}

/// What connect4 and connect6 share: UDP may only send DNS, which goes to
/// blastgate's resolver; TCP has its caller saved and its destination
/// rewritten to the proxy. `rewrite(port)` points the socket at that port
/// on loopback.
#[inline(always)]
fn on_connect(
    ctx: &SockAddrContext,
    agent: u32,
    orig: SockKey,
    family: u32,
    at_proxy: impl Fn(u32) -> bool,
    rewrite: impl FnOnce(u32),
) -> i32 {
    let sa = ctx.sock_addr;
    if agent == REFUSED {
        // Held: its label could not be stored, or the daemon has not yet
        // decided what it is. Nothing could name it at the proxy either.
        return REFUSE;
    }
    match unsafe { (*sa).type_ } {
        SOCK_DGRAM => crate::dns::redirect(sa, agent, orig, family, rewrite),
        SOCK_STREAM => {
            if setting(setting::READY) == 0 {
                return REFUSE;
            }
            let proxy_port = setting(setting::PROXY_PORT);
            if crate::local::own_listener(agent, &orig) {
                // Its own process tree's loopback server: untouched.
                return ALLOW;
            }
            if at_proxy(proxy_port) {
                // Already pointed at the proxy (by an earlier copy of this
                // program during an upgrade, or by the agent itself, which
                // then has no record and is refused by the proxy).
                return ALLOW;
            }
            if save_record(sa, agent, orig, family).is_err() {
                return REFUSE;
            }
            rewrite(proxy_port);
            count(counter::REDIRECTED);
            debug!(
                ctx,
                "redirect agent {} (family {}) to proxy port {}", agent, family, proxy_port
            );
            ALLOW
        }
        _ => REFUSE,
    }
}

/// Unconnected UDP: as connect's, per datagram.
#[cgroup_sock_addr(sendmsg4)]
pub fn blastgate_sendmsg4(ctx: SockAddrContext) -> i32 {
    let agent = match current_agent() {
        None => return ALLOW,
        Some(REFUSED) => return REFUSE,
        Some(a) => a,
    };
    let sa = ctx.sock_addr;
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    let orig = SockKey::v4_mapped(ip.to_ne_bytes(), port_host(port));
    crate::dns::redirect(sa, agent, orig, AF_INET, |dns_port| unsafe {
        (*sa).user_ip4 = LOOPBACK4_BE;
        (*sa).user_port = port_net(dns_port);
    })
}

#[cgroup_sock_addr(sendmsg6)]
pub fn blastgate_sendmsg6(ctx: SockAddrContext) -> i32 {
    let agent = match current_agent() {
        None => return ALLOW,
        Some(REFUSED) => return REFUSE,
        Some(a) => a,
    };
    let sa = ctx.sock_addr;
    let (w, port) = unsafe { ((*sa).user_ip6, (*sa).user_port) };
    let mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD;
    crate::dns::redirect(
        sa,
        agent,
        key6(w, port_host(port)),
        AF_INET6,
        |dns_port| unsafe { point_at_loopback6(sa, mapped, dns_port) },
    )
}

/// Points an AF_INET6 address at loopback: `::ffff:127.0.0.1` for a
/// v4-mapped destination (the socket may be dual-stack only), `::1` for
/// native IPv6.
#[inline(always)]
pub(crate) unsafe fn point_at_loopback6(sa: *mut bpf_sock_addr, mapped: bool, port: u32) {
    unsafe {
        (*sa).user_ip6[0] = 0;
        (*sa).user_ip6[1] = 0;
        (*sa).user_ip6[2] = if mapped { V4_MAPPED_WORD } else { 0 };
        (*sa).user_ip6[3] = if mapped {
            LOOPBACK4_BE
        } else {
            LOOPBACK6_LAST_WORD
        };
        (*sa).user_port = port_net(port);
    }
}

/// Agents may not bind the proxy port or the resolver's (any address, TCP
/// or UDP): while the daemon is down, an agent listening there would
/// receive every other agent's redirected connections or DNS queries.
#[cgroup_sock_addr(bind4)]
pub fn blastgate_bind4(ctx: SockAddrContext) -> i32 {
    bind_verdict(unsafe { (*ctx.sock_addr).user_port })
}

#[cgroup_sock_addr(bind6)]
pub fn blastgate_bind6(ctx: SockAddrContext) -> i32 {
    bind_verdict(unsafe { (*ctx.sock_addr).user_port })
}

#[inline(always)]
fn bind_verdict(user_port: u32) -> i32 {
    let port = port_host(user_port);
    let ours = port == setting(setting::PROXY_PORT) || port == setting(setting::DNS_PORT);
    if !ours || current_agent().is_none() {
        return ALLOW;
    }
    count(counter::BIND_DENIED);
    REFUSE
}

/// getpeername() on an agent's redirected socket reports the destination
/// it dialled, not the proxy: clients that print or check their peer
/// (curl, ssh) see what they expect. Cannot refuse; only rewrites.
#[cgroup_sock_addr(getpeername4)]
pub fn blastgate_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some((words, port)) = dialled(sa) {
        unsafe {
            (*sa).user_ip4 = words[3];
            (*sa).user_port = port;
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn blastgate_getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some((words, port)) = dialled(sa) {
        unsafe {
            (*sa).user_ip6[0] = words[0];
            (*sa).user_ip6[1] = words[1];
            (*sa).user_ip6[2] = words[2];
            (*sa).user_ip6[3] = words[3];
            (*sa).user_port = port;
        }
    }
    ALLOW
}

/// What a redirected socket's agent dialled, as the four address words
/// (the last one is the IPv4 address of a v4-mapped key) and the port, in
/// the layout `bpf_sock_addr` uses.
#[inline(always)]
fn dialled(sa: *mut bpf_sock_addr) -> Option<([u32; 4], u32)> {
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let orig = match BG_ORIG.get_ptr(cookie) {
        Some(o) => unsafe { *o },
        None => crate::dns::asked(cookie)?,
    };
    let a = orig.addr;
    let word = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    Some(([word(0), word(4), word(8), word(12)], port_net(orig.port)))
}

/// Moves the record from the socket cookie to the client's local address,
/// which the kernel has chosen by the time the SYN is about to leave; once
/// a redirected socket is established, offers it to the passthrough fast
/// path ([`crate::fast`]).
#[sock_ops]
pub fn blastgate_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        if let Some(key) = local_key(&ctx) {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            crate::local::listening(&key, cookie);
        }
        return 1;
    }
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // Only sockets the connect hooks redirected for an agent.
        if setting(setting::FAST_PATH) != 0 && BG_ORIG.get_ptr(cookie).is_some() {
            if let Some(key) = local_key(&ctx) {
                crate::fast::enrol_agent_socket(&ctx, key);
            }
        }
        return 1;
    }
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(rec) = BG_BY_COOKIE.get_ptr(cookie) else {
        return 1;
    };
    let rec = unsafe { *rec };
    let Some(key) = local_key(&ctx) else {
        return 1;
    };
    let _ = BG_BY_PEER.insert(key, rec, 0);
    let _ = BG_BY_COOKIE.remove(cookie);
    1
}

/// The socket's local (address, port), the key both maps use.
#[inline(always)]
fn local_key(ctx: &SockOpsContext) -> Option<SockKey> {
    // Every context field is read up front with volatile loads: LLVM would
    // otherwise fold the field offset into the ctx pointer, and the
    // verifier rejects dereferencing a modified ctx pointer.
    let ops = ctx.ops;
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            // Host order in sockops (unlike local_ip4).
            read_volatile(&(*ops).local_port),
        )
    };
    match family {
        AF_INET => Some(SockKey::v4_mapped(ip4.to_ne_bytes(), port)),
        AF_INET6 => Some(key6(ip6, port)),
        _ => None,
    }
}

#[inline(always)]
fn save_record(
    sa: *mut bpf_sock_addr,
    agent_id: u32,
    orig: SockKey,
    family: u32,
) -> Result<(), i32> {
    let rec = caller_record(agent_id, orig, family);
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    BG_BY_COOKIE.insert(cookie, rec, 0)?;
    // Transparency only: without it getpeername() shows the proxy.
    let _ = BG_ORIG.insert(cookie, orig, 0);
    Ok(())
}

/// Who is calling, from the current task.
#[inline(always)]
pub(crate) fn caller_record(agent_id: u32, orig: SockKey, family: u32) -> ConnRecord {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    let tgid = (pid_tgid >> 32) as u32;
    // Every caller here was labelled by current_agent() just before.
    let binding = match crate::agent::BG_LABELS.get_ptr(tgid) {
        Some(l) => unsafe { (*l).binding },
        None => 0,
    };
    ConnRecord {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        orig,
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        agent_id,
        family,
        comm,
        binding,
    }
}

#[inline(always)]
pub(crate) fn key6(w: [u32; 4], port: u32) -> SockKey {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    SockKey { addr, port }
}

/// `user_port` holds the port in network order in its low 16 bits.
#[inline(always)]
pub(crate) fn port_host(user_port: u32) -> u32 {
    u16::from_be(user_port as u16) as u32
}

#[inline(always)]
pub(crate) fn port_net(port: u32) -> u32 {
    (port as u16).to_be() as u32
}

//! Agents' own loopback servers: a test suite's server, a dev server, a
//! language server. A connection from an agent to a loopback listener its
//! own process tree opened passes untouched, decided here, without the
//! proxy; every other loopback destination (a database, a container
//! runtime's API, the host's daemons) goes to the proxy like any other.
//!
//! `post_bind` notes an agent's TCP socket bound on a loopback or wildcard
//! address, `sockops` marks it once *that socket* listens, `sock_release`
//! forgets it. A socket that only binds (say with SO_REUSEADDR, to share a
//! port a service will listen on later) is never marked, so it cannot
//! vouch for someone else's listener.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, map},
    maps::HashMap,
    programs::SockContext,
};
use blastgate_common::{counter, LocalListener, SockKey, MAX_LOCAL, SOCK_STREAM};

use crate::{
    agent::{count, current_agent, current_tgid, BG_LABELS, REFUSED},
    connect::key6,
};

#[map]
pub static BG_LOCAL: HashMap<SockKey, LocalListener> = HashMap::pinned(MAX_LOCAL, 0);

/// Socket cookie -> its key in [`BG_LOCAL`]: `sock_release` may not read
/// the socket's address, only its cookie.
#[map]
pub static BG_LOCAL_COOKIES: HashMap<u64, SockKey> = HashMap::pinned(MAX_LOCAL, 0);

const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Whether a key's address is loopback or a wildcard (the addresses a
/// loopback connection can reach a listener on).
#[inline(always)]
fn local_or_wildcard(k: &SockKey) -> bool {
    let a = k.addr;
    let mut v4_mapped = true;
    let mut zero12 = true;
    let mut i = 0;
    while i < 12 {
        if a[i] != V4_MAPPED_PREFIX[i] {
            v4_mapped = false;
        }
        if a[i] != 0 {
            zero12 = false;
        }
        i += 1;
    }
    if v4_mapped {
        // 127.0.0.0/8 or 0.0.0.0
        return a[12] == 127 || (a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 0);
    }
    // ::1 or ::
    zero12 && a[12] == 0 && a[13] == 0 && a[14] == 0 && (a[15] == 1 || a[15] == 0)
}

/// The wildcard key of the same family and port: where a listener bound
/// to "any address" is noted.
#[inline(always)]
pub fn wildcard_of(k: &SockKey) -> SockKey {
    let mut w = SockKey {
        addr: [0; 16],
        port: k.port,
    };
    if k.addr[10] == 0xff && k.addr[11] == 0xff {
        w.addr[10] = 0xff;
        w.addr[11] = 0xff;
    }
    w
}

/// A bound TCP socket's type and port, read as every attach type may.
#[inline(always)]
fn tcp_port(sk: *mut bpf_sock) -> Option<u32> {
    let (ty, port) = unsafe { (read_volatile(&(*sk).type_), read_volatile(&(*sk).src_port)) };
    // src_port is in host order in bpf_sock.
    (ty == SOCK_STREAM && port != 0).then_some(port)
}

/// Notes an agent's socket bound at `key` (built from the address the
/// attach type may read).
#[inline(always)]
fn note_bind(ctx: &SockContext, key: SockKey) -> i32 {
    let agent = match current_agent() {
        None | Some(REFUSED) => return 1,
        Some(a) => a,
    };
    if !local_or_wildcard(&key) {
        return 1;
    }
    let Some(label) = BG_LABELS.get_ptr(current_tgid()) else {
        return 1;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let entry = LocalListener {
        cookie,
        agent_id: agent,
        root_tgid: unsafe { (*label).root_tgid },
        listening: 0,
        _pad: 0,
    };
    // Full: not noted; the agent's own connections to it are then refused.
    if BG_LOCAL_COOKIES.insert(cookie, key, 0).is_ok() && BG_LOCAL.insert(key, entry, 0).is_err() {
        let _ = BG_LOCAL_COOKIES.remove(cookie);
    }
    1
}

#[cgroup_sock(post_bind4)]
pub fn blastgate_post_bind4(ctx: SockContext) -> i32 {
    let Some(port) = tcp_port(ctx.sock) else {
        return 1;
    };
    let ip = unsafe { read_volatile(&(*ctx.sock).src_ip4) };
    note_bind(&ctx, SockKey::v4_mapped(ip.to_ne_bytes(), port))
}

#[cgroup_sock(post_bind6)]
pub fn blastgate_post_bind6(ctx: SockContext) -> i32 {
    let Some(port) = tcp_port(ctx.sock) else {
        return 1;
    };
    let sk = ctx.sock;
    let ip6 = unsafe {
        [
            read_volatile(&(*sk).src_ip6[0]),
            read_volatile(&(*sk).src_ip6[1]),
            read_volatile(&(*sk).src_ip6[2]),
            read_volatile(&(*sk).src_ip6[3]),
        ]
    };
    note_bind(&ctx, key6(ip6, port))
}

/// A noted socket goes away: forgotten, so the port cannot vouch for
/// whoever binds it next.
#[cgroup_sock(sock_release)]
pub fn blastgate_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let Some(key) = BG_LOCAL_COOKIES.get_ptr(cookie) else {
        return 1;
    };
    let key = unsafe { *key };
    let _ = BG_LOCAL_COOKIES.remove(cookie);
    if let Some(e) = BG_LOCAL.get_ptr(key) {
        if unsafe { (*e).cookie } == cookie {
            let _ = BG_LOCAL.remove(key);
        }
    }
    1
}

/// Called from sockops when a socket starts listening: marks its entry if
/// it is the socket that was noted.
#[inline(always)]
pub fn listening(key: &SockKey, cookie: u64) {
    if let Some(e) = BG_LOCAL.get_ptr_mut(key) {
        unsafe {
            if (*e).cookie == cookie {
                (*e).listening = 1;
            }
        }
    }
}

/// Whether an agent's connect to `dst` reaches a listener its own process
/// tree opened: then it is not redirected.
#[inline(always)]
pub fn own_listener(agent: u32, dst: &SockKey) -> bool {
    if !local_or_wildcard(dst) {
        return false;
    }
    let Some(label) = BG_LABELS.get_ptr(current_tgid()) else {
        return false;
    };
    let root = unsafe { (*label).root_tgid };
    let owns = |k: &SockKey| match BG_LOCAL.get_ptr(k) {
        Some(e) => unsafe {
            (*e).listening == 1 && (*e).agent_id == agent && (*e).root_tgid == root
        },
        None => false,
    };
    // The exact address first: if someone else listens there, the kernel
    // delivers to it, not to a wildcard listener of the agent's.
    let passes = if BG_LOCAL.get_ptr(dst).is_some() {
        owns(dst)
    } else {
        owns(&wildcard_of(dst))
    };
    if passes {
        count(counter::LOCAL_PASSED);
    }
    passes
}

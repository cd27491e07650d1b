//! TCP passthrough fast path: an agent's bytes to a paired upstream skip
//! the loopback hop to the proxy and the daemon's copy.
//!
//! sockops puts every redirected agent socket that has sent nothing yet
//! into `BG_FAST_AGENTS` when it is established. Its `sendmsg` then runs
//! [`blastgate_fast_msg`], which passes the bytes on to the proxy over TCP
//! (and counts them) until the daemon has paired the socket with the
//! upstream socket of a passthrough session (`BG_FAST_PAIRS`, written by
//! the daemon only) *and* has forwarded every byte the agent sent so far;
//! from then on it appends them straight to that upstream socket's send
//! queue. Keys are the agent socket's own local address (read from the
//! kernel's context, not chosen by the agent's request) and the upstream
//! socket's cookie (which no one can forge or reuse): an agent cannot put
//! a socket of its own in either map nor steer its bytes anywhere else.
//! When the upstream socket closes (session end, a cut, the daemon dying)
//! the kernel removes it from `BG_FAST_UPS` and the redirect fails: the
//! agent's `sendmsg` is refused, and nothing reaches any other socket.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_ANY},
    helpers::generated::bpf_skc_to_tcp_sock,
    macros::{map, sk_msg},
    maps::{HashMap, LruHashMap, SockHash},
    programs::{SkMsgContext, SockOpsContext},
    Global,
};
use blastgate_common::{FastCounts, FastPair, SockKey, AF_INET, AF_INET6, MAX_FAST};

use crate::connect::key6;

#[map]
pub static BG_FAST_AGENTS: SockHash<SockKey> = SockHash::pinned(MAX_FAST, 0);

#[map]
pub static BG_FAST_UPS: SockHash<u64> = SockHash::pinned(MAX_FAST, 0);

#[map]
pub static BG_FAST_PAIRS: HashMap<SockKey, FastPair> = HashMap::pinned(MAX_FAST, 0);

/// LRU: entries of sockets whose daemon died are never cleaned by it.
#[map]
pub static BG_FAST_COUNTS: LruHashMap<SockKey, FastCounts> = LruHashMap::pinned(MAX_FAST, 0);

/// Called by sockops when an agent's redirected socket is established:
/// `key` is its local address. A socket that already has bytes in flight
/// (TCP Fast Open data in its SYN) stays out: the counts would not cover
/// them. Failure only leaves the socket on the proxy's path.
#[inline(always)]
pub fn enrol_agent_socket(ctx: &SockOpsContext, mut key: SockKey) {
    let ops = ctx.ops;
    let (snd_una, sk) = unsafe {
        (
            read_volatile(&(*ops).snd_una),
            read_volatile(&(*ops).__bindgen_anon_2.sk),
        )
    };
    if sk.is_null() {
        return;
    }
    // Everything the agent wrote so far (`write_seq`) must be acked: bytes
    // queued before establishment (TCP Fast Open, sent with the SYN or held
    // until the handshake ends) never pass the sk_msg program, so its
    // count would miss them.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return;
    }
    let off = BG_OFF_TCP_WRITE_SEQ.load() as usize;
    // SAFETY: a BTF pointer to the tcp_sock; the offset comes from the
    // kernel's BTF and is a constant to the verifier (read-only global).
    let write_seq = unsafe { read_volatile((tp as *const u8).add(off).cast::<u32>()) };
    if write_seq != snd_una {
        return;
    }
    // A pairing left for an earlier socket with this address (its daemon
    // died) must not apply to this one.
    let _ = BG_FAST_PAIRS.remove(key);
    if BG_FAST_COUNTS
        .insert(key, FastCounts::default(), BPF_ANY as u64)
        .is_err()
    {
        return;
    }
    let _ = BG_FAST_AGENTS.update(&mut key, unsafe { &mut *ops }, BPF_ANY as u64);
}

#[sk_msg]
pub fn blastgate_fast_msg(ctx: SkMsgContext) -> u32 {
    try_fast_msg(&ctx)
}

#[inline(always)]
fn try_fast_msg(ctx: &SkMsgContext) -> u32 {
    let Some(key) = msg_key(ctx) else {
        return SK_PASS;
    };
    let Some(counts) = BG_FAST_COUNTS.get_ptr_mut(key) else {
        return SK_PASS;
    };
    let size = unsafe { read_volatile(&(*ctx.msg).size) } as u64;
    // SAFETY: a map value; only this program writes it, under the agent
    // socket's lock (sendmsg calls on one socket are serialised).
    let counts = unsafe { &mut *counts };
    if let Some(pair) = BG_FAST_PAIRS.get_ptr(key) {
        let pair = unsafe { *pair };
        if counts.direct != 0 || pair.forwarded == counts.passed {
            counts.direct = 1;
            let mut upstream = pair.upstream;
            let verdict = BG_FAST_UPS.redirect_msg(ctx, &mut upstream, 0) as u32;
            if verdict == SK_PASS {
                counts.redirected += size;
            }
            // SK_DROP when the upstream socket is gone: the agent's send
            // fails rather than go anywhere else.
            return verdict;
        }
    }
    counts.passed += size;
    SK_PASS
}

/// The sending socket's local address, as sockops keyed it.
#[inline(always)]
fn msg_key(ctx: &SkMsgContext) -> Option<SockKey> {
    let m = ctx.msg;
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(&(*m).family),
            read_volatile(&(*m).local_ip4),
            [
                read_volatile(&(*m).local_ip6[0]),
                read_volatile(&(*m).local_ip6[1]),
                read_volatile(&(*m).local_ip6[2]),
                read_volatile(&(*m).local_ip6[3]),
            ],
            // Host order, as in sockops.
            read_volatile(&(*m).local_port),
        )
    };
    match family {
        AF_INET => Some(SockKey::v4_mapped(ip4.to_ne_bytes(), port)),
        AF_INET6 => Some(key6(ip6, port)),
        _ => None,
    }
}

/// Offset of `tcp_sock.write_seq`, from the kernel's BTF.
#[unsafe(no_mangle)]
static BG_OFF_TCP_WRITE_SEQ: Global<u32> = Global::new(0);

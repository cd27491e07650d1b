//! blastgate's kernel programs.
//!
//! All of them are attached at the cgroup v2 root (or globally, for tracing
//! programs), so every process on the host passes through them. The first
//! thing each one asks is "is the caller an agent?" and everything else is
//! returned untouched: a bug on the non-agent path would cut the whole host
//! off, so that path is kept as short as possible.
//!
//! An agent is a thread group carrying a [`Label`] in `BG_LABELS` (given by
//! `blastgate run`, inherited at fork, or earned from an enrolment rule), or
//! any process whose uid or cgroup is enrolled at the moment of the call.
//! For agents:
//! - TCP `connect()` is rewritten to the proxy listener on loopback and the
//!   caller's identity is saved by socket cookie (`connect4`/`connect6`),
//!   then re-keyed by the client's local address (`sockops`) so the proxy can
//!   find it from the accepted socket's peer address;
//! - UDP may only carry DNS, which goes to blastgate's resolver whatever
//!   address it was sent to, and replies show the address asked
//!   (`connect*`, `sendmsg*`, `recvmsg*`);
//! - a connection to a loopback listener the agent's own process tree
//!   opened passes untouched (`post_bind*`, `sockops`, `sock_release`);
//! - raw, ICMP, SCTP and other odd sockets cannot be created (`sock_create`);
//!   packet sockets and other non-IP families (vsock, XDP, …), which bypass
//!   that hook, kill the caller whatever syscall entry or io_uring request
//!   asks for one (`packet_syscall`, `packet_uring`);
//! - a label that cannot be stored (map full) leaves the process an agent
//!   whose connections are all refused (`BG_HELD`), as is the exec of an
//!   interpreter an `[[enrol.scripts]]` rule names until the daemon has read
//!   which script it runs.
//!
//! Any failure on the agent path refuses the operation: fail closed.
#![no_std]
#![no_main]

mod agent;
mod connect;
mod dns;
mod fast;
mod lineage;
mod local;
mod lsm;
mod sockets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

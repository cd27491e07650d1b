//! Everything that crosses the kernel/userspace boundary, declared once.
//!
//! The kernel programs (`ebpf/programs`) and the daemon (`userspace`) both
//! depend on this crate: map and program names, the `#[repr(C)]` records the
//! maps hold, and the numeric constants both sides must agree on. Fields are
//! sized so that no struct has hidden padding (flags are `u32`, not `bool`),
//! because the verifier rejects reads of uninitialised padding and userspace
//! would otherwise see garbage.
#![no_std]

/// Names of the programs in the object file, as userspace looks them up.
pub mod program {
    pub const CONNECT4: &str = "blastgate_connect4";
    pub const CONNECT6: &str = "blastgate_connect6";
    pub const SOCKOPS: &str = "blastgate_sockops";
    pub const SENDMSG4: &str = "blastgate_sendmsg4";
    pub const SENDMSG6: &str = "blastgate_sendmsg6";
    pub const BIND4: &str = "blastgate_bind4";
    pub const BIND6: &str = "blastgate_bind6";
    pub const GETPEERNAME4: &str = "blastgate_getpeername4";
    pub const GETPEERNAME6: &str = "blastgate_getpeername6";
    pub const SOCK_CREATE: &str = "blastgate_sock_create";
    pub const FORK: &str = "blastgate_fork";
    /// Exit handler for kernels whose `sched_process_exit` carries `group_dead`.
    pub const EXIT_GROUP: &str = "blastgate_exit_group";
    /// Fallback exit handler for kernels without `group_dead`: forgets a
    /// process when its last thread exits (`signal->live` reaches 0).
    pub const EXIT_LEADER: &str = "blastgate_exit_leader";
    pub const EXEC: &str = "blastgate_exec";
    /// Packet sockets from every syscall entry (64-bit, 32-bit `int 0x80`
    /// `socket` and `socketcall`): the raw `sys_enter` tracepoint.
    pub const PACKET_SYSCALL: &str = "blastgate_packet_syscall";
    /// Packet sockets from io_uring's `IORING_OP_SOCKET`.
    pub const PACKET_URING: &str = "blastgate_packet_uring";
    pub const LSM_BPF: &str = "blastgate_lsm_bpf";
    pub const LSM_PTRACE: &str = "blastgate_lsm_ptrace";
    pub const LSM_KILL: &str = "blastgate_lsm_kill";
    /// TCP passthrough fast path: an agent's `sendmsg` goes straight to
    /// the upstream socket the daemon paired it with (see [`FastPair`]).
    pub const FAST_MSG: &str = "blastgate_fast_msg";
    /// Replies from blastgate's resolver carry the resolver address the
    /// agent asked, not the daemon's listener (`recvmsg`).
    pub const RECVMSG4: &str = "blastgate_recvmsg4";
    pub const RECVMSG6: &str = "blastgate_recvmsg6";
    /// An agent's TCP socket bound on loopback (or a wildcard) is noted,
    /// so its own process tree's connections to it pass untouched once it
    /// listens; forgotten when the socket is released.
    pub const POST_BIND4: &str = "blastgate_post_bind4";
    pub const POST_BIND6: &str = "blastgate_post_bind6";
    pub const SOCK_RELEASE: &str = "blastgate_sock_release";
}

/// Names of the maps, which are also their file names under the pin directory.
pub mod map {
    pub const LABELS: &str = "BG_LABELS";
    pub const ENROL_UIDS: &str = "BG_ENROL_UIDS";
    pub const ENROL_CGROUPS: &str = "BG_ENROL_CGROUPS";
    pub const ENROL_EXES: &str = "BG_ENROL_EXES";
    pub const SETTINGS: &str = "BG_SETTINGS";
    pub const BY_COOKIE: &str = "BG_BY_COOKIE";
    pub const BY_PEER: &str = "BG_BY_PEER";
    pub const ORIG_BY_COOKIE: &str = "BG_ORIG";
    pub const COUNTERS: &str = "BG_COUNTERS";
    pub const AGENT_NAMES: &str = "BG_AGENT_NAMES";
    /// Per-pid hold state, see [`held`](crate::held).
    pub const HELD: &str = "BG_HELD";
    /// Interpreters named by `[[enrol.scripts]]` rules.
    pub const ENROL_INTERPRETERS: &str = "BG_ENROL_INTERP";
    /// Ring buffer of [`PendingEvent`](crate::PendingEvent)s for the daemon.
    pub const PENDING_EVENTS: &str = "BG_PENDING_EV";
    /// SOCKHASH of agents' redirected sockets, keyed by their local
    /// [`SockKey`](crate::SockKey); filled by sockops at establishment and
    /// carrying the [`FAST_MSG`](crate::program::FAST_MSG) program.
    pub const FAST_AGENTS: &str = "BG_FAST_AGENTS";
    /// SOCKHASH of the daemon's upstream sockets of paired passthrough
    /// sessions, keyed by their socket cookie; filled by the daemon only.
    pub const FAST_UPSTREAMS: &str = "BG_FAST_UPS";
    /// Agent socket's [`SockKey`](crate::SockKey) -> [`FastPair`](crate::FastPair),
    /// written by the daemon only.
    pub const FAST_PAIRS: &str = "BG_FAST_PAIRS";
    /// Agent socket's [`SockKey`](crate::SockKey) -> [`FastCounts`](crate::FastCounts),
    /// created by sockops, counted by the sk_msg program.
    pub const FAST_COUNTS: &str = "BG_FAST_COUNTS";
    /// Socket cookie -> [`ConnRecord`](crate::ConnRecord) of an agent's UDP
    /// socket that sent DNS (its `orig` is the resolver it asked): who is
    /// asking, for the daemon's resolver, and what the reply must come from.
    pub const DNS_CALLERS: &str = "BG_DNS_CALLERS";
    /// Bound (address, port) -> [`LocalListener`](crate::LocalListener):
    /// agents' own loopback servers.
    pub const LOCAL_LISTENERS: &str = "BG_LOCAL";
}

/// Values of [`map::HELD`], an array indexed by thread-group id with a slot
/// for every possible pid: processes that are agents (so every hook treats
/// them as such) but have no label the redirect can use, so every
/// connection they make is refused.
pub mod held {
    /// The label did not fit in the label map (full).
    pub const UNSTORED: u32 = 1 << 31;
    /// It executed a listed interpreter (or descends from one that did)
    /// and the daemon has not yet decided whether it runs a listed script.
    /// The low bits hold the tgid of the pending parent it was forked from
    /// (0: it executed the interpreter itself).
    pub const PENDING: u32 = 1 << 30;
    pub const PARENT_MASK: u32 = PENDING - 1;
}

/// Sent to the daemon when a process becomes pending ([`held::PENDING`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingEvent {
    pub tgid: u32,
    pub _pad: u32,
}

/// Bytes of the pending-event ring buffer. A lost event only delays the
/// decision until the daemon's next scan; the process stays refused.
pub const PENDING_EVENTS_BYTES: u32 = 64 * 1024;

/// Default capacity of the per-process label map: enough for a busy build
/// host. The daemon sizes the map from `[bpf] max_labels` at load.
pub const MAX_LABELS: u32 = 65_536;
/// Smallest label map the daemon accepts.
pub const MIN_LABELS: u32 = 16;
/// Highest pid the kernel can ever hand out plus one (`PID_MAX_LIMIT` on
/// 64-bit kernels: `kernel.pid_max` cannot be raised above it). Arrays of
/// this length have a slot for every possible process, so they cannot fill.
pub const PID_MAX_LIMIT: u32 = 4_194_304;
/// Capacity of the in-flight connection maps (LRU: a dead daemon cannot fill them).
pub const MAX_INFLIGHT: u32 = 65_536;
pub const MAX_ENROL: u32 = 1_024;
/// Capacity of [`map::DNS_CALLERS`] (LRU: a socket evicted before its
/// query is answered is refused, never misattributed).
pub const MAX_DNS_CALLERS: u32 = 16_384;
pub const COMM_LEN: usize = 16;

/// Syscall numbers (x86_64 kernels) that create sockets, as the raw
/// `sys_enter` tracepoint reports them: 64-bit numbers for 64-bit calls,
/// i386 numbers for calls through the 32-bit entry (`int $0x80`,
/// `sysenter`, a 32-bit process), which a 64-bit process can also use.
pub mod syscall {
    /// x86_64 `socket(family, type, protocol)`.
    pub const SOCKET_64: i64 = 41;
    /// i386 `socket(family, type, protocol)`.
    pub const SOCKET_32: i64 = 359;
    /// i386 `socketcall(call, args)`; `args` points at `u32[]` in user memory.
    pub const SOCKETCALL_32: i64 = 102;
    /// `socketcall`'s `call` for socket().
    pub const SOCKETCALL_SOCKET: u32 = 1;
    /// `thread_info.status` bit set while a 32-bit syscall runs (x86 `TS_COMPAT`).
    pub const TS_COMPAT: u32 = 0x0002;
    /// io_uring's socket() opcode.
    pub const IORING_OP_SOCKET: u8 = 45;
    /// `io_uring_setup` (the same number in the 64-bit and i386 tables).
    pub const IO_URING_SETUP: i64 = 425;
    /// The capability packet sockets need (bit of `cred.cap_effective`).
    pub const CAP_NET_RAW: u32 = 13;
}

/// Address families, as the kernel numbers them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_PACKET: u32 = 17;
pub const AF_UNIX: u32 = 1;
pub const AF_NETLINK: u32 = 16;
/// The kernel crypto API (hashing, ciphers): never leaves the host.
pub const AF_ALG: u32 = 38;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
/// Obsolete `socket(AF_INET, SOCK_PACKET, …)`: the kernel turns it into a
/// packet socket.
pub const SOCK_PACKET: u32 = 10;
/// The type bits of socket()'s `type` argument (the rest are flags).
pub const SOCK_TYPE_MASK: u32 = 0xf;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;

/// How a process became an agent; kept in its label for the record.
pub mod origin {
    /// `blastgate run` asked the daemon over the control socket.
    pub const RUN: u32 = 1;
    /// Inherited from a labelled parent at fork.
    pub const FORK: u32 = 2;
    /// Its uid is enrolled.
    pub const UID: u32 = 3;
    /// It was found in an enrolled cgroup.
    pub const CGROUP: u32 = 4;
    /// It executed an enrolled executable.
    pub const EXE: u32 = 5;
    /// Labelled by the daemon's scan of processes already running.
    pub const SCAN: u32 = 6;
    /// Its interpreter runs an enrolled script (`[[enrol.scripts]]`).
    pub const SCRIPT: u32 = 7;
}

/// The mark an agent carries, keyed by thread-group id in [`map::LABELS`].
///
/// Identity is lineage, not cgroup membership: the label follows the process
/// through fork and exec whatever cgroup it moves to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub agent_id: u32,
    /// One of [`origin`].
    pub origin: u32,
    /// Thread-group id of the process the label was first given to.
    pub root_tgid: u32,
    /// The identity `blastgate run` proved for this tree (a verified CI job
    /// token), by the daemon's number for it; inherited at fork. 0: none.
    /// A number, not the root's pid: pids are reused, these are not.
    pub binding: u32,
}

/// An IPv6 or IPv4-mapped (`::ffff:a.b.c.d`) address with its port, as the
/// kernel sees it: address bytes in network order, port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub addr: [u8; 16],
    pub port: u32,
}

/// Who connected where, captured at `connect()` before the destination is
/// rewritten, and handed to the proxy through [`map::BY_PEER`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnRecord {
    pub cgroup_id: u64,
    /// Original destination (IPv4 as `::ffff:a.b.c.d`), port in host order.
    pub orig: SockKey,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub agent_id: u32,
    /// [`AF_INET`] or [`AF_INET6`]: the family of the agent's socket.
    pub family: u32,
    pub comm: [u8; COMM_LEN],
    /// [`Label::binding`] of the caller.
    pub binding: u32,
}

/// Indices into the [`map::SETTINGS`] array, written by the daemon at start.
pub mod setting {
    /// Proxy listener IPv4 address, network byte order as a u32 (`s_addr`).
    pub const PROXY_IP4: u32 = 0;
    /// Proxy listener port, host order.
    pub const PROXY_PORT: u32 = 1;
    /// Thread-group id of the daemon: never labelled, guarded by LSM programs.
    pub const DAEMON_TGID: u32 = 2;
    /// Non-zero once the daemon has written the settings; until then the
    /// hooks refuse agents outright instead of redirecting to port 0.
    pub const READY: u32 = 3;
    /// The daemon's start time in clock ticks since boot (as in
    /// /proc/PID/stat), low and high halves. With DAEMON_TGID it names the
    /// daemon process itself, not whatever later reuses its pid: a dead
    /// daemon's pid must never exempt an agent.
    pub const DAEMON_START_LO: u32 = 4;
    pub const DAEMON_START_HI: u32 = 5;
    /// Nanoseconds per clock tick (10_000_000 for USER_HZ = 100).
    pub const NSEC_PER_TICK: u32 = 6;
    /// Non-zero when the daemon runs the TCP passthrough fast path: only
    /// then does sockops put agent sockets in the fast path's map.
    pub const FAST_PATH: u32 = 7;
    /// UDP port of the daemon's resolver on 127.0.0.1 and ::1, host order:
    /// where agents' port-53 datagrams go. 0 refuses them.
    pub const DNS_PORT: u32 = 8;
    /// Slots in the array (room to grow without resizing a pinned map).
    pub const COUNT: u32 = 16;
}

/// The port agents send DNS to, whatever address they send it to.
pub const DNS_PORT: u32 = 53;

/// Indices into the [`map::COUNTERS`] per-CPU array, read by `blastgate status`.
pub mod counter {
    pub const REDIRECTED: u32 = 0;
    pub const UDP_DENIED: u32 = 1;
    pub const SOCK_DENIED: u32 = 2;
    pub const LABELS_INHERITED: u32 = 3;
    pub const PACKET_KILLED: u32 = 4;
    pub const LABELS_DROPPED: u32 = 5;
    pub const BIND_DENIED: u32 = 6;
    /// Labels that could not be stored (label map full): those processes
    /// and their descendants are refused every connection. Non-zero is an
    /// alarm in `blastgate status` and `/metrics`.
    pub const LABELS_UNSTORED: u32 = 7;
    /// Agents' connections to their own process tree's loopback listeners,
    /// passed untouched.
    pub const LOCAL_PASSED: u32 = 8;
    pub const COUNT: u32 = 16;
}

/// Offsets into kernel structures, read from the running kernel's BTF by the
/// daemon and written into the kernel object's globals before load. Rust BPF
/// has no CO-RE relocations, so this is how the programs stay portable across
/// kernel builds.
pub mod offsets {
    pub const TASK_PID: &str = "BG_OFF_TASK_PID";
    pub const TASK_TGID: &str = "BG_OFF_TASK_TGID";
    pub const TASK_GROUP_LEADER: &str = "BG_OFF_TASK_GROUP_LEADER";
    pub const TASK_START_BOOTTIME: &str = "BG_OFF_TASK_START_BOOTTIME";
    /// `task_struct.signal` and `signal_struct.live` (threads still alive).
    pub const TASK_SIGNAL: &str = "BG_OFF_TASK_SIGNAL";
    pub const SIGNAL_LIVE: &str = "BG_OFF_SIGNAL_LIVE";
    pub const BPRM_FILE: &str = "BG_OFF_BPRM_FILE";
    pub const FILE_INODE: &str = "BG_OFF_FILE_INODE";
    pub const INODE_INO: &str = "BG_OFF_INODE_INO";
    pub const INODE_SB: &str = "BG_OFF_INODE_SB";
    pub const SB_DEV: &str = "BG_OFF_SB_DEV";
    /// `task_struct.cred` and `cred.cap_effective` (low 32 bits hold CAP_NET_RAW).
    pub const TASK_CRED: &str = "BG_OFF_TASK_CRED";
    pub const CRED_CAP_EFFECTIVE: &str = "BG_OFF_CRED_CAP_EFFECTIVE";
    /// `task_struct.thread_info.status` (x86: holds `TS_COMPAT`).
    pub const TASK_TI_STATUS: &str = "BG_OFF_TASK_TI_STATUS";
    /// `pt_regs` argument registers of the x86_64 and i386 syscall ABIs.
    pub const REGS_DI: &str = "BG_OFF_REGS_DI";
    pub const REGS_SI: &str = "BG_OFF_REGS_SI";
    pub const REGS_BX: &str = "BG_OFF_REGS_BX";
    pub const REGS_CX: &str = "BG_OFF_REGS_CX";
    /// `io_kiocb.opcode`, and where `struct io_socket`'s `domain` and
    /// `type` sit inside an `io_kiocb` (its `cmd` area).
    pub const IO_KIOCB_OPCODE: &str = "BG_OFF_IO_KIOCB_OPCODE";
    pub const IO_SOCKET_DOMAIN: &str = "BG_OFF_IO_SOCKET_DOMAIN";
    pub const IO_SOCKET_TYPE: &str = "BG_OFF_IO_SOCKET_TYPE";
    /// `tcp_sock.write_seq`: the fast path enrols only sockets whose every
    /// written byte the sk_msg program will have seen.
    pub const TCP_WRITE_SEQ: &str = "BG_OFF_TCP_WRITE_SEQ";
}

/// Key of [`map::ENROL_EXES`]: an executable by (kernel dev_t, inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Longest agent name the daemon accepts.
pub const AGENT_NAME_LEN: usize = 64;

/// Value of [`map::AGENT_NAMES`]: a NUL-padded UTF-8 name.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AgentName {
    pub bytes: [u8; AGENT_NAME_LEN],
}

/// Loopback IPv4 in network byte order as the kernel stores `s_addr`.
pub const LOOPBACK4_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

impl SockKey {
    /// An IPv4 address (octets in network order) as `::ffff:a.b.c.d`.
    pub const fn v4_mapped(octets: [u8; 4], port: u32) -> Self {
        SockKey {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2],
                octets[3],
            ],
            port,
        }
    }
}

/// A passthrough session the daemon has paired with the kernel
/// ([`map::FAST_PAIRS`]): once every byte the agent handed to TCP has been
/// forwarded by the daemon (`forwarded` equals [`FastCounts::passed`]),
/// the agent's `sendmsg` goes straight to the upstream socket's send queue,
/// behind the bytes the daemon wrote there, so order is kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPair {
    /// Cookie of the daemon's upstream socket, its key in [`map::FAST_UPSTREAMS`].
    pub upstream: u64,
    /// Bytes from the agent the daemon has written upstream itself.
    pub forwarded: u64,
}

/// Per agent socket, kept by the kernel ([`map::FAST_COUNTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastCounts {
    /// Bytes the agent sent over TCP to the proxy.
    pub passed: u64,
    /// Bytes sent straight to the paired upstream socket.
    pub redirected: u64,
    /// Non-zero once the socket has switched to the upstream for good.
    pub direct: u32,
    pub _pad: u32,
}

/// An agent's TCP socket bound on a loopback or wildcard address
/// ([`map::LOCAL_LISTENERS`]). Connections from the same agent's process
/// tree (same agent, same lineage root) to it pass untouched once
/// `listening` is set, which only the socket's own `listen()` does: a bound
/// socket that never listens cannot vouch for someone else's listener
/// sharing its port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalListener {
    pub cookie: u64,
    pub agent_id: u32,
    pub root_tgid: u32,
    pub listening: u32,
    pub _pad: u32,
}

/// Capacity of [`map::LOCAL_LISTENERS`]. Full: an agent's new listener is
/// not noted, and connections to it go to the proxy (refused): closed.
pub const MAX_LOCAL: u32 = 16_384;

/// Capacity of the fast-path maps: one entry per live agent socket.
pub const MAX_FAST: u32 = MAX_INFLIGHT;

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::FastPair {}
    unsafe impl aya::Pod for super::FastCounts {}
    unsafe impl aya::Pod for super::LocalListener {}
    unsafe impl aya::Pod for super::Label {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ConnRecord {}
    unsafe impl aya::Pod for super::ExeKey {}
    unsafe impl aya::Pod for super::AgentName {}
    unsafe impl aya::Pod for super::PendingEvent {}
}

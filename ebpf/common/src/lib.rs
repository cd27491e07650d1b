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
    /// Fallback exit handler: forgets a process when its group leader exits.
    pub const EXIT_LEADER: &str = "blastgate_exit_leader";
    pub const EXEC: &str = "blastgate_exec";
    pub const PACKET_CREATE: &str = "blastgate_packet_create";
    pub const LSM_BPF: &str = "blastgate_lsm_bpf";
    pub const LSM_PTRACE: &str = "blastgate_lsm_ptrace";
    pub const LSM_KILL: &str = "blastgate_lsm_kill";
}

/// Names of the maps, which are also their file names under the pin directory.
pub mod map {
    pub const LABELS: &str = "BG_LABELS";
    pub const ENROL_UIDS: &str = "BG_ENROL_UIDS";
    pub const ENROL_CGROUPS: &str = "BG_ENROL_CGROUPS";
    pub const ENROL_EXES: &str = "BG_ENROL_EXES";
    pub const DNS_RESOLVERS: &str = "BG_DNS";
    pub const SETTINGS: &str = "BG_SETTINGS";
    pub const BY_COOKIE: &str = "BG_BY_COOKIE";
    pub const BY_PEER: &str = "BG_BY_PEER";
    pub const ORIG_BY_COOKIE: &str = "BG_ORIG";
    pub const COUNTERS: &str = "BG_COUNTERS";
    pub const AGENT_NAMES: &str = "BG_AGENT_NAMES";
}

/// Capacity of the per-process label map: enough for a busy build host.
pub const MAX_LABELS: u32 = 65_536;
/// Capacity of the in-flight connection maps (LRU: a dead daemon cannot fill them).
pub const MAX_INFLIGHT: u32 = 65_536;
pub const MAX_ENROL: u32 = 1_024;
pub const MAX_DNS: u32 = 64;
pub const COMM_LEN: usize = 16;

/// Offset of the first argument in a `syscalls/sys_enter_*` tracepoint
/// record (after the 8-byte common header and the syscall number, padded):
/// every argument is an 8-byte slot from here. The daemon's tests check it
/// against the running kernel's tracefs format file.
pub const SYS_ENTER_ARG0_OFFSET: usize = 16;

/// Address families, as the kernel numbers them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_PACKET: u32 = 17;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
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
    pub _pad: u32,
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
    pub _pad: u32,
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
    pub const COUNT: u32 = 8;
}

/// Indices into the [`map::COUNTERS`] per-CPU array, read by `blastgate status`.
pub mod counter {
    pub const REDIRECTED: u32 = 0;
    pub const UDP_DENIED: u32 = 1;
    pub const SOCK_DENIED: u32 = 2;
    pub const LABELS_INHERITED: u32 = 3;
    pub const PACKET_KILLED: u32 = 4;
    pub const LABELS_DROPPED: u32 = 5;
    pub const BIND_DENIED: u32 = 6;
    pub const COUNT: u32 = 8;
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
    pub const BPRM_FILE: &str = "BG_OFF_BPRM_FILE";
    pub const FILE_INODE: &str = "BG_OFF_FILE_INODE";
    pub const INODE_INO: &str = "BG_OFF_INODE_INO";
    pub const INODE_SB: &str = "BG_OFF_INODE_SB";
    pub const SB_DEV: &str = "BG_OFF_SB_DEV";
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

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::Label {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::ConnRecord {}
    unsafe impl aya::Pod for super::ExeKey {}
    unsafe impl aya::Pod for super::AgentName {}
}

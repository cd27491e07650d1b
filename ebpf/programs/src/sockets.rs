//! Socket kinds an agent may not have: raw, ICMP, SCTP, MPTCP, packet.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user, generated::bpf_send_signal},
    macros::{btf_tracepoint, cgroup_sock},
    programs::{BtfTracePointContext, SockContext},
    Global,
};
use aya_log_ebpf::warn;
use blastgate_common::{
    counter, syscall, AF_ALG, AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, SOCK_DGRAM, SOCK_PACKET,
    SOCK_STREAM, SOCK_TYPE_MASK,
};

use crate::agent::{count, current_agent, read_at};

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
/// them, and on kernels without BPF LSM nothing can refuse the syscall. An
/// agent that asks for one has CAP_NET_RAW and is trying to get around the
/// redirect: it is killed before the call returns to it (SIGKILL reaches
/// every thread before any can use the new descriptor).
///
/// The raw `sys_enter` tracepoint sees every syscall entry, 32-bit ones
/// included (`int $0x80` from a 64-bit process, 32-bit programs), which the
/// per-syscall `syscalls/sys_enter_socket` tracepoint does not. Everything
/// but the four numbers below leaves after a few comparisons.
///
/// Two requests are refused outright to an agent holding CAP_NET_RAW (the
/// capability a packet socket needs), because what they will create cannot
/// be known here: a 32-bit `socketcall`, whose arguments sit in memory
/// another thread can change between this read and the kernel's, and
/// `io_uring_setup`, since a ring runs every request of a batch (a packet
/// socket and a linked send on it) before a kill can land.
#[btf_tracepoint(function = "sys_enter")]
pub fn blastgate_packet_syscall(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    if id != syscall::SOCKET_64
        && id != syscall::SOCKET_32
        && id != syscall::SOCKETCALL_32
        && id != syscall::IO_URING_SETUP
    {
        return 0;
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let regs: *const u8 = ctx.arg(0);
    if let Some(entry) = packet_socket_args(id, regs) {
        kill(&ctx, agent, entry);
    } else if (id == syscall::IO_URING_SETUP || id == syscall::SOCKETCALL_32) && has_net_raw() {
        let compat = in_compat_syscall().unwrap_or(true);
        let socket_call = id == syscall::SOCKETCALL_32
            && compat
            && !matches!(
                unsafe { read_at::<u64>(regs, BG_OFF_REGS_BX.load()) },
                Ok(call) if call as u32 != syscall::SOCKETCALL_SOCKET
            );
        if id == syscall::IO_URING_SETUP || socket_call {
            kill(&ctx, agent, id as u32);
        }
    }
    0
}

/// Does the caller hold CAP_NET_RAW (in its effective set, in whatever
/// user namespace: counting one too many only kills an agent)? Unknown
/// counts as yes.
#[inline(always)]
fn has_net_raw() -> bool {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let caps = unsafe {
        read_at::<*const u8>(task, BG_OFF_TASK_CRED.load())
            .and_then(|cred| read_at::<u32>(cred, BG_OFF_CRED_CAP_EFFECTIVE.load()))
    };
    match caps {
        Ok(c) => c & (1 << syscall::CAP_NET_RAW) != 0,
        Err(_) => true,
    }
}

/// The family and type an agent's socket-creating syscall asks for, if
/// they make a packet socket; `Some` also when they cannot be read (fail
/// closed). The value names the entry, for the log.
#[inline(always)]
fn packet_socket_args(id: i64, regs: *const u8) -> Option<u32> {
    let Ok(compat) = in_compat_syscall() else {
        return Some(0);
    };
    let reg = |off: u32| unsafe { read_at::<u64>(regs, off) };
    let (entry, family, ty) = if id == syscall::SOCKET_64 && !compat {
        (64, reg(BG_OFF_REGS_DI.load()), reg(BG_OFF_REGS_SI.load()))
    } else if id == syscall::SOCKET_32 && compat {
        (32, reg(BG_OFF_REGS_BX.load()), reg(BG_OFF_REGS_CX.load()))
    } else if id == syscall::SOCKETCALL_32 && compat {
        match reg(BG_OFF_REGS_BX.load()) {
            Ok(call) if call as u32 == syscall::SOCKETCALL_SOCKET => {}
            Ok(_) => return None,
            Err(_) => return Some(102),
        }
        // socketcall's arguments are u32s in the caller's memory.
        let args = match reg(BG_OFF_REGS_CX.load()) {
            Ok(a) => (a as u32) as usize as *const u32,
            Err(_) => return Some(102),
        };
        let family = unsafe { bpf_probe_read_user(args) };
        let ty = unsafe { bpf_probe_read_user(args.wrapping_add(1)) };
        match (family, ty) {
            (Ok(f), Ok(t)) => (102, Ok(f as u64), Ok(t as u64)),
            _ => return Some(102),
        }
    } else {
        // 64-bit getuid (102) and no-such-syscall (359) land here.
        return None;
    };
    match (family, ty) {
        (Ok(f), Ok(t)) if is_forbidden(f as u32, t as u32) => Some(entry),
        (Ok(_), Ok(_)) => None,
        _ => Some(entry),
    }
}

/// io_uring creates sockets without a syscall of their own
/// (`IORING_OP_SOCKET`). The request is already prepared when it is
/// submitted, so the family read here is the one the kernel will use.
#[btf_tracepoint(function = "io_uring_submit_req")]
pub fn blastgate_packet_uring(ctx: BtfTracePointContext) -> i32 {
    let req: *const u8 = ctx.arg(0);
    match unsafe { read_at::<u8>(req, BG_OFF_IO_KIOCB_OPCODE.load()) } {
        Ok(syscall::IORING_OP_SOCKET) | Err(_) => {}
        Ok(_) => return 0,
    }
    let Some(agent) = current_agent() else {
        return 0;
    };
    let family = unsafe { read_at::<i32>(req, BG_OFF_IO_SOCKET_DOMAIN.load()) };
    let ty = unsafe { read_at::<i32>(req, BG_OFF_IO_SOCKET_TYPE.load()) };
    match (family, ty) {
        (Ok(f), Ok(t)) if !is_forbidden(f as u32, t as u32) => {}
        _ => kill(&ctx, agent, 0),
    }
    0
}

/// Socket families an agent may have: IP (redirected by the cgroup hooks),
/// unix and netlink (local to the host) and the kernel crypto API. Every
/// other family (`AF_PACKET`, `AF_VSOCK` to a hypervisor, `AF_XDP`,
/// `AF_TIPC`, `AF_RDS`, `AF_SMC`, …) is out of the hooks' sight and a way
/// around the proxy. So is the obsolete `(AF_INET, SOCK_PACKET)` spelling,
/// which the kernel turns into a packet socket after every hook above has
/// looked at it.
#[inline(always)]
fn is_forbidden(family: u32, ty: u32) -> bool {
    match family {
        AF_INET => ty & SOCK_TYPE_MASK == SOCK_PACKET,
        AF_INET6 | AF_UNIX | AF_NETLINK | AF_ALG => false,
        _ => true,
    }
}

/// Is the running syscall a 32-bit one? (x86 `in_ia32_syscall()`.)
#[inline(always)]
fn in_compat_syscall() -> Result<bool, i32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let status = unsafe { read_at::<u32>(task, BG_OFF_TASK_TI_STATUS.load()) }?;
    Ok(status & syscall::TS_COMPAT != 0)
}

#[inline(always)]
fn kill(ctx: &BtfTracePointContext, agent: u32, entry: u32) {
    unsafe { bpf_send_signal(SIGKILL) };
    count(counter::PACKET_KILLED);
    warn!(
        ctx,
        "agent {} opened a packet socket (entry {}): killed", agent, entry
    );
}

#[unsafe(no_mangle)]
static BG_OFF_TASK_TI_STATUS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_TASK_CRED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_CRED_CAP_EFFECTIVE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_REGS_DI: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_REGS_SI: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_REGS_BX: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_REGS_CX: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_IO_KIOCB_OPCODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_IO_SOCKET_DOMAIN: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_IO_SOCKET_TYPE: Global<u32> = Global::new(0);

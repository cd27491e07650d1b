//! The kernel object, built by `build.rs` and embedded in the binary.

/// Aligned so aya can parse the ELF in place.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/blastgate-ebpf.o"
)));

/// Empty when the binary was built with `BLASTGATE_SKIP_EBPF`.
pub static BYTES: &[u8] = &OBJECT.0;

#[cfg(test)]
mod tests {
    use blastgate_common::{map, offsets, program};

    /// Is `name` a NUL-delimited string in the object (its symbol table)?
    fn has_symbol(name: &str) -> bool {
        let n = name.len();
        super::BYTES
            .windows(n + 2)
            .any(|w| w[0] == 0 && &w[1..=n] == name.as_bytes() && w[n + 1] == 0)
    }

    /// The names userspace looks up are the names the kernel crate defines:
    /// the one place the two sides could drift apart silently.
    #[test]
    fn every_shared_name_exists_in_the_kernel_object() {
        if super::BYTES.is_empty() {
            crate::testing::skip("built with BLASTGATE_SKIP_EBPF: no kernel object to check");
            return;
        }
        let names = [
            program::CONNECT4,
            program::CONNECT6,
            program::SOCKOPS,
            program::SENDMSG4,
            program::SENDMSG6,
            program::BIND4,
            program::BIND6,
            program::GETPEERNAME4,
            program::GETPEERNAME6,
            program::SOCK_CREATE,
            program::FORK,
            program::EXIT_GROUP,
            program::EXIT_LEADER,
            program::EXEC,
            program::PACKET_SYSCALL,
            program::PACKET_URING,
            program::LSM_BPF,
            program::LSM_PTRACE,
            program::LSM_KILL,
            map::LABELS,
            map::ENROL_UIDS,
            map::ENROL_CGROUPS,
            map::ENROL_EXES,
            map::DNS_CALLERS,
            program::RECVMSG4,
            program::RECVMSG6,
            program::POST_BIND4,
            program::POST_BIND6,
            program::SOCK_RELEASE,
            map::LOCAL_LISTENERS,
            map::SETTINGS,
            map::BY_COOKIE,
            map::BY_PEER,
            map::ORIG_BY_COOKIE,
            map::COUNTERS,
            map::AGENT_NAMES,
            map::HELD,
            map::ENROL_INTERPRETERS,
            map::PENDING_EVENTS,
            offsets::TASK_PID,
            offsets::TASK_TGID,
            offsets::TASK_GROUP_LEADER,
            offsets::TASK_START_BOOTTIME,
            offsets::BPRM_FILE,
            offsets::FILE_INODE,
            offsets::INODE_INO,
            offsets::INODE_SB,
            offsets::SB_DEV,
            offsets::TASK_SIGNAL,
            offsets::SIGNAL_LIVE,
            offsets::TASK_TI_STATUS,
            offsets::TASK_CRED,
            offsets::CRED_CAP_EFFECTIVE,
            offsets::REGS_DI,
            offsets::REGS_SI,
            offsets::REGS_BX,
            offsets::REGS_CX,
            offsets::IO_KIOCB_OPCODE,
            offsets::IO_SOCKET_DOMAIN,
            offsets::IO_SOCKET_TYPE,
            aya_log::LEVEL,
        ];
        let missing: Vec<_> = names.iter().filter(|n| !has_symbol(n)).collect();
        assert!(
            missing.is_empty(),
            "missing from the kernel object: {missing:?}"
        );
    }
}

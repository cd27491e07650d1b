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
    use blastgate_common::{map, offsets, program, SYS_ENTER_ARG0_OFFSET};

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
            program::PACKET_CREATE,
            program::LSM_BPF,
            program::LSM_PTRACE,
            program::LSM_KILL,
            map::LABELS,
            map::ENROL_UIDS,
            map::ENROL_CGROUPS,
            map::ENROL_EXES,
            map::DNS_RESOLVERS,
            map::SETTINGS,
            map::BY_COOKIE,
            map::BY_PEER,
            map::ORIG_BY_COOKIE,
            map::COUNTERS,
            map::AGENT_NAMES,
            offsets::TASK_PID,
            offsets::TASK_TGID,
            offsets::TASK_GROUP_LEADER,
            offsets::TASK_START_BOOTTIME,
            offsets::BPRM_FILE,
            offsets::FILE_INODE,
            offsets::INODE_INO,
            offsets::INODE_SB,
            offsets::SB_DEV,
            aya_log::LEVEL,
        ];
        let missing: Vec<_> = names.iter().filter(|n| !has_symbol(n)).collect();
        assert!(
            missing.is_empty(),
            "missing from the kernel object: {missing:?}"
        );
    }

    /// The packet-socket guard reads socket()'s first argument at a fixed
    /// offset of the syscall tracepoint record; check it on this kernel.
    #[test]
    fn syscall_tracepoint_layout_matches_the_running_kernel() {
        let path = "/sys/kernel/tracing/events/syscalls/sys_enter_socket/format";
        let Ok(format) = std::fs::read_to_string(path) else {
            crate::testing::skip(&format!(
                "{path} is not readable (tracefs not mounted or not root)"
            ));
            return;
        };
        let family = format
            .lines()
            .find(|l| l.contains("family;"))
            .unwrap_or_else(|| panic!("no family field in {format}"));
        assert!(
            family.contains(&format!("offset:{SYS_ENTER_ARG0_OFFSET};")),
            "{family}"
        );
    }
}

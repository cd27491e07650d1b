//! What the running kernel must offer before anything is attached.
//!
//! Lineage (who is an agent) is only sound if every fork, exec and exit is
//! seen: a kernel that lacks one of the hooks would leave some agent
//! processes unlabelled, which is an unguarded agent. So the daemon refuses
//! to start on such a kernel instead of running half-guarded; README
//! "Kernel requirements" lists the same facts.

use super::btf::Btf;
use crate::Error;

/// The oldest kernel blastgate starts on: BPF links for cgroup programs
/// (5.7), `getpeername` hooks and BTF-enabled tracepoints with
/// `bpf_probe_read_{kernel,user}` and `task_struct.start_boottime` (5.5–5.8).
pub const MINIMUM: (u32, u32) = (5, 8);

/// BTF-enabled tracepoints lineage and the packet guard need, with the
/// fewest arguments each must pass (after the leading context pointer).
const TRACEPOINTS: &[(&str, u32, &str)] = &[
    ("sched_process_fork", 2, "labels inherited at fork"),
    ("sched_process_exec", 3, "enrolment by executable at exec"),
    (
        "sched_process_exit",
        1,
        "labels dropped at exit (pid reuse)",
    ),
    ("sys_enter", 2, "packet sockets from every syscall entry"),
];

/// `major.minor` of a kernel release string such as `6.18.44-fc-v1272`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses kernels older than [`MINIMUM`], and other architectures than
/// x86_64 (the packet guard reads x86_64 and i386 syscall registers).
pub fn check_minimum() -> Result<(), Error> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(Error::Kernel(format!(
            "blastgate's kernel programs read x86_64 syscall registers; this is {}: refusing \
             to start half-guarded",
            std::env::consts::ARCH
        )));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| Error::io("reading /proc/sys/kernel/osrelease", e))?;
    let release = release.trim();
    check_release(release)
}

fn check_release(release: &str) -> Result<(), Error> {
    let (want_major, want_minor) = MINIMUM;
    match parse_release(release) {
        Some(v) if v >= MINIMUM => Ok(()),
        Some(_) => Err(Error::Kernel(format!(
            "kernel {release} is older than {want_major}.{want_minor}, the oldest blastgate \
             can guard soundly (see README \"Kernel requirements\"); refusing to start"
        ))),
        None => Err(Error::Kernel(format!(
            "cannot read the kernel version from {release:?}; refusing to start"
        ))),
    }
}

/// Refuses kernels whose BTF lacks a tracepoint lineage depends on.
pub fn check_lineage_hooks(btf: &Btf) -> Result<(), Error> {
    for (tp, args, what) in TRACEPOINTS {
        match btf.tracepoint_args(tp) {
            Some(n) if n >= *args => {}
            Some(n) => {
                return Err(Error::Kernel(format!(
                    "the kernel's {tp} tracepoint passes {n} arguments, blastgate needs {args} \
                     ({what}); refusing to start half-guarded"
                )))
            }
            None => {
                return Err(Error::Kernel(format!(
                    "the kernel has no BTF-enabled {tp} tracepoint ({what}); refusing to start \
                     half-guarded"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_old_ones_are_refused() {
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.19"), Some((4, 19)));
        assert_eq!(parse_release("garbage"), None);
        assert!(check_release("6.1.0-18-amd64").is_ok());
        assert!(check_release("5.8.0").is_ok());
        assert!(check_release("5.4.0-150-generic").is_err());
        assert!(check_release("4.19.0").is_err());
        assert!(check_release("").is_err());
    }

    #[test]
    fn the_running_kernel_has_every_lineage_hook() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::testing::skip("no /sys/kernel/btf/vmlinux");
            return;
        };
        check_lineage_hooks(&btf).unwrap();
        check_minimum().unwrap();
    }
}

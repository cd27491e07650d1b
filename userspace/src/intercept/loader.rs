//! Loads the embedded kernel object, attaches every program and pins the
//! links, replacing those of a previous daemon without a gap.
//!
//! Cgroup programs attached through BPF links run side by side, so a new
//! link is attached before the old one is unpinned: during the swap both
//! copies run (they are idempotent on the same maps) and at no instant is an
//! agent's connect unredirected.

use std::{
    fs::File,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, SockHash},
    programs::{
        links::{FdLink, PinnedLink},
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, SkMsg, SockOps,
    },
    Ebpf, EbpfLoader,
};
use blastgate_common::{map, offsets, program, SockKey};
use serde::Serialize;

use super::{btf::Btf, fast::FastPath, object};
use crate::Error;

/// Where and how a program attaches.
#[derive(Debug, Clone, Copy)]
enum Hook {
    CgroupSockAddr,
    CgroupSock,
    SockOps,
    TpBtf(&'static str),
    Lsm(&'static str),
}

struct Spec {
    name: &'static str,
    hook: Hook,
    /// Without it blastgate is not safe to run: a failure aborts start-up.
    required: bool,
    /// What is lost when an optional program cannot be loaded.
    feature: &'static str,
}

const fn spec(name: &'static str, hook: Hook, required: bool, feature: &'static str) -> Spec {
    Spec {
        name,
        hook,
        required,
        feature,
    }
}

const PROGRAMS: &[Spec] = &[
    spec(
        program::CONNECT4,
        Hook::CgroupSockAddr,
        true,
        "ipv4 redirect",
    ),
    spec(
        program::CONNECT6,
        Hook::CgroupSockAddr,
        true,
        "ipv6 redirect",
    ),
    spec(program::SENDMSG4, Hook::CgroupSockAddr, true, "udp guard"),
    spec(program::SENDMSG6, Hook::CgroupSockAddr, true, "udp guard"),
    // Without them resolvers drop the replies: agents' DNS would fail.
    spec(program::RECVMSG4, Hook::CgroupSockAddr, true, "dns replies"),
    spec(program::RECVMSG6, Hook::CgroupSockAddr, true, "dns replies"),
    spec(
        program::BIND4,
        Hook::CgroupSockAddr,
        true,
        "proxy port guard",
    ),
    spec(
        program::BIND6,
        Hook::CgroupSockAddr,
        true,
        "proxy port guard",
    ),
    spec(
        program::GETPEERNAME4,
        Hook::CgroupSockAddr,
        false,
        "transparent peer address",
    ),
    spec(
        program::GETPEERNAME6,
        Hook::CgroupSockAddr,
        false,
        "transparent peer address",
    ),
    spec(program::SOCKOPS, Hook::SockOps, true, "caller identity"),
    spec(program::SOCK_CREATE, Hook::CgroupSock, true, "socket guard"),
    // Without them agents' own loopback servers are refused to them
    // (closed, not open).
    spec(
        program::POST_BIND4,
        Hook::CgroupSock,
        false,
        "agents' own loopback servers",
    ),
    spec(
        program::POST_BIND6,
        Hook::CgroupSock,
        false,
        "agents' own loopback servers",
    ),
    spec(
        program::SOCK_RELEASE,
        Hook::CgroupSock,
        false,
        "agents' own loopback servers",
    ),
    spec(
        program::FORK,
        Hook::TpBtf("sched_process_fork"),
        true,
        "lineage",
    ),
    spec(
        program::EXIT_GROUP,
        Hook::TpBtf("sched_process_exit"),
        true,
        "lineage",
    ),
    spec(
        program::EXIT_LEADER,
        Hook::TpBtf("sched_process_exit"),
        true,
        "lineage",
    ),
    spec(
        program::EXEC,
        Hook::TpBtf("sched_process_exec"),
        false,
        "enrolment by executable",
    ),
    spec(
        program::PACKET_SYSCALL,
        Hook::TpBtf("sys_enter"),
        true,
        "packet socket guard",
    ),
    spec(
        program::PACKET_URING,
        Hook::TpBtf("io_uring_submit_req"),
        false,
        "packet socket guard for io_uring",
    ),
    spec(program::LSM_BPF, Hook::Lsm("bpf"), false, "lsm"),
    spec(
        program::LSM_PTRACE,
        Hook::Lsm("ptrace_access_check"),
        false,
        "lsm",
    ),
    spec(program::LSM_KILL, Hook::Lsm("task_kill"), false, "lsm"),
];

/// One attached program, as `blastgate status` reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Attached {
    pub program: String,
    pub attach_point: String,
    pub pin: PathBuf,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub attached: Vec<Attached>,
    /// Features the kernel refused, e.g. "lsm unavailable".
    pub degraded: Vec<String>,
}

/// Pin directory layout: maps in `maps/`, links in `links/`.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn find_cgroup2_root() -> Result<PathBuf, Error> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| Error::Kernel("no cgroup v2 hierarchy is mounted".into()))
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), Error> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    let mounted = info.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(_, r)| r.split_whitespace().next() == Some("bpf"))
    });
    if !mounted {
        let target = c"/sys/fs/bpf";
        // SAFETY: plain mount(2) with static, NUL-terminated arguments.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "mounting bpffs at /sys/fs/bpf",
                std::io::Error::last_os_error(),
            ));
        }
    }
    for dir in [maps_dir(pin_dir), links_dir(pin_dir)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    Ok(())
}

/// Which optional kernel features the running kernel's BTF allows.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// The exec'd file's inode can be read: enrolment by executable.
    pub exec: bool,
    /// io_uring's socket requests can be read: their packet guard.
    pub uring: bool,
}

/// Loads the object with its maps reused from (or pinned to) `pin_dir`,
/// the label map sized `max_labels`.
pub fn load(
    pin_dir: &Path,
    btf: &Btf,
    log_level: u8,
    max_labels: u32,
) -> Result<(Ebpf, Features), Error> {
    if object::BYTES.is_empty() {
        return Err(Error::Kernel(
            "this blastgate was built with BLASTGATE_SKIP_EBPF and has no kernel programs".into(),
        ));
    }
    let off = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .map_err(|e| Error::Kernel(format!("kernel BTF: {e}")))
    };
    let task_pid = off("task_struct", "pid")?;
    let task_tgid = off("task_struct", "tgid")?;
    let task_leader = off("task_struct", "group_leader")?;
    let task_start = off("task_struct", "start_boottime")?;
    let task_signal = off("task_struct", "signal")?;
    let signal_live = off("signal_struct", "live")?;
    // The packet guard reads the syscall's registers and whether it came
    // in through the 32-bit entry (x86_64 layout).
    let ti_status = off("task_struct", "thread_info")? + off("thread_info", "status")?;
    let task_cred = off("task_struct", "cred")?;
    let tcp_write_seq = off("tcp_sock", "write_seq")?;
    let cred_caps = off("cred", "cap_effective")?;
    let [regs_di, regs_si, regs_bx, regs_cx] = [
        off("pt_regs", "di")?,
        off("pt_regs", "si")?,
        off("pt_regs", "bx")?,
        off("pt_regs", "cx")?,
    ];
    // Exec enrolment is optional: missing offsets only disable it.
    let exec_offsets = (|| {
        Ok::<_, Error>([
            off("linux_binprm", "file")?,
            off("file", "f_inode")?,
            off("inode", "i_ino")?,
            off("inode", "i_sb")?,
            off("super_block", "s_dev")?,
        ])
    })();
    let uring_offsets = (|| {
        let cmd = off("io_kiocb", "cmd")?;
        Ok::<_, Error>([
            off("io_kiocb", "opcode")?,
            cmd + off("io_socket", "domain")?,
            cmd + off("io_socket", "type")?,
        ])
    })();
    let features = Features {
        exec: exec_offsets.is_ok(),
        // Before 6.0 the tracepoint passed the ring and the request's fields
        // instead of the request.
        uring: uring_offsets.is_ok() && btf.tracepoint_args("io_uring_submit_req") == Some(1),
    };
    let [bprm_file, file_inode, inode_ino, inode_sb, sb_dev] = exec_offsets.unwrap_or([0; 5]);
    let [io_opcode, io_domain, io_type] = uring_offsets.unwrap_or([0; 3]);

    let maps = maps_dir(pin_dir);
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps)
        .map_max_entries(map::LABELS, max_labels)
        .override_global(offsets::TASK_PID, &task_pid, true)
        .override_global(offsets::TASK_TGID, &task_tgid, true)
        .override_global(offsets::TASK_GROUP_LEADER, &task_leader, true)
        .override_global(offsets::TASK_START_BOOTTIME, &task_start, true)
        .override_global(offsets::TASK_SIGNAL, &task_signal, true)
        .override_global(offsets::SIGNAL_LIVE, &signal_live, true)
        .override_global(offsets::BPRM_FILE, &bprm_file, true)
        .override_global(offsets::FILE_INODE, &file_inode, true)
        .override_global(offsets::INODE_INO, &inode_ino, true)
        .override_global(offsets::INODE_SB, &inode_sb, true)
        .override_global(offsets::SB_DEV, &sb_dev, true)
        .override_global(offsets::TASK_TI_STATUS, &ti_status, true)
        .override_global(offsets::TASK_CRED, &task_cred, true)
        .override_global(offsets::CRED_CAP_EFFECTIVE, &cred_caps, true)
        .override_global(offsets::REGS_DI, &regs_di, true)
        .override_global(offsets::REGS_SI, &regs_si, true)
        .override_global(offsets::REGS_BX, &regs_bx, true)
        .override_global(offsets::REGS_CX, &regs_cx, true)
        .override_global(offsets::IO_KIOCB_OPCODE, &io_opcode, true)
        .override_global(offsets::IO_SOCKET_DOMAIN, &io_domain, true)
        .override_global(offsets::IO_SOCKET_TYPE, &io_type, true)
        .override_global(offsets::TCP_WRITE_SEQ, &tcp_write_seq, true)
        .override_global(aya_log::LEVEL, &log_level, false)
        .load(object::BYTES)
        .map_err(|e| {
            Error::Kernel(format!(
                "loading the kernel object: {e} (if an older blastgate, or one with another \
                 [bpf] max_labels, left incompatible maps in {}, run `blastgate uninstall`)",
                maps.display()
            ))
        })?;
    Ok((ebpf, features))
}

/// Attaches every program and pins its link, replacing older links.
pub fn attach_all(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    cgroup_root: &Path,
    btf: &Btf,
    features: Features,
    exec_required: bool,
) -> Result<(Vec<Attached>, Vec<String>), Error> {
    let kernel_btf =
        aya::Btf::from_sys_fs().map_err(|e| Error::Kernel(format!("kernel BTF: {e}")))?;
    let cgroup = File::open(cgroup_root)
        .map_err(|e| Error::io(format!("opening cgroup root {}", cgroup_root.display()), e))?;
    let group_dead = btf.tracepoint_args("sched_process_exit").unwrap_or(1) >= 2;
    let links = links_dir(pin_dir);
    let mut attached = Vec::new();
    let mut degraded = Vec::new();

    for s in PROGRAMS {
        let skip = match s.name {
            program::EXIT_GROUP => !group_dead,
            program::EXIT_LEADER => group_dead,
            program::EXEC => !features.exec,
            program::PACKET_URING => !features.uring,
            _ => false,
        };
        if skip {
            if s.name == program::EXEC && exec_required {
                return Err(Error::Kernel(
                    "enrolment by executable is configured but the kernel BTF lacks the exec \
                     offsets (linux_binprm.file, file.f_inode, inode.i_ino, inode.i_sb, \
                     super_block.s_dev): refusing to run with those rules unenforced"
                        .into(),
                ));
            }
            // The exit handler not chosen for this kernel is no loss.
            if matches!(s.name, program::EXEC | program::PACKET_URING) {
                note_degraded(
                    &mut degraded,
                    &format!("{} unavailable: kernel BTF lacks its offsets", s.feature),
                );
            }
            continue;
        }
        match attach_one(ebpf, s, &cgroup, &kernel_btf) {
            Ok((link, point)) => {
                let pin = links.join(s.name);
                install_link(&pin, link)?;
                attached.push(Attached {
                    program: s.name.to_string(),
                    attach_point: point,
                    pin,
                });
            }
            Err(e) if s.required || (s.name == program::EXEC && exec_required) => {
                return Err(Error::Kernel(format!(
                    "attaching {} ({}): {e}",
                    s.name, s.feature
                )))
            }
            Err(e) => {
                tracing::warn!(program = s.name, error = %e, "optional program unavailable: {}", s.feature);
                note_degraded(&mut degraded, &format!("{} unavailable", s.feature));
            }
        }
    }
    remove_stale_links(&links, &attached);
    Ok((attached, degraded))
}

fn note_degraded(list: &mut Vec<String>, what: &str) {
    if !list.iter().any(|d| d == what) {
        list.push(what.to_string());
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    s: &Spec,
    cgroup: &File,
    btf: &aya::Btf,
) -> Result<(FdLink, String), String> {
    let prog = ebpf
        .program_mut(s.name)
        .ok_or_else(|| "missing from the kernel object".to_string())?;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    // Every cgroup program type attaches the same way, at the root.
    macro_rules! attach_cgroup {
        ($ty:ty) => {{
            let p: &mut $ty = prog.try_into().map_err(|x| e(&x))?;
            p.load().map_err(|x| e(&x))?;
            let id = p
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|x| e(&x))?;
            let link = p.take_link(id).map_err(|x| e(&x))?;
            (
                link.try_into().map_err(|x| e(&x))?,
                "cgroup v2 root".to_string(),
            )
        }};
    }
    Ok(match s.hook {
        Hook::CgroupSockAddr => attach_cgroup!(CgroupSockAddr),
        Hook::CgroupSock => attach_cgroup!(CgroupSock),
        Hook::SockOps => attach_cgroup!(SockOps),
        Hook::TpBtf(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(|x| e(&x))?;
            p.load(tp, btf).map_err(|x| e(&x))?;
            let id = p.attach().map_err(|x| e(&x))?;
            let link = p.take_link(id).map_err(|x| e(&x))?;
            (link.into(), format!("tp_btf/{tp}"))
        }
        Hook::Lsm(hook) => {
            let p: &mut Lsm = prog.try_into().map_err(|x| e(&x))?;
            p.load(hook, btf).map_err(|x| e(&x))?;
            let id = p.attach().map_err(|x| e(&x))?;
            let link = p.take_link(id).map_err(|x| e(&x))?;
            (link.into(), format!("lsm/{hook}"))
        }
    })
}

/// Attaches the TCP passthrough fast path: the `sk_msg` program on the
/// map of agent sockets (attached to the pinned map, so it outlives this
/// process as the redirect does), and the daemon's handles on its maps.
/// Agent sockets that sockops adds while no program is attached simply
/// stay on the proxy's path.
pub fn attach_fast(ebpf: &mut Ebpf) -> Result<FastPath, String> {
    let take = |ebpf: &mut Ebpf, name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| format!("map {name} missing from the kernel object"))
    };
    let agents: SockHash<MapData, SockKey> = take(ebpf, map::FAST_AGENTS)?
        .try_into()
        .map_err(|e| format!("map {}: {e}", map::FAST_AGENTS))?;
    let upstreams: SockHash<MapData, u64> = take(ebpf, map::FAST_UPSTREAMS)?
        .try_into()
        .map_err(|e| format!("map {}: {e}", map::FAST_UPSTREAMS))?;
    let pairs: BpfHashMap<MapData, _, _> = take(ebpf, map::FAST_PAIRS)?
        .try_into()
        .map_err(|e| format!("map {}: {e}", map::FAST_PAIRS))?;
    let counts: BpfHashMap<MapData, _, _> = take(ebpf, map::FAST_COUNTS)?
        .try_into()
        .map_err(|e| format!("map {}: {e}", map::FAST_COUNTS))?;
    let prog: &mut SkMsg = ebpf
        .program_mut(program::FAST_MSG)
        .ok_or_else(|| {
            format!(
                "program {} missing from the kernel object",
                program::FAST_MSG
            )
        })?
        .try_into()
        .map_err(|e| format!("{}: {e}", program::FAST_MSG))?;
    prog.load()
        .map_err(|e| format!("loading {}: {e}", program::FAST_MSG))?;
    prog.attach(agents.fd()).map_err(|e| {
        format!(
            "attaching {} to {}: {e}",
            program::FAST_MSG,
            map::FAST_AGENTS
        )
    })?;
    let fast = FastPath::new(agents, upstreams, pairs, counts);
    fast.clear();
    Ok(fast)
}

/// Pins `link` at `pin`, after unpinning whatever a previous daemon left
/// there. The new link is already attached, so there is no gap.
fn install_link(pin: &Path, link: FdLink) -> Result<(), Error> {
    if pin.exists() {
        match PinnedLink::from_pin(pin) {
            Ok(old) => {
                // Dropping the returned fd detaches the old link.
                drop(
                    old.unpin()
                        .map_err(|e| Error::io(format!("unpinning {}", pin.display()), e))?,
                );
            }
            Err(_) => {
                std::fs::remove_file(pin)
                    .map_err(|e| Error::io(format!("removing {}", pin.display()), e))?;
            }
        }
    }
    // The pin keeps the link; our fd can go.
    drop(
        link.pin(pin)
            .map_err(|e| Error::Kernel(format!("pinning {}: {e}", pin.display())))?,
    );
    Ok(())
}

/// Links pinned by an older daemon for programs this one did not attach
/// (an exit handler variant, an LSM the kernel now refuses) are removed.
fn remove_stale_links(links: &Path, attached: &[Attached]) {
    let Ok(dir) = std::fs::read_dir(links) else {
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if !attached.iter().any(|a| a.pin == path) {
            tracing::info!(pin = %path.display(), "removing a stale pinned link");
            unpin_link(&path);
        }
    }
}

fn unpin_link(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(l) => drop(l.unpin()),
        Err(_) => drop(std::fs::remove_file(path)),
    }
}

/// Detaches everything and removes the pin directory: what `blastgate
/// uninstall` and `daemon --detach-on-exit` do. Returns what was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let links = links_dir(pin_dir);
    if let Ok(dir) = std::fs::read_dir(&links) {
        for entry in dir.flatten() {
            unpin_link(&entry.path());
            removed.push(entry.path());
        }
    }
    let maps = maps_dir(pin_dir);
    if let Ok(dir) = std::fs::read_dir(&maps) {
        for entry in dir.flatten() {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
            removed.push(entry.path());
        }
    }
    for dir in [links, maps, pin_dir.to_path_buf()] {
        if dir.exists() {
            std::fs::remove_dir(&dir)
                .map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
    }
    Ok(removed)
}

/// What is pinned under `pin_dir` right now (for status when the daemon is down).
pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(links_dir(pin_dir))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

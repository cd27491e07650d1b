//! What the kernel holds of a daemon, asked of the kernel itself: the
//! links pinned under a pin directory (with their ids), the programs
//! attached at the cgroup v2 root (BPF_PROG_QUERY), and every link and
//! program loaded. No bpftool is installed here.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

/// A pinned link: its id and its program's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkIds {
    pub link: u32,
    pub prog: u32,
}

/// Every link pinned under `pin_dir/links`, by pin path. Opening a pin
/// only takes a reference; dropping it leaves the link attached.
pub fn pinned_links(pin_dir: &Path) -> BTreeMap<PathBuf, LinkIds> {
    let Ok(dir) = std::fs::read_dir(pin_dir.join("links")) else {
        return BTreeMap::new();
    };
    dir.flatten()
        .map(|e| {
            let path = e.path();
            let link: FdLink = PinnedLink::from_pin(&path)
                .unwrap_or_else(|e| panic!("open pinned link {}: {e}", path.display()))
                .into();
            let info = link
                .info()
                .unwrap_or_else(|e| panic!("link info {}: {e}", path.display()));
            let ids = LinkIds {
                link: info.id(),
                prog: info.program_id(),
            };
            (path, ids)
        })
        .collect()
}

/// Ids of every link the kernel holds.
pub fn loaded_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links()
        .filter_map(|l| l.ok().map(|l| l.id()))
        .collect()
}

/// Ids of every program the kernel holds.
pub fn loaded_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect()
}

/// `bpf_attach_type` values of the cgroup hooks blastgate attaches.
const CGROUP_ATTACH_TYPES: &[(u32, &str)] = &[
    (2, "sock_create"),
    (3, "sock_ops"),
    (8, "bind4"),
    (9, "bind6"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
    (19, "recvmsg4"),
    (20, "recvmsg6"),
    (29, "getpeername4"),
    (30, "getpeername6"),
];

/// The query part of `union bpf_attr` (BPF_PROG_QUERY).
#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// The ids of the programs attached at the cgroup v2 root, by hook.
pub fn cgroup_root_programs() -> BTreeMap<&'static str, Vec<u32>> {
    let root = blastgate::intercept::loader::find_cgroup2_root().expect("cgroup2 root");
    let dir = std::fs::File::open(&root).expect("open the cgroup2 root");
    let mut out = BTreeMap::new();
    for &(attach_type, hook) in CGROUP_ATTACH_TYPES {
        let mut ids = [0u32; 64];
        let mut q = ProgQuery {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..ProgQuery::default()
        };
        // SAFETY: bpf(2) with a query attr of the size passed; prog_ids
        // points at `ids`, which outlives the call and holds prog_cnt ids.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut q as *mut ProgQuery,
                std::mem::size_of::<ProgQuery>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_QUERY {hook} at {}: {}",
            root.display(),
            std::io::Error::last_os_error()
        );
        out.insert(hook, ids[..q.prog_cnt as usize].to_vec());
    }
    out
}

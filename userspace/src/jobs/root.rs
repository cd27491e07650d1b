//! Which process a job is bound to (its root), and its tree.
//!
//! - GitHub Actions: the runner's `Runner.Worker` runs one job and lives
//!   for all of it; the hooks and steps are its descendants. The root is
//!   the nearest ancestor of the hook named `Runner.Worker` (comm or exe)
//!   of the hook's own uid.
//! - GitLab Runner (shell executor): `gitlab-runner` pipes each stage's
//!   script to a shell, and that shell lives for the whole stage
//!   (pre_build_script, script and post_build_script); it may run steps in
//!   `: | eval …` subshells, which are transient. The root is the
//!   outermost process of the hook's uid below `gitlab-runner`, never the
//!   subshell the hook happens to run in.
//!
//! Every process on the way is named by pid and start time, and read again
//! after the choice: a pid reused meanwhile refuses the registration.

use std::collections::{HashMap, VecDeque};

use crate::{config::CiProvider, identity::procfs};

const MAX_DEPTH: usize = 64;

/// A process, named so a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

/// Whether `pid` is still the process that started at `start`.
pub fn alive(pid: u32, start: u64) -> bool {
    procfs::stat_of(pid).is_some_and(|s| s.start_time == start)
}

fn named(pid: u32, comm: &str, name: &str) -> bool {
    comm == name
        || procfs::exe_of(pid)
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .is_some_and(|base| base == name)
}

/// The job root for a hook running as `caller` (uid `uid`).
pub fn find(provider: CiProvider, caller: u32, uid: u32) -> Result<Proc, String> {
    let me = procfs::stat_of(caller).ok_or("the caller has exited")?;
    let mut chain = vec![(caller, me.start_time)];
    let mut pid = me.ppid;
    let mut candidate: Option<Proc> = None;
    let mut same_uid_run = true;
    let found = loop {
        if pid <= 1 || chain.len() > MAX_DEPTH {
            break None;
        }
        let Some(st) = procfs::stat_of(pid) else {
            break None;
        };
        chain.push((pid, st.start_time));
        let this_uid = procfs::uid_of(pid);
        match provider {
            CiProvider::Github => {
                if this_uid != Some(uid) {
                    break None;
                }
                if named(pid, &st.comm, "Runner.Worker") {
                    break Some(Proc {
                        pid,
                        start: st.start_time,
                    });
                }
            }
            CiProvider::Gitlab => {
                if named(pid, &st.comm, "gitlab-runner") {
                    break candidate;
                }
                if same_uid_run && this_uid == Some(uid) {
                    candidate = Some(Proc {
                        pid,
                        start: st.start_time,
                    });
                } else {
                    // A `su`/`sudo` between the runner and the job's shell:
                    // the job's processes end here; keep looking for the
                    // runner above.
                    same_uid_run = false;
                }
            }
        }
        pid = st.ppid;
    };
    let root = found.ok_or_else(|| match provider {
        CiProvider::Github => format!(
            "no Runner.Worker of uid {uid} among the caller's ancestors: `blastgate job start` \
             must run from the runner's job-started hook"
        ),
        CiProvider::Gitlab => format!(
            "no gitlab-runner among the caller's ancestors with a shell of uid {uid} below it: \
             `blastgate job start` must run from the runner's pre_build_script"
        ),
    })?;
    // Read the chain again: any pid reused meanwhile refuses.
    if chain.iter().any(|(p, s)| !alive(*p, *s)) {
        return Err("the process tree changed while the job's root was looked up".into());
    }
    Ok(root)
}

/// `root` and every descendant, parents before children.
pub fn tree(root: Proc) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in procfs::all_pids() {
        if let Some(st) = procfs::stat_of(pid) {
            children.entry(st.ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    if !alive(root.pid, root.start) {
        return out;
    }
    let mut queue = VecDeque::from([root.pid]);
    while let Some(p) = queue.pop_front() {
        out.push(p);
        if let Some(c) = children.get(&p) {
            queue.extend(c.iter().copied());
        }
    }
    out
}

/// Resolves when `root` exits (a pidfd becomes readable); at once if it
/// is already gone or no pidfd can be had for it.
pub async fn exited(root: Proc) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: pidfd_open(2) with a pid and no flags; the result is checked
    // and, if a descriptor, owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, root.pid as libc::pid_t, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names whatever has the pid now: it must still be the root.
    if !alive(root.pid, root.start) {
        return;
    }
    // SAFETY: `fd` is an open pidfd owned by the AsyncFd from here on,
    // and an OwnedFd always returns that same descriptor.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(afd) = registered else {
        return;
    };
    let _ = afd.readable().await;
}

//! Turns the config's enrolment rules into kernel map entries, and labels
//! processes that were already running when the daemon started.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use blastgate_common::{origin, ExeKey, Label};

use super::{agents::AgentRegistry, scripts::ScriptKey};
use crate::{config::EnrolConfig, identity::procfs, Error};

/// Enrolment rules resolved to kernel keys.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    pub uids: Vec<(u32, u32)>,
    pub cgroups: Vec<(u64, u32)>,
    /// cgroup path relative to the cgroup2 root -> agent id, for the /proc scan.
    pub cgroup_paths: HashMap<String, u32>,
    pub exes: Vec<(ExeKey, u32)>,
    /// `[[enrol.scripts]]` rules, and the interpreters they name.
    pub scripts: Vec<ScriptKey>,
    pub interpreters: Vec<(ExeKey, u32)>,
    /// Rules naming a file that exists but the daemon cannot stat (a
    /// directory it may not search): that agent runs unenrolled, so it is
    /// an alarm, not a warning. A missing file is not: nothing can run it.
    pub unreadable: Vec<String>,
}

/// An alarm for a rule whose file the daemon could not look at, unless
/// the file is simply not there (yet).
fn unreadable(what: &str, path: &Path, e: &std::io::Error) -> Option<String> {
    (e.kind() != std::io::ErrorKind::NotFound).then(|| {
        format!(
            "enrolled {what} {} cannot be examined ({e}): its processes are not enrolled and \
             connect directly; let the daemon search its directory (CAP_DAC_READ_SEARCH, or \
             the directory's mode)",
            path.display()
        )
    })
}

/// The kernel's `dev_t` encoding (MKDEV: 12-bit major, 20-bit minor) of a
/// userspace `st_dev`.
fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | minor
}

pub fn exe_key(path: &Path) -> std::io::Result<ExeKey> {
    let md = std::fs::metadata(path)?;
    Ok(ExeKey {
        dev: kernel_dev(md.dev()),
        _pad: 0,
        ino: md.ino(),
    })
}

/// A cgroup rule path: absolute under the cgroup2 mount, or relative to it.
fn cgroup_dir(root: &Path, rule: &Path) -> PathBuf {
    if rule.starts_with(root) {
        rule.to_path_buf()
    } else {
        root.join(rule.strip_prefix("/").unwrap_or(rule))
    }
}

pub fn resolve(
    rules: &EnrolConfig,
    cgroup_root: &Path,
    agents: &AgentRegistry,
) -> Result<Resolved, Error> {
    let mut out = Resolved::default();
    for r in &rules.uids {
        let uid = r.value();
        let id = agents.id_for(&r.agent(|u| format!("uid-{u}")))?;
        out.uids.push((uid, id));
    }
    for r in &rules.cgroups {
        let rule = r.value();
        let dir = cgroup_dir(cgroup_root, &rule);
        let id = agents.id_for(&r.agent(|p| format!("cgroup:{}", p.display())))?;
        match std::fs::metadata(&dir) {
            Ok(md) => {
                out.cgroups.push((md.ino(), id));
                let rel = dir
                    .strip_prefix(cgroup_root)
                    .map(|p| format!("/{}", p.display()))
                    .unwrap_or_default();
                out.cgroup_paths.insert(rel, id);
            }
            Err(e) => tracing::warn!(
                cgroup = %dir.display(),
                error = %e,
                "enrolled cgroup does not exist (yet); it is looked up again every rescan"
            ),
        }
    }
    for r in &rules.exes {
        let path = r.value();
        let id = agents.id_for(&r.agent(|p| format!("exe:{}", p.display())))?;
        match exe_key(&path) {
            Ok(key) => out.exes.push((key, id)),
            Err(e) => {
                tracing::warn!(exe = %path.display(), error = %e, "enrolled executable not found");
                out.unreadable.extend(unreadable("executable", &path, &e));
            }
        }
    }
    for r in &rules.scripts {
        let name = r
            .agent
            .clone()
            .unwrap_or_else(|| format!("script:{}", r.script.display()));
        let agent = agents.id_for(&name)?;
        match (exe_key(&r.interpreter), exe_key(&r.script)) {
            (Ok(interpreter), Ok(script)) => {
                out.scripts.push(ScriptKey {
                    interpreter,
                    script,
                    agent,
                });
                if !out.interpreters.iter().any(|(k, _)| *k == interpreter) {
                    out.interpreters.push((interpreter, 1));
                }
            }
            (interpreter, script) => {
                for (what, path, e) in [
                    ("interpreter", &r.interpreter, interpreter.err()),
                    ("script", &r.script, script.err()),
                ] {
                    let Some(e) = e else { continue };
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "enrolled {what} not found; looked up again every rescan"
                    );
                    out.unreadable.extend(unreadable(what, path, &e));
                }
            }
        }
    }
    Ok(out)
}

/// The daemon must never be an agent (its upstream connections would be
/// redirected into itself), so a rule that matches it is a config error.
pub fn refuse_rules_matching_daemon(rules: &Resolved, cgroup_root: &Path) -> Result<(), Error> {
    let me = std::process::id();
    if let Some(cg) = procfs::cgroup_of(me) {
        let dir = cgroup_root.join(cg.trim_start_matches('/'));
        if let Ok(md) = std::fs::metadata(&dir) {
            if rules.cgroups.iter().any(|(id, _)| *id == md.ino()) {
                return Err(Error::Invalid(format!(
                    "enrol.cgroups: {} holds the blastgate daemon itself; run the daemon outside the agents' cgroup",
                    dir.display()
                )));
            }
        }
    }
    if let Ok(key) = exe_key(Path::new("/proc/self/exe")) {
        if rules.interpreters.iter().any(|(k, _)| *k == key) {
            return Err(Error::Invalid(
                "enrol.scripts: names the blastgate binary as an interpreter".into(),
            ));
        }
        if rules.exes.iter().any(|(k, _)| *k == key) {
            return Err(Error::Invalid(
                "enrol.exes: lists the blastgate binary itself".into(),
            ));
        }
    }
    Ok(())
}

/// Labels running processes that match a rule, then their descendants.
/// Returns how many processes were newly labelled.
pub fn scan(rules: &Resolved, agents: &AgentRegistry, daemon: u32) -> usize {
    let maps = agents.maps();
    let pids = procfs::all_pids();
    let mut labelled = 0;
    let mut give = |pid: u32, agent_id: u32, how: u32, root: u32| {
        if pid == daemon || maps.label_of(pid).is_some() {
            return;
        }
        let label = Label {
            agent_id,
            origin: how,
            root_tgid: root,
            binding: 0,
        };
        if maps.label_or_refuse(pid, label).unwrap_or(false) {
            labelled += 1;
        }
    };
    for &pid in &pids {
        if let Some(uid) = procfs::uid_of(pid) {
            if let Some((_, id)) = rules.uids.iter().find(|(u, _)| *u == uid) {
                give(pid, *id, origin::SCAN, pid);
                continue;
            }
        }
        if let Some(cg) = procfs::cgroup_of(pid) {
            if let Some(id) = rules.cgroup_paths.get(&cg) {
                give(pid, *id, origin::SCAN, pid);
                continue;
            }
        }
        if !rules.exes.is_empty() {
            if let Ok(key) = exe_key(Path::new(&format!("/proc/{pid}/exe"))) {
                if let Some((_, id)) = rules.exes.iter().find(|(k, _)| *k == key) {
                    give(pid, *id, origin::SCAN, pid);
                    continue;
                }
            }
        }
        if let Some(id) = super::scripts::matching_agent(&rules.scripts, pid) {
            give(pid, id, origin::SCAN, pid);
        }
    }
    // Descendants of labelled processes forked before the daemon started.
    for &pid in &pids {
        if pid == daemon || maps.label_of(pid).is_some() {
            continue;
        }
        let mut p = pid;
        for _ in 0..64 {
            let Some(pp) = procfs::parent_of(p) else {
                break;
            };
            if pp <= 1 {
                break;
            }
            if let Some(l) = maps.label_of(pp) {
                give(pid, l.agent_id, origin::SCAN, l.root_tgid);
                break;
            }
            p = pp;
        }
    }
    labelled
}

/// Forgets labels of processes that no longer exist (a safety net behind
/// the kernel's exit hook).
pub fn sweep(agents: &AgentRegistry) -> usize {
    let maps = agents.maps();
    let mut dropped = 0;
    for (pid, _) in maps.labelled() {
        if !procfs::exists(pid) {
            maps.unlabel(pid);
            dropped += 1;
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_rules_may_be_absolute_or_relative() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            cgroup_dir(root, Path::new("/sys/fs/cgroup/ci.slice")),
            Path::new("/sys/fs/cgroup/ci.slice")
        );
        assert_eq!(
            cgroup_dir(root, Path::new("/ci.slice/runner.service")),
            Path::new("/sys/fs/cgroup/ci.slice/runner.service")
        );
    }

    #[test]
    fn kernel_dev_matches_mkdev() {
        let st = libc::makedev(8, 1);
        assert_eq!(kernel_dev(st), (8 << 20) | 1);
    }
}

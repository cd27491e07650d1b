//! Enrolment of agents that are scripts run by an interpreter
//! (`node /opt/agent/cli.js`, or a `#!/usr/bin/env node` script run
//! directly), decided for processes the kernel holds.
//!
//! The kernel sees the interpreter's exec (its inode, after `#!` lines and
//! symlinks) but not which script it was given. So every exec of a listed
//! interpreter is marked pending (`held::PENDING`), and a pending process,
//! with everything it forks meanwhile, is refused every connection until
//! this module has read its arguments from /proc and either labelled it
//! (an argument is the listed script, compared by device and inode) or
//! released it. Nothing it sends leaves the host undecided.

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsStr,
    io::Read,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use blastgate_common::{held, origin, ExeKey, Label};

use super::{enrol::exe_key, maps::KernelMaps};
use crate::identity::procfs;

/// A resolved `[[enrol.scripts]]` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptKey {
    pub interpreter: ExeKey,
    pub script: ExeKey,
    pub agent: u32,
}

/// Longest command line read (a longer one is truncated: arguments past
/// it are not looked at).
const MAX_CMDLINE: usize = 64 * 1024;
/// Arguments looked at for the script.
const MAX_ARGS: usize = 256;
/// Pending ancestors followed before a process is refused as undecidable.
const MAX_DEPTH: usize = 32;
/// Decisions remembered for processes that may exit before the children
/// they forked while pending are decided.
const REMEMBERED: usize = 4096;

/// `pid`'s arguments, argv\[0\] included.
fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .ok()?
        .take(MAX_CMDLINE as u64)
        .read_to_end(&mut buf)
        .ok()?;
    Some(
        buf.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

/// Where `arg` points for process `pid`: absolute paths inside its root,
/// relative ones from its working directory.
fn resolve(pid: u32, arg: &[u8]) -> PathBuf {
    let arg = Path::new(OsStr::from_bytes(arg));
    match arg.strip_prefix("/") {
        Ok(rest) => Path::new(&format!("/proc/{pid}/root")).join(rest),
        Err(_) => Path::new(&format!("/proc/{pid}/cwd")).join(arg),
    }
}

/// The agent `pid` is by a script rule: its executable is a listed
/// interpreter and one of its arguments is that rule's script. Any
/// argument counts (not only the first non-option one): counting one too
/// many only makes a process an agent, which is the safe side.
pub fn matching_agent(rules: &[ScriptKey], pid: u32) -> Option<u32> {
    let exe = exe_key(Path::new(&format!("/proc/{pid}/exe"))).ok()?;
    let candidates: Vec<&ScriptKey> = rules.iter().filter(|r| r.interpreter == exe).collect();
    if candidates.is_empty() {
        return None;
    }
    cmdline(pid)?
        .iter()
        .skip(1)
        .take(MAX_ARGS)
        .filter_map(|arg| exe_key(&resolve(pid, arg)).ok())
        .find_map(|key| candidates.iter().find(|r| r.script == key).map(|r| r.agent))
}

/// What became of a pending process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Labelled as this agent.
    Agent(u32),
    /// Not an agent: released.
    Released,
    /// Cannot be decided (its pending parent is gone undecided): refused
    /// for good, like a process whose label did not fit.
    Refused,
}

/// Decides pending processes; remembers recent outcomes for the children
/// of processes that exit before their children are looked at.
#[derive(Default)]
pub struct Decider {
    /// The rules in force (replaced at every rescan).
    pub rules: Vec<ScriptKey>,
    outcomes: HashMap<u32, Outcome>,
    order: VecDeque<u32>,
}

impl Decider {
    pub fn new(rules: Vec<ScriptKey>) -> Decider {
        Decider {
            rules,
            ..Default::default()
        }
    }

    fn remember(&mut self, pid: u32, outcome: Outcome) {
        if self.outcomes.insert(pid, outcome).is_none() {
            self.order.push_back(pid);
            if self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.outcomes.remove(&old);
                }
            }
        }
    }

    /// Decides `pid` if it is pending (and, first, the pending parents it
    /// inherits from). Returns `None` when it was not pending.
    pub fn decide(&mut self, maps: &KernelMaps, pid: u32) -> Option<Outcome> {
        self.decide_at(maps, pid, 0)
    }

    fn decide_at(&mut self, maps: &KernelMaps, pid: u32, depth: usize) -> Option<Outcome> {
        let state = maps.held(pid);
        if state & held::PENDING == 0 {
            return None;
        }
        let parent = state & held::PARENT_MASK;
        let outcome = if let Some(l) = maps.label_of(pid) {
            // Labelled meanwhile (it executed an enrolled executable).
            Outcome::Agent(l.agent_id)
        } else if let Some(agent) = matching_agent(&self.rules, pid) {
            Outcome::Agent(agent)
        } else if parent == 0 {
            Outcome::Released
        } else if depth >= MAX_DEPTH {
            Outcome::Refused
        } else {
            // Forked from a pending process: it is what its parent is.
            match self.decide_at(maps, parent, depth + 1) {
                Some(o) => o,
                None => match maps.label_of(parent) {
                    Some(l) => Outcome::Agent(l.agent_id),
                    None if maps.held(parent) & held::UNSTORED != 0 => Outcome::Refused,
                    None => match self.outcomes.get(&parent) {
                        Some(o) => *o,
                        // Alive, neither held nor labelled: it was released.
                        None if procfs::exists(parent) => Outcome::Released,
                        None => Outcome::Refused,
                    },
                },
            }
        };
        // Write the outcome only if the process is still the pending one
        // we looked at (it may have exited, and its pid been reused).
        if maps.held(pid) != state {
            return Some(outcome);
        }
        // The label (or the refusal) goes in before the hold comes off, so
        // there is no instant at which the process is neither.
        let applied = match outcome {
            Outcome::Agent(agent_id) => maps
                .label_or_refuse(
                    pid,
                    Label {
                        agent_id,
                        origin: origin::SCRIPT,
                        root_tgid: pid,
                        binding: 0,
                    },
                )
                .map(|stored| stored.then_some(())),
            Outcome::Released => Ok(Some(())),
            Outcome::Refused => {
                tracing::error!(
                    pid,
                    parent,
                    "ALARM: cannot tell whether pid {pid} runs an enrolled script (its pending \
                     parent {parent} exited undecided): it stays refused"
                );
                maps.set_held(pid, held::UNSTORED).map(|()| None)
            }
        };
        // `Some`: labelled or released, the hold comes off; `None`: it
        // stays (refused).
        let cleared = match applied {
            Ok(Some(())) => maps.set_held(pid, 0),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = cleared {
            tracing::error!(pid, error = %e, "deciding a pending process; it stays refused");
        }
        tracing::debug!(pid, ?outcome, "pending process decided");
        self.remember(pid, outcome);
        Some(outcome)
    }

    /// Decides every pending process in /proc (a safety net behind the
    /// kernel's events, which a full ring buffer may drop).
    pub fn sweep(&mut self, maps: &KernelMaps) -> usize {
        procfs::all_pids()
            .into_iter()
            .filter(|&pid| self.decide(maps, pid).is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_resolve_inside_the_process_root_and_cwd() {
        assert_eq!(
            resolve(42, b"/opt/agent/cli.js"),
            Path::new("/proc/42/root/opt/agent/cli.js")
        );
        assert_eq!(resolve(42, b"cli.js"), Path::new("/proc/42/cwd/cli.js"));
        assert_eq!(resolve(42, b"../x.js"), Path::new("/proc/42/cwd/../x.js"));
    }
}

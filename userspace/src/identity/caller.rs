use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::procfs;

/// The identity the proxy attaches to every session and event.
///
/// pid, uid, gid, comm and cgroup come from the kernel at `connect()` time
/// and cannot be forged by the agent; exe and lineage are read from /proc at
/// accept time and are best effort (the process may already be gone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub agent: String,
    pub agent_id: u32,
    /// Thread-group id (the "pid" users see).
    pub pid: u32,
    /// Id of the thread that called connect().
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub cgroup_id: u64,
    /// Parent, grandparent, …, up to the first process that is not an agent
    /// (included) or a depth limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Ancestor>,
    /// The CI job its process tree proved to be (a verified OIDC token
    /// presented to `blastgate run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<super::oidc::JobIdentity>,
    /// The CI job its process tree belongs to (registered by the runner's
    /// hook, `blastgate job start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::jobs::CiJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
}

/// How far up the process tree a caller's lineage is followed.
const MAX_LINEAGE: usize = 16;
/// How long a process's exe and lineage are reused for its next connections.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 4096;

/// exe and lineage per process, keyed by (pid, start time) so a reused pid
/// never inherits another process's identity. Agents open connections in
/// bursts; this saves the lineage walk on all but the first.
#[derive(Default)]
pub struct ProcessCache {
    entries: Mutex<HashMap<(u32, u64), Cached>>,
}

/// When it was read, the exe, the lineage.
type Cached = (Instant, Option<String>, Vec<Ancestor>);

impl Caller {
    /// Builds a caller from the kernel record; `is_agent` says whether a pid
    /// carries a label, which bounds the lineage walk.
    pub fn from_kernel(
        rec: &blastgate_common::ConnRecord,
        agent: String,
        cache: &ProcessCache,
        is_agent: impl Fn(u32) -> bool,
    ) -> Caller {
        let comm_len = rec
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rec.comm.len());
        let (exe, lineage) = cache.exe_and_lineage(rec.tgid, is_agent);
        Caller {
            agent,
            agent_id: rec.agent_id,
            pid: rec.tgid,
            tid: rec.pid,
            uid: rec.uid,
            gid: rec.gid,
            comm: String::from_utf8_lossy(&rec.comm[..comm_len]).into_owned(),
            exe,
            cgroup_id: rec.cgroup_id,
            lineage,
            oidc: None,
            job: None,
        }
    }
}

impl ProcessCache {
    fn exe_and_lineage(
        &self,
        tgid: u32,
        is_agent: impl Fn(u32) -> bool,
    ) -> (Option<String>, Vec<Ancestor>) {
        let Some(me) = procfs::stat_of(tgid) else {
            return (None, Vec::new());
        };
        let key = (tgid, me.start_time);
        let now = Instant::now();
        {
            let cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, exe, lineage)) = cache.get(&key) {
                if now.duration_since(*at) < CACHE_TTL {
                    return (exe.clone(), lineage.clone());
                }
            }
        }
        let exe = procfs::exe_of(tgid);
        let mut lineage = Vec::new();
        let mut ppid = me.ppid;
        while lineage.len() < MAX_LINEAGE && ppid != 0 {
            let Some(parent) = procfs::stat_of(ppid) else {
                break;
            };
            lineage.push(Ancestor {
                pid: ppid,
                comm: parent.comm,
            });
            if !is_agent(ppid) {
                break;
            }
            ppid = parent.ppid;
        }
        let mut cache = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _, _)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now, exe.clone(), lineage.clone()));
        (exe, lineage)
    }
}

use serde::{Deserialize, Serialize};

use super::procfs;

/// The identity the proxy attaches to every session and event.
///
/// pid, uid, gid, comm and cgroup come from the kernel at `connect()` time
/// and cannot be forged by the agent; exe and lineage are read from /proc at
/// accept time and are best effort (the process may already be gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
}

/// How far up the process tree a caller's lineage is followed.
const MAX_LINEAGE: usize = 16;

impl Caller {
    /// Builds a caller from the kernel record; `is_agent` says whether a pid
    /// carries a label, which bounds the lineage walk.
    pub fn from_kernel(
        rec: &blastgate_common::ConnRecord,
        agent: String,
        is_agent: impl Fn(u32) -> bool,
    ) -> Caller {
        let comm_len = rec.comm.iter().position(|&b| b == 0).unwrap_or(rec.comm.len());
        let mut lineage = Vec::new();
        let mut pid = rec.tgid;
        while lineage.len() < MAX_LINEAGE {
            let Some(ppid) = procfs::parent_of(pid) else { break };
            if ppid == 0 {
                break;
            }
            lineage.push(Ancestor {
                pid: ppid,
                comm: procfs::comm_of(ppid).unwrap_or_default(),
            });
            if !is_agent(ppid) {
                break;
            }
            pid = ppid;
        }
        Caller {
            agent,
            agent_id: rec.agent_id,
            pid: rec.tgid,
            tid: rec.pid,
            uid: rec.uid,
            gid: rec.gid,
            comm: String::from_utf8_lossy(&rec.comm[..comm_len]).into_owned(),
            exe: procfs::exe_of(rec.tgid),
            cgroup_id: rec.cgroup_id,
            lineage,
        }
    }
}

//! Control socket messages.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{intercept::Attached, records::Event};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Label the connecting process (identified by SO_PEERCRED, never by a
    /// pid in the request) as agent `agent`.
    Label {
        agent: String,
        /// A CI job's OIDC token, verified before anything is labelled:
        /// its claims are bound to the process tree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oidc_token: Option<String>,
    },
    Status,
    /// Stream every event as it becomes durable.
    Follow,
    /// Pending approval requests.
    Approvals,
    /// An approver's decision on one request.
    Decide {
        id: uuid::Uuid,
        approve: bool,
        reason: Option<String>,
        /// The human behind the root-only socket (SUDO_USER), recorded
        /// next to the peer's own identity.
        on_behalf_of: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Labelled {
        pid: u32,
        agent: String,
        agent_id: u32,
        /// What the verified token said, when one was presented.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oidc: Option<crate::identity::oidc::JobIdentity>,
    },
    Status(Box<Status>),
    Event(Box<Event>),
    /// A follower fell behind and missed this many events (they are in the spool).
    Lagged {
        missed: u64,
    },
    Approvals {
        pending: Vec<crate::approvals::ApprovalRequest>,
    },
    Decided {
        id: uuid::Uuid,
        by: String,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub daemon_pid: u32,
    pub version: String,
    pub pin_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub attached: Vec<Attached>,
    /// Protections the kernel refused, e.g. "lsm unavailable".
    pub degraded: Vec<String>,
    /// States in which the kernel is refusing agents it could not track
    /// (e.g. the label map overflowed); empty when all is well.
    #[serde(default)]
    pub alarms: Vec<String>,
    pub labelled_processes: usize,
    pub agents: Vec<String>,
    pub listen: Vec<SocketAddr>,
    pub targets: usize,
    pub spool_dir: PathBuf,
    pub counters: Vec<(String, u64)>,
    /// Where the policies in force come from (a directory, or built in).
    #[serde(default)]
    pub policies: String,
    /// Every setting in force that weakens enforcement.
    #[serde(default)]
    pub weakened: Vec<String>,
}

//! Who is an agent: the label map, the enrolment maps and the one function
//! every hook calls first.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use blastgate_common::{counter, origin, setting, AgentName, ExeKey, Label, MAX_ENROL, MAX_LABELS};

// Map statics are named exactly as `blastgate_common::map::*`; the daemon's
// tests check every shared name against the built object.

/// Thread-group id -> label. Pinned so labels survive a daemon restart.
#[map]
pub static BG_LABELS: HashMap<u32, Label> = HashMap::pinned(MAX_LABELS, 0);

/// Enrolled uid -> agent id: every process of that uid is an agent.
#[map]
pub static BG_ENROL_UIDS: HashMap<u32, u32> = HashMap::pinned(MAX_ENROL, 0);

/// Enrolled cgroup v2 id -> agent id.
#[map]
pub static BG_ENROL_CGROUPS: HashMap<u64, u32> = HashMap::pinned(MAX_ENROL, 0);

/// Enrolled executable (dev, inode) -> agent id.
#[map]
pub static BG_ENROL_EXES: HashMap<ExeKey, u32> = HashMap::pinned(MAX_ENROL, 0);

/// Daemon-written settings, see `blastgate_common::setting`.
#[map]
pub static BG_SETTINGS: Array<u32> = Array::pinned(setting::COUNT, 0);

/// Event counters for `blastgate status`.
#[map]
pub static BG_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

#[inline(always)]
pub fn setting(index: u32) -> u32 {
    match BG_SETTINGS.get(index) {
        Some(v) => *v,
        None => 0,
    }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = BG_COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer can race with this increment.
        unsafe { *slot += 1 };
    }
}

/// Is the caller (whose tgid matched DAEMON_TGID) really the daemon, and
/// not a later process that reused a dead daemon's pid? Compares the
/// thread group leader's start time with the one the daemon recorded.
#[inline(always)]
fn is_daemon() -> bool {
    let want =
        (setting(setting::DAEMON_START_HI) as u64) << 32 | setting(setting::DAEMON_START_LO) as u64;
    let per_tick = setting(setting::NSEC_PER_TICK) as u64;
    if per_tick == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(leader) = (unsafe { read_at::<*const u8>(task, BG_OFF_TASK_GROUP_LEADER.load()) })
    else {
        return false;
    };
    let Ok(start) = (unsafe { read_at::<u64>(leader, BG_OFF_TASK_START_BOOTTIME.load()) }) else {
        return false;
    };
    start / per_tick == want
}

#[unsafe(no_mangle)]
static BG_OFF_TASK_GROUP_LEADER: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_TASK_START_BOOTTIME: Global<u32> = Global::new(0);

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Sticks a label on `tgid` unless it already has one.
#[inline(always)]
pub fn label(tgid: u32, agent_id: u32, how: u32, root_tgid: u32) {
    let l = Label {
        agent_id,
        origin: how,
        root_tgid,
        _pad: 0,
    };
    // BPF_NOEXIST: an existing label (and its origin) wins.
    let _ = BG_LABELS.insert(tgid, l, 1);
}

/// The agent id of the calling process, or `None` if it is not an agent.
///
/// Enrolment by uid and cgroup is checked here, at every call, not only at
/// fork: a process of an enrolled uid is an agent however it was started.
/// A process found this way is labelled, so it stays an agent if it later
/// changes uid (setuid helpers) or cgroup.
#[inline(always)]
pub fn current_agent() -> Option<u32> {
    let tgid = current_tgid();
    if tgid == setting(setting::DAEMON_TGID) && is_daemon() {
        // The daemon is never an agent: its upstream connections are the
        // ones agents are redirected to. It refuses to be labelled and the
        // config refuses rules that would match it.
        return None;
    }
    if let Some(l) = BG_LABELS.get_ptr(tgid) {
        return Some(unsafe { (*l).agent_id });
    }
    let uid = bpf_get_current_uid_gid() as u32;
    if let Some(a) = BG_ENROL_UIDS.get_ptr(uid) {
        let agent = unsafe { *a };
        label(tgid, agent, origin::UID, tgid);
        return Some(agent);
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if let Some(a) = BG_ENROL_CGROUPS.get_ptr(cgroup) {
        let agent = unsafe { *a };
        label(tgid, agent, origin::CGROUP, tgid);
        return Some(agent);
    }
    None
}

/// Agent id -> name, for the daemon only: kept beside the labels in the pin
/// directory so a restarted daemon can still name the agents it labelled.
#[map]
pub static BG_AGENT_NAMES: HashMap<u32, AgentName> = HashMap::pinned(MAX_ENROL, 0);

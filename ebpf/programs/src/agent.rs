//! Who is an agent: the label map, the enrolment maps and the one function
//! every hook calls first.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_probe_read_kernel, generated::bpf_send_signal,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    Global,
};
use blastgate_common::{
    counter, held, origin, setting, AgentName, ExeKey, Label, PendingEvent, MAX_ENROL, MAX_LABELS,
    PENDING_EVENTS_BYTES, PID_MAX_LIMIT,
};

// Map statics are named exactly as `blastgate_common::map::*`; the daemon's
// tests check every shared name against the built object.

/// Thread-group id -> label. Pinned so labels survive a daemon restart.
/// Its size is the default; the daemon sets `[bpf] max_labels` at load.
#[map]
pub static BG_LABELS: HashMap<u32, Label> = HashMap::pinned(MAX_LABELS, 0);

/// Thread-group id -> hold state (`blastgate_common::held`): agent processes
/// without a usable label, refused every connection. An array with a slot
/// for every possible pid: this is the storage that cannot fill up, so a
/// label that does not fit never leaves a process unguarded (32 MiB,
/// allocated once).
#[map]
pub static BG_HELD: Array<u32> = Array::pinned(PID_MAX_LIMIT, 0);

/// Interpreter (dev, inode) -> 1, for `[[enrol.scripts]]` rules: its exec
/// is held until the daemon has read what script it runs.
#[map]
pub static BG_ENROL_INTERP: HashMap<ExeKey, u32> = HashMap::pinned(MAX_ENROL, 0);

/// Tells the daemon a process is pending.
#[map]
pub static BG_PENDING_EV: RingBuf = RingBuf::with_byte_size(PENDING_EVENTS_BYTES, 0);

/// What `current_agent` returns for a held process: every hook treats it
/// as an agent, and the connect hooks refuse it.
pub const REFUSED: u32 = u32::MAX;

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

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
const SIGKILL: u32 = 9;

/// Sticks a label on `tgid` unless it already has one. A label that does
/// not fit (the map is full) marks the process unstored instead: it stays
/// an agent, and one whose connections are all refused.
#[inline(always)]
pub fn label(tgid: u32, agent_id: u32, how: u32, root_tgid: u32, binding: u32) {
    let l = Label {
        agent_id,
        origin: how,
        root_tgid,
        binding,
    };
    // BPF_NOEXIST: an existing label (and its origin) wins.
    match BG_LABELS.insert(tgid, l, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => mark_unstored(tgid),
    }
}

/// Marks `tgid` as an agent without a stored label; see `BG_HELD`.
#[inline(always)]
pub fn mark_unstored(tgid: u32) {
    count(counter::LABELS_UNSTORED);
    set_held(tgid, held::UNSTORED);
}

/// Holds `tgid` until the daemon decides whether it runs an enrolled
/// script; `parent` is the pending process it was forked from (0: none).
#[inline(always)]
pub fn mark_pending(tgid: u32, parent: u32) {
    set_held(tgid, held::PENDING | (parent & held::PARENT_MASK));
    // A full ring only delays the decision to the daemon's next scan.
    let _ = BG_PENDING_EV.output::<PendingEvent>(PendingEvent { tgid, _pad: 0 }, 0);
}

#[inline(always)]
fn set_held(tgid: u32, state: u32) {
    match BG_HELD.get_ptr_mut(tgid) {
        Some(slot) => unsafe { *slot = state },
        // Not reachable (the array covers every pid the kernel can give
        // out); should it ever be, the caller, an agent, dies rather than
        // leave a process unguarded.
        None => unsafe {
            bpf_send_signal(SIGKILL);
        },
    }
}

/// Forgets whatever marks `tgid` carries, at exit: a recycled pid starts clean.
#[inline(always)]
pub fn forget(tgid: u32) {
    if BG_LABELS.remove(tgid).is_ok() {
        count(counter::LABELS_DROPPED);
    }
    if let Some(slot) = BG_HELD.get_ptr_mut(tgid) {
        if unsafe { *slot } != 0 {
            unsafe { *slot = 0 };
        }
    }
}

/// The hold state of `tgid` (0: not held).
#[inline(always)]
pub fn held_state(tgid: u32) -> u32 {
    match BG_HELD.get(tgid) {
        Some(v) => *v,
        None => 0,
    }
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
    if held_state(tgid) != 0 {
        return Some(REFUSED);
    }
    let uid = bpf_get_current_uid_gid() as u32;
    if let Some(a) = BG_ENROL_UIDS.get_ptr(uid) {
        let agent = unsafe { *a };
        label(tgid, agent, origin::UID, tgid, 0);
        return Some(agent);
    }
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    if let Some(a) = BG_ENROL_CGROUPS.get_ptr(cgroup) {
        let agent = unsafe { *a };
        label(tgid, agent, origin::CGROUP, tgid, 0);
        return Some(agent);
    }
    None
}

/// Agent id -> name, for the daemon only: kept beside the labels in the pin
/// directory so a restarted daemon can still name the agents it labelled.
#[map]
pub static BG_AGENT_NAMES: HashMap<u32, AgentName> = HashMap::pinned(MAX_ENROL, 0);

//! Lineage: labels follow processes through fork and exec and vanish at exit.
//!
//! Offsets into `task_struct` and friends come from the running kernel's BTF,
//! read by the daemon and patched into the globals below before load.

use aya_ebpf::{
    helpers::bpf_get_current_task, macros::btf_tracepoint, programs::BtfTracePointContext, Global,
};
use blastgate_common::{counter, held, origin, ExeKey};

use crate::agent::{
    count, current_agent, current_tgid, forget, held_state, label, mark_pending, mark_unstored,
    read_at, BG_ENROL_EXES, BG_ENROL_INTERP, BG_LABELS, REFUSED,
};

#[unsafe(no_mangle)]
static BG_OFF_TASK_PID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_TASK_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_BPRM_FILE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_FILE_INODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_INODE_INO: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_INODE_SB: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_SB_DEV: Global<u32> = Global::new(0);

/// Thread-group id of a task (not the caller's).
#[inline(always)]
pub fn task_tgid(task: *const u8) -> Result<u32, i32> {
    unsafe { read_at::<i32>(task, BG_OFF_TASK_TGID.load()).map(|v| v as u32) }
}

/// `sched_process_fork(parent, child)`: runs in the parent.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn blastgate_fork(ctx: BtfTracePointContext) -> i32 {
    let Some(agent) = current_agent() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(1);
    let Ok(child_pid) = (unsafe { read_at::<i32>(child, BG_OFF_TASK_PID.load()) }) else {
        return 0;
    };
    let Ok(child_tgid) = task_tgid(child) else {
        return 0;
    };
    if child_pid as u32 != child_tgid {
        // A new thread: it shares its group's label already.
        return 0;
    }
    let parent = current_tgid();
    if agent == REFUSED {
        // The descendants of a held process are held too, whatever becomes
        // of it later (exit, reparenting): refused for want of a label, or
        // pending with it until the daemon decides.
        if held_state(parent) & held::UNSTORED != 0 {
            mark_unstored(child_tgid);
        } else {
            mark_pending(child_tgid, parent);
        }
        return 0;
    }
    let (root, binding) = match BG_LABELS.get_ptr(parent) {
        Some(l) => unsafe { ((*l).root_tgid, (*l).binding) },
        None => (parent, 0),
    };
    label(child_tgid, agent, origin::FORK, root, binding);
    count(counter::LABELS_INHERITED);
    0
}

/// `sched_process_exit(task, group_dead)`: forget a process once its whole
/// thread group is gone, so a recycled pid starts clean.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn blastgate_exit_group(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 0xff != 0 {
        forget(current_tgid());
    }
    0
}

/// Fallback for kernels whose `sched_process_exit` has no `group_dead`:
/// forget the process when its last thread exits. Not when the thread-group
/// leader exits: a leader may leave (`pthread_exit`) while other threads go
/// on, and those must stay labelled. `do_exit` decrements `signal->live`
/// before this tracepoint, so the last thread out reads 0.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn blastgate_exit_leader(_ctx: BtfTracePointContext) -> i32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let live = unsafe {
        read_at::<*const u8>(task, BG_OFF_TASK_SIGNAL.load())
            .and_then(|signal| read_at::<i32>(signal, BG_OFF_SIGNAL_LIVE.load()))
    };
    if live == Ok(0) {
        forget(current_tgid());
    }
    0
}

#[unsafe(no_mangle)]
static BG_OFF_TASK_SIGNAL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static BG_OFF_SIGNAL_LIVE: Global<u32> = Global::new(0);

/// `sched_process_exec(task, old_pid, bprm)`: enrol by executable.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn blastgate_exec(ctx: BtfTracePointContext) -> i32 {
    let bprm: *const u8 = ctx.arg(2);
    let Ok(key) = exe_key(bprm) else {
        return 0;
    };
    let tgid = current_tgid();
    if let Some(a) = BG_ENROL_EXES.get_ptr(key) {
        label(tgid, unsafe { *a }, origin::EXE, tgid, 0);
    } else if BG_ENROL_INTERP.get_ptr(key).is_some()
        && BG_LABELS.get_ptr(tgid).is_none()
        && held_state(tgid) == 0
    {
        // An interpreter an `[[enrol.scripts]]` rule names: whether it runs
        // the script is read from /proc by the daemon. Until then nothing
        // of it leaves the host.
        mark_pending(tgid, 0);
    }
    0
}

#[inline(always)]
fn exe_key(bprm: *const u8) -> Result<ExeKey, i32> {
    unsafe {
        let file: *const u8 = read_at(bprm, BG_OFF_BPRM_FILE.load())?;
        let inode: *const u8 = read_at(file, BG_OFF_FILE_INODE.load())?;
        let ino: u64 = read_at(inode, BG_OFF_INODE_INO.load())?;
        let sb: *const u8 = read_at(inode, BG_OFF_INODE_SB.load())?;
        let dev: u32 = read_at(sb, BG_OFF_SB_DEV.load())?;
        Ok(ExeKey { dev, _pad: 0, ino })
    }
}

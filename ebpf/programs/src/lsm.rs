//! BPF LSM guards, loaded only where the kernel allows BPF LSM programs.
//! Without them the daemon reports `degraded: lsm unavailable`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use blastgate_common::setting;

use crate::{
    agent::{current_agent, setting},
    lineage::task_tgid,
};

const EPERM: i32 = 1;

/// Agents may not call bpf(): no loading, no detaching, no map writes.
#[lsm(hook = "bpf")]
pub fn blastgate_lsm_bpf(_ctx: LsmContext) -> i32 {
    if current_agent().is_some() {
        -EPERM
    } else {
        0
    }
}

/// Agents may not ptrace processes that are not themselves agents (the
/// daemon above all): injecting into an unlabelled process would be a way
/// out of the label.
#[lsm(hook = "ptrace_access_check")]
pub fn blastgate_lsm_ptrace(ctx: LsmContext) -> i32 {
    if current_agent().is_none() {
        return 0;
    }
    let child: *const u8 = ctx.arg(0);
    match task_tgid(child) {
        Ok(tgid) if crate::agent::BG_LABELS.get_ptr(tgid).is_some() => 0,
        _ => -EPERM,
    }
}

/// Agents may not signal the daemon.
#[lsm(hook = "task_kill")]
pub fn blastgate_lsm_kill(ctx: LsmContext) -> i32 {
    if current_agent().is_none() {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    match task_tgid(target) {
        Ok(tgid) if tgid != setting(setting::DAEMON_TGID) => 0,
        _ => -EPERM,
    }
}

//! Small, bounded readers of /proc. Every function returns `None` when the
//! process is gone or the file is not what was expected.
//!
//! These sit on the connection path, so each file is read with one open,
//! one bounded read and one close (no metadata call, no read-to-end loop).

use std::{
    fs::{self, File},
    io::Read,
    path::PathBuf,
};

/// Largest /proc file read; the ones used here are well under it.
const MAX_PROC_FILE: usize = 8192;

fn read_small(path: &str) -> Option<String> {
    let mut buf = [0u8; MAX_PROC_FILE];
    let n = File::open(path).ok()?.read(&mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// What /proc/PID/stat says about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: u32,
    /// Start time in clock ticks since boot: with the pid, it identifies a
    /// process even after its pid is reused.
    pub start_time: u64,
}

/// Parses /proc/PID/stat. The comm field is parenthesised and may itself
/// contain spaces and parentheses, so fields are counted from the last ')'.
pub fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&read_small(&format!("/proc/{pid}/stat"))?)
}

fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Field 22 overall; we are at field 5 after state (3) and ppid (4).
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        start_time,
    })
}

pub fn parent_of(pid: u32) -> Option<u32> {
    stat_of(pid).map(|s| s.ppid)
}

pub fn comm_of(pid: u32) -> Option<String> {
    stat_of(pid).map(|s| s.comm)
}

pub fn exe_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p: PathBuf| p.to_string_lossy().into_owned())
}

/// Real uid from /proc/PID/status.
pub fn uid_of(pid: u32) -> Option<u32> {
    let s = read_small(&format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The cgroup v2 path (relative to the cgroup2 root) from /proc/PID/cgroup.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let s = read_small(&format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Every thread-group id currently in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = stat_of(me).unwrap();
        assert!(s.ppid > 0);
        assert!(s.start_time > 0);
        assert!(comm_of(me).is_some());
        assert!(exe_of(me).is_some());
        assert!(uid_of(me).is_some());
        assert!(exists(me));
        assert!(all_pids().contains(&me));
    }

    #[test]
    fn comm_with_spaces_and_parens_parses() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.ppid, 7);
        assert_eq!(s.start_time, 12345);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }
}

//! A systemd service unit applied by hand, for hosts where systemd is not
//! PID 1 (this one): the unit's ExecStart runs as the unit's user with its
//! capability bounding set, no ambient or inheritable capabilities and no
//! new privileges (setpriv), inside a private mount namespace (unshare)
//! that gives it the file-system view ProtectSystem=strict, ProtectHome,
//! PrivateTmp, PrivateDevices, ProtectKernelTunables, ProtectControlGroups
//! and its writable directories give. The directives systemd enforces with
//! seccomp (SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute
//! and the other Protect*/Restrict* ones) are not emulated: [`audit_trace`]
//! checks a trace (strace) of what the daemon really called against them.
//!
//! Every directive of the unit's [Service] section must be one of those, or
//! one only the service manager acts on; anything else fails the test, so
//! a directive added to the unit cannot go untested by accident.

use std::{
    collections::BTreeSet,
    fs::File,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use super::{status_answered, text, wait_until};

/// Directives the sandbox applies.
const APPLIED: &[&str] = &[
    "ExecStartPre",
    "ExecStart",
    "User",
    "Group",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "ReadWritePaths",
    "StateDirectory",
    "StateDirectoryMode",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "LimitNOFILE",
    "TimeoutStopSec",
];

/// Directives [`audit_trace`] checks against what the daemon called.
const AUDITED: &[&str] = &[
    "SystemCallFilter",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "MemoryDenyWriteExecute",
    "RestrictNamespaces",
    "LockPersonality",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectClock",
    "ProtectHostname",
];

/// Directives only the service manager acts on (when to start, restart,
/// how to stop), or that only say how a filtered call fails.
const MANAGER: &[&str] = &[
    "Type",
    "Restart",
    "RestartSec",
    "KillMode",
    "SystemCallErrorNumber",
];

/// A unit file's settings, in order.
pub struct Unit {
    pub path: PathBuf,
    /// (section, key, value)
    entries: Vec<(String, String, String)>,
}

impl Unit {
    pub fn load(path: &Path) -> Unit {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "continued lines are not parsed: {line}"
            );
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: not key=value: {line}", path.display()));
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        Unit {
            path: path.to_path_buf(),
            entries,
        }
    }

    fn assignments<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        let key = key.to_string();
        self.entries
            .iter()
            .filter(move |(s, k, _)| s == "Service" && *k == key)
            .map(|(_, _, v)| v.as_str())
    }

    /// The last assignment of a [Service] key.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.assignments(key).last()
    }

    /// A list-valued [Service] key: assignments add words, an empty one
    /// resets the list (systemd's rule).
    pub fn list(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.assignments(key) {
            if v.is_empty() {
                out.clear();
            }
            out.extend(v.split_whitespace().map(str::to_string));
        }
        out
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.value(key), Some("yes" | "true" | "on" | "1"))
    }

    /// Fails on a [Service] directive neither applied, audited nor the
    /// manager's alone.
    pub fn assert_every_directive_is_covered(&self) {
        let unknown: BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|(s, k, _)| {
                s == "Service"
                    && ![APPLIED, AUDITED, MANAGER]
                        .iter()
                        .any(|l| l.contains(&k.as_str()))
            })
            .map(|(_, k, _)| k.as_str())
            .collect();
        assert!(
            unknown.is_empty(),
            "{}: the test neither applies nor audits {unknown:?}; teach harness/unit.rs",
            self.path.display()
        );
    }

    /// ExecStart as argv (no prefixes: it runs sandboxed, as given).
    pub fn exec_start(&self) -> Vec<String> {
        let line = self.value("ExecStart").expect("the unit has ExecStart");
        assert!(
            !line.starts_with(['@', '-', ':', '+', '!']),
            "ExecStart prefixes are not emulated: {line}"
        );
        shell_words::split(line).expect("ExecStart splits like a command line")
    }

    /// CapabilityBoundingSet, as `CAP_…` names.
    pub fn capabilities(&self) -> Vec<String> {
        self.list("CapabilityBoundingSet")
    }

    fn stop_timeout(&self) -> Duration {
        let v = self.value("TimeoutStopSec").unwrap_or("90s");
        let secs = v.trim_end_matches('s').parse().unwrap_or(90);
        Duration::from_secs(secs)
    }

    /// The paths systemd makes writable: ReadWritePaths, and StateDirectory
    /// and RuntimeDirectory with their modes.
    fn writable(&self) -> Vec<(PathBuf, Option<u32>)> {
        let mode = |key: &str| {
            self.value(key)
                .map(|m| u32::from_str_radix(m, 8).unwrap_or_else(|_| panic!("{key}={m}")))
                .unwrap_or(0o755)
        };
        let mut out: Vec<(PathBuf, Option<u32>)> = self
            .list("ReadWritePaths")
            .into_iter()
            .map(|p| (PathBuf::from(p), None))
            .collect();
        for (key, root, mode_key) in [
            ("StateDirectory", "/var/lib", "StateDirectoryMode"),
            ("RuntimeDirectory", "/run", "RuntimeDirectoryMode"),
        ] {
            for d in self.list(key) {
                out.push((Path::new(root).join(d), Some(mode(mode_key))));
            }
        }
        out
    }

    /// The RuntimeDirectory paths, which systemd removes when the unit stops.
    fn runtime_dirs(&self) -> Vec<PathBuf> {
        self.list("RuntimeDirectory")
            .into_iter()
            .map(|d| Path::new("/run").join(d))
            .collect()
    }

    /// The shell script that builds the unit's file-system view in a fresh
    /// mount namespace (slave propagation: the host's mounts reach in,
    /// none of these reach out), then execs `exec`.
    fn sandbox_script(&self, exec: &[String]) -> String {
        let mut s = String::from(
            "set -eu\n\
             ro() { mount -o remount,bind,ro \"$1\"; }\n\
             bind_ro() { mount --bind \"$1\" \"$1\"; ro \"$1\"; }\n\
             bind_rw() { mount --bind \"$1\" \"$1\"; mount -o remount,bind,rw \"$1\"; }\n\
             mounts_under() { findmnt -rn -o TARGET | sort -u | grep -E \"^$1(/|\\$)\" || true; }\n",
        );
        match self.value("ProtectSystem") {
            Some("strict") => s.push_str(
                "# ProtectSystem=strict: every mount read-only but /dev, /proc, /sys\n\
                 for m in $(findmnt -rn -o TARGET | sort -u); do\n\
                 case \"$m\" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) ;; *) ro \"$m\";; esac\n\
                 done\n",
            ),
            None | Some("no") => {}
            Some(other) => panic!("ProtectSystem={other} is not emulated"),
        }
        match self.value("ProtectHome") {
            // Already read-only under strict; separate mounts included.
            Some("read-only") => s.push_str(
                "for h in /home /root /run/user; do if [ -d \"$h\" ]; then\n\
                 if mountpoint -q \"$h\"; then ro \"$h\"; else bind_ro \"$h\"; fi; fi; done\n",
            ),
            // Nothing in place of the homes (systemd: an inaccessible
            // directory for `yes`, an empty tmpfs for `tmpfs`).
            Some(how @ ("yes" | "tmpfs")) => s.push_str(&format!(
                "for h in /home /root /run/user; do if [ -d \"$h\" ]; then\n\
                 mount -t tmpfs -o mode={},ro tmpfs \"$h\"; fi; done\n",
                if how == "yes" { "000" } else { "755" }
            )),
            None | Some("no") => {}
            Some(other) => panic!("ProtectHome={other} is not emulated"),
        }
        if self.flag("ProtectKernelTunables") {
            s.push_str(
                "for m in $(mounts_under /sys); do ro \"$m\"; done\n\
                 for p in /proc/acpi /proc/apm /proc/asound /proc/bus /proc/fs /proc/irq \
                 /proc/latency_stats /proc/mtrr /proc/scsi /proc/sys /proc/sysrq-trigger \
                 /proc/timer_stats; do if [ -e \"$p\" ]; then bind_ro \"$p\"; fi; done\n",
            );
        }
        if self.flag("ProtectControlGroups") {
            s.push_str("for m in $(mounts_under /sys/fs/cgroup); do ro \"$m\"; done\n");
        }
        if self.flag("PrivateDevices") {
            // A /dev with the pseudo-devices only, made as systemd does.
            s.push_str(
                "mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs /dev\n\
                 mknod -m 0666 /dev/null c 1 3; mknod -m 0666 /dev/zero c 1 5\n\
                 mknod -m 0666 /dev/full c 1 7; mknod -m 0666 /dev/random c 1 8\n\
                 mknod -m 0666 /dev/urandom c 1 9; mknod -m 0666 /dev/tty c 5 0\n\
                 mkdir /dev/pts /dev/shm; ln -s /proc/self/fd /dev/fd\n\
                 ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout\n\
                 ln -s /proc/self/fd/2 /dev/stderr\n",
            );
        }
        if self.flag("PrivateTmp") {
            s.push_str(
                "for t in /tmp /var/tmp; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs \"$t\"; done\n",
            );
        }
        for (path, _) in self.writable() {
            s.push_str(&format!(
                "bind_rw {}\n",
                shell_words::quote(&path.to_string_lossy())
            ));
        }
        s.push_str("exec ");
        s.push_str(&shell_words::join(exec));
        s.push('\n');
        s
    }

    /// setpriv (and prlimit) arguments for the unit's credentials and
    /// limits, with `drop` left out of the bounding set.
    fn credentials(&self, drop: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.value("LimitNOFILE") {
            let want: u64 = n.parse().unwrap_or_else(|_| panic!("LimitNOFILE={n}"));
            // Raising the hard limit needs CAP_SYS_RESOURCE, which systemd
            // has and a test may not: then the host's hard limit applies.
            let n = want.min(hard_nofile());
            static SAID: std::sync::Once = std::sync::Once::new();
            if n < want {
                SAID.call_once(|| {
                    eprintln!("LimitNOFILE={want}: this host's hard limit {n} applies instead")
                });
            }
            out.extend(["prlimit".into(), format!("--nofile={n}:{n}"), "--".into()]);
        }
        let user = self.value("User").unwrap_or("root");
        let group = self.value("Group").map(str::to_string).unwrap_or_else(|| {
            let out = Command::new("id").args(["-gn", user]).output().expect("id");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        });
        let caps = |names: Vec<String>| -> String {
            let mut s = String::from("-all");
            for n in names.iter().filter(|n| Some(n.as_str()) != drop) {
                s.push_str(",+");
                s.push_str(&n.trim_start_matches("CAP_").to_ascii_lowercase());
            }
            s
        };
        let ambient = caps(self.list("AmbientCapabilities"));
        out.extend([
            "setpriv".into(),
            format!("--reuid={user}"),
            format!("--regid={group}"),
            "--init-groups".into(),
            format!("--inh-caps={ambient}"),
            format!("--ambient-caps={ambient}"),
            format!("--bounding-set={}", caps(self.capabilities())),
        ]);
        if self.flag("NoNewPrivileges") {
            out.push("--no-new-privs".into());
        }
        out.push("--".into());
        out
    }
}

/// This process's hard limit on open files.
fn hard_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    r.rlim_max
}

/// How to start the unit's daemon.
#[derive(Default)]
pub struct Launch<'a> {
    /// A capability to leave out of the bounding set.
    pub drop: Option<&'a str>,
    /// Trace the daemon (strace -f) into this file.
    pub trace: Option<&'a Path>,
}

/// The unit's daemon, started as [`Unit`] says; stopped like systemd stops
/// it (SIGTERM, SIGKILL after TimeoutStopSec) on drop, its RuntimeDirectory
/// removed.
pub struct UnitDaemon {
    child: Option<Child>,
    /// The daemon's own pid (under strace the child is strace).
    pid: u32,
    stop_timeout: Duration,
    runtime_dirs: Vec<PathBuf>,
    pub log: PathBuf,
}

/// Why a daemon did not come up.
#[derive(Debug)]
pub struct NotStarted {
    pub status: Option<ExitStatus>,
    pub log: String,
}

impl UnitDaemon {
    /// Runs ExecStartPre, creates the writable directories, starts
    /// ExecStart in the sandbox and waits until it answers on `control`;
    /// `Err` if it exits (or hangs) first.
    pub fn start(
        unit: &Unit,
        launch: &Launch,
        control: &Path,
        log: &Path,
    ) -> Result<UnitDaemon, NotStarted> {
        for line in unit.assignments("ExecStartPre") {
            let privileged = line
                .strip_prefix('+')
                .unwrap_or_else(|| panic!("only `+` ExecStartPre lines are emulated: {line}"));
            let argv = shell_words::split(privileged).expect("ExecStartPre splits");
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .expect("ExecStartPre");
            if !out.status.success() {
                return Err(NotStarted {
                    status: Some(out.status),
                    log: format!("ExecStartPre {line}: {}", text(&out)),
                });
            }
        }
        for (dir, mode) in unit.writable() {
            if let Some(mode) = mode {
                std::fs::create_dir_all(&dir).expect("state/runtime directory");
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .expect("chmod state/runtime directory");
            }
        }
        let mut exec = unit.credentials(launch.drop);
        exec.extend(unit.exec_start());
        let mut cmd = match launch.trace {
            Some(file) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-o"])
                    .arg(file)
                    .arg("--")
                    .arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        cmd.args(["--mount", "--propagation", "slave", "--", "/bin/sh", "-c"])
            .arg(unit.sandbox_script(&exec));
        let out = File::create(log).expect("daemon log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        let child = cmd.spawn().expect("start the unit's daemon");
        let pid = child.id();
        let mut d = UnitDaemon {
            child: Some(child),
            pid,
            stop_timeout: unit.stop_timeout(),
            runtime_dirs: unit.runtime_dirs(),
            log: log.to_path_buf(),
        };
        let up = wait_until(Duration::from_secs(60), || {
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                return Some(Err(status));
            }
            status_answered(control).then_some(Ok(()))
        });
        match up {
            Some(Ok(())) => {
                if let Some(file) = launch.trace {
                    d.pid = traced_pid(file, &unit.exec_start()[0]);
                }
                Ok(d)
            }
            Some(Err(status)) => {
                d.child = None;
                d.remove_runtime_dirs();
                Err(NotStarted {
                    status: Some(status),
                    log: d.log_text(),
                })
            }
            None => {
                let log = d.log_text();
                drop(d);
                Err(NotStarted { status: None, log })
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after the unit's TimeoutStopSec, as systemd
    /// stops it; then the RuntimeDirectory goes.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling the daemon we started, by its pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = wait_until(self.stop_timeout, || child.try_wait().ok().flatten());
        let status = status.or_else(|| {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            let _ = child.kill();
            child.wait().ok()
        });
        self.remove_runtime_dirs();
        status
    }

    fn remove_runtime_dirs(&self) {
        for d in &self.runtime_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for UnitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid that exec'd `program` in a strace -f output.
fn traced_pid(trace: &Path, program: &str) -> u32 {
    let needle = format!(" execve(\"{program}\"");
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(trace).ok()?;
        let line = text.lines().find(|l| l.contains(&needle))?;
        line.split_whitespace().next()?.parse().ok()
    })
    .unwrap_or_else(|| panic!("no execve of {program} in {}", trace.display()))
}

/// One system call from a strace line: name and raw arguments.
struct Call<'a> {
    name: &'a str,
    args: &'a str,
}

fn parse_call(line: &str) -> Option<Call<'_>> {
    // "PID name(args) = ret", "PID name(args <unfinished ...>"; resumed
    // halves, signals and exits carry no new call.
    let rest = line.split_once(' ')?.1.trim_start();
    if rest.starts_with(['<', '-', '+']) {
        return None;
    }
    let (name, args) = rest.split_once('(')?;
    Some(Call { name, args })
}

/// The system calls a systemd `@group` (or a single name) stands for, as
/// this host's systemd defines them.
fn expand(item: &str, seen: &mut BTreeSet<String>, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    if !seen.insert(item.to_string()) {
        return;
    }
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .expect("systemd-analyze syscall-filter");
    assert!(
        o.status.success(),
        "systemd-analyze syscall-filter {item}: {}",
        text(&o)
    );
    for l in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let l = l.trim();
        if !l.is_empty() && !l.starts_with('#') {
            expand(l, seen, out);
        }
    }
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    let (mut seen, mut out) = (BTreeSet::new(), BTreeSet::new());
    for i in items {
        expand(i, &mut seen, &mut out);
    }
    out
}

/// What the unit's seccomp-style directives forbid, checked against the
/// daemon's trace (everything after it exec'd ExecStart): each violation,
/// as "directive: what the daemon did".
pub fn audit_trace(unit: &Unit, trace: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let exec = format!(" execve(\"{}\"", unit.exec_start()[0]);
    let start = text
        .lines()
        .position(|l| l.contains(&exec))
        .unwrap_or_else(|| panic!("no execve of ExecStart in {}", trace.display()));
    let lines: Vec<&str> = text.lines().skip(start + 1).collect();
    let calls: Vec<Call> = lines.iter().filter_map(|l| parse_call(l)).collect();
    let mut bad = BTreeSet::new();

    let filter = unit.list("SystemCallFilter");
    if !filter.is_empty() {
        assert!(
            !filter[0].starts_with('~'),
            "a deny-list SystemCallFilter is not audited"
        );
        let refs: Vec<&str> = filter.iter().map(String::as_str).collect();
        let allowed = set_of(&refs);
        for c in &calls {
            if !allowed.contains(c.name) {
                bad.insert(format!("SystemCallFilter: {}()", c.name));
            }
        }
    }
    // Calls each directive blocks outright.
    for (key, blocked) in [
        ("ProtectKernelModules", &["@module"][..]),
        ("ProtectKernelLogs", &["syslog"][..]),
        ("ProtectClock", &["@clock"][..]),
        ("ProtectHostname", &["sethostname", "setdomainname"][..]),
        ("RestrictNamespaces", &["unshare", "setns"][..]),
    ] {
        if unit.flag(key) {
            let blocked = set_of(blocked);
            for c in calls.iter().filter(|c| blocked.contains(c.name)) {
                bad.insert(format!("{key}: {}()", c.name));
            }
        }
    }
    // Calls blocked for some arguments.
    for c in &calls {
        let a = c.args;
        let checks: [(&str, bool); 7] = [
            (
                "RestrictNamespaces",
                matches!(c.name, "clone" | "clone3") && a.contains("CLONE_NEW"),
            ),
            (
                "MemoryDenyWriteExecute",
                (c.name == "mmap" && a.contains("PROT_WRITE") && a.contains("PROT_EXEC"))
                    || (matches!(c.name, "mprotect" | "pkey_mprotect") && a.contains("PROT_EXEC")),
            ),
            (
                "RestrictSUIDSGID",
                c.name.contains("chmod") && setuid_mode(a),
            ),
            (
                "RestrictRealtime",
                c.name.starts_with("sched_set")
                    && ["SCHED_FIFO", "SCHED_RR", "SCHED_DEADLINE"]
                        .iter()
                        .any(|p| a.contains(p)),
            ),
            (
                "LockPersonality",
                c.name == "personality" && !a.starts_with("0xffffffff"),
            ),
            (
                "ProtectKernelLogs",
                c.name.starts_with("open") && (a.contains("/proc/kmsg") || a.contains("/dev/kmsg")),
            ),
            (
                "ProtectKernelModules",
                c.name.starts_with("open") && a.contains("lib/modules"),
            ),
        ];
        for (key, violated) in checks {
            if violated && unit.flag(key) {
                bad.insert(format!("{key}: {}({a}", c.name));
            }
        }
    }
    let families = unit.list("RestrictAddressFamilies");
    if !families.is_empty() {
        for c in calls
            .iter()
            .filter(|c| c.name == "socket" || c.name == "socketpair")
        {
            let family = c.args.split(',').next().unwrap_or_default().trim();
            if !families.iter().any(|f| f == family) {
                bad.insert(format!("RestrictAddressFamilies: {}({family}, …)", c.name));
            }
        }
    }
    if unit.value("SystemCallArchitectures") == Some("native")
        && lines.iter().any(|l| l.contains("runs in 32 bit mode"))
    {
        bad.insert("SystemCallArchitectures: a 32-bit system call".into());
    }
    bad.into_iter().collect()
}

/// Whether a chmod-family call's mode (its last argument) sets setuid or setgid.
fn setuid_mode(args: &str) -> bool {
    let mode = args
        .rsplit(',')
        .next()
        .and_then(|m| m.split(')').next())
        .map(str::trim)
        .and_then(|m| u32::from_str_radix(m.trim_start_matches('0'), 8).ok())
        .unwrap_or(0);
    mode & 0o6000 != 0
}

//! Test harness for the end-to-end tests: a real daemon attached to the
//! real kernel, real servers on loopback, real clients.
//!
//! Everything a test starts is owned by a guard that cleans up on drop, even
//! when the test panics: daemons are stopped (SIGTERM, then SIGKILL) and
//! their pins removed with `blastgate uninstall`; cgroups are removed.
//! Daemons also get `--deadline` and PR_SET_PDEATHSIG so that a test binary
//! killed outright cannot leave a redirect behind for long.
#![allow(dead_code)]

pub mod attached;
pub mod browser;
pub mod ci_runner;
pub mod clickhouse_cluster;
pub mod dnsmasq;
pub mod git_server;
pub mod https_upstream;
pub mod job_scene;
pub mod kube;
pub mod kube_exec;
pub mod kube_gateway;
pub mod moto;
pub mod netns;
pub mod oidc;
pub mod pg_gateway;
pub mod podman;
pub mod postgres;
pub mod ssh_gateway;
pub mod sshd;
pub mod unit;
pub mod users;
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_blastgate");
pub const PROBE: &str = env!("CARGO_BIN_EXE_blastgate-probe");

/// Tests attach at the cgroup root and share the kernel: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Root and a BTF kernel are required; skipping is loud, and fatal in CI.
pub fn kernel_ready() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        blastgate::testing::skip("end-to-end kernel tests need root");
        return false;
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        blastgate::testing::skip("kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    true
}

pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A port free on both 127.0.0.1 and ::1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(l4) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = l4.local_addr().map(|a| a.port()) else {
            continue;
        };
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 and ::1");
}

/// A tiny HTTP/1.0 server: answers every request with who it saw connect.
/// Records each peer address, so tests can tell a direct connection (the
/// peer is the client itself) from a proxied one (the peer is the daemon).
pub struct TestServer {
    pub addrs: Vec<SocketAddr>,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    pub accepted: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn start(ips: &[&str]) -> TestServer {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut addrs = Vec::new();
        let port = free_port_on(ips);
        for ip in ips {
            let l =
                TcpListener::bind((*ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
            let addr = l.local_addr().expect("local addr");
            addrs.push(addr);
            let peers = peers.clone();
            let accepted = accepted.clone();
            thread::spawn(move || {
                for conn in l.incoming() {
                    let Ok(mut c) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let peers = peers.clone();
                    thread::spawn(move || {
                        let peer = c.peer_addr().ok();
                        if let Some(p) = peer {
                            peers.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                        }
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        read_head(&mut c);
                        let body = format!(
                            "hello from {addr}; you are {}\n",
                            peer.map(|p| p.to_string()).unwrap_or_default()
                        );
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    });
                }
            });
        }
        TestServer {
            addrs,
            peers,
            accepted,
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    pub fn saw_peer(&self, peer: &str) -> bool {
        let Ok(p) = peer.parse::<SocketAddr>() else {
            return false;
        };
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&p)
    }
}

/// Reads an HTTP request up to the end of its head (or EOF, an error, the
/// stream's read timeout).
pub fn read_head(c: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// A command's stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A UDP port free on 127.0.0.1 and ::1.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = s.local_addr().map(|a| a.port()) else {
            continue;
        };
        if std::net::UdpSocket::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no UDP port free on 127.0.0.1 and ::1");
}

pub fn free_port_on(ips: &[&str]) -> u16 {
    'outer: for _ in 0..100 {
        let port = free_port();
        for ip in ips {
            if TcpListener::bind((*ip, port)).is_err() {
                continue 'outer;
            }
        }
        return port;
    }
    panic!("no port free on {ips:?}");
}

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A daemon's files and addresses: config, pins, spool, control socket.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    /// The resolver's UDP port on 127.0.0.1 and ::1.
    pub dns_port: u16,
    pub pin_dir: PathBuf,
    pub spool: PathBuf,
    pub control: PathBuf,
}

impl Env {
    /// `extra` is appended to the generated config (targets, enrolment).
    pub fn new(extra: &str) -> Env {
        Env::with_bpf("", extra)
    }

    /// Like [`Env::new`], with `bpf` added to the `[bpf]` section.
    pub fn with_bpf(bpf: &str, extra: &str) -> Env {
        Env::with_sections(bpf, "", extra)
    }

    /// Like [`Env::with_bpf`], with `dns` added to the `[dns]` section.
    /// Unless `dns` names `upstreams`, the resolver forwards to a loopback
    /// port nobody serves: no test's lookup may leave the host.
    pub fn with_sections(bpf: &str, dns: &str, extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("blastgate-e2e")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let dns_port = free_udp_port();
        let upstreams = if dns.contains("upstreams") {
            ""
        } else {
            "upstreams = [\"127.0.0.1:9\"]\n"
        };
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/blastgate-test-{}-{n}",
            std::process::id()
        ));
        let spool = dir.path().join("spool");
        let control = dir.path().join("control.sock");
        let config = dir.path().join("blastgate.toml");
        let text = format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\nshutdown_grace_ms = 1000\n\n\
             [control]\nsocket = \"{}\"\n\n[bpf]\npin_dir = \"{}\"\n{bpf}\n\n[records]\nspool_dir = \"{}\"\n\n\
             [dns]\nlisten = \"127.0.0.1:{dns_port}\"\n{upstreams}{dns}\n\n[tls]\nca_dir = \"{}\"\n\n{extra}\n",
            control.display(),
            pin_dir.display(),
            spool.display(),
            dir.path().join("ca").display()
        );
        std::fs::write(&config, text).expect("write config");
        Env {
            dir,
            config,
            port,
            dns_port,
            pin_dir,
            spool,
            control,
        }
    }

    /// Every event in the spool, in order.
    pub fn events(&self) -> Vec<Value> {
        spool_events(&self.spool)
    }

    /// Waits for an event matching `pred`.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(10), || {
            self.events().into_iter().find(|e| pred(e))
        })
        .unwrap_or_else(|| panic!("no event {what} in the spool; events: {:#?}", self.events()))
    }

    /// Waits until the events matching `pred` number at least `n`, and
    /// returns them all. A record written at a channel's or session's end
    /// reaches the spool after the client has its answer, so a count read
    /// once races the writer.
    pub fn wait_events(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        wait_until(Duration::from_secs(10), || {
            let found: Vec<Value> = self.events().into_iter().filter(|e| pred(e)).collect();
            (found.len() >= n).then_some(found)
        })
        .unwrap_or_else(|| {
            panic!(
                "fewer than {n} events {what} in the spool; events: {:#?}",
                self.events()
            )
        })
    }

    pub fn count_events(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }

    /// The number of events matching `pred` once it reaches `n`, or what
    /// it is when the wait gives up: for a caller whose own assertion on
    /// the count says what went wrong. A count read once races the writer
    /// (records reach the spool after the client has its answer).
    pub fn wait_count(&self, n: usize, pred: impl Fn(&Value) -> bool) -> usize {
        wait_until(Duration::from_secs(10), || {
            let found = self.count_events(&pred);
            (found >= n).then_some(found)
        })
        .unwrap_or_else(|| self.count_events(&pred))
    }

    /// `sh -c script` run to completion as agent `name`, with glibc's
    /// resolver pointed at 127.0.0.53 (a private mount of resolv.conf), so
    /// its lookups reach blastgate's resolver and, were the redirect to
    /// fail, nothing would leave the host.
    pub fn agent_resolving(&self, name: &str, script: &str) -> Output {
        let wrapped = format!(
            "f=$(mktemp) && echo 'nameserver 127.0.0.53' > $f && mount --bind $f /etc/resolv.conf \
             && rm -f $f && {script}"
        );
        self.agent(name, &["unshare", "-m", "sh", "-c", &wrapped])
            .output()
            .expect("agent")
    }

    /// `blastgate run --agent NAME -- CMD…` as a command ready to spawn.
    pub fn agent(&self, name: &str, cmd: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(["run", "--agent", name, "--config"])
            .arg(&self.config)
            .arg("--")
            .args(cmd);
        c
    }

    /// The id of the first pending approval, once there is one.
    pub fn pending_approval(&self) -> String {
        wait_until(Duration::from_secs(20), || {
            let out = self.blastgate(&["approvals", "list", "--json"]);
            let list: Value = serde_json::from_slice(&out.stdout).ok()?;
            list.as_array()?
                .first()
                .and_then(|r| r["id"].as_str().map(str::to_string))
        })
        .expect("a held request")
    }

    /// `blastgate approvals approve|deny ID`, which must succeed.
    pub fn answer_approval(&self, verb: &str, id: &str) {
        let out = self.blastgate(&["approvals", verb, id]);
        assert!(
            out.status.success(),
            "approvals {verb} {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn blastgate(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args).arg("--config").arg(&self.config);
        c.output().expect("run blastgate")
    }
}

/// A running daemon; stopped and uninstalled on drop.
pub struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    pin_dir: PathBuf,
    control: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(env: &Env) -> Daemon {
        Daemon::start_in(env, None)
    }

    /// The daemon in the network namespace `netns` (a name under
    /// /run/netns): its proxy and resolver listen on that namespace's
    /// loopback, where the kernel sends the connections of agents in that
    /// namespace (the hooks are the machine's, the redirect is to the
    /// caller's own loopback).
    pub fn start_in(env: &Env, netns: Option<&str>) -> Daemon {
        let log = env.dir.path().join(format!(
            "daemon-{}.log",
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        ));
        let out = std::fs::File::create(&log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "daemon",
            "--detach-on-exit",
            "--deadline",
            "300",
            "--config",
        ])
        .arg(&env.config)
        .env("BLASTGATE_LOG", "info,blastgate=debug")
        .stdout(out)
        .stderr(err);
        let ns = netns
            .map(|n| std::fs::File::open(format!("/run/netns/{n}")).expect("the namespace's file"));
        let ns_fd = ns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: prctl and setns in the child before exec; both are plain
        // system calls, async-signal-safe; the fd stays open in the parent
        // until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some(fd) = ns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn daemon");
        drop(ns);
        let mut d = Daemon {
            child: Some(child),
            config: env.config.clone(),
            pin_dir: env.pin_dir.clone(),
            control: env.control.clone(),
            log,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "daemon exited during start-up ({status}):\n{}",
                        d.log_text()
                    );
                }
            }
            status_answered(&d.control).then_some(())
        });
        if ready.is_none() {
            panic!("daemon did not come up:\n{}", d.log_text());
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no cleanup runs, the pins stay (fail closed).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = wait_until(Duration::from_secs(15), || c.try_wait().ok().flatten());
        if status.is_none() {
            let _ = c.kill();
            return c.wait().ok();
        }
        status
    }
}

/// Every event in the spool directory `spool`, in order.
pub fn spool_events(spool: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(segments) = blastgate::records::spool::segments(spool) else {
        return out;
    };
    for (_, path) in segments {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

/// The control socket is bound before the programs are attached; the
/// daemon is ready once it answers a status request.
pub fn status_answered(control: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(control) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"{\"op\":\"status\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.contains("\"result\":\"status\"")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Whatever happened, leave no redirect behind.
        let _ = Command::new(BIN)
            .args(["uninstall", "--config"])
            .arg(&self.config)
            .output();
        if self.pin_dir.exists() {
            eprintln!(
                "warning: {} still exists after uninstall",
                self.pin_dir.display()
            );
        }
    }
}

/// A cgroup v2 directory for a test, removed on drop (after its processes
/// have gone back to the root).
pub struct TestCgroup {
    pub path: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = blastgate::intercept::loader::find_cgroup2_root().expect("cgroup2 root");
        let path = root.join(format!("blastgate-test-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir(&path);
        TestCgroup { path, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Runs a probe (or any command) to completion and parses its JSON lines.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn run_json(cmd: &mut Command) -> Vec<Value> {
    let out = cmd.output().expect("run command");
    let lines = json_lines(&out);
    assert!(
        !lines.is_empty(),
        "no JSON output from {cmd:?}; status {}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    lines
}

/// A long-running agent that connects each time it is poked.
pub struct Interactive {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Interactive {
    pub fn spawn(mut cmd: Command) -> Interactive {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn interactive agent");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Interactive { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn poke(&mut self) -> Value {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("poke");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read probe output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad probe line {line:?}: {e}"))
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_session(e: &Value, kind: &str, pid: u64) -> bool {
    e["kind"] == kind && e["caller"]["pid"] == pid
}

/// Connects directly from this (non-agent) test process.
pub fn direct_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("direct connect");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The policy directory the project ships.
pub fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of the shipped policy files (not their tests) in `root/policies`,
/// for a test to edit.
pub fn copy_shipped_policies(root: &Path) -> PathBuf {
    let dir = root.join("policies");
    std::fs::create_dir_all(&dir).expect("mkdir policies");
    for e in std::fs::read_dir(shipped_policies())
        .expect("shipped policies")
        .flatten()
    {
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).expect("copy a policy file");
        }
    }
    dir
}

/// The real ClickHouse `cargo xtask test` starts (BLASTGATE_TEST_CLICKHOUSE);
/// without it the records tests skip loudly (and fail in CI).
pub fn clickhouse_url() -> Option<String> {
    match std::env::var("BLASTGATE_TEST_CLICKHOUSE") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            blastgate::testing::skip(
                "BLASTGATE_TEST_CLICKHOUSE is not set (cargo xtask test starts a real ClickHouse)",
            );
            None
        }
    }
}

/// Runs SQL with curl; `None` if the server refused it (e.g. the daemon
/// has not created the tables yet).
pub fn ch_try(url: &str, sql: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", sql, url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs SQL with curl; returns the TabSeparated output.
pub fn ch_query(url: &str, sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", sql, url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "clickhouse query failed: {sql}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database for one test, dropped when the test ends.
pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    pub fn new(url: &str) -> TestDatabase {
        let name = format!(
            "blastgate_test_{}_{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        );
        TestDatabase {
            url: url.to_string(),
            name,
        }
    }

    pub fn config(&self) -> String {
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n",
            self.url, self.name
        )
    }

    pub fn query(&self, sql: &str) -> String {
        ch_query(&self.url, &sql.replace("{db}", &self.name))
    }

    pub fn try_query(&self, sql: &str) -> Option<String> {
        ch_try(&self.url, &sql.replace("{db}", &self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("curl")
            .args([
                "-sS",
                "--data-binary",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
                &self.url,
            ])
            .output();
    }
}

/// A ClickHouse server of the test's own (so it can be stopped and
/// restarted), run by the xtask binary `cargo xtask test` has built; killed
/// on drop.
pub struct OwnClickhouse {
    child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    /// More `xtask clickhouse serve` arguments (a cluster node's).
    args: Vec<String>,
}

impl OwnClickhouse {
    pub fn start(data: &Path) -> Option<OwnClickhouse> {
        OwnClickhouse::start_with(data, free_port(), Vec::new())
    }

    /// On HTTP port `port`, with more `xtask clickhouse serve` arguments.
    pub fn start_with(data: &Path, port: u16, args: Vec<String>) -> Option<OwnClickhouse> {
        let exe = std::env::current_exe().ok()?;
        // target/debug/deps/records-… -> target/debug/xtask
        let xtask = exe.parent()?.parent()?.join("xtask");
        if !xtask.exists() {
            blastgate::testing::skip(&format!(
                "{} not built (cargo xtask test builds it)",
                xtask.display()
            ));
            return None;
        }
        let mut ch = OwnClickhouse {
            child: None,
            port,
            data: data.to_path_buf(),
            args,
        };
        ch.resume(&xtask);
        Some(ch)
    }

    fn xtask() -> PathBuf {
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("xtask")
    }

    fn resume(&mut self, xtask: &Path) {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("log");
        std::fs::create_dir_all(&self.data).expect("data dir");
        let child = Command::new(xtask)
            .args([
                "clickhouse",
                "serve",
                "--port",
                &self.port.to_string(),
                "--data",
            ])
            .arg(&self.data)
            .args(&self.args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start clickhouse");
        self.child = Some(child);
        let url = self.url();
        wait_until(Duration::from_secs(60), || {
            ch_try(&url, "SELECT 1").map(|_| ())
        })
        .expect("own clickhouse did not come up");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGTERM and wait: an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_until(Duration::from_secs(30), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Start again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.resume(&Self::xtask());
    }
}

impl Drop for OwnClickhouse {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Attacks on the kernel side of interception, against the real kernel:
//! a label map filled past capacity, packet sockets through every syscall
//! entry. Each attack sits beside the harmless look-alike that must keep
//! working.

mod harness;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use harness::*;
use serde_json::Value;

fn tcp_target(server: &TestServer) -> String {
    let addrs: Vec<String> = server.addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddresses = [{}]\n",
        addrs.join(", ")
    )
}

/// An agent running `blastgate-probe fork-hold`: its children stay alive
/// (holding their labels) until it is dropped.
struct ForkHold {
    child: Child,
    children: Vec<Value>,
    summary: Value,
}

impl ForkHold {
    fn start(env: &Env, n: usize, addr: &str, double: bool) -> ForkHold {
        let n_arg = n.to_string();
        let mut args = vec![PROBE, "fork-hold", &n_arg, addr];
        if double {
            args.push("--double");
        }
        let mut child = env
            .agent("forker", &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn fork-hold");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut children = Vec::new();
        let summary = loop {
            let mut line = String::new();
            let read = out.read_line(&mut line).expect("read fork-hold output");
            assert!(read > 0, "fork-hold ended without a summary: {children:?}");
            let v: Value = serde_json::from_str(&line).expect("a JSON line");
            if v["op"] == "fork-hold-summary" {
                break v;
            }
            children.push(v);
        };
        assert_eq!(summary["ok"], true, "{summary}; {children:?}");
        ForkHold {
            child,
            children,
            summary,
        }
    }

    fn refused(&self) -> Vec<&Value> {
        self.children.iter().filter(|v| v["ok"] != true).collect()
    }

    fn allowed(&self) -> Vec<&Value> {
        self.children.iter().filter(|v| v["ok"] == true).collect()
    }
}

impl Drop for ForkHold {
    fn drop(&mut self) {
        // Closing stdin releases the children; they exit at once.
        drop(self.child.stdin.take());
        if wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn metrics_text(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: m\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    out
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// No connection of `hold`'s processes reached the server without the proxy.
fn none_went_direct(server: &TestServer, hold: &ForkHold) {
    for v in &hold.children {
        let local = v["local"].as_str().unwrap_or_default();
        assert!(
            local.is_empty() || !server.saw_peer(local),
            "a child's connection went around the proxy: {v}"
        );
    }
}

#[test]
fn a_full_label_map_refuses_what_it_cannot_label_and_raises_an_alarm() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let dst = server.addr(0).to_string();
    let metrics_port = free_port();
    let env = Env::with_bpf(
        "max_labels = 32",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n{}",
            tcp_target(&server)
        ),
    );
    let mut d = Daemon::start(&env);

    // Look-alike: an agent with fewer children than the map holds. All of
    // them go through the proxy, and nothing is alarming.
    {
        let hold = ForkHold::start(&env, 8, &dst, false);
        assert_eq!(hold.allowed().len(), 8, "{:?}", hold.children);
        none_went_direct(&server, &hold);
        let text = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
        assert!(!text.contains("ALARM"), "{text}");
        assert_eq!(
            metric(&metrics_text(metrics_port), "blastgate_labels_unstored"),
            Some(0)
        );
    }

    // The attack: more live children than the map holds. Those that get no
    // label are refused, not let through directly.
    let n = 48;
    let hold = ForkHold::start(&env, n, &dst, false);
    none_went_direct(&server, &hold);
    let refused = hold.refused();
    assert!(
        refused.len() >= n - 32,
        "{} of {n} children refused with a 32-label map: {:?}",
        refused.len(),
        hold.children
    );
    for v in &refused {
        assert_eq!(v["errno"].as_i64(), Some(i64::from(libc::EPERM)), "{v}");
    }
    assert!(
        hold.allowed().len() >= 16,
        "the children that fit still work: {:?}",
        hold.children
    );

    // While the map is full, processes that are not agents are untouched.
    assert!(direct_get(server.addr(0)).contains("hello from"));
    let v = &run_json(Command::new(PROBE).args(["connect", &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "{v}"
    );

    // `blastgate run` cannot label a new agent while the map is full: the
    // command is not started, and the error says why.
    let out = env
        .agent("late", &[PROBE, "connect", &dst])
        .output()
        .expect("blastgate run");
    assert!(!out.status.success(), "{out:?}");
    assert!(json_lines(&out).is_empty(), "the agent ran: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("label map is full"), "{err}");

    // The alarm: status says so (text and JSON), and so does /metrics.
    let text = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    assert!(text.starts_with("ALARM: "), "{text}");
    assert!(text.contains("max_labels"), "{text}");
    let json: Value =
        serde_json::from_slice(&env.blastgate(&["status", "--json"]).stdout).expect("status json");
    assert!(
        !json["alarms"].as_array().expect("alarms").is_empty(),
        "{json}"
    );
    let unstored = metric(&metrics_text(metrics_port), "blastgate_labels_unstored");
    assert!(unstored >= Some(refused.len() as u64), "{unstored:?}");
    drop(hold);

    // Double fork: every child forks a grandchild and exits, so the
    // grandchildren are reparented away from the agent. Those that could
    // not be labelled stay refused.
    let hold = ForkHold::start(&env, n, &dst, true);
    let forker = hold.summary["pid"].as_u64().expect("forker pid");
    none_went_direct(&server, &hold);
    assert!(
        hold.children
            .iter()
            .all(|v| v["ppid"].as_u64() != Some(forker)),
        "grandchildren were reparented: {:?}",
        hold.children
    );
    assert!(
        hold.refused().len() >= n - 32,
        "{} of {n} reparented grandchildren refused: {:?}",
        hold.refused().len(),
        hold.children
    );

    // The kernel goes on refusing without the daemon, and status still
    // raises the alarm from the pinned counters.
    d.kill9();
    let text = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    assert!(text.contains("daemon: not running"), "{text}");
    assert!(text.contains("ALARM: "), "{text}");
}

#[test]
fn a_label_map_setting_below_the_floor_is_refused() {
    let env = Env::with_bpf("max_labels = 2", "");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&env.config)
        .output()
        .expect("run check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("max_labels"), "{err}");
}

/// Who runs a probe: not an agent, a root agent (CAP_NET_RAW), or an
/// unprivileged agent.
#[derive(Debug, Clone, Copy)]
enum Who {
    Outsider,
    Root,
    Unprivileged,
}

/// Runs `probe ARGS…` as `who` and tells whether it was killed.
fn killed(env: &Env, who: Who, args: &[&str]) -> (bool, Vec<Value>) {
    let out = match who {
        Who::Outsider => Command::new(PROBE).args(args).output(),
        Who::Root => {
            let mut cmd_args = vec![PROBE];
            cmd_args.extend(args);
            env.agent("sniffer", &cmd_args).output()
        }
        Who::Unprivileged => Command::new(BIN)
            .args(["run", "--agent", "sniffer", "--user", "nobody", "--config"])
            .arg(&env.config)
            .arg("--")
            .arg(PROBE)
            .args(args)
            .output(),
    }
    .expect("run probe");
    (out.status.signal() == Some(libc::SIGKILL), json_lines(&out))
}

const AF_UNIX: &str = "1";
const AF_INET: &str = "2";
const AF_NETLINK: &str = "16";
const AF_PACKET: &str = "17";
/// To the hypervisor host, where there is one (this machine has a vsock).
const AF_VSOCK: &str = "40";
const AF_XDP: &str = "44";
const SOCK_STREAM: &str = "1";
const SOCK_DGRAM: &str = "2";
const SOCK_RAW: &str = "3";

#[test]
fn packet_sockets_kill_an_agent_whatever_the_syscall_entry() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let dst = server.addr(0).to_string();
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);

    let attacks: &[&[&str]] = &[
        &["packet"],
        &["packet-legacy"],
        &["socket32", AF_PACKET, SOCK_RAW],
        &["socket32", AF_PACKET, SOCK_RAW, "--socketcall"],
        &["socket32", AF_INET, "10", "--socketcall"],
        &["uring-socket", AF_PACKET, SOCK_RAW],
        // Other families the cgroup hooks never see.
        &["socket", AF_VSOCK, SOCK_STREAM],
        &["socket", AF_XDP, SOCK_RAW],
        &["socket32", AF_VSOCK, SOCK_STREAM],
    ];
    for args in attacks {
        // Not an agent (root, outside the agent set): it gets its socket.
        let (dead, lines) = killed(&env, Who::Outsider, args);
        assert!(!dead, "a non-agent was killed for {args:?}");
        assert_eq!(lines[0]["ok"], true, "non-agent {args:?}: {lines:?}");
        // An agent dies before it can use it.
        let (dead, lines) = killed(&env, Who::Root, args);
        assert!(dead, "an agent survived {args:?}: {lines:?}");
    }

    // io_uring runs a whole batch before a kill lands: a packet socket and
    // a linked sendmsg on it put a frame on the wire. An agent that could
    // make packet sockets (CAP_NET_RAW) therefore gets no ring at all.
    let ethertype = "34997";
    for (who, expect_frame) in [(Who::Outsider, true), (Who::Root, false)] {
        let mut listener = Command::new(PROBE)
            .args(["packet-listen", ethertype, "1500"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("listener");
        let mut out = BufReader::new(listener.stdout.take().expect("stdout"));
        let mut ready = String::new();
        out.read_line(&mut ready).expect("listener ready");
        let (dead, lines) = killed(&env, who, &["uring-packet-chain", ethertype]);
        let mut heard = String::new();
        out.read_line(&mut heard).expect("listener result");
        let _ = listener.wait();
        let heard: Value = serde_json::from_str(&heard).expect("listener json");
        assert_eq!(dead, !expect_frame, "{who:?}: {lines:?}");
        assert_eq!(heard["received"], expect_frame, "{who:?}: {heard}");
    }

    // Look-alikes: ordinary sockets through the same entries are fine for
    // agents, and io_uring and 32-bit socketcall for unprivileged ones.
    // An unprivileged agent too: vsock needs no privilege at all.
    for args in [
        &["socket", AF_VSOCK, SOCK_STREAM][..],
        &["uring-socket", AF_VSOCK, SOCK_STREAM],
        &["socket32", AF_VSOCK, SOCK_STREAM, "--socketcall"],
    ] {
        let (dead, lines) = killed(&env, Who::Unprivileged, args);
        assert!(dead, "an unprivileged agent survived {args:?}: {lines:?}");
    }

    let harmless: &[(Who, &[&str])] = &[
        (Who::Root, &["socket32", AF_INET, SOCK_STREAM]),
        (Who::Root, &["socket", AF_UNIX, SOCK_STREAM]),
        (Who::Root, &["socket", AF_NETLINK, SOCK_RAW]),
        (Who::Unprivileged, &["socket", AF_NETLINK, SOCK_DGRAM]),
        (Who::Root, &["udp", "127.0.0.53:53"]),
        (
            Who::Unprivileged,
            &["socket32", AF_INET, SOCK_DGRAM, "--socketcall"],
        ),
        (Who::Unprivileged, &["uring-socket", AF_INET, SOCK_STREAM]),
        (Who::Unprivileged, &["uring", &dst]),
    ];
    for (who, args) in harmless {
        let (dead, lines) = killed(&env, *who, args);
        assert!(!dead, "{who:?} was killed for {args:?}");
        assert_eq!(lines[0]["ok"], true, "{who:?} {args:?}: {lines:?}");
    }
    assert!(
        !server.saw_peer(
            killed(&env, Who::Unprivileged, &["uring", &dst]).1[0]["local"]
                .as_str()
                .unwrap_or_default()
        ),
        "an io_uring connect went around the proxy"
    );
    let status = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    assert!(status.contains("packet_sockets_killed: 13"), "{status}");
    // Every guard above is attached: none of them is reported missing.
    for d in status.lines().filter(|l| l.starts_with("degraded:")) {
        assert!(
            d == "degraded: none" || d == "degraded: lsm unavailable",
            "{status}"
        );
    }
}

/// A Node.js agent CLI: connects to its last argument (`ip:port`), prints
/// one JSON line; with `--spawn PROBE` it first runs `PROBE connect` as a
/// child and prints that child's line too.
const CLI_JS: &str = r#"#!/usr/bin/env node
const net = require('net');
const { execFileSync } = require('child_process');
const args = process.argv.slice(2);
const dst = args[args.length - 1];
const i = args.indexOf('--spawn');
if (i >= 0) {
  process.stdout.write(execFileSync(args[i + 1], ['connect', dst]));
}
const [host, port] = [dst.slice(0, dst.lastIndexOf(':')), +dst.slice(dst.lastIndexOf(':') + 1)];
function once() {
  let local = '';
  let body = '';
  const s = net.connect({ host, port }, () => {
    local = `${s.localAddress}:${s.localPort}`;
    s.write('GET / HTTP/1.0\r\nHost: cli\r\n\r\n');
  });
  s.on('data', (d) => { body += d; });
  s.on('end', () => console.log(JSON.stringify({ op: 'cli', ok: body.length > 0, local, pid: process.pid, response: body })));
  s.on('error', (e) => console.log(JSON.stringify({ op: 'cli', ok: false, error: e.message, code: e.code, pid: process.pid })));
}
if (args.includes('--interactive')) {
  require('readline').createInterface({ input: process.stdin }).on('line', once);
} else {
  once();
}
"#;

fn node() -> Option<std::path::PathBuf> {
    let node = std::fs::canonicalize("/usr/bin/node").ok();
    if node.is_none() {
        blastgate::testing::skip("no /usr/bin/node");
    }
    node
}

fn write_script(path: &std::path::Path) {
    std::fs::write(path, CLI_JS).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn an_agent_that_is_a_node_script_is_enrolled_however_it_is_started() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(node) = node() else {
        return;
    };
    let server = TestServer::start(&["127.0.0.2"]);
    let dst = server.addr(0).to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir(&agent_dir).expect("mkdir");
    let cli = agent_dir.join("cli.js");
    write_script(&cli);
    // Same content, another file: not the enrolled script.
    let other = dir.path().join("other.js");
    write_script(&other);
    // Already running when the daemon starts: found by the start-up scan.
    let mut early = Interactive::spawn({
        let mut c = Command::new(&node);
        c.args([cli.to_str().expect("utf-8 path"), "--interactive", &dst]);
        c
    });
    let v = early.poke();
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "direct before the daemon: {v}"
    );
    let env = Env::new(&format!(
        "[[enrol.scripts]]\ninterpreter = \"{}\"\nscript = \"{}\"\nagent = \"claude\"\n\n{}",
        node.display(),
        cli.display(),
        tcp_target(&server)
    ));
    let _d = Daemon::start(&env);
    let v = early.poke();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "a running script matching a rule is labelled at start: {v}"
    );

    let through_proxy = |what: &str, mut cmd: Command| {
        let lines = run_json(&mut cmd);
        for v in &lines {
            assert_eq!(v["ok"], true, "{what}: {v}");
            let local = v["local"].as_str().unwrap_or_default();
            assert!(
                !server.saw_peer(local),
                "{what}: the enrolled script went around the proxy: {v}"
            );
            let pid = v["pid"].as_u64().expect("pid");
            let ev = env.wait_event(what, |e| is_session(e, "session_closed", pid));
            assert_eq!(ev["caller"]["agent"], "claude", "{what}: {ev}");
        }
        lines
    };

    // By absolute path, by relative path from its directory, and run
    // directly through its `#!/usr/bin/env node` line.
    let mut c = Command::new(&node);
    c.args([cli.to_str().expect("utf-8 path"), &dst]);
    through_proxy("node /abs/cli.js", c);
    let mut c = Command::new(&node);
    c.args(["cli.js", &dst]).current_dir(&agent_dir);
    through_proxy("node cli.js", c);
    let mut c = Command::new("./cli.js");
    c.arg(&dst).current_dir(&agent_dir);
    through_proxy("./cli.js", c);
    // Through a symlink: the same file.
    let link = dir.path().join("claude");
    std::os::unix::fs::symlink(&cli, &link).expect("symlink");
    let mut c = Command::new(&link);
    c.arg(&dst);
    through_proxy("a symlink to the script", c);
    // Its children are the agent too (forked while it may still be pending).
    let mut c = Command::new(&node);
    c.args([cli.to_str().expect("utf-8 path"), "--spawn", PROBE, &dst]);
    let lines = through_proxy("a child of the script", c);
    assert_eq!(lines.len(), 2, "{lines:?}");

    // Look-alikes: node running a script that is not listed (a copy, by
    // content, is another file) is not an agent and reaches the server
    // directly; so does node with no script.
    let v = &run_json(Command::new(&node).args([other.to_str().expect("utf-8"), &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "an unlisted script must go direct: {v}"
    );
    let out = Command::new(&node)
        .args(["-e", "console.log(1+1)"])
        .output()
        .expect("node -e");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // Nothing is left held.
    let status: Value =
        serde_json::from_slice(&env.blastgate(&["status", "--json"]).stdout).expect("status");
    assert!(
        status["alarms"].as_array().is_some_and(Vec::is_empty),
        "{status}"
    );
}

/// The daemon attaches one of two exit handlers, by the kernel's
/// tracepoint signature; the other one must still be sound where it is
/// used. Load (verify) it here, without attaching anything.
#[test]
fn the_fallback_exit_handler_loads_and_keeps_a_label_until_the_last_thread_exits() {
    if !kernel_ready() {
        return;
    }
    use blastgate::intercept::{btf::Btf, loader};
    let pin = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/blastgate-test-{}-verify",
        std::process::id()
    ));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = loader::uninstall(&self.0);
        }
    }
    let _cleanup = Cleanup(pin.clone());
    loader::ensure_bpffs(&pin).expect("bpffs");
    let btf = Btf::from_sys_fs().expect("btf");
    let (mut ebpf, _) = loader::load(&pin, &btf, 0, 64).expect("load the object");
    let kernel_btf = aya::Btf::from_sys_fs().expect("kernel btf");
    for name in [
        blastgate_common::program::EXIT_GROUP,
        blastgate_common::program::EXIT_LEADER,
    ] {
        let prog: &mut aya::programs::BtfTracePoint = ebpf
            .program_mut(name)
            .expect("program in the object")
            .try_into()
            .expect("a tp_btf program");
        prog.load("sched_process_exit", &kernel_btf)
            .unwrap_or_else(|e| panic!("{name} does not load: {e:?}"));
    }

    // And it behaves: attached alone (nothing else uses this object's
    // maps), it keeps a label while the thread-group leader has left but
    // another thread runs, and drops it when the last thread exits.
    let maps = blastgate::intercept::KernelMaps::from_ebpf(&mut ebpf, None).expect("maps");
    let prog: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(blastgate_common::program::EXIT_LEADER)
        .expect("program")
        .try_into()
        .expect("tp_btf");
    let link = prog.attach().expect("attach the fallback exit handler");
    let mut child = Command::new(PROBE)
        .arg("leader-exit")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    maps.label(
        pid,
        blastgate_common::Label {
            agent_id: 1,
            origin: blastgate_common::origin::RUN,
            root_tgid: pid,
            binding: 0,
        },
    )
    .expect("label");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("started");
    // The leader is gone once /proc shows it as a zombie thread.
    let leader_gone = wait_until(Duration::from_secs(5), || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).ok()?;
        status.contains("State:\tZ").then_some(())
    });
    assert!(leader_gone.is_some(), "the leader did not exit");
    assert!(
        maps.label_of(pid).is_some(),
        "the label went with the leader while another thread still runs"
    );
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("poke");
    let _ = child.wait();
    assert!(
        wait_until(Duration::from_secs(5), || maps
            .label_of(pid)
            .is_none()
            .then_some(()))
        .is_some(),
        "the label outlived the process"
    );
    prog.detach(link).expect("detach");
}

//! The interception core against the real kernel: redirect, identity,
//! default deny, escape routes, fail-closed, and load.

mod harness;

use std::{process::Command, time::Duration};

use harness::*;
use serde_json::Value;

fn tcp_target(server: &TestServer) -> String {
    let addrs: Vec<String> = server.addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddresses = [{}]\n",
        addrs.join(", ")
    )
}

fn pid_of(v: &Value) -> u64 {
    v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {v}"))
}

#[test]
fn agent_connection_goes_through_the_proxy_and_is_recorded() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    // Not an agent: direct, and nothing recorded.
    let direct = run_json(Command::new(PROBE).args(["connect", &dst]));
    assert_eq!(direct[0]["ok"], true, "{direct:?}");
    let local = direct[0]["local"].as_str().unwrap_or_default();
    assert!(
        server.saw_peer(local),
        "a non-agent's connection must reach the server directly"
    );
    assert_eq!(direct[0]["peer"], dst.as_str());
    let direct_pid = pid_of(&direct[0]);

    // An agent: through the proxy.
    let agent = run_json(&mut env.agent("a", &[PROBE, "connect", &dst]));
    let v = &agent[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["response"]
            .as_str()
            .unwrap_or_default()
            .contains("hello from"),
        "{v}"
    );
    let local = v["local"].as_str().unwrap_or_default();
    assert!(
        !server.saw_peer(local),
        "an agent's connection must not reach the server directly"
    );
    let pid = pid_of(v);

    let closed = env.wait_event("session_closed for the agent", |e| {
        is_session(e, "session_closed", pid)
    });
    let c = &closed["caller"];
    assert_eq!(c["agent"], "a");
    assert_eq!(c["comm"], "blastgate-probe");
    // SAFETY: getuid has no preconditions.
    assert_eq!(c["uid"], u64::from(unsafe { libc::getuid() }));
    assert_eq!(closed["orig_dst"], dst.as_str());
    assert_eq!(closed["target"], "orders-db");
    assert_eq!(closed["verdict"], "allow");
    assert!(closed["bytes_from_agent"].as_u64().unwrap_or(0) > 0);
    assert!(closed["bytes_to_agent"].as_u64().unwrap_or(0) > 0);
    let opened = env.wait_event("session_opened", |e| is_session(e, "session_opened", pid));
    assert_eq!(opened["session_id"], closed["session_id"]);
    assert!(opened["seq"].as_u64() < closed["seq"].as_u64());
    assert_ne!(opened["id"], closed["id"]);

    // The agent's events are in; the earlier direct connection left none.
    assert_eq!(env.count_events(|e| e["caller"]["pid"] == direct_pid), 0);

    // --user drops privileges after labelling: still an agent.
    let v = &run_json(
        Command::new(BIN)
            .args([
                "run",
                "--agent",
                "unprivileged",
                "--user",
                "nobody",
                "--config",
            ])
            .arg(&env.config)
            .args(["--", PROBE, "connect", &dst]),
    )[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(!server.saw_peer(v["local"].as_str().unwrap_or_default()));
    let pid = pid_of(v);
    let ev = env.wait_event("--user session", |e| is_session(e, "session_closed", pid));
    assert_eq!(ev["caller"]["uid"], 65534);
    assert_eq!(ev["caller"]["agent"], "unprivileged");
}

#[test]
fn unknown_destination_is_refused_and_recorded() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let other = TestServer::start(&["127.0.0.3"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let dst = other.addr(0).to_string();

    let v = &run_json(&mut env.agent("a", &[PROBE, "connect", &dst]))[0];
    assert_eq!(
        v["ok"], false,
        "an unknown destination must be refused: {v}"
    );
    assert_eq!(other.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let pid = pid_of(v);
    let denied = env.wait_event("session_denied", |e| is_session(e, "session_denied", pid));
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["orig_dst"], dst.as_str());
    assert!(denied["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("denied by default"));

    // A non-agent still reaches it.
    assert!(direct_get(other.addr(0)).contains("hello from"));
}

#[test]
fn ipv6_and_v4_mapped_destinations_are_intercepted_with_curl() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2", "::1"]);
    let stray = TestServer::start(&["::1"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let v6 = server.addr(1);
    let port = server.addr(0).port();

    for (url, orig) in [
        (
            format!("http://[::1]:{}/", v6.port()),
            format!("[::1]:{}", v6.port()),
        ),
        (
            format!("http://[::ffff:127.0.0.2]:{port}/"),
            format!("127.0.0.2:{port}"),
        ),
    ] {
        let out = env
            .agent(
                "curl-agent",
                &["curl", "-sS", "-g", "--max-time", "10", &url],
            )
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(body.contains("hello from"), "{body}");
        // The server saw the daemon, not curl: curl's source port is not
        // what the server reports, but every connection is recorded.
        let ev = env.wait_event(&format!("session for {url}"), |e| {
            e["kind"] == "session_closed"
                && e["orig_dst"] == orig.as_str()
                && e["caller"]["comm"] == "curl"
        });
        assert_eq!(ev["caller"]["agent"], "curl-agent");
    }

    // Unknown IPv6 and v4-mapped destinations are refused.
    for url in [
        format!("http://[::1]:{}/", stray.addr(0).port()),
        format!("http://[::ffff:127.0.0.3]:{port}/"),
    ] {
        let out = env
            .agent(
                "curl-agent",
                &["curl", "-sS", "-g", "--max-time", "10", &url],
            )
            .output()
            .expect("curl");
        assert!(!out.status.success(), "curl {url} should have been refused");
    }
    assert_eq!(stray.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    env.wait_event("ipv6 denial", |e| {
        e["kind"] == "session_denied"
            && e["orig_dst"] == format!("[::1]:{}", stray.addr(0).port()).as_str()
    });
}

#[test]
fn leaving_the_cgroup_does_not_escape_interception() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    let start = TestCgroup::new("start");
    let other = TestCgroup::new("other");

    // Start inside a cgroup, then move to the root before connecting.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {BIN} run --agent a --config {} -- {PROBE} escape {} {dst}",
        start.path.display(),
        env.config.display(),
        start.root().display(),
    );
    let v = &run_json(Command::new("sh").args(["-c", &script]))[0];
    assert_eq!(v["moved"], true, "{v}");
    let v2_line = |v: &Value| {
        v["cgroup"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(v2_line(v), "0::/", "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(!server.saw_peer(v["local"].as_str().unwrap_or_default()));
    let pid = pid_of(v);
    env.wait_event("escaped agent session", |e| {
        is_session(e, "session_closed", pid)
    });

    // clone3(CLONE_INTO_CGROUP) straight into another cgroup.
    let v =
        &run_json(&mut env.agent("a", &[PROBE, "clone3", &other.path.to_string_lossy(), &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(v2_line(v).contains("blastgate-test"), "{v}");
    assert!(!server.saw_peer(v["local"].as_str().unwrap_or_default()));
    let child = v["child_pid"].as_u64().unwrap_or(0);
    env.wait_event("clone3 child session", |e| {
        is_session(e, "session_closed", child)
    });

    // Children and grandchildren.
    let lines = run_json(&mut env.agent("a", &[PROBE, "tree", &dst]));
    assert_eq!(lines.len(), 3, "{lines:?}");
    for v in &lines {
        assert_eq!(v["ok"], true, "{v}");
        assert!(
            !server.saw_peer(v["local"].as_str().unwrap_or_default()),
            "{v}"
        );
        let pid = pid_of(v);
        env.wait_event("tree session", |e| is_session(e, "session_closed", pid));
    }
}

#[test]
fn agents_get_no_udp_but_dns_and_no_raw_or_packet_sockets() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let env = Env::new("");
    let _d = Daemon::start(&env);
    let eperm = Some(libc::EPERM as i64);

    for (args, expect_ok) in [
        (vec!["udp", "127.0.0.1:9999"], false),
        (vec!["udp", "[::1]:9999"], false),
        (vec!["udp-connected", "127.0.0.1:9999"], false),
        (vec!["udp", "127.0.0.53:53"], true),
        (vec!["udp-connected", "127.0.0.53:53"], true),
        (vec!["raw"], false),
    ] {
        let mut cmd = vec![PROBE];
        cmd.extend(&args);
        let v = &run_json(&mut env.agent("a", &cmd))[0];
        assert_eq!(v["ok"], expect_ok, "{args:?}: {v}");
        if !expect_ok {
            assert_eq!(v["errno"].as_i64(), eperm, "{args:?}: {v}");
        }
    }
    // The same operations work for a process that is not an agent.
    let v = &run_json(Command::new(PROBE).args(["udp", "127.0.0.1:9999"]))[0];
    assert_eq!(v["ok"], true, "{v}");
    let v = &run_json(Command::new(PROBE).arg("raw"))[0];
    assert_eq!(v["ok"], true, "{v}");

    // An agent opening a packet socket is killed before it can use it.
    let out = env.agent("a", &[PROBE, "packet"]).output().expect("probe");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
}

#[test]
fn tcp_fast_open_and_io_uring_connects_are_intercepted() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    for op in ["tfo", "uring"] {
        // Unprivileged, as agents should run: an agent holding CAP_NET_RAW
        // gets no io_uring (see intercept_adversarial).
        let v = &run_json(
            Command::new(BIN)
                .args(["run", "--agent", "a", "--user", "nobody", "--config"])
                .arg(&env.config)
                .args(["--", PROBE, op, &dst]),
        )[0];
        assert_eq!(v["ok"], true, "{op}: {v}");
        assert!(
            !server.saw_peer(v["local"].as_str().unwrap_or_default()),
            "{op} went direct"
        );
        let pid = pid_of(v);
        env.wait_event(op, |e| is_session(e, "session_closed", pid));
    }
}

#[test]
fn a_killed_daemon_leaves_agents_refused_and_a_restart_resumes() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let mut d = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    let mut agent = Interactive::spawn(env.agent("a", &[PROBE, "interactive", &dst]));
    // A second agent, labelled now, that acts once the daemon is dead: it
    // tries to take over the proxy port, then hunts for the daemon's pid.
    let script = format!(
        "read pid; {PROBE} bind 127.0.0.1:{port}; {PROBE} bind '[::1]:{port}'; exec {PROBE} pid-reuse $pid {dst}",
        port = env.port
    );
    let mut hunter = env
        .agent("a", &["sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hunter");

    let v = agent.poke();
    assert_eq!(v["ok"], true, "{v}");

    let dead_pid = d.pid();
    d.kill9();
    let v = agent.poke();
    assert_eq!(
        v["ok"], false,
        "with the daemon dead, the agent must be refused: {v}"
    );
    assert_eq!(v["errno"].as_i64(), Some(libc::ECONNREFUSED as i64), "{v}");
    assert!(!server.saw_peer(v["local"].as_str().unwrap_or_default()));
    let out = env.blastgate(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fail closed"),
        "{out:?}"
    );
    // Non-agents are unaffected.
    assert!(direct_get(server.addr(0)).contains("hello from"));
    // An agent that gets the dead daemon's pid is still an agent (the
    // daemon is named by pid and start time): refused, not direct.
    {
        use std::io::Write;
        let mut stdin = hunter.stdin.take().expect("stdin");
        writeln!(stdin, "{dead_pid}").expect("send pid");
    }
    let out = hunter.wait_with_output().expect("hunter");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for bind in &lines[..2] {
        assert_eq!(
            bind["ok"], false,
            "an agent took over the dead daemon's port: {bind}"
        );
        assert_eq!(bind["errno"].as_i64(), Some(libc::EPERM as i64), "{bind}");
    }
    // A non-agent may (nothing to do with agents).
    let v = &run_json(Command::new(PROBE).args(["bind", &format!("127.0.0.1:{}", env.port)]))[0];
    assert_eq!(v["ok"], true, "{v}");
    let v = &lines[2];
    assert_eq!(v["reached"], true, "could not obtain pid {dead_pid}: {v}");
    assert_eq!(
        v["ok"], false,
        "an agent reusing the dead daemon's pid went direct: {v}"
    );
    assert_eq!(v["errno"].as_i64(), Some(libc::ECONNREFUSED as i64), "{v}");

    let d2 = Daemon::start(&env);
    let v = agent.poke();
    assert_eq!(
        v["ok"], true,
        "after a restart the same agent works again: {v}"
    );
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "after a restart the agent went direct: {v}\n{}\n{}",
        String::from_utf8_lossy(&env.blastgate(&["status"]).stdout),
        d2.log_text()
    );
    // `blastgate run` execs the probe, so the agent's pid is the child's.
    let pid = u64::from(agent.pid());
    // Every opened session has exactly one close: the one cut by SIGKILL
    // is closed as interrupted by the restarted daemon (unless its close
    // made it out before the kill).
    let sessions = harness::wait_until(Duration::from_secs(10), || {
        let opened = env.count_events(|e| is_session(e, "session_opened", pid));
        let closed = env.count_events(|e| is_session(e, "session_closed", pid));
        (opened == 2 && closed == 2).then_some(closed)
    });
    assert_eq!(
        sessions,
        Some(2),
        "two sessions opened and closed across the kill: {:#?}",
        env.events()
    );
    assert!(
        env.events().iter().any(|e| e["kind"] == "daemon_started"
            && e["reason"].as_str().is_some_and(|r| r.contains("attached"))),
        "the restart is recorded"
    );
}

#[test]
fn invalid_config_is_refused_with_file_line_and_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = [\"127.0.0.1:15001\"]\n\n[[targets]]\nname = \"db\"\nprotocol = \"tcp\"\nadress = \"127.0.0.2:5432\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["daemon", "--config"])
        .arg(&path)
        .output()
        .expect("run daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:7:", path.display());
    assert!(err.contains(&expected), "expected {expected:?} in {err}");
    assert!(err.contains("adress"), "{err}");

    std::fs::write(&path, "[proxy]\nlisten = [\"127.0.0.1:15001\"]\n[[targets]]\nname = \"db\"\nprotocol = \"carrier-pigeon\"\naddress = \"127.0.0.2:1\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:", path.display())) && err.contains("carrier-pigeon"),
        "{err}"
    );
}

#[test]
fn two_hundred_concurrent_agent_connections_all_succeed_and_are_recorded() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    let v = &run_json(&mut env.agent("a", &[PROBE, "many", "200", &dst]))[0];
    assert_eq!(v["succeeded"], 200, "{v}");
    let pid = pid_of(v);
    let all = harness::wait_until(Duration::from_secs(20), || {
        let n =
            env.count_events(|e| is_session(e, "session_closed", pid) && e["verdict"] == "allow");
        (n == 200).then_some(n)
    });
    assert_eq!(
        all,
        Some(200),
        "recorded {} of 200",
        env.count_events(|e| is_session(e, "session_closed", pid))
    );
    let ids: std::collections::HashSet<String> = env
        .events()
        .iter()
        .filter(|e| is_session(e, "session_closed", pid))
        .map(|e| e["session_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 200, "every session has its own id");
}

#[test]
fn enrolled_uid_is_an_agent_however_it_was_started() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&format!(
        "[enrol]\nuids = [{{ uid = 4242, agent = \"ci-runner\" }}]\n\n{}",
        tcp_target(&server)
    ));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    // Never labelled: only its uid makes it an agent.
    let v = &run_json(Command::new(PROBE).args(["as-uid", "4242", &dst]))[0];
    assert_eq!(v["ok"], true, "{v}");
    assert!(!server.saw_peer(v["local"].as_str().unwrap_or_default()));
    let pid = pid_of(v);
    let ev = env.wait_event("uid-enrolled session", |e| {
        is_session(e, "session_closed", pid)
    });
    assert_eq!(ev["caller"]["agent"], "ci-runner");
    assert_eq!(ev["caller"]["uid"], 4242);

    // Another uid is not.
    let v = &run_json(Command::new(PROBE).args(["as-uid", "4343", &dst]))[0];
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "{v}"
    );
}

#[test]
fn status_reports_programs_pins_and_degraded_features() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let env = Env::new("");
    let d = Daemon::start(&env);
    let _agent =
        Interactive::spawn(env.agent("status-agent", &[PROBE, "interactive", "127.0.0.2:1"]));
    let got = harness::wait_until(Duration::from_secs(5), || {
        let out = env.blastgate(&["status", "--json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["labelled_processes"].as_u64() >= Some(1)).then_some(s)
    })
    .expect("status with a labelled agent");
    assert_eq!(got["daemon_pid"], d.pid());
    assert_eq!(got["pin_dir"], env.pin_dir.to_string_lossy().as_ref());
    let attached: Vec<&str> = got["attached"]
        .as_array()
        .expect("attached")
        .iter()
        .filter_map(|a| a["program"].as_str())
        .collect();
    for p in [
        "blastgate_connect4",
        "blastgate_connect6",
        "blastgate_sockops",
        "blastgate_fork",
    ] {
        assert!(attached.contains(&p), "{p} not attached: {attached:?}");
        assert!(env.pin_dir.join("links").join(p).exists(), "{p} not pinned");
    }
    assert!(got["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .any(|a| a == "status-agent"));
    let text = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    let lsm_loaded = attached.iter().any(|p| p.starts_with("blastgate_lsm"));
    assert_eq!(
        text.contains("degraded: lsm unavailable"),
        !lsm_loaded,
        "{text}"
    );
}

#[test]
fn enrolment_by_executable_and_cgroup_and_of_processes_already_running() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let dst = server.addr(0).to_string();
    let enrolled = TestCgroup::new("enrolled");
    // A copy of the probe, so that enrolling its executable does not make
    // every other test's probe an agent.
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("agent-cli");
    std::fs::copy(PROBE, &exe).expect("copy probe");

    // Started before the daemon, never labelled: the start-up scan must
    // find it by its executable.
    let mut early = Interactive::spawn({
        let mut c = Command::new(&exe);
        c.args(["interactive", &dst]);
        c
    });
    let v = early.poke();
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "direct before the daemon: {v}"
    );

    let env = Env::new(&format!(
        "[enrol]\nexes = [{{ path = \"{}\", agent = \"agent-cli\" }}]\ncgroups = [{{ path = \"{}\", agent = \"slice-agent\" }}]\n\n{}",
        exe.display(),
        enrolled.path.display(),
        tcp_target(&server)
    ));
    let _d = Daemon::start(&env);

    let v = early.poke();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "a running process matching a rule is labelled at start: {v}"
    );
    let ev = env.wait_event("scanned process session", |e| {
        is_session(e, "session_closed", u64::from(early.pid()))
    });
    assert_eq!(ev["caller"]["agent"], "agent-cli");

    // Executed after the daemon started: labelled at exec.
    let v = &run_json(Command::new(&exe).args(["connect", &dst]))[0];
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "exec of an enrolled file: {v}"
    );
    let pid = pid_of(v);
    let ev = env.wait_event("exe-enrolled session", |e| {
        is_session(e, "session_closed", pid)
    });
    assert_eq!(ev["caller"]["agent"], "agent-cli");

    // Any process placed in the enrolled cgroup.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {PROBE} connect {dst}",
        enrolled.path.display()
    );
    let v = &run_json(Command::new("sh").args(["-c", &script]))[0];
    assert!(
        !server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "process in an enrolled cgroup: {v}"
    );
    let pid = pid_of(v);
    let ev = env.wait_event("cgroup-enrolled session", |e| {
        is_session(e, "session_closed", pid)
    });
    assert_eq!(ev["caller"]["agent"], "slice-agent");

    // Everything else is untouched.
    let v = &run_json(Command::new(PROBE).args(["connect", &dst]))[0];
    assert!(
        server.saw_peer(v["local"].as_str().unwrap_or_default()),
        "{v}"
    );
}

#[test]
fn events_follow_streams_decisions_and_kernel_logs_reach_the_daemon_log() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let env = Env::new(&tcp_target(&server));
    let d = Daemon::start(&env);
    let mut follow = Command::new(BIN)
        .args(["events", "--follow", "--json", "--config"])
        .arg(&env.config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("events --follow");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the follower time to subscribe before the agent connects.
    std::thread::sleep(Duration::from_millis(300));
    let unknown = "127.0.0.9:9";
    let v = &run_json(&mut env.agent("followed", &[PROBE, "connect", unknown]))[0];
    let pid = pid_of(v);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(resp) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if resp["kind"] == "session_denied" && resp["caller"]["pid"] == pid {
            seen = Some(resp);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let seen = seen.expect("the denial was streamed to `blastgate events --follow`");
    assert_eq!(seen["orig_dst"], unknown);
    // The kernel program's aya-log line made it into the daemon's tracing output.
    let log = harness::wait_until(Duration::from_secs(5), || {
        let t = d.log_text();
        t.contains("redirect agent").then_some(t)
    });
    assert!(
        log.is_some(),
        "no kernel log line in the daemon log:\n{}",
        d.log_text()
    );
}

#[test]
fn rules_that_would_make_the_daemon_an_agent_are_refused() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let env = Env::new(&format!("[enrol]\nexes = [\"{BIN}\"]\n"));
    let out = Command::new(BIN)
        .args(["daemon", "--detach-on-exit", "--deadline", "60", "--config"])
        .arg(&env.config)
        .output()
        .expect("run daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("enrol.exes") && err.contains("blastgate binary"),
        "{err}"
    );
    assert!(
        !env.pin_dir.exists(),
        "a refused start leaves nothing pinned"
    );
}

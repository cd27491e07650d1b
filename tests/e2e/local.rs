//! Agents' own loopback servers pass untouched; every other loopback
//! service is a target or refused. Against the real kernel, real servers
//! (python's http.server) and real clients (curl).

mod harness;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::Stdio,
    sync::atomic::Ordering,
};

use harness::*;

const PYTHON: &str = "/usr/bin/python3";

/// A test suite as an agent runs one: start a server on `addr`, wait for
/// it, fetch from it, stop it. Prints the HTTP status.
fn serve_and_fetch(host: &str, bind: &str, port: u16) -> String {
    format!(
        "{PYTHON} -m http.server {port} --bind {bind} >/dev/null 2>&1 & pid=$!; \
         for i in $(seq 1 100); do curl -s -o /dev/null http://{host}:{port}/ && break; sleep 0.05; done; \
         curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{host}:{port}/; kill $pid"
    )
}

#[test]
fn an_agents_own_loopback_servers_pass_untouched() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let env = Env::new("");
    let d = Daemon::start(&env);
    let (p4, p6) = (free_port(), free_port());
    for (host, bind, port) in [("127.0.0.1", "127.0.0.1", p4), ("[::1]", "::1", p6)] {
        let out = env
            .agent("ci", &["sh", "-c", &serve_and_fetch(host, bind, port)])
            .output()
            .expect("agent");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{host}: {}\n{}",
            text(&out),
            d.log_text()
        );
    }
    // Decided in the kernel: no session was opened for them (the proxy
    // would have refused a loopback destination; the waits before the
    // servers listened were, as they should be).
    let sessions = env.count_events(|e| e["kind"] == "session_opened");
    assert_eq!(sessions, 0, "{:#?}", env.events());
    let status = String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).into_owned();
    assert!(!status.contains("local_passed: 0"), "{status}");
}

#[test]
fn loopback_services_the_agent_does_not_own_are_refused() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let env = Env::new("");
    let _d = Daemon::start(&env);

    // A service of the host's (not an agent's).
    let host_service = TestServer::start(&["127.0.0.31"]);
    let v =
        &run_json(&mut env.agent("ci", &[PROBE, "connect", &host_service.addr(0).to_string()]))[0];
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(host_service.accepted.load(Ordering::SeqCst), 0);

    // Another process tree of the same agent: its server is not this
    // tree's.
    let port = free_port();
    let mut other = env
        .agent(
            "ci",
            &[
                PYTHON,
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.32",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("other tree's server");
    let up = wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.32", port))
            .ok()
            .map(drop)
    });
    assert!(up.is_some(), "the other tree's server did not start");
    let v = &run_json(&mut env.agent("ci", &[PROBE, "connect", &format!("127.0.0.32:{port}")]))[0];
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(v["ok"], false, "another tree's server was reached: {v}");

    // Bind without listening, to vouch for the port a service then
    // listens on (both with SO_REUSEADDR): the service is not the agent's.
    let script = "import socket,sys\n\
                  s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('127.0.0.33', 0)); print(s.getsockname()[1], flush=True)\n\
                  sys.stdin.readline()\n\
                  c=socket.socket()\n\
                  try:\n    c.connect(('127.0.0.33', s.getsockname()[1])); c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('reached' if c.recv(100) else 'closed')\n\
                  except OSError as e:\n    print('refused', e)\n";
    let mut squatter = env
        .agent("ci", &[PYTHON, "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("squatter");
    let mut lines = BufReader::new(squatter.stdout.take().expect("stdout")).lines();
    let port: u16 = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.trim().parse().ok())
        .expect("the squatter's port");
    // std's listener sets SO_REUSEADDR: the bind shares the port.
    let service =
        TcpListener::bind(("127.0.0.33", port)).expect("service bind beside the squatter");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            for c in service.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
    }
    writeln!(squatter.stdin.take().expect("stdin")).expect("go");
    let verdict = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = squatter.wait();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the squatter reached the service: {verdict}"
    );
    assert!(!verdict.starts_with("reached"), "{verdict}");
}

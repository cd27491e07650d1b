//! Approval round trips against the real daemon: a held connection waits;
//! `blastgate approvals approve` releases it; deny and timeout refuse it;
//! a real local HTTP receiver gets the webhook notifications.

mod harness;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use harness::*;
use serde_json::Value;

/// A webhook endpoint: records each POSTed JSON body, answers 200.
fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let sink = sink.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(c);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                    }
                }
                let _ = r.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    (url, got)
}

const HELD_CONNECT: &str = r#"
@id("connect-any")
@reason("agents may connect")
permit (principal, action == Action::"connect", resource);

@id("connect-needs-ops")
@reason("connecting to the orders database needs an operator")
@approval("ops")
forbid (principal, action == Action::"connect", resource)
when { principal.name like "held-*" };
"#;

fn pending(env: &Env) -> Vec<Value> {
    let out = env.blastgate(&["approvals", "list", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait_pending(env: &Env, agent: &str) -> String {
    wait_until(Duration::from_secs(10), || {
        pending(env)
            .into_iter()
            .find(|r| r["agent"] == agent)
            .and_then(|r| r["id"].as_str().map(str::to_string))
    })
    .unwrap_or_else(|| panic!("no pending request for {agent}"))
}

#[test]
fn held_connections_wait_for_a_human_decision() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let server = TestServer::start(&["127.0.0.2"]);
    let (hook, notifications) = webhook_receiver();
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("policies");
    std::fs::create_dir(&dir).expect("mkdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for f in [
        "blastgate.cedarschema",
        "sql.cedar",
        "ssh.cedar",
        "http.cedar",
    ] {
        std::fs::copy(shipped.join(f), dir.join(f)).expect("copy");
    }
    std::fs::write(dir.join("connect.cedar"), HELD_CONNECT).expect("write");
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 3000\nwebhooks = [\"{hook}\"]\n\n[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
        dir.display(),
        server.addr(0)
    ));
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    let spawn = |agent: &str| {
        env.agent(agent, &[PROBE, "connect", &dst])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn agent")
    };

    // Approve: the waiting agent gets through.
    let waiting = spawn("held-approve");
    let id = wait_pending(&env, "held-approve");
    assert_eq!(
        server.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the server while held"
    );
    let out = Command::new(BIN)
        .args([
            "approvals",
            "approve",
            &id,
            "--reason",
            "looks fine",
            "--config",
        ])
        .arg(&env.config)
        .env("SUDO_USER", "alice")
        .output()
        .expect("approve");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&waiting.wait_with_output().expect("agent"))[0];
    assert_eq!(v["ok"], true, "approved connection goes through: {v}");
    let decided = env.wait_event("approval_decided (approve)", |e| {
        e["kind"] == "approval_decided" && e["approval_id"] == id.as_str()
    });
    assert_eq!(decided["verdict"], "allow");
    assert_eq!(
        decided["approver"],
        "root (sudo from alice, control socket)"
    );
    assert!(decided["duration_us"].as_u64().unwrap_or(0) > 0);
    assert_eq!(decided["policy_id"], "connect-needs-ops");

    // Deny: refused.
    let waiting = spawn("held-deny");
    let id = wait_pending(&env, "held-deny");
    let out = env.blastgate(&["approvals", "deny", &id, "--reason", "not today"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = &json_lines(&waiting.wait_with_output().expect("agent"))[0];
    assert_eq!(v["ok"], false, "denied connection is refused: {v}");
    let pid = v["pid"].as_u64().unwrap_or(0);
    let ev = env.wait_event("denied session", |e| is_session(e, "session_denied", pid));
    assert!(
        ev["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("denied by root"),
        "{ev}"
    );

    // Timeout: refused after approvals.timeout_ms.
    let waiting = spawn("held-timeout");
    wait_pending(&env, "held-timeout");
    let v = &json_lines(&waiting.wait_with_output().expect("agent"))[0];
    assert_eq!(
        v["ok"], false,
        "an undecided request times out as a denial: {v}"
    );
    env.wait_event("approval timeout", |e| {
        e["kind"] == "approval_decided"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no decision within"))
    });
    assert!(pending(&env).is_empty());

    // The webhook got a request and a decision for each.
    let got = wait_until(Duration::from_secs(10), || {
        let n = notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (n.len() >= 6).then_some(n)
    })
    .unwrap_or_else(|| panic!("webhook got {:?}", notifications.lock().map(|n| n.clone())));
    let kinds: Vec<&str> = got
        .iter()
        .filter_map(|v| v["blastgate"]["event"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "approval_requested").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "approval_decided").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        got.iter().all(|v| v["text"].is_string()),
        "Slack-compatible text field"
    );
}

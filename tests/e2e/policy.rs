//! The policy engine in the real daemon: per-agent connect decisions, hot
//! reload (good and broken edits), shadow mode.

mod harness;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use harness::*;

/// A copy of the shipped policies with connect.cedar replaced.
fn policy_dir(root: &Path, connect: &str) -> PathBuf {
    let dir = copy_shipped_policies(root);
    std::fs::write(dir.join("connect.cedar"), connect).expect("write");
    dir
}

const ONLY_GOOD: &str = r#"
@id("connect-good-only")
@reason("only the good agent may connect")
permit (principal, action == Action::"connect", resource)
when { principal.name == "good" };
"#;

const NOBODY: &str = r#"
@id("connect-good-only")
@reason("nobody may connect now")
permit (principal, action == Action::"connect", resource)
when { principal.name == "nobody-at-all" };
"#;

/// The policy directory lives in `Env`'s temporary directory, removed with it.
fn setup(connect: &str, enforce: bool) -> (TestServer, Env, PathBuf) {
    let server = TestServer::start(&["127.0.0.2"]);
    let scratch = Env::new("");
    let dir = policy_dir(scratch.dir.path(), connect);
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[[targets]]\nname = \"orders-db\"\nprotocol = \"tcp\"\naddress = \"{}\"\nenforce = {enforce}\nlabels = {{ env = \"production\" }}\n",
        dir.display(),
        server.addr(0)
    ));
    // Keep the policy files where the daemon's own temp dir is.
    let moved = env.dir.path().join("policies");
    std::fs::rename(&dir, &moved).expect("move policies");
    let text = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(
        &env.config,
        text.replace(&dir.display().to_string(), &moved.display().to_string()),
    )
    .expect("config");
    (server, env, moved)
}

fn connect_as(env: &Env, agent: &str, dst: &str) -> serde_json::Value {
    run_json(&mut env.agent(agent, &[PROBE, "connect", dst]))[0].clone()
}

#[test]
fn connect_is_decided_per_agent_by_policy() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let (server, env, _dir) = setup(ONLY_GOOD, true);
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();

    let v = connect_as(&env, "good", &dst);
    assert_eq!(v["ok"], true, "{v}");
    let pid = v["pid"].as_u64().unwrap_or(0);
    let ev = env.wait_event("allowed", |e| is_session(e, "session_opened", pid));
    assert_eq!(ev["action"], "connect");
    assert_eq!(ev["policy_id"], "connect-good-only");

    let v = connect_as(&env, "bad", &dst);
    assert_eq!(v["ok"], false, "{v}");
    let pid = v["pid"].as_u64().unwrap_or(0);
    let ev = env.wait_event("denied", |e| is_session(e, "session_denied", pid));
    assert_eq!(ev["verdict"], "deny");
    assert!(
        ev["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no policy permits"),
        "{ev}"
    );
}

#[test]
fn edited_policies_apply_within_two_seconds_and_broken_edits_are_refused() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let (server, env, dir) = setup(ONLY_GOOD, true);
    let d = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    assert_eq!(connect_as(&env, "good", &dst)["ok"], true);

    // A valid edit: now nobody may connect.
    std::fs::write(dir.join("connect.cedar"), NOBODY).expect("edit");
    let edited = Instant::now();
    let applied = wait_until(Duration::from_secs(5), || {
        (connect_as(&env, "good", &dst)["ok"] == false).then(Instant::now)
    })
    .expect("the edited policy never took effect");
    assert!(
        applied.duration_since(edited) < Duration::from_secs(2),
        "took {:?}",
        applied.duration_since(edited)
    );
    env.wait_event("policy_reloaded", |e| e["kind"] == "policy_reloaded");

    // A broken edit: refused, reported, and the last good set stays.
    std::fs::write(dir.join("connect.cedar"), "@id(\"x\")\npermit (principal, action == Action::\"connect\", resource) when { principal.nme == \"good\" };\n")
        .expect("broken edit");
    let rejected = env.wait_event("policy_rejected", |e| e["kind"] == "policy_rejected");
    let reason = rejected["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("connect.cedar:2:") && reason.contains("nme"),
        "{reason}"
    );
    assert!(
        d.log_text().contains("previous policies stay in force"),
        "{}",
        d.log_text()
    );
    let v = connect_as(&env, "good", &dst);
    assert_eq!(
        v["ok"], false,
        "the last good policy (nobody) is still in force: {v}"
    );

    // Fixing it takes effect again.
    std::fs::write(dir.join("connect.cedar"), ONLY_GOOD).expect("fix");
    wait_until(Duration::from_secs(5), || {
        (connect_as(&env, "good", &dst)["ok"] == true).then_some(())
    })
    .expect("the fixed policy never took effect");
}

#[test]
fn shadow_mode_records_the_verdict_without_enforcing_it() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let (server, env, _dir) = setup(ONLY_GOOD, false);
    let _d = Daemon::start(&env);
    let dst = server.addr(0).to_string();
    let v = connect_as(&env, "bad", &dst);
    assert_eq!(v["ok"], true, "shadow mode lets it through: {v}");
    let pid = v["pid"].as_u64().unwrap_or(0);
    let ev = env.wait_event("shadowed", |e| is_session(e, "session_opened", pid));
    assert_eq!(ev["shadow"], true, "{ev}");
    assert!(
        ev["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("shadow: would be Deny"),
        "{ev}"
    );
}

#[test]
fn policy_check_and_test_on_the_shipped_set() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&shipped)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(&shipped)
        .output()
        .expect("test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("passed, 0 failed")),
        "{stdout}"
    );
    assert!(!stdout.contains("UNCOVERED"), "{stdout}");

    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = policy_dir(scratch.path(), "@id(\"c\")\npermit (principal, action == Action::\"connect\", resource)\nwhen { resource.env == 42 };\n");
    let out = Command::new(BIN)
        .args(["policy", "check"])
        .arg(&dir)
        .output()
        .expect("check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connect.cedar:3:"), "{err}");
}

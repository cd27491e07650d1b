//! Agent identity from CI job tokens, against the real kernel, a real
//! OpenID Provider (`oidc-provider` from npm, two issuers on loopback, one
//! rotating its keys during the test), a real ClickHouse and a real
//! server behind a target.
//!
//! Every refused token must start nothing: the agent's command would
//! create a marker file, which must not exist afterwards.

mod harness;

use std::time::Duration;

use harness::{
    job_scene::{claims, JobScene, AUDIENCE},
    oidc::*,
    *,
};
use serde_json::Value;

/// Only jobs of `acme/app` may reach `orders`.
const POLICY: &str = r#"
@id("orders-only-from-acme-app")
@reason("only acme/app's jobs reach orders")
permit (principal, action == Action::"connect", resource)
when { principal has oidc && principal.oidc.repository == "acme/app" };
"#;

/// The shared scene, with [`POLICY`], and a marker the agent's command
/// leaves when it starts.
struct Scene(JobScene);

impl std::ops::Deref for Scene {
    type Target = JobScene;
    fn deref(&self) -> &JobScene {
        &self.0
    }
}

impl Scene {
    /// `oidc`: more keys of `[oidc]`; `sections`: more config sections.
    fn start(issuers: &[&Provider], oidc: &str, sections: &str) -> Scene {
        Scene(JobScene::start(issuers, POLICY, oidc, sections))
    }

    /// `blastgate run --agent AGENT [--oidc-token-file F] -- probe connect`
    /// to the target; the command also leaves a marker file when it starts.
    fn run(&self, agent: &str, token: Option<&str>) -> (std::process::Output, bool) {
        let marker = self.dir.path().join("started");
        let _ = std::fs::remove_file(&marker);
        let script = format!("touch {} && exec {}", marker.display(), self.connect_cmd());
        let out = self.0.run(agent, token, &script);
        (out, marker.exists())
    }

    fn connected(&self, agent: &str, token: &str) -> Value {
        let (out, started) = self.run(agent, Some(token));
        assert!(started, "{}", text(&out));
        let lines = json_lines(&out);
        lines.first().cloned().unwrap_or(Value::Null)
    }

    /// The refusal `blastgate run` printed, checking that nothing started.
    fn refused(&self, agent: &str, token: Option<&str>) -> String {
        let (out, started) = self.run(agent, token);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(!started, "the command started: {}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn job_tokens_decide_who_reaches_what_and_bad_ones_start_nothing() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let Some(stranger) = Provider::start() else {
        return;
    };
    let Some(url) = clickhouse_url() else { return };
    let db = TestDatabase::new(&url);
    let scene = Scene::start(&[&github], "", &db.config());

    // Repository acme/app reaches the target; its claims are everywhere.
    let good = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let v = scene.connected("ci", &good);
    assert_eq!(v["ok"], true, "{v}");
    let opened = scene.env.wait_event("the session of acme/app's job", |e| {
        e["kind"] == "session_opened" && e["caller"]["oidc"]["claims"]["repository"] == "acme/app"
    });
    assert_eq!(opened["caller"]["oidc"]["iss"], github.issuer.as_str());
    assert_eq!(opened["caller"]["oidc"]["claims"]["actor"], "octocat");
    scene
        .env
        .wait_event("the label with the verified token", |e| {
            e["kind"] == "agent_labelled"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("OIDC token"))
        });
    let rows = wait_until(Duration::from_secs(10), || {
        let out = db.try_query(
            "SELECT oidc_iss, oidc_claims['repository'], oidc_claims['workflow'] \
             FROM {db}.events FINAL WHERE kind = 'session_opened'",
        )?;
        (!out.is_empty()).then_some(out)
    })
    .expect("the session in ClickHouse");
    assert_eq!(rows, format!("{}\tacme/app\tdeploy", github.issuer));
    // The session's row is shipped after its events (at its close): waited for.
    let sessions = wait_until(Duration::from_secs(30), || {
        db.try_query("SELECT oidc_sub, oidc_claims['repository'] FROM {db}.sessions FINAL")
            .filter(|s| s.contains("\tacme/app"))
    })
    .unwrap_or_default();
    assert!(sessions.contains("\tacme/app"), "{sessions}");
    assert!(sessions.starts_with("repo:acme/app"), "{sessions}");

    // Another repository: its job starts, and the policy refuses it.
    let other = github.job_token(AUDIENCE, claims("evil/app"), 300);
    let v = scene.connected("ci", &other);
    assert_eq!(v["ok"], false, "{v}");
    scene.env.wait_event("evil/app's refusal", |e| {
        e["kind"] == "session_denied" && e["caller"]["oidc"]["claims"]["repository"] == "evil/app"
    });

    // Bad tokens: each refused with its own reason, nothing started.
    let cases: Vec<(&str, String, &str)> = vec![
        ("none", String::new(), "requires an OIDC token"),
        (
            "expired",
            github.expired_job_token(AUDIENCE, claims("acme/app")),
            "expired",
        ),
        (
            "wrong audience",
            github.job_token("someone-else", claims("acme/app"), 300),
            "not issued for blastgate",
        ),
        ("tampered", tamper(&good), "signature does not verify"),
        ("alg none", alg_none(&good), "algorithm \"none\""),
        (
            "unknown issuer",
            stranger.job_token(AUDIENCE, claims("acme/app"), 300),
            "is not one of the configured",
        ),
        ("garbage", "not-a-token".to_string(), "malformed"),
    ];
    for (what, token, want) in &cases {
        let token = (!token.is_empty()).then_some(token.as_str());
        let err = scene.refused("ci", token);
        assert!(err.contains(want), "{what}: {err}");
    }
    // Refusal records are group-committed after `blastgate run` has its
    // answer: wait for the last one rather than race the spool writer.
    let counted = || scene.env.count_events(|e| e["kind"] == "agent_refused");
    wait_until(Duration::from_secs(10), || {
        (counted() >= cases.len()).then_some(())
    });
    assert_eq!(counted(), cases.len(), "one agent_refused record per case");

    // An agent that needs no token still runs without one (and gets no
    // claims: this policy then refuses it the target).
    let (out, started) = scene.run("dev", None);
    assert!(started, "{}", text(&out));
}

#[test]
fn rotated_keys_are_learned_without_a_restart() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let Some(mut rotating) = Provider::start() else {
        return;
    };
    let scene = Scene::start(&[&github, &rotating], "", "");
    let before = rotating.job_token(AUDIENCE, claims("acme/app"), 300);
    assert_eq!(scene.connected("ci", &before)["ok"], true);

    rotating.rotate_keys();
    let after = rotating.job_token(AUDIENCE, claims("acme/app"), 300);
    assert_ne!(
        decode_header(&before)["kid"],
        decode_header(&after)["kid"],
        "the provider did not rotate"
    );
    let v = scene.connected("ci", &after);
    assert_eq!(v["ok"], true, "a token of the new key: {v}");
    // The other issuer is untouched.
    let other = github.job_token(AUDIENCE, claims("acme/app"), 300);
    assert_eq!(scene.connected("ci", &other)["ok"], true);
}

#[test]
fn an_expiring_token_keeps_open_sessions_and_refuses_new_connections() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = Scene::start(&[&github], "clock_skew_secs = 0\n", "");
    let token = github.job_token(AUDIENCE, claims("acme/app"), 3);
    let file = scene.dir.path().join("short-token");
    std::fs::write(&file, &token).expect("token");
    let addr = scene.server.addr(0);
    // One connection held open across the expiry, then a new one.
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} || exit 10; sleep 5; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 | head -c 200; echo; \
         {PROBE} connect {addr}",
        ip = addr.ip(),
        port = addr.port()
    );
    let out = std::process::Command::new(BIN)
        .args(["run", "--agent", "ci", "--config"])
        .arg(&scene.env.config)
        .arg("--oidc-token-file")
        .arg(&file)
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("HTTP/1.0 200"),
        "the open session was cut: {}",
        text(&out)
    );
    let probe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .next_back()
        .unwrap_or(Value::Null);
    assert_eq!(
        probe["ok"], false,
        "a new connection after expiry: {stdout}"
    );
    scene.env.wait_event("the refusal after expiry", |e| {
        e["kind"] == "session_denied" && e["reason"].as_str().is_some_and(|r| r.contains("expired"))
    });
}

//! The approvers' web console against a real OpenID Provider (npm
//! oidc-provider on loopback), a real PostgreSQL behind the gateway, the
//! real kernel, and (for what a person does) headless Chromium.

mod harness;

use std::{
    process::{Command, Output},
    time::Duration,
};

use harness::{oidc::Provider, pg_gateway, *};
use serde_json::json;

struct Console {
    setup: pg_gateway::Setup,
    provider: Provider,
    url: String,
    ca: std::path::PathBuf,
    _secret: tempfile::TempDir,
}

/// A `[console]` section on `port` signing in with `provider`'s login
/// client (its secret written into `dir`).
fn console_section(port: u16, provider: &Provider, dir: &std::path::Path) -> String {
    let (client_id, secret) = provider.login_client();
    let secret_file = dir.join("console-secret");
    std::fs::write(&secret_file, secret).expect("secret");
    format!(
        "[console]\nlisten = \"127.0.0.1:{port}\"\nissuer = \"{}\"\nclient_id = \"{client_id}\"\n\
         client_secret_file = \"{}\"\n",
        provider.issuer,
        secret_file.display()
    )
}

/// Waits for the console's /healthz.
fn wait_for_console(ca: &std::path::Path, url: &str) {
    let health = format!("{url}/healthz");
    let up = wait_until(Duration::from_secs(10), || {
        let out = curl(ca, &["-o", "/dev/null", "-w", "%{http_code}", &health]);
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    });
    assert!(up.is_some(), "the console did not answer /healthz");
}

impl Console {
    fn start() -> Option<Console> {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let provider = Provider::start_with_redirect(&format!("{url}/callback"))?;
        let dir = tempfile::tempdir().expect("tempdir");
        let setup = pg_gateway::setup_with(
            "orders-db",
            "staging",
            None,
            &console_section(port, &provider, dir.path()),
        )?;
        let ca = setup.env.dir.path().join("ca").join("ca.pem");
        wait_for_console(&ca, &url);
        Some(Console {
            setup,
            provider,
            url,
            ca,
            _secret: dir,
        })
    }

    fn curl(&self, args: &[&str]) -> Output {
        curl(&self.ca, args)
    }

    fn refusals(&self) -> Vec<serde_json::Value> {
        self.setup
            .env
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "console_refused")
            .collect()
    }
}

/// curl trusting blastgate's local CA (the console's certificate).
fn curl(ca: &std::path::Path, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .expect("curl")
}

#[test]
fn nothing_is_served_without_a_session_and_forged_posts_are_recorded() {
    let _g = serial();
    let Some(c) = Console::start() else {
        return;
    };
    // Pages send the browser to sign in; the sign-in goes to the issuer
    // with PKCE and a state, and sets the login cookie.
    let out = c.curl(&["-D", "-", "-o", "/dev/null", &format!("{}/", c.url)]);
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    assert!(head.contains("location: /login?next=%2F"), "{head}");
    let out = c.curl(&["-D", "-", "-o", "/dev/null", &format!("{}/login", c.url)]);
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        location.starts_with(&format!("{}/auth?", c.provider.issuer)),
        "{head}"
    );
    for want in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
    ] {
        assert!(location.contains(want), "{want}: {location}");
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("set-cookie: __host-bg_login=")
            && head.contains("Secure; HttpOnly; SameSite=Lax"),
        "{head}"
    );
    // The API and posts answer 401 and are recorded.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/api/approvals", c.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let forged = format!("{}/approvals/{}", c.url, uuid::Uuid::now_v7());
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data",
        "decision=approve&reason=forged&csrf=x",
        &forged,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // A forged session cookie is no session either.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Cookie: __Host-bg_session=forged",
        "--data",
        "decision=approve&reason=forged&csrf=x",
        &forged,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let refused = wait_until(Duration::from_secs(5), || {
        let r = c.refusals();
        (r.len() >= 3).then_some(r)
    })
    .unwrap_or_else(|| panic!("refusals not recorded: {:#?}", c.refusals()));
    assert!(
        refused.iter().all(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without a session"))),
        "{refused:#?}"
    );
    // A callback that no browser started is refused.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/callback?code=x&state=y", c.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // Health needs nothing.
    let out = c.curl(&[&format!("{}/healthz", c.url)]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

/// Where a test's screenshots stay, to be looked at.
fn artifacts(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Steps that sign `user` in through the provider's real login page and
/// land on the approvals page.
fn sign_in(c: &Console, user: &str) -> Vec<serde_json::Value> {
    vec![
        json!({"open": format!("{}/", c.url)}),
        json!({"login": {"user": user, "password": "anything"}}),
        json!({"wait_text": {"text": "Pending approvals", "timeout": 20}}),
    ]
}

#[test]
fn a_dba_approves_a_held_delete_live_and_others_cannot() {
    let _g = serial();
    if !harness::browser::Browser::available() {
        return;
    }
    let Some(c) = Console::start() else {
        return;
    };
    let browser = harness::browser::Browser::default().ca_file(&c.ca);
    let dir = artifacts("console-approve");

    // alice (group dba) signs in to an empty list; the DELETE held while
    // she watches appears without a reload (a marker set on the page
    // survives).
    let signed_in = "signed in to the console";
    let daemon_log = c.setup.daemon.log_text();
    assert!(!daemon_log.contains(signed_in));
    let mut steps = sign_in(&c, "alice");
    steps.extend([
        json!({"wait_text": {"text": "Nothing is waiting", "timeout": 20}}),
        json!({"eval": "(window.bgMarker = 42)", "expect": 42}),
        json!({"wait_text": {"text": "DELETE FROM orders", "timeout": 60}}),
        json!({"eval": "window.bgMarker", "expect": 42}),
        json!({"eval": "document.querySelectorAll('button.approve').length", "expect": 1}),
        json!({"fill": {"css": "textarea[name=reason]", "value": "ticket OPS-1234: clean up"}}),
        json!({"screenshot": dir.join("alice-held-delete.png").display().to_string()}),
        json!({"click": {"css": "button.approve"}}),
        json!({"wait_text": {"text": "Nothing is waiting", "timeout": 20}}),
        json!({"cookies": dir.join("cookies.json").display().to_string()}),
    ]);
    let psql = std::thread::scope(|s| {
        let agent = s.spawn(|| {
            // Once alice is signed in and her page has rendered.
            let ready = wait_until(Duration::from_secs(60), || {
                c.setup.daemon.log_text().contains(signed_in).then_some(())
            });
            assert!(ready.is_some(), "alice never signed in");
            std::thread::sleep(Duration::from_secs(2));
            c.setup.spawn_psql(&["-c", "DELETE FROM orders"])
        });
        let results = browser.run_ok(&json!(steps), &dir);
        (agent.join().expect("psql thread"), results)
    });
    let (child, results) = psql;
    let out = child.wait_with_output().expect("psql");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DELETE 10"),
        "the approved statement did not run: {}",
        text(&out)
    );
    let decided = c.setup.env.wait_event("alice's decision", |e| {
        e["kind"] == "approval_decided" && e["verdict"] == "allow"
    });
    let approver = decided["approver"].as_str().unwrap_or_default();
    assert!(
        approver.starts_with("alice (oidc alice at ") && approver.ends_with(", console)"),
        "{decided}"
    );
    assert!(
        decided["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ticket OPS-1234")),
        "{decided}"
    );
    // The session cookie, as the browser holds it.
    let cookies = results
        .iter()
        .find_map(|r| r.get("cookies").cloned())
        .unwrap_or_default();
    let session = cookies
        .as_array()
        .and_then(|a| a.iter().find(|k| k["name"] == "__Host-bg_session").cloned())
        .unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert_eq!(session["secure"], true, "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");

    // bob (group dev) sees the next held DELETE but has no buttons, and
    // the server refuses his post (and a post with a wrong token).
    let held = c.setup.spawn_psql(&["-c", "DELETE FROM customers"]);
    let id = c.setup.env.pending_approval();
    let post = |csrf: &str| {
        format!(
            "fetch('/approvals/{id}', {{method: 'POST', credentials: 'same-origin', \
             headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, \
             body: 'decision=approve&reason=mine&csrf=' + encodeURIComponent({csrf})}})\
             .then(r => r.status)"
        )
    };
    let mut steps = sign_in(&c, "bob");
    steps.extend([
        json!({"wait_text": {"text": "DELETE FROM customers", "timeout": 30}}),
        json!({"assert_text": "only group dba decides"}),
        json!({"eval": "document.querySelectorAll('button.approve').length", "expect": 0}),
        json!({"screenshot": dir.join("bob-cannot-decide.png").display().to_string()}),
        json!({"eval": post("document.querySelector('meta[name=csrf]').content"), "expect": 403}),
        json!({"eval": post("'not-the-token'"), "expect": 403}),
    ]);
    browser.run_ok(&json!(steps), &dir);
    assert_eq!(
        c.setup
            .env
            .blastgate(&["approvals", "list", "--json"])
            .status
            .code(),
        Some(0)
    );
    assert!(
        c.setup
            .env
            .blastgate(&["approvals", "list", "--json"])
            .stdout
            .windows(id.len())
            .any(|w| w == id.as_bytes()),
        "bob's posts must not have decided the request"
    );
    // The browser has the 403s; their records may still be on the way.
    for want in ["is not in group \"dba\"", "wrong CSRF token"] {
        c.setup
            .env
            .wait_event(&format!("console_refused {want:?}"), |e| {
                e["kind"] == "console_refused"
                    && e["reason"].as_str().is_some_and(|r| r.contains(want))
            });
    }
    // The CLI stays, recorded as such.
    c.setup.env.answer_approval("deny", &id);
    let out = held.wait_with_output().expect("psql");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("DELETE 3"));
    c.setup.env.wait_event("the CLI's decision", |e| {
        e["kind"] == "approval_decided"
            && e["approver"]
                .as_str()
                .is_some_and(|a| a.ends_with("(control socket)"))
    });
}

#[test]
fn an_ssh_session_replays_in_the_page() {
    use std::io::{Read, Write};
    let _g = serial();
    if !harness::browser::Browser::available() {
        return;
    }
    let Some(ch) = clickhouse_url() else { return };
    let db = TestDatabase::new(&ch);
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let Some(provider) = Provider::start_with_redirect(&format!("{url}/callback")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let section = console_section(port, &provider, dir.path());
    let Some(s) = harness::ssh_gateway::setup_with(harness::ssh_gateway::Options {
        clickhouse: Some(&db),
        extra: &section,
        ..Default::default()
    }) else {
        return;
    };
    let ca = s.env.dir.path().join("ca").join("ca.pem");
    wait_for_console(&ca, &url);

    // A shell (held, approved on the host), typing one command.
    let mut child = s
        .ssh_agent(&["-tt"], &[])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh -tt");
    let id = s.pending_approval();
    s.approvals("approve", &id);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"echo replay-$((6*7))-ok\nexit 0\n")
        .expect("type");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let status = wait_until(Duration::from_secs(60), || child.try_wait().ok().flatten());
    drop(stdin);
    assert!(status.is_some_and(|s| s.success()), "the shell did not end");
    let seen = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    assert!(seen.contains("replay-42-ok"), "{seen}");
    let session = harness::ssh_gateway::recorded_shell(&db);

    let artifacts = artifacts("console-replay");
    let steps = json!([
        {"open": format!("{url}/sessions/{session}")},
        {"login": {"user": "alice", "password": "anything"}},
        {"wait_text": {"text": "ssh:shell", "timeout": 20}},
        {"wait_selector": {"css": "#player .ap-player", "timeout": 20}},
        {"click": {"css": "#player .ap-player"}},
        {"wait_text": {"text": "replay-42-ok", "timeout": 30}},
        {"screenshot": artifacts.join("replay.png").display().to_string()},
        {"open": format!("{url}/sessions")},
        {"wait_text": {"text": "deploy-host", "timeout": 20}},
        {"screenshot": artifacts.join("sessions.png").display().to_string()},
    ]);
    harness::browser::Browser::default()
        .ca_file(&ca)
        .run_ok(&steps, &artifacts);
}

//! CI runner job hooks, against the real kernel, the real daemon, a real
//! OpenID Provider (`oidc-provider` from npm, marked as GitHub's issuer)
//! and, for the first test, a real ClickHouse.
//!
//! The runner is simulated, the hooks are not: a throwaway runner account
//! (enrolled by uid, so every process it runs is an agent and, under
//! `[jobs] require`, refused outside a registered job) runs a process
//! named `Runner.Worker`, which runs the shipped job-started hook with a
//! job's environment, the job's steps, then the job-completed hook. The
//! hook fetches the job's token from a stand-in of GitHub's token
//! endpoint serving a token of the real provider.

mod harness;

use std::{os::unix::net::UnixStream, time::Duration};

use harness::{ci_runner::*, oidc::Provider, users::TestUser, *};
use serde_json::Value;

fn kv(out: &std::process::Output, key: &str) -> Option<i32> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}="))?.trim().parse().ok())
}

fn job_of(e: &Value) -> &Value {
    &e["caller"]["job"]
}

fn is_run(e: &Value, run_id: &str) -> bool {
    job_of(e)["fields"]["run_id"] == run_id
}

/// Two real providers, for GitHub's and GitLab's issuers; `None`: the
/// test is skipped (a failure under CI=true).
fn two_issuers() -> Option<(Provider, Provider)> {
    if !kernel_ready() {
        return None;
    }
    Some((Provider::start()?, Provider::start()?))
}

/// The token-fetch variables GitHub gives a job with `id-token: write`.
fn with_token_request(host: &CiHost, env: &mut Vec<(&'static str, String)>) {
    env.push(("ACTIONS_ID_TOKEN_REQUEST_URL", host.token_url.clone()));
    env.push(("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-bearer".into()));
}

#[test]
fn a_github_job_carries_its_identity_until_it_ends() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let Some(url) = clickhouse_url() else { return };
    if !harness::postgres::TestPostgres::available() || !harness::sshd::TestSshd::available() {
        return;
    }
    let db = TestDatabase::new(&url);
    let host = CiHost::start_with(&github, None, &db.config(), true);
    host.serve_token(&github.job_token(AUDIENCE, github_claims("acme/app", "4242"), 300));
    let mut env = github_env("acme/app", "4242");
    with_token_request(&host, &mut env);

    // Steps: a connection, one held open across the job's end, and a
    // process left behind that connects only after the job has ended.
    let steps = format!(
        "{gated}; {step}; {psql}; {ssh}; \
         /bin/bash -c 'exec 3<>/dev/tcp/{hip}/{hport} && echo held > {held} && cat <&3' >/dev/null 2>&1 & \
         setsid /bin/sh -c 'while [ ! -e {go} ]; do sleep 0.1; done; {left}' >/dev/null 2>&1 & \
         i=0; while [ ! -e {held} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
        gated = host.probe_to(host.gated.addr(0), "gated.json"),
        step = host.probe_to(host.orders.addr(0), "step.json"),
        psql = host.psql_to("SELECT 40 + 2", "psql.out"),
        ssh = host.ssh_to("echo deployed", "ssh.out"),
        hip = host.hold.ip(),
        hport = host.hold.port(),
        held = host.path("held"),
        go = host.path("go"),
        left = host.probe_to(host.orders.addr(0), "left.json"),
    );
    let job = host
        .github_job_command(None, &pairs(&env), &steps)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Runner.Worker");
    // The approver sees which job asks.
    let id = host.env.pending_approval();
    let listed = host.env.blastgate(&["approvals", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("approvals json");
    let held = &listed[0]["ci_job"];
    assert_eq!(held["fields"]["repository"], "acme/app", "{listed}");
    assert_eq!(held["fields"]["run_id"], "4242", "{listed}");
    assert_eq!(held["fields"]["actor"], "octocat", "{listed}");
    let text_list = host.env.blastgate(&["approvals", "list"]);
    assert!(
        String::from_utf8_lossy(&text_list.stdout).contains("run \"4242\" of \"acme/app\""),
        "{}",
        text(&text_list)
    );
    host.env.answer_approval("deny", &id);
    let out = job.wait_with_output().expect("job");
    assert_eq!(kv(&out, "started"), Some(0), "{}", text(&out));
    assert_eq!(kv(&out, "completed"), Some(0), "{}", text(&out));
    assert_eq!(host.answer("gated.json")["ok"], false);
    assert_eq!(host.answer("step.json")["ok"], true);

    // The step's session carries the job, the token's fields as verified.
    let opened = host.env.wait_event("the step's session", |e| {
        e["kind"] == "session_opened" && is_run(e, "4242") && e["target"] == "orders"
    });
    let job = job_of(&opened);
    assert_eq!(job["provider"], "github");
    assert_eq!(job["fields"]["repository"], "acme/app");
    assert_eq!(job["fields"]["actor"], "octocat");
    assert_eq!(job["fields"]["job"], "build");
    let verified: Vec<&str> = job["verified"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for f in ["repository", "run_id", "actor"] {
        assert!(verified.contains(&f), "{f} verified: {job}");
    }
    assert!(
        !verified.contains(&"job"),
        "no claim vouches for the job name: {job}"
    );
    assert_eq!(opened["caller"]["oidc"]["claims"]["repository"], "acme/app");

    // psql through the PostgreSQL gateway: the session and the statement.
    let psql = std::fs::read_to_string(host.dir.path().join("psql.out")).unwrap_or_default();
    assert_eq!(psql.trim(), "42", "{psql}");
    let statement = host.env.wait_event("the job's statement", |e| {
        e["kind"] == "statement" && e["target"] == "orders-db" && is_run(e, "4242")
    });
    assert_eq!(job_of(&statement)["fields"]["actor"], "octocat");
    host.env.wait_event("the job's psql session", |e| {
        e["kind"] == "session_opened" && e["target"] == "orders-db" && is_run(e, "4242")
    });

    // ssh through the SSH gateway: the command carries the job.
    let ssh = std::fs::read_to_string(host.dir.path().join("ssh.out")).unwrap_or_default();
    assert_eq!(ssh.trim(), "deployed", "{ssh}");
    let command = host.env.wait_event("the job's ssh command", |e| {
        e["kind"] == "command" && e["target"] == "deploy-host" && is_run(e, "4242")
    });
    assert_eq!(job_of(&command)["fields"]["repository"], "acme/app");

    // The session open at the job's end was closed with the reason, and
    // the end counted it.
    let ended = host.env.wait_event("job_ended", |e| {
        e["kind"] == "job_ended" && is_run(e, "4242")
    });
    let why = ended["reason"].as_str().unwrap_or_default();
    assert!(why.contains("1 open session(s) closed"), "{why}");
    let cut = host.env.wait_event("the held session closed", |e| {
        e["kind"] == "session_closed" && e["target"] == "hold" && is_run(e, "4242")
    });
    assert!(
        cut["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CI job ended")),
        "{cut}"
    );

    // The process the job left behind is refused once the job has ended.
    std::fs::write(host.dir.path().join("go"), "").expect("go");
    assert_eq!(host.answer("left.json")["ok"], false);
    host.env
        .wait_event("the leftover refused, as its job's", |e| {
            e["kind"] == "session_denied"
                && is_run(e, "4242")
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("has ended"))
        });

    // ClickHouse has the job on events and sessions.
    let rows = wait_until(Duration::from_secs(20), || {
        let out = db.try_query(
            "SELECT job_provider, job_repository, job_run_id, job_actor, has(job_verified, 'repository') \
             FROM {db}.events FINAL WHERE kind = 'session_opened' AND target = 'orders'",
        )?;
        (!out.is_empty()).then_some(out)
    })
    .expect("the session in ClickHouse");
    assert_eq!(rows.trim(), "github\tacme/app\t4242\toctocat\t1");
    let sessions = wait_until(Duration::from_secs(20), || {
        let out = db.try_query(
            "SELECT job_repository, job_run_id, job_actor FROM {db}.sessions FINAL \
             WHERE target = 'hold' AND end IS NOT NULL",
        )?;
        (!out.is_empty()).then_some(out)
    })
    .expect("the held session in ClickHouse");
    assert_eq!(sessions.trim(), "acme/app\t4242\toctocat");
    let statements = wait_until(Duration::from_secs(20), || {
        let out = db.try_query(
            "SELECT job_repository, job_run_id, job_actor FROM {db}.events FINAL \
             WHERE kind = 'statement' AND target = 'orders-db'",
        )?;
        (!out.is_empty()).then_some(out)
    })
    .expect("the statement in ClickHouse");
    assert_eq!(statements.trim(), "acme/app\t4242\toctocat");
    // job_ended follows the statement in the spool, and may be shipped in
    // a later batch.
    let ended = "SELECT count() FROM {db}.events FINAL WHERE kind = 'job_ended'";
    let ended_rows = wait_until(Duration::from_secs(20), || {
        db.try_query(ended).filter(|n| n.trim() != "0")
    })
    .unwrap_or_else(|| db.query(ended));
    assert!(ended_rows.trim() != "0", "{ended_rows}");
}

#[test]
fn steps_cannot_become_another_job_and_tokens_register_one_job() {
    let _g = serial();
    let Some((github, gitlab)) = two_issuers() else {
        return;
    };
    let host = CiHost::start(&github, Some(&gitlab), "");
    let token = github.job_token(AUDIENCE, github_claims("acme/app", "100"), 300);
    host.serve_token(&token);
    let cfg = host.env.config.display().to_string();

    // The job's env: points PATH, BLASTGATE and the socket at its own;
    // the hook ignores them. A step then tries to register as another
    // repository.
    let evil = host.dir.path().join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    for tool in ["blastgate", "curl"] {
        host.write_exec(&format!("evil/{tool}"), "#!/bin/sh\nexit 0\n");
    }
    let mut env = github_env("acme/app", "100");
    with_token_request(&host, &mut env);
    env.push(("PATH", format!("{}:/usr/bin:/bin", evil.display())));
    env.push(("BLASTGATE", format!("{}/blastgate", evil.display())));
    env.push(("BLASTGATE_JOBS_SOCKET", host.path("evil.sock")));
    let steps = format!(
        "GITHUB_REPOSITORY=evil/app {BIN} job start --provider github --config {cfg}; echo rereg=$? > {rr}; \
         {step}",
        rr = host.path("rereg"),
        step = host.probe_to(host.orders.addr(0), "a.json"),
    );
    let out = host.github_job(None, &pairs(&env), &steps);
    assert_eq!(kv(&out, "started"), Some(0), "{}", text(&out));
    let rereg = std::fs::read_to_string(host.dir.path().join("rereg")).unwrap_or_default();
    assert_ne!(
        rereg.trim(),
        "rereg=0",
        "a step re-registered: {}",
        text(&out)
    );
    host.env.wait_event("the re-registration refused", |e| {
        e["kind"] == "job_refused"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("first registration wins"))
    });
    assert_eq!(host.answer("a.json")["ok"], true);
    let opened = host.env.wait_event("the step's session", |e| {
        e["kind"] == "session_opened" && is_run(e, "100") && e["target"] == "orders"
    });
    assert_eq!(job_of(&opened)["fields"]["repository"], "acme/app");
    assert!(job_of(&opened)["verified"]
        .as_array()
        .is_some_and(|v| !v.is_empty()));

    // Refused jobs: the hook fails (the runner fails the job) and the
    // job's connections are refused (require).
    let refused = |what: &str, env: Vec<(&'static str, String)>, want: &str| {
        let name = format!("{}.json", what.replace(' ', "-"));
        let out = host.github_job(
            None,
            &pairs(&env),
            &host.probe_to(host.orders.addr(0), &name),
        );
        assert_ne!(kv(&out, "started"), Some(0), "{what}: {}", text(&out));
        assert_eq!(host.answer(&name)["ok"], false, "{what}");
        host.env.wait_event(what, |e| {
            e["kind"] == "job_refused" && e["reason"].as_str().is_some_and(|r| r.contains(want))
        });
    };
    // The same token for a second job.
    let mut replay = github_env("acme/app", "100");
    with_token_request(&host, &mut replay);
    refused("token replayed", replay, "already registered a CI job");
    // A token that disagrees with the job's environment.
    host.serve_token(&github.job_token(AUDIENCE, github_claims("acme/other", "101"), 300));
    let mut other = github_env("acme/app", "101");
    with_token_request(&host, &mut other);
    refused("token and env disagree", other, "the token says");
    // A token of the GitLab issuer for a GitHub job.
    host.serve_token(&gitlab.job_token(AUDIENCE, github_claims("acme/app", "102"), 300));
    let mut cross = github_env("acme/app", "102");
    with_token_request(&host, &mut cross);
    refused("token of another provider", cross, "gitlab issuer");

    // A forged environment without a token registers, as unverified.
    let out = host.github_job(
        None,
        &pairs(&github_env("acme/forged", "103")),
        &host.probe_to(host.orders.addr(0), "forged.json"),
    );
    assert_eq!(kv(&out, "started"), Some(0), "{}", text(&out));
    let forged = host.env.wait_event("the forged job's session", |e| {
        e["kind"] == "session_opened" && is_run(e, "103")
    });
    assert_eq!(job_of(&forged)["fields"]["repository"], "acme/forged");
    assert!(job_of(&forged).get("verified").is_none(), "{forged}");
    assert!(forged["caller"].get("oidc").is_none(), "{forged}");

    // A runner process outside any job (cron, systemd-run --user).
    let out = host
        .as_user(
            None,
            PROBE,
            &["connect", &host.orders.addr(0).to_string()],
            &[],
        )
        .output()
        .expect("probe");
    assert_eq!(
        json_lines(&out).first().map(|v| v["ok"].clone()),
        Some(Value::Bool(false))
    );
    host.env
        .wait_event("the runner outside a job refused", |e| {
            e["kind"] == "session_denied"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not inside a registered, live CI job"))
        });

    // Another uid cannot register at all.
    let stranger = TestUser::create(&format!("bgnr{}", std::process::id() % 100_000));
    let out = host
        .as_user(
            Some((stranger.uid, stranger.gid)),
            BIN,
            &["job", "start", "--provider", "github", "--config", &cfg],
            &pairs(&github_env("acme/app", "104")),
        )
        .output()
        .expect("job start");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not a CI runner"), "{}", text(&out));
}

#[test]
fn idle_connections_and_parallel_jobs_do_not_block_registration() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let host = CiHost::start(&github, None, "");
    // More idle connections from root than the socket serves in all: the
    // runner's registration still goes through.
    let idle: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(&host.jobs_socket).ok())
        .collect();
    assert!(idle.len() >= 32);
    // Two different jobs at once, and root's maintenance job.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            host.github_job(
                None,
                &pairs(&github_env("acme/app", "201")),
                &host.probe_to(host.orders.addr(0), "p1.json"),
            )
        });
        let b = s.spawn(|| {
            host.github_job(
                None,
                &pairs(&github_env("acme/lib", "202")),
                &host.probe_to(host.orders.addr(0), "p2.json"),
            )
        });
        (a.join().expect("job a"), b.join().expect("job b"))
    });
    assert_eq!(kv(&a, "started"), Some(0), "{}", text(&a));
    assert_eq!(kv(&b, "started"), Some(0), "{}", text(&b));
    assert_eq!(host.answer("p1.json")["ok"], true);
    assert_eq!(host.answer("p2.json")["ok"], true);
    for run in ["201", "202"] {
        host.env.wait_event("each job's own session", |e| {
            e["kind"] == "session_opened" && is_run(e, run)
        });
    }
    drop(idle);
    let root = host.github_job(
        Some((0, 0)),
        &pairs(&github_env("acme/ops", "203")),
        &host.probe_to(host.orders.addr(0), "p3.json"),
    );
    assert_eq!(kv(&root, "started"), Some(0), "{}", text(&root));
    assert_eq!(host.answer("p3.json")["ok"], true);
    let e = host.env.wait_event("root's job session", |e| {
        e["kind"] == "session_opened" && is_run(e, "203")
    });
    assert_eq!(e["caller"]["uid"], 0);
}

#[test]
fn a_gitlab_job_is_rooted_at_its_shell_not_a_subshell() {
    let _g = serial();
    let Some((github, gitlab)) = two_issuers() else {
        return;
    };
    let host = CiHost::start(&github, Some(&gitlab), "");
    let token = gitlab.job_token(
        AUDIENCE,
        serde_json::json!({
            "project_path": "grp/app", "pipeline_id": "301", "job_id": "9001",
            "user_login": "dev", "ref": "main",
        }),
        300,
    );
    let env = [
        ("CI_PROJECT_PATH", "grp/app"),
        ("CI_PIPELINE_ID", "301"),
        ("CI_JOB_ID", "9001"),
        ("CI_JOB_NAME", "test"),
        ("GITLAB_USER_LOGIN", "dev"),
        ("CI_COMMIT_REF_NAME", "main"),
        ("BLASTGATE_ID_TOKEN", token.as_str()),
    ];
    // Each line in its own `: | eval` subshell, as GitLab writes them: the
    // lines after the pre_build_script's subshell has exited still run in
    // the job.
    let first = host.probe_to(host.orders.addr(0), "g1.json");
    let second = host.probe_to(host.orders.addr(0), "g2.json");
    let out = host.gitlab_job(&env, &[&first, "sleep 0.2", &second]);
    assert!(text(&out).contains("stage=0"), "{}", text(&out));
    assert_eq!(host.answer("g1.json")["ok"], true);
    assert_eq!(host.answer("g2.json")["ok"], true);
    let started = host.env.wait_event("the GitLab job", |e| {
        e["kind"] == "job_started" && job_of(e)["provider"] == "gitlab"
    });
    assert_eq!(started["caller"]["comm"], "bash");
    let opened = host.env.wait_event("its sessions", |e| {
        e["kind"] == "session_opened" && is_run(e, "301")
    });
    let job = job_of(&opened);
    assert_eq!(job["fields"]["job_id"], "9001");
    assert!(job["verified"]
        .as_array()
        .is_some_and(|v| v.iter().any(|f| f == "job_id")));
    host.env
        .wait_event("the job ended by post_build_script", |e| {
            e["kind"] == "job_ended" && is_run(e, "301")
        });

    // A forged CI_JOB_ID with a (fresh) token: refused, never recorded as
    // verified.
    let fresh = gitlab.job_token(
        AUDIENCE,
        serde_json::json!({
            "project_path": "grp/app", "pipeline_id": "302", "job_id": "9002",
            "user_login": "dev", "ref": "main",
        }),
        300,
    );
    let mut forged = env;
    forged[1] = ("CI_PIPELINE_ID", "302");
    forged[2] = ("CI_JOB_ID", "6666");
    forged[6] = ("BLASTGATE_ID_TOKEN", fresh.as_str());
    let out = host.gitlab_job(&forged, &[&host.probe_to(host.orders.addr(0), "g3.json")]);
    assert!(!text(&out).contains("stage=0"), "{}", text(&out));
    host.env.wait_event("the forged job id refused", |e| {
        e["kind"] == "job_refused" && e["reason"].as_str().is_some_and(|r| r.contains("job_id"))
    });
}

#[test]
fn a_daemon_restart_keeps_the_job() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let mut host = CiHost::start(&github, None, "");
    let steps = format!(
        "echo > {ready}; while [ ! -e {go} ]; do sleep 0.1; done; {probe}",
        ready = host.path("ready"),
        go = host.path("go"),
        probe = host.probe_to(host.orders.addr(0), "r.json"),
    );
    let child = host
        .github_job_command(None, &pairs(&github_env("acme/app", "401")), &steps)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Runner.Worker");
    wait_until(Duration::from_secs(30), || {
        host.dir.path().join("ready").exists().then_some(())
    })
    .expect("the job started");
    // Killed (the pins stay, as on a crash or an upgrade), then started
    // again on the same state.
    host.daemon.kill9();
    let dead = std::mem::replace(&mut host.daemon, Daemon::start(&host.env));
    // Its drop would uninstall the new daemon's pins; it has no process.
    std::mem::forget(dead);
    std::fs::write(host.dir.path().join("go"), "").expect("go");
    let job = child.wait_with_output().expect("job");
    assert_eq!(kv(&job, "started"), Some(0), "{}", text(&job));
    assert_eq!(host.answer("r.json")["ok"], true, "{}", text(&job));
    host.env.wait_event("the session after the restart", |e| {
        e["kind"] == "session_opened" && is_run(e, "401")
    });
}

//! kubectl 1.37 as an agent under `blastgate run`, redirected by the
//! kernel into the HTTPS gateway, in front of the Kubernetes API stand-in
//! (tests/e2e/harness/kube.rs: recorded discovery, tables and objects
//! over HTTPS with its own CA). Full Kubernetes fidelity is tested against
//! that stand-in, not a live API server.
//!
//! The agent's kubeconfig names the cluster by its real address, holds a
//! token of its own and no CA: kubectl trusts blastgate's certificate only
//! through the `SSL_CERT_FILE` that `blastgate run` sets, and the stand-in
//! sees only the token blastgate holds.

mod harness;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{
    kube::{
        follow_lines, kubectl_argv, kubectl_available, kubectl_env, kubectl_ok, Discovery,
        KubeStandIn, LOG_INTERVAL,
    },
    sshd::output_within,
    *,
};

/// What the agent's kubeconfig carries: never sent on.
const AGENT_TOKEN: &str = "agents-own-kube-token";
/// What blastgate holds for the cluster.
const HELD_TOKEN: &str = "held-cluster-token-7f3a";
/// `****`, base64-encoded: a masked Secret value as kubectl shows it.
const MASKED: &str = "KioqKg==";

const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    standin: KubeStandIn,
    env: Env,
    daemon: Daemon,
    kubeconfig: PathBuf,
    _scratch: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !kernel_ready() || !kubectl_available() {
        return None;
    }
    let standin = KubeStandIn::start_on("127.0.0.2", Discovery::Aggregated);
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path();
    let token = scratch.join("cluster.token");
    std::fs::write(&token, format!("{HELD_TOKEN}\n")).expect("token");
    let policies = copy_shipped_policies(scratch);
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"prod-cluster\"\nprotocol = \"https\"\naddress = \"{}\"\n\
         labels = {{ env = \"production\" }}\n\n\
         [targets.http]\nkind = \"kubernetes\"\n\
         inject_headers = {{ Authorization = {{ file = \"{}\", prefix = \"Bearer \" }} }}\n\
         upstream_ca_file = \"{}\"\nserver_name = \"kube.internal\"\n",
        policies.display(),
        standin.addr(),
        token.display(),
        standin.ca_file().display(),
    ));
    let daemon = Daemon::start(&env);
    // The cluster by its address, as kind and kubeadm write it; no CA.
    let kubeconfig = scratch.join("kubeconfig");
    KubeStandIn::kubeconfig(&kubeconfig, &standin.url(), None, AGENT_TOKEN);
    Some(Setup {
        standin,
        env,
        daemon,
        kubeconfig,
        _scratch: scratch_dir,
    })
}

impl Setup {
    /// kubectl as an agent: no kuberc, no proxy from the environment.
    fn kubectl(&self, args: &[&str]) -> Command {
        let argv = kubectl_argv(&self.kubeconfig, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = self.env.agent("claude", &argv);
        kubectl_env(&mut c);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        output_within(&mut self.kubectl(args), KUBECTL_TIMEOUT)
    }

    fn ok(&self, args: &[&str]) -> String {
        kubectl_ok(self.run(args), args, || {
            format!("stand-in saw:\n{}", self.seen())
        })
    }

    fn seen(&self) -> String {
        self.standin
            .requests()
            .iter()
            .map(|r| format!("  {} {}", r.version, r.line()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// kubectl whose requests are held: a human answers every one with
    /// `verb` until kubectl exits (exec asks twice: WebSocket, then SPDY).
    fn answered(&self, args: &[&str], verb: &str) -> (Output, usize) {
        let mut child = self
            .kubectl(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let mut answered = 0;
        let status = wait_until(KUBECTL_TIMEOUT, || {
            if let Some(id) = self.pending() {
                self.env.answer_approval(verb, &id);
                answered += 1;
            }
            child.try_wait().ok().flatten()
        });
        if status.is_none() {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("kubectl");
        assert!(status.is_some(), "kubectl {args:?} did not finish");
        (out, answered)
    }

    fn pending(&self) -> Option<String> {
        let out = self.env.blastgate(&["approvals", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .first()
            .and_then(|r| r["id"].as_str().map(str::to_string))
    }

    /// Every request that reached the stand-in carried the held token.
    fn assert_held_token_only(&self) {
        let requests = self.standin.requests();
        assert!(!requests.is_empty(), "nothing reached the stand-in");
        for r in &requests {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {HELD_TOKEN}").as_str()),
                "{}",
                r.line()
            );
        }
        let events: String = self.env.events().iter().map(|e| e.to_string()).collect();
        for token in [HELD_TOKEN, AGENT_TOKEN] {
            assert!(!events.contains(token), "{token} in the records");
            assert!(
                !self.daemon.log_text().contains(token),
                "{token} in the log"
            );
        }
    }

    fn requests_recorded(&self) -> Vec<serde_json::Value> {
        self.env
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "request")
            .collect()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn kubectl_reads_through_the_gateway_with_secrets_masked_and_logs_streaming() {
    let _g = serial();
    let Some(s) = setup() else { return };

    let pods = s.ok(&["get", "pods", "-n", "prod"]);
    assert!(pods.contains("web-1") && pods.contains("Running"), "{pods}");
    let seen = s.standin.requests();
    let last = seen.last().expect("a request");
    assert_eq!(last.path, "/api/v1/namespaces/prod/pods");
    // kubectl spoke h2 to blastgate; blastgate's own upstream connection
    // negotiates for itself.
    assert!(last.sni.as_deref() == Some("kube.internal"), "{last:?}");

    // The Secret: readable, its values masked (and still base64, so
    // kubectl's decoders keep working).
    let secret = |output: &str| {
        s.ok(&[
            "get",
            "secret",
            "db-credentials",
            "-n",
            "prod",
            "-o",
            output,
        ])
    };
    let yaml = secret("yaml");
    assert!(yaml.contains("kind: Secret"), "{yaml}");
    assert!(yaml.contains(&format!("password: {MASKED}")), "{yaml}");
    assert!(yaml.contains(&format!("username: {MASKED}")), "{yaml}");
    let decoded = secret("go-template={{ .data.password | base64decode }}");
    assert_eq!(decoded, "****");
    // The list too.
    let raw = s.ok(&["get", "--raw", "/api/v1/namespaces/prod/secrets"]);
    assert!(!raw.contains("czNj"), "{raw}");

    // A followed log arrives line by line, not at the end.
    let (lines, status) = follow_lines(
        s.kubectl(&["logs", "-f", "web-1", "-n", "prod"]),
        harness::kube::LOG_LINES,
        KUBECTL_TIMEOUT,
        || s.seen(),
    );
    assert!(status.success(), "{status}");
    assert_eq!(lines[0].0, "log line 1");
    let writes = s.standin.log_writes();
    let last_written = writes.last().expect("log writes").at;
    assert!(
        lines[0].1 < last_written,
        "the first line was read only after the last was written"
    );
    assert!(lines.last().expect("lines").1 - lines[0].1 >= LOG_INTERVAL);

    s.assert_held_token_only();
    let recorded = s.requests_recorded();
    assert!(
        recorded
            .iter()
            .any(|e| e["action"] == "k8s:list" && e["status"] == 200 && e["verdict"] == "allow"),
        "{recorded:#?}"
    );
    assert!(
        recorded
            .iter()
            .any(|e| e["action"] == "k8s:get" && e["masked_fields"] == 2),
        "{recorded:#?}"
    );
}

#[test]
fn kubectl_writes_are_refused_held_and_recorded() {
    let _g = serial();
    let Some(s) = setup() else { return };
    // Discovery once, so the held requests below are the writes only.
    s.ok(&["get", "namespaces"]);

    let out = s.run(&["delete", "namespace", "dev"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Error from server (Forbidden)")
            && stderr(&out).contains("k8s-namespace-delete"),
        "{}",
        stderr(&out)
    );
    assert!(s.standin.object("namespaces", "", "dev").is_some());

    // A delete in production waits for a human: denied, nothing happens;
    // approved, the deployment goes.
    let (out, asked) = s.answered(&["delete", "deployment", "web", "-n", "prod"], "deny");
    assert!(!out.status.success());
    assert_eq!(asked, 1);
    assert!(
        stderr(&out).contains("k8s-production-delete"),
        "{}",
        stderr(&out)
    );
    assert!(s.standin.object("deployments", "prod", "web").is_some());
    let (out, _) = s.answered(&["delete", "deployment", "web", "-n", "prod"], "approve");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.standin.object("deployments", "prod", "web").is_none());

    // exec is held as a shell into a pod; denied, it never reaches the
    // cluster (kubectl asks twice: WebSocket, then SPDY).
    let (out, asked) = s.answered(&["exec", "web-1", "-n", "prod", "--", "id"], "deny");
    assert!(!out.status.success());
    assert!(asked >= 1);
    assert!(stderr(&out).contains("k8s-pod-shell"), "{}", stderr(&out));
    assert!(
        !s.standin
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/exec")),
        "exec reached the cluster:\n{}",
        s.seen()
    );
    // Approved, the upgrade goes to the cluster with the held token (the
    // stand-in itself answers exec with a 403 of its own).
    let (out, _) = s.answered(&["exec", "web-1", "-n", "prod", "--", "id"], "approve");
    assert!(
        stderr(&out).contains("exec is not supported by this stand-in"),
        "{}",
        stderr(&out)
    );
    let upgrades: Vec<String> = s
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/exec"))
        .map(|r| format!("{} {}", r.method, r.header("upgrade").unwrap_or("-")))
        .collect();
    assert_eq!(upgrades, ["GET websocket", "POST SPDY/3.1"], "{}", s.seen());

    s.assert_held_token_only();
    let recorded = s.requests_recorded();
    let find = |action: &str, policy: &str| {
        recorded
            .iter()
            .any(|e| e["action"] == action && e["policy_id"] == policy && e["status"] == 403)
    };
    assert!(find("k8s:delete", "k8s-namespace-delete"), "{recorded:#?}");
    assert!(find("k8s:delete", "k8s-production-delete"), "{recorded:#?}");
    assert!(
        recorded
            .iter()
            .any(|e| e["action"] == "k8s:delete" && e["verdict"] == "allow" && e["status"] == 200),
        "{recorded:#?}"
    );
}

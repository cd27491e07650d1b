//! kubectl (and curl) as agents under `blastgate run`, redirected by the
//! kernel into the HTTPS gateway, in front of the Kubernetes API stand-in
//! ([`super::kube`]). Shared by the Kubernetes end-to-end tests.
//!
//! The agent's kubeconfig names the cluster by its real address, holds a
//! token of its own and no CA: kubectl trusts blastgate's certificate only
//! through the `SSL_CERT_FILE` that `blastgate run` sets, and the stand-in
//! sees only the token blastgate holds.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use super::{
    copy_shipped_policies, kernel_ready,
    kube::{kubectl_argv, kubectl_available, kubectl_env, kubectl_ok, Discovery, KubeStandIn},
    sshd::output_within,
    wait_until, Daemon, Env,
};

/// What the agent's kubeconfig carries: never sent on.
pub const AGENT_TOKEN: &str = "agents-own-kube-token";
/// What blastgate holds for the cluster.
pub const HELD_TOKEN: &str = "held-cluster-token-7f3a";

pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A stand-in, a daemon with the shipped policies and one `kubernetes`
/// target in front of it (labelled `env`), and the agent's kubeconfig.
pub struct KubeGateway {
    pub standin: KubeStandIn,
    pub env: Env,
    pub daemon: Daemon,
    pub kubeconfig: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl KubeGateway {
    /// None (a loud skip, fatal with CI=true) without the kernel or kubectl.
    pub fn start(env_label: &str) -> Option<KubeGateway> {
        KubeGateway::start_with_masking(env_label, "")
    }

    /// As [`KubeGateway::start`], with `masking` (TOML rules) added to
    /// the shipped `masking.toml`.
    pub fn start_with_masking(env_label: &str, masking: &str) -> Option<KubeGateway> {
        if !kernel_ready() || !kubectl_available() {
            return None;
        }
        let standin = KubeStandIn::start_on("127.0.0.2", Discovery::Aggregated);
        let scratch_dir = tempfile::tempdir().expect("tempdir");
        let scratch = scratch_dir.path();
        let token = scratch.join("cluster.token");
        std::fs::write(&token, format!("{HELD_TOKEN}\n")).expect("token");
        let policies = copy_shipped_policies(scratch);
        let rules = policies.join("masking.toml");
        let shipped = std::fs::read_to_string(&rules).expect("masking.toml");
        std::fs::write(&rules, format!("{shipped}\n{masking}")).expect("masking.toml");
        let env = Env::new(&format!(
            "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
             [[targets]]\nname = \"prod-cluster\"\nprotocol = \"https\"\naddress = \"{}\"\n\
             labels = {{ env = \"{env_label}\" }}\n\n\
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
        Some(KubeGateway {
            standin,
            env,
            daemon,
            kubeconfig,
            scratch: scratch_dir,
        })
    }

    /// kubectl as an agent: no kuberc, no proxy from the environment.
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let argv = kubectl_argv(&self.kubeconfig, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = self.env.agent("claude", &argv);
        kubectl_env(&mut c);
        c
    }

    /// curl as an agent, to `path` on the cluster's address (trusting
    /// blastgate's CA through `blastgate run`, like kubectl), without a
    /// token of its own; `-w` adds the status code on a last line.
    pub fn curl(&self, args: &[&str], path: &str) -> Command {
        let url = format!("{}{path}", self.standin.url());
        let mut c = self.env.agent(
            "claude",
            &["curl", "-sS", "--max-time", "50", "-w", "\n%{http_code}"],
        );
        c.args(args).arg(url);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output_within(&mut self.kubectl(args), KUBECTL_TIMEOUT)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        kubectl_ok(self.run(args), args, || {
            format!("stand-in saw:\n{}", self.seen())
        })
    }

    pub fn seen(&self) -> String {
        self.standin
            .requests()
            .iter()
            .map(|r| format!("  {} {}", r.version, r.line()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// kubectl whose requests are held: a human answers every one with
    /// `verb` until kubectl exits (exec asks twice: WebSocket, then SPDY).
    pub fn answered(&self, args: &[&str], verb: &str) -> (Output, usize) {
        self.answered_cmd(self.kubectl(args), verb)
    }

    /// Any agent command whose requests are held, answered with `verb`;
    /// what it printed, and how many requests were held.
    pub fn answered_cmd(&self, mut cmd: Command, verb: &str) -> (Output, usize) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent command");
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
        let out = child.wait_with_output().expect("agent command");
        assert!(status.is_some(), "{cmd:?} did not finish");
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
    pub fn assert_held_token_only(&self) {
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

    /// Waits for the request record matching `pred`: an answered
    /// request's record is written once its body is done, after kubectl
    /// may have exited.
    pub fn wait_request(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.env
            .wait_event(what, |e| e["kind"] == "request" && pred(e))
    }

    pub fn requests_recorded(&self) -> Vec<serde_json::Value> {
        self.env
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "request")
            .collect()
    }
}

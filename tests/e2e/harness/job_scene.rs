//! The scene the agent-identity tests share: a daemon that requires a job
//! token of agent `ci`, trusts the given OpenID Providers for audience
//! [`AUDIENCE`], and guards one `tcp` target (a [`TestServer`]) with a
//! connect policy of the test's own.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use serde_json::{json, Value};

use super::{oidc::Provider, Daemon, Env, TestServer, BIN, PROBE};

pub const AUDIENCE: &str = "blastgate";

/// A CI job's claims, for `repository`.
pub fn claims(repository: &str) -> Value {
    json!({
        "repository": repository,
        "ref": "refs/heads/main",
        "workflow": "deploy",
        "actor": "octocat",
        "environment": "prod",
    })
}

pub struct JobScene {
    pub env: Env,
    pub server: TestServer,
    pub daemon: Daemon,
    _policies: tempfile::TempDir,
    pub dir: tempfile::TempDir,
}

impl JobScene {
    /// `policy` is the connect policy; `oidc` more keys of `[oidc]`;
    /// `sections` more sections of the config.
    pub fn start(issuers: &[&Provider], policy: &str, oidc: &str, sections: &str) -> JobScene {
        let policies = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            super::pg_gateway::policies_dir().join("blastgate.cedarschema"),
            policies.path().join("blastgate.cedarschema"),
        )
        .expect("schema");
        std::fs::write(policies.path().join("connect.cedar"), policy).expect("policy");
        let server = TestServer::start(&["127.0.0.2"]);
        let mut config = format!(
            "{sections}\n[policy]\ndir = \"{}\"\n\n[oidc]\nrequire_for = [\"ci\"]\n{oidc}\n",
            policies.path().display()
        );
        for p in issuers {
            config.push_str(&format!(
                "\n[[oidc.issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n",
                p.issuer
            ));
        }
        config.push_str(&format!(
            "\n[[targets]]\nname = \"orders\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
            server.addr(0)
        ));
        let env = Env::new(&config);
        let daemon = Daemon::start(&env);
        JobScene {
            env,
            server,
            daemon,
            _policies: policies,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let f = self.dir.path().join(name);
        std::fs::write(&f, token).expect("token file");
        f
    }

    /// `blastgate run --agent AGENT [--oidc-token-file F] -- sh -c SCRIPT`.
    pub fn run(&self, agent: &str, token: Option<&str>, script: &str) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--agent", agent, "--config"])
            .arg(&self.env.config);
        if let Some(t) = token {
            cmd.arg("--oidc-token-file")
                .arg(self.token_file(&format!("token-{agent}"), t));
        }
        cmd.args(["--", "sh", "-c", script]);
        cmd.output().expect("blastgate run")
    }

    /// `probe connect` to the target, as a command line.
    pub fn connect_cmd(&self) -> String {
        format!("{PROBE} connect {}", self.server.addr(0))
    }

    /// The command line of a nested `blastgate run` (from inside a tree).
    pub fn nested_run(
        &self,
        agent: &str,
        token_file: Option<&std::path::Path>,
        cmd: &str,
    ) -> String {
        let token = token_file
            .map(|f| format!("--oidc-token-file {}", f.display()))
            .unwrap_or_default();
        format!(
            "{BIN} run --agent {agent} --config {} {token} -- {cmd}",
            self.env.config.display()
        )
    }
}

//! The PostgreSQL gateway set-up shared by the PostgreSQL end-to-end
//! tests: a real PostgreSQL 15 on 127.0.0.2 with the fixture, and a daemon
//! with one postgres target for it, blastgate holding the password.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{postgres::TestPostgres, *};

/// What blastgate logs in upstream with. It must never reach an agent.
pub const SECRET: &str = "upstream-Secret-7f3a91";
/// What agents type; any password is accepted.
pub const AGENT_PASSWORD: &str = "whatever-the-agent-says";

pub struct Setup {
    pub pg: TestPostgres,
    pub env: Env,
    pub daemon: Daemon,
    pub _policies: Option<tempfile::TempDir>,
    pub _secrets: tempfile::TempDir,
}

pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A policy directory that allows every statement, for workloads that
/// create and drop their own tables (pgbench -i).
pub fn permissive_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        policies_dir().join("blastgate.cedarschema"),
        dir.path().join("blastgate.cedarschema"),
    )
    .expect("schema");
    std::fs::write(
        dir.path().join("all.cedar"),
        "@id(\"allow-all\")\n@reason(\"benchmark and compatibility runs\")\npermit (principal, action, resource);\n",
    )
    .expect("policy");
    dir
}

/// PostgreSQL on 127.0.0.2 with the fixture, and a daemon with one
/// postgres target for it.
pub fn setup(target: &str, env_label: &str, policies: Option<tempfile::TempDir>) -> Option<Setup> {
    setup_with(target, env_label, policies, "")
}

/// [`setup`] with `extra` appended to the daemon's config (more sections).
pub fn setup_with(
    target: &str,
    env_label: &str,
    policies: Option<tempfile::TempDir>,
    extra: &str,
) -> Option<Setup> {
    if !kernel_ready() || !TestPostgres::available() {
        return None;
    }
    let pg = TestPostgres::start("127.0.0.2");
    pg.create_role("app", SECRET, true);
    pg.create_db("orders", "app");
    pg.load_fixture("orders", "app");
    let secrets = tempfile::tempdir().expect("secrets dir");
    let secret_file = secrets.path().join("orders-db");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let policy_dir = policies
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(policies_dir);
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"{target}\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\
         labels = {{ env = \"{env_label}\" }}\n\n[targets.postgres]\nuser = \"app\"\n\
         password_file = \"{}\"\n\n{extra}\n",
        policy_dir.display(),
        pg.addr(),
        secret_file.display()
    ));
    let daemon = Daemon::start(&env);
    Some(Setup {
        pg,
        env,
        daemon,
        _policies: policies,
        _secrets: secrets,
    })
}

impl Setup {
    pub fn conninfo(&self, sslmode: &str) -> String {
        format!(
            "host={} port={} user=app dbname=orders sslmode={sslmode}",
            self.pg.addr().ip(),
            self.pg.port()
        )
    }

    /// psql as an agent: `args` after the connection string.
    pub fn psql(&self, args: &[&str]) -> Output {
        let conn = self.conninfo("prefer");
        let mut c = self.env.agent("claude", &[]);
        c.args(["psql", "-X", &conn]).args(args);
        c.env("PGPASSWORD", AGENT_PASSWORD);
        c.output().expect("psql through blastgate")
    }

    /// psql as an agent in the background (`args` after the connection
    /// string), for statements that wait: holds, sleeps to cancel.
    pub fn spawn_psql(&self, args: &[&str]) -> std::process::Child {
        let conn = self.conninfo("disable");
        let mut c = self.env.agent("claude", &[]);
        c.args(["psql", "-X", &conn])
            .args(args)
            .env("PGPASSWORD", AGENT_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().expect("psql")
    }

    /// psql as an agent with arguments that are bytes (text in another
    /// client encoding) and extra environment (`PGCLIENTENCODING`).
    pub fn psql_bytes(&self, env: &[(&str, &str)], args: &[&[u8]]) -> Output {
        use std::os::unix::ffi::OsStrExt;
        let conn = self.conninfo("disable");
        let mut c = self.env.agent("claude", &[]);
        c.args(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=0", &conn])
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .envs(env.iter().copied())
            .env("PGPASSWORD", AGENT_PASSWORD);
        c.output().expect("psql through blastgate")
    }

    /// [`Setup::psql_bytes`] directly, with the real password.
    pub fn psql_bytes_direct(&self, env: &[(&str, &str)], args: &[&[u8]]) -> Output {
        use std::os::unix::ffi::OsStrExt;
        Command::new("psql")
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=0",
                &self.conninfo("disable"),
            ])
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .envs(env.iter().copied())
            .env("PGPASSWORD", SECRET)
            .output()
            .expect("psql direct")
    }

    /// The same psql directly, with the real password: the reference.
    pub fn psql_direct(&self, args: &[&str]) -> Output {
        Command::new("psql")
            .arg("-X")
            .arg(self.conninfo("disable"))
            .args(args)
            .env("PGPASSWORD", SECRET)
            .output()
            .expect("psql direct")
    }

    /// Runs a `*_child` test of this test binary as an agent (the test
    /// process itself is not one), with the connection string in
    /// `BLASTGATE_PG_CHILD` and the gateway's address in `BLASTGATE_PG_RAW`.
    pub fn run_child(&self, name: &str) -> Output {
        let exe = std::env::current_exe().expect("test binary");
        self.env
            .agent(
                "claude",
                &[
                    exe.to_str().unwrap_or_default(),
                    "--exact",
                    name,
                    "--nocapture",
                    "--test-threads=1",
                ],
            )
            .env("BLASTGATE_PG_CHILD", self.conninfo("disable"))
            .env("BLASTGATE_PG_RAW", self.pg.addr().to_string())
            .env("PGPASSWORD", AGENT_PASSWORD)
            .output()
            .expect("child test")
    }

    pub fn statements(&self) -> Vec<Value> {
        self.env
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "statement")
            .collect()
    }

    /// Approves or denies the one pending approval whose text contains
    /// `needle`, once it shows up.
    pub fn decide(&self, needle: &str, approve: bool) -> String {
        let id = wait_until(Duration::from_secs(20), || {
            let out = self.env.blastgate(&["approvals", "list", "--json"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let list: Value = serde_json::from_str(&text).ok()?;
            list.as_array()?
                .iter()
                .find(|r| r["text"].as_str().is_some_and(|t| t.contains(needle)))
                .and_then(|r| r["id"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| panic!("no approval request for {needle:?}"));
        let verb = if approve { "approve" } else { "deny" };
        let out = self
            .env
            .blastgate(&["approvals", verb, &id, "--reason", "e2e test"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        id
    }
}

//! A simulated CI runner host: a throwaway runner account enrolled by uid,
//! a daemon with `[jobs]` and an OpenID Provider marked as GitHub's, the
//! shipped hook scripts (packaging/ci) installed with the test's paths in
//! place of /usr/bin/blastgate and /etc/blastgate/blastgate.toml, and
//! processes named like the runners' own: `Runner.Worker` (GitHub) and
//! `gitlab-runner` (GitLab), copies of bash so comm and exe are right.
//!
//! Targets: `orders` (a [`TestServer`]), `hold` (a server that answers
//! nothing and keeps the connection until the client closes: a session
//! open at job end) and `token` (GitHub's token endpoint stand-in,
//! answering `{"value": TOKEN}`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    thread,
};

use super::{free_port_on, oidc::Provider, users::TestUser, Daemon, Env, TestServer, BIN, PROBE};

pub const AUDIENCE: &str = "blastgate";
pub const AGENT: &str = "runner";
/// The PostgreSQL password blastgate holds (never the agent).
const PG_SECRET: &str = "upstream-Secret-ci-jobs";

/// Every connection allowed but to `gated`, which a human decides: the
/// tests are about who the job is.
const POLICY: &str = r#"
@id("allow-all")
permit (principal, action, resource);

@id("gated-asks-ops")
@reason("gated is decided by a human")
@approval("ops")
forbid (principal, action == Action::"connect", resource)
when { resource.name == "gated" };
"#;

pub struct CiHost {
    /// A real PostgreSQL behind target `orders-db` (blastgate holds its
    /// password), when the test asked for one.
    pub pg: Option<super::postgres::TestPostgres>,
    /// A real sshd behind target `deploy-host` (blastgate holds the key),
    /// with the known_hosts file its clients trust, when asked for.
    pub sshd: Option<(super::sshd::TestSshd, PathBuf)>,
    pub env: Env,
    pub daemon: Daemon,
    pub orders: TestServer,
    pub gated: TestServer,
    pub hold: SocketAddr,
    pub token_url: String,
    token: Arc<Mutex<String>>,
    /// World-readable: the runner account runs what is here.
    pub dir: tempfile::TempDir,
    _policies: tempfile::TempDir,
    pub jobs_socket: PathBuf,
    /// Last: removed once the daemon is down.
    pub runner: TestUser,
}

fn silent_server(ip: &str) -> SocketAddr {
    let port = free_port_on(&[ip]);
    let l = TcpListener::bind((ip, port)).expect("bind hold server");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn token_server(ip: &str, token: Arc<Mutex<String>>) -> SocketAddr {
    let port = free_port_on(&[ip]);
    let l = TcpListener::bind((ip, port)).expect("bind token server");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let token = token.clone();
            thread::spawn(move || {
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                super::read_head(&mut c);
                let body = serde_json::json!({
                    "count": 1,
                    "value": token.lock().unwrap_or_else(|p| p.into_inner()).clone()
                })
                .to_string();
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

impl CiHost {
    /// `github` is marked `provider = "github"`, `gitlab` (if any)
    /// `provider = "gitlab"`; `sections`: more config (ClickHouse).
    pub fn start(github: &Provider, gitlab: Option<&Provider>, sections: &str) -> CiHost {
        CiHost::start_with(github, gitlab, sections, false)
    }

    /// [`CiHost::start`], with a PostgreSQL target when `postgres`.
    pub fn start_with(
        github: &Provider,
        gitlab: Option<&Provider>,
        sections: &str,
        postgres: bool,
    ) -> CiHost {
        let runner = TestUser::create(&format!("bgci{}", std::process::id() % 100_000));
        let dir = tempfile::Builder::new()
            .prefix("blastgate-ci")
            .tempdir()
            .expect("tempdir");
        // The job's steps write their answers here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let policies = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            super::pg_gateway::policies_dir().join("blastgate.cedarschema"),
            policies.path().join("blastgate.cedarschema"),
        )
        .expect("schema");
        std::fs::write(policies.path().join("allow.cedar"), POLICY).expect("policy");
        let orders = TestServer::start(&["127.0.0.2"]);
        let gated = TestServer::start(&["127.0.0.5"]);
        let hold = silent_server("127.0.0.4");
        let token = Arc::new(Mutex::new(String::new()));
        let token_addr = token_server("127.0.0.3", token.clone());
        let jobs_socket = dir.path().join("jobs.sock");
        let mut config = format!(
            "{sections}\n[policy]\ndir = \"{}\"\n\n[enrol]\nuids = [{{ uid = {}, agent = \"{AGENT}\" }}]\n\n\
             [jobs]\nrunners = [{}]\nsocket = \"{}\"\nstate_file = \"{}\"\n\n[oidc]\n",
            policies.path().display(),
            runner.uid,
            runner.uid,
            jobs_socket.display(),
            dir.path().join("jobs.json").display(),
        );
        for (p, name) in [(Some(github), "github"), (gitlab, "gitlab")] {
            if let Some(p) = p {
                config.push_str(&format!(
                    "\n[[oidc.issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nprovider = \"{name}\"\n",
                    p.issuer
                ));
            }
        }
        for (name, addr) in [
            ("orders", orders.addr(0)),
            ("gated", gated.addr(0)),
            ("hold", hold),
            ("token", token_addr),
        ] {
            config.push_str(&format!(
                "\n[[targets]]\nname = \"{name}\"\nprotocol = \"tcp\"\naddress = \"{addr}\"\n"
            ));
        }
        let pg = postgres.then(|| {
            let pg = super::postgres::TestPostgres::start("127.0.0.6");
            pg.create_role("app", PG_SECRET, true);
            pg.create_db("orders", "app");
            let secret = dir.path().join("orders-db.secret");
            std::fs::write(&secret, format!("{PG_SECRET}\n")).expect("secret");
            // The runner's jobs must not read it.
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            config.push_str(&format!(
                "\n[[targets]]\nname = \"orders-db\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\n\
                 [targets.postgres]\nuser = \"app\"\npassword_file = \"{}\"\n",
                pg.addr(),
                secret.display()
            ));
            pg
        });
        let sshd = postgres.then(|| {
            let sshd = super::sshd::TestSshd::start("127.0.0.7");
            let user = super::sshd::deploy_user();
            let key = sshd.authorize_new_key(&user);
            let upstream = dir.path().join("upstream_known_hosts");
            std::fs::write(&upstream, format!("{}\n", sshd.known_hosts_line())).expect("kh");
            config.push_str(&format!(
                "\n[[targets]]\nname = \"deploy-host\"\nprotocol = \"ssh\"\naddress = \"{}\"\n\
                 hostnames = [\"127.0.0.7\"]\n\n[targets.ssh]\nuser = \"{user}\"\nkey_file = \"{}\"\n\
                 known_hosts = \"{}\"\n",
                sshd.addr(),
                key.display(),
                upstream.display()
            ));
            (sshd, user)
        });
        let env = Env::new(&config);
        // The runner account reads the config (the hook takes the socket
        // from it), as it reads /etc/blastgate/blastgate.toml (0644).
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let daemon = Daemon::start(&env);
        let sshd = sshd.map(|(sshd, user)| {
            let kh = super::ssh_gateway::client_known_hosts(&env, dir.path(), "127.0.0.7");
            let _ = user;
            (sshd, kh)
        });
        let host = CiHost {
            pg,
            sshd,
            runner,
            env,
            daemon,
            orders,
            gated,
            hold,
            token_url: format!("http://{token_addr}/token?api-version=2.0"),
            token,
            dir,
            _policies: policies,
            jobs_socket,
        };
        host.install();
        host
    }

    /// The hooks and runner processes, as a package and a runner install
    /// them, with this test's binary and config.
    fn install(&self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (from, to) in [
            ("packaging/ci/github/job-started.sh", "job-started.sh"),
            ("packaging/ci/github/job-completed.sh", "job-completed.sh"),
            ("packaging/ci/gitlab/pre-build.sh", "pre-build.sh"),
            ("packaging/ci/gitlab/post-build.sh", "post-build.sh"),
        ] {
            let text = std::fs::read_to_string(repo.join(from)).expect("hook script");
            assert!(
                text.contains("BLASTGATE_BIN=/usr/bin/blastgate\n"),
                "{from}"
            );
            let text = text
                .replace(
                    "BLASTGATE_BIN=/usr/bin/blastgate\n",
                    &format!("BLASTGATE_BIN={BIN}\n"),
                )
                .replace(
                    "BLASTGATE_CONFIG=/etc/blastgate/blastgate.toml\n",
                    &format!("BLASTGATE_CONFIG={}\n", self.env.config.display()),
                );
            self.write_exec(to, &text);
        }
        for name in ["Runner.Worker", "gitlab-runner"] {
            let to = self.dir.path().join(name);
            std::fs::copy("/bin/bash", &to).expect("copy bash");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    pub fn write_exec(&self, name: &str, text: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        std::fs::write(&to, text).expect("write");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        to
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// What the token endpoint answers from now on.
    pub fn serve_token(&self, token: &str) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token.to_string();
    }

    /// A GitHub job: a `Runner.Worker` of `uid` runs the job-started hook,
    /// then `steps` (sh), then the job-completed hook, with `job_env` as
    /// the job's environment. The worker's output tells what each did.
    pub fn github_job(
        &self,
        uid: Option<(u32, u32)>,
        job_env: &[(&str, &str)],
        steps: &str,
    ) -> Output {
        self.github_job_command(uid, job_env, steps)
            .output()
            .expect("Runner.Worker")
    }

    /// [`CiHost::github_job`], not started yet.
    pub fn github_job_command(
        &self,
        uid: Option<(u32, u32)>,
        job_env: &[(&str, &str)],
        steps: &str,
    ) -> Command {
        let script = format!(
            "{started}; echo \"started=$?\"\n/bin/sh -c '{steps}'\necho \"steps=$?\"\n{completed}; echo \"completed=$?\"\n",
            started = self.path("job-started.sh"),
            completed = self.path("job-completed.sh"),
            steps = steps.replace('\'', "'\\''"),
        );
        self.as_user(uid, &self.path("Runner.Worker"), &["-c", &script], job_env)
    }

    /// A GitLab job as the shell executor runs it: `gitlab-runner` (root)
    /// pipes the build stage's script to a login bash of the runner
    /// account; the pre_build_script, each line of the job's script and
    /// the post_build_script are run through `: | eval` subshells.
    pub fn gitlab_job(&self, job_env: &[(&str, &str)], lines: &[&str]) -> Output {
        let eval = |l: &str| format!(": | eval '{}'\n", l.replace('\'', "'\\''"));
        let mut script = String::from("set -eo pipefail\nset +o noclobber\n");
        script.push_str(&eval(&self.path("pre-build.sh")));
        for l in lines {
            script.push_str(&eval(l));
        }
        script.push_str(&eval(&self.path("post-build.sh")));
        let stage = self.write_exec(&format!("stage-{}.sh", lines.len()), &script);
        // gitlab-runner (a bash named so) runs `setpriv … bash -s < script`.
        let inner = format!(
            "/usr/bin/setpriv --reuid {uid} --regid {gid} --clear-groups -- /bin/bash --noprofile --norc -s < {stage}",
            uid = self.runner.uid,
            gid = self.runner.gid,
            stage = stage.display()
        );
        let mut cmd = Command::new(self.path("gitlab-runner"));
        cmd.args(["-c", &format!("{inner}; echo \"stage=$?\"")])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/tmp");
        for (k, v) in job_env {
            cmd.env(k, v);
        }
        cmd.output().expect("gitlab-runner")
    }

    /// `program args…` as `uid` (default: the runner), with only `job_env`
    /// and a plain PATH in its environment.
    pub fn as_user(
        &self,
        uid: Option<(u32, u32)>,
        program: &str,
        args: &[&str],
        job_env: &[(&str, &str)],
    ) -> Command {
        let (uid, gid) = uid.unwrap_or((self.runner.uid, self.runner.gid));
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/tmp")
        .current_dir("/tmp");
        for (k, v) in job_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `probe connect` to a target, writing its JSON answer to `out`.
    pub fn probe_to(&self, addr: SocketAddr, out: &str) -> String {
        format!("{PROBE} connect {addr} > {}", self.path(out))
    }

    /// `psql -c SQL` to the `orders-db` target, its output in `out`.
    pub fn psql_to(&self, sql: &str, out: &str) -> String {
        let pg = self.pg.as_ref().expect("a host with PostgreSQL");
        format!(
            "PGPASSWORD=any /usr/bin/psql -X -At \"host={} port={} user=app dbname=orders sslmode=disable\" -c \"{sql}\" > {} 2>&1",
            pg.addr().ip(),
            pg.port(),
            self.path(out)
        )
    }

    /// `ssh deploy-host COMMAND` (the deploy user at the `deploy-host`
    /// target, trusting blastgate's SSH CA), its output in `out`.
    pub fn ssh_to(&self, command: &str, out: &str) -> String {
        let (sshd, kh) = self.sshd.as_ref().expect("a host with sshd");
        let mut words = super::sshd::ssh_options(kh);
        words.extend([
            "-p".to_string(),
            sshd.port().to_string(),
            format!("{}@127.0.0.7", super::sshd::deploy_user()),
            command.to_string(),
        ]);
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        format!(
            "/usr/bin/ssh {} > {} 2>&1 < /dev/null",
            quoted.join(" "),
            self.path(out)
        )
    }

    /// The probe's answer written to `name`, once there.
    pub fn answer(&self, name: &str) -> serde_json::Value {
        let p = self.dir.path().join(name);
        super::wait_until(std::time::Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&p).ok()?;
            serde_json::from_str(text.lines().next()?).ok()
        })
        .unwrap_or_else(|| panic!("no answer in {}", p.display()))
    }
}

impl Drop for CiHost {
    /// Processes a failed test's job left behind (all of the throwaway
    /// runner account's), so the account can be removed.
    fn drop(&mut self) {
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let owned = std::fs::metadata(entry.path())
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == self.runner.uid)
                .unwrap_or(false);
            if owned {
                // SAFETY: signalling a process of this test's own account.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A GitHub job's environment.
pub fn github_env(repository: &str, run_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GITHUB_REPOSITORY", repository.to_string()),
        ("GITHUB_WORKFLOW", "deploy".into()),
        ("GITHUB_RUN_ID", run_id.to_string()),
        ("GITHUB_RUN_ATTEMPT", "1".into()),
        ("GITHUB_JOB", "build".into()),
        ("GITHUB_ACTOR", "octocat".into()),
        ("GITHUB_REF", "refs/heads/main".into()),
    ]
}

/// The claims GitHub puts in that job's token.
pub fn github_claims(repository: &str, run_id: &str) -> serde_json::Value {
    serde_json::json!({
        "repository": repository,
        "workflow": "deploy",
        "run_id": run_id,
        "run_attempt": "1",
        "actor": "octocat",
        "ref": "refs/heads/main",
    })
}

pub fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

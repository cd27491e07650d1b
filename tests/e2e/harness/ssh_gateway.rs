//! The SSH gateway set-up shared by the SSH end-to-end tests: Debian's
//! sshd on 127.0.0.2, a daemon with one ssh target for it holding the
//! key, and the agent's client trusting blastgate's SSH CA.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use super::{sshd::*, *};

pub struct Setup {
    pub sshd: TestSshd,
    pub env: Env,
    pub daemon: Daemon,
    pub known_hosts: PathBuf,
    pub key: PathBuf,
    pub user: String,
    pub dir: tempfile::TempDir,
}

/// What a test needs beyond the shipped defaults.
#[derive(Default)]
pub struct Options<'a> {
    /// Pin this key as the upstream's host key instead of its real one.
    pub wrong_host_key: Option<&'a str>,
    /// Programs added to the shipped allow-list of deploy commands (the
    /// policy's documented extension point).
    pub allow: &'a [&'a str],
    /// Absolute paths added to the allow-list of programs.
    pub allow_paths: &'a [&'a str],
    /// Ship records to this ClickHouse database.
    pub clickhouse: Option<&'a TestDatabase>,
    /// More config sections, appended.
    pub extra: &'a str,
}

pub fn setup() -> Option<Setup> {
    setup_with(Options::default())
}

pub fn setup_with(opts: Options) -> Option<Setup> {
    if !kernel_ready() || !TestSshd::available() {
        return None;
    }
    let sshd = TestSshd::start("127.0.0.2");
    let user = deploy_user();
    let key = sshd.authorize_new_key(&user);
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_known = dir.path().join("upstream_known_hosts");
    std::fs::write(&upstream_known, format!("{}\n", sshd.known_hosts_line())).expect("kh");
    let policies = policies_allowing(dir.path(), opts.allow, opts.allow_paths);
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n{}\n\
         [[targets]]\nname = \"deploy-host\"\nprotocol = \"ssh\"\naddress = \"{}\"\n\
         hostnames = [\"deploy.internal\", \"127.0.0.2\"]\n\n\
         [targets.ssh]\nuser = \"{user}\"\nkey_file = \"{}\"\n{}\n\n{}\n",
        policies.display(),
        opts.clickhouse
            .map(TestDatabase::config)
            .unwrap_or_default(),
        sshd.addr(),
        key.display(),
        match opts.wrong_host_key {
            Some(k) => format!("host_key = \"{k}\""),
            None => format!("known_hosts = \"{}\"", upstream_known.display()),
        },
        opts.extra
    ));
    let daemon = Daemon::start(&env);
    let known_hosts = client_known_hosts(&env, dir.path(), "deploy.internal");
    Some(Setup {
        sshd,
        env,
        daemon,
        known_hosts,
        key,
        user,
        dir,
    })
}

/// What an administrator installs for agents' clients (`blastgate ca
/// ssh-known-hosts`), written to `dir/known_hosts`; it must name `host`.
pub fn client_known_hosts(env: &Env, dir: &Path, host: &str) -> PathBuf {
    let out = env.blastgate(&["ca", "ssh-known-hosts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        lines.starts_with("@cert-authority ") && lines.contains(&format!("[{host}]:")),
        "{lines}"
    );
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, lines).expect("known_hosts");
    known_hosts
}

/// The shipped policies, with `extra` program names and `paths` on the SSH
/// allow-list.
pub fn policies_allowing(scratch: &Path, extra: &[&str], paths: &[&str]) -> PathBuf {
    if extra.is_empty() && paths.is_empty() {
        return shipped_policies();
    }
    let dir = copy_shipped_policies(scratch);
    let ssh = std::fs::read_to_string(dir.join("ssh.cedar")).expect("ssh.cedar");
    let listed =
        |items: &[&str]| -> String { items.iter().map(|p| format!(", \"{p}\"")).collect() };
    let edited = ssh
        .replace(
            "\"deploy.sh\"]",
            &format!("\"deploy.sh\"{}]", listed(extra)),
        )
        .replace(
            "\"/opt/deploy/bin/deploy.sh\"]",
            &format!("\"/opt/deploy/bin/deploy.sh\"{}]", listed(paths)),
        );
    assert_ne!(edited, ssh, "the allow-lists moved in ssh.cedar");
    std::fs::write(dir.join("ssh.cedar"), edited).expect("write ssh.cedar");
    dir
}

impl Setup {
    /// `ssh` as an agent, with no key of its own.
    pub fn ssh(&self, command: &str) -> Output {
        self.ssh_args(&[command])
    }

    /// `ssh [args…] -p PORT user@127.0.0.2 [more…]` as an agent.
    pub fn ssh_args(&self, args: &[&str]) -> Output {
        let mut c = self.ssh_agent(&[], args);
        output_within(&mut c, Duration::from_secs(120))
    }

    pub fn ssh_agent(&self, before: &[&str], after: &[&str]) -> Command {
        let port = self.sshd.port().to_string();
        let target = self.dest();
        let mut args: Vec<&str> = before.to_vec();
        args.extend(["-p", &port, &target]);
        args.extend(after);
        let ssh = ssh_command(&self.known_hosts, &args);
        let mut c = self.env.agent("claude", &[]);
        c.arg(ssh.get_program()).args(ssh.get_args());
        c
    }

    pub fn dest(&self) -> String {
        format!("{}@127.0.0.2", self.user)
    }

    /// `ssh host COMMAND` as an agent, held and answered by a human with
    /// `verb` (approve or deny): what ssh got, and the approval id.
    pub fn ssh_answered(&self, command: &str, verb: &str) -> (Output, String) {
        let child = self
            .ssh_agent(&[], &[command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        let id = self.pending_approval();
        self.approvals(verb, &id);
        (child.wait_with_output().expect("ssh"), id)
    }

    pub fn pending_approval(&self) -> String {
        self.env.pending_approval()
    }

    pub fn approvals(&self, verb: &str, id: &str) {
        self.env.answer_approval(verb, id);
    }

    /// `ssh host COMMAND` as an agent, given `secs` to finish: a request
    /// held for a human fails the test instead of waiting for it.
    pub fn ssh_within(&self, command: &str, secs: u64) -> Output {
        let mut c = self.ssh_agent(&[], &[command]);
        output_within(&mut c, Duration::from_secs(secs))
    }

    /// `program` (scp or sftp) as an agent, with the test's client
    /// options and the server's port, then `args`.
    pub fn transfer(&self, program: &str, args: &[&str]) -> Output {
        let port = self.sshd.port().to_string();
        let mut c = self.env.agent("claude", &[program]);
        c.args(ssh_options(&self.known_hosts))
            .args(["-P", &port])
            .args(args);
        output_within(&mut c, Duration::from_secs(120))
    }

    /// An sftp batch as an agent (`-` before a command lets the batch go
    /// on when it fails).
    pub fn sftp_batch(&self, batch: &str) -> Output {
        let file = self.dir.path().join(format!(
            "batch-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::write(&file, batch).expect("write sftp batch");
        let dest = self.dest();
        self.transfer(SFTP, &["-b", file.to_str().expect("utf-8"), &dest])
    }

    /// Events of `action` (e.g. "ssh:write") in the spool now: a record
    /// written as a channel ends may not be in yet, so wait for what must
    /// be there (`Env::wait_event`) rather than look for it in these.
    pub fn events_of(&self, action: &str) -> Vec<serde_json::Value> {
        self.env
            .events()
            .into_iter()
            .filter(|e| e["action"] == action)
            .collect()
    }

    /// The private key blastgate holds, as its base64 lines.
    pub fn key_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.key)
            .expect("key")
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_string)
            .collect()
    }

    /// Asserts no line of the held key is in `what`.
    pub fn assert_no_key_in(&self, name: &str, what: &str) {
        for line in self.key_lines() {
            assert!(!what.contains(&line), "the upstream key leaked into {name}");
        }
    }
}

/// The id of the allowed `ssh:shell` session once its whole recording is in
/// `db`: the session closed in ClickHouse and its replay data no longer
/// growing (events and io are separate inserts).
pub fn recorded_shell(db: &TestDatabase) -> String {
    let mut last = 0u32;
    wait_until(std::time::Duration::from_secs(30), || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let sid = db.try_query(
            "SELECT toString(session_id) FROM {db}.events FINAL \
             WHERE action = 'ssh:shell' AND verdict = 'allow' LIMIT 1",
        )?;
        if sid.is_empty() {
            return None;
        }
        let closed = db.try_query(&format!(
            "SELECT count() FROM {{db}}.sessions FINAL \
             WHERE session_id = '{sid}' AND end IS NOT NULL"
        ))?;
        let n: u32 = db
            .try_query(&format!(
                "SELECT count() FROM {{db}}.io FINAL WHERE session_id = '{sid}'"
            ))?
            .parse()
            .ok()?;
        let settled = closed == "1" && n > 2 && n == last;
        last = n;
        settled.then_some(sid)
    })
    .expect("the shell's records in ClickHouse")
}

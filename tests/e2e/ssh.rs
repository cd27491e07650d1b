//! The SSH gateway against Debian's sshd and the unmodified OpenSSH client,
//! every agent redirected by the real kernel hooks.

mod harness;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use harness::{sshd::*, *};

struct Setup {
    sshd: TestSshd,
    env: Env,
    _daemon: Daemon,
    known_hosts: PathBuf,
    key: PathBuf,
    user: String,
    _dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    if !kernel_ready() || !TestSshd::available() {
        return None;
    }
    let sshd = TestSshd::start("127.0.0.2");
    let user = deploy_user();
    let key = sshd.authorize_new_key(&user);
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_known = dir.path().join("upstream_known_hosts");
    std::fs::write(&upstream_known, format!("{}\n", sshd.known_hosts_line())).expect("kh");
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"deploy-host\"\nprotocol = \"ssh\"\naddress = \"{}\"\n\
         hostnames = [\"deploy.internal\", \"127.0.0.2\"]\n\n\
         [targets.ssh]\nuser = \"{user}\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n",
        policies.display(),
        sshd.addr(),
        key.display(),
        upstream_known.display()
    ));
    let daemon = Daemon::start(&env);
    // What an administrator installs: `blastgate ca ssh-known-hosts`.
    let out = env.blastgate(&["ca", "ssh-known-hosts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        lines.starts_with("@cert-authority ") && lines.contains("[deploy.internal]:"),
        "{lines}"
    );
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, lines).expect("known_hosts");
    Some(Setup {
        sshd,
        env,
        _daemon: daemon,
        known_hosts,
        key,
        user,
        _dir: dir,
    })
}

impl Setup {
    /// `ssh` as an agent, with no key of its own.
    fn ssh(&self, command: &str) -> Output {
        let port = self.sshd.port().to_string();
        let target = format!("{}@127.0.0.2", self.user);
        let ssh = ssh_command(&self.known_hosts, &["-p", &port, &target, command]);
        let mut c = self.env.agent("claude", &[]);
        c.arg(ssh.get_program()).args(ssh.get_args());
        output_within(&mut c, Duration::from_secs(60))
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn exec_runs_with_the_held_key_and_policy_decides() {
    let _g = serial();
    let Some(s) = setup() else { return };
    // An allowed program (git-upload-pack is on the list; echo is not, so
    // use a listed deploy command name the host does not have: the exit
    // status comes back as it is).
    let out = s.ssh("git-upload-pack --help");
    assert_ne!(out.status.code(), Some(126), "{}", text(&out));
    assert!(!text(&out).contains("denied by policy"), "{}", text(&out));

    // Denied outright: exit 126 and the reason on stderr.
    let out = s.ssh("rm -rf /srv/app");
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("denied by policy ssh-recursive-delete"),
        "{}",
        text(&out)
    );

    // Held, approved, run: its output and exit status come back.
    let port = s.sshd.port().to_string();
    let target = format!("{}@127.0.0.2", s.user);
    let ssh = ssh_command(&s.known_hosts, &["-p", &port, &target, "echo ok; exit 3"]);
    let mut c = s.env.agent("claude", &[]);
    c.arg(ssh.get_program())
        .args(ssh.get_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("ssh");
    let id = wait_until(Duration::from_secs(20), || {
        let out = s.env.blastgate(&["approvals", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.as_array()?
            .first()
            .and_then(|r| r["id"].as_str().map(str::to_string))
    })
    .expect("a held command");
    let out = s.env.blastgate(&["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let out = child.wait_with_output().expect("ssh");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("waiting for approval {id}")),
        "{}",
        text(&out)
    );

    // The key blastgate holds is in nothing recorded or logged.
    let key = std::fs::read_to_string(&s.key).expect("key");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let spool: String = s.env.events().iter().map(|e| e.to_string()).collect();
    assert!(!spool.contains(&body[..40]));
    let commands = s
        .env
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "command")
        .count();
    assert_eq!(commands, 3, "{:#?}", s.env.events());
}

/// Data from the agent reaches the exec'd program in order, with its EOF:
/// `scp -O` (the legacy protocol: `scp -t` on the server, allowed by the
/// shipped policies) copies a file that arrives byte for byte.
#[test]
fn scp_legacy_mode_copies_a_file_through_the_gateway() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let dir = UserTempDir::new(&s.user);
    let local = tempfile::NamedTempFile::new().expect("file");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(local.path(), &data).expect("write");
    let port = s.sshd.port().to_string();
    let remote = format!("{}@127.0.0.2:{}/copied", s.user, dir.path().display());
    let mut args = ssh_options(&s.known_hosts);
    args.extend(["-O".to_string(), "-P".to_string(), port]);
    args.push(local.path().display().to_string());
    args.push(remote);
    let mut c = s.env.agent("claude", &[SCP]);
    c.args(&args);
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let copied = std::fs::read(dir.path().join("copied")).expect("the copied file");
    assert!(copied == data, "the copy differs ({} bytes)", copied.len());
}

/// Tunnels are refused and recorded while the session's command completes.
#[test]
fn forwarding_is_refused_and_the_command_still_runs() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let port = s.sshd.port().to_string();
    let target = format!("{}@127.0.0.2", s.user);
    let ssh = ssh_command(
        &s.known_hosts,
        &[
            "-o",
            "ExitOnForwardFailure=no",
            "-R",
            "0:127.0.0.1:9",
            "-p",
            &port,
            &target,
            "git-upload-pack --version",
        ],
    );
    let mut c = s.env.agent("claude", &[]);
    c.arg(ssh.get_program()).args(ssh.get_args());
    let out = output_within(&mut c, Duration::from_secs(60));
    let t = text(&out);
    assert!(t.contains("remote port forwarding failed"), "{t}");
    assert_ne!(out.status.code(), Some(126), "{t}");
    assert_ne!(out.status.code(), Some(255), "the command ran: {t}");
    // A stdio forward (-W) opens a direct-tcpip channel: refused.
    let ssh = ssh_command(
        &s.known_hosts,
        &["-W", "127.0.0.2:22", "-p", &port, &target],
    );
    let mut c = s.env.agent("claude", &[]);
    c.arg(ssh.get_program()).args(ssh.get_args());
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(!out.status.success(), "{}", text(&out));
    let forwards: Vec<serde_json::Value> = s
        .env
        .events()
        .into_iter()
        .filter(|e| e["action"] == "ssh:forward")
        .collect();
    assert!(
        forwards.iter().any(|e| e["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("tcpip-forward"))
            && e["verdict"] == "deny"
            && e["policy_id"] == "ssh-no-forwarding"),
        "{forwards:#?}"
    );
    assert!(
        forwards
            .iter()
            .any(|e| e["text"] == "direct-tcpip 127.0.0.2:22" && e["verdict"] == "deny"),
        "{forwards:#?}"
    );
}

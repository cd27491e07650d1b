//! The OpenSSH test server itself, driven directly by the real OpenSSH
//! clients (no blastgate): exec with a pinned host key and the refusals
//! the gateway tests rely on, scp (both protocols), sftp, rsync, git clone
//! and push, the deploy user, and clean-up after a panic.

mod harness;

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use harness::sshd::*;

const IP: &str = "127.0.0.2";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A server, the deploy user with a key, a pinned known_hosts file and a
/// scratch directory on the client side.
struct Setup {
    sshd: TestSshd,
    user: String,
    key: PathBuf,
    known_hosts: PathBuf,
    work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let sshd = TestSshd::start(IP);
        let user = deploy_user();
        let key = sshd.authorize_new_key(&user);
        let work = tempfile::Builder::new()
            .prefix("blastgate-ssh-client-")
            .tempdir()
            .expect("tempdir");
        let known_hosts = work.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line()))
            .expect("write known_hosts");
        Setup {
            sshd,
            user,
            key,
            known_hosts,
            work,
        }
    }

    fn dest(&self) -> String {
        format!("{}@{IP}", self.user)
    }

    /// `ssh -i KEY -p PORT user@ip COMMAND` with the pinned known_hosts.
    fn ssh(&self, command: &str) -> Output {
        self.ssh_with(&self.known_hosts, &self.key, &self.user, command)
    }

    fn ssh_with(&self, known_hosts: &Path, key: &Path, user: &str, command: &str) -> Output {
        let port = self.sshd.port().to_string();
        let key = key.to_str().expect("utf-8");
        let dest = format!("{user}@{IP}");
        output_within(
            &mut ssh_command(known_hosts, &["-i", key, "-p", &port, &dest, command]),
            TIMEOUT,
        )
    }

    fn ok(&self, what: &str, out: Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.sshd.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// scp or sftp with the test options, `-i KEY -P PORT` and `args`.
    fn scp_like(&self, program: &str, args: &[&str]) -> Output {
        let mut c = Command::new(program);
        c.args(ssh_options(&self.known_hosts))
            .arg("-i")
            .arg(&self.key)
            .args(["-P", &self.sshd.port().to_string()])
            .args(args);
        output_within(&mut c, TIMEOUT)
    }

    /// sha256 of a file on the server, computed there.
    fn remote_sha256(&self, path: &Path) -> String {
        let out = self.ssh(&format!(
            "sha256sum {}",
            shell_quote(path.to_str().expect("utf-8"))
        ));
        let text = self.ok("remote sha256sum", out);
        text.split_whitespace().next().unwrap_or("").to_string()
    }
}

#[track_caller]
fn available() -> bool {
    TestSshd::available() && have_tools(&["sha256sum"])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exec_with_a_pinned_host_key_and_the_refusals() {
    if !available() {
        return;
    }
    let s = Setup::new();
    assert_eq!(s.ok("ssh echo ok", s.ssh("echo ok")), "ok\n");
    assert_eq!(
        s.ok("ssh id", s.ssh("id -un; echo $HOME")),
        format!("{}\n{}\n", s.user, home_of(&s.user).display())
    );
    assert!(
        s.sshd.wait_log(
            &format!("Accepted publickey for {} from", s.user),
            Duration::from_secs(5)
        ),
        "{}",
        s.sshd.log_tail()
    );

    // The key an OpenSSH client actually sees is the one to pin.
    let scan = Command::new("ssh-keyscan")
        .args([
            "-T",
            "10",
            "-t",
            "ed25519",
            "-p",
            &s.sshd.port().to_string(),
            IP,
        ])
        .output()
        .expect("run ssh-keyscan");
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout).trim(),
        s.sshd.known_hosts_line()
    );
    assert!(s.sshd.host_key().starts_with("ssh-ed25519 AAAA"));
    assert_eq!(s.sshd.host_key().split(' ').count(), 2);

    // No known key: refused before authentication.
    let empty = s.work.path().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let out = s.ssh_with(&empty, &s.key, &s.user, "echo ok");
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Host key verification failed."),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    // Another key for the same [ip]:port: refused too.
    let other = TestSshd::start(IP);
    let wrong = s.work.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!("[{IP}]:{} {}\n", s.sshd.port(), other.host_key()),
    )
    .expect("write");
    drop(other);
    let out = s.ssh_with(&wrong, &s.key, &s.user, "echo ok");
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            && stderr(&out).contains("Host key verification failed."),
        "{}",
        stderr(&out)
    );

    // A key authorized for someone else does not log in as the deploy user.
    let foreign = s.sshd.authorize_new_key("someone-else");
    let out = s.ssh_with(&s.known_hosts, &foreign, &s.user, "echo ok");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Permission denied (publickey)."),
        "{}",
        stderr(&out)
    );
    // Root may not log in, even with an authorized key.
    let root_key = s.sshd.authorize_new_key("root");
    let out = s.ssh_with(&s.known_hosts, &root_key, "root", "echo ok");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr(&out).contains("Permission denied (publickey)."),
        "{}",
        stderr(&out)
    );

    // Exit status and stderr pass through.
    let out = s.ssh("echo to-stderr >&2; exit 7");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stderr(&out), "to-stderr\n");

    // Only the requested address listens.
    assert!(TcpStream::connect(s.sshd.addr()).is_ok());
    assert!(TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", s.sshd.port()).parse().unwrap(),
        Duration::from_secs(2)
    )
    .is_err());
}

#[test]
fn scp_both_protocols_and_sftp_batch_round_trip_a_mebibyte() {
    if !available() || !have_tools(&["scp", "sftp"]) {
        return;
    }
    let s = Setup::new();
    let remote = UserTempDir::new(&s.user);
    let local = s.work.path().join("payload.bin");
    random_file(&local, 1 << 20);
    let want = sha256(&local);
    let local_str = local.to_str().expect("utf-8");

    // scp in 9.2 speaks SFTP by default; -O is the legacy scp protocol.
    for (mode, flags) in [("sftp", &[][..]), ("legacy", &["-O"][..])] {
        let up = remote.path().join(format!("up-{mode}.bin"));
        let mut args: Vec<&str> = flags.to_vec();
        let target = format!("{}:{}", s.dest(), up.display());
        args.extend(["-q", local_str, &target]);
        s.ok(&format!("scp ({mode}) upload"), s.scp_like(SCP, &args));
        assert_eq!(s.remote_sha256(&up), want, "scp ({mode}) upload");

        let back = s.work.path().join(format!("back-{mode}.bin"));
        let mut args: Vec<&str> = flags.to_vec();
        let back_str = back.to_str().expect("utf-8");
        args.extend(["-q", &target, back_str]);
        s.ok(&format!("scp ({mode}) download"), s.scp_like(SCP, &args));
        assert_eq!(sha256(&back), want, "scp ({mode}) download");
    }

    let batch = s.work.path().join("sftp.batch");
    let up = remote.path().join("sftp-up.bin");
    let back = s.work.path().join("sftp-back.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nls -l {}\nget {} {}\n",
            local.display(),
            up.display(),
            up.display(),
            up.display(),
            back.display()
        ),
    )
    .expect("write batch");
    let out = s.ok(
        "sftp -b",
        s.scp_like(SFTP, &["-b", batch.to_str().expect("utf-8"), &s.dest()]),
    );
    assert!(out.contains("1048576"), "sftp ls -l: {out}");
    assert_eq!(s.remote_sha256(&up), want, "sftp put");
    assert_eq!(sha256(&back), want, "sftp get");
    assert!(
        s.sshd
            .wait_log("Starting session: subsystem 'sftp'", Duration::from_secs(5)),
        "{}",
        s.sshd.log_tail()
    );
}

#[test]
fn rsync_over_ssh_both_ways() {
    if !available() || !have_tools(&["rsync"]) {
        return;
    }
    let s = Setup::new();
    let remote = UserTempDir::new(&s.user);
    let src = s.work.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    random_file(&src.join("a.bin"), 300_000);
    random_file(&src.join("sub/b.bin"), 5_000);
    std::fs::write(src.join("sub/c.txt"), "hello\n").expect("write");

    let e = ssh_command_line(
        &s.known_hosts,
        &[
            "-i",
            s.key.to_str().expect("utf-8"),
            "-p",
            &s.sshd.port().to_string(),
        ],
    );
    let rsync = |from: &str, to: &str| {
        let mut c = Command::new("rsync");
        c.args(["-a", "--delete", "-e", &e, from, to]);
        s.ok("rsync", output_within(&mut c, TIMEOUT));
    };
    let target = format!("{}:{}/tree/", s.dest(), remote.path().display());
    rsync(&format!("{}/", src.display()), &target);
    assert_eq!(
        s.remote_sha256(&remote.path().join("tree/a.bin")),
        sha256(&src.join("a.bin"))
    );
    assert_eq!(
        s.ok(
            "cat",
            s.ssh(&format!("cat {}/tree/sub/c.txt", remote.path().display()))
        ),
        "hello\n"
    );

    let back = s.work.path().join("back");
    rsync(&target, &format!("{}/", back.display()));
    for f in ["a.bin", "sub/b.bin", "sub/c.txt"] {
        assert_eq!(sha256(&back.join(f)), sha256(&src.join(f)), "{f}");
    }
}

#[test]
fn git_push_and_clone_over_ssh() {
    if !available() || !have_tools(&["git"]) {
        return;
    }
    let s = Setup::new();
    let repo = BareRepo::new(&s.user);
    assert!(repo.path().is_absolute() && repo.path().join("HEAD").exists());
    let url = format!(
        "ssh://{}@{IP}:{}{}",
        s.user,
        s.sshd.port(),
        repo.path().display()
    );
    let ssh = ssh_command_line(&s.known_hosts, &["-i", s.key.to_str().expect("utf-8")]);
    let git = |dir: &Path, args: &[&str]| -> String {
        let mut c = Command::new("git");
        git_over_ssh(&mut c, &ssh);
        c.args(args).current_dir(dir);
        s.ok(&format!("git {args:?}"), output_within(&mut c, TIMEOUT))
    };

    let first = s.work.path().join("first");
    std::fs::create_dir(&first).expect("mkdir");
    git(&first, &["init", "-q"]);
    std::fs::write(first.join("README"), "deployed by an agent\n").expect("write");
    git(&first, &["add", "README"]);
    git(&first, &["commit", "-q", "-m", "first"]);
    git(&first, &["push", "-q", &url, "main"]);

    let second = s.work.path().join("second");
    git(
        s.work.path(),
        &["clone", "-q", &url, second.to_str().expect("utf-8")],
    );
    assert_eq!(
        std::fs::read_to_string(second.join("README")).expect("cloned README"),
        "deployed by an agent\n"
    );
    std::fs::write(second.join("NOTES"), "second commit\n").expect("write");
    git(&second, &["add", "NOTES"]);
    git(&second, &["commit", "-q", "-m", "second"]);
    git(&second, &["push", "-q", "origin", "main"]);

    // The server's repository, as its owner sees it.
    let out = as_user(&s.user, "git")
        .arg("-C")
        .arg(repo.path())
        .args(["log", "--format=%s", "main"])
        .output()
        .expect("git log");
    assert_eq!(s.ok("git log on the server", out), "second\nfirst\n");
    let log = s.sshd.log_text();
    assert!(
        log.matches("Starting session: command").count() >= 3,
        "{}",
        s.sshd.log_tail()
    );
}

#[test]
fn deploy_user_is_idempotent_under_parallel_calls() {
    if !TestSshd::available() {
        return;
    }
    let names: Vec<String> = (0..6)
        .map(|_| std::thread::spawn(deploy_user))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("deploy_user panicked"))
        .collect();
    assert!(names.iter().all(|n| n == "blastgate-deploy"), "{names:?}");
    let home = home_of("blastgate-deploy");
    assert_eq!(home, Path::new("/var/lib/blastgate-deploy"));
    assert!(home.is_dir());
    let shadow = std::fs::read_to_string("/etc/shadow").expect("read shadow");
    let entry = shadow
        .lines()
        .find(|l| l.starts_with("blastgate-deploy:"))
        .expect("shadow entry");
    // Not locked (sshd without PAM refuses locked accounts), no password.
    assert_eq!(entry.split(':').nth(1), Some("*"));
}

/// Kills a client on drop, like any guard in these tests.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn drop_stops_the_server_and_its_sessions_even_after_a_panic() {
    if !available() {
        return;
    }
    let mut seen: Option<(PathBuf, Vec<u32>, std::net::SocketAddr)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Declared first, so dropped after the server: the session is still
        // open when the server goes.
        let client: Client;
        let s = Setup::new();
        let port = s.sshd.port().to_string();
        let dest = s.dest();
        // A session with a command left running in the background, which a
        // stopped listener alone would leave behind.
        let mut c = ssh_command(
            &s.known_hosts,
            &[
                "-i",
                s.key.to_str().expect("utf-8"),
                "-p",
                &port,
                &dest,
                "nohup sleep 300 >/dev/null 2>&1 & echo started; exec sleep 301",
            ],
        );
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        client = Client(c.spawn().expect("spawn ssh"));
        let pid = s.sshd.pid().expect("sshd pid");
        let tree = harness::wait_until(Duration::from_secs(20), || {
            let tree = process_tree(pid);
            let sleeps = tree.iter().filter(|p| comm(**p) == "sleep").count();
            (sleeps == 2).then_some(tree)
        })
        .unwrap_or_else(|| panic!("no session with two sleeps:\n{}", s.sshd.log_tail()));
        seen = Some((s.sshd.dir().to_path_buf(), tree, s.sshd.addr()));
        let _ = client.0.id();
        panic!("a test fails while a session is open");
    }));
    assert!(result.is_err());
    let (dir, tree, addr) = seen.expect("the session started");
    assert!(!dir.exists(), "{} left behind", dir.display());
    let alive: Vec<(u32, String)> = tree
        .iter()
        .filter(|p| process_alive(**p))
        .map(|p| (*p, comm(*p)))
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

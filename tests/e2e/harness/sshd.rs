//! A real OpenSSH server (Debian's `/usr/sbin/sshd`) for the end-to-end
//! tests: a throwaway server of the test's own, on one loopback address and
//! a free port, with its own ed25519 host key and public-key logins only,
//! plus the OS user the SSH tests log in as upstream and helpers to run the
//! real OpenSSH clients against it.
//!
//! sshd must run as root (privilege separation: it chroots into /run/sshd
//! and changes to the logged-in user). It runs as PID 1 of a PID namespace
//! of its own (`unshare --pid --fork --kill-child`): when it exits, the
//! kernel kills every process of every session it started, including
//! commands a session left running in the background, which would otherwise
//! outlive a stopped listener (sessions are separate process trees). The
//! `unshare` parent is a child of the test thread with PR_SET_PDEATHSIG, so
//! a test binary killed outright takes the server and its sessions with it.
//! [`TestSshd`] stops it and removes its directory on drop, also when the
//! test panicked.
//!
//! Things sshd insists on, and what the harness does about them:
//! - with `UsePAM no`, an account whose shadow password starts with `!`
//!   (what `useradd` leaves) is "locked" and refused even for public-key
//!   logins: [`deploy_user`] sets the password field to `*` (no password,
//!   not locked);
//! - sshd reads authorized_keys as the logging-in user: the server
//!   directory is 0711 (traversable, not listable) and the authorized_keys
//!   files are 0644, while keys stay 0600 root;
//! - /run/sshd (a tmpfs directory systemd would create) must exist;
//! - the privilege separation user `sshd` must exist (openssh-server's
//!   postinst creates it).

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use super::wait_until;

pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
pub const SCP: &str = "/usr/bin/scp";
pub const SFTP: &str = "/usr/bin/sftp";
const UNSHARE: &str = "/usr/bin/unshare";

/// The OS user the SSH tests log in as upstream.
pub const DEPLOY_USER: &str = "blastgate-deploy";
const DEPLOY_HOME: &str = "/var/lib/blastgate-deploy";
/// Serializes creating and fixing the deploy user across threads and
/// test binaries.
const DEPLOY_LOCK: &str = "/tmp/blastgate-deploy-user.lock";

const DIR_PREFIX: &str = "blastgate-sshd-";
const USER_DIR_PREFIX: &str = "blastgate-test-";

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A running sshd; stopped (with every session) and deleted on drop.
///
/// PR_SET_PDEATHSIG fires when the *thread* that started the server ends:
/// start and drop a `TestSshd` within one test, never share one through a
/// static.
pub struct TestSshd {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    ip: IpAddr,
    port: u16,
    /// `unshare`, whose only child is sshd.
    child: Option<Child>,
    keys: AtomicUsize,
}

impl TestSshd {
    /// Whether root, OpenSSH (server, client, ssh-keygen) and `unshare`
    /// are here; skips loudly otherwise (fatal with CI=true).
    #[track_caller]
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            blastgate::testing::skip(
                "the SSH tests run sshd, which needs root for privilege separation",
            );
            return false;
        }
        for bin in [SSHD, SSH, SSH_KEYGEN, UNSHARE] {
            if !Path::new(bin).exists() {
                blastgate::testing::skip(&format!(
                    "{bin} is missing (openssh-server, openssh-client, util-linux): \
                     run `cargo xtask setup`"
                ));
                return false;
            }
        }
        if user_ids("sshd").is_none() {
            blastgate::testing::skip(
                "no `sshd` privilege separation user (reinstall openssh-server)",
            );
            return false;
        }
        true
    }

    /// Starts sshd listening only on `ip` (a loopback address such as
    /// "127.0.0.2") and a free port. Panics (with the server log) if it
    /// does not listen within 30 s.
    pub fn start(ip: &str) -> TestSshd {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("bad ip {ip:?}: {e}"));
        assert!(
            ip.is_loopback(),
            "test servers listen on loopback only, not {ip}"
        );
        ensure_privsep_dir();
        remove_stale_dirs(Path::new("/tmp"), DIR_PREFIX);
        let dir = PathBuf::from(format!(
            "/tmp/{DIR_PREFIX}{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        ));
        // A leftover of an earlier run whose pid this process now has.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // 0711: sshd opens authorized_keys as the logging-in user.
        chmod(&dir, 0o711);
        // From here on, a panic drops `sshd`, which removes the directory.
        let mut sshd = TestSshd {
            config: dir.join("sshd_config"),
            log: dir.join("sshd.log"),
            dir,
            ip,
            port: 0,
            child: None,
            keys: AtomicUsize::new(0),
        };
        let auth = sshd.dir.join("authorized_keys");
        std::fs::create_dir(&auth).expect("create authorized_keys dir");
        chmod(&auth, 0o755);
        let keys = sshd.dir.join("keys");
        std::fs::create_dir(&keys).expect("create keys dir");
        chmod(&keys, 0o711);
        keygen(&sshd.host_key_path(), "blastgate-test-host");
        // The port is free when picked but may be taken before sshd binds
        // it: try a few.
        for attempt in 1..=5 {
            sshd.port = free_port_on(ip);
            sshd.write_config();
            match sshd.launch() {
                Ok(()) => return sshd,
                Err(why) if attempt < 5 && why.contains("Address already in use") => continue,
                Err(why) => panic!(
                    "sshd on {} did not start: {why}\n{}",
                    sshd.addr(),
                    sshd.log_tail()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn host_key_path(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    fn write_config(&self) {
        let listen = match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        };
        let text = format!(
            "# blastgate e2e test server\n\
             ListenAddress {listen}\n\
             HostKey {host_key}\n\
             PidFile {dir}/sshd.pid\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {dir}/authorized_keys/%u\n\
             StrictModes no\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             AllowStreamLocalForwarding yes\n\
             X11Forwarding no\n\
             PermitRootLogin no\n\
             UsePAM no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n\
             AcceptEnv LANG LC_* BASH_ENV\n\
             ClientAliveInterval 0\n\
             LoginGraceTime 30\n\
             MaxStartups 64:30:128\n\
             MaxSessions 64\n",
            host_key = self.host_key_path().display(),
            dir = self.dir.display(),
        );
        std::fs::write(&self.config, text).expect("write sshd_config");
    }

    /// Starts sshd on `self.port`; `Err` with the reason if it exits or
    /// does not listen within 30 s.
    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open sshd log");
        let mut cmd = Command::new(UNSHARE);
        // sshd is PID 1 of its own PID namespace; if unshare dies (the test
        // thread is gone), sshd is killed, and with it every session.
        cmd.args(["--pid", "--fork", "--kill-child=SIGKILL", "--", SSHD])
            .args(["-D", "-e", "-E"])
            .arg(&self.log)
            .arg("-f")
            .arg(&self.config)
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl in the child before exec; async-signal-safe. SIGKILL
        // because unshare blocks SIGTERM while it waits for its child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn unshare sshd"));
        let listening = format!("Server listening on {} port {}.", self.ip, self.port);
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status);
                    return Some(false);
                }
            }
            self.log_text().contains(&listening).then_some(true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => {
                self.child = None;
                let log = self.log_text();
                let last = log.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
                Err(format!("sshd exited ({status}): {last}"))
            }
            _ => {
                self.stop();
                Err("sshd did not log that it listens within 30 s".into())
            }
        }
    }

    /// `ip:port` the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's own directory (config, keys, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// sshd's pid (in this test's PID namespace), if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .as_ref()
            .and_then(|c| children_of(c.id()).first().copied())
    }

    /// The server's host public key line ("ssh-ed25519 AAAA…"), for pinning.
    pub fn host_key(&self) -> String {
        let path = self.host_key_path().with_extension("pub");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A known_hosts line for this server ("[ip]:port ssh-ed25519 AAAA…").
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}", self.ip, self.port, self.host_key())
    }

    /// Authorizes a new ed25519 key (no passphrase) for OS user `user`;
    /// returns the private key's path (inside the server directory, mode
    /// 0600, owned by root; the public key is beside it with `.pub`).
    pub fn authorize_new_key(&self, user: &str) -> PathBuf {
        assert!(
            !user.is_empty() && !user.contains('/') && user != "." && user != "..",
            "bad user name {user:?}"
        );
        let n = self.keys.fetch_add(1, Ordering::SeqCst);
        let key = self.dir.join("keys").join(format!("{user}-{n}"));
        keygen(&key, &format!("blastgate-test-{user}-{n}"));
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("read public key");
        let path = self.dir.join("authorized_keys").join(user);
        let mut f = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // One write with O_APPEND: keys authorized from parallel threads
        // do not interleave.
        f.write_all(format!("{}\n", public.trim()).as_bytes())
            .expect("append authorized key");
        chmod(&path, 0o644);
        key
    }

    /// The whole server log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` to appear in the server log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_text().contains(needle).then_some(())).is_some()
    }

    /// The server log's path and its last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- {} (last lines) ---\n{tail}", self.log.display())
    }

    /// SIGTERM to sshd, SIGKILL after 10 s; the kernel then kills every
    /// process left in its PID namespace (sessions, their commands).
    fn stop(&mut self) {
        let Some(mut unshare) = self.child.take() else {
            return;
        };
        let sshd = children_of(unshare.id());
        for pid in &sshd {
            // SAFETY: signalling the sshd this harness started, by pid.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let mut done = wait_until(Duration::from_secs(10), || {
            unshare.try_wait().ok().flatten()
        })
        .is_some();
        if !done {
            for pid in children_of(unshare.id()) {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            done = wait_until(Duration::from_secs(10), || {
                unshare.try_wait().ok().flatten()
            })
            .is_some();
        }
        if !done {
            let _ = unshare.kill();
            let _ = unshare.wait();
        }
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// An `ssh -M -N` ControlMaster, killed when dropped (also when a test
/// fails before it says `-O exit`).
pub struct ControlMaster(Child);

impl ControlMaster {
    /// Starts `ssh` (a command already naming `-M -N -o ControlPath=…` and
    /// the destination) and waits for its control socket.
    pub fn start(mut ssh: Command, control: &Path) -> ControlMaster {
        let child = ssh
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh -M");
        let master = ControlMaster(child);
        assert!(
            wait_until(Duration::from_secs(20), || control.exists().then_some(())).is_some(),
            "no control socket {}",
            control.display()
        );
        master
    }
}

impl Drop for ControlMaster {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every one of `tools` (e.g. "git", "rsync", "scp") runs from
/// PATH; skips loudly otherwise (fatal with CI=true).
#[track_caller]
pub fn have_tools(tools: &[&str]) -> bool {
    for tool in tools {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|d| {
                std::fs::metadata(d.join(tool))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        });
        if !found {
            blastgate::testing::skip(&format!(
                "`{tool}` is not installed: run `cargo xtask setup`"
            ));
            return false;
        }
    }
    true
}

/// The OS user the SSH tests log in as upstream: `blastgate-deploy` (home
/// /var/lib/blastgate-deploy, shell /bin/bash), created if missing and
/// made able to log in with a key under `UsePAM no` (shadow password `*`).
/// Idempotent; safe from parallel tests and test binaries. Returns the name.
pub fn deploy_user() -> String {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(DEPLOY_LOCK)
        .unwrap_or_else(|e| panic!("open {DEPLOY_LOCK}: {e}"));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
        panic!("flock {DEPLOY_LOCK}: {}", std::io::Error::last_os_error());
    }
    if user_ids(DEPLOY_USER).is_none() {
        let out = Command::new("useradd")
            .args(["--system", "--create-home", "--home-dir", DEPLOY_HOME])
            .args(["--shell", "/bin/bash", DEPLOY_USER])
            .output()
            .expect("run useradd");
        // 9: the user exists (created by something that ignores the lock).
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "useradd {DEPLOY_USER} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = passwd_entry(DEPLOY_USER).expect("the deploy user exists");
    // `!…` is a locked account, which sshd refuses without PAM.
    if shadow_password(DEPLOY_USER).is_some_and(|p| p.starts_with('!')) || pw.shell != "/bin/bash" {
        let out = Command::new("usermod")
            .args(["-p", "*", "-s", "/bin/bash", DEPLOY_USER])
            .output()
            .expect("run usermod");
        assert!(
            out.status.success(),
            "usermod {DEPLOY_USER} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let home = PathBuf::from(&pw.home);
    if !home.is_dir() {
        std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("create {}: {e}", home.display()));
        std::os::unix::fs::chown(&home, Some(pw.uid), Some(pw.gid)).expect("chown home");
        chmod(&home, 0o755);
    }
    DEPLOY_USER.to_string()
}

/// The home directory of OS user `user`.
pub fn home_of(user: &str) -> PathBuf {
    PathBuf::from(
        passwd_entry(user)
            .unwrap_or_else(|| panic!("no OS user {user}"))
            .home,
    )
}

/// A fresh directory owned by OS user `user` under its home
/// (`~/blastgate-test-<pid>-<n>`, mode 0755), removed on drop. Directories
/// of test binaries that died are removed when the next one is made.
pub struct UserTempDir {
    path: PathBuf,
}

impl UserTempDir {
    pub fn new(user: &str) -> UserTempDir {
        let pw = passwd_entry(user).unwrap_or_else(|| panic!("no OS user {user}"));
        let home = PathBuf::from(&pw.home);
        remove_stale_dirs(&home, USER_DIR_PREFIX);
        let path = home.join(format!(
            "{USER_DIR_PREFIX}{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let dir = UserTempDir { path };
        chmod(&dir.path, 0o755);
        std::os::unix::fs::chown(&dir.path, Some(pw.uid), Some(pw.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path.display()));
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UserTempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// A bare git repository (`…/repo.git`, initial branch `main`, empty)
/// owned by OS user `user`, in a fresh [`UserTempDir`]; removed on drop.
pub struct BareRepo {
    dir: UserTempDir,
    path: PathBuf,
}

impl BareRepo {
    pub fn new(user: &str) -> BareRepo {
        let dir = UserTempDir::new(user);
        let path = dir.path().join("repo.git");
        let out = as_user(user, "git")
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run git init");
        assert!(
            out.status.success(),
            "git init --bare as {user} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        BareRepo { dir, path }
    }

    /// The repository (`…/repo.git`), absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `program` as OS user `user` (runuser), with that user's HOME and no
/// GIT_* variables of the test's environment.
pub fn as_user(user: &str, program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", program]);
    c.env("HOME", home_of(user))
        .env("USER", user)
        .env("LOGNAME", user);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c
}

/// The options every test's OpenSSH client gets: no config file, no
/// prompts, the host key checked strictly against `known_hosts` only (not
/// /etc/ssh/ssh_known_hosts), only the identities given with `-i`.
/// For `ssh`, `scp` and `sftp` alike.
pub fn ssh_options(known_hosts: &Path) -> Vec<String> {
    let kh = known_hosts.to_str().expect("known_hosts path is UTF-8");
    assert!(
        !kh.chars().any(char::is_whitespace),
        "OpenSSH splits UserKnownHostsFile on whitespace: {kh:?}"
    );
    [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &format!("UserKnownHostsFile={kh}"),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `ssh` with [`ssh_options`] and then `args`, ready to run (or to take
/// apart with `get_program`/`get_args` and wrap, e.g. under `blastgate run`).
pub fn ssh_command(known_hosts: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(SSH);
    c.args(ssh_options(known_hosts)).args(args);
    c
}

/// The same as one shell command line, for `GIT_SSH_COMMAND` and
/// `rsync -e`: `/usr/bin/ssh -F /dev/null … EXTRA…`, each word quoted.
pub fn ssh_command_line(known_hosts: &Path, extra: &[&str]) -> String {
    std::iter::once(SSH.to_string())
        .chain(ssh_options(known_hosts))
        .chain(extra.iter().map(|s| s.to_string()))
        .map(|w| shell_quote(&w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets up `git` (a command already naming it) for the tests: a fixed
/// identity and branch, no global or system config, no prompts, and
/// `ssh_command` (see [`ssh_command_line`]) as its transport.
pub fn git_over_ssh(c: &mut Command, ssh_command: &str) {
    c.args([
        "-c",
        "user.name=blastgate test",
        "-c",
        "user.email=test@blastgate.invalid",
        "-c",
        "init.defaultBranch=main",
    ])
    .env("GIT_SSH_COMMAND", ssh_command)
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_TERMINAL_PROMPT", "0");
}

/// `word` quoted for a POSIX shell (bare if it is plainly safe).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with stdin from /dev/null and collects its output; panics
/// if it has not finished within `timeout` (then kills it, by pid): a
/// relay that deadlocks fails the test instead of hanging it.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let Collecting {
        mut child,
        out,
        err,
        readers,
    } = Collecting::spawn(cmd);
    let Some(status) = wait_until(timeout, || child.try_wait().ok().flatten()) else {
        let _ = child.kill();
        let _ = child.wait();
        // Not joining the readers: a grandchild may still hold the pipes.
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        };
        panic!(
            "{cmd:?} did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
            text(&out),
            text(&err)
        );
    };
    for r in readers {
        let _ = r.join();
    }
    let take =
        |b: Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner()));
    Output {
        status,
        stdout: take(out),
        stderr: take(err),
    }
}

/// A child with stdin from /dev/null whose stdout and stderr are
/// collected as they come.
pub struct Collecting {
    pub child: std::process::Child,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub err: Arc<Mutex<Vec<u8>>>,
    pub readers: [thread::JoinHandle<()>; 2],
}

impl Collecting {
    pub fn spawn(cmd: &mut Command) -> Collecting {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            reader(child.stdout.take().map(|s| Box::new(s) as _), out.clone()),
            reader(child.stderr.take().map(|s| Box::new(s) as _), err.clone()),
        ];
        Collecting {
            child,
            out,
            err,
            readers,
        }
    }
}

fn reader(src: Option<Box<dyn Read + Send>>, buf: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let Some(mut src) = src else { return };
        let mut chunk = [0u8; 65536];
        loop {
            match src.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// Pids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// sshd's privilege separation directory; on a tmpfs that systemd would
/// populate, so it is missing on a machine booted without it.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        match std::fs::create_dir(dir) {
            Ok(()) => chmod(dir, 0o755),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("create /run/sshd: {e}"),
        }
    }
}

/// `ssh-keygen -t ed25519` without passphrase into `path` (and `.pub`).
pub fn keygen(path: &Path, comment: &str) {
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {} failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    chmod(path, 0o600);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Directories `PREFIX<pid>-<n>` in `parent` of test binaries that were
/// killed outright (their servers died with them, the files stayed).
fn remove_stale_dirs(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // A zombie is dead too (this machine's init reaps lazily).
        if !process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn free_port_on(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// The crate's own account lookup (getpwnam_r).
fn passwd_entry(user: &str) -> Option<blastgate::identity::users::User> {
    blastgate::identity::users::lookup(user)
}

fn user_ids(user: &str) -> Option<(u32, u32)> {
    passwd_entry(user).map(|p| (p.uid, p.gid))
}

/// The password field of `user` in /etc/shadow.
fn shadow_password(user: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/shadow").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(user)).then(|| f.next().unwrap_or("").to_string())
    })
}

/// sha256 of a local file, hex (sha256sum).
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A file of `len` random bytes, written a mebibyte at a time (transfer
/// tests use hundreds of them).
pub fn random_file(path: &Path, len: usize) {
    use std::io::{Read, Write};
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = std::fs::File::create(path).expect("create random file");
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        urandom
            .read_exact(&mut chunk[..n])
            .expect("read /dev/urandom");
        out.write_all(&chunk[..n]).expect("write random file");
        left -= n;
    }
}

//! `cargo xtask bench git`: real git pushing a large generated repository
//! to a fresh bare repository per run, and cloning it back, over SSH and
//! over smart HTTP, in the same run:
//!
//! - **SSH**: direct to Debian's sshd on 127.0.0.2 (the real key, the
//!   server's host key; the sshd of the SSH bench), and through
//!   blastgate's SSH gateway (git under `blastgate run`, no key, the
//!   gateway's host certificate checked against `blastgate ca
//!   ssh-known-hosts`; the gateway decides the `git-receive-pack` exec and
//!   each ref update as `git:push`). No peer: the SSH bench has none
//!   either, and no SSH relay that could stand in (one that terminates
//!   both legs) installs from the registries here.
//! - **smart HTTP**: direct to `git http-backend` behind Debian's nginx
//!   and fcgiwrap (as tests/e2e/harness/git_server.rs serves it), through
//!   blastgate's HTTP gateway (git under `blastgate run` dials the
//!   server's own address; the `http` target decides each request and
//!   each ref update of the push), and through a second nginx as a plain
//!   reverse proxy in front of the backend (request and response bodies
//!   streamed), the peer.
//!
//! The daemon runs the shipped policies unchanged: git-receive-pack and
//! git-upload-pack run without approval over SSH, and the push creates
//! `feature`, which git.cedar allows (no hold). The pushed repository is
//! generated once, deterministically, with `git fast-import`: N commits
//! (default 3000) each changing one of 64 small text files, and one
//! 1 MB blob of random (incompressible) bytes per MB of `--git-mb`
//! (default 200), spread over the history. The HTTP cells push a
//! repository with `--git-http-mb` of blobs (default 200: the same one);
//! when the two differ, the `--git-mb` repository is also pushed over
//! HTTP through blastgate once, unmeasured, and what happened is
//! reported. The MB/s column is the pack bytes the
//! server received from the first (unmeasured) direct push over the
//! median seconds.
//!
//! Cells, per repetition each on every path of its transport in turn,
//! the order rotated each repetition: `git push URL feature` into a new
//! bare repository (the server's ref checked afterwards), then `git clone
//! --bare` of the repository that path pushed (its ref checked). The
//! first run of each path is an unmeasured push (the warm-up and the
//! check that every path works). Afterwards the spool must hold an
//! allowed `git:push` record per push made through blastgate.
//!
//! Pinning as in the other benches: git on CPU 0, sshd, nginx, fcgiwrap,
//! git http-backend and the daemon and nginx peer on CPU 1 (override with
//! BLASTGATE_BENCH_CLIENT_CPUS, …_SERVER_CPUS, …_PROXY_CPUS). Files live
//! on /dev/shm. Everything started here is stopped on every way out, the
//! pin directory uninstalled and the scratch directory removed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    bench_aws::{failures, load, rotated, scratch, timed, transfer_table, Transfer, Via},
    bench_http::{fmt, nginx_conf, spool_lines, start_nginx, NGINX},
    bench_postgres::{die_with_parent, free_port, prepare, Daemon, DaemonOpts},
    bench_ssh::{
        chmod, daemon_config, deploy_user, shipped_policies, ssh_options, Sshd, DEPLOY_USER,
        SERVER_IP,
    },
    demo::{wait_for, Guard},
    sh,
};

const PIN_DIR: &str = "/sys/fs/bpf/blastgate-bench-git";
const AGENT: &str = "bench";
const FCGIWRAP: &str = "/usr/sbin/fcgiwrap";
const HTTP_BACKEND: &str = "/usr/lib/git-core/git-http-backend";
/// Where the nginx peer listens.
const FRONT_IP: &str = "127.0.0.1";
/// The branch pushed: not a protected one, so no hold.
const BRANCH: &str = "feature";
/// Bytes of each random blob.
const BLOB: usize = 1_000_000;
/// Small text files the commits take turns changing.
const TEXT_FILES: u64 = 64;

pub struct Opts {
    pub reps: usize,
    /// Random blobs, one MB each, of the repository pushed over SSH.
    pub mb: u64,
    /// The same, of the repository pushed over smart HTTP.
    pub http_mb: u64,
    pub commits: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ssh,
    Http,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Ssh => "ssh",
            Transport::Http => "http",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::Ssh => 0,
            Transport::Http => 1,
        }
    }

    fn paths(self) -> &'static [Via] {
        match self {
            Transport::Ssh => &[Via::Direct, Via::Blastgate],
            Transport::Http => &[Via::Direct, Via::Blastgate, Via::Peer],
        }
    }
}

/// xorshift64: the same bytes on every machine and run.
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// The fast-import stream of the generated history (branch [`BRANCH`]):
/// `commits` commits, fixed authors and dates, each changing one text
/// file; `blobs` random blobs of [`BLOB`] bytes spread evenly over them.
fn write_history(out: &mut impl Write, commits: u64, blobs: u64) -> Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut blob = vec![0u8; BLOB];
    let mut next_blob = 0u64;
    for i in 0..commits {
        let when = 1_700_000_000 + i * 60;
        let msg = format!("commit {i} of the bench history\n");
        write!(
            out,
            "commit refs/heads/{BRANCH}\nmark :{}\n\
             author Bench <bench@blastgate.invalid> {when} +0000\n\
             committer Bench <bench@blastgate.invalid> {when} +0000\n\
             data {}\n{msg}",
            i + 1,
            msg.len()
        )?;
        if i > 0 {
            writeln!(out, "from :{i}")?;
        }
        let text = format!("line {i}: the bench repository's text file\n").repeat(4);
        write!(
            out,
            "M 100644 inline src/file-{}.txt\ndata {}\n{text}\n",
            i % TEXT_FILES,
            text.len()
        )?;
        // Blob k lands in commit k * commits / blobs.
        while next_blob < blobs && next_blob * commits / blobs == i {
            rng.fill(&mut blob);
            write!(
                out,
                "M 100644 inline blobs/blob-{next_blob:05}.bin\ndata {BLOB}\n"
            )?;
            out.write_all(&blob)?;
            out.write_all(b"\n")?;
            next_blob += 1;
        }
    }
    Ok(())
}

/// git with no host or user configuration and no prompts.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// The source repository at `repo`, its history from [`write_history`];
/// the branch's commit.
fn generate(repo: &Path, commits: u64, blobs: u64) -> Result<String> {
    sh::stdout(git().args(["init", "-q", "--bare"]).arg(repo))?;
    let mut child = git()
        .arg("--git-dir")
        .arg(repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting git fast-import")?;
    let written = match child.stdin.take() {
        Some(stdin) => {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
            write_history(&mut w, commits, blobs).and_then(|()| Ok(w.flush()?))
        }
        None => Err(anyhow::anyhow!("no pipe to git fast-import")),
    };
    let status = child.wait()?;
    written?;
    if !status.success() {
        bail!("git fast-import failed ({status})");
    }
    rev(repo, BRANCH)
}

/// The value of `refs/heads/NAME` in the repository at `repo`.
fn rev(repo: &Path, name: &str) -> Result<String> {
    Ok(sh::stdout(git().arg("--git-dir").arg(repo).args([
        "rev-parse",
        "--verify",
        "-q",
        &format!("refs/heads/{name}"),
    ]))?
    .trim()
    .to_string())
}

/// Bytes of the packs of a repository.
fn pack_bytes(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Where each path is and how git is run on it.
struct Bench {
    blastgate: PathBuf,
    config: PathBuf,
    client_cpus: String,
    scratch: PathBuf,
    /// The repositories pushed over SSH and over HTTP, and their
    /// branch's commit.
    sources: [(PathBuf, String); 2],
    /// `GIT_SSH_COMMAND` direct (with the key) and as the agent.
    ssh_direct: String,
    ssh_agent: String,
    sshd_port: u16,
    /// Bare repositories the SSH pushes go to (owned by the deploy user)
    /// and those `git http-backend` serves.
    ssh_root: PathBuf,
    http_root: PathBuf,
    http_port: u16,
    peer_port: u16,
    deploy: (u32, u32),
    daemon_pid: Option<u32>,
    peer_pid: Option<u32>,
    limit: Duration,
}

impl Bench {
    /// A new bare repository for `t`'s server, named `name`; its path.
    fn new_repo(&self, t: Transport, name: &str) -> Result<PathBuf> {
        let path = self.root(t).join(name);
        let _ = std::fs::remove_dir_all(&path);
        sh::stdout(
            git()
                .args(["init", "-q", "--bare", "--initial-branch=main"])
                .arg(&path),
        )?;
        match t {
            Transport::Ssh => {
                sh::stdout(
                    Command::new("chown")
                        .arg("-R")
                        .arg(format!("{}:{}", self.deploy.0, self.deploy.1))
                        .arg(&path),
                )?;
            }
            Transport::Http => {
                sh::stdout(git().arg("--git-dir").arg(&path).args([
                    "config",
                    "http.receivepack",
                    "true",
                ]))?;
            }
        }
        Ok(path)
    }

    /// Where `t`'s server keeps its repositories.
    fn root(&self, t: Transport) -> &Path {
        match t {
            Transport::Ssh => &self.ssh_root,
            Transport::Http => &self.http_root,
        }
    }

    fn url(&self, t: Transport, via: Via, name: &str) -> String {
        match (t, via) {
            (Transport::Ssh, _) => format!(
                "ssh://{DEPLOY_USER}@{SERVER_IP}:{}{}",
                self.sshd_port,
                self.ssh_root.join(name).display()
            ),
            (Transport::Http, Via::Peer) => {
                format!("http://{FRONT_IP}:{}/{name}", self.peer_port)
            }
            (Transport::Http, _) => format!("http://{SERVER_IP}:{}/{name}", self.http_port),
        }
    }

    /// `taskset -c CLIENT [blastgate run --agent bench --config C --] git`.
    fn git(&self, via: Via) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]).current_dir(&self.scratch);
        if via == Via::Blastgate {
            c.arg(&self.blastgate)
                .args(["run", "--agent", AGENT, "--config"])
                .arg(&self.config)
                .arg("--");
        }
        c.arg("git")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env(
                "GIT_SSH_COMMAND",
                if via == Via::Blastgate {
                    &self.ssh_agent
                } else {
                    &self.ssh_direct
                },
            );
        c
    }

    fn proxy_pid(&self, via: Via) -> Option<u32> {
        match via {
            Via::Direct => None,
            Via::Blastgate => self.daemon_pid,
            Via::Peer => self.peer_pid,
        }
    }

    /// `git push URL feature` of `source` into the new repository
    /// `name`, timed; the server's ref checked.
    fn push_from(
        &self,
        (source, head): &(PathBuf, String),
        t: Transport,
        via: Via,
        name: &str,
    ) -> Result<(crate::bench_aws::Run, String)> {
        let repo = self.new_repo(t, name)?;
        let mut c = self.git(via);
        c.arg("--git-dir")
            .arg(source)
            .args(["push", "-q"])
            .arg(self.url(t, via, name))
            .arg(BRANCH);
        let command = sh::describe(&c);
        let what = format!("git push over {} via {}", t.name(), via.name());
        let (_, run) = timed(
            &mut c,
            &self.scratch,
            self.limit,
            &what,
            (self.proxy_pid(via), None),
        )?;
        let got = rev(&repo, BRANCH).unwrap_or_default();
        if &got != head {
            bail!("{what}: the server's {BRANCH} is {got:?}, not {head}");
        }
        Ok((run, command))
    }

    /// [`Bench::push_from`] of `t`'s own source.
    fn push(&self, t: Transport, via: Via, name: &str) -> Result<(crate::bench_aws::Run, String)> {
        self.push_from(&self.sources[t.index()], t, via, name)
    }

    /// `git clone --bare URL` of the repository `name`, timed; its ref
    /// checked, then removed.
    fn clone(&self, t: Transport, via: Via, name: &str) -> Result<(crate::bench_aws::Run, String)> {
        let dest = self.scratch.join("clone.git");
        let _ = std::fs::remove_dir_all(&dest);
        let mut c = self.git(via);
        c.args(["clone", "-q", "--bare"])
            .arg(self.url(t, via, name))
            .arg(&dest);
        let command = sh::describe(&c);
        let what = format!("git clone over {} via {}", t.name(), via.name());
        let result = timed(
            &mut c,
            &self.scratch,
            self.limit,
            &what,
            (self.proxy_pid(via), None),
        );
        let got = rev(&dest, BRANCH).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dest);
        let (_, run) = result?;
        let head = &self.sources[t.index()].1;
        if &got != head {
            bail!("{what}: the clone's {BRANCH} is {got:?}, not {head}");
        }
        Ok((run, command))
    }
}

/// An nginx config whose worker stays root, as the bench that starts it:
/// it connects to root's fcgiwrap socket and buffers pushed packs in the
/// bench's directories (a worker dropped to `nobody` can do neither).
fn as_root(conf: &str) -> String {
    format!("user root root;\n{conf}")
}

/// fcgiwrap and nginx serving `root` with `git http-backend` on
/// SERVER_IP, pinned to `cpus`; stopped (by pid) on drop.
fn start_git_http(dir: &Path, root: &Path, cpus: &str) -> Result<(Guard, Guard, u16)> {
    let sock = dir.join("fcgi.sock");
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus, FCGIWRAP, "-s"])
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null());
    die_with_parent(&mut cmd, libc::SIGTERM);
    let fcgi = Guard::spawn("fcgiwrap", &mut cmd)?;
    wait_for("fcgiwrap's socket", Duration::from_secs(10), || {
        sock.exists()
    })?;
    let port = free_port(SERVER_IP)?;
    let conf = nginx_conf(
        dir,
        &format!(
            "    server {{\n\
             \x20       listen {SERVER_IP}:{port};\n\
             \x20       client_max_body_size 0;\n\
             \x20       location / {{\n\
             \x20           include /etc/nginx/fastcgi_params;\n\
             \x20           fastcgi_pass unix:{sock};\n\
             \x20           fastcgi_read_timeout 600s;\n\
             \x20           fastcgi_send_timeout 600s;\n\
             \x20           fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};\n\
             \x20           fastcgi_param GIT_PROJECT_ROOT {root};\n\
             \x20           fastcgi_param GIT_HTTP_EXPORT_ALL \"\";\n\
             \x20           fastcgi_param PATH_INFO $uri;\n\
             \x20       }}\n\
             \x20   }}\n",
            sock = sock.display(),
            root = root.display(),
        ),
    );
    let nginx = start_nginx(dir, &as_root(&conf), cpus, (SERVER_IP, &[port]), None)?;
    Ok((fcgi, nginx, port))
}

/// nginx as a plain reverse proxy in front of the git server.
fn start_peer(dir: &Path, upstream: u16, cpus: &str) -> Result<(Guard, u16)> {
    let port = free_port(FRONT_IP)?;
    let conf = nginx_conf(
        dir,
        &format!(
            "    upstream git_backend {{\n\
             \x20       server {SERVER_IP}:{upstream};\n\
             \x20       keepalive 16;\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen {FRONT_IP}:{port};\n\
             \x20       client_max_body_size 0;\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://git_backend;\n\
             \x20           proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n\
             \x20           proxy_request_buffering off;\n\
             \x20           proxy_buffering off;\n\
             \x20           proxy_read_timeout 600s;\n\
             \x20           proxy_send_timeout 600s;\n\
             \x20       }}\n\
             \x20   }}\n"
        ),
    );
    let guard = start_nginx(dir, &as_root(&conf), cpus, (FRONT_IP, &[port]), None)?;
    Ok((guard, port))
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    if !sh::is_root() {
        bail!("the git benchmark runs sshd and attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.mb == 0 || opts.http_mb == 0 || opts.commits == 0 {
        bail!("--reps, --git-mb, --git-http-mb and --git-commits must be at least 1");
    }
    let (bin, [client_cpus, server_cpus, proxy_cpus]) = prepare(
        root,
        &[
            NGINX,
            FCGIWRAP,
            HTTP_BACKEND,
            "/usr/sbin/sshd",
            "/usr/bin/ssh",
        ],
    )?;
    let deploy = deploy_user()?;

    // Dropped in reverse: daemon, peer, git server, sshd, the directory.
    let (dir, _scratch) = scratch("git")?;
    // 0711: sshd reads authorized_keys, and git runs as the deploy user,
    // below here.
    chmod(&dir, 0o711)?;
    let ssh_root = dir.join("ssh-repos");
    std::fs::create_dir(&ssh_root)?;
    chmod(&ssh_root, 0o755)?;
    let http_root = dir.join("http-repos");
    std::fs::create_dir(&http_root)?;

    let mut sources: Vec<(PathBuf, String)> = Vec::new();
    for mb in [opts.mb, opts.http_mb] {
        let source = dir.join(format!("source-{mb}.git"));
        if let Some(same) = sources.iter().find(|(s, _)| *s == source) {
            sources.push(same.clone());
            continue;
        }
        eprintln!(
            "bench: generating a repository ({} commits, {mb} MB of random blobs)",
            opts.commits
        );
        let head = generate(&source, opts.commits, mb)?;
        sources.push((source, head));
    }
    let sources: [(PathBuf, String); 2] = [sources[0].clone(), sources[1].clone()];

    eprintln!("bench: starting sshd and the git HTTP server on {SERVER_IP} (CPU {server_cpus})");
    let sshd = Sshd::start(&dir.join("sshd"), &server_cpus)?;
    let key = sshd.authorize_new_key(DEPLOY_USER)?;
    let direct_known_hosts = dir.join("direct_known_hosts");
    std::fs::write(
        &direct_known_hosts,
        format!("{}\n", sshd.known_hosts_line()?),
    )?;
    let (_fcgi, _git_http, http_port) =
        start_git_http(&dir.join("git-http"), &http_root, &server_cpus)?;
    eprintln!("bench: starting the nginx peer (CPU {proxy_cpus})");
    let (peer, peer_port) = start_peer(&dir.join("nginx-peer"), http_port, &proxy_cpus)?;

    let policy = dir.join("policy");
    shipped_policies(root, &policy, &[])?;
    let config = dir.join("blastgate.toml");
    let http_target = format!(
        "\n[[targets]]\nname = \"bench-git-http\"\nprotocol = \"http\"\n\
         address = \"{SERVER_IP}:{http_port}\"\nhostnames = [\"{SERVER_IP}\"]\n\n[targets.http]\n"
    );
    std::fs::write(
        &config,
        daemon_config(
            &dir,
            free_port("127.0.0.1")?,
            sshd.port,
            &policy,
            (&key, &direct_known_hosts),
            (PIN_DIR, &http_target),
        ),
    )?;
    sh::run(Command::new(&bin).arg("check-config").arg(&config))?;
    let limit = Duration::from_secs(120 + 2 * opts.mb);
    let deadline = 900 + (opts.reps as u64 + 1) * 10 * limit.as_secs();
    eprintln!("bench: starting the blastgate daemon (CPU {proxy_cpus})");
    let daemon = Daemon::start(
        &bin,
        &config,
        &dir,
        &DaemonOpts {
            pin_dir: PIN_DIR,
            label: "git",
            cpus: &proxy_cpus,
            deadline_secs: deadline,
            log_filter: "warn",
        },
    )?;
    let lines = sh::stdout(
        Command::new(&bin)
            .args(["ca", "ssh-known-hosts", "--config"])
            .arg(&config),
    )?;
    let agent_known_hosts = dir.join("agent_known_hosts");
    std::fs::write(&agent_known_hosts, &lines)?;
    let ssh_line = |kh: &Path, key: Option<&Path>| {
        std::iter::once("ssh".to_string())
            .chain(ssh_options(kh, key))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let b = Bench {
        blastgate: bin.clone(),
        config: config.clone(),
        client_cpus: client_cpus.clone(),
        scratch: dir.clone(),
        sources,
        ssh_direct: ssh_line(&direct_known_hosts, Some(&key)),
        ssh_agent: ssh_line(&agent_known_hosts, None),
        sshd_port: sshd.port,
        ssh_root,
        http_root,
        http_port,
        peer_port,
        deploy: (deploy.uid, deploy.gid),
        daemon_pid: daemon.pid(),
        peer_pid: peer.pid(),
        limit,
    };

    // Warm-up and check: one push on every path; the pack sizes from the
    // direct ones.
    let mut pushes_through_blastgate = 0;
    let mut packs = [0u64; 2];
    for t in [Transport::Ssh, Transport::Http] {
        for &via in t.paths() {
            let name = format!("warm-{}-{}.git", t.name(), via.name());
            b.push(t, via, &name).with_context(|| {
                format!("the warm-up push over {} via {}", t.name(), via.name())
            })?;
            let repo = b.root(t).join(&name);
            if via == Via::Direct {
                packs[t.index()] = pack_bytes(&repo);
            }
            pushes_through_blastgate += usize::from(via == Via::Blastgate);
            let _ = std::fs::remove_dir_all(&repo);
        }
    }
    eprintln!(
        "bench: every path pushes; the packs are {:.1} MB (ssh) and {:.1} MB (http)",
        packs[0] as f64 / 1e6,
        packs[1] as f64 / 1e6
    );
    // The SSH cells' repository over HTTP through blastgate, once, when
    // the HTTP cells push another.
    let probe = (opts.mb != opts.http_mb).then(|| {
        let name = "probe-http-blastgate.git";
        let outcome = match b.push_from(&b.sources[0], Transport::Http, Via::Blastgate, name) {
            Ok((run, _)) => {
                pushes_through_blastgate += 1;
                format!("pushed in {:.2} s", run.secs)
            }
            Err(e) => {
                let text = format!("{e:#}");
                let why = text
                    .lines()
                    .find(|l| l.contains("error:") || l.contains("fatal:"))
                    .unwrap_or("failed")
                    .trim()
                    .to_string();
                format!("FAILED: {why}")
            }
        };
        let _ = std::fs::remove_dir_all(b.http_root.join(name));
        eprintln!(
            "bench: the {} MB push over HTTP through blastgate: {outcome}",
            opts.mb
        );
        outcome
    });

    let mut cells = Vec::new();
    for t in [Transport::Ssh, Transport::Http] {
        let pack = packs[t.index()];
        let mb = pack as f64 / 1e6;
        cells.push(Transfer::new(
            format!("push {} {mb:.0} MB", t.name()),
            pack,
            t.paths(),
        ));
        cells.push(Transfer::new(
            format!("clone {} {mb:.0} MB", t.name()),
            pack,
            t.paths(),
        ));
    }
    for rep in 0..opts.reps {
        for (k, t) in [Transport::Ssh, Transport::Http].into_iter().enumerate() {
            let order = rotated(t.paths(), rep);
            let name = |via: Via| format!("r{rep}-{}-{}.git", t.name(), via.name());
            for &via in &order {
                let what = format!("push over {} via {}", t.name(), via.name());
                cells[2 * k]
                    .outcome(via)?
                    .take(&what, || b.push(t, via, &name(via)))?;
                pushes_through_blastgate += usize::from(via == Via::Blastgate);
            }
            for &via in &order {
                let what = format!("clone over {} via {}", t.name(), via.name());
                cells[2 * k + 1]
                    .outcome(via)?
                    .take(&what, || b.clone(t, via, &name(via)))?;
            }
            for &via in &order {
                let _ = std::fs::remove_dir_all(b.root(t).join(name(via)));
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, opts.reps);
    }
    drop(daemon);
    let pins_left = Path::new(PIN_DIR).exists();
    let mut recorded = 0usize;
    spool_lines(&dir.join("spool"), |line| {
        if line.contains("\"action\":\"git:push\"") && line.contains("\"verdict\":\"allow\"") {
            recorded += 1;
        }
    });
    drop(peer);
    drop(sshd);

    println!(
        "\nblastgate git bench: git push and git clone --bare of generated repositories ({} \
         commits; {} MB of random blobs over ssh, {} MB over http) into a fresh bare repository \
         per push, medians of {} repetitions, path order rotated each repetition",
        opts.commits, opts.mb, opts.http_mb, opts.reps
    );
    println!(
        "(git on CPU {client_cpus}; sshd, nginx + fcgiwrap + git http-backend on CPU \
         {server_cpus}; blastgate and the nginx peer on CPU {proxy_cpus}; MB/s = pack bytes / \
         median s; /direct and /nginx = MB/s ratios; proxy CPU = its CPU time / wall time; no SSH \
         peer; load average at the end: {})",
        load()
    );
    let table = transfer_table(&cells, "server");
    if let Some(p) = &probe {
        println!(
            "\n  the {} MB repository (the ssh cells') pushed over http through blastgate, once: \
             {p}",
            opts.mb
        );
    }
    println!(
        "\nrecords: {recorded} allowed git:push events in the spool for {pushes_through_blastgate} \
         pushes through blastgate"
    );
    println!("\ncommands (first repetition):");
    for cell in &cells {
        for (via, o) in &cell.paths {
            if let Some(c) = &o.command {
                println!("  {} / {}: {c}", cell.name, via.name());
            }
        }
    }
    let ratio = |i: usize| {
        let c: &Transfer = &cells[i];
        let direct = c.paths[0].1.runs.iter().map(|r| r.secs).collect();
        let bg = c.paths[1].1.runs.iter().map(|r| r.secs).collect();
        crate::bench_postgres::median(direct) / crate::bench_postgres::median(bg)
    };
    println!(
        "\nthrough blastgate / direct: push over ssh {}, push over http {}, clone over ssh {}, \
         clone over http {}",
        fmt(ratio(0), 2),
        fmt(ratio(2), 2),
        fmt(ratio(1), 2),
        fmt(ratio(3), 2)
    );
    let report = json!({
        "reps": opts.reps, "mb": opts.mb, "http_mb": opts.http_mb, "commits": opts.commits,
        "pack_bytes": {"ssh": packs[0], "http": packs[1]}, "large_push_over_http_via_blastgate": probe,
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "load": load(), "cells": table,
        "records": {"git_push_allowed": recorded, "pushes_through_blastgate": pushes_through_blastgate},
    });
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("git.json"), serde_json::to_string_pretty(&report)?)?;
    println!("(also written to target/bench/git.json)");

    let failed = failures(&cells);
    for f in &failed {
        println!("\nFAILED {f}");
    }
    if pins_left {
        bail!("the bench daemon left {PIN_DIR} behind");
    }
    if recorded < pushes_through_blastgate {
        bail!(
            "the daemon recorded {recorded} allowed git:push events for \
             {pushes_through_blastgate} pushes through it"
        );
    }
    if !failed.is_empty() {
        bail!("{} git bench cell(s) failed (details above)", failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_deterministic_and_spreads_the_blobs() {
        let mut a = Vec::new();
        write_history(&mut a, 10, 3).unwrap();
        let mut b = Vec::new();
        write_history(&mut b, 10, 3).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8_lossy(&a);
        assert_eq!(text.matches("commit refs/heads/feature").count(), 10);
        assert_eq!(text.matches("inline blobs/blob-").count(), 3);
        assert!(a.len() > 3 * BLOB);
        // More blobs than commits: all of them still land.
        let mut c = Vec::new();
        write_history(&mut c, 2, 5).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&c)
                .matches("inline blobs/blob-")
                .count(),
            5
        );
    }

    #[test]
    fn git_imports_the_history() {
        let dir = std::env::temp_dir().join(format!("bench-git-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let repo = dir.join("r.git");
        let head = generate(&repo, 12, 3).unwrap();
        let again = generate(&dir.join("again.git"), 12, 3).unwrap();
        let in_repo = |args: &[&str]| sh::stdout(git().arg("--git-dir").arg(&repo).args(args));
        let count = in_repo(&["rev-list", "--count", BRANCH]).unwrap();
        let files = in_repo(&["ls-tree", "-r", "--name-only", BRANCH]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(head.len(), 40);
        assert_eq!(head, again, "the same history, the same commit");
        assert_eq!(count.trim(), "12");
        assert_eq!(files.lines().filter(|f| f.starts_with("blobs/")).count(), 3);
        assert_eq!(files.lines().filter(|f| f.starts_with("src/")).count(), 12);
    }
}

//! `cargo xtask bench --only ssh`: OpenSSH's own clients against one
//! throwaway Debian sshd over two paths in the same run: direct (the real
//! key, the server's own host key) and through blastgate's SSH gateway (the
//! client enrolled with `blastgate run`, no key of its own, the gateway's
//! host certificate checked against `blastgate ca ssh-known-hosts`).
//!
//! Cells, every one run on both paths in turn in each repetition so that
//! drift on this shared machine hits both alike (medians reported):
//! - `scp` of a random file (default 300 MB), upload and download, in the
//!   default SFTP mode and the legacy `-O` mode: MB/s and ratio to direct;
//! - two-way bulk: `ssh host 'cat > /dev/null' < file` and
//!   `ssh host cat < file > out`: MB/s, ratio;
//! - keystroke echo: `ssh -tt host cat`, one byte written every 20 ms, the
//!   time until the remote pty's echo of it arrives: p50/p99, and the
//!   latency blastgate adds.
//!
//! Every copy is checked against the source's sha256 once per cell and
//! path (a mismatch fails the bench), its size every time. On the blastgate
//! path the daemon's RSS is sampled every 50 ms during each run and its
//! VmHWM reset before it (`clear_refs`), so peak memory is per run: the
//! gateway must hold a bounded window, not the transfer.
//!
//! The daemon runs with the shipped policies except `ssh.cedar`, replaced
//! by one permit of exec, shell and sftp (the shipped file holds unlisted
//! commands and shells for a human; the bench measures the relay, not an
//! approval queue); forwarding stays refused. A cell that fails (a gateway
//! bug, a timeout) is reported with its command line, stderr and the
//! daemon's log lines, not retried, and the other cells go on; the bench
//! exits non-zero at the end if any cell failed.
//!
//! Pinning (design.md, "Benchmark method"), as in the postgres bench:
//! ssh/scp and the bench itself (which reads the echo) on CPU 0; sshd, its
//! sessions and the blastgate daemon on CPU 1, so the proxy's CPU is taken
//! from the server and direct has CPU 1 to itself. Override with
//! BLASTGATE_BENCH_CLIENT_CPUS, BLASTGATE_BENCH_SERVER_CPUS and
//! BLASTGATE_BENCH_PROXY_CPUS. Files live on /dev/shm (tmpfs), so disk
//! speed is not what is measured.
//!
//! Everything started here is stopped on every way out (guards, by pid;
//! children also get PR_SET_PDEATHSIG; sshd is PID 1 of its own PID
//! namespace, so its sessions die with it), the bench pin directory is
//! uninstalled and the scratch directory removed.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    bench_postgres::{
        catch_interrupts, check_interrupted, cpus, die_with_parent, dir_bytes, free_port, median,
        tail, Daemon, DaemonOpts, ScratchDir, INTERRUPTED,
    },
    demo::wait_for,
    sh,
};

const SSHD: &str = "/usr/sbin/sshd";
const SSH: &str = "/usr/bin/ssh";
const SCP: &str = "/usr/bin/scp";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const UNSHARE: &str = "/usr/bin/unshare";
/// Its own pin directory: a postgres bench or a test daemon may be
/// attached at the same time.
const PIN_DIR: &str = "/sys/fs/bpf/blastgate-bench-ssh";
const AGENT: &str = "bench";
/// Where sshd listens; the agent dials it and is redirected.
pub(crate) const SERVER_IP: &str = "127.0.0.2";

/// The OS user the bench logs in as upstream: the same one the e2e tests
/// use (tests/e2e/harness/sshd.rs), created the same way if missing.
pub(crate) const DEPLOY_USER: &str = "blastgate-deploy";
pub(crate) const DEPLOY_HOME: &str = "/var/lib/blastgate-deploy";
/// The harness's lock: creating and fixing the user is serialized with
/// test binaries running at the same time.
const DEPLOY_LOCK: &str = "/tmp/blastgate-deploy-user.lock";

/// Keystrokes measured per session, and the pause between them (a fast
/// typist; each echo is back long before the next key).
const KEYSTROKES: usize = 200;
const KEY_GAP: Duration = Duration::from_millis(20);
/// Unmeasured keystrokes first: the first echoes pay for cold paths.
const WARM_KEYSTROKES: usize = 10;
/// Typed before measuring; its echo says the session, pty and relay are up.
const SENTINEL: &[u8] = b"blastgate-bench-ready";

/// The scratch policy's ssh.cedar.
const SSH_POLICY: &str = "\
// Written by `cargo xtask bench --only ssh`: every SSH command, shell,
// sftp subsystem, write and environment variable runs without a human, so
// the bench measures the relay and not an approval queue. Tunnels stay
// refused.

@id(\"bench-ssh-allowed\")
@reason(\"the SSH benchmark's commands run without approval\")
permit (
  principal,
  action in [Action::\"ssh:exec\", Action::\"ssh:shell\", Action::\"ssh:sftp\", Action::\"ssh:write\", Action::\"ssh:env\"],
  resource
);

@id(\"ssh-no-forwarding\")
@reason(\"port and agent forwarding would tunnel around blastgate\")
forbid (principal, action == Action::\"ssh:forward\", resource);
";

pub struct Opts {
    pub reps: usize,
    /// Size of the transferred file, in MB (10^6 bytes).
    pub mb: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Blastgate,
}

impl Via {
    const ALL: [Via; 2] = [Via::Direct, Via::Blastgate];

    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Blastgate => "blastgate",
        }
    }

    fn index(self) -> usize {
        match self {
            Via::Direct => 0,
            Via::Blastgate => 1,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// `scp` of the source file; `legacy` is `-O` (scp -t/-f on the
    /// server), otherwise the SFTP protocol scp 9.x speaks by default.
    Scp { legacy: bool, upload: bool },
    /// `ssh host 'cat > /dev/null' < file`.
    Sink,
    /// `ssh host cat < file > out`: the file goes up and comes back at once.
    Cat,
    /// `ssh -tt host cat`: pty echo of single bytes.
    Keystrokes,
}

const CELLS: [Cell; 7] = [
    Cell::Scp {
        legacy: false,
        upload: true,
    },
    Cell::Scp {
        legacy: false,
        upload: false,
    },
    Cell::Scp {
        legacy: true,
        upload: true,
    },
    Cell::Scp {
        legacy: true,
        upload: false,
    },
    Cell::Sink,
    Cell::Cat,
    Cell::Keystrokes,
];

impl Cell {
    fn name(self) -> &'static str {
        match self {
            Cell::Scp {
                legacy: false,
                upload: true,
            } => "scp sftp upload",
            Cell::Scp {
                legacy: false,
                upload: false,
            } => "scp sftp download",
            Cell::Scp {
                legacy: true,
                upload: true,
            } => "scp -O upload",
            Cell::Scp {
                legacy: true,
                upload: false,
            } => "scp -O download",
            Cell::Sink => "ssh cat >/dev/null",
            Cell::Cat => "ssh cat (2-way)",
            Cell::Keystrokes => "keystroke echo",
        }
    }

    /// Its key in the JSON summary.
    fn key(self) -> &'static str {
        match self {
            Cell::Scp {
                legacy: false,
                upload: true,
            } => "scp_sftp_upload",
            Cell::Scp {
                legacy: false,
                upload: false,
            } => "scp_sftp_download",
            Cell::Scp {
                legacy: true,
                upload: true,
            } => "scp_legacy_upload",
            Cell::Scp {
                legacy: true,
                upload: false,
            } => "scp_legacy_download",
            Cell::Sink => "ssh_cat_to_devnull",
            Cell::Cat => "ssh_cat_both_ways",
            Cell::Keystrokes => "keystroke_echo",
        }
    }
}

/// What the daemon used during one run.
#[derive(Clone, Copy)]
struct DaemonUse {
    /// Highest VmRSS sampled every 50 ms, KiB.
    peak_kib: u64,
    /// VmHWM after the run (reset before it), KiB: catches a spike
    /// between samples.
    hwm_kib: u64,
    /// User + system CPU time: with sshd on the same CPU, tells a slow
    /// gateway from a saturated CPU.
    cpu_secs: f64,
}

/// One run's numbers; what does not apply to the cell is NaN.
#[derive(Clone, Copy)]
struct Sample {
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// Keystroke cell: from spawning ssh to the sentinel's echo.
    setup_ms: f64,
    rss: Option<DaemonUse>,
    /// The daemon's CPU time over the run's wall time, percent.
    daemon_cpu_pct: f64,
}

impl Sample {
    fn transfer(bytes: u64, secs: f64, rss: Option<DaemonUse>) -> Sample {
        Sample {
            mb_per_s: bytes as f64 / 1e6 / secs,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            setup_ms: f64::NAN,
            daemon_cpu_pct: rss.map_or(f64::NAN, |r| r.cpu_secs / secs * 100.0),
            rss,
        }
    }
}

/// Per cell and path: samples, the first command line, the failure that
/// stopped it, notes (a session that measured but ended badly).
#[derive(Default)]
struct Outcome {
    samples: Vec<Sample>,
    command: Option<String>,
    error: Option<String>,
    notes: Vec<String>,
    verified: bool,
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    if !sh::is_root() {
        bail!("the SSH benchmark runs sshd (privilege separation needs root) and attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.mb == 0 {
        bail!("--reps and --ssh-mb must be at least 1");
    }
    for need in [SSHD, SSH, SCP, SSH_KEYGEN, UNSHARE] {
        if !Path::new(need).exists() {
            bail!("{need} is missing (openssh-server, openssh-client, util-linux): run `cargo xtask setup`");
        }
    }
    if passwd("sshd").is_none() {
        bail!("no `sshd` privilege separation user (reinstall openssh-server)");
    }
    sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    let bin = root.join("target/release/blastgate");
    catch_interrupts();
    let client_cpus = cpus("BLASTGATE_BENCH_CLIENT_CPUS", "0");
    let server_cpus = cpus("BLASTGATE_BENCH_SERVER_CPUS", "1");
    let proxy_cpus = cpus("BLASTGATE_BENCH_PROXY_CPUS", "1");
    // The bench reads the echoes: it is part of the client. Threads
    // started from here on inherit the mask.
    let _pinned = PinnedSelf::to(&client_cpus)?;
    let deploy = deploy_user()?;
    let bytes = opts.mb * 1_000_000;

    // Dropped in reverse: daemon, sshd, then the directory, then the pin.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("blastgate-bench-ssh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = ScratchDir(dir.clone());
    // 0711: sshd reads authorized_keys, and the deploy user writes its
    // directory, from below here.
    chmod(&dir, 0o711)?;
    let local = dir.join("local");
    std::fs::create_dir(&local)?;
    let remote = dir.join("remote");
    std::fs::create_dir(&remote)?;
    chmod(&remote, 0o755)?;
    std::os::unix::fs::chown(&remote, Some(deploy.uid), Some(deploy.gid))?;

    eprintln!("bench: writing {} MB of random data", opts.mb);
    let source = local.join("source.bin");
    random_file(&source, bytes)?;
    let source_sha = sha256(&source)?;
    let remote_source = remote.join("source.bin");
    std::fs::copy(&source, &remote_source)?;
    std::os::unix::fs::chown(&remote_source, Some(deploy.uid), Some(deploy.gid))?;

    eprintln!("bench: starting sshd on {SERVER_IP} (CPU {server_cpus})");
    let sshd = Sshd::start(&dir.join("sshd"), &server_cpus)?;
    let key = sshd.authorize_new_key(DEPLOY_USER)?;
    let direct_known_hosts = dir.join("direct_known_hosts");
    std::fs::write(
        &direct_known_hosts,
        format!("{}\n", sshd.known_hosts_line()?),
    )?;
    let upstream_known_hosts = dir.join("upstream_known_hosts");
    std::fs::copy(&direct_known_hosts, &upstream_known_hosts)?;

    let policy = dir.join("policy");
    policy_dir(root, &policy)?;
    sh::run(Command::new(&bin).args(["policy", "check"]).arg(&policy))?;
    let proxy_port = free_port("127.0.0.1")?;
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        daemon_config(
            &dir,
            proxy_port,
            sshd.port,
            &policy,
            (&key, &upstream_known_hosts),
            (PIN_DIR, ""),
        ),
    )?;
    sh::run(Command::new(&bin).arg("check-config").arg(&config))?;
    // A generous safety net: the daemon detaches by itself if the bench
    // cannot stop it.
    let deadline = 900 + opts.reps as u64 * (CELLS.len() as u64 * 2) * run_limit(bytes).as_secs();
    eprintln!("bench: starting the blastgate daemon (CPU {proxy_cpus})");
    // Session ends are logged: they name the gateway's error when a cell
    // fails.
    let daemon = Daemon::start(
        &bin,
        &config,
        &dir,
        &DaemonOpts {
            pin_dir: PIN_DIR,
            label: "ssh",
            cpus: &proxy_cpus,
            deadline_secs: deadline,
            log_filter: "warn,blastgate::proxy::session=info",
        },
    )?;
    let daemon_pid = daemon.pid().context("the daemon is not running")?;
    // What an administrator installs for agents: the SSH CA's
    // @cert-authority line for the target.
    let lines = sh::stdout(
        Command::new(&bin)
            .args(["ca", "ssh-known-hosts", "--config"])
            .arg(&config),
    )?;
    if !lines.starts_with("@cert-authority ") {
        bail!("`blastgate ca ssh-known-hosts` printed {lines:?}");
    }
    let agent_known_hosts = dir.join("agent_known_hosts");
    std::fs::write(&agent_known_hosts, &lines)?;

    let b = Bench {
        blastgate: bin.clone(),
        config: config.clone(),
        client_cpus: client_cpus.clone(),
        port: sshd.port,
        key,
        direct_known_hosts,
        agent_known_hosts,
        source,
        source_sha,
        remote_dir: remote,
        remote_source,
        local_dir: local,
        scratch: dir.clone(),
        bytes,
        daemon_pid,
        daemon_log: daemon.log.clone(),
    };
    let idle_rss = status_kib(daemon_pid, "VmRSS").unwrap_or(0);

    // Warm-up (caches, the CA's first certificate, CPU frequency), and
    // what each path negotiates with the client.
    let mut ciphers = [None, None];
    let mut warm_errors: Vec<String> = Vec::new();
    for via in Via::ALL {
        match b.warm_up(via) {
            Ok(cipher) => ciphers[via.index()] = cipher,
            Err(e) => {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("bench: warm-up via {} FAILED: {e:#}", via.name());
                warm_errors.push(format!("warm-up via {}: {e:#}", via.name()));
            }
        }
    }

    let mut outcomes: Vec<[Outcome; 2]> = CELLS.iter().map(|_| Default::default()).collect();
    for rep in 0..opts.reps {
        for (i, &cell) in CELLS.iter().enumerate() {
            for via in Via::ALL {
                check_interrupted()?;
                let o = &mut outcomes[i][via.index()];
                // A failed cell is not retried: a deadlock would cost its
                // time limit again in every repetition.
                if o.error.is_some() {
                    continue;
                }
                match b.measure(cell, via, o) {
                    Ok(s) => o.samples.push(s),
                    Err(e) => {
                        if INTERRUPTED.load(Ordering::SeqCst) {
                            return Err(e);
                        }
                        eprintln!("bench: {} via {} FAILED: {e:#}", cell.name(), via.name());
                        o.error = Some(format!("{e:#}"));
                    }
                }
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, opts.reps);
    }
    drop(daemon);
    let spool_bytes = dir_bytes(&dir.join("spool"));
    let pins_left = Path::new(PIN_DIR).exists();
    drop(sshd);

    let report = report(
        opts,
        &outcomes,
        &ciphers,
        idle_rss,
        spool_bytes,
        [&client_cpus, &server_cpus, &proxy_cpus],
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("ssh.json"), serde_json::to_string_pretty(&report)?)?;
    println!("{}", summary_line(&report));
    println!("(also written to target/bench/ssh.json)");

    for e in &warm_errors {
        println!("\nFAILED {e}");
    }
    let failed: Vec<String> = CELLS
        .iter()
        .zip(&outcomes)
        .flat_map(|(cell, row)| {
            Via::ALL.into_iter().filter_map(move |via| {
                row[via.index()]
                    .error
                    .as_ref()
                    .map(|e| format!("{} via {}: {e}", cell.name(), via.name()))
            })
        })
        .collect();
    for f in &failed {
        println!("\nFAILED {f}");
    }
    if pins_left {
        bail!("the bench daemon left {PIN_DIR} behind");
    }
    if !failed.is_empty() {
        bail!("{} SSH bench cell(s) failed (details above)", failed.len());
    }
    Ok(())
}

/// Where and how the clients reach the server on each path.
struct Bench {
    blastgate: PathBuf,
    config: PathBuf,
    client_cpus: String,
    port: u16,
    /// The real key: only the direct path and the daemon use it.
    key: PathBuf,
    /// The server's own host key.
    direct_known_hosts: PathBuf,
    /// `blastgate ca ssh-known-hosts`.
    agent_known_hosts: PathBuf,
    source: PathBuf,
    source_sha: String,
    /// Owned by the deploy user; uploads land here.
    remote_dir: PathBuf,
    /// What downloads fetch.
    remote_source: PathBuf,
    local_dir: PathBuf,
    scratch: PathBuf,
    bytes: u64,
    daemon_pid: u32,
    daemon_log: PathBuf,
}

/// The options of every ssh and scp the benches run (also git's ssh in
/// the git bench): no config file, no prompts, the host checked strictly
/// against `known_hosts` only, and only `key` as identity; without one
/// (an agent, which holds no key: blastgate logs in upstream) none at all.
pub(crate) fn ssh_options(known_hosts: &Path, key: Option<&Path>) -> Vec<String> {
    let mut o: Vec<String> = ["-F", "/dev/null", "-o", "BatchMode=yes"]
        .into_iter()
        .chain(["-o", "StrictHostKeyChecking=yes", "-o"])
        .map(String::from)
        .collect();
    o.push(format!("UserKnownHostsFile={}", known_hosts.display()));
    o.extend(
        ["-o", "GlobalKnownHostsFile=/dev/null"]
            .into_iter()
            .chain(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .chain(["-o", "ConnectTimeout=10"])
            .map(String::from),
    );
    match key {
        Some(k) => o.extend(["-i".to_string(), k.display().to_string()]),
        None => o.extend(["-o".to_string(), "IdentityFile=none".to_string()]),
    }
    o
}

/// Longest a transfer may take before it counts as hung: 1 MB/s and a
/// minute.
fn run_limit(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 1_000_000)
}

impl Bench {
    /// `program` (ssh or scp) pinned to the client CPUs, enrolled as an
    /// agent on the blastgate path, with the path's client options.
    fn client(&self, via: Via, program: &str) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]).current_dir(&self.scratch);
        if via == Via::Blastgate {
            c.arg(&self.blastgate)
                .args(["run", "--agent", AGENT, "--config"])
                .arg(&self.config)
                .arg("--");
        }
        let (known_hosts, key) = match via {
            Via::Direct => (&self.direct_known_hosts, Some(self.key.as_path())),
            Via::Blastgate => (&self.agent_known_hosts, None),
        };
        c.arg(program).args(ssh_options(known_hosts, key));
        c
    }

    fn dest(&self) -> String {
        format!("{DEPLOY_USER}@{SERVER_IP}")
    }

    /// `ssh -v host true`; the key exchange and cipher the client
    /// negotiated ("kex / cipher").
    fn warm_up(&self, via: Via) -> Result<Option<String>> {
        let mut c = self.client(via, SSH);
        c.args(["-v", "-p", &self.port.to_string(), &self.dest(), "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let (_, _, stderr) = self.timed(via, &mut c, Duration::from_secs(60), "ssh true")?;
        let after = |needle: &str| {
            stderr.lines().find_map(|l| {
                l.split_once(needle)
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .map(str::to_string)
            })
        };
        let kex = after("kex: algorithm: ");
        let cipher = after("kex: server->client cipher: ");
        Ok(match (kex, cipher) {
            (None, None) => None,
            (k, c) => Some(format!(
                "{} / {}",
                k.as_deref().unwrap_or("?"),
                c.as_deref().unwrap_or("?")
            )),
        })
    }

    fn measure(&self, cell: Cell, via: Via, o: &mut Outcome) -> Result<Sample> {
        let port = self.port.to_string();
        let verify = !o.verified;
        let sample = match cell {
            Cell::Scp { legacy, upload } => {
                let up = self.remote_dir.join("up.bin");
                let down = self.local_dir.join("down.bin");
                let mut c = self.client(via, SCP);
                if legacy {
                    c.arg("-O");
                }
                c.args(["-q", "-P", &port]);
                let copy = if upload {
                    c.arg(&self.source)
                        .arg(format!("{}:{}", self.dest(), up.display()));
                    up
                } else {
                    c.arg(format!("{}:{}", self.dest(), self.remote_source.display()))
                        .arg(&down);
                    down
                };
                c.stdin(Stdio::null()).stdout(Stdio::null());
                o.command.get_or_insert_with(|| sh::describe(&c));
                let (secs, rss, _) = self.timed(via, &mut c, run_limit(self.bytes), cell.name())?;
                let checked = self.check_copy(&copy, verify);
                let _ = std::fs::remove_file(&copy);
                checked?;
                Sample::transfer(self.bytes, secs, rss)
            }
            Cell::Sink => {
                let mut c = self.client(via, SSH);
                c.args(["-p", &port, &self.dest(), "cat > /dev/null"])
                    .stdin(File::open(&self.source)?)
                    .stdout(Stdio::null());
                o.command.get_or_insert_with(|| {
                    format!("{} < {}", sh::describe(&c), self.source.display())
                });
                let (secs, rss, _) = self.timed(via, &mut c, run_limit(self.bytes), cell.name())?;
                Sample::transfer(self.bytes, secs, rss)
            }
            Cell::Cat => {
                let back = self.local_dir.join("cat.out");
                let mut c = self.client(via, SSH);
                c.args(["-p", &port, &self.dest(), "cat"])
                    .stdin(File::open(&self.source)?)
                    .stdout(File::create(&back)?);
                o.command.get_or_insert_with(|| {
                    format!(
                        "{} < {} > {}",
                        sh::describe(&c),
                        self.source.display(),
                        back.display()
                    )
                });
                let result = self.timed(via, &mut c, run_limit(self.bytes), cell.name());
                let checked = result.and_then(|r| self.check_copy(&back, verify).map(|()| r));
                let _ = std::fs::remove_file(&back);
                let (secs, rss, _) = checked?;
                Sample::transfer(self.bytes, secs, rss)
            }
            Cell::Keystrokes => self.keystrokes(via, o)?,
        };
        if verify && matches!(cell, Cell::Scp { .. } | Cell::Cat) {
            o.verified = true;
        }
        Ok(sample)
    }

    /// The copy has the source's size, and (when `verify`) its sha256.
    fn check_copy(&self, copy: &Path, verify: bool) -> Result<()> {
        let len = std::fs::metadata(copy)
            .with_context(|| format!("the copy {} is missing", copy.display()))?
            .len();
        if len != self.bytes {
            bail!(
                "the copy {} has {len} bytes, not {}",
                copy.display(),
                self.bytes
            );
        }
        if verify {
            let got = sha256(copy)?;
            if got != self.source_sha {
                bail!(
                    "the copy {} differs from the source: sha256 {got}, not {}",
                    copy.display(),
                    self.source_sha
                );
            }
        }
        Ok(())
    }

    /// Runs `cmd` (stdin and stdout already set) to success within
    /// `limit`, timed from spawn to exit; on the blastgate path the
    /// daemon's memory is sampled meanwhile. Returns seconds, memory and
    /// stderr. A hung run is killed (its whole process tree, by pid).
    fn timed(
        &self,
        via: Via,
        cmd: &mut Command,
        limit: Duration,
        what: &str,
    ) -> Result<(f64, Option<DaemonUse>, String)> {
        check_interrupted()?;
        let err_path = self.scratch.join("run.err");
        cmd.stderr(File::create(&err_path)?);
        die_with_parent(cmd, libc::SIGKILL);
        let log_mark = file_len(&self.daemon_log);
        let mut sampler = (via == Via::Blastgate).then(|| RssSampler::start(self.daemon_pid));
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        // Waited for on a thread of its own: the end is timed exactly,
        // not to the next poll.
        let (tx, rx) = mpsc::channel::<(Instant, std::io::Result<ExitStatus>)>();
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send((Instant::now(), status));
        });
        let finished = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(done) => break Some(done),
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
                    if interrupted || start.elapsed() > limit {
                        kill_tree(pid);
                        let _ = waiter.join();
                        let why = if interrupted {
                            "interrupted".to_string()
                        } else {
                            format!("did not finish within {limit:?}")
                        };
                        return Err(self.failure(what, cmd, &why, &err_path, log_mark));
                    }
                }
            }
        };
        let _ = waiter.join();
        let rss = sampler.as_mut().map(RssSampler::finish);
        let Some((end, status)) = finished else {
            bail!("{what}: lost track of the process");
        };
        let status = status.with_context(|| format!("waiting for {what}"))?;
        if !status.success() {
            return Err(self.failure(
                what,
                cmd,
                &format!("exited with {status}"),
                &err_path,
                log_mark,
            ));
        }
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        Ok(((end - start).as_secs_f64(), rss, stderr))
    }

    /// A failure with what the lead needs to chase it: the command line,
    /// the client's stderr and the daemon's log lines from the run.
    fn failure(
        &self,
        what: &str,
        cmd: &Command,
        why: &str,
        err_path: &Path,
        log_mark: u64,
    ) -> anyhow::Error {
        let stderr = std::fs::read_to_string(err_path).unwrap_or_default();
        anyhow::anyhow!(
            "{what}: {why}\n  command: {}\n  stderr (last lines):\n{}\n  daemon log during the run:\n{}",
            sh::describe(cmd),
            indent(&last_lines(&stderr, 20)),
            indent(&last_lines(&read_from(&self.daemon_log, log_mark), 30)),
        )
    }

    /// `ssh -tt host cat`: waits for the session (the sentinel's echo),
    /// then types one byte every 20 ms and times each echo.
    fn keystrokes(&self, via: Via, o: &mut Outcome) -> Result<Sample> {
        let what = "ssh -tt cat";
        let mut c = self.client(via, SSH);
        c.args(["-tt", "-p", &self.port.to_string(), &self.dest(), "cat"]);
        o.command.get_or_insert_with(|| sh::describe(&c));
        let err_path = self.scratch.join("run.err");
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&err_path)?);
        die_with_parent(&mut c, libc::SIGKILL);
        let log_mark = file_len(&self.daemon_log);
        let mut sampler = (via == Via::Blastgate).then(|| RssSampler::start(self.daemon_pid));
        let spawned = Instant::now();
        let mut session = Session(c.spawn().with_context(|| format!("starting {what}"))?);
        let fail = |why: &str| self.failure(what, &c, why, &err_path, log_mark);
        let (Some(mut stdin), Some(mut stdout)) = (session.0.stdin.take(), session.0.stdout.take())
        else {
            return Err(fail("no pipes to the client"));
        };
        // Chunks with the moment they arrived, read on a thread of their
        // own so that arrival is timed, not the next look.
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });

        let timeout = Duration::from_secs(30);
        stdin
            .write_all(SENTINEL)
            .map_err(|e| fail(&format!("typing the sentinel: {e}")))?;
        let mut seen = Vec::new();
        let ready_at = loop {
            check_interrupted()?;
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((at, chunk)) => {
                    seen.extend_from_slice(&chunk);
                    if seen.windows(SENTINEL.len()).any(|w| w == SENTINEL) {
                        break at;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = session.0.wait().map(|s| s.to_string());
                    return Err(fail(&format!(
                        "the session ended before the sentinel echoed ({}); it printed {:?}",
                        status.unwrap_or_else(|e| e.to_string()),
                        String::from_utf8_lossy(&seen)
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if spawned.elapsed() > timeout => {
                    return Err(fail(&format!(
                        "no echo of the sentinel within {timeout:?}; it printed {:?}",
                        String::from_utf8_lossy(&seen)
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        };
        let setup = ready_at - spawned;

        let mut latencies = Vec::with_capacity(KEYSTROKES);
        for i in 0..WARM_KEYSTROKES + KEYSTROKES {
            check_interrupted()?;
            let key = b'a' + (i % 26) as u8;
            let sent = Instant::now();
            stdin
                .write_all(&[key])
                .map_err(|e| fail(&format!("typing keystroke {i}: {e}")))?;
            let echoed = loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok((at, chunk)) if chunk.contains(&key) => break at,
                    Ok(_) => {}
                    Err(e) => {
                        return Err(fail(&format!(
                            "no echo of keystroke {i} ({:?}): {e}",
                            key as char
                        )))
                    }
                }
            };
            if i >= WARM_KEYSTROKES {
                latencies.push((echoed - sent).as_secs_f64() * 1e6);
            }
            if let Some(left) = (sent + KEY_GAP).checked_duration_since(Instant::now()) {
                thread::sleep(left);
            }
        }

        // End the line, then ^D at the start of the next: cat sees EOF and
        // exits, and the session with it.
        let _ = stdin.write_all(b"\n\x04");
        drop(stdin);
        let end = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Ok(Some(status)) = session.0.try_wait() {
                break Some(status);
            }
            if Instant::now() > end {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let rss = sampler.as_mut().map(RssSampler::finish);
        match status {
            Some(s) if s.success() => {}
            Some(s) => o.notes.push(format!(
                "{what} via {}: measured, but the session ended with {s}; stderr: {}",
                via.name(),
                last_lines(&std::fs::read_to_string(&err_path).unwrap_or_default(), 5)
            )),
            None => o.notes.push(format!(
                "{what} via {}: measured, but the session did not end within 15 s of ^D (killed)",
                via.name()
            )),
        }
        latencies.sort_by(f64::total_cmp);
        Ok(Sample {
            mb_per_s: f64::NAN,
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            setup_ms: setup.as_secs_f64() * 1e3,
            rss,
            daemon_cpu_pct: f64::NAN,
        })
    }
}

/// An interactive client: its process tree killed (by pid) and reaped on
/// drop if it is still running.
struct Session(Child);

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill_tree(self.0.id());
        }
        let _ = self.0.wait();
    }
}

/// SIGKILL to `pid` and every descendant (scp's ssh, for one), by pid.
fn kill_tree(pid: u32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    for p in all {
        // SAFETY: signalling processes this bench started, by pid.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
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

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Samples the daemon's VmRSS every 50 ms on a thread of its own; the
/// high-water mark is reset when it starts; CPU time is read at both ends.
struct RssSampler {
    pid: u32,
    cpu_at_start: f64,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        // "5" resets VmHWM to the current RSS (Linux 4.0+), so the
        // high-water mark read after the run is this run's.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                if flag.load(Ordering::SeqCst) {
                    return peak;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            pid,
            cpu_at_start: cpu_secs(pid).unwrap_or(f64::NAN),
            stop,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) -> DaemonUse {
        let cpu = cpu_secs(self.pid).unwrap_or(f64::NAN) - self.cpu_at_start;
        self.stop.store(true, Ordering::SeqCst);
        let peak = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0);
        let hwm = status_kib(self.pid, "VmHWM").unwrap_or(0);
        DaemonUse {
            peak_kib: peak,
            hwm_kib: hwm,
            cpu_secs: cpu,
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// User + system CPU seconds of `pid` (all its threads), from
/// /proc/PID/stat.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state … utime stime: fields 14 and 15, counted after comm.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The text of `path` from byte `from` on.
fn read_from(path: &Path, from: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (nothing)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `len` random bytes, a mebibyte at a time.
pub(crate) fn random_file(path: &Path, len: u64) -> Result<()> {
    let mut urandom = File::open("/dev/urandom")?;
    let mut out = std::io::BufWriter::new(File::create(path)?);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64))?;
        urandom.read_exact(&mut chunk[..n])?;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn sha256(path: &Path) -> Result<String> {
    let out = sh::stdout(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// Restores the bench's own CPU affinity on drop.
struct PinnedSelf(libc::cpu_set_t);

impl PinnedSelf {
    /// Pins the calling thread (and every thread it starts later) to the
    /// CPUs of a taskset-style list ("0", "0,2", "0-1").
    fn to(list: &str) -> Result<PinnedSelf> {
        let cpus = parse_cpu_list(list)?;
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data (all zeroes is the empty set);
        // the affinity calls write or read exactly `size` bytes of it.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut old) != 0 {
                bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
            }
            let mut new: libc::cpu_set_t = std::mem::zeroed();
            for cpu in cpus {
                libc::CPU_SET(cpu, &mut new);
            }
            if libc::sched_setaffinity(0, size, &new) != 0 {
                bail!(
                    "pinning the bench to CPUs {list}: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(PinnedSelf(old))
        }
    }
}

impl Drop for PinnedSelf {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `to`, on the same thread.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}

fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo
            .trim()
            .parse()
            .with_context(|| format!("CPU list {list:?}"))?;
        let hi: usize = hi
            .trim()
            .parse()
            .with_context(|| format!("CPU list {list:?}"))?;
        if lo > hi || hi >= libc::CPU_SETSIZE as usize {
            bail!("CPU list {list:?}: bad range {part:?}");
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        bail!("CPU list {list:?} is empty");
    }
    Ok(out)
}

/// The shipped policies (their files, not their tests) with ssh.cedar
/// replaced by [`SSH_POLICY`].
fn policy_dir(root: &Path, to: &Path) -> Result<()> {
    shipped_policies(root, to, &[("ssh.cedar", SSH_POLICY)])
}

/// The shipped policies (their files, not their tests) in `to`, with the
/// files of `replaced` (name, text) written over theirs.
pub(crate) fn shipped_policies(root: &Path, to: &Path, replaced: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(root.join("policies"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    for (name, text) in replaced {
        std::fs::write(to.join(name), text)?;
    }
    Ok(())
}

/// The daemon's config: its own socket, spool, CA and pins, one ssh
/// target (`bench-ssh`) at the bench's sshd, then `extra` (more targets).
pub(crate) fn daemon_config(
    dir: &Path,
    proxy_port: u16,
    sshd_port: u16,
    policy: &Path,
    (key, upstream_known_hosts): (&Path, &Path),
    (pin_dir, extra): (&str, &str),
) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
         [control]\nsocket = \"{d}/control.sock\"\n\n\
         [bpf]\npin_dir = \"{pin_dir}\"\n\n\
         [records]\nspool_dir = \"{d}/spool\"\n\n\
         [policy]\ndir = \"{policy}\"\n\n\
         [tls]\nca_dir = \"{d}/ca\"\n\n\
         [[targets]]\nname = \"bench-ssh\"\nprotocol = \"ssh\"\naddress = \"{SERVER_IP}:{sshd_port}\"\n\n\
         [targets.ssh]\nuser = \"{DEPLOY_USER}\"\nkey_file = \"{key}\"\nknown_hosts = \"{kh}\"\n{extra}",
        d = dir.display(),
        policy = policy.display(),
        key = key.display(),
        kh = upstream_known_hosts.display(),
    )
}

/// A throwaway sshd on 127.0.0.2 with its own ed25519 host key and
/// public-key logins only (as tests/e2e/harness/sshd.rs starts it). It is
/// PID 1 of a PID namespace of its own (`unshare --pid --fork
/// --kill-child`), so when it exits the kernel kills every session it
/// started; unshare dies with the bench (PR_SET_PDEATHSIG). Stopped on drop.
pub(crate) struct Sshd {
    /// `unshare`, whose only child is sshd.
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    pub(crate) port: u16,
}

impl Sshd {
    pub(crate) fn start(dir: &Path, cpus: &str) -> Result<Sshd> {
        // The privilege separation directory (a tmpfs one systemd would
        // create).
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() {
            std::fs::create_dir_all(privsep)?;
            chmod(privsep, 0o755)?;
        }
        std::fs::create_dir(dir)?;
        // sshd opens authorized_keys as the logging-in user.
        chmod(dir, 0o711)?;
        let auth = dir.join("authorized_keys");
        std::fs::create_dir(&auth)?;
        chmod(&auth, 0o755)?;
        let keys = dir.join("keys");
        std::fs::create_dir(&keys)?;
        chmod(&keys, 0o711)?;
        let mut sshd = Sshd {
            child: None,
            dir: dir.to_path_buf(),
            log: dir.join("sshd.log"),
            port: 0,
        };
        keygen(&sshd.host_key(), "blastgate-bench-host")?;
        // The port is free when picked but may be taken before sshd binds
        // it: try a few.
        for attempt in 1..=5 {
            sshd.port = free_port(SERVER_IP)?;
            sshd.write_config()?;
            match sshd.launch(cpus) {
                Ok(()) => return Ok(sshd),
                Err(e) if attempt < 5 && format!("{e:#}").contains("Address already in use") => {}
                Err(e) => bail!("sshd did not start: {e:#}\n{}", tail(&sshd.log, 30)),
            }
        }
        bail!("sshd did not start")
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    fn write_config(&self) -> Result<()> {
        let text = format!(
            "# cargo xtask bench --only ssh\n\
             ListenAddress {SERVER_IP}:{port}\n\
             HostKey {host_key}\n\
             PidFile {dir}/sshd.pid\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {dir}/authorized_keys/%u\n\
             StrictModes no\n\
             X11Forwarding no\n\
             PermitRootLogin no\n\
             UsePAM no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n\
             ClientAliveInterval 0\n\
             LoginGraceTime 30\n\
             MaxStartups 64:30:128\n\
             MaxSessions 64\n",
            port = self.port,
            host_key = self.host_key().display(),
            dir = self.dir.display(),
        );
        std::fs::write(self.dir.join("sshd_config"), text)?;
        Ok(())
    }

    fn launch(&mut self, cpus: &str) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpus])
            .arg(UNSHARE)
            .args(["--pid", "--fork", "--kill-child=SIGKILL", "--", SSHD])
            .args(["-D", "-e", "-E"])
            .arg(&self.log)
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SIGKILL: unshare blocks SIGTERM while it waits for its child.
        die_with_parent(&mut cmd, libc::SIGKILL);
        self.child = Some(cmd.spawn().context("starting unshare sshd")?);
        let listening = format!("Server listening on {SERVER_IP} port {}.", self.port);
        let mut exited = None;
        let up = wait_for("sshd", Duration::from_secs(30), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                exited = Some(status);
                return true;
            }
            std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains(&listening))
        });
        if let Some(status) = exited {
            self.child = None;
            bail!(
                "sshd exited ({status}): {}",
                last_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 5)
            );
        }
        if let Err(e) = up {
            self.stop();
            return Err(e);
        }
        Ok(())
    }

    /// Authorizes a new ed25519 key for `user`; its private key's path
    /// (0600 root, readable by the daemon and the direct client only).
    pub(crate) fn authorize_new_key(&self, user: &str) -> Result<PathBuf> {
        let key = self.dir.join("keys").join(user);
        keygen(&key, &format!("blastgate-bench-{user}"))?;
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        let path = self.dir.join("authorized_keys").join(user);
        std::fs::write(&path, format!("{}\n", public.trim()))?;
        chmod(&path, 0o644)?;
        Ok(key)
    }

    /// "[ip]:port ssh-ed25519 AAAA…": the server's own host key.
    pub(crate) fn known_hosts_line(&self) -> Result<String> {
        let text = std::fs::read_to_string(self.host_key().with_extension("pub"))?;
        let key: Vec<&str> = text.split_whitespace().take(2).collect();
        if key.len() != 2 {
            bail!("unreadable host public key {text:?}");
        }
        Ok(format!("[{SERVER_IP}]:{} {}", self.port, key.join(" ")))
    }

    /// SIGTERM to sshd, SIGKILL after 10 s; the kernel then kills every
    /// process left in its PID namespace.
    fn stop(&mut self) {
        let Some(mut unshare) = self.child.take() else {
            return;
        };
        let exited = |u: &mut Child, secs: u64| {
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                if let Ok(Some(_)) = u.try_wait() {
                    return true;
                }
                thread::sleep(Duration::from_millis(50));
            }
            false
        };
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            for pid in children_of(unshare.id()) {
                // SAFETY: signalling the sshd this bench started, by pid.
                unsafe { libc::kill(pid as i32, signal) };
            }
            if exited(&mut unshare, 10) {
                return;
            }
        }
        let _ = unshare.kill();
        let _ = unshare.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ssh-keygen -t ed25519` without passphrase into `path` (and `.pub`).
fn keygen(path: &Path, comment: &str) -> Result<()> {
    sh::stdout(
        Command::new(SSH_KEYGEN)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path)
            .stdin(Stdio::null()),
    )?;
    chmod(path, 0o600)
}

pub(crate) struct PasswdEntry {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    home: PathBuf,
    shell: String,
}

fn passwd(user: &str) -> Option<PasswdEntry> {
    let name = CString::new(user).ok()?;
    // SAFETY: passwd is plain C data (integers and pointers); all zeroes
    // is a valid value, overwritten by getpwnam_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pw` and `buf`, which outlive the
    // reads below.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success the string fields point into `buf`.
    let (home, shell) = unsafe {
        (
            std::ffi::CStr::from_ptr(pw.pw_dir)
                .to_string_lossy()
                .into_owned(),
            std::ffi::CStr::from_ptr(pw.pw_shell)
                .to_string_lossy()
                .into_owned(),
        )
    };
    Some(PasswdEntry {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(home),
        shell,
    })
}

/// `blastgate-deploy`, created if missing (a system user, home
/// /var/lib/blastgate-deploy, shell /bin/bash) and made able to log in
/// with a key under `UsePAM no`: a shadow password starting with `!` is a
/// locked account there, so it is set to `*`.
pub(crate) fn deploy_user() -> Result<PasswdEntry> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(DEPLOY_LOCK)
        .with_context(|| format!("opening {DEPLOY_LOCK}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
        bail!("flock {DEPLOY_LOCK}: {}", std::io::Error::last_os_error());
    }
    if passwd(DEPLOY_USER).is_none() {
        eprintln!("bench: creating the OS user {DEPLOY_USER}");
        let out = Command::new("useradd")
            .args(["--system", "--create-home", "--home-dir", DEPLOY_HOME])
            .args(["--shell", "/bin/bash", DEPLOY_USER])
            .output()
            .context("running useradd")?;
        // 9: the user exists (created by something that ignores the lock).
        if !out.status.success() && out.status.code() != Some(9) {
            bail!(
                "useradd {DEPLOY_USER} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let pw = passwd(DEPLOY_USER).context("the deploy user was not created")?;
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let locked = shadow.lines().any(|l| {
        let mut f = l.split(':');
        f.next() == Some(DEPLOY_USER) && f.next().is_some_and(|p| p.starts_with('!'))
    });
    if locked || pw.shell != "/bin/bash" {
        sh::stdout(Command::new("usermod").args(["-p", "*", "-s", "/bin/bash", DEPLOY_USER]))?;
    }
    if !pw.home.is_dir() {
        std::fs::create_dir_all(&pw.home)?;
        std::os::unix::fs::chown(&pw.home, Some(pw.uid), Some(pw.gid))?;
        chmod(&pw.home, 0o755)?;
    }
    Ok(pw)
}

/// The JSON summary as one line: per cell the medians and ratio, the
/// daemon's peak memory, the goals (the file has the runs and commands).
fn summary_line(report: &Value) -> Value {
    let mut cells = Map::new();
    if let Some(all) = report["cells"].as_object() {
        for (key, paths) in all {
            let (d, b) = (&paths["direct"], &paths["blastgate"]);
            let row = if key == Cell::Keystrokes.key() {
                json!({
                    "direct_p50_us": d["p50_us"], "direct_p99_us": d["p99_us"],
                    "blastgate_p50_us": b["p50_us"], "blastgate_p99_us": b["p99_us"],
                    "added_p50_us": report["keystroke_added_p50_us"],
                    "daemon_peak_rss_mib": b["daemon_peak_rss_mib"],
                    "failed": !d["error"].is_null() || !b["error"].is_null(),
                })
            } else {
                json!({
                    "direct_mb_s": d["mb_per_s"], "blastgate_mb_s": b["mb_per_s"],
                    "ratio": b["ratio_to_direct"],
                    "daemon_peak_rss_mib": b["daemon_peak_rss_mib"],
                    "daemon_cpu_pct": b["daemon_cpu_pct"],
                    "failed": !d["error"].is_null() || !b["error"].is_null(),
                })
            };
            cells.insert(key.clone(), row);
        }
    }
    json!({
        "bench": "ssh", "reps": report["reps"], "mb": report["mb"],
        "cells": cells, "goals": report["goals"],
    })
}

/// Median of one number over a path's samples.
fn med(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    median(samples.iter().map(f).collect())
}

/// Highest of the runs' memory figures, MiB.
fn peak_mib(samples: &[Sample], f: impl Fn(&DaemonUse) -> u64) -> Option<f64> {
    samples
        .iter()
        .filter_map(|s| s.rss.as_ref().map(&f))
        .max()
        .map(|k| k as f64 / 1024.0)
}

fn fmt(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.decimals$}")
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| fmt(v, decimals))
}

/// Prints the tables and the goals; returns the JSON summary.
fn report(
    opts: &Opts,
    outcomes: &[[Outcome; 2]],
    ciphers: &[Option<String>; 2],
    idle_rss_kib: u64,
    spool_bytes: u64,
    [client_cpus, server_cpus, proxy_cpus]: [&str; 3],
) -> Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nblastgate ssh bench: OpenSSH clients against Debian's sshd, {} MB file, medians of {} \
         alternating repetitions",
        opts.mb, opts.reps
    );
    println!(
        "(ssh/scp and the bench on CPU {client_cpus}; sshd on CPU {server_cpus}; the blastgate \
         daemon on CPU {proxy_cpus}; ratio = MB/s / direct MB/s; RSS = the daemon's, peak over \
         the runs; daemon CPU = its CPU time / wall time, median; load average at the end: {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "client kex / cipher: direct {}; blastgate {}",
        ciphers[0].as_deref().unwrap_or("?"),
        ciphers[1].as_deref().unwrap_or("?")
    );
    println!(
        "  {:<20} {:<10} {:>9} {:>7} {:>13} {:>10} {:>10}",
        "cell", "path", "MB/s", "ratio", "peak RSS MiB", "HWM MiB", "daemon CPU"
    );
    let mut cells = Map::new();
    let mut scp_ratios = Vec::new();
    let mut echo: [f64; 2] = [f64::NAN; 2];
    for (cell, row) in CELLS.iter().zip(outcomes) {
        let mut paths = Map::new();
        let direct = med(&row[0].samples, |s| s.mb_per_s);
        for via in Via::ALL {
            let o = &row[via.index()];
            let rss = peak_mib(&o.samples, |r| r.peak_kib);
            let hwm = peak_mib(&o.samples, |r| r.hwm_kib);
            let mut entry = json!({
                "runs": o.samples.len(),
                "command": o.command,
                "error": o.error,
                "notes": o.notes,
                "daemon_peak_rss_mib": rss,
                "daemon_hwm_mib": hwm,
            });
            if *cell == Cell::Keystrokes {
                let p50 = med(&o.samples, |s| s.p50_us);
                echo[via.index()] = p50;
                entry["p50_us"] = json!(p50);
                entry["p99_us"] = json!(med(&o.samples, |s| s.p99_us));
                entry["setup_ms"] = json!(med(&o.samples, |s| s.setup_ms));
                entry["p50_us_runs"] =
                    json!(o.samples.iter().map(|s| s.p50_us).collect::<Vec<_>>());
            } else {
                let mbs = med(&o.samples, |s| s.mb_per_s);
                let ratio = mbs / direct;
                let cpu = med(&o.samples, |s| s.daemon_cpu_pct);
                if via == Via::Blastgate && matches!(cell, Cell::Scp { .. }) {
                    scp_ratios.push((cell.name(), ratio));
                }
                if o.error.is_some() && o.samples.is_empty() {
                    println!("  {:<20} {:<10} {:>9}", cell.name(), via.name(), "FAILED");
                } else {
                    println!(
                        "  {:<20} {:<10} {:>9} {:>7} {:>13} {:>10} {:>10}{}",
                        cell.name(),
                        via.name(),
                        fmt(mbs, 1),
                        fmt(ratio, 2),
                        fmt_opt(rss, 1),
                        fmt_opt(hwm, 1),
                        if cpu.is_nan() {
                            "-".to_string()
                        } else {
                            format!("{cpu:.0}%")
                        },
                        if o.error.is_some() {
                            "  (then FAILED)"
                        } else {
                            ""
                        }
                    );
                }
                entry["mb_per_s"] = json!(mbs);
                entry["ratio_to_direct"] = json!(ratio);
                entry["daemon_cpu_pct"] = json!(cpu);
                entry["mb_per_s_runs"] =
                    json!(o.samples.iter().map(|s| s.mb_per_s).collect::<Vec<_>>());
            }
            paths.insert(via.name().into(), entry);
        }
        cells.insert(cell.key().into(), Value::Object(paths));
    }

    println!(
        "\n  keystroke echo (ssh -tt cat, {KEYSTROKES} keys {} ms apart):",
        KEY_GAP.as_millis()
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>9} {:>13}",
        "path", "p50 µs", "p99 µs", "setup ms", "peak RSS MiB"
    );
    let row = &outcomes[CELLS.len() - 1];
    for via in Via::ALL {
        let o = &row[via.index()];
        if o.samples.is_empty() {
            println!("  {:<10} {:>9}", via.name(), "FAILED");
            continue;
        }
        println!(
            "  {:<10} {:>9} {:>9} {:>9} {:>13}",
            via.name(),
            fmt(med(&o.samples, |s| s.p50_us), 0),
            fmt(med(&o.samples, |s| s.p99_us), 0),
            fmt(med(&o.samples, |s| s.setup_ms), 1),
            fmt_opt(peak_mib(&o.samples, |r| r.peak_kib), 1),
        );
    }
    let added = echo[1] - echo[0];
    println!("  added p50: {} µs", fmt(added, 0));
    println!(
        "\ndaemon RSS idle before the cells: {:.1} MiB; spool written: {:.1} MiB",
        idle_rss_kib as f64 / 1024.0,
        spool_bytes as f64 / (1 << 20) as f64
    );

    // Goals are reported, not asserted: this shared machine is noisy.
    let verdict = |ok: bool, known: bool| match (known, ok) {
        (false, _) => "unknown (failed)",
        (true, true) => "met",
        (true, false) => "NOT met",
    };
    println!("\ngoals:");
    let mut goals = Vec::new();
    for (name, ratio) in &scp_ratios {
        let v = verdict(*ratio >= 0.9, !ratio.is_nan());
        println!("  {name}: >= 0.9x direct: {v} ({})", fmt(*ratio, 2));
        goals.push(json!({"goal": format!("{name} >= 0.9x direct"), "value": ratio, "verdict": v}));
    }
    let v = verdict(added < 1000.0, !added.is_nan());
    println!(
        "  keystroke echo: added p50 < 1 ms: {v} ({} µs)",
        fmt(added, 0)
    );
    goals.push(json!({"goal": "keystroke echo added p50 < 1000 us", "value": added, "verdict": v}));
    for row in outcomes {
        for o in row {
            for n in &o.notes {
                println!("note: {n}");
            }
        }
    }

    println!("\ncommands (first repetition; file names the same in every run):");
    for (cell, row) in CELLS.iter().zip(outcomes) {
        for via in Via::ALL {
            if let Some(c) = &row[via.index()].command {
                println!("  {} / {}: {c}", cell.name(), via.name());
            }
        }
    }

    json!({
        "reps": opts.reps, "mb": opts.mb, "keystrokes": KEYSTROKES,
        "keystroke_gap_ms": KEY_GAP.as_millis() as u64,
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "client_kex_cipher": {"direct": ciphers[0], "blastgate": ciphers[1]},
        "cells": cells,
        "keystroke_added_p50_us": added,
        "daemon_idle_rss_mib": idle_rss_kib as f64 / 1024.0,
        "spool_bytes": spool_bytes,
        "goals": goals,
    })
}

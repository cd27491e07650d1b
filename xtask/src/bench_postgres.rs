//! `cargo xtask bench --only postgres`: pgbench against one throwaway
//! PostgreSQL 15 over several paths in the same run: direct, PgBouncer 1.18
//! (the known peer: session pooling, parses nothing) and blastgate's
//! Postgres gateway (parses, decides and records every statement) in up to
//! three configurations:
//!
//! - `blastgate`: the target without labels, so no policy limits its writes
//!   by rows (what earlier runs of this bench measured);
//! - `blastgate-limits`: the same daemon with the target labelled
//!   `env = "production"`, so the shipped `sql-production-write-limit`
//!   applies: every UPDATE/DELETE runs first inside a BEGIN or SAVEPOINT of
//!   blastgate's, the server's per-transaction counters are read before and
//!   after, then it is kept or undone. TPC-B-like's three UPDATEs by key
//!   change one row each (allowed); the spool is checked for it;
//! - `blastgate-before`: another blastgate binary (`BLASTGATE_BENCH_BEFORE_BIN`,
//!   e.g. one built from an earlier commit) with `blastgate`'s config and
//!   the shipped policies of its own tree (`BLASTGATE_BENCH_BEFORE_POLICIES`,
//!   a `policies/` directory: the Cedar schema must match the context that
//!   binary sends); the path is skipped, with a message, when the binary
//!   is unset.
//!
//! Only one daemon runs at a time, each with a pin directory, control
//! socket and spool of its own: cells are measured in groups (reads,
//! writes, result-heavy) and, per repetition and group, each daemon path is
//! started once, warmed up, runs the group's cells and is stopped. The
//! order of the paths rotates with the repetition, so drift on this shared
//! machine hits all paths alike; medians of TPS, average latency and
//! initial connection time are reported, TPS also as a ratio to direct.
//!
//! Pinning (design.md, "Benchmark method"): on 2 vCPUs a single-client
//! result swings 2-3x with placement, so placement is fixed. pgbench runs on
//! CPU 0; PostgreSQL and the proxy in the path (PgBouncer or the blastgate
//! daemon) share CPU 1. Each proxy's CPU is therefore taken from the server,
//! PgBouncer's and blastgate's alike, and direct has CPU 1 to itself: the
//! ratio is the whole cost of the proxy. Override with
//! BLASTGATE_BENCH_CLIENT_CPUS, BLASTGATE_BENCH_SERVER_CPUS and
//! BLASTGATE_BENCH_PROXY_CPUS (taskset lists).
//!
//! Cells: select-only (`-S`) and TPC-B-like, each x {1, 8 clients} x
//! {simple, prepared}; `blastgate-limits` runs only the TPC-B-like cells
//! (select-only has no write, so the row limit never applies). A
//! result-heavy cell (1000 rows of pgbench_accounts per transaction, simple
//! protocol, 1 client) on direct, PgBouncer and blastgate. With `--masking`
//! a fourth daemon path, `blastgate+masking`, runs with a masking.toml that
//! also masks `public.pgbench_accounts.filler`, on that cell and on one
//! selecting an expression of the masked column (`lower(filler)`, 1000
//! rows, 1 client; also on direct and blastgate): masking by lineage once
//! the gateway has it, the plain path before. The spool says which (masked
//! fields per statement).
//!
//! Everything started here is stopped on every way out (guards, by pid;
//! children also get PR_SET_PDEATHSIG), the bench pin directories are
//! uninstalled, and the scratch directory is removed.

use std::{
    ffi::CString,
    fs::File,
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    demo::{wait_for, wait_for_daemon, Guard},
    sh,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// Pin directories are `PIN_PREFIX-<daemon label>`: one per daemon path.
const PIN_PREFIX: &str = "/sys/fs/bpf/blastgate-bench";
/// The blastgate binary the `blastgate-before` path runs.
pub const BEFORE_ENV: &str = "BLASTGATE_BENCH_BEFORE_BIN";
/// The `policies/` directory of the tree that binary was built from (its
/// Cedar schema matches the context that binary sends); this tree's when
/// unset.
pub const BEFORE_POLICIES_ENV: &str = "BLASTGATE_BENCH_BEFORE_POLICIES";
/// Role and database pgbench uses on every path.
const ROLE: &str = "bench";
/// What the agent sends as its password: blastgate holds the real one.
const AGENT_PASSWORD: &str = "the-agent-does-not-know-it";

/// A way from pgbench to the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    Direct,
    Pgbouncer,
    /// The daemon of this tree, the target without labels.
    Blastgate,
    /// The daemon of this tree, the target labelled `env = "production"`.
    BlastgateLimits,
    /// [`BEFORE_ENV`]'s daemon, `Blastgate`'s config.
    BlastgateBefore,
    /// `Blastgate` with a masking rule on `pgbench_accounts.filler`
    /// (`--masking`; not a `--paths` choice).
    BlastgateMasking,
}

impl Route {
    /// What `--paths` takes, in canonical order.
    const ALL: [Route; 5] = [
        Route::Direct,
        Route::Pgbouncer,
        Route::Blastgate,
        Route::BlastgateLimits,
        Route::BlastgateBefore,
    ];
    /// Report order.
    const ORDER: [Route; 6] = [
        Route::Direct,
        Route::Pgbouncer,
        Route::Blastgate,
        Route::BlastgateLimits,
        Route::BlastgateBefore,
        Route::BlastgateMasking,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Pgbouncer => "pgbouncer",
            Route::Blastgate => "blastgate",
            Route::BlastgateLimits => "blastgate-limits",
            Route::BlastgateBefore => "blastgate-before",
            Route::BlastgateMasking => "blastgate+masking",
        }
    }

    /// Names the daemon's log, config, socket, spool and pin directory;
    /// `None` for the paths without one.
    fn daemon_label(self) -> Option<&'static str> {
        match self {
            Route::Direct | Route::Pgbouncer => None,
            Route::Blastgate => Some("plain"),
            Route::BlastgateLimits => Some("limits"),
            Route::BlastgateBefore => Some("before"),
            Route::BlastgateMasking => Some("masking"),
        }
    }

    /// `direct,pgbouncer,blastgate,blastgate-limits,blastgate-before` (any
    /// order, any subset with direct): returned in that canonical order,
    /// direct first.
    pub fn parse_list(text: &str) -> Result<Vec<Route>> {
        let mut wanted = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let Some(route) = Route::ALL.into_iter().find(|r| r.name() == word) else {
                bail!(
                    "--paths takes direct, pgbouncer, blastgate, blastgate-limits and \
                     blastgate-before, not {word:?}"
                );
            };
            wanted.push(route);
        }
        if !wanted.contains(&Route::Direct) {
            bail!("--paths must include direct: every ratio is to direct");
        }
        Ok(Route::ALL
            .into_iter()
            .filter(|r| wanted.contains(r))
            .collect())
    }
}

pub struct Opts {
    pub reps: usize,
    /// Seconds per pgbench run.
    pub secs: u64,
    pub scale: u32,
    pub routes: Vec<Route>,
    pub masking: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    SelectOnly,
    TpcbLike,
    /// `SELECT *` of 1000 consecutive pgbench_accounts rows.
    Rows1000,
    /// `SELECT aid, lower(filler)` of 1000 consecutive rows: an expression
    /// of the masked column (`--masking` only).
    RowsExpr,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::TpcbLike => "tpcb-like",
            Workload::Rows1000 => "rows-1000",
            Workload::RowsExpr => "rows-1000-expr",
        }
    }
}

#[derive(Clone, Copy)]
struct Cell {
    workload: Workload,
    clients: u32,
    prepared: bool,
}

impl Cell {
    fn mode(&self) -> &'static str {
        if self.prepared {
            "prepared"
        } else {
            "simple"
        }
    }

    /// Whether this cell is measured on `route`.
    fn on(&self, route: Route) -> bool {
        match (self.workload, route) {
            // No write: the row limit never applies, same path as blastgate.
            (Workload::SelectOnly, Route::BlastgateLimits) => false,
            (Workload::SelectOnly | Workload::TpcbLike, Route::BlastgateMasking) => false,
            (Workload::SelectOnly | Workload::TpcbLike, _) => true,
            (Workload::Rows1000, r) => matches!(
                r,
                Route::Direct | Route::Pgbouncer | Route::Blastgate | Route::BlastgateMasking
            ),
            (Workload::RowsExpr, r) => matches!(
                r,
                Route::Direct | Route::Blastgate | Route::BlastgateMasking
            ),
        }
    }
}

/// The cells in groups (reads, writes, result-heavy): per repetition and
/// group each daemon path is started once.
fn cell_groups(masking: bool) -> Vec<(&'static str, Vec<Cell>)> {
    let grid = |workload| {
        let mut out = Vec::new();
        for clients in [1, 8] {
            for prepared in [false, true] {
                out.push(Cell {
                    workload,
                    clients,
                    prepared,
                });
            }
        }
        out
    };
    let simple = |workload| Cell {
        workload,
        clients: 1,
        prepared: false,
    };
    let mut rows = vec![simple(Workload::Rows1000)];
    if masking {
        rows.push(simple(Workload::RowsExpr));
    }
    vec![
        ("reads", grid(Workload::SelectOnly)),
        ("writes", grid(Workload::TpcbLike)),
        ("rows", rows),
    ]
}

/// One pgbench run's numbers.
#[derive(Clone, Copy)]
struct Sample {
    tps: f64,
    latency_ms: f64,
    connect_ms: f64,
}

/// Set by SIGINT/SIGTERM: the bench stops at the next run and cleans up.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From here on SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing
/// the bench, so its guards still stop what it started.
pub(crate) fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Children die with the bench even if it is killed outright.
pub(crate) fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl in the child before exec (after any uid change, which
    // would clear it); async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

fn postgres_ids() -> Result<(u32, u32)> {
    let name = CString::new("postgres")?;
    // SAFETY: getpwnam returns a pointer into static storage or null; the
    // fields are copied out at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            bail!("no `postgres` OS user (run `cargo xtask setup`)");
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

pub(crate) fn free_port(ip: &str) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

pub(crate) fn cpus(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// What every whole-path bench does first: checks the programs it runs
/// are installed, builds the release binary, from then on turns SIGINT
/// and SIGTERM into a clean stop, and reads the CPU lists of the client,
/// the server and the proxy (BLASTGATE_BENCH_CLIENT_CPUS, …_SERVER_CPUS,
/// …_PROXY_CPUS; default 0, 1 and 1). The binary's path and the lists.
pub(crate) fn prepare(root: &Path, needed: &[&str]) -> Result<(PathBuf, [String; 3])> {
    for need in needed {
        if !Path::new(need).exists() {
            bail!("{need} is missing: run `cargo xtask setup`");
        }
    }
    sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    catch_interrupts();
    Ok((
        root.join("target/release/blastgate"),
        [
            cpus("BLASTGATE_BENCH_CLIENT_CPUS", "0"),
            cpus("BLASTGATE_BENCH_SERVER_CPUS", "1"),
            cpus("BLASTGATE_BENCH_PROXY_CPUS", "1"),
        ],
    ))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- {} ---\n{}",
        path.display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// Removes the scratch directory last.
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: removing {}: {e}", self.0.display());
        }
    }
}

/// A directory owned by the postgres user, mode 0700.
fn postgres_dir(path: &Path, ids: (u32, u32)) -> Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1))?;
    Ok(())
}

fn write_owned(path: &Path, text: &str, ids: (u32, u32)) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1))?;
    Ok(())
}

fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(program)
        .current_dir(cwd);
    for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
        c.env_remove(var);
    }
    c
}

/// A throwaway PostgreSQL 15, run as the postgres user, pinned; fast
/// shutdown (SIGINT) on drop, SIGKILL if it lingers.
struct PgServer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl PgServer {
    fn start(dir: &Path, ids: (u32, u32), cpus: &str) -> Result<PgServer> {
        postgres_dir(dir, ids)?;
        let data = dir.join("data");
        let out = as_postgres(&Path::new(PG_BIN).join("initdb"), dir)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        write_owned(
            &data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.0/8 scram-sha-256\n",
            ids,
        )?;
        let port = free_port("127.0.0.2")?;
        let conf_path = data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path)?;
        conf.push_str(&format!(
            "\n# cargo xtask bench\nlisten_addresses = '127.0.0.2'\nport = {port}\n\
             unix_socket_directories = '{}'\nssl = off\nmax_connections = 100\n\
             shared_buffers = 128MB\nfsync = off\npassword_encryption = 'scram-sha-256'\n",
            dir.display()
        ));
        write_owned(&conf_path, &conf, ids)?;
        let log_path = dir.join("postgres.log");
        let log = File::create(&log_path)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpus])
            .arg(Path::new(PG_BIN).join("postgres"))
            .arg("-D")
            .arg(&data)
            .current_dir(dir)
            .uid(ids.0)
            .gid(ids.1)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SIGQUIT: PostgreSQL's immediate shutdown.
        die_with_parent(&mut cmd, libc::SIGQUIT);
        let child = cmd.spawn().context("starting postgres")?;
        let mut pg = PgServer {
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
        };
        let isready = Path::new(PG_BIN).join("pg_isready");
        let up = wait_for("PostgreSQL", Duration::from_secs(30), || {
            if let Some(Ok(Some(_))) = pg.child.as_mut().map(Child::try_wait) {
                return true;
            }
            Command::new(&isready)
                .args(["-q", "-t", "1", "-h", "127.0.0.2", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
        let exited = matches!(pg.child.as_mut().map(Child::try_wait), Some(Ok(Some(_))));
        if up.is_err() || exited {
            bail!("PostgreSQL did not start\n{}", tail(&log_path, 30));
        }
        Ok(pg)
    }

    /// Superuser SQL over the unix socket; each string is its own statement
    /// (VACUUM cannot run in the implicit transaction of a multi-statement
    /// query).
    fn sql(&self, db: &str, statements: &[&str]) -> Result<String> {
        let mut c = as_postgres(&Path::new(PG_BIN).join("psql"), &self.dir);
        c.arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"]);
        for s in statements {
            c.args(["-c", s]);
        }
        Ok(sh::stdout(&mut c)?.trim().to_string())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            sh::stop_child(&mut c, libc::SIGINT, Duration::from_secs(15));
        }
    }
}

/// PgBouncer 1.18 as the postgres user, session pooling, SCRAM both ways.
fn start_pgbouncer(
    dir: &Path,
    ids: (u32, u32),
    pg_port: u16,
    password: &str,
    cpus: &str,
) -> Result<(Guard, u16)> {
    postgres_dir(dir, ids)?;
    let port = free_port("127.0.0.1")?;
    let ini = dir.join("pgbouncer.ini");
    write_owned(
        &dir.join("userlist.txt"),
        &format!("\"{ROLE}\" \"{password}\"\n"),
        ids,
    )?;
    write_owned(
        &ini,
        &format!(
            "[databases]\n{ROLE} = host=127.0.0.2 port={pg_port} dbname={ROLE}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir = {d}\nauth_type = scram-sha-256\nauth_file = {d}/userlist.txt\n\
             pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {d}/pgbouncer.log\n",
            d = dir.display()
        ),
        ids,
    )?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus])
        .arg(PGBOUNCER)
        .arg(&ini)
        .current_dir(dir)
        .uid(ids.0)
        .gid(ids.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd, libc::SIGTERM);
    let guard = Guard::spawn("pgbouncer", &mut cmd)?;
    if let Err(e) = wait_for("PgBouncer", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        bail!("{e}\n{}", tail(&dir.join("pgbouncer.log"), 20));
    }
    Ok((guard, port))
}

/// The blastgate daemon of a benchmark, pinned to `cpus`: stopped, then its
/// pins uninstalled, on drop. Shared by the benches.
pub(crate) struct Daemon {
    guard: Guard,
    bin: PathBuf,
    /// A config with only `[bpf] pin_dir`: uninstall must work whatever
    /// the full config holds.
    uninstall_config: PathBuf,
    /// Its stdout and stderr.
    pub(crate) log: PathBuf,
}

/// How a bench runs its daemon.
pub(crate) struct DaemonOpts<'a> {
    /// The config's `[bpf] pin_dir`.
    pub(crate) pin_dir: &'a str,
    /// Names the log file (`daemon-LABEL.log`).
    pub(crate) label: &'a str,
    pub(crate) cpus: &'a str,
    pub(crate) deadline_secs: u64,
    /// `BLASTGATE_LOG`.
    pub(crate) log_filter: &'a str,
}

impl Daemon {
    pub(crate) fn start(
        bin: &Path,
        config: &Path,
        dir: &Path,
        opts: &DaemonOpts<'_>,
    ) -> Result<Daemon> {
        let uninstall_config = dir.join(format!("uninstall-{}.toml", opts.label));
        std::fs::write(
            &uninstall_config,
            format!("[bpf]\npin_dir = \"{}\"\n", opts.pin_dir),
        )?;
        let log_path = dir.join(format!("daemon-{}.log", opts.label));
        let log = File::create(&log_path)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", opts.cpus])
            .arg(bin)
            .args(["daemon", "--detach-on-exit", "--deadline"])
            .arg(opts.deadline_secs.to_string())
            .arg("--config")
            .arg(config)
            .env("BLASTGATE_LOG", opts.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let daemon = Daemon {
            guard: Guard::spawn("blastgate daemon", &mut cmd)?,
            bin: bin.to_path_buf(),
            uninstall_config,
            log: log_path,
        };
        if let Err(e) = wait_for_daemon(bin, config) {
            bail!("{e}\n{}", tail(&daemon.log, 30));
        }
        Ok(daemon)
    }

    /// taskset execs the daemon: the child's pid is the daemon's.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.guard.pid()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.guard.stop();
        let _ = Command::new(&self.bin)
            .args(["uninstall", "--config"])
            .arg(&self.uninstall_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A daemon path's binary and files.
struct DaemonSpec {
    label: &'static str,
    bin: PathBuf,
    config: PathBuf,
    pin_dir: String,
    spool: PathBuf,
}

/// Where pgbench connects on each path, and how.
struct Endpoints {
    pg_port: u16,
    bouncer_port: u16,
    password: String,
    daemons: Vec<(Route, DaemonSpec)>,
    client_cpus: String,
    scratch: PathBuf,
    rows_script: PathBuf,
    expr_script: PathBuf,
}

impl Endpoints {
    fn daemon(&self, route: Route) -> Option<&DaemonSpec> {
        self.daemons
            .iter()
            .find(|(r, _)| *r == route)
            .map(|(_, spec)| spec)
    }

    /// One pgbench run of `cell` on `route` for `secs` seconds.
    fn pgbench(&self, route: Route, cell: Cell, secs: u64) -> Result<Sample> {
        check_interrupted()?;
        let (host, port, password) = match route {
            Route::Direct => ("127.0.0.2", self.pg_port, self.password.as_str()),
            Route::Pgbouncer => ("127.0.0.1", self.bouncer_port, self.password.as_str()),
            // The server's own address: the eBPF redirect takes it to the
            // daemon.
            _ => ("127.0.0.2", self.pg_port, AGENT_PASSWORD),
        };
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]);
        if let Some(spec) = self.daemon(route) {
            c.arg(&spec.bin)
                .args(["run", "--agent", "bench", "--config"])
                .arg(&spec.config)
                .arg("--");
        } else if route.daemon_label().is_some() {
            bail!("no daemon configured for {}", route.name());
        }
        let n = cell.clients.to_string();
        c.arg(Path::new(PG_BIN).join("pgbench"))
            // No vacuum through the path under test: VACUUM and TRUNCATE
            // are not what is measured (and policy holds DDL for a human).
            // The bench vacuums directly before each TPC-B-like run instead.
            .args(["-n", "-h", host, "-p", &port.to_string(), "-U", ROLE])
            .args(["-T", &secs.to_string(), "-c", &n, "-j", &n])
            .args(["-M", cell.mode()]);
        match cell.workload {
            Workload::SelectOnly => {
                c.arg("-S");
            }
            Workload::TpcbLike => {}
            Workload::Rows1000 => {
                c.arg("-f").arg(&self.rows_script);
            }
            Workload::RowsExpr => {
                c.arg("-f").arg(&self.expr_script);
            }
        }
        c.arg(ROLE)
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS");
        let what = format!(
            "pgbench {} {} clients {} via {}",
            cell.workload.name(),
            cell.clients,
            cell.mode(),
            route.name()
        );
        let out = run_bounded(
            &mut c,
            &self.scratch,
            Duration::from_secs(secs * 3 + 30),
            &what,
        )?;
        parse_pgbench(&out).with_context(|| format!("{what}; it printed:\n{out}"))
    }
}

/// Runs a command to completion within `limit` (killed by pid after it);
/// stdout on success, an error with its output otherwise.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    scratch: &Path,
    limit: Duration,
    what: &str,
) -> Result<String> {
    let out_path = scratch.join("run.out");
    let err_path = scratch.join("run.err");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    die_with_parent(cmd, libc::SIGKILL);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if interrupted || Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let why = if interrupted {
                "interrupted".to_string()
            } else {
                format!("did not finish within {limit:?}")
            };
            bail!(
                "{what}: {why}\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        // 10 ms: the git and AWS benches time runs of a few seconds by
        // when this loop sees the exit.
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{what} failed ({status}):\n{out}{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    Ok(out)
}

/// TPS, "latency average" and "initial connection time" from pgbench 15;
/// refuses runs with failed transactions or none at all.
fn parse_pgbench(out: &str) -> Result<Sample> {
    let field = |prefix: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let done = field("number of transactions actually processed:").unwrap_or(0.0);
    if done < 1.0 {
        bail!("no transaction completed");
    }
    if let Some(failed) = field("number of failed transactions:") {
        if failed > 0.0 {
            bail!("{failed} transactions failed");
        }
    }
    Ok(Sample {
        tps: field("tps =").context("no tps line")?,
        latency_ms: field("latency average =").context("no latency average line")?,
        connect_ms: field("initial connection time =").unwrap_or(f64::NAN),
    })
}

/// Samples per cell (index into `cells`) and path name.
type Samples = Vec<Vec<(String, Vec<Sample>)>>;

fn record(samples: &mut Samples, cell: usize, path: &str, s: Sample) {
    let row = &mut samples[cell];
    match row.iter_mut().find(|(p, _)| p == path) {
        Some((_, v)) => v.push(s),
        None => row.push((path.to_string(), vec![s])),
    }
}

struct Summary {
    tps: f64,
    latency_ms: f64,
    connect_ms: f64,
    tps_runs: Vec<f64>,
}

fn summarize(v: &[Sample]) -> Summary {
    Summary {
        tps: median(v.iter().map(|s| s.tps).collect()),
        latency_ms: median(v.iter().map(|s| s.latency_ms).collect()),
        connect_ms: median(v.iter().map(|s| s.connect_ms).collect()),
        tps_runs: v.iter().map(|s| s.tps).collect(),
    }
}

/// A cell's samples on each path, in report order.
fn ordered(row: &[(String, Vec<Sample>)]) -> Vec<(&'static str, Summary)> {
    Route::ORDER
        .iter()
        .filter_map(|r| {
            row.iter()
                .find(|(p, _)| p == r.name())
                .map(|(_, v)| (r.name(), summarize(v)))
        })
        .collect()
}

/// Prints the long table (every path of every cell) and the side-by-side
/// one (TPS ratio to direct), and returns the JSON rows.
fn report(cells: &[Cell], samples: &Samples) -> Vec<Value> {
    println!(
        "  {:<14} {:>7} {:<9} {:<18} {:>10} {:>7} {:>9} {:>9}  TPS of each run",
        "workload", "clients", "mode", "path", "TPS", "ratio", "lat ms", "conn ms"
    );
    let mut rows = Vec::new();
    for (cell, row) in cells.iter().zip(samples) {
        if row.is_empty() {
            continue;
        }
        let row = ordered(row);
        let direct = row
            .iter()
            .find(|(p, _)| *p == "direct")
            .map_or(f64::NAN, |(_, s)| s.tps);
        let mut paths = Map::new();
        for (path, s) in &row {
            let ratio = s.tps / direct;
            let runs: Vec<String> = s.tps_runs.iter().map(|t| format!("{t:.0}")).collect();
            println!(
                "  {:<14} {:>7} {:<9} {:<18} {:>10.1} {:>7.2} {:>9.3} {:>9.2}  {}",
                cell.workload.name(),
                cell.clients,
                cell.mode(),
                path,
                s.tps,
                ratio,
                s.latency_ms,
                s.connect_ms,
                runs.join(" ")
            );
            paths.insert(
                path.to_string(),
                json!({
                    "tps": s.tps, "ratio_to_direct": ratio, "latency_avg_ms": s.latency_ms,
                    "initial_connection_ms": s.connect_ms, "tps_runs": s.tps_runs,
                }),
            );
        }
        rows.push(json!({
            "workload": cell.workload.name(), "clients": cell.clients, "mode": cell.mode(),
            "paths": paths,
        }));
    }

    println!("\n  side by side: direct TPS (avg latency ms); every other path as TPS ratio to direct (latency ms)");
    let columns: Vec<Route> = Route::ORDER
        .into_iter()
        .filter(|r| {
            samples
                .iter()
                .any(|row| row.iter().any(|(p, _)| p == r.name()))
        })
        .collect();
    let mut header = format!("  {:<31}", "cell");
    for r in &columns {
        header.push_str(&format!(" {:>19}", r.name()));
    }
    println!("{header}");
    for (cell, row) in cells.iter().zip(samples) {
        if row.is_empty() {
            continue;
        }
        let row = ordered(row);
        let direct = row
            .iter()
            .find(|(p, _)| *p == "direct")
            .map_or(f64::NAN, |(_, s)| s.tps);
        let mut line = format!(
            "  {:<31}",
            format!("{} c{} {}", cell.workload.name(), cell.clients, cell.mode())
        );
        for r in &columns {
            let text = match row.iter().find(|(p, _)| *p == r.name()) {
                None => "—".to_string(),
                Some((_, s)) if *r == Route::Direct => {
                    format!("{:.0} ({:.3})", s.tps, s.latency_ms)
                }
                Some((_, s)) => format!("{:.2} ({:.3})", s.tps / direct, s.latency_ms),
            };
            line.push_str(&format!(" {text:>19}"));
        }
        println!("{line}");
    }
    rows
}

/// What one daemon path's spool and log held, over all its starts.
#[derive(Default)]
struct SpoolCheck {
    starts: u32,
    bytes: u64,
    statements: u64,
    /// Statement events not allowed (deny, error).
    not_allowed: u64,
    approvals_requested: u64,
    differentials: u64,
    updates: u64,
    updates_allowed: u64,
    updates_one_row: u64,
    /// UPDATEs whose reason says their effect was measured.
    updates_measured: u64,
    rows_selects: u64,
    rows_masked_fields: u64,
    expr_selects: u64,
    expr_masked_fields: u64,
    /// Lines in the daemon's log (filter `warn`).
    log_lines: u64,
    /// The first few odd lines (spool or log).
    odd: Vec<String>,
}

impl SpoolCheck {
    fn note(&mut self, line: &str) {
        if self.odd.len() < 6 {
            self.odd.push(line.chars().take(400).collect());
        }
    }

    /// Reads the spool segments (then removes them: disk is short) and the
    /// daemon's log of one start.
    fn add(&mut self, spool: &Path, log: &Path) -> Result<()> {
        self.starts += 1;
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        for line in log_text.lines().filter(|l| !l.trim().is_empty()) {
            self.log_lines += 1;
            self.note(&format!("log: {line}"));
        }
        let Ok(entries) = std::fs::read_dir(spool) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !(name.starts_with("segment-") && name.ends_with(".jsonl")) {
                continue;
            }
            let path = entry.path();
            self.bytes += entry.metadata().map_or(0, |m| m.len());
            let reader = std::io::BufReader::new(File::open(&path)?);
            for line in std::io::BufRead::lines(reader) {
                self.line(&line?);
            }
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        if line.contains("\"kind\":\"approval_requested\"") {
            self.approvals_requested += 1;
            self.note(line);
            return;
        }
        if line.contains("\"kind\":\"differential\"") {
            self.differentials += 1;
            self.note(line);
            return;
        }
        if !line.contains("\"kind\":\"statement\"") {
            return;
        }
        self.statements += 1;
        let allowed = line.contains("\"verdict\":\"allow\"");
        if !allowed {
            self.not_allowed += 1;
            self.note(line);
        }
        let update = line.contains("\"action\":\"sql:update\"");
        let rows_select = line.contains("FROM pgbench_accounts WHERE aid BETWEEN");
        if !update && !rows_select {
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            self.note(line);
            return;
        };
        let masked = event["masked_fields"].as_u64().unwrap_or(0);
        if update {
            self.updates += 1;
            self.updates_allowed += u64::from(allowed);
            self.updates_one_row += u64::from(event["rows"].as_u64() == Some(1));
            let reason = event["reason"].as_str().unwrap_or("");
            self.updates_measured += u64::from(reason.contains("rows changed"));
        } else if event["text"]
            .as_str()
            .is_some_and(|t| t.contains("lower(filler)"))
        {
            self.expr_selects += 1;
            self.expr_masked_fields += masked;
        } else {
            self.rows_selects += 1;
            self.rows_masked_fields += masked;
        }
    }

    fn json(&self) -> Value {
        json!({
            "daemon_starts": self.starts, "spool_bytes": self.bytes,
            "statements": self.statements, "statements_not_allowed": self.not_allowed,
            "approvals_requested": self.approvals_requested,
            "differentials": self.differentials,
            "updates": self.updates, "updates_allowed": self.updates_allowed,
            "updates_rows_1": self.updates_one_row, "updates_measured": self.updates_measured,
            "rows_1000_selects": self.rows_selects,
            "rows_1000_masked_fields": self.rows_masked_fields,
            "expr_selects": self.expr_selects, "expr_masked_fields": self.expr_masked_fields,
            "daemon_log_lines": self.log_lines, "odd": self.odd,
        })
    }
}

/// Files of a `policies/` directory (not its tests), with or without
/// masking.toml.
fn policy_dir(policies: &Path, to: &Path, masking: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in
        std::fs::read_dir(policies).with_context(|| format!("reading {}", policies.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || name == "masking.toml" {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name))?;
    }
    if let Some(extra) = masking {
        let shipped = std::fs::read_to_string(policies.join("masking.toml"))?;
        std::fs::write(to.join("masking.toml"), format!("{shipped}\n{extra}"))?;
    }
    Ok(())
}

const MASK_FILLER: &str = "\
# Added by `cargo xtask bench --masking`: every row of the rows-1000 cell
# carries one masked column.
[[field]]
id = \"bench-filler\"
targets = [\"bench-db\"]
columns = [\"public.pgbench_accounts.filler\"]
style = \"fixed\"
";

/// A daemon path's config: its own socket, spool and pins; `labels` is
/// the target's inline `labels` table, if any.
fn daemon_config(
    dir: &Path,
    spec: &DaemonSpec,
    proxy_port: u16,
    pg_port: u16,
    policy: &Path,
    labels: Option<&str>,
) -> String {
    let labels = labels.map_or(String::new(), |l| format!("labels = {l}\n"));
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
         [control]\nsocket = \"{d}/control-{label}.sock\"\n\n\
         [bpf]\npin_dir = \"{pins}\"\n\n\
         [records]\nspool_dir = \"{spool}\"\n\n\
         [tls]\nca_dir = \"{d}/ca\"\n\n\
         [policy]\ndir = \"{policy}\"\n\n\
         [[targets]]\nname = \"bench-db\"\nprotocol = \"postgres\"\naddress = \"127.0.0.2:{pg_port}\"\n{labels}\n\
         [targets.postgres]\nuser = \"{ROLE}\"\npassword_file = \"{d}/bench.secret\"\ntls = \"disable\"\n",
        d = dir.display(),
        label = spec.label,
        pins = spec.pin_dir,
        spool = spec.spool.display(),
        policy = policy.display(),
    )
}

pub(crate) fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the root) or
/// `target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    let started = Instant::now();
    if !sh::is_root() {
        bail!("the PostgreSQL benchmark runs servers as the postgres user and attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.secs == 0 {
        bail!("--reps and --secs must be at least 1");
    }
    let mut routes = opts.routes.clone();
    let mut notes: Vec<String> = Vec::new();
    let before_bin = std::env::var_os(BEFORE_ENV).map(PathBuf::from);
    if routes.contains(&Route::BlastgateBefore) {
        match &before_bin {
            None => {
                let note = format!(
                    "blastgate-before skipped: {BEFORE_ENV} is not set (point it at a release \
                     blastgate binary built from the commit to compare with)"
                );
                eprintln!("bench: {note}");
                notes.push(note);
                routes.retain(|r| *r != Route::BlastgateBefore);
            }
            Some(p) if !p.is_file() => bail!("{BEFORE_ENV}={}: no such file", p.display()),
            Some(_) => {}
        }
    }
    if opts.masking {
        if !routes.contains(&Route::Blastgate) {
            bail!("--masking measures the blastgate path: include blastgate in --paths");
        }
        routes.push(Route::BlastgateMasking);
    }
    let daemons_on = routes.iter().any(|r| r.daemon_label().is_some());
    for need in [
        Path::new(PG_BIN).join("postgres"),
        Path::new(PG_BIN).join("pgbench"),
    ] {
        if !need.exists() {
            bail!("{} is missing: run `cargo xtask setup`", need.display());
        }
    }
    if routes.contains(&Route::Pgbouncer) && !Path::new(PGBOUNCER).exists() {
        bail!("{PGBOUNCER} is missing: run `cargo xtask setup`");
    }
    let target = target_dir(root);
    let bin = target.join("release/blastgate");
    if daemons_on {
        sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    }
    catch_interrupts();
    let client_cpus = cpus("BLASTGATE_BENCH_CLIENT_CPUS", "0");
    let server_cpus = cpus("BLASTGATE_BENCH_SERVER_CPUS", "1");
    let proxy_cpus = cpus("BLASTGATE_BENCH_PROXY_CPUS", "1");
    let ids = postgres_ids()?;

    // Dropped in reverse: PgBouncer, PostgreSQL, then the directory (each
    // daemon is dropped at the end of its block).
    let dir = std::env::temp_dir().join(format!("blastgate-bench-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = ScratchDir(dir.clone());

    eprintln!("bench: starting PostgreSQL 15 on 127.0.0.2 (CPU {server_cpus})");
    let pg = PgServer::start(&dir.join("pg"), ids, &server_cpus)?;
    let password = format!("bench-{}", std::process::id());
    pg.sql(
        "postgres",
        &[&format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")],
    )?;
    pg.sql(
        "postgres",
        &[&format!("CREATE DATABASE {ROLE} OWNER {ROLE}")],
    )?;
    // pgbench -i runs DDL (which policy holds for a human): direct.
    eprintln!("bench: pgbench -i -s {} (direct)", opts.scale);
    sh::run(
        Command::new(Path::new(PG_BIN).join("pgbench"))
            .args(["-i", "-q", "-s", &opts.scale.to_string()])
            .args([
                "-h",
                "127.0.0.2",
                "-p",
                &pg.port.to_string(),
                "-U",
                ROLE,
                ROLE,
            ])
            .env("PGPASSWORD", &password)
            .env("PGSSLMODE", "disable"),
    )?;
    let last = u64::from(opts.scale) * 100_000 - 999;
    let rows_script = dir.join("rows-1000.sql");
    std::fs::write(
        &rows_script,
        format!(
            "\\set a random(1, {last})\nSELECT * FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 999;\n"
        ),
    )?;
    let expr_script = dir.join("rows-1000-expr.sql");
    std::fs::write(
        &expr_script,
        format!(
            "\\set a random(1, {last})\nSELECT aid, lower(filler) FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 999;\n"
        ),
    )?;

    let mut bouncer_port = 0;
    let _bouncer = if routes.contains(&Route::Pgbouncer) {
        let (guard, port) =
            start_pgbouncer(&dir.join("pgbouncer"), ids, pg.port, &password, &proxy_cpus)?;
        bouncer_port = port;
        Some(guard)
    } else {
        None
    };

    let groups = cell_groups(opts.masking);
    let cells: Vec<Cell> = groups.iter().flat_map(|(_, g)| g.clone()).collect();
    let runs: usize = cells
        .iter()
        .map(|c| routes.iter().filter(|r| c.on(**r)).count())
        .sum();
    let deadline = (runs as u64 * opts.reps as u64 * (opts.secs + 4)) * 2 + 600;
    std::fs::write(dir.join("bench.secret"), format!("{password}\n"))?;
    std::fs::set_permissions(
        dir.join("bench.secret"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let plain_policy = dir.join("policy");
    policy_dir(&root.join("policies"), &plain_policy, None)?;
    // The shipped policies of the older binary's own tree: its Cedar schema
    // (and so the context it sends) may differ from this tree's.
    let before_policy = dir.join("policy-before");
    if routes.contains(&Route::BlastgateBefore) {
        match std::env::var_os(BEFORE_POLICIES_ENV) {
            Some(p) => policy_dir(Path::new(&p), &before_policy, None)?,
            None => {
                let note = format!(
                    "blastgate-before runs with this tree's policies/ ({BEFORE_POLICIES_ENV} \
                     unset): an older binary may not send what this schema requires"
                );
                eprintln!("bench: {note}");
                notes.push(note);
                policy_dir(&root.join("policies"), &before_policy, None)?;
            }
        }
    }
    if routes.contains(&Route::BlastgateBefore) {
        if let Some(before) = &before_bin {
            sh::run(
                Command::new(before)
                    .args(["policy", "check"])
                    .arg(&before_policy),
            )?;
        }
    }
    let masking_policy = dir.join("policy-masking");
    if opts.masking {
        policy_dir(&root.join("policies"), &masking_policy, Some(MASK_FILLER))?;
        sh::run(
            Command::new(&bin)
                .args(["policy", "check"])
                .arg(&masking_policy),
        )?;
    }
    let mut daemons = Vec::new();
    for &route in &routes {
        let Some(label) = route.daemon_label() else {
            continue;
        };
        let spec = DaemonSpec {
            label,
            bin: match route {
                Route::BlastgateBefore => before_bin.clone().context("no before binary")?,
                _ => bin.clone(),
            },
            config: dir.join(format!("blastgate-{label}.toml")),
            pin_dir: format!("{PIN_PREFIX}-{label}"),
            spool: dir.join(format!("spool-{label}")),
        };
        let (policy, labels) = match route {
            Route::BlastgateLimits => (&plain_policy, Some("{ env = \"production\" }")),
            Route::BlastgateMasking => (&masking_policy, None),
            Route::BlastgateBefore => (&before_policy, None),
            _ => (&plain_policy, None),
        };
        std::fs::write(
            &spec.config,
            daemon_config(
                &dir,
                &spec,
                free_port("127.0.0.1")?,
                pg.port,
                policy,
                labels,
            ),
        )?;
        daemons.push((route, spec));
    }

    let ep = Endpoints {
        pg_port: pg.port,
        bouncer_port,
        password: password.clone(),
        daemons,
        client_cpus: client_cpus.clone(),
        scratch: dir.clone(),
        rows_script,
        expr_script,
    };
    let vacuum = || {
        pg.sql(
            ROLE,
            &[
                "VACUUM pgbench_branches",
                "VACUUM pgbench_tellers",
                "TRUNCATE pgbench_history",
            ],
        )
    };

    // Warm-up: caches, pools, CPU frequency; each daemon again at each
    // start.
    let warm = Cell {
        workload: Workload::SelectOnly,
        clients: 8,
        prepared: false,
    };
    for &route in routes.iter().filter(|r| r.daemon_label().is_none()) {
        ep.pgbench(route, warm, 2)?;
    }

    let mut checks: Vec<(Route, SpoolCheck)> = routes
        .iter()
        .filter(|r| r.daemon_label().is_some())
        .map(|r| (*r, SpoolCheck::default()))
        .collect();
    let mut samples: Samples = vec![Vec::new(); cells.len()];
    // A failed run is reported, not fatal: the other paths still measure.
    let mut failures: Vec<String> = Vec::new();
    let failed = |failures: &mut Vec<String>, what: String| {
        let what: String = what.chars().take(2000).collect();
        eprintln!("bench: FAILED {what}");
        failures.push(what);
    };
    for rep in 0..opts.reps {
        let mut first = 0;
        for (group, group_cells) in &groups {
            let mut order: Vec<Route> = routes
                .iter()
                .copied()
                .filter(|r| group_cells.iter().any(|c| c.on(*r)))
                .collect();
            if !order.is_empty() {
                let n = order.len();
                order.rotate_left(rep % n);
            }
            for route in order {
                let daemon = match ep.daemon(route) {
                    Some(spec) => {
                        let up = Daemon::start(
                            &spec.bin,
                            &spec.config,
                            &dir,
                            &DaemonOpts {
                                pin_dir: &spec.pin_dir,
                                label: spec.label,
                                cpus: &proxy_cpus,
                                deadline_secs: deadline,
                                log_filter: "warn",
                            },
                        )
                        .and_then(|d| ep.pgbench(route, warm, 1).map(|_| d));
                        match up {
                            Ok(d) => Some((d, spec)),
                            Err(e) => {
                                check_interrupted()?;
                                failed(
                                    &mut failures,
                                    format!("{} (rep {}, {group}): {e:#}", route.name(), rep + 1),
                                );
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                for (k, &cell) in group_cells.iter().enumerate() {
                    if !cell.on(route) {
                        continue;
                    }
                    if cell.workload == Workload::TpcbLike {
                        vacuum()?;
                    }
                    match ep.pgbench(route, cell, opts.secs) {
                        Ok(s) => record(&mut samples, first + k, route.name(), s),
                        Err(e) => {
                            check_interrupted()?;
                            failed(&mut failures, format!("rep {}: {e:#}", rep + 1));
                        }
                    }
                }
                if let Some((d, spec)) = daemon {
                    let log = d.log.clone();
                    drop(d);
                    if let Some((_, check)) = checks.iter_mut().find(|(r, _)| *r == route) {
                        check.add(&spec.spool, &log)?;
                    }
                }
            }
            eprintln!(
                "bench: repetition {}/{}: {group} done ({:.0} s)",
                rep + 1,
                opts.reps,
                started.elapsed().as_secs_f64()
            );
            first += group_cells.len();
        }
    }

    let versions = |cmd: &mut Command| {
        sh::stdout(cmd)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_string))
    };
    let pg_version = versions(Command::new(Path::new(PG_BIN).join("postgres")).arg("--version"));
    let bouncer_version = versions(Command::new(PGBOUNCER).arg("--version"));
    println!(
        "\nblastgate postgres bench: pgbench, scale {}, {} s per run, medians of {} alternating \
         repetitions",
        opts.scale, opts.secs, opts.reps
    );
    println!(
        "(pgbench on CPU {client_cpus}; PostgreSQL on CPU {server_cpus}; PgBouncer and the \
         blastgate daemon on CPU {proxy_cpus}; ratio = TPS / direct TPS)"
    );
    println!(
        "paths: {}",
        routes
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(p) = ep.daemon(Route::BlastgateBefore) {
        println!("blastgate-before: {}", p.bin.display());
    }
    for note in &notes {
        println!("{note}");
    }
    let rows = report(&cells, &samples);
    println!(
        "\n  blastgate-limits: select-only not run (no write: the row limit never applies, the \
         path is blastgate's); rows-1000 cells run on direct, pgbouncer, blastgate (and \
         blastgate+masking)"
    );

    // The spools: what each daemon path decided.
    let mut problems = Vec::new();
    if !failures.is_empty() {
        println!("\n  failed runs (left out of the medians):");
        for f in &failures {
            println!("  - {f}");
        }
        problems.push(format!("{} runs failed", failures.len()));
    }
    println!("\n  what each daemon recorded (spool, all its starts):");
    for (route, c) in &checks {
        println!(
            "  {:<18} {} statements ({} not allowed), {} approvals requested, {} differentials; \
             UPDATEs: {} ({} allowed, {} with rows = 1, {} measured); {:.1} MiB of spool; {} \
             daemon log lines",
            route.name(),
            c.statements,
            c.not_allowed,
            c.approvals_requested,
            c.differentials,
            c.updates,
            c.updates_allowed,
            c.updates_one_row,
            c.updates_measured,
            c.bytes as f64 / (1 << 20) as f64,
            c.log_lines
        );
        for odd in &c.odd {
            println!("      {odd}");
        }
        if c.not_allowed > 0 || c.approvals_requested > 0 || c.differentials > 0 {
            problems.push(format!(
                "{}: {} statements not allowed, {} approvals requested, {} differentials",
                route.name(),
                c.not_allowed,
                c.approvals_requested,
                c.differentials
            ));
        }
        if *route == Route::BlastgateLimits
            && (c.updates == 0
                || c.updates_allowed != c.updates
                || c.updates_one_row != c.updates
                || c.updates_measured != c.updates)
        {
            problems.push(format!(
                "blastgate-limits: of {} UPDATEs, {} allowed, {} with rows = 1, {} measured \
                 (expected all)",
                c.updates, c.updates_allowed, c.updates_one_row, c.updates_measured
            ));
        }
    }
    let check_of = |route| checks.iter().find(|(r, _)| *r == route).map(|(_, c)| c);
    if let Some(m) = check_of(Route::BlastgateMasking) {
        let per = |fields: u64, n: u64| {
            if n == 0 {
                f64::NAN
            } else {
                fields as f64 / n as f64
            }
        };
        let star = per(m.rows_masked_fields, m.rows_selects);
        let expr = per(m.expr_masked_fields, m.expr_selects);
        println!(
            "\n  masking rule on public.pgbench_accounts.filler (blastgate+masking): {star:.0} masked \
             fields per `SELECT *` of 1000 rows, {expr:.0} per `SELECT aid, lower(filler)` of 1000 rows"
        );
        if m.expr_selects > 0 && m.expr_masked_fields == 0 {
            println!(
                "  this build does not mask by lineage: rows-1000-expr on blastgate+masking \
                 measured the plain path (the expression of the masked column went out unmasked)"
            );
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    println!("\nbench wall time: {elapsed:.0} s (build included)");
    let report = json!({
        "reps": opts.reps, "secs": opts.secs, "scale": opts.scale,
        "paths": routes.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "before_bin": ep.daemon(Route::BlastgateBefore).map(|d| d.bin.display().to_string()),
        "notes": notes,
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "postgres": pg_version, "pgbouncer": bouncer_version,
        "cells": rows,
        "spools": checks.iter().map(|(r, c)| (r.name().to_string(), c.json())).collect::<Map<_, _>>(),
        "problems": problems, "failed_runs": failures,
        "wall_secs": elapsed,
    });
    let out = target.join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("postgres.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(also written to {})", out.join("postgres.json").display());
    if !problems.is_empty() {
        bail!("problems:\n{}", problems.join("\n"));
    }
    Ok(())
}

//! `cargo xtask bench --only postgres`: pgbench against one throwaway
//! PostgreSQL 15 over three paths in the same run: direct, PgBouncer 1.18
//! (the known peer: session pooling, parses nothing) and blastgate's
//! Postgres gateway (parses, decides and records every statement).
//!
//! Each repetition runs every cell on every path in turn, so drift on this
//! shared machine hits all paths alike; medians of TPS, average latency and
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
//! Cells: {select-only (`-S`), TPC-B-like} x {1, 8 clients} x {simple,
//! prepared}, plus a result-heavy cell (1000 rows of pgbench_accounts per
//! transaction, simple protocol, 1 and 8 clients). The daemon runs with the
//! shipped Cedar policies (minus masking). With `--masking` the daemon is
//! then restarted with a policy directory whose masking.toml also masks
//! `public.pgbench_accounts.filler`, and the result-heavy cell is measured
//! again against direct.
//!
//! Everything started here is stopped on every way out (guards, by pid;
//! children also get PR_SET_PDEATHSIG), the bench pin directory is
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
const PIN_DIR: &str = "/sys/fs/bpf/blastgate-bench";
/// Role and database pgbench uses on every path.
const ROLE: &str = "bench";
/// What the agent sends as its password: blastgate holds the real one.
const AGENT_PASSWORD: &str = "the-agent-does-not-know-it";

/// A way from pgbench to the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    Direct,
    Pgbouncer,
    Blastgate,
}

impl Route {
    const ALL: [Route; 3] = [Route::Direct, Route::Pgbouncer, Route::Blastgate];

    fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Pgbouncer => "pgbouncer",
            Route::Blastgate => "blastgate",
        }
    }

    /// `direct,pgbouncer,blastgate` (any order, any subset with direct):
    /// returned in that canonical order, direct first.
    pub fn parse_list(text: &str) -> Result<Vec<Route>> {
        let mut wanted = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let Some(route) = Route::ALL.into_iter().find(|r| r.name() == word) else {
                bail!("--paths takes direct, pgbouncer and blastgate, not {word:?}");
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
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::TpcbLike => "tpcb-like",
            Workload::Rows1000 => "rows-1000",
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
}

fn cells() -> Vec<Cell> {
    let mut out = Vec::new();
    for workload in [Workload::SelectOnly, Workload::TpcbLike] {
        for clients in [1, 8] {
            for prepared in [false, true] {
                out.push(Cell {
                    workload,
                    clients,
                    prepared,
                });
            }
        }
    }
    for clients in [1, 8] {
        out.push(Cell {
            workload: Workload::Rows1000,
            clients,
            prepared: false,
        });
    }
    out
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

/// Where pgbench connects on each path, and how.
struct Endpoints {
    pg_port: u16,
    bouncer_port: u16,
    password: String,
    blastgate: PathBuf,
    config: PathBuf,
    client_cpus: String,
    scratch: PathBuf,
    rows_script: PathBuf,
}

impl Endpoints {
    /// One pgbench run of `cell` on `route` for `secs` seconds.
    fn pgbench(&self, route: Route, cell: Cell, secs: u64) -> Result<Sample> {
        check_interrupted()?;
        let (host, port, password) = match route {
            Route::Direct => ("127.0.0.2", self.pg_port, self.password.as_str()),
            Route::Pgbouncer => ("127.0.0.1", self.bouncer_port, self.password.as_str()),
            Route::Blastgate => ("127.0.0.2", self.pg_port, AGENT_PASSWORD),
        };
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]);
        if route == Route::Blastgate {
            c.arg(&self.blastgate)
                .args(["run", "--agent", "bench", "--config"])
                .arg(&self.config)
                .arg("--");
        }
        let n = cell.clients.to_string();
        c.arg(Path::new(PG_BIN).join("pgbench"))
            // No vacuum through the path under test: VACUUM and TRUNCATE
            // are not what is measured (and policy holds DDL for a human).
            // The bench vacuums directly before each run instead.
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
        std::thread::sleep(Duration::from_millis(50));
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

/// Prints one table and returns its JSON rows.
fn report(cells: &[Cell], samples: &Samples) -> Vec<Value> {
    println!(
        "  {:<12} {:>7} {:<9} {:<18} {:>10} {:>7} {:>9} {:>9}",
        "workload", "clients", "mode", "path", "TPS", "ratio", "lat ms", "conn ms"
    );
    let mut rows = Vec::new();
    for (cell, row) in cells.iter().zip(samples) {
        if row.is_empty() {
            continue;
        }
        let direct = row
            .iter()
            .find(|(p, _)| p == "direct")
            .map_or(f64::NAN, |(_, v)| summarize(v).tps);
        let mut paths = Map::new();
        for (path, v) in row {
            let s = summarize(v);
            let ratio = s.tps / direct;
            println!(
                "  {:<12} {:>7} {:<9} {:<18} {:>10.1} {:>7.2} {:>9.3} {:>9.2}",
                cell.workload.name(),
                cell.clients,
                cell.mode(),
                path,
                s.tps,
                ratio,
                s.latency_ms,
                s.connect_ms
            );
            paths.insert(
                path.clone(),
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
    rows
}

/// Files of `policies/` (not its tests), with or without masking.toml.
fn policy_dir(root: &Path, to: &Path, masking: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(root.join("policies"))? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || name == "masking.toml" {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name))?;
    }
    if let Some(extra) = masking {
        let shipped = std::fs::read_to_string(root.join("policies/masking.toml"))?;
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

fn daemon_config(dir: &Path, proxy_port: u16, pg_port: u16, policy: &Path) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
         [control]\nsocket = \"{d}/control.sock\"\n\n\
         [bpf]\npin_dir = \"{PIN_DIR}\"\n\n\
         [records]\nspool_dir = \"{d}/spool\"\n\n\
         [policy]\ndir = \"{policy}\"\n\n\
         [[targets]]\nname = \"bench-db\"\nprotocol = \"postgres\"\naddress = \"127.0.0.2:{pg_port}\"\n\n\
         [targets.postgres]\nuser = \"{ROLE}\"\npassword_file = \"{d}/bench.secret\"\ntls = \"disable\"\n",
        d = dir.display(),
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

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    if !sh::is_root() {
        bail!("the PostgreSQL benchmark runs servers as the postgres user and attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.secs == 0 {
        bail!("--reps and --secs must be at least 1");
    }
    let blastgate_on = opts.routes.contains(&Route::Blastgate);
    if opts.masking && !blastgate_on {
        bail!("--masking measures the blastgate path: include blastgate in --paths");
    }
    for need in [
        Path::new(PG_BIN).join("postgres"),
        Path::new(PG_BIN).join("pgbench"),
    ] {
        if !need.exists() {
            bail!("{} is missing: run `cargo xtask setup`", need.display());
        }
    }
    if opts.routes.contains(&Route::Pgbouncer) && !Path::new(PGBOUNCER).exists() {
        bail!("{PGBOUNCER} is missing: run `cargo xtask setup`");
    }
    let bin = root.join("target/release/blastgate");
    if blastgate_on {
        sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    }
    catch_interrupts();
    let client_cpus = cpus("BLASTGATE_BENCH_CLIENT_CPUS", "0");
    let server_cpus = cpus("BLASTGATE_BENCH_SERVER_CPUS", "1");
    let proxy_cpus = cpus("BLASTGATE_BENCH_PROXY_CPUS", "1");
    let ids = postgres_ids()?;

    // Dropped in reverse: daemon, PgBouncer, PostgreSQL, then the directory.
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
    eprintln!("bench: pgbench -i -s {}", opts.scale);
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
    let rows_script = dir.join("rows-1000.sql");
    std::fs::write(
        &rows_script,
        format!(
            "\\set a random(1, {})\nSELECT * FROM pgbench_accounts WHERE aid BETWEEN :a AND :a + 999;\n",
            u64::from(opts.scale) * 100_000 - 999
        ),
    )?;

    let mut bouncer_port = 0;
    let _bouncer = if opts.routes.contains(&Route::Pgbouncer) {
        let (guard, port) =
            start_pgbouncer(&dir.join("pgbouncer"), ids, pg.port, &password, &proxy_cpus)?;
        bouncer_port = port;
        Some(guard)
    } else {
        None
    };

    let cells = cells();
    let rows_cells: Vec<usize> = (0..cells.len())
        .filter(|&i| cells[i].workload == Workload::Rows1000)
        .collect();
    let runs = cells.len() * opts.routes.len()
        + if opts.masking {
            rows_cells.len() * 2
        } else {
            0
        };
    let deadline = (runs as u64 * opts.reps as u64 * (opts.secs + 2)) * 2 + 600;
    let proxy_port = free_port("127.0.0.1")?;
    let config = dir.join("blastgate.toml");
    std::fs::write(dir.join("bench.secret"), format!("{password}\n"))?;
    std::fs::set_permissions(
        dir.join("bench.secret"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let plain_policy = dir.join("policy");
    policy_dir(root, &plain_policy, None)?;
    std::fs::write(
        &config,
        daemon_config(&dir, proxy_port, pg.port, &plain_policy),
    )?;
    let mut daemon = if blastgate_on {
        eprintln!("bench: starting the blastgate daemon (CPU {proxy_cpus})");
        Some(Daemon::start(
            &bin,
            &config,
            &dir,
            &DaemonOpts {
                pin_dir: PIN_DIR,
                label: "plain",
                cpus: &proxy_cpus,
                deadline_secs: deadline,
                log_filter: "warn",
            },
        )?)
    } else {
        None
    };

    let ep = Endpoints {
        pg_port: pg.port,
        bouncer_port,
        password: password.clone(),
        blastgate: bin.clone(),
        config: config.clone(),
        client_cpus: client_cpus.clone(),
        scratch: dir.clone(),
        rows_script,
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

    // Warm-up: caches, pools, CPU frequency.
    let warm = Cell {
        workload: Workload::SelectOnly,
        clients: 8,
        prepared: false,
    };
    for &route in &opts.routes {
        ep.pgbench(route, warm, 2)?;
    }

    let mut samples: Samples = vec![Vec::new(); cells.len()];
    for rep in 0..opts.reps {
        for (i, &cell) in cells.iter().enumerate() {
            for &route in &opts.routes {
                vacuum()?;
                let s = ep.pgbench(route, cell, opts.secs)?;
                record(&mut samples, i, route.name(), s);
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, opts.reps);
    }

    // Masking: the daemon again, with a masking rule on every row of the
    // result-heavy cell; measured against direct in the same phase.
    let mut masked: Samples = vec![Vec::new(); cells.len()];
    if opts.masking {
        let masking_policy = dir.join("policy-masking");
        policy_dir(root, &masking_policy, Some(MASK_FILLER))?;
        sh::run(
            Command::new(&bin)
                .args(["policy", "check"])
                .arg(&masking_policy),
        )?;
        let masking_config = dir.join("blastgate-masking.toml");
        std::fs::write(
            &masking_config,
            daemon_config(&dir, proxy_port, pg.port, &masking_policy),
        )?;
        drop(daemon.take());
        eprintln!("bench: restarting the daemon with the masking rule");
        daemon = Some(Daemon::start(
            &bin,
            &masking_config,
            &dir,
            &DaemonOpts {
                pin_dir: PIN_DIR,
                label: "masking",
                cpus: &proxy_cpus,
                deadline_secs: deadline,
                log_filter: "warn",
            },
        )?);
        let masked_ep = Endpoints {
            config: masking_config,
            ..ep
        };
        let paths = [
            (Route::Direct, "direct"),
            (Route::Blastgate, "blastgate+masking"),
        ];
        for (route, _) in paths {
            masked_ep.pgbench(route, warm, 2)?;
        }
        for rep in 0..opts.reps {
            for &i in &rows_cells {
                for (route, name) in paths {
                    vacuum()?;
                    let s = masked_ep.pgbench(route, cells[i], opts.secs)?;
                    record(&mut masked, i, name, s);
                }
            }
            eprintln!("bench: masking repetition {}/{} done", rep + 1, opts.reps);
        }
    }
    drop(daemon);
    let spool_bytes = dir_bytes(&dir.join("spool"));

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
    let rows = report(&cells, &samples);
    let masking_rows = if opts.masking {
        println!("\nwith a masking rule on public.pgbench_accounts.filler (daemon restarted):");
        Some(report(&cells, &masked))
    } else {
        None
    };
    if blastgate_on {
        println!(
            "\nspool written by the daemon: {:.1} MiB",
            spool_bytes as f64 / (1 << 20) as f64
        );
    }

    let report = json!({
        "reps": opts.reps, "secs": opts.secs, "scale": opts.scale,
        "paths": opts.routes.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "postgres": pg_version, "pgbouncer": bouncer_version,
        "cells": rows, "masking": masking_rows,
        "spool_bytes": if blastgate_on { json!(spool_bytes) } else { Value::Null },
    });
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("postgres.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(also written to target/bench/postgres.json)");
    Ok(())
}

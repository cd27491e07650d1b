//! `cargo xtask clickhouse start|stop`: a real ClickHouse 26.7 on loopback
//! for the demo and the tests, from the pinned npm package
//! `@chdb/lib-linux-x64-gnu` (libchdb.so). The daemon never uses this: it
//! only knows a ClickHouse URL, so production points it at a real server.
//!
//! The library's C entry point runs a server when given `--http_port` and a
//! query that never ends; `serve` (re-executed from `start`, in its own
//! session) calls it and blocks. SIGTERM stops it cleanly; data survives.

use std::{
    ffi::CString,
    io::{Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::sh;

pub const NPM_PACKAGE: &str = "@chdb/lib-linux-x64-gnu@26.7.3-stable.1";
const INSTALL_DIR: &str = "/opt/blastgate-tools/chdb";
pub const DEFAULT_PORT: u16 = 18123;
/// The tests' own server, apart from one a developer may have running.
pub const TEST_PORT: u16 = 18124;
/// Beside, not inside, /var/lib/blastgate: that is the package's state
/// directory, which `dpkg --purge blastgate` removes.
pub const DEFAULT_DATA: &str = "/var/lib/blastgate-clickhouse";

fn library() -> PathBuf {
    Path::new(INSTALL_DIR).join("node_modules/@chdb/lib-linux-x64-gnu/libchdb.so")
}

/// Installs the pinned package if the library is missing.
pub fn install() -> Result<()> {
    if library().exists() {
        return Ok(());
    }
    std::fs::create_dir_all(INSTALL_DIR)?;
    if Command::new("npm").arg("--version").output().is_err() {
        // Only when there is no npm at all: a NodeSource node would
        // conflict with Debian's npm package.
        sh::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "nodejs", "npm"]),
        )?;
    }
    eprintln!("clickhouse: installing {NPM_PACKAGE} (about 550 MB)");
    sh::run(Command::new("npm").current_dir(INSTALL_DIR).args([
        "install",
        "--no-save",
        "--no-audit",
        "--no-fund",
        NPM_PACKAGE,
    ]))
    .context("installing ClickHouse from npm (needs node and npm: `apt-get install nodejs npm`)")
}

fn pid_file(data: &Path) -> PathBuf {
    data.join("blastgate-clickhouse.pid")
}

pub fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.take(4096).read_to_string(&mut out);
    out.starts_with("HTTP/1.") && out.contains(" 200 ") && out.ends_with("Ok.\n")
}

/// What a node of a cluster adds to a lone server: the native TCP port
/// `Distributed` tables talk to other nodes on, and a server config
/// (XML or YAML) with the cluster's `remote_servers`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Also listen on this native-protocol TCP port (127.0.0.1).
    #[arg(long)]
    pub tcp_port: Option<u16>,
    /// A ClickHouse server config file, e.g. the cluster's
    /// `<remote_servers>` (README "A ClickHouse cluster").
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Starts the server in the background; returns its URL once /ping answers.
pub fn start(port: u16, data: &Path) -> Result<String> {
    start_node(port, data, &ClusterArgs::default())
}

/// [`start`], as a node of a cluster when `cluster` says so.
pub fn start_node(port: u16, data: &Path, cluster: &ClusterArgs) -> Result<String> {
    install()?;
    let url = format!("http://127.0.0.1:{port}");
    if ping(port) {
        eprintln!("clickhouse: already answering at {url}");
        return Ok(url);
    }
    std::fs::create_dir_all(data)?;
    let log = std::fs::File::create(data.join("server.log"))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["clickhouse", "serve", "--port", &port.to_string(), "--data"])
        .arg(data);
    if let Some(tcp) = cluster.tcp_port {
        cmd.args(["--tcp-port", &tcp.to_string()]);
    }
    if let Some(config) = &cluster.config {
        cmd.arg("--config").arg(config);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid in the child before exec: the server outlives us.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("starting the ClickHouse server process")?;
    std::fs::write(pid_file(data), child.id().to_string())?;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if ping(port) {
            println!("{url}");
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = stop(data);
    bail!(
        "ClickHouse did not answer /ping on port {port} within 60 s; see {}",
        data.join("server.log").display()
    )
}

/// SIGTERM the server started from `data` and wait for it to exit.
pub fn stop(data: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file(data)) else {
        eprintln!("clickhouse: nothing started from {}", data.display());
        return Ok(());
    };
    let pid: i32 = text.trim().parse().context("bad pid file")?;
    // SAFETY: signalling the process we started (its pid is in our file).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        // SAFETY: signal 0 only checks existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_file(pid_file(data));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::fs::remove_file(pid_file(data));
    Ok(())
}

/// The server itself: load libchdb and run its never-ending query. The
/// library reads `--config-file` like clickhouse-server does, and starts
/// only the listeners the query asks for.
pub fn serve(port: u16, data: &Path, cluster: &ClusterArgs) -> Result<()> {
    let mut args = vec![
        "clickhouse".to_string(),
        format!("--path={}", data.display()),
        format!("--http_port={port}"),
        "--listen_host=127.0.0.1".to_string(),
    ];
    let mut listen = "SYSTEM START LISTEN HTTP;".to_string();
    if let Some(tcp) = cluster.tcp_port {
        args.push(format!("--tcp_port={tcp}"));
        listen += " SYSTEM START LISTEN TCP;";
    }
    if let Some(config) = &cluster.config {
        args.push(format!("--config-file={}", config.display()));
    }
    args.push(format!(
        "--query={listen} SELECT sleepEachRow(1) FROM numbers(1000000000) \
         SETTINGS max_block_size=1, max_execution_time=0 FORMAT Null"
    ));
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*mut libc::c_char> = cargs.iter().map(|c| c.as_ptr() as *mut _).collect();
    // SAFETY: loading the pinned library and calling its documented entry
    // point with a valid argv that outlives the call.
    unsafe {
        let lib = libloading::Library::new(library()).context("loading libchdb.so")?;
        let entry: libloading::Symbol<
            unsafe extern "C" fn(i32, *mut *mut libc::c_char) -> *mut libc::c_void,
        > = lib
            .get(b"query_stable_v2\0")
            .context("libchdb.so has no query_stable_v2")?;
        entry(argv.len() as i32, argv.as_mut_ptr());
    }
    Ok(())
}

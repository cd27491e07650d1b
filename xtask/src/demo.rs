//! `cargo xtask demo`: an agent-style process intercepted against real
//! local servers.
//!
//! Starts a real PostgreSQL on 127.0.0.2 and a real HTTP server on
//! 127.0.0.2, the blastgate daemon with PostgreSQL behind its gateway and the API as a `tcp` target, then runs
//! psql, curl and blastgate-probe once as ordinary processes and once as an
//! agent, and prints what blastgate recorded. Everything it starts is
//! stopped on the way out, and the daemon detaches its programs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::sh;

/// Kills and reaps a child process on drop.
pub struct Guard {
    child: Option<Child>,
}

impl Guard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<Guard> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Guard { child: Some(child) })
    }

    /// The running child's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child has exited (or was stopped).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sh::stop_child(&mut c, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not become ready within {timeout:?}")
}

/// Stops the demo's ClickHouse on the way out.
struct ClickhouseGuard(PathBuf);

impl Drop for ClickhouseGuard {
    fn drop(&mut self) {
        let _ = crate::clickhouse::stop(&self.0);
    }
}

/// Waits until `blastgate status` answers (programs attached, proxy up).
pub fn wait_for_daemon(bin: &Path, config: &Path) -> Result<()> {
    wait_for("blastgate daemon", Duration::from_secs(20), || {
        Command::new(bin)
            .args(["status", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run `cargo xtask setup`)")?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A throwaway PostgreSQL cluster owned by the `postgres` user.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
}

impl Postgres {
    fn start(dir: &Path, host: &str, port: u16) -> Result<Postgres> {
        let bin = postgres_bin()?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        sh::run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir),
        )?;
        let as_pg = |program: &Path| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        };
        sh::run(
            as_pg(&bin.join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null()),
        )?;
        let opts = format!(
            "-c listen_addresses={host} -c port={port} -k {}",
            dir.display()
        );
        sh::run(
            as_pg(&bin.join("pg_ctl"))
                .args(["-D"])
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(dir.join("postgres.log"))
                .args(["-w", "start"])
                .stdout(Stdio::null()),
        )?;
        let pg = Postgres { bin, data };
        // The application role and data the agent is after. Set up over
        // the unix socket (trust), as an administrator would.
        sh::run(
            Command::new("runuser")
                .args([
                    "-u",
                    "postgres",
                    "--",
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .arg("-h")
                .arg(dir)
                .args(["-p", &port.to_string(), "-c"])
                .arg(format!("CREATE ROLE app LOGIN PASSWORD '{DEMO_SECRET}'"))
                .args(["-c", "CREATE DATABASE orders OWNER app"]),
        )?;
        sh::run(
            Command::new("runuser")
                .args(["-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg("-h")
                .arg(dir)
                .args(["-p", &port.to_string(), "-d", "orders", "-c"])
                .arg(
                    "SET ROLE app; \
                     CREATE TABLE customers (id serial PRIMARY KEY, name text, email text, card text); \
                     INSERT INTO customers (name, email, card) VALUES \
                       ('Alice Archer', 'alice@example.com', '4111111111111111'), \
                       ('Bob Baker', 'bob@example.com', '5555555555554444'); \
                     CREATE TABLE orders (id serial PRIMARY KEY, customer_id int, total numeric); \
                     INSERT INTO orders (customer_id, total) SELECT 1 + i % 2, i * 10 FROM generate_series(1, 6) i;",
                ),
        )?;
        Ok(pg)
    }
}

/// The database password blastgate holds for the agent; the agent types
/// anything.
const DEMO_SECRET: &str = "demo-upstream-password";

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

fn free_port(ip: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Waits for `held` (spawned here) to be held, shows the queue, approves
/// it with the CLI, and prints what the agent saw.
fn approve_held(bin: &Path, config: &Path, held: &mut Command, what: &str) -> Result<()> {
    held.stdout(Stdio::piped()).stderr(Stdio::piped());
    let held = held.spawn()?;
    let mut approved = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let out = Command::new(bin)
            .args(["approvals", "list", "--json", "--config"])
            .arg(config)
            .output()?;
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if let Some(id) = list
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["id"].as_str())
        {
            show(
                Command::new(bin)
                    .args(["approvals", "list", "--config"])
                    .arg(config),
            );
            show(
                Command::new(bin)
                    .args(["approvals", "approve", id, "--reason", "demo", "--config"])
                    .arg(config),
            );
            approved = true;
            break;
        }
    }
    let out = held.wait_with_output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    print!("{}", String::from_utf8_lossy(&out.stderr));
    if !approved {
        bail!("{what} was never held for approval");
    }
    Ok(())
}

fn banner(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Runs a command, shows it and its output, returns whether it succeeded.
fn show(cmd: &mut Command) -> bool {
    println!("$ {}", sh::describe(cmd));
    match cmd.output() {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            print!("{stdout}");
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            // blastgate-probe reports the outcome in JSON and exits 0 either way.
            let refused_lines = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["ok"] == false)
                .count();
            let ok = out.status.success() && refused_lines == 0;
            println!("  -> {}", if ok { "ok" } else { "refused / failed" });
            ok
        }
        Err(e) => {
            println!("  -> could not run: {e}");
            false
        }
    }
}

pub fn run(root: &Path) -> Result<()> {
    if !sh::is_root() {
        bail!("the demo loads eBPF programs: run it as root");
    }
    sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    let bin = root.join("target/release/blastgate");
    let probe = root.join("target/release/blastgate-probe");
    let dir = std::env::temp_dir().join(format!("blastgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    banner("starting real servers on 127.0.0.2: PostgreSQL and an HTTP API");
    let pg_port = free_port("127.0.0.2")?;
    let _pg = Postgres::start(&dir.join("pg"), "127.0.0.2", pg_port)?;
    println!("PostgreSQL on 127.0.0.2:{pg_port}");
    let api_port = free_port("127.0.0.2")?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "internal API says hello\n")?;
    let _api = Guard::spawn(
        "http server",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.2",
                &api_port.to_string(),
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for("http server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.2", api_port)).is_ok()
    })?;
    println!("HTTP API on 127.0.0.2:{api_port}");
    crate::bench_ssh::deploy_user()?;
    let cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    let sshd = crate::bench_ssh::Sshd::start(&dir.join("sshd"), &cpus)?;
    let deploy_key = sshd.authorize_new_key(crate::bench_ssh::DEPLOY_USER)?;
    let upstream_known = dir.join("upstream_known_hosts");
    std::fs::write(&upstream_known, format!("{}\n", sshd.known_hosts_line()?))?;
    println!(
        "OpenSSH sshd on 127.0.0.2:{} (user {})",
        sshd.port,
        crate::bench_ssh::DEPLOY_USER
    );

    banner("starting a local ClickHouse 26.7 for the session records");
    let ch_data = dir.join("clickhouse");
    let ch_port = free_port("127.0.0.1")?;
    let ch_url = crate::clickhouse::start(ch_port, &ch_data)?;
    let _clickhouse = ClickhouseGuard(ch_data.clone());

    banner("starting the blastgate daemon");
    let proxy_port = free_port("127.0.0.1")?;
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[proxy]
listen = ["127.0.0.1:{proxy_port}", "[::1]:{proxy_port}"]

[control]
socket = "{dir}/control.sock"

[bpf]
pin_dir = "/sys/fs/bpf/blastgate-demo"

[records]
spool_dir = "{dir}/spool"

[dns]
# Agents' DNS goes to blastgate's resolver; the demo's agents resolve no
# allowed name, so nothing is forwarded anywhere.
listen = "127.0.0.1:15353"

[clickhouse]
url = "{ch_url}"
database = "blastgate_demo"

[policy]
dir = "{policies}"

[approvals]
timeout_ms = 30000

[tls]
ca_dir = "{dir}/ca"

[[targets]]
name = "orders-db"
protocol = "postgres"
address = "127.0.0.2:{pg_port}"
labels = {{ env = "production" }}

[targets.postgres]
user = "app"
password_file = "{dir}/orders-db.secret"

[[targets]]
name = "internal-api"
protocol = "http"
address = "127.0.0.2:{api_port}"

[targets.http]
inject_headers = {{ Authorization = {{ file = "{dir}/internal-api.token", prefix = "Bearer " }} }}

[[targets]]
name = "deploy-host"
protocol = "ssh"
address = "127.0.0.2:{ssh_port}"
hostnames = ["deploy.internal", "127.0.0.2"]

[targets.ssh]
user = "{deploy_user}"
key_file = "{deploy_key}"
known_hosts = "{upstream_known}"
"#,
            dir = dir.display(),
            policies = root.join("policies").display(),
            ssh_port = sshd.port,
            deploy_user = crate::bench_ssh::DEPLOY_USER,
            deploy_key = deploy_key.display(),
            upstream_known = upstream_known.display(),
        ),
    )?;
    std::fs::write(dir.join("orders-db.secret"), format!("{DEMO_SECRET}\n"))?;
    std::fs::write(dir.join("internal-api.token"), "demo-api-token\n")?;
    println!("{}", std::fs::read_to_string(&config)?);
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = Guard::spawn(
        "blastgate daemon",
        Command::new(&bin)
            .args([
                "daemon",
                "--detach-on-exit",
                "--deadline",
                "600",
                "--config",
            ])
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    if let Err(e) = wait_for_daemon(&bin, &config) {
        println!(
            "{}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        return Err(e);
    }
    show(Command::new(&bin).args(["status", "--config"]).arg(&config));

    let psql = |sql: &str, password: &str| {
        let mut c = Command::new("psql");
        c.args([
            "-X",
            "-h",
            "127.0.0.2",
            "-p",
            &pg_port.to_string(),
            "-U",
            "app",
            "-d",
            "orders",
        ])
        .args(["-v", "ON_ERROR_STOP=0", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable");
        c
    };
    let agent = |cmd: &mut Command| {
        let mut c = Command::new(&bin);
        c.args(["run", "--agent", "demo-agent", "--config"])
            .arg(&config)
            .arg("--");
        c.arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    };
    let pick = "SELECT name, email, card FROM customers ORDER BY id";

    banner("an ordinary process connects directly, with the real password (not intercepted, not recorded)");
    show(&mut psql(pick, DEMO_SECRET));

    banner("the same psql as agent `demo-agent`, any password: redirected into blastgate's PostgreSQL gateway, which logs in with the password it holds and masks what policy says");
    show(&mut agent(&mut psql(pick, "the-agent-does-not-know-it")));

    banner("the agent drops a production table: refused with SQLSTATE 42501, the session goes on");
    show(&mut agent(&mut psql("DROP TABLE customers", "x")));

    banner("the agent's UPDATE has a WHERE clause that holds for every row: blastgate runs it where it can undo it, the server counts 6 rows changed (the limit is 5), it is rolled back and held; approved, it runs for real");
    let mut held = agent(&mut psql(
        "UPDATE orders SET total = total + 1 WHERE total >= 0",
        "x",
    ));
    approve_held(&bin, &config, &mut held, "the UPDATE")?;

    banner("the agent deletes every row: held for a human; approved with `blastgate approvals approve`");
    let mut held = agent(&mut psql("DELETE FROM orders", "x"));
    approve_held(&bin, &config, &mut held, "the DELETE")?;

    banner("SSH: the agent has no key and checks host keys strictly; blastgate's SSH gateway shows a host certificate from its SSH CA (`blastgate ca ssh-known-hosts`) and logs in with the key it holds");
    let out = Command::new(&bin)
        .args(["ca", "ssh-known-hosts", "--config"])
        .arg(&config)
        .output()?;
    let agent_known = dir.join("agent_known_hosts");
    std::fs::write(&agent_known, &out.stdout)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let ssh_port = sshd.port.to_string();
    let ssh_opts = |c: &mut Command| {
        c.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", agent_known.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityFile=none"]);
    };
    let dest = format!("{}@127.0.0.2", crate::bench_ssh::DEPLOY_USER);
    let ssh = |command: &str| {
        let mut c = Command::new("ssh");
        ssh_opts(&mut c);
        c.args(["-p", &ssh_port, &dest, command]);
        c
    };
    let upload = dir.join("release-notes.txt");
    std::fs::write(&upload, "release 1.2.3: deployed by demo-agent\n")?;
    let mut scp = Command::new("scp");
    ssh_opts(&mut scp);
    scp.args(["-P", &ssh_port])
        .arg(&upload)
        .arg(format!("{dest}:demo-release-notes.txt"));
    show(&mut agent(&mut scp));

    banner("SSH: a recursive delete is refused (exit 126, the reason on stderr)");
    show(&mut agent(&mut ssh("rm -rf /srv/app")));

    banner("SSH: a command not on the allow-list is held; approved, it runs");
    let mut held = agent(&mut ssh(
        "cat demo-release-notes.txt; rm demo-release-notes.txt",
    ));
    approve_held(&bin, &config, &mut held, "the ssh command")?;

    banner("HTTP: the agent's request goes through the HTTP gateway, which decides it, swaps in the token blastgate holds and records it");
    show(&mut agent(
        Command::new("curl").args(["-sS", &format!("http://127.0.0.2:{api_port}/")]),
    ));

    banner("the agent tries a destination no target covers: refused (default deny)");
    show(&mut agent(Command::new("curl").args([
        "-sS",
        "--max-time",
        "5",
        &format!("http://127.0.0.3:{api_port}/"),
    ])));

    banner("the agent tries to route around the proxy: UDP and raw sockets are refused (EPERM)");
    show(&mut agent(
        Command::new(&probe).args(["udp", "127.0.0.1:9"]),
    ));
    show(&mut agent(Command::new(&probe).arg("raw")));

    banner("children and grandchildren of an agent are agents too");
    show(&mut agent(
        Command::new(&probe).args(["tree", &format!("127.0.0.2:{api_port}")]),
    ));

    banner("what blastgate recorded (blastgate events)");
    std::thread::sleep(Duration::from_millis(300));
    show(
        Command::new(&bin)
            .args(["events", "--last", "30", "--config"])
            .arg(&config),
    );

    banner("the same sessions in ClickHouse (blastgate sessions list)");
    std::thread::sleep(Duration::from_millis(1500));
    show(
        Command::new(&bin)
            .args(["sessions", "list", "--agent", "demo-agent", "--config"])
            .arg(&config),
    );
    banner("every statement, its verdict and policy, in ClickHouse (the who_ran_what_where view)");
    show(Command::new("curl").args([
        "-sS",
        "--data-binary",
        "SELECT agent, target, action, verdict, policy_id, text FROM blastgate_demo.who_ran_what_where \
         WHERE kind IN ('statement', 'command', 'request') ORDER BY ts FORMAT PrettyCompactMonoBlock",
        &ch_url,
    ]));

    banner(
        "stopping: the daemon detaches (--detach-on-exit); without it agents would stay refused",
    );
    daemon.stop();
    let leftover = Path::new("/sys/fs/bpf/blastgate-demo").exists();
    println!(
        "pinned state left behind: {}",
        if leftover { "YES (bug)" } else { "none" }
    );
    println!("spool kept at {}/spool", dir.display());
    if leftover {
        bail!("the demo daemon left pinned state behind");
    }
    Ok(())
}

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
    shown(cmd).is_some_and(|(ok, _)| ok)
}

/// [`show`], also handing back what the command printed (stdout, then
/// stderr) for the demo's checks.
fn shown(cmd: &mut Command) -> Option<(bool, String)> {
    println!("$ {}", sh::describe(cmd));
    match cmd.output() {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            print!("{stdout}");
            eprint!("{stderr}");
            // blastgate-probe reports the outcome in JSON and exits 0 either way.
            let refused_lines = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["ok"] == false)
                .count();
            let ok = out.status.success() && refused_lines == 0;
            println!("  -> {}", if ok { "ok" } else { "refused / failed" });
            Some((ok, format!("{stdout}{stderr}")))
        }
        Err(e) => {
            println!("  -> could not run: {e}");
            None
        }
    }
}

/// What the demo expects blastgate to have done; any miss fails the demo
/// (so `vagrant/provision.sh` and CI see a demo that no longer shows what
/// README says it shows).
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn expect(&mut self, ok: bool, what: &str) {
        if ok {
            println!("  \u{2713} {what}");
        } else {
            println!("  \u{2717} NOT {what}");
            self.0.push(what.to_string());
        }
    }

    fn verdict(self) -> Result<()> {
        if self.0.is_empty() {
            println!("\ndemo passed: every check held");
            return Ok(());
        }
        bail!("demo failed: {}", self.0.join("; "))
    }
}

/// How the demo reaches a daemon.
pub enum Mode {
    /// Its own daemon on its own config and pin dir, detached on exit.
    Own,
    /// The daemon installed from the package (`vagrant/provision.sh`): its
    /// config gets the demo's targets for the demo's duration, and agents
    /// are the processes of a runner account enrolled by uid.
    Installed {
        /// The enrolled runner account the agent commands run as.
        runner: String,
        /// A shell command that restarts the installed daemon
        /// (`systemctl restart blastgate`).
        restart: String,
    },
}

/// Where the installed package keeps its config and held secrets.
const INSTALLED_CONFIG: &str = "/etc/blastgate/blastgate.toml";
const INSTALLED_SECRETS: &str = "/etc/blastgate/secrets";
const BLOCK_BEGIN: &str = "# BEGIN blastgate demo: removed when the demo ends";
const BLOCK_END: &str = "# END blastgate demo";

/// Puts the installed config back as it was, and the daemon on it, however
/// the demo ends.
struct InstalledConfig {
    original: String,
    secrets: Vec<PathBuf>,
    restart: String,
}

impl InstalledConfig {
    fn add(block: &str, secrets: Vec<(PathBuf, String)>, restart: &str) -> Result<Self> {
        let original = std::fs::read_to_string(INSTALLED_CONFIG)
            .with_context(|| format!("reading {INSTALLED_CONFIG} (is the package installed?)"))?;
        if original.contains(BLOCK_BEGIN) {
            bail!("{INSTALLED_CONFIG} still has a demo block from an earlier run: remove it");
        }
        let guard = InstalledConfig {
            original: original.clone(),
            secrets: secrets.iter().map(|(p, _)| p.clone()).collect(),
            restart: restart.to_string(),
        };
        for (path, text) in &secrets {
            std::fs::write(path, text)?;
            sh::run(Command::new("chmod").arg("600").arg(path))?;
        }
        let mut text = original;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("\n{BLOCK_BEGIN}\n{block}{BLOCK_END}\n"));
        std::fs::write(INSTALLED_CONFIG, text)?;
        Ok(guard)
    }

    fn restart(&self) -> Result<()> {
        sh::run(Command::new("sh").args(["-c", &self.restart]))
    }
}

impl Drop for InstalledConfig {
    fn drop(&mut self) {
        let _ = std::fs::write(INSTALLED_CONFIG, &self.original);
        for p in &self.secrets {
            let _ = std::fs::remove_file(p);
        }
        // The known_hosts block follows the config's ssh targets.
        let _ = Command::new("blastgate")
            .arg("install")
            .stdout(Stdio::null())
            .status();
        if self.restart().is_err() {
            eprintln!("demo: restarting the installed daemon failed; restart it by hand");
        }
    }
}

pub fn run(root: &Path, mode: &Mode) -> Result<()> {
    if !sh::is_root() {
        bail!("the demo loads eBPF programs: run it as root");
    }
    let (bin, probe) = match mode {
        Mode::Own => {
            sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
            (
                root.join("target/release/blastgate"),
                Some(root.join("target/release/blastgate-probe")),
            )
        }
        // The package ships no probe: its banners are left out.
        Mode::Installed { .. } => (PathBuf::from("/usr/bin/blastgate"), None),
    };
    let dir = std::env::temp_dir().join(format!("blastgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The runner account reads the file it uploads from here.
    sh::run(Command::new("chmod").arg("755").arg(&dir))?;
    let mut checks = Checks::default();

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

    let secrets_dir = match mode {
        Mode::Own => dir.clone(),
        Mode::Installed { .. } => PathBuf::from(INSTALLED_SECRETS),
    };
    let db_secret = secrets_dir.join("demo-orders-db.secret");
    let api_token = secrets_dir.join("demo-internal-api.token");
    // What the demo adds to any config: where records go and its targets.
    let demo_sections = format!(
        r#"[clickhouse]
url = "{ch_url}"
database = "blastgate_demo"

[[targets]]
name = "orders-db"
protocol = "postgres"
address = "127.0.0.2:{pg_port}"
labels = {{ env = "production" }}

[targets.postgres]
user = "app"
password_file = "{db_secret}"

[[targets]]
name = "internal-api"
protocol = "http"
address = "127.0.0.2:{api_port}"

[targets.http]
inject_headers = {{ Authorization = {{ file = "{api_token}", prefix = "Bearer " }} }}

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
        db_secret = db_secret.display(),
        api_token = api_token.display(),
        ssh_port = sshd.port,
        deploy_user = crate::bench_ssh::DEPLOY_USER,
        deploy_key = deploy_key.display(),
        upstream_known = upstream_known.display(),
    );
    let secrets = vec![
        (db_secret.clone(), format!("{DEMO_SECRET}\n")),
        (api_token.clone(), "demo-api-token\n".to_string()),
    ];

    let mut own_daemon = None;
    let mut installed = None;
    let (config, agent_name) = match mode {
        Mode::Own => {
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

[policy]
dir = "{policies}"

[approvals]
timeout_ms = 30000

[tls]
ca_dir = "{dir}/ca"

{demo_sections}"#,
                    dir = dir.display(),
                    policies = root.join("policies").display(),
                ),
            )?;
            for (path, text) in &secrets {
                std::fs::write(path, text)?;
            }
            println!("{}", std::fs::read_to_string(&config)?);
            let log = std::fs::File::create(dir.join("daemon.log"))?;
            own_daemon = Some(Guard::spawn(
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
            )?);
            if let Err(e) = wait_for_daemon(&bin, &config) {
                println!(
                    "{}",
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
                return Err(e);
            }
            (config, "demo-agent".to_string())
        }
        Mode::Installed { runner, restart } => {
            banner("the installed daemon gets the demo's targets for the demo's duration, and is restarted");
            let config = PathBuf::from(INSTALLED_CONFIG);
            let guard = InstalledConfig::add(&demo_sections, secrets, restart)?;
            let check = shown(Command::new(&bin).arg("check-config").arg(&config));
            if !check.is_some_and(|(ok, _)| ok) {
                bail!("{INSTALLED_CONFIG} with the demo's targets does not load");
            }
            // The known_hosts block now names the demo's ssh target too.
            show(Command::new(&bin).arg("install"));
            guard.restart()?;
            installed = Some(guard);
            wait_for_daemon(&bin, &config)?;
            (config, runner.clone())
        }
    };
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
        let mut c = match mode {
            Mode::Own => {
                let mut c = Command::new(&bin);
                c.args(["run", "--agent", "demo-agent", "--config"])
                    .arg(&config)
                    .arg("--");
                c
            }
            // Not labelled by anything: the runner's uid makes it an agent.
            Mode::Installed { runner, .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", runner, "--"]);
                c
            }
        };
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
    let direct = shown(&mut psql(pick, DEMO_SECRET))
        .map(|(_, out)| out)
        .unwrap_or_default();
    checks.expect(
        direct.contains("alice@example.com"),
        "the direct psql sees the real emails",
    );

    banner(&format!("the same psql as agent `{agent_name}`, any password: redirected into blastgate's PostgreSQL gateway, which logs in with the password it holds and masks what policy says"));
    let masked = shown(&mut agent(&mut psql(pick, "the-agent-does-not-know-it")));
    checks.expect(
        masked.as_ref().is_some_and(|(ok, out)| {
            *ok && out.contains("Alice Archer") && !out.contains("alice@example.com")
        }),
        "the agent's psql logs in without the password and sees emails masked",
    );

    banner("the agent drops a production table: refused with SQLSTATE 42501, the session goes on");
    let dropped = shown(&mut agent(&mut psql("DROP TABLE customers", "x")));
    checks.expect(
        dropped.is_some_and(|(_, out)| out.contains("denied by policy")),
        "DROP TABLE is refused by policy",
    );

    banner("the agent's UPDATE has a WHERE clause that holds for every row: blastgate runs it where it can undo it, the server counts 6 rows changed (the limit is 5), it is rolled back and held; approved, it runs for real");
    let mut held = agent(&mut psql(
        "UPDATE orders SET total = total + 1 WHERE total >= 0",
        "x",
    ));
    approve_held(&bin, &config, &mut held, "the UPDATE")?;

    banner("the agent deletes every row: held for a human; approved with `blastgate approvals approve`");
    let mut held = agent(&mut psql("DELETE FROM orders", "x"));
    approve_held(&bin, &config, &mut held, "the DELETE")?;

    let known_hosts = match mode {
        Mode::Own => {
            banner("SSH: the agent has no key and checks host keys strictly; blastgate's SSH gateway shows a host certificate from its SSH CA (`blastgate ca ssh-known-hosts`) and logs in with the key it holds");
            let out = Command::new(&bin)
                .args(["ca", "ssh-known-hosts", "--config"])
                .arg(&config)
                .output()?;
            let agent_known = dir.join("agent_known_hosts");
            std::fs::write(&agent_known, &out.stdout)?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
            (agent_known, PathBuf::from("/dev/null"))
        }
        Mode::Installed { .. } => {
            banner("SSH: the agent has no key and checks host keys strictly against the host's /etc/ssh/ssh_known_hosts, where `blastgate install` wrote the SSH CA's @cert-authority line; the gateway logs in with the key it holds");
            (
                PathBuf::from("/dev/null"),
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
            )
        }
    };
    let ssh_port = sshd.port.to_string();
    let ssh_opts = |c: &mut Command| {
        c.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.0.display()))
            .arg("-o")
            .arg(format!("GlobalKnownHostsFile={}", known_hosts.1.display()))
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
    std::fs::write(&upload, "release 1.2.3: deployed by the agent\n")?;
    sh::run(Command::new("chmod").arg("644").arg(&upload))?;
    let mut scp = Command::new("scp");
    ssh_opts(&mut scp);
    scp.args(["-P", &ssh_port])
        .arg(&upload)
        .arg(format!("{dest}:demo-release-notes.txt"));
    checks.expect(
        show(&mut agent(&mut scp)),
        "scp through the SSH gateway with the key blastgate holds",
    );

    banner("SSH: a recursive delete is refused (exit 126, the reason on stderr)");
    let refused = agent(&mut ssh("rm -rf /srv/app")).output()?;
    print!("{}", String::from_utf8_lossy(&refused.stderr));
    checks.expect(
        refused.status.code() == Some(126),
        "ssh rm -rf is refused with exit 126",
    );

    banner("SSH: a command not on the allow-list is held; approved, it runs");
    let mut held = agent(&mut ssh(
        "cat demo-release-notes.txt; rm demo-release-notes.txt",
    ));
    approve_held(&bin, &config, &mut held, "the ssh command")?;

    banner("HTTP: the agent's request goes through the HTTP gateway, which decides it, swaps in the token blastgate holds and records it");
    checks.expect(
        show(&mut agent(
            Command::new("curl").args(["-sS", &format!("http://127.0.0.2:{api_port}/")]),
        )),
        "curl reaches the API through the HTTP gateway",
    );

    banner("the agent tries a destination no target covers: refused (default deny)");
    checks.expect(
        !show(&mut agent(Command::new("curl").args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.3:{api_port}/"),
        ]))),
        "a destination no target covers is refused",
    );

    if let Some(probe) = &probe {
        banner(
            "the agent tries to route around the proxy: UDP and raw sockets are refused (EPERM)",
        );
        show(&mut agent(Command::new(probe).args(["udp", "127.0.0.1:9"])));
        show(&mut agent(Command::new(probe).arg("raw")));

        banner("children and grandchildren of an agent are agents too");
        show(&mut agent(
            Command::new(probe).args(["tree", &format!("127.0.0.2:{api_port}")]),
        ));
    }

    banner("what blastgate recorded (blastgate events)");
    let recorded = wait_for(
        "the DROP's record in the spool",
        Duration::from_secs(10),
        || {
            Command::new(&bin)
                .args(["events", "--json", "--last", "500", "--config"])
                .arg(&config)
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| l.contains("DROP TABLE customers") && l.contains("\"deny\""))
                })
        },
    );
    checks.expect(recorded.is_ok(), "the refused DROP is in the spool");
    show(
        Command::new(&bin)
            .args(["events", "--last", "30", "--config"])
            .arg(&config),
    );

    banner("the same sessions in ClickHouse (blastgate sessions list)");
    let shipped = wait_for(
        "the sessions in ClickHouse",
        Duration::from_secs(30),
        || {
            Command::new(&bin)
                .args([
                    "sessions",
                    "list",
                    "--json",
                    "--agent",
                    &agent_name,
                    "--config",
                ])
                .arg(&config)
                .output()
                .is_ok_and(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("orders-db")
                })
        },
    );
    checks.expect(shipped.is_ok(), "the agent's sessions are in ClickHouse");
    show(
        Command::new(&bin)
            .args(["sessions", "list", "--agent", &agent_name, "--config"])
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

    if let Some(mut daemon) = own_daemon {
        banner(
            "stopping: the daemon detaches (--detach-on-exit); without it agents would stay refused",
        );
        daemon.stop();
        let leftover = Path::new("/sys/fs/bpf/blastgate-demo").exists();
        println!(
            "pinned state left behind: {}",
            if leftover { "YES (bug)" } else { "none" }
        );
        checks.expect(!leftover, "the demo daemon leaves no pinned state");
    }
    if let Some(guard) = installed {
        banner("the installed daemon goes back to its own config and keeps guarding the runner");
        drop(guard);
        checks.expect(
            wait_for_daemon(&bin, &config).is_ok(),
            "the installed daemon runs again on its own config",
        );
    }
    if matches!(mode, Mode::Own) {
        println!("spool kept at {}/spool", dir.display());
    }
    checks.verdict()
}

//! A real PostgreSQL 15 for the end-to-end tests: a throwaway cluster of
//! the test's own, on one loopback address and a free port, with password
//! authentication (SCRAM-SHA-256, and md5 for the roles that ask for it).
//!
//! initdb and psql run as the `postgres` OS user (initdb refuses root). The
//! server itself is a child of the test process, also as `postgres`, with
//! PR_SET_PDEATHSIG: a test binary killed outright takes its server with
//! it. [`TestPostgres`] stops the server and removes its directory on drop,
//! also when the test panicked.

use std::{
    ffi::CString,
    fs::File,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use super::wait_until;

/// Debian's PostgreSQL 15 server binaries (`cargo xtask setup` installs them).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The Python that `cargo xtask setup` gives psycopg 3.
pub const TOOLS_PYTHON: &str = "/opt/blastgate-tools/venv/bin/python";

/// Marks the generic scram line of pg_hba.conf; per-role lines go above it.
const HBA_GENERIC: &str = "host all all 127.0.0.0/8 scram-sha-256";

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// A running PostgreSQL 15 cluster; stopped and deleted on drop.
pub struct TestPostgres {
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ip: String,
    /// Every address it listens on (`ip` first), one port.
    listen: Vec<String>,
    port: u16,
    uid: u32,
    gid: u32,
    child: Option<Child>,
}

impl TestPostgres {
    /// Whether PostgreSQL 15 and root (for `runuser`) are here; skips
    /// loudly otherwise (fatal with CI=true).
    #[track_caller]
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            blastgate::testing::skip(
                "the PostgreSQL tests run initdb as the postgres user: need root",
            );
            return false;
        }
        if !Path::new(PG_BIN).join("initdb").exists() || postgres_ids().is_none() {
            blastgate::testing::skip(&format!(
                "PostgreSQL 15 is not installed ({PG_BIN}, user postgres): run `cargo xtask setup`"
            ));
            return false;
        }
        true
    }

    /// initdb and start a cluster listening only on `ip` (e.g. "127.0.0.2")
    /// and a free port, with its unix socket inside its own directory.
    /// Panics (with the server log) if it does not answer within 30 s.
    pub fn start(ip: &str) -> TestPostgres {
        TestPostgres::start_on(&[ip])
    }

    /// [`TestPostgres::start`] listening on every address of `ips` (one
    /// port): a server a name can move between.
    pub fn start_on(ips: &[&str]) -> TestPostgres {
        let ip = ips[0];
        let (uid, gid) = postgres_ids().expect("no `postgres` OS user (run `cargo xtask setup`)");
        let dir = PathBuf::from(format!(
            "/tmp/blastgate-pg-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::SeqCst)
        ));
        remove_stale_dirs();
        // A leftover of an earlier run whose pid this process now has.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown to postgres");
        // From here on, a panic drops `pg`, which removes the directory.
        let mut pg = TestPostgres {
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            dir,
            ip: ip.to_string(),
            listen: ips.iter().map(|s| s.to_string()).collect(),
            port: 0,
            uid,
            gid,
            child: None,
        };
        pg.initdb();
        // The port is free when picked but may be taken before the server
        // binds it: try a few.
        for attempt in 1..=5 {
            pg.port = super::free_port_on(ips);
            match pg.launch() {
                Ok(()) => return pg,
                Err(why) if attempt < 5 && why.contains("could not bind") => continue,
                Err(why) => panic!(
                    "PostgreSQL on {ip}:{} did not start: {why}\n{}",
                    pg.port,
                    pg.log_tail()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn initdb(&self) {
        let out = self
            .as_postgres(&Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Unix socket (the set-up connection, as the postgres OS user) is
        // trusted: the directory is 0700. TCP always needs a password.
        let hba = format!(
            "# blastgate e2e test cluster\n\
             local all all trust\n\
             {HBA_GENERIC}\n"
        );
        self.write_as_postgres(&self.data.join("pg_hba.conf"), &hba);
        let conf = format!(
            "\n# blastgate e2e test cluster\n\
             listen_addresses = '{ip}'\n\
             unix_socket_directories = '{sock}'\n\
             ssl = off\n\
             max_connections = 1000\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            ip = self.listen.join(","),
            sock = self.dir.display(),
        );
        let path = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read postgresql.conf");
        text.push_str(&conf);
        self.write_as_postgres(&path, &text);
    }

    /// Starts the server on `self.port`; `Err` with the reason if it exits
    /// or does not answer within 30 s.
    fn launch(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open postgres log");
        let _ = std::os::unix::fs::chown(&self.log, Some(self.uid), Some(self.gid));
        let mut cmd = Command::new(Path::new(PG_BIN).join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-c", &format!("port={}", self.port)])
            .current_dir(&self.dir)
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl in the child before exec (after the uid change, which
        // would clear it); async-signal-safe. SIGQUIT is PostgreSQL's
        // immediate shutdown.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        let isready = Path::new(PG_BIN).join("pg_isready");
        let port = self.port.to_string();
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(30), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    exited = Some(status);
                    return Some(false);
                }
            }
            Command::new(&isready)
                .args(["-q", "-t", "1", "-h", &self.ip, "-p", &port])
                .status()
                .is_ok_and(|s| s.success())
                .then_some(true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => {
                self.child = None;
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let last = log.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
                Err(format!("postgres exited ({status}): {last}"))
            }
            _ => {
                self.stop();
                Err("pg_isready did not answer within 30 s".into())
            }
        }
    }

    /// `ip:port` the server listens on (TCP, password authentication).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.parse().expect("ip"), self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (trusted; the set-up connection).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Runs SQL as the superuser through psql over the unix socket, as the
    /// postgres OS user; panics with psql's stderr on failure; returns
    /// stdout (unaligned, tuples only), trimmed.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self
            .as_postgres(&Path::new(PG_BIN).join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -d {db} failed ({}) on:\n{sql}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A login role with a password: a SCRAM-SHA-256 verifier, or (`scram`
    /// false) an md5 hash, with a `host all NAME 127.0.0.0/8 md5` line
    /// above the generic scram line of pg_hba.conf (then a reload).
    pub fn create_role(&self, name: &str, password: &str, scram: bool) {
        let encryption = if scram { "scram-sha-256" } else { "md5" };
        self.sql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; CREATE ROLE {} LOGIN PASSWORD {}",
                ident(name),
                literal(password)
            ),
        );
        if scram {
            return;
        }
        let path = self.data.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&path).expect("read pg_hba.conf");
        // pg_hba.conf takes a bare name, or a quoted one (kept verbatim).
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let user = if plain { name.to_string() } else { ident(name) };
        let line = format!("host all {user} 127.0.0.0/8 md5\n");
        let generic = hba
            .find(&format!("{HBA_GENERIC}\n"))
            .expect("the generic scram line of pg_hba.conf");
        let mut text = hba;
        text.insert_str(generic, &line);
        self.write_as_postgres(&path, &text);
        self.reload();
    }

    /// Re-reads pg_hba.conf and postgresql.conf; returns once the server
    /// has (the reload itself is asynchronous).
    pub fn reload(&self) {
        const RELOADED: &str = "received SIGHUP, reloading configuration files";
        let count = || {
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .matches(RELOADED)
                .count()
        };
        let before = count();
        self.sql("postgres", "SELECT pg_reload_conf()");
        wait_until(Duration::from_secs(10), || (count() > before).then_some(()))
            .unwrap_or_else(|| panic!("PostgreSQL did not reload:\n{}", self.log_tail()));
        // The postmaster logs before it re-reads the files; new
        // connections are forked after it has.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Creates database `name` owned by `owner`.
    pub fn create_db(&self, name: &str, owner: &str) {
        self.sql(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {}", ident(name), ident(owner)),
        );
    }

    /// The masking tests' fixture in `db`, owned by `owner`:
    /// `public.customers` (3 rows with valid-looking emails and
    /// Luhn-valid card numbers) and `public.orders` (10 rows).
    pub fn load_fixture(&self, db: &str, owner: &str) {
        let owner = ident(owner);
        self.sql(
            db,
            &format!(
                "CREATE TABLE public.customers (
                     id serial PRIMARY KEY, name text, email text, card text, note text);
                 INSERT INTO public.customers (name, email, card, note) VALUES
                     ('Alice Archer', 'alice@example.com', '4111111111111111', 'prefers email'),
                     ('Bob Baker', 'bob@example.com', '5555555555554444', 'call after 5pm'),
                     ('Carol Chen', 'carol@example.org', '378282246310005', 'vip');
                 CREATE TABLE public.orders (
                     id serial PRIMARY KEY, customer_id int, total numeric, status text);
                 INSERT INTO public.orders (customer_id, total, status)
                     SELECT 1 + (i % 3), round(i * 12.5, 2),
                            (ARRAY['new', 'paid', 'shipped'])[1 + (i % 3)]
                     FROM generate_series(1, 10) AS i;
                 ALTER TABLE public.customers OWNER TO {owner};
                 ALTER TABLE public.orders OWNER TO {owner};
                 GRANT ALL ON public.customers, public.orders TO {owner};
                 GRANT ALL ON SEQUENCE public.customers_id_seq, public.orders_id_seq TO {owner};"
            ),
        );
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log's path and its last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- {} (last lines) ---\n{tail}", self.log.display())
    }

    /// `pg_ctl stop -m immediate`, then SIGKILL by pid if it is still there.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            let _ = self
                .as_postgres(&Path::new(PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "10", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if wait_until(Duration::from_secs(5), || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn as_postgres(&self, program: &Path) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        // Only the flags we pass decide where psql connects and as whom.
        for var in [
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICE",
            "PGSSLMODE",
            "PGOPTIONS",
        ] {
            c.env_remove(var);
        }
        c.current_dir(&self.dir);
        c
    }

    fn write_as_postgres(&self, path: &Path, text: &str) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

/// The venv Python with psycopg 3 (`cargo xtask setup` installs it), or
/// `None` after a loud skip (fatal with CI=true).
#[track_caller]
pub fn python_with_psycopg() -> Option<PathBuf> {
    let python = PathBuf::from(TOOLS_PYTHON);
    let works = python.exists()
        && Command::new(&python)
            .args(["-c", "import psycopg"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if works {
        Some(python)
    } else {
        blastgate::testing::skip(&format!(
            "{TOOLS_PYTHON} cannot import psycopg: run `cargo xtask setup`"
        ));
        None
    }
}

/// Directories of test binaries that were killed outright (their servers
/// died with them, by PR_SET_PDEATHSIG, but the files stayed).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("blastgate-pg-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The `postgres` OS user's uid and gid.
fn postgres_ids() -> Option<(u32, u32)> {
    let name = CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; the
    // fields are copied out at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

//! The Debian package on this host for real (README "Installing on a CI
//! runner host").
//!
//! cargo-deb packages the binary this test run built (the dev profile: a
//! release build would add many minutes to CI and test nothing more;
//! `cargo xtask deb` builds release), dpkg installs it, systemd-analyze
//! accepts the unit. The daemon is started exactly as the installed unit
//! says (harness/unit.rs: ExecStart, user, capability bounding set, no new
//! privileges, file-system sandbox; systemd is not PID 1 here) and
//! intercepts an enrolled runner's psql through the PostgreSQL gateway and
//! a script agent run from a developer's private home; a trace of that run
//! is checked against the unit's seccomp-style directives. Without any one
//! of its capabilities it fails to start or to intercept. An upgrade, with
//! the daemon restarted as the maintainer scripts would, lets no agent
//! connection through and keeps the very same pinned links until the new
//! daemon replaces them; purge leaves no pins, attachments or files.
//!
//! It uses the default paths: it refuses to run on a host that has a
//! blastgate package or daemon, and purges the package on the way out
//! whatever happened.

mod harness;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use blastgate::{
    commands::install::SSH_KNOWN_HOSTS,
    tls::trust::{HOST_ANCHOR, SYSTEM_ROOTS},
};
use harness::{
    attached::{self, LinkIds},
    postgres::TestPostgres,
    unit::{audit_trace, Launch, Unit, UnitDaemon},
    users::TestUser,
    *,
};
use serde_json::Value;

const PACKAGE: &str = "blastgate";
const UNIT: &str = "/usr/lib/systemd/system/blastgate.service";
const CONFIG: &str = "/etc/blastgate/blastgate.toml";
const POLICIES: &str = "/etc/blastgate/policies";
const SECRETS: &str = "/etc/blastgate/secrets";
const CA_CERT: &str = "/var/lib/blastgate/ca/ca.pem";
const PIN_DIR: &str = "/sys/fs/bpf/blastgate";
const CONTROL: &str = "/run/blastgate/control.sock";
const SPOOL: &str = "/var/lib/blastgate/spool";
const INSTALLED: &str = "/usr/bin/blastgate";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/blastgate.service";
/// The binary Debian's psql wrapper execs: the caller's executable.
const PSQL_EXE: &str = "/usr/lib/postgresql/15/bin/psql";
/// Enrolled by uid with `blastgate install --enrol-user`.
const RUNNER: &str = "bg-pkg-runner";
/// Runs a script agent from its private home.
const DEVELOPER: &str = "bg-pkg-dev";
const SCRIPT_AGENT: &str = "scripted";
/// What agents type as the database password; blastgate holds the real one.
const AGENT_PASSWORD: &str = "whatever-the-agent-says";
const DB_SECRET: &str = "pkg-upstream-Secret-41d2";

/// What the package (and its daemon, and `blastgate install`) put on the
/// host; none may be left after purge.
const PURGED: &[&str] = &[
    "/etc/blastgate",
    "/var/lib/blastgate",
    "/run/blastgate",
    PIN_DIR,
    UNIT,
    INSTALLED,
    "/usr/share/doc/blastgate",
    HOST_ANCHOR,
    ENABLED,
    "/etc/systemd/system/blastgate.service",
];
/// Where deb-systemd-helper keeps enablement and mask state.
const HELPER_STATE: &[&str] = &[
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
];

#[test]
fn the_package_runs_a_hardened_daemon_upgrades_without_a_window_and_purges_clean() {
    let _g = serial();
    let Some(debs) = Debs::prepare("blastgate-pkg") else {
        return;
    };
    let known_hosts_before = debs.known_hosts_before.clone();
    let v1 = debs.build("pkgtest1");
    let v2 = debs.build("pkgtest2");

    // Install: the postinst set the host up.
    let package = Package::install(&v1);
    let out = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}",
        text(&out)
    );
    assert!(Path::new(ENABLED).is_symlink(), "the unit was not enabled");
    let ca_pem = std::fs::read_to_string(CA_CERT).expect("the CA install made");
    assert!(std::fs::read_to_string(SYSTEM_ROOTS)
        .expect("system roots")
        .contains(ca_pem.trim()));
    for args in [
        &["check-config", CONFIG][..],
        &["policy", "check", POLICIES],
        &["policy", "test", POLICIES],
    ] {
        let out = installed(args);
        assert!(out.status.success(), "blastgate {args:?}: {}", text(&out));
    }
    let unit = Unit::load(Path::new(UNIT));
    unit.assert_every_directive_is_covered();
    assert_eq!(
        unit.exec_start(),
        [INSTALLED, "daemon", "--config", CONFIG],
        "the unit runs the installed binary on the installed config"
    );
    let scene = Scene::new();
    scene.configure();
    let known_hosts = std::fs::read_to_string(SSH_KNOWN_HOSTS).unwrap_or_default();
    assert!(known_hosts.contains("BEGIN blastgate"), "{known_hosts}");

    let mut seen = BTreeSet::new();
    let daemons = Daemons {
        unit: &unit,
        dir: debs.work.path(),
    };

    // As the unit runs it, traced: it intercepts, and every system call,
    // address family and mapping it made is one the unit allows.
    let trace = debs.work.path().join("daemon.strace");
    let mut daemon = daemons.start(
        &Launch {
            trace: Some(&trace),
            ..Launch::default()
        },
        &mut seen,
    );
    let root = attached::cgroup_root_programs();
    assert!(
        seen.iter().any(|l| root["connect4"].contains(&l.prog)),
        "no pinned program is attached to connect4 at the cgroup root: {root:?} {seen:?}"
    );
    if let Err(why) = scene.intercepted() {
        panic!("{why}\ndaemon log:\n{}", daemon.log_text());
    }
    daemon.stop();
    let violations = audit_trace(&unit, &trace);
    assert!(
        violations.is_empty(),
        "the daemon did what its unit forbids:\n{}",
        violations.join("\n")
    );

    // Every capability is needed: without it, no start or no interception.
    for cap in unit.capabilities() {
        let launch = Launch {
            drop: Some(cap.as_str()),
            ..Launch::default()
        };
        let verdict = match daemons.try_start(&launch, &mut seen) {
            Err(log) => format!(
                "without {cap} the daemon does not start: {}",
                last_error(&log)
            ),
            Ok(mut d) => {
                let r = scene.intercepted();
                // An agent left unenrolled because the daemon cannot look
                // at its script is an alarm an admin sees, not a log line.
                if cap == "CAP_DAC_READ_SEARCH" {
                    let status = text(&installed(&["status", "--config", CONFIG]));
                    assert!(
                        status.contains("ALARM: enrolled script") && status.contains("agent.py"),
                        "without {cap}, status does not say the script agent is unenrolled:\n\
                         {status}"
                    );
                }
                d.stop();
                match r {
                    Ok(()) => panic!(
                        "without {cap} the daemon starts and intercepts everything this test \
                         drives: it is not needed (take it out of CapabilityBoundingSet), another \
                         capability in the set grants as much (CAP_SYS_ADMIN does for CAP_BPF and \
                         CAP_PERFMON), or the test does not drive what needs it"
                    ),
                    Err(why) => format!("without {cap} the daemon starts, but {why}"),
                }
            }
        };
        eprintln!("{verdict}");
    }

    let daemon = upgrade_without_a_window(&daemons, &scene, &v2, &mut seen);
    purge(
        package,
        daemon,
        &seen,
        &ca_pem,
        known_hosts_before.as_deref(),
    );
}

/// Starts the unit's daemon (with a log per start under `dir`) and records
/// the links it pinned.
struct Daemons<'a> {
    unit: &'a Unit,
    dir: &'a Path,
}

impl Daemons<'_> {
    fn try_start(
        &self,
        launch: &Launch,
        seen: &mut BTreeSet<LinkIds>,
    ) -> Result<UnitDaemon, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = self
            .dir
            .join(format!("daemon-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let d = UnitDaemon::start(self.unit, launch, Path::new(CONTROL), &log)
            .map_err(|e| format!("{:?}: {}", e.status, e.log))?;
        seen.extend(attached::pinned_links(Path::new(PIN_DIR)).into_values());
        Ok(d)
    }

    fn start(&self, launch: &Launch, seen: &mut BTreeSet<LinkIds>) -> UnitDaemon {
        self.try_start(launch, seen)
            .unwrap_or_else(|log| panic!("the unit's daemon did not start: {log}"))
    }
}

/// The old daemon runs while dpkg installs the new version (prerm does
/// nothing on upgrade), then is restarted the way the postinst's
/// `deb-systemd-invoke restart` would (a no-op here: no systemd): stopped,
/// started. An enrolled agent connects in a loop to a server that is not a
/// target the whole time: it must never reach it, and the pinned links
/// must be the very ones of before until the new daemon replaces them.
fn upgrade_without_a_window(
    daemons: &Daemons,
    scene: &Scene,
    v2: &Path,
    seen: &mut BTreeSet<LinkIds>,
) -> UnitDaemon {
    let not_a_target = TestServer::start(&["127.0.0.7"]);
    let mut old = daemons.start(&Launch::default(), seen);
    let agent = AgentLoop::start(&scene.runner, &not_a_target.addr(0).to_string());
    agent.wait_for(10, "through the old daemon", |a| a.connected());
    let pinned = attached::pinned_links(Path::new(PIN_DIR));
    assert!(!pinned.is_empty(), "nothing pinned under {PIN_DIR}");

    let none_through = |phase: &str| {
        let n = not_a_target.accepted.load(Ordering::SeqCst);
        assert_eq!(
            n, 0,
            "{n} agent connections reached a server that is not a target {phase}"
        );
    };

    let out = dpkg(&["-i", &v2.to_string_lossy()]);
    assert!(
        out.status.success(),
        "dpkg -i {}: {}",
        v2.display(),
        text(&out)
    );
    let t = text(&out);
    assert!(
        !t.contains("created ") && !t.contains("updated "),
        "blastgate install changed the host on upgrade:\n{t}"
    );
    assert!(
        installed_version().is_some_and(|v| v.ends_with("pkgtest2")),
        "{:?}",
        installed_version()
    );
    agent.wait_for(10, "after dpkg", |a| a.connected() + a.refused());
    none_through("while dpkg upgraded the package");
    assert_eq!(
        attached::pinned_links(Path::new(PIN_DIR)),
        pinned,
        "the upgrade replaced or removed pinned links (a maintainer script detached them)"
    );

    old.stop();
    agent.wait_for(10, "refused while no daemon runs", |a| a.refused());
    none_through("while no daemon ran");
    assert_eq!(
        attached::pinned_links(Path::new(PIN_DIR)),
        pinned,
        "stopping the daemon changed the pinned links"
    );
    let new = daemons.start(&Launch::default(), seen);
    let now = attached::pinned_links(Path::new(PIN_DIR));
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        pinned.keys().collect::<Vec<_>>(),
        "the new daemon pinned other links"
    );
    agent.wait_for(10, "through the new daemon", |a| a.connected());
    drop(agent);
    none_through("through the new daemon");
    new
}

/// The daemon is stopped (prerm's `deb-systemd-invoke stop` where systemd
/// runs), then `dpkg --purge`: nothing of blastgate may be left, in the
/// kernel or on disk.
fn purge(
    mut package: Package,
    mut daemon: UnitDaemon,
    seen: &BTreeSet<LinkIds>,
    ca_pem: &str,
    known_hosts_before: Option<&str>,
) {
    daemon.stop();
    let out = dpkg(&["--purge", PACKAGE]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    package.purged = true;
    assert_eq!(installed_version(), None, "dpkg still lists {PACKAGE}");
    let left: Vec<&str> = PURGED
        .iter()
        .copied()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    let state: Vec<PathBuf> = HELPER_STATE
        .iter()
        .flat_map(|d| walk(Path::new(d)))
        .filter(|p| p.to_string_lossy().contains("blastgate"))
        .collect();
    assert!(state.is_empty(), "deb-systemd-helper state left: {state:?}");
    assert!(
        !std::fs::read_to_string(SYSTEM_ROOTS)
            .expect("system roots")
            .contains(ca_pem.trim()),
        "the CA is still in {SYSTEM_ROOTS}"
    );
    assert_eq!(
        std::fs::read_to_string(SSH_KNOWN_HOSTS).ok().as_deref(),
        known_hosts_before,
        "{SSH_KNOWN_HOSTS} is not as it was"
    );
    let links: BTreeSet<u32> = seen.iter().map(|l| l.link).collect();
    let progs: BTreeSet<u32> = seen.iter().map(|l| l.prog).collect();
    // The kernel frees a released link or program after a grace period.
    let gone = wait_until(Duration::from_secs(10), || {
        let l: Vec<u32> = attached::loaded_link_ids()
            .intersection(&links)
            .copied()
            .collect();
        let p: Vec<u32> = attached::loaded_program_ids()
            .intersection(&progs)
            .copied()
            .collect();
        (l.is_empty() && p.is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "links {:?} or programs {:?} of the daemon are still loaded after purge",
        attached::loaded_link_ids()
            .intersection(&links)
            .collect::<Vec<_>>(),
        attached::loaded_program_ids()
            .intersection(&progs)
            .collect::<Vec<_>>()
    );
    let attached_now: Vec<(&str, u32)> = attached::cgroup_root_programs()
        .into_iter()
        .flat_map(|(hook, ids)| ids.into_iter().map(move |id| (hook, id)))
        .filter(|(_, id)| progs.contains(id))
        .collect();
    assert!(
        attached_now.is_empty(),
        "still attached at the cgroup root: {attached_now:?}"
    );
}

/// The runner, the developer, a PostgreSQL with the masking fixture and a
/// plain server for the script agent.
struct Scene {
    runner: TestUser,
    developer: TestUser,
    pg: TestPostgres,
    api: TestServer,
}

impl Scene {
    fn new() -> Scene {
        let pg = TestPostgres::start("127.0.0.2");
        pg.create_role("app", DB_SECRET, true);
        pg.create_db("orders", "app");
        pg.load_fixture("orders", "app");
        Scene {
            runner: TestUser::create(RUNNER),
            developer: TestUser::with_home(DEVELOPER),
            pg,
            api: TestServer::start(&["127.0.0.6"]),
        }
    }

    /// What an admin does after installing: targets, credentials in the
    /// secrets directory, a script agent, and `blastgate install
    /// --enrol-user` for the runner (which also writes the SSH CA's
    /// known_hosts line for the ssh target).
    fn configure(&self) {
        let secret = Path::new(SECRETS).join("orders-db");
        write_private(&secret, &format!("{DB_SECRET}\n"));
        let key = Path::new(SECRETS).join("deploy.key");
        harness::sshd::keygen(&key, "blastgate-deploy");
        let host_key = std::fs::read_to_string(key.with_extension("key.pub")).expect("public key");
        let script = self.developer.write_home_file(
            "agent.py",
            &format!(
                "import socket\ns = socket.create_connection(('{}', {}), timeout=10)\n\
                 s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint(s.recv(4096))\n",
                self.api.addr(0).ip(),
                self.api.addr(0).port()
            ),
        );
        let text_before = std::fs::read_to_string(CONFIG).expect("config");
        let mut doc: toml_edit::DocumentMut =
            text_before.parse().expect("the shipped config is TOML");
        // Agents here resolve nothing; were they to, nothing leaves the host.
        doc["dns"]["upstreams"] = toml_edit::value(toml_edit::Array::from_iter(["127.0.0.1:9"]));
        let mut config = doc.to_string();
        config.push_str(&format!(
            "\n[[enrol.scripts]]\ninterpreter = \"/usr/bin/python3\"\nscript = \"{}\"\nagent = \"{SCRIPT_AGENT}\"\n\n\
             [[targets]]\nname = \"orders-db\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\
             labels = {{ env = \"production\" }}\n\n[targets.postgres]\nuser = \"app\"\npassword_file = \"{}\"\n\n\
             [[targets]]\nname = \"deploy\"\nprotocol = \"ssh\"\naddress = \"127.0.0.3:2222\"\n\
             hostnames = [\"deploy.internal\"]\n\n[targets.ssh]\nuser = \"deploy\"\nkey_file = \"{}\"\nhost_key = \"{}\"\n\n\
             [[targets]]\nname = \"internal-api\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
            script.display(),
            self.pg.addr(),
            secret.display(),
            key.display(),
            host_key.trim(),
            self.api.addr(0),
        ));
        std::fs::write(CONFIG, config).expect("write the config");
        let out = installed(&["install", "--enrol-user", RUNNER]);
        let t = text(&out);
        assert!(out.status.success(), "blastgate install: {t}");
        for line in [
            format!(
                "created   user {RUNNER} (uid {}) enrolled as agent \"{RUNNER}\"",
                self.runner.uid
            ),
            format!("created   1 @cert-authority line(s) for the ssh targets in {SSH_KNOWN_HOSTS}"),
        ] {
            assert!(t.contains(&line), "no {line:?} in:\n{t}");
        }
        let out = installed(&["check-config", CONFIG]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// Whether the running daemon intercepts everything this test drives;
    /// `Err` says what it missed.
    fn intercepted(&self) -> Result<(), String> {
        // The runner's psql: masked rows, a refused DROP, and a session
        // that names its caller's executable.
        let conn = format!(
            "host={} port={} user=app dbname=orders sslmode=disable connect_timeout=10",
            self.pg.addr().ip(),
            self.pg.port()
        );
        let psql = |sql: &str| {
            run_as(
                &self.runner,
                &["/usr/bin/psql", "-X", "-A", "-t", &conn, "-c", sql],
            )
        };
        let (out, pid) = psql("SELECT name, email, card FROM customers ORDER BY id");
        let t = text(&out);
        if !out.status.success() {
            return Err(format!("the runner's psql failed: {t}"));
        }
        if !t.contains("Alice Archer|hash:") || !t.contains("|****1111") || t.contains("alice@") {
            return Err(format!("the runner's psql did not get masked rows: {t}"));
        }
        let opened = session_opened(pid)
            .ok_or_else(|| format!("no session in {SPOOL} for the runner's psql (pid {pid})"))?;
        let caller = &opened["caller"];
        if caller["agent"] != RUNNER || caller["uid"] != self.runner.uid {
            return Err(format!("the runner's session has another caller: {caller}"));
        }
        if caller["exe"] != PSQL_EXE {
            return Err(format!(
                "the runner's session does not name its executable {PSQL_EXE}: caller {caller}"
            ));
        }
        let (out, _) = psql("DROP TABLE orders");
        if !text(&out).contains("DROP TABLE denied by policy sql-destroy-production") {
            return Err(format!("DROP TABLE was not refused: {}", text(&out)));
        }
        // The developer's agent is a script run from its private home.
        let (out, pid) = run_as(
            &self.developer,
            &["/bin/sh", "-c", "cd && exec /usr/bin/python3 agent.py"],
        );
        if !out.status.success() {
            return Err(format!("the script agent failed: {}", text(&out)));
        }
        match session_opened(pid) {
            Some(e) if e["caller"]["agent"] == SCRIPT_AGENT => Ok(()),
            Some(e) => Err(format!(
                "the script agent's session has another caller: {}",
                e["caller"]
            )),
            None => Err(format!(
                "the script agent (python3 agent.py in {DEVELOPER}'s 0700 home, pid {pid}) was \
                 not enrolled: it connected directly"
            )),
        }
    }
}

/// The session the process `pid` opened, once it is in the spool.
fn session_opened(pid: u32) -> Option<Value> {
    wait_until(Duration::from_secs(10), || {
        spool_events(Path::new(SPOOL))
            .into_iter()
            .find(|e| is_session(e, "session_opened", u64::from(pid)))
    })
}

/// `argv` as `user` (setpriv: the same pid all the way to the exec'd
/// program, which is what the daemon records), to completion.
fn run_as(user: &TestUser, argv: &[&str]) -> (Output, u32) {
    let child = as_user(user, argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn as user");
    let pid = child.id();
    (child.wait_with_output().expect("wait"), pid)
}

fn as_user(user: &TestUser, argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "--"])
        .args(argv)
        .env("HOME", user.home.as_deref().unwrap_or(Path::new("/")))
        .env("PGPASSWORD", AGENT_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10");
    c
}

/// An enrolled agent connecting to `addr` over and over, counting what
/// happened: connected (to the proxy, which refuses a destination that
/// is not a target, or to the server itself, which the test forbids) or
/// refused (the pinned redirect leads to a port nobody listens on).
struct AgentLoop {
    child: Child,
    counts: Arc<[AtomicUsize; 2]>,
}

impl AgentLoop {
    const SCRIPT: &'static str = "import socket, sys, time\n\
        addr = (sys.argv[1], int(sys.argv[2]))\n\
        while True:\n\
        \x20   try:\n\
        \x20       socket.create_connection(addr, timeout=2).close()\n\
        \x20       print('connected', flush=True)\n\
        \x20   except OSError:\n\
        \x20       print('refused', flush=True)\n\
        \x20   time.sleep(0.02)\n";

    fn start(user: &TestUser, addr: &str) -> AgentLoop {
        let (ip, port) = addr.rsplit_once(':').expect("ip:port");
        let mut child = as_user(user, &["/usr/bin/python3", "-c", Self::SCRIPT, ip, port])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent loop");
        let counts: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let c = counts.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let i = usize::from(line != "connected");
                c[i].fetch_add(1, Ordering::SeqCst);
            }
        });
        AgentLoop { child, counts }
    }

    fn connected(&self) -> usize {
        self.counts[0].load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.counts[1].load(Ordering::SeqCst)
    }

    /// Waits until `count` grew by `n`: the loop ran through this phase.
    fn wait_for(&self, n: usize, phase: &str, count: impl Fn(&AgentLoop) -> usize) {
        let from = count(self);
        wait_until(Duration::from_secs(30), || {
            (count(self) >= from + n).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the agent loop did not get {n} more results {phase} (connected {}, refused {})",
                self.connected(),
                self.refused()
            )
        });
    }
}

impl Drop for AgentLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The package installed by this test; purged on drop whatever happened.
struct Package {
    purged: bool,
}

impl Package {
    fn install(deb: &Path) -> Package {
        let package = Package { purged: false };
        let out = dpkg(&["-i", &deb.to_string_lossy()]);
        let t = text(&out);
        assert!(out.status.success(), "dpkg -i {}: {t}", deb.display());
        assert!(
            t.contains("created   TLS CA in /var/lib/blastgate/ca"),
            "the postinst did not run blastgate install:\n{t}"
        );
        package
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        if !self.purged && installed_version().is_some() {
            let out = dpkg(&["--purge", PACKAGE]);
            if !out.status.success() {
                // A failing maintainer script must not keep the package on
                // this host: neutralise this package's scripts, purge again.
                eprintln!(
                    "warning: dpkg --purge {PACKAGE} failed; forcing it out:\n{}",
                    text(&out)
                );
                for script in ["prerm", "postrm"] {
                    let _ = std::fs::write(
                        format!("/var/lib/dpkg/info/{PACKAGE}.{script}"),
                        "#!/bin/sh\nexit 0\n",
                    );
                }
                let out = dpkg(&["--purge", "--force-remove-reinstreq", PACKAGE]);
                eprintln!("forced purge: {}", text(&out));
            }
        }
        // Whatever a failed test or a broken script left behind: none of it
        // was on the host when the test began. The test's own binary detaches
        // and takes the CA and the known_hosts block back.
        let _ = Command::new(BIN)
            .args(["uninstall", "--undo-install", "--config", "/dev/null"])
            .output();
        for dir in ["/etc/blastgate", "/var/lib/blastgate", "/run/blastgate"] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The host must have no blastgate of its own: the test uses the default
/// paths and purges what it installs.
fn assert_no_blastgate_on_this_host() {
    if let Some(v) = installed_version() {
        panic!(
            "a {PACKAGE} package ({v}) is installed on this host: this test installs and purges \
             its own; remove it first (dpkg --purge {PACKAGE})"
        );
    }
    for p in [
        PIN_DIR,
        CONTROL,
        "/etc/blastgate",
        "/var/lib/blastgate",
        HOST_ANCHOR,
    ] {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{p} exists: blastgate runs or is set up on this host with the default paths; this \
             test would take it over"
        );
    }
    assert!(
        !std::fs::read_to_string(SSH_KNOWN_HOSTS)
            .unwrap_or_default()
            .contains("BEGIN blastgate"),
        "{SSH_KNOWN_HOSTS} has blastgate's block: blastgate is set up on this host"
    );
}

/// The installed package's version; `None` when it is not installed (or
/// only known to dpkg as purged).
fn installed_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev} ${Version}", PACKAGE])
        .output()
        .expect("dpkg-query");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, version) = s.split_once(' ')?;
    (out.status.success() && !status.starts_with("pn") && !status.starts_with("un"))
        .then(|| version.trim().to_string())
}

fn dpkg(args: &[&str]) -> Output {
    Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("dpkg")
}

/// The installed binary, as an admin runs it.
fn installed(args: &[&str]) -> Output {
    Command::new(INSTALLED)
        .args(args)
        .output()
        .expect(INSTALLED)
}

/// cargo-deb, as `cargo xtask setup` installs it.
fn cargo_deb() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let found = [
        Some(PathBuf::from("/opt/blastgate-tools/bin/cargo-deb")),
        home.map(|h| h.join(".cargo/bin/cargo-deb")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.exists());
    if found.is_none() {
        blastgate::testing::skip("cargo-deb is not installed: run `cargo xtask setup`");
    }
    found
}

/// The package of the binary this test run built (target/debug), at
/// `version`, in `out`.
fn build_deb(cargo_deb: &Path, out: &Path, version: &str) -> PathBuf {
    let bin = Path::new(BIN);
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("BIN is under target/debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let mut cmd = Command::new(cargo_deb);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .args([
            "-p",
            PACKAGE,
            "--profile",
            "dev",
            "--no-build",
            "--fast",
            "--quiet",
        ])
        .args(["--deb-version", version, "--output"])
        .arg(out);
    // cargo-deb runs `cargo metadata`: the cargo running this test.
    if let Some(dir) = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(Path::to_path_buf))
    {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
    }
    let o = cmd.output().expect("run cargo-deb");
    assert!(o.status.success(), "cargo-deb: {}", text(&o));
    let deb = out.join(format!("{PACKAGE}_{version}_amd64.deb"));
    assert!(
        deb.is_file(),
        "no {} after cargo-deb: {}",
        deb.display(),
        text(&o)
    );
    deb
}

/// A root-only file (0600).
fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write");
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// The line of a daemon's log that says why it stopped.
fn last_error(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("blastgate:") || l.contains("ERROR"))
        .unwrap_or_else(|| log.lines().last().unwrap_or_default())
        .trim()
        .to_string()
}

/// What both package tests start from: a host with no blastgate, cargo-deb,
/// a directory for the packages and the known_hosts file as it was.
struct Debs {
    cargo_deb: PathBuf,
    work: tempfile::TempDir,
    known_hosts_before: Option<String>,
}

impl Debs {
    /// `None` when the test cannot run here (skipped loudly: a failure with
    /// CI=true).
    fn prepare(prefix: &str) -> Option<Debs> {
        if !kernel_ready() || !TestPostgres::available() {
            return None;
        }
        let cargo_deb = cargo_deb()?;
        assert_no_blastgate_on_this_host();
        Some(Debs {
            cargo_deb,
            work: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir"),
            known_hosts_before: std::fs::read_to_string(SSH_KNOWN_HOSTS).ok(),
        })
    }

    /// The package of this run's binary, versioned `<crate version>-0~tag`.
    fn build(&self, tag: &str) -> PathBuf {
        let version = format!("{}-0~{tag}", env!("CARGO_PKG_VERSION"));
        build_deb(&self.cargo_deb, self.work.path(), &version)
    }
}

/// Enrolled by `vagrant/provision.sh`; made here so that the guard removes it.
const PROVISION_RUNNER: &str = "bg-prov-runner";

/// Stops the daemon `vagrant/provision.sh --here` started, before the
/// package guard purges.
struct ProvisionedDaemon;

impl Drop for ProvisionedDaemon {
    fn drop(&mut self) {
        let _ = Command::new(provision_script()).arg("--stop-here").output();
    }
}

fn provision_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant/provision.sh")
}

/// The Vagrant VM's provisioning, run here with `--here` (no VM toolchain
/// sources, no systemd): it installs the package built from this run, enrols
/// a runner, starts the daemon as the unit says and ends with the demo, run
/// against that daemon with the runner's processes as agents, passing.
#[test]
fn the_vagrant_provisioning_script_ends_with_the_demo_passing() {
    let _g = serial();
    let Some(debs) = Debs::prepare("blastgate-provision") else {
        return;
    };
    let known_hosts_before = debs.known_hosts_before.clone();
    let deb = debs.build("provision");
    let _package = Package { purged: false };
    let _runner = TestUser::with_home(PROVISION_RUNNER);
    let _daemon = ProvisionedDaemon;
    let out = Command::new(provision_script())
        .arg("--here")
        .arg("--deb")
        .arg(&deb)
        .env("BLASTGATE_RUNNER", PROVISION_RUNNER)
        .output()
        .expect("run vagrant/provision.sh");
    let said = text(&out);
    assert!(out.status.success(), "provision.sh --here failed:\n{said}");
    for line in [
        format!("created   user {PROVISION_RUNNER}"),
        "demo passed: every check held".to_string(),
        format!("provisioned: blastgate is installed, running and guarding {PROVISION_RUNNER}"),
    ] {
        assert!(said.contains(&line), "no {line:?} in:\n{said}");
    }
    // The demo put the installed config back as it found it.
    let config = std::fs::read_to_string(CONFIG).expect("config");
    assert!(!config.contains("blastgate demo"), "{config}");
    drop(_daemon);
    drop(_package);
    assert_eq!(
        std::fs::read_to_string(SSH_KNOWN_HOSTS).ok(),
        known_hosts_before
    );
    for p in PURGED {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{p} left after purge"
        );
    }
}

//! One session lifecycle, end to end (issue 15): whatever ends a session
//! (the agent, the upstream, a policy reload, the daemon's SIGTERM), its
//! record is complete and ordered. Every session that opened has exactly
//! one `session_opened` and one `session_closed`, and `session_closed` is
//! its last event both by `seq` and by position in the spool, with byte
//! counts that include what upgrade tunnels and SSH channels carried.
//!
//! Real servers and clients only: PostgreSQL 15 with psql, pgbench and
//! tokio-postgres; Debian's sshd with OpenSSH's ssh (ControlMaster too);
//! kubectl against the Kubernetes stand-in (exec over WebSocket); curl and
//! bash's /dev/tcp; all of them agents redirected by the kernel.

mod harness;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use harness::{
    kube_gateway::KubeGateway,
    pg_gateway::{permissive_policies, AGENT_PASSWORD, SECRET},
    postgres::TestPostgres,
    ssh_gateway::client_known_hosts,
    sshd::{children_of, deploy_user, ssh_options, Collecting, TestSshd, SSH},
    *,
};
use serde_json::Value;

const AGENT: &str = "claude";
const PG: &str = "orders-db";
const SSH_TARGET: &str = "deploy-host";
const TCP: &str = "echo-tcp";
const HTTP: &str = "plain-api";
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// A TCP echo server (a line back for each line) that can hang up on its
/// clients: the upstream side closing.
struct EchoServer {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let l = TcpListener::bind("127.0.0.2:0").expect("bind echo server");
        let addr = l.local_addr().expect("echo addr");
        let conns: Arc<Mutex<Vec<TcpStream>>> = Default::default();
        let kept = conns.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                if let Ok(clone) = c.try_clone() {
                    kept.lock().unwrap_or_else(|p| p.into_inner()).push(clone);
                }
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    // The clone kept for close_all must not hold it open.
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        EchoServer { addr, conns }
    }

    /// Hangs up on every client.
    fn close_all(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// PostgreSQL, sshd, a TCP echo server and an HTTP server on 127.0.0.2,
/// behind one daemon with a target for each, under policies that allow
/// everything (in a directory a test may edit: the reload test does).
struct World {
    pg: TestPostgres,
    sshd: TestSshd,
    echo: EchoServer,
    web: TestServer,
    policies: tempfile::TempDir,
    env: Env,
    daemon: Daemon,
    known_hosts: PathBuf,
    ssh_user: String,
    _secrets: tempfile::TempDir,
}

impl World {
    fn start() -> Option<World> {
        if !kernel_ready() || !TestPostgres::available() || !TestSshd::available() {
            return None;
        }
        let pg = TestPostgres::start("127.0.0.2");
        pg.create_role("app", SECRET, true);
        pg.create_db("orders", "app");
        pg.load_fixture("orders", "app");
        let sshd = TestSshd::start("127.0.0.2");
        let ssh_user = deploy_user();
        let key = sshd.authorize_new_key(&ssh_user);
        let echo = EchoServer::start();
        let web = TestServer::start(&["127.0.0.2"]);
        let secrets = tempfile::tempdir().expect("secrets dir");
        let password = secrets.path().join("orders-db");
        std::fs::write(&password, format!("{SECRET}\n")).expect("write secret");
        let upstream_known = secrets.path().join("upstream_known_hosts");
        std::fs::write(&upstream_known, format!("{}\n", sshd.known_hosts_line())).expect("kh");
        let policies = permissive_policies();
        let env = Env::new(&format!(
            "[policy]\ndir = \"{}\"\n\n\
             [[targets]]\nname = \"{PG}\"\nprotocol = \"postgres\"\naddress = \"{}\"\n\n\
             [targets.postgres]\nuser = \"app\"\npassword_file = \"{}\"\n\n\
             [[targets]]\nname = \"{SSH_TARGET}\"\nprotocol = \"ssh\"\naddress = \"{}\"\n\
             hostnames = [\"deploy.internal\", \"127.0.0.2\"]\n\n\
             [targets.ssh]\nuser = \"{ssh_user}\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n\n\
             [[targets]]\nname = \"{TCP}\"\nprotocol = \"tcp\"\naddress = \"{}\"\n\n\
             [[targets]]\nname = \"{HTTP}\"\nprotocol = \"http\"\naddress = \"{}\"\n\n[targets.http]\n",
            policies.path().display(),
            pg.addr(),
            password.display(),
            sshd.addr(),
            key.display(),
            upstream_known.display(),
            echo.addr,
            web.addr(0),
        ));
        let daemon = Daemon::start(&env);
        let known_hosts = client_known_hosts(&env, secrets.path(), "deploy.internal");
        Some(World {
            pg,
            sshd,
            echo,
            web,
            policies,
            env,
            daemon,
            known_hosts,
            ssh_user,
            _secrets: secrets,
        })
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.2 port={} user=app dbname=orders sslmode=disable",
            self.pg.port()
        )
    }

    fn psql(&self, sql: &str) -> Command {
        let mut c = self
            .env
            .agent(AGENT, &["psql", "-X", "-At", &self.conninfo()]);
        c.args(["-c", sql]).env("PGPASSWORD", AGENT_PASSWORD);
        c
    }

    /// The ssh client's arguments up to the destination.
    fn ssh_argv(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![SSH.to_string()];
        argv.extend(ssh_options(&self.known_hosts));
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.extend([
            "-p".to_string(),
            self.sshd.port().to_string(),
            format!("{}@127.0.0.2", self.ssh_user),
        ]);
        argv
    }

    fn ssh(&self, extra: &[&str], command: &str) -> Command {
        let mut argv = self.ssh_argv(extra);
        argv.push(command.to_string());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.env.agent(AGENT, &argv)
    }

    /// A psql, an ssh and a bash session that run until something ends
    /// them, each past its first exchange.
    fn long_sessions(&self) -> [Running; 3] {
        let psql = Running::spawn(self.psql("SELECT pg_sleep(60)"));
        let ssh = Running::spawn(self.ssh(&[], "echo started; sleep 60"));
        let bash = Running::spawn(self.bash_tcp("echo ping >&3; cat <&3; echo eof"));
        ssh.wait_stdout("started");
        bash.wait_stdout("ping");
        [psql, ssh, bash]
    }

    /// bash as an agent talking to the echo server through /dev/tcp:
    /// `script` runs with the connection on fd 3.
    fn bash_tcp(&self, script: &str) -> Command {
        let (ip, port) = (self.echo.addr.ip(), self.echo.addr.port());
        self.env.agent(
            AGENT,
            &[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{ip}/{port} || exit 9\n{script}"),
            ],
        )
    }
}

/// A client running in the background, its output collected as it comes.
struct Running {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let Collecting {
            child, out, err, ..
        } = Collecting::spawn(&mut cmd);
        Running { child, out, err }
    }

    fn pid(&self) -> u64 {
        u64::from(self.child.id())
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.out)).into_owned()
    }

    fn stdout_len(&self) -> u64 {
        lock(&self.out).len() as u64
    }

    fn text(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            String::from_utf8_lossy(&lock(&self.err))
        )
    }

    fn wait_stdout(&self, needle: &str) {
        wait_until(Duration::from_secs(30), || {
            self.stdout().contains(needle).then_some(())
        })
        .unwrap_or_else(|| panic!("no {needle:?} from the client; {}", self.text()));
    }

    /// Waits for the client to end (it must, within `CLOSE_WAIT`), and a
    /// moment for its pipes to drain.
    fn finish(&mut self) -> ExitStatus {
        let status = wait_until(CLOSE_WAIT, || self.child.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("the client did not end; {}", self.text()));
        thread::sleep(Duration::from_millis(100));
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session's events, in spool order.
struct Record {
    events: Vec<Value>,
}

impl Record {
    fn opened(&self) -> &Value {
        self.of("session_opened").next().expect("opened")
    }

    fn closed(&self) -> &Value {
        self.of("session_closed").next().expect("closed")
    }

    fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["kind"] == kind)
    }

    fn target(&self) -> &str {
        self.opened()["target"].as_str().unwrap_or_default()
    }

    fn pid(&self) -> u64 {
        self.opened()["caller"]["pid"].as_u64().unwrap_or(0)
    }

    fn reason(&self) -> &str {
        self.closed()["reason"].as_str().unwrap_or_default()
    }

    fn bytes(&self) -> (u64, u64) {
        let c = self.closed();
        (
            c["bytes_from_agent"].as_u64().unwrap_or(0),
            c["bytes_to_agent"].as_u64().unwrap_or(0),
        )
    }

    fn seq(e: &Value) -> u64 {
        e["seq"].as_u64().unwrap_or(u64::MAX)
    }
}

/// Every session that opened, by id, once each has closed (or after
/// `CLOSE_WAIT`, as far as it got).
fn sessions(env: &Env) -> BTreeMap<String, Record> {
    let mut last = BTreeMap::new();
    wait_until(CLOSE_WAIT, || {
        last = group(&env.events());
        last.values()
            .all(|r| r.of("session_closed").next().is_some())
            .then_some(())
    });
    last
}

fn group(events: &[Value]) -> BTreeMap<String, Record> {
    let mut by_id: BTreeMap<String, Record> = BTreeMap::new();
    for e in events {
        let Some(id) = e["session_id"].as_str() else {
            continue;
        };
        by_id
            .entry(id.to_string())
            .or_insert(Record { events: Vec::new() })
            .events
            .push(e.clone());
    }
    by_id.retain(|_, r| r.of("session_opened").next().is_some());
    by_id
}

/// The record of every session is complete and ordered: one
/// `session_opened` first, one `session_closed` last by `seq` and by
/// spool position, every `seq` once. Returns the sessions.
fn assert_complete(env: &Env) -> BTreeMap<String, Record> {
    let all = sessions(env);
    assert!(!all.is_empty(), "no session opened");
    for (id, r) in &all {
        if let Err(why) = r.complete() {
            panic!("session {id}: {why}:\n{:#?}", r.events);
        }
    }
    all
}

impl Record {
    /// Why this session's record is not complete and ordered, if it is not.
    fn complete(&self) -> Result<(), &'static str> {
        if self.of("session_opened").count() != 1 {
            return Err("session_opened missing or repeated");
        }
        if self.of("session_closed").count() != 1 {
            return Err("session_closed missing or repeated");
        }
        if self.events.last().map(|e| &e["kind"]) != Some(&Value::from("session_closed")) {
            return Err("an event was written after session_closed");
        }
        let mut seqs: Vec<u64> = self.events.iter().map(Record::seq).collect();
        if seqs.iter().max() != Some(&Record::seq(self.closed())) {
            return Err("session_closed is not the highest seq");
        }
        if Record::seq(self.opened()) != 0 {
            return Err("session_opened is not the first seq");
        }
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.len() != self.events.len() {
            return Err("a seq repeated");
        }
        Ok(())
    }
}

/// The check itself fails where it must: a tunnel's or channel's record
/// written after the close, or numbered after it, or a close missing.
#[test]
fn the_completeness_check_catches_records_after_the_close() {
    let event =
        |kind: &str, seq: u64| serde_json::json!({"session_id": "s", "kind": kind, "seq": seq});
    let check = |events: Vec<Value>| group(&events).remove("s").map(|r| r.complete());
    let opened = || event("session_opened", 0);
    assert_eq!(
        check(vec![
            opened(),
            event("request", 1),
            event("session_closed", 2)
        ]),
        Some(Ok(()))
    );
    assert_eq!(
        check(vec![
            opened(),
            event("session_closed", 1),
            event("request", 2)
        ]),
        Some(Err("an event was written after session_closed"))
    );
    assert_eq!(
        check(vec![
            opened(),
            event("command", 2),
            event("session_closed", 1)
        ]),
        Some(Err("session_closed is not the highest seq"))
    );
    assert_eq!(
        check(vec![opened(), event("command", 1)]),
        Some(Err("session_closed missing or repeated"))
    );
}

/// The one session of `target` opened by process `pid`.
fn session_of<'a>(all: &'a BTreeMap<String, Record>, target: &str, pid: u64) -> &'a Record {
    let found: Vec<&Record> = all
        .values()
        .filter(|r| r.target() == target && r.pid() == pid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "sessions of {target} by pid {pid}: {:#?}",
        all.values().map(|r| &r.events).collect::<Vec<_>>()
    );
    found[0]
}

/// Ids of the sessions closed so far.
fn sessions_closed_so_far(env: &Env) -> Vec<String> {
    group(&env.events())
        .into_iter()
        .filter(|(_, r)| r.of("session_closed").next().is_some())
        .map(|(id, _)| id)
        .collect()
}

/// The sessions of `target`.
fn sessions_to<'a>(all: &'a BTreeMap<String, Record>, target: &str) -> Vec<&'a Record> {
    all.values().filter(|r| r.target() == target).collect()
}

/// Waits until the spool shows `n` sessions of `target` opened.
fn wait_opened(env: &Env, target: &str, n: usize) {
    wait_until(Duration::from_secs(30), || {
        let opened = env.count_events(|e| e["kind"] == "session_opened" && e["target"] == target);
        (opened >= n).then_some(())
    })
    .unwrap_or_else(|| panic!("{n} session(s) of {target} did not open"));
}

/// The SSH command events of a session, which must all come before its
/// close (checked by [`assert_complete`]); at least one.
fn commands(r: &Record) -> Vec<&Value> {
    let found: Vec<&Value> = r.of("command").collect();
    assert!(!found.is_empty(), "no command recorded: {:#?}", r.events);
    found
}

#[test]
fn sessions_the_agent_ends_close_last_with_their_bytes() {
    let _g = serial();
    let Some(w) = World::start() else { return };

    let psql = w
        .psql("SELECT count(*) FROM orders")
        .output()
        .expect("psql");
    assert!(psql.status.success(), "{psql:?}");
    let ssh = w
        .ssh(&[], "echo closed-by-the-agent")
        .output()
        .expect("ssh");
    assert!(ssh.status.success(), "{ssh:?}");
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout),
        "closed-by-the-agent\n"
    );
    let bash = w
        .bash_tcp("echo ping >&3; read -r line <&3; echo \"got $line\"; exec 3>&-")
        .output()
        .expect("bash");
    assert_eq!(
        String::from_utf8_lossy(&bash.stdout),
        "got ping\n",
        "{bash:?}"
    );
    let form = "sent=by-the-agent";
    let curl = w
        .env
        .agent(
            AGENT,
            &[
                "curl",
                "-sS",
                "-d",
                form,
                &format!("http://{}/", w.web.addr(0)),
            ],
        )
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&curl.stdout).starts_with("hello from"),
        "{curl:?}"
    );

    let all = assert_complete(&w.env);
    // What each agent sent and received at least (the SSH command reads
    // no stdin; bash prints more than the line it got).
    let printed = |o: &std::process::Output| o.stdout.len() as u64;
    for (target, sent, received) in [
        (PG, 1, printed(&psql)),
        (SSH_TARGET, 0, printed(&ssh)),
        (TCP, 5, 5),
        (HTTP, form.len() as u64, printed(&curl)),
    ] {
        let closed = sessions_to(&all, target);
        assert_eq!(closed.len(), 1, "{target}");
        let r = closed[0];
        assert_eq!(r.closed()["verdict"], "allow", "{target}: {:#?}", r.events);
        let (from, to) = r.bytes();
        assert!(from >= sent, "{target}: {:#?}", r.events);
        assert!(
            to >= received,
            "{target}: {to} bytes to the agent, which received {received}"
        );
    }
    let ssh = sessions_to(&all, SSH_TARGET)[0];
    assert_eq!(commands(ssh)[0]["text"], "echo closed-by-the-agent");
    // The TCP session carried exactly the line each way.
    assert_eq!(sessions_to(&all, TCP)[0].bytes(), (5, 5));
    assert!(sessions_to(&all, HTTP)[0].of("request").count() == 1);
}

#[test]
fn sessions_the_upstream_ends_close_last() {
    let _g = serial();
    let Some(w) = World::start() else { return };

    let [mut psql, mut ssh, mut bash] = w.long_sessions();
    wait_until(Duration::from_secs(20), || {
        (w.pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND usename = 'app'",
        ) == "1")
            .then_some(())
    })
    .expect("the statement runs");

    // The server ends each: the backend terminated by an administrator,
    // sshd's per-connection process gone, the TCP server hanging up.
    w.pg.sql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
    );
    for pid in children_of(w.sshd.pid().expect("sshd pid")) {
        // SAFETY: signalling a process of the sshd this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    w.echo.close_all();
    assert!(!psql.finish().success(), "{}", psql.text());
    assert!(!ssh.finish().success(), "{}", ssh.text());
    bash.finish();
    assert!(bash.stdout().ends_with("eof\n"), "{}", bash.text());
    assert!(
        psql.text().contains("administrator command"),
        "{}",
        psql.text()
    );

    let all = assert_complete(&w.env);
    let pg = session_of(&all, PG, psql.pid());
    assert!(pg.bytes().1 > 0, "{:#?}", pg.events);
    let s = session_of(&all, SSH_TARGET, ssh.pid());
    commands(s);
    assert!(s.bytes().1 >= ssh.stdout_len(), "{:#?}", s.events);
    let tcp = session_of(&all, TCP, bash.pid());
    assert_eq!(tcp.bytes(), (5, 5), "{:#?}", tcp.events);
}

const CUT_OFF: &str = "@id(\"cut-off\")\n@reason(\"this agent may no longer connect\")\n\
forbid (principal, action == Action::\"connect\", resource)\nwhen { principal.name == \"claude\" };\n";

#[test]
fn a_policy_reload_that_refuses_cuts_running_sessions_and_says_why() {
    let _g = serial();
    let Some(w) = World::start() else { return };

    let [mut psql, mut ssh, mut bash] = w.long_sessions();
    wait_opened(&w.env, PG, 1);

    std::fs::write(w.policies.path().join("cut.cedar"), CUT_OFF).expect("edit policies");
    w.env
        .wait_event("the reload", |e| e["kind"] == "policy_reloaded");
    psql.finish();
    ssh.finish();
    bash.finish();
    assert!(!psql.text().contains("(1 row)"), "{}", psql.text());

    let all = assert_complete(&w.env);
    for (target, pid) in [(PG, psql.pid()), (SSH_TARGET, ssh.pid()), (TCP, bash.pid())] {
        let r = session_of(&all, target, pid);
        assert!(
            r.reason()
                .starts_with("policy: the policies were reloaded and no longer allow this session"),
            "{target}: {:#?}",
            r.events
        );
        assert!(r.reason().contains("cut-off"), "{target}: {}", r.reason());
        assert_eq!(r.closed()["verdict"], "error");
    }
    commands(session_of(&all, SSH_TARGET, ssh.pid()));
    // New sessions are refused meanwhile.
    let again = w.psql("SELECT 1").output().expect("psql");
    assert!(!again.status.success());
}

/// The daemon's SIGTERM while an approved `kubectl exec` streams: the
/// upgrade tunnel is cut after the grace period, its request record comes
/// before the session's close, and the close counts the tunnel's bytes.
#[test]
fn sigterm_during_an_approved_kubectl_exec_closes_the_tunnel_session_last() {
    let _g = serial();
    let Some(mut s) = KubeGateway::start("production") else {
        return;
    };
    let stats = s.standin.serve_exec();
    let mut exec = Running::spawn(s.kubectl(&["exec", "web-1", "-n", "prod", "--", "tick"]));
    let approved = wait_until(Duration::from_secs(60), || {
        let out = s.env.blastgate(&["approvals", "list", "--json"]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for r in list.as_array().into_iter().flatten() {
            if let Some(id) = r["id"].as_str() {
                s.env.answer_approval("approve", id);
            }
        }
        exec.stdout().contains("tick 5").then_some(())
    });
    assert!(approved.is_some(), "exec did not stream: {}", exec.text());

    let stopped = Instant::now();
    s.daemon.stop();
    let grace = stopped.elapsed();
    exec.finish();
    let received = exec.stdout_len();
    assert!(
        stats.stdout_bytes.load(std::sync::atomic::Ordering::SeqCst) >= received,
        "the client got more than the stand-in wrote"
    );

    let all = assert_complete(&s.env);
    let tunnels: Vec<&Record> = all
        .values()
        .filter(|r| r.of("request").any(|e| e["status"] == 101))
        .collect();
    assert_eq!(tunnels.len(), 1, "one exec tunnel: {grace:?}");
    let r = tunnels[0];
    let upgrade = r.of("request").find(|e| e["status"] == 101).expect("101");
    assert_eq!(
        upgrade["approver"].as_str().map(|a| !a.is_empty()),
        Some(true)
    );
    assert!(
        upgrade["reason"]
            .as_str()
            .is_some_and(|why| why.contains("tunnel cut") && why.contains("shutting down")),
        "{upgrade:#}"
    );
    assert!(
        r.reason().contains("the blastgate daemon is shutting down"),
        "{:#?}",
        r.events
    );
    let tunnel_to_agent = upgrade["bytes_to_agent"].as_u64().unwrap_or(0);
    assert!(
        tunnel_to_agent >= received,
        "the tunnel record counts {tunnel_to_agent} bytes; kubectl printed {received}"
    );
    let (_, to_agent) = r.bytes();
    assert!(
        to_agent >= tunnel_to_agent,
        "the session's close counts {to_agent} bytes to the agent, its tunnel {tunnel_to_agent}"
    );
}

/// The daemon's SIGTERM while an SSH ControlMaster session runs a command
/// and pgbench runs: every session is cut after the grace period and
/// closes last, with the channel's bytes.
#[test]
fn sigterm_during_a_control_master_session_and_pgbench_closes_every_session_last() {
    let _g = serial();
    let Some(mut w) = World::start() else { return };
    let pgbench = |args: &[&str]| -> Command {
        let mut argv = vec!["/usr/lib/postgresql/15/bin/pgbench", "-h", "127.0.0.2"];
        let port = w.pg.port().to_string();
        argv.extend(["-p", &port, "-U", "app"]);
        argv.extend(args);
        argv.push("orders");
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        c
    };
    // Initialised directly, as the owner; run as an agent.
    let init = pgbench(&["-i", "-q", "-s", "1"])
        .env("PGPASSWORD", SECRET)
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "{init:?}");
    let run = pgbench(&["-c", "4", "-j", "2", "-T", "60", "-P", "1", "-n"]);
    let mut argv: Vec<String> = vec![run.get_program().to_string_lossy().into_owned()];
    argv.extend(run.get_args().map(|a| a.to_string_lossy().into_owned()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut bench = w.env.agent(AGENT, &argv);
    bench.env("PGPASSWORD", AGENT_PASSWORD);
    let mut bench = Running::spawn(bench);

    let control = w.env.dir.path().join("cm.sock");
    let control_opt = format!("ControlPath={}", control.display());
    let master = w.ssh_argv(&["-M", "-N", "-o", &control_opt]);
    let master: Vec<&str> = master.iter().map(String::as_str).collect();
    let mut master = Running::spawn(w.env.agent(AGENT, &master));
    wait_until(Duration::from_secs(20), || control.exists().then_some(()))
        .unwrap_or_else(|| panic!("no control socket: {}", master.text()));
    let mut ticks = Running::spawn(w.ssh(
        &["-o", &control_opt],
        "while :; do echo tick; sleep 0.1; done",
    ));
    ticks.wait_stdout("tick\ntick\ntick\n");
    wait_opened(&w.env, PG, 4);
    thread::sleep(Duration::from_secs(1));
    // pgbench's first connection (it reads the scale) has ended by now.
    let ended_before: Vec<String> = sessions_closed_so_far(&w.env);

    w.daemon.stop();
    ticks.finish();
    master.finish();
    bench.finish();
    let received = ticks.stdout_len();

    let all = assert_complete(&w.env);
    for (id, r) in &all {
        if ended_before.contains(id) {
            continue;
        }
        assert!(
            r.reason().contains("the blastgate daemon is shutting down"),
            "{:#?}",
            r.events
        );
    }
    let ssh = sessions_to(&all, SSH_TARGET);
    assert_eq!(ssh.len(), 1, "the master's one session");
    let loop_cmd = commands(ssh[0]);
    assert!(
        loop_cmd
            .iter()
            .any(|c| c["text"] == "while :; do echo tick; sleep 0.1; done"),
        "{loop_cmd:#?}"
    );
    let (_, to_agent) = ssh[0].bytes();
    assert!(
        to_agent >= received,
        "the close counts {to_agent} bytes to the agent; the command printed {received}"
    );
    let pg = sessions_to(&all, PG);
    assert!(pg.len() >= 4, "{}", pg.len());
    for r in pg {
        assert!(r.bytes().1 > 0, "{:#?}", r.events);
        assert!(r.of("statement").count() > 0, "{:#?}", r.events);
    }
}

/// Sessions per protocol in the load test: 1,000 at once.
const LOAD: [(&str, usize); 4] = [(TCP, 300), (HTTP, 300), (PG, 250), (SSH_TARGET, 150)];

/// 1,000 concurrent agent sessions across TCP, HTTP, PostgreSQL and SSH,
/// all open at the same moment: no errors, and every session's record
/// complete (one open, one close, the close last). The daemon's memory is
/// printed, not asserted.
#[test]
fn a_thousand_concurrent_sessions_lose_no_record() {
    let _g = serial();
    let Some(w) = World::start() else { return };
    let started = Instant::now();
    let spec = serde_json::json!({
        "tcp": w.echo.addr.to_string(),
        "http": w.web.addr(0).to_string(),
        "pg": format!("{} password={AGENT_PASSWORD}", w.conninfo()),
        "ssh": w.ssh_argv(&[]),
        "counts": LOAD.iter().map(|(t, n)| (t.to_string(), *n)).collect::<BTreeMap<_, _>>(),
    });
    let exe = std::env::current_exe().expect("test binary");
    let mut driver = w.env.agent(
        AGENT,
        &[
            exe.to_str().unwrap_or_default(),
            "--exact",
            "load_driver_child",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    driver.env("BLASTGATE_LOAD", spec.to_string());
    let out = harness::sshd::output_within(&mut driver, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let report: Value = text
        .lines()
        .find_map(|l| l.split_once("LOAD ").map(|(_, r)| r))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the driver ({}):\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let driven = started.elapsed();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", w.daemon.pid())).unwrap_or_default();
    let memory: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        .collect();
    println!("load: {report}; driven in {driven:?}; daemon {memory:?}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["open_at_release"], 1000, "{report:#}");

    let all = assert_complete(&w.env);
    for (target, n) in LOAD {
        let of = sessions_to(&all, target);
        assert_eq!(of.len(), n, "{target}");
        for r in of {
            assert_eq!(r.closed()["verdict"], "allow", "{:#?}", r.events);
        }
    }
    assert_eq!(all.len(), 1000);
    assert_eq!(
        w.env.count_events(|e| e["kind"] == "session_denied"),
        0,
        "refused sessions"
    );
    println!(
        "load: {} sessions recorded complete in {:?}",
        all.len(),
        started.elapsed()
    );
}

/// The load test's driver, run as an agent by
/// [`a_thousand_concurrent_sessions_lose_no_record`] (a no-op otherwise):
/// opens every session, holds them all open until the last has done its
/// first exchange, then ends them; prints `LOAD {json}`.
#[test]
fn load_driver_child() {
    let Ok(spec) = std::env::var("BLASTGATE_LOAD") else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("load spec");
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(load::drive(spec));
    println!("\nLOAD {report}");
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

mod load {
    use std::{
        future::Future,
        pin::Pin,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc, Mutex,
        },
        time::Duration,
    };

    use serde_json::{json, Value};
    use tokio::{
        io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::TcpStream,
        sync::{watch, Semaphore},
    };

    /// Every session waits here, open, until all are (or the deadline).
    struct Gate {
        /// Sessions open and waiting: nobody leaves before the release.
        open: AtomicUsize,
        release: watch::Receiver<bool>,
        /// Bounds how many sessions are in their opening at once (a
        /// server's limit on unauthenticated connections, two CPUs).
        opening: Semaphore,
    }

    impl Gate {
        async fn hold(&self) {
            self.open.fetch_add(1, Ordering::SeqCst);
            let mut release = self.release.clone();
            let _ = release.wait_for(|r| *r).await;
        }
    }

    type Task = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    pub async fn drive(spec: Value) -> Value {
        let (release_tx, release) = watch::channel(false);
        let gate = Arc::new(Gate {
            open: AtomicUsize::new(0),
            release,
            opening: Semaphore::new(64),
        });
        let counts = &spec["counts"];
        let n = |t: &str| counts[t].as_u64().unwrap_or(0) as usize;
        let total: usize = ["echo-tcp", "plain-api", "orders-db", "deploy-host"]
            .iter()
            .map(|t| n(t))
            .sum();
        let text = |k: &str| spec[k].as_str().unwrap_or_default().to_string();
        let ssh: Vec<String> = spec["ssh"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut tasks: Vec<(&str, Task)> = Vec::new();
        for i in 0..n("echo-tcp") {
            tasks.push(("tcp", Box::pin(tcp(text("tcp"), i, gate.clone()))));
        }
        for i in 0..n("plain-api") {
            tasks.push(("http", Box::pin(http(text("http"), i, gate.clone()))));
        }
        for i in 0..n("orders-db") {
            tasks.push(("pg", Box::pin(pg(text("pg"), i, gate.clone()))));
        }
        for i in 0..n("deploy-host") {
            tasks.push(("ssh", Box::pin(ssh_session(ssh.clone(), i, gate.clone()))));
        }
        let errors: Arc<Mutex<Vec<String>>> = Default::default();
        let handles: Vec<_> = tasks
            .into_iter()
            .map(|(what, t)| {
                let errors = errors.clone();
                tokio::spawn(async move {
                    let r = tokio::time::timeout(Duration::from_secs(90), t).await;
                    let err = match r {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".to_string(),
                    };
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{what}: {err}"));
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let started = std::time::Instant::now();
        loop {
            let failed = !errors.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            if gate.open.load(Ordering::SeqCst) >= total
                || failed
                || tokio::time::Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all_open_after = started.elapsed();
        let open_at_release = gate.open.load(Ordering::SeqCst);
        let _ = release_tx.send(true);
        for h in handles {
            let _ = h.await;
        }
        let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        json!({
            "sessions": total,
            "open_at_release": open_at_release,
            "all_open_after_ms": all_open_after.as_millis() as u64,
            "errors": errors.into_iter().take(20).collect::<Vec<_>>(),
        })
    }

    async fn tcp(addr: String, i: usize, gate: Arc<Gate>) -> Result<(), String> {
        let permit = gate.opening.acquire().await.map_err(|e| e.to_string())?;
        let mut s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let line = format!("ping {i}\n");
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut back = vec![0u8; line.len()];
        s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
        if back != line.as_bytes() {
            return Err(format!("echo: {:?}", String::from_utf8_lossy(&back)));
        }
        drop(permit);
        gate.hold().await;
        s.shutdown().await.map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn http(addr: String, i: usize, gate: Arc<Gate>) -> Result<(), String> {
        let permit = gate.opening.acquire().await.map_err(|e| e.to_string())?;
        let s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let mut s = BufReader::new(s);
        let req = format!("GET /load/{i} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: load\r\n\r\n");
        s.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        s.read_line(&mut status).await.map_err(|e| e.to_string())?;
        if !status.contains(" 200 ") {
            return Err(format!("status {status:?}"));
        }
        let mut len = None;
        loop {
            let mut h = String::new();
            if s.read_line(&mut h).await.map_err(|e| e.to_string())? == 0 {
                return Err("EOF in headers".into());
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; len.ok_or("no content-length")?];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        if !body.starts_with(b"hello from") {
            return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
        }
        drop(permit);
        gate.hold().await;
        drop(s);
        Ok(())
    }

    async fn pg(conninfo: String, i: usize, gate: Arc<Gate>) -> Result<(), String> {
        let permit = gate.opening.acquire().await.map_err(|e| e.to_string())?;
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let driver = tokio::spawn(conn);
        let row = client
            .query_one("SELECT $1::int + 1", &[&(i as i32)])
            .await
            .map_err(|e| format!("query: {e}"))?;
        if row.get::<_, i32>(0) != i as i32 + 1 {
            return Err("wrong answer".into());
        }
        drop(permit);
        gate.hold().await;
        drop(client);
        driver
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connection: {e}"))?;
        Ok(())
    }

    /// OpenSSH's ssh, run by this agent: the remote command says it is
    /// ready, then waits for a line on stdin, which comes at release.
    async fn ssh_session(argv: Vec<String>, i: usize, gate: Arc<Gate>) -> Result<(), String> {
        let permit = gate.opening.acquire().await.map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .arg(format!("echo ready {i}; read line; echo \"bye $line\""))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut out = BufReader::new(child.stdout.take().ok_or("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).await.map_err(|e| e.to_string())?;
        if line != format!("ready {i}\n") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            return Err(format!("ssh said {line:?}; {err}"));
        }
        drop(permit);
        gate.hold().await;
        let mut stdin = child.stdin.take().ok_or("stdin")?;
        stdin
            .write_all(format!("{i}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        drop(stdin);
        line.clear();
        out.read_line(&mut line).await.map_err(|e| e.to_string())?;
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if line != format!("bye {i}\n") || !status.success() {
            return Err(format!("ssh ended with {status}: {line:?}"));
        }
        Ok(())
    }
}

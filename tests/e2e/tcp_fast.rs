//! TCP passthrough through the kernel (issue 15): once a `tcp` target's
//! connect is allowed, the agent's bytes go from its socket straight to the
//! daemon's upstream socket (sk_msg redirect), and the lifecycle stays
//! true: integrity both ways, byte counts in `session_closed`, half-close,
//! upstream reset, a reload cut, SIGTERM and SIGKILL mid-transfer (nothing
//! reaches the upstream after the daemon is gone, no pins left behind),
//! and the attacks on the pairing itself.
//!
//! The agent is a Python client under `blastgate run`; the upstream is a
//! server in this process that hashes what it receives.

mod harness;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use harness::{pg_gateway::permissive_policies, *};
use serde_json::Value;
use sha2::{Digest, Sha256};

const AGENT: &str = "claude";
const TARGET: &str = "bulk-tcp";
const MIB: u64 = 1 << 20;

/// The agent: modes `bulk` (send N bytes while reading to EOF, then print
/// both hashes), `stream` (send until an error, print how far it got),
/// `fastopen` (its first bytes ride in the SYN, then as `bulk`).
const AGENT_PY: &str = r#"
import hashlib, json, socket, sys, threading, time, random
mode, host, port, n, greet, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6].encode()
base = random.Random(tag).randbytes((1 << 20) + 4096)
def chunks(total):
    i = 0
    while total > 0:
        off = (i * 61) % 4096
        c = memoryview(base)[off:off + min(total, 1 << 20)]
        i += 1
        total -= len(c)
        yield c
out = {"mode": mode}
import os
time.sleep(float(os.environ.get("AGENT_DELAY", "0")))
try:
    if mode == "fastopen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        first = tag + b"|tfo|"
        s.sendto(first, socket.MSG_FASTOPEN, (host, port))
    else:
        s = socket.create_connection((host, port))
        first = b""
    if greet:
        g = s.recv(1)
        if not g:
            raise OSError("no greeting")
        out["greeting"] = g.decode()
except OSError as e:
    out["connect_error"] = str(e)
    print(json.dumps(out), flush=True)
    sys.exit(0)
# Non-blocking, one loop for both directions, as curl, ssh or nc do.
# (A blocking recv() in one thread while another writes can get EAGAIN
# from a socket in a sockmap: see README.)
import selectors
s.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
recv = {"sha": hashlib.sha256(), "len": 0, "error": None}
sent = hashlib.sha256(first)
count = len(first)
def forever():
    while True:
        yield from chunks(1 << 30)
gen = forever() if mode == "stream" else chunks(n)
pending = memoryview(b"")
rdone = wdone = False
while not (rdone and wdone):
    events = sel.select(timeout=30)
    if not events:
        out["timeout"] = True
        break
    for _, mask in events:
        if mask & selectors.EVENT_READ and not rdone:
            try:
                b = s.recv(1 << 20)
                if not b:
                    rdone = True
                else:
                    recv["sha"].update(b)
                    recv["len"] += len(b)
            except BlockingIOError:
                pass
            except OSError as e:
                recv["error"] = str(e)
                rdone = True
        if mask & selectors.EVENT_WRITE and not wdone:
            if not len(pending):
                pending = next(gen, None)
                if pending is None:
                    try:
                        s.shutdown(socket.SHUT_WR)
                    except OSError as e:
                        out["send_error"] = str(e)
                    wdone = True
                    pending = memoryview(b"")
                    continue
            try:
                k = s.send(pending)
                sent.update(pending[:k])
                count += k
                pending = pending[k:]
            except BlockingIOError:
                pass
            except OSError as e:
                out["send_error"] = str(e)
                wdone = True
        if rdone and not wdone and "send_error" in out:
            wdone = True
    if wdone:
        sel.modify(s, selectors.EVENT_READ) if not rdone else None
    if out.get("send_error") or recv["error"]:
        if mode == "stream":
            break
out.update({"sent_sha": sent.hexdigest(), "sent": count, "recv_sha": recv["sha"].hexdigest(),
            "recv": recv["len"], "recv_error": recv["error"]})
print(json.dumps(out), flush=True)
"#;

/// How the upstream server treats a connection.
#[derive(Clone, Copy)]
struct Behaviour {
    greeting: bool,
    /// Bytes it sends (then half-closes its side).
    send: u64,
    /// Reset the connection after receiving this many bytes.
    reset_after: Option<u64>,
}

#[derive(Default, Debug, Clone)]
struct Seen {
    recv_sha: String,
    recv: u64,
    sent_sha: String,
    ended: bool,
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
    progress: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    fn start(b: Behaviour) -> Upstream {
        let l = TcpListener::bind("127.0.0.2:0").expect("bind upstream");
        let addr = l.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>> = Default::default();
        let progress = Arc::new(AtomicU64::new(0));
        let (s2, p2) = (seen.clone(), progress.clone());
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let one: Arc<Mutex<Seen>> = Default::default();
                lock(&s2).push(one.clone());
                let p = p2.clone();
                thread::spawn(move || serve(&mut c, b, &one, &p));
            }
        });
        Upstream {
            addr,
            seen,
            progress,
        }
    }

    fn conns(&self) -> Vec<Seen> {
        lock(&self.seen).iter().map(|s| lock(s).clone()).collect()
    }
}

fn pattern_block() -> Vec<u8> {
    (0..(MIB as usize + 4096))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn serve(c: &mut TcpStream, b: Behaviour, seen: &Mutex<Seen>, progress: &AtomicU64) {
    if b.greeting && c.write_all(b"+").is_err() {
        return;
    }
    let writer = c.try_clone().ok().map(|mut w| {
        thread::spawn(move || {
            let block = pattern_block();
            let mut h = Sha256::new();
            let mut left = b.send;
            let mut i = 0usize;
            while left > 0 {
                let off = (i * 61) % 4096;
                let n = left.min(MIB) as usize;
                let chunk = &block[off..off + n];
                if w.write_all(chunk).is_err() {
                    break;
                }
                h.update(chunk);
                left -= n as u64;
                i += 1;
            }
            let _ = w.shutdown(std::net::Shutdown::Write);
            format!("{:x}", h.finalize())
        })
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let want = match b.reset_after {
            Some(r) if total >= r => {
                // RST: linger 0, then close.
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on our own socket with a valid linger.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(c),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&l as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as u32,
                    )
                };
                let _ = c.shutdown(std::net::Shutdown::Both);
                break;
            }
            Some(r) => ((r - total) as usize).min(buf.len()),
            None => buf.len(),
        };
        match c.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
                progress.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let sent_sha = writer.and_then(|w| w.join().ok()).unwrap_or_default();
    let mut s = lock(seen);
    s.recv_sha = format!("{:x}", h.finalize());
    s.recv = total;
    s.sent_sha = sent_sha;
    s.ended = true;
}

/// Fields drop in order: the daemon (stopped, its pins uninstalled with
/// the config) before the directory holding that config.
struct World {
    daemon: Daemon,
    env: Env,
    up: Upstream,
    policies: tempfile::TempDir,
    script: PathBuf,
}

impl World {
    fn start(b: Behaviour) -> Option<World> {
        if !kernel_ready() {
            return None;
        }
        let up = Upstream::start(b);
        let policies = permissive_policies();
        let env = Env::with_bpf(
            "tcp_fast_path = true",
            &format!(
            "[policy]\ndir = \"{}\"\n\n[[targets]]\nname = \"{TARGET}\"\nprotocol = \"tcp\"\naddress = \"{}\"\n",
                policies.path().display(),
                up.addr
            ),
        );
        let script = env.dir.path().join("agent.py");
        std::fs::write(&script, AGENT_PY).expect("agent script");
        let daemon = Daemon::start(&env);
        Some(World {
            env,
            daemon,
            up,
            policies,
            script,
        })
    }

    fn agent(&self, mode: &str, bytes: u64, greet: bool, tag: &str, to: SocketAddr) -> Child {
        self.agent_cmd(mode, bytes, greet, tag, to)
            .spawn()
            .expect("spawn agent")
    }

    fn agent_cmd(&self, mode: &str, bytes: u64, greet: bool, tag: &str, to: SocketAddr) -> Command {
        let mut c = self.env.agent(
            AGENT,
            &[
                "python3",
                &self.script.display().to_string(),
                mode,
                &to.ip().to_string(),
                &to.port().to_string(),
                &bytes.to_string(),
                if greet { "1" } else { "0" },
                tag,
            ],
        );
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }
}

/// Kills the agent if a test fails before it ended.
struct Agent(Option<Child>);

impl Agent {
    fn finish(mut self, within: Duration) -> Value {
        let mut c = self.0.take().expect("agent");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !matches!(c.try_wait(), Ok(Some(_))) {
            let _ = c.kill();
            let _ = c.wait();
            panic!("the agent did not finish within {within:?}");
        }
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = c.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("agent printed {out:?} ({e}); stderr: {err}"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn closed_sessions(env: &Env) -> Vec<Value> {
    env.events()
        .into_iter()
        .filter(|e| e["kind"] == "session_closed" && e["target"] == TARGET)
        .collect()
}

fn wait_closed(env: &Env, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(20), || {
        let c = closed_sessions(env);
        (c.len() >= n).then_some(c)
    })
    .unwrap_or_else(|| panic!("{n} session_closed expected; events: {:#?}", env.events()))
}

/// What the daemon's log says the kernel redirected for its sessions.
fn redirected(d: &Daemon) -> Vec<u64> {
    strip_ansi(&d.log_text())
        .lines()
        .filter(|l| l.contains("TCP fast path unpaired"))
        .filter_map(|l| {
            let at = l.find("redirected=")? + "redirected=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn ended(up: &Upstream, n: usize) -> Vec<Seen> {
    wait_until(Duration::from_secs(20), || {
        let c = up.conns();
        (c.len() == n && c.iter().all(|s| s.ended)).then_some(c)
    })
    .expect("the upstream saw every connection end")
}

fn bulk_both_ways(greet: bool, mib: u64) {
    let _g = serial();
    let bytes = mib * MIB;
    let Some(w) = World::start(Behaviour {
        greeting: greet,
        send: bytes,
        reset_after: None,
    }) else {
        return;
    };
    let agent = Agent(Some(w.agent("bulk", bytes, greet, "a", w.up.addr)));
    let out = agent.finish(Duration::from_secs(240));
    assert!(out.get("send_error").is_none(), "{out}");
    let conns = wait_until(Duration::from_secs(20), || {
        let c = w.up.conns();
        (c.len() == 1 && c[0].ended).then_some(c)
    })
    .expect("the upstream saw the connection end");
    assert_eq!(conns[0].recv, bytes, "upstream received {out}");
    assert_eq!(
        conns[0].recv_sha, out["sent_sha"],
        "agent → upstream corrupted"
    );
    assert_eq!(out["recv"], bytes, "{out}");
    assert_eq!(
        out["recv_sha"],
        conns[0].sent_sha.as_str(),
        "upstream → agent corrupted"
    );
    let closed = wait_closed(&w.env, 1);
    let c = &closed[0];
    assert_eq!(c["verdict"], "allow", "{c}");
    assert_eq!(c["bytes_from_agent"], bytes, "{c}");
    assert_eq!(c["bytes_to_agent"], bytes + u64::from(greet), "{c}");
    let r = redirected(&w.daemon);
    assert_eq!(r.len(), 1, "{}", w.daemon.log_text());
    if greet {
        // The agent spoke only after the greeting: every byte it sent
        // went straight to the upstream socket.
        assert_eq!(r[0], bytes, "redirected");
    }
}

#[test]
fn bulk_256_mib_both_ways_after_a_greeting_goes_through_the_kernel_intact() {
    bulk_both_ways(true, 256);
}

#[test]
fn bulk_256_mib_both_ways_from_the_first_byte_is_intact_and_counted() {
    bulk_both_ways(false, 256);
}

#[test]
fn tcp_fast_open_data_keeps_its_place_in_the_stream() {
    let _g = serial();
    // Attack: bytes written before the socket is established (TCP Fast
    // Open) never pass the kernel's count; such a socket must stay on the
    // proxy's path, or a switch could put later bytes before them.
    let Some(w) = World::start(Behaviour {
        greeting: false,
        send: 0,
        reset_after: None,
    }) else {
        return;
    };
    // fastopen mode sends a first message; with TFO refused by the proxy
    // listener it is sent again after the handshake, through the proxy.
    let agent = Agent(Some(w.agent("fastopen", 32 * MIB, false, "tfo", w.up.addr)));
    let out = agent.finish(Duration::from_secs(120));
    let conns = wait_until(Duration::from_secs(20), || {
        let c = w.up.conns();
        (c.len() == 1 && c[0].ended).then_some(c)
    })
    .expect("upstream saw the end");
    assert_eq!(conns[0].recv_sha, out["sent_sha"], "{out}");
    assert_eq!(conns[0].recv, out["sent"].as_u64().unwrap_or(0));
    let closed = wait_closed(&w.env, 1);
    assert_eq!(closed[0]["bytes_from_agent"], out["sent"], "{}", closed[0]);
}

#[test]
fn half_close_and_upstream_reset_behave_as_the_relay_does() {
    let _g = serial();
    let Some(w) = World::start(Behaviour {
        greeting: true,
        send: 3 * MIB,
        reset_after: None,
    }) else {
        return;
    };
    // Half-close: the agent's SHUT_WR reaches the upstream after its
    // bytes, and the upstream's answer still arrives in full.
    let out =
        Agent(Some(w.agent("bulk", 5 * MIB, true, "h", w.up.addr))).finish(Duration::from_secs(60));
    assert_eq!(out["recv"], 3 * MIB, "{out}");
    let c = ended(&w.up, 1);
    assert_eq!(c[0].recv, 5 * MIB);
    assert_eq!(c[0].recv_sha, out["sent_sha"]);
    drop(w);

    let Some(w) = World::start(Behaviour {
        greeting: true,
        send: 0,
        reset_after: Some(2 * MIB),
    }) else {
        return;
    };
    let out =
        Agent(Some(w.agent("stream", 0, true, "r", w.up.addr))).finish(Duration::from_secs(30));
    assert!(
        out.get("send_error").is_some() || out["recv_error"].is_string(),
        "an upstream reset reaches the agent: {out}"
    );
    let closed = wait_closed(&w.env, 1);
    assert!(
        closed[0]["bytes_from_agent"].as_u64().unwrap_or(0) >= 2 * MIB,
        "{}",
        closed[0]
    );
}

const CUT_OFF: &str = "@id(\"cut-off\")\n@reason(\"this agent may no longer connect\")\n\
forbid (principal, action == Action::\"connect\", resource)\nwhen { principal.name == \"claude\" };\n";

/// Progress of the upstream's received bytes settles within `within`.
fn settles(p: &AtomicU64, within: Duration) -> u64 {
    let mut last = p.load(Ordering::Relaxed);
    let end = Instant::now() + within;
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = p.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
        assert!(Instant::now() < end, "the upstream kept receiving");
    }
}

fn streaming(w: &World) -> Agent {
    let agent = Agent(Some(w.agent("stream", 0, true, "s", w.up.addr)));
    let start = w.up.progress.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(20), || {
        (w.up.progress.load(Ordering::Relaxed) > start + 4 * MIB).then_some(())
    })
    .expect("the agent streams to the upstream");
    agent
}

#[test]
fn a_reload_that_refuses_cuts_a_paired_session_at_once() {
    let _g = serial();
    let Some(w) = World::start(Behaviour {
        greeting: true,
        send: 0,
        reset_after: None,
    }) else {
        return;
    };
    let agent = streaming(&w);
    std::fs::write(w.policies.path().join("cut.cedar"), CUT_OFF).expect("edit policies");
    w.env
        .wait_event("the reload", |e| e["kind"] == "policy_reloaded");
    let out = agent.finish(Duration::from_secs(20));
    assert!(
        out.get("send_error").is_some(),
        "the agent's sends fail: {out}"
    );
    settles(&w.up.progress, Duration::from_secs(5));
    let closed = wait_closed(&w.env, 1);
    let c = &closed[0];
    assert_eq!(c["verdict"], "error");
    assert!(
        c["reason"].as_str().unwrap_or("").contains("cut-off"),
        "{c}"
    );
    let got = w.up.conns()[0].recv;
    let counted = c["bytes_from_agent"].as_u64().unwrap_or(0);
    assert!(
        counted >= got,
        "recorded {counted} < {got} received upstream"
    );
    assert_eq!(redirected(&w.daemon).len(), 1, "{}", w.daemon.log_text());
}

#[test]
fn sigterm_mid_transfer_closes_the_session_with_its_bytes() {
    let _g = serial();
    let Some(mut w) = World::start(Behaviour {
        greeting: true,
        send: 0,
        reset_after: None,
    }) else {
        return;
    };
    let agent = streaming(&w);
    w.daemon.stop();
    let out = agent.finish(Duration::from_secs(20));
    assert!(out.get("send_error").is_some(), "{out}");
    let got = settles(&w.up.progress, Duration::from_secs(5));
    let closed = wait_closed(&w.env, 1);
    let counted = closed[0]["bytes_from_agent"].as_u64().unwrap_or(0);
    assert!(counted >= got, "recorded {counted} < {got}");
    assert!(got > 0);
}

#[test]
fn sigkill_mid_transfer_leaves_no_path_to_the_upstream_and_no_pins() {
    let _g = serial();
    let Some(mut w) = World::start(Behaviour {
        greeting: true,
        send: 0,
        reset_after: None,
    }) else {
        return;
    };
    let agent = streaming(&w);
    // Labelled while the daemon runs; connects after it died.
    let mut late = w.agent_cmd("bulk", MIB, true, "x", w.up.addr);
    late.env("AGENT_DELAY", "4");
    let late = Agent(Some(late.spawn().expect("spawn late agent")));
    thread::sleep(Duration::from_secs(1));
    w.daemon.kill9();
    // Its upstream socket died with it: the kernel dropped it from the
    // map, so the agent's paired socket has nowhere to send.
    let out = agent.finish(Duration::from_secs(20));
    assert!(out.get("send_error").is_some(), "{out}");
    let before = settles(&w.up.progress, Duration::from_secs(5));
    // The pins stay (fail closed): a new connection is refused, not sent.
    let again = late.finish(Duration::from_secs(30));
    assert!(again.get("connect_error").is_some(), "{again}");
    assert_eq!(w.up.conns().len(), 1, "a connection reached the upstream");
    assert_eq!(w.up.progress.load(Ordering::Relaxed), before);
    // The uninstall (the Daemon guard's) leaves nothing pinned.
    let pins = w.env.pin_dir.clone();
    drop(w);
    assert!(!pins.exists(), "{} left behind", pins.display());
}

/// Attack: two agents' paired sessions at once, each to its own upstream;
/// each upstream gets exactly its own agent's bytes.
#[test]
fn paired_sessions_cannot_reach_each_others_upstream() {
    let _g = serial();
    let Some(w) = World::start(Behaviour {
        greeting: true,
        send: MIB,
        reset_after: None,
    }) else {
        return;
    };
    let a = Agent(Some(w.agent("bulk", 64 * MIB, true, "first", w.up.addr)));
    let b = Agent(Some(w.agent("bulk", 48 * MIB, true, "second", w.up.addr)));
    let (oa, ob) = (
        a.finish(Duration::from_secs(120)),
        b.finish(Duration::from_secs(120)),
    );
    let conns = wait_until(Duration::from_secs(20), || {
        let c = w.up.conns();
        (c.len() == 2 && c.iter().all(|s| s.ended)).then_some(c)
    })
    .expect("both ended");
    let mut got: Vec<(u64, String)> = conns.iter().map(|c| (c.recv, c.recv_sha.clone())).collect();
    got.sort();
    let mut want = vec![
        (48 * MIB, ob["sent_sha"].as_str().unwrap_or("").to_string()),
        (64 * MIB, oa["sent_sha"].as_str().unwrap_or("").to_string()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(redirected(&w.daemon).iter().sum::<u64>(), 112 * MIB);
}

/// Attack: an unprivileged agent cannot open the fast path's maps to pair
/// its own sockets or re-point a pairing.
#[test]
fn an_unprivileged_agent_cannot_touch_the_pairing_maps() {
    let _g = serial();
    let Some(w) = World::start(Behaviour {
        greeting: true,
        send: 0,
        reset_after: None,
    }) else {
        return;
    };
    let maps = w.env.pin_dir.join("maps");
    for name in [
        "BG_FAST_PAIRS",
        "BG_FAST_UPS",
        "BG_FAST_AGENTS",
        "BG_FAST_COUNTS",
    ] {
        let path = maps.join(name);
        assert!(path.exists(), "{} pinned", path.display());
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([
                "python3",
                "-c",
                "import os,sys; os.open(sys.argv[1], os.O_RDWR)",
            ])
            .arg(&path)
            .output()
            .expect("setpriv");
        assert!(!out.status.success(), "{name} opened by nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{name}: {err}");
    }
}

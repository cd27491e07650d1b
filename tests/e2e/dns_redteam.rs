//! Red team of blastgate's resolver and egress by name (commit 088554a),
//! as a hostile agent: each `red_team_*` test fails on the code it was
//! written against, for the reason in its comment; each also checks a
//! harmless look-alike that must keep working.
//!
//! Servers live in a network namespace of the test's own (10.231.0.0/16);
//! every agent lookup goes to 127.0.0.53 (a bind-mounted resolv.conf or
//! `dig @127.0.0.53`), answered by blastgate's resolver forwarding to a
//! dnsmasq on loopback: nothing leaves the machine.

mod harness;

use std::time::Duration;

use harness::{dnsmasq::Dnsmasq, netns::NetNs, *};
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// An HTTP/1.1 server with keep-alive whose answer is the Host it was
/// asked for (`host=NAME`), as a virtual-hosting server or CDN front
/// would pick a site by it.
const ECHO_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("host=%s\n" % self.headers.get("Host")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

/// Resolves `argv[1]` through glibc (so through blastgate), opens one TCP
/// connection to it on port `argv[2]` and sends one GET per remaining
/// argument (the Host of each) on that same connection, printing each
/// answer's body.
const KEEPALIVE_CLIENT: &str = r#"
import socket, sys
name, port, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ip = socket.gethostbyname(name)
s = socket.create_connection((ip, port), timeout=5)
buf = b""
for host in hosts:
    try:
        s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                raise EOFError
            buf += d
        head, buf = buf.split(b"\r\n\r\n", 1)
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":", 1)[1])
        while len(buf) < n:
            d = s.recv(4096)
            if not d:
                raise EOFError
            buf += d
        print(buf[:n].decode().strip(), flush=True)
        buf = buf[n:]
    except Exception as e:
        print("failed %s: %r" % (host, e), flush=True)
        break
"#;

/// A namespace with echo servers on `ports`, dnsmasq serving `names` at
/// the namespace's address, and a daemon with `extra` (egress, targets).
struct Scene {
    env: Env,
    dir: tempfile::TempDir,
    _daemon: Daemon,
    _zone: Dnsmasq,
    _ns: NetNs,
}

impl Scene {
    fn start(ports: &[u16], names: &[&str], extra: &str) -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |n: &str, body: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, body).expect("script");
            p.display().to_string()
        };
        let server = write("server.py", ECHO_SERVER);
        write("client.py", KEEPALIVE_CLIENT);
        let mut ns = NetNs::new();
        let ip = ns.ns_ip;
        for port in ports {
            ns.spawn(&[PYTHON, &server, &ip.to_string(), &port.to_string()]);
        }
        let up = wait_until(Duration::from_secs(10), || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect((ip, *p)).is_ok())
                .then_some(())
        });
        assert!(up.is_some(), "the servers in the namespace did not start");
        let zone_text: String = names.iter().map(|n| format!("{ip} {n}\n")).collect();
        let zone = Dnsmasq::start(&zone_text);
        let env = Env::with_sections("", &format!("upstreams = [\"{}\"]\n", zone.addr), extra);
        let daemon = Daemon::start(&env);
        Scene {
            env,
            dir,
            _daemon: daemon,
            _zone: zone,
            _ns: ns,
        }
    }

    /// The keep-alive client as `agent`: one connection to `name:port`,
    /// one request per Host in `hosts`.
    fn requests(&self, agent: &str, name: &str, port: u16, hosts: &[&str]) -> String {
        let client = self.dir.path().join("client.py");
        let script = format!(
            "{PYTHON} {} {name} {port} {}",
            client.display(),
            hosts.join(" ")
        );
        text(&self.env.agent_resolving(agent, &script))
    }
}

fn session_to(env: &Env, port: u16) -> Value {
    env.wait_event(&format!("a session to port {port}"), |e| {
        (e["kind"] == "session_opened" || e["kind"] == "session_denied")
            && e["orig_dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
    })
}

/// Red team: plain-HTTP egress reads only the connection's first request.
/// HTTP/1.1 keeps the connection open, so a second request on it, with
/// `Host: denied.test`, goes to the same server untouched: a virtual
/// host or CDN front serving many sites answers for the denied one. The
/// passthrough should read every request's Host (it can: the bytes are
/// clear text), or close the connection after the first response.
#[test]
fn red_team_http_keepalive_second_request_reaches_a_denied_host() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let scene = Scene::start(
        &[80],
        &["allowed.test", "denied.test"],
        "[egress]\nallow = [\"allowed.test:80\"]\n",
    );
    // Look-alike: two requests for the allowed host from a real client.
    // The fix passes one request per connection (`Connection: close`):
    // curl opens a second connection for the second, as HTTP clients do.
    let ok = text(&scene.env.agent_resolving(
        "ci",
        "curl -sS --max-time 10 -w '%{http_code}\\n' http://allowed.test/ http://allowed.test/",
    ));
    assert_eq!(
        ok.lines().filter(|l| *l == "host=allowed.test").count(),
        2,
        "two requests to the allowed host broke: {ok}"
    );
    // The attack: the allowed host first, the denied one second.
    let out = scene.requests("ci", "allowed.test", 80, &["allowed.test", "denied.test"]);
    assert!(
        out.lines().any(|l| l == "host=allowed.test"),
        "the first request did not pass: {out}"
    );
    assert!(
        !out.lines().any(|l| l == "host=denied.test"),
        "a second request on the egress connection reached the server as denied.test: {out}"
    );
}

/// Red team: a target named by a wildcard `hosts` entry is recognised
/// only by a name some agent (or the daemon) learned for its address,
/// and the daemon resolves only exact `hosts` names itself. An agent
/// that resolves an *allowed egress name* sharing the target's address
/// (one front serving both, as in the README's own example of a target
/// and an egress name sharing an address) is routed to egress: the bytes
/// reach the target's server without its gateway, its policy or its
/// records (then `Host: api.corp.test` on the same connection, see the
/// keep-alive finding, or inside TLS). README: "a server that is a
/// target stays one, whatever other name ... also leads to its address".
/// The exact-name look-alike is routed to its target as promised.
///
/// Fixed as far as it can be: a wildcard target's addresses cannot be
/// known before some name is resolved, so the connection may be egress,
/// but no request naming the target's name (Host, SNI) is passed as
/// egress, and a plain connection carries one request only.
#[test]
fn red_team_wildcard_hosts_target_is_reached_as_egress_by_an_allowed_name() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let scene = Scene::start(
        &[80, 8080],
        &["allowed.test", "api.corp.test", "db.exact.test"],
        "[egress]\nallow = [\"allowed.test:80\", \"allowed.test:8080\"]\n\n\
         [[targets]]\nname = \"corp-wild\"\nprotocol = \"tcp\"\nhosts = [\"*.corp.test:80\"]\n\n\
         [[targets]]\nname = \"corp-exact\"\nprotocol = \"tcp\"\nhosts = [\"db.exact.test:8080\"]\n",
    );
    let env = &scene.env;
    // Look-alike: the exact name's server, reached by the allowed name,
    // is still its target.
    let out = scene.requests("ci", "allowed.test", 8080, &["allowed.test"]);
    let exact = session_to(env, 8080);
    assert_eq!(exact["target"], "corp-exact", "{exact}\n{out}");
    // The wildcard target's server, reached by the allowed name.
    let out = scene.requests("ci", "allowed.test", 80, &["allowed.test", "api.corp.test"]);
    let wild = session_to(env, 80);
    assert!(
        wild["target"] != "egress" || !out.contains("host=api.corp.test"),
        "the server of target corp-wild was reached as api.corp.test through egress, past \
         its gateway: {wild}\nclient saw: {out}"
    );
    // The target's name first, on the allowed name's connection.
    let out = scene.requests("ci", "allowed.test", 80, &["api.corp.test"]);
    assert!(
        !out.contains("host=api.corp.test"),
        "a request for the target's name passed as egress: {out}"
    );
}

/// One agent floods 127.0.0.53:53 with queries from a few processes for
/// `secs` seconds (or until `stop` exists), ignoring the answers.
const FLOOD: &str = r#"
import os, socket, sys, time
secs, stop = float(sys.argv[1]), sys.argv[2]
# id 0x4242, RD, one question: x.denied.test A IN
q = bytes.fromhex("424201000001000000000000") + b"\x01x\x06denied\x04test\x00" + b"\x00\x01\x00\x01"
for _ in range(3):
    if os.fork() == 0:
        break
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
end = time.time() + secs
n = 0
while time.time() < end:
    for _ in range(200):
        try:
            s.sendto(q, ("127.0.0.53", 53))
        except OSError:
            pass
    n += 200
    if os.path.exists(stop):
        break
print("sent", n, flush=True)
"#;

/// Red team: the per-agent query rate (`dns.queries_per_sec`, `burst`)
/// bounds what is forwarded, not what is recorded. Every datagram an
/// agent sends to port 53 becomes its own `dns_query` record in the spool
/// (and later in ClickHouse): over its rate, "not a DNS message", "not
/// one standard query", all of them. One agent sending as fast as it can
/// for a few seconds writes tens of thousands of records per second
/// (measured here: 59,112 records in 6 s from 4 Python processes), filling the
/// spool's disk and the security team's tables, with nothing but its
/// rate to show for it. Suggested: past the rate, count refusals per
/// agent and write one summary record per interval (and refuse
/// non-DNS datagrams before they are identified and recorded one by
/// one). The look-alike: another agent's lookups still work meanwhile
/// (they did here, dig +time=2).
#[test]
fn red_team_a_rate_limited_agent_writes_unbounded_dns_records() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let scene = Scene::start(
        &[80],
        &["allowed.test"],
        "[egress]\nallow = [\"allowed.test:80\"]\n",
    );
    let env = &scene.env;
    let flood = scene.dir.path().join("flood.py");
    std::fs::write(&flood, FLOOD).expect("flood script");
    let stop = scene.dir.path().join("stop");
    let lookups = |n: usize| {
        let script = format!(
            "ok=0; for i in $(seq 1 {n}); do \
             r=$(dig +time=2 +tries=1 +short @127.0.0.53 allowed.test A); \
             [ -n \"$r\" ] && ok=$((ok+1)); done; echo ok=$ok"
        );
        let out = env
            .agent("victim", &["sh", "-c", &script])
            .output()
            .expect("dig");
        text(&out)
    };
    const SECS: u64 = 6;
    let started = std::time::Instant::now();
    let flooder = env
        .agent(
            "flood",
            &[
                PYTHON,
                &flood.display().to_string(),
                &SECS.to_string(),
                &stop.display().to_string(),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flood");
    std::thread::sleep(Duration::from_millis(1000));
    // Look-alike: another agent is still answered during the flood.
    let stormy = lookups(3);
    let flooded = flooder.wait_with_output().expect("flood ended");
    let secs = started.elapsed().as_secs().max(SECS);
    assert!(
        stormy.contains("ok=3"),
        "another agent's lookups failed during the flood: {stormy}"
    );
    // Whatever the agent's rate allows (burst 400 + 100/s, defaults),
    // twice over, plus room for a summary record a second.
    let bound = 2 * (400 + 100 * secs as usize) + secs as usize;
    let recorded =
        env.count_events(|e| e["kind"] == "dns_query" && e["caller"]["agent"] == "flood");
    assert!(
        recorded <= bound,
        "one agent over its DNS rate wrote {recorded} dns_query records in {secs} s \
         (its rate allows {} queries): {}",
        400 + 100 * secs,
        text(&flooded)
    );
}

//! `cargo xtask bench --only http`: HTTPS clients against one real
//! upstream over four paths in the same run:
//!
//! - **direct**: client → upstream;
//! - **blastgate**: the client runs under `blastgate run` and dials the
//!   upstream's own address; the kernel redirects it to the daemon, whose
//!   `https` target for that address (`bench-api`) terminates TLS with a
//!   leaf from the local CA (no `hostnames`: the leaf names the target's
//!   IP), decides every request by the shipped Cedar policies
//!   (`http-any`), sets a bearer token read from a secret file, forwards
//!   over TLS checked against the upstream's CA and records the request in
//!   its spool. As in the postgres bench, no masking rule applies to this
//!   target: masking is measured on its own (below);
//! - **nginx**: Debian's nginx 1.22 as a TLS-terminating reverse proxy
//!   (h2 on the listener, `proxy_pass https://` to an upstream keepalive
//!   pool, the upstream's certificate checked, the same token set): the
//!   peer users would otherwise deploy;
//! - **mitmproxy**: mitmdump 11 in reverse-proxy mode (upstream checked
//!   against its CA, the same token set, quiet, no flow storage): the
//!   intercepting peer in Python.
//!
//! The upstream is a second, throwaway nginx on 127.0.0.2 (h2, its own CA
//! and leaf made with the `openssl` CLI) serving a ~100-byte JSON document,
//! a 100 KB JSON list and `/auth` (says whether the Authorization it
//! received is none, the token, or other: which shows every proxy injected
//! the token without sending it back, which blastgate would scrub). Both nginx instances run
//! by hand from configs in the scratch directory (`worker_processes 1`,
//! `daemon off`), never as the system service.
//!
//! Cells, each run on every path in turn in each repetition so that drift
//! on this shared machine hits all paths alike (medians reported, req/s
//! also as a ratio to direct):
//! - `wrk`, HTTP/1.1 over TLS, keep-alive, 1 and 32 connections (`-t1`,
//!   `--latency`): req/s, p50/p99;
//! - `h2load`, h2 over TLS, 8 connections x 10 streams: req/s;
//! - `ab`, a new TLS connection per request (no `-k`), concurrency 1 and
//!   8: connections/s.
//!
//! Egress passthrough (TLS not terminated): the same cells against a
//! second nginx upstream (same document, same certificate) in a network
//! namespace of the bench's own (a veth pair on 10.231.250.0/30, a block
//! the e2e tests never pick: egress never reaches loopback), reached by
//! name, `egress.bench.test`:443, over two paths:
//! - **egress-direct**: the client, not enrolled, finds the name in a
//!   hosts file bind-mounted over /etc/hosts;
//! - **egress**: the client runs under `blastgate run` and resolves the
//!   name through a resolv.conf saying `nameserver 127.0.0.53`
//!   (bind-mounted in a mount namespace of its own, `unshare -m`): the
//!   kernel points the lookup at the daemon's resolver, which forwards it
//!   to a dnsmasq on loopback answering from a hosts file and learns the
//!   address; the connection is redirected to the daemon, which reads the
//!   ClientHello's SNI, passes it by `[egress] allow` and relays the TLS
//!   untouched.
//!
//! Both paths mount the same resolv.conf, so no lookup leaves loopback.
//! Afterwards the spool must hold a `session_closed` record with target
//! `egress` and `dst_name` `egress.bench.test` for at least every TLS
//! connection the namespace's upstream accepted during the egress runs,
//! and no refused session for the name: a bench that measured a refused
//! path fails.
//!
//! Masking cost: the 100 KB list (one email per item) fetched one request
//! at a time (`wrk -c1`) through three targets of the same daemon, each on
//! its own upstream port: `bench-api` (no rule applies: the body is
//! streamed as it comes), `bench-field` (a `json_paths` field rule,
//! `$.items[*].email`, style hash: every email masked) and
//! `bench-detectors` (the shipped detectors, which find nothing in the
//! list but must parse and scan all of it). The bench's masking.toml is
//! the shipped one with each detector scoped to `bench-detectors`, plus
//! that field rule. The added latency is a target's p50 minus the p50 of
//! `bench-api`; the goal (under 1 ms) is for the field rule.
//!
//! Before measuring, every path is checked with curl: the documents come
//! back byte for byte (masked where a rule applies, and the masked list
//! still parses with every email hashed), the upstream sees the token
//! each proxy sets, and on the blastgate path curl trusts only what
//! `blastgate run` puts in its environment (so an answer proves the
//! connection was intercepted). Every measured run fails on a non-2xx
//! answer, a socket error or a failed request; a failed cell is reported,
//! not retried, and the others go on (the bench exits non-zero at the
//! end). Afterwards the daemon's spool must hold a `request` event for at
//! least every request the clients completed through it.
//!
//! Pinning (design.md, "Benchmark method"), as in the postgres and ssh
//! benches: the clients on CPU 0; the upstream nginx and the proxy under
//! test (the blastgate daemon, the nginx proxy or mitmdump; each idle
//! when it is not the path measured) share CPU 1, so every proxy's CPU is
//! taken from the upstream and direct has CPU 1 to itself: the ratio is
//! the whole cost of the proxy. Override with BLASTGATE_BENCH_CLIENT_CPUS,
//! BLASTGATE_BENCH_SERVER_CPUS and BLASTGATE_BENCH_PROXY_CPUS (taskset
//! lists).
//!
//! Records: as in the other benches, the daemon writes its durable spool
//! (no ClickHouse); the spool's size and request events are reported.
//!
//! Everything started here is stopped on every way out (guards, by pid;
//! children also get PR_SET_PDEATHSIG; nginx masters stop their workers),
//! the bench pin directory is uninstalled, the network namespace deleted
//! and the scratch directory removed.
//!
//! `--tables main,masking,egress` (default all) measures only some of
//! the tables; the nginx proxy and mitmdump start only for `main`, the
//! namespace and dnsmasq only for `egress`.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{
    bench::{free_udp_port, start_dnsmasq, DNSMASQ},
    bench_postgres::{
        check_interrupted, die_with_parent, dir_bytes, free_port, median, prepare, run_bounded,
        tail, Daemon, DaemonOpts, ScratchDir, INTERRUPTED,
    },
    demo::{wait_for, Guard},
    netns::NetNs,
    sh,
};

pub(crate) const NGINX: &str = "/usr/sbin/nginx";
const WRK: &str = "/usr/bin/wrk";
const H2LOAD: &str = "/usr/bin/h2load";
const AB: &str = "/usr/bin/ab";
const CURL: &str = "/usr/bin/curl";
const OPENSSL: &str = "/usr/bin/openssl";
/// In the tools venv `cargo xtask setup` creates (PYTHON_TOOLS).
const MITMDUMP: &str = "/opt/blastgate-tools/venv/bin/mitmdump";
/// Its own pin directory: another bench or a test daemon may be attached
/// at the same time.
const PIN_DIR: &str = "/sys/fs/bpf/blastgate-bench-http";
const AGENT: &str = "bench";
/// Where the upstream listens; the agent dials it and is redirected.
const UPSTREAM_IP: &str = "127.0.0.2";
/// Where the nginx proxy and mitmdump listen.
const FRONT_IP: &str = "127.0.0.1";
/// The name the egress section's clients dial (port 443).
const EGRESS_NAME: &str = "egress.bench.test";
/// The egress section's network namespace and the host's end of its veth
/// pair.
const EGRESS_NETNS: &str = "bgbench-egress";
const EGRESS_HOST_IF: &str = "bgbench250";
/// Its /30: the e2e tests' blocks (tests/e2e/harness/netns.rs) end below
/// 10.231.125.0.
const EGRESS_BLOCK: Ipv4Addr = Ipv4Addr::new(10, 231, 250, 0);
/// The credential every proxy puts in Authorization (blastgate from its
/// secret file, nginx and mitmproxy from their configs).
const TOKEN: &str = "bench-upstream-token-7f3a";
/// The small document (about 100 bytes).
const SMALL: &str = "{\"id\":42,\"name\":\"widget\",\"status\":\"active\",\"owner\":\"team-platform\",\"updated\":\"2024-05-01T12:00:00Z\"}\n";
/// The size the big document reaches at least.
const BIG_BYTES: usize = 100 * 1024;
/// The field rule of `bench-masked`.
const MASK_RULE: &str = "\
# Added by `cargo xtask bench --only http`: every item of the 100 KB list
# carries one masked email.
[[field]]
id = \"bench-item-email\"
targets = [\"bench-field\"]
json_paths = [\"$.items[*].email\"]
style = \"hash\"
";

pub struct Opts {
    pub reps: usize,
    /// Seconds per client run.
    pub secs: u64,
    pub tables: Tables,
}

/// Which tables a run measures.
#[derive(Clone, Copy)]
pub struct Tables {
    /// The main cells: direct, blastgate, nginx, mitmproxy.
    pub main: bool,
    pub masking: bool,
    /// Egress passthrough against direct.
    pub egress: bool,
}

impl Tables {
    /// `main,masking,egress`, any of them.
    pub fn parse(list: &str) -> Result<Tables> {
        let mut t = Tables {
            main: false,
            masking: false,
            egress: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "main" => t.main = true,
                "masking" => t.masking = true,
                "egress" => t.egress = true,
                other => bail!("--tables takes main, masking and egress, not {other:?}"),
            }
        }
        if !(t.main || t.masking || t.egress) {
            bail!("--tables names no table");
        }
        Ok(t)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// wrk, HTTP/1.1 over TLS, keep-alive, the small document.
    Wrk { conns: u32 },
    /// h2load, h2 over TLS, the small document.
    H2load { clients: u32, streams: u32 },
    /// ab, a new TLS connection per request, the small document.
    Ab { conc: u32 },
    /// wrk -c1 on the 100 KB list (the masking section).
    Big,
}

const CELLS: [Cell; 5] = [
    Cell::Wrk { conns: 1 },
    Cell::Wrk { conns: 32 },
    Cell::H2load {
        clients: 8,
        streams: 10,
    },
    Cell::Ab { conc: 1 },
    Cell::Ab { conc: 8 },
];

impl Cell {
    fn name(self) -> String {
        match self {
            Cell::Wrk { conns } => format!("wrk h1.1 keep-alive c{conns}"),
            Cell::H2load { clients, streams } => format!("h2load h2 c{clients} m{streams}"),
            Cell::Ab { conc } => format!("ab new TLS conn c{conc}"),
            Cell::Big => "wrk h1.1 c1 100 KB".into(),
        }
    }

    fn key(self) -> String {
        match self {
            Cell::Wrk { conns } => format!("wrk_c{conns}"),
            Cell::H2load { clients, streams } => format!("h2load_c{clients}_m{streams}"),
            Cell::Ab { conc } => format!("ab_c{conc}"),
            Cell::Big => "wrk_c1_big".into(),
        }
    }

    /// What the req/s column means for this client.
    fn unit(self) -> &'static str {
        match self {
            Cell::Ab { .. } => "conn/s",
            _ => "req/s",
        }
    }
}

/// A way from the client to the upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    /// Target `bench-api`: the shipped policies, no masking rule.
    Blastgate,
    Nginx,
    Mitmproxy,
    /// Target `bench-field`: the `json_paths` field rule.
    BlastgateField,
    /// Target `bench-detectors`: the shipped detectors.
    BlastgateDetectors,
    /// To the namespace's upstream by name, the name from a hosts file.
    EgressDirect,
    /// The same, enrolled: the name resolved through blastgate, which
    /// passes the connection by `[egress] allow` after its ClientHello.
    Egress,
}

/// The paths of the main cells, in the order each repetition runs them.
const MAIN: [Via; 4] = [Via::Direct, Via::Blastgate, Via::Nginx, Via::Mitmproxy];
/// The paths of the masking cell.
const MASKING: [Via; 4] = [
    Via::Direct,
    Via::Blastgate,
    Via::BlastgateField,
    Via::BlastgateDetectors,
];
/// The paths of the egress table.
const EGRESS: [Via; 2] = [Via::EgressDirect, Via::Egress];

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Blastgate => "blastgate",
            Via::Nginx => "nginx",
            Via::Mitmproxy => "mitmproxy",
            Via::BlastgateField => "blastgate-field",
            Via::BlastgateDetectors => "blastgate-detectors",
            Via::EgressDirect => "egress-direct",
            Via::Egress => "egress",
        }
    }

    /// How the masking and egress tables name it.
    fn label(self) -> &'static str {
        match self {
            Via::Direct | Via::EgressDirect => "direct",
            Via::Blastgate => "blastgate, no masking rule",
            Via::BlastgateField => "blastgate, json_paths field rule",
            Via::BlastgateDetectors => "blastgate, shipped detectors",
            Via::Nginx => "nginx",
            Via::Mitmproxy => "mitmproxy",
            Via::Egress => "egress",
        }
    }

    /// Whether the client runs under `blastgate run`.
    fn enrolled(self) -> bool {
        self.gateway() || self == Via::Egress
    }

    /// Whether blastgate's HTTP gateway terminates it (and records a
    /// `request` event per request).
    fn gateway(self) -> bool {
        matches!(
            self,
            Via::Blastgate | Via::BlastgateField | Via::BlastgateDetectors
        )
    }

    /// Whether it goes to the namespace's upstream, by name.
    fn by_name(self) -> bool {
        matches!(self, Via::EgressDirect | Via::Egress)
    }
}

/// One client run's numbers (NaN where the client does not say).
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Requests the client completed.
    requests: u64,
    /// CPU time of the proxy's processes / wall time of the run, percent.
    proxy_cpu_pct: f64,
    /// TLS connections the upstream accepted during the run.
    upstream_conns: f64,
}

impl Sample {
    fn empty() -> Sample {
        Sample {
            rps: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            requests: 0,
            proxy_cpu_pct: f64::NAN,
            upstream_conns: f64::NAN,
        }
    }
}

/// Every repetition of one cell on one path.
#[derive(Default)]
struct Outcome {
    samples: Vec<Sample>,
    error: Option<String>,
    /// The first run's command line.
    command: Option<String>,
    /// What the client negotiated (ALPN for h2load, TLS for ab).
    proto: Option<String>,
}

impl Outcome {
    fn med(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }
}

struct Ports {
    /// Upstream ports of the three blastgate targets.
    api: u16,
    field: u16,
    detectors: u16,
    nginx: u16,
    mitm: u16,
}

/// Scratch-directory files the runs need (also the AWS bench's: moto
/// serves the upstream leaf, its nginx peer the front one).
pub(crate) struct Certs {
    pub(crate) ca: PathBuf,
    pub(crate) upstream: (PathBuf, PathBuf),
    pub(crate) front: (PathBuf, PathBuf),
}

/// Where each path is and how the client reaches it.
struct Bench {
    blastgate: PathBuf,
    config: PathBuf,
    client_cpus: String,
    scratch: PathBuf,
    ca: PathBuf,
    /// `nameserver 127.0.0.53`, and a hosts file naming the namespace's
    /// upstream: mounted for the clients of the egress table.
    resolv_conf: PathBuf,
    egress_hosts: PathBuf,
    ports: Ports,
    daemon_pid: Option<u32>,
    nginx_pid: Option<u32>,
    mitm_pid: Option<u32>,
    /// Clock ticks per second (/proc/PID/stat).
    clk_tck: f64,
}

impl Bench {
    fn url(&self, via: Via, doc: &str) -> String {
        let (ip, port) = match via {
            Via::Direct | Via::Blastgate => (UPSTREAM_IP, self.ports.api),
            Via::BlastgateField => (UPSTREAM_IP, self.ports.field),
            Via::BlastgateDetectors => (UPSTREAM_IP, self.ports.detectors),
            Via::Nginx => (FRONT_IP, self.ports.nginx),
            Via::Mitmproxy => (FRONT_IP, self.ports.mitm),
            Via::EgressDirect | Via::Egress => return format!("https://{EGRESS_NAME}{doc}"),
        };
        format!("https://{ip}:{port}{doc}")
    }

    /// `taskset -c CLIENT [blastgate run --agent bench --config C --]`,
    /// and on the egress table's paths `unshare -m sh -c 'mount …'` (the
    /// resolv.conf on both, the hosts file naming the upstream on
    /// egress-direct): the program and its arguments follow.
    fn client(&self, via: Via) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", &self.client_cpus]);
        if via.enrolled() {
            c.arg(&self.blastgate)
                .args(["run", "--agent", AGENT, "--config"])
                .arg(&self.config)
                .arg("--");
        }
        if via.by_name() {
            let hosts = if via == Via::EgressDirect {
                "mount --bind \"$2\" /etc/hosts && "
            } else {
                ""
            };
            c.args(["unshare", "-m", "sh", "-c"])
                .arg(format!(
                    "mount --bind \"$1\" /etc/resolv.conf && {hosts}shift 2 && exec \"$@\""
                ))
                .arg("sh")
                .arg(&self.resolv_conf)
                .arg(&self.egress_hosts);
        }
        c
    }

    fn proxy_pid(&self, via: Via) -> Option<u32> {
        match via {
            Via::Direct | Via::EgressDirect => None,
            Via::Blastgate | Via::BlastgateField | Via::BlastgateDetectors | Via::Egress => {
                self.daemon_pid
            }
            Via::Nginx => self.nginx_pid,
            Via::Mitmproxy => self.mitm_pid,
        }
    }

    /// One document with curl: on the blastgate paths trusting only what
    /// `blastgate run` sets in the environment.
    fn fetch(&self, via: Via, doc: &str) -> Result<String> {
        let mut c = self.client(via);
        c.arg(CURL)
            .args(["-sS", "--fail", "--max-time", "30"])
            .env_remove("CURL_CA_BUNDLE")
            .env_remove("SSL_CERT_FILE");
        match via {
            // Egress passes the upstream's own certificate through: curl
            // checks it against the upstream's CA, for the name.
            Via::Direct | Via::Nginx | Via::EgressDirect | Via::Egress => {
                c.arg("--cacert").arg(&self.ca);
            }
            // mitmproxy's leaf names the upstream, not its listener.
            Via::Mitmproxy => {
                c.arg("-k");
            }
            Via::Blastgate | Via::BlastgateField | Via::BlastgateDetectors => {}
        }
        c.arg(self.url(via, doc)).stdin(Stdio::null());
        sh::stdout(&mut c).with_context(|| format!("curl {doc} via {}", via.name()))
    }

    /// Connections the upstream nginx of `via` has accepted so far
    /// (stub_status), this query's own included.
    fn upstream_accepts(&self, via: Via) -> Option<u64> {
        let direct = if via.by_name() {
            Via::EgressDirect
        } else {
            Via::Direct
        };
        let status = self.fetch(direct, "/nginx_status").ok()?;
        let mut lines = status
            .lines()
            .skip_while(|l| !l.trim().starts_with("server accepts"));
        lines.next()?;
        lines.next()?.split_whitespace().next()?.parse().ok()
    }

    /// One client run of `cell` on `via` for `secs` seconds, with its
    /// command line and what it negotiated.
    fn measure(&self, cell: Cell, via: Via, secs: u64) -> Result<(Sample, String, Option<String>)> {
        check_interrupted()?;
        let doc = if cell == Cell::Big {
            "/big.json"
        } else {
            "/small.json"
        };
        let url = self.url(via, doc);
        let mut c = self.client(via);
        match cell {
            Cell::Wrk { conns } => {
                c.arg(WRK)
                    .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
                    .args(["--latency", "--timeout", "10s"]);
            }
            Cell::Big => {
                c.arg(WRK)
                    .args(["-t1", "-c1", &format!("-d{secs}s")])
                    .args(["--latency", "--timeout", "10s"]);
            }
            Cell::H2load { clients, streams } => {
                c.arg(H2LOAD).args([
                    "-t",
                    "1",
                    "-c",
                    &clients.to_string(),
                    "-m",
                    &streams.to_string(),
                    "-D",
                    &secs.to_string(),
                ]);
            }
            Cell::Ab { conc } => {
                // -n after -t: -t alone caps the run at 50,000 requests.
                // -l: mitmproxy answers HTTP/1.0 without Content-Length, which
                // ab would count as "Length" failures; whole bodies are
                // checked from "HTML transferred" instead.
                c.arg(AB).args([
                    "-q",
                    "-l",
                    "-c",
                    &conc.to_string(),
                    "-t",
                    &secs.to_string(),
                    "-n",
                    "100000000",
                ]);
            }
        }
        c.arg(&url);
        let command = sh::describe(&c);
        let what = format!("{} via {}", cell.name(), via.name());
        let accepts = self.upstream_accepts(via);
        let pid = self.proxy_pid(via);
        let before = pid.map(cpu_ticks);
        let started = Instant::now();
        let out = run_bounded(
            &mut c,
            &self.scratch,
            Duration::from_secs(secs * 3 + 30),
            &what,
        )?;
        let wall = started.elapsed().as_secs_f64();
        let parsed = match cell {
            Cell::Wrk { .. } | Cell::Big => parse_wrk(&out),
            Cell::H2load { .. } => parse_h2load(&out),
            Cell::Ab { .. } => parse_ab(&out, SMALL.len() as u64),
        };
        let (mut sample, proto) = parsed.with_context(|| format!("{what}; it printed:\n{out}"))?;
        if let (Some(pid), Some(before)) = (pid, before) {
            let used = cpu_ticks(pid).saturating_sub(before) as f64 / self.clk_tck;
            sample.proxy_cpu_pct = used / wall * 100.0;
        }
        if let (Some(a), Some(b)) = (accepts, self.upstream_accepts(via)) {
            // The second query's own connection is not the run's.
            sample.upstream_conns = b.saturating_sub(a + 1) as f64;
        }
        Ok((sample, command, proto))
    }

    /// Measures one cell on one path into `o`, unless it already failed.
    /// Errors only when interrupted; a failure is kept in `o`.
    fn run_cell(
        &self,
        cell: Cell,
        via: Via,
        secs: u64,
        o: &mut Outcome,
        through_blastgate: &mut u64,
    ) -> Result<()> {
        // A failed cell is not retried: a hang would cost its time limit
        // again in every repetition.
        if o.error.is_some() {
            return Ok(());
        }
        match self.measure(cell, via, secs) {
            Ok((s, command, proto)) => {
                if via.gateway() {
                    *through_blastgate += s.requests;
                }
                o.samples.push(s);
                o.command.get_or_insert(command);
                if o.proto.is_none() {
                    o.proto = proto;
                }
            }
            Err(e) => {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("bench: {} via {} FAILED: {e:#}", cell.name(), via.name());
                o.error = Some(format!("{e:#}"));
            }
        }
        Ok(())
    }
}

/// utime + stime of `pid` and its children (an nginx master and its
/// worker), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids.into_iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command name, which may hold spaces: state
            // is the first, utime the 12th, stime the 13th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            field(11) + field(12)
        })
        .sum()
}

/// `98.00us`, `1.23ms`, `2.00s`, `1.00m` (wrk's units) in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let n: f64 = num.trim().parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * scale)
}

/// wrk 4.1 with `--latency`: req/s, p50, p99, requests; refuses runs with
/// non-2xx/3xx answers or socket errors.
fn parse_wrk(out: &str) -> Result<(Sample, Option<String>)> {
    let mut s = Sample::empty();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().context("Requests/sec")?;
        } else if let Some(v) = line.strip_prefix("50%") {
            s.p50_ms = duration_ms(v).context("the 50% line")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            s.p99_ms = duration_ms(v).context("the 99% line")?;
        } else if line.contains(" requests in ") {
            s.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("the requests line")?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            bail!("{} answers were not 2xx or 3xx", v.trim());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            bail!("socket errors:{v}");
        }
    }
    if s.requests == 0 || s.rps.is_nan() {
        bail!("no request completed");
    }
    if s.p50_ms.is_nan() || s.p99_ms.is_nan() {
        bail!("no latency distribution (--latency)");
    }
    Ok((s, None))
}

/// The number before `label` in a comma-separated `N label, N label` list.
fn count(list: &str, label: &str) -> Option<u64> {
    list.split(',').find_map(|part| {
        let mut words = part.split_whitespace();
        let n = words.next()?.parse().ok()?;
        (words.next()? == label).then_some(n)
    })
}

/// h2load 1.52 with `-D`: req/s and the negotiated protocol; refuses runs
/// with failed, errored or timed-out requests or 4xx/5xx answers.
fn parse_h2load(out: &str) -> Result<(Sample, Option<String>)> {
    let mut s = Sample::empty();
    let mut proto = None;
    let mut checked = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            s.rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix("req/s"))
                .and_then(|n| n.trim().parse().ok())
                .context("the req/s of the `finished in` line")?;
        } else if let Some(list) = line.strip_prefix("requests:") {
            let n = |label| count(list, label).with_context(|| format!("requests: {label}"));
            let bad = n("failed")? + n("errored")? + n("timeout")?;
            if bad > 0 {
                bail!("{bad} requests failed, errored or timed out");
            }
            s.requests = n("succeeded")?;
            checked = true;
        } else if let Some(list) = line.strip_prefix("status codes:") {
            let n = |label| count(list, label).with_context(|| format!("status codes: {label}"));
            let bad = n("4xx")? + n("5xx")?;
            if bad > 0 {
                bail!("{bad} answers were 4xx or 5xx");
            }
        } else if let Some(p) = line.strip_prefix("Application protocol:") {
            proto = Some(p.trim().to_string());
        }
    }
    if !checked || s.requests == 0 || s.rps.is_nan() {
        bail!("no request completed");
    }
    Ok((s, proto))
}

/// ab 2.3: connections (= requests) per second and the TLS parameters;
/// refuses runs with failed requests, non-2xx answers or fewer body bytes
/// than `doc_bytes` per request.
fn parse_ab(out: &str, doc_bytes: u64) -> Result<(Sample, Option<String>)> {
    let mut s = Sample::empty();
    let mut proto = None;
    let mut failed = None;
    let mut body_bytes = None;
    for line in out.lines().map(str::trim) {
        let value = |prefix: &str| line.strip_prefix(prefix).map(str::trim);
        if let Some(v) = value("Requests per second:") {
            s.rps = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("Requests per second")?;
        } else if let Some(v) = value("Complete requests:") {
            s.requests = v.parse().context("Complete requests")?;
        } else if let Some(v) = value("Failed requests:") {
            failed = Some(v.parse::<u64>().context("Failed requests")?);
        } else if let Some(v) = value("Non-2xx responses:") {
            bail!("{v} answers were not 2xx");
        } else if let Some(v) = value("SSL/TLS Protocol:") {
            proto = Some(v.to_string());
        } else if let Some(v) = value("HTML transferred:") {
            body_bytes = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    match failed {
        None => bail!("no `Failed requests` line"),
        Some(n) if n > 0 => bail!("{n} requests failed"),
        Some(_) => {}
    }
    if s.requests == 0 || s.rps.is_nan() {
        bail!("no request completed");
    }
    let body_bytes = body_bytes.context("no `HTML transferred` line")?;
    if body_bytes < s.requests * doc_bytes {
        bail!(
            "{body_bytes} body bytes for {} requests of {doc_bytes} bytes",
            s.requests
        );
    }
    Ok((s, proto))
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    sh::stdout(Command::new(OPENSSL).args(args).current_dir(dir)).map(drop)
}

/// A throwaway CA, the upstreams' leaf (127.0.0.2, upstream.bench and the
/// egress name) and the nginx proxy's leaf (127.0.0.1), all P-256 like
/// blastgate's.
pub(crate) fn make_certs(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut req = vec!["req", "-x509"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=blastgate bench upstream CA",
    ]);
    openssl(dir, &req)?;
    let leaf = |name: &str, san: &str| -> Result<(PathBuf, PathBuf)> {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        let subj = format!("/CN={name}.bench");
        req.extend(["-subj", &subj]);
        openssl(dir, &req)?;
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
        Ok((dir.join(pem), dir.join(key)))
    };
    Ok(Certs {
        ca: dir.join("ca.pem"),
        upstream: leaf(
            "upstream",
            &format!("IP:127.0.0.2,DNS:upstream.bench,DNS:{EGRESS_NAME}"),
        )?,
        front: leaf("front", "IP:127.0.0.1,DNS:front.bench")?,
    })
}

/// The 100 KB list: one email per item (what the field rule masks), no
/// value any shipped detector takes for a secret.
fn big_doc() -> String {
    let mut items = Vec::new();
    let mut len = 0;
    let mut i = 0u64;
    while len < BIG_BYTES {
        let item = json!({
            "id": i,
            "sku": format!("SKU-{i:06}"),
            "name": format!("widget {i}"),
            "email": format!("user{i}@example.com"),
            "price_cents": 100 + (i * 37) % 9000,
            "in_stock": !i.is_multiple_of(3),
            "tags": ["hardware", "bench"],
            "note": "An ordinary catalogue entry.",
        });
        len += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    let doc = json!({"page": 1, "total": items.len(), "items": items});
    format!("{doc}\n")
}

/// The part of an nginx config both instances share: one worker, no
/// daemon, everything in `dir`.
pub(crate) fn nginx_conf(dir: &Path, http: &str) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   server_tokens off;\n\
         \x20   client_body_temp_path {d}/tmp/body;\n\
         \x20   proxy_temp_path {d}/tmp/proxy;\n\
         \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20   scgi_temp_path {d}/tmp/scgi;\n\
         \x20   keepalive_requests 100000000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   types {{ application/json json; }}\n\
         \x20   default_type application/octet-stream;\n\
         \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
         {http}\
         }}\n",
        d = dir.display()
    )
}

/// Whether a child we started has exited (a zombie until the guard reaps
/// it) or is gone.
fn exited(pid: Option<u32>) -> bool {
    let Some(pid) = pid else { return true };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')') {
        Some((_, rest)) => rest.trim_start().starts_with(['Z', 'X']),
        None => true,
    }
}

/// The upstream's server block (listening on `listens`, `listen …;`
/// lines): the documents of `www`, `/auth`, `/nginx_status`.
fn upstream_server(listens: &str, certs: &Certs, www: &Path) -> String {
    format!(
        "    map $http_authorization $auth_seen {{\n\
         \x20       \"\" none;\n\
         \x20       \"Bearer {TOKEN}\" injected;\n\
         \x20       default other;\n\
         \x20   }}\n\
         \x20   server {{\n{listens}\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         \x20       root {www};\n\
         \x20       open_file_cache max=64;\n\
         \x20       location = /nginx_status {{ stub_status; }}\n\
         \x20       location = /auth {{ default_type text/plain; return 200 \"$auth_seen\\n\"; }}\n\
         \x20       location / {{ }}\n\
         \x20   }}\n",
        cert = certs.upstream.0.display(),
        key = certs.upstream.1.display(),
        www = www.display(),
    )
}

/// An nginx of the bench, pinned to `cpus` (inside `netns` if given),
/// listening on `ports` of `ip` once started; SIGTERM (fast shutdown,
/// workers included) on drop.
pub(crate) fn start_nginx(
    dir: &Path,
    conf: &str,
    cpus: &str,
    (ip, ports): (&str, &[u16]),
    netns: Option<&NetNs>,
) -> Result<Guard> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = dir.join("error.log");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = ns.exec();
            c.arg("taskset");
            c
        }
        None => Command::new("taskset"),
    };
    cmd.args(["-c", cpus])
        .arg(NGINX)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log"))?);
    die_with_parent(&mut cmd, libc::SIGTERM);
    let mut guard = Guard::spawn("nginx", &mut cmd)?;
    let up = wait_for("nginx", Duration::from_secs(15), || {
        ports.iter().all(|&p| TcpStream::connect((ip, p)).is_ok())
    });
    if let Err(e) = up {
        guard.stop();
        bail!(
            "{e}\n{}\n{}",
            tail(&log, 20),
            tail(&dir.join("stderr.log"), 20)
        );
    }
    Ok(guard)
}

/// mitmdump in reverse-proxy mode in front of the upstream, pinned to
/// `cpus`; SIGTERM on drop.
fn start_mitmdump(dir: &Path, ca: &Path, upstream: u16, port: u16, cpus: &str) -> Result<Guard> {
    std::fs::create_dir_all(dir)?;
    let log = dir.join("mitmdump.log");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus])
        .arg(MITMDUMP)
        .arg("--mode")
        .arg(format!("reverse:https://{UPSTREAM_IP}:{upstream}"))
        .args([
            "--listen-host",
            FRONT_IP,
            "--listen-port",
            &port.to_string(),
        ])
        .args([
            "-q",
            "--set",
            "flow_detail=0",
            "--set",
            "termlog_verbosity=error",
        ])
        .arg("--set")
        .arg(format!("confdir={}", dir.display()))
        .arg("--set")
        .arg(format!("ssl_verify_upstream_trusted_ca={}", ca.display()))
        .arg("--set")
        .arg(format!("modify_headers=/~q/Authorization/Bearer {TOKEN}"))
        .stdin(Stdio::null())
        .stdout(File::create(&log)?)
        .stderr(File::create(dir.join("stderr.log"))?);
    die_with_parent(&mut cmd, libc::SIGTERM);
    let mut guard = Guard::spawn("mitmdump", &mut cmd)?;
    let up = wait_for("mitmdump", Duration::from_secs(30), || {
        exited(guard.pid()) || TcpStream::connect((FRONT_IP, port)).is_ok()
    });
    let up = up.and_then(|()| {
        if exited(guard.pid()) {
            bail!("mitmdump exited");
        }
        Ok(())
    });
    if let Err(e) = up {
        guard.stop();
        bail!(
            "{e}\n{}\n{}",
            tail(&log, 20),
            tail(&dir.join("stderr.log"), 20)
        );
    }
    Ok(guard)
}

/// Files of `policies/` (not its tests), and a masking.toml whose
/// detectors apply to `bench-detectors` only, plus the field rule of
/// `bench-field`.
fn policy_dir(root: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(root.join("policies"))? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || name == "masking.toml" {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name))?;
    }
    let shipped = std::fs::read_to_string(root.join("policies/masking.toml"))?;
    let mut out = String::new();
    let mut table = "";
    for line in shipped.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            table = trimmed;
        } else if table == "[[detector]]" && trimmed.starts_with("targets") {
            bail!(
                "policies/masking.toml scopes a detector to targets already; the HTTP bench \
                 scopes them itself (bench_http::policy_dir) and needs updating"
            );
        }
        out.push_str(line);
        out.push('\n');
        if trimmed == "[[detector]]" {
            out.push_str("targets = [\"bench-detectors\"]  # cargo xtask bench\n");
        }
    }
    out.push('\n');
    out.push_str(MASK_RULE);
    std::fs::write(to.join("masking.toml"), out)?;
    Ok(())
}

/// Where the daemon listens and what it resolves with.
struct DaemonNet {
    proxy_port: u16,
    /// `[dns] listen`: a port of its own, never the default another
    /// daemon may hold.
    dns_port: u16,
    /// The egress table's: the resolver that knows the egress name, which
    /// `[egress] allow` then lets through on 443.
    egress_resolver: Option<SocketAddr>,
}

fn daemon_config(dir: &Path, net: &DaemonNet, ports: &Ports, policy: &Path, ca: &Path) -> String {
    let mut text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\n\n\
         [control]\nsocket = \"{d}/control.sock\"\n\n\
         [bpf]\npin_dir = \"{PIN_DIR}\"\n\n\
         [records]\nspool_dir = \"{d}/spool\"\n\n\
         [policy]\ndir = \"{policy}\"\n\n\
         [tls]\nca_dir = \"{d}/ca\"\n\n\
         [dns]\nlisten = \"127.0.0.1:{dns_port}\"\n",
        proxy_port = net.proxy_port,
        dns_port = net.dns_port,
        d = dir.display(),
        policy = policy.display(),
    );
    if let Some(resolver) = net.egress_resolver {
        text.push_str(&format!(
            "upstreams = [\"{resolver}\"]\n\n[egress]\nallow = [\"{EGRESS_NAME}:443\"]\n"
        ));
    }
    for (name, port) in [
        ("bench-api", ports.api),
        ("bench-field", ports.field),
        ("bench-detectors", ports.detectors),
    ] {
        text.push_str(&format!(
            "\n[[targets]]\nname = \"{name}\"\nprotocol = \"https\"\naddress = \"{UPSTREAM_IP}:{port}\"\n\n\
             [targets.http]\n\
             inject_headers = {{ Authorization = {{ file = \"{d}/upstream.token\", prefix = \"Bearer \" }} }}\n\
             upstream_ca_file = \"{ca}\"\n",
            d = dir.display(),
            ca = ca.display(),
        ));
    }
    text
}

/// Every line of every spool file, to `f`.
pub(crate) fn spool_lines(spool: &Path, mut f: impl FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(file) = File::open(e.path()) else {
            continue;
        };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            f(&line);
        }
    }
}

/// `request` events in the spool, and how many of them were not a 200.
fn spool_requests(spool: &Path) -> (u64, u64) {
    let (mut requests, mut not_ok) = (0, 0);
    spool_lines(spool, |line| {
        if line.contains("\"kind\":\"request\"") {
            requests += 1;
            if !line.contains("\"status\":200") {
                not_ok += 1;
            }
        }
    });
    (requests, not_ok)
}

/// What the spool says of the egress name.
#[derive(Default)]
struct EgressRecords {
    /// `session_closed` with target `egress` and the name as `dst_name`.
    closed: u64,
    /// Their `bytes_to_agent`, summed.
    bytes_to_agent: u64,
    /// `session_denied` naming it.
    denied: u64,
}

fn spool_egress(spool: &Path) -> EgressRecords {
    let mut r = EgressRecords::default();
    spool_lines(spool, |line| {
        if !line.contains(EGRESS_NAME) {
            return;
        }
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if e["dst_name"] != EGRESS_NAME {
            return;
        }
        if e["kind"] == "session_closed" && e["target"] == "egress" {
            r.closed += 1;
            r.bytes_to_agent += e["bytes_to_agent"].as_u64().unwrap_or(0);
        } else if e["kind"] == "session_denied" {
            r.denied += 1;
        }
    });
    r
}

/// The first line a tool prints about its version.
fn version(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

pub fn run(root: &Path, opts: &Opts) -> Result<()> {
    if !sh::is_root() {
        bail!("the HTTP benchmark attaches eBPF programs: run it as root");
    }
    if opts.reps == 0 || opts.secs == 0 {
        bail!("--reps and --secs must be at least 1");
    }
    let tables = opts.tables;
    let mut needed = vec![NGINX, WRK, H2LOAD, AB, CURL, OPENSSL];
    if tables.main {
        needed.push(MITMDUMP);
    }
    if tables.egress {
        needed.push(DNSMASQ);
    }
    let (bin, [client_cpus, server_cpus, proxy_cpus]) = prepare(root, &needed)?;
    // SAFETY: sysconf has no preconditions.
    let clk_tck = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };

    // Dropped in reverse: daemon, dnsmasq, mitmdump, the nginx proxy, the
    // upstreams, the namespace, then the directory.
    let dir = std::env::temp_dir().join(format!("blastgate-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = ScratchDir(dir.clone());

    let certs = make_certs(&dir.join("certs"))?;
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let big = big_doc();
    std::fs::write(www.join("small.json"), SMALL)?;
    std::fs::write(www.join("big.json"), &big)?;
    let ports = Ports {
        api: free_port(UPSTREAM_IP)?,
        field: free_port(UPSTREAM_IP)?,
        detectors: free_port(UPSTREAM_IP)?,
        nginx: free_port(FRONT_IP)?,
        mitm: free_port(FRONT_IP)?,
    };
    let upstream_ports = [ports.api, ports.field, ports.detectors];
    if upstream_ports[1..].contains(&ports.api) || ports.field == ports.detectors {
        bail!("the kernel handed out one free port twice; run again");
    }

    eprintln!("bench: starting the upstream nginx on {UPSTREAM_IP} (CPU {server_cpus})");
    let listens: String = upstream_ports
        .iter()
        .map(|p| format!("        listen {UPSTREAM_IP}:{p} ssl http2;\n"))
        .collect();
    let upstream_dir = dir.join("nginx-upstream");
    let upstream_conf = nginx_conf(&upstream_dir, &upstream_server(&listens, &certs, &www));
    let _upstream = start_nginx(
        &upstream_dir,
        &upstream_conf,
        &server_cpus,
        (UPSTREAM_IP, &upstream_ports),
        None,
    )?;

    // The egress table's upstream: the same nginx, document and
    // certificate, on 443 of the namespace's address; and a resolver on
    // loopback that knows its name.
    let resolv_conf = dir.join("resolv.conf");
    let egress_hosts = dir.join("hosts");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.53\n")?;
    let mut egress_side = None;
    if tables.egress {
        let ns = NetNs::create(EGRESS_NETNS, EGRESS_HOST_IF, EGRESS_BLOCK)?;
        let ns_ip = ns.ns_ip.to_string();
        std::fs::write(
            &egress_hosts,
            format!("127.0.0.1 localhost\n{ns_ip} {EGRESS_NAME}\n"),
        )?;
        eprintln!(
            "bench: starting the egress upstream nginx on {ns_ip}:443 in namespace {} \
             (CPU {server_cpus})",
            ns.name
        );
        let egress_dir = dir.join("nginx-egress");
        let listen = format!("        listen {ns_ip}:443 ssl http2;\n");
        let conf = nginx_conf(&egress_dir, &upstream_server(&listen, &certs, &www));
        let nginx = start_nginx(
            &egress_dir,
            &conf,
            &server_cpus,
            (&ns_ip, &[443]),
            Some(&ns),
        )?;
        let dns_dir = dir.join("dnsmasq");
        std::fs::create_dir_all(&dns_dir)?;
        let (dnsmasq, resolver) =
            start_dnsmasq(&dns_dir, &format!("{ns_ip} {EGRESS_NAME}\n"), &server_cpus)?;
        eprintln!("bench: dnsmasq on {resolver} answers {EGRESS_NAME} with {ns_ip}");
        egress_side = Some((ns, nginx, dnsmasq, resolver));
    }
    let egress_resolver = egress_side.as_ref().map(|e| e.3);

    let (mut nginx_proxy, mut mitm) = (None, None);
    if tables.main {
        eprintln!(
            "bench: starting the nginx proxy on {FRONT_IP}:{} (CPU {proxy_cpus})",
            ports.nginx
        );
        let front_dir = dir.join("nginx-proxy");
        let front_conf = nginx_conf(
            &front_dir,
            &format!(
                "    upstream bench_upstream {{\n\
                 \x20       server {UPSTREAM_IP}:{api};\n\
                 \x20       keepalive 256;\n\
                 \x20       keepalive_requests 100000000;\n\
                 \x20       keepalive_timeout 300s;\n\
                 \x20   }}\n\
                 \x20   server {{\n\
                 \x20       listen {FRONT_IP}:{port} ssl http2;\n\
                 \x20       ssl_certificate {cert};\n\
                 \x20       ssl_certificate_key {key};\n\
                 \x20       location / {{\n\
                 \x20           proxy_pass https://bench_upstream;\n\
                 \x20           proxy_http_version 1.1;\n\
                 \x20           proxy_set_header Connection \"\";\n\
                 \x20           proxy_set_header Authorization \"Bearer {TOKEN}\";\n\
                 \x20           proxy_ssl_verify on;\n\
                 \x20           proxy_ssl_trusted_certificate {ca};\n\
                 \x20           proxy_ssl_name upstream.bench;\n\
                 \x20           proxy_ssl_server_name on;\n\
                 \x20           proxy_ssl_session_reuse on;\n\
                 \x20       }}\n\
                 \x20   }}\n",
                api = ports.api,
                port = ports.nginx,
                cert = certs.front.0.display(),
                key = certs.front.1.display(),
                ca = certs.ca.display(),
            ),
        );
        nginx_proxy = Some(start_nginx(
            &front_dir,
            &front_conf,
            &proxy_cpus,
            (FRONT_IP, &[ports.nginx]),
            None,
        )?);

        eprintln!(
            "bench: starting mitmdump on {FRONT_IP}:{} (CPU {proxy_cpus})",
            ports.mitm
        );
        mitm = Some(start_mitmdump(
            &dir.join("mitmproxy"),
            &certs.ca,
            ports.api,
            ports.mitm,
            &proxy_cpus,
        )?);
    }

    let policy = dir.join("policy");
    policy_dir(root, &policy)?;
    sh::run(Command::new(&bin).args(["policy", "check"]).arg(&policy))?;
    std::fs::write(dir.join("upstream.token"), format!("{TOKEN}\n"))?;
    std::fs::set_permissions(
        dir.join("upstream.token"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let net = DaemonNet {
        proxy_port: free_port("127.0.0.1")?,
        dns_port: free_udp_port()?,
        egress_resolver,
    };
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        daemon_config(&dir, &net, &ports, &policy, &certs.ca),
    )?;
    sh::run(Command::new(&bin).arg("check-config").arg(&config))?;
    // A generous safety net: the daemon detaches by itself if the bench
    // cannot stop it.
    let runs = (CELLS.len() * (MAIN.len() + EGRESS.len()) + MASKING.len()) as u64;
    let deadline = 2 * (opts.reps as u64 * runs * (opts.secs * 3 + 30)) + 900;
    eprintln!("bench: starting the blastgate daemon (CPU {proxy_cpus})");
    let daemon = Daemon::start(
        &bin,
        &config,
        &dir,
        &DaemonOpts {
            pin_dir: PIN_DIR,
            label: "http",
            cpus: &proxy_cpus,
            deadline_secs: deadline,
            log_filter: "warn",
        },
    )?;

    let b = Bench {
        blastgate: bin.clone(),
        config: config.clone(),
        client_cpus: client_cpus.clone(),
        scratch: dir.clone(),
        ca: certs.ca.clone(),
        resolv_conf,
        egress_hosts,
        ports,
        daemon_pid: daemon.pid(),
        nginx_pid: nginx_proxy.as_ref().and_then(Guard::pid),
        mitm_pid: mitm.as_ref().and_then(Guard::pid),
        clk_tck,
    };
    let mut through_blastgate = 0u64;

    eprintln!("bench: checking every path with curl");
    through_blastgate += check(&b, tables, &big)?;

    // Warm-up: TLS session caches, the local CA's leaf, upstream pools,
    // the learned name, CPU frequency.
    let mut warm: Vec<(Cell, Via, u64)> = Vec::new();
    if tables.main {
        warm.extend(MAIN.map(|via| (Cell::Wrk { conns: 8 }, via, 2)));
    }
    if tables.masking {
        warm.extend(MASKING.map(|via| (Cell::Big, via, 1)));
    }
    if tables.egress {
        warm.extend(EGRESS.map(|via| (Cell::Wrk { conns: 8 }, via, 2)));
    }
    for (cell, via, secs) in warm {
        let (s, _, _) = b
            .measure(cell, via, secs)
            .with_context(|| format!("warm-up of {} via {}", cell.name(), via.name()))?;
        if via.gateway() {
            through_blastgate += s.requests;
        }
    }

    let mut results = Results {
        main: CELLS.iter().map(|_| Default::default()).collect(),
        masking: Default::default(),
        egress: CELLS.iter().map(|_| Default::default()).collect(),
    };
    for rep in 0..opts.reps {
        for (i, &cell) in CELLS.iter().enumerate() {
            if tables.main {
                for (j, &via) in MAIN.iter().enumerate() {
                    let o = &mut results.main[i][j];
                    b.run_cell(cell, via, opts.secs, o, &mut through_blastgate)?;
                }
            }
            if tables.egress {
                for (j, &via) in EGRESS.iter().enumerate() {
                    let o = &mut results.egress[i][j];
                    b.run_cell(cell, via, opts.secs, o, &mut through_blastgate)?;
                }
            }
        }
        if tables.masking {
            for (j, &via) in MASKING.iter().enumerate() {
                let o = &mut results.masking[j];
                b.run_cell(Cell::Big, via, opts.secs, o, &mut through_blastgate)?;
            }
        }
        eprintln!("bench: repetition {}/{} done", rep + 1, opts.reps);
    }
    drop(daemon);
    let pins_left = Path::new(PIN_DIR).exists();
    let spool = dir.join("spool");
    let spool_bytes = dir_bytes(&spool);
    let (recorded, recorded_not_ok) = spool_requests(&spool);
    let egress_records = spool_egress(&spool);
    drop(mitm);
    drop(nginx_proxy);
    drop(egress_side);

    let versions = json!({
        "nginx": version(NGINX, "-v"),
        "mitmproxy": version(MITMDUMP, "--version"),
        "wrk": version(WRK, "-v"),
        "h2load": version(H2LOAD, "--version"),
        "ab": version(AB, "-V"),
    });
    // TLS connections the namespace's upstream accepted during the
    // measured egress runs: each went through the daemon.
    let egress_conns: u64 = results
        .egress
        .iter()
        .flat_map(|row| row[1].samples.iter())
        .map(|s| s.upstream_conns)
        .filter(|n| n.is_finite())
        .sum::<f64>() as u64;
    let records = Records {
        recorded,
        recorded_not_ok,
        completed: through_blastgate,
        spool_bytes,
        egress: egress_records,
        egress_conns,
    };
    let report = report(
        opts,
        &results,
        big.len(),
        &records,
        [&client_cpus, &server_cpus, &proxy_cpus],
        versions,
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("http.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(also written to target/bench/http.json)");

    let failed: Vec<String> = results
        .tables()
        .flat_map(|(cell, vias, row)| {
            vias.iter().zip(row).filter_map(move |(via, o)| {
                o.error
                    .as_ref()
                    .map(|e| format!("{} via {}: {e}", cell.name(), via.name()))
            })
        })
        .collect();
    for f in &failed {
        println!("\nFAILED {f}");
    }
    if pins_left {
        bail!("the bench daemon left {PIN_DIR} behind");
    }
    if recorded < records.completed {
        bail!(
            "the daemon recorded {recorded} requests but the clients completed {} through it",
            records.completed
        );
    }
    if tables.egress {
        let r = &records.egress;
        if r.closed == 0 || r.closed < egress_conns || r.denied > 0 {
            bail!(
                "the egress path did not carry the egress runs: the spool has {} session_closed \
                 records with target egress and dst_name {EGRESS_NAME} (and {} refused sessions \
                 naming it) for {egress_conns} TLS connections its upstream accepted",
                r.closed,
                r.denied
            );
        }
    }
    if !failed.is_empty() {
        bail!("{} HTTP bench cell(s) failed (details above)", failed.len());
    }
    Ok(())
}

/// Checks every path the tables use with curl before measuring; returns
/// the requests it sent through blastgate's gateway.
fn check(b: &Bench, tables: Tables, big: &str) -> Result<u64> {
    let mut through_gateway = 0;
    let mut fetch = |via: Via, doc: &str| {
        if via.gateway() {
            through_gateway += 1;
        }
        b.fetch(via, doc)
    };
    if tables.main {
        for via in MAIN {
            let got = fetch(via, "/small.json")?;
            if got != SMALL {
                bail!("/small.json via {} came back as {got:?}", via.name());
            }
        }
        let direct = fetch(Via::Direct, "/auth")?;
        if direct.trim() != "none" {
            bail!("the upstream saw Authorization ({direct}) from a client that sent none");
        }
        for via in [Via::Nginx, Via::Mitmproxy, Via::Blastgate] {
            let got = fetch(via, "/auth")?;
            if got.trim() != "injected" {
                bail!("via {} the upstream saw Authorization {got:?}", via.name());
            }
        }
    }
    if tables.masking {
        // Echoed back on a target with the shipped detectors, the token is
        // masked: no answer carries it to the agent.
        let echoed = fetch(Via::BlastgateDetectors, "/auth")?;
        if echoed.trim().is_empty() || echoed.contains(TOKEN) {
            bail!("via blastgate-detectors the echoed token came back as {echoed:?}");
        }
        // No detector finds anything in the list: it comes back whole.
        for via in [Via::Direct, Via::Blastgate, Via::BlastgateDetectors] {
            if fetch(via, "/big.json")? != big {
                bail!("/big.json via {} is not the file", via.name());
            }
        }
        let masked: Value = serde_json::from_str(&fetch(Via::BlastgateField, "/big.json")?)
            .context("/big.json via blastgate-field is not JSON")?;
        let original: Value = serde_json::from_str(big)?;
        let items = masked["items"].as_array().map_or(0, Vec::len);
        let hashed = masked["items"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|i| i["email"].as_str().is_some_and(|e| e.starts_with("hash:")))
                .count()
        });
        if items == 0 || hashed != items {
            bail!("/big.json via blastgate-field: {hashed} of {items} emails masked");
        }
        let mut unmasked = masked.clone();
        if let Some(list) = unmasked["items"].as_array_mut() {
            for (item, orig) in list
                .iter_mut()
                .zip(original["items"].as_array().into_iter().flatten())
            {
                item["email"] = orig["email"].clone();
            }
        }
        if unmasked != original {
            bail!("/big.json via blastgate-field changed more than the emails");
        }
        eprintln!("bench: {items} emails masked per masked response");
    }
    if tables.egress {
        // curl checks the upstream's own certificate for the name against
        // the upstream's CA: blastgate did not terminate the TLS. Nothing
        // is injected into a passthrough.
        for via in EGRESS {
            let got = fetch(via, "/small.json")?;
            if got != SMALL {
                bail!("/small.json via {} came back as {got:?}", via.name());
            }
            let auth = fetch(via, "/auth")?;
            if auth.trim() != "none" {
                bail!("via {} the upstream saw Authorization {auth:?}", via.name());
            }
        }
    }
    eprintln!("bench: every path answers");
    Ok(through_gateway)
}

/// Every cell's outcomes, per table.
struct Results {
    main: Vec<[Outcome; 4]>,
    masking: [Outcome; 4],
    egress: Vec<[Outcome; 2]>,
}

impl Results {
    /// (cell, paths, outcomes) of every row of every table.
    fn tables(&self) -> impl Iterator<Item = (Cell, &'static [Via], &[Outcome])> {
        let main = CELLS
            .iter()
            .zip(&self.main)
            .map(|(&c, row)| (c, &MAIN[..], &row[..]));
        let masking = std::iter::once((Cell::Big, &MASKING[..], &self.masking[..]));
        let egress = CELLS
            .iter()
            .zip(&self.egress)
            .map(|(&c, row)| (c, &EGRESS[..], &row[..]));
        main.chain(masking).chain(egress)
    }
}

struct Records {
    recorded: u64,
    recorded_not_ok: u64,
    /// Requests the clients completed through blastgate (checks, warm-ups
    /// and runs).
    completed: u64,
    spool_bytes: u64,
    egress: EgressRecords,
    /// TLS connections the namespace's upstream accepted during the
    /// measured egress runs.
    egress_conns: u64,
}

/// Upstream connections per 1000 requests of a run.
fn per_k(s: &Sample) -> f64 {
    s.upstream_conns / s.requests as f64 * 1000.0
}

pub(crate) fn fmt(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.digits$}")
    }
}

pub(crate) fn fmt_cpu(c: f64) -> String {
    if c.is_nan() {
        "-".into()
    } else {
        format!("{c:.0}%")
    }
}

const ROW_HEADER: [&str; 9] = [
    "cell",
    "path",
    "req/s",
    "ratio",
    "p50 ms",
    "p99 ms",
    "proxy CPU",
    "up conn/k",
    "negotiated",
];

fn print_header() {
    let h = ROW_HEADER;
    println!(
        "  {:<26} {:<10} {:>10} {:>7} {:>8} {:>8} {:>10} {:>10}  {}",
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    );
}

/// One path's row of a cell's table (`direct`: the cell's direct req/s),
/// and its JSON.
fn cell_row(cell: Cell, label: &str, o: &Outcome, direct: f64) -> Value {
    let rps = o.med(|s| s.rps);
    let ratio = rps / direct;
    if o.samples.is_empty() {
        println!("  {:<26} {label:<10} {:>10}", cell.name(), "FAILED");
    } else {
        println!(
            "  {:<26} {label:<10} {:>10} {:>7} {:>8} {:>8} {:>10} {:>10}  {}{}",
            cell.name(),
            fmt(rps, 0),
            fmt(ratio, 2),
            fmt(o.med(|s| s.p50_ms), 3),
            fmt(o.med(|s| s.p99_ms), 3),
            fmt_cpu(o.med(|s| s.proxy_cpu_pct)),
            fmt(o.med(per_k), 1),
            o.proto.as_deref().unwrap_or(""),
            if o.error.is_some() {
                "  (then FAILED)"
            } else {
                ""
            }
        );
    }
    json!({
        "unit": cell.unit(),
        "rps": rps, "ratio_to_direct": ratio,
        "p50_ms": o.med(|s| s.p50_ms), "p99_ms": o.med(|s| s.p99_ms),
        "proxy_cpu_pct": o.med(|s| s.proxy_cpu_pct),
        "upstream_conns_per_1000_requests": o.med(per_k),
        "rps_runs": o.samples.iter().map(|s| s.rps).collect::<Vec<_>>(),
        "negotiated": o.proto, "command": o.command, "error": o.error,
    })
}

/// A goal: what, whether met, whether known, as shown, the value.
type Verdict = (String, bool, bool, String, f64);

/// Prints the tables and the goals; returns the JSON summary.
fn report(
    opts: &Opts,
    results: &Results,
    big_bytes: usize,
    records: &Records,
    [client_cpus, server_cpus, proxy_cpus]: [&str; 3],
    versions: Value,
) -> Value {
    let tables = opts.tables;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nblastgate http bench: HTTPS to nginx, {} s per run, medians of {} alternating \
         repetitions",
        opts.secs, opts.reps
    );
    println!(
        "(clients on CPU {client_cpus}; the upstream nginx on CPU {server_cpus}; the proxy under \
         test on CPU {proxy_cpus}; ratio = req/s / direct req/s; proxy CPU = the proxy's CPU \
         time / wall time, median; up conn/k = TLS connections the upstream accepted per 1000 \
         requests; load average at the end: {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut summary = json!({
        "reps": opts.reps, "secs": opts.secs,
        "cpus": {"client": client_cpus, "server": server_cpus, "proxy": proxy_cpus},
        "versions": versions,
    });
    let mut verdicts: Vec<Verdict> = Vec::new();
    if tables.main {
        summary["cells"] = report_main(&results.main, &mut verdicts);
    }
    if tables.masking {
        summary["masking"] = report_masking(&results.masking, big_bytes, &mut verdicts);
    }
    if tables.egress {
        summary["egress"] = report_egress(&results.egress, records, &mut verdicts);
    }

    if tables.main || tables.masking {
        println!(
            "\nrecords: {} request events in the spool ({} not a 200) for {} requests the \
             clients completed through blastgate's gateway; spool {:.1} MiB",
            records.recorded,
            records.recorded_not_ok,
            records.completed,
            records.spool_bytes as f64 / (1 << 20) as f64
        );
    }
    summary["records"] = json!({
        "request_events": records.recorded,
        "request_events_not_200": records.recorded_not_ok,
        "requests_completed_through_blastgate": records.completed,
        "spool_bytes": records.spool_bytes,
    });

    // Goals are reported, not asserted: this shared machine is noisy.
    println!("\ngoals:");
    let mut goals = Vec::new();
    for (name, ok, known, shown, value) in verdicts {
        let v = match (known, ok) {
            (false, _) => "unknown (failed)",
            (true, true) => "met",
            (true, false) => "NOT met",
        };
        println!("  {name}: {v} ({shown})");
        goals.push(json!({"goal": name, "value": value, "verdict": v}));
    }
    summary["goals"] = Value::Array(goals);

    println!("\ncommands (first repetition):");
    for (cell, vias, row) in results.tables() {
        for (via, o) in vias.iter().zip(row) {
            if let Some(c) = &o.command {
                println!("  {} / {}: {c}", cell.name(), via.name());
            }
        }
    }
    summary
}

/// The main table: every cell on direct, blastgate, nginx, mitmproxy.
fn report_main(main: &[[Outcome; 4]], verdicts: &mut Vec<Verdict>) -> Value {
    println!("\nHTTPS to nginx on {UPSTREAM_IP}:");
    let cells = cell_table(&MAIN, main, Via::name);
    for (cell, row) in CELLS.iter().zip(main) {
        let direct = row[0].med(|s| s.rps);
        let [_, bg, ng, mp] = row;
        let (bg, ng, mp) = (bg.med(|s| s.rps), ng.med(|s| s.rps), mp.med(|s| s.rps));
        verdicts.push((
            format!("{}: blastgate ratio >= nginx ratio", cell.name()),
            bg >= ng,
            !(bg.is_nan() || ng.is_nan()),
            format!("{} vs {}", fmt(bg / direct, 2), fmt(ng / direct, 2)),
            bg / direct,
        ));
        verdicts.push((
            format!("{}: blastgate >= 2x mitmproxy", cell.name()),
            bg >= 2.0 * mp,
            !(bg.is_nan() || mp.is_nan()),
            format!("{}x", fmt(bg / mp, 1)),
            bg / mp,
        ));
    }
    cells
}

/// Prints a table of every cell on `vias` (ratios to the first) and
/// returns it as JSON, by cell and path.
fn cell_table<const N: usize>(
    vias: &[Via; N],
    rows: &[[Outcome; N]],
    label: fn(Via) -> &'static str,
) -> Value {
    print_header();
    let mut cells = Map::new();
    for (cell, row) in CELLS.iter().zip(rows) {
        let direct = row[0].med(|s| s.rps);
        let paths = vias
            .iter()
            .zip(row)
            .map(|(via, o)| (via.name().into(), cell_row(*cell, label(*via), o, direct)))
            .collect();
        cells.insert(cell.key(), Value::Object(paths));
    }
    Value::Object(cells)
}

fn report_masking(masking: &[Outcome; 4], big_bytes: usize, verdicts: &mut Vec<Verdict>) -> Value {
    println!(
        "\n  masking: /big.json ({big_bytes} bytes, an email per item), wrk -t1 -c1, one \
         request at a time:"
    );
    println!(
        "  {:<36} {:>9} {:>8} {:>8} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "proxy CPU"
    );
    let mut masking_paths = Map::new();
    for (via, o) in MASKING.iter().zip(masking) {
        if o.samples.is_empty() {
            println!("  {:<36} {:>9}", via.label(), "FAILED");
        } else {
            println!(
                "  {:<36} {:>9} {:>8} {:>8} {:>10}",
                via.label(),
                fmt(o.med(|s| s.rps), 0),
                fmt(o.med(|s| s.p50_ms), 3),
                fmt(o.med(|s| s.p99_ms), 3),
                fmt_cpu(o.med(|s| s.proxy_cpu_pct)),
            );
        }
        masking_paths.insert(
            via.name().into(),
            json!({
                "label": via.label(),
                "rps": o.med(|s| s.rps),
                "p50_ms": o.med(|s| s.p50_ms), "p99_ms": o.med(|s| s.p99_ms),
                "proxy_cpu_pct": o.med(|s| s.proxy_cpu_pct),
                "p50_ms_runs": o.samples.iter().map(|s| s.p50_ms).collect::<Vec<_>>(),
                "command": o.command, "error": o.error,
            }),
        );
    }
    let plain = masking[1].med(|s| s.p50_ms);
    let field = masking[2].med(|s| s.p50_ms) - plain;
    let detectors = masking[3].med(|s| s.p50_ms) - plain;
    println!(
        "  added p50 over no rule: {} ms with the json_paths field rule, {} ms with the shipped \
         detectors",
        fmt(field, 3),
        fmt(detectors, 3)
    );
    verdicts.push((
        "masking the 100 KB list (field rule): added p50 < 1 ms".into(),
        field < 1.0,
        !field.is_nan(),
        format!("{} ms", fmt(field, 3)),
        field,
    ));
    json!({
        "doc_bytes": big_bytes,
        "paths": masking_paths,
        "added_p50_ms_field_rule": field,
        "added_p50_ms_shipped_detectors": detectors,
    })
}

/// The egress table: every cell direct and through the egress
/// passthrough, and what the spool recorded of it.
fn report_egress(egress: &[[Outcome; 2]], records: &Records, verdicts: &mut Vec<Verdict>) -> Value {
    println!(
        "\nHTTPS egress passthrough (TLS not terminated): nginx in network namespace \
         {EGRESS_NETNS} by name, https://{EGRESS_NAME}/small.json; direct: the name from a \
         hosts file; egress: enrolled, the name resolved through blastgate, the connection \
         passed after its ClientHello"
    );
    let cells = cell_table(&EGRESS, egress, Via::label);
    for (cell, row) in CELLS.iter().zip(egress) {
        let ratio = row[1].med(|s| s.rps) / row[0].med(|s| s.rps);
        verdicts.push((
            format!("{}: egress passthrough >= 0.9x direct", cell.name()),
            ratio >= 0.9,
            !ratio.is_nan(),
            format!("{}x", fmt(ratio, 2)),
            ratio,
        ));
    }
    let r = &records.egress;
    println!(
        "  egress records: {} session_closed (target egress, dst_name {EGRESS_NAME}), {:.1} MiB \
         to the agent, for {} TLS connections the upstream accepted in the measured egress runs; \
         {} refused sessions naming it",
        r.closed,
        r.bytes_to_agent as f64 / (1 << 20) as f64,
        records.egress_conns,
        r.denied
    );
    json!({
        "name": EGRESS_NAME,
        "netns": EGRESS_NETNS,
        "cells": cells,
        "records": {
            "session_closed": r.closed,
            "bytes_to_agent": r.bytes_to_agent,
            "session_denied": r.denied,
            "upstream_conns_in_egress_runs": records.egress_conns,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUT: &str = "\
Running 5s test @ https://127.0.0.2:4443/small.json
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   112.10us   30.55us   2.11ms   95.10%
    Req/Sec     8.71k   312.40     9.10k    80.00%
  Latency Distribution
     50%  105.00us
     75%  110.00us
     90%  125.00us
     99%    1.20ms
  43340 requests in 5.00s, 14.09MB read
Requests/sec:   8667.31
Transfer/sec:      2.82MB
";

    #[test]
    fn wrk_output_is_read() {
        let (s, _) = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(s.requests, 43340);
        assert!((s.rps - 8667.31).abs() < 1e-9);
        assert!((s.p50_ms - 0.105).abs() < 1e-9);
        assert!((s.p99_ms - 1.2).abs() < 1e-9);
        let bad = WRK_OUT.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 12\nRequests/sec:",
        );
        assert!(parse_wrk(&bad).is_err());
        let bad = WRK_OUT.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec:",
        );
        assert!(parse_wrk(&bad).is_err());
    }

    const H2LOAD_OUT: &str = "\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Application protocol: h2
finished in 5.00s, 20401.20 req/s, 4.51MB/s
requests: 102006 total, 102086 started, 102006 done, 102006 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 102006 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 22.57MB (23665392) total, 1.43MB (1499488) headers (space savings 95.52%), 10.21MB (10710630) data
";

    #[test]
    fn h2load_output_is_read() {
        let (s, proto) = parse_h2load(H2LOAD_OUT).unwrap();
        assert_eq!(s.requests, 102006);
        assert!((s.rps - 20401.2).abs() < 1e-9);
        assert_eq!(proto.as_deref(), Some("h2"));
        let bad = H2LOAD_OUT.replace("0 4xx", "7 4xx");
        assert!(parse_h2load(&bad).is_err());
        let bad = H2LOAD_OUT.replace("0 errored", "2 errored");
        assert!(parse_h2load(&bad).is_err());
    }

    const AB_OUT: &str = "\
Server Software:        nginx
Server Hostname:        127.0.0.2
Server Port:            4443
SSL/TLS Protocol:       TLSv1.3,TLS_AES_256_GCM_SHA384,256,256
Server Temp Key:        X25519 253 bits

Document Path:          /small.json
Document Length:        101 bytes

Concurrency Level:      1
Time taken for tests:   5.000 seconds
Complete requests:      4321
Failed requests:        0
Total transferred:      1500000 bytes
HTML transferred:       436421 bytes
Requests per second:    864.20 [#/sec] (mean)
Time per request:       1.157 [ms] (mean)
";

    #[test]
    fn ab_output_is_read() {
        let (s, proto) = parse_ab(AB_OUT, 101).unwrap();
        assert_eq!(s.requests, 4321);
        assert!((s.rps - 864.2).abs() < 1e-9);
        assert!(proto.is_some_and(|p| p.starts_with("TLSv1.3")));
        let bad = AB_OUT.replace("Failed requests:        0", "Failed requests:        3");
        assert!(parse_ab(&bad, 101).is_err());
        assert!(parse_ab(AB_OUT, 102).is_err());
        let bad = AB_OUT.replace(
            "Total transferred:",
            "Non-2xx responses:      5\nTotal transferred:",
        );
        assert!(parse_ab(&bad, 101).is_err());
    }

    #[test]
    fn tables_are_named() {
        let t = Tables::parse("egress").unwrap();
        assert!(t.egress && !t.main && !t.masking);
        let t = Tables::parse("main, masking,egress").unwrap();
        assert!(t.egress && t.main && t.masking);
        assert!(Tables::parse("").is_err());
        assert!(Tables::parse("main,nginx").is_err());
    }

    #[test]
    fn durations_in_wrk_units() {
        assert_eq!(duration_ms("1.50ms"), Some(1.5));
        assert_eq!(duration_ms(" 250.00us"), Some(0.25));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("12"), None);
    }

    #[test]
    fn the_big_document_is_big_and_has_no_secret_looking_values() {
        let doc = big_doc();
        assert!(doc.len() >= BIG_BYTES);
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert!(v["items"].as_array().is_some_and(|a| a.len() > 100));
        assert!(SMALL.len() < 128);
    }
}

//! `cargo xtask bench`: the whole-path cost of interception, measured side
//! by side with the direct path in the same run.
//!
//! The client is blastgate-probe (pinned to CPU 0); through blastgate it is
//! run under `blastgate run`, directly it is not. The daemon is pinned to
//! CPU 1. Direct and proxied repetitions alternate so that drift on this
//! shared 2-vCPU machine hits both alike; medians are reported.
//!
//! Job tokens (OIDC) are measured in the same run against a real OpenID
//! Provider on loopback (pinned like the servers): the start-up of
//! `blastgate run -- /bin/true` without and with `--oidc-token-file` (keys
//! cached), and the connection cell run by an agent started with a token
//! against one started without.

use std::{
    ffi::OsString,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    demo::{wait_for, wait_for_daemon, Guard},
    oidc_provider, sh,
};

/// `blastgate run` start-ups per repetition and per side (with and
/// without a token), alternating.
const RUN_STARTS: usize = 50;
/// The audience the bench's issuer is configured with.
const AUDIENCE: &str = "blastgate";

/// One-byte echo per connection, served inline: the client is sequential.
fn echo_server() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.2:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.set_nodelay(true);
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest);
        }
    });
    Ok(addr)
}

/// Reads to EOF and answers with the byte count (8 bytes, big-endian);
/// with `greeting`, first sends one byte (a server that speaks first).
fn sink_server(greeting: bool) -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.2:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                if greeting && c.write_all(b"+").is_err() {
                    return;
                }
                let mut buf = vec![0u8; 256 * 1024];
                let mut total: u64 = 0;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = c.write_all(&total.to_be_bytes());
            });
        }
    });
    Ok(addr)
}

pub(crate) const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A dnsmasq on 127.0.0.1, pinned to `cpus`, answering the `test` zone
/// from `hosts` (hosts-file text, written to `dir/zone`) and NXDOMAIN for
/// every other `.test` name; it never forwards anywhere. It listens on
/// UDP and TCP, so the port must be free for both: a few are tried.
/// Stopped when the guard drops.
pub(crate) fn start_dnsmasq(dir: &Path, hosts: &str, cpus: &str) -> Result<(Guard, SocketAddr)> {
    let zone = dir.join("zone");
    std::fs::write(&zone, hosts)?;
    let log = dir.join("dnsmasq.log");
    for _ in 0..5 {
        let port = free_udp_port()?;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut guard = Guard::spawn(
            "dnsmasq",
            Command::new("taskset")
                .args(["-c", cpus, DNSMASQ, "--keep-in-foreground"])
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--conf-file=/dev/null",
                ])
                .args(["--user=root", "--pid-file", "--bind-interfaces"])
                .args(["--listen-address=127.0.0.1", "--local=/test/"])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", zone.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )?;
        // Up once it takes a TCP connection; an exit (a port taken) is
        // seen at once.
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = wait_for("dnsmasq", Duration::from_secs(10), || {
            guard.exited() || std::net::TcpStream::connect(addr).is_ok()
        });
        if up.is_ok() && !guard.exited() {
            return Ok((guard, addr));
        }
        guard.stop();
    }
    bail!(
        "dnsmasq did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    )
}

/// A UDP port free on 127.0.0.1.
pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The nearest-rank `q` quantile (0 < q ≤ 1).
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Largest minus smallest: the rep-to-rep spread of a cell.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    max - min
}

/// The two sides of a with/without pair, in the order a repetition runs
/// them: flipped every other time, so neither always goes first.
fn sides(i: usize) -> [bool; 2] {
    if i.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

/// Who runs a client.
#[derive(Clone, Copy)]
enum Client<'a> {
    Direct,
    /// Under `blastgate run --agent bench`, presenting this job token
    /// (`--oidc-token-file`) if there is one.
    Agent(Option<&'a Path>),
}

struct Runner<'a> {
    bin: &'a Path,
    probe: &'a Path,
    config: &'a Path,
}

impl Runner<'_> {
    /// `blastgate run --agent bench [--oidc-token-file F] --`: the
    /// command line up to the agent's own program.
    fn agent(&self, token: Option<&Path>) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![self.bin.into(), "run".into(), "--agent".into()];
        a.extend(["bench".into(), "--config".into(), self.config.into()]);
        if let Some(t) = token {
            a.extend(["--oidc-token-file".into(), t.into()]);
        }
        a.push("--".into());
        a
    }

    fn probe(&self, proxied: bool, args: &[String]) -> Result<Value> {
        let client = if proxied {
            Client::Agent(None)
        } else {
            Client::Direct
        };
        self.probe_as(client, args)
    }

    fn probe_as(&self, client: Client, args: &[String]) -> Result<Value> {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]);
        if let Client::Agent(token) = client {
            c.args(self.agent(token));
        }
        c.arg(self.probe).args(args);
        let out = sh::stdout(&mut c)?;
        let v: Value =
            serde_json::from_str(out.trim()).with_context(|| format!("probe said {out:?}"))?;
        if v["ok"] != true {
            bail!("benchmark run failed: {v}");
        }
        Ok(v)
    }

    /// `blastgate run --agent bench [--oidc-token-file F] -- /bin/true` on
    /// CPU 0: its wall time from spawn to exit in ms, and what it said.
    fn run_true(&self, token: Option<&Path>) -> Result<(f64, Output)> {
        let line = self.agent(token);
        let mut c = Command::new(&line[0]);
        c.args(&line[1..]).arg("/bin/true").stdin(Stdio::null());
        // SAFETY: sched_setaffinity in the child before exec, a plain
        // system call on a set built there.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let out = c.output().context("starting blastgate run")?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "blastgate run -- /bin/true failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((ms, out))
    }
}

pub fn run(root: &Path, reps: usize, connections: usize, bytes: u64) -> Result<()> {
    if !sh::is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    sh::run(sh::cargo(root).args(["build", "--release", "-p", "blastgate"]))?;
    let bin = root.join("target/release/blastgate");
    let probe = root.join("target/release/blastgate-probe");
    let echo = echo_server()?;
    let sink = sink_server(false)?;
    let greet = sink_server(true)?;

    let dir = std::env::temp_dir().join(format!("blastgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Declared first, so removed last: after the daemon using it stopped.
    let _scratch = crate::bench_postgres::ScratchDir(dir.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // A real resolver for the lookup cells, answering bench.test from a
    // hosts file (the cached case: no recursion behind it).
    let dns_port = free_udp_port()?;
    let (_dnsmasq, resolver) = start_dnsmasq(&dir, "127.0.0.9 bench.test\n", "1")?;
    let daemon_cpus = std::env::var("BLASTGATE_BENCH_PROXY_CPUS").unwrap_or_else(|_| "1".into());
    // A real OpenID Provider for the job-token cells, pinned like the
    // servers; the daemon fetches its keys at start. The token outlives
    // any run of this bench.
    let provider = oidc_provider::Provider::start(root, &dir.join("oidc"), &daemon_cpus)?;
    let job = json!({
        "repository": "acme/app", "ref": "refs/heads/main", "workflow": "bench",
        "actor": "octocat", "environment": "prod", "run_id": "1",
    });
    let token = dir.join("job.jwt");
    std::fs::write(&token, provider.job_token(AUDIENCE, &job, 6 * 3600)?)?;
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n[control]\nsocket = \"{d}/control.sock\"\n\
             [bpf]\npin_dir = \"/sys/fs/bpf/blastgate-bench\"\ntcp_fast_path = true\n[records]\nspool_dir = \"{d}/spool\"\n\
             [tls]\nca_dir = \"{d}/ca\"\n\
             [dns]\nlisten = \"127.0.0.1:{dns_port}\"\nupstreams = [\"{resolver}\"]\n\
             queries_per_sec = 1000000\nburst = 1000000\n\
             [egress]\nallow = [\"bench.test:443\"]\n\
             [[oidc.issuers]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n\
             [[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{echo}\"\n\
             [[targets]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"{sink}\"\n\
             [[targets]]\nname = \"greet\"\nprotocol = \"tcp\"\naddress = \"{greet}\"\n",
            d = dir.display(),
            issuer = provider.issuer,
        ),
    )?;
    let mut daemon = Guard::spawn(
        "blastgate daemon",
        Command::new("taskset")
            .args(["-c", &daemon_cpus])
            .arg(&bin)
            .args([
                "daemon",
                "--detach-on-exit",
                "--deadline",
                "3600",
                "--config",
            ])
            .arg(&config)
            .env("BLASTGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for_daemon(&bin, &config)?;
    let r = Runner {
        bin: &bin,
        probe: &probe,
        config: &config,
    };
    // Reference: a bare forwarder (no identity, no records) in front of
    // each server, pinned like the daemon.
    let fwd_echo = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let fwd_sink = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let fwd_greet = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut forwarders = Vec::new();
    for (listen, upstream) in [(fwd_echo, echo), (fwd_sink, sink), (fwd_greet, greet)] {
        forwarders.push(Guard::spawn(
            "bare forwarder",
            Command::new("taskset")
                .args(["-c", &daemon_cpus])
                .arg(&probe)
                .args(["forward", &listen.to_string(), &upstream.to_string()])
                .stdout(Stdio::null()),
        )?);
        wait_for("bare forwarder", Duration::from_secs(10), || {
            std::net::TcpStream::connect(listen).is_ok()
        })?;
    }

    // The first verification: the token must verify (blastgate run says
    // so), and a key fetch it may cause happens here, not in the cells.
    let (_, out) = r.run_true(Some(&token))?;
    let said = String::from_utf8_lossy(&out.stderr);
    if !said.contains("OIDC token verified") {
        bail!("the job token was not verified; blastgate run said: {said}");
    }
    // Warm-up: page cache, proxy caches, CPU frequency.
    for client in [
        Client::Direct,
        Client::Agent(None),
        Client::Agent(Some(&token)),
    ] {
        r.probe_as(
            client,
            &["bench-rtt".into(), echo.to_string(), "200".into()],
        )?;
    }
    for _ in 0..5 {
        r.run_true(None)?;
        r.run_true(Some(&token))?;
    }
    // Paths, in the order each repetition runs them: direct, the bare
    // forwarder, blastgate.
    let paths = [
        ("direct", false, echo, sink, greet),
        ("bare forwarder", false, fwd_echo, fwd_sink, fwd_greet),
        ("through blastgate", true, echo, sink, greet),
    ];
    let mut p50s = vec![Vec::new(); paths.len()];
    let mut p99s = vec![Vec::new(); paths.len()];
    let mut gbits = vec![Vec::new(); paths.len()];
    // Lookups: direct to the resolver, and as an agent (to 127.0.0.53,
    // which the kernel points at blastgate's resolver, which forwards).
    // The per-agent rate limit is raised above for this agent's loop.
    let lookups = 2000.to_string();
    let dns_paths = [
        (false, resolver.to_string()),
        (true, "127.0.0.53:53".to_string()),
    ];
    let mut dns_p50 = vec![Vec::new(); 2];
    let mut dns_p99 = vec![Vec::new(); 2];
    let mut greeted = vec![Vec::new(); paths.len()];
    // Job tokens, indexed by `with a token as usize`: per-repetition p50
    // and p99 of `blastgate run` start-ups (ms) and of connections (µs).
    let mut start_p50 = [Vec::new(), Vec::new()];
    let mut start_p99 = [Vec::new(), Vec::new()];
    let mut tok_p50 = [Vec::new(), Vec::new()];
    let mut tok_p99 = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for (i, (_, proxied, e, s, g)) in paths.iter().enumerate() {
            let v = r.probe(
                *proxied,
                &["bench-rtt".into(), e.to_string(), connections.to_string()],
            )?;
            p50s[i].push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
            p99s[i].push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
            let v = r.probe(
                *proxied,
                &["bench-bulk".into(), s.to_string(), bytes.to_string()],
            )?;
            gbits[i].push(v["gbit_per_s"].as_f64().unwrap_or(f64::NAN));
            let v = r.probe(
                *proxied,
                &[
                    "bench-bulk".into(),
                    g.to_string(),
                    bytes.to_string(),
                    "--greeting".into(),
                ],
            )?;
            greeted[i].push(v["gbit_per_s"].as_f64().unwrap_or(f64::NAN));
        }
        for (i, (proxied, server)) in dns_paths.iter().enumerate() {
            let args = [
                "bench-dns".into(),
                server.clone(),
                "bench.test".into(),
                lookups.clone(),
            ];
            let v = r.probe(*proxied, &args)?;
            if v["ok"] != true {
                bail!("the lookup cell failed: {v}");
            }
            dns_p50[i].push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
            dns_p99[i].push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
        }
        let mut starts = [Vec::new(), Vec::new()];
        for i in 0..RUN_STARTS {
            for with in sides(i) {
                let (ms, _) = r.run_true(with.then_some(token.as_path()))?;
                starts[with as usize].push(ms);
            }
        }
        for (k, s) in starts.into_iter().enumerate() {
            start_p50[k].push(quantile(s.clone(), 0.5));
            start_p99[k].push(quantile(s, 0.99));
        }
        for with in sides(rep) {
            let client = Client::Agent(with.then_some(token.as_path()));
            let v = r.probe_as(
                client,
                &[
                    "bench-rtt".into(),
                    echo.to_string(),
                    connections.to_string(),
                ],
            )?;
            tok_p50[with as usize].push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
            tok_p99[with as usize].push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
        }
        eprintln!("bench: repetition {}/{reps} done", rep + 1);
    }
    daemon.stop();
    drop(forwarders);
    drop(provider);

    let p50: Vec<f64> = p50s.into_iter().map(median).collect();
    let p99: Vec<f64> = p99s.into_iter().map(median).collect();
    let gbit: Vec<f64> = gbits.into_iter().map(median).collect();
    let greet_gbit: Vec<f64> = greeted.into_iter().map(median).collect();
    println!(
        "\nblastgate bench: medians of {reps} alternating repetitions \
         (client on CPU 0, proxy and forwarder on CPU {daemon_cpus})"
    );
    println!("connect + 1-byte echo + close, {connections} connections per repetition;");
    println!(
        "bulk: {} MiB over one connection, streamed from the first byte, and after a \
         one-byte greeting from the server (\"greeted\").",
        bytes >> 20
    );
    println!(
        "  {:<20} {:>9} {:>9} {:>11} {:>11} {:>10} {:>11} {:>10} {:>11}",
        "path",
        "p50 µs",
        "p99 µs",
        "added p50",
        "p50 ratio",
        "Gbit/s",
        "bulk ratio",
        "greeted",
        "gr. ratio"
    );
    for (i, (name, ..)) in paths.iter().enumerate() {
        println!(
            "  {:<20} {:>9.1} {:>9.1} {:>11.1} {:>11.2} {:>10.2} {:>11.2} {:>10.2} {:>11.2}",
            name,
            p50[i],
            p99[i],
            p50[i] - p50[0],
            p50[i] / p50[0],
            gbit[i],
            gbit[i] / gbit[0],
            greet_gbit[i],
            greet_gbit[i] / greet_gbit[0]
        );
    }
    println!(
        "  blastgate vs bare forwarder: +{:.1} µs p50, bulk {:.2}x, greeted bulk {:.2}x",
        p50[2] - p50[1],
        gbit[2] / gbit[1],
        greet_gbit[2] / greet_gbit[1]
    );
    let dns_p50: Vec<f64> = dns_p50.into_iter().map(median).collect();
    let dns_p99: Vec<f64> = dns_p99.into_iter().map(median).collect();
    let added = dns_p50[1] - dns_p50[0];
    println!(
        "\nDNS lookup (A, {lookups} per repetition, dnsmasq answering from its hosts file):\n  \
         direct to the resolver      p50 {:>7.1} µs  p99 {:>7.1} µs\n  \
         through blastgate (agent)   p50 {:>7.1} µs  p99 {:>7.1} µs\n  \
         added p50 {added:.1} µs: goal < 100 µs: {}",
        dns_p50[0],
        dns_p99[0],
        dns_p50[1],
        dns_p99[1],
        if added < 100.0 { "met" } else { "NOT met" }
    );

    let oidc = report_oidc(
        reps,
        connections,
        &start_p50,
        &start_p99,
        &tok_p50,
        &tok_p99,
    );

    let row = |i: usize| {
        json!({"p50_us": p50[i], "p99_us": p99[i], "gbit_per_s": gbit[i],
               "greeted_gbit_per_s": greet_gbit[i]})
    };
    let report = json!({
        "reps": reps, "connections": connections, "bytes": bytes, "proxy_cpus": daemon_cpus,
        "direct": row(0), "bare_forwarder": row(1), "blastgate": row(2),
        "added_p50_us": p50[2] - p50[0], "ratio_p50": p50[2] / p50[0],
        "bulk_ratio": gbit[2] / gbit[0], "bulk_ratio_vs_forwarder": gbit[2] / gbit[1],
        "greeted_bulk_ratio": greet_gbit[2] / greet_gbit[0],
        "dns": {"direct_p50_us": dns_p50[0], "direct_p99_us": dns_p99[0],
                "blastgate_p50_us": dns_p50[1], "blastgate_p99_us": dns_p99[1],
                "added_p50_us": added},
        "oidc": oidc,
    });
    // Policy decision latency, same binary.
    println!();
    sh::run(
        Command::new(&bin)
            .args(["policy", "bench"])
            .arg(root.join("policies")),
    )?;

    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("intercept.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(also written to target/bench/intercept.json)");
    Ok(())
}

/// Prints the job-token cells and returns them for the JSON report.
fn report_oidc(
    reps: usize,
    connections: usize,
    start_p50: &[Vec<f64>; 2],
    start_p99: &[Vec<f64>; 2],
    tok_p50: &[Vec<f64>; 2],
    tok_p99: &[Vec<f64>; 2],
) -> Value {
    let med = |v: &[Vec<f64>; 2]| [median(v[0].clone()), median(v[1].clone())];
    let (s50, s99, t50, t99) = (med(start_p50), med(start_p99), med(tok_p50), med(tok_p99));
    let start_noise = spread(&start_p50[0]).max(spread(&start_p50[1]));
    let noise = spread(&tok_p50[0]).max(spread(&tok_p50[1]));
    let (start_added, added) = (s50[1] - s50[0], t50[1] - t50[0]);
    let within = |d: f64, noise: f64| {
        if reps < 2 {
            "one repetition, no spread to compare with"
        } else if d.abs() <= noise {
            "within it"
        } else {
            "NOT within it"
        }
    };
    println!(
        "\nJob tokens (OIDC; a real OpenID Provider on loopback, keys cached), medians of {reps} repetitions:\n  \
         `blastgate run --agent bench -- /bin/true`, wall time, {RUN_STARTS} start-ups per side \
         per repetition, alternating (p99 of {RUN_STARTS} is about the slowest):\n  \
         without a token            p50 {:>7.2} ms  p99 {:>7.2} ms\n  \
         with --oidc-token-file     p50 {:>7.2} ms  p99 {:>7.2} ms\n  \
         added per run {start_added:+.2} ms p50 ({:+.2} ms p99); rep-to-rep spread of p50 {start_noise:.2} ms\n  \
         per connection (connect + 1-byte echo + close, {connections} connections), agent started:\n  \
         without a token            p50 {:>7.1} µs  p99 {:>7.1} µs\n  \
         with a token               p50 {:>7.1} µs  p99 {:>7.1} µs\n  \
         added p50 {added:+.1} µs ({:+.1} µs p99); rep-to-rep spread of p50 {noise:.1} µs: {}",
        s50[0],
        s99[0],
        s50[1],
        s99[1],
        s99[1] - s99[0],
        t50[0],
        t99[0],
        t50[1],
        t99[1],
        t99[1] - t99[0],
        within(added, noise),
    );
    json!({
        "run_true_ms": {
            "starts_per_rep": RUN_STARTS,
            "without_token": {"p50": s50[0], "p99": s99[0]},
            "with_token": {"p50": s50[1], "p99": s99[1]},
            "added_p50": start_added, "spread_p50": start_noise,
        },
        "connection_us": {
            "without_token": {"p50": t50[0], "p99": t99[0]},
            "with_token": {"p50": t50[1], "p99": t99[1]},
            "added_p50": added, "spread_p50": noise,
            "within_spread": reps >= 2 && added.abs() <= noise,
        },
    })
}

/// Recording: `Recorder::record` against an encode + write(2) floor, and
/// the shipper against a bare INSERT of the same rows, in one run against
/// a ClickHouse of its own (`userspace/benches/records.rs`).
pub fn records(root: &Path, events: usize) -> Result<()> {
    let data = std::env::temp_dir().join(format!("blastgate-bench-ch-{}", std::process::id()));
    let port = free_port()?;
    let url = crate::clickhouse::start(port, &data)?;
    let result = (|| -> Result<Value> {
        let out = sh::cargo(root)
            .args(["bench", "-p", "blastgate", "--bench", "records", "--"])
            .args(["--events", &events.to_string(), "--clickhouse", &url])
            .stderr(Stdio::inherit())
            .output()
            .context("running the records benchmark")?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!(
            "{}",
            text.lines()
                .filter(|l| !l.starts_with('{'))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        if !out.status.success() {
            bail!("the records benchmark failed");
        }
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("records benchmark output: {last}"))
    })();
    let _ = crate::clickhouse::stop(&data);
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("records.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(also written to target/bench/records.json)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.5), 25.0);
        assert_eq!(quantile(v.clone(), 0.99), 50.0);
        assert_eq!(quantile(vec![3.0], 0.99), 3.0);
        assert!(quantile(Vec::new(), 0.5).is_nan());
        assert_eq!(spread(&[4.0, 1.5, 3.0]), 2.5);
    }

    #[test]
    fn sides_alternate_which_goes_first() {
        assert_eq!(sides(0), [false, true]);
        assert_eq!(sides(1), [true, false]);
    }
}

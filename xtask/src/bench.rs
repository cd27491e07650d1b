//! `cargo xtask bench`: the whole-path cost of interception, measured side
//! by side with the direct path in the same run.
//!
//! The client is blastgate-probe (pinned to CPU 0); through blastgate it is
//! run under `blastgate run`, directly it is not. The daemon is pinned to
//! CPU 1. Direct and proxied repetitions alternate so that drift on this
//! shared 2-vCPU machine hits both alike; medians are reported.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    demo::{wait_for, wait_for_daemon, Guard},
    sh,
};

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

struct Runner<'a> {
    bin: &'a Path,
    probe: &'a Path,
    config: &'a Path,
}

impl Runner<'_> {
    fn probe(&self, proxied: bool, args: &[String]) -> Result<Value> {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]);
        if proxied {
            c.arg(self.bin)
                .args(["run", "--agent", "bench", "--config"])
                .arg(self.config)
                .arg("--");
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
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n[control]\nsocket = \"{d}/control.sock\"\n\
             [bpf]\npin_dir = \"/sys/fs/bpf/blastgate-bench\"\ntcp_fast_path = true\n[records]\nspool_dir = \"{d}/spool\"\n\
             [dns]\nlisten = \"127.0.0.1:{dns_port}\"\nupstreams = [\"{resolver}\"]\n\
             queries_per_sec = 1000000\nburst = 1000000\n\
             [egress]\nallow = [\"bench.test:443\"]\n\
             [[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{echo}\"\n\
             [[targets]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"{sink}\"\n\
             [[targets]]\nname = \"greet\"\nprotocol = \"tcp\"\naddress = \"{greet}\"\n",
            d = dir.display()
        ),
    )?;
    let daemon_cpus = std::env::var("BLASTGATE_BENCH_PROXY_CPUS").unwrap_or_else(|_| "1".into());
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

    // Warm-up: page cache, proxy caches, CPU frequency.
    for proxied in [false, true] {
        r.probe(
            proxied,
            &["bench-rtt".into(), echo.to_string(), "200".into()],
        )?;
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
        eprintln!("bench: repetition {}/{reps} done", rep + 1);
    }
    daemon.stop();
    drop(forwarders);

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

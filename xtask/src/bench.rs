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
    demo::{wait_for, Guard},
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

/// Reads to EOF and answers with the byte count (8 bytes, big-endian).
fn sink_server() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.2:0")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
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
        let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("probe said {out:?}"))?;
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
    let sink = sink_server()?;

    let dir = std::env::temp_dir().join(format!("blastgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.join("blastgate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n[control]\nsocket = \"{d}/control.sock\"\n\
             [bpf]\npin_dir = \"/sys/fs/bpf/blastgate-bench\"\n[records]\nspool_dir = \"{d}/spool\"\n\
             [[targets]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"{echo}\"\n\
             [[targets]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"{sink}\"\n",
            d = dir.display()
        ),
    )?;
    let mut daemon = Guard::spawn(
        "blastgate daemon",
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(&bin)
            .args(["daemon", "--detach-on-exit", "--deadline", "3600", "--config"])
            .arg(&config)
            .env("BLASTGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for("daemon", Duration::from_secs(20), || {
        Command::new(&bin)
            .args(["status", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let r = Runner { bin: &bin, probe: &probe, config: &config };

    // Warm-up: page cache, proxy caches, CPU frequency.
    for proxied in [false, true] {
        r.probe(proxied, &["bench-rtt".into(), echo.to_string(), "200".into()])?;
    }
    let mut rtt = [(vec![], vec![]), (vec![], vec![])];
    let mut bulk = [vec![], vec![]];
    for rep in 0..reps {
        for (i, proxied) in [false, true].into_iter().enumerate() {
            let v = r.probe(proxied, &["bench-rtt".into(), echo.to_string(), connections.to_string()])?;
            rtt[i].0.push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
            rtt[i].1.push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
            let v = r.probe(proxied, &["bench-bulk".into(), sink.to_string(), bytes.to_string()])?;
            bulk[i].push(v["gbit_per_s"].as_f64().unwrap_or(f64::NAN));
        }
        eprintln!("bench: repetition {}/{reps} done", rep + 1);
    }
    daemon.stop();

    let [(d50, d99), (p50, p99)] = rtt;
    let (d50, d99, p50, p99) = (median(d50), median(d99), median(p50), median(p99));
    let [dbulk, pbulk] = bulk;
    let (dbulk, pbulk) = (median(dbulk), median(pbulk));
    println!("\nblastgate bench: medians of {reps} alternating repetitions (client on CPU 0, daemon on CPU 1)");
    println!("connect + 1-byte echo, {connections} connections per repetition:");
    println!("  {:<22} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    println!("  {:<22} {:>10.1} {:>10.1}", "direct", d50, d99);
    println!("  {:<22} {:>10.1} {:>10.1}", "through blastgate", p50, p99);
    println!("  {:<22} {:>10.1} {:>10.1}", "added", p50 - d50, p99 - d99);
    println!("  {:<22} {:>10.2} {:>10.2}", "ratio (proxied/direct)", p50 / d50, p99 / d99);
    println!("bulk TCP, {} MiB per repetition:", bytes >> 20);
    println!("  direct              {dbulk:>8.2} Gbit/s");
    println!("  through blastgate   {pbulk:>8.2} Gbit/s");
    println!("  ratio               {:>8.2}", pbulk / dbulk);

    let report = json!({
        "reps": reps, "connections": connections, "bytes": bytes,
        "rtt_us": {"direct": {"p50": d50, "p99": d99}, "proxied": {"p50": p50, "p99": p99},
                   "added_p50": p50 - d50, "ratio_p50": p50 / d50, "ratio_p99": p99 / d99},
        "bulk_gbit_per_s": {"direct": dbulk, "proxied": pbulk, "ratio": pbulk / dbulk},
    });
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("intercept.json"), serde_json::to_string_pretty(&report)?)?;
    println!("(also written to target/bench/intercept.json)");
    Ok(())
}

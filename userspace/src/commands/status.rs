//! `blastgate status`.

use std::process::ExitCode;

use crate::{
    config::Config,
    control::{
        client::Client,
        proto::{Request, Response},
    },
    intercept::{loader, KernelMaps},
};

pub fn run(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    match Client::call(&config.control.socket, &Request::Status) {
        Ok(Response::Status(s)) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(ExitCode::SUCCESS);
            }
            // Alarms first: they mean agents are being refused, or unguarded.
            for a in &s.alarms {
                println!("ALARM: {a}");
            }
            println!(
                "daemon: running (pid {}, version {})",
                s.daemon_pid, s.version
            );
            println!("pinned: {}", s.pin_dir.display());
            println!("cgroup root: {}", s.cgroup_root.display());
            println!("attached programs:");
            for a in &s.attached {
                println!("  {:<28} {}", a.program, a.attach_point);
            }
            if s.degraded.is_empty() {
                println!("degraded: none");
            } else {
                for d in &s.degraded {
                    println!("degraded: {d}");
                }
            }
            println!("policies: {}", s.policies);
            if s.weakened.is_empty() {
                println!("weakened: nothing (every setting is at its secure default)");
            } else {
                println!("weakened ({}):", s.weakened.len());
                for w in &s.weakened {
                    println!("  {w}");
                }
            }
            println!("labelled processes: {}", s.labelled_processes);
            println!(
                "agents: {}",
                if s.agents.is_empty() {
                    "-".into()
                } else {
                    s.agents.join(", ")
                }
            );
            println!("proxy: {:?}, {} targets", s.listen, s.targets);
            println!("spool: {}", s.spool_dir.display());
            for (name, v) in &s.counters {
                println!("  {name}: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        Err(e) if e.to_string().contains("permission denied") => Err(e.into()),
        Err(e) => {
            let pins = loader::pinned_links(&config.bpf.pin_dir);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "daemon": "not running",
                        "error": e.to_string(),
                        "pin_dir": config.bpf.pin_dir,
                        "pinned_links": pins,
                    })
                );
            } else {
                println!("daemon: not running ({e})");
                // The kernel keeps refusing, and counting, without the daemon.
                if let Ok(maps) = KernelMaps::from_pins(&loader::maps_dir(&config.bpf.pin_dir)) {
                    for a in maps.alarms() {
                        println!("ALARM: {a}");
                    }
                }
                if pins.is_empty() {
                    println!(
                        "pinned: nothing under {}: agents are not intercepted",
                        config.bpf.pin_dir.display()
                    );
                } else {
                    println!(
                        "pinned: {} links under {}: agent connections are refused until the daemon restarts (fail closed)",
                        pins.len(),
                        config.bpf.pin_dir.display()
                    );
                }
            }
            Ok(ExitCode::from(3))
        }
    }
}

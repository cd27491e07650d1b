//! The cost of recording, measured against the floor under it.
//!
//! - hot path: `Recorder::record` (what a session awaits per event) against
//!   the same JSON line `write(2)` to a file by hand, back to back and
//!   paced at 50,000 events/s, with the writer's `write(2)` calls and
//!   wake-ups counted;
//! - shipping: the shipper draining a spool of N events into ClickHouse
//!   against a bare RowBinary INSERT of the same rows held in memory (what
//!   this ClickHouse on this machine can take at all).
//!
//! Run by `cargo xtask bench` (which starts a local ClickHouse); prints a
//! JSON object on the last line.

use std::{
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

use blastgate::{
    config::{ClickhouseConfig, RecordsConfig},
    identity::{Ancestor, Caller},
    records::{
        clickhouse::{rows::EventRow, schema, shipper::Shipper},
        spool, Event, EventKind, Verdict,
    },
};

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

/// A mix as a gateway writes it: per session, an open, eight statements
/// and a close, each with the caller, lineage and destination.
fn sample(i: u32) -> Event {
    let seq = i % 10;
    let kind = match seq {
        0 => EventKind::SessionOpened,
        9 => EventKind::SessionClosed,
        _ => EventKind::Statement,
    };
    let mut e = Event::daemon(kind, Verdict::Allow, "policy sql-read");
    // Sessions of ten consecutive events share an id.
    e.session_id = uuid::Uuid::from_u128(u128::from(i / 10) + 1);
    e.seq = seq;
    if kind == EventKind::Statement {
        e.text = Some(format!(
            "SELECT id, status, total FROM orders WHERE customer_id = {i} ORDER BY created_at DESC LIMIT 20"
        ));
    }
    e.caller = Some(Caller {
        agent: "claude".into(),
        agent_id: 7,
        pid: 4242,
        tid: 4242,
        uid: 1001,
        gid: 1001,
        comm: "psql".into(),
        exe: Some("/usr/bin/psql".into()),
        cgroup_id: 1234,
        lineage: vec![
            Ancestor {
                pid: 4200,
                comm: "bash".into(),
            },
            Ancestor {
                pid: 4100,
                comm: "claude".into(),
            },
        ],
        oidc: None,
        job: None,
    });
    e.target = Some("orders-db".into());
    e.protocol = Some("tcp".into());
    e.action = Some("connect".into());
    e.policy_id = Some("connect-default".into());
    e.orig_dst = Some(SocketAddr::from(([127, 0, 0, 2], 5432)));
    e.bytes_from_agent = Some(1234);
    e.bytes_to_agent = Some(56789);
    e.duration_us = Some(120_000);
    e
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

struct Latency {
    mean: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(0.0),
    }
}

fn ch_count(url: &str, sql: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--data-binary", sql, url])
        .output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; only our own flags matter.
    let events: usize = arg("--events").map_or(Ok(500_000), |s| s.parse())?;
    let url = arg("--clickhouse");
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    let samples: Vec<Event> = (0..events as u32).map(sample).collect();

    // The floor: the same lines, encoded and written by hand.
    let raw_path = dir.path().join("raw.jsonl");
    let mut raw = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)?;
    let mut floor = Vec::with_capacity(events);
    for e in &samples {
        let t = Instant::now();
        let mut line = serde_json::to_vec(e)?;
        line.push(b'\n');
        raw.write_all(&line)?;
        floor.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(raw);
    std::fs::remove_file(&raw_path)?;

    // The hot path: what a session awaits for each event.
    let recorder = spool::open(&RecordsConfig {
        spool_dir: spool_dir.clone(),
        segment_bytes: 64 << 20,
        flush_interval_ms: 10,
        max_spool_bytes: u64::MAX,
    })?;
    let record = rt.block_on(async {
        let mut v = Vec::with_capacity(events);
        for e in samples.iter().cloned() {
            let t = Instant::now();
            recorder.record(e).await?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        recorder.flush().await?;
        anyhow::Ok(v)
    })?;
    let burst = recorder.stats();
    // Paced: one event every 20 µs (50,000/s), as busy sessions record:
    // the writer should neither be woken per event nor write per event.
    let paced_dir = dir.path().join("paced");
    let paced_recorder = spool::open(&RecordsConfig {
        spool_dir: paced_dir.clone(),
        segment_bytes: 64 << 20,
        flush_interval_ms: 10,
        max_spool_bytes: u64::MAX,
    })?;
    let paced_n = (events / 10).max(1000);
    let paced = rt.block_on(async {
        let mut v = Vec::with_capacity(paced_n);
        let start = Instant::now();
        for (i, e) in samples.iter().take(paced_n).cloned().enumerate() {
            let due = start + Duration::from_micros(20 * i as u64);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            paced_recorder.record(e).await?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        paced_recorder.flush().await?;
        anyhow::Ok(v)
    })?;
    let paced_stats = paced_recorder.stats();
    drop(paced_recorder);
    let floor = latency(floor);
    let record = latency(record);
    let paced = latency(paced);
    println!(
        "hot path (µs/event)        mean {:6.2}  p50 {:6.2}  p99 {:6.2}  max {:8.1}",
        record.mean, record.p50, record.p99, record.max
    );
    println!(
        "  back to back: {:.0} events per write(2), {} writer wake-ups for {} events",
        burst.written as f64 / burst.writes.max(1) as f64,
        burst.wakeups,
        burst.written
    );
    println!(
        "  paced 50k/s:   mean {:6.2}  p50 {:6.2}  p99 {:6.2}  max {:8.1}; {:.0} events per write(2), {} wake-ups for {} events",
        paced.mean,
        paced.p50,
        paced.p99,
        paced.max,
        paced_stats.written as f64 / paced_stats.writes.max(1) as f64,
        paced_stats.wakeups,
        paced_stats.written
    );
    println!(
        "  floor: encode + write(2) mean {:6.2}  p50 {:6.2}  p99 {:6.2}  max {:8.1}   ratio p50 {:.2}",
        floor.mean,
        floor.p50,
        floor.p99,
        floor.max,
        record.p50 / floor.p50.max(f64::EPSILON)
    );

    let mut shipping = serde_json::Value::Null;
    if let Some(url) = url {
        let database = format!("blastgate_bench_{}", std::process::id());
        let cfg = ClickhouseConfig::single(&url, &database);
        rt.block_on(schema::migrate(&cfg))?;

        // The ceiling: the same rows, already in memory, one INSERT per batch.
        let client = blastgate::records::clickhouse::client(&cfg)?
            .with_database(database.clone())
            .with_validation(false);
        let ceiling = rt.block_on(async {
            ch_count(
                &url,
                &format!("CREATE TABLE {database}.events_ceiling AS {database}.events"),
            );
            let rows: Vec<EventRow> = samples.iter().map(EventRow::from).collect();
            let t = Instant::now();
            for chunk in rows.chunks(cfg.batch) {
                let mut insert = client.insert::<EventRow>("events_ceiling").await?;
                for r in chunk {
                    insert.write(r).await?;
                }
                insert.end().await?;
            }
            anyhow::Ok(t.elapsed())
        })?;

        // The shipper, from the spool the hot path wrote.
        let stop = tokio_util::sync::CancellationToken::new();
        let shipper = Shipper {
            cfg: cfg.clone(),
            spool_dir: spool_dir.clone(),
            batch: cfg.batch,
            warn_bytes: u64::MAX,
        };
        let t = Instant::now();
        let handle = rt.spawn(shipper.run(stop.clone()));
        let count_sql = format!("SELECT count() FROM {database}.events");
        let deadline = Instant::now() + Duration::from_secs(600);
        while ch_count(&url, &count_sql) < events as u64 {
            if Instant::now() > deadline {
                anyhow::bail!("the shipper did not deliver {events} events in 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let shipped = t.elapsed();
        stop.cancel();
        let _ = rt.block_on(handle);
        let _ = ch_count(&url, &format!("DROP DATABASE {database}"));
        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        println!(
            "shipping                   {:>9.0} events/s ({events} events in {:.2} s)",
            rate(shipped),
            shipped.as_secs_f64()
        );
        println!(
            "  ceiling: bare INSERT     {:>9.0} events/s ({:.2} s)   ratio {:.2}",
            rate(ceiling),
            ceiling.as_secs_f64(),
            rate(shipped) / rate(ceiling)
        );
        shipping = serde_json::json!({
            "events": events,
            "shipper_events_per_s": rate(shipped),
            "bare_insert_events_per_s": rate(ceiling),
            "ratio": rate(shipped) / rate(ceiling),
        });
    } else {
        println!("shipping: skipped (no --clickhouse URL)");
    }
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "record_us": {"mean": record.mean, "p50": record.p50, "p99": record.p99, "max": record.max},
            "record_events_per_write": burst.written as f64 / burst.writes.max(1) as f64,
            "record_wakeups": burst.wakeups,
            "paced_us": {"mean": paced.mean, "p50": paced.p50, "p99": paced.p99, "max": paced.max,
                         "events": paced_stats.written, "writes": paced_stats.writes, "wakeups": paced_stats.wakeups},
            "floor_us": {"mean": floor.mean, "p50": floor.p50, "p99": floor.p99, "max": floor.max},
            "shipping": shipping,
        })
    );
    Ok(())
}

//! `blastgate events`.

use std::collections::VecDeque;

use crate::{
    config::Config,
    control::{
        client::Client,
        proto::{Request, Response},
    },
    records::{spool, Event},
};

pub fn run(config: &Config, follow: bool, json: bool, last: usize) -> anyhow::Result<()> {
    if !follow {
        for e in tail(&config.records.spool_dir, last)? {
            print(&e, json)?;
        }
        return Ok(());
    }
    let mut c = Client::connect(&config.control.socket)?;
    c.send(&Request::Follow)?;
    while let Some(r) = c.recv()? {
        match r {
            Response::Event(e) => print(&e, json)?,
            Response::Lagged { missed } => {
                eprintln!(
                    "blastgate: fell behind, {missed} events not shown (they are in the spool)"
                )
            }
            Response::Error { message } => anyhow::bail!(message),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
    Ok(())
}

/// Every event in the spool segments still on disk, in order.
pub fn all(dir: &std::path::Path) -> anyhow::Result<Vec<Event>> {
    let mut out = Vec::new();
    for (_, path) in spool::segments(dir)? {
        out.extend(spool::events_in(&path)?);
    }
    Ok(out)
}

/// The last `n` events across the spool segments still on disk.
fn tail(dir: &std::path::Path, n: usize) -> anyhow::Result<VecDeque<Event>> {
    let mut out = VecDeque::with_capacity(n);
    for (_, path) in spool::segments(dir)? {
        for e in spool::events_in(&path)? {
            if out.len() == n {
                out.pop_front();
            }
            out.push_back(e);
        }
    }
    Ok(out)
}

fn print(e: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    // Replay data is for `sessions replay`, not for this listing.
    if e.kind == crate::records::EventKind::Io {
        return Ok(());
    }
    let name = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_default();
    let mut line = format!(
        "{} {} {}",
        humantime::format_rfc3339_micros(e.ts),
        name(serde_json::to_value(e.kind)?),
        name(serde_json::to_value(e.verdict)?),
    );
    if let Some(c) = &e.caller {
        line += &format!(
            " agent={} pid={} uid={} comm={}",
            c.agent, c.pid, c.uid, c.comm
        );
    }
    if let Some(d) = e.orig_dst {
        line += &format!(" dst={d}");
    }
    if let Some(t) = &e.target {
        line += &format!(" target={t}");
    }
    if let Some(a) = &e.action {
        line += &format!(" action={a}");
    }
    if let Some(p) = &e.policy_id {
        line += &format!(" policy={p}");
    }
    if let Some(t) = &e.text {
        line += &format!(" text={t:?}");
    }
    if let Some(st) = e.status {
        line += &format!(" status={st}");
    }
    if let Some(x) = e.exit_status {
        line += &format!(" exit={x}");
    }
    if let (Some(a), Some(b)) = (e.bytes_from_agent, e.bytes_to_agent) {
        line += &format!(" bytes={a}/{b}");
    }
    if let Some(r) = &e.reason {
        line += &format!(" reason={r:?}");
    }
    println!("{line}");
    Ok(())
}

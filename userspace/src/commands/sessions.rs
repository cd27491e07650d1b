//! `blastgate sessions list|show|replay|export`: the ClickHouse record, for
//! humans and their players.

use ::clickhouse::Row;

use crate::records::clickhouse::{self as records_ch, query};
use serde::{Deserialize, Serialize};

use crate::commands::{cli::SessionsCommand, client_config};

#[derive(Debug, Row, Deserialize, Serialize)]
struct SessionLine {
    id: String,
    agent: String,
    pid: u32,
    uid: u32,
    comm: String,
    target: String,
    protocol: String,
    orig_dst: String,
    started: String,
    ended: String,
    bytes_from_agent: u64,
    bytes_to_agent: u64,
    verdict: String,
}

#[derive(Debug, Row, Deserialize, Serialize)]
struct EventLine {
    seq: u32,
    at: String,
    kind: String,
    verdict: String,
    action: String,
    policy_id: String,
    reason: String,
    text: String,
}

fn clickhouse_client(config: Option<&std::path::Path>) -> anyhow::Result<::clickhouse::Client> {
    let cfg = client_config(config)?;
    let ch = cfg
        .clickhouse
        .ok_or_else(|| anyhow::anyhow!("no [clickhouse] section in the config"))?;
    Ok(records_ch::client(&ch)?.with_database(ch.database.clone()))
}

/// A session's events and replay data in playing order, all of it.
async fn timeline(
    id: uuid::Uuid,
    config: Option<&std::path::Path>,
) -> anyhow::Result<query::Timeline> {
    let client = clickhouse_client(config)?;
    let t = query::timeline(&client, id, None).await?;
    if t.rows.is_empty() {
        anyhow::bail!("no session {id} in ClickHouse (it may still be in the spool)");
    }
    Ok(t)
}

async fn replay(
    id: uuid::Uuid,
    speed: f64,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    if !(speed.is_finite() && speed > 0.0) {
        anyhow::bail!("--speed must be a positive number, got {speed}");
    }
    let query::Timeline {
        start_us: start,
        rows,
        ..
    } = timeline(id, config).await?;
    let mut clock = start;
    let mut out = std::io::stdout().lock();
    for r in &rows {
        let wait_us = (r.at_us - clock).max(0) as f64 / speed;
        if wait_us >= 1.0 {
            out.flush()?;
            tokio::time::sleep(std::time::Duration::from_micros(wait_us as u64)).await;
        }
        clock = clock.max(r.at_us);
        let at = (r.at_us - start) as f64 / 1e6;
        if r.io {
            // Only what the agent saw goes to stdout; input and resizes
            // are part of the recording, not of the picture.
            if r.stream == "o" {
                out.write_all(r.data.as_bytes())?;
            }
            continue;
        }
        out.flush()?;
        eprintln!("[{at:>9.3}s] {}", query::decision_line(r));
    }
    out.flush()?;
    Ok(())
}

/// The session as an asciicast v2 file (see [`query::asciicast`]).
async fn export_asciicast(
    id: uuid::Uuid,
    output: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = query::asciicast(id, &timeline(id, config).await?);
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

pub async fn run(cmd: SessionsCommand) -> anyhow::Result<()> {
    match cmd {
        SessionsCommand::List {
            agent,
            target,
            since,
            limit,
            json,
            config,
        } => {
            let client = clickhouse_client(config.as_deref())?;
            let mut q = String::from(
                "SELECT toString(session_id) AS id, agent, pid, uid, comm, target, protocol, orig_dst, \
                 toString(start) AS started, ifNull(toString(end), '') AS ended, bytes_from_agent, \
                 bytes_to_agent, verdict FROM sessions FINAL WHERE 1",
            );
            if agent.is_some() {
                q += " AND agent = ?";
            }
            if target.is_some() {
                q += " AND target = ?";
            }
            if since.is_some() {
                q += " AND start >= now64(6) - toIntervalSecond(?)";
            }
            q += " ORDER BY sessions.start DESC LIMIT ?";
            let mut query = client.query(&q);
            if let Some(a) = &agent {
                query = query.bind(a.as_str());
            }
            if let Some(t) = &target {
                query = query.bind(t.as_str());
            }
            if let Some(s) = since {
                query = query.bind(std::time::Duration::from(s).as_secs());
            }
            let rows: Vec<SessionLine> = query.bind(limit).fetch_all().await?;
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{}  {}  agent={} pid={} comm={} target={} dst={} {} bytes={}/{}{}",
                        r.id,
                        r.started,
                        r.agent,
                        r.pid,
                        r.comm,
                        r.target,
                        r.orig_dst,
                        r.verdict,
                        r.bytes_from_agent,
                        r.bytes_to_agent,
                        if r.ended.is_empty() {
                            "  (open)".to_string()
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Ok(())
        }
        SessionsCommand::Replay { id, speed, config } => replay(id, speed, config.as_deref()).await,
        SessionsCommand::Export {
            id,
            asciicast: _,
            output,
            config,
        } => export_asciicast(id, output.as_deref(), config.as_deref()).await,
        SessionsCommand::Show { id, json, config } => {
            let client = clickhouse_client(config.as_deref())?;
            let rows: Vec<EventLine> = client
                .query(
                    "SELECT seq, toString(ts) AS at, kind, verdict, action, policy_id, reason, text \
                     FROM events FINAL WHERE session_id = toUUID(?) ORDER BY seq, events.ts",
                )
                .bind(id.to_string())
                .fetch_all()
                .await?;
            if rows.is_empty() {
                anyhow::bail!("no session {id} in ClickHouse (it may still be in the spool)");
            }
            for r in rows {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let mut line = format!("{:>4} {} {} {}", r.seq, r.at, r.kind, r.verdict);
                    for (k, v) in [
                        ("action", &r.action),
                        ("policy", &r.policy_id),
                        ("text", &r.text),
                        ("reason", &r.reason),
                    ] {
                        if !v.is_empty() {
                            line += &format!(" {k}={v:?}");
                        }
                    }
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

//! `blastgate sessions list|show|replay|export`: the ClickHouse record, for
//! humans and their players.

use ::clickhouse::Row;

use crate::records::clickhouse as records_ch;
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

/// A row of the replay: an audit event or a chunk of replay data.
#[derive(Debug, Row, Deserialize)]
struct ReplayRow {
    at_us: i64,
    seq: u32,
    io: bool,
    kind: String,
    verdict: String,
    action: String,
    policy_id: String,
    text: String,
    offset_us: u64,
    stream: String,
    data: String,
}

fn clickhouse_client(config: Option<&std::path::Path>) -> anyhow::Result<::clickhouse::Client> {
    let cfg = client_config(config)?;
    let ch = cfg
        .clickhouse
        .ok_or_else(|| anyhow::anyhow!("no [clickhouse] section in the config"))?;
    Ok(records_ch::client(&ch)?.with_database(ch.database.clone()))
}

/// A session's events and replay data in playing order, every row timed
/// in microseconds from the session start.
async fn timeline(
    id: uuid::Uuid,
    config: Option<&std::path::Path>,
) -> anyhow::Result<(i64, Vec<ReplayRow>)> {
    let client = clickhouse_client(config)?;
    let mut rows: Vec<ReplayRow> = client
        .query(
            "SELECT toUnixTimestamp64Micro(ts) AS at_us, seq, false AS io, kind, verdict, action, \
                    policy_id, text, toUInt64(0) AS offset_us, '' AS stream, '' AS data \
             FROM events FINAL WHERE session_id = toUUID(?) \
             UNION ALL \
             SELECT toUnixTimestamp64Micro(ts), seq, true, 'io', '', '', '', '', offset_us, stream, data \
             FROM io FINAL WHERE session_id = toUUID(?)",
        )
        .bind(id.to_string())
        .bind(id.to_string())
        .fetch_all()
        .await?;
    if rows.is_empty() {
        anyhow::bail!("no session {id} in ClickHouse (it may still be in the spool)");
    }
    // Replay data is timed from the session start, not by wall clock, so a
    // clock step mid-session does not distort the pauses.
    let start = rows
        .iter()
        .filter(|r| r.kind == "session_opened")
        .map(|r| r.at_us)
        .min()
        .unwrap_or_else(|| rows.iter().map(|r| r.at_us).min().unwrap_or(0));
    for r in rows.iter_mut().filter(|r| r.io) {
        r.at_us = start.saturating_add(i64::try_from(r.offset_us).unwrap_or(i64::MAX));
    }
    rows.sort_by_key(|r| (r.at_us, r.seq));
    Ok((start, rows))
}

/// One decision as a line: for the replay's stderr and the export's markers.
fn decision_line(r: &ReplayRow) -> String {
    let mut line = format!("{} {}", r.kind, r.verdict);
    for (k, v) in [
        ("action", &r.action),
        ("policy", &r.policy_id),
        ("text", &r.text),
    ] {
        if !v.is_empty() {
            line += &format!(" {k}={v:?}");
        }
    }
    line
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
    let (start, rows) = timeline(id, config).await?;
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
        eprintln!("[{at:>9.3}s] {}", decision_line(r));
    }
    out.flush()?;
    Ok(())
}

/// The session as an asciicast v2 file (what `asciinema play` and the web
/// player read): the terminal size from the first recorded one, output,
/// input and resizes as recorded, and every decision as a marker.
async fn export_asciicast(
    id: uuid::Uuid,
    output: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let (start, rows) = timeline(id, config).await?;
    // A client without a terminal of its own (`ssh -tt` from a script)
    // asks for 0x0: players need a real size.
    let (width, height) = rows
        .iter()
        .filter(|r| r.io && r.stream == "r")
        .filter_map(|r| r.data.split_once('x'))
        .filter_map(|(c, l)| Some((c.parse::<u32>().ok()?, l.parse::<u32>().ok()?)))
        .find(|&(c, l)| c > 0 && l > 0)
        .unwrap_or((80, 24));
    let mut text = serde_json::to_string(&serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": start / 1_000_000,
        "title": format!("blastgate session {id}"),
    }))?;
    text.push('\n');
    for r in &rows {
        let at = (r.at_us - start).max(0) as f64 / 1e6;
        let (code, data) = if r.io {
            (r.stream.as_str(), r.data.clone())
        } else {
            ("m", decision_line(r))
        };
        text += &serde_json::to_string(&serde_json::json!([at, code, data]))?;
        text.push('\n');
    }
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

//! `blastgate sessions list|show`: the ClickHouse record, for humans.

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
            let cfg = client_config(config.as_deref())?;
            let ch = cfg
                .clickhouse
                .ok_or_else(|| anyhow::anyhow!("no [clickhouse] section in the config"))?;
            let client = records_ch::client(&ch)?.with_database(ch.database.clone());
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
        SessionsCommand::Show { id, json, config } => {
            let cfg = client_config(config.as_deref())?;
            let ch = cfg
                .clickhouse
                .ok_or_else(|| anyhow::anyhow!("no [clickhouse] section in the config"))?;
            let client = records_ch::client(&ch)?.with_database(ch.database.clone());
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

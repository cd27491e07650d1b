//! Reading the record back, for the CLI (`blastgate sessions …`) and the
//! web console: recent sessions, one session's header and events, and its
//! events and replay data in playing order as an asciicast v2 file.
//!
//! Values reach ClickHouse as query parameters (`{name:Type}`), never in
//! the SQL text; every list is bounded by the caller.

use clickhouse::{error::Error, Client, Row};
use serde::Deserialize;
use uuid::Uuid;

/// A session as the console lists and heads it.
#[derive(Debug, Row, Deserialize)]
pub struct SessionSummary {
    pub id: String,
    /// `YYYY-MM-DD HH:MM:SS`, UTC.
    pub started: String,
    pub start_us: i64,
    /// Empty while the session is open.
    pub ended: String,
    pub agent: String,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub oidc_sub: String,
    pub repository: String,
    pub git_ref: String,
    pub workflow: String,
    pub actor: String,
    pub target: String,
    pub protocol: String,
    pub orig_dst: String,
    pub bytes_from_agent: u64,
    pub bytes_to_agent: u64,
    pub verdict: String,
}

/// Which sessions to list: newest first, at most `limit`.
#[derive(Debug, Default)]
pub struct SessionFilter {
    pub id: Option<Uuid>,
    pub agent: Option<String>,
    pub target: Option<String>,
    pub limit: u32,
}

pub async fn sessions(
    client: &Client,
    filter: &SessionFilter,
) -> Result<Vec<SessionSummary>, Error> {
    let mut sql = String::from(
        "SELECT toString(session_id) AS id, formatDateTime(start, '%F %T') AS started, \
                toUnixTimestamp64Micro(start) AS start_us, \
                ifNull(formatDateTime(end, '%F %T'), '') AS ended, agent, pid, uid, comm, exe, \
                oidc_sub, oidc_claims['repository'] AS repository, oidc_claims['ref'] AS git_ref, \
                oidc_claims['workflow'] AS workflow, oidc_claims['actor'] AS actor, target, \
                protocol, orig_dst, bytes_from_agent, bytes_to_agent, verdict \
         FROM sessions FINAL WHERE 1",
    );
    if filter.id.is_some() {
        sql += " AND session_id = {id:UUID}";
    }
    if filter.agent.is_some() {
        sql += " AND agent = {agent:String}";
    }
    if filter.target.is_some() {
        sql += " AND target = {target:String}";
    }
    sql += " ORDER BY sessions.start DESC LIMIT {limit:UInt32}";
    let mut q = client.query(&sql).param("limit", filter.limit);
    if let Some(id) = filter.id {
        q = q.param("id", id.to_string());
    }
    if let Some(a) = &filter.agent {
        q = q.param("agent", a.as_str());
    }
    if let Some(t) = &filter.target {
        q = q.param("target", t.as_str());
    }
    q.fetch_all().await
}

/// One audit event of a session.
#[derive(Debug, Row, Deserialize)]
pub struct EventLine {
    pub seq: u32,
    pub at_us: i64,
    pub kind: String,
    pub verdict: String,
    pub action: String,
    pub policy_id: String,
    pub reason: String,
    pub text: String,
    pub approver: String,
}

/// A session's audit events in order, at most `limit`.
pub async fn session_events(
    client: &Client,
    id: Uuid,
    limit: u32,
) -> Result<Vec<EventLine>, Error> {
    client
        .query(
            "SELECT seq, toUnixTimestamp64Micro(ts) AS at_us, kind, verdict, action, policy_id, \
                    reason, text, approver \
             FROM events FINAL WHERE session_id = {id:UUID} ORDER BY seq, events.ts \
             LIMIT {limit:UInt32}",
        )
        .param("id", id.to_string())
        .param("limit", limit)
        .fetch_all()
        .await
}

/// How many chunks of terminal output the session recorded.
pub async fn output_chunks(client: &Client, id: Uuid) -> Result<u64, Error> {
    client
        .query("SELECT count() FROM io FINAL WHERE session_id = {id:UUID} AND stream = 'o'")
        .param("id", id.to_string())
        .fetch_one()
        .await
}

/// A row of the replay: an audit event or a chunk of replay data.
#[derive(Debug, Row, Deserialize)]
pub struct ReplayRow {
    pub at_us: i64,
    pub seq: u32,
    pub io: bool,
    pub kind: String,
    pub verdict: String,
    pub action: String,
    pub policy_id: String,
    pub text: String,
    pub offset_us: u64,
    pub stream: String,
    pub data: String,
}

/// A session's events and replay data in playing order, every row timed
/// in microseconds from the session start.
#[derive(Debug, Default)]
pub struct Timeline {
    pub start_us: i64,
    pub rows: Vec<ReplayRow>,
    /// Reading stopped at the byte bound: what follows is not here.
    pub cut: bool,
}

/// Reads a session's timeline, in recording order and, with `max_bytes`,
/// only as far as that much text and data (a shell may have recorded
/// hundreds of MiB). Empty if ClickHouse has nothing of the session.
pub async fn timeline(
    client: &Client,
    id: Uuid,
    max_bytes: Option<usize>,
) -> Result<Timeline, Error> {
    let mut cursor = client
        .query(
            "SELECT * FROM ( \
               SELECT toUnixTimestamp64Micro(ts) AS at_us, seq, false AS io, kind, verdict, \
                      action, policy_id, text, toUInt64(0) AS offset_us, '' AS stream, '' AS data \
               FROM events FINAL WHERE session_id = {id:UUID} \
               UNION ALL \
               SELECT toUnixTimestamp64Micro(ts), seq, true, 'io', '', '', '', '', offset_us, \
                      stream, data \
               FROM io FINAL WHERE session_id = {id:UUID}) \
             ORDER BY seq",
        )
        .param("id", id.to_string())
        .fetch::<ReplayRow>()?;
    let mut t = Timeline::default();
    let mut bytes = 0usize;
    while let Some(row) = cursor.next().await? {
        bytes = bytes.saturating_add(row.text.len() + row.data.len());
        if max_bytes.is_some_and(|max| bytes > max) {
            t.cut = true;
            break;
        }
        t.rows.push(row);
    }
    // Replay data is timed from the session start, not by wall clock, so a
    // clock step mid-session does not distort the pauses.
    let rows = &mut t.rows;
    t.start_us = rows
        .iter()
        .filter(|r| r.kind == "session_opened")
        .map(|r| r.at_us)
        .min()
        .unwrap_or_else(|| rows.iter().map(|r| r.at_us).min().unwrap_or(0));
    for r in rows.iter_mut().filter(|r| r.io) {
        r.at_us = t
            .start_us
            .saturating_add(i64::try_from(r.offset_us).unwrap_or(i64::MAX));
    }
    rows.sort_by_key(|r| (r.at_us, r.seq));
    Ok(t)
}

/// One decision as a line: for the replay's stderr and the cast's markers.
pub fn decision_line(r: &ReplayRow) -> String {
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

/// The session as an asciicast v2 file (what `asciinema play` and the web
/// player read): the terminal size from the first recorded one, output,
/// input and resizes as recorded, and every decision as a marker. A cut
/// timeline ends with a marker saying so.
pub fn asciicast(id: Uuid, t: &Timeline) -> String {
    // A client without a terminal of its own (`ssh -tt` from a script)
    // asks for 0x0: players need a real size.
    let (width, height) = t
        .rows
        .iter()
        .filter(|r| r.io && r.stream == "r")
        .filter_map(|r| r.data.split_once('x'))
        .filter_map(|(c, l)| Some((c.parse::<u32>().ok()?, l.parse::<u32>().ok()?)))
        .find(|&(c, l)| c > 0 && l > 0)
        .unwrap_or((80, 24));
    let mut text = serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": t.start_us / 1_000_000,
        "title": format!("blastgate session {id}"),
    })
    .to_string();
    text.push('\n');
    let mut last = 0.0;
    let sized = |data: &str| {
        data.split_once('x')
            .and_then(|(c, l)| Some((c.parse::<u32>().ok()?, l.parse::<u32>().ok()?)))
            .is_some_and(|(c, l)| c > 0 && l > 0)
    };
    for r in &t.rows {
        // A resize to no size (what `ssh -tt` from a script asks for)
        // makes players fail: the header's size stands instead.
        if r.io && r.stream == "r" && !sized(&r.data) {
            continue;
        }
        let at = (r.at_us - t.start_us).max(0) as f64 / 1e6;
        last = at;
        let (code, data) = if r.io {
            (r.stream.as_str(), r.data.clone())
        } else {
            ("m", decision_line(r))
        };
        text += &serde_json::json!([at, code, data]).to_string();
        text.push('\n');
    }
    if t.cut {
        let note = "[blastgate: the rest of this session is too large to show here; \
                    `blastgate sessions export --asciicast` writes all of it]";
        text += &serde_json::json!([last, "m", note]).to_string();
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at_us: i64, seq: u32, io: Option<(&str, &str)>) -> ReplayRow {
        ReplayRow {
            at_us,
            seq,
            io: io.is_some(),
            kind: if io.is_some() { "io" } else { "command" }.into(),
            verdict: if io.is_some() { "" } else { "allow" }.into(),
            action: if io.is_some() { "" } else { "ssh:shell" }.into(),
            policy_id: String::new(),
            text: String::new(),
            offset_us: 0,
            stream: io.map(|(s, _)| s).unwrap_or_default().into(),
            data: io.map(|(_, d)| d).unwrap_or_default().into(),
        }
    }

    fn lines(cast: &str) -> Vec<serde_json::Value> {
        cast.lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    #[test]
    fn cast_has_a_header_events_and_decisions_as_markers() {
        let id = Uuid::nil();
        let t = Timeline {
            start_us: 5_000_000,
            rows: vec![
                row(5_000_000, 1, None),
                row(5_000_000, 2, Some(("r", "0x0"))),
                row(5_100_000, 3, Some(("r", "120x40"))),
                row(6_500_000, 4, Some(("o", "$ echo \"</pre><script>\"\r\n"))),
            ],
            cut: false,
        };
        let cast = asciicast(id, &t);
        let l = lines(&cast);
        // The 0x0 resize is left out: players fail on it.
        assert_eq!(l.len(), 4, "{cast}");
        assert!(!cast.contains("0x0"), "{cast}");
        assert_eq!(l[0]["version"], 2);
        assert_eq!(
            (l[0]["width"].as_u64(), l[0]["height"].as_u64()),
            (Some(120), Some(40))
        );
        assert_eq!(l[0]["timestamp"], 5);
        assert_eq!(l[1][1], "m");
        assert_eq!(l[1][2], "command allow action=\"ssh:shell\"");
        assert_eq!(l[3][0].as_f64(), Some(1.5));
        assert_eq!(l[3][1], "o");
        assert_eq!(l[3][2], "$ echo \"</pre><script>\"\r\n");
    }

    #[test]
    fn a_terminal_of_no_size_plays_at_80x24_and_a_cut_cast_says_so() {
        let t = Timeline {
            start_us: 0,
            rows: vec![
                row(0, 1, Some(("r", "0x0"))),
                row(2_000_000, 2, Some(("o", "x"))),
            ],
            cut: true,
        };
        let l = lines(&asciicast(Uuid::nil(), &t));
        assert_eq!(
            (l[0]["width"].as_u64(), l[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        let last = l.last().expect("a line");
        assert_eq!(last[0].as_f64(), Some(2.0));
        assert_eq!(last[1], "m");
        assert!(
            last[2].as_str().is_some_and(|s| s.contains("too large")),
            "{last}"
        );
    }

    /// The console's and the CLI's reads against a real ClickHouse: the
    /// filters and ids go as parameters, the timeline puts replay data
    /// at its offset, and a byte bound cuts the cast.
    #[tokio::test]
    async fn reads_sessions_events_and_timelines_back() {
        let Some(url) = std::env::var("BLASTGATE_TEST_CLICKHOUSE")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            crate::testing::skip("BLASTGATE_TEST_CLICKHOUSE is not set");
            return;
        };
        let cfg = crate::config::ClickhouseConfig {
            batch: 100,
            ..crate::config::ClickhouseConfig::single(
                &url,
                &format!("blastgate_query_{}", std::process::id()),
            )
        };
        let client = super::super::client(&cfg).expect("client");
        client
            .query(&format!("DROP DATABASE IF EXISTS {}", cfg.database))
            .execute()
            .await
            .expect("drop");
        super::super::schema::migrate(&cfg).await.expect("migrate");
        // Replay data is kept for days: recorded now, played by offset.
        let client = client.with_database(cfg.database.clone());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let hostile = "x' OR 1=1 --";
        for sql in [
            format!(
                "INSERT INTO sessions (session_id, version, agent, target, protocol, start, end, \
                 verdict, oidc_claims) VALUES \
                 ('{a}', 2, 'claude', 'box', 'ssh', '2026-01-01 00:00:01', '2026-01-01 00:00:09', \
                  'allow', map('repository', 'acme/app', 'ref', 'refs/heads/main')), \
                 ('{b}', 1, 'codex', 'db', 'postgres', '2026-01-01 00:00:05', NULL, 'deny', map())"
            ),
            format!(
                "INSERT INTO events (id, session_id, seq, ts, kind, verdict, action, text, \
                 approver) VALUES \
                 (generateUUIDv7(), '{a}', 0, '2026-01-01 00:00:01', 'session_opened', 'allow', '', '', ''), \
                 (generateUUIDv7(), '{a}', 1, '2026-01-01 00:00:02', 'command', 'allow', \
                  'ssh:shell', '', 'alice')"
            ),
            format!(
                "INSERT INTO io (id, session_id, seq, ts, offset_us, stream, data) VALUES \
                 (generateUUIDv7(), '{a}', 2, now64(6), 500000, 'r', '100x30'), \
                 (generateUUIDv7(), '{a}', 3, now64(6), 2500000, 'o', 'hello'), \
                 (generateUUIDv7(), '{a}', 4, now64(6), 3000000, 'o', '{}')",
                "y".repeat(1000)
            ),
        ] {
            client.query(&sql).execute().await.expect("insert");
        }
        let list = |agent: Option<&str>, id: Option<Uuid>| SessionFilter {
            id,
            agent: agent.map(str::to_string),
            target: None,
            limit: 10,
        };
        let all = sessions(&client, &list(None, None)).await.expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, b.to_string(), "newest first");
        assert_eq!(all[0].ended, "");
        assert_eq!(all[1].started, "2026-01-01 00:00:01");
        assert_eq!(all[1].ended, "2026-01-01 00:00:09");
        assert_eq!(
            (all[1].repository.as_str(), all[1].git_ref.as_str()),
            ("acme/app", "refs/heads/main")
        );
        let some = sessions(&client, &list(Some("claude"), None))
            .await
            .expect("list");
        assert_eq!(some.len(), 1);
        assert!(sessions(&client, &list(Some(hostile), None))
            .await
            .expect("list")
            .is_empty());
        let one = sessions(&client, &list(None, Some(b))).await.expect("one");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].agent, "codex");

        let events = session_events(&client, a, 10).await.expect("events");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].approver, "alice");
        assert_eq!(events[1].at_us - events[0].at_us, 1_000_000);
        assert_eq!(output_chunks(&client, a).await.expect("count"), 2);
        assert_eq!(output_chunks(&client, b).await.expect("count"), 0);

        let t = timeline(&client, a, None).await.expect("timeline");
        assert!(!t.cut);
        let at: Vec<i64> = t.rows.iter().map(|r| r.at_us - t.start_us).collect();
        assert_eq!(at, [0, 500_000, 1_000_000, 2_500_000, 3_000_000]);
        let cast = asciicast(a, &t);
        let header: serde_json::Value =
            serde_json::from_str(cast.lines().next().expect("header")).expect("JSON");
        assert_eq!(
            (header["width"].as_u64(), header["height"].as_u64()),
            (Some(100), Some(30))
        );
        let cut = timeline(&client, a, Some(100)).await.expect("timeline");
        assert!(cut.cut);
        assert_eq!(cut.rows.len(), 4);
        assert!(timeline(&client, Uuid::now_v7(), None)
            .await
            .expect("timeline")
            .rows
            .is_empty());
        client
            .query(&format!("DROP DATABASE {}", cfg.database))
            .execute()
            .await
            .expect("drop");
    }
}

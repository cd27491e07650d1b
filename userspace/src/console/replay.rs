//! Sessions and their events from ClickHouse: the list, a session's
//! statement/request timeline, and SSH terminal replay.
//!
//! - `GET /sessions[?agent=…&target=…]`: the newest sessions;
//! - `GET /sessions/{uuid}`: the session's header and events, and for an
//!   SSH session with a terminal recording, the asciinema player;
//! - `GET /sessions/{uuid}/cast`: the recording as asciicast v2;
//! - `GET /assets/asciinema-player.min.js|.css`, `/assets/replay.js`: the
//!   player (npm `asciinema-player` 3.17.0, vendored) and its starter.
//!
//! Reads are bounded (rows, bytes, time); ClickHouse unset or down is a
//! 503 page. Every value from the database is escaped.

use std::{future::Future, time::Duration};

use http::{header, HeaderValue, StatusCode};
use uuid::Uuid;

use super::{
    html,
    pages::{escape, frame, message},
    query_param, reply, ConsoleContext, Reply,
};
use crate::config::ClickhouseConfig;
use crate::records::clickhouse::{
    self as records_ch,
    query::{self, EventLine, SessionFilter, SessionSummary},
};

const PLAYER_JS: &str = include_str!("assets/asciinema-player/asciinema-player.min.js");
const PLAYER_CSS: &str = include_str!("assets/asciinema-player/asciinema-player.css");
const REPLAY_JS: &str = include_str!("assets/replay.js");

/// Sessions in the list.
const LIST_LIMIT: u32 = 200;
/// Events on a session's page (`blastgate sessions show` lists them all).
const EVENT_LIMIT: u32 = 5000;
/// Text and replay data in a cast the console serves; the CLI exports all.
const CAST_MAX_BYTES: usize = 32 << 20;
/// What a ClickHouse query may take, on the server and here.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
const SERVER_TIMEOUT_SECS: u64 = 10;
/// Casts are built in memory: this many at a time.
static CASTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The page for `path`, if it is one of these.
pub async fn route(ctx: &ConsoleContext, path: &str, query: &str) -> Option<Reply> {
    Some(match path {
        "/assets/asciinema-player.min.js" => reply(StatusCode::OK, "text/javascript", PLAYER_JS),
        "/assets/asciinema-player.css" => reply(StatusCode::OK, "text/css", PLAYER_CSS),
        "/assets/replay.js" => reply(StatusCode::OK, "text/javascript", REPLAY_JS),
        "/sessions" | "/sessions/" => list(ctx, query)
            .await
            .unwrap_or_else(|Unavailable(why)| unavailable(&why)),
        _ => {
            let rest = path.strip_prefix("/sessions/")?;
            let (id, cast) = match rest.strip_suffix("/cast") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let Ok(id) = Uuid::try_parse(id) else {
                return Some(html(StatusCode::NOT_FOUND, message("No such session.")));
            };
            let answer = match ClickHouse::new(ctx.clickhouse.as_ref()) {
                Err(e) => Err(e),
                Ok(ch) if cast => asciicast(&ch, id).await,
                Ok(ch) => session(&ch, id).await,
            };
            answer.unwrap_or_else(|Unavailable(why)| unavailable(&why))
        }
    })
}

/// Why ClickHouse gave no answer: the text of a 503 page.
struct Unavailable(String);

/// The configured ClickHouse, for the console's reads.
struct ClickHouse {
    client: clickhouse::Client,
    url: String,
}

impl ClickHouse {
    fn new(cfg: Option<&ClickhouseConfig>) -> Result<Self, Unavailable> {
        let Some(cfg) = cfg else {
            return Err(Unavailable(
                "Sessions are read from ClickHouse, and this daemon has no [clickhouse] section."
                    .into(),
            ));
        };
        let client = records_ch::client(cfg).map_err(|e| {
            tracing::warn!(error = %e, "console: ClickHouse client");
            Unavailable(e.to_string())
        })?;
        Ok(Self {
            client: client
                .with_database(cfg.database.clone())
                .with_setting("max_execution_time", SERVER_TIMEOUT_SECS.to_string()),
            url: cfg.url.clone(),
        })
    }

    /// A query's answer, or the page saying ClickHouse did not give one.
    async fn ask<T>(
        &self,
        q: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(QUERY_TIMEOUT, q).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, url = %self.url, "console: ClickHouse query");
                Err(Unavailable(format!(
                    "ClickHouse at {} did not answer: {e}",
                    self.url
                )))
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "console: ClickHouse query timed out");
                Err(Unavailable(format!(
                    "ClickHouse at {} did not answer within {} seconds.",
                    self.url,
                    QUERY_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

fn unavailable(text: &str) -> Reply {
    html(StatusCode::SERVICE_UNAVAILABLE, message(text))
}

fn filter_param(query: &str, name: &str) -> Option<String> {
    query_param(query, name).filter(|v| !v.is_empty())
}

async fn list(ctx: &ConsoleContext, query: &str) -> Result<Reply, Unavailable> {
    let ch = ClickHouse::new(ctx.clickhouse.as_ref())?;
    let filter = SessionFilter {
        id: None,
        agent: filter_param(query, "agent"),
        target: filter_param(query, "target"),
        limit: LIST_LIMIT,
    };
    let rows = ch.ask(query::sessions(&ch.client, &filter)).await?;
    Ok(html(StatusCode::OK, sessions_page(&filter, &rows)))
}

async fn session(ch: &ClickHouse, id: Uuid) -> Result<Reply, Unavailable> {
    let filter = SessionFilter {
        id: Some(id),
        limit: 1,
        ..Default::default()
    };
    let header = ch.ask(query::sessions(&ch.client, &filter)).await?;
    let header = header.into_iter().next();
    let events = ch
        .ask(query::session_events(&ch.client, id, EVENT_LIMIT))
        .await?;
    let output = ch.ask(query::output_chunks(&ch.client, id)).await?;
    if header.is_none() && events.is_empty() && output == 0 {
        return Ok(html(
            StatusCode::NOT_FOUND,
            message(&format!(
                "No session {id} in ClickHouse (it may still be in the spool)."
            )),
        ));
    }
    let player = output > 0
        && header
            .as_ref()
            .is_none_or(|s| s.protocol.eq_ignore_ascii_case("ssh"));
    let mut r = html(
        StatusCode::OK,
        session_page(id, header.as_ref(), &events, player),
    );
    if player {
        allow_wasm(&mut r);
    }
    Ok(r)
}

/// The player compiles its terminal emulator (WebAssembly, inlined in its
/// script) at run time, which a CSP refuses without `'wasm-unsafe-eval'`:
/// allowed on the page that embeds it, and nowhere else. It allows no
/// JavaScript `eval` and no inline script.
fn allow_wasm(r: &mut Reply) {
    let h = r.headers_mut();
    let csp = h
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.replacen(
                "script-src 'self'",
                "script-src 'self' 'wasm-unsafe-eval'",
                1,
            )
        });
    if let Some(v) = csp.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

async fn asciicast(ch: &ClickHouse, id: Uuid) -> Result<Reply, Unavailable> {
    let Ok(_slot) = CASTS.acquire().await else {
        return Err(Unavailable("Shutting down.".into()));
    };
    let t = ch
        .ask(query::timeline(&ch.client, id, Some(CAST_MAX_BYTES)))
        .await?;
    if t.rows.is_empty() {
        return Ok(html(StatusCode::NOT_FOUND, message("No such session.")));
    }
    Ok(reply(
        StatusCode::OK,
        "application/x-asciicast",
        query::asciicast(id, &t),
    ))
}

/// `?name=value` for a link, escaped for an attribute.
fn link(path: &str, name: &str, value: &str) -> String {
    let v: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    escape(&format!("{path}?{name}={v}"))
}

fn job(s: &SessionSummary) -> String {
    if s.repository.is_empty() && s.workflow.is_empty() {
        return "—".into();
    }
    escape(&format!("{} {} · {}", s.repository, s.git_ref, s.workflow))
}

/// A verdict cell, marked when the answer was no.
fn verdict(v: &str) -> String {
    let class = if matches!(v, "deny" | "error") {
        " class=\"refused\""
    } else {
        ""
    };
    format!("<td{class}>{}</td>", escape(v))
}

fn sessions_page(filter: &SessionFilter, rows: &[SessionSummary]) -> String {
    let value = |v: &Option<String>| escape(v.as_deref().unwrap_or(""));
    let mut body = format!(
        "<form method=\"get\" action=\"/sessions\" class=\"filters\">\
         <label>Agent <input name=\"agent\" value=\"{agent}\"></label> \
         <label>Target <input name=\"target\" value=\"{target}\"></label> \
         <button type=\"submit\">Filter</button> <a href=\"/sessions\">All</a></form>\
         <p class=\"note\">The newest {limit} sessions, from ClickHouse. Times are UTC.</p>",
        agent = value(&filter.agent),
        target = value(&filter.target),
        limit = filter.limit,
    );
    if rows.is_empty() {
        body += "<p id=\"none\">No sessions.</p>";
        return frame("Sessions", None, &body);
    }
    body += "<table id=\"sessions\"><thead><tr><th>Started</th><th>Agent</th><th>Job</th>\
             <th>Target</th><th>Protocol</th><th>Destination</th>\
             <th>Bytes from / to agent</th><th>Verdict</th><th></th></tr></thead><tbody>";
    for s in rows {
        body += &format!(
            "<tr><td>{started}{open}</td><td><a href=\"{agent_link}\">{agent}</a></td>\
             <td>{job}</td><td><a href=\"{target_link}\">{target}</a></td><td>{protocol}</td>\
             <td>{dst}</td><td>{from} / {to}</td>{verdict}\
             <td><a href=\"/sessions/{id}\">Open</a></td></tr>",
            started = escape(&s.started),
            open = if s.ended.is_empty() {
                " <small>(open)</small>"
            } else {
                ""
            },
            agent_link = link("/sessions", "agent", &s.agent),
            agent = escape(&s.agent),
            job = job(s),
            target_link = link("/sessions", "target", &s.target),
            target = escape(&s.target),
            protocol = escape(&s.protocol),
            dst = escape(&s.orig_dst),
            from = s.bytes_from_agent,
            to = s.bytes_to_agent,
            verdict = verdict(&s.verdict),
            id = escape(&s.id),
        );
    }
    body += "</tbody></table>";
    frame("Sessions", None, &body)
}

fn header_table(id: Uuid, s: Option<&SessionSummary>) -> String {
    let Some(s) = s else {
        return format!(
            "<p class=\"note\">Session {id}: its session row has not reached ClickHouse yet; \
             the events that have are below.</p>"
        );
    };
    let rows = [
        ("Session", id.to_string()),
        (
            "Agent",
            format!(
                "{} (pid {}, uid {}, {} {})",
                s.agent, s.pid, s.uid, s.comm, s.exe
            ),
        ),
        (
            "Job",
            if s.repository.is_empty() && s.oidc_sub.is_empty() {
                "no job token".into()
            } else {
                format!(
                    "{} {} · {} · {} ({})",
                    s.repository, s.git_ref, s.workflow, s.actor, s.oidc_sub
                )
            },
        ),
        ("Target", s.target.clone()),
        ("Protocol", s.protocol.clone()),
        ("Destination", s.orig_dst.clone()),
        ("Started (UTC)", s.started.clone()),
        (
            "Ended (UTC)",
            if s.ended.is_empty() {
                "open".into()
            } else {
                s.ended.clone()
            },
        ),
        (
            "Bytes from / to agent",
            format!("{} / {}", s.bytes_from_agent, s.bytes_to_agent),
        ),
    ];
    let mut out = String::from("<table class=\"session\"><tbody>");
    for (k, v) in rows {
        out += &format!("<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    out += &format!(
        "<tr><th>Verdict</th>{}</tr></tbody></table>",
        verdict(&s.verdict)
    );
    out
}

fn session_page(
    id: Uuid,
    header: Option<&SessionSummary>,
    events: &[EventLine],
    player: bool,
) -> String {
    let mut body = header_table(id, header);
    if player {
        body += &format!(
            "<h2>Terminal</h2><link rel=\"stylesheet\" href=\"/assets/asciinema-player.css\">\
             <div id=\"player\" data-cast=\"/sessions/{id}/cast\"></div>\
             <p><a href=\"/sessions/{id}/cast\" download=\"session-{id}.cast\">Download the \
             asciicast</a> <span class=\"note\">(decisions are markers; input is recorded but \
             not drawn)</span></p>"
        );
    }
    // Offsets from the session's start, as the cast counts them.
    let start = events
        .iter()
        .filter(|e| e.kind == "session_opened")
        .map(|e| e.at_us)
        .min()
        .or(header.map(|s| s.start_us))
        .or(events.iter().map(|e| e.at_us).min())
        .unwrap_or(0);
    let what = match header.map(|s| s.protocol.as_str()) {
        Some("postgres") => "Statement",
        Some("http" | "https") => "Request",
        Some("ssh") => "Command",
        _ => "Statement, request or command",
    };
    body += &format!(
        "<h2>Timeline</h2><table id=\"timeline\"><thead><tr><th>+s</th><th>Kind</th>\
         <th>Action</th><th>Verdict</th><th>Policy</th><th>Reason</th><th>{what}</th>\
         <th>Approver</th></tr></thead><tbody>"
    );
    for e in events {
        let at = (e.at_us - start) as f64 / 1e6;
        let seek = if player && at >= 0.0 {
            format!(" <button type=\"button\" data-seek=\"{at:.3}\" title=\"Play from here\">▶</button>")
        } else {
            String::new()
        };
        body += &format!(
            "<tr><td class=\"at\">{at:.3}{seek}</td><td>{kind}</td><td>{action}</td>{verdict}\
             <td>{policy}</td><td>{reason}</td><td><pre>{text}</pre></td><td>{approver}</td></tr>",
            kind = escape(&e.kind),
            action = escape(&e.action),
            verdict = verdict(&e.verdict),
            policy = escape(&e.policy_id),
            reason = escape(&e.reason),
            text = escape(&e.text),
            approver = escape(&e.approver),
        );
    }
    body += "</tbody></table>";
    if events.len() >= EVENT_LIMIT as usize {
        body += &format!(
            "<p class=\"note\">The first {EVENT_LIMIT} events; `blastgate sessions show {id}` \
             lists them all.</p>"
        );
    } else if events.is_empty() {
        body += "<p class=\"note\">No events have reached ClickHouse yet.</p>";
    }
    if player {
        body += "<script src=\"/assets/asciinema-player.min.js\"></script>\
                 <script src=\"/assets/replay.js\"></script>";
    }
    frame("Session", None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "</pre><script>alert(1)</script><img src=x onerror=\"x\">'";

    fn summary() -> SessionSummary {
        SessionSummary {
            id: "0193a3c1-0000-7000-8000-000000000001\"><script>".into(),
            started: "2026-12-07 11:04:31".into(),
            start_us: 1_000_000,
            ended: String::new(),
            agent: HOSTILE.into(),
            pid: 7,
            uid: 1000,
            comm: HOSTILE.into(),
            exe: "/usr/bin/psql".into(),
            oidc_sub: HOSTILE.into(),
            repository: HOSTILE.into(),
            git_ref: "refs/heads/main".into(),
            workflow: HOSTILE.into(),
            actor: HOSTILE.into(),
            target: "db&\"prod".into(),
            protocol: "ssh".into(),
            orig_dst: HOSTILE.into(),
            bytes_from_agent: 10,
            bytes_to_agent: 20,
            verdict: "deny".into(),
        }
    }

    fn event(kind: &str, at_us: i64, text: &str) -> EventLine {
        EventLine {
            seq: 0,
            at_us,
            kind: kind.into(),
            verdict: "allow".into(),
            action: HOSTILE.into(),
            policy_id: HOSTILE.into(),
            reason: HOSTILE.into(),
            text: text.into(),
            approver: HOSTILE.into(),
        }
    }

    fn assert_inert(page: &str) {
        // The page's own two scripts, and nothing the database said.
        let scripts = page.matches("<script").count();
        let own = page.matches("<script src=\"/assets/").count();
        assert_eq!(scripts, own, "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("</pre><script"), "{page}");
        assert!(!page.contains("\"><script"), "{page}");
    }

    #[test]
    fn a_timeline_of_hostile_text_stays_text() {
        let id = Uuid::now_v7();
        let events = [
            event("session_opened", 2_000_000, ""),
            event(
                "statement",
                3_500_000,
                "SELECT '</pre><script>alert(1)</script>'",
            ),
            event("approval_decided", 4_000_000, HOSTILE),
        ];
        let page = session_page(id, Some(&summary()), &events, true);
        assert_inert(&page);
        assert!(page.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Offsets count from session_opened, as the cast does.
        assert!(page.contains("<td class=\"at\">1.500 <button type=\"button\" data-seek=\"1.500\""));
        assert!(page.contains(&format!("data-cast=\"/sessions/{id}/cast\"")));
        assert!(page.contains("<td class=\"refused\">deny</td>"));
        assert_eq!(page.matches("<script src=").count(), 2);

        let page = session_page(id, None, &events, false);
        assert_inert(&page);
        assert!(!page.contains("<script"), "no player, no script: {page}");
        assert!(!page.contains("data-seek"));
    }

    #[test]
    fn the_list_escapes_values_and_links() {
        let filter = SessionFilter {
            agent: Some("\"><script>x</script>".into()),
            limit: LIST_LIMIT,
            ..Default::default()
        };
        let page = sessions_page(&filter, &[summary()]);
        assert_inert(&page);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("value=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
        assert!(
            page.contains("href=\"/sessions?target=db%26%22prod\""),
            "{page}"
        );
        assert!(page.contains("<small>(open)</small>"));
        assert!(sessions_page(&filter, &[]).contains("No sessions."));
    }

    #[test]
    fn only_the_replay_page_may_compile_webassembly() {
        let mut r = html(StatusCode::OK, String::new());
        let before = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(!before.contains("wasm"), "{before}");
        allow_wasm(&mut r);
        let after = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert_eq!(
            after,
            before.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")
        );
        assert!(!after.contains(" 'unsafe-eval'"), "{after}");
        assert!(!after.contains("'unsafe-inline'"));
    }

    /// No `[clickhouse]`, or nobody answering: a page saying so, no panic.
    #[tokio::test]
    async fn clickhouse_unset_or_down_is_unavailable() {
        let Err(Unavailable(why)) = ClickHouse::new(None) else {
            panic!("a client without a config");
        };
        assert!(why.contains("[clickhouse]"), "{why}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let cfg = ClickhouseConfig {
            batch: 100,
            ..ClickhouseConfig::single(&url, "blastgate")
        };
        let ch = ClickHouse::new(Some(&cfg)).unwrap_or_else(|_| panic!("a client"));
        let Err(Unavailable(why)) = ch.ask(query::output_chunks(&ch.client, Uuid::nil())).await
        else {
            panic!("an answer from a closed port");
        };
        assert!(
            why.starts_with(&format!("ClickHouse at {url} did not answer")),
            "{why}"
        );
        let page = unavailable(&why);
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

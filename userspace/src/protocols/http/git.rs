//! Smart HTTP pushes (`POST …/git-receive-pack`): the request body is read
//! as far as a ruling needs (the commands, and the pack up to the
//! limits; a gzipped body, which git sends only for small pushes, whole
//! and undone), every ref update in it ruled on as
//! `git:push` (see [`crate::protocols::git`]), and only the allowed ones
//! reach the server; refused refs get git's own `ng` line in the answer
//! (`application/x-git-receive-pack-result`). Ref advertisements
//! (`GET info/refs?service=git-receive-pack`) and fetches pass as any
//! request. Over HTTP blastgate cannot ask the server about history the
//! pack does not carry: such an update is `forced = "unknown"`.

use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{echo, mask, request::Conn, upstream::Body};
use crate::{
    protocols::git::{
        pack::{parse_hex, Limits},
        push::{self, Forced, ReportSplice, MAX_HEAD},
        Incoming, Parsed,
    },
    records::{EventKind, Verdict},
};

/// Whether a request is a push for the git gateway to rule on: a POST
/// whose path names receive-pack however it is spelled on the wire (web
/// servers decode percent escapes and merge slashes before `git
/// http-backend` matches `/git-receive-pack$`). A look-alike that is not
/// a push is then refused as unreadable, never passed unruled.
pub fn is_push(method: &http::Method, path: &str) -> bool {
    if method != http::Method::POST {
        return false;
    }
    let mut text = path.to_string();
    for _ in 0..4 {
        let lower = text.to_ascii_lowercase();
        if lower.contains("receive-pack") || lower.contains("receive_pack") {
            return true;
        }
        let decoded = percent_decoded(&text);
        if decoded == text {
            return false;
        }
        text = decoded;
    }
    true
}

/// `text` with `%XX` escapes decoded once (invalid ones kept as typed).
fn percent_decoded(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What becomes of a push after its ruling.
pub enum Ruled {
    /// Send this body upstream; splice these refusals into the answer.
    Forward {
        body: Body,
        splice: Option<ReportSplice>,
    },
    /// Answered here (everything refused, or the push unreadable).
    Answer(Response<Body>),
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Reads and rules on a push; rewrites `parts` for the body it returns.
pub async fn rule(conn: &Conn, parts: &mut Parts, body: Body) -> Ruled {
    let limits = Limits::default();
    let refuse = |status: StatusCode, why: String| async move {
        let mut event = conn.gw.event(EventKind::Command, Verdict::Deny);
        event.action = Some("git:push".into());
        event.text = Some("git push (unread)".into());
        event.reason = Some(format!("refused: {why}"));
        event.status = Some(status.as_u16());
        conn.gw.record(event).await;
        Ruled::Answer(conn.refusal(status, &format!("git push refused: {why}"), None, None))
    };
    let read = if mask::content_codings(&parts.headers).is_some() {
        read_coded(&parts.headers, body, limits).await
    } else {
        read_streamed(body, limits).await
    };
    let (parsed, received, rest) = match read {
        Ok(r) => r,
        Err((status, why)) => return refuse(status, why).await,
    };
    let head = &parsed.head;
    let mut allowed = Vec::new();
    let mut reasons = std::collections::HashMap::new();
    for (i, u) in head.updates.iter().enumerate() {
        let forced = if u.created() || u.deleted() {
            Forced::No
        } else {
            match (parse_hex(u.old.as_bytes()), parse_hex(u.new.as_bytes())) {
                (Some(old), Some(new)) => {
                    push::ancestry(&old, &new, parsed.commits.as_ref()).unwrap_or(Forced::Unknown)
                }
                _ => Forced::Unknown,
            }
        };
        let text = push::text(u, forced);
        let decision = conn.gw.decide("git:push", &push::context(u, forced));
        let ruling = conn.gw.rule(decision, "git:push", &text, |_| {}).await;
        let mut event = conn.gw.ruled(EventKind::Command, "git:push", text, &ruling);
        event.context = push::record_context(u, forced);
        if let Some(note) = &parsed.pack_note {
            event.reason = Some(format!(
                "{}; pack not read whole: {note}",
                event.reason.unwrap_or_default()
            ));
        }
        conn.gw.record(event).await;
        if !ruling.allowed {
            reasons.insert(
                i,
                format!(
                    "blastgate: git:push denied by policy {}: {}",
                    ruling.policy_id.as_deref().unwrap_or("(default deny)"),
                    ruling.reason
                ),
            );
        }
        allowed.push(ruling.allowed);
    }
    let (keep, refused) = push::refusals(head, &allowed, &reasons);
    let (out, pack_needed) = head.forwarded(&keep, &received);
    // A pack that goes nowhere is read to its end first, so the agent's
    // git finishes sending and reads the answer.
    let rest = match rest {
        Some(rest) if !pack_needed => match drain(rest).await {
            Ok(()) => None,
            Err(why) => return refuse(StatusCode::BAD_REQUEST, why).await,
        },
        rest => rest,
    };
    if !refused.is_empty() && !head.reports() {
        return refuse(
            StatusCode::FORBIDDEN,
            "refs were refused and the client asked for no report-status".into(),
        )
        .await;
    }
    if !head.updates.is_empty() && !keep.iter().any(|k| *k) {
        let mut answer = Response::new(full(push::whole_report(&refused, head.sideband())));
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-receive-pack-result"),
        );
        answer
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ruled::Answer(answer);
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::TRANSFER_ENCODING);
    let body = match rest {
        // The pack goes on past what was read: streamed as it comes,
        // chunked (its length is the agent's to end).
        Some(rest) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            mask::rejoin(Bytes::from(out), Some(rest))
        }
        None => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            full(out)
        }
    };
    let splice = (!refused.is_empty()).then(|| {
        let mut s = ReportSplice::stateless();
        s.refuse(refused, head.sideband());
        s
    });
    Ruled::Forward { body, splice }
}

/// Why a push was not read: the status and the reason.
type Unread = (StatusCode, String);

/// What was read of a push: the parse, the bytes it covers (the request
/// body from its start, content coding undone) and the rest of the body
/// when the parse was ready before the body ended.
type Read = (Parsed, Vec<u8>, Option<Body>);

/// A push with a content coding (git gzips small requests): read whole,
/// bounded, and undone.
async fn read_coded(
    headers: &http::HeaderMap,
    mut body: Body,
    limits: Limits,
) -> Result<Read, Unread> {
    let limit = limits.max_pack + MAX_HEAD;
    let mut raw = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("reading the push from the agent: {e}"),
            )
        })?;
        if let Some(d) = frame.data_ref() {
            raw.extend_from_slice(d);
            if raw.len() > limit {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a compressed push over {limit} bytes is not read over HTTP"),
                ));
            }
        }
    }
    let plain = match mask::content_codings(headers) {
        None => raw.to_vec(),
        Some(c) => echo::unpack(&c, &raw, limit).map_err(|why| (StatusCode::BAD_REQUEST, why))?,
    };
    // Inflating and resolving the pack is bounded CPU work, up to a few
    // times max_kept of copying: done off the runtime's workers.
    let read = tokio::task::spawn_blocking(move || {
        let parsed = Incoming::new(limits).push(&plain, true);
        (parsed, plain)
    })
    .await;
    let (parsed, plain) = read.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("blastgate failed reading the push: {e}"),
        )
    })?;
    match parsed {
        Ok(Some(p)) => Ok((p, plain, None)),
        Ok(None) => Err((StatusCode::BAD_REQUEST, "an incomplete push".into())),
        Err(why) => Err((StatusCode::BAD_REQUEST, why)),
    }
}

/// A plain push, read as the SSH gateway reads one: until the commands
/// and the pack (as far as [`Limits`] allow) can be ruled on. A pack over
/// the limits is not refused for its size: its ancestry is unknown (so
/// protected refs are not moved by it) and the rest streams on.
async fn read_streamed(mut body: Body, limits: Limits) -> Result<Read, Unread> {
    let mut incoming = Incoming::new(limits);
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    loop {
        let Some(frame) = body.frame().await else {
            return match incoming.push_async(&[], true).await {
                Ok(Some(p)) => Ok((p, incoming.buffered().to_vec(), None)),
                Ok(None) => Err(bad("an incomplete push".into())),
                Err(why) => Err(bad(why)),
            };
        };
        let frame = frame.map_err(|e| bad(format!("reading the push from the agent: {e}")))?;
        let Some(d) = frame.data_ref() else { continue };
        if let Some(p) = incoming.push_async(d, false).await.map_err(bad)? {
            return Ok((p, incoming.buffered().to_vec(), Some(body)));
        }
    }
}

/// Reads and drops the rest of a push whose pack goes nowhere (every
/// update that needed it was refused), so the agent's git finishes
/// sending and reads the report; bounded, as any read.
async fn drain(mut rest: Body) -> Result<(), String> {
    const MAX_DRAIN: u64 = 8 << 30;
    let mut seen = 0u64;
    while let Some(frame) = rest.frame().await {
        let frame = frame.map_err(|e| format!("reading the push from the agent: {e}"))?;
        if let Some(d) = frame.data_ref() {
            seen += d.len() as u64;
            if seen > MAX_DRAIN {
                return Err(format!("a refused push went on past {MAX_DRAIN} bytes"));
            }
        }
    }
    Ok(())
}

/// The server's answer with the refused refs' `ng` lines added.
pub async fn spliced(response: Response<Body>, mut splice: ReportSplice) -> Response<Body> {
    const MAX_ANSWER: usize = 16 << 20;
    let (mut parts, mut body) = response.into_parts();
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            seen += d.len();
            if seen > MAX_ANSWER {
                break;
            }
            match splice.feed(d) {
                Ok(b) => out.extend(b),
                Err(_) => break,
            }
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(out))
}

#[cfg(test)]
mod tests {
    use super::is_push;
    use http::Method;

    #[test]
    fn pushes_are_known_however_the_path_is_spelled() {
        for p in [
            "/repo.git/git-receive-pack",
            "/repo.git/git-receive-p%61ck",
            "/repo.git/git-receive-p%2561ck",
            "/repo.git//git-receive-pack",
            "/repo.git/GIT-RECEIVE-PACK",
            "/x/git-receive-pack/",
        ] {
            assert!(is_push(&Method::POST, p), "{p}");
        }
        for p in [
            "/repo.git/git-upload-pack",
            "/repo.git/info/refs",
            "/api/v1/x%zz",
        ] {
            assert!(!is_push(&Method::POST, p), "{p}");
        }
        assert!(!is_push(&Method::GET, "/repo.git/git-receive-pack"));
    }
}

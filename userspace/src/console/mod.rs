//! The approvers' web console: HTTPS, sign-in with OpenID Connect
//! (authorization code + PKCE), pending approvals live, decisions with a
//! required reason recorded under the approver's verified identity, and
//! sessions replayed from ClickHouse. Server-rendered; one small script
//! polls for approvals. Nothing but `/healthz` is served without a session.

mod auth;
mod pages;
mod replay;
mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Approver;
use auth::Auth;
use store::{PendingLogin, Store};

use crate::{
    approvals::{ApprovalRequest, Broker},
    config::{ClickhouseConfig, ConsoleConfig},
    records::{Event, EventKind, Recorder, Verdict},
    Error,
};

const SESSION_COOKIE: &str = "__Host-bg_session";
const LOGIN_COOKIE: &str = "__Host-bg_login";
/// Forms are a reason and two tokens.
const MAX_FORM: usize = 16 * 1024;
const MAX_REASON: usize = 2000;
const MAX_CONNECTIONS: usize = 256;

pub struct ConsoleContext {
    pub config: ConsoleConfig,
    pub approvals: Arc<Broker>,
    pub recorder: Recorder,
    pub clickhouse: Option<ClickhouseConfig>,
    auth: Auth,
    store: Store,
}

type Reply = Response<Full<Bytes>>;

/// Binds the console and serves it until `stop`.
pub async fn start(
    config: ConsoleConfig,
    tls: Arc<rustls::ServerConfig>,
    approvals: Arc<Broker>,
    recorder: Recorder,
    clickhouse: Option<ClickhouseConfig>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("binding the console on {}", config.listen), e))?;
    let ctx = Arc::new(ConsoleContext {
        auth: Auth::new(&config).map_err(Error::Invalid)?,
        config,
        approvals,
        recorder,
        clickhouse,
        store: Store::default(),
    });
    tracing::info!(url = %ctx.config.public_url(), "web console listening");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "console accept");
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(t)) => t,
                        _ => return,
                    };
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, &ctx, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// The certificate the console presents: the configured one, or one for
/// the public URL's host from blastgate's local CA.
pub fn server_tls(
    config: &ConsoleConfig,
    ca_dir: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    let mut cfg = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("console.cert_file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("console.key_file {}: {e}", key.display()))?;
            builder
                .with_single_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        _ => {
            let ca = crate::tls::LocalCa::load_or_create(ca_dir)
                .map_err(|e| format!("local CA in {}: {e}", ca_dir.display()))?;
            let leaf = ca
                .issue_leaf(&[config.public_host()])
                .map_err(|e| format!("console certificate: {e}"))?;
            builder
                .with_single_cert(leaf.cert_chain, leaf.key)
                .map_err(|e| e.to_string())?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    // Nothing but the console's own files; never framed; nothing cached.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; font-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not no-referrer: with it, browsers send `Origin: null` on the
    // console's own posts, and the origin check would refuse them.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

fn html(status: StatusCode, body: String) -> Reply {
    reply(status, "text/html; charset=utf-8", body)
}

fn json(value: &serde_json::Value) -> Reply {
    reply(StatusCode::OK, "application/json", value.to_string())
}

fn redirect(to: &str) -> Reply {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn set_cookie(r: &mut Reply, name: &str, value: &str, max_age: u64) {
    let cookie =
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A console path to come back to after signing in; anything else is `/`.
fn safe_next(next: Option<String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/".into(),
    }
}

async fn handle(req: Request<Incoming>, ctx: &ConsoleContext, peer: SocketAddr) -> Reply {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/login") => return login(ctx, query_param(&query, "next")).await,
        (&Method::GET, "/callback") => return callback(&req, ctx, &query).await,
        (&Method::GET, "/assets/console.css") => {
            return reply(StatusCode::OK, "text/css", pages::CSS);
        }
        _ => {}
    }
    let session = cookie(&req, SESSION_COOKIE).and_then(|id| ctx.store.get(id).map(|s| (id, s)));
    let Some((session_id, (approver, csrf))) = session else {
        if req.method() == Method::GET && !path.starts_with("/api/") {
            let next = match req.uri().path_and_query() {
                Some(pq) => pq.as_str().to_string(),
                None => "/".into(),
            };
            return redirect(&format!(
                "/login?next={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ));
        }
        refused(
            ctx,
            None,
            None,
            &format!("{} {path} without a session", req.method()),
            peer,
        )
        .await;
        return html(StatusCode::UNAUTHORIZED, pages::message("Sign in first."));
    };
    let session_id = session_id.to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => html(
            StatusCode::OK,
            pages::approvals(&approver, &csrf, &ctx.approvals.list(), None),
        ),
        (Method::GET, p) if p.starts_with("/approvals/") => {
            let id = p.trim_start_matches("/approvals/");
            html(
                StatusCode::OK,
                pages::approvals(&approver, &csrf, &ctx.approvals.list(), Some(id)),
            )
        }
        (Method::GET, "/api/approvals") => {
            json(&pages::approvals_json(&approver, &ctx.approvals.list()))
        }
        (Method::GET, "/assets/console.js") => {
            reply(StatusCode::OK, "text/javascript", pages::SCRIPT)
        }
        (Method::POST, p) if p.starts_with("/approvals/") => {
            let id = p.trim_start_matches("/approvals/").to_string();
            decide(req, ctx, &approver, &csrf, &id, peer).await
        }
        (Method::POST, "/logout") => {
            let form = read_form(req).await.unwrap_or_default();
            if !form_csrf_ok(&form, &csrf) {
                refused(
                    ctx,
                    Some(&approver),
                    None,
                    "logout with a wrong CSRF token",
                    peer,
                )
                .await;
                return html(StatusCode::FORBIDDEN, pages::message("Refused."));
            }
            ctx.store.close(&session_id);
            let mut r = html(StatusCode::OK, pages::message("Signed out."));
            set_cookie(&mut r, SESSION_COOKIE, "", 0);
            r
        }
        (Method::GET, p) => match replay::route(ctx, p, &query).await {
            Some(r) => r,
            None => html(StatusCode::NOT_FOUND, pages::message("Not found.")),
        },
        _ => html(
            StatusCode::METHOD_NOT_ALLOWED,
            pages::message("Not allowed."),
        ),
    }
}

async fn login(ctx: &ConsoleContext, next: Option<String>) -> Reply {
    let started = match ctx.auth.start().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in could not start");
            return html(
                StatusCode::BAD_GATEWAY,
                pages::message(&format!("Sign-in is unavailable: {e}")),
            );
        }
    };
    let browser = store::random_token();
    ctx.store.begin(
        started.state,
        PendingLogin {
            browser: browser.clone(),
            nonce: started.nonce,
            verifier: started.verifier,
            next: safe_next(next),
            started: std::time::Instant::now(),
        },
    );
    let mut r = redirect(&started.url);
    set_cookie(&mut r, LOGIN_COOKIE, &browser, store::LOGIN_TTL.as_secs());
    r
}

async fn callback(req: &Request<Incoming>, ctx: &ConsoleContext, query: &str) -> Reply {
    if let Some(err) = query_param(query, "error") {
        return html(
            StatusCode::FORBIDDEN,
            pages::message(&format!("The issuer refused the sign-in: {err}")),
        );
    }
    let (Some(code), Some(state)) = (query_param(query, "code"), query_param(query, "state"))
    else {
        return html(StatusCode::BAD_REQUEST, pages::message("No code."));
    };
    let Some(pending) = ctx.store.take_pending(&state, cookie(req, LOGIN_COOKIE)) else {
        return html(
            StatusCode::FORBIDDEN,
            pages::message("This sign-in was not started by this browser, or took too long."),
        );
    };
    let approver = match ctx
        .auth
        .finish(&code, &pending.nonce, &pending.verifier)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in refused");
            return html(StatusCode::FORBIDDEN, pages::message(&e.to_string()));
        }
    };
    tracing::info!(approver = %approver.label(), groups = ?approver.groups, "signed in to the console");
    let ttl = Duration::from_secs(ctx.config.session_ttl_secs);
    let id = ctx.store.open(approver, ttl);
    let mut r = redirect(&pending.next);
    set_cookie(&mut r, SESSION_COOKIE, &id, ttl.as_secs());
    set_cookie(&mut r, LOGIN_COOKIE, "", 0);
    r
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(
        form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn form_csrf_ok(form: &[(String, String)], csrf: &str) -> bool {
    field(form, "csrf").is_some_and(|t| store::same(t, csrf))
}

/// A post from another site carries its own Origin: refused even before
/// the token is looked at.
fn origin_ok(req: &Request<Incoming>, public_url: &str) -> bool {
    match req.headers().get(header::ORIGIN) {
        None => true,
        Some(o) => o.to_str().is_ok_and(|o| o == public_url),
    }
}

async fn decide(
    req: Request<Incoming>,
    ctx: &ConsoleContext,
    approver: &Approver,
    csrf: &str,
    id: &str,
    peer: SocketAddr,
) -> Reply {
    let id = uuid::Uuid::parse_str(id).ok();
    if !origin_ok(&req, &ctx.config.public_url()) {
        refused(
            ctx,
            Some(approver),
            id,
            &format!(
                "decision posted from another origin ({:?})",
                req.headers()
                    .get(header::ORIGIN)
                    .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
                    .unwrap_or_default()
            ),
            peer,
        )
        .await;
        return html(
            StatusCode::FORBIDDEN,
            pages::message("Refused: wrong origin."),
        );
    }
    let Some(form) = read_form(req).await else {
        return html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::message("Form too large."),
        );
    };
    if !form_csrf_ok(&form, csrf) {
        refused(
            ctx,
            Some(approver),
            id,
            "decision with a wrong CSRF token",
            peer,
        )
        .await;
        return html(
            StatusCode::FORBIDDEN,
            pages::message("Refused: wrong CSRF token."),
        );
    }
    let Some(id) = id else {
        return html(StatusCode::NOT_FOUND, pages::message("No such request."));
    };
    let approve = match field(&form, "decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return html(StatusCode::BAD_REQUEST, pages::message("Approve or deny?")),
    };
    let reason = field(&form, "reason").unwrap_or("").trim().to_string();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(&format!(
                "A reason is required (at most {MAX_REASON} bytes)."
            )),
        );
    }
    let Some(request) = ctx.approvals.list().into_iter().find(|r| r.id == id) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message("No such request: decided, timed out or withdrawn."),
        );
    };
    if !may_decide(approver, &request) {
        refused(
            ctx,
            Some(approver),
            Some(id),
            &format!(
                "{} is not in group {:?}, which decides this request",
                approver.name, request.group
            ),
            peer,
        )
        .await;
        return html(
            StatusCode::FORBIDDEN,
            pages::message(&format!(
                "Only members of {:?} decide this request.",
                request.group
            )),
        );
    }
    match ctx
        .approvals
        .decide(id, approve, approver.label(), Some(reason))
    {
        Ok(()) => redirect("/"),
        Err(e) => html(StatusCode::CONFLICT, pages::message(&e.to_string())),
    }
}

/// Members of the request's group decide it; nobody decides a request
/// whose policy named no group.
pub fn may_decide(approver: &Approver, request: &ApprovalRequest) -> bool {
    !request.group.is_empty() && approver.groups.iter().any(|g| g == &request.group)
}

/// A console request refused for want of a session, a token or a group:
/// recorded, since it may be a forged post.
async fn refused(
    ctx: &ConsoleContext,
    approver: Option<&Approver>,
    approval: Option<uuid::Uuid>,
    why: &str,
    peer: SocketAddr,
) {
    tracing::warn!(%peer, "console: {why}");
    let mut e = Event::daemon(
        EventKind::ConsoleRefused,
        Verdict::Deny,
        format!("{why} (from {peer})"),
    );
    e.approver = approver.map(Approver::label);
    e.approval_id = approval;
    if let Err(err) = ctx.recorder.record(e).await {
        tracing::error!(error = %err, "console refusal not recorded");
    }
}

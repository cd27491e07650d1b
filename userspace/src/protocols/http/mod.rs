//! The HTTP/HTTPS API gateway: TLS terminated with a certificate from
//! blastgate's local CA for the name the agent asked for, every request
//! decided by policy (`http:METHOD`, or `k8s:VERB` for Kubernetes targets),
//! the agent's credentials swapped for the ones blastgate holds, JSON
//! responses masked, each request recorded.
//!
//! - [`request`]: one request, from policy to record.
//! - [`upstream`]: the client to the real API (always the target's address).
//! - [`tunnel`]: upgrades policy allowed (kubectl exec), carried as bytes.
//! - [`lines`]: streams and text bodies masked a line at a time.
//! - [`excerpt`]: bounded, masked body excerpts for the records.
//! - [`refusal`]: the 403/421/502 answers, as JSON or a Kubernetes Status.
//! - [`recorded`]: the response body that writes the request's record.
//! - [`mask`]: JSON bodies masked, gzip handled.
//! - [`echo`]: the injected credential blanked in everything going back.
//! - [`method_override`]: `X-HTTP-Method-Override` and kin, decided too.
//! - [`k8s`]: Kubernetes verbs and resources from method and path.
//! - [`k8s_body`]: Kubernetes write bodies decoded as the API server does.
//! - [`k8s_effect`]: what a Kubernetes request does (exec-equivalents,
//!   changed fields) for policy.
//! - [`settings`]: the `[targets.http]` section.

mod echo;
mod excerpt;
pub mod k8s;
pub mod k8s_body;
mod k8s_effect;
mod lines;
mod mask;
mod method_override;
mod recorded;
mod refusal;
mod request;
mod settings;
mod tunnel;
mod upstream;

use std::{convert::Infallible, sync::Arc};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

pub use settings::{HttpTarget, Oversize};

/// For the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub use request::decided_on;

use crate::{protocols::gateway::Gateway, proxy::session::SessionError};

/// Serves one agent connection; `tls` for `https` targets.
pub async fn serve(conn: TcpStream, gw: Gateway, tls: bool) -> Result<(), SessionError> {
    let cfg = gw
        .target
        .http
        .clone()
        .ok_or_else(|| SessionError::Upstream("target has no [targets.http] section".into()))?;
    let _ = conn.set_nodelay(true);
    let upstream_tls = cfg.upstream_tls.unwrap_or(tls);
    let client = upstream::client(
        gw.upstream,
        gw.ctx.connect_timeout,
        cfg.upstream_ca_file.as_deref(),
        cfg.server_name.as_deref(),
    )
    .map_err(SessionError::Upstream)?;
    if !tls {
        let state = Arc::new(request::Conn {
            gw,
            cfg,
            client,
            sni: None,
            upstream_tls,
            guard: Default::default(),
        });
        return serve_http(TokioIo::new(conn), state).await;
    }
    let certs = gw
        .ctx
        .https
        .clone()
        .ok_or_else(|| SessionError::Upstream("no local CA for HTTPS".into()))?;
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), conn)
        .await
        .map_err(|e| SessionError::Relay(format!("TLS: {e}")))?;
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
    // A leaf for the name the agent asked for, when it is one of the
    // target's; otherwise for the target's names, which the agent's TLS
    // check then refuses.
    let names = match &sni {
        Some(n) if gw.target.names.iter().any(|t| t.eq_ignore_ascii_case(n)) => vec![n.clone()],
        _ => gw.target.names.clone(),
    };
    let config = certs
        .config_for(&names)
        .map_err(|e| SessionError::Upstream(format!("certificate for {names:?}: {e}")))?;
    let stream = start
        .into_stream(config)
        .await
        .map_err(|e| SessionError::Relay(format!("TLS: {e}")))?;
    let state = Arc::new(request::Conn {
        gw,
        cfg,
        client,
        sni,
        upstream_tls,
        guard: Default::default(),
    });
    serve_http(TokioIo::new(stream), state).await
}

async fn serve_http<I>(io: I, state: Arc<request::Conn>) -> Result<(), SessionError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(request::handle(state, req).await) }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await
        .map_err(|e| SessionError::Relay(format!("http: {e}")))
}

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
//! - [`aws`]: AWS targets: operations identified, decided, re-signed.
//! - [`settings`]: the `[targets.http]` section.

pub mod aws;
mod echo;
mod excerpt;
mod git;
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
#[cfg(test)]
mod test_upstream;
mod tunnel;
mod upstream;

use std::{convert::Infallible, sync::Arc};

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

pub use settings::{HttpTarget, Oversize, Unmaskable};

pub use mask::mask_doc;
/// For the fuzz targets (`fuzz/`) only.
#[doc(hidden)]
pub use request::decided_on;

use crate::{
    protocols::{gateway::Gateway, phases::Phases},
    session::{SessionError, SessionTasks},
};

pub struct Http {
    /// Whether the agent speaks TLS (an `https` target).
    pub tls: bool,
}

/// The agent's connection after its opening.
pub enum Agent {
    Plain(TcpStream),
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        /// The name the agent asked for.
        sni: Option<String>,
    },
}

fn settings(gw: &Gateway) -> Result<HttpTarget, SessionError> {
    gw.target
        .http
        .clone()
        .ok_or_else(|| SessionError::blastgate("target has no [targets.http] section"))
}

impl Phases for Http {
    type Agent = Agent;
    type Upstream = Arc<request::Conn>;

    async fn handshake(&self, conn: TcpStream, gw: &Gateway) -> Result<Agent, SessionError> {
        let _ = conn.set_nodelay(true);
        if !self.tls {
            return Ok(Agent::Plain(conn));
        }
        let certs = gw
            .services
            .https
            .clone()
            .ok_or_else(|| SessionError::blastgate("no local CA for HTTPS"))?;
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), conn)
            .await
            .map_err(|e| SessionError::agent(format!("TLS: {e}")))?;
        let sni = start
            .client_hello()
            .server_name()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        // A leaf for the name the agent asked for, when it is one of the
        // target's; otherwise for the target's names, which the agent's TLS
        // check then refuses.
        let names = match &sni {
            Some(n)
                if gw.target.names.iter().any(|t| t.eq_ignore_ascii_case(n))
                    || gw.target.host_names.iter().any(|p| p.matches_name(n)) =>
            {
                vec![n.clone()]
            }
            _ => gw.presented_names(),
        };
        let config = certs
            .config_for(&names)
            .map_err(|e| SessionError::blastgate(format!("certificate for {names:?}: {e}")))?;
        let stream = start
            .into_stream(config)
            .await
            .map_err(|e| SessionError::agent(format!("TLS: {e}")))?;
        Ok(Agent::Tls {
            stream: Box::new(stream),
            sni,
        })
    }

    async fn connect(
        &self,
        agent: &mut Agent,
        gw: &Gateway,
    ) -> Result<Arc<request::Conn>, SessionError> {
        let cfg = settings(gw)?;
        let upstream_tls = cfg.upstream_tls.unwrap_or(self.tls);
        let client = upstream::client(
            gw.upstream,
            gw.services.connect_timeout,
            cfg.upstream_ca_file.as_deref(),
            cfg.server_name.as_deref(),
        )
        .map_err(SessionError::blastgate)?;
        let sni = match agent {
            Agent::Plain(_) => None,
            Agent::Tls { sni, .. } => sni.clone(),
        };
        Ok(Arc::new(request::Conn {
            gw: gw.clone(),
            cfg,
            client,
            sni,
            upstream_tls,
            guard: Default::default(),
            aws_role: Default::default(),
        }))
    }

    async fn relay(
        &self,
        agent: Agent,
        state: Arc<request::Conn>,
        gw: &Gateway,
    ) -> Result<(), SessionError> {
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(request::handle(state, req).await) }
        });
        let streams = SessionStreams(gw.tasks.clone());
        match agent {
            Agent::Plain(c) => serve_http(TokioIo::new(c), service, streams).await,
            Agent::Tls { stream, .. } => serve_http(TokioIo::new(*stream), service, streams).await,
        }
    }

    /// Every request on the connection gets the refusal, as JSON or a
    /// Kubernetes `Status`, with the status that says whose fault it was.
    async fn refuse(&self, agent: Agent, why: &SessionError, gw: &Gateway) {
        let Ok(cfg) = settings(gw) else {
            return;
        };
        let status = StatusCode::from_u16(why.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        let reason = why.message.clone();
        let service = service_fn(move |_req| {
            let mut answer = refusal::answer(&cfg, status, &reason, None, None);
            answer.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            async move { Ok::<_, Infallible>(answer) }
        });
        let streams = SessionStreams(gw.tasks.clone());
        let _ = match agent {
            Agent::Plain(c) => serve_http(TokioIo::new(c), service, streams).await,
            Agent::Tls { stream, .. } => serve_http(TokioIo::new(*stream), service, streams).await,
        };
    }
}

/// Where hyper runs each HTTP/2 stream: a task of the session, so a
/// request in flight ends (and writes its record, and adds its bytes)
/// before the session's closing record, and, when the session is cut,
/// gets the wind-down to record how (a hold withdrawn) before it is
/// dropped. Not tokio's spawn: the driver would not wait for those.
#[derive(Clone)]
struct SessionStreams(SessionTasks);

impl<F> hyper::rt::Executor<F> for SessionStreams
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.spawn_winding_down(async move {
            stream.await;
        });
    }
}

async fn serve_http<I, S>(io: I, service: S, streams: SessionStreams) -> Result<(), SessionError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<upstream::Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    hyper_util::server::conn::auto::Builder::new(streams)
        .serve_connection_with_upgrades(io, service)
        .await
        .map_err(|e| SessionError::agent(format!("http: {e}")))
}

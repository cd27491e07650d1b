//! The client blastgate forwards requests with: connections always go to
//! the target's upstream address, whatever host the request names (the
//! agent cannot steer blastgate elsewhere), with TLS checked against the
//! system roots or the configured CA, h2 when the server offers it.

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use rustls::{pki_types::pem::PemObject, pki_types::CertificateDer, RootCertStore};
use tokio::net::TcpStream;

pub type Body = BoxBody<Bytes, hyper::Error>;
pub type Upstream = Client<hyper_rustls::HttpsConnector<FixedAddr>, Body>;

/// Where the system keeps its trusted roots (Debian, Ubuntu).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Dials one address for every URI.
#[derive(Clone)]
pub struct FixedAddr {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<Uri> for FixedAddr {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{addr}: connect timed out"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

/// How blastgate reaches one target: a pooled client for requests (h2 when
/// the server offers it), and a connector that only offers HTTP/1.1 for
/// protocol upgrades, which h2 cannot carry.
#[derive(Clone)]
pub struct Clients {
    pub pooled: Upstream,
    pub upgrader: hyper_rustls::HttpsConnector<FixedAddr>,
}

/// What makes two targets' clients interchangeable; the CA bundle's
/// modification time is part of it, so a rotated bundle is read afresh.
type Key = (
    SocketAddr,
    Duration,
    Option<std::path::PathBuf>,
    Option<String>,
    Option<std::time::SystemTime>,
);

/// Clients are shared by every agent connection to the same target: the
/// CA bundle is parsed once, not per connection, and upstream connections
/// are reused across agent connections (they carry no credentials of
/// their own; blastgate's are set on each request).
static SHARED: std::sync::Mutex<Option<std::collections::HashMap<Key, Clients>>> =
    std::sync::Mutex::new(None);

/// Bound on distinct clients kept (targets times CA rotations).
const MAX_SHARED: usize = 256;

/// The clients for one target, made on first use.
pub fn client(
    addr: SocketAddr,
    timeout: Duration,
    ca_file: Option<&Path>,
    server_name: Option<&str>,
) -> Result<Clients, String> {
    let bundle = ca_file.unwrap_or(Path::new(SYSTEM_ROOTS));
    let mtime = std::fs::metadata(bundle).and_then(|m| m.modified()).ok();
    let key: Key = (
        addr,
        timeout,
        ca_file.map(Path::to_path_buf),
        server_name.map(str::to_string),
        mtime,
    );
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let map = shared.get_or_insert_with(Default::default);
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let made = build(addr, timeout, bundle, server_name)?;
    if map.len() >= MAX_SHARED {
        map.clear();
    }
    map.insert(key, made.clone());
    Ok(made)
}

fn build(
    addr: SocketAddr,
    timeout: Duration,
    bundle: &Path,
    server_name: Option<&str>,
) -> Result<Clients, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(bundle)
        .map_err(|e| format!("CA bundle {}: {e}", bundle.display()))?;
    for c in certs.flatten() {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!("CA bundle {}: no certificates", bundle.display()));
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = server_name
        .map(|n| {
            rustls::pki_types::ServerName::try_from(n.to_string())
                .map_err(|e| format!("server_name {n:?}: {e}"))
        })
        .transpose()?;
    let connector = |tls: rustls::ClientConfig| {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        match &name {
            Some(n) => builder
                .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(n.clone())),
            None => builder,
        }
    };
    let pooled = connector(tls.clone())
        .enable_all_versions()
        .wrap_connector(FixedAddr { addr, timeout });
    let upgrader = connector(tls)
        .enable_http1()
        .wrap_connector(FixedAddr { addr, timeout });
    Ok(Clients {
        pooled: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(pooled),
        upgrader,
    })
}

/// Sends an upgrade request (origin-form, with Host) on a new HTTP/1.1
/// connection to `target` (scheme and authority: TLS or not, and the name
/// checked) that stays open for the upgraded protocol.
pub async fn upgrade(
    connector: &hyper_rustls::HttpsConnector<FixedAddr>,
    target: Uri,
    req: http::Request<Body>,
    tasks: &crate::session::SessionTasks,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    use tower_service::Service;
    let mut connector = connector.clone();
    let io = connector
        .call(target)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    tasks.spawn_cancellable(async move {
        let _ = connection.with_upgrades().await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("upstream: {e}"))
}

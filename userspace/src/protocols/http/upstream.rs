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

/// A client for one session's target.
pub fn client(
    addr: SocketAddr,
    timeout: Duration,
    ca_file: Option<&Path>,
    server_name: Option<&str>,
) -> Result<Upstream, String> {
    let mut roots = RootCertStore::empty();
    let bundle = ca_file.unwrap_or(Path::new(SYSTEM_ROOTS));
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
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match server_name {
        Some(n) => {
            let name = rustls::pki_types::ServerName::try_from(n.to_string())
                .map_err(|e| format!("server_name {n:?}: {e}"))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder
        .enable_all_versions()
        .wrap_connector(FixedAddr { addr, timeout });
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector))
}

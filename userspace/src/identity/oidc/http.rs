//! The HTTP client openidconnect fetches discovery documents and keys
//! with: hyper over rustls (ring, like the rest of the daemon), so no second
//! TLS stack comes in through reqwest, and every response is bounded in
//! size and time (an issuer is a remote server like any other).

use std::{future::Future, path::Path, pin::Pin, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Discovery documents and key sets are a few KiB.
const MAX_BODY: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct HttpClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request: {0}")]
    Request(String),
    #[error("no answer within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("answer over {MAX_BODY} bytes or unreadable: {0}")]
    Body(String),
}

impl HttpClient {
    /// With the public web roots, or only the PEM roots in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpClient, String> {
        let tls = crate::tls::client::verifying(ca_file)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    async fn fetch(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Request(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.fetch(request))
    }
}

//! For the lib tests: an upstream answer as hyper hands it to the
//! gateway (an `Incoming`), over an in-memory HTTP/1.1 connection, so
//! masking is tested on the body type it reads in the daemon.

use bytes::Bytes;
use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A response body sent frame by frame, as the frames come.
struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chan {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|f| f.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// The answer to a GET: `headers`, then the body in `frames`, each
/// written on its own (5 ms apart, so a frame edge is a read edge).
pub async fn incoming(
    headers: Vec<(&'static str, &'static str)>,
    frames: Vec<Bytes>,
) -> (http::response::Parts, Incoming) {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |_req| {
            let (frames, headers) = (frames.clone(), headers.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    for f in frames {
                        let _ = tx.send(f).await;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                });
                let mut r = http::Response::new(Chan(rx));
                for (k, v) in headers {
                    r.headers_mut().insert(k, HeaderValue::from_static(v));
                }
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(
            client_io,
        ))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let response = send
        .send_request(http::Request::new(http_body_util::Empty::new()))
        .await
        .expect("response");
    response.into_parts()
}

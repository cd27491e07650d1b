//! The HTTP gateway's request mapping: raw HTTP/1 bytes through hyper's
//! parser (what the gateway serves agents with), then what blastgate
//! decides a request on (`protocols::http::decided_on`: the host, the
//! Kubernetes request info from `k8s::classify`, the action, and the
//! replica count `k8s::replicas_set` reads from a scaling body).
//!
//! Input: `[flags, bytes…]`; `flags & 1` makes the target a Kubernetes API.
#![no_main]

#[path = "common.rs"]
mod common;

use std::convert::Infallible;

use blastgate::protocols::http::{decided_on, k8s};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the gateway reads of a body before deciding (its default
/// `max_inspect_bytes` is larger; the fuzzer's inputs are smaller still).
const BODY_LIMIT: usize = 1 << 20;

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| one(data))
});

fn one(data: &[u8]) {
    let [flags, wire @ ..] = data else {
        return;
    };
    let kubernetes = flags & 1 != 0;
    common::runtime().block_on(async {
        let (mut agent, server) = tokio::io::duplex(1 << 20);
        let service = service_fn(move |req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Default::default(),
            };
            let req = Request::from_parts(parts, ());
            check(&req, kubernetes, &body);
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::new())))
        });
        let conn = http1::Builder::new().serve_connection(TokioIo::new(server), service);
        let agent_side = async {
            let _ = agent.write_all(wire).await;
            let _ = agent.shutdown().await;
            let mut sink = Vec::new();
            let _ = agent.read_to_end(&mut sink).await;
        };
        let (_, ()) = tokio::join!(conn, agent_side);
    });
}

fn check(req: &Request<()>, kubernetes: bool, body: &[u8]) {
    let (host, action, context) = decided_on(req, kubernetes, body);
    let method = req.method().as_str();
    let plain = [
        format!("http:{method}"),
        "http:CONNECT".to_string(),
        "http:UPGRADE".to_string(),
    ];
    if !plain.contains(&action) {
        let verb = action.strip_prefix("k8s:").unwrap_or_else(|| {
            panic!("action {action:?} for a {method} request");
        });
        assert!(kubernetes, "a k8s action for a plain HTTP target");
        assert_eq!(verb, verb.to_lowercase());
    }
    if let Some(host) = &host {
        assert_eq!(
            host,
            &host.to_ascii_lowercase(),
            "hosts are compared lower-cased"
        );
    }
    for key in [
        "method",
        "host",
        "path",
        "query",
        "k8s_resource",
        "k8s_namespace",
        "k8s_name",
    ] {
        assert!(context[key].is_string(), "context {key} is a string");
    }
    assert!(context["k8s_replicas"].is_i64());
    if kubernetes {
        let k = k8s::classify(method, req.uri().path(), req.uri().query().unwrap_or(""));
        // A namespace or a name is one path segment: a slash in one means
        // the path was split differently from the apiserver.
        assert!(!k.namespace.contains('/'), "namespace {:?}", k.namespace);
        assert!(!k.resource.contains('/'), "resource {:?}", k.resource);
        assert_eq!(
            k,
            k8s::classify(method, req.uri().path(), req.uri().query().unwrap_or(""))
        );
    }
}

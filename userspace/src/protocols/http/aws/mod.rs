//! AWS targets (`kind = "aws"`): every request identified as the AWS
//! operation it is ([`operation`], with AWS's service models and REST
//! routing in [`rest`]), decided as `aws:<service>:<Operation>`,
//! re-signed with the credential blastgate holds ([`sign`]) and answered
//! with secrets masked ([`masking`]). The agent's SDK signs with a
//! placeholder key; its signature is never checked nor forwarded, its
//! scope only read as a hint that must agree with the endpoint. Signed
//! streaming uploads have every chunk signature replaced ([`chunks`]).

pub mod chunks;
pub mod masking;
pub mod operation;
pub mod rest;
pub mod sign;
pub mod sts;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    request::{self, Answering, Conn},
    upstream::Body,
};
use crate::{
    config::Secret,
    records::{Event, EventKind, Verdict},
};
use operation::{Asked, Endpoint, Operation};
use sign::{Held, Payload};

/// `[targets.http.aws]`: where the endpoint is and what blastgate signs
/// with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsTarget {
    /// The region of requests whose host and signing scope name none.
    pub region: String,
    /// The held key's id.
    pub access_key_id: String,
    /// The held key's secret: `{ file = "…" }` or `{ env = "…" }`.
    pub secret_access_key: Secret,
    /// A role assumed with the held key for each session (STS
    /// `AssumeRole`, 900 s): the session's requests are signed with its
    /// temporary credentials, which end with the session ([`sts`]).
    #[serde(default)]
    pub assume_role_arn: Option<String>,
    /// Where `AssumeRole` goes (`name:port`). Default: the regional STS
    /// endpoint for `*.amazonaws.com` hosts, else the target's own
    /// upstream (a custom endpoint that serves STS).
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Host names of a custom endpoint that its S3 server reads
    /// path-style (never taking a bucket from the host name). S3 at any
    /// other name outside `amazonaws.com` is refused (an address is
    /// always path-style).
    #[serde(default)]
    pub s3_path_style_hosts: Vec<String>,
    /// Services a custom endpoint (not `*.amazonaws.com`) serves; empty:
    /// whichever the agent's signing scope names.
    #[serde(default)]
    pub services: Vec<String>,
    /// Secrets, decrypted SSM parameters and `Credentials` blocks are
    /// masked in answers (default true).
    #[serde(default = "yes")]
    pub mask_secrets: bool,
}

/// The placeholder key the agent's AWS CLI and SDKs sign with: they need
/// one to send anything, and blastgate throws its signature away.
pub const PLACEHOLDER_KEY_ID: &str = "AKIABLASTGATEAGENT000";
pub const PLACEHOLDER_SECRET: &str = "blastgate-placeholder-not-a-secret";

/// The environment `blastgate run` gives an agent when the config has an
/// AWS target: placeholder credentials (the agent's own are replaced, so
/// a real key in its environment is never used).
pub fn placeholder_env(config: &crate::config::Config) -> Vec<(&'static str, std::path::PathBuf)> {
    let aws = config.targets.iter().any(|t| {
        t.http
            .as_ref()
            .is_some_and(|h| h.kind == super::settings::ApiKind::Aws)
    });
    if !aws {
        return Vec::new();
    }
    vec![
        ("AWS_ACCESS_KEY_ID", PLACEHOLDER_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", PLACEHOLDER_SECRET.into()),
        ("AWS_SESSION_TOKEN", "blastgate-placeholder".into()),
    ]
}

fn yes() -> bool {
    true
}

impl AwsTarget {
    pub fn validate(&self) -> Result<(), String> {
        if self.region.is_empty() {
            return Err("[targets.http.aws] region is empty".into());
        }
        if self.access_key_id.is_empty() {
            return Err("[targets.http.aws] access_key_id is empty".into());
        }
        if self
            .assume_role_arn
            .as_deref()
            .is_some_and(|a| !a.starts_with("arn:") || a.split(':').count() < 6)
        {
            return Err("[targets.http.aws] assume_role_arn is not a role ARN".into());
        }
        if let Some(e) = &self.sts_endpoint {
            sts::parse_endpoint(e).map_err(|e| format!("[targets.http.aws] {e}"))?;
        }
        if self.secret_access_key.file.is_some() == self.secret_access_key.env.is_some() {
            return Err(
                "[targets.http.aws] secret_access_key needs exactly one of file or env".into(),
            );
        }
        Ok(())
    }

    /// The held credential, read now (a rotated file is used at once).
    fn held(&self) -> Result<Held, String> {
        Ok(Held {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self
                .secret_access_key
                .read()
                .map_err(|e| format!("the held AWS secret key: {e}"))?,
            session_token: None,
        })
    }
}

/// Whether the agent speaks a JSON protocol (so refusals are JSON).
fn speaks_json(req: &Request<Incoming>) -> bool {
    req.headers().contains_key("x-amz-target")
        || req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-amz-json"))
}

/// S3 outside `amazonaws.com` is read path-style, which holds only at a
/// host that cannot carry a bucket: an address, or a name the admin
/// lists in `s3_path_style_hosts`. At any other name the server may take
/// the bucket from the host's first label (MinIO with a domain, Ceph,
/// LocalStack do; moto does even at `moto.test`): which bucket runs
/// cannot be known, so the request is refused.
fn bucket_host(op: &Operation, host: &str, path_style: &[String]) -> Result<(), String> {
    let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
    let plain = host.parse::<std::net::IpAddr>().is_ok()
        || path_style.iter().any(|n| n.eq_ignore_ascii_case(host));
    if op.service == "s3" && !aws && !plain {
        return Err(format!(
            "at {host:?} the S3 server may read the bucket from the host name; \
             blastgate decides S3 at a custom endpoint's address, or at names \
             listed in s3_path_style_hosts"
        ));
    }
    Ok(())
}

/// An AWS-style error the CLI and SDKs print as the server's own
/// ("An error occurred (AccessDenied) when calling …: blastgate: …").
pub fn error(status: StatusCode, code: &str, message: &str, json: bool) -> Response<Body> {
    let message = format!("blastgate: {message}");
    let (body, content_type) = if json {
        (
            serde_json::to_vec(&json!({ "__type": code, "message": message })).unwrap_or_default(),
            "application/x-amz-json-1.1",
        )
    } else {
        (
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse><Error><Type>Sender</Type>\
                 <Code>{}</Code><Message>{}</Message></Error><RequestId>blastgate</RequestId></ErrorResponse>\n",
                xml_escape(code),
                xml_escape(&message)
            )
            .into_bytes(),
            "text/xml",
        )
    };
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if json {
        if let Ok(v) = HeaderValue::from_str(code) {
            r.headers_mut().insert("x-amzn-errortype", v);
        }
    }
    r
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Refuses and records.
async fn refuse(
    conn: &Conn,
    mut event: Event,
    status: StatusCode,
    code: &str,
    why: &str,
    json: bool,
) -> Response<Body> {
    event.reason = Some(why.to_string());
    event.status = Some(status.as_u16());
    conn.gw.record(event).await;
    error(status, code, why, json)
}

/// Refuses as AWS refuses what a caller may not do (403 AccessDenied).
async fn denied(conn: &Conn, event: Event, why: &str, json: bool) -> Response<Body> {
    refuse(
        conn,
        event,
        StatusCode::FORBIDDEN,
        "AccessDenied",
        why,
        json,
    )
    .await
}

/// The policy context of an operation.
pub fn context(op: &Operation, method: &Method, host: &str, path: &str) -> Value {
    json!({
        "method": method.as_str(),
        "host": host,
        "path": path,
        "service": op.service,
        "operation": op.operation,
        "region": op.region,
        "protocol": op.protocol,
        "resources": op.resources,
        "bucket": op.bucket,
        "key": op.key,
    })
}

/// What the record says the request was about.
fn record_context(op: &Operation) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("service".into(), op.service.clone());
    c.insert("operation".into(), op.operation.clone());
    c.insert("region".into(), op.region.clone());
    if !op.bucket.is_empty() {
        c.insert("bucket".into(), op.bucket.clone());
    }
    if !op.key.is_empty() {
        c.insert("key".into(), op.key.clone());
    }
    if !op.resources.is_empty() {
        c.insert("resource".into(), op.resources.join(" "));
    }
    c
}

/// What a signed aws-chunked upload must declare for its chunks to be
/// re-signed: `x-amz-decoded-content-length` (the object's size, which the
/// chunks must add up to), a `Content-Length` (so that a stream blastgate
/// stops short is a failed request upstream, never a complete one) and,
/// for the trailer variant, the `x-amz-trailer` names.
fn streaming_framing(
    headers: &http::HeaderMap,
    trailer: bool,
) -> Result<(u64, Option<Vec<String>>), String> {
    let one = |name: &str| -> Result<Option<&str>, String> {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => v
                .to_str()
                .map(Some)
                .map_err(|_| format!("{name} is not text")),
            _ => Err(format!("{name} is repeated")),
        }
    };
    let decoded = one("x-amz-decoded-content-length")?
        .ok_or("a signed aws-chunked upload without x-amz-decoded-content-length")?;
    if decoded.is_empty() || !decoded.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "x-amz-decoded-content-length {decoded:?} is not a byte count"
        ));
    }
    let decoded: u64 = decoded
        .parse()
        .map_err(|_| format!("x-amz-decoded-content-length {decoded:?} is too large"))?;
    if one("content-length")?.is_none() {
        return Err(
            "a signed aws-chunked upload must declare its Content-Length to be re-signed".into(),
        );
    }
    let declared = one("x-amz-trailer")?;
    match (trailer, declared) {
        (false, None) => Ok((decoded, None)),
        (false, Some(_)) => Err(
            "x-amz-trailer with STREAMING-AWS4-HMAC-SHA256-PAYLOAD (trailers need the -TRAILER mode)"
                .into(),
        ),
        (true, None) => {
            Err("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER without x-amz-trailer".into())
        }
        (true, Some(names)) => {
            let names: Vec<String> = names
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .collect();
            if names.iter().any(|n| n.is_empty() || n == "x-amz-trailer-signature") {
                return Err(format!("x-amz-trailer {names:?} does not name trailing headers"));
            }
            Ok((decoded, Some(names)))
        }
    }
}

/// One request to an AWS target, after the host check.
pub(super) async fn answer(
    conn: Arc<Conn>,
    req: Request<Incoming>,
    mut event: Event,
    host: String,
    started: Instant,
) -> Response<Body> {
    let json = speaks_json(&req);
    let Some(aws) = conn.cfg.aws.clone() else {
        let why = "target has kind = \"aws\" but no [targets.http.aws]";
        return refuse(
            &conn,
            event,
            StatusCode::BAD_GATEWAY,
            "InternalFailure",
            why,
            json,
        )
        .await;
    };
    event.action = Some("aws".into());
    let payload = match sign::payload(req.headers()) {
        Ok(p) => p,
        Err(why) => {
            return refuse(
                &conn,
                event,
                StatusCode::BAD_REQUEST,
                "NotImplemented",
                &why,
                json,
            )
            .await
        }
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let framing = sign::algorithm(req.headers(), &query).and_then(|a| {
        let streaming = match (&payload, &a) {
            (Payload::StreamingSigned { .. }, _) if sign::presigned(&query) => {
                return Err(
                    "a presigned URL with signed chunks is not a signing AWS defines".into(),
                )
            }
            (Payload::StreamingSigned { trailer }, sign::Algorithm::V4) => {
                Some(streaming_framing(req.headers(), *trailer)?)
            }
            (Payload::StreamingSigned { .. }, _) => {
                return Err(
                    "a SigV4a request with SigV4 signed chunks is not a signing AWS defines".into(),
                )
            }
            _ => None,
        };
        Ok((a, streaming))
    });
    let (algorithm, streaming) = match framing {
        Ok(s) => s,
        Err(why) => {
            return refuse(
                &conn,
                event,
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &why,
                json,
            )
            .await
        }
    };
    // Query and JSON protocols name the operation in the body; a body the
    // signature must hash is read whole too. S3's streamed payloads are not.
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let read_body = payload == Payload::Hashed || json || form;
    if read_body {
        if let Some(coding) = req
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.eq_ignore_ascii_case("identity"))
        {
            let why = format!(
                "a request body in content-encoding {coding} is not read by blastgate, and the operation may be named in it"
            );
            return refuse(
                &conn,
                event,
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &why,
                json,
            )
            .await;
        }
    }
    let (parts, body) = req.into_parts();
    let mut body: Body = body.boxed();
    let mut whole = None;
    if read_body {
        match request::read_limited(body, conn.cfg.max_inspect_bytes).await {
            Ok(b) => {
                whole = Some(b.clone());
                body = Full::new(b).map_err(|never| match never {}).boxed();
            }
            Err(why) => {
                return refuse(
                    &conn,
                    event,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "EntityTooLarge",
                    &why,
                    json,
                )
                .await
            }
        }
    }
    let asked = Asked {
        method: &parts.method,
        host: &host,
        path: &path,
        query: &query,
        headers: &parts.headers,
        body: whole.as_deref(),
    };
    let endpoint = Endpoint {
        region: &aws.region,
        services: &aws.services,
    };
    // REST-JSON services (Lambda, …) take their errors in JSON too.
    let json = json || operation::answers_in_json(&asked, &endpoint);
    let op = match operation::identify(&asked, &endpoint)
        .and_then(|op| bucket_host(&op, &host, &aws.s3_path_style_hosts).map(|()| op))
    {
        Ok(op) => op,
        Err(why) => {
            let why = format!("request not attributable to an AWS operation, refused: {why}");
            return denied(&conn, event, &why, json).await;
        }
    };
    let action = op.action();
    let mut context = context(&op, &parts.method, &host, &path);
    if let Some(c) = context.as_object_mut() {
        // Where the request may execute: SigV4 names one region; a SigV4a
        // region set may name several, or `*` (then `region` is "*").
        let (set, signature) = match &algorithm {
            sign::Algorithm::V4 => (vec![op.region.as_str()], "sigv4"),
            sign::Algorithm::V4a { region_set } => (region_set.split(',').collect(), "sigv4a"),
        };
        c.insert("region_set".into(), json!(set));
        c.insert("signature".into(), json!(signature));
    }
    let text = event.text.clone().unwrap_or_default();
    let ruling = conn.gw.authorize(&action, &context, &text, |_| {}).await;
    let mut event = Event {
        context: record_context(&op),
        ..conn.gw.ruled(EventKind::Request, &action, text, &ruling)
    };
    if let sign::Algorithm::V4a { region_set } = &algorithm {
        event
            .context
            .insert("region_set".into(), region_set.clone());
    }
    if !ruling.allowed {
        let mut why = ruling.reason.clone();
        if let Some(p) = &ruling.policy_id {
            why += &format!(" (policy {p})");
        }
        if let Some(a) = ruling.approval_id {
            why += &format!(" (approval {a})");
        }
        return denied(&conn, event, &why, json).await;
    }
    let base = match aws.held() {
        Ok(h) => h,
        Err(why) => return request::fail(&conn, event, &why).await,
    };
    let held = match &aws.assume_role_arn {
        None => base.clone(),
        Some(role) => {
            let assumed = conn
                .aws_role
                .get_or_try_init(|| async {
                    // STS is regional: a SigV4a request's "*" is no region.
                    let region = if op.region == "*" {
                        &aws.region
                    } else {
                        &op.region
                    };
                    let at = sts::endpoint(aws.sts_endpoint.as_deref(), &host, region)?;
                    sts::assume(&conn, &base, role, &at, region).await
                })
                .await;
            match assumed {
                Ok(h) => h.clone(),
                Err(why) => return request::fail(&conn, event, &why).await,
            }
        }
    };
    // Everything the held credentials are made of (the key and the
    // session's role credentials) is blanked in answers.
    let secrets: Vec<(String, String)> = [
        Some(base.access_key_id.clone()),
        Some(base.secret_access_key.clone()),
        Some(held.access_key_id.clone()),
        Some(held.secret_access_key.clone()),
        held.session_token.clone(),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .map(|s| (String::new(), s))
    .collect();
    let guard = conn.guard_for(&secrets);
    let counters = conn.gw.counters.clone();
    let body = body
        .map_frame(move |frame| {
            if let Some(d) = frame.data_ref() {
                counters.add_from_agent(d.len() as u64);
            }
            frame
        })
        .boxed();
    let mut upstream_req = match request::forwarded(&conn, parts, body, &host) {
        Ok(r) => r,
        Err(why) => return request::fail(&conn, event, &why).await,
    };
    for h in sign::SIGNING_HEADERS.iter().chain(["expect"].iter()) {
        upstream_req.headers_mut().remove(*h);
    }
    let presign = if sign::presigned(&query) {
        let (rest, expires) = sign::unpresigned(&query);
        let uri = upstream_req.uri().clone();
        let base = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
            uri.path()
        );
        let rebuilt = if rest.is_empty() {
            base
        } else {
            format!("{base}?{rest}")
        };
        match rebuilt.parse() {
            Ok(u) => *upstream_req.uri_mut() = u,
            Err(e) => return request::fail(&conn, event, &format!("presigned URI: {e}")).await,
        }
        Some(expires.unwrap_or(std::time::Duration::from_secs(900)))
    } else {
        None
    };
    let signing = sign::For {
        service: &op.service,
        region: &op.region,
        held: &held,
        payload: &payload,
        body: whole.as_deref(),
        presign,
        algorithm: &algorithm,
        time: std::time::SystemTime::now(),
    };
    let seed = match sign::resign(&mut upstream_req, &signing) {
        Ok(s) => s,
        Err(why) => return request::fail(&conn, event, &why).await,
    };
    let refusal = chunks::Refusal::default();
    if let Some((decoded, trailers)) = streaming {
        let chain = chunks::Chain::new(&held, &op.region, &op.service, signing.time, seed);
        let rechunker = chunks::Rechunker::new(chain, decoded, trailers);
        let (p, b) = upstream_req.into_parts();
        let b = chunks::Resigned::new(b, rechunker, refusal.clone()).boxed();
        upstream_req = Request::from_parts(p, b);
    }
    let sent = conn.client.pooled.request(upstream_req).await;
    if let Some(why) = refusal.get() {
        // The agent's aws-chunked framing was refused mid-stream: the
        // upstream got a body cut short of its length, never a bad chunk.
        event.verdict = Verdict::Error;
        let why = format!("the upload was stopped: {why}");
        return refuse(
            &conn,
            event,
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            &why,
            json,
        )
        .await;
    }
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let why = format!("upstream: {e}");
            event.verdict = Verdict::Error;
            event.reason = Some(why.clone());
            event.status = Some(502);
            conn.gw.record(event).await;
            return error(StatusCode::BAD_GATEWAY, "ServiceUnavailable", &why, json);
        }
    };
    let mut response = response.map(BodyExt::boxed);
    if aws.mask_secrets && masking::reads(&op) {
        match masking::masked(response, &op, conn.cfg.max_inspect_bytes).await {
            Ok((r, n)) => {
                if n > 0 {
                    event.reason = Some(format!(
                        "{}; {n} secret value(s) masked",
                        event.reason.unwrap_or_default()
                    ));
                }
                response = r;
            }
            Err(why) => return request::fail(&conn, event, &why).await,
        }
    }
    // S3's ETag is its API's contract (CompleteMultipartUpload lists the
    // parts' ETags; the CLI fails without them), as is a HEAD's
    // Content-Length (the object's size): kept, where the generic masking
    // drops body digests and a bodiless answer's length.
    let kept: Vec<(http::HeaderName, HeaderValue)> = if op.service == "s3" {
        let head = op.operation.starts_with("Head");
        response
            .headers()
            .iter()
            .filter(|(k, _)| *k == header::ETAG || (head && *k == header::CONTENT_LENGTH))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let answering = Answering {
        plan: conn.gw.mask_plan(),
        secrets: false,
        by_path: false,
        streaming: false,
        excerpts: None,
        guard,
        started,
    };
    let mut answered = request::respond(&conn, response, event, answering).await;
    for (k, v) in kept {
        answered.headers_mut().entry(k).or_insert(v);
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// What a signed-chunk upload must declare before its chunks can be
    /// re-signed; each missing piece is refused with its name.
    #[test]
    fn signed_chunk_uploads_must_declare_their_framing() {
        let base = [
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ];
        assert_eq!(
            streaming_framing(&headers(&base), false),
            Ok((66_560, None))
        );
        let refused = |pairs: &[(&str, &str)], trailer: bool, want: &str| {
            let why = streaming_framing(&headers(pairs), trailer).unwrap_err();
            assert!(why.contains(want), "{pairs:?}: {why}");
        };
        refused(
            &[("content-length", "9")],
            false,
            "without x-amz-decoded-content-length",
        );
        refused(&[base[0]], false, "Content-Length");
        refused(
            &[("x-amz-decoded-content-length", "-1"), base[1]],
            false,
            "not a byte count",
        );
        refused(
            &[base[0], base[0], base[1]],
            false,
            "x-amz-decoded-content-length is repeated",
        );
        refused(&base, true, "without x-amz-trailer");
        let declared = [base[0], base[1], ("x-amz-trailer", "x-amz-checksum-crc32")];
        refused(&declared, false, "trailers need the -TRAILER mode");
        assert_eq!(
            streaming_framing(&headers(&declared), true),
            Ok((66_560, Some(vec!["x-amz-checksum-crc32".to_string()])))
        );
        refused(
            &[
                base[0],
                base[1],
                ("x-amz-trailer", "x-amz-trailer-signature"),
            ],
            true,
            "does not name trailing headers",
        );
    }
}

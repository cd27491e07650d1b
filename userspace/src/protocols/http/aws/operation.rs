//! Which AWS operation a request is, read the way AWS routes it: the
//! service from the endpoint's host (or, at an endpoint that serves many,
//! the signing scope the agent's SDK chose, which blastgate re-signs with
//! and so is what the server routes on), the operation from what the
//! service's models ([`rest`], derived from botocore's) say its server
//! reads: `X-Amz-Target` (JSON protocols), `Action=` (query protocols),
//! the RPCv2 CBOR path, or method and path (REST-JSON and REST-XML; S3's
//! REST-XML by hand, for its sub-resources). What cannot be attributed to
//! exactly one operation is refused, never guessed.

use std::collections::BTreeMap;

use http::{HeaderMap, Method};

use super::rest::{self, Service};

/// One identified request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    /// The signing name (`s3`, `ec2`, `sts`, `secretsmanager`).
    pub service: String,
    /// The API's operation name (`ListBuckets`, `TerminateInstances`).
    pub operation: String,
    pub region: String,
    /// `json`, `query`, `rpc-v2-cbor`, `rest-json` or `rest-xml`.
    pub protocol: &'static str,
    /// S3: the bucket, "" for none.
    pub bucket: String,
    /// S3: the object key, "" for none.
    pub key: String,
    /// Resource names or ARNs the request names (a secret's id, instance
    /// ids, a role ARN, an S3 `arn:aws:s3:::bucket/key`).
    pub resources: Vec<String>,
}

impl Operation {
    /// The policy action: `aws:<service>:<Operation>`.
    pub fn action(&self) -> String {
        format!("aws:{}:{}", self.service, self.operation)
    }
}

/// The parts of the agent's `Authorization` (or presigned query) that name
/// where it meant the request to go: a hint, never trusted as proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub access_key: String,
    pub region: String,
    pub service: String,
}

/// What identification reads of a request.
pub struct Asked<'a> {
    pub method: &'a Method,
    /// Host, lower-case, no port.
    pub host: &'a str,
    /// The path as sent (percent-encoded).
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The body, when the protocol needs it read (query and JSON forms).
    pub body: Option<&'a [u8]>,
}

/// The endpoint's facts from configuration.
pub struct Endpoint<'a> {
    /// The region when neither the host nor the agent names one.
    pub region: &'a str,
    /// Services a custom endpoint serves (empty: any the agent's scope
    /// names, for an endpoint such as moto or LocalStack).
    pub services: &'a [String],
}

/// The credential scope of a SigV4 `Authorization` header or presigned
/// URL: `Credential=AKID/20260101/us-east-1/s3/aws4_request`. A SigV4a
/// scope (`AKID/20260101/s3/aws4_request`) names no region: its region is
/// the region set's ([`super::sign::set_region`]; `*` when the request may
/// run in more than one region).
pub fn scope(headers: &HeaderMap, query: &str) -> Option<Scope> {
    let from_header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("AWS4-HMAC-SHA256")
                .or_else(|| v.strip_prefix(super::sign::SIGV4A))
        })
        .and_then(|rest| {
            rest.split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("Credential="))
                .map(str::to_string)
        });
    let credential = from_header.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "X-Amz-Credential")
            .map(|(_, v)| v.into_owned())
    })?;
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, _date, region, service, "aws4_request"] => Some(Scope {
            access_key: key.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        }),
        [key, _date, service, "aws4_request"] => Some(Scope {
            access_key: key.to_string(),
            region: super::sign::set_region(&super::sign::region_set(headers, query)?)?,
            service: service.to_string(),
        }),
        _ => None,
    }
}

/// Where an `*.amazonaws.com` host points: the endpoint prefix (the
/// host's labels before the region: `lambda`, `streams.dynamodb`), the
/// region, and for S3 the bucket of a virtual-hosted name.
#[derive(Debug, PartialEq, Eq)]
struct HostFacts {
    endpoint: String,
    region: Option<String>,
    bucket: Option<String>,
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`.
fn is_region(label: &str) -> bool {
    label.contains('-')
        && label.ends_with(|c: char| c.is_ascii_digit())
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn host_facts(host: &str) -> Option<HostFacts> {
    let base = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = base.split('.').collect();
    // S3: `bucket.s3.region`, `s3.region`, `s3`, `s3-region`,
    // `bucket.s3-region`, `s3.dualstack.region`.
    // `s3-control`, `s3-accesspoint`, `s3-outposts` are other APIs, not
    // S3 in a region called "control".
    if let Some(i) = labels
        .iter()
        .position(|l| *l == "s3" || l.strip_prefix("s3-").is_some_and(is_region))
    {
        let bucket = (i > 0).then(|| labels[..i].join("."));
        let region = labels[i]
            .strip_prefix("s3-")
            .map(str::to_string)
            .or_else(|| {
                labels[i + 1..]
                    .iter()
                    .find(|l| **l != "dualstack" && **l != "fips")
                    .map(|l| l.to_string())
            });
        return Some(HostFacts {
            endpoint: "s3".into(),
            region,
            bucket,
        });
    }
    match labels.split_last() {
        Some((last, rest)) if !rest.is_empty() && is_region(last) => Some(HostFacts {
            endpoint: rest.join("."),
            region: Some(last.to_string()),
            bucket: None,
        }),
        _ => Some(HostFacts {
            endpoint: base.to_string(),
            region: None,
            bucket: None,
        }),
    }
}

fn is_operation_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The service a request is for: its signing name, and the models of
/// every API served under that name at that endpoint (API Gateway's v1
/// and v2, SES's query API and its REST v2, Lambda's APIs, …), among
/// which the request must name exactly one operation.
struct Resolved {
    service: String,
    models: Vec<&'static Service>,
    facts: Option<HostFacts>,
    scope: Option<Scope>,
}

fn resolve(req: &Asked<'_>, endpoint: &Endpoint<'_>) -> Result<Resolved, String> {
    let all = rest::models()?;
    let scope = scope(req.headers, req.query);
    let facts = host_facts(req.host);
    let (service, models) = match (&facts, &scope) {
        (Some(f), scope) => {
            let mut models = all.by_endpoint(&f.endpoint);
            let Some(first) = models.first() else {
                return Err(format!(
                    "{:?} is not the endpoint of any AWS service blastgate's models know",
                    req.host
                ));
            };
            let by_host = first.signing.clone();
            if let Some(s) = scope {
                models.retain(|m| m.signing == s.service);
                if models.is_empty() {
                    return Err(format!(
                        "the request is signed for service {:?} but sent to {:?}, an endpoint of {by_host:?}",
                        s.service, req.host
                    ));
                }
                (s.service.clone(), models)
            } else {
                (by_host, models)
            }
        }
        (None, Some(s)) => {
            if !endpoint.services.is_empty() && !endpoint.services.contains(&s.service) {
                return Err(format!(
                    "service {:?} is not served at this endpoint (services: {})",
                    s.service,
                    endpoint.services.join(", ")
                ));
            }
            let models = all.by_signing(&s.service);
            if models.is_empty() {
                return Err(format!(
                    "{:?} is not the signing name of any AWS service blastgate's models know",
                    s.service
                ));
            }
            (s.service.clone(), models)
        }
        (None, None) => {
            return Err(
                "the request carries no SigV4 credential scope and its host names no AWS service"
                    .into(),
            )
        }
    };
    Ok(Resolved {
        service,
        models,
        facts,
        scope,
    })
}

/// Whether the service answers errors in JSON (its every API speaks a
/// JSON protocol), so a refusal is one its SDK reads.
pub fn answers_in_json(req: &Asked<'_>, endpoint: &Endpoint<'_>) -> bool {
    resolve(req, endpoint).is_ok_and(|r| {
        r.models.iter().all(|m| {
            m.protocols
                .iter()
                .all(|p| matches!(p.as_str(), "json" | "rest-json" | "smithy-rpc-v2-cbor"))
        })
    })
}

/// Identifies the request, or says why it cannot be.
///
/// Each protocol the service's models speak reads the request its own
/// way: `X-Amz-Target` (JSON), `Action=` (query), the path
/// `/service/<prefix>/operation/<Name>` (RPCv2 CBOR), method and path
/// (REST). A header or parameter the service does not read is not taken
/// as naming anything (an `X-Amz-Target` sent to Lambda does not disguise
/// the path's `DeleteFunction`), except `Action=`, which a service not
/// speaking the query protocol must not be sent at all. When the
/// protocols read the request as different operations, it is refused.
pub fn identify(req: &Asked<'_>, endpoint: &Endpoint<'_>) -> Result<Operation, String> {
    let Resolved {
        service,
        models,
        facts,
        scope,
    } = resolve(req, endpoint)?;
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{service:?} is not an AWS service name"));
    }
    let host_region = facts.as_ref().and_then(|f| f.region.clone());
    let region = match (host_region, &scope) {
        (Some(h), Some(s)) if s.region != h => {
            return Err(format!(
                "the request is signed for region {:?} but sent to {:?} in {h:?}",
                s.region, req.host
            ))
        }
        (Some(h), _) => h,
        (None, Some(s)) if !s.region.is_empty() => s.region.clone(),
        _ => endpoint.region.to_string(),
    };
    // A SigV4a request is re-signed for its region set, so that is where
    // it may execute, whatever region its scope or host names.
    let region = match super::sign::algorithm(req.headers, req.query) {
        Ok(super::sign::Algorithm::V4a { region_set }) => {
            super::sign::set_region(&region_set).unwrap_or_else(|| "*".into())
        }
        _ => region,
    };
    if region != "*"
        && !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{region:?} is not an AWS region name"));
    }
    let speaks = |p: &str| models.iter().any(|m| m.speaks(p));
    let target = single_header(req.headers, "x-amz-target")?;
    let action = query_action(req)?;
    let mut found: Vec<Operation> = Vec::new();
    if let Some(t) = &target {
        if speaks("json") {
            found.push(json_operation(&service, &models, t, req.body)?);
        }
    }
    if let Some(a) = &action {
        let query: Vec<&&Service> = models
            .iter()
            .filter(|m| m.speaks("query") || m.speaks("ec2"))
            .collect();
        if query.is_empty() {
            return Err(format!(
                "Action={a} names an operation, but {service} does not speak the query protocol"
            ));
        }
        let name = query
            .iter()
            .find_map(|m| m.operation(a))
            .ok_or_else(|| format!("Action={a} is not an operation of {service}"))?;
        found.push(Operation {
            operation: name.to_string(),
            protocol: "query",
            resources: query_resources(req),
            ..Default::default()
        });
    }
    if let Some(op) = cbor_operation(&service, &models, req)? {
        found.push(op);
    }
    let rest_models: Vec<&Service> = models
        .iter()
        .filter(|m| m.rest().is_some() && !(service == "s3" && m.id == "s3"))
        .copied()
        .collect();
    if service == "s3" {
        let bucket = facts.as_ref().and_then(|f| f.bucket.clone());
        found.push(s3_operation(req, bucket)?);
    }
    if !rest_models.is_empty() {
        if let Some(r) = rest::route(&rest_models, req.method, req.path, req.query)? {
            let mut resources = r.resources;
            if r.protocol == "rest-json" {
                resources.extend(json_resources(req.body));
            }
            found.push(Operation {
                operation: r.operation,
                protocol: r.protocol,
                resources,
                ..Default::default()
            });
        }
    }
    let mut op = match found.as_slice() {
        [] => {
            let ignored = match (&target, speaks("json")) {
                (Some(t), false) => format!(" (its APIs do not read X-Amz-Target {t:?})"),
                _ => String::new(),
            };
            return Err(format!(
                "blastgate cannot tell which {service} operation {} {} is{ignored}",
                req.method, req.path
            ));
        }
        [first, rest @ ..] => {
            if let Some(other) = rest.iter().find(|o| o.operation != first.operation) {
                return Err(format!(
                    "the request reads as {} ({}) and as {} ({}): the server's choice cannot be known",
                    first.operation, first.protocol, other.operation, other.protocol
                ));
            }
            first.clone()
        }
    };
    if !is_operation_name(&op.operation) {
        return Err(format!("{:?} is not an operation name", op.operation));
    }
    op.service = service;
    op.region = region;
    Ok(op)
}

/// An RPCv2 CBOR request, `POST /service/<target prefix>/operation/<Name>`,
/// where a model of the service speaks it.
fn cbor_operation(
    service: &str,
    models: &[&Service],
    req: &Asked<'_>,
) -> Result<Option<Operation>, String> {
    let cbor: Vec<&&Service> = models
        .iter()
        .filter(|m| m.speaks("smithy-rpc-v2-cbor"))
        .collect();
    if cbor.is_empty() {
        return Ok(None);
    }
    let segs: Vec<&str> = req.path.split('/').collect();
    let ["", "service", prefix, "operation", name] = segs.as_slice() else {
        return Ok(None);
    };
    let (prefix, name) = (decode(prefix)?, decode(name)?);
    let operation = cbor
        .iter()
        .filter(|m| m.target.as_deref() == Some(prefix.as_str()))
        .find_map(|m| m.operation(&name))
        .ok_or_else(|| format!("{prefix}/{name} is not an RPCv2 operation of {service}"))?;
    Ok(Some(Operation {
        operation: operation.to_string(),
        protocol: "rpc-v2-cbor",
        ..Default::default()
    }))
}

/// The value of a header sent at most once.
fn single_header(headers: &HeaderMap, name: &str) -> Result<Option<String>, String> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(format!("{name} is sent more than once"));
    }
    first
        .to_str()
        .map(|s| Some(s.trim().to_string()))
        .map_err(|_| format!("{name} is not text"))
}

/// `Action=` from the URL and from a form body: each at most once, and
/// the same in both when both name one.
fn query_action(req: &Asked<'_>) -> Result<Option<String>, String> {
    let once = |pairs: Vec<(String, String)>, whence: &str| -> Result<Option<String>, String> {
        let named: Vec<String> = pairs
            .into_iter()
            .filter(|(k, _)| k == "Action")
            .map(|(_, v)| v)
            .collect();
        match named.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(format!("Action is given more than once in the {whence}")),
        }
    };
    let in_url = once(pairs(req.query.as_bytes()), "URL")?;
    let in_body = match form_body(req) {
        Some(body) => once(pairs(body), "body")?,
        None => None,
    };
    match (in_url, in_body) {
        (Some(a), Some(b)) if a != b => {
            Err(format!("the URL names Action={a} and the body Action={b}"))
        }
        (a, b) => Ok(a.or(b)),
    }
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The body when it is a form (the query protocol's POST).
fn form_body<'a>(req: &Asked<'a>) -> Option<&'a [u8]> {
    let form = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    form.then_some(req.body).flatten()
}

/// Resource names a query request carries: instance ids, ARNs, names.
fn query_resources(req: &Asked<'_>) -> Vec<String> {
    let mut all = pairs(req.query.as_bytes());
    if let Some(b) = form_body(req) {
        all.extend(pairs(b));
    }
    all.into_iter()
        .filter(|(k, _)| {
            let base = k.split('.').next().unwrap_or(k);
            base.ends_with("Id")
                || base.ends_with("Arn")
                || base.ends_with("Name")
                || base.ends_with("Url")
        })
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| v)
        .collect()
}

/// A JSON-protocol operation from `X-Amz-Target: Prefix.Operation`, the
/// prefix one of the service's models declares.
fn json_operation(
    service: &str,
    models: &[&Service],
    target: &str,
    body: Option<&[u8]>,
) -> Result<Operation, String> {
    let (prefix, name) = target
        .rsplit_once('.')
        .ok_or_else(|| format!("X-Amz-Target {target:?} is not Service.Operation"))?;
    let owners: Vec<&&Service> = models
        .iter()
        .filter(|m| m.speaks("json") && m.target.as_deref() == Some(prefix))
        .collect();
    if owners.is_empty() {
        let elsewhere = rest::models()?
            .services
            .iter()
            .find(|m| m.speaks("json") && m.target.as_deref() == Some(prefix));
        return Err(match elsewhere {
            Some(m) => format!(
                "X-Amz-Target {target:?} belongs to {}, but the request is for {service}",
                m.signing
            ),
            None => format!("X-Amz-Target prefix {prefix:?} is not one blastgate knows"),
        });
    }
    let operation = owners
        .iter()
        .find_map(|m| m.operation(name))
        .ok_or_else(|| {
            format!("X-Amz-Target {target:?}: {name:?} is not an operation of {prefix}")
        })?;
    Ok(Operation {
        operation: operation.to_string(),
        protocol: "json",
        resources: json_resources(body),
        ..Default::default()
    })
}

/// Names and ARNs a JSON body carries at its top level.
fn json_resources(body: Option<&[u8]>) -> Vec<String> {
    let mut resources = Vec::new();
    let Some(doc) = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) else {
        return resources;
    };
    let Some(map) = doc.as_object() else {
        return resources;
    };
    for (k, v) in map {
        let named = k.ends_with("Id")
            || k.ends_with("Arn")
            || k.ends_with("Name")
            || k == "Names"
            || k.ends_with("Ids");
        if !named {
            continue;
        }
        match v {
            serde_json::Value::String(s) => resources.push(s.clone()),
            serde_json::Value::Array(items) => {
                resources.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
            }
            _ => {}
        }
    }
    resources
}
/// Query parameters S3 reads as options of an operation rather than as
/// a sub-resource that changes which operation runs.
const S3_OPTIONS: &[&str] = &[
    "prefix",
    "delimiter",
    "marker",
    "max-keys",
    "encoding-type",
    "continuation-token",
    "fetch-owner",
    "start-after",
    "key-marker",
    "version-id-marker",
    "upload-id-marker",
    "max-uploads",
    "part-number-marker",
    "max-parts",
    "versionId",
    "partNumber",
    "uploadId",
    "x-id",
    "list-type",
    "response-content-type",
    "response-content-language",
    "response-expires",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "x-amz-checksum-mode",
    "select-type",
];

/// Bucket sub-resources and the operation name's stem (`Get`/`Put`/
/// `Delete` + stem).
const BUCKET_SUBRESOURCES: &[(&str, &str)] = &[
    ("acl", "BucketAcl"),
    ("policy", "BucketPolicy"),
    ("policyStatus", "BucketPolicyStatus"),
    ("versioning", "BucketVersioning"),
    ("tagging", "BucketTagging"),
    ("cors", "BucketCors"),
    ("lifecycle", "BucketLifecycleConfiguration"),
    ("encryption", "BucketEncryption"),
    ("website", "BucketWebsite"),
    ("logging", "BucketLogging"),
    ("notification", "BucketNotificationConfiguration"),
    ("replication", "BucketReplication"),
    ("ownershipControls", "BucketOwnershipControls"),
    ("publicAccessBlock", "PublicAccessBlock"),
    ("object-lock", "ObjectLockConfiguration"),
    ("accelerate", "BucketAccelerateConfiguration"),
    ("requestPayment", "BucketRequestPayment"),
    ("location", "BucketLocation"),
    ("analytics", "BucketAnalyticsConfiguration"),
    ("metrics", "BucketMetricsConfiguration"),
    ("inventory", "BucketInventoryConfiguration"),
    (
        "intelligent-tiering",
        "BucketIntelligentTieringConfiguration",
    ),
];

const OBJECT_SUBRESOURCES: &[(&str, &str)] = &[
    ("acl", "ObjectAcl"),
    ("tagging", "ObjectTagging"),
    ("retention", "ObjectRetention"),
    ("legal-hold", "ObjectLegalHold"),
    ("attributes", "ObjectAttributes"),
    ("torrent", "ObjectTorrent"),
];

/// Percent-decoding of one path segment.
fn decode(s: &str) -> Result<String, String> {
    percent_decode(s).ok_or_else(|| format!("{s:?} is not valid percent-encoded UTF-8"))
}

pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An S3 REST request: bucket (virtual-hosted or first path segment),
/// key, and the operation from method and sub-resources.
fn s3_operation(req: &Asked<'_>, host_bucket: Option<String>) -> Result<Operation, String> {
    let path = req.path.strip_prefix('/').unwrap_or(req.path);
    let (bucket, key) = match host_bucket {
        Some(b) => (b, decode(path)?),
        None => match path.split_once('/') {
            Some((b, k)) => (decode(b)?, decode(k)?),
            None => (decode(path)?, String::new()),
        },
    };
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs(req.query.as_bytes()) {
        params.entry(k).or_default().push(v);
    }
    if let Some((k, _)) = params.iter().find(|(_, v)| v.len() > 1) {
        return Err(format!("S3 query parameter {k:?} is given more than once"));
    }
    let has = |k: &str| params.contains_key(k);
    let subresources: Vec<&String> = params
        .keys()
        .filter(|k| !S3_OPTIONS.contains(&k.as_str()) && !k.starts_with("X-Amz-"))
        .collect();
    let table = if key.is_empty() {
        BUCKET_SUBRESOURCES
    } else {
        OBJECT_SUBRESOURCES
    };
    let mut stem = None;
    for s in &subresources {
        let known = table.iter().find(|(n, _)| n == s).map(|(_, st)| *st);
        let special = matches!(
            s.as_str(),
            "uploads" | "delete" | "restore" | "select" | "versions"
        );
        match (known, special) {
            (Some(st), _) if stem.is_none() => stem = Some(st),
            (None, true) => {}
            _ => {
                return Err(format!(
                    "S3 sub-resource ?{s} on {} is not one blastgate can attribute",
                    req.method
                ))
            }
        }
    }
    let special = subresources
        .iter()
        .filter(|s| {
            matches!(
                s.as_str(),
                "uploads" | "delete" | "restore" | "select" | "versions"
            )
        })
        .count();
    if special > 1 || (special == 1 && stem.is_some()) {
        return Err("the S3 request names more than one sub-resource".into());
    }
    let copy = req.headers.contains_key("x-amz-copy-source");
    let m = req.method;
    let operation: String = if bucket.is_empty() {
        match *m {
            Method::GET if subresources.is_empty() => "ListBuckets".into(),
            _ => return Err(format!("{m} / is not an S3 operation blastgate knows")),
        }
    } else if key.is_empty() {
        match (m.clone(), stem) {
            (Method::GET, Some(st)) => format!("Get{st}"),
            (Method::PUT, Some("BucketLocation")) => {
                return Err("PUT ?location is not an S3 operation".into())
            }
            (Method::PUT, Some(st)) => format!("Put{st}"),
            (Method::DELETE, Some(st))
                if !matches!(
                    st,
                    "BucketAcl"
                        | "BucketLocation"
                        | "BucketVersioning"
                        | "BucketLogging"
                        | "BucketRequestPayment"
                        | "BucketAccelerateConfiguration"
                        | "ObjectLockConfiguration"
                        | "BucketNotificationConfiguration"
                        | "BucketPolicyStatus"
                ) =>
            {
                if st == "BucketLifecycleConfiguration" {
                    "DeleteBucketLifecycle".into()
                } else {
                    format!("Delete{st}")
                }
            }
            (Method::GET, None) if has("uploads") => "ListMultipartUploads".into(),
            (Method::GET, None) if has("versions") => "ListObjectVersions".into(),
            (Method::GET, None) if special == 0 => {
                if params.get("list-type").is_some_and(|v| v[0] == "2") {
                    "ListObjectsV2".into()
                } else {
                    "ListObjects".into()
                }
            }
            (Method::HEAD, None) if special == 0 => "HeadBucket".into(),
            (Method::PUT, None) if special == 0 => "CreateBucket".into(),
            (Method::DELETE, None) if special == 0 => "DeleteBucket".into(),
            (Method::POST, None) if has("delete") => "DeleteObjects".into(),
            _ => {
                return Err(format!(
                    "{m} on bucket {bucket:?} is not an S3 operation blastgate knows"
                ))
            }
        }
    } else {
        let upload = has("uploadId");
        match (m.clone(), stem) {
            (Method::GET, Some(st)) => format!("Get{st}"),
            (Method::PUT, Some("ObjectAttributes" | "ObjectTorrent")) => {
                return Err("that object sub-resource cannot be written".into())
            }
            (Method::PUT, Some(st)) => format!("Put{st}"),
            (Method::DELETE, Some("ObjectTagging")) => "DeleteObjectTagging".into(),
            (Method::GET, None) if upload && special == 0 => "ListParts".into(),
            (Method::GET, None) if special == 0 => "GetObject".into(),
            (Method::HEAD, None) if special == 0 => "HeadObject".into(),
            (Method::PUT, None) if upload && has("partNumber") && special == 0 => {
                if copy {
                    "UploadPartCopy".into()
                } else {
                    "UploadPart".into()
                }
            }
            (Method::PUT, None) if special == 0 && !upload => {
                if copy {
                    "CopyObject".into()
                } else {
                    "PutObject".into()
                }
            }
            (Method::POST, None) if has("uploads") && !upload => "CreateMultipartUpload".into(),
            (Method::POST, None) if upload && special == 0 => "CompleteMultipartUpload".into(),
            (Method::POST, None) if has("restore") => "RestoreObject".into(),
            (Method::POST, None) if has("select") => "SelectObjectContent".into(),
            (Method::DELETE, None) if upload && special == 0 => "AbortMultipartUpload".into(),
            (Method::DELETE, None) if special == 0 && !upload => "DeleteObject".into(),
            _ => {
                return Err(format!(
                "{m} on object {key:?} in bucket {bucket:?} is not an S3 operation blastgate knows"
            ))
            }
        }
    };
    let mut resources = Vec::new();
    if !bucket.is_empty() {
        resources.push(if key.is_empty() {
            format!("arn:aws:s3:::{bucket}")
        } else {
            format!("arn:aws:s3:::{bucket}/{key}")
        });
    }
    if copy {
        if let Some(src) = req
            .headers
            .get("x-amz-copy-source")
            .and_then(|v| v.to_str().ok())
        {
            let src = decode(src.trim_start_matches('/'))?;
            resources.push(format!("arn:aws:s3:::{src}"));
        }
    }
    Ok(Operation {
        operation,
        protocol: "rest-xml",
        bucket,
        key,
        resources,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(service: &str, region: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDPLACEHOLDER/20261207/{region}/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
            )
            .parse()
            .unwrap(),
        );
        h
    }

    fn id(
        method: Method,
        host: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Operation, String> {
        identify(
            &Asked {
                method: &method,
                host,
                path,
                query,
                headers,
                body,
            },
            &Endpoint {
                region: "us-east-1",
                services: &[],
            },
        )
    }

    fn s3(method: Method, path: &str, query: &str) -> Result<Operation, String> {
        id(
            method,
            "127.0.0.2",
            path,
            query,
            &signed("s3", "us-east-1"),
            None,
        )
    }

    #[test]
    fn s3_path_style_operations() {
        let cases = [
            (Method::GET, "/", "", "ListBuckets", "", ""),
            (
                Method::GET,
                "/b",
                "list-type=2&prefix=a",
                "ListObjectsV2",
                "b",
                "",
            ),
            (Method::GET, "/b/", "", "ListObjects", "b", ""),
            (Method::PUT, "/b", "", "CreateBucket", "b", ""),
            (Method::DELETE, "/b", "", "DeleteBucket", "b", ""),
            (Method::GET, "/b", "policy", "GetBucketPolicy", "b", ""),
            (Method::PUT, "/b", "policy", "PutBucketPolicy", "b", ""),
            (
                Method::DELETE,
                "/b",
                "lifecycle",
                "DeleteBucketLifecycle",
                "b",
                "",
            ),
            (Method::POST, "/b", "delete", "DeleteObjects", "b", ""),
            (
                Method::GET,
                "/b",
                "uploads",
                "ListMultipartUploads",
                "b",
                "",
            ),
            (Method::GET, "/b", "versions", "ListObjectVersions", "b", ""),
            (Method::HEAD, "/b", "", "HeadBucket", "b", ""),
            (Method::GET, "/b/a/k%20x", "", "GetObject", "b", "a/k x"),
            (Method::HEAD, "/b/k", "", "HeadObject", "b", "k"),
            (Method::PUT, "/b/k", "", "PutObject", "b", "k"),
            (
                Method::POST,
                "/b/k",
                "uploads",
                "CreateMultipartUpload",
                "b",
                "k",
            ),
            (
                Method::PUT,
                "/b/k",
                "partNumber=1&uploadId=u",
                "UploadPart",
                "b",
                "k",
            ),
            (
                Method::POST,
                "/b/k",
                "uploadId=u",
                "CompleteMultipartUpload",
                "b",
                "k",
            ),
            (
                Method::DELETE,
                "/b/k",
                "uploadId=u",
                "AbortMultipartUpload",
                "b",
                "k",
            ),
            (Method::GET, "/b/k", "uploadId=u", "ListParts", "b", "k"),
            (Method::DELETE, "/b/k", "", "DeleteObject", "b", "k"),
            (Method::GET, "/b/k", "tagging", "GetObjectTagging", "b", "k"),
            (Method::PUT, "/b/k", "acl", "PutObjectAcl", "b", "k"),
        ];
        for (m, path, q, op, bucket, key) in cases {
            let o = s3(m.clone(), path, q).unwrap_or_else(|e| panic!("{m} {path}?{q}: {e}"));
            assert_eq!(
                (o.operation.as_str(), o.bucket.as_str(), o.key.as_str()),
                (op, bucket, key),
                "{m} {path}?{q}"
            );
            assert_eq!(o.service, "s3");
            assert_eq!(o.action(), format!("aws:s3:{op}"));
        }
    }

    /// A copy is a read of the source: it is decided as CopyObject with
    /// the source among the resources, never as a PutObject.
    #[test]
    fn s3_copy_source_makes_a_copy() {
        let mut h = signed("s3", "us-east-1");
        h.insert("x-amz-copy-source", "/secret-bucket/k".parse().unwrap());
        let o = id(Method::PUT, "127.0.0.2", "/b/k", "", &h, None).unwrap();
        assert_eq!(o.operation, "CopyObject");
        assert!(o
            .resources
            .contains(&"arn:aws:s3:::secret-bucket/k".to_string()));
    }

    #[test]
    fn s3_virtual_hosted_buckets() {
        let h = signed("s3", "eu-west-1");
        let o = id(
            Method::GET,
            "logs.prod.s3.eu-west-1.amazonaws.com",
            "/2026/a.gz",
            "",
            &h,
            None,
        )
        .unwrap();
        assert_eq!(
            (o.bucket.as_str(), o.key.as_str(), o.region.as_str()),
            ("logs.prod", "2026/a.gz", "eu-west-1")
        );
        let o = id(
            Method::DELETE,
            "b.s3.eu-west-1.amazonaws.com",
            "/",
            "",
            &h,
            None,
        )
        .unwrap();
        assert_eq!(o.operation, "DeleteBucket");
    }

    /// Attack: sub-resources blastgate does not know (or two at once)
    /// could make S3 run another operation than the one decided.
    #[test]
    fn s3_unknown_or_doubled_subresources_are_refused() {
        for (m, path, q) in [
            (Method::GET, "/b", "newfangled"),
            (Method::PUT, "/b", "policy&tagging"),
            (Method::POST, "/b", "delete&uploads"),
            (Method::POST, "/b/k", ""),
            (Method::DELETE, "/b", "delete"),
            (Method::GET, "/b/k", "acl&acl"),
            (Method::PATCH, "/b/k", ""),
            (Method::DELETE, "/", ""),
        ] {
            assert!(s3(m.clone(), path, q).is_err(), "{m} {path}?{q}");
        }
    }

    #[test]
    fn query_protocol_in_body_or_url() {
        let mut h = signed("ec2", "us-east-1");
        h.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        let body = b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-0abc";
        let o = id(Method::POST, "127.0.0.2", "/", "", &h, Some(body)).unwrap();
        assert_eq!(o.action(), "aws:ec2:TerminateInstances");
        assert_eq!(o.resources, vec!["i-0abc".to_string()]);
        let o = id(
            Method::GET,
            "ec2.us-west-2.amazonaws.com",
            "/",
            "Action=DescribeInstances",
            &signed("ec2", "us-west-2"),
            None,
        )
        .unwrap();
        assert_eq!(
            (o.operation.as_str(), o.region.as_str()),
            ("DescribeInstances", "us-west-2")
        );
    }

    /// Attack: two Actions, one where blastgate looks and another where
    /// the server might.
    #[test]
    fn query_protocol_ambiguity_is_refused() {
        let mut h = signed("ec2", "us-east-1");
        h.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let twice = b"Action=DescribeInstances&Action=TerminateInstances";
        assert!(id(Method::POST, "127.0.0.2", "/", "", &h, Some(twice)).is_err());
        let split = b"Action=TerminateInstances";
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=DescribeInstances",
            &h,
            Some(split)
        )
        .is_err());
        // The same in both is one operation.
        let o = id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=DescribeInstances",
            &h,
            Some(b"Action=DescribeInstances"),
        )
        .unwrap();
        assert_eq!(o.operation, "DescribeInstances");
        // A query-protocol Action to a service that does not speak it.
        assert!(id(
            Method::GET,
            "127.0.0.2",
            "/b",
            "Action=DeleteBucket",
            &signed("s3", "us-east-1"),
            None
        )
        .is_err());
    }

    #[test]
    fn json_protocol_target() {
        let mut h = signed("secretsmanager", "us-east-1");
        h.insert(
            "x-amz-target",
            "secretsmanager.GetSecretValue".parse().unwrap(),
        );
        let o = id(
            Method::POST,
            "127.0.0.2",
            "/",
            "",
            &h,
            Some(br#"{"SecretId":"prod/db"}"#),
        )
        .unwrap();
        assert_eq!(o.action(), "aws:secretsmanager:GetSecretValue");
        assert_eq!(o.resources, vec!["prod/db".to_string()]);
        // A target of another service than the one signed for.
        let mut h = signed("ssm", "us-east-1");
        h.insert(
            "x-amz-target",
            "secretsmanager.GetSecretValue".parse().unwrap(),
        );
        assert!(id(Method::POST, "127.0.0.2", "/", "", &h, None).is_err());
        // Unknown prefix, bad operation name, both target and Action.
        let mut h = signed("ssm", "us-east-1");
        h.insert("x-amz-target", "Nope.GetParameter".parse().unwrap());
        assert!(id(Method::POST, "127.0.0.2", "/", "", &h, None).is_err());
        let mut h = signed("ssm", "us-east-1");
        h.insert("x-amz-target", "AmazonSSM.get-parameter".parse().unwrap());
        assert!(id(Method::POST, "127.0.0.2", "/", "", &h, None).is_err());
        let mut h = signed("ssm", "us-east-1");
        h.insert("x-amz-target", "AmazonSSM.GetParameter".parse().unwrap());
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=GetParameter",
            &h,
            None
        )
        .is_err());
    }

    /// Attack: the agent's scope names another service or region than the
    /// AWS endpoint it is sent to; unsigned requests to a custom endpoint
    /// say nothing.
    #[test]
    fn scope_and_endpoint_must_agree() {
        assert!(id(
            Method::GET,
            "ec2.us-east-1.amazonaws.com",
            "/",
            "Action=DescribeInstances",
            &signed("iam", "us-east-1"),
            None
        )
        .is_err());
        assert!(id(
            Method::GET,
            "ec2.us-east-1.amazonaws.com",
            "/",
            "Action=DescribeInstances",
            &signed("ec2", "eu-west-1"),
            None
        )
        .is_err());
        assert!(id(
            Method::GET,
            "127.0.0.2",
            "/",
            "Action=DescribeInstances",
            &HeaderMap::new(),
            None
        )
        .is_err());
        // A custom endpoint limited to some services.
        let r = identify(
            &Asked {
                method: &Method::GET,
                host: "127.0.0.2",
                path: "/",
                query: "Action=GetCallerIdentity",
                headers: &signed("iam", "us-east-1"),
                body: None,
            },
            &Endpoint {
                region: "us-east-1",
                services: &["sts".to_string()],
            },
        );
        assert!(r.is_err());
        // A path none of the service's REST routes has.
        assert!(id(
            Method::GET,
            "127.0.0.2",
            "/2015-03-31/functionz",
            "",
            &signed("lambda", "us-east-1"),
            None
        )
        .is_err());
    }

    fn at(service: &str, method: Method, path: &str, query: &str) -> Result<Operation, String> {
        id(
            method,
            "127.0.0.2",
            path,
            query,
            &signed(service, "us-east-1"),
            None,
        )
    }

    /// REST-JSON and REST-XML services are routed by method and path,
    /// from the models, with the URI labels as resources.
    #[test]
    fn rest_services_are_routed_from_the_models() {
        let cases = [
            (
                "lambda",
                Method::GET,
                "/2015-03-31/functions",
                "",
                "ListFunctions",
            ),
            (
                "lambda",
                Method::DELETE,
                "/2015-03-31/functions/prod-fn",
                "",
                "DeleteFunction",
            ),
            (
                "lambda",
                Method::GET,
                "/2019-09-30/functions/f/provisioned-concurrency",
                "Qualifier=1",
                "GetProvisionedConcurrencyConfig",
            ),
            (
                "lambda",
                Method::GET,
                "/2019-09-30/functions/f/provisioned-concurrency",
                "List=ALL",
                "ListProvisionedConcurrencyConfigs",
            ),
            (
                "route53",
                Method::GET,
                "/2013-04-01/hostedzone",
                "",
                "ListHostedZones",
            ),
            (
                "route53",
                Method::DELETE,
                "/2013-04-01/hostedzone/Z1",
                "",
                "DeleteHostedZone",
            ),
            // API Gateway's v1 and v2 share an endpoint and signing name.
            ("apigateway", Method::GET, "/restapis", "", "GetRestApis"),
            ("apigateway", Method::GET, "/v2/apis", "", "GetApis"),
            (
                "apigateway",
                Method::POST,
                "/restapis",
                "mode=import",
                "ImportRestApi",
            ),
            ("apigateway", Method::POST, "/restapis", "", "CreateRestApi"),
            // SES: the query API and the REST v2 at one endpoint.
            (
                "ses",
                Method::POST,
                "/v2/email/list-identities",
                "",
                "ListEmailIdentities",
            ),
            ("ses", Method::POST, "/", "Action=SendEmail", "SendEmail"),
        ];
        for (svc, m, path, q, want) in cases {
            let o = at(svc, m.clone(), path, q).unwrap_or_else(|e| panic!("{m} {path}?{q}: {e}"));
            assert_eq!(o.action(), format!("aws:{svc}:{want}"), "{m} {path}?{q}");
        }
        let o = at(
            "lambda",
            Method::DELETE,
            "/2015-03-31/functions/prod-fn",
            "",
        )
        .unwrap();
        assert_eq!(
            (o.protocol, o.resources),
            ("rest-json", vec!["prod-fn".to_string()])
        );
        let o = at("route53", Method::DELETE, "/2013-04-01/hostedzone/Z1", "").unwrap();
        assert_eq!(
            (o.protocol, o.resources),
            ("rest-xml", vec!["Z1".to_string()])
        );
        // At an AWS host, the endpoint prefix picks the models.
        let o = id(
            Method::GET,
            "lambda.eu-west-1.amazonaws.com",
            "/2015-03-31/functions",
            "",
            &signed("lambda", "eu-west-1"),
            None,
        )
        .unwrap();
        assert_eq!(
            (o.operation.as_str(), o.region.as_str()),
            ("ListFunctions", "eu-west-1")
        );
        let o = id(
            Method::POST,
            "streams.dynamodb.us-east-1.amazonaws.com",
            "/",
            "",
            &{
                let mut h = signed("dynamodb", "us-east-1");
                h.insert(
                    "x-amz-target",
                    "DynamoDBStreams_20120810.GetRecords".parse().unwrap(),
                );
                h
            },
            None,
        )
        .unwrap();
        assert_eq!(o.action(), "aws:dynamodb:GetRecords");
    }

    /// Attack: an `X-Amz-Target` naming a harmless operation sent to a
    /// REST-JSON service, which routes by path: the DELETE is decided.
    #[test]
    fn a_target_header_does_not_disguise_a_rest_delete() {
        let mut h = signed("lambda", "us-east-1");
        h.insert("x-amz-target", "AWSLambda.ListFunctions".parse().unwrap());
        let o = id(
            Method::DELETE,
            "127.0.0.2",
            "/2015-03-31/functions/prod-fn",
            "",
            &h,
            None,
        )
        .unwrap();
        assert_eq!(o.action(), "aws:lambda:DeleteFunction");
        // Look-alike: the listing it pretends to be.
        let o = id(
            Method::GET,
            "127.0.0.2",
            "/2015-03-31/functions",
            "",
            &h,
            None,
        )
        .unwrap();
        assert_eq!(o.action(), "aws:lambda:ListFunctions");
        // A target of a JSON service, sent to a REST path of no route.
        let mut h = signed("lambda", "us-east-1");
        h.insert(
            "x-amz-target",
            "secretsmanager.GetSecretValue".parse().unwrap(),
        );
        let e = id(Method::POST, "127.0.0.2", "/", "", &h, None).unwrap_err();
        assert!(e.contains("do not read X-Amz-Target"), "{e}");
    }

    /// Attack: `Action=` where the service does not take it, beside what
    /// it does read; and an Action the service's server would read without
    /// regard to case, or does not have.
    #[test]
    fn actions_are_read_only_where_the_server_reads_them() {
        let mut h = signed("secretsmanager", "us-east-1");
        h.insert(
            "x-amz-target",
            "secretsmanager.GetSecretValue".parse().unwrap(),
        );
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=DeleteSecret",
            &h,
            None
        )
        .is_err());
        let o = id(Method::POST, "127.0.0.2", "/", "", &h, None).unwrap();
        assert_eq!(o.operation, "GetSecretValue");
        let e = at(
            "lambda",
            Method::GET,
            "/2015-03-31/functions",
            "Action=DeleteFunction",
        )
        .unwrap_err();
        assert!(e.contains("does not speak the query protocol"), "{e}");
        // SQS's server still takes the query protocol (awsQueryCompatible):
        // Action alone is read; Action and a target that differ are refused.
        let o = at("sqs", Method::POST, "/", "Action=DeleteQueue&QueueUrl=q").unwrap();
        assert_eq!((o.operation.as_str(), o.protocol), ("DeleteQueue", "query"));
        let mut h = signed("sqs", "us-east-1");
        h.insert("x-amz-target", "AmazonSQS.ListQueues".parse().unwrap());
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=DeleteQueue",
            &h,
            None
        )
        .is_err());
        assert!(id(Method::POST, "127.0.0.2", "/", "", &h, None).is_ok());
        // Case: decided as the operation a case-blind server runs.
        let o = at("ec2", Method::GET, "/", "Action=TerminateINSTANCES").unwrap();
        assert_eq!(o.action(), "aws:ec2:TerminateInstances");
        let mut h = signed("secretsmanager", "us-east-1");
        h.insert(
            "x-amz-target",
            "secretsmanager.getSecretValue".parse().unwrap(),
        );
        let o = id(Method::POST, "127.0.0.2", "/", "", &h, None).unwrap();
        assert_eq!(o.action(), "aws:secretsmanager:GetSecretValue");
        // An operation the service does not have is no operation.
        assert!(at("ec2", Method::GET, "/", "Action=DescribeInstancez").is_err());
        assert!(at("ec2", Method::GET, "/", "Action=DescribeInstances").is_ok());
    }

    /// Attack: path spellings the server may route elsewhere, and query
    /// keys that select another operation, beside the plain forms.
    #[test]
    fn rest_path_and_query_tricks_are_refused() {
        for (m, path, q) in [
            (Method::DELETE, "/2015-03-31/functions/x/../prod", ""),
            (
                Method::DELETE,
                "/2015-03-31/functions/%2e%2e/functions/prod",
                "",
            ),
            (Method::GET, "/2015-03-31/functions/a%2Fpolicy", ""),
            (Method::GET, "/2015-03-31/functions/a\\policy", ""),
            (Method::DELETE, "/2015-03-31//functions/prod", ""),
            (Method::DELETE, "/2015-03-31/Functions/prod", ""),
            (Method::DELETE, "/2015-03-31/functions/prod/", ""),
            (
                Method::GET,
                "/2019-09-30/functions/f/provisioned-concurrency",
                "List=all",
            ),
        ] {
            let r = at("lambda", m.clone(), path, q);
            assert!(r.is_err(), "{m} {path}?{q}: {r:?}");
        }
        assert!(at("route53", Method::DELETE, "/2013-04-01/HostedZone/Z1", "").is_err());
        // A trailing slash that makes another operation of the same
        // path to a server dropping it (the model's own near-ambiguity).
        assert!(at("mpa", Method::POST, "/approval-teams/", "List").is_err());
        let o = at("mpa", Method::POST, "/approval-teams", "").unwrap();
        assert_eq!(o.operation, "CreateApprovalTeam");
        // `//` inside a greedy label: the portal's deletion as sent, a
        // session's expiry to a server collapsing the slashes.
        assert!(at(
            "workspaces-web",
            Method::DELETE,
            "/portals/p/sessions//s",
            ""
        )
        .is_err());
        for (path, want) in [
            ("/portals/p/sessions/s", "ExpireSession"),
            ("/portals/arn%3Ax/p", "DeletePortal"),
        ] {
            let o = at("workspaces-web", Method::DELETE, path, "").unwrap();
            assert_eq!(o.operation, want, "{path}");
        }
        // Case: `LIST` is a rule id as sent, but a case-blind server
        // would run the listing; the plain spellings route.
        assert!(at("securityhub", Method::GET, "/automationrulesv2/LIST", "").is_err());
        for (path, want) in [
            ("/automationrulesv2/list", "ListAutomationRulesV2"),
            ("/automationrulesv2/rule-1", "GetAutomationRuleV2"),
        ] {
            let o = at("securityhub", Method::GET, path, "").unwrap();
            assert_eq!(o.operation, want, "{path}");
        }
        // An ARN with a slash in a label, encoded as the SDK does, where
        // no other route could take it.
        let o = at(
            "lambda",
            Method::GET,
            "/2017-03-31/tags/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Af",
            "",
        )
        .unwrap();
        assert_eq!(o.operation, "ListTags");
    }

    #[test]
    fn presigned_scope_is_read_from_the_query() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261207%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Signature=00";
        let s = scope(&HeaderMap::new(), q).unwrap();
        assert_eq!((s.region.as_str(), s.service.as_str()), ("eu-west-1", "s3"));
        let o = id(Method::GET, "127.0.0.2", "/b/k", q, &HeaderMap::new(), None).unwrap();
        assert_eq!(
            (o.operation.as_str(), o.region.as_str()),
            ("GetObject", "eu-west-1")
        );
    }
}

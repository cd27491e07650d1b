//! Which AWS operation a request is, read the way AWS routes it: the
//! service from the endpoint's host (or, at an endpoint that serves many,
//! the signing scope the agent's SDK chose, which blastgate re-signs with
//! and so is what the server routes on), the operation from
//! `X-Amz-Target` (JSON protocols), `Action=` (query protocols) or the
//! method, path and sub-resources (S3's REST-XML). What cannot be
//! attributed to exactly one operation is refused, never guessed.

use std::collections::BTreeMap;

use http::{HeaderMap, Method};

/// One identified request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Operation {
    /// The signing name (`s3`, `ec2`, `sts`, `secretsmanager`).
    pub service: String,
    /// The API's operation name (`ListBuckets`, `TerminateInstances`).
    pub operation: String,
    pub region: String,
    /// `json`, `query` or `rest`.
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

/// Where an `*.amazonaws.com` host points: service, region, and for S3
/// the bucket of a virtual-hosted name.
#[derive(Debug, PartialEq, Eq)]
struct HostFacts {
    service: String,
    region: Option<String>,
    bucket: Option<String>,
}

fn host_facts(host: &str) -> Option<HostFacts> {
    let base = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = base.split('.').collect();
    // S3: `bucket.s3.region`, `s3.region`, `s3`, `s3-region`,
    // `bucket.s3-region`, `s3.dualstack.region`.
    if let Some(i) = labels
        .iter()
        .position(|l| *l == "s3" || l.starts_with("s3-"))
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
            service: "s3".into(),
            region,
            bucket,
        });
    }
    match labels.as_slice() {
        [service] => Some(HostFacts {
            service: service.to_string(),
            region: None,
            bucket: None,
        }),
        [service, region] => Some(HostFacts {
            service: service.to_string(),
            region: Some(region.to_string()),
            bucket: None,
        }),
        _ => None,
    }
}

/// Host names that differ from their service's signing name.
fn signing_name(host_service: &str) -> &str {
    match host_service {
        "email" => "ses",
        "monitoring" => "monitoring",
        "runtime.lex" => "lex",
        other => other,
    }
}

/// JSON-protocol `X-Amz-Target` prefixes and the service each belongs to.
const TARGET_PREFIXES: &[(&str, &str)] = &[
    ("secretsmanager", "secretsmanager"),
    ("AmazonSSM", "ssm"),
    ("DynamoDB_20120810", "dynamodb"),
    ("DynamoDBStreams_20120810", "dynamodb"),
    ("Logs_20140328", "logs"),
    ("TrentService", "kms"),
    ("AmazonEC2ContainerRegistry_V20150921", "ecr"),
    ("AmazonEC2ContainerServiceV20141113", "ecs"),
    ("Kinesis_20131202", "kinesis"),
    ("AmazonSQS", "sqs"),
    ("AWSEvents", "events"),
    ("AWSStepFunctions", "states"),
    ("CertificateManager", "acm"),
    ("CodeBuild_20161006", "codebuild"),
    ("AWSCognitoIdentityProviderService", "cognito-idp"),
    ("AWSOrganizationsV20161128", "organizations"),
    ("AWSSecurityTokenServiceV20110615", "sts"),
    ("GraniteServiceVersion20100801", "monitoring"),
];

/// Services that speak the query protocol (`Action=` in the form body or
/// the URL).
const QUERY_SERVICES: &[&str] = &[
    "sts",
    "ec2",
    "iam",
    "sns",
    "sqs",
    "cloudformation",
    "rds",
    "elasticache",
    "autoscaling",
    "elasticloadbalancing",
    "monitoring",
    "ses",
    "redshift",
    "elasticbeanstalk",
];

fn is_operation_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Identifies the request, or says why it cannot be.
pub fn identify(req: &Asked<'_>, endpoint: &Endpoint<'_>) -> Result<Operation, String> {
    let scope = scope(req.headers, req.query);
    let facts = host_facts(req.host);
    let service = match (&facts, &scope) {
        (Some(f), Some(s)) => {
            let by_host = signing_name(&f.service);
            if s.service != by_host {
                return Err(format!(
                    "the request is signed for service {:?} but sent to {:?}, an endpoint of {by_host:?}",
                    s.service, req.host
                ));
            }
            by_host.to_string()
        }
        (Some(f), None) => signing_name(&f.service).to_string(),
        (None, Some(s)) => {
            if !endpoint.services.is_empty() && !endpoint.services.contains(&s.service) {
                return Err(format!(
                    "service {:?} is not served at this endpoint (services: {})",
                    s.service,
                    endpoint.services.join(", ")
                ));
            }
            s.service.clone()
        }
        (None, None) => {
            return Err(
                "the request carries no SigV4 credential scope and its host names no AWS service"
                    .into(),
            )
        }
    };
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
    if region != "*"
        && !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{region:?} is not an AWS region name"));
    }
    let target = single_header(req.headers, "x-amz-target")?;
    let action = query_action(req)?;
    let mut op = match (target, action) {
        (Some(_), Some(_)) => {
            return Err("the request names an operation both in X-Amz-Target and Action=".into())
        }
        (Some(t), None) => json_operation(&service, &t, req.body)?,
        (None, Some(a)) if QUERY_SERVICES.contains(&service.as_str()) => Operation {
            operation: a,
            protocol: "query",
            resources: query_resources(req),
            ..Default::default()
        },
        (None, Some(a)) => {
            return Err(format!(
                "Action={a} names an operation, but {service} does not speak the query protocol"
            ))
        }
        (None, None) if service == "s3" => {
            let bucket = facts.as_ref().and_then(|f| f.bucket.clone());
            s3_operation(req, bucket)?
        }
        (None, None) => {
            return Err(format!(
                "blastgate cannot tell which {service} operation {} {} is",
                req.method, req.path
            ))
        }
    };
    if !is_operation_name(&op.operation) {
        return Err(format!("{:?} is not an operation name", op.operation));
    }
    op.service = service;
    op.region = region;
    Ok(op)
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

/// A JSON-protocol operation from `X-Amz-Target: Prefix.Operation`.
fn json_operation(service: &str, target: &str, body: Option<&[u8]>) -> Result<Operation, String> {
    let (prefix, operation) = target
        .rsplit_once('.')
        .ok_or_else(|| format!("X-Amz-Target {target:?} is not Service.Operation"))?;
    let Some((_, owner)) = TARGET_PREFIXES.iter().find(|(p, _)| *p == prefix) else {
        return Err(format!(
            "X-Amz-Target prefix {prefix:?} is not one blastgate knows"
        ));
    };
    if *owner != service {
        return Err(format!(
            "X-Amz-Target {target:?} belongs to {owner}, but the request is for {service}"
        ));
    }
    let mut resources = Vec::new();
    if let Some(doc) = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok()) {
        if let Some(map) = doc.as_object() {
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
                    serde_json::Value::Array(items) => resources
                        .extend(items.iter().filter_map(|i| i.as_str().map(str::to_string))),
                    _ => {}
                }
            }
        }
    }
    Ok(Operation {
        operation: operation.to_string(),
        protocol: "json",
        resources,
        ..Default::default()
    })
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

fn percent_decode(s: &str) -> Option<String> {
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
        protocol: "rest",
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
        // A service REST API blastgate has no table for.
        assert!(id(
            Method::GET,
            "127.0.0.2",
            "/2015-03-31/functions",
            "",
            &signed("lambda", "us-east-1"),
            None
        )
        .is_err());
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

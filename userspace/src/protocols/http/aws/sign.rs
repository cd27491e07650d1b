//! Re-signing: the agent's SigV4 signature (made with a placeholder key)
//! is thrown away and the request signed again, for the service and region
//! blastgate decided, with the credential blastgate holds. The payload
//! hash mode the agent's SDK chose is kept, since the body on the wire is
//! framed for it (aws-chunked with a trailer, or plain). So is the
//! algorithm: SigV4a (ECDSA P-256, for a region set) is re-signed as
//! SigV4a, SigV4 as SigV4. Signed streaming chunks are re-signed in
//! [`super::chunks`], chained from the seed signature [`resign`] returns.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SignatureLocation, SigningParams, SigningSettings, UriPathNormalizationMode,
    },
    sign::{v4, v4a},
};
use http::HeaderMap;

/// The credential requests are signed with.
#[derive(Clone)]
pub struct Held {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// How the payload is covered by the signature, from the agent's
/// `x-amz-content-sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// No header: the body's hash is computed from the bytes (read whole).
    Hashed,
    /// `UNSIGNED-PAYLOAD`: S3 over HTTPS.
    Unsigned,
    /// A hex SHA-256 the agent computed: the server checks it against the
    /// body, so it is carried as it is.
    Precomputed(String),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked with a checksum
    /// trailer, unsigned chunks (botocore's uploads over HTTPS).
    StreamingUnsignedTrailer,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: aws-chunked with
    /// every chunk (and the trailer) signed, chained from the seed.
    StreamingSigned { trailer: bool },
}

impl Payload {
    /// The `x-amz-content-sha256` value of a streaming mode.
    fn streaming_mode(&self) -> Option<&'static str> {
        match self {
            Payload::StreamingSigned { trailer: false } => Some(STREAMING_SIGNED),
            Payload::StreamingSigned { trailer: true } => Some(STREAMING_SIGNED_TRAILER),
            _ => None,
        }
    }
}

const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";

/// How the agent's request was signed, so that blastgate signs the same
/// way: `AWS4-HMAC-SHA256` or SigV4a's `AWS4-ECDSA-P256-SHA256` for a
/// region set (`us-east-1,us-west-2`, or `*`: any region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    V4,
    V4a { region_set: String },
}

/// SigV4a's algorithm name, in `Authorization` and `X-Amz-Algorithm`.
pub const SIGV4A: &str = "AWS4-ECDSA-P256-SHA256";

/// Headers the agent's signing set, replaced by blastgate's.
pub const SIGNING_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "x-amz-region-set",
];

/// Query parameters of a presigned URL, replaced by blastgate's.
const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-Region-Set",
];

/// The payload mode of the agent's request, or why it cannot be re-signed.
pub fn payload(headers: &HeaderMap) -> Result<Payload, String> {
    let Some(v) = headers.get("x-amz-content-sha256") else {
        return Ok(Payload::Hashed);
    };
    let v = v
        .to_str()
        .map_err(|_| "x-amz-content-sha256 is not text".to_string())?;
    match v {
        "UNSIGNED-PAYLOAD" => Ok(Payload::Unsigned),
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Ok(Payload::StreamingUnsignedTrailer),
        STREAMING_SIGNED => Ok(Payload::StreamingSigned { trailer: false }),
        STREAMING_SIGNED_TRAILER => Ok(Payload::StreamingSigned { trailer: true }),
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Payload::Precomputed(h.to_ascii_lowercase()))
        }
        s if s.starts_with("STREAMING-AWS4-ECDSA-P256-SHA256") => Err(format!(
            "x-amz-content-sha256 {s}: SigV4a-signed streaming chunks are not re-signed by \
             blastgate; sign the upload with SigV4, or send it with unsigned chunks over HTTPS \
             (the AWS CLI and boto3 default)"
        )),
        s if s.starts_with("STREAMING-") => Err(format!(
            "x-amz-content-sha256 {s} is not a streaming mode blastgate knows"
        )),
        other => Err(format!(
            "x-amz-content-sha256 {other:?} is not a payload hash mode"
        )),
    }
}

/// The SigV4a region set the agent signed for: `X-Amz-Region-Set`, as a
/// header or a presigned URL's parameter.
pub fn region_set(headers: &HeaderMap, query: &str) -> Option<String> {
    let header = headers
        .get("x-amz-region-set")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    header.or_else(|| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "X-Amz-Region-Set")
            .map(|(_, v)| v.into_owned())
    })
}

/// The region policy sees for a region set: the region itself when the
/// set is one region, `*` when the request may execute in more than one
/// (a wildcard, or a list); None when the set is not region names.
pub fn set_region(set: &str) -> Option<String> {
    let regions: Vec<&str> = set.split(',').map(str::trim).collect();
    let valid = regions.iter().all(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '*')
    });
    if !valid {
        return None;
    }
    match regions.as_slice() {
        [one] if !one.contains('*') => Some(one.to_string()),
        _ => Some("*".into()),
    }
}

/// The algorithm the agent signed with: SigV4a (`AWS4-ECDSA-P256-SHA256`
/// in `Authorization` or `X-Amz-Algorithm`, with its region set) or SigV4.
pub fn algorithm(headers: &HeaderMap, query: &str) -> Result<Algorithm, String> {
    let in_header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(SIGV4A));
    let in_query = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "X-Amz-Algorithm" && v == SIGV4A);
    // AWS takes one signature per request ("Only one auth mechanism
    // allowed"); blastgate signs one, so which the agent meant must not
    // be a guess.
    let header_signed = headers.contains_key(http::header::AUTHORIZATION);
    let query_signed =
        form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "X-Amz-Algorithm");
    if header_signed && query_signed {
        return Err(
            "the request is signed both in its Authorization header and in its query".into(),
        );
    }
    if !in_header && !in_query {
        return Ok(Algorithm::V4);
    }
    let set = region_set(headers, query)
        .ok_or("a SigV4a request without X-Amz-Region-Set cannot be re-signed")?;
    if set_region(&set).is_none() {
        return Err(format!(
            "X-Amz-Region-Set {set:?} is not a list of region names"
        ));
    }
    let set: Vec<&str> = set.split(',').map(str::trim).collect();
    Ok(Algorithm::V4a {
        region_set: set.join(","),
    })
}

/// Whether the request is a presigned URL (signature in the query).
pub fn presigned(query: &str) -> bool {
    form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "X-Amz-Signature")
}

/// The query without the presigning parameters, and the expiry asked for.
pub fn unpresigned(query: &str) -> (String, Option<Duration>) {
    let mut expires = None;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "X-Amz-Expires" {
            expires = v.parse::<u64>().ok().map(Duration::from_secs);
        }
        if !PRESIGN_PARAMS.contains(&k.as_ref()) {
            out.append_pair(&k, &v);
        }
    }
    (out.finish(), expires)
}

/// Longest validity SigV4 allows a presigned URL.
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// What [`resign`] signs for.
pub struct For<'a> {
    pub service: &'a str,
    pub region: &'a str,
    pub held: &'a Held,
    pub payload: &'a Payload,
    /// The whole body, for [`Payload::Hashed`].
    pub body: Option<&'a [u8]>,
    /// Presigned: the signature goes in the query, valid this long.
    pub presign: Option<Duration>,
    pub algorithm: &'a Algorithm,
    /// The signing time (now, except in known-answer tests).
    pub time: SystemTime,
}

/// Signs `req` (absolute URI to the upstream, the agent's signing headers
/// already removed) in place; gives back the signature, the seed a signed
/// chunk stream chains from.
pub fn resign<B>(req: &mut http::Request<B>, f: &For<'_>) -> Result<String, String> {
    let identity = Credentials::new(
        f.held.access_key_id.clone(),
        f.held.secret_access_key.clone(),
        f.held.session_token.clone(),
        None,
        "blastgate",
    )
    .into();
    let mut settings = SigningSettings::default();
    if f.service == "s3" {
        // S3 signs the path as sent, and wants the payload hash header.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    if let Some(valid) = f.presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(valid.min(MAX_PRESIGN));
    } else if f.service == "s3" || *f.payload != Payload::Hashed {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    settings
        .excluded_headers
        .get_or_insert_with(Vec::new)
        .push("expect".into());
    let params: SigningParams<'_> = match f.algorithm {
        Algorithm::V4 => v4::SigningParams::builder()
            .identity(&identity)
            .region(f.region)
            .name(f.service)
            .time(f.time)
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into(),
        Algorithm::V4a { region_set } => {
            if f.payload.streaming_mode().is_some() {
                return Err("SigV4a-signed streaming chunks are not re-signed by blastgate".into());
            }
            SigningParams::V4a(
                v4a::SigningParams::builder()
                    .identity(&identity)
                    .region_set(region_set)
                    .name(f.service)
                    .time(f.time)
                    .settings(settings)
                    .build()
                    .map_err(|e| format!("SigV4a signing parameters: {e}"))?,
            )
        }
    };
    let body = match (f.payload, f.body) {
        _ if f.presign.is_some() => SignableBody::UnsignedPayload,
        (Payload::Hashed, Some(b)) => SignableBody::Bytes(b),
        (Payload::Hashed, None) => {
            return Err("the request body must be read to be signed".into());
        }
        (Payload::Unsigned, _) => SignableBody::UnsignedPayload,
        (Payload::Precomputed(h), _) => SignableBody::Precomputed(h.clone()),
        (Payload::StreamingUnsignedTrailer, _) => SignableBody::StreamingUnsignedPayloadTrailer,
        (p @ Payload::StreamingSigned { .. }, _) => {
            SignableBody::Precomputed(p.streaming_mode().unwrap_or_default().to_string())
        }
    };
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            v.to_str()
                .map(|v| (k.as_str(), v))
                .map_err(|_| format!("header {k} is not text and cannot be signed"))
        })
        .collect::<Result<_, _>>()?;
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri.as_str(),
        headers.into_iter(),
        body,
    )
    .map_err(|e| format!("signing: {e}"))?;
    let (instructions, signature) = sign(signable, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_modes() {
        let mut h = HeaderMap::new();
        assert_eq!(payload(&h), Ok(Payload::Hashed));
        h.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert_eq!(payload(&h), Ok(Payload::Unsigned));
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER".parse().unwrap(),
        );
        assert_eq!(payload(&h), Ok(Payload::StreamingUnsignedTrailer));
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".parse().unwrap(),
        );
        assert_eq!(payload(&h), Ok(Payload::StreamingSigned { trailer: false }));
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
                .parse()
                .unwrap(),
        );
        assert_eq!(payload(&h), Ok(Payload::StreamingSigned { trailer: true }));
        // SigV4a-signed chunks stay refused, with the reason.
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD".parse().unwrap(),
        );
        assert!(payload(&h).unwrap_err().contains("SigV4a-signed streaming"));
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-AWS4-HMAC-SHA256-EVENTS".parse().unwrap(),
        );
        assert!(payload(&h).unwrap_err().contains("not a streaming mode"));
        h.insert("x-amz-content-sha256", "nope".parse().unwrap());
        assert!(payload(&h).is_err());
    }

    #[test]
    fn presigned_parameters_are_replaced() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2Fx&X-Amz-Expires=300&versionId=3&X-Amz-Signature=ab";
        assert!(presigned(q));
        let (rest, exp) = unpresigned(q);
        assert_eq!(rest, "versionId=3");
        assert_eq!(exp, Some(Duration::from_secs(300)));
    }

    /// The signature is computed with the held key, for the decided
    /// service and region; the placeholder appears nowhere.
    #[test]
    fn signs_with_the_held_key() {
        let held = Held {
            access_key_id: "AKIAHELDHELDHELD".into(),
            secret_access_key: "heldsecret".into(),
            session_token: Some("TOKEN".into()),
        };
        let mut req = http::Request::builder()
            .method("GET")
            .uri("https://127.0.0.2:4566/b/k")
            .header("x-amz-user-agent", "x")
            .body(())
            .unwrap();
        resign(
            &mut req,
            &For {
                service: "s3",
                region: "eu-west-1",
                held: &held,
                payload: &Payload::Unsigned,
                body: None,
                presign: None,
                algorithm: &Algorithm::V4,
                time: SystemTime::now(),
            },
        )
        .unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.contains("Credential=AKIAHELDHELDHELD/"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
        assert_eq!(req.headers()["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert_eq!(req.headers()["x-amz-security-token"], "TOKEN");
    }

    /// SigV4a: the agent's region set is carried, the signature is ECDSA
    /// P-256 with the key derived from the held secret, and it verifies
    /// with that key's public half over a canonical request built here
    /// from the signed headers (not by aws-sigv4): an independent check.
    #[test]
    fn sigv4a_signature_verifies_with_the_held_keys_public_key() {
        use p256::ecdsa::{signature::Verifier, Signature, SigningKey};
        use sha2::{Digest, Sha256};
        let held = Held {
            access_key_id: "AKIAHELDHELDHELD".into(),
            secret_access_key: "heldsecret".into(),
            session_token: None,
        };
        let mut agent = HeaderMap::new();
        agent.insert(
            http::header::AUTHORIZATION,
            "AWS4-ECDSA-P256-SHA256 Credential=AKIABLASTGATEAGENT000/20261207/s3/aws4_request, SignedHeaders=host;x-amz-date;x-amz-region-set, Signature=3045"
                .parse()
                .unwrap(),
        );
        agent.insert("x-amz-region-set", "us-east-1, us-west-2".parse().unwrap());
        let algorithm = algorithm(&agent, "").unwrap();
        assert_eq!(
            algorithm,
            Algorithm::V4a {
                region_set: "us-east-1,us-west-2".into()
            }
        );
        let time = std::time::UNIX_EPOCH + Duration::from_secs(1_796_601_600);
        let mut req = http::Request::builder()
            .method("GET")
            .uri("https://mrap.accesspoint.s3-global.amazonaws.com/k%20y")
            .body(())
            .unwrap();
        let signature = resign(
            &mut req,
            &For {
                service: "s3",
                region: "*",
                held: &held,
                payload: &Payload::Unsigned,
                body: None,
                presign: None,
                algorithm: &algorithm,
                time,
            },
        )
        .unwrap();
        let h = |n: &str| req.headers()[n].to_str().unwrap().to_string();
        let auth = h("authorization");
        assert!(
            auth.starts_with(
                "AWS4-ECDSA-P256-SHA256 Credential=AKIAHELDHELDHELD/20261207/s3/aws4_request, "
            ),
            "{auth}"
        );
        assert_eq!(h("x-amz-region-set"), "us-east-1,us-west-2");
        let signed = auth
            .split(", ")
            .find_map(|p| p.strip_prefix("SignedHeaders="))
            .unwrap();
        let canonical_headers: String = signed
            .split(';')
            .map(|n| {
                let v = if n == "host" {
                    "mrap.accesspoint.s3-global.amazonaws.com".to_string()
                } else {
                    h(n)
                };
                format!("{n}:{v}\n")
            })
            .collect();
        let canonical = format!("GET\n/k%20y\n\n{canonical_headers}\n{signed}\nUNSIGNED-PAYLOAD");
        let to_sign = |region_set_in_creq: &str| {
            let creq = canonical.replace("us-east-1,us-west-2", region_set_in_creq);
            format!(
                "AWS4-ECDSA-P256-SHA256\n{}\n20261207/s3/aws4_request\n{}",
                h("x-amz-date"),
                Sha256::digest(creq.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        let secret = v4a::generate_signing_key(&held.access_key_id, &held.secret_access_key);
        let key = SigningKey::from_slice(secret.as_ref()).unwrap();
        let der: Vec<u8> = (0..signature.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&signature[i..i + 2], 16).unwrap())
            .collect();
        let sig = Signature::from_der(&der).unwrap();
        assert!(auth.ends_with(&format!("Signature={signature}")));
        key.verifying_key()
            .verify(to_sign("us-east-1,us-west-2").as_bytes(), &sig)
            .expect("the SigV4a signature verifies with the held key's public key");
        // The region set is covered: the same signature for another set fails.
        assert!(key
            .verifying_key()
            .verify(to_sign("*").as_bytes(), &sig)
            .is_err());
        // And the placeholder key's public key does not verify it.
        let other = v4a::generate_signing_key(PLACEHOLDER, "blastgate-placeholder-not-a-secret");
        let other = SigningKey::from_slice(other.as_ref()).unwrap();
        assert!(other
            .verifying_key()
            .verify(to_sign("us-east-1,us-west-2").as_bytes(), &sig)
            .is_err());
    }

    const PLACEHOLDER: &str = "AKIABLASTGATEAGENT000";

    /// A SigV4a scope names no region: policy gets the set's ("*" for a
    /// wildcard or several regions), the service from the scope.
    #[test]
    fn sigv4a_scope_takes_its_region_from_the_set() {
        use super::super::operation::scope;
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "AWS4-ECDSA-P256-SHA256 Credential=AKID/20261207/s3/aws4_request, SignedHeaders=host, Signature=30"
                .parse()
                .unwrap(),
        );
        assert_eq!(scope(&h, ""), None, "no region set: no scope");
        h.insert("x-amz-region-set", "*".parse().unwrap());
        let s = scope(&h, "").unwrap();
        assert_eq!((s.region.as_str(), s.service.as_str()), ("*", "s3"));
        h.insert("x-amz-region-set", "eu-west-1".parse().unwrap());
        assert_eq!(scope(&h, "").unwrap().region, "eu-west-1");
        let q = "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256&X-Amz-Credential=AKID%2F20261207%2Fs3%2Faws4_request&X-Amz-Region-Set=us-east-1%2Cus-west-2&X-Amz-Signature=30";
        assert_eq!(scope(&HeaderMap::new(), q).unwrap().region, "*");
        assert!(presigned(q));
        assert_eq!(unpresigned(q).0, "");
    }

    #[test]
    fn region_sets() {
        assert_eq!(set_region("us-east-1").as_deref(), Some("us-east-1"));
        assert_eq!(set_region("*").as_deref(), Some("*"));
        assert_eq!(set_region("us-*").as_deref(), Some("*"));
        assert_eq!(set_region("us-east-1,eu-west-1").as_deref(), Some("*"));
        assert_eq!(set_region("us-east-1,"), None);
        assert_eq!(set_region("US-EAST-1"), None);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "AWS4-ECDSA-P256-SHA256 Credential=A/20261207/s3/aws4_request"
                .parse()
                .unwrap(),
        );
        assert!(algorithm(&h, "").unwrap_err().contains("X-Amz-Region-Set"));
        assert_eq!(
            algorithm(
                &HeaderMap::new(),
                "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256&X-Amz-Region-Set=%2A"
            ),
            Ok(Algorithm::V4a {
                region_set: "*".into()
            })
        );
        assert_eq!(
            algorithm(&HeaderMap::new(), "X-Amz-Algorithm=AWS4-HMAC-SHA256"),
            Ok(Algorithm::V4)
        );
    }
}

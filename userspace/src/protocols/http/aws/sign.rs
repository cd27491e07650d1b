//! Re-signing: the agent's SigV4 signature (made with a placeholder key)
//! is thrown away and the request signed again, for the service and region
//! blastgate decided, with the credential blastgate holds. The payload
//! hash mode the agent's SDK chose is kept, since the body on the wire is
//! framed for it (aws-chunked with a trailer, or plain).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SignatureLocation, SigningSettings, UriPathNormalizationMode,
    },
    sign::v4,
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
}

/// Headers the agent's signing set, replaced by blastgate's.
pub const SIGNING_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
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
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Payload::Precomputed(h.to_ascii_lowercase()))
        }
        s if s.starts_with("STREAMING-") => Err(format!(
            "x-amz-content-sha256 {s}: signed streaming chunks are not re-signed by blastgate; \
             send the upload over HTTPS with unsigned chunks (the AWS CLI and boto3 default)"
        )),
        other => Err(format!(
            "x-amz-content-sha256 {other:?} is not a payload hash mode"
        )),
    }
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
}

/// Signs `req` (absolute URI to the upstream, the agent's signing headers
/// already removed) in place.
pub fn resign<B>(req: &mut http::Request<B>, f: &For<'_>) -> Result<(), String> {
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
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(f.region)
        .name(f.service)
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    let body = match (f.payload, f.body) {
        _ if f.presign.is_some() => SignableBody::UnsignedPayload,
        (Payload::Hashed, Some(b)) => SignableBody::Bytes(b),
        (Payload::Hashed, None) => {
            return Err("the request body must be read to be signed".into());
        }
        (Payload::Unsigned, _) => SignableBody::UnsignedPayload,
        (Payload::Precomputed(h), _) => SignableBody::Precomputed(h.clone()),
        (Payload::StreamingUnsignedTrailer, _) => SignableBody::StreamingUnsignedPayloadTrailer,
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
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
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
        assert!(payload(&h).unwrap_err().contains("signed streaming"));
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
            },
        )
        .unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.contains("Credential=AKIAHELDHELDHELD/"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
        assert_eq!(req.headers()["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        assert_eq!(req.headers()["x-amz-security-token"], "TOKEN");
    }
}

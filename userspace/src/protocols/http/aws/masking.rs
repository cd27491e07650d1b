//! Secrets AWS hands back in answers, masked by default: Secrets Manager
//! `SecretString`/`SecretBinary`, SSM `SecureString` parameter values
//! (decrypted with `WithDecryption`), and the secret halves of any
//! `Credentials` block (STS `AssumeRole`, `GetSessionToken`, IAM
//! `CreateAccessKey`, Cognito). Read whole (small API answers); S3 object
//! bodies are never read here.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::operation::Operation;
use crate::protocols::http::upstream::Body;

/// What a masked value becomes.
pub const MASK: &str = "****";

/// JSON keys whose values are secret wherever they appear.
const SECRET_KEYS: &[&str] = &[
    "SecretString",
    "SecretBinary",
    "SecretAccessKey",
    "SessionToken",
];

/// XML elements whose text is secret wherever they appear.
const SECRET_ELEMENTS: &[&str] = &["SecretAccessKey", "SessionToken", "SecretString"];

/// Whether the answer to `op` is read for secrets: every API answer but
/// S3's (object bodies are the data itself, and S3 returns no credentials).
pub fn reads(op: &Operation) -> bool {
    op.service != "s3"
}

/// The answer with its secrets masked, and how many were.
pub async fn masked(
    response: Response<Body>,
    _op: &Operation,
    limit: usize,
) -> Result<(Response<Body>, u64), String> {
    let (mut parts, body) = response.into_parts();
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| !c.eq_ignore_ascii_case("identity"))
    {
        return Err(
            "the AWS answer is compressed and cannot be checked for secrets: refused".into(),
        );
    }
    let mut raw = bytes::BytesMut::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the AWS answer: {e}"))?;
        if let Some(d) = frame.data_ref() {
            raw.extend_from_slice(d);
            if raw.len() > limit {
                return Err(format!(
                    "the AWS answer is over max_inspect_bytes ({limit}) and cannot be checked for secrets: refused"
                ));
            }
        }
    }
    let (out, n) = mask_bytes(&raw);
    if n > 0 {
        for h in ["etag", "content-md5", "x-amz-crc32"] {
            parts.headers.remove(h);
        }
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    let body = Full::new(Bytes::from(out))
        .map_err(|never| match never {})
        .boxed();
    Ok((Response::from_parts(parts, body), n))
}

/// Masks a JSON or XML answer; anything else as it is.
pub fn mask_bytes(raw: &[u8]) -> (Vec<u8>, u64) {
    if let Ok(mut doc) = serde_json::from_slice::<Value>(raw) {
        let n = mask_json(&mut doc);
        if n == 0 {
            return (raw.to_vec(), 0);
        }
        return (serde_json::to_vec(&doc).unwrap_or_default(), n);
    }
    match std::str::from_utf8(raw) {
        Ok(text) => {
            let (out, n) = mask_xml(text);
            (out.into_bytes(), n)
        }
        Err(_) => (raw.to_vec(), 0),
    }
}

fn mask_json(v: &mut Value) -> u64 {
    match v {
        Value::Object(map) => {
            let secure = map
                .get("Type")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "SecureString");
            let mut n = 0;
            for (k, child) in map.iter_mut() {
                let secret = SECRET_KEYS.contains(&k.as_str()) || (secure && k == "Value");
                if secret && !child.is_null() {
                    *child = Value::String(MASK.into());
                    n += 1;
                } else {
                    n += mask_json(child);
                }
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(mask_json).sum(),
        _ => 0,
    }
}

fn mask_xml(text: &str) -> (String, u64) {
    let mut out = text.to_string();
    let mut n = 0;
    for el in SECRET_ELEMENTS {
        let open = format!("<{el}>");
        let close = format!("</{el}>");
        let mut from = 0;
        while let Some(start) = out[from..].find(&open).map(|i| from + i + open.len()) {
            let Some(end) = out[start..].find(&close).map(|i| start + i) else {
                break;
            };
            out.replace_range(start..end, MASK);
            n += 1;
            from = start + MASK.len() + close.len();
        }
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_manager_and_ssm_values_are_masked() {
        let (out, n) =
            mask_bytes(br#"{"ARN":"arn:x","Name":"db","SecretString":"hunter2","VersionId":"v"}"#);
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (doc["SecretString"].as_str(), doc["Name"].as_str(), n),
            (Some(MASK), Some("db"), 1)
        );
        let (out, n) = mask_bytes(
            br#"{"Parameters":[{"Name":"a","Type":"SecureString","Value":"s3cret"},{"Name":"b","Type":"String","Value":"plain"}]}"#,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("s3cret") && text.contains("plain") && n == 1,
            "{text}"
        );
    }

    #[test]
    fn credentials_blocks_are_masked_in_json_and_xml() {
        let xml =
            "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIAX</AccessKeyId>\
                   <SecretAccessKey>topsecret</SecretAccessKey><SessionToken>tok</SessionToken>\
                   </Credentials></AssumeRoleResult></AssumeRoleResponse>";
        let (out, n) = mask_bytes(xml.as_bytes());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(n, 2);
        assert!(
            !text.contains("topsecret") && !text.contains(">tok<") && text.contains("ASIAX"),
            "{text}"
        );
        let (out, _) = mask_bytes(br#"{"Credentials":{"AccessKeyId":"ASIAX","SecretAccessKey":"topsecret","SessionToken":"tok"}}"#);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("topsecret") && !text.contains("\"tok\""),
            "{text}"
        );
        // Nothing to mask: the bytes as they came.
        let (out, n) = mask_bytes(b"<DescribeInstancesResponse/>");
        assert_eq!(
            (out.as_slice(), n),
            (&b"<DescribeInstancesResponse/>"[..], 0)
        );
    }
}

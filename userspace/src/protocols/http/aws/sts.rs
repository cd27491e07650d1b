//! A role assumed for each session (`assume_role_arn`): at the session's
//! first allowed request blastgate calls STS `AssumeRole` with the key it
//! holds, for the shortest time STS allows (900 s), and signs the
//! session's requests with the temporary credentials. They live in the
//! session's connection state only: when the session ends they are
//! dropped, never reused by another session, and expire within 15
//! minutes at most.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};

use super::sign::{self, Held, Payload};
use crate::protocols::http::request::{self, Conn};

/// The shortest `DurationSeconds` STS accepts.
pub const DURATION_SECS: u32 = 900;

/// Largest STS answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The role session name: the blastgate session's id, so CloudTrail (and
/// `get-caller-identity`) tie every call to the recorded session.
pub fn session_name(id: &uuid::Uuid) -> String {
    format!("blastgate-{}", id.simple())
}

/// The form body of the AssumeRole call.
fn form(role_arn: &str, name: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRole")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", name)
        .append_pair("DurationSeconds", &DURATION_SECS.to_string())
        .finish()
}

/// The text of the first `<tag>…</tag>` in an STS XML answer.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// The temporary credentials of an `AssumeRoleResponse`.
pub fn parse(xml: &str) -> Result<Held, String> {
    let creds =
        element(xml, "Credentials").ok_or("the STS AssumeRole answer has no Credentials block")?;
    let field = |t: &str| {
        element(creds, t)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or(format!("the STS AssumeRole answer has no {t}"))
    };
    Ok(Held {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: Some(field("SessionToken")?),
    })
}

/// Assumes `role_arn` with `base` at the session's upstream (`host`, in
/// `region`). Errors are blastgate's or the upstream's, never quoting a
/// credential.
pub async fn assume(
    conn: &Conn,
    base: &Held,
    role_arn: &str,
    host: &str,
    region: &str,
) -> Result<Held, String> {
    let name = session_name(&conn.gw.session.id);
    let body = Bytes::from(form(role_arn, &name));
    let (mut parts, ()) = Request::builder()
        .method(Method::POST)
        .uri("/")
        .body(())
        .map_err(|e| format!("the AssumeRole request: {e}"))?
        .into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let full = Full::new(body.clone())
        .map_err(|never| match never {})
        .boxed();
    let mut req = request::forwarded(conn, parts, full, host)?;
    let signing = sign::For {
        service: "sts",
        region,
        held: base,
        payload: &Payload::Hashed,
        body: Some(&body),
        presign: None,
        algorithm: &sign::Algorithm::V4,
        time: std::time::SystemTime::now(),
    };
    sign::resign(&mut req, &signing)?;
    let answer = conn
        .client
        .pooled
        .request(req)
        .await
        .map_err(|e| format!("STS AssumeRole upstream: {e}"))?;
    let status = answer.status();
    let raw = request::read_limited(answer.into_body().boxed(), MAX_ANSWER)
        .await
        .map_err(|e| format!("the STS AssumeRole answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    if !status.is_success() {
        let code = element(&text, "Code").unwrap_or("no error code");
        return Err(format!(
            "STS AssumeRole of {role_arn} failed with {status} ({code})"
        ));
    }
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_the_answer() {
        let xml = "<AssumeRoleResponse><AssumeRoleResult><Credentials>\
            <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>s3cr3t</SecretAccessKey>\
            <SessionToken>tok</SessionToken><Expiration>2026-01-01T00:00:00Z</Expiration>\
            </Credentials><AssumedRoleUser><Arn>arn</Arn></AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>";
        let h = parse(xml).expect("parsed");
        assert_eq!(h.access_key_id, "ASIAEXAMPLE");
        assert_eq!(h.secret_access_key, "s3cr3t");
        assert_eq!(h.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn an_answer_without_every_part_is_refused() {
        assert!(parse("<Error><Code>AccessDenied</Code></Error>").is_err());
        let no_token = "<Credentials><AccessKeyId>A</AccessKeyId>\
            <SecretAccessKey>s</SecretAccessKey></Credentials>";
        assert!(parse(no_token).is_err());
    }

    #[test]
    fn the_call_asks_for_the_shortest_duration() {
        let f = form("arn:aws:iam::123456789012:role/r", "blastgate-x");
        assert!(f.contains("Action=AssumeRole"), "{f}");
        assert!(f.contains("DurationSeconds=900"), "{f}");
        assert!(f.contains("RoleSessionName=blastgate-x"), "{f}");
    }
}

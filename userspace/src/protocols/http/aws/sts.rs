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
use crate::protocols::http::{
    request::{self, Conn},
    upstream::{self, Clients},
};

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

/// Where the `AssumeRole` call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The session's own upstream, under the name the agent used: a
    /// custom endpoint (moto, LocalStack) that serves STS beside the rest.
    Upstream { host: String },
    /// STS's own endpoint, by name (resolved through blastgate's
    /// resolver) and port, over TLS checked for that name.
    Named { name: String, port: u16 },
}

/// The STS endpoint for a session whose requests go to `host` in
/// `region`: the configured `sts_endpoint`, else the regional STS
/// endpoint of an `amazonaws.com` host (an S3 or EC2 endpoint does not
/// serve STS), else the session's own upstream.
pub fn endpoint(configured: Option<&str>, host: &str, region: &str) -> Result<At, String> {
    if let Some(c) = configured {
        return parse_endpoint(c);
    }
    for suffix in [".amazonaws.com", ".amazonaws.com.cn"] {
        if host.ends_with(suffix) {
            if region.is_empty()
                || region.len() > 63
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("{region:?} is not a region STS can be reached in"));
            }
            return Ok(At::Named {
                name: format!("sts.{region}{suffix}"),
                port: 443,
            });
        }
    }
    Ok(At::Upstream {
        host: host.to_string(),
    })
}

/// `name:port` of a configured `sts_endpoint`.
pub fn parse_endpoint(text: &str) -> Result<At, String> {
    let (name, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("sts_endpoint {text:?} is not name:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("sts_endpoint {text:?}: the port is not a port number"))?;
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || rustls::pki_types::ServerName::try_from(name.to_string()).is_err() {
        return Err(format!(
            "sts_endpoint {text:?}: {name:?} is not a host name or address"
        ));
    }
    Ok(At::Named {
        name: name.to_ascii_lowercase(),
        port,
    })
}

/// A client for STS's own endpoint: an address literal as it is, a name
/// through blastgate's resolver (the first address that answers).
async fn named_client(conn: &Conn, name: &str, port: u16) -> Result<Clients, String> {
    let addrs: Vec<std::net::IpAddr> = match name.parse() {
        Ok(ip) => vec![ip],
        Err(_) => match &conn.gw.services.resolver {
            Some(r) => r.lookup(name).await,
            None => return Err(format!("no resolver to find STS at {name}")),
        },
    };
    let ip = addrs
        .first()
        .ok_or_else(|| format!("STS endpoint {name} did not resolve"))?;
    upstream::client(
        std::net::SocketAddr::new(*ip, port),
        conn.gw.services.connect_timeout,
        conn.cfg.upstream_ca_file.as_deref(),
        Some(name),
    )
}

/// Assumes `role_arn` with `base` at `at`, in `region`. Errors are
/// blastgate's or the upstream's, never quoting a credential.
pub async fn assume(
    conn: &Conn,
    base: &Held,
    role_arn: &str,
    at: &At,
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
    let (mut req, named) = match at {
        At::Upstream { host } => (request::forwarded(conn, parts, full, host)?, None),
        At::Named { name, port } => {
            let authority = match (port, name.contains(':')) {
                (443, false) => name.clone(),
                (p, false) => format!("{name}:{p}"),
                (p, true) => format!("[{name}]:{p}"),
            };
            parts.uri = format!("https://{authority}/")
                .parse()
                .map_err(|e| format!("the STS endpoint {authority}: {e}"))?;
            let client = named_client(conn, name, *port).await?;
            (Request::from_parts(parts, full), Some(client))
        }
    };
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
    let client = named.as_ref().unwrap_or(&conn.client);
    let answer = client
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
    fn sts_is_reached_at_its_own_endpoint_for_aws_hosts() {
        let named = |name: &str| At::Named {
            name: name.into(),
            port: 443,
        };
        assert_eq!(
            endpoint(None, "s3.amazonaws.com", "us-east-1"),
            Ok(named("sts.us-east-1.amazonaws.com"))
        );
        assert_eq!(
            endpoint(None, "bucket.s3.eu-west-1.amazonaws.com", "eu-west-1"),
            Ok(named("sts.eu-west-1.amazonaws.com"))
        );
        assert_eq!(
            endpoint(None, "ec2.cn-north-1.amazonaws.com.cn", "cn-north-1"),
            Ok(named("sts.cn-north-1.amazonaws.com.cn"))
        );
        // A region the agent named cannot take the held key's signature
        // out of AWS's domain.
        assert!(endpoint(None, "s3.amazonaws.com", "evil.example.com/").is_err());
        assert!(endpoint(None, "s3.amazonaws.com", "").is_err());
        // A host that only ends like AWS's is a custom endpoint.
        assert_eq!(
            endpoint(None, "moto.test", "us-east-1"),
            Ok(At::Upstream {
                host: "moto.test".into()
            })
        );
        assert_eq!(
            endpoint(None, "notamazonaws.com.example", "us-east-1"),
            Ok(At::Upstream {
                host: "notamazonaws.com.example".into()
            })
        );
        // The configured endpoint wins.
        assert_eq!(
            endpoint(Some("sts.internal:8443"), "s3.amazonaws.com", "us-east-1"),
            Ok(At::Named {
                name: "sts.internal".into(),
                port: 8443
            })
        );
        assert_eq!(
            parse_endpoint("[::1]:443"),
            Ok(At::Named {
                name: "::1".into(),
                port: 443
            })
        );
        for bad in ["sts.internal", "sts.internal:0", ":443", "a b:443"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_call_asks_for_the_shortest_duration() {
        let f = form("arn:aws:iam::123456789012:role/r", "blastgate-x");
        assert!(f.contains("Action=AssumeRole"), "{f}");
        assert!(f.contains("DurationSeconds=900"), "{f}");
        assert!(f.contains("RoleSessionName=blastgate-x"), "{f}");
    }
}

//! Red team on the AWS gateway (issue 19): an agent under `blastgate run`
//! with placeholder credentials tries to have AWS (or the S3-compatible
//! server standing in for it) run something other than what policy
//! decided, or to widen where it runs. Each attack sits beside a harmless
//! look-alike that must keep working. Attacks that still succeed are
//! ignored as open findings until fixed; all are fixed and pass.
//!
//! The pure ones call the identification and framing code the gateway
//! runs (`operation::identify`, `sign::algorithm`, `chunks::Rechunker`);
//! the S3 one runs the real daemon, moto and an agent's HTTPS client.

mod harness;

use std::{process::Command, time::Duration};

use blastgate::protocols::http::aws::{
    chunks::{Chain, Rechunker},
    operation::{identify, Asked, Endpoint, Operation},
    sign::{self, Held},
};
use harness::{dnsmasq::Dnsmasq, moto::Moto, moto::VENV_BIN, sshd::output_within, *};
use http::{HeaderMap, Method};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

fn id(
    method: Method,
    host: &str,
    path: &str,
    query: &str,
    h: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Operation, String> {
    identify(
        &Asked {
            method: &method,
            host,
            path,
            query,
            headers: h,
            body,
        },
        &Endpoint {
            region: "us-east-1",
            services: &[],
        },
    )
}

/// A SigV4 `Authorization` the agent's SDK would send (its signature is
/// never checked; blastgate reads only the scope).
fn sigv4(service: &str, region: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIABLASTGATEAGENT000/20261207/{region}/{service}/aws4_request, \
         SignedHeaders=host;x-amz-date, Signature={}",
        "0".repeat(64)
    )
}

/// The region policy sees (`context.region`) and the region set the
/// request is re-signed for, as the gateway computes them.
fn region_seen_and_signed(
    host: &str,
    path: &str,
    query: &str,
    h: &HeaderMap,
) -> Result<(String, sign::Algorithm), String> {
    let algorithm = sign::algorithm(h, query)?;
    let op = id(Method::GET, host, path, query, h, None)?;
    Ok((op.region, algorithm))
}

/// SigV4a headers as the SDKs send them: `scope` is the credential scope
/// after the key id, `set` the `X-Amz-Region-Set`.
fn sigv4a(scope: &str, set: &str) -> HeaderMap {
    let auth = format!(
        "AWS4-ECDSA-P256-SHA256 Credential=AKIABLASTGATEAGENT000/{scope}, \
         SignedHeaders=host;x-amz-date;x-amz-region-set, Signature=3045"
    );
    headers(&[("authorization", auth.as_str()), ("x-amz-region-set", set)])
}

/// Look-alike: SigV4a as the SDKs send it (a scope without a region, the
/// set in `X-Amz-Region-Set`): a wildcard set is decided as region "*",
/// one region as that region.
#[test]
fn sigv4a_region_sets_are_decided_as_signed() {
    let anywhere = sigv4a("20261207/s3/aws4_request", "*");
    let (region, algorithm) =
        region_seen_and_signed("127.0.0.2", "/b", "list-type=2", &anywhere).unwrap();
    assert_eq!(region, "*");
    assert_eq!(
        algorithm,
        sign::Algorithm::V4a {
            region_set: "*".into()
        }
    );
    let one = sigv4a("20261207/s3/aws4_request", "eu-west-1");
    let (region, _) = region_seen_and_signed("127.0.0.2", "/b", "list-type=2", &one).unwrap();
    assert_eq!(region, "eu-west-1");
    // An upper-case or junk set is refused, not widened.
    for set in ["US-EAST-1", "us-east-1;eu-west-1", "us east 1"] {
        let junk = sigv4a("20261207/s3/aws4_request", set);
        assert!(
            region_seen_and_signed("127.0.0.2", "/b", "", &junk).is_err(),
            "{set:?}"
        );
    }
}

/// Attack (goal 4): a SigV4a request whose credential scope still names a
/// region (`…/us-east-1/s3/aws4_request`, the SigV4 shape), with
/// `X-Amz-Region-Set: *`; or a SigV4 `Authorization` beside a query
/// `X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256&X-Amz-Region-Set=*`. Policy
/// must see region "*" (as the schema documents: "*" for a SigV4a request
/// whose set is a wildcard), or the request must be refused; a policy
/// limiting `context.region` to us-east-1 otherwise passes a request
/// blastgate re-signs as valid in every region.
#[test]
fn sigv4a_wildcard_set_cannot_hide_behind_a_regional_scope() {
    let five_part = sigv4a("20261207/us-east-1/s3/aws4_request", "*");
    let query_algorithm = headers(&[("authorization", sigv4("s3", "us-east-1").as_str())]);
    let mut passed = Vec::new();
    for (what, host, h, query) in [
        (
            "5-part SigV4a scope",
            "127.0.0.2",
            &five_part,
            "list-type=2",
        ),
        (
            "5-part SigV4a scope at a regional AWS host",
            "s3.us-east-1.amazonaws.com",
            &five_part,
            "list-type=2",
        ),
        (
            "SigV4 header, SigV4a query algorithm",
            "127.0.0.2",
            &query_algorithm,
            "list-type=2&X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256&X-Amz-Region-Set=%2A",
        ),
    ] {
        if let Ok((region, algorithm)) = region_seen_and_signed(host, "/b", query, h) {
            let widened =
                matches!(&algorithm, sign::Algorithm::V4a { region_set } if region_set == "*");
            if widened && region != "*" {
                passed.push(format!(
                    "{what}: decided in region {region:?}, re-signed as {algorithm:?}"
                ));
            }
        }
    }
    assert!(passed.is_empty(), "{passed:#?}");
}

/// Attacks (goal 1) on how the operation is read, each with its plain
/// form: repeated or conflicting names are refused, never guessed.
#[test]
fn operation_spellings_are_refused_or_read_as_the_server_reads_them() {
    let json = |target: &str| {
        headers(&[
            (
                "authorization",
                sigv4("secretsmanager", "us-east-1").as_str(),
            ),
            ("x-amz-target", target),
            ("content-type", "application/x-amz-json-1.1"),
        ])
    };
    // Two X-Amz-Target headers: the server's pick cannot be known.
    let mut two = json("secretsmanager.GetSecretValue");
    two.append(
        "x-amz-target",
        "secretsmanager.DeleteSecret".parse().unwrap(),
    );
    assert!(id(Method::POST, "127.0.0.2", "/", "", &two, Some(b"{}")).is_err());
    // A target with an operation hidden after another dot.
    let nested = json("secretsmanager.GetSecretValue.DeleteSecret");
    assert!(id(Method::POST, "127.0.0.2", "/", "", &nested, Some(b"{}")).is_err());
    // Look-alike.
    let o = id(
        Method::POST,
        "127.0.0.2",
        "/",
        "",
        &json("secretsmanager.GetSecretValue"),
        Some(br#"{"SecretId":"prod/db"}"#),
    )
    .unwrap();
    assert_eq!(o.action(), "aws:secretsmanager:GetSecretValue");

    // Query protocol: Action in the URL and another in a form body (with
    // a charset, upper-case media type), or twice in the body.
    let form = |ct: &str| {
        headers(&[
            ("authorization", sigv4("ec2", "us-east-1").as_str()),
            ("content-type", ct),
        ])
    };
    for ct in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    ] {
        let h = form(ct);
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "Action=DescribeInstances",
            &h,
            Some(b"Action=TerminateInstances&InstanceId.1=i-1"),
        )
        .is_err());
        assert!(id(
            Method::POST,
            "127.0.0.2",
            "/",
            "",
            &h,
            Some(b"Action=DescribeInstances&Action=TerminateInstances"),
        )
        .is_err());
        // Percent-encoded parameter name: decoded as servers decode it.
        let o = id(
            Method::POST,
            "127.0.0.2",
            "/",
            "",
            &h,
            Some(b"%41ction=TerminateInstances&InstanceId.1=i-1"),
        )
        .unwrap();
        assert_eq!(o.action(), "aws:ec2:TerminateInstances", "{ct}");
        assert_eq!(o.resources, vec!["i-1".to_string()]);
    }
    // Look-alike: the form body alone.
    let o = id(
        Method::POST,
        "127.0.0.2",
        "/",
        "",
        &form("application/x-www-form-urlencoded"),
        Some(b"Action=DescribeInstances"),
    )
    .unwrap();
    assert_eq!(o.action(), "aws:ec2:DescribeInstances");

    // S3: a repeated sub-resource, an unknown spelling of one, and a
    // sub-resource with a method it has no operation for.
    let s3 = headers(&[("authorization", sigv4("s3", "us-east-1").as_str())]);
    for (m, path, q) in [
        (Method::DELETE, "/b", "policy&policy"),
        (Method::POST, "/b", "Delete"),
        (Method::PUT, "/b/k", "uploads"),
        (Method::GET, "/b/k", "uploads&tagging"),
        (Method::POST, "/b", ""),
        (Method::DELETE, "/b/k", "versions"),
    ] {
        let r = id(m.clone(), "127.0.0.2", path, q, &s3, None);
        assert!(r.is_err(), "{m} {path}?{q}: {r:?}");
    }
    // `?x-id=` (what the SDKs add) names nothing: the method and
    // sub-resources decide, not a harmless-looking x-id.
    let o = id(
        Method::DELETE,
        "127.0.0.2",
        "/b/k",
        "x-id=GetObject",
        &s3,
        None,
    )
    .unwrap();
    assert_eq!(o.action(), "aws:s3:DeleteObject");
    // A percent-encoded sub-resource is the sub-resource.
    let o = id(Method::POST, "127.0.0.2", "/b", "%64elete", &s3, None).unwrap();
    assert_eq!(o.action(), "aws:s3:DeleteObjects");
    // A copy hides its source in a header: the source is a resource.
    let copy = headers(&[
        ("authorization", sigv4("s3", "us-east-1").as_str()),
        ("x-amz-copy-source", "/vault%2Fkey"),
    ]);
    let o = id(Method::PUT, "127.0.0.2", "/scratch/k", "", &copy, None).unwrap();
    assert_eq!(o.action(), "aws:s3:CopyObject");
    assert!(o.resources.contains(&"arn:aws:s3:::vault/key".to_string()));
}

/// Attack (goal 1, S3 at AWS's hosts): a virtual-hosted bucket with a
/// path that looks like another bucket is decided as the host's bucket.
#[test]
fn s3_virtual_host_bucket_is_the_host_s() {
    let s3 = headers(&[("authorization", sigv4("s3", "us-east-1").as_str())]);
    let o = id(
        Method::GET,
        "vault.s3.us-east-1.amazonaws.com",
        "/scratch/k",
        "",
        &s3,
        None,
    )
    .unwrap();
    assert_eq!((o.bucket.as_str(), o.key.as_str()), ("vault", "scratch/k"));
    // Signed for another region than the host's: refused.
    let elsewhere = headers(&[("authorization", sigv4("s3", "eu-west-1").as_str())]);
    assert!(id(
        Method::GET,
        "vault.s3.us-east-1.amazonaws.com",
        "/k",
        "",
        &elsewhere,
        None
    )
    .is_err());
}

fn held() -> Held {
    Held {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    }
}

fn rechunker(decoded: u64, trailers: Option<Vec<String>>) -> Rechunker {
    let chain = Chain::new(
        &held(),
        "us-east-1",
        "s3",
        std::time::UNIX_EPOCH + Duration::from_secs(1_765_000_000),
        "0".repeat(64),
    );
    Rechunker::new(chain, decoded, trailers)
}

fn sig() -> String {
    "a".repeat(64)
}

/// Feeds the whole body in one piece; Ok: what went upstream.
fn rechunk(mut r: Rechunker, body: &[u8]) -> Result<Vec<u8>, String> {
    let out: Vec<u8> = r.push(body)?.concat();
    r.finish()?;
    Ok(out)
}

/// Attacks (goal 3) on signed aws-chunked framing: bytes blastgate would
/// not re-sign, or would forward without reading as framed.
#[test]
fn signed_chunks_pass_only_what_was_resigned() {
    let s = sig();
    let plain = format!("5;chunk-signature={s}\r\nhello\r\n0;chunk-signature={s}\r\n\r\n");
    // Look-alike: re-signed, same length, new signatures.
    let out = rechunk(rechunker(5, None), plain.as_bytes()).unwrap();
    assert_eq!(out.len(), plain.len());
    assert!(!String::from_utf8_lossy(&out).contains(&s));
    // A second upload after the final chunk (a request smuggled in the
    // body of the first).
    let smuggled = format!("{plain}PUT /vault/k HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(rechunk(rechunker(5, None), smuggled.as_bytes()).is_err());
    // The same, arriving in a later read.
    let mut r = rechunker(5, None);
    assert!(r.push(plain.as_bytes()).is_ok());
    assert!(r.push(b"0;chunk-signature=").is_err());
    // Sizes: `0x5`, a sign, whitespace, a chunk over the limit, chunks
    // adding up past the declared length (and an overflowing sum).
    for header in ["0x5", "+5", " 5", "5 "] {
        let b = format!("{header};chunk-signature={s}\r\nhello\r\n0;chunk-signature={s}\r\n\r\n");
        assert!(
            rechunk(rechunker(5, None), b.as_bytes()).is_err(),
            "{header:?}"
        );
    }
    let huge = format!("ffffffffffffffff;chunk-signature={s}\r\n");
    assert!(rechunker(u64::MAX, None).push(huge.as_bytes()).is_err());
    let over = format!("1000001;chunk-signature={s}\r\n");
    assert!(rechunker(u64::MAX, None).push(over.as_bytes()).is_err());
    assert!(rechunk(rechunker(4, None), plain.as_bytes()).is_err());
    assert!(rechunk(rechunker(6, None), plain.as_bytes()).is_err());
    // A chunk extension after the signature (bytes not re-signed).
    let ext = format!("5;chunk-signature={s};x=1\r\nhello\r\n0;chunk-signature={s}\r\n\r\n");
    assert!(rechunk(rechunker(5, None), ext.as_bytes()).is_err());
    // Trailers: one not declared in x-amz-trailer, a declared one twice,
    // a signature line not last, and none at all.
    let declared = Some(vec!["x-amz-checksum-crc32".to_string()]);
    let with = |lines: &str| {
        format!("5;chunk-signature={s}\r\nhello\r\n0;chunk-signature={s}\r\n{lines}\r\n")
    };
    let good = with(&format!(
        "x-amz-checksum-crc32:NhCmhg==\r\nx-amz-trailer-signature:{s}\r\n"
    ));
    assert!(rechunk(rechunker(5, declared.clone()), good.as_bytes()).is_ok());
    for lines in [
        format!("x-amz-checksum-crc32:NhCmhg==\r\nx-amz-meta-owner:root\r\nx-amz-trailer-signature:{s}\r\n"),
        format!("x-amz-checksum-crc32:NhCmhg==\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-trailer-signature:{s}\r\n"),
        format!("x-amz-trailer-signature:{s}\r\nx-amz-checksum-crc32:NhCmhg==\r\n"),
        "x-amz-checksum-crc32:NhCmhg==\r\n".to_string(),
        format!("X-Amz-Checksum-Crc32:NhCmhg==\r\nx-amz-trailer-signature:{s}\r\n"),
    ] {
        let b = with(&lines);
        assert!(
            rechunk(rechunker(5, declared.clone()), b.as_bytes()).is_err(),
            "{lines:?}"
        );
    }
}

/// moto's address for the wildcard-named S3-compatible endpoint.
const S3_IP: &str = "127.0.0.57";

/// A bucket, an object in it, made with the held key directly at moto
/// (not through blastgate: this is the world the agent finds), path-style
/// at moto's address.
fn seed_bucket(moto: &Moto, bucket: &str, key: &str, body: &str) {
    let script = "import sys, boto3\n\
        url, ca, ak, sk, bucket, key, body = sys.argv[1:8]\n\
        c = boto3.client('s3', endpoint_url=url, region_name='us-east-1', verify=ca,\n\
            aws_access_key_id=ak, aws_secret_access_key=sk)\n\
        c.create_bucket(Bucket=bucket)\n\
        c.put_object(Bucket=bucket, Key=key, Body=body.encode())\n";
    let out = Command::new(format!("{VENV_BIN}/python"))
        .args(["-c", script])
        .arg(format!("https://{S3_IP}:{}", moto.port))
        .arg(&moto.ca)
        .args([&moto.access_key_id, &moto.secret_access_key])
        .args([bucket, key, body])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent's GET of `https://HOST/PATH` (HOST resolved through
/// blastgate), signed for show with the placeholder key: status and body.
const AGENT_GET: &str = r#"
import datetime, http.client, os, ssl, sys
host, path = sys.argv[1:3]
extra = sys.argv[3:]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
ctx = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
c = http.client.HTTPSConnection(host, 443, context=ctx, timeout=60)
c.putrequest("GET", path, skip_accept_encoding=True)
c.putheader("x-amz-date", now)
c.putheader("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
for h in extra:
    k, v = h.split(":", 1)
    c.putheader(k, v.strip())
c.putheader("Authorization", "AWS4-HMAC-SHA256 Credential=AKIABLASTGATEAGENT000/%s/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=%s" % (now[:8], "0" * 64))
c.endheaders()
r = c.getresponse()
print(r.status, r.read().decode(errors="replace"))
"#;

/// Attack (goal 1, S3 at a custom endpoint): an S3-compatible endpoint
/// named by a wildcard (`hosts = ["*.moto.test:443"]`; MinIO with
/// `MINIO_DOMAIN`, Ceph RGW with `rgw_dns_name`, LocalStack and moto all
/// read the bucket from the first label of the host). blastgate read
/// S3 requests at hosts outside `amazonaws.com` path-style only:
/// `GET https://vault.moto.test/scratch/k` was decided as bucket
/// `scratch`, key `k`, and ran as bucket `vault`, key `scratch/k`; a
/// policy on buckets was sidestepped. Now S3 there is decided only at an
/// address or a name listed in `s3_path_style_hosts`, else refused.
/// Look-alike: at such a name the vault asked for in the path is refused
/// by that policy.
#[test]
fn s3_bucket_in_the_host_is_the_bucket_decided() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    if !Moto::available() {
        return;
    }
    let moto = Moto::start_on(S3_IP, 443, &["*.moto.test", "moto.test"]);
    seed_bucket(&moto, "vault", "scratch/k", "vault-only-contents");
    seed_bucket(&moto, "scratch", "k", "scratch-contents");
    let dns = Dnsmasq::start(&format!(
        "{S3_IP} moto.test\n{S3_IP} vault.moto.test\n{S3_IP} scratch.moto.test\n"
    ));
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path();
    let secret = scratch.join("aws.secret");
    std::fs::write(&secret, format!("{}\n", moto.secret_access_key)).expect("secret");
    let policies = copy_shipped_policies(scratch);
    std::fs::write(
        policies.join("test.cedar"),
        r#"
@id("test-vault")
@reason("the vault bucket is not the agent's")
forbid (principal, action == Action::"aws:s3:GetObject", resource)
when { context.bucket == "vault" };
"#,
    )
    .expect("policy");
    let env = Env::with_sections(
        "",
        &format!("upstreams = [\"{}\"]\n", dns.addr),
        &format!(
            "[policy]\ndir = \"{}\"\n\n\
             [[targets]]\nname = \"s3-compatible\"\nprotocol = \"https\"\nhosts = [\"moto.test:443\", \"*.moto.test:443\"]\n\n\
             [targets.http]\nkind = \"aws\"\nupstream_ca_file = \"{}\"\n\n\
             [targets.http.aws]\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\n\
             secret_access_key = {{ file = \"{}\" }}\ns3_path_style_hosts = [\"moto.test\"]\n",
            policies.display(),
            moto.ca.display(),
            moto.access_key_id,
            secret.display(),
        ),
    );
    let daemon = Daemon::start(&env);
    let get_with = |host: &str, path: &str, extra: &[&str]| -> String {
        let python = format!("{VENV_BIN}/python");
        let mut argv = vec![python.as_str(), "-c", AGENT_GET, host, path];
        argv.extend_from_slice(extra);
        let mut c = env.agent("claude", &argv);
        let out = output_within(&mut c, Duration::from_secs(120));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let get = |host: &str, path: &str| get_with(host, path, &[]);
    // Look-alike: at a name the admin says is path-style, a bucket in the
    // path is decided (moto itself reads the bucket from any host name,
    // so the answer is moto's; the decision is the point).
    let refused = get("moto.test", "/vault/scratch/k");
    assert!(
        refused.starts_with("403") && refused.contains("test-vault"),
        "{refused}\n{}",
        daemon.log_text()
    );
    // A method override (a GET decided, a DELETE asked for) is refused:
    // AWS ignores it, an S3-compatible server might not.
    let overridden = get_with(
        "moto.test",
        "/scratch/k",
        &["X-HTTP-Method-Override: DELETE"],
    );
    assert!(overridden.starts_with("400"), "{overridden}");
    assert!(overridden.contains("DELETE"), "{overridden}");
    // The attack: the vault's object by host, decided as `scratch`.
    let stolen = get("vault.moto.test", "/scratch/k");
    env.wait_event("the attack's refusal", |e| {
        e["kind"] == "request"
            && e["verdict"] == "deny"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("may read the bucket from the host"))
    });
    assert!(
        !stolen.contains("vault-only-contents"),
        "the vault's object reached the agent: {stolen}"
    );
}

/// Attack (goal 5): steer `AssumeRole`, signed with the held key, to a
/// host the agent names. Only AWS's own STS names (from a region that is
/// a bare label) or the target's configured upstream are ever used.
#[test]
fn assume_role_goes_only_to_sts_or_the_configured_upstream() {
    use blastgate::protocols::http::aws::sts::{endpoint, At};
    // Look-alike: EC2 in us-east-1, STS's regional host.
    assert_eq!(
        endpoint(None, "ec2.us-east-1.amazonaws.com", "us-east-1"),
        Ok(At::Named {
            name: "sts.us-east-1.amazonaws.com".into(),
            port: 443
        })
    );
    // A region that would make another name, or none.
    for region in ["evil.test#", "x.evil.test", "", "US-EAST-1", "us-east-1/"] {
        assert!(
            endpoint(None, "s3.amazonaws.com", region).is_err(),
            "{region:?}"
        );
    }
    // A look-alike host that merely contains amazonaws.com: the session's
    // own upstream (the configured address), never a name made from it.
    assert_eq!(
        endpoint(None, "s3.amazonaws.com.evil.test", "us-east-1"),
        Ok(At::Upstream {
            host: "s3.amazonaws.com.evil.test".into()
        })
    );
    // A configured endpoint wins over anything the request names.
    assert_eq!(
        endpoint(
            Some("sts.internal.example:8443"),
            "ec2.us-east-1.amazonaws.com",
            "us-east-1"
        ),
        Ok(At::Named {
            name: "sts.internal.example".into(),
            port: 8443
        })
    );
}

/// Attack (goal 1): S3 Control (`<account>.s3-control.<region>.amazonaws.com`,
/// signing name `s3`: DeletePublicAccessBlock, DeleteAccessPoint, …)
/// read as S3 because its host has a label starting with `s3-`: the
/// label's tail (`control`) is taken as the region, so an agent signing
/// its scope for region `control` gets the account's public-access block
/// deletion decided as `aws:s3:DeleteObject` on "bucket" 123456789012.
/// (Real AWS rejects the re-signed request, whose region is `control`;
/// a server that routes by host, such as moto, runs it.) It must be
/// refused or decided as the S3 Control operation.
#[test]
fn s3_control_hosts_are_not_read_as_s3_objects() {
    let scoped = headers(&[("authorization", sigv4("s3", "control").as_str())]);
    let r = id(
        Method::DELETE,
        "123456789012.s3-control.us-east-1.amazonaws.com",
        "/v20180820/configuration/publicAccessBlock",
        "",
        &scoped,
        None,
    );
    assert!(
        r.as_ref()
            .map_or(true, |o| o.operation == "DeletePublicAccessBlock"),
        "{r:?}"
    );
}

/// Look-alike: the S3 hosts that do carry a region (`s3.<region>`,
/// `s3-<region>`, dual-stack) read their region as AWS does.
#[test]
fn s3_regional_hosts_name_their_region() {
    let s3 = |region: &str| headers(&[("authorization", sigv4("s3", region).as_str())]);
    for (host, region) in [
        ("b.s3.eu-west-1.amazonaws.com", "eu-west-1"),
        ("b.s3-eu-west-1.amazonaws.com", "eu-west-1"),
        ("b.s3.dualstack.eu-west-1.amazonaws.com", "eu-west-1"),
    ] {
        let o = id(Method::DELETE, host, "/k", "", &s3(region), None).unwrap();
        assert_eq!(
            (o.action().as_str(), o.bucket.as_str(), o.region.as_str()),
            ("aws:s3:DeleteObject", "b", region),
            "{host}"
        );
    }
}

//! The AWS gateway against moto's server (SigV4 and IAM enforced, HTTPS
//! with its own CA), with the real AWS CLI as the agent under `blastgate
//! run`: the agent signs with a placeholder, blastgate decides each
//! operation and re-signs with the key it holds.

mod harness;

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{moto::Moto, moto::VENV_BIN, sshd::output_within, *};

struct Setup {
    moto: Moto,
    env: Env,
    daemon: Daemon,
    _scratch: tempfile::TempDir,
}

/// moto, and a daemon with one production AWS target at it; `extra`:
/// more `[targets.http.aws]` lines, given the moto set up; `policy`: a
/// policy file added to the shipped ones ("" for none).
fn setup(extra: impl Fn(&Moto) -> String, policy: &str) -> Option<Setup> {
    if !kernel_ready() {
        return None;
    }
    if !Moto::available() {
        return None;
    }
    let moto = Moto::start();
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path();
    let secret = scratch.join("aws.secret");
    std::fs::write(&secret, format!("{}\n", moto.secret_access_key)).expect("secret");
    let policies = copy_shipped_policies(scratch);
    if !policy.is_empty() {
        std::fs::write(policies.join("test.cedar"), policy).expect("test policy");
    }
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"aws-prod\"\nprotocol = \"https\"\naddress = \"127.0.0.2:{}\"\n\
         labels = {{ env = \"production\" }}\n\n[targets.http]\nkind = \"aws\"\n\
         upstream_ca_file = \"{}\"\nserver_name = \"moto.test\"\n\n[targets.http.aws]\n\
         region = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = {{ file = \"{}\" }}\n{}",
        policies.display(),
        moto.port,
        moto.ca.display(),
        moto.access_key_id,
        secret.display(),
        extra(&moto),
    ));
    let daemon = Daemon::start(&env);
    Some(Setup {
        moto,
        env,
        daemon,
        _scratch: scratch_dir,
    })
}

impl Setup {
    /// `aws ARGS…` as an agent: credentials and CA bundle from `blastgate
    /// run`, nothing from the host's AWS files.
    fn aws_cmd(&self, args: &[&str]) -> Command {
        self.aws_cmd_at(&format!("https://127.0.0.2:{}", self.moto.port), args)
    }

    /// `aws ARGS…` as an agent, with `--endpoint-url ENDPOINT`.
    fn aws_cmd_at(&self, endpoint: &str, args: &[&str]) -> Command {
        let aws = format!("{VENV_BIN}/aws");
        let mut all = vec![
            aws.as_str(),
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
        ];
        all.extend_from_slice(args);
        let mut c = self.env.agent("claude", &all);
        c.env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1");
        c
    }

    fn aws(&self, args: &[&str]) -> Output {
        output_within(&mut self.aws_cmd(args), Duration::from_secs(120))
    }

    /// `aws ARGS…`, which must succeed: its output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        let t = text(&out);
        assert!(
            out.status.success(),
            "aws {args:?}: {t}\n{}",
            self.daemon.log_text()
        );
        t
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_aws_cli_works_through_the_gateway_with_the_held_key() {
    let Some(s) = setup(|_| String::new(), "") else {
        return;
    };
    let seen = std::cell::RefCell::new(String::new());
    let ok = |args: &[&str]| -> String {
        let t = s.ok(args);
        seen.borrow_mut().push_str(&t);
        t
    };

    // The identity is the held key's user, not the placeholder's.
    let who = ok(&["sts", "get-caller-identity"]);
    assert!(who.contains("user/held-user"), "{who}");

    // S3: make, upload a multipart file (> 8 MB, streamed aws-chunked),
    // list, download, compare.
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.bin");
    let data: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&big, &data).expect("big");
    ok(&["s3", "mb", "s3://work"]);
    ok(&[
        "s3",
        "cp",
        big.to_str().unwrap_or_default(),
        "s3://work/big.bin",
    ]);
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "hello\n").expect("small");
    ok(&[
        "s3",
        "cp",
        small.to_str().unwrap_or_default(),
        "s3://work/dir/small.txt",
    ]);
    let listed = ok(&["s3", "ls", "s3://work", "--recursive"]);
    assert!(
        listed.contains("big.bin") && listed.contains("dir/small.txt"),
        "{listed}"
    );
    let back = dir.path().join("back.bin");
    ok(&[
        "s3",
        "cp",
        "s3://work/big.bin",
        back.to_str().unwrap_or_default(),
    ]);
    assert!(
        std::fs::read(&back).expect("back") == data,
        "the download differs"
    );

    // Presigned URLs the agent made are decided as the operation they are:
    // one deleting a production bucket is refused before anything is
    // sent. (Fetching through a re-presigned URL is not exercised: moto
    // 5.2.6 with IAM checking on fails any presigned request with a 500,
    // KeyError HTTP_AUTHORIZATION.)
    let endpoint = format!("https://127.0.0.2:{}", s.moto.port);
    let presigned = |python: &str, method: &str, sig: &str| -> Output {
        let script = format!(
            "url=$({VENV_BIN}/python -c \"import boto3, botocore.config as bc; \
             c = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', \
             config=bc.Config(signature_version='{sig}')); print({python})\") && \
             curl -sS -X {method} --cacert \"$AWS_CA_BUNDLE\" \"$url\""
        );
        let mut c = s.env.agent("claude", &["sh", "-c", &script]);
        c.env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        output_within(&mut c, Duration::from_secs(60))
    };
    // boto3's default for S3 presigning, SigV2, carries no SigV4 scope
    // blastgate can check: refused.
    let v2 = presigned(
        "c.generate_presigned_url('get_object', Params={'Bucket': 'work', 'Key': 'dir/small.txt'})",
        "GET",
        "s3",
    );
    let t = text(&v2);
    assert!(t.contains("not attributable to an AWS operation"), "{t}");
    seen.borrow_mut().push_str(&t);
    let gone = presigned(
        "c.generate_presigned_url('delete_bucket', Params={'Bucket': 'work'})",
        "DELETE",
        "s3v4",
    );
    let t = text(&gone);
    assert!(
        t.contains("AccessDenied") && t.contains("aws-production-bucket-delete"),
        "{t}"
    );
    seen.borrow_mut().push_str(&t);

    // EC2.
    let described = ok(&["ec2", "describe-instances"]);
    assert!(described.contains(&s.moto.instance_id), "{described}");

    // The held key's id, which IAM answers with, is blanked on the way
    // back (the echo guard): the agent learns neither half of the key.
    let keys = ok(&["iam", "list-access-keys", "--user-name", "held-user"]);
    assert!(keys.contains("AccessKeyMetadata"), "{keys}");
    assert!(!keys.contains(&s.moto.access_key_id), "{keys}");

    // Secrets come back masked.
    let secret = ok(&[
        "secretsmanager",
        "get-secret-value",
        "--secret-id",
        "prod/db",
    ]);
    assert!(!secret.contains("hunter2"), "{secret}");
    assert!(secret.contains("****"), "{secret}");

    // Deleting a production bucket is refused (its objects may go first).
    let rb = s.aws(&["s3", "rb", "s3://work", "--force"]);
    let t = text(&rb);
    assert!(!rb.status.success(), "{t}");
    assert!(
        t.contains("AccessDenied") && t.contains("aws-production-bucket-delete"),
        "{t}"
    );
    seen.borrow_mut().push_str(&t);
    let still = ok(&["s3api", "head-bucket", "--bucket", "work"]);
    seen.borrow_mut().push_str(&still);

    // A request blastgate cannot attribute to an operation is refused,
    // clearly: Lambda's listing under a path prefix no Lambda API has
    // (an endpoint URL with a path), which no route of the models fits.
    let odd = format!("https://127.0.0.2:{}/extra/prefix", s.moto.port);
    let mut odd = s.aws_cmd_at(&odd, &["lambda", "list-functions"]);
    let lambda = output_within(&mut odd, Duration::from_secs(120));
    let t = text(&lambda);
    assert!(!lambda.status.success(), "{t}");
    assert!(
        t.contains("not attributable to an AWS operation")
            && t.contains(
                "cannot tell which lambda operation GET /extra/prefix/2015-03-31/functions"
            ),
        "{t}"
    );
    seen.borrow_mut().push_str(&t);

    // Terminating a production instance is held: denied, then approved.
    for (verb, succeeds) in [("deny", false), ("approve", true)] {
        let child = s
            .aws_cmd(&[
                "ec2",
                "terminate-instances",
                "--instance-ids",
                &s.moto.instance_id,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("aws");
        let id = s.env.pending_approval();
        s.env.answer_approval(verb, &id);
        let out = child.wait_with_output().expect("aws");
        let t = text(&out);
        assert_eq!(out.status.success(), succeeds, "{verb}: {t}");
        if !succeeds {
            assert!(t.contains("AccessDenied"), "{t}");
        }
        seen.borrow_mut().push_str(&t);
    }

    // Records name the operation, with its context.
    let terminated = s.env.wait_event("terminate record", |e| {
        e["kind"] == "request"
            && e["action"] == "aws:ec2:TerminateInstances"
            && e["verdict"] == "allow"
    });
    assert_eq!(terminated["context"]["service"], "ec2", "{terminated}");
    let put = s.env.wait_event("put record", |e| {
        e["action"] == "aws:s3:PutObject" && e["context"]["key"] == "dir/small.txt"
    });
    assert_eq!(put["context"]["bucket"], "work", "{put}");

    // The held key is nowhere the agent or the records reach. That the
    // placeholder is not what moto checks is shown above: moto enforces
    // SigV4 and answered with the held user's identity.
    let spool = std::fs::read_dir(&s.env.spool)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect::<String>()
        })
        .unwrap_or_default();
    for (what, hay) in [
        ("agent output", seen.borrow().as_str()),
        ("spool", spool.as_str()),
        ("daemon log", s.daemon.log_text().as_str()),
    ] {
        for held in [&s.moto.secret_access_key, &s.moto.access_key_id] {
            assert!(!hay.contains(held.as_str()), "held key in the {what}");
        }
    }
}

#[test]
fn each_session_assumes_the_role_afresh_and_signs_with_it() {
    let Some(s) = setup(|m| format!("assume_role_arn = \"{}\"\n", m.role_arn), "") else {
        return;
    };
    let ok = |args: &[&str]| s.ok(args);
    // Each CLI run is a session of its own: each is the role, under a
    // role session named for the blastgate session, never the same one
    // twice (the first session's credentials are not reused).
    let names: Vec<String> = (0..2)
        .map(|_| {
            let who = ok(&["sts", "get-caller-identity"]);
            assert!(who.contains("assumed-role/agent-role/blastgate-"), "{who}");
            assert!(!who.contains("user/held-user"), "{who}");
            who.split("assumed-role/agent-role/")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_ne!(names[0], names[1], "a role session was reused");
    // The session named in the role is the recorded one.
    for name in &names {
        let id = name.trim_start_matches("blastgate-");
        s.env.wait_event("the session's get-caller-identity", |e| {
            e["action"] == "aws:sts:GetCallerIdentity"
                && e["session_id"]
                    .as_str()
                    .is_some_and(|sid| sid.replace('-', "") == id)
        });
    }
    // Other services take the role's credentials too (moto checks them).
    ok(&["s3", "mb", "s3://role-made"]);
    let listed = ok(&["s3", "ls"]);
    assert!(listed.contains("role-made"), "{listed}");
    assert!(!s.daemon.log_text().contains(&s.moto.secret_access_key));
}

/// An agent's signed-chunk upload (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`,
/// with and without a trailer), crafted here: botocore and the AWS CLI
/// never send signed chunks over HTTPS, and the agent's chunk signatures
/// are replaced anyway, so they are garbage. argv: MODE FILE URL; prints
/// the HTTP status and body.
const SIGNED_CHUNKS: &str = r#"
import base64, datetime, http.client, os, ssl, sys, urllib.parse, zlib
mode, path, url = sys.argv[1:4]
data = open(path, "rb").read()
u = urllib.parse.urlsplit(url)
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
junk = "0" * 64
chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)] + [b""]
body = b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), junk.encode(), c) for c in chunks)
headers = {
    "x-amz-date": now,
    "x-amz-decoded-content-length": str(len(data)),
    "content-encoding": "aws-chunked",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIABLASTGATEAGENT000/%s/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=%s" % (now[:8], junk),
}
if mode == "trailer":
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    headers["x-amz-content-sha256"] = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    body = body[:-2] + b"x-amz-checksum-crc32:%s\r\nx-amz-trailer-signature:%s\r\n\r\n" % (
        crc.encode(), junk.encode())
else:
    headers["x-amz-content-sha256"] = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
if mode == "short":
    # The second chunk's CRLF is missing: its data runs into the next header.
    first = body.index(b"\r\n", body.index(b"\r\n") + 2)
    second = body.index(b"\r\n", body.index(b"\r\n", first + 2) + 2)
    body = body[:second] + b"XX" + body[second + 2:]
if mode == "overlong":
    # The chunks carry one byte more than the declared object.
    headers["x-amz-decoded-content-length"] = str(len(data) - 1)
headers["content-length"] = str(len(body))
ctx = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
c.request("PUT", u.path, body=body, headers=headers)
r = c.getresponse()
print(r.status, r.read().decode(errors="replace"))
"#;

#[test]
fn signed_chunk_uploads_are_resigned_chunk_by_chunk() {
    let Some(s) = setup(|_| String::new(), "") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("chunks.py");
    std::fs::write(&script, SIGNED_CHUNKS).expect("script");
    // Not a multiple of the 64 KiB chunk: a short last chunk.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &data).expect("data");
    s.ok(&["s3", "mb", "s3://chunks"]);
    let upload = |mode: &str, key: &str| -> String {
        let url = format!("https://127.0.0.2:{}/chunks/{key}", s.moto.port);
        let python = format!("{VENV_BIN}/python");
        let mut c = s.env.agent(
            "claude",
            &[
                python.as_str(),
                script.to_str().unwrap_or_default(),
                mode,
                file.to_str().unwrap_or_default(),
                url.as_str(),
            ],
        );
        text(&output_within(&mut c, Duration::from_secs(120)))
    };
    for (mode, key) in [("plain", "plain.bin"), ("trailer", "trailer.bin")] {
        // moto checks the (re-signed) seed signature: a 200 means the
        // headers were signed with the held key for the streaming mode.
        let t = upload(mode, key);
        assert!(
            t.starts_with("200 "),
            "{mode}: {t}\n{}",
            s.daemon.log_text()
        );
        let back = dir.path().join(key);
        s.ok(&[
            "s3",
            "cp",
            &format!("s3://chunks/{key}"),
            back.to_str().unwrap_or_default(),
        ]);
        assert!(
            std::fs::read(&back).expect("back") == data,
            "{mode}: the object differs from the upload"
        );
    }
    // Broken framing is refused with the reason, and nothing is stored.
    for (mode, why) in [
        ("short", "not followed by CRLF"),
        ("overlong", "x-amz-decoded-content-length"),
    ] {
        let key = format!("{mode}.bin");
        let t = upload(mode, &key);
        assert!(t.starts_with("400 "), "{mode}: {t}");
        assert!(
            t.contains("the upload was stopped") && t.contains(why),
            "{mode}: {t}"
        );
        let head = s.aws(&["s3api", "head-object", "--bucket", "chunks", "--key", &key]);
        assert!(!head.status.success(), "{mode}: an object was stored");
    }
    let stopped = s.env.wait_event("stopped upload record", |e| {
        e["action"] == "aws:s3:PutObject" && e["context"]["key"] == "short.bin"
    });
    assert_eq!(stopped["verdict"], "error", "{stopped}");
    assert_eq!(stopped["status"], 400, "{stopped}");
    let put = s.env.wait_event("signed-chunk put record", |e| {
        e["action"] == "aws:s3:PutObject" && e["context"]["key"] == "trailer.bin"
    });
    assert_eq!(put["verdict"], "allow", "{put}");
}

/// boto3 with awscrt signs SigV4a (for region set `*`) as the agent: the
/// request is decided with region "*", re-signed as SigV4a with the held
/// key and sent. moto 5.2.6 does not verify SigV4a: it reads the scope as
/// if it were SigV4's, finds the held key's id in it (the placeholder's
/// would be InvalidAccessKeyId) and then refuses the ECDSA signature as a
/// wrong HMAC one, which is what is asserted. The signature itself is
/// verified against the held key's public key in sign.rs's unit test.
#[test]
fn sigv4a_requests_are_decided_for_their_region_set_and_resigned() {
    let Some(s) = setup(|_| String::new(), "") else {
        return;
    };
    let crt = std::process::Command::new(format!("{VENV_BIN}/python"))
        .args(["-c", "import awscrt"])
        .status()
        .is_ok_and(|st| st.success());
    if !crt {
        blastgate::testing::skip("awscrt is missing from the moto venv (cargo xtask setup)");
        return;
    }
    s.ok(&["s3", "mb", "s3://anywhere"]);
    let endpoint = format!("https://127.0.0.2:{}", s.moto.port);
    // botocore applies a configured region set only to operations modelled
    // as SigV4a (multi-region access points); for this bucket the signing
    // context is given the set `*` the same way.
    let script = format!(
        "import boto3, botocore.config as bc\n\
         c = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1', \
         config=bc.Config(signature_version='s3v4a'))\n\
         def anywhere(context, **kw):\n    context.setdefault('signing', {{}})['region'] = '*'\n\
         c.meta.events.register('choose-signer.s3', anywhere)\n\
         try:\n    print(c.list_objects_v2(Bucket='anywhere'))\n\
         except Exception as e:\n    print('ERR', e)\n"
    );
    let python = format!("{VENV_BIN}/python");
    let mut c = s.env.agent("claude", &[python.as_str(), "-c", &script]);
    c.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let t = text(&output_within(&mut c, Duration::from_secs(60)));
    let listed = s.env.wait_event("sigv4a list record", |e| {
        e["action"] == "aws:s3:ListObjectsV2" && e["context"]["region_set"] == "*"
    });
    assert_eq!(listed["context"]["region"], "*", "{listed}");
    assert_eq!(listed["verdict"], "allow", "{listed}");
    assert!(t.contains("SignatureDoesNotMatch"), "{t}");
    assert!(!t.contains("InvalidAccessKeyId"), "{t}");
}

/// REST-JSON and REST-XML services, routed by method and path from the
/// models: calls allowed and signed so that moto accepts them, deletions
/// refused by a policy naming the operation, each refusal the CLI's own
/// error. (moto 5.2.6 with signature checking on refuses every bodiless
/// REST call but S3's, `lambda list-functions` and `route53
/// list-hosted-zones` too, even sent straight from the CLI: it hashes its
/// header dictionary as the body. The allowed calls here carry bodies:
/// Batch's listing is a POST, Route 53's zone creation an XML POST.)
#[test]
fn rest_services_are_decided_by_operation() {
    let policy = r#"
@id("test-lambda-delete")
@reason("deleting Lambda functions is refused here")
forbid (principal, action == Action::"aws:other", resource)
when { context.service == "lambda" && context.operation == "DeleteFunction" };

@id("test-zone-delete")
@reason("deleting hosted zones is refused here")
forbid (principal, action == Action::"aws:other", resource)
when { context.service == "route53" && context.operation == "DeleteHostedZone" };
"#;
    let Some(s) = setup(|_| String::new(), policy) else {
        return;
    };
    // REST-JSON: Batch's listing (POST /v1/describecomputeenvironments)
    // is allowed and moto checks the held key's signature on it.
    let listed = s.ok(&["batch", "describe-compute-environments"]);
    assert!(listed.contains("computeEnvironments"), "{listed}");
    let gone = s.aws(&["lambda", "delete-function", "--function-name", "prod-fn"]);
    let t = text(&gone);
    assert!(!gone.status.success(), "{t}");
    assert!(
        t.contains("(AccessDenied) when calling the DeleteFunction operation")
            && t.contains("test-lambda-delete"),
        "{t}"
    );

    // REST-XML: Route 53.
    let made = s.ok(&[
        "route53",
        "create-hosted-zone",
        "--name",
        "example.test",
        "--caller-reference",
        "blastgate-e2e",
    ]);
    let zone: serde_json::Value = serde_json::from_str(&made).expect("create-hosted-zone JSON");
    let zone_id = zone["HostedZone"]["Id"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("/hostedzone/")
        .to_string();
    assert!(!zone_id.is_empty(), "{made}");
    let refused = s.aws(&["route53", "delete-hosted-zone", "--id", &zone_id]);
    let t = text(&refused);
    assert!(!refused.status.success(), "{t}");
    assert!(
        t.contains("(AccessDenied) when calling the DeleteHostedZone operation")
            && t.contains("test-zone-delete"),
        "{t}"
    );

    // Records name the operation and the resource the path names.
    let denied = s.env.wait_event("the zone deletion's record", |e| {
        e["kind"] == "request"
            && e["verdict"] == "deny"
            && e["context"]["operation"] == "DeleteHostedZone"
    });
    assert_eq!(denied["context"]["service"], "route53", "{denied}");
    assert_eq!(denied["context"]["resource"], zone_id.as_str(), "{denied}");
    let deleted = s.env.wait_event("the function deletion's record", |e| {
        e["kind"] == "request"
            && e["verdict"] == "deny"
            && e["context"]["operation"] == "DeleteFunction"
    });
    assert_eq!(deleted["context"]["resource"], "prod-fn", "{deleted}");
    for op in ["DescribeComputeEnvironments", "CreateHostedZone"] {
        s.env.wait_event("an allowed REST call's record", |e| {
            e["verdict"] == "allow" && e["context"]["operation"] == op
        });
    }
}

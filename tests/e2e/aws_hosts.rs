//! An AWS target named the way it is deployed against real AWS:
//! `hosts = ["*.amazonaws.com:443"]`, the agent's CLI with no endpoint
//! override, AWS's own host names resolved through blastgate (dnsmasq
//! answers them with moto's loopback address; nothing leaves the host).
//! With a role per session, `AssumeRole` goes to STS's own regional host,
//! not to the service host the agent's request went to. moto routes by
//! the signing scope where AWS routes by host, so STS's names resolve to
//! an address of their own, a counting TCP relay in front of moto: only
//! a call that went to STS's address passes through it.

mod harness;

use std::{
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use harness::{dnsmasq::Dnsmasq, moto::Moto, moto::VENV_BIN, sshd::output_within, *};

/// Where moto listens: AWS's port, an address of its own.
const MOTO_IP: &str = "127.0.0.47";
/// STS's address: the relay to moto.
const STS_IP: &str = "127.0.0.48";

/// The AWS names the CLI uses in us-east-1, and their addresses.
const NAMES: &[(&str, &str)] = &[
    (STS_IP, "sts.amazonaws.com"),
    (STS_IP, "sts.us-east-1.amazonaws.com"),
    (MOTO_IP, "ec2.us-east-1.amazonaws.com"),
    (MOTO_IP, "s3.amazonaws.com"),
    (MOTO_IP, "s3.us-east-1.amazonaws.com"),
];

/// A TCP relay from `STS_IP:443` to moto, counting connections. Its
/// threads end with the process (the test binary runs one test).
fn sts_relay() -> Arc<AtomicUsize> {
    let listener = TcpListener::bind((STS_IP, 443)).expect("bind the STS relay");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect((MOTO_IP, 443)) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                pipe(client, server);
                pipe(s2, c2);
            }
        }
    });
    count
}

#[test]
fn a_role_is_assumed_at_sts_own_host_for_amazonaws_targets() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    if !Moto::available() {
        return;
    }
    let moto = Moto::start_on(
        MOTO_IP,
        443,
        &["*.amazonaws.com", "*.us-east-1.amazonaws.com"],
    );
    let relayed = sts_relay();
    let zone: String = NAMES.iter().map(|(ip, n)| format!("{ip} {n}\n")).collect();
    let dns = Dnsmasq::start(&zone);
    let scratch = tempfile::tempdir().expect("tempdir");
    let secret = scratch.path().join("aws.secret");
    std::fs::write(&secret, format!("{}\n", moto.secret_access_key)).expect("secret");
    let policies = copy_shipped_policies(scratch.path());
    let env = Env::with_sections(
        "",
        &format!("upstreams = [\"{}\"]\n", dns.addr),
        &format!(
            "[policy]\ndir = \"{}\"\n\n\
             [[targets]]\nname = \"aws-prod\"\nprotocol = \"https\"\nhosts = [\"*.amazonaws.com:443\"]\n\
             labels = {{ env = \"production\" }}\n\n[targets.http]\nkind = \"aws\"\n\
             upstream_ca_file = \"{}\"\n\n[targets.http.aws]\nregion = \"us-east-1\"\n\
             access_key_id = \"{}\"\nsecret_access_key = {{ file = \"{}\" }}\n\
             assume_role_arn = \"{}\"\n",
            policies.display(),
            moto.ca.display(),
            moto.access_key_id,
            secret.display(),
            moto.role_arn,
        ),
    );
    let daemon = Daemon::start(&env);
    let aws = |args: &[&str]| -> String {
        let bin = format!("{VENV_BIN}/aws");
        let mut all = vec![bin.as_str(), "--region", "us-east-1"];
        all.extend_from_slice(args);
        let mut c = env.agent("claude", &all);
        c.env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_STS_REGIONAL_ENDPOINTS", "regional")
            .env("AWS_MAX_ATTEMPTS", "1");
        let out = output_within(&mut c, Duration::from_secs(120));
        let t = text(&out);
        assert!(
            out.status.success(),
            "aws {args:?}: {t}\n{}",
            daemon.log_text()
        );
        t
    };

    // EC2's host does not serve STS: the session's role is assumed at
    // sts.us-east-1.amazonaws.com (through the relay), then the call is
    // signed with it.
    let described = aws(&["ec2", "describe-instances"]);
    assert!(described.contains(&moto.instance_id), "{described}");
    assert!(
        relayed.load(Ordering::SeqCst) > 0,
        "AssumeRole did not go to STS's own address"
    );
    env.wait_event("a session to EC2's host name", |e| {
        e["kind"] == "session_opened"
            && e["target"] == "aws-prod"
            && e["dst_name"] == "ec2.us-east-1.amazonaws.com"
    });
    env.wait_event("the EC2 call decided", |e| {
        e["kind"] == "request"
            && e["action"] == "aws:ec2:DescribeInstances"
            && e["verdict"] == "allow"
    });
    // The identity the agent sees is the role's session, named for the
    // blastgate session.
    let who = aws(&["sts", "get-caller-identity"]);
    assert!(who.contains("assumed-role/agent-role/blastgate-"), "{who}");
    // S3 at its global host, with the role's credentials.
    aws(&["s3", "ls"]);
    env.wait_event("the S3 call decided by host name", |e| {
        e["kind"] == "request" && e["action"] == "aws:s3:ListBuckets" && e["verdict"] == "allow"
    });
    // The held key went upstream (moto answered as the role's user);
    // the agent never saw it.
    assert!(!who.contains(&moto.secret_access_key));
    assert!(!described.contains(&moto.access_key_id));
}

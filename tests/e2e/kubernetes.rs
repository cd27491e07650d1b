//! kubectl 1.37 as an agent under `blastgate run`, redirected by the
//! kernel into the HTTPS gateway, in front of the Kubernetes API stand-in
//! (tests/e2e/harness/kube.rs: recorded discovery, tables and objects
//! over HTTPS with its own CA). Full Kubernetes fidelity is tested against
//! that stand-in, not a live API server.
//!
//! The agent's kubeconfig names the cluster by its real address, holds a
//! token of its own and no CA: kubectl trusts blastgate's certificate only
//! through the `SSL_CERT_FILE` that `blastgate run` sets, and the stand-in
//! sees only the token blastgate holds.

mod harness;

use std::process::Output;

use harness::{
    kube::{follow_lines, LOG_INTERVAL},
    kube_gateway::{KubeGateway, KUBECTL_TIMEOUT},
    *,
};

fn setup() -> Option<KubeGateway> {
    KubeGateway::start("production")
}

/// `****`, base64-encoded: a masked Secret value as kubectl shows it.
const MASKED: &str = "KioqKg==";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn kubectl_reads_through_the_gateway_with_secrets_masked_and_logs_streaming() {
    let _g = serial();
    let Some(s) = setup() else { return };

    let pods = s.ok(&["get", "pods", "-n", "prod"]);
    assert!(pods.contains("web-1") && pods.contains("Running"), "{pods}");
    let seen = s.standin.requests();
    let last = seen.last().expect("a request");
    assert_eq!(last.path, "/api/v1/namespaces/prod/pods");
    // kubectl spoke h2 to blastgate; blastgate's own upstream connection
    // negotiates for itself.
    assert!(last.sni.as_deref() == Some("kube.internal"), "{last:?}");

    // The Secret: readable, its values masked (and still base64, so
    // kubectl's decoders keep working).
    let secret = |output: &str| {
        s.ok(&[
            "get",
            "secret",
            "db-credentials",
            "-n",
            "prod",
            "-o",
            output,
        ])
    };
    let yaml = secret("yaml");
    assert!(yaml.contains("kind: Secret"), "{yaml}");
    assert!(yaml.contains(&format!("password: {MASKED}")), "{yaml}");
    assert!(yaml.contains(&format!("username: {MASKED}")), "{yaml}");
    let decoded = secret("go-template={{ .data.password | base64decode }}");
    assert_eq!(decoded, "****");
    // The list too.
    let raw = s.ok(&["get", "--raw", "/api/v1/namespaces/prod/secrets"]);
    assert!(!raw.contains("czNj"), "{raw}");

    // A followed log arrives line by line, not at the end.
    let (lines, status) = follow_lines(
        s.kubectl(&["logs", "-f", "web-1", "-n", "prod"]),
        harness::kube::LOG_LINES,
        KUBECTL_TIMEOUT,
        || s.seen(),
    );
    assert!(status.success(), "{status}");
    assert_eq!(lines[0].0, "log line 1");
    let writes = s.standin.log_writes();
    let last_written = writes.last().expect("log writes").at;
    assert!(
        lines[0].1 < last_written,
        "the first line was read only after the last was written"
    );
    assert!(lines.last().expect("lines").1 - lines[0].1 >= LOG_INTERVAL);

    s.wait_request("an allowed list", |e| {
        e["action"] == "k8s:list" && e["status"] == 200 && e["verdict"] == "allow"
    });
    s.wait_request("a get with two fields masked", |e| {
        e["action"] == "k8s:get" && e["masked_fields"] == 2
    });
    s.assert_held_token_only();
}

#[test]
fn kubectl_writes_are_refused_held_and_recorded() {
    let _g = serial();
    let Some(s) = setup() else { return };
    // Discovery once, so the held requests below are the writes only.
    s.ok(&["get", "namespaces"]);

    let out = s.run(&["delete", "namespace", "dev"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Error from server (Forbidden)")
            && stderr(&out).contains("k8s-namespace-delete"),
        "{}",
        stderr(&out)
    );
    assert!(s.standin.object("namespaces", "", "dev").is_some());

    // A delete in production waits for a human: denied, nothing happens;
    // approved, the deployment goes.
    let (out, asked) = s.answered(&["delete", "deployment", "web", "-n", "prod"], "deny");
    assert!(!out.status.success());
    assert_eq!(asked, 1);
    assert!(
        stderr(&out).contains("k8s-production-delete"),
        "{}",
        stderr(&out)
    );
    assert!(s.standin.object("deployments", "prod", "web").is_some());
    let (out, _) = s.answered(&["delete", "deployment", "web", "-n", "prod"], "approve");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.standin.object("deployments", "prod", "web").is_none());

    // exec is held as a shell into a pod; denied, it never reaches the
    // cluster (kubectl asks twice: WebSocket, then SPDY).
    let (out, asked) = s.answered(&["exec", "web-1", "-n", "prod", "--", "id"], "deny");
    assert!(!out.status.success());
    assert!(asked >= 1);
    assert!(stderr(&out).contains("k8s-pod-shell"), "{}", stderr(&out));
    assert!(
        !s.standin
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/exec")),
        "exec reached the cluster:\n{}",
        s.seen()
    );
    // Approved, the upgrade goes to the cluster with the held token (the
    // stand-in itself answers exec with a 403 of its own).
    let (out, _) = s.answered(&["exec", "web-1", "-n", "prod", "--", "id"], "approve");
    assert!(
        stderr(&out).contains("exec is not supported by this stand-in"),
        "{}",
        stderr(&out)
    );
    let upgrades: Vec<String> = s
        .standin
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/exec"))
        .map(|r| format!("{} {}", r.method, r.header("upgrade").unwrap_or("-")))
        .collect();
    assert_eq!(upgrades, ["GET websocket", "POST SPDY/3.1"], "{}", s.seen());

    for policy in ["k8s-namespace-delete", "k8s-production-delete"] {
        s.wait_request(&format!("a delete refused by {policy}"), |e| {
            e["action"] == "k8s:delete" && e["policy_id"] == policy && e["status"] == 403
        });
    }
    s.wait_request("an allowed delete", |e| {
        e["action"] == "k8s:delete" && e["verdict"] == "allow" && e["status"] == 200
    });
    s.assert_held_token_only();
}

//! The Kubernetes API stand-in itself, driven by real kubectl 1.37
//! directly (no blastgate in the path): discovery in both forms, tables,
//! plain objects, deletes, scale, a followed log stream that arrives line
//! by line, exec refused without a hang, TLS names and ALPN, and clean-up
//! after a panic. If these pass, a failure in a gateway test that uses the
//! stand-in is the gateway's.

mod harness;

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use harness::{
    kube::{
        follow_lines, kubectl, kubectl_available, kubectl_ok, Discovery, KubeStandIn, LOG_INTERVAL,
        LOG_LINES,
    },
    sshd::{have_tools, output_within},
    wait_until,
};

const TOKEN: &str = "standin-token";

/// Generous: kubectl against a local server takes well under a second,
/// but the machine is shared with parallel tests and compilers.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// A stand-in and a kubeconfig for talking to it directly.
struct Setup {
    standin: KubeStandIn,
    kubeconfig: PathBuf,
}

impl Setup {
    fn new(discovery: Discovery) -> Option<Setup> {
        if !kubectl_available() {
            return None;
        }
        let standin = KubeStandIn::start_on("127.0.0.2", discovery);
        let kubeconfig = standin.direct_kubeconfig(TOKEN);
        Some(Setup {
            standin,
            kubeconfig,
        })
    }

    /// kubectl with a deadline: killed (by pid) and the test failed if it
    /// hangs.
    fn run(&self, args: &[&str]) -> Output {
        output_within(&mut kubectl(&self.kubeconfig, args), KUBECTL_TIMEOUT)
    }

    /// Runs kubectl, asserts it succeeded, returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        kubectl_ok(self.run(args), args, || {
            format!("requests:\n{}", self.requests_text())
        })
    }

    /// What the stand-in received, one request a line, for messages.
    fn requests_text(&self) -> String {
        self.standin
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "  {} {} accept={:?} content-type={:?}",
                    r.version,
                    r.line(),
                    r.header("accept"),
                    r.header("content-type")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every request carried the kubeconfig's token.
    fn assert_token_everywhere(&self) {
        let requests = self.standin.requests();
        assert!(!requests.is_empty(), "the stand-in saw no request");
        for r in &requests {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{}",
                r.line()
            );
        }
    }
}

/// Standard base64 with padding: the tests compute the encoding they
/// expect rather than trusting a copy of the fixture's.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn get_pods_and_a_secret_with_aggregated_discovery() {
    let Some(s) = Setup::new(Discovery::Aggregated) else {
        return;
    };
    let pods = s.ok(&["get", "pods", "-n", "prod"]);
    assert!(pods.contains("web-1") && pods.contains("web-2"), "{pods}");
    // Columns come from the server's Table, not from kubectl.
    assert!(pods.contains("Running") && pods.contains("1/1"), "{pods}");
    let requests = s.standin.requests();
    let lines: Vec<String> = requests.iter().map(|r| r.line()).collect();
    for path in ["/api", "/apis"] {
        let r = requests
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no discovery of {path}: {lines:?}"));
        assert!(
            r.header("accept")
                .is_some_and(|a| a.contains("as=APIGroupDiscoveryList")),
            "{:?}",
            r.header("accept")
        );
    }
    // kubectl took the aggregated answer: it fetched no per-group list.
    assert!(
        !requests
            .iter()
            .any(|r| r.path == "/api/v1" || r.path.starts_with("/apis/apps")),
        "{lines:?}"
    );
    let list = requests
        .iter()
        .find(|r| r.path == "/api/v1/namespaces/prod/pods")
        .unwrap_or_else(|| panic!("no pod list: {lines:?}"));
    assert_eq!(list.method, "GET");
    assert!(
        list.header("accept")
            .is_some_and(|a| a.starts_with("application/json;as=Table;v=v1;g=meta.k8s.io")),
        "{:?}",
        list.header("accept")
    );

    let yaml = s.ok(&[
        "get",
        "secret",
        "db-credentials",
        "-n",
        "prod",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains(&format!("password: {}", base64(b"s3cret-pw"))),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("username: {}", base64(b"app"))),
        "{yaml}"
    );
    assert!(yaml.contains("kind: Secret"), "{yaml}");
    let secret = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/namespaces/prod/secrets/db-credentials")
        .expect("the secret GET");
    assert_eq!(secret.header("accept"), Some("application/json"));
    s.assert_token_everywhere();
}

#[test]
fn kubectl_falls_back_to_legacy_discovery() {
    let Some(s) = Setup::new(Discovery::Legacy) else {
        return;
    };
    let out = s.ok(&["get", "deployments", "-n", "prod"]);
    assert!(out.contains("web") && out.contains("2/2"), "{out}");
    let out = s.ok(&["get", "pods", "-n", "prod", "-o", "name"]);
    assert_eq!(out, "pod/web-1\npod/web-2\n");
    let paths: Vec<String> = s
        .standin
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    for path in ["/api", "/apis", "/api/v1", "/apis/apps/v1"] {
        assert!(paths.iter().any(|p| p == path), "no {path}: {paths:?}");
    }
    s.assert_token_everywhere();
}

#[test]
fn scale_and_deletes_change_the_world() {
    let Some(s) = Setup::new(Discovery::Aggregated) else {
        return;
    };
    let out = s.ok(&["scale", "deployment", "web", "-n", "prod", "--replicas=0"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let deployment = s
        .standin
        .object("deployments", "prod", "web")
        .expect("deployment web");
    assert_eq!(deployment["spec"]["replicas"], 0);
    let scale = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/apis/apps/v1/namespaces/prod/deployments/web/scale")
        .unwrap_or_else(|| panic!("no scale request:\n{}", s.requests_text()));
    assert!(
        matches!(scale.method.as_str(), "PATCH" | "PUT"),
        "{scale:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&scale.body).expect("JSON body");
    assert_eq!(body["spec"]["replicas"], 0, "{}", scale.body_text());
    let out = s.ok(&["get", "deployment", "web", "-n", "prod"]);
    assert!(out.contains("0/0"), "{out}");

    let out = s.ok(&["delete", "namespace", "dev"]);
    assert!(out.contains("namespace \"dev\" deleted"), "{out}");
    assert!(s.standin.object("namespaces", "", "dev").is_none());
    let delete = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE" && r.path == "/api/v1/namespaces/dev")
        .unwrap_or_else(|| panic!("no DELETE:\n{}", s.requests_text()));
    assert!(
        delete.body_text().contains("propagationPolicy"),
        "{delete:?}"
    );
    let gone = s.run(&["get", "namespace", "dev"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("namespaces \"dev\" not found"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    // The other namespaces are still there.
    let out = s.ok(&["get", "namespaces", "-o", "name"]);
    assert!(
        out.contains("namespace/prod") && !out.contains("dev"),
        "{out}"
    );

    let out = s.ok(&["delete", "deployment", "web", "-n", "prod"]);
    assert!(out.contains("\"web\" deleted"), "{out}");
    assert!(s.standin.object("deployments", "prod", "web").is_none());
    s.assert_token_everywhere();
}

/// Kills a client on drop (by its pid, through `Child`), so a test that
/// fails half-way leaves no kubectl behind.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn followed_logs_arrive_line_by_line() {
    let Some(s) = Setup::new(Discovery::Aggregated) else {
        return;
    };
    let (lines, status) = follow_lines(
        kubectl(&s.kubeconfig, &["logs", "-f", "web-1", "-n", "prod"]),
        LOG_LINES,
        KUBECTL_TIMEOUT,
        || format!("requests:\n{}", s.requests_text()),
    );
    assert!(status.success(), "{status}");

    let text: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    let expected: Vec<String> = (1..=LOG_LINES).map(|i| format!("log line {i}")).collect();
    assert_eq!(text, expected);
    let writes = s.standin.log_writes();
    assert_eq!(writes.len(), LOG_LINES, "{writes:?}");
    assert!(writes
        .iter()
        .all(|w| w.pod == "web-1" && w.namespace == "prod"));
    let last_written = writes.last().expect("a write").at;
    let first_read = lines[0].1;
    let last_read = lines[LOG_LINES - 1].1;
    // The test had the first line before the server wrote the last one:
    // the stream was not buffered to the end anywhere on the way.
    assert!(
        first_read < last_written,
        "first line read {:?} after the last was written",
        first_read - last_written
    );
    assert!(
        last_read - first_read >= LOG_INTERVAL,
        "lines arrived within {:?}",
        last_read - first_read
    );
    let log = s
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/namespaces/prod/pods/web-1/log")
        .expect("the log request");
    assert_eq!(log.query_param("follow").as_deref(), Some("true"));
    s.assert_token_everywhere();
}

#[test]
fn exec_is_refused_cleanly() {
    let Some(s) = Setup::new(Discovery::Aggregated) else {
        return;
    };
    let started = Instant::now();
    let out = s.run(&["exec", "web-1", "-n", "prod", "--", "ls"]);
    assert!(!out.status.success(), "exec succeeded?");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exec is not supported by this stand-in"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let upgrades: Vec<String> = s
        .standin
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/prod/pods/web-1/exec")
        .map(|r| {
            format!(
                "{} {} {}",
                r.version,
                r.method,
                r.header("upgrade").unwrap_or("-")
            )
        })
        .collect();
    // WebSocket first, then the SPDY fallback; both over HTTP/1.1.
    assert_eq!(
        upgrades,
        ["HTTP/1.1 GET websocket", "HTTP/1.1 POST SPDY/3.1"],
        "\n{}",
        s.requests_text()
    );
    s.assert_token_everywhere();
}

/// curl with the stand-in's CA, reaching it by its DNS name.
fn curl(s: &KubeStandIn, extra: &[&str], path: &str) -> Output {
    let port = s.addr().port();
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("kube.internal:{port}:{}", s.addr().ip()))
        .args(extra)
        .arg(format!("https://kube.internal:{port}{path}"))
        .output()
        .expect("run curl")
}

#[test]
fn tls_names_alpn_and_unknown_paths() {
    let Some(s) = Setup::new(Discovery::Aggregated) else {
        return;
    };
    if !have_tools(&["curl"]) {
        return;
    }
    let ca = s.standin.ca_file().to_str().expect("utf-8").to_string();
    let out = curl(&s.standin, &["--cacert", &ca], "/nope");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').expect("status line");
    assert_eq!(tail, "404 2");
    let status: serde_json::Value = serde_json::from_str(body).expect("Status JSON");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    let r = s.standin.requests().pop().expect("a request");
    assert_eq!(r.sni.as_deref(), Some("kube.internal"));
    assert_eq!(r.alpn.as_deref(), Some("h2"));
    assert_eq!(r.version, "HTTP/2.0");

    let out = curl(&s.standin, &["--cacert", &ca, "--http1.1"], "/version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("200 1.1"), "{text}");
    assert!(text.contains("\"gitVersion\""), "{text}");
    let r = s.standin.requests().pop().expect("a request");
    assert_eq!(
        (r.version.as_str(), r.alpn.as_deref()),
        ("HTTP/1.1", Some("http/1.1"))
    );
    assert_eq!(
        r.authority.as_deref(),
        Some(format!("kube.internal:{}", s.standin.addr().port()).as_str())
    );

    // Its own CA: a client trusting anything else refuses it.
    let out = curl(&s.standin, &[], "/version");
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl reports a 404 Status as NotFound.
    let out = s.run(&["get", "--raw", "/nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Only the requested address listens.
    assert!(TcpStream::connect(s.standin.addr()).is_ok());
    let other = format!("127.0.0.1:{}", s.standin.addr().port());
    assert!(TcpStream::connect_timeout(&other.parse().unwrap(), Duration::from_secs(2)).is_err());
}

#[test]
fn drop_stops_the_server_and_removes_its_directory_even_after_a_panic() {
    if !kubectl_available() {
        return;
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_path = out_dir.path().join("logs.out");
    let mut seen = None;
    let mut client = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let s = KubeStandIn::start();
        let kubeconfig = s.direct_kubeconfig(TOKEN);
        seen = Some((s.dir().to_path_buf(), s.addr()));
        // A stream still open when the server goes.
        let out = std::fs::File::create(&out_path).expect("create logs.out");
        let mut c = kubectl(&kubeconfig, &["logs", "-f", "web-1", "-n", "prod"]);
        c.stdin(Stdio::null()).stdout(out).stderr(Stdio::null());
        client = Some(Client(c.spawn().expect("spawn kubectl logs")));
        wait_until(KUBECTL_TIMEOUT, || {
            (!s.log_writes().is_empty()).then_some(())
        })
        .expect("the log stream started");
        panic!("a test fails while a stream is open");
    }));
    assert!(result.is_err());
    let (dir, addr) = seen.expect("the stand-in started");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    // The stream was cut, not left hanging: kubectl ends by itself, with
    // only the lines written before the drop.
    let mut client = client.expect("kubectl started");
    let ended = wait_until(Duration::from_secs(20), || {
        client.0.try_wait().ok().flatten()
    });
    assert!(ended.is_some(), "kubectl logs -f still running");
    let printed = std::fs::read_to_string(&out_path).expect("read logs.out");
    assert!(
        printed.lines().count() < LOG_LINES,
        "the whole stream arrived after the drop:\n{printed}"
    );
}

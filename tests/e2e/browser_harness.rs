//! The browser the console tests drive (harness/browser.rs: Debian's
//! headless Chromium under Selenium, tests/e2e/browser/drive.py), checked
//! on its own with no daemon and no kernel: a login through the real
//! OpenID Provider's login page to a callback, a page that changes without
//! a reload, failures reported with the page and a screenshot, a timeout
//! that leaves no process behind, and HTTPS trusted through a test CA (not
//! by ignoring certificate errors). If these pass, a failing console test
//! is the console's.
//!
//! Screenshots are kept in `target/browser-harness/` for a look by eye.

mod harness;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use base64::Engine;
use harness::{
    browser::{describe_failure, Browser},
    https_upstream::HttpsUpstream,
    oidc::{decode_claims, form_encode, pkce_pair, Provider},
};
use serde_json::{json, Value};

/// Where screenshots stay after the run (the rest of a run's artifacts
/// go with its temporary directory).
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-harness");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// A stand-in for the console on 127.0.0.1: `/callback` shows the code and
/// state the provider redirected with; `/live` changes its heading by
/// script a second after loading, as a console does when a request is
/// held. Every request line is kept.
struct Site {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Site {
    fn start() -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, done) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen.clone();
                // One thread per connection: Chromium opens spare sockets
                // it may never send on.
                std::thread::spawn(move || serve(conn, &seen));
            }
        });
        Site {
            port,
            requests,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
    seen.lock()
        .expect("lock")
        .push(head.lines().next().unwrap_or_default().to_string());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| escape(v))
            .unwrap_or_default()
    };
    let (status, body) = match path {
        "/callback" => (
            "200 OK",
            format!(
                "<!doctype html><html><head><title>Signed in</title></head><body>\
                 <h1>Signed in</h1><p>code: <code id=\"code\">{}</code></p>\
                 <p>state: <code id=\"state\">{}</code></p></body></html>",
                param("code"),
                param("state")
            ),
        ),
        "/live" => ("200 OK", LIVE.to_string()),
        _ => ("404 Not Found", "not here".to_string()),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const LIVE: &str = r#"<!doctype html>
<html><head><title>Live</title></head>
<body style="font-family: sans-serif">
<h1 id="status">Waiting for held requests</h1>
<script>
setTimeout(() => {
  document.getElementById("status").textContent = "Held: DELETE FROM orders";
}, 1000);
</script>
</body></html>"#;

/// A random hex string (PKCE verifiers are 64 random hex digits).
fn random_token() -> String {
    pkce_pair().0[..16].to_string()
}

/// `v[key]` is a string that contains `needle`.
#[track_caller]
fn assert_contains(v: &Value, key: &str, needle: &str) {
    assert!(
        v[key].as_str().is_some_and(|t| t.contains(needle)),
        "{key} should contain {needle:?}: {v}"
    );
}

/// No process mentions `dir` on its command line any more: drive.py,
/// chromedriver (its log) and Chromium (its profile) all have gone.
fn nothing_left_of(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            left.push(format!("{} {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    left
}

#[test]
fn logs_in_through_the_providers_page_and_sees_a_page_change_without_reload() {
    if !Browser::available() {
        return;
    }
    let site = Site::start();
    let redirect = site.url("/callback");
    let Some(provider) = Provider::start_with_redirect(&redirect) else {
        return;
    };
    let (verifier, challenge) = pkce_pair();
    let (state, nonce) = (random_token(), random_token());
    let auth = provider.authorization_url(&redirect, &state, &nonce, &challenge);
    let artifacts = tempfile::tempdir().expect("tempdir");
    let shots = screenshots();
    let cookies = artifacts.path().join("cookies.json");
    let steps = json!([
        {"open": auth},
        {"wait_selector": {"css": "input[name=login]"}},
        {"screenshot": shots.join("login.png")},
        {"login": {"user": "alice", "password": "any"}},
        {"wait_url": {"contains": redirect}},
        {"wait_selector": {"css": "#code"}},
        {"eval": "document.getElementById('code').textContent"},
        {"eval": "document.getElementById('state').textContent", "expect": state},
        {"cookies": cookies},
        {"screenshot": shots.join("callback.png")},
        {"open": site.url("/live")},
        {"assert_text": "Waiting for held requests"},
        {"assert_no_text": "Held: DELETE"},
        // Survives only if the page is never reloaded.
        {"eval": "window.marker = 'same page'"},
        {"wait_text": {"text": "Held: DELETE FROM orders", "timeout": 10}},
        {"eval": "window.marker", "expect": "same page"},
        {"assert_no_text": "Waiting for held requests"},
        {"screenshot": shots.join("live.png")},
    ]);
    let results = Browser::default().run_ok(&steps, artifacts.path());
    assert_eq!(results.len(), steps.as_array().expect("list").len());

    // The browser landed on the callback with the provider's code…
    let code = results[6]["value"].as_str().expect("the code on the page");
    assert!(code.len() > 20, "code {code:?}");
    let callback = format!("GET /callback?code={code}&state={state}");
    assert!(
        site.requests().iter().any(|r| r.starts_with(&callback)),
        "the callback request: {:?}",
        site.requests()
    );
    // …which is a real one: it redeems, with the PKCE verifier, for alice's
    // ID token with her group.
    let (id, secret) = provider.login_client();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    let form = form_encode(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &redirect),
        ("code_verifier", &verifier),
    ]);
    let r = provider.request(
        "POST",
        "/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &format!("Basic {basic}")),
        ],
        Some(&form),
    );
    assert_eq!(r.status, 200, "code exchange: {}", r.body);
    let claims = decode_claims(r.json()["id_token"].as_str().expect("id_token"));
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["nonce"], nonce.as_str(), "{claims}");
    assert_eq!(claims["groups"], json!(["dba"]), "{claims}");

    // Cookies come with their flags (the provider's session cookie is
    // HttpOnly; the host is 127.0.0.1 on any port).
    let saved: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&cookies).expect("cookies.json")).expect("json");
    assert_eq!(json!(saved), results[8]["cookies"]);
    assert!(
        saved.iter().any(|c| c["httpOnly"] == true
            && c["sameSite"].is_string()
            && c["secure"].is_boolean()),
        "cookies: {saved:?}"
    );
    for shot in ["login.png", "callback.png", "live.png"] {
        let png = std::fs::read(shots.join(shot)).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{shot}");
    }
    assert_eq!(nothing_left_of(artifacts.path()), Vec::<String>::new());
}

#[test]
fn a_failed_step_reports_the_page_and_a_screenshot() {
    if !Browser::available() {
        return;
    }
    let site = Site::start();
    let artifacts = tempfile::tempdir().expect("tempdir");
    let steps = json!([
        {"open": site.url("/live")},
        {"wait_text": {"text": "Held: DELETE", "timeout": 10}},
        {"assert_text": "Approved by alice"},
        {"open": site.url("/never")},
    ]);
    let v = Browser::default().run_steps(&steps, artifacts.path());
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["step"], 2, "{v}");
    assert_eq!(v["op"], "assert_text", "{v}");
    assert_eq!(v["url"], site.url("/live").as_str(), "{v}");
    assert_contains(&v, "error", "Approved by alice");
    assert_contains(&v, "page_text", "Held: DELETE FROM orders");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(2), "{v}");
    let shot = v["screenshot"].as_str().expect("a failure screenshot");
    assert!(
        Path::new(shot).starts_with(artifacts.path()) && Path::new(shot).exists(),
        "{v}"
    );
    assert!(describe_failure(&v, &steps).contains("Approved by alice"));
    // The step after the failure never ran.
    assert!(!site.requests().iter().any(|r| r.contains("/never")));

    // A wait that runs out says what it waited for.
    let v = Browser::default().run_steps(
        &json!([
            {"open": site.url("/live")},
            {"wait_text": {"text": "never shown", "timeout": 1}},
        ]),
        artifacts.path(),
    );
    assert_eq!(
        (v["ok"].clone(), v["step"].clone()),
        (json!(false), json!(1))
    );
    assert_contains(&v, "error", "timed out after 1.0 s");
    assert_contains(&v, "error", "never shown");
    assert_eq!(nothing_left_of(artifacts.path()), Vec::<String>::new());
}

#[test]
fn a_script_past_its_timeout_is_killed_with_its_browser() {
    if !Browser::available() {
        return;
    }
    let site = Site::start();
    let artifacts = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let v = Browser::default()
        .timeout(Duration::from_secs(8))
        .run_steps(
            &json!([{"open": site.url("/live")}, {"sleep_ms": 120_000}]),
            artifacts.path(),
        );
    assert_eq!(v["ok"], false, "{v}");
    assert_contains(&v, "error", "timed out");
    assert!(started.elapsed() < Duration::from_secs(30), "{v}");
    // The browser was up (the page was fetched) and is gone now.
    assert!(site.requests().iter().any(|r| r.starts_with("GET /live")));
    let left = wait_for_empty(|| nothing_left_of(artifacts.path()));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Chromium's crashpad handler leaves its own session on its own; give it
/// a moment.
fn wait_for_empty(f: impl Fn() -> Vec<String>) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = f();
        if v.is_empty() || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTPS page for the CA check, on 127.0.0.2 as `billing.internal`.
const TLS_SERVER: &str = r#"
import ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        body = b"<!doctype html><title>TLS</title><h1>served over TLS</h1>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

addr, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
srv = HTTPServer((addr, port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

#[test]
fn trusts_https_through_a_test_ca_not_by_ignoring_errors() {
    if !Browser::available() {
        return;
    }
    let up = HttpsUpstream::start(TLS_SERVER);
    let url = format!("https://billing.internal:{}/", up.port);
    let artifacts = tempfile::tempdir().expect("tempdir");
    let browser = Browser::default().map_host("billing.internal", "127.0.0.2");

    // Without the CA, Chromium refuses the certificate.
    let steps = json!([
        {"open": url},
        {"wait_text": {"text": "served over TLS", "timeout": 3}},
    ]);
    let v = browser.run_steps(&steps, artifacts.path());
    assert_eq!(
        (v["ok"].clone(), v["step"].clone()),
        (json!(false), json!(1))
    );
    assert_contains(&v, "page_text", "ERR_CERT_AUTHORITY_INVALID");

    // With it (and nothing ignored), the page loads in a secure context.
    let shot = screenshots().join("tls.png");
    let results = browser.clone().ca_file(&up.ca).run_ok(
        &json!([
            {"open": url},
            {"wait_text": "served over TLS"},
            {"eval": "window.isSecureContext", "expect": true},
            {"eval": "location.protocol", "expect": "https:"},
            {"screenshot": shot},
        ]),
        artifacts.path(),
    );
    assert_eq!(results[0]["url"], url.as_str());

    // Names resolve only as mapped: any other fails in the browser,
    // before any DNS query leaves.
    let v = browser.run_steps(
        &json!([{"open": "http://unmapped.test/"}]),
        artifacts.path(),
    );
    assert_eq!(
        (v["ok"].clone(), v["step"].clone()),
        (json!(false), json!(0))
    );
    assert_contains(&v, "error", "ERR_NAME_NOT_RESOLVED");
}

//! The HTTPS gateway against a real local HTTPS API (Python's http.server
//! behind its own CA), with curl, python requests and node fetch as
//! agents under `blastgate run`, every agent redirected by the kernel.

mod harness;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use harness::{
    https_upstream::{HttpsUpstream, PYTHON},
    sshd::output_within,
    *,
};

/// The upstream API: echoes what it received as JSON, with a customer
/// email for masking; `/stream` sends lines 300 ms apart, one with a
/// bearer token in it; `Upgrade: echo` switches to a line echo.
const SERVER: &str = r#"
import base64, gzip, hashlib, html, json, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def answer(self):
        if self.headers.get("upgrade") == "echo":
            # A line protocol after the switch: each line back in capitals.
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.send_header("X-Authorization-Sha256", hashlib.sha256(
                (self.headers.get("authorization") or "").encode()).hexdigest())
            self.end_headers()
            self.wfile.flush()
            for line in self.rfile:
                self.wfile.write(line.upper())
                self.wfile.flush()
            self.close_connection = True
            return
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        if self.path.startswith("/debug/"):
            # Request inspectors: the request head as received (with the
            # credential blastgate injected), in bodies masking never reads.
            head = (self.requestline + "\r\n" + str(self.headers)).encode()
            kind = self.path.split("/")[2].split("?")[0]
            ctype, extra, out = "application/octet-stream", [], head
            if kind == "raw":
                out = b"\x00\x01binary\xff" + head
            elif kind == "html":
                ctype, out = "text/html", b"<pre>" + html.escape(head.decode()).encode() + b"</pre>"
            elif kind.startswith("base64-"):
                out = base64.b64encode(b"x" * int(kind[7:]) + head)
            elif kind == "hex":
                out = head.hex().encode()
            elif kind == "gzip":
                ctype, extra, out = "text/plain", [("content-encoding", "gzip")], gzip.compress(head)
            elif kind == "unknown-coding":
                extra = [("content-encoding", "x-scramble")]
            elif kind == "header":
                extra, out = [("x-echo-authorization", self.headers.get("authorization") or "")], b"see headers"
            if kind == "reason":
                # The credential in the status line's reason phrase.
                self.send_response(401, "bad credential " + (self.headers.get("authorization") or ""))
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if kind == "split":
                # One byte per chunk, so the credential spans many chunks.
                self.send_response(200)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for b in head:
                    self.wfile.write(b"1\r\n%s\r\n" % bytes([b]))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_response(200)
            self.send_header("content-type", ctype)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(3):
                line = ("line %d%s\n" % (i, " auth=Bearer eyLogToken0123456789abcdef" if i == 1 else "")).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/v1/export"):
            # One customer in whatever form the client asks for, as APIs
            # with content negotiation answer.
            accept = self.headers.get("accept") or ""
            fmt = self.path.split("?format=")[1] if "?format=" in self.path else ""
            status, ctype = 200, "application/json"
            out = json.dumps({"customer": {"email": "alice@example.com", "name": "Alice"}}).encode()
            if fmt == "missing":
                status, ctype, out = 404, "text/html", b"<p>no customer alice@example.com</p>"
            elif fmt == "ndjson-csv":
                ctype = "application/x-ndjson"
                out = b'{"customer":{"email":"alice@example.com"}}\nemail,name\nalice@example.com,Alice\n'
            elif fmt == "none":
                ctype, out = None, b"email,name\nalice@example.com,Alice\n"
            elif fmt == "octets":
                ctype, out = "application/octet-stream", b"\x00email=alice@example.com"
            elif fmt == "csv" or "text/csv" in accept:
                ctype, out = "text/csv", b"email,name\nalice@example.com,Alice\n"
            elif "application/yaml" in accept:
                ctype, out = "application/yaml", b"customer:\n  email: alice@example.com\n  name: Alice\n"
            self.send_response(status)
            if ctype:
                self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)
            return
        if self.path.startswith("/v1/file") or self.path.startswith("/v1/blob"):
            # A stored JSON document served as file servers and object
            # stores (nginx, S3, Go's ServeContent) serve one: whole, or the
            # byte ranges asked for (RFC 9110 14), several as multipart.
            # /v1/blob: a binary object (an archive, a model file).
            out = json.dumps({"customer": {"email": "alice@example.com", "name": "Alice",
                                           "card": "4111111111111111"}}).encode()
            blob = self.path.startswith("/v1/blob")
            if blob:
                out = bytes(range(256)) * 64
            spans = []
            asked = self.headers.get("range") or ""
            if asked.startswith("bytes="):
                for r in asked[6:].split(","):
                    a, b = r.strip().split("-")
                    a, b = (int(a), min(int(b), len(out) - 1) if b else len(out) - 1) if a \
                        else (len(out) - int(b), len(out) - 1)
                    spans.append((a, b))
            status, ctype, extra = 200, "application/octet-stream" if blob else "application/json", []
            if len(spans) == 1:
                a, b = spans[0]
                status, extra, out = 206, [("content-range", "bytes %d-%d/%d" % (a, b, len(out)))], out[a:b + 1]
            elif spans:
                parts = b"".join(b"--SEP\r\nContent-Type: application/json\r\n"
                                 b"Content-Range: bytes %d-%d/%d\r\n\r\n%s\r\n" % (a, b, len(out), out[a:b + 1])
                                 for a, b in spans)
                status, ctype, out = 206, "multipart/byteranges; boundary=SEP", parts + b"--SEP--\r\n"
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("accept-ranges", "bytes")
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if self.path.startswith("/v1/etag"):
            # A JSON answer with the validator Rack::ETag (Rails, Sinatra)
            # computes: a hash of the body as sent (Express: SHA-1, Spring's
            # ShallowEtagHeaderFilter and S3: MD5, Django: MD5).
            out = json.dumps({"customer": {"email": "alice@example.com", "name": "Alice"}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("etag", 'W/"%s"' % hashlib.sha256(out).hexdigest()[:32])
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)
            return
        if self.path.startswith("/v1/login"):
            # A login answered as Express, Rails and ASP.NET apps answer
            # one: the session JWT in a cookie, a header and the body.
            jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZw"
            out = json.dumps({"ok": True, "token": jwt}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("set-cookie", "session=" + jwt + "; HttpOnly; Secure")
            self.send_header("x-auth-token", jwt)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if self.path.startswith("/lenient/"):
            # What Python's json reads and serde_json does not, around the
            # field the test's rule masks by path.
            kind = self.path.split("/")[2]
            doc = {"customer": {"email": "alice@example.com", "name": "Alice"}}
            if kind == "nan":
                doc["score"] = float("nan")
            elif kind == "surrogate":
                doc["note"] = "\ud800"
            out = json.dumps(doc).encode()
            if kind == "bom":
                out = b"\xef\xbb\xbf" + out
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        out = json.dumps({
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("authorization"),
            "authorization_sha256": hashlib.sha256((self.headers.get("authorization") or "").encode()).hexdigest(),
            "cookie": self.headers.get("cookie"),
            "body": body,
            "customer": {"email": "alice@example.com", "name": "Alice"},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = answer
    def do_TRACE(self):
        # What TRACE is for: the request, echoed as received.
        head = (self.requestline + "\r\n" + str(self.headers)).encode()
        self.send_response(200)
        self.send_header("content-type", "message/http")
        self.send_header("content-length", str(len(head)))
        self.end_headers()
        self.wfile.write(head)

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

const TOKEN: &str = "s3cr3t-upstream-token";

struct Setup {
    up: HttpsUpstream,
    env: Env,
    daemon: Daemon,
    _scratch: tempfile::TempDir,
}

/// The API behind blastgate with `unmaskable = "scan"`: most tests here
/// read its streams and non-JSON bodies (echoes of the request, text),
/// which the default refuses under the target's JSON path rule.
/// [`strict_setup`] runs at the default.
fn setup() -> Option<Setup> {
    setup_with("unmaskable = \"scan\"\n")
}

/// The API behind blastgate with its `[targets.http]` at the defaults.
fn strict_setup() -> Option<Setup> {
    setup_with("")
}

/// `settings`: lines added to the target's `[targets.http]`.
fn setup_with(settings: &str) -> Option<Setup> {
    if !kernel_ready() {
        return None;
    }
    if !Path::new(PYTHON).exists() {
        blastgate::testing::skip("the tools venv is missing (cargo xtask setup creates it)");
        return None;
    }
    let up = HttpsUpstream::start(SERVER);
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path();
    let token = scratch.join("billing.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    // The shipped policies, plus a masking rule and two request rules for
    // this API.
    let policies = copy_shipped_policies(scratch);
    let mut masking = std::fs::read_to_string(policies.join("masking.toml")).expect("masking");
    masking += "\n[[field]]\nid = \"billing-pii\"\ntargets = [\"billing-api\"]\njson_paths = [\"$.customer.email\"]\nstyle = \"hash\"\n";
    std::fs::write(policies.join("masking.toml"), masking).expect("masking");
    // Upgrades stay refused, but for one WebSocket-style endpoint.
    let http = std::fs::read_to_string(policies.join("http.cedar")).expect("http.cedar");
    let opened = http.replace(
        "Action::\"http:UPGRADE\"],\n  resource\n);",
        "Action::\"http:UPGRADE\"],\n  resource\n)\nunless { context.path == \"/v1/echo\" };",
    );
    assert_ne!(opened, http, "http.cedar changed shape: update this test");
    std::fs::write(policies.join("http.cedar"), opened).expect("http.cedar");
    std::fs::write(
        policies.join("billing.cedar"),
        "@id(\"billing-no-invoice-delete\")\n@reason(\"invoices are never deleted by agents\")\n\
         forbid (principal, action == Action::\"http:DELETE\", resource)\n\
         when { context.path like \"/v1/invoices*\" };\n\n\
         @id(\"billing-refunds-held\")\n@reason(\"refunds need a human\")\n@approval(\"finance\")\n\
         forbid (principal, action == Action::\"http:POST\", resource)\n\
         when { context.path == \"/v1/refunds\" };\n",
    )
    .expect("billing.cedar");
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n[approvals]\ntimeout_ms = 60000\n\n\
         [[targets]]\nname = \"billing-api\"\nprotocol = \"https\"\naddress = \"127.0.0.2:{}\"\n\
         hostnames = [\"billing.internal\"]\n\n[targets.http]\n\
         inject_headers = {{ Authorization = {{ file = \"{}\", prefix = \"Bearer \" }} }}\n\
         upstream_ca_file = \"{}\"\nserver_name = \"billing.internal\"\nrecord_body_bytes = 4096\n{settings}",
        policies.display(),
        up.port,
        token.display(),
        up.ca.display(),
    ));
    let daemon = Daemon::start(&env);
    Some(Setup {
        up,
        env,
        daemon,
        _scratch: scratch_dir,
    })
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("https://billing.internal:{}{path}", self.up.port)
    }

    /// curl as an agent; billing.internal resolves to the API's address.
    fn curl(&self, args: &[&str]) -> Output {
        let resolve = format!("billing.internal:{}:127.0.0.2", self.up.port);
        let mut c = self
            .env
            .agent("claude", &["curl", "-sS", "--resolve", &resolve]);
        c.args(args);
        output_within(&mut c, Duration::from_secs(60))
    }
}

/// What the API sees in Authorization when blastgate injected the token,
/// hashed as the API echoes it.
fn injected() -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("Bearer {TOKEN}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Setup {
    /// curl as an agent whose request is held: a human answers it with
    /// `verb` (approve or deny); what curl got, and the approval id.
    fn curl_answered(&self, args: &[&str], verb: &str) -> (Output, String) {
        let resolve = format!("billing.internal:{}:127.0.0.2", self.up.port);
        let child = self
            .env
            .agent("claude", &["curl", "-sS", "--resolve", &resolve])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        let id = self.env.pending_approval();
        self.env.answer_approval(verb, &id);
        (child.wait_with_output().expect("curl"), id)
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn https_requests_get_the_held_token_policy_and_masking() {
    let _g = serial();
    let Some(s) = setup() else { return };
    // h2 and http/1.1, with the trust `blastgate run` sets up (no --cacert).
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = s.curl(&[
            flag,
            "-H",
            "Authorization: Bearer the-agents-own-token",
            "-H",
            "Cookie: session=agent",
            "-w",
            "\n%{http_version}",
            &s.url("/v1/invoices?limit=2"),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        let (doc, got_version) = body.rsplit_once('\n').expect("version line");
        assert_eq!(got_version, version, "{body}");
        let doc: serde_json::Value = serde_json::from_str(doc).expect("json");
        assert_eq!(doc["authorization_sha256"], injected(), "{doc}");
        // Echoed back, the token itself is masked: no response carries it.
        assert_eq!(doc["authorization"], "****", "{doc}");
        assert!(
            doc["cookie"].is_null(),
            "the agent's cookie is stripped: {doc}"
        );
        assert_eq!(doc["path"], "/v1/invoices?limit=2");
        let email = doc["customer"]["email"].as_str().expect("email");
        assert!(email.starts_with("hash:"), "masked: {doc}");
        assert_eq!(doc["customer"]["name"], "Alice");
    }

    // python requests and node fetch, with only the environment blastgate
    // run sets: same token upstream, same masking.
    let url = s.url("/v1/customers/1");
    let resolve_py = format!(
        "import socket\n_orig = socket.getaddrinfo\n\
         socket.getaddrinfo = lambda h, *a, **k: _orig('127.0.0.2' if h == 'billing.internal' else h, *a, **k)\n\
         import requests\nprint(requests.get({url:?}).text)\n"
    );
    let mut py = s.env.agent("claude", &[PYTHON, "-c", &resolve_py]);
    let out = output_within(&mut py, Duration::from_secs(60));
    assert!(out.status.success(), "python requests: {}", text(&out));
    let doc = json(&out);
    assert_eq!(doc["authorization_sha256"], injected(), "{doc}");
    assert!(doc["customer"]["email"]
        .as_str()
        .is_some_and(|e| e.starts_with("hash:")));
    let node = format!(
        "const dns = require('dns'); const orig = dns.lookup;\n\
         dns.lookup = (h, o, cb) => orig(h === 'billing.internal' ? '127.0.0.2' : h, o, cb);\n\
         fetch({url:?}).then(r => r.text()).then(t => console.log(t)).catch(e => {{ console.error(e); process.exit(1); }});\n"
    );
    let mut c = s.env.agent("claude", &["node", "-e", &node]);
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "node fetch: {}", text(&out));
    assert_eq!(json(&out)["authorization_sha256"], injected());

    // Denied: 403 with the policy in JSON; nothing reaches the API.
    let out = s.curl(&[
        "-X",
        "DELETE",
        "-w",
        "\n%{http_code}",
        &s.url("/v1/invoices/7"),
    ]);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    let (doc, code) = body.rsplit_once('\n').expect("code line");
    assert_eq!(code, "403", "{body}");
    let doc: serde_json::Value = serde_json::from_str(doc).expect("json");
    assert_eq!(doc["policy"], "billing-no-invoice-delete", "{doc}");

    // Held, approved, sent.
    let url = s.url("/v1/refunds");
    let (out, _) = s.curl_answered(&["-d", "{\"amount\":5}", &url], "approve");
    let doc = json(&out);
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["body"], "{\"amount\":5}");

    // A Host that is not the name the TLS connection was made for: 421.
    let out = s.curl(&[
        "--http1.1",
        "-H",
        "Host: other.internal",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &s.url("/v1/invoices"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "421",
        "{}",
        text(&out)
    );

    // CONNECT through the target: refused by policy, not tunnelled.
    let target = format!("billing.internal:{}", s.up.port);
    let out = s.curl(&[
        "--http1.1",
        "-X",
        "CONNECT",
        "--request-target",
        &target,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &s.url("/"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "{}",
        text(&out)
    );

    // A chunked response arrives as it is written, not at the end, masked
    // a line at a time.
    let started = std::time::Instant::now();
    let out = s.curl(&["-N", "-w", "\n%{time_starttransfer}", &s.url("/stream")]);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        body.starts_with("line 0\nline 1 auth=****\nline 2\n"),
        "{body}"
    );
    let first_byte: f64 = body
        .rsplit_once('\n')
        .and_then(|(_, t)| t.trim().parse().ok())
        .expect("time_starttransfer");
    assert!(
        first_byte < started.elapsed().as_secs_f64() - 0.4,
        "the first line came with the last: {first_byte}s of {:?}",
        started.elapsed()
    );

    // The records: one per request, with status; the token in none of
    // them nor in the log. An answered request's record, and its body
    // excerpts after it, are written once its body is done, after the
    // agent has it: each is waited for.
    let request = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        s.env
            .wait_event(what, |e| e["kind"] == "request" && pred(e));
    };
    request("the refused DELETE", &|e| {
        e["action"] == "http:DELETE"
            && e["verdict"] == "deny"
            && e["status"] == 403
            && e["policy_id"] == "billing-no-invoice-delete"
    });
    request("the 421", &|e| e["status"] == 421 && e["verdict"] == "deny");
    // The email by its JSON path, the echoed token by the bearer detector.
    request("the GET with two fields masked", &|e| {
        e["action"] == "http:GET" && e["status"] == 200 && e["masked_fields"] == 2
    });
    request("the stream with one field masked", &|e| {
        e["text"].as_str().is_some_and(|t| t.ends_with("/stream")) && e["masked_fields"] == 1
    });
    request("the refused CONNECT", &|e| {
        e["action"] == "http:CONNECT" && e["policy_id"] == "http-no-tunnels" && e["status"] == 403
    });
    // Body excerpts, masked as the agent saw them: the refund asked for,
    // and answers with the email hashed.
    let io = |what: &str, stream: &str, pred: &dyn Fn(&str) -> bool| {
        s.env.wait_event(what, |e| {
            e["kind"] == "io"
                && e["io"]["stream"] == stream
                && e["io"]["data"].as_str().is_some_and(pred)
        });
    };
    io("the refund's excerpt", "i", &|d| d == "{\"amount\":5}");
    // Read as JSON: masked values are rewritten in place and the rest
    // keeps the upstream's spacing.
    io("an answer with the email hashed", "o", &|d| {
        serde_json::from_str::<serde_json::Value>(d).is_ok_and(|v| {
            v["customer"]["email"]
                .as_str()
                .is_some_and(|e| e.starts_with("hash:"))
        })
    });
    let events = s.env.events();
    let all: String = events.iter().map(|e| e.to_string()).collect();
    assert!(
        !all.contains("alice@example.com"),
        "the email leaked into the records"
    );
    assert!(!all.contains(TOKEN), "the token leaked into the records");
    assert!(
        !s.daemon.log_text().contains(TOKEN),
        "the token leaked into the log"
    );
}

/// A raw HTTP/1.1 upgrade from a Python agent (TLS trusted through the
/// `SSL_CERT_FILE` blastgate run sets): refused by the shipped policy,
/// carried byte for byte where a policy allows it, recorded with its bytes.
const UPGRADE_CLIENT: &str = r#"
import socket, ssl, sys
port, path = int(sys.argv[1]), sys.argv[2]
s = ssl.create_default_context().wrap_socket(
    socket.create_connection(("127.0.0.2", port)), server_hostname="billing.internal")
s.sendall(("GET %s HTTP/1.1\r\nHost: billing.internal:%d\r\nConnection: Upgrade\r\n"
           "Upgrade: echo\r\nAuthorization: Bearer agent-token\r\n\r\n" % (path, port)).encode())
f = s.makefile("rb")
print(f.readline().decode().strip())
while True:
    h = f.readline().decode().strip()
    if not h:
        break
    if h.lower().startswith("x-authorization-sha256:"):
        print(h.split(":", 1)[1].strip())
if path == "/v1/echo":
    for word in [b"hello tunnel\n", b"second line\n"]:
        s.sendall(word)
        print(f.readline().decode().strip())
"#;

/// `blastgate run --user` agents read the trust bundle as themselves: the
/// CA directory lets others open its public files by name (keys stay
/// 0600), so an unprivileged agent's curl trusts the gateway.
#[test]
fn an_agent_run_as_another_user_trusts_the_gateway() {
    use std::os::unix::fs::PermissionsExt;
    let _g = serial();
    let Some(s) = setup() else { return };
    // The test's own directory stands for /var/lib/blastgate (0755).
    std::fs::set_permissions(s.env.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test dir");
    let resolve = format!("billing.internal:{}:127.0.0.2", s.up.port);
    let mut c = Command::new(BIN);
    c.args(["run", "--agent", "claude", "--user", "nobody", "--config"])
        .arg(&s.env.config)
        .args(["--", "curl", "-sS", "--resolve", &resolve])
        .arg(s.url("/v1/invoices?limit=2"));
    let out = output_within(&mut c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let doc = json(&out);
    assert_eq!(doc["authorization_sha256"], injected(), "{doc}");
    // The keys beside the bundle stay the daemon's alone.
    for entry in std::fs::read_dir(s.env.dir.path().join("ca")).expect("ca dir") {
        let path = entry.expect("entry").path();
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".pem") || name.ends_with(".pub") {
            assert_eq!(mode, 0o644, "{}", path.display());
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}

#[test]
fn upgrades_are_refused_or_carried_by_policy() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let run = |path: &str| {
        let port = s.up.port.to_string();
        let mut c = s
            .env
            .agent("claude", &[PYTHON, "-c", UPGRADE_CLIENT, &port, path]);
        let out = output_within(&mut c, Duration::from_secs(60));
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = run("/v1/other");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let carried = run("/v1/echo");
    // The upstream saw blastgate's token on the upgrade, not the agent's.
    assert_eq!(
        carried,
        format!(
            "HTTP/1.1 101 Switching Protocols\n{}\nHELLO TUNNEL\nSECOND LINE\n",
            injected()
        )
    );
    s.env.wait_event("the refused upgrade's record", |e| {
        e["action"] == "http:UPGRADE" && e["status"] == 403 && e["policy_id"] == "http-no-tunnels"
    });
    let wait = s.env.wait_event("the tunnel's record", |e| {
        e["action"] == "http:UPGRADE" && e["status"] == 101
    });
    assert_eq!(wait["bytes_from_agent"], 25, "{wait}");
    assert_eq!(wait["bytes_to_agent"], 25, "{wait}");
}

/// Removes the CA from the host's trust store on drop, also when the test
/// failed: a test CA must not stay trusted host-wide.
struct HostTrust;

impl Drop for HostTrust {
    fn drop(&mut self) {
        let out = Command::new(BIN)
            .args(["ca", "uninstall"])
            .output()
            .expect("blastgate ca uninstall");
        if !out.status.success() {
            eprintln!(
                "warning: ca uninstall failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `blastgate ca install` makes the host trust the gateway without
/// `blastgate run`'s variables; `ca uninstall` takes that back.
#[test]
fn ca_install_trusts_the_gateway_host_wide_and_uninstall_undoes_it() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let system = "/etc/ssl/certs/ca-certificates.crt";
    let ca = String::from_utf8(s.env.blastgate(&["ca", "export"]).stdout).expect("pem");
    let body: String = ca.lines().filter(|l| !l.starts_with("-----")).collect();
    let trusted = || {
        std::fs::read_to_string(system)
            .expect("system bundle")
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>()
            .contains(&body)
    };
    assert!(!trusted(), "a blastgate CA is already trusted host-wide");
    // curl with only the host's trust store.
    let bare_curl = || {
        let resolve = format!("billing.internal:{}:127.0.0.2", s.up.port);
        let url = s.url("/v1/invoices");
        let mut c = s.env.agent(
            "claude",
            &[
                "env",
                "-u",
                "CURL_CA_BUNDLE",
                "-u",
                "SSL_CERT_FILE",
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                &resolve,
                &url,
            ],
        );
        output_within(&mut c, Duration::from_secs(60))
    };
    let out = bare_curl();
    assert_eq!(out.status.code(), Some(60), "{}", text(&out));
    {
        let _trust = HostTrust;
        let out = s.env.blastgate(&["ca", "install"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(trusted());
        let out = bare_curl();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{}",
            text(&out)
        );
    }
    assert!(!trusted(), "ca uninstall left the CA trusted");
    assert_eq!(bare_curl().status.code(), Some(60));
}

/// Every form of the injected credential an echo could hand back: as
/// sent, the token alone, base64 at each alignment, hex.
fn credential_forms() -> Vec<String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for s in [format!("Bearer {TOKEN}"), TOKEN.to_string()] {
        for align in 0..3usize {
            let mut padded = vec![b'x'; align];
            padded.extend_from_slice(s.as_bytes());
            let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&padded);
            let first = (align * 8).div_ceil(6);
            let last = ((align + s.len()) * 8) / 6;
            out.push(text[first..last].to_string());
        }
        out.push(s.bytes().map(|b| format!("{b:02x}")).collect());
        out.push(s);
    }
    out
}

fn assert_no_credential(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for form in credential_forms() {
        assert!(
            !text.contains(&form),
            "{what}: the injected credential reached the agent as {form:?}:\n{text}"
        );
    }
}

/// An upstream that echoes requests hands the agent the credential
/// blastgate injected, in bodies masking never reads (binary, HTML,
/// base64, hex, gzip, chunk by chunk) and in headers. Every byte to the
/// agent is checked instead; the rest of each answer arrives intact.
#[test]
fn an_echoed_credential_never_reaches_the_agent() {
    let _g = serial();
    let Some(s) = setup() else { return };
    for kind in [
        "raw", "html", "base64-0", "base64-1", "base64-2", "hex", "gzip", "split", "header",
    ] {
        for flag in ["--http1.1", "--http2"] {
            let out = s.curl(&[
                flag,
                "-i",
                "--compressed",
                &s.url(&format!("/debug/{kind}")),
            ]);
            assert!(out.status.success(), "{kind}: {}", text(&out));
            assert_no_credential(kind, &out.stdout);
            let shown = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(shown.contains(" 200"), "{kind} {flag}: {shown}");
            if kind == "raw" || kind == "html" || kind == "split" || kind == "gzip" {
                // The echo is there, with the credential blanked in place
                // (by the guard, or first by the value detectors for text).
                assert!(shown.contains("GET /debug/"), "{kind}: {shown}");
                assert!(shown.contains("authorization: ****"), "{kind}: {shown}");
            }
        }
    }
    // Attack: the credential quoted in an HTTP/1.1 reason phrase, which
    // hyper carried to the agent verbatim. The agent gets the standard one.
    let out = s.curl(&["--http1.1", "-i", &s.url("/debug/reason")]);
    assert_no_credential("reason phrase", &out.stdout);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.starts_with("HTTP/1.1 401 Unauthorized"), "{shown}");
    // A coding blastgate cannot unpack cannot be checked: refused.
    let out = s.curl(&["-i", &s.url("/debug/unknown-coding")]);
    assert_no_credential("unknown coding", &out.stdout);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 502"),
        "{}",
        text(&out)
    );
    s.env.wait_event("an echo blanked and recorded", |e| {
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("echoed the injected credential"))
    });
    // The upstream did get the credential each time.
    let out = s.curl(&[&s.url("/v1/plain")]);
    assert_eq!(json(&out)["authorization_sha256"], injected());
}

/// Attack: a body labelled JSON that Python's `json` (and `requests`)
/// reads but strict JSON does not: a byte-order mark, NaN, a lone
/// surrogate. Masked as text only, its path-masked field reached such a
/// client as it was; now it is refused. Plain JSON keeps being masked.
#[test]
fn json_a_lenient_client_would_read_unmasked_is_refused() {
    let _g = serial();
    let Some(s) = setup() else { return };
    for kind in ["bom", "nan", "surrogate"] {
        let out = s.curl(&["-i", &s.url(&format!("/lenient/{kind}"))]);
        let shown = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!shown.contains("alice@example.com"), "{kind}: {shown}");
        assert!(shown.contains(" 502"), "{kind}: {shown}");
        assert!(shown.contains("not strict JSON"), "{kind}: {shown}");
        let body = shown.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(!body.contains("alice"), "{kind}: {body}");
    }
    let out = s.curl(&[&s.url("/lenient/plain")]);
    let doc = json(&out);
    assert_customer_masked(&doc);
}

/// The API's customer as the agent got it: the email hashed by the
/// target's rule, the name as it was.
fn assert_customer_masked(doc: &serde_json::Value) {
    assert!(
        doc["customer"]["email"]
            .as_str()
            .is_some_and(|e| e.starts_with("hash:")),
        "{doc}"
    );
    assert_eq!(doc["customer"]["name"], "Alice");
}

/// Attack: the field the target's rule masks by JSON path, asked for in
/// another form the API offers: CSV or YAML by `Accept` or `?format=`, an
/// NDJSON stream whose lines turn to CSV, a body with no Content-Type or
/// labelled binary, an HTML error page. A success that is not JSON is
/// refused (502), an error keeps its status with the body withheld, a
/// JSON stream ends at its first line that is not JSON. JSON, HEAD and
/// `unmaskable = "scan"` (named weakened by `blastgate status`) keep
/// working.
#[test]
fn a_path_masked_field_cannot_be_read_in_another_form() {
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let url = s.url("/v1/export");
    let fmt = |f: &str| s.url(&format!("/v1/export?format={f}"));
    let mut leaks = Vec::new();
    let accept = |a: &str| vec!["-H".to_string(), format!("Accept: {a}"), url.clone()];
    for (what, args, status) in [
        ("Accept: text/csv", accept("text/csv"), " 502"),
        (
            "Accept: application/yaml",
            accept("application/yaml"),
            " 502",
        ),
        ("?format=csv", vec![fmt("csv")], " 502"),
        ("no Content-Type", vec![fmt("none")], " 502"),
        ("octet-stream", vec![fmt("octets")], " 502"),
        ("an HTML 404", vec![fmt("missing")], " 404"),
        ("NDJSON turning to CSV", vec![fmt("ndjson-csv")], " 200"),
    ] {
        let mut argv = vec!["-i"];
        argv.extend(args.iter().map(String::as_str));
        let out = s.curl(&argv);
        let shown = String::from_utf8_lossy(&out.stdout).to_string();
        if shown.contains("alice@example.com") || !shown.starts_with(&format!("HTTP/2{status}")) {
            leaks.push(format!("{what}:\n{shown}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    let out = s.curl(&["-i", &fmt("csv")]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("text/csv") && shown.contains("masked by JSON path"),
        "[{shown}]"
    );
    let out = s.curl(&["-i", &fmt("missing")]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("body withheld"), "{shown}");
    // The JSON line before the CSV was masked and sent.
    let out = s.curl(&[&fmt("ndjson-csv")]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.starts_with("{\"customer\":{\"email\":\"hash:"),
        "{shown}"
    );
    assert!(!shown.contains("email,name"), "{shown}");
    // Harmless look-alikes: JSON (masked), and HEAD of any form.
    let doc = json(&s.curl(&["-H", "Accept: application/json", &url]));
    assert_customer_masked(&doc);
    let out = s.curl(&["-I", "-H", "Accept: text/csv", &url]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.starts_with("HTTP/2 200"), "{shown}");
    s.env.wait_event("the CSV refused and recorded", |e| {
        e["kind"] == "request"
            && e["status"] == 502
            && e["reason"].as_str().is_some_and(|r| r.contains("text/csv"))
    });
    let status = s.env.blastgate(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(!said.contains("unmaskable"), "{said}");
    drop(s);

    // Set to scan, the target is named weakened, and CSV passes with
    // only the detectors run over it.
    let Some(s) = setup() else { return };
    let status = s.env.blastgate(&["status"]);
    let said = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        said.contains("target billing-api: unmaskable = \"scan\""),
        "{said}"
    );
    let out = s.curl(&[&s.url("/v1/export?format=csv")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice@example.com,Alice"));
}

/// TRACE echoes the request, injected credential and all: refused before
/// it leaves. Method overrides are decided as the method they ask for:
/// POST + X-HTTP-Method-Override: DELETE is a DELETE to policy.
#[test]
fn trace_is_refused_and_method_overrides_are_decided_as_asked() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let out = s.curl(&["-i", "-X", "TRACE", &s.url("/v1/invoices")]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains(" 405"), "TRACE was carried: {shown}");
    assert_no_credential("TRACE", &out.stdout);

    let status = |args: &[&str]| -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&s.curl(&all).stdout)
            .trim()
            .to_string()
    };
    // billing-no-invoice-delete refuses DELETE /v1/invoices*, however asked.
    let url = s.url("/v1/invoices/7");
    assert_eq!(status(&["-X", "DELETE", &url]), "403");
    for header in [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: delete",
        "X-Method-Override: Delete",
    ] {
        assert_eq!(
            status(&["-X", "POST", "-H", header, &url]),
            "403",
            "{header}"
        );
    }
    assert_eq!(
        status(&["-X", "POST", &s.url("/v1/invoices/7?_method=DELETE")]),
        "403"
    );
    assert_eq!(
        status(&["-X", "POST", "--data", "amount=1&_method=DELETE", &url]),
        "403",
        "a form field"
    );
    assert_eq!(
        status(&["-X", "POST", "-F", "_method=DELETE", "-F", "a=b", &url]),
        "400",
        "a multipart _method part is refused"
    );
    // Two different answers to "which method": refused.
    assert_eq!(
        status(&[
            "-X",
            "POST",
            "-H",
            "X-HTTP-Method-Override: GET",
            "--data",
            "_method=DELETE",
            &url
        ]),
        "400"
    );
    // Look-alikes run: a POST, a form without _method, an override to a
    // method policy allows, a multipart upload.
    assert_eq!(status(&["-X", "POST", "--data", "amount=1", &url]), "200");
    assert_eq!(
        status(&["-X", "POST", "-H", "X-HTTP-Method-Override: PUT", &url]),
        "200"
    );
    assert_eq!(
        status(&["-X", "POST", "-F", "file=@/etc/hostname", &url]),
        "200"
    );
    assert_eq!(status(&["-H", "X-Method: DELETE", &url]), "200");
    let denied = s.env.wait_event("the override decided as DELETE", |e| {
        e["action"] == "http:DELETE" && e["policy_id"] == "billing-no-invoice-delete"
    });
    assert_eq!(denied["verdict"], "deny");
}

/// curl's answer split as HTTP/2 `-i` prints it: status and body.
fn status_and_body(o: &Output) -> (String, String) {
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    let status = shown.split(' ').nth(1).unwrap_or("").to_string();
    let body = shown
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Red team (leak): a `Range` request on a JSON document. blastgate passes
/// `Range` upstream and masks a 206 as if it were the whole document; a
/// range that is itself strict JSON (the email's quoted string, the card
/// number's digits, which are a JSON number) has no path to match and no
/// string to scan. The masked answer keeps every byte before the first
/// masked value, so the agent knows where to cut; it probes the end
/// (ranges that are not JSON are refused with 502, the one that is
/// passes). Every static file server and object store (nginx, S3, GCS,
/// Go's ServeContent, Express static) serves ranges.
#[test]
fn red_team_a_range_request_reads_a_masked_field_whole() {
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let url = s.url("/v1/file");
    let masked = String::from_utf8_lossy(&s.curl(&[&url]).stdout).to_string();
    assert!(!masked.contains("alice@example.com"), "{masked}");
    assert!(!masked.contains("4111111111111111"), "{masked}");
    let ranged = |a: usize, b: usize| {
        let r = format!("{a}-{b}");
        status_and_body(&s.curl(&["-i", "-r", &r, &url]))
    };
    // The email: from its opening quote, longer until a range passes.
    let start = masked.find("\"email\": \"").expect("email") + "\"email\": ".len();
    let email = (start + 1..start + 80)
        .map(|end| ranged(start, end))
        .find(|(status, _)| status == "206")
        .map(|(_, body)| body);
    // The card: its digits, a JSON number, as many as pass.
    let card_at = masked.find("\"card\": \"").expect("card") + "\"card\": \"".len();
    let masked_email = &masked[start..];
    let masked_email = &masked_email[..masked_email[1..].find('"').unwrap() + 2];
    let card_at = match &email {
        Some(e) => card_at + e.len() - masked_email.len(),
        None => card_at,
    };
    let mut card = String::new();
    for end in card_at..card_at + 20 {
        match ranged(card_at, end) {
            (status, body) if status == "206" => card = body,
            _ => break,
        }
    }
    let mut leaks = Vec::new();
    if let Some(e) = email.filter(|e| e.contains("alice@example.com")) {
        leaks.push(format!("Range on the email: {e}"));
    }
    if card.contains("4111111111111111") {
        leaks.push(format!("Range on the card: {card}"));
    }
    // Several ranges come as multipart/byteranges: not JSON, refused.
    let (status, body) = status_and_body(&s.curl(&["-i", "-r", "0-9,10-", &url]));
    if body.contains("alice@example.com") || body.contains("4111111111111111") {
        leaks.push(format!("multipart/byteranges ({status}): {body}"));
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// Red team (leak, path rules and detectors): response headers pass as
/// the upstream wrote them, `ETag` included, and the ETag most frameworks
/// compute is an unkeyed hash of the body they sent: Rack::ETag (Rails,
/// Sinatra) SHA-256, Express SHA-1 (`W/"len-sha1"`), Spring's
/// `ShallowEtagHeaderFilter`, Django's `ConditionalGetMiddleware` and S3
/// MD5. The masked body keeps every other byte as it came, so the agent
/// knows the unmasked body but for the masked value: hashing guesses
/// offline finds it, exactly what the `hash` style's key exists to stop
/// ("an unkeyed hash of a low-entropy value … is reversed by hashing
/// guesses"). Emails, phone numbers, dates of birth, PINs, last-4-known
/// card numbers fall in seconds. (`Content-MD5`, `Content-Digest`,
/// S3's `x-amz-checksum-crc32`, a linear CRC, are the same oracle.)
#[test]
fn red_team_an_etag_does_not_reveal_a_masked_field() {
    use sha2::{Digest, Sha256};
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let out = s.curl(&["-i", &s.url("/v1/etag")]);
    let (status, body) = status_and_body(&out);
    assert_eq!(status, "200", "{}", text(&out));
    assert!(!body.contains("alice@example.com"), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let masked = doc["customer"]["email"].as_str().expect("masked email");
    let etag = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("etag: ").map(str::trim).map(str::to_string));
    // The agent's guesses: a staff directory, a list of customers.
    let found = etag.as_ref().and_then(|etag| {
        ["bob@example.com", "carol@example.com", "alice@example.com"]
            .into_iter()
            .find(|guess| {
                let candidate = body.replace(masked, guess);
                let hash = format!("{:x}", Sha256::digest(candidate.as_bytes()));
                *etag == format!("W/\"{}\"", &hash[..32])
            })
    });
    assert!(
        found.is_none(),
        "the ETag ({etag:?}) confirms the masked email is {found:?}"
    );
}

/// Red team (leak, detectors): the detectors read response bodies only,
/// never response headers (the echo guard reads them, for the injected
/// credential alone). A login answered with the session JWT in
/// `Set-Cookie` (Express's `res.cookie`, Rails, ASP.NET Core's JWT
/// cookie), a token header (`X-Auth-Token`, `Authorization`), or an OIDC
/// redirect's `Location: …#id_token=eyJ…` reaches `curl -i` with the JWT
/// the shipped `jwt` detector masks in the body of the same answer.
#[test]
fn red_team_a_jwt_in_response_headers_is_masked() {
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZw";
    let out = s.curl(&["-i", &s.url("/v1/login")]);
    let (status, body) = status_and_body(&out);
    assert_eq!(status, "200", "{}", text(&out));
    assert!(!body.contains(jwt), "the body's JWT is masked: {body}");
    let shown = text(&out);
    assert!(
        !shown.contains(jwt),
        "the JWT came back in the response headers:\n{shown}"
    );
}

/// Red team (fidelity): `Range` is dropped from every request of a
/// session any masking rule applies to (the shipped detectors apply to
/// every HTTPS target), though most answers to it are binary, which pass
/// untouched. A binary object's range comes back whole, as 200: `curl -C
/// -` gives up ("server doesn't seem to support byte ranges"), and
/// downloaders that fetch parts in parallel and write each body at its
/// part's offset (boto3's s3transfer above 8 MB, `aws s3 cp`) write the
/// whole object once per part. Only a range of something masking reads
/// (JSON, text) needs the whole; a 206 of such a type is refused anyway
/// (`Masking::of`), so `Range` could be passed and binary ranges served.
#[test]
fn red_team_a_binary_range_is_served() {
    let _g = serial();
    // `unmaskable = "scan"`: binary passes (under the default a path rule
    // refuses it whole); the shipped detectors alone strip `Range` alike.
    let Some(s) = setup() else { return };
    let url = s.url("/v1/blob");
    let (status, body) = status_and_body(&s.curl(&["-i", "-r", "0-9", &url]));
    assert_eq!(
        (status.as_str(), body.len()),
        ("206", 10),
        "a 10-byte range of a binary object came back as {status} with {} bytes{}",
        body.len(),
        if status == "200" {
            String::new()
        } else {
            format!(": {body}")
        }
    );
}

/// Red team (leak): an upgrade the upstream does not take. Where a policy
/// lets an upgrade through (here `/v1/echo`, as for a WebSocket or
/// GraphQL-subscription endpoint that also answers plain requests), the
/// agent adds `Upgrade:` with a protocol the upstream ignores (RFC 9110
/// 7.8 lets it): the upstream answers the request as usual, and
/// `tunnel::carry` passes that answer back with no masking at all (only
/// the credential guard), the path-masked email as it came.
#[test]
fn red_team_an_ignored_upgrade_is_answered_unmasked() {
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let plain = json(&s.curl(&[&s.url("/v1/echo")]));
    assert_customer_masked(&plain);
    let out = s.curl(&[
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        &s.url("/v1/echo"),
    ]);
    let shown = text(&out);
    assert!(
        !shown.contains("alice@example.com"),
        "the ignored upgrade's answer came back unmasked:\n{shown}"
    );
}

/// Red team (fidelity): HEAD of a JSON resource under a JSON path rule.
/// The answer is labelled `application/json` with no body; `Masking::of`
/// sends every JSON label to the whole-document masker before it looks at
/// whether the body is empty, and the masker refuses "" as not strict
/// JSON: 502 for `curl -I`, a link checker or a download tool's size
/// probe. The same for any empty body labelled JSON (a 204 or a 201 with
/// `Content-Length: 0` that keeps the type).
#[test]
fn red_team_head_of_a_json_resource_is_answered() {
    let _g = serial();
    let Some(s) = strict_setup() else { return };
    let mut failures = Vec::new();
    for (flag, ok) in [("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")] {
        let out = s.curl(&["-I", flag, &s.url("/v1/export")]);
        let shown = text(&out);
        if !shown.starts_with(ok) {
            failures.push(format!("curl -I {flag}: {shown}"));
        }
        // The unmasked body's length would give the masked value's.
        if shown.to_ascii_lowercase().contains("content-length") {
            failures.push(format!("curl -I {flag} tells the unmasked length: {shown}"));
        }
        // Nor does a HEAD hand over the unmasked body's hash.
        let out = s.curl(&["-I", flag, &s.url("/v1/etag")]);
        let shown = text(&out);
        if !shown.starts_with(ok) || shown.to_ascii_lowercase().contains("etag") {
            failures.push(format!("curl -I {flag} /v1/etag: {shown}"));
        }
    }
    let records: Vec<String> = s
        .env
        .events()
        .iter()
        .filter(|e| e["kind"] == "request")
        .map(|e| format!("{} {} {}", e["text"], e["status"], e["reason"]))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}\n{records:#?}");
}

//! Red team on the HTTP gateway's credential-echo guard, its TRACE refusal
//! and method-override decisions, and the secure defaults: each attack is
//! a request a hostile agent (or a careless upstream) can make, beside a
//! harmless look-alike that must keep working. The upstream is a real
//! HTTPS server (Python's http.server behind its own CA); agents are curl
//! under `blastgate run`, redirected by the kernel.

mod harness;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use harness::{
    https_upstream::{HttpsUpstream, PYTHON},
    sshd::output_within,
    *,
};

/// The upstream: `/echo/<kind>` hands back what it received in the way
/// real servers echo (Python's `quote`, .NET's JSON escapes, a parsed
/// Basic password, odd codings); everything else answers 200 with the
/// method it ran.
const SERVER: &str = r#"
import base64, gzip, json, ssl, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def send(self, status, headers, out):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if not any(k.lower() == "transfer-encoding" for k, _ in headers):
            self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        auth = self.headers.get("authorization") or ""
        head = (self.requestline + "\r\n" + str(self.headers)).encode()
        kind = self.path.split("/echo/")[1].split("?")[0] if self.path.startswith("/echo/") else None
        text = [("content-type", "text/plain")]
        if kind == "pyquote":
            # A redirect target or log line built with urllib's quote(),
            # which leaves "/" as it is.
            self.send(200, text, ("next=" + urllib.parse.quote(auth)).encode())
        elif kind == "dotnet":
            # System.Text.Json's default encoder writes + as \u002B.
            out = json.dumps({"authorization": auth}).replace("+", "\\u002B")
            self.send(200, [("content-type", "application/json")], out.encode())
        elif kind == "basic-password":
            # A request inspector that shows the Basic credential parsed.
            basic = (self.headers.get("x-basic") or "").split(" ", 1)[-1]
            user, _, password = base64.b64decode(basic).decode().partition(":")
            out = json.dumps({"user": user, "password": password})
            self.send(200, [("content-type", "application/json")], out.encode())
        elif kind == "two-codings":
            # Two Content-Encoding lines: identity, then gzip.
            self.send(200, text + [("content-encoding", "identity"), ("content-encoding", "gzip")],
                      gzip.compress(head))
        elif kind == "two-members":
            # A gzip body of two members: a harmless first, the echo second.
            self.send(200, text + [("content-encoding", "gzip")],
                      gzip.compress(b"hello\n") + gzip.compress(head))
        elif kind == "te-gzip":
            # gzip as a transfer coding: no Content-Encoding says so.
            packed = gzip.compress(head)
            self.send(200, text + [("transfer-encoding", "gzip, chunked")],
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed))
        elif kind == "plain":
            self.send(200, text, b"nothing secret here: + / % \\u002B")
        else:
            self.send(200, [("content-type", "application/json")],
                      json.dumps({"method": self.command, "path": self.path}).encode())
    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = answer
    def do_TRACE(self):
        head = (self.requestline + "\r\n" + str(self.headers)).encode()
        self.send(200, [("content-type", "message/http")], head)
    do_trace = do_TRACE

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

/// `/` and `+` in it: the characters encoders disagree about.
const TOKEN: &str = "Tok3n/Up+Stream-Secret99";
const BASIC_USER: &str = "deploy";
const BASIC_PASSWORD: &str = "hunter2-very/secret";

struct Setup {
    up: HttpsUpstream,
    env: Env,
    _daemon: Daemon,
    _scratch: tempfile::TempDir,
}

/// The shipped policies plus the billing rule "invoices are never deleted
/// by agents"; a Bearer token and a Basic credential injected.
fn setup() -> Option<Setup> {
    setup_with(|_| {})
}

/// [`setup`], with the policy directory edited by `edit` first.
fn setup_with(edit: impl FnOnce(&Path)) -> Option<Setup> {
    use base64::Engine as _;
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
    let basic = scratch.join("basic.token");
    let pair = format!("{BASIC_USER}:{BASIC_PASSWORD}");
    std::fs::write(
        &basic,
        base64::engine::general_purpose::STANDARD.encode(pair),
    )
    .expect("basic");
    let policies = copy_shipped_policies(scratch);
    std::fs::write(
        policies.join("billing.cedar"),
        "@id(\"billing-no-invoice-delete\")\n@reason(\"invoices are never deleted by agents\")\n\
         forbid (principal, action == Action::\"http:DELETE\", resource)\n\
         when { context.path like \"/v1/invoices*\" };\n",
    )
    .expect("billing.cedar");
    edit(&policies);
    let env = Env::new(&format!(
        "[policy]\ndir = \"{}\"\n\n\
         [[targets]]\nname = \"billing-api\"\nprotocol = \"https\"\naddress = \"127.0.0.2:{}\"\n\
         hostnames = [\"billing.internal\"]\n\n[targets.http]\n\
         upstream_ca_file = \"{}\"\nserver_name = \"billing.internal\"\nrecord_body_bytes = 4096\n\n\
         [targets.http.inject_headers]\n\
         Authorization = {{ file = \"{}\", prefix = \"Bearer \" }}\n\
         X-Basic = {{ file = \"{}\", prefix = \"Basic \" }}\n",
        policies.display(),
        up.port,
        up.ca.display(),
        token.display(),
        basic.display(),
    ));
    let daemon = Daemon::start(&env);
    Some(Setup {
        up,
        env,
        _daemon: daemon,
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

    /// The status code curl saw for `args`.
    fn status(&self, args: &[&str]) -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&self.curl(&all).stdout)
            .trim()
            .to_string()
    }
}

/// The body of curl's `-i` output gzip-unpacked, or empty when it is not
/// gzip.
fn gunzipped(shown: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let body = shown
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(shown, |i| &shown[i + 4..]);
    let mut out = Vec::new();
    match flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out) {
        Ok(_) => out,
        Err(_) => Vec::new(),
    }
}

/// Whether `haystack` holds `needle`.
fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// An upstream that echoes the injected credentials in spellings real
/// servers use: Python's `quote` (`/` left as is), .NET's JSON encoder
/// (`+` as `\u002B`), a Basic password shown parsed, a gzip body behind
/// two Content-Encoding lines, gzip as a transfer coding. None may reach
/// the agent (or the records); an echo-free answer arrives intact.
#[test]
fn echoes_in_other_spellings_never_reach_the_agent() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let leaked_forms = [
        ("pyquote", TOKEN.replace('+', "%2B")),
        ("dotnet", TOKEN.replace('+', "\\u002B")),
        ("basic-password", BASIC_PASSWORD.replace('/', "\\/")),
        ("basic-password", BASIC_PASSWORD.to_string()),
        ("two-codings", TOKEN.to_string()),
        ("te-gzip", TOKEN.to_string()),
        ("two-members", TOKEN.to_string()),
    ];
    let mut leaks = Vec::new();
    for (kind, form) in &leaked_forms {
        for flag in ["--http1.1", "--http2"] {
            let out = s.curl(&[flag, "-i", "--compressed", &s.url(&format!("/echo/{kind}"))]);
            // What a hostile agent does with the bytes: unpack them.
            let seen = gunzipped(&out.stdout);
            let shown = String::from_utf8_lossy(&out.stdout);
            if holds(&out.stdout, form) || holds(&seen, form) {
                leaks.push(format!("{kind} {flag}: {form:?} in {shown}"));
            }
        }
    }
    // The look-alike: an answer with no credential in it arrives intact.
    let out = s.curl(&[&s.url("/echo/plain")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nothing secret here: + / % \\u002B"
    );
    // Nor may the records keep what the agent was not given.
    let mut spooled = Vec::new();
    for e in walk(&s.env.spool) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        for (kind, form) in &leaked_forms {
            if holds(&bytes, form) {
                spooled.push(format!("{kind}: {form:?} in {}", e.display()));
            }
        }
    }
    assert!(
        leaks.is_empty() && spooled.is_empty(),
        "the credential reached the agent:\n{}\nand the spool:\n{}",
        leaks.join("\n"),
        spooled.join("\n")
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Method overrides in the spellings frameworks read: underscores for
/// dashes in the header name (CGI variables: PHP, Rack, WSGI), `_method[]`
/// (Express's qs takes the first), PHP's key mangling (`.method`,
/// ` _method` and `[method` all become `_method`), Rack 2's `[_method]`,
/// a POST with no Content-Type (Rack reads it as a form), a Content-Type
/// with a `,` list (Rack and PHP cut there), `_method` in a JSON body
/// (Laravel reads JSON input as the request's fields), a multipart part
/// PHP names `_method`, and an override to TRACE. Each is a DELETE of an
/// invoice, or an echo, to policy; each look-alike still runs.
#[test]
fn method_overrides_in_every_spelling_are_decided_as_asked() {
    let _g = serial();
    let Some(s) = setup() else { return };
    let url = s.url("/v1/invoices/7");
    let q = |query: &str| s.url(&format!("/v1/invoices/7?{query}"));
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "underscored header",
            vec![
                "-H".into(),
                "X_HTTP_Method_Override: DELETE".into(),
                url.clone(),
            ],
            "403",
        ),
        ("qs array", vec!["-g".into(), q("_method[]=DELETE")], "403"),
        ("qs index", vec!["-g".into(), q("_method[0]=DELETE")], "403"),
        ("php dot", vec![q(".method=DELETE")], "403"),
        ("php space", vec![q("%20_method=DELETE")], "403"),
        ("php bracket", vec!["-g".into(), q("[method=DELETE")], "403"),
        (
            "rack2 brackets",
            vec!["--data".into(), "[_method]=DELETE".into(), url.clone()],
            "403",
        ),
        (
            "no content-type",
            vec![
                "-H".into(),
                "Content-Type:".into(),
                "--data".into(),
                "_method=DELETE".into(),
                url.clone(),
            ],
            "403",
        ),
        (
            "content-type list",
            vec![
                "-H".into(),
                format!("Content-Type: {form}, text/plain"),
                "--data".into(),
                "_method=DELETE".into(),
                url.clone(),
            ],
            "403",
        ),
        (
            "json _method",
            vec![
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data".into(),
                r#"{"amount":1,"_method":"DELETE"}"#.into(),
                url.clone(),
            ],
            "403",
        ),
        (
            "multipart php dot",
            vec!["-F".into(), ".method=DELETE".into(), url.clone()],
            "400",
        ),
        (
            "override to TRACE",
            vec![
                "-H".into(),
                "X-HTTP-Method-Override: TRACE".into(),
                s.url("/v1/plain"),
            ],
            "405",
        ),
    ];
    let mut passed = Vec::new();
    for (what, args, want) in &cases {
        let mut all = vec!["-X", "POST"];
        all.extend(args.iter().map(String::as_str));
        let got = s.status(&all);
        if got != *want {
            passed.push(format!("{what}: {got}, not {want}"));
        }
    }
    // Express's body-parser inflates a gzip request body before the
    // override is read from it.
    let scratch = tempfile::tempdir().expect("tempdir");
    let packed = scratch.path().join("form.gz");
    let gz = |text: &str| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).expect("gzip");
        e.finish().expect("gzip")
    };
    std::fs::write(&packed, gz("amount=1&_method=DELETE")).expect("form.gz");
    let at = format!("@{}", packed.display());
    let gzip_form = |data: &str| {
        s.status(&[
            "-X",
            "POST",
            "-H",
            "Content-Encoding: gzip",
            "-H",
            &format!("Content-Type: {form}"),
            "--data-binary",
            data,
            &url,
        ])
    };
    let got = gzip_form(&at);
    if got != "403" {
        passed.push(format!("gzip form: {got}, not 403"));
    }
    std::fs::write(&packed, gz("amount=1")).expect("form.gz");
    let got = gzip_form(&at);
    if got != "200" {
        passed.push(format!(
            "the look-alike gzip form without _method: {got}, not 200"
        ));
    }
    // A lower-case `trace` is TRACE to servers that fold method case.
    let got = s.status(&["-X", "trace", &s.url("/v1/plain")]);
    if got != "405" {
        passed.push(format!("lower-case trace: {got}, not 405"));
    }
    // Look-alikes: fields and headers that only resemble an override.
    let look_alikes: Vec<Vec<String>> = vec![
        vec!["--data".into(), "payment_method=card".into(), url.clone()],
        vec![q("payment_method=DELETE&a.method=x")],
        vec!["-H".into(), "X_Request_Id: 7".into(), url.clone()],
        vec![
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            r#"{"method":"DELETE","payment_method":"card","note":"_method"}"#.into(),
            url.clone(),
        ],
        vec![
            "-H".into(),
            "Content-Type:".into(),
            "--data".into(),
            "hello".into(),
            url.clone(),
        ],
        vec!["-F".into(), "payment_method=card".into(), url.clone()],
        vec![
            "-H".into(),
            format!("Content-Type: {form}; charset=utf-8"),
            "--data".into(),
            "amount=1".into(),
            url.clone(),
        ],
    ];
    let mut refused = Vec::new();
    for args in &look_alikes {
        let mut all = vec!["-X", "POST"];
        all.extend(args.iter().map(String::as_str));
        let got = s.status(&all);
        if got != "200" {
            refused.push(format!("{args:?}: {got}"));
        }
    }
    assert!(
        passed.is_empty() && refused.is_empty(),
        "overrides that got past policy:\n{}\nlook-alikes refused:\n{}",
        passed.join("\n"),
        refused.join("\n")
    );
}

/// A policy directory that keeps every shipped rule's id but not what it
/// enforces (`when { false }`) weakens the daemon as much as deleting the
/// rule: `blastgate status` names it, at the start and after a reload that
/// does it later. A reworded `@reason` is not a weakening.
#[test]
fn status_names_shipped_rules_kept_by_id_but_neutered() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let policies = copy_shipped_policies(scratch.path());
    let edit = |file: &str, from: &str, to: &str| {
        let path = policies.join(file);
        let text = std::fs::read_to_string(&path).expect("policy file");
        let edited = text.replace(from, to);
        assert_ne!(edited, text, "{file} changed shape: update this test");
        std::fs::write(&path, edited).expect("policy file");
    };
    edit(
        "sql.cedar",
        "forbid (principal, action in [Action::\"sql:ddl\", Action::\"sql:dcl\"], resource);",
        "forbid (principal, action in [Action::\"sql:ddl\", Action::\"sql:dcl\"], resource)\nwhen { false };",
    );
    // The look-alike: a reworded reason enforces the same.
    let copy = std::fs::read_to_string(policies.join("sql.cedar")).expect("sql.cedar");
    let reason = copy
        .lines()
        .skip_while(|l| !l.contains("@id(\"sql-copy\")"))
        .nth(1)
        .expect("sql-copy's reason")
        .to_string();
    assert!(
        reason.starts_with("@reason("),
        "sql.cedar changed shape: {reason}"
    );
    edit("sql.cedar", &reason, "@reason(\"reworded by the admin\")");
    // The bearer-token detector kept, but only for a target that does not
    // exist: agents read bearer tokens everywhere else.
    edit(
        "masking.toml",
        "kind = \"bearer\"\n",
        "kind = \"bearer\"\ntargets = [\"no-such-target\"]\n",
    );
    let env = Env::new(&format!("[policy]\ndir = \"{}\"\n", policies.display()));
    let _daemon = Daemon::start(&env);
    let status = || String::from_utf8_lossy(&env.blastgate(&["status"]).stdout).to_string();
    let said = status();
    assert!(
        said.contains("changes shipped rules sql-ddl-dcl"),
        "a neutered shipped rule is not named: {said}"
    );
    assert!(
        said.contains("lacks shipped masking rules (detector Bearer)"),
        "a narrowed shipped detector is not named: {said}"
    );
    // Later, a reload neuters another: named too, without a restart.
    edit(
        "ssh.cedar",
        "forbid (principal, action == Action::\"ssh:exec\", resource)\nwhen {",
        "forbid (principal, action == Action::\"ssh:exec\", resource)\nwhen { false &&",
    );
    env.wait_event("the edited policies reloaded", |e| {
        e["kind"] == "policy_reloaded"
    });
    let said = status();
    assert!(
        said.contains("ssh-recursive-delete"),
        "a rule neutered by a reload is not named: {said}"
    );
    let line = said
        .lines()
        .find(|l| l.contains("changes shipped rules"))
        .unwrap_or_default();
    assert!(
        line.contains("sql-ddl-dcl") && !line.contains("sql-copy"),
        "only the neutered rules, not the reworded one: {line}"
    );
}

/// Where upgrades are allowed (a WebSocket API under /v1/invoices), an
/// upstream that does not take the upgrade runs the request as its
/// method: `DELETE` + `Upgrade: websocket` is a DELETE to policy, and so is
/// an override on an upgrade. A GET with the same Upgrade still runs.
#[test]
fn an_upgrade_request_is_decided_as_its_method_too() {
    let _g = serial();
    let Some(s) = setup_with(|policies| {
        let path = policies.join("http.cedar");
        let http = std::fs::read_to_string(&path).expect("http.cedar");
        let opened = http.replace(
            "Action::\"http:UPGRADE\"],\n  resource\n);",
            "Action::\"http:UPGRADE\"],\n  resource\n)\nunless { context.path like \"/v1/invoices*\" };",
        );
        assert_ne!(opened, http, "http.cedar changed shape: update this test");
        std::fs::write(&path, opened).expect("http.cedar");
    }) else {
        return;
    };
    let url = s.url("/v1/invoices/7");
    let upgrade = [
        "--http1.1",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
    ];
    let mut wrong = Vec::new();
    for extra in [
        &["-X", "DELETE"][..],
        &["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE"],
    ] {
        let mut args: Vec<&str> = upgrade.to_vec();
        args.extend_from_slice(extra);
        args.push(&url);
        let got = s.status(&args);
        if got != "403" {
            wrong.push(format!("{extra:?} with Upgrade: {got}, not 403"));
        }
    }
    let mut args: Vec<&str> = upgrade.to_vec();
    args.push(&url);
    let got = s.status(&args);
    if got != "200" {
        wrong.push(format!("the look-alike GET with Upgrade: {got}, not 200"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

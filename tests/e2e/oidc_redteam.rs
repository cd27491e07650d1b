//! Red team of agent identity from CI job tokens (OIDC).
//!
//! Two kinds of attack:
//!
//! - On the verifier alone (`blastgate::identity::oidc::Verifier`), against
//!   a hand-made ES256 issuer on loopback ([`MiniIssuer`]) that signs
//!   whatever header and payload a test asks for, so headers (`crit`,
//!   `jku`, `typ`, `kid`) and registered claims of odd types can be tried
//!   under a valid signature. These need neither root nor node.
//! - End to end, against the real kernel, daemon and OpenID Provider
//!   (`harness::oidc::Provider`): a hostile agent that already runs inside
//!   a job's process tree and tries to change which job it is.
//!
//! Tests named `red_team_*` that fail name a hole; the ones that pass are
//! attacks that held.

mod harness;

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use blastgate::{
    config::OidcConfig,
    identity::oidc::{JobIdentity, TokenError, Verifier},
};
use harness::{
    job_scene::{claims, JobScene, AUDIENCE},
    oidc::*,
    *,
};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

// ---------------------------------------------------------------------
// A minimal OpenID issuer: discovery + JWKS over HTTP/1.1 on 127.0.0.1,
// ES256 keys from ring, tokens signed with any header and payload.
// ---------------------------------------------------------------------

struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        SigningKey {
            kid: kid.to_string(),
            pair,
        }
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        assert_eq!(p.len(), 65, "uncompressed P-256 point");
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": self.kid,
            "x": B64.encode(&p[1..33]),
            "y": B64.encode(&p[33..65]),
        })
    }

    /// `header` and `payload` exactly as given (JSON), signed ES256.
    fn sign(&self, header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(payload.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

struct MiniIssuer {
    issuer: String,
    key: SigningKey,
    /// Requests served, by path.
    discovery_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
    /// Answer 503 to everything (an outage that still accepts TCP).
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl MiniIssuer {
    fn start() -> MiniIssuer {
        MiniIssuer::start_with_jwks(None)
    }

    /// `extra_keys`: more JWKs published beside the signing key.
    fn start_with_jwks(extra_keys: Option<Vec<Value>>) -> MiniIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let issuer = format!("http://127.0.0.1:{port}");
        let key = SigningKey::new("mini-1");
        let mut keys = vec![key.jwk()];
        keys.extend(extra_keys.unwrap_or_default());
        let jwks = json!({ "keys": keys }).to_string();
        let discovery = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let (discovery_hits, jwks_hits) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).expect("nonblocking");
        {
            let (dh, jh, down, stop) = (
                discovery_hits.clone(),
                jwks_hits.clone(),
                down.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let _ = s.set_nonblocking(false);
                    let path = read_request_path(&s);
                    let (status, body) = if down.load(Ordering::SeqCst) {
                        if path.contains("openid-configuration") {
                            dh.fetch_add(1, Ordering::SeqCst);
                        }
                        ("503 Service Unavailable", String::from("down"))
                    } else if path == "/.well-known/openid-configuration" {
                        dh.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", discovery.clone())
                    } else if path == "/jwks" {
                        jh.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", jwks.clone())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let mut s = s;
                    let _ = write!(
                        s,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
        MiniIssuer {
            issuer,
            key,
            discovery_hits,
            jwks_hits,
            down,
            stop,
        }
    }

    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "kid": self.key.kid})
    }

    /// A good job token; `claims` override (null removes).
    fn payload(&self, claims: Value) -> Value {
        let n = now();
        let mut p = json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "repo:acme/app:ref:refs/heads/main",
            "iat": n,
            "exp": n + 300,
            "repository": "acme/app",
            "ref": "refs/heads/main",
        });
        for (k, v) in claims.as_object().cloned().unwrap_or_default() {
            if v.is_null() {
                p.as_object_mut().expect("object").remove(&k);
            } else {
                p[k] = v;
            }
        }
        p
    }

    fn token(&self, claims: Value) -> String {
        self.key.sign(&self.header(), &self.payload(claims))
    }

    fn token_with_header(&self, header: Value, claims: Value) -> String {
        self.key.sign(&header, &self.payload(claims))
    }

    fn fetches(&self) -> usize {
        self.discovery_hits.load(Ordering::SeqCst)
    }
}

impl Drop for MiniIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_request_path(s: &TcpStream) -> String {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut r = BufReader::new(s);
    let mut first = String::new();
    let _ = r.read_line(&mut first);
    loop {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) if l == "\r\n" || l == "\n" => break,
            Ok(_) => {}
        }
    }
    first.split_whitespace().nth(1).unwrap_or("").to_string()
}

fn verifier_for(issuers: &[&MiniIssuer], extra_issuer_toml: &str, top: &str) -> Verifier {
    let mut text = top.to_string();
    for i in issuers {
        text.push_str(&format!(
            "\n[[issuers]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nalgorithms = [\"ES256\"]\n{extra_issuer_toml}\n",
            i.issuer
        ));
    }
    let config: OidcConfig = toml::from_str(&text).expect("oidc config");
    config.validate().expect("valid oidc config");
    Verifier::new(&config).expect("verifier")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn verify(v: &Verifier, token: &str) -> Result<JobIdentity, TokenError> {
    rt().block_on(v.verify(token))
}

// -------------------------- verifier attacks --------------------------

/// Sanity: the hand-made issuer's good token verifies (so every refusal
/// below is the attack's, not the harness's).
#[test]
fn red_team_mini_issuer_good_token_verifies() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let id = verify(&v, &issuer.token(json!({}))).expect("a good token");
    assert_eq!(id.claims["repository"], "acme/app");
}

/// RFC 7519 NumericDate may be a fraction ("1700000000.5"). A token not
/// valid for another hour must be refused whatever the number's form.
#[test]
fn red_team_nbf_in_the_future_as_a_fraction_is_not_yet_valid() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let nbf = now() as f64 + 3600.5;
    let r = verify(&v, &issuer.token(json!({ "nbf": nbf })));
    assert!(
        matches!(r, Err(TokenError::NotYetValid { .. })),
        "a token not valid before {nbf} (in an hour) was accepted: {r:?}"
    );
}

/// A `nbf` that is not a number is not a NumericDate: the token is
/// malformed, not valid from the beginning of time.
#[test]
fn red_team_nbf_that_is_not_a_number_is_refused() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let nbf = (now() + 3600).to_string();
    let r = verify(&v, &issuer.token(json!({ "nbf": nbf })));
    assert!(
        r.is_err(),
        "a token with nbf = {nbf:?} (a string, an hour ahead) was accepted: {r:?}"
    );
}

/// `claims = { actor = "preferred_username" }` (a standard OIDC claim, as
/// a generic issuer such as Keycloak or Dex would have it) must feed
/// `principal.oidc.actor`. A mapping that silently reads "" lets a
/// `forbid … when principal.oidc.actor == "mallory"` never fire.
#[test]
fn red_team_claims_mapped_to_standard_oidc_claims_are_read() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(
        &[&issuer],
        "claims = { actor = \"preferred_username\", workflow = \"email\" }",
        "",
    );
    let id = verify(
        &v,
        &issuer.token(json!({
            "preferred_username": "mallory",
            "email": "deploy@example.test",
        })),
    )
    .expect("a good token");
    assert_eq!(
        (id.claims["actor"].as_str(), id.claims["workflow"].as_str()),
        ("mallory", "deploy@example.test"),
        "claims mapped to standard OIDC claim names read as empty: {:?}",
        id.claims
    );
}

/// A `crit` header naming an extension blastgate does not understand:
/// RFC 7515 says reject. (Held: openidconnect refuses any `crit`.)
#[test]
fn red_team_crit_header_is_refused() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let mut h = issuer.header();
    h["crit"] = json!(["urn:example:must-understand"]);
    h["urn:example:must-understand"] = json!(true);
    let r = verify(&v, &issuer.token_with_header(h, json!({})));
    assert!(r.is_err(), "a token with crit was accepted: {r:?}");
}

/// `jku`/`x5u`/embedded `jwk` in the header naming the attacker's keys,
/// token signed by the attacker: refused, and the attacker's server is
/// never asked.
#[test]
fn red_team_jku_x5u_and_embedded_jwk_cannot_bring_their_own_keys() {
    let issuer = MiniIssuer::start();
    let attacker = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let mut h = attacker.header();
    h["kid"] = json!(issuer.key.kid); // the real issuer's kid
    h["jku"] = json!(format!("{}/jwks", attacker.issuer));
    h["x5u"] = json!(format!("{}/cert", attacker.issuer));
    h["jwk"] = attacker.key.jwk();
    let token = attacker
        .key
        .sign(&h, &issuer.payload(json!({"repository": "acme/app"})));
    let r = verify(&v, &token);
    assert!(
        matches!(r, Err(TokenError::BadSignature(_))),
        "attacker-signed token: {r:?}"
    );
    assert_eq!(attacker.fetches(), 0);
    assert_eq!(attacker.jwks_hits.load(Ordering::SeqCst), 0);
}

/// Two issuers: a token saying `iss` = A, signed with B's key and naming
/// B's kid, must not verify (each issuer's keys vouch for it alone).
#[test]
fn red_team_kid_of_another_configured_issuer_is_refused() {
    let a = MiniIssuer::start();
    let b = MiniIssuer::start();
    let v = verifier_for(&[&a, &b], "", "");
    let mut h = b.header();
    h["kid"] = json!(b.key.kid);
    let token = b.key.sign(&h, &a.payload(json!({})));
    let r = verify(&v, &token);
    assert!(r.is_err(), "A's claims under B's key were accepted: {r:?}");
}

/// `iss` spelled differently (trailing slash, upper case scheme or host,
/// a fullwidth digit, surrounding space) is not the configured issuer.
#[test]
fn red_team_issuer_spelling_variants_are_unknown() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let port = issuer.issuer.rsplit(':').next().expect("port").to_string();
    let variants = [
        format!("{}/", issuer.issuer),
        issuer.issuer.replace("http://", "HTTP://"),
        format!("http://127.0.0.1:{port}/."),
        format!("http://127.0.0.1:0{port}"),
        format!(" {}", issuer.issuer),
        issuer.issuer.replace("127.0.0.1", "127.0.0.1\u{ff0e}"),
    ];
    for iss in &variants {
        let r = verify(&v, &issuer.token(json!({ "iss": iss })));
        assert!(
            r.is_err(),
            "iss {iss:?} accepted as {}: {r:?}",
            issuer.issuer
        );
    }
}

/// `typ` values other than JWT/at+jwt (a logout token, a security event
/// token) vouch for nothing here.
#[test]
fn red_team_other_token_types_are_refused() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    for typ in ["logout+jwt", "secevent+jwt", "JWE", "dpop+jwt"] {
        let mut h = issuer.header();
        h["typ"] = json!(typ);
        let r = verify(&v, &issuer.token_with_header(h, json!({})));
        assert!(r.is_err(), "typ {typ:?} accepted: {r:?}");
    }
}

/// Missing or non-numeric `exp`: never valid forever.
#[test]
fn red_team_missing_or_odd_exp_is_refused() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    for exp in [Value::Null, json!("9999999999"), json!([now() + 300])] {
        let r = verify(&v, &issuer.token(json!({ "exp": exp })));
        assert!(r.is_err(), "exp {exp:?} accepted: {r:?}");
    }
}

/// A JWKS that also publishes an HMAC (`oct`) key under the signing kid
/// cannot make an HS256 token verify (algorithm pinned).
#[test]
fn red_team_hmac_key_in_jwks_does_not_enable_hs256() {
    let oct = json!({"kty": "oct", "kid": "mini-1", "alg": "HS256", "k": B64.encode(b"secret")});
    let issuer = MiniIssuer::start_with_jwks(Some(vec![oct]));
    let v = verifier_for(&[&issuer], "", "");
    use hmac::Mac;
    let h = json!({"alg": "HS256", "typ": "JWT", "kid": "mini-1"});
    let input = format!(
        "{}.{}",
        B64.encode(h.to_string()),
        B64.encode(issuer.payload(json!({})).to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret").expect("hmac");
    mac.update(input.as_bytes());
    let token = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
    let r = verify(&v, &token);
    assert!(
        matches!(r, Err(TokenError::AlgorithmNotAllowed { .. })),
        "{r:?}"
    );
}

/// A token just over the size limit is refused before any parsing.
#[test]
fn red_team_huge_token_is_refused_without_a_fetch() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "");
    let before = issuer.fetches();
    let token = issuer.token(json!({ "pad": "x".repeat(20_000) }));
    let r = verify(&v, &token);
    assert!(matches!(r, Err(TokenError::Malformed(_))), "{r:?}");
    assert_eq!(issuer.fetches(), before);
}

/// A stream of tokens naming made-up key ids (signed by nobody the
/// issuer knows) causes at most one fetch per `min_refresh_secs`.
#[test]
fn red_team_unknown_kid_flood_fetches_at_most_once() {
    let issuer = MiniIssuer::start();
    let v = verifier_for(&[&issuer], "", "min_refresh_secs = 30\n");
    let rt = rt();
    rt.block_on(v.refresh_all());
    let base = issuer.fetches();
    assert_eq!(base, 1);
    let stranger = SigningKey::new("whatever");
    for i in 0..50 {
        let mut h = issuer.header();
        h["kid"] = json!(format!("made-up-{i}"));
        let token = stranger.sign(&h, &issuer.payload(json!({})));
        assert!(rt.block_on(v.verify(&token)).is_err());
    }
    let fetched = issuer.fetches() - base;
    assert!(fetched <= 1, "{fetched} fetches for 50 made-up kids");
}

/// The same flood while the issuer answers 503 (it was down when the
/// daemon started, so no keys are held): the README promises "at most one
/// fetch per min_refresh_secs"; every token still makes the daemon ask
/// the issuer again, so a broken issuer is hammered by every run.
#[test]
fn red_team_flood_while_the_issuer_is_down_is_rate_limited() {
    let issuer = MiniIssuer::start();
    issuer.down.store(true, Ordering::SeqCst);
    let v = verifier_for(&[&issuer], "", "min_refresh_secs = 30\n");
    let rt = rt();
    rt.block_on(v.refresh_all());
    let base = issuer.fetches();
    for i in 0..20 {
        let mut h = issuer.header();
        h["kid"] = json!(format!("made-up-{i}"));
        let r = rt.block_on(v.verify(&issuer.token_with_header(h, json!({}))));
        assert!(matches!(r, Err(TokenError::IssuerUnavailable(_))), "{r:?}");
    }
    let fetched = issuer.fetches() - base;
    assert!(
        fetched <= 1,
        "{fetched} discovery fetches for 20 tokens within min_refresh_secs while the issuer is down"
    );
}

// ------------------------------ end to end -----------------------------

/// Only acme/app's jobs reach the target.
const ONLY_ACME: &str = r#"
@id("orders-only-from-acme-app")
permit (principal, action == Action::"connect", resource)
when { principal has oidc && principal.oidc.repository == "acme/app" };
"#;

/// Everyone reaches the target except jobs of evil/app (a forbid keyed on
/// a claim, as for fork pull requests or untrusted repositories).
const ALL_BUT_EVIL: &str = r#"
@id("everyone")
permit (principal, action == Action::"connect", resource);
@id("not-evil")
forbid (principal, action == Action::"connect", resource)
when { principal has oidc && principal.oidc.repository == "evil/app" };
"#;

fn probe_results(out: &std::process::Output) -> Vec<Value> {
    json_lines(out)
        .into_iter()
        .filter(|v| v["op"] == "connect")
        .collect()
}

/// A hostile agent inside evil/app's job (the job runs as root, as CI
/// jobs with sudo do) holds a token of acme/app (read from a shared
/// runner's temp dir, a cache, a log) and runs `blastgate run` again from
/// inside its own tree. The daemon re-labels the already-labelled process
/// (the userspace map insert is BPF_ANY, while the kernel's own labelling
/// keeps an existing label): the inner tree becomes acme/app and reaches
/// what only acme/app may.
#[test]
fn red_team_nested_run_cannot_swap_in_another_repositorys_token() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(&[&github], ONLY_ACME, "", "");
    let evil = github.job_token(AUDIENCE, claims("evil/app"), 300);
    let acme = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let acme_file = scene.token_file("stolen-acme.jwt", &acme);

    // Control: evil/app's own job is refused the target.
    let out = scene.run("ci", Some(&evil), &scene.connect_cmd());
    let r = probe_results(&out);
    assert_eq!(r.len(), 1, "{}", text(&out));
    assert_eq!(r[0]["ok"], false, "evil/app reached the target directly");

    // The attack: re-label from inside the evil/app tree.
    let script = scene.nested_run("ci", Some(&acme_file), &scene.connect_cmd());
    let out = scene.run("ci", Some(&evil), &script);
    let results = probe_results(&out);
    let reached = results.iter().any(|v| v["ok"] == true);
    let relabelled = scene.env.events().into_iter().any(|e| {
        e["kind"] == "session_opened" && e["caller"]["oidc"]["claims"]["repository"] == "acme/app"
    });
    assert!(
        !reached && !relabelled,
        "a process of evil/app's job re-labelled itself with acme/app's token and reached \
         the target as acme/app: {results:?}\n{}",
        text(&out)
    );
}

/// The same agent without any other token: it re-labels itself as an
/// agent not in `require_for` ("dev") and so sheds its job's claims; a
/// `forbid` keyed on those claims no longer applies.
#[test]
fn red_team_nested_run_cannot_shed_the_job_identity() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(&[&github], ALL_BUT_EVIL, "", "");
    let evil = github.job_token(AUDIENCE, claims("evil/app"), 300);

    let out = scene.run("ci", Some(&evil), &scene.connect_cmd());
    let r = probe_results(&out);
    assert_eq!(r.len(), 1, "{}", text(&out));
    assert_eq!(r[0]["ok"], false, "the forbid on evil/app did not apply");

    let script = scene.nested_run("dev", None, &scene.connect_cmd());
    let out = scene.run("ci", Some(&evil), &script);
    let results = probe_results(&out);
    assert!(
        !results.iter().any(|v| v["ok"] == true),
        "a process of evil/app's job ran `blastgate run --agent dev` and reached the target \
         with no claims at all: {results:?}\n{}",
        text(&out)
    );
}

/// The claims follow every way a tree spreads: a double fork into a new
/// session (daemonised), a background job of a subshell, and threads.
#[test]
fn red_team_daemonised_descendants_keep_the_binding() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(&[&github], ONLY_ACME, "", "");
    let acme = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let out_a = scene.dir.path().join("a.json");
    let out_b = scene.dir.path().join("b.json");
    let script = format!(
        "setsid sh -c '( {c} > {a} & )' ; ( ( {c} > {b} ) & ) ; sleep 0.2; \
         for i in $(seq 1 100); do [ -s {a} ] && [ -s {b} ] && break; sleep 0.1; done",
        c = scene.connect_cmd(),
        a = out_a.display(),
        b = out_b.display()
    );
    let out = scene.run("ci", Some(&acme), &script);
    for f in [&out_a, &out_b] {
        let t = std::fs::read_to_string(f).unwrap_or_default();
        let v: Value = serde_json::from_str(t.trim()).unwrap_or(Value::Null);
        assert_eq!(v["ok"], true, "{}: {t}\n{}", f.display(), text(&out));
    }
}

/// The token itself (its signature, or its whole payload) is never
/// written to a record, the daemon's log, or `blastgate run`'s output:
/// neither for a token that verified nor for ones refused.
#[test]
fn red_team_token_never_appears_in_records_or_logs() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(&[&github], ONLY_ACME, "", "");
    let good = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let wrong_aud = github.job_token("someone-else", claims("acme/app"), 300);
    let tampered = tamper(&good);
    let mut outputs = String::new();
    for t in [&good, &wrong_aud, &tampered] {
        let out = scene.run("ci", Some(t), &scene.connect_cmd());
        outputs.push_str(&text(&out));
    }
    scene
        .env
        .wait_event("a session", |e| e["kind"] == "session_opened");
    let mut spool = String::new();
    for (_, path) in blastgate::records::spool::segments(&scene.env.spool).unwrap_or_default() {
        spool.push_str(&String::from_utf8_lossy(
            &std::fs::read(path).unwrap_or_default(),
        ));
    }
    let log = scene.daemon.log_text();
    for t in [&good, &wrong_aud, &tampered] {
        let parts: Vec<&str> = t.split('.').collect();
        for (what, part) in [("payload", parts[1]), ("signature", parts[2])] {
            for (place, haystack) in [
                ("spool", &spool),
                ("daemon log", &log),
                ("run output", &outputs),
            ] {
                assert!(
                    !haystack.contains(part),
                    "the token's {what} is in the {place}"
                );
            }
        }
    }
}

/// `--oidc-token-env` removes the variable from the agent's environment:
/// neither the agent, nor its children, nor /proc/PID/environ of the
/// process that ran `blastgate run` (it became the agent) show it.
#[test]
fn red_team_token_env_is_gone_from_the_whole_tree() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(&[&github], ONLY_ACME, "", "");
    let token = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let out = std::process::Command::new(BIN)
        .args(["run", "--agent", "ci", "--config"])
        .arg(&scene.env.config)
        .args(["--oidc-token-env", "BG_JOB_TOKEN", "--", "sh", "-c"])
        .arg("tr '\\0' '\\n' < /proc/$$/environ; sh -c 'tr \"\\0\" \"\\n\" < /proc/self/environ'; env; echo done")
        .env("BG_JOB_TOKEN", &token)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("done"), "{}", text(&out));
    let sig = token.split('.').nth(2).expect("sig");
    assert!(
        !stdout.contains("BG_JOB_TOKEN") && !stdout.contains(sig),
        "the token is in the agent's environment:\n{stdout}"
    );
}

/// A process of the uid enrolled as the required agent "ci", started
/// outside any job (cron, an ssh login, a left-over daemon): it proved
/// nothing, so it is refused; the same uid inside acme/app's job tree
/// keeps the job's claims (the label is inherited, not the uid's).
#[test]
fn red_team_uid_enrolled_required_agent_gets_no_claims_it_did_not_prove() {
    let _g = serial();
    if !kernel_ready() {
        return;
    }
    let Some(github) = Provider::start() else {
        return;
    };
    let scene = JobScene::start(
        &[&github],
        ONLY_ACME,
        "",
        "[enrol]\nuids = [{ uid = 4242, agent = \"ci\" }]\n",
    );
    let dst = scene.server.addr(0).to_string();
    let v = &run_json(std::process::Command::new(PROBE).args(["as-uid", "4242", &dst]))[0];
    assert_eq!(v["ok"], false, "uid-enrolled ci with no token: {v}");
    assert!(
        !scene
            .server
            .saw_peer(v["local"].as_str().unwrap_or_default()),
        "went around the proxy: {v}"
    );
    scene
        .env
        .wait_event("the refusal of the tokenless ci", |e| {
            e["kind"] == "session_denied"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("requires an OIDC token"))
        });

    let acme = github.job_token(AUDIENCE, claims("acme/app"), 300);
    let out = scene.run(
        "ci",
        Some(&acme),
        &format!("exec {PROBE} as-uid 4242 {dst}"),
    );
    let r = json_lines(&out);
    assert_eq!(
        r.first().map(|v| v["ok"].clone()),
        Some(Value::Bool(true)),
        "{}",
        text(&out)
    );
}

//! The OpenID Provider the OIDC tests run (`oidc-provider` from npm, see
//! harness/oidc.rs), checked on its own with no blastgate in the path:
//! discovery and JWKS, CI-job tokens with their claims, two issuers side by
//! side, key rotation in place, and the approvers' code flow with PKCE
//! through the real login page. If these pass, a failure in a daemon test
//! that uses the provider is the daemon's.

mod harness;

use std::time::{SystemTime, UNIX_EPOCH};

use harness::oidc::{
    alg_none, decode_claims, decode_header, form_encode, pkce_pair, tamper, CookieJar, Provider,
    DEFAULT_REDIRECT,
};
use serde_json::{json, Value};

fn job_claims() -> Value {
    json!({
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "workflow": "deploy",
        "actor": "octocat",
        "environment": "prod",
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The published key ids, in order.
fn jwks_kids(p: &Provider) -> Vec<String> {
    let jwks = p.jwks();
    let keys = jwks["keys"].as_array().expect("keys");
    for k in keys {
        // Public keys only: no private RSA member is ever published.
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(k.get(private).is_none(), "JWKS publishes {private}: {k}");
        }
        assert_eq!(k["kty"], "RSA", "{k}");
    }
    keys.iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

fn kid(token: &str) -> String {
    decode_header(token)["kid"]
        .as_str()
        .expect("kid")
        .to_string()
}

#[test]
fn two_issuers_mint_job_tokens_with_their_claims() {
    let Some(p) = Provider::start() else { return };
    let Some(q) = Provider::start() else { return };
    assert_ne!(p.issuer, q.issuer);
    for prov in [&p, &q] {
        assert_eq!(prov.issuer, format!("http://127.0.0.1:{}", prov.port));
        let conf = prov.get("/.well-known/openid-configuration").json();
        assert_eq!(conf["issuer"], prov.issuer.as_str(), "{conf}");
        assert_eq!(conf["jwks_uri"], format!("{}/jwks", prov.issuer), "{conf}");
        assert_eq!(conf["token_endpoint"], format!("{}/token", prov.issuer));
        assert!(conf["code_challenge_methods_supported"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("S256"))));
        assert_eq!(jwks_kids(prov), prov.kids());
    }

    let token = p.job_token("blastgate", job_claims(), 300);
    let header = decode_header(&token);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
    assert!(jwks_kids(&p).contains(&kid(&token)));
    let c = decode_claims(&token);
    assert_eq!(c["iss"], p.issuer.as_str(), "{c}");
    assert_eq!(c["aud"], "blastgate", "{c}");
    let (iat, exp) = (
        c["iat"].as_i64().expect("iat"),
        c["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 300, "{c}");
    assert!((iat - now()).abs() < 60, "{c}");
    for (k, v) in job_claims().as_object().expect("object") {
        assert_eq!(&c[k], v, "{c}");
    }
    assert_eq!(c["sub"], "repo:acme/app:environment:prod", "{c}");

    // Without an environment, the sub names the ref (GitHub's form).
    let c = decode_claims(&p.job_token(
        "https://blastgate.example",
        json!({"repository": "acme/lib", "ref": "refs/tags/v1"}),
        1,
    ));
    assert_eq!(c["sub"], "repo:acme/lib:ref:refs/tags/v1", "{c}");
    assert_eq!(c["aud"], "https://blastgate.example", "{c}");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 1);

    // Properly signed, expired a minute ago.
    let expired = p.expired_job_token("blastgate", job_claims());
    let c = decode_claims(&expired);
    assert!(c["exp"].as_i64().expect("exp") < now(), "{c}");
    assert_eq!(c["iss"], p.issuer.as_str());
    assert!(jwks_kids(&p).contains(&kid(&expired)));

    // The other issuer signs with keys of its own.
    let other = q.job_token("blastgate", job_claims(), 300);
    assert_eq!(decode_claims(&other)["iss"], q.issuer.as_str());
    assert!(!jwks_kids(&p).contains(&kid(&other)));
    assert!(jwks_kids(&q).contains(&kid(&other)));
}

#[test]
fn keys_rotate_in_place() {
    let Some(mut p) = Provider::start() else {
        return;
    };
    let old = p.job_token("blastgate", job_claims(), 300);
    let k1 = kid(&old);
    assert_eq!(p.kids(), [k1.as_str()]);

    p.rotate_keys();
    let new = p.job_token("blastgate", job_claims(), 300);
    let k2 = kid(&new);
    assert_ne!(k1, k2);
    assert_eq!(p.kids(), [k2.as_str(), k1.as_str()]);
    assert_eq!(jwks_kids(&p), [k2.as_str(), k1.as_str()]);
    assert_eq!(decode_claims(&new)["iss"], p.issuer.as_str());
    let conf = p.get("/.well-known/openid-configuration").json();
    assert_eq!(conf["issuer"], p.issuer.as_str());

    p.drop_old_keys();
    assert_eq!(jwks_kids(&p), [k2.as_str()]);
    assert_eq!(kid(&p.job_token("blastgate", job_claims(), 300)), k2);

    // An outage, then the same issuer with the same keys.
    p.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", p.port)).is_err());
    p.restart();
    assert_eq!(jwks_kids(&p), [k2.as_str()]);
    assert_eq!(kid(&p.job_token("blastgate", job_claims(), 300)), k2);
}

#[test]
fn approvers_log_in_with_code_flow_and_pkce() {
    let Some(mut p) = Provider::start() else {
        return;
    };
    let (client_id, _) = p.login_client();

    // What the browser will see: a redirect to the provider's login page,
    // which stays on loopback (no web font from elsewhere).
    let (_, challenge) = pkce_pair();
    let mut jar = CookieJar::default();
    let url = p.authorization_url(DEFAULT_REDIRECT, "st", "n", &challenge);
    let r = jar.send(&p, "GET", &url, &[], None);
    assert_eq!(r.status, 303, "{}", r.body);
    let login = r.location();
    assert!(login.contains("/interaction/"), "{login}");
    let page = jar.send(&p, "GET", &login, &[], None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("name=\"login\""), "{}", page.body);
    assert!(page.body.contains("name=\"password\""), "{}", page.body);
    assert!(!page.body.contains("googleapis"), "{}", page.body);

    // PKCE is required.
    let no_pkce = format!(
        "{}/auth?{}",
        p.issuer,
        form_encode(&[
            ("client_id", &client_id),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", DEFAULT_REDIRECT),
        ])
    );
    let r = p.get(&no_pkce);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with(DEFAULT_REDIRECT),
        "{}",
        r.location()
    );
    assert!(
        r.location().contains("error=invalid_request"),
        "{}",
        r.location()
    );

    for (user, groups) in [
        ("alice", json!(["dba"])),
        ("bob", json!(["dev"])),
        ("carol", json!([])),
    ] {
        let tokens = p.code_flow(user, DEFAULT_REDIRECT);
        let id = tokens["id_token"].as_str().expect("id_token");
        assert!(jwks_kids(&p).contains(&kid(id)));
        let c = decode_claims(id);
        assert_eq!(c["iss"], p.issuer.as_str(), "{c}");
        assert_eq!(c["aud"], client_id.as_str(), "{c}");
        assert_eq!(c["sub"], user, "{c}");
        assert_eq!(c["groups"], groups, "{c}");
        assert!(c["nonce"].is_string(), "{c}");
    }

    // The console's address, known later.
    let console = "http://127.0.0.1:8/oidc/callback";
    p.set_redirect_uris(&[console]);
    let c = decode_claims(
        p.code_flow("alice", console)["id_token"]
            .as_str()
            .expect("id_token"),
    );
    assert_eq!(c["groups"], json!(["dba"]));
}

#[test]
fn forged_token_helpers() {
    let Some(p) = Provider::start() else { return };
    let token = p.job_token("blastgate", job_claims(), 300);
    let parts: Vec<&str> = token.split('.').collect();

    let t = tamper(&token);
    let tp: Vec<&str> = t.split('.').collect();
    assert_eq!((tp[0], tp[2]), (parts[0], parts[2]));
    let c = decode_claims(&t);
    assert_eq!(c["repository"], "evil/app");
    assert_eq!(c["iss"], p.issuer.as_str());

    let n = alg_none(&token);
    assert_eq!(decode_header(&n), json!({"alg": "none"}));
    assert_eq!(decode_claims(&n), decode_claims(&token));
    assert!(n.ends_with('.'));
}

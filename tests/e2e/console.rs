//! The approvers' web console against a real OpenID Provider (npm
//! oidc-provider on loopback), a real PostgreSQL behind the gateway, the
//! real kernel, and (for what a person does) headless Chromium.

mod harness;

use std::{
    process::{Command, Output},
    time::Duration,
};

use harness::{oidc::Provider, pg_gateway, *};

struct Console {
    setup: pg_gateway::Setup,
    provider: Provider,
    url: String,
    ca: std::path::PathBuf,
    _secret: tempfile::TempDir,
}

impl Console {
    fn start() -> Option<Console> {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let provider = Provider::start_with_redirect(&format!("{url}/callback"))?;
        let (client_id, secret) = provider.login_client();
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("console-secret");
        std::fs::write(&secret_file, secret).expect("secret");
        let setup = pg_gateway::setup_with(
            "orders-db",
            "staging",
            None,
            &format!(
                "[console]\nlisten = \"127.0.0.1:{port}\"\nissuer = \"{}\"\nclient_id = \"{client_id}\"\n\
                 client_secret_file = \"{}\"\n",
                provider.issuer,
                secret_file.display()
            ),
        )?;
        let ca = setup.env.dir.path().join("ca").join("ca.pem");
        let up = wait_until(Duration::from_secs(10), || {
            let out = curl(
                &ca,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("{url}/healthz"),
                ],
            );
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        });
        assert!(up.is_some(), "the console did not answer /healthz");
        Some(Console {
            setup,
            provider,
            url,
            ca,
            _secret: dir,
        })
    }

    fn curl(&self, args: &[&str]) -> Output {
        curl(&self.ca, args)
    }

    fn refusals(&self) -> Vec<serde_json::Value> {
        self.setup
            .env
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "console_refused")
            .collect()
    }
}

/// curl trusting blastgate's local CA (the console's certificate).
fn curl(ca: &std::path::Path, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .output()
        .expect("curl")
}

#[test]
fn nothing_is_served_without_a_session_and_forged_posts_are_recorded() {
    let _g = serial();
    let Some(c) = Console::start() else {
        return;
    };
    // Pages send the browser to sign in; the sign-in goes to the issuer
    // with PKCE and a state, and sets the login cookie.
    let out = c.curl(&["-D", "-", "-o", "/dev/null", &format!("{}/", c.url)]);
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    assert!(head.contains("location: /login?next=%2F"), "{head}");
    let out = c.curl(&["-D", "-", "-o", "/dev/null", &format!("{}/login", c.url)]);
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        location.starts_with(&format!("{}/auth?", c.provider.issuer)),
        "{head}"
    );
    for want in [
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
    ] {
        assert!(location.contains(want), "{want}: {location}");
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("set-cookie: __host-bg_login=")
            && head.contains("Secure; HttpOnly; SameSite=Lax"),
        "{head}"
    );
    // The API and posts answer 401 and are recorded.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/api/approvals", c.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let forged = format!("{}/approvals/{}", c.url, uuid::Uuid::now_v7());
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data",
        "decision=approve&reason=forged&csrf=x",
        &forged,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // A forged session cookie is no session either.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Cookie: __Host-bg_session=forged",
        "--data",
        "decision=approve&reason=forged&csrf=x",
        &forged,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let refused = wait_until(Duration::from_secs(5), || {
        let r = c.refusals();
        (r.len() >= 3).then_some(r)
    })
    .unwrap_or_else(|| panic!("refusals not recorded: {:#?}", c.refusals()));
    assert!(
        refused.iter().all(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without a session"))),
        "{refused:#?}"
    );
    // A callback that no browser started is refused.
    let out = c.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/callback?code=x&state=y", c.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    // Health needs nothing.
    let out = c.curl(&[&format!("{}/healthz", c.url)]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

//! A real OpenID Provider on loopback for the benchmarks: the tests' own
//! provider script (`tests/e2e/oidc/provider.mjs`, the certified npm
//! package `oidc-provider` that `cargo xtask setup` installs) under node,
//! and CI-job tokens minted through its real `/token` endpoint with curl.
//! Only 127.0.0.1 is ever contacted.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    demo::{wait_for, Guard},
    setup::OIDC_DIR,
    sh,
};

/// The job client of the provider script (client_credentials).
const JOB_CLIENT: (&str, &str) = ("ci-jobs", "ci-jobs-secret");
/// The resource indicator the script mints job tokens for; the audience
/// itself is the `audience` field of the request.
const JOB_RESOURCE: &str = "urn:blastgate:ci-job";

/// The provider, stopped when this drops.
pub struct Provider {
    /// `http://127.0.0.1:PORT`, exactly as the tokens' `iss` says.
    pub issuer: String,
    _node: Guard,
}

impl Provider {
    /// Starts node on a free port of 127.0.0.1, pinned to `cpus`, with its
    /// files in `dir` (created); returns once the script says "ready".
    pub fn start(root: &Path, dir: &Path, cpus: &str) -> Result<Provider> {
        let modules = Path::new(OIDC_DIR).join("node_modules");
        if !modules.join("oidc-provider/package.json").exists() {
            bail!("oidc-provider is not installed in {OIDC_DIR} (cargo xtask setup installs it)");
        }
        std::fs::create_dir_all(dir)?;
        // ESM resolves a bare import from the script's own directory: run
        // a copy beside a node_modules symlink to the installed packages.
        std::fs::copy(
            root.join("tests/e2e/oidc/provider.mjs"),
            dir.join("provider.mjs"),
        )
        .context("copying provider.mjs")?;
        std::os::unix::fs::symlink(&modules, dir.join("node_modules"))
            .context("linking node_modules")?;
        let log = dir.join("provider.log");
        // A free port can be taken before node binds it: try another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let issuer = format!("http://127.0.0.1:{port}");
            std::fs::write(
                dir.join("config.json"),
                serde_json::to_vec_pretty(&config(dir, port, &issuer)?)?,
            )?;
            let out = dir.join("provider.out");
            let mut node = Guard::spawn(
                "the OpenID Provider (node)",
                Command::new("taskset")
                    .args(["-c", cpus, "node", "provider.mjs", "config.json"])
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(&out)?)
                    .stderr(std::fs::File::create(&log)?),
            )?;
            let ready = wait_for("the OpenID Provider", Duration::from_secs(30), || {
                node.exited() || said_ready(&out)
            });
            if ready.is_ok() && !node.exited() {
                return Ok(Provider {
                    issuer,
                    _node: node,
                });
            }
            node.stop();
        }
        bail!(
            "the OpenID Provider did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    /// A CI-job token (RS256 JWT) from the provider's `/token`: `aud` =
    /// `audience`, valid for `ttl_secs`, with the job's `claims`.
    pub fn job_token(&self, audience: &str, claims: &Value, ttl_secs: u64) -> Result<String> {
        let out = sh::stdout(
            Command::new("curl")
                .args(["-sS", "--noproxy", "*", "--max-time", "10"])
                .args(["-d", "grant_type=client_credentials"])
                .arg("--data-urlencode")
                .arg(format!("client_id={}", JOB_CLIENT.0))
                .arg("--data-urlencode")
                .arg(format!("client_secret={}", JOB_CLIENT.1))
                .arg("--data-urlencode")
                .arg(format!("resource={JOB_RESOURCE}"))
                .arg("--data-urlencode")
                .arg(format!("audience={audience}"))
                .args(["-d", &format!("ttl={ttl_secs}")])
                .arg("--data-urlencode")
                .arg(format!("job_claims={claims}"))
                .arg(format!("{}/token", self.issuer)),
        )
        .context("minting a job token")?;
        access_token(&out)
    }
}

/// The script's configuration: a new signing key, the job client, and a
/// login client nobody uses here (the script wants one).
fn config(dir: &Path, port: u16, issuer: &str) -> Result<Value> {
    let mut cookie_key = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut cookie_key)?;
    Ok(json!({
        "port": port,
        "issuer": issuer,
        "keys_file": dir.join("keys.json"),
        "key_action": "new",
        "job_client": {"client_id": JOB_CLIENT.0, "client_secret": JOB_CLIENT.1},
        "login_client": {
            "client_id": "blastgate-console",
            "client_secret": "console-secret",
            "redirect_uris": ["http://127.0.0.1:9/callback"],
        },
        "users": {},
        "cookie_key": cookie_key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    }))
}

/// Whether the script's stdout (`out`) has its "ready PORT KIDS" line.
fn said_ready(out: &Path) -> bool {
    std::fs::read_to_string(out)
        .map(|s| s.lines().any(|l| l.starts_with("ready ")))
        .unwrap_or(false)
}

/// The `access_token` of a token endpoint's JSON answer.
fn access_token(body: &str) -> Result<String> {
    let v: Value = serde_json::from_str(body.trim())
        .with_context(|| format!("the token endpoint answered {body:?}"))?;
    match v["access_token"].as_str() {
        Some(t) if t.split('.').count() == 3 => Ok(t.to_string()),
        _ => bail!("no JWT access_token in the token endpoint's answer: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_token_is_read_and_must_be_a_jwt() {
        let ok = r#"{"access_token":"a.b.c","expires_in":600,"token_type":"Bearer"}"#;
        assert_eq!(access_token(ok).unwrap(), "a.b.c");
        assert!(access_token(r#"{"error":"invalid_target"}"#).is_err());
        assert!(access_token(r#"{"access_token":"opaque"}"#).is_err());
        assert!(access_token("<html>").is_err());
    }
}

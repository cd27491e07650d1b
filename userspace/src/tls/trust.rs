//! Making agents trust the local CA without changing the host: a bundle of
//! the system's roots plus the CA, and the environment variables the usual
//! clients read it from. `blastgate ca install` is the host-wide way.

use std::path::{Path, PathBuf};

use super::{keyfile::write_atomically, LocalCa};

/// The system's roots on Debian and Ubuntu.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where `ca install` puts the CA for `update-ca-certificates`.
pub const HOST_ANCHOR: &str = "/usr/local/share/ca-certificates/blastgate-local-ca.crt";
const BUNDLE_FILE: &str = "trust-bundle.pem";
const CA_FILE: &str = "ca.pem";

/// The bundle in `ca_dir`, rewritten from the system roots and the CA (so
/// root updates reach agents at the next start).
pub fn write_bundle(ca: &LocalCa, ca_dir: &Path) -> std::io::Result<PathBuf> {
    let mut text = std::fs::read_to_string(SYSTEM_ROOTS).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ca.cert_pem());
    let path = ca_dir.join(BUNDLE_FILE);
    write_atomically(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// The variables `blastgate run` sets when the local CA exists: OpenSSL
/// (and so curl, git, Python's ssl), python requests, curl and git
/// explicitly, the AWS CLI and SDKs, and node (which adds to its own
/// roots, so it gets the CA alone).
pub fn agent_env(ca_dir: &Path) -> Option<Vec<(&'static str, PathBuf)>> {
    let ca = ca_dir.join(CA_FILE);
    let bundle = ca_dir.join(BUNDLE_FILE);
    if !ca.is_file() || !bundle.is_file() {
        return None;
    }
    Some(vec![
        ("SSL_CERT_FILE", bundle.clone()),
        ("REQUESTS_CA_BUNDLE", bundle.clone()),
        ("CURL_CA_BUNDLE", bundle.clone()),
        ("GIT_SSL_CAINFO", bundle.clone()),
        ("AWS_CA_BUNDLE", bundle),
        ("NODE_EXTRA_CA_CERTS", ca),
    ])
}

/// Why the host trust store could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum HostTrustError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("update-ca-certificates: {0}")]
    Update(String),
}

/// Puts the CA into the host's trust store (Debian/Ubuntu: an anchor for
/// `update-ca-certificates`). False when it was already there as it is.
pub fn install_host_anchor(ca: &LocalCa) -> Result<bool, HostTrustError> {
    let anchor = Path::new(HOST_ANCHOR);
    if std::fs::read_to_string(anchor).is_ok_and(|current| current == ca.cert_pem()) {
        return Ok(false);
    }
    let io = |action, source| HostTrustError::Io {
        action,
        path: anchor.to_path_buf(),
        source,
    };
    if let Some(dir) = anchor.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    write_atomically(anchor, ca.cert_pem().as_bytes(), 0o644).map_err(|e| io("writing", e))?;
    update_ca_certificates(&[])?;
    Ok(true)
}

/// Takes the anchor [`install_host_anchor`] added out of the trust store.
/// False when there was none.
pub fn remove_host_anchor() -> Result<bool, HostTrustError> {
    let anchor = Path::new(HOST_ANCHOR);
    match std::fs::remove_file(anchor) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(HostTrustError::Io {
                action: "removing",
                path: anchor.to_path_buf(),
                source,
            })
        }
    }
    // --fresh: a removed anchor is only dropped from the bundle when it is
    // rebuilt.
    update_ca_certificates(&["--fresh"])?;
    Ok(true)
}

fn update_ca_certificates(args: &[&str]) -> Result<(), HostTrustError> {
    let out = std::process::Command::new("update-ca-certificates")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| HostTrustError::Update(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(HostTrustError::Update(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

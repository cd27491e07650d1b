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
/// explicitly, and node (which adds to its own roots, so it gets the CA
/// alone).
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
        ("GIT_SSL_CAINFO", bundle),
        ("NODE_EXTRA_CA_CERTS", ca),
    ])
}

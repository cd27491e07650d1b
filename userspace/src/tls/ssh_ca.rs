//! blastgate's SSH certificate authority.
//!
//! The SSH gateway terminates agents' SSH connections, so it has to prove to
//! the unmodified OpenSSH client that it is the target the agent typed. Rather
//! than collecting every target's real host key (which blastgate must never
//! hold) or teaching agents to skip host key checks, every host generates its
//! own Ed25519 CA once, the installer writes one `@cert-authority` line for it
//! to `/etc/ssh/ssh_known_hosts`, and the gateway presents short-lived host
//! certificates minted from it per target.
//!
//! russh 0.65.1 presents host certificates through `server::Config`: the
//! certificate goes into `Config::certificates` and its private key into
//! `Config::keys`. russh advertises `ssh-ed25519-cert-v01@openssh.com` only
//! when both are there (and Ed25519 is in `Config::preferred.key`), and lists
//! it ahead of the plain key so a client that trusts the CA is served the
//! certificate. [`HostIdentity::install`] does exactly that.

use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::rand_core::Rng;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, Certificate, PrivateKey, PublicKey};

const KEY_FILE: &str = "ssh_ca";
const PUB_FILE: &str = "ssh_ca.pub";
/// Shown by `ssh-keygen -l` and in known_hosts files, so operators can tell
/// which line trusts blastgate.
const CA_COMMENT: &str = "blastgate-ssh-ca";
/// Agents' hosts and blastgate's host can disagree on the time by a little;
/// a certificate that is "not yet valid" fails with an error nobody connects
/// to clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// OpenSSH looks up the bare host name when the port is 22, and `[host]:port`
/// otherwise.
const DEFAULT_SSH_PORT: u16 = 22;

/// Everything that can go wrong with the SSH CA. The variants about files
/// name the file, because the fix is nearly always something the operator
/// does to that file.
#[derive(Debug, thiserror::Error)]
pub enum SshCaError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "found {} but not {}; refusing to generate a new SSH CA because hosts may already \
         trust the old one: restore the missing file (`ssh-keygen -y -f ssh_ca > ssh_ca.pub` \
         recreates the public half), or remove both to start over",
        present.display(),
        missing.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot parse SSH CA key {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "SSH CA private key {} does not belong to the public key {}",
        key.display(),
        public.display()
    )]
    KeyMismatch { key: PathBuf, public: PathBuf },
    #[error(
        "SSH CA private key {} is accessible by other users (mode {mode:04o}); run `chmod 600` on it",
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("a host certificate needs at least one principal")]
    NoPrincipals,
    #[error(
        "{principal:?} cannot be a host certificate principal: OpenSSH compares principals \
         literally with the host name the client was given"
    )]
    InvalidPrincipal { principal: String },
    #[error(
        "a host certificate needs a validity greater than zero and representable in Unix time"
    )]
    InvalidValidity,
    #[error("the system clock is before 1970")]
    Clock,
    #[error(
        "the server configuration does not allow ssh-ed25519 host keys, so russh would never \
         present the certificate"
    )]
    Ed25519NotPreferred,
    #[error("cannot {action}: {source}")]
    Ssh {
        action: &'static str,
        source: russh::keys::ssh_key::Error,
    },
}

/// blastgate's SSH CA: an Ed25519 key kept in `dir` (`ssh_ca`, the private
/// key in OpenSSH format, mode 0600; `ssh_ca.pub`).
///
/// The key never leaves this struct except through the file written at
/// creation, so the only way to mint certificates hosts trust is through
/// [`SshCa::host_identity`].
pub struct SshCa {
    key_path: PathBuf,
    key: PrivateKey,
    /// Rendered once at load, so the accessors cannot fail later.
    public_line: String,
}

impl fmt::Debug for SshCa {
    // Hand-written so that logging an SshCa can never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshCa")
            .field("key_path", &self.key_path)
            .field("public_key", &self.public_line)
            .finish_non_exhaustive()
    }
}

/// A host key and the certificate for it, in the types russh's server
/// configuration holds.
pub struct HostIdentity {
    pub key: PrivateKey,
    pub certificate: Certificate,
}

impl fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostIdentity")
            .field("key_id", &self.certificate.key_id())
            .field("principals", &self.certificate.valid_principals())
            .field("valid_before", &self.certificate.valid_before())
            .finish_non_exhaustive()
    }
}

impl HostIdentity {
    /// Makes `config` present this identity and nothing else.
    ///
    /// Any other host key would be offered to clients that do not ask for
    /// certificates, and they would reject it anyway (no known_hosts line
    /// names it), so replacing rather than adding keeps failures about the
    /// certificate instead of about some unrelated key.
    pub fn install(self, config: &mut russh::server::Config) -> Result<(), SshCaError> {
        // russh silently drops certificates whose algorithm is not in the
        // preference list; the server would then fail every key exchange.
        if !config.preferred.key.contains(&Algorithm::Ed25519) {
            return Err(SshCaError::Ed25519NotPreferred);
        }
        config.keys = vec![self.key];
        config.certificates = vec![self.certificate];
        Ok(())
    }
}

impl SshCa {
    /// Whether `dir` holds a CA already (both halves): `load_or_create`
    /// would load rather than create.
    pub fn present(dir: &Path) -> bool {
        dir.join(KEY_FILE).exists() && dir.join(PUB_FILE).exists()
    }

    /// Loads the CA from `dir`, or creates it if neither file exists.
    ///
    /// Never regenerates over a partial or broken CA: hosts trust the old
    /// public key through their known_hosts files, and silently replacing it
    /// would make every agent's `ssh` fail host key verification with an
    /// error that points nowhere near the cause.
    pub fn load_or_create(dir: &Path) -> Result<SshCa, SshCaError> {
        let key_path = dir.join(KEY_FILE);
        let pub_path = dir.join(PUB_FILE);
        match (exists(&key_path)?, exists(&pub_path)?) {
            (true, true) => Self::load(key_path, pub_path),
            (false, false) => Self::create(dir, key_path, pub_path),
            (true, false) => Err(SshCaError::Incomplete {
                present: key_path,
                missing: pub_path,
            }),
            (false, true) => Err(SshCaError::Incomplete {
                present: pub_path,
                missing: key_path,
            }),
        }
    }

    /// The CA's public key as one OpenSSH line, always with blastgate's
    /// comment so it is recognisable wherever an operator pastes it.
    pub fn public_key_line(&self) -> String {
        self.public_line.clone()
    }

    /// A known_hosts line trusting this CA for `hosts`.
    ///
    /// OpenSSH looks up `[host]:port` rather than `host` when the port is not
    /// 22, so both forms are listed for any other port: the same line then
    /// works whether the agent's target runs on the default port or not.
    /// Host patterns (wildcards included) are fine here, unlike in
    /// certificate principals. Entries that cannot be written into a
    /// known_hosts pattern list (empty, or containing whitespace or commas)
    /// are left out rather than corrupting the line.
    pub fn known_hosts_line(&self, hosts: &[String], port: Option<u16>) -> String {
        let mut patterns: Vec<String> = Vec::new();
        let mut push = |pattern: String| {
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        };
        for host in hosts.iter().filter(|h| is_known_hosts_pattern(h)) {
            push(host.clone());
            if let Some(port) = port.filter(|p| *p != DEFAULT_SSH_PORT) {
                push(format!("[{host}]:{port}"));
            }
        }
        format!(
            "@cert-authority {} {}",
            patterns.join(","),
            self.public_line
        )
    }

    /// A fresh host key and a host certificate for it, valid for every name
    /// in `principals`.
    ///
    /// Each identity gets its own key and random serial, so a key that leaks
    /// from the gateway's memory is good for one target for `validity` at
    /// most. OpenSSH compares principals byte for byte with the host name
    /// the client was given, lower-cased, so principals are lower-cased here
    /// and wildcards are refused (they would never match). The certificate
    /// is backdated a few minutes so clients whose clocks run behind still
    /// accept it; `validity` counts from now.
    pub fn host_identity(
        &self,
        target: &str,
        principals: &[String],
        validity: Duration,
    ) -> Result<HostIdentity, SshCaError> {
        let principals = normalize_principals(principals)?;
        if validity.is_zero() {
            return Err(SshCaError::InvalidValidity);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SshCaError::Clock)?;
        let valid_after = now.saturating_sub(BACKDATE).as_secs();
        let valid_before = now
            .checked_add(validity)
            .map(|t| t.as_secs())
            // OpenSSH treats the all-ones value as "forever"; a finite
            // validity must never turn into that.
            .filter(|t| *t < u64::MAX)
            .ok_or(SshCaError::InvalidValidity)?;

        let mut rng = russh::keys::key::safe_rng();
        let key =
            PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| SshCaError::Ssh {
                action: "generate a host key",
                source,
            })?;
        let ssh = |action: &'static str| move |source| SshCaError::Ssh { action, source };
        let mut builder =
            Builder::new_with_random_nonce(&mut rng, key.public_key(), valid_after, valid_before)
                .map_err(ssh("start a host certificate"))?;
        builder
            .serial(rng.next_u64())
            .and_then(|b| b.cert_type(CertType::Host))
            .and_then(|b| b.key_id(format!("blastgate:{target}")))
            .map_err(ssh("fill in a host certificate"))?;
        for principal in principals {
            builder
                .valid_principal(principal)
                .map_err(ssh("add a host certificate principal"))?;
        }
        let certificate = builder
            .sign(&self.key)
            .map_err(ssh("sign a host certificate"))?;
        Ok(HostIdentity { key, certificate })
    }

    fn load(key_path: PathBuf, pub_path: PathBuf) -> Result<SshCa, SshCaError> {
        let mode = fs::metadata(&key_path)
            .map_err(|e| io_error("inspect", &key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            // Anyone who can read this key can impersonate every SSH server
            // to every client that trusts the CA.
            return Err(SshCaError::KeyPermissions {
                path: key_path,
                mode: mode & 0o7777,
            });
        }

        let key_text = fs::read(&key_path).map_err(|e| io_error("read", &key_path, e))?;
        let bad_key = |path: &Path, reason: String| SshCaError::BadKey {
            path: path.to_path_buf(),
            reason,
        };
        let key =
            PrivateKey::from_openssh(&key_text).map_err(|e| bad_key(&key_path, e.to_string()))?;
        if key.is_encrypted() {
            // The gateway starts unattended; nobody is there to type a
            // passphrase.
            return Err(bad_key(&key_path, "the key is passphrase-protected".into()));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(bad_key(
                &key_path,
                format!("{} key, expected ssh-ed25519", key.algorithm()),
            ));
        }

        let pub_text = fs::read_to_string(&pub_path).map_err(|e| io_error("read", &pub_path, e))?;
        let public = PublicKey::from_openssh(pub_text.trim())
            .map_err(|e| bad_key(&pub_path, e.to_string()))?;
        // The public file is what operators copy into known_hosts; if it
        // differs from the key that signs, every certificate is rejected.
        if public.key_data() != key.public_key().key_data() {
            return Err(SshCaError::KeyMismatch {
                key: key_path,
                public: pub_path,
            });
        }

        Self::assemble(key_path, key)
    }

    fn create(dir: &Path, key_path: PathBuf, pub_path: PathBuf) -> Result<SshCa, SshCaError> {
        DirBuilder::new()
            .recursive(true)
            .mode(super::CA_DIR_MODE)
            .create(dir)
            .map_err(|e| io_error("create directory", dir, e))?;

        let mut rng = russh::keys::key::safe_rng();
        let mut key =
            PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| SshCaError::Ssh {
                action: "generate the SSH CA key",
                source,
            })?;
        key.set_comment(CA_COMMENT);
        let key_text = key
            .to_openssh(LineEnding::LF)
            .map_err(|source| SshCaError::Ssh {
                action: "encode the SSH CA key",
                source,
            })?;
        let ca = Self::assemble(key_path, key)?;

        // Private key first: a public key on disk must never be without its
        // private half, since the public key is what hosts are told to trust.
        write_atomically(&ca.key_path, key_text.as_bytes(), 0o600)?;
        write_atomically(&pub_path, format!("{}\n", ca.public_line).as_bytes(), 0o644)?;
        // Make the renames durable, or a crash could lose a CA that agents'
        // hosts were already told to trust.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
        Ok(ca)
    }

    fn assemble(key_path: PathBuf, key: PrivateKey) -> Result<SshCa, SshCaError> {
        let public_line = PublicKey::new(key.public_key().key_data().clone(), CA_COMMENT)
            .to_openssh()
            .map_err(|e| SshCaError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(SshCa {
            key_path,
            key,
            public_line,
        })
    }
}

/// Lower-cases and de-duplicates principals, refusing what OpenSSH could
/// never match against a host name.
fn normalize_principals(principals: &[String]) -> Result<Vec<String>, SshCaError> {
    let mut out: Vec<String> = Vec::new();
    for principal in principals {
        let invalid = principal.is_empty()
            || principal
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '!' | ','));
        if invalid {
            return Err(SshCaError::InvalidPrincipal {
                principal: principal.clone(),
            });
        }
        let lower = principal.to_ascii_lowercase();
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    if out.is_empty() {
        // An empty principal list means "any host" to OpenSSH.
        return Err(SshCaError::NoPrincipals);
    }
    Ok(out)
}

fn is_known_hosts_pattern(host: &str) -> bool {
    !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

fn exists(path: &Path) -> Result<bool, SshCaError> {
    path.try_exists().map_err(|e| io_error("check", path, e))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> SshCaError {
    SshCaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), SshCaError> {
    super::keyfile::write_atomically(path, contents, mode).map_err(|e| io_error("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::process::Output;
    use std::sync::Arc;

    use russh::keys::HashAlg;
    use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
    use russh::{Channel, ChannelId};
    use tokio::net::TcpListener;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    impl SshCa {
        /// SHA-256 fingerprint of the CA key, as `ssh-keygen -l` prints it.
        fn fingerprint(&self) -> russh::keys::ssh_key::Fingerprint {
            self.key.public_key().fingerprint(HashAlg::Sha256)
        }
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn create_then_load_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let created = SshCa::load_or_create(&ca_dir).unwrap();
        let loaded = SshCa::load_or_create(&ca_dir).unwrap();
        assert_eq!(created.public_key_line(), loaded.public_key_line());
        assert!(created.public_key_line().starts_with("ssh-ed25519 AAAA"));
        assert!(created.public_key_line().ends_with(" blastgate-ssh-ca"));

        let pub_text = fs::read_to_string(ca_dir.join(PUB_FILE)).unwrap();
        assert_eq!(pub_text, format!("{}\n", created.public_key_line()));
        // The private file is a standard OpenSSH key that ssh-keygen can use.
        let key_text = fs::read_to_string(ca_dir.join(KEY_FILE)).unwrap();
        assert!(key_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        // No temporary files are left behind.
        let mut entries: Vec<String> = fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries, vec![KEY_FILE.to_string(), PUB_FILE.to_string()]);
    }

    #[test]
    fn private_key_is_0600_and_directory_searchable_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        SshCa::load_or_create(&ca_dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&ca_dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir.join(PUB_FILE)), 0o644);
        assert_eq!(mode(&ca_dir), 0o711);
    }

    #[test]
    fn half_present_pair_is_an_error() {
        for remove in [KEY_FILE, PUB_FILE] {
            let dir = tempfile::tempdir().unwrap();
            SshCa::load_or_create(dir.path()).unwrap();
            fs::remove_file(dir.path().join(remove)).unwrap();
            let err = SshCa::load_or_create(dir.path()).unwrap_err();
            assert!(
                matches!(&err, SshCaError::Incomplete { missing, .. } if missing.ends_with(remove)),
                "{err}"
            );
            assert!(err.to_string().contains(remove), "{err}");
            // Nothing was regenerated.
            assert!(!dir.path().join(remove).exists());
        }
    }

    #[test]
    fn malformed_or_mismatched_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        SshCa::load_or_create(dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        SshCa::load_or_create(other.path()).unwrap();

        // A public key from another CA.
        let pub_path = dir.path().join(PUB_FILE);
        let original_pub = fs::read(&pub_path).unwrap();
        fs::copy(other.path().join(PUB_FILE), &pub_path).unwrap();
        let err = SshCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, SshCaError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(PUB_FILE), "{err}");

        // Garbage in the public file.
        fs::write(&pub_path, "not a key\n").unwrap();
        let err = SshCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, SshCaError::BadKey { ref path, .. } if *path == pub_path));
        fs::write(&pub_path, &original_pub).unwrap();

        // Garbage in the private file.
        let key_path = dir.path().join(KEY_FILE);
        fs::write(&key_path, "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n").unwrap();
        let err = SshCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, SshCaError::BadKey { ref path, .. } if *path == key_path));
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }

    #[test]
    fn readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SshCa::load_or_create(dir.path()).unwrap();
        let key_path = dir.path().join(KEY_FILE);
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SshCa::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, SshCaError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
    }

    #[test]
    fn known_hosts_line_lists_both_forms_for_other_ports() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        let pk = ca.public_key_line();
        let hosts = names(&["deploy.internal", "127.0.0.2"]);
        assert_eq!(
            ca.known_hosts_line(&hosts, None),
            format!("@cert-authority deploy.internal,127.0.0.2 {pk}")
        );
        assert_eq!(
            ca.known_hosts_line(&hosts, Some(22)),
            format!("@cert-authority deploy.internal,127.0.0.2 {pk}")
        );
        assert_eq!(
            ca.known_hosts_line(&hosts, Some(2222)),
            format!(
                "@cert-authority deploy.internal,[deploy.internal]:2222,127.0.0.2,[127.0.0.2]:2222 {pk}"
            )
        );
        // Entries that would break the line are dropped.
        assert_eq!(
            ca.known_hosts_line(&names(&["a b", "", "x,y", "*.internal"]), None),
            format!("@cert-authority *.internal {pk}")
        );
    }

    #[test]
    fn host_certificate_fields_and_signature_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        let before = now_secs();
        let id = ca
            .host_identity(
                "deploy",
                &names(&["Deploy.Internal", "deploy", "10.0.0.5", "deploy"]),
                DAY,
            )
            .unwrap();
        let after = now_secs();
        let cert = &id.certificate;

        cert.validate([&ca.fingerprint()]).unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.key_id(), "blastgate:deploy");
        assert_eq!(
            cert.valid_principals(),
            names(&["deploy.internal", "deploy", "10.0.0.5"]).as_slice()
        );
        assert!(cert.valid_after() >= before - BACKDATE.as_secs());
        assert!(cert.valid_after() <= after - BACKDATE.as_secs());
        assert!(cert.valid_before() >= before + DAY.as_secs());
        assert!(cert.valid_before() <= after + DAY.as_secs());
        assert!(cert.critical_options().is_empty());
        assert_eq!(cert.public_key(), id.key.public_key().key_data());
        assert_eq!(cert.signature_key(), ca.key.public_key().key_data());
        // Valid within its window only.
        let fp = ca.fingerprint();
        assert!(cert.validate_at(cert.valid_after(), [&fp]).is_ok());
        assert!(cert.validate_at(cert.valid_after() - 1, [&fp]).is_err());
        assert!(cert.validate_at(cert.valid_before(), [&fp]).is_err());

        // Another CA's fingerprint does not validate it.
        let other_dir = tempfile::tempdir().unwrap();
        let other = SshCa::load_or_create(other_dir.path()).unwrap();
        assert!(cert.validate([&other.fingerprint()]).is_err());

        // Each identity has its own key and serial.
        let second = ca
            .host_identity("deploy", &names(&["deploy"]), DAY)
            .unwrap();
        assert_ne!(
            second.key.public_key().key_data(),
            id.key.public_key().key_data()
        );
        assert_ne!(second.certificate.serial(), cert.serial());
    }

    #[test]
    fn bad_principals_and_validity_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        for bad in ["*.internal", "host?", "", "a b", "a,b", "!x"] {
            let err = ca.host_identity("t", &names(&[bad]), DAY).unwrap_err();
            assert!(
                matches!(err, SshCaError::InvalidPrincipal { .. }),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            ca.host_identity("t", &[], DAY),
            Err(SshCaError::NoPrincipals)
        ));
        assert!(matches!(
            ca.host_identity("t", &names(&["h"]), Duration::ZERO),
            Err(SshCaError::InvalidValidity)
        ));
        assert!(matches!(
            ca.host_identity("t", &names(&["h"]), Duration::MAX),
            Err(SshCaError::InvalidValidity)
        ));
    }

    #[test]
    fn ssh_keygen_reads_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        let id = ca
            .host_identity("deploy", &names(&["deploy.internal", "127.0.0.2"]), DAY)
            .unwrap();
        let cert_path = dir.path().join("host-cert.pub");
        fs::write(&cert_path, id.certificate.to_openssh().unwrap()).unwrap();
        let out = std::process::Command::new("/usr/bin/ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(&cert_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("Type: ssh-ed25519-cert-v01@openssh.com host certificate"),
            "{text}"
        );
        assert!(text.contains("Key ID: \"blastgate:deploy\""), "{text}");
        let principals: Vec<&str> = text
            .lines()
            .skip_while(|l| l.trim() != "Principals:")
            .skip(1)
            .take_while(|l| l.starts_with("                "))
            .map(str::trim)
            .collect();
        assert_eq!(principals, ["deploy.internal", "127.0.0.2"], "{text}");
        let ca_fp = ca.fingerprint().to_string();
        assert!(text.contains(&ca_fp), "{ca_fp} not in {text}");
    }

    /// Accepts anyone and answers every exec with "ok".
    #[derive(Default)]
    struct OkServer {
        channels: HashMap<ChannelId, Channel<Msg>>,
    }

    impl russh::server::Handler for OkServer {
        type Error = russh::Error;

        async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: Channel<Msg>,
            reply: ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            self.channels.insert(channel.id(), channel);
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: ChannelId,
            _data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            session.data(channel, &b"ok\n"[..])?;
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
            Ok(())
        }
    }

    /// Serves `identity` on a loopback port until the test ends.
    async fn serve(identity: HostIdentity) -> u16 {
        let mut config = russh::server::Config {
            inactivity_timeout: Some(Duration::from_secs(30)),
            auth_rejection_time: Duration::from_millis(10),
            ..Default::default()
        };
        identity.install(&mut config).unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    if let Ok(session) =
                        russh::server::run_stream(config, stream, OkServer::default()).await
                    {
                        let _ = session.await;
                    }
                });
            }
        });
        port
    }

    async fn run_ssh(known_hosts: &Path, host: &str, port: u16) -> Output {
        let ssh = tokio::process::Command::new("/usr/bin/ssh")
            // Verbose so the tests can tell a certificate was presented and
            // why one was refused.
            .arg("-v")
            .args(["-F", "/dev/null"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            // The host's own known_hosts must not make the test pass or fail.
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=10"])
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("user@{host}"))
            .arg("echo")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(30), ssh)
            .await
            .expect("ssh timed out")
            .unwrap()
    }

    #[tokio::test]
    async fn openssh_client_accepts_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(&dir.path().join("ca")).unwrap();
        let id = ca
            .host_identity("loopback", &names(&["127.0.0.1"]), DAY)
            .unwrap();
        let port = serve(id).await;

        let known_hosts = dir.path().join("known_hosts");
        fs::write(
            &known_hosts,
            format!(
                "{}\n",
                ca.known_hosts_line(&names(&["127.0.0.1"]), Some(port))
            ),
        )
        .unwrap();
        let out = run_ssh(&known_hosts, "127.0.0.1", port).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{stderr}");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("Server host certificate: ssh-ed25519-cert-v01@openssh.com"),
            "{stderr}"
        );
        assert!(stderr.contains("ID \"blastgate:loopback\""), "{stderr}");

        // The same server, trusted through a different CA: refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = SshCa::load_or_create(other_dir.path()).unwrap();
        fs::write(
            &known_hosts,
            format!(
                "{}\n",
                other.known_hosts_line(&names(&["127.0.0.1"]), Some(port))
            ),
        )
        .unwrap();
        let out = run_ssh(&known_hosts, "127.0.0.1", port).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{stderr}");
        assert!(stderr.contains("Host key verification failed"), "{stderr}");
        assert!(out.stdout.is_empty());
    }

    #[tokio::test]
    async fn openssh_client_rejects_a_name_not_among_the_principals() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        // Signed by the trusted CA, but for another name.
        let id = ca
            .host_identity("elsewhere", &names(&["deploy.internal"]), DAY)
            .unwrap();
        let port = serve(id).await;
        let known_hosts = dir.path().join("known_hosts");
        fs::write(
            &known_hosts,
            format!(
                "{}\n",
                ca.known_hosts_line(&names(&["127.0.0.1"]), Some(port))
            ),
        )
        .unwrap();
        let out = run_ssh(&known_hosts, "127.0.0.1", port).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{stderr}");
        assert!(
            stderr.contains("name is not a listed principal"),
            "{stderr}"
        );
        assert!(stderr.contains("Host key verification failed"), "{stderr}");
    }

    /// OpenSSH lower-cases the host name before comparing it with the
    /// principals, which is why `host_identity` lower-cases them too.
    #[tokio::test]
    async fn openssh_client_matches_principals_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        let id = ca
            .host_identity("localhost", &names(&["LocalHost"]), DAY)
            .unwrap();
        let port = serve(id).await;
        let known_hosts = dir.path().join("known_hosts");
        fs::write(
            &known_hosts,
            format!(
                "{}\n",
                ca.known_hosts_line(&names(&["localhost"]), Some(port))
            ),
        )
        .unwrap();
        let out = run_ssh(&known_hosts, "LOCALHOST", port).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{stderr}");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }

    #[test]
    fn install_requires_ed25519_in_preferences() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path()).unwrap();
        let id = ca.host_identity("t", &names(&["h"]), DAY).unwrap();
        let mut config = russh::server::Config::default();
        config.preferred.key = std::borrow::Cow::Owned(vec![Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        }]);
        assert!(matches!(
            id.install(&mut config),
            Err(SshCaError::Ed25519NotPreferred)
        ));
    }
}

//! blastgate's local certificate authority.
//!
//! The proxy terminates TLS from agents, so it has to present certificates the
//! agents' hosts accept. Rather than shipping a CA key (which would let anyone
//! impersonate any site to any blastgate user), every host generates its own CA
//! once, the operator installs `ca.pem` into the host's trust store, and
//! blastgate mints short-lived leaves from it on demand.
//!
//! Only ring is used for cryptography, and it is passed to rustls explicitly,
//! so this module behaves the same whether or not the process installed a
//! default `CryptoProvider`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{RootCertStore, ServerConfig};
use time::{Duration, OffsetDateTime};

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";
const CA_COMMON_NAME: &str = "blastgate local CA";

/// Long enough that operators install the CA once per host, not once per release.
const CA_VALIDITY: Duration = Duration::days(3652);
/// Virtual machines and containers resumed from snapshots often run behind;
/// backdating the CA by a day costs nothing over ten years.
const CA_BACKDATE: Duration = Duration::days(1);
/// Leaves are re-minted constantly, so there is no reason to let one outlive a
/// week if it ever leaks from the proxy's memory.
const LEAF_VALIDITY: Duration = Duration::days(7);
/// Tolerates agents whose clocks are a little behind the proxy's.
const LEAF_BACKDATE: Duration = Duration::hours(1);
/// X.509's upper bound for a common name (RFC 5280 ub-common-name); longer DNS
/// names go only into the subjectAltName, which is what clients check anyway.
const MAX_COMMON_NAME_LEN: usize = 64;
/// A name that cannot exist on any network, used to prove at start-up that the
/// CA on disk can issue leaves that verify against it.
const SELF_CHECK_NAME: &str = "blastgate-ca-self-check.invalid";

/// Enough distinct SNI names for any realistic agent session; clearing when
/// full keeps memory bounded without LRU bookkeeping, and re-issuing is cheap.
const CACHE_CAPACITY: usize = 1024;
/// Re-issue well before `LEAF_VALIDITY` runs out so a long-running proxy never
/// serves an expired leaf, even to a client whose clock runs ahead.
const CACHE_REFRESH: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Everything that can go wrong with the CA. The variants about files name
/// the file, because the fix is nearly always something the operator does to
/// that file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "found {} but not {}; refusing to generate a new CA because hosts may already trust \
         the old one: restore the missing file, or remove both to start over",
        present.display(),
        missing.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("cannot parse CA certificate {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("cannot parse CA private key {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("CA private key {} does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error(
        "CA private key {} is accessible by other users (mode {mode:04o}); run `chmod 600` on it",
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "CA certificate {} cannot issue certificates that verify against it ({reason}); if it \
         has expired or was not made by blastgate, move ca.pem and ca.key aside to generate a \
         new CA (hosts must then trust the new one)",
        path.display()
    )]
    Unusable { path: PathBuf, reason: String },
    #[error("a certificate needs at least one host name")]
    NoNames,
    #[error("{name:?} is not a valid DNS name or IP address")]
    InvalidName { name: String },
    #[error("{name:?} is not a host blastgate may intercept")]
    NameNotAllowed { name: String },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build TLS server configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the system random number generator failed")]
    Random,
}

/// blastgate's local CA: a P-256 key and self-signed CA certificate kept in `dir`
/// (`ca.pem`, `ca.key`).
///
/// The key never leaves this struct except through the file written at
/// creation, so the only way to mint certificates hosts trust is through
/// [`LocalCa::issue_leaf`].
pub struct LocalCa {
    cert_path: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for LocalCa {
    // Hand-written so that logging a LocalCa can never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, in the types rustls consumes.
pub struct Leaf {
    /// `[leaf, ca]`: sending the CA too lets clients that were given only the
    /// CA's fingerprint, or that log chains, see where the leaf came from.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl LocalCa {
    /// Whether `dir` holds a CA already (both halves): `load_or_create`
    /// would load rather than create.
    pub fn present(dir: &Path) -> bool {
        dir.join(CERT_FILE).exists() && dir.join(KEY_FILE).exists()
    }

    /// Loads the CA from `dir`, or creates it if neither file exists.
    ///
    /// Never regenerates over a partial or broken CA: hosts may already trust
    /// the old certificate, and silently replacing it would break every agent
    /// on the host with errors that point nowhere near the cause.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(cert_path, key_path),
            (false, false) => Self::create(dir, cert_path, key_path),
            (true, false) => Err(CaError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CaError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// The CA certificate as PEM, byte for byte as stored, so what operators
    /// export is exactly what blastgate loaded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Mints a leaf for `names` (DNS names or IP addresses; the first becomes
    /// the common name for tools that still display it).
    ///
    /// Each leaf gets its own fresh key and random serial: sharing either
    /// across leaves would make one leaked leaf key good for every host, and
    /// Firefox rejects distinct certificates that reuse an issuer and serial.
    pub fn issue_leaf(&self, names: &[String]) -> Result<Leaf, CaError> {
        let first = names.first().ok_or(CaError::NoNames)?;
        for name in names {
            // rcgen would accept any ASCII string as a DNS name; rustls's
            // parser rejects what no client would ever ask for, such as
            // names with spaces that an SNI could still carry.
            ServerName::try_from(name.as_str())
                .map_err(|_| CaError::InvalidName { name: name.clone() })?;
        }

        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        if first.len() <= MAX_COMMON_NAME_LEN {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial(&self.provider)?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        // An explicit CA:false and an authority key identifier are required
        // by OpenSSL's strict mode, which Python 3.13 enables by default.
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// A rustls server configuration that impersonates `names`, offering the
    /// ALPN protocols the upstream connection will speak, so the agent and the
    /// upstream end up on the same protocol.
    pub fn server_config(
        &self,
        names: &[String],
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, CaError> {
        let leaf = self.issue_leaf(names)?;
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(leaf.cert_chain, leaf.key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<LocalCa, CaError> {
        let mode = fs::metadata(&key_path)
            .map_err(|e| io_error("inspect", &key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            // Anyone who can read this key can intercept every TLS
            // connection on hosts that trust the CA.
            return Err(CaError::KeyPermissions {
                path: key_path,
                mode: mode & 0o7777,
            });
        }

        let key_pem = fs::read_to_string(&key_path).map_err(|e| io_error("read", &key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::BadKey {
                path: key_path,
                reason: "not a P-256 ECDSA key".into(),
            });
        }

        let cert_pem =
            fs::read_to_string(&cert_path).map_err(|e| io_error("read", &cert_path, e))?;
        let bad_cert = |reason: String| CaError::BadCertificate {
            path: cert_path.clone(),
            reason,
        };
        let mut certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes());
        let cert_der = match (certs.next(), certs.next()) {
            (Some(Ok(der)), None) => der,
            (None, _) => return Err(bad_cert("no PEM CERTIFICATE section".into())),
            (Some(Err(e)), _) => return Err(bad_cert(e.to_string())),
            // Exporting a file with several certificates would leave the
            // operator guessing which one hosts should trust.
            (Some(Ok(_)), Some(_)) => {
                return Err(bad_cert("more than one certificate in the file".into()))
            }
        };

        let spki = ParsedCertificate::try_from(&cert_der)
            .map_err(|e| bad_cert(e.to_string()))?
            .subject_public_key_info();
        if spki.as_ref() != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }

        Self::assemble(cert_path, cert_pem, cert_der, key)
    }

    fn create(dir: &Path, cert_path: PathBuf, key_path: PathBuf) -> Result<LocalCa, CaError> {
        DirBuilder::new()
            .recursive(true)
            .mode(super::CA_DIR_MODE)
            .create(dir)
            .map_err(|e| io_error("create directory", dir, e))?;
        // The directory may have existed already with looser permissions;
        // it is about to hold the key that every trusting host depends on.
        fs::set_permissions(dir, Permissions::from_mode(super::CA_DIR_MODE))
            .map_err(|e| io_error("set permissions on", dir, e))?;

        let provider = ring_provider();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params();
        // A random serial keeps CAs from different hosts (or a CA regenerated
        // on the same host) distinguishable to clients that cache by
        // issuer and serial.
        params.serial_number = Some(random_serial(&provider)?);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CA_BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();

        // Check before persisting, so a CA that cannot work is never written
        // where an operator might install it.
        let ca = Self::assemble(cert_path, cert_pem, cert.der().clone(), key)?;

        // Key first: a certificate on disk must never be without its key,
        // since the certificate is what operators copy into trust stores.
        write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomically(&ca.cert_path, ca.cert_pem.as_bytes(), 0o644)?;
        // Make the renames themselves durable, or a crash could leave
        // neither file even though agents were already given certificates.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
        Ok(ca)
    }

    /// Builds the in-memory CA and proves it can issue a leaf that verifies
    /// against its own certificate, so a CA that is expired or whose subject
    /// does not match ours fails at start-up rather than on every connection.
    fn assemble(
        cert_path: PathBuf,
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<LocalCa, CaError> {
        // rcgen cannot read the issuer's name back out of a certificate
        // without its x509-parser feature, so the issuer is rebuilt from the
        // same parameters that created the CA; the self-check below catches
        // any certificate whose subject differs.
        let ca = LocalCa {
            cert_path,
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params(), key),
            provider: ring_provider(),
        };

        let unusable = |reason: String| CaError::Unusable {
            path: ca.cert_path.clone(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.cert_der.clone())
            .map_err(|e| unusable(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&ca.provider))
                .build()
                .map_err(|e| unusable(e.to_string()))?;
        let probe = ca.issue_leaf(&[SELF_CHECK_NAME.to_string()])?;
        let probe_cert = probe
            .cert_chain
            .first()
            .ok_or_else(|| unusable("issued an empty chain".into()))?;
        let name = ServerName::try_from(SELF_CHECK_NAME).map_err(|e| unusable(e.to_string()))?;
        verifier
            .verify_server_cert(probe_cert, &[], &name, &[], UnixTime::now())
            .map_err(|e| unusable(e.to_string()))?;
        Ok(ca)
    }
}

/// The CA's identity and constraints. Also used to rebuild the issuer on load,
/// so it must stay byte-for-byte stable: changing the name would orphan every
/// CA already installed on hosts.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // pathlen 0: even if a leaf key leaks, it cannot be used to sign further
    // certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// 126 random bits, positive and without a leading zero byte, so every DER
/// encoder writes it the same 16 bytes.
fn random_serial(provider: &CryptoProvider) -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|e| io_error("check", path, e))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> CaError {
    CaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    super::keyfile::write_atomically(path, contents, mode).map_err(|e| io_error("write", path, e))
}

/// Hands out server configurations per SNI name, minting each leaf once.
///
/// Issuing costs a key generation and a signature per connection otherwise;
/// caching the whole `ServerConfig` also keeps TLS session resumption working
/// for agents that reconnect to the same host.
pub struct LeafCache {
    ca: Arc<LocalCa>,
    alpn: Vec<Vec<u8>>,
    allowed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    entries: Mutex<HashMap<Vec<String>, CachedConfig>>,
}

struct CachedConfig {
    issued: Instant,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("LeafCache")
            .field("ca", &self.ca)
            .field("entries", &entries)
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache that will issue for any syntactically valid name; use
    /// [`LeafCache::with_allowed`] to confine it to the hosts policy lets
    /// blastgate intercept.
    pub fn new(ca: Arc<LocalCa>, alpn: Vec<Vec<u8>>) -> Self {
        LeafCache {
            ca,
            alpn,
            allowed: Box::new(|_| true),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses names for which `allowed` returns false, so a client cannot
    /// make the proxy mint a trusted certificate for an arbitrary SNI name.
    /// The predicate sees names lower-cased and without a trailing dot.
    pub fn with_allowed(mut self, allowed: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.allowed = Box::new(allowed);
        self
    }

    /// The configuration for `names`, issuing on first use and again once the
    /// cached leaf is a day old.
    pub fn config_for(&self, names: &[String]) -> Result<Arc<ServerConfig>, CaError> {
        if names.is_empty() {
            return Err(CaError::NoNames);
        }
        // DNS names are case-insensitive; without this, "API.example" and
        // "api.example" would each cost an issuance and a cache slot.
        let key: Vec<String> = names
            .iter()
            .map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase())
            .collect();
        if let Some(refused) = key.iter().find(|n| !(self.allowed)(n.as_str())) {
            return Err(CaError::NameNotAllowed {
                name: refused.clone(),
            });
        }

        if let Some(config) = self.fresh(&key) {
            return Ok(config);
        }
        // Issue without holding the lock, so a burst of new names does not
        // serialise every handshake behind one mutex.
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let config = self.ca.server_config(&key, &alpn)?;

        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have issued for the same names meanwhile; hand
        // out its config so callers racing on one name still share sessions.
        if let Some(existing) = entries.get(&key) {
            if existing.issued.elapsed() < CACHE_REFRESH {
                return Ok(Arc::clone(&existing.config));
            }
        }
        if entries.len() >= CACHE_CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            CachedConfig {
                issued: Instant::now(),
                config: Arc::clone(&config),
            },
        );
        Ok(config)
    }

    fn fresh(&self, key: &[String]) -> Option<Arc<ServerConfig>> {
        // A panic elsewhere while holding the lock cannot leave the map
        // half-updated, so a poisoned lock is still safe to use.
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|e| e.issued.elapsed() < CACHE_REFRESH)
            .map(|e| Arc::clone(&e.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertificateError, ClientConfig};
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn new_ca() -> (tempfile::TempDir, LocalCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&dir.path().join("ca")).unwrap();
        (dir, ca)
    }

    #[test]
    fn creates_then_loads_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested").join("ca");
        let created = LocalCa::load_or_create(&dir).unwrap();
        assert!(created
            .cert_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        let loaded = LocalCa::load_or_create(&dir).unwrap();
        assert_eq!(created.cert_pem(), loaded.cert_pem());
        assert_eq!(
            fs::read_to_string(dir.join(CERT_FILE)).unwrap(),
            created.cert_pem()
        );
        // No temporary files are left behind.
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["ca.key", "ca.pem"]);
    }

    #[test]
    fn each_host_gets_its_own_ca() {
        let (_a, first) = new_ca();
        let (_b, second) = new_ca();
        assert_ne!(first.cert_pem(), second.cert_pem());
    }

    #[test]
    fn key_file_is_0600_and_dir_searchable_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        LocalCa::load_or_create(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o711);
    }

    #[test]
    fn one_file_missing_is_an_error_and_nothing_is_regenerated() {
        for (remove, keep) in [(KEY_FILE, CERT_FILE), (CERT_FILE, KEY_FILE)] {
            let tmp = tempfile::tempdir().unwrap();
            LocalCa::load_or_create(tmp.path()).unwrap();
            let kept = fs::read(tmp.path().join(keep)).unwrap();
            fs::remove_file(tmp.path().join(remove)).unwrap();

            let err = LocalCa::load_or_create(tmp.path()).unwrap_err();
            assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&tmp.path().join(remove).display().to_string()),
                "{msg}"
            );
            assert!(!tmp.path().join(remove).exists());
            assert_eq!(fs::read(tmp.path().join(keep)).unwrap(), kept);
        }
    }

    #[test]
    fn key_from_another_ca_is_an_error() {
        let (a, _) = new_ca();
        let (b, _) = new_ca();
        fs::copy(a.path().join("ca/ca.key"), b.path().join("ca/ca.key")).unwrap();
        let err = LocalCa::load_or_create(&b.path().join("ca")).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn unparseable_files_are_errors() {
        let (tmp, _) = new_ca();
        let dir = tmp.path().join("ca");
        let pem = fs::read_to_string(dir.join(CERT_FILE)).unwrap();

        fs::write(dir.join(CERT_FILE), "not a certificate").unwrap();
        let err = LocalCa::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, CaError::BadCertificate { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");

        fs::write(dir.join(CERT_FILE), format!("{pem}{pem}")).unwrap();
        let err = LocalCa::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, CaError::BadCertificate { .. }), "{err}");

        fs::write(dir.join(CERT_FILE), &pem).unwrap();
        fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        let err = LocalCa::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, CaError::BadKey { .. }), "{err}");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let (tmp, _) = new_ca();
        let key = tmp.path().join("ca").join(KEY_FILE);
        fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
        let err = LocalCa::load_or_create(&tmp.path().join("ca")).unwrap_err();
        assert!(
            matches!(err, CaError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn leaf_chain_is_leaf_then_ca() {
        let (_tmp, ca) = new_ca();
        let leaf = ca
            .issue_leaf(&names(&["db.internal", "127.0.0.2"]))
            .unwrap();
        assert_eq!(leaf.cert_chain.len(), 2);
        assert_eq!(leaf.cert_chain[1], ca.cert_der);
        assert_ne!(leaf.cert_chain[0], ca.cert_der);
        assert!(matches!(leaf.key, PrivateKeyDer::Pkcs8(_)));
    }

    #[test]
    fn bad_names_are_refused() {
        let (_tmp, ca) = new_ca();
        assert!(matches!(ca.issue_leaf(&[]), Err(CaError::NoNames)));
        for bad in ["", "has space.example", "*.example.com", "a..b"] {
            let err = ca.issue_leaf(&names(&[bad])).err();
            assert!(
                matches!(err, Some(CaError::InvalidName { .. })),
                "{bad:?}: {err:?}"
            );
        }
        // Names longer than a common name allows still work, via SAN only.
        let long = format!("{}.example", "a".repeat(60));
        ca.issue_leaf(&[long]).unwrap();
    }

    fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Handshakes over loopback TCP and echoes five bytes; returns what came
    /// back and the negotiated ALPN protocol, or the client's error.
    async fn echo(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<(Vec<u8>, Option<Vec<u8>>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await
        });

        let client_side = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
            tls.write_all(b"hello").await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Ok((buf.to_vec(), alpn))
        };
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), client_side)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?;
        if result.is_ok() {
            server_task.await.unwrap().unwrap();
        } else {
            server_task.abort();
        }
        result
    }

    fn rustls_error(err: &io::Error) -> &rustls::Error {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a rustls error: {err}"))
    }

    #[tokio::test]
    async fn real_handshake_verifies_against_the_ca_only() {
        let (_tmp, ca) = new_ca();
        let server = ca
            .server_config(&names(&["db.internal", "127.0.0.2"]), &[b"h2", b"http/1.1"])
            .unwrap();
        let client = client_config(ca.cert_pem(), &[b"h2"]);

        let dns = ServerName::try_from("db.internal").unwrap();
        let (echoed, alpn) = echo(server.clone(), client.clone(), dns).await.unwrap();
        assert_eq!(echoed, b"hello");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let ip = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)).into());
        let (echoed, _) = echo(server.clone(), client.clone(), ip).await.unwrap();
        assert_eq!(echoed, b"hello");

        let other = ServerName::try_from("other.internal").unwrap();
        let err = echo(server.clone(), client, other).await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );

        // A client that trusts some other blastgate host's CA must refuse us.
        // Every host's CA has the same subject, so webpki finds that CA as the
        // candidate issuer and then rejects the signature.
        let (_other_tmp, other_ca) = new_ca();
        let stranger = client_config(other_ca.cert_pem(), &[]);
        let dns = ServerName::try_from("db.internal").unwrap();
        let err = echo(server, stranger, dns).await.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature | CertificateError::UnknownIssuer
                )
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn loaded_ca_issues_leaves_that_verify_against_the_created_one() {
        let tmp = tempfile::tempdir().unwrap();
        let created = LocalCa::load_or_create(tmp.path()).unwrap();
        let loaded = LocalCa::load_or_create(tmp.path()).unwrap();
        let server = loaded.server_config(&names(&["db.internal"]), &[]).unwrap();
        let client = client_config(created.cert_pem(), &[]);
        let dns = ServerName::try_from("db.internal").unwrap();
        let (echoed, alpn) = echo(server, client, dns).await.unwrap();
        assert_eq!(echoed, b"hello");
        assert_eq!(alpn, None);
    }

    #[test]
    fn cache_reuses_configs_per_name() {
        let (_tmp, ca) = new_ca();
        let cache = LeafCache::new(Arc::new(ca), vec![b"http/1.1".to_vec()]);
        let a = cache.config_for(&names(&["db.internal"])).unwrap();
        let again = cache.config_for(&names(&["db.internal"])).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let same_name_other_case = cache.config_for(&names(&["DB.Internal."])).unwrap();
        assert!(Arc::ptr_eq(&a, &same_name_other_case));
        let b = cache.config_for(&names(&["api.internal"])).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn cache_refuses_names_not_allowed() {
        let (_tmp, ca) = new_ca();
        let cache = LeafCache::new(Arc::new(ca), Vec::new())
            .with_allowed(|name| name.ends_with(".internal"));
        cache.config_for(&names(&["db.internal"])).unwrap();
        let err = cache.config_for(&names(&["example.com"])).unwrap_err();
        assert!(matches!(err, CaError::NameNotAllowed { ref name } if name == "example.com"));
        assert!(matches!(cache.config_for(&[]), Err(CaError::NoNames)));
    }

    #[test]
    fn cache_is_bounded() {
        let (_tmp, ca) = new_ca();
        let cache = LeafCache::new(Arc::new(ca), Vec::new());
        for i in 0..=CACHE_CAPACITY {
            cache.config_for(&[format!("h{i}.internal")]).unwrap();
        }
        assert_eq!(cache.entries.lock().unwrap().len(), 1);
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LocalCa>();
        assert_send_sync::<LeafCache>();
    }
}

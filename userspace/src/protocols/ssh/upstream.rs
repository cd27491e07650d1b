//! blastgate's own SSH login to the real server, with the key it holds.

use std::sync::Arc;

use russh::{
    client,
    keys::{PrivateKeyWithHashAlg, PublicKey},
};
use tokio::net::TcpStream;

use super::SshTarget;
use crate::protocols::gateway::Gateway;

/// Accepts only the server the config names: pinned key or known_hosts.
pub struct ServerCheck {
    host: String,
    port: u16,
    cfg: Arc<SshTarget>,
}

impl client::Handler for ServerCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A certificate from the real server is not trusted by its CA here:
        // only the configured key.
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        if let Some(pinned) = &self.cfg.host_key {
            return Ok(
                PublicKey::from_openssh(pinned).is_ok_and(|p| p.key_data() == key.key_data())
            );
        }
        let Some(path) = &self.cfg.known_hosts else {
            return Ok(false);
        };
        Ok(russh::keys::check_known_hosts_path(&self.host, self.port, key, path).unwrap_or(false))
    }
}

pub async fn connect(gw: &Gateway, cfg: &SshTarget) -> Result<client::Handle<ServerCheck>, String> {
    let addr = gw.upstream;
    let key = russh::keys::load_secret_key(&cfg.key_file, None)
        .map_err(|e| format!("key_file {}: {e}", cfg.key_file.display()))?;
    let tcp = tokio::time::timeout(gw.services.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{addr}: connect timed out"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let check = ServerCheck {
        host: addr.ip().to_string(),
        port: addr.port(),
        cfg: Arc::new(cfg.clone()),
    };
    // Keepalives both ways: the agent's side has its own (server config);
    // this one notices a dead upstream under a quiet shell.
    let config = Arc::new(client::Config {
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        keepalive_max: 3,
        preferred: upstream_preferred(),
        ..Default::default()
    });
    // The whole login is bounded: a server that accepts and never speaks
    // (hung, a tarpit) must not hold a channel, or the session, for ever.
    tokio::time::timeout(
        gw.services.connect_timeout,
        login(config, tcp, check, cfg, key, addr),
    )
    .await
    .map_err(|_| {
        format!(
            "{addr}: no SSH login within {:?}",
            gw.services.connect_timeout
        )
    })?
}

async fn login(
    config: Arc<client::Config>,
    tcp: TcpStream,
    check: ServerCheck,
    cfg: &SshTarget,
    key: russh::keys::PrivateKey,
    addr: std::net::SocketAddr,
) -> Result<client::Handle<ServerCheck>, String> {
    let mut handle = client::connect_stream(config, tcp, check)
        .await
        .map_err(|e| match e {
            russh::Error::UnknownKey => format!(
                "{addr}: the server's host key does not match the configured {}; refused",
                if cfg.host_key.is_some() {
                    "host_key"
                } else {
                    "known_hosts"
                }
            ),
            e => format!("{addr}: {e}"),
        })?;
    let auth = match &cfg.cert_file {
        Some(path) => {
            let cert = russh::keys::load_openssh_certificate(path)
                .map_err(|e| format!("cert_file {}: {e}", path.display()))?;
            handle
                .authenticate_openssh_cert(cfg.user.clone(), Arc::new(key), cert)
                .await
        }
        None => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| e.to_string())?
                .flatten();
            handle
                .authenticate_publickey(
                    cfg.user.clone(),
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
        }
    }
    .map_err(|e| format!("{addr}: {e}"))?;
    if !auth.success() {
        return Err(format!(
            "{addr}: the server refused blastgate's key for {}",
            cfg.user
        ));
    }
    Ok(handle)
}

/// A new session channel on the session's upstream connection, logging
/// in first if this is the first channel.
pub async fn session_channel(
    gw: &Gateway,
    cfg: &SshTarget,
    upstream: &super::Upstream,
) -> Result<russh::Channel<client::Msg>, String> {
    let mut guard = upstream.lock().await;
    if guard.is_none() {
        *guard = Some(connect(gw, cfg).await?);
    }
    let handle: &client::Handle<ServerCheck> = guard.as_ref().ok_or("no upstream connection")?;
    handle
        .channel_open_session()
        .await
        .map_err(|e| format!("upstream channel: {e}"))
}

/// This leg's algorithms: russh's defaults, AES-GCM first. blastgate
/// decrypts and re-encrypts every byte a channel carries, on the CPU it
/// shares with the agent and often the server, and on x86-64 with AES-NI
/// ring's AES-GCM (AES and carry-less multiply instructions) costs less
/// per byte than its ChaCha20-Poly1305. Both are AEAD ciphers OpenSSH
/// offers by default; the agent's leg keeps whichever its client prefers.
fn upstream_preferred() -> russh::Preferred {
    use russh::cipher;
    const CIPHERS: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        ..Default::default()
    }
}

//! Cancel requests. Agents are told the server's real backend pid, so
//! `pg_backend_pid()`, `pg_stat_activity`, notifications and
//! `pg_terminate_backend` agree with what the client knows; the secret
//! beside it is blastgate's own. A CancelRequest carrying it (on a new
//! connection, redirected like any other) is forwarded with the real
//! backend's secret, which the agent never sees: holding the real one would
//! let an agent cancel without passing the gateway, unrecorded.
//!
//! One entry per live session (each holds a connection permit, so the map
//! is bounded by `proxy.max_connections`), removed when the session ends.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::SocketAddr,
    sync::{Mutex, OnceLock},
};

struct Real {
    /// A key works only on the target that issued it, as a server's keys
    /// work only on that server.
    target: String,
    upstream: SocketAddr,
    secret: Vec<u8>,
}

/// (pid, secret) as the agent knows them. Two servers may run backends of
/// the same pid: the secrets then differ.
type Keys = Mutex<HashMap<(i32, [u8; 4]), Real>>;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Default::default)
}

/// The agent's key for one session; unregistered when dropped.
pub struct Registration {
    pub pid: i32,
    pub secret: [u8; 4],
}

impl Drop for Registration {
    fn drop(&mut self) {
        keys()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.pid, self.secret));
    }
}

/// Issues the agent's key for the backend `pid` (whose real secret is
/// `secret`) of `target`, served at `upstream`.
pub fn register(target: &str, upstream: SocketAddr, pid: i32, secret: Vec<u8>) -> Registration {
    let mut map = keys().lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let r = uuid::Uuid::new_v4().into_bytes();
        let agent_secret = [r[0], r[1], r[2], r[3]];
        if let Entry::Vacant(v) = map.entry((pid, agent_secret)) {
            v.insert(Real {
                target: target.to_string(),
                upstream,
                secret,
            });
            return Registration {
                pid,
                secret: agent_secret,
            };
        }
    }
}

/// Where to send the cancel and the real secret, if a live session of
/// `target` issued this key.
pub fn lookup(target: &str, pid: i32, secret: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let secret: [u8; 4] = secret.try_into().ok()?;
    keys()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(pid, secret))
        .filter(|r| r.target == target)
        .map(|r| (r.upstream, r.secret.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_pid_hide_the_secret_and_die_with_the_session() {
        let up: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        let real = vec![9, 8, 7, 6];
        let a = register("db", up, 4242, real.clone());
        let b = register("db", up, 4242, real.clone());
        assert_eq!(a.pid, 4242);
        assert_ne!(a.secret, b.secret, "each session has a secret of its own");
        assert_eq!(lookup("db", 4242, &a.secret), Some((up, real.clone())));
        // The real secret, a wrong length, another pid or another target: nothing.
        assert_eq!(lookup("db", 4242, &real), None);
        assert_eq!(lookup("db", 4242, &[a.secret, a.secret].concat()), None);
        assert_eq!(lookup("db", 4243, &a.secret), None);
        assert_eq!(lookup("other", 4242, &a.secret), None);
        drop(a);
        assert_eq!(lookup("db", 4242, &b.secret), Some((up, real)));
        let secret = b.secret;
        drop(b);
        assert_eq!(lookup("db", 4242, &secret), None);
    }
}

//! Cancel requests. Agents are given a backend key of blastgate's own; a
//! CancelRequest carrying it (on a new connection, redirected like any
//! other) is forwarded with the real backend's key, which the agent never
//! sees.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
};

struct Real {
    upstream: SocketAddr,
    pid: i32,
    secret: Vec<u8>,
}

/// (pid, secret) as the agent knows them.
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

pub fn register(upstream: SocketAddr, pid: i32, secret: Vec<u8>) -> Registration {
    let mut map = keys().lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let r = uuid::Uuid::new_v4().into_bytes();
        let agent_pid = i32::from_be_bytes([r[0] & 0x7f, r[1], r[2], r[3]]).max(1);
        let agent_secret = [r[4], r[5], r[6], r[7]];
        if let std::collections::hash_map::Entry::Vacant(v) = map.entry((agent_pid, agent_secret)) {
            v.insert(Real {
                upstream,
                pid,
                secret,
            });
            return Registration {
                pid: agent_pid,
                secret: agent_secret,
            };
        }
    }
}

/// The real backend for an agent's key, if a live session issued it.
pub fn lookup(pid: i32, secret: &[u8]) -> Option<(SocketAddr, i32, Vec<u8>)> {
    let secret: [u8; 4] = secret.try_into().ok()?;
    keys()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(pid, secret))
        .map(|r| (r.upstream, r.pid, r.secret.clone()))
}

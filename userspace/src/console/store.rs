//! Signed-in approvers and sign-ins under way, in memory: a restarted
//! daemon asks everyone to sign in again. Both are bounded, so a flood of
//! `/login` requests cannot grow them without limit.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;

use super::auth::Approver;

const MAX_SESSIONS: usize = 4096;
const MAX_PENDING: usize = 1024;
/// How long a sign-in may take at the issuer.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

pub struct Session {
    pub approver: Approver,
    /// Sent back with every form: a cross-site page cannot read it.
    pub csrf: String,
    pub expires: Instant,
}

pub struct PendingLogin {
    /// The value of the browser's login cookie: the callback must come
    /// back to the browser that started it (no login CSRF).
    pub browser: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to go after signing in (a path of the console).
    pub next: String,
    pub started: Instant,
}

#[derive(Default)]
pub struct Store {
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

/// 32 random bytes, URL-safe.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal without leaking where they differ through timing.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Store {
    pub fn begin(&self, state: String, login: PendingLogin) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(state, login);
    }

    /// The sign-in `state` names, once, if this browser started it.
    pub fn take_pending(&self, state: &str, browser: Option<&str>) -> Option<PendingLogin> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let p = pending.remove(state)?;
        let ours = browser.is_some_and(|b| same(b, &p.browser));
        (ours && p.started.elapsed() < LOGIN_TTL).then_some(p)
    }

    /// A new session; returns its id (the cookie value).
    pub fn open(&self, approver: Approver, ttl: Duration) -> String {
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                approver,
                csrf: random_token(),
                expires: now + ttl,
            },
        );
        id
    }

    /// The approver and CSRF token of a live session.
    pub fn get(&self, id: &str) -> Option<(Approver, String)> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get(id)?;
        (s.expires > Instant::now()).then(|| (s.approver.clone(), s.csrf.clone()))
    }

    pub fn close(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approver() -> Approver {
        Approver {
            iss: "i".into(),
            sub: "alice".into(),
            name: "alice".into(),
            groups: vec!["dba".into()],
        }
    }

    #[test]
    fn a_login_comes_back_once_and_only_to_its_browser() {
        let s = Store::default();
        let login = |b: &str| PendingLogin {
            browser: b.into(),
            nonce: "n".into(),
            verifier: "v".into(),
            next: "/".into(),
            started: Instant::now(),
        };
        s.begin("st".into(), login("b1"));
        assert!(s.take_pending("st", Some("b2")).is_none());
        s.begin("st".into(), login("b1"));
        assert!(s.take_pending("st", None).is_none());
        s.begin("st".into(), login("b1"));
        assert!(s.take_pending("st", Some("b1")).is_some());
        assert!(s.take_pending("st", Some("b1")).is_none());
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Store::default();
        let id = s.open(approver(), Duration::from_secs(60));
        assert!(s.get(&id).is_some());
        assert!(s.get("other").is_none());
        s.close(&id);
        assert!(s.get(&id).is_none());
        let gone = s.open(approver(), Duration::ZERO);
        assert!(s.get(&gone).is_none());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}

//! CI runner jobs: a GitHub Actions or GitLab Runner hook registers the job
//! it runs in (`blastgate job start`, over [`server`]'s socket), and every
//! process of that job carries the job's identity from then on.
//!
//! The identity is bound to the job's root process tree the same way a
//! verified OIDC token is bound to a `blastgate run` tree: by a number in
//! each process's kernel label, inherited at fork ([`root`] relabels the
//! processes already running). Job numbers have the high bit set, OIDC
//! bindings never do, so one label field serves both without collision.
//!
//! A job's identity is what its token proved ([`CiJob::verified`] names
//! those fields) plus what its environment said (recorded, never called
//! verified). A job ends when its completed hook says so or its root
//! process exits: its open sessions are cut, and whatever it left running
//! is refused from then on (the number stays known as ended).

pub mod root;
pub mod server;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::CiProvider,
    identity::{
        oidc::{now_secs, JobIdentity},
        Caller,
    },
};

/// The bit every job number has, and no OIDC binding.
pub const JOB_BIT: u32 = 0x8000_0000;

/// The job attributes recorded (ClickHouse `job_<name>` columns) and shown
/// to policies, in column order.
pub const FIELDS: &[&str] = &[
    "repository",
    "workflow",
    "run_id",
    "run_attempt",
    "job",
    "job_id",
    "actor",
    "ref",
];

/// Where each field comes from in a job's environment.
pub fn env_vars(provider: CiProvider) -> &'static [(&'static str, &'static str)] {
    match provider {
        CiProvider::Github => &[
            ("repository", "GITHUB_REPOSITORY"),
            ("workflow", "GITHUB_WORKFLOW"),
            ("run_id", "GITHUB_RUN_ID"),
            ("run_attempt", "GITHUB_RUN_ATTEMPT"),
            ("job", "GITHUB_JOB"),
            ("actor", "GITHUB_ACTOR"),
            ("ref", "GITHUB_REF"),
        ],
        CiProvider::Gitlab => &[
            ("repository", "CI_PROJECT_PATH"),
            ("run_id", "CI_PIPELINE_ID"),
            ("job_id", "CI_JOB_ID"),
            ("job", "CI_JOB_NAME"),
            ("actor", "GITLAB_USER_LOGIN"),
            ("ref", "CI_COMMIT_REF_NAME"),
        ],
    }
}

/// Which token claim vouches for each field (the providers' own claim
/// names). A field with no claim here stays unverified even with a token.
fn claim_names(provider: CiProvider) -> &'static [(&'static str, &'static str)] {
    match provider {
        CiProvider::Github => &[
            ("repository", "repository"),
            ("workflow", "workflow"),
            ("run_id", "run_id"),
            ("run_attempt", "run_attempt"),
            ("actor", "actor"),
            ("ref", "ref"),
        ],
        CiProvider::Gitlab => &[
            ("repository", "project_path"),
            ("run_id", "pipeline_id"),
            ("job_id", "job_id"),
            ("actor", "user_login"),
            ("ref", "ref"),
        ],
    }
}

/// Fields without which an environment is not a CI job's.
const REQUIRED: &[&str] = &["repository", "run_id"];

/// Longest field value accepted.
const MAX_FIELD: usize = 256;

/// A CI job as records, approvals and policies see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiJob {
    /// blastgate's id for the job.
    pub id: Uuid,
    /// `github` or `gitlab`.
    pub provider: String,
    /// [`FIELDS`] the job has, by name.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The fields a verified token attested; every other field is only
    /// what the job's environment said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<String>,
}

impl CiJob {
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// One line for logs and reasons (Debug quoting: a field cannot forge
    /// lines).
    pub fn describe(&self) -> String {
        format!(
            "{} job {:?} run {:?} of {:?} by {:?} ({})",
            self.provider,
            self.field("job"),
            self.field("run_id"),
            self.field("repository"),
            self.field("actor"),
            if self.verified.is_empty() {
                "unverified"
            } else {
                "token verified"
            }
        )
    }
}

/// Checks the fields a hook sent: known names, bounded printable values,
/// and the ones every job has.
pub fn check_fields(fields: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in fields {
        if !FIELDS.contains(&k.as_str()) {
            return Err(format!("unknown job field {k:?}"));
        }
        if v.len() > MAX_FIELD || v.chars().any(char::is_control) {
            return Err(format!(
                "job field {k}: over {MAX_FIELD} bytes or control characters"
            ));
        }
    }
    for r in REQUIRED {
        if fields.get(*r).is_none_or(String::is_empty) {
            return Err(format!(
                "the job's environment has no {r}: not a CI job (is the hook run by the runner?)"
            ));
        }
    }
    Ok(())
}

/// Merges a verified token's claims into the environment's fields: a
/// claim and an environment value that differ refuse the job; a claim
/// fills a field the environment left empty; the fields a claim vouched
/// for are returned. `token_provider` is the issuer's configured provider.
pub fn agree(
    provider: CiProvider,
    token_provider: Option<CiProvider>,
    claims: &serde_json::Map<String, serde_json::Value>,
    fields: &mut BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    match token_provider {
        Some(p) if p == provider => {}
        Some(p) => {
            return Err(format!(
                "the token's issuer is a {} issuer; this is a {} job",
                p.name(),
                provider.name()
            ))
        }
        None => {
            return Err(
                "the token's issuer has no `provider` in [[oidc.issuers]]: its tokens register \
                 no CI job"
                    .into(),
            )
        }
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut verified = Vec::new();
    for (field, claim) in claim_names(provider) {
        let Some(value) = claims.get(*claim).and_then(text) else {
            if REQUIRED.contains(field) {
                return Err(format!(
                    "the token has no {claim:?} claim: not a {} job token",
                    provider.name()
                ));
            }
            continue;
        };
        match fields.get(*field) {
            Some(env) if !env.is_empty() && *env != value => {
                return Err(format!(
                    "the token says {claim} = {value:?}, the job's environment says {field} = \
                     {env:?}"
                ))
            }
            _ => {}
        }
        fields.insert(field.to_string(), value);
        verified.push(field.to_string());
    }
    Ok(verified)
}

/// What a live job shares with its sessions.
#[derive(Debug, Default)]
pub struct Live {
    /// Cancelled when the job ends: its sessions are cut.
    pub ended: CancellationToken,
    /// Sessions open now.
    pub open: AtomicUsize,
}

/// Counts a session open for as long as it lives.
pub struct OpenSession(Arc<Live>);

impl OpenSession {
    pub fn new(live: Arc<Live>) -> OpenSession {
        live.open.fetch_add(1, Ordering::SeqCst);
        OpenSession(live)
    }

    pub fn ended(&self) -> &CancellationToken {
        &self.0.ended
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One registered job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub job: CiJob,
    pub binding: u32,
    pub root_pid: u32,
    /// The root's start time (clock ticks since boot): with the pid, the
    /// root itself, not a later process that reuses its pid.
    pub root_start: u64,
    pub uid: u32,
    /// The verified token, if one was presented.
    #[serde(default)]
    pub oidc: Option<JobIdentity>,
    /// Why it ended; `None` while live.
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(skip)]
    pub live: Arc<Live>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    jobs: BTreeMap<u32, Entry>,
    /// sha256 of each token that registered a job -> its expiry (unix
    /// seconds): a token registers one job.
    spent: BTreeMap<String, u64>,
}

/// Past this many, the oldest ended jobs are forgotten (their leftover
/// processes are then refused as of an unknown job, still refused).
const MAX_JOBS: usize = 16_384;

/// The daemon's registered jobs.
pub struct Jobs {
    require: bool,
    runners: Vec<u32>,
    state_file: PathBuf,
    state: Mutex<State>,
    /// One save at a time, each writing the state as of its own turn (two
    /// registrations at once must not race on the temporary file).
    saving: Mutex<()>,
}

/// A connection's job, as the driver attaches it.
pub struct OnConnection {
    pub job: CiJob,
    pub oidc: Option<JobIdentity>,
    pub live: Arc<Live>,
}

impl Jobs {
    /// Loads the persisted jobs; a job whose root is gone (exited while the
    /// daemon was down) is marked ended.
    pub fn load(require: bool, runners: Vec<u32>, state_file: &Path) -> Jobs {
        let mut state: State = match std::fs::read(state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %state_file.display(), error = %e, "jobs state unreadable; starting with none (their processes are refused)");
                State::default()
            }),
            Err(_) => State::default(),
        };
        for e in state.jobs.values_mut() {
            if e.ended.is_none() && !root::alive(e.root_pid, e.root_start) {
                e.ended = Some("its root process exited while the daemon was down".into());
            }
        }
        let jobs = Jobs {
            require,
            runners,
            state_file: state_file.to_path_buf(),
            state: Mutex::new(state),
            saving: Mutex::new(()),
        };
        if let Err(e) = jobs.save() {
            tracing::error!(error = %e, "jobs state not saved");
        }
        jobs
    }

    pub fn require(&self) -> bool {
        self.require
    }

    pub fn is_runner(&self, uid: u32) -> bool {
        self.runners.contains(&uid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state atomically (a temporary file renamed over it).
    fn save(&self) -> Result<(), String> {
        let _turn = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = {
            let mut st = self.lock();
            let now = now_secs();
            st.spent.retain(|_, exp| *exp > now);
            serde_json::to_vec(&*st).map_err(|e| e.to_string())?
        };
        write_atomic(&self.state_file, &bytes)
            .map_err(|e| format!("{}: {e}", self.state_file.display()))
    }

    /// The live jobs, for watching their roots after a restart.
    pub fn live(&self) -> Vec<Entry> {
        self.lock()
            .jobs
            .values()
            .filter(|e| e.ended.is_none())
            .cloned()
            .collect()
    }

    pub fn get(&self, binding: u32) -> Option<Entry> {
        self.lock().jobs.get(&binding).cloned()
    }

    /// The job registered for this root process, ended or not.
    pub fn by_root(&self, pid: u32, start: u64) -> Option<Entry> {
        self.lock()
            .jobs
            .values()
            .find(|e| e.root_pid == pid && e.root_start == start)
            .cloned()
    }

    pub fn token_spent(&self, hash: &str) -> bool {
        self.lock().spent.contains_key(hash)
    }

    /// Stores a new job (and its token as spent) under a fresh number,
    /// persisted before it is returned.
    pub fn insert(&self, mut entry: Entry, token: Option<(String, u64)>) -> Result<Entry, String> {
        {
            let mut st = self.lock();
            if st.jobs.len() >= MAX_JOBS {
                if let Some(oldest) = st
                    .jobs
                    .iter()
                    .filter(|(_, e)| e.ended.is_some())
                    .min_by_key(|(_, e)| e.job.id)
                    .map(|(k, _)| *k)
                {
                    st.jobs.remove(&oldest);
                }
            }
            entry.binding = loop {
                let n = (Uuid::new_v4().as_u128() as u32) | JOB_BIT;
                if !st.jobs.contains_key(&n) {
                    break n;
                }
            };
            if let Some((hash, exp)) = token {
                st.spent.insert(hash, exp);
            }
            st.jobs.insert(entry.binding, entry.clone());
        }
        if let Err(e) = self.save() {
            self.lock().jobs.remove(&entry.binding);
            return Err(e);
        }
        Ok(entry)
    }

    /// Adds a verified token to a job registered without one.
    pub fn attest(
        &self,
        binding: u32,
        job: CiJob,
        oidc: JobIdentity,
        token: (String, u64),
    ) -> Result<Entry, String> {
        let updated = {
            let mut st = self.lock();
            let Some(e) = st.jobs.get_mut(&binding) else {
                return Err("the job is not known".into());
            };
            e.job = job;
            e.oidc = Some(oidc);
            let out = e.clone();
            st.spent.insert(token.0, token.1);
            out
        };
        self.save()?;
        Ok(updated)
    }

    /// Ends a job: returns its entry and how many sessions were open, or
    /// `None` if it had ended already.
    pub fn end(&self, binding: u32, why: &str) -> Option<(Entry, usize)> {
        let entry = {
            let mut st = self.lock();
            let e = st.jobs.get_mut(&binding)?;
            if e.ended.is_some() {
                return None;
            }
            e.ended = Some(why.to_string());
            e.clone()
        };
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "jobs state not saved");
        }
        let open = entry.live.open.load(Ordering::SeqCst);
        entry.live.ended.cancel();
        Some((entry, open))
    }

    /// The job a connection of `uid`, whose label carries `binding`, is
    /// decided with (`None`: not a job's process); `Err` says why it is
    /// refused.
    pub fn for_connection(&self, uid: u32, binding: u32) -> Result<Option<OnConnection>, String> {
        if binding & JOB_BIT == 0 {
            if self.require && self.runners.contains(&uid) {
                return Err(format!(
                    "uid {uid} is a CI runner ([jobs] runners) and this process is not inside a \
                     registered, live CI job (jobs.require): started outside the job's hook \
                     (cron, systemd-run, a job whose hook did not register)"
                ));
            }
            return Ok(None);
        }
        match self.lock().jobs.get(&binding) {
            None => Err(
                "this process belongs to a CI job this daemon does not know (forgotten): refused"
                    .into(),
            ),
            Some(e) => match &e.ended {
                Some(why) => Err(format!(
                    "the CI job this process belongs to has ended ({why}): {}",
                    e.job.describe()
                )),
                None => Ok(Some(OnConnection {
                    job: e.job.clone(),
                    oidc: e.oidc.clone(),
                    live: e.live.clone(),
                })),
            },
        }
    }

    /// Attaches the job of `binding` to `caller` (and its token's
    /// identity), or says why the connection is refused. Returns the live
    /// job to count the session in.
    pub fn attach(
        &self,
        caller: &mut Caller,
        binding: u32,
        oidc: &crate::identity::oidc::Oidc,
    ) -> Result<Option<Arc<Live>>, String> {
        let on = self.for_connection(caller.uid, binding).inspect_err(|_| {
            // A refused process of an ended job is recorded as that job's.
            caller.job = self.get(binding).map(|e| e.job);
        })?;
        match on {
            Some(on) => {
                if on.oidc.is_none() && oidc.required_for(&caller.agent) {
                    return Err(format!(
                        "agent {:?} requires an OIDC token (oidc.require_for) and its CI job \
                         registered without one",
                        caller.agent
                    ));
                }
                caller.job = Some(on.job);
                caller.oidc = on.oidc;
                Ok(Some(on.live))
            }
            None => {
                caller.oidc = oidc.for_connection(&caller.agent, binding)?;
                Ok(None)
            }
        }
    }
}

/// sha256 of a token, hex: how spent tokens are remembered.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(token.trim().as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn tokens_must_agree_with_the_environment_and_come_from_the_jobs_provider() {
        let gh = CiProvider::Github;
        let token = claims(serde_json::json!({
            "repository": "acme/app", "run_id": "42", "actor": "octocat", "run_attempt": 1
        }));
        let mut f = fields(&[
            ("repository", "acme/app"),
            ("run_id", "42"),
            ("job", "build"),
        ]);
        let verified = agree(gh, Some(gh), &token, &mut f).expect("agrees");
        assert_eq!(f["actor"], "octocat");
        assert_eq!(f["run_attempt"], "1");
        assert!(verified.contains(&"repository".to_string()));
        assert!(
            !verified.contains(&"job".to_string()),
            "no claim vouches for it"
        );

        let mut other = fields(&[("repository", "evil/app"), ("run_id", "42")]);
        let e = agree(gh, Some(gh), &token, &mut other).expect_err("disagrees");
        assert!(e.contains("evil/app"), "{e}");
        let e = agree(gh, Some(CiProvider::Gitlab), &token, &mut f.clone()).expect_err("gitlab");
        assert!(e.contains("gitlab issuer"), "{e}");
        assert!(agree(gh, None, &token, &mut f.clone()).is_err());
        // A GitLab token for a GitLab job: its own claim names.
        let gl = claims(serde_json::json!({
            "project_path": "grp/app", "pipeline_id": "7", "job_id": "99", "user_login": "dev"
        }));
        let mut g = fields(&[("repository", "grp/app"), ("run_id", "7"), ("job_id", "98")]);
        let e = agree(CiProvider::Gitlab, Some(CiProvider::Gitlab), &gl, &mut g)
            .expect_err("forged job id");
        assert!(e.contains("job_id"), "{e}");
    }

    #[test]
    fn fields_are_bounded_and_named() {
        assert!(check_fields(&fields(&[("repository", "a/b"), ("run_id", "1")])).is_ok());
        assert!(check_fields(&fields(&[("repository", "a/b")])).is_err());
        assert!(check_fields(&fields(&[
            ("repository", "a/b"),
            ("run_id", "1"),
            ("evil", "x")
        ]))
        .is_err());
        assert!(check_fields(&fields(&[("repository", "a/b\nx"), ("run_id", "1")])).is_err());
    }

    #[test]
    fn connections_outside_a_live_job_are_refused_for_runners() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs = Jobs::load(true, vec![1001], &dir.path().join("jobs.json"));
        assert!(jobs.for_connection(1001, 0).is_err());
        assert!(jobs.for_connection(1001, 7).is_err(), "an OIDC binding");
        assert!(matches!(jobs.for_connection(1002, 0), Ok(None)));
        let e = jobs
            .insert(
                Entry {
                    job: CiJob::default(),
                    binding: 0,
                    root_pid: 1,
                    root_start: 0,
                    uid: 1001,
                    oidc: None,
                    ended: None,
                    live: Arc::default(),
                },
                None,
            )
            .expect("insert");
        assert_ne!(e.binding & JOB_BIT, 0);
        assert!(matches!(jobs.for_connection(1001, e.binding), Ok(Some(_))));
        let session = OpenSession::new(jobs.get(e.binding).expect("job").live);
        let (_, open) = jobs.end(e.binding, "done").expect("ended");
        assert_eq!(open, 1);
        assert!(session.ended().is_cancelled());
        assert!(jobs.for_connection(1001, e.binding).is_err());
        assert!(jobs.end(e.binding, "again").is_none());
        assert!(jobs.for_connection(1001, e.binding ^ 1).is_err(), "unknown");
        // Persisted: a restarted daemon still refuses the ended job.
        let again = Jobs::load(true, vec![1001], &dir.path().join("jobs.json"));
        assert!(again.for_connection(1001, e.binding).is_err());
        assert!(again.get(e.binding).is_some());
    }
}

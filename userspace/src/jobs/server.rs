//! `jobs.sock`: where a runner's hooks register and end jobs.
//!
//! The socket is mode 0666 so the runner's unprivileged account can reach
//! it; who is served is decided by SO_PEERCRED: root and `[jobs] runners`
//! only, refused before taking a connection slot. One JSON request per
//! connection (at most [`MAX_REQUEST`] bytes, read within
//! [`READ_TIMEOUT`]), at most [`PER_UID`] connections per uid and
//! [`TOTAL`] in all: a slow or idle client of one uid never delays another
//! uid's registration.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use blastgate_common::{origin, Label};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    agree, check_fields,
    root::{self, Proc},
    token_hash, CiJob, Entry, Jobs, JOB_BIT,
};
use crate::{
    config::CiProvider,
    identity::{oidc::Oidc, procfs, Caller},
    intercept::{AgentRegistry, KernelMaps},
    records::{Event, EventKind, Recorder, Verdict},
    Error,
};

pub const MAX_REQUEST: u64 = 64 * 1024;
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
pub const PER_UID: usize = 4;
pub const TOTAL: usize = 64;

/// The agent name given to a job's processes that had no label (a job of
/// an account that is not enrolled, e.g. root's maintenance job).
pub const JOB_AGENT: &str = "ci-job";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JobRequest {
    /// Register the job the caller runs in (or add a verified token to a
    /// job registered without one).
    Start {
        provider: CiProvider,
        /// [`super::FIELDS`] from the job's environment.
        fields: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oidc_token: Option<String>,
    },
    /// End the job the caller runs in.
    End,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JobResponse {
    Started { job: CiJob, root_pid: u32 },
    Ended { job: CiJob, closed: usize },
    Error { message: String },
}

pub struct JobsContext {
    pub jobs: Arc<Jobs>,
    pub oidc: Arc<Oidc>,
    pub maps: Arc<KernelMaps>,
    pub agents: Arc<AgentRegistry>,
    pub recorder: Recorder,
    pub stop: CancellationToken,
}

/// Binds the socket, world-connectable (authorisation is by peer uid).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let listener = crate::control::server::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

/// Watches the roots of the jobs that were live when the daemon started.
pub fn watch_live(ctx: &Arc<JobsContext>) {
    for e in ctx.jobs.live() {
        watch(ctx, &e);
    }
}

pub async fn serve(listener: UnixListener, ctx: Arc<JobsContext>) {
    let total = Arc::new(Semaphore::new(TOTAL));
    let per_uid: Mutex<HashMap<u32, Arc<Semaphore>>> = Mutex::default();
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = ctx.stop.cancelled() => return,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "jobs socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(cred) = stream.peer_cred() else {
            continue;
        };
        let uid = cred.uid();
        if uid != 0 && !ctx.jobs.is_runner(uid) {
            refuse_now(
                &stream,
                &format!("uid {uid} is not a CI runner ([jobs] runners): it cannot register jobs"),
            );
            continue;
        }
        let sem = per_uid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_UID)))
            .clone();
        let (Ok(mine), Ok(all)) = (sem.try_acquire_owned(), total.clone().try_acquire_owned())
        else {
            refuse_now(
                &stream,
                &format!("too many connections to the jobs socket (uid {uid}); try again"),
            );
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permits = (mine, all);
            if let Err(e) = handle(stream, cred.pid(), uid, &ctx).await {
                tracing::debug!(error = %e, "jobs connection ended");
            }
        });
    }
}

/// Answers a refused peer without waiting on it (a full socket buffer
/// only loses the courtesy).
fn refuse_now(stream: &UnixStream, message: &str) {
    if let Ok(mut line) = serde_json::to_vec(&JobResponse::Error {
        message: message.to_string(),
    }) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

async fn handle(
    stream: UnixStream,
    pid: Option<i32>,
    uid: u32,
    ctx: &Arc<JobsContext>,
) -> Result<(), Error> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let mut line = String::new();
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let resp = match read {
        Err(_) => JobResponse::Error {
            message: format!("no request within {READ_TIMEOUT:?}"),
        },
        Ok(Err(e)) => return Err(Error::Control(e.to_string())),
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(_)) if !line.ends_with('\n') => JobResponse::Error {
            message: format!("request over {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match (serde_json::from_str::<JobRequest>(&line), pid) {
            (Err(e), _) => JobResponse::Error {
                message: format!("bad request: {e}"),
            },
            (Ok(_), None) => JobResponse::Error {
                message: "no peer pid".into(),
            },
            (Ok(req), Some(pid)) => {
                let pid = u32::try_from(pid).unwrap_or(0);
                match req {
                    JobRequest::Start {
                        provider,
                        fields,
                        oidc_token,
                    } => start(ctx, pid, uid, provider, fields, oidc_token).await,
                    JobRequest::End => end(ctx, pid).await,
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&resp).map_err(|e| Error::Control(e.to_string()))?;
    out.push(b'\n');
    w.write_all(&out)
        .await
        .map_err(|e| Error::Control(e.to_string()))
}

/// A registration refused: recorded (a step trying to become another job
/// is worth a security team's attention), then told.
async fn refused(ctx: &JobsContext, pid: u32, why: String) -> JobResponse {
    tracing::warn!(pid, "CI job refused: {why}");
    let mut caller = caller_of(pid, None);
    if let Some(l) = ctx.maps.label_of(pid) {
        caller.agent = ctx.agents.name_of(l.agent_id);
        if l.binding & JOB_BIT != 0 {
            caller.job = ctx.jobs.get(l.binding).map(|e| e.job);
        }
    }
    record(
        ctx,
        EventKind::JobRefused,
        Verdict::Deny,
        why.clone(),
        caller,
    )
    .await;
    JobResponse::Error { message: why }
}

async fn start(
    ctx: &Arc<JobsContext>,
    pid: u32,
    uid: u32,
    provider: CiProvider,
    mut fields: BTreeMap<String, String>,
    token: Option<String>,
) -> JobResponse {
    fields.retain(|_, v| !v.is_empty());
    if let Err(e) = check_fields(&fields) {
        return refused(ctx, pid, e).await;
    }
    let current = ctx.maps.label_of(pid).map_or(0, |l| l.binding);
    if current & JOB_BIT != 0 {
        return attest(ctx, pid, current, provider, fields, token).await;
    }
    if current != 0 {
        return refused(
            ctx,
            pid,
            "the caller runs inside a `blastgate run` with a verified token: it cannot become a \
             CI job"
                .into(),
        )
        .await;
    }
    let root = match root::find(provider, pid, uid) {
        Ok(r) => r,
        Err(e) => return refused(ctx, pid, e).await,
    };
    if ctx.maps.label_of(root.pid).is_some_and(|l| l.binding != 0) {
        return refused(
            ctx,
            pid,
            format!(
                "the job's root (pid {}) already carries a job identity",
                root.pid
            ),
        )
        .await;
    }
    if let Some(e) = ctx.jobs.by_root(root.pid, root.start) {
        return refused(
            ctx,
            pid,
            format!(
                "pid {} is already the root of {} (first registration wins)",
                root.pid,
                e.job.describe()
            ),
        )
        .await;
    }
    let (verified, oidc, spent) = match &token {
        None => (Vec::new(), None, None),
        Some(t) => match verify(ctx, provider, t, &mut fields).await {
            Ok(v) => v,
            Err(e) => return refused(ctx, pid, e).await,
        },
    };
    let job = CiJob {
        id: Uuid::now_v7(),
        provider: provider.name().to_string(),
        fields,
        verified,
    };
    let entry = Entry {
        job,
        binding: 0,
        root_pid: root.pid,
        root_start: root.start,
        uid,
        oidc,
        ended: None,
        live: Arc::default(),
    };
    let entry = match ctx.jobs.insert(entry, spent) {
        Ok(e) => e,
        Err(e) => {
            return refused(ctx, pid, format!("the job could not be stored: {e}")).await;
        }
    };
    if let Err(e) = bind_tree(ctx, root, entry.binding) {
        ctx.jobs
            .end(entry.binding, "its processes could not be labelled");
        return refused(
            ctx,
            pid,
            format!("the job's processes could not be labelled: {e}"),
        )
        .await;
    }
    watch(ctx, &entry);
    let mut caller = caller_of(root.pid, Some(entry.job.clone()));
    caller.oidc = entry.oidc.clone();
    if let Some(l) = ctx.maps.label_of(root.pid) {
        caller.agent = ctx.agents.name_of(l.agent_id);
    }
    let reason = format!(
        "registered {} (root pid {}, by pid {pid})",
        entry.job.describe(),
        root.pid
    );
    tracing::info!("{reason}");
    record(ctx, EventKind::JobStarted, Verdict::Allow, reason, caller).await;
    JobResponse::Started {
        job: entry.job,
        root_pid: root.pid,
    }
}

/// A token for a job registered without one (GitHub's hook can only fetch
/// its token once the job is registered: before, the runner's connections
/// are refused). Only the same job: the environment must be the one it
/// registered with, and the token must agree with it.
async fn attest(
    ctx: &JobsContext,
    pid: u32,
    binding: u32,
    provider: CiProvider,
    mut fields: BTreeMap<String, String>,
    token: Option<String>,
) -> JobResponse {
    let Some(entry) = ctx.jobs.get(binding) else {
        return refused(ctx, pid, "the caller's CI job is not known".into()).await;
    };
    let registered = entry.job.describe();
    let same = entry.ended.is_none()
        && entry.oidc.is_none()
        && entry.job.provider == provider.name()
        && entry.job.fields == fields;
    let Some(token) = token.filter(|_| same) else {
        return refused(
            ctx,
            pid,
            format!(
                "the caller already runs inside {registered}: a job cannot register again, \
                 change its identity or shed it (first registration wins)"
            ),
        )
        .await;
    };
    let (verified, oidc, spent) = match verify(ctx, provider, &token, &mut fields).await {
        Ok(v) => v,
        Err(e) => {
            // The hook's own token was refused: the job it registered must
            // not go on as if it had none (fail closed).
            let resp = refused(ctx, pid, e).await;
            end_job(ctx, binding, "its OIDC token was refused").await;
            return resp;
        }
    };
    let (Some(oidc), Some(spent)) = (oidc, spent) else {
        return refused(ctx, pid, "no token".into()).await;
    };
    let job = CiJob {
        fields,
        verified,
        ..entry.job.clone()
    };
    match ctx.jobs.attest(binding, job, oidc, spent) {
        Ok(e) => {
            let mut caller = caller_of(e.root_pid, Some(e.job.clone()));
            caller.oidc = e.oidc.clone();
            let reason = format!("token verified for {}", e.job.describe());
            record(ctx, EventKind::JobStarted, Verdict::Allow, reason, caller).await;
            JobResponse::Started {
                job: e.job,
                root_pid: e.root_pid,
            }
        }
        Err(e) => refused(ctx, pid, e).await,
    }
}

type Vouched = (
    Vec<String>,
    Option<crate::identity::oidc::JobIdentity>,
    Option<(String, u64)>,
);

/// Verifies a job token: signature and claims, its issuer's provider, its
/// agreement with the environment, and that it registered no job before.
async fn verify(
    ctx: &JobsContext,
    provider: CiProvider,
    token: &str,
    fields: &mut BTreeMap<String, String>,
) -> Result<Vouched, String> {
    let hash = token_hash(token);
    if ctx.jobs.token_spent(&hash) {
        return Err("this token has already registered a CI job: a token registers one job".into());
    }
    let v = ctx
        .oidc
        .verifier
        .verify_with_claims(token)
        .await
        .map_err(|e| format!("OIDC token refused: {e}"))?;
    let verified = agree(provider, v.provider, &v.claims, fields)
        .map_err(|e| format!("OIDC token refused: {e}"))?;
    let exp = v.identity.expires_at;
    Ok((verified, Some(v.identity), Some((hash, exp))))
}

async fn end(ctx: &JobsContext, pid: u32) -> JobResponse {
    let binding = ctx.maps.label_of(pid).map_or(0, |l| l.binding);
    if binding & JOB_BIT == 0 {
        return refused(
            ctx,
            pid,
            "the caller runs inside no registered CI job: nothing to end".into(),
        )
        .await;
    }
    match end_job(ctx, binding, "its job-completed hook ended it").await {
        Some((job, closed)) => JobResponse::Ended { job, closed },
        None => JobResponse::Error {
            message: "the caller's CI job has ended already".into(),
        },
    }
}

/// Ends a job, cutting its open sessions, and records `job_ended`.
async fn end_job(ctx: &JobsContext, binding: u32, why: &str) -> Option<(CiJob, usize)> {
    let (entry, closed) = ctx.jobs.end(binding, why)?;
    let mut caller = caller_of(entry.root_pid, Some(entry.job.clone()));
    caller.oidc = entry.oidc.clone();
    let reason = format!(
        "CI job ended ({why}): {closed} open session(s) closed; {}",
        entry.job.describe()
    );
    tracing::info!("{reason}");
    record(ctx, EventKind::JobEnded, Verdict::Allow, reason, caller).await;
    Some((entry.job, closed))
}

/// Ends the job when its root exits.
fn watch(ctx: &Arc<JobsContext>, entry: &Entry) {
    let ctx = ctx.clone();
    let root = Proc {
        pid: entry.root_pid,
        start: entry.root_start,
    };
    let (binding, ended) = (entry.binding, entry.live.ended.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = root::exited(root) => {
                end_job(&ctx, binding, "its root process exited").await;
            }
            _ = ended.cancelled() => {}
            _ = ctx.stop.cancelled() => {}
        }
    });
}

/// Puts the job's number in the label of the root and every process of
/// its tree (a process with no label gets one, as agent [`JOB_AGENT`]
/// unless the root names one). Repeated until a pass changes nothing, so a
/// process forked meanwhile from one not yet relabelled is caught.
fn bind_tree(ctx: &JobsContext, root: Proc, binding: u32) -> Result<(), Error> {
    let agent_id = match ctx.maps.label_of(root.pid) {
        Some(l) => l.agent_id,
        None => ctx.agents.id_for(JOB_AGENT)?,
    };
    let daemon = std::process::id();
    for _ in 0..8 {
        let mut changed = 0;
        for pid in root::tree(root) {
            if pid == daemon {
                continue;
            }
            let new = match ctx.maps.label_of(pid) {
                Some(l) if l.binding == binding => continue,
                // Another job's processes stay that job's.
                Some(l) if l.binding & JOB_BIT != 0 => continue,
                Some(l) => Label { binding, ..l },
                None => Label {
                    agent_id,
                    origin: origin::RUN,
                    root_tgid: root.pid,
                    binding,
                },
            };
            ctx.maps.label(pid, new)?;
            changed += 1;
        }
        if changed == 0 {
            return Ok(());
        }
    }
    Ok(())
}

fn caller_of(pid: u32, job: Option<CiJob>) -> Caller {
    Caller {
        pid,
        tid: pid,
        uid: procfs::uid_of(pid).unwrap_or(u32::MAX),
        gid: u32::MAX,
        comm: procfs::comm_of(pid).unwrap_or_default(),
        exe: procfs::exe_of(pid),
        job,
        ..Caller::default()
    }
}

async fn record(ctx: &JobsContext, kind: EventKind, verdict: Verdict, why: String, c: Caller) {
    let mut e = Event::daemon(kind, verdict, why);
    e.caller = Some(c);
    if let Err(err) = ctx.recorder.record(e).await {
        tracing::error!(error = %err, "job event not recorded");
    }
}

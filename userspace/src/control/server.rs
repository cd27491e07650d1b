//! The daemon side of the control socket.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use blastgate_common::origin;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tokio_util::sync::CancellationToken;

use super::{
    proto::{Request, Response, Status},
    MAX_LINE,
};
use crate::{
    approvals::Broker,
    identity::{
        oidc::{JobIdentity, Oidc},
        procfs, Caller,
    },
    intercept::{AgentRegistry, KernelMaps},
    records::{Event, EventKind, Recorder, Verdict},
    Error,
};

pub struct ControlContext {
    pub approvals: Arc<Broker>,
    pub maps: Arc<KernelMaps>,
    pub agents: Arc<AgentRegistry>,
    pub oidc: Arc<Oidc>,
    pub recorder: Recorder,
    /// The parts of the status that do not change while the daemon runs.
    pub status: Status,
    /// The settings and policies in force that weaken enforcement, now.
    pub weakened: Weakened,
}

/// Lists what weakens enforcement at the time it is called.
pub type Weakened = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Binds the socket with root-only permissions, replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Control(format!(
                "{} is in use: another blastgate daemon is running",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, ctx: Arc<ControlContext>, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.cancelled() => return,
        };
        match conn {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &ctx, stop).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    stream: UnixStream,
    ctx: &ControlContext,
    stop: CancellationToken,
) -> Result<(), Error> {
    let cred = stream
        .peer_cred()
        .map_err(|e| Error::Control(format!("peer credentials: {e}")))?;
    let (r, mut w) = stream.into_split();
    // The socket is 0600 root; this is defence in depth against a loosened mode.
    if cred.uid() != 0 {
        return reply(
            &mut w,
            &Response::Error {
                message: "the control socket is root-only".into(),
            },
        )
        .await;
    }
    let mut reader = BufReader::new(r.take(MAX_LINE as u64));
    let mut line = String::new();
    if reader
        .read_line(&mut line)
        .await
        .map_err(|e| Error::Control(e.to_string()))?
        == 0
    {
        return Ok(());
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                &mut w,
                &Response::Error {
                    message: format!("bad request: {e}"),
                },
            )
            .await;
        }
    };
    match req {
        Request::Label { agent, oidc_token } => {
            let Some(pid) = cred.pid().and_then(|p| u32::try_from(p).ok()) else {
                return reply(
                    &mut w,
                    &Response::Error {
                        message: "no peer pid".into(),
                    },
                )
                .await;
            };
            let identity = match vouch(ctx, &agent, oidc_token.as_deref()).await {
                Ok(identity) => identity,
                Err(message) => {
                    record_refusal(ctx, pid, &agent, &message).await;
                    return reply(&mut w, &Response::Error { message }).await;
                }
            };
            let binding = identity.clone().map_or(0, |id| ctx.oidc.bindings.bind(id));
            let labelled = label(ctx, pid, &agent, binding);
            if labelled.is_err() && binding != 0 {
                ctx.oidc.bindings.unbind(binding);
            }
            let resp = match labelled {
                Err(e @ Error::Invalid(_)) => {
                    record_refusal(ctx, pid, &agent, &e.to_string()).await;
                    Response::Error {
                        message: e.to_string(),
                    }
                }
                Ok(id) => {
                    record_label(ctx, pid, &agent, id, identity.clone()).await;
                    Response::Labelled {
                        pid,
                        agent,
                        agent_id: id,
                        oidc: identity,
                    }
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
            reply(&mut w, &resp).await
        }
        Request::Status => {
            let mut status = ctx.status.clone();
            // Builds the shipped set to compare with: off the reactor.
            let weakened = ctx.weakened.clone();
            status.weakened = tokio::task::spawn_blocking(move || weakened())
                .await
                .unwrap_or_default();
            let labels = ctx.maps.labelled();
            status.labelled_processes = labels.len();
            let mut agents: Vec<String> = labels
                .iter()
                .map(|(_, l)| ctx.agents.name_of(l.agent_id))
                .collect();
            agents.sort();
            agents.dedup();
            status.agents = agents;
            status.alarms = ctx.maps.alarms();
            status.counters = ctx
                .maps
                .counters()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            // A differential means a gateway read a statement otherwise than
            // the server: status says so until the daemon restarts.
            status.counters.push((
                "sql_differentials".to_string(),
                crate::metrics::get().sql_differentials.get(),
            ));
            reply(&mut w, &Response::Status(Box::new(status))).await
        }
        Request::Approvals => {
            reply(
                &mut w,
                &Response::Approvals {
                    pending: ctx.approvals.list(),
                },
            )
            .await
        }
        Request::Decide {
            id,
            approve,
            reason,
            on_behalf_of,
        } => {
            let me = crate::identity::users::name_of(cred.uid())
                .unwrap_or_else(|| format!("uid {}", cred.uid()));
            let by = match on_behalf_of {
                Some(human) if human != me => format!("{me} (sudo from {human}, control socket)"),
                _ => format!("{me} (control socket)"),
            };
            let resp = match ctx.approvals.decide(id, approve, by.clone(), reason) {
                Ok(()) => Response::Decided { id, by },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
            reply(&mut w, &resp).await
        }
        Request::Follow => {
            let mut events = ctx.recorder.subscribe();
            loop {
                let next = tokio::select! {
                    e = events.recv() => e,
                    _ = stop.cancelled() => return Ok(()),
                };
                let resp = match next {
                    Ok(e) => Response::Event(Box::new(e)),
                    Err(RecvError::Lagged(n)) => Response::Lagged { missed: n },
                    Err(RecvError::Closed) => return Ok(()),
                };
                reply(&mut w, &resp).await?;
            }
        }
    }
}

/// The identity a token proves for `agent`, or why nothing may start:
/// the token did not verify, or the agent needs one and none came.
async fn vouch(
    ctx: &ControlContext,
    agent: &str,
    token: Option<&str>,
) -> Result<Option<JobIdentity>, String> {
    match token {
        Some(token) => ctx
            .oidc
            .verifier
            .verify(token)
            .await
            .map(Some)
            .map_err(|e| format!("OIDC token refused: {e}")),
        None if ctx.oidc.required_for(agent) => Err(format!(
            "agent {agent:?} requires an OIDC token (oidc.require_for): pass \
             --oidc-token-file or --oidc-token-env"
        )),
        None => Ok(None),
    }
}

fn label(ctx: &ControlContext, pid: u32, agent: &str, binding: u32) -> Result<u32, Error> {
    if pid == std::process::id() {
        return Err(Error::Invalid("the daemon cannot be an agent".into()));
    }
    let id = ctx.agents.id_for(agent)?;
    let new = blastgate_common::Label {
        agent_id: id,
        origin: origin::RUN,
        root_tgid: pid,
        binding,
    };
    if !ctx.maps.label_new(pid, new)? {
        // Already an agent: a `blastgate run` inside an agent's tree, or a
        // process enrolled by uid or cgroup. Its name is fixed, and so is a
        // job identity once proved: a nested run could otherwise take
        // another job's token, shed its own, or pick a laxer agent name.
        // What it may do is prove a job identity it did not have yet
        // (a runner enrolled by uid presenting its job's token).
        let current = ctx.maps.label_of(pid);
        let adds_a_token =
            current.is_some_and(|l| l.agent_id == id && l.binding == 0 && binding != 0);
        if !adds_a_token {
            let name = current
                .map(|l| ctx.agents.name_of(l.agent_id))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "pid {pid} is already agent {name:?}{}: a blastgate run inside an agent cannot \
                 change its name or job identity",
                if current.is_some_and(|l| l.binding != 0) {
                    " with a verified job token"
                } else {
                    ""
                }
            )));
        }
        ctx.maps.label(pid, new)?;
    }
    tracing::info!(pid, agent, "labelled a process as an agent");
    Ok(id)
}

async fn record_label(
    ctx: &ControlContext,
    pid: u32,
    agent: &str,
    agent_id: u32,
    oidc: Option<JobIdentity>,
) {
    let reason = match &oidc {
        Some(id) => format!(
            // Debug quoting: a claim cannot forge lines in logs.
            "blastgate run labelled pid {pid}, OIDC token of {:?} verified ({:?})",
            id.iss, id.sub
        ),
        None => format!("blastgate run labelled pid {pid}"),
    };
    let mut e = Event::daemon(EventKind::AgentLabelled, Verdict::Allow, reason);
    e.caller = Some(run_caller(pid, agent, agent_id, oidc));
    if let Err(err) = ctx.recorder.record(e).await {
        tracing::error!(error = %err, "label event not recorded");
    }
}

/// A `blastgate run` refused before anything started: recorded, since a
/// forged or stolen token is worth a security team's attention.
async fn record_refusal(ctx: &ControlContext, pid: u32, agent: &str, why: &str) {
    tracing::warn!(pid, agent, "{why}");
    let mut e = Event::daemon(EventKind::AgentRefused, Verdict::Deny, why.to_string());
    e.caller = Some(run_caller(pid, agent, 0, None));
    if let Err(err) = ctx.recorder.record(e).await {
        tracing::error!(error = %err, "refusal not recorded");
    }
}

/// The `blastgate run` process, as /proc shows it.
fn run_caller(pid: u32, agent: &str, agent_id: u32, oidc: Option<JobIdentity>) -> Caller {
    Caller {
        agent: agent.to_string(),
        agent_id,
        pid,
        tid: pid,
        uid: procfs::uid_of(pid).unwrap_or(u32::MAX),
        gid: u32::MAX,
        comm: procfs::comm_of(pid).unwrap_or_default(),
        exe: procfs::exe_of(pid),
        cgroup_id: 0,
        lineage: Vec::new(),
        oidc,
        job: None,
    }
}

async fn reply(w: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> Result<(), Error> {
    let mut line = serde_json::to_vec(resp).map_err(|e| Error::Control(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line)
        .await
        .map_err(|e| Error::Control(e.to_string()))
}

//! One session channel from the agent's request to its record: decide
//! (exec, shell, subsystem), hold for a human if policy says so, run it
//! upstream, relay both ways, record.
//!
//! The channel runs in its own task so a held request never stalls the
//! agent's other channels (ControlMaster multiplexes many on one session).

use std::{sync::Mutex, time::Instant};

use bytes::Bytes;
use russh::{
    client,
    server::{self},
    ChannelId, ChannelMsg, Pty as PtyMode, Sig,
};
use serde_json::{json, Value};

use super::{
    command,
    flow::{Inbox, Input},
    recording::Recording,
    sftp::{SftpObserver, SftpRecord},
    upstream::{self, ServerCheck},
    SshTarget, Upstream,
};
use crate::{
    protocols::gateway::Gateway,
    records::{Event, EventKind, IoChunk, Verdict},
};

/// What the agent asked the channel to run.
#[derive(Debug, Clone)]
pub enum Request {
    Exec(String),
    Shell,
    Subsystem(String),
}

/// A terminal the agent asked for before starting the channel.
#[derive(Debug, Clone)]
pub struct Pty {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub pix_width: u32,
    pub pix_height: u32,
    pub modes: Vec<(PtyMode, u32)>,
}

/// Requests that only prepare a channel; replayed upstream before it starts.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub pty: Option<Pty>,
    pub env: Vec<(String, String)>,
}

/// Everything a channel task needs; owned, since it outlives the callback.
pub struct Job {
    pub gw: Gateway,
    pub cfg: std::sync::Arc<SshTarget>,
    pub upstream: Upstream,
    pub agent: server::Handle,
    pub id: ChannelId,
    pub request: Request,
    pub setup: Setup,
    pub inbox: Inbox,
}

/// The policy context every `ssh:*` action carries (one shape: the
/// schema's `SshContext`).
pub fn context(command: &str, forward: Option<(&str, u32)>) -> Value {
    let parsed = command::parse(command);
    let (host, port) = forward.unwrap_or(("", 0));
    json!({
        "command": parsed.line,
        "program": parsed.program,
        "args": parsed.args,
        "shell_features": parsed.shell_features,
        "forward_host": host,
        "forward_port": port,
    })
}

impl Request {
    fn action(&self) -> Result<&'static str, String> {
        match self {
            Request::Exec(_) => Ok("ssh:exec"),
            Request::Shell => Ok("ssh:shell"),
            Request::Subsystem(name) if name == "sftp" => Ok("ssh:sftp"),
            Request::Subsystem(name) => Err(format!("subsystem {name:?} is not supported")),
        }
    }

    fn text(&self) -> String {
        match self {
            Request::Exec(line) => line.clone(),
            Request::Shell => "shell".into(),
            Request::Subsystem(name) => format!("subsystem {name}"),
        }
    }
}

/// How the upstream ended the channel.
#[derive(Default)]
struct Ending {
    exit_status: Option<u32>,
    signal: Option<String>,
}

/// Replay data and the sftp watcher, shared by the two relay directions.
struct Watch {
    recording: Recording,
    sftp: Option<SftpObserver>,
}

pub async fn run(job: Job) {
    let text = job.request.text();
    let action = match job.request.action() {
        Ok(a) => a,
        Err(why) => {
            let mut event = job.gw.event(EventKind::Command, Verdict::Deny);
            event.action = Some("ssh:exec".into());
            event.text = Some(text);
            event.reason = Some(why.clone());
            refuse(&job, &format!("blastgate: {why}")).await;
            job.gw.record(event).await;
            return;
        }
    };
    let line = match &job.request {
        Request::Exec(line) => line.as_str(),
        _ => "",
    };
    let decision = job.gw.decide(action, &context(line, None));
    let notice = job.agent.clone();
    let channel = job.id;
    let ruled = tokio::select! {
        r = job.gw.rule(decision, action, &text, move |id| {
            tokio::spawn(async move {
                let _ = notice
                    .extended_data(channel, 1, format!("waiting for approval {id}\r\n"))
                    .await;
            });
        }) => Some(r),
        // Dropping the hold withdraws the approval request: nothing runs
        // for an agent that is gone.
        _ = job.inbox.hung_up() => None,
    };
    let Some(ruling) = ruled else {
        let mut event = job.gw.event(EventKind::Command, Verdict::Deny);
        event.action = Some(action.into());
        event.text = Some(text);
        event.reason = Some("withdrawn: the agent closed the channel before a decision".into());
        job.gw.record(event).await;
        return;
    };
    let mut event = job.gw.ruled(EventKind::Command, action, text, &ruling);
    if !ruling.allowed {
        let message = format!(
            "blastgate: {action} denied by policy {}: {}",
            ruling.policy_id.as_deref().unwrap_or("(default deny)"),
            ruling.reason
        );
        refuse(&job, &message).await;
        job.gw.record(event).await;
        return;
    }

    let plan = job.gw.mask_plan().unwrap_or_default();
    let session = &job.gw.session;
    let (recording, first) = match &job.setup.pty {
        Some(p) => {
            let (r, size) = Recording::terminal(&plan, session.elapsed_us(), p.cols, p.rows);
            (r, Some(size))
        }
        None => (Recording::excerpt(&plan), None),
    };
    if let Some(chunk) = first {
        job.gw.record(session.io(chunk)).await;
    }
    let watch = Mutex::new(Watch {
        recording,
        sftp: matches!(job.request, Request::Subsystem(_)).then(SftpObserver::new),
    });
    let started = Instant::now();
    let result = relay(&job, &watch).await;
    event.duration_us = Some(started.elapsed().as_micros() as u64);
    tracing::debug!(
        channel = %job.id,
        peak_queued_input = job.inbox.peak_bytes(),
        "ssh channel ended"
    );

    let (tail, stats, sftp_tail) = match watch.lock() {
        Ok(mut w) => {
            let tail = w.recording.finish(session.elapsed_us());
            let r = &w.recording;
            let stats = (r.input_bytes, r.stdout_bytes, r.stderr_bytes, r.masked());
            let sftp_tail = w
                .sftp
                .as_mut()
                .map(SftpObserver::finish)
                .unwrap_or_default();
            (tail, stats, sftp_tail)
        }
        Err(_) => (Vec::new(), (0, 0, 0, 0), Vec::new()),
    };
    record_io(&job.gw, tail).await;
    record_sftp(&job.gw, sftp_tail).await;
    let (input, stdout, stderr, masked) = stats;
    event.bytes_from_agent = Some(input);
    event.bytes_to_agent = Some(stdout + stderr);
    event.stderr_bytes = Some(stderr);
    if masked > 0 {
        event.masked_fields = Some(masked);
    }
    match result {
        Ok(ending) => {
            event.exit_status = ending.exit_status.map(|s| s as i32);
            if let Some(sig) = ending.signal {
                event.reason = Some(format!(
                    "{}; ended by signal {sig}",
                    event.reason.unwrap_or_default()
                ));
            }
        }
        Err(e) => {
            event.verdict = Verdict::Error;
            event.reason = Some(format!("{}; {e}", event.reason.unwrap_or_default()));
            end_channel(&job.agent, job.id, format!("blastgate: {e}\r\n"), 255).await;
        }
    }
    job.gw.record(event).await;
}

/// Refuses a request the upstream never saw: the reason on stderr and
/// status 126 ("cannot execute"), which tells a script it never ran.
async fn refuse(job: &Job, message: &str) {
    end_channel(&job.agent, job.id, format!("{message}\r\n"), 126).await;
}

/// Ends a channel: why on stderr, then the exit status, EOF and close, in
/// the order OpenSSH expects them.
pub async fn end_channel(agent: &server::Handle, channel: ChannelId, message: String, status: u32) {
    let _ = agent.extended_data(channel, 1, message).await;
    let _ = agent.exit_status_request(channel, status).await;
    let _ = agent.eof(channel).await;
    let _ = agent.close(channel).await;
}

async fn open_upstream(job: &Job) -> Result<russh::Channel<client::Msg>, String> {
    let mut guard = job.upstream.lock().await;
    if guard.is_none() {
        *guard = Some(upstream::connect(&job.gw, &job.cfg).await?);
    }
    let handle: &client::Handle<ServerCheck> = guard.as_ref().ok_or("no upstream connection")?;
    handle
        .channel_open_session()
        .await
        .map_err(|e| format!("upstream channel: {e}"))
}

async fn relay(job: &Job, watch: &Mutex<Watch>) -> Result<Ending, String> {
    let up = open_upstream(job).await?;
    let failed = |e: russh::Error| format!("upstream: {e}");
    if let Some(p) = &job.setup.pty {
        up.request_pty(
            false,
            &p.term,
            p.cols,
            p.rows,
            p.pix_width,
            p.pix_height,
            &p.modes,
        )
        .await
        .map_err(failed)?;
    }
    for (name, value) in &job.setup.env {
        up.set_env(false, name.as_str(), value.as_str())
            .await
            .map_err(failed)?;
    }
    match &job.request {
        Request::Exec(line) => up.exec(true, line.as_bytes()).await,
        Request::Shell => up.request_shell(true).await,
        Request::Subsystem(name) => up.request_subsystem(true, name.as_str()).await,
    }
    .map_err(failed)?;

    let (mut from_up, to_up) = up.split();
    job.inbox.running();
    let session = &job.gw.session;
    let to_upstream = async {
        while let Some(input) = job.inbox.recv().await {
            match input {
                Input::Data(d) => {
                    let chunks = match watch.lock() {
                        Ok(mut w) => {
                            if let Some(s) = w.sftp.as_mut() {
                                s.from_client(&d);
                            }
                            w.recording.input(session.elapsed_us(), &d)
                        }
                        Err(_) => Vec::new(),
                    };
                    record_io(&job.gw, chunks).await;
                    job.gw.counters.add_from_agent(d.len() as u64);
                    to_up.data_bytes(d).await.map_err(failed)?;
                }
                Input::Eof => to_up.eof().await.map_err(failed)?,
                Input::Resize {
                    cols,
                    rows,
                    pix_width,
                    pix_height,
                } => {
                    let chunk = watch
                        .lock()
                        .ok()
                        .and_then(|mut w| w.recording.resize(session.elapsed_us(), cols, rows));
                    record_io(&job.gw, chunk.into_iter().collect()).await;
                    to_up
                        .window_change(cols, rows, pix_width, pix_height)
                        .await
                        .map_err(failed)?;
                }
                Input::Signal(sig) => to_up.signal(sig).await.map_err(failed)?,
            }
        }
        // The agent closed the channel: so does the upstream, and the
        // relay below ends with its close.
        let _ = to_up.close().await;
        Ok::<(), String>(())
    };
    let to_agent = async {
        let mut ending = Ending::default();
        while let Some(msg) = from_up.wait().await {
            let delivered = match msg {
                ChannelMsg::Data { data } => {
                    deliver(job, watch, data, None).await;
                    true
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    deliver(job, watch, data, Some(ext)).await;
                    true
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    ending.exit_status = Some(exit_status);
                    job.agent
                        .exit_status_request(job.id, exit_status)
                        .await
                        .is_ok()
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    ending.signal = Some(signal_label(&signal_name));
                    job.agent
                        .exit_signal_request(
                            job.id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await
                        .is_ok()
                }
                ChannelMsg::Eof => job.agent.eof(job.id).await.is_ok(),
                ChannelMsg::Failure => {
                    let _ = job
                        .agent
                        .extended_data(
                            job.id,
                            1,
                            "blastgate: the server refused the request\r\n".to_string(),
                        )
                        .await;
                    true
                }
                ChannelMsg::Close => false,
                _ => true,
            };
            if !delivered {
                break;
            }
        }
        ending
    };
    tokio::pin!(to_upstream, to_agent);
    let mut writing = true;
    let ending = loop {
        tokio::select! {
            done = &mut to_upstream, if writing => {
                writing = false;
                done?;
            }
            ending = &mut to_agent => break ending,
        }
    };
    let _ = job.agent.close(job.id).await;
    Ok(ending)
}

/// Output to the agent: recorded (masked), watched (sftp), then sent.
async fn deliver(job: &Job, watch: &Mutex<Watch>, data: Bytes, ext: Option<u32>) {
    let at = job.gw.session.elapsed_us();
    let (chunks, ops) = match watch.lock() {
        Ok(mut w) => {
            let ops = match w.sftp.as_mut() {
                Some(s) if ext.is_none() => s.from_server(&data),
                _ => Vec::new(),
            };
            (w.recording.output(at, &data, ext.is_some()), ops)
        }
        Err(_) => (Vec::new(), Vec::new()),
    };
    record_io(&job.gw, chunks).await;
    record_sftp(&job.gw, ops).await;
    job.gw.counters.add_to_agent(data.len() as u64);
    let _ = match ext {
        None => job.agent.data(job.id, data).await,
        Some(ext) => job.agent.extended_data(job.id, ext, data).await,
    };
}

async fn record_io(gw: &Gateway, chunks: Vec<IoChunk>) {
    for chunk in chunks {
        gw.record(gw.session.io(chunk)).await;
    }
}

/// One event per file operation: the path, the direction of the bytes
/// and the server's answer.
async fn record_sftp(gw: &Gateway, ops: Vec<SftpRecord>) {
    for op in ops {
        let ok = op.status == Some(0);
        let mut e: Event = gw.event(EventKind::Command, Verdict::Allow);
        e.action = Some("ssh:sftp".into());
        let mut text = format!("{} {}", op.op, op.path);
        if let Some(t) = &op.target {
            text += &format!(" -> {t}");
        }
        if let Some(m) = &op.mode {
            text += &format!(" ({m})");
        }
        e.text = Some(text);
        match op.op {
            "read" => e.bytes_to_agent = Some(op.bytes),
            "write" => e.bytes_from_agent = Some(op.bytes),
            _ => {}
        }
        e.reason = Some(match op.status {
            Some(0) => "ok".to_string(),
            Some(code) => format!("server answered status {code}"),
            None => "no answer before the channel closed".to_string(),
        });
        if !ok && op.op == "unparsed" {
            e.verdict = Verdict::Error;
        }
        gw.record(e).await;
    }
}

fn signal_label(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

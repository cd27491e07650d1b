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
    ChannelId, ChannelMsg, ChannelWriteHalf, Pty as PtyMode, Sig,
};

use super::{
    command,
    context::SshContext,
    flow::{Inbox, Input},
    gate, git as ssh_git, hosts,
    recording::Recording,
    resolve,
    sftp::{SftpObserver, SftpRecord},
    upstream, SshTarget, Upstream,
};
use crate::{
    protocols::{
        gateway::{Gateway, Ruling},
        git::{push::ReportSplice, receive_pack_exec, Incoming},
    },
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

impl Job {
    pub(super) fn host(&self) -> resolve::Host<'_> {
        resolve::Host {
            gw: &self.gw,
            cfg: &self.cfg,
            upstream: &self.upstream,
        }
    }
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

impl Ending {
    fn exited(&self) -> bool {
        self.exit_status.is_some() || self.signal.is_some()
    }
}

/// Sends the server's EOF that waited for the exit status (see `relay`).
/// False: the agent is gone.
async fn release_eof(job: &Job, held: &mut bool) -> bool {
    !std::mem::take(held) || job.agent.eof(job.id).await.is_ok()
}

/// Replay data and the sftp watcher, shared by the two relay directions.
struct Watch {
    recording: Recording,
    sftp: Option<SftpObserver>,
    /// git-receive-pack: the server's report, with refusals slipped in.
    git: Option<ReportSplice>,
}

/// One thing policy rules on before a channel starts: the request itself,
/// then each place it writes.
struct Step {
    action: &'static str,
    context: SshContext,
    text: String,
    /// Allowed: what to remember as written (path, tree).
    writes: Option<(String, bool)>,
}

/// The steps of a request: an exec is decided on the program the host
/// will really run, and a transfer server mode also on where it writes.
/// Err: the host cannot be reached to tell what would run.
async fn steps(job: &Job, action: &'static str, text: String) -> Result<Vec<Step>, String> {
    let Request::Exec(line) = &job.request else {
        return Ok(vec![Step {
            action,
            context: SshContext::default(),
            text,
            writes: None,
        }]);
    };
    let cmd = command::parse(line);
    let mut ctx = SshContext {
        command: cmd.line.clone(),
        program_typed: cmd.program.clone(),
        args: cmd.args.clone(),
        shell_features: cmd.shell_features,
        recursive_delete: cmd.recursive_delete,
        ..Default::default()
    };
    let host = job.host();
    if !cmd.shell_features && !cmd.program.is_empty() {
        host.program(&cmd, &mut ctx).await?;
    }
    let mut out = vec![Step {
        action,
        context: ctx,
        text,
        writes: None,
    }];
    if let Some(dest) = command::destination(&cmd) {
        let home = host.home().await.ok();
        let path = dest
            .path
            .zip(home.as_deref())
            .and_then(|(p, home)| hosts::normalize(home, &p));
        out.push(write_step(dest.op, path, home.as_deref(), true));
    }
    Ok(out)
}

/// A write of `path` (None: blastgate cannot tell where) as policy sees it.
fn write_step(op: &str, path: Option<String>, home: Option<&str>, tree: bool) -> Step {
    let path_text = path.clone().unwrap_or_default();
    let context = SshContext {
        home_relative: home
            .map(|h| hosts::home_relative(h, &path_text))
            .unwrap_or_default(),
        path_name: path_text.rsplit('/').next().unwrap_or_default().to_string(),
        path: path_text.clone(),
        write_op: op.to_string(),
        tree,
        ..Default::default()
    };
    Step {
        action: "ssh:write",
        context,
        text: format!(
            "{op} {}",
            if path_text.is_empty() {
                "(unknown path)"
            } else {
                &path_text
            }
        ),
        writes: path.map(|p| (p, tree)),
    }
}

/// Rules on one step, waiting for a human if policy says so. None: the
/// agent hung up first (recorded).
async fn rule(job: &Job, step: &Step) -> Option<(Ruling, Event)> {
    rule_on(job, step.action, &step.context.json(), &step.text).await
}

/// [`rule`] for any action and its policy context.
pub(super) async fn rule_on(
    job: &Job,
    action: &'static str,
    context: &serde_json::Value,
    text: &str,
) -> Option<(Ruling, Event)> {
    let decision = job.gw.decide(action, context);
    tracing::debug!(action, %context, verdict = ?decision.verdict, "ssh decision");
    let notice = job.agent.clone();
    let channel = job.id;
    let tasks = job.gw.tasks.clone();
    let ruled = tokio::select! {
        r = job.gw.rule(decision, action, text, move |id| {
            tasks.spawn_cancellable(async move {
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
        event.text = Some(text.to_string());
        event.reason = Some("withdrawn: the agent closed the channel before a decision".into());
        job.gw.record(event).await;
        return None;
    };
    let event = job
        .gw
        .ruled(EventKind::Command, action, text.to_string(), &ruling);
    Some((ruling, event))
}

/// Why a ruling refused, as the agent reads it.
pub(super) fn refusal(action: &str, ruling: &Ruling) -> String {
    format!(
        "blastgate: {action} denied by policy {}: {}",
        ruling.policy_id.as_deref().unwrap_or("(default deny)"),
        ruling.reason
    )
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
    let steps = match steps(&job, action, text.clone()).await {
        Ok(steps) => steps,
        Err(why) => {
            let mut event = job.gw.event(EventKind::Command, Verdict::Error);
            event.action = Some(action.into());
            event.text = Some(text);
            event.reason = Some(why.clone());
            end_channel(&job.agent, job.id, format!("blastgate: {why}\r\n"), 255).await;
            job.gw.record(event).await;
            return;
        }
    };
    let mut first = None;
    for step in steps {
        let Some((ruling, event)) = rule(&job, &step).await else {
            if let Some(event) = first {
                job.gw.record(event).await;
            }
            return;
        };
        if !ruling.allowed {
            refuse(&job, &refusal(step.action, &ruling)).await;
            if let Some(mut first) = first {
                first.verdict = Verdict::Deny;
                first.reason = Some(format!(
                    "{}; not run: {} refused",
                    first.reason.unwrap_or_default(),
                    step.text
                ));
                job.gw.record(first).await;
            }
            job.gw.record(event).await;
            return;
        }
        if let Some((path, tree)) = &step.writes {
            job.gw
                .services
                .ssh_hosts
                .wrote(&job.gw.target.name, path, *tree);
        }
        match first {
            None => first = Some(event),
            Some(_) => job.gw.record(event).await,
        }
    }
    let Some(mut event) = first else { return };
    let home = match &job.request {
        Request::Subsystem(_) => match job.host().home().await {
            Ok(home) => Some(home),
            Err(why) => {
                let why = format!("cannot tell the host's home directory for sftp paths: {why}");
                event.verdict = Verdict::Error;
                event.reason = Some(why.clone());
                end_channel(&job.agent, job.id, format!("blastgate: {why}\r\n"), 255).await;
                job.gw.record(event).await;
                return;
            }
        },
        _ => None,
    };

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
        git: receive_pack(&job.request).map(|_| ReportSplice::default()),
    });
    let started = Instant::now();
    // A session cut from outside (shutdown, a policy reload) ends the
    // channel here, and its record is still written below.
    let result = tokio::select! {
        r = relay(&job, &watch, home) => r,
        _ = job.gw.tasks.cancelled() => Err(job
            .gw
            .tasks
            .why()
            .to_string()),
    };
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

async fn relay(job: &Job, watch: &Mutex<Watch>, home: Option<String>) -> Result<Ending, String> {
    let up = upstream::session_channel(&job.gw, &job.cfg, &job.upstream).await?;
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
    let splice = tokio::sync::Mutex::new(Splice::default());
    let mut cuts = home.as_ref().map(|_| gate::ClientCuts::default());
    let repo = receive_pack(&job.request);
    let mut push = repo.as_ref().map(|_| Incoming::default());
    let mut drop_rest = false;
    // Whether the agent has sent its EOF (see the EOF held below).
    let agent_eof = std::sync::atomic::AtomicBool::new(false);
    let to_upstream = async {
        while let Some(input) = job.inbox.recv().await {
            let eof = matches!(input, Input::Eof);
            if let (Some(incoming), Some(repo), Input::Data(_) | Input::Eof) =
                (push.as_mut(), repo.as_deref(), &input)
            {
                let data = match &input {
                    Input::Data(d) => d.clone(),
                    _ => Bytes::new(),
                };
                let parsed = match incoming.push_async(&data, eof).await {
                    Ok(None) => continue,
                    Ok(Some(parsed)) => parsed,
                    Err(why) => {
                        ssh_git::unparsed(job, &why).await;
                        return Err(format!("git push refused: {why}"));
                    }
                };
                let fwd = ssh_git::rule_push(job, &parsed, incoming.buffered(), repo).await?;
                push = None;
                drop_rest = !fwd.pass_rest;
                if let Some(answer) = fwd.answer {
                    let _ = job.agent.data(job.id, Bytes::from(answer)).await;
                }
                if let Ok(mut w) = watch.lock() {
                    if let Some(splice) = w.git.as_mut() {
                        splice.refuse(fwd.refused, fwd.sideband);
                    }
                }
                forward(job, watch, &to_up, Bytes::from(fwd.bytes)).await?;
                if !eof {
                    continue;
                }
            }
            match input {
                Input::Data(_) if drop_rest => {}
                Input::Data(d) => {
                    let (Some(cuts), Some(home)) = (cuts.as_mut(), home.as_deref()) else {
                        forward(job, watch, &to_up, d).await?;
                        continue;
                    };
                    for unit in cuts.push(&d).map_err(|e| format!("sftp: {e}"))? {
                        match unit {
                            gate::Unit::Pass(b) => forward(job, watch, &to_up, b).await?,
                            gate::Unit::Packet(p) => {
                                match decide_writes(job, watch, &p, home).await? {
                                    None => forward(job, watch, &to_up, p).await?,
                                    Some(refused) => splice.lock().await.send(job, refused).await,
                                }
                            }
                        }
                    }
                }
                Input::Eof => {
                    agent_eof.store(true, std::sync::atomic::Ordering::Relaxed);
                    to_up.eof().await.map_err(failed)?
                }
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
        // The server's EOF is passed on only once its exit status (or
        // signal, or close) has been: a client whose input is done answers
        // EOF with CLOSE (an OpenSSH ControlMaster does for its mux
        // clients), russh answers that CLOSE at once, and an exit status
        // arriving after it could no longer be sent: the client would exit
        // 255 where direct it gets the program's status. Only a client
        // whose input is done can close on that EOF, so only then is it
        // held: a client still to send (one that reads to EOF before it
        // writes) gets it at once, and a program waiting on that input is
        // never stalled by the hold.
        let mut eof_held = false;
        while let Some(msg) = from_up.wait().await {
            let delivered = match msg {
                ChannelMsg::Data { data } => {
                    deliver(job, watch, &splice, data, None).await?;
                    true
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    deliver(job, watch, &splice, data, Some(ext)).await?;
                    true
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    ending.exit_status = Some(exit_status);
                    job.agent
                        .exit_status_request(job.id, exit_status)
                        .await
                        .is_ok()
                        && release_eof(job, &mut eof_held).await
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
                        && release_eof(job, &mut eof_held).await
                }
                ChannelMsg::Eof
                    if ending.exited() || !agent_eof.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    job.agent.eof(job.id).await.is_ok()
                }
                ChannelMsg::Eof => {
                    eof_held = true;
                    true
                }
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
        release_eof(job, &mut eof_held).await;
        Ok::<Ending, String>(ending)
    };
    tokio::pin!(to_upstream, to_agent);
    let mut writing = true;
    let ended = loop {
        tokio::select! {
            done = &mut to_upstream, if writing => {
                writing = false;
                if let Err(why) = done {
                    break Err(why);
                }
            }
            ending = &mut to_agent => break ending,
        }
    };
    match ended {
        Ok(ending) => {
            let _ = job.agent.close(job.id).await;
            Ok(ending)
        }
        Err(why) => {
            let _ = to_up.close().await;
            Err(why)
        }
    }
}

/// The repository of a `git-receive-pack` exec, whose pushes are ruled
/// on per ref. Any other line naming receive-pack (a shell line a human
/// approved, `git -C repo receive-pack .`) is ruled on too, with the
/// repository unknown (""): nothing pushes unruled.
fn receive_pack(request: &Request) -> Option<String> {
    let Request::Exec(line) = request else {
        return None;
    };
    let cmd = command::parse(line);
    receive_pack_exec(&cmd.program, &cmd.args).or_else(|| {
        let lower = line.to_ascii_lowercase();
        (lower.contains("receive-pack") || lower.contains("receive_pack")).then(String::new)
    })
}

/// Agent input on its way upstream: watched (sftp), recorded, sent.
async fn forward(
    job: &Job,
    watch: &Mutex<Watch>,
    to_up: &ChannelWriteHalf<client::Msg>,
    d: Bytes,
) -> Result<(), String> {
    let session = &job.gw.session;
    let chunks = match watch.lock() {
        Ok(mut w) => {
            let failed = w.sftp.as_mut().and_then(|s| {
                s.from_client(&d);
                s.failure()
            });
            if let Some(why) = failed {
                return Err(format!("sftp: {why}"));
            }
            w.recording.input(session.elapsed_us(), &d)
        }
        Err(_) => Vec::new(),
    };
    record_io(&job.gw, chunks).await;
    job.gw.counters.add_from_agent(d.len() as u64);
    to_up
        .data_bytes(d)
        .await
        .map_err(|e| format!("upstream: {e}"))
}

/// Rules on every path a withheld sftp request writes. None: all allowed
/// (remembered as written); otherwise the refusal to send the agent.
async fn decide_writes(
    job: &Job,
    watch: &Mutex<Watch>,
    packet: &[u8],
    home: &str,
) -> Result<Option<Bytes>, String> {
    let handle_path = |h: &[u8]| {
        watch
            .lock()
            .ok()
            .and_then(|w| w.sftp.as_ref().and_then(|s| s.handle_path(h)))
    };
    let Some((id, writes)) =
        gate::writes(packet, home, handle_path).map_err(|e| format!("sftp: {e}"))?
    else {
        return Ok(None);
    };
    for w in writes {
        let step = write_step(&w.op, w.path, Some(home), false);
        let Some((ruling, event)) = rule(job, &step).await else {
            return Err("the agent closed the channel during a decision".into());
        };
        job.gw.record(event).await;
        if !ruling.allowed {
            return Ok(Some(gate::denied(id, &refusal(step.action, &ruling))));
        }
        if let Some((path, tree)) = &step.writes {
            job.gw
                .services
                .ssh_hosts
                .wrote(&job.gw.target.name, path, *tree);
        }
    }
    Ok(None)
}

/// The agent's side of an sftp channel, where refusals are slipped in
/// between the server's packets.
#[derive(Default)]
struct Splice {
    cuts: gate::ServerCuts,
    waiting: Vec<Bytes>,
}

impl Splice {
    /// Sends a refusal now if the server's stream is between packets,
    /// else after its current packet.
    async fn send(&mut self, job: &Job, refusal: Bytes) {
        if self.cuts.at_boundary() {
            let _ = job.agent.data(job.id, refusal).await;
        } else {
            self.waiting.push(refusal);
        }
    }

    /// The server's `data` to the agent, refusals slipped in at the
    /// first packet ends.
    async fn pass(&mut self, job: &Job, data: Bytes) -> Result<(), String> {
        let pieces = self.cuts.cut(data).map_err(|e| format!("sftp: {e}"))?;
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.into_iter().enumerate() {
            let _ = job.agent.data(job.id, piece).await;
            if i < last || self.cuts.at_boundary() {
                for r in std::mem::take(&mut self.waiting) {
                    let _ = job.agent.data(job.id, r).await;
                }
            }
        }
        Ok(())
    }
}

/// Output to the agent: recorded (masked), watched (sftp), then sent.
async fn deliver(
    job: &Job,
    watch: &Mutex<Watch>,
    splice: &tokio::sync::Mutex<Splice>,
    data: Bytes,
    ext: Option<u32>,
) -> Result<(), String> {
    let at = job.gw.session.elapsed_us();
    let data = match (watch.lock(), ext) {
        (Ok(mut w), None) => match w.git.as_mut() {
            Some(splice) => Bytes::from(splice.feed(&data).map_err(|e| format!("git: {e}"))?),
            None => data,
        },
        _ => data,
    };
    let (chunks, ops, failed, sftp) = match watch.lock() {
        Ok(mut w) => {
            let (ops, failed) = match w.sftp.as_mut() {
                Some(s) if ext.is_none() => (s.from_server(&data), s.failure()),
                _ => (Vec::new(), None),
            };
            let sftp = w.sftp.is_some();
            (
                w.recording.output(at, &data, ext.is_some()),
                ops,
                failed,
                sftp,
            )
        }
        Err(_) => (Vec::new(), Vec::new(), None, false),
    };
    record_io(&job.gw, chunks).await;
    record_sftp(&job.gw, ops).await;
    if let Some(why) = failed {
        return Err(format!("sftp: {why}"));
    }
    job.gw.counters.add_to_agent(data.len() as u64);
    match ext {
        None if sftp => splice.lock().await.pass(job, data).await?,
        None => {
            let _ = job.agent.data(job.id, data).await;
        }
        Some(ext) => {
            let _ = job.agent.extended_data(job.id, ext, data).await;
        }
    }
    Ok(())
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

//! `blastgate daemon`: wires interception, proxy, control socket and spool
//! together, and owns the shutdown order.
//!
//! Start-up binds every socket before touching the kernel, so a daemon that
//! cannot serve never installs a redirect. Shutdown stops accepting, lets
//! sessions finish within the grace period, cuts the rest, records, flushes
//! the spool, and — only with `--detach-on-exit` — removes the redirect.
//! Without it the pinned programs keep redirecting agents to the closed
//! port, so a stopped or crashed daemon leaves agents refused, never
//! unguarded.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    approvals::{Broker, Notifier},
    config::Config,
    control::{self, proto::Status, server::ControlContext},
    intercept::{self, Interceptor},
    policy::Engine,
    protocols::gateway::Services,
    proxy::{self, ProxyContext, Routes},
    records::{recovery, spool, Event, EventKind, Verdict},
    Error,
};

pub struct Options {
    pub config_path: PathBuf,
    /// Remove the programs and pins on exit (tests, trials).
    pub detach_on_exit: bool,
    /// Exit (as on SIGTERM) after this long: a safety net for tests.
    pub deadline: Option<Duration>,
}

const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// The policies the daemon enforces: the configured directory's, or with
/// no `[policy]` the ones shipped in the binary. An invalid directory stops
/// the start: running without the policies an admin wrote is not an option.
fn load_policies(dir: Option<&std::path::Path>) -> Result<Engine, Error> {
    let loaded = match dir {
        Some(dir) => Engine::load(dir),
        None => Engine::builtin(),
    };
    let engine = loaded.map_err(|problems| {
        let text: Vec<String> = problems.iter().map(|d| d.to_string()).collect();
        Error::Invalid(format!(
            "policies {} are invalid:\n{}",
            dir.map_or_else(
                || "built into this binary".into(),
                |d| d.display().to_string()
            ),
            text.join("\n")
        ))
    })?;
    let b = engine.current();
    for w in &b.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(policies = b.meta.len(), from = %engine.origin(), "policies loaded");
    Ok(engine)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let config = Config::load(&opts.config_path)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Invalid(
            "blastgate daemon must run as root (it loads eBPF programs)".into(),
        )
        .into());
    }
    let routes = Routes::build(&config.targets).map_err(Error::Invalid)?;
    let policy = Arc::new(load_policies(config.policy.dir.as_deref())?);
    let unclosed = recovery::unclosed_sessions(&config.records.spool_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the previous run's spool");
        Vec::new()
    });
    let recorder = spool::open(&config.records)?;
    for opened in &unclosed {
        tracing::warn!(session = %opened.session_id, "closing a session the previous daemon left open");
        recorder.record(recovery::interrupted_close(opened)).await?;
    }
    // Style `hash` is keyed by default: a key of the daemon's own, beside
    // its CA keys, unless masking.toml names one.
    crate::policy::masking::load_or_create_default_key(&config.tls.ca_dir)
        .map_err(|e| anyhow::anyhow!("masking key: {e}"))?;
    let ca = local_ca(&config)?;
    // One CA, two certificate caches: the HTTPS one negotiates h2 and
    // http/1.1, the Postgres one nothing.
    let tls = ca
        .clone()
        .map(|ca| Arc::new(crate::tls::LeafCache::new(ca, Vec::new())));
    let https = ca.map(|ca| {
        Arc::new(crate::tls::LeafCache::new(
            ca,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ))
    });
    let ssh_ca = ssh_ca(&config)?;
    let stop = CancellationToken::new();
    let listeners = proxy::bind(&config.proxy.listen).await?;
    let dns_sockets = crate::dns::listener::bind(config.dns.listen.port())
        .await
        .map_err(|e| Error::io("DNS listener", e))?;
    let egress = Arc::new(crate::egress::Egress::from_config(&config).map_err(Error::Invalid)?);
    let resolvable = crate::egress::resolvable_names(&config).map_err(Error::Invalid)?;
    let control_listener = control::server::bind(&config.control.socket)?;
    let jobs_listener =
        crate::jobs::server::bind(&config.jobs.socket_path(&config.control.socket))?;
    if let Some(addr) = config.metrics.listen {
        crate::metrics::serve(addr, stop.clone()).await?;
    }

    let log_level = if tracing::level_filters::LevelFilter::current()
        >= tracing::level_filters::LevelFilter::DEBUG
    {
        aya_log::Level::Debug
    } else {
        aya_log::Level::Info
    } as u8;
    let mut interceptor = match Interceptor::start(&config, log_level) {
        Ok(i) => i,
        Err(e) => {
            // A partial attach already redirects agents to a port nobody
            // serves (fail closed). Tests ask for a clean slate instead.
            if opts.detach_on_exit {
                let _ = intercept::uninstall(&config.bpf.pin_dir);
            }
            return Err(e.into());
        }
    };
    spawn_kernel_logs(&mut interceptor);
    spawn_pending_decisions(&mut interceptor);
    crate::metrics::watch_kernel(interceptor.maps.clone());
    for d in &interceptor.degraded {
        tracing::warn!("degraded: {d}");
    }

    // Worked out again at each `blastgate status`: a policy reload can
    // weaken enforcement long after the start.
    let weakened: crate::control::server::Weakened = {
        let (config, policy) = (config.clone(), policy.clone());
        let degraded = interceptor.degraded.clone();
        Arc::new(move || {
            let list = crate::config::weakened::list(&config, &policy, &degraded);
            crate::metrics::get()
                .weakened_settings
                .set(i64::try_from(list.len()).unwrap_or(i64::MAX));
            list
        })
    };
    for w in weakened() {
        tracing::warn!("weakened: {w}");
    }

    let hard_stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    let approvals = Broker::new(
        Duration::from_millis(config.approvals.timeout_ms),
        recorder.clone(),
        Notifier::start(
            config.approvals.webhooks.clone(),
            config.console.as_ref().map(|c| c.public_url()),
        ),
    );
    let resolver = Arc::new(crate::dns::Resolver::new(
        config.dns.clone(),
        resolvable,
        config.egress.mode,
        recorder.clone(),
    ));
    if resolver.upstreams().is_empty() {
        tracing::warn!(
            "no upstream DNS resolvers (dns.upstreams is empty and the host names none): \
             agents' lookups of allowed names fail"
        );
    }
    let runners = config
        .jobs
        .runner_uids(&config.enrolled_uids())
        .map_err(Error::Invalid)?;
    let jobs = Arc::new(crate::jobs::Jobs::load(
        config.jobs.require(),
        runners,
        &config.jobs.state_path(&config.records.spool_dir),
    ));
    let callers = Arc::new(
        crate::dns::listener::Callers::new(
            interceptor.maps.clone(),
            interceptor.agents.clone(),
            Default::default(),
            jobs.clone(),
        )
        .map_err(|e| Error::io("sock_diag socket for the DNS resolver", e))?,
    );
    // Tracked: its last summary is written before the daemon stops.
    tracker.spawn(resolver.clone().summarise(stop.clone()));
    tokio::spawn(resolver.clone().follow_targets(
        crate::egress::target_names(&config).map_err(Error::Invalid)?,
        stop.clone(),
    ));
    for sock in dns_sockets {
        tokio::spawn(crate::dns::listener::serve_udp(
            sock,
            resolver.clone(),
            callers.clone(),
            stop.clone(),
        ));
    }
    let oidc = Arc::new(crate::identity::oidc::Oidc::new(&config.oidc).map_err(Error::Invalid)?);
    if !oidc.verifier.is_empty() {
        // Keys at start (so the first `blastgate run` does not wait for
        // them), then every `oidc.refresh_secs`.
        let (oidc, stop, every) = (
            oidc.clone(),
            stop.clone(),
            Duration::from_secs(config.oidc.refresh_secs.max(1)),
        );
        tokio::spawn(async move {
            loop {
                oidc.verifier.refresh_all().await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
    let proxy_ctx = Arc::new(ProxyContext {
        services: Arc::new(Services {
            approvals: approvals.clone(),
            recorder: recorder.clone(),
            policy: policy.clone(),
            connect_timeout: Duration::from_millis(config.proxy.connect_timeout_ms),
            tls,
            https,
            ssh_ca,
            ssh_hosts: Default::default(),
            resolver: Some(resolver.clone()),
        }),
        maps: Some(interceptor.maps.clone()),
        agents: Some(interceptor.agents.clone()),
        routes: Arc::new(routes),
        dns: Some(resolver),
        egress,
        listen: config.proxy.listen.clone(),
        hard_stop: hard_stop.clone(),
        processes: Default::default(),
        oidc: oidc.clone(),
        jobs: jobs.clone(),
    });
    if let Some(ch) = &config.clickhouse {
        let shipper = crate::records::clickhouse::shipper::Shipper {
            cfg: ch.clone(),
            spool_dir: config.records.spool_dir.clone(),
            batch: ch.batch.max(1),
            warn_bytes: config.records.max_spool_bytes,
        };
        tokio::spawn(shipper.run(stop.clone()));
    } else {
        tracing::warn!("no [clickhouse] configured: events stay in the local spool");
    }
    if let Err(e) = crate::policy::watch(policy.clone(), recorder.clone(), stop.clone()) {
        tracing::error!(error = %e, dir = %policy.origin(), "cannot watch the policy directory; changes need a restart");
    }
    if let Some(console) = &config.console {
        let tls =
            crate::console::server_tls(console, &config.tls.ca_dir).map_err(Error::Invalid)?;
        crate::console::start(
            console.clone(),
            tls,
            approvals.clone(),
            recorder.clone(),
            config.clickhouse.clone(),
            stop.clone(),
        )
        .await?;
    }
    let control_ctx = Arc::new(ControlContext {
        approvals: approvals.clone(),
        maps: interceptor.maps.clone(),
        agents: interceptor.agents.clone(),
        oidc: oidc.clone(),
        recorder: recorder.clone(),
        status: Status {
            daemon_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pin_dir: interceptor.pin_dir.clone(),
            cgroup_root: interceptor.cgroup_root.clone(),
            attached: interceptor.attached.clone(),
            degraded: interceptor.degraded.clone(),
            alarms: Vec::new(),
            labelled_processes: 0,
            agents: Vec::new(),
            listen: config.proxy.listen.clone(),
            targets: config.targets.len(),
            spool_dir: config.records.spool_dir.clone(),
            counters: Vec::new(),
            policies: policy.origin(),
            weakened: Vec::new(),
        },
        weakened,
    });
    let jobs_ctx = Arc::new(crate::jobs::server::JobsContext {
        jobs,
        oidc: oidc.clone(),
        maps: interceptor.maps.clone(),
        agents: interceptor.agents.clone(),
        recorder: recorder.clone(),
        stop: stop.clone(),
    });
    crate::jobs::server::watch_live(&jobs_ctx);
    tokio::spawn(crate::jobs::server::serve(jobs_listener, jobs_ctx));
    tokio::spawn(control::server::serve(
        control_listener,
        control_ctx,
        stop.clone(),
    ));
    let session_threads = Arc::new(proxy::SessionThreads::start(config.proxy.session_threads)?);
    proxy::serve(
        listeners,
        proxy_ctx,
        session_threads.clone(),
        config.proxy.max_connections,
        stop.clone(),
        tracker.clone(),
    );

    let pin_dir = interceptor.pin_dir.clone();
    let attached = interceptor.attached.len();
    let degraded = interceptor.degraded.join(", ");
    let interceptor = Arc::new(std::sync::Mutex::new(interceptor));
    {
        let interceptor = interceptor.clone();
        let config = config.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RESCAN_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
                let i = interceptor.clone();
                let c = config.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    i.lock().unwrap_or_else(|p| p.into_inner()).rescan(&c)
                })
                .await;
            }
        });
    }

    let started = format!(
        "daemon started: {attached} programs attached, proxy on {:?}{}",
        config.proxy.listen,
        if degraded.is_empty() {
            String::new()
        } else {
            format!(", degraded: {degraded}")
        }
    );
    tracing::info!("{started}");
    recorder
        .record(Event::daemon(
            EventKind::DaemonStarted,
            Verdict::Allow,
            started,
        ))
        .await?;

    wait_for_stop(opts.deadline).await?;
    tracing::info!(
        "stopping: no new connections; in-flight sessions have {} ms",
        config.proxy.shutdown_grace_ms
    );
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(
        Duration::from_millis(config.proxy.shutdown_grace_ms),
        tracker.wait(),
    )
    .await
    .is_err()
    {
        hard_stop.cancel();
        tracker.wait().await;
    }
    // Every session has ended: their threads can go.
    let threads = session_threads.clone();
    let _ = tokio::task::spawn_blocking(move || threads.stop()).await;

    let how = if opts.detach_on_exit {
        match intercept::uninstall(&pin_dir) {
            Ok(_) => "daemon stopped; programs detached (--detach-on-exit)".to_string(),
            Err(e) => format!("daemon stopped; detaching failed: {e}"),
        }
    } else {
        "daemon stopped; redirect stays pinned: agent connections are refused until it restarts"
            .to_string()
    };
    tracing::info!("{how}");
    recorder
        .record(Event::daemon(EventKind::DaemonStopped, Verdict::Allow, how))
        .await?;
    recorder.flush().await?;
    drop(interceptor);
    Ok(())
}

async fn wait_for_stop(deadline: Option<Duration>) -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = deadline => tracing::warn!("deadline reached"),
    }
    Ok(())
}

/// Decides each process the kernel holds pending (an `[[enrol.scripts]]`
/// interpreter's exec) as soon as the kernel announces it: until then the
/// process is refused every connection.
fn spawn_pending_decisions(interceptor: &mut Interceptor) {
    let Some(ring) = interceptor.take_pending_events() else {
        tracing::warn!("no pending-process events: script enrolment is decided by the rescan only");
        return;
    };
    interceptor.decide_pending();
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as
    // the AsyncFd owns the ring buffer.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "pending-process events unavailable; the rescan decides");
            return;
        }
    };
    let maps = interceptor.maps.clone();
    let pending = interceptor.pending.clone();
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let mut pids = Vec::new();
            while let Some(item) = guard.get_inner_mut().next() {
                if let Some(b) = item.get(..4) {
                    pids.push(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
            }
            guard.clear_ready();
            let mut decider = pending.lock().unwrap_or_else(|p| p.into_inner());
            for pid in pids {
                decider.decide(&maps, pid);
            }
        }
    });
}

/// Forwards aya-log records from the kernel programs into tracing.
fn spawn_kernel_logs(interceptor: &mut Interceptor) {
    let logger = match aya_log::EbpfLogger::init(interceptor.ebpf_mut()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "kernel program logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as
    // long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel program logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// The local CA, when a target's gateway can terminate TLS. A CA that
/// exists but cannot be loaded is an error: hosts may already trust it,
/// and a new one would silently break them.
fn local_ca(config: &Config) -> anyhow::Result<Option<Arc<crate::tls::LocalCa>>> {
    use crate::config::Protocol::{Https, Postgres};
    if !serves(config, Postgres) && !serves(config, Https) {
        return Ok(None);
    }
    let ca = crate::tls::LocalCa::load_or_create(&config.tls.ca_dir)
        .map_err(|e| anyhow::anyhow!("local CA in {}: {e}", config.tls.ca_dir.display()))?;
    // What `blastgate run` points agents at.
    crate::tls::trust::write_bundle(&ca, &config.tls.ca_dir)
        .map_err(|e| anyhow::anyhow!("trust bundle in {}: {e}", config.tls.ca_dir.display()))?;
    Ok(Some(Arc::new(ca)))
}

/// The SSH CA, when a target is an SSH one. Like the local CA, an existing
/// one that cannot be loaded stops the daemon.
fn ssh_ca(config: &Config) -> anyhow::Result<Option<Arc<crate::tls::ssh_ca::SshCa>>> {
    if !serves(config, crate::config::Protocol::Ssh) {
        return Ok(None);
    }
    let ca = crate::tls::ssh_ca::SshCa::load_or_create(&config.tls.ca_dir)
        .map_err(|e| anyhow::anyhow!("SSH CA in {}: {e}", config.tls.ca_dir.display()))?;
    Ok(Some(Arc::new(ca)))
}

fn serves(config: &Config, protocol: crate::config::Protocol) -> bool {
    config.targets.iter().any(|t| t.protocol == protocol)
}

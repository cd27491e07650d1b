//! The kernel side of interception, seen from userspace: load and attach
//! the eBPF programs, keep their pinned state, label agents, and hand the
//! proxy the identity of each redirected connection.

pub mod agents;
pub mod btf;
pub mod enrol;
pub mod fast;
pub mod kernel;
pub mod loader;
pub mod maps;
mod object;
pub mod scripts;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use blastgate_common::{map, setting};

pub use self::{agents::AgentRegistry, loader::Attached, maps::KernelMaps};
use crate::{config::Config, identity::procfs, Error};

/// The running interception: programs attached, maps open.
pub struct Interceptor {
    /// Keeps the programs loaded and feeds aya-log.
    ebpf: Ebpf,
    pub maps: Arc<KernelMaps>,
    pub agents: Arc<AgentRegistry>,
    pub attached: Vec<Attached>,
    pub degraded: Vec<String>,
    pub pin_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub enrolment: enrol::Resolved,
    /// Decisions on processes held pending by `[[enrol.scripts]]` rules,
    /// shared by the rescan and the kernel-event task.
    pub pending: Arc<std::sync::Mutex<scripts::Decider>>,
    /// The kernel's pending-process events, until the daemon takes them.
    pending_events: Option<RingBuf<MapData>>,
    /// Alarms already logged, so each new one is logged once.
    alarms_logged: Vec<String>,
}

impl Interceptor {
    /// Loads, configures and attaches everything. Maps pinned by an earlier
    /// daemon (labels above all) are reused; its links are replaced.
    pub fn start(config: &Config, log_level: u8) -> Result<Interceptor, Error> {
        let pin_dir = config.bpf.pin_dir.clone();
        let cgroup_root = match &config.bpf.cgroup_root {
            Some(p) => p.clone(),
            None => loader::find_cgroup2_root()?,
        };
        kernel::check_minimum()?;
        loader::ensure_bpffs(&pin_dir)?;
        let btf = btf::Btf::from_sys_fs()?;
        kernel::check_lineage_hooks(&btf)?;
        let (mut ebpf, features) = loader::load(&pin_dir, &btf, log_level, config.bpf.max_labels)?;
        // Before sockops is attached, so the agent sockets it adds get the program.
        let mut fast_degraded = None;
        let attached_fast = if config.bpf.tcp_fast_path {
            loader::attach_fast(&mut ebpf).map(Some)
        } else {
            Ok(None)
        };
        let fast = match attached_fast {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "TCP passthrough fast path unavailable; relaying in userspace");
                fast_degraded = Some(format!("tcp passthrough fast path off: {e}"));
                None
            }
        };
        let maps = Arc::new(KernelMaps::from_ebpf(&mut ebpf, fast)?);
        match maps.labels_capacity() {
            Some(n) if n == config.bpf.max_labels => {}
            Some(n) => {
                return Err(Error::Invalid(format!(
                    "bpf.max_labels is {} but the label map pinned in {} holds {n}: set \
                     max_labels = {n}, or run `blastgate uninstall` first (running agents lose \
                     their labels and must be restarted)",
                    config.bpf.max_labels,
                    pin_dir.display()
                )))
            }
            None => return Err(Error::Kernel("cannot read the label map's size".into())),
        }
        match maps.settings_capacity() {
            Some(n) if n == setting::COUNT => {}
            n => {
                return Err(Error::Invalid(format!(
                    "the settings map pinned in {} holds {} slots where this blastgate needs {}: \
                     it was pinned by another version; run `blastgate uninstall` first",
                    pin_dir.display(),
                    n.map_or("an unknown number of".into(), |n| n.to_string()),
                    setting::COUNT
                )))
            }
        }
        let agents = Arc::new(AgentRegistry::new(maps.clone()));

        // Settings first: until READY is set the hooks refuse agents, so a
        // half-configured redirect can never send them anywhere else.
        let daemon = std::process::id();
        maps.unlabel(daemon);
        let port = config.proxy_port().map_err(Error::Invalid)?;
        maps.write_setting(setting::PROXY_IP4, u32::from_ne_bytes([127, 0, 0, 1]))?;
        maps.write_setting(setting::PROXY_PORT, u32::from(port))?;
        // The daemon is named by pid *and* start time, so a process that
        // later reuses the pid of a dead daemon is not exempt.
        let start = procfs::stat_of(daemon)
            .ok_or_else(|| Error::Kernel("cannot read /proc/self/stat".into()))?
            .start_time;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks_per_sec <= 0 {
            return Err(Error::Kernel("sysconf(_SC_CLK_TCK) failed".into()));
        }
        maps.write_setting(
            setting::NSEC_PER_TICK,
            (1_000_000_000 / ticks_per_sec) as u32,
        )?;
        maps.write_setting(setting::DAEMON_START_LO, start as u32)?;
        maps.write_setting(setting::DAEMON_START_HI, (start >> 32) as u32)?;
        maps.write_setting(setting::DAEMON_TGID, daemon)?;
        maps.write_setting(setting::FAST_PATH, u32::from(maps.fast().is_some()))?;
        maps.write_setting(setting::DNS_PORT, u32::from(config.dns.listen.port()))?;
        let enrolment = enrol::resolve(&config.enrol, &cgroup_root, &agents)?;
        enrol::refuse_rules_matching_daemon(&enrolment, &cgroup_root)?;
        maps.set_enrolment(
            &enrolment.uids,
            &enrolment.cgroups,
            &enrolment.exes,
            &enrolment.interpreters,
        )?;
        maps.set_enrol_alarms(enrolment.unreadable.clone());
        maps.write_setting(setting::READY, 1)?;

        let exec_required = !config.enrol.exes.is_empty() || !config.enrol.scripts.is_empty();
        let (attached, mut degraded) = loader::attach_all(
            &mut ebpf,
            &pin_dir,
            &cgroup_root,
            &btf,
            features,
            exec_required,
        )?;
        degraded.extend(fast_degraded);
        let pending_events = ebpf
            .take_map(map::PENDING_EVENTS)
            .map(RingBuf::try_from)
            .transpose()
            .map_err(|e| Error::Kernel(format!("map {}: {e}", map::PENDING_EVENTS)))?;
        let found = enrol::scan(&enrolment, &agents, daemon);
        if found > 0 {
            tracing::info!(
                processes = found,
                "labelled running processes matching enrolment rules"
            );
        }
        Ok(Interceptor {
            ebpf,
            maps,
            agents,
            attached,
            degraded,
            pin_dir,
            cgroup_root,
            pending: Arc::new(std::sync::Mutex::new(scripts::Decider::new(
                enrolment.scripts.clone(),
            ))),
            enrolment,
            pending_events,
            alarms_logged: Vec::new(),
        })
    }

    /// The ring buffer on which the kernel announces pending processes.
    pub fn take_pending_events(&mut self) -> Option<RingBuf<MapData>> {
        self.pending_events.take()
    }

    /// The object, for aya-log.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Re-applies enrolment to running processes and forgets dead ones.
    pub fn rescan(&mut self, config: &Config) {
        match enrol::resolve(&config.enrol, &self.cgroup_root, &self.agents) {
            Ok(r) => {
                if let Err(e) =
                    self.maps
                        .set_enrolment(&r.uids, &r.cgroups, &r.exes, &r.interpreters)
                {
                    tracing::error!(error = %e, "updating enrolment maps");
                }
                self.maps.set_enrol_alarms(r.unreadable.clone());
                self.enrolment = r;
            }
            Err(e) => tracing::error!(error = %e, "resolving enrolment rules"),
        }
        enrol::scan(&self.enrolment, &self.agents, std::process::id());
        self.decide_pending();
        enrol::sweep(&self.agents);
        let alarms = self.maps.alarms();
        for a in alarms.iter().filter(|a| !self.alarms_logged.contains(a)) {
            tracing::error!("ALARM: {a}");
        }
        self.alarms_logged = alarms;
    }

    /// Decides every process the kernel holds pending.
    pub fn decide_pending(&self) {
        let mut decider = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        decider.rules = self.enrolment.scripts.clone();
        decider.sweep(&self.maps);
    }
}

/// Is `addr` one of the proxy's own listeners (a loop)?
pub fn is_proxy_addr(listen: &[SocketAddr], addr: SocketAddr) -> bool {
    let norm = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    let addr = norm(addr);
    listen.iter().any(|l| norm(*l) == addr)
}

/// Removes all pinned state (links first, so the redirect stops at once).
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    loader::uninstall(pin_dir)
}

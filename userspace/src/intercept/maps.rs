//! Typed access to the kernel programs' maps.
//!
//! Each map sits behind its own mutex: lookups are single syscalls, so the
//! lock is held for microseconds, and the proxy's per-connection lookup
//! never waits on the control socket's label writes.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Mutex,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use blastgate_common::{
    counter, held, map, setting, AgentName, ConnRecord, ExeKey, Label, SockKey, AGENT_NAME_LEN,
};

use crate::Error;

pub struct KernelMaps {
    labels: Mutex<HashMap<MapData, u32, Label>>,
    names: Mutex<HashMap<MapData, u32, AgentName>>,
    by_peer: Mutex<HashMap<MapData, SockKey, ConnRecord>>,
    settings: Mutex<Array<MapData, u32>>,
    dns_callers: Mutex<HashMap<MapData, u64, ConnRecord>>,
    uids: Mutex<HashMap<MapData, u32, u32>>,
    cgroups: Mutex<HashMap<MapData, u64, u32>>,
    exes: Mutex<HashMap<MapData, ExeKey, u32>>,
    held: Mutex<Array<MapData, u32>>,
    /// Processes this daemon marked unstored itself (the kernel counts its own).
    unstored_here: std::sync::atomic::AtomicU64,
    /// Enrolment rules the daemon could not resolve though their file
    /// exists ([`super::enrol::Resolved::unreadable`]).
    enrol_alarms: Mutex<Vec<String>>,
    interpreters: Mutex<HashMap<MapData, ExeKey, u32>>,
    counters: PerCpuArray<MapData, u64>,
    /// The TCP passthrough fast path; `None` when the kernel refused it
    /// (or for `status`, which only reads).
    fast: Option<super::fast::FastPath>,
}

/// A label that could not be stored, said in words an operator can act on
/// when the map is full.
fn label_error(labels: &HashMap<MapData, u32, Label>, tgid: u32, e: aya::maps::MapError) -> Error {
    let full = matches!(
        &e,
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG)
    );
    if full {
        Error::Kernel(format!(
            "the label map is full ({} agent processes, [bpf] max_labels): pid {tgid} \
             cannot be made an agent",
            labels.iter().count()
        ))
    } else {
        map_err(map::LABELS, e)
    }
}

fn map_err(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Kernel(format!("map {name}: {e}"))
}

/// Converts a socket address to the key the kernel programs use.
pub fn sock_key(addr: SocketAddr) -> SockKey {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SockKey {
        addr: ip.octets(),
        port: u32::from(addr.port()),
    }
}

/// Converts a kernel key back, turning `::ffff:a.b.c.d` into plain IPv4.
pub fn sock_addr(key: &SockKey) -> SocketAddr {
    let v6 = std::net::Ipv6Addr::from(key.addr);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, key.port as u16)
}

fn take<T>(maps: &mut StdHashMap<String, Map>, name: &str) -> Result<T, Error>
where
    T: TryFrom<Map>,
    <T as TryFrom<Map>>::Error: std::fmt::Display,
{
    let m = maps
        .remove(name)
        .ok_or_else(|| map_err(name, "missing from the kernel object"))?;
    T::try_from(m).map_err(|e| map_err(name, e))
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(
        ebpf: &mut aya::Ebpf,
        fast: Option<super::fast::FastPath>,
    ) -> Result<KernelMaps, Error> {
        let mut maps = StdHashMap::new();
        for name in [
            map::LABELS,
            map::AGENT_NAMES,
            map::BY_PEER,
            map::SETTINGS,
            map::DNS_CALLERS,
            map::ENROL_UIDS,
            map::ENROL_CGROUPS,
            map::ENROL_EXES,
            map::COUNTERS,
            map::HELD,
            map::ENROL_INTERPRETERS,
        ] {
            if let Some(m) = ebpf.take_map(name) {
                maps.insert(name.to_string(), m);
            }
        }
        let mut k = Self::from_maps(maps)?;
        k.fast = fast;
        Ok(k)
    }

    /// Opens the maps pinned by a (possibly dead) daemon, for `status`.
    pub fn from_pins(maps_dir: &Path) -> Result<KernelMaps, Error> {
        let mut maps = StdHashMap::new();
        for (name, wrap) in [
            (map::LABELS, Map::HashMap as fn(MapData) -> Map),
            (map::AGENT_NAMES, Map::HashMap),
            (map::BY_PEER, Map::LruHashMap),
            (map::SETTINGS, Map::Array),
            (map::DNS_CALLERS, Map::LruHashMap),
            (map::ENROL_UIDS, Map::HashMap),
            (map::ENROL_CGROUPS, Map::HashMap),
            (map::ENROL_EXES, Map::HashMap),
            (map::COUNTERS, Map::PerCpuArray),
            (map::HELD, Map::Array),
            (map::ENROL_INTERPRETERS, Map::HashMap),
        ] {
            let data = MapData::from_pin(maps_dir.join(name)).map_err(|e| map_err(name, e))?;
            maps.insert(name.to_string(), wrap(data));
        }
        Self::from_maps(maps)
    }

    fn from_maps(mut maps: StdHashMap<String, Map>) -> Result<KernelMaps, Error> {
        Ok(KernelMaps {
            labels: Mutex::new(take(&mut maps, map::LABELS)?),
            names: Mutex::new(take(&mut maps, map::AGENT_NAMES)?),
            by_peer: Mutex::new(take(&mut maps, map::BY_PEER)?),
            settings: Mutex::new(take(&mut maps, map::SETTINGS)?),
            dns_callers: Mutex::new(take(&mut maps, map::DNS_CALLERS)?),
            uids: Mutex::new(take(&mut maps, map::ENROL_UIDS)?),
            cgroups: Mutex::new(take(&mut maps, map::ENROL_CGROUPS)?),
            exes: Mutex::new(take(&mut maps, map::ENROL_EXES)?),
            held: Mutex::new(take(&mut maps, map::HELD)?),
            unstored_here: Default::default(),
            enrol_alarms: Mutex::default(),
            interpreters: Mutex::new(take(&mut maps, map::ENROL_INTERPRETERS)?),
            counters: take(&mut maps, map::COUNTERS)?,
            fast: None,
        })
    }

    /// The TCP passthrough fast path, if the kernel took it.
    pub fn fast(&self) -> Option<&super::fast::FastPath> {
        self.fast.as_ref()
    }

    /// Takes the record of the agent connection whose client end is `peer`.
    pub fn take_conn(&self, peer: SocketAddr) -> Option<ConnRecord> {
        let key = sock_key(peer);
        let mut m = lock(&self.by_peer);
        let rec = m.get(&key, 0).ok()?;
        // Removal failing only means the LRU already evicted it.
        let _ = m.remove(&key);
        Some(rec)
    }

    pub fn label(&self, tgid: u32, label: Label) -> Result<(), Error> {
        let mut labels = lock(&self.labels);
        labels
            .insert(tgid, label, 0)
            .map_err(|e| label_error(&labels, tgid, e))
    }

    /// Labels `tgid` unless it already has a label (kept, and `false`
    /// returned): an agent's identity is fixed when its tree starts.
    pub fn label_new(&self, tgid: u32, label: Label) -> Result<bool, Error> {
        const BPF_NOEXIST: u64 = 1;
        let mut labels = lock(&self.labels);
        match labels.insert(tgid, label, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            Err(e) => Err(label_error(&labels, tgid, e)),
        }
    }

    /// Labels `tgid`, or, if the label map is full, marks it as an agent
    /// without a label, which the kernel refuses every connection (the
    /// same fallback the kernel programs use). Returns whether the label
    /// was stored.
    pub fn label_or_refuse(&self, tgid: u32, label: Label) -> Result<bool, Error> {
        if self.label(tgid, label).is_ok() {
            return Ok(true);
        }
        self.set_held(tgid, held::UNSTORED)?;
        self.unstored_here
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            pid = tgid,
            "ALARM: the label map is full; pid {tgid} is refused every connection"
        );
        Ok(false)
    }

    /// The hold state of `tgid` (`blastgate_common::held`; 0: not held).
    pub fn held(&self, tgid: u32) -> u32 {
        lock(&self.held).get(&tgid, 0).unwrap_or(0)
    }

    pub fn set_held(&self, tgid: u32, state: u32) -> Result<(), Error> {
        lock(&self.held)
            .set(tgid, state, 0)
            .map_err(|e| map_err(map::HELD, e))
    }

    pub fn label_of(&self, tgid: u32) -> Option<Label> {
        lock(&self.labels).get(&tgid, 0).ok()
    }

    pub fn unlabel(&self, tgid: u32) {
        let _ = lock(&self.labels).remove(&tgid);
    }

    pub fn labelled(&self) -> Vec<(u32, Label)> {
        lock(&self.labels).iter().filter_map(Result::ok).collect()
    }

    pub fn set_agent_name(&self, id: u32, name: &str) -> Result<(), Error> {
        let mut bytes = [0u8; AGENT_NAME_LEN];
        let n = name.len().min(AGENT_NAME_LEN);
        bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
        lock(&self.names)
            .insert(id, AgentName { bytes }, 0)
            .map_err(|e| map_err(map::AGENT_NAMES, e))
    }

    pub fn agent_names(&self) -> StdHashMap<u32, String> {
        lock(&self.names)
            .iter()
            .filter_map(Result::ok)
            .map(|(id, n)| {
                let end = n
                    .bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(AGENT_NAME_LEN);
                (id, String::from_utf8_lossy(&n.bytes[..end]).into_owned())
            })
            .collect()
    }

    pub fn write_setting(&self, index: u32, value: u32) -> Result<(), Error> {
        lock(&self.settings)
            .set(index, value, 0)
            .map_err(|e| map_err(map::SETTINGS, e))
    }

    pub fn read_setting(&self, index: u32) -> u32 {
        lock(&self.settings).get(&index, 0).unwrap_or(0)
    }

    /// Makes the map hold exactly `entries`: stale keys from an earlier
    /// config are removed, so a rule deleted from the config stops applying.
    fn replace_all<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
        m: &mut HashMap<MapData, K, V>,
        name: &str,
        entries: &[(K, V)],
    ) -> Result<(), Error> {
        let wanted: HashSet<K> = entries.iter().map(|(k, _)| *k).collect();
        let stale: Vec<K> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for (k, v) in entries {
            m.insert(*k, *v, 0).map_err(|e| map_err(name, e))?;
        }
        Ok(())
    }

    /// Who sent DNS on the agent socket with this cookie, and to which
    /// resolver address. Left in place: the socket may ask again.
    pub fn dns_caller(&self, cookie: u64) -> Option<ConnRecord> {
        lock(&self.dns_callers).get(&cookie, 0).ok()
    }

    pub fn set_enrolment(
        &self,
        uids: &[(u32, u32)],
        cgroups: &[(u64, u32)],
        exes: &[(ExeKey, u32)],
        interpreters: &[(ExeKey, u32)],
    ) -> Result<(), Error> {
        Self::replace_all(&mut lock(&self.uids), map::ENROL_UIDS, uids)?;
        Self::replace_all(&mut lock(&self.cgroups), map::ENROL_CGROUPS, cgroups)?;
        Self::replace_all(&mut lock(&self.exes), map::ENROL_EXES, exes)?;
        Self::replace_all(
            &mut lock(&self.interpreters),
            map::ENROL_INTERPRETERS,
            interpreters,
        )
    }

    /// Sums a per-CPU counter.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        [
            ("redirected", counter::REDIRECTED),
            ("udp_denied", counter::UDP_DENIED),
            ("sockets_denied", counter::SOCK_DENIED),
            ("labels_inherited", counter::LABELS_INHERITED),
            ("packet_sockets_killed", counter::PACKET_KILLED),
            ("labels_dropped", counter::LABELS_DROPPED),
            ("proxy_port_binds_denied", counter::BIND_DENIED),
            ("labels_unstored", counter::LABELS_UNSTORED),
            ("local_passed", counter::LOCAL_PASSED),
        ]
        .into_iter()
        .map(|(n, i)| (n, self.counter(i)))
        .collect()
    }

    /// How many labels the kernel's label map can hold (as created, which
    /// for a map pinned by an earlier daemon may differ from the config).
    pub fn labels_capacity(&self) -> Option<u32> {
        use aya::maps::IterableMap;
        let labels = lock(&self.labels);
        labels.map().info().ok().map(|i| i.max_entries())
    }

    pub fn settings_capacity(&self) -> Option<u32> {
        use aya::maps::IterableMap;
        let settings = lock(&self.settings);
        settings.map().info().ok().map(|i| i.max_entries())
    }

    /// Alarms for `blastgate status` and the daemon log: states in which
    /// the kernel is refusing agent processes it could not track.
    pub fn alarms(&self) -> Vec<String> {
        let mut alarms = lock(&self.enrol_alarms).clone();
        let unstored = self.counter(counter::LABELS_UNSTORED)
            + self
                .unstored_here
                .load(std::sync::atomic::Ordering::Relaxed);
        if unstored == 0 {
            return alarms;
        }
        let cap = self
            .labels_capacity()
            .map_or_else(|| "?".to_string(), |c| c.to_string());
        alarms.push(format!(
            "{unstored} agent processes could not be labelled (label map full at {cap} \
             entries): they and their descendants are refused every connection; raise \
             [bpf] max_labels"
        ));
        alarms
    }

    /// Replaces the enrolment alarms (at every rescan).
    pub fn set_enrol_alarms(&self, alarms: Vec<String>) {
        *lock(&self.enrol_alarms) = alarms;
    }

    /// The daemon pid recorded in the kernel settings (0 if none).
    pub fn daemon_tgid(&self) -> u32 {
        self.read_setting(setting::DAEMON_TGID)
    }
}

/// Locks a mutex, recovering the data if a previous holder panicked: the
/// maps themselves live in the kernel and stay consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_normalise_v4_mapped() {
        let v4: SocketAddr = "127.0.0.2:5432".parse().unwrap();
        assert_eq!(sock_addr(&sock_key(v4)), v4);
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:5432".parse().unwrap();
        assert_eq!(sock_key(mapped), sock_key(v4));
        let v6: SocketAddr = "[::1]:22".parse().unwrap();
        assert_eq!(sock_addr(&sock_key(v6)), v6);
        assert_eq!(
            sock_key(v4),
            SockKey::v4_mapped([127, 0, 0, 2], 5432),
            "userspace and kernel agree on the key layout"
        );
    }
}

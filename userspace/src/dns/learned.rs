//! What each agent learned from blastgate's resolver: address -> names.
//!
//! Only answers blastgate itself forwarded and read are learned, so an
//! agent cannot teach it a name (its own resolver, /etc/hosts, a forged
//! answer: none reach this table). A name is learned before its answer is
//! sent, so the agent's connection to the address can never come first.
//! Entries stay usable for the TTL, but at least `min_ttl`: a connection
//! is decided once, when it is made, and an expiry never cuts it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::egress::pattern::canonical;

/// Addresses one agent may have learned at once; past it, expired entries
/// are dropped first, then the oldest (its connections are then refused:
/// fail closed).
const MAX_PER_AGENT: usize = 65_536;

#[derive(Default)]
struct AgentNames {
    by_addr: HashMap<IpAddr, Vec<(Arc<str>, Instant)>>,
    entries: usize,
}

pub struct Learned {
    agents: Mutex<HashMap<String, AgentNames>>,
    min_ttl: Duration,
}

impl Learned {
    pub fn new(min_ttl: Duration) -> Learned {
        Learned {
            agents: Mutex::new(HashMap::new()),
            min_ttl,
        }
    }

    /// `agent` resolved `name` (normalised) to these (address, TTL) pairs.
    pub fn learn(&self, agent: &str, name: &str, answers: &[(IpAddr, u32)]) {
        if answers.is_empty() {
            return;
        }
        let now = Instant::now();
        let name: Arc<str> = Arc::from(name);
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let table = agents.entry(agent.to_string()).or_default();
        for &(ip, ttl) in answers {
            let until = now + Duration::from_secs(u64::from(ttl)).max(self.min_ttl);
            let names = table.by_addr.entry(canonical(ip)).or_default();
            match names.iter_mut().find(|(n, _)| *n == name) {
                Some((_, t)) => *t = (*t).max(until),
                None => {
                    names.push((name.clone(), until));
                    table.entries += 1;
                }
            }
        }
        if table.entries > MAX_PER_AGENT {
            prune(table, now);
        }
    }

    /// The names `agent` learned for `ip` that are still usable.
    pub fn names_for(&self, agent: &str, ip: IpAddr) -> Vec<Arc<str>> {
        let now = Instant::now();
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .get(agent)
            .and_then(|t| t.by_addr.get(&canonical(ip)))
            .map(|names| {
                names
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Learned {
    /// The names any agent learned for `ip` that are still usable: a
    /// target named by `hosts` is that target whichever name led an agent
    /// to its address.
    pub fn names_for_any(&self, ip: IpAddr) -> Vec<Arc<str>> {
        let now = Instant::now();
        let ip = canonical(ip);
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<str>> = agents
            .values()
            .filter_map(|t| t.by_addr.get(&ip))
            .flatten()
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Drops expired entries, then the ones closest to expiry, until the table
/// is back under three quarters of its bound.
fn prune(table: &mut AgentNames, now: Instant) {
    for names in table.by_addr.values_mut() {
        names.retain(|(_, until)| *until > now);
    }
    table.by_addr.retain(|_, names| !names.is_empty());
    let mut all: Vec<(Instant, IpAddr, Arc<str>)> = table
        .by_addr
        .iter()
        .flat_map(|(ip, names)| names.iter().map(|(n, t)| (*t, *ip, n.clone())))
        .collect();
    let keep = MAX_PER_AGENT * 3 / 4;
    if all.len() > keep {
        all.sort_by_key(|(t, _, _)| *t);
        for (_, ip, name) in all.drain(..all.len() - keep) {
            if let Some(names) = table.by_addr.get_mut(&ip) {
                names.retain(|(n, _)| *n != name);
            }
        }
        table.by_addr.retain(|_, names| !names.is_empty());
    }
    table.entries = table.by_addr.values().map(Vec::len).sum();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_agent_and_per_address() {
        let l = Learned::new(Duration::from_secs(60));
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        l.learn("ci", "api.test", &[(a, 1)]);
        assert_eq!(&*l.names_for("ci", a)[0], "api.test");
        // v4-mapped is the same address.
        assert_eq!(
            l.names_for("ci", "::ffff:127.0.0.5".parse().unwrap()).len(),
            1
        );
        assert!(l.names_for("other", a).is_empty());
        assert!(l.names_for("ci", "127.0.0.6".parse().unwrap()).is_empty());
        l.learn("ci", "api.test", &[(a, 100)]);
        l.learn("ci", "cdn.test", &[(a, 100)]);
        assert_eq!(l.names_for("ci", a).len(), 2);
    }

    #[test]
    fn entries_expire_after_the_longer_of_ttl_and_the_minimum() {
        let l = Learned::new(Duration::ZERO);
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        l.learn("ci", "gone.test", &[(a, 0)]);
        assert!(l.names_for("ci", a).is_empty());
    }

    #[test]
    fn a_full_table_drops_the_oldest() {
        let l = Learned::new(Duration::from_secs(60));
        for i in 0..(MAX_PER_AGENT as u32 + 1) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.learn("ci", "many.test", &[(ip, i)]);
        }
        let agents = l.agents.lock().unwrap();
        assert!(agents["ci"].entries <= MAX_PER_AGENT * 3 / 4 + 1);
    }
}

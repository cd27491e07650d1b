//! A ClickHouse cluster on loopback: servers of the test's own, each one
//! shard, each listening on HTTP (blastgate, curl) and on the native TCP
//! port (`Distributed` tables reach the other shards there), all reading
//! the same `remote_servers`. Stopped, and their data removed, on drop.
//!
//! The server config and the `[clickhouse]` section come from
//! [`remote_servers_xml`] and [`clickhouse_section`], which README "A
//! ClickHouse cluster" shows verbatim (checked by the cluster test).

use std::path::PathBuf;

use super::{ch_query, ch_try, free_port, OwnClickhouse};

/// The cluster's name in `remote_servers` and in `clickhouse.cluster`.
pub const CLUSTER: &str = "blastgate";

/// A ClickHouse server config naming the cluster: one shard per
/// `(host, native TCP port)`, one replica each.
pub fn remote_servers_xml(shards: &[(&str, u16)]) -> String {
    let mut xml = format!("<clickhouse>\n  <remote_servers>\n    <{CLUSTER}>\n");
    for (host, port) in shards {
        xml += &format!(
            "      <shard><replica><host>{host}</host><port>{port}</port></replica></shard>\n"
        );
    }
    xml += &format!("    </{CLUSTER}>\n  </remote_servers>\n</clickhouse>\n");
    xml
}

/// blastgate's `[clickhouse]` for the cluster: rows go in (and queries go)
/// through `url`, the schema is created on every node of `nodes`.
pub fn clickhouse_section(url: &str, database: &str, nodes: &[String]) -> String {
    let nodes = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[clickhouse]\nurl = \"{url}\"\ndatabase = \"{database}\"\ncluster = \"{CLUSTER}\"\n\
         nodes = [{nodes}]\n"
    )
}

pub struct Cluster {
    /// Dropped (stopped) before `dir` is removed.
    pub shards: Vec<OwnClickhouse>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` servers, one shard each; `None` (a loud skip) without the xtask
    /// binary that runs them.
    pub fn start(n: usize) -> Option<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("blastgate-e2e-cluster")
            .tempdir()
            .expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let shards: Vec<(&str, u16)> = ports.iter().map(|&(_, tcp)| ("127.0.0.1", tcp)).collect();
        let config = dir.path().join("cluster.xml");
        std::fs::write(&config, remote_servers_xml(&shards)).expect("cluster config");
        let mut servers = Vec::new();
        for (i, (http, tcp)) in ports.into_iter().enumerate() {
            let args = vec![
                "--tcp-port".to_string(),
                tcp.to_string(),
                "--config".to_string(),
                config.display().to_string(),
            ];
            servers.push(OwnClickhouse::start_with(
                &dir.path().join(format!("shard{}", i + 1)),
                http,
                args,
            )?);
        }
        Some(Cluster {
            shards: servers,
            dir,
        })
    }

    /// Every node's HTTP URL.
    pub fn urls(&self) -> Vec<String> {
        self.shards.iter().map(OwnClickhouse::url).collect()
    }

    /// SQL on node `i`, which must succeed.
    pub fn query(&self, i: usize, sql: &str) -> String {
        ch_query(&self.shards[i].url(), sql)
    }

    /// SQL on node `i`; `None` if refused.
    pub fn try_query(&self, i: usize, sql: &str) -> Option<String> {
        ch_try(&self.shards[i].url(), sql)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

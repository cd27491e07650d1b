//! The daemon's TOML configuration: types, defaults, and validation whose
//! errors name the file, the line and the problem.

mod console;
mod dns;
mod egress;
mod jobs;
mod oidc;
mod secret;
pub mod weakened;

pub use console::ConsoleConfig;
pub use dns::{DnsConfig, UnknownNames, DEFAULT_DNS_PORT};
pub use egress::{EgressConfig, EgressMode};
pub use jobs::{JobsConfig, RunnerRef};
pub use oidc::{CiProvider, IssuerConfig, OidcConfig, OnExpiry, ATTRIBUTES as OIDC_ATTRIBUTES};

pub use secret::Secret;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/blastgate/blastgate.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/blastgate/control.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/blastgate";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/blastgate/spool";
pub const DEFAULT_PROXY_PORT: u16 = 15001;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub bpf: BpfConfig,
    #[serde(default)]
    pub records: RecordsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub egress: EgressConfig,
    #[serde(default)]
    pub enrol: EnrolConfig,
    #[serde(default)]
    pub oidc: OidcConfig,
    /// CI runner job hooks (`blastgate job start|end`).
    #[serde(default)]
    pub jobs: JobsConfig,
    /// The approvers' web console; absent: none.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Where the spool is shipped. Unset: events stay in the spool.
    #[serde(default)]
    pub clickhouse: Option<ClickhouseConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
}

/// blastgate's local certificate authority, which issues the certificates
/// gateways present to agents (`blastgate ca export` prints it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Holds `ca.pem` and `ca.key` (0600); created on first use.
    #[serde(default = "default_ca_dir")]
    pub ca_dir: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            ca_dir: default_ca_dir(),
        }
    }
}

fn default_ca_dir() -> PathBuf {
    "/var/lib/blastgate/ca".into()
}

/// Prometheus metrics; off unless an address is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. `127.0.0.1:9464`; serves `GET /metrics`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where the proxy listens. The kernel redirects agents' IPv4 and
    /// v4-mapped connects to the 127.0.0.1 entry and native IPv6 connects to
    /// the ::1 entry, on the same port.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long in-flight sessions may run on after SIGTERM before they are cut.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Threads that run sessions, each a single-threaded runtime of its own
    /// (0, the default: one per CPU). A session stays on its thread: no
    /// work stealing, so one statement's round trip wakes one thread.
    #[serde(default)]
    pub session_threads: usize,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PROXY_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), DEFAULT_PROXY_PORT),
    ]
}
fn default_max_connections() -> usize {
    4096
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_shutdown_grace_ms() -> u64 {
    5000
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: default_listen(),
            max_connections: default_max_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            session_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
}

fn default_control_socket() -> PathBuf {
    DEFAULT_CONTROL_SOCKET.into()
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_control_socket(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfConfig {
    /// bpffs directory holding the pinned links and maps.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The cgroup v2 root the hooks attach to; found in /proc/self/mountinfo
    /// when unset.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// Capacity of the kernel's label map: agent processes alive at once.
    /// A process that does not fit is refused every connection (and
    /// `blastgate status` raises an alarm), never left unguarded.
    #[serde(default = "default_max_labels")]
    pub max_labels: u32,
    /// TCP passthrough through the kernel (README "TCP passthrough through
    /// the kernel"). Off by default: on kernels up to at least 6.18 a socket
    /// in a sockmap can return EAGAIN to a *blocking* recv() while another
    /// thread writes on it, which breaks blocking full-duplex clients.
    #[serde(default)]
    pub tcp_fast_path: bool,
}

fn default_pin_dir() -> PathBuf {
    DEFAULT_PIN_DIR.into()
}

fn default_max_labels() -> u32 {
    blastgate_common::MAX_LABELS
}

impl Default for BpfConfig {
    fn default() -> Self {
        BpfConfig {
            pin_dir: default_pin_dir(),
            cgroup_root: None,
            max_labels: default_max_labels(),
            tcp_fast_path: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// A spool segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// While events keep arriving, they are written and fsync'd as one batch
    /// this often: the most a crash can lose, and the bound on fsyncs/s.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Warn when the spool not yet shipped to ClickHouse grows past this.
    #[serde(default = "default_max_spool_bytes")]
    pub max_spool_bytes: u64,
}

fn default_max_spool_bytes() -> u64 {
    10 << 30
}

fn default_spool_dir() -> PathBuf {
    DEFAULT_SPOOL_DIR.into()
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_flush_interval_ms() -> u64 {
    10
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            spool_dir: default_spool_dir(),
            segment_bytes: default_segment_bytes(),
            flush_interval_ms: default_flush_interval_ms(),
            max_spool_bytes: default_max_spool_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory with `blastgate.cedarschema` and `*.cedar` files, watched
    /// and hot-reloaded. Unset: the policies shipped in the binary apply;
    /// there is no allow-all state.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickhouseConfig {
    #[serde(default = "default_ch_url")]
    pub url: String,
    #[serde(default = "default_ch_database")]
    pub database: String,
    #[serde(default = "default_ch_user")]
    pub user: String,
    /// File holding the password (first line); empty or unset: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Events per INSERT.
    #[serde(default = "default_ch_batch")]
    pub batch: usize,
    /// Days replay data (`io`: terminal recordings, response summaries)
    /// is kept; the audit tables keep everything.
    #[serde(default = "default_io_ttl_days")]
    pub io_ttl_days: u32,
    /// A cluster's name in its servers' `remote_servers`: the schema is
    /// then local tables behind `Distributed` ones (README "A ClickHouse
    /// cluster"). Unset: one server.
    #[serde(default)]
    pub cluster: Option<String>,
    /// With `cluster`: the HTTP URL of every node, on each of which the
    /// daemon creates the schema (there is no `ON CLUSTER` without Keeper).
    #[serde(default)]
    pub nodes: Vec<String>,
}

impl ClickhouseConfig {
    /// A single server at `url`, with the defaults for everything else.
    pub fn single(url: &str, database: &str) -> ClickhouseConfig {
        ClickhouseConfig {
            url: url.to_string(),
            database: database.to_string(),
            user: default_ch_user(),
            password_file: None,
            batch: default_ch_batch(),
            io_ttl_days: default_io_ttl_days(),
            cluster: None,
            nodes: Vec::new(),
        }
    }

    pub fn layout(&self) -> crate::records::clickhouse::layout::Layout<'_> {
        use crate::records::clickhouse::layout::Layout;
        self.cluster
            .as_deref()
            .map_or(Layout::Single, Layout::Cluster)
    }

    /// The database and cluster names go into DDL as quoted identifiers.
    fn validate(&self) -> Result<(), String> {
        let identifier = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !identifier(&self.database) {
            return Err(format!(
                "clickhouse.database: {:?} is not a plain name (letters, digits, _ and -)",
                self.database
            ));
        }
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        match &self.cluster {
            None if !self.nodes.is_empty() => Err(
                "clickhouse.nodes is for a cluster: set clickhouse.cluster to its name as well"
                    .into(),
            ),
            None => Ok(()),
            Some(c) if !identifier(c) => Err(format!(
                "clickhouse.cluster: {c:?} is not a plain name (letters, digits, _ and -)"
            )),
            Some(_) if self.nodes.is_empty() => Err(
                "clickhouse.cluster needs clickhouse.nodes: the HTTP URL of every node of the \
                 cluster (the schema is created on each)"
                    .into(),
            ),
            Some(_) => {
                let mut seen = std::collections::HashSet::new();
                for n in &self.nodes {
                    if !http(n) {
                        return Err(format!(
                            "clickhouse.nodes: {n:?} is not an http:// or https:// URL"
                        ));
                    }
                    if !seen.insert(n.trim_end_matches('/')) {
                        return Err(format!("clickhouse.nodes: {n:?} is listed twice"));
                    }
                }
                Ok(())
            }
        }
    }
}

fn default_io_ttl_days() -> u32 {
    30
}

fn default_ch_url() -> String {
    "http://127.0.0.1:8123".into()
}
fn default_ch_database() -> String {
    "blastgate".into()
}
fn default_ch_user() -> String {
    "default".into()
}
fn default_ch_batch() -> usize {
    50_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// How long a held action waits for a decision before it is denied.
    #[serde(default = "default_approval_timeout_ms")]
    pub timeout_ms: u64,
    /// URLs that get a JSON POST (Slack incoming-webhook compatible) when a
    /// request opens and when it is decided.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

fn default_approval_timeout_ms() -> u64 {
    300_000
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            timeout_ms: default_approval_timeout_ms(),
            webhooks: Vec::new(),
        }
    }
}

/// Rules that make processes agents without `blastgate run`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnrolConfig {
    #[serde(default)]
    pub uids: Vec<Rule<u32>>,
    #[serde(default)]
    pub cgroups: Vec<Rule<PathBuf>>,
    #[serde(default)]
    pub exes: Vec<Rule<PathBuf>>,
    /// Agents that are scripts run by an interpreter (`node cli.js`, or a
    /// `#!` script run directly).
    #[serde(default)]
    pub scripts: Vec<ScriptRule>,
}

/// `{ interpreter = "/usr/bin/node", script = "/opt/agent/cli.js", agent = "claude" }`:
/// a process that executes `interpreter` (the file the kernel runs, after
/// symlinks and `#!` lines) with `script` among its arguments (the same
/// file: compared by device and inode, relative paths resolved against the
/// process's working directory) is the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    pub interpreter: PathBuf,
    pub script: PathBuf,
    #[serde(default)]
    pub agent: Option<String>,
}

/// An enrolment rule: a bare value (`1001`) or a table naming the agent
/// (`{ uid = 1001, agent = "ci" }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Rule<T> {
    Bare(T),
    Named {
        #[serde(alias = "uid", alias = "path")]
        value: T,
        agent: String,
    },
}

impl<T: Clone> Rule<T> {
    pub fn value(&self) -> T {
        match self {
            Rule::Bare(v) | Rule::Named { value: v, .. } => v.clone(),
        }
    }

    pub fn agent(&self, default: impl FnOnce(&T) -> String) -> String {
        match self {
            Rule::Bare(v) => default(v),
            Rule::Named { agent, .. } => agent.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Postgres,
    Ssh,
    /// Plain HTTP API (`[targets.http]`).
    Http,
    /// HTTPS API, terminated with the local CA (`[targets.http]`).
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub protocol: Protocol,
    /// `ip:port` or `host:port` (resolved once at start).
    #[serde(default)]
    pub address: Option<String>,
    /// Destinations by name, followed as their addresses change:
    /// `name:port`, `*.suffix:port` or `cidr:port`. A connection is this
    /// target when the agent resolved a matching name, through blastgate,
    /// to the address it dialled (or the address is in a range).
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where blastgate itself connects; defaults to the address the agent dialled.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Name of the credential this target's handler injects (used by the
    /// protocol gateways; the tcp handler holds none).
    #[serde(default)]
    pub credentials: Option<String>,
    /// Labels policies can test: `env` as `resource.env`, every label as a
    /// tag (`resource.getTag("team")`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// `false` = shadow mode: decide and record, but do not block.
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// Names agents use for this target, put on the certificates gateways
    /// present (default: the target's addresses).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Required for `protocol = "postgres"`.
    #[serde(default)]
    pub postgres: Option<crate::protocols::postgres::PostgresTarget>,
    /// Required for `protocol = "ssh"`.
    #[serde(default)]
    pub ssh: Option<crate::protocols::ssh::SshTarget>,
    /// Required for `protocol = "http"` and `"https"`.
    #[serde(default)]
    pub http: Option<crate::protocols::http::HttpTarget>,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let v4 = self.proxy_port()?;
        if let Some(v6) = self
            .proxy
            .listen
            .iter()
            .find(|a| a.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST))
        {
            if v6.port() != v4 {
                return Err(format!(
                    "proxy.listen: the [::1] listener must use the same port as 127.0.0.1 ({v4}), not {}",
                    v6.port()
                ));
            }
        }
        if self.proxy.max_connections == 0 {
            return Err("proxy.max_connections must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if t.name.is_empty() {
                return Err(format!("targets[{i}]: name is empty"));
            }
            if t.name == "egress" {
                return Err(format!(
                    "targets[{i}]: the name \"egress\" is reserved for egress sessions (policies \
                     and records name them so)"
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("targets[{i}]: duplicate target name {:?}", t.name));
            }
            if t.address.is_none() && t.addresses.is_empty() && t.hosts.is_empty() {
                return Err(format!(
                    "targets[{i}] ({}): needs `address`, `addresses` or `hosts`",
                    t.name
                ));
            }
            for h in t.host_patterns()? {
                if h.port.is_none() {
                    return Err(format!(
                        "targets[{i}] ({}): hosts entry \"{h}\" needs a port",
                        t.name
                    ));
                }
            }
            let at = format!("targets[{i}] ({})", t.name);
            let p = t.protocol;
            protocol_section(
                &at,
                p,
                &[Protocol::Postgres],
                "postgres",
                &t.postgres,
                |s| s.validate(),
            )?;
            protocol_section(&at, p, &[Protocol::Ssh], "ssh", &t.ssh, |s| s.validate())?;
            let web = [Protocol::Http, Protocol::Https];
            protocol_section(&at, p, &web, "http", &t.http, |s| s.validate())?;
        }
        self.dns.validate(self.proxy_port()?)?;
        self.egress.patterns()?;
        self.oidc.validate()?;
        self.jobs.runner_uids(&self.enrolled_uids())?;
        if let Some(c) = &self.console {
            c.validate()?;
        }
        if let Some(c) = &self.clickhouse {
            c.validate()?;
        }
        let (min, max) = (
            blastgate_common::MIN_LABELS,
            blastgate_common::PID_MAX_LIMIT,
        );
        if !(min..=max).contains(&self.bpf.max_labels) {
            return Err(format!(
                "bpf.max_labels: {} is outside {min}..={max} (agent processes alive at once)",
                self.bpf.max_labels
            ));
        }
        for (i, r) in self.enrol.scripts.iter().enumerate() {
            if !r.interpreter.is_absolute() || !r.script.is_absolute() {
                return Err(format!(
                    "enrol.scripts[{i}]: interpreter and script must be absolute paths"
                ));
            }
        }
        for r in &self.enrol.uids {
            if r.value() == 0 {
                return Err(
                    "enrol.uids: uid 0 cannot be enrolled: the daemon runs as root and its own \
                     upstream connections would be redirected into itself"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The uids `[enrol] uids` names.
    pub fn enrolled_uids(&self) -> Vec<u32> {
        self.enrol.uids.iter().map(Rule::value).collect()
    }

    /// The port the kernel redirects agents to: that of the 127.0.0.1 listener.
    pub fn proxy_port(&self) -> Result<u16, String> {
        self.proxy
            .listen
            .iter()
            .find(|a| a.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .map(|a| a.port())
            .ok_or_else(|| {
                "proxy.listen: needs a 127.0.0.1:PORT listener (the kernel redirects agents to it)"
                    .to_string()
            })
    }
}

/// A protocol's own section (`[targets.postgres]`, `[targets.ssh]`): required
/// for that protocol, refused for any other, validated when present.
/// Checks that a target has its protocol's section, validated, and no
/// section of another protocol. `owners` are the protocols `name` serves.
fn protocol_section<T>(
    at: &str,
    protocol: Protocol,
    owners: &[Protocol],
    name: &str,
    section: &Option<T>,
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<(), String> {
    match (owners.contains(&protocol), section) {
        (true, None) => Err(format!(
            "{at}: protocol \"{}\" needs a [targets.{name}] section",
            protocol.as_str()
        )),
        (true, Some(s)) => validate(s).map_err(|e| format!("{at}: {e}")),
        (false, Some(_)) => Err(format!(
            "{at}: [targets.{name}] given for protocol {:?}",
            protocol.as_str()
        )),
        (false, None) => Ok(()),
    }
}

impl TargetConfig {
    /// The target as a policy resource.
    pub fn attrs(&self) -> crate::policy::TargetAttrs {
        crate::policy::TargetAttrs {
            name: self.name.clone(),
            protocol: self.protocol.as_str().to_string(),
            labels: self.labels.clone(),
        }
    }

    /// Every address this target answers on, resolved.
    pub fn host_patterns(&self) -> Result<Vec<crate::egress::pattern::HostPattern>, String> {
        self.hosts
            .iter()
            .map(|h| {
                crate::egress::pattern::HostPattern::parse(h)
                    .map_err(|e| format!("target {}: hosts: {e}", self.name))
            })
            .collect()
    }

    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let mut out = Vec::new();
        for a in self.address.iter().chain(self.addresses.iter()) {
            let resolved = a
                .to_socket_addrs()
                .map_err(|e| format!("target {}: address {a:?}: {e}", self.name))?;
            out.extend(resolved);
        }
        Ok(out)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.proxy.listen.len(), 2);
        assert_eq!(c.proxy_port().unwrap(), DEFAULT_PROXY_PORT);
        assert_eq!(c.control.socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.records.spool_dir, Path::new(DEFAULT_SPOOL_DIR));
        assert_eq!(c.bpf.pin_dir, Path::new(DEFAULT_PIN_DIR));
    }

    #[test]
    fn parse_error_names_file_line_and_key() {
        let text = "[proxy]\nlisten = [\"127.0.0.1:1\"]\n\n[[targets]]\nname = \"a\"\nprotocol = \"tcp\"\naddres = \"127.0.0.2:1\"\n";
        let e = Config::parse(text, Path::new("/etc/bg.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/etc/bg.toml:7:"), "{s}");
        assert!(s.contains("addres"), "{s}");
    }

    #[test]
    fn gateway_sections_are_required_by_their_protocol_only() {
        let target = |protocol: &str, section: &str| {
            format!(
                "[[targets]]\nname = \"t\"\nprotocol = \"{protocol}\"\naddress = \"127.0.0.2:1\"\n{section}"
            )
        };
        let err = |text: String| {
            Config::parse(&text, Path::new("x"))
                .unwrap_err()
                .to_string()
        };
        assert!(err(target("ssh", "")).contains("protocol \"ssh\" needs a [targets.ssh] section"));
        assert!(err(target("postgres", ""))
            .contains("protocol \"postgres\" needs a [targets.postgres] section"));
        let ssh = "[targets.ssh]\nuser = \"deploy\"\nkey_file = \"/k\"\nhost_key = \"ssh-ed25519 AAAA\"\n";
        assert!(err(target("tcp", ssh)).contains("[targets.ssh] given for protocol \"tcp\""));
        assert!(Config::parse(&target("ssh", ssh), Path::new("x")).is_ok());
        let both = format!("{ssh}known_hosts = \"/kh\"\n");
        assert!(err(target("ssh", &both)).contains("exactly one of known_hosts or host_key"));
    }

    #[test]
    fn enrolment_rules_accept_bare_and_named_forms() {
        let c = Config::parse(
            "[enrol]\nuids = [1001, { uid = 1002, agent = \"ci\" }]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.enrol.uids[0].value(), 1001);
        assert_eq!(c.enrol.uids[1].agent(|_| "d".into()), "ci");
    }

    #[test]
    fn root_cannot_be_enrolled() {
        let e = Config::parse("[enrol]\nuids = [0]\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("uid 0"));
    }

    #[test]
    fn a_cluster_needs_its_nodes_and_plain_names() {
        let err = |ch: &str| {
            Config::parse(&format!("[clickhouse]\n{ch}"), Path::new("x"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let nodes = "nodes = [\"http://a:8123\", \"http://b:8123\"]\n";
        let c = Config::parse(
            &format!("[clickhouse]\ncluster = \"fleet\"\n{nodes}"),
            Path::new("x"),
        )
        .expect("valid");
        let ch = c.clickhouse.expect("section");
        assert_eq!(
            ch.layout(),
            crate::records::clickhouse::layout::Layout::Cluster("fleet")
        );
        assert!(err("cluster = \"fleet\"\n").contains("needs clickhouse.nodes"));
        assert!(err(nodes).contains("set clickhouse.cluster"));
        assert!(err(&format!("cluster = \"a`b\"\n{nodes}")).contains("not a plain name"));
        assert!(err("database = \"x; DROP\"\n").contains("clickhouse.database"));
        assert!(err("cluster = \"f\"\nnodes = [\"a:8123\"]\n").contains("not an http"));
        assert!(
            err("cluster = \"f\"\nnodes = [\"http://a\", \"http://a/\"]\n")
                .contains("listed twice")
        );
    }

    #[test]
    fn target_needs_an_address() {
        let e = Config::parse(
            "[[targets]]\nname = \"a\"\nprotocol = \"tcp\"\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("needs `address`"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example shipped beside the binary is valid and documents every section.
    #[test]
    fn shipped_example_config_parses() {
        let text = include_str!("../config/blastgate.example.toml");
        let c = Config::parse(text, Path::new("blastgate.example.toml")).unwrap();
        assert_eq!(c.targets.len(), 2);
        assert!(c.targets[1].ssh.is_some());
        assert_eq!(c.enrol.uids.len(), 1);
        assert_eq!(c.records.flush_interval_ms, 10);
    }
}

//! blastgate: shrinks the blast radius of AI coding agents on the host.
//!
//! Layout, one job per module, in the order a connection meets them:
//!
//! - [`intercept`]: loads the eBPF programs (`ebpf/programs`) that redirect
//!   enrolled agents' connects to the proxy, keeps their pinned state in
//!   bpffs, labels agents, and reads back who made each connection.
//! - [`proxy`]: accepts redirected connections; `proxy::driver` runs each
//!   one's lifecycle (identify → route → connect decision → the protocol's
//!   phases → every task done → closing record) and `proxy::targets` maps
//!   an original destination to a configured target.
//! - [`protocols`]: one gateway per protocol (TCP, PostgreSQL, SSH,
//!   HTTP/HTTPS), each through the same phases.
//! - [`session`]: what the driver and the gateways share about one
//!   session (identity, counters, tasks, errors and whose fault they are).
//! - [`tls`]: the local CA agents are shown, upstream TLS configs.
//! - [`identity`]: the caller (pid, uid, comm, exe, lineage) from the kernel
//!   record and /proc.
//! - [`policy`]: the Cedar decision engine every handler asks, with
//!   validation, golden tests and hot reload.
//! - [`approvals`]: the broker that holds actions for a human decision,
//!   and the webhook notifier.
//! - [`records`]: the audit event, the durable JSON-lines spool, and the
//!   shipper that makes ClickHouse the record of truth.
//! - [`metrics`]: Prometheus figures on an opt-in address.
//! - [`control`]: the daemon's root-only unix socket (label, status, follow).
//! - [`jobs`]: CI runner jobs registered by the runners' hooks (their own
//!   socket), bound to each job's process tree, ended with the job.
//! - [`daemon`]: wires the above together and owns shutdown.
//! - [`commands`]: the CLI subcommands; [`config`]: the TOML config.

pub mod approvals;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod egress;
mod error;
pub mod identity;
pub mod intercept;
pub mod jobs;
pub mod metrics;
pub mod policy;
pub mod protocols;
pub mod proxy;
pub mod records;
pub mod session;
#[doc(hidden)]
pub mod testing;
pub mod tls;

pub use error::Error;

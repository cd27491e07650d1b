//! Prometheus metrics: how far behind the record of truth is, and what the
//! proxy is deciding. Served on an opt-in address ([`serve`]).
//!
//! One process-wide set ([`get`]): the spool, the shipper and the proxy
//! each update their own figures without being handed a registry.

mod server;

use std::sync::{atomic::AtomicU64, Arc, OnceLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use server::serve;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelEventLabel {
    pub event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Bytes of spool segments on disk, shipped or not.
    pub spool_bytes: Gauge,
    pub spool_segments: Gauge,
    /// Age of the oldest event ClickHouse has not acknowledged; 0 when caught up.
    pub shipping_lag_seconds: Gauge<f64, AtomicU64>,
    pub events_recorded: Counter,
    pub events_shipped: Counter,
    pub insert_errors: Counter,
    pub sessions_open: Gauge,
    pub decisions: Family<VerdictLabel, Counter>,
    /// Statements the server completed as something other than what the
    /// PostgreSQL gateway read (each one ended its session).
    pub sql_differentials: Counter,
    /// Settings in force that weaken enforcement (`blastgate status` names
    /// them): alert on anything above zero.
    pub weakened_settings: Gauge,
    /// Injected credentials an upstream sent back, blanked before the agent.
    pub credential_echoes: Counter,
    /// Agent processes whose label did not fit in the kernel's label map
    /// (each is refused every connection): non-zero is an alarm.
    pub labels_unstored: Gauge,
    /// The kernel programs' counters, read at each scrape.
    pub kernel_events: Family<KernelEventLabel, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("blastgate");
        let m = Metrics {
            registry: Registry::default(),
            spool_bytes: Gauge::default(),
            spool_segments: Gauge::default(),
            shipping_lag_seconds: Gauge::default(),
            events_recorded: Counter::default(),
            events_shipped: Counter::default(),
            insert_errors: Counter::default(),
            sessions_open: Gauge::default(),
            decisions: Family::default(),
            sql_differentials: Counter::default(),
            weakened_settings: Gauge::default(),
            credential_echoes: Counter::default(),
            labels_unstored: Gauge::default(),
            kernel_events: Family::default(),
        };
        registry.register(
            "spool_bytes",
            "Bytes of spool segments on disk",
            m.spool_bytes.clone(),
        );
        registry.register(
            "spool_segments",
            "Spool segment files on disk",
            m.spool_segments.clone(),
        );
        registry.register(
            "shipping_lag_seconds",
            "Age of the oldest event ClickHouse has not acknowledged (0 when caught up)",
            m.shipping_lag_seconds.clone(),
        );
        registry.register(
            "events_recorded",
            "Events written to the spool",
            m.events_recorded.clone(),
        );
        registry.register(
            "events_shipped",
            "Events ClickHouse acknowledged",
            m.events_shipped.clone(),
        );
        registry.register(
            "clickhouse_insert_errors",
            "Failed INSERTs to ClickHouse (each is retried)",
            m.insert_errors.clone(),
        );
        registry.register(
            "sessions_open",
            "Agent connections being handled",
            m.sessions_open.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions by verdict (allow, deny, hold, error)",
            m.decisions.clone(),
        );
        registry.register(
            "sql_differentials",
            "Statements the server ran as another command than the gateway read; each ended its session",
            m.sql_differentials.clone(),
        );
        registry.register(
            "weakened_settings",
            "Settings in force that weaken enforcement; `blastgate status` lists them",
            m.weakened_settings.clone(),
        );
        registry.register(
            "credential_echoes",
            "Injected credentials an upstream sent back in a response, blanked before the agent saw them",
            m.credential_echoes.clone(),
        );
        registry.register(
            "labels_unstored",
            "ALARM when non-zero: agent processes whose label did not fit in the kernel's label \
             map ([bpf] max_labels); they and their descendants are refused every connection",
            m.labels_unstored.clone(),
        );
        registry.register(
            "kernel_events",
            "Counters of the kernel programs (redirects, refusals, labels), since the maps were pinned",
            m.kernel_events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Copies the kernel programs' counters into the gauges (at scrape).
    fn refresh_kernel(&self) {
        let Some(maps) = KERNEL.get() else {
            return;
        };
        for (event, v) in maps.counters() {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            self.kernel_events
                .get_or_create(&KernelEventLabel { event })
                .set(v);
            if event == "labels_unstored" {
                self.labels_unstored.set(v);
            }
        }
    }

    pub fn decision(&self, verdict: &'static str) {
        self.decisions
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.refresh_kernel();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The kernel maps whose counters `/metrics` reports (set once by the daemon).
static KERNEL: OnceLock<Arc<crate::intercept::KernelMaps>> = OnceLock::new();

/// Makes `/metrics` report the kernel programs' counters from `maps`.
pub fn watch_kernel(maps: Arc<crate::intercept::KernelMaps>) {
    let _ = KERNEL.set(maps);
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_with_the_prefix() {
        let m = get();
        m.decision("deny");
        m.events_shipped.inc_by(3);
        let text = m.encode();
        for name in [
            "blastgate_spool_bytes",
            "blastgate_shipping_lag_seconds",
            "blastgate_events_shipped_total",
            "blastgate_clickhouse_insert_errors_total",
            "blastgate_sessions_open",
            "blastgate_decisions_total{verdict=\"deny\"}",
            "blastgate_sql_differentials_total",
            "blastgate_labels_unstored",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

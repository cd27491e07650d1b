//! Bytes each way, shared by every task of a session and read by the
//! driver for the closing record.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts that survive errors: a relay that fails half-way has still
/// carried what it carried, and the record needs it most in that case.
#[derive(Debug, Default)]
pub struct Counters {
    pub from_agent: AtomicU64,
    pub to_agent: AtomicU64,
}

impl Counters {
    pub fn add_from_agent(&self, n: u64) {
        self.from_agent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_to_agent(&self, n: u64) {
        self.to_agent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.from_agent.load(Ordering::Relaxed),
            self.to_agent.load(Ordering::Relaxed),
        )
    }
}

//! Per-agent query rate: a token bucket each. Lookups are how data leaves
//! through DNS (one label at a time), so a flood is refused, and refused
//! per agent: one agent's flood never slows another's lookups.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Buckets idle this long are forgotten (they would be full anyway).
const FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one query's token; false when the agent is over its rate.
    pub fn take(&self, agent: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 4096 {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        }
        let (tokens, at) = buckets
            .entry(agent.to_string())
            .or_insert((self.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_agent() {
        let r = RateLimit::new(10, 5);
        let t = Instant::now();
        assert!((0..5).all(|_| r.take("a", t)));
        assert!(!r.take("a", t));
        assert!(r.take("b", t), "another agent has its own bucket");
        assert!(r.take("a", t + Duration::from_millis(100)));
        assert!(!r.take("a", t + Duration::from_millis(100)));
    }
}

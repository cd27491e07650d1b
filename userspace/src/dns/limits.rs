//! Per-agent query rate: a token bucket each. Lookups are how data leaves
//! through DNS (one label at a time), so a flood is refused, and refused
//! per agent: one agent's flood never slows another's lookups.
//!
//! Refusals past the rate are not recorded one by one (a flood would fill
//! the spool): the first in each [`SUMMARY_EVERY`] is, with the number
//! refused since the previous record, and what is left at the end of a
//! flood is written by [`RateLimit::pending`]'s caller. Every refused query
//! is counted in some record.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::identity::Caller;

/// Buckets idle this long are forgotten (they would be full anyway).
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// At most one record of refusals over the rate per agent this often.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refused since the last record of a refusal, not yet recorded.
    unrecorded: u64,
    last_record: Option<Instant>,
    /// Who asked last: the summary's caller.
    caller: Option<Caller>,
}

pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// What becomes of one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Rate {
    Allowed,
    /// Refused, and recorded with `earlier` refusals not recorded before.
    RefusedRecorded {
        earlier: u64,
    },
    /// Refused, counted for the next record.
    RefusedCounted,
}

impl RateLimit {
    pub fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one query's token.
    pub fn take(&self, caller: &Caller, now: Instant) -> Rate {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 4096 {
            buckets.retain(|_, b| now.duration_since(b.at) < FORGET_AFTER || b.unrecorded > 0);
        }
        let b = buckets
            .entry(caller.agent.clone())
            .or_insert_with(|| Bucket {
                tokens: self.burst,
                at: now,
                unrecorded: 0,
                last_record: None,
                caller: None,
            });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Rate::Allowed;
        }
        let due = b
            .last_record
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY);
        if due {
            b.last_record = Some(now);
            let earlier = std::mem::take(&mut b.unrecorded);
            return Rate::RefusedRecorded { earlier };
        }
        b.unrecorded += 1;
        if b.caller.is_none() {
            b.caller = Some(caller.clone());
        }
        Rate::RefusedCounted
    }

    /// Refusals counted and not yet recorded, per agent, whose last record
    /// is at least [`SUMMARY_EVERY`] old: taken, to be recorded now.
    pub fn pending(&self, now: Instant) -> Vec<(Caller, u64)> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .values_mut()
            .filter(|b| {
                b.unrecorded > 0
                    && b.last_record
                        .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
            })
            .filter_map(|b| {
                let caller = b.caller.take()?;
                b.last_record = Some(now);
                Some((caller, std::mem::take(&mut b.unrecorded)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(agent: &str) -> Caller {
        Caller {
            agent: agent.into(),
            ..Caller::default()
        }
    }

    #[test]
    fn a_burst_then_the_rate_per_agent() {
        let r = RateLimit::new(10, 5);
        let t = Instant::now();
        let (a, b) = (caller("a"), caller("b"));
        assert!((0..5).all(|_| r.take(&a, t) == Rate::Allowed));
        assert_eq!(r.take(&a, t), Rate::RefusedRecorded { earlier: 0 });
        assert_eq!(
            r.take(&b, t),
            Rate::Allowed,
            "another agent has its own bucket"
        );
        assert_eq!(r.take(&a, t + Duration::from_millis(100)), Rate::Allowed);
        assert_eq!(
            r.take(&a, t + Duration::from_millis(100)),
            Rate::RefusedCounted
        );
    }

    #[test]
    fn every_refusal_is_counted_in_some_record() {
        let r = RateLimit::new(1, 1);
        let t = Instant::now();
        let a = caller("a");
        assert_eq!(r.take(&a, t), Rate::Allowed);
        let mut recorded = 0u64;
        let mut refused = 0u64;
        for i in 0..5000u64 {
            let now = t + Duration::from_micros(i * 300);
            match r.take(&a, now) {
                Rate::Allowed => {}
                Rate::RefusedRecorded { earlier } => {
                    refused += 1;
                    recorded += 1 + earlier;
                }
                Rate::RefusedCounted => refused += 1,
            }
        }
        let end = t + Duration::from_secs(5);
        recorded += r.pending(end).iter().map(|(_, n)| n).sum::<u64>();
        assert_eq!(recorded, refused);
        assert!(r.pending(end).is_empty());
    }
}

//! Lock-out of repeated login failures, per account name and per source, with exponential
//! back-off. IO-free: every call takes `now`.
//!
//! A key (an account name as typed, known or not, or a source address) may fail
//! `free_failures` times; each failure after that locks it for `base` doubled per further
//! failure, up to `max`. A success clears an account's failures (not its source's: one valid
//! account must not wash a source clean). Failures are forgotten after `forget` without one.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How login failures of one kind of key (account names, or sources) are counted and locked
/// out (`RelayConfig::account_throttle`, `RelayConfig::source_throttle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures allowed before the first lock.
    pub free_failures: u32,
    /// The first lock.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
    /// Failures are forgotten this long after the last one.
    pub forget: Duration,
}

impl ThrottlePolicy {
    /// Per account: 5 failures free, then 1 s, 2 s, 4 s … up to 15 min; forgotten after 1 h.
    pub const ACCOUNT: Self = Self {
        free_failures: 5,
        base: Duration::from_secs(1),
        max: Duration::from_secs(15 * 60),
        forget: Duration::from_secs(3600),
    };
    /// Per source (an IPv4 address or an IPv6 /64, which a NAT shares): 20 failures free, then
    /// the same back-off.
    pub const SOURCE: Self = Self {
        free_failures: 20,
        base: Duration::from_secs(1),
        max: Duration::from_secs(15 * 60),
        forget: Duration::from_secs(3600),
    };
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failures per key.
#[derive(Debug)]
pub(crate) struct Throttle<K> {
    policy: ThrottlePolicy,
    entries: HashMap<K, Entry>,
    /// Most keys kept; beyond that, the expired ones go, then the oldest.
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub(crate) fn new(policy: ThrottlePolicy, capacity: usize) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// How long `key` is still locked at `now` (none if it may try).
    pub(crate) fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let until = entry.locked_until?;
        (until > now).then(|| until - now)
    }

    /// A failure of `key` at `now`; returns the lock it now has (none while failures are free).
    pub(crate) fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            self.make_room(now);
        }
        let policy = self.policy;
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.last) > policy.forget {
            entry.failures = 0;
            entry.locked_until = None;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        let over = entry.failures.checked_sub(policy.free_failures)?;
        if over == 0 {
            return None;
        }
        let lock = policy
            .base
            .checked_mul(1u32.checked_shl(over - 1).unwrap_or(u32::MAX))
            .unwrap_or(policy.max)
            .min(policy.max);
        entry.locked_until = Some(now + lock);
        Some(lock)
    }

    /// A success of `key`: its failures are forgotten.
    pub(crate) fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    fn make_room(&mut self, now: Instant) {
        let forget = self.policy.forget;
        self.entries.retain(|_, e| {
            e.locked_until.is_some_and(|u| u > now)
                || now.saturating_duration_since(e.last) <= forget
        });
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.locked_until.is_some_and(|u| u > now), e.last))
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ThrottlePolicy = ThrottlePolicy {
        free_failures: 3,
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
        forget: Duration::from_secs(100),
    };

    #[test]
    fn locks_double_after_the_free_failures_up_to_the_max() {
        let t0 = Instant::now();
        let mut th = Throttle::new(P, 16);
        let k = "alice".to_string();
        for _ in 0..3 {
            assert_eq!(th.fail(&k, t0), None);
        }
        assert_eq!(th.locked(&k, t0), None);
        assert_eq!(th.fail(&k, t0), Some(Duration::from_secs(1)));
        assert_eq!(th.locked(&k, t0), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(th.locked(&k, t1), None, "the lock ran out");
        assert_eq!(th.fail(&k, t1), Some(Duration::from_secs(2)));
        assert_eq!(th.fail(&k, t1), Some(Duration::from_secs(4)));
        assert_eq!(th.fail(&k, t1), Some(Duration::from_secs(8)));
        assert_eq!(th.fail(&k, t1), Some(Duration::from_secs(10)), "capped");
        for _ in 0..40 {
            assert_eq!(th.fail(&k, t1), Some(Duration::from_secs(10)));
        }
        assert_eq!(
            th.locked(&k, t1 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(th.locked(&"bob".to_string(), t1), None, "per key");
    }

    #[test]
    fn success_clears_and_quiet_time_forgets() {
        let t0 = Instant::now();
        let mut th = Throttle::new(P, 16);
        let k = 7u32;
        for _ in 0..4 {
            th.fail(&k, t0);
        }
        assert!(th.locked(&k, t0).is_some());
        th.clear(&k);
        assert_eq!(th.locked(&k, t0), None);
        for _ in 0..3 {
            assert_eq!(th.fail(&k, t0), None);
        }
        // Long after the last failure, counting starts again.
        let later = t0 + Duration::from_secs(101);
        assert_eq!(th.fail(&k, later), None);
    }

    #[test]
    fn memory_is_bounded_and_locked_keys_are_kept_first() {
        let t0 = Instant::now();
        let mut th = Throttle::new(P, 4);
        for _ in 0..4 {
            th.fail(&0u32, t0);
        }
        for k in 1..50u32 {
            th.fail(&k, t0 + Duration::from_millis(u64::from(k)));
        }
        assert!(th.entries.len() <= 4);
        assert!(th.locked(&0, t0).is_some(), "the locked key stayed");
    }
}

//! How fast one source may start new handshakes: a token bucket per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::{LEVEL_SHARE, Source, sources_of};

/// Units of a token: refill is exact integer arithmetic (one token a second is one unit a
/// nanosecond).
const UNITS: u128 = 1_000_000_000;

/// The rate limit's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateConfig {
    /// New handshakes an idle source may start at once: an IPv4 address or an IPv6 /64 (its
    /// /56 twice as many, its /48 three times). At least 1.
    pub burst: u32,
    /// New handshakes a second a source may start once its burst is spent (/56 twice, /48
    /// three times). At least 1.
    pub per_second: u32,
    /// Buckets tracked at most (a source's /64, /56 and /48 are three): the memory bound.
    /// Sources beyond it share one overflow bucket with the allowance of one source.
    pub max_sources: usize,
}

impl Default for RateConfig {
    /// A burst of 8 and 4 a second per source, 16,384 buckets tracked (about a megabyte).
    fn default() -> Self {
        Self {
            burst: 8,
            per_second: 4,
            max_sources: 16_384,
        }
    }
}

/// A new handshake refused because its source started too many too recently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// How long until the source may start one again, if it starts none meanwhile.
    pub retry_after: Duration,
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the source starts handshakes too fast (retry after {:?})",
            self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// In [`UNITS`] of a token.
    tokens: u128,
    at: Instant,
}

/// Which bucket a level of a source is counted in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Tracked(Source, usize),
    Overflow,
}

/// A token bucket per source, IO-free: the caller passes the time in.
///
/// Each source level has a bucket holding up to `burst × share` tokens and refilled at
/// `per_second × share` a second, where the share is 1 for an IPv4 address or an IPv6 /64, 2
/// for a /56 and 3 for a /48. A new handshake takes a token from every level of its source,
/// and is refused (taking nothing) if any level has none.
///
/// # Memory
///
/// At most [`RateConfig::max_sources`] buckets are tracked. A bucket is forgotten only once it
/// has refilled completely: a full bucket is exactly what a new source gets, so forgetting it
/// changes no decision, and a source cannot reset its own bucket by making the limiter forget
/// it. Such idle buckets are swept at most once per time a bucket takes to refill, so the
/// sweep costs a bounded share of the work.
///
/// When the table is full of busy buckets, a source not in it is counted under one shared
/// overflow bucket (with one source's allowance) instead of evicting anyone. An attacker
/// cycling through addresses thus gains one source's rate in all, however many addresses it
/// has, and never pushes out the bucket of a source that is being limited; the cost of a full
/// table falls on sources new to it until a sweep frees room.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateConfig,
    buckets: HashMap<Source, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter with `config` (a zero burst or rate counts as 1).
    pub fn new(config: RateConfig) -> Self {
        Self {
            config: RateConfig {
                burst: config.burst.max(1),
                per_second: config.per_second.max(1),
                max_sources: config.max_sources,
            },
            buckets: HashMap::new(),
            overflow: None,
            last_sweep: None,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> RateConfig {
        self.config
    }

    /// Buckets tracked now (at most [`RateConfig::max_sources`]).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn capacity(&self, share: usize) -> u128 {
        u128::from(self.config.burst) * share as u128 * UNITS
    }

    fn rate(&self, share: usize) -> u128 {
        u128::from(self.config.per_second) * share as u128
    }

    /// The bucket's tokens at `now`.
    fn level(&self, bucket: Bucket, share: usize, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(bucket.at).as_nanos();
        bucket
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate(share)))
            .min(self.capacity(share))
    }

    /// How long a bucket refills in from empty, the sweep's period.
    fn refill_time(&self) -> Duration {
        let per = u64::from(self.config.per_second);
        Duration::from_nanos((u64::from(self.config.burst) * 1_000_000_000).div_ceil(per))
    }

    /// Forgets the buckets that have refilled completely by `now`.
    fn sweep(&mut self, now: Instant) {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.retain(|(_, len), bucket| {
            let share = share_of(*len);
            self.level(*bucket, share, now) < self.capacity(share)
        });
        self.buckets = buckets;
        self.last_sweep = Some(now);
    }

    /// Whether a new handshake from `addr` may start at `now`; if so, its tokens are taken.
    pub fn admit(&mut self, now: Instant, addr: IpAddr) -> Result<(), RateLimited> {
        let due = self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= self.refill_time());
        if due {
            self.sweep(now);
        }
        let (sources, levels) = sources_of(addr);
        let mut slots = [Slot::Overflow; 3];
        let mut room = self.config.max_sources.saturating_sub(self.buckets.len());
        for (slot, (source, share)) in slots.iter_mut().zip(sources.iter().zip(LEVEL_SHARE)) {
            if self.buckets.contains_key(source) {
                *slot = Slot::Tracked(*source, share);
            } else if room > 0 {
                room -= 1;
                *slot = Slot::Tracked(*source, share);
            }
        }
        let slots = &slots[..levels];
        // Check every level before taking from any.
        let mut wait = Duration::ZERO;
        let mut overflow_seen = false;
        for slot in slots {
            let (tokens, share) = match *slot {
                Slot::Tracked(source, share) => {
                    let tokens = match self.buckets.get(&source) {
                        Some(b) => self.level(*b, share, now),
                        None => self.capacity(share),
                    };
                    (tokens, share)
                }
                Slot::Overflow if overflow_seen => continue,
                Slot::Overflow => {
                    overflow_seen = true;
                    let tokens = match self.overflow {
                        Some(b) => self.level(b, 1, now),
                        None => self.capacity(1),
                    };
                    (tokens, 1)
                }
            };
            if tokens < UNITS {
                let need = (UNITS - tokens).div_ceil(self.rate(share));
                wait = wait.max(Duration::from_nanos(
                    u64::try_from(need).unwrap_or(u64::MAX),
                ));
            }
        }
        if !wait.is_zero() {
            return Err(RateLimited { retry_after: wait });
        }
        let mut overflow_taken = false;
        for slot in slots {
            match *slot {
                Slot::Tracked(source, share) => {
                    let tokens = match self.buckets.get(&source) {
                        Some(b) => self.level(*b, share, now),
                        None => self.capacity(share),
                    };
                    let at = self.buckets.get(&source).map_or(now, |b| b.at.max(now));
                    self.buckets.insert(
                        source,
                        Bucket {
                            tokens: tokens - UNITS,
                            at,
                        },
                    );
                }
                Slot::Overflow if overflow_taken => {}
                Slot::Overflow => {
                    overflow_taken = true;
                    let tokens = match self.overflow {
                        Some(b) => self.level(b, 1, now),
                        None => self.capacity(1),
                    };
                    let at = self.overflow.map_or(now, |b| b.at.max(now));
                    self.overflow = Some(Bucket {
                        tokens: tokens - UNITS,
                        at,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The share of a level by its prefix length.
fn share_of(len: u8) -> usize {
    match len {
        56 => LEVEL_SHARE[1],
        48 => LEVEL_SHARE[2],
        _ => LEVEL_SHARE[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limiter(burst: u32, per_second: u32, max_sources: usize) -> RateLimiter {
        RateLimiter::new(RateConfig {
            burst,
            per_second,
            max_sources,
        })
    }

    /// How many handshakes `addr` gets admitted in a row at `now`.
    fn admitted(l: &mut RateLimiter, now: Instant, addr: &str) -> usize {
        let addr = ip(addr);
        (0..1000).take_while(|_| l.admit(now, addr).is_ok()).count()
    }

    #[test]
    fn a_burst_then_refusal_then_refill() {
        let mut l = limiter(8, 4, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..8 {
            assert_eq!(l.admit(t0, a), Ok(()), "burst {i}");
        }
        assert_eq!(
            l.admit(t0, a),
            Err(RateLimited {
                retry_after: Duration::from_millis(250)
            })
        );
        // A refused attempt takes nothing: a quarter second later, one more.
        assert!(l.admit(t0 + Duration::from_millis(249), a).is_err());
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(l.admit(t1, a), Ok(()));
        assert!(l.admit(t1, a).is_err());
        // One second: four more, not more.
        assert_eq!(
            admitted(&mut l, t1 + Duration::from_secs(1), "192.0.2.1"),
            4
        );
        // Another source is not affected.
        assert_eq!(admitted(&mut l, t1, "192.0.2.2"), 8);
        // Idle long enough: the whole burst again, never more.
        assert_eq!(
            admitted(&mut l, t1 + Duration::from_secs(60), "192.0.2.1"),
            8
        );
    }

    #[test]
    fn ipv6_is_limited_per_64_56_and_48() {
        let mut l = limiter(8, 4, 1000);
        let t = Instant::now();
        // One /64: its burst.
        assert_eq!(admitted(&mut l, t, "2001:db8:0:1::1"), 8);
        assert_eq!(admitted(&mut l, t, "2001:db8:0:1:ffff::9"), 0, "same /64");
        // Its /56 has 16: another /64 of it gets the other 8.
        assert_eq!(admitted(&mut l, t, "2001:db8:0:2::1"), 8);
        assert_eq!(admitted(&mut l, t, "2001:db8:0:3::1"), 0, "same /56");
        // Its /48 has 24: another /56 gets the rest.
        assert_eq!(admitted(&mut l, t, "2001:db8:0:100::1"), 8);
        assert_eq!(admitted(&mut l, t, "2001:db8:0:200::1"), 0, "same /48");
        // However many /64s of the /48 it cycles through, that is all it gets.
        let cycled: usize = (0..500u32)
            .map(|i| {
                let addr = format!("2001:db8:0:{:x}::1", 0x300 + i);
                admitted(&mut l, t, &addr)
            })
            .sum();
        assert_eq!(cycled, 0);
        // The /48 refills at 12 a second.
        let t1 = t + Duration::from_secs(1);
        let refilled: usize = (0..20u32)
            .map(|i| {
                admitted(
                    &mut l,
                    t1,
                    &format!("2001:db8:0:{:x}::1", 0x400 + 0x100 * i),
                )
            })
            .sum();
        assert_eq!(refilled, 12);
        // Another /48 is another site.
        assert_eq!(admitted(&mut l, t, "2001:db8:1::1"), 8);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let mut l = limiter(3, 1, 100);
        let t = Instant::now();
        assert_eq!(admitted(&mut l, t, "198.51.100.7"), 3);
        assert_eq!(admitted(&mut l, t, "::ffff:198.51.100.7"), 0);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn a_full_table_shares_one_overflow_bucket_and_evicts_no_busy_source() {
        let mut l = limiter(2, 1, 4);
        let t = Instant::now();
        // Four busy sources fill the table.
        for host in 1..=4u8 {
            assert_eq!(admitted(&mut l, t, &format!("192.0.2.{host}")), 2);
        }
        assert_eq!(l.tracked(), 4);
        // New sources, however many, share one bucket with one source's burst.
        let cycled: usize = (1..=200u8)
            .map(|host| admitted(&mut l, t, &format!("198.51.100.{host}")))
            .sum();
        assert_eq!(cycled, 2);
        assert_eq!(l.tracked(), 4, "memory stays bounded");
        // The busy sources kept their (empty) buckets: cycling reset none of them.
        for host in 1..=4u8 {
            assert_eq!(admitted(&mut l, t, &format!("192.0.2.{host}")), 0);
        }
        // Half a refill later none is idle yet, and nothing is forgotten.
        let t1 = t + Duration::from_secs(1);
        assert_eq!(admitted(&mut l, t1, "192.0.2.1"), 1);
        assert_eq!(
            admitted(&mut l, t1, "203.0.113.1"),
            1,
            "the overflow refilled one"
        );
        assert_eq!(l.tracked(), 4);
        // Once the buckets have refilled, the sweep forgets them and newcomers get their own.
        let t2 = t + Duration::from_secs(10);
        assert_eq!(admitted(&mut l, t2, "203.0.113.2"), 2);
        assert_eq!(admitted(&mut l, t2, "203.0.113.3"), 2);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn ipv6_levels_missing_from_a_full_table_are_counted_under_the_overflow() {
        let mut l = limiter(2, 1, 3);
        let t = Instant::now();
        // One /64 takes the three buckets (its /64, /56, /48).
        assert_eq!(admitted(&mut l, t, "2001:db8::1"), 2);
        assert_eq!(l.tracked(), 3);
        // Another /64 of that /48: its own /64 and /56 go to the overflow, the /48 is shared.
        assert_eq!(admitted(&mut l, t, "2001:db8:0:100::1"), 2);
        assert_eq!(
            admitted(&mut l, t, "2001:db8:0:200::1"),
            0,
            "overflow spent"
        );
        // The first /64 spent its own burst: the overflow does not stand in for a tracked level.
        assert_eq!(admitted(&mut l, t, "2001:db8::2"), 0, "its /64 is spent");
    }

    #[test]
    fn zero_settings_count_as_one() {
        let mut l = limiter(0, 0, 10);
        let t = Instant::now();
        assert_eq!(admitted(&mut l, t, "192.0.2.1"), 1);
        assert_eq!(admitted(&mut l, t + Duration::from_secs(1), "192.0.2.1"), 1);
    }
}

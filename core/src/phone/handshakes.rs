//! The connections an accepting phone does handshake work for before it knows who is calling.
//!
//! That work is bounded in two ways (both from `viska-admission`, shared with the relay):
//!
//! - **rate**: a source may start [`PhoneConfigBuilder::handshake_rate`] new handshakes (a
//!   burst, then so many a second); beyond it a connection is refused before TLS;
//! - **places**: at most [`PhoneConfigBuilder::max_handshakes`] such connections at once, and
//!   at most [`PhoneConfigBuilder::max_handshakes_per_source`] of them from one source. When
//!   every place is taken, a newcomer takes one back from whoever holds the most (the oldest
//!   place of the source with the most places), whose connection is closed at once; a source
//!   already at its share is refused instead.
//!
//! A source is an IPv4 address (an IPv4-mapped IPv6 address counts as IPv4), or an IPv6
//! prefix counted at three levels: a /64 has the per-source allowance, a /56 twice it and a
//! /48 three times it, so one site with a /48 cannot pose as 65,536 sources. QUIC has validated
//! the address before either is counted (a Retry round trip), so a source cannot be forged.
//!
//! [`PhoneConfigBuilder::handshake_rate`]: super::PhoneConfigBuilder::handshake_rate
//! [`PhoneConfigBuilder::max_handshakes`]: super::PhoneConfigBuilder::max_handshakes
//! [`PhoneConfigBuilder::max_handshakes_per_source`]: super::PhoneConfigBuilder::max_handshakes_per_source

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use viska_admission::{Place, Places, RateConfig, RateLimiter};

/// Connections refused or cut off before their caller was authenticated, since the phone
/// started listening.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedConnections {
    /// Places taken back from the source that held the most, to make room for a newcomer
    /// (their connections were closed).
    pub places_taken_back: u64,
    /// Refused because their source already had
    /// [`PhoneConfigBuilder::max_handshakes_per_source`](super::PhoneConfigBuilder::max_handshakes_per_source)
    /// connections (or its /56 or /48 its multiple) waiting for authentication.
    pub source_places_taken: u64,
    /// Closed because the TLS handshake did not complete within the deadline.
    pub tls_timeouts: u64,
    /// Refused before TLS because their source started new handshakes faster than
    /// [`PhoneConfigBuilder::handshake_rate`](super::PhoneConfigBuilder::handshake_rate)
    /// allows.
    pub rate_limited: u64,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source starts handshakes too fast.
    RateLimited,
    /// Its source (at some prefix level) holds as many places as it may.
    SourceFull,
}

/// The admission of one listening phone's unauthenticated connections, and its counters.
pub(crate) struct Handshakes {
    places: Arc<Places>,
    rate: Mutex<RateLimiter>,
    taken_back: AtomicU64,
    refused_source: AtomicU64,
    rate_limited: AtomicU64,
    tls_timeouts: AtomicU64,
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("places", &self.places)
            .finish_non_exhaustive()
    }
}

impl Handshakes {
    /// `limit` places in all, `per_source` for one source, new handshakes at `rate`.
    pub(crate) fn new(limit: usize, per_source: usize, rate: RateConfig) -> Self {
        Self {
            places: Places::new(limit, per_source),
            rate: Mutex::new(RateLimiter::new(rate)),
            taken_back: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            tls_timeouts: AtomicU64::new(0),
        }
    }

    /// A place for a new connection from `addr` at `now`, or why there is none (counted).
    pub(crate) fn admit(&self, now: Instant, addr: IpAddr) -> Result<Place, Refused> {
        if crate::lock(&self.rate).admit(now, addr).is_err() {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::RateLimited);
        }
        match self.places.take(addr) {
            Ok(taking) => {
                if taking.took_back {
                    self.taken_back.fetch_add(1, Ordering::Relaxed);
                }
                Ok(taking.place)
            }
            Err(viska_admission::SourceFull) => {
                self.refused_source.fetch_add(1, Ordering::Relaxed);
                Err(Refused::SourceFull)
            }
        }
    }

    /// Counts a connection closed for not finishing TLS in time.
    pub(crate) fn tls_timed_out(&self) {
        self.tls_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> RefusedConnections {
        RefusedConnections {
            places_taken_back: self.taken_back.load(Ordering::Relaxed),
            source_places_taken: self.refused_source.load(Ordering::Relaxed),
            tls_timeouts: self.tls_timeouts.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn refusals_are_counted_by_cause() {
        let rate = RateConfig {
            burst: 3,
            per_second: 1,
            max_sources: 100,
        };
        let h = Handshakes::new(2, 2, rate);
        let t = Instant::now();
        let a1 = h.admit(t, ip("192.0.2.1")).expect("first");
        let _a2 = h.admit(t, ip("192.0.2.1")).expect("second");
        assert_eq!(h.admit(t, ip("192.0.2.1")).err(), Some(Refused::SourceFull));
        assert_eq!(
            h.admit(t, ip("192.0.2.1")).err(),
            Some(Refused::RateLimited)
        );
        // A full table: a newcomer takes back the oldest place of the biggest holder.
        let _b = h.admit(t, ip("192.0.2.2")).expect("newcomer");
        assert!(a1.is_taken_back());
        // A second later the first source may try again (and, the table full, takes back
        // a place in turn).
        drop(a1);
        let _a3 = h
            .admit(t + Duration::from_secs(1), ip("::ffff:192.0.2.1"))
            .expect("refilled");
        h.tls_timed_out();
        assert_eq!(
            h.refused(),
            RefusedConnections {
                places_taken_back: 2,
                source_places_taken: 1,
                tls_timeouts: 1,
                rate_limited: 1,
            }
        );
    }
}

//! Places for connections whose caller is not authenticated yet, in total and per source.
//!
//! An accepting phone does TLS and end-to-end handshake work for a connection before it knows
//! who is calling. The places bound that work: at most [`PhoneConfigBuilder::max_handshakes`] such
//! connections at once, and at most [`PhoneConfigBuilder::max_handshakes_per_source`] of them from one
//! source. A source is an IPv4 address, or an IPv6 prefix counted at three levels: a /64 (one
//! host usually holds a whole /64) may hold the per-source share, a /56 twice it and a /48 three
//! times it, so one site with a /48 cannot pose as 65,536 sources. QUIC has validated the
//! address before a place is taken (a Retry round trip), so a source cannot be forged.
//!
//! When every place is taken, a newcomer takes one back from whoever holds the most: the
//! oldest place of the source (at its most crowded level) with the most places. An attacker
//! holding many places therefore loses them to a genuine caller, who holds one; the
//! connection whose place is taken is closed at once. A source already at its share is
//! refused instead: it would only take back its own place.
//!
//! [`PhoneConfigBuilder::max_handshakes`]: super::PhoneConfigBuilder::max_handshakes
//! [`PhoneConfigBuilder::max_handshakes_per_source`]: super::PhoneConfigBuilder::max_handshakes_per_source

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Why a connection was refused a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source (at some prefix level) holds as many places as it may.
    SourceFull,
}

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
}

/// The keys a connection from `addr` is counted under, most specific first: the address
/// itself for IPv4 (an IPv4-mapped IPv6 address counts as IPv4), the /64, /56 and /48 for
/// IPv6.
fn sources_of(addr: IpAddr) -> ([Source; 3], usize) {
    match addr {
        IpAddr::V4(_) => ([(addr, 32); 3], 1),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ([(IpAddr::V4(v4), 32); 3], 1),
            None => {
                let bits = u128::from(v6);
                let prefix = |len: u8| {
                    let masked = bits & !(u128::MAX >> u32::from(len));
                    (IpAddr::V6(masked.into()), len)
                };
                ([prefix(64), prefix(56), prefix(48)], 3)
            }
        },
    }
}

/// The one source `addr` belongs to for per-source limits other than places: an IPv4 address
/// (IPv4-mapped IPv6 counts as IPv4), or an IPv6 /64 (one host's, or one link's, addresses).
pub(super) fn source_key(addr: IpAddr) -> IpAddr {
    sources_of(addr).0[0].0
}

/// A source at one level: a prefix and its length (the same bits at /56 and /48 are two
/// different sources).
type Source = (IpAddr, u8);

/// The share of places each level may hold, as a multiple of the per-source share.
const LEVEL_SHARE: [usize; 3] = [1, 2, 3];

struct Held {
    id: u64,
    sources: [Source; 3],
    levels: usize,
    slot: Arc<Slot>,
}

#[derive(Default)]
struct Taken {
    next_id: u64,
    /// Oldest first.
    held: Vec<Held>,
    count: HashMap<Source, usize>,
}

impl Taken {
    fn count(&self, source: &Source) -> usize {
        self.count.get(source).copied().unwrap_or(0)
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let at = self.held.iter().position(|h| h.id == id)?;
        let held = self.held.remove(at);
        for source in held.sources.iter().take(held.levels) {
            if let Some(n) = self.count.get_mut(source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    // No entry outlives its last place: the map stays as small as the places.
                    self.count.remove(source);
                }
            }
        }
        Some(held)
    }
}

/// The places of one listening phone.
pub(crate) struct Places {
    limit: usize,
    per_source: usize,
    taken: Mutex<Taken>,
    taken_back: AtomicU64,
    refused_source: AtomicU64,
    tls_timeouts: AtomicU64,
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("limit", &self.limit)
            .field("per_source", &self.per_source)
            .finish_non_exhaustive()
    }
}

/// The part of a place its connection watches: raised when the place is taken back.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    taken_back: AtomicBool,
    notify: Notify,
}

impl Places {
    /// `limit` places in all, `per_source` of them for one source.
    pub(crate) fn new(limit: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_source,
            taken: Mutex::new(Taken::default()),
            taken_back: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
            tls_timeouts: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // Every change is made in one step: a panic elsewhere leaves the counts consistent.
        crate::lock(&self.taken)
    }

    /// Takes a place for a connection from `addr`, taking one back from the biggest holder if
    /// every place is taken, or says (and counts) why there is none.
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr) -> Result<Place, Refused> {
        let (sources, levels) = sources_of(addr);
        let mut taken = self.lock();
        let full_level = sources
            .iter()
            .zip(LEVEL_SHARE)
            .take(levels)
            .any(|(source, share)| taken.count(source) >= self.per_source * share);
        if full_level {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::SourceFull);
        }
        if taken.held.len() >= self.limit {
            // Take back the oldest place of the source that holds the most (at its most
            // crowded level, relative to that level's share).
            let victim = taken
                .held
                .iter()
                .max_by_key(|h| {
                    let load = h
                        .sources
                        .iter()
                        .zip(LEVEL_SHARE)
                        .take(h.levels)
                        .map(|(s, share)| taken.count(s) * 6 / share)
                        .max()
                        .unwrap_or(0);
                    // Ties: the oldest (smallest id) wins.
                    (load, std::cmp::Reverse(h.id))
                })
                .map(|h| h.id);
            if let Some(held) = victim.and_then(|id| taken.remove(id)) {
                held.slot.taken_back.store(true, Ordering::Relaxed);
                held.slot.notify.notify_one();
                self.taken_back.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = taken.next_id;
        taken.next_id += 1;
        let slot = Arc::new(Slot::default());
        for source in sources.iter().take(levels) {
            *taken.count.entry(*source).or_insert(0) += 1;
        }
        taken.held.push(Held {
            id,
            sources,
            levels,
            slot: Arc::clone(&slot),
        });
        Ok(Place {
            places: Arc::clone(self),
            id,
            slot,
        })
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
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().held.len()
    }
}

/// One taken place, given back when dropped (the caller authenticated, or the connection
/// ended), or taken back by a newcomer (see [`Place::taken_back`]).
#[derive(Debug)]
pub(crate) struct Place {
    places: Arc<Places>,
    id: u64,
    slot: Arc<Slot>,
}

impl Place {
    /// Resolves when the place is taken back for a newcomer: the connection must be closed.
    pub(crate) async fn taken_back(&self) {
        loop {
            let notified = self.slot.notify.notified();
            if self.slot.taken_back.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn is_taken_back(place: &Place) -> bool {
        place.slot.taken_back.load(Ordering::Relaxed)
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let places = Places::new(4, 2);
        let a1 = places.take(ip("192.0.2.1")).expect("first");
        let _a2 = places.take(ip("192.0.2.1")).expect("second");
        assert_eq!(
            places.take(ip("192.0.2.1")).err(),
            Some(Refused::SourceFull)
        );
        // A place given back is free for its source again, and only one.
        drop(a1);
        let _a3 = places.take(ip("192.0.2.1")).expect("freed place");
        assert_eq!(
            places.take(ip("192.0.2.1")).err(),
            Some(Refused::SourceFull)
        );
        assert_eq!(places.refused().source_places_taken, 2);
    }

    /// Five attacker addresses hold every place; a genuine caller still gets one, from the
    /// attacker that holds the most, and keeps it while the attackers go on.
    #[test]
    fn a_newcomer_takes_the_oldest_place_of_the_biggest_holder() {
        let places = Places::new(16, 4);
        let mut attackers = Vec::new();
        for round in 0..4 {
            for host in 1..=4u8 {
                let place = places
                    .take(IpAddr::from([198, 51, 100, host]))
                    .expect("a free place");
                attackers.push((round, host, place));
            }
        }
        assert_eq!(places.held(), 16);
        let genuine = places
            .take(ip("203.0.113.9"))
            .expect("a place for the newcomer");
        let taken_back: Vec<_> = attackers
            .iter()
            .filter(|(_, _, p)| is_taken_back(p))
            .map(|(round, host, _)| (*round, *host))
            .collect();
        assert_eq!(
            taken_back,
            vec![(0, 1)],
            "the oldest place of the biggest holder"
        );
        assert_eq!(places.held(), 16);
        // The attackers churn: each new attempt takes back one of theirs, never the genuine
        // caller's single place.
        attackers.retain(|(_, _, p)| !is_taken_back(p));
        for _ in 0..50 {
            for host in 1..=5u8 {
                if let Ok(place) = places.take(IpAddr::from([198, 51, 100, host])) {
                    attackers.push((9, host, place));
                }
                attackers.retain(|(_, _, p)| !is_taken_back(p));
            }
        }
        assert!(!is_taken_back(&genuine));
        assert!(places.refused().places_taken_back >= 1);
    }

    #[test]
    fn ipv6_is_counted_per_64_56_and_48() {
        let places = Places::new(100, 2);
        let mut held = Vec::new();
        // Two per /64.
        held.push(places.take(ip("2001:db8:0:1::1")).expect("1"));
        held.push(places.take(ip("2001:db8:0:1::2")).expect("2"));
        assert_eq!(
            places.take(ip("2001:db8:0:1:ffff::7")).err(),
            Some(Refused::SourceFull),
            "same /64"
        );
        // Four per /56: two more /64s of the same /56.
        held.push(places.take(ip("2001:db8:0:2::1")).expect("3"));
        held.push(places.take(ip("2001:db8:0:2::2")).expect("4"));
        assert_eq!(
            places.take(ip("2001:db8:0:3::1")).err(),
            Some(Refused::SourceFull),
            "same /56"
        );
        // Six per /48: another /56 of the same /48 gets two more.
        held.push(places.take(ip("2001:db8:0:100::1")).expect("5"));
        held.push(places.take(ip("2001:db8:0:100::2")).expect("6"));
        assert_eq!(
            places.take(ip("2001:db8:0:200::1")).err(),
            Some(Refused::SourceFull),
            "same /48"
        );
        // Another /48 is another site.
        held.push(places.take(ip("2001:db8:1::1")).expect("other /48"));
        // A mapped IPv4 address is that address.
        let _v4 = places.take(ip("198.51.100.7")).expect("v4");
        let _v4b = places.take(ip("198.51.100.7")).expect("v4 second");
        assert_eq!(
            places.take(ip("::ffff:198.51.100.7")).err(),
            Some(Refused::SourceFull)
        );
    }

    #[test]
    fn given_back_places_leave_no_entries() {
        let places = Places::new(1000, 1000);
        let held: Vec<Place> = (0..=255u8)
            .map(|i| places.take(IpAddr::from([10, 0, 0, i])).expect("place"))
            .collect();
        assert_eq!(places.lock().count.len(), 256);
        drop(held);
        let taken = places.lock();
        assert_eq!((taken.held.len(), taken.count.len()), (0, 0));
    }
}

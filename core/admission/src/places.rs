//! Places for connections whose peer is not authenticated yet, in total and per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::{LEVEL_SHARE, Source, sources_of};

/// Why a connection got no place: its source (at some prefix level) holds as many places as
/// it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFull;

impl std::fmt::Display for SourceFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the source holds its share of places")
    }
}

impl std::error::Error for SourceFull {}

/// A place taken by [`Places::take`].
#[derive(Debug)]
#[must_use = "the place is given back when dropped"]
pub struct Taking {
    /// The place; hold it until the peer is authenticated or the connection ends.
    pub place: Place,
    /// Whether a place was taken back from the biggest holder to make room (its connection
    /// must be closed: its [`Place::taken_back`] resolves).
    pub took_back: bool,
}

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

/// The places of one listener: at most `limit` connections doing handshake work at once, and
/// at most `per_source` of them from one source (an IPv6 /56 twice that, a /48 three times).
///
/// When every place is taken, a newcomer takes one back from whoever holds the most: the
/// oldest place of the source (at its most crowded level, relative to that level's share)
/// with the most places. An attacker holding many places therefore loses them to a genuine
/// peer, who holds one. A source already at its share is refused instead.
pub struct Places {
    limit: usize,
    per_source: usize,
    taken: Mutex<Taken>,
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
struct Slot {
    taken_back: AtomicBool,
    notify: Notify,
}

impl Places {
    /// `limit` places in all, `per_source` of them for one source (each at least 1).
    pub fn new(limit: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            per_source: per_source.max(1),
            taken: Mutex::new(Taken::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Taken> {
        // Every change is made in one step under the lock: a panic elsewhere leaves the
        // counts consistent.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Sources (at all levels) with places now: never more than three per place held.
    pub fn tracked_sources(&self) -> usize {
        self.lock().count.len()
    }

    /// Takes a place for a connection from `addr`, taking one back from the biggest holder if
    /// every place is taken; refused if its source holds its share already.
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Result<Taking, SourceFull> {
        let (sources, levels) = sources_of(addr);
        let mut taken = self.lock();
        let full_level = sources
            .iter()
            .zip(LEVEL_SHARE)
            .take(levels)
            .any(|(source, share)| taken.count(source) >= self.per_source * share);
        if full_level {
            return Err(SourceFull);
        }
        let mut took_back = false;
        if taken.held.len() >= self.limit {
            let victim = taken
                .held
                .iter()
                .max_by_key(|h| {
                    // Load relative to the level's share (6 is divisible by every share).
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
                took_back = true;
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
        Ok(Taking {
            place: Place {
                places: Arc::clone(self),
                id,
                slot,
            },
            took_back,
        })
    }
}

/// One taken place, given back when dropped (the peer authenticated, or the connection
/// ended), or taken back for a newcomer ([`Place::taken_back`]).
pub struct Place {
    places: Arc<Places>,
    id: u64,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place")
            .field("id", &self.id)
            .field("taken_back", &self.is_taken_back())
            .finish()
    }
}

impl Place {
    /// Resolves once the place is taken back for a newcomer: the connection must be closed.
    pub async fn taken_back(&self) {
        loop {
            let notified = self.slot.notify.notified();
            if self.is_taken_back() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the place has been taken back for a newcomer.
    pub fn is_taken_back(&self) -> bool {
        self.slot.taken_back.load(Ordering::Relaxed)
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

    fn take(places: &Arc<Places>, addr: &str) -> Result<Taking, SourceFull> {
        places.take(ip(addr))
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let places = Places::new(4, 2);
        let a1 = take(&places, "192.0.2.1").expect("first");
        let _a2 = take(&places, "192.0.2.1").expect("second");
        assert_eq!(take(&places, "192.0.2.1").err(), Some(SourceFull));
        // A place given back is free for its source again, and only one.
        drop(a1);
        let _a3 = take(&places, "192.0.2.1").expect("freed place");
        assert_eq!(take(&places, "192.0.2.1").err(), Some(SourceFull));
    }

    /// Five attacker addresses hold every place; a genuine caller still gets one, from the
    /// attacker that holds the most, and keeps it while the attackers go on.
    #[test]
    fn a_newcomer_takes_the_oldest_place_of_the_biggest_holder() {
        let places = Places::new(16, 4);
        let mut attackers = Vec::new();
        for round in 0..4 {
            for host in 1..=4u8 {
                let taking = places
                    .take(IpAddr::from([198, 51, 100, host]))
                    .expect("a free place");
                assert!(!taking.took_back);
                attackers.push((round, host, taking.place));
            }
        }
        assert_eq!(places.held(), 16);
        let genuine = take(&places, "203.0.113.9").expect("a place for the newcomer");
        assert!(genuine.took_back);
        let taken_back: Vec<_> = attackers
            .iter()
            .filter(|(_, _, p)| p.is_taken_back())
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
        attackers.retain(|(_, _, p)| !p.is_taken_back());
        for _ in 0..50 {
            for host in 1..=5u8 {
                if let Ok(taking) = places.take(IpAddr::from([198, 51, 100, host])) {
                    attackers.push((9, host, taking.place));
                }
                attackers.retain(|(_, _, p)| !p.is_taken_back());
            }
        }
        assert!(!genuine.place.is_taken_back());
    }

    #[test]
    fn ipv6_is_counted_per_64_56_and_48() {
        let places = Places::new(100, 2);
        let mut held = Vec::new();
        // Two per /64.
        held.push(take(&places, "2001:db8:0:1::1").expect("1"));
        held.push(take(&places, "2001:db8:0:1::2").expect("2"));
        assert_eq!(
            take(&places, "2001:db8:0:1:ffff::7").err(),
            Some(SourceFull),
            "same /64"
        );
        // Four per /56: two more /64s of the same /56.
        held.push(take(&places, "2001:db8:0:2::1").expect("3"));
        held.push(take(&places, "2001:db8:0:2::2").expect("4"));
        assert_eq!(
            take(&places, "2001:db8:0:3::1").err(),
            Some(SourceFull),
            "same /56"
        );
        // Six per /48: another /56 of the same /48 gets two more.
        held.push(take(&places, "2001:db8:0:100::1").expect("5"));
        held.push(take(&places, "2001:db8:0:100::2").expect("6"));
        assert_eq!(
            take(&places, "2001:db8:0:200::1").err(),
            Some(SourceFull),
            "same /48"
        );
        // Another /48 is another site.
        held.push(take(&places, "2001:db8:1::1").expect("other /48"));
        // A mapped IPv4 address is that address.
        held.push(take(&places, "198.51.100.7").expect("v4"));
        held.push(take(&places, "198.51.100.7").expect("v4 second"));
        assert_eq!(take(&places, "::ffff:198.51.100.7").err(), Some(SourceFull));
    }

    #[test]
    fn given_back_places_leave_no_entries() {
        let places = Places::new(1000, 1000);
        let held: Vec<Taking> = (0..=255u8)
            .map(|i| places.take(IpAddr::from([10, 0, 0, i])).expect("place"))
            .collect();
        assert_eq!(places.tracked_sources(), 256);
        drop(held);
        assert_eq!((places.held(), places.tracked_sources()), (0, 0));
    }

    #[tokio::test]
    async fn a_place_taken_back_wakes_its_connection() {
        let places = Places::new(1, 1);
        let first = take(&places, "192.0.2.1").expect("first");
        let waiter = tokio::spawn(async move {
            first.place.taken_back().await;
            first.place.is_taken_back()
        });
        let second = take(&places, "192.0.2.2").expect("second");
        assert!(second.took_back);
        assert!(waiter.await.expect("task"));
        assert_eq!(places.held(), 1);
    }
}

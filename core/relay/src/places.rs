//! Places for connections that have not authenticated yet, in total and per source.
//!
//! The relay does TLS and challenge work for a connection before it knows whose it is. The
//! places bound that work: at most [`RelayConfig::max_unauthenticated`] such connections at
//! once, and at most [`RelayConfig::max_unauthenticated_per_source`] of them from one source
//! (an IPv4 address, an IPv4-mapped IPv6 address counting as IPv4, or an IPv6 /64). QUIC has
//! validated the address (a Retry round trip) before a place is taken, so a source cannot be
//! forged.
//!
//! A source already at its share is **refused** (the newcomer would only take back a place of
//! its own). When every place is taken, the newcomer **takes back** the oldest place of the
//! source holding the most, whose connection is closed at once: an attacker holding many places
//! loses them to a genuine device, which holds one.
//!
//! [`RelayConfig::max_unauthenticated`]: crate::RelayConfig::max_unauthenticated
//! [`RelayConfig::max_unauthenticated_per_source`]: crate::RelayConfig::max_unauthenticated_per_source

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The source a connection from `addr` is counted under.
pub(crate) fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
    }
}

struct Held {
    id: u64,
    source: IpAddr,
    slot: Arc<Slot>,
}

#[derive(Default)]
struct Taken {
    next_id: u64,
    /// Oldest first.
    held: Vec<Held>,
    count: HashMap<IpAddr, usize>,
}

impl Taken {
    fn count(&self, source: &IpAddr) -> usize {
        self.count.get(source).copied().unwrap_or(0)
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let at = self.held.iter().position(|h| h.id == id)?;
        let held = self.held.remove(at);
        if let Some(n) = self.count.get_mut(&held.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.count.remove(&held.source);
            }
        }
        Some(held)
    }
}

/// Why a connection got no place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceFull;

/// What happened when a place was taken.
#[derive(Debug)]
pub(crate) struct Taking {
    pub(crate) place: Place,
    /// A place was taken back from the biggest holder to make room.
    pub(crate) took_back: bool,
}

/// The places of one relay.
pub(crate) struct Places {
    limit: usize,
    per_source: usize,
    taken: Mutex<Taken>,
}

impl Places {
    pub(crate) fn new(limit: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            per_source: per_source.max(1),
            taken: Mutex::new(Taken::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Taken> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places held now.
    pub(crate) fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// A place for a connection from `addr`, taking back the oldest place of the biggest
    /// holder if every place is taken; refused if its source holds its share already.
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr) -> Result<Taking, SourceFull> {
        let source = source_of(addr);
        let mut taken = self.lock();
        if taken.count(&source) >= self.per_source {
            return Err(SourceFull);
        }
        let mut took_back = false;
        if taken.held.len() >= self.limit {
            let victim = taken
                .held
                .iter()
                .max_by_key(|h| (taken.count(&h.source), std::cmp::Reverse(h.id)))
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
        *taken.count.entry(source).or_insert(0) += 1;
        taken.held.push(Held {
            id,
            source,
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

/// What a place's connection watches: raised when the place is taken back.
#[derive(Debug, Default)]
struct Slot {
    taken_back: AtomicBool,
    notify: Notify,
}

/// One taken place, given back when dropped (the device authenticated, or the connection
/// ended), or taken back for a newcomer ([`Place::taken_back`]).
pub(crate) struct Place {
    places: Arc<Places>,
    id: u64,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place").field("id", &self.id).finish()
    }
}

impl Place {
    /// Resolves once the place is taken back: the connection must be closed.
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

/// At most one log line a second for refused and cut-off connections, with how many were
/// left out in between.
#[derive(Default)]
pub(crate) struct LogLimit {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// Whether to log now, and how many were left out since the last line.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            s.1 += 1;
            return None;
        }
        s.0 = Some(now);
        Some(std::mem::take(&mut s.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
    }

    #[test]
    fn a_source_at_its_share_is_refused_and_a_full_relay_takes_back_from_the_biggest() {
        let places = Places::new(4, 3);
        let a: Vec<_> = (0..3)
            .map(|_| places.take(ip("198.51.100.1")).unwrap())
            .collect();
        assert!(places.take(ip("198.51.100.1")).is_err());
        assert!(places.take(ip("2001:db8::1")).is_ok_and(|t| !t.took_back));
        // The places are all taken (the IPv6 one was dropped): take another.
        let b = places.take(ip("2001:db8::2")).unwrap();
        assert!(!b.took_back);
        let c = places.take(ip("203.0.113.9")).unwrap();
        assert!(c.took_back);
        assert!(
            a[0].place.slot.taken_back.load(Ordering::Relaxed),
            "the oldest of the biggest"
        );
        assert!(!a[1].place.slot.taken_back.load(Ordering::Relaxed));
        assert_eq!(places.held(), 4);
        drop(a);
        assert_eq!(places.held(), 2);
    }
}

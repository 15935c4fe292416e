//! Places for connections whose caller is not authenticated yet, in total and per source.
//!
//! An accepting phone does TLS and end-to-end handshake work for a connection before it knows
//! who is calling. The places bound that work: at most [`PhoneConfig::max_handshakes`] such
//! connections at once, and at most [`PhoneConfig::max_handshakes_per_source`] of them from one
//! source, so that one source cannot take every place for the setup timeout each and keep
//! everyone else's calls out. A source is an IPv4 address or an IPv6 /64 prefix (one host
//! usually holds a whole /64). QUIC has validated the address before a place is taken (a Retry
//! round trip), so a source cannot be forged.
//!
//! [`PhoneConfig::max_handshakes`]: super::PhoneConfig::max_handshakes
//! [`PhoneConfig::max_handshakes_per_source`]: super::PhoneConfig::max_handshakes_per_source

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a connection was refused a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every place is taken.
    Full,
    /// Its source holds as many places as one source may.
    SourceFull,
}

/// Connections refused before their caller was authenticated, since the phone started
/// listening.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedConnections {
    /// Refused because [`PhoneConfig::max_handshakes`](super::PhoneConfig::max_handshakes)
    /// connections were already waiting for authentication.
    pub all_places_taken: u64,
    /// Refused because their source already had
    /// [`PhoneConfig::max_handshakes_per_source`](super::PhoneConfig::max_handshakes_per_source)
    /// connections waiting for authentication.
    pub source_places_taken: u64,
}

/// The source a place is counted against: the address, or for IPv6 its /64 prefix. An
/// IPv4-mapped IPv6 address (a dual-stack socket) counts as the IPv4 address.
fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[derive(Debug, Default)]
struct Taken {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// The places of one listening phone.
#[derive(Debug)]
pub(crate) struct Places {
    limit: usize,
    per_source: usize,
    taken: Mutex<Taken>,
    refused_full: AtomicU64,
    refused_source: AtomicU64,
}

impl Places {
    /// `limit` places in all, `per_source` of them for one source.
    pub(crate) fn new(limit: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_source,
            taken: Mutex::new(Taken::default()),
            refused_full: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // The counts are updated in one step each: a panic elsewhere leaves them consistent.
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a connection from `addr`, or says (and counts) why there is none.
    pub(crate) fn take(self: &Arc<Self>, addr: IpAddr) -> Result<Place, Refused> {
        let source = source_of(addr);
        let mut taken = self.lock();
        let refused = if taken.total >= self.limit {
            Some((Refused::Full, &self.refused_full))
        } else if taken.by_source.get(&source).copied().unwrap_or(0) >= self.per_source {
            Some((Refused::SourceFull, &self.refused_source))
        } else {
            None
        };
        if let Some((why, counter)) = refused {
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(why);
        }
        taken.total += 1;
        *taken.by_source.entry(source).or_insert(0) += 1;
        Ok(Place {
            places: Arc::clone(self),
            source,
        })
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> RefusedConnections {
        RefusedConnections {
            all_places_taken: self.refused_full.load(Ordering::Relaxed),
            source_places_taken: self.refused_source.load(Ordering::Relaxed),
        }
    }
}

/// One taken place, given back when dropped (the caller authenticated, or the connection
/// ended).
#[derive(Debug)]
pub(crate) struct Place {
    places: Arc<Places>,
    source: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self.places.lock();
        taken.total = taken.total.saturating_sub(1);
        if let Some(n) = taken.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // No entry outlives its last place: the map stays as small as the places.
                taken.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_source_cannot_take_every_place() {
        let places = Places::new(4, 2);
        let a1 = places.take(ip("192.0.2.1")).expect("first");
        let _a2 = places.take(ip("192.0.2.1")).expect("second");
        assert_eq!(
            places.take(ip("192.0.2.1")).err(),
            Some(Refused::SourceFull)
        );
        // Another source still gets in, up to the total.
        let _b1 = places.take(ip("192.0.2.2")).expect("other source");
        let _b2 = places.take(ip("192.0.2.2")).expect("other source");
        assert_eq!(places.take(ip("192.0.2.3")).err(), Some(Refused::Full));
        assert_eq!(
            places.refused(),
            RefusedConnections {
                all_places_taken: 1,
                source_places_taken: 1
            }
        );
        // A place given back is free for its source again, and only one.
        drop(a1);
        let _a3 = places.take(ip("192.0.2.1")).expect("freed place");
        assert_eq!(places.take(ip("192.0.2.1")).err(), Some(Refused::Full));
    }

    #[test]
    fn an_ipv6_host_is_its_64_prefix_and_a_mapped_ipv4_its_address() {
        let places = Places::new(10, 1);
        let _a = places.take(ip("2001:db8:1:2::1")).expect("first");
        assert_eq!(
            places.take(ip("2001:db8:1:2:ffff::7")).err(),
            Some(Refused::SourceFull),
            "same /64"
        );
        let _b = places.take(ip("2001:db8:1:3::1")).expect("other /64");
        let _c = places.take(ip("198.51.100.7")).expect("v4");
        assert_eq!(
            places.take(ip("::ffff:198.51.100.7")).err(),
            Some(Refused::SourceFull),
            "mapped v4 is the same source"
        );
    }

    #[test]
    fn given_back_places_leave_no_entries() {
        let places = Places::new(1000, 1000);
        let held: Vec<Place> = (0..=255u8)
            .map(|i| places.take(IpAddr::from([10, 0, 0, i])).expect("place"))
            .collect();
        assert_eq!(places.lock().by_source.len(), 256);
        drop(held);
        let taken = places.lock();
        assert_eq!((taken.total, taken.by_source.len()), (0, 0));
    }
}

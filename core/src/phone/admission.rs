//! Which authenticated incoming calls a phone takes.
//!
//! A caller is known once its handshake message 3 checked out; the phone then decides, before
//! the call rings (and before anything about the SAS is revealed):
//!
//! 0. a phone with no listener set, or whose event queue is full (a listener that stopped
//!    returning), rings for no one: the caller is told busy;
//! 1. an identity that is not verified rings at most once at a time (a throw-away identity
//!    gains nothing by calling twice);
//! 2. callers that are not verified ring at most [`PhoneConfig::max_ringing_per_source`] at a
//!    time from one source (an IPv4 address or an IPv6 /64);
//! 3. below [`PhoneConfig::max_calls`] the call is taken;
//! 4. at the limit, a verified caller (a contact the user verified, or the identity the
//!    application expected) takes the place of the oldest ringing call of a caller that is
//!    not: that call is refused as busy (the application sees it end, and a missed call). An
//!    attacker with any number of fresh identities can fill the phone with ringing calls, but
//!    never keep a known caller out;
//! 5. otherwise the caller is told busy.
//!
//! [`PhoneConfig::max_ringing_per_source`]: super::PhoneConfig::max_ringing_per_source
//! [`PhoneConfig::max_calls`]: super::PhoneConfig::max_calls

use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use viska_call::Trust;
use viska_e2ee::identity::PublicIdentity;

use super::{CallShared, lock};

/// The decision about one caller.
#[derive(Debug)]
pub(super) enum Decision {
    Admit,
    /// Admit, and refuse this ringing call as busy to make room.
    AdmitInPlaceOf(Arc<CallShared>),
    Busy,
}

struct Entry {
    call: Weak<CallShared>,
    /// Incoming calls only: their source (IPv4 address or IPv6 /64), identity and trust.
    incoming: Option<(IpAddr, PublicIdentity, bool)>,
    /// A verified caller took this call's place: it is being refused, and makes room for no
    /// other. It stays listed until it ends (the user may have answered it first).
    displaced: bool,
}

/// The calls a phone runs, for admission.
pub(super) struct Admission {
    max_calls: usize,
    max_ringing_per_source: usize,
    entries: Mutex<Vec<Entry>>,
}

impl Admission {
    pub(super) fn new(max_calls: usize, max_ringing_per_source: usize) -> Self {
        Self {
            max_calls,
            max_ringing_per_source,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Entries of calls that are gone or ended leave here.
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        let mut entries = lock(&self.entries);
        entries.retain(|e| e.call.upgrade().is_some_and(|c| !c.is_torn_down()));
        entries
    }

    /// An outgoing call: taken if the phone has room.
    pub(super) fn admit_outgoing(&self, call: &Arc<CallShared>) -> bool {
        let mut entries = self.live();
        if entries.len() >= self.max_calls {
            return false;
        }
        entries.push(Entry {
            call: Arc::downgrade(call),
            incoming: None,
            displaced: false,
        });
        true
    }

    /// An authenticated incoming call from `source` proving `peer`.
    pub(super) fn admit_incoming(
        &self,
        call: &Arc<CallShared>,
        source: IpAddr,
        peer: PublicIdentity,
        trust: Trust,
    ) -> Decision {
        let source = viska_admission::source_key(source);
        let verified = trust == Trust::Verified;
        let mut entries = self.live();
        let ringing_unverified = |e: &&Entry| {
            !e.displaced
                && e.incoming.is_some_and(|(_, _, v)| !v)
                && e.call.upgrade().is_some_and(|c| c.is_unanswered())
        };
        if !verified {
            let same_identity = entries
                .iter()
                .filter(ringing_unverified)
                .any(|e| e.incoming.is_some_and(|(_, id, _)| id == peer));
            let from_source = entries
                .iter()
                .filter(ringing_unverified)
                .filter(|e| e.incoming.is_some_and(|(s, _, _)| s == source))
                .count();
            if same_identity || from_source >= self.max_ringing_per_source {
                return Decision::Busy;
            }
        }
        let entry = Entry {
            call: Arc::downgrade(call),
            incoming: Some((source, peer, verified)),
            displaced: false,
        };
        if entries.len() < self.max_calls {
            entries.push(entry);
            return Decision::Admit;
        }
        if verified {
            // The oldest ringing call of a caller who is not verified makes room.
            let oldest = entries.iter_mut().find(|e| ringing_unverified(&&**e));
            if let Some(evicted) = oldest {
                evicted.displaced = true;
                let call = evicted.call.upgrade();
                entries.push(entry);
                return match call {
                    Some(call) => Decision::AdmitInPlaceOf(call),
                    None => Decision::Admit,
                };
            }
        }
        Decision::Busy
    }

    /// The calls not yet torn down.
    pub(super) fn calls(&self) -> Vec<Arc<CallShared>> {
        self.live()
            .iter()
            .filter_map(|e| e.call.upgrade())
            .collect()
    }
}

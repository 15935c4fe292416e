//! SFrame counter reuse detection: per call, per sender device and per key (KID and the epoch
//! the relay reads it as), the highest counter seen and a sliding window below it, like
//! SRTP's replay list (RFC 3711 section 3.3.2). A datagram whose counter was seen already, or
//! is older than the window, is not forwarded: a sender that reused a counter under a key
//! would give away the XOR of two plaintexts to anyone who recorded both, and a replayed
//! frame is a copy an attacker put back on the path.

use std::collections::HashMap;

use crate::DeviceKey;

/// Counters below the highest one seen that are still accepted (once each), for the
/// reordering of a real network.
pub(crate) const WINDOW: u64 = 128;

/// Keys tracked per sender: a sender has one key per epoch and a KID tells only eight epochs
/// apart, so a sender that shows more is making them up.
pub(crate) const MAX_KEYS_PER_SENDER: usize = 16;

/// Why a datagram was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Its counter was seen already under its key.
    Repeat,
    /// Its counter is older than the window below the highest one seen.
    TooOld,
    /// Its sender already has [`MAX_KEYS_PER_SENDER`] keys tracked.
    TooManyKeys,
}

/// The highest counter seen under one key and which of the [`WINDOW`] below it were seen.
#[derive(Clone, Copy, Debug)]
struct Window {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was seen (bit 0 is `highest` itself).
    seen: u128,
}

impl Window {
    fn new(ctr: u64) -> Self {
        Self {
            highest: ctr,
            seen: 1,
        }
    }

    /// Accepts `ctr` (and records it) or says why not.
    fn check(&mut self, ctr: u64) -> Result<(), Reuse> {
        if ctr > self.highest {
            let shift = ctr - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = ctr;
            return Ok(());
        }
        let back = self.highest - ctr;
        if back >= WINDOW {
            return Err(Reuse::TooOld);
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return Err(Reuse::Repeat);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// The counters of one call's senders. Bounded: keys of epochs a KID can no longer name are
/// dropped when the call moves on, and a sender has at most [`MAX_KEYS_PER_SENDER`]. A sender
/// that leaves is not forgotten before its epochs are: a replay of its frames is still refused.
#[derive(Debug, Default)]
pub(crate) struct CallCounters {
    /// Per sender: (KID, epoch) to its window.
    senders: HashMap<DeviceKey, HashMap<(u64, u64), Window>>,
    /// The call epoch the entries were last pruned at.
    pruned_at: u64,
}

impl CallCounters {
    /// Checks (and records) counter `ctr` of `sender` under `kid`, read as a key of `epoch`,
    /// in a call now at `current`.
    pub(crate) fn check(
        &mut self,
        sender: &DeviceKey,
        kid: u64,
        epoch: u64,
        ctr: u64,
        current: u64,
    ) -> Result<(), Reuse> {
        if current != self.pruned_at {
            self.prune(current);
        }
        let keys = self.senders.entry(*sender).or_default();
        if let Some(w) = keys.get_mut(&(kid, epoch)) {
            return w.check(ctr);
        }
        if keys.len() >= MAX_KEYS_PER_SENDER {
            return Err(Reuse::TooManyKeys);
        }
        keys.insert((kid, epoch), Window::new(ctr));
        Ok(())
    }

    /// Drops the keys of epochs at least eight before `current` (their KIDs now name the keys
    /// of later epochs) and senders left with none.
    fn prune(&mut self, current: u64) {
        self.pruned_at = current;
        let oldest = current.saturating_sub(crate::state::EPOCHS_NAMED - 1);
        self.senders.retain(|_, keys| {
            keys.retain(|(_, e), _| *e >= oldest);
            !keys.is_empty()
        });
    }

    /// Keys tracked in all.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DeviceKey = [1; 32];
    const B: DeviceKey = [2; 32];

    #[test]
    fn a_repeated_counter_is_refused_and_reordering_inside_the_window_is_not() {
        let mut c = CallCounters::default();
        for ctr in [0, 1, 2, 5, 4, 3, 10] {
            assert_eq!(c.check(&A, 8, 1, ctr, 1), Ok(()), "ctr {ctr}");
        }
        assert_eq!(c.check(&A, 8, 1, 4, 1), Err(Reuse::Repeat));
        assert_eq!(c.check(&A, 8, 1, 10, 1), Err(Reuse::Repeat));
        // Not seen yet and inside the window: accepted once.
        assert_eq!(c.check(&A, 8, 1, 7, 1), Ok(()));
        assert_eq!(c.check(&A, 8, 1, 7, 1), Err(Reuse::Repeat));
        // Another sender, another KID, or the same KID read as another epoch: its own counters.
        assert_eq!(c.check(&B, 8, 1, 4, 1), Ok(()));
        assert_eq!(c.check(&A, 16, 1, 4, 1), Ok(()));
        assert_eq!(c.check(&A, 8, 9, 4, 9), Ok(()));
    }

    #[test]
    fn a_counter_older_than_the_window_is_refused() {
        let mut c = CallCounters::default();
        assert_eq!(c.check(&A, 0, 0, 1000, 0), Ok(()));
        assert_eq!(c.check(&A, 0, 0, 1000 - WINDOW + 1, 0), Ok(()));
        assert_eq!(c.check(&A, 0, 0, 1000 - WINDOW, 0), Err(Reuse::TooOld));
        assert_eq!(c.check(&A, 0, 0, 0, 0), Err(Reuse::TooOld));
        // A jump past the window clears it.
        assert_eq!(c.check(&A, 0, 0, 5000, 0), Ok(()));
        assert_eq!(c.check(&A, 0, 0, 4999, 0), Ok(()));
        assert_eq!(c.check(&A, 0, 0, 1000, 0), Err(Reuse::TooOld));
        assert_eq!(c.check(&A, 0, 0, u64::MAX, 0), Ok(()));
        assert_eq!(c.check(&A, 0, 0, u64::MAX, 0), Err(Reuse::Repeat));
    }

    #[test]
    fn memory_is_bounded_by_epochs_and_keys_per_sender() {
        let mut c = CallCounters::default();
        for kid in 0..MAX_KEYS_PER_SENDER as u64 {
            assert_eq!(c.check(&A, kid << 3, 0, 0, 0), Ok(()));
        }
        assert_eq!(c.check(&A, 999 << 3, 0, 0, 0), Err(Reuse::TooManyKeys));
        // Another sender is not affected.
        assert_eq!(c.check(&B, 0, 0, 0, 0), Ok(()));
        // Eight epochs on, the keys of epoch 0 are gone: the call reads those KIDs as epoch 8.
        assert_eq!(c.check(&B, 1, 8, 0, 8), Ok(()));
        assert_eq!(c.len(), 1);
    }
}

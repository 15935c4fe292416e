//! Per-KID replay protection: a sliding bitmap over the most recent `window` counters.
//!
//! A counter is accepted once. The receiver first asks [`ReplayWindow::check`] (cheap, before any
//! decryption) and calls [`ReplayWindow::record`] only after the frame authenticated, so a forged
//! frame can neither mark a counter as seen nor slide the window forward.

use crate::error::SframeError;

/// Largest replay window accepted (counters tracked per KID). 65 536 frames of 20 ms audio is
/// over 20 minutes, and costs 8 KiB per KID.
pub const MAX_REPLAY_WINDOW: u64 = 1 << 16;

/// Replay-protection settings of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// How many counters below the highest accepted one are still accepted (once each).
    /// A counter `ctr` is too old when `highest - ctr >= window`. Default 128 (2.56 s of 20 ms
    /// frames). Must be in `1..=MAX_REPLAY_WINDOW`.
    pub window: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self { window: 128 }
    }
}

impl ReplayConfig {
    /// Checks the window is in range.
    ///
    /// # Errors
    /// [`SframeError::InvalidReplayWindow`] outside `1..=MAX_REPLAY_WINDOW`.
    pub fn validate(&self) -> Result<(), SframeError> {
        if (1..=MAX_REPLAY_WINDOW).contains(&self.window) {
            Ok(())
        } else {
            Err(SframeError::InvalidReplayWindow {
                window: self.window,
                max: MAX_REPLAY_WINDOW,
            })
        }
    }
}

/// What the window says about a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Not seen before and inside (or ahead of) the window.
    Fresh,
    /// Already accepted.
    Duplicate,
    /// Below the window: cannot tell whether it was seen, so it is refused.
    TooOld,
}

/// The replay state of one KID.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    window: u64,
    highest: Option<u64>,
    /// Ring of `bits.len() * 64 >= window` slots; counter `c` lives in slot `c % capacity`.
    /// Slots of counters in `(highest - capacity, highest]` are exact, others are cleared.
    bits: Vec<u64>,
}

impl ReplayWindow {
    /// An empty window (nothing accepted yet).
    ///
    /// # Errors
    /// [`SframeError::InvalidReplayWindow`] if the config is out of range.
    pub fn new(config: ReplayConfig) -> Result<Self, SframeError> {
        config.validate()?;
        let words = usize::try_from(config.window.div_ceil(64))
            .map_err(|_| SframeError::Internal("replay window word count"))?;
        Ok(Self {
            window: config.window,
            highest: None,
            bits: vec![0; words],
        })
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn capacity(&self) -> u64 {
        // bits.len() <= 1024, so the product fits
        self.bits.len() as u64 * 64
    }

    fn slot(&self, ctr: u64) -> (usize, u64) {
        let index = ctr % self.capacity();
        // index < capacity <= 65 536
        ((index / 64) as usize, 1u64 << (index % 64))
    }

    fn is_set(&self, ctr: u64) -> bool {
        let (word, mask) = self.slot(ctr);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, ctr: u64, on: bool) {
        let (word, mask) = self.slot(ctr);
        if let Some(w) = self.bits.get_mut(word) {
            if on {
                *w |= mask;
            } else {
                *w &= !mask;
            }
        }
    }

    /// Classifies `ctr` without changing anything.
    pub fn check(&self, ctr: u64) -> ReplayVerdict {
        let Some(highest) = self.highest else {
            return ReplayVerdict::Fresh;
        };
        if ctr > highest {
            return ReplayVerdict::Fresh;
        }
        if highest - ctr >= self.window {
            ReplayVerdict::TooOld
        } else if self.is_set(ctr) {
            ReplayVerdict::Duplicate
        } else {
            ReplayVerdict::Fresh
        }
    }

    /// Marks `ctr` as accepted, sliding the window when it is a new highest. Call only after the
    /// frame authenticated; a counter that [`Self::check`] does not call fresh is left alone.
    pub fn record(&mut self, ctr: u64) {
        if self.check(ctr) != ReplayVerdict::Fresh {
            return;
        }
        match self.highest {
            Some(highest) if ctr <= highest => {}
            previous => {
                // Slots of the counters we skip over still hold counters a whole ring older.
                let capacity = self.capacity();
                let first_new = previous.map_or(0, |h| h + 1);
                if ctr - first_new >= capacity {
                    self.bits.fill(0);
                } else {
                    for skipped in first_new..ctr {
                        self.set(skipped, false);
                    }
                }
                self.highest = Some(ctr);
            }
        }
        self.set(ctr, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(size: u64) -> ReplayWindow {
        ReplayWindow::new(ReplayConfig { window: size }).expect("valid")
    }

    #[test]
    fn config_range_is_enforced() {
        assert!(ReplayConfig { window: 0 }.validate().is_err());
        assert!(
            ReplayConfig {
                window: MAX_REPLAY_WINDOW + 1
            }
            .validate()
            .is_err()
        );
        assert!(ReplayConfig { window: 1 }.validate().is_ok());
        assert_eq!(ReplayConfig::default().window, 128);
    }

    #[test]
    fn in_order_duplicates_and_old() {
        let mut w = window(128);
        for ctr in 0..300 {
            assert_eq!(w.check(ctr), ReplayVerdict::Fresh);
            w.record(ctr);
            assert_eq!(w.check(ctr), ReplayVerdict::Duplicate);
        }
        assert_eq!(w.highest(), Some(299));
        assert_eq!(w.check(299 - 127), ReplayVerdict::Duplicate);
        assert_eq!(w.check(299 - 128), ReplayVerdict::TooOld);
        assert_eq!(w.check(0), ReplayVerdict::TooOld);
    }

    #[test]
    fn reordering_inside_window_is_accepted_once() {
        let mut w = window(128);
        w.record(1000);
        for ctr in (1000 - 127..1000).rev() {
            assert_eq!(w.check(ctr), ReplayVerdict::Fresh, "ctr {ctr}");
            w.record(ctr);
            assert_eq!(w.check(ctr), ReplayVerdict::Duplicate);
        }
        assert_eq!(w.check(1000 - 128), ReplayVerdict::TooOld);
    }

    #[test]
    fn jumps_clear_stale_slots() {
        for size in [1, 63, 64, 65, 128, 1000] {
            let mut w = window(size);
            w.record(5);
            // A jump of exactly one ring: slot of 5 is reused by 5 + capacity.
            let capacity = size.div_ceil(64) * 64;
            for ctr in [5 + capacity - 1, 5 + capacity, 5 + 3 * capacity + 7] {
                assert_eq!(w.check(ctr), ReplayVerdict::Fresh, "size {size} ctr {ctr}");
                w.record(ctr);
            }
            let top = 5 + 3 * capacity + 7;
            for back in 1..size {
                assert_eq!(
                    w.check(top - back),
                    ReplayVerdict::Fresh,
                    "size {size} back {back}"
                );
            }
            assert_eq!(w.check(top - size), ReplayVerdict::TooOld);
        }
    }

    #[test]
    fn window_of_one_keeps_only_highest() {
        let mut w = window(1);
        w.record(10);
        assert_eq!(w.check(10), ReplayVerdict::Duplicate);
        assert_eq!(w.check(9), ReplayVerdict::TooOld);
        assert_eq!(w.check(11), ReplayVerdict::Fresh);
    }

    #[test]
    fn extreme_counters() {
        let mut w = window(128);
        w.record(u64::MAX);
        assert_eq!(w.check(u64::MAX), ReplayVerdict::Duplicate);
        assert_eq!(w.check(u64::MAX - 1), ReplayVerdict::Fresh);
        assert_eq!(w.check(0), ReplayVerdict::TooOld);
        let mut w = window(128);
        w.record(0);
        assert_eq!(w.check(0), ReplayVerdict::Duplicate);
        w.record(u64::MAX);
        assert_eq!(w.check(0), ReplayVerdict::TooOld);
    }

    /// The bitmap agrees with a set of every accepted counter, under random arrivals.
    #[test]
    fn matches_reference_model() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for size in [1, 64, 100, 128] {
            let mut w = window(size);
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u64;
            for _ in 0..20_000 {
                let r = next();
                let ctr = if r % 4 == 0 {
                    top + r % 300
                } else {
                    top.saturating_sub(r % 200)
                };
                let expected = match seen.last() {
                    None => ReplayVerdict::Fresh,
                    Some(&h) if ctr > h => ReplayVerdict::Fresh,
                    Some(&h) if h - ctr >= size => ReplayVerdict::TooOld,
                    Some(_) if seen.contains(&ctr) => ReplayVerdict::Duplicate,
                    Some(_) => ReplayVerdict::Fresh,
                };
                assert_eq!(w.check(ctr), expected, "size {size} ctr {ctr}");
                if expected == ReplayVerdict::Fresh && r % 7 != 0 {
                    w.record(ctr);
                    seen.insert(ctr);
                    top = top.max(ctr);
                }
            }
        }
    }
}

//! A periodic media deadline (capture or playout) that a wake-up for another reason may meet
//! a little early.

use std::time::{Duration, Instant};

/// How many missed periods a [`FrameClock`] catches up one by one before it skips ahead.
pub(crate) const MAX_CATCH_UP: u32 = 3;

/// A periodic deadline: when a job (capture one frame, play one frame) is next due.
#[derive(Debug, Clone)]
pub(crate) struct FrameClock {
    /// When the job is next due; `None` while the clock is stopped.
    next: Option<Instant>,
    period: Duration,
}

impl FrameClock {
    /// A stopped clock ticking every `period` once started.
    pub(crate) fn new(period: Duration) -> Self {
        Self { next: None, period }
    }

    pub(crate) fn start_at(&mut self, at: Instant) {
        self.next = Some(at);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.next.is_some()
    }

    /// When the job is next due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Whether the job is due at `now`, or within `early` of it.
    pub(crate) fn due(&self, now: Instant, early: Duration) -> bool {
        self.next.is_some_and(|next| next <= now + early)
    }

    /// One period later. A clock that fell a little behind (a thread woken a few
    /// milliseconds late) stays behind and is due again at once, so those periods are caught
    /// up one by one. One more than [`MAX_CATCH_UP`] periods behind (a stalled or frozen
    /// thread, a blocking listener) skips to the first deadline after `now` and returns how
    /// many periods it skipped: running them in a burst would send the peer a train of frames
    /// it has already given up on.
    pub(crate) fn advance(&mut self, now: Instant) -> u64 {
        let Some(next) = self.next.as_mut() else {
            return 0;
        };
        *next += self.period;
        if *next > now {
            return 0;
        }
        let overdue = now.duration_since(*next).as_nanos() / self.period.as_nanos().max(1) + 1;
        if overdue <= u128::from(MAX_CATCH_UP) {
            return 0;
        }
        let skipped = u32::try_from(overdue).unwrap_or(u32::MAX);
        *next += self.period.saturating_mul(skipped);
        u64::from(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_clock_is_due_on_time_or_within_the_early_window_and_keeps_its_phase() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let early = ms(5);
        let mut clock = FrameClock::new(ms(20));
        assert!(!clock.is_running());
        assert!(
            !clock.due(t0 + ms(1000), early),
            "a stopped clock is never due"
        );
        clock.start_at(t0 + ms(10));
        assert!(!clock.due(t0, early), "10 ms ahead is outside the window");
        assert!(clock.due(t0 + ms(6), early), "4 ms ahead is inside it");
        assert!(
            !clock.due(t0 + ms(6), Duration::ZERO),
            "not due yet without a window"
        );
        assert!(clock.due(t0 + ms(10), Duration::ZERO));
        // Met early: the next deadline is a period after the nominal one, not after `now`.
        assert_eq!(clock.advance(t0 + ms(10)), 0);
        assert_eq!(clock.next, Some(t0 + ms(30)));
        // A clock left a little behind stays due until every missed period is caught up.
        let late = t0 + ms(75);
        let mut caught_up = 0;
        while clock.due(late, Duration::ZERO) {
            assert_eq!(clock.advance(late), 0);
            caught_up += 1;
        }
        assert_eq!(caught_up, 3, "30, 50 and 70 ms were missed");
        assert_eq!(clock.next, Some(t0 + ms(90)));
        // Far behind (a thread stalled for a second), it runs once and skips the rest.
        let stalled = t0 + ms(1_095);
        assert!(clock.due(stalled, Duration::ZERO));
        // Due were 90, 110, ..., 1090 ms: 51 periods; this tick runs one, 50 are skipped.
        assert_eq!(clock.advance(stalled), 50);
        assert_eq!(clock.next, Some(t0 + ms(1_110)));
        assert!(!clock.due(stalled, Duration::ZERO));
    }
}

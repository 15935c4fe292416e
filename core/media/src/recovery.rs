//! When a sound device stream counts as lost, and when to try reopening it: an IO-free state
//! machine fed with `now` and the stream's counters, so the timing is tested on a virtual
//! clock ([`crate::device`] is its driver).
//!
//! A stream error is not a lost device. Through the ALSA `pulse` plugin, cpal reports bursts
//! of `snd_pcm_avail_delay` I/O errors when a stream starts, then the audio flows; a server
//! that went away shows as `snd_pcm_poll_descriptors_revents` errors without end and no more
//! data callbacks. So a stream is lost when the host says the device is gone (its stream
//! thread ends), or when errors keep arriving while no data callback has run for
//! [`RecoveryPolicy::stall_after`]. Xruns are never a loss.
//!
//! A lost stream is reopened at once, and again after a growing pause while reopening fails;
//! after [`RecoveryPolicy::attempts_before_lost`] failures the loss is reported to the
//! application, and reopening goes on every [`RecoveryPolicy::max_backoff`].
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Timing of loss detection and reopening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// How long errors must keep arriving with no data callback before the stream is lost.
    pub stall_after: Duration,
    /// Pause after the first failed reopening; doubled after each further failure.
    pub first_backoff: Duration,
    /// The longest pause between two reopenings.
    pub max_backoff: Duration,
    /// Failed reopenings after which the loss is reported ([`Verdict::ReportLost`]).
    pub attempts_before_lost: u32,
}

impl Default for RecoveryPolicy {
    /// Detection within 60 ms of errors without audio, so that with one frame (20 ms) to
    /// notice and a reopening of a few tens of milliseconds the device is back within 200 ms.
    fn default() -> Self {
        Self {
            stall_after: Duration::from_millis(60),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            attempts_before_lost: 4,
        }
    }
}

/// The counters of one stream, as its callbacks left them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Data callbacks run so far.
    pub callbacks: u64,
    /// Errors that were neither xruns nor a device gone.
    pub errors: u64,
    /// The host said the device is gone (its stream has stopped for good).
    pub gone: bool,
}

/// What the driver must do after [`StreamWatch::observe`] or a reopening's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Carry,
    /// Open the device again (off the media thread); report the outcome with
    /// [`StreamWatch::reopened`] or [`StreamWatch::reopen_failed`].
    Reopen,
    /// Tell the application the device is lost (reopening keeps being tried).
    ReportLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The stream is in use. `errors_since`: when errors were first seen since the last data
    /// callback.
    Healthy {
        seen: StreamCounters,
        errors_since: Option<Instant>,
    },
    /// A reopening is under way.
    Reopening { failures: u32 },
    /// The last reopening failed; the next is due at `at`.
    Waiting { failures: u32, at: Instant },
}

/// Watches one stream: see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct StreamWatch {
    policy: RecoveryPolicy,
    state: State,
    losses: u64,
}

impl StreamWatch {
    /// Watches a stream just opened.
    pub fn new(policy: RecoveryPolicy) -> Self {
        Self {
            policy,
            state: State::Healthy {
                seen: StreamCounters::default(),
                errors_since: None,
            },
            losses: 0,
        }
    }

    /// Whether the stream is in use (not lost, not being reopened).
    pub fn is_healthy(&self) -> bool {
        matches!(self.state, State::Healthy { .. })
    }

    /// Streams declared lost so far.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// The stream's counters at `now`; also fires a reopening that is due.
    pub fn observe(&mut self, now: Instant, counters: StreamCounters) -> Verdict {
        match self.state {
            State::Healthy { seen, errors_since } => {
                let progressed = counters.callbacks > seen.callbacks;
                let erring = counters.errors > seen.errors;
                let errors_since = if progressed {
                    None
                } else if erring {
                    Some(errors_since.unwrap_or(now))
                } else {
                    errors_since
                };
                let stalled = erring
                    && errors_since.is_some_and(|t| {
                        now.saturating_duration_since(t) >= self.policy.stall_after
                    });
                if counters.gone || stalled {
                    self.losses += 1;
                    self.state = State::Reopening { failures: 0 };
                    return Verdict::Reopen;
                }
                self.state = State::Healthy {
                    seen: counters,
                    errors_since: if progressed { None } else { errors_since },
                };
                Verdict::Carry
            }
            State::Reopening { .. } => Verdict::Carry,
            State::Waiting { failures, at } => {
                if now >= at {
                    self.state = State::Reopening { failures };
                    Verdict::Reopen
                } else {
                    Verdict::Carry
                }
            }
        }
    }

    /// A reopening succeeded: a new stream (counters from zero) is in use.
    pub fn reopened(&mut self) {
        self.reset();
    }

    /// A reopening failed at `now`; says whether to report the loss now (once, after
    /// [`RecoveryPolicy::attempts_before_lost`] failures).
    pub fn reopen_failed(&mut self, now: Instant) -> Verdict {
        let failures = match self.state {
            State::Reopening { failures } => failures + 1,
            // Not waiting for a reopening: nothing to count.
            _ => return Verdict::Carry,
        };
        let doublings = failures.saturating_sub(1).min(16);
        let backoff = self
            .policy
            .first_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.policy.max_backoff);
        self.state = State::Waiting {
            failures,
            at: now + backoff,
        };
        if failures == self.policy.attempts_before_lost {
            Verdict::ReportLost
        } else {
            Verdict::Carry
        }
    }

    /// Another stream was swapped in (a device switch): watch it from zero, forgetting any
    /// reopening under way.
    pub fn reset(&mut self) {
        self.state = State::Healthy {
            seen: StreamCounters::default(),
            errors_since: None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn counters(callbacks: u64, errors: u64) -> StreamCounters {
        StreamCounters {
            callbacks,
            errors,
            gone: false,
        }
    }

    #[test]
    fn an_error_burst_while_audio_flows_is_not_a_loss() {
        let t0 = Instant::now();
        let mut watch = StreamWatch::new(RecoveryPolicy::default());
        // The pulse plugin's start: hundreds of errors, then callbacks every 10 ms.
        assert_eq!(watch.observe(t0, counters(0, 748)), Verdict::Carry);
        for i in 1..500u64 {
            let v = watch.observe(t0 + MS * (20 * i as u32), counters(2 * i, 748 + i));
            assert_eq!(v, Verdict::Carry, "frame {i}");
        }
        assert!(watch.is_healthy());
        assert_eq!(watch.losses(), 0);
    }

    #[test]
    fn errors_that_stop_are_not_a_loss_even_before_audio_flows() {
        let t0 = Instant::now();
        let mut watch = StreamWatch::new(RecoveryPolicy::default());
        assert_eq!(watch.observe(t0, counters(0, 700)), Verdict::Carry);
        // The server takes 1.5 s to pull the first audio; no more errors meanwhile.
        for i in 1..75u32 {
            assert_eq!(
                watch.observe(t0 + MS * (20 * i), counters(0, 700)),
                Verdict::Carry
            );
        }
        assert!(watch.is_healthy());
    }

    #[test]
    fn errors_without_callbacks_are_a_loss_after_the_stall_time() {
        let t0 = Instant::now();
        let mut watch = StreamWatch::new(RecoveryPolicy::default());
        assert_eq!(watch.observe(t0, counters(100, 0)), Verdict::Carry);
        // The server is killed: errors without end, no callback.
        assert_eq!(
            watch.observe(t0 + MS * 20, counters(100, 5_000)),
            Verdict::Carry
        );
        assert_eq!(
            watch.observe(t0 + MS * 40, counters(100, 10_000)),
            Verdict::Carry
        );
        assert_eq!(
            watch.observe(t0 + MS * 60, counters(100, 15_000)),
            Verdict::Carry
        );
        assert_eq!(
            watch.observe(t0 + MS * 80, counters(100, 20_000)),
            Verdict::Reopen
        );
        assert!(!watch.is_healthy());
        assert_eq!(watch.losses(), 1);
        // Reopening under way: nothing more to do.
        assert_eq!(
            watch.observe(t0 + MS * 100, counters(100, 25_000)),
            Verdict::Carry
        );
        watch.reopened();
        assert!(watch.is_healthy());
        assert_eq!(watch.observe(t0 + MS * 120, counters(3, 0)), Verdict::Carry);
    }

    #[test]
    fn a_device_gone_is_a_loss_at_once() {
        let t0 = Instant::now();
        let mut watch = StreamWatch::new(RecoveryPolicy::default());
        let gone = StreamCounters {
            callbacks: 10,
            errors: 1,
            gone: true,
        };
        assert_eq!(watch.observe(t0, gone), Verdict::Reopen);
    }

    #[test]
    fn failed_reopenings_back_off_then_report_the_loss_once_and_keep_trying() {
        let t0 = Instant::now();
        let policy = RecoveryPolicy::default();
        let mut watch = StreamWatch::new(policy);
        let gone = StreamCounters {
            gone: true,
            ..StreamCounters::default()
        };
        assert_eq!(watch.observe(t0, gone), Verdict::Reopen);
        let mut now = t0;
        let mut pauses = Vec::new();
        let mut reported = 0;
        for _ in 0..8 {
            if watch.reopen_failed(now) == Verdict::ReportLost {
                reported += 1;
            }
            // Step the virtual clock by 10 ms until the next reopening fires.
            let failed_at = now;
            loop {
                now += MS * 10;
                if watch.observe(now, gone) == Verdict::Reopen {
                    break;
                }
            }
            pauses.push((now - failed_at).as_millis());
        }
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(reported, 1);
        watch.reopened();
        assert!(watch.is_healthy());
    }

    #[test]
    fn a_switch_forgets_a_reopening_under_way() {
        let t0 = Instant::now();
        let mut watch = StreamWatch::new(RecoveryPolicy::default());
        let gone = StreamCounters {
            gone: true,
            ..StreamCounters::default()
        };
        assert_eq!(watch.observe(t0, gone), Verdict::Reopen);
        watch.reset();
        assert_eq!(watch.reopen_failed(t0), Verdict::Carry);
        assert!(watch.is_healthy());
        assert_eq!(watch.observe(t0 + MS, counters(1, 0)), Verdict::Carry);
    }
}

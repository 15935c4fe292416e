//! What to do to packets: loss model, delay, jitter, reordering, duplication, rate limit.
//!
//! An [`ImpairmentConfig`] is plain data with public fields; [`ImpairmentConfig::validate`]
//! (called by [`Impairment::new`](crate::Impairment::new)) refuses values that make no sense,
//! such as a probability outside `[0, 1]`.

use std::time::Duration;

/// Longest delay, jitter or reorder hold-back accepted.
///
/// A bound keeps `Instant + Duration` far from overflow and catches unit mistakes
/// (seconds given where milliseconds were meant).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Default bound on the number of packets held by the model at once (as netem's `limit`).
pub const DEFAULT_QUEUE_LIMIT: usize = 10_000;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A probability is NaN or outside `[0, 1]`.
    #[error("{field} = {value} is not a probability in [0, 1]")]
    ProbabilityOutOfRange {
        /// Name of the offending field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A percentage is NaN or outside `[0, 100]`.
    #[error("{field} = {value} is not a percentage in [0, 100]")]
    PercentOutOfRange {
        /// Name of the offending field.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A mean loss burst must be at least one packet long (and finite).
    #[error("mean burst length {0} must be a finite number >= 1")]
    BurstTooShort(f64),
    /// The requested mean loss cannot be reached with the requested burst length:
    /// the good-to-bad transition probability would exceed 1 (or the loss is 100 %).
    #[error("mean loss {loss_percent} % is unreachable with mean burst length {mean_burst_len}")]
    LossUnreachable {
        /// Requested mean loss in percent.
        loss_percent: f64,
        /// Requested mean burst length in packets.
        mean_burst_len: f64,
    },
    /// The Gilbert-Elliott bad state can be entered (`p_good_to_bad > 0`) but never left
    /// (`p_bad_to_good = 0`) while it loses packets: after the first loss burst starts,
    /// every packet would be lost forever.
    #[error("Gilbert-Elliott bad state is absorbing (p_bad_to_good = 0) while reachable")]
    AbsorbingBadState,
    /// A duration exceeds [`MAX_DELAY`].
    #[error("{field} = {value:?} exceeds the maximum of {max:?}", max = MAX_DELAY)]
    DurationTooLong {
        /// Name of the offending field.
        field: &'static str,
        /// The value given.
        value: Duration,
    },
    /// Reordering was requested with a zero hold-back, which would reorder nothing.
    #[error("reorder_pct > 0 needs a non-zero reorder_delay")]
    ReorderWithoutDelay,
    /// The queue limit must hold at least one packet.
    #[error("queue_limit must be at least 1")]
    ZeroQueueLimit,
    /// A rate limit of zero bits per second would never send anything.
    #[error("rate limit must be at least 1 bit per second")]
    ZeroRate,
}

/// Which packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum LossModel {
    /// Nothing is lost.
    #[default]
    None,
    /// Each packet is lost independently with probability `p`.
    Random {
        /// Loss probability in `[0, 1]`.
        p: f64,
    },
    /// Two-state Markov chain (Gilbert-Elliott): losses come in bursts, as on a congested
    /// or fading link. The chain starts in the good state; for each packet, the packet is
    /// lost with the loss probability of the current state, then the state changes with
    /// the transition probability of the current state.
    GilbertElliott {
        /// Probability of moving from the good to the bad state after a packet.
        p_good_to_bad: f64,
        /// Probability of moving from the bad to the good state after a packet.
        p_bad_to_good: f64,
        /// Loss probability while in the good state.
        loss_in_good: f64,
        /// Loss probability while in the bad state.
        loss_in_bad: f64,
    },
}

impl LossModel {
    /// Independent loss of `loss_percent` % of packets.
    ///
    /// # Errors
    /// [`ConfigError::PercentOutOfRange`] unless `0 <= loss_percent <= 100`.
    pub fn random_percent(loss_percent: f64) -> Result<Self, ConfigError> {
        check_percent("loss_percent", loss_percent)?;
        Ok(Self::Random {
            p: loss_percent / 100.0,
        })
    }

    /// Bursty loss with a long-run mean of `loss_percent` % and bursts of
    /// `mean_burst_len` consecutive packets on average.
    ///
    /// Every packet is lost in the bad state and none in the good one (the "simple Gilbert"
    /// model), so a burst is a stay in the bad state: its length is geometric with mean
    /// `1 / p_bad_to_good`, and the stationary share of the bad state,
    /// `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`, is the mean loss.
    /// `mean_burst_len = 1` makes every loss an isolated one (`p_bad_to_good = 1`: a lost packet
    /// is always followed by a delivered one), which is not the same as independent loss; use
    /// [`ImpairmentConfig::simple`] for that.
    ///
    /// # Errors
    /// [`ConfigError::PercentOutOfRange`], [`ConfigError::BurstTooShort`], or
    /// [`ConfigError::LossUnreachable`] when the loss is too high for that burst length
    /// (at 1-packet bursts, loss must stay at or below 50 %).
    pub fn gilbert_elliott(loss_percent: f64, mean_burst_len: f64) -> Result<Self, ConfigError> {
        check_percent("loss_percent", loss_percent)?;
        if !mean_burst_len.is_finite() || mean_burst_len < 1.0 {
            return Err(ConfigError::BurstTooShort(mean_burst_len));
        }
        let loss = loss_percent / 100.0;
        let p_bad_to_good = 1.0 / mean_burst_len;
        let unreachable = ConfigError::LossUnreachable {
            loss_percent,
            mean_burst_len,
        };
        if loss >= 1.0 {
            return Err(unreachable);
        }
        let p_good_to_bad = loss * p_bad_to_good / (1.0 - loss);
        if p_good_to_bad > 1.0 {
            return Err(unreachable);
        }
        Ok(Self::GilbertElliott {
            p_good_to_bad,
            p_bad_to_good,
            loss_in_good: 0.0,
            loss_in_bad: 1.0,
        })
    }

    /// Long-run fraction of packets lost, in `[0, 1]`.
    #[must_use]
    pub fn mean_loss(&self) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Random { p } => p,
            Self::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                let leave_total = p_good_to_bad + p_bad_to_good;
                if leave_total == 0.0 {
                    // Never leaves the starting (good) state.
                    loss_in_good
                } else {
                    let share_bad = p_good_to_bad / leave_total;
                    share_bad * loss_in_bad + (1.0 - share_bad) * loss_in_good
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            Self::None => Ok(()),
            Self::Random { p } => check_probability("loss.p", p),
            Self::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                check_probability("loss.p_good_to_bad", p_good_to_bad)?;
                check_probability("loss.p_bad_to_good", p_bad_to_good)?;
                check_probability("loss.loss_in_good", loss_in_good)?;
                check_probability("loss.loss_in_bad", loss_in_bad)?;
                if p_good_to_bad > 0.0 && p_bad_to_good == 0.0 && loss_in_bad > 0.0 {
                    return Err(ConfigError::AbsorbingBadState);
                }
                Ok(())
            }
        }
    }
}

/// Shape of the random extra delay added on top of [`ImpairmentConfig::delay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum JitterDistribution {
    /// Uniform in `[0, jitter]`.
    #[default]
    Uniform,
    /// Bell-shaped in `[0, jitter]`, centred on `jitter / 2` with a standard deviation of
    /// about `jitter / 7` (mean of four uniform draws: close to normal, but bounded, so the
    /// configured maximum is never exceeded).
    Bell,
}

/// Whether random delay may change packet order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeliveryOrder {
    /// Packets leave in the order they were submitted, as through one queue: a packet
    /// whose sampled delay would make it overtake an earlier one waits for that one.
    /// Jitter then shows as bunching, never as reordering. Only
    /// [`ImpairmentConfig::reorder_pct`] reorders.
    #[default]
    Fifo,
    /// Each packet leaves when its own sampled delay expires, so jitter larger than the
    /// gap between packets reorders them (as with multipath or `tc netem` without a rate).
    ByDeadline,
}

/// A bottleneck link: packets are serialised one after another at this rate before the
/// propagation delay applies, so bursts queue up (and overflow the queue limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Link rate in bits per second (each packet's size is its
    /// [`WireLen::wire_len`](crate::WireLen::wire_len) in bytes).
    pub bits_per_second: u64,
}

/// Everything the model does to packets. [`Default`] is no impairment at all: every
/// packet is delivered immediately, once, in order.
///
/// ```
/// use std::time::Duration;
/// use viska_netem::{ImpairmentConfig, LossModel};
///
/// let config = ImpairmentConfig {
///     loss: LossModel::gilbert_elliott(5.0, 3.0)?,
///     delay: Duration::from_millis(40),
///     jitter: Duration::from_millis(20),
///     seed: 7,
///     ..ImpairmentConfig::default()
/// };
/// config.validate()?;
/// # Ok::<(), viska_netem::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairmentConfig {
    /// Which packets are lost.
    pub loss: LossModel,
    /// Fixed one-way delay added to every packet.
    pub delay: Duration,
    /// Maximum random extra delay added to every packet, drawn from [`Self::jitter_distribution`].
    pub jitter: Duration,
    /// Shape of the jitter.
    pub jitter_distribution: JitterDistribution,
    /// Whether jitter may reorder packets.
    pub order: DeliveryOrder,
    /// Percentage of packets (in `[0, 100]`) held back by an extra [`Self::reorder_delay`]
    /// so that later packets overtake them.
    pub reorder_pct: f64,
    /// Extra hold-back of a packet chosen for reordering.
    pub reorder_delay: Duration,
    /// Percentage of packets (in `[0, 100]`) delivered twice; the copy gets its own jitter.
    pub duplicate_pct: f64,
    /// Optional bottleneck rate.
    pub rate: Option<RateLimit>,
    /// Maximum number of packets held at once; a packet submitted to a full model is
    /// dropped and counted in [`ImpairmentStats::dropped_queue_full`](crate::ImpairmentStats::dropped_queue_full).
    pub queue_limit: usize,
    /// Seed of the random generators: the same seed and the same input give the same output.
    pub seed: u64,
}

impl Default for ImpairmentConfig {
    fn default() -> Self {
        Self {
            loss: LossModel::None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_distribution: JitterDistribution::Uniform,
            order: DeliveryOrder::Fifo,
            reorder_pct: 0.0,
            reorder_delay: Duration::from_millis(10),
            duplicate_pct: 0.0,
            rate: None,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            seed: 0,
        }
    }
}

impl ImpairmentConfig {
    /// The impairment the demo command line describes: `loss_percent` % independent loss,
    /// `delay` fixed delay and up to `jitter` uniform extra delay without reordering.
    ///
    /// # Errors
    /// As [`Self::validate`].
    pub fn simple(
        loss_percent: f64,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        let loss = if loss_percent == 0.0 {
            LossModel::None
        } else {
            LossModel::random_percent(loss_percent)?
        };
        let config = Self {
            loss,
            delay,
            jitter,
            seed,
            ..Self::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Whether this configuration leaves packets untouched (no loss, delay, jitter,
    /// reordering, duplication or rate limit).
    #[must_use]
    pub fn is_identity(&self) -> bool {
        self.loss.mean_loss() == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.reorder_pct == 0.0
            && self.duplicate_pct == 0.0
            && self.rate.is_none()
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.loss.validate()?;
        check_duration("delay", self.delay)?;
        check_duration("jitter", self.jitter)?;
        check_duration("reorder_delay", self.reorder_delay)?;
        check_percent("reorder_pct", self.reorder_pct)?;
        check_percent("duplicate_pct", self.duplicate_pct)?;
        if self.reorder_pct > 0.0 && self.reorder_delay.is_zero() {
            return Err(ConfigError::ReorderWithoutDelay);
        }
        if self.queue_limit == 0 {
            return Err(ConfigError::ZeroQueueLimit);
        }
        if let Some(rate) = self.rate {
            if rate.bits_per_second == 0 {
                return Err(ConfigError::ZeroRate);
            }
        }
        Ok(())
    }
}

fn check_probability(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::ProbabilityOutOfRange { field, value })
    }
}

fn check_percent(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::PercentOutOfRange { field, value })
    }
}

fn check_duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value <= MAX_DELAY {
        Ok(())
    } else {
        Err(ConfigError::DurationTooLong { field, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_identity() {
        let config = ImpairmentConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.is_identity());
    }

    #[test]
    fn probabilities_outside_unit_interval_are_refused() {
        for p in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let config = ImpairmentConfig {
                loss: LossModel::Random { p },
                ..ImpairmentConfig::default()
            };
            assert!(
                matches!(
                    config.validate(),
                    Err(ConfigError::ProbabilityOutOfRange {
                        field: "loss.p",
                        ..
                    })
                ),
                "p = {p}"
            );
        }
        let config = ImpairmentConfig {
            loss: LossModel::GilbertElliott {
                p_good_to_bad: 0.1,
                p_bad_to_good: 0.5,
                loss_in_good: 0.0,
                loss_in_bad: 1.01,
            },
            ..ImpairmentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ProbabilityOutOfRange {
                field: "loss.loss_in_bad",
                ..
            })
        ));
    }

    #[test]
    fn percentages_outside_range_are_refused() {
        let config = ImpairmentConfig {
            duplicate_pct: 101.0,
            ..ImpairmentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::PercentOutOfRange {
                field: "duplicate_pct",
                ..
            })
        ));
        let config = ImpairmentConfig {
            reorder_pct: -1.0,
            ..ImpairmentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::PercentOutOfRange {
                field: "reorder_pct",
                ..
            })
        ));
        assert!(LossModel::random_percent(100.5).is_err());
    }

    #[test]
    fn other_invalid_values_are_refused() {
        let too_long = ImpairmentConfig {
            jitter: MAX_DELAY + Duration::from_millis(1),
            ..ImpairmentConfig::default()
        };
        assert!(matches!(
            too_long.validate(),
            Err(ConfigError::DurationTooLong {
                field: "jitter",
                ..
            })
        ));
        let no_holdback = ImpairmentConfig {
            reorder_pct: 5.0,
            reorder_delay: Duration::ZERO,
            ..ImpairmentConfig::default()
        };
        assert_eq!(
            no_holdback.validate(),
            Err(ConfigError::ReorderWithoutDelay)
        );
        let no_queue = ImpairmentConfig {
            queue_limit: 0,
            ..ImpairmentConfig::default()
        };
        assert_eq!(no_queue.validate(), Err(ConfigError::ZeroQueueLimit));
        let zero_rate = ImpairmentConfig {
            rate: Some(RateLimit { bits_per_second: 0 }),
            ..ImpairmentConfig::default()
        };
        assert_eq!(zero_rate.validate(), Err(ConfigError::ZeroRate));
        let absorbing = ImpairmentConfig {
            loss: LossModel::GilbertElliott {
                p_good_to_bad: 0.01,
                p_bad_to_good: 0.0,
                loss_in_good: 0.0,
                loss_in_bad: 1.0,
            },
            ..ImpairmentConfig::default()
        };
        assert_eq!(absorbing.validate(), Err(ConfigError::AbsorbingBadState));
    }

    #[test]
    fn gilbert_elliott_constructor_matches_requested_mean_loss() {
        for (loss_percent, burst) in [(1.0, 1.0), (5.0, 2.0), (10.0, 4.0), (30.0, 10.0)] {
            let model = LossModel::gilbert_elliott(loss_percent, burst).expect("valid");
            assert!((model.mean_loss() - loss_percent / 100.0).abs() < 1e-12);
            let LossModel::GilbertElliott { p_bad_to_good, .. } = model else {
                panic!("wrong variant {model:?}");
            };
            assert!((1.0 / p_bad_to_good - burst).abs() < 1e-12);
        }
        assert_eq!(
            LossModel::gilbert_elliott(5.0, 0.5),
            Err(ConfigError::BurstTooShort(0.5))
        );
        assert!(matches!(
            LossModel::gilbert_elliott(60.0, 1.0),
            Err(ConfigError::LossUnreachable { .. })
        ));
        assert!(matches!(
            LossModel::gilbert_elliott(100.0, 3.0),
            Err(ConfigError::LossUnreachable { .. })
        ));
    }

    #[test]
    fn simple_builds_the_demo_configuration() {
        let config = ImpairmentConfig::simple(10.0, Duration::from_millis(50), Duration::ZERO, 1)
            .expect("valid");
        assert_eq!(config.loss, LossModel::Random { p: 0.1 });
        assert_eq!(config.delay, Duration::from_millis(50));
        assert!(!config.is_identity());
        let identity =
            ImpairmentConfig::simple(0.0, Duration::ZERO, Duration::ZERO, 1).expect("valid");
        assert!(identity.is_identity());
        assert!(ImpairmentConfig::simple(-3.0, Duration::ZERO, Duration::ZERO, 1).is_err());
    }
}

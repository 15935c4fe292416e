//! The impairment state machine: packets in with a time, packets out when their time comes.
//!
//! [`Impairment`] reads no clock and sleeps nowhere: the caller passes `now` to
//! [`Impairment::submit`] and [`Impairment::poll_deliver`] and asks
//! [`Impairment::next_deadline`] when to come back.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::{
    ConfigError, DeliveryOrder, ImpairmentConfig, JitterDistribution, LossModel, RateLimit,
};

/// Size of a packet on the wire, in bytes; used by the [rate limit](crate::RateLimit).
///
/// Implemented for byte containers and for `(A, B)` pairs whose second element is a packet,
/// so that `(SocketAddr, Vec<u8>)` carries an address along with the datagram.
pub trait WireLen {
    /// Number of bytes this packet occupies on the link.
    fn wire_len(&self) -> usize;
}

impl WireLen for Vec<u8> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

impl WireLen for Box<[u8]> {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

impl WireLen for &[u8] {
    fn wire_len(&self) -> usize {
        self.len()
    }
}

impl<const N: usize> WireLen for [u8; N] {
    fn wire_len(&self) -> usize {
        N
    }
}

impl<A, B: WireLen> WireLen for (A, B) {
    fn wire_len(&self) -> usize {
        self.1.wire_len()
    }
}

/// Counters of what the model did.
///
/// Every packet is accounted for:
/// `submitted + duplicated == dropped + dropped_queue_full + delivered + queued`
/// (where `queued` is [`Impairment::queued`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImpairmentStats {
    /// Packets passed to [`Impairment::submit`].
    pub submitted: u64,
    /// Packets lost by the loss model.
    pub dropped: u64,
    /// Packets dropped because the queue was full (a duplicate copy that would not fit
    /// is not made, and counted nowhere).
    pub dropped_queue_full: u64,
    /// Extra copies scheduled by duplication.
    pub duplicated: u64,
    /// Packets delivered after a packet that was submitted later than them.
    pub reordered: u64,
    /// Packets handed out by [`Impairment::poll_deliver`], copies included.
    pub delivered: u64,
}

/// One packet waiting in the model.
struct Scheduled<T> {
    deliver_at: Instant,
    /// Breaks ties between equal deadlines in scheduling order, so that with no
    /// impairment packets come out exactly as they went in.
    schedule_order: u64,
    /// Position of the original packet in the submission sequence (shared by a duplicate).
    submission_index: u64,
    packet: T,
}

impl<T> Scheduled<T> {
    fn key(&self) -> (Instant, u64) {
        (self.deliver_at, self.schedule_order)
    }
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Scheduled<T> {}

impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Current state of the Gilbert-Elliott chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    Good,
    Bad,
}

/// Independent random streams, one per decision, so that changing one setting (say the
/// jitter) does not change which packets another setting (say the loss) picks.
struct RandomStreams {
    loss: StdRng,
    jitter: StdRng,
    reorder: StdRng,
    duplicate: StdRng,
}

impl RandomStreams {
    fn new(seed: u64) -> Self {
        // Distinct odd constants give unrelated seeds for the same user seed.
        Self {
            loss: StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
            jitter: StdRng::seed_from_u64(seed ^ 0xC2B2_AE3D_27D4_EB4F),
            reorder: StdRng::seed_from_u64(seed ^ 0x1656_67B1_9E37_79F9),
            duplicate: StdRng::seed_from_u64(seed ^ 0x27D4_EB2F_1656_67C5),
        }
    }
}

/// Draws `true` with probability `p`; never panics, whatever `p` is.
fn chance(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

/// Adds a duration to an instant, staying at `base` in the (unreachable with validated
/// durations) case where the sum does not fit.
fn later(base: Instant, by: Duration) -> Instant {
    base.checked_add(by).unwrap_or(base)
}

/// A userspace network impairment: loss, delay, jitter, reordering, duplication and a
/// rate limit applied to packets of any type `T`, driven by the caller's clock.
///
/// ```
/// use std::time::{Duration, Instant};
/// use viska_netem::{Impairment, ImpairmentConfig};
///
/// let config = ImpairmentConfig { delay: Duration::from_millis(30), ..Default::default() };
/// let mut link = Impairment::new(config)?;
/// let start = Instant::now();
/// link.submit(start, b"hello".to_vec());
/// assert_eq!(link.poll_deliver(start), None);
/// let due = link.next_deadline().expect("one packet queued");
/// assert_eq!(due, start + Duration::from_millis(30));
/// assert_eq!(link.poll_deliver(due), Some(b"hello".to_vec()));
/// # Ok::<(), viska_netem::ConfigError>(())
/// ```
pub struct Impairment<T> {
    config: ImpairmentConfig,
    rng: RandomStreams,
    channel: ChannelState,
    queue: BinaryHeap<Reverse<Scheduled<T>>>,
    /// When the bottleneck link finishes sending the last accepted packet.
    link_free_at: Option<Instant>,
    /// Latest delivery time given to an in-order packet (for [`DeliveryOrder::Fifo`]).
    last_in_order_delivery: Option<Instant>,
    next_submission_index: u64,
    next_schedule_order: u64,
    /// Highest submission index delivered so far.
    highest_delivered: Option<u64>,
    stats: ImpairmentStats,
}

impl<T> std::fmt::Debug for Impairment<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Impairment")
            .field("config", &self.config)
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> Impairment<T> {
    /// Builds a model from a configuration.
    ///
    /// # Errors
    /// The [`ConfigError`] found by [`ImpairmentConfig::validate`].
    pub fn new(config: ImpairmentConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            rng: RandomStreams::new(config.seed),
            config,
            channel: ChannelState::Good,
            queue: BinaryHeap::new(),
            link_free_at: None,
            last_in_order_delivery: None,
            next_submission_index: 0,
            next_schedule_order: 0,
            highest_delivered: None,
            stats: ImpairmentStats::default(),
        })
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ImpairmentConfig {
        &self.config
    }

    /// Replaces the configuration for packets submitted from now on; packets already
    /// queued keep their delivery times, and with [`DeliveryOrder::Fifo`] new packets
    /// still leave after them. The random streams restart from the new seed.
    ///
    /// # Errors
    /// The [`ConfigError`] found by [`ImpairmentConfig::validate`]; the model is then unchanged.
    pub fn set_config(&mut self, config: ImpairmentConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.rng = RandomStreams::new(config.seed);
        self.channel = ChannelState::Good;
        self.config = config;
        Ok(())
    }

    /// What the model has done so far.
    #[must_use]
    pub fn stats(&self) -> ImpairmentStats {
        self.stats
    }

    /// Number of packets waiting for delivery.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the next packet becomes deliverable, or `None` if none is waiting.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(next)| next.deliver_at)
    }

    /// Hands out the next packet whose delivery time is at or before `now`, earliest
    /// first (packets due at the same instant in submission order). Call until `None`.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<T> {
        let due = self
            .queue
            .peek()
            .is_some_and(|Reverse(next)| next.deliver_at <= now);
        if !due {
            return None;
        }
        let Reverse(next) = self.queue.pop()?;
        self.stats.delivered += 1;
        match self.highest_delivered {
            Some(highest) if next.submission_index < highest => self.stats.reordered += 1,
            Some(highest) if next.submission_index == highest => {}
            _ => self.highest_delivered = Some(next.submission_index),
        }
        Some(next.packet)
    }

    /// Runs the loss model for one packet: `true` if it is lost.
    fn lose_next(&mut self) -> bool {
        match self.config.loss {
            LossModel::None => false,
            LossModel::Random { p } => chance(&mut self.rng.loss, p),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_good,
                loss_in_bad,
            } => {
                let rng = &mut self.rng.loss;
                let (loss, leave, other) = match self.channel {
                    ChannelState::Good => (loss_in_good, p_good_to_bad, ChannelState::Bad),
                    ChannelState::Bad => (loss_in_bad, p_bad_to_good, ChannelState::Good),
                };
                let lost = chance(rng, loss);
                if chance(rng, leave) {
                    self.channel = other;
                }
                lost
            }
        }
    }

    /// Random extra delay in `[0, jitter]`.
    fn sample_jitter(&mut self) -> Duration {
        let jitter = self.config.jitter;
        if jitter.is_zero() {
            return Duration::ZERO;
        }
        let rng = &mut self.rng.jitter;
        let fraction = match self.config.jitter_distribution {
            JitterDistribution::Uniform => rng.random::<f64>(),
            JitterDistribution::Bell => {
                let sum: f64 = (0..4).map(|_| rng.random::<f64>()).sum();
                sum / 4.0
            }
        };
        jitter.mul_f64(fraction.clamp(0.0, 1.0))
    }

    /// When the bottleneck finishes sending a packet of `len` bytes handed to it at `now`.
    fn serialise(&mut self, now: Instant, len: usize, rate: RateLimit) -> Instant {
        let start = self.link_free_at.map_or(now, |free| free.max(now));
        let bits = (len as u128).saturating_mul(8);
        let nanos = bits.saturating_mul(1_000_000_000) / u128::from(rate.bits_per_second.max(1));
        let on_wire = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let done = later(start, on_wire);
        self.link_free_at = Some(done);
        done
    }

    /// Picks the delivery time of one copy that left the bottleneck at `departed`.
    fn delivery_time(&mut self, departed: Instant) -> Instant {
        let jitter = self.sample_jitter();
        let mut at = later(departed, self.config.delay.saturating_add(jitter));
        let held_back = chance(&mut self.rng.reorder, self.config.reorder_pct / 100.0);
        if self.config.order == DeliveryOrder::Fifo {
            if let Some(previous) = self.last_in_order_delivery {
                at = at.max(previous);
            }
            if !held_back {
                self.last_in_order_delivery = Some(at);
            }
        }
        if held_back {
            at = later(at, self.config.reorder_delay);
        }
        at
    }

    fn enqueue(&mut self, deliver_at: Instant, submission_index: u64, packet: T) {
        let schedule_order = self.next_schedule_order;
        self.next_schedule_order += 1;
        self.queue.push(Reverse(Scheduled {
            deliver_at,
            schedule_order,
            submission_index,
            packet,
        }));
    }
}

impl<T: WireLen + Clone> Impairment<T> {
    /// Offers a packet to the network at time `now`. It is dropped (loss model or full
    /// queue) or scheduled, possibly twice (duplication); collect it with
    /// [`Self::poll_deliver`] once [`Self::next_deadline`] has passed.
    ///
    /// `now` should not go backwards between calls; if it does, the earlier time is
    /// used as given (nothing panics, but delays are then measured from that time).
    pub fn submit(&mut self, now: Instant, packet: T) {
        self.stats.submitted += 1;
        let submission_index = self.next_submission_index;
        self.next_submission_index += 1;
        if self.lose_next() {
            self.stats.dropped += 1;
            return;
        }
        if self.queue.len() >= self.config.queue_limit {
            // A packet that finds the queue full never reaches the link.
            self.stats.dropped_queue_full += 1;
            return;
        }
        let departed = match self.config.rate {
            Some(rate) => self.serialise(now, packet.wire_len(), rate),
            None => now,
        };
        let duplicate = chance(&mut self.rng.duplicate, self.config.duplicate_pct / 100.0);
        let copy = duplicate.then(|| packet.clone());
        let at = self.delivery_time(departed);
        self.enqueue(at, submission_index, packet);
        // A copy that finds no room is simply not made.
        if let Some(copy) = copy.filter(|_| self.queue.len() < self.config.queue_limit) {
            let at = self.delivery_time(departed);
            self.enqueue(at, submission_index, copy);
            self.stats.duplicated += 1;
        }
    }
}

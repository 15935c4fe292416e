//! Adaptive, bounded jitter buffer for one incoming audio stream (IO-free).
//!
//! Packets are keyed by their sequence number `seq`, the sender's frame index (it advances by
//! one per frame period and jumps forward across DTX silence, hold and mute). The driver calls
//! [`JitterBuffer::push`] whenever a packet arrives and [`JitterBuffer::pop`] once per frame
//! period on its playout clock; both take `now` from the caller.
//!
//! # Delay model
//!
//! Every arrival gives an *offset* `arrival - seq * frame`. The smallest offset seen over a
//! window of recent packets is the fastest path through the network (the *base*); an
//! arrival's *relative delay* is its offset minus the base, i.e. how much later than the
//! fastest packets it came. The *current delay* is how long after its fastest possible
//! arrival the frame at the playout position is played: `now - (base + next_seq * frame)`.
//! A packet is on time when its relative delay is below the current delay.
//!
//! The *target delay* follows a peak detector on relative delays: it jumps up to a new peak
//! at once (a spike) and decays exponentially (time constant [`JitterConfig::spike_decay`])
//! afterwards, but not below the 97th percentile of the relative delays in the window (the
//! last 256 packets, about five seconds); plus a small safety margin, plus one frame while the
//! stream is losing packets (about 1 % of the last five seconds' frames or more,
//! [`JitterBuffer::is_lossy`]: the packet after a lost frame, whose in-band FEC rebuilds it,
//! is then in hand when the lost frame is due), clamped to `[min_delay, max_delay]`. The
//! RFC 3550 interarrival jitter is tracked too and reported in [`BufferStats::jitter`].
//!
//! The buffer changes its delay only in whole frames. It grows the delay by *waiting*
//! ([`Next::Wait`]: a filler frame is played and the playout position does not move) and
//! shrinks it by skipping frames. It does both on its own only where no audio is harmed:
//!
//! * a missing frame with nothing buffered after it (a stall, not a loss) is waited for while
//!   the current delay is below the target;
//! * **burst rule**: once the stream has been seen to stall (a frame handed out as a gap, with
//!   nothing buffered, whose packet arrived after all; remembered for a minute) a missing
//!   frame with nothing buffered after it is also waited for, up to
//!   [`JitterConfig::burst_wait`] per episode and never beyond `max_delay`: a network that
//!   stalls and then delivers a burst loses nothing. Bursts of *loss* (packets that never
//!   come) do not turn it on, so they are concealed at once without growing the delay; and a
//!   wait that ends in a loss (later packets came, the one waited for did not) turns it off,
//!   so one late packet (a thread scheduled late) does not make every later loss burst a
//!   longer run of concealment and a longer delay;
//! * silent frames before a new talkspurt (a packet flagged [`PushMeta::marker`]) are skipped
//!   while the current delay is above the target.
//!
//! Shrinking or growing in the middle of audio is left to the caller, who can judge the
//! signal ([`crate::playout::Playout`] drops or inserts only low-energy frames): it reads
//! [`JitterBuffer::delay_adjustment`], then pops twice in one period (drop) or plays a filler
//! frame without popping (insert).
//!
//! # Gaps, restarts, drift
//!
//! * A missing frame with later packets buffered is a loss ([`Next::Conceal`] or
//!   [`Next::RecoverFec`]). A missing frame with nothing buffered ([`Next::Gap`]) may be a
//!   loss, a stall or a DTX pause: it is counted when the next packet arrives, as lost unless
//!   that packet starts a new talkspurt. After a comfort-noise update ([`PushMeta::dtx`]) the
//!   sender has said it pauses: such a frame is [`Next::Comfort`], counted as a pause at
//!   once and never as loss, until a packet is played again. So is a jump past the ring (the peer held the call
//!   while this end played nothing from the buffer): a pause if the packet is marked, else
//!   losses.
//! * A sequence number far outside the window (further back than the capacity behind both the
//!   playout position and the newest packet received, or further ahead than the resync
//!   distance without the talkspurt marker) is a sender restart: the buffer is flushed and
//!   starts again ([`PushOutcome::Resynced`]). A packet far behind the position but newer
//!   than anything received was held up by a stall: it is late. A marked packet far ahead
//!   is a talkspurt after a long pause (a hold of minutes): the position jumps to it and
//!   what the buffer learned of the path is kept. A marked packet behind the position with
//!   nothing buffered moves the position back to it (the receiver's clock ran ahead during a
//!   pause). [`JitterBuffer::reset`] does the same on request (key
//!   change).
//! * Sender clock drift moves the base and so the current delay; the caller's adjustments
//!   (or the talkspurt rule) bring it back to the target.
//!
//! Memory is fixed at construction: a ring of `capacity_frames` slots of `slot_bytes` bytes
//! each; nothing is allocated per packet.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Bytes a slot holds by default (an Ethernet MTU; Opus voice packets are far smaller).
pub const DEFAULT_SLOT_BYTES: usize = 1500;
/// The largest capacity accepted, in frames.
pub const MAX_CAPACITY_FRAMES: usize = 4096;
/// The largest slot accepted, in bytes.
pub const MAX_SLOT_BYTES: usize = 65_536;
/// The largest `max_delay` accepted.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(10);

/// Arrival offsets kept for the base (fastest path) estimate.
const OFFSET_WINDOW: usize = 256;
/// Quantile of the window's relative delays the target covers even after the peak decayed.
const QUANTILE: f64 = 0.97;
/// Safety margin added on top of the delay peak, microseconds.
const SAFETY_MARGIN_US: f64 = 2_000.0;
/// How long a stall (a gap whose packets came after all) keeps the burst rule on, microseconds.
const STALL_MEMORY_US: i128 = 60_000_000;
/// Frames over which the recent loss is averaged (about five seconds of 20 ms frames).
const LOSS_AVERAGE_FRAMES: f64 = 256.0;
/// The stream counts as losing packets once this share of recent frames is lost, and no
/// longer once the share falls below [`LOSSY_OFF`].
const LOSSY_ON: f64 = 0.01;
/// See [`LOSSY_ON`].
const LOSSY_OFF: f64 = 0.003;

/// Errors from building a [`JitterBuffer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JitterError {
    /// The frame duration is outside 2.5..=120 ms.
    #[error("frame duration {0:?} outside 2.5..=120 ms")]
    Frame(Duration),
    /// `min_delay <= start_delay <= max_delay <= 10 s` does not hold (start may be below min).
    #[error("delays must satisfy min <= max <= 10 s and start <= max")]
    DelayRange,
    /// The capacity cannot hold `max_delay` plus two frames, or exceeds the limit.
    #[error("capacity of {got} frames outside {min}..={max}")]
    Capacity {
        /// Smallest capacity for this `max_delay`.
        min: usize,
        /// Largest capacity accepted.
        max: usize,
        /// Capacity asked for.
        got: usize,
    },
    /// The slot size is zero or above [`MAX_SLOT_BYTES`].
    #[error("slot size {0} outside 1..=65536 bytes")]
    SlotBytes(usize),
    /// The spike decay time constant is zero or above one minute.
    #[error("spike decay {0:?} outside (0, 60 s]")]
    SpikeDecay(Duration),
}

/// Settings of a [`JitterBuffer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JitterConfig {
    /// Duration of one frame (one sequence number).
    pub frame: Duration,
    /// The target delay never goes below this.
    pub min_delay: Duration,
    /// The target delay never goes above this; frames later than this are lost.
    pub max_delay: Duration,
    /// How long after the first packet playout starts.
    pub start_delay: Duration,
    /// Slots in the ring: the most frames held at once (memory bound).
    pub capacity_frames: usize,
    /// Bytes per slot: the largest payload accepted.
    pub slot_bytes: usize,
    /// Time constant of the exponential decay of the delay peak after a spike.
    pub spike_decay: Duration,
    /// The longest the burst rule waits for a stalled stream in one episode.
    pub burst_wait: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame: Duration::from_millis(20),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            // Start small: one frame after the first packet keeps mouth-to-ear within 45 ms
            // on a good path (a contact-centre call is judged on its first words too). On a
            // path known to be jittery a larger start (80 ms) avoids growing the delay
            // mid-speech; it then costs latency until the first pause, where the delay
            // shrinks to the target.
            start_delay: Duration::from_millis(20),
            capacity_frames: 64,
            slot_bytes: DEFAULT_SLOT_BYTES,
            spike_decay: Duration::from_secs(2),
            burst_wait: Duration::from_millis(100),
        }
    }
}

impl JitterConfig {
    /// Checks the settings are consistent and bounded.
    pub fn validate(&self) -> Result<(), JitterError> {
        if self.frame < Duration::from_micros(2_500) || self.frame > Duration::from_millis(120) {
            return Err(JitterError::Frame(self.frame));
        }
        if self.min_delay > self.max_delay
            || self.max_delay > MAX_DELAY_LIMIT
            || self.start_delay > self.max_delay
        {
            return Err(JitterError::DelayRange);
        }
        let min_capacity = frames_ceil(self.max_delay, self.frame).saturating_add(2);
        if self.capacity_frames < min_capacity || self.capacity_frames > MAX_CAPACITY_FRAMES {
            return Err(JitterError::Capacity {
                min: min_capacity,
                max: MAX_CAPACITY_FRAMES,
                got: self.capacity_frames,
            });
        }
        if self.slot_bytes == 0 || self.slot_bytes > MAX_SLOT_BYTES {
            return Err(JitterError::SlotBytes(self.slot_bytes));
        }
        if self.spike_decay.is_zero() || self.spike_decay > Duration::from_secs(60) {
            return Err(JitterError::SpikeDecay(self.spike_decay));
        }
        Ok(())
    }
}

fn frames_ceil(span: Duration, frame: Duration) -> usize {
    let frame_us = frame.as_micros().max(1);
    usize::try_from(span.as_micros().div_ceil(frame_us)).unwrap_or(usize::MAX)
}

/// Per-packet information besides the sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushMeta {
    /// The packet starts a new talkspurt (RTP-style marker): the sequence numbers skipped
    /// before it were silence the sender did not transmit (DTX, hold, mute), not losses.
    pub marker: bool,
    /// The packet is a comfort-noise update (the media flag D): the sender is in DTX and
    /// sends nothing more until its next update or the next talkspurt, so the frames missing
    /// after it are silence, known as such before anything else arrives.
    pub dtx: bool,
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushOutcome {
    /// Stored for playout.
    Accepted,
    /// A copy of a packet already buffered or played: dropped.
    Duplicate,
    /// Its frame has already been played (or concealed): dropped.
    TooLate,
    /// Stored, but it lay beyond the ring: the playout position jumped forward and this many
    /// buffered packets were discarded.
    Overflow {
        /// Buffered packets discarded.
        dropped: usize,
    },
    /// The sequence number jumped far outside the window (sender restart): the buffer was
    /// flushed and restarted with this packet.
    Resynced {
        /// Buffered packets discarded.
        dropped: usize,
    },
    /// The payload is empty or larger than a slot: dropped.
    Oversized,
}

/// What to play for the current frame period, from [`JitterBuffer::pop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Next<'a> {
    /// The frame's packet: decode it.
    Packet(&'a [u8]),
    /// The frame is lost but the next one is here: rebuild it from the FEC in `next` (which
    /// stays buffered and comes out of the following pop).
    RecoverFec {
        /// The packet of the following frame.
        next: &'a [u8],
    },
    /// The frame is lost and the next one is not here: conceal it.
    Conceal,
    /// Nothing is buffered for this frame: a loss, a stall or a pause in transmission
    /// (settled when the next packet arrives). Play a concealment / comfort frame.
    Gap,
    /// Nothing is buffered for this frame and the last packet played was a comfort-noise
    /// update ([`PushMeta::dtx`]): the sender is in DTX and did not send it. Counted as a
    /// pause at once, never as loss. Play comfort noise.
    Comfort,
    /// The frame is missing and the buffer chose to wait for it (the delay grows by one
    /// frame): play a filler frame; the playout position did not move.
    Wait,
    /// Playout has not started (no packet yet, or within the start delay): play silence.
    Empty,
}

/// What the buffer would like the caller to do to its delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayAdjustment {
    /// The delay is within a frame above the target.
    Hold,
    /// The delay is at least a frame above the target: drop one frame (pop twice).
    Shrink {
        /// The buffer is about to overflow or beyond `max_delay`: drop now, whatever the audio.
        urgent: bool,
    },
    /// The delay is below the target: insert one frame (play a filler without popping).
    Grow,
}

/// Counters of a [`JitterBuffer`] since it was built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferStats {
    /// Packets pushed (every call).
    pub received: u64,
    /// Packets stored.
    pub accepted: u64,
    /// Packets that came after their frame was played.
    pub late: u64,
    /// Duplicate packets.
    pub duplicate: u64,
    /// Empty or oversized payloads.
    pub oversized: u64,
    /// Buffered packets discarded by an overflow or a resync.
    pub overflow_dropped: u64,
    /// Frames lost: [`Next::Conceal`], [`Next::RecoverFec`], gaps settled as loss, and frames
    /// skipped by an overflow.
    pub lost: u64,
    /// Of `lost`, the frames handed out as [`Next::Gap`] and later settled as loss.
    pub lost_in_gaps: u64,
    /// Frames of transmission pauses (before a talkspurt start, or after a comfort-noise
    /// update), not counted as lost.
    pub dtx_frames: u64,
    /// Of `dtx_frames`, those handed out as [`Next::Comfort`].
    pub comfort_frames: u64,
    /// Packets pushed that carried [`PushMeta::dtx`] (comfort-noise updates).
    pub received_dtx: u64,
    /// Frames handed out as [`Next::Gap`] and not settled yet.
    pub unsettled_gaps: u64,
    /// Silent frames skipped before a talkspurt start to shrink the delay.
    pub skipped_silence: u64,
    /// [`Next::Wait`] frames (delay grown by waiting).
    pub waits: u64,
    /// Restarts after a sequence discontinuity or [`JitterBuffer::reset`].
    pub resyncs: u64,
    /// RFC 3550 interarrival jitter.
    pub jitter: Duration,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    len: usize,
    filled: bool,
    marker: bool,
    dtx: bool,
    data: Box<[u8]>,
}

/// Arrival statistics: base offset, peak relative delay, RFC 3550 jitter. Times in signed
/// microseconds since the buffer's epoch.
#[derive(Debug)]
struct DelayEstimator {
    offsets: Box<[i128]>,
    next: usize,
    filled: usize,
    base: i128,
    /// Scratch copy of `offsets` for the quantile (allocated once).
    scratch: Box<[i128]>,
    /// High quantile of the relative delays in the window.
    quantile_us: f64,
    peak_us: f64,
    last_arrival: Option<i128>,
    last_offset: Option<i128>,
    rfc_jitter_us: f64,
}

impl DelayEstimator {
    fn new() -> Self {
        Self {
            offsets: vec![0; OFFSET_WINDOW].into_boxed_slice(),
            next: 0,
            filled: 0,
            base: 0,
            scratch: vec![0; OFFSET_WINDOW].into_boxed_slice(),
            quantile_us: 0.0,
            peak_us: 0.0,
            last_arrival: None,
            last_offset: None,
            rfc_jitter_us: 0.0,
        }
    }

    fn clear(&mut self) {
        self.next = 0;
        self.filled = 0;
        self.base = 0;
        self.quantile_us = 0.0;
        self.peak_us = 0.0;
        self.last_arrival = None;
        self.last_offset = None;
    }

    fn has_base(&self) -> bool {
        self.filled > 0
    }

    /// Records an arrival with `offset = arrival - seq * frame`.
    fn record(&mut self, arrival: i128, offset: i128, decay_us: f64, peak_cap_us: f64) {
        if let Some(slot) = self.offsets.get_mut(self.next) {
            *slot = offset;
        }
        self.next = (self.next + 1) % self.offsets.len().max(1);
        self.filled = (self.filled + 1).min(self.offsets.len());
        self.base = self
            .offsets
            .get(..self.filled)
            .and_then(|window| window.iter().min().copied())
            .unwrap_or(offset);

        if let (Some(window), Some(scratch)) = (
            self.offsets.get(..self.filled),
            self.scratch.get_mut(..self.filled),
        ) {
            scratch.copy_from_slice(window);
            let rank = ((self.filled as f64 * QUANTILE).ceil() as usize)
                .saturating_sub(1)
                .min(self.filled.saturating_sub(1));
            let (_, quantile, _) = scratch.select_nth_unstable(rank);
            self.quantile_us = ((*quantile - self.base).max(0) as f64).min(peak_cap_us);
        }

        if let Some(previous) = self.last_offset {
            let d = (offset - previous).unsigned_abs() as f64;
            self.rfc_jitter_us += (d - self.rfc_jitter_us) / 16.0;
        }
        self.last_offset = Some(offset);

        let elapsed = self
            .last_arrival
            .map_or(0.0, |last| (arrival - last).max(0) as f64);
        self.last_arrival = Some(arrival.max(self.last_arrival.unwrap_or(arrival)));
        self.peak_us *= (-elapsed / decay_us).exp();
        let relative = ((offset - self.base).max(0) as f64).min(peak_cap_us);
        if relative > self.peak_us {
            self.peak_us = relative;
        }
    }

    /// Decays the peak to `now` without an arrival (so the target falls during silence).
    fn peak_at(&self, now: i128, decay_us: f64) -> f64 {
        let elapsed = self
            .last_arrival
            .map_or(0.0, |last| (now - last).max(0) as f64);
        (self.peak_us * (-elapsed / decay_us).exp()).max(self.quantile_us)
    }
}

/// An adaptive jitter buffer for one stream; see the [module documentation](self).
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    frame_us: i128,
    slots: Box<[Slot]>,
    /// Packets stored in `slots`.
    count: usize,
    /// The frame the next pop plays (the lowest stored sequence number before start).
    next_seq: u64,
    /// Highest sequence number stored since the last (re)start.
    highest: u64,
    /// Whether any packet has been stored since the last (re)start.
    anchored: bool,
    started: bool,
    first_arrival: Option<Instant>,
    epoch: Option<Instant>,
    /// Bit i set: frame `next_seq - 1 - i` was played from a packet (duplicate detection).
    played: u128,
    /// Bit i set: frame `next_seq - 1 - i` was handed out as a [`Next::Gap`] (nothing was
    /// buffered), so a packet arriving for it later shows the stream stalled.
    gapped: u128,
    /// When a stall was last seen (a gap frame's packet arrived after all).
    last_stall_us: Option<i128>,
    estimator: DelayEstimator,
    /// Waits since a packet was last played.
    episode_waits: usize,
    /// Share of recent frames lost (exponentially weighted, time constant
    /// [`LOSS_AVERAGE_FRAMES`] frames; pauses do not count), and whether it says the stream
    /// is losing packets (with hysteresis).
    loss_average: f64,
    lossy: bool,
    /// The last packet played was a comfort-noise update and only [`Next::Comfort`] frames
    /// have followed it: the sender is in DTX.
    comfort: bool,
    stats: BufferStats,
}

impl JitterBuffer {
    /// Builds a buffer, allocating all its memory.
    pub fn new(config: JitterConfig) -> Result<Self, JitterError> {
        config.validate()?;
        let slots = (0..config.capacity_frames)
            .map(|_| Slot {
                seq: 0,
                len: 0,
                filled: false,
                marker: false,
                dtx: false,
                data: vec![0; config.slot_bytes].into_boxed_slice(),
            })
            .collect();
        Ok(Self {
            frame_us: i128::try_from(config.frame.as_micros()).unwrap_or(20_000),
            config,
            slots,
            count: 0,
            next_seq: 0,
            highest: 0,
            anchored: false,
            started: false,
            first_arrival: None,
            epoch: None,
            played: 0,
            gapped: 0,
            last_stall_us: None,
            estimator: DelayEstimator::new(),
            episode_waits: 0,
            loss_average: 0.0,
            lossy: false,
            comfort: false,
            stats: BufferStats::default(),
        })
    }

    /// The settings this buffer was built with.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Packets currently buffered (never more than `capacity_frames`).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no packet is buffered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether playout has started.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The sequence number the next pop plays (meaningful once a packet has been stored).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Counters so far.
    pub fn stats(&self) -> BufferStats {
        let mut stats = self.stats.clone();
        stats.jitter = duration_from_us(self.estimator.rfc_jitter_us);
        stats
    }

    /// Flushes everything and waits for a new stream (after a key change or sender restart).
    /// Counters are kept.
    pub fn reset(&mut self) {
        self.stats.overflow_dropped = self
            .stats
            .overflow_dropped
            .saturating_add(self.flush() as u64);
        self.stats.resyncs = self.stats.resyncs.saturating_add(1);
        self.restart_state();
    }

    /// The delay the buffer aims for at `now`.
    pub fn target_delay(&self, now: Instant) -> Duration {
        duration_from_us(self.target_us(self.micros(now)))
    }

    /// How long after its fastest possible arrival the frame at the playout position is
    /// played, if it were played at `now` (zero before playout starts).
    pub fn current_delay(&self, now: Instant) -> Duration {
        if !self.started {
            return Duration::ZERO;
        }
        duration_from_us(self.current_us(self.micros(now)) as f64)
    }

    /// Whether the frame at the playout position is buffered (a pop would give
    /// [`Next::Packet`]).
    pub fn head_ready(&self) -> bool {
        self.started && self.slot(self.next_seq).is_some()
    }

    /// Whether the sender is in DTX as far as playout has gone: the last packet played was a
    /// comfort-noise update and only [`Next::Comfort`] frames have followed. A filler frame
    /// played now should be comfort noise too.
    pub fn in_comfort_noise(&self) -> bool {
        self.comfort
    }

    /// Whether the next pop ends a DTX pause with speech: comfort noise is being played and
    /// the packet at the playout position is buffered and is no comfort-noise update.
    pub fn head_ends_comfort_noise(&self) -> bool {
        self.comfort
            && self
                .slot(self.next_seq)
                .and_then(|index| self.slots.get(index))
                .is_some_and(|slot| !slot.dtx)
    }

    /// Whether the two frames at the playout position are both buffered, so one can be
    /// dropped without a gap.
    pub fn two_ready(&self) -> bool {
        self.head_ready() && self.slot(self.next_seq.saturating_add(1)).is_some()
    }

    /// The earliest packet buffered at or after the playout position, with its sequence
    /// number: after a [`Next::Conceal`] it is the later packet whose deep redundancy (DRED)
    /// may reach back to the lost frame (`next_seq() - 1`).
    pub fn earliest_packet(&self) -> Option<(u64, &[u8])> {
        let (seq, _) = self.earliest_buffered()?;
        let slot = self.slots.get(self.slot(seq)?)?;
        Some((seq, slot.data.get(..slot.len)?))
    }

    /// What the caller should do to the delay at `now`.
    pub fn delay_adjustment(&self, now: Instant) -> DelayAdjustment {
        if !self.started {
            return DelayAdjustment::Hold;
        }
        let t = self.micros(now);
        let current = self.current_us(t);
        let target = self.target_us(t) as i128;
        let max = i128::try_from(self.config.max_delay.as_micros()).unwrap_or(i128::MAX);
        let nearly_full = self.count.saturating_add(2) >= self.config.capacity_frames;
        if current - self.frame_us >= target || nearly_full {
            DelayAdjustment::Shrink {
                urgent: current > max || nearly_full,
            }
        } else if current < target {
            DelayAdjustment::Grow
        } else {
            DelayAdjustment::Hold
        }
    }

    /// Stores a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, seq: u64, payload: &[u8], meta: PushMeta) -> PushOutcome {
        self.stats.received = self.stats.received.saturating_add(1);
        if meta.dtx {
            self.stats.received_dtx = self.stats.received_dtx.saturating_add(1);
        }
        self.epoch.get_or_insert(now);
        if payload.is_empty() || payload.len() > self.config.slot_bytes {
            self.stats.oversized = self.stats.oversized.saturating_add(1);
            return PushOutcome::Oversized;
        }
        let t = self.micros(now);
        let capacity = self.config.capacity_frames as u64;
        let resync_ahead = capacity
            .max(frames_ceil(Duration::from_secs(2), self.config.frame) as u64)
            .saturating_mul(4);

        if !self.anchored {
            self.anchor(now, seq);
            self.settle_gaps(meta.marker);
            self.record_arrival(t, seq);
            self.store(seq, payload, meta);
            return PushOutcome::Accepted;
        }

        // Sequence discontinuity: far behind the window or far ahead of it. Far behind means
        // behind what was received too: a packet newer than anything received, behind only
        // because playout went on while nothing came (the sender or the network stalled), is
        // late, not the start of a new stream.
        let far_behind = seq < self.next_seq
            && self.next_seq - seq > capacity
            && seq.saturating_add(capacity) < self.highest;
        let far_ahead = seq > self.next_seq && seq - self.next_seq > resync_ahead;
        // A marked packet far ahead is a talkspurt after a long pause (a hold of minutes), not
        // a restart: it takes the jump below and the buffer keeps what it learned of the path.
        if far_behind || (far_ahead && !meta.marker) {
            let dropped = self.flush();
            self.stats.overflow_dropped =
                self.stats.overflow_dropped.saturating_add(dropped as u64);
            self.stats.resyncs = self.stats.resyncs.saturating_add(1);
            self.restart_state();
            self.anchor(now, seq);
            self.record_arrival(t, seq);
            self.store(seq, payload, meta);
            return PushOutcome::Resynced { dropped };
        }

        if seq < self.next_seq {
            if !self.started && self.highest - seq < capacity {
                // Reordered before playout started: move the start back to it.
                self.next_seq = seq;
            } else {
                let behind = self.next_seq - seq;
                let none_played = behind <= 128 && self.played & (u128::MAX >> (128 - behind)) == 0;
                if meta.marker && self.count == 0 && none_played {
                    // A talkspurt that starts behind the playout position with nothing
                    // buffered: this end's clock ran ahead of the sender's during a pause
                    // (drift over a long mute or hold), or the talkspurt's first packet came
                    // after its slot was given up. The position moves back to it rather than
                    // refuse the talkspurt's first words as late. The gaps handed out for
                    // those frames stay counted as a pause (counters never go down), though
                    // they are now played too.
                    self.settle_gaps(true);
                    (self.played, self.gapped) = if behind >= 128 {
                        (0, 0)
                    } else {
                        (self.played >> behind, self.gapped >> behind)
                    };
                    self.next_seq = seq;
                    self.record_arrival(t, seq);
                    self.store(
                        seq,
                        payload,
                        PushMeta {
                            marker: true,
                            ..meta
                        },
                    );
                    return PushOutcome::Accepted;
                }
                let back = behind - 1;
                let played = back < 128 && (self.played >> back) & 1 == 1;
                let gapped = back < 128 && (self.gapped >> back) & 1 == 1;
                self.settle_gaps(meta.marker);
                if played {
                    self.stats.duplicate = self.stats.duplicate.saturating_add(1);
                    return PushOutcome::Duplicate;
                }
                if gapped {
                    // The frame was given up with nothing buffered and came anyway: the
                    // network stalls rather than drops, so waiting would have saved it.
                    self.last_stall_us = Some(t);
                }
                // Its frame was counted as lost; the packet was held up or reordered, which
                // the next packet's FEC would not have repaired.
                self.unnote_loss();
                self.stats.late = self.stats.late.saturating_add(1);
                self.record_arrival(t, seq);
                return PushOutcome::TooLate;
            }
        }

        if self.slot(seq).is_some() {
            self.stats.duplicate = self.stats.duplicate.saturating_add(1);
            return PushOutcome::Duplicate;
        }

        let mut outcome = PushOutcome::Accepted;
        if seq - self.next_seq >= capacity {
            // Beyond the ring: jump the playout position so this packet sits at the target
            // delay, discarding what is left behind.
            let target_frames = (self.target_us(t) as i128 / self.frame_us.max(1)) as u64;
            let keep = target_frames.min(capacity - 1);
            let new_next = seq - keep;
            let jumped = new_next - self.next_seq;
            let dropped = self.discard_below(new_next);
            self.stats.overflow_dropped =
                self.stats.overflow_dropped.saturating_add(dropped as u64);
            let missing = jumped.saturating_sub(dropped as u64);
            if meta.marker {
                // A new talkspurt after a long pause (hold, mute, DTX while the receiver was
                // not playing): the frames never sent are silence, not losses.
                self.stats.dtx_frames = self.stats.dtx_frames.saturating_add(missing);
            } else {
                self.stats.lost = self.stats.lost.saturating_add(missing);
            }
            self.shift_played(jumped, false);
            self.next_seq = new_next;
            outcome = PushOutcome::Overflow { dropped };
        }
        self.settle_gaps(meta.marker);
        self.record_arrival(t, seq);
        self.store(seq, payload, meta);
        outcome
    }

    /// Hands out the frame for the current period and moves the playout position on (except
    /// for [`Next::Wait`] and [`Next::Empty`]).
    pub fn pop(&mut self, now: Instant) -> Next<'_> {
        self.epoch.get_or_insert(now);
        let t = self.micros(now);
        if !self.started {
            let due = match self.first_arrival {
                Some(first) => {
                    now.checked_duration_since(first).unwrap_or(Duration::ZERO)
                        >= self.config.start_delay
                }
                None => false,
            };
            if !due || self.count == 0 {
                return Next::Empty;
            }
            self.started = true;
        }

        if self.slot(self.next_seq).is_none() {
            match self.earliest_buffered() {
                None => {
                    if self.should_wait(t) {
                        self.episode_waits += 1;
                        self.stats.waits = self.stats.waits.saturating_add(1);
                        return Next::Wait;
                    }
                    if self.comfort {
                        // The sender said it pauses: silence, not a loss to settle later.
                        self.stats.dtx_frames = self.stats.dtx_frames.saturating_add(1);
                        self.stats.comfort_frames = self.stats.comfort_frames.saturating_add(1);
                        self.advance(false);
                        return Next::Comfort;
                    }
                    self.stats.unsettled_gaps = self.stats.unsettled_gaps.saturating_add(1);
                    self.advance(false);
                    self.gapped |= 1;
                    return Next::Gap;
                }
                Some((first_seq, true)) => {
                    // A pause before a new talkspurt: the frames up to it carry no audio, so
                    // skipping some is a free way to shrink the delay.
                    let current = self.current_us(t);
                    let target = self.target_us(t) as i128;
                    let above = ((current - target) / self.frame_us.max(1)).max(0) as u64;
                    let skip = above.min(first_seq - self.next_seq);
                    if skip > 0 {
                        self.stats.skipped_silence =
                            self.stats.skipped_silence.saturating_add(skip);
                        self.stats.dtx_frames = self.stats.dtx_frames.saturating_add(skip);
                        self.shift_played(skip, false);
                        self.next_seq += skip;
                    }
                    if self.next_seq != first_seq {
                        if self.current_us(t) + self.frame_us <= target {
                            self.stats.waits = self.stats.waits.saturating_add(1);
                            return Next::Wait;
                        }
                        self.stats.dtx_frames = self.stats.dtx_frames.saturating_add(1);
                        self.advance(false);
                        if self.comfort {
                            self.stats.comfort_frames = self.stats.comfort_frames.saturating_add(1);
                            return Next::Comfort;
                        }
                        return Next::Gap;
                    }
                }
                Some((first_seq, false)) => {
                    self.comfort = false;
                    self.stats.lost = self.stats.lost.saturating_add(1);
                    self.note_frame(true);
                    if self.episode_waits > 0 {
                        // The frame waited for never came while later ones did: this was a
                        // loss, not a stall. Waiting for the next missing frames would only
                        // turn each loss burst into more concealment and a longer delay.
                        self.last_stall_us = None;
                        self.episode_waits = 0;
                    }
                    self.advance(false);
                    if first_seq == self.next_seq {
                        return match self.slot(first_seq) {
                            Some(index) => self.packet_at(index, true),
                            None => Next::Conceal,
                        };
                    }
                    return Next::Conceal;
                }
            }
        }

        match self.slot(self.next_seq) {
            Some(index) => {
                self.episode_waits = 0;
                self.note_frame(false);
                if let Some(slot) = self.slots.get_mut(index) {
                    slot.filled = false;
                }
                self.count = self.count.saturating_sub(1);
                self.advance(true);
                self.comfort = self.slots.get(index).is_some_and(|slot| slot.dtx);
                self.packet_at(index, false)
            }
            None => Next::Conceal,
        }
    }

    fn packet_at(&self, index: usize, as_fec: bool) -> Next<'_> {
        let Some(slot) = self.slots.get(index) else {
            return Next::Conceal;
        };
        let Some(bytes) = slot.data.get(..slot.len) else {
            return Next::Conceal;
        };
        if as_fec {
            Next::RecoverFec { next: bytes }
        } else {
            Next::Packet(bytes)
        }
    }

    fn should_wait(&self, t: i128) -> bool {
        let current = self.current_us(t);
        let after_wait = current + self.frame_us;
        if after_wait <= self.target_us(t) as i128 {
            return true;
        }
        let max = i128::try_from(self.config.max_delay.as_micros()).unwrap_or(i128::MAX);
        let burst_frames = frames_ceil(self.config.burst_wait, self.config.frame);
        let stalls_recently = self
            .last_stall_us
            .is_some_and(|stall| t - stall <= STALL_MEMORY_US);
        stalls_recently && after_wait <= max && self.episode_waits < burst_frames
    }

    fn anchor(&mut self, now: Instant, seq: u64) {
        self.anchored = true;
        self.next_seq = seq;
        self.highest = seq;
        self.first_arrival = Some(now);
    }

    fn restart_state(&mut self) {
        self.anchored = false;
        self.started = false;
        self.first_arrival = None;
        self.played = 0;
        self.gapped = 0;
        self.last_stall_us = None;
        self.episode_waits = 0;
        self.comfort = false;
        self.stats.unsettled_gaps = 0;
        self.estimator.clear();
    }

    /// Settles the frames handed out as gaps: a talkspurt start means they were a pause.
    fn settle_gaps(&mut self, marker: bool) {
        let gaps = std::mem::take(&mut self.stats.unsettled_gaps);
        if gaps == 0 {
            return;
        }
        if marker {
            self.stats.dtx_frames = self.stats.dtx_frames.saturating_add(gaps);
        } else {
            self.stats.lost = self.stats.lost.saturating_add(gaps);
            self.stats.lost_in_gaps = self.stats.lost_in_gaps.saturating_add(gaps);
            for _ in 0..gaps.min(LOSS_AVERAGE_FRAMES as u64) {
                self.note_frame(true);
            }
        }
    }

    /// Counts one frame due for the recent loss average: lost, or played from its packet.
    fn note_frame(&mut self, lost: bool) {
        let sample = if lost { 1.0 } else { 0.0 };
        self.loss_average += (sample - self.loss_average) / LOSS_AVERAGE_FRAMES;
        self.lossy = if self.lossy {
            self.loss_average >= LOSSY_OFF
        } else {
            self.loss_average >= LOSSY_ON
        };
    }

    /// Takes back one lost frame from the recent loss average: its packet came after all.
    fn unnote_loss(&mut self) {
        self.loss_average = (self.loss_average - 1.0 / LOSS_AVERAGE_FRAMES).max(0.0);
        self.lossy = self.lossy && self.loss_average >= LOSSY_OFF;
    }

    /// Whether the stream has been losing packets lately (about 1 % of the last few seconds'
    /// frames or more): the target delay then keeps the next frame's packet in hand.
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    fn record_arrival(&mut self, t: i128, seq: u64) {
        let offset = t - i128::from(seq) * self.frame_us;
        let max_us = self.config.max_delay.as_micros() as f64;
        // An arrival far earlier than the fastest path means the sequence timeline moved
        // (a restart or a forward jump not matched by time): measure from scratch.
        if self.estimator.has_base()
            && offset < self.estimator.base - (2.0 * max_us) as i128 - 1_000_000
        {
            self.estimator.clear();
        }
        let decay = self.config.spike_decay.as_micros().max(1) as f64;
        self.estimator.record(t, offset, decay, 2.0 * max_us);
    }

    fn store(&mut self, seq: u64, payload: &[u8], meta: PushMeta) {
        let index = self.index(seq);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let Some(dest) = slot.data.get_mut(..payload.len()) else {
            return;
        };
        dest.copy_from_slice(payload);
        if !slot.filled {
            self.count += 1;
        }
        slot.seq = seq;
        slot.len = payload.len();
        slot.marker = meta.marker;
        slot.dtx = meta.dtx;
        slot.filled = true;
        self.highest = self.highest.max(seq);
        self.stats.accepted = self.stats.accepted.saturating_add(1);
    }

    fn advance(&mut self, played: bool) {
        self.shift_played(1, played);
        self.next_seq = self.next_seq.saturating_add(1);
    }

    fn shift_played(&mut self, frames: u64, played_last: bool) {
        (self.played, self.gapped) = if frames >= 128 {
            (0, 0)
        } else {
            (self.played << frames, self.gapped << frames)
        };
        if played_last {
            self.played |= 1;
        }
    }

    fn index(&self, seq: u64) -> usize {
        (seq % self.config.capacity_frames.max(1) as u64) as usize
    }

    /// The slot holding `seq`, if it is buffered.
    fn slot(&self, seq: u64) -> Option<usize> {
        let index = self.index(seq);
        self.slots
            .get(index)
            .filter(|slot| slot.filled && slot.seq == seq)
            .map(|_| index)
    }

    /// The lowest buffered sequence number after the playout position, and its marker.
    fn earliest_buffered(&self) -> Option<(u64, bool)> {
        if self.count == 0 {
            return None;
        }
        // Inclusive, so a packet at u64::MAX (where the position saturates) is still found.
        let last = self
            .next_seq
            .saturating_add((self.config.capacity_frames as u64).saturating_sub(1));
        (self.next_seq..=last).find_map(|seq| {
            self.slot(seq)
                .and_then(|index| self.slots.get(index))
                .map(|slot| (seq, slot.marker))
        })
    }

    fn discard_below(&mut self, seq: u64) -> usize {
        let mut dropped = 0;
        for slot in self.slots.iter_mut() {
            if slot.filled && slot.seq < seq {
                slot.filled = false;
                dropped += 1;
            }
        }
        self.count = self.count.saturating_sub(dropped);
        dropped
    }

    fn flush(&mut self) -> usize {
        let mut dropped = 0;
        for slot in self.slots.iter_mut().filter(|slot| slot.filled) {
            slot.filled = false;
            dropped += 1;
        }
        self.count = 0;
        dropped
    }

    /// Signed microseconds of `now` since the first instant the buffer was given.
    fn micros(&self, now: Instant) -> i128 {
        self.epoch.map_or(0, |epoch| signed_micros(now, epoch))
    }

    fn current_us(&self, t: i128) -> i128 {
        t - (self.estimator.base + i128::from(self.next_seq) * self.frame_us)
    }

    fn target_us(&self, t: i128) -> f64 {
        let decay = self.config.spike_decay.as_micros().max(1) as f64;
        let peak = self.estimator.peak_at(t, decay);
        let min = self.config.min_delay.as_micros() as f64;
        let max = self.config.max_delay.as_micros() as f64;
        // While packets are being lost, a lost frame is rebuilt from the in-band FEC of the
        // next packet, which must then be in hand when the lost frame is due: one frame later
        // than the jitter alone asks for. Without it the next packet, due at the same moment,
        // misses by a millisecond of scheduling as often as not and the frame is concealed.
        let recovery = if self.lossy {
            self.frame_us as f64
        } else {
            0.0
        };
        (peak + SAFETY_MARGIN_US + recovery).clamp(min, max)
    }
}

fn signed_micros(now: Instant, epoch: Instant) -> i128 {
    match now.checked_duration_since(epoch) {
        Some(after) => after.as_micros() as i128,
        None => -(epoch.saturating_duration_since(now).as_micros() as i128),
    }
}

fn duration_from_us(us: f64) -> Duration {
    if us.is_finite() && us > 0.0 {
        Duration::from_micros(us.min(u64::MAX as f64 / 2.0) as u64)
    } else {
        Duration::ZERO
    }
}

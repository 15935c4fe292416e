//! Playout: the jitter buffer and the Opus decoder together, one frame of PCM per period.
//!
//! The driver calls [`Playout::push`] for every packet and [`Playout::pull`] exactly once per
//! frame period on its playout clock; `pull` always fills one frame.
//!
//! # Delay adaptation without audible artefacts
//!
//! The [`JitterBuffer`] says whether the delay should shrink or grow
//! ([`JitterBuffer::delay_adjustment`]); this layer decides *when*, from the audio itself:
//!
//! * **shrink**: only inside a pause. The frame at the head is decoded; if it is quiet (RMS
//!   below [`PlayoutConfig::quiet_rms`]) and ends 200 ms of quiet *received* frames (a pause
//!   between sentences or turns, not the short gap between two words; concealed frames do not
//!   count, PLC fades out whatever was said), or it is a DTX packet, and the delay is at
//!   least two frames above the target, it is dropped and the next one played in its place.
//!   The decoder still sees every packet, so its state stays continuous. Every drop inside
//!   speech warps the talker's timing, which listeners (and PESQ) notice far more than 40 ms
//!   of extra delay;
//! * **grow**: when the frame last played was a quiet received frame, a concealment frame
//!   (the decoder's own continuation of the quiet signal) is inserted and the buffer is not
//!   popped;
//! * **inside speech**, when the buffer has asked for the same change for
//!   [`STRETCH_AFTER`] (a talker who does not pause, clock drift) and
//!   [`PlayoutConfig::time_stretch`] is on (the default), the delay moves by one pitch period
//!   at a time instead of a whole frame: a frame decoded while the buffer asks to shrink (two
//!   frames above the target, as for a drop) is shortened by one period of the talker's voice, and
//!   one decoded while it asks to grow is lengthened by one, both
//!   crossfaded at pitch-aligned points ([`crate::stretch`]; 2.5 to 15 ms each). Audio that is
//!   not periodic enough (fricatives, noise) is left alone, and the next frame is tried. The
//!   stretcher needs 30 ms of audio not yet played, and a cut must leave a frame to play
//!   now, so when less is in hand the next frame is popped and decoded too if its packet is
//!   here (that takes a frame off the buffer's margin, which is what shrinking asks for).
//!   Decoded audio then waits in a sample queue and later periods are served from it
//!   ([`PullOutcome::Buffered`]: the buffer is not popped, its margin grows by a frame,
//!   which is how expansions add up to a frame of margin). The buffer decides on its
//!   *margin* (how long after its fastest arrival a frame is popped: what protects against
//!   late packets); what is heard is later by the queue's length ([`Playout::ahead`]),
//!   which [`JitterStats::current_delay`] includes. While the margin is right, the queue is
//!   trimmed by cuts that need no early pop, down to 10 ms or one pitch period;
//! * only when the buffer is about to overflow or is beyond `max_delay` does a whole-frame drop
//!   happen mid-speech. A whole frame is inserted mid-speech only when the stream itself
//!   stalls (the buffer waits, see the burst rule in [`crate::jitter`]), where concealment is
//!   unavoidable anyway.
//!
//! # Lost frames
//!
//! A frame missing while later ones are in hand is lost, not late: it is rebuilt at once,
//! from the next packet's in-band FEC when it carries LBRR, else (when the stream's
//! [`OpusConfig::dred_duration_ms`] says it carries DRED) from the deep redundancy of the
//! earliest later packet in hand, else concealed. Nothing is waited for. DRED costs about
//! 0.7 ms of CPU per rebuilt frame, well inside a 20 ms period.
//!
//! # Silence (DTX)
//!
//! A sender in DTX sends a comfort-noise update every 400 ms and nothing in between. The
//! frames after an update are played as libopus' comfort noise ([`PullOutcome::ComfortNoise`],
//! [`OpusDecoder::comfort_noise`]): no concealment, no loss, no FEC or DRED attempt, and they
//! count as a pause for the delay rules above (growing inserts comfort noise; the buffer
//! skips silence before the next talkspurt), while a request for a change made during one
//! never makes the speech after it stretched.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::audio::SAMPLE_RATE;
use crate::codec::{self, CodecError, OpusConfig, OpusDecoder};
use crate::jitter::{
    DelayAdjustment, JitterBuffer, JitterConfig, JitterError, Next, PushMeta, PushOutcome,
};
use crate::stretch::{Stretch, StretchConfig, TimeStretcher};

/// Errors from building or driving a [`Playout`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlayoutError {
    /// The jitter buffer settings are invalid.
    #[error("jitter buffer config: {0}")]
    Jitter(#[from] JitterError),
    /// The Opus settings are invalid.
    #[error("opus config: {0}")]
    Codec(#[from] CodecError),
    /// The jitter buffer frame, the Opus frame and the decoder's frame differ.
    #[error("frame durations differ: jitter buffer {jitter:?}, opus {opus:?}")]
    FrameMismatch {
        /// The jitter buffer's frame.
        jitter: Duration,
        /// The codec's frame.
        opus: Duration,
    },
    /// The output slice is not one frame long.
    #[error("output of {got} samples, expected {expected}")]
    FrameSize {
        /// Samples in one frame.
        expected: usize,
        /// Samples given.
        got: usize,
    },
}

/// Settings of a [`Playout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// The jitter buffer; its `frame` must match the Opus frame.
    pub jitter: JitterConfig,
    /// The stream's Opus settings.
    pub opus: OpusConfig,
    /// A decoded frame whose RMS is below this is quiet enough to drop or to insert next to
    /// (328 is about -40 dBFS).
    pub quiet_rms: u16,
    /// Shrink and grow the delay inside speech by time-stretching decoded audio one pitch
    /// period at a time (see the [module documentation](self)); when false, the delay moves
    /// only by whole frames, in pauses.
    pub time_stretch: bool,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        let opus = OpusConfig::default();
        Self {
            jitter: JitterConfig {
                frame: opus.frame.duration(),
                ..JitterConfig::default()
            },
            opus,
            quiet_rms: 328,
            time_stretch: true,
        }
    }
}

/// What [`Playout::pull`] put in the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullOutcome {
    /// A received packet, decoded.
    Decoded,
    /// A lost frame rebuilt from the next packet's in-band FEC.
    FecRecovered,
    /// A lost frame rebuilt from the deep redundancy (DRED) of a later buffered packet.
    DredRecovered,
    /// A lost frame concealed (PLC).
    Concealed,
    /// Nothing was buffered (loss, stall or transmission pause): concealment / comfort audio.
    Gap,
    /// The sender is in DTX (its last packet was a comfort-noise update) and sent nothing for
    /// this frame: comfort noise, not concealment.
    ComfortNoise,
    /// A filler frame inserted to grow the delay (during a pause, or while the stream stalled).
    Inserted,
    /// A quiet frame was dropped to shrink the delay and the next one decoded instead.
    Dropped,
    /// Playout has not started: silence.
    Silence,
    /// Audio decoded at an earlier pull (ahead of time, for time-stretching) filled the whole
    /// period; the buffer was not popped.
    Buffered,
}

/// Counters and delays of a [`Playout`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Frames lost in transit (concealed or FEC-recovered; pauses excluded).
    pub lost: u64,
    /// Packets that came after their frame was played.
    pub late: u64,
    /// Duplicate packets.
    pub duplicate: u64,
    /// Lost frames filled by concealment.
    pub concealed: u64,
    /// Lost frames rebuilt from FEC.
    pub fec_recovered: u64,
    /// Lost frames rebuilt from DRED.
    pub dred_recovered: u64,
    /// Frames dropped to shrink the delay (including silent frames skipped before a
    /// talkspurt).
    pub dropped_for_delay: u64,
    /// Frames inserted to grow the delay.
    pub inserted_for_delay: u64,
    /// Times a pitch period was cut out of speech to shrink the delay.
    pub accelerated: u64,
    /// Times a pitch period was added to speech to grow the delay.
    pub expanded: u64,
    /// Audio cut out by time-stretching, in total.
    pub stretch_removed: Duration,
    /// Audio added by time-stretching, in total.
    pub stretch_inserted: Duration,
    /// Frames of transmission pauses (DTX, hold), not counted as lost.
    pub dtx_frames: u64,
    /// Frames played as comfort noise through the sender's DTX pauses (those of
    /// `dtx_frames` handed out after a comfort-noise update, and fillers inserted in such a
    /// pause to grow the delay); never counted in `concealed` or `lost`.
    pub comfort_noise: u64,
    /// Comfort-noise updates received (packets flagged D), included in `received`.
    pub received_dtx: u64,
    /// Packets the decoder rejected (concealed instead; included in `concealed`, not `lost`).
    pub decode_errors: u64,
    /// Buffered packets discarded by overflow or resync.
    pub overflow_dropped: u64,
    /// Stream restarts.
    pub resyncs: u64,
    /// RFC 3550 interarrival jitter.
    pub jitter: Duration,
    /// Playout delay of the frame due at the last pull (before that pull's adjustment): how
    /// long after its fastest possible arrival it was heard (the buffer's margin plus the
    /// audio decoded ahead).
    pub current_delay: Duration,
    /// Target delay at the last pull.
    pub target_delay: Duration,
}

impl JitterStats {
    /// Adds `other`'s counters to these (several participants' streams as one): counts are
    /// summed, jitter and delays are the worst of the two.
    pub fn merge(&mut self, other: &JitterStats) {
        self.received += other.received;
        self.lost += other.lost;
        self.late += other.late;
        self.duplicate += other.duplicate;
        self.concealed += other.concealed;
        self.fec_recovered += other.fec_recovered;
        self.dred_recovered += other.dred_recovered;
        self.dropped_for_delay += other.dropped_for_delay;
        self.inserted_for_delay += other.inserted_for_delay;
        self.accelerated += other.accelerated;
        self.expanded += other.expanded;
        self.stretch_removed += other.stretch_removed;
        self.stretch_inserted += other.stretch_inserted;
        self.dtx_frames += other.dtx_frames;
        self.comfort_noise += other.comfort_noise;
        self.received_dtx += other.received_dtx;
        self.decode_errors += other.decode_errors;
        self.overflow_dropped += other.overflow_dropped;
        self.resyncs += other.resyncs;
        self.jitter = self.jitter.max(other.jitter);
        self.current_delay = self.current_delay.max(other.current_delay);
        self.target_delay = self.target_delay.max(other.target_delay);
    }
}

/// A jitter buffer feeding an Opus decoder; see the [module documentation](self).
#[derive(Debug)]
pub struct Playout {
    buffer: JitterBuffer,
    decoder: OpusDecoder,
    frame_samples: usize,
    frame: Duration,
    dred: bool,
    quiet_rms: u16,
    /// Consecutive quiet frames played up to the last pull.
    quiet_run: u32,
    concealed: u64,
    fec_recovered: u64,
    dred_recovered: u64,
    dropped_for_delay: u64,
    inserted_for_delay: u64,
    decode_errors: u64,
    /// Frames played as comfort noise (DTX pauses, and fillers inserted in them).
    comfort_noise: u64,
    current_delay: Duration,
    target_delay: Duration,
    /// `None` when time-stretching is off.
    stretcher: Option<TimeStretcher>,
    /// Decoded audio not played yet, oldest first (empty unless time-stretching decoded ahead
    /// or lengthened a frame).
    pending: Vec<i16>,
    /// One frame of scratch for decoding.
    frame_buf: Vec<i16>,
    /// The audio handed out last (what the stretcher needs of it), oldest first: growing the
    /// delay inserts a period right after it.
    played: Vec<i16>,
    accelerated: u64,
    expanded: u64,
    samples_removed: u64,
    samples_inserted: u64,
    /// Where in the queue the frame popped at the last pull starts (`None` when that pull
    /// popped nothing), after that pull's stretching.
    frame_start: Option<usize>,
    /// The change the buffer asked for at the last pulls, and for how many pulls in a row.
    asked_for: (DelayAdjustment, u32),
    /// Pulls a change must be asked for before speech is stretched for it.
    stretch_after: u32,
}

/// Quiet received frames in a row that make a pause (200 ms of 20 ms frames: longer than the
/// gaps between words): a drop that is not urgent happens only inside a pause.
const PAUSE_FRAMES: u32 = 10;

/// How long the buffer must keep asking for the same change (and no pause has come to make
/// it in) before speech is time-stretched for it.
pub const STRETCH_AFTER: Duration = Duration::from_secs(1);

/// A drop that is not urgent waits until the delay is this many frames above the target.
const SHRINK_MARGIN_FRAMES: u32 = 2;

impl Playout {
    /// Combines a new jitter buffer with `decoder` (built from the same `config.opus`).
    pub fn new(config: PlayoutConfig, decoder: OpusDecoder) -> Result<Self, PlayoutError> {
        config.opus.validate()?;
        let opus_frame = config.opus.frame.duration();
        if config.jitter.frame != opus_frame
            || decoder.frame_samples() != config.opus.frame_samples()
        {
            return Err(PlayoutError::FrameMismatch {
                jitter: config.jitter.frame,
                opus: opus_frame,
            });
        }
        let buffer = JitterBuffer::new(config.jitter)?;
        let frame_samples = config.opus.frame_samples();
        let stretcher = config.time_stretch.then(|| {
            TimeStretcher::new(StretchConfig {
                sample_rate: SAMPLE_RATE,
                quiet_rms: config.quiet_rms,
                ..StretchConfig::default()
            })
        });
        // Decoded-ahead audio never exceeds what the stretcher works on plus two frames.
        let queue = stretcher
            .as_ref()
            .map_or(0, |s| s.min_input().saturating_add(3 * frame_samples));
        Ok(Self {
            buffer,
            decoder,
            frame_samples: config.opus.frame_samples(),
            frame: opus_frame,
            dred: config.opus.dred_duration_ms > 0,
            quiet_rms: config.quiet_rms,
            quiet_run: 0,
            concealed: 0,
            fec_recovered: 0,
            dred_recovered: 0,
            dropped_for_delay: 0,
            inserted_for_delay: 0,
            decode_errors: 0,
            comfort_noise: 0,
            current_delay: Duration::ZERO,
            target_delay: Duration::ZERO,
            stretcher,
            pending: Vec::with_capacity(queue),
            frame_buf: vec![0; frame_samples],
            played: Vec::with_capacity(queue),
            accelerated: 0,
            expanded: 0,
            samples_removed: 0,
            samples_inserted: 0,
            frame_start: None,
            asked_for: (DelayAdjustment::Hold, 0),
            stretch_after: u32::try_from(STRETCH_AFTER.as_micros() / opus_frame.as_micros().max(1))
                .unwrap_or(u32::MAX),
        })
    }

    /// Audio decoded and not played yet: the next frame popped from the buffer starts this
    /// long after the period being pulled.
    pub fn ahead(&self) -> Duration {
        self.samples_duration(self.pending.len() as u64)
    }

    /// How long after the start of the period just pulled the frame that pull popped starts
    /// to be heard (audio decoded ahead and time-stretching move it); `None` when the pull
    /// popped no frame.
    pub fn last_frame_offset(&self) -> Option<Duration> {
        self.frame_start
            .map(|start| self.samples_duration(start as u64))
    }

    /// Whether the next [`Playout::pull`] has its audio in hand (decoded ahead, or the packet
    /// at the playout position buffered), so pulling it a little early loses nothing.
    pub fn next_ready(&self) -> bool {
        self.pending.len() >= self.frame_samples || self.buffer.head_ready()
    }

    fn samples_duration(&self, samples: u64) -> Duration {
        Duration::from_nanos(samples.saturating_mul(1_000_000_000) / u64::from(SAMPLE_RATE))
    }

    /// Samples per frame (the length `pull` wants).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The jitter buffer (read-only: length, delays, its own counters).
    pub fn buffer(&self) -> &JitterBuffer {
        &self.buffer
    }

    /// Hands a received packet to the jitter buffer. `meta.marker` flags the first packets of
    /// a talkspurt (after DTX silence, hold or mute), `meta.dtx` a comfort-noise update.
    pub fn push(&mut self, now: Instant, seq: u64, payload: &[u8], meta: PushMeta) -> PushOutcome {
        self.buffer.push(now, seq, payload, meta)
    }

    /// Flushes the buffer and waits for a new stream (after a key change); the decoder keeps
    /// its state, counters are kept. Audio already decoded ahead (time-stretching) is still
    /// played: it is the old stream's last few milliseconds, and cutting it would click.
    pub fn reset(&mut self) {
        self.buffer.reset();
    }

    /// Fills `out` (exactly one frame) with the audio for the period starting at `now`.
    pub fn pull(&mut self, now: Instant, out: &mut [i16]) -> Result<PullOutcome, PlayoutError> {
        if out.len() != self.frame_samples {
            return Err(PlayoutError::FrameSize {
                expected: self.frame_samples,
                got: out.len(),
            });
        }
        if self.pending.len() >= self.frame_samples {
            // Audio decoded ahead covers the whole period; the buffer is not popped, so its
            // margin grows by a frame. The head frame is heard after all that is queued now.
            let heard = self.ahead();
            self.frame_start = None;
            self.take_pending(out);
            self.current_delay = self.buffer.current_delay(now) + heard;
            self.target_delay = self.buffer.target_delay(now);
            return Ok(PullOutcome::Buffered);
        }
        // The buffer decides on its margin: how long after its fastest possible arrival the
        // frame it hands out now is taken. What is heard is later by the audio decoded ahead.
        let margin = self.buffer.current_delay(now);
        self.current_delay = margin + self.ahead();
        self.target_delay = self.buffer.target_delay(now);
        let mut adjustment = self.buffer.delay_adjustment(now);
        if adjustment == (DelayAdjustment::Shrink { urgent: false })
            && margin < self.target_delay + self.frame * SHRINK_MARGIN_FRAMES
        {
            // Less than two frames above the target: a drop would warp the speech for one
            // frame of delay that the next jitter peak would ask back.
            adjustment = DelayAdjustment::Hold;
        }
        let mut frame = std::mem::take(&mut self.frame_buf);
        let outcome = if adjustment == DelayAdjustment::Grow && self.quiet_run > 0 {
            self.filler(&mut frame);
            self.inserted_for_delay += 1;
            PullOutcome::Inserted
        } else {
            self.play_next(now, adjustment, &mut frame)
        };
        // A pause is heard in received audio only: concealment fades out whatever the talker
        // said, so a concealed frame ends a pause rather than extending it.
        self.quiet_run = match outcome {
            PullOutcome::Decoded | PullOutcome::Dropped if is_quiet(&frame, self.quiet_rms) => {
                self.quiet_run.saturating_add(1)
            }
            // Comfort noise is the sender's own word that the talker is silent.
            PullOutcome::ComfortNoise => self.quiet_run.saturating_add(1),
            PullOutcome::Inserted | PullOutcome::Silence => self.quiet_run,
            _ => 0,
        };
        self.frame_start = Some(self.pending.len());
        self.pending.extend_from_slice(&frame);
        self.frame_buf = frame;
        // How long the buffer has asked for the same change (a shrink, like a drop, only from
        // two frames above the target): pauses usually come within a second or two and adapt
        // the delay unheard; only a talker who does not pause gets stretched.
        self.asked_for = match (adjustment, self.asked_for) {
            (DelayAdjustment::Hold, _) => (DelayAdjustment::Hold, 0),
            // A DTX pause is where the delay moves by whole frames (inserted comfort noise,
            // silence skipped before the talkspurt): what was asked for through it is no
            // talker who does not pause, and the speech after it is not stretched for it.
            _ if outcome == PullOutcome::ComfortNoise => (DelayAdjustment::Hold, 0),
            (w, (previous, run)) if w == previous => (w, run.saturating_add(1)),
            (w, _) => (w, 1),
        };
        let persistent = self.asked_for.1 >= self.stretch_after;
        if outcome == PullOutcome::Decoded {
            match adjustment {
                DelayAdjustment::Shrink { urgent: false } if persistent => {
                    self.accelerate(now, true)
                }
                DelayAdjustment::Grow if persistent => self.expand(),
                // The buffer asks to grow, not yet for long: keep what is queued.
                DelayAdjustment::Grow => {}
                // Audio decoded ahead is delay the buffer does not need: trim it while no
                // frame has to be decoded early for that.
                _ => self.accelerate(now, false),
            }
        }
        self.take_pending(out);
        Ok(outcome)
    }

    /// Moves the first frame of the decoded-ahead audio to `out` (which is one frame long; the
    /// queue holds at least that much).
    fn take_pending(&mut self, out: &mut [i16]) {
        let n = out.len().min(self.pending.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), self.pending.get(..n)) {
            dst.copy_from_slice(src);
        }
        zero_tail(out, n);
        self.pending.drain(..n);
        if let Some(keep) = self.stretcher.as_ref().map(TimeStretcher::min_input) {
            self.played.extend_from_slice(out);
            let excess = self.played.len().saturating_sub(keep);
            self.played.drain(..excess);
        }
    }

    /// Lengthens the audio not played yet by one pitch period, right where playout stands.
    fn expand(&mut self) {
        let Some(stretcher) = self.stretcher.as_mut() else {
            return;
        };
        // One frame in hand is enough: the period continues what was heard last.
        if let Stretch::Applied { samples } =
            stretcher.expand_after(&self.played, &mut self.pending)
        {
            self.expanded += 1;
            self.samples_inserted += samples as u64;
            // The period goes in at the head of the queue, before the frame just decoded.
            self.frame_start = self.frame_start.map(|start| start + samples);
        }
    }

    /// Shortens the audio not played yet by one pitch period. With `pop_ahead`, when less is
    /// in hand than the cut needs (a frame to play now plus the longest period), the next
    /// frame is popped and decoded now if its packet is here: that takes a frame off the
    /// buffer's margin, which is what a shrink asks for.
    fn accelerate(&mut self, now: Instant, pop_ahead: bool) {
        let Some((analysed, longest)) = self
            .stretcher
            .as_ref()
            .map(|s| (s.min_input(), s.max_period_samples()))
        else {
            return;
        };
        let needed = analysed.max(self.frame_samples + longest);
        if pop_ahead && self.pending.len() < needed && self.buffer.head_ready() {
            if let Next::Packet(packet) = self.buffer.pop(now) {
                let start = self.pending.len();
                self.pending.resize(start + self.frame_samples, 0);
                if let Some(tail) = self.pending.get_mut(start..) {
                    if !decode_into(&mut self.decoder, packet, tail) {
                        self.decode_errors += 1;
                        self.concealed += 1;
                    }
                    // A frame decoded ahead is heard like any other: it counts for pauses.
                    self.quiet_run = if is_quiet(tail, self.quiet_rms) {
                        self.quiet_run.saturating_add(1)
                    } else {
                        0
                    };
                }
            }
        }
        // Without popping, a cut is tried whenever the period found leaves a frame to play.
        if self.pending.len() < analysed.max(self.frame_samples + 1) {
            return;
        }
        let Some(stretcher) = self.stretcher.as_mut() else {
            return;
        };
        let keep = self.frame_samples;
        if let Stretch::Applied { samples } = stretcher.accelerate_keeping(&mut self.pending, keep)
        {
            self.accelerated += 1;
            self.samples_removed += samples as u64;
            // The cut replaces samples 1..1 + 2 * samples by one period: a frame starting
            // after the cut moves `samples` earlier, one starting inside it part of that.
            self.frame_start = self
                .frame_start
                .map(|start| start - start.saturating_sub(1 + samples).min(samples));
        }
    }

    fn play_next(
        &mut self,
        now: Instant,
        adjustment: DelayAdjustment,
        out: &mut [i16],
    ) -> PullOutcome {
        let onset = self.buffer.head_ends_comfort_noise();
        match self.buffer.pop(now) {
            Next::Packet(packet) => {
                if onset {
                    // Speech after a DTX pause starts from a fresh decoder (see
                    // `OpusDecoder::reset`); failing that, it is decoded as it is.
                    let _ = self.decoder.reset();
                }
                let quiet_hint = packet.len() <= 2;
                if !decode_into(&mut self.decoder, packet, out) {
                    self.decode_errors += 1;
                    self.concealed += 1;
                    return PullOutcome::Concealed;
                }
                let droppable = match adjustment {
                    DelayAdjustment::Shrink { urgent } => {
                        urgent
                            || quiet_hint
                            || (self.quiet_run >= PAUSE_FRAMES && is_quiet(out, self.quiet_rms))
                    }
                    _ => false,
                };
                if droppable && self.buffer.head_ready() {
                    if let Next::Packet(following) = self.buffer.pop(now) {
                        self.dropped_for_delay += 1;
                        if !decode_into(&mut self.decoder, following, out) {
                            self.decode_errors += 1;
                            self.concealed += 1;
                        }
                        return PullOutcome::Dropped;
                    }
                }
                PullOutcome::Decoded
            }
            Next::RecoverFec { next } => {
                if codec::packet_has_fec(next) {
                    if let Ok(written) = self.decoder.decode_fec(next, out) {
                        zero_tail(out, written);
                        self.fec_recovered += 1;
                        return PullOutcome::FecRecovered;
                    }
                }
                self.recover_or_conceal(out)
            }
            Next::Conceal => self.recover_or_conceal(out),
            Next::Gap => {
                self.conceal(out);
                PullOutcome::Gap
            }
            Next::Comfort => {
                self.comfort_noise(out);
                PullOutcome::ComfortNoise
            }
            Next::Wait => {
                self.filler(out);
                self.inserted_for_delay += 1;
                PullOutcome::Inserted
            }
            Next::Empty => {
                out.fill(0);
                PullOutcome::Silence
            }
        }
    }

    /// Rebuilds the frame just handed out as lost (`next_seq - 1`) from the DRED of the
    /// earliest later packet in hand when the stream carries DRED, else conceals it.
    fn recover_or_conceal(&mut self, out: &mut [i16]) -> PullOutcome {
        if self.dred {
            let lost_seq = self.buffer.next_seq().saturating_sub(1);
            if let Some((later_seq, later)) = self.buffer.earliest_packet() {
                let offset = usize::try_from(later_seq.saturating_sub(lost_seq))
                    .ok()
                    .and_then(|frames| frames.checked_mul(self.frame_samples));
                if let Some(offset) = offset {
                    if let Ok(Some(written)) = self.decoder.decode_dred(later, offset, out) {
                        zero_tail(out, written);
                        self.dred_recovered += 1;
                        return PullOutcome::DredRecovered;
                    }
                }
            }
        }
        self.conceal(out);
        self.concealed += 1;
        PullOutcome::Concealed
    }

    fn conceal(&mut self, out: &mut [i16]) {
        conceal_into(&mut self.decoder, out);
    }

    fn comfort_noise(&mut self, out: &mut [i16]) {
        self.comfort_noise += 1;
        match self.decoder.comfort_noise(out) {
            Ok(written) => zero_tail(out, written),
            Err(_) => out.fill(0),
        }
    }

    /// A frame inserted to grow the delay: comfort noise while the sender is in DTX, else the
    /// decoder's continuation of what was played.
    fn filler(&mut self, out: &mut [i16]) {
        if self.buffer.in_comfort_noise() {
            self.comfort_noise(out);
        } else {
            self.conceal(out);
        }
    }

    /// Counters so far, with the delays measured at the last pull.
    pub fn stats(&self) -> JitterStats {
        let buffer = self.buffer.stats();
        JitterStats {
            received: buffer.received,
            lost: buffer.lost,
            late: buffer.late,
            duplicate: buffer.duplicate,
            concealed: self.concealed + buffer.lost_in_gaps,
            fec_recovered: self.fec_recovered,
            dred_recovered: self.dred_recovered,
            dropped_for_delay: self.dropped_for_delay + buffer.skipped_silence,
            inserted_for_delay: self.inserted_for_delay,
            accelerated: self.accelerated,
            expanded: self.expanded,
            stretch_removed: self.samples_duration(self.samples_removed),
            stretch_inserted: self.samples_duration(self.samples_inserted),
            dtx_frames: buffer.dtx_frames,
            comfort_noise: self.comfort_noise,
            received_dtx: buffer.received_dtx,
            decode_errors: self.decode_errors,
            overflow_dropped: buffer.overflow_dropped,
            resyncs: buffer.resyncs,
            jitter: buffer.jitter,
            current_delay: self.current_delay,
            target_delay: self.target_delay,
        }
    }
}

/// Decodes one packet that must fill exactly the frame; false when the decoder rejects it.
fn decode_into(decoder: &mut OpusDecoder, packet: &[u8], out: &mut [i16]) -> bool {
    match decoder.decode(packet, out) {
        Ok(written) if written == out.len() => true,
        _ => {
            conceal_into(decoder, out);
            false
        }
    }
}

fn conceal_into(decoder: &mut OpusDecoder, out: &mut [i16]) {
    match decoder.conceal(out) {
        Ok(written) => zero_tail(out, written),
        Err(_) => out.fill(0),
    }
}

fn zero_tail(out: &mut [i16], written: usize) {
    if let Some(tail) = out.get_mut(written..) {
        tail.fill(0);
    }
}

/// Whether the frame's RMS is below `threshold`.
fn is_quiet(pcm: &[i16], threshold: u16) -> bool {
    if pcm.is_empty() {
        return true;
    }
    let energy: u64 = pcm
        .iter()
        .map(|&sample| {
            let s = i64::from(sample);
            (s * s) as u64
        })
        .sum();
    let limit = u64::from(threshold) * u64::from(threshold);
    energy / pcm.len() as u64 <= limit
}

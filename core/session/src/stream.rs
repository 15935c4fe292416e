//! The receiving half of the media path, one per participant: SFrame -> jitter buffer ->
//! Opus -> one frame per playout period.

use std::time::{Duration, Instant};

use viska_call::MediaRejection;
use viska_e2ee::keys::{Epoch, ParticipantId, SframeKey};
use viska_media::codec::{OpusConfig, OpusDecoder};
use viska_media::jitter::{JitterConfig, PushMeta, PushOutcome};
use viska_media::playout::{JitterStats, Playout, PlayoutConfig, PullOutcome};
use viska_sframe::{CipherSuite, KeyId, ReplayConfig, SframeError, SframeReceiver};

use crate::MAX_DATAGRAM;
use crate::error::MediaError;

/// What one participant's stream counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamCounters {
    pub(crate) frames_received: u64,
    pub(crate) decrypt_failures: u64,
    pub(crate) replays_rejected: u64,
    pub(crate) malformed: u64,
    pub(crate) refused_by_buffer: u64,
}

impl StreamCounters {
    pub(crate) fn add(&mut self, other: &Self) {
        self.frames_received += other.frames_received;
        self.decrypt_failures += other.decrypt_failures;
        self.replays_rejected += other.replays_rejected;
        self.malformed += other.malformed;
        self.refused_by_buffer += other.refused_by_buffer;
    }
}

/// The stream of one remote participant.
pub(crate) struct Stream {
    pub(crate) participant: ParticipantId,
    sframe: SframeReceiver,
    /// The KIDs installed for this participant and their epochs.
    pub(crate) keys: Vec<(KeyId, Epoch)>,
    playout: Playout,
    plain_buf: Vec<u8>,
    pub(crate) counters: StreamCounters,
    /// Playout counters at the last reception report: (lost, received).
    pub(crate) reported: (u64, u64),
    /// The sender's index of the frame played last, and when it starts to be heard in its
    /// period.
    pub(crate) last_played: Option<(u64, Duration)>,
    /// RMS of the last frame played, relative to full scale (0 to 1).
    pub(crate) level: f32,
    /// Running totals of refusals per reason, and when each was last reported.
    pub(crate) rejections: RejectionLog,
}

/// Counters and keys' epochs only: the buffers hold decrypted media.
impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("participant", &self.participant)
            .field(
                "epochs",
                &self.keys.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
            )
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(crate) fn new(
        participant: ParticipantId,
        suite: CipherSuite,
        opus: &OpusConfig,
        jitter: &JitterConfig,
    ) -> Result<Self, MediaError> {
        let frame = opus.frame.duration();
        let playout = Playout::new(
            PlayoutConfig {
                jitter: JitterConfig {
                    frame,
                    ..jitter.clone()
                },
                opus: *opus,
                ..PlayoutConfig::default()
            },
            OpusDecoder::new(opus)?,
        )?;
        Ok(Self {
            participant,
            sframe: SframeReceiver::new(suite, ReplayConfig::default())?,
            keys: Vec::new(),
            playout,
            plain_buf: vec![0; MAX_DATAGRAM],
            counters: StreamCounters::default(),
            reported: (0, 0),
            last_played: None,
            level: 0.0,
            rejections: RejectionLog::default(),
        })
    }

    pub(crate) fn add_key(&mut self, epoch: Epoch, key: &SframeKey) -> Result<(), MediaError> {
        self.sframe.add_key(key.key_id, &key.base_key)?;
        self.keys.retain(|(kid, _)| *kid != key.key_id);
        self.keys.push((key.key_id, epoch));
        Ok(())
    }

    /// Forgets the keys of epochs before `epoch`.
    pub(crate) fn retire_before(&mut self, epoch: Epoch) {
        let sframe = &mut self.sframe;
        self.keys.retain(|(kid, e)| {
            let keep = *e >= epoch;
            if !keep {
                sframe.remove_key(*kid);
            }
            keep
        });
    }

    pub(crate) fn has_key(&self, kid: KeyId) -> bool {
        self.keys.iter().any(|(k, _)| *k == kid)
    }

    /// Authenticates a datagram and queues its audio; returns the sender's frame index (the
    /// talkspurt marker goes to the jitter buffer with the frame). Every failure is counted.
    pub(crate) fn receive(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Result<u64, (MediaRejection, MediaError)> {
        let unprotected = match self.sframe.unprotect(&[], datagram, &mut self.plain_buf) {
            Ok(u) => u,
            Err(e) => {
                let reason = match &e {
                    SframeError::Duplicate { .. } | SframeError::TooOld { .. } => {
                        self.counters.replays_rejected += 1;
                        MediaRejection::Replay
                    }
                    // A datagram too long for the plaintext buffer cannot be one of ours.
                    SframeError::MalformedHeader(_)
                    | SframeError::TruncatedFrame { .. }
                    | SframeError::BufferTooSmall { .. } => {
                        self.counters.malformed += 1;
                        MediaRejection::Malformed
                    }
                    SframeError::UnknownKeyId(_) => {
                        self.counters.decrypt_failures += 1;
                        MediaRejection::UnknownKey
                    }
                    _ => {
                        self.counters.decrypt_failures += 1;
                        MediaRejection::Authentication
                    }
                };
                return Err((reason, e.into()));
            }
        };
        let plain = self.plain_buf.get(..unprotected.len).unwrap_or_default();
        let (header, opus) = match viska_proto::decode_media_payload(plain) {
            Ok(v) => v,
            Err(e) => {
                self.counters.malformed += 1;
                return Err((MediaRejection::Malformed, e.into()));
            }
        };
        self.counters.frames_received += 1;
        let meta = PushMeta {
            marker: header.marker,
            dtx: header.dtx,
        };
        match self.playout.push(now, unprotected.ctr, opus, meta) {
            PushOutcome::Accepted | PushOutcome::Overflow { .. } | PushOutcome::Resynced { .. } => {
            }
            _ => self.counters.refused_by_buffer += 1,
        }
        Ok(unprotected.ctr)
    }

    /// Whether the frame the next pull plays has arrived.
    pub(crate) fn next_ready(&self) -> bool {
        self.playout.next_ready()
    }

    /// Produces the next frame of this participant's audio (always exactly one frame).
    pub(crate) fn pull(
        &mut self,
        now: Instant,
        out: &mut [i16],
    ) -> Result<PullOutcome, MediaError> {
        let outcome = self.playout.pull(now, out)?;
        let starts_after = self.playout.last_frame_offset().unwrap_or_default();
        // The frame decoded is the one the buffer's position just moved past: read after the
        // pull, since a pull may also skip silent frames before a talkspurt, or drop one.
        let buffer = self.playout.buffer();
        self.last_played = match outcome {
            PullOutcome::Decoded | PullOutcome::Dropped if buffer.is_started() => buffer
                .next_seq()
                .checked_sub(1)
                .map(|index| (index, starts_after)),
            _ => None,
        };
        Ok(outcome)
    }

    pub(crate) fn playout_stats(&self) -> JitterStats {
        self.playout.stats()
    }
}

/// Per reason: how many datagrams were refused, and when the last event about them went out.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RejectionLog {
    counts: [u64; 4],
    last_event: [Option<Instant>; 4],
}

/// At most one security event per participant and reason in this interval.
pub(crate) const REJECTION_EVENT_INTERVAL: Duration = Duration::from_secs(1);

impl RejectionLog {
    fn slot(reason: MediaRejection) -> usize {
        match reason {
            MediaRejection::Authentication => 0,
            MediaRejection::UnknownKey => 1,
            MediaRejection::Replay => 2,
            _ => 3,
        }
    }

    /// Counts one refusal; returns the running total when an event is due (the first, then
    /// at most one per [`REJECTION_EVENT_INTERVAL`]).
    pub(crate) fn record(&mut self, now: Instant, reason: MediaRejection) -> Option<u64> {
        let slot = Self::slot(reason);
        let count = self.counts.get_mut(slot)?;
        *count = count.saturating_add(1);
        let total = *count;
        let last = self.last_event.get_mut(slot)?;
        let due =
            last.is_none_or(|at| now.saturating_duration_since(at) >= REJECTION_EVENT_INTERVAL);
        if due {
            *last = Some(now);
            return Some(total);
        }
        None
    }
}

//! The media path of one call, IO-free: capture frame -> Opus -> SFrame -> datagram, and
//! datagram -> SFrame -> jitter buffer -> Opus -> playout frame.
//!
//! The SFrame counter of the media key is the sender's frame index: it advances by one every
//! frame period, also across periods in which nothing is sent (mute, hold, DTX), so the
//! receiver can tell silence from loss and derive the media timestamp without extra bytes.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use viska_e2ee::keys::SframeKey;
use viska_media::codec::{CodecError, OpusConfig, OpusDecoder, OpusEncoder};
use viska_media::jitter::{JitterConfig, PushOutcome};
use viska_media::playout::{JitterStats, Playout, PlayoutConfig, PlayoutError, PullOutcome};
use viska_proto::{MediaHeader, ProtoError};
use viska_sframe::{CipherSuite, ReplayConfig, SendKey, SframeError, SframeReceiver, SframeSender};

/// Largest media datagram we build or accept.
pub const MAX_DATAGRAM: usize = 1500;

/// Errors of the media path. Receive-side errors are also counted in [`MediaCounters`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// SFrame protection or unprotection failed.
    #[error("sframe: {0}")]
    Sframe(#[from] SframeError),
    /// The Opus codec failed.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The decrypted payload is malformed.
    #[error("media payload: {0}")]
    Payload(#[from] ProtoError),
    /// Playout could not produce a frame.
    #[error("playout: {0}")]
    Playout(#[from] PlayoutError),
    /// The session's settings do not fit together.
    #[error("configuration: {0}")]
    Config(String),
}

/// Counters of one call's media path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaCounters {
    /// Frames encoded, protected and accepted by the transport.
    pub frames_sent: u64,
    /// Protected frames the transport refused (send buffer full, datagram too large); they are
    /// not in `frames_sent`.
    pub frames_refused: u64,
    /// Frame periods in which nothing was sent (mute, hold, DTX silence, and while the call
    /// rings or is on hold when the capture clock already runs; a callee reading a file starts
    /// its clock only once media flows, so it counts fewer of these).
    pub frames_skipped: u64,
    /// Media bytes (whole datagrams) sent.
    pub bytes_sent: u64,
    /// Opus payload bytes sent (to compute the overhead).
    pub opus_bytes_sent: u64,
    /// Datagrams that authenticated and parsed.
    pub frames_received: u64,
    /// Datagrams that failed authentication or had an unknown key id.
    pub decrypt_failures: u64,
    /// Datagrams rejected as replays (duplicate or older than the replay window).
    pub replays_rejected: u64,
    /// Datagrams whose SFrame header or decrypted payload was malformed.
    pub malformed: u64,
    /// Authenticated datagrams the jitter buffer refused (late, duplicate, oversized).
    pub refused_by_buffer: u64,
    /// The loss (percent) the encoder's in-band FEC is currently sized for, from the peer's
    /// reception reports.
    pub fec_expected_loss_pct: u8,
    /// Playout counters (loss, concealment, FEC, delays).
    pub playout: JitterStats,
}

/// Packets marked as a talkspurt start after a pause (hold, mute, DTX, the call's start). The
/// marker tells the receiver that the frames skipped before it were silence, not losses; were
/// only the first packet marked, losing it would turn the whole pause into loss (a second of
/// concealment after a one-second hold, and a loss rate that flags a good call as bad). A
/// marker on a packet that follows its predecessor without a gap changes nothing.
pub const MARKED_AFTER_PAUSE: u8 = 3;

/// One call's media path: SFrame protection, Opus, jitter buffer and playout of one call.
#[derive(Debug)]
pub struct MediaSession {
    encoder: OpusEncoder,
    sender: SframeSender,
    receiver: SframeReceiver,
    playout: Playout,
    duration: viska_proto::FrameDuration,
    frame_samples: usize,
    next_index: u64,
    /// How many of the next packets carry the talkspurt marker (after a pause).
    marked_left: u8,
    /// The frame encoded by `encode_frame` and not yet protected: (index, Opus length).
    pending: Option<(u64, usize)>,
    last_opus_len: usize,
    opus_buf: Vec<u8>,
    payload_buf: Vec<u8>,
    plain_buf: Vec<u8>,
    counters: MediaCounters,
}

/// What [`MediaSession::play_frame`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Played {
    /// How the frame was made.
    pub outcome: PullOutcome,
    /// The sender's frame index that was decoded, if a received frame was played.
    pub frame_index: Option<u64>,
    /// How long after the start of this period that frame starts to be heard (audio decoded
    /// ahead for time-stretching is played first).
    pub starts_after: Duration,
}

fn proto_duration(opus: &OpusConfig) -> Result<viska_proto::FrameDuration, MediaError> {
    viska_proto::FrameDuration::from_millis(opus.frame.millis() as u16)
        .map_err(|e| MediaError::Config(e.to_string()))
}

impl MediaSession {
    /// A media session keyed by a key source: `send` moves into the session's one sender.
    pub fn new(
        suite: CipherSuite,
        send: SendKey,
        recv: &SframeKey,
        opus: &OpusConfig,
        jitter: &JitterConfig,
    ) -> Result<Self, MediaError> {
        let encoder = OpusEncoder::new(opus)?;
        let decoder = OpusDecoder::new(opus)?;
        let sender = SframeSender::from_key(suite, send)?;
        let mut receiver = SframeReceiver::new(suite, ReplayConfig::default())?;
        receiver.add_key(recv.key_id, &recv.base_key)?;
        let frame = Duration::from_millis(u64::from(opus.frame.millis()));
        let playout = Playout::new(
            PlayoutConfig {
                jitter: JitterConfig {
                    frame,
                    ..jitter.clone()
                },
                opus: *opus,
                ..PlayoutConfig::default()
            },
            decoder,
        )?;
        Ok(Self {
            encoder,
            sender,
            receiver,
            playout,
            duration: proto_duration(opus)?,
            frame_samples: opus.frame_samples(),
            next_index: 0,
            marked_left: MARKED_AFTER_PAUSE,
            pending: None,
            last_opus_len: 0,
            opus_buf: vec![0; MAX_DATAGRAM],
            payload_buf: vec![0; MAX_DATAGRAM],
            plain_buf: vec![0; MAX_DATAGRAM],
            counters: MediaCounters {
                fec_expected_loss_pct: opus.expected_loss_pct,
                ..MediaCounters::default()
            },
        })
    }

    /// Samples per frame (48 kHz mono).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The index the next captured frame gets.
    pub fn next_frame_index(&self) -> u64 {
        self.next_index
    }

    /// Encodes and protects one captured frame into `out`; returns the frame's index and the
    /// datagram length, or `None` for the length when the encoder chose not to transmit (DTX).
    pub fn send_frame(
        &mut self,
        pcm: &[i16],
        out: &mut [u8],
    ) -> Result<(u64, Option<usize>), MediaError> {
        match self.encode_frame(pcm)? {
            Some(index) => Ok((index, Some(self.protect_encoded(out)?))),
            None => Ok((self.next_index.saturating_sub(1), None)),
        }
    }

    /// First half of [`send_frame`](Self::send_frame): encodes one captured frame and returns
    /// its index, or `None` when the encoder chose not to transmit (DTX).
    pub fn encode_frame(&mut self, pcm: &[i16]) -> Result<Option<u64>, MediaError> {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        let opus_len = self.encoder.encode(pcm, &mut self.opus_buf)?;
        // libopus signals "nothing worth sending" (DTX) with packets of at most 2 bytes.
        if opus_len <= 2 {
            self.skip(index)?;
            self.pending = None;
            return Ok(None);
        }
        self.pending = Some((index, opus_len));
        Ok(Some(index))
    }

    /// Second half of [`send_frame`](Self::send_frame): protects the frame just encoded into
    /// `out` and returns the datagram length.
    pub fn protect_encoded(&mut self, out: &mut [u8]) -> Result<usize, MediaError> {
        let (index, opus_len) = self
            .pending
            .take()
            .ok_or_else(|| MediaError::Config("no encoded frame to protect".into()))?;
        let header = MediaHeader {
            marker: self.marked_left > 0,
            dtx: false,
            duration: self.duration,
            timestamp: None,
        };
        let opus = self.opus_buf.get(..opus_len).unwrap_or_default();
        let payload_len = viska_proto::encode_media_payload(&header, opus, &mut self.payload_buf)?;
        self.sender.skip_to(index)?;
        let payload = self.payload_buf.get(..payload_len).unwrap_or_default();
        let len = self.sender.protect(&[], payload, out)?;
        self.marked_left = self.marked_left.saturating_sub(1);
        self.last_opus_len = opus_len;
        self.counters.frames_sent += 1;
        self.counters.bytes_sent += len as u64;
        self.counters.opus_bytes_sent += opus_len as u64;
        Ok(len)
    }

    /// Accounts one frame period in which nothing is sent (muted, on hold).
    pub fn skip_frame(&mut self) -> Result<u64, MediaError> {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        self.skip(index)?;
        Ok(index)
    }

    /// Accounts `n` frame periods in which nothing was sent at once (a stalled thread skipped
    /// them); the next packets carry the talkspurt marker.
    pub fn skip_frames(&mut self, n: u64) -> Result<(), MediaError> {
        if n == 0 {
            return Ok(());
        }
        let last = self.next_index.saturating_add(n - 1);
        self.next_index = last.saturating_add(1);
        self.skip(last)?;
        self.counters.frames_skipped += n - 1;
        Ok(())
    }

    fn skip(&mut self, index: u64) -> Result<(), MediaError> {
        self.sender.skip_to(index.saturating_add(1))?;
        self.marked_left = MARKED_AFTER_PAUSE;
        self.counters.frames_skipped += 1;
        Ok(())
    }

    /// Authenticates a received datagram and queues its audio for playout. Returns the
    /// sender's frame index. Every failure is counted and leaves the session usable.
    pub fn receive(&mut self, now: Instant, datagram: &[u8]) -> Result<u64, MediaError> {
        let unprotected = match self.receiver.unprotect(&[], datagram, &mut self.plain_buf) {
            Ok(u) => u,
            Err(e) => {
                match &e {
                    SframeError::Duplicate { .. } | SframeError::TooOld { .. } => {
                        self.counters.replays_rejected += 1;
                    }
                    // A datagram too long for the plaintext buffer cannot be one of ours.
                    SframeError::MalformedHeader(_)
                    | SframeError::TruncatedFrame { .. }
                    | SframeError::BufferTooSmall { .. } => {
                        self.counters.malformed += 1;
                    }
                    _ => self.counters.decrypt_failures += 1,
                }
                return Err(e.into());
            }
        };
        let plain = self.plain_buf.get(..unprotected.len).unwrap_or_default();
        let (header, opus) = match viska_proto::decode_media_payload(plain) {
            Ok(v) => v,
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e.into());
            }
        };
        self.counters.frames_received += 1;
        match self.playout.push(now, unprotected.ctr, opus, header.marker) {
            PushOutcome::Accepted | PushOutcome::Overflow { .. } | PushOutcome::Resynced { .. } => {
            }
            _ => self.counters.refused_by_buffer += 1,
        }
        Ok(unprotected.ctr)
    }

    /// Whether the frame the next [`MediaSession::play_frame`] plays has arrived (so playing
    /// it a little before its time loses nothing).
    pub fn next_frame_ready(&self) -> bool {
        self.playout.next_ready()
    }

    /// Produces the next frame of audio to play (always exactly one frame in `out`).
    pub fn play_frame(&mut self, now: Instant, out: &mut [i16]) -> Result<Played, MediaError> {
        let outcome = self.playout.pull(now, out)?;
        let starts_after = self.playout.last_frame_offset().unwrap_or_default();
        // The frame decoded is the one the buffer's position just moved past: read after the
        // pull, since a pull may also skip silent frames before a talkspurt, or drop one.
        let buffer = self.playout.buffer();
        let frame_index = match outcome {
            PullOutcome::Decoded | PullOutcome::Dropped if buffer.is_started() => {
                buffer.next_seq().checked_sub(1)
            }
            _ => None,
        };
        Ok(Played {
            outcome,
            frame_index,
            starts_after,
        })
    }

    /// Records that the transport refused the last protected frame: it moves from
    /// `frames_sent` to `frames_refused`.
    pub fn record_refused(&mut self, datagram_len: usize, opus_len: usize) {
        self.counters.frames_sent = self.counters.frames_sent.saturating_sub(1);
        self.counters.bytes_sent = self.counters.bytes_sent.saturating_sub(datagram_len as u64);
        self.counters.opus_bytes_sent = self
            .counters
            .opus_bytes_sent
            .saturating_sub(opus_len as u64);
        self.counters.frames_refused += 1;
    }

    /// Opus bytes of the last protected frame.
    pub fn last_opus_len(&self) -> usize {
        self.last_opus_len
    }

    /// Matches the encoder's forward error correction to the loss the peer reports.
    pub fn set_expected_loss(&mut self, loss_pct: u8) -> Result<(), MediaError> {
        self.encoder.set_expected_loss(loss_pct)?;
        self.counters.fec_expected_loss_pct = loss_pct;
        Ok(())
    }

    /// Counters so far.
    pub fn counters(&self) -> MediaCounters {
        let mut c = self.counters.clone();
        c.playout = self.playout.stats();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use viska_e2ee::direct::{
        ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeStep, SessionKeys,
    };
    use viska_e2ee::identity::IdentityKeyPair;

    /// The two ends' keys from a real direct handshake.
    fn keys() -> (SessionKeys, SessionKeys) {
        let mut rng = rand::rng();
        let config = |identity| HandshakeConfig {
            identity,
            suites: vec![viska_sframe::CipherSuite::ChaCha20Poly1305Sha256],
            binding: ChannelBinding {
                tls_exporter: [1; 32],
            },
            expected_peer: None,
        };
        let alice = config(IdentityKeyPair::generate(&mut rng));
        let bob = config(IdentityKeyPair::generate(&mut rng));
        let (mut i, msg1) = DirectHandshake::initiate(alice, &mut rng).expect("initiate");
        let mut r = DirectHandshake::respond(bob, &mut rng).expect("respond");
        i.bind_prologue(b"");
        r.bind_prologue(b"");
        let Ok(HandshakeStep::Send(msg2)) = r.handle_message(&msg1) else {
            panic!("message 2");
        };
        let Ok(HandshakeStep::Send(msg3)) = i.handle_message(&msg2) else {
            panic!("message 3");
        };
        let Ok(HandshakeStep::CompleteWithReveal(callee, msg4)) = r.handle_message(&msg3) else {
            panic!("message 4");
        };
        let Ok(HandshakeStep::Complete(caller)) = i.handle_message(&msg4.into_bytes()) else {
            panic!("complete");
        };
        (caller, callee)
    }

    fn session(keys: SessionKeys, opus: &OpusConfig, jitter: &JitterConfig) -> MediaSession {
        MediaSession::new(keys.suite, keys.media_send, &keys.media_recv, opus, jitter)
            .expect("media session")
    }

    /// A one-second hold, after which the first packet is lost: the pause must still read as
    /// a pause (no loss, no concealment), because the packets after it carry the marker too.
    #[test]
    fn losing_the_first_packet_after_a_hold_does_not_turn_the_hold_into_loss() {
        let (caller_keys, callee_keys) = keys();
        let opus = OpusConfig::default();
        let jitter = JitterConfig::default();
        let mut sender = session(caller_keys, &opus, &jitter);
        let mut receiver = session(callee_keys, &opus, &jitter);
        let frame = Duration::from_millis(20);
        let start = Instant::now();
        let pcm: Vec<i16> = (0..sender.frame_samples())
            .map(|i| if i % 40 < 20 { 4000 } else { -4000 })
            .collect();
        let mut out = vec![0i16; sender.frame_samples()];
        let mut datagram = vec![0u8; MAX_DATAGRAM];
        let mut tick = 0u32;
        let mut talk = |sender: &mut MediaSession,
                        receiver: &mut MediaSession,
                        tick: &mut u32,
                        deliver: bool,
                        play: bool| {
            let now = start + frame * *tick;
            let len = sender.send_frame(&pcm, &mut datagram).expect("send").1;
            if let (true, Some(len)) = (deliver, len) {
                receiver
                    .receive(now, datagram.get(..len).expect("len"))
                    .expect("receive");
            }
            if play {
                receiver
                    .play_frame(now + Duration::from_millis(1), &mut out)
                    .expect("play");
            }
            *tick += 1;
        };
        for _ in 0..50 {
            talk(&mut sender, &mut receiver, &mut tick, true, true);
        }
        // On hold: nothing sent, and the receiver (its direction off) plays nothing.
        for _ in 0..50 {
            sender.skip_frame().expect("skip");
            tick += 1;
        }
        // Resumed; the first packet is lost on the way.
        talk(&mut sender, &mut receiver, &mut tick, false, true);
        for _ in 0..50 {
            talk(&mut sender, &mut receiver, &mut tick, true, true);
        }
        let playout = receiver.counters().playout;
        assert!(playout.lost <= 1, "{playout:?}");
        assert!(playout.concealed <= 1, "{playout:?}");
        assert!(playout.dtx_frames >= 45, "{playout:?}");
    }
}

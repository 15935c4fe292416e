//! The media path's halves, visible to fuzz targets only (`--cfg fuzzing`, as cargo-fuzz
//! builds), as quinn exposes its internals: a sender and one participant's stream, driven
//! frame by frame without the rest of a session.
#![allow(missing_docs, unreachable_pub)]

use std::time::Instant;

use viska_e2ee::keys::{Epoch, ParticipantId, SframeKey};
use viska_media::codec::OpusConfig;
use viska_media::jitter::JitterConfig;
use viska_media::playout::PullOutcome;
use viska_sframe::{CipherSuite, SendKey};

use crate::error::MediaError;
use crate::sender::MediaSender;
use crate::session::MediaCounters;
use crate::stream::Stream;

/// One sender and one receiving stream, as two ends of a call use them.
pub struct MediaPath {
    sender: MediaSender,
    stream: Stream,
    frame_samples: usize,
}

/// What [`MediaPath::play_frame`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Played {
    pub outcome: PullOutcome,
    pub frame_index: Option<u64>,
}

impl MediaPath {
    pub fn new(
        suite: CipherSuite,
        send: SendKey,
        recv: &SframeKey,
        opus: &OpusConfig,
        jitter: &JitterConfig,
    ) -> Result<Self, MediaError> {
        let mut stream = Stream::new(ParticipantId::DIRECT_PEER, suite, opus, jitter)?;
        stream.add_key(Epoch(0), recv)?;
        Ok(Self {
            sender: MediaSender::new(opus, suite, send)?,
            stream,
            frame_samples: opus.frame_samples(),
        })
    }

    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    pub fn next_frame_index(&self) -> u64 {
        self.sender.next_index()
    }

    /// Encodes and protects one frame; the datagram's length, or `None` for DTX.
    pub fn send_frame(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<Option<usize>, MediaError> {
        self.sender.send(pcm, out)
    }

    pub fn skip_frame(&mut self) -> Result<(), MediaError> {
        self.sender.skip_frame()
    }

    pub fn receive(&mut self, now: Instant, datagram: &[u8]) -> Result<u64, MediaError> {
        self.stream.receive(now, datagram).map_err(|(_, e)| e)
    }

    pub fn next_frame_ready(&self) -> bool {
        self.stream.next_ready()
    }

    pub fn play_frame(&mut self, now: Instant, out: &mut [i16]) -> Result<Played, MediaError> {
        let outcome = self.stream.pull(now, out)?;
        Ok(Played {
            outcome,
            frame_index: self.stream.last_played.map(|(index, _)| index),
        })
    }

    pub fn counters(&self) -> MediaCounters {
        let s = self.sender.counters;
        let r = self.stream.counters;
        MediaCounters {
            frames_sent: s.frames_sent,
            frames_refused: s.frames_refused,
            frames_skipped: s.frames_skipped,
            bytes_sent: s.bytes_sent,
            opus_bytes_sent: s.opus_bytes_sent,
            frames_received: r.frames_received,
            decrypt_failures: r.decrypt_failures,
            replays_rejected: r.replays_rejected,
            malformed: r.malformed,
            refused_by_buffer: r.refused_by_buffer,
            fec_expected_loss_pct: self.sender.expected_loss_pct,
            playout: self.stream.playout_stats(),
            ..MediaCounters::default()
        }
    }
}

//! The sending half of the media path: captured frame -> Opus -> payload -> SFrame.

use viska_media::codec::{OpusConfig, OpusEncoder};
use viska_proto::MediaHeader;
use viska_sframe::{CipherSuite, SendKey, SframeSender};

use crate::error::MediaError;
use crate::{MARKED_AFTER_PAUSE, MAX_DATAGRAM};

/// What the sender counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SendCounters {
    pub(crate) frames_sent: u64,
    pub(crate) frames_refused: u64,
    pub(crate) frames_skipped: u64,
    /// Of `frames_sent`, comfort-noise updates (flag D).
    pub(crate) comfort_noise_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) opus_bytes_sent: u64,
}

/// One sender: the encoder, the one SFrame sender whose counter is the frame index for the
/// whole session (it runs on across key changes), and the talkspurt markers.
pub(crate) struct MediaSender {
    encoder: OpusEncoder,
    sframe: SframeSender,
    duration: viska_proto::FrameDuration,
    next_index: u64,
    /// How many of the next packets carry the talkspurt marker (after a pause).
    marked_left: u8,
    last_opus_len: usize,
    last_comfort_noise: bool,
    opus_buf: Vec<u8>,
    payload_buf: Vec<u8>,
    pub(crate) counters: SendCounters,
    pub(crate) expected_loss_pct: u8,
}

/// Counters only: the buffers hold the plaintext of the last frame.
impl std::fmt::Debug for MediaSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSender")
            .field("duration", &self.duration)
            .field("next_index", &self.next_index)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl MediaSender {
    /// A sender that owns `key` (moved in: no other sender can ever use it).
    pub(crate) fn new(
        opus: &OpusConfig,
        suite: CipherSuite,
        key: SendKey,
    ) -> Result<Self, MediaError> {
        let duration = opus.frame;
        Ok(Self {
            encoder: OpusEncoder::new(opus)?,
            sframe: SframeSender::from_key(suite, key)?,
            duration,
            next_index: 0,
            marked_left: MARKED_AFTER_PAUSE,
            last_opus_len: 0,
            last_comfort_noise: false,
            opus_buf: vec![0; MAX_DATAGRAM],
            payload_buf: vec![0; MAX_DATAGRAM],
            counters: SendCounters::default(),
            expected_loss_pct: opus.expected_loss_pct,
        })
    }

    /// A new key from the key source: the counter (frame index) runs on.
    pub(crate) fn rekey(&mut self, key: SendKey) -> Result<(), MediaError> {
        self.sframe.rekey(key)?;
        Ok(())
    }

    /// The index the next frame period gets.
    pub(crate) fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Encodes and protects one captured frame into `out`; returns the datagram length, or
    /// `None` when the encoder chose not to transmit (DTX). Either way one frame period (one
    /// index) is used.
    pub(crate) fn send(
        &mut self,
        pcm: &[i16],
        out: &mut [u8],
    ) -> Result<Option<usize>, MediaError> {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        self.encode_and_protect(index, pcm, out).inspect_err(|_| {
            // The period is a pause to the peer, as when nothing is sent on purpose.
            let _ = self.skipped(index);
        })
    }

    fn encode_and_protect(
        &mut self,
        index: u64,
        pcm: &[i16],
        out: &mut [u8],
    ) -> Result<Option<usize>, MediaError> {
        let opus_len = self.encoder.encode(pcm, &mut self.opus_buf)?;
        // libopus signals "nothing worth sending" (DTX) with packets of at most 2 bytes: the
        // frame is not sent, its index is skipped, and the next packet is marked.
        if opus_len <= 2 {
            self.skipped(index)?;
            return Ok(None);
        }
        // A larger packet produced in DTX is a comfort-noise update: flag D tells the
        // receiver that what follows until the next packet is silence, not loss.
        let comfort_noise = self.encoder.in_dtx()?;
        let header = MediaHeader {
            marker: self.marked_left > 0,
            dtx: comfort_noise,
            duration: self.duration,
            timestamp: None,
        };
        let opus = self.opus_buf.get(..opus_len).unwrap_or_default();
        let payload_len = viska_proto::encode_media_payload(&header, opus, &mut self.payload_buf)?;
        self.sframe.skip_to(index)?;
        let payload = self.payload_buf.get(..payload_len).unwrap_or_default();
        let len = self.sframe.protect(&[], payload, out)?;
        self.marked_left = self.marked_left.saturating_sub(1);
        self.last_opus_len = opus_len;
        self.last_comfort_noise = comfort_noise;
        self.counters.frames_sent += 1;
        self.counters.comfort_noise_sent += u64::from(comfort_noise);
        self.counters.bytes_sent += len as u64;
        self.counters.opus_bytes_sent += opus_len as u64;
        Ok(Some(len))
    }

    /// One frame period in which nothing is sent (muted, on hold, the source paused).
    pub(crate) fn skip_frame(&mut self) -> Result<(), MediaError> {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        self.skipped(index)
    }

    /// `n` frame periods in which nothing was sent at once (a stalled thread skipped them);
    /// the next packets carry the talkspurt marker.
    pub(crate) fn skip_frames(&mut self, n: u64) -> Result<(), MediaError> {
        if n == 0 {
            return Ok(());
        }
        let last = self.next_index.saturating_add(n - 1);
        self.next_index = last.saturating_add(1);
        self.skipped(last)?;
        self.counters.frames_skipped += n - 1;
        Ok(())
    }

    fn skipped(&mut self, index: u64) -> Result<(), MediaError> {
        self.sframe.skip_to(index.saturating_add(1))?;
        self.marked_left = MARKED_AFTER_PAUSE;
        self.counters.frames_skipped += 1;
        Ok(())
    }

    /// The transport refused the last protected frame: it moves from sent to refused.
    pub(crate) fn refused(&mut self, datagram_len: usize) {
        let c = &mut self.counters;
        c.frames_sent = c.frames_sent.saturating_sub(1);
        if self.last_comfort_noise {
            c.comfort_noise_sent = c.comfort_noise_sent.saturating_sub(1);
        }
        c.bytes_sent = c.bytes_sent.saturating_sub(datagram_len as u64);
        c.opus_bytes_sent = c.opus_bytes_sent.saturating_sub(self.last_opus_len as u64);
        c.frames_refused += 1;
    }

    /// Sizes the encoder's in-band FEC for this much loss.
    pub(crate) fn set_expected_loss(&mut self, pct: u8) -> Result<(), MediaError> {
        self.encoder.set_expected_loss(pct)?;
        self.expected_loss_pct = pct;
        Ok(())
    }
}

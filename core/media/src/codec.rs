//! Opus encoding and decoding for one 48 kHz mono voice stream, with the loss-recovery paths a
//! receiver needs: in-band FEC (LBRR), packet loss concealment, and DRED deep redundancy.
//!
//! The encoder runs libopus in VOIP mode with in-band FEC tuned to an expected loss rate; the
//! decoder runs at a complexity that enables the neural PLC and OSCE speech enhancement of
//! libopus 1.5+. Neither allocates per frame.
#![forbid(unsafe_code)]

use core::ffi::c_int;

use crate::opus_ext::{self, DredState, EncoderSetting, RawDecoder, RawEncoder};

/// Lowest bitrate libopus accepts, bits per second.
pub const MIN_BITRATE_BPS: u32 = 6_000;
/// Highest bitrate libopus accepts for one channel, bits per second.
pub const MAX_BITRATE_BPS: u32 = 510_000;
/// Longest DRED history libopus can carry, milliseconds.
pub const MAX_DRED_DURATION_MS: u16 = 1_040;
/// A buffer this large holds any packet the encoder produces at Viska's settings.
pub const MAX_PACKET_BYTES: usize = 1_500;
/// The most samples one Opus packet can decode to (120 ms at 48 kHz).
pub const MAX_PACKET_SAMPLES: usize = 5_760;

/// Errors from the Opus codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A configuration value is out of range.
    #[error("invalid Opus config: {field} {reason}")]
    InvalidConfig {
        /// The offending field of [`OpusConfig`].
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A PCM or output buffer has the wrong length for the configured frame.
    #[error("frame of {got} samples, expected {expected}")]
    FrameSize {
        /// Samples the call needs.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// The packet is empty (a lost packet is signalled by calling `conceal`, not by an empty
    /// packet).
    #[error("empty packet")]
    EmptyPacket,
    /// libopus: one or more invalid or out-of-range arguments (`OPUS_BAD_ARG`).
    #[error("libopus: bad argument")]
    BadArgument,
    /// libopus: the output buffer is too small (`OPUS_BUFFER_TOO_SMALL`).
    #[error("libopus: buffer too small")]
    BufferTooSmall,
    /// libopus: an internal error (`OPUS_INTERNAL_ERROR`).
    #[error("libopus: internal error")]
    Internal,
    /// libopus: the packet is corrupted or unsupported (`OPUS_INVALID_PACKET`).
    #[error("libopus: invalid packet")]
    InvalidPacket,
    /// libopus: the request is not implemented (`OPUS_UNIMPLEMENTED`), e.g. DRED in a
    /// build without it.
    #[error("libopus: unimplemented")]
    Unimplemented,
    /// libopus: the state is invalid or freed (`OPUS_INVALID_STATE`).
    #[error("libopus: invalid state")]
    InvalidState,
    /// libopus: memory allocation failed (`OPUS_ALLOC_FAIL`).
    #[error("libopus: allocation failed")]
    AllocFail,
    /// libopus returned a code this version does not know.
    #[error("libopus: unknown error {0}")]
    Unknown(i32),
}

impl CodecError {
    fn from_opus(code: c_int) -> Self {
        match code {
            opusic_sys::OPUS_BAD_ARG => Self::BadArgument,
            opusic_sys::OPUS_BUFFER_TOO_SMALL => Self::BufferTooSmall,
            opusic_sys::OPUS_INTERNAL_ERROR => Self::Internal,
            opusic_sys::OPUS_INVALID_PACKET => Self::InvalidPacket,
            opusic_sys::OPUS_UNIMPLEMENTED => Self::Unimplemented,
            opusic_sys::OPUS_INVALID_STATE => Self::InvalidState,
            opusic_sys::OPUS_ALLOC_FAIL => Self::AllocFail,
            other => Self::Unknown(other),
        }
    }
}

/// The duration of one encoded frame (defined once, in `viska-types`).
pub use viska_types::FrameDuration;

/// Settings shared by the encoder and decoder of one stream (48 kHz mono only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusConfig {
    /// Frame duration.
    pub frame: FrameDuration,
    /// Target bitrate, bits per second (6000..=510000). DRED, when on, is paid for out of
    /// this budget.
    pub bitrate_bps: u32,
    /// In-band forward error correction (LBRR): each packet carries a low-rate copy of the
    /// previous frame.
    pub fec: bool,
    /// Loss rate the encoder prepares for, percent (0..=100); drives how much FEC and DRED
    /// it spends bits on.
    pub expected_loss_pct: u8,
    /// Discontinuous transmission (on by default): while the input is silent the encoder
    /// emits a comfort-noise update every 400 ms and 1-byte packets, which are not sent, in
    /// between (see [`OpusEncoder::encode`]).
    pub dtx: bool,
    /// Encoder complexity 0..=10.
    pub complexity: u8,
    /// Decoder complexity 0..=10. 5 enables the neural PLC, 6 adds LACE and 7+ NoLACE speech
    /// enhancement (OSCE) in libopus 1.5+.
    pub decoder_complexity: u8,
    /// DRED (deep redundancy) history carried in each packet, milliseconds, a multiple of 10
    /// up to [`MAX_DRED_DURATION_MS`]; 0 turns DRED off.
    pub dred_duration_ms: u16,
}

impl Default for OpusConfig {
    fn default() -> Self {
        Self {
            frame: FrameDuration::Ms20,
            bitrate_bps: 32_000,
            fec: true,
            expected_loss_pct: 10,
            dtx: true,
            complexity: 9,
            decoder_complexity: 7,
            dred_duration_ms: 0,
        }
    }
}

impl OpusConfig {
    /// Checks every field is in range.
    pub fn validate(&self) -> Result<(), CodecError> {
        let bad = |field, reason| Err(CodecError::InvalidConfig { field, reason });
        if !(MIN_BITRATE_BPS..=MAX_BITRATE_BPS).contains(&self.bitrate_bps) {
            return bad("bitrate_bps", "must be 6000..=510000");
        }
        if self.expected_loss_pct > 100 {
            return bad("expected_loss_pct", "must be 0..=100");
        }
        if self.complexity > 10 {
            return bad("complexity", "must be 0..=10");
        }
        if self.decoder_complexity > 10 {
            return bad("decoder_complexity", "must be 0..=10");
        }
        if self.dred_duration_ms > MAX_DRED_DURATION_MS {
            return bad("dred_duration_ms", "must be at most 1040");
        }
        if self.dred_duration_ms % 10 != 0 {
            return bad("dred_duration_ms", "must be a multiple of 10");
        }
        Ok(())
    }

    /// Samples per frame at 48 kHz.
    pub const fn frame_samples(&self) -> usize {
        self.frame.samples()
    }
}

/// The libopus version linked in (for logs and reports).
pub fn libopus_version() -> &'static str {
    opus_ext::version()
}

/// Whether `packet` carries in-band FEC data that [`OpusDecoder::decode_fec`] can use to
/// rebuild the frame before it.
pub fn packet_has_fec(packet: &[u8]) -> bool {
    opus_ext::packet_has_lbrr(packet)
}

/// Samples (at 48 kHz) one packet decodes to.
pub fn packet_samples(packet: &[u8]) -> Result<usize, CodecError> {
    opus_ext::packet_samples(packet).map_err(CodecError::from_opus)
}

/// An Opus encoder for one 48 kHz mono voice stream.
#[derive(Debug)]
pub struct OpusEncoder {
    raw: RawEncoder,
    frame_samples: usize,
}

impl OpusEncoder {
    /// Creates an encoder (application VOIP) configured from `config`.
    pub fn new(config: &OpusConfig) -> Result<Self, CodecError> {
        config.validate()?;
        let mut raw = RawEncoder::new_voip().map_err(CodecError::from_opus)?;
        let settings = [
            EncoderSetting::SignalVoice,
            EncoderSetting::Bitrate(bitrate_i32(config.bitrate_bps)?),
            EncoderSetting::Complexity(i32::from(config.complexity)),
            EncoderSetting::InbandFec(config.fec),
            EncoderSetting::PacketLossPercent(i32::from(config.expected_loss_pct)),
            EncoderSetting::Dtx(config.dtx),
        ];
        for setting in settings {
            raw.set(setting).map_err(CodecError::from_opus)?;
        }
        if config.dred_duration_ms > 0 {
            raw.set(EncoderSetting::DredDuration(i32::from(
                config.dred_duration_ms / 10,
            )))
            .map_err(CodecError::from_opus)?;
        }
        Ok(Self {
            raw,
            frame_samples: config.frame_samples(),
        })
    }

    /// Encodes one frame (exactly [`OpusConfig::frame_samples`] samples) into `out` and returns
    /// the packet length. `out` of [`MAX_PACKET_BYTES`] always suffices. With DTX on, a packet
    /// of 1 or 2 bytes means "silence, nothing worth sending"; [`Self::in_dtx`] tells a
    /// comfort-noise update from speech.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        if pcm.len() != self.frame_samples {
            return Err(CodecError::FrameSize {
                expected: self.frame_samples,
                got: pcm.len(),
            });
        }
        self.raw.encode(pcm, out).map_err(CodecError::from_opus)
    }

    /// Whether the frame encoded last was produced in DTX: a packet of more than 2 bytes is
    /// then a comfort-noise update (the background's level and spectrum, sent every 400 ms
    /// while the input stays silent), one of at most 2 bytes a frame that needs no sending.
    pub fn in_dtx(&mut self) -> Result<bool, CodecError> {
        self.raw.in_dtx().map_err(CodecError::from_opus)
    }

    /// Changes the target bitrate (bits per second, 6000..=510000).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), CodecError> {
        if !(MIN_BITRATE_BPS..=MAX_BITRATE_BPS).contains(&bitrate_bps) {
            return Err(CodecError::InvalidConfig {
                field: "bitrate_bps",
                reason: "must be 6000..=510000",
            });
        }
        self.raw
            .set(EncoderSetting::Bitrate(bitrate_i32(bitrate_bps)?))
            .map_err(CodecError::from_opus)
    }

    /// Changes the loss rate (percent, 0..=100) the encoder prepares FEC and DRED for.
    pub fn set_expected_loss(&mut self, loss_pct: u8) -> Result<(), CodecError> {
        if loss_pct > 100 {
            return Err(CodecError::InvalidConfig {
                field: "expected_loss_pct",
                reason: "must be 0..=100",
            });
        }
        self.raw
            .set(EncoderSetting::PacketLossPercent(i32::from(loss_pct)))
            .map_err(CodecError::from_opus)
    }

    /// The encoder's algorithmic delay in samples (the Ogg Opus pre-skip).
    pub fn lookahead(&mut self) -> Result<usize, CodecError> {
        let samples = self.raw.lookahead().map_err(CodecError::from_opus)?;
        usize::try_from(samples).map_err(|_| CodecError::Internal)
    }

    /// Samples per frame this encoder takes.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }
}

fn bitrate_i32(bitrate_bps: u32) -> Result<i32, CodecError> {
    i32::try_from(bitrate_bps).map_err(|_| CodecError::InvalidConfig {
        field: "bitrate_bps",
        reason: "too large",
    })
}

/// The lowest decoder complexity at which libopus 1.5+ conceals with its neural PLC.
const DEEP_PLC_COMPLEXITY: i32 = 5;

/// Samples one DRED latent vector covers (40 ms at 48 kHz).
const DRED_LATENT_SAMPLES: i32 = 1_920;

/// The DRED decoder plus a note of which packet it last parsed, so several lost frames
/// recovered from the same later packet parse it once.
#[derive(Debug)]
struct DredCache {
    state: DredState,
    packet: Vec<u8>,
    parsed_samples: i32,
    reach: i32,
}

/// An Opus decoder for one 48 kHz mono voice stream, with FEC, PLC and DRED recovery.
#[derive(Debug)]
pub struct OpusDecoder {
    raw: RawDecoder,
    frame_samples: usize,
    complexity: i32,
    dred: Option<DredCache>,
}

impl OpusDecoder {
    /// Creates a decoder for a stream encoded with `config` (frame duration and decoder
    /// complexity matter here).
    pub fn new(config: &OpusConfig) -> Result<Self, CodecError> {
        config.validate()?;
        let mut raw = RawDecoder::new().map_err(CodecError::from_opus)?;
        let complexity = i32::from(config.decoder_complexity);
        raw.set_complexity(complexity)
            .map_err(CodecError::from_opus)?;
        Ok(Self {
            raw,
            frame_samples: config.frame_samples(),
            complexity,
            dred: None,
        })
    }

    /// Samples per frame of this stream.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Decodes one received packet into `out` and returns the samples written. `out` must
    /// hold the packet's duration (a frame; [`MAX_PACKET_SAMPLES`] holds any packet).
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::EmptyPacket);
        }
        let needed = packet_samples(packet)?;
        if needed == 0 {
            return Err(CodecError::InvalidPacket);
        }
        let got = out.len();
        let dest = out.get_mut(..needed).ok_or(CodecError::FrameSize {
            expected: needed,
            got,
        })?;
        self.raw
            .decode(Some(packet), dest, false)
            .map_err(CodecError::from_opus)
    }

    /// Rebuilds the LOST frame just before `next_packet` from the in-band FEC (LBRR) that
    /// `next_packet` carries, writing one frame into `out`. Call it when the frame before
    /// `next_packet` is missing, then decode `next_packet` normally. When `next_packet` has
    /// no FEC data (see [`packet_has_fec`]), libopus falls back to concealment.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        if next_packet.is_empty() {
            return Err(CodecError::EmptyPacket);
        }
        // Validates the packet before libopus is asked to look inside it.
        packet_samples(next_packet)?;
        let dest = self.frame_slice(out)?;
        self.raw
            .decode(Some(next_packet), dest, true)
            .map_err(CodecError::from_opus)
    }

    /// Conceals one lost frame (packet loss concealment), writing one frame into `out`.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        let dest = self.frame_slice(out)?;
        self.raw
            .decode(None, dest, false)
            .map_err(CodecError::from_opus)
    }

    /// Plays one frame of a DTX pause (the sender sent nothing for it, on purpose), writing
    /// one frame into `out`: libopus' comfort noise, shaped by the last comfort-noise update
    /// decoded. This is libopus' own DTX path (a decode without data) at a complexity below
    /// the neural concealment's, so that seconds of silence are not run through a network
    /// meant to bridge lost speech; the configured complexity is back for the next call.
    pub fn comfort_noise(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        let frame = self.frame_samples;
        let got = out.len();
        let dest = out.get_mut(..frame).ok_or(CodecError::FrameSize {
            expected: frame,
            got,
        })?;
        let lowered = self.complexity >= DEEP_PLC_COMPLEXITY;
        if lowered {
            self.raw
                .set_complexity(DEEP_PLC_COMPLEXITY - 1)
                .map_err(CodecError::from_opus)?;
        }
        let written = self.raw.decode(None, dest, false);
        if lowered {
            self.raw
                .set_complexity(self.complexity)
                .map_err(CodecError::from_opus)?;
        }
        written.map_err(CodecError::from_opus)
    }

    /// Forgets the stream so far, as a new decoder (the settings stay). For the first packet
    /// of a talkspurt after a DTX pause: after seconds of comfort noise the libopus decoder
    /// brings the new speech up over some 200 ms (measured: a 300 Hz tone at a quarter of its
    /// level in the first frames), while a decoder that starts afresh plays it at once.
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.raw.reset().map_err(CodecError::from_opus)
    }

    /// Rebuilds a lost frame from the DRED deep redundancy carried in a LATER packet.
    ///
    /// `offset_samples` is how far before the start of `later_packet` the lost frame begins
    /// (one frame for the frame just before it, two for the one before that, ...). Writes one
    /// frame into `out` and returns `Ok(Some(samples))`, or `Ok(None)` when the packet carries
    /// no redundancy reaching that far back (the caller then conceals). The packet is parsed
    /// once and reused while the following calls name the same packet.
    pub fn decode_dred(
        &mut self,
        later_packet: &[u8],
        offset_samples: usize,
        out: &mut [i16],
    ) -> Result<Option<usize>, CodecError> {
        if later_packet.is_empty() {
            return Err(CodecError::EmptyPacket);
        }
        let frame = self.frame_samples;
        let offset = i32::try_from(offset_samples).map_err(|_| CodecError::BadArgument)?;
        if offset_samples < frame {
            return Err(CodecError::FrameSize {
                expected: frame,
                got: offset_samples,
            });
        }
        let got = out.len();
        let dest = out.get_mut(..frame).ok_or(CodecError::FrameSize {
            expected: frame,
            got,
        })?;
        if self.dred.is_none() {
            let state = DredState::new().map_err(CodecError::from_opus)?;
            self.dred = Some(DredCache {
                state,
                packet: Vec::with_capacity(MAX_PACKET_BYTES),
                parsed_samples: 0,
                reach: 0,
            });
        }
        let Some(cache) = self.dred.as_mut() else {
            return Err(CodecError::Internal);
        };
        if cache.packet.as_slice() != later_packet || cache.parsed_samples < offset {
            // Decode one DRED latent (40 ms) beyond the offset asked for: the newest
            // redundancy starts a little before the packet (encoder delay), so parsing exactly
            // `offset` back would fall just short of the lost frame's start.
            let want = offset.saturating_add(DRED_LATENT_SAMPLES);
            let span = match cache.state.parse(later_packet, want) {
                Ok(span) => span,
                Err(rc) => {
                    // The state no longer holds the cached packet's redundancy.
                    cache.packet.clear();
                    cache.parsed_samples = 0;
                    cache.reach = 0;
                    return Err(CodecError::from_opus(rc));
                }
            };
            cache.packet.clear();
            cache.packet.extend_from_slice(later_packet);
            cache.parsed_samples = want;
            cache.reach = span.reach;
        }
        if cache.reach < offset {
            return Ok(None);
        }
        let written = self
            .raw
            .decode_dred(&cache.state, offset, dest)
            .map_err(CodecError::from_opus)?;
        Ok(Some(written))
    }

    fn frame_slice<'a>(&self, out: &'a mut [i16]) -> Result<&'a mut [i16], CodecError> {
        let frame = self.frame_samples;
        let got = out.len();
        out.get_mut(..frame).ok_or(CodecError::FrameSize {
            expected: frame,
            got,
        })
    }
}

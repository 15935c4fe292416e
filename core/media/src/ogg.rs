//! Recording a call leg as an Ogg Opus file (RFC 7845) that any player opens.
//!
//! The writer encodes with the same [`OpusConfig`] as the call, so a recording costs one extra
//! encoder, not a transcode of decoded audio at another rate.
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::BufWriter;
use std::path::Path;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use crate::audio::{AudioIoError, AudioSink, SAMPLE_RATE};
use crate::codec::{CodecError, MAX_PACKET_BYTES, OpusConfig, OpusEncoder};

/// Vendor string written into the OpusTags header.
pub const VENDOR: &str = "viska";

/// Audio packets per Ogg page: 50 frames of 20 ms = one second.
const PACKETS_PER_PAGE: u64 = 50;

/// Errors from writing an Ogg Opus file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OggError {
    /// The file could not be created or written.
    #[error("ogg file: {0}")]
    Io(#[from] std::io::Error),
    /// The encoder refused the configuration or a frame.
    #[error("ogg encoder: {0}")]
    Codec(#[from] CodecError),
    /// The writer was already finished.
    #[error("ogg writer already finished")]
    Finished,
    /// The encoder lookahead does not fit the 16-bit pre-skip field.
    #[error("encoder lookahead {0} does not fit the pre-skip field")]
    PreSkip(usize),
}

impl From<OggError> for AudioIoError {
    fn from(e: OggError) -> Self {
        match e {
            OggError::Codec(CodecError::FrameSize { expected, got }) => {
                AudioIoError::FrameSize { expected, got }
            }
            other => AudioIoError::File(other.to_string()),
        }
    }
}

/// Writes 48 kHz mono PCM frames as an Ogg Opus file; also an [`AudioSink`].
///
/// Call [`finish`](OggOpusWriter::finish) at the end: it flushes the encoder's lookahead and
/// marks the end of stream with a final granule position that trims the padding. Dropping an
/// unfinished writer tries to finish it, ignoring errors.
pub struct OggOpusWriter {
    packets: PacketWriter<'static, BufWriter<File>>,
    encoder: OpusEncoder,
    serial: u32,
    pre_skip: u64,
    frame_samples: usize,
    scratch: Vec<u8>,
    /// The newest packet and its granule position, held back so the last one can carry the
    /// end-of-stream flag.
    held: Option<(Vec<u8>, u64)>,
    /// Samples written by the caller (the real audio, without padding).
    input_samples: u64,
    /// Samples handed to the encoder (input plus flush padding).
    encoded_samples: u64,
    /// Audio packets written so far (for page breaks).
    audio_packets: u64,
    finished: bool,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("serial", &self.serial)
            .field("pre_skip", &self.pre_skip)
            .field("input_samples", &self.input_samples)
            .field("finished", &self.finished)
            .finish()
    }
}

impl OggOpusWriter {
    /// Creates the file and writes the OpusHead and OpusTags headers.
    pub fn create(path: impl AsRef<Path>, config: &OpusConfig) -> Result<Self, OggError> {
        let mut encoder = OpusEncoder::new(config)?;
        let lookahead = encoder.lookahead()?;
        let pre_skip = u16::try_from(lookahead).map_err(|_| OggError::PreSkip(lookahead))?;
        let file = BufWriter::new(File::create(path)?);
        let mut packets = PacketWriter::new(file);
        // RFC 7845 asks for a random serial number so streams can be chained or multiplexed.
        let serial = RandomState::new().hash_one(std::process::id()) as u32;

        packets.write_packet(opus_head(pre_skip), serial, PacketWriteEndInfo::EndPage, 0)?;
        packets.write_packet(opus_tags(), serial, PacketWriteEndInfo::EndPage, 0)?;
        Ok(Self {
            packets,
            frame_samples: encoder.frame_samples(),
            encoder,
            serial,
            pre_skip: u64::from(pre_skip),
            scratch: vec![0; MAX_PACKET_BYTES],
            held: None,
            input_samples: 0,
            encoded_samples: 0,
            audio_packets: 0,
            finished: false,
        })
    }

    /// The pre-skip written in the header (the encoder's lookahead, samples).
    pub fn pre_skip(&self) -> u64 {
        self.pre_skip
    }

    /// Encodes one frame (the configured frame size) and queues it for the file.
    pub fn write(&mut self, pcm: &[i16]) -> Result<(), OggError> {
        if self.finished {
            return Err(OggError::Finished);
        }
        self.encode_frame(pcm)?;
        self.input_samples += pcm.len() as u64;
        Ok(())
    }

    fn encode_frame(&mut self, pcm: &[i16]) -> Result<(), OggError> {
        let len = self.encoder.encode(pcm, &mut self.scratch)?;
        self.encoded_samples += pcm.len() as u64;
        let packet = self
            .scratch
            .get(..len)
            .ok_or(CodecError::Internal)?
            .to_vec();
        if let Some((previous, granule)) = self.held.replace((packet, self.encoded_samples)) {
            self.audio_packets += 1;
            // Close a page about every second, so a recording cut short by a crash loses at
            // most that much (the ogg writer otherwise fills pages of up to 255 packets).
            let end = if self.audio_packets % PACKETS_PER_PAGE == 0 {
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.packets
                .write_packet(previous, self.serial, end, granule)?;
        }
        Ok(())
    }

    /// Flushes the encoder's lookahead with silence, writes the last packet with the
    /// end-of-stream flag and a granule position of pre-skip + real samples, and flushes the
    /// file. Further writes fail with [`OggError::Finished`].
    pub fn finish(&mut self) -> Result<(), OggError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let end = self.pre_skip + self.input_samples;
        let silence = vec![0i16; self.frame_samples];
        // At least one audio packet, and enough of them that every real sample came out of the
        // encoder (its lookahead delays the input by pre-skip samples).
        while self.held.is_none() || self.encoded_samples < end {
            self.encode_frame(&silence)?;
        }
        if let Some((last, _)) = self.held.take() {
            self.packets
                .write_packet(last, self.serial, PacketWriteEndInfo::EndStream, end)?;
        }
        use std::io::Write;
        self.packets.inner_mut().flush()?;
        Ok(())
    }
}

impl AudioSink for OggOpusWriter {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        Ok(self.write(pcm)?)
    }

    fn finish(&mut self) -> Result<(), AudioIoError> {
        Ok(OggOpusWriter::finish(self)?)
    }
}

impl Drop for OggOpusWriter {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = OggOpusWriter::finish(self) {
                tracing::warn!("ogg opus writer dropped unfinished and could not finish: {e}");
            }
        }
    }
}

/// The RFC 7845 §5.1 identification header for a mono, channel-mapping-family-0 stream.
fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut head = Vec::with_capacity(19);
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(1); // channel count
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // input sample rate (informational)
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    head.push(0); // channel mapping family: mono/stereo, no table
    head
}

/// The RFC 7845 §5.2 comment header: vendor string and no user comments.
fn opus_tags() -> Vec<u8> {
    let mut tags = Vec::with_capacity(16 + VENDOR.len());
    tags.extend_from_slice(b"OpusTags");
    tags.extend_from_slice(&(VENDOR.len() as u32).to_le_bytes());
    tags.extend_from_slice(VENDOR.as_bytes());
    tags.extend_from_slice(&0u32.to_le_bytes());
    tags
}

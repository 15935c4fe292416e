//! WAV files as audio end points: [`WavSource`] reads any PCM or float WAV and delivers 48 kHz
//! mono frames; [`WavSink`] records 48 kHz mono 16-bit.
//!
//! A source file is read and converted whole when opened (speech clips and prompts are small),
//! so `read_frame` is a copy and never blocks on the disk. Frames are paced by the caller.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::audio::{AudioIoError, AudioSink, AudioSource, SAMPLE_RATE, SourceStatus};

/// Longest source file accepted, in seconds of audio.
const MAX_SOURCE_SECONDS: u64 = 3_600;
/// Most samples (all channels together) a source file may hold: one hour of 48 kHz stereo,
/// whatever rate and channel count the header declares, so that the memory a file can make us
/// allocate does not grow with a header field.
const MAX_SOURCE_SAMPLES: u64 = MAX_SOURCE_SECONDS * 48_000 * 2;
/// Sample rates a source file may declare. The resampler's FFT grows with the input rate (up
/// to the rate itself when it shares no factor with 48 kHz), so a rate taken unchecked from a
/// header could make it allocate without bound; this range covers telephony to studio files.
const SOURCE_SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=384_000;
/// Most channels a source file may declare.
const MAX_SOURCE_CHANNELS: u16 = 32;

/// Errors specific to reading and writing WAV files (converted to [`AudioIoError::File`] at the
/// [`AudioSource`]/[`AudioSink`] boundary).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file could not be opened, parsed or written.
    #[error("wav: {0}")]
    Wav(#[from] hound::Error),
    /// The file uses a sample format this reader does not convert.
    #[error("unsupported wav format: {bits}-bit {format}")]
    Unsupported {
        /// Bits per sample.
        bits: u16,
        /// "int" or "float".
        format: &'static str,
    },
    /// The file is longer than [`WavSource`] accepts: more than one hour of audio, or more
    /// samples than one hour of 48 kHz stereo holds, whatever its declared rate.
    #[error("wav file too long")]
    TooLong,
    /// The header declares a sample rate outside 8 kHz to 384 kHz.
    #[error("unsupported wav sample rate: {sample_rate} Hz (8000 to 384000 accepted)")]
    UnsupportedSampleRate {
        /// The declared rate, in Hz.
        sample_rate: u32,
    },
    /// The header declares more than 32 channels.
    #[error("unsupported wav channel count: {channels} (at most 32 accepted)")]
    TooManyChannels {
        /// The declared channel count.
        channels: u16,
    },
    /// Resampling to 48 kHz failed.
    #[error("resampling: {0}")]
    Resample(String),
    /// The sink was already finished.
    #[error("wav sink already finished")]
    Finished,
}

impl From<WavError> for AudioIoError {
    fn from(e: WavError) -> Self {
        AudioIoError::File(e.to_string())
    }
}

/// A WAV file played as an [`AudioSource`]: 48 kHz mono, one frame per call.
#[derive(Debug, Clone)]
pub struct WavSource {
    samples: Vec<i16>,
    position: usize,
    looping: bool,
}

impl WavSource {
    /// Reads a whole WAV file (8/16/24/32-bit integer or 32-bit float PCM, any rate, any channel
    /// count) and converts it to 48 kHz mono: channels are averaged, other rates resampled.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AudioIoError> {
        Ok(Self::read(path.as_ref())?)
    }

    /// Wraps samples that are already 48 kHz mono.
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Self {
            samples,
            position: 0,
            looping: false,
        }
    }

    /// Whether the source restarts from the beginning at the end instead of ending.
    pub fn looping(mut self, looping: bool) -> Self {
        self.looping = looping;
        self
    }

    /// The whole converted clip (48 kHz mono).
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Like [`WavSource::open`], reading the WAV data from `reader` (an in-memory file, a
    /// network download). The same limits apply; bad input is a typed error.
    pub fn from_reader(reader: impl std::io::Read) -> Result<Self, AudioIoError> {
        let reader = hound::WavReader::new(reader).map_err(WavError::from)?;
        Ok(Self::decode(reader)?)
    }

    fn read(path: &Path) -> Result<Self, WavError> {
        Self::decode(hound::WavReader::open(path)?)
    }

    fn decode<R: std::io::Read>(reader: hound::WavReader<R>) -> Result<Self, WavError> {
        let spec = reader.spec();
        if !SOURCE_SAMPLE_RATES.contains(&spec.sample_rate) {
            return Err(WavError::UnsupportedSampleRate {
                sample_rate: spec.sample_rate,
            });
        }
        if spec.channels > MAX_SOURCE_CHANNELS {
            return Err(WavError::TooManyChannels {
                channels: spec.channels,
            });
        }
        let channels = usize::from(spec.channels.max(1));
        let total = u64::from(reader.len());
        let max_for_duration = MAX_SOURCE_SECONDS * u64::from(spec.sample_rate) * channels as u64;
        if total > MAX_SOURCE_SAMPLES || total > max_for_duration {
            return Err(WavError::TooLong);
        }
        let interleaved = read_as_f32(reader, spec)?;
        let mono: Vec<f32> = interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
            .collect();
        let resampled = if spec.sample_rate == SAMPLE_RATE {
            mono
        } else {
            resample(&mono, spec.sample_rate)?
        };
        let samples = resampled.iter().map(|&s| f32_to_i16(s)).collect();
        Ok(Self::from_samples(samples))
    }
}

fn read_as_f32<R: std::io::Read>(
    mut reader: hound::WavReader<R>,
    spec: hound::WavSpec,
) -> Result<Vec<f32>, WavError> {
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .samples::<f32>()
            .map(|s| s.map_err(WavError::from))
            .collect(),
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| Ok(s? as f32 * scale))
                .collect()
        }
        (hound::SampleFormat::Float, bits) => Err(WavError::Unsupported {
            bits,
            format: "float",
        }),
        (hound::SampleFormat::Int, bits) => Err(WavError::Unsupported {
            bits,
            format: "int",
        }),
    }
}

fn resample(mono: &[f32], from_rate: u32) -> Result<Vec<f32>, WavError> {
    let err = |e: &dyn std::fmt::Display| WavError::Resample(e.to_string());
    let mut resampler = Fft::<f32>::new(
        from_rate as usize,
        SAMPLE_RATE as usize,
        1024,
        1,
        FixedSync::Both,
    )
    .map_err(|e| err(&e))?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| err(&e))?;
    let output = resampler
        .process_all(&input, mono.len(), None)
        .map_err(|e| err(&e))?;
    let mut samples = output.take_data();
    // The resampler rounds its output length up from a floating-point ratio; keep the exact
    // duration of the source instead.
    let exact = (mono.len() as u64 * u64::from(SAMPLE_RATE) + u64::from(from_rate) / 2)
        / u64::from(from_rate.max(1));
    samples.truncate(usize::try_from(exact).unwrap_or(usize::MAX));
    Ok(samples)
}

fn f32_to_i16(sample: f32) -> i16 {
    (sample * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

impl AudioSource for WavSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        if out.is_empty() {
            return Err(AudioIoError::FrameSize {
                expected: 480,
                got: 0,
            });
        }
        let mut filled = 0;
        while filled < out.len() {
            if self.position >= self.samples.len() {
                if self.looping && !self.samples.is_empty() {
                    self.position = 0;
                } else {
                    break;
                }
            }
            let available = self.samples.get(self.position..).unwrap_or_default();
            let rest = out.get_mut(filled..).unwrap_or_default();
            let n = available.len().min(rest.len());
            if let (Some(dst), Some(src)) = (rest.get_mut(..n), available.get(..n)) {
                dst.copy_from_slice(src);
            }
            filled += n;
            self.position += n;
        }
        if let Some(tail) = out.get_mut(filled..) {
            tail.fill(0);
        }
        Ok(if filled == 0 {
            SourceStatus::Ended
        } else {
            SourceStatus::Audio
        })
    }

    /// A file has every frame ready at any moment.
    fn has_own_clock(&self) -> bool {
        false
    }
}

/// Records 48 kHz mono 16-bit frames to a WAV file; [`AudioSink::finish`] writes the final
/// header (dropping the sink unfinished also tries to).
pub struct WavSink {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("finished", &self.writer.is_none())
            .finish()
    }
}

impl WavSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, AudioIoError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(WavError::from)?;
        Ok(Self {
            writer: Some(writer),
        })
    }
}

impl AudioSink for WavSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        let writer = self.writer.as_mut().ok_or(WavError::Finished)?;
        for &sample in pcm {
            writer.write_sample(sample).map_err(WavError::from)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), AudioIoError> {
        match self.writer.take() {
            Some(writer) => Ok(writer.finalize().map_err(WavError::from)?),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A WAV file in the system's temporary directory, removed on drop.
    struct TempWav(PathBuf);

    impl TempWav {
        /// Writes `frames` frames of silence with `spec` through hound, then lets `patch` edit
        /// the bytes as a crafted file would.
        fn new(
            name: &str,
            spec: hound::WavSpec,
            frames: usize,
            patch: impl FnOnce(&mut [u8]),
        ) -> Self {
            let path =
                std::env::temp_dir().join(format!("viska-wav-{}-{name}.wav", std::process::id()));
            let mut writer = hound::WavWriter::create(&path, spec).unwrap();
            for _ in 0..frames * usize::from(spec.channels) {
                writer.write_sample(0i16).unwrap();
            }
            writer.finalize().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            patch(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            Self(path)
        }
    }

    impl Drop for TempWav {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn spec(channels: u16, sample_rate: u32) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        }
    }

    // Offsets in the canonical header hound writes: RIFF, size, WAVE, "fmt ", fmt length,
    // then the format tag, channel count, sample rate, byte rate and block alignment.
    const SAMPLE_RATE_AT: usize = 24;
    const BYTE_RATE_AT: usize = 28;
    const BLOCK_ALIGN_AT: usize = 32;

    /// Declares `sample_rate` and keeps the byte rate consistent with it, as a crafted file
    /// would (hound rejects an inconsistent one).
    fn declare_rate(bytes: &mut [u8], sample_rate: u32) {
        let block_align = u16::from_le_bytes([bytes[BLOCK_ALIGN_AT], bytes[BLOCK_ALIGN_AT + 1]]);
        bytes[SAMPLE_RATE_AT..SAMPLE_RATE_AT + 4].copy_from_slice(&sample_rate.to_le_bytes());
        let byte_rate = u32::from(block_align).wrapping_mul(sample_rate);
        bytes[BYTE_RATE_AT..BYTE_RATE_AT + 4].copy_from_slice(&byte_rate.to_le_bytes());
    }

    fn declare_data_len(bytes: &mut [u8], data_len: u32) {
        let at = bytes.windows(4).position(|w| w == b"data").unwrap() + 4;
        bytes[at..at + 4].copy_from_slice(&data_len.to_le_bytes());
    }

    #[test]
    fn hostile_sample_rates_are_typed_errors() {
        let mono_8_bit = hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 8,
            sample_format: hound::SampleFormat::Int,
        };
        // With one byte per frame the byte rate of the largest 32-bit prime still fits in
        // 32 bits, so hound accepts the header and only our check stands in the way.
        for (name, rate) in [
            ("prime", 4_294_967_291),
            ("above", 384_001),
            ("below", 7_999),
        ] {
            let file = TempWav::new(name, mono_8_bit, 16, |bytes| declare_rate(bytes, rate));
            assert_eq!(
                hound::WavReader::open(&file.0).unwrap().spec().sample_rate,
                rate
            );
            assert!(
                matches!(
                    WavSource::read(&file.0),
                    Err(WavError::UnsupportedSampleRate { sample_rate }) if sample_rate == rate
                ),
                "rate {rate}"
            );
        }
    }

    #[test]
    fn the_edges_of_the_rate_range_are_read() {
        // 383 999 Hz shares no factor with 48 kHz: the resampler's FFT is as long as the rate,
        // the largest the range allows.
        for rate in [8_000, 384_000, 383_999] {
            let file = TempWav::new(
                &format!("edge-{rate}"),
                spec(1, rate),
                rate as usize / 100,
                |_| {},
            );
            let source = WavSource::read(&file.0).unwrap();
            assert_eq!(source.samples().len(), 480, "10 ms at {rate} Hz");
        }
    }

    #[test]
    fn more_than_32_channels_is_a_typed_error() {
        let ok = TempWav::new("ch32", spec(32, 48_000), 480, |_| {});
        assert_eq!(WavSource::read(&ok.0).unwrap().samples().len(), 480);
        let file = TempWav::new("ch33", spec(33, 48_000), 480, |_| {});
        assert!(matches!(
            WavSource::read(&file.0),
            Err(WavError::TooManyChannels { channels: 33 })
        ));
    }

    #[test]
    fn sample_count_is_capped_whatever_the_declared_rate() {
        // 32 channels at 384 kHz: a declared data length of about 4 GB is under an hour of
        // audio at that rate, but far more samples than one hour of 48 kHz stereo.
        let file = TempWav::new("long", spec(32, 384_000), 1, |bytes| {
            declare_data_len(bytes, 4_000_000_000);
        });
        assert!(hound::WavReader::open(&file.0).unwrap().len() > 1_000_000_000);
        assert!(matches!(WavSource::read(&file.0), Err(WavError::TooLong)));
    }
}

//! Frame-oriented conversion between a sound device's format (any rate, any channel count,
//! interleaved `f32`) and the 48 kHz mono 16-bit frames the rest of the media path uses.
//!
//! Capture downmixes by averaging the channels, then resamples; playback resamples, then
//! duplicates the mono signal into every channel. Every buffer is sized when the converter is
//! built, so converting a frame allocates nothing. At 48 kHz no resampler is involved and the
//! conversion is exact.
#![forbid(unsafe_code)]

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::audio::SAMPLE_RATE;

/// Errors from building or running a converter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    /// Rate, channel count or frame size is zero (or too large to handle).
    #[error("unusable format: {rate} Hz, {channels} channels, {frame_samples} samples a frame")]
    Format {
        /// Device sample rate.
        rate: u32,
        /// Device channel count.
        channels: u16,
        /// 48 kHz mono samples in a frame.
        frame_samples: usize,
    },
    /// A buffer handed in has the wrong length.
    #[error("buffer of {got} samples, expected {expected}")]
    Length {
        /// Samples expected.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// The underlying resampler refused the input (an internal bug, not caller input).
    #[error("resampler: {0}")]
    Resampler(String),
}

/// 16-bit sample to `f32` in [-1, 1).
pub fn i16_to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32_768.0
}

/// `f32` sample to 16-bit, rounded and clamped.
pub fn f32_to_i16(sample: f32) -> i16 {
    // `as` saturates (and maps NaN to 0), so the clamp only keeps the intent visible.
    (sample * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

fn check_format(rate: u32, channels: u16, frame_samples: usize) -> Result<(), ResampleError> {
    // An hour-long frame or a megahertz rate is a caller bug; refusing it keeps buffers sane.
    const MAX_FRAME: usize = 48_000 * 60;
    const MAX_RATE: u32 = 1_536_000;
    if rate == 0
        || rate > MAX_RATE
        || channels == 0
        || frame_samples == 0
        || frame_samples > MAX_FRAME
    {
        return Err(ResampleError::Format {
            rate,
            channels,
            frame_samples,
        });
    }
    Ok(())
}

fn resampler_error(e: impl std::fmt::Display) -> ResampleError {
    ResampleError::Resampler(e.to_string())
}

/// Converts interleaved device samples into 48 kHz mono frames of a fixed size.
///
/// Each call to [`CaptureConverter::convert`] takes exactly [`CaptureConverter::input_len`]
/// samples (this number changes from frame to frame when the rates differ) and produces one
/// frame.
pub struct CaptureConverter {
    channels: usize,
    device_rate: u32,
    frame_samples: usize,
    resampler: Option<Fft<f32>>,
    mono_in: Vec<f32>,
    mono_out: Vec<f32>,
}

impl std::fmt::Debug for CaptureConverter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureConverter")
            .field("device_rate", &self.device_rate)
            .field("channels", &self.channels)
            .field("frame_samples", &self.frame_samples)
            .finish_non_exhaustive()
    }
}

impl CaptureConverter {
    /// A converter from `device_rate` Hz, `channels` interleaved channels, to frames of
    /// `frame_samples` 48 kHz mono samples.
    pub fn new(
        device_rate: u32,
        channels: u16,
        frame_samples: usize,
    ) -> Result<Self, ResampleError> {
        check_format(device_rate, channels, frame_samples)?;
        let resampler = if device_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    device_rate as usize,
                    SAMPLE_RATE as usize,
                    frame_samples,
                    1,
                    FixedSync::Output,
                )
                .map_err(resampler_error)?,
            )
        };
        let (in_max, out_max) = match &resampler {
            Some(r) => (r.input_frames_max(), r.output_frames_max()),
            None => (frame_samples, frame_samples),
        };
        Ok(Self {
            channels: usize::from(channels),
            device_rate,
            frame_samples,
            resampler,
            mono_in: vec![0.0; in_max],
            mono_out: vec![0.0; out_max.max(frame_samples)],
        })
    }

    /// Interleaved device samples the next [`CaptureConverter::convert`] needs.
    pub fn input_len(&self) -> usize {
        self.input_frames() * self.channels
    }

    /// The most interleaved device samples any one frame can need (for sizing buffers).
    pub fn max_input_len(&self) -> usize {
        self.mono_in.len() * self.channels
    }

    /// 48 kHz mono samples in each frame produced.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The device rate this converter reads.
    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    /// The device channel count this converter reads.
    pub fn channels(&self) -> u16 {
        u16::try_from(self.channels).unwrap_or(u16::MAX)
    }

    fn input_frames(&self) -> usize {
        match &self.resampler {
            Some(r) => r.input_frames_next(),
            None => self.frame_samples,
        }
    }

    /// Converts exactly [`CaptureConverter::input_len`] interleaved samples into one frame.
    pub fn convert(&mut self, interleaved: &[f32], out: &mut [i16]) -> Result<(), ResampleError> {
        let frames = self.input_frames();
        let expected = frames * self.channels;
        if interleaved.len() != expected {
            return Err(ResampleError::Length {
                expected,
                got: interleaved.len(),
            });
        }
        if out.len() != self.frame_samples {
            return Err(ResampleError::Length {
                expected: self.frame_samples,
                got: out.len(),
            });
        }
        let scale = 1.0 / self.channels as f32;
        let mono_in = self
            .mono_in
            .get_mut(..frames)
            .ok_or(ResampleError::Length {
                expected: frames,
                got: 0,
            })?;
        for (mono, frame) in mono_in
            .iter_mut()
            .zip(interleaved.chunks_exact(self.channels))
        {
            *mono = frame.iter().sum::<f32>() * scale;
        }
        let produced = match &mut self.resampler {
            None => {
                for (dst, &src) in out.iter_mut().zip(mono_in.iter()) {
                    *dst = f32_to_i16(src);
                }
                return Ok(());
            }
            Some(resampler) => {
                let input = InterleavedSlice::new(&*mono_in, 1, frames).map_err(resampler_error)?;
                let out_frames = self.mono_out.len();
                let mut output = InterleavedSlice::new_mut(&mut self.mono_out, 1, out_frames)
                    .map_err(resampler_error)?;
                let (_, produced) = resampler
                    .process_into_buffer(&input, &mut output, None)
                    .map_err(resampler_error)?;
                produced
            }
        };
        if produced != self.frame_samples {
            return Err(ResampleError::Resampler(format!(
                "produced {produced} samples for a frame of {}",
                self.frame_samples
            )));
        }
        for (dst, &src) in out.iter_mut().zip(self.mono_out.iter()) {
            *dst = f32_to_i16(src);
        }
        Ok(())
    }
}

/// Converts 48 kHz mono frames of a fixed size into interleaved device samples.
///
/// Each frame yields a slice of whole device frames whose length can change from frame to frame
/// when the rates differ (at most [`PlaybackConverter::max_output_len`]).
pub struct PlaybackConverter {
    channels: usize,
    device_rate: u32,
    frame_samples: usize,
    resampler: Option<Fft<f32>>,
    mono_in: Vec<f32>,
    mono_out: Vec<f32>,
    interleaved: Vec<f32>,
}

impl std::fmt::Debug for PlaybackConverter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybackConverter")
            .field("device_rate", &self.device_rate)
            .field("channels", &self.channels)
            .field("frame_samples", &self.frame_samples)
            .finish_non_exhaustive()
    }
}

impl PlaybackConverter {
    /// A converter from frames of `frame_samples` 48 kHz mono samples to `device_rate` Hz,
    /// `channels` interleaved channels.
    pub fn new(
        device_rate: u32,
        channels: u16,
        frame_samples: usize,
    ) -> Result<Self, ResampleError> {
        check_format(device_rate, channels, frame_samples)?;
        let resampler = if device_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    SAMPLE_RATE as usize,
                    device_rate as usize,
                    frame_samples,
                    1,
                    FixedSync::Input,
                )
                .map_err(resampler_error)?,
            )
        };
        let out_max = match &resampler {
            Some(r) => r.output_frames_max(),
            None => frame_samples,
        };
        let channels = usize::from(channels);
        Ok(Self {
            channels,
            device_rate,
            frame_samples,
            resampler,
            mono_in: vec![0.0; frame_samples],
            mono_out: vec![0.0; out_max],
            interleaved: vec![0.0; out_max * channels],
        })
    }

    /// The most interleaved device samples one frame can yield (for sizing buffers).
    pub fn max_output_len(&self) -> usize {
        self.interleaved.len()
    }

    /// 48 kHz mono samples expected in each frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The device rate this converter writes.
    pub fn device_rate(&self) -> u32 {
        self.device_rate
    }

    /// The device channel count this converter writes.
    pub fn channels(&self) -> u16 {
        u16::try_from(self.channels).unwrap_or(u16::MAX)
    }

    /// Converts one frame; returns the interleaved device samples it became (borrowed from
    /// the converter until the next call).
    pub fn convert(&mut self, frame: &[i16]) -> Result<&[f32], ResampleError> {
        if frame.len() != self.frame_samples {
            return Err(ResampleError::Length {
                expected: self.frame_samples,
                got: frame.len(),
            });
        }
        for (dst, &src) in self.mono_in.iter_mut().zip(frame) {
            *dst = i16_to_f32(src);
        }
        let produced = match &mut self.resampler {
            None => {
                self.mono_out.copy_from_slice(&self.mono_in);
                self.frame_samples
            }
            Some(resampler) => {
                let input = InterleavedSlice::new(&self.mono_in, 1, self.frame_samples)
                    .map_err(resampler_error)?;
                let out_frames = self.mono_out.len();
                let mut output = InterleavedSlice::new_mut(&mut self.mono_out, 1, out_frames)
                    .map_err(resampler_error)?;
                let (_, produced) = resampler
                    .process_into_buffer(&input, &mut output, None)
                    .map_err(resampler_error)?;
                produced
            }
        };
        let len = produced * self.channels;
        let interleaved = self
            .interleaved
            .get_mut(..len)
            .ok_or(ResampleError::Length {
                expected: len,
                got: 0,
            })?;
        for (device_frame, &mono) in interleaved
            .chunks_exact_mut(self.channels)
            .zip(self.mono_out.iter())
        {
            device_frame.fill(mono);
        }
        Ok(interleaved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, freq: f32, amplitude: f32, frames: usize, channels: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|n| {
                let v =
                    amplitude * (2.0 * std::f32::consts::PI * freq * n as f32 / rate as f32).sin();
                std::iter::repeat_n(v, channels)
            })
            .collect()
    }

    /// Sign changes per second / 2: the frequency of a clean tone.
    fn zero_crossing_frequency(samples: &[f32], rate: u32) -> f32 {
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        crossings as f32 * rate as f32 / (2.0 * samples.len() as f32)
    }

    fn rms(samples: &[f32]) -> f32 {
        (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
    }

    #[test]
    fn zero_or_absurd_formats_are_refused() {
        assert!(matches!(
            CaptureConverter::new(0, 2, 960),
            Err(ResampleError::Format { .. })
        ));
        assert!(matches!(
            CaptureConverter::new(44_100, 0, 960),
            Err(ResampleError::Format { .. })
        ));
        assert!(matches!(
            PlaybackConverter::new(44_100, 2, 0),
            Err(ResampleError::Format { .. })
        ));
        assert!(matches!(
            PlaybackConverter::new(u32::MAX, 2, 960),
            Err(ResampleError::Format { .. })
        ));
    }

    #[test]
    fn wrong_buffer_lengths_are_typed_errors() {
        let mut capture = CaptureConverter::new(44_100, 2, 960).expect("capture");
        let mut out = vec![0i16; 960];
        let too_short = vec![0.0f32; capture.input_len() - 1];
        assert!(matches!(
            capture.convert(&too_short, &mut out),
            Err(ResampleError::Length { .. })
        ));
        let right = vec![0.0f32; capture.input_len()];
        assert!(matches!(
            capture.convert(&right, &mut out[..959]),
            Err(ResampleError::Length { .. })
        ));
        let mut playback = PlaybackConverter::new(44_100, 2, 960).expect("playback");
        assert!(matches!(
            playback.convert(&out[..480]),
            Err(ResampleError::Length { .. })
        ));
    }

    #[test]
    fn at_48k_capture_downmixes_by_averaging_exactly() {
        let mut capture = CaptureConverter::new(48_000, 2, 4).expect("capture");
        assert_eq!(capture.input_len(), 8);
        let interleaved = [0.5, -0.5, 0.25, 0.75, -1.0, -1.0, 0.1, 0.3];
        let mut out = [0i16; 4];
        capture.convert(&interleaved, &mut out).expect("convert");
        assert_eq!(out, [0, 16_384, -32_768, 6_554]);
    }

    #[test]
    fn at_48k_playback_duplicates_into_every_channel_exactly() {
        let mut playback = PlaybackConverter::new(48_000, 3, 2).expect("playback");
        let out = playback.convert(&[16_384, -8_192]).expect("convert");
        assert_eq!(out, &[0.5, 0.5, 0.5, -0.25, -0.25, -0.25]);
    }

    #[test]
    fn stereo_44k1_capture_keeps_tone_frequency_level_and_duration() {
        let mut capture = CaptureConverter::new(44_100, 2, 960).expect("capture");
        let source = tone(44_100, 1_000.0, 0.5, 44_100 * 2, 2);
        let mut position = 0;
        let mut produced = Vec::new();
        let mut frame = vec![0i16; 960];
        while position + capture.input_len() <= source.len() {
            let need = capture.input_len();
            assert!(need <= capture.max_input_len());
            capture
                .convert(&source[position..position + need], &mut frame)
                .expect("convert");
            position += need;
            produced.extend(frame.iter().map(|&s| i16_to_f32(s)));
        }
        // Two seconds in, within one frame plus the resampler's delay, two seconds out.
        assert!(produced.len() >= 96_000 - 2 * 960, "{}", produced.len());
        // Skip the resampler's start-up delay, then measure one second.
        let steady = &produced[4_800..4_800 + 48_000];
        let freq = zero_crossing_frequency(steady, 48_000);
        assert!((freq - 1_000.0).abs() < 2.0, "frequency {freq}");
        let level = rms(steady);
        let expected = 0.5 / 2f32.sqrt();
        assert!((level - expected).abs() < 0.01, "rms {level}");
    }

    #[test]
    fn capture_of_opposite_channels_cancels_to_silence() {
        let mut capture = CaptureConverter::new(32_000, 2, 480).expect("capture");
        let mut frame = vec![0i16; 480];
        for _ in 0..20 {
            let need = capture.input_len();
            let input: Vec<f32> = (0..need)
                .map(|i| if i % 2 == 0 { 0.7 } else { -0.7 })
                .collect();
            capture.convert(&input, &mut frame).expect("convert");
            assert!(frame.iter().all(|&s| s.abs() <= 1), "{frame:?}");
        }
    }

    #[test]
    fn mono_48k_playback_to_44k1_stereo_keeps_tone_and_duplicates() {
        let mut playback = PlaybackConverter::new(44_100, 2, 960).expect("playback");
        let source: Vec<i16> = tone(48_000, 440.0, 0.25, 48_000 * 2, 1)
            .into_iter()
            .map(f32_to_i16)
            .collect();
        let mut left = Vec::new();
        let max_output_len = playback.max_output_len();
        for frame in source.chunks_exact(960) {
            let out = playback.convert(frame).expect("convert");
            assert!(out.len() <= max_output_len);
            assert_eq!(out.len() % 2, 0);
            for pair in out.chunks_exact(2) {
                assert_eq!(pair[0], pair[1]);
                left.push(pair[0]);
            }
        }
        assert!(
            (left.len() as i64 - 88_200).abs() <= 2 * 1_024,
            "{} device frames",
            left.len()
        );
        let steady = &left[4_410..4_410 + 44_100];
        let freq = zero_crossing_frequency(steady, 44_100);
        assert!((freq - 440.0).abs() < 2.0, "frequency {freq}");
        let level = rms(steady);
        assert!((level - 0.25 / 2f32.sqrt()).abs() < 0.01, "rms {level}");
    }

    #[test]
    fn sample_conversions_round_trip_and_clamp() {
        for s in [i16::MIN, -1, 0, 1, 12_345, i16::MAX] {
            assert_eq!(f32_to_i16(i16_to_f32(s)), s);
        }
        assert_eq!(f32_to_i16(2.0), i16::MAX);
        assert_eq!(f32_to_i16(-2.0), i16::MIN);
        assert_eq!(f32_to_i16(f32::NAN), 0);
    }
}

//! Audio the application moves itself: it pushes what it captured and pulls what to play, at
//! its own sample rate, channel count and buffer size (iOS AVAudioEngine / CallKit, Android
//! AudioRecord and AudioTrack, a browser, a CTI server mixing calls), through the same
//! lock-free rings and converters as a sound device.
//!
//! The application's thread only moves samples into or out of a ring (no lock, no allocation
//! per buffer); conversion to and from 48 kHz mono frames, and following the application's
//! clock against the media clock, happen on the media thread, as for a device
//! ([`crate::device`]).
#![forbid(unsafe_code)]

use crate::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use crate::drift::{DriftTracker, stretch_frames};
use crate::resample::{CaptureConverter, PlaybackConverter, ResampleError, f32_to_i16, i16_to_f32};
use crate::ring::{RingError, RingMonitor, RingStats, SampleReader, SampleWriter, sample_ring};

/// How much application audio a ring holds, in milliseconds.
const RING_MILLISECONDS: usize = 400;

/// Frames of captured audio allowed to wait; beyond this the oldest is dropped down to one
/// frame of backlog, bounding the delay an application that pushed a burst leaves behind.
const CAPTURE_BACKLOG_FRAMES: usize = 4;

/// Errors from setting up application audio.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppAudioError {
    /// The rate or channel count cannot be converted.
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The ring could not be created.
    #[error(transparent)]
    Ring(#[from] RingError),
}

fn ring_len(rate: u32, channels: u16) -> usize {
    (rate as usize * usize::from(channels) * RING_MILLISECONDS / 1000).max(1)
}

/// The application's end of a capture: push interleaved samples as they are captured.
#[derive(Debug)]
pub struct AppCaptureInput {
    writer: SampleWriter,
}

impl AppCaptureInput {
    /// Pushes interleaved 16-bit samples; returns how many were taken (the rest did not fit:
    /// the media side has fallen behind, an overrun is counted).
    pub fn push(&mut self, samples: &[i16]) -> usize {
        self.writer.push_converted(samples, i16_to_f32)
    }

    /// Pushes interleaved float samples in -1..=1.
    pub fn push_f32(&mut self, samples: &[f32]) -> usize {
        self.writer.push_converted(samples, |s| s)
    }

    /// Whether the media side ([`AppCaptureSource`]) is gone: the call ended, nothing pushed
    /// here is read any more.
    pub fn is_closed(&self) -> bool {
        self.writer.is_abandoned()
    }
}

/// The media side of an application capture: an [`AudioSource`] of 48 kHz mono frames.
pub struct AppCaptureSource {
    reader: SampleReader,
    monitor: RingMonitor,
    converter: CaptureConverter,
    frame_samples: usize,
    samples: Vec<f32>,
    resized: Vec<f32>,
    drift: DriftTracker,
    underruns_seen: u64,
}

impl std::fmt::Debug for AppCaptureSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCaptureSource")
            .field("converter", &self.converter)
            .finish_non_exhaustive()
    }
}

/// A capture fed by the application at `rate` Hz with `channels` interleaved channels,
/// delivering frames of `frame_samples` 48 kHz mono samples.
pub fn app_capture(
    rate: u32,
    channels: u16,
    frame_samples: usize,
) -> Result<(AppCaptureInput, AppCaptureSource), AppAudioError> {
    let converter = CaptureConverter::new(rate, channels, frame_samples)?;
    let max = converter.max_input_len() + usize::from(channels);
    let (writer, reader) = sample_ring(ring_len(rate, channels).max(2 * max))?;
    let monitor = reader.monitor();
    Ok((
        AppCaptureInput { writer },
        AppCaptureSource {
            reader,
            monitor,
            converter,
            frame_samples,
            samples: vec![0.0; max],
            resized: vec![0.0; max],
            drift: DriftTracker::new(rate),
            underruns_seen: 0,
        },
    ))
}

impl AppCaptureSource {
    /// Overruns (the application pushed faster than frames were read) and underruns.
    pub fn stats(&self) -> RingStats {
        self.monitor.stats()
    }
}

impl AudioSource for AppCaptureSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        if out.len() != self.frame_samples {
            return Err(AudioIoError::FrameSize {
                expected: self.frame_samples,
                got: out.len(),
            });
        }
        let needed = self.converter.input_len();
        let frame_len = self.converter.max_input_len();
        let channels = usize::from(self.converter.channels()).max(1);
        let mut queued = self.reader.queued_len();
        if queued > needed + CAPTURE_BACKLOG_FRAMES * frame_len {
            let excess = (queued - needed - frame_len) / channels * channels;
            queued -= self.reader.discard_oldest(excess);
        }
        let underruns = self.monitor.stats().underruns;
        let starved = underruns > self.underruns_seen;
        self.underruns_seen = underruns;
        let take = match self.drift.observe(queued / channels, true, starved) {
            1 => needed + channels,
            -1 if needed > channels => needed - channels,
            _ => needed,
        };
        let Some(samples) = self.samples.get_mut(..take) else {
            return Err(AudioIoError::Device("capture buffer too small".into()));
        };
        if !self.reader.pop_exact(samples) {
            out.fill(0);
            return Ok(SourceStatus::Silence);
        }
        let mut input: &[f32] = samples;
        if take != needed {
            if let Some(resized) = self.resized.get_mut(..needed) {
                if stretch_frames(samples, resized, channels) {
                    input = resized;
                }
            }
        }
        self.converter
            .convert(input, out)
            .map_err(|e| AudioIoError::Device(e.to_string()))?;
        Ok(SourceStatus::Audio)
    }
}

/// The application's end of a playback: pull interleaved samples when the output wants them.
#[derive(Debug)]
pub struct AppPlaybackOutput {
    reader: SampleReader,
}

impl AppPlaybackOutput {
    /// Fills `out` with interleaved 16-bit samples; what is not there yet is silence (an
    /// underrun is counted). Returns how many samples were real audio.
    pub fn pull(&mut self, out: &mut [i16]) -> usize {
        self.reader.pop_converted(out, 0, f32_to_i16)
    }

    /// The same in float samples.
    pub fn pull_f32(&mut self, out: &mut [f32]) -> usize {
        self.reader.pop_converted(out, 0.0, |s| s)
    }

    /// Samples waiting to be pulled.
    pub fn queued(&self) -> usize {
        self.reader.queued_len()
    }

    /// Whether the media side ([`AppPlaybackSink`]) is gone and nothing is left to pull.
    pub fn is_closed(&self) -> bool {
        self.reader.is_abandoned() && self.reader.queued_len() == 0
    }
}

/// The media side of an application playback: an [`AudioSink`] of 48 kHz mono frames.
pub struct AppPlaybackSink {
    writer: SampleWriter,
    monitor: RingMonitor,
    converter: PlaybackConverter,
    frame_samples: usize,
    resized: Vec<f32>,
    drift: DriftTracker,
    underruns_seen: u64,
}

impl std::fmt::Debug for AppPlaybackSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPlaybackSink")
            .field("converter", &self.converter)
            .finish_non_exhaustive()
    }
}

/// A playback pulled by the application at `rate` Hz with `channels` interleaved channels,
/// taking frames of `frame_samples` 48 kHz mono samples.
pub fn app_playback(
    rate: u32,
    channels: u16,
    frame_samples: usize,
) -> Result<(AppPlaybackSink, AppPlaybackOutput), AppAudioError> {
    let converter = PlaybackConverter::new(rate, channels, frame_samples)?;
    let max = converter.max_output_len() + usize::from(channels);
    let (writer, reader) = sample_ring(ring_len(rate, channels).max(2 * max))?;
    let monitor = reader.monitor();
    Ok((
        AppPlaybackSink {
            writer,
            monitor,
            converter,
            frame_samples,
            resized: vec![0.0; max],
            drift: DriftTracker::new(rate),
            underruns_seen: 0,
        },
        AppPlaybackOutput { reader },
    ))
}

impl AppPlaybackSink {
    /// Overruns (frames came faster than the application pulled) and underruns.
    pub fn stats(&self) -> RingStats {
        self.monitor.stats()
    }
}

impl AudioSink for AppPlaybackSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        if pcm.len() != self.frame_samples {
            return Err(AudioIoError::FrameSize {
                expected: self.frame_samples,
                got: pcm.len(),
            });
        }
        let channels = usize::from(self.converter.channels()).max(1);
        let queued = self
            .writer
            .capacity()
            .saturating_sub(self.writer.free_len());
        let underruns = self.monitor.stats().underruns;
        let starved = underruns > self.underruns_seen;
        self.underruns_seen = underruns;
        let slip = self.drift.observe(queued / channels, false, starved);
        let samples = self
            .converter
            .convert(pcm)
            .map_err(|e| AudioIoError::Device(e.to_string()))?;
        let len = match slip {
            1 => samples.len() + channels,
            -1 if samples.len() > channels => samples.len() - channels,
            _ => samples.len(),
        };
        let mut out: &[f32] = samples;
        if len != samples.len() {
            if let Some(resized) = self.resized.get_mut(..len) {
                if stretch_frames(samples, resized, channels) {
                    out = resized;
                }
            }
        }
        let samples = out;
        // A full ring drops the frame and counts an overrun; the call goes on.
        self.writer.push_all(samples);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_16_khz_stereo_application_feeds_48_khz_mono_frames_and_pulls_them_back() {
        let (mut input, mut source) = app_capture(16_000, 2, 960).expect("capture");
        let (mut sink, mut output) = app_playback(16_000, 2, 960).expect("playback");
        // 20 ms of a 16 kHz stereo tone per push, 50 pushes.
        let mut phase = 0.0f64;
        let mut frame = vec![0i16; 960];
        let mut heard = Vec::new();
        for _ in 0..50 {
            let buffer: Vec<i16> = (0..320)
                .flat_map(|_| {
                    phase += 2.0 * std::f64::consts::PI * 400.0 / 16_000.0;
                    let s = (phase.sin() * 8000.0) as i16;
                    [s, s]
                })
                .collect();
            assert_eq!(input.push(&buffer), 640);
            source.read_frame(&mut frame).expect("frame");
            sink.write_frame(&frame).expect("write");
            let mut out = vec![0i16; 640];
            output.pull(&mut out);
            heard.extend(out.iter().step_by(2).copied());
        }
        let tail = heard.get(heard.len() - 3200..).expect("tail");
        let rms =
            (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        // A sine of amplitude 8000 has an RMS of about 5657: the audio went through both ways.
        assert!(rms > 4000.0 && rms < 7000.0, "{rms}");
        assert!(source.read_frame(&mut [0; 10]).is_err());
    }
}

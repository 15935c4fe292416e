//! Where a call's audio comes from and goes to: sound devices, WAV files, or nothing.

use std::path::PathBuf;

use viska_media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska_media::background::BackgroundSink;
use viska_media::wav::{WavSink, WavSource};

/// Opens the audio end points of each new call.
///
/// Called on a blocking thread of the phone's runtime when a call's media starts (the call
/// waits for it, the phone's other calls do not), so opening may take time.
pub trait AudioFactory: Send + Sync {
    /// The capture side, delivering 48 kHz mono frames of `frame_samples` samples.
    fn open_source(&self, frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError>;
    /// The playback side, taking 48 kHz mono frames of `frame_samples` samples.
    fn open_sink(&self, frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError>;
}

/// WAV files: an optional input played into the call, an optional output recording what is
/// heard (written on its own thread). Missing ends are silence / discarded.
#[derive(Clone, Debug, Default)]
pub struct FileAudio {
    /// WAV to send (any PCM format; converted to 48 kHz mono).
    pub input: Option<PathBuf>,
    /// Restart the input at its end instead of sending silence.
    pub loop_input: bool,
    /// WAV to write what the call plays (48 kHz mono 16-bit).
    pub output: Option<PathBuf>,
}

impl AudioFactory for FileAudio {
    fn open_source(&self, _frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        match &self.input {
            Some(path) => Ok(Box::new(WavSource::open(path)?.looping(self.loop_input))),
            None => Ok(Box::new(SilenceSource)),
        }
    }

    fn open_sink(&self, frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        match &self.output {
            // Written on its own thread, so a slow disk never stalls the call.
            Some(path) => Ok(Box::new(BackgroundSink::spawn(
                "viska-wav-out",
                Box::new(WavSink::create(path)?),
                frame_samples,
                super::driver::FILE_BUFFER_FRAMES,
            )?)),
            None => Ok(Box::new(DiscardSink)),
        }
    }
}

/// No audio at all: silence in, discard out.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullAudio;

impl AudioFactory for NullAudio {
    fn open_source(&self, _frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        Ok(Box::new(SilenceSource))
    }
    fn open_sink(&self, _frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        Ok(Box::new(DiscardSink))
    }
}

/// A source of silence.
#[derive(Clone, Copy, Debug, Default)]
pub struct SilenceSource;

impl AudioSource for SilenceSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        out.fill(0);
        Ok(SourceStatus::Silence)
    }

    fn has_own_clock(&self) -> bool {
        false
    }
}

/// A sink that discards audio.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSink;

impl AudioSink for DiscardSink {
    fn write_frame(&mut self, _pcm: &[i16]) -> Result<(), AudioIoError> {
        Ok(())
    }
}

/// The system's sound devices (cpal): the default ones, or devices chosen by name.
#[cfg(feature = "device")]
#[derive(Clone, Debug, Default)]
pub struct DeviceAudio {
    /// Microphone: `None` is the default input device.
    pub input: Option<String>,
    /// Speaker: `None` is the default output device.
    pub output: Option<String>,
}

#[cfg(feature = "device")]
fn selector(name: &Option<String>) -> viska_media::device::DeviceSelector {
    match name {
        Some(n) => viska_media::device::DeviceSelector::Name(n.clone()),
        None => viska_media::device::DeviceSelector::Default,
    }
}

#[cfg(feature = "device")]
impl AudioFactory for DeviceAudio {
    fn open_source(&self, frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        viska_media::device::DeviceCapture::open(selector(&self.input), frame_samples)
            .map(|d| Box::new(d) as Box<dyn AudioSource>)
            .map_err(|e| AudioIoError::Device(e.to_string()))
    }

    fn open_sink(&self, frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        viska_media::device::DevicePlayback::open(selector(&self.output), frame_samples)
            .map(|d| Box::new(d) as Box<dyn AudioSink>)
            .map_err(|e| AudioIoError::Device(e.to_string()))
    }
}

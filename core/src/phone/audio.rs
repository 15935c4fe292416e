//! Where a call's audio comes from and goes to: sound devices, WAV files, or nothing.

use std::path::PathBuf;

use viska_media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska_media::wav::{WavSink, WavSource};

/// Opens the audio end points of each new call.
///
/// Called on the phone's runtime when a call's media starts; must not block for long.
pub trait AudioFactory: Send + Sync {
    /// The capture side (48 kHz mono frames).
    fn open_source(&self) -> Result<Box<dyn AudioSource>, AudioIoError>;
    /// The playback side (48 kHz mono frames).
    fn open_sink(&self) -> Result<Box<dyn AudioSink>, AudioIoError>;
}

/// WAV files: an optional input played into the call, an optional output recording what is
/// heard. Missing ends are silence / discarded.
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
    fn open_source(&self) -> Result<Box<dyn AudioSource>, AudioIoError> {
        match &self.input {
            Some(path) => Ok(Box::new(WavSource::open(path)?.looping(self.loop_input))),
            None => Ok(Box::new(SilenceSource)),
        }
    }

    fn open_sink(&self) -> Result<Box<dyn AudioSink>, AudioIoError> {
        match &self.output {
            Some(path) => Ok(Box::new(WavSink::create(path)?)),
            None => Ok(Box::new(DiscardSink)),
        }
    }
}

/// No audio at all: silence in, discard out.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullAudio;

impl AudioFactory for NullAudio {
    fn open_source(&self) -> Result<Box<dyn AudioSource>, AudioIoError> {
        Ok(Box::new(SilenceSource))
    }
    fn open_sink(&self) -> Result<Box<dyn AudioSink>, AudioIoError> {
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
}

/// A sink that discards audio.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSink;

impl AudioSink for DiscardSink {
    fn write_frame(&mut self, _pcm: &[i16]) -> Result<(), AudioIoError> {
        Ok(())
    }
}

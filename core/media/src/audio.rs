//! The frame-oriented audio source and sink traits every audio end point implements
//! (files, sound devices, application-fed PCM).
#![forbid(unsafe_code)]

/// The sample rate of every frame that crosses these traits.
pub const SAMPLE_RATE: u32 = 48_000;

/// Errors from an audio source or sink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioIoError {
    /// The frame slice has a length the end point cannot work with.
    #[error("frame of {got} samples, expected {expected}")]
    FrameSize {
        /// Samples expected.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// An underlying file could not be read or written.
    #[error("audio file: {0}")]
    File(String),
    /// The sound device failed or went away.
    #[error("audio device: {0}")]
    Device(String),
}

/// What a source produced for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// The frame was filled with captured audio.
    Audio,
    /// No audio was available (device gone, underrun): the frame was filled with silence.
    Silence,
    /// The source is exhausted (end of file); the frame was filled with silence.
    Ended,
}

/// Something that produces 48 kHz mono PCM one frame at a time.
///
/// The caller paces it (one call per frame period); a source never blocks for long.
pub trait AudioSource: Send {
    /// Fills `out` (exactly one frame) and says what it holds.
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError>;
}

/// Something that consumes 48 kHz mono PCM one frame at a time.
pub trait AudioSink: Send {
    /// Takes one frame of audio.
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError>;
    /// Flushes buffered audio (end of call). The default does nothing.
    fn finish(&mut self) -> Result<(), AudioIoError> {
        Ok(())
    }
}

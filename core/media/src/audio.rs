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
    /// The end point has no devices to choose from (a file, silence).
    #[error("this audio end point cannot switch devices")]
    NotSwitchable,
}

/// Something that happened to a sound device, reported once by
/// [`AudioSource::device_event`] / [`AudioSink::device_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// The device stopped working (unplugged, server gone) and could not be reopened, nor the
    /// default device opened, after a few tries (see [`crate::recovery`]). Capture now yields
    /// silence and playback discards; reopening goes on in the background and, when it
    /// succeeds, [`DeviceEvent::Recovered`] follows. A switch opens another device at once.
    Lost,
    /// The device's stream was lost and has been opened again, or the default device was
    /// opened in its place; frames flow again.
    Recovered {
        /// Name of the device now in use.
        name: String,
    },
    /// A switch to another device completed; frames now flow to or from it.
    Switched {
        /// Name of the device now in use.
        name: String,
    },
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

    /// The next device event not yet reported. Sources without a device have none.
    fn device_event(&mut self) -> Option<DeviceEvent> {
        None
    }

    /// Moves capture to another device (`None`: the default one) without interrupting the
    /// frames; on error the current device stays in use. Sources without a device refuse.
    fn change_device(&mut self, _device: Option<&str>) -> Result<(), AudioIoError> {
        Err(AudioIoError::NotSwitchable)
    }

    /// Whether frames become ready on a clock of the source's own (a microphone captures in
    /// real time, so a frame read early is not there yet). A source without one (a file,
    /// silence) has every frame ready at any moment: its caller may read it a little early or
    /// in step with another clock, to serve several jobs with one wake-up. The default is
    /// the safe answer, `true`.
    fn has_own_clock(&self) -> bool {
        true
    }
}

/// Something that consumes 48 kHz mono PCM one frame at a time.
pub trait AudioSink: Send {
    /// Takes one frame of audio.
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError>;
    /// Flushes buffered audio (end of call). The default does nothing.
    fn finish(&mut self) -> Result<(), AudioIoError> {
        Ok(())
    }

    /// The next device event not yet reported. Sinks without a device have none.
    fn device_event(&mut self) -> Option<DeviceEvent> {
        None
    }

    /// Moves playback to another device (`None`: the default one) without interrupting the
    /// frames; on error the current device stays in use. Sinks without a device refuse.
    fn change_device(&mut self, _device: Option<&str>) -> Result<(), AudioIoError> {
        Err(AudioIoError::NotSwitchable)
    }
}

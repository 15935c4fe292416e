//! Where a call's audio comes from and goes to (sound devices, WAV files, audio the
//! application moves itself, or nothing), and the call's end points while it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use viska_media::app::{AppCaptureInput, AppPlaybackOutput, app_capture, app_playback};
use viska_media::audio::{AudioIoError, AudioSink, AudioSource, DeviceEvent, SourceStatus};
use viska_media::background::BackgroundSink;
use viska_media::codec::OpusConfig;
use viska_media::ogg::OggOpusWriter;
use viska_media::wav::{WavSink, WavSource};

use super::{AudioDirection, AudioEvent, CallShared, CallUpdate, PhoneError, lock};

/// Frames a file written in the background may fall behind (2 s at 20 ms) before frames are
/// dropped rather than the call waiting for the disk.
pub(super) const FILE_BUFFER_FRAMES: usize = 100;

/// How long the end of a call waits for a device switch under way.
const SWITCH_PATIENCE: Duration = Duration::from_secs(2);

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
                FILE_BUFFER_FRAMES,
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

/// The system's sound devices (cpal): the default ones, or devices chosen by name (see
/// [`Phone::audio_devices`](super::Phone::audio_devices)).
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

/// A sound device the system offers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AudioDevice {
    /// The name to choose it by ([`DeviceAudio`], [`CallHandle::switch_input_device`]).
    ///
    /// [`CallHandle::switch_input_device`]: super::CallHandle::switch_input_device
    pub name: String,
    /// Capture or playback.
    pub direction: AudioDirection,
    /// Whether it is the system's default for its direction.
    pub is_default: bool,
    /// Its preferred sample rate and channel count.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
}

#[cfg(feature = "device")]
pub(super) fn list_devices() -> Result<Vec<AudioDevice>, PhoneError> {
    use viska_media::device::{list_input_devices, list_output_devices};
    let mut out = Vec::new();
    for (direction, list) in [
        (AudioDirection::Input, list_input_devices()),
        (AudioDirection::Output, list_output_devices()),
    ] {
        for d in list.map_err(|e| PhoneError::Devices(e.to_string()))? {
            out.push(AudioDevice {
                name: d.name,
                direction,
                is_default: d.is_default,
                rate: d.default_rate,
                channels: d.channels,
            });
        }
    }
    Ok(out)
}

#[cfg(not(feature = "device"))]
pub(super) fn list_devices() -> Result<Vec<AudioDevice>, PhoneError> {
    Err(PhoneError::Devices("built without sound devices".into()))
}

/// How the application's audio is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppAudioConfig {
    /// Sample rate of what the application pushes (captured).
    pub capture_rate: u32,
    /// Interleaved channels of what it pushes.
    pub capture_channels: u16,
    /// Sample rate of what it pulls (to play).
    pub playback_rate: u32,
    /// Interleaved channels of what it pulls.
    pub playback_channels: u16,
}

impl Default for AppAudioConfig {
    fn default() -> Self {
        Self {
            capture_rate: 48_000,
            capture_channels: 1,
            playback_rate: 48_000,
            playback_channels: 1,
        }
    }
}

/// Audio the application moves itself, at its own rate and buffer size: it pushes captured
/// samples into [`AppCapture`] and pulls what to play from [`AppPlayback`], from its own audio
/// thread. Each call's ends are lock-free rings, so a call never waits for the application;
/// the application's side takes a short lock over the list of calls (held against it only
/// while a call's audio opens). Every call of the phone hears what is pushed, and what is
/// pulled is every call mixed.
#[derive(Clone)]
pub struct AppAudio {
    config: AppAudioConfig,
    hub: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    inputs: Mutex<Vec<AppCaptureInput>>,
    outputs: Mutex<Vec<AppPlaybackOutput>>,
}

impl Hub {
    /// The captures of calls still running (those of ended calls are let go here).
    fn inputs(&self) -> std::sync::MutexGuard<'_, Vec<AppCaptureInput>> {
        let mut inputs = lock(&self.inputs);
        inputs.retain(|i| !i.is_closed());
        inputs
    }

    /// The playbacks of calls still running or with audio left to pull.
    fn outputs(&self) -> std::sync::MutexGuard<'_, Vec<AppPlaybackOutput>> {
        let mut outputs = lock(&self.outputs);
        outputs.retain(|o| !o.is_closed());
        outputs
    }
}

impl std::fmt::Debug for AppAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAudio")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppAudio {
    /// The factory to give the phone, and the two ends the application keeps.
    pub fn new(config: AppAudioConfig) -> (Self, AppCapture, AppPlayback) {
        let hub = Arc::new(Hub::default());
        let capture = AppCapture {
            hub: Arc::clone(&hub),
        };
        let playback = AppPlayback {
            hub: Arc::clone(&hub),
            mix: Vec::new(),
        };
        (Self { config, hub }, capture, playback)
    }
}

impl AudioFactory for AppAudio {
    fn open_source(&self, frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        let (input, source) = app_capture(
            self.config.capture_rate,
            self.config.capture_channels,
            frame_samples,
        )
        .map_err(|e| AudioIoError::Device(e.to_string()))?;
        let mut inputs = self.hub.inputs();
        inputs.push(input);
        Ok(Box::new(source))
    }

    fn open_sink(&self, frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        let (sink, output) = app_playback(
            self.config.playback_rate,
            self.config.playback_channels,
            frame_samples,
        )
        .map_err(|e| AudioIoError::Device(e.to_string()))?;
        let mut outputs = self.hub.outputs();
        outputs.push(output);
        Ok(Box::new(sink))
    }
}

/// The application's capture end of [`AppAudio`].
pub struct AppCapture {
    hub: Arc<Hub>,
}

impl AppCapture {
    /// Pushes captured interleaved 16-bit samples (any amount) to every call. The ends of
    /// calls that have ended are let go here.
    pub fn push(&self, samples: &[i16]) {
        let mut inputs = self.hub.inputs();
        for input in inputs.iter_mut() {
            input.push(samples);
        }
    }

    /// How many calls' captures are attached (calls with their audio open).
    pub fn attached(&self) -> usize {
        self.hub.inputs().len()
    }
}

/// The application's playback end of [`AppAudio`].
pub struct AppPlayback {
    hub: Arc<Hub>,
    mix: Vec<i16>,
}

impl AppPlayback {
    /// Fills `out` with interleaved 16-bit samples to play: every call mixed; silence where
    /// nothing is there yet.
    pub fn pull(&mut self, out: &mut [i16]) {
        out.fill(0);
        if self.mix.len() < out.len() {
            self.mix.resize(out.len(), 0);
        }
        let mix = self.mix.get_mut(..out.len()).unwrap_or_default();
        let mut outputs = self.hub.outputs();
        for output in outputs.iter_mut() {
            mix.fill(0);
            output.pull(mix);
            for (o, &m) in out.iter_mut().zip(mix.iter()) {
                *o = o.saturating_add(m);
            }
        }
    }

    /// How many calls' playbacks are attached (calls with their audio open, or with audio
    /// still to pull).
    pub fn attached(&self) -> usize {
        self.hub.outputs().len()
    }
}

/// What the blocking helper threads hand back to a call.
pub(super) enum AudioJob {
    Opened(Opened),
    Failed(String),
    Switched(SwitchDone),
}

/// A call's end points, just opened.
pub(super) struct Opened {
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    recorder: Option<BackgroundSink>,
    frame_samples: usize,
}

impl Opened {
    pub(super) fn source_clocked(&self) -> bool {
        self.source.has_own_clock()
    }
}

/// Opens the end points (blocking: on a helper thread).
pub(super) fn open_ends(
    factory: &dyn AudioFactory,
    frame_samples: usize,
    opus: &OpusConfig,
    recording: Option<PathBuf>,
) -> AudioJob {
    let source = factory.open_source(frame_samples);
    let sink = factory.open_sink(frame_samples);
    match (source, sink) {
        (Ok(source), Ok(sink)) => {
            let recorder = recording.and_then(|path| {
                OggOpusWriter::create(&path, opus)
                    .map_err(|e| AudioIoError::File(e.to_string()))
                    .and_then(|w| {
                        BackgroundSink::spawn(
                            "viska-record",
                            Box::new(w),
                            frame_samples,
                            FILE_BUFFER_FRAMES,
                        )
                    })
                    .map_err(|e| tracing::warn!(error = %e, "recording not started"))
                    .ok()
            });
            AudioJob::Opened(Opened {
                source,
                sink,
                recorder,
                frame_samples,
            })
        }
        (source, sink) => AudioJob::Failed(
            [
                source.err().map(|e| format!("input: {e}")),
                sink.err().map(|e| format!("output: {e}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
        ),
    }
}

/// A device switch that ran on a blocking thread, handing its end point back.
pub(super) enum SwitchDone {
    Input(Box<dyn AudioSource>, Result<(), AudioIoError>),
    Output(Box<dyn AudioSink>, Result<(), AudioIoError>),
}

/// The audio end points of a running call.
pub(super) struct AudioEnds {
    source: Box<dyn AudioSource>,
    sink: Box<dyn AudioSink>,
    recorder: Option<BackgroundSink>,
    pcm: Vec<i16>,
    /// Device switches under way, (input, output): the real end point is away on a blocking
    /// thread meanwhile and a stand-in (silence, discard) takes its place.
    switching: (bool, bool),
    opened: bool,
    source_clocked: bool,
}

impl Default for AudioEnds {
    fn default() -> Self {
        Self {
            source: Box::new(SilenceSource),
            sink: Box::new(DiscardSink),
            recorder: None,
            pcm: Vec::new(),
            switching: (false, false),
            opened: false,
            source_clocked: false,
        }
    }
}

impl AudioEnds {
    pub(super) fn install(&mut self, opened: Opened) {
        self.source_clocked = opened.source.has_own_clock();
        self.source = opened.source;
        self.sink = opened.sink;
        self.recorder = opened.recorder;
        self.pcm = vec![0; opened.frame_samples];
        self.opened = true;
    }

    pub(super) fn source_clocked(&self) -> bool {
        self.source_clocked
    }

    /// Reads one frame from the source (silence when it fails).
    pub(super) fn capture(&mut self) -> &[i16] {
        if let Err(e) = self.source.read_frame(&mut self.pcm) {
            tracing::debug!(error = %e, "audio source failed; sending silence");
            self.pcm.fill(0);
        }
        &self.pcm
    }

    pub(super) fn play(&mut self, pcm: &[i16]) {
        if let Err(e) = self.sink.write_frame(pcm) {
            // A sink that fails (a full disk under the WAV output) is not tried every frame;
            // what it holds is finished off the runtime thread.
            tracing::warn!(error = %e, "audio sink failed; discarding what is heard from now on");
            let failed = std::mem::replace(&mut self.sink, Box::new(DiscardSink));
            tokio::task::spawn_blocking(move || finish_files(failed, None));
        }
    }

    pub(super) fn record(&mut self, pcm: &[i16]) {
        if let Some(rec) = self.recorder.as_mut() {
            if let Err(e) = rec.write_frame(pcm) {
                tracing::warn!(error = %e, "recording failed; stopped");
                let failed = self.recorder.take();
                tokio::task::spawn_blocking(move || drop(failed));
            }
        }
    }

    /// What the devices reported (lost, switched), for the application.
    pub(super) fn device_events(&mut self, shared: &CallShared) {
        while let Some(ev) = self.source.device_event() {
            if let Some(ev) = from_device(AudioDirection::Input, ev) {
                shared.notify(CallUpdate::Audio(ev));
            }
        }
        while let Some(ev) = self.sink.device_event() {
            if let Some(ev) = from_device(AudioDirection::Output, ev) {
                shared.notify(CallUpdate::Audio(ev));
            }
        }
    }

    /// Hands the end point to a blocking thread to open the new device there (opening a device
    /// can take a hundred milliseconds or more); a stand-in takes its place meanwhile.
    pub(super) fn start_switch(
        &mut self,
        direction: AudioDirection,
        device: Option<String>,
        jobs: &mpsc::UnboundedSender<AudioJob>,
    ) -> Result<(), String> {
        if !self.opened {
            return Err("the call's audio has not started".into());
        }
        let jobs = jobs.clone();
        match direction {
            AudioDirection::Input => {
                if self.switching.0 {
                    return Err("an input switch is already under way".into());
                }
                self.switching.0 = true;
                let mut source = std::mem::replace(&mut self.source, Box::new(SilenceSource));
                tokio::task::spawn_blocking(move || {
                    let result = source.change_device(device.as_deref());
                    let _ = jobs.send(AudioJob::Switched(SwitchDone::Input(source, result)));
                });
            }
            AudioDirection::Output => {
                if self.switching.1 {
                    return Err("an output switch is already under way".into());
                }
                self.switching.1 = true;
                let mut sink = std::mem::replace(&mut self.sink, Box::new(DiscardSink));
                tokio::task::spawn_blocking(move || {
                    let result = sink.change_device(device.as_deref());
                    let _ = jobs.send(AudioJob::Switched(SwitchDone::Output(sink, result)));
                });
            }
        }
        Ok(())
    }

    /// Puts a switched end point back in place; a failure is returned as an event (success is
    /// reported by the device itself at the next frame it moves).
    pub(super) fn finish_switch(&mut self, done: SwitchDone) -> Option<AudioEvent> {
        let (direction, result) = match done {
            SwitchDone::Input(source, result) => {
                self.source = source;
                self.source_clocked = self.source.has_own_clock();
                self.switching.0 = false;
                (AudioDirection::Input, result)
            }
            SwitchDone::Output(sink, result) => {
                self.sink = sink;
                self.switching.1 = false;
                (AudioDirection::Output, result)
            }
        };
        result.err().map(|e| AudioEvent::SwitchFailed {
            direction,
            error: e.to_string(),
        })
    }

    /// The end of the call: waits (bounded) for a switch under way, whose thread has the real
    /// end point, then finishes the files off the runtime thread.
    pub(super) async fn finish(&mut self, done: &mut mpsc::UnboundedReceiver<AudioJob>) {
        let deadline = tokio::time::Instant::now() + SWITCH_PATIENCE;
        while self.switching != (false, false) {
            match tokio::time::timeout_at(deadline, done.recv()).await {
                Ok(Some(AudioJob::Switched(switched))) => {
                    let _ = self.finish_switch(switched);
                }
                // Audio opened after the call ended: dropped (below, off this thread).
                Ok(Some(AudioJob::Opened(opened))) => {
                    tokio::task::spawn_blocking(move || drop(opened));
                }
                Ok(Some(AudioJob::Failed(_))) => {}
                _ => break,
            }
        }
        let sink = std::mem::replace(&mut self.sink, Box::new(DiscardSink));
        let recorder = self.recorder.take();
        let source = std::mem::replace(&mut self.source, Box::new(SilenceSource));
        let finished = tokio::task::spawn_blocking(move || {
            drop(source);
            finish_files(sink, recorder);
        })
        .await;
        if finished.is_err() {
            tracing::warn!("finishing the call's audio files failed");
        }
    }
}

fn from_device(direction: AudioDirection, event: DeviceEvent) -> Option<AudioEvent> {
    match event {
        DeviceEvent::Lost => Some(AudioEvent::DeviceLost { direction }),
        DeviceEvent::Switched { name } => Some(AudioEvent::DeviceSwitched { direction, name }),
        DeviceEvent::Recovered { name } => Some(AudioEvent::DeviceRecovered { direction, name }),
        _ => None,
    }
}

/// Finishes a call's audio sink and recording (blocking: run it off the runtime thread).
fn finish_files(mut sink: Box<dyn AudioSink>, recorder: Option<BackgroundSink>) {
    if let Err(e) = sink.finish() {
        tracing::warn!(error = %e, "finishing the audio sink failed");
    }
    if let Some(mut rec) = recorder {
        if let Err(e) = rec.finish() {
            tracing::warn!(error = %e, "finishing the recording failed");
        }
    }
}

/// Test and measurement hooks of one call (feature `testing`): the latency probe, tampering,
/// replays and raw injection. Off the per-frame path without the feature.
#[cfg(feature = "testing")]
pub(super) struct TestHooks {
    probe: Option<Arc<super::LatencyProbe>>,
    send_stream: u64,
    recv_stream: u64,
    last_sent: Vec<u8>,
    tamper_next: u32,
    scratch: Vec<u8>,
}

#[cfg(feature = "testing")]
impl TestHooks {
    pub(super) fn new(config: &super::TestingConfig, role: viska_call::Role) -> Self {
        // The direct handshake's KIDs: the caller sends under 0, the callee under 1.
        let (send_stream, recv_stream) = match role {
            viska_call::Role::Caller => (0, 1),
            _ => (1, 0),
        };
        Self {
            probe: config.latency_probe.clone(),
            send_stream,
            recv_stream,
            last_sent: Vec::new(),
            tamper_next: 0,
            scratch: Vec::new(),
        }
    }

    /// A datagram about to leave: kept for replays, tampered if asked.
    pub(super) fn sending(&mut self, bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
        self.last_sent.clear();
        self.last_sent.extend_from_slice(bytes);
        if self.tamper_next > 0 {
            self.tamper_next -= 1;
            self.scratch.clear();
            self.scratch.extend_from_slice(bytes);
            // Past the SFrame header: a ciphertext bit.
            let at = self.scratch.len().saturating_sub(20);
            if let Some(b) = self.scratch.get_mut(at) {
                *b ^= 0x01;
            }
            return std::borrow::Cow::Borrowed(&self.scratch);
        }
        std::borrow::Cow::Borrowed(&self.last_sent)
    }

    pub(super) fn inject(
        &mut self,
        conn: &crate::transport::PeerConnection,
        signaling: &super::driver::SignalingQueue,
        injection: super::Injection,
    ) {
        let bytes = match injection {
            super::Injection::Raw(bytes) => bytes,
            super::Injection::ReplayLast => self.last_sent.clone(),
            super::Injection::TamperNext => {
                self.tamper_next += 1;
                return;
            }
            super::Injection::RawSignal(bytes) => {
                let _ = signaling.send(bytes);
                return;
            }
        };
        if !bytes.is_empty() {
            let _ = conn.send_media(&bytes);
        }
    }

    pub(super) fn captured(&mut self, session: &viska_session::Session, now: std::time::Instant) {
        if let (Some(p), Some(next)) = (self.probe.as_deref(), session.next_frame_index()) {
            // The frame's first sample was captured one frame period before it was read; once
            // encoded it is ready for what Viska adds: protection and transport.
            let period = session
                .frame_samples()
                .map_or(Duration::from_millis(20), |s| {
                    Duration::from_micros(s as u64 * 1000 / 48)
                });
            p.frame_ready(
                self.send_stream,
                next.saturating_sub(1),
                now.checked_sub(period).unwrap_or(now),
                std::time::Instant::now(),
            );
        }
    }

    pub(super) fn arrived(&mut self, session: &viska_session::Session, now: std::time::Instant) {
        if let (Some(p), Some((_, index))) = (self.probe.as_deref(), session.last_received()) {
            p.frame_arrived(self.recv_stream, index, now);
        }
    }

    pub(super) fn played(&mut self, session: &viska_session::Session) {
        let played = session.last_played(viska_e2ee::keys::ParticipantId::DIRECT_PEER);
        if let (Some(p), Some((index, after))) = (self.probe.as_deref(), played) {
            p.frame_played(self.recv_stream, index, std::time::Instant::now() + after);
        }
    }
}

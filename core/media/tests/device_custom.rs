//! Capture and playback through cpal's custom host: fake devices whose callbacks the test
//! drives by hand, so sample flow, rate conversion, counters, loss and switching are checked
//! deterministically, without a sound card or real time.
#![cfg(feature = "device")]

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    Data, DeviceDescription, DeviceDescriptionBuilder, DeviceId, Error, ErrorKind, FrameCount,
    InputCallbackInfo, InputStreamTimestamp, OutputCallbackInfo, OutputStreamTimestamp,
    SampleFormat, StreamConfig, StreamInstant, SupportedBufferSize, SupportedStreamConfig,
    SupportedStreamConfigRange,
};
use viska_ffi_cpal::{with_input_data, with_output_data};
use viska_media::audio::{AudioSink, AudioSource, SourceStatus};
use viska_media::device::{
    DeviceCapture, DeviceError, DeviceEvent, DevicePlayback, DeviceSelector, list_input_devices_on,
    list_output_devices_on,
};

const FRAME: usize = 960;

type InputCallback = Box<dyn FnMut(&Data, &InputCallbackInfo) + Send>;
type OutputCallback = Box<dyn FnMut(&mut Data, &OutputCallbackInfo) + Send>;
type ErrorCallback = Box<dyn FnMut(Error) + Send>;

/// The callbacks of the stream currently open on a fake device; the test calls them.
#[derive(Default)]
struct Callbacks {
    input: Option<InputCallback>,
    output: Option<OutputCallback>,
    error: Option<ErrorCallback>,
    playing: bool,
    /// Which stream these callbacks belong to (a reopened stream may be built before the old
    /// one is dropped).
    stream: u64,
}

#[derive(Clone)]
struct FakeDevice {
    name: &'static str,
    rate: u32,
    channels: u16,
    format: SampleFormat,
    input: bool,
    output: bool,
    callbacks: Arc<Mutex<Callbacks>>,
    /// Whether the device is plugged in: an absent one refuses to open.
    present: Arc<AtomicBool>,
    streams: Arc<AtomicU64>,
}

impl FakeDevice {
    fn new(name: &'static str, rate: u32, channels: u16, input: bool, output: bool) -> Self {
        Self {
            name,
            rate,
            channels,
            format: SampleFormat::F32,
            input,
            output,
            callbacks: Arc::new(Mutex::new(Callbacks::default())),
            present: Arc::new(AtomicBool::new(true)),
            streams: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set_present(&self, present: bool) {
        self.present.store(present, Ordering::SeqCst);
    }

    /// Streams opened on this device so far.
    fn streams_opened(&self) -> u64 {
        self.streams.load(Ordering::SeqCst)
    }

    fn has_stream(&self) -> bool {
        let callbacks = self.callbacks.lock().expect("callbacks");
        callbacks.input.is_some() || callbacks.output.is_some()
    }

    fn is_playing(&self) -> bool {
        self.callbacks.lock().expect("callbacks").playing
    }

    /// Delivers captured interleaved samples as the device would; false when no stream is open.
    fn deliver_f32(&self, samples: &mut [f32]) -> bool {
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        let Some(callback) = callbacks.input.as_mut() else {
            return false;
        };
        let info = InputCallbackInfo::new(InputStreamTimestamp {
            callback: StreamInstant::new(0, 0),
            capture: StreamInstant::new(0, 0),
        });
        with_input_data(samples, |data| callback(data, &info));
        true
    }

    fn deliver_i16(&self, samples: &mut [i16]) -> bool {
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        let Some(callback) = callbacks.input.as_mut() else {
            return false;
        };
        let info = InputCallbackInfo::new(InputStreamTimestamp {
            callback: StreamInstant::new(0, 0),
            capture: StreamInstant::new(0, 0),
        });
        with_input_data(samples, |data| callback(data, &info));
        true
    }

    /// Asks the stream for `len` interleaved samples to play; None when no stream is open.
    fn pull_f32(&self, len: usize) -> Option<Vec<f32>> {
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        let callback = callbacks.output.as_mut()?;
        let info = OutputCallbackInfo::new(OutputStreamTimestamp {
            callback: StreamInstant::new(0, 0),
            playback: StreamInstant::new(0, 0),
        });
        let mut buffer = vec![f32::NAN; len];
        with_output_data(&mut buffer, |data| callback(data, &info));
        Some(buffer)
    }

    fn fail(&self, kind: ErrorKind) {
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        if let Some(callback) = callbacks.error.as_mut() {
            callback(Error::new(kind));
        }
    }

    fn config(&self) -> SupportedStreamConfig {
        SupportedStreamConfig::new(
            self.channels,
            self.rate,
            SupportedBufferSize::Unknown,
            self.format,
        )
    }

    fn ranges(&self, enabled: bool) -> std::vec::IntoIter<SupportedStreamConfigRange> {
        let ranges = if enabled {
            vec![SupportedStreamConfigRange::new(
                self.channels,
                self.rate,
                self.rate,
                SupportedBufferSize::Unknown,
                self.format,
            )]
        } else {
            Vec::new()
        };
        ranges.into_iter()
    }
}

impl PartialEq for FakeDevice {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for FakeDevice {}
impl std::hash::Hash for FakeDevice {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}
impl fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}
impl fmt::Display for FakeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

struct FakeStream {
    callbacks: Arc<Mutex<Callbacks>>,
    id: u64,
}

impl StreamTrait for FakeStream {
    fn play(&self) -> Result<(), Error> {
        self.callbacks.lock().expect("callbacks").playing = true;
        Ok(())
    }
    fn pause(&self) -> Result<(), Error> {
        self.callbacks.lock().expect("callbacks").playing = false;
        Ok(())
    }
    fn buffer_size(&self) -> Result<FrameCount, Error> {
        Err(Error::new(ErrorKind::UnsupportedOperation))
    }
    fn now(&self) -> StreamInstant {
        StreamInstant::new(0, 0)
    }
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        if callbacks.stream == self.id {
            *callbacks = Callbacks::default();
        }
    }
}

impl DeviceTrait for FakeDevice {
    type SupportedInputConfigs = std::vec::IntoIter<SupportedStreamConfigRange>;
    type SupportedOutputConfigs = std::vec::IntoIter<SupportedStreamConfigRange>;
    type Stream = FakeStream;

    fn description(&self) -> Result<DeviceDescription, Error> {
        Ok(DeviceDescriptionBuilder::new(self.name).build())
    }
    fn id(&self) -> Result<DeviceId, Error> {
        Err(Error::new(ErrorKind::UnsupportedOperation))
    }
    fn supported_input_configs(&self) -> Result<Self::SupportedInputConfigs, Error> {
        Ok(self.ranges(self.input))
    }
    fn supported_output_configs(&self) -> Result<Self::SupportedOutputConfigs, Error> {
        Ok(self.ranges(self.output))
    }
    fn default_input_config(&self) -> Result<SupportedStreamConfig, Error> {
        if self.input {
            Ok(self.config())
        } else {
            Err(Error::new(ErrorKind::UnsupportedConfig))
        }
    }
    fn default_output_config(&self) -> Result<SupportedStreamConfig, Error> {
        if self.output {
            Ok(self.config())
        } else {
            Err(Error::new(ErrorKind::UnsupportedConfig))
        }
    }
    fn build_input_stream_raw<D, E>(
        &self,
        config: StreamConfig,
        sample_format: SampleFormat,
        data_callback: D,
        error_callback: E,
        _timeout: Option<Duration>,
    ) -> Result<Self::Stream, Error>
    where
        D: FnMut(&Data, &InputCallbackInfo) + Send + 'static,
        E: FnMut(Error) + Send + 'static,
    {
        if !self.input
            || config.sample_rate != self.rate
            || config.channels != self.channels
            || sample_format != self.format
        {
            return Err(Error::new(ErrorKind::UnsupportedConfig));
        }
        if !self.present.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::DeviceNotAvailable));
        }
        let id = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        callbacks.input = Some(Box::new(data_callback));
        callbacks.error = Some(Box::new(error_callback));
        callbacks.stream = id;
        Ok(FakeStream {
            callbacks: Arc::clone(&self.callbacks),
            id,
        })
    }
    fn build_output_stream_raw<D, E>(
        &self,
        config: StreamConfig,
        sample_format: SampleFormat,
        data_callback: D,
        error_callback: E,
        _timeout: Option<Duration>,
    ) -> Result<Self::Stream, Error>
    where
        D: FnMut(&mut Data, &OutputCallbackInfo) + Send + 'static,
        E: FnMut(Error) + Send + 'static,
    {
        if !self.output
            || config.sample_rate != self.rate
            || config.channels != self.channels
            || sample_format != self.format
        {
            return Err(Error::new(ErrorKind::UnsupportedConfig));
        }
        if !self.present.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::DeviceNotAvailable));
        }
        let id = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        let mut callbacks = self.callbacks.lock().expect("callbacks");
        callbacks.output = Some(Box::new(data_callback));
        callbacks.error = Some(Box::new(error_callback));
        callbacks.stream = id;
        Ok(FakeStream {
            callbacks: Arc::clone(&self.callbacks),
            id,
        })
    }
}

#[derive(Clone)]
struct FakeHost {
    devices: Vec<FakeDevice>,
    default_input: Option<usize>,
    default_output: Option<usize>,
}

impl HostTrait for FakeHost {
    type Devices = std::vec::IntoIter<FakeDevice>;
    type Device = FakeDevice;

    fn is_available() -> bool {
        true
    }
    fn devices(&self) -> Result<Self::Devices, Error> {
        Ok(self.devices.clone().into_iter())
    }
    fn default_input_device(&self) -> Option<Self::Device> {
        self.default_input
            .and_then(|i| self.devices.get(i))
            .cloned()
    }
    fn default_output_device(&self) -> Option<Self::Device> {
        self.default_output
            .and_then(|i| self.devices.get(i))
            .cloned()
    }
}

/// A laptop: a 44.1 kHz stereo microphone (default), a 44.1 kHz stereo speaker (default), a
/// 48 kHz mono headset that does both, and a 16 kHz mono I16 USB microphone.
struct Rig {
    mic: FakeDevice,
    speaker: FakeDevice,
    headset: FakeDevice,
    usb_mic: FakeDevice,
    host: Arc<cpal::Host>,
}

fn rig() -> Rig {
    let mic = FakeDevice::new("Built-in Microphone", 44_100, 2, true, false);
    let speaker = FakeDevice::new("Built-in Speaker", 44_100, 2, false, true);
    let headset = FakeDevice::new("Headset", 48_000, 1, true, true);
    let mut usb_mic = FakeDevice::new("USB Microphone", 16_000, 1, true, false);
    usb_mic.format = SampleFormat::I16;
    let host = FakeHost {
        devices: vec![
            mic.clone(),
            speaker.clone(),
            headset.clone(),
            usb_mic.clone(),
        ],
        default_input: Some(0),
        default_output: Some(1),
    };
    let host = cpal::Host::from(cpal::platform::CustomHost::from_host(host));
    Rig {
        mic,
        speaker,
        headset,
        usb_mic,
        host: Arc::new(host),
    }
}

/// `frames` device frames of a sine tone, every channel the same, starting at `start`.
fn tone(
    rate: u32,
    freq: f64,
    amplitude: f64,
    start: usize,
    frames: usize,
    channels: u16,
) -> Vec<f32> {
    (start..start + frames)
        .flat_map(|n| {
            let v =
                amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / f64::from(rate)).sin();
            std::iter::repeat_n(v as f32, usize::from(channels))
        })
        .collect()
}

fn zero_crossing_frequency(samples: &[f32], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f64 * f64::from(rate) / (2.0 * samples.len() as f64)
}

fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64)
        .sqrt()
}

fn to_f32(frame: &[i16]) -> impl Iterator<Item = f32> + '_ {
    frame.iter().map(|&s| f32::from(s) / 32_768.0)
}

#[test]
fn devices_are_listed_per_direction_with_format_and_default() {
    let rig = rig();
    let inputs = list_input_devices_on(&rig.host).expect("inputs");
    let names: Vec<&str> = inputs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["Built-in Microphone", "Headset", "USB Microphone"]);
    assert!(inputs[0].is_default);
    assert!(!inputs[1].is_default && !inputs[2].is_default);
    assert_eq!((inputs[0].default_rate, inputs[0].channels), (44_100, 2));
    assert_eq!((inputs[2].default_rate, inputs[2].channels), (16_000, 1));

    let outputs = list_output_devices_on(&rig.host).expect("outputs");
    let names: Vec<&str> = outputs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["Built-in Speaker", "Headset"]);
    assert!(outputs[0].is_default);
    assert_eq!((outputs[1].default_rate, outputs[1].channels), (48_000, 1));
}

#[test]
fn unknown_or_wrong_direction_names_are_typed_errors() {
    let rig = rig();
    let missing = DeviceCapture::open_on(
        Arc::clone(&rig.host),
        DeviceSelector::Name("Nope".into()),
        FRAME,
    );
    assert!(matches!(missing, Err(DeviceError::NotFound { .. })));
    // The speaker has no input side.
    let speaker_as_mic = DeviceCapture::open_on(
        Arc::clone(&rig.host),
        DeviceSelector::Name("Built-in Speaker".into()),
        FRAME,
    );
    assert!(matches!(speaker_as_mic, Err(DeviceError::NotFound { .. })));
    let zero_frame = DevicePlayback::open_on(Arc::clone(&rig.host), DeviceSelector::Default, 0);
    assert!(matches!(zero_frame, Err(DeviceError::Resample(_))));
    assert!(!rig.speaker.has_stream());
}

#[test]
fn stereo_44k1_capture_becomes_48k_mono_frames_with_the_same_tone() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
        .expect("capture");
    assert_eq!(capture.device_name(), "Built-in Microphone");
    assert_eq!(capture.device_format(), (44_100, 2));
    assert!(rig.mic.is_playing());

    // One second of a 1 kHz tone in 10 ms device buffers; a 20 ms frame read every second buffer.
    let mut captured = Vec::new();
    let mut frame = vec![0i16; FRAME];
    let mut statuses = Vec::new();
    for block in 0..100 {
        let mut buffer = tone(44_100, 1_000.0, 0.5, block * 441, 441, 2);
        assert!(rig.mic.deliver_f32(&mut buffer));
        if block % 2 == 1 {
            let status = capture.read_frame(&mut frame).expect("read");
            statuses.push(status);
            if status == SourceStatus::Audio {
                captured.extend(to_f32(&frame));
            }
        }
    }
    let audio_frames = statuses
        .iter()
        .filter(|&&s| s == SourceStatus::Audio)
        .count();
    // The resampler needs a little more than one frame of input before its first output.
    assert!(audio_frames >= 48, "{statuses:?}");
    let stats = capture.stats();
    assert_eq!(stats.underruns as usize, 50 - audio_frames);
    assert_eq!(stats.overruns, 0);
    assert_eq!(stats.backlog_trims, 0);
    let steady = &captured[4_800..];
    let freq = zero_crossing_frequency(steady, 48_000);
    assert!((freq - 1_000.0).abs() < 3.0, "frequency {freq}");
    let level = rms(steady);
    assert!((level - 0.5 / 2f64.sqrt()).abs() < 0.01, "rms {level}");
    assert_eq!(capture.poll_event(), None);
}

#[test]
fn i16_16k_mono_capture_is_converted_from_integer_samples() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(
        Arc::clone(&rig.host),
        DeviceSelector::Name("USB Microphone".into()),
        FRAME,
    )
    .expect("capture");
    assert_eq!(capture.device_format(), (16_000, 1));
    let mut captured = Vec::new();
    let mut frame = vec![0i16; FRAME];
    for block in 0..50 {
        let mut buffer: Vec<i16> = tone(16_000, 300.0, 0.25, block * 320, 320, 1)
            .into_iter()
            .map(|s| (s * 32_768.0) as i16)
            .collect();
        assert!(rig.usb_mic.deliver_i16(&mut buffer));
        if capture.read_frame(&mut frame).expect("read") == SourceStatus::Audio {
            captured.extend(to_f32(&frame));
        }
    }
    assert!(captured.len() >= 40 * FRAME, "{}", captured.len());
    let steady = &captured[4_800..];
    let freq = zero_crossing_frequency(steady, 48_000);
    assert!((freq - 300.0).abs() < 3.0, "frequency {freq}");
    assert!((rms(steady) - 0.25 / 2f64.sqrt()).abs() < 0.01);
}

#[test]
fn mono_frames_play_as_the_same_tone_on_a_44k1_stereo_speaker() {
    let rig = rig();
    let mut playback =
        DevicePlayback::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
            .expect("playback");
    assert_eq!(playback.device_format(), (44_100, 2));
    let source: Vec<i16> = tone(48_000, 440.0, 0.25, 0, 48_000, 1)
        .into_iter()
        .map(|s| (s * 32_768.0).round() as i16)
        .collect();
    let mut left = Vec::new();
    for frame in source.chunks_exact(FRAME) {
        playback.write_frame(frame).expect("write");
        // The device takes 20 ms (882 stereo frames) per frame written, in two callbacks.
        for _ in 0..2 {
            let out = rig.speaker.pull_f32(441 * 2).expect("stream open");
            for pair in out.chunks_exact(2) {
                assert_eq!(pair[0], pair[1], "both channels carry the mono signal");
                left.push(pair[0]);
            }
        }
    }
    let steady = &left[4_410..40_000];
    let freq = zero_crossing_frequency(steady, 44_100);
    assert!((freq - 440.0).abs() < 3.0, "frequency {freq}");
    assert!((rms(steady) - 0.25 / 2f64.sqrt()).abs() < 0.01);
    assert_eq!(playback.stats().overruns, 0);
    playback.finish().expect("finish");
}

#[test]
fn starved_and_flooded_rings_count_underruns_and_overruns() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
        .expect("capture");
    let mut frame = vec![7i16; FRAME];
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Silence
    );
    assert!(frame.iter().all(|&s| s == 0));
    assert_eq!(capture.stats().underruns, 1);
    // One second of device audio with nobody reading overflows the 200 ms ring.
    for block in 0..100 {
        let mut buffer = tone(44_100, 500.0, 0.5, block * 441, 441, 2);
        rig.mic.deliver_f32(&mut buffer);
    }
    let overruns = capture.stats().overruns;
    assert!((75..=81).contains(&overruns), "overruns {overruns}");
    // The backlog (200 ms) is cut to about a frame before reading, so the stall leaves no
    // lasting delay: two frames read, then the ring is drained.
    assert_eq!(capture.stats().backlog_trims, 0);
    for _ in 0..2 {
        assert_eq!(
            capture.read_frame(&mut frame).expect("read"),
            SourceStatus::Audio
        );
    }
    assert_eq!(capture.stats().backlog_trims, 1);
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Silence
    );

    let mut playback =
        DevicePlayback::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
            .expect("playback");
    let out = rig.speaker.pull_f32(882).expect("stream open");
    assert!(out.iter().all(|&s| s == 0.0), "an empty ring plays silence");
    assert_eq!(playback.stats().underruns, 1);
    let loud = vec![8_000i16; FRAME];
    for _ in 0..30 {
        playback.write_frame(&loud).expect("write");
    }
    // 200 ms of 44.1 kHz stereo holds about ten 20 ms frames; the rest were dropped.
    let overruns = playback.stats().overruns;
    assert!((19..=21).contains(&overruns), "overruns {overruns}");
    assert!(playback.queued_samples() <= 17_640);
    assert!(matches!(
        playback.write_frame(&loud[..10]),
        Err(viska_media::audio::AudioIoError::FrameSize { .. })
    ));
}

/// The first event `poll` reports, polling every 2 ms (reopening runs on a helper thread);
/// patience, not a time bound: gives up after 20 s.
fn next_event(mut poll: impl FnMut() -> Option<DeviceEvent>) -> DeviceEvent {
    for _ in 0..10_000 {
        if let Some(event) = poll() {
            return event;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no device event");
}

#[test]
fn xruns_and_transient_errors_are_counted_not_losses() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
        .expect("capture");
    for block in 0..10 {
        let mut buffer = tone(44_100, 1_000.0, 0.5, block * 441, 441, 2);
        rig.mic.deliver_f32(&mut buffer);
    }
    // What the ALSA pulse plugin reports as a stream starts, and a reroute.
    rig.mic.fail(ErrorKind::Xrun);
    rig.mic.fail(ErrorKind::DeviceChanged);
    for _ in 0..700 {
        rig.mic.fail(ErrorKind::BackendError);
    }
    assert_eq!(capture.poll_event(), None);
    let stats = capture.stats();
    assert_eq!(stats.device_xruns, 1);
    assert_eq!(stats.device_errors, 700);
    assert_eq!(stats.device_lost, 0);
    let mut frame = vec![0i16; FRAME];
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    assert_eq!(rig.mic.streams_opened(), 1, "never reopened");
}

#[test]
fn a_lost_device_is_reopened_and_the_audio_goes_on() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
        .expect("capture");
    rig.mic.fail(ErrorKind::DeviceNotAvailable);
    let mut frame = vec![0i16; FRAME];
    // Lost: silence until the new stream is in.
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Silence
    );
    assert_eq!(
        next_event(|| capture.poll_event()),
        DeviceEvent::Recovered {
            name: "Built-in Microphone".into()
        }
    );
    assert_eq!(capture.poll_event(), None, "reported once");
    assert_eq!(rig.mic.streams_opened(), 2);
    for block in 0..10 {
        let mut buffer = tone(44_100, 1_000.0, 0.5, block * 441, 441, 2);
        assert!(rig.mic.deliver_f32(&mut buffer), "the new stream is open");
    }
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    assert!(frame.iter().any(|&s| s != 0));
    let stats = capture.stats();
    assert_eq!((stats.device_lost, stats.device_recoveries), (1, 1));

    // A device that is not there falls back to the default one.
    let mut playback = DevicePlayback::open_on(
        Arc::clone(&rig.host),
        DeviceSelector::Name("Headset".into()),
        FRAME,
    )
    .expect("playback");
    rig.headset.set_present(false);
    rig.headset.fail(ErrorKind::StreamInvalidated);
    assert_eq!(
        next_event(|| playback.poll_event()),
        DeviceEvent::Recovered {
            name: "Built-in Speaker".into()
        }
    );
    playback.write_frame(&[9_000i16; FRAME]).expect("write");
    let out = rig.speaker.pull_f32(882).expect("stream open");
    assert!(out.iter().any(|&s| s > 0.1), "plays on the default speaker");
}

#[test]
fn a_device_that_cannot_be_reopened_is_reported_lost_then_recovered_when_it_returns() {
    let rig = rig();
    let mut playback =
        DevicePlayback::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
            .expect("playback");
    rig.speaker.set_present(false);
    rig.speaker.fail(ErrorKind::DeviceNotAvailable);
    playback
        .write_frame(&[9_000i16; FRAME])
        .expect("discarded, not an error");
    assert_eq!(playback.queued_samples(), 0);
    assert_eq!(next_event(|| playback.poll_event()), DeviceEvent::Lost);
    assert_eq!(playback.stats().device_lost, 1);
    assert_eq!(
        rig.speaker.streams_opened(),
        1,
        "every reopening was refused"
    );
    rig.speaker.set_present(true);
    assert_eq!(
        next_event(|| playback.poll_event()),
        DeviceEvent::Recovered {
            name: "Built-in Speaker".into()
        }
    );
    playback.write_frame(&[9_000i16; FRAME]).expect("write");
    let out = rig.speaker.pull_f32(882).expect("stream open");
    assert!(out.iter().any(|&s| s > 0.1));
    assert_eq!(playback.stats().device_recoveries, 1);
}

#[test]
fn switching_devices_mid_call_keeps_the_object_and_its_counters() {
    let rig = rig();
    let mut capture = DeviceCapture::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
        .expect("capture");
    let mut frame = vec![0i16; FRAME];
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Silence
    );
    // Lost, and not to be reopened: the switch replaces it.
    rig.mic.set_present(false);
    rig.mic.fail(ErrorKind::DeviceNotAvailable);
    assert_eq!(capture.poll_event(), None, "reopening under way");

    // A failed switch leaves the old device in place.
    assert!(matches!(
        capture.switch_device(DeviceSelector::Name("Nope".into())),
        Err(DeviceError::NotFound { .. })
    ));
    assert_eq!(capture.device_name(), "Built-in Microphone");

    capture
        .switch_device(DeviceSelector::Name("Headset".into()))
        .expect("switch");
    assert_eq!(
        capture.poll_event(),
        Some(DeviceEvent::Switched {
            name: "Headset".into()
        })
    );
    assert!(!rig.mic.has_stream(), "the old stream is closed");
    assert!(rig.headset.has_stream());
    assert_eq!(capture.device_format(), (48_000, 1));
    // The headset runs at 48 kHz mono: samples pass through exactly.
    let mut buffer: Vec<f32> = (0..FRAME).map(|i| (i as f32 - 480.0) / 1_024.0).collect();
    assert!(rig.headset.deliver_f32(&mut buffer));
    assert_eq!(
        capture.read_frame(&mut frame).expect("read"),
        SourceStatus::Audio
    );
    let expected: Vec<i16> = (0..FRAME).map(|i| (i as i16 - 480) * 32).collect();
    assert_eq!(frame, expected);
    let stats = capture.stats();
    assert_eq!(stats.underruns, 1, "kept from the first device");
    assert_eq!(stats.device_lost, 1);
    assert_eq!(capture.poll_event(), None);

    let mut playback =
        DevicePlayback::open_on(Arc::clone(&rig.host), DeviceSelector::Default, FRAME)
            .expect("playback");
    playback.write_frame(&[1_000i16; FRAME]).expect("write");
    playback
        .switch_device(DeviceSelector::Name("Headset".into()))
        .expect("switch");
    assert!(!rig.speaker.has_stream());
    let written: Vec<i16> = (0..FRAME as i16).collect();
    playback.write_frame(&written).expect("write");
    let out = rig.headset.pull_f32(FRAME).expect("stream open");
    let played: Vec<i16> = out.iter().map(|&s| (s * 32_768.0).round() as i16).collect();
    assert_eq!(
        played, written,
        "only audio written after the switch, exactly"
    );
    assert_eq!(
        playback.poll_event(),
        Some(DeviceEvent::Switched {
            name: "Headset".into()
        })
    );
}

/// Samples a device clocked `ppm` away from the media clock moves per media frame: the
/// running total rounded down, so fractions carry over as a real device's would.
struct DeviceClock {
    ppm: f64,
    frames: u64,
    moved: u64,
}

impl DeviceClock {
    fn new(ppm: f64) -> Self {
        Self {
            ppm,
            frames: 0,
            moved: 0,
        }
    }

    fn next(&mut self) -> usize {
        self.frames += 1;
        let due = (self.frames as f64 * FRAME as f64 * (1.0 + self.ppm * 1e-6)).floor() as u64;
        let n = due - self.moved;
        self.moved = due;
        n as usize
    }
}

/// Largest jump between neighbouring samples: a 200 Hz tone at half scale moves at most
/// ~430 per sample; a dropped block or a gap of silence jumps by thousands.
fn largest_step(samples: &[i16]) -> i32 {
    samples
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .max()
        .unwrap_or(0)
}

/// Four minutes of media frames: enough for ±800 ppm to move a ring by 9216 samples, which
/// without drift correction trims the capture backlog (fast device), starves it (slow
/// device), and starves (fast) or overflows (slow) the 9600-sample playback ring.
const DRIFT_FRAMES: usize = 12_000;

#[test]
fn capture_follows_a_device_clock_800_ppm_fast_or_slow_without_drops_or_gaps() {
    for ppm in [800.0, -800.0] {
        let rig = rig();
        let mut capture = DeviceCapture::open_on(
            Arc::clone(&rig.host),
            DeviceSelector::Name("Headset".into()),
            FRAME,
        )
        .expect("capture");
        let mut clock = DeviceClock::new(ppm);
        let mut sent = 0;
        // Two frames of slack before the first read, as a device's first callbacks give.
        let mut prefill = tone(48_000, 200.0, 0.5, sent, 2 * FRAME, 1);
        sent += 2 * FRAME;
        assert!(rig.headset.deliver_f32(&mut prefill));
        let mut frame = vec![0i16; FRAME];
        let mut heard = Vec::with_capacity(DRIFT_FRAMES * FRAME);
        for _ in 0..DRIFT_FRAMES {
            let n = clock.next();
            let mut block = tone(48_000, 200.0, 0.5, sent, n, 1);
            sent += n;
            assert!(rig.headset.deliver_f32(&mut block));
            assert_eq!(
                capture.read_frame(&mut frame).expect("read"),
                SourceStatus::Audio,
                "{ppm} ppm"
            );
            heard.extend_from_slice(&frame);
        }
        let stats = capture.stats();
        assert_eq!(stats.backlog_trims, 0, "{ppm} ppm: {stats:?}");
        assert_eq!(stats.underruns, 0, "{ppm} ppm: {stats:?}");
        assert!(stats.drift_corrections > 0, "{ppm} ppm: {stats:?}");
        assert!(
            largest_step(&heard) < 600,
            "{ppm} ppm: step {}",
            largest_step(&heard)
        );
        // Still the same tone: the corrections are far too small to hear as pitch.
        let tail: Vec<f32> = to_f32(&heard[heard.len() - 48_000..]).collect();
        let freq = zero_crossing_frequency(&tail, 48_000);
        assert!((freq - 200.0).abs() < 1.0, "{ppm} ppm: frequency {freq}");
    }
}

#[test]
fn playback_follows_a_device_clock_800_ppm_fast_or_slow_without_drops_or_gaps() {
    for ppm in [800.0, -800.0] {
        let rig = rig();
        let mut playback = DevicePlayback::open_on(
            Arc::clone(&rig.host),
            DeviceSelector::Name("Headset".into()),
            FRAME,
        )
        .expect("playback");
        let source: Vec<i16> = tone(48_000, 200.0, 0.5, 0, (DRIFT_FRAMES + 2) * FRAME, 1)
            .into_iter()
            .map(|s| (s * 32_767.0).round() as i16)
            .collect();
        // As on a real device: nothing queued before the first frame, and the device takes
        // what it is due right after each write (its ring runs down to empty every period).
        let mut clock = DeviceClock::new(ppm);
        let mut played = Vec::with_capacity(DRIFT_FRAMES * FRAME);
        let mut settled_underruns = None;
        let settle = 1_500; // 30 s
        for (n, frame) in source.chunks_exact(FRAME).take(DRIFT_FRAMES).enumerate() {
            if n == settle {
                settled_underruns = Some(playback.stats().underruns);
            }
            playback.write_frame(frame).expect("write");
            let out = rig.headset.pull_f32(clock.next()).expect("stream open");
            if n >= settle {
                played.extend(out.iter().map(|&s| (s * 32_767.0).round() as i16));
            }
        }
        let stats = playback.stats();
        // A fast device starves the ring at first (nothing is ever queued ahead of it); the
        // tracker learns from those underruns and keeps a cushion, so once settled none occur.
        assert_eq!(
            Some(stats.underruns),
            settled_underruns,
            "{ppm} ppm: underruns after settling: {stats:?}"
        );
        assert_eq!(stats.overruns, 0, "{ppm} ppm: {stats:?}");
        assert!(stats.drift_corrections > 0, "{ppm} ppm: {stats:?}");
        assert!(
            largest_step(&played) < 600,
            "{ppm} ppm: step {}",
            largest_step(&played)
        );
    }
}

//! Sound devices through cpal: a capture [`AudioSource`] and a playback [`AudioSink`] that
//! speak 48 kHz mono frames whatever the device's own rate, channel count and sample format.
//!
//! The device callback only moves samples between the device buffer and a lock-free ring
//! ([`crate::ring`]) and bumps atomic counters: no lock, no allocation, no logging. Resampling
//! and channel mixing ([`crate::resample`]) happen on the media thread that calls
//! [`DeviceCapture::read_frame`](AudioSource::read_frame) or
//! [`DevicePlayback::write_frame`](AudioSink::write_frame).
//!
//! A lost device does not end the call. cpal's callbacks only count (data callbacks, xruns,
//! other errors) and flag a device the host says is gone; [`crate::recovery`] decides from
//! those counters when the stream is lost (an xrun or a burst of errors while audio flows is
//! not), and the stream is then reopened on a helper thread (the same device by name, else the
//! default one) and swapped in: [`DeviceCapture::poll_event`] reports
//! [`DeviceEvent::Recovered`]. Meanwhile capture yields silence and playback discards frames;
//! only when reopening keeps failing is [`DeviceEvent::Lost`] reported (reopening goes on).
//! [`DeviceCapture::switch_device`] swaps another device in behind the same object.
//! The watch runs whenever a frame is read or written and at each `poll_event`.
//!
//! Everything takes the cpal host explicitly (`*_on` functions), so tests and applications can
//! use cpal's custom host; the plain functions use the platform's host.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use crate::audio::{AudioIoError, AudioSink, AudioSource, SAMPLE_RATE, SourceStatus};
use crate::drift::{DriftTracker, stretch_frames};
use crate::recovery::{RecoveryPolicy, StreamCounters, StreamWatch, Verdict};
use crate::resample::{CaptureConverter, PlaybackConverter, ResampleError};
use crate::ring::{RingError, RingMonitor, SampleReader, SampleWriter, sample_ring};

/// How much device audio a ring holds at most, in milliseconds.
const RING_MILLISECONDS: usize = 200;

/// Frames of captured audio allowed to wait in the ring; beyond this the oldest is dropped
/// down to one frame of backlog, bounding the delay a stalled media thread leaves behind.
pub const CAPTURE_BACKLOG_FRAMES: usize = 4;

/// Errors from finding, opening or switching a sound device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No audio host (sound system) could be opened.
    #[error("no audio host available: {0}")]
    Host(String),
    /// The host could not list its devices.
    #[error("cannot list devices: {0}")]
    Enumerate(String),
    /// The host has no default device for this direction.
    #[error("no default {0} device")]
    NoDefault(&'static str),
    /// No device has the requested name.
    #[error("no {direction} device named {name:?}")]
    NotFound {
        /// "input" or "output".
        direction: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The device offers no configuration this module can drive.
    #[error("device {name:?} has no usable configuration: {reason}")]
    Config {
        /// Device name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The device refused to open or start a stream.
    #[error("device {name:?} refused the stream: {reason}")]
    Stream {
        /// Device name.
        name: String,
        /// The host's reason.
        reason: String,
    },
    /// The frame size or device format cannot be converted.
    #[error(transparent)]
    Resample(#[from] ResampleError),
    /// The ring could not be created.
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// One device as listed by [`list_input_devices`] or [`list_output_devices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human-readable name; [`DeviceSelector::Name`] accepts it.
    pub name: String,
    /// The host's stable identifier when it has one (an ALSA PCM name such as `default`);
    /// [`DeviceSelector::Name`] accepts it too.
    pub id: Option<String>,
    /// The device's preferred sample rate for this direction, in Hz.
    pub default_rate: u32,
    /// The device's preferred channel count for this direction.
    pub channels: u16,
    /// Whether this is the host's default device for this direction.
    pub is_default: bool,
}

/// Which device to open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeviceSelector {
    /// The host's default device for the direction.
    #[default]
    Default,
    /// The device with this name or identifier (see [`DeviceInfo`]).
    Name(String),
}

pub use crate::audio::DeviceEvent;

/// Counters of one capture or playback, summed over every device it has used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames (capture) or device callbacks (playback) that found too few samples.
    pub underruns: u64,
    /// Device callbacks (capture) or frames (playback) that found the ring full.
    pub overruns: u64,
    /// Device streams that were lost (and reopened, or being reopened).
    pub device_lost: u64,
    /// Device errors that were neither xruns nor a loss (a transient poll or I/O error).
    pub device_errors: u64,
    /// Lost streams that were reopened.
    pub device_recoveries: u64,
    /// Under- or overruns the device itself reported.
    pub device_xruns: u64,
    /// Times the capture dropped its oldest queued audio because more than
    /// [`CAPTURE_BACKLOG_FRAMES`] frames had piled up (after a stall of the media thread), so
    /// the call does not keep the extra delay.
    pub backlog_trims: u64,
    /// Frames resized by one device frame to follow the device's clock (see
    /// [`crate::drift`]).
    pub drift_corrections: u64,
}

impl DeviceStats {
    fn add(self, other: DeviceStats) -> DeviceStats {
        DeviceStats {
            underruns: self.underruns + other.underruns,
            overruns: self.overruns + other.overruns,
            device_lost: self.device_lost + other.device_lost,
            device_errors: self.device_errors + other.device_errors,
            device_recoveries: self.device_recoveries + other.device_recoveries,
            device_xruns: self.device_xruns + other.device_xruns,
            backlog_trims: self.backlog_trims + other.backlog_trims,
            drift_corrections: self.drift_corrections + other.drift_corrections,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// The platform's audio host (ALSA on Linux, CoreAudio, WASAPI, ...), without panicking when
/// none can be opened.
pub fn platform_host() -> Result<cpal::Host, DeviceError> {
    let mut last_error = String::from("no host compiled in");
    for id in cpal::available_hosts() {
        match cpal::host_from_id(id) {
            Ok(host) => return Ok(host),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(DeviceError::Host(last_error))
}

/// Capture devices of the platform host.
pub fn list_input_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    list_input_devices_on(&platform_host()?)
}

/// Playback devices of the platform host.
pub fn list_output_devices() -> Result<Vec<DeviceInfo>, DeviceError> {
    list_output_devices_on(&platform_host()?)
}

/// Capture devices of `host`: every device that offers an input configuration.
pub fn list_input_devices_on(host: &cpal::Host) -> Result<Vec<DeviceInfo>, DeviceError> {
    list_devices(host, Direction::Input)
}

/// Playback devices of `host`: every device that offers an output configuration.
pub fn list_output_devices_on(host: &cpal::Host) -> Result<Vec<DeviceInfo>, DeviceError> {
    list_devices(host, Direction::Output)
}

fn device_name(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| d.name().to_owned())
        .unwrap_or_else(|_| String::from("unnamed device"))
}

fn device_id(device: &cpal::Device) -> Option<String> {
    device.id().ok().map(|id| id.id().to_owned())
}

/// What makes two handles the same device: the id when the host has ids, else the name.
fn device_key(device: &cpal::Device) -> String {
    device_id(device).unwrap_or_else(|| device_name(device))
}

fn default_device(host: &cpal::Host, direction: Direction) -> Option<cpal::Device> {
    match direction {
        Direction::Input => host.default_input_device(),
        Direction::Output => host.default_output_device(),
    }
}

fn default_config(
    device: &cpal::Device,
    direction: Direction,
) -> Result<cpal::SupportedStreamConfig, cpal::Error> {
    match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
}

fn device_info(
    device: &cpal::Device,
    config: &cpal::SupportedStreamConfig,
    is_default: bool,
) -> DeviceInfo {
    DeviceInfo {
        name: device_name(device),
        id: device_id(device),
        default_rate: config.sample_rate(),
        channels: config.channels(),
        is_default,
    }
}

fn list_devices(host: &cpal::Host, direction: Direction) -> Result<Vec<DeviceInfo>, DeviceError> {
    let default = default_device(host, direction);
    let default_key = default.as_ref().map(device_key);
    let mut listed = Vec::new();
    let mut default_listed = false;
    // Asking each device for its default configuration is the one check every host answers
    // truthfully (ALSA's "default" PCM, for one, does not say which directions it has).
    for device in host
        .devices()
        .map_err(|e| DeviceError::Enumerate(e.to_string()))?
    {
        if let Ok(config) = default_config(&device, direction) {
            let is_default = default_key.as_deref() == Some(device_key(&device).as_str());
            default_listed |= is_default;
            listed.push(device_info(&device, &config, is_default));
        }
    }
    if !default_listed {
        if let Some(device) = default {
            if let Ok(config) = default_config(&device, direction) {
                listed.insert(0, device_info(&device, &config, true));
            }
        }
    }
    Ok(listed)
}

fn find_device(
    host: &cpal::Host,
    selector: &DeviceSelector,
    direction: Direction,
) -> Result<cpal::Device, DeviceError> {
    match selector {
        DeviceSelector::Default => {
            default_device(host, direction).ok_or(DeviceError::NoDefault(direction.label()))
        }
        DeviceSelector::Name(name) => {
            let not_found = || DeviceError::NotFound {
                direction: direction.label(),
                name: name.clone(),
            };
            let matches = |device: &cpal::Device| {
                device_name(device) == *name || device_id(device).as_deref() == Some(name)
            };
            if let Some(device) = default_device(host, direction).filter(|d| matches(d)) {
                return Ok(device);
            }
            host.devices()
                .map_err(|e| DeviceError::Enumerate(e.to_string()))?
                .find(|d| matches(d) && default_config(d, direction).is_ok())
                .ok_or_else(not_found)
        }
    }
}

fn is_convertible(format: SampleFormat) -> bool {
    matches!(
        format,
        SampleFormat::I8
            | SampleFormat::I16
            | SampleFormat::I32
            | SampleFormat::I64
            | SampleFormat::U8
            | SampleFormat::U16
            | SampleFormat::U32
            | SampleFormat::U64
            | SampleFormat::F32
            | SampleFormat::F64
    )
}

/// Picks the stream to open: the device's default channel count and a sample format the
/// callback converts, at 48 kHz when the device offers it (no resampling) or else its default
/// rate.
fn choose_config(
    device: &cpal::Device,
    direction: Direction,
) -> Result<(cpal::StreamConfig, SampleFormat), DeviceError> {
    let name = device_name(device);
    let default = default_config(device, direction).map_err(|e| DeviceError::Config {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let ranges: Vec<cpal::SupportedStreamConfigRange> = match direction {
        Direction::Input => device.supported_input_configs().map(|c| c.collect()),
        Direction::Output => device.supported_output_configs().map(|c| c.collect()),
    }
    .unwrap_or_default();
    let channels = default.channels();
    let format = if is_convertible(default.sample_format()) {
        default.sample_format()
    } else {
        [SampleFormat::F32, SampleFormat::I16, SampleFormat::I32]
            .into_iter()
            .find(|&f| {
                ranges
                    .iter()
                    .any(|r| r.sample_format() == f && r.channels() == channels)
            })
            .ok_or_else(|| DeviceError::Config {
                name: name.clone(),
                reason: format!("sample format {} not supported", default.sample_format()),
            })?
    };
    let offers_48k = ranges.iter().any(|r| {
        r.sample_format() == format && r.channels() == channels && r.contains_rate(SAMPLE_RATE)
    });
    let rate = if offers_48k {
        SAMPLE_RATE
    } else {
        default.sample_rate()
    };
    let config = cpal::StreamConfig {
        channels,
        sample_rate: rate,
        buffer_size: cpal::BufferSize::Default,
    };
    Ok((config, format))
}

/// Counters and the flag the device callbacks raise for the media thread.
#[derive(Debug, Default)]
struct StreamFlags {
    gone: AtomicBool,
    callbacks: AtomicU64,
    errors: AtomicU64,
    xruns: AtomicU64,
}

impl StreamFlags {
    fn counters(&self) -> StreamCounters {
        StreamCounters {
            callbacks: self.callbacks.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            gone: self.gone.load(Ordering::Acquire),
        }
    }

    fn callback_ran(&self) {
        self.callbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// cpal's error callback: atomics only (it runs on the audio thread).
///
/// Only a device the host says is gone ends the stream: cpal's ALSA stream thread returns
/// after `DeviceNotAvailable` (POLLHUP, a disconnected PCM). Every other error is counted:
/// its thread carries on, and whether the stream still moves audio is for
/// [`StreamWatch`] to judge (the ALSA `pulse` plugin reports `snd_pcm_avail_delay` I/O
/// errors as a stream starts, then plays normally).
fn error_callback(flags: Arc<StreamFlags>) -> impl FnMut(cpal::Error) + Send + 'static {
    move |error: cpal::Error| match error.kind() {
        cpal::ErrorKind::Xrun => {
            flags.xruns.fetch_add(1, Ordering::Relaxed);
        }
        // The host rerouted the stream itself, or only refused a priority boost: audio flows.
        cpal::ErrorKind::DeviceChanged | cpal::ErrorKind::RealtimeDenied => {}
        cpal::ErrorKind::DeviceNotAvailable
        | cpal::ErrorKind::StreamInvalidated
        | cpal::ErrorKind::HostUnavailable => flags.gone.store(true, Ordering::Release),
        _ => {
            flags.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn push_as<T: SizedSample>(writer: &mut SampleWriter, data: &cpal::Data)
where
    f32: FromSample<T>,
{
    if let Some(samples) = data.as_slice::<T>() {
        writer.push_converted(samples, |s| s.to_sample::<f32>());
    }
}

/// Moves one captured device buffer into the ring (the input data callback's whole work).
fn push_input(writer: &mut SampleWriter, data: &cpal::Data) {
    match data.sample_format() {
        SampleFormat::I8 => push_as::<i8>(writer, data),
        SampleFormat::I16 => push_as::<i16>(writer, data),
        SampleFormat::I32 => push_as::<i32>(writer, data),
        SampleFormat::I64 => push_as::<i64>(writer, data),
        SampleFormat::U8 => push_as::<u8>(writer, data),
        SampleFormat::U16 => push_as::<u16>(writer, data),
        SampleFormat::U32 => push_as::<u32>(writer, data),
        SampleFormat::U64 => push_as::<u64>(writer, data),
        SampleFormat::F32 => push_as::<f32>(writer, data),
        SampleFormat::F64 => push_as::<f64>(writer, data),
        // Refused when the stream was opened.
        _ => {}
    }
}

fn pop_as<T: SizedSample + FromSample<f32>>(reader: &mut SampleReader, data: &mut cpal::Data) {
    if let Some(out) = data.as_slice_mut::<T>() {
        reader.pop_converted(out, T::EQUILIBRIUM, T::from_sample);
    }
}

/// Fills one device buffer from the ring, silence where it runs short (the output data
/// callback's whole work).
fn pop_output(reader: &mut SampleReader, data: &mut cpal::Data) {
    match data.sample_format() {
        SampleFormat::I8 => pop_as::<i8>(reader, data),
        SampleFormat::I16 => pop_as::<i16>(reader, data),
        SampleFormat::I32 => pop_as::<i32>(reader, data),
        SampleFormat::I64 => pop_as::<i64>(reader, data),
        SampleFormat::U8 => pop_as::<u8>(reader, data),
        SampleFormat::U16 => pop_as::<u16>(reader, data),
        SampleFormat::U32 => pop_as::<u32>(reader, data),
        SampleFormat::U64 => pop_as::<u64>(reader, data),
        SampleFormat::F32 => pop_as::<f32>(reader, data),
        SampleFormat::F64 => pop_as::<f64>(reader, data),
        _ => {}
    }
}

fn ring_capacity(config: &cpal::StreamConfig, frame_len: usize) -> usize {
    let per_second = config.sample_rate as usize * usize::from(config.channels);
    (per_second * RING_MILLISECONDS / 1000).max(frame_len * 4)
}

fn stream_error(name: &str) -> impl Fn(cpal::Error) -> DeviceError + '_ {
    move |e| DeviceError::Stream {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// What one open device stream needs on the media thread.
struct Endpoint<R, C> {
    // Dropping the stream stops the callback; it is kept only for that.
    _stream: cpal::Stream,
    ring: R,
    converter: C,
    monitor: RingMonitor,
    flags: Arc<StreamFlags>,
    name: String,
}

impl<R, C> Endpoint<R, C> {
    fn stats(&self) -> DeviceStats {
        let ring = self.monitor.stats();
        DeviceStats {
            underruns: ring.underruns,
            overruns: ring.overruns,
            device_lost: 0,
            device_errors: self.flags.errors.load(Ordering::Relaxed),
            device_recoveries: 0,
            device_xruns: self.flags.xruns.load(Ordering::Relaxed),
            backlog_trims: 0,
            drift_corrections: 0,
        }
    }
}

/// Event bookkeeping shared by capture and playback.
#[derive(Debug, Default)]
struct EventState {
    queued: std::collections::VecDeque<DeviceEvent>,
    retired: DeviceStats,
}

impl EventState {
    fn poll(&mut self) -> Option<DeviceEvent> {
        self.queued.pop_front()
    }

    fn retire(&mut self, old: DeviceStats, event: DeviceEvent) {
        self.retired = self.retired.add(old);
        self.queued.push_back(event);
    }
}

/// How a stream is opened: by capture or playback.
type OpenFn<E> = fn(&cpal::Host, &DeviceSelector, usize) -> Result<E, DeviceError>;

/// The driver of [`StreamWatch`] for one capture or playback: reopens a lost stream on a
/// helper thread and hands the new one back to the media thread, which never waits for it.
struct Reopener<E> {
    watch: StreamWatch,
    /// The device to reopen: the one in use, by name.
    selector: DeviceSelector,
    pending: Option<mpsc::Receiver<Result<E, DeviceError>>>,
    recoveries: u64,
}

/// What the media thread must do after [`Reopener::tend`].
enum Tended<E> {
    Nothing,
    /// Swap this new stream in.
    Swap(E),
    /// Report the device as lost.
    Lost,
}

impl<E: Send + 'static> Reopener<E> {
    fn new(name: &str) -> Self {
        Self {
            watch: StreamWatch::new(RecoveryPolicy::default()),
            selector: DeviceSelector::Name(name.to_owned()),
            pending: None,
            recoveries: 0,
        }
    }

    fn is_healthy(&self) -> bool {
        self.watch.is_healthy()
    }

    /// A new stream on `name` is in use (a switch): watch it, forget any reopening.
    fn switched(&mut self, name: &str) {
        // The helper thread's stream, if it still comes, is dropped there.
        self.pending = None;
        self.watch.reset();
        self.selector = DeviceSelector::Name(name.to_owned());
    }

    fn tend(
        &mut self,
        now: Instant,
        flags: &StreamFlags,
        host: &Arc<cpal::Host>,
        frame_samples: usize,
        open: OpenFn<E>,
    ) -> Tended<E> {
        if let Some(pending) = &self.pending {
            let outcome = match pending.try_recv() {
                Ok(outcome) => outcome,
                Err(mpsc::TryRecvError::Empty) => return Tended::Nothing,
                Err(mpsc::TryRecvError::Disconnected) => Err(DeviceError::Stream {
                    name: String::from("reopening"),
                    reason: String::from("the helper thread ended"),
                }),
            };
            self.pending = None;
            return match outcome {
                Ok(endpoint) => {
                    self.watch.reopened();
                    self.recoveries += 1;
                    Tended::Swap(endpoint)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reopening a lost sound device failed");
                    match self.watch.reopen_failed(now) {
                        Verdict::ReportLost => Tended::Lost,
                        _ => Tended::Nothing,
                    }
                }
            };
        }
        if self.watch.observe(now, flags.counters()) != Verdict::Reopen {
            return Tended::Nothing;
        }
        let (tx, rx) = mpsc::channel();
        let host = Arc::clone(host);
        let selector = self.selector.clone();
        let spawned = std::thread::Builder::new()
            .name("viska-reopen".into())
            .spawn(move || {
                let opened = open(&host, &selector, frame_samples).or_else(|e| {
                    if selector == DeviceSelector::Default {
                        Err(e)
                    } else {
                        open(&host, &DeviceSelector::Default, frame_samples)
                    }
                });
                let _ = tx.send(opened);
            });
        match spawned {
            Ok(_) => {
                self.pending = Some(rx);
                Tended::Nothing
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread to reopen a lost sound device");
                match self.watch.reopen_failed(now) {
                    Verdict::ReportLost => Tended::Lost,
                    _ => Tended::Nothing,
                }
            }
        }
    }
}

/// Drops a replaced stream off the media thread (closing a stream joins its thread).
fn drop_elsewhere<T: Send + 'static>(old: T) {
    if let Err(e) = std::thread::Builder::new()
        .name("viska-close".into())
        .spawn(move || drop(old))
    {
        tracing::warn!(error = %e, "no thread to close a sound device; leaking it");
    }
}

/// Following one device stream's clock: the [`DriftTracker`], the stream's underrun count it
/// last saw, and the buffer a frame is resized in. Shared by capture and playback.
#[derive(Debug)]
struct DriftFollower {
    tracker: DriftTracker,
    underruns_seen: u64,
    resized: Vec<f32>,
}

impl DriftFollower {
    /// For a stream at `device_rate` Hz whose frames (one device frame longer when corrected)
    /// hold at most `max_len` samples.
    fn new(device_rate: u32, max_len: usize) -> Self {
        Self {
            tracker: DriftTracker::new(device_rate),
            underruns_seen: 0,
            resized: vec![0.0; max_len],
        }
    }

    /// A new device stream: relearn its level (the count of corrections is kept).
    fn reset(&mut self, device_rate: u32, max_len: usize) {
        self.tracker.reset_for(device_rate);
        self.underruns_seen = 0;
        if self.resized.len() < max_len {
            self.resized.resize(max_len, 0.0);
        }
    }

    /// The correction for this frame (see [`DriftTracker::observe`]), given the ring's level
    /// and the stream's underrun count now.
    fn slip(&mut self, queued_frames: usize, capture: bool, underruns: u64) -> i8 {
        let starved = underruns > self.underruns_seen;
        self.underruns_seen = underruns;
        self.tracker.observe(queued_frames, capture, starved)
    }

    /// `input` resized to `len` samples of `channels` interleaved channels; `None` only if
    /// the lengths are not whole frames or exceed the buffer (not reached: sized at open).
    fn resize(&mut self, input: &[f32], len: usize, channels: usize) -> Option<&[f32]> {
        let out = self.resized.get_mut(..len)?;
        stretch_frames(input, out, channels).then_some(&*out)
    }

    fn corrections(&self) -> u64 {
        self.tracker.corrections()
    }
}

type CaptureEndpoint = Endpoint<SampleReader, CaptureConverter>;

/// Captured audio from a sound device as 48 kHz mono frames of a fixed size.
pub struct DeviceCapture {
    host: Arc<cpal::Host>,
    frame_samples: usize,
    backlog_trims: u64,
    endpoint: CaptureEndpoint,
    /// Device samples of one frame, with room for one extra device frame (drift).
    device_samples: Vec<f32>,
    drift: DriftFollower,
    events: EventState,
    reopener: Reopener<CaptureEndpoint>,
}

impl std::fmt::Debug for DeviceCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCapture")
            .field("device", &self.endpoint.name)
            .field("converter", &self.endpoint.converter)
            .finish_non_exhaustive()
    }
}

fn open_capture(
    host: &cpal::Host,
    selector: &DeviceSelector,
    frame_samples: usize,
) -> Result<CaptureEndpoint, DeviceError> {
    let device = find_device(host, selector, Direction::Input)?;
    let name = device_name(&device);
    let (config, format) = choose_config(&device, Direction::Input)?;
    let converter = CaptureConverter::new(config.sample_rate, config.channels, frame_samples)?;
    let (mut writer, reader) = sample_ring(ring_capacity(&config, converter.max_input_len()))?;
    let monitor = reader.monitor();
    let flags = Arc::new(StreamFlags::default());
    let stream = device
        .build_input_stream_raw(
            config,
            format,
            {
                let flags = Arc::clone(&flags);
                move |data: &cpal::Data, _: &cpal::InputCallbackInfo| {
                    flags.callback_ran();
                    push_input(&mut writer, data)
                }
            },
            error_callback(Arc::clone(&flags)),
            None,
        )
        .map_err(stream_error(&name))?;
    stream.play().map_err(stream_error(&name))?;
    Ok(Endpoint {
        _stream: stream,
        ring: reader,
        converter,
        monitor,
        flags,
        name,
    })
}

impl DeviceCapture {
    /// Opens a capture device of the platform host delivering frames of `frame_samples`
    /// 48 kHz mono samples (960 for 20 ms).
    pub fn open(selector: DeviceSelector, frame_samples: usize) -> Result<Self, DeviceError> {
        Self::open_on(Arc::new(platform_host()?), selector, frame_samples)
    }

    /// Opens a capture device of `host` (kept for [`DeviceCapture::switch_device`]).
    pub fn open_on(
        host: Arc<cpal::Host>,
        selector: DeviceSelector,
        frame_samples: usize,
    ) -> Result<Self, DeviceError> {
        let endpoint = open_capture(&host, &selector, frame_samples)?;
        let endpoint_name = endpoint.name.clone();
        let max = endpoint.converter.max_input_len();
        let channels = usize::from(endpoint.converter.channels());
        let drift = DriftFollower::new(endpoint.converter.device_rate(), max + channels);
        Ok(Self {
            host,
            frame_samples,
            backlog_trims: 0,
            endpoint,
            device_samples: vec![0.0; max + channels],
            drift,
            events: EventState::default(),
            reopener: Reopener::new(&endpoint_name),
        })
    }

    /// Opens another device and swaps it in; the object (and so the call using it) stays.
    /// On error the current device stays in use.
    pub fn switch_device(&mut self, selector: DeviceSelector) -> Result<(), DeviceError> {
        let endpoint = open_capture(&self.host, &selector, self.frame_samples)?;
        self.reopener.switched(&endpoint.name);
        let event = DeviceEvent::Switched {
            name: endpoint.name.clone(),
        };
        self.install(endpoint, event, false);
        Ok(())
    }

    /// Swaps `endpoint` in. The old stream is closed here (a switch: already off the media
    /// thread) or, when `elsewhere`, on a thread of its own (a recovery, on the media thread).
    fn install(&mut self, endpoint: CaptureEndpoint, event: DeviceEvent, elsewhere: bool) {
        let needed =
            endpoint.converter.max_input_len() + usize::from(endpoint.converter.channels());
        if self.device_samples.len() < needed {
            self.device_samples.resize(needed, 0.0);
        }
        self.drift.reset(endpoint.converter.device_rate(), needed);
        let old = std::mem::replace(&mut self.endpoint, endpoint);
        self.events.retire(old.stats(), event);
        if elsewhere {
            drop_elsewhere(old);
        }
    }

    /// Watches the stream (see [`crate::recovery`]): starts reopening a lost one, swaps a
    /// reopened one in. Never waits.
    fn tend(&mut self) {
        let tended = self.reopener.tend(
            Instant::now(),
            &self.endpoint.flags,
            &self.host,
            self.frame_samples,
            open_capture,
        );
        match tended {
            Tended::Nothing => {}
            Tended::Lost => self.events.queued.push_back(DeviceEvent::Lost),
            Tended::Swap(endpoint) => {
                tracing::info!(device = %endpoint.name, "lost capture device reopened");
                let event = DeviceEvent::Recovered {
                    name: endpoint.name.clone(),
                };
                self.install(endpoint, event, true);
            }
        }
    }

    /// The next device event not yet reported, if any. Also watches the stream, as reading a
    /// frame does: call it regularly (every frame) to have a lost device reopened.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.tend();
        self.events.poll()
    }

    /// Counters since opening, over every device used.
    pub fn stats(&self) -> DeviceStats {
        let mut stats = self.events.retired.add(self.endpoint.stats());
        stats.device_lost = self.reopener.watch.losses();
        stats.device_recoveries = self.reopener.recoveries;
        stats.backlog_trims = self.backlog_trims;
        stats.drift_corrections = self.drift.corrections();
        stats
    }

    /// Name of the device in use.
    pub fn device_name(&self) -> &str {
        &self.endpoint.name
    }

    /// Sample rate and channel count of the device stream in use.
    pub fn device_format(&self) -> (u32, u16) {
        (
            self.endpoint.converter.device_rate(),
            self.endpoint.converter.channels(),
        )
    }
}

impl AudioSource for DeviceCapture {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        if out.len() != self.frame_samples {
            return Err(AudioIoError::FrameSize {
                expected: self.frame_samples,
                got: out.len(),
            });
        }
        self.tend();
        let endpoint = &mut self.endpoint;
        if !self.reopener.is_healthy() {
            out.fill(0);
            return Ok(SourceStatus::Silence);
        }
        let needed = endpoint.converter.input_len();
        let frame_len = endpoint.converter.max_input_len();
        let channels = usize::from(endpoint.converter.channels()).max(1);
        let mut queued = endpoint.ring.queued_len();
        if queued > needed + CAPTURE_BACKLOG_FRAMES * frame_len {
            // Whole device frames only, so the channels stay aligned.
            let excess = (queued - needed - frame_len) / channels * channels;
            queued -= endpoint.ring.discard_oldest(excess);
            self.backlog_trims += 1;
        }
        // Follow the device's clock: read one device frame more (or fewer) while the ring
        // fills up (or drains) against the media clock, and resize back to `needed`.
        let underruns = endpoint.monitor.stats().underruns;
        let slip = self.drift.slip(queued / channels, true, underruns);
        let take = match slip {
            1 => needed + channels,
            -1 if needed > channels => needed - channels,
            _ => needed,
        };
        let Some(device_samples) = self.device_samples.get_mut(..take) else {
            return Err(AudioIoError::Device(format!(
                "converter needs {take} samples, buffer holds {}",
                self.device_samples.len()
            )));
        };
        if !endpoint.ring.pop_exact(device_samples) {
            out.fill(0);
            return Ok(SourceStatus::Silence);
        }
        let input: &[f32] = if take == needed {
            device_samples
        } else {
            self.drift
                .resize(device_samples, needed, channels)
                .unwrap_or_default()
        };
        endpoint
            .converter
            .convert(input, out)
            .map_err(|e| AudioIoError::Device(e.to_string()))?;
        Ok(SourceStatus::Audio)
    }

    fn device_event(&mut self) -> Option<DeviceEvent> {
        self.poll_event()
    }

    fn change_device(&mut self, device: Option<&str>) -> Result<(), AudioIoError> {
        self.switch_device(selector_for(device))
            .map_err(|e| AudioIoError::Device(e.to_string()))
    }
}

type PlaybackEndpoint = Endpoint<SampleWriter, PlaybackConverter>;

/// Plays 48 kHz mono frames of a fixed size on a sound device.
pub struct DevicePlayback {
    host: Arc<cpal::Host>,
    frame_samples: usize,
    endpoint: PlaybackEndpoint,
    events: EventState,
    drift: DriftFollower,
    reopener: Reopener<PlaybackEndpoint>,
}

impl std::fmt::Debug for DevicePlayback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePlayback")
            .field("device", &self.endpoint.name)
            .field("converter", &self.endpoint.converter)
            .finish_non_exhaustive()
    }
}

fn open_playback(
    host: &cpal::Host,
    selector: &DeviceSelector,
    frame_samples: usize,
) -> Result<PlaybackEndpoint, DeviceError> {
    let device = find_device(host, selector, Direction::Output)?;
    let name = device_name(&device);
    let (config, format) = choose_config(&device, Direction::Output)?;
    let converter = PlaybackConverter::new(config.sample_rate, config.channels, frame_samples)?;
    let (writer, mut reader) = sample_ring(ring_capacity(&config, converter.max_output_len()))?;
    let monitor = writer.monitor();
    let flags = Arc::new(StreamFlags::default());
    let stream = device
        .build_output_stream_raw(
            config,
            format,
            {
                let flags = Arc::clone(&flags);
                move |data: &mut cpal::Data, _: &cpal::OutputCallbackInfo| {
                    flags.callback_ran();
                    pop_output(&mut reader, data)
                }
            },
            error_callback(Arc::clone(&flags)),
            None,
        )
        .map_err(stream_error(&name))?;
    stream.play().map_err(stream_error(&name))?;
    Ok(Endpoint {
        _stream: stream,
        ring: writer,
        converter,
        monitor,
        flags,
        name,
    })
}

impl DevicePlayback {
    /// Opens a playback device of the platform host taking frames of `frame_samples`
    /// 48 kHz mono samples (960 for 20 ms).
    pub fn open(selector: DeviceSelector, frame_samples: usize) -> Result<Self, DeviceError> {
        Self::open_on(Arc::new(platform_host()?), selector, frame_samples)
    }

    /// Opens a playback device of `host` (kept for [`DevicePlayback::switch_device`]).
    pub fn open_on(
        host: Arc<cpal::Host>,
        selector: DeviceSelector,
        frame_samples: usize,
    ) -> Result<Self, DeviceError> {
        let endpoint = open_playback(&host, &selector, frame_samples)?;
        let reopener = Reopener::new(&endpoint.name);
        let max = endpoint.converter.max_output_len();
        let channels = usize::from(endpoint.converter.channels());
        let drift = DriftFollower::new(endpoint.converter.device_rate(), max + channels);
        Ok(Self {
            host,
            frame_samples,
            endpoint,
            events: EventState::default(),
            drift,
            reopener,
        })
    }

    /// Opens another device and swaps it in; the object (and so the call using it) stays.
    /// On error the current device stays in use.
    pub fn switch_device(&mut self, selector: DeviceSelector) -> Result<(), DeviceError> {
        let endpoint = open_playback(&self.host, &selector, self.frame_samples)?;
        self.reopener.switched(&endpoint.name);
        let event = DeviceEvent::Switched {
            name: endpoint.name.clone(),
        };
        self.install(endpoint, event, false);
        Ok(())
    }

    /// Swaps `endpoint` in. The old stream is closed here (a switch: already off the media
    /// thread) or, when `elsewhere`, on a thread of its own (a recovery, on the media thread).
    fn install(&mut self, endpoint: PlaybackEndpoint, event: DeviceEvent, elsewhere: bool) {
        let needed =
            endpoint.converter.max_output_len() + usize::from(endpoint.converter.channels());
        self.drift.reset(endpoint.converter.device_rate(), needed);
        let old = std::mem::replace(&mut self.endpoint, endpoint);
        self.events.retire(old.stats(), event);
        if elsewhere {
            drop_elsewhere(old);
        }
    }

    /// Watches the stream (see [`crate::recovery`]): starts reopening a lost one, swaps a
    /// reopened one in. Never waits.
    fn tend(&mut self) {
        let tended = self.reopener.tend(
            Instant::now(),
            &self.endpoint.flags,
            &self.host,
            self.frame_samples,
            open_playback,
        );
        match tended {
            Tended::Nothing => {}
            Tended::Lost => self.events.queued.push_back(DeviceEvent::Lost),
            Tended::Swap(endpoint) => {
                tracing::info!(device = %endpoint.name, "lost playback device reopened");
                let event = DeviceEvent::Recovered {
                    name: endpoint.name.clone(),
                };
                self.install(endpoint, event, true);
            }
        }
    }

    /// The next device event not yet reported, if any. Also watches the stream, as writing
    /// a frame does: call it regularly (every frame) to have a lost device reopened.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.tend();
        self.events.poll()
    }

    /// Counters since opening, over every device used.
    pub fn stats(&self) -> DeviceStats {
        let mut stats = self.events.retired.add(self.endpoint.stats());
        stats.device_lost = self.reopener.watch.losses();
        stats.device_recoveries = self.reopener.recoveries;
        stats.drift_corrections = self.drift.corrections();
        stats
    }

    /// Name of the device in use.
    pub fn device_name(&self) -> &str {
        &self.endpoint.name
    }

    /// Sample rate and channel count of the device stream in use.
    pub fn device_format(&self) -> (u32, u16) {
        (
            self.endpoint.converter.device_rate(),
            self.endpoint.converter.channels(),
        )
    }

    /// Device samples queued and not yet taken by the device.
    pub fn queued_samples(&self) -> usize {
        self.endpoint
            .ring
            .capacity()
            .saturating_sub(self.endpoint.ring.free_len())
    }
}

impl AudioSink for DevicePlayback {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        if pcm.len() != self.frame_samples {
            return Err(AudioIoError::FrameSize {
                expected: self.frame_samples,
                got: pcm.len(),
            });
        }
        self.tend();
        let endpoint = &mut self.endpoint;
        if !self.reopener.is_healthy() {
            return Ok(());
        }
        let channels = usize::from(endpoint.converter.channels()).max(1);
        let queued = endpoint
            .ring
            .capacity()
            .saturating_sub(endpoint.ring.free_len());
        // Follow the device's clock: write one device frame fewer (or more) while the ring
        // fills up (or drains) against the media clock.
        let underruns = endpoint.monitor.stats().underruns;
        let slip = self.drift.slip(queued / channels, false, underruns);
        let samples = endpoint
            .converter
            .convert(pcm)
            .map_err(|e| AudioIoError::Device(e.to_string()))?;
        let resized = match slip {
            1 => samples.len() + channels,
            -1 if samples.len() > channels => samples.len() - channels,
            _ => samples.len(),
        };
        let samples = if resized == samples.len() {
            samples
        } else {
            self.drift
                .resize(samples, resized, channels)
                .unwrap_or(samples)
        };
        // A full ring drops the frame and counts an overrun; the call goes on.
        endpoint.ring.push_all(samples);
        Ok(())
    }

    fn device_event(&mut self) -> Option<DeviceEvent> {
        self.poll_event()
    }

    fn change_device(&mut self, device: Option<&str>) -> Result<(), AudioIoError> {
        self.switch_device(selector_for(device))
            .map_err(|e| AudioIoError::Device(e.to_string()))
    }
}

/// The selector for an optional device name (`None`: the default device).
fn selector_for(device: Option<&str>) -> DeviceSelector {
    device.map_or(DeviceSelector::Default, |name| {
        DeviceSelector::Name(name.to_owned())
    })
}

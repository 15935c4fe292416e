//! The phone: runs calls on its own runtime and tells the application what happens.
//!
//! [`Phone`] owns a small tokio runtime whose threads are named after the phone. Every method
//! returns promptly; the work happens on that runtime and the application hears about it
//! through [`PhoneListener`] and [`CallListener`], called on the phone's runtime threads.
//! Listeners **must not block**: hand work to your own thread or queue.

mod audio;
mod driver;
mod media;
mod metrics;
mod places;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use viska_call::{CallEvent, CallState, CallStats, Command, SecurityEvent, Trust};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_media::audio::DeviceEvent;
use viska_media::codec::OpusConfig;
use viska_media::jitter::JitterConfig;
use viska_netem::ImpairmentConfig;
use viska_sframe::CipherSuite;

use crate::transport::{LocalCertificate, QuicEndpoint, TransportConfig, TransportError};

#[cfg(feature = "device")]
pub use self::audio::DeviceAudio;
pub use self::audio::{AudioFactory, DiscardSink, FileAudio, NullAudio, SilenceSource};
pub use media::{
    MARKED_AFTER_PAUSE, MAX_DATAGRAM, MediaCounters, MediaError, MediaSession, Played,
};
pub use metrics::{
    LatencyProbe, LatencySummary, current_thread_cpu_time, thread_cpu_time, thread_wakeups,
};
pub use places::RefusedConnections;

/// Errors of the phone API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The phone's runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// Transport failure (socket, TLS, QUIC).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The call is over; the command was not sent.
    #[error("the call has ended")]
    CallEnded,
    /// The phone already has [`PhoneConfig::max_calls`] calls.
    #[error("already {limit} calls, the most this phone takes")]
    TooManyCalls {
        /// The configured limit.
        limit: usize,
    },
    /// The phone is already listening (on this address).
    #[error("already listening on {0}")]
    AlreadyListening(SocketAddr),
    /// The command is not possible in the call's current state.
    #[error("{command} is not possible while the call is {state:?}")]
    InvalidState {
        /// The command.
        command: &'static str,
        /// The call's state when it was refused.
        state: CallState,
    },
}

/// Everything a phone is set up with.
pub struct PhoneConfig {
    /// A short name, used for thread names (`vk-<name>`) and logs.
    pub name: String,
    /// This device's long-term identity.
    pub identity: IdentityKeyPair,
    /// SFrame suites accepted, in order of preference (the first is offered for media).
    pub suites: Vec<CipherSuite>,
    /// Codec settings for calls this phone places (a callee adopts the caller's frame size and
    /// bitrate).
    pub opus: OpusConfig,
    /// Jitter buffer bounds.
    pub jitter: JitterConfig,
    /// QUIC timers and buffers.
    pub transport: TransportConfig,
    /// Impair this phone's outgoing packets (tests and demos without `tc netem`).
    pub impairment: Option<ImpairmentConfig>,
    /// Where call audio comes from and goes to.
    pub audio: Arc<dyn AudioFactory>,
    /// How long an incoming call may ring unanswered.
    pub ring_timeout: Duration,
    /// Optional latency probe shared with the peer phone (measurement only).
    pub latency_probe: Option<Arc<LatencyProbe>>,
    /// Record each call (both sides mixed) to this Ogg Opus file.
    pub recording: Option<std::path::PathBuf>,
    /// Calls this phone runs at once (placed, ringing or active). Another incoming call is
    /// refused as busy once its caller is authenticated (and reported through
    /// [`PhoneListener::missed_call`]); another outgoing one is refused with
    /// [`PhoneError::TooManyCalls`]. Connections whose caller is not authenticated yet do not
    /// count; [`max_handshakes`](Self::max_handshakes) bounds them.
    pub max_calls: usize,
    /// Incoming connections held at once before their caller is authenticated (QUIC
    /// handshake, signaling stream, end-to-end handshake); more are refused at once and
    /// counted ([`Phone::refused_connections`]). Each costs TLS and handshake work before
    /// anyone is known. Default 16.
    pub max_handshakes: usize,
    /// How many of those places one source may hold: an IPv4 address, or an IPv6 /64
    /// prefix (QUIC has validated the address first). Without it one source could hold every
    /// place for the setup timeout each and keep all other callers out. Default 4, which
    /// lets one address start calls many times a second (a handshake holds its place for a
    /// few round trips). Raise it when many callers share one address by design: behind a
    /// relay, or a contact centre's NAT.
    pub max_handshakes_per_source: usize,
    /// Identities the user verified in earlier sessions (compared the SAS), as the
    /// application saved them from [`Phone::verified_peers`]: a peer among them is
    /// [`Trust::Verified`] from the start of a call.
    pub verified_peers: Vec<PublicIdentity>,
}

impl std::fmt::Debug for PhoneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneConfig")
            .field("name", &self.name)
            .field("identity", &self.identity.public().fingerprint())
            .field("suites", &self.suites)
            .field("opus", &self.opus)
            .field("impairment", &self.impairment)
            .finish_non_exhaustive()
    }
}

impl PhoneConfig {
    /// Defaults for everything but the identity: ChaCha20-Poly1305 first, 20 ms Opus at
    /// 32 kbit/s with FEC, no audio.
    pub fn new(name: impl Into<String>, identity: IdentityKeyPair) -> Self {
        Self {
            name: name.into(),
            identity,
            suites: vec![
                CipherSuite::ChaCha20Poly1305Sha256,
                CipherSuite::Aes128GcmSha256,
            ],
            opus: OpusConfig::default(),
            jitter: JitterConfig::default(),
            transport: TransportConfig::default(),
            impairment: None,
            audio: Arc::new(NullAudio),
            ring_timeout: viska_call::DEFAULT_RING_TIMEOUT,
            latency_probe: None,
            recording: None,
            max_calls: 4,
            max_handshakes: 16,
            max_handshakes_per_source: 4,
            verified_peers: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), PhoneError> {
        if self.suites.is_empty() {
            return Err(PhoneError::InvalidConfig("no cipher suite".into()));
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_source == 0 {
            return Err(PhoneError::InvalidConfig(
                "max_handshakes and max_handshakes_per_source must be at least 1".into(),
            ));
        }
        if self.max_calls == 0 {
            return Err(PhoneError::InvalidConfig(
                "max_calls must be at least 1".into(),
            ));
        }
        if self.name.is_empty() || self.name.len() > 12 {
            return Err(PhoneError::InvalidConfig(
                "name must be 1 to 12 characters (it names threads)".into(),
            ));
        }
        self.opus
            .validate()
            .map_err(|e| PhoneError::InvalidConfig(e.to_string()))?;
        self.jitter
            .validate()
            .map_err(|e| PhoneError::InvalidConfig(e.to_string()))?;
        if let Some(imp) = &self.impairment {
            imp.validate()
                .map_err(|e| PhoneError::InvalidConfig(e.to_string()))?;
        }
        Ok(())
    }
}

/// A new device identity from the operating system's randomness.
pub fn generate_identity() -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut rand::rng())
}

/// Who is calling, as far as cryptography can tell.
#[derive(Clone, Debug)]
pub struct CallerInfo {
    /// The caller's authenticated identity.
    pub identity: PublicIdentity,
    /// Whether that identity is pinned, unknown, or different from the pinned one.
    pub trust: Trust,
    /// The network address the call came from.
    pub remote_addr: SocketAddr,
}

/// Phone-wide events. Called on the phone's runtime threads; must not block.
pub trait PhoneListener: Send + Sync {
    /// A new call is ringing. Answer or reject it through `call`.
    fn incoming_call(&self, call: CallHandle, caller: CallerInfo);
    /// A security event outside any call (e.g. a connection that failed the handshake).
    fn security_event(&self, _event: String) {}
    /// An authenticated incoming call was refused without ringing (a missed call for the
    /// agent's history): the phone was busy, or the call's audio could not start.
    fn missed_call(&self, _caller: CallerInfo, _why: MissedCall) {}
}

/// Why an incoming call was refused without ringing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissedCall {
    /// The phone already had [`PhoneConfig::max_calls`] calls; the caller was told busy.
    Busy,
    /// The call's audio could not start (no such device, unreadable file); the caller was
    /// told the call was refused with reason `Error`.
    AudioFailed {
        /// Why.
        error: String,
    },
}

/// Which way audio flows through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AudioDirection {
    /// The microphone (capture).
    Input,
    /// The speaker or headset (playback).
    Output,
}

/// What happened to a call's audio.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudioEvent {
    /// The device stopped working (unplugged, sound server gone). The call goes on: silence
    /// is sent (input) or what is heard is discarded (output) until another device is chosen
    /// with [`CallHandle::switch_input_device`] / [`CallHandle::switch_output_device`].
    DeviceLost {
        /// Which device.
        direction: AudioDirection,
    },
    /// A device switch completed; audio now flows through `name`.
    DeviceSwitched {
        /// Which device.
        direction: AudioDirection,
        /// The device now in use.
        name: String,
    },
    /// A device switch failed; the previous device stays in use.
    SwitchFailed {
        /// Which device.
        direction: AudioDirection,
        /// Why.
        error: String,
    },
    /// The call's audio could not start (no such device, unreadable file, codec settings):
    /// the call is ended (an outgoing call not yet answered is cancelled; the peer of an
    /// answered one is told reason `Error`). An incoming call that fails this way never
    /// rings: it is refused with reason `Error` and reported by
    /// [`PhoneListener::missed_call`].
    StartFailed {
        /// Why.
        error: String,
    },
}

/// Events of one call. Called on the phone's runtime threads; must not block.
pub trait CallListener: Send + Sync {
    /// The call changed state.
    fn state_changed(&self, _state: CallState) {}
    /// End-to-end keys are established: the SAS is available.
    fn keys_ready(&self, _sas: String) {}
    /// The peer sent a DTMF digit.
    fn dtmf(&self, _digit: char, _duration_ms: u16) {}
    /// The peer sent opaque call data.
    fn data(&self, _data: Vec<u8>) {}
    /// Something security-relevant happened (decryption failures, key change).
    fn security_event(&self, _event: SecurityEvent) {}
    /// Periodic statistics (about once a second during an active call).
    fn stats(&self, _stats: CallStats) {}
    /// A sound device of the call was lost or switched, or its audio failed to start.
    fn audio_event(&self, _event: AudioEvent) {}
    /// The trust in the peer's identity changed during the call (the user verified it).
    fn trust_changed(&self, _trust: Trust) {}
}

/// What the application can read about a call at any time. Its `Debug` output leaves the SAS
/// out (`***`): snapshots end up in logs.
#[derive(Clone)]
pub struct CallSnapshot {
    /// Current state.
    pub state: CallState,
    /// Short authentication string, once keys are ready.
    pub sas: Option<String>,
    /// The peer's identity, once authenticated.
    pub peer: Option<PublicIdentity>,
    /// The SFrame cipher suite the handshake chose for the call's media and control data,
    /// once keys are ready.
    pub suite: Option<CipherSuite>,
    /// How far the peer's identity is trusted, once authenticated; changes to
    /// [`Trust::Verified`] when the user verifies it ([`CallHandle::mark_verified`]).
    pub trust: Option<Trust>,
    /// Latest statistics.
    pub stats: CallStats,
    /// Media counters of this end.
    pub media: MediaCounters,
    /// Time from dialing to keys ready (caller) or first message to keys ready (callee).
    pub setup_time: Option<Duration>,
    /// What arrived on the signaling stream and was not acted on.
    pub signaling: SignalingCounters,
}

impl fmt::Debug for CallSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSnapshot")
            .field("state", &self.state)
            .field("sas", &self.sas.as_ref().map(|_| "***"))
            .field("peer", &self.peer)
            .field("suite", &self.suite)
            .field("trust", &self.trust)
            .field("stats", &self.stats)
            .field("media", &self.media)
            .field("setup_time", &self.setup_time)
            .field("signaling", &self.signaling)
            .finish()
    }
}

/// Signaling frames a call received and did not act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalingCounters {
    /// Frames whose body did not decode (dropped; the stream goes on).
    pub malformed: u64,
    /// Messages that decoded but were refused in the call's state (out of order, unexpected
    /// before authentication, a second Invite, ...).
    pub refused: u64,
    /// Frames of a message type this version does not know (skipped, as the protocol says).
    pub skipped_unknown: u64,
}

/// What the application's handle sends to the call's driver.
#[derive(Debug)]
enum DriverCommand {
    /// A call command for the state machine.
    Call(Command),
    /// Security testing: put bytes on the media path as they are.
    Inject(Injection),
    /// Move the call's capture or playback to another device (`None`: the default one).
    SwitchDevice {
        direction: AudioDirection,
        device: Option<String>,
    },
}

/// Datagrams a test can put on a call's media path to check the peer's defences.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injection {
    /// Send these bytes as a media datagram, unencrypted and unchanged.
    Raw(Vec<u8>),
    /// Send the last media datagram again (a replay).
    ReplayLast,
    /// Flip one ciphertext bit of the next media datagram before it leaves (tampering on the
    /// path: the receiver never sees the original).
    TamperNext,
    /// Write these bytes on the call's signaling stream as they are (a malformed or unknown
    /// frame from a buggy or hostile peer).
    RawSignal(Vec<u8>),
}

struct CallShared {
    commands: mpsc::UnboundedSender<DriverCommand>,
    snapshot: Mutex<CallSnapshot>,
    listener: Mutex<Option<Arc<dyn CallListener>>>,
    ended: tokio::sync::watch::Sender<bool>,
}

impl CallShared {
    fn snapshot(&self) -> std::sync::MutexGuard<'_, CallSnapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn listener(&self) -> Option<Arc<dyn CallListener>> {
        self.listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A call, placed or received. Cheap to clone; all clones control the same call.
#[derive(Clone)]
pub struct CallHandle {
    shared: Arc<CallShared>,
}

impl std::fmt::Debug for CallHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHandle")
            .field("state", &self.state())
            .finish()
    }
}

impl CallHandle {
    fn new() -> (Self, mpsc::UnboundedReceiver<DriverCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ended, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(CallShared {
            commands: tx,
            snapshot: Mutex::new(CallSnapshot {
                state: CallState::Idle,
                sas: None,
                peer: None,
                suite: None,
                trust: None,
                stats: CallStats::default(),
                media: MediaCounters::default(),
                setup_time: None,
                signaling: SignalingCounters::default(),
            }),
            listener: Mutex::new(None),
            ended,
        });
        (Self { shared }, rx)
    }

    /// Registers the listener for this call's events (replacing any previous one). What
    /// already happened is replayed to it at once: the current state and, if the keys are
    /// ready, the SAS, so a listener set after `Phone::call` or in `incoming_call` misses
    /// nothing.
    pub fn set_listener(&self, listener: Arc<dyn CallListener>) {
        *self
            .shared
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener.clone());
        let (state, sas) = {
            let snap = self.shared.snapshot();
            (snap.state, snap.sas.clone())
        };
        if let Some(sas) = sas {
            listener.keys_ready(sas);
        }
        if state != CallState::Idle {
            listener.state_changed(state);
        }
    }

    fn send(&self, command: Command, allowed: fn(&CallState) -> bool) -> Result<(), PhoneError> {
        let state = self.state();
        if state.is_ended() {
            return Err(PhoneError::CallEnded);
        }
        if !allowed(&state) {
            return Err(PhoneError::InvalidState {
                command: command.name(),
                state,
            });
        }
        self.shared
            .commands
            .send(DriverCommand::Call(command))
            .map_err(|_| PhoneError::CallEnded)
    }

    /// Security testing: puts a forged, replayed or tampered datagram on the media path, as a
    /// malicious relay or peer could. The receiving end must reject and count it; the call
    /// goes on. Not for production use.
    #[doc(hidden)]
    pub fn inject_datagram(&self, injection: Injection) -> Result<(), PhoneError> {
        self.shared
            .commands
            .send(DriverCommand::Inject(injection))
            .map_err(|_| PhoneError::CallEnded)
    }

    /// Answers a ringing incoming call.
    pub fn answer(&self) -> Result<(), PhoneError> {
        self.send(Command::Answer, |s| matches!(s, CallState::Ringing))
    }

    /// Declines a ringing incoming call.
    pub fn reject(&self) -> Result<(), PhoneError> {
        self.send(Command::Reject, |s| matches!(s, CallState::Ringing))
    }

    /// Ends the call (cancels it if not yet answered).
    pub fn hangup(&self) -> Result<(), PhoneError> {
        self.send(Command::Hangup, |_| true)
    }

    /// Puts the call on hold.
    pub fn hold(&self) -> Result<(), PhoneError> {
        self.send(Command::Hold, |s| matches!(s, CallState::Active { .. }))
    }

    /// Takes the call off hold.
    pub fn resume(&self) -> Result<(), PhoneError> {
        self.send(Command::Resume, |s| matches!(s, CallState::Active { .. }))
    }

    /// Mutes or unmutes the microphone (no audio is sent while muted).
    pub fn mute(&self, muted: bool) -> Result<(), PhoneError> {
        self.send(Command::Mute(muted), |s| {
            matches!(s, CallState::Active { .. })
        })
    }

    /// Sends DTMF digits (`0-9`, `*`, `#`, `A-D`), end-to-end encrypted, each a 100 ms key
    /// press.
    pub fn send_dtmf(&self, digits: &str) -> Result<(), PhoneError> {
        viska_proto::DtmfEvent::parse_digits(digits)
            .map_err(|e| PhoneError::InvalidConfig(e.to_string()))?;
        self.send(Command::SendDtmf(digits.to_owned()), |s| {
            matches!(s, CallState::Active { .. })
        })
    }

    /// Sends DTMF digits each held for `duration`: a long press, or the tone length a far-end
    /// IVR expects. `duration` must be 40 ms to 65.535 s (shorter tones are not reliably
    /// recognised by DTMF receivers; the wire carries milliseconds in 16 bits).
    pub fn send_dtmf_with_duration(
        &self,
        digits: &str,
        duration: Duration,
    ) -> Result<(), PhoneError> {
        viska_proto::DtmfEvent::parse_digits(digits)
            .map_err(|e| PhoneError::InvalidConfig(e.to_string()))?;
        let duration_ms = u16::try_from(duration.as_millis())
            .ok()
            .filter(|ms| *ms >= 40)
            .ok_or_else(|| {
                PhoneError::InvalidConfig(format!(
                    "DTMF duration {duration:?} is outside 40 ms..=65535 ms"
                ))
            })?;
        self.send(
            Command::SendDtmfTones {
                digits: digits.to_owned(),
                duration_ms,
            },
            |s| matches!(s, CallState::Active { .. }),
        )
    }

    /// Sends opaque call data (CTI payloads), end-to-end encrypted.
    pub fn send_data(&self, data: Vec<u8>) -> Result<(), PhoneError> {
        self.send(Command::SendData(data), |s| {
            matches!(s, CallState::Active { .. })
        })
    }

    /// Moves the call's capture to another input device (`None`: the default one) without
    /// interrupting the call. The outcome arrives as [`AudioEvent::DeviceSwitched`] or
    /// [`AudioEvent::SwitchFailed`]; calls whose audio is not a device refuse with
    /// `SwitchFailed`.
    pub fn switch_input_device(&self, device: Option<&str>) -> Result<(), PhoneError> {
        self.switch_device(AudioDirection::Input, device)
    }

    /// Moves the call's playback to another output device (`None`: the default one); see
    /// [`switch_input_device`](Self::switch_input_device).
    pub fn switch_output_device(&self, device: Option<&str>) -> Result<(), PhoneError> {
        self.switch_device(AudioDirection::Output, device)
    }

    fn switch_device(
        &self,
        direction: AudioDirection,
        device: Option<&str>,
    ) -> Result<(), PhoneError> {
        if self.state().is_ended() {
            return Err(PhoneError::CallEnded);
        }
        self.shared
            .commands
            .send(DriverCommand::SwitchDevice {
                direction,
                device: device.map(str::to_owned),
            })
            .map_err(|_| PhoneError::CallEnded)
    }

    /// The call's state now.
    pub fn state(&self) -> CallState {
        self.shared.snapshot().state
    }

    /// Everything readable about the call now.
    pub fn snapshot(&self) -> CallSnapshot {
        self.shared.snapshot().clone()
    }

    /// The short authentication string to compare with the peer, once keys are ready.
    pub fn sas(&self) -> Option<String> {
        self.shared.snapshot().sas.clone()
    }

    /// The user compared the SAS with the peer (read aloud) and it matched: the peer's
    /// identity is trusted as verified in this call ([`CallSnapshot::trust`],
    /// [`CallListener::trust_changed`]) and in every later call with it on this phone (see
    /// [`Phone::verified_peers`]). Only once keys are ready ([`CallHandle::sas`] is set);
    /// also after a key change, which the user has then checked.
    pub fn mark_verified(&self) -> Result<(), PhoneError> {
        let (state, keys_ready) = {
            let snap = self.shared.snapshot();
            (snap.state, snap.sas.is_some())
        };
        if !keys_ready && !state.is_ended() {
            return Err(PhoneError::InvalidState {
                command: Command::MarkVerified.name(),
                state,
            });
        }
        self.send(Command::MarkVerified, |_| true)
    }

    /// The latest statistics.
    pub fn stats(&self) -> CallStats {
        self.shared.snapshot().stats.clone()
    }

    /// Waits (blocking the current thread, so never on a phone's runtime) until the call's
    /// state satisfies `pred` or `timeout` passes; returns the state reached.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&CallState) -> bool) -> CallState {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let state = self.state();
            if pred(&state) || std::time::Instant::now() >= deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the call has ended and its teardown is complete (final statistics published,
    /// audio files finished, connection closed).
    pub fn is_ended(&self) -> bool {
        *self.shared.ended.borrow()
    }

    /// Waits (blocking the current thread, so never on a phone's runtime) until
    /// [`is_ended`](Self::is_ended) or `timeout` passes; returns whether the call ended.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.is_ended() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

struct PhoneInner {
    config: PhoneConfig,
    cert: Arc<LocalCertificate>,
    listener: Mutex<Option<Arc<dyn PhoneListener>>>,
    /// Every call not yet torn down, to count them and to end them when the phone stops.
    calls: Mutex<Vec<Weak<CallShared>>>,
    /// Places for incoming connections whose caller is not authenticated yet.
    places: Arc<places::Places>,
    /// Identities the user has verified: the configured ones and those marked since.
    verified: Mutex<Vec<PublicIdentity>>,
}

impl PhoneInner {
    fn calls(&self) -> std::sync::MutexGuard<'_, Vec<Weak<CallShared>>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a call to the registry if the phone takes another one; returns whether it did.
    /// Calls whose teardown is complete leave the registry here.
    fn admit(&self, call: &Arc<CallShared>) -> bool {
        let mut calls = self.calls();
        calls.retain(|c| c.upgrade().is_some_and(|c| !*c.ended.borrow()));
        if calls.len() >= self.config.max_calls {
            return false;
        }
        calls.push(Arc::downgrade(call));
        true
    }

    /// The calls not yet torn down.
    fn live_calls(&self) -> Vec<Arc<CallShared>> {
        self.calls()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !*c.ended.borrow())
            .collect()
    }
}

/// The phone's own runtime: a single-threaded tokio runtime driven by one dedicated thread
/// (`vk-<name>`). One thread is plenty for a phone's handful of calls and costs less per
/// packet and per timer than a work-stealing pool.
struct PhoneRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PhoneRuntime {
    fn start(name: &str) -> Result<Self, PhoneError> {
        // Blocking helpers (opening a sound device) carry the phone's name too, so the
        // phone's CPU time counts them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("vk-{name}"))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("vk-{name}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(500));
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The runtime thread never panics on its own; a listener that panicked is logged.
            if thread.join().is_err() {
                tracing::error!("phone runtime thread panicked");
            }
        }
    }
}

/// A softphone: places and receives end-to-end encrypted calls.
pub struct Phone {
    runtime: PhoneRuntime,
    inner: Arc<PhoneInner>,
    /// The endpoint `listen` bound; calls are placed from it too, so peers see one address.
    listening: Mutex<Option<QuicEndpoint>>,
    /// The endpoints calls are placed from while the phone does not listen, by the address
    /// they are bound to (one per address family, and one on loopback for loopback peers).
    client: Mutex<Vec<(SocketAddr, QuicEndpoint)>>,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone")
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

impl Phone {
    /// Starts a phone (its runtime and TLS certificate). Does not open any socket yet.
    pub fn new(config: PhoneConfig) -> Result<Self, PhoneError> {
        config.validate()?;
        let runtime = PhoneRuntime::start(&config.name)?;
        let cert = Arc::new(LocalCertificate::generate()?);
        Ok(Self {
            runtime,
            inner: Arc::new(PhoneInner {
                cert,
                listener: Mutex::new(None),
                calls: Mutex::new(Vec::new()),
                places: places::Places::new(
                    config.max_handshakes,
                    config.max_handshakes_per_source,
                ),
                verified: Mutex::new(config.verified_peers.clone()),
                config,
            }),
            listening: Mutex::new(None),
            client: Mutex::new(Vec::new()),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime.handle
    }

    /// The phone's identity.
    pub fn identity(&self) -> PublicIdentity {
        self.inner.config.identity.public()
    }

    /// Registers the phone-wide listener.
    pub fn set_listener(&self, listener: Arc<dyn PhoneListener>) {
        *self
            .inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(listener);
    }

    fn bind(&self, addr: SocketAddr) -> Result<QuicEndpoint, PhoneError> {
        let _guard = self.runtime().enter();
        let config = &self.inner.config;
        Ok(match &config.impairment {
            Some(imp) => {
                let socket =
                    viska_netem::bind_impaired(addr, imp.clone()).map_err(TransportError::Io)?;
                QuicEndpoint::with_socket(socket, self.inner.cert.clone(), &config.transport)?
            }
            None => QuicEndpoint::bind(addr, self.inner.cert.clone(), &config.transport)?,
        })
    }

    /// Listens for incoming calls on `addr` (port 0 picks one); returns the bound address.
    /// A phone listens on one address; calling `listen` again is refused.
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, PhoneError> {
        let mut slot = lock(&self.listening);
        if let Some(ep) = slot.as_ref() {
            return Err(PhoneError::AlreadyListening(ep.local_addr()?));
        }
        let ep = self.bind(addr)?;
        let local = ep.local_addr()?;
        let inner = self.inner.clone();
        self.runtime().spawn(driver::accept_loop(inner, ep.clone()));
        *slot = Some(ep);
        Ok(local)
    }

    /// Places a call to a listening phone at `addr`. Returns at once; follow the call through
    /// its [`CallHandle`] and [`CallListener`]. A listening phone calls from its listening
    /// address; otherwise from an ephemeral port (on loopback for a loopback peer).
    pub fn call(&self, addr: SocketAddr) -> Result<CallHandle, PhoneError> {
        self.dial(addr, None)
    }

    /// Places a call to a contact whose identity the application knows (pinned earlier, or
    /// from its directory): the call is [`Trust::Verified`] if the peer at `addr` proves that
    /// identity, and [`Trust::KeyChanged`] (with a [`SecurityEvent::KeyChanged`] to the call's
    /// listener) if it proves another. The call is not refused: the application decides.
    pub fn call_expecting(
        &self,
        addr: SocketAddr,
        expected: PublicIdentity,
    ) -> Result<CallHandle, PhoneError> {
        self.dial(addr, Some(expected))
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<PublicIdentity>,
    ) -> Result<CallHandle, PhoneError> {
        let ep = match lock(&self.listening).as_ref() {
            Some(ep) => ep.clone(),
            None => {
                let ip = match addr {
                    a if a.ip().is_loopback() => a.ip(),
                    SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                };
                let bind = SocketAddr::new(ip, 0);
                let mut client = lock(&self.client);
                match client.iter().find(|(b, _)| *b == bind) {
                    Some((_, ep)) => ep.clone(),
                    None => {
                        let ep = self.bind(bind)?;
                        client.push((bind, ep.clone()));
                        ep
                    }
                }
            }
        };
        let (handle, commands) = CallHandle::new();
        if !self.inner.admit(&handle.shared) {
            return Err(PhoneError::TooManyCalls {
                limit: self.inner.config.max_calls,
            });
        }
        let inner = self.inner.clone();
        let shared = handle.shared.clone();
        self.runtime().spawn(driver::place_call(
            inner, ep, addr, shared, commands, expected,
        ));
        Ok(handle)
    }

    /// The calls this phone runs now (placed, ringing or active; not yet torn down).
    pub fn calls(&self) -> Vec<CallHandle> {
        self.inner
            .live_calls()
            .into_iter()
            .map(|shared| CallHandle { shared })
            .collect()
    }

    /// The identities the user has verified: those of [`PhoneConfig::verified_peers`] and
    /// those marked with [`CallHandle::mark_verified`] since, for the application to keep
    /// (they are not stored by the phone).
    pub fn verified_peers(&self) -> Vec<PublicIdentity> {
        lock(&self.inner.verified).clone()
    }

    /// Incoming connections refused before their caller was authenticated, because every
    /// place for such connections was taken or their source held its share (see
    /// [`PhoneConfig::max_handshakes_per_source`]). Growing counts mean a flood, or a limit
    /// set too low for a relay or NAT in front of the callers.
    pub fn refused_connections(&self) -> RefusedConnections {
        self.inner.places.refused()
    }

    /// Total CPU time used by this phone's runtime threads so far (Linux), for measurements.
    pub fn cpu_time(&self) -> Option<Duration> {
        thread_cpu_time(&format!("vk-{}", self.inner.config.name))
    }

    /// How many times this phone's runtime threads have been woken so far (Linux), for
    /// measurements: every wake-up costs CPU beyond the work it does.
    pub fn wakeups(&self) -> Option<u64> {
        thread_wakeups(&format!("vk-{}", self.inner.config.name))
    }

    /// Hangs up every call (each peer is told, each listener hears the end, audio files
    /// are finished), then closes the phone's endpoints and stops its runtime. Dropping the
    /// phone does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Testing: stops the phone as a crash would, without hanging up or closing anything;
    /// peers find out only when their connection times out. Not for production use.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.runtime.stop();
    }

    fn stop(&mut self) {
        if !self.runtime.is_running() {
            return;
        }
        let calls = self.inner.live_calls();
        for call in &calls {
            let _ = call.commands.send(DriverCommand::Call(Command::Hangup));
        }
        // Bounded: a call stuck mid-handshake is cut off by closing the endpoint below.
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        for call in calls {
            let handle = CallHandle { shared: call };
            handle.wait_ended(deadline.saturating_duration_since(std::time::Instant::now()));
        }
        if let Some(ep) = lock(&self.listening).take() {
            ep.close();
        }
        for (_, ep) in lock(&self.client).drain(..) {
            ep.close();
        }
        self.runtime.stop();
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long stopping a phone waits for its calls to hang up cleanly: longer than a call's own
/// bounded teardown (a device switch under way, the last signaling acknowledged, files
/// finished).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tells the call's listener about its audio.
fn dispatch_audio(shared: &CallShared, event: AudioEvent) {
    if let Some(listener) = shared.listener() {
        listener.audio_event(event);
    }
}

impl AudioEvent {
    fn from_device(direction: AudioDirection, event: DeviceEvent) -> Option<Self> {
        match event {
            DeviceEvent::Lost => Some(Self::DeviceLost { direction }),
            DeviceEvent::Switched { name } => Some(Self::DeviceSwitched { direction, name }),
            _ => None,
        }
    }
}

/// Events the driver turns into listener calls, kept in one place.
fn dispatch_event(shared: &CallShared, event: &CallEvent) {
    let Some(listener) = shared.listener() else {
        return;
    };
    match event {
        CallEvent::StateChanged(state) => listener.state_changed(*state),
        CallEvent::KeysReady { sas, .. } => listener.keys_ready(sas.to_string()),
        CallEvent::Dtmf { event, duration_ms } => listener.dtmf(event.to_char(), *duration_ms),
        CallEvent::Data(data) => listener.data(data.clone()),
        CallEvent::Security(ev) => listener.security_event(ev.clone()),
        CallEvent::TrustChanged(trust) => listener.trust_changed(*trust),
        _ => {}
    }
}

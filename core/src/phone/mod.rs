//! The phone: runs calls on its own runtime and tells the application what happens.
//!
//! [`Phone`] owns one thread that carries every call's sockets, timers and media
//! (`vk-<name>`), and one that calls the application's listeners (`vk-<name>-ev`). Every method
//! returns promptly. Events reach [`PhoneListener::on_event`] and [`CallListener::on_event`]
//! on the listener thread, in order, outside every lock of the library: a listener may take its
//! time (it delays only later events, never audio) and may call back into the phone, but
//! should hand long work to a thread of its own. A listener that panics is caught and logged.
//!
//! Each call is a [`viska_session::Session`] (the call's signaling, keys and media, without
//! IO) driven by a loop of about two hundred lines in `driver.rs`: sockets, timers and audio
//! end points, no policy.

mod admission;
mod audio;
mod driver;
mod events;
mod handshakes;
mod history;
mod metrics;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use viska_call::{CallState, CallStats, Command, SecurityEvent, Trust};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_e2ee::keys::ParticipantId;
use viska_media::codec::OpusConfig;
use viska_media::jitter::JitterConfig;
use viska_proto::{CallId, DtmfEvent, FrameDuration, ProtoError};
use viska_session::{MediaCounters, SignalingCounters};
use viska_sframe::CipherSuite;

use crate::transport::{
    LocalCertificate, QuicEndpoint, TransportConfig, TransportError, WireCounters,
};
use events::{EventQueue, Item};

#[cfg(feature = "device")]
pub use self::audio::DeviceAudio;
pub use self::audio::{
    AppAudio, AppAudioConfig, AppCapture, AppPlayback, AudioDevice, AudioFactory, DiscardSink,
    FileAudio, NullAudio, SilenceSource,
};
pub use handshakes::RefusedConnections;
pub use metrics::{
    LatencyProbe, LatencySummary, current_thread_cpu_time, thread_cpu_time, thread_wakeups,
};

/// A setting [`PhoneConfigBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No cipher suite, or one listed twice.
    #[error("cipher suites: {0}")]
    Suites(&'static str),
    /// The phone's name must be 1 to 12 characters (it names threads).
    #[error("name must be 1 to 12 characters (it names threads), got {0:?}")]
    Name(String),
    /// A limit that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// A frame duration a version-1 phone does not play (it sends and plays 10 and 20 ms).
    #[error("{} ms frames: a version-1 phone sends and plays 10 and 20 ms frames", .0.millis())]
    FrameDuration(FrameDuration),
    /// The codec settings.
    #[error("codec: {0}")]
    Codec(#[from] viska_media::codec::CodecError),
    /// The jitter buffer settings.
    #[error("jitter buffer: {0}")]
    Jitter(#[from] viska_media::jitter::JitterError),
    /// The impairment settings (testing).
    #[error("impairment: {0}")]
    Impairment(#[from] viska_netem::ConfigError),
}

/// Errors of the phone API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhoneError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The phone's threads could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// Transport failure (socket, TLS, QUIC).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The phone is closed; it takes no more calls or commands.
    #[error("the phone is closed")]
    Closed,
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
    /// A DTMF digit string or duration the protocol cannot carry.
    #[error("DTMF: {0}")]
    InvalidDtmf(ProtoError),
    /// A DTMF duration outside 40 ms..=65.535 s.
    #[error("DTMF duration {0:?} is outside 40 ms..=65535 ms")]
    DtmfDuration(Duration),
    /// The sound devices could not be listed.
    #[error("audio devices: {0}")]
    Devices(String),
    /// The call's session refused its configuration.
    #[error(transparent)]
    Session(#[from] viska_session::SessionError),
}

/// Everything a phone is set up with; build one with [`PhoneConfig::builder`].
pub struct PhoneConfig {
    name: String,
    identity: IdentityKeyPair,
    suites: Vec<CipherSuite>,
    opus: OpusConfig,
    jitter: JitterConfig,
    transport: TransportConfig,
    audio: Arc<dyn AudioFactory>,
    ring_timeout: Duration,
    recording: Option<std::path::PathBuf>,
    max_calls: usize,
    max_handshakes: usize,
    max_handshakes_per_source: usize,
    handshake_rate: viska_admission::RateConfig,
    max_ringing_per_source: usize,
    tls_deadline: Duration,
    verified_peers: Vec<PublicIdentity>,
    store: Option<viska_store::Store>,
    realtime: bool,
    #[cfg(feature = "testing")]
    testing: TestingConfig,
}

/// Test and measurement hooks (feature `testing`): impairment of outgoing packets and a
/// latency probe shared by two phones of one process.
#[cfg(feature = "testing")]
#[derive(Default)]
struct TestingConfig {
    impairment: Option<viska_netem::ImpairmentConfig>,
    latency_probe: Option<Arc<LatencyProbe>>,
}

impl fmt::Debug for PhoneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoneConfig")
            .field("name", &self.name)
            .field("identity", &self.identity.public().fingerprint())
            .field("suites", &self.suites)
            .field("opus", &self.opus)
            .field("max_calls", &self.max_calls)
            .finish_non_exhaustive()
    }
}

impl PhoneConfig {
    /// A builder with the defaults: ChaCha20-Poly1305 first, 20 ms Opus at 32 kbit/s with
    /// FEC, no audio, 4 calls, 16 connections waiting for authentication (4 per source), 2
    /// unverified ringing calls per source, a 3 s TLS deadline, raised thread priority.
    pub fn builder(name: impl Into<String>, identity: IdentityKeyPair) -> PhoneConfigBuilder {
        PhoneConfigBuilder {
            config: Self {
                name: name.into(),
                identity,
                suites: CipherSuite::ALL.to_vec(),
                opus: OpusConfig::default(),
                jitter: JitterConfig::default(),
                transport: TransportConfig::default(),
                audio: Arc::new(NullAudio),
                ring_timeout: viska_call::DEFAULT_RING_TIMEOUT,
                recording: None,
                max_calls: 4,
                max_handshakes: 16,
                max_handshakes_per_source: 4,
                handshake_rate: viska_admission::RateConfig::default(),
                max_ringing_per_source: 2,
                tls_deadline: Duration::from_secs(3),
                verified_peers: Vec::new(),
                store: None,
                realtime: true,
                #[cfg(feature = "testing")]
                testing: TestingConfig::default(),
            },
        }
    }

    /// The phone's name (thread names `vk-<name>`, logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Codec settings of calls this phone places.
    pub fn opus(&self) -> &OpusConfig {
        &self.opus
    }

    /// Calls this phone runs at once.
    pub fn max_calls(&self) -> usize {
        self.max_calls
    }
}

/// Builds a [`PhoneConfig`]; [`build`](Self::build) refuses settings that cannot work.
pub struct PhoneConfigBuilder {
    config: PhoneConfig,
}

impl fmt::Debug for PhoneConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl PhoneConfigBuilder {
    /// SFrame suites accepted, in order of preference (the first is offered for media).
    pub fn suites(mut self, suites: Vec<CipherSuite>) -> Self {
        self.config.suites = suites;
        self
    }

    /// Codec settings for calls this phone places (a callee adopts the caller's frame size
    /// and bitrate).
    pub fn opus(mut self, opus: OpusConfig) -> Self {
        self.config.opus = opus;
        self
    }

    /// Discontinuous transmission while the local talker is silent (on by default): a
    /// comfort-noise update every 420 ms instead of a packet every frame. Off, every frame
    /// is sent. Same as setting [`OpusConfig::dtx`].
    pub fn dtx(mut self, on: bool) -> Self {
        self.config.opus.dtx = on;
        self
    }

    /// Jitter buffer bounds.
    pub fn jitter(mut self, jitter: JitterConfig) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// QUIC timers and buffers.
    pub fn transport(mut self, transport: TransportConfig) -> Self {
        self.config.transport = transport;
        self
    }

    /// Where call audio comes from and goes to (default: none).
    pub fn audio(mut self, audio: Arc<dyn AudioFactory>) -> Self {
        self.config.audio = audio;
        self
    }

    /// How long an incoming call may ring unanswered.
    pub fn ring_timeout(mut self, timeout: Duration) -> Self {
        self.config.ring_timeout = timeout;
        self
    }

    /// Record each call (both sides mixed) to this Ogg Opus file.
    pub fn recording(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.recording = Some(path.into());
        self
    }

    /// Calls this phone runs at once (placed, ringing or active). Another incoming call is
    /// refused as busy once its caller is authenticated, unless it is a verified caller and a
    /// call of an unverified one still rings (see [`Phone`]'s admission rules); another
    /// outgoing one is refused with [`PhoneError::TooManyCalls`].
    pub fn max_calls(mut self, n: usize) -> Self {
        self.config.max_calls = n;
        self
    }

    /// Incoming connections held at once before their caller is authenticated (QUIC and TLS
    /// handshake, the end-to-end handshake). When all are taken, a newcomer takes the oldest
    /// place of the source holding the most. Default 16.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.config.max_handshakes = n;
        self
    }

    /// How many of those places one source may hold: an IPv4 address or an IPv6 /64 (a /56
    /// twice as many, a /48 three times). Default 4. Raise it when many callers share one
    /// address by design: behind a relay, or a contact centre's NAT.
    pub fn max_handshakes_per_source(mut self, n: usize) -> Self {
        self.config.max_handshakes_per_source = n;
        self
    }

    /// How fast one source may start new incoming handshakes: `burst` at once, then
    /// `per_second`, for an IPv4 address or an IPv6 /64 (twice for its /56, three times for
    /// its /48). A connection beyond it is refused before TLS (counted in
    /// [`RefusedConnections::rate_limited`]). Default a burst of 8 and 4 a second.
    pub fn handshake_rate(mut self, burst: u32, per_second: u32) -> Self {
        self.config.handshake_rate.burst = burst;
        self.config.handshake_rate.per_second = per_second;
        self
    }

    /// Ringing calls at once from one source by callers that are not verified. Default 2.
    pub fn max_ringing_per_source(mut self, n: usize) -> Self {
        self.config.max_ringing_per_source = n;
        self
    }

    /// How long an incoming connection may take to complete its TLS handshake. Default 3 s.
    pub fn tls_deadline(mut self, deadline: Duration) -> Self {
        self.config.tls_deadline = deadline;
        self
    }

    /// Identities the user verified in earlier sessions (compared the SAS), as the application
    /// saved them from [`Phone::verified_peers`]: a peer among them is [`Trust::Verified`].
    pub fn verified_peers(mut self, peers: Vec<PublicIdentity>) -> Self {
        self.config.verified_peers = peers;
        self
    }

    /// The device's key store: it decides every call's [`Trust`] from its contacts (trust on
    /// first use per contact, verification, changed keys; see [`viska_store::Store::observe`]),
    /// records what the user verifies, and keeps the call history (metadata only). The
    /// phone's identity should be the store's ([`viska_store::Store::identity`]). With a
    /// store, [`PhoneConfigBuilder::verified_peers`] is not consulted.
    pub fn store(mut self, store: viska_store::Store) -> Self {
        self.config.store = Some(store);
        self
    }

    /// Ask for real-time (or raised) priority for the thread that carries media, where the
    /// system allows it (default on). Refusals are logged once and ignored.
    pub fn realtime(mut self, on: bool) -> Self {
        self.config.realtime = on;
        self
    }

    /// Testing: impairs this phone's outgoing packets (loss, delay, jitter).
    #[cfg(feature = "testing")]
    pub fn impairment(mut self, impairment: viska_netem::ImpairmentConfig) -> Self {
        self.config.testing.impairment = Some(impairment);
        self
    }

    /// Testing: a latency probe shared with the peer phone (measurement only).
    #[cfg(feature = "testing")]
    pub fn latency_probe(mut self, probe: Arc<LatencyProbe>) -> Self {
        self.config.testing.latency_probe = Some(probe);
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<PhoneConfig, ConfigError> {
        let c = &self.config;
        if c.suites.is_empty() {
            return Err(ConfigError::Suites("none"));
        }
        if c.suites
            .iter()
            .enumerate()
            .any(|(i, s)| c.suites[..i].contains(s))
        {
            return Err(ConfigError::Suites("a suite is listed twice"));
        }
        if c.name.is_empty() || c.name.chars().count() > 12 {
            return Err(ConfigError::Name(c.name.clone()));
        }
        for (value, name) in [
            (c.max_calls, "max_calls"),
            (c.max_handshakes, "max_handshakes"),
            (c.max_handshakes_per_source, "max_handshakes_per_source"),
            (c.max_ringing_per_source, "max_ringing_per_source"),
            (c.handshake_rate.burst as usize, "handshake_rate burst"),
            (
                c.handshake_rate.per_second as usize,
                "handshake_rate per_second",
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if c.ring_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("ring_timeout"));
        }
        if c.tls_deadline.is_zero() {
            return Err(ConfigError::ZeroDuration("tls_deadline"));
        }
        c.opus.validate()?;
        if !c.opus.frame.is_played() {
            return Err(ConfigError::FrameDuration(c.opus.frame));
        }
        c.jitter.validate()?;
        #[cfg(feature = "testing")]
        if let Some(imp) = &c.testing.impairment {
            imp.validate()?;
        }
        Ok(self.config)
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
    /// Whether that identity is verified, unknown, or different from the expected one.
    pub trust: Trust,
    /// The network address the call came from.
    pub remote_addr: SocketAddr,
}

/// Why an incoming call was refused without ringing, or stopped ringing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissedCall {
    /// The phone had no room (its calls, or this source's or identity's ringing calls); the
    /// caller was told busy.
    Busy,
    /// The call rang, and was refused as busy to make room for a verified caller.
    DisplacedByVerifiedCaller,
    /// The call's audio could not start (no such device, unreadable file) while it rang; the
    /// caller was told the call was refused with reason `Error`.
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
    /// The device stopped working (unplugged, sound server gone) and neither it nor the
    /// default device could be opened again after a few tries. The call goes on: silence is
    /// sent (input) or what is heard is discarded (output); reopening goes on in the
    /// background ([`AudioEvent::DeviceRecovered`] when it succeeds), and another device can
    /// be chosen with [`CallHandle::switch_input_device`] /
    /// [`CallHandle::switch_output_device`]. An xrun or a transient device error is not a
    /// loss.
    DeviceLost {
        /// Which device.
        direction: AudioDirection,
    },
    /// The device's stream was lost (its stream failed for good, or errors kept coming with
    /// no audio) and it was opened again, or the default device in its place, by the
    /// library itself: audio flows again. Typically within 200 ms of the loss.
    DeviceRecovered {
        /// Which device.
        direction: AudioDirection,
        /// The device now in use.
        name: String,
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
    /// The call's audio could not start: the call is ended (an outgoing call not yet
    /// answered is cancelled). An incoming call rings while its audio opens; one whose audio
    /// fails stops ringing, is refused with reason `Error` and is reported as
    /// [`PhoneEvent::MissedCall`].
    StartFailed {
        /// Why.
        error: String,
    },
}

/// A phone-wide event, on the listener thread.
#[derive(Debug)]
#[non_exhaustive]
pub enum PhoneEvent {
    /// A new call is ringing. Answer or reject it through `call`; set its listener to follow
    /// it (what already happened is replayed to it).
    IncomingCall {
        /// The call.
        call: CallHandle,
        /// Who is calling.
        caller: CallerInfo,
    },
    /// An authenticated incoming call was refused without ringing or stopped ringing (a missed
    /// call for the agent's history).
    MissedCall {
        /// Who called.
        caller: CallerInfo,
        /// Why it was refused.
        why: MissedCall,
    },
    /// Something security-relevant happened outside an answered call: a handshake that
    /// failed, was refused by the peer or was abandoned, a connection that did not complete
    /// TLS in time. At most a few per second per source are reported; `suppressed` counts
    /// those of the source left out since the last one.
    Security {
        /// The address the connection came from or went to.
        source: SocketAddr,
        /// What happened.
        event: SecurityEvent,
        /// Events of this source not reported since the previous report.
        suppressed: u64,
    },
    /// The phone is closed: every call has ended; this is the last event.
    Closed,
}

/// An event of one call, on the listener thread. Its `Debug` output leaves out the SAS, the
/// DTMF keys (card numbers and PINs are keyed in) and the bytes of call data (their length is
/// shown): events end up in logs.
#[derive(Clone)]
#[non_exhaustive]
pub enum CallUpdate {
    /// The call moved to a new state.
    StateChanged(CallState),
    /// End-to-end keys are established: the SAS can be shown.
    KeysReady {
        /// The short authentication string, as two groups of three digits.
        sas: String,
        /// How far the peer's identity is trusted.
        trust: Trust,
    },
    /// The trust in the peer changed (the user verified it).
    TrustChanged(Trust),
    /// A participant pressed a DTMF key.
    Dtmf {
        /// Who.
        participant: ParticipantId,
        /// The key.
        event: DtmfEvent,
        /// How long it was held, in milliseconds.
        duration_ms: u16,
    },
    /// A participant sent opaque call data.
    Data {
        /// Who.
        participant: ParticipantId,
        /// The data.
        data: Vec<u8>,
    },
    /// A participant muted or unmuted its microphone.
    PeerMuted {
        /// Who.
        participant: ParticipantId,
        /// Muted now.
        muted: bool,
    },
    /// A participant put the call on hold or took it off.
    PeerHold {
        /// Who.
        participant: ParticipantId,
        /// On hold now.
        on_hold: bool,
    },
    /// Something security-relevant happened in the call (media or control frames refused,
    /// a key change, a failed handshake).
    Security(SecurityEvent),
    /// Statistics, about once a second and once more at the end.
    Stats(CallStats),
    /// A sound device of the call was lost or switched, or its audio failed to start.
    Audio(AudioEvent),
}

impl fmt::Debug for CallUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = format_args!("***");
        match self {
            Self::StateChanged(state) => f.debug_tuple("StateChanged").field(state).finish(),
            Self::KeysReady { trust, .. } => f
                .debug_struct("KeysReady")
                .field("sas", &hidden)
                .field("trust", trust)
                .finish(),
            Self::TrustChanged(trust) => f.debug_tuple("TrustChanged").field(trust).finish(),
            Self::Dtmf {
                participant,
                duration_ms,
                ..
            } => f
                .debug_struct("Dtmf")
                .field("participant", participant)
                .field("event", &hidden)
                .field("duration_ms", duration_ms)
                .finish(),
            Self::Data { participant, data } => f
                .debug_struct("Data")
                .field("participant", participant)
                .field("len", &data.len())
                .finish_non_exhaustive(),
            Self::PeerMuted { participant, muted } => f
                .debug_struct("PeerMuted")
                .field("participant", participant)
                .field("muted", muted)
                .finish(),
            Self::PeerHold {
                participant,
                on_hold,
            } => f
                .debug_struct("PeerHold")
                .field("participant", participant)
                .field("on_hold", on_hold)
                .finish(),
            Self::Security(event) => f.debug_tuple("Security").field(event).finish(),
            Self::Stats(stats) => f.debug_tuple("Stats").field(stats).finish(),
            Self::Audio(event) => f.debug_tuple("Audio").field(event).finish(),
        }
    }
}

/// Phone-wide events. Called on the phone's listener thread, never on the one that carries
/// media; see the [module documentation](self).
pub trait PhoneListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: PhoneEvent);
}

impl<F: Fn(PhoneEvent) + Send + Sync> PhoneListener for F {
    fn on_event(&self, event: PhoneEvent) {
        self(event);
    }
}

/// Events of one call. Called on the phone's listener thread; see the
/// [module documentation](self).
pub trait CallListener: Send + Sync {
    /// One event of call `call`.
    fn on_event(&self, call: CallId, update: CallUpdate);
}

impl<F: Fn(CallId, CallUpdate) + Send + Sync> CallListener for F {
    fn on_event(&self, call: CallId, update: CallUpdate) {
        self(call, update);
    }
}

/// What the application can read about a call at any time. Its `Debug` output leaves the SAS
/// out (`***`): snapshots end up in logs.
#[derive(Clone)]
#[non_exhaustive]
pub struct CallSnapshot {
    /// The call's id (both ends know the same one).
    pub call_id: CallId,
    /// Current state.
    pub state: CallState,
    /// Short authentication string, once keys are ready.
    pub sas: Option<String>,
    /// The peer's identity, once authenticated.
    pub peer: Option<PublicIdentity>,
    /// The SFrame cipher suite of the call's media and control data, once keys are ready.
    pub suite: Option<CipherSuite>,
    /// How far the peer's identity is trusted, once authenticated.
    pub trust: Option<Trust>,
    /// Latest statistics.
    pub stats: CallStats,
    /// Media counters of this end.
    pub media: MediaCounters,
    /// Time from dialing to keys ready (caller) or first message to keys ready (callee).
    pub setup_time: Option<Duration>,
    /// What arrived on the signaling stream and was not acted on.
    pub signaling: SignalingCounters,
    /// What the call's QUIC connection has sent on the wire, every packet counted; read at
    /// the same moment as `media` (once a second and when the call ends), so the two can be
    /// compared.
    pub wire: WireCounters,
}

impl fmt::Debug for CallSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSnapshot")
            .field("call_id", &self.call_id)
            .field("state", &self.state)
            .field("sas", &self.sas.as_ref().map(|_| "***"))
            .field("peer", &self.peer)
            .field("suite", &self.suite)
            .field("trust", &self.trust)
            .field("stats", &self.stats)
            .field("media", &self.media)
            .field("setup_time", &self.setup_time)
            .field("signaling", &self.signaling)
            .field("wire", &self.wire)
            .finish()
    }
}

/// What the application's handle sends to the call's driver.
#[derive(Debug)]
enum DriverCommand {
    /// A call command for the session.
    Call(Command),
    /// A verified caller took this ringing call's place: refuse it as busy unless it has been
    /// answered meanwhile.
    Displaced,
    /// Move the call's capture or playback to another device (`None`: the default one).
    SwitchDevice {
        direction: AudioDirection,
        device: Option<String>,
    },
    /// Testing: put bytes on the media path as they are.
    #[cfg(feature = "testing")]
    Inject(Injection),
}

/// Datagrams a test can put on a call's path to check the peer's defences (feature
/// `testing`).
#[cfg(feature = "testing")]
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injection {
    /// Send these bytes as a media datagram, unencrypted and unchanged.
    Raw(Vec<u8>),
    /// Send the last media datagram again (a replay).
    ReplayLast,
    /// Flip one ciphertext bit of the next media datagram before it leaves.
    TamperNext,
    /// Write these bytes on the call's signaling stream as they are.
    RawSignal(Vec<u8>),
}

/// The part of a call shared by its handles, its driver and the phone.
struct CallShared {
    /// The phone's own key for the call (event routing).
    key: u64,
    id: OnceLock<CallId>,
    commands: mpsc::UnboundedSender<DriverCommand>,
    snapshot: Mutex<CallSnapshot>,
    events: Arc<EventQueue>,
    /// Raised once teardown is complete (final statistics, files finished, connection
    /// closed).
    torn_down: AtomicBool,
    ended: tokio::sync::watch::Sender<bool>,
    /// The call's entry in the store's history, once it is one the user sees.
    log: OnceLock<history::CallLog>,
}

impl fmt::Debug for CallShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallShared")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CallShared {
    fn snapshot(&self) -> std::sync::MutexGuard<'_, CallSnapshot> {
        lock(&self.snapshot)
    }

    fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::Acquire)
    }

    /// An incoming call not yet answered (or ended).
    fn is_unanswered(&self) -> bool {
        matches!(
            self.snapshot().state,
            CallState::Idle | CallState::Handshaking | CallState::Ringing
        )
    }

    fn id(&self) -> CallId {
        self.id.get().copied().unwrap_or(CallId([0; CallId::LEN]))
    }

    /// Queues an event of this call for its listener.
    fn notify(&self, update: CallUpdate) {
        if let Some(log) = self.log.get() {
            match &update {
                CallUpdate::StateChanged(state) => log.state(state),
                CallUpdate::TrustChanged(trust) => log.trust(*trust),
                _ => {}
            }
        }
        self.events.push(Item::Call {
            key: self.key,
            id: self.id(),
            update,
        });
    }

    fn finish(&self) {
        self.torn_down.store(true, Ordering::Release);
        self.ended.send_replace(true);
        self.events.push(Item::CallGone { key: self.key });
    }
}

/// A call, placed or received. Cheap to clone; all clones control the same call. Dropping
/// the handles does not end the call.
#[derive(Clone)]
pub struct CallHandle {
    shared: Arc<CallShared>,
}

impl fmt::Debug for CallHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallHandle")
            .field("id", &self.shared.id())
            .field("state", &self.state())
            .finish()
    }
}

static CALL_KEYS: AtomicU64 = AtomicU64::new(1);

impl CallHandle {
    fn new(events: &Arc<EventQueue>) -> (Self, mpsc::UnboundedReceiver<DriverCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ended, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(CallShared {
            key: CALL_KEYS.fetch_add(1, Ordering::Relaxed),
            id: OnceLock::new(),
            commands: tx,
            snapshot: Mutex::new(CallSnapshot {
                call_id: CallId([0; CallId::LEN]),
                state: CallState::Idle,
                sas: None,
                peer: None,
                suite: None,
                trust: None,
                stats: CallStats::default(),
                media: MediaCounters::default(),
                setup_time: None,
                signaling: SignalingCounters::default(),
                wire: WireCounters::default(),
            }),
            events: Arc::clone(events),
            torn_down: AtomicBool::new(false),
            ended,
            log: OnceLock::new(),
        });
        (Self { shared }, rx)
    }

    /// The call's id, the same at both ends (CTI systems file calls under it).
    pub fn id(&self) -> CallId {
        self.shared.id()
    }

    /// Registers the listener for this call's events, replacing any previous one. What was
    /// already delivered (the current state and, once keys are ready, the SAS and trust) is
    /// replayed to it first, through the same queue, so it never sees an older state after a
    /// newer one.
    pub fn set_listener(&self, listener: Arc<dyn CallListener>) {
        self.shared.events.push(Item::SetCallListener {
            key: self.shared.key,
            id: self.shared.id(),
            listener,
            call: Arc::clone(&self.shared),
        });
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

    /// Testing: puts a forged, replayed or tampered datagram on the media path, as a
    /// malicious relay or peer could. The receiving end must reject and count it.
    #[cfg(feature = "testing")]
    pub fn inject(&self, injection: Injection) -> Result<(), PhoneError> {
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
        DtmfEvent::parse_digits(digits).map_err(PhoneError::InvalidDtmf)?;
        self.send(Command::SendDtmf(digits.to_owned()), |s| {
            matches!(s, CallState::Active { .. })
        })
    }

    /// Sends DTMF digits each held for `duration`: a long press, or the tone length a far-end
    /// IVR expects. `duration` must be 40 ms to 65.535 s.
    pub fn send_dtmf_with_duration(
        &self,
        digits: &str,
        duration: Duration,
    ) -> Result<(), PhoneError> {
        DtmfEvent::parse_digits(digits).map_err(PhoneError::InvalidDtmf)?;
        let duration_ms = u16::try_from(duration.as_millis())
            .ok()
            .filter(|ms| *ms >= 40)
            .ok_or(PhoneError::DtmfDuration(duration))?;
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
    /// [`AudioEvent::SwitchFailed`].
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
    /// identity is trusted as verified in this call and in every later call with it on this
    /// phone (see [`Phone::verified_peers`]). Only once keys are ready.
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

    /// Waits (blocking the current thread: not on a listener) until the call's state
    /// satisfies `pred` or `timeout` passes; returns the state reached.
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
        self.shared.is_torn_down()
    }

    /// Waits (blocking the current thread: not on a listener) until
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

/// What the phone's threads share.
struct PhoneInner {
    config: PhoneConfig,
    cert: Arc<LocalCertificate>,
    events: Arc<EventQueue>,
    admission: admission::Admission,
    /// Places and rate for incoming connections whose caller is not authenticated yet.
    handshakes: handshakes::Handshakes,
    /// Identities the user has verified: the configured ones and those marked since.
    verified: Mutex<Vec<PublicIdentity>>,
    /// Rate limit of phone-wide security events, per source address.
    security: Mutex<SecurityLimiter>,
    closing: AtomicBool,
    security_events: AtomicU64,
    /// Every endpoint the phone bound, closed once its calls are down.
    endpoints: Mutex<Vec<QuicEndpoint>>,
    /// Writes call history to the key store, off the media runtime.
    store_writer: Option<history::StoreWriter>,
}

impl PhoneInner {
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Reports a phone-wide security event, rate-limited per source: a flood gives a bounded
    /// number of events (and log lines) and a count.
    fn security_event(&self, source: SocketAddr, event: SecurityEvent) {
        self.security_events.fetch_add(1, Ordering::Relaxed);
        let report = lock(&self.security).admit(source, std::time::Instant::now());
        if let Some(suppressed) = report {
            tracing::warn!(%source, ?event, suppressed, "security event");
            self.events.push(Item::Phone(PhoneEvent::Security {
                source,
                event,
                suppressed,
            }));
        } else {
            tracing::debug!(%source, ?event, "security event (rate-limited)");
        }
    }
}

/// Phone-wide security events: per source (an IPv4 address or an IPv6 /64) at most
/// [`SecurityLimiter::BURST`] at once, refilled at one a second; the rest is counted and
/// reported with the next one let through. At most [`SecurityLimiter::SOURCES`] sources are
/// tracked; while that many have been active within a minute, every further source shares
/// one bucket, so neither memory nor the event rate grows with the addresses an attacker
/// holds.
#[derive(Default)]
struct SecurityLimiter {
    sources: std::collections::HashMap<std::net::IpAddr, Bucket>,
    /// The bucket of sources beyond the tracked ones.
    overflow: Bucket,
    last_prune: Option<std::time::Instant>,
}

/// Tokens, when they were last counted, and events suppressed since the last one reported.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Option<std::time::Instant>,
    suppressed: u64,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            tokens: SecurityLimiter::BURST,
            at: None,
            suppressed: 0,
        }
    }
}

impl Bucket {
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens =
            (self.tokens + elapsed * SecurityLimiter::PER_SECOND).min(SecurityLimiter::BURST);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl SecurityLimiter {
    const BURST: f64 = 5.0;
    const PER_SECOND: f64 = 1.0;
    /// Sources tracked one by one.
    const SOURCES: usize = 4096;
    /// A source silent this long is forgotten (its bucket is full again by then).
    const IDLE: Duration = Duration::from_secs(60);

    /// Whether an event from `source` goes out now, with how many were suppressed before it.
    fn admit(&mut self, source: SocketAddr, now: std::time::Instant) -> Option<u64> {
        let key = viska_admission::source_key(source.ip());
        if !self.sources.contains_key(&key) && self.sources.len() >= Self::SOURCES {
            // Idle sources are forgotten, at most once a second (not on every event).
            let due = self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if due {
                self.last_prune = Some(now);
                self.sources.retain(|_, b| {
                    b.at.is_some_and(|at| now.saturating_duration_since(at) < Self::IDLE)
                });
            }
            if self.sources.len() >= Self::SOURCES {
                return self.overflow.admit(now);
            }
        }
        self.sources.entry(key).or_default().admit(now)
    }
}

/// The phone's runtime: a single-threaded tokio runtime driven by one dedicated thread
/// (`vk-<name>`), which carries every call's sockets and media. It stops by itself once the
/// phone is closed and its calls have ended; nothing ever waits for it to stop.
struct PhoneRuntime {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<Stop>>>,
}

/// How the runtime stops.
enum Stop {
    /// Hang up every call (bounded), close the endpoints.
    Close,
    /// Testing: stop as a crash would.
    #[cfg(feature = "testing")]
    Crash,
}

impl PhoneRuntime {
    fn start(inner: &Arc<PhoneInner>) -> Result<Self, PhoneError> {
        let name = inner.config.name.clone();
        // Blocking helpers (opening a sound device) carry the phone's name too, so the phone's
        // CPU time counts them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("vk-{name}"))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<Stop>();
        let phone = Arc::clone(inner);
        std::thread::Builder::new()
            .name(format!("vk-{name}"))
            .spawn(move || {
                if phone.config.realtime {
                    driver::raise_priority();
                }
                let how = runtime.block_on(async { stopped.await.unwrap_or(Stop::Close) });
                if matches!(how, Stop::Close) {
                    runtime.block_on(driver::close_calls(&phone));
                }
                runtime.shutdown_timeout(Duration::from_millis(500));
                phone.events.push(Item::Closed);
            })?;
        Ok(Self {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    fn stop(&self, how: Stop) -> bool {
        match lock(&self.stop).take() {
            Some(stop) => {
                let _ = stop.send(how);
                true
            }
            None => false,
        }
    }
}

/// A softphone: places and receives end-to-end encrypted calls.
///
/// Incoming calls are admitted as described in `admission.rs`: unverified callers ring at
/// most once per identity and [`PhoneConfigBuilder::max_ringing_per_source`] times per
/// source, and a verified caller is never kept out by ringing calls of unverified ones.
pub struct Phone {
    runtime: PhoneRuntime,
    inner: Arc<PhoneInner>,
    /// The endpoint `listen` bound; calls are placed from it too, so peers see one address.
    listening: Mutex<Option<QuicEndpoint>>,
    /// The endpoints calls are placed from while the phone does not listen, by the address
    /// they are bound to (one per address family, and one on loopback for loopback peers).
    client: Mutex<Vec<(SocketAddr, QuicEndpoint)>>,
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Phone")
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

impl Phone {
    /// Starts a phone (its threads and TLS certificate). Does not open any socket yet.
    pub fn new(config: PhoneConfig) -> Result<Self, PhoneError> {
        let cert = Arc::new(LocalCertificate::generate()?);
        let events = EventQueue::start(&config.name)?;
        let store_writer = match &config.store {
            Some(store) => Some(history::StoreWriter::start(&config.name, store.clone())?),
            None => None,
        };
        let inner = Arc::new(PhoneInner {
            store_writer,
            cert,
            admission: admission::Admission::new(config.max_calls, config.max_ringing_per_source),
            handshakes: handshakes::Handshakes::new(
                config.max_handshakes,
                config.max_handshakes_per_source,
                config.handshake_rate,
            ),
            verified: Mutex::new(config.verified_peers.clone()),
            security: Mutex::new(SecurityLimiter::default()),
            closing: AtomicBool::new(false),
            security_events: AtomicU64::new(0),
            endpoints: Mutex::new(Vec::new()),
            events,
            config,
        });
        let runtime = match PhoneRuntime::start(&inner) {
            Ok(runtime) => runtime,
            Err(e) => {
                inner.events.push(Item::Closed);
                return Err(e);
            }
        };
        Ok(Self {
            runtime,
            inner,
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

    /// Registers the phone-wide listener, replacing any previous one. Until one is set, an
    /// incoming call has no one to ring and is refused as busy; set it before
    /// [`Phone::listen`].
    pub fn set_listener(&self, listener: Arc<dyn PhoneListener>) {
        self.inner.events.push(Item::SetPhoneListener(listener));
    }

    fn bind(&self, addr: SocketAddr) -> Result<QuicEndpoint, PhoneError> {
        let _guard = self.runtime().enter();
        let config = &self.inner.config;
        #[cfg(feature = "testing")]
        let impaired = match &config.testing.impairment {
            Some(imp) => Some(QuicEndpoint::with_socket(
                viska_netem::bind_impaired(addr, imp.clone()).map_err(TransportError::Io)?,
                self.inner.cert.clone(),
                &config.transport,
            )?),
            None => None,
        };
        #[cfg(not(feature = "testing"))]
        let impaired = None;
        let ep = match impaired {
            Some(ep) => ep,
            None => QuicEndpoint::bind(addr, self.inner.cert.clone(), &config.transport)?,
        };
        lock(&self.inner.endpoints).push(ep.clone());
        Ok(ep)
    }

    /// Listens for incoming calls on `addr` (port 0 picks one); returns the bound address.
    /// A phone listens on one address; calling `listen` again is refused.
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, PhoneError> {
        if self.inner.is_closing() {
            return Err(PhoneError::Closed);
        }
        let mut slot = lock(&self.listening);
        if let Some(ep) = slot.as_ref() {
            return Err(PhoneError::AlreadyListening(ep.local_addr()?));
        }
        let ep = self.bind(addr)?;
        let local = ep.local_addr()?;
        self.runtime()
            .spawn(driver::accept_loop(Arc::clone(&self.inner), ep.clone()));
        *slot = Some(ep);
        Ok(local)
    }

    /// Places a call to a listening phone at `addr`. Returns at once; follow the call through
    /// its [`CallHandle`] and [`CallListener`]. A listening phone calls from its listening
    /// address; otherwise from an ephemeral port (on loopback for a loopback peer).
    pub fn call(&self, addr: SocketAddr) -> Result<CallHandle, PhoneError> {
        self.dial(addr, None, None)
    }

    /// Places a call to the contact `handle` (the application's name for it: an account, an
    /// extension) at `addr`, its trust decided by the phone's key store
    /// ([`PhoneConfigBuilder::store`]): the first call pins the identity the peer proves
    /// (trust on first use, [`Trust::Unverified`]); later calls are [`Trust::Verified`] once the
    /// user verified it, and [`Trust::KeyChanged`] (with a [`SecurityEvent::KeyChanged`]) when
    /// another identity answers, in this call and every later one until the user verifies the
    /// new identity. The call is not refused: the application decides. Without a store the
    /// handle only names the call in its history.
    pub fn call_contact(&self, handle: &str, addr: SocketAddr) -> Result<CallHandle, PhoneError> {
        self.dial(addr, None, Some(handle.to_owned()))
    }

    /// Places a call to a contact whose identity the application knows: the call is
    /// [`Trust::Verified`] if the peer at `addr` proves that identity, and
    /// [`Trust::KeyChanged`] (with a [`SecurityEvent::KeyChanged`]) if it proves another. The
    /// call is not refused: the application decides.
    pub fn call_expecting(
        &self,
        addr: SocketAddr,
        expected: PublicIdentity,
    ) -> Result<CallHandle, PhoneError> {
        self.dial(addr, Some(expected), None)
    }

    fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<PublicIdentity>,
        contact: Option<String>,
    ) -> Result<CallHandle, PhoneError> {
        if self.inner.is_closing() {
            return Err(PhoneError::Closed);
        }
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
        let (handle, commands) = CallHandle::new(&self.inner.events);
        if !self.inner.admission.admit_outgoing(&handle.shared) {
            return Err(PhoneError::TooManyCalls {
                limit: self.inner.config.max_calls,
            });
        }
        if let Some(writer) = &self.inner.store_writer {
            let log = history::CallLog::start(
                writer,
                viska_store::CallDirection::Outgoing,
                contact.clone(),
            );
            let _ = handle.shared.log.set(log);
        }
        let setup = driver::Setup::outgoing(&handle.shared, expected, contact);
        let inner = Arc::clone(&self.inner);
        let shared = Arc::clone(&handle.shared);
        self.runtime()
            .spawn(driver::place_call(inner, ep, addr, shared, commands, setup));
        Ok(handle)
    }

    /// The calls this phone runs now (placed, ringing or active; not yet torn down). Incoming
    /// calls appear once they ring.
    pub fn calls(&self) -> Vec<CallHandle> {
        self.inner
            .admission
            .calls()
            .into_iter()
            .filter(|shared| shared.id.get().is_some())
            .map(|shared| CallHandle { shared })
            .collect()
    }

    /// The identities the user has verified: those of [`PhoneConfigBuilder::verified_peers`]
    /// and those marked with [`CallHandle::mark_verified`] since, for the application to keep.
    pub fn verified_peers(&self) -> Vec<PublicIdentity> {
        lock(&self.inner.verified).clone()
    }

    /// Incoming connections refused or cut off before their caller was authenticated.
    pub fn refused_connections(&self) -> RefusedConnections {
        self.inner.handshakes.refused()
    }

    /// Phone-wide security events so far, reported or suppressed by the rate limit.
    pub fn security_events(&self) -> u64 {
        self.inner.security_events.load(Ordering::Relaxed)
    }

    /// Events dropped because the listener fell far behind, and listener calls that panicked.
    pub fn listener_trouble(&self) -> (u64, u64) {
        (self.inner.events.dropped(), self.inner.events.panics())
    }

    /// The sound devices the system offers (feature `device`).
    pub fn audio_devices(&self) -> Result<Vec<AudioDevice>, PhoneError> {
        audio::list_devices()
    }

    /// Total CPU time used by this phone's media thread so far (Linux), for measurements.
    pub fn cpu_time(&self) -> Option<Duration> {
        thread_cpu_time(&format!("vk-{}", self.inner.config.name))
    }

    /// How many times this phone's threads have been woken so far (Linux), for measurements.
    pub fn wakeups(&self) -> Option<u64> {
        thread_wakeups(&format!("vk-{}", self.inner.config.name))
    }

    /// Closes the phone: every call is hung up (each peer is told, each listener hears the
    /// end, audio files are finished), then the endpoints close and the phone's threads stop;
    /// [`PhoneEvent::Closed`] is the last event. Returns at once. Dropping the phone does the
    /// same.
    pub fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        // The runtime hangs up the calls, then closes the endpoints and stops by itself.
        self.runtime.stop(Stop::Close);
    }

    /// Waits (blocking the current thread) until the phone is closed and its last event
    /// delivered, or `timeout` passes; returns whether it closed. Refuses (returns `false` at
    /// once) on the phone's own threads, where waiting would never end.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let own = std::thread::current().name().is_some_and(|n| {
            n == format!("vk-{}", self.inner.config.name)
                || n == format!("vk-{}-ev", self.inner.config.name)
        });
        if own {
            return false;
        }
        self.inner.events.wait_done(timeout)
    }

    /// Closes the phone and waits (up to 10 s) until it is closed: for command-line tools and
    /// tests. Not from a listener.
    pub fn shutdown(self) {
        self.close();
        self.wait_closed(Duration::from_secs(10));
    }

    /// Testing: stops the phone as a crash would, without hanging up or closing anything;
    /// peers find out only when their connection times out.
    #[cfg(feature = "testing")]
    pub fn simulate_crash(self) {
        self.inner.closing.store(true, Ordering::Release);
        self.runtime.stop(Stop::Crash);
        self.inner.events.wait_done(Duration::from_secs(5));
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long closing a phone waits for its calls to hang up cleanly: longer than a call's own
/// bounded teardown (a device switch under way, the last signaling acknowledged, files
/// finished).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

use crate::lock;

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use super::SecurityLimiter;

    fn v6(host: u128) -> SocketAddr {
        let base: u128 = 0x2001_0db8_0000_0001 << 64;
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(base + host)), 4433)
    }

    #[test]
    fn debug_output_of_call_events_leaves_out_the_sas_dtmf_keys_and_call_data() {
        use super::{CallUpdate, ParticipantId, Trust};
        use viska_proto::DtmfEvent;

        let keys = CallUpdate::KeysReady {
            sas: "482 913".into(),
            trust: Trust::Unverified,
        };
        let shown = format!("{keys:?}");
        assert!(!shown.contains("482") && shown.contains("***"), "{shown}");
        let dtmf = CallUpdate::Dtmf {
            participant: ParticipantId(1),
            event: DtmfEvent::Digit7,
            duration_ms: 100,
        };
        let shown = format!("{dtmf:?}");
        assert!(!shown.contains('7') && !shown.contains("Digit"), "{shown}");
        let data = CallUpdate::Data {
            participant: ParticipantId(1),
            data: b"card 4111".to_vec(),
        };
        let shown = format!("{data:?}");
        assert!(!shown.contains("4111") && !shown.contains("52"), "{shown}");
        assert!(shown.contains("len: 9"), "{shown}");
        let command = viska_call::Command::SendDtmf("4111".into());
        let shown = format!("{command:?}");
        assert!(!shown.contains("4111"), "{shown}");
    }

    #[test]
    fn security_events_are_limited_per_slash_64_and_counted() {
        let mut limiter = SecurityLimiter::default();
        let t0 = Instant::now();
        // Five addresses of one /64 share one bucket of five.
        for host in 1..=5 {
            assert_eq!(limiter.admit(v6(host), t0), Some(0));
        }
        assert_eq!(limiter.admit(v6(6), t0), None);
        assert_eq!(limiter.admit(v6(7), t0), None);
        // Another /64 has its own.
        assert_eq!(limiter.admit(v6(1 << 64), t0), Some(0));
        // A second later one more goes out, with the count of those held back.
        assert_eq!(limiter.admit(v6(8), t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn sources_beyond_the_tracked_ones_share_one_bucket() {
        let mut limiter = SecurityLimiter::default();
        let t0 = Instant::now();
        let source = |n: u32| SocketAddr::new(IpAddr::from(n.to_be_bytes()), 1);
        for n in 0..SecurityLimiter::SOURCES as u32 {
            assert_eq!(limiter.admit(source(n), t0), Some(0));
        }
        let beyond: Vec<_> = (0..1000u32)
            .map(|n| limiter.admit(source(0x0a00_0000 + n), t0))
            .collect();
        assert_eq!(beyond.iter().filter(|r| r.is_some()).count(), 5);
        assert_eq!(limiter.sources.len(), SecurityLimiter::SOURCES);
        // A minute later the idle sources are forgotten and new ones tracked again.
        let later = t0 + SecurityLimiter::IDLE + Duration::from_secs(1);
        assert_eq!(limiter.admit(source(0x0b00_0000), later), Some(0));
        assert_eq!(limiter.sources.len(), 1);
    }
}

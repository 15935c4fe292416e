//! The phone: identity, listening, placing calls, app-fed audio, phone-wide events.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::phone::{
    AppAudio, AppAudioConfig, AppCapture, AppPlayback, AudioFactory, FileAudio, MissedCall,
    NullAudio,
};
use viska::{PhoneConfig, PhoneEvent as CoreEvent};

use crate::call::Call;
use crate::error::{ListenerError, ViskaError};
use crate::identity::{Identity, PeerIdentity, public_identity};
use crate::store::KeyStore;
use crate::types::{AudioDevice, SecurityNotice, Suite, Trust};

/// Where a phone's calls take their audio from and play it to.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum AudioSetup {
    /// No audio: silence is sent, what is heard is discarded.
    None,
    /// WAV files: `input` is played into every call (converted to 48 kHz mono; silence when
    /// absent), `output` records what is heard (48 kHz mono 16-bit).
    Files {
        /// The WAV to send, if any.
        input: Option<String>,
        /// Restart the input at its end.
        loop_input: bool,
        /// The WAV to write, if any.
        output: Option<String>,
    },
    /// The application moves the audio itself: it pushes captured samples with
    /// [`Phone::push_audio`] and pulls what to play with [`Phone::pull_audio`], from its own
    /// audio thread, in interleaved 16-bit samples at the rates and channel counts given.
    App {
        /// Sample rate of what is pushed.
        capture_rate: u32,
        /// Channels of what is pushed.
        capture_channels: u16,
        /// Sample rate of what is pulled.
        playback_rate: u32,
        /// Channels of what is pulled.
        playback_channels: u16,
    },
    /// The system's sound devices (the default input and output), through cpal.
    Devices,
}

/// Everything a phone is set up with. Only `name` and `identity` are required.
#[derive(uniffi::Record)]
pub struct PhoneSettings {
    /// 1 to 12 characters; names the phone's threads (`vk-<name>`, `vk-<name>-ev`).
    pub name: String,
    /// The device's identity.
    pub identity: Arc<Identity>,
    /// Where calls' audio comes from and goes to; none by default.
    #[uniffi(default = None)]
    pub audio: Option<AudioSetup>,
    /// The cipher suites offered, in order of preference; empty for the default order.
    #[uniffi(default = [])]
    pub suites: Vec<Suite>,
    /// How long an incoming call rings before it is missed; the library's default when absent.
    #[uniffi(default = None)]
    pub ring_timeout_ms: Option<u32>,
    /// How many calls the phone runs at once; 4 when absent.
    #[uniffi(default = None)]
    pub max_calls: Option<u32>,
    /// Public keys (32 bytes each) of identities the user verified earlier: their calls show
    /// as [`Trust::Verified`].
    #[uniffi(default = [])]
    pub verified_peers: Vec<Vec<u8>>,
    /// Raise the media thread's priority (needs the privilege; harmless without).
    #[uniffi(default = true)]
    pub realtime: bool,
    /// Discontinuous transmission: while the user is silent, send only comfort-noise updates
    /// (a few kbit/s instead of the full rate). On by default.
    #[uniffi(default = true)]
    pub dtx: bool,
    /// The device's key store: calls take their trust from its contacts (trust on first use,
    /// verification, changed keys) and are recorded in its history. `identity` should be the
    /// store's. With a store, `verified_peers` is not consulted.
    #[uniffi(default = None)]
    pub store: Option<Arc<KeyStore>>,
}

/// Who is calling, as far as cryptography can tell.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CallerInfo {
    /// The caller's authenticated identity.
    pub identity: PeerIdentity,
    /// Whether that identity is verified, new, or different from the expected one.
    pub trust: Trust,
    /// The address the call came from (`ip:port`).
    pub remote_addr: String,
}

impl From<&viska::phone::CallerInfo> for CallerInfo {
    fn from(c: &viska::phone::CallerInfo) -> Self {
        Self {
            identity: PeerIdentity::from(&c.identity),
            trust: c.trust.into(),
            remote_addr: c.remote_addr.to_string(),
        }
    }
}

/// Why an incoming call was refused without ringing, or stopped ringing.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum MissedReason {
    /// The phone had no room; the caller was told busy.
    Busy,
    /// The call rang and made room for a verified caller.
    DisplacedByVerifiedCaller,
    /// The call's audio could not start.
    AudioFailed {
        /// Why.
        detail: String,
    },
}

/// A phone-wide event.
#[derive(uniffi::Enum)]
pub enum PhoneEvent {
    /// A new call rings. Answer or reject it; set its listener to follow it (what already
    /// happened is replayed to it).
    IncomingCall {
        /// The call.
        call: Arc<Call>,
        /// Who is calling.
        caller: CallerInfo,
    },
    /// An authenticated incoming call was refused without ringing, or stopped ringing.
    MissedCall {
        /// Who called.
        caller: CallerInfo,
        /// Why.
        reason: MissedReason,
    },
    /// Something security-relevant outside an answered call (a failed or abandoned
    /// handshake, a stalled connection); rate-limited per source.
    Security {
        /// The address concerned.
        source: String,
        /// What happened.
        notice: SecurityNotice,
        /// Events of this source left out since the previous report.
        suppressed: u64,
    },
    /// The phone is closed; this is the last event.
    Closed,
}

/// Receives a phone's phone-wide events. Called on the phone's dispatcher thread
/// (`vk-<name>-ev`), one event at a time, never while a lock of the library is held. It must
/// not block; it may call back into the phone. An error it returns (an exception it throws)
/// is logged and counted, and the phone goes on.
#[uniffi::export(foreign)]
pub trait PhoneListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: PhoneEvent) -> Result<(), ListenerError>;
}

/// Forwards the core's phone events to the application's listener.
struct PhoneAdapter {
    app: Arc<dyn PhoneListener>,
    failures: Arc<AtomicU64>,
}

impl viska::PhoneListener for PhoneAdapter {
    fn on_event(&self, event: CoreEvent) {
        let event = match event {
            CoreEvent::IncomingCall { call, caller } => PhoneEvent::IncomingCall {
                call: Call::wrap(call, Arc::clone(&self.failures)),
                caller: CallerInfo::from(&caller),
            },
            CoreEvent::MissedCall { caller, why } => PhoneEvent::MissedCall {
                caller: CallerInfo::from(&caller),
                reason: match why {
                    MissedCall::Busy => MissedReason::Busy,
                    MissedCall::DisplacedByVerifiedCaller => {
                        MissedReason::DisplacedByVerifiedCaller
                    }
                    MissedCall::AudioFailed { error } => {
                        MissedReason::AudioFailed { detail: error }
                    }
                    _ => MissedReason::Busy,
                },
            },
            CoreEvent::Security {
                source,
                event,
                suppressed,
            } => PhoneEvent::Security {
                source: source.to_string(),
                notice: SecurityNotice::from(&event),
                suppressed,
            },
            CoreEvent::Closed => PhoneEvent::Closed,
            _ => return,
        };
        if let Err(e) = self.app.on_event(event) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a phone listener failed; the phone goes on");
        }
    }
}

/// The application's two ends of app-fed audio.
pub(crate) struct AppEnds {
    capture: AppCapture,
    playback: Mutex<AppPlayback>,
}

impl AppEnds {
    fn ends(app: Option<&Self>) -> Result<&Self, ViskaError> {
        app.ok_or_else(|| ViskaError::Audio {
            detail: "not set up with AudioSetup.App".into(),
        })
    }

    /// Pushes captured samples to every call.
    pub(crate) fn push(app: Option<&Self>, samples: &[i16]) -> Result<(), ViskaError> {
        Self::ends(app)?.capture.push(samples);
        Ok(())
    }

    /// `count` samples to play, every call mixed.
    pub(crate) fn pull(app: Option<&Self>, count: u32) -> Result<Vec<i16>, ViskaError> {
        let ends = Self::ends(app)?;
        let mut out = vec![0i16; usize::try_from(count).unwrap_or(0)];
        ends.playback
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pull(&mut out);
        Ok(out)
    }
}

/// The audio end points for `setup`, and the application's ends of app-fed audio.
pub(crate) fn audio_factory(
    setup: AudioSetup,
) -> Result<(Arc<dyn AudioFactory>, Option<AppEnds>), ViskaError> {
    Ok(match setup {
        AudioSetup::None => (Arc::new(NullAudio), None),
        AudioSetup::Files {
            input,
            loop_input,
            output,
        } => (
            Arc::new(FileAudio {
                input: input.map(Into::into),
                loop_input,
                output: output.map(Into::into),
            }),
            None,
        ),
        AudioSetup::App {
            capture_rate,
            capture_channels,
            playback_rate,
            playback_channels,
        } => {
            let (factory, capture, playback) = AppAudio::new(AppAudioConfig {
                capture_rate,
                capture_channels,
                playback_rate,
                playback_channels,
            });
            let ends = AppEnds {
                capture,
                playback: Mutex::new(playback),
            };
            (Arc::new(factory), Some(ends))
        }
        #[cfg(feature = "device")]
        AudioSetup::Devices => (Arc::new(viska::phone::DeviceAudio::default()), None),
        #[cfg(not(feature = "device"))]
        AudioSetup::Devices => {
            return Err(ViskaError::Audio {
                detail: "built without sound devices (feature `device`)".into(),
            });
        }
    })
}

/// A softphone: places and receives end-to-end encrypted calls. Closing it (Kotlin
/// `close()`/`use {}`, Swift and Python when the last reference goes, or
/// [`shutdown`](Self::shutdown)) hangs up every call.
#[derive(uniffi::Object)]
pub struct Phone {
    phone: viska::Phone,
    app: Option<AppEnds>,
    failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone")
            .field("phone", &self.phone)
            .finish_non_exhaustive()
    }
}

pub(crate) fn parse_addr(addr: &str) -> Result<SocketAddr, ViskaError> {
    addr.parse()
        .map_err(|_| ViskaError::invalid(format!("not an ip:port address: {addr:?}")))
}

#[uniffi::export]
impl Phone {
    /// Starts a phone (its threads and TLS certificate); opens no socket yet.
    #[uniffi::constructor]
    pub fn new(settings: PhoneSettings) -> Result<Arc<Self>, ViskaError> {
        let mut builder = PhoneConfig::builder(settings.name, settings.identity.key.clone());
        let (factory, app) = audio_factory(settings.audio.unwrap_or(AudioSetup::None))?;
        builder = builder.audio(factory);
        if !settings.suites.is_empty() {
            builder = builder.suites(settings.suites.into_iter().map(Into::into).collect());
        }
        if let Some(ms) = settings.ring_timeout_ms {
            builder = builder.ring_timeout(Duration::from_millis(u64::from(ms)));
        }
        if let Some(n) = settings.max_calls {
            builder = builder.max_calls(usize::try_from(n).unwrap_or(usize::MAX));
        }
        let verified = settings
            .verified_peers
            .iter()
            .map(|k| public_identity(k))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder
            .verified_peers(verified)
            .realtime(settings.realtime)
            .dtx(settings.dtx);
        if let Some(store) = &settings.store {
            builder = builder.store(store.store.clone());
        }
        let config = builder.build().map_err(viska::PhoneError::from)?;
        Ok(Arc::new(Self {
            phone: viska::Phone::new(config)?,
            app,
            failures: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// This phone's identity.
    pub fn identity(&self) -> PeerIdentity {
        PeerIdentity::from(&self.phone.identity())
    }

    /// Registers the phone-wide listener, replacing any previous one. Set it before
    /// [`listen`](Self::listen): until then an incoming call has no one to ring and is
    /// refused as busy.
    pub fn set_listener(&self, listener: Arc<dyn PhoneListener>) {
        self.phone.set_listener(Arc::new(PhoneAdapter {
            app: listener,
            failures: Arc::clone(&self.failures),
        }));
    }

    /// Listens for incoming calls on `addr` (`ip:port`; port 0 picks one); returns the bound
    /// address.
    pub fn listen(&self, addr: String) -> Result<String, ViskaError> {
        Ok(self.phone.listen(parse_addr(&addr)?)?.to_string())
    }

    /// Places a call to a listening phone at `addr` (`ip:port`). Returns at once; follow the
    /// call with [`Call::set_listener`].
    pub fn call(&self, addr: String) -> Result<Arc<Call>, ViskaError> {
        let handle = self.phone.call(parse_addr(&addr)?)?;
        Ok(Call::wrap(handle, Arc::clone(&self.failures)))
    }

    /// Places a call to the contact `handle` at `addr`, its trust from the key store: the
    /// first call pins the identity that answers (unverified); later calls are verified once
    /// the user verified it, and key-changed (with a security event) in every call where
    /// another identity answers, until the user verifies that one. Without a store the handle
    /// only names the call.
    pub fn call_contact(&self, handle: String, addr: String) -> Result<Arc<Call>, ViskaError> {
        let handle = self.phone.call_contact(&handle, parse_addr(&addr)?)?;
        Ok(Call::wrap(handle, Arc::clone(&self.failures)))
    }

    /// Places a call to a contact whose public key the application knows: the call is
    /// verified if the peer proves it, and key-changed (with a security event) if the peer
    /// proves another.
    pub fn call_expecting(
        &self,
        addr: String,
        public_key: Vec<u8>,
    ) -> Result<Arc<Call>, ViskaError> {
        let expected = public_identity(&public_key)?;
        let handle = self.phone.call_expecting(parse_addr(&addr)?, expected)?;
        Ok(Call::wrap(handle, Arc::clone(&self.failures)))
    }

    /// The calls the phone runs now (placed, ringing or active).
    pub fn calls(&self) -> Vec<Arc<Call>> {
        self.phone
            .calls()
            .into_iter()
            .map(|h| Call::wrap(h, Arc::clone(&self.failures)))
            .collect()
    }

    /// The identities the user verified: those of the settings and those marked since, for
    /// the application to keep.
    pub fn verified_peers(&self) -> Vec<PeerIdentity> {
        self.phone
            .verified_peers()
            .iter()
            .map(PeerIdentity::from)
            .collect()
    }

    /// The sound devices the system offers.
    pub fn audio_devices(&self) -> Result<Vec<AudioDevice>, ViskaError> {
        Ok(self
            .phone
            .audio_devices()?
            .into_iter()
            .map(|d| AudioDevice {
                name: d.name,
                direction: d.direction.into(),
                is_default: d.is_default,
                rate: d.rate,
                channels: d.channels,
            })
            .collect())
    }

    /// App-fed audio: pushes captured interleaved 16-bit samples (any amount) to every call.
    /// Fails unless the phone was set up with [`AudioSetup::App`].
    pub fn push_audio(&self, samples: Vec<i16>) -> Result<(), ViskaError> {
        AppEnds::push(self.app.as_ref(), &samples)
    }

    /// App-fed audio: `count` interleaved 16-bit samples to play, every call mixed (silence
    /// where nothing is there yet). Fails unless the phone was set up with
    /// [`AudioSetup::App`].
    pub fn pull_audio(&self, count: u32) -> Result<Vec<i16>, ViskaError> {
        AppEnds::pull(self.app.as_ref(), count)
    }

    /// Phone-wide security events so far, reported or suppressed by the rate limit.
    pub fn security_events(&self) -> u64 {
        self.phone.security_events()
    }

    /// Events dropped because the listeners fell far behind (past 8192 waiting events, call
    /// data and DTMF are dropped and counted here; states and keys never are).
    pub fn events_dropped(&self) -> u64 {
        self.phone.listener_trouble().0
    }

    /// Listener calls that returned an error or threw, so far.
    pub fn listener_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed) + self.phone.listener_trouble().1
    }

    /// Closes the phone (every call is hung up, [`PhoneEvent::Closed`] is the last event) and
    /// waits up to `timeout_ms` for it; returns whether it closed. Blocks: not from a
    /// listener (there it only starts closing and returns `false`).
    pub fn shutdown(&self, timeout_ms: u32) -> bool {
        self.phone.close();
        self.phone
            .wait_closed(Duration::from_millis(u64::from(timeout_ms)))
    }
}

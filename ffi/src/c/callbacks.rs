//! Callbacks: the [`ViskaPhoneCallbacks`] struct the application gives to
//! [`viska_phone_new`](super::phone::viska_phone_new), and the listeners that call it.
//!
//! Every callback runs on the phone's listener thread, `vk-<name>-ev` (never the thread that
//! carries media, never while a lock of the library is held), one at a time, in the order
//! things happened. A callback may call into the library (answer the call, send data, even
//! free the phone) but must not block for long: it delays the phone's later events (never
//! its audio). A NULL function pointer skips that event.
//!
//! The `ViskaCall *` a call callback receives is lent for the duration of the callback
//! (`viska_call_clone` keeps it); `on_incoming_call` alone hands over a handle the
//! application owns. Strings and buffers are valid during the callback only.

use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

use viska::call::{CallId, SecurityEvent};
use viska::phone::{AudioDirection, AudioEvent, MissedCall};
use viska::{CallHandle, CallListener, CallUpdate, PhoneEvent, PhoneListener};

use super::call::{ViskaCall, ViskaCallState, ViskaCallStats, ViskaTrust};
use super::util::c_string;

/// What kind of security event happened (its description says more).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaSecurityEventKind {
    /// An encrypted control message failed authentication or replay checks.
    ControlDecryptFailed = 1,
    /// An authenticated control message did not parse.
    MalformedControl = 2,
    /// The peer's identity differs from the expected one.
    KeyChanged = 3,
    /// The end-to-end handshake failed (bad signature, key confirmation, downgrade...).
    HandshakeFailed = 4,
    /// The peer ended the handshake because one of its checks failed.
    HandshakeRefusedByPeer = 5,
    /// The peer stopped in the middle of the handshake.
    HandshakeAbandoned = 6,
    /// An incoming connection failed its QUIC/TLS handshake.
    TransportHandshakeFailed = 7,
    /// An incoming connection did not complete its TLS handshake in time.
    TransportHandshakeTimedOut = 8,
    /// Media datagrams were refused (forged, replayed, malformed, unknown key).
    MediaRejected = 9,
    /// A kind this version does not name.
    Other = 255,
}

impl From<&SecurityEvent> for ViskaSecurityEventKind {
    fn from(e: &SecurityEvent) -> Self {
        match e {
            SecurityEvent::ControlDecryptFailed { .. } => Self::ControlDecryptFailed,
            SecurityEvent::MalformedControl(_) => Self::MalformedControl,
            SecurityEvent::KeyChanged { .. } => Self::KeyChanged,
            SecurityEvent::HandshakeFailed(_) => Self::HandshakeFailed,
            SecurityEvent::HandshakeRefusedByPeer => Self::HandshakeRefusedByPeer,
            SecurityEvent::HandshakeAbandoned { .. } => Self::HandshakeAbandoned,
            SecurityEvent::TransportHandshakeFailed => Self::TransportHandshakeFailed,
            SecurityEvent::TransportHandshakeTimedOut => Self::TransportHandshakeTimedOut,
            SecurityEvent::MediaRejected { .. } => Self::MediaRejected,
            _ => Self::Other,
        }
    }
}

/// Why an authenticated incoming call was refused without ringing, or stopped ringing.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaMissedCallReason {
    /// The phone had no room; the caller was told busy.
    Busy = 1,
    /// The call rang and was refused as busy to make room for a verified caller.
    DisplacedByVerifiedCaller = 2,
    /// The call's audio could not start.
    AudioFailed = 3,
    /// A reason this version does not name.
    Other = 255,
}

/// What happened to a call's audio.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaAudioEventKind {
    /// The device stopped working; the call goes on (silence / discarded).
    DeviceLost = 1,
    /// A device switch completed (the detail is the device's name).
    DeviceSwitched = 2,
    /// A device switch failed; the previous device stays (the detail says why).
    SwitchFailed = 3,
    /// The call's audio could not start; the call is ended (the detail says why).
    StartFailed = 4,
    /// The device's stream was lost and was opened again (or the default device in its
    /// place): audio flows again (the detail is the device's name).
    DeviceRecovered = 5,
    /// A kind this version does not name.
    Other = 255,
}

/// Which way audio flows through a device.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaAudioDirection {
    /// Not about one direction.
    None = 0,
    /// Capture (microphone).
    Input = 1,
    /// Playback (speaker).
    Output = 2,
}

impl From<AudioDirection> for ViskaAudioDirection {
    fn from(d: AudioDirection) -> Self {
        match d {
            AudioDirection::Input => Self::Input,
            AudioDirection::Output => Self::Output,
        }
    }
}

/// The application's callbacks: a `user_data` pointer passed back to each, and one function
/// pointer per event (NULL: not wanted). Copied by `viska_phone_new`.
///
/// They run on the phone's listener thread `vk-<name>-ev`, one at a time, outside every lock
/// of the library; they must not block for long. By giving `user_data`, the caller declares
/// it safe to use from that thread (and from the threads it calls the library from at the
/// same time), and keeps it alive until `on_closed` has run (see `viska_phone_wait_closed`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ViskaPhoneCallbacks {
    /// Passed to every callback as is.
    pub user_data: *mut c_void,
    /// A new incoming call rings. `call` is the application's to keep (free it with
    /// `viska_call_free`); answer or reject it, now or later. `caller_public_key`
    /// (`VISKA_PUBLIC_KEY_LEN` bytes) is the caller's authenticated identity, `trust` how far
    /// it is trusted, `remote_addr` where the call came from. With this callback NULL, every
    /// incoming call is rejected.
    pub on_incoming_call: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *mut ViskaCall,
            caller_public_key: *const u8,
            trust: ViskaTrust,
            remote_addr: *const c_char,
        ),
    >,
    /// An authenticated incoming call was refused without ringing, or stopped ringing.
    pub on_missed_call: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            caller_public_key: *const u8,
            trust: ViskaTrust,
            reason: ViskaMissedCallReason,
        ),
    >,
    /// A call moved to a new state (the last one is `VISKA_CALL_STATE_KIND_ENDED`).
    pub on_call_state: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            state: *const ViskaCallState,
        ),
    >,
    /// A call's end-to-end keys are established: `sas` is the short authentication string
    /// to compare with the peer; `trust` how far the peer is trusted.
    pub on_keys_ready: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            sas: *const c_char,
            trust: ViskaTrust,
        ),
    >,
    /// The trust in a call's peer changed (the user verified it).
    pub on_trust_changed: Option<
        unsafe extern "C" fn(user_data: *mut c_void, call: *const ViskaCall, trust: ViskaTrust),
    >,
    /// The peer pressed a DTMF key (`digit` is one of `0-9 * # A-D`).
    pub on_dtmf: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            digit: c_char,
            duration_ms: u16,
        ),
    >,
    /// The peer sent `len` bytes of call data.
    pub on_data: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            data: *const u8,
            len: usize,
        ),
    >,
    /// The peer put the call on hold (`on_hold`) or took it off.
    pub on_peer_hold:
        Option<unsafe extern "C" fn(user_data: *mut c_void, call: *const ViskaCall, on_hold: bool)>,
    /// The peer muted or unmuted its microphone.
    pub on_peer_mute:
        Option<unsafe extern "C" fn(user_data: *mut c_void, call: *const ViskaCall, muted: bool)>,
    /// A call's statistics, about once a second and once more at the end.
    pub on_stats: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            stats: *const ViskaCallStats,
        ),
    >,
    /// A call's sound device was lost or switched, or its audio failed to start.
    pub on_audio_event: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            kind: ViskaAudioEventKind,
            direction: ViskaAudioDirection,
            detail: *const c_char,
        ),
    >,
    /// Something security-relevant happened: in a call (`call` non-NULL), or phone-wide
    /// (`call` NULL: a handshake that failed, was refused or abandoned before a call rang, a
    /// connection that did not complete TLS; rate-limited per source). `description` says
    /// what, for logs.
    pub on_security_event: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const ViskaCall,
            kind: ViskaSecurityEventKind,
            description: *const c_char,
        ),
    >,
    /// The phone is closed: every call has ended. The last callback of the phone; after it
    /// `user_data` is no longer used.
    pub on_closed: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

impl Default for ViskaPhoneCallbacks {
    /// No `user_data`, no callbacks (as a zeroed struct in C).
    fn default() -> Self {
        Self {
            user_data: std::ptr::null_mut(),
            on_incoming_call: None,
            on_missed_call: None,
            on_call_state: None,
            on_keys_ready: None,
            on_trust_changed: None,
            on_dtmf: None,
            on_data: None,
            on_peer_hold: None,
            on_peer_mute: None,
            on_stats: None,
            on_audio_event: None,
            on_security_event: None,
            on_closed: None,
        }
    }
}

/// The callbacks, shared by the phone's listener and its calls' listeners.
pub(crate) struct Callbacks(ViskaPhoneCallbacks);

// SAFETY: the function pointers are plain code pointers; `user_data` is only passed back to
// them, and the application declared it safe to use from the listener thread (the contract
// of `ViskaPhoneCallbacks`, documented in the header).
unsafe impl Send for Callbacks {}
// SAFETY: as above; the struct itself is never mutated after it is made.
unsafe impl Sync for Callbacks {}

impl Callbacks {
    pub(crate) fn new(callbacks: ViskaPhoneCallbacks) -> Arc<Self> {
        Arc::new(Self(callbacks))
    }

    fn user_data(&self) -> *mut c_void {
        self.0.user_data
    }

    /// Follows `call`: its events go to the call callbacks.
    pub(crate) fn follow(self: &Arc<Self>, call: &CallHandle) {
        call.set_listener(Arc::new(CallSink {
            callbacks: Arc::clone(self),
            call: ViskaCall {
                handle: call.clone(),
            },
        }));
    }

    fn security(&self, call: *const ViskaCall, event: &SecurityEvent, context: String) {
        if let Some(f) = self.0.on_security_event {
            let description = c_string(context);
            // SAFETY: a callback of the application, called as documented: `call` NULL or
            // lent for the call, `description` a NUL-terminated string valid meanwhile.
            unsafe { f(self.user_data(), call, event.into(), description.as_ptr()) };
        }
    }
}

/// The phone-wide listener.
pub(crate) struct PhoneSink {
    pub(crate) callbacks: Arc<Callbacks>,
}

impl PhoneListener for PhoneSink {
    fn on_event(&self, event: PhoneEvent) {
        let cb = &self.callbacks;
        match event {
            PhoneEvent::IncomingCall { call, caller } => {
                // First, so the call's events (its ringing state) follow the callback below.
                cb.follow(&call);
                match cb.0.on_incoming_call {
                    Some(f) => {
                        let key = caller.identity.to_bytes();
                        let addr = c_string(caller.remote_addr.to_string());
                        let handle = Box::into_raw(Box::new(ViskaCall { handle: call }));
                        // SAFETY: a callback of the application, called as documented: it
                        // receives ownership of `handle`; `key` (VISKA_PUBLIC_KEY_LEN bytes)
                        // and `addr` are valid during the call.
                        unsafe {
                            f(
                                cb.user_data(),
                                handle,
                                key.as_ptr(),
                                caller.trust.into(),
                                addr.as_ptr(),
                            )
                        };
                    }
                    None => {
                        let _ = call.reject();
                    }
                }
            }
            PhoneEvent::MissedCall { caller, why } => {
                if let Some(f) = cb.0.on_missed_call {
                    let reason = match why {
                        MissedCall::Busy => ViskaMissedCallReason::Busy,
                        MissedCall::DisplacedByVerifiedCaller => {
                            ViskaMissedCallReason::DisplacedByVerifiedCaller
                        }
                        MissedCall::AudioFailed { .. } => ViskaMissedCallReason::AudioFailed,
                        _ => ViskaMissedCallReason::Other,
                    };
                    let key = caller.identity.to_bytes();
                    // SAFETY: a callback of the application, called as documented; `key` is
                    // valid during the call.
                    unsafe { f(cb.user_data(), key.as_ptr(), caller.trust.into(), reason) };
                }
            }
            PhoneEvent::Security {
                source,
                event,
                suppressed,
            } => {
                let context = format!("{event:?} from {source} ({suppressed} suppressed before)");
                cb.security(std::ptr::null(), &event, context);
            }
            PhoneEvent::Closed => {
                if let Some(f) = cb.0.on_closed {
                    // SAFETY: a callback of the application, called as documented.
                    unsafe { f(cb.user_data()) };
                }
            }
            _ => {}
        }
    }
}

/// The listener of one call.
struct CallSink {
    callbacks: Arc<Callbacks>,
    /// The handle lent to the callbacks.
    call: ViskaCall,
}

impl CallListener for CallSink {
    fn on_event(&self, _id: CallId, update: CallUpdate) {
        let cb = &self.callbacks.0;
        let ud = cb.user_data;
        let call: *const ViskaCall = &self.call;
        // SAFETY (every block below): a callback of the application, called as documented:
        // `call` is lent for the duration of the callback, pointers given are valid
        // meanwhile.
        match update {
            CallUpdate::StateChanged(state) => {
                if let Some(f) = cb.on_call_state {
                    let state = ViskaCallState::from(state);
                    // SAFETY: see above.
                    unsafe { f(ud, call, &state) };
                }
            }
            CallUpdate::KeysReady { sas, trust } => {
                if let Some(f) = cb.on_keys_ready {
                    let sas = c_string(sas);
                    // SAFETY: see above.
                    unsafe { f(ud, call, sas.as_ptr(), trust.into()) };
                }
            }
            CallUpdate::TrustChanged(trust) => {
                if let Some(f) = cb.on_trust_changed {
                    // SAFETY: see above.
                    unsafe { f(ud, call, trust.into()) };
                }
            }
            CallUpdate::Dtmf {
                event, duration_ms, ..
            } => {
                if let Some(f) = cb.on_dtmf {
                    // DTMF keys are ASCII.
                    let digit = u8::try_from(event.to_char()).unwrap_or(b'?') as c_char;
                    // SAFETY: see above.
                    unsafe { f(ud, call, digit, duration_ms) };
                }
            }
            CallUpdate::Data { data, .. } => {
                if let Some(f) = cb.on_data {
                    // SAFETY: see above.
                    unsafe { f(ud, call, data.as_ptr(), data.len()) };
                }
            }
            CallUpdate::PeerHold { on_hold, .. } => {
                if let Some(f) = cb.on_peer_hold {
                    // SAFETY: see above.
                    unsafe { f(ud, call, on_hold) };
                }
            }
            CallUpdate::PeerMuted { muted, .. } => {
                if let Some(f) = cb.on_peer_mute {
                    // SAFETY: see above.
                    unsafe { f(ud, call, muted) };
                }
            }
            CallUpdate::Stats(stats) => {
                if let Some(f) = cb.on_stats {
                    let stats = ViskaCallStats::from(&stats);
                    // SAFETY: see above.
                    unsafe { f(ud, call, &stats) };
                }
            }
            CallUpdate::Audio(event) => {
                if let Some(f) = cb.on_audio_event {
                    let (kind, direction, detail) = match event {
                        AudioEvent::DeviceLost { direction } => (
                            ViskaAudioEventKind::DeviceLost,
                            direction.into(),
                            String::new(),
                        ),
                        AudioEvent::DeviceSwitched { direction, name } => {
                            (ViskaAudioEventKind::DeviceSwitched, direction.into(), name)
                        }
                        AudioEvent::DeviceRecovered { direction, name } => {
                            (ViskaAudioEventKind::DeviceRecovered, direction.into(), name)
                        }
                        AudioEvent::SwitchFailed { direction, error } => {
                            (ViskaAudioEventKind::SwitchFailed, direction.into(), error)
                        }
                        AudioEvent::StartFailed { error } => (
                            ViskaAudioEventKind::StartFailed,
                            ViskaAudioDirection::None,
                            error,
                        ),
                        other => (
                            ViskaAudioEventKind::Other,
                            ViskaAudioDirection::None,
                            format!("{other:?}"),
                        ),
                    };
                    let detail: CString = c_string(detail);
                    // SAFETY: see above.
                    unsafe { f(ud, call, kind, direction, detail.as_ptr()) };
                }
            }
            CallUpdate::Security(event) => {
                let context = format!("{event:?}");
                self.callbacks.security(call, &event, context);
            }
            _ => {}
        }
    }
}

//! One call: commands, what can be read about it, and its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use viska::{CallHandle, CallUpdate};

use crate::error::{ListenerError, ViskaError};
use crate::identity::PeerIdentity;
use crate::types::{AudioNotice, CallState, CallStats, SecurityNotice, Suite, Trust};

/// An event of one call.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum CallEvent {
    /// The call moved to a new state.
    StateChanged {
        /// The new state.
        state: CallState,
    },
    /// End-to-end keys are established: show the SAS for the users to compare aloud.
    KeysReady {
        /// The short authentication string (two groups of three digits).
        sas: String,
        /// How far the peer's identity is trusted.
        trust: Trust,
    },
    /// The trust in the peer changed (the user verified it).
    TrustChanged {
        /// The new trust.
        trust: Trust,
    },
    /// The peer pressed a DTMF key.
    Dtmf {
        /// Who (1 in a direct call).
        participant: u32,
        /// The key: `0`-`9`, `*`, `#`, `A`-`D`.
        digit: String,
        /// How long it was held, milliseconds.
        duration_ms: u16,
    },
    /// The peer sent opaque call data.
    Data {
        /// Who.
        participant: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The peer muted or unmuted its microphone.
    PeerMuted {
        /// Who.
        participant: u32,
        /// Muted now.
        muted: bool,
    },
    /// The peer put the call on hold or took it off.
    PeerHold {
        /// Who.
        participant: u32,
        /// On hold now.
        on_hold: bool,
    },
    /// Something security-relevant happened in the call.
    Security {
        /// What.
        notice: SecurityNotice,
    },
    /// Statistics, about once a second and once more at the end.
    Stats {
        /// The statistics.
        stats: CallStats,
    },
    /// A sound device was lost or switched, or the call's audio failed to start.
    Audio {
        /// What happened.
        notice: AudioNotice,
    },
}

impl CallEvent {
    fn from_core(update: CallUpdate) -> Option<Self> {
        Some(match update {
            CallUpdate::StateChanged(state) => Self::StateChanged {
                state: state.into(),
            },
            CallUpdate::KeysReady { sas, trust } => Self::KeysReady {
                sas,
                trust: trust.into(),
            },
            CallUpdate::TrustChanged(trust) => Self::TrustChanged {
                trust: trust.into(),
            },
            CallUpdate::Dtmf {
                participant,
                event,
                duration_ms,
            } => Self::Dtmf {
                participant: participant.0,
                digit: event.to_char().to_string(),
                duration_ms,
            },
            CallUpdate::Data { participant, data } => Self::Data {
                participant: participant.0,
                data,
            },
            CallUpdate::PeerMuted { participant, muted } => Self::PeerMuted {
                participant: participant.0,
                muted,
            },
            CallUpdate::PeerHold {
                participant,
                on_hold,
            } => Self::PeerHold {
                participant: participant.0,
                on_hold,
            },
            CallUpdate::Security(event) => Self::Security {
                notice: SecurityNotice::from(&event),
            },
            CallUpdate::Stats(stats) => Self::Stats {
                stats: CallStats::from(&stats),
            },
            CallUpdate::Audio(event) => Self::Audio {
                notice: AudioNotice::from_core(event)?,
            },
            _ => return None,
        })
    }
}

/// Receives one call's events. Called on the phone's dispatcher thread (`vk-<name>-ev`), in
/// order, never while a lock of the library is held. It must not block; it may call back
/// into the call. An error it returns (an exception it throws) is logged and counted, and
/// the call goes on.
#[uniffi::export(foreign)]
pub trait CallListener: Send + Sync {
    /// One event of the call whose id is `call_id` (hex).
    fn on_event(&self, call_id: String, event: CallEvent) -> Result<(), ListenerError>;
}

struct CallAdapter {
    app: Arc<dyn CallListener>,
    failures: Arc<AtomicU64>,
}

impl viska::CallListener for CallAdapter {
    fn on_event(&self, call: viska::proto::CallId, update: CallUpdate) {
        let Some(event) = CallEvent::from_core(update) else {
            return;
        };
        if let Err(e) = self.app.on_event(call.to_string(), event) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a call listener failed; the call goes on");
        }
    }
}

/// What can be read about a call at any time.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct CallInfo {
    /// The call's id (hex), the same at both ends.
    pub call_id: String,
    /// Its state.
    pub state: CallState,
    /// The short authentication string, once keys are ready.
    pub sas: Option<String>,
    /// The peer's identity, once authenticated.
    pub peer: Option<PeerIdentity>,
    /// How far the peer is trusted, once authenticated.
    pub trust: Option<Trust>,
    /// The media's cipher suite, once keys are ready.
    pub suite: Option<Suite>,
    /// The latest statistics.
    pub stats: CallStats,
    /// From dialing (or the first message) to keys ready, milliseconds.
    pub setup_ms: Option<u64>,
}

/// A call, placed or received. Dropping it does not end the call; [`hangup`](Self::hangup)
/// does.
#[derive(Debug, uniffi::Object)]
pub struct Call {
    handle: CallHandle,
    failures: Arc<AtomicU64>,
}

impl Call {
    pub(crate) fn wrap(handle: CallHandle, failures: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Self { handle, failures })
    }

    pub(crate) fn handle(&self) -> &CallHandle {
        &self.handle
    }
}

#[uniffi::export]
impl Call {
    /// The call's id (hex), the same at both ends (CTI systems file calls under it).
    pub fn id(&self) -> String {
        self.handle.id().to_string()
    }

    /// Registers the listener for this call's events, replacing any previous one; the current
    /// state (and, once keys are ready, the SAS) is replayed to it first.
    pub fn set_listener(&self, listener: Arc<dyn CallListener>) {
        self.handle.set_listener(Arc::new(CallAdapter {
            app: listener,
            failures: Arc::clone(&self.failures),
        }));
    }

    /// Answers a ringing incoming call.
    pub fn answer(&self) -> Result<(), ViskaError> {
        Ok(self.handle.answer()?)
    }

    /// Declines a ringing incoming call.
    pub fn reject(&self) -> Result<(), ViskaError> {
        Ok(self.handle.reject()?)
    }

    /// Ends the call (cancels it if not yet answered).
    pub fn hangup(&self) -> Result<(), ViskaError> {
        Ok(self.handle.hangup()?)
    }

    /// Puts the call on hold.
    pub fn hold(&self) -> Result<(), ViskaError> {
        Ok(self.handle.hold()?)
    }

    /// Takes the call off hold.
    pub fn resume(&self) -> Result<(), ViskaError> {
        Ok(self.handle.resume()?)
    }

    /// Mutes or unmutes the microphone.
    pub fn mute(&self, muted: bool) -> Result<(), ViskaError> {
        Ok(self.handle.mute(muted)?)
    }

    /// Sends DTMF digits (`0-9`, `*`, `#`, `A-D`), end-to-end encrypted, each a 100 ms press.
    pub fn send_dtmf(&self, digits: String) -> Result<(), ViskaError> {
        Ok(self.handle.send_dtmf(&digits)?)
    }

    /// Sends DTMF digits each held for `duration_ms` (40 to 65535).
    pub fn send_dtmf_with_duration(
        &self,
        digits: String,
        duration_ms: u32,
    ) -> Result<(), ViskaError> {
        Ok(self
            .handle
            .send_dtmf_with_duration(&digits, Duration::from_millis(u64::from(duration_ms)))?)
    }

    /// Sends opaque call data (CTI payloads), end-to-end encrypted.
    pub fn send_data(&self, data: Vec<u8>) -> Result<(), ViskaError> {
        Ok(self.handle.send_data(data)?)
    }

    /// The user compared the SAS with the peer and it matched: the peer is verified in this
    /// call and every later one on this phone.
    pub fn mark_verified(&self) -> Result<(), ViskaError> {
        Ok(self.handle.mark_verified()?)
    }

    /// Moves capture to another input device (`None`: the default); the outcome arrives as
    /// an [`AudioNotice`].
    pub fn switch_input_device(&self, device: Option<String>) -> Result<(), ViskaError> {
        Ok(self.handle.switch_input_device(device.as_deref())?)
    }

    /// Moves playback to another output device (`None`: the default).
    pub fn switch_output_device(&self, device: Option<String>) -> Result<(), ViskaError> {
        Ok(self.handle.switch_output_device(device.as_deref())?)
    }

    /// The call's state now.
    pub fn state(&self) -> CallState {
        self.handle.state().into()
    }

    /// The SAS to compare, once keys are ready.
    pub fn sas(&self) -> Option<String> {
        self.handle.sas()
    }

    /// Everything readable about the call now.
    pub fn info(&self) -> CallInfo {
        let s = self.handle.snapshot();
        CallInfo {
            call_id: s.call_id.to_string(),
            state: s.state.into(),
            sas: s.sas.clone(),
            peer: s.peer.as_ref().map(PeerIdentity::from),
            trust: s.trust.map(Into::into),
            suite: s.suite.and_then(Suite::from_core),
            stats: CallStats::from(&s.stats),
            setup_ms: s
                .setup_time
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The latest statistics.
    pub fn stats(&self) -> CallStats {
        CallStats::from(&self.handle.stats())
    }

    /// Whether the call has ended and its teardown is complete.
    pub fn is_ended(&self) -> bool {
        self.handle.is_ended()
    }

    /// Blocks until the call has ended or `timeout_ms` passed; returns whether it ended. Not
    /// from a listener.
    pub fn wait_ended(&self, timeout_ms: u32) -> bool {
        self.handle
            .wait_ended(Duration::from_millis(u64::from(timeout_ms)))
    }
}

//! Plain values that cross the boundary: states, reasons, statistics, notices.

use viska::call::{self as core_call, HandshakeStage};
use viska::phone::{AudioDirection as CoreDirection, AudioEvent};
use viska::sframe::CipherSuite;

/// How far a peer's identity is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Trust {
    /// The identity is one the user verified (compared the SAS or a safety number).
    Verified,
    /// First contact: compare the SAS to verify.
    Unverified,
    /// A different identity than the one expected: possible interception, warn the user.
    KeyChanged,
}

impl From<core_call::Trust> for Trust {
    fn from(t: core_call::Trust) -> Self {
        match t {
            core_call::Trust::Verified => Self::Verified,
            core_call::Trust::KeyChanged => Self::KeyChanged,
            _ => Self::Unverified,
        }
    }
}

/// Which end did something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Side {
    /// This phone (its user, or one of its timers).
    Local,
    /// The peer.
    Remote,
}

impl From<core_call::Side> for Side {
    fn from(s: core_call::Side) -> Self {
        match s {
            core_call::Side::Local => Self::Local,
            core_call::Side::Remote => Self::Remote,
        }
    }
}

/// Why a call ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum EndReason {
    /// An answered call was hung up.
    Hangup {
        /// Who hung up.
        by: Side,
        /// The reason given (`normal`, `security`, ...).
        reason: String,
    },
    /// The callee refused the call.
    Rejected {
        /// Who refused.
        by: Side,
        /// The reason given (`declined`, ...).
        reason: String,
    },
    /// The callee was busy.
    Busy {
        /// Who was busy.
        by: Side,
    },
    /// The caller gave up before an answer.
    Cancelled {
        /// Who gave up.
        by: Side,
    },
    /// Nobody answered in time.
    NoAnswer,
    /// The call could not be set up in time.
    SetupTimeout,
    /// The end-to-end handshake failed (a security event says why).
    HandshakeFailed,
    /// The peer broke the protocol.
    ProtocolError,
    /// The connection could not be made, or was lost.
    ConnectionLost,
    /// The peer's phone refused the connection before any end-to-end work; try again later.
    ConnectionRefused,
}

impl From<core_call::EndReason> for EndReason {
    fn from(r: core_call::EndReason) -> Self {
        use core_call::EndReason as R;
        match r {
            R::Hangup { by, reason } => Self::Hangup {
                by: by.into(),
                reason: reason_name(reason),
            },
            R::Rejected { by, reason } => Self::Rejected {
                by: by.into(),
                reason: reason_name(reason),
            },
            R::Busy { by } => Self::Busy { by: by.into() },
            R::Cancelled { by } => Self::Cancelled { by: by.into() },
            R::NoAnswer => Self::NoAnswer,
            R::SetupTimeout => Self::SetupTimeout,
            R::HandshakeFailed => Self::HandshakeFailed,
            R::ConnectionLost => Self::ConnectionLost,
            R::ConnectionRefused => Self::ConnectionRefused,
            _ => Self::ProtocolError,
        }
    }
}

/// A protocol reason code as a lowercase word (`normal`, `declined`, `security`...).
fn reason_name(reason: core_call::Reason) -> String {
    format!("{reason:?}").to_lowercase()
}

/// Where a call is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum CallState {
    /// Created, nothing sent or received yet.
    Idle,
    /// The end-to-end handshake is under way.
    Handshaking,
    /// An incoming call rings here: answer or reject it.
    Ringing,
    /// The peer's phone rings.
    Alerting,
    /// Answered.
    Active {
        /// This end put the call on hold.
        local_hold: bool,
        /// The peer put the call on hold.
        remote_hold: bool,
        /// This end's microphone is muted.
        muted: bool,
    },
    /// Over.
    Ended {
        /// Why.
        reason: EndReason,
    },
}

impl From<core_call::CallState> for CallState {
    fn from(s: core_call::CallState) -> Self {
        use core_call::CallState as S;
        match s {
            S::Idle => Self::Idle,
            S::Handshaking => Self::Handshaking,
            S::Ringing => Self::Ringing,
            S::Alerting => Self::Alerting,
            S::Active {
                local_hold,
                remote_hold,
                muted,
            } => Self::Active {
                local_hold,
                remote_hold,
                muted,
            },
            S::Ended(reason) => Self::Ended {
                reason: reason.into(),
            },
            _ => Self::Idle,
        }
    }
}

/// A call's statistics (about once a second, and once more at its end).
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct CallStats {
    /// Media packets sent.
    pub packets_sent: u64,
    /// Media packets received and authenticated (late ones included).
    pub packets_received: u64,
    /// Frames whose packet was not there in time to be played (pauses are not losses).
    pub packets_lost: u64,
    /// Packets that came after their frame was played (counted lost as well).
    pub packets_late: u64,
    /// Interarrival jitter, milliseconds.
    pub jitter_ms: f64,
    /// Smoothed round-trip time, milliseconds, once measured.
    pub rtt_ms: Option<f64>,
    /// The encoder's target bitrate, bits per second.
    pub bitrate_bps: u32,
    /// Opus payload sent over the last interval, bits per second.
    pub send_bitrate_bps: u32,
    /// Frames (media and control) that failed authentication or decryption.
    pub decrypt_failures: u64,
    /// Frames replaced by concealment.
    pub concealed_frames: u64,
    /// Frames recovered from forward error correction.
    pub fec_recovered: u64,
    /// Loss in percent of the frames due.
    pub loss_percent: f64,
    /// Concealed frames in percent of the frames due: the loss the listener hears.
    pub concealed_percent: f64,
}

impl From<&core_call::CallStats> for CallStats {
    fn from(s: &core_call::CallStats) -> Self {
        Self {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.packets_lost,
            packets_late: s.packets_late,
            jitter_ms: s.jitter_ms,
            rtt_ms: s.rtt_ms,
            bitrate_bps: s.bitrate_bps,
            send_bitrate_bps: s.send_bitrate_bps,
            decrypt_failures: s.decrypt_failures,
            concealed_frames: s.concealed_frames,
            fec_recovered: s.fec_recovered,
            loss_percent: s.loss_percent(),
            concealed_percent: s.concealed_percent(),
        }
    }
}

/// What kind of security-relevant thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum SecurityKind {
    /// An encrypted control message failed authentication or replay checks.
    ControlDecryptFailed,
    /// An authenticated control message did not parse.
    MalformedControl,
    /// The peer's identity differs from the expected one.
    KeyChanged,
    /// The end-to-end handshake failed: a substituted key, a man in the middle, a downgrade.
    HandshakeFailed,
    /// The peer ended the handshake because one of its checks failed.
    HandshakeRefusedByPeer,
    /// The peer stopped in the middle of the handshake.
    HandshakeAbandoned,
    /// An incoming connection failed its QUIC/TLS handshake.
    TransportHandshakeFailed,
    /// An incoming connection did not complete TLS in time.
    TransportHandshakeTimedOut,
    /// Media of a participant was refused (forged, replayed, unknown key).
    MediaRejected,
    /// Something this version of the bindings does not name.
    Other,
}

/// A security-relevant event: never fatal by itself, always worth showing or logging.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct SecurityNotice {
    /// What happened.
    pub kind: SecurityKind,
    /// A description for logs (no key material).
    pub detail: String,
    /// A running count where the event carries one (failures, refused datagrams), else 0.
    pub count: u64,
    /// The participant concerned, where there is one.
    pub participant: Option<u32>,
}

impl From<&core_call::SecurityEvent> for SecurityNotice {
    fn from(e: &core_call::SecurityEvent) -> Self {
        use core_call::SecurityEvent as E;
        let (kind, count, participant) = match e {
            E::ControlDecryptFailed { failures } => {
                (SecurityKind::ControlDecryptFailed, *failures, None)
            }
            E::MalformedControl(_) => (SecurityKind::MalformedControl, 0, None),
            E::KeyChanged { .. } => (SecurityKind::KeyChanged, 0, None),
            E::HandshakeFailed(_) => (SecurityKind::HandshakeFailed, 0, None),
            E::HandshakeRefusedByPeer => (SecurityKind::HandshakeRefusedByPeer, 0, None),
            E::HandshakeAbandoned { stage } => {
                let at = match stage {
                    HandshakeStage::AfterMessage2 => 2,
                    _ => 3,
                };
                (SecurityKind::HandshakeAbandoned, at, None)
            }
            E::TransportHandshakeFailed => (SecurityKind::TransportHandshakeFailed, 0, None),
            E::TransportHandshakeTimedOut => (SecurityKind::TransportHandshakeTimedOut, 0, None),
            E::MediaRejected {
                participant, count, ..
            } => (SecurityKind::MediaRejected, *count, Some(participant.0)),
            _ => (SecurityKind::Other, 0, None),
        };
        Self {
            kind,
            detail: format!("{e:?}"),
            count,
            participant,
        }
    }
}

/// Which way audio flows through a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum AudioDirection {
    /// The microphone.
    Input,
    /// The speaker or headset.
    Output,
}

impl From<CoreDirection> for AudioDirection {
    fn from(d: CoreDirection) -> Self {
        match d {
            CoreDirection::Input => Self::Input,
            CoreDirection::Output => Self::Output,
        }
    }
}

/// What happened to a call's sound devices.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum AudioNotice {
    /// The device stopped working and could not be opened again; the call goes on (silence
    /// sent, or nothing played), reopening goes on in the background (`DeviceRecovered`), and
    /// another device can be chosen.
    DeviceLost {
        /// Which device.
        direction: AudioDirection,
    },
    /// The device's stream was lost and the library opened it again (or the default device in
    /// its place): audio flows again.
    DeviceRecovered {
        /// Which device.
        direction: AudioDirection,
        /// The device now in use.
        name: String,
    },
    /// A device switch completed.
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
        detail: String,
    },
    /// The call's audio could not start; the call is ended.
    StartFailed {
        /// Why.
        detail: String,
    },
}

impl AudioNotice {
    pub(crate) fn from_core(e: AudioEvent) -> Option<Self> {
        Some(match e {
            AudioEvent::DeviceLost { direction } => Self::DeviceLost {
                direction: direction.into(),
            },
            AudioEvent::DeviceRecovered { direction, name } => Self::DeviceRecovered {
                direction: direction.into(),
                name,
            },
            AudioEvent::DeviceSwitched { direction, name } => Self::DeviceSwitched {
                direction: direction.into(),
                name,
            },
            AudioEvent::SwitchFailed { direction, error } => Self::SwitchFailed {
                direction: direction.into(),
                detail: error,
            },
            AudioEvent::StartFailed { error } => Self::StartFailed { detail: error },
            _ => return None,
        })
    }
}

/// A sound device the system offers.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AudioDevice {
    /// The name to choose it by.
    pub name: String,
    /// Capture or playback.
    pub direction: AudioDirection,
    /// The system's default for its direction.
    pub is_default: bool,
    /// Preferred sample rate.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
}

/// An SFrame cipher suite for a call's media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Suite {
    /// AES-128-CTR with an 80-bit HMAC-SHA256 tag (RFC 9605 suite 1): the default.
    AesCtr128HmacSha256_80,
    /// AES-128-GCM (RFC 9605 suite 4).
    Aes128Gcm,
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305,
}

impl From<Suite> for CipherSuite {
    fn from(s: Suite) -> Self {
        match s {
            Suite::AesCtr128HmacSha256_80 => CipherSuite::AesCtr128HmacSha256_80,
            Suite::Aes128Gcm => CipherSuite::Aes128GcmSha256,
            Suite::ChaCha20Poly1305 => CipherSuite::ChaCha20Poly1305Sha256,
        }
    }
}

impl Suite {
    pub(crate) fn from_core(s: CipherSuite) -> Option<Self> {
        match s {
            CipherSuite::AesCtr128HmacSha256_80 => Some(Self::AesCtr128HmacSha256_80),
            CipherSuite::Aes128GcmSha256 => Some(Self::Aes128Gcm),
            CipherSuite::ChaCha20Poly1305Sha256 => Some(Self::ChaCha20Poly1305),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

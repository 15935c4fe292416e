//! Call states, end reasons, events and the input/output enums of the state machine.

use std::time::Instant;

use viska_e2ee::direct::{HandshakeError, Sas};
use viska_e2ee::identity::{Fingerprint, PublicIdentity};
use viska_e2ee::keys::{KeyUpdate, ParticipantId};
use viska_proto::{CallId, DtmfEvent, MediaParams, Message, ProtoError, Reason};
use viska_sframe::CipherSuite;

/// Which end of the call this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Places the call: sends `Hello`, the first handshake message and `Invite`.
    Caller,
    /// Receives the call.
    Callee,
}

/// Which side did something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// This end (the application's command or a local timer).
    Local,
    /// The peer.
    Remote,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// An answered call was hung up.
    Hangup {
        /// Who hung up.
        by: Side,
        /// The reason given.
        reason: Reason,
    },
    /// The callee refused the call.
    Rejected {
        /// Who refused (local: this end is the callee).
        by: Side,
        /// The reason given.
        reason: Reason,
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
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The handshake and invitation did not complete within the setup timeout.
    SetupTimeout,
    /// The end-to-end handshake failed (bad signature, wrong binding, no common suite...).
    HandshakeFailed,
    /// The peer broke the protocol (no common version, unsupported media, message out of order
    /// that cannot be ignored).
    ProtocolError,
    /// The connection to the peer could not be established, or it was lost (the peer vanished,
    /// the idle timeout expired, the signaling stream was closed under the call).
    ConnectionLost,
    /// The peer's phone refused the connection before any end-to-end work: it had no place
    /// for another caller not yet authenticated (see `PhoneConfig::max_handshakes` in the
    /// `viska` crate), or was shutting down. Trying again later may work.
    ConnectionRefused,
}

/// How much the peer's identity is trusted, from the expected identity given in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Trust {
    /// The peer's identity is the expected (pinned) one.
    Verified,
    /// No identity was expected: first contact. Compare the SAS to verify.
    Unverified,
    /// An identity was expected and the peer presented a different one: possible interception.
    KeyChanged,
}

/// Where a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallState {
    /// Created; a caller waits for `Command::Dial`, a callee for the caller's first message.
    Idle,
    /// Hello and the end-to-end handshake are under way (and, for the caller, the invitation
    /// until the callee rings).
    Handshaking,
    /// Incoming call alerting the local user (callee).
    Ringing,
    /// The remote user is being alerted (caller).
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
    /// Over; no further output except what was already queued.
    Ended(EndReason),
}

impl CallState {
    /// Whether the call is over.
    pub fn is_ended(&self) -> bool {
        matches!(self, Self::Ended(_))
    }
}

/// Why a media datagram of a participant was refused before it could be played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MediaRejection {
    /// The AEAD tag did not verify: forged, corrupted or under a key we do not hold.
    Authentication,
    /// No key is installed for the frame's KID.
    UnknownKey,
    /// A counter already accepted, or older than the replay window: a replay.
    Replay,
    /// The SFrame header or the decrypted payload is malformed.
    Malformed,
}

/// How far a handshake got before the peer stopped answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeStage {
    /// This end (the responder) answered message 1; message 3 never came.
    AfterMessage2,
    /// This end (the initiator) sent message 3; message 4 never came.
    AfterMessage3,
}

/// A security-relevant occurrence, reported to the application and never fatal by itself.
/// The one type for every layer: the handshake, the control channel and the media path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityEvent {
    /// An encrypted control message failed authentication or replay checks.
    ControlDecryptFailed {
        /// Failures so far in this call.
        failures: u64,
    },
    /// An authenticated control message did not parse.
    MalformedControl(ProtoError),
    /// The peer's identity differs from the expected one.
    KeyChanged {
        /// Fingerprint of the expected identity.
        expected: Fingerprint,
        /// Fingerprint the peer presented.
        actual: Fingerprint,
    },
    /// The end-to-end handshake failed (the call ended): a bad signature (a substituted key or
    /// message, or a TLS session that is not the peer's: a man in the middle), a bad key
    /// confirmation, a SAS commitment that does not open, a downgraded offer, a malformed or
    /// out-of-order message, a pin mismatch.
    HandshakeFailed(HandshakeError),
    /// The peer ended the handshake because one of its checks failed (it sent
    /// `Hangup(Security)`; which check, it does not say). Seen at the responder when a man in
    /// the middle terminates TLS: the initiator's signature check fails, not the responder's.
    HandshakeRefusedByPeer,
    /// The peer stopped in the middle of the handshake (the call ended without keys): harmless
    /// now and then (a caller that gave up), a probe or an attack when repeated.
    HandshakeAbandoned {
        /// How far it got.
        stage: HandshakeStage,
    },
    /// An incoming connection failed its QUIC/TLS handshake (before any end-to-end work): a
    /// scanner, a client of another protocol, or a certificate chain (refused).
    TransportHandshakeFailed,
    /// An incoming connection did not complete its TLS handshake in time (a stalled client
    /// holding a place).
    TransportHandshakeTimedOut,
    /// Media datagrams of a participant were refused: forged, replayed, malformed, or under an
    /// unknown key. Raised at most once a second per participant and reason while it goes on;
    /// `count` is the running total for the participant and reason.
    MediaRejected {
        /// Whose stream (the KID named it, or the only peer of a direct call).
        participant: ParticipantId,
        /// Why.
        reason: MediaRejection,
        /// Datagrams refused for this reason so far.
        count: u64,
    },
}

/// Something the application should know. Its `Debug` output leaves out the SAS, the DTMF
/// keys and the bytes of call data (their length is shown).
#[non_exhaustive]
pub enum CallEvent {
    /// The call moved to a new state.
    StateChanged(CallState),
    /// The end-to-end keys are established: the callee's once message 3 checked out (before it
    /// rings), the caller's once message 4 did. The media keys leave separately, as
    /// [`Output::Keys`]; this event carries what the application may show.
    KeysReady {
        /// The peer's authenticated identity.
        peer: PublicIdentity,
        /// How far that identity is trusted.
        trust: Trust,
        /// The short authentication string to compare.
        sas: Sas,
        /// The SFrame suite the handshake chose.
        suite: CipherSuite,
    },
    /// A callee has its keys and a valid `Invite`: it may ring. The call rings when given
    /// [`Command::Ring`] (its driver first decides whether the phone takes the call and opens
    /// its audio), or is refused with [`Command::Busy`] or [`Command::Abort`].
    Invited {
        /// The call's id from the invitation.
        call_id: CallId,
        /// The caller's authenticated identity.
        peer: PublicIdentity,
        /// How far the identity is trusted.
        trust: Trust,
        /// The caller's media parameters.
        media: MediaParams,
    },
    /// An incoming call is ringing (callee only).
    Incoming {
        /// The call's id from the invitation.
        call_id: CallId,
        /// The caller's authenticated identity.
        peer: PublicIdentity,
        /// How far the identity is trusted.
        trust: Trust,
        /// The caller's media parameters.
        media: MediaParams,
    },
    /// Whether media should flow now; changes with answer, hold, resume and mute.
    MediaDirection {
        /// Capture and send audio.
        send: bool,
        /// Receive and play audio.
        receive: bool,
    },
    /// The peer pressed a DTMF key.
    Dtmf {
        /// The key.
        event: DtmfEvent,
        /// Tone duration in milliseconds.
        duration_ms: u16,
    },
    /// The peer sent opaque call data.
    Data(Vec<u8>),
    /// The peer muted or unmuted its microphone (informational).
    RemoteMute(bool),
    /// The peer reported how our media reaches it; the media path adapts its FEC to it.
    ReceptionReport {
        /// Frames lost in transit, per thousand, over the peer's last report interval.
        loss_permille: u16,
        /// Interarrival jitter the peer measures, in milliseconds.
        jitter_ms: u16,
    },
    /// A security event.
    Security(SecurityEvent),
    /// The trust in the peer's identity changed during the call (the user verified it).
    TrustChanged(Trust),
}

impl std::fmt::Debug for CallEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = format_args!("***");
        match self {
            Self::StateChanged(state) => f.debug_tuple("StateChanged").field(state).finish(),
            Self::KeysReady {
                peer, trust, suite, ..
            } => f
                .debug_struct("KeysReady")
                .field("peer", peer)
                .field("trust", trust)
                .field("sas", &hidden)
                .field("suite", suite)
                .finish(),
            Self::Invited {
                call_id,
                peer,
                trust,
                media,
            } => f
                .debug_struct("Invited")
                .field("call_id", call_id)
                .field("peer", peer)
                .field("trust", trust)
                .field("media", media)
                .finish(),
            Self::Incoming {
                call_id,
                peer,
                trust,
                media,
            } => f
                .debug_struct("Incoming")
                .field("call_id", call_id)
                .field("peer", peer)
                .field("trust", trust)
                .field("media", media)
                .finish(),
            Self::MediaDirection { send, receive } => f
                .debug_struct("MediaDirection")
                .field("send", send)
                .field("receive", receive)
                .finish(),
            Self::Dtmf { duration_ms, .. } => f
                .debug_struct("Dtmf")
                .field("event", &hidden)
                .field("duration_ms", duration_ms)
                .finish(),
            Self::Data(data) => f
                .debug_struct("Data")
                .field("len", &data.len())
                .finish_non_exhaustive(),
            Self::RemoteMute(muted) => f.debug_tuple("RemoteMute").field(muted).finish(),
            Self::ReceptionReport {
                loss_permille,
                jitter_ms,
            } => f
                .debug_struct("ReceptionReport")
                .field("loss_permille", loss_permille)
                .field("jitter_ms", jitter_ms)
                .finish(),
            Self::Security(event) => f.debug_tuple("Security").field(event).finish(),
            Self::TrustChanged(trust) => f.debug_tuple("TrustChanged").field(trust).finish(),
        }
    }
}

/// What the application asks for. Its `Debug` output leaves out DTMF keys and the bytes of
/// call data.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Start the call (caller, in `Idle`).
    Dial,
    /// Ring (callee, after [`CallEvent::Invited`]): tells the caller, and reveals the last
    /// handshake message, which the caller needs for the SAS. The application must have been
    /// told of the call first (`docs/protocol-handshake.md` §3.10).
    Ring,
    /// Answer the ringing call (callee, in `Ringing`).
    Answer,
    /// Refuse the incoming call (callee, before answering).
    Reject,
    /// Refuse the incoming call as busy (callee, before answering).
    Busy,
    /// End the call: cancels an unanswered outgoing call, rejects an unanswered incoming one,
    /// hangs up an answered one.
    Hangup,
    /// End the call because this end cannot go on (its audio failed to start, the phone is
    /// shutting down): like [`Command::Hangup`], but the reason is given to the peer in
    /// `Hangup` (an answered call) or `Reject` (a callee before answering) and kept in the
    /// local [`EndReason`]. A caller before the answer cancels, which carries no reason.
    Abort(Reason),
    /// Put the call on hold (in `Active`, not already on local hold).
    Hold,
    /// Take the call off hold (in `Active`, on local hold).
    Resume,
    /// Mute (`true`) or unmute the microphone (in `Active`).
    Mute(bool),
    /// Tell the peer how its media reaches us (in `Active`; sent end-to-end encrypted).
    SendReceptionReport {
        /// Frames lost in transit, per thousand, since the previous report.
        loss_permille: u16,
        /// Interarrival jitter in milliseconds.
        jitter_ms: u16,
    },
    /// Send DTMF keys (`0-9 * # A-D`), one encrypted message per key (in `Active`), each a
    /// 100 ms tone.
    SendDtmf(String),
    /// Like [`Command::SendDtmf`], each key held for `duration_ms` (1..=65535; a long press,
    /// or the tone length an IVR on the far side expects).
    SendDtmfTones {
        /// The keys.
        digits: String,
        /// How long each key is held, in milliseconds.
        duration_ms: u16,
    },
    /// Send opaque call data end-to-end encrypted (once keys are ready, until the call ends).
    SendData(Vec<u8>),
    /// The user compared the SAS with the peer and it matched: the peer's identity is
    /// trusted as verified from now on (once keys are ready, until the call ends). Also
    /// after a key change: the user has checked the new key.
    MarkVerified,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SendDtmf(digits) => f
                .debug_struct("SendDtmf")
                .field("keys", &digits.len())
                .finish_non_exhaustive(),
            Self::SendDtmfTones {
                digits,
                duration_ms,
            } => f
                .debug_struct("SendDtmfTones")
                .field("keys", &digits.len())
                .field("duration_ms", duration_ms)
                .finish_non_exhaustive(),
            Self::SendData(data) => f
                .debug_struct("SendData")
                .field("len", &data.len())
                .finish_non_exhaustive(),
            Self::Abort(reason) => f.debug_tuple("Abort").field(reason).finish(),
            Self::Mute(on) => f.debug_tuple("Mute").field(on).finish(),
            Self::SendReceptionReport {
                loss_permille,
                jitter_ms,
            } => f
                .debug_struct("SendReceptionReport")
                .field("loss_permille", loss_permille)
                .field("jitter_ms", jitter_ms)
                .finish(),
            other => f.write_str(other.name()),
        }
    }
}

impl Command {
    /// The command's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dial => "Dial",
            Self::Ring => "Ring",
            Self::Answer => "Answer",
            Self::Reject => "Reject",
            Self::Busy => "Busy",
            Self::Hangup => "Hangup",
            Self::Abort(_) => "Abort",
            Self::Hold => "Hold",
            Self::Resume => "Resume",
            Self::Mute(_) => "Mute",
            Self::SendDtmf(_) => "SendDtmf",
            Self::SendDtmfTones { .. } => "SendDtmfTones",
            Self::SendReceptionReport { .. } => "SendReceptionReport",
            Self::SendData(_) => "SendData",
            Self::MarkVerified => "MarkVerified",
        }
    }
}

/// Everything that drives a call.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed: fire due timers.
    Timeout(Instant),
    /// A signaling message arrived from the peer.
    Signal(Instant, Message),
    /// The application asks for something.
    Command(Instant, Command),
    /// The transport under the call is gone (the connection was lost or refused, the
    /// signaling stream broke): the call ends with this reason, nothing is sent.
    Closed(Instant, EndReason),
}

/// Everything a call produces. Drain [`crate::Call::poll_output`] until it returns `Timeout`.
#[derive(Debug)]
pub enum Output {
    /// Send this message to the peer on the signaling stream, in order.
    Transmit(Message),
    /// Tell the application.
    Event(CallEvent),
    /// Media keys for the media path: the key-source seam (the direct handshake is this
    /// call's key source). Never an application event.
    Keys(KeyUpdate),
    /// Nothing more to do until this instant (or the next input): then pass `Input::Timeout`.
    Timeout(Instant),
}

//! The direct 1:1 handshake: four messages over a reliable, ordered channel (a QUIC stream)
//! between two identities, no IO.
//!
//! ```text
//! initiator (QUIC client)                         responder (QUIC server)
//!   initiate()  -- msg 1: offer, ephemeral, identity, nonce, SAS commitment -->  handle_message
//!   handle_message <-- msg 2: choice, ephemeral, identity, SAS commitment,   = Send(msg 2)
//!                         signature, MAC --
//!   = Send(msg 3)  -- msg 3: SAS nonce, signature, MAC -->                      handle_message
//!                                                     = CompleteWithReveal(keys, msg 4):
//!                                                       tell the application, then send msg 4
//!   handle_message <-- msg 4: SAS nonce --
//!   = Complete(keys)
//! ```
//!
//! Both signatures cover a transcript hash of a prologue (what the carrying protocol agreed
//! before: in a call, both `Hello`s), both messages 1 and 2 and a value exported from the TLS
//! session ([`ChannelBinding`]), so an attacker who swaps ephemerals, strips the offer, narrows a
//! `Hello` or terminates TLS in the middle makes a signature fail. Each side commits to a SAS
//! nonce before it sees the other's, and the SAS depends on both: no side can compute it before
//! both have fixed all their inputs, and the responder reveals its nonce (message 4) only after
//! its application has been told of the call, so every guess by a man in the middle is a call
//! someone sees. Any error is final: the handshake moves to a failed state, and the caller
//! should close the stream (no abort message is sent). The byte layouts, the key schedule and
//! the argument are in `docs/protocol-handshake.md`.

mod schedule;
mod wire;

use std::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use viska_sframe::{CipherSuite, SendKey};
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroizing;

use crate::identity::{Fingerprint, IdentityKeyPair, PublicIdentity};
pub use crate::keys::SframeKey;
use schedule::{KeySchedule, sas_commitment, signed_content, transcript_hash};
use wire::{Finish, Init, MAX_OFFER_ENTRIES, Message, Offer, Response};

/// The handshake protocol version this implementation speaks. Version 1 (three messages, the
/// initiator alone committing to the SAS) is not accepted: its initiator could compute the SAS
/// before committing to its inputs.
pub const PROTOCOL_VERSION: u16 = 2;
/// All versions this implementation supports, in the order it offers them.
const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// Errors of the direct handshake. Every one ends the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message does not follow the byte layout (truncated, trailing bytes, bad field).
    #[error("malformed handshake message: {0}")]
    Malformed(MalformedReason),
    /// A well-formed message arrived that this side does not expect now (e.g. a replay).
    #[error("unexpected {received:?} message for the {role:?} in its current state")]
    UnexpectedMessage {
        /// This side's role.
        role: Role,
        /// The type of the message received.
        received: MessageType,
    },
    /// No protocol version both sides support; or the responder chose a version not offered.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The highest version offered (responder side) or the version chosen (initiator side).
        version: u16,
    },
    /// The initiator offered no cipher suite the responder accepts.
    #[error("no common cipher suite")]
    NoCommonSuite,
    /// The responder chose a cipher suite the initiator did not offer.
    #[error("responder chose suite {suite:#06x}, which was not offered")]
    SuiteNotOffered {
        /// Wire id of the suite chosen.
        suite: u16,
    },
    /// The offer the responder received differs from the one the initiator sent: someone on
    /// the path rewrote it, for example to strip the strongest suite.
    #[error("offer was altered in transit (downgrade attempt)")]
    DowngradeDetected,
    /// The peer's signature over the transcript does not verify: a substituted key or message,
    /// a different prologue (a rewritten `Hello`), or another TLS session than the peer's (a
    /// man in the middle terminating TLS: the exporter values differ).
    #[error("peer's transcript signature does not verify")]
    BadSignature,
    /// The peer's key-confirmation MAC is wrong.
    #[error("peer's key confirmation failed")]
    BadConfirmation,
    /// A SAS nonce revealed (message 3 or 4) does not match its commitment (message 1 or 2).
    #[error("SAS nonce does not match its commitment")]
    CommitmentMismatch,
    /// The X25519 result is all zero: the peer sent a low-order ephemeral key.
    #[error("non-contributory (low-order) ephemeral key")]
    NonContributory,
    /// The peer's identity is not the pinned one.
    #[error("peer identity {received} is not the pinned identity {expected}")]
    PinnedIdentityMismatch {
        /// Fingerprint of the pinned identity.
        expected: Fingerprint,
        /// Fingerprint of the identity the peer presented.
        received: Fingerprint,
    },
    /// The handshake already completed or failed; it accepts no more messages.
    #[error("handshake already finished")]
    Finished,
    /// The configuration cannot be used.
    #[error("invalid handshake configuration: {0}")]
    InvalidConfig(&'static str),
    /// A bug in this crate, not something the peer or caller did.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a message was rejected as [`HandshakeError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The message ends before a field it must contain.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// The message does not start with the handshake magic.
    BadMagic,
    /// The type byte names no handshake message.
    UnknownMessageType(u8),
    /// A version or suite list is empty.
    EmptyList,
    /// A version or suite list has more than 8 entries.
    ListTooLong,
    /// An identity key is not a valid, non-weak Ed25519 public key.
    InvalidIdentityKey,
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::TrailingBytes => f.write_str("trailing bytes"),
            Self::BadMagic => f.write_str("bad magic"),
            Self::UnknownMessageType(byte) => write!(f, "unknown message type {byte}"),
            Self::EmptyList => f.write_str("empty version or suite list"),
            Self::ListTooLong => f.write_str("version or suite list too long"),
            Self::InvalidIdentityKey => f.write_str("invalid identity key"),
        }
    }
}

/// The four handshake messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Message 1, initiator to responder (type byte 1).
    Init = 1,
    /// Message 2, responder to initiator (type byte 2).
    Response = 2,
    /// Message 3, initiator to responder (type byte 3).
    Finish = 3,
    /// Message 4, responder to initiator (type byte 4): the responder's SAS nonce.
    Reveal = 4,
}

/// Which end of the handshake a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends message 1; the QUIC client, i.e. the caller.
    Initiator,
    /// Answers message 1; the QUIC server, i.e. the callee.
    Responder,
}

/// Checks the magic and returns the type of a handshake message without parsing the rest.
///
/// # Errors
/// [`HandshakeError::Malformed`] if `message` is not a handshake message.
pub fn message_type(message: &[u8]) -> Result<MessageType, HandshakeError> {
    wire::parse_type(message)
}

/// Fully parses a handshake message and returns its type: what [`DirectHandshake`] accepts as
/// well-formed, without any state (for fuzzing and diagnostics).
///
/// # Errors
/// [`HandshakeError::Malformed`] with the first layout violation found.
pub fn validate_message(message: &[u8]) -> Result<MessageType, HandshakeError> {
    Message::parse(message).map(|parsed| parsed.message_type())
}

/// What ties the handshake to the TLS 1.3 session carrying it: 32 bytes exported from that
/// session (RFC 8446 §7.5) with RFC 9266's `tls-exporter` label, as *this* side's TLS stack
/// computed them. Both ends of one session agree; an on-path TLS terminator holds two
/// sessions with different values, so the two transcripts, and hence the signatures, disagree.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBinding {
    /// `TLS-Exporter("EXPORTER-Channel-Binding", "", 32)` of the connection.
    pub tls_exporter: [u8; 32],
}

impl ChannelBinding {
    /// The exporter label of RFC 9266 (`tls-exporter` channel binding).
    pub const EXPORTER_LABEL: &'static [u8] = b"EXPORTER-Channel-Binding";
    /// Bytes exported.
    pub const LEN: usize = 32;
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but derived from the session's secrets: no need to print it.
        f.write_str("ChannelBinding(***)")
    }
}

/// What one side brings to a handshake.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// This side's long-term identity.
    pub identity: IdentityKeyPair,
    /// Cipher suites this side accepts, most preferred first (1 to 8, no duplicates). The
    /// responder uses the initiator's preference order among the suites both accept.
    pub suites: Vec<CipherSuite>,
    /// The TLS session the handshake runs in.
    pub binding: ChannelBinding,
    /// The peer identity this side has pinned, if any. Any other peer fails the handshake with
    /// [`HandshakeError::PinnedIdentityMismatch`].
    pub expected_peer: Option<PublicIdentity>,
}

impl HandshakeConfig {
    /// Wire ids of the configured suites, after checking the list is usable.
    fn suite_ids(&self) -> Result<Vec<u16>, HandshakeError> {
        if self.suites.is_empty() {
            return Err(HandshakeError::InvalidConfig("no cipher suites"));
        }
        if self.suites.len() > MAX_OFFER_ENTRIES {
            return Err(HandshakeError::InvalidConfig("more than 8 cipher suites"));
        }
        let mut ids = Vec::with_capacity(self.suites.len());
        for suite in &self.suites {
            // The suite ids are the SFrame registry's, defined once in `viska-sframe`.
            let id = suite.id();
            if ids.contains(&id) {
                return Err(HandshakeError::InvalidConfig("duplicate cipher suite"));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    fn check_pin(&self, peer: &PublicIdentity) -> Result<(), HandshakeError> {
        match &self.expected_peer {
            Some(expected) if expected != peer => Err(HandshakeError::PinnedIdentityMismatch {
                expected: expected.fingerprint(),
                received: peer.fingerprint(),
            }),
            _ => Ok(()),
        }
    }
}

/// The short authentication string: 6 decimal digits both people read aloud and compare.
///
/// Displayed as `"123 456"`. `Debug` prints `***`; equality is constant time. Why six digits and
/// why an attacker cannot search for a match is explained in `docs/protocol-handshake.md`.
#[derive(Clone, Copy)]
pub struct Sas(u32);

impl Sas {
    /// Number of decimal digits.
    pub const DIGITS: usize = 6;

    fn from_u64(value: u64) -> Self {
        // value % 1_000_000 < 2^20, so it fits a u32.
        Self((value % 1_000_000) as u32)
    }

    /// The SAS as a number below 1 000 000.
    pub fn value(&self) -> u32 {
        self.0
    }
}

impl ConstantTimeEq for Sas {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for Sas {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Sas {}

impl fmt::Display for Sas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03} {:03}", self.0 / 1000, self.0 % 1000)
    }
}

impl fmt::Debug for Sas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sas(***)")
    }
}

/// What a completed handshake gives one side. Not `Clone`: each send key moves into the one
/// sender that uses it.
pub struct SessionKeys {
    /// The negotiated SFrame cipher suite.
    pub suite: CipherSuite,
    /// Protects the media this side sends.
    pub media_send: SendKey,
    /// Unprotects the media the peer sends.
    pub media_recv: SframeKey,
    /// Protects end-to-end control data (DTMF, call data) this side sends.
    pub control_send: SendKey,
    /// Unprotects end-to-end control data the peer sends.
    pub control_recv: SframeKey,
    /// The short authentication string to compare with the peer.
    pub sas: Sas,
    /// The peer's identity, proven by its signature.
    pub peer: PublicIdentity,
    /// The transcript hash both sides signed; equal on both ends.
    pub transcript_hash: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("suite", &self.suite)
            .field("media_send", &self.media_send.key_id())
            .field("media_recv", &self.media_recv.key_id)
            .field("control_send", &self.control_send.key_id())
            .field("control_recv", &self.control_recv.key_id)
            .field("sas", &self.sas)
            .field("peer", &self.peer.fingerprint())
            .field("keys", &"***")
            .finish_non_exhaustive()
    }
}

/// Message 4, the responder's SAS nonce: once sent, the initiator can compute the SAS.
///
/// **Send it only after the application has been told of this call** (it rings, or is
/// reported as missed or refused); a responder that refuses the call before telling anyone
/// (busy, unsupported media) never sends it. That is what makes every SAS guess of a man in the
/// middle a call the user sees (`docs/protocol-handshake.md` §3.10).
pub struct Reveal(Vec<u8>);

impl Reveal {
    /// The bytes of message 4, to send on the handshake's channel.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Reveal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reveal(***)")
    }
}

/// What the caller must do after [`DirectHandshake::handle_message`].
// One value per handshake, moved once: boxing the keys would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum HandshakeStep {
    /// Send these bytes to the peer; the handshake continues (responder after message 1:
    /// message 2; initiator after message 2: message 3).
    Send(Vec<u8>),
    /// The handshake is complete on this side (responder, after message 3). Tell the
    /// application of the call, then send the [`Reveal`] (message 4) to the peer.
    CompleteWithReveal(SessionKeys, Reveal),
    /// The handshake is complete; nothing to send (initiator, after message 4).
    Complete(SessionKeys),
}

enum State {
    InitiatorAwaitingResponse {
        ephemeral: EphemeralSecret,
        msg1: Vec<u8>,
        offer: Offer,
        sas_nonce: Zeroizing<[u8; 32]>,
    },
    InitiatorAwaitingReveal {
        pending: Box<PendingKeys>,
        sas_nonce: Zeroizing<[u8; 32]>,
        peer_commitment: [u8; 32],
    },
    ResponderAwaitingInit {
        ephemeral: EphemeralSecret,
        sas_nonce: Zeroizing<[u8; 32]>,
    },
    ResponderAwaitingFinish {
        pending: Box<PendingKeys>,
        sas_nonce: Zeroizing<[u8; 32]>,
        peer_commitment: [u8; 32],
    },
    Finished,
}

/// Keys derived from messages 1 and 2, waiting for the peer's SAS nonce.
struct PendingKeys {
    schedule: KeySchedule,
    suite: CipherSuite,
    peer: PublicIdentity,
    transcript_hash: [u8; 32],
}

/// One side of a direct handshake: a state machine fed with the peer's messages.
///
/// Drive it by passing every message the peer sends to [`DirectHandshake::handle_message`] and
/// sending back whatever the returned [`HandshakeStep`] says, until it yields [`SessionKeys`].
pub struct DirectHandshake {
    role: Role,
    config: HandshakeConfig,
    /// What the carrying protocol agreed before the handshake (both `Hello`s), bound into the
    /// transcript; must be set before message 1 (responder) or 2 (initiator) is handled.
    prologue: Option<Vec<u8>>,
    state: State,
}

impl fmt::Debug for DirectHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::InitiatorAwaitingResponse { .. } => "awaiting message 2",
            State::InitiatorAwaitingReveal { .. } => "awaiting message 4",
            State::ResponderAwaitingInit { .. } => "awaiting message 1",
            State::ResponderAwaitingFinish { .. } => "awaiting message 3",
            State::Finished => "finished",
        };
        f.debug_struct("DirectHandshake")
            .field("role", &self.role)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl DirectHandshake {
    /// Starts a handshake as the initiator; returns the handshake and message 1 to send.
    ///
    /// # Errors
    /// [`HandshakeError::InvalidConfig`] if the suite list is empty, too long or has duplicates.
    pub fn initiate<R: CryptoRng + ?Sized>(
        config: HandshakeConfig,
        rng: &mut R,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let offer = Offer {
            versions: SUPPORTED_VERSIONS.to_vec(),
            suites: config.suite_ids()?,
        };
        let ephemeral = EphemeralSecret::random_from_rng(rng);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let mut sas_nonce = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(sas_nonce.as_mut_slice());
        let msg1 = Init {
            offer: offer.clone(),
            ephemeral: PublicKey::from(&ephemeral).to_bytes(),
            identity: config.identity.public(),
            nonce,
            sas_commitment: sas_commitment(Role::Initiator, &sas_nonce),
        }
        .encode();
        let handshake = Self {
            role: Role::Initiator,
            config,
            prologue: None,
            state: State::InitiatorAwaitingResponse {
                ephemeral,
                msg1: msg1.clone(),
                offer,
                sas_nonce,
            },
        };
        Ok((handshake, msg1))
    }

    /// Prepares the responder side; it waits for message 1.
    ///
    /// # Errors
    /// [`HandshakeError::InvalidConfig`] if the suite list is empty, too long or has duplicates.
    pub fn respond<R: CryptoRng + ?Sized>(
        config: HandshakeConfig,
        rng: &mut R,
    ) -> Result<Self, HandshakeError> {
        config.suite_ids()?;
        let ephemeral = EphemeralSecret::random_from_rng(rng);
        let mut sas_nonce = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(sas_nonce.as_mut_slice());
        Ok(Self {
            role: Role::Responder,
            config,
            prologue: None,
            state: State::ResponderAwaitingInit {
                ephemeral,
                sas_nonce,
            },
        })
    }

    /// Binds `prologue` into the transcript: what the protocol carrying the handshake agreed
    /// before it, byte for byte as both sides must see it (in a Viska call, both `Hello`s,
    /// `docs/protocol-handshake.md` §3.7). Set it before message 1 (responder) or message 2
    /// (initiator) is handled (without one, handling it fails with `InvalidConfig`); a later
    /// call replaces it, and must come before that message too.
    pub fn bind_prologue(&mut self, prologue: &[u8]) {
        self.prologue = Some(prologue.to_vec());
    }

    fn prologue(&self) -> Result<&[u8], HandshakeError> {
        self.prologue
            .as_deref()
            .ok_or(HandshakeError::InvalidConfig(
                "the prologue must be bound first",
            ))
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The cipher suite message 2 chose: the responder's from message 1 on, the initiator's
    /// from message 2 on (before the keys, which need message 4).
    pub fn negotiated_suite(&self) -> Option<CipherSuite> {
        match &self.state {
            State::InitiatorAwaitingReveal { pending, .. }
            | State::ResponderAwaitingFinish { pending, .. } => Some(pending.suite),
            _ => None,
        }
    }

    /// Whether the handshake has completed or failed and accepts no more messages.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// Processes one message from the peer.
    ///
    /// # Errors
    /// Any [`HandshakeError`]; after an error the handshake is finished and every later call
    /// returns [`HandshakeError::Finished`].
    pub fn handle_message(&mut self, message: &[u8]) -> Result<HandshakeStep, HandshakeError> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        if matches!(state, State::Finished) {
            return Err(HandshakeError::Finished);
        }
        let parsed = Message::parse(message)?;
        match (state, parsed) {
            (
                State::ResponderAwaitingInit {
                    ephemeral,
                    sas_nonce,
                },
                Message::Init(init),
            ) => self.on_init(ephemeral, sas_nonce, message, init),
            (
                State::InitiatorAwaitingResponse {
                    ephemeral,
                    msg1,
                    offer,
                    sas_nonce,
                },
                Message::Response(response),
            ) => self.on_response(ephemeral, &msg1, &offer, sas_nonce, response),
            (
                State::ResponderAwaitingFinish {
                    pending,
                    sas_nonce,
                    peer_commitment,
                },
                Message::Finish(finish),
            ) => self.on_finish(*pending, &sas_nonce, &peer_commitment, finish),
            (
                State::InitiatorAwaitingReveal {
                    pending,
                    sas_nonce,
                    peer_commitment,
                },
                Message::Reveal(reveal),
            ) => self.on_reveal(*pending, &sas_nonce, &peer_commitment, reveal),
            (_, other) => Err(HandshakeError::UnexpectedMessage {
                role: self.role,
                received: other.message_type(),
            }),
        }
    }

    /// Responder: message 1 in, message 2 out.
    fn on_init(
        &mut self,
        ephemeral: EphemeralSecret,
        sas_nonce: Zeroizing<[u8; 32]>,
        msg1: &[u8],
        init: Init,
    ) -> Result<HandshakeStep, HandshakeError> {
        let version = init
            .offer
            .versions
            .iter()
            .copied()
            .filter(|version| SUPPORTED_VERSIONS.contains(version))
            .max()
            .ok_or(HandshakeError::UnsupportedVersion {
                version: init.offer.versions.iter().copied().max().unwrap_or(0),
            })?;
        let suite = init
            .offer
            .suites
            .iter()
            .filter_map(|id| CipherSuite::from_id(*id))
            .find(|suite| self.config.suites.contains(suite))
            .ok_or(HandshakeError::NoCommonSuite)?;
        let suite_wire_id = suite.id();
        self.config.check_pin(&init.identity)?;

        let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
        let shared = ephemeral.diffie_hellman(&PublicKey::from(init.ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::NonContributory);
        }

        let mut response = Response {
            version,
            suite: suite_wire_id,
            offer_echo: init.offer.clone(),
            ephemeral: ephemeral_public,
            identity: self.config.identity.public(),
            sas_commitment: sas_commitment(Role::Responder, &sas_nonce),
            signature: [0; 64],
            confirmation: [0; 32],
        };
        let transcript_hash = transcript_hash(
            self.prologue()?,
            msg1,
            &response.encode_body(),
            &self.config.binding,
        );
        let schedule = KeySchedule::new(&transcript_hash, shared.as_bytes());
        response.signature = self
            .config
            .identity
            .sign(&signed_content(Role::Responder, &transcript_hash));
        response.confirmation = schedule.confirmation(Role::Responder, &transcript_hash)?;

        self.state = State::ResponderAwaitingFinish {
            pending: Box::new(PendingKeys {
                schedule,
                suite,
                peer: init.identity,
                transcript_hash,
            }),
            sas_nonce,
            peer_commitment: init.sas_commitment,
        };
        Ok(HandshakeStep::Send(response.encode()))
    }

    /// Initiator: message 2 in, message 3 out. No keys and no SAS yet: they need the
    /// responder's nonce (message 4).
    fn on_response(
        &mut self,
        ephemeral: EphemeralSecret,
        msg1: &[u8],
        offer: &Offer,
        sas_nonce: Zeroizing<[u8; 32]>,
        response: Response,
    ) -> Result<HandshakeStep, HandshakeError> {
        if !offer.versions.contains(&response.version) {
            return Err(HandshakeError::UnsupportedVersion {
                version: response.version,
            });
        }
        if response.offer_echo != *offer {
            return Err(HandshakeError::DowngradeDetected);
        }
        if !offer.suites.contains(&response.suite) {
            return Err(HandshakeError::SuiteNotOffered {
                suite: response.suite,
            });
        }
        let suite =
            CipherSuite::from_id(response.suite).ok_or(HandshakeError::SuiteNotOffered {
                suite: response.suite,
            })?;
        self.config.check_pin(&response.identity)?;

        let transcript_hash = transcript_hash(
            self.prologue()?,
            msg1,
            &response.encode_body(),
            &self.config.binding,
        );
        response
            .identity
            .verify(
                &signed_content(Role::Responder, &transcript_hash),
                &response.signature,
            )
            .map_err(|_| HandshakeError::BadSignature)?;

        let shared = ephemeral.diffie_hellman(&PublicKey::from(response.ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::NonContributory);
        }
        let schedule = KeySchedule::new(&transcript_hash, shared.as_bytes());
        schedule.verify_confirmation(Role::Responder, &transcript_hash, &response.confirmation)?;

        let finish = Finish {
            sas_nonce: *sas_nonce,
            signature: self
                .config
                .identity
                .sign(&signed_content(Role::Initiator, &transcript_hash)),
            confirmation: schedule.confirmation(Role::Initiator, &transcript_hash)?,
        };
        self.state = State::InitiatorAwaitingReveal {
            pending: Box::new(PendingKeys {
                schedule,
                suite,
                peer: response.identity,
                transcript_hash,
            }),
            sas_nonce,
            peer_commitment: response.sas_commitment,
        };
        Ok(HandshakeStep::Send(finish.encode()))
    }

    /// Responder: message 3 in, keys ready, message 4 held for the caller to send once its
    /// application knows of the call.
    fn on_finish(
        &mut self,
        pending: PendingKeys,
        sas_nonce: &[u8; 32],
        commitment: &[u8; 32],
        finish: Finish,
    ) -> Result<HandshakeStep, HandshakeError> {
        pending
            .peer
            .verify(
                &signed_content(Role::Initiator, &pending.transcript_hash),
                &finish.signature,
            )
            .map_err(|_| HandshakeError::BadSignature)?;
        pending.schedule.verify_confirmation(
            Role::Initiator,
            &pending.transcript_hash,
            &finish.confirmation,
        )?;
        if !bool::from(sas_commitment(Role::Initiator, &finish.sas_nonce).ct_eq(commitment)) {
            return Err(HandshakeError::CommitmentMismatch);
        }
        let keys = session_keys(Role::Responder, &pending, &finish.sas_nonce, sas_nonce)?;
        let reveal = Reveal(
            wire::Reveal {
                sas_nonce: *sas_nonce,
            }
            .encode(),
        );
        Ok(HandshakeStep::CompleteWithReveal(keys, reveal))
    }

    /// Initiator: message 4 in, keys ready.
    fn on_reveal(
        &mut self,
        pending: PendingKeys,
        sas_nonce: &[u8; 32],
        commitment: &[u8; 32],
        reveal: wire::Reveal,
    ) -> Result<HandshakeStep, HandshakeError> {
        if !bool::from(sas_commitment(Role::Responder, &reveal.sas_nonce).ct_eq(commitment)) {
            return Err(HandshakeError::CommitmentMismatch);
        }
        let keys = session_keys(Role::Initiator, &pending, sas_nonce, &reveal.sas_nonce)?;
        Ok(HandshakeStep::Complete(keys))
    }
}

fn session_keys(
    role: Role,
    pending: &PendingKeys,
    initiator_nonce: &[u8; 32],
    responder_nonce: &[u8; 32],
) -> Result<SessionKeys, HandshakeError> {
    let (media_send, control_send, media_recv, control_recv) =
        pending.schedule.sframe_keys(role, pending.suite)?;
    Ok(SessionKeys {
        suite: pending.suite,
        media_send,
        media_recv,
        control_send,
        control_recv,
        sas: pending.schedule.sas(initiator_nonce, responder_nonce)?,
        peer: pending.peer,
        transcript_hash: pending.transcript_hash,
    })
}

#[cfg(test)]
mod tests;

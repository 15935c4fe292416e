//! The key source of a Viska group call: one MLS group (RFC 9420, through openmls) per call,
//! whose every epoch becomes SFrame keys exactly as RFC 9605 section 5.2 says, handed to the
//! session through the same seam as the direct handshake's ([`viska_e2ee::keys::KeyUpdate`]).
//!
//! - Ciphersuite `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`; a member's MLS
//!   signature key is its device identity key, held in a basic credential, so the fingerprint,
//!   safety number and verification of direct calls apply to group members too.
//! - Handshake messages are MLS `PublicMessage`s: the delivery service orders them per call
//!   (the first valid commit for an epoch wins) without holding any key.
//! - Keys: [`kid`] (the KID layout and the verification code), [`GroupMember`] (transitions).
//! - State: [`storage`] (in memory, or a database through [`MlsStorage`], so that a device
//!   started again resumes its groups).
//!
//! Like the rest of the call core it reads no clock and does no IO: time is passed in.
#![forbid(unsafe_code)]

pub mod kid;
mod member;
pub mod storage;

pub use member::{Commit, GroupConfig, GroupMember, MLS_SUITE};
pub use storage::{MemoryStorage, MlsStorage};
pub use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId};

use viska_e2ee::identity::PublicIdentity;

/// What a [`GroupMember`] asks of its driver.
#[derive(Debug)]
#[non_exhaustive]
pub enum GroupOutput {
    /// Keys for the session ([`viska_e2ee::keys::KeyUpdate`]).
    Keys(KeyUpdate),
    /// Tell the delivery service that this member holds the keys of this epoch.
    Ready(Epoch),
    /// Something the application should know.
    Event(GroupEvent),
}

/// Something a group member's application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// A device joined the call.
    Joined {
        /// Its participant id (leaf index).
        participant: ParticipantId,
        /// Its identity, as its credential and signature key prove.
        identity: PublicIdentity,
    },
    /// A device left the call.
    Left {
        /// Its participant id.
        participant: ParticipantId,
        /// Its identity.
        identity: PublicIdentity,
    },
    /// The group moved to a new epoch (its receive keys are installed).
    Epoch {
        /// The epoch.
        epoch: Epoch,
        /// Its verification code, the same at every member ([`kid::verification_code`]).
        verification_code: String,
    },
    /// This member now sends under `epoch`.
    Sending {
        /// The epoch.
        epoch: Epoch,
    },
    /// This device was removed from the group.
    Removed,
    /// A group message could not be used.
    Failure {
        /// Why.
        reason: GroupFailure,
    },
}

/// Why a group message was refused: what "I can't hear Bob" is traced back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupFailure {
    /// The bytes are not an MLS message Viska uses.
    Malformed,
    /// A message for an epoch the group has left.
    StaleEpoch,
    /// A message for an epoch the group has not reached (one was missed).
    FutureEpoch,
    /// A signature, membership tag or confirmation did not verify.
    Authentication,
    /// A Welcome this device cannot decrypt or use.
    Undecryptable,
    /// A member whose credential is not its signature key (not a Viska identity).
    CredentialMismatch,
}

impl GroupFailure {
    /// A stable name, for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::StaleEpoch => "stale-epoch",
            Self::FutureEpoch => "future-epoch",
            Self::Authentication => "authentication",
            Self::Undecryptable => "undecryptable",
            Self::CredentialMismatch => "credential-mismatch",
        }
    }
}

/// Errors of the group key source. None leaves the member unusable: it stays in its epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The member is in no group.
    #[error("not in a group")]
    NotInGroup,
    /// The member is in a group already.
    #[error("already in a group")]
    AlreadyInGroup,
    /// No commit of this member is pending.
    #[error("no pending commit")]
    NoPendingCommit,
    /// The group would exceed the leaves a KID can name.
    #[error("a group has at most {} leaves", kid::MAX_LEAVES)]
    TooManyMembers,
    /// Undecodable or not the expected kind of message.
    #[error("malformed group message: {0}")]
    Malformed(String),
    /// A message for an epoch the group has left.
    #[error("message for epoch {}, the group is at {}", message.0, current.0)]
    StaleEpoch {
        /// The message's epoch.
        message: Epoch,
        /// The group's.
        current: Epoch,
    },
    /// A message for an epoch the group has not reached.
    #[error("message for epoch {}, the group is at {}", message.0, current.0)]
    FutureEpoch {
        /// The message's epoch.
        message: Epoch,
        /// The group's.
        current: Epoch,
    },
    /// The message did not verify.
    #[error("group message refused: {0}")]
    Invalid(String),
    /// A Welcome that cannot be used.
    #[error("welcome refused: {0}")]
    Undecryptable(String),
    /// A member's credential is not its signature key.
    #[error("a member's credential is not its identity key")]
    CredentialMismatch,
    /// The MLS library failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// The member's storage failed ([`MlsStorage`]); the operation was rolled back.
    #[error("MLS storage: {0}")]
    Storage(String),
}

impl GroupError {
    /// The failure to report for a refused message, if the error is about one.
    pub fn failure(&self) -> Option<GroupFailure> {
        Some(match self {
            Self::Malformed(_) => GroupFailure::Malformed,
            Self::StaleEpoch { .. } => GroupFailure::StaleEpoch,
            Self::FutureEpoch { .. } => GroupFailure::FutureEpoch,
            Self::Invalid(_) => GroupFailure::Authentication,
            Self::Undecryptable(_) => GroupFailure::Undecryptable,
            Self::CredentialMismatch => GroupFailure::CredentialMismatch,
            _ => return None,
        })
    }
}

//! The key-source seam: what a key exchange (the direct handshake today, MLS for group calls)
//! hands to the media layer, and nothing else.
//!
//! A key source emits [`KeyUpdate`]s; the media layer installs them. The media code never
//! learns where keys come from, so a second key source needs no change there. Send keys are
//! [`SendKey`]s: not `Clone`, moved into the one sender that uses them, whose counter runs on
//! across every rekey (`docs/protocol-sframe.md`, counters across key changes).

use std::fmt;

use viska_sframe::{BaseKey, CipherSuite, KeyId, SendKey};

/// A participant of a call as its key source numbers them: the direct handshake calls its one
/// peer [`ParticipantId::DIRECT_PEER`]; MLS will use the member's leaf index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u32);

impl ParticipantId {
    /// The remote end of a direct (1:1) call.
    pub const DIRECT_PEER: Self = Self(1);
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "participant {}", self.0)
    }
}

/// A key epoch: a direct call has the one epoch 0; an MLS group moves to the next with every
/// commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Epoch(pub u64);

/// An SFrame key id with its base key: a key to *receive* with (receiving cannot reuse a nonce,
/// so this may be copied; keys to send with are [`SendKey`]s).
#[derive(Debug, Clone)]
pub struct SframeKey {
    /// The KID frames protected with this key carry.
    pub key_id: KeyId,
    /// The SFrame base key (Nk bytes for the negotiated suite).
    pub base_key: BaseKey,
}

/// One change to the media keys of a call.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyUpdate {
    /// Protect what this end sends with `key` from now on. The first one opens the sending
    /// side; a later one is a rekey, after which the frame index (the SFrame counter) runs on.
    Send {
        /// The epoch the key belongs to.
        epoch: Epoch,
        /// The cipher suite of the key.
        suite: CipherSuite,
        /// The key, moved into the sender.
        key: SendKey,
    },
    /// Accept the frames `participant` protects with `key`, beside the keys already installed
    /// for it (frames of the previous epoch keep arriving for a while after a change).
    Receive {
        /// Whose frames.
        participant: ParticipantId,
        /// The epoch the key belongs to.
        epoch: Epoch,
        /// The cipher suite of the key.
        suite: CipherSuite,
        /// The key.
        key: SframeKey,
    },
    /// Forget every receive key of an epoch before `epoch`: their grace period is over.
    RetireBefore {
        /// The oldest epoch whose keys stay.
        epoch: Epoch,
    },
    /// `participant` left the call: its keys go, and so does its stream.
    Remove {
        /// Who left.
        participant: ParticipantId,
    },
}

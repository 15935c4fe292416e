//! A contact and its trust, as stored and backed up.

use viska_call::Trust;
use viska_e2ee::identity::PublicIdentity;

/// One contact as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The application's name for the peer.
    pub handle: String,
    /// The identity pinned for it: the first one seen, or the last one verified.
    pub pinned: PublicIdentity,
    /// Whether the user verified `pinned`.
    pub verified: bool,
    /// A different identity seen under this handle since, not verified: the key changed.
    pub presented: Option<PublicIdentity>,
    /// When the contact was first seen (Unix milliseconds).
    pub first_seen_ms: i64,
    /// When `pinned` was verified.
    pub verified_ms: Option<i64>,
    /// When the key-changed identity was last seen.
    pub changed_ms: Option<i64>,
}

impl Contact {
    /// What a call with this contact under its pinned identity shows, before any call: key
    /// changed while a changed identity awaits verification.
    pub fn trust(&self) -> Trust {
        match (self.presented, self.verified) {
            (Some(_), _) => Trust::KeyChanged,
            (None, true) => Trust::Verified,
            (None, false) => Trust::Unverified,
        }
    }
}

/// The handle a contact gets when the user verifies a caller the store did not know under a
/// handle: the identity's 64 hex digits (rename it with `Store::rename_contact`).
pub fn default_handle(peer: &PublicIdentity) -> String {
    peer.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

//! Device identities: the key pair a phone proves, and the public identities of peers.

use std::fmt;
use std::sync::Arc;

use viska::identity::{IdentityKeyPair, PublicIdentity, SafetyNumber};
use zeroize::Zeroize;

use crate::error::ViskaError;

/// This device's identity key pair (Ed25519). Keep its [`secret_bytes`](Self::secret_bytes)
/// in the platform's keychain and restore it with [`from_secret`](Self::from_secret): the
/// identity is how peers recognise this device.
#[derive(uniffi::Object)]
pub struct Identity {
    pub(crate) key: IdentityKeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.key.public().fingerprint())
            .finish_non_exhaustive()
    }
}

#[uniffi::export]
impl Identity {
    /// A new identity from the operating system's randomness.
    #[uniffi::constructor]
    pub fn generate() -> Arc<Self> {
        Arc::new(Self {
            key: viska::phone::generate_identity(),
        })
    }

    /// The identity whose secret key is `secret` (32 bytes, as
    /// [`secret_bytes`](Self::secret_bytes) gave them).
    #[uniffi::constructor]
    pub fn from_secret(mut secret: Vec<u8>) -> Result<Arc<Self>, ViskaError> {
        let key = IdentityKeyPair::from_secret_bytes(&secret);
        secret.zeroize();
        Ok(Arc::new(Self { key: key? }))
    }

    /// The 32-byte secret key, for the platform's keychain. Anyone holding it can pose as
    /// this device: never log it, wipe the copy once stored.
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.key.to_secret_bytes().expose_secret().to_vec()
    }

    /// The public identity peers see.
    pub fn public(&self) -> PeerIdentity {
        PeerIdentity::from(&self.key.public())
    }
}

/// A device's public identity: its Ed25519 public key and the fingerprint shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Hash, uniffi::Record)]
pub struct PeerIdentity {
    /// The 32-byte Ed25519 public key: what to pin, and what `call_expecting` and
    /// `verified_peers` take.
    pub public_key: Vec<u8>,
    /// The SHA-256 fingerprint as 16 groups of four hex digits.
    pub fingerprint: String,
}

impl From<&PublicIdentity> for PeerIdentity {
    fn from(id: &PublicIdentity) -> Self {
        Self {
            public_key: id.to_bytes().to_vec(),
            fingerprint: id.fingerprint().to_string(),
        }
    }
}

pub(crate) fn public_identity(key: &[u8]) -> Result<PublicIdentity, ViskaError> {
    Ok(PublicIdentity::from_bytes(key)?)
}

/// The fingerprint of a 32-byte public key, as [`PeerIdentity::fingerprint`] shows it.
#[uniffi::export]
pub fn fingerprint_of(public_key: Vec<u8>) -> Result<String, ViskaError> {
    Ok(public_identity(&public_key)?.fingerprint().to_string())
}

/// The safety number of two identities (the same whichever comes first): digits two users
/// compare once to verify each other outside a call.
#[uniffi::export]
pub fn safety_number(a: Vec<u8>, b: Vec<u8>) -> Result<String, ViskaError> {
    let (a, b) = (public_identity(&a)?, public_identity(&b)?);
    Ok(SafetyNumber::for_pair(&a, &b).digits().to_owned())
}

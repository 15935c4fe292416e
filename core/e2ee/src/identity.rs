//! Long-term identities: Ed25519 key pairs, fingerprints and safety numbers.
//!
//! An identity is what a caller *is* in Viska: the handshake proves possession of its secret key,
//! apps pin its [`PublicIdentity`], and people compare a [`Fingerprint`] or a [`SafetyNumber`] to
//! check they talk to the key they expect.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::encoding::hash_part;

/// `ConstantTimeEq`, and `PartialEq`/`Eq` through it, for a type compared by the bytes
/// `$bytes` returns: secrets and the values that stand for identities never compare with an
/// early exit.
macro_rules! constant_time_eq {
    ($ty:ty, $bytes:expr) => {
        impl ConstantTimeEq for $ty {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                let bytes: fn(&$ty) -> &[u8] = $bytes;
                bytes(self).ct_eq(bytes(other))
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }

        impl Eq for $ty {}
    };
}

/// Length of an identity's secret key in bytes.
pub const SECRET_KEY_LEN: usize = 32;
/// Length of an encoded [`PublicIdentity`] in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an identity signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Domain label of [`Fingerprint`] derivation.
const FINGERPRINT_LABEL: &[u8] = b"viska identity fingerprint v1";
/// Domain label of the per-identity half of a [`SafetyNumber`].
const SAFETY_NUMBER_LABEL: &[u8] = b"viska safety number v1";
/// Hash iterations per safety-number half. They make finding a second key whose half collides
/// with a victim's (30 digits, about 100 bits) cost 4096 hashes per guess instead of one.
const SAFETY_NUMBER_ITERATIONS: usize = 4096;
/// Digits in each identity's half of a safety number.
const SAFETY_NUMBER_HALF_DIGITS: usize = 30;
/// Digits in a full safety number.
pub const SAFETY_NUMBER_DIGITS: usize = 2 * SAFETY_NUMBER_HALF_DIGITS;

/// Errors of identity encoding and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The input had the wrong length for what it encodes.
    #[error("wrong length: expected {expected} bytes, got {actual}")]
    InvalidLength {
        /// The length required.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The bytes are not a valid Ed25519 public key (not a point on the curve).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// The public key has small order; any signature would verify under it.
    #[error("weak (small-order) Ed25519 public key")]
    WeakPublicKey,
    /// The signature does not verify under this identity.
    #[error("signature does not verify")]
    BadSignature,
    /// The operating system's random number generator failed.
    #[error("operating system randomness unavailable")]
    Randomness,
}

/// The raw secret key of an identity (32 bytes), for storing it in an encrypted key store.
///
/// Zeroized on drop, compared in constant time; `Debug` prints `***`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct IdentitySecretBytes([u8; SECRET_KEY_LEN]);

impl IdentitySecretBytes {
    /// The secret bytes. Handle with care: copies are not zeroized for you.
    pub fn expose_secret(&self) -> &[u8; SECRET_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for IdentitySecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentitySecretBytes(***)")
    }
}

constant_time_eq!(IdentitySecretBytes, |v| &v.0[..]);

/// A long-term Ed25519 identity key pair.
///
/// The secret half is zeroized on drop; `Debug` shows only the public fingerprint.
#[derive(Clone)]
pub struct IdentityKeyPair {
    signing: SigningKey,
}

impl IdentityKeyPair {
    /// Generates a new identity from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut secret = [0u8; SECRET_KEY_LEN];
        rng.fill_bytes(&mut secret);
        let pair = Self::from_secret_array(&secret);
        secret.zeroize();
        pair
    }

    /// Generates a new identity from the operating system's random number generator.
    ///
    /// # Errors
    /// [`IdentityError::Randomness`] if the operating system cannot provide randomness.
    pub fn generate_from_os() -> Result<Self, IdentityError> {
        let mut secret = [0u8; SECRET_KEY_LEN];
        let filled = getrandom::fill(&mut secret);
        let pair = Self::from_secret_array(&secret);
        secret.zeroize();
        filled.map_err(|_| IdentityError::Randomness)?;
        Ok(pair)
    }

    /// Restores an identity from the 32 secret bytes [`IdentityKeyPair::to_secret_bytes`] gave
    /// (an RFC 8032 Ed25519 secret key).
    ///
    /// # Errors
    /// [`IdentityError::InvalidLength`] unless `bytes` is 32 bytes long.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let secret: &[u8; SECRET_KEY_LEN] =
            bytes.try_into().map_err(|_| IdentityError::InvalidLength {
                expected: SECRET_KEY_LEN,
                actual: bytes.len(),
            })?;
        Ok(Self::from_secret_array(secret))
    }

    fn from_secret_array(secret: &[u8; SECRET_KEY_LEN]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The secret key bytes, for an encrypted key store.
    pub fn to_secret_bytes(&self) -> IdentitySecretBytes {
        IdentitySecretBytes(self.signing.to_bytes())
    }

    /// The public half of this identity.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            key: self.signing.verifying_key(),
        }
    }

    /// Signs `message` with this identity (Ed25519, RFC 8032; deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public())
            .field("secret", &"***")
            .finish()
    }
}

/// The public half of an identity: an Ed25519 verifying key known to be valid and not weak.
///
/// Equality is constant time over the 32-byte encoding: apps compare a peer's identity with a
/// pinned one, and how long that takes should not tell an attacker how close a guess came.
#[derive(Clone, Copy)]
pub struct PublicIdentity {
    key: VerifyingKey,
}

impl PublicIdentity {
    /// Decodes and validates a 32-byte Ed25519 public key.
    ///
    /// # Errors
    /// [`IdentityError::InvalidLength`], [`IdentityError::InvalidPublicKey`] if the bytes do not
    /// decode to a curve point, [`IdentityError::WeakPublicKey`] for a small-order point.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let array: &[u8; PUBLIC_KEY_LEN] =
            bytes.try_into().map_err(|_| IdentityError::InvalidLength {
                expected: PUBLIC_KEY_LEN,
                actual: bytes.len(),
            })?;
        let key = VerifyingKey::from_bytes(array).map_err(|_| IdentityError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(IdentityError::WeakPublicKey);
        }
        Ok(Self { key })
    }

    /// The 32-byte encoding of this public key.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.key.to_bytes()
    }

    /// Verifies an Ed25519 signature by this identity over `message`.
    ///
    /// Uses strict verification (rejects non-canonical signatures), so a valid signature cannot
    /// be altered into a second valid one.
    ///
    /// # Errors
    /// [`IdentityError::InvalidLength`] unless `signature` is 64 bytes,
    /// [`IdentityError::BadSignature`] if it does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let array: &[u8; SIGNATURE_LEN] =
            signature
                .try_into()
                .map_err(|_| IdentityError::InvalidLength {
                    expected: SIGNATURE_LEN,
                    actual: signature.len(),
                })?;
        self.key
            .verify_strict(message, &Signature::from_bytes(array))
            .map_err(|_| IdentityError::BadSignature)
    }

    /// The SHA-256 fingerprint of this identity.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        hash_part(&mut hasher, FINGERPRINT_LABEL);
        hash_part(&mut hasher, self.key.as_bytes());
        Fingerprint(hasher.finalize().into())
    }

    /// This identity's 30-digit half of a safety number.
    fn safety_number_half(&self) -> [u8; SAFETY_NUMBER_HALF_DIGITS] {
        let key = self.key.as_bytes();
        let mut hasher = Sha256::new();
        hash_part(&mut hasher, SAFETY_NUMBER_LABEL);
        hash_part(&mut hasher, key);
        let mut hash: [u8; 32] = hasher.finalize().into();
        for _ in 0..SAFETY_NUMBER_ITERATIONS {
            let mut hasher = Sha256::new();
            hasher.update(hash);
            hasher.update(key);
            hash = hasher.finalize().into();
        }
        let mut digits = [b'0'; SAFETY_NUMBER_HALF_DIGITS];
        for (chunk, group) in hash.chunks_exact(5).zip(digits.chunks_exact_mut(5)) {
            let mut value = chunk
                .iter()
                .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
                % 100_000;
            for digit in group.iter_mut().rev() {
                // value % 10 < 10, so the cast cannot truncate.
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        digits
    }
}

constant_time_eq!(PublicIdentity, |v| &v.key.as_bytes()[..]);

impl std::hash::Hash for PublicIdentity {
    // Over the same bytes as equality, so that equal identities hash alike.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.as_bytes().hash(state);
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity(")?;
        for byte in self.key.as_bytes() {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// SHA-256 over a domain-separated encoding of an identity's public key.
///
/// `Display` prints 64 lowercase hex digits in 16 groups of 4, separated by spaces. Equality
/// is constant time (fingerprints are pinned and compared like the keys they stand for).
#[derive(Clone, Copy)]
pub struct Fingerprint(pub [u8; 32]);

constant_time_eq!(Fingerprint, |v| &v.0[..]);

impl std::hash::Hash for Fingerprint {
    // Over the same bytes as equality, so that equal fingerprints hash alike.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Fingerprint {
    /// The 32 fingerprint bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, pair) in self.0.chunks_exact(2).enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            for byte in pair {
                write!(f, "{byte:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A 60-digit number two people compare to check they hold each other's identity keys.
///
/// Each identity contributes 30 digits derived from its public key alone (iterated SHA-256, see
/// `docs/protocol-handshake.md`); the two halves are sorted and concatenated, so both ends compute
/// the same number whichever of them is "local". `Display` prints 12 groups of 5 digits separated
/// by spaces. Equality is constant time.
#[derive(Clone)]
pub struct SafetyNumber([u8; SAFETY_NUMBER_DIGITS]);

impl SafetyNumber {
    /// The safety number of the pair `a`, `b` (the order of the arguments does not matter).
    pub fn for_pair(a: &PublicIdentity, b: &PublicIdentity) -> Self {
        let half_a = a.safety_number_half();
        let half_b = b.safety_number_half();
        let (first, second) = if half_a <= half_b {
            (half_a, half_b)
        } else {
            (half_b, half_a)
        };
        let mut digits = [b'0'; SAFETY_NUMBER_DIGITS];
        let (left, right) = digits.split_at_mut(SAFETY_NUMBER_HALF_DIGITS);
        left.copy_from_slice(&first);
        right.copy_from_slice(&second);
        Self(digits)
    }

    /// The 60 ASCII digits without separators.
    pub fn digits(&self) -> &str {
        // Only ASCII digits are ever stored; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

constant_time_eq!(SafetyNumber, |v| &v.0[..]);

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, group) in self.digits().as_bytes().chunks(5).enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            for digit in group {
                write!(f, "{}", char::from(*digit))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Equality goes through `ConstantTimeEq` (this does not compile for a derived
    /// `PartialEq`), and `==`, `ct_eq` and hashing agree.
    fn assert_compares<T>(value: T, same: T, others: &[T])
    where
        T: ConstantTimeEq + Eq + std::hash::Hash + Copy + fmt::Debug,
    {
        assert!(bool::from(value.ct_eq(&same)));
        assert_eq!(value, same);
        let mut set = HashSet::from([value]);
        assert!(!set.insert(same), "equal values hash alike");
        for other in others {
            assert!(!bool::from(value.ct_eq(other)));
            assert_ne!(value, *other);
            assert!(set.insert(*other), "{other:?} is a distinct value");
        }
    }

    fn identity(seed: u8) -> PublicIdentity {
        IdentityKeyPair::from_secret_bytes(&[seed; SECRET_KEY_LEN])
            .unwrap()
            .public()
    }

    #[test]
    fn public_identities_compare_in_constant_time_by_their_bytes() {
        let alice = identity(1);
        let decoded = PublicIdentity::from_bytes(&alice.to_bytes()).unwrap();
        assert_compares(alice, decoded, &[identity(2), identity(3)]);
    }

    #[test]
    fn fingerprints_compare_in_constant_time_by_their_bytes() {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut first_differs = bytes;
        first_differs[0] ^= 1;
        let mut last_differs = bytes;
        last_differs[31] ^= 0x80;
        assert_compares(
            Fingerprint(bytes),
            Fingerprint(bytes),
            &[
                Fingerprint(first_differs),
                Fingerprint(last_differs),
                identity(1).fingerprint(),
            ],
        );
        assert_eq!(identity(1).fingerprint(), identity(1).fingerprint());
        assert_ne!(identity(1).fingerprint(), identity(2).fingerprint());
    }
}

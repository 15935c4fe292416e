//! Keys: the base key handed in by the key exchange, and the per-KID AEAD key and salt derived
//! from it exactly as RFC 9605 §4.4.2 prescribes.

use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::SframeError;
use crate::suite::{AeadKey, CipherSuite, NONCE_LEN};

// HKDF's state is an HMAC keyed with the extracted secret: two SHA-256 block states (inner and
// outer, `EagerHash::Core`) and a block buffer. With the `zeroize` features of `hmac` and `sha2`
// each of them wipes itself on drop; this fails to compile if they are ever turned off.
const _: fn() = || {
    fn wiped_on_drop<T: ZeroizeOnDrop>() {}
    wiped_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
    wiped_on_drop::<Sha256>();
};

/// Shortest base key accepted. RFC 9605 feeds the base key to HKDF-Extract and takes any length;
/// Viska refuses anything below 128 bits so a truncated key cannot slip through.
pub const MIN_BASE_KEY_LEN: usize = 16;

/// Label prefix for the AEAD key (RFC 9605 §4.4.2), followed by KID (8 bytes) and suite (2 bytes).
pub const KEY_LABEL_PREFIX: &[u8] = b"SFrame 1.0 Secret key ";
/// Label prefix for the salt (RFC 9605 §4.4.2), followed by KID (8 bytes) and suite (2 bytes).
pub const SALT_LABEL_PREFIX: &[u8] = b"SFrame 1.0 Secret salt ";

const KEY_LABEL_LEN: usize = 22 + 8 + 2;
const SALT_LABEL_LEN: usize = 23 + 8 + 2;
/// The longest Nk: 48 bytes for the CTR+HMAC suite (AES key and HMAC key).
const MAX_KEY_LEN: usize = 48;

/// An SFrame key identifier (KID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

/// An SFrame base key. Zeroized on drop; `Debug` prints no key bytes; `==` is constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BaseKey(Vec<u8>);

impl BaseKey {
    /// Wraps raw base key bytes (their length is the suite's Nk).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    /// The key bytes. Handle with care.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for BaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BaseKey(***)")
    }
}

impl PartialEq for BaseKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for BaseKey {}

/// A base key to *send* with, under its KID: what a key exchange hands to the one sender that
/// may use it. Not `Clone`: it moves into an [`SframeSender`](crate::SframeSender) (at creation
/// or at a [rekey](crate::SframeSender::rekey)) and is gone, so no second sender can ever start
/// counting from zero under the same key. Zeroized on drop; `Debug` prints no key bytes.
pub struct SendKey {
    kid: KeyId,
    base_key: BaseKey,
}

impl SendKey {
    /// Wraps a freshly derived base key for sending under `kid`. Only a key source (a handshake,
    /// an MLS exporter) should call this, once per key it derives.
    pub fn new(kid: KeyId, base_key: BaseKey) -> Self {
        Self { kid, base_key }
    }

    /// The KID frames sent with this key carry.
    pub fn key_id(&self) -> KeyId {
        self.kid
    }

    /// The key bytes, for known-answer tests. Copying them into another sender would break the
    /// counter guarantee this type exists for.
    pub fn expose_secret(&self) -> &[u8] {
        self.base_key.expose_secret()
    }

    pub(crate) fn base_key(&self) -> &BaseKey {
        &self.base_key
    }
}

impl std::fmt::Debug for SendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendKey")
            .field("kid", &self.kid)
            .field("base_key", &"***")
            .finish()
    }
}

fn label<const N: usize>(prefix: &[u8], kid: KeyId, suite_id: u16) -> [u8; N] {
    let mut out = [0u8; N];
    let (head, tail) = out.split_at_mut(prefix.len());
    head.copy_from_slice(prefix);
    let (kid_dst, suite_dst) = tail.split_at_mut(8);
    kid_dst.copy_from_slice(&kid.0.to_be_bytes());
    suite_dst.copy_from_slice(&suite_id.to_be_bytes());
    out
}

/// `"SFrame 1.0 Secret key " || KID (u64 BE) || suite id (u16 BE)`. Takes the raw suite id so
/// labels of suites Viska does not implement can be checked against the RFC vectors too.
pub fn key_label(kid: KeyId, suite_id: u16) -> [u8; KEY_LABEL_LEN] {
    label(KEY_LABEL_PREFIX, kid, suite_id)
}

/// `"SFrame 1.0 Secret salt " || KID (u64 BE) || suite id (u16 BE)`.
pub fn salt_label(kid: KeyId, suite_id: u16) -> [u8; SALT_LABEL_LEN] {
    label(SALT_LABEL_PREFIX, kid, suite_id)
}

/// The per-KID secrets of RFC 9605 §4.4.2: `sframe_key` (Nk bytes) and `sframe_salt` (Nn bytes).
/// Zeroized on drop; `Debug` prints no key bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DerivedKey {
    key: [u8; MAX_KEY_LEN],
    key_len: usize,
    salt: [u8; NONCE_LEN],
}

impl DerivedKey {
    /// Derives `sframe_key` and `sframe_salt` for `kid` from `base_key`:
    ///
    /// ```text
    /// sframe_secret = HKDF-Extract(salt = "", IKM = base_key)            (SHA-256)
    /// sframe_key    = HKDF-Expand(sframe_secret, key_label(KID, suite),  Nk)
    /// sframe_salt   = HKDF-Expand(sframe_secret, salt_label(KID, suite), Nn)
    /// ```
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] below [`MIN_BASE_KEY_LEN`] bytes.
    pub fn derive(suite: CipherSuite, kid: KeyId, base_key: &BaseKey) -> Result<Self, SframeError> {
        let ikm = base_key.expose_secret();
        if ikm.len() < MIN_BASE_KEY_LEN {
            return Err(SframeError::BaseKeyTooShort {
                len: ikm.len(),
                min: MIN_BASE_KEY_LEN,
            });
        }
        // An empty HKDF salt is a zero-length HMAC key, as RFC 9605 writes HKDF-Extract("", ..).
        let hkdf = Hkdf::<Sha256>::new(Some(&[]), ikm);
        let mut derived = Self {
            key: [0; MAX_KEY_LEN],
            key_len: suite.key_len(),
            salt: [0; NONCE_LEN],
        };
        let key_dst = derived
            .key
            .get_mut(..suite.key_len())
            .ok_or(SframeError::Internal("key length above 48"))?;
        // Expand only fails for outputs over 255 hash lengths; Nk and Nn are far below.
        hkdf.expand(&key_label(kid, suite.id()), key_dst)
            .map_err(|_| SframeError::Internal("HKDF-Expand refused the key length"))?;
        hkdf.expand(&salt_label(kid, suite.id()), &mut derived.salt)
            .map_err(|_| SframeError::Internal("HKDF-Expand refused the salt length"))?;
        Ok(derived)
    }

    /// `sframe_key` (Nk bytes). Handle with care.
    pub fn expose_key(&self) -> &[u8] {
        self.key.get(..self.key_len).unwrap_or(&[])
    }

    /// `sframe_salt` (Nn bytes).
    pub fn expose_salt(&self) -> &[u8; NONCE_LEN] {
        &self.salt
    }

    /// The AEAD nonce for counter `ctr`: the salt XOR the counter, big-endian, left-padded to Nn.
    pub fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        nonce(&self.salt, ctr)
    }
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKey(***)")
    }
}

pub(crate) fn nonce(salt: &[u8; NONCE_LEN], ctr: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *salt;
    let (_, low) = nonce.split_at_mut(NONCE_LEN - 8);
    for (byte, ctr_byte) in low.iter_mut().zip(ctr.to_be_bytes()) {
        *byte ^= ctr_byte;
    }
    nonce
}

/// What a sender or receiver keeps per KID: the initialised AEAD (key schedule done once, at
/// install) and the salt. Never printed.
#[derive(Clone)]
pub(crate) struct KeyContext {
    pub(crate) aead: AeadKey,
    salt: Zeroizing<[u8; NONCE_LEN]>,
}

impl KeyContext {
    pub(crate) fn new(
        suite: CipherSuite,
        kid: KeyId,
        base_key: &BaseKey,
    ) -> Result<Self, SframeError> {
        let derived = DerivedKey::derive(suite, kid, base_key)?;
        // The derivation produced exactly Nk bytes, which the AEAD accepts.
        let aead = AeadKey::new(suite, derived.expose_key())
            .ok_or(SframeError::Internal("AEAD refused the derived key"))?;
        Ok(Self {
            aead,
            salt: Zeroizing::new(derived.salt),
        })
    }

    pub(crate) fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        nonce(&self.salt, ctr)
    }
}

impl std::fmt::Debug for KeyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyContext(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_have_rfc_layout() {
        let label = key_label(KeyId(0x0123), 0x0004);
        assert_eq!(&label[..22], b"SFrame 1.0 Secret key ");
        assert_eq!(&label[22..], &[0, 0, 0, 0, 0, 0, 0x01, 0x23, 0x00, 0x04]);
        let label = salt_label(KeyId(u64::MAX), 0xF001);
        assert_eq!(&label[..23], b"SFrame 1.0 Secret salt ");
        assert_eq!(
            &label[23..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0, 0x01]
        );
    }

    #[test]
    fn nonce_xors_counter_into_low_bytes() {
        let salt = [0xaa; NONCE_LEN];
        let n = nonce(&salt, 0x0102);
        assert_eq!(&n[..10], &[0xaa; 10]);
        assert_eq!(n[10], 0xaa ^ 0x01);
        assert_eq!(n[11], 0xaa ^ 0x02);
        assert_eq!(nonce(&salt, 0), salt);
    }

    #[test]
    fn derivation_depends_on_kid_suite_and_key() {
        let base = BaseKey::new(vec![1; 32]);
        let a =
            DerivedKey::derive(CipherSuite::ChaCha20Poly1305Sha256, KeyId(1), &base).expect("ok");
        let b =
            DerivedKey::derive(CipherSuite::ChaCha20Poly1305Sha256, KeyId(2), &base).expect("ok");
        let c = DerivedKey::derive(CipherSuite::Aes128GcmSha256, KeyId(1), &base).expect("ok");
        let d = DerivedKey::derive(
            CipherSuite::ChaCha20Poly1305Sha256,
            KeyId(1),
            &BaseKey::new(vec![2; 32]),
        )
        .expect("ok");
        assert_eq!(a.expose_key().len(), 32);
        assert_eq!(c.expose_key().len(), 16);
        assert_ne!(a.expose_key(), b.expose_key());
        assert_ne!(a.expose_salt(), b.expose_salt());
        assert_ne!(&a.expose_key()[..16], c.expose_key());
        assert_ne!(a.expose_salt(), c.expose_salt());
        assert_ne!(a.expose_key(), d.expose_key());
    }

    #[test]
    fn short_base_key_is_refused() {
        for suite in CipherSuite::ALL {
            assert_eq!(
                DerivedKey::derive(suite, KeyId(0), &BaseKey::new(vec![0; 15])).map(|_| ()),
                Err(SframeError::BaseKeyTooShort { len: 15, min: 16 })
            );
        }
    }

    #[test]
    fn base_key_equality_and_debug() {
        let a = BaseKey::new(vec![0x5a; 16]);
        assert_eq!(a, BaseKey::new(vec![0x5a; 16]));
        assert_ne!(a, BaseKey::new(vec![0x5b; 16]));
        assert_ne!(a, BaseKey::new(vec![0x5a; 17]));
        assert_eq!(format!("{a:?}"), "BaseKey(***)");
        let derived = DerivedKey::derive(CipherSuite::Aes128GcmSha256, KeyId(9), &a).expect("ok");
        assert_eq!(format!("{derived:?}"), "DerivedKey(***)");
    }
}

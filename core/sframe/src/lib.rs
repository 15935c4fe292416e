//! RFC 9605 SFrame for Viska: header encoding, cipher suites, key derivation, per-sender
//! replay protection. No IO.
#![forbid(unsafe_code)]

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The SFrame cipher suites Viska speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    /// ChaCha20-Poly1305 with HKDF-SHA256 (Viska's default; private-use suite id 0xF001).
    ChaCha20Poly1305Sha256,
    /// AES_128_GCM_SHA256_128 (RFC 9605 suite 0x0004), for interoperability.
    Aes128GcmSha256,
}

/// An SFrame key identifier (KID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

/// An SFrame base key. Zeroized on drop; `Debug` prints no key bytes.
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

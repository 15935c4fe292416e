//! Cipher suites and the AEAD behind each, dispatched by enum so a key costs no allocation and
//! the per-frame call is a plain match.

use aes_gcm::Aes128Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};

use crate::ctr_hmac::AesCtrHmacKey;

/// Nonce length shared by every suite (Nn).
pub(crate) const NONCE_LEN: usize = 12;
/// The longest tag of any suite (Nt of the AEAD suites).
pub(crate) const MAX_TAG_LEN: usize = 16;

/// The SFrame cipher suites Viska speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    /// ChaCha20-Poly1305 with HKDF-SHA256 (private-use suite id 0xF001; Viska's default before
    /// the 80-bit-tag suite).
    ChaCha20Poly1305Sha256,
    /// AES_128_GCM_SHA256_128 (RFC 9605 suite 0x0004), for interoperability.
    Aes128GcmSha256,
    /// AES_128_CTR_HMAC_SHA256_80 (RFC 9605 suite 0x0001): AES-128 in counter mode, HMAC-SHA256
    /// truncated to an 80-bit tag (RFC 9605 §4.5.1), the tag length of SRTP's default suite.
    /// Six bytes fewer per frame than the AEAD suites; Viska's default.
    AesCtr128HmacSha256_80,
}

impl CipherSuite {
    /// Every suite, in order of preference: the 80-bit-tag suite first (six bytes less on
    /// every media packet; its security argument is in `docs/security.md`), then the two
    /// AEAD suites with 128-bit tags.
    pub const ALL: [CipherSuite; 3] = [
        Self::AesCtr128HmacSha256_80,
        Self::ChaCha20Poly1305Sha256,
        Self::Aes128GcmSha256,
    ];

    /// The 16-bit suite identifier that goes into the key-derivation labels.
    pub const fn id(self) -> u16 {
        match self {
            Self::ChaCha20Poly1305Sha256 => 0xF001,
            Self::Aes128GcmSha256 => 0x0004,
            Self::AesCtr128HmacSha256_80 => 0x0001,
        }
    }

    /// The suite with this identifier, if Viska speaks it.
    pub const fn from_id(id: u16) -> Option<Self> {
        match id {
            0xF001 => Some(Self::ChaCha20Poly1305Sha256),
            0x0004 => Some(Self::Aes128GcmSha256),
            0x0001 => Some(Self::AesCtr128HmacSha256_80),
            _ => None,
        }
    }

    /// AEAD key length in bytes (Nk). For the CTR+HMAC suite this is the AES key and the
    /// HMAC key together (16 + 32).
    pub const fn key_len(self) -> usize {
        match self {
            Self::ChaCha20Poly1305Sha256 => 32,
            Self::Aes128GcmSha256 => 16,
            Self::AesCtr128HmacSha256_80 => 48,
        }
    }

    /// AEAD nonce length in bytes (Nn).
    pub const fn nonce_len(self) -> usize {
        NONCE_LEN
    }

    /// AEAD tag length in bytes (Nt).
    pub const fn tag_len(self) -> usize {
        match self {
            Self::ChaCha20Poly1305Sha256 | Self::Aes128GcmSha256 => MAX_TAG_LEN,
            Self::AesCtr128HmacSha256_80 => 10,
        }
    }
}

/// An initialised AEAD for one derived key. Both crates zeroize their key state on drop
/// (`zeroize` feature).
// One per KID, so the size gap between a ChaCha key and an expanded AES key schedule costs a few
// hundred bytes per key, while boxing would add a pointer chase to every frame.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum AeadKey {
    ChaCha(ChaCha20Poly1305),
    AesGcm(Aes128Gcm),
    AesCtrHmac(AesCtrHmacKey),
}

/// The AEAD rejected its input: a tag mismatch on open, a message too long on seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailure;

impl AeadKey {
    /// `key` must be `suite.key_len()` bytes; the derivation guarantees it.
    pub(crate) fn new(suite: CipherSuite, key: &[u8]) -> Option<Self> {
        match suite {
            CipherSuite::ChaCha20Poly1305Sha256 => {
                ChaCha20Poly1305::new_from_slice(key).ok().map(Self::ChaCha)
            }
            CipherSuite::Aes128GcmSha256 => Aes128Gcm::new_from_slice(key).ok().map(Self::AesGcm),
            CipherSuite::AesCtr128HmacSha256_80 => {
                AesCtrHmacKey::new(key, CipherSuite::AesCtr128HmacSha256_80.tag_len())
                    .map(Self::AesCtrHmac)
            }
        }
    }

    /// Encrypts `buf` (in → out, possibly separate slices of equal length) and writes the tag
    /// to `tag_out`, which must be the suite's tag length.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
        tag_out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        let tag = match self {
            Self::ChaCha(cipher) => cipher.encrypt_inout_detached(nonce.into(), aad, buf),
            Self::AesGcm(cipher) => cipher.encrypt_inout_detached(nonce.into(), aad, buf),
            Self::AesCtrHmac(key) => return key.seal(nonce, aad, buf, tag_out),
        }
        .map_err(|_| AeadFailure)?;
        if tag_out.len() != tag.len() {
            return Err(AeadFailure);
        }
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Checks `tag` (the suite's tag length) over `aad` and the ciphertext, then decrypts into
    /// the out side of `buf`.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
        tag: &[u8],
    ) -> Result<(), AeadFailure> {
        let full: Result<&[u8; MAX_TAG_LEN], _> = tag.try_into();
        match (self, full) {
            (Self::ChaCha(cipher), Ok(tag)) => {
                cipher.decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
            }
            (Self::AesGcm(cipher), Ok(tag)) => {
                cipher.decrypt_inout_detached(nonce.into(), aad, buf, tag.into())
            }
            (Self::AesCtrHmac(key), _) => return key.open(nonce, aad, buf, tag),
            (_, Err(_)) => return Err(AeadFailure),
        }
        .map_err(|_| AeadFailure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_lengths_match_rfc() {
        for suite in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_id(suite.id()), Some(suite));
            assert_eq!(suite.nonce_len(), 12);
        }
        assert_eq!(CipherSuite::Aes128GcmSha256.key_len(), 16);
        assert_eq!(CipherSuite::Aes128GcmSha256.tag_len(), 16);
        assert_eq!(CipherSuite::ChaCha20Poly1305Sha256.key_len(), 32);
        assert_eq!(CipherSuite::ChaCha20Poly1305Sha256.tag_len(), 16);
        assert_eq!(CipherSuite::AesCtr128HmacSha256_80.key_len(), 48);
        assert_eq!(CipherSuite::AesCtr128HmacSha256_80.tag_len(), 10);
        assert_eq!(CipherSuite::from_id(0x0002), None);
        assert_eq!(CipherSuite::from_id(0x0003), None);
        assert_eq!(CipherSuite::from_id(0x0005), None);
    }

    #[test]
    fn wrong_key_length_is_refused() {
        for suite in CipherSuite::ALL {
            assert!(AeadKey::new(suite, &[0u8; 15]).is_none());
            assert!(AeadKey::new(suite, &vec![0u8; suite.key_len()]).is_some());
        }
    }
}

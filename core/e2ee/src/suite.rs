//! Wire ids and key lengths of the SFrame cipher suites the handshake negotiates.
//!
//! Kept here (rather than in `viska-sframe`) so the handshake's wire encoding is defined in one
//! place, next to the code that puts it on the wire.

use viska_sframe::CipherSuite;

/// Wire id of ChaCha20-Poly1305/SHA-256 (an SFrame private-use suite id).
const CHACHA20_POLY1305_SHA256_ID: u16 = 0xF001;
/// Wire id of AES_128_GCM_SHA256_128 (RFC 9605 §8.1).
const AES_128_GCM_SHA256_128_ID: u16 = 0x0004;

/// The 16-bit id that names `suite` in handshake messages, if the handshake knows it.
pub(crate) fn suite_id(suite: CipherSuite) -> Option<u16> {
    match suite {
        CipherSuite::ChaCha20Poly1305Sha256 => Some(CHACHA20_POLY1305_SHA256_ID),
        CipherSuite::Aes128GcmSha256 => Some(AES_128_GCM_SHA256_128_ID),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The suite a wire id names, if the handshake knows it.
pub(crate) fn suite_from_id(id: u16) -> Option<CipherSuite> {
    match id {
        CHACHA20_POLY1305_SHA256_ID => Some(CipherSuite::ChaCha20Poly1305Sha256),
        AES_128_GCM_SHA256_128_ID => Some(CipherSuite::Aes128GcmSha256),
        _ => None,
    }
}

/// Nk, the SFrame base key length of `suite` in bytes.
pub(crate) fn key_len(suite: CipherSuite) -> Option<usize> {
    match suite {
        CipherSuite::ChaCha20Poly1305Sha256 => Some(32),
        CipherSuite::Aes128GcmSha256 => Some(16),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for suite in [
            CipherSuite::ChaCha20Poly1305Sha256,
            CipherSuite::Aes128GcmSha256,
        ] {
            let id = suite_id(suite);
            assert!(id.is_some());
            assert_eq!(id.and_then(suite_from_id), Some(suite));
        }
        assert_eq!(suite_from_id(0x0001), None);
    }
}

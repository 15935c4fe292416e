//! RFC 9605 SFrame for Viska: header encoding, cipher suites, key derivation, per-sender
//! replay protection. No IO, no clock, and no heap allocation per frame.
//!
//! A sender owns one key (one KID) and a strictly increasing frame counter; a receiver holds any
//! number of keys and a replay window per KID:
//!
//! ```
//! use viska_sframe::{BaseKey, CipherSuite, KeyId, ReplayConfig, SframeReceiver, SframeSender};
//!
//! # fn main() -> Result<(), viska_sframe::SframeError> {
//! let suite = CipherSuite::ChaCha20Poly1305Sha256;
//! let base_key = BaseKey::new(vec![7; 32]);
//! let mut sender = SframeSender::new(suite, KeyId(3), &base_key)?;
//! let mut receiver = SframeReceiver::new(suite, ReplayConfig::default())?;
//! receiver.add_key(KeyId(3), &base_key)?;
//!
//! let mut frame = [0u8; 128];
//! let frame_len = sender.protect(b"meta", b"opus bytes", &mut frame)?;
//! let mut plain = [0u8; 128];
//! let got = receiver.unprotect(b"meta", &frame[..frame_len], &mut plain)?;
//! assert_eq!(&plain[..got.len], b"opus bytes");
//! # Ok(())
//! # }
//! ```
//!
//! The wire profile (header, suite ids, labels, nonce, AAD, replay rules) is specified in
//! `docs/protocol-sframe.md` of the Viska repository.
#![forbid(unsafe_code)]

mod ctr_hmac;
mod error;
pub mod header;
pub mod key;
mod receiver;
pub mod replay;
mod sender;
mod suite;

pub use error::SframeError;
pub use header::{HeaderError, SframeHeader};
pub use key::{BaseKey, KeyId, SendKey};
pub use receiver::{ReceiverStats, SframeReceiver, Unprotected};
pub use replay::{ReplayConfig, ReplayVerdict};
pub use sender::SframeSender;
pub use suite::CipherSuite;

/// Bytes SFrame adds to a frame protected under `suite` with this KID and counter: the encoded
/// header plus the AEAD tag. A protected frame is exactly `plaintext.len() + overhead(..)` long.
pub fn overhead(suite: CipherSuite, kid: KeyId, ctr: u64) -> usize {
    SframeHeader { kid, ctr }.encoded_len() + suite.tag_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_matches_header_and_tag() {
        for (suite, tag) in [
            (CipherSuite::ChaCha20Poly1305Sha256, 16),
            (CipherSuite::Aes128GcmSha256, 16),
            (CipherSuite::AesCtr128HmacSha256_80, 10),
        ] {
            assert_eq!(overhead(suite, KeyId(0), 0), 1 + tag);
            assert_eq!(overhead(suite, KeyId(8), 7), 2 + tag);
            assert_eq!(overhead(suite, KeyId(u64::MAX), u64::MAX), 17 + tag);
        }
    }
}

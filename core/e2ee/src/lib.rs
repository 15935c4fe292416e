//! Viska identities and the direct (1:1) end-to-end key exchange. No IO.
//!
//! - [`identity`]: long-term Ed25519 identities, fingerprints and safety numbers.
//! - [`direct`]: a four-message, sans-IO handshake between two identities that yields SFrame
//!   base keys per direction and a short authentication string (SAS) no party can steer.
//! - [`keys`]: the key-source seam, what any key exchange hands to the media layer.
//!
//! The wire format and the key schedule are specified in `docs/protocol-handshake.md`.
#![forbid(unsafe_code)]

pub mod direct;
pub mod identity;
pub mod keys;

/// The `rand_core` version whose `CryptoRng` this crate's constructors take.
pub use rand_core;
mod encoding;

//! Errors of the sender and receiver.

use crate::header::HeaderError;
use crate::key::KeyId;

/// Why protecting or unprotecting a frame, or installing a key, failed.
///
/// Every variant leaves the sender or receiver usable; none of them consumed a counter or
/// moved a replay window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SframeError {
    /// The frame's header could not be decoded (truncated or empty).
    #[error("malformed SFrame header: {0}")]
    MalformedHeader(#[from] HeaderError),
    /// The frame ends before a whole authentication tag.
    #[error(
        "SFrame frame too short: {len} bytes after a {header_len}-byte header, tag needs {tag_len}"
    )]
    TruncatedFrame {
        /// Bytes present after the header.
        len: usize,
        /// Header length.
        header_len: usize,
        /// Tag length of the suite.
        tag_len: usize,
    },
    /// No key is installed for the frame's KID.
    #[error("no key installed for SFrame KID {0:?}")]
    UnknownKeyId(KeyId),
    /// The frame did not authenticate (wrong key, tampered header/ciphertext/metadata).
    #[error("SFrame authentication failed")]
    AuthenticationFailed,
    /// This counter was already accepted under this KID.
    #[error("SFrame replay: counter {ctr} already received for KID {kid:?}")]
    Duplicate {
        /// KID of the frame.
        kid: KeyId,
        /// Its counter.
        ctr: u64,
    },
    /// The counter is older than the replay window can vouch for.
    #[error("SFrame counter {ctr} for KID {kid:?} is older than the replay window")]
    TooOld {
        /// KID of the frame.
        kid: KeyId,
        /// Its counter.
        ctr: u64,
    },
    /// The caller's output buffer cannot hold the result.
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The sender's counter space (or configured limit) under this key is used up; install a new
    /// key (new KID) before sending more.
    #[error("SFrame counter space exhausted for this key: rekey required")]
    RekeyRequired,
    /// `skip_to` asked to move the counter backwards, which would reuse a nonce.
    #[error("SFrame counter may only move forward: next is {next}, asked for {requested}")]
    CounterRegression {
        /// The counter the sender would use next.
        next: u64,
        /// The counter asked for.
        requested: u64,
    },
    /// The base key is shorter than [`crate::key::MIN_BASE_KEY_LEN`].
    #[error("SFrame base key too short: {len} bytes, need at least {min}")]
    BaseKeyTooShort {
        /// Length given.
        len: usize,
        /// Minimum accepted.
        min: usize,
    },
    /// The replay configuration is outside the accepted range.
    #[error("invalid replay window {window}: must be 1..={max}")]
    InvalidReplayWindow {
        /// Window asked for.
        window: u64,
        /// Largest window accepted.
        max: u64,
    },
    /// The AEAD refused the message (longer than the cipher allows). Not expected for media frames.
    #[error("AEAD refused the message (too long)")]
    MessageTooLong,
    /// A bug in this crate, not caused by the input. Please report it.
    #[error("internal SFrame error: {0}")]
    Internal(&'static str),
}

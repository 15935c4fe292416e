//! The length-prefixed encoding every hash and signature input in this crate uses.
//!
//! Each part is fed as a 4-byte big-endian length followed by the bytes, so no two different
//! sequences of parts produce the same hash input.

use sha2::{Digest, Sha256};

/// Feeds `part` into `hasher` as `u32be(len) || part`.
pub(crate) fn hash_part(hasher: &mut Sha256, part: &[u8]) {
    hasher.update(part_len(part).to_be_bytes());
    hasher.update(part);
}

/// Appends `part` to `out` as `u32be(len) || part`.
pub(crate) fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&part_len(part).to_be_bytes());
    out.extend_from_slice(part);
}

/// Every part this crate hashes is a label, a key, a hash or a handshake message, all far below
/// 4 GiB; saturating keeps the function total without a panic path.
fn part_len(part: &[u8]) -> u32 {
    u32::try_from(part.len()).unwrap_or(u32::MAX)
}

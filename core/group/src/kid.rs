//! SFrame key ids and base keys of an MLS group, per RFC 9605 section 5.2, and the group
//! verification code.
//!
//! ```text
//!  64-S-E bits    S = 10 bits    E = 3 bits
//! +-------------+--------------+-----------+
//! | context = 0 | sender leaf  | epoch & 7 |
//! +-------------+--------------+-----------+
//! ```
//!
//! A sender's KID is its MLS leaf index shifted left by [`EPOCH_BITS`] with the low bits of
//! the epoch below; the context is always 0, so a group of up to 32 leaves has one-byte KIDs
//! on the wire and one of up to 1024 leaves two-byte KIDs. Every member of an epoch shares one
//! base key, `MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`; the SFrame key schedule (RFC 9605
//! section 4.4.2) mixes the KID in, so each sender's key and salt are its own.

use viska_e2ee::keys::{Epoch, ParticipantId};
use viska_sframe::KeyId;

/// The MLS exporter label of the SFrame base key (RFC 9605 section 5.2).
pub const BASE_KEY_LABEL: &str = "SFrame 1.0 Base Key";

/// `E`: low bits of the MLS epoch in a KID. Eight epochs are told apart; a receiver drops the
/// keys of epoch `n - 8` before it installs epoch `n`, whose KIDs are the same (RFC 9605
/// section 5.2's rule for the rollover), so a KID never names two keys at once.
pub const EPOCH_BITS: u8 = 3;

/// `S`: bits of the sender's leaf index in a KID. A group has at most `1 << S` leaves.
pub const INDEX_BITS: u8 = 10;

/// The most leaves a group may have: a leaf index must fit in [`INDEX_BITS`].
pub const MAX_LEAVES: u32 = 1 << INDEX_BITS;

/// Epochs a receiver can tell apart by KID.
pub const EPOCHS_DISTINGUISHED: u64 = 1 << EPOCH_BITS;

/// The KID of `sender`'s frames in `epoch`, or `None` when the leaf index does not fit.
pub fn key_id(sender: ParticipantId, epoch: Epoch) -> Option<KeyId> {
    if sender.0 >= MAX_LEAVES {
        return None;
    }
    let epoch_bits = epoch.0 & (EPOCHS_DISTINGUISHED - 1);
    Some(KeyId((u64::from(sender.0) << EPOCH_BITS) | epoch_bits))
}

/// The sender and low epoch bits a KID carries, when its context is 0 (every other KID is not
/// one of a Viska group).
pub fn parse_key_id(kid: KeyId) -> Option<(ParticipantId, u64)> {
    let index = kid.0 >> EPOCH_BITS;
    if index >= u64::from(MAX_LEAVES) {
        return None;
    }
    let sender = ParticipantId(u32::try_from(index).ok()?);
    Some((sender, kid.0 & (EPOCHS_DISTINGUISHED - 1)))
}

/// Digits of a [`verification_code`].
pub const VERIFICATION_DIGITS: usize = 30;

/// The group verification code of an epoch: 30 digits, in six groups of five, from the MLS
/// epoch authenticator (RFC 9420 section 8.7), identical at every member in the epoch. Each
/// group of five is a big-endian 40-bit number from the next five bytes, modulo 100000 (the
/// bias of the reduction is below 10^-7). Members compare it out of band; a relay that splits
/// the group or adds a member of its own cannot make two views show the same code.
pub fn verification_code(epoch_authenticator: &[u8]) -> Option<String> {
    let mut code = String::with_capacity(VERIFICATION_DIGITS + 5);
    for (i, chunk) in epoch_authenticator.chunks_exact(5).take(6).enumerate() {
        let value = chunk.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
        if i > 0 {
            code.push(' ');
        }
        code.push_str(&format!("{:05}", value % 100_000));
    }
    (code.len() == VERIFICATION_DIGITS + 5).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_layout_is_leaf_then_three_epoch_bits() {
        // Computed by hand: leaf 5, epoch 9 -> 5 << 3 | (9 & 7) = 40 | 1 = 41.
        assert_eq!(key_id(ParticipantId(5), Epoch(9)), Some(KeyId(41)));
        assert_eq!(key_id(ParticipantId(0), Epoch(0)), Some(KeyId(0)));
        // The largest leaf: 1023 << 3 | 7 = 8191, two bytes on the wire.
        assert_eq!(key_id(ParticipantId(1023), Epoch(15)), Some(KeyId(8191)));
        assert_eq!(key_id(ParticipantId(1024), Epoch(0)), None);
        assert_eq!(parse_key_id(KeyId(41)), Some((ParticipantId(5), 1)));
        assert_eq!(parse_key_id(KeyId(8192)), None);
        // Epochs eight apart share a KID: the rollover the receivers handle.
        assert_eq!(
            key_id(ParticipantId(3), Epoch(2)),
            key_id(ParticipantId(3), Epoch(10))
        );
    }

    #[test]
    fn kid_matches_the_independent_sframe_crate() {
        let range = sframe::mls::MlsKeyIdBitRange::new(EPOCH_BITS, INDEX_BITS);
        for (leaf, epoch) in [(0u32, 0u64), (5, 9), (31, 7), (1023, 1_000_003)] {
            let theirs = sframe::mls::MlsKeyId::try_new(0u64, epoch, leaf, range)
                .map(u64::from)
                .ok();
            let ours = key_id(ParticipantId(leaf), Epoch(epoch)).map(|k| k.0);
            assert_eq!(ours, theirs, "leaf {leaf} epoch {epoch}");
        }
    }

    #[test]
    fn verification_code_groups_five_byte_chunks() {
        let mut auth = [0u8; 32];
        // First chunk 00 00 00 01 00 = 256 -> "00256"; second 0xff x5 = 2^40-1 = 1099511627775
        // -> 27775.
        auth[3] = 1;
        auth[5..10].fill(0xff);
        let code = verification_code(&auth).expect("32 bytes make a code");
        assert_eq!(code, "00256 27775 00000 00000 00000 00000");
        assert!(verification_code(&auth[..29]).is_none());
    }
}

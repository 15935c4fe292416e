//! The AES-CTR + HMAC-SHA256 AEAD of RFC 9605 §4.5.1, behind suite
//! AES_128_CTR_HMAC_SHA256_80 (0x0001).
//!
//! The derived `sframe_key` (Nk = 48 bytes) is split into an AES-128 key (its first 16 bytes)
//! and an HMAC-SHA256 key (the other 32). With `Nt` the tag length:
//!
//! ```text
//! initial_counter = nonce || 00 00 00 00           (16-byte AES-CTR block, counter big-endian)
//! ct              = AES-CTR(enc_key, initial_counter, pt)
//! auth_data       = u64(len(aad)) || u64(len(ct)) || u64(Nt) || nonce || aad || ct
//! tag             = HMAC-SHA256(auth_key, auth_data) truncated to its first Nt bytes
//! ```
//!
//! Opening computes the tag over the received ciphertext first, compares it in constant time,
//! and decrypts only when it matches.

use aes::Aes128;
use aes::cipher::{InnerIvInit, StreamCipher, StreamCipherCoreWrapper};
use chacha20poly1305::aead::inout::InOutBuf;
use ctr::CtrCore;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::suite::{AeadFailure, NONCE_LEN};

// The expanded AES key wipes itself on drop only with the `zeroize` feature of `aes`; this
// fails to compile if it is ever turned off. (The HMAC state is checked in `key.rs`.)
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<Aes128>();
};

/// AES-128 key bytes at the start of `sframe_key` (Nka).
const ENC_KEY_LEN: usize = 16;
/// HMAC-SHA256 key bytes after them (Nh).
const AUTH_KEY_LEN: usize = 32;

/// One derived key of the CTR+HMAC suite: the expanded AES key and the HMAC keyed once (its
/// inner and outer hash states), cloned per frame. Both wipe themselves on drop (the
/// `zeroize` features of `aes`, `hmac` and `sha2`). Never printed.
#[derive(Clone)]
pub(crate) struct AesCtrHmacKey {
    aes: Aes128,
    hmac: Hmac<Sha256>,
    tag_len: usize,
}

impl AesCtrHmacKey {
    /// `key` is `sframe_key`: 16 bytes of AES key, then 32 of HMAC key. `None` for any other
    /// length, or a tag length HMAC-SHA256 cannot give.
    pub(crate) fn new(key: &[u8], tag_len: usize) -> Option<Self> {
        if key.len() != ENC_KEY_LEN + AUTH_KEY_LEN || tag_len == 0 || tag_len > 32 {
            return None;
        }
        let (enc_key, auth_key) = key.split_at(ENC_KEY_LEN);
        Some(Self {
            aes: Aes128::new_from_slice(enc_key).ok()?,
            hmac: <Hmac<Sha256> as KeyInit>::new_from_slice(auth_key).ok()?,
            tag_len,
        })
    }

    /// The truncated HMAC over the lengths, the nonce, the AAD and the ciphertext.
    fn tag(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], ct: &[u8]) -> [u8; 32] {
        let mut mac = self.hmac.clone();
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(&(ct.len() as u64).to_be_bytes());
        mac.update(&(self.tag_len as u64).to_be_bytes());
        mac.update(nonce);
        mac.update(aad);
        mac.update(ct);
        mac.finalize().into_bytes().into()
    }

    /// AES-CTR over `buf` (in → out) from the block `nonce || 0u32`.
    fn apply_keystream(&self, nonce: &[u8; NONCE_LEN], buf: InOutBuf<'_, '_, u8>) {
        let mut block = [0u8; 16];
        if let Some(head) = block.get_mut(..NONCE_LEN) {
            head.copy_from_slice(nonce);
        }
        // A 32-bit block counter: a frame would need 64 GiB to wrap it.
        let core = CtrCore::<Aes128, ctr::flavors::Ctr32BE>::inner_iv_init(
            self.aes.clone(),
            &block.into(),
        );
        StreamCipherCoreWrapper::from_core(core).apply_keystream_inout(buf);
    }

    /// Encrypts `buf` and writes the `tag_len`-byte tag to `tag_out`.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        mut buf: InOutBuf<'_, '_, u8>,
        tag_out: &mut [u8],
    ) -> Result<(), AeadFailure> {
        if tag_out.len() != self.tag_len {
            return Err(AeadFailure);
        }
        self.apply_keystream(nonce, buf.reborrow());
        let tag = self.tag(nonce, aad, buf.get_out());
        tag_out.copy_from_slice(tag.get(..self.tag_len).ok_or(AeadFailure)?);
        Ok(())
    }

    /// Checks `tag` over the ciphertext (the in side of `buf`), in constant time, and only then
    /// decrypts into the out side.
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
        tag: &[u8],
    ) -> Result<(), AeadFailure> {
        let expected = self.tag(nonce, aad, buf.get_in());
        let expected = expected.get(..self.tag_len).ok_or(AeadFailure)?;
        // Lengths are public; only the bytes are compared in constant time.
        if tag.len() != self.tag_len || !bool::from(expected.ct_eq(tag)) {
            return Err(AeadFailure);
        }
        self.apply_keystream(nonce, buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AesCtrHmacKey {
        let bytes: Vec<u8> = (0u8..48).collect();
        AesCtrHmacKey::new(&bytes, 10).expect("key")
    }

    #[test]
    fn only_48_byte_keys_and_sane_tag_lengths() {
        assert!(AesCtrHmacKey::new(&[0; 47], 10).is_none());
        assert!(AesCtrHmacKey::new(&[0; 49], 10).is_none());
        assert!(AesCtrHmacKey::new(&[0; 48], 0).is_none());
        assert!(AesCtrHmacKey::new(&[0; 48], 33).is_none());
        assert!(AesCtrHmacKey::new(&[0; 48], 4).is_some());
    }

    #[test]
    fn seal_then_open_round_trips_and_every_tag_bit_matters() {
        let key = key();
        let nonce = [7u8; NONCE_LEN];
        let plain = b"sixty bytes of opus, more or less".to_vec();
        let mut ct = vec![0u8; plain.len()];
        let mut tag = [0u8; 10];
        key.seal(
            &nonce,
            b"aad",
            InOutBuf::new(&plain, &mut ct).expect("lengths"),
            &mut tag,
        )
        .expect("seal");
        assert_ne!(ct, plain);
        let mut out = vec![0u8; ct.len()];
        key.open(
            &nonce,
            b"aad",
            InOutBuf::new(&ct, &mut out).expect("lengths"),
            &tag,
        )
        .expect("open");
        assert_eq!(out, plain);
        for bit in 0..80 {
            let mut bad = tag;
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = vec![0u8; ct.len()];
            assert_eq!(
                key.open(
                    &nonce,
                    b"aad",
                    InOutBuf::new(&ct, &mut out).expect("lengths"),
                    &bad
                ),
                Err(AeadFailure)
            );
            assert!(out.iter().all(|&b| b == 0), "nothing decrypted on failure");
        }
        let mut out = vec![0u8; ct.len()];
        for (aad, tag) in [(&b"aaD"[..], &tag[..]), (b"aad", &tag[..9])] {
            assert_eq!(
                key.open(
                    &nonce,
                    aad,
                    InOutBuf::new(&ct, &mut out).expect("lengths"),
                    tag
                ),
                Err(AeadFailure)
            );
        }
        let mut short = [0u8; 9];
        assert_eq!(
            key.seal(
                &nonce,
                b"",
                InOutBuf::new(&plain, &mut ct).expect("lengths"),
                &mut short
            ),
            Err(AeadFailure)
        );
    }
}

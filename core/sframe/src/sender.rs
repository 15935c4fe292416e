//! The sending side: one KID, one derived key, a counter that only moves forward.

use chacha20poly1305::aead::inout::InOutBuf;

use crate::error::SframeError;
use crate::header::{MAX_HEADER_LEN, SframeHeader};
use crate::key::{BaseKey, KeyContext, KeyId, SendKey};
use crate::suite::CipherSuite;

/// One past the largest counter: the whole 64-bit counter space.
const COUNTER_SPACE: u128 = 1 << 64;

/// AAD up to this length (header + metadata) is assembled on the stack; longer metadata costs
/// one heap allocation per frame.
pub(crate) const STACK_AAD_LEN: usize = 512;

/// Runs `f` with `header || metadata` as one contiguous slice, without allocating when it is
/// short (or when there is no metadata, the common media case).
pub(crate) fn with_aad<R>(header: &[u8], metadata: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if metadata.is_empty() {
        return f(header);
    }
    let len = header.len() + metadata.len();
    let mut stack = [0u8; STACK_AAD_LEN];
    if let Some(aad) = stack.get_mut(..len) {
        let (head, tail) = aad.split_at_mut(header.len());
        head.copy_from_slice(header);
        tail.copy_from_slice(metadata);
        f(aad)
    } else {
        let mut heap = Vec::with_capacity(len);
        heap.extend_from_slice(header);
        heap.extend_from_slice(metadata);
        f(&heap)
    }
}

/// Protects frames under one key at a time. Counters start at 0 (or at the value given to
/// [`Self::starting_at`]), grow by one per frame, may jump forward with [`Self::skip_to`], and
/// are never reused: when they run out, [`Self::protect`] returns
/// [`SframeError::RekeyRequired`]. A [rekey](Self::rekey) changes the key and KID and keeps
/// the counter running, so a sender's counter is its frame index for its whole life, and a
/// counter is never used twice under any key this sender had.
///
/// `Debug` shows the suite, KID and counters, never the key.
#[derive(Debug)]
pub struct SframeSender {
    suite: CipherSuite,
    kid: KeyId,
    key: KeyContext,
    /// Counter of the next frame; `>= end` means exhausted. u128 so "past u64::MAX" is representable.
    next: u128,
    /// Exclusive upper bound on counters.
    end: u128,
}

impl SframeSender {
    /// A sender for `kid` whose first frame has counter 0. Derives and initialises the AEAD key
    /// once, here.
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] if the base key is too short.
    pub fn new(suite: CipherSuite, kid: KeyId, base_key: &BaseKey) -> Result<Self, SframeError> {
        Self::starting_at(suite, kid, base_key, 0)
    }

    /// A sender whose first frame has counter `first_ctr`: resume a restarted sender after its
    /// persisted high-water mark (persist [`Self::next_counter`] before sending, then resume
    /// from it) so no counter is used twice under this key.
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] if the base key is too short.
    pub fn starting_at(
        suite: CipherSuite,
        kid: KeyId,
        base_key: &BaseKey,
        first_ctr: u64,
    ) -> Result<Self, SframeError> {
        let key = KeyContext::new(suite, kid, base_key)?;
        Ok(Self {
            suite,
            kid,
            key,
            next: u128::from(first_ctr),
            end: COUNTER_SPACE,
        })
    }

    /// A sender that takes ownership of `key` and starts at counter 0. The key cannot be given
    /// to any other sender afterwards.
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] if the base key is too short.
    pub fn from_key(suite: CipherSuite, key: SendKey) -> Result<Self, SframeError> {
        Self::new(suite, key.key_id(), key.base_key())
    }

    /// Switches to `key` (a new epoch of the key source): later frames carry its KID and are
    /// protected with it; the counter runs on from where it is, so receivers see one unbroken
    /// sequence across the change and no counter is used twice under either key. On error the
    /// old key stays in use.
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] if the base key is too short.
    pub fn rekey(&mut self, key: SendKey) -> Result<(), SframeError> {
        self.key = KeyContext::new(self.suite, key.key_id(), key.base_key())?;
        self.kid = key.key_id();
        Ok(())
    }

    /// Caps the counter: frames may use counters below `limit` only; from then on
    /// [`Self::protect`] returns [`SframeError::RekeyRequired`]. Use it to rotate keys well
    /// before the 2^64 space runs out, or to bound the frames sent under one key.
    #[must_use]
    pub fn with_counter_limit(mut self, limit: u64) -> Self {
        self.end = u128::from(limit);
        self
    }

    /// The suite this sender uses.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The KID written into every header.
    pub fn kid(&self) -> KeyId {
        self.kid
    }

    /// The counter the next frame will carry, or `None` when the counter space is used up.
    pub fn next_counter(&self) -> Option<u64> {
        if self.next < self.end {
            u64::try_from(self.next).ok()
        } else {
            None
        }
    }

    /// Moves the counter forward to `ctr` (the media layer keeps CTR equal to the frame index,
    /// skipping the counters of frames not sent during silence or hold). `ctr` equal to the
    /// next counter is a no-op.
    ///
    /// # Errors
    /// [`SframeError::CounterRegression`] if `ctr` is below the next counter (that would reuse a
    /// nonce); [`SframeError::RekeyRequired`] if `ctr` is at or past the limit. The counter is
    /// unchanged on error.
    pub fn skip_to(&mut self, ctr: u64) -> Result<(), SframeError> {
        let wanted = u128::from(ctr);
        if wanted < self.next {
            return Err(SframeError::CounterRegression {
                next: u64::try_from(self.next).unwrap_or(u64::MAX),
                requested: ctr,
            });
        }
        if wanted >= self.end {
            return Err(SframeError::RekeyRequired);
        }
        self.next = wanted;
        Ok(())
    }

    /// Bytes a frame of `plaintext_len` bytes will take with the next counter (header, ciphertext
    /// and tag); size `out` for [`Self::protect`] with it.
    pub fn protected_len(&self, plaintext_len: usize) -> usize {
        let ctr = self.next_counter().unwrap_or(u64::MAX);
        SframeHeader { kid: self.kid, ctr }.encoded_len() + plaintext_len + self.suite.tag_len()
    }

    /// Encrypts `plaintext` into `out` as `header || ciphertext || tag` and returns the bytes
    /// written. `metadata` is authenticated (AAD = header || metadata) but not sent; the
    /// receiver must pass the same bytes. Allocates nothing when `metadata` is at most
    /// 495 bytes.
    ///
    /// # Errors
    /// [`SframeError::RekeyRequired`] when the counter space is used up;
    /// [`SframeError::BufferTooSmall`] if `out` is shorter than [`Self::protected_len`]. On
    /// error no counter is consumed.
    pub fn protect(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SframeError> {
        let ctr = self.next_counter().ok_or(SframeError::RekeyRequired)?;
        let header = SframeHeader { kid: self.kid, ctr };
        let header_len = header.encoded_len();
        let needed = header_len
            .checked_add(plaintext.len())
            .and_then(|n| n.checked_add(self.suite.tag_len()))
            .ok_or(SframeError::MessageTooLong)?;
        let available = out.len();
        let frame = out
            .get_mut(..needed)
            .ok_or(SframeError::BufferTooSmall { needed, available })?;
        let (header_dst, body) = frame.split_at_mut(header_len);
        header.encode(header_dst)?;
        let (ciphertext, tag_dst) = body.split_at_mut(plaintext.len());
        let inout = InOutBuf::new(plaintext, ciphertext)
            .map_err(|_| SframeError::Internal("ciphertext slice length"))?;
        let nonce = self.key.nonce(ctr);
        let aead = &self.key.aead;
        with_aad(header_dst, metadata, |aad| {
            aead.seal(&nonce, aad, inout, tag_dst)
        })
        .map_err(|_| SframeError::MessageTooLong)?;
        self.next = u128::from(ctr) + 1;
        Ok(needed)
    }
}

const _: () = assert!(STACK_AAD_LEN > MAX_HEADER_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReplayConfig, SframeReceiver};

    /// A rekey keeps the counter running: the receiver sees one unbroken sequence over both
    /// keys, and the first frame under the new key does not restart at 0.
    #[test]
    fn a_rekey_changes_key_and_kid_and_the_counter_runs_on() {
        let suite = CipherSuite::ChaCha20Poly1305Sha256;
        let (old, new) = (BaseKey::new(vec![1; 32]), BaseKey::new(vec![2; 32]));
        let mut sender =
            SframeSender::from_key(suite, SendKey::new(KeyId(4), old.clone())).expect("sender");
        let mut receiver = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        receiver.add_key(KeyId(4), &old).expect("old key");
        receiver.add_key(KeyId(5), &new).expect("new key");
        let (mut frame, mut plain) = ([0u8; 64], [0u8; 64]);
        for expected in 0..3u64 {
            let len = sender.protect(&[], b"before", &mut frame).expect("protect");
            let got = receiver
                .unprotect(&[], frame.get(..len).expect("len"), &mut plain)
                .expect("unprotect");
            assert_eq!((got.kid, got.ctr), (KeyId(4), expected));
        }
        sender.rekey(SendKey::new(KeyId(5), new)).expect("rekey");
        assert_eq!(sender.kid(), KeyId(5));
        assert_eq!(sender.next_counter(), Some(3));
        let len = sender.protect(&[], b"after", &mut frame).expect("protect");
        let got = receiver
            .unprotect(&[], frame.get(..len).expect("len"), &mut plain)
            .expect("unprotect");
        assert_eq!((got.kid, got.ctr), (KeyId(5), 3));
        assert_eq!(plain.get(..got.len), Some(&b"after"[..]));
    }

    #[test]
    fn a_rekey_with_a_bad_key_keeps_the_old_one() {
        let suite = CipherSuite::Aes128GcmSha256;
        let mut sender =
            SframeSender::from_key(suite, SendKey::new(KeyId(1), BaseKey::new(vec![7; 16])))
                .expect("sender");
        let refused = sender.rekey(SendKey::new(KeyId(2), BaseKey::new(vec![7; 8])));
        assert!(matches!(refused, Err(SframeError::BaseKeyTooShort { .. })));
        assert_eq!(sender.kid(), KeyId(1));
        assert_eq!(
            format!("{:?}", SendKey::new(KeyId(9), BaseKey::new(vec![0xab; 16]))),
            "SendKey { kid: KeyId(9), base_key: \"***\" }"
        );
    }
}

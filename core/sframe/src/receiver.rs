//! The receiving side: keys by KID, a replay window per KID, counters for security events.

use std::collections::HashMap;

use chacha20poly1305::aead::inout::InOutBuf;

use crate::error::SframeError;
use crate::header::SframeHeader;
use crate::key::{BaseKey, KeyContext, KeyId};
use crate::replay::{ReplayConfig, ReplayVerdict, ReplayWindow};
use crate::sender::with_aad;
use crate::suite::CipherSuite;

/// A frame that authenticated: who sent it (KID), its counter, and the plaintext length written
/// at the start of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unprotected {
    /// KID from the header.
    pub kid: KeyId,
    /// Counter from the header.
    pub ctr: u64,
    /// Plaintext bytes written to `out`.
    pub len: usize,
}

/// Running counts of what the receiver saw: each frame counts once, as accepted or in the category
/// of its rejection. A frame refused only because the caller's output buffer was too small is not
/// counted (it can be retried). Reported to the app as security events (decryption failures,
/// replays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiverStats {
    /// Frames that authenticated and were accepted.
    pub frames_ok: u64,
    /// Frames whose tag did not verify.
    pub auth_failures: u64,
    /// Frames whose counter was already accepted.
    pub duplicates: u64,
    /// Frames older than the replay window.
    pub too_old: u64,
    /// Frames for a KID with no installed key.
    pub unknown_kid: u64,
    /// Frames with a truncated header or no room for a tag.
    pub malformed: u64,
}

#[derive(Debug)]
struct ReceiverKey {
    key: KeyContext,
    replay: ReplayWindow,
}

/// Unprotects frames for any number of KIDs. `Debug` shows KIDs and stats, never keys.
#[derive(Debug)]
pub struct SframeReceiver {
    suite: CipherSuite,
    config: ReplayConfig,
    keys: HashMap<KeyId, ReceiverKey>,
    stats: ReceiverStats,
}

impl SframeReceiver {
    /// A receiver with no keys.
    ///
    /// # Errors
    /// [`SframeError::InvalidReplayWindow`] if the window is out of range.
    pub fn new(suite: CipherSuite, config: ReplayConfig) -> Result<Self, SframeError> {
        config.validate()?;
        Ok(Self {
            suite,
            config,
            keys: HashMap::new(),
            stats: ReceiverStats::default(),
        })
    }

    /// The suite this receiver expects.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// Installs (or replaces) the key of `kid`, deriving and initialising the AEAD once, here.
    /// Replacing a key starts a fresh replay window for that KID, because a KID that comes back
    /// with a new key (e.g. MLS epoch bits wrapping) restarts its counters; re-installing the
    /// *same* key therefore re-opens replay of its old frames, so don't.
    ///
    /// # Errors
    /// [`SframeError::BaseKeyTooShort`] if the base key is too short; the old key, if any, stays.
    pub fn add_key(&mut self, kid: KeyId, base_key: &BaseKey) -> Result<(), SframeError> {
        let key = KeyContext::new(self.suite, kid, base_key)?;
        let replay = ReplayWindow::new(self.config)?;
        self.keys.insert(kid, ReceiverKey { key, replay });
        Ok(())
    }

    /// Removes the key of `kid` (its frames then fail with [`SframeError::UnknownKeyId`]).
    /// Returns whether a key was installed.
    pub fn remove_key(&mut self, kid: KeyId) -> bool {
        self.keys.remove(&kid).is_some()
    }

    /// Whether a key is installed for `kid`.
    pub fn has_key(&self, kid: KeyId) -> bool {
        self.keys.contains_key(&kid)
    }

    /// Counts so far.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Parses, replay-checks, authenticates and decrypts `frame` (`header || ciphertext || tag`)
    /// with `metadata` as extra AAD, writing the plaintext to the start of `out`
    /// (`out.len() >= frame.len() - header - tag`). The replay window moves only after the frame
    /// authenticated. Allocates nothing when `metadata` is at most 495 bytes.
    ///
    /// # Errors
    /// [`SframeError::MalformedHeader`] / [`SframeError::TruncatedFrame`] for unparseable
    /// frames, [`SframeError::UnknownKeyId`], [`SframeError::Duplicate`],
    /// [`SframeError::TooOld`], [`SframeError::BufferTooSmall`],
    /// [`SframeError::AuthenticationFailed`]. On error `out` holds no plaintext.
    pub fn unprotect(
        &mut self,
        metadata: &[u8],
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<Unprotected, SframeError> {
        let (header, header_len) = match SframeHeader::decode(frame) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        let (header_bytes, body) = frame.split_at(header_len);
        let tag_len = self.suite.tag_len();
        let Some(ciphertext_len) = body.len().checked_sub(tag_len) else {
            self.stats.malformed += 1;
            return Err(SframeError::TruncatedFrame {
                len: body.len(),
                header_len,
                tag_len,
            });
        };
        let (ciphertext, tag) = body.split_at(ciphertext_len);

        let SframeHeader { kid, ctr } = header;
        let Some(entry) = self.keys.get_mut(&kid) else {
            self.stats.unknown_kid += 1;
            return Err(SframeError::UnknownKeyId(kid));
        };
        match entry.replay.check(ctr) {
            ReplayVerdict::Fresh => {}
            ReplayVerdict::Duplicate => {
                self.stats.duplicates += 1;
                return Err(SframeError::Duplicate { kid, ctr });
            }
            ReplayVerdict::TooOld => {
                self.stats.too_old += 1;
                return Err(SframeError::TooOld { kid, ctr });
            }
        }
        let available = out.len();
        let plaintext = out
            .get_mut(..ciphertext_len)
            .ok_or(SframeError::BufferTooSmall {
                needed: ciphertext_len,
                available,
            })?;
        let nonce = entry.key.nonce(ctr);
        let aead = &entry.key.aead;
        let opened = {
            let inout = InOutBuf::new(ciphertext, &mut *plaintext)
                .map_err(|_| SframeError::Internal("plaintext slice length"))?;
            with_aad(header_bytes, metadata, |aad| {
                aead.open(&nonce, aad, inout, tag)
            })
        };
        if opened.is_err() {
            // The AEADs verify before decrypting, but leave nothing behind whatever they do.
            plaintext.fill(0);
            self.stats.auth_failures += 1;
            return Err(SframeError::AuthenticationFailed);
        }
        entry.replay.record(ctr);
        self.stats.frames_ok += 1;
        Ok(Unprotected {
            kid,
            ctr,
            len: ciphertext_len,
        })
    }
}

//! Transcript hash and key schedule of the direct handshake (see `docs/protocol-handshake.md`).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use viska_sframe::{BaseKey, CipherSuite, KeyId, SendKey};
use zeroize::{Zeroize, Zeroizing};

use super::{ChannelBinding, HandshakeError, Role, Sas, SframeKey};
use crate::encoding::{hash_part, push_part};

const TRANSCRIPT_LABEL: &[u8] = b"viska direct v2 transcript";
const SIGNATURE_LABEL_INITIATOR: &[u8] = b"viska direct v2 initiator signature";
const SIGNATURE_LABEL_RESPONDER: &[u8] = b"viska direct v2 responder signature";
const COMMITMENT_LABEL_INITIATOR: &[u8] = b"viska direct v2 sas commitment initiator";
const COMMITMENT_LABEL_RESPONDER: &[u8] = b"viska direct v2 sas commitment responder";
const MEDIA_LABEL_INITIATOR: &[u8] = b"viska direct v2 media initiator";
const MEDIA_LABEL_RESPONDER: &[u8] = b"viska direct v2 media responder";
const CONTROL_LABEL_INITIATOR: &[u8] = b"viska direct v2 control initiator";
const CONTROL_LABEL_RESPONDER: &[u8] = b"viska direct v2 control responder";
const CONFIRM_LABEL_INITIATOR: &[u8] = b"viska direct v2 confirm initiator";
const CONFIRM_LABEL_RESPONDER: &[u8] = b"viska direct v2 confirm responder";
const SAS_LABEL: &[u8] = b"viska direct v2 sas";

// The HKDF and HMAC states below hold the PRK and keys derived from it; with the `zeroize`
// features of `hmac` and `sha2` their SHA-256 block states (and buffers) wipe themselves on
// drop. This fails to compile if those features are ever turned off.
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
    wiped_on_drop::<Sha256>();
};

/// SFrame KIDs of direct mode. Small, so they fit in the SFrame config byte.
pub(crate) const KID_MEDIA_INITIATOR: KeyId = KeyId(0);
pub(crate) const KID_MEDIA_RESPONDER: KeyId = KeyId(1);
pub(crate) const KID_CONTROL_INITIATOR: KeyId = KeyId(2);
pub(crate) const KID_CONTROL_RESPONDER: KeyId = KeyId(3);

/// The transcript hash: SHA-256 over the prologue (the signaling layer's `Hello`s), message 1,
/// message 2 up to its signature, and the TLS exporter value, each length-prefixed after a
/// domain label.
pub(crate) fn transcript_hash(
    prologue: &[u8],
    msg1: &[u8],
    msg2_body: &[u8],
    binding: &ChannelBinding,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hash_part(&mut hasher, TRANSCRIPT_LABEL);
    hash_part(&mut hasher, prologue);
    hash_part(&mut hasher, msg1);
    hash_part(&mut hasher, msg2_body);
    hash_part(&mut hasher, &binding.tls_exporter);
    hasher.finalize().into()
}

/// What `role` signs: its role label and the transcript hash, length-prefixed.
pub(crate) fn signed_content(role: Role, transcript_hash: &[u8; 32]) -> Vec<u8> {
    let label = match role {
        Role::Initiator => SIGNATURE_LABEL_INITIATOR,
        Role::Responder => SIGNATURE_LABEL_RESPONDER,
    };
    let mut out = Vec::with_capacity(80);
    push_part(&mut out, label);
    push_part(&mut out, transcript_hash);
    out
}

/// The commitment to `role`'s SAS nonce: carried in message 1 (initiator) or 2 (responder),
/// opened by message 3 or 4. The role label keeps one side's commitment from being reflected
/// as the other's.
pub(crate) fn sas_commitment(role: Role, sas_nonce: &[u8; 32]) -> [u8; 32] {
    let label = match role {
        Role::Initiator => COMMITMENT_LABEL_INITIATOR,
        Role::Responder => COMMITMENT_LABEL_RESPONDER,
    };
    let mut hasher = Sha256::new();
    hash_part(&mut hasher, label);
    hash_part(&mut hasher, sas_nonce);
    hasher.finalize().into()
}

/// The HKDF pseudorandom key of one handshake, `HKDF-Extract(salt = transcript hash, IKM =
/// X25519 shared secret)`, and everything expanded from it.
pub(crate) struct KeySchedule {
    prk: Zeroizing<[u8; 32]>,
}

impl KeySchedule {
    pub(crate) fn new(transcript_hash: &[u8; 32], shared_secret: &[u8; 32]) -> Self {
        let (mut output, _) = Hkdf::<Sha256>::extract(Some(transcript_hash), shared_secret);
        let mut prk = Zeroizing::new([0u8; 32]);
        prk.copy_from_slice(&output);
        output.as_mut_slice().zeroize();
        Self { prk }
    }

    fn expand(&self, info: &[&[u8]], out: &mut [u8]) -> Result<(), HandshakeError> {
        Hkdf::<Sha256>::from_prk(self.prk.as_slice())
            .ok()
            .and_then(|hkdf| hkdf.expand_multi_info(info, out).ok())
            .ok_or(HandshakeError::Internal("HKDF expand length"))
    }

    fn base_key(&self, label: &[u8], len: usize) -> Result<BaseKey, HandshakeError> {
        let mut bytes = vec![0u8; len];
        self.expand(&[label], &mut bytes)?;
        Ok(BaseKey::new(bytes))
    }

    /// The SFrame keys of the call for `role`: what it sends with (media, control), each a
    /// [`SendKey`] derived once here, and what it receives with (media, control).
    pub(crate) fn sframe_keys(
        &self,
        role: Role,
        suite: CipherSuite,
    ) -> Result<(SendKey, SendKey, SframeKey, SframeKey), HandshakeError> {
        let len = suite.key_len();
        let ((media_kid, media_label), (control_kid, control_label)) = match role {
            Role::Initiator => (
                (KID_MEDIA_INITIATOR, MEDIA_LABEL_INITIATOR),
                (KID_CONTROL_INITIATOR, CONTROL_LABEL_INITIATOR),
            ),
            Role::Responder => (
                (KID_MEDIA_RESPONDER, MEDIA_LABEL_RESPONDER),
                (KID_CONTROL_RESPONDER, CONTROL_LABEL_RESPONDER),
            ),
        };
        let ((peer_media_kid, peer_media_label), (peer_control_kid, peer_control_label)) =
            match role {
                Role::Initiator => (
                    (KID_MEDIA_RESPONDER, MEDIA_LABEL_RESPONDER),
                    (KID_CONTROL_RESPONDER, CONTROL_LABEL_RESPONDER),
                ),
                Role::Responder => (
                    (KID_MEDIA_INITIATOR, MEDIA_LABEL_INITIATOR),
                    (KID_CONTROL_INITIATOR, CONTROL_LABEL_INITIATOR),
                ),
            };
        Ok((
            SendKey::new(media_kid, self.base_key(media_label, len)?),
            SendKey::new(control_kid, self.base_key(control_label, len)?),
            SframeKey {
                key_id: peer_media_kid,
                base_key: self.base_key(peer_media_label, len)?,
            },
            SframeKey {
                key_id: peer_control_kid,
                base_key: self.base_key(peer_control_label, len)?,
            },
        ))
    }

    /// `role`'s key-confirmation MAC over the transcript hash.
    pub(crate) fn confirmation(
        &self,
        role: Role,
        transcript_hash: &[u8; 32],
    ) -> Result<[u8; 32], HandshakeError> {
        Ok(self
            .confirmation_mac(role, transcript_hash)?
            .finalize()
            .into_bytes()
            .into())
    }

    /// Checks `role`'s key-confirmation MAC in constant time.
    pub(crate) fn verify_confirmation(
        &self,
        role: Role,
        transcript_hash: &[u8; 32],
        mac: &[u8; 32],
    ) -> Result<(), HandshakeError> {
        self.confirmation_mac(role, transcript_hash)?
            .verify_slice(mac)
            .map_err(|_| HandshakeError::BadConfirmation)
    }

    fn confirmation_mac(
        &self,
        role: Role,
        transcript_hash: &[u8; 32],
    ) -> Result<Hmac<Sha256>, HandshakeError> {
        let label = match role {
            Role::Initiator => CONFIRM_LABEL_INITIATOR,
            Role::Responder => CONFIRM_LABEL_RESPONDER,
        };
        let mut key = Zeroizing::new([0u8; 32]);
        self.expand(&[label], key.as_mut_slice())?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice())
            .map_err(|_| HandshakeError::Internal("HMAC key length"))?;
        mac.update(transcript_hash);
        Ok(mac)
    }

    /// The short authentication string, from 8 bytes of HKDF output bound to both sides' SAS
    /// nonces: neither side can know it before the other has revealed its nonce.
    pub(crate) fn sas(
        &self,
        initiator_nonce: &[u8; 32],
        responder_nonce: &[u8; 32],
    ) -> Result<Sas, HandshakeError> {
        let mut bytes = Zeroizing::new([0u8; 8]);
        self.expand(
            &[SAS_LABEL, initiator_nonce, responder_nonce],
            bytes.as_mut_slice(),
        )?;
        Ok(Sas::from_u64(u64::from_be_bytes(*bytes)))
    }
}

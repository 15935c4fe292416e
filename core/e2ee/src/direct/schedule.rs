//! Transcript hash and key schedule of the direct handshake (see `docs/protocol-handshake.md`).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use viska_sframe::{BaseKey, CipherSuite, KeyId};
use zeroize::{Zeroize, Zeroizing};

use super::{ChannelBinding, HandshakeError, Role, Sas, SframeKey};
use crate::encoding::{hash_part, push_part};

const TRANSCRIPT_LABEL: &[u8] = b"viska direct v1 transcript";
const SIGNATURE_LABEL_INITIATOR: &[u8] = b"viska direct v1 initiator signature";
const SIGNATURE_LABEL_RESPONDER: &[u8] = b"viska direct v1 responder signature";
const COMMITMENT_LABEL: &[u8] = b"viska direct v1 sas commitment";
const MEDIA_LABEL_INITIATOR: &[u8] = b"viska direct v1 media initiator";
const MEDIA_LABEL_RESPONDER: &[u8] = b"viska direct v1 media responder";
const CONTROL_LABEL_INITIATOR: &[u8] = b"viska direct v1 control initiator";
const CONTROL_LABEL_RESPONDER: &[u8] = b"viska direct v1 control responder";
const CONFIRM_LABEL_INITIATOR: &[u8] = b"viska direct v1 confirm initiator";
const CONFIRM_LABEL_RESPONDER: &[u8] = b"viska direct v1 confirm responder";
const SAS_LABEL: &[u8] = b"viska direct v1 sas";

/// SFrame KIDs of direct mode. Small, so they fit in the SFrame config byte.
pub(crate) const KID_MEDIA_INITIATOR: KeyId = KeyId(0);
pub(crate) const KID_MEDIA_RESPONDER: KeyId = KeyId(1);
pub(crate) const KID_CONTROL_INITIATOR: KeyId = KeyId(2);
pub(crate) const KID_CONTROL_RESPONDER: KeyId = KeyId(3);

/// The transcript hash: SHA-256 over message 1, message 2 up to its signature, and both TLS
/// certificate hashes, each length-prefixed after a domain label.
pub(crate) fn transcript_hash(msg1: &[u8], msg2_body: &[u8], binding: &ChannelBinding) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hash_part(&mut hasher, TRANSCRIPT_LABEL);
    hash_part(&mut hasher, msg1);
    hash_part(&mut hasher, msg2_body);
    hash_part(&mut hasher, &binding.initiator_cert_sha256);
    hash_part(&mut hasher, &binding.responder_cert_sha256);
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

/// The commitment message 1 carries to the SAS nonce message 3 reveals.
pub(crate) fn sas_commitment(sas_nonce: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hash_part(&mut hasher, COMMITMENT_LABEL);
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

    /// The SFrame keys the two roles send with: (media, control) of the initiator, then of the
    /// responder.
    pub(crate) fn sframe_keys(&self, suite: CipherSuite) -> Result<[SframeKey; 4], HandshakeError> {
        let len = crate::suite::key_len(suite).ok_or(HandshakeError::Internal(
            "negotiated suite has no key length",
        ))?;
        Ok([
            SframeKey {
                key_id: KID_MEDIA_INITIATOR,
                base_key: self.base_key(MEDIA_LABEL_INITIATOR, len)?,
            },
            SframeKey {
                key_id: KID_CONTROL_INITIATOR,
                base_key: self.base_key(CONTROL_LABEL_INITIATOR, len)?,
            },
            SframeKey {
                key_id: KID_MEDIA_RESPONDER,
                base_key: self.base_key(MEDIA_LABEL_RESPONDER, len)?,
            },
            SframeKey {
                key_id: KID_CONTROL_RESPONDER,
                base_key: self.base_key(CONTROL_LABEL_RESPONDER, len)?,
            },
        ])
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

    /// The short authentication string, from 8 bytes of HKDF output bound to the SAS nonce.
    pub(crate) fn sas(&self, sas_nonce: &[u8; 32]) -> Result<Sas, HandshakeError> {
        let mut bytes = Zeroizing::new([0u8; 8]);
        self.expand(&[SAS_LABEL, sas_nonce], bytes.as_mut_slice())?;
        Ok(Sas::from_u64(u64::from_be_bytes(*bytes)))
    }
}

//! Known-answer tests against vectors from the independent Python implementation
//! (`tests/vectors/reference.py`, written from `docs/protocol-handshake.md`).
// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use serde_json::Value;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeStep, SessionKeys,
};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity, SafetyNumber};
use viska_e2ee::rand_core::{TryCryptoRng, TryRng};
use viska_sframe::{CipherSuite, KeyId};

const IDENTITY_VECTORS: &str = include_str!("vectors/identity.json");
const HANDSHAKE_VECTORS: &str = include_str!("vectors/direct_handshake.json");

/// A "random" source that plays back fixed bytes, so the vectors can fix every ephemeral and
/// nonce. It panics when it runs dry: the crate drew more randomness than the spec says.
struct ScriptedRng(Vec<u8>);

impl TryRng for ScriptedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.0.len(), "scripted randomness exhausted");
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

impl TryCryptoRng for ScriptedRng {}

fn hex(value: &Value) -> Vec<u8> {
    let text = value.as_str().unwrap();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn hex32(value: &Value) -> [u8; 32] {
    hex(value).try_into().unwrap()
}

fn suites(value: &Value) -> Vec<CipherSuite> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| match id.as_u64().unwrap() {
            0xF001 => CipherSuite::ChaCha20Poly1305Sha256,
            0x0004 => CipherSuite::Aes128GcmSha256,
            other => panic!("unknown suite {other:#x}"),
        })
        .collect()
}

#[test]
fn identities_match_rfc_8032_and_reference_fingerprints() {
    let vectors: Value = serde_json::from_str(IDENTITY_VECTORS).unwrap();
    for identity in vectors["identities"].as_array().unwrap() {
        let pair = IdentityKeyPair::from_secret_bytes(&hex(&identity["secret"])).unwrap();
        let public = pair.public();
        assert_eq!(public.to_bytes().to_vec(), hex(&identity["public"]));
        assert_eq!(
            pair.sign(b"").to_vec(),
            hex(&identity["signature_of_empty_message"])
        );
        assert_eq!(
            public.fingerprint().as_bytes().to_vec(),
            hex(&identity["fingerprint"])
        );
        assert_eq!(
            public.fingerprint().to_string(),
            identity["fingerprint_display"].as_str().unwrap()
        );
    }
}

#[test]
fn safety_number_matches_reference_in_both_orders() {
    let vectors: Value = serde_json::from_str(IDENTITY_VECTORS).unwrap();
    let vector = &vectors["safety_number"];
    let a = PublicIdentity::from_bytes(&hex(&vector["a"])).unwrap();
    let b = PublicIdentity::from_bytes(&hex(&vector["b"])).unwrap();
    let ab = SafetyNumber::for_pair(&a, &b);
    let ba = SafetyNumber::for_pair(&b, &a);
    assert_eq!(ab.digits(), vector["digits"].as_str().unwrap());
    assert_eq!(ab.to_string(), vector["display"].as_str().unwrap());
    assert_eq!(ab, ba);
    assert_eq!(ba.digits(), vector["digits"].as_str().unwrap());
}

fn expect_keys(
    keys: &SessionKeys,
    expected: &Value,
    own_media: &str,
    peer_media: &str,
    own_control: &str,
    peer_control: &str,
) {
    assert_eq!(
        keys.media_send.expose_secret(),
        hex(&expected[own_media]).as_slice()
    );
    assert_eq!(
        keys.media_recv.base_key.expose_secret(),
        hex(&expected[peer_media]).as_slice()
    );
    assert_eq!(
        keys.control_send.expose_secret(),
        hex(&expected[own_control]).as_slice()
    );
    assert_eq!(
        keys.control_recv.base_key.expose_secret(),
        hex(&expected[peer_control]).as_slice()
    );
    assert_eq!(
        keys.transcript_hash.to_vec(),
        hex(&expected["transcript_hash"])
    );
    assert_eq!(
        u64::from(keys.sas.value()),
        expected["sas"].as_u64().unwrap()
    );
    assert_eq!(
        keys.sas.to_string(),
        expected["sas_display"].as_str().unwrap()
    );
}

#[test]
fn handshake_matches_reference_implementation() {
    let vectors: Value = serde_json::from_str(HANDSHAKE_VECTORS).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = &case["name"];
        let expected = &case["expected"];
        let binding = ChannelBinding {
            tls_exporter: hex32(&case["binding"]),
        };
        let prologue = hex(&case["prologue"]);
        let alice =
            IdentityKeyPair::from_secret_bytes(&hex(&case["initiator_identity_secret"])).unwrap();
        let bob =
            IdentityKeyPair::from_secret_bytes(&hex(&case["responder_identity_secret"])).unwrap();
        let (alice_public, bob_public) = (alice.public(), bob.public());
        // Section 3.11: eph_I_secret || nonce || sas_nonce_I, and eph_R_secret || sas_nonce_R.
        let mut alice_rng = ScriptedRng(hex(&case["initiator_random"]));
        let mut bob_rng = ScriptedRng(hex(&case["responder_random"]));
        assert_eq!(alice_rng.0.len(), 96, "{name}: initiator_random");
        assert_eq!(bob_rng.0.len(), 64, "{name}: responder_random");

        let (mut initiator, msg1) = DirectHandshake::initiate(
            HandshakeConfig {
                identity: alice,
                suites: suites(&case["initiator_suites"]),
                binding,
                expected_peer: None,
            },
            &mut alice_rng,
        )
        .unwrap();
        assert!(alice_rng.0.is_empty(), "{name}: initiate() drew too little");
        initiator.bind_prologue(&prologue);
        assert_eq!(msg1, hex(&expected["msg1"]), "{name}: msg1");
        let mut responder = DirectHandshake::respond(
            HandshakeConfig {
                identity: bob,
                suites: suites(&case["responder_suites"]),
                binding,
                expected_peer: None,
            },
            &mut bob_rng,
        )
        .unwrap();
        assert!(bob_rng.0.is_empty(), "{name}: respond() drew too little");
        responder.bind_prologue(&prologue);

        let Ok(HandshakeStep::Send(msg2)) = responder.handle_message(&msg1) else {
            panic!("{name}: responder did not answer message 1");
        };
        assert_eq!(msg2, hex(&expected["msg2"]), "{name}: msg2");
        let Ok(HandshakeStep::Send(msg3)) = initiator.handle_message(&msg2) else {
            panic!("{name}: initiator did not answer message 2");
        };
        assert_eq!(msg3, hex(&expected["msg3"]), "{name}: msg3");
        let Ok(HandshakeStep::CompleteWithReveal(bob_keys, reveal)) =
            responder.handle_message(&msg3)
        else {
            panic!("{name}: responder did not complete");
        };
        let msg4 = reveal.into_bytes();
        assert_eq!(msg4, hex(&expected["msg4"]), "{name}: msg4");
        let Ok(HandshakeStep::Complete(alice_keys)) = initiator.handle_message(&msg4) else {
            panic!("{name}: initiator did not complete");
        };
        assert!(initiator.is_finished() && responder.is_finished());

        let suite = suites(&Value::Array(vec![expected["suite"].clone()]))[0];
        assert_eq!(alice_keys.suite, suite);
        assert_eq!(bob_keys.suite, suite);
        assert_eq!(alice_keys.peer, bob_public);
        assert_eq!(bob_keys.peer, alice_public);
        expect_keys(
            &alice_keys,
            expected,
            "initiator_media_key",
            "responder_media_key",
            "initiator_control_key",
            "responder_control_key",
        );
        expect_keys(
            &bob_keys,
            expected,
            "responder_media_key",
            "initiator_media_key",
            "responder_control_key",
            "initiator_control_key",
        );
        assert_eq!(alice_keys.media_send.key_id(), KeyId(0));
        assert_eq!(alice_keys.media_recv.key_id, KeyId(1));
        assert_eq!(alice_keys.control_send.key_id(), KeyId(2));
        assert_eq!(alice_keys.control_recv.key_id, KeyId(3));
        assert_eq!(bob_keys.media_send.key_id(), KeyId(1));
        assert_eq!(bob_keys.media_recv.key_id, KeyId(0));
        assert_eq!(bob_keys.control_send.key_id(), KeyId(3));
        assert_eq!(bob_keys.control_recv.key_id, KeyId(2));
    }
}

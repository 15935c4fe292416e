//! Scenario tests of the direct handshake: honest runs, active attackers, malformed input.
// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeError, HandshakeStep,
    MalformedReason, MessageType, Role, SessionKeys,
};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_sframe::{CipherSuite, KeyId};

const CHACHA: CipherSuite = CipherSuite::ChaCha20Poly1305Sha256;
const AES: CipherSuite = CipherSuite::Aes128GcmSha256;

/// Offsets in message 1 when it offers one version and two suites (see the protocol document).
const MSG1_EPHEMERAL: usize = 13;
const MSG1_IDENTITY: usize = 45;
const MSG1_NONCE: usize = 77;

fn binding() -> ChannelBinding {
    ChannelBinding {
        initiator_cert_sha256: [0x11; 32],
        responder_cert_sha256: [0x22; 32],
    }
}

fn config(identity: &IdentityKeyPair, suites: &[CipherSuite]) -> HandshakeConfig {
    HandshakeConfig {
        identity: identity.clone(),
        suites: suites.to_vec(),
        binding: binding(),
        expected_peer: None,
    }
}

struct Parties {
    rng: StdRng,
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
}

fn parties(seed: u64) -> Parties {
    let mut rng = StdRng::seed_from_u64(seed);
    let alice = IdentityKeyPair::generate(&mut rng);
    let bob = IdentityKeyPair::generate(&mut rng);
    Parties { rng, alice, bob }
}

fn expect_send(step: Result<HandshakeStep, HandshakeError>) -> Vec<u8> {
    match step {
        Ok(HandshakeStep::Send(bytes)) => bytes,
        other => panic!("expected Send, got {other:?}"),
    }
}

fn expect_send_and_complete(step: Result<HandshakeStep, HandshakeError>) -> (Vec<u8>, SessionKeys) {
    match step {
        Ok(HandshakeStep::SendAndComplete(bytes, keys)) => (bytes, keys),
        other => panic!("expected SendAndComplete, got {other:?}"),
    }
}

fn expect_complete(step: Result<HandshakeStep, HandshakeError>) -> SessionKeys {
    match step {
        Ok(HandshakeStep::Complete(keys)) => keys,
        other => panic!("expected Complete, got {other:?}"),
    }
}

/// Runs a whole handshake between two configs; returns (initiator keys, responder keys).
fn run(
    rng: &mut StdRng,
    initiator: HandshakeConfig,
    responder: HandshakeConfig,
) -> (SessionKeys, SessionKeys) {
    let (mut i, msg1) = DirectHandshake::initiate(initiator, rng).expect("initiate");
    let mut r = DirectHandshake::respond(responder, rng).expect("respond");
    let msg2 = expect_send(r.handle_message(&msg1));
    let (msg3, i_keys) = expect_send_and_complete(i.handle_message(&msg2));
    let r_keys = expect_complete(r.handle_message(&msg3));
    assert!(i.is_finished() && r.is_finished());
    (i_keys, r_keys)
}

/// Three messages of one honest run, plus the two live state machines after message 1.
struct Transcript {
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    msg3: Vec<u8>,
}

fn honest_messages(p: &mut Parties, suites: &[CipherSuite]) -> Transcript {
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, suites), &mut p.rng).expect("initiate");
    let mut r = DirectHandshake::respond(config(&p.bob, suites), &mut p.rng).expect("respond");
    let msg2 = expect_send(r.handle_message(&msg1));
    let (msg3, _) = expect_send_and_complete(i.handle_message(&msg2));
    expect_complete(r.handle_message(&msg3));
    Transcript { msg1, msg2, msg3 }
}

fn assert_keys_match(i: &SessionKeys, r: &SessionKeys) {
    assert_eq!(i.suite, r.suite);
    assert_eq!(i.media_send.key_id, KeyId(0));
    assert_eq!(i.media_recv.key_id, KeyId(1));
    assert_eq!(i.control_send.key_id, KeyId(2));
    assert_eq!(i.control_recv.key_id, KeyId(3));
    assert_eq!(r.media_send.key_id, KeyId(1));
    assert_eq!(r.media_recv.key_id, KeyId(0));
    assert_eq!(r.control_send.key_id, KeyId(3));
    assert_eq!(r.control_recv.key_id, KeyId(2));
    for (send, recv) in [
        (&i.media_send, &r.media_recv),
        (&i.control_send, &r.control_recv),
        (&r.media_send, &i.media_recv),
        (&r.control_send, &i.control_recv),
    ] {
        assert_eq!(send.base_key.expose_secret(), recv.base_key.expose_secret());
    }
    let all = [
        i.media_send.base_key.expose_secret(),
        i.media_recv.base_key.expose_secret(),
        i.control_send.base_key.expose_secret(),
        i.control_recv.base_key.expose_secret(),
    ];
    for (a, key_a) in all.iter().enumerate() {
        for key_b in all.iter().skip(a + 1) {
            assert_ne!(key_a, key_b, "every direction and purpose has its own key");
        }
    }
    assert_eq!(i.sas, r.sas);
    assert_eq!(i.transcript_hash, r.transcript_hash);
}

#[test]
fn both_sides_derive_matching_keys_and_sas() {
    for (seed, suite, key_len) in [(1, CHACHA, 32), (2, AES, 16)] {
        let mut p = parties(seed);
        let (i, r) = run(
            &mut p.rng,
            config(&p.alice, &[suite]),
            config(&p.bob, &[CHACHA, AES]),
        );
        assert_keys_match(&i, &r);
        assert_eq!(i.suite, suite);
        assert_eq!(i.media_send.base_key.expose_secret().len(), key_len);
        assert_eq!(i.peer, p.bob.public());
        assert_eq!(r.peer, p.alice.public());
        let shown = i.sas.to_string();
        assert_eq!(shown.len(), 7);
        assert_eq!(shown.as_bytes().get(3), Some(&b' '));
        assert_eq!(
            shown.replace(' ', "").parse::<u32>().ok(),
            Some(i.sas.value())
        );
    }
}

#[test]
fn separate_runs_derive_fresh_keys() {
    let mut p = parties(3);
    let (first, _) = run(
        &mut p.rng,
        config(&p.alice, &[CHACHA]),
        config(&p.bob, &[CHACHA]),
    );
    let (second, _) = run(
        &mut p.rng,
        config(&p.alice, &[CHACHA]),
        config(&p.bob, &[CHACHA]),
    );
    assert_ne!(first.transcript_hash, second.transcript_hash);
    assert_ne!(
        first.media_send.base_key.expose_secret(),
        second.media_send.base_key.expose_secret()
    );
}

#[test]
fn responder_follows_initiator_preference() {
    let mut p = parties(4);
    let (i, _) = run(
        &mut p.rng,
        config(&p.alice, &[AES, CHACHA]),
        config(&p.bob, &[CHACHA, AES]),
    );
    assert_eq!(i.suite, AES);
    let (i, _) = run(
        &mut p.rng,
        config(&p.alice, &[AES, CHACHA]),
        config(&p.bob, &[CHACHA]),
    );
    assert_eq!(i.suite, CHACHA);
}

#[test]
fn no_common_suite_is_reported() {
    let mut p = parties(5);
    let (_, msg1) = DirectHandshake::initiate(config(&p.alice, &[AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    assert_eq!(
        r.handle_message(&msg1).unwrap_err(),
        HandshakeError::NoCommonSuite
    );
}

#[test]
fn invalid_configs_are_refused() {
    let mut p = parties(6);
    let empty = DirectHandshake::initiate(config(&p.alice, &[]), &mut p.rng);
    assert!(matches!(empty, Err(HandshakeError::InvalidConfig(_))));
    let duplicate = DirectHandshake::respond(config(&p.bob, &[AES, AES]), &mut p.rng);
    assert!(matches!(duplicate, Err(HandshakeError::InvalidConfig(_))));
}

#[test]
fn substituted_ephemeral_in_message_1_fails_initiator_signature_check() {
    let mut p = parties(7);
    let (mut i, mut msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    // The attacker swaps in its own ephemeral so it could compute the responder's secret.
    let attacker_ephemeral = x25519_public(&mut p.rng);
    msg1[MSG1_EPHEMERAL..MSG1_EPHEMERAL + 32].copy_from_slice(&attacker_ephemeral);
    let msg2 = expect_send(r.handle_message(&msg1));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::BadSignature
    );
}

#[test]
fn substituted_ephemerals_in_both_directions_fail_signature_checks() {
    let mut p = parties(8);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let mut forwarded = msg1.clone();
    forwarded[MSG1_EPHEMERAL..MSG1_EPHEMERAL + 32].copy_from_slice(&x25519_public(&mut p.rng));
    let mut msg2 = expect_send(r.handle_message(&forwarded));
    let offset = msg2_ephemeral_offset(&msg2);
    msg2[offset..offset + 32].copy_from_slice(&x25519_public(&mut p.rng));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::BadSignature
    );
}

#[test]
fn relaying_attacker_with_own_identity_shows_different_sas_and_peer() {
    let mut p = parties(9);
    let mallory = IdentityKeyPair::generate(&mut p.rng);
    // Alice thinks she calls Bob; Mallory answers, and calls Bob herself.
    let (alice_keys, mallory_as_responder) = run(
        &mut p.rng,
        config(&p.alice, &[CHACHA]),
        config(&mallory, &[CHACHA]),
    );
    let (mallory_as_initiator, bob_keys) = run(
        &mut p.rng,
        config(&mallory, &[CHACHA]),
        config(&p.bob, &[CHACHA]),
    );
    assert_eq!(alice_keys.sas, mallory_as_responder.sas);
    assert_eq!(bob_keys.sas, mallory_as_initiator.sas);
    assert_ne!(
        alice_keys.sas, bob_keys.sas,
        "the two real ends see different SAS"
    );
    assert_ne!(alice_keys.peer.fingerprint(), p.bob.public().fingerprint());
    assert_eq!(
        alice_keys.peer.fingerprint(),
        mallory.public().fingerprint()
    );
    assert_eq!(bob_keys.peer.fingerprint(), mallory.public().fingerprint());
}

#[test]
fn relaying_attacker_is_stopped_by_a_pin() {
    let mut p = parties(10);
    let mallory = IdentityKeyPair::generate(&mut p.rng);
    let mut pinned = config(&p.alice, &[CHACHA]);
    pinned.expected_peer = Some(p.bob.public());
    let (mut i, msg1) = DirectHandshake::initiate(pinned, &mut p.rng).unwrap();
    let mut m = DirectHandshake::respond(config(&mallory, &[CHACHA]), &mut p.rng).unwrap();
    let msg2 = expect_send(m.handle_message(&msg1));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::PinnedIdentityMismatch {
            expected: p.bob.public().fingerprint(),
            received: mallory.public().fingerprint(),
        }
    );
}

#[test]
fn correct_pins_on_both_sides_complete() {
    let mut p = parties(11);
    let mut i_config = config(&p.alice, &[CHACHA]);
    i_config.expected_peer = Some(p.bob.public());
    let mut r_config = config(&p.bob, &[CHACHA]);
    r_config.expected_peer = Some(p.alice.public());
    let (i, r) = run(&mut p.rng, i_config, r_config);
    assert_keys_match(&i, &r);
}

#[test]
fn responder_pin_mismatch_is_reported_on_message_1() {
    let mut p = parties(12);
    let stranger = IdentityKeyPair::generate(&mut p.rng);
    let (_, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r_config = config(&p.bob, &[CHACHA]);
    r_config.expected_peer = Some(stranger.public());
    let mut r = DirectHandshake::respond(r_config, &mut p.rng).unwrap();
    assert!(matches!(
        r.handle_message(&msg1),
        Err(HandshakeError::PinnedIdentityMismatch { .. })
    ));
}

#[test]
fn mismatched_channel_bindings_fail() {
    let mut p = parties(13);
    let mut r_config = config(&p.bob, &[CHACHA]);
    // A TLS-terminating proxy presents its own certificate to the initiator.
    r_config.binding.responder_cert_sha256 = [0x33; 32];
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(r_config, &mut p.rng).unwrap();
    let msg2 = expect_send(r.handle_message(&msg1));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::BadSignature
    );

    // And in the other direction: the responder sees a different client certificate.
    let mut i_config = config(&p.alice, &[CHACHA]);
    i_config.binding.initiator_cert_sha256 = [0x44; 32];
    let (mut i, msg1) = DirectHandshake::initiate(i_config, &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let msg2 = expect_send(r.handle_message(&msg1));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::BadSignature
    );
}

/// Feeds message 1 to a fresh responder, lets `tamper` alter message 2, and returns what the
/// initiator makes of it.
fn initiator_result_for_tampered_msg2(
    seed: u64,
    tamper: impl FnOnce(&mut Vec<u8>),
) -> Result<HandshakeStep, HandshakeError> {
    let mut p = parties(seed);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut msg2 = expect_send(r.handle_message(&msg1));
    tamper(&mut msg2);
    i.handle_message(&msg2)
}

/// Runs to message 3, lets `tamper` alter it, and returns what the responder makes of it.
fn responder_result_for_tampered_msg3(
    seed: u64,
    tamper: impl FnOnce(&mut Vec<u8>),
) -> Result<HandshakeStep, HandshakeError> {
    let mut p = parties(seed);
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let msg2 = expect_send(r.handle_message(&msg1));
    let (mut msg3, _) = expect_send_and_complete(i.handle_message(&msg2));
    tamper(&mut msg3);
    r.handle_message(&msg3)
}

fn flip(message: &mut [u8], index: usize) {
    message[index] ^= 0x01;
}

#[test]
fn tampered_message_2_fields_are_caught() {
    // Offsets follow the message 2 layout with an echoed offer of 1 version and 2 suites.
    let ephemeral = 5 + 2 + 2 + 8;
    let signature = ephemeral + 32 + 32;
    let confirmation = signature + 64;
    assert_eq!(
        initiator_result_for_tampered_msg2(20, |m| flip(m, ephemeral)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        initiator_result_for_tampered_msg2(21, |m| flip(m, signature + 5)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        initiator_result_for_tampered_msg2(22, |m| flip(m, confirmation + 31)).unwrap_err(),
        HandshakeError::BadConfirmation
    );
}

#[test]
fn tampered_message_3_fields_are_caught() {
    // Message 3: header (5), SAS nonce (32), signature (64), confirmation (32).
    assert_eq!(
        responder_result_for_tampered_msg3(23, |m| flip(m, 5)).unwrap_err(),
        HandshakeError::CommitmentMismatch
    );
    assert_eq!(
        responder_result_for_tampered_msg3(24, |m| flip(m, 37)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        responder_result_for_tampered_msg3(25, |m| flip(m, 37 + 64)).unwrap_err(),
        HandshakeError::BadConfirmation
    );
}

#[test]
fn tampered_message_1_fields_fail_the_responders_signature_at_the_initiator() {
    for index in [MSG1_NONCE, MSG1_NONCE + 32 /* SAS commitment */] {
        let mut p = parties(26);
        let (mut i, mut msg1) =
            DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
        let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
        flip(&mut msg1, index);
        let msg2 = expect_send(r.handle_message(&msg1));
        assert_eq!(
            i.handle_message(&msg2).unwrap_err(),
            HandshakeError::BadSignature
        );
    }
}

#[test]
fn substituted_initiator_identity_is_caught() {
    let mut p = parties(27);
    let mallory = IdentityKeyPair::generate(&mut p.rng);
    let (mut i, mut msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    msg1[MSG1_IDENTITY..MSG1_IDENTITY + 32].copy_from_slice(&mallory.public().to_bytes());
    let msg2 = expect_send(r.handle_message(&msg1));
    // Alice's transcript names Alice, Bob signed one naming Mallory.
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::BadSignature
    );
}

#[test]
fn truncated_messages_are_malformed() {
    let mut p = parties(30);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    for len in 0..t.msg1.len() {
        let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
        assert_eq!(
            r.handle_message(&t.msg1[..len]).unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated),
            "message 1 cut to {len} bytes"
        );
    }
    for len in [0, 4, 5, 20, t.msg2.len() - 1] {
        let result = initiator_result_for_tampered_msg2(31, |m| m.truncate(len));
        assert_eq!(
            result.unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated)
        );
    }
    for len in [0, 5, 36, t.msg3.len() - 1] {
        let result = responder_result_for_tampered_msg3(32, |m| m.truncate(len));
        assert_eq!(
            result.unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated)
        );
    }
}

#[test]
fn other_layout_violations_are_malformed() {
    let mut p = parties(33);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    let cases: [(Vec<u8>, MalformedReason); 6] = [
        (
            [t.msg1.as_slice(), &[0]].concat(),
            MalformedReason::TrailingBytes,
        ),
        ([b"XSKH", &t.msg1[4..]].concat(), MalformedReason::BadMagic),
        (
            [&t.msg1[..4], &[9], &t.msg1[5..]].concat(),
            MalformedReason::UnknownMessageType(9),
        ),
        (
            [&t.msg1[..5], &[0], &t.msg1[8..]].concat(),
            MalformedReason::EmptyList,
        ),
        (
            [&t.msg1[..5], &[9], &[0; 18], &t.msg1[8..]].concat(),
            MalformedReason::ListTooLong,
        ),
        (
            {
                let mut m = t.msg1.clone();
                // The Ed25519 identity point (small order) is not an acceptable identity.
                let mut identity = [0u8; 32];
                identity[0] = 1;
                m[MSG1_IDENTITY..MSG1_IDENTITY + 32].copy_from_slice(&identity);
                m
            },
            MalformedReason::InvalidIdentityKey,
        ),
    ];
    for (message, reason) in cases {
        let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
        assert_eq!(
            r.handle_message(&message).unwrap_err(),
            HandshakeError::Malformed(reason)
        );
        assert_eq!(
            viska_e2ee::direct::validate_message(&message).unwrap_err(),
            HandshakeError::Malformed(reason)
        );
    }
    assert_eq!(
        viska_e2ee::direct::message_type(&t.msg2),
        Ok(MessageType::Response)
    );
    assert_eq!(
        viska_e2ee::direct::validate_message(&t.msg3),
        Ok(MessageType::Finish)
    );
}

#[test]
fn replayed_and_reflected_messages_are_unexpected() {
    let mut p = parties(34);
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let msg2 = expect_send(r.handle_message(&msg1));

    // Message 1 again, while the responder waits for message 3.
    let mut r2 = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    expect_send(r2.handle_message(&msg1));
    assert_eq!(
        r2.handle_message(&msg1).unwrap_err(),
        HandshakeError::UnexpectedMessage {
            role: Role::Responder,
            received: MessageType::Init
        }
    );
    // The initiator's own message reflected back at it.
    let (mut i2, reflected) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    assert_eq!(
        i2.handle_message(&reflected).unwrap_err(),
        HandshakeError::UnexpectedMessage {
            role: Role::Initiator,
            received: MessageType::Init
        }
    );
    // Message 3 before message 1.
    let mut fresh = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let t = honest_messages(&mut p, &[CHACHA]);
    assert_eq!(
        fresh.handle_message(&t.msg3).unwrap_err(),
        HandshakeError::UnexpectedMessage {
            role: Role::Responder,
            received: MessageType::Finish
        }
    );

    // After completion, a replay gets nowhere.
    let (msg3, _) = expect_send_and_complete(i.handle_message(&msg2));
    expect_complete(r.handle_message(&msg3));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::Finished
    );
    assert_eq!(
        r.handle_message(&msg3).unwrap_err(),
        HandshakeError::Finished
    );
}

#[test]
fn messages_replayed_into_a_new_session_fail_authentication() {
    let mut p = parties(35);
    let old = honest_messages(&mut p, &[CHACHA]);

    // An old message 2 answers a new message 1 from the same initiator.
    let (mut i, _) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    assert_eq!(
        i.handle_message(&old.msg2).unwrap_err(),
        HandshakeError::BadSignature
    );

    // An old message 3 finishes a new session started with a fresh message 1.
    let (_, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    expect_send(r.handle_message(&msg1));
    assert_eq!(
        r.handle_message(&old.msg3).unwrap_err(),
        HandshakeError::BadSignature
    );
}

#[test]
fn errors_are_final() {
    let mut p = parties(36);
    let (_, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    assert!(r.handle_message(&msg1[..10]).is_err());
    assert!(r.is_finished());
    assert_eq!(
        r.handle_message(&msg1).unwrap_err(),
        HandshakeError::Finished
    );
}

/// Replaces the offer section of a message 1 that offers one version and two suites.
fn with_offer(msg1: &[u8], versions: &[u16], suites: &[u16]) -> Vec<u8> {
    let mut out = msg1[..5].to_vec();
    for list in [versions, suites] {
        out.push(list.len() as u8);
        for entry in list {
            out.extend_from_slice(&entry.to_be_bytes());
        }
    }
    out.extend_from_slice(&msg1[MSG1_EPHEMERAL..]);
    out
}

#[test]
fn stripped_suite_offer_is_a_detected_downgrade() {
    let mut p = parties(40);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng).unwrap();
    // The attacker leaves only AES in the offer.
    let stripped = with_offer(&msg1, &[1], &[0x0004]);
    let msg2 = expect_send(r.handle_message(&stripped));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::DowngradeDetected
    );
}

#[test]
fn altered_version_offer_is_a_detected_downgrade() {
    let mut p = parties(41);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng).unwrap();
    let altered = with_offer(&msg1, &[1, 2], &[0xF001, 0x0004]);
    let msg2 = expect_send(r.handle_message(&altered));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::DowngradeDetected
    );
}

#[test]
fn rewritten_suite_choice_fails_the_signature() {
    // Message 2 starts: magic (4), type (1), version (2), suite (2).
    let result = initiator_result_for_tampered_msg2(42, |m| {
        m[7..9].copy_from_slice(&0x0004u16.to_be_bytes());
    });
    assert_eq!(result.unwrap_err(), HandshakeError::BadSignature);
}

#[test]
fn responder_choice_outside_the_offer_is_refused() {
    let result = initiator_result_for_tampered_msg2(43, |m| {
        m[7..9].copy_from_slice(&0x0001u16.to_be_bytes());
    });
    assert_eq!(
        result.unwrap_err(),
        HandshakeError::SuiteNotOffered { suite: 0x0001 }
    );
    let result = initiator_result_for_tampered_msg2(44, |m| {
        m[5..7].copy_from_slice(&7u16.to_be_bytes());
    });
    assert_eq!(
        result.unwrap_err(),
        HandshakeError::UnsupportedVersion { version: 7 }
    );
}

#[test]
fn unsupported_version_offer_is_refused() {
    let mut p = parties(45);
    let (_, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let future_only = with_offer(&msg1, &[7, 9], &[0xF001, 0x0004]);
    assert_eq!(
        r.handle_message(&future_only).unwrap_err(),
        HandshakeError::UnsupportedVersion { version: 9 }
    );
}

/// X25519 public keys of small order: every one makes the shared secret all zero.
fn low_order_points() -> Vec<[u8; 32]> {
    let hex = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    hex.iter().map(|h| decode_hex32(h)).collect()
}

#[test]
fn low_order_ephemeral_from_initiator_is_rejected() {
    for point in low_order_points() {
        let mut p = parties(50);
        let (_, mut msg1) =
            DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
        msg1[MSG1_EPHEMERAL..MSG1_EPHEMERAL + 32].copy_from_slice(&point);
        let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
        assert_eq!(
            r.handle_message(&msg1).unwrap_err(),
            HandshakeError::NonContributory
        );
    }
}

#[test]
fn low_order_ephemeral_from_a_signing_responder_is_rejected() {
    // A malicious responder holding a real identity signs a transcript with a zero ephemeral;
    // the signature verifies, the shared secret must still be refused.
    let mut p = parties(51);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut body = b"VSKH".to_vec();
    body.push(2);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&0xF001u16.to_be_bytes());
    body.extend_from_slice(&msg1[5..MSG1_EPHEMERAL]);
    body.extend_from_slice(&[0u8; 32]);
    body.extend_from_slice(&p.bob.public().to_bytes());
    let transcript_hash = reference_transcript_hash(&msg1, &body, &binding());
    let mut signed = Vec::new();
    push_part(&mut signed, b"viska direct v1 responder signature");
    push_part(&mut signed, &transcript_hash);
    let mut msg2 = body;
    msg2.extend_from_slice(&p.bob.sign(&signed));
    msg2.extend_from_slice(&[0u8; 32]);
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::NonContributory
    );
}

#[test]
fn debug_output_contains_no_secrets() {
    let mut p = parties(60);
    let secret_hex = to_hex(p.alice.to_secret_bytes().expose_secret());
    let (i_keys, r_keys) = run(
        &mut p.rng,
        config(&p.alice, &[CHACHA]),
        config(&p.bob, &[CHACHA]),
    );
    let (handshake, _) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let debug = format!(
        "{i_keys:?} {r_keys:?} {:?} {:?} {:?} {handshake:?}",
        p.alice,
        p.alice.to_secret_bytes(),
        config(&p.alice, &[CHACHA])
    );
    for key in [
        &i_keys.media_send,
        &i_keys.media_recv,
        &i_keys.control_send,
        &i_keys.control_recv,
    ] {
        let key_hex = to_hex(key.base_key.expose_secret());
        assert!(!debug.contains(&key_hex));
        assert!(!debug.contains(&format!("{:?}", key.base_key.expose_secret())));
    }
    assert!(!debug.contains(&secret_hex));
    assert!(!debug.contains(&format!("{:?}", p.alice.to_secret_bytes().expose_secret())));
    assert!(!debug.contains(&i_keys.sas.to_string()));
    assert!(debug.contains("***"));
}

// --- helpers that rebuild protocol pieces from the specification, independently of the crate ---

fn x25519_public(rng: &mut StdRng) -> [u8; 32] {
    let secret = x25519_dalek::EphemeralSecret::random_from_rng(rng);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

fn msg2_ephemeral_offset(msg2: &[u8]) -> usize {
    // header (5) + version (2) + suite (2) + echoed offer (1 + 2n + 1 + 2m)
    let versions = usize::from(msg2[9]);
    let suites = usize::from(msg2[10 + 2 * versions]);
    11 + 2 * versions + 2 * suites
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

fn reference_transcript_hash(msg1: &[u8], msg2_body: &[u8], binding: &ChannelBinding) -> [u8; 32] {
    use sha2::Digest;
    let mut input = Vec::new();
    push_part(&mut input, b"viska direct v1 transcript");
    push_part(&mut input, msg1);
    push_part(&mut input, msg2_body);
    push_part(&mut input, &binding.initiator_cert_sha256);
    push_part(&mut input, &binding.responder_cert_sha256);
    sha2::Sha256::digest(&input).into()
}

fn decode_hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).unwrap();
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reference_transcript_matches_the_crate() {
    let mut p = parties(61);
    let (i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    drop(i);
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    let msg2 = expect_send(r.handle_message(&msg1));
    let body = &msg2[..msg2.len() - 96];
    let expected = reference_transcript_hash(&msg1, body, &binding());
    let mut signed = Vec::new();
    push_part(&mut signed, b"viska direct v1 responder signature");
    push_part(&mut signed, &expected);
    let bob: PublicIdentity = p.bob.public();
    assert_eq!(
        bob.verify(&signed, &msg2[msg2.len() - 96..msg2.len() - 32]),
        Ok(())
    );
}

/// Which message an on-path attacker alters.
#[derive(Clone, Copy, Debug)]
enum Hop {
    One,
    Two,
    Three,
}

/// Runs a handshake in which `tamper` alters one message in flight; returns whether both sides
/// still completed.
fn completes_despite(seed: u64, hop: Hop, tamper: impl FnOnce(&mut Vec<u8>)) -> bool {
    let mut p = parties(seed);
    let (mut i, mut msg1) =
        DirectHandshake::initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng).unwrap();
    let mut tamper = Some(tamper);
    let mut maybe_tamper = |this: Hop, message: &mut Vec<u8>| {
        if std::mem::discriminant(&this) == std::mem::discriminant(&hop) {
            if let Some(tamper) = tamper.take() {
                tamper(message);
            }
        }
    };
    maybe_tamper(Hop::One, &mut msg1);
    let Ok(HandshakeStep::Send(mut msg2)) = r.handle_message(&msg1) else {
        return false;
    };
    maybe_tamper(Hop::Two, &mut msg2);
    let Ok(HandshakeStep::SendAndComplete(mut msg3, _)) = i.handle_message(&msg2) else {
        return false;
    };
    maybe_tamper(Hop::Three, &mut msg3);
    matches!(r.handle_message(&msg3), Ok(HandshakeStep::Complete(_)))
}

#[test]
fn no_single_bit_flip_in_any_message_lets_the_handshake_complete() {
    let mut p = parties(70);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    assert!(
        completes_despite(71, Hop::Two, |_| {}),
        "control run completes"
    );
    let mut runs = 0;
    for (hop, len) in [
        (Hop::One, t.msg1.len()),
        (Hop::Two, t.msg2.len()),
        (Hop::Three, t.msg3.len()),
    ] {
        for index in 0..len {
            // 0x80 on the last byte of an X25519 key is ignored by X25519 itself (RFC 7748),
            // so it must be caught by the transcript.
            for mask in [0x01, 0x80] {
                let completed = completes_despite(71, hop, |m| m[index] ^= mask);
                assert!(
                    !completed,
                    "{hop:?} byte {index} ^ {mask:#04x} went unnoticed"
                );
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 2 * (t.msg1.len() + t.msg2.len() + t.msg3.len()));
}

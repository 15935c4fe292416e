//! Scenario tests of the direct handshake (version 2, four messages): honest runs, active
//! attackers, malformed input.
// In tests a panic is the failure report.
#![allow(clippy::unwrap_used)]

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeError, HandshakeStep,
    MalformedReason, MessageType, PROTOCOL_VERSION, Role, SessionKeys,
};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_sframe::{CipherSuite, KeyId};

const CHACHA: CipherSuite = CipherSuite::ChaCha20Poly1305Sha256;
const AES: CipherSuite = CipherSuite::Aes128GcmSha256;

/// Offsets in message 1 when it offers one version and two suites (see the protocol document).
const MSG1_EPHEMERAL: usize = 13;
const MSG1_IDENTITY: usize = 45;
const MSG1_NONCE: usize = 77;
const MSG1_COMMITMENT: usize = 109;
const MSG1_LEN: usize = 141;
/// Offsets in message 2 when the echoed offer has one version and two suites.
const MSG2_EPHEMERAL: usize = 5 + 2 + 2 + 8;
const MSG2_IDENTITY: usize = MSG2_EPHEMERAL + 32;
const MSG2_COMMITMENT: usize = MSG2_IDENTITY + 32;
const MSG2_SIGNATURE: usize = MSG2_COMMITMENT + 32;
const MSG2_CONFIRMATION: usize = MSG2_SIGNATURE + 64;
const MSG2_LEN: usize = MSG2_CONFIRMATION + 32;
/// Offsets in message 3: header (5), SAS nonce (32), signature (64), confirmation (32).
const MSG3_SAS_NONCE: usize = 5;
const MSG3_SIGNATURE: usize = MSG3_SAS_NONCE + 32;
const MSG3_CONFIRMATION: usize = MSG3_SIGNATURE + 64;
const MSG3_LEN: usize = MSG3_CONFIRMATION + 32;
/// Offsets in message 4: header (5), SAS nonce (32).
const MSG4_SAS_NONCE: usize = 5;
const MSG4_LEN: usize = MSG4_SAS_NONCE + 32;

/// The prologue both sides bind unless a test says otherwise: two `Hello`s, the initiator's
/// first, each `min_version || max_version || u32 features` (`docs/protocol-handshake.md` §3.7).
const PROLOGUE: [u8; 12] = [1, 2, 0, 0, 0, 3, 1, 2, 0, 0, 0, 1];

fn binding() -> ChannelBinding {
    ChannelBinding {
        tls_exporter: [0x11; 32],
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

/// Starts an initiator and binds [`PROLOGUE`], as the signalling layer does once the `Hello`s
/// are exchanged.
fn initiate(config: HandshakeConfig, rng: &mut StdRng) -> (DirectHandshake, Vec<u8>) {
    let (mut handshake, msg1) = DirectHandshake::initiate(config, rng).expect("initiate");
    handshake.bind_prologue(&PROLOGUE);
    (handshake, msg1)
}

/// Starts a responder and binds [`PROLOGUE`].
fn respond(config: HandshakeConfig, rng: &mut StdRng) -> DirectHandshake {
    let mut handshake = DirectHandshake::respond(config, rng).expect("respond");
    handshake.bind_prologue(&PROLOGUE);
    handshake
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

/// The responder's completion on message 3: its keys and the bytes of message 4.
fn expect_complete_with_reveal(
    step: Result<HandshakeStep, HandshakeError>,
) -> (SessionKeys, Vec<u8>) {
    match step {
        Ok(HandshakeStep::CompleteWithReveal(keys, reveal)) => (keys, reveal.into_bytes()),
        other => panic!("expected CompleteWithReveal, got {other:?}"),
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
    let (mut i, msg1) = initiate(initiator, rng);
    let mut r = respond(responder, rng);
    let msg2 = expect_send(r.handle_message(&msg1));
    assert!(!r.is_finished());
    // Message 3 out, but no keys (and no SAS) on the initiator's side yet.
    let msg3 = expect_send(i.handle_message(&msg2));
    assert!(!i.is_finished());
    let (r_keys, msg4) = expect_complete_with_reveal(r.handle_message(&msg3));
    assert!(r.is_finished());
    let i_keys = expect_complete(i.handle_message(&msg4));
    assert!(i.is_finished());
    (i_keys, r_keys)
}

/// An honest handshake stopped after message 3 was sent: the initiator waits for message 4,
/// the responder has not yet seen message 3.
struct Midway {
    i: DirectHandshake,
    r: DirectHandshake,
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    msg3: Vec<u8>,
}

fn to_message_3(p: &mut Parties, suites: &[CipherSuite]) -> Midway {
    let (mut i, msg1) = initiate(config(&p.alice, suites), &mut p.rng);
    let mut r = respond(config(&p.bob, suites), &mut p.rng);
    let msg2 = expect_send(r.handle_message(&msg1));
    let msg3 = expect_send(i.handle_message(&msg2));
    Midway {
        i,
        r,
        msg1,
        msg2,
        msg3,
    }
}

/// The four messages of one honest run.
struct Transcript {
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    msg3: Vec<u8>,
    msg4: Vec<u8>,
}

fn honest_messages(p: &mut Parties, suites: &[CipherSuite]) -> Transcript {
    let mut m = to_message_3(p, suites);
    let (_, msg4) = expect_complete_with_reveal(m.r.handle_message(&m.msg3));
    expect_complete(m.i.handle_message(&msg4));
    Transcript {
        msg1: m.msg1,
        msg2: m.msg2,
        msg3: m.msg3,
        msg4,
    }
}

fn assert_keys_match(i: &SessionKeys, r: &SessionKeys) {
    assert_eq!(i.suite, r.suite);
    assert_eq!(i.media_send.key_id(), KeyId(0));
    assert_eq!(i.media_recv.key_id, KeyId(1));
    assert_eq!(i.control_send.key_id(), KeyId(2));
    assert_eq!(i.control_recv.key_id, KeyId(3));
    assert_eq!(r.media_send.key_id(), KeyId(1));
    assert_eq!(r.media_recv.key_id, KeyId(0));
    assert_eq!(r.control_send.key_id(), KeyId(3));
    assert_eq!(r.control_recv.key_id, KeyId(2));
    for (send, recv) in [
        (&i.media_send, &r.media_recv),
        (&i.control_send, &r.control_recv),
        (&r.media_send, &i.media_recv),
        (&r.control_send, &i.control_recv),
    ] {
        assert_eq!(send.key_id(), recv.key_id);
        assert_eq!(send.expose_secret(), recv.base_key.expose_secret());
    }
    let all = [
        i.media_send.expose_secret(),
        i.media_recv.base_key.expose_secret(),
        i.control_send.expose_secret(),
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
        assert_eq!(i.media_send.expose_secret().len(), key_len);
        assert_eq!(i.media_recv.base_key.expose_secret().len(), key_len);
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
fn messages_have_the_specified_types_and_lengths() {
    let mut p = parties(14);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    for (message, message_type, len) in [
        (&t.msg1, MessageType::Init, MSG1_LEN),
        (&t.msg2, MessageType::Response, MSG2_LEN),
        (&t.msg3, MessageType::Finish, MSG3_LEN),
        (&t.msg4, MessageType::Reveal, MSG4_LEN),
    ] {
        assert_eq!(message.len(), len, "{message_type:?}");
        assert_eq!(&message[..4], b"VSKH");
        assert_eq!(message[4], message_type as u8);
        assert_eq!(viska_e2ee::direct::message_type(message), Ok(message_type));
        assert_eq!(
            viska_e2ee::direct::validate_message(message),
            Ok(message_type)
        );
    }
    assert_eq!(PROTOCOL_VERSION, 2);
    // The offer lists exactly version 2, and the responder chose it.
    assert_eq!(&t.msg1[5..8], &[1, 0, 2]);
    assert_eq!(&t.msg2[5..7], &[0, 2]);
    // Message 3 opens the initiator's commitment, message 4 the responder's.
    assert_eq!(
        t.msg1[MSG1_COMMITMENT..MSG1_LEN],
        reference_commitment(
            COMMITMENT_LABEL_INITIATOR,
            &t.msg3[MSG3_SAS_NONCE..MSG3_SIGNATURE]
        )
    );
    assert_eq!(
        t.msg2[MSG2_COMMITMENT..MSG2_SIGNATURE],
        reference_commitment(
            COMMITMENT_LABEL_RESPONDER,
            &t.msg4[MSG4_SAS_NONCE..MSG4_LEN]
        )
    );
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
        first.media_send.expose_secret(),
        second.media_send.expose_secret()
    );
    assert_ne!(
        first.media_recv.base_key.expose_secret(),
        second.media_recv.base_key.expose_secret()
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
    let (_, msg1) = initiate(config(&p.alice, &[AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
fn unbound_prologue_is_an_invalid_config() {
    let mut p = parties(15);
    // A responder that was never given the prologue refuses to answer message 1.
    let (_, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    assert!(matches!(
        r.handle_message(&msg1),
        Err(HandshakeError::InvalidConfig(_))
    ));
    assert!(r.is_finished());
    assert_eq!(
        r.handle_message(&msg1).unwrap_err(),
        HandshakeError::Finished
    );

    // An initiator that was never given the prologue refuses an honest message 2.
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
    let msg2 = expect_send(r.handle_message(&msg1));
    assert!(matches!(
        i.handle_message(&msg2),
        Err(HandshakeError::InvalidConfig(_))
    ));
    assert!(i.is_finished());
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::Finished
    );
}

#[test]
fn an_empty_prologue_is_bound_not_missing() {
    let mut p = parties(16);
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    i.bind_prologue(&[]);
    r.bind_prologue(&[]);
    let msg2 = expect_send(r.handle_message(&msg1));
    let msg3 = expect_send(i.handle_message(&msg2));
    let (r_keys, msg4) = expect_complete_with_reveal(r.handle_message(&msg3));
    let i_keys = expect_complete(i.handle_message(&msg4));
    assert_keys_match(&i_keys, &r_keys);
    assert_eq!(
        i_keys.transcript_hash,
        reference_transcript_hash(&[], &msg1, &msg2[..msg2.len() - 96], &binding())
    );
}

#[test]
fn prologue_can_be_replaced_until_it_is_used() {
    let mut p = parties(17);
    let (mut i, msg1) = DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
    let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
    i.bind_prologue(b"stale");
    r.bind_prologue(b"other stale");
    i.bind_prologue(&PROLOGUE);
    r.bind_prologue(&PROLOGUE);
    let msg2 = expect_send(r.handle_message(&msg1));
    // Once used, the prologue is fixed: later calls change nothing.
    r.bind_prologue(b"too late");
    let msg3 = expect_send(i.handle_message(&msg2));
    i.bind_prologue(b"too late");
    let (r_keys, msg4) = expect_complete_with_reveal(r.handle_message(&msg3));
    let i_keys = expect_complete(i.handle_message(&msg4));
    assert_keys_match(&i_keys, &r_keys);
    assert_eq!(
        i_keys.transcript_hash,
        reference_transcript_hash(&PROLOGUE, &msg1, &msg2[..msg2.len() - 96], &binding())
    );
}

#[test]
fn different_prologues_fail_the_responders_signature() {
    // What a man in the middle of the signalling layer could make one side see.
    let narrowed_version: [u8; 12] = [1, 1, 0, 0, 0, 3, 1, 2, 0, 0, 0, 1];
    let stripped_feature: [u8; 12] = [1, 2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 1];
    let swapped_hellos: [u8; 12] = [1, 2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 3];
    let longer = [PROLOGUE.as_slice(), &[0]].concat();
    let variants: [&[u8]; 6] = [
        &narrowed_version,
        &stripped_feature,
        &swapped_hellos,
        &[],
        &PROLOGUE[..11],
        &longer,
    ];
    let mut p = parties(18);
    for variant in variants {
        for responder_sees_variant in [true, false] {
            let (mut i, msg1) =
                DirectHandshake::initiate(config(&p.alice, &[CHACHA]), &mut p.rng).unwrap();
            let mut r = DirectHandshake::respond(config(&p.bob, &[CHACHA]), &mut p.rng).unwrap();
            let (i_prologue, r_prologue) = if responder_sees_variant {
                (PROLOGUE.as_slice(), variant)
            } else {
                (variant, PROLOGUE.as_slice())
            };
            i.bind_prologue(i_prologue);
            r.bind_prologue(r_prologue);
            let msg2 = expect_send(r.handle_message(&msg1));
            assert_eq!(
                i.handle_message(&msg2).unwrap_err(),
                HandshakeError::BadSignature,
                "initiator bound {i_prologue:?}, responder {r_prologue:?}"
            );
            assert!(i.is_finished());
        }
    }
}

#[test]
fn substituted_ephemeral_in_message_1_fails_initiator_signature_check() {
    let mut p = parties(7);
    let (mut i, mut msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
    let mut forwarded = msg1.clone();
    forwarded[MSG1_EPHEMERAL..MSG1_EPHEMERAL + 32].copy_from_slice(&x25519_public(&mut p.rng));
    let mut msg2 = expect_send(r.handle_message(&forwarded));
    let offset = msg2_ephemeral_offset(&msg2);
    assert_eq!(offset, MSG2_EPHEMERAL);
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
    let (mut i, msg1) = initiate(pinned, &mut p.rng);
    let mut m = respond(config(&mallory, &[CHACHA]), &mut p.rng);
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
    let (_, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    let mut r_config = config(&p.bob, &[CHACHA]);
    r_config.expected_peer = Some(stranger.public());
    let mut r = respond(r_config, &mut p.rng);
    assert!(matches!(
        r.handle_message(&msg1),
        Err(HandshakeError::PinnedIdentityMismatch { .. })
    ));
}

#[test]
fn different_tls_exporters_fail() {
    let mut p = parties(13);
    let mut one_bit = binding().tls_exporter;
    one_bit[31] ^= 0x80;
    // A TLS-terminating proxy holds one TLS session with each side: their exporters differ.
    for other in [[0x33; 32], [0; 32], one_bit] {
        let other = ChannelBinding {
            tls_exporter: other,
        };
        assert_ne!(other, binding());
        // The responder's session differs from the initiator's ...
        let mut r_config = config(&p.bob, &[CHACHA]);
        r_config.binding = other;
        let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
        let mut r = respond(r_config, &mut p.rng);
        let msg2 = expect_send(r.handle_message(&msg1));
        assert_eq!(
            i.handle_message(&msg2).unwrap_err(),
            HandshakeError::BadSignature
        );

        // ... and in the other direction.
        let mut i_config = config(&p.alice, &[CHACHA]);
        i_config.binding = other;
        let (mut i, msg1) = initiate(i_config, &mut p.rng);
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
        let msg2 = expect_send(r.handle_message(&msg1));
        assert_eq!(
            i.handle_message(&msg2).unwrap_err(),
            HandshakeError::BadSignature
        );
    }
    // Equal exporters (the control) complete, whatever their value.
    let mut i_config = config(&p.alice, &[CHACHA]);
    let mut r_config = config(&p.bob, &[CHACHA]);
    i_config.binding.tls_exporter = one_bit;
    r_config.binding.tls_exporter = one_bit;
    let (i, r) = run(&mut p.rng, i_config, r_config);
    assert_keys_match(&i, &r);
}

/// Feeds message 1 to a fresh responder, lets `tamper` alter message 2, and returns what the
/// initiator makes of it.
fn initiator_result_for_tampered_msg2(
    seed: u64,
    tamper: impl FnOnce(&mut Vec<u8>),
) -> Result<HandshakeStep, HandshakeError> {
    let mut p = parties(seed);
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
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
    let mut m = to_message_3(&mut p, &[CHACHA]);
    tamper(&mut m.msg3);
    m.r.handle_message(&m.msg3)
}

/// Runs to message 4, lets `tamper` alter it, and returns what the initiator makes of it; the
/// initiator is then fed the genuine message 4, which it must refuse as `Finished` if it
/// refused the altered one.
fn initiator_result_for_tampered_msg4(
    seed: u64,
    tamper: impl FnOnce(&mut Vec<u8>),
) -> Result<HandshakeStep, HandshakeError> {
    let mut p = parties(seed);
    let mut m = to_message_3(&mut p, &[CHACHA]);
    let (_, msg4) = expect_complete_with_reveal(m.r.handle_message(&m.msg3));
    let mut tampered = msg4.clone();
    tamper(&mut tampered);
    let result = m.i.handle_message(&tampered);
    if result.is_err() {
        assert!(m.i.is_finished());
        assert_eq!(
            m.i.handle_message(&msg4).unwrap_err(),
            HandshakeError::Finished,
            "a refused message 4 ends the handshake"
        );
    }
    result
}

fn flip(message: &mut [u8], index: usize) {
    message[index] ^= 0x01;
}

#[test]
fn tampered_message_2_fields_are_caught() {
    assert_eq!(
        initiator_result_for_tampered_msg2(20, |m| flip(m, MSG2_EPHEMERAL)).unwrap_err(),
        HandshakeError::BadSignature
    );
    // The responder's commitment is part of the signed transcript.
    assert_eq!(
        initiator_result_for_tampered_msg2(19, |m| flip(m, MSG2_COMMITMENT)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        initiator_result_for_tampered_msg2(18, |m| flip(m, MSG2_SIGNATURE - 1)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        initiator_result_for_tampered_msg2(21, |m| flip(m, MSG2_SIGNATURE + 5)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        initiator_result_for_tampered_msg2(22, |m| flip(m, MSG2_CONFIRMATION + 31)).unwrap_err(),
        HandshakeError::BadConfirmation
    );
}

#[test]
fn tampered_message_3_fields_are_caught() {
    assert_eq!(
        responder_result_for_tampered_msg3(23, |m| flip(m, MSG3_SAS_NONCE)).unwrap_err(),
        HandshakeError::CommitmentMismatch
    );
    assert_eq!(
        responder_result_for_tampered_msg3(24, |m| flip(m, MSG3_SIGNATURE)).unwrap_err(),
        HandshakeError::BadSignature
    );
    assert_eq!(
        responder_result_for_tampered_msg3(25, |m| flip(m, MSG3_CONFIRMATION)).unwrap_err(),
        HandshakeError::BadConfirmation
    );
}

#[test]
fn tampered_message_4_is_a_commitment_mismatch() {
    for index in [MSG4_SAS_NONCE, MSG4_SAS_NONCE + 17, MSG4_LEN - 1] {
        assert_eq!(
            initiator_result_for_tampered_msg4(28, |m| flip(m, index)).unwrap_err(),
            HandshakeError::CommitmentMismatch,
            "message 4 byte {index}"
        );
    }
    assert_eq!(
        initiator_result_for_tampered_msg4(29, |m| m[MSG4_SAS_NONCE..].fill(0)).unwrap_err(),
        HandshakeError::CommitmentMismatch
    );
    // The initiator's own SAS nonce, reflected in a Reveal: the commitments are role-bound.
    let mut p = parties(37);
    let mut m = to_message_3(&mut p, &[CHACHA]);
    let reflected = [
        &[0x56, 0x53, 0x4B, 0x48, 4][..],
        &m.msg3[MSG3_SAS_NONCE..MSG3_SIGNATURE],
    ]
    .concat();
    assert_eq!(
        m.i.handle_message(&reflected).unwrap_err(),
        HandshakeError::CommitmentMismatch
    );
    // Control: an unaltered message 4 completes.
    assert!(matches!(
        initiator_result_for_tampered_msg4(28, |_| {}),
        Ok(HandshakeStep::Complete(_))
    ));
}

#[test]
fn tampered_message_1_fields_fail_the_responders_signature_at_the_initiator() {
    for index in [MSG1_NONCE, MSG1_COMMITMENT] {
        let mut p = parties(26);
        let (mut i, mut msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
    let (mut i, mut msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
        assert_eq!(
            r.handle_message(&t.msg1[..len]).unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated),
            "message 1 cut to {len} bytes"
        );
    }
    for len in [0, 4, 5, 20, MSG2_SIGNATURE, t.msg2.len() - 1] {
        let result = initiator_result_for_tampered_msg2(31, |m| m.truncate(len));
        assert_eq!(
            result.unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated),
            "message 2 cut to {len} bytes"
        );
    }
    for len in [0, 5, 36, t.msg3.len() - 1] {
        let result = responder_result_for_tampered_msg3(32, |m| m.truncate(len));
        assert_eq!(
            result.unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated),
            "message 3 cut to {len} bytes"
        );
    }
    for len in 0..t.msg4.len() {
        let result = initiator_result_for_tampered_msg4(38, |m| m.truncate(len));
        assert_eq!(
            result.unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated),
            "message 4 cut to {len} bytes"
        );
        assert_eq!(
            viska_e2ee::direct::validate_message(&t.msg4[..len]).unwrap_err(),
            HandshakeError::Malformed(MalformedReason::Truncated)
        );
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    let trailing = HandshakeError::Malformed(MalformedReason::TrailingBytes);
    let mut p = parties(39);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    for extra in [&[0u8][..], &[0x04], &[0; 32]] {
        for message in [&t.msg1, &t.msg2, &t.msg3, &t.msg4] {
            let longer = [message.as_slice(), extra].concat();
            assert_eq!(
                viska_e2ee::direct::validate_message(&longer).unwrap_err(),
                trailing
            );
        }
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
        assert_eq!(
            r.handle_message(&[t.msg1.as_slice(), extra].concat())
                .unwrap_err(),
            trailing
        );
        let result = initiator_result_for_tampered_msg2(31, |m| m.extend_from_slice(extra));
        assert_eq!(result.unwrap_err(), trailing);
        let result = responder_result_for_tampered_msg3(32, |m| m.extend_from_slice(extra));
        assert_eq!(result.unwrap_err(), trailing);
        let result = initiator_result_for_tampered_msg4(38, |m| m.extend_from_slice(extra));
        assert_eq!(result.unwrap_err(), trailing);
    }
}

#[test]
fn other_layout_violations_are_malformed() {
    let mut p = parties(33);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    let cases: [(Vec<u8>, MalformedReason); 8] = [
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
            // The first type after Reveal.
            [&t.msg1[..4], &[5], &t.msg1[5..]].concat(),
            MalformedReason::UnknownMessageType(5),
        ),
        (
            [&t.msg1[..4], &[0], &t.msg1[5..]].concat(),
            MalformedReason::UnknownMessageType(0),
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
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
        assert_eq!(
            r.handle_message(&message).unwrap_err(),
            HandshakeError::Malformed(reason)
        );
        assert_eq!(
            viska_e2ee::direct::validate_message(&message).unwrap_err(),
            HandshakeError::Malformed(reason)
        );
    }
    // The same violations of message 4's header, at an initiator waiting for it.
    for (tamper, reason) in [
        (
            (|m: &mut Vec<u8>| m[0] = b'X') as fn(&mut Vec<u8>),
            MalformedReason::BadMagic,
        ),
        (|m| m[4] = 5, MalformedReason::UnknownMessageType(5)),
    ] {
        assert_eq!(
            initiator_result_for_tampered_msg4(33, tamper).unwrap_err(),
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
    assert_eq!(
        viska_e2ee::direct::message_type(&t.msg4),
        Ok(MessageType::Reveal)
    );
    assert_eq!(
        viska_e2ee::direct::validate_message(&t.msg4),
        Ok(MessageType::Reveal)
    );
}

/// Feeds `message` and checks it is refused as unexpected, and that the refusal is final.
fn assert_unexpected(
    handshake: &mut DirectHandshake,
    message: &[u8],
    role: Role,
    received: MessageType,
) {
    assert_eq!(
        handshake.handle_message(message).unwrap_err(),
        HandshakeError::UnexpectedMessage { role, received }
    );
    assert!(handshake.is_finished());
    assert_eq!(
        handshake.handle_message(message).unwrap_err(),
        HandshakeError::Finished
    );
}

#[test]
fn replayed_and_reflected_messages_are_unexpected() {
    let mut p = parties(34);
    // Messages of another, completed run, to replay.
    let old = honest_messages(&mut p, &[CHACHA]);

    // Message 1 again, while the responder waits for message 3.
    let mut m = to_message_3(&mut p, &[CHACHA]);
    assert_unexpected(&mut m.r, &m.msg1, Role::Responder, MessageType::Init);
    // The initiator's own message 3 reflected back while it waits for message 4.
    assert_unexpected(&mut m.i, &m.msg3, Role::Initiator, MessageType::Finish);

    // Message 2 again, while the initiator waits for message 4.
    let mut m = to_message_3(&mut p, &[CHACHA]);
    assert_unexpected(&mut m.i, &m.msg2, Role::Initiator, MessageType::Response);
    // Message 4 replayed to a responder waiting for message 3.
    assert_unexpected(&mut m.r, &old.msg4, Role::Responder, MessageType::Reveal);

    // The initiator's own message 1 reflected back at it.
    let (mut i, reflected) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    assert_unexpected(&mut i, &reflected, Role::Initiator, MessageType::Init);
    // Message 3 or 4 before message 2.
    let (mut i, _) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    assert_unexpected(&mut i, &old.msg3, Role::Initiator, MessageType::Finish);
    let (mut i, _) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    assert_unexpected(&mut i, &old.msg4, Role::Initiator, MessageType::Reveal);

    // Message 2, 3 or 4 before message 1.
    for (message, received) in [
        (&old.msg2, MessageType::Response),
        (&old.msg3, MessageType::Finish),
        (&old.msg4, MessageType::Reveal),
    ] {
        let mut fresh = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
        assert_unexpected(&mut fresh, message, Role::Responder, received);
    }

    // After completion, a replay gets nowhere.
    let mut m = to_message_3(&mut p, &[CHACHA]);
    let (_, msg4) = expect_complete_with_reveal(m.r.handle_message(&m.msg3));
    expect_complete(m.i.handle_message(&msg4));
    for message in [&m.msg2, &msg4] {
        assert_eq!(
            m.i.handle_message(message).unwrap_err(),
            HandshakeError::Finished
        );
    }
    for message in [&m.msg1, &m.msg3, &msg4] {
        assert_eq!(
            m.r.handle_message(message).unwrap_err(),
            HandshakeError::Finished
        );
    }
}

#[test]
fn messages_replayed_into_a_new_session_fail_authentication() {
    let mut p = parties(35);
    let old = honest_messages(&mut p, &[CHACHA]);

    // An old message 2 answers a new message 1 from the same initiator.
    let (mut i, _) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    assert_eq!(
        i.handle_message(&old.msg2).unwrap_err(),
        HandshakeError::BadSignature
    );

    // An old message 3 finishes a new session started with a fresh message 1.
    let (_, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
    expect_send(r.handle_message(&msg1));
    assert_eq!(
        r.handle_message(&old.msg3).unwrap_err(),
        HandshakeError::BadSignature
    );

    // An old message 4 reveals a nonce the new responder did not commit to.
    let mut m = to_message_3(&mut p, &[CHACHA]);
    assert_eq!(
        m.i.handle_message(&old.msg4).unwrap_err(),
        HandshakeError::CommitmentMismatch
    );
    // Nor does the new responder's own, genuine message 4 help any more.
    let (_, msg4) = expect_complete_with_reveal(m.r.handle_message(&m.msg3));
    assert_eq!(
        m.i.handle_message(&msg4).unwrap_err(),
        HandshakeError::Finished
    );
}

#[test]
fn errors_are_final() {
    let mut p = parties(36);
    let (_, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
    assert!(r.handle_message(&msg1[..10]).is_err());
    assert!(r.is_finished());
    assert_eq!(
        r.handle_message(&msg1).unwrap_err(),
        HandshakeError::Finished
    );

    // An initiator waiting for message 4 that gets garbage refuses the genuine message 4.
    let mut m = to_message_3(&mut p, &[CHACHA]);
    let (_, msg4) = expect_complete_with_reveal(m.r.handle_message(&m.msg3));
    assert!(m.i.handle_message(&msg4[..MSG4_LEN - 1]).is_err());
    assert!(m.i.is_finished());
    assert_eq!(
        m.i.handle_message(&msg4).unwrap_err(),
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
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
    // The attacker leaves only AES in the offer.
    let stripped = with_offer(&msg1, &[PROTOCOL_VERSION], &[0x0004]);
    let msg2 = expect_send(r.handle_message(&stripped));
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::DowngradeDetected
    );
}

#[test]
fn altered_version_offer_is_a_detected_downgrade() {
    let mut p = parties(41);
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
    // The attacker adds version 1 to the offer.
    let altered = with_offer(&msg1, &[1, 2], &[0xF001, 0x0004]);
    let msg2 = expect_send(r.handle_message(&altered));
    assert_eq!(&msg2[5..7], &2u16.to_be_bytes(), "the responder picks 2");
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::DowngradeDetected
    );
}

#[test]
fn version_1_is_neither_offered_nor_accepted() {
    let mut p = parties(46);
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    assert_eq!(&msg1[5..8], &[1, 0, 2], "the offer is exactly [2]");
    // A responder refuses an offer of version 1 alone.
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
    let v1_only = with_offer(&msg1, &[1], &[0xF001, 0x0004]);
    assert_eq!(
        r.handle_message(&v1_only).unwrap_err(),
        HandshakeError::UnsupportedVersion { version: 1 }
    );
    // An initiator refuses a message 2 that chooses version 1.
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
    let mut msg2 = expect_send(r.handle_message(&msg1));
    msg2[5..7].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(
        i.handle_message(&msg2).unwrap_err(),
        HandshakeError::UnsupportedVersion { version: 1 }
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
    let (_, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
        let (_, mut msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
        msg1[MSG1_EPHEMERAL..MSG1_EPHEMERAL + 32].copy_from_slice(&point);
        let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
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
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut body = b"VSKH".to_vec();
    body.push(2);
    body.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    body.extend_from_slice(&0xF001u16.to_be_bytes());
    body.extend_from_slice(&msg1[5..MSG1_EPHEMERAL]);
    body.extend_from_slice(&[0u8; 32]);
    body.extend_from_slice(&p.bob.public().to_bytes());
    body.extend_from_slice(&reference_commitment(
        COMMITMENT_LABEL_RESPONDER,
        &[0x5A; 32],
    ));
    assert_eq!(body.len(), MSG2_SIGNATURE);
    let transcript_hash = reference_transcript_hash(&PROLOGUE, &msg1, &body, &binding());
    let mut msg2 = body;
    msg2.extend_from_slice(&p.bob.sign(&reference_signed_content(
        SIGNATURE_LABEL_RESPONDER,
        &transcript_hash,
    )));
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
    // A distinctive exporter value, so a leak of it would be recognisable.
    let binding = ChannelBinding {
        tls_exporter: std::array::from_fn(|index| (index as u8).wrapping_mul(37) ^ 0xA5),
    };
    let mut i_config = config(&p.alice, &[CHACHA]);
    let mut r_config = config(&p.bob, &[CHACHA]);
    i_config.binding = binding;
    r_config.binding = binding;
    let (mut i, msg1) = initiate(i_config.clone(), &mut p.rng);
    let mut r = respond(r_config, &mut p.rng);
    let msg2 = expect_send(r.handle_message(&msg1));
    let msg3 = expect_send(i.handle_message(&msg2));
    // The initiator now holds its pending keys and both SAS commitments.
    let waiting = format!("{i:?}");
    assert!(waiting.contains("awaiting message 4"));
    let step = r.handle_message(&msg3).unwrap();
    let step_debug = format!("{step:?}");
    let HandshakeStep::CompleteWithReveal(r_keys, reveal) = step else {
        panic!("expected CompleteWithReveal, got {step_debug}");
    };
    let reveal_debug = format!("{reveal:?}");
    assert_eq!(reveal_debug, "Reveal(***)");
    assert_eq!(format!("{binding:?}"), "ChannelBinding(***)");
    let msg4 = reveal.into_bytes();
    let i_keys = expect_complete(i.handle_message(&msg4));
    let (handshake, _) = initiate(i_config.clone(), &mut p.rng);
    let debug = format!(
        "{i_keys:?} {r_keys:?} {:?} {:?} {:?} {handshake:?} {waiting} {step_debug} \
         {reveal_debug} {binding:?}",
        p.alice,
        p.alice.to_secret_bytes(),
        i_config,
    );
    let secrets: [&[u8]; 7] = [
        i_keys.media_send.expose_secret(),
        i_keys.media_recv.base_key.expose_secret(),
        i_keys.control_send.expose_secret(),
        i_keys.control_recv.base_key.expose_secret(),
        &msg3[MSG3_SAS_NONCE..MSG3_SIGNATURE],
        &msg4[MSG4_SAS_NONCE..MSG4_LEN],
        &binding.tls_exporter,
    ];
    for secret in secrets {
        assert!(!debug.contains(&to_hex(secret)));
        assert!(!debug.contains(&format!("{secret:?}")));
    }
    assert!(!debug.contains(&secret_hex));
    assert!(!debug.contains(&format!("{:?}", p.alice.to_secret_bytes().expose_secret())));
    assert!(!debug.contains(&i_keys.sas.to_string()));
    assert!(debug.contains("***"));
    assert!(step_debug.contains("Reveal(***)"));
    assert!(format!("{i_config:?}").contains("ChannelBinding(***)"));
}

// --- helpers that rebuild protocol pieces from the specification, independently of the crate ---

const TRANSCRIPT_LABEL: &[u8] = b"viska direct v2 transcript";
const SIGNATURE_LABEL_INITIATOR: &[u8] = b"viska direct v2 initiator signature";
const SIGNATURE_LABEL_RESPONDER: &[u8] = b"viska direct v2 responder signature";
const COMMITMENT_LABEL_INITIATOR: &[u8] = b"viska direct v2 sas commitment initiator";
const COMMITMENT_LABEL_RESPONDER: &[u8] = b"viska direct v2 sas commitment responder";

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

/// `TH = SHA-256(LP(label) || LP(prologue) || LP(msg1) || LP(msg2_body) || LP(binding))`.
fn reference_transcript_hash(
    prologue: &[u8],
    msg1: &[u8],
    msg2_body: &[u8],
    binding: &ChannelBinding,
) -> [u8; 32] {
    use sha2::Digest;
    let mut input = Vec::new();
    push_part(&mut input, TRANSCRIPT_LABEL);
    push_part(&mut input, prologue);
    push_part(&mut input, msg1);
    push_part(&mut input, msg2_body);
    push_part(&mut input, &binding.tls_exporter);
    sha2::Sha256::digest(&input).into()
}

/// `LP(role label) || LP(TH)`, what each side signs.
fn reference_signed_content(label: &[u8], transcript_hash: &[u8; 32]) -> Vec<u8> {
    let mut signed = Vec::new();
    push_part(&mut signed, label);
    push_part(&mut signed, transcript_hash);
    signed
}

/// `SHA-256(LP(role label) || LP(sas_nonce))`, the commitment to a SAS nonce.
fn reference_commitment(label: &[u8], sas_nonce: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut input = Vec::new();
    push_part(&mut input, label);
    push_part(&mut input, sas_nonce);
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
    let (mut i, msg1) = initiate(config(&p.alice, &[CHACHA]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA]), &mut p.rng);
    let msg2 = expect_send(r.handle_message(&msg1));
    let msg3 = expect_send(i.handle_message(&msg2));
    let (r_keys, msg4) = expect_complete_with_reveal(r.handle_message(&msg3));
    let i_keys = expect_complete(i.handle_message(&msg4));

    // msg2_body is message 2 without its last 96 bytes (signature and MAC).
    let body = &msg2[..msg2.len() - 96];
    let expected = reference_transcript_hash(&PROLOGUE, &msg1, body, &binding());
    assert_eq!(i_keys.transcript_hash, expected);
    assert_eq!(r_keys.transcript_hash, expected);

    // Both signatures are over the role label and TH, and only under their own role's label.
    let alice: PublicIdentity = p.alice.public();
    let bob: PublicIdentity = p.bob.public();
    let sig_r = &msg2[msg2.len() - 96..msg2.len() - 32];
    let sig_i = &msg3[MSG3_SIGNATURE..MSG3_CONFIRMATION];
    assert_eq!(
        bob.verify(
            &reference_signed_content(SIGNATURE_LABEL_RESPONDER, &expected),
            sig_r
        ),
        Ok(())
    );
    assert_eq!(
        alice.verify(
            &reference_signed_content(SIGNATURE_LABEL_INITIATOR, &expected),
            sig_i
        ),
        Ok(())
    );
    assert!(
        bob.verify(
            &reference_signed_content(SIGNATURE_LABEL_INITIATOR, &expected),
            sig_r
        )
        .is_err()
    );

    // Each commitment opens with the nonce revealed later, under its own role's label only.
    let commit_i = &msg1[msg1.len() - 32..];
    let commit_r = &body[body.len() - 32..];
    let sas_nonce_i = &msg3[MSG3_SAS_NONCE..MSG3_SIGNATURE];
    let sas_nonce_r = &msg4[MSG4_SAS_NONCE..MSG4_LEN];
    assert_eq!(
        commit_i,
        reference_commitment(COMMITMENT_LABEL_INITIATOR, sas_nonce_i)
    );
    assert_eq!(
        commit_r,
        reference_commitment(COMMITMENT_LABEL_RESPONDER, sas_nonce_r)
    );
    assert_ne!(
        commit_r,
        reference_commitment(COMMITMENT_LABEL_INITIATOR, sas_nonce_r)
    );
    assert_ne!(sas_nonce_i, sas_nonce_r);
}

/// Which message an on-path attacker alters.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hop {
    One,
    Two,
    Three,
    Four,
}

/// Runs a handshake in which `tamper` alters one message in flight; returns whether both sides
/// still completed.
fn completes_despite(seed: u64, hop: Hop, tamper: impl FnOnce(&mut Vec<u8>)) -> bool {
    let mut p = parties(seed);
    let (mut i, mut msg1) = initiate(config(&p.alice, &[CHACHA, AES]), &mut p.rng);
    let mut r = respond(config(&p.bob, &[CHACHA, AES]), &mut p.rng);
    let mut tamper = Some(tamper);
    let mut maybe_tamper = |this: Hop, message: &mut Vec<u8>| {
        if this == hop {
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
    let Ok(HandshakeStep::Send(mut msg3)) = i.handle_message(&msg2) else {
        return false;
    };
    maybe_tamper(Hop::Three, &mut msg3);
    let Ok(HandshakeStep::CompleteWithReveal(_, reveal)) = r.handle_message(&msg3) else {
        return false;
    };
    let mut msg4 = reveal.into_bytes();
    maybe_tamper(Hop::Four, &mut msg4);
    matches!(i.handle_message(&msg4), Ok(HandshakeStep::Complete(_)))
}

#[test]
fn no_single_bit_flip_in_any_message_lets_the_handshake_complete() {
    let mut p = parties(70);
    let t = honest_messages(&mut p, &[CHACHA, AES]);
    for hop in [Hop::One, Hop::Two, Hop::Three, Hop::Four] {
        assert!(completes_despite(71, hop, |_| {}), "control run completes");
    }
    let mut runs = 0;
    for (hop, len) in [
        (Hop::One, t.msg1.len()),
        (Hop::Two, t.msg2.len()),
        (Hop::Three, t.msg3.len()),
        (Hop::Four, t.msg4.len()),
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
    assert_eq!(
        runs,
        2 * (t.msg1.len() + t.msg2.len() + t.msg3.len() + t.msg4.len())
    );
    assert_eq!(runs, 2 * (MSG1_LEN + MSG2_LEN + MSG3_LEN + MSG4_LEN));
}

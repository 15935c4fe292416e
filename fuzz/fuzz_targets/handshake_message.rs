//! Arbitrary bytes as a direct-handshake message, in every state that accepts one: the parser
//! and the state machines never panic, and an error always ends the handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeError, HandshakeStep,
    validate_message,
};
use viska_e2ee::identity::IdentityKeyPair;
use viska_sframe::CipherSuite;

#[path = "common/fuzz_rng.rs"]
mod fuzz_rng;
use fuzz_rng::FuzzRng;

/// Both `Hello`s, as the signalling layer binds them before the handshake (both sides alike).
const PROLOGUE: [u8; 12] = [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0];

fn config(secret: u8) -> HandshakeConfig {
    HandshakeConfig {
        identity: IdentityKeyPair::from_secret_bytes(&[secret; 32]).expect("32 bytes"),
        suites: vec![
            CipherSuite::AesCtr128HmacSha256_80,
            CipherSuite::ChaCha20Poly1305Sha256,
            CipherSuite::Aes128GcmSha256,
        ],
        binding: ChannelBinding {
            tls_exporter: [1; 32],
        },
        expected_peer: None,
    }
}

fn initiate(rng: &mut FuzzRng) -> (DirectHandshake, Vec<u8>) {
    let (mut handshake, msg1) = DirectHandshake::initiate(config(0xA1), rng).expect("config");
    handshake.bind_prologue(&PROLOGUE);
    (handshake, msg1)
}

fn respond(rng: &mut FuzzRng) -> DirectHandshake {
    let mut handshake = DirectHandshake::respond(config(0xB0), rng).expect("config");
    handshake.bind_prologue(&PROLOGUE);
    handshake
}

/// Feeds `data`; if it is refused, the handshake must refuse everything afterwards.
fn feed(handshake: &mut DirectHandshake, data: &[u8]) {
    if handshake.handle_message(data).is_err() {
        assert!(handshake.is_finished());
        assert_eq!(
            handshake.handle_message(data).unwrap_err(),
            HandshakeError::Finished
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = validate_message(data);
    let mut rng = FuzzRng(0x5eed);

    // A responder waiting for message 1.
    let mut fresh_responder = respond(&mut rng);
    feed(&mut fresh_responder, data);

    // An initiator waiting for message 2.
    let (mut initiator, msg1) = initiate(&mut rng);
    feed(&mut initiator, data);

    // A responder that answered a real message 1 and waits for message 3.
    let mut responder = respond(&mut rng);
    match responder.handle_message(&msg1) {
        Ok(HandshakeStep::Send(_)) => feed(&mut responder, data),
        other => panic!("honest message 1 refused: {other:?}"),
    }

    // An initiator that answered a real message 2 with message 3 and waits for message 4.
    let (mut initiator, msg1) = initiate(&mut rng);
    let mut responder = respond(&mut rng);
    let msg2 = match responder.handle_message(&msg1) {
        Ok(HandshakeStep::Send(msg2)) => msg2,
        other => panic!("honest message 1 refused: {other:?}"),
    };
    match initiator.handle_message(&msg2) {
        Ok(HandshakeStep::Send(_)) => feed(&mut initiator, data),
        other => panic!("honest message 2 refused: {other:?}"),
    }
});

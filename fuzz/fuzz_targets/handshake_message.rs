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

fn config(secret: u8) -> HandshakeConfig {
    HandshakeConfig {
        identity: IdentityKeyPair::from_secret_bytes(&[secret; 32]).expect("32 bytes"),
        suites: vec![
            CipherSuite::ChaCha20Poly1305Sha256,
            CipherSuite::Aes128GcmSha256,
        ],
        binding: ChannelBinding {
            initiator_cert_sha256: [1; 32],
            responder_cert_sha256: [2; 32],
        },
        expected_peer: None,
    }
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
    let mut fresh_responder = DirectHandshake::respond(config(0xB0), &mut rng).expect("config");
    feed(&mut fresh_responder, data);

    // An initiator waiting for message 2.
    let (mut initiator, msg1) = DirectHandshake::initiate(config(0xA1), &mut rng).expect("config");
    feed(&mut initiator, data);

    // A responder that answered a real message 1 and waits for message 3.
    let mut responder = DirectHandshake::respond(config(0xB0), &mut rng).expect("config");
    match responder.handle_message(&msg1) {
        Ok(HandshakeStep::Send(_)) => feed(&mut responder, data),
        other => panic!("honest message 1 refused: {other:?}"),
    }
});

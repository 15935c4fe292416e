//! Arbitrary bytes as a direct-handshake message, in every state that accepts one: the parser
//! and the state machines never panic, and an error always ends the handshake.
#![no_main]

use std::convert::Infallible;

use libfuzzer_sys::fuzz_target;
use viska_e2ee::direct::{
    ChannelBinding, DirectHandshake, HandshakeConfig, HandshakeError, HandshakeStep,
    validate_message,
};
use viska_e2ee::identity::IdentityKeyPair;
use viska_e2ee::rand_core::{TryCryptoRng, TryRng};
use viska_sframe::CipherSuite;

/// Deterministic bytes for reproducible runs. NOT a cryptographic generator: fuzzing only.
struct FuzzRng(u64);

impl TryRng for FuzzRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl TryCryptoRng for FuzzRng {}

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

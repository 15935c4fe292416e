//! The property the handshake exists for: no party can compute the SAS before it has committed
//! to all its inputs, and the responder's application is told before the initiator can.
//!
//! For an attacker in either role that aborts after any message, the test takes everything the
//! attacker holds at that point (its own secrets and every message so far) and checks that the
//! SAS is still a function of a value the honest side has not revealed: the honest side's SAS
//! nonce appears in no message the attacker has seen, and the SAS takes many values as that
//! nonce varies with everything else fixed. Once the attacker has learned the nonce, it has
//! already committed to its own: any other value it reveals is refused.
#![allow(clippy::unwrap_used)]

use proptest::prelude::{ProptestConfig, any, prop_assert, prop_assert_eq, proptest};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use super::*;

fn config(identity: IdentityKeyPair) -> HandshakeConfig {
    HandshakeConfig {
        identity,
        suites: vec![CipherSuite::ChaCha20Poly1305Sha256],
        binding: ChannelBinding {
            tls_exporter: [0x42; 32],
        },
        expected_peer: None,
    }
}

/// The honest side's unrevealed SAS nonce and the key schedule, read from its state.
fn responder_secrets(responder: &DirectHandshake) -> (&KeySchedule, [u8; 32]) {
    match &responder.state {
        State::ResponderAwaitingFinish {
            pending, sas_nonce, ..
        } => (&pending.schedule, **sas_nonce),
        _ => panic!("responder not waiting for message 3"),
    }
}

fn contains(haystack: &[u8], needle: &[u8; 32]) -> bool {
    haystack.windows(32).any(|w| w == needle)
}

/// How many different SAS values `sas_of(x)` takes over 64 random `x`.
fn spread(rng: &mut StdRng, sas_of: impl Fn(&[u8; 32]) -> Sas) -> usize {
    let mut values = std::collections::HashSet::new();
    for _ in 0..64 {
        let mut x = [0u8; 32];
        rng.fill_bytes(&mut x);
        values.insert(sas_of(&x).value());
    }
    values.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Mallory as initiator towards an honest responder, aborting after message 1, 2 or 3.
    #[test]
    fn an_initiator_cannot_compute_the_sas_before_the_responder_reveals(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mallory = IdentityKeyPair::generate(&mut rng);
        let bob = IdentityKeyPair::generate(&mut rng);
        let (mut attacker, msg1) = DirectHandshake::initiate(config(mallory), &mut rng).unwrap();
        let mut honest = DirectHandshake::respond(config(bob), &mut rng).unwrap();
        attacker.bind_prologue(b"hellos");
        honest.bind_prologue(b"hellos");
        let Ok(HandshakeStep::Send(msg2)) = honest.handle_message(&msg1) else { panic!() };
        let (schedule, nonce_r) = responder_secrets(&honest);
        // After message 2 the attacker holds PRK (its ephemeral) and its own nonce; the SAS
        // needs the responder's nonce, which is in neither message, and varies with it.
        prop_assert!(!contains(&msg1, &nonce_r) && !contains(&msg2, &nonce_r));
        let nonce_i = match &attacker.state {
            State::InitiatorAwaitingResponse { sas_nonce, .. } => **sas_nonce,
            _ => panic!(),
        };
        prop_assert!(spread(&mut rng, |x| schedule.sas(&nonce_i, x).unwrap()) >= 60);
        let Ok(HandshakeStep::Send(msg3)) = attacker.handle_message(&msg2) else { panic!() };
        prop_assert!(!contains(&msg3, &nonce_r));
        // Message 3 opens the attacker's own commitment: a message 3 with any other nonce is
        // refused, so the attacker cannot change its side of the SAS once it sees message 2.
        {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5a5a);
            let (mut i2, m1) = DirectHandshake::initiate(config(IdentityKeyPair::generate(&mut rng)), &mut rng).unwrap();
            let mut r2 = DirectHandshake::respond(config(IdentityKeyPair::generate(&mut rng)), &mut rng).unwrap();
            i2.bind_prologue(b"hellos");
            r2.bind_prologue(b"hellos");
            let Ok(HandshakeStep::Send(m2)) = r2.handle_message(&m1) else { panic!() };
            let Ok(HandshakeStep::Send(mut m3)) = i2.handle_message(&m2) else { panic!() };
            m3[5 + rng.random_range(0..32usize)] ^= 1 << rng.random_range(0..8u32);
            prop_assert_eq!(r2.handle_message(&m3).map(|_| ()), Err(HandshakeError::CommitmentMismatch));
        }
        // With the genuine message 3 the responder completes and only now holds message 4:
        // its application is told of the call before it sends it.
        let Ok(HandshakeStep::CompleteWithReveal(keys_r, reveal)) = honest.handle_message(&msg3) else { panic!() };
        let msg4 = reveal.into_bytes();
        prop_assert!(contains(&msg4, &nonce_r));
        let Ok(HandshakeStep::Complete(keys_i)) = attacker.handle_message(&msg4) else { panic!() };
        prop_assert_eq!(keys_i.sas, keys_r.sas);
    }

    /// Mallory as responder towards an honest initiator, aborting after message 2 or 3.
    #[test]
    fn a_responder_cannot_compute_the_sas_before_committing(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let alice = IdentityKeyPair::generate(&mut rng);
        let mallory = IdentityKeyPair::generate(&mut rng);
        let (mut honest, msg1) = DirectHandshake::initiate(config(alice), &mut rng).unwrap();
        let mut attacker = DirectHandshake::respond(config(mallory), &mut rng).unwrap();
        honest.bind_prologue(b"hellos");
        attacker.bind_prologue(b"hellos");
        let nonce_i = match &honest.state {
            State::InitiatorAwaitingResponse { sas_nonce, .. } => **sas_nonce,
            _ => panic!(),
        };
        // Message 1 hides the initiator's nonce behind its commitment.
        prop_assert!(!contains(&msg1, &nonce_i));
        let Ok(HandshakeStep::Send(msg2)) = attacker.handle_message(&msg1) else { panic!() };
        let (schedule, nonce_r) = responder_secrets(&attacker);
        // Having sent message 2, the attacker holds PRK and its nonce: the SAS still varies with
        // the initiator's unrevealed nonce.
        prop_assert!(spread(&mut rng, |x| schedule.sas(x, &nonce_r).unwrap()) >= 60);
        let Ok(HandshakeStep::Send(msg3)) = honest.handle_message(&msg2) else { panic!() };
        prop_assert!(contains(&msg3, &nonce_i));
        // Now it knows the initiator's side; its own is fixed by the commitment in message 2:
        // revealing any other nonce fails.
        let mut other = wire::Reveal { sas_nonce: nonce_r };
        other.sas_nonce[rng.random_range(0..32usize)] ^= 1 << rng.random_range(0..8u32);
        prop_assert_eq!(
            honest.handle_message(&other.encode()).map(|_| ()),
            Err(HandshakeError::CommitmentMismatch)
        );
        prop_assert!(honest.is_finished());
    }
}

/// The responder's commitment binds: message 4 opens only to the committed nonce, and an
/// initiator without message 4 has no keys, whatever else it receives.
#[test]
fn without_message_4_the_initiator_has_no_keys_and_a_replayed_message_2_is_refused() {
    let mut rng = StdRng::seed_from_u64(3);
    let (mut i, msg1) =
        DirectHandshake::initiate(config(IdentityKeyPair::generate(&mut rng)), &mut rng).unwrap();
    let mut r =
        DirectHandshake::respond(config(IdentityKeyPair::generate(&mut rng)), &mut rng).unwrap();
    i.bind_prologue(b"");
    r.bind_prologue(b"");
    let Ok(HandshakeStep::Send(msg2)) = r.handle_message(&msg1) else {
        panic!()
    };
    let Ok(HandshakeStep::Send(_msg3)) = i.handle_message(&msg2) else {
        panic!()
    };
    assert_eq!(
        i.negotiated_suite(),
        Some(CipherSuite::ChaCha20Poly1305Sha256)
    );
    assert!(!i.is_finished());
    assert!(matches!(
        i.handle_message(&msg2),
        Err(HandshakeError::UnexpectedMessage {
            role: Role::Initiator,
            received: MessageType::Response
        })
    ));
}

//! Seeded random sequences of commands, deliveries, drops, corruptions and clock steps against
//! two wired calls (the fuzz target `call_machine` does the same under coverage guidance):
//! nothing panics, an ended call stays ended, and outputs stay bounded.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use viska_call::{Call, CallConfig, Command, Input, Output, Role};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::IdentityKeyPair;
use viska_proto::{FrameDecoder, ProtoError};

struct Side {
    call: Call,
    decoder: FrameDecoder,
    inbound: VecDeque<Vec<u8>>,
}

fn drain(sides: &mut [Side; 2], from: usize) {
    for _ in 0..10_000 {
        match sides[from].call.poll_output() {
            Output::Transmit(message) => {
                let frame = message.to_frame().unwrap();
                sides[1 - from].inbound.push_back(frame);
            }
            Output::Event(_) | Output::Keys(_) => {}
            Output::Timeout(_) => return,
        }
    }
    panic!("poll_output never reached Timeout");
}

fn receive(sides: &mut [Side; 2], to: usize, bytes: &[u8], now: Instant) {
    sides[to].decoder.push(bytes);
    loop {
        match sides[to].decoder.next_message() {
            Ok(Some(message)) => {
                let was_ended = sides[to].call.state().is_ended();
                let _ = sides[to].call.handle_input(Input::Signal(now, message));
                assert!(!was_ended || sides[to].call.state().is_ended());
            }
            Ok(None) => break,
            Err(ProtoError::StreamFailed) => {
                sides[to].decoder = FrameDecoder::new();
                break;
            }
            Err(_) => {}
        }
    }
    drain(sides, to);
}

fn random_command(rng: &mut StdRng) -> Command {
    match rng.random_range(0..12) {
        0 => Command::Dial,
        10 => Command::Ring,
        1 => Command::Answer,
        2 => Command::Reject,
        3 => Command::Busy,
        4 => Command::Hangup,
        5 => Command::Hold,
        6 => Command::Resume,
        7 => Command::Mute(rng.random()),
        8 => Command::SendDtmf(
            ["1", "#*", "12x", "", "ABCD", "9 9"][rng.random_range(0..6)].to_string(),
        ),
        9 => Command::SendDtmfTones {
            digits: ["1", "#*", "12x", ""][rng.random_range(0..4)].to_string(),
            duration_ms: [0, 1, 40, 2000, u16::MAX][rng.random_range(0..5)],
        },
        _ => Command::SendData(vec![7; rng.random_range(0..5000)]),
    }
}

#[test]
fn random_operation_sequences_never_panic() {
    let binding = ChannelBinding {
        tls_exporter: [1; 32],
    };
    let mut reached_active = 0;
    for seed in 0..150u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = Instant::now();
        let make = |role, secret: u8, rng: &mut StdRng| {
            let identity = IdentityKeyPair::from_secret_bytes(&[secret; 32]).unwrap();
            Side {
                call: Call::new(CallConfig::new(role, identity, binding), now, rng).unwrap(),
                decoder: FrameDecoder::new(),
                inbound: VecDeque::new(),
            }
        };
        let caller = make(Role::Caller, 1, &mut rng);
        let callee = make(Role::Callee, 2, &mut rng);
        let mut sides = [caller, callee];
        // Bias early operations towards a working call so deep states are reached.
        sides[0]
            .call
            .handle_input(Input::Command(now, Command::Dial))
            .unwrap();
        drain(&mut sides, 0);
        let mut was_active = false;
        for _ in 0..300 {
            let to = rng.random_range(0..2usize);
            match rng.random_range(0..40) {
                0..=29 => {
                    if let Some(frame) = sides[to].inbound.pop_front() {
                        receive(&mut sides, to, &frame, now);
                    }
                }
                30 => {
                    sides[to].inbound.pop_front();
                }
                31 => {
                    if let Some(mut frame) = sides[to].inbound.pop_front() {
                        let i = rng.random_range(0..frame.len());
                        frame[i] ^= rng.random_range(1..=255u8);
                        receive(&mut sides, to, &frame, now);
                    }
                }
                32 => {
                    let bytes: Vec<u8> =
                        (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                    receive(&mut sides, to, &bytes, now);
                }
                33..=35 => {
                    let command = match rng.random_range(0..3) {
                        0 => Command::Ring,
                        1 => Command::Answer,
                        _ => random_command(&mut rng),
                    };
                    let was_ended = sides[to].call.state().is_ended();
                    let _ = sides[to].call.handle_input(Input::Command(now, command));
                    assert!(!was_ended || sides[to].call.state().is_ended());
                    drain(&mut sides, to);
                }
                _ => {
                    now += Duration::from_millis(rng.random_range(0..3_000));
                    for i in 0..2 {
                        sides[i].call.handle_input(Input::Timeout(now)).unwrap();
                        drain(&mut sides, i);
                    }
                }
            }
            was_active |= sides
                .iter()
                .all(|s| matches!(s.call.state(), viska_call::CallState::Active { .. }));
        }
        reached_active += usize::from(was_active);
    }
    // The generator must actually exercise answered calls, not only setup failures.
    assert!(
        reached_active >= 20,
        "only {reached_active} runs reached Active"
    );
}

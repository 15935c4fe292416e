//! Two calls wired through a lossy, tampering network under an arbitrary sequence of commands,
//! deliveries, drops, corruptions, injections and clock steps: neither ever panics, and an ended
//! call stays ended.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use viska_call::{Call, CallConfig, Command, Input, Output, Role};
use viska_e2ee::direct::ChannelBinding;
use viska_e2ee::identity::IdentityKeyPair;
use viska_proto::{FrameDecoder, Reason};

#[path = "common/fuzz_rng.rs"]
mod fuzz_rng;
use fuzz_rng::FuzzRng;

#[derive(Arbitrary, Debug)]
enum FuzzCommand {
    Dial,
    Answer,
    Reject,
    Busy,
    Hangup,
    Abort(u8),
    Hold,
    Resume,
    Mute(bool),
    SendDtmf(String),
    SendDtmfTones(String, u16),
    SendData(Vec<u8>),
    MarkVerified,
    Ring,
}

impl From<FuzzCommand> for Command {
    fn from(command: FuzzCommand) -> Self {
        match command {
            FuzzCommand::Dial => Command::Dial,
            FuzzCommand::Answer => Command::Answer,
            FuzzCommand::Reject => Command::Reject,
            FuzzCommand::Busy => Command::Busy,
            FuzzCommand::Hangup => Command::Hangup,
            FuzzCommand::Abort(code) => Command::Abort(Reason::from_code(code)),
            FuzzCommand::Hold => Command::Hold,
            FuzzCommand::Resume => Command::Resume,
            FuzzCommand::Mute(mute) => Command::Mute(mute),
            FuzzCommand::SendDtmf(digits) => Command::SendDtmf(digits),
            FuzzCommand::SendDtmfTones(digits, duration_ms) => Command::SendDtmfTones {
                digits,
                duration_ms,
            },
            FuzzCommand::SendData(data) => Command::SendData(data),
            FuzzCommand::MarkVerified => Command::MarkVerified,
            FuzzCommand::Ring => Command::Ring,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Deliver the oldest frame in flight towards side `to`.
    Deliver { to: bool },
    /// Lose it.
    Drop { to: bool },
    /// Deliver it with one byte changed.
    Corrupt { to: bool, index: u16, mask: u8 },
    /// Deliver arbitrary bytes on side `to`'s stream.
    Inject { to: bool, bytes: Vec<u8> },
    /// The application on side `side` does something.
    Command { side: bool, command: FuzzCommand },
    /// Time passes; due timers fire on both sides.
    Advance { millis: u32 },
}

#[derive(Arbitrary, Debug)]
struct Scenario {
    seed: u64,
    ops: Vec<Op>,
}

struct Side {
    call: Call,
    decoder: FrameDecoder,
    /// Frames in flight towards this side.
    inbound: VecDeque<Vec<u8>>,
}

fn side(role: Role, secret: u8, now: Instant, rng: &mut FuzzRng) -> Option<Side> {
    let identity = IdentityKeyPair::from_secret_bytes(&[secret; 32]).ok()?;
    let binding = ChannelBinding {
        tls_exporter: [1; 32],
    };
    let call = Call::new(CallConfig::new(role, identity, binding), now, rng).ok()?;
    Some(Side {
        call,
        decoder: FrameDecoder::new(),
        inbound: VecDeque::new(),
    })
}

/// Drains side `from`'s outputs, queueing its transmissions towards the other side.
fn drain(sides: &mut [Side; 2], from: usize) {
    loop {
        match sides[from].call.poll_output() {
            Output::Transmit(message) => {
                if let Ok(frame) = message.to_frame() {
                    sides[1 - from].inbound.push_back(frame);
                }
            }
            Output::Event(_) | Output::Keys(_) => {}
            Output::Timeout(_) => return,
        }
    }
}

fn receive(sides: &mut [Side; 2], to: usize, bytes: &[u8], now: Instant) {
    let side = &mut sides[to];
    side.decoder.push(bytes);
    loop {
        match side.decoder.next_message() {
            Ok(Some(message)) => {
                let was_ended = side.call.state().is_ended();
                let _ = side.call.handle_input(Input::Signal(now, message));
                assert!(!was_ended || side.call.state().is_ended());
            }
            Ok(None) => break,
            // A broken stream is closed by the driver; model it with a fresh one.
            Err(viska_proto::ProtoError::StreamFailed) => {
                side.decoder = FrameDecoder::new();
                break;
            }
            Err(_) => {}
        }
    }
    drain(sides, to);
}

fuzz_target!(|scenario: Scenario| {
    let mut rng = FuzzRng(scenario.seed);
    let mut now = Instant::now();
    let (Some(caller), Some(callee)) = (
        side(Role::Caller, 1, now, &mut rng),
        side(Role::Callee, 2, now, &mut rng),
    ) else {
        return;
    };
    let mut sides = [caller, callee];
    for op in scenario.ops.into_iter().take(512) {
        match op {
            Op::Deliver { to } => {
                let to = usize::from(to);
                if let Some(frame) = sides[to].inbound.pop_front() {
                    receive(&mut sides, to, &frame, now);
                }
            }
            Op::Drop { to } => {
                sides[usize::from(to)].inbound.pop_front();
            }
            Op::Corrupt { to, index, mask } => {
                let to = usize::from(to);
                if let Some(mut frame) = sides[to].inbound.pop_front() {
                    let len = frame.len();
                    if let Some(byte) = frame.get_mut(usize::from(index) % len.max(1)) {
                        *byte ^= mask;
                    }
                    receive(&mut sides, to, &frame, now);
                }
            }
            Op::Inject { to, bytes } => receive(&mut sides, usize::from(to), &bytes, now),
            Op::Command { side, command } => {
                let i = usize::from(side);
                let was_ended = sides[i].call.state().is_ended();
                let _ = sides[i]
                    .call
                    .handle_input(Input::Command(now, command.into()));
                assert!(!was_ended || sides[i].call.state().is_ended());
                drain(&mut sides, i);
            }
            Op::Advance { millis } => {
                now += Duration::from_millis(u64::from(millis % 120_000));
                for i in 0..2 {
                    let _ = sides[i].call.handle_input(Input::Timeout(now));
                    drain(&mut sides, i);
                }
            }
        }
    }
});

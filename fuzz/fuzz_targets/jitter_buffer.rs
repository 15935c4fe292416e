//! Arbitrary push / pop / reset sequences against the jitter buffer: it never panics, never
//! holds more than its capacity, and hands out (or offers as the earliest packet held) only
//! payloads that were pushed for the frame at or after the playout position.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use viska_media::jitter::{JitterBuffer, JitterConfig, Next, PushMeta};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet arriving `advance_us` after the previous operation.
    Push {
        advance_us: u16,
        seq_delta: i16,
        far_jump: Option<u64>,
        len: u16,
        marker: bool,
        /// The packet is flagged as a comfort-noise update.
        dtx: bool,
    },
    /// A playout period `advance_us` after the previous operation (time may step back a bit).
    Pop {
        advance_us: u16,
        back: bool,
    },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity_extra: u8,
    max_delay_ms: u16,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let max_delay = Duration::from_millis(u64::from(input.max_delay_ms % 2_000) + 20);
    let config = JitterConfig {
        max_delay,
        start_delay: JitterConfig::default().start_delay.min(max_delay),
        capacity_frames: (max_delay.as_millis() as usize).div_ceil(20)
            + 2
            + usize::from(input.capacity_extra),
        slot_bytes: 300,
        ..JitterConfig::default()
    };
    let Ok(mut buffer) = JitterBuffer::new(config.clone()) else {
        return;
    };
    let epoch = Instant::now() + Duration::from_secs(1_000);
    let mut now = epoch;
    let mut seq: u64 = 1_000;
    let mut payload = [0u8; 400];
    for op in input.ops {
        match op {
            Op::Push {
                advance_us,
                seq_delta,
                far_jump,
                len,
                marker,
                dtx,
            } => {
                now += Duration::from_micros(u64::from(advance_us));
                seq = match far_jump {
                    Some(target) => target,
                    None => seq.wrapping_add_signed(i64::from(seq_delta)),
                };
                // The first 8 bytes name the frame, so pops can be checked.
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                let len = usize::from(len) % payload.len();
                let _ = buffer.push(now, seq, &payload[..len], PushMeta { marker, dtx });
            }
            Op::Pop { advance_us, back } => {
                let step = Duration::from_micros(u64::from(advance_us));
                now = if back {
                    now.checked_sub(step).unwrap_or(now)
                } else {
                    now + step
                };
                let _ = buffer.delay_adjustment(now);
                let _ = buffer.current_delay(now);
                let _ = buffer.target_delay(now);
                let expected = buffer.next_seq();
                let handed_out = match buffer.pop(now) {
                    Next::Packet(bytes) => frame_of(bytes).map(|frame| (frame, false)),
                    Next::RecoverFec { next } => frame_of(next).map(|frame| (frame, true)),
                    _ => None,
                };
                if let Some((frame, fec)) = handed_out {
                    // A packet plays at its own position (silence before a talkspurt may be
                    // skipped); a FEC source is the packet right after the lost frame.
                    assert!(frame >= expected);
                    if fec {
                        assert_eq!(frame, buffer.next_seq());
                    } else {
                        assert_eq!(frame.saturating_add(1), buffer.next_seq());
                    }
                }
            }
            Op::Reset => buffer.reset(),
        }
        assert!(buffer.len() <= config.capacity_frames);
        if let Some((frame, bytes)) = buffer.earliest_packet() {
            assert!(frame >= buffer.next_seq());
            if let Some(named) = frame_of(bytes) {
                assert_eq!(named, frame);
            }
        }
        let _ = buffer.stats();
    }
});

fn frame_of(bytes: &[u8]) -> Option<u64> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

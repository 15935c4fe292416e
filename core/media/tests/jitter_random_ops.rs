//! Seeded random push / pop / reset sequences (the fuzz target's model, run deterministically
//! in every test run): no panic, bounded length, every packet handed out belongs to the frame
//! at the playout position, and the counters add up.

use std::time::{Duration, Instant};

use viska_media::jitter::{JitterBuffer, JitterConfig, Next, PushMeta, PushOutcome};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn frame_of(bytes: &[u8]) -> Option<u64> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

#[test]
fn random_operation_sequences_keep_the_invariants() {
    let epoch = Instant::now() + Duration::from_secs(100);
    for case in 0..300u64 {
        let mut rng = Rng(case);
        let max_delay = Duration::from_millis(20 + rng.below(1_000));
        let config = JitterConfig {
            max_delay,
            start_delay: JitterConfig::default().start_delay.min(max_delay),
            capacity_frames: (max_delay.as_millis() as usize).div_ceil(20)
                + 2
                + rng.below(40) as usize,
            slot_bytes: 200,
            ..JitterConfig::default()
        };
        let capacity = config.capacity_frames;
        let mut buffer = JitterBuffer::new(config).expect("config");
        let mut now = epoch;
        let mut seq = rng.next_u64() >> rng.below(64);
        let mut payload = [0u8; 256];
        // Packets handed out for playing (a FEC source is handed out again later).
        let mut handed_out = 0u64;
        let mut pushes = 0u64;
        for _ in 0..600 {
            match rng.below(20) {
                0..=10 => {
                    now += Duration::from_micros(rng.below(30_000));
                    seq = match rng.below(50) {
                        0 => rng.next_u64(),
                        1 => u64::MAX - rng.below(3),
                        2..=5 => seq.wrapping_sub(rng.below(10)),
                        _ => seq.wrapping_add(rng.below(4)),
                    };
                    payload[..8].copy_from_slice(&seq.to_le_bytes());
                    let len = rng.below(230) as usize;
                    let outcome = buffer.push(
                        now,
                        seq,
                        &payload[..len],
                        PushMeta {
                            marker: rng.below(8) == 0,
                            dtx: rng.below(8) == 0,
                        },
                    );
                    pushes += 1;
                    if len == 0 || len > 200 {
                        assert_eq!(outcome, PushOutcome::Oversized);
                    }
                }
                11..=18 => {
                    now = if rng.below(30) == 0 {
                        now.checked_sub(Duration::from_millis(rng.below(50)))
                            .unwrap_or(now)
                    } else {
                        now + Duration::from_micros(rng.below(40_000))
                    };
                    let _ = buffer.delay_adjustment(now);
                    assert!(buffer.target_delay(now) <= max_delay);
                    let expected = buffer.next_seq();
                    let got = match buffer.pop(now) {
                        Next::Packet(bytes) => Some((frame_of(bytes), false)),
                        Next::RecoverFec { next } => Some((frame_of(next), true)),
                        _ => None,
                    };
                    if let Some((frame, fec)) = got {
                        handed_out += u64::from(!fec);
                        if let Some(frame) = frame {
                            assert!(frame >= expected);
                            if fec {
                                assert_eq!(frame, buffer.next_seq());
                            } else {
                                assert_eq!(frame.saturating_add(1), buffer.next_seq());
                            }
                        }
                    }
                }
                _ => buffer.reset(),
            }
            assert!(buffer.len() <= capacity);
            // The packet a DRED rebuild would read: the earliest one held, at or after the
            // playout position, carrying its own frame.
            match buffer.earliest_packet() {
                Some((frame, bytes)) => {
                    assert!(frame >= buffer.next_seq());
                    if let Some(named) = frame_of(bytes) {
                        assert_eq!(named, frame);
                    }
                }
                None => assert!(
                    buffer.is_empty(),
                    "case {case}: next {} len {} {:?}",
                    buffer.next_seq(),
                    buffer.len(),
                    buffer.stats()
                ),
            }
        }
        let stats = buffer.stats();
        assert_eq!(stats.received, pushes);
        assert!(stats.accepted + stats.late + stats.duplicate + stats.oversized <= pushes);
        assert!(handed_out <= stats.accepted);
    }
}

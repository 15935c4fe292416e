//! Runs frame periods of an answered call between two sessions (`session N`), or the same
//! codec work alone (`codec N`), for counting instructions per frame under an instruction
//! counter (valgrind's cachegrind or callgrind), which on a virtual machine without hardware
//! counters is the only measure that resolves a few percent. `scripts/perf-instructions` runs
//! both and prints the counts per frame.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use viska_media::codec::{OpusConfig, OpusDecoder, OpusEncoder};

#[path = "../benches/pair.rs"]
mod pair;

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "session".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(500);
    match what.as_str() {
        "session" => {
            let mut pair = pair::Pair::answered();
            for _ in 0..n {
                pair.frame();
            }
            black_box(&pair.played);
        }
        "setup" => {
            // The same set-up as `session`, with no frames after it: subtracted from it.
            let pair = pair::Pair::answered();
            black_box(&pair.played);
        }
        "codec" | "codec-lossy" => {
            // The encoder sized for no loss, as the session sizes it on a clean path (its FEC
            // follows the peer's reception reports); `codec-lossy`: for the default 10 %.
            let mut opus = OpusConfig::default();
            if what == "codec" {
                opus.expected_loss_pct = 0;
            }
            let mut encoders = [
                OpusEncoder::new(&opus).unwrap(),
                OpusEncoder::new(&opus).unwrap(),
            ];
            let mut decoders = [
                OpusDecoder::new(&opus).unwrap(),
                OpusDecoder::new(&opus).unwrap(),
            ];
            let (mut pcm, mut out, mut packet) =
                (vec![0i16; 960], vec![0i16; 960], vec![0u8; 1500]);
            // Each direction its own continuous tone, generated per frame as the session
            // harness does.
            let mut phase = [0u64; 2];
            for _ in 0..n {
                for (i, (encoder, decoder)) in
                    encoders.iter_mut().zip(decoders.iter_mut()).enumerate()
                {
                    for (k, s) in pcm.iter_mut().enumerate() {
                        let x = (phase[i] + k as u64) as f64;
                        *s = (6000.0 * (2.0 * std::f64::consts::PI * 440.0 * x / 48_000.0).sin())
                            as i16;
                    }
                    phase[i] += 960;
                    let len = encoder.encode(&pcm, &mut packet).unwrap();
                    decoder.decode(&packet[..len], &mut out).unwrap();
                }
                black_box(&out);
            }
        }
        other => {
            eprintln!("usage: frame_cost session|setup|codec|codec-lossy [frames] (got {other:?})");
            std::process::exit(2);
        }
    }
}

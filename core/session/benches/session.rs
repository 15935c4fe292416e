//! The session's own cost per 20 ms frame, no IO: both ends of an answered call capture,
//! encode, protect and send one frame, receive, authenticate and buffer the other's, and play
//! (decode) one, as a phone does every period; beside it, the codec work alone (the same
//! encoder and decoder settings, the same audio, two encodes and two decodes). The difference
//! is what the session adds: SFrame, the payload, the jitter buffer and playout, the clocks.
//!
//! The session sizes its encoder's FEC from the peer's reception reports: on this clean path
//! the expected loss drops to 0 within the first reports, and at 32 kb/s Opus then codes
//! hybrid SILK + CELT instead of FEC-carrying SILK wideband, about 12 % more encoder work. The
//! codec-alone loop is set up the same way (expected loss 0), or it measures another codec
//! work.
//!
//! `cargo bench -p viska-session --bench session -- --warm-up-time 2 --measurement-time 8`
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use viska_media::codec::{OpusConfig, OpusDecoder, OpusEncoder};

#[path = "pair.rs"]
mod pair;

fn frames(c: &mut Criterion) {
    let mut pair = pair::Pair::answered();
    c.bench_function("session: one 20 ms frame, both directions", |b| {
        b.iter(|| pair.frame());
    });
    assert!(pair.played[0] > 0 && pair.played[1] > 0);

    let opus = OpusConfig {
        expected_loss_pct: 0,
        ..OpusConfig::default()
    };
    let mut encoders = [
        OpusEncoder::new(&opus).unwrap(),
        OpusEncoder::new(&opus).unwrap(),
    ];
    let mut decoders = [
        OpusDecoder::new(&opus).unwrap(),
        OpusDecoder::new(&opus).unwrap(),
    ];
    let (mut pcm, mut out, mut packet) = (vec![0i16; 960], vec![0i16; 960], vec![0u8; 1500]);
    // Each direction its own continuous tone, generated per frame as the session pair does.
    let mut phase = [0u64; 2];
    c.bench_function("codec alone: two encodes and two decodes", |b| {
        b.iter(|| {
            for (i, (encoder, decoder)) in encoders.iter_mut().zip(decoders.iter_mut()).enumerate()
            {
                for (k, s) in pcm.iter_mut().enumerate() {
                    let n = (phase[i] + k as u64) as f64;
                    *s =
                        (6000.0 * (2.0 * std::f64::consts::PI * 440.0 * n / 48_000.0).sin()) as i16;
                }
                phase[i] += 960;
                let len = encoder.encode(&pcm, &mut packet).unwrap();
                decoder.decode(&packet[..len], &mut out).unwrap();
            }
            black_box(&out);
        });
    });
}

criterion_group!(benches, frames);
criterion_main!(benches);

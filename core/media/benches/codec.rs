//! CPU cost of one 20 ms frame through the Opus encoder and decoder at Viska's settings, and of
//! each loss-recovery path.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use viska_media::codec::{
    MAX_PACKET_BYTES, MAX_PACKET_SAMPLES, OpusConfig, OpusDecoder, OpusEncoder,
};

/// Two seconds of a voiced, speech-like signal (harmonics on a gliding pitch).
fn voiced() -> Vec<i16> {
    let mut phase = 0.0f64;
    (0..96_000)
        .map(|i| {
            let t = f64::from(i) / 48_000.0;
            let f0 = 165.0 + 55.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / 48_000.0;
            let envelope = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let voice: f64 = (1..=20)
                .map(|k| (phase * f64::from(k)).sin() / f64::from(k))
                .sum();
            (voice * envelope * 6_000.0) as i16
        })
        .collect()
}

fn encode_all(config: &OpusConfig, pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(config).expect("encoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    pcm.chunks_exact(960)
        .map(|f| {
            let n = encoder.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pcm = voiced();
    let frames: Vec<&[i16]> = pcm.chunks_exact(960).collect();
    for (name, config) in [
        ("default", OpusConfig::default()),
        (
            "dred200",
            OpusConfig {
                fec: false,
                dred_duration_ms: 200,
                expected_loss_pct: 20,
                ..OpusConfig::default()
            },
        ),
        (
            "dec_complexity0",
            OpusConfig {
                decoder_complexity: 0,
                ..OpusConfig::default()
            },
        ),
    ] {
        let packets = encode_all(&config, &pcm);
        let mut encoder = OpusEncoder::new(&config).expect("encoder");
        let mut decoder = OpusDecoder::new(&config).expect("decoder");
        let mut buf = vec![0u8; MAX_PACKET_BYTES];
        let mut out = vec![0i16; MAX_PACKET_SAMPLES];
        let mut i = 0;
        c.bench_function(&format!("{name}/encode+decode 20ms"), |b| {
            b.iter(|| {
                let n = encoder
                    .encode(frames[i % frames.len()], &mut buf)
                    .expect("encode");
                let m = decoder.decode(&buf[..n], &mut out).expect("decode");
                i += 1;
                black_box(m)
            })
        });
        let mut i = 0;
        c.bench_function(&format!("{name}/encode 20ms"), |b| {
            b.iter(|| {
                i += 1;
                black_box(
                    encoder
                        .encode(frames[i % frames.len()], &mut buf)
                        .expect("encode"),
                )
            })
        });
        let mut i = 0;
        c.bench_function(&format!("{name}/decode 20ms"), |b| {
            b.iter(|| {
                i += 1;
                black_box(
                    decoder
                        .decode(&packets[i % packets.len()], &mut out)
                        .expect("decode"),
                )
            })
        });
        c.bench_function(&format!("{name}/conceal 20ms"), |b| {
            b.iter(|| black_box(decoder.conceal(&mut out).expect("conceal")))
        });
        if config.fec {
            let mut i = 1;
            c.bench_function(&format!("{name}/decode_fec 20ms"), |b| {
                b.iter(|| {
                    i = i % (packets.len() - 1) + 1;
                    black_box(decoder.decode_fec(&packets[i], &mut out).expect("fec"))
                })
            });
        }
        if config.dred_duration_ms > 0 {
            let mut i = 10;
            c.bench_function(&format!("{name}/decode_dred 20ms (new packet)"), |b| {
                b.iter(|| {
                    i = i % (packets.len() - 10) + 10;
                    black_box(
                        decoder
                            .decode_dred(&packets[i], 960, &mut out)
                            .expect("dred"),
                    )
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

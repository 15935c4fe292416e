//! CPU per 20 ms frame of the receive path: Opus encode + jitter buffer push + playout pull
//! (decode), against Opus encode + decode alone. The difference is what the jitter buffer and
//! playout logic cost.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use viska_media::codec::{MAX_PACKET_BYTES, OpusConfig, OpusDecoder, OpusEncoder};
use viska_media::jitter::{JitterBuffer, JitterConfig, PushMeta};
use viska_media::playout::{Playout, PlayoutConfig};
use viska_media::stretch::{Stretch, StretchConfig, TimeStretcher};

const FRAME_SAMPLES: usize = 960;

/// Two seconds of speech-like audio: voiced bursts with a pause.
fn speech() -> Vec<i16> {
    let mut phase = 0.0f64;
    (0..96_000)
        .map(|i| {
            let t = f64::from(i) / 48_000.0;
            let f0 = 150.0 + 30.0 * (2.0 * std::f64::consts::PI * 0.8 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / 48_000.0;
            let talking = (t % 1.0) < 0.7;
            let voice: f64 = (1..=8)
                .map(|k| (phase * f64::from(k)).sin() / f64::from(k))
                .sum();
            if talking { (voice * 6_000.0) as i16 } else { 0 }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pcm = speech();
    let frames: Vec<&[i16]> = pcm.chunks_exact(FRAME_SAMPLES).collect();
    let opus = OpusConfig::default();
    let mut packet = vec![0u8; MAX_PACKET_BYTES];
    let mut out = vec![0i16; FRAME_SAMPLES];

    let mut group = c.benchmark_group("receive_path_per_20ms_frame");
    group.bench_function("opus_encode_decode", |b| {
        let mut encoder = OpusEncoder::new(&opus).expect("encoder");
        let mut decoder = OpusDecoder::new(&opus).expect("decoder");
        let mut index = 0usize;
        b.iter(|| {
            let frame = frames[index % frames.len()];
            index += 1;
            let len = encoder.encode(frame, &mut packet).expect("encode");
            black_box(decoder.decode(&packet[..len], &mut out).expect("decode"));
        });
    });
    group.bench_function("opus_encode_push_pull", |b| {
        let mut encoder = OpusEncoder::new(&opus).expect("encoder");
        let decoder = OpusDecoder::new(&opus).expect("decoder");
        let config = PlayoutConfig {
            opus,
            ..PlayoutConfig::default()
        };
        let mut playout = Playout::new(config, decoder).expect("playout");
        let epoch = Instant::now();
        let mut seq = 0u64;
        b.iter(|| {
            let frame = frames[(seq % frames.len() as u64) as usize];
            let len = encoder.encode(frame, &mut packet).expect("encode");
            // Virtual clock: the packet arrives 30 ms after its frame, the pull runs every 20 ms.
            let sent = epoch + Duration::from_millis(seq * 20);
            playout.push(
                sent + Duration::from_millis(30),
                seq,
                &packet[..len],
                PushMeta::default(),
            );
            let pulled = playout
                .pull(sent + Duration::from_millis(47), &mut out)
                .expect("pull");
            black_box(pulled);
            seq += 1;
        });
    });
    group.finish();

    // The jitter buffer alone, per frame (push + pop of a 80-byte packet).
    c.bench_function("jitter_buffer_push_pop", |b| {
        let mut buffer = JitterBuffer::new(JitterConfig::default()).expect("buffer");
        let epoch = Instant::now();
        let payload = [7u8; 80];
        let mut seq = 0u64;
        b.iter(|| {
            let sent = epoch + Duration::from_millis(seq * 20);
            buffer.push(
                sent + Duration::from_millis(30),
                seq,
                &payload,
                PushMeta::default(),
            );
            black_box(buffer.pop(sent + Duration::from_millis(47)));
            seq += 1;
        });
    });
}

/// One time-stretching attempt (pitch search and cut) on 40 ms of voiced audio: what a
/// playout pull adds in a period where it shrinks the delay inside speech.
fn stretch(c: &mut Criterion) {
    let pcm = speech();
    let input = &pcm[..2 * FRAME_SAMPLES];
    let mut stretcher = TimeStretcher::new(StretchConfig::default());
    let mut work = Vec::with_capacity(4 * FRAME_SAMPLES);
    c.bench_function("stretch_accelerate_40ms_voiced", |b| {
        b.iter(|| {
            work.clear();
            work.extend_from_slice(input);
            let result = stretcher.accelerate(&mut work);
            assert!(matches!(result, Stretch::Applied { .. }));
            black_box(result)
        });
    });
}

criterion_group!(benches, bench, stretch);
criterion_main!(benches);

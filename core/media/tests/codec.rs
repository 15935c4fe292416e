//! Behaviour of the Opus codec wrapper: round trip, FEC, PLC, DRED, DTX, typed errors.

use viska_media::codec::{
    CodecError, FrameDuration, MAX_PACKET_BYTES, MAX_PACKET_SAMPLES, OpusConfig, OpusDecoder,
    OpusEncoder, packet_has_fec,
};

const FRAME: usize = 960;

/// A voiced, speech-like test signal: a harmonic series on a gliding 110..220 Hz pitch with a
/// 4 Hz syllable envelope, so SILK's pitch and LPC analysis see something like a voice.
fn voiced(seconds: f32) -> Vec<i16> {
    let n = (48_000.0 * seconds) as usize;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let f0 = 165.0 + 55.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / 48_000.0;
            let envelope = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let voice: f64 = (1..=20).map(|k| (phase * k as f64).sin() / k as f64).sum();
            (voice * envelope * 6_000.0) as i16
        })
        .collect()
}

fn tone(freq: f64, seconds: f32, amplitude: f64) -> Vec<i16> {
    let n = (48_000.0 * seconds) as usize;
    (0..n)
        .map(|i| {
            (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin()) as i16
        })
        .collect()
}

fn encode_all(config: &OpusConfig, pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(config).expect("encoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    pcm.chunks_exact(config.frame_samples())
        .map(|frame| {
            let len = encoder.encode(frame, &mut buf).expect("encode");
            buf[..len].to_vec()
        })
        .collect()
}

fn decode_all(config: &OpusConfig, packets: &[Vec<u8>]) -> Vec<i16> {
    let mut decoder = OpusDecoder::new(config).expect("decoder");
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    let mut pcm = Vec::new();
    for packet in packets {
        let n = decoder.decode(packet, &mut out).expect("decode");
        pcm.extend_from_slice(&out[..n]);
    }
    pcm
}

/// Signal-to-noise ratio (dB) of `decoded` against `reference` delayed by `delay` samples,
/// over the middle of the signal.
fn snr_db(reference: &[i16], decoded: &[i16], delay: usize) -> f64 {
    let start = 9_600;
    let end = reference.len().min(decoded.len() - delay) - 2_000;
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for i in start..end {
        let r = f64::from(reference[i]);
        let d = f64::from(decoded[i + delay]);
        signal += r * r;
        noise += (r - d) * (r - d);
    }
    10.0 * (signal / noise.max(1.0)).log10()
}

fn error_energy(a: &[i16], b: &[i16]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

#[test]
fn tone_round_trip_keeps_the_waveform() {
    let config = OpusConfig::default();
    let input = tone(440.0, 2.0, 8_000.0);
    let packets = encode_all(&config, &input);
    let output = decode_all(&config, &packets);
    assert_eq!(output.len(), input.len());
    // The decoder output lags the input by the encoder lookahead (6.5 ms = 312 samples).
    let delay = OpusEncoder::new(&config)
        .expect("encoder")
        .lookahead()
        .expect("lookahead");
    assert_eq!(delay, 312);
    // Measured 21.4 dB at 32 kb/s (SILK/hybrid is a perceptual, not a waveform, coder);
    // 15 dB leaves room for libopus version drift and still fails on misaligned, clipped or
    // wrongly scaled output (those measure below 3 dB).
    let snr = snr_db(&input, &output, delay);
    // Three samples off (0.17 rad at 440 Hz) already costs several dB: shows the alignment,
    // and so the measured SNR, is the real one.
    let snr_off = snr_db(&input, &output, delay + 3);
    eprintln!("tone SNR {snr:.1} dB (three samples off: {snr_off:.1} dB)");
    assert!(snr > 15.0, "tone SNR {snr:.1} dB");
    assert!(snr > snr_off + 3.0);
}

#[test]
fn fec_rebuilds_a_lost_frame_better_than_concealment() {
    let config = OpusConfig {
        expected_loss_pct: 20,
        ..OpusConfig::default()
    };
    let input = voiced(3.0);
    let packets = encode_all(&config, &input);
    let clean = decode_all(&config, &packets);
    let (mut fec_error, mut plc_error) = (0.0, 0.0);
    let mut out = vec![0i16; FRAME];
    // Lose one frame at a time at several places in the stream.
    // SILK only adds LBRR after frames it judges active enough, so lose frames whose
    // successor carries FEC (most of this voiced signal).
    let mut tried = 0;
    for lost in (20..140)
        .filter(|&k| packet_has_fec(&packets[k + 1]))
        .step_by(7)
    {
        tried += 1;
        let reference = &clean[lost * FRAME..(lost + 1) * FRAME];
        for use_fec in [true, false] {
            let mut decoder = OpusDecoder::new(&config).expect("decoder");
            for packet in &packets[..lost] {
                decoder.decode(packet, &mut out).expect("decode");
            }
            let n = if use_fec {
                decoder
                    .decode_fec(&packets[lost + 1], &mut out)
                    .expect("fec")
            } else {
                decoder.conceal(&mut out).expect("plc")
            };
            assert_eq!(n, FRAME);
            let e = error_energy(reference, &out);
            if use_fec {
                fec_error += e;
            } else {
                plc_error += e;
            }
        }
    }
    assert!(tried >= 10, "only {tried} frames had FEC after them");
    eprintln!("error energy: fec {fec_error:.3e}, plc {plc_error:.3e}");
    assert!(
        fec_error < plc_error * 0.7,
        "fec {fec_error:.3e} vs plc {plc_error:.3e}"
    );
}

#[test]
fn no_fec_data_when_fec_is_off() {
    let config = OpusConfig {
        fec: false,
        ..OpusConfig::default()
    };
    let packets = encode_all(&config, &voiced(1.0));
    assert!(packets.iter().all(|p| !packet_has_fec(p)));
}

#[test]
fn concealment_produces_one_frame() {
    for frame in [FrameDuration::Ms10, FrameDuration::Ms20] {
        let config = OpusConfig {
            frame,
            ..OpusConfig::default()
        };
        let packets = encode_all(&config, &voiced(0.5));
        let mut decoder = OpusDecoder::new(&config).expect("decoder");
        let mut out = vec![0i16; MAX_PACKET_SAMPLES];
        for packet in &packets {
            decoder.decode(packet, &mut out).expect("decode");
        }
        out.fill(0);
        let n = decoder.conceal(&mut out).expect("conceal");
        assert_eq!(n, frame.samples());
        // Concealment after voiced audio continues it rather than going silent.
        assert!(out[..n].iter().any(|&s| s.unsigned_abs() > 100));
        let mut short = vec![0i16; frame.samples() - 1];
        assert_eq!(
            decoder.conceal(&mut short),
            Err(CodecError::FrameSize {
                expected: frame.samples(),
                got: frame.samples() - 1
            })
        );
    }
}

#[test]
fn dtx_sends_tiny_packets_in_silence() {
    let silence = vec![0i16; 48_000 * 2];
    let with_dtx = encode_all(
        &OpusConfig {
            dtx: true,
            ..OpusConfig::default()
        },
        &silence,
    );
    let without = encode_all(
        &OpusConfig {
            dtx: false,
            ..OpusConfig::default()
        },
        &silence,
    );
    let tiny = |packets: &[Vec<u8>]| packets.iter().skip(25).filter(|p| p.len() <= 2).count();
    let steady = with_dtx.len() - 25;
    assert!(
        tiny(&with_dtx) * 10 >= steady * 8,
        "dtx: {} of {steady} tiny",
        tiny(&with_dtx)
    );
    assert_eq!(tiny(&without), 0, "tiny packets without dtx");
}

/// DTX is the default. In a long silence the encoder sends one comfort-noise update every
/// 420 ms (more than 2 bytes, flagged by `in_dtx`) and 1-byte frames in between; speech is
/// never flagged.
#[test]
fn dtx_is_on_by_default_and_flags_its_comfort_noise_updates() {
    assert!(OpusConfig::default().dtx);
    let config = OpusConfig::default();
    let mut encoder = OpusEncoder::new(&config).expect("encoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let mut pcm = voiced(1.0);
    pcm.extend(vec![0i16; 48_000 * 4]);
    pcm.extend(voiced(1.0));
    let mut frames = Vec::new();
    for frame in pcm.chunks_exact(FRAME) {
        let len = encoder.encode(frame, &mut buf).expect("encode");
        frames.push((len, encoder.in_dtx().expect("in_dtx")));
    }
    // Speech (1 s) is never DTX.
    assert!(
        frames[..50].iter().all(|&(len, dtx)| !dtx && len > 2),
        "{frames:?}"
    );
    // The last 3 s of the silence: updates every 20 frames, nothing else worth sending.
    let quiet = &frames[100..250];
    let updates: Vec<usize> = (0..quiet.len()).filter(|&i| quiet[i].0 > 2).collect();
    assert!(quiet.iter().all(|&(len, dtx)| dtx || len <= 2), "{quiet:?}");
    assert!((7..=8).contains(&updates.len()), "updates at {updates:?}");
    // libopus counts 20 frames without sending, then sends the update: one every 21 frames.
    assert!(updates.windows(2).all(|w| w[1] - w[0] == 21), "{updates:?}");
    let update_bytes: usize = updates.iter().map(|&i| quiet[i].0).sum();
    // What the updates carry of Opus: well under 1 kbit/s.
    assert!(update_bytes * 8 < 3 * 1000, "{update_bytes} bytes in 3 s");
    // Speech after the silence is sent again at once.
    assert!(
        frames[250..]
            .iter()
            .skip(1)
            .all(|&(len, dtx)| !dtx && len > 2)
    );
}

/// The frames between comfort-noise updates are played as libopus' comfort noise: quiet (as
/// the silence was), one frame each, and without the neural concealment (a noise burst's
/// continuation would be loud).
#[test]
fn comfort_noise_continues_the_background_quietly() {
    let config = OpusConfig::default();
    let mut encoder = OpusEncoder::new(&config).expect("encoder");
    let mut decoder = OpusDecoder::new(&config).expect("decoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    let mut pcm = voiced(1.0);
    pcm.extend(vec![0i16; 48_000 * 2]);
    let mut played = Vec::new();
    let mut gap_frames = Vec::new();
    let mut comfort = 0;
    for frame in pcm.chunks_exact(FRAME) {
        let len = encoder.encode(frame, &mut buf).expect("encode");
        if len <= 2 {
            let n = decoder.comfort_noise(&mut out).expect("comfort noise");
            assert_eq!(n, FRAME);
            comfort += 1;
            played.extend_from_slice(&out[..n]);
            gap_frames.extend_from_slice(&out[..n]);
        } else {
            let n = decoder.decode(&buf[..len], &mut out).expect("decode");
            played.extend_from_slice(&out[..n]);
        }
    }
    assert!(comfort >= 60, "{comfort} comfort-noise frames");
    // It is libopus' classic DTX path: what a decoder below the neural PLC's complexity
    // plays for the same frames, and not what the configured one conceals with.
    let classic = play_silence_gaps(&pcm, 4, false);
    let neural = play_silence_gaps(&pcm, config.decoder_complexity, false);
    let ours = play_silence_gaps(&pcm, config.decoder_complexity, true);
    assert_eq!(ours, gap_frames);
    let gaps = |a: &[i16], b: &[i16]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert_eq!(
        gaps(&ours, &classic),
        0,
        "comfort noise is the classic path"
    );
    assert!(
        gaps(&ours, &neural) > 0,
        "the neural concealment plays something else"
    );
    let tail = &played[played.len() - 48_000..];
    let rms = (tail.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    assert!(rms < 30.0, "comfort noise rms {rms}");
    // The decoder still decodes speech after it.
    let speech = voiced(0.2);
    for frame in speech.chunks_exact(FRAME) {
        let len = encoder.encode(frame, &mut buf).expect("encode");
        assert_eq!(
            decoder.decode(&buf[..len], &mut out).expect("decode"),
            FRAME
        );
    }
}

/// Encodes `pcm` with DTX and plays it back with a decoder of `complexity`, filling the
/// frames not sent with comfort noise (`comfort`) or concealment; only those frames are kept.
fn play_silence_gaps(pcm: &[i16], complexity: u8, comfort: bool) -> Vec<i16> {
    let config = OpusConfig {
        decoder_complexity: complexity,
        ..OpusConfig::default()
    };
    let mut encoder = OpusEncoder::new(&OpusConfig::default()).expect("encoder");
    let mut decoder = OpusDecoder::new(&config).expect("decoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    let mut gaps = Vec::new();
    for frame in pcm.chunks_exact(FRAME) {
        let len = encoder.encode(frame, &mut buf).expect("encode");
        if len <= 2 {
            let n = if comfort {
                decoder.comfort_noise(&mut out)
            } else {
                decoder.conceal(&mut out)
            }
            .expect("gap frame");
            gaps.extend_from_slice(&out[..n]);
        } else {
            decoder.decode(&buf[..len], &mut out).expect("decode");
        }
    }
    gaps
}

#[test]
fn dred_rebuilds_a_burst_better_than_concealment() {
    // DRED is paid for out of the bitrate; with in-band FEC also on, libopus leaves it one
    // 40 ms chunk at 32 kb/s, so a DRED stream turns FEC off.
    let config = OpusConfig {
        dred_duration_ms: 200,
        fec: false,
        expected_loss_pct: 20,
        ..OpusConfig::default()
    };
    let input = voiced(3.0);
    let packets = encode_all(&config, &input);
    let clean = decode_all(&config, &packets);
    let (mut dred_error, mut plc_error) = (0.0, 0.0);
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    for first_lost in (30..130).step_by(15) {
        let burst = 3;
        let next = first_lost + burst;
        let reference = &clean[first_lost * FRAME..next * FRAME];
        for use_dred in [true, false] {
            let mut decoder = OpusDecoder::new(&config).expect("decoder");
            for packet in &packets[..first_lost] {
                decoder.decode(packet, &mut out).expect("decode");
            }
            let mut rebuilt = Vec::new();
            for k in 0..burst {
                let offset = (burst - k) * FRAME;
                let n = if use_dred {
                    decoder
                        .decode_dred(&packets[next], offset, &mut out)
                        .expect("dred")
                        .expect("packet carries DRED reaching the burst")
                } else {
                    decoder.conceal(&mut out).expect("plc")
                };
                assert_eq!(n, FRAME);
                rebuilt.extend_from_slice(&out[..n]);
            }
            let e = error_energy(reference, &rebuilt);
            if use_dred {
                dred_error += e;
            } else {
                plc_error += e;
            }
        }
    }
    eprintln!("burst error energy: dred {dred_error:.3e}, plc {plc_error:.3e}");
    assert!(
        dred_error < plc_error,
        "dred {dred_error:.3e} vs plc {plc_error:.3e}"
    );
}

#[test]
fn dred_absent_is_none_not_an_error() {
    let config = OpusConfig::default();
    let packets = encode_all(&config, &voiced(1.0));
    let mut decoder = OpusDecoder::new(&config).expect("decoder");
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    for packet in &packets[..10] {
        decoder.decode(packet, &mut out).expect("decode");
    }
    assert_eq!(decoder.decode_dred(&packets[11], FRAME, &mut out), Ok(None));
}

#[test]
fn invalid_config_is_a_typed_error() {
    let cases = [
        (
            OpusConfig {
                bitrate_bps: 1_000,
                ..OpusConfig::default()
            },
            "bitrate_bps",
        ),
        (
            OpusConfig {
                bitrate_bps: 600_000,
                ..OpusConfig::default()
            },
            "bitrate_bps",
        ),
        (
            OpusConfig {
                expected_loss_pct: 101,
                ..OpusConfig::default()
            },
            "expected_loss_pct",
        ),
        (
            OpusConfig {
                complexity: 11,
                ..OpusConfig::default()
            },
            "complexity",
        ),
        (
            OpusConfig {
                decoder_complexity: 11,
                ..OpusConfig::default()
            },
            "decoder_complexity",
        ),
        (
            OpusConfig {
                dred_duration_ms: 15,
                ..OpusConfig::default()
            },
            "dred_duration_ms",
        ),
        (
            OpusConfig {
                dred_duration_ms: 2_000,
                ..OpusConfig::default()
            },
            "dred_duration_ms",
        ),
    ];
    for (config, field) in cases {
        let expect_field = |r: Result<(), CodecError>| match r {
            Err(CodecError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        };
        expect_field(config.validate());
        expect_field(OpusEncoder::new(&config).map(|_| ()));
        expect_field(OpusDecoder::new(&config).map(|_| ()));
    }
    assert_eq!(OpusConfig::default().validate(), Ok(()));
    let mut encoder = OpusEncoder::new(&OpusConfig::default()).expect("encoder");
    assert!(matches!(
        encoder.set_bitrate(5_000),
        Err(CodecError::InvalidConfig { .. })
    ));
    assert!(matches!(
        encoder.set_expected_loss(200),
        Err(CodecError::InvalidConfig { .. })
    ));
    assert_eq!(encoder.set_bitrate(24_000), Ok(()));
    assert_eq!(encoder.set_expected_loss(0), Ok(()));
}

#[test]
fn wrong_frame_sizes_are_typed_errors() {
    let config = OpusConfig::default();
    let mut encoder = OpusEncoder::new(&config).expect("encoder");
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    assert_eq!(
        encoder.encode(&[0; 480], &mut buf),
        Err(CodecError::FrameSize {
            expected: 960,
            got: 480
        })
    );
    assert!(encoder.encode(&[0; 960], &mut []).is_err());
    let packet = encode_all(&config, &voiced(0.1)).remove(0);
    let mut decoder = OpusDecoder::new(&config).expect("decoder");
    assert_eq!(
        decoder.decode(&packet, &mut [0; 100]),
        Err(CodecError::FrameSize {
            expected: 960,
            got: 100
        })
    );
}

#[test]
fn garbage_packets_give_typed_errors() {
    let config = OpusConfig::default();
    let mut decoder = OpusDecoder::new(&config).expect("decoder");
    let mut out = vec![0i16; MAX_PACKET_SAMPLES];
    assert_eq!(decoder.decode(&[], &mut out), Err(CodecError::EmptyPacket));
    assert_eq!(
        decoder.decode_fec(&[], &mut out),
        Err(CodecError::EmptyPacket)
    );
    // Code 3 (arbitrary frame count) with the count byte missing; a code 3 packet claiming 0
    // frames; a code 2 packet whose first frame length overruns the packet.
    for bad in [&[0x03u8][..], &[0x03, 0x00], &[0x02, 0xFB]] {
        assert_eq!(
            decoder.decode(bad, &mut out),
            Err(CodecError::InvalidPacket),
            "{bad:02x?}"
        );
        assert_eq!(
            decoder.decode_fec(bad, &mut out),
            Err(CodecError::InvalidPacket)
        );
        assert!(decoder.decode_dred(bad, FRAME, &mut out).is_err());
    }
    // Random bytes: libopus accepts some as valid packets; none may panic, and whatever
    // decodes fits the output buffer.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 1 + (state % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (state.rotate_left(i as u32 % 64) >> 3) as u8)
            .collect();
        if let Ok(n) = decoder.decode(&bytes, &mut out) {
            assert!(n <= MAX_PACKET_SAMPLES);
        }
        let _ = decoder.decode_dred(&bytes, FRAME, &mut out);
    }
}

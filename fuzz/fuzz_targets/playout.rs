//! Arbitrary push / pull / reset sequences against `Playout` with time-stretching on. Payloads
//! are real Opus packets (a fixed set encoded once per process from a voiced vowel, noise and
//! silence, with FEC and optionally DRED; decoder complexity 0 keeps runs fast) or garbage;
//! sequence steps are arbitrary, arrival times advance, pulls come about one frame period
//! apart, and the jitter-buffer delays are small so that stretching is reached. At most 400
//! pushes and pulls per input. Checked after every call:
//!
//! * nothing panics, and `pull` of one frame always returns `Ok`;
//! * `ahead()` after a pull stays below the most the queue can hold by then:
//!   `max(min_input, frame + max_period)` samples of the stretcher playout builds;
//! * the stats counters never decrease; a pull accelerates or expands at most once, and only
//!   when it decoded a packet (`Decoded`); `stretch_removed` / `stretch_inserted` grow by one
//!   period (shortest to longest lag) exactly when `accelerated` / `expanded` grow;
//! * sample accounting of the decoded-ahead queue: a `Buffered` pull takes exactly one frame
//!   from it (and happens exactly when a frame was in hand); any other pull adds its frame,
//!   plus what expanding inserted, minus what accelerating removed, plus possibly one frame
//!   decoded early (only when accelerating was asked for, on a `Decoded` pull), and hands one
//!   frame out.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use viska_media::audio::SAMPLE_RATE;
use viska_media::codec::{FrameDuration, OpusConfig, OpusDecoder, OpusEncoder};
use viska_media::jitter::{JitterConfig, PushMeta};
use viska_media::playout::{JitterStats, Playout, PlayoutConfig, PullOutcome};
use viska_media::stretch::{StretchConfig, TimeStretcher};

/// Most pushes plus pulls per input: decoding is the cost.
const MAX_STEPS: usize = 400;
/// Consecutive voiced frames in each packet set (a continuous vowel with a gliding pitch).
const VOICED_FRAMES: usize = 48;
/// Noise frames in each packet set.
const NOISE_FRAMES: usize = 4;

#[derive(Arbitrary, Debug, Clone)]
enum Payload {
    /// Voiced packet `n` of the set (consecutive ones continue each other).
    Voiced(u8),
    /// A noise packet.
    Noise(u8),
    /// A silent frame encoded.
    Silence,
    /// Garbage.
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A packet arriving `advance_us` after the previous operation.
    Push {
        advance_us: u16,
        seq_delta: i8,
        payload: Payload,
        marker: bool,
        /// The packet is flagged as a comfort-noise update.
        dtx: bool,
    },
    /// A pull one frame period after the last one, `jitter_us` early or late.
    Pull {
        jitter_us: i16,
    },
    /// `frames` periods of a talker: for each, the next voiced packet arrives `delay_us` after
    /// the period starts (the delay stepping by `delay_step_us` each frame, wrapping at 80 ms)
    /// and the period is pulled.
    Talk {
        frames: u8,
        delay_us: u16,
        delay_step_us: i16,
    },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ten_ms_frames: bool,
    dred: bool,
    min_delay_ms: u8,
    max_delay_extra_ms: u8,
    start_delay_ms: u8,
    capacity_extra: u8,
    spike_decay_ms: u16,
    burst_wait_ms: u8,
    ops: Vec<Op>,
}

/// Encoded packets of one stream configuration.
struct PacketSet {
    voiced: Vec<Vec<u8>>,
    noise: Vec<Vec<u8>>,
    silence: Vec<u8>,
}

fn opus_config(frame: FrameDuration, dred: bool) -> OpusConfig {
    let base = OpusConfig {
        frame,
        // Encoding happens once per process: the encoder may be thorough.
        complexity: 9,
        decoder_complexity: 0,
        ..OpusConfig::default()
    };
    if dred {
        // DRED is paid for out of the bitrate: with in-band FEC on too it gets too little.
        OpusConfig {
            dred_duration_ms: 200,
            fec: false,
            expected_loss_pct: 20,
            ..base
        }
    } else {
        base
    }
}

fn packet_set(frame: FrameDuration, dred: bool) -> &'static PacketSet {
    static SETS: [OnceLock<PacketSet>; 4] = [const { OnceLock::new() }; 4];
    let index = usize::from(frame == FrameDuration::Ms10) * 2 + usize::from(dred);
    SETS[index].get_or_init(|| encode_set(&opus_config(frame, dred)))
}

fn encode_set(config: &OpusConfig) -> PacketSet {
    let samples = config.frame_samples();
    let mut encoder = OpusEncoder::new(config).expect("valid encoder config");
    let mut out = vec![0u8; 1_500];
    let mut encode = |pcm: &[i16]| -> Vec<u8> {
        let len = encoder.encode(pcm, &mut out).expect("encodes a frame");
        out[..len].to_vec()
    };
    // A vowel whose pitch glides from 110 to 220 Hz, five harmonics.
    let mut phase = 0.0f64;
    let total = VOICED_FRAMES * samples;
    let vowel: Vec<i16> = (0..total)
        .map(|n| {
            let f0 = 110.0 + 110.0 * n as f64 / total as f64;
            phase += std::f64::consts::TAU * f0 / f64::from(SAMPLE_RATE);
            let value: f64 = (1..=5)
                .map(|k| 5_000.0 / f64::from(k) * (f64::from(k) * phase + 0.7 * f64::from(k)).sin())
                .sum();
            value.round() as i16
        })
        .collect();
    let voiced = vowel.chunks_exact(samples).map(&mut encode).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise = (0..NOISE_FRAMES)
        .map(|_| {
            let pcm: Vec<i16> = (0..samples)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 48) as i16 / 2
                })
                .collect();
            encode(&pcm)
        })
        .collect();
    let silence = encode(&vec![0; samples]);
    PacketSet {
        voiced,
        noise,
        silence,
    }
}

/// Samples of a duration the playout made from a sample count (its conversion floors to
/// whole nanoseconds, so rounding up recovers the count exactly).
fn samples_of(duration: Duration) -> u64 {
    let nanos = duration.as_nanos() * u128::from(SAMPLE_RATE);
    u64::try_from(nanos.div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

struct Checker {
    frame_samples: u64,
    /// Bound on the queue after a pull, in samples.
    queue_bound: u64,
    shortest: u64,
    longest: u64,
    stats: JitterStats,
}

impl Checker {
    fn counters(stats: &JitterStats) -> [u64; 17] {
        [
            stats.received,
            stats.lost,
            stats.late,
            stats.duplicate,
            stats.concealed,
            stats.fec_recovered,
            stats.dred_recovered,
            stats.dropped_for_delay,
            stats.inserted_for_delay,
            stats.accelerated,
            stats.expanded,
            samples_of(stats.stretch_removed),
            samples_of(stats.stretch_inserted),
            stats.dtx_frames,
            stats.decode_errors,
            stats.overflow_dropped,
            stats.resyncs,
        ]
    }

    fn check_monotonic(&mut self, playout: &Playout) -> JitterStats {
        let stats = playout.stats();
        let (old, new) = (Self::counters(&self.stats), Self::counters(&stats));
        for (i, (old, new)) in old.iter().zip(&new).enumerate() {
            assert!(new >= old, "counter {i} went from {old} to {new}");
        }
        std::mem::replace(&mut self.stats, stats)
    }

    fn pull(&mut self, playout: &mut Playout, now: Instant) {
        let ahead_before = samples_of(playout.ahead());
        let mut out = vec![0i16; playout.frame_samples()];
        let outcome = playout.pull(now, &mut out).expect("one frame pulls");
        let before = self.check_monotonic(playout);
        let after = &self.stats;
        let ahead_after = samples_of(playout.ahead());
        assert!(
            ahead_after < self.queue_bound,
            "{ahead_after} samples ahead, bound {}",
            self.queue_bound
        );
        let accelerated = after.accelerated - before.accelerated;
        let expanded = after.expanded - before.expanded;
        let removed = samples_of(after.stretch_removed) - samples_of(before.stretch_removed);
        let inserted = samples_of(after.stretch_inserted) - samples_of(before.stretch_inserted);
        assert!(accelerated + expanded <= 1, "{accelerated} + {expanded}");
        let period = self.shortest..=self.longest;
        if accelerated == 1 {
            assert!(period.contains(&removed), "removed {removed}");
        } else {
            assert_eq!(removed, 0);
        }
        if expanded == 1 {
            assert!(period.contains(&inserted), "inserted {inserted}");
        } else {
            assert_eq!(inserted, 0);
        }
        let frame = self.frame_samples;
        if outcome == PullOutcome::Buffered {
            assert!(ahead_before >= frame);
            assert_eq!(accelerated + expanded, 0);
            assert_eq!(ahead_after + frame, ahead_before);
            return;
        }
        assert!(
            ahead_before < frame,
            "{outcome:?} with {ahead_before} ahead"
        );
        if outcome != PullOutcome::Decoded {
            assert_eq!(accelerated + expanded, 0, "{outcome:?}");
        }
        // In: the frame pulled, perhaps one decoded early, what expanding inserted. Out: one
        // frame handed out, what accelerating removed.
        let without_early = i128::from(ahead_before) + i128::from(inserted) - i128::from(removed);
        let ahead_after = i128::from(ahead_after);
        if ahead_after != without_early {
            assert_eq!(outcome, PullOutcome::Decoded);
            assert_eq!(expanded, 0);
            assert_eq!(ahead_after, without_early + i128::from(frame));
        }
    }
}

fuzz_target!(|input: Input| {
    let frame = if input.ten_ms_frames {
        FrameDuration::Ms10
    } else {
        FrameDuration::Ms20
    };
    let opus = opus_config(frame, input.dred);
    let frame_period = Duration::from_millis(u64::from(frame.millis()));
    let min_delay = Duration::from_millis(u64::from(input.min_delay_ms % 61));
    let max_delay = min_delay + Duration::from_millis(u64::from(input.max_delay_extra_ms) + 20);
    let jitter = JitterConfig {
        frame: frame_period,
        min_delay,
        max_delay,
        start_delay: Duration::from_millis(u64::from(input.start_delay_ms)).min(max_delay),
        capacity_frames: (max_delay.as_micros() as usize)
            .div_ceil(frame_period.as_micros() as usize)
            + 2
            + usize::from(input.capacity_extra % 32),
        spike_decay: Duration::from_millis(u64::from(input.spike_decay_ms % 4_000) + 1),
        burst_wait: Duration::from_millis(u64::from(input.burst_wait_ms)),
        ..JitterConfig::default()
    };
    let config = PlayoutConfig {
        jitter,
        opus,
        time_stretch: true,
        ..PlayoutConfig::default()
    };
    let Ok(decoder) = OpusDecoder::new(&opus) else {
        return;
    };
    let Ok(mut playout) = Playout::new(config.clone(), decoder) else {
        return;
    };
    // The stretcher the playout builds (only the sample rate sets its lags).
    let stretcher = TimeStretcher::new(StretchConfig {
        sample_rate: SAMPLE_RATE,
        quiet_rms: config.quiet_rms,
        ..StretchConfig::default()
    });
    let frame_samples = playout.frame_samples() as u64;
    let longest = stretcher.max_period_samples() as u64;
    let defaults = StretchConfig::default();
    let shortest =
        (defaults.min_period.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64;
    let mut checker = Checker {
        frame_samples,
        queue_bound: (stretcher.min_input() as u64).max(frame_samples + longest),
        shortest: shortest.max(8),
        longest,
        stats: playout.stats(),
    };
    let packets = packet_set(frame, input.dred);

    let epoch = Instant::now() + Duration::from_secs(1_000);
    let mut now = epoch;
    let mut next_pull = epoch + frame_period;
    let mut seq: u64 = 5_000;
    let mut voiced_index = 0usize;
    let mut steps = 0usize;
    for op in input.ops {
        if steps >= MAX_STEPS {
            break;
        }
        match op {
            Op::Push {
                advance_us,
                seq_delta,
                payload,
                marker,
                dtx,
            } => {
                steps += 1;
                now += Duration::from_micros(u64::from(advance_us));
                seq = seq.wrapping_add_signed(i64::from(seq_delta));
                let bytes: &[u8] = match &payload {
                    Payload::Voiced(n) => {
                        voiced_index = usize::from(*n) % packets.voiced.len();
                        &packets.voiced[voiced_index]
                    }
                    Payload::Noise(n) => &packets.noise[usize::from(*n) % packets.noise.len()],
                    Payload::Silence => &packets.silence,
                    Payload::Bytes(bytes) => bytes,
                };
                let _ = playout.push(now, seq, bytes, PushMeta { marker, dtx });
                checker.check_monotonic(&playout);
            }
            Op::Pull { jitter_us } => {
                steps += 1;
                let jitter = Duration::from_micros(u64::from(jitter_us.unsigned_abs()) % 10_000);
                let at = if jitter_us < 0 {
                    next_pull.checked_sub(jitter).unwrap_or(next_pull)
                } else {
                    next_pull + jitter
                };
                now = now.max(at);
                next_pull = now + frame_period;
                let _ = playout.next_ready();
                checker.pull(&mut playout, now);
            }
            Op::Talk {
                frames,
                delay_us,
                delay_step_us,
            } => {
                let mut delay = i64::from(delay_us);
                // Packets sent but not arrived yet: (arrival, seq, voiced packet).
                let mut in_flight: Vec<(Instant, u64, usize)> = Vec::new();
                for _ in 0..frames {
                    if steps + 2 > MAX_STEPS {
                        break;
                    }
                    steps += 2;
                    let period_start = now.max(next_pull);
                    // Sent one period before it is due at the earliest.
                    let sent = period_start
                        .checked_sub(frame_period)
                        .unwrap_or(period_start);
                    seq = seq.wrapping_add(1);
                    voiced_index = (voiced_index + 1) % packets.voiced.len();
                    let arrival = sent.max(now) + Duration::from_micros(delay.unsigned_abs());
                    in_flight.push((arrival, seq, voiced_index));
                    in_flight.sort_by_key(|&(at, _, _)| at);
                    let arrived = in_flight.partition_point(|&(at, _, _)| at <= period_start);
                    for (at, packet_seq, index) in in_flight.drain(..arrived) {
                        now = now.max(at);
                        let _ = playout.push(now, packet_seq, &packets.voiced[index], PushMeta::default());
                        checker.check_monotonic(&playout);
                    }
                    now = period_start;
                    checker.pull(&mut playout, now);
                    next_pull = period_start + frame_period;
                    delay = (delay + i64::from(delay_step_us)).rem_euclid(80_000);
                }
                for (at, packet_seq, index) in in_flight {
                    now = now.max(at);
                    let _ = playout.push(now, packet_seq, &packets.voiced[index], PushMeta::default());
                    checker.check_monotonic(&playout);
                }
            }
            Op::Reset => {
                steps += 1;
                playout.reset();
                checker.check_monotonic(&playout);
            }
        }
    }
});

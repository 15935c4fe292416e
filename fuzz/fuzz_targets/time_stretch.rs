//! Arbitrary configurations, PCM (raw, or synthesised from a few harmonic parameters so that
//! the periodic, `Applied` paths are reached, not only `Declined`) and call sequences against
//! the pitch-synchronous time stretcher. Checked:
//!
//! * nothing panics, whatever the configuration (`new` clamps it);
//! * `min_input` is the first sample, two longest periods and the last sample;
//! * on `Applied { samples }`, `samples` lies between the shortest lag of the configuration
//!   (clamped as `new` clamps it) and `max_period_samples()`, and the length changed by exactly
//!   `samples` (minus for `accelerate`, plus for `expand` / `expand_after`);
//! * on `Declined`, the buffer is unchanged;
//! * `accelerate` / `expand` keep the first sample and the whole tail after the two periods
//!   they work on (so the last sample too); `accelerate_keeping(pcm, keep)` leaves at least
//!   `keep` samples;
//! * `expand_after(played, pcm)` leaves `played` unchanged and `pcm[samples..]` equal to the
//!   input.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use viska_media::stretch::{Stretch, StretchConfig, TimeStretcher};

/// Longest PCM worked on: bounds the cost of one input (the pitch search is quadratic in the
/// longest period, and a period needs half of `min_input` samples).
const MAX_SAMPLES: usize = 8_192;
/// Most calls per input.
const MAX_CALLS: usize = 12;

#[derive(Arbitrary, Debug)]
struct Harmonic {
    amplitude: i16,
    phase: u8,
}

#[derive(Arbitrary, Debug)]
enum Signal {
    /// PCM as given.
    Raw(Vec<i16>),
    /// `len` samples of harmonics of a period of `period_centisamples / 100` samples, whose
    /// period drifts by `drift` per mille over the signal, with optional noise and a DC offset.
    Voiced {
        len: u16,
        period_centisamples: u32,
        drift: i8,
        harmonics: Vec<Harmonic>,
        noise: u16,
        seed: u32,
        offset: i16,
    },
    /// `len` samples of one value.
    Constant { len: u16, value: i16 },
}

#[derive(Arbitrary, Debug)]
enum Call {
    Accelerate,
    AccelerateKeeping {
        keep: u16,
    },
    Expand,
    /// `expand_after` with the first `split` samples of the buffer as the audio played.
    ExpandAfter {
        split: u16,
    },
    /// Plays (drops) the first `count` samples, as playout would.
    Consume {
        count: u16,
    },
    /// Appends more of a signal.
    Append(Signal),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sample_rate: Option<u32>,
    min_period_ns: Option<u64>,
    max_period_ns: Option<u64>,
    min_correlation: Option<f32>,
    quiet_rms: Option<u16>,
    signal: Signal,
    calls: Vec<Call>,
}

fuzz_target!(|input: Input| {
    let defaults = StretchConfig::default();
    let config = StretchConfig {
        sample_rate: input.sample_rate.unwrap_or(defaults.sample_rate),
        min_period: input
            .min_period_ns
            .map_or(defaults.min_period, Duration::from_nanos),
        max_period: input
            .max_period_ns
            .map_or(defaults.max_period, Duration::from_nanos),
        min_correlation: input.min_correlation.unwrap_or(defaults.min_correlation),
        quiet_rms: input.quiet_rms.unwrap_or(defaults.quiet_rms),
    };
    let mut stretcher = TimeStretcher::new(config);
    let longest = stretcher.max_period_samples();
    let shortest = shortest_lag(&config);
    assert!(shortest < longest);
    assert_eq!(stretcher.min_input(), 2 * longest + 2);

    let mut pcm = Vec::new();
    append(&mut pcm, &input.signal);
    for call in input.calls.into_iter().take(MAX_CALLS) {
        let before = pcm.clone();
        match call {
            Call::Accelerate | Call::AccelerateKeeping { .. } => {
                let keep = match call {
                    Call::AccelerateKeeping { keep } => usize::from(keep),
                    _ => 0,
                };
                let result = stretcher.accelerate_keeping(&mut pcm, keep);
                match result {
                    Stretch::Applied { samples } => {
                        assert!((shortest..=longest).contains(&samples), "{samples}");
                        assert_eq!(pcm.len() + samples, before.len());
                        assert!(pcm.len() >= keep);
                        // The first sample and everything after the two periods stay.
                        assert_eq!(pcm.first(), before.first());
                        assert_eq!(pcm.get(1 + samples..), before.get(1 + 2 * samples..));
                    }
                    Stretch::Declined => assert_eq!(pcm, before),
                }
            }
            Call::Expand => match stretcher.expand(&mut pcm) {
                Stretch::Applied { samples } => {
                    assert!((shortest..=longest).contains(&samples), "{samples}");
                    assert_eq!(pcm.len(), before.len() + samples);
                    // The first period is kept, the inserted one follows, then the rest.
                    assert_eq!(pcm.get(..1 + samples), before.get(..1 + samples));
                    assert_eq!(pcm.get(1 + 2 * samples..), before.get(1 + samples..));
                }
                Stretch::Declined => assert_eq!(pcm, before),
            },
            Call::ExpandAfter { split } => {
                let split = usize::from(split).min(pcm.len());
                let played = pcm.get(..split).unwrap_or_default().to_vec();
                let mut unplayed = pcm.get(split..).unwrap_or_default().to_vec();
                let input_unplayed = unplayed.clone();
                let result = stretcher.expand_after(&played, &mut unplayed);
                assert_eq!(played, before.get(..split).unwrap_or_default());
                match result {
                    Stretch::Applied { samples } => {
                        assert!((shortest..=longest).contains(&samples), "{samples}");
                        assert_eq!(unplayed.len(), input_unplayed.len() + samples);
                        assert_eq!(unplayed.get(samples..), Some(&input_unplayed[..]));
                    }
                    Stretch::Declined => assert_eq!(unplayed, input_unplayed),
                }
                pcm = played;
                pcm.extend_from_slice(&unplayed);
            }
            Call::Consume { count } => {
                pcm.drain(..usize::from(count).min(pcm.len()));
            }
            Call::Append(signal) => append(&mut pcm, &signal),
        }
        // Keep each input cheap: expansions could otherwise grow the buffer without bound.
        pcm.truncate(MAX_SAMPLES);
    }
});

/// The shortest lag `TimeStretcher::new` derives from `config`: `min_period` in samples,
/// clamped to 8 (twice the decimation of the coarse search) ..= 65 536.
fn shortest_lag(config: &StretchConfig) -> usize {
    let samples = config
        .min_period
        .as_nanos()
        .saturating_mul(u128::from(config.sample_rate))
        / 1_000_000_000;
    usize::try_from(samples)
        .unwrap_or(usize::MAX)
        .clamp(8, 1 << 16)
}

fn append(pcm: &mut Vec<i16>, signal: &Signal) {
    let room = MAX_SAMPLES.saturating_sub(pcm.len());
    match signal {
        Signal::Raw(samples) => pcm.extend(samples.iter().take(room)),
        Signal::Constant { len, value } => {
            pcm.extend(std::iter::repeat_n(*value, usize::from(*len).min(room)));
        }
        Signal::Voiced {
            len,
            period_centisamples,
            drift,
            harmonics,
            noise,
            seed,
            offset,
        } => {
            // Periods of 4 to about 4 100 samples.
            let period = 4.0 + f64::from(*period_centisamples % 409_600) / 100.0;
            let len = usize::from(*len).min(room);
            let drift = f64::from(*drift) / 1_000.0 / len.max(1) as f64;
            let mut state = u64::from(*seed) | 1;
            let mut phase = 0.0f64;
            for n in 0..len {
                let mut value = f64::from(*offset);
                for (k, harmonic) in harmonics.iter().take(8).enumerate() {
                    let k = (k + 1) as f64;
                    let start = f64::from(harmonic.phase) / 256.0 * std::f64::consts::TAU;
                    value += f64::from(harmonic.amplitude) * (k * phase + start).sin();
                }
                if *noise > 0 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let uniform = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                    value += uniform * f64::from(*noise);
                }
                pcm.push(
                    value
                        .round()
                        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16,
                );
                let current = period * (1.0 + drift * n as f64);
                phase += std::f64::consts::TAU / current.max(2.0);
            }
        }
    }
}

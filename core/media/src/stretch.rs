//! Pitch-synchronous time-scale modification of decoded speech (WSOLA-style).
//!
//! The playout layer sometimes needs to shrink its delay (the jitter buffer holds more than it
//! needs) or grow it (packets are about to run late). Dropping or inserting a whole 20 ms frame is
//! audible; removing or repeating exactly one *pitch period* of voiced speech is not, because
//! voiced speech is locally periodic: two consecutive periods look almost the same, so the ear
//! hears the same vowel, a few milliseconds shorter or longer, at the same pitch.
//!
//! **Pitch search.** For a candidate lag `T` we compare the segment `x[s..s+W]` with the segment
//! one lag later, `x[s+T..s+T+W]`, by normalized cross-correlation
//! `c(T) = Σ a·b / sqrt(Σ a² · Σ b²)`. It is 1 for a perfectly periodic signal with period `T`
//! (whatever its level) and close to 0 for noise. The window `W` is the longest period searched,
//! so every candidate sees the same amount of signal. Lags run from `min_period` (400 Hz) to
//! `max_period` (about 67 Hz). To keep the cost low the coarse search runs on a 4:1 decimated
//! signal (averages of four samples: a crude low-pass, enough since the pitch fundamental and its
//! first harmonics lie well below 6 kHz); the best coarse lag is then refined at the full rate in
//! a few samples around it. A period that is a multiple of the true one correlates just as well,
//! so the submultiples of the winner are tried too and the shortest lag that correlates about as
//! well is kept: we remove one period, not two.
//!
//! **Threshold.** Only a lag whose correlation reaches `min_correlation` (0.9 by default) is used:
//! below it the signal is not periodic enough (unvoiced consonants, noise, transitions) and a
//! splice would be heard as a click or a smear, so the attempt is `Declined` and nothing changes.
//! The exception is quiet input (RMS below `quiet_rms`): silence and low background have nothing
//! to warp, so they are stretched with the best lag found whatever its correlation.
//!
//! **Splice.** The splice starts at `s = 1` (the first sample, already adjacent to what was played
//! before, stays untouched). To *accelerate*, the two periods `A = x[s..s+T]` and
//! `B = x[s+T..s+2T]` are replaced by one period that fades from `A` into `B` with a raised-cosine
//! window over the whole period: it starts like `A` (continuing `x[s-1]`) and ends like `B`
//! (continuing into `x[s+2T]`), so both splice points are pitch-aligned and the waveform stays
//! continuous. To *expand*, a period fading from `B` into `A` is inserted between `A` and `B`: it
//! continues `A` as `B` would, and ends like `A`'s end, which `B`'s start naturally follows. The
//! tail after the splice, and so the last sample, is untouched. The result is clamped to `i16`.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Decimation factor of the coarse pitch search (48 kHz → 12 kHz).
const DECIMATION: usize = 4;
/// Where the splice starts: sample 0 is kept so the output joins what was already played.
const SPLICE_START: usize = 1;
/// Full-rate lags examined on each side of a coarse estimate.
const REFINE_RADIUS: usize = DECIMATION;
/// A submultiple of the best lag is preferred when its correlation is at most this much lower.
const SUBMULTIPLE_TOLERANCE: f64 = 0.05;
/// Shortest lag accepted whatever the configuration (keeps the decimated search meaningful).
const MIN_LAG_FLOOR: usize = 2 * DECIMATION;
/// Longest lag accepted whatever the configuration (bounds the scratch allocation).
const MAX_LAG_CEILING: usize = 1 << 16;

/// What a stretch attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stretch {
    /// `samples` were removed (accelerate) or inserted (expand): one pitch period.
    Applied {
        /// Length of the removed or inserted period, in samples.
        samples: usize,
    },
    /// The audio was not periodic enough (or too short): nothing changed.
    Declined,
}

/// Settings of a [`TimeStretcher`]; `Default` gives the values for 48 kHz speech.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StretchConfig {
    /// Sample rate of the PCM, in Hz (48 000).
    pub sample_rate: u32,
    /// Shortest pitch period searched (2.5 ms, 400 Hz).
    pub min_period: Duration,
    /// Longest pitch period searched (15 ms, about 67 Hz).
    pub max_period: Duration,
    /// Normalized correlation a period must reach to be removed or inserted (0.9: voiced speech).
    pub min_correlation: f32,
    /// Below this RMS the signal may be stretched whatever its correlation (328, about -40 dBFS).
    pub quiet_rms: u16,
}

impl Default for StretchConfig {
    fn default() -> Self {
        Self {
            sample_rate: 48_000,
            min_period: Duration::from_micros(2_500),
            max_period: Duration::from_millis(15),
            min_correlation: 0.9,
            quiet_rms: 328,
        }
    }
}

/// Removes or inserts one pitch period of mono `i16` speech (see the module documentation).
///
/// Holds its configuration and scratch buffers allocated once in [`TimeStretcher::new`], so
/// [`accelerate`](TimeStretcher::accelerate) and [`expand`](TimeStretcher::expand) do not
/// allocate (beyond growing the caller's `Vec` when it lacks capacity).
#[derive(Debug)]
pub struct TimeStretcher {
    config: StretchConfig,
    /// Shortest lag searched, in samples.
    min_lag: usize,
    /// Longest lag searched, in samples; also the correlation window.
    max_lag: usize,
    /// The analysed span as `f32`.
    full: Vec<f32>,
    /// Decimated copy of the analysed span.
    decimated: Vec<f32>,
    /// The period inserted by `expand`.
    period: Vec<i16>,
    /// Played and unplayed audio joined for `expand_after`'s analysis.
    joined: Vec<i16>,
}

impl TimeStretcher {
    /// Creates a stretcher; nonsensical periods are clamped to a usable range.
    pub fn new(config: StretchConfig) -> Self {
        let rate = u128::from(config.sample_rate);
        let to_samples = |period: Duration| -> usize {
            let samples = period.as_nanos().saturating_mul(rate) / 1_000_000_000;
            usize::try_from(samples).unwrap_or(MAX_LAG_CEILING)
        };
        let min_lag = to_samples(config.min_period).clamp(MIN_LAG_FLOOR, MAX_LAG_CEILING);
        let max_lag = to_samples(config.max_period).clamp(
            min_lag.saturating_add(DECIMATION),
            MAX_LAG_CEILING.saturating_add(DECIMATION),
        );
        let analysed = 2 * max_lag + REFINE_RADIUS;
        Self {
            config,
            min_lag,
            max_lag,
            full: Vec::with_capacity(analysed),
            decimated: Vec::with_capacity(analysed / DECIMATION + 1),
            period: Vec::with_capacity(max_lag),
            joined: Vec::with_capacity(2 * max_lag + 2),
        }
    }

    /// Samples [`accelerate`](Self::accelerate) and [`expand`](Self::expand) need in `pcm` at
    /// least: the untouched first sample, two longest periods, and the untouched last sample.
    pub fn min_input(&self) -> usize {
        SPLICE_START + 2 * self.max_lag + 1
    }

    /// The longest period [`accelerate`](Self::accelerate) may remove, in samples.
    pub fn max_period_samples(&self) -> usize {
        self.max_lag
    }

    /// Removes one pitch period from `pcm` (all of it not yet played) if periodic enough.
    ///
    /// The result is `pcm.len() - samples` long, continuous (crossfaded), and its first and last
    /// samples equal the input's, so it splices with what was played before and what comes after.
    pub fn accelerate(&mut self, pcm: &mut Vec<i16>) -> Stretch {
        self.accelerate_keeping(pcm, 0)
    }

    /// [`accelerate`](Self::accelerate), declining when the cut would leave fewer than `keep`
    /// samples in `pcm` (the caller must hand out that much before more is decoded).
    pub fn accelerate_keeping(&mut self, pcm: &mut Vec<i16>, keep: usize) -> Stretch {
        let Some(lag) = self.find_period(pcm) else {
            return Stretch::Declined;
        };
        if pcm.len().saturating_sub(lag) < keep || !self.fade_periods(pcm, lag, false) {
            return Stretch::Declined;
        }
        let s = SPLICE_START;
        if let Some(target) = pcm.get_mut(s..s + lag) {
            target.copy_from_slice(&self.period);
        }
        pcm.drain(s + lag..s + 2 * lag);
        Stretch::Applied { samples: lag }
    }

    /// Inserts one pitch period into `pcm` if periodic enough.
    ///
    /// The result is `pcm.len() + samples` long, continuous (crossfaded), and its first and last
    /// samples equal the input's.
    pub fn expand(&mut self, pcm: &mut Vec<i16>) -> Stretch {
        let Some(lag) = self.find_period(pcm) else {
            return Stretch::Declined;
        };
        if !self.fade_periods(pcm, lag, true) {
            return Stretch::Declined;
        }
        let s = SPLICE_START;
        let old_len = pcm.len();
        let insert_at = s + lag;
        pcm.resize(old_len + lag, 0);
        pcm.copy_within(insert_at..old_len, insert_at + lag);
        if let Some(target) = pcm.get_mut(insert_at..insert_at + lag) {
            target.copy_from_slice(&self.period);
        }
        Stretch::Applied { samples: lag }
    }

    /// Inserts one pitch period at the very start of `pcm` (nothing of it played yet), right
    /// after `played` (the audio heard last, oldest first), if the two together are periodic
    /// enough.
    ///
    /// Unlike [`expand`](Self::expand) this needs only one period of unplayed audio: the period
    /// inserted fades from the first period of `pcm` into the last one of `played`, so it
    /// continues `played` as `pcm` would and ends as `played` ended, which `pcm`'s first sample
    /// follows. `played` is read, never changed; the pitch is measured on the last
    /// [`min_input`](Self::min_input) samples of `played` and `pcm` joined. The result is
    /// `pcm.len() + samples` long, its tail is `pcm` unchanged.
    pub fn expand_after(&mut self, played: &[i16], pcm: &mut Vec<i16>) -> Stretch {
        let need = self.min_input();
        if played.len().saturating_add(pcm.len()) < need {
            return Stretch::Declined;
        }
        // The analysed span: the end of `played`, then as much of `pcm` as the span still
        // needs (at most half of it, so the analysis straddles the playout point).
        let from_pcm = pcm
            .len()
            .min(need / 2)
            .max(need.saturating_sub(played.len()));
        let from_played = need - from_pcm;
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        joined.extend_from_slice(played.get(played.len() - from_played..).unwrap_or_default());
        joined.extend_from_slice(pcm.get(..from_pcm).unwrap_or_default());
        let lag = self.find_period(&joined);
        self.joined = joined;
        let Some(lag) = lag else {
            return Stretch::Declined;
        };
        let (Some(last), Some(next)) = (
            played.get(played.len().saturating_sub(lag)..),
            pcm.get(..lag),
        ) else {
            return Stretch::Declined;
        };
        if last.len() != lag || next.len() != lag {
            return Stretch::Declined;
        }
        self.period.clear();
        self.period.extend(crossfade(next, last));
        let old_len = pcm.len();
        pcm.resize(old_len + lag, 0);
        pcm.copy_within(0..old_len, lag);
        if let Some(target) = pcm.get_mut(..lag) {
            target.copy_from_slice(&self.period);
        }
        Stretch::Applied { samples: lag }
    }

    /// Writes into the scratch period the crossfade of the two periods of `lag` samples after
    /// the splice point: from the first into the second, or (`backwards`) from the second into
    /// the first. False when `pcm` is too short for them.
    fn fade_periods(&mut self, pcm: &[i16], lag: usize, backwards: bool) -> bool {
        let s = SPLICE_START;
        let (Some(first), Some(second)) = (pcm.get(s..s + lag), pcm.get(s + lag..s + 2 * lag))
        else {
            return false;
        };
        let (from, to) = if backwards {
            (second, first)
        } else {
            (first, second)
        };
        self.period.clear();
        self.period.extend(crossfade(from, to));
        true
    }

    /// The pitch period at the splice point, if the signal there is periodic (or quiet) enough.
    fn find_period(&mut self, pcm: &[i16]) -> Option<usize> {
        if pcm.len() < self.min_input() {
            return None;
        }
        let s = SPLICE_START;
        let window = self.max_lag;
        // Every full-rate comparison reads inside `span` (lag ≤ max_lag, window = max_lag).
        let span = pcm.get(s..s + 2 * self.max_lag)?;

        let sum_squares: f64 = span.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let rms = (sum_squares / span.len().max(1) as f64).sqrt();
        let quiet = rms < f64::from(self.config.quiet_rms);

        self.full.clear();
        self.full.extend(span.iter().map(|&x| f32::from(x)));

        // Coarse search on the decimated span.
        self.decimated.clear();
        self.decimated.extend(
            span.chunks_exact(DECIMATION)
                .map(|chunk| chunk.iter().map(|&x| f32::from(x)).sum::<f32>() / DECIMATION as f32),
        );
        let coarse_window = window / DECIMATION;
        let mut coarse_best = (self.min_lag / DECIMATION, f64::NEG_INFINITY);
        for coarse_lag in self.min_lag.div_ceil(DECIMATION)..=self.max_lag / DECIMATION {
            let (Some(a), Some(b)) = (
                self.decimated.get(..coarse_window),
                self.decimated.get(coarse_lag..coarse_lag + coarse_window),
            ) else {
                break;
            };
            let c = normalized_correlation(a, b);
            if c > coarse_best.1 {
                coarse_best = (coarse_lag, c);
            }
        }

        // Refine at full rate, then prefer a submultiple that correlates about as well.
        // Every candidate is a submultiple of the refined winner and is measured against it,
        // and the shortest that correlates about as well wins (divisors ascend).
        let (best_lag, best_correlation) = self.refine(coarse_best.0 * DECIMATION)?;
        let (mut lag, mut correlation) = (best_lag, best_correlation);
        for divisor in 2..=4 {
            let candidate = best_lag / divisor;
            if candidate + REFINE_RADIUS < self.min_lag {
                break;
            }
            // Cheap screen on the decimated signal before the full-rate refinement.
            let coarse_candidate = (candidate + DECIMATION / 2) / DECIMATION;
            let screened = match (
                self.decimated.get(..coarse_window),
                self.decimated
                    .get(coarse_candidate..coarse_candidate + coarse_window),
            ) {
                (Some(a), Some(b)) => normalized_correlation(a, b),
                _ => f64::NEG_INFINITY,
            };
            if screened < coarse_best.1 - 2.0 * SUBMULTIPLE_TOLERANCE {
                continue;
            }
            if let Some((sub_lag, sub_correlation)) = self.refine(candidate) {
                if sub_correlation >= best_correlation - SUBMULTIPLE_TOLERANCE
                    && sub_correlation >= f64::from(self.config.min_correlation)
                {
                    (lag, correlation) = (sub_lag, sub_correlation);
                }
            }
        }

        (quiet || correlation >= f64::from(self.config.min_correlation)).then_some(lag)
    }

    /// Best full-rate lag within `REFINE_RADIUS` of `center`, with its correlation.
    fn refine(&self, center: usize) -> Option<(usize, f64)> {
        let low = center.saturating_sub(REFINE_RADIUS).max(self.min_lag);
        let high = center.saturating_add(REFINE_RADIUS).min(self.max_lag);
        let window = self.max_lag;
        let reference = self.full.get(..window)?;
        let mut best: Option<(usize, f64)> = None;
        for lag in low..=high {
            let Some(shifted) = self.full.get(lag..lag + window) else {
                break;
            };
            let c = normalized_correlation(reference, shifted);
            if best.is_none_or(|(_, best_c)| c > best_c) {
                best = Some((lag, c));
            }
        }
        best
    }
}

/// `Σ a·b / sqrt(Σ a² · Σ b²)` over the common length; 0 when either side is silent.
///
/// Eight independent f32 partial sums per quantity let the compiler vectorize the loop; the
/// partial sums are combined in f64. Each f32 partial sum adds at most a few hundred products, so
/// its rounding error stays around 1e-5 relative, far below what the 0.9 threshold needs.
fn normalized_correlation(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let len = a.len().min(b.len());
    let (a, b) = (
        a.get(..len).unwrap_or_default(),
        b.get(..len).unwrap_or_default(),
    );
    let (mut cross, mut energy_a, mut energy_b) =
        ([0.0f32; LANES], [0.0f32; LANES], [0.0f32; LANES]);
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        let lanes = cross
            .iter_mut()
            .zip(energy_a.iter_mut())
            .zip(energy_b.iter_mut());
        for (((c, ea), eb), (&xv, &yv)) in lanes.zip(x.iter().zip(y)) {
            *c += xv * yv;
            *ea += xv * xv;
            *eb += yv * yv;
        }
    }
    let widen = |sums: [f32; LANES]| sums.iter().map(|&v| f64::from(v)).sum::<f64>();
    let (mut cross, mut energy_a, mut energy_b) = (widen(cross), widen(energy_a), widen(energy_b));
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        let (x, y) = (f64::from(x), f64::from(y));
        cross += x * y;
        energy_a += x * x;
        energy_b += y * y;
    }
    let norm = (energy_a * energy_b).sqrt();
    if norm > 0.0 { cross / norm } else { 0.0 }
}

/// One period fading from `from` into `to` with a raised-cosine window over its whole length.
///
/// The first output sample is (almost) `from[0]`, the last (almost) `to[last]`.
fn crossfade<'a>(from: &'a [i16], to: &'a [i16]) -> impl Iterator<Item = i16> + 'a {
    let steps = from.len().min(to.len()) as f64 + 1.0;
    from.iter().zip(to).enumerate().map(move |(i, (&x, &y))| {
        let phase = (i as f64 + 1.0) / steps;
        let weight = 0.5 - 0.5 * (std::f64::consts::PI * phase).cos();
        let mixed = f64::from(x) * (1.0 - weight) + f64::from(y) * weight;
        // `as` saturates float-to-int conversions; the clamp documents the intent.
        mixed
            .round()
            .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 48_000.0;

    /// Harmonics of `f0` with a slowly varying amplitude, `len` samples.
    fn voiced(f0: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| {
                let t = n as f64 / RATE;
                let envelope = 1.0 + 0.2 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
                let mut value = 0.0;
                for k in 1..=5 {
                    let phase = 0.7 * k as f64;
                    value += 6_000.0 / k as f64
                        * (2.0 * std::f64::consts::PI * f0 * k as f64 * t + phase).sin();
                }
                (value * envelope).round() as i16
            })
            .collect()
    }

    /// White noise from a seeded xorshift generator, uniform in ±`amplitude`.
    fn noise(seed: u64, len: usize, amplitude: i32) -> Vec<i16> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                ((unit * 2.0 - 1.0) * f64::from(amplitude)) as i16
            })
            .collect()
    }

    fn max_step(pcm: &[i16]) -> i32 {
        pcm.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap_or(0)
    }

    fn correlation_at(pcm: &[i16], start: usize, lag: usize, window: usize) -> f64 {
        let as_f32 = |range: std::ops::Range<usize>| -> Vec<f32> {
            pcm[range].iter().map(|&x| f32::from(x)).collect()
        };
        normalized_correlation(
            &as_f32(start..start + window),
            &as_f32(start + lag..start + lag + window),
        )
    }

    /// `samples` is within one sample of a multiple of the period that fits in 15 ms.
    fn is_period_multiple(samples: usize, f0: f64) -> bool {
        let period = RATE / f0;
        (1..=10)
            .map(|k| k as f64 * period)
            .filter(|&p| p <= 720.0 + 1.0)
            .any(|p| (samples as f64 - p).abs() <= 1.0)
    }

    fn forty_ms() -> usize {
        1_920
    }

    #[test]
    fn default_config_gives_the_documented_range() {
        let stretcher = TimeStretcher::new(StretchConfig::default());
        assert_eq!((stretcher.min_lag, stretcher.max_lag), (120, 720));
        assert_eq!(stretcher.min_input(), 1_442);
    }

    #[test]
    fn accelerate_removes_one_period_of_voiced_speech() {
        for f0 in [150.0, 220.0] {
            let input = voiced(f0, forty_ms());
            let mut pcm = input.clone();
            let mut stretcher = TimeStretcher::new(StretchConfig::default());
            let Stretch::Applied { samples } = stretcher.accelerate(&mut pcm) else {
                panic!("voiced {f0} Hz declined");
            };
            assert!(
                is_period_multiple(samples, f0),
                "{f0} Hz: removed {samples}"
            );
            assert!(
                (samples as f64 - RATE / f0).abs() <= 1.0,
                "{f0} Hz: not the shortest period: {samples}"
            );
            assert_eq!(pcm.len(), input.len() - samples);
            assert_eq!(pcm.first(), input.first());
            assert_eq!(pcm.last(), input.last());
            assert!(
                max_step(&pcm) <= max_step(&input) * 3 / 2 + 64,
                "{f0} Hz: step {} vs {}",
                max_step(&pcm),
                max_step(&input)
            );
            // Pitch preserved: the output around and after the splice is still periodic at f0.
            let period = (RATE / f0).round() as usize;
            assert!(
                correlation_at(&pcm, 0, period, 720) > 0.95,
                "{f0} Hz: pitch lost"
            );
        }
    }

    #[test]
    fn expand_inserts_one_period_of_voiced_speech() {
        for f0 in [150.0, 220.0] {
            let input = voiced(f0, forty_ms());
            let mut pcm = input.clone();
            let mut stretcher = TimeStretcher::new(StretchConfig::default());
            let Stretch::Applied { samples } = stretcher.expand(&mut pcm) else {
                panic!("voiced {f0} Hz declined");
            };
            assert!(
                (samples as f64 - RATE / f0).abs() <= 1.0,
                "{f0} Hz: inserted {samples}"
            );
            assert_eq!(pcm.len(), input.len() + samples);
            assert_eq!(pcm.first(), input.first());
            assert_eq!(pcm.last(), input.last());
            // The tail after the inserted period is the input's, shifted by one period.
            assert_eq!(pcm[1 + 2 * samples..], input[1 + samples..]);
            assert!(
                max_step(&pcm) <= max_step(&input) * 3 / 2 + 64,
                "{f0} Hz: step {} vs {}",
                max_step(&pcm),
                max_step(&input)
            );
            let period = (RATE / f0).round() as usize;
            assert!(
                correlation_at(&pcm, 0, period, 3 * period) > 0.95,
                "{f0} Hz: pitch lost"
            );
        }
    }

    #[test]
    fn loud_white_noise_is_declined_and_left_unchanged() {
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        for seed in 1..=8 {
            let input = noise(seed, forty_ms(), 8_000);
            let mut pcm = input.clone();
            assert_eq!(
                stretcher.accelerate(&mut pcm),
                Stretch::Declined,
                "seed {seed}"
            );
            assert_eq!(stretcher.expand(&mut pcm), Stretch::Declined, "seed {seed}");
            assert_eq!(pcm, input);
        }
    }

    #[test]
    fn silence_and_quiet_noise_are_stretched() {
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        for input in [vec![0i16; forty_ms()], noise(7, forty_ms(), 200)] {
            let mut pcm = input.clone();
            let Stretch::Applied { samples } = stretcher.accelerate(&mut pcm) else {
                panic!("quiet input declined");
            };
            assert!((120..=720).contains(&samples));
            assert_eq!(pcm.len(), input.len() - samples);
            assert_eq!((pcm.first(), pcm.last()), (input.first(), input.last()));

            let mut pcm = input.clone();
            let Stretch::Applied { samples } = stretcher.expand(&mut pcm) else {
                panic!("quiet input declined");
            };
            assert_eq!(pcm.len(), input.len() + samples);
            assert_eq!((pcm.first(), pcm.last()), (input.first(), input.last()));
        }
    }

    #[test]
    fn short_empty_and_extreme_input_do_not_panic() {
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        for len in [0, 1, 2, 100, stretcher.min_input() - 1] {
            let input = voiced(150.0, len);
            let mut pcm = input.clone();
            assert_eq!(
                stretcher.accelerate(&mut pcm),
                Stretch::Declined,
                "len {len}"
            );
            assert_eq!(stretcher.expand(&mut pcm), Stretch::Declined, "len {len}");
            assert_eq!(pcm, input);
        }
        // Full-scale square wave at 150 Hz: periodic, extreme values, must be clamped not wrapped.
        let square: Vec<i16> = (0..forty_ms())
            .map(|n| {
                if (n / 160) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let mut pcm = square.clone();
        assert!(matches!(
            stretcher.accelerate(&mut pcm),
            Stretch::Applied { .. }
        ));
        let mut pcm = square.clone();
        assert!(matches!(
            stretcher.expand(&mut pcm),
            Stretch::Applied { .. }
        ));
        for constant in [i16::MAX, i16::MIN] {
            let mut pcm = vec![constant; forty_ms()];
            let _ = stretcher.accelerate(&mut pcm);
            let _ = stretcher.expand(&mut pcm);
            assert!(pcm.iter().all(|&x| x == constant));
        }
        // Degenerate configurations are clamped rather than panicking.
        let mut odd = TimeStretcher::new(StretchConfig {
            sample_rate: 0,
            min_period: Duration::ZERO,
            max_period: Duration::MAX,
            ..StretchConfig::default()
        });
        let mut pcm = voiced(150.0, forty_ms());
        let _ = odd.accelerate(&mut pcm);
        let _ = odd.expand(&mut pcm);
    }

    #[test]
    fn repeated_accelerate_removes_the_expected_total() {
        let input = voiced(150.0, 48_000);
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        let mut pcm = input.clone();
        let mut total = 0;
        for _ in 0..20 {
            let Stretch::Applied { samples } = stretcher.accelerate(&mut pcm) else {
                panic!("voiced speech declined");
            };
            assert!((319..=321).contains(&samples), "removed {samples}");
            total += samples;
        }
        assert_eq!(pcm.len(), input.len() - total);
        assert!((20 * 319..=20 * 321).contains(&total));
        assert_eq!((pcm.first(), pcm.last()), (input.first(), input.last()));
        assert!(max_step(&pcm) <= max_step(&input) * 3 / 2 + 64);
        assert!(correlation_at(&pcm, 0, 320, 4_000) > 0.95);
    }

    #[test]
    fn expand_after_inserts_one_period_at_the_playout_point() {
        let signal = voiced(150.0, 4_800);
        let (played, rest) = signal.split_at(1_000);
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        // Only one frame of unplayed audio: less than `expand` needs on its own.
        let mut pcm = rest[..960].to_vec();
        assert!(pcm.len() < stretcher.min_input());
        assert_eq!(stretcher.expand(&mut pcm.clone()), Stretch::Declined);
        let Stretch::Applied { samples } = stretcher.expand_after(played, &mut pcm) else {
            panic!("voiced speech declined");
        };
        assert!(
            samples.abs_diff(320) <= 1,
            "inserted {samples}, not one period"
        );
        assert_eq!(pcm.len(), 960 + samples);
        // What follows the inserted period is the unplayed audio, unchanged.
        assert_eq!(&pcm[samples..], &rest[..960]);
        // Heard in sequence, played + stretched is as smooth and as periodic as the input.
        let heard: Vec<i16> = played.iter().chain(pcm.iter()).copied().collect();
        assert!(max_step(&heard) <= max_step(&signal) * 3 / 2 + 64);
        assert!(correlation_at(&heard, 200, 320, 1_200) > 0.95);
    }

    #[test]
    fn expand_after_declines_noise_and_too_little_audio() {
        let mut stretcher = TimeStretcher::new(StretchConfig::default());
        let loud = noise(5, 3_000, 8_000);
        let mut pcm = loud[1_500..].to_vec();
        assert_eq!(
            stretcher.expand_after(&loud[..1_500], &mut pcm),
            Stretch::Declined
        );
        assert_eq!(pcm, &loud[1_500..]);
        let signal = voiced(150.0, 2_000);
        // Too little in total, or enough in total but less than a period not yet played.
        for (played, unplayed) in [(0, 960), (400, 400), (1_000, 0), (0, 0), (1_400, 100)] {
            let mut pcm = signal[played..played + unplayed].to_vec();
            assert_eq!(
                stretcher.expand_after(&signal[..played], &mut pcm),
                Stretch::Declined,
                "{played} played, {unplayed} unplayed"
            );
            assert_eq!(pcm.len(), unplayed);
        }
    }
}

//! Measurement hooks: per-frame latency probes and per-phone CPU time. Used by the demo and the
//! benchmarks; they cost nothing when not enabled.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records when each media frame was captured, sent and played, across two phones of one
/// process (they share the monotonic clock), to measure latency end to end.
///
/// Keyed by the stream (the sender's SFrame key id) and the frame's counter (the SFrame CTR,
/// which is the sender's frame index), so the two directions of a call never mix.
#[derive(Debug, Default)]
pub struct LatencyProbe {
    inner: Mutex<ProbeInner>,
}

#[derive(Debug, Default)]
struct ProbeInner {
    /// (stream, frame index) -> (when its first sample was captured, when it was encoded)
    sent: Window<(Instant, Instant)>,
    added_latency: Samples,
    mouth_to_ear: Samples,
    arrivals: Window<Instant>,
}

/// The last [`WINDOW`] frames' records, looked up by (stream, frame index) in O(1): the
/// probe runs on the phones' media threads, whose CPU the demo measures.
#[derive(Debug)]
struct Window<T> {
    by_key: HashMap<(u64, u64), T>,
    order: VecDeque<(u64, u64)>,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::with_capacity(WINDOW),
            order: VecDeque::with_capacity(WINDOW),
        }
    }
}

impl<T> Window<T> {
    fn insert(&mut self, key: (u64, u64), value: T) {
        if self.order.len() == WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
        if self.by_key.insert(key, value).is_none() {
            self.order.push_back(key);
        }
    }

    fn get(&self, key: &(u64, u64)) -> Option<&T> {
        self.by_key.get(key)
    }
}

/// Frames remembered for matching; older ones are forgotten.
const WINDOW: usize = 512;

/// Measurements kept per figure: the summary is over the most recent ones (about 11 minutes
/// of both directions of a 20 ms call), so that a probe left on in a long call holds a fixed
/// amount of memory (1 MiB per figure).
const MAX_SAMPLES: usize = 1 << 16;

/// The last [`MAX_SAMPLES`] measurements of one figure.
#[derive(Debug, Default)]
struct Samples(VecDeque<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        if self.0.len() == MAX_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.0.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Latency figures from a [`LatencyProbe`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Frames measured from capture to playout (the most recent, at most 65536).
    pub frames: usize,
    /// Median capture-to-playout delay.
    pub mouth_to_ear_median: Option<Duration>,
    /// 99th percentile of the latency Viska adds to a frame: from the encoded frame being
    /// ready to it being authenticated and decrypted at the peer (SFrame protect, QUIC send,
    /// network, receive, SFrame unprotect, jitter-buffer insert; not the jitter-buffer wait).
    pub added_latency_p99: Option<Duration>,
    /// Median of the same.
    pub added_latency_median: Option<Duration>,
    /// 90th percentile of the same.
    pub added_latency_p90: Option<Duration>,
}

fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values.get(rank).copied()
}

impl LatencyProbe {
    /// A new, empty probe.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeInner> {
        // A poisoned probe only means a panicking test thread; the data is still usable.
        crate::lock(&self.inner)
    }

    /// Sender: frame `index` of `stream`, whose first sample was captured at `captured`, is encoded and
    /// ready to protect and send at `ready`.
    pub fn frame_ready(&self, stream: u64, index: u64, captured: Instant, ready: Instant) {
        self.lock().sent.insert((stream, index), (captured, ready));
    }

    /// Receiver: frame `index` of `stream` arrived, was authenticated and decrypted, and queued at `at`.
    pub fn frame_arrived(&self, stream: u64, index: u64, at: Instant) {
        self.lock().arrivals.insert((stream, index), at);
    }

    /// Receiver: frame `index` of `stream` was played at `played`.
    pub fn frame_played(&self, stream: u64, index: u64, played: Instant) {
        let key = (stream, index);
        let mut inner = self.lock();
        let Some(&(captured, ready)) = inner.sent.get(&key) else {
            return;
        };
        if let Some(&arrived) = inner.arrivals.get(&key) {
            let d = arrived.saturating_duration_since(ready);
            inner.added_latency.push(d);
        }
        inner
            .mouth_to_ear
            .push(played.saturating_duration_since(captured));
    }

    /// Medians and percentiles over the most recent measurements (at most 65536 of each figure).
    pub fn summary(&self) -> LatencySummary {
        let inner = self.lock();
        let mut m2e = inner.mouth_to_ear.sorted();
        let mut r2d = inner.added_latency.sorted();
        LatencySummary {
            frames: m2e.len(),
            mouth_to_ear_median: percentile(&mut m2e, 0.5),
            added_latency_p99: percentile(&mut r2d, 0.99),
            added_latency_median: percentile(&mut r2d, 0.5),
            added_latency_p90: percentile(&mut r2d, 0.9),
        }
    }
}

/// The `/proc` directories of this process's threads whose name starts with `prefix`.
fn named_threads(prefix: &str) -> Option<Vec<std::path::PathBuf>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .flatten()
            .map(|task| task.path())
            .filter(|path| {
                std::fs::read_to_string(path.join("comm"))
                    .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
            })
            .collect(),
    )
}

/// CPU time used so far by this process's threads whose name starts with `prefix`
/// (each phone names its runtime thread `vk-<name>`). `None` where Linux schedstat is not
/// available.
pub fn thread_cpu_time(prefix: &str) -> Option<Duration> {
    Some(
        named_threads(prefix)?
            .iter()
            .filter_map(|path| schedstat_cpu(&path.join("schedstat")))
            .sum(),
    )
}

/// Times so far that this process's threads whose name starts with `prefix` went to sleep
/// and were woken (voluntary context switches). Each wake-up takes the thread through the
/// kernel's scheduler and the CPU out of idle, beyond the work it then does. `None` where
/// `/proc` is not available.
pub fn thread_wakeups(prefix: &str) -> Option<u64> {
    Some(
        named_threads(prefix)?
            .iter()
            .filter_map(|path| std::fs::read_to_string(path.join("status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum(),
    )
}

/// CPU time used so far by the calling thread (Linux schedstat). The kernel updates it when
/// the thread is switched out, so read it across sleeps, not around a busy stretch.
pub fn current_thread_cpu_time() -> Option<Duration> {
    schedstat_cpu(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// The first field of a `schedstat` file: nanoseconds on CPU.
fn schedstat_cpu(path: &std::path::Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_matches_frames_per_stream_and_forgets_old_ones() {
        let probe = LatencyProbe::new();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // Two streams with the same frame indices never mix.
        for index in 0..10u64 {
            probe.frame_ready(0, index, ms(20 * index), ms(20 * index + 20));
            probe.frame_ready(1, index, ms(20 * index), ms(20 * index + 20));
            probe.frame_arrived(0, index, ms(20 * index + 21));
            probe.frame_arrived(1, index, ms(20 * index + 25));
            probe.frame_played(0, index, ms(20 * index + 60));
        }
        let s = probe.summary();
        assert_eq!(s.frames, 10);
        assert_eq!(s.mouth_to_ear_median, Some(Duration::from_millis(60)));
        assert_eq!(s.added_latency_p99, Some(Duration::from_millis(1)));
        // A frame older than the window is forgotten: playing it records nothing.
        for index in 10..10 + WINDOW as u64 {
            probe.frame_ready(0, index, ms(0), ms(0));
        }
        probe.frame_played(0, 0, ms(10_000));
        assert_eq!(probe.summary().frames, 10);
        probe.frame_played(0, 10, ms(100));
        assert_eq!(probe.summary().frames, 11);
    }

    #[test]
    fn a_probe_left_on_holds_a_bounded_number_of_samples_and_summarises_the_latest() {
        let probe = LatencyProbe::new();
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        // An hour and more of one direction: early frames 1 ms late, later ones 2 ms.
        let frames = MAX_SAMPLES as u64 + 20_000;
        for index in 0..frames {
            let extra = if index < 20_000 { 1_000 } else { 2_000 };
            probe.frame_ready(0, index, us(index * 20_000), us(index * 20_000));
            probe.frame_arrived(0, index, us(index * 20_000 + extra));
            probe.frame_played(0, index, us(index * 20_000 + 40_000));
        }
        let s = probe.summary();
        assert_eq!(s.frames, MAX_SAMPLES);
        assert_eq!(s.added_latency_median, Some(Duration::from_millis(2)));
        assert_eq!(s.added_latency_p99, Some(Duration::from_millis(2)));
        let inner = probe.lock();
        assert_eq!(inner.added_latency.0.len(), MAX_SAMPLES);
        assert_eq!(inner.mouth_to_ear.0.len(), MAX_SAMPLES);
    }
}

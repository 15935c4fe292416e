//! The lock-free hand-off of samples between a sound device callback and the media thread.
//!
//! A [`sample_ring`] is a wait-free single-producer single-consumer queue of `f32` samples
//! (over `rtrb`). The device callback owns one end, the media thread the other; neither end
//! ever blocks, locks or allocates. When the writer finds the ring full it drops what does not
//! fit and counts an overrun; when the reader finds too little it counts an underrun. Both
//! counters are atomics shared by the two ends and by any [`RingMonitor`], so the side that did
//! not see the event can still read it.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors from creating a ring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// A ring must hold at least one sample.
    #[error("a sample ring needs a capacity of at least one sample")]
    ZeroCapacity,
}

/// Overrun and underrun counts of one ring, as seen at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Writes that found too little room (samples were dropped).
    pub overruns: u64,
    /// Reads that found too few samples (silence was produced instead).
    pub underruns: u64,
}

#[derive(Debug, Default)]
struct RingCounters {
    overruns: AtomicU64,
    underruns: AtomicU64,
}

impl RingCounters {
    fn snapshot(&self) -> RingStats {
        RingStats {
            overruns: self.overruns.load(Ordering::Relaxed),
            underruns: self.underruns.load(Ordering::Relaxed),
        }
    }
}

/// Creates a ring holding up to `capacity` samples and returns its two ends.
pub fn sample_ring(capacity: usize) -> Result<(SampleWriter, SampleReader), RingError> {
    if capacity == 0 {
        return Err(RingError::ZeroCapacity);
    }
    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
    let counters = Arc::new(RingCounters::default());
    Ok((
        SampleWriter {
            producer,
            counters: Arc::clone(&counters),
        },
        SampleReader { consumer, counters },
    ))
}

/// The writing end of a sample ring.
#[derive(Debug)]
pub struct SampleWriter {
    producer: rtrb::Producer<f32>,
    counters: Arc<RingCounters>,
}

impl SampleWriter {
    /// Whether the reading end has been dropped (nothing written will ever be read).
    pub fn is_abandoned(&self) -> bool {
        self.producer.is_abandoned()
    }

    /// Appends all of `samples`, or nothing and counts an overrun when they do not all fit
    /// (a whole frame is kept together rather than cut).
    pub fn push_all(&mut self, samples: &[f32]) -> bool {
        match self.producer.push_entire_slice(samples) {
            Ok(()) => true,
            Err(_) => {
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Appends as many converted samples as fit (in order) and returns how many; counts one
    /// overrun when some had to be dropped. Meant for a device callback: `convert` is applied
    /// on the fly, nothing is allocated.
    pub fn push_converted<S: Copy>(&mut self, samples: &[S], convert: impl Fn(S) -> f32) -> usize {
        let room = self.producer.slots().min(samples.len());
        let pushed = match self.producer.write_chunk_uninit(room) {
            Ok(chunk) => chunk.fill_from_iter(samples.iter().map(|&s| convert(s))),
            Err(_) => 0,
        };
        if pushed < samples.len() {
            self.counters.overruns.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// Appends all of `samples` converted, or nothing and counts an overrun when they do not
    /// all fit (a whole frame is kept together rather than cut). Allocates nothing.
    pub fn push_all_converted<S: Copy>(
        &mut self,
        samples: &[S],
        convert: impl Fn(S) -> f32,
    ) -> bool {
        if self.producer.slots() < samples.len() {
            self.counters.overruns.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.push_converted(samples, convert) == samples.len()
    }

    /// Free room, in samples.
    pub fn free_len(&self) -> usize {
        self.producer.slots()
    }

    /// Total room, in samples.
    pub fn capacity(&self) -> usize {
        self.producer.buffer().capacity()
    }

    /// A handle that reads this ring's counters from anywhere.
    pub fn monitor(&self) -> RingMonitor {
        RingMonitor {
            counters: Arc::clone(&self.counters),
        }
    }
}

/// The reading end of a sample ring.
#[derive(Debug)]
pub struct SampleReader {
    consumer: rtrb::Consumer<f32>,
    counters: Arc<RingCounters>,
}

impl SampleReader {
    /// Whether the writing end has been dropped (nothing more will arrive).
    pub fn is_abandoned(&self) -> bool {
        self.consumer.is_abandoned()
    }

    /// Fills all of `out`, or takes nothing and counts an underrun when fewer samples are
    /// queued (`out` is then left unchanged).
    pub fn pop_exact(&mut self, out: &mut [f32]) -> bool {
        match self.consumer.pop_entire_slice(out) {
            Ok(()) => true,
            Err(_) => {
                self.counters.underruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Fills `out` with converted queued samples and the rest with `silence`; returns how many
    /// came from the ring and counts one underrun when that is fewer than `out.len()`. Meant for
    /// a device callback: nothing is allocated.
    pub fn pop_converted<S: Copy>(
        &mut self,
        out: &mut [S],
        silence: S,
        convert: impl Fn(f32) -> S,
    ) -> usize {
        let wanted = self.consumer.slots().min(out.len());
        let mut taken = 0;
        if let Ok(chunk) = self.consumer.read_chunk(wanted) {
            let (first, second) = chunk.as_slices();
            for (dst, &src) in out.iter_mut().zip(first.iter().chain(second.iter())) {
                *dst = convert(src);
                taken += 1;
            }
            chunk.commit(taken);
        }
        if let Some(rest) = out.get_mut(taken..) {
            rest.fill(silence);
        }
        if taken < out.len() {
            self.counters.underruns.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Drops every queued sample (no counter changes); returns how many were dropped.
    pub fn discard_all(&mut self) -> usize {
        self.discard_oldest(usize::MAX)
    }

    /// Drops up to `count` of the oldest queued samples (no counter changes); returns how
    /// many were dropped.
    pub fn discard_oldest(&mut self, count: usize) -> usize {
        let dropped = self.consumer.slots().min(count);
        match self.consumer.read_chunk(dropped) {
            Ok(chunk) => {
                chunk.commit_all();
                dropped
            }
            Err(_) => 0,
        }
    }

    /// Samples queued and ready to read.
    pub fn queued_len(&self) -> usize {
        self.consumer.slots()
    }

    /// A handle that reads this ring's counters from anywhere.
    pub fn monitor(&self) -> RingMonitor {
        RingMonitor {
            counters: Arc::clone(&self.counters),
        }
    }
}

/// Reads the counters of a ring from any thread (a clone of the shared counters).
#[derive(Clone, Debug)]
pub struct RingMonitor {
    counters: Arc<RingCounters>,
}

impl RingMonitor {
    /// The counters now.
    pub fn stats(&self) -> RingStats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_capacity_is_refused() {
        assert!(matches!(sample_ring(0), Err(RingError::ZeroCapacity)));
    }

    #[test]
    fn whole_frames_pass_in_order_and_a_full_ring_counts_an_overrun() {
        let (mut writer, mut reader) = sample_ring(8).expect("ring");
        assert!(writer.push_all(&[1.0, 2.0, 3.0, 4.0, 5.0]));
        assert!(!writer.push_all(&[6.0, 7.0, 8.0, 9.0]));
        assert_eq!(reader.queued_len(), 5);
        assert_eq!(writer.monitor().stats().overruns, 1);
        let mut out = [0.0; 5];
        assert!(reader.pop_exact(&mut out));
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(!reader.pop_exact(&mut out));
        assert_eq!(
            reader.monitor().stats(),
            RingStats {
                overruns: 1,
                underruns: 1
            }
        );
    }

    #[test]
    fn converted_pushes_keep_what_fits_and_pops_pad_with_silence() {
        let (mut writer, mut reader) = sample_ring(4).expect("ring");
        let pushed = writer.push_converted(&[1i16, 2, 3, 4, 5, 6], |s| f32::from(s) * 10.0);
        assert_eq!(pushed, 4);
        assert_eq!(writer.free_len(), 0);
        assert_eq!(writer.capacity(), 4);
        let mut out = [0i32; 6];
        let taken = reader.pop_converted(&mut out, -1, |s| s as i32);
        assert_eq!(taken, 4);
        assert_eq!(out, [10, 20, 30, 40, -1, -1]);
        assert_eq!(
            reader.monitor().stats(),
            RingStats {
                overruns: 1,
                underruns: 1
            }
        );
        // Wrapping around the end of the storage keeps the order.
        assert_eq!(writer.push_converted(&[7u8, 8, 9], f32::from), 3);
        let mut out = [0u8; 3];
        assert_eq!(reader.pop_converted(&mut out, 0, |s| s as u8), 3);
        assert_eq!(out, [7, 8, 9]);
        assert_eq!(reader.monitor().stats().underruns, 1);
    }

    #[test]
    fn discard_all_empties_without_counting() {
        let (mut writer, mut reader) = sample_ring(16).expect("ring");
        assert!(writer.push_all(&[1.0, 2.0, 3.0, 4.0]));
        assert_eq!(reader.discard_oldest(3), 3);
        let mut one = [0.0];
        assert!(reader.pop_exact(&mut one));
        assert_eq!(one, [4.0]);
        assert_eq!(reader.discard_oldest(5), 0);
        assert!(writer.push_all(&[0.5; 10]));
        assert_eq!(reader.discard_all(), 10);
        assert_eq!(reader.queued_len(), 0);
        assert_eq!(reader.monitor().stats(), RingStats::default());
    }

    #[test]
    fn the_two_ends_work_from_two_threads() {
        let (mut writer, mut reader) = sample_ring(64).expect("ring");
        let total = 10_000usize;
        let producer = std::thread::spawn(move || {
            let mut next = 0usize;
            while next < total {
                let end = (next + 7).min(total);
                let chunk: Vec<f32> = (next..end).map(|v| v as f32).collect();
                if writer.push_all(&chunk) {
                    next = end;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut expected = 0usize;
        let mut one = [0.0f32; 1];
        while expected < total {
            if reader.queued_len() > 0 && reader.pop_exact(&mut one) {
                assert_eq!(one[0], expected as f32);
                expected += 1;
            } else {
                std::thread::yield_now();
            }
        }
        producer.join().expect("producer thread");
    }
}

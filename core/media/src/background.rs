//! A sink that does its writing on its own thread.
//!
//! Files (a WAV of what a headless phone hears, an Ogg Opus recording of the call) are written
//! by whoever calls `write_frame`: on a phone that is the media thread, where a slow disk or a
//! full page cache would stall media and signaling. [`BackgroundSink`] moves the work off it:
//! `write_frame` only copies the frame into a lock-free ring ([`crate::ring`]); a writer
//! thread drains the ring into the real sink every [`DRAIN_INTERVAL`] (and at the end), so the
//! media thread never blocks and never allocates. If the disk stalls for longer than the ring
//! holds, whole frames are dropped and counted rather than the caller waiting.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::audio::{AudioIoError, AudioSink};
use crate::ring::{RingMonitor, SampleReader, SampleWriter, sample_ring};

/// How often the writer thread wakes to drain the ring.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the writer thread and the sink's owner share.
#[derive(Debug, Default)]
struct Shared {
    /// Set by `finish`: drain what is left, finish the inner sink, stop.
    done: AtomicBool,
    /// Set once the inner sink failed; later frames are refused with this message.
    failed: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Shared {
    /// The inner sink's failure, as the error every later call returns.
    fn failure(&self) -> AudioIoError {
        let error = self.error.lock().ok().and_then(|e| e.clone());
        AudioIoError::File(error.unwrap_or_default())
    }
}

/// An [`AudioSink`] that hands frames to a writer thread owning the real sink. See the
/// [module docs](self).
#[derive(Debug)]
pub struct BackgroundSink {
    ring: SampleWriter,
    monitor: RingMonitor,
    frame_samples: usize,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), AudioIoError>>>,
}

impl BackgroundSink {
    /// Moves `inner` to a new thread named `name` that writes the frames given to this sink,
    /// `frame_samples` samples each, buffering up to `buffered_frames` of them.
    pub fn spawn(
        name: &str,
        inner: Box<dyn AudioSink>,
        frame_samples: usize,
        buffered_frames: usize,
    ) -> Result<Self, AudioIoError> {
        let capacity = frame_samples.max(1) * buffered_frames.max(2);
        let (ring, reader) =
            sample_ring(capacity).map_err(|e| AudioIoError::File(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_loop(inner, reader, frame_samples.max(1), &shared)
            })
            .map_err(|e| AudioIoError::File(format!("writer thread: {e}")))?;
        Ok(Self {
            monitor: ring.monitor(),
            ring,
            frame_samples,
            shared,
            thread: Some(thread),
        })
    }

    /// Frames dropped because the writer fell more than the buffer behind.
    pub fn dropped_frames(&self) -> u64 {
        self.monitor.stats().overruns
    }

    fn stop(&mut self) -> Result<(), AudioIoError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.done.store(true, Ordering::Release);
        thread.thread().unpark();
        thread
            .join()
            .unwrap_or_else(|_| Err(AudioIoError::File("writer thread panicked".into())))
    }
}

fn write_loop(
    mut inner: Box<dyn AudioSink>,
    mut reader: SampleReader,
    frame_samples: usize,
    shared: &Shared,
) -> Result<(), AudioIoError> {
    let mut samples = vec![0.0f32; frame_samples];
    let mut pcm = vec![0i16; frame_samples];
    loop {
        // Read `done` before draining: frames pushed before it was set are all written.
        let done = shared.done.load(Ordering::Acquire);
        while reader.queued_len() >= frame_samples && reader.pop_exact(&mut samples) {
            if shared.failed.load(Ordering::Relaxed) {
                continue;
            }
            for (dst, &src) in pcm.iter_mut().zip(&samples) {
                // Exact: the ring carries i16 values as f32.
                *dst = src as i16;
            }
            if let Err(e) = inner.write_frame(&pcm) {
                if let Ok(mut error) = shared.error.lock() {
                    *error = Some(e.to_string());
                }
                shared.failed.store(true, Ordering::Release);
            }
        }
        if done {
            break;
        }
        std::thread::park_timeout(DRAIN_INTERVAL);
    }
    if shared.failed.load(Ordering::Acquire) {
        // Still close what was written (a WAV header, the last Ogg page).
        let _ = inner.finish();
        return Err(shared.failure());
    }
    inner.finish()
}

impl AudioSink for BackgroundSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        if pcm.len() != self.frame_samples {
            return Err(AudioIoError::FrameSize {
                expected: self.frame_samples,
                got: pcm.len(),
            });
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.failure());
        }
        if self.thread.is_none() {
            return Err(AudioIoError::File("sink already finished".into()));
        }
        // Whole frames only; one that does not fit is counted as an overrun (dropped), and the
        // caller goes on.
        self.ring.push_all_converted(pcm, f32::from);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), AudioIoError> {
        self.stop()
    }
}

impl Drop for BackgroundSink {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "background audio writer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records frames; optionally fails at frame `fail_at`; can be slowed down.
    struct Collect {
        frames: Arc<Mutex<Vec<Vec<i16>>>>,
        finished: Arc<AtomicBool>,
        fail_at: Option<usize>,
        delay: Duration,
    }

    impl AudioSink for Collect {
        fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
            std::thread::sleep(self.delay);
            let mut frames = self.frames.lock().expect("lock");
            if Some(frames.len()) == self.fail_at {
                return Err(AudioIoError::File("disk full".into()));
            }
            frames.push(pcm.to_vec());
            Ok(())
        }
        fn finish(&mut self) -> Result<(), AudioIoError> {
            self.finished.store(true, Ordering::Release);
            Ok(())
        }
    }

    type Frames = Arc<Mutex<Vec<Vec<i16>>>>;

    fn collect(fail_at: Option<usize>, delay: Duration) -> (Collect, Frames, Arc<AtomicBool>) {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicBool::new(false));
        (
            Collect {
                frames: Arc::clone(&frames),
                finished: Arc::clone(&finished),
                fail_at,
                delay,
            },
            frames,
            finished,
        )
    }

    #[test]
    fn every_frame_arrives_in_order_and_finish_finishes_the_inner_sink() {
        let (inner, frames, finished) = collect(None, Duration::ZERO);
        let mut sink =
            BackgroundSink::spawn("test-writer", Box::new(inner), 960, 50).expect("spawn");
        let sent: Vec<Vec<i16>> = (0..200i16)
            .map(|f| {
                (0..960i16)
                    .map(|i| f.wrapping_mul(97).wrapping_add(i).wrapping_sub(480))
                    .collect()
            })
            .collect();
        for (n, frame) in sent.iter().enumerate() {
            sink.write_frame(frame).expect("write");
            if n % 25 == 24 {
                // Let the writer catch up before the buffer (50 frames) could fill.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while frames.lock().expect("lock").len() <= n
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        sink.finish().expect("finish");
        assert!(finished.load(Ordering::Acquire));
        assert_eq!(sink.dropped_frames(), 0);
        assert_eq!(*frames.lock().expect("lock"), sent);
        assert!(matches!(
            sink.write_frame(&[0; 10]),
            Err(AudioIoError::FrameSize { .. })
        ));
        assert!(sink.write_frame(&[0; 960]).is_err(), "finished");
    }

    #[test]
    fn a_stalled_writer_drops_whole_frames_instead_of_blocking() {
        // The inner sink takes 50 ms a frame; the caller writes 100 frames at once.
        let (inner, frames, _) = collect(None, Duration::from_millis(50));
        let mut sink =
            BackgroundSink::spawn("slow-writer", Box::new(inner), 960, 10).expect("spawn");
        for i in 0..100i16 {
            sink.write_frame(&[i; 960]).expect("write never blocks");
        }
        // Had the caller waited for the writer, nothing would have been dropped.
        assert!(
            sink.dropped_frames() >= 80,
            "dropped {}",
            sink.dropped_frames()
        );
        sink.finish().expect("finish");
        let written = frames.lock().expect("lock");
        assert_eq!(written.len() as u64 + sink.dropped_frames(), 100);
        assert!(written.iter().all(|f| f.iter().all(|&s| s == f[0])));
    }

    #[test]
    fn a_failing_inner_sink_is_reported_and_still_finished() {
        let (inner, frames, finished) = collect(Some(3), Duration::ZERO);
        let mut sink =
            BackgroundSink::spawn("failing-writer", Box::new(inner), 4, 100).expect("spawn");
        for i in 0..10i16 {
            let _ = sink.write_frame(&[i; 4]);
        }
        let result = sink.finish();
        assert!(
            matches!(result, Err(AudioIoError::File(ref e)) if e.contains("disk full")),
            "{result:?}"
        );
        assert!(finished.load(Ordering::Acquire), "closed what was written");
        assert_eq!(frames.lock().expect("lock").len(), 3);
    }
}

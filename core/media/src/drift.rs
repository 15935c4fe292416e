//! Clock drift between a sound device and the media clock.
//!
//! A device runs on its own crystal; the media thread reads (capture) or writes (playback)
//! one frame per period of the system clock. Two clocks a few hundred ppm apart make the
//! ring between them fill up or run dry by one frame every minute or so: without
//! correction that ends in a dropped block of audio (capture backlog trim, playback
//! overrun) or a gap of silence (underrun), audible every few minutes on a long call.
//!
//! [`DriftTracker`] watches the ring's fill level once per frame, learns the level the
//! stream settles at in its second second (the first is start-up), and from then on asks for one device frame more
//! or fewer per media frame while the level strays more than a millisecond from it. The
//! frame is then resized with [`stretch_frames`] (linear interpolation over the whole frame:
//! a 0.1 % pitch change for that frame, inaudible), up to ±1/`frame` of the clock rate
//! (±1042 ppm at 48 kHz, 20 ms), which covers real devices (tens to a few hundred ppm).
//!
//! The level used is the minimum over each one-second window: device callbacks deliver or
//! take audio in bursts, and the minimum is the steady slack under them.
#![forbid(unsafe_code)]

/// Frames (media periods) in one observation window.
const WINDOW_FRAMES: u32 = 50;

/// Watches a ring's fill level and says how many device frames to add to or remove from
/// the next media frame to hold the level steady. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct DriftTracker {
    /// Device frames of fill level the stream is held at, once learnt.
    setpoint: Option<usize>,
    /// Windows seen so far (the first is the stream settling and is not learnt from).
    windows: u32,
    /// How far (device frames) the level may stray before a correction starts.
    tolerance: usize,
    window_min: usize,
    window_count: u32,
    /// Whether the ring ran dry during this window.
    window_starved: bool,
    /// Device frames to add per media frame until the next window: -1, 0 or +1.
    slip: i8,
    /// Media frames resized so far.
    corrections: u64,
}

impl DriftTracker {
    /// A tracker for a device at `device_rate` Hz; corrections start when the level strays
    /// more than one millisecond of device audio from where it settled.
    pub fn new(device_rate: u32) -> Self {
        Self {
            setpoint: None,
            windows: 0,
            tolerance: (device_rate / 1000).max(1) as usize,
            window_min: usize::MAX,
            window_count: 0,
            window_starved: false,
            slip: 0,
            corrections: 0,
        }
    }

    /// Records the ring's fill level (device frames queued) seen at this media frame, and
    /// whether the ring ran dry since the last one (`starved`: an underrun), and returns the
    /// correction for this frame, in device frames: +1 to consume (capture) or produce
    /// (playback) one more, -1 one fewer, 0 none. For capture a positive level error means the
    /// device runs fast; for playback, that it runs slow. `capture` picks the sign.
    ///
    /// A window with an underrun means the level is too low to ride out the device's bursts
    /// (the minimum of a playback ring the device empties in each callback is zero, so the
    /// level alone cannot show it): the learnt level is raised by the tolerance and the next
    /// window corrects towards "fuller".
    pub fn observe(&mut self, queued_frames: usize, capture: bool, starved: bool) -> i8 {
        self.window_min = self.window_min.min(queued_frames);
        self.window_starved |= starved;
        self.window_count += 1;
        if self.window_count >= WINDOW_FRAMES {
            let level = self.window_min;
            let starved = std::mem::take(&mut self.window_starved);
            self.window_min = usize::MAX;
            self.window_count = 0;
            self.windows = self.windows.saturating_add(1);
            match self.setpoint {
                None if self.windows < 2 => {}
                None => self.setpoint = Some(level),
                Some(setpoint) if starved => {
                    self.setpoint = Some(setpoint.max(level) + self.tolerance);
                    // Too empty: capture must read slower, playback must write faster.
                    self.slip = if capture { -1 } else { 1 };
                }
                Some(setpoint) => {
                    // Too full: capture must read faster, playback must write slower.
                    let direction = if level > setpoint + self.tolerance {
                        1
                    } else if level + self.tolerance < setpoint {
                        -1
                    } else {
                        0
                    };
                    self.slip = if capture { direction } else { -direction };
                }
            }
        }
        if self.slip != 0 {
            self.corrections += 1;
        }
        self.slip
    }

    /// Forgets the learnt level for a new device stream at `device_rate` Hz (it settles at
    /// its own level); the count of corrections is kept.
    pub fn reset_for(&mut self, device_rate: u32) {
        let corrections = self.corrections;
        *self = Self::new(device_rate);
        self.corrections = corrections;
    }

    /// Media frames resized so far to follow the device's clock.
    pub fn corrections(&self) -> u64 {
        self.corrections
    }
}

/// Resizes interleaved audio of `channels` channels from `input.len() / channels` frames to
/// `output.len() / channels` frames by linear interpolation, keeping the first and last frame
/// in place. Returns false (and leaves `output` alone) when a length is not a whole number of
/// frames or either side is empty.
pub fn stretch_frames(input: &[f32], output: &mut [f32], channels: usize) -> bool {
    if channels == 0 || input.len() % channels != 0 || output.len() % channels != 0 {
        return false;
    }
    let in_frames = input.len() / channels;
    let out_frames = output.len() / channels;
    if in_frames == 0 || out_frames == 0 {
        return false;
    }
    let step = if out_frames > 1 {
        (in_frames - 1) as f64 / (out_frames - 1) as f64
    } else {
        0.0
    };
    for (i, out) in output.chunks_exact_mut(channels).enumerate() {
        let pos = i as f64 * step;
        let left = (pos.floor() as usize).min(in_frames - 1);
        let right = (left + 1).min(in_frames - 1);
        let frac = (pos - left as f64) as f32;
        for (c, o) in out.iter_mut().enumerate() {
            let a = input.get(left * channels + c).copied().unwrap_or(0.0);
            let b = input.get(right * channels + c).copied().unwrap_or(0.0);
            *o = a + (b - a) * frac;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_level_needs_no_correction() {
        let mut t = DriftTracker::new(48_000);
        for i in 0..500 {
            // Bursty but steady: the minimum stays at 480.
            let level = 480 + (i % 3) * 240;
            assert_eq!(t.observe(level, true, false), 0);
        }
        assert_eq!(t.corrections(), 0);
    }

    #[test]
    fn a_rising_level_makes_capture_read_faster_and_playback_write_slower() {
        for capture in [true, false] {
            let mut t = DriftTracker::new(48_000);
            let mut level = 480.0f64;
            let mut slips = Vec::new();
            for _ in 0..1000 {
                // The device gains 0.5 frames per media frame (~520 ppm) on the ring...
                level += 0.5;
                let slip = t.observe(level as usize, capture, false);
                // ...and each correction takes one frame out again.
                level -= f64::from(slip) * if capture { 1.0 } else { -1.0 };
                slips.push(slip);
            }
            let expected = if capture { 1 } else { -1 };
            assert!(slips.contains(&expected));
            assert!(!slips.contains(&-expected));
            // Held near the level learnt in the second window (480 + 25): within the
            // tolerance plus two windows of drift.
            assert!(
                level < 480.0 + 25.0 + 48.0 + 2.0 * 25.0 + 1.0,
                "level {level}"
            );
        }
    }

    #[test]
    fn a_falling_level_makes_capture_read_slower() {
        let mut t = DriftTracker::new(48_000);
        let mut level = 2000.0f64;
        for _ in 0..1000 {
            level -= 0.5;
            let slip = t.observe(level as usize, true, false);
            level -= f64::from(slip);
        }
        assert!(
            level > 2000.0 - 50.0 - 48.0 - 2.0 * 25.0 - 1.0,
            "level {level}"
        );
        assert!(t.corrections() > 0);
    }

    #[test]
    fn reset_relearns_the_level_and_keeps_the_count() {
        let mut t = DriftTracker::new(48_000);
        for i in 0..200 {
            t.observe(480 + i * 10, true, false);
        }
        let before = t.corrections();
        assert!(before > 0);
        t.reset_for(44_100);
        // A new stream at a very different level: learnt, not corrected.
        for _ in 0..100 {
            assert_eq!(t.observe(5000, true, false), 0);
        }
        assert_eq!(t.corrections(), before);
    }

    #[test]
    fn underruns_raise_the_level_even_when_its_minimum_is_zero() {
        // A playback ring the device empties at every callback: its minimum is 0 whatever the
        // drift, so only the underruns tell that the device takes more than it is given.
        let mut t = DriftTracker::new(48_000);
        let mut cushion = 0.0f64;
        let mut starved_windows = Vec::new();
        for window in 0..40 {
            let mut starved_here = false;
            for _ in 0..WINDOW_FRAMES {
                // The device takes 0.8 frames more than a frame's worth every media frame.
                cushion -= 0.8;
                let starved = cushion < 0.0;
                if starved {
                    cushion = 0.0;
                    starved_here = true;
                }
                let slip = t.observe(0, false, starved);
                cushion += f64::from(slip);
            }
            starved_windows.push((window, starved_here));
        }
        // Writing one more device frame per media frame (1042 ppm) outruns an 800 ppm fast
        // device's 0.8 frames: once corrections start, the ring stops running dry.
        let late: Vec<_> = starved_windows[10..].iter().filter(|(_, s)| *s).collect();
        assert!(late.is_empty(), "still starved in {late:?}");
        assert!(t.corrections() > 0);
    }

    #[test]
    fn stretch_keeps_ends_and_interpolates_between() {
        let input: Vec<f32> = (0..=960).map(|i| i as f32).collect();
        let mut out = vec![0.0; 960];
        assert!(stretch_frames(&input, &mut out, 1));
        assert_eq!(out[0], 0.0);
        assert_eq!(out[959], 960.0);
        // A ramp stays a ramp, slightly steeper.
        for w in out.windows(2) {
            let d = w[1] - w[0];
            assert!((d - 960.0 / 959.0).abs() < 1e-3, "{d}");
        }
        // Stereo: channels are stretched independently.
        let stereo: Vec<f32> = (0..4).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let mut wide = vec![0.0; 10];
        assert!(stretch_frames(&stereo, &mut wide, 2));
        assert_eq!(
            wide,
            [0.0, 0.0, 0.75, -0.75, 1.5, -1.5, 2.25, -2.25, 3.0, -3.0]
        );
        // Lengths that are not whole frames are refused.
        assert!(!stretch_frames(&stereo[..3], &mut wide, 2));
        assert!(!stretch_frames(&[], &mut wide, 2));
    }
}

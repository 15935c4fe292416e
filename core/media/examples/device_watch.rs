//! Plays a 440 Hz tone on the default output device for a number of seconds, in 20 ms frames
//! as a call does, and prints every device event with its time and the counters at the end.
//! Used to measure loss reports and reopening through PulseAudio (docs/performance.md):
//!
//! ```text
//! cargo run -p viska-media --example device_watch -- 10
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use viska_media::audio::AudioSink;
use viska_media::device::{DevicePlayback, DeviceSelector};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse()?,
        None => 10,
    };
    let mut playback = DevicePlayback::open(DeviceSelector::Default, 960)?;
    let frame: Vec<i16> = (0..960)
        .map(|n| {
            let phase = n as f64 * 2.0 * std::f64::consts::PI * 440.0 / 48_000.0;
            (phase.sin() * 12_000.0) as i16
        })
        .collect();
    let start = Instant::now();
    let mut next = start;
    let mut lost_seen = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        playback.write_frame(&frame)?;
        while let Some(event) = playback.poll_event() {
            println!("{:>6} ms event {event:?}", start.elapsed().as_millis());
        }
        let lost = playback.stats().device_lost;
        if lost > lost_seen {
            lost_seen = lost;
            println!("{:>6} ms stream declared lost", start.elapsed().as_millis());
        }
        next += Duration::from_millis(20);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    println!("{:?}", playback.stats());
    Ok(())
}

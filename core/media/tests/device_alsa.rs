//! Real ALSA streams through cpal, without a sound card: a test `.asoundrc` defines PCMs of
//! `type file` over the `null` PCM, one writing what is played to a raw file, one capturing
//! from a raw file. ALSA reads its configuration once per process from `$HOME`, so the test
//! re-runs itself in a child process whose HOME is a fresh directory holding that file.
#![cfg(all(feature = "device", target_os = "linux"))]

#[path = "fixtures/alsa_home.rs"]
mod alsa_home;

use std::path::Path;
use std::time::{Duration, Instant};

use viska_media::audio::{AudioSink, AudioSource, SourceStatus};
use viska_media::device::{
    DeviceCapture, DeviceEvent, DevicePlayback, DeviceSelector, list_input_devices,
    list_output_devices,
};

const FRAME: usize = 960;
const TEST_NAME: &str = "alsa_file_pcms_play_and_capture_real_samples";
/// The bound on every wait: the null PCM is not paced, so a healthy stream moves in
/// milliseconds; this only keeps a broken one from hanging the suite.
const PATIENCE: Duration = Duration::from_secs(3);

fn tone(freq: f64, amplitude: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| {
            let v = amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / 48_000.0).sin();
            (v * 32_767.0).round() as i16
        })
        .collect()
}

fn read_s16(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[test]
fn alsa_file_pcms_play_and_capture_real_samples() {
    if let Some(dir) = alsa_home::child_home() {
        child(&dir);
        return;
    }
    alsa_home::run_in_alsa_home(TEST_NAME, |dir| {
        let capture_source: Vec<u8> = tone(440.0, 0.5, 48_000)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        std::fs::write(dir.join("to_capture.raw"), capture_source).expect("capture file");
    });
}

fn child(dir: &Path) {
    let outputs = list_output_devices().expect("output devices");
    println!("outputs: {outputs:?}");
    assert!(
        outputs.iter().any(|d| d.id.as_deref() == Some("viska_out")),
        "{outputs:?}"
    );
    assert!(outputs.iter().any(|d| d.is_default), "{outputs:?}");
    let inputs = list_input_devices().expect("input devices");
    println!("inputs: {inputs:?}");
    assert!(
        inputs.iter().any(|d| d.id.as_deref() == Some("viska_in")),
        "{inputs:?}"
    );

    play(dir);
    capture();
}

/// Writes `sent` frame by frame, letting the device take each frame before the next so none
/// is dropped as an overrun.
fn write_paced(playback: &mut DevicePlayback, sent: &[i16]) {
    let deadline = Instant::now() + PATIENCE;
    for frame in sent.chunks_exact(FRAME) {
        playback.write_frame(frame).expect("write");
        while playback.queued_samples() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The device played silence whenever the ring was empty; what is not silence in `file`
/// must be exactly `sent`, in order.
fn assert_file_holds(file: &Path, sent: &[i16]) {
    let written = read_s16(file);
    assert!(
        written.len() >= sent.len(),
        "file holds {} samples",
        written.len()
    );
    let audible: Vec<i16> = written.iter().copied().filter(|&s| s != 0).collect();
    let expected: Vec<i16> = sent.iter().copied().filter(|&s| s != 0).collect();
    println!(
        "{}: {} samples, {} audible, {} expected",
        file.display(),
        written.len(),
        audible.len(),
        expected.len()
    );
    assert_eq!(audible.len(), expected.len());
    let worst = audible
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .max()
        .unwrap_or(i32::MAX);
    assert!(worst <= 2, "largest difference {worst}");
}

fn play(dir: &Path) {
    let mut playback = DevicePlayback::open(DeviceSelector::Name("viska_out".into()), FRAME)
        .expect("open playback");
    println!("playback format {:?}", playback.device_format());
    let first = tone(440.0, 0.5, 25 * FRAME);
    write_paced(&mut playback, &first);

    // Mid-call switch to the second PCM: the same sink object goes on with another tone.
    playback
        .switch_device(DeviceSelector::Name("Viska test headset".into()))
        .expect("switch");
    assert_eq!(
        playback.poll_event(),
        Some(DeviceEvent::Switched {
            name: "Viska test headset".into()
        })
    );
    let second = tone(660.0, 0.25, 10 * FRAME);
    write_paced(&mut playback, &second);
    let stats = playback.stats();
    drop(playback);
    println!("playback stats {stats:?}");
    assert_eq!(stats.overruns, 0);
    assert_eq!(stats.device_lost, 0);

    assert_file_holds(&dir.join("played.raw"), &first);
    assert_file_holds(&dir.join("played2.raw"), &second);
}

fn capture() {
    let mut capture = DeviceCapture::open(DeviceSelector::Default, FRAME).expect("open capture");
    println!("capture format {:?}", capture.device_format());
    let mut frame = vec![0i16; FRAME];
    let mut frames = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while frames.len() < 3 && Instant::now() < deadline {
        match capture.read_frame(&mut frame).expect("read") {
            SourceStatus::Audio => frames.push(frame.clone()),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let stats = capture.stats();
    drop(capture);
    println!("capture stats {stats:?}");
    assert!(!frames.is_empty(), "no audio captured");
    // Every frame carries the file's 440 Hz tone (the null PCM alone would give silence):
    // consecutive samples of a sine satisfy s[n-1] + s[n+1] = 2 cos(w) s[n]. ALSA's file
    // plugin may jump within its input file between periods, and the capture drops old
    // backlog, so a few places per frame may break the recurrence.
    let two_cos = 2.0 * (2.0 * std::f64::consts::PI * 440.0 / 48_000.0).cos();
    let full_scale_rms = 0.5 * 32_767.0 / 2f64.sqrt();
    for frame in &frames {
        let on_tone = frame
            .windows(3)
            .filter(|w| {
                let residual = f64::from(w[0]) + f64::from(w[2]) - two_cos * f64::from(w[1]);
                residual.abs() <= 4.0
            })
            .count();
        assert!(
            on_tone * 100 >= (FRAME - 2) * 95,
            "{on_tone} of {} on the tone",
            FRAME - 2
        );
        let rms = (frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / FRAME as f64).sqrt();
        assert!(
            (rms - full_scale_rms).abs() < 0.15 * full_scale_rms,
            "frame rms {rms}, tone rms {full_scale_rms}"
        );
    }
}

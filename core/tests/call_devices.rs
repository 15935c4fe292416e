//! A call whose callee plays through real ALSA devices (cpal, no sound card: `type file` PCMs
//! from a test `.asoundrc`) switches its speaker mid-call without dropping the call.
//!
//! ALSA reads its configuration once per process from `$HOME`, so the test re-runs itself in
//! a child process whose HOME is a fresh directory holding that file.
#![cfg(all(feature = "device", target_os = "linux"))]

#[path = "../media/tests/fixtures/alsa_home.rs"]
mod alsa_home;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use viska::call::CallState;
use viska::media::audio::AudioSink;
use viska::media::wav::WavSink;
use viska::phone::{
    AudioDirection, AudioEvent, CallListener, DeviceAudio, FileAudio, PhoneListener,
    generate_identity,
};
use viska::proto::CallId;
use viska::{CallHandle, CallUpdate, Phone, PhoneConfig, PhoneEvent};

const TEST_NAME: &str = "callee_switches_its_speaker_mid_call";

fn tone(freq: f64, len: usize) -> Vec<i16> {
    (0..len)
        .map(|n| {
            let v = 0.4 * (2.0 * std::f64::consts::PI * freq * n as f64 / 48_000.0).sin();
            (v * 32_767.0).round() as i16
        })
        .collect()
}

/// A speaker: the FIFO its `type file` PCM writes to, read by a thread at the pace of a real
/// 48 kHz mono device. The `null` PCM under the file plugin is not paced, so a plain file
/// would grow by hundreds of megabytes a minute and the output stream would spin a core;
/// reading the FIFO at real time blocks the stream's writes as a sound card's clock would.
struct Speaker {
    audible: Arc<AtomicUsize>,
}

impl Speaker {
    /// Starts reading `path` (a FIFO): every time a stream opens it, until it closes it.
    fn start(path: PathBuf) -> Self {
        let audible = Arc::new(AtomicUsize::new(0));
        let count = audible.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1920];
            // Each open of the PCM (cpal opens a device more than once) is one writer.
            while let Ok(mut fifo) = std::fs::File::open(&path) {
                let begun = Instant::now();
                let mut bytes = 0u64;
                let mut odd: Option<u8> = None;
                loop {
                    let n = match fifo.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    bytes += n as u64;
                    let mut data = buf[..n].to_vec();
                    if let Some(b) = odd.take() {
                        data.insert(0, b);
                    }
                    if data.len() % 2 == 1 {
                        odd = data.pop();
                    }
                    let loud = data
                        .chunks_exact(2)
                        .filter(|b| i16::from_le_bytes([b[0], b[1]]) != 0)
                        .count();
                    count.fetch_add(loud, Ordering::Relaxed);
                    // 48 000 samples of 2 bytes a second: wait while ahead of that clock.
                    let due = begun + Duration::from_micros(bytes * 1_000_000 / 96_000);
                    let now = Instant::now();
                    if due > now + Duration::from_millis(20) {
                        std::thread::sleep(due - now);
                    }
                }
            }
        });
        Self { audible }
    }

    /// Samples that were not silence so far.
    fn audible_samples(&self) -> usize {
        self.audible.load(Ordering::Relaxed)
    }
}

#[test]
fn callee_switches_its_speaker_mid_call() {
    if let Some(dir) = alsa_home::child_home() {
        child(&dir);
        return;
    }
    alsa_home::run_in_alsa_home(TEST_NAME, |dir| {
        // The callee's microphone (viska_in) captures this file.
        let mic: Vec<u8> = tone(300.0, 48_000)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        std::fs::write(dir.join("to_capture.raw"), mic).expect("capture file");
        // The speakers' files are FIFOs the child reads at a device's pace.
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("played.raw"))
            .arg(dir.join("played2.raw"))
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo failed");
    });
}

struct Answer(mpsc::Sender<CallHandle>);

impl PhoneListener for Answer {
    fn on_event(&self, event: PhoneEvent) {
        if let PhoneEvent::IncomingCall { call, .. } = event {
            call.answer().expect("answer");
            let _ = self.0.send(call);
        }
    }
}

#[derive(Default)]
struct AudioEvents(Mutex<Vec<AudioEvent>>);

impl CallListener for AudioEvents {
    fn on_event(&self, _call: CallId, update: CallUpdate) {
        if let CallUpdate::Audio(event) = update {
            self.0.lock().expect("lock").push(event);
        }
    }
}

fn child(dir: &Path) {
    // Read before any stream opens them: opening a FIFO to write waits for its reader.
    let first = Speaker::start(dir.join("played.raw"));
    let second = Speaker::start(dir.join("played2.raw"));
    // The caller talks from a WAV file; the callee uses sound devices.
    let talk = dir.join("talk.wav");
    {
        let mut w = WavSink::create(&talk).expect("wav");
        for frame in tone(440.0, 48_000).chunks_exact(960) {
            w.write_frame(frame).expect("frame");
        }
        w.finish().expect("finish");
    }
    let callee_config = PhoneConfig::builder("dev-callee", generate_identity())
        .audio(Arc::new(DeviceAudio {
            input: Some("viska_in".into()),
            output: Some("viska_out".into()),
        }))
        .build()
        .expect("config");
    let caller_config = PhoneConfig::builder("dev-caller", generate_identity())
        .audio(Arc::new(FileAudio {
            input: Some(talk),
            loop_input: true,
            output: None,
        }))
        .build()
        .expect("config");
    let callee = Phone::new(callee_config).expect("callee");
    let caller = Phone::new(caller_config).expect("caller");
    let (tx, rx) = mpsc::channel();
    callee.set_listener(Arc::new(Answer(tx)));
    let addr = callee
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let call = caller.call(addr).expect("call");
    let answered = rx.recv_timeout(Duration::from_secs(10)).expect("incoming");
    let events = Arc::new(AudioEvents::default());
    answered.set_listener(events.clone());
    assert!(matches!(
        call.wait_for(Duration::from_secs(10), |s| matches!(
            s,
            CallState::Active { .. }
        )),
        CallState::Active { .. }
    ));

    let audible = |speaker: &Speaker| speaker.audible_samples();
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        what()
    };
    assert!(
        wait_for(&|| audible(&first) > 48_000 / 2),
        "the first speaker plays the call"
    );
    assert_eq!(audible(&second), 0);

    answered
        .switch_output_device(Some("viska_out2"))
        .expect("switch");
    assert!(
        wait_for(&|| !events.0.lock().expect("lock").is_empty()),
        "switch reported"
    );
    assert_eq!(
        events.0.lock().expect("lock").first(),
        Some(&AudioEvent::DeviceSwitched {
            direction: AudioDirection::Output,
            name: "Viska test headset".into()
        })
    );
    assert!(
        wait_for(&|| audible(&second) > 48_000 / 2),
        "the new speaker plays the call"
    );
    let before = answered.snapshot().media.frames_received;
    // Not dropped: still active, still receiving.
    assert!(wait_for(
        &|| answered.snapshot().media.frames_received > before + 10
    ));
    assert!(matches!(answered.state(), CallState::Active { .. }));
    // A device that does not exist is refused and the current one stays.
    answered
        .switch_output_device(Some("no-such-speaker"))
        .expect("sent");
    assert!(wait_for(&|| events.0.lock().expect("lock").len() >= 2));
    assert!(
        matches!(
            events.0.lock().expect("lock").get(1),
            Some(AudioEvent::SwitchFailed {
                direction: AudioDirection::Output,
                ..
            })
        ),
        "{:?}",
        events.0.lock().expect("lock")
    );
    assert!(matches!(answered.state(), CallState::Active { .. }));
    call.hangup().expect("hangup");
    assert!(answered.wait_ended(Duration::from_secs(5)));
    println!(
        "first speaker {} audible samples, second {}",
        audible(&first),
        audible(&second)
    );
}

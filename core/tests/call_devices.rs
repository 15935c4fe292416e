//! A call whose callee plays through real ALSA devices (cpal, no sound card: `type file` PCMs
//! from a test `.asoundrc`) switches its speaker mid-call without dropping the call.
//!
//! ALSA reads its configuration once per process from `$HOME`, so the test re-runs itself in
//! a child process whose HOME is a fresh directory holding that file.
#![cfg(all(feature = "device", target_os = "linux"))]

#[path = "../media/tests/fixtures/alsa_home.rs"]
mod alsa_home;

use std::path::{Path, PathBuf};
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

/// What a speaker PCM's raw file has played so far. The `null` PCM under it is not paced, so
/// the file grows by hundreds of megabytes of silence a minute: read only what is new.
struct Speaker {
    path: PathBuf,
    read: u64,
    audible: usize,
}

impl Speaker {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            read: 0,
            audible: 0,
        }
    }

    /// Samples that were not silence, counting what was written since the last look.
    fn audible_samples(&mut self) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return self.audible;
        };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return self.audible;
        }
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        let whole = bytes.len() / 2 * 2;
        self.read += whole as u64;
        self.audible += bytes[..whole]
            .chunks_exact(2)
            .filter(|b| i16::from_le_bytes([b[0], b[1]]) != 0)
            .count();
        self.audible
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

    let first = Mutex::new(Speaker::new(dir.join("played.raw")));
    let second = Mutex::new(Speaker::new(dir.join("played2.raw")));
    let audible = |speaker: &Mutex<Speaker>| speaker.lock().expect("lock").audible_samples();
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

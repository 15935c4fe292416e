//! End-to-end calls between two phones over real QUIC sockets on loopback, with file audio.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::call::{CallState, EndReason, Side, Trust};
use viska::media::audio::AudioSink;
use viska::media::wav::WavSink;
use viska::netem::ImpairmentConfig;
use viska::phone::{
    AudioDirection, AudioEvent, CallListener, CallerInfo, FileAudio, Injection, MissedCall,
    PhoneError, PhoneListener, generate_identity,
};
use viska::proto::Reason;
use viska::{CallHandle, Phone, PhoneConfig};

/// A speech-like test signal: 200-400 Hz tone bursts with short pauses, 48 kHz mono.
fn write_test_signal(path: &Path, seconds: f64) {
    let mut sink = WavSink::create(path).expect("create wav");
    let frames = (seconds * 50.0) as usize;
    let mut n = 0usize;
    for f in 0..frames {
        let mut frame = [0i16; 960];
        let talking = (f / 25) % 4 != 3;
        for s in frame.iter_mut() {
            let t = n as f64 / 48_000.0;
            let f0 = 200.0 + 100.0 * (t * 0.7).sin();
            let v = if talking {
                0.3 * (2.0 * std::f64::consts::PI * f0 * t).sin()
                    + 0.1 * (2.0 * std::f64::consts::PI * 3.0 * f0 * t).sin()
            } else {
                0.0
            };
            *s = (v * 32767.0) as i16;
            n += 1;
        }
        sink.write_frame(&frame).expect("write");
    }
    sink.finish().expect("finish");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viska-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

struct AutoAnswer {
    answered: mpsc::Sender<(CallHandle, CallerInfo)>,
    missed: Mutex<Vec<(CallerInfo, MissedCall)>>,
}

impl AutoAnswer {
    fn new(answered: mpsc::Sender<(CallHandle, CallerInfo)>) -> Self {
        Self {
            answered,
            missed: Mutex::new(Vec::new()),
        }
    }
}

impl PhoneListener for AutoAnswer {
    fn incoming_call(&self, call: CallHandle, caller: CallerInfo) {
        call.answer().expect("answer");
        let _ = self.answered.send((call, caller));
    }
    fn missed_call(&self, caller: CallerInfo, why: MissedCall) {
        self.missed.lock().expect("lock").push((caller, why));
    }
}

#[derive(Default)]
struct Recorder {
    dtmf: Mutex<Vec<(char, u16)>>,
    data: Mutex<Vec<Vec<u8>>>,
    states: Mutex<Vec<CallState>>,
    audio: Mutex<Vec<AudioEvent>>,
    trust: Mutex<Vec<Trust>>,
}

impl CallListener for Recorder {
    fn state_changed(&self, state: CallState) {
        self.states.lock().expect("lock").push(state);
    }
    fn audio_event(&self, event: AudioEvent) {
        self.audio.lock().expect("lock").push(event);
    }
    fn dtmf(&self, digit: char, duration_ms: u16) {
        self.dtmf.lock().expect("lock").push((digit, duration_ms));
    }
    fn data(&self, data: Vec<u8>) {
        self.data.lock().expect("lock").push(data);
    }
    fn trust_changed(&self, trust: Trust) {
        self.trust.lock().expect("lock").push(trust);
    }
}

/// A callee phone that answers every call, listening on a loopback port.
struct Callee {
    phone: Phone,
    addr: std::net::SocketAddr,
    listener: Arc<AutoAnswer>,
    /// Each answered call and who placed it.
    answered: mpsc::Receiver<(CallHandle, CallerInfo)>,
}

fn listening_callee(config: PhoneConfig) -> Callee {
    let phone = Phone::new(config).expect("callee");
    let (tx, answered) = mpsc::channel();
    let listener = Arc::new(AutoAnswer::new(tx));
    phone.set_listener(listener.clone());
    let addr = phone
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    Callee {
        phone,
        addr,
        listener,
        answered,
    }
}

struct Pair {
    caller: Phone,
    /// Kept alive for the call's duration.
    _callee: Phone,
    call: CallHandle,
    answered: CallHandle,
    caller_info: CallerInfo,
}

fn connect(dir: &Path, impairment: Option<ImpairmentConfig>) -> Pair {
    connect_with(dir, impairment, |_| {})
}

/// Like [`connect`], with the callee's configuration adjusted by `callee_setup` first.
fn connect_with(
    dir: &Path,
    impairment: Option<ImpairmentConfig>,
    callee_setup: impl FnOnce(&mut PhoneConfig),
) -> Pair {
    connect_configured(dir, impairment, callee_setup, |_| {})
}

/// Like [`connect_with`], with the caller's configuration adjusted by `caller_setup` too.
fn connect_configured(
    dir: &Path,
    impairment: Option<ImpairmentConfig>,
    callee_setup: impl FnOnce(&mut PhoneConfig),
    caller_setup: impl FnOnce(&mut PhoneConfig),
) -> Pair {
    let input = dir.join("input.wav");
    write_test_signal(&input, 4.0);
    let mut callee_config = PhoneConfig::new("e2e-callee", generate_identity());
    callee_config.audio = Arc::new(FileAudio {
        input: None,
        loop_input: false,
        output: Some(dir.join("heard.wav")),
    });
    callee_config.impairment = impairment.clone();
    callee_setup(&mut callee_config);
    let mut caller_config = PhoneConfig::new("e2e-caller", generate_identity());
    caller_config.audio = Arc::new(FileAudio {
        input: Some(input),
        loop_input: true,
        output: None,
    });
    caller_config.impairment = impairment;
    caller_setup(&mut caller_config);
    let callee = listening_callee(callee_config);
    let caller = Phone::new(caller_config).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    let (answered, caller_info) = callee
        .answered
        .recv_timeout(Duration::from_secs(10))
        .expect("incoming");
    let state = call.wait_for(Duration::from_secs(10), |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    assert!(
        matches!(state, CallState::Active { .. }),
        "caller state {state:?}"
    );
    Pair {
        caller,
        _callee: callee.phone,
        call,
        answered,
        caller_info,
    }
}

fn hang_up(pair: &Pair) {
    pair.call.hangup().expect("hangup");
    // Teardown complete on both ends: final counters, finished files.
    assert!(pair.call.wait_ended(Duration::from_secs(5)), "caller ended");
    assert!(
        pair.answered.wait_ended(Duration::from_secs(5)),
        "callee ended"
    );
    assert!(matches!(
        pair.call.state(),
        CallState::Ended(EndReason::Hangup {
            by: Side::Local,
            ..
        })
    ));
    assert!(matches!(
        pair.answered.state(),
        CallState::Ended(EndReason::Hangup {
            by: Side::Remote,
            ..
        })
    ));
}

#[test]
fn clean_call_loses_nothing_and_both_ends_agree() {
    let dir = temp_dir("clean");
    let pair = connect(&dir, None);
    let recorder = Arc::new(Recorder::default());
    pair.answered.set_listener(recorder.clone());

    // The callee learns the caller's authenticated identity; the SAS agrees on both ends.
    assert_eq!(pair.caller_info.identity, pair.caller.identity());
    let sas = pair.call.sas().expect("caller SAS");
    assert_eq!(Some(sas), pair.answered.sas());
    // Both report the suite the handshake chose: the caller's first, ChaCha20-Poly1305.
    let suite = Some(viska::sframe::CipherSuite::ChaCha20Poly1305Sha256);
    assert_eq!(pair.call.snapshot().suite, suite);
    assert_eq!(pair.answered.snapshot().suite, suite);

    std::thread::sleep(Duration::from_millis(1500));
    // The application sees the rate actually sent: about the 32 kb/s target while talking
    // (the test signal pauses briefly), nothing on hold. Statistics come once a second: the
    // second report covers a second of talking.
    std::thread::sleep(Duration::from_millis(1000));
    let talking = pair.call.stats().send_bitrate_bps;
    assert!(
        (12_000..=48_000).contains(&talking),
        "send rate {talking} b/s while talking"
    );
    assert_eq!(pair.call.stats().bitrate_bps, 32_000);
    pair.call.hold().expect("hold");
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        pair.call.stats().send_bitrate_bps,
        0,
        "nothing sent on hold"
    );
    pair.call.resume().expect("resume");
    pair.call.send_dtmf("12").expect("dtmf");
    // A long press; tones too short to recognise, or longer than the wire carries, are refused.
    pair.call
        .send_dtmf_with_duration("#", Duration::from_secs(2))
        .expect("long press");
    for bad in [Duration::from_millis(39), Duration::from_secs(66)] {
        assert!(matches!(
            pair.call.send_dtmf_with_duration("1", bad),
            Err(PhoneError::InvalidConfig(_))
        ));
    }
    pair.call
        .send_data(b"{\"crm_ticket\":4711}".to_vec())
        .expect("data");
    std::thread::sleep(Duration::from_millis(1500));
    hang_up(&pair);

    let sent = pair.call.snapshot().media;
    let heard = pair.answered.snapshot().media;
    assert!(sent.frames_sent > 100, "sent {}", sent.frames_sent);
    assert_eq!(
        heard.frames_received, sent.frames_sent,
        "every frame arrived"
    );
    assert_eq!(heard.playout.lost, 0, "no frame lost: {:?}", heard.playout);
    assert_eq!(heard.decrypt_failures, 0);
    assert_eq!(sent.decrypt_failures, 0);
    // The callee reported a clean path: the caller spends nothing on FEC any more.
    assert_eq!(sent.fec_expected_loss_pct, 0);
    assert_eq!(
        *recorder.dtmf.lock().expect("lock"),
        vec![('1', 100), ('2', 100), ('#', 2000)]
    );
    assert_eq!(
        *recorder.data.lock().expect("lock"),
        vec![b"{\"crm_ticket\":4711}".to_vec()]
    );
    // The callee's WAV holds the call's audio: not silence.
    let heard_wav = viska::media::wav::WavSource::open(dir.join("heard.wav")).expect("heard");
    let energy: f64 = heard_wav
        .samples()
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / heard_wav.samples().len().max(1) as f64;
    assert!(energy.sqrt() > 1000.0, "heard audio RMS {}", energy.sqrt());
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}

/// The callee takes the frame duration and bitrate from the caller's Invite, whatever its own
/// configuration says: here the caller sends 10 ms frames at 24 kb/s to a callee configured
/// for 20 ms. Both directions then run at 100 frames a second and nothing is lost or refused.
#[test]
fn the_callee_uses_the_callers_media_parameters() {
    let dir = temp_dir("params");
    let pair = connect_configured(
        &dir,
        None,
        |_| {},
        |caller| {
            caller.opus.frame = viska::media::codec::FrameDuration::Ms10;
            caller.opus.bitrate_bps = 24_000;
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    hang_up(&pair);
    let caller = pair.call.snapshot().media;
    let callee = pair.answered.snapshot().media;
    assert!(
        caller.frames_sent > 150,
        "caller sent {}",
        caller.frames_sent
    );
    assert_eq!(callee.frames_received, caller.frames_sent);
    // 10 ms frames from the callee too: as many as the caller's, give or take the hang-up.
    assert!(
        callee.frames_sent + 5 >= caller.frames_sent
            && callee.frames_sent <= caller.frames_sent + 5,
        "callee sent {} frames, caller {}",
        callee.frames_sent,
        caller.frames_sent
    );
    for (end, m) in [("caller", &caller), ("callee", &callee)] {
        assert_eq!(m.playout.lost, 0, "{end}: {:?}", m.playout);
        assert_eq!(m.refused_by_buffer, 0, "{end}");
        assert_eq!(m.decrypt_failures + m.malformed, 0, "{end}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A signaling frame whose body does not decode is dropped and counted, one of an unknown
/// type is skipped, and the call goes on; broken framing (an unknown wire version in a frame
/// header) ends it as a protocol error.
#[test]
fn malformed_signaling_is_counted_and_broken_framing_ends_the_call() {
    let dir = temp_dir("signaling");
    let pair = connect(&dir, None);
    let recorder = Arc::new(Recorder::default());
    pair.answered.set_listener(recorder.clone());
    // A Ping whose body is 3 bytes instead of 8, then a frame of type 0x7f with 2 bytes.
    pair.call
        .inject_datagram(Injection::RawSignal(vec![1, 0x0b, 0, 3, 1, 2, 3]))
        .expect("inject");
    pair.call
        .inject_datagram(Injection::RawSignal(vec![1, 0x7f, 0, 2, 9, 9]))
        .expect("inject");
    pair.call.send_dtmf("5").expect("dtmf");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorder.dtmf.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*recorder.dtmf.lock().expect("lock"), vec![('5', 100)]);
    let counted = pair.answered.snapshot().signaling;
    assert_eq!(counted.malformed, 1, "{counted:?}");
    assert_eq!(counted.skipped_unknown, 1, "{counted:?}");
    assert!(matches!(pair.answered.state(), CallState::Active { .. }));

    pair.call
        .inject_datagram(Injection::RawSignal(vec![9, 0x0b, 0, 0]))
        .expect("inject");
    assert!(
        pair.answered.wait_ended(Duration::from_secs(5)),
        "callee ended"
    );
    assert_eq!(
        pair.answered.state(),
        CallState::Ended(EndReason::ProtocolError)
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
}

/// A callee whose audio has no clock of its own (a file, silence) captures in step with the
/// caller's frames, one wake-up serving both directions; when the caller falls silent it goes
/// on with a clock of its own, losing nothing either way.
#[test]
fn a_callee_paced_by_the_caller_keeps_sending_when_the_caller_falls_silent() {
    let dir = temp_dir("paced");
    let pair = connect(&dir, None);
    std::thread::sleep(Duration::from_secs(1));
    pair.call.mute(true).expect("mute");
    // Counters reach the handle once a second: read them after one update past the mute,
    // then two seconds later.
    std::thread::sleep(Duration::from_millis(1500));
    let before = pair.call.snapshot().media;
    std::thread::sleep(Duration::from_secs(2));
    let after = pair.call.snapshot().media;
    assert_eq!(after.frames_sent, before.frames_sent, "the caller is muted");
    let received = after.frames_received - before.frames_received;
    assert!(
        (50..=150).contains(&received),
        "the callee went on sending, 50 frames a second: {received} in 2 s (give or take a \
         second of counter updates)"
    );
    pair.call.mute(false).expect("unmute");
    std::thread::sleep(Duration::from_millis(500));
    hang_up(&pair);
    let caller = pair.call.snapshot().media;
    let callee = pair.answered.snapshot().media;
    assert_eq!(callee.frames_received, caller.frames_sent);
    // The hang-up races only the callee's frames in flight (one, or two if its thread was
    // held up for a frame period just then).
    assert!(
        caller.frames_received <= callee.frames_sent
            && callee.frames_sent - caller.frames_received <= 2,
        "the caller heard {} of the callee's {} frames",
        caller.frames_received,
        callee.frames_sent
    );
    assert_eq!(caller.playout.lost, 0, "{:?}", caller.playout);
    assert_eq!(callee.playout.lost, 0, "{:?}", callee.playout);
    let _ = std::fs::remove_dir_all(dir);
}

/// Answers every call and puts it on hold the moment it is active, before the caller's
/// first frame can arrive.
struct AnswerOnHold {
    answered: mpsc::Sender<CallHandle>,
}

impl PhoneListener for AnswerOnHold {
    fn incoming_call(&self, call: CallHandle, _caller: CallerInfo) {
        call.set_listener(Arc::new(HoldWhenActive {
            call: call.clone(),
            held: std::sync::atomic::AtomicBool::new(false),
        }));
        call.answer().expect("answer");
        let _ = self.answered.send(call);
    }
}

struct HoldWhenActive {
    call: CallHandle,
    held: std::sync::atomic::AtomicBool,
}

impl CallListener for HoldWhenActive {
    fn state_changed(&self, state: CallState) {
        if matches!(state, CallState::Active { .. })
            && !self.held.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.call.hold().expect("hold");
        }
    }
}

/// A callee reading a file that holds the call before any frame came starts capture once
/// the call is resumed, and both directions then flow without loss.
#[test]
fn a_callee_that_holds_before_the_first_frame_sends_once_resumed() {
    let dir = temp_dir("held");
    let mut callee_config = PhoneConfig::new("held-callee", generate_identity());
    callee_config.audio = Arc::new(FileAudio {
        input: None,
        loop_input: false,
        output: None,
    });
    let callee = Phone::new(callee_config).expect("callee");
    let (tx, answered) = mpsc::channel();
    callee.set_listener(Arc::new(AnswerOnHold { answered: tx }));
    let addr = callee
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let input = dir.join("input.wav");
    write_test_signal(&input, 4.0);
    let mut caller_config = PhoneConfig::new("held-caller", generate_identity());
    caller_config.audio = Arc::new(FileAudio {
        input: Some(input),
        loop_input: true,
        output: None,
    });
    let caller = Phone::new(caller_config).expect("caller");
    let call = caller.call(addr).expect("call");
    let held = answered
        .recv_timeout(Duration::from_secs(10))
        .expect("answered");
    std::thread::sleep(Duration::from_millis(1500));
    let during_hold = (call.snapshot().media, held.snapshot().media);
    assert_eq!(during_hold.1.frames_sent, 0, "nothing sent while held");
    assert_eq!(during_hold.0.frames_sent, 0, "the caller is held too");
    held.resume().expect("resume");
    std::thread::sleep(Duration::from_millis(2500));
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));
    assert!(held.wait_ended(Duration::from_secs(5)));
    let (a, b) = (call.snapshot().media, held.snapshot().media);
    assert!(
        b.frames_sent > 50,
        "the callee sent {} frames",
        b.frames_sent
    );
    assert!(
        a.frames_sent > 50,
        "the caller sent {} frames",
        a.frames_sent
    );
    assert_eq!(b.frames_received, a.frames_sent);
    assert_eq!(a.playout.lost, 0, "{:?}", a.playout);
    assert_eq!(b.playout.lost, 0, "{:?}", b.playout);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lossy_jittery_call_completes_with_concealment() {
    let dir = temp_dir("lossy");
    let impairment = ImpairmentConfig::simple(10.0, Duration::ZERO, Duration::from_millis(30), 7)
        .expect("impairment");
    let pair = connect(&dir, Some(impairment));
    std::thread::sleep(Duration::from_secs(3));
    assert!(matches!(pair.call.state(), CallState::Active { .. }));
    hang_up(&pair);
    let sent = pair.call.snapshot().media;
    let heard = pair.answered.snapshot().media;
    assert!(heard.frames_received < sent.frames_sent, "loss happened");
    assert!(
        heard.frames_received * 100 > sent.frames_sent * 80,
        "about 10% lost: {} of {}",
        heard.frames_received,
        sent.frames_sent
    );
    // The callee's reception reports sized the caller's FEC to the loss it saw (about 10 %;
    // the worst of the last three one-second reports, capped at 30 %).
    assert!(
        (5..=30).contains(&sent.fec_expected_loss_pct),
        "FEC sized for {} %",
        sent.fec_expected_loss_pct
    );
    let repaired = heard.playout.concealed + heard.playout.fec_recovered;
    assert!(repaired > 0, "loss was concealed: {:?}", heard.playout);
    assert_eq!(heard.decrypt_failures, 0);
    // What the application is told agrees with the path: loss near the 10 % put on it, the
    // listener hearing no more of it than was lost, jitter from the 30 ms put on it, a
    // measured RTT, and a MOS below that of the same call without loss.
    let stats = pair.answered.stats();
    assert_eq!(stats.packets_lost, heard.playout.lost);
    assert!(
        (3.0..=20.0).contains(&stats.loss_percent()),
        "loss {} %: {stats:?}",
        stats.loss_percent()
    );
    assert!(stats.concealed_percent() <= stats.loss_percent());
    assert!(
        stats.jitter_ms > 3.0,
        "jitter {} ms under 30 ms of jitter",
        stats.jitter_ms
    );
    let rtt = stats.rtt_ms.expect("rtt measured");
    assert!(rtt > 0.0, "rtt {rtt}");
    let clean = viska::call::CallStats {
        packets_received: stats.packets_received,
        rtt_ms: stats.rtt_ms,
        bitrate_bps: stats.bitrate_bps,
        ..Default::default()
    };
    assert!(
        stats.estimate_mos(40.0) < clean.estimate_mos(40.0),
        "MOS {} against {} without loss",
        stats.estimate_mos(40.0),
        clean.estimate_mos(40.0)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn forged_replayed_and_tampered_datagrams_are_rejected_and_counted() {
    let dir = temp_dir("forged");
    let pair = connect(&dir, None);
    std::thread::sleep(Duration::from_millis(500));
    let before = pair.answered.snapshot().media;

    // Garbage, a well-formed SFrame header under the caller's key id with a bogus body, a
    // replay and a tampered copy of real frames.
    pair.call
        .inject_datagram(Injection::Raw(vec![0xff; 3]))
        .expect("inject");
    pair.call
        .inject_datagram(Injection::Raw(
            // Config byte: KID 0 inline, 8-byte CTR far ahead of the stream; then junk.
            [
                &[0x0fu8][..],
                &(1u64 << 40).to_be_bytes()[..],
                &[0x55; 40][..],
            ]
            .concat(),
        ))
        .expect("inject");
    for _ in 0..3 {
        pair.call
            .inject_datagram(Injection::ReplayLast)
            .expect("inject");
        pair.call
            .inject_datagram(Injection::TamperNext)
            .expect("inject");
        std::thread::sleep(Duration::from_millis(60));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = pair.answered.snapshot().media;
    assert!(
        matches!(pair.answered.state(), CallState::Active { .. }),
        "call goes on"
    );
    assert!(
        after.frames_received > before.frames_received + 20,
        "media still flows"
    );
    assert!(after.replays_rejected >= 3, "replays: {after:?}");
    assert!(
        after.decrypt_failures >= 4,
        "forged + tampered rejected: {after:?}"
    );
    assert!(after.malformed >= 1, "garbage counted: {after:?}");
    hang_up(&pair);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vanished_peer_ends_the_call_as_connection_lost() {
    let dir = temp_dir("vanish");
    let pair = connect(&dir, None);
    std::thread::sleep(Duration::from_millis(300));
    let Pair {
        caller,
        call,
        answered,
        ..
    } = pair;
    // The caller's phone goes away without hanging up (crash, network gone).
    caller.simulate_crash();
    assert!(
        answered.wait_ended(Duration::from_secs(15)),
        "callee noticed"
    );
    assert!(
        matches!(
            answered.state(),
            CallState::Ended(EndReason::ConnectionLost)
        ),
        "{:?}",
        answered.state()
    );
    drop(call);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shutting_down_a_phone_mid_call_hangs_up_first() {
    let dir = temp_dir("shutdown");
    let pair = connect(&dir, None);
    let recorder = Arc::new(Recorder::default());
    pair.answered.set_listener(recorder.clone());
    std::thread::sleep(Duration::from_millis(500));
    let Pair {
        caller,
        call,
        answered,
        ..
    } = pair;
    caller.shutdown();
    // The caller's call was torn down before the phone stopped: ended, with its reason.
    assert!(call.is_ended());
    assert_eq!(
        call.state(),
        CallState::Ended(EndReason::Hangup {
            by: Side::Local,
            reason: Reason::Normal
        })
    );
    // The peer was told (not left to time out) and its listener heard the end.
    assert!(answered.wait_ended(Duration::from_secs(3)), "callee ended");
    let ended = CallState::Ended(EndReason::Hangup {
        by: Side::Remote,
        reason: Reason::Normal,
    });
    assert_eq!(answered.state(), ended);
    assert_eq!(recorder.states.lock().expect("lock").last(), Some(&ended));
    // What the callee heard was written out completely: the file was finished (its header
    // gives the length), holds whole 20 ms frames, and covers most of the half second of
    // media (playout starts a frame or two after the first packet).
    let heard = viska::media::wav::WavSource::open(dir.join("heard.wav")).expect("heard");
    let len = heard.samples().len();
    assert!(len >= 48_000 * 3 / 10, "{len} samples heard");
    assert_eq!(len % 960, 0, "{len} samples: not whole frames");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_phone_at_its_call_limit_refuses_calls_as_busy() {
    let dir = temp_dir("busy");
    let mut callee_config = PhoneConfig::new("busy-callee", generate_identity());
    callee_config.max_calls = 1;
    let Callee {
        phone: callee,
        addr,
        listener,
        answered: rx,
    } = listening_callee(callee_config);
    // Listening twice is refused.
    assert!(matches!(
        callee.listen("127.0.0.1:0".parse().expect("addr")),
        Err(PhoneError::AlreadyListening(a)) if a == addr
    ));

    let first = Phone::new(PhoneConfig::new("first", generate_identity())).expect("first");
    let call = first.call(addr).expect("call");
    let (answered, _) = rx.recv_timeout(Duration::from_secs(10)).expect("incoming");
    assert!(matches!(
        call.wait_for(Duration::from_secs(10), |s| matches!(
            s,
            CallState::Active { .. }
        )),
        CallState::Active { .. }
    ));
    assert_eq!(callee.calls().len(), 1);

    let mut second_config = PhoneConfig::new("second", generate_identity());
    second_config.max_calls = 1;
    let second = Phone::new(second_config).expect("second");
    let second_identity = second.identity();
    // The second phone listens: its call leaves from its listening address.
    let second_addr = second
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let refused = second.call(addr).expect("call");
    let states = Arc::new(Recorder::default());
    refused.set_listener(states.clone());
    assert!(refused.wait_ended(Duration::from_secs(10)), "refused");
    assert_eq!(
        refused.state(),
        CallState::Ended(EndReason::Busy { by: Side::Remote })
    );
    // Busy instead of ringing: the caller never heard a ring.
    let seen = states.states.lock().expect("lock").clone();
    assert!(!seen.contains(&CallState::Alerting), "{seen:?}");
    // The callee's application hears whom it missed, authenticated, and from where.
    let missed = listener.missed.lock().expect("lock").clone();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].0.identity, second_identity);
    assert_eq!(missed[0].0.remote_addr, second_addr);
    assert_eq!(missed[0].1, MissedCall::Busy);
    // The first call was not disturbed; the busy one never counted.
    assert!(matches!(answered.state(), CallState::Active { .. }));
    assert_eq!(callee.calls().len(), 1);

    // The caller's own limit: while one call is still connecting (to an address that never
    // answers), another is refused at once; giving up on the first frees the place.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent peer");
    let silent_addr = silent.local_addr().expect("addr");
    let connecting = second.call(silent_addr).expect("call");
    assert!(matches!(
        second.call(addr),
        Err(PhoneError::TooManyCalls { limit: 1 })
    ));
    connecting.hangup().expect("give up");
    assert!(connecting.wait_ended(Duration::from_secs(2)), "cancelled");
    assert_eq!(
        connecting.state(),
        CallState::Ended(EndReason::Cancelled { by: Side::Local })
    );
    assert!(second.call(silent_addr).is_ok());
    call.hangup().expect("hangup");
    assert!(answered.wait_ended(Duration::from_secs(5)));
    let _ = std::fs::remove_dir_all(dir);
}

/// Audio end points whose opening takes `delay` from the `slow_from`-th call on (counting
/// from 0), as a sound device's can; silence in, nothing out.
struct SlowToOpen {
    opened: std::sync::atomic::AtomicUsize,
    slow_from: usize,
    delay: Duration,
}

impl viska::phone::AudioFactory for SlowToOpen {
    fn open_source(
        &self,
        _frame_samples: usize,
    ) -> Result<Box<dyn viska::media::audio::AudioSource>, viska::media::audio::AudioIoError> {
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.slow_from {
            std::thread::sleep(self.delay);
        }
        Ok(Box::new(viska::phone::SilenceSource))
    }
    fn open_sink(
        &self,
        _frame_samples: usize,
    ) -> Result<Box<dyn AudioSink>, viska::media::audio::AudioIoError> {
        Ok(Box::new(viska::phone::DiscardSink))
    }
}

/// A second call whose audio takes 800 ms to open does not hold up the first call's media on
/// the same phone: the first caller keeps hearing the callee's frames on time (before, the
/// phone's thread waited for the device, and the first caller had 42 frames late and
/// concealed).
#[test]
fn a_call_whose_audio_is_slow_to_open_does_not_stall_the_phones_other_calls() {
    let mut config = PhoneConfig::new("slow-open", generate_identity());
    config.max_calls = 2;
    config.audio = Arc::new(SlowToOpen {
        opened: std::sync::atomic::AtomicUsize::new(0),
        slow_from: 1,
        delay: Duration::from_millis(800),
    });
    let callee = listening_callee(config);
    // A new phone calls the callee, which answers; returned once the call is active.
    let call_in = |name: &str| {
        let phone = Phone::new(PhoneConfig::new(name, generate_identity())).expect("phone");
        let call = phone.call(callee.addr).expect("call");
        callee
            .answered
            .recv_timeout(Duration::from_secs(10))
            .expect("incoming");
        let state = call.wait_for(Duration::from_secs(10), |s| {
            matches!(s, CallState::Active { .. })
        });
        assert!(
            matches!(state, CallState::Active { .. }),
            "{name}: {state:?}"
        );
        (phone, call)
    };
    let (_first, call) = call_in("first");
    // Counters reach the handle once a second: settle, then read them.
    std::thread::sleep(Duration::from_millis(2100));
    let before = call.snapshot().media.playout;
    let (_second, other) = call_in("second");
    std::thread::sleep(Duration::from_millis(2100));
    let after = call.snapshot().media.playout;
    let received = after.received - before.received;
    let concealed = after.concealed - before.concealed;
    let late = after.late - before.late;
    eprintln!(
        "first call meanwhile: {received} frames received, {concealed} concealed, {late} late"
    );
    assert!(
        concealed + late <= 3,
        "{concealed} frames concealed and {late} late while the second call opened its audio"
    );
    // Counters reach the handle once a second, so this window holds 2-3 s of frames.
    assert!(received >= 50, "the first call went on: {received} frames");
    other.hangup().expect("hangup");
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));
}

#[test]
fn audio_that_cannot_start_ends_the_call_with_a_reason() {
    let dir = temp_dir("noaudio");
    let mut callee_config = PhoneConfig::new("mute-callee", generate_identity());
    callee_config.audio = Arc::new(FileAudio {
        input: Some(dir.join("does-not-exist.wav")),
        loop_input: false,
        output: None,
    });
    let Callee {
        phone: _callee,
        addr,
        listener,
        answered: rx,
    } = listening_callee(callee_config);
    let caller = Phone::new(PhoneConfig::new("caller", generate_identity())).expect("caller");
    let call = caller.call(addr).expect("call");
    assert!(call.wait_ended(Duration::from_secs(10)), "ended");
    // The caller is told the callee could not take the call, and why.
    assert_eq!(
        call.state(),
        CallState::Ended(EndReason::Rejected {
            by: Side::Remote,
            reason: Reason::Error
        })
    );
    // The callee never rang; its application hears of the failed call and the cause.
    assert!(rx.try_recv().is_err());
    let missed = listener.missed.lock().expect("lock").clone();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].0.identity, caller.identity());
    assert!(
        matches!(&missed[0].1, MissedCall::AudioFailed { error } if error.contains("input")),
        "{missed:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn switching_the_device_of_file_audio_is_refused_and_the_call_goes_on() {
    let dir = temp_dir("switch");
    let pair = connect(&dir, None);
    let recorder = Arc::new(Recorder::default());
    pair.call.set_listener(recorder.clone());
    pair.call
        .switch_output_device(Some("headset"))
        .expect("sent");
    pair.call.switch_input_device(None).expect("sent");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while recorder.audio.lock().expect("lock").len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both refused (file audio has no devices), in whichever order the two switches finished.
    let events = recorder.audio.lock().expect("lock").clone();
    let failed = |d: AudioDirection| {
        events
            .iter()
            .filter(|e| matches!(e, AudioEvent::SwitchFailed { direction, .. } if *direction == d))
            .count()
    };
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(failed(AudioDirection::Output), 1, "{events:?}");
    assert_eq!(failed(AudioDirection::Input), 1, "{events:?}");
    assert!(matches!(pair.call.state(), CallState::Active { .. }));
    hang_up(&pair);
    assert!(matches!(
        pair.call.switch_input_device(None),
        Err(PhoneError::CallEnded)
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_recorded_call_is_an_ogg_opus_file_of_the_conversation() {
    let dir = temp_dir("record");
    let recording = dir.join("call.opus");
    let pair = connect_with(&dir, None, |callee| {
        callee.recording = Some(recording.clone());
    });
    std::thread::sleep(Duration::from_secs(2));
    // Teardown, which hang_up waits for, includes finishing the recording on its thread.
    hang_up(&pair);

    let info = std::process::Command::new("opusinfo")
        .arg(&recording)
        .output()
        .expect("opusinfo (opus-tools, installed by scripts/setup-deps test)");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(!text.to_lowercase().contains("warning"), "{text}");
    let decoded = dir.join("decoded.wav");
    let status = std::process::Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(&recording)
        .arg(&decoded)
        .status()
        .expect("opusdec");
    assert!(status.success());
    let heard = viska::media::wav::WavSource::open(&decoded).expect("decoded");
    let seconds = heard.samples().len() as f64 / 48_000.0;
    // The call was up for about two seconds (the recording starts with the media).
    assert!((1.5..3.5).contains(&seconds), "{seconds} s recorded");
    let rms = (heard
        .samples()
        .iter()
        .map(|&s| f64::from(s).powi(2))
        .sum::<f64>()
        / heard.samples().len().max(1) as f64)
        .sqrt();
    assert!(
        rms > 1000.0,
        "the caller's voice is in the recording: RMS {rms}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Connections that complete QUIC but never authenticate hold a place each; one source may
/// hold only its share, every source together only the total, and a place comes back when
/// its connection ends or its caller authenticates.
#[test]
fn one_source_cannot_hold_every_place_for_unauthenticated_connections() {
    use viska::phone::RefusedConnections;
    use viska::transport::{LocalCertificate, QuicEndpoint, TransportConfig};

    let mut config = PhoneConfig::new("places", generate_identity());
    config.max_handshakes = 3;
    config.max_handshakes_per_source = 2;
    let callee = listening_callee(config);
    let addr = callee.addr;
    // An authenticated call holds no place: three calls from one source (127.0.0.1) with
    // a share of two get in one after another, and stay up through what follows.
    let callers: Vec<(Phone, CallHandle)> = (0..3)
        .map(|i| {
            let phone = Phone::new(PhoneConfig::new(format!("places-{i}"), generate_identity()))
                .expect("caller");
            let call = phone.call(addr).expect("call");
            let state = call.wait_for(Duration::from_secs(10), |s| {
                matches!(s, CallState::Active { .. }) || s.is_ended()
            });
            assert!(
                matches!(state, CallState::Active { .. }),
                "call {i}: {state:?}"
            );
            (phone, call)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A client that speaks QUIC (with a valid address: the callee sends it a Retry first)
    // and then nothing: no signaling stream, no end-to-end handshake.
    let client = |ip: &str| {
        let cert = Arc::new(LocalCertificate::generate().expect("cert"));
        let bind = std::net::SocketAddr::new(ip.parse().expect("ip"), 0);
        rt.block_on(async { QuicEndpoint::bind(bind, cert, &TransportConfig::default()) })
            .expect("bind")
    };
    let (a, b, c) = (
        client("127.0.0.1"),
        client("127.0.0.2"),
        client("127.0.0.3"),
    );
    let a1 = rt.block_on(a.connect(addr)).expect("first from a");
    let _a2 = rt.block_on(a.connect(addr)).expect("second from a");
    assert!(
        rt.block_on(a.connect(addr)).is_err(),
        "a third from one source is refused"
    );
    let _b1 = rt
        .block_on(b.connect(addr))
        .expect("another source still gets in");
    assert!(
        rt.block_on(c.connect(addr)).is_err(),
        "all places taken: refused"
    );
    let refused: RefusedConnections = callee.phone.refused_connections();
    assert_eq!(
        (refused.all_places_taken, refused.source_places_taken),
        (1, 1)
    );
    assert_eq!(callee.phone.calls().len(), 3, "none of them is a call");
    // A phone refused this way tells its application so, not that the connection was lost.
    let refused_caller =
        Phone::new(PhoneConfig::new("places-x", generate_identity())).expect("caller");
    let call = refused_caller.call(addr).expect("call");
    assert!(
        call.wait_ended(Duration::from_secs(10)),
        "refused call ends"
    );
    assert_eq!(call.state(), CallState::Ended(EndReason::ConnectionRefused));
    assert_eq!(callee.phone.refused_connections().all_places_taken, 2);

    // A connection that ends gives its place back.
    a1.close("gone");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let _a3 = loop {
        match rt.block_on(a.connect(addr)) {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "place not freed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    for (_, call) in &callers {
        assert!(
            matches!(call.state(), CallState::Active { .. }),
            "the calls went on"
        );
    }
}

/// Waits until the call is active; fails on anything else.
fn wait_active(call: &CallHandle) {
    let state = call.wait_for(Duration::from_secs(10), |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    assert!(matches!(state, CallState::Active { .. }), "{state:?}");
}

/// `verify` in a phone: the user compares the SAS and marks the peer verified; the call says
/// so at once, and the phone trusts that identity in its later calls. A call to a known
/// contact is verified or reports a changed key.
#[test]
fn a_verified_peer_stays_verified_and_an_expected_identity_is_checked() {
    let callee = listening_callee(PhoneConfig::new("vf-callee", generate_identity()));
    let callee_identity = callee.phone.identity();
    let caller = Phone::new(PhoneConfig::new("vf-caller", generate_identity())).expect("caller");

    // Nothing to verify before the keys: a call to a socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let pending = caller
        .call(silent.local_addr().expect("addr"))
        .expect("call");
    assert!(matches!(
        pending.mark_verified(),
        Err(PhoneError::InvalidState { .. })
    ));
    pending.hangup().expect("cancel");

    let call = caller.call(callee.addr).expect("call");
    let recorder = Arc::new(Recorder::default());
    call.set_listener(recorder.clone());
    wait_active(&call);
    let (answered, info) = callee
        .answered
        .recv_timeout(Duration::from_secs(10))
        .expect("incoming");
    assert_eq!(info.trust, Trust::Unverified);
    assert_eq!(call.snapshot().trust, Some(Trust::Unverified));
    assert!(caller.verified_peers().is_empty());

    call.mark_verified().expect("verify");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call.snapshot().trust != Some(Trust::Verified) {
        assert!(std::time::Instant::now() < deadline, "trust not updated");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*recorder.trust.lock().expect("lock"), vec![Trust::Verified]);
    assert_eq!(caller.verified_peers(), vec![callee_identity]);
    assert_eq!(
        answered.snapshot().trust,
        Some(Trust::Unverified),
        "the callee did not verify"
    );
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));

    // The next call between the same two phones starts verified on the caller's side.
    let again = caller.call(callee.addr).expect("call");
    wait_active(&again);
    assert_eq!(again.snapshot().trust, Some(Trust::Verified));
    let (_, info) = callee
        .answered
        .recv_timeout(Duration::from_secs(10))
        .expect("incoming");
    assert_eq!(info.trust, Trust::Unverified);
    again.hangup().expect("hangup");
    assert!(again.wait_ended(Duration::from_secs(5)));

    // A new phone that was given the verified identities (saved by the application) trusts
    // the callee from the start; one that expects another identity is told the key changed.
    let mut restored = PhoneConfig::new("vf-again", generate_identity());
    restored.verified_peers = caller.verified_peers();
    let restored = Phone::new(restored).expect("phone");
    let call = restored.call(callee.addr).expect("call");
    wait_active(&call);
    assert_eq!(call.snapshot().trust, Some(Trust::Verified));
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));

    let call = caller
        .call_expecting(callee.addr, generate_identity().public())
        .expect("call");
    wait_active(&call);
    assert_eq!(call.snapshot().trust, Some(Trust::KeyChanged));
    // The user checks the new key (compares the SAS) and accepts it.
    call.mark_verified().expect("verify");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while call.snapshot().trust != Some(Trust::Verified) {
        assert!(std::time::Instant::now() < deadline, "trust not updated");
        std::thread::sleep(Duration::from_millis(10));
    }
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));

    let fresh = Phone::new(PhoneConfig::new("vf-pin", generate_identity())).expect("phone");
    let call = fresh
        .call_expecting(callee.addr, callee_identity)
        .expect("call");
    wait_active(&call);
    assert_eq!(call.snapshot().trust, Some(Trust::Verified));
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));
}

/// A microphone-like source (a clock of its own) that counts its reads.
struct CountingMic(Arc<std::sync::atomic::AtomicU64>);

impl viska::media::audio::AudioSource for CountingMic {
    fn read_frame(
        &mut self,
        out: &mut [i16],
    ) -> Result<viska::media::audio::SourceStatus, viska::media::audio::AudioIoError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for (i, s) in out.iter_mut().enumerate() {
            *s = if i % 48 < 24 { 3000 } else { -3000 };
        }
        Ok(viska::media::audio::SourceStatus::Audio)
    }
}

struct CountingMicFactory(Arc<std::sync::atomic::AtomicU64>);

impl viska::phone::AudioFactory for CountingMicFactory {
    fn open_source(
        &self,
        _frame_samples: usize,
    ) -> Result<Box<dyn viska::media::audio::AudioSource>, viska::media::audio::AudioIoError> {
        Ok(Box::new(CountingMic(self.0.clone())))
    }
    fn open_sink(
        &self,
        _frame_samples: usize,
    ) -> Result<Box<dyn AudioSink>, viska::media::audio::AudioIoError> {
        Ok(Box::new(viska::phone::DiscardSink))
    }
}

/// On hold a microphone is still drained at its own pace (what it captures is thrown away):
/// left unread it would back up, and the first frames after the resume would carry what the
/// agent said just after pressing hold.
#[test]
fn a_microphone_is_drained_on_hold_and_nothing_is_sent() {
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let callee = listening_callee(PhoneConfig::new("mic-callee", generate_identity()));
    let mut config = PhoneConfig::new("mic-caller", generate_identity());
    config.audio = Arc::new(CountingMicFactory(reads.clone()));
    let caller = Phone::new(config).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    wait_active(&call);
    std::thread::sleep(Duration::from_millis(300));
    call.hold().expect("hold");
    // Counters reach the snapshot once a second: the next one is taken on hold.
    std::thread::sleep(Duration::from_millis(1200));
    let (reads_before, sent_before) = (
        reads.load(std::sync::atomic::Ordering::SeqCst),
        call.snapshot().media.frames_sent,
    );
    assert!(sent_before > 0, "frames were sent before the hold");
    std::thread::sleep(Duration::from_millis(1200));
    let read_on_hold = reads.load(std::sync::atomic::Ordering::SeqCst) - reads_before;
    // 60 frame periods; a loaded machine may run a few late.
    assert!(read_on_hold >= 30, "{read_on_hold} reads in 1.2 s on hold");
    assert_eq!(
        call.snapshot().media.frames_sent,
        sent_before,
        "nothing sent on hold"
    );
    call.hangup().expect("hangup");
    assert!(call.wait_ended(Duration::from_secs(5)));
}

/// A call listener that blocks the phone's thread once, as a badly written application (or
/// a frozen process) would.
struct BlocksOnce {
    blocked: std::sync::atomic::AtomicBool,
    for_how_long: Duration,
}

impl CallListener for BlocksOnce {
    fn stats(&self, _stats: viska::call::CallStats) {
        if !self.blocked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(self.for_how_long);
        }
    }
}

/// After the caller's thread stalled for 1.5 s, it does not send the missed frames in a burst
/// (the callee, which played on, would get them all too late): it skips ahead, and the callee
/// takes the gap as a pause.
#[test]
fn a_stalled_phone_skips_ahead_instead_of_sending_a_burst() {
    let dir = temp_dir("stall");
    let pair = connect(&dir, None);
    std::thread::sleep(Duration::from_millis(300));
    pair.call.set_listener(Arc::new(BlocksOnce {
        blocked: std::sync::atomic::AtomicBool::new(false),
        for_how_long: Duration::from_millis(1500),
    }));
    // The first statistics report (about a second into the call) blocks; then two more
    // seconds of call.
    std::thread::sleep(Duration::from_millis(3500));
    hang_up(&pair);
    let sent = pair.call.snapshot().media;
    let heard = pair.answered.snapshot().media;
    assert!(
        sent.frames_skipped >= 60,
        "the stall's periods were skipped: {sent:?}"
    );
    // Before, the 75 missed frames came in one burst: the callee's buffer overflowed and
    // resynchronised (44 frames dropped) and then sat at its 400 ms maximum delay.
    assert!(
        heard.playout.late + heard.refused_by_buffer + heard.playout.overflow_dropped <= 5,
        "late or dropped at the callee: {:?}",
        heard.playout
    );
    assert_eq!(heard.playout.resyncs, 0, "{:?}", heard.playout);
    assert_eq!(heard.decrypt_failures, 0);
    let _ = std::fs::remove_dir_all(dir);
}

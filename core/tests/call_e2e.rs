//! End-to-end calls between phones over real QUIC sockets on loopback: smoke tests of the
//! driver, the listener thread, admission and the test hooks. The media policy itself (holds,
//! stalls, drift, FEC, markers, busy) is tested on a virtual clock in
//! `core/session/tests/scenarios.rs`; these tests wait on conditions and assert no timing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::call::{CallState, EndReason, SecurityEvent, Side, Trust};
use viska::media::audio::AudioSink;
use viska::media::wav::WavSink;
use viska::netem::ImpairmentConfig;
use viska::phone::{
    AppAudio, AppAudioConfig, AudioDirection, AudioEvent, CallerInfo, FileAudio, Injection,
    MissedCall, PhoneError, generate_identity,
};
use viska::proto::{CallId, DtmfEvent, Reason};
use viska::{CallHandle, CallUpdate, Phone, PhoneConfig, PhoneConfigBuilder, PhoneEvent};

const WAIT: Duration = Duration::from_secs(10);

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

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn config(name: &str) -> PhoneConfigBuilder {
    PhoneConfig::builder(name, generate_identity())
}

/// Waits until `f` holds or `WAIT` passes; returns whether it held.
fn eventually(f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// What a phone's listener saw.
#[derive(Default)]
struct PhoneLog {
    missed: Mutex<Vec<(CallerInfo, MissedCall)>>,
    security: Mutex<Vec<(SocketAddr, SecurityEvent, u64)>>,
    closed: Mutex<bool>,
}

/// A phone that answers every incoming call (optionally) and logs the rest.
struct Callee {
    phone: Phone,
    addr: SocketAddr,
    log: Arc<PhoneLog>,
    incoming: mpsc::Receiver<(CallHandle, CallerInfo)>,
}

fn callee(builder: PhoneConfigBuilder, answer: bool) -> Callee {
    let phone = Phone::new(builder.build().expect("config")).expect("callee");
    let (tx, incoming) = mpsc::channel();
    let log = Arc::new(PhoneLog::default());
    let seen = Arc::clone(&log);
    let tx = Mutex::new(tx);
    phone.set_listener(Arc::new(move |event: PhoneEvent| match event {
        PhoneEvent::IncomingCall { call, caller } => {
            if answer {
                call.answer().expect("answer");
            }
            let _ = tx.lock().expect("lock").send((call, caller));
        }
        PhoneEvent::MissedCall { caller, why } => {
            seen.missed.lock().expect("lock").push((caller, why))
        }
        PhoneEvent::Security {
            source,
            event,
            suppressed,
        } => seen
            .security
            .lock()
            .expect("lock")
            .push((source, event, suppressed)),
        PhoneEvent::Closed => *seen.closed.lock().expect("lock") = true,
        _ => {}
    }));
    let addr = phone.listen(loopback()).expect("listen");
    Callee {
        phone,
        addr,
        log,
        incoming,
    }
}

/// Every event of one call, in order.
#[derive(Default)]
struct CallLog {
    updates: Mutex<Vec<(CallId, CallUpdate)>>,
}

impl CallLog {
    fn listen(call: &CallHandle) -> Arc<Self> {
        let log = Arc::new(Self::default());
        let seen = Arc::clone(&log);
        call.set_listener(Arc::new(move |id: CallId, update: CallUpdate| {
            seen.updates.lock().expect("lock").push((id, update));
        }));
        log
    }

    fn states(&self) -> Vec<CallState> {
        self.updates
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(_, u)| match u {
                CallUpdate::StateChanged(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn has(&self, f: impl Fn(&CallUpdate) -> bool) -> bool {
        self.updates.lock().expect("lock").iter().any(|(_, u)| f(u))
    }
}

struct Pair {
    caller: Phone,
    callee: Callee,
    call: CallHandle,
    answered: CallHandle,
    caller_info: CallerInfo,
}

/// A caller playing a test signal to a callee that records what it hears.
fn connect(
    dir: &Path,
    adjust: impl FnOnce(
        PhoneConfigBuilder,
        PhoneConfigBuilder,
    ) -> (PhoneConfigBuilder, PhoneConfigBuilder),
) -> Pair {
    let input = dir.join("input.wav");
    write_test_signal(&input, 4.0);
    let callee_config = config("e2e-callee").audio(Arc::new(FileAudio {
        input: None,
        loop_input: false,
        output: Some(dir.join("heard.wav")),
    }));
    let caller_config = config("e2e-caller").audio(Arc::new(FileAudio {
        input: Some(input),
        loop_input: true,
        output: None,
    }));
    let (callee_config, caller_config) = adjust(callee_config, caller_config);
    let callee = callee(callee_config, true);
    let caller = Phone::new(caller_config.build().expect("config")).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    let (answered, caller_info) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    let state = call.wait_for(WAIT, |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    assert!(
        matches!(state, CallState::Active { .. }),
        "caller state {state:?}"
    );
    Pair {
        caller,
        callee,
        call,
        answered,
        caller_info,
    }
}

fn same(a: PhoneConfigBuilder, b: PhoneConfigBuilder) -> (PhoneConfigBuilder, PhoneConfigBuilder) {
    (a, b)
}

fn hang_up(pair: &Pair) {
    pair.call.hangup().expect("hangup");
    // Teardown complete on both ends: final counters, finished files.
    assert!(pair.call.wait_ended(WAIT), "caller ended");
    assert!(pair.answered.wait_ended(WAIT), "callee ended");
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

/// Waits until the call has sent at least `frames` more media frames.
fn let_media_flow(call: &CallHandle, frames: u64) {
    let start = call.snapshot().media.frames_sent;
    assert!(
        eventually(|| call.snapshot().media.frames_sent >= start + frames),
        "media did not flow"
    );
}

#[test]
fn clean_call_loses_nothing_and_both_ends_agree() {
    let dir = temp_dir("clean");
    let pair = connect(&dir, same);
    let log = CallLog::listen(&pair.answered);
    // The callee learns the caller's authenticated identity; the SAS and the call id agree.
    assert_eq!(pair.caller_info.identity, pair.caller.identity());
    let sas = pair.call.sas().expect("caller SAS");
    assert_eq!(Some(sas), pair.answered.sas());
    assert_eq!(pair.call.id(), pair.answered.id());
    assert_eq!(pair.answered.snapshot().call_id, pair.call.id());
    // The default: the 80-bit-tag suite, first in every phone's list.
    let suite = Some(viska::sframe::CipherSuite::AesCtr128HmacSha256_80);
    assert_eq!(pair.call.snapshot().suite, suite);
    assert_eq!(pair.answered.snapshot().suite, suite);
    assert_eq!(pair.caller.calls().len(), 1);

    let_media_flow(&pair.call, 100);
    pair.call.send_dtmf("12").expect("dtmf");
    pair.call
        .send_dtmf_with_duration("#", Duration::from_secs(2))
        .expect("long press");
    for bad in [Duration::from_millis(39), Duration::from_secs(66)] {
        assert!(matches!(
            pair.call.send_dtmf_with_duration("1", bad),
            Err(PhoneError::DtmfDuration(_))
        ));
    }
    assert!(matches!(
        pair.call.send_dtmf("1x"),
        Err(PhoneError::InvalidDtmf(_))
    ));
    pair.call
        .send_data(b"{\"crm_ticket\":4711}".to_vec())
        .expect("data");
    assert!(eventually(
        || log.has(|u| matches!(u, CallUpdate::Data { .. }))
    ));
    // A burst of call data (a CTI desktop syncing a record) is queued, not a reason to end
    // the call; all of it arrives, in order.
    for n in 0..200u32 {
        let mut data = n.to_be_bytes().to_vec();
        data.resize(100, 0x5a);
        pair.call.send_data(data).expect("burst");
    }
    let burst = || {
        log.updates
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(_, u)| match u {
                CallUpdate::Data { data, .. } if data.len() == 100 => data
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                _ => None,
            })
            .collect::<Vec<u32>>()
    };
    assert!(
        eventually(|| burst().len() == 200),
        "{} arrived",
        burst().len()
    );
    assert_eq!(burst(), (0..200).collect::<Vec<u32>>());
    assert!(matches!(pair.call.state(), CallState::Active { .. }));
    assert!(eventually(|| log.has(|u| matches!(u, CallUpdate::Stats(_)))));
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
    let updates = log.updates.lock().expect("lock");
    // Every event carries the call's id.
    assert!(updates.iter().all(|(id, _)| *id == pair.call.id()));
    let dtmf: Vec<_> = updates
        .iter()
        .filter_map(|(_, u)| match u {
            CallUpdate::Dtmf {
                event, duration_ms, ..
            } => Some((*event, *duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dtmf,
        vec![
            (DtmfEvent::Digit1, 100),
            (DtmfEvent::Digit2, 100),
            (DtmfEvent::Pound, 2000)
        ]
    );
    drop(updates);
    // The replay on set_listener gave the state before anything newer.
    let states = log.states();
    assert!(
        matches!(states.first(), Some(CallState::Active { .. })),
        "{states:?}"
    );
    assert!(
        matches!(states.last(), Some(CallState::Ended(_))),
        "{states:?}"
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
    let _ = std::fs::remove_dir_all(dir);
}

/// A listener that sleeps 2 s in every callback and one that panics: the call carries on
/// without losing a frame and both ends see it end.
#[test]
fn slow_and_panicking_listeners_delay_no_audio() {
    let dir = temp_dir("listeners");
    let pair = connect(&dir, same);
    pair.call
        .set_listener(Arc::new(|_: CallId, update: CallUpdate| {
            if matches!(update, CallUpdate::Stats(_)) {
                panic!("a listener bug");
            }
        }));
    let slow = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&slow);
    pair.answered
        .set_listener(Arc::new(move |_: CallId, update: CallUpdate| {
            std::thread::sleep(Duration::from_secs(2));
            seen.lock().expect("lock").push(update);
        }));
    let before = pair.answered.snapshot().media.playout;
    let_media_flow(&pair.call, 150);
    let after = pair.answered.snapshot().media.playout;
    assert!(after.received >= before.received + 100, "{after:?}");
    assert_eq!(after.lost, before.lost, "{after:?}");
    assert_eq!(after.concealed, before.concealed, "{after:?}");
    let (_, panics) = pair.caller.listener_trouble();
    assert!(panics >= 1, "the panic was caught");
    hang_up(&pair);
    // The slow listener still gets the end, after its earlier events.
    assert!(
        eventually(|| slow
            .lock()
            .expect("lock")
            .iter()
            .any(|u| matches!(u, CallUpdate::StateChanged(CallState::Ended(_)))))
            || {
                // Its queue holds 2 s per event: give it the time it asks for.
                std::thread::sleep(Duration::from_secs(20));
                slow.lock()
                    .expect("lock")
                    .iter()
                    .any(|u| matches!(u, CallUpdate::StateChanged(CallState::Ended(_))))
            }
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A phone dropped from inside its own listener: nothing blocks, the peer is told.
#[test]
fn a_phone_dropped_from_its_own_listener_closes_cleanly() {
    let callee = callee(config("drop-callee"), false);
    let caller = Phone::new(config("drop-caller").build().expect("config")).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    let slot = Arc::new(Mutex::new(Some(caller)));
    let held = Arc::clone(&slot);
    let (dropped_tx, dropped_rx) = mpsc::channel();
    // Runs on the caller phone's own listener thread.
    call.set_listener(Arc::new(move |_: CallId, update: CallUpdate| {
        if matches!(update, CallUpdate::StateChanged(CallState::Alerting)) {
            let phone = held.lock().expect("lock").take();
            drop(phone);
            let _ = dropped_tx.send(());
        }
    }));
    dropped_rx
        .recv_timeout(WAIT)
        .expect("dropped inside its listener");
    assert!(slot.lock().expect("lock").is_none());
    let (ringing, _) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert!(ringing.wait_ended(WAIT), "the callee was told");
    assert_eq!(
        ringing.state(),
        CallState::Ended(EndReason::Cancelled { by: Side::Remote })
    );
    assert!(call.wait_ended(WAIT));
}

#[test]
fn a_lossy_jittery_call_completes_with_concealment() {
    let dir = temp_dir("lossy");
    let impairment =
        ImpairmentConfig::simple(5.0, Duration::from_millis(20), Duration::from_millis(20), 7)
            .expect("impairment");
    let pair = connect(&dir, |a, b| {
        (a.impairment(impairment.clone()), b.impairment(impairment))
    });
    let_media_flow(&pair.call, 200);
    hang_up(&pair);
    let heard = pair.answered.snapshot();
    assert!(heard.media.playout.lost > 0, "{:?}", heard.media.playout);
    assert!(
        heard.stats.loss_percent() > 1.0 && heard.stats.loss_percent() < 15.0,
        "{:?}",
        heard.stats
    );
    assert!(
        heard.stats.rtt_ms.is_some_and(|rtt| rtt > 40.0),
        "{:?}",
        heard.stats
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Forged, replayed and tampered datagrams are refused, counted, and reported as security
/// events naming the participant and the reason; the call goes on.
#[test]
fn forged_replayed_and_tampered_datagrams_are_rejected_counted_and_reported() {
    let dir = temp_dir("forged");
    let pair = connect(&dir, same);
    let log = CallLog::listen(&pair.answered);
    let_media_flow(&pair.call, 25);
    let before = pair.answered.snapshot().media;
    pair.call
        .inject(Injection::Raw(vec![0xff; 3]))
        .expect("inject");
    pair.call
        .inject(Injection::Raw(
            [
                &[0x0fu8][..],
                &(1u64 << 40).to_be_bytes()[..],
                &[0x55; 40][..],
            ]
            .concat(),
        ))
        .expect("inject");
    for _ in 0..3 {
        pair.call.inject(Injection::ReplayLast).expect("inject");
        pair.call.inject(Injection::TamperNext).expect("inject");
        let_media_flow(&pair.call, 3);
    }
    assert!(
        eventually(|| {
            let m = pair.answered.snapshot().media;
            m.replays_rejected >= 3 && m.decrypt_failures >= 4 && m.malformed >= 1
        }),
        "{:?}",
        pair.answered.snapshot().media
    );
    let_media_flow(&pair.call, 60);
    let after = pair.answered.snapshot().media;
    assert!(
        matches!(pair.answered.state(), CallState::Active { .. }),
        "call goes on"
    );
    assert!(
        after.frames_received > before.frames_received + 20,
        "media still flows"
    );
    assert!(log.has(|u| matches!(u, CallUpdate::Security(SecurityEvent::MediaRejected { .. }))));
    hang_up(&pair);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vanished_peer_ends_the_call_as_connection_lost() {
    let dir = temp_dir("vanish");
    let pair = connect(&dir, same);
    let_media_flow(&pair.call, 10);
    let Pair {
        caller, answered, ..
    } = pair;
    // The caller's phone goes away without hanging up (crash, network gone).
    caller.simulate_crash();
    assert!(
        answered.wait_ended(Duration::from_secs(15)),
        "callee noticed"
    );
    assert_eq!(
        answered.state(),
        CallState::Ended(EndReason::ConnectionLost)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Closing a phone mid-call returns at once, hangs up (the peer is told), finishes the files,
/// and ends with `Closed` as the last event.
#[test]
fn closing_a_phone_mid_call_hangs_up_first_and_closed_comes_last() {
    let dir = temp_dir("close");
    let pair = connect(&dir, same);
    let log = CallLog::listen(&pair.answered);
    let_media_flow(&pair.call, 25);
    let Pair {
        callee,
        call,
        answered,
        caller,
        ..
    } = pair;
    callee.phone.close();
    assert!(matches!(
        callee.phone.listen(loopback()),
        Err(PhoneError::Closed)
    ));
    assert!(callee.phone.wait_closed(WAIT), "closed");
    assert!(*callee.log.closed.lock().expect("lock"), "Closed delivered");
    assert!(answered.is_ended());
    assert_eq!(
        answered.state(),
        CallState::Ended(EndReason::Hangup {
            by: Side::Local,
            reason: Reason::Normal
        })
    );
    assert!(call.wait_ended(WAIT), "the caller was told");
    assert_eq!(
        call.state(),
        CallState::Ended(EndReason::Hangup {
            by: Side::Remote,
            reason: Reason::Normal
        })
    );
    assert!(eventually(|| matches!(
        log.states().last(),
        Some(CallState::Ended(_))
    )));
    // What the callee heard was written out completely, in whole frames.
    let heard = viska::media::wav::WavSource::open(dir.join("heard.wav")).expect("heard");
    let len = heard.samples().len();
    assert!(len >= 48_000 * 3 / 10, "{len} samples heard");
    assert_eq!(len % 960, 0, "{len} samples: not whole frames");
    drop(caller);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_phone_at_its_call_limit_refuses_calls_as_busy() {
    let callee = callee(config("busy-callee").max_calls(1), true);
    assert!(matches!(
        callee.phone.listen(loopback()),
        Err(PhoneError::AlreadyListening(a)) if a == callee.addr
    ));
    let first = Phone::new(config("first").build().expect("config")).expect("first");
    let call = first.call(callee.addr).expect("call");
    let (answered, _) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert!(matches!(
        call.wait_for(WAIT, |s| matches!(s, CallState::Active { .. })),
        CallState::Active { .. }
    ));

    let second =
        Phone::new(config("second").max_calls(1).build().expect("config")).expect("second");
    let second_addr = second.listen(loopback()).expect("listen");
    let refused = second.call(callee.addr).expect("call");
    let log = CallLog::listen(&refused);
    assert!(refused.wait_ended(WAIT), "refused");
    assert_eq!(
        refused.state(),
        CallState::Ended(EndReason::Busy { by: Side::Remote })
    );
    assert!(!log.states().contains(&CallState::Alerting), "never rang");
    assert!(
        refused.sas().is_none(),
        "nothing of the SAS revealed to a refused caller"
    );
    let missed = callee.log.missed.lock().expect("lock").clone();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].0.identity, second.identity());
    assert_eq!(missed[0].0.remote_addr, second_addr);
    assert_eq!(missed[0].1, MissedCall::Busy);
    assert!(matches!(answered.state(), CallState::Active { .. }));
    // The caller's own limit.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("silent peer");
    let connecting = second
        .call(silent.local_addr().expect("addr"))
        .expect("call");
    assert!(matches!(
        second.call(callee.addr),
        Err(PhoneError::TooManyCalls { limit: 1 })
    ));
    connecting.hangup().expect("give up");
    assert!(connecting.wait_ended(WAIT), "cancelled");
    assert_eq!(
        connecting.state(),
        CallState::Ended(EndReason::Cancelled { by: Side::Local })
    );
    call.hangup().expect("hangup");
    assert!(answered.wait_ended(WAIT));
    // A phone whose application set no listener has no one to ring: callers hear busy.
    let unheard = first.call(second_addr).expect("call");
    assert!(unheard.wait_ended(WAIT));
    assert_eq!(
        unheard.state(),
        CallState::Ended(EndReason::Busy { by: Side::Remote })
    );
}

/// The callee rings at once and opens its audio meanwhile; audio that cannot open ends the
/// ringing call with reason `Error`, and the application hears why.
#[test]
fn audio_that_cannot_start_ends_the_call_with_a_reason() {
    let dir = temp_dir("noaudio");
    let callee = callee(
        config("mute-callee").audio(Arc::new(FileAudio {
            input: Some(dir.join("does-not-exist.wav")),
            loop_input: false,
            output: None,
        })),
        false,
    );
    let caller = Phone::new(config("caller").build().expect("config")).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    assert!(call.wait_ended(WAIT), "ended");
    assert_eq!(
        call.state(),
        CallState::Ended(EndReason::Rejected {
            by: Side::Remote,
            reason: Reason::Error
        })
    );
    let (rang, _) = callee.incoming.recv_timeout(WAIT).expect("it rang");
    let log = CallLog::listen(&rang);
    assert!(rang.wait_ended(WAIT));
    assert!(eventually(|| !callee
        .log
        .missed
        .lock()
        .expect("lock")
        .is_empty()));
    let missed = callee.log.missed.lock().expect("lock").clone();
    assert_eq!(missed[0].0.identity, caller.identity());
    assert!(
        matches!(&missed[0].1, MissedCall::AudioFailed { error } if error.contains("input")),
        "{missed:?}"
    );
    assert!(eventually(|| matches!(
        log.states().last(),
        Some(CallState::Ended(EndReason::Rejected {
            by: Side::Local,
            reason: Reason::Error
        }))
    )));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn switching_the_device_of_file_audio_is_refused_and_the_call_goes_on() {
    let dir = temp_dir("switch");
    let pair = connect(&dir, same);
    let log = CallLog::listen(&pair.call);
    pair.call
        .switch_output_device(Some("headset"))
        .expect("sent");
    pair.call.switch_input_device(None).expect("sent");
    let failed = |d: AudioDirection| {
        log.has(|u| matches!(u, CallUpdate::Audio(AudioEvent::SwitchFailed { direction, .. }) if *direction == d))
    };
    assert!(eventually(
        || failed(AudioDirection::Output) && failed(AudioDirection::Input)
    ));
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
    let pair = connect(&dir, |callee, caller| {
        (callee.recording(&recording), caller)
    });
    let_media_flow(&pair.call, 100);
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
    let frames_sent = pair.call.snapshot().media.frames_sent as f64;
    let seconds = heard.samples().len() as f64 / 48_000.0;
    // The recording runs from the media's start: at least the frames the caller sent.
    assert!(
        seconds >= frames_sent * 0.02 * 0.9,
        "{seconds} s recorded, {frames_sent} frames sent"
    );
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

/// Verification is remembered for later calls; a call to an expected identity is verified, and
/// to another one reads key changed with a security event.
#[test]
fn a_verified_peer_stays_verified_and_an_expected_identity_is_checked() {
    let callee = callee(config("v-callee"), true);
    let caller = Phone::new(config("v-caller").build().expect("config")).expect("caller");
    let call = caller.call(callee.addr).expect("call");
    let (answered, info) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert_eq!(info.trust, Trust::Unverified);
    assert!(eventually(|| matches!(
        call.state(),
        CallState::Active { .. }
    )));
    let log = CallLog::listen(&call);
    call.mark_verified().expect("verify");
    assert!(eventually(|| log.has(|u| matches!(
        u,
        CallUpdate::TrustChanged(Trust::Verified)
    ))));
    assert_eq!(call.snapshot().trust, Some(Trust::Verified));
    assert_eq!(caller.verified_peers(), vec![callee.phone.identity()]);
    call.hangup().expect("hangup");
    assert!(answered.wait_ended(WAIT));
    // The next call to the same identity is verified from the start.
    let again = caller.call(callee.addr).expect("call");
    let (second, _) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert!(eventually(
        || again.snapshot().trust == Some(Trust::Verified)
    ));
    again.hangup().expect("hangup");
    assert!(second.wait_ended(WAIT));
    // Expecting another identity: the call goes on, reads key changed, and says so.
    let stranger = generate_identity().public();
    let changed = caller.call_expecting(callee.addr, stranger).expect("call");
    let log = CallLog::listen(&changed);
    let (third, _) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert!(eventually(
        || changed.snapshot().trust == Some(Trust::KeyChanged)
    ));
    assert!(eventually(|| log.has(|u| matches!(
        u,
        CallUpdate::Security(SecurityEvent::KeyChanged { .. })
    ))));
    changed.hangup().expect("hangup");
    assert!(third.wait_ended(WAIT));
}

/// The application moves the audio itself (16 kHz stereo, as a mobile app's engine might): a
/// tone pushed at the caller is heard in what the callee's application pulls.
#[test]
fn app_fed_audio_flows_both_ways_at_the_applications_rate() {
    let shape = AppAudioConfig {
        capture_rate: 16_000,
        capture_channels: 2,
        playback_rate: 16_000,
        playback_channels: 2,
    };
    let (caller_audio, caller_capture, _caller_playback) = AppAudio::new(shape);
    let (callee_audio, _callee_capture, mut callee_playback) = AppAudio::new(shape);
    let callee = callee(config("app-callee").audio(Arc::new(callee_audio)), true);
    let caller = Phone::new(
        config("app-caller")
            .audio(Arc::new(caller_audio))
            .build()
            .expect("config"),
    )
    .expect("caller");
    let call = caller.call(callee.addr).expect("call");
    let (answered, _) = callee.incoming.recv_timeout(WAIT).expect("incoming");
    assert!(eventually(|| matches!(
        call.state(),
        CallState::Active { .. }
    )));
    // The application's own audio clock: 20 ms buffers of a 400 Hz tone, pushed and pulled.
    let mut heard = Vec::new();
    let mut phase = 0.0f64;
    let mut out = vec![0i16; 640];
    for _ in 0..150 {
        let buffer: Vec<i16> = (0..320)
            .flat_map(|_| {
                phase += 2.0 * std::f64::consts::PI * 400.0 / 16_000.0;
                let s = (phase.sin() * 8000.0) as i16;
                [s, s]
            })
            .collect();
        caller_capture.push(&buffer);
        callee_playback.pull(&mut out);
        heard.extend(out.iter().step_by(2).copied());
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail = heard.get(heard.len() - 16_000..).expect("tail");
    let rms = (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    assert!(rms > 2000.0, "the tone came through: RMS {rms}");
    assert_eq!(caller_capture.attached(), 1);
    assert_eq!(callee_playback.attached(), 1);
    call.hangup().expect("hangup");
    assert!(answered.wait_ended(WAIT));
    // An ended call's rings are let go: nothing is pushed into or mixed from it any more.
    assert!(eventually(|| caller_capture.attached() == 0));
    let playback = std::sync::Mutex::new(callee_playback);
    assert!(eventually(|| {
        let mut playback = playback.lock().expect("lock");
        playback.pull(&mut [0i16; 640]);
        playback.attached() == 0
    }));
}

/// A connection that fails its end-to-end handshake reaches the callee's application as a
/// security event with its source address, and floods are rate-limited.
#[test]
fn failed_handshakes_are_security_events_with_the_source_and_rate_limited() {
    use viska::proto::Message;
    use viska::transport::{LocalCertificate, QuicEndpoint, TransportConfig};

    // Twelve handshakes from one source at once: more than the default burst.
    let callee = callee(
        config("sec-callee")
            .max_handshakes_per_source(16)
            .handshake_rate(16, 16),
        true,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let sent = 12;
    let source = runtime.block_on(async {
        let cert = Arc::new(LocalCertificate::generate().expect("cert"));
        let ep = QuicEndpoint::bind(loopback(), cert, &TransportConfig::default()).expect("bind");
        for _ in 0..sent {
            let conn = ep.connect(callee.addr).await.expect("connect");
            let (mut send, _recv) = conn.open_signaling().await.expect("stream");
            // A Hello, then a handshake message 1 with a bad magic: Malformed.
            let hello = viska::proto::signal::local_hello(viska::proto::Features::NONE);
            let mut bytes = hello.to_frame().expect("hello");
            bytes.extend(
                Message::Handshake(vec![0x55; 141])
                    .to_frame()
                    .expect("frame"),
            );
            send.write_all(&bytes).await.expect("write");
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        }
        ep.local_addr().expect("addr")
    });
    assert!(eventually(|| callee.phone.security_events() >= sent));
    let events = callee.log.security.lock().expect("lock").clone();
    assert!(!events.is_empty());
    assert!(
        events.len() < sent as usize,
        "rate-limited: {} events",
        events.len()
    );
    assert!(events.iter().all(|(from, _, _)| from.ip() == source.ip()));
    assert!(
        events
            .iter()
            .any(|(_, e, _)| matches!(e, SecurityEvent::HandshakeFailed(_))),
        "{events:?}"
    );
}

/// The IP-level bitrate a phone's connection sent over at least `span`, every packet counted
/// (media, ACK-only packets, keep-alives, signaling; IPv4 and UDP headers added): measured
/// between two refreshes of the call's counters (once a second), seen within 5 ms.
fn wire_bps(call: &CallHandle, span: Duration) -> f64 {
    use viska::WireCounters;
    let refresh = |after: WireCounters| {
        assert!(
            eventually(|| call.snapshot().wire != after),
            "counters not refreshed"
        );
        (std::time::Instant::now(), call.snapshot().wire)
    };
    let (t0, w0) = refresh(call.snapshot().wire);
    std::thread::sleep(span);
    let (t1, w1) = refresh(call.snapshot().wire);
    let bytes = w1.since(&w0).wire_bytes(WireCounters::IPV4_UDP_HEADER);
    bytes as f64 * 8.0 / t1.duration_since(t0).as_secs_f64()
}

/// A silent callee acknowledging a talker over a path with 60 ms of one-way delay each way:
/// asked (the QUIC ACK frequency extension) to acknowledge only every 10th packet, it sends
/// under 8 kbit/s at the IP level, every packet counted; with the default (every second
/// packet) it sends well over 10 kbit/s of ACK-only packets.
#[test]
fn a_silent_peer_asked_for_fewer_acks_sends_under_8_kbits() {
    let dir = temp_dir("ack-frequency");
    let delay = ImpairmentConfig {
        delay: Duration::from_millis(60),
        ..ImpairmentConfig::default()
    };
    let mut rates = Vec::new();
    for ack_frequency in [
        Some(viska::AckFrequency {
            packets: 10,
            max_delay: Duration::from_millis(100),
        }),
        None,
    ] {
        let transport = viska::TransportConfig {
            ack_frequency,
            ..viska::TransportConfig::default()
        };
        let pair = connect(&dir, |callee, caller| {
            (
                callee
                    .impairment(delay.clone())
                    .transport(transport.clone()),
                caller.impairment(delay.clone()).transport(transport),
            )
        });
        let_media_flow(&pair.call, 5);
        std::thread::sleep(Duration::from_millis(1500));
        let callee = wire_bps(&pair.answered, Duration::from_secs(3));
        hang_up(&pair);
        rates.push(callee);
    }
    println!("silent callee, fewer ACKs / default: {rates:?} bit/s");
    assert!(rates[0] < 8_000.0, "fewer ACKs: {rates:?} bit/s");
    assert!(rates[1] > 10_000.0, "default ACKs: {rates:?} bit/s");
}

/// Both ends silent (the caller plays digital zero, the callee has no input): with DTX, the
/// default, each connection sends well under 8 kbit/s at the IP level, every layer and packet
/// counted, and the callee plays comfort noise without counting loss or concealment. With
/// DTX off the same call sends several times that.
#[test]
fn a_silent_call_sends_under_8_kbits_with_dtx() {
    let dir = temp_dir("dtx");
    let silence = dir.join("silence.wav");
    let mut sink = WavSink::create(&silence).expect("create wav");
    for _ in 0..50 {
        sink.write_frame(&[0i16; 960]).expect("write");
    }
    sink.finish().expect("finish");
    let mut rates = Vec::new();
    for dtx in [true, false] {
        let input = silence.clone();
        let pair = connect(&dir, |callee, _| {
            (
                callee.dtx(dtx),
                config("e2e-caller").dtx(dtx).audio(Arc::new(FileAudio {
                    input: Some(input),
                    loop_input: true,
                    output: None,
                })),
            )
        });
        // Past the call's first second (signaling, the encoders' first frames).
        let_media_flow(&pair.call, 5);
        std::thread::sleep(Duration::from_millis(1500));
        let caller = wire_bps(&pair.call, Duration::from_secs(3));
        let callee = wire_bps(&pair.answered, Duration::from_secs(1));
        hang_up(&pair);
        let heard = pair.answered.snapshot().media;
        assert_eq!(heard.playout.lost, 0, "{:?}", heard.playout);
        assert_eq!(heard.playout.concealed, 0, "{:?}", heard.playout);
        if dtx {
            assert!(heard.playout.comfort_noise > 50, "{:?}", heard.playout);
            let sent = pair.call.snapshot().media;
            assert!(
                sent.comfort_noise_sent * 2 > sent.frames_sent,
                "mostly comfort-noise updates: {sent:?}"
            );
        }
        rates.push((dtx, caller, callee));
    }
    for &(dtx, caller, callee) in &rates {
        if dtx {
            assert!(caller <= 8_000.0, "caller {caller} bit/s with DTX");
            assert!(callee <= 8_000.0, "callee {callee} bit/s with DTX");
        } else {
            assert!(caller > 16_000.0, "caller {caller} bit/s without DTX");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

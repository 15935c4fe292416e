//! The Rust baseline for the boundary measurements of the bindings (docs/performance.md):
//! the same call as `bindings/python/bench/boundary.py` and `bindings/kotlin/bench/Boundary.kt`,
//! driven from Rust through `viska` directly, with a Rust listener.
//!
//! `cargo run -p viska-ffi --example boundary -- events [N]` (call-data events per second to a
//! Rust listener) or `-- cpu [SECONDS]` (the CPU of a process running one call between two
//! phones with WAV audio both ways) prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use viska::{CallUpdate, Phone, PhoneConfig, PhoneEvent};

fn phone(name: &str) -> Phone {
    let config = PhoneConfig::builder(name, viska::phone::generate_identity())
        .realtime(false)
        .build()
        .expect("config");
    Phone::new(config).expect("phone")
}

/// User + system CPU time of this process so far (Linux, `/proc/self/stat`, 100 Hz ticks).
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    (tick(11) + tick(12)) / 100.0
}

fn cpu(seconds: u64) {
    let speech = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/phone/assets/speech.wav"
    );
    let dir = std::env::temp_dir().join(format!("viska-boundary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files = |name: &str| -> Arc<dyn viska::phone::AudioFactory> {
        Arc::new(viska::phone::FileAudio {
            input: Some(speech.into()),
            loop_input: true,
            output: Some(dir.join(name)),
        })
    };
    let before = process_cpu();
    let make = |name: &str, audio| {
        let config = PhoneConfig::builder(name, viska::phone::generate_identity())
            .realtime(false)
            .audio(audio)
            .build()
            .expect("config");
        Phone::new(config).expect("phone")
    };
    let callee = make("rc-callee", files("b.wav"));
    let caller = make("rc-caller", files("a.wav"));
    callee.set_listener(Arc::new(|event: PhoneEvent| {
        if let PhoneEvent::IncomingCall { call, .. } = event {
            let _ = call.answer();
        }
    }));
    let addr = callee
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let call = caller.call(addr).expect("call");
    call.wait_for(Duration::from_secs(20), |s| {
        matches!(s, viska::call::CallState::Active { .. })
    });
    std::thread::sleep(Duration::from_secs(seconds));
    let received = call.stats().packets_received;
    let _ = call.hangup();
    call.wait_ended(Duration::from_secs(10));
    caller.shutdown();
    callee.shutdown();
    let used = process_cpu() - before;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"what\":\"rust_call_cpu\",\"call_seconds\":{seconds},\"cpu_seconds\":{used:.3},\"packets_received\":{received}}}"
    );
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("cpu") {
        let seconds = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(10);
        cpu(seconds);
        return;
    }
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let callee = phone("rb-callee");
    let caller = phone("rb-caller");
    let received = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(None::<Instant>));
    {
        let (received, last) = (Arc::clone(&received), Arc::clone(&last));
        callee.set_listener(Arc::new(move |event: PhoneEvent| {
            if let PhoneEvent::IncomingCall { call, .. } = event {
                let (received, last) = (Arc::clone(&received), Arc::clone(&last));
                call.set_listener(Arc::new(move |_, update: CallUpdate| {
                    if let CallUpdate::Data { .. } = update {
                        received.fetch_add(1, Ordering::Relaxed);
                        *last.lock().expect("lock") = Some(Instant::now());
                    }
                }));
                let _ = call.answer();
            }
        }));
    }
    let addr = callee
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let call = caller.call(addr).expect("call");
    call.wait_for(Duration::from_secs(20), |s| {
        matches!(s, viska::call::CallState::Active { .. })
    });
    let start = Instant::now();
    for _ in 0..n {
        call.send_data(vec![b'x'; 32]).expect("send");
    }
    let sent = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = received.load(Ordering::Relaxed);
    let span = last
        .lock()
        .expect("lock")
        .map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let _ = call.hangup();
    call.wait_ended(Duration::from_secs(10));
    println!(
        "{{\"what\":\"rust_data_events\",\"n\":{n},\"received\":{got},\"complete\":{},\"send_seconds\":{sent:.3},\"deliver_seconds\":{span:.3},\"events_per_second\":{}}}",
        got >= n,
        if span > 0.0 {
            (got as f64 / span).round()
        } else {
            0.0
        }
    );
    caller.shutdown();
    callee.shutdown();
}

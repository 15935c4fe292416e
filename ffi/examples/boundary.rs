//! The Rust baseline for the boundary measurements of the bindings (docs/performance.md):
//! the same call as `bindings/python/bench/boundary.py` and `bindings/kotlin/bench/Boundary.kt`,
//! driven from Rust through `viska` directly, with a Rust listener.
//!
//! `cargo run --release -p viska-ffi --example boundary -- events [N]` prints one JSON line.

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

fn main() {
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

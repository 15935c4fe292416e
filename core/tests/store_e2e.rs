//! Phones with real key stores (SQLCipher files) placing real calls over QUIC on loopback:
//! trust on first use, verification remembered across restarts, a changed key reported in
//! every call until verified, incoming calls carrying the caller's trust, and call history.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::call::{CallState, SecurityEvent, Trust};
use viska::phone::CallerInfo;
use viska::store::{CallDirection, Store, StoreKey, default_handle};
use viska::{CallHandle, CallUpdate, Phone, PhoneConfig, PhoneEvent};

const WAIT: Duration = Duration::from_secs(10);

fn store(path: &Path) -> Store {
    Store::open(path, StoreKey::raw([0x5a; 32])).expect("store")
}

/// A phone whose identity is its store's, listening on loopback and answering every call.
struct Device {
    phone: Phone,
    addr: SocketAddr,
    store: Store,
    incoming: mpsc::Receiver<(CallHandle, CallerInfo)>,
}

fn device(name: &str, store: Store) -> Device {
    let config = PhoneConfig::builder(name, store.identity().expect("identity"))
        .store(store.clone())
        .realtime(false)
        .build()
        .expect("config");
    let phone = Phone::new(config).expect("phone");
    let (tx, incoming) = mpsc::channel();
    let tx = Mutex::new(tx);
    phone.set_listener(Arc::new(move |event: PhoneEvent| {
        if let PhoneEvent::IncomingCall { call, caller } = event {
            call.answer().expect("answer");
            let _ = tx.lock().expect("lock").send((call, caller));
        }
    }));
    let addr = phone
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    Device {
        phone,
        addr,
        store,
        incoming,
    }
}

/// Every update of one call.
fn updates(call: &CallHandle) -> Arc<Mutex<Vec<CallUpdate>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    call.set_listener(Arc::new(move |_, update: CallUpdate| {
        log.lock().expect("lock").push(update);
    }));
    seen
}

/// `from` calls the contact `handle` at `to`; both sides reach Active. Returns the caller's
/// handle and trust, the callee's handle and what its incoming-call event said.
fn call(
    from: &Device,
    handle: &str,
    to: &Device,
) -> (
    CallHandle,
    Trust,
    CallHandle,
    CallerInfo,
    Arc<Mutex<Vec<CallUpdate>>>,
) {
    let call = from.phone.call_contact(handle, to.addr).expect("call");
    let seen = updates(&call);
    let (answered, caller) = to.incoming.recv_timeout(WAIT).expect("incoming call");
    let state = call.wait_for(WAIT, |s| {
        matches!(s, CallState::Active { .. }) || s.is_ended()
    });
    assert!(matches!(state, CallState::Active { .. }), "{state:?}");
    let trust = call.snapshot().trust.expect("keys ready");
    (call, trust, answered, caller, seen)
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

fn hang_up(call: &CallHandle, other: &CallHandle) {
    call.hangup().expect("hangup");
    assert!(call.wait_ended(WAIT) && other.wait_ended(WAIT));
}

fn key_changed_events(seen: &Mutex<Vec<CallUpdate>>) -> usize {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|u| matches!(u, CallUpdate::Security(SecurityEvent::KeyChanged { .. })))
        .count()
}

#[test]
fn trust_follows_the_contact_across_calls_restarts_and_a_changed_key() {
    let dir = tempfile::tempdir().expect("dir");
    let alice_db = dir.path().join("alice.db");
    let alice = device("st-alice", store(&alice_db));
    let bob = device("st-bob", store(&dir.path().join("bob.db")));
    let bob_id = bob.store.identity().expect("id").public();
    let alice_id = alice.store.identity().expect("id").public();

    // First contact: trust on first use on both sides.
    let (c, trust, a, caller, _) = call(&alice, "bob", &bob);
    assert_eq!(trust, Trust::Unverified);
    assert_eq!(caller.trust, Trust::Unverified);
    assert_eq!(caller.identity, alice_id);
    let pinned = alice.store.contact("bob").expect("db").expect("pinned");
    assert_eq!((pinned.pinned, pinned.verified), (bob_id, false));
    // Both users compare the SAS and mark each other verified.
    assert_eq!(c.sas(), a.sas());
    c.mark_verified().expect("verify");
    a.mark_verified().expect("verify");
    assert!(eventually(|| c.snapshot().trust == Some(Trust::Verified)));
    assert!(eventually(|| a.snapshot().trust == Some(Trust::Verified)));
    hang_up(&c, &a);
    let verified = |store: &Store, handle: &str| {
        eventually(|| {
            store
                .contact(handle)
                .expect("db")
                .is_some_and(|c| c.verified && c.presented.is_none())
        })
    };
    assert!(verified(&alice.store, "bob"));
    assert!(verified(&bob.store, &default_handle(&alice_id)));

    // Alice restarts from her store: the same identity, and bob is still verified; bob's
    // phone now knows alice's key as verified, and its incoming-call event says so.
    drop(alice);
    let alice = device("st-alice2", store(&alice_db));
    assert_eq!(alice.store.identity().expect("id").public(), alice_id);
    let (c, trust, a, caller, seen) = call(&alice, "bob", &bob);
    assert_eq!(trust, Trust::Verified);
    assert_eq!(caller.trust, Trust::Verified);
    assert_eq!(key_changed_events(&seen), 0);
    hang_up(&c, &a);

    // Bob's device is replaced (a new identity at the same address): key changed, now and in
    // the next call, with a security event each time.
    drop(bob);
    let bob2 = device("st-bob2", store(&dir.path().join("bob2.db")));
    let bob2_id = bob2.store.identity().expect("id").public();
    for _ in 0..2 {
        let (c, trust, a, caller, seen) = call(&alice, "bob", &bob2);
        assert_eq!(trust, Trust::KeyChanged);
        assert_eq!(key_changed_events(&seen), 1);
        assert_eq!(caller.trust, Trust::Unverified, "bob2 never met alice");
        hang_up(&c, &a);
    }
    let contact = alice.store.contact("bob").expect("db").expect("contact");
    assert_eq!(contact.trust(), Trust::KeyChanged);
    assert_eq!((contact.pinned, contact.presented), (bob_id, Some(bob2_id)));

    // Alice verifies the new key (she called Bob on another line): verified from then on.
    let (c, trust, a, _, _) = call(&alice, "bob", &bob2);
    assert_eq!(trust, Trust::KeyChanged);
    c.mark_verified().expect("verify");
    hang_up(&c, &a);
    assert!(verified(&alice.store, "bob"));
    let (c, trust, a, _, seen) = call(&alice, "bob", &bob2);
    assert_eq!(trust, Trust::Verified);
    assert_eq!(key_changed_events(&seen), 0);
    hang_up(&c, &a);

    // The history has every call, metadata only, newest first, with the trust each call
    // ended with (the first and the fifth were verified during the call).
    // History is written off the media thread: wait for the last end to land.
    eventually(|| {
        let h = alice.store.call_history(100).expect("history");
        h.len() == 6 && h.iter().all(|r| r.ended_ms.is_some())
    });
    let history = alice.store.call_history(100).expect("history");
    assert_eq!(history.len(), 6, "{history:?}");
    let trusts: Vec<_> = history.iter().map(|r| r.trust).collect();
    assert_eq!(
        trusts,
        vec![
            Some(Trust::Verified),
            Some(Trust::Verified),
            Some(Trust::KeyChanged),
            Some(Trust::KeyChanged),
            Some(Trust::Verified),
            Some(Trust::Verified),
        ]
    );
    for r in &history {
        assert_eq!(r.direction, CallDirection::Outgoing);
        assert_eq!(r.handle.as_deref(), Some("bob"));
        assert!(
            r.answered_ms.is_some() && r.ended_ms >= r.answered_ms,
            "{r:?}"
        );
        assert!(r.call_id.is_some() && r.peer.is_some());
    }
    assert_eq!(history[0].peer, Some(bob2_id));
    assert_eq!(history[4].peer, Some(bob_id));
    assert_eq!(history[5].peer, Some(bob_id));
    let incoming = bob2.store.call_history(100).expect("history");
    assert_eq!(incoming.len(), 4, "bob2 took four calls");
    assert!(
        incoming
            .iter()
            .all(|r| r.direction == CallDirection::Incoming
                && r.peer == Some(alice_id)
                && r.handle.is_none())
    );
}

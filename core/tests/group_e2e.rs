//! Group calls end to end: a real relay (`viska-relay`, QUIC on loopback, SQLite data dir) and
//! three group phones, each sending its own tone through real sessions, MLS groups and SFrame.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use viska::group::{
    GroupCallEvent, GroupCallSnapshot, GroupConfig, GroupListener, GroupPhone, GroupPhoneConfig,
    GroupPhoneError, RelayLogin, Trust,
};
use viska::identity::IdentityKeyPair;
use viska::identity::PublicIdentity;
use viska::media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska::phone::AudioFactory;
use viska::session::GroupSessionConfig;
use viska_relay::{Relay, RelayConfig, RelayHandle};

const WAIT: Duration = Duration::from_secs(20);

/// A tone in, the loudness of what is heard out.
struct Tone {
    hz: f64,
    heard: Arc<Heard>,
}

#[derive(Default)]
struct Heard {
    frames: AtomicU64,
    loud_frames: AtomicU64,
}

struct ToneSource {
    hz: f64,
    n: u64,
}

impl AudioSource for ToneSource {
    fn read_frame(&mut self, out: &mut [i16]) -> Result<SourceStatus, AudioIoError> {
        for s in out.iter_mut() {
            let t = self.n as f64 / 48_000.0;
            *s = (8000.0 * (2.0 * std::f64::consts::PI * self.hz * t).sin()) as i16;
            self.n += 1;
        }
        Ok(SourceStatus::Audio)
    }

    fn has_own_clock(&self) -> bool {
        false
    }
}

struct LevelSink(Arc<Heard>);

impl AudioSink for LevelSink {
    fn write_frame(&mut self, pcm: &[i16]) -> Result<(), AudioIoError> {
        self.0.frames.fetch_add(1, Ordering::Relaxed);
        let energy = pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64;
        if energy.sqrt() > 1000.0 {
            self.0.loud_frames.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl AudioFactory for Tone {
    fn open_source(&self, _frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        Ok(Box::new(ToneSource { hz: self.hz, n: 0 }))
    }

    fn open_sink(&self, _frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        Ok(Box::new(LevelSink(Arc::clone(&self.heard))))
    }
}

struct Setup {
    runtime: tokio::runtime::Runtime,
    relay: Option<RelayHandle>,
    dir: std::path::PathBuf,
    hold_time: Duration,
}

static DIRS: Mutex<u32> = Mutex::new(0);

/// The relays' database key (random per test process).
fn db_key() -> viska_relay::DbKey {
    static KEY: std::sync::OnceLock<viska_relay::DbKey> = std::sync::OnceLock::new();
    KEY.get_or_init(viska_relay::DbKey::generate).clone()
}

fn relay() -> Setup {
    relay_holding(RelayConfig::new("127.0.0.1:0".parse().unwrap(), "".into()).hold_time)
}

impl Setup {
    /// Stops the relay and starts it again on the same port and data directory (its held
    /// messages, in memory, are lost).
    fn restart(&mut self) {
        let relay = self.relay.take().unwrap();
        let addr = relay.local_addr();
        self.runtime.block_on(relay.shutdown());
        // The port is free once the old endpoint's tasks have ended.
        for _ in 0..200 {
            let mut config = RelayConfig::new(addr, self.dir.clone());
            config.db_key = Some(db_key());
            config.hold_time = self.hold_time;
            match self.runtime.block_on(Relay::start(config)) {
                Ok(relay) => {
                    self.relay = Some(relay);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
        panic!("the relay did not start again on {addr}");
    }

    fn online(&self) -> u64 {
        self.relay.as_ref().unwrap().stats().devices_online
    }
}

/// Waits until `cond` holds (polling), or panics after [`WAIT`].
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn relay_holding(hold_time: Duration) -> Setup {
    relay_with(|config| config.hold_time = hold_time, |_| {})
}

/// A relay configured by `tweak`, on a data directory `prepare` set up first.
fn relay_with(
    tweak: impl FnOnce(&mut RelayConfig),
    prepare: impl FnOnce(&std::path::Path),
) -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let n = {
        let mut n = DIRS.lock().unwrap();
        *n += 1;
        *n
    };
    let dir = std::env::temp_dir().join(format!("viska-group-e2e-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    prepare(&dir);
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
    config.db_key = Some(db_key());
    tweak(&mut config);
    let hold_time = config.hold_time;
    let relay = runtime.block_on(Relay::start(config)).unwrap();
    Setup {
        runtime,
        relay: Some(relay),
        dir,
        hold_time,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            self.runtime.block_on(relay.shutdown());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn public(seed: u8) -> PublicIdentity {
    IdentityKeyPair::from_secret_bytes(&[seed; 32])
        .unwrap()
        .public()
}

/// Keeps every event; panics on each one when `panics` is set (the phone must go on).
#[derive(Default)]
struct Log {
    events: Mutex<Vec<GroupCallEvent>>,
    panics: bool,
}

impl GroupListener for Log {
    fn event(&self, event: GroupCallEvent) {
        self.events.lock().unwrap().push(event);
        assert!(!self.panics, "a listener that throws");
    }
}

fn phone(
    setup: &Setup,
    seed: u8,
    hz: f64,
    verified: Vec<PublicIdentity>,
) -> (GroupPhone, Arc<Heard>) {
    let relay = setup.relay.as_ref().unwrap();
    let heard = Arc::new(Heard::default());
    let config = GroupPhoneConfig {
        relay: relay.local_addr(),
        relay_fingerprint: relay.fingerprint(),
        identity: IdentityKeyPair::from_secret_bytes(&[seed; 32]).unwrap(),
        audio: Arc::new(Tone {
            hz,
            heard: Arc::clone(&heard),
        }),
        session: GroupSessionConfig::default(),
        group: GroupConfig::default(),
        verified_peers: verified,
    };
    (GroupPhone::connect(config).unwrap(), heard)
}

/// Waits until `p` is in `call`, then takes it.
fn accept(p: &GroupPhone, call: viska::group::CallRef) {
    assert!(p.wait_for(WAIT, |calls| calls.contains_key(&call)));
    p.accept(call).unwrap();
}

fn one(phone: &GroupPhone) -> GroupCallSnapshot {
    phone.calls().into_iter().next().expect("a call")
}

#[test]
fn three_phones_hear_each_other_through_the_relay_and_one_leaves() {
    let setup = relay();
    // A relay whose certificate is not the pinned one is refused.
    let relay_handle = setup.relay.as_ref().unwrap();
    let mut wrong = relay_handle.fingerprint();
    wrong[0] ^= 1;
    let refused = GroupPhone::connect(GroupPhoneConfig {
        relay: relay_handle.local_addr(),
        relay_fingerprint: wrong,
        identity: IdentityKeyPair::from_secret_bytes(&[9; 32]).unwrap(),
        audio: Arc::new(Tone {
            hz: 300.0,
            heard: Arc::new(Heard::default()),
        }),
        session: GroupSessionConfig::default(),
        group: GroupConfig::default(),
        verified_peers: Vec::new(),
    });
    assert!(
        refused.is_err(),
        "a relay with another certificate was accepted"
    );
    // Alice has verified Bob, not Carol.
    let (alice, alice_heard) = phone(&setup, 1, 400.0, vec![public(2)]);
    let (bob, bob_heard) = phone(&setup, 2, 600.0, Vec::new());
    let (carol, _carol_heard) = phone(&setup, 3, 800.0, Vec::new());
    let alice_log = Arc::new(Log::default());
    alice.set_listener(alice_log.clone());
    let bob_log = Arc::new(Log {
        panics: true,
        ..Log::default()
    });
    bob.set_listener(bob_log.clone());
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    alice.add(call, carol.identity()).unwrap();
    // Added is not answered: until Bob takes the call it is held, and nothing he captures
    // leaves his phone.
    assert!(bob.wait_for(WAIT, |calls| {
        calls
            .get(&call)
            .is_some_and(|c| c.roster.len() == 3 && c.sending_epoch == c.epoch)
    }));
    let held = one(&bob);
    assert!(!held.accepted);
    assert!(one(&alice).accepted, "the creator's own call is taken");
    assert_eq!(held.media.frames_sent, 0, "{held:?}");
    accept(&bob, call);
    accept(&carol, call);
    let all_in = |p: &GroupPhone| {
        p.wait_for(WAIT, |calls| {
            calls
                .get(&call)
                .is_some_and(|c| c.roster.len() == 3 && c.sending_epoch == c.epoch)
        })
    };
    assert!(all_in(&alice) && all_in(&bob) && all_in(&carol));
    // Everyone receives both others' frames.
    for p in [&alice, &bob, &carol] {
        assert!(
            p.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| c
                .received
                .len()
                == 2
                && c.received.values().all(|&n| n > 150)
                // Both others' tones are heard: each is speaking.
                && c.levels.values().filter(|&&l| l > 0.05).count() == 2)),
            "{:?}",
            p.snapshot(call)
        );
    }
    let codes: Vec<_> = [&alice, &bob, &carol]
        .iter()
        .map(|p| one(p).verification_code)
        .collect();
    assert!(codes[0].is_some());
    assert!(codes.iter().all(|c| c == &codes[0]), "{codes:?}");
    // Alice's roster flags Carol, the one member she has not verified.
    let roster = one(&alice);
    assert_eq!(roster.unverified, 1, "{roster:?}");
    assert_eq!(
        roster.trust.get(&roster.me.unwrap()),
        Some(&Trust::Verified)
    );
    let carol_leaf = roster
        .roster
        .iter()
        .find(|(_, id)| **id == carol.identity())
        .map(|(p, _)| *p)
        .unwrap();
    assert_eq!(roster.trust.get(&carol_leaf), Some(&Trust::Unverified));
    assert!(
        alice_heard.loud_frames.load(Ordering::Relaxed) > 100,
        "alice played {} frames, {} loud: {:?}",
        alice_heard.frames.load(Ordering::Relaxed),
        alice_heard.loud_frames.load(Ordering::Relaxed),
        one(&alice)
    );
    assert!(bob_heard.loud_frames.load(Ordering::Relaxed) > 100);

    // Bob forges frames under Alice's key id: Carol refuses them as unauthenticated and names
    // Alice's stream as the one attacked.
    let alice_leaf = one(&carol)
        .roster
        .iter()
        .find(|(_, id)| **id == alice.identity())
        .map(|(p, _)| *p)
        .unwrap();
    let epoch = one(&carol).epoch.unwrap();
    let kid = viska_group::kid::key_id(alice_leaf, viska_group::Epoch(epoch)).unwrap();
    let mut forged = vec![0u8; 64];
    let n = viska::sframe::SframeHeader { kid, ctr: 1 << 30 }
        .encode(&mut forged)
        .unwrap();
    forged.truncate(n + 40);
    bob.inject(call, forged).unwrap();
    assert!(
        carol.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| c
            .rejected
            .get(&(alice_leaf, viska::call::MediaRejection::Authentication))
            .is_some_and(|&n| n >= 1)))
    );
    // Carol leaves: the relay tells the others, Alice (the lowest leaf) commits her removal.
    carol.leave(call).unwrap();
    for p in [&alice, &bob] {
        assert!(
            p.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| c
                .roster
                .len()
                == 2
                && c.sending_epoch == c.epoch)),
            "{:?}",
            p.snapshot(call)
        );
    }
    assert_eq!(one(&alice).verification_code, one(&bob).verification_code);
    assert_ne!(one(&alice).verification_code, codes[0]);
    // Audio goes on between the two.
    let before = one(&bob).media.frames_received;
    assert!(bob.wait_for(WAIT, |calls| {
        calls
            .get(&call)
            .is_some_and(|c| c.media.frames_received > before + 50)
    }));
    for p in [&alice, &bob] {
        let s = one(p);
        assert_eq!(s.media.decrypt_failures, 0, "{s:?}");
        assert_eq!(s.group_failures, 0, "{s:?}");
    }
    // Alice's listener heard it all, in order: joined, Bob and Carol joining with their trust,
    // an epoch per change, Carol leaving.
    let events = alice_log.events.lock().unwrap().clone();
    assert_eq!(events.first(), Some(&GroupCallEvent::Joined { call }));
    let joined: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            GroupCallEvent::ParticipantJoined {
                identity, trust, ..
            } => Some((*identity, *trust)),
            _ => None,
        })
        .collect();
    assert_eq!(
        joined,
        vec![
            (bob.identity(), Trust::Verified),
            (carol.identity(), Trust::Unverified)
        ]
    );
    assert!(events.iter().any(|e| matches!(e,
        GroupCallEvent::ParticipantLeft { identity, .. } if *identity == carol.identity())));
    let epochs = events
        .iter()
        .filter(|e| matches!(e, GroupCallEvent::Epoch { .. }))
        .count();
    assert_eq!(epochs, 4, "epochs 0 to 3: {events:?}");
    // Bob's listener panicked at every event, and his call went on (checked above).
    assert!(bob_log.events.lock().unwrap().len() >= 3);
    let stats = setup.relay.as_ref().unwrap().stats();
    assert!(stats.datagrams_forwarded > 300, "{stats:?}");
}

#[test]
fn a_member_that_misses_a_commit_is_added_back_and_hears_again() {
    let setup = relay();
    let (alice, _) = phone(&setup, 11, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 12, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 13, 800.0, Vec::new());
    let (dave, _) = phone(&setup, 14, 1000.0, Vec::new());
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    accept(&bob, call);
    let settled = |p: &GroupPhone, n: usize| {
        p.wait_for(WAIT, |calls| {
            calls
                .get(&call)
                .is_some_and(|c| !c.ended && c.roster.len() == n && c.sending_epoch == c.epoch)
        })
    };
    assert!(settled(&alice, 2) && settled(&bob, 2));
    // Bob loses the commit adding Carol: he is out of step from then on.
    bob.drop_next_handshake().unwrap();
    alice.add(call, carol.identity()).unwrap();
    accept(&carol, call);
    assert!(settled(&alice, 3) && settled(&carol, 3));
    // The next commit tells him so: he asks to be added back, Alice (the lowest leaf) removes
    // and re-adds him, and the four end in one epoch with one code.
    alice.add(call, dave.identity()).unwrap();
    accept(&dave, call);
    for p in [&alice, &bob, &carol, &dave] {
        assert!(settled(p, 4), "{:?}", p.snapshot(call));
    }
    assert_eq!(one(&bob).rejoins, 1);
    let code = one(&alice).verification_code;
    for p in [&bob, &carol, &dave] {
        assert_eq!(one(p).verification_code, code);
    }
    // Bob hears the three others again.
    assert!(bob.wait_for(WAIT, |calls| calls.get(&call).is_some_and(
        |c| c.received.len() == 3 && c.received.values().all(|&n| n > 50)
    )));
    assert_eq!(one(&bob).media.decrypt_failures, 0);
}

#[test]
fn a_direct_call_becomes_a_conference_without_a_gap() {
    use viska::call::CallState;
    use viska::{Phone, PhoneConfig, PhoneEvent};
    let setup = relay();
    let key = |seed: u8| IdentityKeyPair::from_secret_bytes(&[seed; 32]).unwrap();
    // Alice calls Bob directly; Bob answers.
    let alice_phone = Phone::new(PhoneConfig::builder("alice", key(21)).build().unwrap()).unwrap();
    let bob_phone = Phone::new(PhoneConfig::builder("bob", key(22)).build().unwrap()).unwrap();
    let (tx, incoming) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    bob_phone.set_listener(Arc::new(move |event: PhoneEvent| {
        if let PhoneEvent::IncomingCall { call, .. } = event {
            call.answer().unwrap();
            let _ = tx.lock().unwrap().send(call);
        }
    }));
    let addr = bob_phone.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let alice_direct = alice_phone.call(addr).unwrap();
    let bob_direct = incoming.recv_timeout(WAIT).unwrap();
    let active = |s: &CallState| matches!(s, CallState::Active { .. });
    assert!(active(&alice_direct.wait_for(WAIT, active)));
    // The same devices on the relay, and Carol.
    let (alice, _) = phone(&setup, 21, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 22, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 23, 800.0, Vec::new());
    let call = alice.escalate(&alice_direct, &[carol.identity()]).unwrap();
    accept(&carol, call);
    // Bob's group phone is added; his side hands over once it hears Alice there.
    assert!(bob.wait_for(WAIT, |calls| calls.contains_key(&call)));
    std::thread::scope(|s| {
        let a = s.spawn(|| alice.handover(&alice_direct, call, WAIT));
        bob.handover(&bob_direct, call, WAIT).unwrap();
        a.join().unwrap().unwrap();
    });
    // The direct call is over, hung up; the conference carries the three.
    let ended = |s: &CallState| s.is_ended();
    assert!(ended(&alice_direct.wait_for(WAIT, ended)));
    assert!(ended(&bob_direct.wait_for(WAIT, ended)));
    for p in [&alice, &bob, &carol] {
        assert!(
            p.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| c
                .roster
                .len()
                == 3
                && c.received.len() == 2
                && c.received.values().all(|&n| n > 50))),
            "{:?}",
            p.snapshot(call)
        );
    }
    // The direct call's peer is the same authenticated identity in the group.
    assert!(one(&bob).roster.values().any(|id| *id == alice.identity()));
    assert_eq!(bob_direct.snapshot().peer, Some(alice.identity()));
    assert_eq!(alice_direct.snapshot().peer, Some(bob.identity()));
}

#[test]
fn two_members_leaving_at_once_are_both_removed_even_the_one_who_would_remove_the_other() {
    let setup = relay();
    let (alice, _) = phone(&setup, 31, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 32, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 33, 800.0, Vec::new());
    let (dave, _) = phone(&setup, 34, 1000.0, Vec::new());
    let call = alice.create_call().unwrap();
    for p in [&bob, &carol, &dave] {
        alice.add(call, p.identity()).unwrap();
        accept(p, call);
    }
    let settled = |p: &GroupPhone, n: usize| {
        p.wait_for(WAIT, |calls| {
            calls
                .get(&call)
                .is_some_and(|c| !c.ended && c.roster.len() == n && c.sending_epoch == c.epoch)
        })
    };
    for p in [&alice, &bob, &carol, &dave] {
        assert!(settled(p, 4));
    }
    // Alice (leaf 0, who would remove anyone else) and Carol leave together: Bob, now the
    // first member still here, removes both.
    alice.leave(call).unwrap();
    carol.leave(call).unwrap();
    for p in [&bob, &dave] {
        assert!(settled(p, 2), "{:?}", p.snapshot(call));
    }
    assert_eq!(one(&bob).verification_code, one(&dave).verification_code);
    let roster: Vec<_> = one(&bob).roster.values().copied().collect();
    assert!(roster.contains(&bob.identity()) && roster.contains(&dave.identity()));
}

/// Every phone is in `call` with `n` members, sending under the group's epoch.
fn settled(p: &GroupPhone, call: viska::group::CallRef, n: usize) -> bool {
    p.wait_for(WAIT, |calls| {
        calls
            .get(&call)
            .is_some_and(|c| !c.ended && c.roster.len() == n && c.sending_epoch == c.epoch)
    })
}

/// `p` receives more than `more` new frames from each of the `n` others.
fn hears_again(p: &GroupPhone, call: viska::group::CallRef, n: usize, more: u64) -> bool {
    let before = one(p).received;
    p.wait_for(WAIT, |calls| {
        calls.get(&call).is_some_and(|c| {
            c.received.len() == n
                && c.received
                    .iter()
                    .all(|(leaf, &got)| got > before.get(leaf).copied().unwrap_or(0) + more)
        })
    })
}

fn count(log: &Log, f: impl Fn(&GroupCallEvent) -> bool) -> usize {
    log.events.lock().unwrap().iter().filter(|e| f(e)).count()
}

#[test]
fn members_reconnect_after_a_relay_restart_and_hear_each_other_again() {
    let mut setup = relay();
    let (alice, _) = phone(&setup, 41, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 42, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 43, 800.0, Vec::new());
    let logs: Vec<Arc<Log>> = (0..3).map(|_| Arc::new(Log::default())).collect();
    for (p, log) in [&alice, &bob, &carol].into_iter().zip(&logs) {
        p.set_listener(log.clone());
    }
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    alice.add(call, carol.identity()).unwrap();
    accept(&bob, call);
    accept(&carol, call);
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
        assert!(hears_again(p, call, 2, 20), "{:?}", p.snapshot(call));
    }
    let before = one(&alice);

    setup.restart();
    // Every phone sees the connection go and comes back, authenticated again.
    for log in &logs {
        eventually("a reconnection", || {
            count(log, |e| {
                matches!(e, GroupCallEvent::RelayReconnected { .. })
            }) == 1
        });
        assert_eq!(
            count(log, |e| matches!(e, GroupCallEvent::RelayDisconnected)),
            1
        );
    }
    eventually("three devices online", || setup.online() == 3);
    // The same group, epoch and code everywhere, and media flows again.
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
        assert!(hears_again(p, call, 2, 50), "{:?}", p.snapshot(call));
        let s = one(p);
        assert_eq!(s.epoch, before.epoch, "{s:?}");
        assert_eq!(s.verification_code, before.verification_code);
        assert_eq!(s.rejoins, 0, "{s:?}");
        assert_eq!(s.group_failures, 0, "{s:?}");
    }
    // And the group goes on: a change after the restart is ordered and taken by all.
    alice.remove(call, carol.identity()).unwrap();
    assert!(settled(&alice, call, 2) && settled(&bob, call, 2));
    assert_eq!(one(&alice).verification_code, one(&bob).verification_code);
}

#[test]
fn a_member_whose_connection_drops_gets_the_held_commit_when_it_reconnects() {
    let setup = relay();
    let (alice, _) = phone(&setup, 51, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 52, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 53, 800.0, Vec::new());
    let (dave, _) = phone(&setup, 54, 1000.0, Vec::new());
    let bob_log = Arc::new(Log::default());
    bob.set_listener(bob_log.clone());
    let call = alice.create_call().unwrap();
    for p in [&bob, &carol] {
        alice.add(call, p.identity()).unwrap();
        accept(p, call);
    }
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3));
    }
    bob.drop_relay_connection().unwrap();
    eventually("bob offline", || setup.online() == 3);
    // Dave is added while Bob is away: the relay holds the commit for him.
    alice.add(call, dave.identity()).unwrap();
    accept(&dave, call);
    for p in [&alice, &carol, &dave] {
        assert!(
            p.wait_for(WAIT, |calls| calls
                .get(&call)
                .is_some_and(|c| c.roster.len() == 4)),
            "{:?}",
            p.snapshot(call)
        );
    }
    assert_eq!(one(&bob).roster.len(), 3, "bob has not heard of it yet");
    bob.reconnect_relay().unwrap();
    for p in [&alice, &bob, &carol, &dave] {
        assert!(settled(p, call, 4), "{:?}", p.snapshot(call));
    }
    let s = one(&bob);
    assert_eq!(s.rejoins, 0, "the held commit, not a rejoin: {s:?}");
    assert_eq!(s.verification_code, one(&alice).verification_code);
    assert!(hears_again(&bob, call, 3, 30), "{:?}", one(&bob));
    assert_eq!(
        count(&bob_log, |e| matches!(
            e,
            GroupCallEvent::RelayReconnected { .. }
        )),
        1
    );
}

#[test]
fn a_member_that_loses_a_commit_with_its_connection_learns_it_on_reconnecting() {
    let setup = relay();
    let (alice, _) = phone(&setup, 71, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 72, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 73, 800.0, Vec::new());
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    accept(&bob, call);
    assert!(settled(&alice, call, 2) && settled(&bob, call, 2));
    // The commit adding Carol is lost on its way to Bob, and then his connection breaks.
    bob.drop_next_handshake().unwrap();
    alice.add(call, carol.identity()).unwrap();
    accept(&carol, call);
    assert!(settled(&alice, call, 3) && settled(&carol, call, 3));
    assert_eq!(one(&bob).roster.len(), 2);
    bob.drop_relay_connection().unwrap();
    eventually("bob offline", || setup.online() == 2);
    bob.reconnect_relay().unwrap();
    // Nothing else changes in the call: the relay's CallStatus after the reconnection tells
    // him he is behind, and he is added back without waiting for another commit.
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
    }
    let s = one(&bob);
    assert_eq!(s.rejoins, 1, "{s:?}");
    assert_eq!(s.verification_code, one(&alice).verification_code);
    assert!(hears_again(&bob, call, 2, 30), "{:?}", one(&bob));
    assert_eq!(one(&bob).media.decrypt_failures, 0);
}

#[test]
fn a_commit_whose_verdict_is_lost_with_the_connection_is_settled_on_reconnecting() {
    let setup = relay();
    let (alice, _) = phone(&setup, 81, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 82, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 83, 800.0, Vec::new());
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    accept(&bob, call);
    assert!(settled(&alice, call, 2) && settled(&bob, call, 2));
    let epoch = one(&alice).epoch.unwrap();
    // Alice's commit adding Carol is accepted, but the verdict goes with her connection.
    alice.drop_next_verdict().unwrap();
    alice.add(call, carol.identity()).unwrap();
    accept(&carol, call);
    // The relay's order has her commit: she merges it on reconnecting, not adding anyone
    // back, and the three meet in one epoch with one code.
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
    }
    for p in [&alice, &bob, &carol] {
        let s = one(p);
        assert_eq!(s.rejoins, 0, "{s:?}");
        assert_eq!(s.epoch, Some(epoch + 1), "{s:?}");
        assert_eq!(s.verification_code, one(&alice).verification_code);
    }
    assert!(hears_again(&alice, call, 2, 30), "{:?}", one(&alice));
    assert!(hears_again(&carol, call, 2, 30), "{:?}", one(&carol));
    // And her next change is ordered as usual.
    alice.remove(call, bob.identity()).unwrap();
    assert!(settled(&alice, call, 2) && settled(&carol, call, 2));
    assert_eq!(one(&alice).epoch, Some(epoch + 2));
}

#[test]
fn a_device_added_before_its_phone_is_on_the_relay_is_added_once_it_is() {
    let setup = relay();
    let (alice, _) = phone(&setup, 91, 400.0, Vec::new());
    let call = alice.create_call().unwrap();
    assert!(settled(&alice, call, 1));
    // Dave's phone is not connected: the relay has no key package of his yet.
    alice.add(call, public(92)).unwrap();
    eventually("the relay answered without a package", || {
        setup.relay.as_ref().unwrap().stats().key_packages_missing >= 1
    });
    // His phone comes up; Alice asks again and adds him.
    let (dave, _) = phone(&setup, 92, 600.0, Vec::new());
    assert!(dave.wait_for(WAIT, |calls| calls.contains_key(&call)));
    accept(&dave, call);
    assert!(settled(&alice, call, 2) && settled(&dave, call, 2));
    assert!(hears_again(&dave, call, 1, 30), "{:?}", one(&dave));
}

#[test]
fn a_member_back_after_the_hold_time_is_added_back() {
    let setup = relay_holding(Duration::from_millis(300));
    let (alice, _) = phone(&setup, 61, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 62, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 63, 800.0, Vec::new());
    let call = alice.create_call().unwrap();
    for p in [&bob, &carol] {
        alice.add(call, p.identity()).unwrap();
        accept(p, call);
    }
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3));
    }
    bob.drop_relay_connection().unwrap();
    // Past the hold time Bob is gone: Alice removes him.
    assert!(settled(&alice, call, 2) && settled(&carol, call, 2));
    bob.reconnect_relay().unwrap();
    // Bob learns he is gone, asks to be added back, and Alice adds him.
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
    }
    let s = one(&bob);
    assert_eq!(s.rejoins, 1, "{s:?}");
    assert!(!s.ended && s.accepted, "{s:?}");
    assert_eq!(s.verification_code, one(&alice).verification_code);
    assert!(hears_again(&bob, call, 2, 30), "{:?}", one(&bob));
    assert!(hears_again(&alice, call, 2, 30), "{:?}", one(&alice));
}

fn login_phone(
    setup: &Setup,
    seed: u8,
    login: Option<RelayLogin>,
) -> Result<GroupPhone, GroupPhoneError> {
    let relay = setup.relay.as_ref().unwrap();
    let config = GroupPhoneConfig {
        relay: relay.local_addr(),
        relay_fingerprint: relay.fingerprint(),
        identity: IdentityKeyPair::from_secret_bytes(&[seed; 32]).unwrap(),
        audio: Arc::new(Tone {
            hz: 300.0 + f64::from(seed) * 100.0,
            heard: Arc::new(Heard::default()),
        }),
        session: GroupSessionConfig::default(),
        group: GroupConfig::default(),
        verified_peers: Vec::new(),
    };
    match login {
        Some(login) => GroupPhone::connect_with_login(config, login),
        None => GroupPhone::connect(config),
    }
}

#[test]
fn phones_log_in_to_a_relay_that_requires_accounts_and_a_revoked_one_is_taken_out() {
    const PASSWORD: &str = "vN4#qT9!mZ2@rL7x";
    let secrets = Mutex::new(Vec::new());
    let setup = relay_with(
        |c| {
            c.accounts = viska_relay::AccountsMode::Required;
            c.recheck_interval = Duration::from_millis(50);
        },
        |dir| {
            let mut admin = viska_relay::admin::Admin::open(dir, Some(&db_key()), "test").unwrap();
            for name in ["alice", "bob"] {
                admin
                    .add_user(name, PASSWORD, viska_relay::Role::Agent)
                    .unwrap();
                secrets
                    .lock()
                    .unwrap()
                    .push(admin.totp_enroll(name).unwrap().secret);
            }
        },
    );
    let secrets = secrets.into_inner().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let login =
        |account: &str, password: &str, secret: &viska_relay::totp::TotpSecret| RelayLogin {
            account: account.into(),
            password: zeroize::Zeroizing::new(password.into()),
            code: secret.code_at(now),
        };
    assert!(matches!(
        login_phone(&setup, 1, None),
        Err(GroupPhoneError::LoginRequired)
    ));
    assert!(matches!(
        login_phone(
            &setup,
            1,
            Some(login("alice", "not the password 1!", &secrets[0]))
        ),
        Err(GroupPhoneError::LoginFailed {
            retry_after_secs: 0
        })
    ));
    let alice = login_phone(&setup, 1, Some(login("alice", PASSWORD, &secrets[0]))).unwrap();
    let bob = login_phone(&setup, 2, Some(login("bob", PASSWORD, &secrets[1]))).unwrap();
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    accept(&bob, call);
    assert!(settled(&alice, call, 2) && settled(&bob, call, 2));
    assert!(hears_again(&alice, call, 1, 100));

    // The operator revokes Bob's device while the call runs: the relay cuts it off at once,
    // and Alice's phone commits its removal (new keys without Bob).
    let epoch = one(&alice).epoch.unwrap();
    viska_relay::admin::Admin::open(&setup.dir, Some(&db_key()), "test")
        .unwrap()
        .revoke_device(&bob.identity().to_bytes())
        .unwrap();
    assert!(alice.wait_for(WAIT, |calls| {
        calls
            .get(&call)
            .is_some_and(|c| c.roster.len() == 1 && c.epoch > Some(epoch))
    }));
    assert_eq!(setup.relay.as_ref().unwrap().stats().evicted, 1);
}

#[test]
fn an_emergency_rekey_from_the_command_line_moves_the_call_to_new_keys_and_audio_goes_on() {
    let setup = relay_with(|c| c.recheck_interval = Duration::from_millis(50), |_| {});
    let (alice, _) = phone(&setup, 41, 400.0, Vec::new());
    let (bob, _) = phone(&setup, 42, 600.0, Vec::new());
    let (carol, _) = phone(&setup, 43, 800.0, Vec::new());
    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    accept(&bob, call);
    alice.add(call, carol.identity()).unwrap();
    accept(&carol, call);
    for p in [&alice, &bob, &carol] {
        assert!(settled(p, call, 3), "{:?}", p.snapshot(call));
    }
    assert!(hears_again(&bob, call, 2, 20));
    let epoch = one(&alice).epoch.unwrap();
    let code = one(&alice).verification_code;

    // The operator finds the call and rekeys it while the relay runs.
    let mut admin = viska_relay::admin::Admin::open(&setup.dir, Some(&db_key()), "test").unwrap();
    let calls = admin.calls().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].call, calls[0].epoch), (call, epoch));
    assert_eq!(calls[0].members.len(), 3);
    admin.rekey_call(&call).unwrap();

    // One commit wins (every member is asked; the relay keeps the first): the call is one
    // epoch on, every phone sends under it, and all three show one new code.
    for p in [&alice, &bob, &carol] {
        assert!(
            p.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| {
                c.epoch == Some(epoch + 1) && c.sending_epoch == c.epoch && c.roster.len() == 3
            })),
            "{:?}",
            p.snapshot(call)
        );
    }
    let new_code = one(&alice).verification_code;
    assert_ne!(new_code, code);
    assert_eq!(one(&bob).verification_code, new_code);
    assert_eq!(one(&carol).verification_code, new_code);
    let stats = setup.relay.as_ref().unwrap().stats();
    assert_eq!(stats.rekeys, 1, "{stats:?}");
    // Audio goes on under the new keys.
    for p in [&alice, &bob, &carol] {
        assert!(hears_again(p, call, 2, 50), "{:?}", p.snapshot(call));
        assert_eq!(one(p).media.decrypt_failures, 0);
    }
    // A call that is not active is refused, and the rekey is in the audit log.
    let other = viska::group::CallRef([0xee; 16]);
    assert!(matches!(
        admin.rekey_call(&other),
        Err(viska_relay::admin::AdminError::NoSuchCall(_))
    ));
    let mut export = Vec::new();
    admin.audit_export(&mut export).unwrap();
    let export = String::from_utf8(export).unwrap();
    assert_eq!(export.matches("\"call_rekey\"").count(), 1, "{export}");
    assert!(export.contains("\"call_rekey_sent\""), "{export}");
}

//! A phone killed mid-call (`kill -9`, a real child process) and started again from its key
//! store: it takes up its group call from the MLS state in its store (same leaf, no one adds
//! it back), the others hear it again and it hears them, no SFrame counter went over the wire
//! twice under a key (the relay checks every datagram it forwards and counts the reuse it
//! drops), and what it committed to its store before the kill is still there. Killed again
//! while the group moves on without it, it still comes back.
//!
//! The child is this test binary itself, started again with [`CHILD_ENV`] set: it runs one
//! group phone from a store file and prints what it sees on stdout, one `@child ...` line at a
//! time. Nothing sleeps to assert timing: every step waits for a condition, with a generous
//! timeout only as a failure guard.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use viska::group::{CallRef, GroupConfig, GroupPhone, GroupPhoneConfig, recorded_membership};
use viska::identity::{IdentityKeyPair, PublicIdentity};
use viska::media::audio::{AudioIoError, AudioSink, AudioSource, SourceStatus};
use viska::phone::AudioFactory;
use viska::session::GroupSessionConfig;
use viska::store::{Store, StoreKey};
use viska_relay::{Relay, RelayConfig};

const WAIT: Duration = Duration::from_secs(60);

/// Set in the child's environment: the relay's address, its fingerprint in hex and the store
/// file, separated by spaces.
const CHILD_ENV: &str = "VISKA_GROUP_RESTART_CHILD";

/// The setting the child writes before it is killed.
const SETTING: &str = "test.written-before-the-kill";

/// The store's key (a test key).
const STORE_KEY: [u8; 32] = [7; 32];

/// A tone in; what is heard out is only counted.
struct Tone {
    hz: f64,
    played: Arc<AtomicU64>,
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

struct CountSink(Arc<AtomicU64>);

impl AudioSink for CountSink {
    fn write_frame(&mut self, _pcm: &[i16]) -> Result<(), AudioIoError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl AudioFactory for Tone {
    fn open_source(&self, _frame_samples: usize) -> Result<Box<dyn AudioSource>, AudioIoError> {
        Ok(Box::new(ToneSource { hz: self.hz, n: 0 }))
    }

    fn open_sink(&self, _frame_samples: usize) -> Result<Box<dyn AudioSink>, AudioIoError> {
        Ok(Box::new(CountSink(Arc::clone(&self.played))))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn config(
    relay: std::net::SocketAddr,
    fingerprint: [u8; 32],
    identity: IdentityKeyPair,
    hz: f64,
) -> GroupPhoneConfig {
    GroupPhoneConfig {
        relay,
        relay_fingerprint: fingerprint,
        identity,
        audio: Arc::new(Tone {
            hz,
            played: Arc::new(AtomicU64::new(0)),
        }),
        session: GroupSessionConfig::default(),
        group: GroupConfig::default(),
        verified_peers: Vec::new(),
    }
}

/// The child: one group phone from the store file, until it is killed. Does nothing in a
/// normal test run.
#[test]
fn restart_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut args = args.split(' ');
    let relay: std::net::SocketAddr = args.next().unwrap().parse().unwrap();
    let fingerprint = unhex::<32>(args.next().unwrap());
    let path = args.next().unwrap();
    let store = Store::open(path, StoreKey::raw(STORE_KEY)).unwrap();
    let identity = store.identity().unwrap();
    // What the store held when this process started (before it writes anything).
    let setting = store.setting(SETTING).unwrap();
    let records: Vec<String> = store
        .settings()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("viska.group.call."))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("@child identity {}", hex(&identity.public().to_bytes()));
    println!(
        "@child stored setting={} records={}",
        setting.as_deref().unwrap_or("-"),
        if records.is_empty() {
            "-".to_owned()
        } else {
            records.join(",")
        }
    );
    if setting.is_none() {
        store.set_setting(SETTING, "kept").unwrap();
    }
    let phone =
        GroupPhone::connect_with_store(config(relay, fingerprint, identity, 700.0), store, None)
            .unwrap();
    println!("@child connected");
    let mut accepted = false;
    loop {
        for c in phone.calls() {
            // The user takes a call the first time it rings; a call taken before the restart
            // goes on without asking again (the store says it was accepted).
            if !c.accepted && !c.ended && !accepted && setting.is_none() {
                phone.accept(c.call).unwrap();
                accepted = true;
            }
            let others = c
                .received
                .iter()
                .filter(|(p, _)| Some(**p) != c.me)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>();
            println!(
                "@child call {} roster={} accepted={} ended={} rejoins={} resumes={} sent={} heard={}",
                hex(&c.call.0),
                c.roster.len(),
                c.accepted,
                c.ended,
                c.rejoins,
                c.resumes,
                c.media.frames_sent,
                if others.len() == 2 {
                    others.iter().min().copied().unwrap_or(0)
                } else {
                    0
                }
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process and the lines it printed.
struct ChildPhone {
    child: Child,
    lines: mpsc::Receiver<String>,
    last_call: Arc<Mutex<Option<String>>>,
}

impl ChildPhone {
    fn start(relay: std::net::SocketAddr, fingerprint: [u8; 32], store: &std::path::Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "restart_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{relay} {} {}", hex(&fingerprint), store.display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let last_call = Arc::new(Mutex::new(None));
        let last = Arc::clone(&last_call);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness's own "test restart_child ... " may come first on a line.
                let Some(at) = line.find("@child ") else {
                    continue;
                };
                let line = line[at + 1..].to_owned();
                if line.starts_with("child call ") {
                    *last.lock().unwrap() = Some(line);
                } else if line.starts_with("child ") {
                    let _ = tx.send(line);
                }
            }
        });
        Self {
            child,
            lines,
            last_call,
        }
    }

    /// The next line that starts with `prefix` (its rest).
    fn line(&self, prefix: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the child printed no {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// A field of the child's last call line.
    fn field(&self, name: &str) -> Option<u64> {
        let line = self.last_call.lock().unwrap().clone()?;
        line.split(' ').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            if k != name {
                return None;
            }
            match v {
                "true" => Some(1),
                "false" => Some(0),
                _ => v.parse().ok(),
            }
        })
    }

    /// Waits until the child's call lines satisfy `cond`.
    fn wait_call(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let end = Instant::now() + WAIT;
        while !cond(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for the child: {what}; last: {:?}",
                self.last_call.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        // SIGKILL on Unix: no destructor, no Leave, nothing flushed by the process itself.
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success());
        *self.last_call.lock().unwrap() = None;
    }
}

impl Drop for ChildPhone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The frames received from `who` in `call` (under its current leaf), in a phone's snapshots.
fn heard_from(
    calls: &std::collections::BTreeMap<CallRef, viska::group::GroupCallSnapshot>,
    call: CallRef,
    who: &PublicIdentity,
) -> Option<u64> {
    let s = calls.get(&call)?;
    let (leaf, _) = s.roster.iter().find(|(_, id)| *id == who)?;
    Some(s.received.get(leaf).copied().unwrap_or(0))
}

#[test]
fn a_phone_killed_mid_call_comes_back_from_its_store_without_reusing_a_counter() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut relay_config =
        RelayConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("relay"));
    let db_key = viska_relay::DbKey::generate();
    relay_config.db_key = Some(db_key.clone());
    let relay = runtime.block_on(Relay::start(relay_config)).unwrap();
    let (addr, fingerprint) = (relay.local_addr(), relay.fingerprint());
    let alice = GroupPhone::connect(config(
        addr,
        fingerprint,
        IdentityKeyPair::from_secret_bytes(&[1; 32]).unwrap(),
        400.0,
    ))
    .unwrap();
    let bob = GroupPhone::connect(config(
        addr,
        fingerprint,
        IdentityKeyPair::from_secret_bytes(&[2; 32]).unwrap(),
        600.0,
    ))
    .unwrap();
    let store_path = dir.path().join("carol.db");
    let mut carol = ChildPhone::start(addr, fingerprint, &store_path);
    let carol_hex = carol.line("child identity");
    let carol_id = PublicIdentity::from_bytes(&unhex::<32>(&carol_hex)).unwrap();
    assert_eq!(carol.line("child stored"), "setting=- records=-");
    carol.line("child connected");

    let call = alice.create_call().unwrap();
    alice.add(call, bob.identity()).unwrap();
    alice.add(call, carol_id).unwrap();
    assert!(bob.wait_for(WAIT, |calls| calls.contains_key(&call)));
    bob.accept(call).unwrap();
    // Everyone hears both others.
    let hears_all = |p: &GroupPhone| {
        p.wait_for(WAIT, |calls| {
            calls.get(&call).is_some_and(|c| {
                c.roster.len() == 3
                    && c.received.len() == 2
                    && c.received.values().all(|&n| n > 100)
            })
        })
    };
    assert!(hears_all(&alice), "{:?}", alice.snapshot(call));
    assert!(hears_all(&bob), "{:?}", bob.snapshot(call));
    carol.wait_call("hearing both others", |c| {
        c.field("roster") == Some(3) && c.field("heard").is_some_and(|n| n > 100)
    });
    let before = alice.snapshot(call).unwrap();
    let epoch_before = before.epoch.unwrap();
    let leaf_of = |s: &viska::group::GroupCallSnapshot| {
        s.roster
            .iter()
            .find(|(_, id)| **id == carol_id)
            .map(|(leaf, _)| *leaf)
    };
    let carol_leaf = leaf_of(&before).unwrap();
    assert_eq!(relay.stats().counter_reuse_dropped(), 0);

    // Killed while audio flows: Alice and Bob are still receiving Carol's frames.
    let calls = |p: &GroupPhone| p.calls().into_iter().map(|c| (c.call, c)).collect();
    let n = heard_from(&calls(&alice), call, &carol_id).unwrap();
    assert!(alice.wait_for(WAIT, |c| {
        heard_from(c, call, &carol_id).is_some_and(|m| m > n + 10)
    }));
    carol.kill();
    let identity_before = carol_hex.clone();

    // Started again from the same store file.
    let carol = ChildPhone::start(addr, fingerprint, &store_path);
    assert_eq!(
        carol.line("child identity"),
        identity_before,
        "the same identity"
    );
    let stored = carol.line("child stored");
    let want = format!(
        "setting=kept records=viska.group.call.{}=accepted:",
        hex(&call.0)
    );
    assert!(
        stored.starts_with(&want) && stored[want.len()..].parse::<u32>().is_ok(),
        "what was committed before the kill: {stored}"
    );
    carol.line("child connected");

    // Taken up from the store, in the same group and leaf: its update moves the call to a
    // new epoch, whose keys it never used; the others hear Carol again...
    for p in [&alice, &bob] {
        assert!(
            p.wait_for(WAIT, |calls| calls.get(&call).is_some_and(|c| {
                c.roster.len() == 3
                    && leaf_of(c) == Some(carol_leaf)
                    && c.epoch.is_some_and(|e| e > epoch_before)
                    && c.sending_epoch == c.epoch
            })),
            "{:?}",
            p.snapshot(call)
        );
        let from = heard_from(&calls(p), call, &carol_id).unwrap();
        assert!(
            p.wait_for(WAIT, |c| heard_from(c, call, &carol_id)
                .is_some_and(|m| m > from + 100)),
            "{:?}",
            p.snapshot(call)
        );
    }
    // ...and Carol hears them, sending without being asked to accept again, never having been
    // taken out and added back.
    carol.wait_call("resumed, hearing both others", |c| {
        c.field("roster") == Some(3)
            && c.field("accepted") == Some(1)
            && c.field("resumes") == Some(1)
            && c.field("rejoins") == Some(0)
            && c.field("sent").is_some_and(|n| n > 100)
            && c.field("heard").is_some_and(|n| n > 100)
    });
    let resumed = alice.snapshot(call).unwrap();
    assert_eq!(leaf_of(&resumed), Some(carol_leaf));
    assert_eq!(relay.stats().counter_reuse_dropped(), 0);

    // Killed again, and the group moves on while it is down: an emergency rekey (every
    // member asked, Alice's or Bob's update wins). What the relay sent to the dead process's
    // connection is lost with it; started again, Carol finds out (its own update is refused
    // and the winner never comes, or a held message is from an epoch it never reached) and
    // is added back; or the relay held the commit for it, and it resumes past it.
    let mut carol = carol;
    carol.kill();
    let epoch_down = alice.snapshot(call).unwrap().epoch.unwrap();
    viska_relay::admin::Admin::open(&dir.path().join("relay"), Some(&db_key), "test")
        .unwrap()
        .rekey_call(&call)
        .unwrap();
    for p in [&alice, &bob] {
        assert!(
            p.wait_for(WAIT, |calls| calls
                .get(&call)
                .is_some_and(|c| c.epoch.is_some_and(|e| e > epoch_down))),
            "{:?}",
            p.snapshot(call)
        );
    }
    let carol = ChildPhone::start(addr, fingerprint, &store_path);
    assert_eq!(carol.line("child identity"), identity_before);
    carol.line("child stored");
    carol.line("child connected");
    carol.wait_call("back after the group moved on", |c| {
        c.field("roster") == Some(3)
            && c.field("accepted") == Some(1)
            && c.field("resumes").unwrap_or(0) + c.field("rejoins").unwrap_or(0) >= 1
            && c.field("sent").is_some_and(|n| n > 100)
            && c.field("heard").is_some_and(|n| n > 100)
    });
    for p in [&alice, &bob] {
        let from = heard_from(&calls(p), call, &carol_id).unwrap_or(0);
        assert!(
            p.wait_for(WAIT, |c| heard_from(c, call, &carol_id)
                .is_some_and(|m| m > from + 100)),
            "{:?}",
            p.snapshot(call)
        );
    }
    // Its store still says it is in the call, accepted.
    drop(carol);
    let store = Store::open(&store_path, StoreKey::raw(STORE_KEY)).unwrap();
    assert_eq!(recorded_membership(&store, &call).unwrap(), Some(true));
    assert_eq!(store.setting(SETTING).unwrap().as_deref(), Some("kept"));
    assert_eq!(
        hex(&store.identity().unwrap().public().to_bytes()),
        identity_before
    );

    // Over the whole run, no datagram reused a counter under a key (the relay's unit test
    // shows the same check dropping a replay).
    let stats = relay.stats();
    assert_eq!(stats.counter_reuse_dropped(), 0, "{stats:?}");
    assert!(stats.datagrams_forwarded > 0);
    alice.close();
    bob.close();
    runtime.block_on(relay.shutdown());
}

//! Changing a store's key on real SQLCipher files: passphrase and platform keys in every
//! direction, the old key refused afterwards, everything readable under the new one, nothing in
//! the clear, a weak passphrase refused before anything changes, and a process killed during
//! the change leaving a file that opens with exactly one of the two keys.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_store::{CallDirection, Contact, Store, StoreError, StoreKey, Trust};

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
const PASS_A: &str = "violet anchor trombone quietly 84";
const PASS_B: &str = "granite heron 5120 whistles north";

fn peer(seed: u8) -> PublicIdentity {
    IdentityKeyPair::from_secret_bytes(&[seed; 32])
        .unwrap()
        .public()
}

#[derive(Debug)]
struct Failed(#[allow(dead_code)] String);

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

fn mls(e: impl std::fmt::Debug) -> Failed {
    Failed(format!("{e:?}"))
}

/// What a store holds, to compare before and after a key change.
#[derive(Debug, PartialEq)]
struct Contents {
    identity: PublicIdentity,
    contacts: Vec<Contact>,
    settings: Vec<(String, String)>,
    history: Vec<viska_store::CallRecord>,
    mls_epoch: u64,
}

/// Fills a store: identity, contacts (one key changed), settings, two calls, an MLS group.
fn fill(store: &Store) {
    store.identity().unwrap();
    store.observe(Some("bob"), &peer(2)).unwrap();
    store.mark_verified(Some("bob"), &peer(2)).unwrap();
    store.observe(Some("bob"), &peer(3)).unwrap();
    store.add_contact("dave@example", &peer(4), false).unwrap();
    store
        .set_setting("display-name", "Agent Smith 7731")
        .unwrap();
    let call = store
        .call_started(CallDirection::Outgoing, Some("bob"), None)
        .unwrap();
    store
        .call_keys(call, &[9; 16], &peer(2), Trust::Verified)
        .unwrap();
    store.call_ended(call, "hangup-local").unwrap();
    let missed = store
        .call_started(CallDirection::Incoming, None, None)
        .unwrap();
    store.call_ended(missed, "missed").unwrap();
    store
        .with_mls(|provider| {
            let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(mls)?;
            signer.store(provider.storage()).map_err(mls)?;
            let credential = CredentialWithKey {
                credential: BasicCredential::new(b"device".to_vec()).into(),
                signature_key: signer.public().into(),
            };
            let mut group = MlsGroup::builder()
                .ciphersuite(SUITE)
                .with_group_id(GroupId::from_slice(b"call-1"))
                .build(provider, &signer, credential)
                .map_err(mls)?;
            group
                .self_update(provider, &signer, LeafNodeParameters::default())
                .map_err(mls)?;
            group.merge_pending_commit(provider).map_err(mls)?;
            Ok::<_, Failed>(())
        })
        .unwrap();
}

fn contents(store: &Store) -> Contents {
    let group = store
        .with_mls(|provider| {
            MlsGroup::load(provider.storage(), &GroupId::from_slice(b"call-1")).map_err(mls)
        })
        .unwrap()
        .expect("the MLS group is stored");
    Contents {
        identity: store.identity().unwrap().public(),
        contacts: store.contacts().unwrap(),
        settings: store.settings().unwrap(),
        history: store.call_history(10).unwrap(),
        mls_epoch: group.epoch().as_u64(),
    }
}

/// The database file and its WAL, concatenated.
fn at_rest(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if let Ok(w) = std::fs::read(PathBuf::from(wal)) {
        bytes.extend_from_slice(&w);
    }
    bytes
}

fn assert_nothing_in_the_clear(path: &Path) {
    let bytes = at_rest(path);
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(bytes.len() > 4096);
    for needle in [
        &b"Agent Smith 7731"[..],
        b"dave@example",
        b"hangup-local",
        b"SQLite format 3",
        b"call-1",
        &peer(2).to_bytes(),
    ] {
        assert!(
            !find(needle),
            "{:?} in the clear",
            String::from_utf8_lossy(needle)
        );
    }
}

fn salt(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()[..16].to_vec()
}

fn wrong_key(r: Result<Store, StoreError>) -> bool {
    matches!(r, Err(StoreError::WrongKey))
}

#[test]
fn a_key_change_in_every_direction_refuses_the_old_key_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let store = Store::open(&path, StoreKey::raw([0x42; 32])).unwrap();
    fill(&store);
    let before = contents(&store);
    let first_salt = salt(&path);

    // Keychain key -> passphrase -> another passphrase -> another keychain key. Each time the
    // store in hand, and a clone of it, go on working.
    let clone = store.clone();
    store
        .change_key(StoreKey::insecure_test_passphrase(PASS_A))
        .unwrap();
    clone.set_setting("after-change", "1").unwrap();
    assert_eq!(store.setting("after-change").unwrap().as_deref(), Some("1"));
    clone.remove_setting("after-change").unwrap();
    assert_eq!(contents(&clone), before);
    drop((store, clone));
    assert!(wrong_key(Store::open(&path, StoreKey::raw([0x42; 32]))));
    assert_nothing_in_the_clear(&path);

    let store = Store::open(&path, StoreKey::insecure_test_passphrase(PASS_A)).unwrap();
    assert_eq!(contents(&store), before);
    store
        .change_key(StoreKey::insecure_test_passphrase(PASS_B))
        .unwrap();
    drop(store);
    assert!(wrong_key(Store::open(
        &path,
        StoreKey::insecure_test_passphrase(PASS_A)
    )));
    assert!(wrong_key(Store::open(&path, StoreKey::raw([0x42; 32]))));
    assert_nothing_in_the_clear(&path);

    let store = Store::open(&path, StoreKey::insecure_test_passphrase(PASS_B)).unwrap();
    assert_eq!(contents(&store), before);
    store.change_key(StoreKey::raw([0x17; 32])).unwrap();
    drop(store);
    for old in [
        StoreKey::insecure_test_passphrase(PASS_B),
        StoreKey::insecure_test_passphrase(PASS_A),
        StoreKey::raw([0x42; 32]),
    ] {
        assert!(wrong_key(Store::open(&path, old)));
    }
    let store = Store::open(&path, StoreKey::raw([0x17; 32])).unwrap();
    assert_eq!(contents(&store), before);
    drop(store);
    assert_nothing_in_the_clear(&path);
    assert_eq!(salt(&path), first_salt, "the salt stays");
}

#[test]
fn after_a_key_change_the_old_keys_pages_are_gone_from_the_file_and_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let store = Store::open(&path, StoreKey::raw([1; 32])).unwrap();
    fill(&store);
    store.change_key(StoreKey::raw([2; 32])).unwrap();
    // The store is still open: had the rekey left pages under the old key in the database
    // file (waiting for a checkpoint) or in the WAL, a copy of the two would show them.
    let copy = dir.path().join("copy.db");
    std::fs::write(&copy, at_rest(&path)).unwrap();
    let wal = std::fs::metadata(dir.path().join("phone.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL was checkpointed and emptied");
    assert!(wrong_key(Store::open(&copy, StoreKey::raw([1; 32]))));
    let copied = Store::open(&copy, StoreKey::raw([2; 32])).unwrap();
    assert_eq!(contents(&copied), contents(&store));
}

#[test]
fn the_real_passphrase_derivation_opens_a_changed_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let store = Store::open(&path, StoreKey::raw([5; 32])).unwrap();
    let id = store.identity().unwrap().public();
    // Argon2id with the real parameters (64 MiB, t = 3): once.
    store.change_key(StoreKey::passphrase(PASS_A)).unwrap();
    drop(store);
    let store = Store::open(&path, StoreKey::passphrase(PASS_A)).unwrap();
    assert_eq!(store.identity().unwrap().public(), id);
    // The same words under the test parameters are another key.
    assert!(wrong_key(Store::open(
        &path,
        StoreKey::insecure_test_passphrase(PASS_A)
    )));
}

#[test]
fn a_weak_new_passphrase_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let store = Store::open(&path, StoreKey::insecure_test_passphrase(PASS_A)).unwrap();
    fill(&store);
    let before = contents(&store);
    drop(store);
    let store = Store::open(&path, StoreKey::insecure_test_passphrase(PASS_A)).unwrap();
    let file = at_rest(&path);
    for weak in ["short pass", "password1234", "aaaaaaaaaaaaaaaa", ""] {
        assert!(
            matches!(
                store.change_key(StoreKey::insecure_test_passphrase(weak)),
                Err(StoreError::WeakPassphrase(_))
            ),
            "{weak:?} accepted"
        );
    }
    assert_eq!(at_rest(&path), file, "not a byte written");
    assert_eq!(contents(&store), before);
    drop(store);
    let store = Store::open(&path, StoreKey::insecure_test_passphrase(PASS_A)).unwrap();
    assert_eq!(contents(&store), before);
}

/// The two keys the crash test alternates between.
fn crash_keys() -> [StoreKey; 2] {
    [StoreKey::raw([0xa1; 32]), StoreKey::raw([0xb2; 32])]
}

/// Which of the crash test's keys opens `path` (exactly one must).
fn open_with_either(path: &Path) -> (Store, usize) {
    let [a, b] = crash_keys();
    match (Store::open(path, a), Store::open(path, b)) {
        (Ok(s), Err(StoreError::WrongKey)) => (s, 0),
        (Err(StoreError::WrongKey), Ok(s)) => (s, 1),
        (a, b) => panic!("opened with neither key or with both: {a:?} / {b:?}"),
    }
}

/// The child of [`a_process_killed_during_key_changes_leaves_a_store_one_key_opens`]: changes
/// the key back and forth until it is killed.
#[test]
#[ignore = "run by the crash test as a child process"]
fn key_change_loop_child() {
    let Some(path) = std::env::var_os("VISKA_STORE_CRASH_FILE") else {
        return;
    };
    let (store, mut which) = open_with_either(Path::new(&path));
    println!("looping");
    loop {
        which = 1 - which;
        let [a, b] = crash_keys();
        store.change_key(if which == 0 { a } else { b }).unwrap();
    }
}

#[test]
fn a_process_killed_during_key_changes_leaves_a_store_one_key_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let expected = {
        let [a, _] = crash_keys();
        let store = Store::open(&path, a).unwrap();
        fill(&store);
        // Enough pages that a rekey takes a while: about 2 MB.
        let filler = "x".repeat(1000);
        for i in 0..2000 {
            store
                .set_setting(&format!("filler-{i:04}"), &filler)
                .unwrap();
        }
        contents(&store)
    };
    let exe = std::env::current_exe().unwrap();
    let mut opened_with = [0u32; 2];
    // Kills land at varied points of the loop: in a rekey, its checkpoint, its check.
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "key_change_loop_child",
                "--ignored",
                "--nocapture",
            ])
            .env("VISKA_STORE_CRASH_FILE", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("looping") {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "the child ended before looping");
        }
        std::thread::sleep(Duration::from_millis(7 + round * 13));
        child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint on close
        child.wait().unwrap();
        let (store, which) = open_with_either(&path);
        opened_with[which] += 1;
        assert_eq!(contents(&store), expected, "round {round}");
    }
    eprintln!("killed 12 times: opened {opened_with:?} times with each key");
}

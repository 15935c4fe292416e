//! A group member whose MLS state is in the store: stopped (the process dies, nothing is
//! flushed by it) and built again from the same file, it takes up its group where it was,
//! hears the others at once and sends only under an epoch after the one it stopped in.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use viska_e2ee::identity::IdentityKeyPair;
use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId};
use viska_group::{GroupConfig, GroupMember, GroupOutput};
use viska_store::{Store, StoreKey};

const KEY: [u8; 32] = [9; 32];
const GROUP: &[u8] = b"call-0123456789a";

fn identity(seed: u8) -> IdentityKeyPair {
    IdentityKeyPair::from_secret_bytes(&[seed; 32]).unwrap()
}

#[derive(Default, Debug)]
struct Drained {
    send: Vec<Epoch>,
    receive: Vec<(ParticipantId, Epoch)>,
    ready: Vec<Epoch>,
}

fn drain<S: viska_group::MlsStorage>(m: &mut GroupMember<S>) -> Drained {
    let mut d = Drained::default();
    while let Some(out) = m.poll_output() {
        match out {
            GroupOutput::Keys(KeyUpdate::Send { epoch, .. }) => d.send.push(epoch),
            GroupOutput::Keys(KeyUpdate::Receive {
                participant, epoch, ..
            }) => d.receive.push((participant, epoch)),
            GroupOutput::Ready(epoch) => d.ready.push(epoch),
            _ => {}
        }
    }
    d
}

fn open(path: &std::path::Path) -> GroupMember<Store> {
    let store = Store::open(path, StoreKey::raw(KEY)).unwrap();
    GroupMember::with_storage(identity(1), GroupConfig::default(), store).unwrap()
}

fn secret<S: viska_group::MlsStorage>(m: &GroupMember<S>) -> Vec<u8> {
    m.export_secret("test", b"", 32).unwrap().to_vec()
}

#[test]
fn a_member_started_again_from_its_store_resumes_its_group_and_sends_only_in_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.db");
    let now = Instant::now();

    // Alice (stored) creates the call and adds Bob (in memory).
    let mut alice = open(&path);
    let mut bob = GroupMember::new(identity(2), GroupConfig::default()).unwrap();
    alice.create(now, GROUP).unwrap();
    let package = bob.key_package(false).unwrap();
    let commit = alice.add(&[package]).unwrap();
    alice.commit_accepted(now).unwrap();
    bob.handle_message(now, commit.welcome.as_ref().unwrap())
        .unwrap();
    alice.switch(now, Epoch(1));
    bob.switch(now, Epoch(1));
    assert!(drain(&mut alice).send.contains(&Epoch(1)));
    drain(&mut bob);
    let bob_leaf = bob.own_participant().unwrap();
    assert_eq!(secret(&alice), secret(&bob));

    // Alice commits an update and dies before the verdict: the process is gone, nothing of
    // it runs (no destructor writes anything: the state was written as each operation ran).
    let _lost = alice.update().unwrap();
    std::mem::forget(alice);

    // Started again from the file.
    let mut alice = open(&path);
    assert!(
        alice.resume(now, GROUP).unwrap(),
        "the group is in the store"
    );
    assert_eq!(alice.epoch(), Some(Epoch(1)));
    assert_eq!(alice.roster().len(), 2);
    assert_eq!(
        secret(&alice),
        secret(&bob),
        "the same epoch secrets as Bob's"
    );
    let d = drain(&mut alice);
    assert_eq!(d.receive, vec![(bob_leaf, Epoch(1))], "hears Bob at once");
    assert!(
        d.send.is_empty(),
        "no send key for an epoch it sent under: {d:?}"
    );
    assert!(alice.resumed_silent());
    // The delivery service's switch to the resumed epoch gives it no key either.
    alice.switch(now, Epoch(1));
    alice.handle_timeout(now + Duration::from_secs(60));
    assert!(drain(&mut alice).send.is_empty());
    assert_eq!(alice.sending_epoch(), None);

    // Its update (the lost one was dropped): accepted, Bob takes it, both move to epoch 2 and
    // Alice sends under it, a key she never had before.
    let commit = alice.update().unwrap();
    assert_eq!(commit.epoch, Epoch(1));
    alice.commit_accepted(now).unwrap();
    bob.handle_message(now, &commit.commit).unwrap();
    alice.switch(now, Epoch(2));
    let d = drain(&mut alice);
    assert_eq!(d.send, vec![Epoch(2)]);
    assert_eq!(d.ready, vec![Epoch(2)]);
    assert!(!alice.resumed_silent());
    assert_eq!(secret(&alice), secret(&bob));

    // Stopped and started again once more: epoch 2 is where it resumes; a commit of Bob's
    // moves it on and it sends under epoch 3.
    std::mem::forget(alice);
    let mut alice = open(&path);
    assert!(alice.resume(now, GROUP).unwrap());
    assert_eq!(alice.epoch(), Some(Epoch(2)));
    assert!(drain(&mut alice).send.is_empty());
    let commit = bob.update().unwrap();
    bob.commit_accepted(now).unwrap();
    alice.handle_message(now, &commit.commit).unwrap();
    alice.switch(now, Epoch(3));
    assert_eq!(drain(&mut alice).send, vec![Epoch(3)]);

    // Out of the call: the group's state goes from the store.
    alice.discard();
    let mut alice = open(&path);
    assert!(!alice.resume(now, GROUP).unwrap(), "discarded");
    assert!(!alice.resume(now, b"another-group-id").unwrap());
}

#[test]
fn a_key_package_made_before_a_restart_still_takes_its_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carol.db");
    let now = Instant::now();
    let mut carol = {
        let store = Store::open(&path, StoreKey::raw(KEY)).unwrap();
        GroupMember::with_storage(identity(3), GroupConfig::default(), store).unwrap()
    };
    let package = carol.key_package(false).unwrap();
    std::mem::forget(carol);

    let mut dave = GroupMember::new(identity(4), GroupConfig::default()).unwrap();
    dave.create(now, GROUP).unwrap();
    let commit = dave.add(&[package]).unwrap();
    dave.commit_accepted(now).unwrap();

    // The package's private keys were stored with it: a member started again joins.
    let store = Store::open(&path, StoreKey::raw(KEY)).unwrap();
    let mut carol = GroupMember::with_storage(identity(3), GroupConfig::default(), store).unwrap();
    carol
        .handle_message(now, commit.welcome.as_ref().unwrap())
        .unwrap();
    assert_eq!(carol.epoch(), Some(Epoch(1)));
    assert_eq!(secret(&carol), secret(&dave));
}

#[test]
fn a_member_in_memory_store_works_like_one_on_a_file() {
    let now = Instant::now();
    let store = Store::in_memory().unwrap();
    let mut erin = GroupMember::with_storage(identity(5), GroupConfig::default(), store).unwrap();
    let mut frank = GroupMember::new(identity(6), GroupConfig::default()).unwrap();
    erin.create(now, GROUP).unwrap();
    let commit = erin.add(&[frank.key_package(false).unwrap()]).unwrap();
    erin.commit_accepted(now).unwrap();
    frank
        .handle_message(now, commit.welcome.as_ref().unwrap())
        .unwrap();
    assert_eq!(secret(&erin), secret(&frank));
}

//! Any bytes as a group message: to a member in a group (a commit, a proposal), to a device in
//! none (a Welcome), and as a key package to add. Never a panic; the member stays usable.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use viska_e2ee::identity::IdentityKeyPair;
use viska_group::{GroupConfig, GroupMember};

fn member(seed: u8) -> GroupMember {
    let identity = IdentityKeyPair::from_secret_bytes(&[seed; 32]).expect("identity");
    GroupMember::new(identity, GroupConfig::default()).expect("member")
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut alice = member(1);
    alice.create(now, b"fuzz").expect("create");
    let mut bob = member(2);
    let package = bob.key_package(false).expect("key package");
    let commit = alice.add(&[package]).expect("add");
    alice.commit_accepted(now).expect("accepted");
    bob.handle_message(now, commit.welcome.as_deref().expect("welcome"))
        .expect("welcome");
    let epoch = bob.epoch();
    if bob.handle_message(now, data).is_err() {
        assert_eq!(bob.epoch(), epoch, "a refused message changed the epoch");
    }
    while bob.poll_output().is_some() {}
    let mut outsider = member(3);
    let _ = outsider.handle_message(now, data);
    if alice.add(&[data.to_vec()]).is_ok() {
        alice.commit_refused().expect("drop the pending commit");
    }
    // Still a working group afterwards.
    let mut carol = member(4);
    let package = carol.key_package(false).expect("key package");
    alice
        .add(&[package])
        .expect("the group still takes members");
});

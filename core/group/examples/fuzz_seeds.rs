//! Writes genuine group messages (a key package, a Welcome, a commit adding and one removing a
//! member) into a directory, as seeds for the `group_message` fuzz target:
//! `cargo run -p viska-group --example fuzz_seeds -- fuzz/corpus/group_message`.

use std::time::Instant;

use viska_e2ee::identity::IdentityKeyPair;
use viska_group::{GroupConfig, GroupMember, ParticipantId};

fn member(seed: u8) -> Result<GroupMember, Box<dyn std::error::Error>> {
    let identity = IdentityKeyPair::from_secret_bytes(&[seed; 32])?;
    Ok(GroupMember::new(identity, GroupConfig::default())?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    let now = Instant::now();
    let mut alice = member(1)?;
    alice.create(now, b"fuzz")?;
    let mut bob = member(2)?;
    let package = bob.key_package(false)?;
    let added = alice.add(std::slice::from_ref(&package))?;
    alice.commit_accepted(now)?;
    let welcome = added.welcome.clone().ok_or("no welcome")?;
    bob.handle_message(now, &welcome)?;
    let mut carol = member(3)?;
    let carol_package = carol.key_package(true)?;
    let second = alice.add(std::slice::from_ref(&carol_package))?;
    let removed = {
        alice.commit_refused()?;
        alice.remove(&[ParticipantId(1)])?
    };
    let seeds = [
        ("key_package", package),
        ("last_resort_key_package", carol_package),
        ("welcome", welcome),
        ("commit_add", added.commit),
        ("commit_add_2", second.commit),
        ("commit_remove", removed.commit),
    ];
    for (name, bytes) in seeds {
        std::fs::write(format!("{dir}/{name}"), bytes)?;
    }
    Ok(())
}

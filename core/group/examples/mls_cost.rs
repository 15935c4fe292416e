//! What a group change costs through `GroupMember` against bare openmls doing the same MLS
//! work, side by side in one run: building a commit that adds one device, processing it at an
//! existing member, and joining from its Welcome, in groups of 10, 100 and 1000 leaves.
//!
//! `cargo run --release -p viska-group --example mls_cost [REPS] [SIZES...]`

use std::time::{Duration, Instant};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use viska_e2ee::identity::IdentityKeyPair;
use viska_group::{GroupConfig, GroupMember, MLS_SUITE};

type Error = Box<dyn std::error::Error>;

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn viska(seed: u32) -> Result<GroupMember, Error> {
    let mut secret = [0u8; 32];
    secret[..4].copy_from_slice(&seed.to_be_bytes());
    secret[31] = 1;
    Ok(GroupMember::new(
        IdentityKeyPair::from_secret_bytes(&secret)?,
        GroupConfig::default(),
    )?)
}

/// Commit, process and join times (ms, medians) through `GroupMember`.
fn ours(size: usize, reps: usize) -> Result<[f64; 3], Error> {
    let now = Instant::now();
    let mut alice = viska(0)?;
    alice.create(now, b"cost")?;
    let mut bob = viska(1)?;
    let mut packages = vec![bob.key_package(false)?];
    for i in 2..size as u32 {
        packages.push(viska(i)?.key_package(false)?);
    }
    let commit = alice.add(&packages)?;
    alice.commit_accepted(now)?;
    bob.handle_message(now, commit.welcome.as_deref().ok_or("welcome")?)?;
    let (mut c, mut p, mut j) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..reps as u32 {
        let mut joiner = viska(1_000_000 + r)?;
        let package = joiner.key_package(false)?;
        let t = Instant::now();
        let commit = alice.add(&[package])?;
        alice.commit_accepted(now)?;
        c.push(t.elapsed());
        let t = Instant::now();
        bob.handle_message(now, &commit.commit)?;
        p.push(t.elapsed());
        let t = Instant::now();
        joiner.handle_message(now, commit.welcome.as_deref().ok_or("welcome")?)?;
        j.push(t.elapsed());
        for m in [&mut alice, &mut bob, &mut joiner] {
            while m.poll_output().is_some() {}
        }
    }
    Ok([median(c), median(p), median(j)])
}

struct Bare {
    provider: OpenMlsRustCrypto,
    keys: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl Bare {
    fn new(seed: u32) -> Result<Self, Error> {
        let keys = SignatureKeyPair::new(SignatureScheme::ED25519)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(seed.to_be_bytes().to_vec()).into(),
            signature_key: keys.public().to_vec().into(),
        };
        Ok(Self {
            provider: OpenMlsRustCrypto::default(),
            keys,
            credential,
        })
    }

    fn package(&self) -> Result<KeyPackage, Error> {
        Ok(KeyPackage::builder()
            .build(
                MLS_SUITE,
                &self.provider,
                &self.keys,
                self.credential.clone(),
            )?
            .key_package()
            .clone())
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build()
}

fn welcome_of(message: MlsMessageOut) -> Result<Welcome, Error> {
    let bytes = message.tls_serialize_detached()?;
    match MlsMessageIn::tls_deserialize_exact(&bytes)?.extract() {
        MlsMessageBodyIn::Welcome(w) => Ok(w),
        _ => Err("not a welcome".into()),
    }
}

fn protocol_of(message: &MlsMessageOut) -> Result<ProtocolMessage, Error> {
    let bytes = message.tls_serialize_detached()?;
    Ok(MlsMessageIn::tls_deserialize_exact(&bytes)?.try_into_protocol_message()?)
}

/// The same steps with openmls alone (the same wire-format policy and tree extension; no
/// credential checks, no key export, no key updates).
fn bare(size: usize, reps: usize) -> Result<[f64; 3], Error> {
    let alice = Bare::new(0)?;
    let mut group = MlsGroup::builder()
        .ciphersuite(MLS_SUITE)
        .use_ratchet_tree_extension(true)
        .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build(&alice.provider, &alice.keys, alice.credential.clone())?;
    let bob = Bare::new(1)?;
    let mut packages = vec![bob.package()?];
    for i in 2..size as u32 {
        packages.push(Bare::new(i)?.package()?);
    }
    let (_, welcome, _) = group.add_members(&alice.provider, &alice.keys, &packages)?;
    group.merge_pending_commit(&alice.provider)?;
    let mut bob_group =
        StagedWelcome::new_from_welcome(&bob.provider, &join_config(), welcome_of(welcome)?, None)?
            .into_group(&bob.provider)?;
    let (mut c, mut p, mut j) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..reps as u32 {
        let joiner = Bare::new(1_000_000 + r)?;
        let package = joiner.package()?;
        let t = Instant::now();
        let (commit, welcome, _) = group.add_members(&alice.provider, &alice.keys, &[package])?;
        group.merge_pending_commit(&alice.provider)?;
        c.push(t.elapsed());
        let message = protocol_of(&commit)?;
        let t = Instant::now();
        let processed = bob_group.process_message(&bob.provider, message)?;
        if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
            bob_group.merge_staged_commit(&bob.provider, *staged)?;
        }
        p.push(t.elapsed());
        let welcome = welcome_of(welcome)?;
        let t = Instant::now();
        let _joined =
            StagedWelcome::new_from_welcome(&joiner.provider, &join_config(), welcome, None)?
                .into_group(&joiner.provider)?;
        j.push(t.elapsed());
    }
    Ok([median(c), median(p), median(j)])
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map_or(Ok(9), |a| a.parse())?;
    let sizes: Vec<usize> = {
        let rest: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
        if rest.is_empty() {
            vec![10, 100, 1000]
        } else {
            rest
        }
    };
    println!("leaves  step      viska ms  openmls ms  ratio");
    for size in sizes {
        // Alternate to share the machine's noise.
        let b = bare(size, reps)?;
        let o = ours(size, reps)?;
        for (i, step) in ["commit", "process", "welcome"].iter().enumerate() {
            println!(
                "{size:6}  {step:8}  {:8.2}  {:10.2}  {:5.2}",
                o[i],
                b[i],
                o[i] / b[i]
            );
        }
    }
    Ok(())
}

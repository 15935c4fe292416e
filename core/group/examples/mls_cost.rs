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

/// A group of `size` leaves through `GroupMember`: Alice commits, Bob processes.
struct Ours {
    alice: GroupMember,
    bob: GroupMember,
    next: u32,
}

impl Ours {
    fn new(size: usize) -> Result<Self, Error> {
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
        Ok(Self {
            alice,
            bob,
            next: 1_000_000,
        })
    }

    /// Adds one device: commit (and its acceptance), processing at Bob, the joiner's Welcome.
    fn step(&mut self) -> Result<[Duration; 3], Error> {
        let now = Instant::now();
        self.next += 1;
        let mut joiner = viska(self.next)?;
        let package = joiner.key_package(false)?;
        let t = Instant::now();
        let commit = self.alice.add(&[package])?;
        self.alice.commit_accepted(now)?;
        let c = t.elapsed();
        let t = Instant::now();
        self.bob.handle_message(now, &commit.commit)?;
        let p = t.elapsed();
        let t = Instant::now();
        joiner.handle_message(now, commit.welcome.as_deref().ok_or("welcome")?)?;
        let j = t.elapsed();
        for m in [&mut self.alice, &mut self.bob, &mut joiner] {
            while m.poll_output().is_some() {}
        }
        Ok([c, p, j])
    }
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

/// The same steps with openmls alone: the key package parsed and validated as one from a
/// relay must be, the same wire-format policy and tree extension; no credential checks, no key
/// export, no key updates.
struct BareGroup {
    alice: Bare,
    group: MlsGroup,
    bob: Bare,
    bob_group: MlsGroup,
    next: u32,
}

impl BareGroup {
    fn new(size: usize) -> Result<Self, Error> {
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
        let bob_group = StagedWelcome::new_from_welcome(
            &bob.provider,
            &join_config(),
            welcome_of(welcome)?,
            None,
        )?
        .into_group(&bob.provider)?;
        Ok(Self {
            alice,
            group,
            bob,
            bob_group,
            next: 1_000_000,
        })
    }

    fn step(&mut self) -> Result<[Duration; 3], Error> {
        self.next += 1;
        let joiner = Bare::new(self.next)?;
        let package = joiner.package()?;
        // As a package fetched from a relay: parsed and its signature checked.
        let bytes = MlsMessageOut::from(package).tls_serialize_detached()?;
        let t = Instant::now();
        let MlsMessageBodyIn::KeyPackage(package) =
            MlsMessageIn::tls_deserialize_exact(&bytes)?.extract()
        else {
            return Err("not a key package".into());
        };
        let package = package.validate(self.alice.provider.crypto(), ProtocolVersion::Mls10)?;
        let (commit, welcome, _) =
            self.group
                .add_members(&self.alice.provider, &self.alice.keys, &[package])?;
        self.group.merge_pending_commit(&self.alice.provider)?;
        let c = t.elapsed();
        let message = protocol_of(&commit)?;
        let t = Instant::now();
        let processed = self
            .bob_group
            .process_message(&self.bob.provider, message)?;
        if let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() {
            self.bob_group
                .merge_staged_commit(&self.bob.provider, *staged)?;
        }
        let p = t.elapsed();
        let welcome = welcome_of(welcome)?;
        let t = Instant::now();
        let _joined =
            StagedWelcome::new_from_welcome(&joiner.provider, &join_config(), welcome, None)?
                .into_group(&joiner.provider)?;
        let j = t.elapsed();
        Ok([c, p, j])
    }
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
        let mut ours = Ours::new(size)?;
        let mut bare = BareGroup::new(size)?;
        let (mut o, mut b) = (vec![Vec::new(); 3], vec![Vec::new(); 3]);
        // Alternate, step by step, to share the machine's noise.
        for _ in 0..reps {
            for (i, d) in bare.step()?.into_iter().enumerate() {
                b[i].push(d);
            }
            for (i, d) in ours.step()?.into_iter().enumerate() {
                o[i].push(d);
            }
        }
        for (i, step) in ["commit", "process", "welcome"].iter().enumerate() {
            let (o, b) = (median(o[i].clone()), median(b[i].clone()));
            println!("{size:6}  {step:8}  {o:8.2}  {b:10.2}  {:5.2}", o / b);
        }
    }
    Ok(())
}

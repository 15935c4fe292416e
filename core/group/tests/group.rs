//! MLS groups as key sources: membership, keys per RFC 9605 section 5.2, who can decrypt what,
//! and the delivery service's order.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use viska_e2ee::identity::IdentityKeyPair;
use viska_e2ee::keys::{Epoch, KeyUpdate, ParticipantId, SframeKey};
use viska_group::kid::{BASE_KEY_LABEL, key_id};
use viska_group::{
    GroupConfig, GroupError, GroupEvent, GroupFailure, GroupMember, GroupOutput, MLS_SUITE,
};
use viska_sframe::{CipherSuite, ReplayConfig, SendKey, SframeReceiver, SframeSender};

fn member(seed: u64, suite: CipherSuite) -> GroupMember {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = GroupConfig {
        suite,
        ..GroupConfig::default()
    };
    GroupMember::new(IdentityKeyPair::generate(&mut rng), config).expect("member")
}

/// Everything a member output since the last call.
#[derive(Default, Debug)]
struct Drained {
    send: Vec<(Epoch, SendKey)>,
    receive: Vec<(ParticipantId, Epoch, SframeKey)>,
    retire: Vec<Epoch>,
    removed: Vec<ParticipantId>,
    ready: Vec<Epoch>,
    events: Vec<GroupEvent>,
}

fn drain(m: &mut GroupMember) -> Drained {
    let mut d = Drained::default();
    while let Some(out) = m.poll_output() {
        match out {
            GroupOutput::Keys(KeyUpdate::Send { epoch, key, .. }) => d.send.push((epoch, key)),
            GroupOutput::Keys(KeyUpdate::Receive {
                participant,
                epoch,
                key,
                ..
            }) => d.receive.push((participant, epoch, key)),
            GroupOutput::Keys(KeyUpdate::RetireBefore { epoch }) => d.retire.push(epoch),
            GroupOutput::Keys(KeyUpdate::Remove { participant }) => d.removed.push(participant),
            GroupOutput::Ready(epoch) => d.ready.push(epoch),
            GroupOutput::Event(e) => d.events.push(e),
            other => panic!("unexpected output {other:?}"),
        }
    }
    d
}

/// `adder` adds `joiner`: the commit is accepted, the others process it, the joiner takes the
/// Welcome. Returns what each produced.
fn add(
    now: Instant,
    adder: usize,
    joiner: &mut GroupMember,
    members: &mut [GroupMember],
) -> Vec<Drained> {
    let package = joiner.key_package(false).expect("key package");
    let commit = members[adder].add(&[package]).expect("add");
    members[adder].commit_accepted(now).expect("accepted");
    for (i, m) in members.iter_mut().enumerate() {
        if i != adder {
            m.handle_message(now, &commit.commit).expect("commit");
        }
    }
    joiner
        .handle_message(now, commit.welcome.as_ref().expect("welcome"))
        .expect("welcome");
    members.iter_mut().map(drain).collect()
}

fn seal(key: SendKey, suite: CipherSuite, payload: &[u8]) -> Vec<u8> {
    let mut tx = SframeSender::from_key(suite, key).expect("sender");
    let mut out = vec![0; tx.protected_len(payload.len())];
    let n = tx.protect(b"", payload, &mut out).expect("protect");
    out.truncate(n);
    out
}

fn opens(keys: &[(ParticipantId, Epoch, SframeKey)], suite: CipherSuite, frame: &[u8]) -> bool {
    let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("rx");
    for (_, _, key) in keys {
        let _ = rx.add_key(key.key_id, &key.base_key);
    }
    let mut out = vec![0; frame.len()];
    rx.unprotect(b"", frame, &mut out).is_ok()
}

#[test]
fn three_members_share_an_epoch_code_roster_and_keys() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut alice = member(1, suite);
    alice.create(now, b"call-1").expect("create");
    let created = drain(&mut alice);
    // Alone: it sends at once under epoch 0, with the KID of leaf 0.
    assert_eq!(created.send.len(), 1);
    assert_eq!(
        created.send[0].1.key_id(),
        key_id(ParticipantId(0), Epoch(0)).expect("kid")
    );
    assert!(created.receive.is_empty());

    let mut bob = member(2, suite);
    let mut carol = member(3, suite);
    let mut members = vec![alice];
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    drain(&mut members[1]);
    let drained = add(now, 1, &mut carol, &mut members);
    members.push(carol);
    let mut drained = drained;
    drained.push(drain(&mut members[2]));

    let codes: Vec<_> = members.iter().map(|m| m.verification_code()).collect();
    assert!(codes[0].is_some());
    assert!(codes.iter().all(|c| c == &codes[0]), "{codes:?}");
    assert!(members.iter().all(|m| m.epoch() == Some(Epoch(2))));
    for m in &members {
        assert_eq!(m.roster(), members[0].roster());
        assert_eq!(m.roster().len(), 3);
    }
    // Every member installed receive keys for the two others and is ready; none switched:
    // only the delivery service's word (or the timeout) does that.
    for (i, d) in drained.iter().enumerate() {
        let others: Vec<_> = d
            .receive
            .iter()
            .filter(|(_, e, _)| *e == Epoch(2))
            .map(|(p, _, _)| *p)
            .collect();
        assert_eq!(others.len(), 2, "member {i}: {d:?}");
        assert_eq!(d.ready, vec![Epoch(2)], "member {i}");
        assert!(d.send.is_empty(), "member {i} switched early");
        assert!(
            d.events
                .iter()
                .any(|e| matches!(e, GroupEvent::Epoch { epoch, .. } if *epoch == Epoch(2)))
        );
    }
    // Carol's Joined events name Alice and Bob with their identities.
    let joined: Vec<_> = drained[2]
        .events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Joined { identity, .. } => Some(*identity),
            _ => None,
        })
        .collect();
    assert!(joined.contains(members[0].identity()) && joined.contains(members[1].identity()));

    // Switching gives each its send key for epoch 2; what Carol sends opens with Alice's and
    // Bob's receive keys.
    for m in &mut members {
        m.switch(now, Epoch(2));
    }
    let mut switched: Vec<_> = members.iter_mut().map(drain).collect();
    let carol_key = switched[2].send.pop().expect("carol switched").1;
    let frame = seal(carol_key, suite, b"hello");
    assert!(opens(&drained[0].receive, suite, &frame));
    assert!(opens(&drained[1].receive, suite, &frame));
}

#[test]
fn a_removed_member_cannot_read_what_follows_and_a_joiner_what_came_before() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut members = vec![member(10, suite)];
    members[0].create(now, b"call-2").expect("create");
    let alice_epoch0 = drain(&mut members[0]).send.pop().expect("send key").1;
    let before_join = seal(alice_epoch0, suite, b"before carol");

    let mut bob = member(11, suite);
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    let mut carol = member(12, suite);
    let mut drained = add(now, 0, &mut carol, &mut members);
    members.push(carol);
    drained.push(drain(&mut members[2]));
    // Carol holds epoch 2 only: a frame of epoch 0 does not open for her.
    assert!(!opens(&drained[2].receive, suite, &before_join));

    // Alice removes Carol; Carol processes the commit and is out.
    let commit = members[0].remove(&[ParticipantId(2)]).expect("remove");
    members[0].commit_accepted(now).expect("accepted");
    members[1].handle_message(now, &commit.commit).expect("bob");
    members[2]
        .handle_message(now, &commit.commit)
        .expect("carol");
    let carol_after = drain(&mut members[2]);
    assert!(carol_after.events.contains(&GroupEvent::Removed));
    assert!(
        carol_after.receive.is_empty(),
        "no keys of the new epoch for her"
    );
    let alice = drain(&mut members[0]);
    let bob = drain(&mut members[1]);
    assert_eq!(bob.removed, vec![ParticipantId(2)]);
    members[0].switch(now, Epoch(3));
    let alice_epoch3 = drain(&mut members[0]).send.pop().expect("switched").1;
    let after = seal(alice_epoch3, suite, b"after carol");
    // Bob reads it, Carol with every key she ever held does not.
    assert!(opens(&bob.receive, suite, &after));
    let mut carol_keys = drained[2].receive.clone();
    carol_keys.extend(carol_after.receive);
    assert!(!opens(&carol_keys, suite, &after));
    assert!(alice.receive.iter().all(|(p, _, _)| *p == ParticipantId(1)));
    // And she cannot take part any more.
    assert_eq!(members[2].epoch(), None);
}

#[test]
fn an_outsider_with_every_message_cannot_join_or_read() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut members = [member(20, suite)];
    members[0].create(now, b"call-3").expect("create");
    drain(&mut members[0]);
    let mut bob = member(21, suite);
    let package = bob.key_package(false).expect("kp");
    let commit = members[0].add(&[package]).expect("add");
    members[0].commit_accepted(now).expect("accepted");
    // The relay sees the Welcome and the commit; a device of its own cannot use them.
    let mut relay_device = member(22, suite);
    let welcome = commit.welcome.as_ref().expect("welcome");
    let err = relay_device
        .handle_message(now, welcome)
        .expect_err("not addressed to it");
    assert!(matches!(err, GroupError::Undecryptable(_)), "{err:?}");
    let events = drain(&mut relay_device).events;
    assert_eq!(
        events,
        vec![GroupEvent::Failure {
            reason: GroupFailure::Undecryptable
        }]
    );
    assert!(matches!(
        relay_device.handle_message(now, &commit.commit),
        Err(GroupError::NotInGroup)
    ));
}

#[test]
fn the_first_commit_for_an_epoch_wins_and_the_loser_recovers() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut members = vec![member(30, suite)];
    members[0].create(now, b"call-4").expect("create");
    let mut bob = member(31, suite);
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    let mut carol = member(32, suite);
    let mut dave = member(33, suite);
    // Alice and Bob both commit in epoch 1: Alice's reaches the delivery service first.
    let by_alice = members[0]
        .add(&[carol.key_package(false).expect("kp")])
        .expect("alice adds");
    let by_bob = members[1]
        .add(&[dave.key_package(false).expect("kp")])
        .expect("bob adds");
    assert_eq!(by_alice.epoch, by_bob.epoch);
    members[0].commit_accepted(now).expect("alice accepted");
    members[1].commit_refused().expect("bob refused");
    members[1]
        .handle_message(now, &by_alice.commit)
        .expect("bob takes alice's commit");
    carol
        .handle_message(now, by_alice.welcome.as_ref().expect("welcome"))
        .expect("carol joins");
    // Bob's commit, replayed late, is for a stale epoch everywhere.
    let err = carol
        .handle_message(now, &by_bob.commit)
        .expect_err("stale");
    assert!(matches!(err, GroupError::StaleEpoch { .. }), "{err:?}");
    assert!(drain(&mut carol).events.contains(&GroupEvent::Failure {
        reason: GroupFailure::StaleEpoch
    }));
    // Dave's Welcome came from a commit that never took effect: the delivery service drops
    // it with the commit, so it is never delivered.
    let _ = &mut dave;
    // Bob recovers by committing again on top of the winner.
    let again = members[1]
        .add(&[member(34, suite).key_package(false).expect("kp")])
        .expect("bob again");
    assert_eq!(again.epoch, Epoch(2));
    members[1].commit_accepted(now).expect("accepted");
    members[0]
        .handle_message(now, &again.commit)
        .expect("alice");
    carol.handle_message(now, &again.commit).expect("carol");
    assert_eq!(
        members[0].verification_code(),
        members[1].verification_code()
    );
    assert_eq!(carol.verification_code(), members[1].verification_code());
}

#[test]
fn a_forged_or_tampered_commit_is_refused_and_reported() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut members = vec![member(40, suite)];
    members[0].create(now, b"call-5").expect("create");
    let mut bob = member(41, suite);
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    drain(&mut members[1]);
    let carol = member(42, suite);
    let mut carol = carol;
    let commit = members[0]
        .add(&[carol.key_package(false).expect("kp")])
        .expect("add");
    // Flip one byte near the end (inside the signature or membership tag).
    let mut forged = commit.commit.clone();
    let at = forged.len() - 10;
    forged[at] ^= 1;
    let err = members[1].handle_message(now, &forged).expect_err("forged");
    assert!(matches!(err, GroupError::Invalid(_)), "{err:?}");
    assert!(
        drain(&mut members[1])
            .events
            .contains(&GroupEvent::Failure {
                reason: GroupFailure::Authentication
            })
    );
    assert_eq!(members[1].epoch(), Some(Epoch(1)), "bob stays in his epoch");
    // Garbage is malformed, not a panic.
    for len in [0, 1, 5, 64] {
        let err = members[1]
            .handle_message(now, &vec![0xa5; len])
            .expect_err("garbage");
        assert!(matches!(err, GroupError::Malformed(_)), "{err:?}");
    }
    // The genuine commit still works after all that.
    members[1]
        .handle_message(now, &commit.commit)
        .expect("genuine");
    let _ = &mut carol;
}

#[test]
fn a_key_package_whose_credential_is_not_its_key_is_refused() {
    use openmls::prelude::tls_codec::Serialize as _;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut alice = member(50, suite);
    alice.create(now, b"call-6").expect("create");
    // A package signed by a fresh key but claiming Alice's identity in its credential.
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let keys = SignatureKeyPair::new(SignatureScheme::ED25519).expect("keys");
    let credential = CredentialWithKey {
        credential: BasicCredential::new(alice.identity().to_bytes().to_vec()).into(),
        signature_key: keys.public().to_vec().into(),
    };
    let bundle = KeyPackage::builder()
        .build(MLS_SUITE, &provider, &keys, credential)
        .expect("package");
    let bytes = MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .expect("bytes");
    assert_eq!(
        alice.add(&[bytes]).err(),
        Some(GroupError::CredentialMismatch)
    );
}

#[test]
fn base_key_is_the_rfc_9605_exporter_and_matches_the_sframe_crate() {
    // AES_128_GCM_SHA256_128, the suite both implementations speak: a frame Bob protects
    // with the key the independent `sframe` crate derives from the group's exporter opens with
    // the receive key Alice got from the group, and the other way round.
    struct Exporter<'a>(&'a GroupMember);
    impl sframe::mls::MlsExporter for Exporter<'_> {
        type BaseKey = Vec<u8>;
        type Error = GroupError;
        fn export_secret(
            &self,
            label: &str,
            ctx: &[u8],
            len: usize,
        ) -> Result<Vec<u8>, GroupError> {
            self.0.export_secret(label, ctx, len).map(|s| s.to_vec())
        }
    }
    let now = Instant::now();
    let suite = CipherSuite::Aes128GcmSha256;
    let mut members = vec![member(60, suite)];
    members[0].create(now, b"call-7").expect("create");
    let mut bob = member(61, suite);
    let drained = add(now, 0, &mut bob, &mut members);
    members.push(bob);
    let alice_rx = &drained[0].receive;
    let bob_rx = drain(&mut members[1]).receive;

    let range = sframe::mls::MlsKeyIdBitRange::new(
        viska_group::kid::EPOCH_BITS,
        viska_group::kid::INDEX_BITS,
    );
    let bob_kid = sframe::mls::MlsKeyId::try_new(0u64, 1u64, 1u64, range).expect("kid");
    let theirs = sframe::key::EncryptionKey::derive_from_mls(
        sframe::CipherSuite::AesGcm128Sha256,
        &Exporter(&members[1]),
        bob_kid,
    )
    .expect("their key");
    let mut counter = sframe::frame::MonotonicCounter::with_start_value(7, u64::MAX);
    let payload = b"an opus frame".to_vec();
    let mut buffer = Vec::new();
    let frame = sframe::frame::MediaFrameView::try_with_meta_data(&mut counter, &payload, b"")
        .expect("frame")
        .encrypt_into(&theirs, &mut buffer)
        .expect("encrypt")
        .sframe_cipher_text()
        .to_vec();
    assert!(opens(alice_rx, suite, &frame));

    // The label is the RFC's.
    assert_eq!(BASE_KEY_LABEL, "SFrame 1.0 Base Key");
    // Alice's frames open in the sframe crate with the key it derives.
    members[0].switch(now, Epoch(1));
    let alice_key = drain(&mut members[0]).send.pop().expect("switched").1;
    let ours = seal(alice_key, suite, b"from alice");
    let alice_kid = sframe::mls::MlsKeyId::try_new(0u64, 1u64, 0u64, range).expect("kid");
    let their_rx = sframe::key::DecryptionKey::derive_from_mls(
        sframe::CipherSuite::AesGcm128Sha256,
        &Exporter(&members[1]),
        alice_kid,
    )
    .expect("their rx key");
    let view = sframe::frame::EncryptedFrameView::try_with_meta_data(&ours, b"").expect("parse");
    let mut out = Vec::new();
    let opened = view
        .decrypt_into(&their_rx, &mut out)
        .expect("their decrypt");
    assert_eq!(opened.payload(), b"from alice");
    assert!(!bob_rx.is_empty());
}

#[test]
fn transitions_time_out_retire_old_keys_and_roll_the_epoch_bits_over() {
    let mut now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let config = GroupConfig::default();
    let mut members = vec![member(70, suite)];
    members[0].create(now, b"call-8").expect("create");
    drain(&mut members[0]);
    let mut bob = member(71, suite);
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    drain(&mut members[1]);
    // No word from the delivery service: the switch comes with the timeout, not before.
    let before = now + config.transition_timeout - Duration::from_millis(1);
    members[0].handle_timeout(before);
    assert!(drain(&mut members[0]).send.is_empty());
    assert_eq!(
        members[0].next_timeout(),
        Some(now + config.transition_timeout)
    );
    now += config.transition_timeout;
    members[0].handle_timeout(now);
    let d = drain(&mut members[0]);
    assert_eq!(d.send.len(), 1);
    assert_eq!(members[0].sending_epoch(), Some(Epoch(1)));
    // The previous epoch's keys go `retain_previous` after the switch.
    now += config.retain_previous;
    members[0].handle_timeout(now);
    assert_eq!(drain(&mut members[0]).retire, vec![Epoch(1)]);

    // Nine more epochs (Bob updates his membership by re-adding nobody: use key packages of
    // throw-away devices that are then removed).
    let mut retired_at = Vec::new();
    for round in 0..10u64 {
        let spare = member(100 + round, suite);
        let mut spare = spare;
        let commit = members[1]
            .add(&[spare.key_package(false).expect("kp")])
            .expect("add spare");
        members[1].commit_accepted(now).expect("ok");
        members[0]
            .handle_message(now, &commit.commit)
            .expect("alice");
        let d = drain(&mut members[0]);
        let epoch = members[0].epoch().expect("epoch");
        if !d.retire.is_empty() {
            retired_at.push((epoch, d.retire.clone()));
        }
        let commit = members[1]
            .remove(&[ParticipantId(2)])
            .expect("remove spare");
        members[1].commit_accepted(now).expect("ok");
        members[0]
            .handle_message(now, &commit.commit)
            .expect("alice");
        let d = drain(&mut members[0]);
        let epoch = members[0].epoch().expect("epoch");
        if !d.retire.is_empty() {
            retired_at.push((epoch, d.retire.clone()));
        }
        drain(&mut members[1]);
        let _ = &mut spare;
    }
    // From epoch 8 on, installing epoch n first drops every key older than n - 7: KIDs repeat
    // every eight epochs and never name two keys at once.
    assert!(!retired_at.is_empty());
    for (epoch, retired) in &retired_at {
        assert!(epoch.0 >= 8);
        assert!(
            retired.contains(&Epoch(epoch.0 - 7)),
            "{epoch:?}: {retired:?}"
        );
    }
}

#[test]
fn a_last_resort_key_package_adds_its_device() {
    let now = Instant::now();
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let mut members = [member(80, suite)];
    members[0].create(now, b"call-9").expect("create");
    let mut bob = member(81, suite);
    let package = bob.key_package(true).expect("last resort package");
    let commit = members[0]
        .add(&[package])
        .expect("a last-resort package is valid");
    members[0].commit_accepted(now).expect("accepted");
    bob.handle_message(now, commit.welcome.as_ref().expect("welcome"))
        .expect("bob joins");
    assert_eq!(bob.verification_code(), members[0].verification_code());
}

#[test]
fn a_relay_that_drops_reorders_replays_or_forges_commits_is_caught() {
    let now = Instant::now();
    let suite = CipherSuite::AesCtr128HmacSha256_80;
    let mut members = vec![member(90, suite)];
    members[0].create(now, b"call-10").expect("create");
    let mut bob = member(91, suite);
    add(now, 0, &mut bob, &mut members);
    members.push(bob);
    drain(&mut members[1]);
    // Alice makes two commits in a row (epochs 1 and 2).
    let first = members[0]
        .add(&[member(92, suite).key_package(false).expect("kp")])
        .expect("first");
    members[0].commit_accepted(now).expect("accepted");
    let second = members[0]
        .add(&[member(93, suite).key_package(false).expect("kp")])
        .expect("second");
    members[0].commit_accepted(now).expect("accepted");
    // Reordered (or the first dropped): the second is for an epoch Bob has not reached.
    let failure = |m: &mut GroupMember| {
        drain(m).events.into_iter().find_map(|e| match e {
            GroupEvent::Failure { reason } => Some(reason),
            _ => None,
        })
    };
    let err = members[1]
        .handle_message(now, &second.commit)
        .expect_err("future");
    assert!(matches!(err, GroupError::FutureEpoch { .. }), "{err:?}");
    assert_eq!(failure(&mut members[1]), Some(GroupFailure::FutureEpoch));
    // In order it works; replayed, it is stale.
    members[1]
        .handle_message(now, &first.commit)
        .expect("first");
    members[1]
        .handle_message(now, &second.commit)
        .expect("second");
    drain(&mut members[1]);
    let err = members[1]
        .handle_message(now, &first.commit)
        .expect_err("replay");
    assert!(matches!(err, GroupError::StaleEpoch { .. }), "{err:?}");
    assert_eq!(failure(&mut members[1]), Some(GroupFailure::StaleEpoch));
    assert_eq!(
        members[1].verification_code(),
        members[0].verification_code()
    );

    // A relay adding a device of its own: it is in no group, so it builds a group of the same
    // id up to the same epoch and commits there. Bob refuses it as unauthenticated.
    let mut relay = member(94, suite);
    relay.create(now, b"call-10").expect("relay group");
    for seed in 95..97 {
        relay
            .add(&[member(seed, suite).key_package(false).expect("kp")])
            .expect("relay add");
        relay.commit_accepted(now).expect("ok");
    }
    let epoch = members[1].epoch().expect("epoch");
    while relay.epoch() < Some(epoch) {
        relay
            .add(&[member(97, suite).key_package(false).expect("kp")])
            .expect("relay add");
        relay.commit_accepted(now).expect("ok");
    }
    assert_eq!(relay.epoch(), Some(epoch));
    let forged = relay
        .add(&[member(98, suite).key_package(false).expect("kp")])
        .expect("relay's commit");
    let err = members[1]
        .handle_message(now, &forged.commit)
        .expect_err("a relay's own commit");
    assert!(matches!(err, GroupError::Invalid(_)), "{err:?}");
    assert_eq!(failure(&mut members[1]), Some(GroupFailure::Authentication));
    assert_eq!(members[1].epoch(), Some(epoch), "Bob's group is unchanged");
    assert_eq!(members[1].roster().len(), members[0].roster().len());
}

#[test]
fn a_package_of_another_device_than_the_one_asked_for_is_refused() {
    // A delivery service asked for Bob's package answers with Mallory's.
    let now = Instant::now();
    let suite = CipherSuite::AesCtr128HmacSha256_80;
    let mut alice = member(100, suite);
    alice.create(now, b"call-11").expect("create");
    let bob = member(101, suite);
    let mut mallory = member(102, suite);
    let package = mallory.key_package(false).expect("kp");
    assert_eq!(
        alice
            .add_expecting(std::slice::from_ref(&package), &[*bob.identity()])
            .err(),
        Some(GroupError::CredentialMismatch)
    );
    // Asked for Mallory, it is hers.
    assert!(
        alice
            .add_expecting(&[package], &[*mallory.identity()])
            .is_ok()
    );
}

//! The relay over real QUIC on loopback, driven by a minimal device written here (quinn and the
//! codec): authentication, key packages, commit order, Welcome (also held), Ready/Switch,
//! leaving and the hold time, datagram forwarding and its drops, and a restart.
//!
//! Nothing here sleeps to wait: every step waits on the message or counter it expects, with a
//! generous timeout only as a failure guard.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::*;

#[tokio::test]
async fn authentication_needs_a_signature_over_this_connections_exporter_and_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let id = identity();

    // A good signature.
    let _good = Device::login(&relay, id.clone()).await;

    // A signature over the wrong bytes.
    let mut link = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    let mut wrong = auth_transcript(&link.exporter(), &link.nonce);
    wrong[0] ^= 1;
    link.send(&RelayMessage::Auth {
        identity: id.public().to_bytes(),
        signature: id.sign(&wrong),
    })
    .await;
    assert_eq!(
        link.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Unauthenticated,
            call: None
        }
    );
    assert_eq!(link.try_recv().await, None, "and the connection closes");

    // A signature over another connection's exporter (a relayed challenge).
    let mut a = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    let b = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    let signature = id.sign(&auth_transcript(&b.exporter(), &a.nonce));
    a.send(&RelayMessage::Auth {
        identity: id.public().to_bytes(),
        signature,
    })
    .await;
    assert!(matches!(
        a.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Unauthenticated,
            ..
        }
    ));

    // Anything but Auth first.
    let mut c = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    c.send(&RelayMessage::CreateCall {
        call: CallRef([1; 16]),
    })
    .await;
    assert!(matches!(
        c.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Unauthenticated,
            ..
        }
    ));

    // A device pinning another fingerprint does not accept the relay.
    assert!(connect(relay.local_addr(), [0; 32]).await.is_err());

    let stats = relay.stats();
    assert_eq!(stats.authenticated, 1);
    assert_eq!(stats.auth_failures, 3);
    assert_eq!(stats.devices_online, 1);
    drop(b);
    relay.shutdown().await;
}

#[tokio::test]
async fn key_packages_are_consumed_then_the_last_resort_one_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    alice
        .send(RelayMessage::PublishKeyPackages {
            packages: vec![b"kp1".to_vec(), b"kp2".to_vec()],
            last_resort: Some(b"last".to_vec()),
        })
        .await;
    alice.sync().await;
    let alice_key = alice.key();
    let fetch = |request| RelayMessage::FetchKeyPackage {
        request,
        identity: alice_key,
    };
    let mut got = Vec::new();
    for request in 1..=4 {
        bob.send(fetch(request)).await;
        match bob.recv().await {
            RelayMessage::KeyPackage {
                request: r,
                identity,
                package,
            } => {
                assert_eq!((r, identity), (request, alice.key()));
                got.push(package.unwrap());
            }
            other => panic!("expected a key package, got {other:?}"),
        }
    }
    assert_eq!(got, [&b"kp1"[..], b"kp2", b"last", b"last"]);

    // Publishing replaces everything, the last-resort package included.
    alice
        .send(RelayMessage::PublishKeyPackages {
            packages: vec![b"kp3".to_vec()],
            last_resort: None,
        })
        .await;
    alice.sync().await;
    for (request, expected) in [(5, Some(b"kp3".to_vec())), (6, None)] {
        bob.send(fetch(request)).await;
        assert_eq!(
            bob.recv().await,
            RelayMessage::KeyPackage {
                request,
                identity: alice.key(),
                package: expected
            }
        );
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn the_first_commit_for_an_epoch_wins_and_the_others_get_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let mut carol = Device::new(&relay).await;
    let call = CallRef([7; 16]);
    let route = open_call(&mut alice, call).await;
    assert_eq!(route, 0, "the smallest free route");

    // A second CreateCall for the same call is refused.
    bob.send(RelayMessage::CreateCall { call }).await;
    assert_eq!(
        bob.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::CallExists,
            call: Some(call)
        }
    );

    add(&mut alice, call, 0, &mut [&mut bob, &mut carol]).await;

    // Bob and Carol both commit for epoch 1.
    let commit = |who: &str| RelayMessage::Commit {
        call,
        epoch: 1,
        commit: who.as_bytes().to_vec(),
        welcome: None,
        added: vec![],
        removed: vec![],
    };
    bob.send(commit("bob")).await;
    carol.send(commit("carol")).await;
    // Each hears its verdict, and the loser also the winner's commit (in either order).
    let mut verdicts = Vec::new();
    let mut heard = Vec::new();
    for (name, device) in [("bob", &mut bob), ("carol", &mut carol)] {
        loop {
            match device.recv().await {
                RelayMessage::CommitResult {
                    epoch: 1, accepted, ..
                } => {
                    verdicts.push((name, accepted));
                    if accepted {
                        break;
                    }
                    if heard.iter().any(|(n, _)| *n == name) {
                        break;
                    }
                }
                RelayMessage::Handshake {
                    epoch: 1, message, ..
                } => {
                    heard.push((name, message));
                    if verdicts.iter().any(|(n, _)| *n == name) {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let winners: Vec<_> = verdicts.iter().filter(|(_, a)| *a).collect();
    assert_eq!(winners.len(), 1, "{verdicts:?}");
    let (winner, loser) = if winners[0].0 == "bob" {
        ("bob", "carol")
    } else {
        ("carol", "bob")
    };
    assert_eq!(heard, [(loser, winner.as_bytes().to_vec())]);

    // The loser commits again on top of the winner: accepted for epoch 2.
    let loser_device = if loser == "bob" { &mut bob } else { &mut carol };
    loser_device
        .send(RelayMessage::Commit {
            call,
            epoch: 2,
            commit: b"second".to_vec(),
            welcome: None,
            added: vec![],
            removed: vec![],
        })
        .await;
    assert_eq!(
        loser_device.recv().await,
        RelayMessage::CommitResult {
            call,
            epoch: 2,
            accepted: true
        }
    );

    // Alice, who committed nothing, gets both in the call's order.
    for (epoch, message) in [(1, winner.as_bytes()), (2, &b"second"[..])] {
        assert_eq!(
            alice.recv().await,
            RelayMessage::Handshake {
                call,
                epoch,
                message: message.to_vec()
            }
        );
    }

    // A stale commit, and one from a device that is not a member.
    alice.send(commit("late")).await;
    assert_eq!(
        alice.recv().await,
        RelayMessage::CommitResult {
            call,
            epoch: 1,
            accepted: false
        }
    );
    let mut mallory = Device::new(&relay).await;
    mallory.send(commit("mallory")).await;
    assert_eq!(
        mallory.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::NotMember,
            call: Some(call)
        }
    );
    let stats = relay.stats();
    assert_eq!((stats.commits_accepted, stats.commits_refused), (3, 2));
    relay.shutdown().await;
}

#[tokio::test]
async fn a_welcome_is_held_until_the_device_connects_and_ready_from_all_brings_switch() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let bob_id = identity();
    let call = CallRef([8; 16]);
    let route = open_call(&mut alice, call).await;
    alice
        .send(RelayMessage::Commit {
            call,
            epoch: 0,
            commit: b"add bob".to_vec(),
            welcome: Some(b"welcome bob".to_vec()),
            added: vec![bob_id.public().to_bytes()],
            removed: vec![],
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::CommitResult { accepted: true, .. }
    ));

    // Bob connects only now: AuthOk, then the held Welcome, then where the call stands
    // (its epoch and the hash of the commit that made it).
    let mut bob = Device::login(&relay, bob_id).await;
    assert_eq!(
        bob.recv().await,
        RelayMessage::Welcome {
            call,
            route,
            epoch: 1,
            welcome: b"welcome bob".to_vec()
        }
    );
    assert_eq!(
        bob.recv().await,
        RelayMessage::CallStatus {
            call,
            epoch: 1,
            last_commit: Some(sha2::Sha256::digest(b"add bob").into()),
        }
    );

    // Alice is ready: no Switch yet (her next message is the answer to a later request).
    alice.send(RelayMessage::Ready { call, epoch: 1 }).await;
    alice.sync().await;
    // Bob is ready too: both switch.
    bob.send(RelayMessage::Ready { call, epoch: 1 }).await;
    for d in [&mut alice, &mut bob] {
        assert_eq!(d.recv().await, RelayMessage::Switch { call, epoch: 1 });
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn devices_on_different_addresses_of_one_relay_are_in_the_same_call() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| {
        c.also_bind = vec!["127.0.0.2:0".parse().unwrap()];
    })
    .await;
    let addrs = relay.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], relay.local_addr());
    assert_eq!(addrs[1].ip().to_string(), "127.0.0.2");
    // Alice at the first address, Bob at the second.
    let mut alice = Device::login_at("127.0.0.1", addrs[0], &relay, identity()).await;
    let mut bob = Device::login_at("127.0.0.2", addrs[1], &relay, identity()).await;
    let call = CallRef([21; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;
    // Media crosses from one address's endpoint to the other's, both ways.
    let frame = media(route, 1, 0, b"alice, on the first address");
    alice.send_datagram(&frame);
    assert_eq!(&bob.datagram().await[..], &frame[..]);
    let frame = media(route, 1 << 3 | 1, 0, b"bob, on the second");
    bob.send_datagram(&frame);
    assert_eq!(&alice.datagram().await[..], &frame[..]);
    until(&relay, "both forwarded", |s| s.datagrams_forwarded == 2).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_relay_that_cannot_bind_every_address_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await;
    let taken = first.local_addr();
    let other = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), other.path().to_path_buf());
    config.db_key = Some(db_key());
    config.also_bind = vec![taken];
    assert!(
        Relay::start(config).await.is_err(),
        "the second address is taken"
    );
    first.shutdown().await;
}

#[tokio::test]
async fn datagrams_reach_the_other_members_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let mut carol = Device::new(&relay).await;
    let mallory = Device::new(&relay).await;
    let call = CallRef([9; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob, &mut carol]).await;

    // Alice (leaf 0) sends under epoch 1: both others get the very bytes.
    let frame = media(route, 1, 0, b"opus under epoch 1");
    alice.send_datagram(&frame);
    assert_eq!(&bob.datagram().await[..], &frame[..]);
    assert_eq!(&carol.datagram().await[..], &frame[..]);
    until(&relay, "two forwarded", |s| s.datagrams_forwarded == 2).await;

    // A non-member's datagram, an unknown route's, and a broken one are dropped and counted.
    mallory.send_datagram(&media(route, 1, 1, b"intruder"));
    mallory.send_datagram(&media(route + 5, 1, 1, b"nowhere"));
    mallory.send_datagram(&[0xc0]);
    until(&relay, "the drops", |s| {
        s.dropped_not_member == 1 && s.dropped_no_route == 1 && s.dropped_malformed == 1
    })
    .await;

    // Alice removes Carol: Carol hears it, and gets no media from then on.
    alice
        .send(RelayMessage::Commit {
            call,
            epoch: 1,
            commit: b"remove carol".to_vec(),
            welcome: None,
            added: vec![],
            removed: vec![carol.key()],
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::CommitResult { accepted: true, .. }
    ));
    assert!(matches!(
        carol.recv().await,
        RelayMessage::Handshake { epoch: 1, .. }
    ));
    assert_eq!(carol.recv().await, RelayMessage::Removed { call });
    let frame = media(route, 1, 1, b"still epoch 1, after the removal");
    alice.send_datagram(&frame);
    assert_eq!(&bob.datagram().await[..], &frame[..]);
    until(&relay, "one more forwarded", |s| s.datagrams_forwarded == 3).await;
    // Carol's own datagrams are not forwarded either.
    carol.send_datagram(&media(route, 9, 0, b"removed"));
    until(&relay, "the removed member's drop", |s| {
        s.dropped_not_member == 2
    })
    .await;

    // Dave joins at epoch 3: frames of epoch 2 are not forwarded to him, frames of 3 are.
    let mut dave = Device::new(&relay).await;
    add(&mut alice, call, 2, &mut [&mut dave]).await;
    let old = media(route, 2, 2, b"epoch 2");
    alice.send_datagram(&old);
    assert_eq!(&bob.datagram().await[..], &old[..]);
    until(&relay, "the drop before the join", |s| {
        s.dropped_before_join == 1
    })
    .await;
    let new = media(route, 3, 3, b"epoch 3");
    alice.send_datagram(&new);
    assert_eq!(&bob.datagram().await[..], &new[..]);
    assert_eq!(&dave.datagram().await[..], &new[..]);
    relay.shutdown().await;
}

#[tokio::test]
async fn leaving_and_the_hold_time_tell_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| c.hold_time = Duration::from_millis(200)).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let mut carol = Device::new(&relay).await;
    let call = CallRef([10; 16]);
    open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob, &mut carol]).await;

    bob.send(RelayMessage::Leave { call }).await;
    for d in [&mut alice, &mut carol] {
        assert_eq!(
            d.recv().await,
            RelayMessage::MemberGone {
                call,
                identity: bob.key()
            }
        );
    }
    // Alice commits Bob's removal although the relay dropped him already: accepted.
    alice
        .send(RelayMessage::Commit {
            call,
            epoch: 1,
            commit: b"remove bob".to_vec(),
            welcome: None,
            added: vec![],
            removed: vec![bob.key()],
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::CommitResult { accepted: true, .. }
    ));
    assert!(matches!(
        carol.recv().await,
        RelayMessage::Handshake { epoch: 1, .. }
    ));

    // Carol's connection closes: past the hold time she is gone.
    let carol_key = carol.key();
    carol.link.conn.close(0u32.into(), b"bye");
    drop(carol);
    assert_eq!(
        alice.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: carol_key
        }
    );
    // The last member leaves: the call ends and its route is free for the next call.
    alice.send(RelayMessage::Leave { call }).await;
    let next = open_call(&mut alice, CallRef([11; 16])).await;
    assert_eq!(next, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_commit_order_and_the_certificate_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let fingerprint = relay.fingerprint();
    let alice_id = identity();
    let mut alice = Device::login(&relay, alice_id.clone()).await;
    let call = CallRef([12; 16]);
    open_call(&mut alice, call).await;
    alice
        .send(RelayMessage::Commit {
            call,
            epoch: 0,
            commit: b"epoch 0".to_vec(),
            welcome: Some(b"w".to_vec()),
            added: vec![[0x42; 32]],
            removed: vec![],
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::CommitResult { accepted: true, .. }
    ));
    drop(alice);
    relay.shutdown().await;

    let relay = start(dir.path()).await;
    assert_eq!(relay.fingerprint(), fingerprint, "the certificate is kept");
    let mut alice = Device::login(&relay, alice_id).await;
    // Where the call stands, from the database: the last commit's hash survived too.
    assert_eq!(
        alice.recv().await,
        RelayMessage::CallStatus {
            call,
            epoch: 1,
            last_commit: Some(sha2::Sha256::digest(b"epoch 0").into()),
        }
    );
    let commit = |epoch: u64| RelayMessage::Commit {
        call,
        epoch,
        commit: format!("at {epoch}").into_bytes(),
        welcome: None,
        added: vec![],
        removed: vec![],
    };
    alice.send(commit(0)).await;
    assert_eq!(
        alice.recv().await,
        RelayMessage::CommitResult {
            call,
            epoch: 0,
            accepted: false
        }
    );
    alice.send(commit(1)).await;
    assert_eq!(
        alice.recv().await,
        RelayMessage::CommitResult {
            call,
            epoch: 1,
            accepted: true
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_bad_frame_is_answered_and_a_broken_stream_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;

    // A frame whose body does not decode: answered, the connection goes on.
    alice
        .link
        .send
        .write_all(&[0, 0, 0, 1, 0x7f])
        .await
        .unwrap();
    assert_eq!(
        alice.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::BadRequest,
            call: None
        }
    );
    // A message only the relay sends: refused the same way.
    alice.send(RelayMessage::AuthOk).await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::BadRequest,
            ..
        }
    ));
    alice.sync().await;

    // A length beyond the largest frame breaks the stream: that connection closes.
    alice
        .link
        .send
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(alice.link.try_recv().await, None);
    guard("the close", alice.link.conn.closed()).await;

    // Bob did not notice.
    bob.sync().await;
    assert_eq!(relay.stats().bad_frames, 3);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_new_connection_of_an_identity_replaces_the_old_one_and_gets_the_held_messages() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| c.hold_time = Duration::from_millis(100)).await;
    let id = identity();
    let mut first = Device::login(&relay, id.clone()).await;
    let mut watcher = Device::new(&relay).await;
    let call = CallRef([13; 16]);
    open_call(&mut first, call).await;
    let mut second = Device::login(&relay, id.clone()).await;
    let closed = guard("the old connection's close", first.link.conn.closed()).await;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == 2u32.into()),
        "{closed:?}"
    );
    // The new connection is the member now: told where its call stands (epoch 0, no commit
    // yet), and its commit is accepted.
    assert_eq!(
        second.recv().await,
        RelayMessage::CallStatus {
            call,
            epoch: 0,
            last_commit: None
        }
    );
    add(&mut second, call, 0, &mut [&mut watcher]).await;
    assert_eq!(relay.stats().devices_online, 2);

    // Gone past the hold time: the others hear it, and it hears it when it comes back.
    second.link.conn.close(0u32.into(), b"bye");
    drop(second);
    assert_eq!(
        watcher.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: id.public().to_bytes()
        }
    );
    let mut third = Device::login(&relay, id).await;
    assert_eq!(third.recv().await, RelayMessage::Removed { call });
    relay.shutdown().await;
}

#[tokio::test]
async fn a_receiver_without_room_is_skipped_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    // A datagram send buffer smaller than any datagram: every copy finds it full.
    let relay = start_with(dir.path(), |c| c.datagram_send_buffer = 8).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let call = CallRef([14; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;
    alice.send_datagram(&media(route, 1, 0, b"more than eight bytes"));
    until(&relay, "the drop", |s| s.dropped_slow_receiver == 1).await;
    assert_eq!(relay.stats().datagrams_forwarded, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn stalled_connections_from_one_source_do_not_keep_a_device_from_authenticating() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| {
        c.max_unauthenticated = 6;
        c.max_unauthenticated_per_source = 3;
        // Nothing times out during the test: the places alone decide.
        c.auth_timeout = Duration::from_secs(600);
    })
    .await;
    let (addr, fp) = (relay.local_addr(), relay.fingerprint());
    // One source opens five connections and never authenticates: three are held, two refused.
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match connect_from("127.0.0.2", addr, fp).await {
            Ok(link) => stalled.push(link),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((stalled.len(), refused), (3, 2));
    let stats = relay.stats();
    assert_eq!(stats.refused_source_full, 2, "{stats:?}");
    assert_eq!(stats.unauthenticated, 3, "{stats:?}");
    // A device from another source authenticates beside them.
    let _alice = Device::login_from("127.0.0.1", &relay, identity()).await;
    // A second source fills the remaining places.
    for _ in 0..3 {
        stalled.push(connect_from("127.0.0.3", addr, fp).await.unwrap());
    }
    until(&relay, "every place taken", |s| s.unauthenticated == 6).await;
    // Every place is taken: a newcomer takes back the oldest place of the biggest holder
    // (both hold three: the older), and authenticates.
    let mut bob = Device::login_from("127.0.0.4", &relay, identity()).await;
    assert_eq!(closed_with(&stalled[0].conn).await, 1, "close code 1");
    bob.sync().await;
    let stats = relay.stats();
    assert_eq!(stats.unauthenticated_taken_back, 1, "{stats:?}");
    assert_eq!(stats.authenticated, 2, "{stats:?}");
    assert_eq!(stats.devices_online, 2, "{stats:?}");
    assert!(stalled[1..].iter().all(|l| l.conn.close_reason().is_none()));
    // Places given back are free again: the first source gets one back.
    drop(stalled.remove(1));
    until(&relay, "a place given back", |s| s.unauthenticated == 4).await;
    let _carol = Device::login_from("127.0.0.2", &relay, identity()).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| c.auth_timeout = Duration::from_millis(200)).await;
    let stalled = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    assert_eq!(closed_with(&stalled.conn).await, 1);
    until(&relay, "the timeout counted", |s| {
        s.auth_timeouts == 1 && s.auth_failures == 1 && s.unauthenticated == 0
    })
    .await;
    // A device that authenticates in time stays.
    let mut alice = Device::new(&relay).await;
    alice.sync().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_device_back_after_the_hold_time_may_ask_to_be_added_back_and_a_leaver_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| c.hold_time = Duration::from_millis(100)).await;
    let mut alice = Device::new(&relay).await;
    let bob_id = identity();
    let mut bob = Device::login(&relay, bob_id.clone()).await;
    let mut carol = Device::new(&relay).await;
    let call = CallRef([14; 16]);
    open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob, &mut carol]).await;
    let bob_key = bob.key();
    bob.link.conn.close(0u32.into(), b"network gone");
    drop(bob);
    for d in [&mut alice, &mut carol] {
        assert_eq!(
            d.recv().await,
            RelayMessage::MemberGone {
                call,
                identity: bob_key
            }
        );
    }
    // Bob comes back: he hears he is out, asks to be added back, and the members are asked.
    let mut bob = Device::login(&relay, bob_id).await;
    assert_eq!(bob.recv().await, RelayMessage::Removed { call });
    bob.send(RelayMessage::Rejoin { call }).await;
    for d in [&mut alice, &mut carol] {
        assert_eq!(
            d.recv().await,
            RelayMessage::Readd {
                call,
                identity: bob_key
            }
        );
    }
    // Once only: a second Rejoin of his is refused (he is not a member).
    bob.send(RelayMessage::Rejoin { call }).await;
    assert_eq!(
        bob.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::NotMember,
            call: Some(call)
        }
    );
    // A member that left is not asked back for.
    carol.send(RelayMessage::Leave { call }).await;
    carol.sync().await;
    carol.send(RelayMessage::Rejoin { call }).await;
    assert_eq!(
        carol.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::NotMember,
            call: Some(call)
        }
    );
    assert_eq!(
        alice.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: carol.key()
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn messages_held_for_devices_away_outlive_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let (alice_id, bob_id, carol_id) = (identity(), identity(), identity());
    let mut alice = Device::login(&relay, alice_id.clone()).await;
    let mut bob = Device::login(&relay, bob_id.clone()).await;
    let call = CallRef([17; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;
    // Bob's connection drops; Alice then adds Carol, who has not connected yet: the commit is
    // held for Bob, the Welcome for Carol.
    bob.link.conn.close(0u32.into(), b"network gone");
    drop(bob);
    until(&relay, "Bob offline", |s| s.devices_online == 1).await;
    let carol_key = carol_id.public().to_bytes();
    alice
        .send(RelayMessage::Commit {
            call,
            epoch: 1,
            commit: b"add carol".to_vec(),
            welcome: Some(b"welcome carol".to_vec()),
            added: vec![carol_key],
            removed: vec![],
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayMessage::CommitResult { accepted: true, .. }
    ));
    drop(alice);
    relay.shutdown().await;

    let relay = start(dir.path()).await;
    let status = RelayMessage::CallStatus {
        call,
        epoch: 2,
        last_commit: Some(sha2::Sha256::digest(b"add carol").into()),
    };
    let mut carol = Device::login(&relay, carol_id).await;
    assert_eq!(
        carol.recv().await,
        RelayMessage::Welcome {
            call,
            route,
            epoch: 2,
            welcome: b"welcome carol".to_vec()
        }
    );
    assert_eq!(carol.recv().await, status);
    let mut bob = Device::login(&relay, bob_id.clone()).await;
    assert_eq!(
        bob.recv().await,
        RelayMessage::Handshake {
            call,
            epoch: 1,
            message: b"add carol".to_vec()
        }
    );
    assert_eq!(bob.recv().await, status);
    // Delivered once: Bob's next connection gets only where the call stands.
    bob.link.conn.close(0u32.into(), b"again");
    drop(bob);
    until(&relay, "Bob offline", |s| s.devices_online == 1).await;
    let mut bob = Device::login(&relay, bob_id).await;
    assert_eq!(bob.recv().await, status);
    bob.sync().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn a_device_gone_before_a_relay_restart_hears_it_after_and_may_ask_to_be_added_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| c.hold_time = Duration::from_millis(100)).await;
    let (alice_id, bob_id, carol_id) = (identity(), identity(), identity());
    let mut alice = Device::login(&relay, alice_id.clone()).await;
    let mut bob = Device::login(&relay, bob_id.clone()).await;
    let mut carol = Device::login(&relay, carol_id.clone()).await;
    let call = CallRef([16; 16]);
    open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob, &mut carol]).await;
    let bob_key = bob.key();
    bob.link.conn.close(0u32.into(), b"network gone");
    drop(bob);
    for d in [&mut alice, &mut carol] {
        assert_eq!(
            d.recv().await,
            RelayMessage::MemberGone {
                call,
                identity: bob_key
            }
        );
    }
    // The relay restarts: the `Removed` it held for Bob is lost with its memory.
    drop(alice);
    drop(carol);
    relay.shutdown().await;
    let relay = start_with(dir.path(), |c| c.hold_time = Duration::from_secs(30)).await;
    let mut alice = Device::login(&relay, alice_id).await;
    let mut carol = Device::login(&relay, carol_id).await;
    for d in [&mut alice, &mut carol] {
        assert!(matches!(
            d.recv().await,
            RelayMessage::CallStatus { call: c, epoch: 1, .. } if c == call
        ));
    }
    // Bob comes back after it: he still hears he is out, once, and may ask back, once.
    let mut bob = Device::login(&relay, bob_id).await;
    assert_eq!(bob.recv().await, RelayMessage::Removed { call });
    bob.send(RelayMessage::Rejoin { call }).await;
    for d in [&mut alice, &mut carol] {
        assert_eq!(
            d.recv().await,
            RelayMessage::Readd {
                call,
                identity: bob_key
            }
        );
    }
    bob.send(RelayMessage::Rejoin { call }).await;
    assert_eq!(
        bob.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::NotMember,
            call: Some(call)
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_repeated_or_too_old_sframe_counter_is_dropped_and_counted_and_reordering_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let mut alice = Device::new(&relay).await;
    let mut bob = Device::new(&relay).await;
    let call = CallRef([15; 16]);
    let route = open_call(&mut alice, call).await;
    add(&mut alice, call, 0, &mut [&mut bob]).await;

    // Alice (leaf 0, epoch 1: KID 1): counters out of order inside the window all go through.
    let frames: Vec<Vec<u8>> = [0, 1, 3, 2]
        .iter()
        .map(|&ctr| media(route, 1, ctr, format!("frame {ctr}").as_bytes()))
        .collect();
    for f in &frames {
        alice.send_datagram(f);
    }
    let mut heard = Vec::new();
    for _ in 0..frames.len() {
        heard.push(bob.datagram().await.to_vec());
    }
    heard.sort();
    let mut sent = frames.clone();
    sent.sort();
    assert_eq!(heard, sent);
    until(&relay, "four forwarded", |s| s.datagrams_forwarded == 4).await;
    assert_eq!(relay.stats().counter_reuse_dropped(), 0);

    // The control: the very datagram again (a replay), or another frame under a counter
    // already used (a sender reusing it), is not forwarded and is counted.
    alice.send_datagram(&frames[2]);
    alice.send_datagram(&media(route, 1, 1, b"another frame, counter 1 again"));
    until(&relay, "two repeats", |s| s.dropped_counter_repeat == 2).await;
    // Far ahead, then one more than the window behind it: too old.
    let ahead = media(route, 1, 1000, b"counter 1000");
    alice.send_datagram(&ahead);
    assert_eq!(&bob.datagram().await[..], &ahead[..]);
    alice.send_datagram(&media(route, 1, 1000 - 200, b"counter 800"));
    until(&relay, "one too old", |s| s.dropped_counter_too_old == 1).await;

    // Bob's counters are his own: his counter 1 under his KID (leaf 1: 9) goes through.
    let bobs = media(route, 9, 1, b"bob's counter 1");
    bob.send_datagram(&bobs);
    assert_eq!(&alice.datagram().await[..], &bobs[..]);
    until(&relay, "six forwarded", |s| s.datagrams_forwarded == 6).await;
    let s = relay.stats();
    assert_eq!(s.counter_reuse_dropped(), 3);
    assert_eq!(s.dropped_counter_too_many_keys, 0);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_source_starting_connections_too_fast_is_refused_past_its_burst_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_with(dir.path(), |c| {
        c.handshake_rate.burst = 2;
        c.handshake_rate.per_second = 1;
        c.auth_timeout = Duration::from_secs(600);
    })
    .await;
    let (addr, fp) = (relay.local_addr(), relay.fingerprint());
    // The burst: every one gets through (the bucket starts full).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from("127.0.0.2", addr, fp).await.unwrap());
    }
    // Past it, attempts are refused before TLS; one may get through per second refilled.
    let mut refused = 0;
    for _ in 0..6 {
        match connect_from("127.0.0.2", addr, fp).await {
            Ok(link) => held.push(link),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 1, "nothing refused past the burst");
    let stats = relay.stats();
    assert_eq!(stats.refused_rate_limited, refused, "{stats:?}");
    assert_eq!(stats.refused_source_full, 0, "{stats:?}");
    // Another source has its own bucket: a device logs in beside them.
    let _alice = Device::login_from("127.0.0.1", &relay, identity()).await;
    assert_eq!(relay.stats().refused_rate_limited, refused);
    relay.shutdown().await;
}

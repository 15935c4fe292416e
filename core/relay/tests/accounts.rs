//! A relay that requires accounts, over real QUIC on loopback with a real SQLite data
//! directory administered as the command line does it (another connection to the same file,
//! while the relay runs): device login with password and TOTP, key-only reconnection, the
//! version 1 refusal, failures that all look alike, lock-outs, revocation and disabled
//! accounts noticed by the running relay, the role matrix, the audit log, backup and restore.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;

use viska_proto::relay::RELAY_ALPN_V2;
use viska_relay::admin::Admin;
use viska_relay::totp::{STEP_SECS, TotpSecret};
use viska_relay::{AccountsMode, Role, ThrottlePolicy};
use zeroize::Zeroizing;

const PASSWORD: &str = "vN4#qT9!mZ2@rL7x";
const BACKUP_PASSPHRASE: &str = "quartz lantern 71 drifting over harbours";

/// The accounts of a test and the TOTP steps their logins used (each step serves once).
struct Accounts {
    secrets: HashMap<&'static str, TotpSecret>,
    last: HashMap<&'static str, u64>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Accounts {
    /// alice and bob (agents), sam and sue (supervisors), root (admin), each with TOTP.
    fn create(dir: &Path) -> Self {
        let mut admin = Admin::open(dir, Some(&db_key()), "test").unwrap();
        let mut secrets = HashMap::new();
        for (name, role) in [
            ("alice", Role::Agent),
            ("bob", Role::Agent),
            ("sam", Role::Supervisor),
            ("sue", Role::Supervisor),
            ("root", Role::Admin),
        ] {
            admin.add_user(name, PASSWORD, role).unwrap();
            let enrollment = admin.totp_enroll(name).unwrap();
            assert_eq!(format!("{enrollment:?}"), "TotpEnrollment(***)");
            assert!(!format!("{admin:?}").contains(PASSWORD));
            secrets.insert(name, enrollment.secret);
        }
        Self {
            secrets,
            last: HashMap::new(),
        }
    }

    /// A code of `name` for a step after the last one used: the current step, then the next.
    fn code(&mut self, name: &'static str) -> String {
        let now = unix_now() / STEP_SECS;
        let step = self.last.get(name).map_or(now, |l| (l + 1).max(now));
        assert!(
            step <= now + 1,
            "more logins of {name} than this test's window allows"
        );
        self.last.insert(name, step);
        self.secrets[name].code_at(step * STEP_SECS)
    }

    /// A code that was used already.
    fn used_code(&self, name: &'static str) -> String {
        self.secrets[name].code_at(self.last[name] * STEP_SECS)
    }
}

async fn start_accounts(dir: &Path, tweak: impl FnOnce(&mut RelayConfig)) -> RelayHandle {
    start_with(dir, |c| {
        c.accounts = AccountsMode::Required;
        c.recheck_interval = Duration::from_millis(20);
        tweak(c);
    })
    .await
}

/// Connects on protocol version 2 from `local` and authenticates `id`'s key.
async fn auth_v2(local: &str, relay: &RelayHandle, id: &IdentityKeyPair) -> Link {
    let mut link = connect_with(
        local,
        relay.local_addr(),
        relay.fingerprint(),
        &[RELAY_ALPN_V2, RELAY_ALPN],
    )
    .await
    .unwrap();
    let signature = id.sign(&auth_transcript(&link.exporter(), &link.nonce));
    link.send(&RelayMessage::Auth {
        identity: id.public().to_bytes(),
        signature,
    })
    .await;
    link
}

fn login_message(account: &str, password: &str, code: &str) -> RelayMessage {
    RelayMessage::Login {
        account: account.into(),
        password: Zeroizing::new(password.into()),
        code: code.into(),
    }
}

/// A new device logs in as `account`: `Ok` once the relay sent `AuthOk`, `Err(retry_after)`
/// for `LoginFailed`.
async fn login_from(
    local: &str,
    relay: &RelayHandle,
    id: IdentityKeyPair,
    account: &str,
    password: &str,
    code: &str,
) -> Result<Device, u32> {
    let mut link = auth_v2(local, relay, &id).await;
    assert_eq!(link.recv().await, RelayMessage::LoginRequired);
    link.send(&login_message(account, password, code)).await;
    match link.recv().await {
        RelayMessage::AuthOk => Ok(Device { link, id }),
        RelayMessage::LoginFailed { retry_after_secs } => Err(retry_after_secs),
        other => panic!("expected AuthOk or LoginFailed, got {other:?}"),
    }
}

async fn login(relay: &RelayHandle, accounts: &mut Accounts, name: &'static str) -> Device {
    let code = accounts.code(name);
    login_from("127.0.0.1", relay, identity(), name, PASSWORD, &code)
        .await
        .unwrap_or_else(|r| panic!("{name} could not log in ({r})"))
}

/// A registered device connects again with its key alone.
async fn reconnect(relay: &RelayHandle, id: IdentityKeyPair) -> Device {
    let mut link = auth_v2("127.0.0.1", relay, &id).await;
    assert_eq!(link.recv().await, RelayMessage::AuthOk);
    Device { link, id }
}

fn same_identity(d: &Device) -> IdentityKeyPair {
    IdentityKeyPair::from_secret_bytes(d.id.to_secret_bytes().expose_secret()).unwrap()
}

/// `by` commits at `epoch` with these changes: the relay's answer to it.
async fn commit(
    by: &mut Device,
    call: CallRef,
    epoch: u64,
    added: Vec<DeviceKey>,
    removed: Vec<DeviceKey>,
) -> RelayMessage {
    let welcome = (!added.is_empty()).then(|| b"welcome".to_vec());
    by.send(RelayMessage::Commit {
        call,
        epoch,
        commit: b"commit".to_vec(),
        welcome,
        added,
        removed,
    })
    .await;
    by.recv().await
}

fn accepted(call: CallRef, epoch: u64) -> RelayMessage {
    RelayMessage::CommitResult {
        call,
        epoch,
        accepted: true,
    }
}

fn forbidden(call: CallRef) -> RelayMessage {
    RelayMessage::Error {
        code: RelayErrorCode::Forbidden,
        call: Some(call),
    }
}

async fn expect_welcome(d: &mut Device, call: CallRef) {
    match d.recv().await {
        RelayMessage::Welcome { call: c, .. } if c == call => {}
        other => panic!("expected a Welcome, got {other:?}"),
    }
}

fn audit_kinds(dir: &Path) -> Vec<String> {
    let admin = Admin::open(dir, Some(&db_key()), "test").unwrap();
    let mut out = Vec::new();
    admin.audit_export(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_device_logs_in_once_and_then_connects_with_its_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let alice = login(&relay, &mut accounts, "alice").await;
    let key = alice.key();
    let id = same_identity(&alice);
    drop(alice);
    let mut again = reconnect(&relay, id).await;
    again.sync().await;
    assert_eq!(relay.stats().logins, 1);
    let admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    let devices = admin.devices(Some("alice")).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].key, key);
    assert_eq!(devices[0].revoked_ms, None);
    assert!(admin.devices(Some("bob")).unwrap().is_empty());
    relay.shutdown().await;
    let kinds = audit_kinds(dir.path());
    assert!(kinds.contains(&"login".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"device_auth".to_string()), "{kinds:?}");
    assert!(admin.audit_verify().unwrap().is_ok());
}

#[tokio::test]
async fn a_version_1_device_that_is_not_registered_gets_a_typed_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let id = identity();
    let mut link = connect(relay.local_addr(), relay.fingerprint())
        .await
        .unwrap();
    let signature = id.sign(&auth_transcript(&link.exporter(), &link.nonce));
    link.send(&RelayMessage::Auth {
        identity: id.public().to_bytes(),
        signature,
    })
    .await;
    assert_eq!(
        link.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::LoginRequired,
            call: None
        }
    );
    assert_eq!(closed_with(&link.conn).await, 5);
    // Registered (over version 2), the same key may then use version 1.
    let alice = login(&relay, &mut accounts, "alice").await;
    let again = Device::login(&relay, same_identity(&alice)).await;
    drop(again);
    relay.shutdown().await;

    // An open relay lets a version 2 device in without a login.
    let open = tempfile::tempdir().unwrap();
    let relay = start(open.path()).await;
    let mut link = auth_v2("127.0.0.1", &relay, &identity()).await;
    assert_eq!(link.recv().await, RelayMessage::AuthOk);
    relay.shutdown().await;
}

#[tokio::test]
async fn every_kind_of_failed_login_gets_the_same_answer_and_costs_a_verification() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    Admin::open(dir.path(), Some(&db_key()), "test")
        .unwrap()
        .set_disabled("bob", true)
        .unwrap();
    let relay = start_accounts(dir.path(), |c| {
        c.account_throttle.free_failures = 100;
        c.source_throttle.free_failures = 100;
    })
    .await;
    let good = accounts.code("alice");
    let cases = [
        ("nobody", PASSWORD, good.clone()),
        ("alice", "wrong password 1234!", good.clone()),
        ("alice", PASSWORD, "000000".to_string()),
        ("alice", PASSWORD, "12345".to_string()),
        ("bob", PASSWORD, accounts.code("bob")),
        ("not a valid name", PASSWORD, good.clone()),
    ];
    for (i, (account, password, code)) in cases.iter().enumerate() {
        let before = relay.stats().password_checks;
        let got = login_from("127.0.0.1", &relay, identity(), account, password, code).await;
        assert_eq!(got.err(), Some(0), "case {i} ({account})");
        assert_eq!(
            relay.stats().password_checks,
            before + 1,
            "case {i}: one verification, known account or not"
        );
    }
    // The right code works once; the same code again does not.
    login_from("127.0.0.1", &relay, identity(), "alice", PASSWORD, &good)
        .await
        .unwrap();
    let replay = accounts.used_code("alice");
    let got = login_from("127.0.0.1", &relay, identity(), "alice", PASSWORD, &replay).await;
    assert_eq!(got.err(), Some(0), "a code serves once");
    // Names are not case-sensitive.
    let code = accounts.code("alice");
    login_from("127.0.0.1", &relay, identity(), "ALICE", PASSWORD, &code)
        .await
        .unwrap();
    let stats = relay.stats();
    assert_eq!((stats.logins, stats.login_failures), (2, 7));
    relay.shutdown().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_name_and_then_the_source_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let policy = |free| ThrottlePolicy {
        free_failures: free,
        base: Duration::from_secs(60),
        max: Duration::from_secs(600),
        forget: Duration::from_secs(3600),
    };
    let relay = start_accounts(dir.path(), |c| {
        c.account_throttle = policy(2);
        c.source_throttle = policy(5);
    })
    .await;
    // On one connection: two free failures, then the third locks alice for 60 s.
    let mut link = auth_v2("127.0.0.2", &relay, &identity()).await;
    assert_eq!(link.recv().await, RelayMessage::LoginRequired);
    for expected in [0, 0, 60] {
        link.send(&login_message("alice", "wrong password 1234!", "000000"))
            .await;
        assert_eq!(
            link.recv().await,
            RelayMessage::LoginFailed {
                retry_after_secs: expected
            }
        );
    }
    // Three attempts per connection: the relay closes it.
    assert_eq!(closed_with(&link.conn).await, 1);
    // Locked: even the right password and code are refused, unchecked.
    let checks = relay.stats().password_checks;
    let code = accounts.code("alice");
    let got = login_from("127.0.0.2", &relay, identity(), "alice", PASSWORD, &code).await;
    assert!(
        matches!(got, Err(s) if (59..=60).contains(&s)),
        "{:?}",
        got.err()
    );
    assert_eq!(relay.stats().password_checks, checks, "not verified");
    assert_eq!(relay.stats().login_locked, 1);
    // An unknown name is locked the same way (the answers do not tell which names exist).
    for expected in [0, 0, 60] {
        let got = login_from(
            "127.0.0.2",
            &relay,
            identity(),
            "nobody",
            PASSWORD,
            "000000",
        )
        .await;
        assert_eq!(got.err(), Some(expected));
    }
    // That made six failures from 127.0.0.2: the source is locked for any name.
    let code = accounts.code("bob");
    let got = login_from("127.0.0.2", &relay, identity(), "bob", PASSWORD, &code).await;
    assert!(matches!(got, Err(s) if s > 0), "{:?}", got.err());
    // Another source, and another account, are not.
    login_from(
        "127.0.0.3",
        &relay,
        identity(),
        "bob",
        PASSWORD,
        &accounts.code("bob"),
    )
    .await
    .unwrap();
    relay.shutdown().await;
    let kinds = audit_kinds(dir.path());
    for kind in ["login_failed", "lockout", "login_locked", "login"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_taken_out_of_its_calls_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let mut bob = login(&relay, &mut accounts, "bob").await;
    let call = CallRef([1; 16]);
    open_call(&mut alice, call).await;
    assert_eq!(
        commit(&mut alice, call, 0, vec![bob.key()], vec![]).await,
        accepted(call, 0)
    );
    expect_welcome(&mut bob, call).await;

    // The command line revokes bob's device while the relay runs.
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.revoke_device(&bob.key()).unwrap();
    assert_eq!(closed_with(&bob.link.conn).await, 6);
    assert_eq!(
        alice.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: bob.key()
        }
    );
    assert_eq!(relay.stats().evicted, 1);
    // Refused on reconnecting, with its key alone or by logging in again.
    let mut link = auth_v2("127.0.0.1", &relay, &same_identity(&bob)).await;
    assert_eq!(
        link.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Revoked,
            call: None
        }
    );
    assert_eq!(closed_with(&link.conn).await, 6);
    let listed = admin.devices(Some("bob")).unwrap();
    assert!(listed[0].revoked_ms.is_some());
    // alice's call goes on: she commits bob's removal, as after any departure.
    assert_eq!(
        commit(&mut alice, call, 1, vec![], vec![bob.key()]).await,
        accepted(call, 1)
    );
    relay.shutdown().await;
    let kinds = audit_kinds(dir.path());
    for kind in [
        "device_revoke",
        "device_disconnect",
        "auth_refused",
        "call_leave",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn a_disabled_account_is_disconnected_until_it_is_enabled_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let alice = login(&relay, &mut accounts, "alice").await;
    let id = same_identity(&alice);
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.set_disabled("alice", true).unwrap();
    assert_eq!(closed_with(&alice.link.conn).await, 6);
    let mut link = auth_v2("127.0.0.1", &relay, &id).await;
    assert_eq!(
        link.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Revoked,
            call: None
        }
    );
    // Enabled again: admitted once the running relay has seen the change.
    let rechecked = relay.stats().rechecked;
    admin.set_disabled("alice", false).unwrap();
    until(&relay, "alice checked again", |s| s.rechecked > rechecked).await;
    let mut back = reconnect(&relay, id).await;
    back.sync().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn the_role_matrix_is_enforced_on_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let mut bob = login(&relay, &mut accounts, "bob").await;
    let mut sam = login(&relay, &mut accounts, "sam").await;
    let mut root = login(&relay, &mut accounts, "root").await;
    let call = CallRef([2; 16]);
    open_call(&mut alice, call).await;

    // An agent may not add an admin, nor a device of no account.
    assert_eq!(
        commit(&mut alice, call, 0, vec![root.key()], vec![]).await,
        forbidden(call)
    );
    assert_eq!(
        commit(&mut alice, call, 0, vec![[9; 32]], vec![]).await,
        forbidden(call)
    );
    // An agent may add agents and a supervisor.
    assert_eq!(
        commit(&mut alice, call, 0, vec![bob.key(), sam.key()], vec![]).await,
        accepted(call, 0)
    );
    expect_welcome(&mut bob, call).await;
    expect_welcome(&mut sam, call).await;
    // An agent may not remove a member of another account, nor a supervisor add an admin.
    assert_eq!(
        commit(&mut alice, call, 1, vec![], vec![bob.key()]).await,
        forbidden(call)
    );
    assert_eq!(
        commit(&mut sam, call, 1, vec![root.key()], vec![]).await,
        forbidden(call),
        "a supervisor may not add an admin"
    );
    // A supervisor may remove an agent.
    assert_eq!(
        commit(&mut sam, call, 1, vec![], vec![bob.key()]).await,
        accepted(call, 1)
    );
    assert!(matches!(
        alice.recv().await,
        RelayMessage::Handshake { epoch: 1, .. }
    ));
    assert!(matches!(
        bob.recv().await,
        RelayMessage::Handshake { epoch: 1, .. }
    ));
    assert_eq!(bob.recv().await, RelayMessage::Removed { call });

    // Roles change at once when the command line changes them: alice becomes an admin.
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    let rechecked = relay.stats().rechecked;
    admin.set_role("alice", Role::Admin).unwrap();
    until(&relay, "alice's role checked again", |s| {
        s.rechecked > rechecked
    })
    .await;
    assert_eq!(
        commit(&mut alice, call, 2, vec![root.key()], vec![]).await,
        accepted(call, 2)
    );
    expect_welcome(&mut root, call).await;
    assert!(matches!(
        sam.recv().await,
        RelayMessage::Handshake { epoch: 2, .. }
    ));
    // A supervisor may not remove an admin; an admin may remove anyone.
    assert_eq!(
        commit(&mut sam, call, 3, vec![], vec![root.key()]).await,
        forbidden(call)
    );
    assert_eq!(
        commit(&mut root, call, 3, vec![], vec![sam.key()]).await,
        accepted(call, 3)
    );
    relay.shutdown().await;
    let stats_forbidden = audit_kinds(dir.path())
        .iter()
        .filter(|k| *k == "forbidden")
        .count();
    assert_eq!(stats_forbidden, 5);
}

#[tokio::test]
async fn an_agent_removes_a_departed_member_and_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let mut bob = login(&relay, &mut accounts, "bob").await;
    let call = CallRef([3; 16]);
    open_call(&mut alice, call).await;
    assert_eq!(
        commit(&mut alice, call, 0, vec![bob.key()], vec![]).await,
        accepted(call, 0)
    );
    expect_welcome(&mut bob, call).await;
    bob.send(RelayMessage::Leave { call }).await;
    assert_eq!(
        alice.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: bob.key()
        }
    );
    assert_eq!(
        commit(&mut alice, call, 1, vec![], vec![bob.key()]).await,
        accepted(call, 1)
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_backup_taken_while_the_relay_runs_restores_and_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let fingerprint = relay.fingerprint();
    let alice = login(&relay, &mut accounts, "alice").await;
    let alice_id = same_identity(&alice);
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("b");
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.set_backup_params(viska_passwords::HashParams::TEST);
    let report = admin.backup(&backup, BACKUP_PASSPHRASE).unwrap();
    drop(admin);
    assert!(report.audit_rows >= 9, "{report:?}");
    drop(alice);
    relay.shutdown().await;

    // Restored under a key of its own.
    let new_key = viska_relay::DbKey::generate();
    let fresh = tempfile::tempdir().unwrap();
    let restored = fresh.path().join("relay");
    viska_relay::admin::restore(&backup, BACKUP_PASSPHRASE, &restored, Some(&new_key)).unwrap();
    let relay = start_accounts(&restored, |c| c.db_key = Some(new_key.clone())).await;
    assert_eq!(relay.fingerprint(), fingerprint, "devices' pins still hold");
    // The registered device comes back with its key alone; bob logs in.
    let mut alice = reconnect(&relay, alice_id).await;
    alice.sync().await;
    let mut bob = login(&relay, &mut accounts, "bob").await;
    bob.sync().await;
    relay.shutdown().await;
    let admin = Admin::open(&restored, Some(&new_key), "test").unwrap();
    assert!(admin.audit_verify().unwrap().is_ok());
    assert_eq!(admin.devices(None).unwrap().len(), 2);
}

#[tokio::test]
async fn the_audit_log_of_a_running_relay_verifies_and_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let _ = login_from("127.0.0.1", &relay, identity(), "bob", PASSWORD, "000000").await;
    let call = CallRef([4; 16]);
    open_call(&mut alice, call).await;
    alice.send(RelayMessage::Leave { call }).await;
    alice.sync().await;
    relay.shutdown().await;
    let admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    let report = admin.audit_verify().unwrap().unwrap();
    let mut out = Vec::new();
    admin.audit_export(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count() as u64, report.rows);
    assert_eq!(report.last_checkpoint, report.rows);
    for kind in [
        "\"login\"",
        "\"login_failed\"",
        "\"call_join\"",
        "\"call_leave\"",
    ] {
        assert!(text.contains(kind), "{kind}");
    }
    assert!(!text.contains(PASSWORD));
    // No code in any text field (the hashes are hex and may hold any digits).
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["kind", "actor", "subject", "source"] {
            assert!(!row[field].as_str().unwrap().contains("000000"), "{row}");
        }
        assert!(!row["details"].to_string().contains("000000"), "{row}");
    }
    assert!(!text.contains(accounts.secrets["alice"].to_base32().as_str()));
}

#[tokio::test]
async fn a_device_revoked_while_offline_is_taken_out_of_its_calls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    // A long hold time: only the revocation can take bob out.
    let relay = start_accounts(dir.path(), |c| c.hold_time = Duration::from_secs(600)).await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let mut bob = login(&relay, &mut accounts, "bob").await;
    let call = CallRef([5; 16]);
    open_call(&mut alice, call).await;
    assert_eq!(
        commit(&mut alice, call, 0, vec![bob.key()], vec![]).await,
        accepted(call, 0)
    );
    expect_welcome(&mut bob, call).await;
    let bob_key = bob.key();
    let bob_id = same_identity(&bob);
    bob.link.conn.close(0u32.into(), b"away");
    until(&relay, "bob offline", |s| s.devices_online == 1).await;
    Admin::open(dir.path(), Some(&db_key()), "test")
        .unwrap()
        .revoke_device(&bob_key)
        .unwrap();
    assert_eq!(
        alice.recv().await,
        RelayMessage::MemberGone {
            call,
            identity: bob_key
        }
    );
    let mut link = auth_v2("127.0.0.1", &relay, &bob_id).await;
    assert_eq!(
        link.recv().await,
        RelayMessage::Error {
            code: RelayErrorCode::Revoked,
            call: None
        }
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn the_other_refused_removals_and_additions_of_the_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let relay = start_accounts(dir.path(), |_| {}).await;
    let mut root = login(&relay, &mut accounts, "root").await;
    let mut alice = login(&relay, &mut accounts, "alice").await;
    let mut sam = login(&relay, &mut accounts, "sam").await;
    let mut sue = login(&relay, &mut accounts, "sue").await;
    let bob = login(&relay, &mut accounts, "bob").await;
    let bob_key = bob.key();
    drop(bob);
    let call = CallRef([6; 16]);
    open_call(&mut root, call).await;
    assert_eq!(
        commit(
            &mut root,
            call,
            0,
            vec![alice.key(), sam.key(), sue.key()],
            vec![]
        )
        .await,
        accepted(call, 0)
    );
    for d in [&mut alice, &mut sam, &mut sue] {
        expect_welcome(d, call).await;
    }
    // An agent removes neither a supervisor nor an admin; a supervisor not another one.
    assert_eq!(
        commit(&mut alice, call, 1, vec![], vec![sam.key()]).await,
        forbidden(call)
    );
    assert_eq!(
        commit(&mut alice, call, 1, vec![], vec![root.key()]).await,
        forbidden(call)
    );
    assert_eq!(
        commit(&mut sam, call, 1, vec![], vec![sue.key()]).await,
        forbidden(call)
    );
    // Not even an admin adds a device of a disabled account, or a revoked one.
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.set_disabled("bob", true).unwrap();
    assert_eq!(
        commit(&mut root, call, 1, vec![bob_key], vec![]).await,
        forbidden(call)
    );
    admin.set_disabled("bob", false).unwrap();
    admin.revoke_device(&bob_key).unwrap();
    assert_eq!(
        commit(&mut root, call, 1, vec![bob_key], vec![]).await,
        forbidden(call)
    );
    // The call is unchanged by all that: the next commit is still for epoch 1.
    assert_eq!(
        commit(&mut root, call, 1, vec![], vec![sue.key()]).await,
        accepted(call, 1)
    );
    assert_eq!(relay.stats().forbidden, 5);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_hash_made_with_weaker_parameters_is_renewed_at_the_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Accounts::create(dir.path());
    let mut admin = Admin::open(dir.path(), Some(&db_key()), "test").unwrap();
    admin.set_hash_params(viska_passwords::HashParams::TEST);
    admin
        .set_password("alice", "another Long passphrase 77")
        .unwrap();
    let stored = |dir: &Path| -> String {
        open_db(dir)
            .query_row("SELECT hash FROM users WHERE name = 'alice'", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert!(stored(dir.path()).starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
    let relay = start_accounts(dir.path(), |_| {}).await;
    let code = accounts.code("alice");
    login_from(
        "127.0.0.1",
        &relay,
        identity(),
        "alice",
        "another Long passphrase 77",
        &code,
    )
    .await
    .unwrap();
    relay.shutdown().await;
    let renewed = stored(dir.path());
    assert!(
        renewed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{renewed}"
    );
    assert!(viska_passwords::verify_password("another Long passphrase 77", &renewed).unwrap());
    assert!(
        audit_kinds(dir.path())
            .iter()
            .any(|k| k == "password_rehash")
    );
}

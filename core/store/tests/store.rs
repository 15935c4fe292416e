//! The store on real SQLCipher files: keys, trust, history, backups, MLS state.
#![allow(clippy::unwrap_used)]

use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_passwords::HashParams;
use viska_store::{
    CallDirection, PeerDirectory, Standing, Store, StoreError, StoreKey, Trust, default_handle,
};

fn peer(seed: u8) -> PublicIdentity {
    IdentityKeyPair::from_secret_bytes(&[seed; 32])
        .unwrap()
        .public()
}

fn key() -> StoreKey {
    StoreKey::raw([0x42; 32])
}

const BACKUP_PASS: &str = "violet anchor trombone quietly 84";

#[test]
fn the_identity_is_made_once_and_survives_a_reopen_and_the_file_is_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let first = {
        let store = Store::open(&path, key()).unwrap();
        assert!(!store.has_identity().unwrap());
        let id = store.identity().unwrap().public();
        assert_eq!(
            store.identity().unwrap().public(),
            id,
            "the same on every call"
        );
        store
            .set_setting("display-name", "Agent Smith 7731")
            .unwrap();
        store.add_contact("alice@example", &peer(1), true).unwrap();
        id
    };
    let store = Store::open(&path, key()).unwrap();
    assert_eq!(store.identity().unwrap().public(), first);
    assert_eq!(
        store.setting("display-name").unwrap().as_deref(),
        Some("Agent Smith 7731")
    );
    drop(store);
    // At rest nothing is in the clear: not the setting, not the handle, not SQLite's header.
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("phone.db-wal")) {
        bytes.extend_from_slice(&wal);
    }
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(bytes.len() > 4096);
    assert!(!find(b"Agent Smith 7731"));
    assert!(!find(b"alice@example"));
    assert!(!find(b"SQLite format 3"));
    assert!(!find(&peer(1).to_bytes()));
}

#[test]
fn a_wrong_key_is_refused_with_a_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    let id = Store::open(&path, key())
        .unwrap()
        .identity()
        .unwrap()
        .public();
    let before = std::fs::read(&path).unwrap();
    for wrong in [
        StoreKey::raw([0x43; 32]),
        StoreKey::insecure_test_passphrase("not the key at all"),
    ] {
        assert!(matches!(
            Store::open(&path, wrong),
            Err(StoreError::WrongKey)
        ));
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        Store::open(&path, key())
            .unwrap()
            .identity()
            .unwrap()
            .public(),
        id
    );
    // A file that is not a store at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    assert!(matches!(
        Store::open(&junk, key()),
        Err(StoreError::WrongKey)
    ));
    std::fs::write(&junk, b"short").unwrap();
    assert!(matches!(
        Store::open(&junk, key()),
        Err(StoreError::WrongKey)
    ));
}

#[test]
fn a_passphrase_store_reopens_with_the_passphrase_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.db");
    // The real parameters (Argon2id, 64 MiB, t = 3): once.
    let id = Store::open(&path, StoreKey::passphrase("copper kettle 1987 sunrise"))
        .unwrap()
        .identity()
        .unwrap()
        .public();
    let again = Store::open(&path, StoreKey::passphrase("copper kettle 1987 sunrise")).unwrap();
    assert_eq!(again.identity().unwrap().public(), id);
    drop(again);
    assert!(matches!(
        Store::open(&path, StoreKey::passphrase("copper kettle 1987 sunrisE")),
        Err(StoreError::WrongKey)
    ));
    // A raw key made of the wrong bytes does not open it either.
    assert!(matches!(
        Store::open(&path, key()),
        Err(StoreError::WrongKey)
    ));
}

#[test]
fn trust_on_first_use_then_a_changed_key_stays_changed_until_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("p.db"), key()).unwrap();
    let (bob, mallory) = (peer(2), peer(3));
    // First call: pinned, unverified.
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::Unverified
    );
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!((c.pinned, c.verified, c.presented), (bob, false, None));
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::Unverified
    );
    // The user compares the SAS.
    store.mark_verified(Some("bob"), &bob).unwrap();
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::Verified
    );
    assert_eq!(store.observe(None, &bob).unwrap(), Standing::Verified);
    // Another key under bob's handle: key changed, now and in every later call with it, also
    // when it calls in without a handle.
    for _ in 0..3 {
        assert_eq!(
            store.observe(Some("bob"), &mallory).unwrap(),
            Standing::KeyChanged { pinned: bob }
        );
        assert_eq!(
            store.observe(None, &mallory).unwrap(),
            Standing::KeyChanged { pinned: bob }
        );
    }
    let c = store.contact("bob").unwrap().unwrap();
    assert_eq!(c.trust(), Trust::KeyChanged);
    assert_eq!(c.presented, Some(mallory));
    // Bob's own key still is what it was.
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::Verified
    );
    // Bob reinstalled after all: the user verifies the new key, which replaces the pin.
    store.mark_verified(Some("bob"), &mallory).unwrap();
    assert_eq!(
        store.observe(Some("bob"), &mallory).unwrap(),
        Standing::Verified
    );
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::KeyChanged { pinned: mallory }
    );
    assert!(store.forget_contact("bob").unwrap());
    assert_eq!(
        store.observe(Some("bob"), &bob).unwrap(),
        Standing::Unverified
    );
}

#[test]
fn strangers_calling_in_are_unverified_and_verifying_one_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("p.db"), key()).unwrap();
    let stranger = peer(9);
    assert_eq!(
        store.observe(None, &stranger).unwrap(),
        Standing::Unverified
    );
    assert!(
        store.contacts().unwrap().is_empty(),
        "no handle to pin under"
    );
    let dir_for_call = store.directory(None);
    assert_eq!(dir_for_call.standing(&stranger), Standing::Unverified);
    dir_for_call.verified(&stranger);
    let c = store.contact(&default_handle(&stranger)).unwrap().unwrap();
    assert!(c.verified);
    assert_eq!(store.observe(None, &stranger).unwrap(), Standing::Verified);
    assert!(
        store
            .rename_contact(&default_handle(&stranger), "carol")
            .unwrap()
    );
    assert_eq!(
        store.observe(Some("carol"), &stranger).unwrap(),
        Standing::Verified
    );
    assert_eq!(dir_for_call.failures(), 0);
}

#[test]
fn call_history_keeps_metadata_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("p.db"), key()).unwrap();
    let a = store
        .call_started(CallDirection::Outgoing, Some("bob"), None)
        .unwrap();
    store
        .call_keys(a, &[1; 16], &peer(2), Trust::Unverified)
        .unwrap();
    store.call_answered(a).unwrap();
    store.call_trust(a, Trust::Verified).unwrap();
    store.call_ended(a, "hangup-local").unwrap();
    store.call_ended(a, "twice").unwrap();
    let b = store
        .call_started(CallDirection::Incoming, None, None)
        .unwrap();
    store.call_ended(b, "missed").unwrap();
    let h = store.call_history(10).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].id, b);
    assert_eq!(h[0].direction, CallDirection::Incoming);
    assert_eq!(h[0].answered_ms, None);
    assert_eq!(h[1].peer, Some(peer(2)));
    assert_eq!(h[1].trust, Some(Trust::Verified));
    assert_eq!(h[1].call_id.as_deref(), Some(&[1u8; 16][..]));
    assert_eq!(
        h[1].end_reason.as_deref(),
        Some("hangup-local"),
        "the first end counts"
    );
    assert!(h[1].answered_ms.is_some() && h[1].ended_ms >= h[1].answered_ms);
    assert_eq!(store.call_history(1).unwrap().len(), 1);
}

fn filled_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir.join("old.db"), key()).unwrap();
    store.identity().unwrap();
    store.observe(Some("bob"), &peer(2)).unwrap();
    store.mark_verified(Some("bob"), &peer(2)).unwrap();
    store.observe(Some("bob"), &peer(3)).unwrap();
    store.observe(Some("dave"), &peer(4)).unwrap();
    store.set_setting("ring-timeout-ms", "30000").unwrap();
    store
}

#[test]
fn a_backup_restores_the_same_identity_contacts_and_settings_into_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let old = filled_store(dir.path());
    let backup = old.export_backup(BACKUP_PASS).unwrap();
    assert_eq!(&backup[..8], b"VISKABAK");
    assert!(
        !backup.windows(3).any(|w| w == b"bob"),
        "handles are encrypted"
    );
    let fresh = Store::open(dir.path().join("new.db"), StoreKey::raw([7; 32])).unwrap();
    fresh.import_backup(&backup, BACKUP_PASS).unwrap();
    assert_eq!(
        fresh.identity().unwrap().public(),
        old.identity().unwrap().public()
    );
    assert_eq!(fresh.contacts().unwrap(), old.contacts().unwrap());
    assert_eq!(fresh.settings().unwrap(), old.settings().unwrap());
    // The key change survives the restore.
    assert_eq!(
        fresh.observe(Some("bob"), &peer(3)).unwrap(),
        Standing::KeyChanged { pinned: peer(2) }
    );
    // Not twice, not over an existing identity.
    assert!(matches!(
        fresh.import_backup(&backup, BACKUP_PASS),
        Err(StoreError::NotEmpty)
    ));
}

#[test]
fn a_tampered_truncated_or_wrongly_unlocked_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = filled_store(dir.path());
    let backup = old
        .export_backup_with(BACKUP_PASS, HashParams::TEST)
        .unwrap();
    let fresh = Store::open(dir.path().join("new.db"), key()).unwrap();
    assert!(matches!(
        fresh.import_backup(&backup, "violet anchor trombone quietly 85"),
        Err(StoreError::BadBackup)
    ));
    // Every byte matters: the header (except the version and cost fields, refused by their own
    // checks) through the nonce is authenticated data, the rest is ciphertext and tag.
    for i in (0..backup.len()).step_by(7).chain([backup.len() - 1]) {
        let mut t = backup.clone();
        t[i] ^= 0x01;
        let r = fresh.import_backup(&t, BACKUP_PASS);
        assert!(r.is_err(), "flipped byte {i} accepted");
    }
    for cut in [0, 8, 60, 61, backup.len() / 2, backup.len() - 1] {
        assert!(
            matches!(
                fresh.import_backup(&backup[..cut], BACKUP_PASS),
                Err(StoreError::BadBackup)
            ),
            "truncated to {cut}"
        );
    }
    let mut longer = backup.clone();
    longer.push(0);
    assert!(fresh.import_backup(&longer, BACKUP_PASS).is_err());
    assert!(!fresh.has_identity().unwrap(), "nothing half-restored");
    fresh.import_backup(&backup, BACKUP_PASS).unwrap();
}

#[test]
fn weak_backup_passphrases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled_store(dir.path());
    for weak in [
        "short pass",
        "password1234",
        "aaaaaaaaaaaaaaaa",
        "qwertyuiop123",
    ] {
        assert!(
            matches!(
                store.export_backup_with(weak, HashParams::TEST),
                Err(StoreError::WeakPassphrase(_))
            ),
            "{weak} accepted"
        );
    }
}

mod mls {
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::OpenMlsProvider;

    use super::*;

    const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

    #[derive(Debug)]
    enum Failed {
        Store(#[allow(dead_code)] StoreError),
        Mls(#[allow(dead_code)] String),
    }

    impl From<StoreError> for Failed {
        fn from(e: StoreError) -> Self {
            Self::Store(e)
        }
    }

    fn mls(e: impl std::fmt::Debug) -> Failed {
        Failed::Mls(format!("{e:?}"))
    }

    fn new_group(provider: &impl OpenMlsProvider) -> Result<(MlsGroup, SignatureKeyPair), Failed> {
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(mls)?;
        signer.store(provider.storage()).map_err(mls)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"device".to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let group = MlsGroup::builder()
            .ciphersuite(SUITE)
            .with_group_id(GroupId::from_slice(b"call-1"))
            .build(provider, &signer, credential)
            .map_err(mls)?;
        Ok((group, signer))
    }

    #[test]
    fn mls_state_is_on_the_encrypted_database_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let epoch = {
            let store = Store::open(&path, key()).unwrap();
            store
                .with_mls(|provider| {
                    let (mut group, signer) = new_group(provider)?;
                    group
                        .self_update(provider, &signer, LeafNodeParameters::default())
                        .map_err(mls)?;
                    group.merge_pending_commit(provider).map_err(mls)?;
                    Ok::<_, Failed>(group.epoch())
                })
                .unwrap()
        };
        assert_eq!(epoch.as_u64(), 1);
        let store = Store::open(&path, key()).unwrap();
        let loaded = store
            .with_mls(|provider| {
                MlsGroup::load(provider.storage(), &GroupId::from_slice(b"call-1")).map_err(mls)
            })
            .unwrap()
            .expect("the group is stored");
        assert_eq!(loaded.epoch().as_u64(), 1);
        assert_eq!(loaded.group_id().as_slice(), b"call-1");
    }

    #[test]
    fn a_failed_mls_operation_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("p.db"), key()).unwrap();
        let r: Result<(), Failed> = store.with_mls(|provider| {
            new_group(provider)?;
            Err(Failed::Mls("the caller gave up".into()))
        });
        assert!(r.is_err());
        let loaded = store
            .with_mls(|provider| {
                MlsGroup::load(provider.storage(), &GroupId::from_slice(b"call-1")).map_err(mls)
            })
            .unwrap();
        assert!(loaded.is_none(), "rolled back");
    }
}

//! The device key store: an encrypted database of the identity, contacts and their trust,
//! settings and call history, and its encrypted backups.

use std::sync::Arc;

use viska::store::{CallDirection, CallRecord, Contact, Store, StoreError, StoreKey};
use zeroize::Zeroize;

use crate::error::ViskaError;
use crate::identity::{Identity, PeerIdentity, public_identity};
use crate::types::Trust;

impl From<StoreError> for ViskaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongKey => Self::WrongKey,
            StoreError::WeakPassphrase(weak) => Self::WeakPassphrase {
                detail: weak.to_string(),
            },
            e @ (StoreError::BadBackup
            | StoreError::BackupVersion(_)
            | StoreError::BackupParams) => Self::BadBackup {
                detail: e.to_string(),
            },
            e => Self::Store {
                detail: e.to_string(),
            },
        }
    }
}

/// The device's key store: one SQLCipher database (`docs/store.md`). Give it to
/// [`PhoneSettings::store`](crate::PhoneSettings) and the phone takes every call's trust from
/// its contacts and records the call history in it.
#[derive(Debug, uniffi::Object)]
pub struct KeyStore {
    pub(crate) store: Store,
}

/// A contact and how far it is trusted.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ContactInfo {
    /// The application's name for the peer.
    pub handle: String,
    /// The identity pinned for it (first seen, or last verified).
    pub pinned: PeerIdentity,
    /// Whether the user verified `pinned`.
    pub verified: bool,
    /// A different identity seen under this handle since, not verified: the key changed.
    pub changed_to: Option<PeerIdentity>,
    /// What a call with this contact shows now.
    pub trust: Trust,
    /// When it was first seen, Unix milliseconds.
    pub first_seen_ms: i64,
}

impl From<Contact> for ContactInfo {
    fn from(c: Contact) -> Self {
        Self {
            trust: c.trust().into(),
            handle: c.handle,
            pinned: PeerIdentity::from(&c.pinned),
            verified: c.verified,
            changed_to: c.presented.as_ref().map(PeerIdentity::from),
            first_seen_ms: c.first_seen_ms,
        }
    }
}

/// One call of the history: metadata only.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct CallHistoryEntry {
    /// The call's id, lowercase hex, once known.
    pub call_id: Option<String>,
    /// Whether this device placed the call.
    pub outgoing: bool,
    /// The contact's handle, if the call had one.
    pub handle: Option<String>,
    /// The identity the peer proved.
    pub peer: Option<PeerIdentity>,
    /// The trust the call ended with.
    pub trust: Option<Trust>,
    /// Unix milliseconds.
    pub started_ms: i64,
    /// When it was answered, if it was.
    pub answered_ms: Option<i64>,
    /// When it ended.
    pub ended_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

impl From<CallRecord> for CallHistoryEntry {
    fn from(r: CallRecord) -> Self {
        Self {
            call_id: r.call_id.map(hex::encode),
            outgoing: r.direction == CallDirection::Outgoing,
            handle: r.handle,
            peer: r.peer.as_ref().map(PeerIdentity::from),
            trust: r.trust.map(Into::into),
            started_ms: r.started_ms,
            answered_ms: r.answered_ms,
            ended_ms: r.ended_ms,
            end_reason: r.end_reason,
        }
    }
}

#[uniffi::export]
impl KeyStore {
    /// Opens (or creates) the store at `path` with a key derived from `passphrase` (Argon2id,
    /// 64 MiB; takes a few hundred milliseconds).
    ///
    /// Errors: `WrongKey` when the passphrase does not open the file.
    #[uniffi::constructor]
    pub fn open(path: String, passphrase: String) -> Result<Arc<Self>, ViskaError> {
        Ok(Arc::new(Self {
            store: Store::open(path, StoreKey::passphrase(passphrase))?,
        }))
    }

    /// Opens (or creates) the store at `path` with a 32-byte key the platform keeps (iOS
    /// Keychain, Android Keystore). The bytes given are wiped.
    #[uniffi::constructor]
    pub fn open_with_key(path: String, mut key: Vec<u8>) -> Result<Arc<Self>, ViskaError> {
        let raw: Result<[u8; 32], _> = key.as_slice().try_into();
        key.zeroize();
        let mut raw = raw.map_err(|_| ViskaError::invalid("a store key is 32 bytes"))?;
        let store = Store::open(path, StoreKey::raw(raw));
        raw.zeroize();
        Ok(Arc::new(Self { store: store? }))
    }

    /// Changes the store's key to one derived from `new_passphrase` (Argon2id, 64 MiB): every
    /// page is rewritten under it, and from then on only it opens the file. The passphrase
    /// must be at least 12 characters, not a common password, and hard to guess
    /// (`WeakPassphrase`, nothing changed). If the process dies during the change, the file
    /// opens with the old key or the new one (`docs/store.md` §1.1).
    pub fn change_key(&self, new_passphrase: String) -> Result<(), ViskaError> {
        Ok(self
            .store
            .change_key(StoreKey::passphrase(new_passphrase))?)
    }

    /// Changes the store's key to the 32-byte key `new_key` the platform keeps (iOS Keychain,
    /// Android Keystore): as [`KeyStore::change_key`], with no derivation. The bytes given are
    /// wiped.
    pub fn change_key_with_key(&self, mut new_key: Vec<u8>) -> Result<(), ViskaError> {
        let raw: Result<[u8; 32], _> = new_key.as_slice().try_into();
        new_key.zeroize();
        let mut raw = raw.map_err(|_| ViskaError::invalid("a store key is 32 bytes"))?;
        let changed = self.store.change_key(StoreKey::raw(raw));
        raw.zeroize();
        Ok(changed?)
    }

    /// The device's identity: made on first use, the same ever after.
    pub fn identity(&self) -> Result<Arc<Identity>, ViskaError> {
        Ok(Arc::new(Identity {
            key: self.store.identity()?,
        }))
    }

    /// Every contact, by handle.
    pub fn contacts(&self) -> Result<Vec<ContactInfo>, ViskaError> {
        Ok(self.store.contacts()?.into_iter().map(Into::into).collect())
    }

    /// The contact with `handle`.
    pub fn contact(&self, handle: String) -> Result<Option<ContactInfo>, ViskaError> {
        Ok(self.store.contact(&handle)?.map(Into::into))
    }

    /// Adds or replaces a contact known from elsewhere (a directory): `verified` when that
    /// source is one the user trusts.
    pub fn add_contact(
        &self,
        handle: String,
        public_key: Vec<u8>,
        verified: bool,
    ) -> Result<(), ViskaError> {
        let id = public_identity(&public_key)?;
        Ok(self.store.add_contact(&handle, &id, verified)?)
    }

    /// Renames a contact; false if there was none.
    pub fn rename_contact(&self, from: String, to: String) -> Result<bool, ViskaError> {
        Ok(self.store.rename_contact(&from, &to)?)
    }

    /// Forgets a contact; false if there was none.
    pub fn forget_contact(&self, handle: String) -> Result<bool, ViskaError> {
        Ok(self.store.forget_contact(&handle)?)
    }

    /// A setting's value.
    pub fn setting(&self, key: String) -> Result<Option<String>, ViskaError> {
        Ok(self.store.setting(&key)?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: String, value: String) -> Result<(), ViskaError> {
        Ok(self.store.set_setting(&key, &value)?)
    }

    /// The latest `limit` calls, newest first.
    pub fn call_history(&self, limit: u32) -> Result<Vec<CallHistoryEntry>, ViskaError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .store
            .call_history(limit)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// An encrypted backup of the identity, contacts and settings. The passphrase must be at
    /// least 12 characters, not a common password, and hard to guess (`WeakPassphrase`).
    pub fn export_backup(&self, passphrase: String) -> Result<Vec<u8>, ViskaError> {
        Ok(self.store.export_backup(&passphrase)?)
    }

    /// Restores a backup into this store, which must be fresh. `BadBackup` for a wrong
    /// passphrase or a changed or truncated backup.
    pub fn import_backup(&self, backup: Vec<u8>, passphrase: String) -> Result<(), ViskaError> {
        Ok(self.store.import_backup(&backup, &passphrase)?)
    }
}

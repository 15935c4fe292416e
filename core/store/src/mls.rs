//! MLS state on the store's database: openmls' SQLite storage provider on the same connection,
//! each operation in one transaction.

use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, TransactionBehavior};

use viska_group::GroupError;

use crate::{Store, StoreError};

/// How openmls' values are encoded in their tables: JSON, as openmls' own tests do.
#[derive(Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// An [`OpenMlsProvider`] whose storage is the store's database, inside one transaction (see
/// [`Store::with_mls`]).
pub struct StoreMlsProvider<'a> {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> OpenMlsProvider for StoreMlsProvider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(conn)
        .run_migrations()
        .map_err(|e| StoreError::MlsMigration(e.to_string()))
}

/// A group member's MLS state in the store ([`viska_group::GroupMember::with_storage`]): each
/// operation in one transaction, so a device started again resumes its groups
/// ([`viska_group::GroupMember::resume`]).
impl viska_group::MlsStorage for Store {
    type Provider<'a> = StoreMlsProvider<'a>;

    fn transact<T>(
        &self,
        op: impl FnOnce(&Self::Provider<'_>) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        self.with_mls(|provider| op(provider).map_err(MlsOpError::Group))
            .map_err(|e| match e {
                MlsOpError::Group(e) => e,
                MlsOpError::Store(e) => GroupError::Storage(e.to_string()),
            })
    }
}

/// An MLS operation's failure inside [`Store::with_mls`]: its own, or the store's.
enum MlsOpError {
    Group(GroupError),
    Store(StoreError),
}

impl From<StoreError> for MlsOpError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Store {
    /// A store in memory, for a device that keeps nothing: the same tables (MLS state
    /// included) and the same code paths as a file, gone with the value. Not encrypted: it is
    /// never written anywhere.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        crate::store::migrate(&mut conn)?;
        Ok(Self::from_connection(
            conn,
            crate::store::IN_MEMORY.into(),
            [0; crate::key::SALT_LEN],
            zeroize::Zeroizing::new(String::new()),
        ))
    }

    /// Runs one MLS operation with a provider whose storage is this database, in one
    /// transaction: committed when `op` returns `Ok`, rolled back when it returns `Err` (or
    /// panics), so a crash never leaves half an operation behind.
    pub fn with_mls<T, E>(
        &self,
        op: impl FnOnce(&StoreMlsProvider<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = {
            let provider = StoreMlsProvider {
                crypto: RustCrypto::default(),
                storage: SqliteStorageProvider::new(&*tx),
            };
            op(&provider)?
        };
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}

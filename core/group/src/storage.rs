//! Where a member's MLS state lives: the storage seam of [`crate::GroupMember`].
//!
//! openmls writes a group's state (its secrets, ratchet tree, pending commit, key packages'
//! private keys) through its `StorageProvider` as each operation runs. A member runs every MLS
//! operation through [`MlsStorage::transact`], so a storage that can (a database) makes each
//! one a transaction: a crash leaves the state before the operation or after it, never half of
//! it. [`MemoryStorage`] keeps it in memory, gone with the process; the device key store
//! (`viska-store`) keeps it in its encrypted database, so that a device started again takes up
//! its groups where it stopped ([`crate::GroupMember::resume`]).

use std::sync::Arc;

use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;

use crate::GroupError;

/// A place for MLS state, handing out an [`OpenMlsProvider`] for one operation at a time.
pub trait MlsStorage {
    /// The provider of one operation; it may borrow the storage's transaction.
    type Provider<'a>: OpenMlsProvider;

    /// Runs one MLS operation with a provider writing to this storage. A storage with
    /// transactions commits what `op` wrote when it returns `Ok` and rolls it back when it
    /// returns `Err`; its own failures are [`GroupError::Storage`].
    fn transact<T>(
        &self,
        op: impl FnOnce(&Self::Provider<'_>) -> Result<T, GroupError>,
    ) -> Result<T, GroupError>;
}

/// MLS state in memory (openmls' own in-memory storage): nothing survives the process.
#[derive(Default)]
pub struct MemoryStorage(OpenMlsRustCrypto);

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStorage")
    }
}

impl MlsStorage for MemoryStorage {
    type Provider<'a> = OpenMlsRustCrypto;

    fn transact<T>(
        &self,
        op: impl FnOnce(&Self::Provider<'_>) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        op(&self.0)
    }
}

impl<S: MlsStorage + ?Sized> MlsStorage for Arc<S> {
    type Provider<'a> = S::Provider<'a>;

    fn transact<T>(
        &self,
        op: impl FnOnce(&Self::Provider<'_>) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        (**self).transact(op)
    }
}

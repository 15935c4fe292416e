//! The store's errors.

use viska_passwords::{PasswordError, WeakPassword};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key does not open this database, or the file is not a Viska store.
    #[error("wrong key, or not a Viska store")]
    WrongKey,
    /// The database was written by a newer version of Viska.
    #[error("store schema version {found} is newer than this build's {supported}")]
    NewerSchema {
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A backup passphrase, or a new passphrase for the store, is too weak (see
    /// `viska_passwords::check_password`).
    #[error("passphrase refused: {0}")]
    WeakPassphrase(#[from] WeakPassword),
    /// The backup is not a Viska backup, was cut short, was changed, or the passphrase is wrong.
    /// Which one is not said: a changed backup and a wrong passphrase look alike.
    #[error("backup refused: wrong passphrase, or the backup is truncated or was changed")]
    BadBackup,
    /// The backup's format version is not one this build reads.
    #[error("backup format version {0} is not supported")]
    BackupVersion(u8),
    /// The backup's Argon2 parameters are out of the range this build accepts (a backup that
    /// would take unbounded memory or time to open).
    #[error("backup key parameters out of range")]
    BackupParams,
    /// Restoring a backup into a store that already has an identity.
    #[error("the store already holds an identity; restore into a fresh store")]
    NotEmpty,
    /// A stored value does not decode (the database was changed outside Viska).
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// Which value.
        what: &'static str,
    },
    /// Deriving a key from a passphrase failed.
    #[error("key derivation failed: {0}")]
    Kdf(#[from] PasswordError),
    /// The operating system could not provide randomness.
    #[error("operating system randomness unavailable")]
    Randomness,
    /// The key change did not happen (the database could not be rewritten: a full disk,
    /// another process holding it); the old key still opens the store. Also for a store in
    /// memory ([`crate::Store::in_memory`]), which has no key.
    #[error("the store's key was not changed; the old key still opens it")]
    KeyNotChanged,
    /// Another connection to the database (another process) kept an operation that needs
    /// the database alone from completing.
    #[error("the store is in use by another connection")]
    Busy,
    /// The database file could not be read or written.
    #[error("store file: {0}")]
    Io(#[from] std::io::Error),
    /// SQLite failed.
    #[cfg(feature = "sqlite")]
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// openmls' storage schema could not be set up.
    #[error("MLS storage migration: {0}")]
    MlsMigration(String),
}

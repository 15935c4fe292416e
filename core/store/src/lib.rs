//! Viska's device key store: one SQLite database, encrypted at rest with SQLCipher, that holds
//! everything a phone must keep between runs.
//!
//! - the device's identity key ([`Store::identity`]);
//! - its MLS state, through openmls' storage provider on the same database
//!   ([`Store::with_mls`], each operation one transaction);
//! - contacts and how far each is trusted: trust on first use, verification, changed keys
//!   ([`Store::directory`] is the [`viska_call::PeerDirectory`] a call asks);
//! - settings ([`Store::setting`]) and call history, metadata only ([`Store::call_history`]).
//!
//! The database key comes from a passphrase (Argon2id, [`StoreKey::passphrase`]) or from the
//! platform's keychain as 32 raw bytes ([`StoreKey::raw`]). A store opened with the wrong key
//! is refused with [`StoreError::WrongKey`]. [`Store::export_backup`] writes an encrypted
//! backup of the identity, contacts and settings that [`Store::import_backup`] restores into a
//! fresh store; the formats are specified in `docs/store.md`.
//!
//! ```no_run
//! use viska_store::{Store, StoreKey};
//! # fn main() -> Result<(), viska_store::StoreError> {
//! let store = Store::open("phone.db", StoreKey::passphrase("correct horse battery staple"))?;
//! let identity = store.identity()?; // made on first use, the same ever after
//! println!("{}", identity.public().fingerprint());
//! # Ok(())
//! # }
//! ```

mod backup;
mod contact;
#[cfg(feature = "sqlite")]
mod contacts;
mod error;
#[cfg(feature = "sqlite")]
mod history;
#[cfg(feature = "sqlite")]
mod key;
#[cfg(feature = "sqlite")]
mod mls;
#[cfg(feature = "sqlite")]
mod store;

pub use backup::{BACKUP_MAGIC, BACKUP_VERSION};
pub use contact::{Contact, default_handle};
#[cfg(feature = "sqlite")]
pub use contacts::ContactDirectory;
pub use error::StoreError;
#[cfg(feature = "sqlite")]
pub use history::{CallDirection, CallRecord};
#[cfg(feature = "sqlite")]
pub use key::StoreKey;
#[cfg(feature = "sqlite")]
pub use mls::StoreMlsProvider;
#[cfg(feature = "sqlite")]
pub use store::{SCHEMA_VERSION, Store};
pub use viska_call::{PeerDirectory, Standing, Trust};

#[cfg(fuzzing)]
pub use backup::fuzz_parse as fuzz_parse_backup;

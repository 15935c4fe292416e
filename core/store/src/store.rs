//! Opening the encrypted database, its schema, the identity and settings.

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, params};
use viska_e2ee::identity::IdentityKeyPair;
use zeroize::Zeroizing;

use crate::key::SALT_LEN;
use crate::{StoreError, StoreKey};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE contacts (
    handle TEXT PRIMARY KEY,
    pinned BLOB NOT NULL,
    verified INTEGER NOT NULL,
    presented BLOB,
    first_seen_ms INTEGER NOT NULL,
    verified_ms INTEGER,
    changed_ms INTEGER
);
CREATE INDEX contacts_pinned ON contacts (pinned);
CREATE INDEX contacts_presented ON contacts (presented);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id BLOB,
    direction TEXT NOT NULL CHECK (direction IN ('outgoing', 'incoming')),
    handle TEXT,
    peer BLOB,
    trust TEXT,
    started_ms INTEGER NOT NULL,
    answered_ms INTEGER,
    ended_ms INTEGER,
    end_reason TEXT
);
";

/// A device's encrypted store. Cheap to clone: clones share one connection (calls are
/// serialised; each is short).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// The path of a store in memory ([`Store::in_memory`]).
pub(crate) const IN_MEMORY: &str = ":memory:";

pub(crate) struct Inner {
    pub(crate) conn: Mutex<Connection>,
    path: PathBuf,
    /// SQLCipher's salt, the file's first 16 bytes: the same for the file's whole life.
    salt: [u8; SALT_LEN],
    /// The `PRAGMA key` value the connection was opened with, kept to reopen the database
    /// when a key change did not complete. Locked after `conn`, only by [`Store::change_key`].
    key: Mutex<Zeroizing<String>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The salt of an existing database (the first bytes of a SQLCipher file), `None` for a new
/// or empty file.
fn existing_salt(path: &Path) -> Result<Option<[u8; SALT_LEN]>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut salt = [0u8; SALT_LEN];
    let mut read = 0;
    while read < SALT_LEN {
        match file.read(&mut salt[read..])? {
            0 => break,
            n => read += n,
        }
    }
    match read {
        0 => Ok(None),
        SALT_LEN => Ok(Some(salt)),
        _ => Err(StoreError::WrongKey),
    }
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::NotADatabase)
}

impl Store {
    /// Opens the store at `path`, creating it (and the identity, on first use of
    /// [`Store::identity`]) when the file does not exist.
    ///
    /// The database is in WAL mode with `synchronous = FULL`: a write that returned is on disk,
    /// even if the process is killed right after.
    ///
    /// # Errors
    /// [`StoreError::WrongKey`] when `key` does not open an existing file (or it is not a
    /// store), [`StoreError::NewerSchema`] for a store from a newer Viska, IO and SQLite errors.
    pub fn open(path: impl AsRef<Path>, key: StoreKey) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let salt = match existing_salt(path)? {
            Some(salt) => salt,
            None => {
                let mut salt = [0u8; SALT_LEN];
                getrandom::fill(&mut salt).map_err(|_| StoreError::Randomness)?;
                salt
            }
        };
        let pragma = key.pragma_value(&salt)?;
        let mut conn = connect(path, &pragma)?;
        migrate(&mut conn)?;
        Ok(Self::from_connection(conn, path.to_owned(), salt, pragma))
    }

    /// A store on `conn`, opened with the `PRAGMA key` value `key` over `salt` (empty for a
    /// store in memory, which has no key to change).
    pub(crate) fn from_connection(
        conn: Connection,
        path: PathBuf,
        salt: [u8; SALT_LEN],
        key: Zeroizing<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                path,
                salt,
                key: Mutex::new(key),
            }),
        }
    }

    /// Changes the database key to `new`: a passphrase for a passphrase, a platform key for a
    /// passphrase, or the reverse. Every page of the database is rewritten under the new key
    /// in one SQLCipher transaction; once this returns, only `new` opens the file (the old key
    /// is refused with [`StoreError::WrongKey`]) and this store, and its clones, go on with
    /// the new key. The salt, the file's first 16 bytes, stays; a passphrase is derived afresh
    /// with Argon2id over it.
    ///
    /// If the process dies during the change, the file opens with the old key (the
    /// transaction had not committed) or with the new one, never with neither
    /// (`docs/store.md` §1.1).
    ///
    /// # Errors
    /// [`StoreError::WeakPassphrase`] for a new passphrase the password policy refuses
    /// (`viska_passwords::check_password`), before anything is changed;
    /// [`StoreError::KeyNotChanged`] when the database could not be rewritten (a full disk,
    /// another process holding it), the old key still opening it; [`StoreError::Kdf`],
    /// SQLite and IO errors.
    pub fn change_key(&self, new: StoreKey) -> Result<(), StoreError> {
        if self.inner.path.as_os_str() == IN_MEMORY {
            // Never written anywhere: no key to change.
            return Err(StoreError::KeyNotChanged);
        }
        new.check_strength()?;
        let pragma = new.pragma_value(&self.inner.salt)?;
        drop(new);
        let mut conn = self.conn();
        let mut current = self
            .inner
            .key
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The WAL starts empty, so that after the rekey it holds only pages under the new key.
        checkpoint(&conn)?;
        let statement = Zeroizing::new(format!("PRAGMA rekey = \"{}\";", pragma.as_str()));
        let rekeyed = conn.execute_batch(&statement);
        drop(statement);
        // SQLCipher's rekey reports no failure of its own, and after a failed one the
        // connection would write under the new key what it reads under the old: whatever
        // happened, the connection is replaced by one that proved it reads every page.
        let outcome = rekeyed
            .map_err(StoreError::from)
            .and_then(|()| checkpoint(&conn))
            .and_then(|()| connect(&self.inner.path, &pragma))
            .and_then(integrity_checked);
        match outcome {
            Ok(fresh) => {
                *conn = fresh;
                *current = pragma;
                Ok(())
            }
            Err(error) => {
                // Still under the old key (nothing committed), or the new one opens after all.
                let (fresh, key) = match connect(&self.inner.path, &current) {
                    Ok(fresh) => (fresh, None),
                    Err(StoreError::WrongKey) => {
                        (connect(&self.inner.path, &pragma)?, Some(pragma))
                    }
                    Err(e) => return Err(e),
                };
                *conn = fresh;
                match key {
                    Some(key) => {
                        tracing::warn!(%error, "the key change committed but its check failed");
                        *current = key;
                        Err(error)
                    }
                    None => {
                        tracing::warn!(%error, "the store's key was not changed");
                        Err(StoreError::KeyNotChanged)
                    }
                }
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held left no half-done transaction behind: every write
        // is one statement or one transaction, rolled back when its guard dropped.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The device's identity key pair: made from the operating system's randomness and stored
    /// the first time, the same on every later call and after every restart.
    ///
    /// # Errors
    /// [`StoreError::Randomness`], [`StoreError::Corrupt`], SQLite errors.
    pub fn identity(&self) -> Result<IdentityKeyPair, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<Zeroizing<Vec<u8>>> = tx
            .query_row("SELECT secret FROM identity WHERE id = 1", [], |r| {
                r.get::<_, Vec<u8>>(0).map(Zeroizing::new)
            })
            .optional()?;
        let pair = match existing {
            Some(secret) => IdentityKeyPair::from_secret_bytes(&secret)
                .map_err(|_| StoreError::Corrupt { what: "identity" })?,
            None => {
                let pair =
                    IdentityKeyPair::generate_from_os().map_err(|_| StoreError::Randomness)?;
                Store::put_identity(&tx, &pair)?;
                pair
            }
        };
        tx.commit()?;
        Ok(pair)
    }

    /// Whether the store holds an identity yet.
    pub fn has_identity(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM identity WHERE id = 1", [], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub(crate) fn put_identity(
        tx: &rusqlite::Transaction<'_>,
        pair: &IdentityKeyPair,
    ) -> Result<(), StoreError> {
        let secret = pair.to_secret_bytes();
        tx.execute(
            "INSERT INTO identity (id, secret, created_ms) VALUES (1, ?1, ?2)",
            params![&secret.expose_secret()[..], now_ms()],
        )?;
        Ok(())
    }

    /// A setting's value.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting (the application's namespace: any key, any text value).
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Removes a setting.
    pub fn remove_setting(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Every setting, by key.
    pub fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, value FROM settings ORDER BY key")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A connection to the database at `path` under the `PRAGMA key` value `pragma`, proven to
/// decrypt it, in WAL mode with `synchronous = FULL`.
fn connect(path: &Path, pragma: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // A wrong key is a typed error for the application, not lines on stderr.
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    let statement = Zeroizing::new(format!("PRAGMA key = \"{pragma}\";"));
    conn.execute_batch(&statement)?;
    drop(statement);
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {}
        Err(e) if is_not_a_database(&e) => return Err(StoreError::WrongKey),
        Err(e) => return Err(e.into()),
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "the store could not switch to WAL mode");
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

/// Copies the WAL into the database file and empties it; an error when another connection
/// keeps it from completing.
fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(StoreError::Busy);
    }
    Ok(())
}

/// `conn` once SQLCipher checked every page's HMAC under its key.
fn integrity_checked(conn: Connection) -> Result<Connection, StoreError> {
    let problems = {
        let mut stmt = conn.prepare("PRAGMA cipher_integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    if problems.is_empty() {
        Ok(conn)
    } else {
        tracing::warn!(
            count = problems.len(),
            "pages failed SQLCipher's integrity check"
        );
        Err(StoreError::Corrupt { what: "page" })
    }
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        let tx = conn.transaction()?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.execute_batch("PRAGMA user_version = 1")?;
        tx.commit()?;
    }
    crate::mls::migrate(conn)
}

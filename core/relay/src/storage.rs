//! The relay's database at rest (`docs/relay-storage.md`): a SQLCipher database keyed with a
//! 32-byte [`DbKey`] kept outside the data directory, opened only after the key is checked,
//! migrated from plaintext once ([`encrypt_database`]) and re-keyed ([`rekey_database`]).

use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use crate::RelayError;
use crate::db::DB_FILE;

/// Bytes of SQLCipher's per-database salt, the first bytes of an encrypted file.
pub const SALT_LEN: usize = 16;
/// The first 16 bytes of every plaintext SQLite database.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// Name of the environment variable a key may come from (64 hex digits).
pub const KEY_ENV: &str = "VISKA_RELAY_DB_KEY";
/// Name of the systemd credential a key may come from (a file of 64 hex digits in
/// `$CREDENTIALS_DIRECTORY`).
pub const KEY_CREDENTIAL: &str = "viska-relay-db-key";
/// File in the data directory every process using the database holds a shared lock on (and
/// [`encrypt_database`] and [`rekey_database`] an exclusive one).
pub const LOCK_FILE: &str = "relay.lock";

/// The 32-byte key of the relay's database. Zeroed on drop; its `Debug` shows nothing.
#[derive(Clone)]
pub struct DbKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey(***)")
    }
}

/// Why a database key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbKeyError {
    /// The key is not 64 hex digits (surrounding white space allowed).
    #[error("the database key from {0} is not 64 hex digits")]
    Format(String),
    /// The key file could not be read.
    #[error("reading the database key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is readable by its group or by everyone.
    #[error(
        "the database key file {path} is readable by others (mode {mode:03o}): chmod 600 or 400 it"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl DbKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngExt::fill(&mut rand::rng(), &mut key[..]);
        Self(key)
    }

    /// Parses 64 hex digits (white space around them ignored); `origin` names where they came
    /// from in the error.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, DbKeyError> {
        let t = text.trim().as_bytes();
        let bad = || DbKeyError::Format(origin.to_string());
        if t.len() != 64 {
            return Err(bad());
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut key = Zeroizing::new([0u8; 32]);
        for (i, k) in key.iter_mut().enumerate() {
            *k = digit(t[2 * i]).ok_or_else(bad)? << 4 | digit(t[2 * i + 1]).ok_or_else(bad)?;
        }
        Ok(Self(key))
    }

    /// Reads a key file (64 hex digits). On Unix a file its group or others may read is
    /// refused ([`DbKeyError::Permissions`]).
    pub fn from_file(path: &Path) -> Result<Self, DbKeyError> {
        let read = |source| DbKeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(read)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(read)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(DbKeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(read)?;
        Self::from_hex(&text, &path.display().to_string())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 lowercase hex digits (to write a key file).
    pub fn to_hex(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64));
        push_hex(&mut s, &self.0[..]);
        s
    }

    /// The `PRAGMA key` value for a database with `salt`: `x'<key hex><salt hex>'`,
    /// SQLCipher's raw key with an explicit salt (its own key derivation is not run).
    fn pragma_value(&self, salt: &[u8; SALT_LEN]) -> Zeroizing<String> {
        let mut v = Zeroizing::new(String::with_capacity(3 + 96));
        v.push_str("x'");
        push_hex(&mut v, &self.0[..]);
        push_hex(&mut v, salt);
        v.push('\'');
        v
    }
}

/// Appends `bytes` as lowercase hex digits, in place (no temporary copy of a key is left).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// What a database file holds, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// No file, or an empty one.
    New,
    /// A plaintext SQLite database.
    Plain,
    /// Anything else: a SQLCipher database with this salt.
    Encrypted([u8; SALT_LEN]),
}

fn kind(path: &Path) -> Result<Kind, RelayError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kind::New),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; SALT_LEN];
    let mut n = 0;
    while n < SALT_LEN {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(match n {
        0 => Kind::New,
        SALT_LEN if &head == SQLITE_HEADER => Kind::Plain,
        SALT_LEN => Kind::Encrypted(head),
        _ => {
            return Err(RelayError::Corrupt(format!(
                "{} is {n} bytes long",
                path.display()
            )));
        }
    })
}

/// Whether the database file at `path` is a plaintext SQLite database.
pub fn is_plaintext(path: &Path) -> Result<bool, RelayError> {
    Ok(kind(path)? == Kind::Plain)
}

/// Whether `e` is SQLite's "file is not a database" (what a wrong SQLCipher key gives).
fn not_a_database(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase)
}

/// Gives `conn` its key for a file with `salt`, and checks it by reading the schema: a wrong
/// key is [`RelayError::WrongDatabaseKey`], and nothing has been written.
fn apply_key(conn: &Connection, key: &DbKey, salt: &[u8; SALT_LEN]) -> Result<(), RelayError> {
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
    let statement = Zeroizing::new(format!(
        "PRAGMA key = \"{}\";",
        key.pragma_value(salt).as_str()
    ));
    conn.execute_batch(&statement)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(e) if not_a_database(&e) => Err(RelayError::WrongDatabaseKey),
        Err(e) => Err(e.into()),
    }
}

/// Opens the database file `path` with `key` (none: a plaintext database), with `flags`.
/// The file's kind is checked first: a plaintext database given a key is
/// [`RelayError::DatabaseNotEncrypted`], an encrypted one given none
/// [`RelayError::DatabaseEncrypted`], a wrong key [`RelayError::WrongDatabaseKey`]; none of
/// these writes to the file.
pub(crate) fn open_file(
    path: &Path,
    key: Option<&DbKey>,
    flags: OpenFlags,
) -> Result<Connection, RelayError> {
    let kind = kind(path)?;
    match (kind, key) {
        (Kind::Plain, Some(_)) => Err(RelayError::DatabaseNotEncrypted(path.to_path_buf())),
        (Kind::Encrypted(_), None) => Err(RelayError::DatabaseEncrypted(path.to_path_buf())),
        (Kind::New | Kind::Plain, None) => Ok(Connection::open_with_flags(path, flags)?),
        (Kind::Encrypted(salt), Some(key)) => {
            let conn = Connection::open_with_flags(path, flags)?;
            apply_key(&conn, key, &salt)?;
            Ok(conn)
        }
        (Kind::New, Some(key)) => {
            let mut salt = [0u8; SALT_LEN];
            rand::RngExt::fill(&mut rand::rng(), &mut salt[..]);
            let conn = Connection::open_with_flags(path, flags)?;
            apply_key(&conn, key, &salt)?;
            Ok(conn)
        }
    }
}

/// A lock on a data directory (the file [`LOCK_FILE`]), released on drop.
#[derive(Debug)]
pub(crate) struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn file(dir: &Path) -> Result<File, RelayError> {
        Ok(fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?)
    }

    /// A shared lock: the relay and the administration commands, several at once.
    pub(crate) fn shared(dir: &Path) -> Result<Self, RelayError> {
        let file = Self::file(dir)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(RelayError::DataDirBusy(
                "the database is being encrypted or re-keyed".into(),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// An exclusive lock: no relay and no other command uses the directory.
    pub(crate) fn exclusive(dir: &Path) -> Result<Self, RelayError> {
        let file = Self::file(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(RelayError::DataDirBusy(
                "a relay or another command uses the data directory: stop it first".into(),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

/// Copies everything the connection `src` reads as its `main` database into the new file
/// `dest` keyed with `key` (a fresh random salt; none: plaintext), with `sqlcipher_export` in
/// one transaction (one consistent snapshot of `src`).
pub(crate) fn export_to(
    src: &Connection,
    dest: &Path,
    key: Option<&DbKey>,
) -> Result<(), RelayError> {
    let mut salt = [0u8; SALT_LEN];
    rand::RngExt::fill(&mut rand::rng(), &mut salt[..]);
    let dest_text = dest
        .to_str()
        .ok_or_else(|| RelayError::Corrupt(format!("{} is not UTF-8", dest.display())))?;
    let pragma = key.map_or_else(|| Zeroizing::new(String::new()), |k| k.pragma_value(&salt));
    src.execute(
        "ATTACH DATABASE ?1 AS viska_export KEY ?2",
        rusqlite::params![dest_text, pragma.as_str()],
    )?;
    let result = (|| {
        src.execute_batch("BEGIN")?;
        let exported = src
            .query_row("SELECT sqlcipher_export('viska_export')", [], |_| Ok(()))
            .and_then(|()| {
                let version: i64 = src.query_row("PRAGMA main.user_version", [], |r| r.get(0))?;
                src.execute_batch(&format!("PRAGMA viska_export.user_version = {version}"))
            });
        match exported {
            Ok(()) => src.execute_batch("COMMIT"),
            Err(e) => {
                let _ = src.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    })();
    let detached = src.execute_batch("DETACH DATABASE viska_export");
    result?;
    detached?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sidecars(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm")]
}

/// Writes `src` (opened on the data directory's database) re-keyed with `new_key` next to it,
/// checks the copy opens with the new key, then puts it in the database's place (a rename,
/// after the old file's WAL is folded in and removed).
fn replace_with_export(dir: &Path, src: Connection, new_key: &DbKey) -> Result<(), RelayError> {
    let path = dir.join(DB_FILE);
    let staged = dir.join(format!("{DB_FILE}.rekey"));
    for p in std::iter::once(staged.clone()).chain(sidecars(&staged)) {
        remove_if_exists(&p)?;
    }
    let written = (|| {
        export_to(&src, &staged, Some(new_key))?;
        // Folds the WAL into the old file, so nothing is left behind in its -wal.
        src.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        drop(src);
        let check = open_file(&staged, Some(new_key), OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let ok: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(RelayError::Corrupt(format!("the re-keyed copy: {ok}")));
        }
        drop(check);
        File::open(&staged)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = remove_if_exists(&staged);
        return Err(e);
    }
    #[cfg(unix)]
    fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    for p in sidecars(&path) {
        remove_if_exists(&p)?;
    }
    fs::rename(&staged, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Encrypts the plaintext database of the data directory `dir` with `key`, once: copies it
/// with `sqlcipher_export` into a new SQLCipher file and renames that over it. Needs the
/// directory to itself (no relay or command running: [`RelayError::DataDirBusy`]). A
/// database already encrypted is [`RelayError::DatabaseEncrypted`].
pub fn encrypt_database(dir: &Path, key: &DbKey) -> Result<(), RelayError> {
    let _lock = DirLock::exclusive(dir)?;
    let path = dir.join(DB_FILE);
    match kind(&path)? {
        Kind::Plain => {}
        Kind::New => {
            return Err(RelayError::Corrupt(format!(
                "no database at {}",
                path.display()
            )));
        }
        Kind::Encrypted(_) => return Err(RelayError::DatabaseEncrypted(path)),
    }
    // Default flags: the export's ATTACH creates its file with the connection's flags.
    let src = open_file(&path, None, OpenFlags::default())?;
    replace_with_export(dir, src, key)
}

/// Re-keys the encrypted database of `dir` from `old` to `new`: a new copy under the new key
/// (and a new salt) replaces the file; the old key no longer opens it. Needs the directory to
/// itself, as [`encrypt_database`].
pub fn rekey_database(dir: &Path, old: &DbKey, new: &DbKey) -> Result<(), RelayError> {
    let _lock = DirLock::exclusive(dir)?;
    let path = dir.join(DB_FILE);
    let src = open_file(&path, Some(old), OpenFlags::default())?;
    replace_with_export(dir, src, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_and_hide_in_debug() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let key = DbKey::from_hex(&format!("  {hex}\n"), "test").unwrap();
        assert_eq!(key.to_hex().as_str(), hex.to_lowercase());
        assert_eq!(format!("{key:?}"), "DbKey(***)");
        assert!(matches!(
            DbKey::from_hex(&hex[1..], "test"),
            Err(DbKeyError::Format(_))
        ));
        assert!(DbKey::from_hex(&hex.replace('0', "g"), "test").is_err());
        let v = key.pragma_value(&[0xab; SALT_LEN]);
        assert_eq!(v.len(), 3 + 64 + 32);
        assert!(v.starts_with("x'00112233") && v.ends_with("abab'"));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, DbKey::generate().to_hex().as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            DbKey::from_file(&path),
            Err(DbKeyError::Permissions { mode: 0o640, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        DbKey::from_file(&path).unwrap();
    }
}

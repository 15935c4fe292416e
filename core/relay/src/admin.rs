//! Administration of a relay's data directory from the same machine: accounts, devices, the
//! audit log, backup and restore. The command line (`viska-relay user …`, `device …`,
//! `audit …`, `backup`, `restore`) is a thin front end of this module. It may run while the
//! relay runs: both use the same SQLite file (WAL mode, writers wait for each other), and the
//! running relay acts on revocations, disabled accounts and role changes within
//! [`crate::RelayConfig::recheck_interval`] (it polls the queue of devices to check again).
//!
//! Whoever can run this can read and write the data directory: account management is
//! admin-only by local access, and every change is recorded in the audit log as done by
//! `cli:<user>`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use viska_passwords::{HashParams, PasswordError, WeakPassword};
use zeroize::Zeroizing;

use crate::accounts::{self, Role, normalize_name};
use crate::audit::{self, AuditEvent, AuditProblem, AuditReport, Checkpointer, hex};
use crate::backup::{self, BackupError};
use crate::storage::{self, DbKey, DirLock};
use crate::totp::TotpSecret;
use crate::{CallRef, DeviceKey, RelayError, cert, db};

/// Issuer shown by authenticator apps for the relay's accounts.
pub const TOTP_ISSUER: &str = "Viska relay";

/// Errors of administration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The account name is not 1 to 64 of `a-z 0-9 . _ - @`.
    #[error("bad account name {0:?} (1 to 64 of a-z, 0-9, '.', '_', '-', '@')")]
    BadName(String),
    /// An account of that name exists.
    #[error("account {0} exists already")]
    UserExists(String),
    /// No account of that name.
    #[error("no account {0}")]
    NoSuchUser(String),
    /// The password does not meet the policy.
    #[error("password refused: {0}")]
    WeakPassword(#[from] WeakPassword),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Password(#[from] PasswordError),
    /// No device with that key.
    #[error("no device {0}")]
    NoSuchDevice(String),
    /// No active call with that id.
    #[error("no active call {0}")]
    NoSuchCall(String),
    /// A call id is not 32 hex digits.
    #[error("bad call id {0:?} (32 hex digits)")]
    BadCall(String),
    /// A device key is not 64 hex digits.
    #[error("bad device key {0:?} (64 hex digits)")]
    BadKey(String),
    /// The restore target holds a relay database already, or the backup target exists.
    #[error("{0} is not empty")]
    NotEmpty(PathBuf),
    /// The backup is incomplete or unreadable.
    #[error("bad backup: {0}")]
    BadBackup(String),
    /// The backup was refused by its format: a wrong passphrase, or a truncated, reordered or
    /// changed backup.
    #[error("backup refused: {0}")]
    Backup(#[from] BackupError),
    /// The database or a file failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl From<rusqlite::Error> for AdminError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Relay(RelayError::Database(e))
    }
}

impl From<std::io::Error> for AdminError {
    fn from(e: std::io::Error) -> Self {
        Self::Relay(RelayError::Io(e))
    }
}

/// An account as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// Whether logins and its devices are refused.
    pub disabled: bool,
    /// Whether a TOTP secret is enrolled (logins need one).
    pub totp: bool,
    /// Devices registered and not revoked.
    pub devices: u64,
}

/// A device as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// The device's identity key.
    pub key: DeviceKey,
    /// The account it is registered to.
    pub user: String,
    /// When it was registered (ms since the Unix epoch).
    pub registered_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// A new TOTP secret for an account: give the URI (or the base32 secret) to its user's
/// authenticator app, once. Its `Debug` shows neither.
pub struct TotpEnrollment {
    /// The secret.
    pub secret: TotpSecret,
    /// `otpauth://totp/…`, for a QR code (it holds the secret).
    pub uri: Zeroizing<String>,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment(***)")
    }
}

/// Parses a device key from 64 hex digits.
pub fn parse_key(s: &str) -> Result<DeviceKey, AdminError> {
    let bad = || AdminError::BadKey(s.to_string());
    if s.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(key)
}

/// Parses a call id (32 hex digits, as `call list` shows it).
pub fn parse_call(s: &str) -> Result<CallRef, AdminError> {
    let bad = || AdminError::BadCall(s.to_string());
    if s.len() != 32 {
        return Err(bad());
    }
    let mut call = [0u8; 16];
    for (i, c) in call.iter_mut().enumerate() {
        *c = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(CallRef(call))
}

/// An active call, as `call list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallInfo {
    /// The call's id (its MLS group id).
    pub call: CallRef,
    /// Its route (the datagrams' prefix).
    pub route: u32,
    /// Its epoch now.
    pub epoch: u64,
    /// Its members (connected or within the hold time), by identity key.
    pub members: Vec<DeviceKey>,
}

/// The data directory of a relay, opened for administration.
pub struct Admin {
    conn: Connection,
    dir: PathBuf,
    checkpoints: Checkpointer,
    actor: String,
    params: HashParams,
    backup_params: HashParams,
    _lock: DirLock,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("dir", &self.dir)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Opens (or creates) the data directory `dir`, with the relay's certificate and audit key
    /// (generated if missing); changes are recorded as done by `cli:<operator>`.
    ///
    /// The database is opened with `key` (none: a plaintext database, which the command line
    /// allows only with `--insecure-unencrypted-db`); a wrong key is
    /// [`RelayError::WrongDatabaseKey`] and leaves the file as it was.
    pub fn open(dir: &Path, key: Option<&DbKey>, operator: &str) -> Result<Self, AdminError> {
        fs::create_dir_all(dir)?;
        let lock = DirLock::shared(dir)?;
        // The key first: a wrong one fails before anything is generated.
        let conn = db::open_connection(dir, key)?;
        // The certificate exists from the first command on: its fingerprint is fixed before
        // the relay first starts, and a backup always carries it.
        cert::load_or_generate(dir)?;
        let checkpoints = Checkpointer::open(dir)?;
        Ok(Self {
            conn,
            dir: dir.to_path_buf(),
            checkpoints,
            actor: format!("cli:{operator}"),
            params: HashParams::LOGIN,
            backup_params: HashParams::KEY,
            _lock: lock,
        })
    }

    /// Derives backup keys with `params` instead of [`HashParams::KEY`] (tests).
    #[doc(hidden)]
    pub fn set_backup_params(&mut self, params: HashParams) {
        self.backup_params = params;
    }

    /// Hashes new passwords with `params` instead of [`HashParams::LOGIN`] (tests).
    pub fn set_hash_params(&mut self, params: HashParams) {
        self.params = params;
    }

    /// The public audit key (64 hex digits): record it apart from the relay, to verify
    /// checkpoints with.
    pub fn audit_public_key(&self) -> String {
        hex(&self.checkpoints.public().to_bytes())
    }

    fn event(&self, kind: &str, subject: &str) -> AuditEvent {
        AuditEvent::new(kind, self.actor.clone(), subject, "local")
    }

    /// Runs `change` and appends `event` in one immediate transaction, then checkpoints.
    fn change<T>(
        &mut self,
        event: AuditEvent,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let value = change(&tx)?;
        let (seq, hash) = audit::append(&tx, &event)?;
        tx.commit()?;
        self.checkpoints.write(seq, &hash)?;
        Ok(value)
    }

    fn name(name: &str) -> Result<String, AdminError> {
        normalize_name(name).ok_or_else(|| AdminError::BadName(name.to_string()))
    }

    fn exists(tx: &Connection, name: &str) -> Result<bool, AdminError> {
        Ok(tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Adds an account; the password must pass [`viska_passwords::check_password`] (with the
    /// name as a user input).
    pub fn add_user(&mut self, name: &str, password: &str, role: Role) -> Result<(), AdminError> {
        let name = Self::name(name)?;
        viska_passwords::check_password(password, &[&name])?;
        let hash = viska_passwords::hash_password(password, self.params)?;
        let event = self
            .event("user_add", &name)
            .with(serde_json::json!({ "role": role.as_str() }));
        self.change(event, |tx| {
            if Self::exists(tx, &name)? {
                return Err(AdminError::UserExists(name.clone()));
            }
            tx.execute(
                "INSERT INTO users (name, hash, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name, hash, role.as_str(), audit::now_ms()],
            )?;
            Ok(())
        })
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<UserInfo>, AdminError> {
        let mut stmt = self.conn.prepare(
            "SELECT u.name, u.role, u.disabled, u.totp_secret IS NOT NULL,
                    (SELECT COUNT(*) FROM devices d WHERE d.user = u.name AND d.revoked_ms IS NULL)
             FROM users u ORDER BY u.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, u64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, disabled, totp, devices) = row?;
            out.push(UserInfo {
                name,
                role: role
                    .parse()
                    .map_err(|e: accounts::UnknownRole| RelayError::Corrupt(e.to_string()))?,
                disabled,
                totp,
                devices,
            });
        }
        Ok(out)
    }

    /// Sets a new password (checked against the policy).
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), AdminError> {
        let name = Self::name(name)?;
        viska_passwords::check_password(password, &[&name])?;
        let hash = viska_passwords::hash_password(password, self.params)?;
        let event = self.event("user_passwd", &name);
        self.change(event, |tx| {
            let n = tx.execute(
                "UPDATE users SET hash = ?1 WHERE name = ?2",
                params![hash, name],
            )?;
            if n == 0 {
                return Err(AdminError::NoSuchUser(name.clone()));
            }
            Ok(())
        })
    }

    /// Disables (or enables again) an account. A disabled account cannot log in, its devices
    /// are refused, and the running relay disconnects them and takes them out of their calls.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<(), AdminError> {
        let name = Self::name(name)?;
        let kind = if disabled {
            "user_disable"
        } else {
            "user_enable"
        };
        let event = self.event(kind, &name);
        self.change(event, |tx| {
            let n = tx.execute(
                "UPDATE users SET disabled = ?1 WHERE name = ?2",
                params![disabled, name],
            )?;
            if n == 0 {
                return Err(AdminError::NoSuchUser(name.clone()));
            }
            accounts::recheck_user(tx, &name)?;
            Ok(())
        })
    }

    /// Changes an account's role; the running relay applies it to connected devices.
    pub fn set_role(&mut self, name: &str, role: Role) -> Result<(), AdminError> {
        let name = Self::name(name)?;
        let event = self
            .event("user_role", &name)
            .with(serde_json::json!({ "role": role.as_str() }));
        self.change(event, |tx| {
            let n = tx.execute(
                "UPDATE users SET role = ?1 WHERE name = ?2",
                params![role.as_str(), name],
            )?;
            if n == 0 {
                return Err(AdminError::NoSuchUser(name.clone()));
            }
            accounts::recheck_user(tx, &name)?;
            Ok(())
        })
    }

    /// Enrolls a new TOTP secret for an account (replacing any earlier one).
    pub fn totp_enroll(&mut self, name: &str) -> Result<TotpEnrollment, AdminError> {
        let name = Self::name(name)?;
        let secret = TotpSecret::generate();
        let event = self.event("totp_enroll", &name);
        self.change(event, |tx| {
            let n = tx.execute(
                "UPDATE users SET totp_secret = ?1, totp_last_step = NULL WHERE name = ?2",
                params![secret.expose(), name],
            )?;
            if n == 0 {
                return Err(AdminError::NoSuchUser(name.clone()));
            }
            Ok(())
        })?;
        let uri = secret.otpauth_uri(TOTP_ISSUER, &name);
        Ok(TotpEnrollment { secret, uri })
    }

    /// Registered devices, of one account or all.
    pub fn devices(&self, user: Option<&str>) -> Result<Vec<DeviceInfo>, AdminError> {
        let user = user.map(Self::name).transpose()?;
        let mut stmt = self.conn.prepare(
            "SELECT key, user, registered_ms, revoked_ms FROM devices
             WHERE ?1 IS NULL OR user = ?1 ORDER BY user, registered_ms",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, user, registered_ms, revoked_ms) = row?;
            let key = DeviceKey::try_from(key)
                .map_err(|_| RelayError::Corrupt("a device key not 32 bytes".into()))?;
            out.push(DeviceInfo {
                key,
                user,
                registered_ms,
                revoked_ms,
            });
        }
        Ok(out)
    }

    /// Revokes a device for good: the running relay disconnects it and takes it out of its
    /// calls (their members are told, as when a member leaves), and refuses it from then on.
    pub fn revoke_device(&mut self, key: &DeviceKey) -> Result<(), AdminError> {
        let event = self.event("device_revoke", &hex(key));
        let key = *key;
        self.change(event, |tx| {
            let n = tx.execute(
                "UPDATE devices SET revoked_ms = ?1 WHERE key = ?2 AND revoked_ms IS NULL",
                params![audit::now_ms(), &key[..]],
            )?;
            if n == 0 {
                let known = tx
                    .query_row("SELECT 1 FROM devices WHERE key = ?1", [&key[..]], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_some();
                if !known {
                    // A device never registered (an open relay's) is revoked all the same.
                    tx.execute(
                        "INSERT INTO devices (key, user, registered_ms, revoked_ms)
                         VALUES (?1, '', ?2, ?2)",
                        params![&key[..], audit::now_ms()],
                    )?;
                }
            }
            tx.execute("INSERT INTO rechecks (key) VALUES (?1)", [&key[..]])?;
            Ok(())
        })
    }

    /// The active calls, with their epoch and members.
    pub fn calls(&self) -> Result<Vec<CallInfo>, AdminError> {
        let mut stmt = self
            .conn
            .prepare("SELECT call, route, epoch FROM calls ORDER BY route")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let corrupt = |what: &str| AdminError::Relay(RelayError::Corrupt(what.into()));
        let mut out = Vec::with_capacity(rows.len());
        for (call, route, epoch) in rows {
            let call =
                CallRef(<[u8; 16]>::try_from(call).map_err(|_| corrupt("a call id not 16 bytes"))?);
            let mut stmt = self.conn.prepare(
                "SELECT identity FROM members WHERE call = ?1 ORDER BY join_epoch, identity",
            )?;
            let members = stmt
                .query_map([&call.0[..]], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|k| DeviceKey::try_from(k).map_err(|_| corrupt("a member key not 32 bytes")))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(CallInfo {
                call,
                route: u32::try_from(route).map_err(|_| corrupt("a route out of range"))?,
                epoch: u64::try_from(epoch).map_err(|_| corrupt("a negative epoch"))?,
                members,
            });
        }
        Ok(out)
    }

    /// Asks the running relay for an emergency rekey of `call`: within
    /// [`crate::RelayConfig::recheck_interval`] it asks every member to commit an update,
    /// which gives the call new keys (the old epoch's keys no longer decrypt what follows).
    /// Recorded in the audit log (`call_rekey`).
    pub fn rekey_call(&mut self, call: &CallRef) -> Result<(), AdminError> {
        let event = self
            .event("call_rekey", &hex(&call.0))
            .with(serde_json::json!({ "reason": "operator" }));
        let call = *call;
        self.change(event, |tx| {
            let active = tx
                .query_row("SELECT 1 FROM calls WHERE call = ?1", [&call.0[..]], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if !active {
                return Err(AdminError::NoSuchCall(hex(&call.0)));
            }
            tx.execute("INSERT INTO rekeys (call) VALUES (?1)", [&call.0[..]])?;
            Ok(())
        })
    }

    /// Checks the audit log's chain and its signed checkpoints. `Ok(Err(problem))` names the
    /// first bad row.
    pub fn audit_verify(&self) -> Result<Result<AuditReport, AuditProblem>, AdminError> {
        self.audit_verify_with(None, None)
    }

    /// [`Admin::audit_verify`] against the audit public key recorded elsewhere (64 hex digits;
    /// an attacker who replaced `audit-key` and re-signed every checkpoint is caught by it),
    /// and the checkpoints in `checkpoints` (a copy kept elsewhere) instead of the data
    /// directory's. A key that does not parse is [`AdminError::BadKey`].
    pub fn audit_verify_with(
        &self,
        key: Option<&str>,
        checkpoints: Option<&Path>,
    ) -> Result<Result<AuditReport, AuditProblem>, AdminError> {
        let key = match key {
            Some(hex) => viska_e2ee::identity::PublicIdentity::from_bytes(&parse_key(hex)?)
                .map_err(|_| AdminError::BadKey(hex.to_string()))?,
            None => self.checkpoints.public(),
        };
        let file =
            checkpoints.map_or_else(|| self.dir.join(audit::CHECKPOINT_FILE), Path::to_path_buf);
        Ok(audit::verify(&self.conn, &file, &key)?)
    }

    /// Writes the audit log as JSON lines; returns the number of rows.
    pub fn audit_export(&self, out: &mut dyn Write) -> Result<u64, AdminError> {
        Ok(audit::export(&self.conn, out)?)
    }

    /// Records `event` in the audit log (for tools built on this module).
    pub fn record(&mut self, event: &AuditEvent) -> Result<u64, AdminError> {
        Ok(audit::record(&mut self.conn, &self.checkpoints, event)?)
    }

    /// Writes an encrypted backup of the data directory to the new file `dest` (owner-only):
    /// a consistent snapshot of the database (taken with `sqlcipher_export` in one read
    /// transaction, safe while the relay runs, under a random key of its own), the
    /// certificate and its key (so devices' pins still hold after a restore), the audit key
    /// and the checkpoints of the rows backed up, all sealed under `passphrase`
    /// ([`crate::backup`], `docs/relay-storage.md`). The passphrase must pass
    /// [`viska_passwords::check_password`]. Nothing of it is written in the clear: the
    /// snapshot is a SQLCipher file in the data directory until it is sealed, then removed.
    pub fn backup(&mut self, dest: &Path, passphrase: &str) -> Result<BackupReport, AdminError> {
        viska_passwords::check_password(passphrase, &[])?;
        if dest.exists() {
            return Err(AdminError::NotEmpty(dest.to_path_buf()));
        }
        let snapshot_key = DbKey::generate();
        let snapshot = self
            .dir
            .join(format!("{}.backup-{}", db::DB_FILE, random_hex()));
        let result = self.write_backup(dest, passphrase, &snapshot, &snapshot_key);
        let _ = fs::remove_file(&snapshot);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                let _ = fs::remove_file(dest);
                return Err(e);
            }
        };
        let event = self
            .event("backup", &dest.display().to_string())
            .with(serde_json::json!({ "audit_rows": rows }));
        self.record(&event)?;
        Ok(BackupReport { audit_rows: rows })
    }

    fn write_backup(
        &self,
        dest: &Path,
        passphrase: &str,
        snapshot: &Path,
        snapshot_key: &DbKey,
    ) -> Result<u64, AdminError> {
        storage::export_to(&self.conn, snapshot, Some(snapshot_key))?;
        let rows: u64 = {
            let out = storage::open_file(
                snapshot,
                Some(snapshot_key),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            out.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))?
        };
        // Checkpoints of rows after the snapshot would read as a truncation: leave them out.
        let checkpoints = match fs::read_to_string(self.dir.join(audit::CHECKPOINT_FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        let kept: String = checkpoints
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_none_or(|seq| seq <= rows)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(dest)?;
        let mut salt = [0u8; backup::SALT_LEN];
        let mut prefix = [0u8; backup::PREFIX_LEN];
        rand::RngExt::fill(&mut rand::rng(), &mut salt[..]);
        rand::RngExt::fill(&mut rand::rng(), &mut prefix[..]);
        let mut sealer = backup::Sealer::new(
            std::io::BufWriter::new(file),
            passphrase.as_bytes(),
            self.backup_params,
            salt,
            prefix,
        )?;
        put_entry(&mut sealer, ENTRY_DB_KEY, snapshot_key.as_bytes())?;
        {
            let mut db_file = fs::File::open(snapshot)?;
            let len = db_file.metadata()?.len();
            sealer.write_all(&backup::entry_head(db::DB_FILE, len)?)?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let take = left.min(buf.len() as u64) as usize;
                std::io::Read::read_exact(&mut db_file, &mut buf[..take])?;
                sealer.write_all(&buf[..take])?;
                left -= take as u64;
            }
        }
        for file in [cert::CERT_FILE, cert::KEY_FILE, audit::AUDIT_KEY_FILE] {
            let from = self.dir.join(file);
            if from.exists() {
                let bytes = Zeroizing::new(fs::read(&from)?);
                put_entry(&mut sealer, file, &bytes)?;
            }
        }
        put_entry(&mut sealer, audit::CHECKPOINT_FILE, kept.as_bytes())?;
        sealer.write_all(&[backup::ARCHIVE_END])?;
        let out = sealer.finish()?;
        out.into_inner()
            .map_err(|e| AdminError::from(e.into_error()))?
            .sync_all()?;
        Ok(rows)
    }
}

/// The archive entry holding the snapshot's own SQLCipher key.
const ENTRY_DB_KEY: &str = "db-key";
/// Largest entry other than the database (certificate, keys, checkpoints) a restore reads.
const MAX_SMALL_ENTRY: u64 = 16 << 20;

fn put_entry<W: Write>(
    sealer: &mut backup::Sealer<W>,
    name: &str,
    data: &[u8],
) -> Result<(), AdminError> {
    sealer.write_all(&backup::entry_head(name, data.len() as u64)?)?;
    sealer.write_all(data)?;
    Ok(())
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    rand::RngExt::fill(&mut rand::rng(), &mut b[..]);
    hex(&b)
}

/// What a backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// Rows of the audit log in it.
    pub audit_rows: u64,
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Restores the encrypted backup `backup` (sealed under `passphrase`) into the data directory
/// `dir`, which must hold no relay database yet (a fresh directory), whose database is then
/// keyed with `key` (none: plaintext, `--insecure-unencrypted-db`). Everything is decrypted,
/// authenticated and checked (the database's integrity, the audit log's chain and
/// checkpoints) in a staging directory beside `dir` first: a wrong passphrase, a truncated,
/// reordered or changed backup is refused ([`AdminError::Backup`]) and `dir` is left as it
/// was.
pub fn restore(
    backup: &Path,
    passphrase: &str,
    dir: &Path,
    key: Option<&DbKey>,
) -> Result<AuditReport, AdminError> {
    if dir.join(db::DB_FILE).exists() {
        return Err(AdminError::NotEmpty(dir.to_path_buf()));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| AdminError::BadBackup(format!("{} names no directory", dir.display())))?;
    let staging = dir.with_file_name(format!(
        ".{}.restoring-{}",
        name.to_string_lossy(),
        random_hex()
    ));
    create_private_dir(&staging)?;
    let staged = stage_restore(backup, passphrase, &staging, key);
    let moved = staged.and_then(|()| {
        create_private_dir(dir)?;
        for file in [
            cert::CERT_FILE,
            cert::KEY_FILE,
            audit::AUDIT_KEY_FILE,
            audit::CHECKPOINT_FILE,
            db::DB_FILE,
        ] {
            let from = staging.join(file);
            if from.exists() {
                fs::rename(&from, dir.join(file))?;
            }
        }
        Ok(())
    });
    let _ = fs::remove_dir_all(&staging);
    moved?;
    let mut admin = Admin::open(dir, key, "restore")?;
    let event = admin
        .event("restore", &backup.display().to_string())
        .with(serde_json::json!({}));
    admin.record(&event)?;
    match admin.audit_verify()? {
        Ok(report) => Ok(report),
        Err(problem) => Err(AdminError::BadBackup(format!("audit log: {problem}"))),
    }
}

/// Decrypts `backup` into `staging` and checks it; the database ends up there as
/// `relay.sqlite3` keyed with `key`.
fn stage_restore(
    backup: &Path,
    passphrase: &str,
    staging: &Path,
    key: Option<&DbKey>,
) -> Result<(), AdminError> {
    use backup::Source;
    let file = fs::File::open(backup)?;
    let mut opener = backup::Opener::new(std::io::BufReader::new(file), passphrase.as_bytes())?;
    let snapshot = staging.join("snapshot.sqlite3");
    let mut snapshot_key = None;
    let mut seen = std::collections::HashSet::new();
    while let Some((name, len)) = backup::next_entry(&mut opener)? {
        if !seen.insert(name.clone()) {
            return Err(AdminError::BadBackup(format!("{name} twice in it")));
        }
        if name == db::DB_FILE {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = std::io::BufWriter::new(options.open(&snapshot)?);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let take = left.min(buf.len() as u64) as usize;
                opener.read_exact(&mut buf[..take])?;
                out.write_all(&buf[..take])?;
                left -= take as u64;
            }
            out.into_inner()
                .map_err(|e| AdminError::from(e.into_error()))?
                .sync_all()?;
            continue;
        }
        let known = [
            ENTRY_DB_KEY,
            cert::CERT_FILE,
            cert::KEY_FILE,
            audit::AUDIT_KEY_FILE,
            audit::CHECKPOINT_FILE,
        ];
        if !known.contains(&name.as_str()) {
            return Err(AdminError::BadBackup(format!("unknown entry {name:?}")));
        }
        if len > MAX_SMALL_ENTRY {
            return Err(AdminError::BadBackup(format!("{name} of {len} bytes")));
        }
        let mut data = Zeroizing::new(vec![0u8; len as usize]);
        opener.read_exact(&mut data)?;
        if name == ENTRY_DB_KEY {
            let bytes: [u8; 32] = data
                .as_slice()
                .try_into()
                .map_err(|_| AdminError::BadBackup("a snapshot key not 32 bytes".into()))?;
            snapshot_key = Some(DbKey::from_bytes(bytes));
        } else {
            write_private(&staging.join(&name), &data)?;
        }
    }
    opener.finish()?;
    for file in [
        db::DB_FILE,
        cert::CERT_FILE,
        cert::KEY_FILE,
        audit::AUDIT_KEY_FILE,
    ] {
        if !seen.contains(file) {
            return Err(AdminError::BadBackup(format!("no {file} in it")));
        }
    }
    let snapshot_key =
        snapshot_key.ok_or_else(|| AdminError::BadBackup(format!("no {ENTRY_DB_KEY} in it")))?;
    let conn = storage::open_file(
        &snapshot,
        Some(&snapshot_key),
        // Default flags: the export's ATTACH creates its file with the connection's flags.
        rusqlite::OpenFlags::default(),
    )?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(AdminError::BadBackup(format!("integrity check: {check}")));
    }
    let audit_key = audit::load_or_generate_key(staging)?;
    if let Err(problem) = audit::verify(
        &conn,
        &staging.join(audit::CHECKPOINT_FILE),
        &audit_key.public(),
    )? {
        return Err(AdminError::BadBackup(format!("audit log: {problem}")));
    }
    storage::export_to(&conn, &staging.join(db::DB_FILE), key)?;
    drop(conn);
    fs::remove_file(&snapshot)?;
    #[cfg(unix)]
    fs::set_permissions(
        staging.join(db::DB_FILE),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(())
}

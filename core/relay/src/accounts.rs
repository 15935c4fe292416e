//! Relay accounts and devices in the relay's database: users (name, Argon2id hash, role,
//! disabled, TOTP secret and the last step accepted), the device keys registered to them, and
//! the queue of devices the running relay must check again (revoked, disabled, role changed).
//! Synchronous functions on a SQLite connection: the relay's database thread and the command
//! line ([`crate::admin`]) share them.

use std::fmt;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, params};

use crate::totp::TotpSecret;
use crate::{CallRef, DeviceKey, RelayError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
    disabled INTEGER NOT NULL DEFAULT 0,
    totp_secret BLOB,
    totp_last_step INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    key BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    registered_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX IF NOT EXISTS devices_user ON devices (user);
CREATE TABLE IF NOT EXISTS rechecks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rekeys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    call BLOB NOT NULL
);
";

/// What an account may do on the relay (`docs/protocol-relay.md` §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Makes and takes calls.
    Agent,
    /// An agent who may also remove agents from calls.
    Supervisor,
    /// May do everything on calls.
    Admin,
}

impl Role {
    /// The name stored and typed: `agent`, `supervisor`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Supervisor => "supervisor",
            Self::Admin => "admin",
        }
    }

    /// Whether a member with this role may add a device whose account has role `added`.
    pub fn may_add(self, added: Role) -> bool {
        match self {
            // Agents may bring in agents and, to escalate, supervisors.
            Self::Agent | Self::Supervisor => added <= Self::Supervisor,
            Self::Admin => true,
        }
    }

    /// Whether a member with this role may remove a current member of another account whose
    /// role is `removed`. (Anyone may remove a device of its own account, and a device that
    /// already left the call.)
    pub fn may_remove(self, removed: Role) -> bool {
        match self {
            Self::Agent => false,
            Self::Supervisor => removed == Self::Agent,
            Self::Admin => true,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `agent`, `supervisor`, `admin`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (agent, supervisor or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "supervisor" => Ok(Self::Supervisor),
            "admin" => Ok(Self::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// Most bytes of an account name.
pub const MAX_NAME: usize = 64;

/// An account name as stored: lowercase ASCII letters, digits and `.`, `_`, `-`, `@`, 1 to
/// [`MAX_NAME`] bytes. A name typed at login is lowercased first.
pub fn normalize_name(name: &str) -> Option<String> {
    let lower = name.trim().to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= MAX_NAME
        && lower
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b));
    ok.then_some(lower)
}

/// An account as stored.
pub(crate) struct UserRecord {
    pub(crate) name: String,
    pub(crate) hash: String,
    pub(crate) role: Role,
    pub(crate) disabled: bool,
    pub(crate) totp: Option<TotpSecret>,
    pub(crate) last_step: Option<u64>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .field("totp", &self.totp.is_some())
            .finish_non_exhaustive()
    }
}

fn role_of(s: String) -> Result<Role, RelayError> {
    s.parse()
        .map_err(|e: UnknownRole| RelayError::Corrupt(e.to_string()))
}

/// A `users` row: name, hash, role, disabled, TOTP secret, last step.
type UserRow = (String, String, String, bool, Option<Vec<u8>>, Option<u64>);

/// A device joined with its account: owner, revoked, role, disabled.
type DeviceRow = (String, Option<i64>, Option<String>, Option<bool>);

/// A registration's outcome and the audit row it appended (to checkpoint).
type RegisterResult = (Registered, Option<(u64, [u8; 32])>);

pub(crate) fn user(conn: &Connection, name: &str) -> Result<Option<UserRecord>, RelayError> {
    let row: Option<UserRow> = conn
        .query_row(
            "SELECT name, hash, role, disabled, totp_secret, totp_last_step FROM users WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
    let Some((name, hash, role, disabled, secret, last_step)) = row else {
        return Ok(None);
    };
    let secret = secret.map(zeroize::Zeroizing::new);
    Ok(Some(UserRecord {
        name,
        hash,
        role: role_of(role)?,
        disabled,
        totp: secret.as_deref().map(|s| TotpSecret::from_bytes(s)),
        last_step,
    }))
}

/// What the relay knows of a device key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Registered to an enabled account.
    Registered {
        /// The account.
        user: String,
        /// Its role.
        role: Role,
    },
    /// Revoked: refused for good.
    Revoked,
    /// Registered to a disabled (or deleted) account: refused while it is.
    Disabled,
    /// Not registered.
    Unknown,
}

pub(crate) fn device_status(
    conn: &Connection,
    key: &DeviceKey,
) -> Result<DeviceStatus, RelayError> {
    let row: Option<DeviceRow> = conn
        .query_row(
            "SELECT d.user, d.revoked_ms, u.role, u.disabled
             FROM devices d LEFT JOIN users u ON u.name = d.user WHERE d.key = ?1",
            [&key[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    Ok(match row {
        None => DeviceStatus::Unknown,
        Some((_, Some(_), _, _)) => DeviceStatus::Revoked,
        Some((user, None, Some(role), Some(false))) => DeviceStatus::Registered {
            user,
            role: role_of(role)?,
        },
        Some(_) => DeviceStatus::Disabled,
    })
}

/// The outcome of registering a device after a login whose password and code were right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Registered {
    /// Registered (or already registered to this account).
    Yes,
    /// The code's step was taken meanwhile by another login (or the account was disabled
    /// meanwhile): refused.
    StepTaken,
    /// The key is registered to another account, or revoked.
    KeyTaken,
}

/// In one transaction: takes TOTP step `step` of `user` (only if it is after the last one
/// accepted and the account is enabled), registers `key` to it, and appends `audit`.
pub(crate) fn register_device(
    conn: &mut Connection,
    user: &str,
    key: &DeviceKey,
    step: u64,
    audit: &crate::audit::AuditEvent,
) -> Result<RegisterResult, RelayError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let took = tx.execute(
        "UPDATE users SET totp_last_step = ?1
         WHERE name = ?2 AND disabled = 0 AND (totp_last_step IS NULL OR totp_last_step < ?1)",
        params![step, user],
    )?;
    if took != 1 {
        return Ok((Registered::StepTaken, None));
    }
    let existing: Option<(String, Option<i64>)> = tx
        .query_row(
            "SELECT user, revoked_ms FROM devices WHERE key = ?1",
            [&key[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match existing {
        Some((owner, None)) if owner == user => {}
        Some(_) => {
            // The step is spent all the same: the code was right and must not serve twice.
            tx.commit()?;
            return Ok((Registered::KeyTaken, None));
        }
        None => {
            tx.execute(
                "INSERT INTO devices (key, user, registered_ms) VALUES (?1, ?2, ?3)",
                params![&key[..], user, crate::audit::now_ms()],
            )?;
        }
    }
    let appended = crate::audit::append(&tx, audit)?;
    tx.commit()?;
    Ok((Registered::Yes, Some(appended)))
}

/// Devices to check again whose entry comes after `after`, with their status now.
pub(crate) fn rechecks(
    conn: &Connection,
    after: i64,
) -> Result<Vec<(i64, DeviceKey, DeviceStatus)>, RelayError> {
    let mut stmt = conn.prepare("SELECT seq, key FROM rechecks WHERE seq > ?1 ORDER BY seq")?;
    let rows = stmt
        .query_map([after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, key) in rows {
        let Ok(key) = DeviceKey::try_from(key) else {
            continue;
        };
        let status = device_status(conn, &key)?;
        out.push((seq, key, status));
    }
    Ok(out)
}

/// Calls the command line asked to rekey whose entry comes after `after`.
pub(crate) fn rekeys(conn: &Connection, after: i64) -> Result<Vec<(i64, CallRef)>, RelayError> {
    let mut stmt = conn.prepare("SELECT seq, call FROM rekeys WHERE seq > ?1 ORDER BY seq")?;
    let rows = stmt
        .query_map([after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(seq, call)| Some((seq, CallRef(<[u8; 16]>::try_from(call).ok()?))))
        .collect())
}

/// The last entry of the rekey queue (0 if none).
pub(crate) fn last_rekey(conn: &Connection) -> Result<i64, RelayError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM rekeys", [], |r| r.get(0))?)
}

/// The last entry of the recheck queue (0 if none).
pub(crate) fn last_recheck(conn: &Connection) -> Result<i64, RelayError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM rechecks", [], |r| {
            r.get(0)
        })?,
    )
}

/// Queues every device of `user` for a recheck by the running relay.
pub(crate) fn recheck_user(conn: &Connection, user: &str) -> Result<(), RelayError> {
    conn.execute(
        "INSERT INTO rechecks (key) SELECT key FROM devices WHERE user = ?1",
        [user],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_bounded() {
        assert_eq!(
            normalize_name(" Alice.B@Example "),
            Some("alice.b@example".into())
        );
        assert_eq!(normalize_name(""), None);
        assert_eq!(normalize_name("a b"), None);
        assert_eq!(normalize_name("ålice"), None);
        assert_eq!(normalize_name(&"a".repeat(65)), None);
        assert!(normalize_name(&"a".repeat(64)).is_some());
    }

    #[test]
    fn the_role_matrix() {
        use Role::*;
        assert!(Agent.may_add(Agent) && Agent.may_add(Supervisor) && !Agent.may_add(Admin));
        assert!(Supervisor.may_add(Supervisor) && !Supervisor.may_add(Admin));
        assert!(Admin.may_add(Admin));
        assert!(!Agent.may_remove(Agent));
        assert!(Supervisor.may_remove(Agent) && !Supervisor.may_remove(Supervisor));
        assert!(Admin.may_remove(Admin));
        assert_eq!("supervisor".parse(), Ok(Supervisor));
        assert!("root".parse::<Role>().is_err());
    }
}

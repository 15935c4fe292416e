//! The relay's database (SQLite, WAL mode): key packages, active calls with their epoch and
//! members, and every accepted commit. All of it runs on one dedicated thread, in the order
//! the operations were queued, so the reactor never waits on the disk and a commit queued
//! after a call's creation is written after it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::Digest as _;
use tokio::sync::oneshot;

use crate::accounts::{self, DeviceStatus, Registered, Role, UserRecord};
use crate::audit::{self, AuditEvent, Checkpointer};
use crate::storage::{self, DbKey};
use crate::{CallRef, DeviceKey, RelayError};

/// File of the database in the data directory.
pub(crate) const DB_FILE: &str = "relay.sqlite3";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity BLOB NOT NULL,
    package BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS key_packages_identity ON key_packages (identity);
CREATE TABLE IF NOT EXISTS last_resort (
    identity BLOB PRIMARY KEY,
    package BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call BLOB PRIMARY KEY,
    route INTEGER NOT NULL UNIQUE,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    call BLOB NOT NULL,
    identity BLOB NOT NULL,
    join_epoch INTEGER NOT NULL,
    PRIMARY KEY (call, identity)
);
CREATE TABLE IF NOT EXISTS commits (
    call BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (call, epoch)
);
CREATE TABLE IF NOT EXISTS held (
    identity BLOB NOT NULL,
    seq INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (identity, seq)
);
CREATE TABLE IF NOT EXISTS gone (
    call BLOB NOT NULL,
    identity BLOB NOT NULL,
    PRIMARY KEY (call, identity)
);
";

/// A call as stored.
#[derive(Debug)]
pub(crate) struct StoredCall {
    pub(crate) route: u32,
    pub(crate) epoch: u64,
    /// Members and the epoch each joined at.
    pub(crate) members: Vec<(DeviceKey, u64)>,
    /// SHA-256 of the commit that moved the call into `epoch`.
    pub(crate) last_commit: Option<[u8; 32]>,
    /// Former members taken out when their hold time ran out, not yet back.
    pub(crate) gone: Vec<DeviceKey>,
}

/// An accepted commit to store, and the membership change it makes.
#[derive(Debug)]
pub(crate) struct CommitRecord {
    pub(crate) call: CallRef,
    /// The epoch the commit was made in; the call moves to `epoch + 1`.
    pub(crate) epoch: u64,
    pub(crate) message: Vec<u8>,
    pub(crate) added: Vec<DeviceKey>,
    pub(crate) removed: Vec<DeviceKey>,
}

type Reply<T> = oneshot::Sender<Result<T, RelayError>>;

/// One operation for the database thread.
pub(crate) enum Op {
    Publish {
        identity: DeviceKey,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        reply: Reply<()>,
    },
    Fetch {
        identity: DeviceKey,
        reply: Reply<Option<Vec<u8>>>,
    },
    CreateCall {
        call: CallRef,
        route: u32,
        member: DeviceKey,
    },
    Commit {
        record: CommitRecord,
        reply: Reply<()>,
    },
    RemoveMember {
        call: CallRef,
        identity: DeviceKey,
    },
    EndCall {
        call: CallRef,
    },
    /// The control messages held for `identity` while it is not connected, in order (each
    /// as its frame, length prefix included), replacing what was stored; none: it connected.
    Held {
        identity: DeviceKey,
        messages: Vec<Vec<u8>>,
    },
    /// `identity` was taken out of `call` when its hold time ran out: it may ask back.
    Gone {
        call: CallRef,
        identity: DeviceKey,
    },
    /// `identity` is back in `call`, or asked to be: no longer gone from it.
    Back {
        call: CallRef,
        identity: DeviceKey,
    },
    /// What the relay knows of a device key.
    DeviceStatus {
        key: DeviceKey,
        reply: Reply<DeviceStatus>,
    },
    /// The account a login names.
    User {
        name: String,
        reply: Reply<Option<UserRecord>>,
    },
    /// Registers a device after a good login (and records it).
    Register {
        user: String,
        key: DeviceKey,
        step: u64,
        audit: AuditEvent,
        reply: Reply<Registered>,
    },
    /// The accounts and roles of devices (none: not registered to an enabled account).
    Roles {
        keys: Vec<DeviceKey>,
        reply: Reply<HashMap<DeviceKey, Option<(String, Role)>>>,
    },
    /// Devices the command line asked to be checked again, after entry `after`.
    Rechecks {
        after: i64,
        reply: Reply<Vec<(i64, DeviceKey, DeviceStatus)>>,
    },
    /// Calls the command line asked to rekey, after entry `after`.
    Rekeys {
        after: i64,
        reply: Reply<Vec<(i64, CallRef)>>,
    },
    /// Appends a security event to the audit log.
    Audit {
        event: AuditEvent,
    },
    /// Replaces `user`'s password hash `old` (if it is still that) by `new`.
    Rehash {
        user: String,
        old: String,
        new: String,
    },
}

/// What a starting relay takes over from the database.
#[derive(Debug)]
pub(crate) struct Stored {
    /// The active calls.
    pub(crate) calls: HashMap<CallRef, StoredCall>,
    /// The control messages held for devices that were not connected.
    pub(crate) held: HashMap<DeviceKey, Vec<viska_proto::relay::RelayMessage>>,
}

/// Opens the database (with `key`; none: plaintext), creates the schema, and loads the
/// active calls and the held messages.
pub(crate) fn open(dir: &Path, key: Option<&DbKey>) -> Result<(Connection, Stored), RelayError> {
    let conn = open_connection(dir, key)?;
    let calls = load_calls(&conn)?;
    let held = load_held(&conn)?;
    Ok((conn, Stored { calls, held }))
}

/// How long a writer waits for another (the relay and the command line share the file).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens (or creates) the database in `dir` in WAL mode with the whole schema: a SQLCipher
/// database keyed with `key`, or with none a plaintext one (the key is checked before
/// anything is written: [`storage::open_file`]).
pub(crate) fn open_connection(dir: &Path, key: Option<&DbKey>) -> Result<Connection, RelayError> {
    let conn = storage::open_file(&dir.join(DB_FILE), key, OpenFlags::default())?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(RelayError::Corrupt(format!(
            "journal mode {mode} instead of WAL"
        )));
    }
    // A commit is acknowledged only once it is on disk.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(accounts::SCHEMA)?;
    conn.execute_batch(audit::SCHEMA)?;
    Ok(conn)
}

fn call_ref(blob: Vec<u8>) -> Result<CallRef, RelayError> {
    blob.try_into()
        .map(CallRef)
        .map_err(|b: Vec<u8>| RelayError::Corrupt(format!("call id of {} bytes", b.len())))
}

fn device_key(blob: Vec<u8>) -> Result<DeviceKey, RelayError> {
    blob.try_into()
        .map_err(|b: Vec<u8>| RelayError::Corrupt(format!("identity of {} bytes", b.len())))
}

fn load_calls(conn: &Connection) -> Result<HashMap<CallRef, StoredCall>, RelayError> {
    let mut calls = HashMap::new();
    let mut stmt = conn.prepare("SELECT call, route, epoch FROM calls")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })?;
    for row in rows {
        let (call, route, epoch) = row?;
        calls.insert(
            call_ref(call)?,
            StoredCall {
                route,
                epoch,
                members: Vec::new(),
                last_commit: None,
                gone: Vec::new(),
            },
        );
    }
    let mut stmt = conn.prepare("SELECT call, identity, join_epoch FROM members")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })?;
    for row in rows {
        let (call, identity, join) = row?;
        let call = call_ref(call)?;
        let identity = device_key(identity)?;
        match calls.get_mut(&call) {
            Some(c) => c.members.push((identity, join)),
            None => return Err(RelayError::Corrupt("a member of no call".into())),
        }
    }
    // A call without members has ended; it should not be there, but is harmless to drop.
    calls.retain(|_, c| !c.members.is_empty());
    let mut stmt = conn.prepare("SELECT call, identity FROM gone")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    for row in rows {
        let (call, identity) = row?;
        // One of a call that has ended is of no use any more.
        if let Some(c) = calls.get_mut(&call_ref(call)?) {
            c.gone.push(device_key(identity)?);
        }
    }
    // The commit that moved each call into its epoch, for `CallStatus`.
    let mut stmt = conn.prepare("SELECT message FROM commits WHERE call = ?1 AND epoch = ?2")?;
    for (call, c) in calls.iter_mut() {
        let Some(before) = c.epoch.checked_sub(1) else {
            continue;
        };
        let message: Option<Vec<u8>> = stmt
            .query_row(rusqlite::params![&call.0[..], before], |r| r.get(0))
            .optional()?;
        c.last_commit = message.map(|m| sha2::Sha256::digest(&m).into());
    }
    Ok(calls)
}

/// Runs the database thread until every sender is gone.
pub(crate) fn run(mut conn: Connection, checkpoints: Checkpointer, ops: mpsc::Receiver<Op>) {
    for op in ops {
        match op {
            Op::Publish {
                identity,
                packages,
                last_resort,
                reply,
            } => {
                let _ = reply.send(publish(&mut conn, &identity, &packages, last_resort));
            }
            Op::Fetch { identity, reply } => {
                let _ = reply.send(fetch(&mut conn, &identity));
            }
            Op::CreateCall {
                call,
                route,
                member,
            } => log(
                create_call(&mut conn, &call, route, &member),
                "storing a call",
            ),
            Op::Commit { record, reply } => {
                let _ = reply.send(commit(&mut conn, &record));
            }
            Op::RemoveMember { call, identity } => log(
                conn.execute(
                    "DELETE FROM members WHERE call = ?1 AND identity = ?2",
                    params![&call.0[..], &identity[..]],
                )
                .map(drop)
                .map_err(RelayError::from),
                "removing a member",
            ),
            Op::EndCall { call } => log(end_call(&mut conn, &call), "ending a call"),
            Op::Held { identity, messages } => {
                log(
                    hold(&mut conn, &identity, &messages),
                    "storing held messages",
                );
            }
            Op::Gone { call, identity } => log(
                conn.execute(
                    "INSERT OR IGNORE INTO gone (call, identity) VALUES (?1, ?2)",
                    params![&call.0[..], &identity[..]],
                )
                .map(drop)
                .map_err(RelayError::from),
                "recording a member gone",
            ),
            Op::Back { call, identity } => log(
                conn.execute(
                    "DELETE FROM gone WHERE call = ?1 AND identity = ?2",
                    params![&call.0[..], &identity[..]],
                )
                .map(drop)
                .map_err(RelayError::from),
                "recording a member back",
            ),
            Op::DeviceStatus { key, reply } => {
                let _ = reply.send(accounts::device_status(&conn, &key));
            }
            Op::User { name, reply } => {
                let _ = reply.send(accounts::user(&conn, &name));
            }
            Op::Register {
                user,
                key,
                step,
                audit,
                reply,
            } => {
                let result = accounts::register_device(&mut conn, &user, &key, step, &audit)
                    .and_then(|(outcome, appended)| {
                        if let Some((seq, hash)) = appended {
                            checkpoints.write(seq, &hash)?;
                        }
                        Ok(outcome)
                    });
                let _ = reply.send(result);
            }
            Op::Roles { keys, reply } => {
                let result = keys
                    .into_iter()
                    .map(|k| {
                        let role = match accounts::device_status(&conn, &k)? {
                            DeviceStatus::Registered { user, role } => Some((user, role)),
                            _ => None,
                        };
                        Ok((k, role))
                    })
                    .collect();
                let _ = reply.send(result);
            }
            Op::Rechecks { after, reply } => {
                let _ = reply.send(accounts::rechecks(&conn, after));
            }
            Op::Rekeys { after, reply } => {
                let _ = reply.send(accounts::rekeys(&conn, after));
            }
            Op::Rehash { user, old, new } => log(
                rehash(&mut conn, &checkpoints, &user, &old, &new),
                "renewing a password hash",
            ),
            Op::Audit { event } => log(
                audit::record(&mut conn, &checkpoints, &event).map(drop),
                "recording an audit event",
            ),
        }
    }
}

fn log(result: Result<(), RelayError>, what: &str) {
    if let Err(e) = result {
        tracing::error!(error = %e, "database: {what} failed");
    }
}

fn publish(
    conn: &mut Connection,
    identity: &DeviceKey,
    packages: &[Vec<u8>],
    last_resort: Option<Vec<u8>>,
) -> Result<(), RelayError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM key_packages WHERE identity = ?1",
        [&identity[..]],
    )?;
    tx.execute(
        "DELETE FROM last_resort WHERE identity = ?1",
        [&identity[..]],
    )?;
    for p in packages {
        tx.execute(
            "INSERT INTO key_packages (identity, package) VALUES (?1, ?2)",
            params![&identity[..], p],
        )?;
    }
    if let Some(p) = last_resort {
        tx.execute(
            "INSERT INTO last_resort (identity, package) VALUES (?1, ?2)",
            params![&identity[..], p],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn fetch(conn: &mut Connection, identity: &DeviceKey) -> Result<Option<Vec<u8>>, RelayError> {
    let tx = conn.transaction()?;
    let one: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT id, package FROM key_packages WHERE identity = ?1 ORDER BY id LIMIT 1",
            [&identity[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let package = match one {
        Some((id, package)) => {
            tx.execute("DELETE FROM key_packages WHERE id = ?1", [id])?;
            Some(package)
        }
        None => tx
            .query_row(
                "SELECT package FROM last_resort WHERE identity = ?1",
                [&identity[..]],
                |r| r.get(0),
            )
            .optional()?,
    };
    tx.commit()?;
    Ok(package)
}

fn create_call(
    conn: &mut Connection,
    call: &CallRef,
    route: u32,
    member: &DeviceKey,
) -> Result<(), RelayError> {
    let tx = conn.transaction()?;
    // Leftovers of an earlier call with the same id (ended while a write failed) go first.
    tx.execute("DELETE FROM commits WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM members WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM gone WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM calls WHERE call = ?1", [&call.0[..]])?;
    tx.execute(
        "INSERT INTO calls (call, route, epoch) VALUES (?1, ?2, 0)",
        params![&call.0[..], route],
    )?;
    tx.execute(
        "INSERT INTO members (call, identity, join_epoch) VALUES (?1, ?2, 0)",
        params![&call.0[..], &member[..]],
    )?;
    tx.commit()?;
    Ok(())
}

fn commit(conn: &mut Connection, record: &CommitRecord) -> Result<(), RelayError> {
    let next = record
        .epoch
        .checked_add(1)
        .ok_or_else(|| RelayError::Corrupt("epoch overflow".into()))?;
    let call = &record.call.0[..];
    let tx = conn.transaction()?;
    // The epoch moves only from the one the commit was made in: a second commit for an
    // epoch can never be stored, whatever the caller's state says.
    let moved = tx.execute(
        "UPDATE calls SET epoch = ?1 WHERE call = ?2 AND epoch = ?3",
        params![next, call, record.epoch],
    )?;
    if moved != 1 {
        return Err(RelayError::Corrupt(
            "the call is not at the commit's epoch".into(),
        ));
    }
    tx.execute(
        "INSERT INTO commits (call, epoch, message) VALUES (?1, ?2, ?3)",
        params![call, record.epoch, &record.message],
    )?;
    for r in &record.removed {
        tx.execute(
            "DELETE FROM members WHERE call = ?1 AND identity = ?2",
            params![call, &r[..]],
        )?;
    }
    for a in &record.added {
        tx.execute(
            "INSERT OR REPLACE INTO members (call, identity, join_epoch) VALUES (?1, ?2, ?3)",
            params![call, &a[..], next],
        )?;
        tx.execute(
            "DELETE FROM gone WHERE call = ?1 AND identity = ?2",
            params![call, &a[..]],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn rehash(
    conn: &mut Connection,
    checkpoints: &Checkpointer,
    user: &str,
    old: &str,
    new: &str,
) -> Result<(), RelayError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let changed = tx.execute(
        "UPDATE users SET hash = ?1 WHERE name = ?2 AND hash = ?3",
        params![new, user, old],
    )?;
    if changed == 0 {
        // The password was changed meanwhile: that hash stands.
        return Ok(());
    }
    let event = AuditEvent::new("password_rehash", user, user, "relay");
    let (seq, hash) = audit::append(&tx, &event)?;
    tx.commit()?;
    checkpoints.write(seq, &hash)?;
    Ok(())
}

fn hold(
    conn: &mut Connection,
    identity: &DeviceKey,
    messages: &[Vec<u8>],
) -> Result<(), RelayError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM held WHERE identity = ?1", [&identity[..]])?;
    for (seq, message) in messages.iter().enumerate() {
        tx.execute(
            "INSERT INTO held (identity, seq, message) VALUES (?1, ?2, ?3)",
            params![&identity[..], seq as i64, message],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The control messages held for devices that were not connected when the relay stopped,
/// each identity's in order. A message that no longer decodes is left out (and logged): the
/// device learns of what it missed from `CallStatus` (protocol-relay.md §4.7).
fn load_held(
    conn: &Connection,
) -> Result<HashMap<DeviceKey, Vec<viska_proto::relay::RelayMessage>>, RelayError> {
    let mut held: HashMap<DeviceKey, Vec<_>> = HashMap::new();
    let mut stmt = conn.prepare("SELECT identity, message FROM held ORDER BY identity, seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    for row in rows {
        let (identity, frame) = row?;
        let identity = device_key(identity)?;
        match frame.get(4..).map(viska_proto::relay::RelayMessage::decode) {
            Some(Ok(message)) => held.entry(identity).or_default().push(message),
            _ => tracing::warn!("a held message that does not decode was dropped"),
        }
    }
    Ok(held)
}

fn end_call(conn: &mut Connection, call: &CallRef) -> Result<(), RelayError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM commits WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM members WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM gone WHERE call = ?1", [&call.0[..]])?;
    tx.execute("DELETE FROM calls WHERE call = ?1", [&call.0[..]])?;
    tx.commit()?;
    Ok(())
}

//! The audit log: an append-only, hash-chained table of security events in the relay's
//! database, and signed checkpoints of it in a file beside the database
//! (`docs/operations.md`, "Audit log").
//!
//! Row `n` stores `hash_n = SHA-256("viska audit v1" || u64 seq || i64 time_ms || str kind ||
//! str actor || str subject || str source || str details || prev_hash)`, where every `str` is a
//! `u32` big-endian length and UTF-8 bytes, and `prev_hash` is `hash_{n-1}` (32 zero bytes for
//! row 1). Changing, deleting, inserting or reordering a row breaks the chain at that row.
//!
//! After every append the writer adds a line to [`CHECKPOINT_FILE`]:
//! `v1 <seq> <hash hex> <time_ms> <signature hex>`, the Ed25519 signature by the relay's audit
//! key ([`AUDIT_KEY_FILE`]) over `"viska audit checkpoint v1" || u64 seq || hash`. Rows
//! removed from the end (truncation), or a chain rewritten whole, no longer match the
//! checkpoints, which the database cannot change.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};

use crate::RelayError;

/// File of the signed checkpoints, in the data directory.
pub const CHECKPOINT_FILE: &str = "audit-checkpoints";
/// File of the audit signing key (the 32-byte Ed25519 secret), readable by the owner only.
pub const AUDIT_KEY_FILE: &str = "audit-key";

const ROW_LABEL: &[u8] = b"viska audit v1";
const CHECKPOINT_LABEL: &[u8] = b"viska audit checkpoint v1";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    source TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
";

/// One security event to record. Never content or secret keys: names, public device keys,
/// call ids, addresses, and reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened (`login`, `login_failed`, `lockout`, `user_add`, `device_revoke`,
    /// `call_join`, …; the list is in `docs/operations.md`).
    pub kind: String,
    /// Who did it: an account name, `device:<key hex>` for a device without an account, or
    /// `cli:<user>` for the command line.
    pub actor: String,
    /// What it was done to: an account, a device key, a call id (hex).
    pub subject: String,
    /// Where from: the device's address, or `local` for the command line.
    pub source: String,
    /// More, as a JSON object.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// An event with empty details.
    pub fn new(
        kind: &str,
        actor: impl Into<String>,
        subject: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            actor: actor.into(),
            subject: subject.into(),
            source: source.into(),
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// The event with `details`.
    pub fn with(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A row of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// See [`AuditEvent::kind`].
    pub kind: String,
    /// See [`AuditEvent::actor`].
    pub actor: String,
    /// See [`AuditEvent::subject`].
    pub subject: String,
    /// See [`AuditEvent::source`].
    pub source: String,
    /// See [`AuditEvent::details`] (JSON text as stored; exported as the JSON value).
    #[serde(serialize_with = "as_json")]
    pub details: String,
    /// Hash of the row before (hex).
    #[serde(serialize_with = "as_hex")]
    pub prev_hash: Vec<u8>,
    /// Hash of this row (hex).
    #[serde(serialize_with = "as_hex")]
    pub hash: Vec<u8>,
}

fn as_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => serde::Serialize::serialize(&value, s),
        // Not JSON (a damaged row): exported as the text it is.
        Err(_) => s.serialize_str(text),
    }
}

fn as_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn row_hash(row: &AuditRow) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ROW_LABEL);
    h.update(row.seq.to_be_bytes());
    h.update(row.time_ms.to_be_bytes());
    for s in [
        &row.kind,
        &row.actor,
        &row.subject,
        &row.source,
        &row.details,
    ] {
        h.update((s.len() as u32).to_be_bytes());
        h.update(s.as_bytes());
    }
    h.update(&row.prev_hash);
    h.finalize().into()
}

fn checkpoint_message(seq: u64, hash: &[u8]) -> Vec<u8> {
    let mut m = CHECKPOINT_LABEL.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Appends `event` inside the caller's transaction (which should be `IMMEDIATE`, so no other
/// writer appends between the read of the last row and the insert). Returns the new row's
/// sequence number and hash, to checkpoint once the transaction committed.
pub(crate) fn append(conn: &Connection, event: &AuditEvent) -> Result<(u64, [u8; 32]), RelayError> {
    let last: Option<(u64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, vec![0u8; 32]),
    };
    let mut row = AuditRow {
        seq,
        time_ms: now_ms(),
        kind: event.kind.clone(),
        actor: event.actor.clone(),
        subject: event.subject.clone(),
        source: event.source.clone(),
        details: event.details.to_string(),
        prev_hash,
        hash: Vec::new(),
    };
    let hash = row_hash(&row);
    row.hash = hash.to_vec();
    conn.execute(
        "INSERT INTO audit (seq, time_ms, kind, actor, subject, source, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            row.seq,
            row.time_ms,
            row.kind,
            row.actor,
            row.subject,
            row.source,
            row.details,
            row.prev_hash,
            row.hash
        ],
    )?;
    Ok((seq, hash))
}

/// Writes signed checkpoints of the chain to [`CHECKPOINT_FILE`].
pub(crate) struct Checkpointer {
    path: PathBuf,
    key: IdentityKeyPair,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Loads the audit key from `dir`, or generates and stores one.
pub(crate) fn load_or_generate_key(dir: &Path) -> Result<IdentityKeyPair, RelayError> {
    let path = dir.join(AUDIT_KEY_FILE);
    if path.exists() {
        let bytes = zeroize::Zeroizing::new(fs::read(&path)?);
        return IdentityKeyPair::from_secret_bytes(&bytes)
            .map_err(|e| RelayError::Corrupt(format!("audit key: {e}")));
    }
    let key = IdentityKeyPair::generate(&mut rand::rng());
    let secret = key.to_secret_bytes();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(secret.expose_secret())?;
    file.sync_all()?;
    Ok(key)
}

impl Checkpointer {
    pub(crate) fn open(dir: &Path) -> Result<Self, RelayError> {
        Ok(Self {
            path: dir.join(CHECKPOINT_FILE),
            key: load_or_generate_key(dir)?,
        })
    }

    /// The public half of the audit key.
    pub(crate) fn public(&self) -> PublicIdentity {
        self.key.public()
    }

    /// Appends a signed checkpoint of row `seq` with `hash` (one write of one line, so lines of
    /// two writers never interleave).
    pub(crate) fn write(&self, seq: u64, hash: &[u8; 32]) -> Result<(), RelayError> {
        let signature = self.key.sign(&checkpoint_message(seq, hash));
        let line = format!("v1 {seq} {} {} {}\n", hex(hash), now_ms(), hex(&signature));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        Ok(())
    }
}

/// Appends `event` in its own immediate transaction, then checkpoints it.
pub(crate) fn record(
    conn: &mut Connection,
    checkpoints: &Checkpointer,
    event: &AuditEvent,
) -> Result<u64, RelayError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (seq, hash) = append(&tx, event)?;
    tx.commit()?;
    checkpoints.write(seq, &hash)?;
    Ok(seq)
}

/// What `audit verify` found wrong, naming the first bad row.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditProblem {
    /// Row `seq`'s contents do not give its stored hash: it was changed.
    #[error("row {seq}: its contents do not match its hash (changed)")]
    Changed {
        /// The row.
        seq: u64,
    },
    /// Row `seq` does not follow the row before it (its `prev_hash` or its position is
    /// wrong): a row before it was deleted, or it was inserted or moved.
    #[error("row {seq}: does not follow row {prev} (a row was deleted, inserted or moved)")]
    Unchained {
        /// The row.
        seq: u64,
        /// The row before it in the table.
        prev: u64,
    },
    /// Row `expected` is missing: the next row in the table is `found` (or none).
    #[error("row {expected}: missing (a row was deleted)")]
    Missing {
        /// The sequence number that should come next.
        expected: u64,
        /// The one that does.
        found: Option<u64>,
    },
    /// A checkpoint names row `seq` with another hash: the chain was rewritten from there.
    #[error("row {seq}: differs from its signed checkpoint (the chain was rewritten)")]
    CheckpointMismatch {
        /// The row.
        seq: u64,
    },
    /// A checkpoint names row `seq`, past the end of the log at `last`: rows were removed from
    /// the end.
    #[error(
        "row {seq}: in a signed checkpoint but not in the log, which ends at row {last} (truncated)"
    )]
    Truncated {
        /// The checkpointed row.
        seq: u64,
        /// The last row in the log (0: empty).
        last: u64,
    },
    /// Row `seq` and those after it are in no signed checkpoint: appended by something
    /// without the audit key (or the writer stopped between the row and its checkpoint).
    #[error("row {seq}: after the last signed checkpoint (row {checkpointed}): not signed")]
    Unsigned {
        /// The first row not covered.
        seq: u64,
        /// The last checkpointed row.
        checkpointed: u64,
    },
    /// Line `line` of the checkpoint file is malformed or its signature does not verify.
    #[error("checkpoint file line {line}: malformed or not signed by the audit key")]
    BadCheckpoint {
        /// 1-based line number.
        line: usize,
    },
}

/// The result of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditReport {
    /// Rows in the log.
    pub rows: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last row covered by a checkpoint (0: none).
    pub last_checkpoint: u64,
}

fn load_rows(conn: &Connection) -> Result<Vec<AuditRow>, RelayError> {
    let mut stmt = conn.prepare(
        "SELECT seq, time_ms, kind, actor, subject, source, details, prev_hash, hash
         FROM audit ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AuditRow {
            seq: r.get(0)?,
            time_ms: r.get(1)?,
            kind: r.get(2)?,
            actor: r.get(3)?,
            subject: r.get(4)?,
            source: r.get(5)?,
            details: r.get(6)?,
            prev_hash: r.get(7)?,
            hash: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Checks the chain of the log in `conn` and the checkpoints in `checkpoint_file` signed by
/// `key`. `Ok(Err(problem))` names the first bad row.
pub(crate) fn verify(
    conn: &Connection,
    checkpoint_file: &Path,
    key: &PublicIdentity,
) -> Result<Result<AuditReport, AuditProblem>, RelayError> {
    let rows = load_rows(conn)?;
    let mut prev_hash = vec![0u8; 32];
    let mut prev_seq = 0u64;
    for row in &rows {
        if row.seq != prev_seq + 1 {
            if row.seq > prev_seq + 1 && row.prev_hash != prev_hash {
                return Ok(Err(AuditProblem::Missing {
                    expected: prev_seq + 1,
                    found: Some(row.seq),
                }));
            }
            return Ok(Err(AuditProblem::Unchained {
                seq: row.seq,
                prev: prev_seq,
            }));
        }
        if row_hash(row)[..] != row.hash[..] {
            return Ok(Err(AuditProblem::Changed { seq: row.seq }));
        }
        if row.prev_hash != prev_hash {
            return Ok(Err(AuditProblem::Unchained {
                seq: row.seq,
                prev: prev_seq,
            }));
        }
        prev_hash.clone_from(&row.hash);
        prev_seq = row.seq;
    }
    let last = prev_seq;
    let text = match fs::read_to_string(checkpoint_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut checkpoints = 0u64;
    let mut last_checkpoint = 0u64;
    let mut problem: Option<AuditProblem> = None;
    for (i, line) in text.lines().enumerate() {
        let Some((seq, hash)) = parse_checkpoint(line, key) else {
            return Ok(Err(AuditProblem::BadCheckpoint { line: i + 1 }));
        };
        checkpoints += 1;
        last_checkpoint = last_checkpoint.max(seq);
        // The first bad row: the smallest checkpointed seq that does not match.
        let found = match usize::try_from(seq)
            .ok()
            .and_then(|s| rows.get(s.checked_sub(1)?))
        {
            Some(row) if row.hash[..] == hash[..] => None,
            Some(_) => Some(AuditProblem::CheckpointMismatch { seq }),
            None => Some(AuditProblem::Truncated { seq, last }),
        };
        if let Some(p) = found {
            let earlier = |p: &AuditProblem| match p {
                AuditProblem::CheckpointMismatch { seq } | AuditProblem::Truncated { seq, .. } => {
                    *seq
                }
                _ => u64::MAX,
            };
            if problem.as_ref().is_none_or(|q| earlier(&p) < earlier(q)) {
                problem = Some(p);
            }
        }
    }
    if let Some(p) = problem {
        return Ok(Err(p));
    }
    if last > last_checkpoint {
        return Ok(Err(AuditProblem::Unsigned {
            seq: last_checkpoint + 1,
            checkpointed: last_checkpoint,
        }));
    }
    Ok(Ok(AuditReport {
        rows: last,
        checkpoints,
        last_checkpoint,
    }))
}

fn parse_checkpoint(line: &str, key: &PublicIdentity) -> Option<(u64, Vec<u8>)> {
    let mut parts = line.split(' ');
    if parts.next()? != "v1" {
        return None;
    }
    let seq: u64 = parts.next()?.parse().ok()?;
    let hash = unhex(parts.next()?)?;
    let _time: i64 = parts.next()?.parse().ok()?;
    let signature = unhex(parts.next()?)?;
    if parts.next().is_some() || hash.len() != 32 {
        return None;
    }
    key.verify(&checkpoint_message(seq, &hash), &signature)
        .ok()?;
    Some((seq, hash))
}

/// Writes every row as one JSON object per line.
pub(crate) fn export(conn: &Connection, out: &mut dyn Write) -> Result<u64, RelayError> {
    let rows = load_rows(conn)?;
    for row in &rows {
        let line = serde_json::to_string(row).map_err(|e| RelayError::Corrupt(e.to_string()))?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_hash_covers_every_field() {
        let row = AuditRow {
            seq: 1,
            time_ms: 2,
            kind: "k".into(),
            actor: "a".into(),
            subject: "s".into(),
            source: "o".into(),
            details: "{}".into(),
            prev_hash: vec![0; 32],
            hash: vec![],
        };
        let h = row_hash(&row);
        let variants = [
            AuditRow {
                seq: 9,
                ..row.clone()
            },
            AuditRow {
                time_ms: 9,
                ..row.clone()
            },
            AuditRow {
                kind: "x".into(),
                ..row.clone()
            },
            AuditRow {
                actor: "x".into(),
                ..row.clone()
            },
            AuditRow {
                subject: "x".into(),
                ..row.clone()
            },
            AuditRow {
                source: "x".into(),
                ..row.clone()
            },
            AuditRow {
                details: "{\"a\":1}".into(),
                ..row.clone()
            },
            AuditRow {
                prev_hash: vec![1; 32],
                ..row.clone()
            },
            // Lengths are framed: moving a byte between fields changes the hash.
            AuditRow {
                kind: "ka".into(),
                actor: String::new(),
                ..row.clone()
            },
        ];
        for v in variants {
            assert_ne!(row_hash(&v), h, "{v:?}");
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}

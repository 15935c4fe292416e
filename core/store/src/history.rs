//! Call history: metadata only (who, when, how it ended), never content or keys.

use rusqlite::params;
use viska_call::Trust;
use viska_e2ee::identity::PublicIdentity;

use crate::store::now_ms;
use crate::{Store, StoreError};

/// Which way a call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallDirection {
    /// This device placed it.
    Outgoing,
    /// This device received it.
    Incoming,
}

impl CallDirection {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outgoing => "outgoing",
            Self::Incoming => "incoming",
        }
    }
}

/// One call in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// The row's id, in the order calls started.
    pub id: i64,
    /// The call's id on the wire, if known.
    pub call_id: Option<Vec<u8>>,
    /// Which way it went.
    pub direction: CallDirection,
    /// The contact's handle, if the application gave one.
    pub handle: Option<String>,
    /// The identity the peer proved, once keys were ready.
    pub peer: Option<PublicIdentity>,
    /// How far the peer was trusted when the call ended.
    pub trust: Option<Trust>,
    /// When it started (Unix milliseconds).
    pub started_ms: i64,
    /// When it was answered.
    pub answered_ms: Option<i64>,
    /// When it ended.
    pub ended_ms: Option<i64>,
    /// Why it ended, as the phone names the reason.
    pub end_reason: Option<String>,
}

fn trust_name(trust: Trust) -> &'static str {
    match trust {
        Trust::Verified => "verified",
        Trust::KeyChanged => "key-changed",
        _ => "unverified",
    }
}

fn trust_from(name: &str) -> Option<Trust> {
    match name {
        "verified" => Some(Trust::Verified),
        "key-changed" => Some(Trust::KeyChanged),
        "unverified" => Some(Trust::Unverified),
        _ => None,
    }
}

impl Store {
    /// Records a call that starts now; returns its history id.
    pub fn call_started(
        &self,
        direction: CallDirection,
        handle: Option<&str>,
        call_id: Option<&[u8]>,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO calls (call_id, direction, handle, started_ms) VALUES (?1, ?2, ?3, ?4)",
            params![call_id, direction.as_str(), handle, now_ms()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records that call `id` learned its wire id and its peer's identity and trust.
    pub fn call_keys(
        &self,
        id: i64,
        call_id: &[u8],
        peer: &PublicIdentity,
        trust: Trust,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE calls SET call_id = ?2, peer = ?3, trust = ?4 WHERE id = ?1",
            params![id, call_id, &peer.to_bytes()[..], trust_name(trust)],
        )?;
        Ok(())
    }

    /// Records a change of trust during call `id` (the user verified the peer).
    pub fn call_trust(&self, id: i64, trust: Trust) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE calls SET trust = ?2 WHERE id = ?1",
            params![id, trust_name(trust)],
        )?;
        Ok(())
    }

    /// Records that call `id` was answered now.
    pub fn call_answered(&self, id: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE calls SET answered_ms = ?2 WHERE id = ?1 AND answered_ms IS NULL",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Records that call `id` ended now, and why.
    pub fn call_ended(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE calls SET ended_ms = ?2, end_reason = ?3 WHERE id = ?1 AND ended_ms IS NULL",
            params![id, now_ms(), reason],
        )?;
        Ok(())
    }

    /// The latest `limit` calls, newest first.
    pub fn call_history(&self, limit: usize) -> Result<Vec<CallRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, call_id, direction, handle, peer, trust, started_ms, answered_ms,
                    ended_ms, end_reason
             FROM calls ORDER BY id DESC LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let r = row?;
            let corrupt = || StoreError::Corrupt {
                what: "call history",
            };
            out.push(CallRecord {
                id: r.0,
                call_id: r.1,
                direction: match r.2.as_str() {
                    "outgoing" => CallDirection::Outgoing,
                    "incoming" => CallDirection::Incoming,
                    _ => return Err(corrupt()),
                },
                handle: r.3,
                peer: match r.4 {
                    Some(b) => Some(PublicIdentity::from_bytes(&b).map_err(|_| corrupt())?),
                    None => None,
                },
                trust: r.5.as_deref().and_then(trust_from),
                started_ms: r.6,
                answered_ms: r.7,
                ended_ms: r.8,
                end_reason: r.9,
            });
        }
        Ok(out)
    }
}

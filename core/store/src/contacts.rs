//! Contacts and trust: trust on first use, verification, changed keys.
//!
//! A contact is a handle (the application's name for a peer: an account, an extension, a
//! number) pinned to the identity first seen under it. Until the user verifies it (compares the
//! SAS or the group code) it is unverified; when a different identity shows up under the same
//! handle the contact is marked key-changed, and every later call with that identity shows
//! [`Trust::KeyChanged`] until the user verifies the new identity, which then replaces the pin.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{OptionalExtension as _, Row, params};
use viska_call::{PeerDirectory, Standing};
use viska_e2ee::identity::PublicIdentity;

use crate::contact::{Contact, default_handle};
use crate::store::now_ms;
use crate::{Store, StoreError};

fn identity(bytes: Vec<u8>) -> Result<PublicIdentity, StoreError> {
    PublicIdentity::from_bytes(&bytes).map_err(|_| StoreError::Corrupt {
        what: "contact key",
    })
}

const COLUMNS: &str = "handle, pinned, verified, presented, first_seen_ms, verified_ms, changed_ms";

type RawContact = (
    String,
    Vec<u8>,
    bool,
    Option<Vec<u8>>,
    i64,
    Option<i64>,
    Option<i64>,
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawContact> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn contact(raw: RawContact) -> Result<Contact, StoreError> {
    Ok(Contact {
        handle: raw.0,
        pinned: identity(raw.1)?,
        verified: raw.2,
        presented: raw.3.map(identity).transpose()?,
        first_seen_ms: raw.4,
        verified_ms: raw.5,
        changed_ms: raw.6,
    })
}

impl Store {
    /// The contact with `handle`.
    pub fn contact(&self, handle: &str) -> Result<Option<Contact>, StoreError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM contacts WHERE handle = ?1"),
                [handle],
                raw,
            )
            .optional()?;
        raw.map(contact).transpose()
    }

    /// Every contact, by handle.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM contacts ORDER BY handle"))?;
        let rows = stmt.query_map([], raw)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(contact).collect()
    }

    /// Adds or replaces a contact the application knows from elsewhere (a directory, a
    /// provisioning profile): `verified` when that source is one the user trusts.
    pub fn add_contact(
        &self,
        handle: &str,
        identity: &PublicIdentity,
        verified: bool,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO contacts (handle, pinned, verified, presented, first_seen_ms, verified_ms)
             VALUES (?1, ?2, ?3, NULL, ?4, ?5)
             ON CONFLICT (handle) DO UPDATE SET pinned = excluded.pinned,
                 verified = excluded.verified, presented = NULL, verified_ms = excluded.verified_ms,
                 changed_ms = NULL",
            params![
                handle,
                &identity.to_bytes()[..],
                verified,
                now,
                verified.then_some(now)
            ],
        )?;
        Ok(())
    }

    /// Renames a contact.
    pub fn rename_contact(&self, from: &str, to: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE contacts SET handle = ?2 WHERE handle = ?1",
            params![from, to],
        )? == 1)
    }

    /// Forgets a contact (its next call is a first contact again).
    pub fn forget_contact(&self, handle: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM contacts WHERE handle = ?1", [handle])?
            == 1)
    }

    /// Records that `peer` proved its identity in a call, under `handle` when the application
    /// knows whom it called (or whom the relay says is calling), and returns where it stands:
    ///
    /// - a new handle is pinned to `peer` (trust on first use): unverified;
    /// - `peer` is the handle's pinned identity: verified or unverified as the user left it;
    /// - another identity under a known handle: key changed (it is remembered, and every later
    ///   call with it shows key changed until the user verifies it).
    ///
    /// Without a handle (an incoming direct call) the identity is looked up: the pinned identity
    /// of a verified contact is verified, a changed identity awaiting verification is key
    /// changed, anything else unverified (a stranger is not pinned: there is no handle to pin
    /// it under).
    pub fn observe(
        &self,
        handle: Option<&str>,
        peer: &PublicIdentity,
    ) -> Result<Standing, StoreError> {
        let key = peer.to_bytes();
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let standing = match handle {
            Some(handle) => {
                let known = tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM contacts WHERE handle = ?1"),
                        [handle],
                        raw,
                    )
                    .optional()?
                    .map(contact)
                    .transpose()?;
                match known {
                    None => {
                        tx.execute(
                            "INSERT INTO contacts (handle, pinned, verified, first_seen_ms)
                             VALUES (?1, ?2, 0, ?3)",
                            params![handle, &key[..], now],
                        )?;
                        Standing::Unverified
                    }
                    Some(c) if c.pinned == *peer && c.verified => Standing::Verified,
                    Some(c) if c.pinned == *peer => Standing::Unverified,
                    Some(c) => {
                        tx.execute(
                            "UPDATE contacts SET presented = ?2, changed_ms = ?3 WHERE handle = ?1",
                            params![handle, &key[..], now],
                        )?;
                        Standing::KeyChanged { pinned: c.pinned }
                    }
                }
            }
            None => {
                let verified: bool = tx
                    .query_row(
                        "SELECT 1 FROM contacts WHERE pinned = ?1 AND verified = 1 LIMIT 1",
                        [&key[..]],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                let changed: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT pinned FROM contacts WHERE presented = ?1 LIMIT 1",
                        [&key[..]],
                        |r| r.get(0),
                    )
                    .optional()?;
                match (verified, changed) {
                    (true, _) => Standing::Verified,
                    (false, Some(pinned)) => {
                        tx.execute(
                            "UPDATE contacts SET changed_ms = ?2 WHERE presented = ?1",
                            params![&key[..], now],
                        )?;
                        Standing::KeyChanged {
                            pinned: identity(pinned)?,
                        }
                    }
                    (false, None) => Standing::Unverified,
                }
            }
        };
        tx.commit()?;
        Ok(standing)
    }

    /// The user verified `peer` (compared the SAS or the group code). With a handle, the
    /// handle is pinned to `peer`, verified, and a key change is cleared. Without one, every
    /// contact pinned to `peer` or showing it as a changed key is updated so; when there is
    /// none, a contact is made under [`default_handle`].
    pub fn mark_verified(
        &self,
        handle: Option<&str>,
        peer: &PublicIdentity,
    ) -> Result<(), StoreError> {
        let key = peer.to_bytes();
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut changed = match handle {
            Some(h) => tx.execute(
                "UPDATE contacts SET pinned = ?2, verified = 1, presented = NULL,
                     verified_ms = ?3, changed_ms = NULL WHERE handle = ?1",
                params![h, &key[..], now],
            )?,
            None => tx.execute(
                "UPDATE contacts SET pinned = ?1, verified = 1, presented = NULL,
                     verified_ms = ?2, changed_ms = NULL WHERE pinned = ?1 OR presented = ?1",
                params![&key[..], now],
            )?,
        };
        if changed == 0 {
            let h = handle.map_or_else(|| default_handle(peer), str::to_owned);
            changed = tx.execute(
                "INSERT INTO contacts (handle, pinned, verified, first_seen_ms, verified_ms)
                 VALUES (?1, ?2, 1, ?3, ?3)",
                params![h, &key[..], now],
            )?;
        }
        debug_assert!(changed > 0);
        tx.commit()?;
        Ok(())
    }

    /// The [`PeerDirectory`] for one call: with the `handle` the application called (or the
    /// relay vouched for), or `None` for an incoming direct call.
    pub fn directory(&self, handle: Option<&str>) -> ContactDirectory {
        ContactDirectory {
            store: self.clone(),
            handle: handle.map(str::to_owned),
            failures: AtomicU64::new(0),
        }
    }
}

/// A [`Store`]'s contacts as one call's [`PeerDirectory`] (see [`Store::observe`]). When the
/// database fails, the peer is [`Standing::Unverified`] (never verified by accident) and the
/// failure is logged and counted.
#[derive(Debug)]
pub struct ContactDirectory {
    store: Store,
    handle: Option<String>,
    failures: AtomicU64,
}

impl ContactDirectory {
    /// Database failures this directory met (each answered as unverified).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

impl PeerDirectory for ContactDirectory {
    fn standing(&self, peer: &PublicIdentity) -> Standing {
        match self.store.observe(self.handle.as_deref(), peer) {
            Ok(standing) => standing,
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "the contact store failed: the peer is shown unverified");
                Standing::Unverified
            }
        }
    }

    fn verified(&self, peer: &PublicIdentity) {
        if let Err(error) = self.store.mark_verified(self.handle.as_deref(), peer) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "the contact store failed to record a verification");
        }
    }
}

//! Encrypted backups of the identity, contacts and settings (format in `docs/store.md`).
//!
//! ```text
//! magic "VISKABAK" (8) | version 1 (1) | m_kib (u32) | t (u32) | p (u32) | salt (16)
//!     | nonce (24) | XChaCha20-Poly1305 ciphertext of the payload, tag last (16)
//! ```
//! The key is Argon2id(passphrase, salt, m_kib, t, p), 32 bytes; the associated data is every
//! byte before the ciphertext, so no header field can be changed either.
// Without the store, only the fuzz target uses the parser.
#![cfg_attr(not(any(feature = "sqlite", fuzzing)), allow(dead_code))]

use viska_e2ee::identity::{IdentityKeyPair, PublicIdentity};
use viska_passwords::HashParams;

use crate::StoreError;
use crate::contact::Contact;
#[cfg(feature = "sqlite")]
use {
    crate::Store,
    chacha20poly1305::XChaCha20Poly1305,
    chacha20poly1305::aead::{AeadInOut, KeyInit},
    viska_passwords::{check_password, derive_key},
    zeroize::Zeroizing,
};

/// The first bytes of every backup.
pub const BACKUP_MAGIC: &[u8; 8] = b"VISKABAK";
/// The backup format this build writes.
pub const BACKUP_VERSION: u8 = 1;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 8 + 1 + 4 + 4 + 4 + SALT_LEN + NONCE_LEN;
/// Largest Argon2 cost a backup may ask for: 1 GiB, 16 passes, 8 lanes.
const MAX_M_KIB: u32 = 1 << 20;
const MAX_T: u32 = 16;
const MAX_P: u32 = 8;
/// `None` in an optional time field.
const NO_TIME: i64 = i64::MIN;

struct Header {
    params: HashParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_header(bytes: &[u8]) -> Result<Header, StoreError> {
    if bytes.len() < HEADER_LEN + TAG_LEN || &bytes[..8] != BACKUP_MAGIC {
        return Err(StoreError::BadBackup);
    }
    if bytes[8] != BACKUP_VERSION {
        return Err(StoreError::BackupVersion(bytes[8]));
    }
    let params = HashParams {
        m_kib: be32(&bytes[9..13]),
        t: be32(&bytes[13..17]),
        p: be32(&bytes[17..21]),
    };
    // Lanes first: Argon2's memory floor is 8 KiB per lane, computed only for a bounded p.
    if !(1..=MAX_P).contains(&params.p)
        || !(8 * params.p..=MAX_M_KIB).contains(&params.m_kib)
        || !(1..=MAX_T).contains(&params.t)
    {
        return Err(StoreError::BackupParams);
    }
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&bytes[21..21 + SALT_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[21 + SALT_LEN..HEADER_LEN]);
    Ok(Header {
        params,
        salt,
        nonce,
    })
}

/// What a backup holds, decrypted.
struct Payload {
    identity: IdentityKeyPair,
    contacts: Vec<Contact>,
    settings: Vec<(String, String)>,
}

fn put_time(out: &mut Vec<u8>, t: Option<i64>) {
    out.extend_from_slice(&t.unwrap_or(NO_TIME).to_be_bytes());
}

fn encode_payload(p: &Payload) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
    let too_long = || StoreError::Corrupt {
        what: "value too long for a backup",
    };
    let mut out = zeroize::Zeroizing::new(Vec::new());
    out.extend_from_slice(p.identity.to_secret_bytes().expose_secret());
    out.extend_from_slice(
        &u32::try_from(p.contacts.len())
            .map_err(|_| too_long())?
            .to_be_bytes(),
    );
    for c in &p.contacts {
        let handle = c.handle.as_bytes();
        out.extend_from_slice(
            &u16::try_from(handle.len())
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(handle);
        out.extend_from_slice(&c.pinned.to_bytes());
        out.push(u8::from(c.verified) | (u8::from(c.presented.is_some()) << 1));
        if let Some(presented) = &c.presented {
            out.extend_from_slice(&presented.to_bytes());
        }
        put_time(&mut out, Some(c.first_seen_ms));
        put_time(&mut out, c.verified_ms);
        put_time(&mut out, c.changed_ms);
    }
    out.extend_from_slice(
        &u32::try_from(p.settings.len())
            .map_err(|_| too_long())?
            .to_be_bytes(),
    );
    for (k, v) in &p.settings {
        out.extend_from_slice(
            &u16::try_from(k.len())
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(
            &u32::try_from(v.len())
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(v.as_bytes());
    }
    Ok(out)
}

/// Reads the decrypted payload; any malformation (which authentication makes impossible
/// unless the writer was broken) is [`StoreError::BadBackup`].
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::BadBackup);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<usize, StoreError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u32(&mut self) -> Result<usize, StoreError> {
        usize::try_from(be32(self.take(4)?)).map_err(|_| StoreError::BadBackup)
    }
    fn time(&mut self) -> Result<Option<i64>, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        let t = i64::from_be_bytes(a);
        Ok((t != NO_TIME).then_some(t))
    }
    fn text(&mut self, n: usize) -> Result<String, StoreError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| StoreError::BadBackup)
    }
    fn identity(&mut self) -> Result<PublicIdentity, StoreError> {
        PublicIdentity::from_bytes(self.take(32)?).map_err(|_| StoreError::BadBackup)
    }
}

fn decode_payload(bytes: &[u8]) -> Result<Payload, StoreError> {
    let mut r = Reader(bytes);
    let identity =
        IdentityKeyPair::from_secret_bytes(r.take(32)?).map_err(|_| StoreError::BadBackup)?;
    let n = r.u32()?;
    // Each contact takes at least 2 + 32 + 1 + 24 bytes: a count beyond what remains is a lie,
    // and no allocation is made for it.
    let mut contacts = Vec::with_capacity(n.min(r.0.len() / 59));
    for _ in 0..n {
        let len = r.u16()?;
        let handle = r.text(len)?;
        let pinned = r.identity()?;
        let flags = r.take(1)?[0];
        if flags & !0b11 != 0 {
            return Err(StoreError::BadBackup);
        }
        let presented = if flags & 0b10 != 0 {
            Some(r.identity()?)
        } else {
            None
        };
        contacts.push(Contact {
            handle,
            pinned,
            verified: flags & 1 != 0,
            presented,
            first_seen_ms: r.time()?.ok_or(StoreError::BadBackup)?,
            verified_ms: r.time()?,
            changed_ms: r.time()?,
        });
    }
    let n = r.u32()?;
    let mut settings = Vec::with_capacity(n.min(r.0.len() / 6));
    for _ in 0..n {
        let len = r.u16()?;
        let key = r.text(len)?;
        let len = r.u32()?;
        settings.push((key, r.text(len)?));
    }
    if !r.0.is_empty() {
        return Err(StoreError::BadBackup);
    }
    Ok(Payload {
        identity,
        contacts,
        settings,
    })
}

#[cfg(feature = "sqlite")]
fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Parses a backup's header and, as if decrypted, its payload: for the fuzz target (no
/// Argon2 per input).
#[cfg(fuzzing)]
pub fn fuzz_parse(bytes: &[u8]) {
    let _ = parse_header(bytes);
    let _ = decode_payload(bytes);
}

#[cfg(feature = "sqlite")]
impl Store {
    /// An encrypted backup of the identity, contacts and settings (not the MLS state or the
    /// call history: a restored device rejoins its calls). The passphrase must pass the
    /// password policy: at least 12 characters, not a common password, a zxcvbn score of at
    /// least 3. The key is Argon2id with m = 64 MiB, t = 3, p = 1.
    ///
    /// # Errors
    /// [`StoreError::WeakPassphrase`], [`StoreError::Randomness`], database errors.
    pub fn export_backup(&self, passphrase: &str) -> Result<Vec<u8>, StoreError> {
        self.export_backup_with(passphrase, HashParams::KEY)
    }

    /// [`Store::export_backup`] with other Argon2 parameters (tests use the minimum).
    #[doc(hidden)]
    pub fn export_backup_with(
        &self,
        passphrase: &str,
        params: HashParams,
    ) -> Result<Vec<u8>, StoreError> {
        check_password(passphrase, &[])?;
        let payload = Payload {
            identity: self.identity()?,
            contacts: self.contacts()?,
            settings: self.settings()?,
        };
        let mut plain = encode_payload(&payload)?;
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut salt).map_err(|_| StoreError::Randomness)?;
        getrandom::fill(&mut nonce).map_err(|_| StoreError::Randomness)?;
        let key = derive_key(passphrase.as_bytes(), &salt, params)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(BACKUP_MAGIC);
        out.push(BACKUP_VERSION);
        for v in [params.m_kib, params.t, params.p] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let tag = cipher(&key)
            .encrypt_inout_detached((&nonce).into(), &out, plain.as_mut_slice().into())
            .map_err(|_| StoreError::BadBackup)?;
        out.extend_from_slice(&plain);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Restores a backup into this store, which must be fresh (no identity yet): the same
    /// identity, contacts with their trust, and settings.
    ///
    /// # Errors
    /// [`StoreError::NotEmpty`]; [`StoreError::BadBackup`] for a wrong passphrase or a
    /// truncated or changed backup; [`StoreError::BackupVersion`], [`StoreError::BackupParams`].
    pub fn import_backup(&self, backup: &[u8], passphrase: &str) -> Result<(), StoreError> {
        let header = parse_header(backup)?;
        if self.has_identity()? {
            return Err(StoreError::NotEmpty);
        }
        let key = derive_key(passphrase.as_bytes(), &header.salt, header.params)?;
        let (aad, rest) = backup.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| StoreError::BadBackup)?;
        cipher(&key)
            .decrypt_inout_detached(
                (&header.nonce).into(),
                aad,
                plain.as_mut_slice().into(),
                (&tag).into(),
            )
            .map_err(|_| StoreError::BadBackup)?;
        let payload = decode_payload(&plain)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        Store::put_identity(&tx, &payload.identity)?;
        for c in &payload.contacts {
            tx.execute(
                "INSERT INTO contacts (handle, pinned, verified, presented, first_seen_ms,
                     verified_ms, changed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (handle) DO UPDATE SET pinned = excluded.pinned,
                     verified = excluded.verified, presented = excluded.presented,
                     first_seen_ms = excluded.first_seen_ms, verified_ms = excluded.verified_ms,
                     changed_ms = excluded.changed_ms",
                rusqlite::params![
                    c.handle,
                    &c.pinned.to_bytes()[..],
                    c.verified,
                    c.presented.map(|p| p.to_bytes().to_vec()),
                    c.first_seen_ms,
                    c.verified_ms,
                    c.changed_ms
                ],
            )?;
        }
        for (k, v) in &payload.settings {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_round_trips_and_trailing_or_missing_bytes_are_refused() {
        let p = Payload {
            identity: IdentityKeyPair::from_secret_bytes(&[7; 32]).unwrap(),
            contacts: vec![Contact {
                handle: "bob".into(),
                pinned: IdentityKeyPair::from_secret_bytes(&[8; 32])
                    .unwrap()
                    .public(),
                verified: true,
                presented: Some(
                    IdentityKeyPair::from_secret_bytes(&[9; 32])
                        .unwrap()
                        .public(),
                ),
                first_seen_ms: 5,
                verified_ms: None,
                changed_ms: Some(6),
            }],
            settings: vec![("k".into(), "v".into())],
        };
        let bytes = encode_payload(&p).unwrap();
        let back = decode_payload(&bytes).unwrap();
        assert_eq!(back.contacts, p.contacts);
        assert_eq!(back.settings, p.settings);
        assert_eq!(back.identity.public(), p.identity.public());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            decode_payload(&longer),
            Err(StoreError::BadBackup)
        ));
        for cut in 0..bytes.len() {
            assert!(decode_payload(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn headers_out_of_range_are_refused_before_any_key_derivation() {
        let mut b = vec![0u8; HEADER_LEN + TAG_LEN];
        b[..8].copy_from_slice(BACKUP_MAGIC);
        b[8] = 1;
        b[9..13].copy_from_slice(&(MAX_M_KIB + 1).to_be_bytes());
        b[13..17].copy_from_slice(&1u32.to_be_bytes());
        b[17..21].copy_from_slice(&1u32.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(StoreError::BackupParams)));
        // Found by the fuzz target: a lane count whose memory floor overflows.
        b[9..13].copy_from_slice(&64u32.to_be_bytes());
        b[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(StoreError::BackupParams)));
        b[8] = 2;
        assert!(matches!(
            parse_header(&b),
            Err(StoreError::BackupVersion(2))
        ));
        assert!(matches!(parse_header(&b[..20]), Err(StoreError::BadBackup)));
    }
}

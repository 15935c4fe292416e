//! The database key: from a passphrase, or raw from a platform keychain.

use std::fmt;
use std::fmt::Write as _;

use viska_passwords::{HashParams, derive_key};
use zeroize::Zeroizing;

use crate::StoreError;

/// Bytes of SQLCipher's per-database salt, the first bytes of the file.
pub(crate) const SALT_LEN: usize = 16;

/// How a store's database key is had. `Debug` never shows the secret.
pub struct StoreKey(KeySource);

enum KeySource {
    Passphrase(Zeroizing<String>, HashParams),
    Raw(Zeroizing<[u8; 32]>),
}

impl StoreKey {
    /// A key derived from `passphrase` with Argon2id (m = 64 MiB, t = 3, p = 1; the salt is the
    /// database's own SQLCipher salt, the file's first 16 bytes). Opening takes a few hundred
    /// milliseconds on purpose.
    pub fn passphrase(passphrase: impl Into<String>) -> Self {
        Self(KeySource::Passphrase(
            Zeroizing::new(passphrase.into()),
            HashParams::KEY,
        ))
    }

    /// A 32-byte key the platform keeps (the iOS Keychain, Android Keystore, a TPM): used as
    /// SQLCipher's raw key, with no derivation.
    pub fn raw(key: [u8; 32]) -> Self {
        Self(KeySource::Raw(Zeroizing::new(key)))
    }

    /// A passphrase key with Argon2's minimum cost. For tests only: it protects nothing.
    #[doc(hidden)]
    pub fn insecure_test_passphrase(passphrase: &str) -> Self {
        Self(KeySource::Passphrase(
            Zeroizing::new(passphrase.to_owned()),
            HashParams::TEST,
        ))
    }

    /// Whether this key may protect a store: a passphrase must pass the password policy
    /// (`viska_passwords::check_password`); a raw key always may.
    pub(crate) fn check_strength(&self) -> Result<(), StoreError> {
        match &self.0 {
            KeySource::Passphrase(p, _) => Ok(viska_passwords::check_password(p, &[])?),
            KeySource::Raw(_) => Ok(()),
        }
    }

    /// The `PRAGMA key` value for a database with `salt`: `x'<key hex><salt hex>'`, SQLCipher's
    /// raw key with an explicit salt.
    pub(crate) fn pragma_value(
        &self,
        salt: &[u8; SALT_LEN],
    ) -> Result<Zeroizing<String>, StoreError> {
        let key = match &self.0 {
            KeySource::Passphrase(p, params) => derive_key(p.as_bytes(), salt, *params)?,
            KeySource::Raw(k) => k.clone(),
        };
        let mut out = Zeroizing::new(String::with_capacity(3 + 2 * (32 + SALT_LEN) + 1));
        out.push_str("x'");
        for b in key.iter().chain(salt.iter()) {
            let _ = write!(out, "{b:02X}");
        }
        out.push('\'');
        Ok(out)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KeySource::Passphrase(..) => f.write_str("StoreKey::Passphrase(***)"),
            KeySource::Raw(_) => f.write_str("StoreKey::Raw(***)"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_the_pragma_is_key_then_salt() {
        let key = StoreKey::raw([0xab; 32]);
        assert_eq!(format!("{key:?}"), "StoreKey::Raw(***)");
        let p = StoreKey::passphrase("hunter2 hunter2");
        assert!(!format!("{p:?}").contains("hunter"));
        let v = key.pragma_value(&[0x01; SALT_LEN]).unwrap();
        assert_eq!(v.len(), 2 + 96 + 1);
        assert!(v.starts_with("x'ABAB"));
        assert!(v.ends_with("0101'"));
        assert_eq!(&v[2 + 64..2 + 66], "01");
    }
}

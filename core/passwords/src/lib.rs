//! Passwords for Viska: Argon2id hashes of login passwords (PHC strings), keys derived from
//! passphrases (for encrypted stores and backups), and the password policy.
//!
//! ```
//! # fn main() -> Result<(), viska_passwords::PasswordError> {
//! use viska_passwords::{HashParams, hash_password, verify_password};
//! let phc = hash_password("correct horse battery staple", HashParams::TEST)?;
//! assert!(verify_password("correct horse battery staple", &phc)?);
//! assert!(!verify_password("Tr0ub4dor&3", &phc)?);
//! # Ok(())
//! # }
//! ```
//!
//! # Parameters
//!
//! - [`HashParams::LOGIN`] (m = 19 MiB, t = 2, p = 1): the OWASP Password Storage Cheat
//!   Sheet's first Argon2id choice, which costs about 20–40 ms of one core. A relay verifies a
//!   password per login attempt, and attempts are rate limited (lock-out with back-off), so
//!   the cost is bounded per source; an attacker holding a stolen database pays it per guess.
//! - [`HashParams::KEY`] (m = 64 MiB, t = 3, p = 1): for [`derive_key`], which runs once per
//!   unlock of a store or export of a backup, where an offline attacker has the ciphertext and
//!   nothing rate limits the guesses; RFC 9106 §4's second recommendation for memory-constrained
//!   settings (64 MiB, t = 3) with one lane.
//! - [`HashParams::TEST`] (m = 8 KiB, t = 1, p = 1): the minimum Argon2 allows, for tests only.
//!
//! A PHC string carries its parameters, so [`verify_password`] checks hashes made with any of
//! them; [`needs_rehash`] tells when a stored hash is weaker than the current choice.
//!
//! # Policy
//!
//! [`check_password`] refuses a password shorter than [`MIN_LENGTH`] characters, longer than
//! [`MAX_LENGTH`], on the bundled list of common passwords (`data/common-passwords.txt`, see
//! `data/README.md`), or guessable (zxcvbn score below [`MIN_SCORE`], with the account name
//! and other user inputs counted as known to the attacker).

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

/// Fewest characters (Unicode scalar values) a password may have.
pub const MIN_LENGTH: usize = 12;

/// Most characters a password may have (the hash takes any length; the strength estimate and a
/// login's cost should stay bounded).
pub const MAX_LENGTH: usize = 256;

/// Most bytes [`hash_password`] and [`verify_password`] take.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// Lowest zxcvbn score (0–4) a password must reach: 3 is "safely unguessable: moderate
/// protection from an offline slow-hash scenario" (fewer than 10^10 guesses).
pub const MIN_SCORE: u8 = 3;

/// Bytes of the random salt of a new password hash.
pub const SALT_LEN: usize = 16;

/// Argon2id parameters (version 0x13, 32-byte output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl HashParams {
    /// For login passwords: m = 19 MiB, t = 2, p = 1.
    pub const LOGIN: Self = Self {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
    /// For keys derived from passphrases: m = 64 MiB, t = 3, p = 1.
    pub const KEY: Self = Self {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// For tests only: the minimum Argon2 allows (m = 8 KiB, t = 1, p = 1).
    pub const TEST: Self = Self {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>, PasswordError> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map_err(|_| PasswordError::Params)?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

const KEY_LEN: usize = 32;

/// Errors of hashing, verifying and deriving.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordError {
    /// The parameters are outside what Argon2 allows.
    #[error("Argon2 parameters out of range")]
    Params,
    /// The password (or passphrase) is longer than [`MAX_PASSWORD_BYTES`].
    #[error("password longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// The salt of [`derive_key`] is shorter than 8 bytes or longer than 64.
    #[error("salt of {0} bytes (8 to 64 allowed)")]
    Salt(usize),
    /// The stored hash is not an Argon2id PHC string this crate can verify.
    #[error("the stored hash is not an Argon2id PHC string")]
    BadHash,
    /// Argon2 failed for another reason (memory could not be had).
    #[error("Argon2 failed")]
    Argon2,
}

/// Hashes `password` with a fresh random salt: an Argon2id PHC string
/// (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`), safe to store.
pub fn hash_password(password: &str, params: HashParams) -> Result<String, PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    let mut salt = [0u8; SALT_LEN];
    rand::RngExt::fill(&mut rand::rng(), &mut salt);
    let hash = params
        .argon2()?
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|_| PasswordError::Argon2)?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc` (compared in constant time). A wrong
/// password is `Ok(false)`; a hash that is not Argon2id is an error.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    let hash = PasswordHash::new(phc).map_err(|_| PasswordError::BadHash)?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash);
    }
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(_) => Err(PasswordError::BadHash),
    }
}

/// Whether the stored hash `phc` was made with parameters other than `params` (weaker or
/// unreadable): the caller may store a new hash after the next successful login.
pub fn needs_rehash(phc: &str, params: HashParams) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return true;
    };
    let get = |name: &str| hash.params.get_decimal(name);
    hash.algorithm.as_str() != "argon2id"
        || get("m") != Some(params.m_kib)
        || get("t") != Some(params.t)
        || get("p") != Some(params.p)
}

/// A hash of a password nobody knows, made once per process with [`HashParams::LOGIN`]: verify
/// against it when an account does not exist, so a login for an unknown name takes as long as
/// one with a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::RngExt::fill(&mut rand::rng(), &mut secret);
        let secret = Zeroizing::new(hex(&secret));
        // LOGIN parameters are valid and the input is short: hashing cannot fail short of
        // memory exhaustion, and then a fixed valid PHC string of the same cost still serves.
        hash_password(&secret, HashParams::LOGIN).unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
             5Jm8D5F8/gZ0xYp5i3XcmaoTuy6dLpm6HW1aYw7SYC4"
                .to_string()
        })
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 32-byte key derived from `passphrase` and `salt` with Argon2id (`params`, normally
/// [`HashParams::KEY`]), for encrypting a store or a backup. The same inputs give the same
/// key; store the salt (16 random bytes are right) and the parameters beside the ciphertext.
pub fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    params: HashParams,
) -> Result<Zeroizing<[u8; 32]>, PasswordError> {
    if passphrase.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if !(8..=64).contains(&salt.len()) {
        return Err(PasswordError::Salt(salt.len()));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    params
        .argon2()?
        .hash_password_into(passphrase, salt, &mut key[..])
        .map_err(|_| PasswordError::Argon2)?;
    Ok(key)
}

/// Why [`check_password`] refused a password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeakPassword {
    /// Fewer than [`MIN_LENGTH`] characters.
    #[error("shorter than {min} characters")]
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// More than [`MAX_LENGTH`] characters.
    #[error("longer than {max} characters")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// On the list of common (breached) passwords.
    #[error("a common password (on the list of breached passwords)")]
    Common,
    /// Built from the account name or other user inputs given.
    #[error("built from the account name or other details of the user")]
    UserInput,
    /// Guessable: the zxcvbn score is below [`MIN_SCORE`].
    #[error("too easy to guess (strength {score} of 4){}", Hint(.warning))]
    Guessable {
        /// The zxcvbn score, 0 to 4.
        score: u8,
        /// zxcvbn's warning, if it had one (e.g. "This is similar to a commonly used password").
        warning: Option<String>,
    },
}

struct Hint<'a>(&'a Option<String>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(w) => write!(f, ": {w}"),
            None => Ok(()),
        }
    }
}

/// The bundled list of common passwords, lowercased.
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("../data/common-passwords.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Whether `password` (compared lowercased) is on the bundled list of common passwords.
pub fn is_common(password: &str) -> bool {
    let lower = Zeroizing::new(password.to_lowercase());
    common_passwords().contains(lower.as_str())
}

/// Checks `password` against the policy: [`MIN_LENGTH`] to [`MAX_LENGTH`] characters, not on
/// the list of common passwords, not containing one of `user_inputs` (the account name, a
/// display name; compared lowercased, inputs of fewer than 4 characters ignored), and a zxcvbn
/// score of at least [`MIN_SCORE`] with `user_inputs` known to the attacker.
pub fn check_password(password: &str, user_inputs: &[&str]) -> Result<(), WeakPassword> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Err(WeakPassword::TooShort { min: MIN_LENGTH });
    }
    if chars > MAX_LENGTH {
        return Err(WeakPassword::TooLong { max: MAX_LENGTH });
    }
    if is_common(password) {
        return Err(WeakPassword::Common);
    }
    let lower = Zeroizing::new(password.to_lowercase());
    if user_inputs
        .iter()
        .map(|i| i.trim().to_lowercase())
        .any(|i| i.chars().count() >= 4 && lower.contains(&i))
    {
        return Err(WeakPassword::UserInput);
    }
    let entropy = zxcvbn::zxcvbn(password, user_inputs);
    let score = u8::from(entropy.score());
    if score < MIN_SCORE {
        return Err(WeakPassword::Guessable {
            score,
            warning: entropy
                .feedback()
                .and_then(|f| f.warning())
                .map(|w| w.to_string()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password("a long and unusual passphrase", HashParams::TEST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        assert!(verify_password("a long and unusual passphrase", &phc).unwrap());
        assert!(!verify_password("a long and unusual passphrasE", &phc).unwrap());
        assert!(!verify_password("", &phc).unwrap());
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_salt() {
        let a = hash_password("same password here", HashParams::TEST).unwrap();
        let b = hash_password("same password here", HashParams::TEST).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn login_parameters_are_in_the_string() {
        let phc = hash_password("x", HashParams::LOGIN).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!needs_rehash(&phc, HashParams::LOGIN));
        assert!(needs_rehash(&phc, HashParams::KEY));
        assert!(needs_rehash("garbage", HashParams::LOGIN));
    }

    #[test]
    fn a_hash_that_is_not_argon2id_is_an_error_not_a_mismatch() {
        assert_eq!(verify_password("x", "garbage"), Err(PasswordError::BadHash));
        let argon2i = "$argon2i$v=19$m=8,t=1,p=1$c29tZXNhbHQ$ZmFrZWhhc2hmYWtlaGFzaA";
        assert_eq!(verify_password("x", argon2i), Err(PasswordError::BadHash));
        let too_long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        let phc = hash_password("x", HashParams::TEST).unwrap();
        assert_eq!(
            verify_password(&too_long, &phc),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn the_dummy_hash_is_a_login_hash_that_nothing_matches() {
        let dummy = dummy_hash();
        assert!(!needs_rehash(dummy, HashParams::LOGIN));
        assert!(!verify_password("", dummy).unwrap());
        assert_eq!(dummy, dummy_hash(), "made once");
    }

    /// RFC 9106's Argon2id vector needs a secret and associated data, which `derive_key` does
    /// not take; the pinned answer instead comes from the reference C implementation (libargon2,
    /// through argon2-cffi's `hash_secret_raw(type=ID, time_cost=1, memory_cost=8,
    /// parallelism=1, hash_len=32)`), so a change of algorithm, version or parameter mapping
    /// shows.
    #[test]
    fn derived_keys_are_stable_and_depend_on_every_input() {
        let k = derive_key(b"passphrase", b"saltsaltsalt", HashParams::TEST).unwrap();
        let again = derive_key(b"passphrase", b"saltsaltsalt", HashParams::TEST).unwrap();
        assert_eq!(*k, *again);
        assert_eq!(hex(&k[..]), PINNED_TEST_KEY);
        let other_pw = derive_key(b"passphrasf", b"saltsaltsalt", HashParams::TEST).unwrap();
        let other_salt = derive_key(b"passphrase", b"saltsaltsalu", HashParams::TEST).unwrap();
        let other_params = derive_key(
            b"passphrase",
            b"saltsaltsalt",
            HashParams {
                t: 2,
                ..HashParams::TEST
            },
        )
        .unwrap();
        assert_ne!(*k, *other_pw);
        assert_ne!(*k, *other_salt);
        assert_ne!(*k, *other_params);
    }

    const PINNED_TEST_KEY: &str =
        "fbf304ab1a5d016f46579d02b97bf193256a7aae0fcc4fcc57dfccc586f8f081";

    #[test]
    fn derive_key_refuses_bad_salts_and_params() {
        assert_eq!(
            derive_key(b"p", b"short", HashParams::TEST).unwrap_err(),
            PasswordError::Salt(5)
        );
        assert_eq!(
            derive_key(b"p", &[0; 65], HashParams::TEST).unwrap_err(),
            PasswordError::Salt(65)
        );
        let bad = HashParams {
            m_kib: 1,
            t: 1,
            p: 1,
        };
        assert_eq!(
            derive_key(b"p", b"saltsalt", bad).unwrap_err(),
            PasswordError::Params
        );
    }

    #[test]
    fn policy_refuses_each_kind_of_weak_password() {
        assert_eq!(
            check_password("Sh0rt!pw", &[]),
            Err(WeakPassword::TooShort { min: 12 })
        );
        assert_eq!(
            check_password(&"ab".repeat(200), &[]),
            Err(WeakPassword::TooLong { max: 256 })
        );
        // On the list, 12 characters or more: length alone does not let it through.
        assert_eq!(
            check_password("1qaz2wsx3edc", &[]),
            Err(WeakPassword::Common)
        );
        assert_eq!(
            check_password("QazWsxEdcRfv", &[]),
            Err(WeakPassword::Common)
        );
        assert_eq!(
            check_password("margaretha-Xq7!", &["Margaretha"]),
            Err(WeakPassword::UserInput)
        );
        match check_password("aaaaaaaaaaaaaaaa", &[]) {
            Err(WeakPassword::Guessable { score, .. }) => assert!(score < MIN_SCORE),
            other => panic!("{other:?}"),
        }
        match check_password("password1234", &[]) {
            Err(WeakPassword::Guessable { .. } | WeakPassword::Common) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_accepts_strong_passwords() {
        check_password("correct horse battery staple", &[]).unwrap();
        check_password("vN4#qT9!mZ2@rL7x", &["alice"]).unwrap();
        // Characters, not bytes, count toward the length.
        assert_eq!(
            check_password("ååååååå", &[]),
            Err(WeakPassword::TooShort { min: 12 })
        );
    }

    #[test]
    fn the_common_list_is_loaded_and_case_insensitive() {
        assert!(common_passwords().len() > 19_000);
        assert!(is_common("123456"));
        assert!(is_common("PassWord"));
        assert!(!is_common("correct horse battery staple"));
    }

    #[test]
    fn weak_password_messages_name_the_reason() {
        let e = WeakPassword::Guessable {
            score: 1,
            warning: Some("This is a top-10 common password.".into()),
        };
        assert_eq!(
            e.to_string(),
            "too easy to guess (strength 1 of 4): This is a top-10 common password."
        );
    }
}

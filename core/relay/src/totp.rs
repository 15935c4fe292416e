//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1, 30-second
//! steps, 6 digits, the step before and after the current one accepted, and each step at most
//! once per account (the caller stores the last step accepted). IO-free: time comes in as
//! Unix seconds.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (160 bits, RFC 4226 §4's recommendation for HMAC-SHA-1).
pub const SECRET_LEN: usize = 20;

/// A TOTP secret shared with the user's authenticator app. Wiped on drop, never printed.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(***)")
    }
}

impl TotpSecret {
    /// A fresh random secret of [`SECRET_LEN`] bytes.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        rand::RngExt::fill(&mut rand::rng(), &mut bytes[..]);
        Self(bytes)
    }

    /// A secret from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret in base32 (RFC 4648, no padding): what an authenticator app is given.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(base32(&self.0))
    }

    /// The `otpauth://` URI an authenticator app imports (often as a QR code), for `account`
    /// at `issuer`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let secret = self.to_base32();
        Zeroizing::new(format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            percent(issuer),
            percent(account),
            secret.as_str(),
            percent(issuer),
        ))
    }

    /// The code of `step` with `digits` digits (6 for logins; RFC 6238's vectors use 8),
    /// taken as 1 to 9 (HOTP's 31-bit value has no more).
    pub fn code_at_step(&self, step: u64, digits: u32) -> String {
        let digits = digits.clamp(1, 9);
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        let modulus = 10u64.pow(digits);
        format!(
            "{:0width$}",
            u64::from(binary) % modulus,
            width = digits as usize
        )
    }

    /// The 6-digit code at Unix time `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.code_at_step(unix_secs / STEP_SECS, DIGITS)
    }

    /// The step `code` is valid for at `unix_secs` (the current step, the one before or the
    /// one after), if it is after `last_accepted`: the step to store as the new last accepted
    /// one. Codes are compared in constant time.
    pub fn verify(&self, code: &str, unix_secs: u64, last_accepted: Option<u64>) -> Option<u64> {
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = unix_secs / STEP_SECS;
        let mut found = None;
        // Every candidate is computed and compared, matched or not.
        for step in [now.saturating_sub(1), now, now.saturating_add(1)] {
            let expected = self.code_at_step(step, DIGITS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
                && last_accepted.is_none_or(|last| step > last)
                && found.is_none()
            {
                found = Some(step);
            }
        }
        found
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer = 0u32;
    let mut bits = 0u32;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, the SHA-1 rows (8 digits).
    #[test]
    fn rfc_6238_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        for (time, code) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(secret.code_at_step(time / STEP_SECS, 8), code, "T = {time}");
        }
        // Six digits are the last six of those.
        assert_eq!(secret.code_at(59), "287082");
        assert_eq!(secret.code_at(1_234_567_890), "005924");
        // Out-of-range digit counts are clamped, not a panic.
        assert_eq!(secret.code_at_step(1, 40).len(), 9);
        assert_eq!(secret.code_at_step(1, 0).len(), 1);
    }

    /// RFC 4226 Appendix D: HOTP values for counters 0 to 9.
    #[test]
    fn rfc_4226_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(secret.code_at_step(counter as u64, 6), *code);
        }
    }

    #[test]
    fn the_window_is_one_step_each_way_and_each_step_counts_once() {
        let secret = TotpSecret::generate();
        let t = 1_700_000_015;
        let now = t / STEP_SECS;
        assert_eq!(secret.verify(&secret.code_at(t), t, None), Some(now));
        assert_eq!(
            secret.verify(&secret.code_at(t - 30), t, None),
            Some(now - 1)
        );
        assert_eq!(
            secret.verify(&secret.code_at(t + 30), t, None),
            Some(now + 1)
        );
        assert_eq!(secret.verify(&secret.code_at(t - 60), t, None), None);
        assert_eq!(secret.verify(&secret.code_at(t + 60), t, None), None);
        // Accepted once: the same step again, or an earlier one, is refused.
        assert_eq!(secret.verify(&secret.code_at(t), t, Some(now)), None);
        assert_eq!(secret.verify(&secret.code_at(t - 30), t, Some(now)), None);
        assert_eq!(
            secret.verify(&secret.code_at(t + 30), t, Some(now)),
            Some(now + 1)
        );
    }

    #[test]
    fn malformed_codes_are_refused() {
        let secret = TotpSecret::generate();
        let code = secret.code_at(1000);
        assert_eq!(secret.verify(&format!("{code}0"), 1000, None), None);
        assert_eq!(secret.verify(&code[..5], 1000, None), None);
        assert_eq!(secret.verify("12345a", 1000, None), None);
        assert_eq!(secret.verify("", 1000, None), None);
    }

    #[test]
    fn base32_and_the_uri_are_as_authenticator_apps_expect() {
        // RFC 4648 §10.
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foob"), "MZXW6YQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        assert_eq!(
            secret.to_base32().as_str(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        assert_eq!(
            secret.otpauth_uri("Viska relay", "alice@example").as_str(),
            "otpauth://totp/Viska%20relay:alice%40example?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Viska%20relay&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(format!("{secret:?}"), "TotpSecret(***)");
    }
}

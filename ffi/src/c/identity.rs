//! Identities: a device's long-term key pair ([`ViskaIdentity`]) and public keys, which the
//! C API passes as [`VISKA_PUBLIC_KEY_LEN`](super::VISKA_PUBLIC_KEY_LEN) bytes.

use std::ffi::c_char;

use viska::identity::{IdentityKeyPair, PublicIdentity};

use super::error::ViskaError;
use super::util::{Result, borrow, bytes_arg, copy_out, into_c_string, out_arg, run, write};

/// A device identity: an Ed25519 key pair. The secret half is wiped when freed.
pub struct ViskaIdentity {
    pub(crate) key: IdentityKeyPair,
}

/// A fingerprint as 64 lowercase hex digits, without the spaces of its Rust `Display` form.
pub(crate) fn fingerprint_hex(public: &PublicIdentity) -> String {
    use std::fmt::Write;
    public
        .fingerprint()
        .as_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Reads a public key argument of `VISKA_PUBLIC_KEY_LEN` bytes.
///
/// # Safety
///
/// `key` points to `len` readable bytes (or `len` is 0).
pub(crate) unsafe fn public_key_arg(key: *const u8, len: usize) -> Result<PublicIdentity> {
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { bytes_arg(key, len, "public_key") }?;
    if bytes.is_empty() {
        return Err(ViskaError::null("public_key"));
    }
    Ok(PublicIdentity::from_bytes(bytes)?)
}

/// Generates a new identity from the operating system's randomness into `*out` (free it with
/// [`viska_identity_free`]).
///
/// # Safety
///
/// `out` is a valid pointer to write a handle to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_generate(out: *mut *mut ViskaIdentity) -> *mut ViskaError {
    run(|| {
        let out = out_arg(out, "out")?;
        let key = IdentityKeyPair::generate_from_os()
            .map_err(|e| ViskaError::new(super::ViskaErrorCode::Runtime, e))?;
        // SAFETY: `out` is non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaIdentity { key }))) };
        Ok(())
    })
}

/// Restores an identity from the `len` (= `VISKA_SECRET_KEY_LEN`) secret bytes
/// [`viska_identity_secret_bytes`] gave.
///
/// # Safety
///
/// `secret` points to `len` readable bytes; `out` is a valid pointer to write a handle to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_from_secret_bytes(
    secret: *const u8,
    len: usize,
    out: *mut *mut ViskaIdentity,
) -> *mut ViskaError {
    run(|| {
        let out = out_arg(out, "out")?;
        // SAFETY: `len` readable bytes per the caller.
        let bytes = unsafe { bytes_arg(secret, len, "secret") }?;
        let key = IdentityKeyPair::from_secret_bytes(bytes)?;
        // SAFETY: `out` is non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaIdentity { key }))) };
        Ok(())
    })
}

/// Writes the identity's `VISKA_SECRET_KEY_LEN` secret bytes to `out`, for the application to
/// store (protect them as a private key; wipe the buffer after use).
///
/// # Safety
///
/// `identity` is a live identity; `out` points to `VISKA_SECRET_KEY_LEN` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_secret_bytes(
    identity: *const ViskaIdentity,
    out: *mut u8,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let identity = unsafe { borrow(identity, "identity") }?;
        let out = out_arg(out, "out")?;
        let secret = identity.key.to_secret_bytes();
        // SAFETY: `out` holds VISKA_SECRET_KEY_LEN bytes per the caller.
        unsafe { copy_out(secret.expose_secret(), out) };
        Ok(())
    })
}

/// Writes the identity's `VISKA_PUBLIC_KEY_LEN`-byte public key to `out`.
///
/// # Safety
///
/// `identity` is a live identity; `out` points to `VISKA_PUBLIC_KEY_LEN` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_public_key(
    identity: *const ViskaIdentity,
    out: *mut u8,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let identity = unsafe { borrow(identity, "identity") }?;
        let out = out_arg(out, "out")?;
        // SAFETY: `out` holds VISKA_PUBLIC_KEY_LEN bytes per the caller.
        unsafe { copy_out(&identity.key.public().to_bytes(), out) };
        Ok(())
    })
}

/// The identity's fingerprint as 64 lowercase hex digits, into `*out` (free it with
/// `viska_string_free`).
///
/// # Safety
///
/// `identity` is a live identity; `out` is a valid pointer to write a string to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_fingerprint_hex(
    identity: *const ViskaIdentity,
    out: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let identity = unsafe { borrow(identity, "identity") }?;
        let out = out_arg(out, "out")?;
        let hex = fingerprint_hex(&identity.key.public());
        // SAFETY: `out` is non-NULL and writable per the caller.
        unsafe { write(out, into_c_string(hex)) };
        Ok(())
    })
}

/// The fingerprint of the public key of `len` (= `VISKA_PUBLIC_KEY_LEN`) bytes at `key`, as
/// 64 lowercase hex digits into `*out` (free it with `viska_string_free`). Refuses bytes that
/// are not a valid Ed25519 public key.
///
/// # Safety
///
/// `key` points to `len` readable bytes; `out` is a valid pointer to write a string to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_public_key_fingerprint_hex(
    key: *const u8,
    len: usize,
    out: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        let out = out_arg(out, "out")?;
        // SAFETY: `len` readable bytes per the caller.
        let public = unsafe { public_key_arg(key, len) }?;
        // SAFETY: `out` is non-NULL and writable per the caller.
        unsafe { write(out, into_c_string(fingerprint_hex(&public))) };
        Ok(())
    })
}

/// Frees an identity (its secret is wiped). NULL is fine.
///
/// # Safety
///
/// `identity` is NULL or an identity from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_identity_free(identity: *mut ViskaIdentity) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(identity) }
}

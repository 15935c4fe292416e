//! The device key store ([`ViskaStore`]): an encrypted database of the identity, contacts and
//! their trust, settings and call history, and its encrypted backups (`docs/store.md`).

use std::ffi::c_char;

use viska::store::{Store, StoreKey};
use zeroize::Zeroize;

use super::call::ViskaTrust;
use super::error::ViskaError;
use super::identity::{ViskaIdentity, public_key_arg};
use super::util::{Result, borrow, bytes_arg, into_c_string, out_arg, run, str_arg, write};

/// An open key store. Free it with [`viska_store_free`]; a phone configured with it keeps its
/// own reference.
pub struct ViskaStore {
    pub(crate) store: Store,
}

/// Opens (or creates) the store at `path` with a key derived from `passphrase` (Argon2id,
/// 64 MiB; takes a few hundred milliseconds) into `*out`. `VISKA_ERROR_CODE_WRONG_KEY` when
/// the passphrase does not open the file.
///
/// # Safety
///
/// `path` and `passphrase` are NUL-terminated strings; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_open(
    path: *const c_char,
    passphrase: *const c_char,
    out: *mut *mut ViskaStore,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NUL-terminated per the caller.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: NUL-terminated per the caller.
        let passphrase = unsafe { str_arg(passphrase, "passphrase") }?;
        let out = out_arg(out, "out")?;
        let store = Store::open(path, StoreKey::passphrase(passphrase))?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaStore { store }))) };
        Ok(())
    })
}

/// Opens (or creates) the store at `path` with the 32-byte key at `key` (`len` = 32), one the
/// platform keeps (a keychain, a TPM), into `*out`.
///
/// # Safety
///
/// `path` is a NUL-terminated string; `key` points to `len` readable bytes; `out` a valid
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_open_with_key(
    path: *const c_char,
    key: *const u8,
    len: usize,
    out: *mut *mut ViskaStore,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NUL-terminated per the caller.
        let path = unsafe { str_arg(path, "path") }?;
        // SAFETY: `len` readable bytes per the caller.
        let bytes = unsafe { bytes_arg(key, len, "key") }?;
        let out = out_arg(out, "out")?;
        let mut raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ViskaError::invalid("a store key is 32 bytes"))?;
        let store = Store::open(path, StoreKey::raw(raw));
        raw.zeroize();
        let store = store?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaStore { store }))) };
        Ok(())
    })
}

/// Changes the store's key to one derived from `new_passphrase` (Argon2id, 64 MiB): every
/// page is rewritten under it, and from then on only it opens the file (the old one fails
/// with `VISKA_ERROR_CODE_WRONG_KEY`). The passphrase must be at least 12 characters, not a
/// common password and hard to guess (`VISKA_ERROR_CODE_WEAK_PASSPHRASE`, nothing changed).
/// If the process dies during the change, the file opens with the old key or the new one
/// (`docs/store.md` §1.1). Phones using the store go on with the new key.
///
/// # Safety
///
/// `store` is a live store; `new_passphrase` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_change_key(
    store: *const ViskaStore,
    new_passphrase: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: NUL-terminated per the caller.
        let passphrase = unsafe { str_arg(new_passphrase, "new_passphrase") }?;
        store.store.change_key(StoreKey::passphrase(passphrase))?;
        Ok(())
    })
}

/// Changes the store's key to the 32-byte key at `new_key` (`len` = 32), one the platform
/// keeps: as [`viska_store_change_key`], with no derivation.
///
/// # Safety
///
/// `store` is a live store; `new_key` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_change_key_with_key(
    store: *const ViskaStore,
    new_key: *const u8,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: `len` readable bytes per the caller.
        let bytes = unsafe { bytes_arg(new_key, len, "new_key") }?;
        let mut raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ViskaError::invalid("a store key is 32 bytes"))?;
        let changed = store.store.change_key(StoreKey::raw(raw));
        raw.zeroize();
        changed?;
        Ok(())
    })
}

/// Borrows a store.
///
/// # Safety
///
/// `store` is NULL or a live store.
unsafe fn store_ref<'a>(store: *const ViskaStore) -> Result<&'a ViskaStore> {
    // SAFETY: forwarded to the caller.
    unsafe { borrow(store, "store") }
}

/// The device's identity, made on first use and the same ever after, into `*out` (free it
/// with `viska_identity_free`).
///
/// # Safety
///
/// `store` is a live store; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_identity(
    store: *const ViskaStore,
    out: *mut *mut ViskaIdentity,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        let out = out_arg(out, "out")?;
        let key = store.store.identity()?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaIdentity { key }))) };
        Ok(())
    })
}

/// What a call with the contact `handle` shows now, into `*out`: `VISKA_TRUST_UNKNOWN` when
/// there is no such contact, `VISKA_TRUST_KEY_CHANGED` while a changed key awaits
/// verification.
///
/// # Safety
///
/// `store` is a live store; `handle` a NUL-terminated string; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_contact_trust(
    store: *const ViskaStore,
    handle: *const c_char,
    out: *mut ViskaTrust,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: NUL-terminated per the caller.
        let handle = unsafe { str_arg(handle, "handle") }?;
        let out = out_arg(out, "out")?;
        let trust = match store.store.contact(handle)? {
            Some(contact) => ViskaTrust::from(contact.trust()),
            None => ViskaTrust::Unknown,
        };
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, trust) };
        Ok(())
    })
}

/// Adds or replaces the contact `handle` with the public key at `public_key` (`len` =
/// `VISKA_PUBLIC_KEY_LEN`): `verified` when the application's source for it is one the user
/// trusts (a directory).
///
/// # Safety
///
/// `store` is a live store; `handle` a NUL-terminated string; `public_key` points to `len`
/// readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_add_contact(
    store: *const ViskaStore,
    handle: *const c_char,
    public_key: *const u8,
    len: usize,
    verified: bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: NUL-terminated per the caller.
        let handle = unsafe { str_arg(handle, "handle") }?;
        // SAFETY: `len` readable bytes per the caller.
        let key = unsafe { public_key_arg(public_key, len) }?;
        store.store.add_contact(handle, &key, verified)?;
        Ok(())
    })
}

/// The setting `key`'s value into `*out` (the caller's: `viska_string_free`), NULL when the
/// store has no such setting. Keys starting with `viska.` are the library's
/// (`docs/store.md` §2).
///
/// # Safety
///
/// `store` is a live store; `key` a NUL-terminated string; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_setting(
    store: *const ViskaStore,
    key: *const c_char,
    out: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: NUL-terminated per the caller.
        let key = unsafe { str_arg(key, "key") }?;
        let out = out_arg(out, "out")?;
        let value = store
            .store
            .setting(key)?
            .map_or(std::ptr::null_mut(), into_c_string);
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, value) };
        Ok(())
    })
}

/// An encrypted backup of the identity, contacts and settings into `*out` and `*out_len`
/// (free it with [`viska_bytes_free`]). The passphrase must be at least 12 characters, not a
/// common password and hard to guess (`VISKA_ERROR_CODE_WEAK_PASSPHRASE`).
///
/// # Safety
///
/// `store` is a live store; `passphrase` a NUL-terminated string; `out` and `out_len` valid
/// pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_export_backup(
    store: *const ViskaStore,
    passphrase: *const c_char,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: NUL-terminated per the caller.
        let passphrase = unsafe { str_arg(passphrase, "passphrase") }?;
        let out = out_arg(out, "out")?;
        let out_len = out_arg(out_len, "out_len")?;
        let backup = store.store.export_backup(passphrase)?.into_boxed_slice();
        let len = backup.len();
        let ptr = Box::into_raw(backup).cast::<u8>();
        // SAFETY: both non-NULL and writable per the caller.
        unsafe {
            write(out, ptr);
            write(out_len, len);
        }
        Ok(())
    })
}

/// Restores the backup of `len` bytes at `backup` into this store, which must be fresh.
/// `VISKA_ERROR_CODE_BAD_BACKUP` for a wrong passphrase or a changed or truncated backup.
///
/// # Safety
///
/// `store` is a live store; `backup` points to `len` readable bytes; `passphrase` a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_import_backup(
    store: *const ViskaStore,
    backup: *const u8,
    len: usize,
    passphrase: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let store = unsafe { store_ref(store) }?;
        // SAFETY: `len` readable bytes per the caller.
        let backup = unsafe { bytes_arg(backup, len, "backup") }?;
        // SAFETY: NUL-terminated per the caller.
        let passphrase = unsafe { str_arg(passphrase, "passphrase") }?;
        store.store.import_backup(backup, passphrase)?;
        Ok(())
    })
}

/// Frees bytes the library returned (a backup). NULL is fine.
///
/// # Safety
///
/// `bytes` and `len` are exactly what a function of this library returned, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_bytes_free(bytes: *mut u8, len: usize) {
    if bytes.is_null() {
        return;
    }
    // SAFETY: a boxed slice of `len` bytes this library leaked, per the caller.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes, len)) });
}

/// Frees a store handle (a phone using it keeps its own reference). NULL is fine.
///
/// # Safety
///
/// `store` is NULL or a store from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_store_free(store: *mut ViskaStore) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(store) }
}

//! What every entry point shares: the panic guard, argument checks, out-pointers.

use std::ffi::{CStr, CString, c_char};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::error::ViskaError;

pub(crate) type Result<T> = std::result::Result<T, ViskaError>;

/// Runs the body of an entry point: an error or a caught panic becomes a `ViskaError *`.
pub(crate) fn run(f: impl FnOnce() -> Result<()>) -> *mut ViskaError {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => Box::into_raw(Box::new(e)),
        Err(payload) => Box::into_raw(Box::new(ViskaError::panic(payload.as_ref()))),
    }
}

/// Runs the body of an entry point that cannot report errors (a `free`): a panic is
/// swallowed rather than unwinding into C.
pub(crate) fn run_quiet(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// A C string without interior NULs (they are replaced, not cut at).
pub(crate) fn c_string(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let bytes: Vec<u8> = e
            .into_vec()
            .into_iter()
            .map(|b| if b == 0 { b'?' } else { b })
            .collect();
        CString::new(bytes).unwrap_or_default()
    })
}

/// Hands a string to C, to be freed with `viska_string_free`.
pub(crate) fn into_c_string(s: String) -> *mut c_char {
    c_string(s).into_raw()
}

/// Borrows a handle.
///
/// # Safety
///
/// `ptr` is NULL or points to a live `T` not mutated elsewhere for `'a`.
pub(crate) unsafe fn borrow<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: forwarded to the caller.
    unsafe { ptr.as_ref() }.ok_or_else(|| ViskaError::null(name))
}

/// Borrows a NUL-terminated UTF-8 string.
///
/// # Safety
///
/// `ptr` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(ViskaError::null(name));
    }
    // SAFETY: non-NULL, and NUL-terminated and live per the caller.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|_| ViskaError::invalid(format_args!("{name} is not UTF-8")))
}

/// Borrows an optional NUL-terminated UTF-8 string (NULL is `None`).
///
/// # Safety
///
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded to the caller.
    unsafe { str_arg(ptr, name) }.map(Some)
}

/// Borrows `len` bytes at `ptr` (NULL is fine when `len` is 0).
///
/// # Safety
///
/// `ptr` points to `len` readable bytes valid for `'a` (or `len` is 0).
pub(crate) unsafe fn bytes_arg<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(ViskaError::null(name));
    }
    // SAFETY: non-NULL, and `len` readable elements per the caller.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Checks an out-pointer.
pub(crate) fn out_arg<T>(ptr: *mut T, name: &str) -> Result<*mut T> {
    if ptr.is_null() {
        Err(ViskaError::null(name))
    } else {
        Ok(ptr)
    }
}

/// Writes `value` through an out-pointer checked with [`out_arg`] (does nothing for NULL).
///
/// # Safety
///
/// `ptr` is NULL or points to writable memory for a `T`.
pub(crate) unsafe fn write<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: writable per the caller; `write` does not read (or drop) the old contents.
        unsafe { ptr.write(value) };
    }
}

/// Copies `src` to `dst` (which holds `src.len()` bytes).
///
/// # Safety
///
/// `dst` is non-NULL and points to `src.len()` writable bytes.
pub(crate) unsafe fn copy_out(src: &[u8], dst: *mut u8) {
    // SAFETY: writable per the caller; a caller's buffer cannot overlap our own data.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
}

/// Parses an IP literal with a port.
pub(crate) fn addr_arg(s: &str, name: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        ViskaError::invalid(format_args!(
            "{name} {s:?} is not an IP address with a port (\"127.0.0.1:4433\", \"[::1]:0\")"
        ))
    })
}

/// Frees a handle made with `Box::into_raw`, catching a panic of its drop.
///
/// # Safety
///
/// `ptr` is NULL or from `Box::into_raw` and not yet freed.
pub(crate) unsafe fn free<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: per the caller, owned and not yet freed.
        let boxed = unsafe { Box::from_raw(ptr) };
        run_quiet(move || drop(boxed));
    }
}

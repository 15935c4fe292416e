//! Phones: [`ViskaPhone`] places and receives calls.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use viska::Phone;

use super::call::ViskaCall;
use super::callbacks::{Callbacks, PhoneSink, ViskaPhoneCallbacks};
use super::config::ViskaPhoneConfig;
use super::error::ViskaError;
use super::identity::public_key_arg;
use super::util::{
    Result, addr_arg, borrow, copy_out, into_c_string, out_arg, run, str_arg, write,
};

/// A softphone: its threads (`vk-<name>` for sockets and media, `vk-<name>-ev` for the
/// callbacks), its endpoints and its calls.
pub struct ViskaPhone {
    phone: Phone,
    callbacks: Arc<Callbacks>,
}

/// Borrows a phone.
///
/// # Safety
///
/// `phone` is NULL or a live phone.
unsafe fn phone_ref<'a>(phone: *const ViskaPhone) -> Result<&'a ViskaPhone> {
    // SAFETY: forwarded to the caller.
    unsafe { borrow(phone, "phone") }
}

/// Starts a phone with the settings of `config` (which stays the caller's) and the
/// application's `callbacks` (copied; NULL: none, and incoming calls are rejected), into
/// `*out`. Opens no socket yet: see [`viska_phone_listen`].
///
/// # Safety
///
/// `config` is a live configuration; `callbacks` NULL or a valid struct whose `user_data`
/// honours the contract of `ViskaPhoneCallbacks`; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_new(
    config: *const ViskaPhoneConfig,
    callbacks: *const ViskaPhoneCallbacks,
    out: *mut *mut ViskaPhone,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let config = unsafe { borrow(config, "config") }?;
        // SAFETY: NULL or a valid struct per the caller.
        let callbacks = unsafe { callbacks.as_ref() }.copied().unwrap_or_default();
        let out = out_arg(out, "out")?;
        let phone = Phone::new(config.builder().build()?)?;
        let callbacks = Callbacks::new(callbacks);
        phone.set_listener(Arc::new(PhoneSink {
            callbacks: Arc::clone(&callbacks),
        }));
        let phone = Box::new(ViskaPhone { phone, callbacks });
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(phone)) };
        Ok(())
    })
}

/// Listens for incoming calls on `addr` (`"0.0.0.0:0"`, `"127.0.0.1:4433"`, `"[::]:0"`;
/// port 0 picks one). The bound port goes to `*port_out` and the bound address, as a string
/// to free with `viska_string_free`, to `*addr_out`; either may be NULL. A phone listens on
/// one address (`VISKA_ERROR_CODE_ALREADY_LISTENING` the second time).
///
/// # Safety
///
/// `phone` is a live phone; `addr` a NUL-terminated string; the out-pointers NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_listen(
    phone: *const ViskaPhone,
    addr: *const c_char,
    port_out: *mut u16,
    addr_out: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        // SAFETY: NUL-terminated per the caller.
        let addr = addr_arg(unsafe { str_arg(addr, "addr") }?, "addr")?;
        let bound = phone.phone.listen(addr)?;
        // SAFETY: NULL or writable per the caller.
        unsafe { write(port_out, bound.port()) };
        if !addr_out.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { write(addr_out, into_c_string(bound.to_string())) };
        }
        Ok(())
    })
}

/// Places a call to the phone listening at `addr`, into `*out` (free it with
/// `viska_call_free`; freeing does not end the call). Returns at once: follow the call
/// through the callbacks and `viska_call_state`. The peer is `VISKA_TRUST_UNVERIFIED` unless
/// the user verified it before.
///
/// # Safety
///
/// `phone` is a live phone; `addr` a NUL-terminated string; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_call(
    phone: *const ViskaPhone,
    addr: *const c_char,
    out: *mut *mut ViskaCall,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        // SAFETY: NUL-terminated per the caller.
        let addr = addr_arg(unsafe { str_arg(addr, "addr") }?, "addr")?;
        let out = out_arg(out, "out")?;
        let call = phone.phone.call(addr)?;
        phone.callbacks.follow(&call);
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaCall { handle: call }))) };
        Ok(())
    })
}

/// Places a call to a contact whose public key (`len` = `VISKA_PUBLIC_KEY_LEN` bytes) the
/// application knows: the call is `VISKA_TRUST_VERIFIED` if the peer proves that identity,
/// `VISKA_TRUST_KEY_CHANGED` (with a security event) if it proves another; the call goes on
/// either way, the application decides. Otherwise as [`viska_phone_call`].
///
/// # Safety
///
/// As [`viska_phone_call`]; `public_key` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_call_expecting(
    phone: *const ViskaPhone,
    addr: *const c_char,
    public_key: *const u8,
    len: usize,
    out: *mut *mut ViskaCall,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        // SAFETY: NUL-terminated per the caller.
        let addr = addr_arg(unsafe { str_arg(addr, "addr") }?, "addr")?;
        // SAFETY: `len` readable bytes per the caller.
        let expected = unsafe { public_key_arg(public_key, len) }?;
        let out = out_arg(out, "out")?;
        let call = phone.phone.call_expecting(addr, expected)?;
        phone.callbacks.follow(&call);
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaCall { handle: call }))) };
        Ok(())
    })
}

/// Places a call to the contact `handle` at `addr`, its trust from the phone's key store
/// (`viska_phone_config_set_store`): the first call pins the identity that answers
/// (`VISKA_TRUST_UNVERIFIED`); later calls are `VISKA_TRUST_VERIFIED` once the user verified
/// it, and `VISKA_TRUST_KEY_CHANGED` (with a security event) in every call where another
/// identity answers, until the user verifies that one. Otherwise as [`viska_phone_call`].
///
/// # Safety
///
/// As [`viska_phone_call`]; `handle` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_call_contact(
    phone: *const ViskaPhone,
    handle: *const c_char,
    addr: *const c_char,
    out: *mut *mut ViskaCall,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        // SAFETY: NUL-terminated per the caller.
        let handle = unsafe { str_arg(handle, "handle") }?;
        // SAFETY: NUL-terminated per the caller.
        let addr = addr_arg(unsafe { str_arg(addr, "addr") }?, "addr")?;
        let out = out_arg(out, "out")?;
        let call = phone.phone.call_contact(handle, addr)?;
        phone.callbacks.follow(&call);
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(Box::new(ViskaCall { handle: call }))) };
        Ok(())
    })
}

/// The phone's own public key, `VISKA_PUBLIC_KEY_LEN` bytes into `out`.
///
/// # Safety
///
/// `phone` is a live phone; `out` points to `VISKA_PUBLIC_KEY_LEN` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_public_key(
    phone: *const ViskaPhone,
    out: *mut u8,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        let out = out_arg(out, "out")?;
        // SAFETY: VISKA_PUBLIC_KEY_LEN writable bytes per the caller.
        unsafe { copy_out(&phone.phone.identity().to_bytes(), out) };
        Ok(())
    })
}

/// The identities the user has verified (those configured and those marked since with
/// `viska_call_mark_verified`), for the application to keep: up to `capacity` public keys of
/// `VISKA_PUBLIC_KEY_LEN` bytes each are written to `keys_out` one after another, and the
/// total number to `*count_out` (call with `capacity` 0 to learn it).
///
/// # Safety
///
/// `phone` is a live phone; `keys_out` points to `capacity * VISKA_PUBLIC_KEY_LEN` writable
/// bytes (or `capacity` is 0); `count_out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_verified_peers(
    phone: *const ViskaPhone,
    keys_out: *mut u8,
    capacity: usize,
    count_out: *mut usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        let count_out = out_arg(count_out, "count_out")?;
        let peers = phone.phone.verified_peers();
        if capacity > 0 {
            let keys_out = out_arg(keys_out, "keys_out")?;
            for (i, peer) in peers.iter().take(capacity).enumerate() {
                let key = peer.to_bytes();
                // SAFETY: `capacity * VISKA_PUBLIC_KEY_LEN` writable bytes per the caller,
                // and `i < capacity`.
                unsafe { copy_out(&key, keys_out.add(i * key.len())) };
            }
        }
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(count_out, peers.len()) };
        Ok(())
    })
}

/// Closes the phone: every call is hung up (each peer is told, audio files are finished),
/// then its endpoints close and its threads stop; `on_closed` is the last callback. Returns
/// at once; see [`viska_phone_wait_closed`].
///
/// # Safety
///
/// `phone` is a live phone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_close(phone: *const ViskaPhone) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        phone.phone.close();
        Ok(())
    })
}

/// Waits (blocking the calling thread) until the phone is closed and its last callback has
/// returned, or `timeout_ms` passes; whether it closed goes to `*closed_out`. On the phone's
/// own threads (in a callback) it returns false at once. After it returned true, the
/// callbacks' `user_data` is no longer used.
///
/// # Safety
///
/// `phone` is a live phone; `closed_out` NULL or a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_wait_closed(
    phone: *const ViskaPhone,
    timeout_ms: u64,
    closed_out: *mut bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { phone_ref(phone) }?;
        let closed = phone.phone.wait_closed(Duration::from_millis(timeout_ms));
        // SAFETY: NULL or writable per the caller.
        unsafe { write(closed_out, closed) };
        Ok(())
    })
}

/// Frees a phone, closing it if it is not closed yet (as [`viska_phone_close`]: it does not
/// wait; callbacks may still run until `on_closed`). Call handles stay valid (their commands
/// fail with `VISKA_ERROR_CODE_CALL_ENDED` once the calls are over). NULL is fine.
///
/// # Safety
///
/// `phone` is NULL or a phone not yet freed, not in use on another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_phone_free(phone: *mut ViskaPhone) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(phone) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_are_send_and_sync() {
        // Phones and calls are used from any of the application's threads.
        fn is<T: Send + Sync>() {}
        is::<super::ViskaPhone>();
        is::<super::ViskaCall>();
    }
}

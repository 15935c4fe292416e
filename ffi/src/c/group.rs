//! Group calls through a relay: [`ViskaGroupPhone`] connects to a relay, creates calls, adds
//! devices, accepts and leaves calls; [`ViskaGroupCallbacks`] tells the application what
//! happens. Calls are named by 32 lowercase hex digits (`VISKA_GROUP_CALL_HEX_LEN`).

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

use viska::group::{CallRef, GroupCallEvent, GroupListener, GroupPhone, GroupPhoneConfig};

use super::call::ViskaTrust;
use super::config::ViskaPhoneConfig;
use super::error::{ViskaError, ViskaErrorCode};
use super::identity::public_key_arg;
use super::util::{
    Result, addr_arg, borrow, c_string, into_c_string, out_arg, run, str_arg, write,
};

/// Length of a group call's id in hex digits (without the terminating NUL).
pub const VISKA_GROUP_CALL_HEX_LEN: usize = 32;

/// What a group phone tells the application. Every callback may be NULL (not wanted).
///
/// All run on the group phone's dispatcher thread (`vk-group-events`), one at a time, in
/// order, never while a lock of the library is held; they must not block. Strings and keys
/// passed are valid for the duration of the callback only. By giving `user_data`, the caller
/// declares it safe to use from that thread, and keeps it alive until
/// `viska_group_phone_free` has returned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ViskaGroupCallbacks {
    /// Passed to every callback as is.
    pub user_data: *mut c_void,
    /// This device is in `call` (it created it, or was added: accept it to take it).
    pub on_joined: Option<unsafe extern "C" fn(user_data: *mut c_void, call: *const c_char)>,
    /// A device joined `call` (also each member already there when this device joins).
    /// `public_key` is `VISKA_PUBLIC_KEY_LEN` bytes.
    pub on_participant_joined: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const c_char,
            participant: u32,
            public_key: *const u8,
            trust: ViskaTrust,
        ),
    >,
    /// A device left `call`.
    pub on_participant_left: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const c_char,
            participant: u32,
            public_key: *const u8,
        ),
    >,
    /// The call's group moved to a new epoch; `verification_code` is what every member shows.
    pub on_epoch: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            call: *const c_char,
            epoch: u64,
            verification_code: *const c_char,
        ),
    >,
    /// A group message or media was refused (forged, stale, not for this device): a security
    /// event; `detail` says which, for logs.
    pub on_security: Option<
        unsafe extern "C" fn(user_data: *mut c_void, call: *const c_char, detail: *const c_char),
    >,
    /// This device is no longer in `call` (it left or was removed).
    pub on_ended: Option<unsafe extern "C" fn(user_data: *mut c_void, call: *const c_char)>,
    /// The connection to the relay was lost (`connected` false) or is back (`connected`
    /// true, after `attempts` attempts); calls carry on once it is back.
    pub on_relay:
        Option<unsafe extern "C" fn(user_data: *mut c_void, connected: bool, attempts: u32)>,
}

impl Default for ViskaGroupCallbacks {
    fn default() -> Self {
        Self {
            user_data: std::ptr::null_mut(),
            on_joined: None,
            on_participant_joined: None,
            on_participant_left: None,
            on_epoch: None,
            on_security: None,
            on_ended: None,
            on_relay: None,
        }
    }
}

struct GroupSink(ViskaGroupCallbacks);

// SAFETY: the function pointers are plain code pointers; `user_data` is only passed back to
// them, and the application declared it safe to use from the dispatcher thread (the contract
// of `ViskaGroupCallbacks`).
unsafe impl Send for GroupSink {}
// SAFETY: as above; the struct is never mutated after it is made.
unsafe impl Sync for GroupSink {}

fn call_hex(call: CallRef) -> std::ffi::CString {
    c_string(hex::encode(call.0))
}

impl GroupListener for GroupSink {
    fn event(&self, event: GroupCallEvent) {
        let cb = &self.0;
        let ud = cb.user_data;
        // SAFETY (every block below): a callback of the application, called as documented;
        // every pointer passed is valid for the duration of the call.
        match event {
            GroupCallEvent::Joined { call } => {
                if let Some(f) = cb.on_joined {
                    let call = call_hex(call);
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr()) };
                }
            }
            GroupCallEvent::ParticipantJoined {
                call,
                participant,
                identity,
                trust,
            } => {
                if let Some(f) = cb.on_participant_joined {
                    let (call, key) = (call_hex(call), identity.to_bytes());
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr(), participant.0, key.as_ptr(), trust.into()) };
                }
            }
            GroupCallEvent::ParticipantLeft {
                call,
                participant,
                identity,
            } => {
                if let Some(f) = cb.on_participant_left {
                    let (call, key) = (call_hex(call), identity.to_bytes());
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr(), participant.0, key.as_ptr()) };
                }
            }
            GroupCallEvent::Epoch {
                call,
                epoch,
                verification_code,
            } => {
                if let Some(f) = cb.on_epoch {
                    let (call, code) = (call_hex(call), c_string(verification_code));
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr(), epoch, code.as_ptr()) };
                }
            }
            GroupCallEvent::Failure { call, reason } => {
                if let Some(f) = cb.on_security {
                    let (call, detail) = (call_hex(call), c_string(format!("{reason:?}")));
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr(), detail.as_ptr()) };
                }
            }
            GroupCallEvent::MediaRejected {
                call,
                participant,
                reason,
                count,
            } => {
                if let Some(f) = cb.on_security {
                    let detail = format!(
                        "media of participant {} refused: {reason:?} ({count} so far)",
                        participant.0
                    );
                    let (call, detail) = (call_hex(call), c_string(detail));
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr(), detail.as_ptr()) };
                }
            }
            GroupCallEvent::Ended { call } => {
                if let Some(f) = cb.on_ended {
                    let call = call_hex(call);
                    // SAFETY: see above.
                    unsafe { f(ud, call.as_ptr()) };
                }
            }
            GroupCallEvent::RelayDisconnected => {
                if let Some(f) = cb.on_relay {
                    // SAFETY: see above.
                    unsafe { f(ud, false, 0) };
                }
            }
            GroupCallEvent::RelayReconnected { attempts } => {
                if let Some(f) = cb.on_relay {
                    // SAFETY: see above.
                    unsafe { f(ud, true, attempts) };
                }
            }
            _ => {}
        }
    }
}

/// A device connected to a relay, in any number of group calls.
pub struct ViskaGroupPhone {
    phone: GroupPhone,
}

/// Borrows a group phone.
///
/// # Safety
///
/// `phone` is NULL or a live group phone.
unsafe fn group_ref<'a>(phone: *const ViskaGroupPhone) -> Result<&'a ViskaGroupPhone> {
    // SAFETY: forwarded to the caller.
    unsafe { borrow(phone, "phone") }
}

/// Parses a call id of `VISKA_GROUP_CALL_HEX_LEN` hex digits.
///
/// # Safety
///
/// `call` is NULL or a NUL-terminated string.
unsafe fn call_arg(call: *const c_char) -> Result<CallRef> {
    // SAFETY: forwarded to the caller.
    let s = unsafe { str_arg(call, "call") }?;
    let mut id = [0u8; 16];
    hex::decode_to_slice(s, &mut id)
        .map_err(|_| ViskaError::invalid("call: not a call id of 32 hex digits"))?;
    Ok(CallRef(id))
}

/// Connects to the relay at `relay_addr` (`"ip:port"`) whose certificate fingerprint is
/// `relay_fingerprint_hex` (64 hex digits, as the relay prints it), as the identity of
/// `config`, with its audio, verified peers, key store (`viska_phone_config_set_store`: the
/// group calls joined are recorded there, and after a restart the phone asks to be put back
/// into them) and relay login (`viska_phone_config_set_relay_login`, taken out of `config`
/// and wiped once used); its other settings are for direct calls. Authenticates and
/// publishes key packages, and returns once the relay accepted the device (blocking the
/// calling thread that long) into `*out`. A relay that admits registered devices only
/// refuses an unregistered device without a login (`VISKA_ERROR_CODE_LOGIN_REQUIRED`) and a
/// wrong password or code (`VISKA_ERROR_CODE_LOGIN_FAILED`; `viska_error_retry_after_secs`
/// says how long the account is locked).
///
/// # Safety
///
/// Strings are NUL-terminated; `config` is a live configuration (it stays the caller's);
/// `callbacks` NULL or a valid struct whose `user_data` honours the contract of
/// `ViskaGroupCallbacks`; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_connect(
    relay_addr: *const c_char,
    relay_fingerprint_hex: *const c_char,
    config: *const ViskaPhoneConfig,
    callbacks: *const ViskaGroupCallbacks,
    out: *mut *mut ViskaGroupPhone,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NUL-terminated per the caller.
        let relay = addr_arg(unsafe { str_arg(relay_addr, "relay_addr") }?, "relay_addr")?;
        // SAFETY: NUL-terminated per the caller.
        let fingerprint = unsafe { str_arg(relay_fingerprint_hex, "relay_fingerprint_hex") }?;
        let mut relay_fingerprint = [0u8; 32];
        hex::decode_to_slice(fingerprint, &mut relay_fingerprint)
            .map_err(|_| ViskaError::invalid("relay_fingerprint_hex: not 64 hex digits"))?;
        // SAFETY: NULL or live per the caller.
        let config = unsafe { borrow(config, "config") }?;
        // SAFETY: NULL or a valid struct per the caller.
        let callbacks = unsafe { callbacks.as_ref() }.copied().unwrap_or_default();
        let out = out_arg(out, "out")?;
        let parts = config.group_parts();
        let group_config = GroupPhoneConfig {
            relay,
            relay_fingerprint,
            identity: parts.identity,
            audio: parts.audio,
            session: viska::session::GroupSessionConfig::default(),
            group: viska::group::GroupConfig::default(),
            verified_peers: parts.verified_peers,
        };
        let phone = match (parts.store, parts.login) {
            (Some(store), login) => GroupPhone::connect_with_store(group_config, store, login)?,
            (None, Some(login)) => GroupPhone::connect_with_login(group_config, login)?,
            (None, None) => GroupPhone::connect(group_config)?,
        };
        phone.set_listener(Arc::new(GroupSink(callbacks)));
        // SAFETY: `out` is valid per the caller (checked non-NULL above).
        unsafe { write(out, Box::into_raw(Box::new(ViskaGroupPhone { phone }))) };
        Ok(())
    })
}

/// Opens a new call on the relay with this device as its only member; its id (32 hex digits,
/// the caller's: `viska_string_free`) into `*out_call`.
///
/// # Safety
///
/// `phone` is a live group phone; `out_call` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_create_call(
    phone: *const ViskaGroupPhone,
    out_call: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let phone = unsafe { group_ref(phone) }?;
        let out = out_arg(out_call, "out_call")?;
        let call = phone.phone.create_call()?;
        // SAFETY: valid per the caller (checked non-NULL above).
        unsafe { write(out, into_c_string(hex::encode(call.0))) };
        Ok(())
    })
}

/// Adds the device whose public key is `public_key` (`public_key_len` =
/// `VISKA_PUBLIC_KEY_LEN` bytes) to
/// `call`; it is held (hears and sends nothing) until it accepts.
///
/// # Safety
///
/// `phone` is a live group phone; `call` NUL-terminated; `public_key` points to
/// `public_key_len` bytes (`VISKA_PUBLIC_KEY_LEN`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_add(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
    public_key: *const u8,
    public_key_len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call, key) = unsafe {
            (
                group_ref(phone)?,
                call_arg(call)?,
                public_key_arg(public_key, public_key_len)?,
            )
        };
        Ok(phone.phone.add(call, key)?)
    })
}

/// Removes the device whose public key is `public_key` from `call`.
///
/// # Safety
///
/// As [`viska_group_phone_add`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_remove(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
    public_key: *const u8,
    public_key_len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call, key) = unsafe {
            (
                group_ref(phone)?,
                call_arg(call)?,
                public_key_arg(public_key, public_key_len)?,
            )
        };
        Ok(phone.phone.remove(call, key)?)
    })
}

/// Takes `call`, which this device was added to: from now on it sends and plays audio.
///
/// # Safety
///
/// `phone` is a live group phone; `call` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_accept(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call) = unsafe { (group_ref(phone)?, call_arg(call)?) };
        Ok(phone.phone.accept(call)?)
    })
}

/// Leaves `call`.
///
/// # Safety
///
/// `phone` is a live group phone; `call` NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_leave(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call) = unsafe { (group_ref(phone)?, call_arg(call)?) };
        Ok(phone.phone.leave(call)?)
    })
}

/// What a group call looks like from this device (`viska_group_phone_call_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ViskaGroupCallInfo {
    /// Members, this device included.
    pub members: u32,
    /// Members this device has received audio from.
    pub members_heard: u32,
    /// Members not verified by the user.
    pub unverified: u32,
    /// The group's epoch.
    pub epoch: u64,
    /// Whether this device sends under the group's epoch (the transition is complete).
    pub sending_current_epoch: bool,
    /// Whether the call was taken (created here, or accepted).
    pub accepted: bool,
    /// Whether this device left or was removed.
    pub ended: bool,
}

/// What `call` looks like from this device into `*out`, and its verification code (what every
/// member shows; the caller's: `viska_string_free`; NULL before the first epoch) into
/// `*out_verification_code` unless that is NULL. Fails with
/// `VISKA_ERROR_CODE_INVALID_ARGUMENT` when this device is not in the call.
///
/// # Safety
///
/// `phone` is a live group phone; `call` NUL-terminated; `out` a valid pointer;
/// `out_verification_code` NULL or a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_call_info(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
    out: *mut ViskaGroupCallInfo,
    out_verification_code: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call) = unsafe { (group_ref(phone)?, call_arg(call)?) };
        let out = out_arg(out, "out")?;
        let snap = phone
            .phone
            .snapshot(call)
            .ok_or_else(|| ViskaError::new(ViskaErrorCode::InvalidArgument, "no such call"))?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let heard = snap
            .roster
            .keys()
            .filter(|p| snap.me != Some(**p) && snap.received.get(p).is_some_and(|&n| n > 0))
            .count();
        let info = ViskaGroupCallInfo {
            members: count(snap.roster.len()),
            members_heard: count(heard),
            unverified: count(snap.unverified),
            epoch: snap.epoch.unwrap_or(0),
            sending_current_epoch: snap.epoch.is_some() && snap.sending_epoch == snap.epoch,
            accepted: snap.accepted,
            ended: snap.ended,
        };
        // SAFETY: valid per the caller (checked non-NULL above).
        unsafe { write(out, info) };
        if !out_verification_code.is_null() {
            let code = snap
                .verification_code
                .map_or(std::ptr::null_mut(), into_c_string);
            // SAFETY: non-NULL, so valid per the caller.
            unsafe { write(out_verification_code, code) };
        }
        Ok(())
    })
}

/// Blocks until `call` has `members` members, every other one heard and all sending under the
/// group's epoch, or `timeout_ms` passed; `*out_done` says which. Not from a callback.
///
/// # Safety
///
/// `phone` is a live group phone; `call` NUL-terminated; `out_done` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_wait_heard(
    phone: *const ViskaGroupPhone,
    call: *const c_char,
    members: u32,
    timeout_ms: u32,
    out_done: *mut bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: per the caller.
        let (phone, call) = unsafe { (group_ref(phone)?, call_arg(call)?) };
        let out = out_arg(out_done, "out_done")?;
        let members = usize::try_from(members).unwrap_or(usize::MAX);
        let done = phone
            .phone
            .wait_for(Duration::from_millis(u64::from(timeout_ms)), |calls| {
                calls.get(&call).is_some_and(|c| {
                    !c.ended
                        && c.roster.len() == members
                        && c.sending_epoch == c.epoch
                        && c.roster
                            .keys()
                            .all(|p| c.me == Some(*p) || c.received.get(p).is_some_and(|&n| n > 0))
                })
            });
        // SAFETY: valid per the caller (checked non-NULL above).
        unsafe { write(out, done) };
        Ok(())
    })
}

/// Leaves every call, disconnects from the relay and frees the group phone (blocks until
/// done). NULL is fine. After it returns no callback runs any more.
///
/// # Safety
///
/// `phone` is NULL or a group phone from `viska_group_phone_connect`, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_group_phone_free(phone: *mut ViskaGroupPhone) {
    if phone.is_null() {
        return;
    }
    super::util::run_quiet(|| {
        // SAFETY: from `Box::into_raw` in `viska_group_phone_connect`, per the caller.
        let phone = unsafe { Box::from_raw(phone) };
        phone.phone.close();
    });
}

//! Errors: the [`ViskaError`] handle every fallible function returns, and its stable codes.

use std::any::Any;
use std::ffi::{CString, c_char};
use std::fmt::Display;

use viska::PhoneError;
use viska::identity::IdentityError;
use viska::phone::ConfigError;

/// What kind of failure a [`ViskaError`] reports. The values are stable: new codes may be
/// added, existing ones keep their number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaErrorCode {
    /// No error (what [`viska_error_code`] returns for NULL).
    Ok = 0,
    /// An argument is NULL where it may not be, not UTF-8, or out of range (a bad address,
    /// key, DTMF digit or duration).
    InvalidArgument = 1,
    /// The call is over; the command was not sent.
    CallEnded = 2,
    /// The command is not possible in the call's current state (answering a call that does
    /// not ring, holding one not answered).
    InvalidState = 3,
    /// The phone is closed.
    Closed = 4,
    /// The phone already runs as many calls as it takes.
    TooManyCalls = 5,
    /// The phone already listens.
    AlreadyListening = 6,
    /// A socket, TLS or QUIC failure.
    Transport = 7,
    /// The phone's configuration was refused.
    Config = 8,
    /// Audio devices or files.
    Audio = 9,
    /// The system refused a resource (a thread could not start).
    Runtime = 10,
    /// The relay refused a request or broke its protocol, or the MLS group refused an
    /// operation.
    Group = 11,
    /// The key or passphrase does not open the key store, or the file is not a store.
    WrongKey = 12,
    /// A backup passphrase the password policy refused.
    WeakPassphrase = 13,
    /// A backup that does not open: a wrong passphrase, or it was changed or cut short.
    BadBackup = 14,
    /// The key store failed (its file, its database).
    Store = 15,
    /// The relay admits registered devices only, and no login was given
    /// (`viska_phone_config_set_relay_login`).
    LoginRequired = 16,
    /// The relay refused the login (it does not say which part was wrong);
    /// `viska_error_retry_after_secs` says when to try again.
    LoginFailed = 17,
    /// A bug: a panic inside the library was caught, or an error this version does not name.
    Internal = 255,
}

/// An error: a [`ViskaErrorCode`] and a message. Returned by every fallible function (NULL
/// means success) and freed with [`viska_error_free`].
#[derive(Debug)]
pub struct ViskaError {
    code: ViskaErrorCode,
    message: CString,
    retry_after_secs: u32,
}

impl ViskaError {
    pub(crate) fn new(code: ViskaErrorCode, message: impl Display) -> Self {
        Self {
            code,
            message: crate::c::util::c_string(message.to_string()),
            retry_after_secs: 0,
        }
    }

    pub(crate) fn invalid(what: impl Display) -> Self {
        Self::new(ViskaErrorCode::InvalidArgument, what)
    }

    pub(crate) fn null(name: &str) -> Self {
        Self::invalid(format_args!("{name} is NULL"))
    }

    /// The error for a panic caught at the boundary.
    pub(crate) fn panic(payload: &(dyn Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        Self::new(
            ViskaErrorCode::Internal,
            format_args!("internal error (a panic was caught): {what}"),
        )
    }

    /// The error's code.
    pub fn code(&self) -> ViskaErrorCode {
        self.code
    }
}

impl From<viska::group::GroupPhoneError> for ViskaError {
    fn from(e: viska::group::GroupPhoneError) -> Self {
        use viska::group::GroupPhoneError as E;
        let (code, retry_after_secs) = match &e {
            E::Transport(_) => (ViskaErrorCode::Transport, 0),
            E::Closed => (ViskaErrorCode::Closed, 0),
            E::NoSuchCall => (ViskaErrorCode::InvalidArgument, 0),
            E::Timeout => (ViskaErrorCode::Transport, 0),
            E::LoginRequired => (ViskaErrorCode::LoginRequired, 0),
            E::LoginFailed { retry_after_secs } => (ViskaErrorCode::LoginFailed, *retry_after_secs),
            _ => (ViskaErrorCode::Group, 0),
        };
        Self {
            retry_after_secs,
            ..Self::new(code, e)
        }
    }
}

impl From<PhoneError> for ViskaError {
    fn from(e: PhoneError) -> Self {
        let code = match &e {
            PhoneError::Config(_) | PhoneError::Session(_) => ViskaErrorCode::Config,
            PhoneError::Runtime(_) => ViskaErrorCode::Runtime,
            PhoneError::Transport(_) => ViskaErrorCode::Transport,
            PhoneError::Closed => ViskaErrorCode::Closed,
            PhoneError::CallEnded => ViskaErrorCode::CallEnded,
            PhoneError::TooManyCalls { .. } => ViskaErrorCode::TooManyCalls,
            PhoneError::AlreadyListening(_) => ViskaErrorCode::AlreadyListening,
            PhoneError::InvalidState { .. } => ViskaErrorCode::InvalidState,
            PhoneError::InvalidDtmf(_) | PhoneError::DtmfDuration(_) => {
                ViskaErrorCode::InvalidArgument
            }
            PhoneError::Devices(_) => ViskaErrorCode::Audio,
            _ => ViskaErrorCode::Internal,
        };
        Self::new(code, e)
    }
}

impl From<ConfigError> for ViskaError {
    fn from(e: ConfigError) -> Self {
        Self::new(ViskaErrorCode::Config, e)
    }
}

impl From<viska::store::StoreError> for ViskaError {
    fn from(e: viska::store::StoreError) -> Self {
        use viska::store::StoreError as E;
        let code = match &e {
            E::WrongKey => ViskaErrorCode::WrongKey,
            E::WeakPassphrase(_) => ViskaErrorCode::WeakPassphrase,
            E::BadBackup | E::BackupVersion(_) | E::BackupParams => ViskaErrorCode::BadBackup,
            _ => ViskaErrorCode::Store,
        };
        Self::new(code, e)
    }
}

impl From<IdentityError> for ViskaError {
    fn from(e: IdentityError) -> Self {
        Self::new(
            ViskaErrorCode::InvalidArgument,
            format_args!("identity: {e}"),
        )
    }
}

/// The code of `error`; [`ViskaErrorCode::Ok`] for NULL.
///
/// # Safety
///
/// `error` is NULL or a live error returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_error_code(error: *const ViskaError) -> ViskaErrorCode {
    // SAFETY: the caller passes NULL or a live error.
    let error = unsafe { error.as_ref() };
    error.map_or(ViskaErrorCode::Ok, |e| e.code)
}

/// The message of `error`, a NUL-terminated UTF-8 string owned by the error: valid until the
/// error is freed, not to be freed by the caller. NULL for NULL.
///
/// # Safety
///
/// `error` is NULL or a live error returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_error_message(error: *const ViskaError) -> *const c_char {
    // SAFETY: the caller passes NULL or a live error.
    let error = unsafe { error.as_ref() };
    error.map_or(std::ptr::null(), |e| e.message.as_ptr())
}

/// For a `VISKA_ERROR_CODE_LOGIN_FAILED` error, the seconds the relay keeps the account
/// locked (0: try again at once); 0 for any other error and for NULL.
///
/// # Safety
///
/// `error` is NULL or a live error returned by this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_error_retry_after_secs(error: *const ViskaError) -> u32 {
    // SAFETY: the caller passes NULL or a live error.
    let error = unsafe { error.as_ref() };
    error.map_or(0, |e| e.retry_after_secs)
}

/// Frees an error. NULL is fine.
///
/// # Safety
///
/// `error` is NULL or an error returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_error_free(error: *mut ViskaError) {
    if !error.is_null() {
        // SAFETY: the caller passes an error from `Box::into_raw` not yet freed.
        drop(unsafe { Box::from_raw(error) });
    }
}

/// Frees a string this library returned through a `char **` out-pointer. NULL is fine.
///
/// # Safety
///
/// `string` is NULL or a string returned by this library and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_string_free(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: the caller passes a string from `CString::into_raw` not yet freed.
        drop(unsafe { CString::from_raw(string) });
    }
}

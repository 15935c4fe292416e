//! Calls: the [`ViskaCall`] handle and what can be read about a call.

use std::ffi::c_char;
use std::time::Duration;

use viska::CallHandle;
use viska::call::{CallState, CallStats, EndReason, Side, Trust};

use super::error::ViskaError;
use super::util::{
    Result, borrow, bytes_arg, copy_out, into_c_string, opt_str_arg, out_arg, run, str_arg, write,
};

/// A call, placed or received. Several handles may control the same call (see
/// [`viska_call_clone`]); freeing them does not end the call.
pub struct ViskaCall {
    pub(crate) handle: CallHandle,
}

/// How far the peer's identity is trusted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaTrust {
    /// Not known yet: the peer is not authenticated yet.
    Unknown = 0,
    /// First contact (or not verified yet): compare the SAS to verify.
    Unverified = 1,
    /// The peer proved the identity expected of it, or one the user verified.
    Verified = 2,
    /// The peer proved another identity than the one expected: possible interception.
    KeyChanged = 3,
}

impl From<Trust> for ViskaTrust {
    fn from(t: Trust) -> Self {
        match t {
            Trust::Verified => Self::Verified,
            Trust::Unverified => Self::Unverified,
            Trust::KeyChanged => Self::KeyChanged,
            _ => Self::Unknown,
        }
    }
}

/// Where a call is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaCallStateKind {
    /// Created, not yet under way.
    Idle = 0,
    /// The connection and the end-to-end handshake are under way.
    Handshaking = 1,
    /// An incoming call rings here (answer or reject it).
    Ringing = 2,
    /// The peer is being alerted (an outgoing call).
    Alerting = 3,
    /// Answered; see the hold and mute flags.
    Active = 4,
    /// Over; see the end reason.
    Ended = 5,
    /// A state this version does not name.
    Other = 255,
}

/// Why a call ended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaEndReason {
    /// The call has not ended.
    None = 0,
    /// An answered call was hung up (by `ended_by`).
    Hangup = 1,
    /// The callee refused the call.
    Rejected = 2,
    /// The callee was busy.
    Busy = 3,
    /// The caller gave up before an answer.
    Cancelled = 4,
    /// Nobody answered within the ring timeout.
    NoAnswer = 5,
    /// The handshake and invitation did not complete in time.
    SetupTimeout = 6,
    /// The end-to-end handshake failed.
    HandshakeFailed = 7,
    /// The peer broke the protocol.
    ProtocolError = 8,
    /// The connection could not be made, or was lost.
    ConnectionLost = 9,
    /// The peer's phone refused the connection (no room for another caller); try later.
    ConnectionRefused = 10,
    /// A reason this version does not name.
    Other = 255,
}

/// Which side did something.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViskaSide {
    /// Not applicable.
    None = 0,
    /// This end.
    Local = 1,
    /// The peer.
    Remote = 2,
}

impl From<Side> for ViskaSide {
    fn from(s: Side) -> Self {
        match s {
            Side::Local => Self::Local,
            Side::Remote => Self::Remote,
        }
    }
}

/// A call's state, as a plain struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViskaCallState {
    /// Where the call is.
    pub kind: ViskaCallStateKind,
    /// `ACTIVE`: this end put the call on hold.
    pub local_hold: bool,
    /// `ACTIVE`: the peer put the call on hold.
    pub remote_hold: bool,
    /// `ACTIVE`: this end's microphone is muted.
    pub muted: bool,
    /// `ENDED`: why.
    pub end_reason: ViskaEndReason,
    /// `ENDED` by hang-up, rejection, busy or cancel: who did it.
    pub ended_by: ViskaSide,
    /// `ENDED` by hang-up or rejection: the reason code given on the wire (0 normal,
    /// 1 declined, 2 unsupported, 3 untrusted, 4 timeout, 5 error, 6 security).
    pub wire_reason: u8,
}

impl From<CallState> for ViskaCallState {
    fn from(state: CallState) -> Self {
        let mut s = Self {
            kind: ViskaCallStateKind::Other,
            local_hold: false,
            remote_hold: false,
            muted: false,
            end_reason: ViskaEndReason::None,
            ended_by: ViskaSide::None,
            wire_reason: 0,
        };
        match state {
            CallState::Idle => s.kind = ViskaCallStateKind::Idle,
            CallState::Handshaking => s.kind = ViskaCallStateKind::Handshaking,
            CallState::Ringing => s.kind = ViskaCallStateKind::Ringing,
            CallState::Alerting => s.kind = ViskaCallStateKind::Alerting,
            CallState::Active {
                local_hold,
                remote_hold,
                muted,
            } => {
                s.kind = ViskaCallStateKind::Active;
                s.local_hold = local_hold;
                s.remote_hold = remote_hold;
                s.muted = muted;
            }
            CallState::Ended(reason) => {
                s.kind = ViskaCallStateKind::Ended;
                let (why, by, wire) = match reason {
                    EndReason::Hangup { by, reason } => {
                        (ViskaEndReason::Hangup, by.into(), reason.code())
                    }
                    EndReason::Rejected { by, reason } => {
                        (ViskaEndReason::Rejected, by.into(), reason.code())
                    }
                    EndReason::Busy { by } => (ViskaEndReason::Busy, by.into(), 0),
                    EndReason::Cancelled { by } => (ViskaEndReason::Cancelled, by.into(), 0),
                    EndReason::NoAnswer => (ViskaEndReason::NoAnswer, ViskaSide::None, 0),
                    EndReason::SetupTimeout => (ViskaEndReason::SetupTimeout, ViskaSide::None, 0),
                    EndReason::HandshakeFailed => {
                        (ViskaEndReason::HandshakeFailed, ViskaSide::None, 0)
                    }
                    EndReason::ProtocolError => (ViskaEndReason::ProtocolError, ViskaSide::None, 0),
                    EndReason::ConnectionLost => {
                        (ViskaEndReason::ConnectionLost, ViskaSide::None, 0)
                    }
                    EndReason::ConnectionRefused => {
                        (ViskaEndReason::ConnectionRefused, ViskaSide::None, 0)
                    }
                    _ => (ViskaEndReason::Other, ViskaSide::None, 0),
                };
                s.end_reason = why;
                s.ended_by = by;
                s.wire_reason = wire;
            }
            _ => {}
        }
        s
    }
}

/// A call's counters and measurements (about once a second, and once more at the end).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViskaCallStats {
    /// Media packets sent.
    pub packets_sent: u64,
    /// Media packets received and authenticated (late ones included).
    pub packets_received: u64,
    /// Media frames not there in time to be played (lost or late).
    pub packets_lost: u64,
    /// Media packets that arrived after their frame was played.
    pub packets_late: u64,
    /// Frames (media and control) that failed authentication or decryption.
    pub decrypt_failures: u64,
    /// Frames replaced by packet-loss concealment.
    pub concealed_frames: u64,
    /// Frames recovered from forward error correction.
    pub fec_recovered: u64,
    /// Interarrival jitter, in milliseconds.
    pub jitter_ms: f64,
    /// Smoothed round-trip time in milliseconds; negative until measured.
    pub rtt_ms: f64,
    /// Loss (lost or late) in percent of the frames due.
    pub loss_percent: f64,
    /// The encoder's target bitrate, in bits per second.
    pub bitrate_bps: u32,
    /// Opus payload sent over the last interval, in bits per second.
    pub send_bitrate_bps: u32,
}

impl From<&CallStats> for ViskaCallStats {
    fn from(s: &CallStats) -> Self {
        Self {
            packets_sent: s.packets_sent,
            packets_received: s.packets_received,
            packets_lost: s.packets_lost,
            packets_late: s.packets_late,
            decrypt_failures: s.decrypt_failures,
            concealed_frames: s.concealed_frames,
            fec_recovered: s.fec_recovered,
            jitter_ms: s.jitter_ms,
            rtt_ms: s.rtt_ms.unwrap_or(-1.0),
            loss_percent: s.loss_percent(),
            bitrate_bps: s.bitrate_bps,
            send_bitrate_bps: s.send_bitrate_bps,
        }
    }
}

/// Borrows a call handle.
///
/// # Safety
///
/// `call` is NULL or a live call handle.
unsafe fn call_ref<'a>(call: *const ViskaCall) -> Result<&'a CallHandle> {
    // SAFETY: forwarded to the caller.
    unsafe { borrow(call, "call") }.map(|c| &c.handle)
}

/// Runs a command on a call.
///
/// # Safety
///
/// `call` is NULL or a live call handle.
unsafe fn command(
    call: *const ViskaCall,
    f: impl FnOnce(&CallHandle) -> std::result::Result<(), viska::PhoneError>,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: forwarded to the caller.
        let call = unsafe { call_ref(call) }?;
        Ok(f(call)?)
    })
}

/// Answers a ringing incoming call. `VISKA_ERROR_CODE_CALL_ENDED` if it is over,
/// `VISKA_ERROR_CODE_INVALID_STATE` if it does not ring.
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_answer(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::answer) }
}

/// Declines a ringing incoming call.
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_reject(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::reject) }
}

/// Ends the call (cancels it if not yet answered, rejects it if it rings).
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_hangup(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::hangup) }
}

/// Puts an answered call on hold (the peer sees it).
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_hold(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::hold) }
}

/// Takes an answered call off hold.
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_resume(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::resume) }
}

/// The user compared the SAS with the peer and it matched: the peer is verified in this
/// call and every later call with it on this phone (see `viska_phone_verified_peers`).
/// Only once keys are ready.
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_mark_verified(call: *const ViskaCall) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, CallHandle::mark_verified) }
}

/// Mutes (`true`) or unmutes the microphone of an answered call.
///
/// # Safety
///
/// `call` is a live call handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_mute(call: *const ViskaCall, muted: bool) -> *mut ViskaError {
    // SAFETY: NULL or live per the caller.
    unsafe { command(call, |c| c.mute(muted)) }
}

/// Sends DTMF keys (`0-9 * # A-D`), end-to-end encrypted, each held `duration_ms`
/// (40..=65535; 0 for the default 100 ms), in an answered call.
///
/// # Safety
///
/// `call` is a live call handle; `digits` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_send_dtmf(
    call: *const ViskaCall,
    digits: *const c_char,
    duration_ms: u32,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        // SAFETY: NUL-terminated per the caller.
        let digits = unsafe { str_arg(digits, "digits") }?;
        match duration_ms {
            0 => call.send_dtmf(digits)?,
            ms => call.send_dtmf_with_duration(digits, Duration::from_millis(ms.into()))?,
        }
        Ok(())
    })
}

/// Sends `len` bytes of opaque call data, end-to-end encrypted, in an answered call.
///
/// # Safety
///
/// `call` is a live call handle; `data` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_send_data(
    call: *const ViskaCall,
    data: *const u8,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        // SAFETY: `len` readable bytes per the caller.
        let data = unsafe { bytes_arg(data, len, "data") }?;
        Ok(call.send_data(data.to_vec())?)
    })
}

/// Moves the call's capture to the input device `name` (NULL: the default one) without
/// interrupting it; the outcome arrives as an audio event.
///
/// # Safety
///
/// `call` is a live call handle; `name` NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_switch_input_device(
    call: *const ViskaCall,
    name: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let name = unsafe { opt_str_arg(name, "name") }?;
        Ok(call.switch_input_device(name)?)
    })
}

/// Moves the call's playback to the output device `name` (NULL: the default one).
///
/// # Safety
///
/// `call` is a live call handle; `name` NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_switch_output_device(
    call: *const ViskaCall,
    name: *const c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        // SAFETY: NULL or NUL-terminated per the caller.
        let name = unsafe { opt_str_arg(name, "name") }?;
        Ok(call.switch_output_device(name)?)
    })
}

/// The call's state now, into `*out`.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_state(
    call: *const ViskaCall,
    out: *mut ViskaCallState,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, call.state().into()) };
        Ok(())
    })
}

/// The call's latest statistics, into `*out`.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_stats(
    call: *const ViskaCall,
    out: *mut ViskaCallStats,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, (&call.stats()).into()) };
        Ok(())
    })
}

/// The short authentication string to compare with the peer ("123 456"), into `*out` (free it
/// with `viska_string_free`); NULL until the keys are ready.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_sas(
    call: *const ViskaCall,
    out: *mut *mut c_char,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        let sas = call.sas().map_or(std::ptr::null_mut(), into_c_string);
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, sas) };
        Ok(())
    })
}

/// The peer's authenticated public key: `*known_out` is set to whether the peer is
/// authenticated yet, and if so its `VISKA_PUBLIC_KEY_LEN` bytes are written to `key_out`;
/// the trust in it goes to `*trust_out` (`VISKA_TRUST_UNKNOWN` before). `key_out` and
/// `trust_out` may be NULL.
///
/// # Safety
///
/// `call` is a live call handle; `key_out` NULL or `VISKA_PUBLIC_KEY_LEN` writable bytes;
/// `trust_out` NULL or a valid pointer; `known_out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_peer(
    call: *const ViskaCall,
    key_out: *mut u8,
    trust_out: *mut ViskaTrust,
    known_out: *mut bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let known_out = out_arg(known_out, "known_out")?;
        let snapshot = call.snapshot();
        if let (Some(peer), false) = (snapshot.peer.as_ref(), key_out.is_null()) {
            // SAFETY: VISKA_PUBLIC_KEY_LEN writable bytes per the caller.
            unsafe { copy_out(&peer.to_bytes(), key_out) };
        }
        let trust = snapshot.trust.map_or(ViskaTrust::Unknown, ViskaTrust::from);
        // SAFETY: NULL or writable per the caller.
        unsafe { write(trust_out, trust) };
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(known_out, snapshot.peer.is_some()) };
        Ok(())
    })
}

/// The SFrame suite of the call's media and control data (a `VISKA_SUITE_*` id) into
/// `*out`; 0 until the keys are ready.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_suite(
    call: *const ViskaCall,
    out: *mut u16,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        let suite = call.snapshot().suite.map_or(0, |s| s.id());
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, suite) };
        Ok(())
    })
}

/// The call's id (the same at both ends), `VISKA_CALL_ID_LEN` bytes into `out`.
///
/// # Safety
///
/// `call` is a live call handle; `out` points to `VISKA_CALL_ID_LEN` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_id(call: *const ViskaCall, out: *mut u8) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        // SAFETY: VISKA_CALL_ID_LEN writable bytes per the caller.
        unsafe { copy_out(&call.id().0, out) };
        Ok(())
    })
}

/// Whether the call has ended and its teardown is complete (final statistics, audio files
/// finished, connection closed), into `*out`.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_is_ended(
    call: *const ViskaCall,
    out: *mut bool,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, call.is_ended()) };
        Ok(())
    })
}

/// Another handle to the same call, into `*out` (free each with `viska_call_free`): for
/// keeping a call a callback lent.
///
/// # Safety
///
/// `call` is a live call handle; `out` a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_clone(
    call: *const ViskaCall,
    out: *mut *mut ViskaCall,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let call = unsafe { call_ref(call) }?;
        let out = out_arg(out, "out")?;
        let handle = Box::new(ViskaCall {
            handle: call.clone(),
        });
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, Box::into_raw(handle)) };
        Ok(())
    })
}

/// Frees a call handle (the call goes on; hang it up first to end it). NULL is fine.
///
/// # Safety
///
/// `call` is NULL or a call handle the caller owns, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_call_free(call: *mut ViskaCall) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(call) }
}

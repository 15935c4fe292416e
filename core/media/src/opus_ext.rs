//! The thin unsafe layer over libopus (through `opusic-sys`).
//!
//! The `opus` crate keeps its raw encoder and decoder pointers private, so it cannot reach the
//! controls Viska depends on: decoder complexity (which switches on the neural packet loss
//! concealment and OSCE enhancement of libopus 1.5+), the DRED duration on the encoder, and the
//! DRED decoding calls. This module owns the raw libopus states itself and offers a small safe
//! surface to `codec.rs`. Every function here returns raw libopus status codes (negative
//! `c_int`s); `codec.rs` turns them into typed errors.
//!
//! Invariants kept by this module, relied on by every `unsafe` block:
//! - each wrapper owns exactly one non-null libopus state, created by the matching `*_create`
//!   and destroyed exactly once in `Drop`;
//! - states are only reached through `&mut self`, so libopus never sees concurrent use;
//! - every buffer passed to libopus is a live Rust slice whose length is passed alongside (or
//!   bounds the frame size passed), and lengths are converted to `i32` with checks.
#![allow(unsafe_code)]

use core::ffi::c_int;
use core::ptr::NonNull;

use opusic_sys as ffi;

/// The only rate and channel count Viska runs libopus at.
const RATE: i32 = 48_000;
const CHANNELS: c_int = 1;

/// Converts a length to the `i32` libopus expects, refusing what does not fit.
fn len_i32(len: usize) -> Result<i32, c_int> {
    i32::try_from(len).map_err(|_| ffi::OPUS_BAD_ARG)
}

/// Encoder settings that all take a single `opus_int32` argument, so the variadic
/// `opus_encoder_ctl` call is always made with the argument type libopus reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EncoderSetting {
    Bitrate(i32),
    Complexity(i32),
    InbandFec(bool),
    PacketLossPercent(i32),
    Dtx(bool),
    /// In units of 10 ms.
    DredDuration(i32),
    SignalVoice,
}

impl EncoderSetting {
    fn request_and_value(self) -> (c_int, i32) {
        match self {
            Self::Bitrate(v) => (ffi::OPUS_SET_BITRATE_REQUEST, v),
            Self::Complexity(v) => (ffi::OPUS_SET_COMPLEXITY_REQUEST, v),
            Self::InbandFec(on) => (ffi::OPUS_SET_INBAND_FEC_REQUEST, i32::from(on)),
            Self::PacketLossPercent(v) => (ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST, v),
            Self::Dtx(on) => (ffi::OPUS_SET_DTX_REQUEST, i32::from(on)),
            Self::DredDuration(v) => (ffi::OPUS_SET_DRED_DURATION_REQUEST, v),
            Self::SignalVoice => (ffi::OPUS_SET_SIGNAL_REQUEST, ffi::OPUS_SIGNAL_VOICE),
        }
    }
}

/// A libopus encoder at 48 kHz mono, application VOIP.
#[derive(Debug)]
pub(crate) struct RawEncoder {
    state: NonNull<ffi::OpusEncoder>,
}

// SAFETY: the encoder state is plain heap memory with no thread affinity; it is owned
// exclusively by this value and only touched through `&mut self`.
unsafe impl Send for RawEncoder {}

impl RawEncoder {
    pub(crate) fn new_voip() -> Result<Self, c_int> {
        let mut error: c_int = ffi::OPUS_OK;
        // SAFETY: `error` is a valid out-pointer for the duration of the call; the arguments are
        // a supported rate, channel count and application.
        let ptr = unsafe {
            ffi::opus_encoder_create(RATE, CHANNELS, ffi::OPUS_APPLICATION_VOIP, &mut error)
        };
        match NonNull::new(ptr) {
            Some(state) if error == ffi::OPUS_OK => Ok(Self { state }),
            Some(state) => {
                // SAFETY: libopus returned a state together with an error; free it once here.
                unsafe { ffi::opus_encoder_destroy(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == ffi::OPUS_OK {
                ffi::OPUS_ALLOC_FAIL
            } else {
                error
            }),
        }
    }

    pub(crate) fn set(&mut self, setting: EncoderSetting) -> Result<(), c_int> {
        let (request, value) = setting.request_and_value();
        // SAFETY: `state` is a live encoder (module invariant); every request in
        // `EncoderSetting` reads exactly one `opus_int32` vararg, which is what we pass.
        let rc = unsafe { ffi::opus_encoder_ctl(self.state.as_ptr(), request, value) };
        if rc == ffi::OPUS_OK { Ok(()) } else { Err(rc) }
    }

    /// Samples of algorithmic delay (the Ogg Opus pre-skip).
    pub(crate) fn lookahead(&mut self) -> Result<i32, c_int> {
        let mut value: i32 = 0;
        // SAFETY: `state` is live; OPUS_GET_LOOKAHEAD writes one `opus_int32` through the
        // pointer, which points at a local that outlives the call.
        let rc = unsafe {
            ffi::opus_encoder_ctl(
                self.state.as_ptr(),
                ffi::OPUS_GET_LOOKAHEAD_REQUEST,
                &mut value as *mut i32,
            )
        };
        if rc == ffi::OPUS_OK {
            Ok(value)
        } else {
            Err(rc)
        }
    }

    /// Whether the last frame encoded was a comfort-noise update or not encoded because of
    /// DTX (`OPUS_GET_IN_DTX`).
    pub(crate) fn in_dtx(&mut self) -> Result<bool, c_int> {
        let mut value: i32 = 0;
        // SAFETY: `state` is live; OPUS_GET_IN_DTX writes one `opus_int32` through the
        // pointer, which points at a local that outlives the call.
        let rc = unsafe {
            ffi::opus_encoder_ctl(
                self.state.as_ptr(),
                ffi::OPUS_GET_IN_DTX_REQUEST,
                &mut value as *mut i32,
            )
        };
        if rc == ffi::OPUS_OK {
            Ok(value != 0)
        } else {
            Err(rc)
        }
    }

    /// Encodes exactly `pcm.len()` samples (a valid Opus frame size) into `out`.
    pub(crate) fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, c_int> {
        let frame = len_i32(pcm.len())?;
        // libopus never writes more than `max_data_bytes`, and packets above 1275 bytes per
        // frame plus extensions never occur at Viska's rates; clamping keeps the cast exact.
        let max_bytes = len_i32(out.len().min(1 << 20))?;
        // SAFETY: `state` is live; `pcm` holds `frame` readable samples (mono); `out` holds at
        // least `max_bytes` writable bytes.
        let rc = unsafe {
            ffi::opus_encode(
                self.state.as_ptr(),
                pcm.as_ptr(),
                frame,
                out.as_mut_ptr(),
                max_bytes,
            )
        };
        usize::try_from(rc).map_err(|_| rc)
    }
}

impl Drop for RawEncoder {
    fn drop(&mut self) {
        // SAFETY: `state` came from `opus_encoder_create` and is destroyed only here.
        unsafe { ffi::opus_encoder_destroy(self.state.as_ptr()) };
    }
}

/// A libopus decoder at 48 kHz mono.
#[derive(Debug)]
pub(crate) struct RawDecoder {
    state: NonNull<ffi::OpusDecoder>,
}

// SAFETY: as for `RawEncoder`: exclusively owned plain memory, used through `&mut self` only.
unsafe impl Send for RawDecoder {}

impl RawDecoder {
    pub(crate) fn new() -> Result<Self, c_int> {
        let mut error: c_int = ffi::OPUS_OK;
        // SAFETY: `error` is a valid out-pointer; rate and channels are supported values.
        let ptr = unsafe { ffi::opus_decoder_create(RATE, CHANNELS, &mut error) };
        match NonNull::new(ptr) {
            Some(state) if error == ffi::OPUS_OK => Ok(Self { state }),
            Some(state) => {
                // SAFETY: a state returned together with an error is freed once here.
                unsafe { ffi::opus_decoder_destroy(state.as_ptr()) };
                Err(error)
            }
            None => Err(if error == ffi::OPUS_OK {
                ffi::OPUS_ALLOC_FAIL
            } else {
                error
            }),
        }
    }

    /// Decoder complexity 0..=10: 5 enables deep PLC, 6 LACE, 7+ NoLACE enhancement.
    pub(crate) fn set_complexity(&mut self, complexity: i32) -> Result<(), c_int> {
        // SAFETY: `state` is live; OPUS_SET_COMPLEXITY reads one `opus_int32` vararg.
        let rc = unsafe {
            ffi::opus_decoder_ctl(
                self.state.as_ptr(),
                ffi::OPUS_SET_COMPLEXITY_REQUEST,
                complexity,
            )
        };
        if rc == ffi::OPUS_OK { Ok(()) } else { Err(rc) }
    }

    /// Back to the state of a new decoder (`OPUS_RESET_STATE`); the settings stay.
    pub(crate) fn reset(&mut self) -> Result<(), c_int> {
        // SAFETY: `state` is live; OPUS_RESET_STATE takes no argument.
        let rc = unsafe { ffi::opus_decoder_ctl(self.state.as_ptr(), ffi::OPUS_RESET_STATE) };
        if rc == ffi::OPUS_OK { Ok(()) } else { Err(rc) }
    }

    /// Decodes `packet` (or conceals when `None`) into `out`, whose length is passed as the
    /// frame size: the maximum for a normal decode, the exact duration for PLC and FEC.
    pub(crate) fn decode(
        &mut self,
        packet: Option<&[u8]>,
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, c_int> {
        let frame = len_i32(out.len())?;
        let (data, len) = match packet {
            Some(p) if !p.is_empty() => (p.as_ptr(), len_i32(p.len())?),
            _ => (core::ptr::null(), 0),
        };
        // SAFETY: `state` is live; `data` is either null with `len` 0 (loss, which libopus
        // accepts) or points at `len` readable bytes; `out` holds `frame` writable samples
        // (mono).
        let rc = unsafe {
            ffi::opus_decode(
                self.state.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        };
        usize::try_from(rc).map_err(|_| rc)
    }

    /// Decodes redundancy held in `dred` at `offset` samples before the start of the packet it
    /// was parsed from, `out.len()` samples long.
    pub(crate) fn decode_dred(
        &mut self,
        dred: &DredState,
        offset: i32,
        out: &mut [i16],
    ) -> Result<usize, c_int> {
        if !dred.parsed {
            return Err(ffi::OPUS_BAD_ARG);
        }
        let frame = len_i32(out.len())?;
        // SAFETY: `state` and `dred.dred` are live libopus objects owned by their wrappers;
        // `dred.dred` was fully initialised by the successful `opus_dred_parse` that set
        // `parsed` (checked above); `out` holds `frame` writable samples.
        let rc = unsafe {
            ffi::opus_decoder_dred_decode(
                self.state.as_ptr(),
                dred.dred.as_ptr(),
                offset,
                out.as_mut_ptr(),
                frame,
            )
        };
        usize::try_from(rc).map_err(|_| rc)
    }
}

impl Drop for RawDecoder {
    fn drop(&mut self) {
        // SAFETY: `state` came from `opus_decoder_create` and is destroyed only here.
        unsafe { ffi::opus_decoder_destroy(self.state.as_ptr()) };
    }
}

/// Samples (at 48 kHz) carried by `packet`, or a libopus error for a malformed one.
pub(crate) fn packet_samples(packet: &[u8]) -> Result<usize, c_int> {
    if packet.is_empty() {
        return Err(ffi::OPUS_INVALID_PACKET);
    }
    let len = len_i32(packet.len())?;
    // SAFETY: `packet` is a live slice of `len` bytes; the function only reads it.
    let rc = unsafe { ffi::opus_packet_get_nb_samples(packet.as_ptr(), len, RATE) };
    usize::try_from(rc).map_err(|_| rc)
}

/// Whether `packet` carries in-band FEC (LBRR) data for the frame before it.
pub(crate) fn packet_has_lbrr(packet: &[u8]) -> bool {
    let Ok(len) = len_i32(packet.len()) else {
        return false;
    };
    if len == 0 {
        return false;
    }
    // SAFETY: `packet` is a live slice of `len` bytes; the function only reads it.
    let rc = unsafe { ffi::opus_packet_has_lbrr(packet.as_ptr(), len) };
    rc > 0
}

/// The DRED (deep redundancy) decoder and the parsed redundancy of one packet.
#[derive(Debug)]
pub(crate) struct DredState {
    decoder: NonNull<ffi::OpusDREDDecoder>,
    dred: NonNull<ffi::OpusDRED>,
    /// Whether the last `parse` succeeded: `opus_dred_alloc` leaves the `OpusDRED` uninitialised
    /// and a failed parse may leave it half-written, so decoding from it is allowed only then.
    parsed: bool,
}

// SAFETY: both objects are exclusively owned plain memory, used through `&mut self` (parse) or
// `&self` borrowed under the owner's `&mut` (decode) only.
unsafe impl Send for DredState {}

/// What `DredState::parse` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DredSpan {
    /// How far back (samples before the packet start) the redundancy reaches; 0 = none.
    pub(crate) reach: i32,
    /// Samples at the recent end that hold no redundancy.
    pub(crate) end: i32,
}

impl DredState {
    pub(crate) fn new() -> Result<Self, c_int> {
        let mut error: c_int = ffi::OPUS_OK;
        // SAFETY: `error` is a valid out-pointer.
        let dec = unsafe { ffi::opus_dred_decoder_create(&mut error) };
        let Some(decoder) = NonNull::new(dec) else {
            return Err(if error == ffi::OPUS_OK {
                ffi::OPUS_ALLOC_FAIL
            } else {
                error
            });
        };
        if error != ffi::OPUS_OK {
            // SAFETY: created above, freed once on this error path.
            unsafe { ffi::opus_dred_decoder_destroy(decoder.as_ptr()) };
            return Err(error);
        }
        let mut error: c_int = ffi::OPUS_OK;
        // SAFETY: `error` is a valid out-pointer.
        let dred = unsafe { ffi::opus_dred_alloc(&mut error) };
        match NonNull::new(dred) {
            Some(dred) if error == ffi::OPUS_OK => Ok(Self {
                decoder,
                dred,
                parsed: false,
            }),
            other => {
                // SAFETY: each object created above is freed exactly once on this error path.
                unsafe {
                    if let Some(d) = other {
                        ffi::opus_dred_free(d.as_ptr());
                    }
                    ffi::opus_dred_decoder_destroy(decoder.as_ptr());
                }
                Err(if error == ffi::OPUS_OK {
                    ffi::OPUS_ALLOC_FAIL
                } else {
                    error
                })
            }
        }
    }

    /// Parses and fully decodes the DRED carried by `packet`, up to `max_samples` back.
    pub(crate) fn parse(&mut self, packet: &[u8], max_samples: i32) -> Result<DredSpan, c_int> {
        let len = len_i32(packet.len())?;
        if len == 0 {
            return Err(ffi::OPUS_INVALID_PACKET);
        }
        let mut end: c_int = 0;
        // SAFETY: both objects are live; `packet` is `len` readable bytes; `end` is a valid
        // out-pointer; processing is not deferred, so nothing keeps a pointer into `packet`.
        let rc = unsafe {
            ffi::opus_dred_parse(
                self.decoder.as_ptr(),
                self.dred.as_ptr(),
                packet.as_ptr(),
                len,
                max_samples,
                RATE,
                &mut end,
                0,
            )
        };
        self.parsed = rc >= 0;
        if rc < 0 {
            Err(rc)
        } else {
            Ok(DredSpan { reach: rc, end })
        }
    }
}

impl Drop for DredState {
    fn drop(&mut self) {
        // SAFETY: both came from their libopus constructors and are freed only here.
        unsafe {
            ffi::opus_dred_free(self.dred.as_ptr());
            ffi::opus_dred_decoder_destroy(self.decoder.as_ptr());
        }
    }
}

/// The libopus version string.
pub(crate) fn version() -> &'static str {
    // SAFETY: libopus returns a pointer to a static NUL-terminated string.
    let s = unsafe { core::ffi::CStr::from_ptr(ffi::opus_get_version_string()) };
    s.to_str().unwrap_or("libopus")
}

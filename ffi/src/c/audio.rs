//! The application's audio ends ([`viska::phone::AppAudio`]): the application pushes what it
//! captured into a [`ViskaAppCapture`] and pulls what to play from a [`ViskaAppPlayback`],
//! from its own audio thread, at its own rate and buffer size. Both come from
//! [`viska_phone_config_set_audio_app`](super::config::viska_phone_config_set_audio_app).

use std::sync::Mutex;

use viska::phone::{AppCapture, AppPlayback};

use super::error::ViskaError;
use super::util::{borrow, bytes_arg, out_arg, run, write};

/// The capture end: what the application pushes reaches every call of the phone.
pub struct ViskaAppCapture {
    pub(crate) inner: AppCapture,
}

/// The playback end: what the application pulls is every call of the phone, mixed.
pub struct ViskaAppPlayback {
    pub(crate) inner: Mutex<AppPlayback>,
}

/// Pushes `len` captured interleaved 16-bit samples (any amount; the channels and rate given
/// to `viska_phone_config_set_audio_app`). Never blocks on a call.
///
/// # Safety
///
/// `capture` is a live capture end; `samples` points to `len` readable samples.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_capture_push(
    capture: *const ViskaAppCapture,
    samples: *const i16,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let capture = unsafe { borrow(capture, "capture") }?;
        // SAFETY: `len` readable samples per the caller.
        let samples = unsafe { bytes_arg(samples, len, "samples") }?;
        capture.inner.push(samples);
        Ok(())
    })
}

/// How many calls' captures are attached (calls whose audio is open), into `*out`.
///
/// # Safety
///
/// `capture` is a live capture end; `out` is a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_capture_attached(
    capture: *const ViskaAppCapture,
    out: *mut usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let capture = unsafe { borrow(capture, "capture") }?;
        let out = out_arg(out, "out")?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, capture.inner.attached()) };
        Ok(())
    })
}

/// Fills `out` with `len` interleaved 16-bit samples to play: every call mixed, silence where
/// nothing has arrived yet. Never blocks on a call.
///
/// # Safety
///
/// `playback` is a live playback end; `out` points to `len` writable samples.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_playback_pull(
    playback: *const ViskaAppPlayback,
    out: *mut i16,
    len: usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let playback = unsafe { borrow(playback, "playback") }?;
        if len == 0 {
            return Ok(());
        }
        let out = out_arg(out, "out")?;
        // SAFETY: `len` writable samples per the caller, not aliased during this call.
        let out = unsafe { std::slice::from_raw_parts_mut(out, len) };
        playback
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pull(out);
        Ok(())
    })
}

/// How many calls' playbacks are attached (calls with their audio open, or audio left to
/// pull), into `*out`.
///
/// # Safety
///
/// `playback` is a live playback end; `out` is a valid pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_playback_attached(
    playback: *const ViskaAppPlayback,
    out: *mut usize,
) -> *mut ViskaError {
    run(|| {
        // SAFETY: NULL or live per the caller.
        let playback = unsafe { borrow(playback, "playback") }?;
        let out = out_arg(out, "out")?;
        let attached = playback
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .attached();
        // SAFETY: non-NULL and writable per the caller.
        unsafe { write(out, attached) };
        Ok(())
    })
}

/// Frees a capture end (calls then hear silence from it). NULL is fine.
///
/// # Safety
///
/// `capture` is NULL or a capture end not yet freed, not in use on another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_capture_free(capture: *mut ViskaAppCapture) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(capture) }
}

/// Frees a playback end. NULL is fine.
///
/// # Safety
///
/// `playback` is NULL or a playback end not yet freed, not in use on another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn viska_app_playback_free(playback: *mut ViskaAppPlayback) {
    // SAFETY: NULL or owned and not yet freed, per the caller.
    unsafe { super::util::free(playback) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handles_are_send_and_sync() {
        // Both ends are used from the application's threads.
        fn is<T: Send + Sync>() {}
        is::<super::ViskaAppCapture>();
        is::<super::ViskaAppPlayback>();
    }
}

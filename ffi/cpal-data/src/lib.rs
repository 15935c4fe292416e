//! cpal hands stream callbacks a type-erased buffer, [`cpal::Data`], that only its `unsafe`
//! constructor can build from memory. An audio host written in Rust (cpal's `custom` host: a
//! virtual device, a network sound card, the deterministic devices of Viska's tests) needs
//! that constructor; this crate wraps it once, over a typed slice, so its users stay free of
//! `unsafe`. A closure that swaps the lent `Data` for another one aborts the process (see
//! [`with_output_data`]).

use cpal::{Data, SizedSample};

/// Lends `samples` to `use_data` as the `&Data` an input stream callback receives.
pub fn with_input_data<T: SizedSample, R>(
    samples: &mut [T],
    use_data: impl FnOnce(&Data) -> R,
) -> R {
    with_output_data(samples, |data| use_data(data))
}

/// Lends `samples` to `use_data` as the `&mut Data` an output stream callback fills.
///
/// # Aborts
///
/// If `use_data` replaces the `Data` it was lent with another one (`std::mem::swap` with the
/// `Data` of a nested call): the other `Data` may point at memory about to be freed.
pub fn with_output_data<T: SizedSample, R>(
    samples: &mut [T],
    use_data: impl FnOnce(&mut Data) -> R,
) -> R {
    let ptr: *mut T = samples.as_mut_ptr();
    let len = samples.len();
    // SAFETY: `from_parts` needs a pointer to the first sample, the length in samples and
    // the format of those samples. All three come from `samples`, a live slice borrowed
    // exclusively for this call, whose element type `T` is the format named (`T::FORMAT`).
    // `data` is dropped before the borrow ends, so it never outlives the memory, unless the
    // closure moved it out: see the check below.
    let mut data = unsafe { Data::from_parts(ptr.cast(), len, T::FORMAT) };
    let result = use_data(&mut data);
    // `Data` has no lifetime, so safe code could swap this `Data` with another one (say, of a
    // nested call over a buffer that is then freed) and keep using it. Whoever ends up holding
    // a foreign `Data` is caught here, when the innermost call returns and before any such
    // buffer is freed; there is no way to go on soundly, so the process stops.
    if data.bytes().as_ptr() != ptr.cast::<u8>().cast_const()
        || data.len() != len
        || data.sample_format() != T::FORMAT
    {
        std::process::abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sees_and_changes_the_samples_with_their_format() {
        let mut samples = [0.25f32, -0.5, 1.0];
        let seen = with_input_data(&mut samples, |data| {
            (
                data.sample_format(),
                data.len(),
                data.as_slice::<f32>().map(<[f32]>::to_vec),
                data.as_slice::<i16>().is_none(),
            )
        });
        assert_eq!(
            seen,
            (
                cpal::SampleFormat::F32,
                3,
                Some(vec![0.25, -0.5, 1.0]),
                true
            )
        );
        let mut pcm = [0i16; 4];
        with_output_data(&mut pcm, |data| {
            if let Some(out) = data.as_slice_mut::<i16>() {
                out.copy_from_slice(&[1, -2, 3, -4]);
            }
        });
        assert_eq!(pcm, [1, -2, 3, -4]);
    }

    /// Runs in a child process (the parent checks it aborted): swaps the outer `Data` with
    /// the inner one, whose buffer is freed right after.
    #[cfg(unix)]
    #[test]
    fn swapping_the_lent_data_aborts() {
        if std::env::var_os("VISKA_CPAL_DATA_SWAP_CHILD").is_some() {
            let mut outer = [0.0f32; 4];
            with_output_data(&mut outer, |da| {
                let mut inner = vec![0.0f32; 4];
                with_output_data(&mut inner, |db| std::mem::swap(da, db));
                drop(inner);
                if let Some(s) = da.as_slice_mut::<f32>() {
                    s.fill(1.0);
                }
            });
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "tests::swapping_the_lent_data_aborts",
                "--exact",
                "--test-threads=1",
            ])
            .env("VISKA_CPAL_DATA_SWAP_CHILD", "1")
            .status()
            .expect("child");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "the child must abort: {status:?}");
    }
}

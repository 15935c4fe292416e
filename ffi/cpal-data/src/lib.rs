//! cpal hands stream callbacks a type-erased buffer, [`cpal::Data`], that only its `unsafe`
//! constructor can build from memory. An audio host written in Rust (cpal's `custom` host: a
//! virtual device, a network sound card, the deterministic devices of Viska's tests) needs
//! that constructor; this crate wraps it once, over a typed slice, so its users stay free of
//! `unsafe`.

use cpal::{Data, SizedSample};

/// Lends `samples` to `use_data` as the `&Data` an input stream callback receives.
pub fn with_input_data<T: SizedSample, R>(
    samples: &mut [T],
    use_data: impl FnOnce(&Data) -> R,
) -> R {
    with_output_data(samples, |data| use_data(data))
}

/// Lends `samples` to `use_data` as the `&mut Data` an output stream callback fills.
pub fn with_output_data<T: SizedSample, R>(
    samples: &mut [T],
    use_data: impl FnOnce(&mut Data) -> R,
) -> R {
    // SAFETY: `from_parts` needs a pointer to the first sample, the length in samples and
    // the format of those samples. All three come from `samples`, a live slice borrowed
    // exclusively for this call, whose element type `T` is the format named (`T::FORMAT`).
    // `data` is dropped before the borrow ends, so it never outlives the memory.
    let mut data =
        unsafe { Data::from_parts(samples.as_mut_ptr().cast(), samples.len(), T::FORMAT) };
    use_data(&mut data)
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
}

//! Arbitrary bytes as a WAV file through `WavSource`: header parsing, the format, rate, channel
//! and length limits, sample conversion, down-mixing and resampling to 48 kHz. Nothing panics;
//! a file that is accepted yields at most the samples its data can hold after resampling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_media::audio::SAMPLE_RATE;
use viska_media::wav::WavSource;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = WavSource::from_reader(std::io::Cursor::new(data)) else {
        return;
    };
    // Every input sample takes at least one byte and the lowest accepted rate is 8 kHz: at most
    // six output samples per input byte, plus the resampler's rounding.
    let bound = data.len() * (SAMPLE_RATE as usize / 8_000) + 1;
    assert!(
        source.samples().len() <= bound,
        "{} samples from {} bytes",
        source.samples().len(),
        data.len()
    );
});

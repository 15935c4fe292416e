//! Arbitrary bytes through the libopus wrapper's decode paths (the one `unsafe` layer of the
//! media crate): decode, FEC recovery, DRED recovery and packet inspection never panic and never
//! write outside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_media::codec::{self, OpusConfig, OpusDecoder};

fuzz_target!(|data: &[u8]| {
    let config = OpusConfig {
        decoder_complexity: 0,
        ..OpusConfig::default()
    };
    let Ok(mut decoder) = OpusDecoder::new(&config) else { return };
    let mut out = vec![0i16; config.frame_samples()];
    let _ = codec::packet_samples(data);
    let _ = codec::packet_has_fec(data);
    if let Ok(n) = decoder.decode(data, &mut out) {
        assert!(n <= out.len());
    }
    if let Ok(n) = decoder.decode_fec(data, &mut out) {
        assert!(n <= out.len());
    }
    if let Ok(Some(n)) = decoder.decode_dred(data, config.frame_samples(), &mut out) {
        assert!(n <= out.len());
    }
    if let Ok(n) = decoder.conceal(&mut out) {
        assert!(n <= out.len());
    }
});

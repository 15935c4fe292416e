//! Unprotecting arbitrary bytes with fixed keys installed (KIDs 0..4, both suites): never panics,
//! and nothing forged authenticates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_sframe::{BaseKey, CipherSuite, KeyId, ReplayConfig, SframeReceiver};

fuzz_target!(|data: &[u8]| {
    // First byte picks the metadata length, so metadata handling is fuzzed too.
    let Some((&meta_len, rest)) = data.split_first() else { return };
    let (metadata, frame) = rest.split_at(usize::from(meta_len).min(rest.len()));
    for suite in CipherSuite::ALL {
        let mut receiver =
            SframeReceiver::new(suite, ReplayConfig { window: 64 }).expect("valid config");
        for kid in 0..4 {
            receiver.add_key(KeyId(kid), &BaseKey::new(vec![0x42; 32])).expect("valid key");
        }
        let mut out = [0u8; 512];
        let result = receiver.unprotect(metadata, frame, &mut out);
        assert!(result.is_err(), "fuzzer forged an authentic frame");
        let mut small = [0u8; 3];
        let _ = receiver.unprotect(metadata, frame, &mut small);
    }
});

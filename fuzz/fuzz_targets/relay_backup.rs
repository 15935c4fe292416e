//! Any bytes as a relay backup (`core/relay/src/backup.rs`, built here alone): the header
//! parser, the chunk reader under a fixed key (so truncations, bad tags and lengths are
//! reached without Argon2 per input), and the archive parser as if the bytes had decrypted:
//! typed errors only, never a panic, memory bounded by one chunk.
#![no_main]

#[path = "../../core/relay/src/backup.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod backup;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    backup::fuzz_parse(data);
});

//! Any bytes as a key-store backup: the header parser and the payload decoder (as if the bytes
//! had decrypted) return typed errors, never panic, and allocate no more than the input bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    viska_store::fuzz_parse_backup(data);
});

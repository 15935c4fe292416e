//! Arbitrary bytes as a decrypted media payload: decoding never panics, and a payload that
//! decodes re-encodes to exactly the same bytes (the layout has no redundant encodings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_proto::decode_media_payload;
use viska_proto::encode_media_payload;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, opus)) = decode_media_payload(data) {
        assert_eq!(header.encoded_len() + opus.len(), data.len());
        let mut out = vec![0u8; data.len()];
        let written = encode_media_payload(&header, opus, &mut out).expect("re-encodes");
        assert_eq!(&out[..written], data);
    }
});

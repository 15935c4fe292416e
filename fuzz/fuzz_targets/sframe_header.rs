//! SFrame header decoding of arbitrary bytes: never panics; whatever decodes re-encodes to a
//! header with the same values, byte for byte when the input was minimal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_sframe::SframeHeader;
use viska_sframe::header::MAX_HEADER_LEN;

fuzz_target!(|data: &[u8]| {
    let Ok((header, len)) = SframeHeader::decode(data) else { return };
    assert!(len <= data.len() && len <= MAX_HEADER_LEN);
    let mut buf = [0u8; MAX_HEADER_LEN];
    let written = header.encode(&mut buf).expect("a decoded header always re-encodes");
    assert_eq!(written, header.encoded_len());
    assert!(written <= len, "minimal encoding is never longer than the input's");
    assert_eq!(SframeHeader::decode(&buf[..written]), Ok((header, written)));
    if written == len {
        assert_eq!(&buf[..written], &data[..len]);
    }
});

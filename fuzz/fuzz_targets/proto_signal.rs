//! Arbitrary bytes, delivered in arbitrary chunk sizes, through the signaling frame decoder; and
//! the same bytes as an encrypted control message's plaintext. Nothing panics, memory stays
//! bounded, and whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_proto::signal::MAX_BODY_LEN;
use viska_proto::{ControlMessage, FrameDecoder, ProtoError};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new();
    'stream: for piece in stream.chunks(chunk) {
        decoder.push(piece);
        assert!(decoder.buffered_len() <= MAX_BODY_LEN + 4 + chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let frame = message.to_frame().expect("a decoded message re-encodes");
                    let mut again = FrameDecoder::new();
                    again.push(&frame);
                    assert_eq!(again.next_message(), Ok(Some(message)));
                }
                Ok(None) => break,
                Err(ProtoError::StreamFailed) => break 'stream,
                Err(_) => {}
            }
        }
    }

    if let Ok(message) = ControlMessage::decode(stream) {
        let bytes = message
            .to_bytes()
            .expect("a decoded control message re-encodes");
        assert_eq!(ControlMessage::decode(&bytes), Ok(message));
    }
});

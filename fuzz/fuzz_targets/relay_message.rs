//! Any bytes as a relay control stream (in two chunks split where the input says) and as a
//! group media datagram's routing prefix: typed errors only; a decoded message re-encodes to
//! bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viska_proto::relay::{RelayDecoder, RelayMessage, decode_route, encode_route};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut decoder = RelayDecoder::new();
    decoder.push(a);
    decoder.push(b);
    for _ in 0..64 {
        match decoder.next_message() {
            Ok(Some(message)) => {
                let frame = message.encode().expect("a decoded message encodes");
                let again = RelayMessage::decode(&frame[4..]).expect("and decodes again");
                assert_eq!(again, message);
            }
            Ok(None) => break,
            Err(_) if decoder.has_failed() => break,
            Err(_) => {}
        }
    }
    if let Ok((route, rest)) = decode_route(data) {
        let mut out = Vec::new();
        encode_route(route, &mut out).expect("a decoded route encodes");
        // A longer encoding than needed is valid (RFC 9000 §16); the shortest comes back.
        assert!(out.len() + rest.len() <= data.len());
        assert_eq!(decode_route(&out).map(|(r, _)| r).ok(), Some(route));
    }
});

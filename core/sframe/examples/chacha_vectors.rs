//! Regenerates the cases of `vectors/viska-chacha20poly1305.json` (printed as JSON objects):
//! `cargo run -p viska-sframe --example chacha_vectors`. The checked-in file is verified by
//! `tests/vectors.rs`; this is how it was made.

use viska_sframe::key::{DerivedKey, key_label, salt_label};
use viska_sframe::{BaseKey, CipherSuite, KeyId, SframeHeader, SframeSender};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn main() {
    /// kid, ctr, base key, metadata, plaintext
    type Case = (u64, u64, Vec<u8>, &'static [u8], &'static [u8]);
    let cases: [Case; 3] = [
        (
            0x123,
            0x4567,
            unhex("000102030405060708090a0b0c0d0e0f"),
            b"IETF SFrame WG",
            b"draft-ietf-sframe-enc",
        ),
        (7, 0, (0u8..32).collect(), b"", b"viska opus frame"),
        (
            0xffff_ffff_ffff_ffff,
            0x0100_0000_0000_0000,
            vec![0xa5; 32],
            b"routing",
            &[0u8; 60],
        ),
    ];
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (kid, ctr, base, metadata, pt) in cases {
        let base_key = BaseKey::new(base.clone());
        let derived = DerivedKey::derive(suite, KeyId(kid), &base_key).expect("derive");
        let mut sender = SframeSender::starting_at(suite, KeyId(kid), &base_key, ctr).expect("s");
        let mut frame = vec![0u8; pt.len() + 64];
        let len = sender.protect(metadata, pt, &mut frame).expect("protect");
        let header_len = SframeHeader {
            kid: KeyId(kid),
            ctr,
        }
        .encoded_len();
        let mut aad = frame[..header_len].to_vec();
        aad.extend_from_slice(metadata);
        println!(
            "{{\"cipher_suite\": {}, \"kid\": {kid}, \"ctr\": {ctr}, \"base_key\": \"{}\", \"sframe_key_label\": \"{}\", \"sframe_salt_label\": \"{}\", \"sframe_key\": \"{}\", \"sframe_salt\": \"{}\", \"metadata\": \"{}\", \"nonce\": \"{}\", \"aad\": \"{}\", \"pt\": \"{}\", \"ct\": \"{}\"}},",
            suite.id(),
            hex(&base),
            hex(&key_label(KeyId(kid), suite.id())),
            hex(&salt_label(KeyId(kid), suite.id())),
            hex(derived.expose_key()),
            hex(derived.expose_salt()),
            hex(metadata),
            hex(&derived.nonce(ctr)),
            hex(&aad),
            hex(pt),
            hex(&frame[..len]),
        );
    }
}

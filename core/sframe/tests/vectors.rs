//! Known-answer tests: RFC 9605 Appendix C (headers, and the AES_128_GCM_SHA256_128 frame) and
//! Viska's own vectors for the private-use ChaCha20-Poly1305 suite 0xF001.

use serde::Deserialize;
use viska_sframe::key::{DerivedKey, key_label, salt_label};
use viska_sframe::{
    BaseKey, CipherSuite, KeyId, ReplayConfig, SframeHeader, SframeReceiver, SframeSender,
};

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

#[derive(Deserialize)]
struct HeaderVector {
    kid: u64,
    ctr: u64,
    header: String,
}

#[derive(Deserialize)]
struct FrameVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    sframe_key_label: String,
    sframe_salt_label: String,
    sframe_key: String,
    sframe_salt: String,
    metadata: String,
    nonce: String,
    aad: String,
    pt: String,
    ct: String,
}

#[derive(Deserialize)]
struct VectorFile {
    #[serde(default)]
    header: Vec<HeaderVector>,
    sframe: Vec<FrameVector>,
}

fn load(text: &str) -> VectorFile {
    serde_json::from_str(text).expect("vector file parses")
}

fn rfc() -> VectorFile {
    load(include_str!("../vectors/rfc9605.json"))
}

fn chacha() -> VectorFile {
    load(include_str!("../vectors/viska-chacha20poly1305.json"))
}

#[test]
fn rfc_header_vectors_encode_and_decode() {
    let file = rfc();
    assert_eq!(file.header.len(), 289);
    for v in &file.header {
        let expected = unhex(&v.header);
        let header = SframeHeader {
            kid: KeyId(v.kid),
            ctr: v.ctr,
        };
        let mut buf = [0u8; 17];
        let len = header.encode(&mut buf).expect("encode");
        assert_eq!(
            &buf[..len],
            &expected[..],
            "kid {:#x} ctr {:#x}",
            v.kid,
            v.ctr
        );
        assert_eq!(header.encoded_len(), expected.len());
        assert_eq!(
            SframeHeader::decode(&expected),
            Ok((header, expected.len()))
        );
    }
}

#[test]
fn rfc_kdf_labels_for_every_suite() {
    for v in &rfc().sframe {
        assert_eq!(
            key_label(KeyId(v.kid), v.cipher_suite).to_vec(),
            unhex(&v.sframe_key_label)
        );
        assert_eq!(
            salt_label(KeyId(v.kid), v.cipher_suite).to_vec(),
            unhex(&v.sframe_salt_label)
        );
    }
}

/// Runs one frame vector through derivation, nonce, AAD, sender and receiver.
fn check_frame_vector(v: &FrameVector) {
    let suite = CipherSuite::from_id(v.cipher_suite).expect("suite implemented");
    let kid = KeyId(v.kid);
    let base_key = BaseKey::new(unhex(&v.base_key));
    assert_eq!(
        key_label(kid, v.cipher_suite).to_vec(),
        unhex(&v.sframe_key_label)
    );
    assert_eq!(
        salt_label(kid, v.cipher_suite).to_vec(),
        unhex(&v.sframe_salt_label)
    );

    let derived = DerivedKey::derive(suite, kid, &base_key).expect("derive");
    assert_eq!(derived.expose_key(), &unhex(&v.sframe_key)[..]);
    assert_eq!(derived.expose_salt().to_vec(), unhex(&v.sframe_salt));
    assert_eq!(derived.nonce(v.ctr).to_vec(), unhex(&v.nonce));

    let metadata = unhex(&v.metadata);
    let plaintext = unhex(&v.pt);
    let expected = unhex(&v.ct);
    // AAD = header || metadata; the header is the start of the expected frame.
    let header_len = SframeHeader { kid, ctr: v.ctr }.encoded_len();
    let mut aad = expected[..header_len].to_vec();
    aad.extend_from_slice(&metadata);
    assert_eq!(aad, unhex(&v.aad));

    let mut sender = SframeSender::starting_at(suite, kid, &base_key, v.ctr).expect("sender");
    let mut frame = vec![0u8; expected.len()];
    let len = sender
        .protect(&metadata, &plaintext, &mut frame)
        .expect("protect");
    assert_eq!(&frame[..len], &expected[..]);
    assert_eq!(sender.next_counter(), Some(v.ctr + 1));

    let mut receiver = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
    receiver.add_key(kid, &base_key).expect("add key");
    let mut out = vec![0u8; plaintext.len()];
    let got = receiver
        .unprotect(&metadata, &expected, &mut out)
        .expect("unprotect");
    assert_eq!(
        (got.kid, got.ctr, &out[..got.len]),
        (kid, v.ctr, &plaintext[..])
    );
}

#[test]
fn rfc_aes_128_gcm_frame_vector() {
    let file = rfc();
    let vectors: Vec<_> = file
        .sframe
        .iter()
        .filter(|v| v.cipher_suite == 0x0004)
        .collect();
    assert_eq!(vectors.len(), 1);
    for v in vectors {
        check_frame_vector(v);
    }
}

#[test]
fn viska_chacha20_poly1305_frame_vectors() {
    let file = chacha();
    assert!(file.sframe.len() >= 3);
    for v in &file.sframe {
        assert_eq!(v.cipher_suite, 0xF001);
        check_frame_vector(v);
    }
}

/// The ChaCha vectors also hold for a bare RFC 8439 AEAD fed with the listed key, nonce and AAD,
/// so they pin down the framing, not just this crate's output.
#[test]
fn chacha_vectors_match_plain_rfc8439_aead() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    for v in &chacha().sframe {
        let cipher =
            chacha20poly1305::ChaCha20Poly1305::new_from_slice(&unhex(&v.sframe_key)).expect("key");
        let nonce = unhex(&v.nonce);
        let body = cipher
            .encrypt(
                nonce.as_slice().try_into().expect("12-byte nonce"),
                Payload {
                    msg: &unhex(&v.pt),
                    aad: &unhex(&v.aad),
                },
            )
            .expect("seal");
        let ct = unhex(&v.ct);
        let header_len = ct.len() - body.len();
        assert_eq!(&ct[header_len..], &body[..]);
    }
}

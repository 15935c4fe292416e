//! Known-answer tests: RFC 9605 Appendix C (headers, the AES_128_GCM_SHA256_128 and
//! AES_128_CTR_HMAC_SHA256_80 frames) and
//! Viska's own vectors for the private-use ChaCha20-Poly1305 suite 0xF001.

use serde::Deserialize;
use viska_sframe::key::{DerivedKey, key_label, salt_label};
use viska_sframe::{
    BaseKey, CipherSuite, KeyId, ReplayConfig, SframeError, SframeHeader, SframeReceiver,
    SframeSender,
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

/// RFC 9605 Appendix C.3, suite 0x0001: the AES-CTR + HMAC-SHA256 construction of §4.5.1 with
/// its 80-bit tag (48-byte `sframe_key`, 10-byte tag).
#[test]
fn rfc_aes_128_ctr_hmac_sha256_80_frame_vector() {
    let file = rfc();
    let vectors: Vec<_> = file
        .sframe
        .iter()
        .filter(|v| v.cipher_suite == 0x0001)
        .collect();
    assert_eq!(vectors.len(), 1);
    for v in vectors {
        check_frame_vector(v);
        let suite = CipherSuite::AesCtr128HmacSha256_80;
        let (kid, base_key) = (KeyId(v.kid), BaseKey::new(unhex(&v.base_key)));
        let (metadata, frame) = (unhex(&v.metadata), unhex(&v.ct));
        assert_eq!(
            frame.len(),
            SframeHeader { kid, ctr: v.ctr }.encoded_len() + unhex(&v.pt).len() + 10
        );
        // Every bit of the frame (header, ciphertext, tag) and of the metadata is
        // authenticated: each flip is refused, and the window stays open for the original.
        let mut receiver = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        receiver.add_key(kid, &base_key).expect("add key");
        let mut out = vec![0u8; frame.len()];
        for bit in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                receiver.unprotect(&metadata, &bad, &mut out).is_err(),
                "bit {bit} flipped and accepted"
            );
        }
        let mut other_metadata = metadata.clone();
        other_metadata[0] ^= 1;
        assert_eq!(
            receiver.unprotect(&other_metadata, &frame, &mut out),
            Err(SframeError::AuthenticationFailed)
        );
        // Shorter than the 10-byte tag after the header: malformed, not a panic.
        let header_len = SframeHeader { kid, ctr: v.ctr }.encoded_len();
        assert!(matches!(
            receiver.unprotect(&metadata, &frame[..header_len + 9], &mut out),
            Err(SframeError::TruncatedFrame { tag_len: 10, .. })
        ));
        let got = receiver
            .unprotect(&metadata, &frame, &mut out)
            .expect("the original still opens");
        assert_eq!(&out[..got.len], &unhex(&v.pt)[..]);
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

//! Interoperability with an independent RFC 9605 implementation (the `sframe` crate, RustCrypto
//! backend) on the shared suites AES_128_GCM_SHA256_128 (0x0004) and
//! AES_128_CTR_HMAC_SHA256_80 (0x0001), in both directions.

use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use viska_sframe::{
    BaseKey, CipherSuite, KeyId, ReplayConfig, SframeError, SframeReceiver, SframeSender,
};

/// The suites both implementations speak, ours and theirs.
const SUITES: [(CipherSuite, sframe::CipherSuite); 2] = [
    (
        CipherSuite::Aes128GcmSha256,
        sframe::CipherSuite::AesGcm128Sha256,
    ),
    (
        CipherSuite::AesCtr128HmacSha256_80,
        sframe::CipherSuite::AesCtr128HmacSha256_80,
    ),
];

/// KIDs and counters that exercise every header form: inline, 1-byte and 8-byte fields.
const CASES: [(u64, u64); 6] = [
    (0, 0),
    (7, 7),
    (8, 255),
    (0x123, 0x4567),
    (0xdead_beef, 1 << 40),
    (u64::MAX, u64::MAX - 1),
];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

#[test]
fn viska_frames_open_in_sframe_crate() {
    for (ours, theirs) in SUITES {
        viska_frames_open_in_sframe_crate_with(ours, theirs);
    }
}

#[test]
fn sframe_crate_frames_open_in_viska() {
    for (ours, theirs) in SUITES {
        sframe_crate_frames_open_in_viska_with(ours, theirs);
    }
}

fn viska_frames_open_in_sframe_crate_with(suite: CipherSuite, theirs: sframe::CipherSuite) {
    let base = BaseKey::new((0u8..16).collect());
    for (kid, ctr) in CASES {
        for metadata in [&b""[..], b"IETF SFrame WG"] {
            for len in [0, 60, 160] {
                let plaintext = payload(len);
                let mut tx = SframeSender::starting_at(suite, KeyId(kid), &base, ctr).expect("tx");
                let mut frame = vec![0u8; tx.protected_len(len)];
                let n = tx
                    .protect(metadata, &plaintext, &mut frame)
                    .expect("protect");

                let key = DecryptionKey::derive_from(theirs, kid, base.expose_secret())
                    .expect("their key");
                let view = EncryptedFrameView::try_with_meta_data(&frame[..n], metadata)
                    .expect("their header parse");
                assert_eq!(view.header().key_id(), kid);
                assert_eq!(view.header().counter(), ctr);
                let mut buffer = Vec::new();
                let opened = view.decrypt_into(&key, &mut buffer).expect("their decrypt");
                assert_eq!(
                    opened.payload(),
                    &plaintext[..],
                    "{suite:?} kid {kid} ctr {ctr} len {len}"
                );
                assert_eq!(opened.counter(), ctr);
            }
        }
    }
}

fn sframe_crate_frames_open_in_viska_with(suite: CipherSuite, theirs: sframe::CipherSuite) {
    let base = BaseKey::new(vec![0x42; 16]);
    for (kid, ctr) in CASES {
        let key = EncryptionKey::derive_from(theirs, kid, base.expose_secret()).expect("their key");
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("rx");
        rx.add_key(KeyId(kid), &base).expect("add key");
        for metadata in [&b""[..], b"routing"] {
            // Same counter twice under different metadata would be a replay; use two counters.
            let frame_ctr = if metadata.is_empty() {
                ctr
            } else {
                ctr.saturating_add(1)
            };
            let mut counter = MonotonicCounter::with_start_value(frame_ctr, u64::MAX);
            let plaintext = payload(160);
            let media = MediaFrameView::try_with_meta_data(&mut counter, &plaintext, metadata)
                .expect("their frame");
            let mut buffer = Vec::new();
            let encrypted = media
                .encrypt_into(&key, &mut buffer)
                .expect("their encrypt");
            let frame = encrypted.sframe_cipher_text().to_vec();

            let mut out = vec![0u8; frame.len()];
            let got = rx
                .unprotect(metadata, &frame, &mut out)
                .expect("viska unprotect");
            assert_eq!((got.kid, got.ctr), (KeyId(kid), frame_ctr));
            assert_eq!(&out[..got.len], &plaintext[..]);
            // And the replay window applies to their frames as to ours.
            assert_eq!(
                rx.unprotect(metadata, &frame, &mut out),
                Err(SframeError::Duplicate {
                    kid: KeyId(kid),
                    ctr: frame_ctr
                })
            );
        }
    }
}

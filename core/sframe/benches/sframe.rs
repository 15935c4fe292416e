//! SFrame protect/unprotect next to the bare AEAD (same crate, same derived key) at Opus-sized
//! frames, for both suites. The gap between the two is the cost of the SFrame layer itself:
//! header, nonce, AAD assembly, replay window.
//!
//! `cargo bench -p viska-sframe -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use aes_gcm::Aes128Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use viska_sframe::key::DerivedKey;
use viska_sframe::{
    BaseKey, CipherSuite, KeyId, ReplayConfig, SframeHeader, SframeReceiver, SframeSender,
};

const SIZES: [usize; 3] = [60, 160, 320];
const KID: KeyId = KeyId(0x0102);
const FIRST_CTR: u64 = 1 << 20;

/// The suite's AEAD used directly, as a baseline (held inline like the crate's own key objects).
#[allow(clippy::large_enum_variant)]
enum RawAead {
    ChaCha(ChaCha20Poly1305),
    Aes(Aes128Gcm),
}

impl RawAead {
    fn new(suite: CipherSuite, key: &[u8]) -> Self {
        match suite {
            CipherSuite::ChaCha20Poly1305Sha256 => {
                Self::ChaCha(ChaCha20Poly1305::new_from_slice(key).expect("key length"))
            }
            _ => Self::Aes(Aes128Gcm::new_from_slice(key).expect("key length")),
        }
    }

    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        match self {
            Self::ChaCha(c) => c
                .encrypt_inout_detached(nonce.into(), aad, buf.into())
                .expect("seal")
                .into(),
            Self::Aes(c) => c
                .encrypt_inout_detached(nonce.into(), aad, buf.into())
                .expect("seal")
                .into(),
        }
    }

    fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        match self {
            Self::ChaCha(c) => c.decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into()),
            Self::Aes(c) => c.decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into()),
        }
        .expect("open");
    }
}

fn suite_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::ChaCha20Poly1305Sha256 => "chacha20poly1305",
        _ => "aes128gcm",
    }
}

fn bench_suite(c: &mut Criterion, suite: CipherSuite) {
    let base = BaseKey::new(vec![0x42; 32]);
    let derived = DerivedKey::derive(suite, KID, &base).expect("derive");
    let raw = RawAead::new(suite, derived.expose_key());
    let mut group = c.benchmark_group(format!("sframe/{}", suite_name(suite)));
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let plaintext = vec![0x5a; size];

        let mut tx = SframeSender::starting_at(suite, KID, &base, FIRST_CTR).expect("sender");
        let mut frame = vec![0u8; size + 64];
        group.bench_with_input(BenchmarkId::new("protect", size), &size, |b, _| {
            b.iter(|| {
                tx.protect(b"", black_box(&plaintext), &mut frame)
                    .expect("protect")
            });
        });

        // Each unprotect needs a fresh counter (the replay window refuses repeats), so frames
        // are made in the untimed setup.
        let mut feeder = SframeSender::starting_at(suite, KID, &base, FIRST_CTR).expect("sender");
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        rx.add_key(KID, &base).expect("add key");
        let mut out = vec![0u8; size + 64];
        group.bench_with_input(BenchmarkId::new("unprotect", size), &size, |b, _| {
            b.iter_batched_ref(
                || {
                    let mut f = vec![0u8; size + 64];
                    let n = feeder.protect(b"", &plaintext, &mut f).expect("protect");
                    f.truncate(n);
                    f
                },
                |f| {
                    rx.unprotect(b"", black_box(f), &mut out)
                        .expect("unprotect")
                },
                BatchSize::SmallInput,
            );
        });

        // Baseline: the same AEAD and key, AAD = a header of the same size, nonce from the salt.
        let header = SframeHeader {
            kid: KID,
            ctr: FIRST_CTR,
        };
        let mut header_bytes = [0u8; 17];
        let header_len = header.encode(&mut header_bytes).expect("header");
        let aad = &header_bytes[..header_len];
        let nonce = derived.nonce(FIRST_CTR);
        let mut buf = plaintext.clone();
        group.bench_with_input(BenchmarkId::new("raw_seal", size), &size, |b, _| {
            b.iter(|| raw.seal(&nonce, aad, black_box(&mut buf)));
        });
        let mut sealed = plaintext.clone();
        let tag = raw.seal(&nonce, aad, &mut sealed);
        group.bench_with_input(BenchmarkId::new("raw_open", size), &size, |b, _| {
            b.iter_batched_ref(
                || sealed.clone(),
                |ct| raw.open(&nonce, aad, black_box(ct), &tag),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    for suite in CipherSuite::ALL {
        bench_suite(c, suite);
    }
}

criterion_group!(sframe_benches, benches);
criterion_main!(sframe_benches);

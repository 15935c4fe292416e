//! Protect and unprotect allocate nothing per frame. This binary installs a counting global
//! allocator, so it lives in its own test file and affects no other test. The allocator counts
//! for the whole process, so nothing else may run alongside: the binary has no test harness
//! (`harness = false`), whose own threads' bookkeeping would be counted too, and runs its
//! checks from `main`.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use viska_sframe::{BaseKey, CipherSuite, KeyId, ReplayConfig, SframeReceiver, SframeSender};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    steady_state_frames_do_not_allocate();
    println!("no_alloc: protect and unprotect allocate nothing per frame (every suite)");
}

fn steady_state_frames_do_not_allocate() {
    for suite in CipherSuite::ALL {
        let key = BaseKey::new(vec![0x11; 32]);
        let kid = KeyId(0x0102_0304);
        let mut tx = SframeSender::new(suite, kid, &key).expect("sender");
        let mut rx = SframeReceiver::new(suite, ReplayConfig::default()).expect("receiver");
        rx.add_key(kid, &key).expect("add key");
        let plaintext = [0x5au8; 320];
        let metadata = [0xa5u8; 40];
        let mut frame = [0u8; 512];
        let mut out = [0u8; 512];

        // Warm up once outside the region, so lazy one-time initialisation (CPU feature
        // detection) is not counted against the per-frame path.
        let len = tx
            .protect(&metadata, &plaintext, &mut frame)
            .expect("protect");
        rx.unprotect(&metadata, &frame[..len], &mut out)
            .expect("unprotect");

        let region = Region::new(GLOBAL);
        let mut accepted = 0usize;
        for i in 0..1000u64 {
            if i % 100 == 99 {
                // Silence: the media layer skips counters of frames it does not send.
                let next = tx.next_counter().expect("counter left");
                tx.skip_to(next + 25).expect("skip");
            }
            let meta: &[u8] = if i % 2 == 0 { &metadata } else { &[] };
            let size = [60, 160, 320][(i % 3) as usize];
            let len = tx
                .protect(meta, &plaintext[..size], &mut frame)
                .expect("protect");
            let got = rx
                .unprotect(meta, &frame[..len], &mut out)
                .expect("unprotect");
            accepted += got.len;
            // Rejections take the same no-allocation path.
            assert!(rx.unprotect(meta, &frame[..len], &mut out).is_err());
            frame[len - 1] ^= 1;
            assert!(rx.unprotect(meta, &frame[..len], &mut out).is_err());
        }
        let change = region.change();
        assert!(accepted > 0);
        assert_eq!(
            (
                change.allocations,
                change.reallocations,
                change.bytes_allocated
            ),
            (0, 0, 0),
            "{suite:?}: per-frame path allocated"
        );
    }
    counter_sees_allocations();
}

/// The counter is live: metadata beyond the stack AAD buffer does allocate, and is seen.
fn counter_sees_allocations() {
    let suite = CipherSuite::ChaCha20Poly1305Sha256;
    let key = BaseKey::new(vec![0x22; 32]);
    let mut tx = SframeSender::new(suite, KeyId(1), &key).expect("sender");
    let metadata = vec![0u8; 4096];
    let mut frame = [0u8; 128];
    let region = Region::new(GLOBAL);
    tx.protect(&metadata, b"x", &mut frame).expect("protect");
    assert!(region.change().allocations >= 1);
}

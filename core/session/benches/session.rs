//! The session's own cost per 20 ms frame, no IO: both ends of an answered call capture,
//! encode, protect and send one frame, receive, authenticate and buffer the other's, and play
//! (decode) one, as a phone does every period.
//!
//! `cargo bench -p viska-session --bench session -- --warm-up-time 1 --measurement-time 5`

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "pair.rs"]
mod pair;

fn frames(c: &mut Criterion) {
    let mut pair = pair::Pair::answered();
    c.bench_function("one 20 ms frame, both directions (two sessions)", |b| {
        b.iter(|| pair.frame());
    });
    assert!(pair.played[0] > 0 && pair.played[1] > 0);
}

criterion_group!(benches, frames);
criterion_main!(benches);

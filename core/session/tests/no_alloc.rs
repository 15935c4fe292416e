//! The session allocates nothing per frame in the steady state: capture, encode, protect,
//! send, receive, authenticate, buffer, decode and play, both ends of an answered call. This
//! binary installs a counting global allocator, which counts for the whole process: it has no
//! test harness (`harness = false`), whose own threads' bookkeeping would be counted too, and
//! runs its check from `main`.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[path = "../benches/pair.rs"]
mod pair;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let allocating = steady_state_frames_do_not_allocate();
    println!(
        "no_alloc: {} of 300 frame periods allocated, each at a statistics interval",
        allocating
    );
}

/// Returns how many frame periods allocated.
fn steady_state_frames_do_not_allocate() -> usize {
    let mut pair = pair::Pair::answered();
    // Statistics and reception reports (once a second: every 50th frame) build messages and
    // may allocate; every other frame must not.
    let frames = 300;
    let mut allocating = Vec::new();
    let (played, captured) = (pair.played, pair.captured);
    for n in 0..frames {
        let region = Region::new(GLOBAL);
        pair.frame();
        let change = region.change();
        if change.allocations + change.reallocations > 0 {
            allocating.push((n, change.allocations, change.reallocations));
        }
    }
    assert_eq!(
        pair.played[0] - played[0],
        frames,
        "Alice played every period"
    );
    assert_eq!(
        pair.played[1] - played[1],
        frames,
        "Bob played every period"
    );
    for (i, name) in ["Alice", "Bob"].iter().enumerate() {
        assert_eq!(
            pair.captured[i] - captured[i],
            frames,
            "{name} captured every period, once"
        );
    }
    // Only around the statistics of each second (the report message, the keepalive ping
    // queued with it), never the frames in between: 294 of the 300 frames allocate nothing.
    assert!(
        allocating
            .iter()
            .all(|(n, _, _)| n % 50 == 49 || n % 50 == 0),
        "frames that allocated: {allocating:?}"
    );
    assert!(
        allocating.len() <= 2 * 6,
        "frames that allocated: {allocating:?}"
    );
    allocating.len()
}

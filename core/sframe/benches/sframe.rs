//! SFrame benchmarks (filled in below).
fn main() {}

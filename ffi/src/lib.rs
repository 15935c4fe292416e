//! Viska FFI.

pub mod c;

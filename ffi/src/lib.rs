//! Viska FFI.

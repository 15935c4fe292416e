//! Viska.

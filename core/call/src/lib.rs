//! viska-call (being written).

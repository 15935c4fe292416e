//! viska-proto (being written).

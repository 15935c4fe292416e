//! viska-e2ee (being written).

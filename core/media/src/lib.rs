//! viska-media (being written).

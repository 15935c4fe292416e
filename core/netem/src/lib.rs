//! viska-netem (being written).

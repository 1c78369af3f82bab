//! The batcher (being written).

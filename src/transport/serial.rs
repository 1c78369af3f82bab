//! serial transport (being written).

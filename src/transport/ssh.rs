//! ssh transport (being written).

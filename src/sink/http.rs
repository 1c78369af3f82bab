//! The HTTP sink (being written).

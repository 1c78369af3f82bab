//! The spool (being written).

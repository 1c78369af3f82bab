//! The resolved inventory.

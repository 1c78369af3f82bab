//! What the unit tests of several modules share, compiled only for them (`cargo test --lib`).
//! The integration tests in tests/ cannot see it (they use the library from outside, where
//! `cfg(test)` is off) and have their own harness in tests/support; both make their temp
//! folders with `tempfile`, so there is one temp folder type in the whole repository.

/// A fresh folder under the system temp dir, named after `tag` and removed with its
/// contents when dropped (also when the test panics).
pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("rackhand-{tag}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
}

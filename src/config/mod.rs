//! Configuration: reading `rackhand.toml` and checking every key it holds.
//!
//! `load` returns the file section by section (`RawConfig`) with a [`Report`] of every
//! problem found; the inheritance of device settings (device → its groups → defaults) is the
//! inventory's job (`crate::inventory`), which adds its own findings to the same report.

pub(crate) mod diag;
pub(crate) mod parse;
pub(crate) mod schema;
pub(crate) mod secret;
pub(crate) mod units;
pub(crate) mod url;

use std::path::{Path, PathBuf};

pub use diag::{Diagnostic, Report, Severity};
pub(crate) use parse::{Layer, RawConfig};
pub use secret::Secret;

/// The config file could not be read at all (as opposed to read and found wanting).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read config {path}: {error}; give one with -c FILE or RACKHAND_CONFIG, or see examples/lab.toml"
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config {path} is not UTF-8 text: {error}")]
    NotUtf8 {
        path: PathBuf,
        error: std::string::FromUtf8Error,
    },
}

/// Reads and parses the file; the report holds every syntax, key and value problem.
pub fn load(path: &Path) -> Result<(RawConfig, Report), LoadError> {
    let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let text = String::from_utf8(bytes).map_err(|error| LoadError::NotUtf8 {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(parse_str(path, &text))
}

/// Parses config text as if read from `path` (relative paths inside are taken from its folder).
pub fn parse_str(path: &Path, text: &str) -> (RawConfig, Report) {
    let mut report = Report::new(path, text);
    let base = path.parent().unwrap_or(Path::new("."));
    let raw = parse::parse(text, base, &mut report);
    (raw, report)
}

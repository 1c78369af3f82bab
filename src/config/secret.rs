//! Secrets (passwords, enable secrets, key passphrases) and where they came from.
//!
//! A secret can be written inline (warned: configs end up in backups and tickets), named by
//! an environment variable (systemd's `EnvironmentFile=` / `LoadCredential=`), or read from a
//! file that should be readable by the agent alone. The value never appears in `Debug` output.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A secret named inside a longer value (an `[upstream]` header): `{env:NAME}` or
/// `{file:PATH}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretRef<'a> {
    Env(&'a str),
    File(&'a str),
}

/// Replaces every `{env:NAME}` and `{file:PATH}` in `value` by what `resolve` returns for it;
/// any other braces stay as written. The agent resolves header values with this at start,
/// `check` with a `resolve` that only notes what it cannot find.
pub(crate) fn substitute<E>(
    value: &str,
    mut resolve: impl FnMut(SecretRef<'_>) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::new();
    let mut rest = value;
    // Each turn consumes at least one `{`: bounded by the value's length.
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        let inner = &rest[open + 1..close];
        let named = if let Some(var) = inner.strip_prefix("env:") {
            SecretRef::Env(var)
        } else if let Some(path) = inner.strip_prefix("file:") {
            SecretRef::File(path)
        } else {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        out.push_str(&rest[..open]);
        out.push_str(&resolve(named)?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Why a `{env:NAME}` or `{file:PATH}` in a value could not be replaced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretRefError {
    #[error(
        "environment variable {var} is not set; set it for the service (systemd: Environment= or EnvironmentFile=)"
    )]
    EnvUnset { var: String },
    #[error("cannot read {path}: {error}; check the path and that the agent may read it")]
    FileUnreadable { path: PathBuf, error: io::Error },
}

/// [`substitute`] with the real sources: the variable's value, or the file's content with
/// surrounding whitespace trimmed, e.g. `Bearer {file:/etc/rackhand/collector.token}`.
pub(crate) fn resolve_refs(value: &str) -> Result<String, SecretRefError> {
    substitute(value, |named| match named {
        SecretRef::Env(var) => std::env::var(var).map_err(|_| SecretRefError::EnvUnset {
            var: var.to_string(),
        }),
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|error| SecretRefError::FileUnreadable {
                path: PathBuf::from(path),
                error,
            }),
    })
}

#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline,
    Env(String),
    File(PathBuf),
}

/// A secret value with its source. `value` is `None` when the environment variable was not
/// set where the config was read: the session then fails with a message naming the variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: Option<String>,
    pub(crate) source: SecretSource,
}

impl Secret {
    pub fn inline(value: &str) -> Self {
        Secret {
            value: Some(value.to_string()),
            source: SecretSource::Inline,
        }
    }

    /// Reads the variable now; an unset variable is kept as a missing value, not an error,
    /// because `rackhand check` may run in a shell that lacks the service's environment.
    pub fn from_env(name: &str) -> Self {
        Secret {
            value: std::env::var(name).ok(),
            source: SecretSource::Env(name.to_string()),
        }
    }

    /// Reads the file; one trailing line end is not part of the secret.
    pub(crate) fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let value = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Ok(Secret {
            value: Some(value.to_string()),
            source: SecretSource::File(path.to_path_buf()),
        })
    }

    /// The secret itself, for the one place that sends it to a device.
    pub(crate) fn expose(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Where the secret comes from, for messages and `rackhand check`.
    pub fn describe(&self) -> String {
        match &self.source {
            SecretSource::Inline => "inline".into(),
            SecretSource::Env(name) => format!("${name}"),
            SecretSource::File(path) => path.display().to_string(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_value() {
        let s = Secret::inline("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), Some("hunter2"));
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_only() {
        let dir = crate::test_support::temp_dir("secret");
        let path = dir.path().join("pw");
        std::fs::write(&path, "  spaced pw \n").unwrap();
        assert_eq!(
            Secret::from_file(&path).unwrap().expose(),
            Some("  spaced pw ")
        );
    }
}

//! The sink `[upstream]` asks for, built once at the agent's start.
//!
//! Building is where a mistake in `[upstream]` that `check` could only warn about shows for
//! good: a header secret that is not there, a URL or broker that does not parse, an outbox the
//! agent may not write. So it happens before the agent takes any device's output, and the
//! agent refuses to start rather than spool records nobody can ship.

use std::path::Path;

use crate::config::secret::{SecretRefError, resolve_refs};
use crate::inventory::{SinkKind, Upstream};

use super::file::FileSink;
use super::http::{HttpConfig, HttpSink};
use super::mqtt::{MqttConfig, MqttSink};
use super::{Sink, SinkError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    // Transparent: the sink's error already names the upstream and the fix.
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("[upstream] header `{name}`: {secret}")]
    Header {
        name: String,
        secret: SecretRefError,
    },
}

/// The sink for `upstream` (the one in force: `Inventory::upstream_in_force`). `agent_id`
/// names the MQTT client and topic; dead-letter files go to `state_dir`.
pub(crate) fn build(
    upstream: &Upstream,
    agent_id: &str,
    state_dir: &Path,
) -> Result<Box<dyn Sink>, BuildError> {
    Ok(match upstream.sink {
        SinkKind::File => Box::new(
            FileSink::open(Path::new(&upstream.target), upstream.file_max_bytes)
                .map_err(SinkError::from)?,
        ),
        SinkKind::Http => {
            let config = HttpConfig::from_upstream(upstream, resolve_headers(upstream)?, state_dir);
            Box::new(HttpSink::new(config).map_err(SinkError::from)?)
        }
        SinkKind::Mqtt => {
            let config = MqttConfig::from_upstream(upstream, agent_id, state_dir);
            Box::new(MqttSink::new(config).map_err(SinkError::from)?)
        }
    })
}

/// Every header with its secrets in place.
fn resolve_headers(upstream: &Upstream) -> Result<Vec<(String, String)>, BuildError> {
    upstream
        .headers
        .iter()
        .map(|(name, value)| Ok((name.clone(), resolve_header(name, value)?)))
        .collect()
}

/// Header values may name a secret instead of holding it: `{env:NAME}` and `{file:PATH}`
/// are replaced by that variable or that file's content (trimmed), e.g.
/// `Authorization = "Bearer {file:/etc/rackhand/collector.token}"`.
pub(crate) fn resolve_header(name: &str, value: &str) -> Result<String, BuildError> {
    resolve_refs(value).map_err(|secret| BuildError::Header {
        name: name.to_string(),
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_take_secrets_from_env_and_files() {
        let dir = crate::test_support::temp_dir("header");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let value = format!("Bearer {{file:{}}}", token.display());
        assert_eq!(
            resolve_header("Authorization", &value).unwrap(),
            "Bearer s3cret"
        );
        // SAFETY: this test is the only one touching this variable.
        unsafe { std::env::set_var("RACKHAND_TEST_RACK", "a12") };
        assert_eq!(
            resolve_header("X-Rack", "rack-{env:RACKHAND_TEST_RACK}").unwrap(),
            "rack-a12"
        );
        assert_eq!(
            resolve_header("X", "{not a placeholder}").unwrap(),
            "{not a placeholder}"
        );
        let missing = resolve_header("X", "{env:RACKHAND_TEST_UNSET}").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("RACKHAND_TEST_UNSET is not set"),
            "{missing}"
        );
        let unreadable = resolve_header("X", "{file:/nonexistent/token}").unwrap_err();
        assert!(
            unreadable.to_string().contains("/nonexistent/token"),
            "{unreadable}"
        );
    }
}

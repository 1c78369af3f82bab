//! `[metrics]` resolved and checked: where the agent serves its Prometheus text, and the
//! file it keeps for node_exporter's textfile collector.
//!
//! Apart from devices because its checks are its own and must come before the agent binds
//! anything: `listen` is an IP address and a port (a host name would be resolved who knows
//! where; a port of 0 could not be scraped), and one reachable from other hosts is warned
//! about, because `/metrics` names every device. `textfile` must sit in a folder that
//! exists (node_exporter's `--collector.textfile.directory`); that folder not being
//! writable by whoever runs `rackhand check` is a warning, since the service may run as
//! another user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{Layer, Report};

/// `[metrics]`: each part on when its key is set. The default is neither.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthz` here.
    pub(crate) listen: Option<SocketAddr>,
    /// Keep the same text in this file (written atomically, through `PATH.tmp`).
    pub(crate) textfile: Option<PathBuf>,
}

/// The example every message about `listen` gives.
const LISTEN_EXAMPLE: &str = "\"127.0.0.1:9464\" (IPv6: \"[::1]:9464\")";

/// `[metrics]` from its table (absent: neither part), with every problem in `report`.
pub(super) fn resolve_metrics(layer: Option<&Layer>, report: &mut Report) -> MetricsConfig {
    let Some(layer) = layer else {
        return MetricsConfig::default();
    };
    let listen = layer.get("listen").and_then(|setting| {
        let text = setting.as_str().unwrap_or_default();
        match check_listen(text) {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    report.warning(setting.span.clone(), exposed(addr));
                }
                Some(addr)
            }
            Err(message) => {
                report.error(setting.span.clone(), message);
                None
            }
        }
    });
    let textfile = layer.get("textfile").and_then(|setting| {
        let path = Path::new(setting.as_str().unwrap_or_default());
        let findings = check_textfile(path);
        for warning in &findings.warnings {
            report.warning(setting.span.clone(), warning.clone());
        }
        match findings.error {
            Some(message) => {
                report.error(setting.span.clone(), message);
                None
            }
            None => Some(path.to_path_buf()),
        }
    });
    MetricsConfig { listen, textfile }
}

/// `listen` as an address the listener can bind, or what to write instead.
fn check_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        let hint = if text.starts_with("localhost") {
            "; write the loopback address itself, e.g. "
        } else {
            "; write an IP address and a port, e.g. "
        };
        format!("`listen` = \"{text}\" is not an IP address and port{hint}{LISTEN_EXAMPLE}")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "`listen` = \"{text}\" has port 0, which Prometheus could not find to scrape; name a port, e.g. {LISTEN_EXAMPLE}"
        ));
    }
    Ok(addr)
}

/// The warning for a `listen` address other hosts can reach.
fn exposed(addr: SocketAddr) -> String {
    format!(
        "`listen` = \"{addr}\" serves /metrics beyond this machine: anyone who can reach it sees \
         every device name and the agent's state; bind 127.0.0.1 (and let a local Prometheus or \
         a reverse proxy reach it) or restrict the port with a firewall"
    )
}

/// What is wrong with a `textfile` path: an error refuses it; warnings do not.
#[derive(Debug, Default)]
struct TextfileFindings {
    error: Option<String>,
    warnings: Vec<String>,
}

fn check_textfile(path: &Path) -> TextfileFindings {
    let mut findings = TextfileFindings::default();
    let shown = path.display();
    if !path.is_absolute() {
        findings.error = Some(format!(
            "`textfile` = \"{shown}\" must be an absolute path in node_exporter's --collector.textfile.directory, e.g. \"/var/lib/prometheus/node-exporter/rackhand.prom\""
        ));
        return findings;
    }
    if path.extension().is_none_or(|e| e != "prom") {
        findings.warnings.push(format!(
            "`textfile` = \"{shown}\" does not end in .prom: node_exporter's textfile collector reads only *.prom files"
        ));
    }
    if path.is_dir() {
        findings.error = Some(format!(
            "`textfile` = \"{shown}\" is a folder; name the file in it, e.g. \"{}\"",
            path.join("rackhand.prom").display()
        ));
        return findings;
    }
    let folder = path.parent().unwrap_or(Path::new("/"));
    if !folder.is_dir() {
        findings.error = Some(format!(
            "the folder {} for `textfile` does not exist; create it, or name a file in node_exporter's --collector.textfile.directory (Debian: /var/lib/prometheus/node-exporter)",
            folder.display()
        ));
    } else if !writable(folder) {
        findings.warnings.push(format!(
            "the folder {} for `textfile` is not writable by this user; the agent's user needs write access there (and, under systemd, ReadWritePaths={} in a drop-in)",
            folder.display(),
            folder.display()
        ));
    }
    findings
}

/// Whether this process may create files in `folder` (access(2) with W_OK).
fn writable(folder: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(folder.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn metrics_of(text: &str) -> (MetricsConfig, Report) {
        let (raw, mut report) = parse_str(Path::new("/etc/rackhand/rackhand.toml"), text);
        let metrics = resolve_metrics(raw.metrics.as_ref(), &mut report);
        (metrics, report)
    }

    fn messages(report: &Report) -> Vec<String> {
        report
            .errors()
            .chain(report.warnings())
            .map(|d| report.render(d))
            .collect()
    }

    fn errors(report: &Report) -> String {
        let rendered: Vec<String> = report.errors().map(|d| report.render(d)).collect();
        rendered.join("\n")
    }

    #[test]
    fn without_a_metrics_table_neither_part_runs() {
        let (metrics, report) = metrics_of("[agent]\nid = \"a\"\n");
        assert_eq!(metrics, MetricsConfig::default());
        assert!(messages(&report).is_empty());
    }

    #[test]
    fn a_loopback_listen_address_is_taken_quietly() {
        for text in ["127.0.0.1:9464", "[::1]:9464"] {
            let (metrics, report) = metrics_of(&format!("[metrics]\nlisten = \"{text}\"\n"));
            assert_eq!(metrics.listen, Some(text.parse().unwrap()));
            assert!(messages(&report).is_empty(), "{:?}", messages(&report));
        }
    }

    #[test]
    fn an_address_other_hosts_reach_is_taken_with_a_warning() {
        let (metrics, report) = metrics_of("[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        assert_eq!(metrics.listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert!(!report.has_errors());
        let all = messages(&report).join("\n");
        assert!(
            all.contains("rackhand.toml:2:10: warning: `listen`"),
            "{all}"
        );
        assert!(all.contains("beyond this machine"), "{all}");
    }

    #[test]
    fn a_listen_value_that_is_no_address_is_an_error_at_its_value() {
        for (text, says) in [
            ("localhost:9464", "write the loopback address itself"),
            ("9464", "write an IP address and a port"),
            ("127.0.0.1", "write an IP address and a port"),
            ("127.0.0.1:0", "has port 0"),
        ] {
            let (metrics, report) = metrics_of(&format!("[metrics]\nlisten = \"{text}\"\n"));
            assert_eq!(metrics.listen, None);
            let all = errors(&report);
            assert!(all.contains("rackhand.toml:2:10: `listen`"), "{all}");
            assert!(all.contains(says), "{text}: {all}");
        }
    }

    #[test]
    fn a_textfile_in_an_existing_folder_is_taken() {
        let dir = crate::test_support::temp_dir("metrics-config");
        let path = dir.path().join("rackhand.prom");
        let text = format!("[metrics]\ntextfile = \"{}\"\n", path.display());
        let (metrics, report) = metrics_of(&text);
        assert_eq!(metrics.textfile, Some(path));
        assert!(messages(&report).is_empty(), "{:?}", messages(&report));
    }

    #[test]
    fn a_textfile_in_a_missing_folder_or_relative_is_an_error() {
        let dir = crate::test_support::temp_dir("metrics-config");
        let missing = dir.path().join("no-such-folder/rackhand.prom");
        for (path, says) in [
            (missing.display().to_string(), "does not exist; create it"),
            ("rackhand.prom".to_string(), "must be an absolute path"),
            (dir.path().display().to_string(), "is a folder"),
        ] {
            let (metrics, report) = metrics_of(&format!("[metrics]\ntextfile = \"{path}\"\n"));
            assert_eq!(metrics.textfile, None);
            let all = errors(&report);
            assert!(all.contains("rackhand.toml:2:12: "), "{all}");
            assert!(all.contains(says), "{path}: {all}");
        }
    }

    #[test]
    fn a_textfile_node_exporter_would_not_read_is_warned_about() {
        let dir = crate::test_support::temp_dir("metrics-config");
        let path = dir.path().join("rackhand.txt");
        let text = format!("[metrics]\ntextfile = \"{}\"\n", path.display());
        let (metrics, report) = metrics_of(&text);
        assert_eq!(metrics.textfile, Some(path));
        assert!(!report.has_errors());
        assert!(messages(&report).join("\n").contains("only *.prom files"));
    }

    #[test]
    fn unknown_keys_in_metrics_are_errors_with_a_hint() {
        let (_, report) = metrics_of("[metrics]\nlisten_address = \"127.0.0.1:9464\"\n");
        let all = messages(&report).join("\n");
        assert!(
            all.contains("unknown key `listen_address` in [metrics]"),
            "{all}"
        );
        assert!(all.contains("did you mean `listen`"), "{all}");
    }
}

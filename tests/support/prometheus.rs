//! A real Prometheus server and a real node_exporter (Debian's `prometheus` and
//! `prometheus-node-exporter`), each started on loopback with its own flags and folders (no
//! service, no /etc config), killed and reaped in `Drop`.
//!
//! Both are Go servers that take their port from a flag and cannot be handed a bound
//! socket, so each start takes a released loopback port and retries (bounded) when another
//! process took it in between.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::http_get::get_http10;
use super::process::ChildGuard;
use super::{deadline, poll_until, released_loopback_port};

/// How long either server may take to answer its readiness check.
const READY_WAIT: Duration = Duration::from_secs(30);
const REQUEST: Duration = Duration::from_secs(5);
/// Starts tried before giving up on finding a free port.
const PORT_TRIES: usize = 3;

/// `prometheus` scraping one target every second.
pub struct Prometheus {
    guard: ChildGuard,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts a server whose data lives in `dir` and that scrapes `target`'s `/metrics`
    /// every second as job `rackhand`.
    pub fn start(dir: &Path, target: SocketAddr) -> io::Result<Prometheus> {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: rackhand\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let tsdb = dir.join("tsdb");
        start_on_a_free_port("prometheus", "/-/ready", |addr| {
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", tsdb.display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            cmd
        })
        .map(|(guard, addr)| Prometheus { guard, addr })
    }

    /// The result vector of an instant query (`data.result`), or why there is none.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let answer = get_http10(self.addr, &path, REQUEST).map_err(|e| e.to_string())?;
        let json: Value =
            serde_json::from_str(&answer.body).map_err(|e| format!("{e}: {}", answer.body))?;
        match json["data"]["result"].as_array() {
            Some(result) if json["status"] == "success" => Ok(result.clone()),
            _ => Err(answer.body),
        }
    }

    /// The scrape target as Prometheus sees it (`/api/v1/targets`), for failure messages.
    pub fn targets(&self) -> String {
        get_http10(self.addr, "/api/v1/targets", REQUEST)
            .map(|r| r.body)
            .unwrap_or_else(|e| e.to_string())
    }

    pub fn stderr(&self) -> String {
        self.guard.stderr_text()
    }
}

/// `prometheus-node-exporter` with only its textfile collector, reading `textfile_dir`.
pub struct NodeExporter {
    _guard: ChildGuard,
    pub addr: SocketAddr,
}

impl NodeExporter {
    pub fn start(textfile_dir: &Path) -> io::Result<NodeExporter> {
        start_on_a_free_port("prometheus-node-exporter", "/", |addr| {
            let mut cmd = Command::new("prometheus-node-exporter");
            cmd.arg("--collector.disable-defaults")
                .arg("--collector.textfile")
                .arg(format!(
                    "--collector.textfile.directory={}",
                    textfile_dir.display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            cmd
        })
        .map(|(guard, addr)| NodeExporter {
            _guard: guard,
            addr,
        })
    }

    /// What it serves at `/metrics` now.
    pub fn metrics(&self) -> io::Result<String> {
        get_http10(self.addr, "/metrics", REQUEST).map(|r| r.body)
    }
}

/// Starts `program` (built by `command` for a listen address) on a released loopback port
/// and waits until `ready_path` answers 200; another port when it could not bind that one.
fn start_on_a_free_port(
    program: &str,
    ready_path: &str,
    command: impl Fn(SocketAddr) -> Command,
) -> io::Result<(ChildGuard, SocketAddr)> {
    let mut last_error = String::new();
    for _ in 0..PORT_TRIES {
        let addr = released_loopback_port()?;
        let mut guard = ChildGuard::spawn(command(addr), program, None)?;
        let mut exited = false;
        let ready = poll_until(deadline(READY_WAIT), || {
            exited = matches!(guard.child_mut().try_wait(), Ok(Some(_)));
            !exited && get_http10(addr, ready_path, REQUEST).is_ok_and(|r| r.code == 200)
        });
        if ready {
            return Ok((guard, addr));
        }
        last_error = guard.stderr_text();
        if !(exited && last_error.contains("address already in use")) {
            break;
        }
    }
    Err(io::Error::other(format!(
        "{program} did not come up within {READY_WAIT:?}:\n{last_error}"
    )))
}

/// A query string value, percent-encoded (everything but unreserved characters).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

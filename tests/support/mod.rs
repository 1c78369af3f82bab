//! Shared harness for the end-to-end tests: the real parts (the `rackhand` binary, OpenSSH's
//! `sshd`, pseudo-terminals, loopback sockets) started on demand and always stopped in `Drop`,
//! plus a small prompt-reading client that plays the collector's part.
//!
//! It lives here, not in the library, because it exists to check the simulator from the
//! outside: it must not share code with what it checks. Each test binary (`tests/quick`,
//! `tests/e2e`, `tests/isolation`) compiles it once as `#[path = "../support/mod.rs"] mod
//! support;` and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod accounting;
pub mod agent;
pub mod client;
pub mod collector;
pub mod config;
pub mod device;
pub mod fixtures;
pub mod http_get;
pub mod mosquitto;
pub mod process;
pub mod prometheus;
pub mod spool_files;
pub mod sshd;
pub mod tls;
pub mod tmpfs;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `rackhand` binary cargo built for these integration tests.
pub fn rackhand_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rackhand"))
}

/// A deadline `d` from now: every wait in the harness takes one of these.
pub fn deadline(d: Duration) -> Instant {
    Instant::now() + d
}

/// Time left until `deadline`, or `None` once it has passed.
pub fn remaining(deadline: Instant) -> Option<Duration> {
    let now = Instant::now();
    (deadline > now).then(|| deadline - now)
}

/// A loopback address with a port the kernel just handed out and that we released again.
/// Only for servers that cannot take an already bound socket or report their own port
/// (sshd): another process may grab it in between, so callers retry on "address in use".
pub fn released_loopback_port() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

/// Loopback with port 0: servers that report their bound port (the simulator) take this,
/// which leaves no window for another process to steal the port.
pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Polls `cond` until it holds or `deadline` passes. Only for state that offers no event to
/// wait on (a counter inside another thread); the pause between polls grows so a slow
/// machine is not hammered, and the loop ends at the deadline whatever happens.
pub fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        let Some(left) = remaining(deadline) else {
            return false;
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Where a proptest keeps the failures it found: beside the test's source, with the extension
/// `proptest-regressions` (`tests/quick/spool_model.rs` → `tests/quick/spool_model.proptest-regressions`),
/// where they were when each test file was a binary of its own. proptest's default looks for
/// the crate root (a `main.rs`) above the source and would now write
/// `tests/proptest-regressions/spool_model.txt`, away from the seeds already checked in.
pub fn proptest_regressions() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
    ))
}

/// A directory under the system temp dir, removed with everything in it on `Drop` (also when
/// the test panics), so sshd keys and pty links never pile up. The one temp folder of the
/// integration tests, on `tempfile`'s (a fresh random name, created exclusively, so two tests
/// never share one); the tag in its name says which test left it, should one be left.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> io::Result<TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("rackhand-test-{tag}-"))
            .tempdir()
            .map(TempDir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes `text` to the file `name` in this folder; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

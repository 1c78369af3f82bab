//! Shared harness for the end-to-end tests: the real parts (the `rackhand` binary, OpenSSH's
//! `sshd`, pseudo-terminals, loopback sockets) started on demand and always stopped in `Drop`,
//! plus a small prompt-reading client that plays the collector's part.
//!
//! It lives here, not in the library, because it exists to check the simulator from the
//! outside: it must not share code with what it checks. Each test file pulls it in with
//! `mod support;` and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod accounting;
pub mod agent;
pub mod client;
pub mod collector;
pub mod device;
pub mod fixtures;
pub mod mosquitto;
pub mod process;
pub mod spool_files;
pub mod sshd;
pub mod tls;
pub mod tmpfs;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A directory under the system temp dir, removed with everything in it on `Drop` (also when
/// the test panics), so sshd keys and pty links never pile up.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        let mut last_err = None;
        // `create_dir` (not `_all`) fails if the name is taken, so two tests never share one.
        for _ in 0..16 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "rackhand-test-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create a temp dir under {}: {e}", base.display()),
                    ));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("temp dir names exhausted")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

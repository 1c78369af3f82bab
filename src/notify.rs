//! systemd's notification protocol (`sd_notify`): `READY=1`, `WATCHDOG=1`, `STOPPING=1`,
//! `STATUS=...` as datagrams on the socket named by `NOTIFY_SOCKET`.
//!
//! A dozen lines of protocol do not justify a dependency; this also keeps the abstract
//! socket form (`@name`) and the watchdog interval (`WATCHDOG_USEC`, `WATCHDOG_PID`) in one
//! place. Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager, if there is one.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and the watchdog settings from the environment.
    pub(crate) fn from_env() -> io::Result<Notifier> {
        let socket = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(path) => {
                let path = path.to_string_lossy().into_owned();
                let addr = match path.strip_prefix('@') {
                    Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
                    None => SocketAddr::from_pathname(&path)?,
                };
                Some((UnixDatagram::unbound()?, addr))
            }
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| for_us)
            .filter(|&us| us > 0)
            .map(Duration::from_micros);
        Ok(Notifier { socket, watchdog })
    }

    /// A notifier that sends nothing (not under systemd, or its socket is unusable).
    pub(crate) fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog: None,
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd enforces.
    pub(crate) fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    #[cfg(test)]
    fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    fn send(&self, state: &str) -> io::Result<()> {
        match &self.socket {
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(|_| ()),
            None => Ok(()),
        }
    }

    pub(crate) fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={status}"))
    }

    pub(crate) fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    pub(crate) fn reloading(&self) -> io::Result<()> {
        self.send("RELOADING=1")
    }

    pub(crate) fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_listening_socket() {
        let dir = crate::test_support::temp_dir("notify");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(60)),
        };
        notifier.ready("collecting 3 devices").unwrap();
        notifier.watchdog().unwrap();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=collecting 3 devices");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        assert_eq!(notifier.watchdog_period(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn without_a_socket_everything_is_a_no_op() {
        let notifier = Notifier {
            socket: None,
            watchdog: None,
        };
        assert!(!notifier.is_active());
        notifier.ready("x").unwrap();
        assert_eq!(notifier.watchdog_period(), None);
    }
}

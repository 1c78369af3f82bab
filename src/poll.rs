//! poll(2), in one place. The agent waits on descriptors with a deadline in three places
//! (a serial port, an SSH socket, a driver child's pipes); each needs the same two details
//! right: the timeout rounded *up* to whole milliseconds, so a wait never ends just before
//! its deadline, and a signal (EINTR) treated as an early wake-up, not an error, because
//! every caller re-checks its own deadline in a loop.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// One `pollfd` asking for `events` on `fd`.
pub(crate) fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passed. Returns how many are ready (0 on
/// timeout or when a signal woke the call early); each `revents` says what happened.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis(timeout)) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

/// Waits on one descriptor; returns its `revents` (0 on timeout or an early wake-up).
pub(crate) fn wait(
    fd: RawFd,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    let mut fds = [pollfd(fd, events)];
    poll(&mut fds, timeout)?;
    Ok(fds[0].revents)
}

/// poll(2) takes whole milliseconds: round up, so a wait never ends just before its deadline.
fn millis(d: Duration) -> libc::c_int {
    d.as_nanos()
        .div_ceil(1_000_000)
        .min(libc::c_int::MAX as u128) as libc::c_int
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), libc::c_int::MAX);
        // Moved from isolation and serial, which each had their own copy.
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
    }

    #[test]
    fn wait_reports_readiness_and_times_out_without_it() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let started = Instant::now();
        assert_eq!(
            wait(b.as_raw_fd(), libc::POLLIN, Duration::from_millis(30)).unwrap(),
            0
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        a.write_all(b"x").unwrap();
        let revents = wait(b.as_raw_fd(), libc::POLLIN, Duration::from_secs(5)).unwrap();
        assert_ne!(revents & libc::POLLIN, 0);
    }
}

//! A simulated console port on a pseudo-terminal.
//!
//! The agent's serial transport must be tested without a USB-serial adapter and a switch, so
//! a pty stands in for the cable: the agent opens the slave (through a stable symlink, as it
//! would open `/dev/serial/by-id/...`) and the simulator plays the device on the master. A
//! console behaves unlike a network session: it is silent until a key is pressed (a chatty
//! one logs a few lines meanwhile, waiting on the line for whoever opens it next), survives
//! logouts (back to "Press RETURN"), and runs at the baud rate of the line.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::termios::{self, BaudRate, SetArg};

use super::SimError;
use super::engine::Engine;
use super::profile::Profile;
use super::session::{self, Counting, Link, StopSignal};
use super::stats::Stats;

/// One simulated device behind a pty; removes its symlink and stops its thread on
/// [`PtyConsole::stop`] or drop.
pub struct PtyConsole {
    link: PathBuf,
    device: PathBuf,
    stats: Arc<Stats>,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
    /// Our own handle on the slave: while it is open the master never sees EIO/HUP, so the
    /// agent can close and reopen the port as often as it likes.
    _slave: OwnedFd,
}

impl PtyConsole {
    /// Creates the pty, points `link` at its slave (replacing a stale symlink) and serves
    /// `profile` on it; output is paced to `baud / 10` bytes per second when `baud` is given.
    pub fn start(link: &Path, baud: Option<u32>, profile: Profile) -> Result<PtyConsole, SimError> {
        let pty_err = |e: nix::Error| SimError::Pty {
            link: link.to_path_buf(),
            source: e.into(),
        };
        let pty = nix::pty::openpty(None, None).map_err(pty_err)?;
        // openpty's descriptors are inherited by every child process started after it (an
        // agent a test starts): a child's copy of the master would keep the console alive
        // after `stop`, so the agent would never see the cable pulled.
        for fd in [&pty.master, &pty.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(pty_err)?;
        }
        let mut attrs = termios::tcgetattr(&pty.slave).map_err(pty_err)?;
        termios::cfmakeraw(&mut attrs);
        if let Some(rate) = baud.and_then(baud_rate) {
            termios::cfsetspeed(&mut attrs, rate).map_err(pty_err)?;
        }
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).map_err(pty_err)?;
        let flags = fcntl(&pty.master, FcntlArg::F_GETFL).map_err(pty_err)?;
        fcntl(
            &pty.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(pty_err)?;
        let device = nix::unistd::ttyname(&pty.slave).map_err(pty_err)?;
        place_link(link, &device)?;

        let stats = Stats::new(1);
        let stop = StopSignal::new().map_err(|e| {
            SimError::io(
                format!("cannot create the stop pipe of console {}", link.display()),
                e,
            )
        })?;
        let thread = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            let master = pty.master;
            let hostname = profile.hostname.clone();
            let profile = Arc::new(profile);
            std::thread::Builder::new()
                .name(format!("sim-console-{hostname}"))
                .spawn(move || {
                    let mut engine = Engine::new(profile, &hostname, true);
                    let mut link = ConsoleLink {
                        master,
                        rate: baud.map(|b| (b / 10).max(1)),
                    };
                    session::run(
                        &mut link,
                        &mut engine,
                        Some(&stop),
                        Counting {
                            stats: &stats,
                            device: 0,
                        },
                    );
                })
                .map_err(|e| {
                    let _ = fs::remove_file(link);
                    SimError::io(
                        format!("cannot start the thread of console {}", link.display()),
                        e,
                    )
                })?
        };
        Ok(PtyConsole {
            link: link.to_path_buf(),
            device,
            stats,
            stop,
            thread: Some(thread),
            _slave: pty.slave,
        })
    }

    /// The pty slave (`/dev/pts/N`) the link points to.
    pub fn device_path(&self) -> &Path {
        &self.device
    }

    /// The symlink the agent opens.
    pub fn link_path(&self) -> &Path {
        &self.link
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            // Only our own link: someone may have pointed the path elsewhere meanwhile.
            if fs::read_link(&self.link).is_ok_and(|target| target == self.device) {
                let _ = fs::remove_file(&self.link);
            }
        }
    }
}

impl Drop for PtyConsole {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Points `link` at `device`; an existing symlink (a stale one from a killed run) is
/// replaced, anything else is left alone and reported.
fn place_link(link: &Path, device: &Path) -> Result<(), SimError> {
    let link_err = |e: io::Error| SimError::Link {
        link: link.to_path_buf(),
        source: e,
    };
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => fs::remove_file(link).map_err(link_err)?,
        Ok(_) => {
            return Err(link_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "it exists and is not a symlink",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(link_err(e)),
    }
    std::os::unix::fs::symlink(device, link).map_err(link_err)
}

/// The termios constant for a baud rate, for the rates serial consoles use.
fn baud_rate(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        1200 => BaudRate::B1200,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115200 => BaudRate::B115200,
        230400 => BaudRate::B230400,
        460800 => BaudRate::B460800,
        921600 => BaudRate::B921600,
        _ => return None,
    })
}

struct ConsoleLink {
    master: OwnedFd,
    rate: Option<u32>,
}

impl Link for ConsoleLink {
    fn input(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    fn output(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    fn rate(&self) -> Option<u32> {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    fn profile() -> Profile {
        let mut p = Profile::for_platform("cisco_ios").unwrap();
        p.login = false;
        p.page_lines = 0;
        p.outputs.insert("show block", &[b'x'; 239]);
        p
    }

    #[test]
    fn a_stale_link_is_replaced_and_removed_at_stop() {
        let dir = temp_dir("console-stale");
        let link = dir.path().join("ttyS0");
        symlink("/nonexistent/pts/99", &link).unwrap();
        let console = PtyConsole::start(&link, None, profile()).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), console.device_path());
        assert!(console.device_path().starts_with("/dev/pts"));
        console.stop();
        assert!(!link.exists() && fs::symlink_metadata(&link).is_err());
    }

    #[test]
    fn a_regular_file_at_the_link_is_left_alone() {
        let dir = temp_dir("console-file");
        let link = dir.path().join("ttyS0");
        fs::write(&link, b"keep me").unwrap();
        let err = PtyConsole::start(&link, None, profile())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&link.display().to_string()), "{err}");
        assert_eq!(fs::read(&link).unwrap(), b"keep me");
    }

    /// Reads from the slave until `want` ends what arrived, or the deadline passes.
    fn read_until(fd: &fs::File, want: &[u8], deadline: Instant) -> Vec<u8> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {want:?} in time; got {got:?}");
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, timeout).unwrap() > 0 {
                let n = nix::unistd::read(fd.as_fd(), &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    }

    #[test]
    fn silent_until_a_key_then_paced_at_the_baud_rate() {
        let dir = temp_dir("console-baud");
        let link = dir.path().join("ttyS0");
        let console = PtyConsole::start(&link, Some(2400), profile()).unwrap();
        let port = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&link)
            .unwrap();
        let mut fds = [nix::poll::PollFd::new(
            port.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let quiet = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(300u16)).unwrap();
        assert_eq!(quiet, 0, "the console spoke before a key was pressed");
        nix::unistd::write(&port, b"\r").unwrap();
        read_until(&port, b"sim#", Instant::now() + Duration::from_secs(5));
        // 240 bytes of output + echo and prompt at 240 bytes/s: about a second.
        let started = Instant::now();
        nix::unistd::write(&port, b"show block\r").unwrap();
        read_until(&port, b"x\r\nsim#", Instant::now() + Duration::from_secs(5));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "2400 baud output took only {took:?}"
        );
        assert_eq!(console.stats().total(), 1);
        console.stop();
    }
}

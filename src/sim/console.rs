//! A simulated console port on a pseudo-terminal.
//!
//! The agent's serial transport must be tested without a USB-serial adapter and a switch, so
//! a pty stands in for the cable: the agent opens the slave (through a stable symlink, as it
//! would open `/dev/serial/by-id/...`) and the simulator plays the device on the master. A
//! console behaves unlike a network session: it is silent until a key is pressed, survives
//! logouts (back to "Press RETURN"), and runs at the baud rate of the line.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
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

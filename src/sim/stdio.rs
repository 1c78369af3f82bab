//! One simulated device session on stdin/stdout, for OpenSSH `sshd`'s `ForceCommand`.
//!
//! The agent's SSH transport must be tested against a real SSH server (key exchange, auth,
//! pty requests), and the simplest honest setup is a throw-away `sshd` whose forced command
//! is `rackhand sim --stdio`: sshd does the SSH part and authentication, this does the device.
//! With a pty (the usual interactive case) the terminal is put in raw mode so the device,
//! not the tty driver, echoes and edits, as real gear does.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use nix::sys::termios::{self, SetArg, Termios};

use super::SimError;
use super::engine::Engine;
use super::profile::Profile;
use super::session::{self, Counting, Link};
use super::stats::Stats;

/// Serves one session until the device ends it (`exit`) or stdin reaches EOF.
pub fn serve_stdio(profile: Profile) -> Result<(), SimError> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    let _raw = RawMode::enter(stdin.as_fd())?;
    let hostname = profile.hostname.clone();
    let mut engine = Engine::new(Arc::new(profile), &hostname, false);
    let mut link = StdioLink {
        input: stdin.as_fd(),
        output: stdout.as_fd(),
    };
    let stats = Stats::new(1);
    session::run(
        &mut link,
        &mut engine,
        None,
        Counting {
            stats: &stats,
            device: 0,
        },
    );
    Ok(())
}

/// Raw mode on a tty for as long as it lives; the previous settings come back on drop, also
/// when the session ends by an error.
struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Option<Termios>,
}

impl<'a> RawMode<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Result<RawMode<'a>, SimError> {
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return Ok(RawMode { fd, saved: None });
        }
        let err = |e: nix::Error| SimError::io("cannot put the terminal on stdin into raw mode", e);
        let saved = termios::tcgetattr(fd).map_err(err)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(err)?;
        Ok(RawMode {
            fd,
            saved: Some(saved),
        })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, saved);
        }
    }
}

struct StdioLink<'a> {
    input: BorrowedFd<'a>,
    output: BorrowedFd<'a>,
}

impl Link for StdioLink<'_> {
    fn input(&self) -> BorrowedFd<'_> {
        self.input
    }

    fn output(&self) -> BorrowedFd<'_> {
        self.output
    }
}

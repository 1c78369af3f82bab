//! Starting the driver process and ending it.
//!
//! The driver process runs untrusted code, so it starts confined: a cleared environment (no
//! secret from an `*_env` variable leaks into it), its own process group (a kill reaches what
//! it started too), PR_SET_PDEATHSIG (it dies with the agent) and rlimits on memory, open
//! files and CPU time. [`DriverProcess`] owns it from then on and kills and reaps it, group
//! and all, on drop: whatever happens in the watch loop, no child outlives the call and no
//! zombie remains.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{LOGOUT, Limits};
use crate::inventory::Device;

/// Environment a driver keeps; everything else (secrets in `*_env` variables) is cleared.
const ENV_KEEP: &[&str] = &[
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// What to run as the driver process: `program` with `args`, shown as `arg0` in ps.
pub(super) struct Program<'a> {
    pub(super) path: &'a Path,
    pub(super) arg0: &'a std::ffi::OsStr,
    pub(super) args: &'a [&'a str],
}

/// Starts `program` confined: cleared environment, piped stdio, a process group of its own,
/// PDEATHSIG and `limits` (CPU time: `cpu_seconds`).
pub(super) fn spawn(program: &Program<'_>, limits: Limits, cpu_seconds: u64) -> io::Result<Child> {
    let mut command = Command::new(program.path);
    command
        .arg0(program.arg0)
        .args(program.args)
        .env_clear()
        .envs(
            ENV_KEEP
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a kill reaches whatever the driver started too.
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe
    // system calls (prctl, getppid, getrlimit, setrlimit) and allocates nothing.
    unsafe {
        command.pre_exec(move || confine(parent, limits, cpu_seconds));
    }
    command.spawn()
}

/// Between fork and exec: die with the agent, and live within limits.
fn confine(parent: libc::pid_t, limits: Limits, cpu_seconds: u64) -> io::Result<()> {
    // SAFETY: plain system calls on this process with valid arguments.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // The agent may have died between fork and prctl: then we were re-parented already
        // and the death signal will never come.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        limit(libc::RLIMIT_AS, limits.address_space, limits.address_space)?;
        // Soft: SIGXCPU (named in the record); hard one second later: SIGKILL.
        limit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)?;
        limit(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files)?;
    }
    Ok(())
}

/// Lowers a limit; never asks for more than the current hard limit (that needs privileges).
unsafe fn limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = (hard as libc::rlim_t).min(current.rlim_max);
    let new = libc::rlimit {
        rlim_cur: (soft as libc::rlim_t).min(hard),
        rlim_max: hard,
    };
    // SAFETY: `new` is a valid rlimit.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most CPU time a driver can legitimately use: every command at its worst (with a
/// reconnect before it), then the logout. CPU time never exceeds wall time.
pub(super) fn cpu_limit(device: &Device, commands: usize, grace: Duration) -> u64 {
    let per = device.connect_timeout + device.command_timeout + grace;
    let total = per * commands as u32 + LOGOUT + grace;
    total.as_secs() + 1
}

/// The driver process; killed (with its process group) and reaped on drop whatever happened.
pub(super) struct DriverProcess {
    pub(super) child: Child,
    status: Option<ExitStatus>,
}

impl DriverProcess {
    pub(super) fn new(child: Child) -> DriverProcess {
        DriverProcess {
            child,
            status: None,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills whatever is left of the group. Only before the leader is reaped: until then its
    /// pid, which is the group id, cannot be reused.
    pub(super) fn kill_group(&self) {
        if self.status.is_none() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: signals to our own unreaped child and its process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Once the leader has exited: sweeps stragglers that would hold stdout open, then reaps
    /// the leader without blocking. True once it is reaped.
    pub(super) fn reap_if_exited(&mut self) -> io::Result<bool> {
        if !has_exited(self.pid())? {
            return Ok(false);
        }
        // The leader is a zombie now, not yet reaped, so its pid (the group id) is still
        // ours: sweep stragglers that would hold stdout open, then reap.
        self.kill_group();
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.status = status;
        }
        Ok(status.is_some())
    }

    /// Ends it all: sweeps the group (the leader, if it still runs, and whatever it left
    /// behind), then collects the leader's exit status.
    pub(super) fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.kill_group();
            self.status = self.child.wait().ok();
        }
        self.status
    }

    /// A descriptor that becomes readable when the process exits; kernels before 5.3 lack
    /// pidfd_open.
    pub(super) fn pidfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_open(2) with no flags; the result is a new descriptor we then own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid() as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor (O_CLOEXEC by default).
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Whether child `pid` has exited, without reaping it (waitid with WNOWAIT).
fn has_exited(pid: u32) -> io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is valid; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // With WNOHANG and no exited child, waitid leaves si_pid at 0.
    // SAFETY: si_pid is valid to read after waitid on a SIGCHLD-type result.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Makes a pipe's reads and writes return `WouldBlock` instead of waiting.
pub(super) fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

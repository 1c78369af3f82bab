//! Process isolation: a device's session in a child process the agent can kill.
//!
//! Threads are for waiting on devices; child processes are for code that cannot be trusted
//! inside the agent. A thread blocked in a library call cannot be stopped, a segfault in a
//! transport takes the whole agent down, a leak grows the agent. A child can be SIGKILLed at
//! its deadline, its crash is a record (`driver_crashed`), its memory and CPU time are capped by
//! rlimits, and it dies with the agent (PR_SET_PDEATHSIG).
//!
//! The child is `rackhand driver` (the same binary, hidden subcommand) or, for a device with
//! `driver_exec`, any program speaking the same JSON lines protocol (`protocol.rs`,
//! `docs/driver-protocol.md`). The agent side here spawns it, writes the request, reads
//! outcomes with a deadline per command, forwards its stderr to the log under the device's
//! name, and always kills what is left of its process group and reaps it before returning, so
//! no child outlives the call and no zombie remains. The child never outlives the thread that
//! forked it either, which matters because PDEATHSIG is tied to that thread.
//!
//! Only an outcome restarts the deadline. Whatever else a driver prints on stdout (blank
//! lines, log text, progress, JSON of a type we do not know) is tolerated but counts against
//! the running deadline, and against a budget per outcome (`CHATTER_LINES`,
//! `CHATTER_BYTES`): a driver that keeps talking without answering is killed at its
//! deadline like a silent one, and one that floods is stopped as soon as it passes the
//! budget, before it costs the agent much CPU.
//!
//! One file per concern: `process.rs` starts the driver process confined (environment,
//! process group, PDEATHSIG, rlimits) and kills and reaps it; `watch.rs` is the watch loop
//! (request out, outcomes in, the deadline and the chatter budget); `ending.rs` words how it
//! ended for the unanswered commands; `stderr.rs` forwards its stderr to the log; the wire
//! format is `protocol.rs`, the driver process's own side `child.rs`. Here "driver" is always
//! that child process, never the platform table (`crate::platform`).

pub(crate) mod child;
mod ending;
mod process;
pub(crate) mod protocol;
mod stderr;
mod watch;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::Device;
use crate::outcome::{Outcome, Status};
use ending::{End, Violation, describe_exit};
use process::{DriverProcess, Program};
use stderr::forward_stderr;
use watch::{Ending, Watch};

/// Time a driver gets beyond the device's own timeouts: process start, JSON, a slow Pi.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// How long a session's polite logout may take after the last command (see `Session::close`).
const LOGOUT: Duration = Duration::from_secs(2);
/// Lines on stdout that are neither an outcome nor `done`, and their bytes, a driver may
/// print while the agent waits for one outcome (or for `done`); past either it is a protocol
/// violation. Generous for a driver logging to stdout by mistake, small next to a flood.
pub(crate) const CHATTER_LINES: u64 = 1000;
pub(crate) const CHATTER_BYTES: u64 = 256 << 10;
/// How long to wait for the stderr forwarder once the driver is gone: an escaped grandchild
/// may hold the pipe; the forwarder then finishes on its own.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// Resource limits for a driver process (the CPU time limit comes from the device's timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS in bytes.
    pub address_space: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            address_space: 512 << 20,
            open_files: 256,
        }
    }
}

/// Why a driver could not even be started.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(
        "cannot find the rackhand executable to re-run as `rackhand driver`: {0}; run rackhand from an installed path"
    )]
    SelfExe(io::Error),
    #[error(
        "{device}: cannot start the driver `{program}`: {source}; check that it exists and is executable (driver_exec)"
    )]
    Spawn {
        device: String,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{device}: cannot watch the driver process (pid {pid}): {source}")]
    Watch {
        device: String,
        pid: u32,
        source: io::Error,
    },
}

/// Runs sessions in driver processes.
#[derive(Debug, Clone)]
pub struct Isolator {
    rackhand: PathBuf,
    grace: Duration,
    limits: Limits,
}

/// [`Isolator::collect`] with this executable as `rackhand driver` and the default limits:
/// the drop-in for `session::collect` where `device.isolation` is `process`.
pub(crate) fn collect_isolated(
    device: &Device,
    commands: &[String],
    emit: &mut dyn FnMut(Outcome),
) {
    match Isolator::current() {
        Ok(isolator) => isolator.collect(device, commands, emit),
        Err(e) => {
            let error = format!("{}: {e}", device.name);
            for command in commands {
                emit(unanswered(device, command, Status::DriverCrashed, &error));
            }
        }
    }
}

impl Isolator {
    /// Drivers are `rackhand driver` run from `rackhand` (a path to the rackhand binary).
    pub fn new(rackhand: impl Into<PathBuf>) -> Isolator {
        Isolator {
            rackhand: rackhand.into(),
            grace: DEFAULT_GRACE,
            limits: Limits::default(),
        }
    }

    /// Drivers are this very executable (the agent itself). Through `/proc/self/exe` where
    /// there is one: it names the running image even after a package upgrade replaced the
    /// file, so agent and driver always speak the same protocol version.
    pub fn current() -> Result<Isolator, IsolationError> {
        let proc_exe = Path::new("/proc/self/exe");
        if proc_exe.exists() {
            return Ok(Isolator::new(proc_exe));
        }
        std::env::current_exe()
            .map(Isolator::new)
            .map_err(IsolationError::SelfExe)
    }

    pub fn with_grace(mut self, grace: Duration) -> Isolator {
        self.grace = grace;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Isolator {
        self.limits = limits;
        self
    }

    /// Runs `commands` on `device` in a driver process (`device.driver_exec`, else `rackhand
    /// driver`) and hands one outcome per command to `emit`, in order, each as it arrives.
    /// Returns once the driver is gone and reaped, at the latest at the deadlines described
    /// in the module docs.
    pub fn collect(&self, device: &Device, commands: &[String], emit: &mut dyn FnMut(Outcome)) {
        if commands.is_empty() {
            return;
        }
        let program = match &device.driver_exec {
            Some(exec) => Program {
                path: exec,
                arg0: exec.as_os_str(),
                args: &[],
            },
            // `rackhand driver` in ps, also when started through /proc/self/exe.
            None => Program {
                path: &self.rackhand,
                arg0: std::ffi::OsStr::new("rackhand"),
                args: &["driver"],
            },
        };
        let mut answered = 0usize;
        let result = self.supervise(device, commands, &program, &mut |o| {
            answered += 1;
            emit(o);
        });
        let rest = &commands[answered.min(commands.len())..];
        let Some(first) = rest.first() else {
            return;
        };
        let (status, error) = match result {
            Err(e) => (Status::DriverCrashed, e.to_string()),
            Ok(end) => end.describe(device, &driver_label(device), first, self.grace),
        };
        for command in rest {
            emit(unanswered(device, command, status, &error));
        }
    }

    /// Starts the driver process, watches it to its end, reaps it and says how it ended.
    fn supervise(
        &self,
        device: &Device,
        commands: &[String],
        program: &Program<'_>,
        emit: &mut dyn FnMut(Outcome),
    ) -> Result<End, IsolationError> {
        let start = Instant::now();
        let cpu_seconds = process::cpu_limit(device, commands.len(), self.grace);
        let child = process::spawn(program, self.limits, cpu_seconds).map_err(|source| {
            IsolationError::Spawn {
                device: device.name.clone(),
                program: program.path.to_path_buf(),
                source,
            }
        })?;
        let mut driver = DriverProcess::new(child);
        let pid = driver.pid();
        log::debug!(
            "{}: driver `{}` started (pid {pid})",
            device.name,
            driver_label(device)
        );
        let stderr_done = driver
            .child
            .stderr
            .take()
            .map(|stderr| forward_stderr(&device.name, stderr));
        let ending = Watch::new(device, commands, self.grace, start, emit).run(&mut driver);
        let status = driver.reap();
        if let Some(done) = stderr_done {
            let _ = done.recv_timeout(STDERR_DRAIN);
        }
        Ok(match ending? {
            Ending::Done => {
                if let Some(status) = status.filter(|s| !s.success()) {
                    log::warn!(
                        "{}: the driver {} after answering every command",
                        device.name,
                        describe_exit(status)
                    );
                }
                End::Done
            }
            Ending::Killed { budget, chatter } => End::Killed {
                budget,
                elapsed: start.elapsed(),
                chatter,
            },
            Ending::Violation(violation) => End::Violation { pid, violation },
            Ending::Exited => match status {
                Some(status) => End::Exited { pid, status },
                None => End::Violation {
                    pid,
                    violation: Violation::NoExitStatus,
                },
            },
        })
    }
}

/// The driver as people know it: its `driver_exec` path, else `rackhand driver`.
fn driver_label(device: &Device) -> String {
    match &device.driver_exec {
        Some(exec) => exec.display().to_string(),
        None => "rackhand driver".to_string(),
    }
}

fn unanswered(device: &Device, command: &str, status: Status, error: &str) -> Outcome {
    Outcome {
        device: device.name.clone(),
        transport: device.transport.as_str().to_string(),
        command: command.to_string(),
        status,
        error: Some(error.to_string()),
        output: Vec::new(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
    }
}

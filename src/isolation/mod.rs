//! Process isolation: a device's session in a child process the agent can kill.
//!
//! Threads are for waiting on devices; child processes are for code that cannot be trusted
//! inside the agent. A thread blocked in a library call cannot be stopped, a segfault in a
//! transport takes the whole agent down, a leak grows the agent. A child can be SIGKILLed at
//! its deadline, its crash is a record (`driver_crashed`), its memory and CPU time are capped by
//! rlimits, and it dies with the agent (PR_SET_PDEATHSIG).
//!
//! The child is `rackhand driver` (the same binary, hidden subcommand) or, for a device with
//! `driver_exec`, any program speaking the same JSON lines protocol ([`protocol`],
//! `docs/driver-protocol.md`). The agent side here spawns it, writes the request, reads
//! outcomes with a deadline per command, forwards its stderr to the log under the device's
//! name, and always kills what is left of its process group and reaps it before returning, so
//! no child outlives the call and no zombie remains. The child never outlives the thread that
//! forked it either, which matters because PDEATHSIG is tied to that thread.
//!
//! Only an outcome restarts the deadline. Whatever else a driver prints on stdout (blank
//! lines, log text, progress, JSON of a type we do not know) is tolerated but counts against
//! the running deadline, and against a budget per outcome ([`CHATTER_LINES`],
//! [`CHATTER_BYTES`]): a driver that keeps talking without answering is killed at its
//! deadline like a silent one, and one that floods is stopped as soon as it passes the
//! budget, before it costs the agent much CPU.

pub mod child;
pub mod protocol;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::Device;
use crate::record::{Outcome, Status};
use protocol::{DriverLine, LineBuffer, Reply, Request, WireDevice};

/// Time a driver gets beyond the device's own timeouts: process start, JSON, a slow Pi.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// How long a session's polite logout may take after the last command (see `Session::close`).
const LOGOUT: Duration = Duration::from_secs(2);
/// One read from the driver's stdout; the line buffer holds at most its cap plus this.
const READ_CHUNK: usize = 64 << 10;
/// Reads per poll round, so a flooding driver cannot keep the loop from its deadline check.
const READS_PER_ROUND: usize = 16;
/// Upper bound on poll rounds; every round either makes progress or reaches the deadline.
const MAX_ROUNDS: usize = 1 << 24;
/// Lines on stdout that are neither an outcome nor `done`, and their bytes, a driver may
/// print while the agent waits for one outcome (or for `done`); past either it is a protocol
/// violation. Generous for a driver logging to stdout by mistake, small next to a flood.
pub const CHATTER_LINES: u64 = 1000;
pub const CHATTER_BYTES: u64 = 256 << 10;
/// Stderr lines longer than this are split; more lines than the count are dropped (counted).
const STDERR_LINE: u64 = 4096;
const STDERR_LINES: usize = 2000;
/// How long to wait for the stderr forwarder once the driver is gone: an escaped grandchild
/// may hold the pipe; the forwarder then finishes on its own.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
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
pub fn collect_isolated(device: &Device, commands: &[String], emit: &mut dyn FnMut(Outcome)) {
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
        let (program, args): (&Path, &[&str]) = match &device.driver_exec {
            Some(exec) => (exec, &[]),
            None => (&self.rackhand, &["driver"]),
        };
        // `rackhand driver` in ps, also when started through /proc/self/exe.
        let arg0 = match &device.driver_exec {
            Some(exec) => exec.as_os_str(),
            None => std::ffi::OsStr::new("rackhand"),
        };
        let mut answered = 0usize;
        let result = self.supervise(device, commands, (program, arg0, args), &mut |o| {
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

    fn supervise(
        &self,
        device: &Device,
        commands: &[String],
        (program, arg0, args): (&Path, &std::ffi::OsStr, &[&str]),
        emit: &mut dyn FnMut(Outcome),
    ) -> Result<End, IsolationError> {
        let start = Instant::now();
        let cpu_seconds = cpu_limit(device, commands.len(), self.grace);
        let mut command = Command::new(program);
        command
            .arg0(arg0)
            .args(args)
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
        let limits = self.limits;
        // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe
        // system calls (prctl, getppid, getrlimit, setrlimit) and allocates nothing.
        unsafe {
            command.pre_exec(move || confine(parent, limits, cpu_seconds));
        }
        let child = command.spawn().map_err(|source| IsolationError::Spawn {
            device: device.name.clone(),
            program: program.to_path_buf(),
            source,
        })?;
        let mut reaper = Reaper::new(child);
        let pid = reaper.pid();
        log::debug!(
            "{}: driver `{}` started (pid {pid})",
            device.name,
            driver_label(device)
        );
        let stderr_done = reaper
            .child
            .stderr
            .take()
            .map(|stderr| forward_stderr(&device.name, stderr));
        let mut supervisor = Supervisor {
            device,
            commands,
            grace: self.grace,
            start,
            emit,
            answered: 0,
            done: false,
            last_status: None,
            chatter: Chatter::default(),
            chatter_logged: false,
        };
        let end = supervisor.run(&mut reaper);
        let status = reaper.reap();
        if let Some(done) = stderr_done {
            let _ = done.recv_timeout(STDERR_DRAIN);
        }
        let end = match end? {
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
            Ending::Violation(detail) => End::Violation { pid, detail },
            Ending::Exited => match status {
                Some(status) => End::Exited { pid, status },
                None => End::Violation {
                    pid,
                    detail: "its exit status could not be read".into(),
                },
            },
        };
        Ok(end)
    }
}

/// The driver as people know it: its `driver_exec` path, else `rackhand driver`.
fn driver_label(device: &Device) -> String {
    match &device.driver_exec {
        Some(exec) => exec.display().to_string(),
        None => "rackhand driver".to_string(),
    }
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
fn cpu_limit(device: &Device, commands: usize, grace: Duration) -> u64 {
    let per = device.connect_timeout + device.command_timeout + grace;
    let total = per * commands as u32 + LOGOUT + grace;
    total.as_secs() + 1
}

/// How long the driver may take for the next outcome after `previous` (None: the first).
/// The session reconnects after a command that left the device in an unknown state, so such
/// an outcome, like the first, also allows a login.
fn budget(device: &Device, grace: Duration, previous: Option<Status>) -> Duration {
    let login = match previous {
        Some(Status::Ok | Status::CommandError) => Duration::ZERO,
        _ => device.connect_timeout,
    };
    login + device.command_timeout + grace
}

/// The driver process; killed (with its process group) and reaped on drop whatever happened.
struct Reaper {
    child: Child,
    status: Option<ExitStatus>,
}

impl Reaper {
    fn new(child: Child) -> Reaper {
        Reaper {
            child,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills whatever is left of the group. Only before the leader is reaped: until then its
    /// pid, which is the group id, cannot be reused.
    fn kill_group(&self) {
        if self.status.is_none() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: signals to our own unreaped child and its process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Ends it all: sweeps the group (the leader, if it still runs, and whatever it left
    /// behind), then collects the leader's exit status.
    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.kill_group();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.reap();
    }
}

/// How a supervision ended, before the exit status is known.
enum Ending {
    Done,
    Killed { budget: Duration, chatter: Chatter },
    Violation(String),
    Exited,
}

/// What a driver printed besides protocol messages since its last outcome.
#[derive(Debug, Clone, Default)]
struct Chatter {
    lines: u64,
    bytes: u64,
    /// The first line that was not blank, cut short.
    first: Option<String>,
}

impl Chatter {
    /// Counts one line (its `\n` included); false once past the budget.
    fn add(&mut self, line: &[u8]) -> bool {
        self.lines += 1;
        self.bytes += line.len() as u64 + 1;
        if self.first.is_none() && !line.trim_ascii().is_empty() {
            self.first = Some(protocol::excerpt(line));
        }
        self.lines <= CHATTER_LINES && self.bytes <= CHATTER_BYTES
    }

    /// `; meanwhile it printed 3 lines (61 bytes) that are not outcomes, e.g. `…`: only an
    /// outcome restarts the deadline` for a timeout's message, or nothing.
    fn summary(&self) -> String {
        if self.lines == 0 {
            return String::new();
        }
        let example = match &self.first {
            Some(line) => format!(", e.g. `{line}`"),
            None => " (blank)".to_string(),
        };
        format!(
            "; meanwhile it printed {} line{} ({} bytes) that {} not outcomes{example}: only an outcome restarts the deadline",
            self.lines,
            if self.lines == 1 { "" } else { "s" },
            self.bytes,
            if self.lines == 1 { "is" } else { "are" },
        )
    }
}

/// How a driver ended, for the records of the commands it did not answer.
#[derive(Debug)]
enum End {
    Done,
    Killed {
        budget: Duration,
        elapsed: Duration,
        chatter: Chatter,
    },
    Violation {
        pid: u32,
        detail: String,
    },
    Exited {
        pid: u32,
        status: ExitStatus,
    },
}

impl End {
    fn describe(
        &self,
        device: &Device,
        program: &str,
        pending: &str,
        grace: Duration,
    ) -> (Status, String) {
        let name = &device.name;
        match self {
            End::Done => (
                Status::DriverCrashed,
                format!(
                    "{name}: the driver `{program}` said done without answering `{pending}`; see docs/driver-protocol.md"
                ),
            ),
            End::Killed {
                budget,
                elapsed,
                chatter,
            } => (
                Status::Timeout,
                format!(
                    "{name}: no answer for `{pending}` within {:.1} s (timeouts + {:.1} s grace){}; the driver was killed after {:.1} s",
                    budget.as_secs_f64(),
                    grace.as_secs_f64(),
                    chatter.summary(),
                    elapsed.as_secs_f64()
                ),
            ),
            End::Violation { pid, detail } => (
                Status::DriverCrashed,
                format!(
                    "{name}: protocol violation by the driver `{program}` (pid {pid}): {detail}; it was killed (see docs/driver-protocol.md)"
                ),
            ),
            End::Exited { pid, status } => (
                Status::DriverCrashed,
                format!(
                    "{name}: the driver `{program}` (pid {pid}) {} before answering `{pending}`; its stderr is in the agent log under `{name}`",
                    describe_exit(*status)
                ),
            ),
        }
    }
}

/// `was killed by SIGSEGV (core dumped)`, `exited with status 3`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let why = match signal {
            libc::SIGXCPU => " (CPU time limit)",
            _ if status.core_dumped() => " (core dumped)",
            _ => "",
        };
        format!("was killed by {name}{why}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
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

/// The conversation with one running driver.
struct Supervisor<'a> {
    device: &'a Device,
    commands: &'a [String],
    grace: Duration,
    start: Instant,
    emit: &'a mut dyn FnMut(Outcome),
    answered: usize,
    done: bool,
    last_status: Option<Status>,
    /// Since the last outcome.
    chatter: Chatter,
    /// Whether the first chatter line of this driver was logged (only that one is).
    chatter_logged: bool,
}

impl Supervisor<'_> {
    fn run(&mut self, reaper: &mut Reaper) -> Result<Ending, IsolationError> {
        let device = self.device;
        let pid = reaper.pid();
        let watch_err = |source| IsolationError::Watch {
            device: device.name.clone(),
            pid,
            source,
        };
        // Tells when the driver exits without polling; kernels before 5.3 lack it, then
        // try_wait is polled at a short interval instead.
        let pidfd = pidfd_open(pid)
            .map_err(|e| {
                log::debug!("{}: pidfd_open: {e}; polling for the exit", device.name);
            })
            .ok();
        let mut stdin = reaper.child.stdin.take();
        let mut stdout = reaper.child.stdout.take();
        for fd in [
            stdin.as_ref().map(|s| s.as_raw_fd()),
            stdout.as_ref().map(|s| s.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd).map_err(watch_err)?;
        }
        let request = protocol::to_line(&Request {
            kind: "collect".into(),
            version: protocol::VERSION,
            device: WireDevice::from_device(device),
            commands: self.commands.to_vec(),
            log_level: Some(log::max_level().as_str().to_ascii_lowercase()),
        });
        let mut written = 0usize;
        let cap = (device.max_output as usize)
            .saturating_mul(2)
            .saturating_add(64 << 10);
        let mut lines = LineBuffer::new(cap);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut budget_now = budget(device, self.grace, None);
        let mut deadline = self.start + budget_now;
        let mut exited = false;
        for _ in 0..MAX_ROUNDS {
            if exited && stdout.is_none() {
                return Ok(if self.done {
                    Ending::Done
                } else {
                    Ending::Exited
                });
            }
            let now = Instant::now();
            if now >= deadline {
                if self.answered >= self.commands.len() {
                    log::warn!(
                        "{}: the driver (pid {pid}) answered every command but did not exit in time; killed",
                        device.name,
                    );
                    return Ok(Ending::Done);
                }
                return Ok(Ending::Killed {
                    budget: budget_now,
                    chatter: self.chatter.clone(),
                });
            }
            let mut fds = Vec::with_capacity(3);
            let in_at = stdin.as_ref().map(|s| {
                fds.push(crate::poll::pollfd(s.as_raw_fd(), libc::POLLOUT));
                fds.len() - 1
            });
            let out_at = stdout.as_ref().map(|s| {
                fds.push(crate::poll::pollfd(s.as_raw_fd(), libc::POLLIN));
                fds.len() - 1
            });
            let exit_at = match (&pidfd, exited) {
                (Some(fd), false) => {
                    fds.push(crate::poll::pollfd(fd.as_raw_fd(), libc::POLLIN));
                    Some(fds.len() - 1)
                }
                _ => None,
            };
            let mut wait = deadline - now;
            if pidfd.is_none() && !exited {
                wait = wait.min(Duration::from_millis(20));
            }
            crate::poll::poll(&mut fds, wait).map_err(watch_err)?;
            if let (Some(i), Some(pipe)) = (in_at, stdin.as_mut()) {
                if fds[i].revents != 0 {
                    match pipe.write(&request[written..]) {
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // The driver closed stdin or died; its exit tells the rest.
                        Err(_) => written = request.len(),
                    }
                    if written >= request.len() {
                        // EOF after the request: a driver may read until it.
                        stdin = None;
                    }
                }
            }
            if let (Some(i), Some(pipe)) = (out_at, stdout.as_mut()) {
                if fds[i].revents != 0 {
                    let mut eof = false;
                    for _ in 0..READS_PER_ROUND {
                        match pipe.read(&mut chunk) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => {
                                let complete = match lines.push(&chunk[..n]) {
                                    Ok(complete) => complete,
                                    Err(over) => {
                                        return Ok(Ending::Violation(format!(
                                            "a line longer than {} bytes (the cap is max_output × 2 + 64 KiB)",
                                            over.cap
                                        )));
                                    }
                                };
                                for line in complete {
                                    match self.take_line(&line) {
                                        Err(detail) => return Ok(Ending::Violation(detail)),
                                        // The deadline runs on.
                                        Ok(Taken::Chatter) => continue,
                                        Ok(Taken::Message) => {}
                                    }
                                    budget_now = if self.done {
                                        self.grace
                                    } else if self.answered >= self.commands.len() {
                                        LOGOUT + self.grace
                                    } else {
                                        budget(device, self.grace, self.last_status)
                                    };
                                    deadline = Instant::now() + budget_now;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                log::warn!("{}: reading the driver's output: {e}", device.name);
                                eof = true;
                                break;
                            }
                        }
                    }
                    if eof {
                        stdout = None;
                        if lines.pending() > 0 && !self.done {
                            log::warn!(
                                "{}: the driver's output ended in the middle of a line ({} bytes dropped)",
                                device.name,
                                lines.pending()
                            );
                        }
                    }
                }
            }
            let check_exit = match exit_at {
                Some(i) => fds[i].revents != 0,
                None => pidfd.is_none() && !exited,
            };
            if check_exit && has_exited(pid).map_err(watch_err)? {
                // The leader is a zombie now, not yet reaped, so its pid (the group id) is
                // still ours: sweep stragglers that would hold stdout open, then reap.
                reaper.kill_group();
                exited = reaper
                    .child
                    .try_wait()
                    .map_err(watch_err)?
                    .map(|status| reaper.status = Some(status))
                    .is_some();
            }
        }
        Ok(Ending::Killed {
            budget: budget_now,
            chatter: self.chatter.clone(),
        })
    }

    /// One line from the driver: an outcome is checked and passed on, `done` noted, anything
    /// else counted against the chatter budget.
    fn take_line(&mut self, line: &[u8]) -> Result<Taken, String> {
        let reply = match protocol::read_line(line).map_err(|e| e.to_string())? {
            DriverLine::Reply(reply) => reply,
            DriverLine::Chatter => return self.take_chatter(line).map(|()| Taken::Chatter),
        };
        self.chatter = Chatter::default();
        if self.done {
            return Err("a line after `done`".into());
        }
        match reply {
            Reply::Done => {
                if self.answered < self.commands.len() {
                    return Err(format!(
                        "`done` after {} of {} outcomes",
                        self.answered,
                        self.commands.len()
                    ));
                }
                self.done = true;
            }
            Reply::Outcome(w) => {
                let Some(expected) = self.commands.get(self.answered) else {
                    return Err(format!(
                        "more outcomes than the {} commands asked",
                        self.commands.len()
                    ));
                };
                if &w.command != expected {
                    return Err(format!(
                        "an outcome for `{}` where `{expected}` was next (outcomes come in request order)",
                        w.command
                    ));
                }
                let mut status = protocol::parse_status(&w.status).map_err(|e| e.to_string())?;
                let mut output = w.output_bytes().map_err(|e| e.to_string())?;
                let mut error = w.error.clone();
                let max = self.device.max_output as usize;
                if output.len() > max {
                    output.truncate(max);
                    if matches!(status, Status::Ok | Status::CommandError) {
                        status = Status::OutputTooLarge;
                        error = Some(format!(
                            "{}: the driver sent more than max_output ({max} bytes); kept the first {max}",
                            self.device.name
                        ));
                    }
                }
                if status != Status::Ok && error.is_none() {
                    error = Some(format!(
                        "{}: the driver reported `{}` without a reason",
                        self.device.name, w.status
                    ));
                }
                self.answered += 1;
                self.last_status = Some(status);
                (self.emit)(Outcome {
                    device: self.device.name.clone(),
                    transport: self.device.transport.as_str().to_string(),
                    command: expected.clone(),
                    status,
                    error,
                    output,
                    started_at: w.started_at().unwrap_or_else(SystemTime::now),
                    duration: Duration::from_millis(w.duration_ms),
                });
            }
        }
        Ok(Taken::Message)
    }

    /// A line that is not a protocol message: logged if it is the driver's first one, counted,
    /// and a violation once past the budget.
    fn take_chatter(&mut self, line: &[u8]) -> Result<(), String> {
        let within = self.chatter.add(line);
        match &self.chatter.first {
            Some(first) if !self.chatter_logged => {
                self.chatter_logged = true;
                log::warn!(
                    "{}: the driver `{}` printed `{first}` on stdout, which is neither an outcome nor `done`: ignored, and it does not restart any deadline (logs belong on stderr)",
                    self.device.name,
                    driver_label(self.device)
                );
            }
            _ => {}
        }
        if within {
            return Ok(());
        }
        let waiting = match self.commands.get(self.answered) {
            Some(command) => format!("the outcome of `{command}`"),
            None => "`done`".to_string(),
        };
        Err(format!(
            "{} lines ({} bytes) on stdout that are neither an outcome nor `done` while waiting for {waiting}, more than the {CHATTER_LINES} lines or {CHATTER_BYTES} bytes allowed{}; logs belong on stderr",
            self.chatter.lines,
            self.chatter.bytes,
            match &self.chatter.first {
                Some(first) => format!(" (the first: `{first}`)"),
                None => " (all blank)".to_string(),
            }
        ))
    }
}

/// What a line from the driver was.
enum Taken {
    /// An outcome or `done`: the deadline starts again.
    Message,
    /// Anything else: the deadline runs on.
    Chatter,
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; the result is a new descriptor we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor (O_CLOEXEC by default).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Logs the driver's stderr line by line under the device's name, on a thread of its own (a
/// driver blocked on a full stderr pipe would look hung). The receiver disconnects when done.
fn forward_stderr(device: &str, stderr: ChildStderr) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let name = device.to_string();
    let spawned = std::thread::Builder::new()
        // A NUL in a thread name panics; device names come from user text.
        .name(format!("driver-log-{}", name.replace('\0', "")))
        .spawn(move || {
            let _done = tx;
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            // Ends at EOF, which comes at the latest when the agent kills the driver's group.
            for count in 0.. {
                line.clear();
                match (&mut reader).take(STDERR_LINE).read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if count == STDERR_LINES {
                    log::warn!("{name}: the driver wrote more than {STDERR_LINES} lines on stderr; the rest is dropped");
                }
                if count >= STDERR_LINES {
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                let (level, text) = level_of(text.trim_end());
                log::log!(level, "{name}: driver: {text}");
            }
        });
    if let Err(e) = spawned {
        log::warn!("{device}: cannot start the driver's log thread: {e}; its stderr is lost");
    }
    rx
}

/// Our own driver logs as `rackhand: warn: ...` (or with a syslog `<4>` prefix); keep its level.
/// Anything else a driver says on stderr is a warning: that is what stderr is for.
fn level_of(line: &str) -> (log::Level, &str) {
    const NAMED: &[(&str, log::Level)] = &[
        ("rackhand: error: ", log::Level::Error),
        ("rackhand: warn: ", log::Level::Warn),
        ("rackhand: info: ", log::Level::Info),
        ("rackhand: debug: ", log::Level::Debug),
        ("rackhand: trace: ", log::Level::Trace),
        ("<3>", log::Level::Error),
        ("<4>", log::Level::Warn),
        ("<6>", log::Level::Info),
        ("<7>", log::Level::Debug),
    ];
    NAMED
        .iter()
        .find_map(|(prefix, level)| line.strip_prefix(prefix).map(|rest| (*level, rest)))
        .unwrap_or((log::Level::Warn, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_named() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "was killed by SIGSEGV"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGABRT | 0x80)),
            "was killed by SIGABRT (core dumped)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }

    #[test]
    fn stderr_levels_follow_our_own_log_format() {
        assert_eq!(
            level_of("rackhand: info: logged in"),
            (log::Level::Info, "logged in")
        );
        assert_eq!(level_of("<3>boom"), (log::Level::Error, "boom"));
        assert_eq!(
            level_of("Traceback (most recent call last):"),
            (log::Level::Warn, "Traceback (most recent call last):")
        );
    }
}

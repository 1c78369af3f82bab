//! The watch loop: the conversation with one running driver process.
//!
//! One thread, one poll(2) over the driver's stdin (the request goes out without blocking),
//! its stdout (outcomes come in) and a pidfd (its exit), with a deadline per outcome. Only an
//! outcome restarts the deadline; any other line counts against it and against the chatter
//! budget ([`CHATTER_LINES`], [`CHATTER_BYTES`]), so a driver that talks without answering is
//! killed like a silent one, and one that floods is stopped before it costs much CPU.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ChildStdin, ChildStdout};
use std::time::{Duration, Instant, SystemTime};

use super::ending::Violation;
use super::process::{DriverProcess, set_nonblocking};
use super::protocol::{self, DriverLine, LineBuffer, Reply, Request, WireDevice, WireOutcome};
use super::{CHATTER_BYTES, CHATTER_LINES, IsolationError, LOGOUT, driver_label};
use crate::inventory::Device;
use crate::outcome::{Outcome, Status};

/// One read from the driver's stdout; the line buffer holds at most its cap plus this.
const READ_CHUNK: usize = 64 << 10;
/// Reads per poll round, so a flooding driver cannot keep the loop from its deadline check.
const READS_PER_ROUND: usize = 16;
/// Upper bound on poll rounds; every round either makes progress or reaches the deadline.
const MAX_ROUNDS: usize = 1 << 24;
/// How often the exit is looked for where there is no pidfd.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// How a watch ended, before the exit status is known.
pub(super) enum Ending {
    Done,
    Killed { budget: Duration, chatter: Chatter },
    Violation(Violation),
    Exited,
}

/// What a driver printed besides protocol messages since its last outcome.
#[derive(Debug, Clone, Default)]
pub(super) struct Chatter {
    pub(super) lines: u64,
    pub(super) bytes: u64,
    /// The first line that was not blank, cut short.
    pub(super) first: Option<String>,
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
    pub(super) fn summary(&self) -> String {
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

/// The driver process's end of the conversation: its pipes, the request on its way out,
/// the lines on their way in, and whether it has exited.
struct Pipes {
    /// Until the whole request is written; then closed (EOF after the request).
    stdin: Option<ChildStdin>,
    /// Until EOF.
    stdout: Option<ChildStdout>,
    request: Vec<u8>,
    written: usize,
    lines: LineBuffer,
    chunk: Vec<u8>,
    /// Tells when the driver exits without polling; kernels before 5.3 lack it, then its
    /// exit is looked for every [`EXIT_POLL`] instead.
    pidfd: Option<OwnedFd>,
    exited: bool,
}

/// Which of the pipes (and the exit) poll found ready.
struct Ready {
    stdin: bool,
    stdout: bool,
    exit: bool,
}

impl Pipes {
    /// Waits until a pipe or the exit is ready, at most until `deadline`.
    fn poll(&self, deadline: Instant) -> io::Result<Ready> {
        let mut fds = Vec::with_capacity(3);
        let mut slot = |fd: Option<i32>, events| {
            fd.map(|fd| {
                fds.push(crate::poll::pollfd(fd, events));
                fds.len() - 1
            })
        };
        let in_at = slot(self.stdin.as_ref().map(|s| s.as_raw_fd()), libc::POLLOUT);
        let out_at = slot(self.stdout.as_ref().map(|s| s.as_raw_fd()), libc::POLLIN);
        let watch_exit = self.pidfd.as_ref().filter(|_| !self.exited);
        let exit_at = slot(watch_exit.map(|fd| fd.as_raw_fd()), libc::POLLIN);
        let mut wait = deadline.saturating_duration_since(Instant::now());
        if self.pidfd.is_none() && !self.exited {
            wait = wait.min(EXIT_POLL);
        }
        crate::poll::poll(&mut fds, wait)?;
        let ready = |at: Option<usize>| at.is_some_and(|i| fds[i].revents != 0);
        Ok(Ready {
            stdin: ready(in_at),
            stdout: ready(out_at),
            exit: match exit_at {
                Some(i) => fds[i].revents != 0,
                None => self.pidfd.is_none() && !self.exited,
            },
        })
    }

    /// Writes what the pipe takes of the request; closes stdin once all of it is out.
    fn write_request(&mut self) {
        let Some(pipe) = self.stdin.as_mut() else {
            return;
        };
        match pipe.write(&self.request[self.written..]) {
            Ok(n) => self.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The driver closed stdin or died; its exit tells the rest.
            Err(_) => self.written = self.request.len(),
        }
        if self.written >= self.request.len() {
            // EOF after the request: a driver may read until it.
            self.stdin = None;
        }
    }
}

/// The conversation with one running driver.
pub(super) struct Watch<'a> {
    device: &'a Device,
    commands: &'a [String],
    grace: Duration,
    emit: &'a mut dyn FnMut(Outcome),
    answered: usize,
    done: bool,
    last_status: Option<Status>,
    /// Since the last outcome.
    chatter: Chatter,
    /// Whether the first chatter line of this driver was logged (only that one is).
    chatter_logged: bool,
    /// What the driver has for the message awaited now, and when that runs out.
    budget: Duration,
    deadline: Instant,
}

impl<'a> Watch<'a> {
    pub(super) fn new(
        device: &'a Device,
        commands: &'a [String],
        grace: Duration,
        start: Instant,
        emit: &'a mut dyn FnMut(Outcome),
    ) -> Watch<'a> {
        let first = budget(device, grace, None);
        Watch {
            device,
            commands,
            grace,
            emit,
            answered: 0,
            done: false,
            last_status: None,
            chatter: Chatter::default(),
            chatter_logged: false,
            budget: first,
            deadline: start + first,
        }
    }

    /// Writes the request, passes each outcome on as it arrives, and returns how the
    /// conversation ended: `done`, exit, violation or deadline.
    pub(super) fn run(&mut self, process: &mut DriverProcess) -> Result<Ending, IsolationError> {
        let pid = process.pid();
        let watch_err = |source| IsolationError::Watch {
            device: self.device.name.clone(),
            pid,
            source,
        };
        let mut pipes = self.open_pipes(process).map_err(watch_err)?;
        for _ in 0..MAX_ROUNDS {
            if let Some(ending) = self.ended(&pipes, pid) {
                return Ok(ending);
            }
            let ready = pipes.poll(self.deadline).map_err(watch_err)?;
            if ready.stdin {
                pipes.write_request();
            }
            if ready.stdout
                && let Err(violation) = self.read_output(&mut pipes)
            {
                return Ok(Ending::Violation(violation));
            }
            if ready.exit && process.reap_if_exited().map_err(watch_err)? {
                pipes.exited = true;
            }
        }
        Ok(self.killed())
    }

    /// Takes the driver's stdin and stdout (non-blocking from now on) and its pidfd, with
    /// the request to write.
    fn open_pipes(&self, process: &mut DriverProcess) -> io::Result<Pipes> {
        let pidfd = process
            .pidfd()
            .map_err(|e| {
                log::debug!(
                    "{}: pidfd_open: {e}; polling for the exit",
                    self.device.name
                );
            })
            .ok();
        let stdin = process.child.stdin.take();
        let stdout = process.child.stdout.take();
        for fd in [
            stdin.as_ref().map(|s| s.as_raw_fd()),
            stdout.as_ref().map(|s| s.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd)?;
        }
        let request = protocol::to_line(&Request {
            kind: "collect".into(),
            version: protocol::VERSION,
            device: WireDevice::from_device(self.device),
            commands: self.commands.to_vec(),
            log_level: Some(log::max_level().as_str().to_ascii_lowercase()),
        });
        let cap = (self.device.max_output as usize)
            .saturating_mul(2)
            .saturating_add(64 << 10);
        Ok(Pipes {
            stdin,
            stdout,
            request,
            written: 0,
            lines: LineBuffer::new(cap),
            chunk: vec![0u8; READ_CHUNK],
            pidfd,
            exited: false,
        })
    }

    /// How the conversation ends now, if it does: the driver exited and its stdout is
    /// drained, or the deadline passed.
    fn ended(&self, pipes: &Pipes, pid: u32) -> Option<Ending> {
        if pipes.exited && pipes.stdout.is_none() {
            return Some(if self.done {
                Ending::Done
            } else {
                Ending::Exited
            });
        }
        if Instant::now() < self.deadline {
            return None;
        }
        if self.answered >= self.commands.len() {
            log::warn!(
                "{}: the driver (pid {pid}) answered every command but did not exit in time; killed",
                self.device.name,
            );
            return Some(Ending::Done);
        }
        Some(self.killed())
    }

    fn killed(&self) -> Ending {
        Ending::Killed {
            budget: self.budget,
            chatter: self.chatter.clone(),
        }
    }

    /// Reads what stdout has (a bounded number of reads) and takes each complete line.
    fn read_output(&mut self, pipes: &mut Pipes) -> Result<(), Violation> {
        let Some(pipe) = pipes.stdout.as_mut() else {
            return Ok(());
        };
        let mut eof = false;
        for _ in 0..READS_PER_ROUND {
            match pipe.read(&mut pipes.chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let complete = pipes
                        .lines
                        .push(&pipes.chunk[..n])
                        .map_err(|over| Violation::LineTooLong { cap: over.cap })?;
                    for line in complete {
                        self.take_line(&line)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("{}: reading the driver's output: {e}", self.device.name);
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            pipes.stdout = None;
            if pipes.lines.pending() > 0 && !self.done {
                log::warn!(
                    "{}: the driver's output ended in the middle of a line ({} bytes dropped)",
                    self.device.name,
                    pipes.lines.pending()
                );
            }
        }
        Ok(())
    }

    /// One line from the driver: an outcome is checked and passed on and `done` noted, each
    /// restarting the deadline; anything else is counted against the chatter budget.
    fn take_line(&mut self, line: &[u8]) -> Result<(), Violation> {
        let reply = match protocol::read_line(line)? {
            DriverLine::Reply(reply) => reply,
            DriverLine::Chatter => return self.take_chatter(line),
        };
        self.chatter = Chatter::default();
        if self.done {
            return Err(Violation::AfterDone);
        }
        match reply {
            Reply::Done => {
                if self.answered < self.commands.len() {
                    return Err(Violation::EarlyDone {
                        answered: self.answered,
                        asked: self.commands.len(),
                    });
                }
                self.done = true;
            }
            Reply::Outcome(w) => self.take_outcome(&w)?,
        }
        self.restart_deadline();
        Ok(())
    }

    /// The deadline for the next message: an outcome's budget, the logout, or the grace
    /// after `done` for the exit.
    fn restart_deadline(&mut self) {
        self.budget = if self.done {
            self.grace
        } else if self.answered >= self.commands.len() {
            LOGOUT + self.grace
        } else {
            budget(self.device, self.grace, self.last_status)
        };
        self.deadline = Instant::now() + self.budget;
    }

    /// An outcome: the next command's, within max_output, with a reason when not ok.
    fn take_outcome(&mut self, w: &WireOutcome) -> Result<(), Violation> {
        let Some(expected) = self.commands.get(self.answered) else {
            return Err(Violation::TooManyOutcomes {
                asked: self.commands.len(),
            });
        };
        if &w.command != expected {
            return Err(Violation::OutOfOrder {
                got: w.command.clone(),
                expected: expected.clone(),
            });
        }
        let mut status = protocol::parse_status(&w.status)?;
        let mut output = w.output_bytes()?;
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
        Ok(())
    }

    /// A line that is not a protocol message: logged if it is the driver's first one, counted,
    /// and a violation once past the budget. The deadline runs on.
    fn take_chatter(&mut self, line: &[u8]) -> Result<(), Violation> {
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
        Err(Violation::TooMuchChatter {
            chatter: self.chatter.clone(),
            pending: self.commands.get(self.answered).cloned(),
        })
    }
}

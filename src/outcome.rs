//! What a device's session produces, before the agent numbers it: an [`Outcome`] per command
//! with its [`Status`], and the [`RunSummary`] of a whole run that the scheduler decides on.
//!
//! These types sit early in the import order (ARCHITECTURE.md) because the pool, the
//! scheduler and the session all speak them, while the record (`crate::record`, the numbered
//! JSON form) and everything after it only consume them.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How a command went. `Ok` or one of the documented error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// No prompt came back within `command_timeout` (or the login within `connect_timeout`).
    Timeout,
    /// TCP connect, handshake or opening the serial port failed.
    ConnectFailed,
    /// The device refused the credentials (or they were missing).
    AuthFailed,
    /// The SSH host key differs from the one in known_hosts; no credential was sent.
    HostKeyMismatch,
    /// The device rejected the command (e.g. `% Invalid input`); the output is kept.
    CommandError,
    /// The output exceeded `max_output`; what came is kept, up to the limit.
    OutputTooLarge,
    /// The driver crashed (panic, or the isolated child process died).
    DriverCrashed,
    /// The connection dropped in the middle of the command.
    Disconnected,
    /// The serial port is held by another program (minicom, screen, ser2net).
    PortBusy,
    /// Not a command's record: the agent's own report that records were lost or collections
    /// paused (see [`Gap`](crate::record::Gap) and [`GapCause`](crate::record::GapCause)). Never produced by a driver.
    Gap,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Timeout => "timeout",
            Status::ConnectFailed => "connect_failed",
            Status::AuthFailed => "auth_failed",
            Status::HostKeyMismatch => "host_key_mismatch",
            Status::CommandError => "command_error",
            Status::OutputTooLarge => "output_too_large",
            Status::DriverCrashed => "driver_crashed",
            Status::Disconnected => "disconnected",
            Status::PortBusy => "port_busy",
            Status::Gap => "gap",
        }
    }
}

/// A record before the agent numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub device: String,
    pub transport: String,
    pub command: String,
    pub status: Status,
    pub error: Option<String>,
    pub output: Vec<u8>,
    pub started_at: SystemTime,
    pub duration: Duration,
}

/// How a device's run went, in the terms the scheduler decides on. Built from the outcomes
/// as they pass ([`RunSummary::observe`]), so outputs need not be kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Outcomes seen (one per command).
    pub commands: usize,
    /// Of those, `ok`.
    pub ok: usize,
    /// The session never got going, or the driver crashed: the status that says why. The
    /// scheduler backs the device off on this.
    pub session_failure: Option<Status>,
    /// The first error message seen, for the log.
    pub(crate) error: Option<String>,
    /// The first outcome's shape, to tell a login timeout from a command timeout.
    first: Option<Shape>,
    /// Whether every outcome so far has the first one's status, start and error with no
    /// output: the shape of a session that failed to open (`session::collect` gives every
    /// command the open's error).
    all_like_first: bool,
    /// The first status seen that only a failed open (or a crash) produces.
    hard: Option<Status>,
}

/// What [`RunSummary`] compares between outcomes: a session that failed to open gives every
/// command the same status, start and error, and no output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    status: Status,
    started_at: SystemTime,
    no_output: bool,
    error: Option<String>,
}

impl RunSummary {
    /// A run of `commands` commands that all went `ok`.
    pub fn ok(commands: usize) -> RunSummary {
        RunSummary {
            commands,
            ok: commands,
            ..RunSummary::default()
        }
    }

    /// A run whose session failed to open with `status` (`error` says why).
    pub fn session_failed(commands: usize, status: Status, error: &str) -> RunSummary {
        RunSummary {
            commands,
            ok: 0,
            session_failure: Some(status),
            error: Some(error.to_string()),
            ..RunSummary::default()
        }
    }

    /// Every outcome was `ok` (and there was at least one, and no crash).
    pub fn all_ok(&self) -> bool {
        self.commands > 0 && self.ok == self.commands && self.session_failure.is_none()
    }

    /// Takes one outcome into account.
    pub fn observe(&mut self, outcome: &Outcome) {
        self.commands += 1;
        if outcome.status == Status::Ok {
            self.ok += 1;
        } else if self.error.is_none() {
            self.error = outcome.error.clone();
        }
        let this = Shape {
            status: outcome.status,
            started_at: outcome.started_at,
            no_output: outcome.output.is_empty(),
            error: outcome.error.clone(),
        };
        match &self.first {
            None => {
                self.all_like_first = true;
                self.first = Some(this);
            }
            Some(first) => self.all_like_first &= *first == this,
        }
        if self.hard.is_none() {
            self.hard = hard_failure(outcome.status);
        }
    }

    /// A timeout counts as a login failure when it is the first outcome's, without output,
    /// and every outcome repeats it (what `session::collect` reports when the session did not
    /// open). With one command, a command timeout with no output at all looks the same; it
    /// then backs off too, which suits a device that stopped answering.
    fn timeout_at_login(&self) -> bool {
        matches!(
            &self.first,
            Some(Shape {
                status: Status::Timeout,
                no_output: true,
                ..
            })
        ) && self.all_like_first
    }

    /// Decides [`session_failure`](Self::session_failure) once every outcome is in (a later
    /// outcome can show that a first timeout was a command's). Keeps one already set.
    pub fn settle(&mut self) {
        if self.session_failure.is_none() {
            self.session_failure = self
                .hard
                .or(self.timeout_at_login().then_some(Status::Timeout));
        }
    }
}

/// The statuses only a session that did not open (or a crashed driver) produces.
fn hard_failure(status: Status) -> Option<Status> {
    match status {
        Status::ConnectFailed
        | Status::AuthFailed
        | Status::HostKeyMismatch
        | Status::PortBusy
        | Status::DriverCrashed => Some(status),
        _ => None,
    }
}

//! How a driver process ended, in words for the records of the commands it did not answer.
//!
//! The watch loop decides *how* it ended ([`End`]); a protocol violation is a [`Violation`]
//! variant, so the loop branches on types and only this file turns them into the text an
//! operator reads in `error`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use super::CHATTER_BYTES;
use super::CHATTER_LINES;
use super::protocol::ProtocolError;
use super::watch::Chatter;
use crate::inventory::Device;
use crate::outcome::Status;

/// What the driver process did against docs/driver-protocol.md; it is then killed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Violation {
    #[error("a line longer than {cap} bytes (the cap is max_output × 2 + 64 KiB)")]
    LineTooLong { cap: usize },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("a line after `done`")]
    AfterDone,
    #[error("`done` after {answered} of {asked} outcomes")]
    EarlyDone { answered: usize, asked: usize },
    #[error("more outcomes than the {asked} commands asked")]
    TooManyOutcomes { asked: usize },
    #[error("an outcome for `{got}` where `{expected}` was next (outcomes come in request order)")]
    OutOfOrder { got: String, expected: String },
    #[error(
        "{} lines ({} bytes) on stdout that are neither an outcome nor `done` while waiting for {}, more than the {CHATTER_LINES} lines or {CHATTER_BYTES} bytes allowed{}; logs belong on stderr",
        .chatter.lines,
        .chatter.bytes,
        waiting_for(.pending.as_deref()),
        first_line(&.chatter.first)
    )]
    TooMuchChatter {
        chatter: Chatter,
        /// The command whose outcome was awaited; `None`: `done` was.
        pending: Option<String>,
    },
    #[error("its exit status could not be read")]
    NoExitStatus,
}

fn waiting_for(pending: Option<&str>) -> String {
    match pending {
        Some(command) => format!("the outcome of `{command}`"),
        None => "`done`".to_string(),
    }
}

fn first_line(first: &Option<String>) -> String {
    match first {
        Some(first) => format!(" (the first: `{first}`)"),
        None => " (all blank)".to_string(),
    }
}

/// How a driver ended, for the records of the commands it did not answer.
#[derive(Debug)]
pub(super) enum End {
    Done,
    Killed {
        budget: Duration,
        elapsed: Duration,
        chatter: Chatter,
    },
    Violation {
        pid: u32,
        violation: Violation,
    },
    Exited {
        pid: u32,
        status: ExitStatus,
    },
}

impl End {
    pub(super) fn describe(
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
            End::Violation { pid, violation } => (
                Status::DriverCrashed,
                format!(
                    "{name}: protocol violation by the driver `{program}` (pid {pid}): {violation}; it was killed (see docs/driver-protocol.md)"
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
pub(crate) fn describe_exit(status: ExitStatus) -> String {
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
}

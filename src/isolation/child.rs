//! The driver's side of process isolation: what `rackhand driver` runs.
//!
//! The session code is the same as in-thread; only where its outcomes go differs. Each outcome
//! is written and flushed the moment its command is done, so that if this process is killed
//! (a hung device past its deadline) or crashes (a bug in a transport, a library abort), the
//! agent keeps everything that was already answered.

use std::io::{BufRead, Read, Write};

use super::protocol::{self, Reply, WireOutcome};
use crate::session;

/// A request carries a device and its commands: a few KiB. Anything far larger is not ours.
pub const MAX_REQUEST: u64 = 4 << 20;

/// Why the driver could not do its job; it then exits non-zero and the agent records
/// `driver_crashed` with this message from stderr.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("reading the request from stdin: {0}")]
    ReadRequest(std::io::Error),
    #[error("stdin closed before a request line arrived (run by the agent, not by hand)")]
    NoRequest,
    #[error("the request line is longer than {MAX_REQUEST} bytes")]
    RequestTooLong,
    // Not a `#[source]`: the message already carries it, and anyhow's chain would repeat it.
    #[error("bad request: {0}")]
    Protocol(protocol::ProtocolError),
    #[error("device `{device}`: writing to the agent: {error} (the agent went away?)")]
    Write {
        device: String,
        error: std::io::Error,
    },
}

/// Reads one request from `input`, runs the session, writes outcomes and `done` to `output`.
pub fn serve(input: impl Read, mut output: impl Write) -> Result<(), DriverError> {
    let mut line = Vec::new();
    let n = std::io::BufReader::new(input)
        .take(MAX_REQUEST + 1)
        .read_until(b'\n', &mut line)
        .map_err(DriverError::ReadRequest)?;
    if n == 0 {
        return Err(DriverError::NoRequest);
    }
    if line.last() != Some(&b'\n') && n as u64 > MAX_REQUEST {
        return Err(DriverError::RequestTooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let request = protocol::parse_request(line).map_err(DriverError::Protocol)?;
    if let Some(level) = request.log_level.as_deref().and_then(|l| l.parse().ok()) {
        log::set_max_level(level);
    }
    let mut device = request.device.to_device().map_err(DriverError::Protocol)?;
    device.commands = request.commands.clone();
    let mut failed = None;
    session::collect_each(&device, &request.commands, &mut |outcome| {
        if failed.is_some() {
            return;
        }
        let wire = WireOutcome::new(
            &outcome.command,
            outcome.status,
            outcome.error,
            &outcome.output,
            outcome.started_at,
            outcome.duration,
        );
        if let Err(e) = write_line(&mut output, &Reply::Outcome(wire)) {
            failed = Some(e);
        }
    });
    if let Some(error) = failed {
        return Err(DriverError::Write {
            device: device.name,
            error,
        });
    }
    write_line(&mut output, &Reply::Done).map_err(|error| DriverError::Write {
        device: device.name.clone(),
        error,
    })
}

fn write_line(output: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    output.write_all(&protocol::to_line(reply))?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_request_and_bad_requests_are_errors_not_panics() {
        let mut out = Vec::new();
        assert!(matches!(
            serve(&b""[..], &mut out),
            Err(DriverError::NoRequest)
        ));
        assert!(matches!(
            serve(&b"{not json}\n"[..], &mut out),
            Err(DriverError::Protocol(_))
        ));
        assert!(out.is_empty(), "nothing is answered to a bad request");
    }
}

//! The driver's side of process isolation: what `rackhand driver` runs.
//!
//! The session code is the same as in-thread; only where its outcomes go differs. Each outcome
//! is written and flushed the moment its command is done, so that if this process is killed
//! (a hung device past its deadline) or crashes (a bug in a transport, a library abort), the
//! agent keeps everything that was already answered.

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant, SystemTime};

use super::protocol::{self, Reply, WireOutcome};
use crate::inventory::Device;
use crate::record::{Outcome, Status};
use crate::session::Session;

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
    #[error("bad request: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("device `{device}`: writing to the agent: {source} (the agent went away?)")]
    Write {
        device: String,
        source: std::io::Error,
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
    let request = protocol::parse_request(line)?;
    let mut device = request.device.to_device()?;
    device.commands = request.commands.clone();
    let mut failed = None;
    collect_each(&device, &request.commands, &mut |outcome| {
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
    if let Some(source) = failed {
        return Err(DriverError::Write {
            device: device.name,
            source,
        });
    }
    write_line(&mut output, &Reply::Done).map_err(|source| DriverError::Write {
        device: device.name.clone(),
        source,
    })
}

fn write_line(output: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    output.write_all(&protocol::to_line(reply))?;
    output.flush()
}

/// [`crate::session::collect`], streaming: one session for all commands, reconnecting once
/// when a command leaves the device in an unknown state, one outcome per command, each
/// handed to `emit` as soon as it exists.
// The loop mirrors session::collect (which returns everything at the end); the two should
// become one function in session.rs, with `collect` a wrapper that gathers into a Vec.
pub fn collect_each(device: &Device, commands: &[String], emit: &mut dyn FnMut(Outcome)) {
    let mut session: Option<Session<'_>> = None;
    let mut reconnects = 0;
    for (index, command) in commands.iter().enumerate() {
        if session.as_ref().is_some_and(|s| !s.is_healthy()) {
            session = None;
            reconnects += 1;
        }
        if session.is_none() && reconnects <= 1 {
            let started_at = SystemTime::now();
            let start = Instant::now();
            match Session::open(device) {
                Ok(s) => session = Some(s),
                Err(e) => {
                    // The rest of the commands share the reason.
                    let status = e.status();
                    let error = e.to_string();
                    for c in &commands[index..] {
                        emit(Outcome {
                            device: device.name.clone(),
                            transport: device.transport.as_str().to_string(),
                            command: c.clone(),
                            status,
                            error: Some(error.clone()),
                            output: Vec::new(),
                            started_at,
                            duration: start.elapsed(),
                        });
                    }
                    return;
                }
            }
        }
        match session.as_mut() {
            Some(s) => emit(s.run(command)),
            None => emit(Outcome {
                device: device.name.clone(),
                transport: device.transport.as_str().to_string(),
                command: command.clone(),
                status: Status::Disconnected,
                error: Some(format!(
                    "{}: not run: the session broke twice on earlier commands",
                    device.name
                )),
                output: Vec::new(),
                started_at: SystemTime::now(),
                duration: Duration::ZERO,
            }),
        }
    }
    if let Some(s) = session {
        s.close();
    }
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

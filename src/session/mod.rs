//! A session with one device: connect, log in, get to a known prompt, run commands, leave.
//!
//! This is where transport (bytes), channel (prompt-driven reads) and platform (the platform table)
//! meet. The login loop copes with what consoles and Telnet lines show in practice — banners,
//! "Press RETURN to get started", the initial configuration dialog, username/password prompt
//! variants, a console left in a pager, in configuration mode or with half a line typed — by
//! reacting to whatever pattern appears next rather than following a fixed script. Each
//! command yields an [`Outcome`] whose status says exactly what happened; the output is kept
//! whatever the status.
//!
//! [`Session::open`] only builds the device's real transport; `Session::start` takes any
//! connected one, so the login loop (`login.rs`), enable and setup are tested over the
//! simulator's engine in memory (`tests.rs`), and real sockets, ptys and sshd test the whole.

mod login;

use std::time::{Duration, Instant, SystemTime};

use regex_lite::Regex;

use crate::channel::{Channel, ChannelError, Prompt, last_line, quote_last_line};
use crate::inventory::{Device, TransportKind};
use crate::outcome::{Outcome, Status};
use crate::platform::{self, Platform, Table};
use crate::transport::serial::SerialTransport;
use crate::transport::ssh::SshTransport;
use crate::transport::telnet::TelnetTransport;
use crate::transport::{Transport, TransportError};

/// How long a login waits in silence before it nudges the line with a return.
const NUDGE_AFTER: Duration = Duration::from_secs(2);
/// Bounds the login conversation: a device that keeps asking is not logging us in.
const MAX_LOGIN_STEPS: usize = 24;
/// Ctrl-U (kill line) then return: clears half a typed line on IOS, Junos and Linux alike.
const WAKE: &[u8] = b"\x15\r";
/// Ctrl-U alone: the first key a console gets.
const KILL_LINE: &[u8] = b"\x15";
/// A console that has said nothing for this long after a key is done answering it (at
/// 9600 baud bytes come every millisecond while it talks).
const SETTLE_QUIET: Duration = Duration::from_millis(300);

/// Why a session could not be opened or went on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("{peer}: no CLI prompt within the connect timeout ({seen}); {hint}")]
    LoginTimeout {
        peer: String,
        seen: String,
        /// The device printed nothing at all: as good as unreachable.
        silent: bool,
        /// What to check: the prompt when a line was seen, then per transport.
        hint: String,
    },
    #[error("{peer}: login refused: {detail}; check the credentials configured for the device")]
    AuthFailed { peer: String, detail: String },
    #[error("{peer}: {detail}")]
    Protocol { peer: String, detail: String },
    #[error(
        "{peer}: `{command}` (session setup after login) did not come back to the prompt: {detail}; check the device's platform and prompt, or raise command_timeout"
    )]
    Setup {
        peer: String,
        command: String,
        detail: String,
        status: Status,
    },
}

impl SessionError {
    /// The record status this error means.
    pub fn status(&self) -> Status {
        match self {
            SessionError::Transport(TransportError::Auth { .. })
            | SessionError::AuthFailed { .. } => Status::AuthFailed,
            SessionError::Transport(TransportError::HostKeyMismatch { .. }) => {
                Status::HostKeyMismatch
            }
            // A line that accepts the connection but never says a word is a blackhole (a
            // dead console server port, a firewall that answers SYNs): the connection was
            // not really made. One that talks but shows no prompt is slow or unknown.
            SessionError::LoginTimeout { silent: true, .. } => Status::ConnectFailed,
            SessionError::Transport(TransportError::TimedOut { .. })
            | SessionError::LoginTimeout { .. } => Status::Timeout,
            // Sessions only fail while opening: a line closed before any command ran means
            // no session was made (a busy terminal-server port hangs up at once).
            SessionError::Transport(TransportError::Closed { .. }) => Status::ConnectFailed,
            // No address within connect_timeout: no connection was even tried.
            SessionError::Transport(TransportError::Resolve { .. }) => Status::ConnectFailed,
            SessionError::Transport(TransportError::Busy { .. }) => Status::PortBusy,
            SessionError::Setup { status, .. } => *status,
            SessionError::Transport(_) | SessionError::Protocol { .. } => Status::ConnectFailed,
        }
    }
}

/// An open, logged-in session at a known prompt.
pub struct Session<'d> {
    device: &'d Device,
    platform: &'static Platform,
    prompt: Prompt,
    channel: Channel<Box<dyn Transport>>,
    /// False after a command left the device in an unknown state (timeout, endless output).
    healthy: bool,
}

fn connect(device: &Device) -> Result<Box<dyn Transport>, TransportError> {
    Ok(match device.transport {
        TransportKind::Ssh => Box::new(SshTransport::connect(device)?),
        TransportKind::Telnet => Box::new(TelnetTransport::connect(device)?),
        TransportKind::Serial => Box::new(SerialTransport::open(device)?),
    })
}

/// The prompt pattern of a device: its own `prompt` setting, else its platform's.
pub fn prompt_of(device: &Device, platform: &Platform) -> Regex {
    device
        .prompt
        .as_deref()
        .and_then(|p| Regex::new(p).ok())
        .or_else(|| platform.prompt.clone())
        // The config check guarantees one of the two; this keeps a bad table from panicking.
        .unwrap_or_else(|| Regex::new(r"[>#$%]\s?$").expect("static regex"))
}

/// The platform a device names, from the platform table.
fn platform_of(device: &Device) -> Result<&'static Platform, SessionError> {
    platform::table()
        .get(&device.platform)
        .ok_or_else(|| SessionError::Protocol {
            peer: device.name.clone(),
            detail: format!("unknown platform `{}`", device.platform),
        })
}

impl<'d> Session<'d> {
    /// Connects with the device's transport (SSH, Telnet or serial, by its `transport`),
    /// logs in, enables, turns paging off: ready for commands.
    pub fn open(device: &'d Device) -> Result<Session<'d>, SessionError> {
        // An unknown platform is known before any connection is tried.
        platform_of(device)?;
        let deadline = Instant::now() + device.connect_timeout;
        let transport = connect(device)?;
        Session::start(device, transport, deadline)
    }

    /// Logs in over `transport`, already connected, enables, turns paging off, all by
    /// `deadline` (setup then by `command_timeout` per command). The seam that lets the
    /// login be tested over an in-memory device.
    pub(crate) fn start(
        device: &'d Device,
        transport: Box<dyn Transport>,
        deadline: Instant,
    ) -> Result<Session<'d>, SessionError> {
        let platform = platform_of(device)?;
        let channel = Channel::new(
            transport,
            platform::table().common.pagers.clone(),
            device.max_output as usize,
        );
        let mut session = Session {
            device,
            platform,
            prompt: Prompt {
                line: prompt_of(device, platform),
                context: platform.prompt_context.clone(),
            },
            channel,
            healthy: true,
        };
        session.login(deadline)?;
        session.enable(deadline)?;
        session.setup()?;
        Ok(session)
    }

    pub fn platform(&self) -> &Platform {
        self.platform
    }

    fn peer(&self) -> String {
        format!("{} ({})", self.device.name, self.channel.peer())
    }

    fn secret(
        &self,
        secret: &Option<crate::config::Secret>,
        what: &str,
    ) -> Result<String, SessionError> {
        match secret {
            Some(s) => match s.expose() {
                Some(v) => Ok(v.to_string()),
                None => Err(SessionError::AuthFailed {
                    peer: self.peer(),
                    detail: format!("the {what} comes from {} which is not set", s.describe()),
                }),
            },
            None => Err(SessionError::AuthFailed {
                peer: self.peer(),
                detail: format!("the device asks for a {what} but none is configured"),
            }),
        }
    }

    fn wait(
        &mut self,
        patterns: &[Regex],
        deadline: Instant,
    ) -> Result<crate::channel::Matched, SessionError> {
        let mut m = self
            .channel
            .wait_for(patterns, deadline)
            .map_err(|e| match e {
                ChannelError::Transport { source, .. } => source.into(),
                other => {
                    let last = last_line(other.output());
                    SessionError::LoginTimeout {
                        peer: self.peer(),
                        seen: quote_last_line(&last),
                        silent: false,
                        hint: self.login_hint(!last.is_empty()),
                    }
                }
            })?;
        // What came before the prompt (a log line) is the device's own; the echo of what
        // enable typed is not.
        let sent: Vec<String> = self.platform.enable.iter().cloned().collect();
        let before = without_echo(&std::mem::take(&mut m.before), &sent, &self.prompt.line);
        self.channel.set_aside(before);
        Ok(m)
    }

    /// What to check after a login that found no prompt. `saw_line`: the device printed a
    /// line, which may be a prompt the platform's pattern does not know (`host>` where
    /// juniper_junos expects `user@host>`).
    fn login_hint(&self, saw_line: bool) -> String {
        let transport = match self.device.transport {
            TransportKind::Serial => {
                "check the cable, the port and the baud rate, and that the console is not in use, or raise connect_timeout"
            }
            TransportKind::Telnet | TransportKind::Ssh => {
                "check that the address is the device's CLI and that nothing blocks it, and the device's `prompt`/platform, or raise connect_timeout"
            }
        };
        if saw_line {
            format!(
                "if that line is the device's prompt, set the device's `prompt` to a regex that matches it (platform `{}` did not); else {transport}",
                self.platform.name
            )
        } else {
            transport.to_string()
        }
    }

    fn wait_prompt(&mut self, deadline: Instant) -> Result<String, SessionError> {
        let prompt = self.prompt.line.clone();
        Ok(self.wait(std::slice::from_ref(&prompt), deadline)?.line)
    }

    /// Paging off and wide lines. A device that refuses (a read-only AAA account) still works:
    /// the channel answers its pagers.
    ///
    /// One that does not come back to its prompt is no session to run commands on: every
    /// command would only wait out its own timeout.
    fn setup(&mut self) -> Result<(), SessionError> {
        for command in self.platform.setup.clone() {
            let deadline = Instant::now() + self.device.command_timeout;
            match self.channel.command(&command, &self.prompt, deadline) {
                Ok(out) if self.rejected(&out) => log::info!(
                    "{}: `{command}` refused ({}); pagers will be answered instead",
                    self.device.name,
                    first_line(&out)
                ),
                Ok(_) => {}
                Err(e) => {
                    let status = match e {
                        ChannelError::Transport { .. } => Status::ConnectFailed,
                        ChannelError::Timeout { .. } | ChannelError::TooLarge { .. } => {
                            Status::Timeout
                        }
                    };
                    return Err(SessionError::Setup {
                        peer: self.peer(),
                        command,
                        detail: e.to_string(),
                        status,
                    });
                }
            }
        }
        Ok(())
    }

    fn rejected(&self, output: &[u8]) -> bool {
        let text = String::from_utf8_lossy(output);
        // Devices print the complaint first (IOS after a `^` marker line).
        text.lines()
            .take(4)
            .any(|line| Table::is_error_line(self.platform, line))
    }

    /// Whether the last command left the device at a known prompt.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Runs one command and says how it went.
    pub fn run(&mut self, command: &str) -> Outcome {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let deadline = start + self.device.command_timeout;
        let result = self.channel.command(command, &self.prompt, deadline);
        let (status, error, output) = match result {
            Ok(output) if self.rejected(&output) => (
                Status::CommandError,
                Some(format!(
                    "{} rejected `{command}`: {}",
                    self.device.name,
                    first_error_line(self.platform, &output)
                )),
                output,
            ),
            Ok(output) => (Status::Ok, None, output),
            Err(e) => {
                self.healthy = false;
                let status = match &e {
                    ChannelError::Timeout { .. } => Status::Timeout,
                    ChannelError::TooLarge { .. } => Status::OutputTooLarge,
                    ChannelError::Transport { .. } => Status::Disconnected,
                };
                let detail = match &e {
                    ChannelError::Timeout { last_line, .. } => format!(
                        "no prompt from {} within command_timeout ({:?}){}; raise command_timeout if the command is that slow, else check the device's `prompt`",
                        self.peer(),
                        self.device.command_timeout,
                        if last_line.is_empty() {
                            String::new()
                        } else {
                            format!("; last line: `{last_line}`")
                        }
                    ),
                    other => format!("{}: {other}", self.device.name),
                };
                let output = match e {
                    ChannelError::Timeout { output, .. }
                    | ChannelError::TooLarge { output, .. }
                    | ChannelError::Transport { output, .. } => output,
                };
                (status, Some(detail), output)
            }
        };
        Outcome {
            device: self.device.name.clone(),
            transport: self.device.transport.as_str().to_string(),
            command: command.to_string(),
            status,
            error,
            output,
            started_at,
            duration: start.elapsed(),
        }
    }

    /// Logs out politely. Best effort, bounded.
    ///
    /// Over Telnet and SSH the logout is sent and the connection closed at once: hanging up
    /// ends the device's session whatever it answers, so waiting for the answer would only
    /// keep the worker one round trip longer (and a slow AAA accounting stop much longer). A
    /// console stays connected to the port, so there the logout must be seen to be done: the
    /// next user of the port (the next collection, or a person with a cable) must find it
    /// at its login prompt, not logged in.
    pub fn close(mut self) {
        if !self.healthy {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for exit in self.platform.exit.clone() {
            if self.channel.send(format!("{exit}\r").as_bytes()).is_err() {
                return;
            }
        }
        if self.device.transport != TransportKind::Serial {
            return;
        }
        // Wait for the login prompt to come back (or the line to close); never longer.
        let common = &platform::table().common;
        let patterns = [
            common.username.clone(),
            common.press_return.clone(),
            common.password.clone(),
        ];
        // A console ends its logout with "Press RETURN to get started." and a line end.
        let seen = match self.channel.wait_for_lines(
            &patterns,
            std::slice::from_ref(&common.press_return),
            deadline,
        ) {
            Ok(found) => found.before,
            Err(e) => e.output().to_vec(),
        };
        // What the console printed while logging out (a log line, the goodbye) is the
        // device's own; the echo of our `exit` is not.
        let seen = without_echo(&seen, &self.platform.exit, &self.prompt.line);
        self.channel.set_aside_rest(seen);
    }
}

/// A session's end sets aside what was read and not used: on a captured console it goes up
/// as console text (`Transport::set_aside`), so no log line the device printed is lost.
impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.channel.set_aside_rest(Vec::new());
    }
}

/// `text` without the lines that are the echo of one of `sent` (alone, or after a prompt
/// `prompt` matches).
fn without_echo(text: &[u8], sent: &[String], prompt: &Regex) -> Vec<u8> {
    let mut kept = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let shown = String::from_utf8_lossy(line);
        let shown = shown.trim_end();
        let echo = sent.iter().any(|s| {
            shown
                .strip_suffix(s.as_str())
                .is_some_and(|before| before.trim().is_empty() || prompt.is_match(before))
        });
        if !echo {
            kept.extend_from_slice(line);
        }
    }
    kept
}

fn first_line(output: &[u8]) -> String {
    String::from_utf8_lossy(output)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn first_error_line(platform: &Platform, output: &[u8]) -> String {
    String::from_utf8_lossy(output)
        .lines()
        .find(|l| Table::is_error_line(platform, l))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Runs every command of a device in one session, reconnecting once if a command leaves the
/// device in an unknown state. Always returns one outcome per command.
pub fn collect(device: &Device, commands: &[String]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(commands.len());
    collect_each(device, commands, &mut |o| outcomes.push(o));
    outcomes
}

/// [`collect`], streaming: each outcome goes to `emit` as soon as it exists (a driver child
/// process reports them one by one, so a crash loses none already made).
pub fn collect_each(device: &Device, commands: &[String], emit: &mut dyn FnMut(Outcome)) {
    collect_each_with(device, commands, emit, &mut Session::open);
}

/// [`collect_each`] with the sessions opened by `open` (tests give it an in-memory device; a
/// captured console borrows its port from the capture, `crate::console`).
pub(crate) fn collect_each_with<'d>(
    device: &'d Device,
    commands: &[String],
    emit: &mut dyn FnMut(Outcome),
    open: &mut dyn FnMut(&'d Device) -> Result<Session<'d>, SessionError>,
) {
    let mut session: Option<Session<'d>> = None;
    let mut reconnects = 0;
    for (index, command) in commands.iter().enumerate() {
        if session.as_ref().is_some_and(|s| !s.is_healthy()) {
            session = None;
            reconnects += 1;
        }
        if session.is_none() && reconnects <= 1 {
            let started_at = SystemTime::now();
            let start = Instant::now();
            match open(device) {
                Ok(s) => session = Some(s),
                Err(e) => {
                    // The rest of the commands share the reason.
                    let status = e.status();
                    let error = match &e {
                        // Transport errors name the address; the user knows the device name.
                        SessionError::Transport(_) => format!("{}: {e}", device.name),
                        _ => e.to_string(),
                    };
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
                    "{}: not run: the session broke twice on earlier commands; see the errors before",
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
mod tests;

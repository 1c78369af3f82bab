//! The driver protocol: JSON lines between the agent and a driver process.
//!
//! It is text so that an external driver can be a short script in any language (see
//! `docs/driver-protocol.md` and `examples/drivers/pdu.py`), and line-framed so that both sides
//! can stream: the agent keeps every outcome that arrived before a driver died. The agent
//! writes one request line; the driver answers with one `outcome` line per command, in order,
//! then one `done` line. Secrets travel in the request, never in argv or the environment,
//! where any local user could read them from /proc. Anything else a driver prints on stdout
//! (blank lines, log text, JSON of another `type`) is chatter: [`read_line`] sorts it out so
//! the agent can ignore it without letting it restart a deadline.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{Secret, secret::SecretSource};
use crate::inventory::{
    Device, Endpoint, FlowControl, HostKeyCheck, Isolation, Parity, SerialSettings, SshSettings,
    TransportKind,
};
use crate::outcome::Status;
use crate::record;

/// Bumped when a field changes meaning; drivers refuse versions they do not know.
pub const VERSION: u32 = 1;

/// A line the agent or a driver could not make sense of.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a protocol message ({detail}): `{excerpt}`")]
    Malformed { detail: String, excerpt: String },
    #[error("the request has protocol version {got}; this driver speaks version {VERSION}")]
    Version { got: u32 },
    #[error("unknown status `{0}`; see docs/driver-protocol.md for the list")]
    Status(String),
    #[error("bad `output_base64`: not base64")]
    Base64,
    #[error("the request's device is unusable: {0}")]
    Device(String),
}

/// What the agent sends: the device with every setting resolved, and the commands to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) version: u32,
    pub(crate) device: WireDevice,
    pub(crate) commands: Vec<String>,
    /// The agent's log level (`error` … `trace`), so a driver logs no more than the agent
    /// keeps.
    #[serde(default)]
    pub(crate) log_level: Option<String>,
}

/// A secret with the place it came from, so a driver can say "$RACKHAND_PASSWORD is not set"
/// rather than "no password".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSecret {
    pub(crate) value: Option<String>,
    /// `inline`, `env:NAME` or `file:PATH`.
    pub(crate) source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSerial {
    pub(crate) baud: u32,
    pub(crate) data_bits: u8,
    /// `none`, `odd` or `even`.
    pub(crate) parity: String,
    pub(crate) stop_bits: u8,
    /// `none`, `software` or `hardware`.
    pub(crate) flow_control: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireSsh {
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) key_passphrase: Option<WireSecret>,
    /// `strict`, `accept-new` or `off`.
    pub(crate) host_key_check: String,
    pub(crate) known_hosts: PathBuf,
    pub(crate) legacy: bool,
    pub(crate) kex: Vec<String>,
    pub(crate) host_key_algorithms: Vec<String>,
    pub(crate) ciphers: Vec<String>,
    pub(crate) macs: Vec<String>,
    pub(crate) keepalive_ms: u64,
}

/// [`Device`] as it travels: plain strings and numbers any language reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireDevice {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    /// `ssh`, `telnet` or `serial`.
    pub(crate) transport: String,
    /// Set for ssh and telnet.
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    /// Set for serial.
    pub(crate) serial_port: Option<PathBuf>,
    pub(crate) serial: Option<WireSerial>,
    pub(crate) platform: String,
    /// The prompt regex (always set for platform `generic`).
    pub(crate) prompt: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<WireSecret>,
    pub(crate) enable_secret: Option<WireSecret>,
    pub(crate) ssh: WireSsh,
    pub(crate) interval_ms: u64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) command_timeout_ms: u64,
    pub(crate) max_output: u64,
}

/// What a driver sends back, one per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Outcome(WireOutcome),
    Done,
}

/// One command's result. Exactly one of `output` (UTF-8 text) and `output_base64` (any
/// bytes) carries the output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireOutcome {
    pub(crate) command: String,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output_base64: Option<String>,
    /// Milliseconds since the Unix epoch; the agent's clock is used when absent.
    #[serde(default)]
    pub(crate) started_at_ms: Option<u64>,
    #[serde(default)]
    pub(crate) duration_ms: u64,
}

/// Every status a driver may report, by its record name.
pub const STATUSES: &[Status] = &[
    Status::Ok,
    Status::Timeout,
    Status::ConnectFailed,
    Status::AuthFailed,
    Status::HostKeyMismatch,
    Status::CommandError,
    Status::OutputTooLarge,
    Status::DriverCrashed,
    Status::Disconnected,
    Status::PortBusy,
];

pub fn parse_status(name: &str) -> Result<Status, ProtocolError> {
    STATUSES
        .iter()
        .copied()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| ProtocolError::Status(name.to_string()))
}

/// The start of a line, for messages.
pub fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
    if line.len() > 120 {
        format!("{text}…")
    } else {
        text
    }
}

fn malformed(line: &[u8], e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Malformed {
        detail: e.to_string(),
        excerpt: excerpt(line),
    }
}

/// One line from a driver, sorted.
#[derive(Debug)]
pub enum DriverLine {
    /// An `outcome` or `done`.
    Reply(Reply),
    /// Anything else: a blank line, text (a log line, a progress bar), a JSON object whose
    /// `type` is not one of ours. Tolerated, never acted on.
    Chatter,
}

/// Sorts one line a driver wrote (without its `\n`). A line that starts with `{` must be a
/// JSON object, and one whose `type` is `outcome` or `done` a valid message: those are
/// attempts at the protocol, and a broken one is an error, not chatter.
pub fn read_line(line: &[u8]) -> Result<DriverLine, ProtocolError> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    let trimmed = line.trim_ascii();
    if !trimmed.starts_with(b"{") {
        return Ok(DriverLine::Chatter);
    }
    let head: Head = serde_json::from_slice(trimmed).map_err(|e| malformed(line, e))?;
    match head.kind.as_ref().and_then(serde_json::Value::as_str) {
        Some("outcome" | "done") => parse_reply(line).map(DriverLine::Reply),
        _ => Ok(DriverLine::Chatter),
    }
}

/// Parses one line a driver wrote (without its `\n`).
pub fn parse_reply(line: &[u8]) -> Result<Reply, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| malformed(line, e))
}

/// Parses the request line (without its `\n`).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    // Type and version first: a request of another version may lack fields this one needs.
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        version: u32,
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| malformed(line, e))?;
    if head.kind != "collect" {
        return Err(malformed(line, format!("unknown type `{}`", head.kind)));
    }
    if head.version != VERSION {
        return Err(ProtocolError::Version { got: head.version });
    }
    serde_json::from_slice(line).map_err(|e| malformed(line, e))
}

/// One JSON line with its `\n`.
pub fn to_line<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialise");
    line.push(b'\n');
    line
}

impl WireOutcome {
    /// Encodes output so the line stays short: as text when it is UTF-8 and escaping does not
    /// make it longer than base64 would (control characters cost six bytes each as `\u00XX`).
    pub fn new(
        command: &str,
        status: Status,
        error: Option<String>,
        output: &[u8],
        started_at: SystemTime,
        duration: Duration,
    ) -> WireOutcome {
        let (output, output_base64) = match std::str::from_utf8(output) {
            Ok(text) if escaped_len(text) <= output.len().div_ceil(3) * 4 => {
                (Some(text.to_string()), None)
            }
            _ => (None, Some(record::base64(output))),
        };
        WireOutcome {
            command: command.to_string(),
            status: status.as_str().to_string(),
            error,
            output,
            output_base64,
            started_at_ms: Some(
                started_at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64,
            ),
            duration_ms: duration.as_millis() as u64,
        }
    }

    /// The exact bytes of the output.
    pub fn output_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        match (&self.output_base64, &self.output) {
            (Some(b64), _) => record::base64_decode(b64.trim()).ok_or(ProtocolError::Base64),
            (None, Some(text)) => Ok(text.clone().into_bytes()),
            (None, None) => Ok(Vec::new()),
        }
    }

    pub fn started_at(&self) -> Option<SystemTime> {
        self.started_at_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }
}

/// The length of `text` as a JSON string body.
fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn wire_secret(secret: &Option<Secret>) -> Option<WireSecret> {
    secret.as_ref().map(|s| WireSecret {
        value: s.expose().map(str::to_string),
        source: match &s.source {
            SecretSource::Inline => "inline".to_string(),
            SecretSource::Env(name) => format!("env:{name}"),
            SecretSource::File(path) => format!("file:{}", path.display()),
        },
    })
}

/// Rebuilds a secret with its source. A value that was missing in the agent stays missing: the
/// driver's environment is cleared, so `from_env` finds nothing there either.
fn secret_of(wire: &Option<WireSecret>) -> Option<Secret> {
    let wire = wire.as_ref()?;
    let source = if let Some(name) = wire.source.strip_prefix("env:") {
        SecretSource::Env(name.to_string())
    } else if let Some(path) = wire.source.strip_prefix("file:") {
        SecretSource::File(PathBuf::from(path))
    } else {
        SecretSource::Inline
    };
    let mut secret = match (&wire.value, &source) {
        (Some(v), _) => Secret::inline(v),
        (None, SecretSource::Env(name)) => Secret::from_env(name),
        // Only an environment variable can be absent; treat anything else as empty.
        (None, _) => Secret::inline(""),
    };
    secret.source = source;
    Some(secret)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl WireDevice {
    pub fn from_device(d: &Device) -> WireDevice {
        let (host, port, serial_port, serial) = match &d.endpoint {
            Endpoint::Net { host, port } => (Some(host.clone()), Some(*port), None, None),
            Endpoint::Serial { port, settings } => (
                None,
                None,
                Some(port.clone()),
                Some(WireSerial {
                    baud: settings.baud,
                    data_bits: settings.data_bits,
                    parity: match settings.parity {
                        Parity::None => "none",
                        Parity::Odd => "odd",
                        Parity::Even => "even",
                    }
                    .to_string(),
                    stop_bits: settings.stop_bits,
                    flow_control: match settings.flow_control {
                        FlowControl::None => "none",
                        FlowControl::Software => "software",
                        FlowControl::Hardware => "hardware",
                    }
                    .to_string(),
                }),
            ),
        };
        WireDevice {
            name: d.name.clone(),
            groups: d.groups.clone(),
            transport: d.transport.as_str().to_string(),
            host,
            port,
            serial_port,
            serial,
            platform: d.platform.clone(),
            prompt: d.prompt.clone(),
            username: d.username.clone(),
            password: wire_secret(&d.password),
            enable_secret: wire_secret(&d.enable_secret),
            ssh: WireSsh {
                key_file: d.ssh.key_file.clone(),
                key_passphrase: wire_secret(&d.ssh.key_passphrase),
                host_key_check: match d.ssh.host_key_check {
                    HostKeyCheck::Strict => "strict",
                    HostKeyCheck::AcceptNew => "accept-new",
                    HostKeyCheck::Off => "off",
                }
                .to_string(),
                known_hosts: d.ssh.known_hosts.clone(),
                legacy: d.ssh.legacy,
                kex: d.ssh.kex.clone(),
                host_key_algorithms: d.ssh.host_key_algorithms.clone(),
                ciphers: d.ssh.ciphers.clone(),
                macs: d.ssh.macs.clone(),
                keepalive_ms: millis(d.ssh.keepalive),
            },
            interval_ms: millis(d.interval),
            connect_timeout_ms: millis(d.connect_timeout),
            command_timeout_ms: millis(d.command_timeout),
            max_output: d.max_output,
        }
    }

    /// The device as the session layer wants it (inside the driver, so in-thread).
    pub fn to_device(&self) -> Result<Device, ProtocolError> {
        let bad = |what: String| ProtocolError::Device(format!("device `{}`: {what}", self.name));
        let transport = match self.transport.as_str() {
            "ssh" => TransportKind::Ssh,
            "telnet" => TransportKind::Telnet,
            "serial" => TransportKind::Serial,
            other => return Err(bad(format!("unknown transport `{other}`"))),
        };
        let endpoint = match transport {
            TransportKind::Ssh | TransportKind::Telnet => Endpoint::Net {
                host: self.host.clone().ok_or_else(|| bad("no `host`".into()))?,
                port: self.port.ok_or_else(|| bad("no `port`".into()))?,
            },
            TransportKind::Serial => {
                let s = self
                    .serial
                    .as_ref()
                    .ok_or_else(|| bad("no `serial` settings".into()))?;
                Endpoint::Serial {
                    port: self
                        .serial_port
                        .clone()
                        .ok_or_else(|| bad("no `serial_port`".into()))?,
                    settings: SerialSettings {
                        baud: s.baud,
                        data_bits: s.data_bits,
                        parity: match s.parity.as_str() {
                            "odd" => Parity::Odd,
                            "even" => Parity::Even,
                            _ => Parity::None,
                        },
                        stop_bits: s.stop_bits,
                        flow_control: match s.flow_control.as_str() {
                            "software" => FlowControl::Software,
                            "hardware" => FlowControl::Hardware,
                            _ => FlowControl::None,
                        },
                    },
                }
            }
        };
        Ok(Device {
            name: self.name.clone(),
            groups: self.groups.clone(),
            transport,
            endpoint,
            platform: self.platform.clone(),
            prompt: self.prompt.clone(),
            username: self.username.clone(),
            password: secret_of(&self.password),
            enable_secret: secret_of(&self.enable_secret),
            ssh: SshSettings {
                key_file: self.ssh.key_file.clone(),
                key_passphrase: secret_of(&self.ssh.key_passphrase),
                host_key_check: match self.ssh.host_key_check.as_str() {
                    "strict" => HostKeyCheck::Strict,
                    "off" => HostKeyCheck::Off,
                    _ => HostKeyCheck::AcceptNew,
                },
                known_hosts: self.ssh.known_hosts.clone(),
                legacy: self.ssh.legacy,
                kex: self.ssh.kex.clone(),
                host_key_algorithms: self.ssh.host_key_algorithms.clone(),
                ciphers: self.ssh.ciphers.clone(),
                macs: self.ssh.macs.clone(),
                keepalive: Duration::from_millis(self.ssh.keepalive_ms),
            },
            commands: Vec::new(),
            ship: Default::default(),
            interval: Duration::from_millis(self.interval_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            command_timeout: Duration::from_millis(self.command_timeout_ms),
            max_output: self.max_output,
            // Inside the driver the session runs in-thread; there is nothing further to isolate.
            isolation: Isolation::Thread,
            driver_exec: None,
            capture: None,
        })
    }
}

/// Collects complete lines from a byte stream, refusing any line longer than `cap` so a
/// runaway driver cannot make the agent buffer without end.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    cap: usize,
}

/// A line grew past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub(crate) cap: usize,
}

impl LineBuffer {
    pub fn new(cap: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            cap,
        }
    }

    /// Appends bytes and returns the lines they completed (without `\n`). Callers push chunks
    /// of bounded size, so the buffer never holds more than `cap` plus one chunk.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, Overflow> {
        self.buf.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            if pos > self.cap {
                return Err(Overflow { cap: self.cap });
            }
            lines.push(self.buf[start..start + pos].to_vec());
            start += pos + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > self.cap {
            return Err(Overflow { cap: self.cap });
        }
        Ok(lines)
    }

    /// Bytes of an unfinished line (a driver that died mid-line).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_any_bytes() {
        let cases: [&[u8]; 4] = [
            b"plain text\n",
            b"bin \xff\xfe\x00 end",
            b"\x00\x01\x02\x03 mostly control",
            b"",
        ];
        for bytes in cases {
            let w = WireOutcome::new(
                "show x",
                Status::Ok,
                None,
                bytes,
                SystemTime::now(),
                Duration::ZERO,
            );
            let line = to_line(&Reply::Outcome(w));
            let Reply::Outcome(back) = parse_reply(&line[..line.len() - 1]).unwrap() else {
                panic!("not an outcome");
            };
            assert_eq!(back.output_bytes().unwrap(), bytes);
            // The line never costs more than base64 plus the fixed fields.
            assert!(line.len() <= bytes.len().div_ceil(3) * 4 + 200, "{line:?}");
        }
    }

    #[test]
    fn only_outcome_and_done_lines_are_messages_the_rest_is_chatter() {
        let message = |line: &[u8]| matches!(read_line(line), Ok(DriverLine::Reply(_)));
        let chatter = |line: &[u8]| matches!(read_line(line), Ok(DriverLine::Chatter));
        assert!(message(br#"{"type":"done"}"#));
        assert!(message(
            br#" {"type":"outcome","command":"c","status":"ok"}"#
        ));
        for line in [
            &b""[..],
            b"   \r",
            b"INFO logging in to 10.0.0.9",
            b"[#####     ] 50%",
            br#"{"type":"progress","percent":50}"#,
            br#"{"level":"debug","msg":"no type at all"}"#,
            br#"{"type":7}"#,
            b"\xff\xfe not UTF-8",
        ] {
            assert!(chatter(line), "{line:?}");
        }
        // Attempts at the protocol that went wrong stay errors.
        for line in [
            &br#"{"type":"outcome","command":"c"}"#[..],
            br#"{"type":"outcome","command":"c","status":"fine"#,
            br#"{"type":"done""#,
            b"{not json",
        ] {
            assert!(read_line(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn text_output_stays_readable_on_the_wire() {
        let w = WireOutcome::new(
            "c",
            Status::Ok,
            None,
            b"Gi0/1 up\n",
            UNIX_EPOCH,
            Duration::ZERO,
        );
        assert_eq!(w.output.as_deref(), Some("Gi0/1 up\n"));
        assert!(w.output_base64.is_none());
    }

    #[test]
    fn line_buffer_splits_and_refuses_long_lines() {
        let mut b = LineBuffer::new(8);
        assert_eq!(b.push(b"ab\ncd").unwrap(), vec![b"ab".to_vec()]);
        assert_eq!(b.push(b"e\n").unwrap(), vec![b"cde".to_vec()]);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.push(b"123456789"), Err(Overflow { cap: 8 }));
        let mut b = LineBuffer::new(4);
        assert!(b.push(b"1234567\nx").is_err(), "a complete long line too");
    }

    #[test]
    fn unknown_statuses_and_versions_are_refused() {
        assert!(parse_status("fine").is_err());
        assert_eq!(
            parse_status("driver_crashed").unwrap(),
            Status::DriverCrashed
        );
        let line = br#"{"type":"collect","version":99,"device":{},"commands":[]}"#;
        assert!(parse_request(line).is_err());
    }

    #[test]
    fn a_device_survives_the_wire() {
        let device = Device {
            name: "sw1".into(),
            groups: vec!["core".into()],
            transport: TransportKind::Serial,
            endpoint: Endpoint::Serial {
                port: "/dev/ttyUSB0".into(),
                settings: SerialSettings {
                    baud: 115_200,
                    data_bits: 7,
                    parity: Parity::Even,
                    stop_bits: 2,
                    flow_control: FlowControl::Hardware,
                },
            },
            platform: "cisco_ios".into(),
            prompt: Some("^sw1#$".into()),
            username: Some("netops".into()),
            password: Some(Secret::inline("pw")),
            enable_secret: Some(Secret::from_env("RACKHAND_TEST_SURELY_UNSET_4412")),
            ssh: SshSettings {
                key_file: None,
                key_passphrase: None,
                host_key_check: HostKeyCheck::Strict,
                known_hosts: "/k".into(),
                legacy: true,
                kex: vec!["a".into()],
                host_key_algorithms: vec![],
                ciphers: vec![],
                macs: vec!["m".into()],
                keepalive: Duration::from_secs(30),
            },
            commands: vec![],
            ship: Default::default(),
            interval: Duration::from_secs(60),
            connect_timeout: Duration::from_millis(1500),
            command_timeout: Duration::from_secs(30),
            max_output: 1 << 20,
            isolation: Isolation::Thread,
            driver_exec: None,
            capture: None,
        };
        let wire = WireDevice::from_device(&device);
        let json = serde_json::to_string(&wire).unwrap();
        let back: WireDevice = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_device().unwrap(), device);
    }
}

//! A deliberately small collector-side client for the tests: it moves bytes over a "wire"
//! (Telnet socket, serial/pty device, SSH channel), reads until a prompt with a deadline,
//! answers pagers, and hands back a command's output the way the record contract wants it
//! (no echo, no prompt, no pager prompt or its erase sequence, `\n` line ends).
//!
//! It is independent of the library on purpose: it is the yardstick the simulator is
//! measured with, so a bug shared by both could not hide.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use regex_lite::Regex;

use super::remaining;

/// How long one write may block: devices in these tests always drain their input.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// No command in the tests prints more than this; beyond it the client gives up.
pub const MAX_OUTPUT: usize = 16 << 20;
/// Prompts and pagers are looked for in this many trailing bytes only, so matching stays
/// linear however much output arrives.
const TAIL: usize = 512;

/// A byte stream with a deadline on every read.
pub trait Wire {
    /// Reads what is available, waiting at most until `deadline`. `Ok(0)` is end of stream;
    /// a passed deadline is `ErrorKind::TimedOut`.
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
    fn send(&mut self, data: &[u8]) -> io::Result<()>;
    /// What the Return key sends on this wire.
    fn enter(&self) -> &'static [u8];
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what}: deadline passed"))
}

// ---------------------------------------------------------------------------------------
// Telnet

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
pub const OPT_ECHO: u8 = 1;
pub const OPT_SGA: u8 = 3;
pub const OPT_NAWS: u8 = 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TnState {
    Data,
    Cr,
    Iac,
    Verb(u8),
    Sub,
    SubIac,
}

/// A Telnet client connection: answers the server's option negotiation (accepts ECHO and
/// SGA from the server, refuses everything else, NAWS included), strips IAC sequences and
/// `CR NUL`, and keeps what the server negotiated for the tests to check.
pub struct TelnetWire {
    stream: TcpStream,
    state: TnState,
    /// Every (verb, option) the server sent, in order.
    pub negotiated: Vec<(u8, u8)>,
    answered: Vec<(u8, u8)>,
    raw: Vec<u8>,
}

impl TelnetWire {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TelnetWire> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
            io::Error::new(e.kind(), format!("telnet connect to {addr} failed: {e}"))
        })?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(TelnetWire {
            stream,
            state: TnState::Data,
            negotiated: Vec::new(),
            answered: Vec::new(),
            raw: vec![0; 16 * 1024],
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn answer(&mut self, verb: u8, opt: u8) -> io::Result<()> {
        self.negotiated.push((verb, opt));
        let reply = match (verb, opt) {
            (WILL, OPT_ECHO | OPT_SGA) => DO,
            (WILL, _) => DONT,
            (DO, _) => WONT,
            // DONT/WONT need no answer once we are not using the option.
            _ => return Ok(()),
        };
        // Answer each request once: re-answering is how negotiation loops start (RFC 854).
        if self.answered.contains(&(verb, opt)) {
            return Ok(());
        }
        self.answered.push((verb, opt));
        self.stream.write_all(&[IAC, reply, opt])
    }

    /// Feeds raw bytes through the Telnet state machine; data bytes land in `out`.
    fn decode(&mut self, raw_len: usize, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        for i in 0..raw_len {
            let b = self.raw[i];
            self.state = match (self.state, b) {
                (TnState::Data | TnState::Cr, IAC) => TnState::Iac,
                (TnState::Cr, 0) => TnState::Data,
                (TnState::Data | TnState::Cr, _) => {
                    out[n] = b;
                    n += 1;
                    if b == b'\r' {
                        TnState::Cr
                    } else {
                        TnState::Data
                    }
                }
                (TnState::Iac, IAC) => {
                    out[n] = IAC;
                    n += 1;
                    TnState::Data
                }
                (TnState::Iac, WILL | WONT | DO | DONT) => TnState::Verb(b),
                (TnState::Iac, SB) => TnState::Sub,
                (TnState::Iac, _) => TnState::Data,
                (TnState::Verb(verb), opt) => {
                    self.answer(verb, opt)?;
                    TnState::Data
                }
                (TnState::Sub, IAC) => TnState::SubIac,
                (TnState::Sub, _) => TnState::Sub,
                (TnState::SubIac, SE) => TnState::Data,
                (TnState::SubIac, _) => TnState::Sub,
            };
        }
        Ok(n)
    }
}

impl Wire for TelnetWire {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        // Negotiation-only reads yield no data; keep reading until data, EOF or the deadline.
        loop {
            let left = remaining(deadline).ok_or_else(|| timed_out("telnet read"))?;
            self.stream.set_read_timeout(Some(left))?;
            let want = buf.len().min(self.raw.len());
            let got = match self.stream.read(&mut self.raw[..want]) {
                Ok(0) => return Ok(0),
                Ok(k) => k,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out("telnet read"));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
                Err(e) => return Err(e),
            };
            let n = self.decode(got, buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        // A data byte 255 must be doubled on a Telnet connection.
        let mut escaped = Vec::with_capacity(data.len());
        for &b in data {
            escaped.push(b);
            if b == IAC {
                escaped.push(IAC);
            }
        }
        self.stream.write_all(&escaped)
    }

    fn enter(&self) -> &'static [u8] {
        b"\r\n"
    }
}

// ---------------------------------------------------------------------------------------
// Serial console (the pty the simulator exposes), opened like a real USB serial adapter.

pub struct SerialWire {
    port: serialport::TTYPort,
}

impl SerialWire {
    /// Opens `path` exclusively, as the collector does. A child forked by another test
    /// thread holds a copy of a just-closed port's descriptor (and its lock) until it execs,
    /// so "exclusive lock" failures are retried briefly; any other failure is final.
    pub fn open(path: &Path, baud: u32) -> io::Result<SerialWire> {
        let until = super::deadline(Duration::from_secs(2));
        let mut last = None;
        let opened = super::poll_until(until, || {
            match serialport::new(path.to_string_lossy(), baud)
                .timeout(WRITE_TIMEOUT)
                .open_native()
            {
                Ok(port) => {
                    last = Some(Ok(port));
                    true
                }
                Err(e) => {
                    let retry = e.description.contains("exclusive lock");
                    last = Some(Err(e));
                    !retry
                }
            }
        });
        match last {
            Some(Ok(port)) if opened => Ok(SerialWire { port }),
            Some(Err(e)) => Err(io::Error::other(format!(
                "cannot open console {}: {e}",
                path.display()
            ))),
            _ => Err(io::Error::other(format!(
                "cannot open console {}: no attempt finished",
                path.display()
            ))),
        }
    }
}

impl Wire for SerialWire {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        use serialport::SerialPort;
        let left = remaining(deadline).ok_or_else(|| timed_out("console read"))?;
        self.port
            .set_timeout(left)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match self.port.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(timed_out("console read")),
            // A pty whose other side closed reports a hangup (EIO/EPIPE): that is the end.
            Err(e)
                if e.kind() == io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        use serialport::SerialPort;
        self.port
            .set_timeout(WRITE_TIMEOUT)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.port.write_all(data)?;
        self.port.flush()
    }

    fn enter(&self) -> &'static [u8] {
        b"\r"
    }
}

// ---------------------------------------------------------------------------------------
// Any plain descriptor (a pty master or slave opened as a `File`, a raw socket): no
// protocol layer, reads wait in `poll` until the deadline.

pub struct FdWire<T: Read + Write + AsFd> {
    pub inner: T,
    enter: &'static [u8],
}

impl<T: Read + Write + AsFd> FdWire<T> {
    /// `enter` is what Return sends on this line (`\r` on a terminal).
    pub fn new(inner: T, enter: &'static [u8]) -> FdWire<T> {
        FdWire { inner, enter }
    }
}

impl<T: Read + Write + AsFd> Wire for FdWire<T> {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        // Bounded: each round waits in poll until the deadline at most.
        loop {
            let left = remaining(deadline).ok_or_else(|| timed_out("read"))?;
            let fd = self.inner.as_fd().as_raw_fd();
            if !super::process::poll_readable(&fd, left)? {
                continue;
            }
            return match self.inner.read(buf) {
                // A pty whose other side is gone says EIO: that is its end of stream.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other,
            };
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)?;
        self.inner.flush()
    }

    fn enter(&self) -> &'static [u8] {
        self.enter
    }
}

// ---------------------------------------------------------------------------------------
// SSH: an interactive shell channel with a pty, as a collector opens one.

pub struct SshWire {
    pub session: ssh2::Session,
    pub channel: ssh2::Channel,
}

impl SshWire {
    /// Connects, authenticates with a key file, requests a pty and a shell.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        key: &Path,
        timeout: Duration,
    ) -> io::Result<SshWire> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("ssh connect to {addr}: {e}")))?;
        let mut session = ssh2::Session::new().map_err(io::Error::from)?;
        session.set_tcp_stream(tcp);
        session.set_timeout(timeout.as_millis() as u32);
        let step = |what: &str, r: Result<(), ssh2::Error>| {
            r.map_err(|e| io::Error::other(format!("ssh {what} with {addr}: {e}")))
        };
        step("handshake", session.handshake())?;
        step(
            "public key auth",
            session.userauth_pubkey_file(user, None, key, None),
        )?;
        let mut channel = session
            .channel_session()
            .map_err(|e| io::Error::other(format!("ssh channel with {addr}: {e}")))?;
        step(
            "pty request",
            channel.request_pty("vt100", None, Some((200, 50, 0, 0))),
        )?;
        step("shell", channel.shell())?;
        Ok(SshWire { session, channel })
    }
}

impl Wire for SshWire {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = remaining(deadline).ok_or_else(|| timed_out("ssh read"))?;
        self.session
            .set_timeout(left.as_millis().clamp(1, u32::MAX as u128) as u32);
        match self.channel.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(timed_out("ssh read")),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.session.set_timeout(WRITE_TIMEOUT.as_millis() as u32);
        self.channel.write_all(data)?;
        self.channel.flush()
    }

    fn enter(&self) -> &'static [u8] {
        b"\r"
    }
}

// ---------------------------------------------------------------------------------------
// The prompt-reading client.

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no {waiting_for} before the deadline; received so far: {:?}",
        String::from_utf8_lossy(got)
    )]
    Timeout { waiting_for: String, got: Vec<u8> },
    #[error(
        "the device closed the stream while we waited for {waiting_for}; received: {:?}",
        String::from_utf8_lossy(got)
    )]
    Eof { waiting_for: String, got: Vec<u8> },
    #[error("more than {MAX_OUTPUT} bytes without {waiting_for}")]
    TooLarge { waiting_for: String },
    #[error(
        "the echo of {command:?} is missing; the reply began with {:?}",
        String::from_utf8_lossy(got)
    )]
    Echo { command: String, got: Vec<u8> },
    #[error("i/o error while waiting for {waiting_for}: {source}")]
    Io {
        waiting_for: String,
        source: io::Error,
    },
}

impl ClientError {
    /// The bytes that arrived before the error (partial output).
    pub fn partial(&self) -> &[u8] {
        match self {
            ClientError::Timeout { got, .. }
            | ClientError::Eof { got, .. }
            | ClientError::Echo { got, .. } => got,
            _ => &[],
        }
    }
}

/// What `run` hands back besides the output itself.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The output as the record contract wants it.
    pub output: Vec<u8>,
    /// How many pager prompts were answered.
    pub pages: usize,
    /// The prompt text that ended the output.
    pub prompt: String,
    /// When the first byte after the echo arrived, and when the prompt was complete.
    pub first_output_at: Option<Instant>,
    pub prompt_at: Instant,
}

/// What came before a prompt: raw bytes with pager prompts cut out (their erase
/// sequences still in, at `pager_spots`).
struct UpToPrompt {
    raw: Vec<u8>,
    pager_spots: Vec<usize>,
    prompt: String,
    at: Instant,
}

impl UpToPrompt {
    fn into_reply(mut self, command: &str, first: Option<Instant>) -> Result<Reply, ClientError> {
        for &spot in self.pager_spots.iter().rev() {
            remove_erase_sequence(&mut self.raw, spot);
        }
        let body = strip_echo(&self.raw, command).ok_or_else(|| ClientError::Echo {
            command: command.to_string(),
            got: self.raw.iter().copied().take(200).collect(),
        })?;
        Ok(Reply {
            output: crlf_to_lf(body),
            pages: self.pager_spots.len(),
            prompt: self.prompt,
            first_output_at: first,
            prompt_at: self.at,
        })
    }
}

pub struct PromptClient<W: Wire> {
    pub wire: W,
    prompt: Regex,
    pager: Regex,
    /// Received bytes not yet handed out.
    acc: Vec<u8>,
    buf: Vec<u8>,
}

/// The pagers of the platforms we simulate: Cisco/Arista ` --More-- `, Junos `---(more)---`
/// (also `---(more 42%)---`).
pub const PAGER: &str = r" ?--More-- ?|---\(more[^)]*\)---";

/// Maps bytes to a same-length ASCII string so `regex-lite` (which matches `str`) can look
/// at raw device output, garbage included.
fn ascii_view(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b < 0x80 { b as char } else { '\u{1a}' })
        .collect()
}

impl<W: Wire> PromptClient<W> {
    /// `prompt` is a regex for the device's prompt; it must end the received data and start
    /// a line.
    pub fn new(wire: W, prompt: &str) -> PromptClient<W> {
        PromptClient {
            wire,
            prompt: end_anchored(prompt),
            pager: end_anchored(PAGER),
            acc: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    pub fn set_prompt(&mut self, prompt: &str) {
        self.prompt = end_anchored(prompt);
    }

    pub fn send_raw(&mut self, data: &[u8]) -> io::Result<()> {
        self.wire.send(data)
    }

    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut data = line.as_bytes().to_vec();
        data.extend_from_slice(self.wire.enter());
        self.wire.send(&data)
    }

    /// Reads one chunk into the buffer. `Ok(false)` on end of stream.
    fn fill(&mut self, deadline: Instant, waiting_for: &str) -> Result<bool, ClientError> {
        if self.acc.len() > MAX_OUTPUT {
            return Err(ClientError::TooLarge {
                waiting_for: waiting_for.to_string(),
            });
        }
        match self.wire.read_by(&mut self.buf, deadline) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.acc.extend_from_slice(&self.buf[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ClientError::Timeout {
                waiting_for: waiting_for.to_string(),
                got: std::mem::take(&mut self.acc),
            }),
            Err(source) => Err(ClientError::Io {
                waiting_for: waiting_for.to_string(),
                source,
            }),
        }
    }

    /// Where `re` matches at the very end of the received bytes (start offset into `acc`).
    fn match_at_end(&self, re: &Regex) -> Option<(usize, String)> {
        let from = self.acc.len().saturating_sub(TAIL);
        let view = ascii_view(&self.acc[from..]);
        let m = re.find(&view)?;
        Some((from + m.start(), m.as_str().to_string()))
    }

    /// Reads until `pattern` ends the received data; returns what came before it (raw) and
    /// consumes the match.
    pub fn expect(&mut self, pattern: &str, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        let re = end_anchored(pattern);
        let waiting_for = format!("/{pattern}/");
        loop {
            if let Some((start, _)) = self.match_at_end(&re) {
                let mut before = std::mem::take(&mut self.acc);
                before.truncate(start);
                return Ok(before);
            }
            if !self.fill(deadline, &waiting_for)? {
                return Err(ClientError::Eof {
                    waiting_for,
                    got: std::mem::take(&mut self.acc),
                });
            }
        }
    }

    /// Reads up to the prompt, answering pagers on the way.
    fn read_to_prompt(&mut self, deadline: Instant) -> Result<UpToPrompt, ClientError> {
        let waiting_for = format!("the prompt /{}/", self.prompt.as_str());
        let mut pager_spots = Vec::new();
        // Bounded by the deadline (every fill waits at most until it) and by MAX_OUTPUT.
        loop {
            if let Some((start, text)) = self.match_at_end(&self.prompt)
                && (start == 0 || self.acc[start - 1] == b'\n')
            {
                let mut raw = std::mem::take(&mut self.acc);
                raw.truncate(start);
                return Ok(UpToPrompt {
                    raw,
                    pager_spots,
                    prompt: text,
                    at: Instant::now(),
                });
            }
            if let Some((start, _)) = self.match_at_end(&self.pager) {
                self.acc.truncate(start);
                pager_spots.push(start);
                self.wire.send(b" ").map_err(|source| ClientError::Io {
                    waiting_for: "the pager to accept a space".into(),
                    source,
                })?;
                continue;
            }
            if !self.fill(deadline, &waiting_for)? {
                return Err(ClientError::Eof {
                    waiting_for,
                    got: std::mem::take(&mut self.acc),
                });
            }
        }
    }

    /// Waits for the prompt (after login, after Return) and returns what came before it.
    pub fn wait_prompt(&mut self, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        self.read_to_prompt(deadline).map(|r| r.raw)
    }

    fn send_command(&mut self, command: &str) -> Result<(), ClientError> {
        self.send_line(command).map_err(|source| ClientError::Io {
            waiting_for: format!("sending {command:?}"),
            source,
        })
    }

    /// Sends `command`, reads its output up to the next prompt and cleans it up.
    pub fn run(&mut self, command: &str, deadline: Instant) -> Result<Reply, ClientError> {
        self.send_command(command)?;
        let read = self.read_to_prompt(deadline)?;
        read.into_reply(command, None)
    }

    /// Like `run`, but records when the first byte after the echo arrived (for the
    /// latency and slow-output checks).
    pub fn run_timed(&mut self, command: &str, deadline: Instant) -> Result<Reply, ClientError> {
        self.send_command(command)?;
        let mut echo = command.as_bytes().to_vec();
        echo.extend_from_slice(b"\r\n");
        // The echo and the first output bytes may share one read: wait until something
        // beyond the echo is in, and note when that read returned.
        while self.acc.len() <= echo.len() {
            if !self.fill(deadline, "the first byte of output")? {
                return Err(ClientError::Eof {
                    waiting_for: "the first byte of output".into(),
                    got: std::mem::take(&mut self.acc),
                });
            }
        }
        if !self.acc.starts_with(&echo) {
            return Err(ClientError::Echo {
                command: command.to_string(),
                got: self.acc.iter().copied().take(200).collect(),
            });
        }
        let first = Instant::now();
        let read = self.read_to_prompt(deadline)?;
        read.into_reply(command, Some(first))
    }

    /// Reads whatever arrives until `deadline` or end of stream, at most `limit` bytes:
    /// for "nothing must arrive" and "keeps coming" checks.
    pub fn drain(&mut self, deadline: Instant, limit: usize) -> Result<Drained, ClientError> {
        let mut got = std::mem::take(&mut self.acc);
        loop {
            if got.len() >= limit {
                return Ok(Drained {
                    bytes: got,
                    end: DrainEnd::Limit,
                });
            }
            match self.wire.read_by(&mut self.buf, deadline) {
                Ok(0) => {
                    return Ok(Drained {
                        bytes: got,
                        end: DrainEnd::Eof,
                    });
                }
                Ok(n) => got.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Ok(Drained {
                        bytes: got,
                        end: DrainEnd::Deadline,
                    });
                }
                Err(source) => {
                    return Err(ClientError::Io {
                        waiting_for: "more bytes".into(),
                        source,
                    });
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    Deadline,
    Eof,
    Limit,
}

#[derive(Debug)]
pub struct Drained {
    pub bytes: Vec<u8>,
    pub end: DrainEnd,
}

fn end_anchored(pattern: &str) -> Regex {
    Regex::new(&format!("(?:{pattern})$"))
        .unwrap_or_else(|e| panic!("bad test regex {pattern:?}: {e}"))
}

/// Removes `\x08`×n ` `×n `\x08`×n at `at` (what a device sends to wipe its pager prompt).
/// Leaves the bytes alone if they are not exactly that, so a wrong sequence shows up in the
/// compared output.
pub fn remove_erase_sequence(raw: &mut Vec<u8>, at: usize) {
    let rest = &raw[at.min(raw.len())..];
    let n = rest.iter().take_while(|&&b| b == 0x08).count();
    if n == 0 || rest.len() < 3 * n {
        return;
    }
    let ok =
        rest[n..2 * n].iter().all(|&b| b == b' ') && rest[2 * n..3 * n].iter().all(|&b| b == 0x08);
    if ok {
        raw.drain(at..at + 3 * n);
    }
}

/// The echoed `command` line, `\r\n`-terminated, must open the reply; returns what follows.
pub fn strip_echo<'a>(raw: &'a [u8], command: &str) -> Option<&'a [u8]> {
    let rest = raw.strip_prefix(command.as_bytes())?;
    rest.strip_prefix(b"\r\n")
}

pub fn crlf_to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

#[test]
fn erase_sequences_and_echo_are_removed_only_when_exact() {
    let mut raw = b"line1\r\n\x08\x08\x08   \x08\x08\x08line2\r\n".to_vec();
    remove_erase_sequence(&mut raw, 7);
    assert_eq!(raw, b"line1\r\nline2\r\n");
    let mut lopsided = b"a\x08\x08 \x08\x08b".to_vec();
    remove_erase_sequence(&mut lopsided, 1);
    assert_eq!(lopsided, b"a\x08\x08 \x08\x08b");
    assert_eq!(
        strip_echo(b"show clock\r\n12:00\r\n", "show clock"),
        Some(&b"12:00\r\n"[..])
    );
    assert_eq!(strip_echo(b"show clok\r\n", "show clock"), None);
}

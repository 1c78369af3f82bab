//! Telnet client transport: a TCP connection with the protocol (RFC 854/855) peeled off, so
//! the layers above see the device's bytes exactly as it printed them.
//!
//! Old switches, routers and terminal servers still only speak Telnet. The protocol itself
//! (parsing, RFC 1143 negotiation, escaping) lives in [`crate::telnet_protocol`] without I/O; this
//! file is the socket around it, in the client role:
//!
//! - The server's `WILL ECHO` and `WILL SGA` are accepted (`DO`): that is the character-at-a-
//!   time mode every device CLI expects. We offer `WILL NAWS` ourselves and, once agreed, report
//!   a window of [`WINDOW_WIDTH`] × [`WINDOW_HEIGHT`] so the device neither wraps long lines
//!   nor (where it honours the height) pages. Everything else is refused once (`DONT`/`WONT`);
//!   the Q method makes negotiation loops impossible, and [`MAX_NEGOTIATION_REPLIES`] bounds
//!   what a misbehaving peer can make us send.
//! - Received data has `IAC IAC` unescaped and `CR NUL` turned into `CR`; any other byte,
//!   0xFF included, reaches the caller unchanged.
//! - Line ends on send: the session sends `\n`. NVT (RFC 854) wants `CR LF`, so a `\n` not
//!   preceded by `\r` in the same `send` goes out as `CR LF`; a `\r\n` is kept; a lone `\r`
//!   (a bare Return key) goes out as `CR NUL`, as the RFC requires. Each `send` is taken on
//!   its own: a `\r` ending one call and a `\n` starting the next are two line ends. `0xFF` is
//!   doubled (`IAC IAC`).
//! - `recv` waits with a socket read timeout computed from the caller's deadline, so it blocks
//!   in the kernel, never in a busy loop, and never past the deadline.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::inventory::{Device, Endpoint};
use crate::telnet_protocol::{self as proto, Event, Item, Negotiator, Parser};
use crate::transport::resolve::{self, Resolve};
use crate::transport::{Transport, TransportError};

/// Columns reported with NAWS: wide enough that a CLI does not wrap long lines of output
/// (table rows, interface descriptions) into lines the parsers downstream never expect.
pub const WINDOW_WIDTH: u16 = 511;
/// Rows reported with NAWS. RFC 1073 allows 0 for "unknown, leave it to the server"; devices
/// that take the height as their page length then do not page at all, which is
/// what a collector wants. The driver still turns paging off explicitly, for the devices
/// that ignore it or treat 0 as "default".
pub const WINDOW_HEIGHT: u16 = 0;
/// Options the server may enable on its side (we answer `DO`).
const ACCEPT_REMOTE: &[u8] = &[proto::OPT_ECHO, proto::OPT_SGA];
/// Options we agree to enable on our side (we answer `WILL`).
const ACCEPT_LOCAL: &[u8] = &[proto::OPT_NAWS];
/// Negotiation replies one connection may cost us. A correct peer needs a handful; a peer
/// toggling an option forever is answered up to here, then ignored.
pub const MAX_NEGOTIATION_REPLIES: u64 = 256;
/// Socket reads per `recv` that may carry protocol only. Bounds the loop against a peer
/// that sends negotiation without ever sending data (time is bounded by the deadline too).
const MAX_PROTOCOL_ONLY_READS: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;
/// How long a write may block when the device does not read. Writes are small (a command
/// line); a device that takes none of it for this long is hung.
const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What crossed the wire, for diagnostics and for tests that prove negotiation settles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes read from the socket, protocol included.
    pub(crate) wire_received: u64,
    /// Bytes written to the socket, protocol included.
    pub wire_sent: u64,
    /// Bytes of negotiation and subnegotiation we wrote (answers, offers, NAWS, BRK).
    pub protocol_sent: u64,
    /// Negotiation commands (`IAC WILL/WONT/DO/DONT x`) received.
    pub negotiations_received: u64,
    /// Negotiation replies we sent (not counting our own initial offers).
    pub negotiation_replies: u64,
}

/// A Telnet connection to one device.
pub struct TelnetTransport {
    stream: TcpStream,
    peer: String,
    parser: Parser,
    negotiator: Negotiator,
    /// Decoded data that did not fit the caller's buffer.
    pending: Vec<u8>,
    raw: Vec<u8>,
    counters: Counters,
}

impl std::fmt::Debug for TelnetTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelnetTransport")
            .field("peer", &self.peer)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl TelnetTransport {
    /// Connects to the device's `host:port`, trying each resolved address with the device's
    /// `connect_timeout`, and offers NAWS. The server's own negotiation is answered as it
    /// arrives, inside [`Transport::recv`].
    pub fn connect(device: &Device) -> Result<TelnetTransport, TransportError> {
        TelnetTransport::connect_with(device, &resolve::system())
    }

    /// [`TelnetTransport::connect`], looking the host name up with `resolver` (within
    /// `connect_timeout`, like each connect).
    pub fn connect_with(
        device: &Device,
        resolver: &Arc<dyn Resolve>,
    ) -> Result<TelnetTransport, TransportError> {
        let Endpoint::Net { host, port } = &device.endpoint else {
            return Err(TransportError::Connect {
                peer: format!("telnet {}", device.name),
                detail: format!(
                    "device `{}` has a serial port, not a host; set transport = \"serial\" or give it a host",
                    device.name
                ),
            });
        };
        let peer = format!("telnet {}", device.address());
        let timeout = device.connect_timeout;
        let addrs = resolve::resolve(resolver, host, *port, Instant::now() + timeout, timeout)
            .map_err(|source| TransportError::Resolve {
                peer: peer.clone(),
                source,
            })?;
        let stream = connect_any(&addrs, *port, timeout, &peer)?;
        let io_err = |e: io::Error| TransportError::Io {
            peer: peer.clone(),
            detail: format!("cannot set up the socket: {e}"),
        };
        stream.set_nodelay(true).map_err(io_err)?;
        stream
            .set_write_timeout(Some(device.command_timeout.max(MIN_WRITE_TIMEOUT)))
            .map_err(io_err)?;
        let mut t = TelnetTransport {
            stream,
            peer,
            parser: Parser::new(),
            negotiator: Negotiator::new(ACCEPT_LOCAL, ACCEPT_REMOTE),
            pending: Vec::new(),
            raw: vec![0; READ_CHUNK],
            counters: Counters::default(),
        };
        let offer = t.negotiator.request_local(proto::OPT_NAWS, true);
        t.write_protocol(&offer)?;
        Ok(t)
    }

    /// Bytes and negotiation exchanged so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether the server has its side of `option` enabled (e.g. ECHO after `WILL ECHO`).
    pub fn remote_enabled(&self, option: u8) -> bool {
        self.negotiator.remote_enabled(option)
    }

    /// Whether our side of `option` is enabled (e.g. NAWS after the server's `DO NAWS`).
    pub fn local_enabled(&self, option: u8) -> bool {
        self.negotiator.local_enabled(option)
    }

    fn write_protocol(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.write_wire(bytes)?;
        self.counters.protocol_sent += bytes.len() as u64;
        Ok(())
    }

    fn write_wire(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        match self.stream.write_all(bytes) {
            Ok(()) => {
                self.counters.wire_sent += bytes.len() as u64;
                Ok(())
            }
            Err(e) => Err(write_error(&self.peer, e)),
        }
    }

    /// Acts on what the parser found: data is queued for the caller, negotiation answered.
    fn handle(&mut self, items: Vec<Item>) -> Result<(), TransportError> {
        for item in items {
            match item {
                Item::Data(d) => self.pending.extend_from_slice(&d),
                Item::Event(Event::Negotiation(verb, option)) => {
                    self.counters.negotiations_received += 1;
                    let (reply, change) = self.negotiator.receive(verb, option);
                    if !reply.is_empty() {
                        if self.counters.negotiation_replies >= MAX_NEGOTIATION_REPLIES {
                            log::warn!(
                                "{}: peer keeps negotiating (option {option}); no longer answering",
                                self.peer
                            );
                            continue;
                        }
                        self.counters.negotiation_replies += 1;
                        self.write_protocol(&reply)?;
                    }
                    let naws_agreed =
                        change.is_some_and(|c| c.option == proto::OPT_NAWS && c.local && c.enabled);
                    if naws_agreed {
                        let naws = proto::naws(WINDOW_WIDTH, WINDOW_HEIGHT);
                        self.write_protocol(&naws)?;
                    }
                }
                // Commands (AYT, GA, NOP, DM...) and subnegotiations for options we refused
                // carry nothing a collector needs.
                Item::Event(_) => {}
            }
        }
        Ok(())
    }

    fn take_pending(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        n
    }
}

/// Connects to the first address that answers, each with the full timeout (a dual-stack
/// name whose first address is unreachable must not eat the budget of the one that works).
fn connect_any(
    addrs: &[SocketAddr],
    port: u16,
    timeout: Duration,
    peer: &str,
) -> Result<TcpStream, TransportError> {
    let mut failures = Vec::new();
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                failures.push(format!("{addr}: no answer within {timeout:?}"));
            }
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    Err(TransportError::Connect {
        peer: peer.to_string(),
        detail: format!(
            "{}; check that the device is up, that Telnet is enabled on it and that port {port} is right",
            failures.join("; ")
        ),
    })
}

fn write_error(peer: &str, e: io::Error) -> TransportError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => TransportError::Closed {
            peer: peer.to_string(),
        },
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::Io {
            peer: peer.to_string(),
            detail: "the device stopped accepting input; it may be hung, check it".into(),
        },
        _ => TransportError::Io {
            peer: peer.to_string(),
            detail: format!("write failed: {e}"),
        },
    }
}

/// NVT line ends: `\n` without a `\r` before it becomes `CR LF`. `CR NUL` for a lone `\r`
/// and IAC doubling are [`proto::escape`]'s job.
fn to_nvt_line_ends(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    let mut prev = None;
    for &b in data {
        if b == b'\n' && prev != Some(b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        prev = Some(b);
    }
    out
}

/// Encodes application bytes for the wire as [`TelnetTransport::send`] does.
pub fn encode(data: &[u8]) -> Vec<u8> {
    proto::escape(&to_nvt_line_ends(data), false)
}

impl Transport for TelnetTransport {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        if buf.is_empty() {
            // Ok(0) would read as "closed" to some callers; the trait never returns it.
            return Err(TransportError::Io {
                peer: self.peer.clone(),
                detail: "recv called with an empty buffer (a bug in the caller)".into(),
            });
        }
        if !self.pending.is_empty() {
            return Ok(self.take_pending(buf));
        }
        for _ in 0..MAX_PROTOCOL_ONLY_READS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::TimedOut {
                    peer: self.peer.clone(),
                });
            }
            if let Err(e) = self.stream.set_read_timeout(Some(left)) {
                return Err(TransportError::Io {
                    peer: self.peer.clone(),
                    detail: format!("cannot set the read timeout: {e}"),
                });
            }
            let got = match self.stream.read(&mut self.raw) {
                Ok(0) => {
                    return Err(TransportError::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(TransportError::TimedOut {
                            peer: self.peer.clone(),
                        });
                    }
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        return Err(TransportError::Closed {
                            peer: self.peer.clone(),
                        });
                    }
                    _ => {
                        return Err(TransportError::Io {
                            peer: self.peer.clone(),
                            detail: format!("read failed: {e}"),
                        });
                    }
                },
            };
            self.counters.wire_received += got as u64;
            let items = self.parser.feed(&self.raw[..got]);
            self.handle(items)?;
            if !self.pending.is_empty() {
                return Ok(self.take_pending(buf));
            }
        }
        Err(TransportError::Io {
            peer: self.peer.clone(),
            detail: format!(
                "{MAX_PROTOCOL_ONLY_READS} reads in a row carried only Telnet negotiation; the device's Telnet server misbehaves, try SSH or the console"
            ),
        })
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if data.is_empty() {
            return Ok(());
        }
        let wire = encode(data);
        self.write_wire(&wire)
    }

    fn peer(&self) -> &str {
        &self.peer
    }

    fn send_break(&mut self) -> Result<(), TransportError> {
        self.write_protocol(&[proto::IAC, proto::BRK])
    }
}

impl Drop for TelnetTransport {
    fn drop(&mut self) {
        // Tell the device at once rather than leaving it to notice a dead socket; the vty
        // line is freed for the next collection.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::resolve::tests::assert_connect_fails_at_the_dns_deadline;

    #[test]
    fn a_name_dns_does_not_resolve_in_time_is_connect_failed_at_connect_timeout() {
        assert_connect_fails_at_the_dns_deadline("telnet", TelnetTransport::connect_with);
    }

    #[test]
    fn line_ends_become_crlf_and_a_lone_cr_becomes_cr_nul() {
        assert_eq!(encode(b"show clock\n"), b"show clock\r\n");
        assert_eq!(encode(b"show clock\r\n"), b"show clock\r\n");
        assert_eq!(encode(b"\r"), b"\r\0");
        assert_eq!(encode(b"a\n\nb"), b"a\r\n\r\nb");
        assert_eq!(encode(b"\x15\r"), b"\x15\r\0");
    }

    #[test]
    fn iac_is_doubled_on_send() {
        assert_eq!(encode(&[b'x', 0xff, b'y']), vec![b'x', 0xff, 0xff, b'y']);
        assert_eq!(encode(&[0xff, b'\n']), vec![0xff, 0xff, b'\r', b'\n']);
    }
}

//! SSH transport: an interactive shell on a pty over libssh2, as a person at a terminal
//! would get, because network CLIs (IOS, NX-OS, EOS, Junos) are built for that and often
//! refuse or misbehave on `exec` channels.
//!
//! Why it is more than `Session::new` + `handshake`:
//! - One deadline (`connect_timeout`) covers TCP connect, handshake and authentication, so a
//!   blackholed or half-dead device costs a worker at most that long.
//! - Host keys are checked against an OpenSSH `known_hosts` *right after the handshake*, so
//!   a replaced or spoofed device never sees a password.
//! - Old gear speaks only the SHA-1 family; libssh2 is built with it (see
//!   `.cargo/config.toml`) but we offer it only to `legacy_ssh` devices, and when no
//!   algorithm is in common we read the server's own KEXINIT (it is plain text on the wire)
//!   to say exactly what it offers and which setting fixes it.
//! - Reads wait on the socket with `poll` until data or the caller's deadline (no sleeps, no
//!   busy loop) and send keepalives when due, so idle sessions survive NAT and firewalls.
//!
//! Opening reads as its steps (`Opening`: prepare, reach, handshake, verify the key,
//! authenticate, open the shell); each concern with rules of its own has a file:
//! `known_hosts` (the file, hashed names, strict/accept-new/off), `auth` (key, password,
//! keyboard-interactive), `algorithms` (our offer, legacy SHA-1 on request, why a handshake
//! found nothing in common) and `kexinit` (reading what the server offers off the wire).

mod algorithms;
mod auth;
mod kexinit;
mod known_hosts;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssh2::{BlockDirections, Channel, ErrorCode, ExtendedData, Session};

use self::algorithms::{Offer, explain_handshake_failure};
use self::auth::authenticate;
use self::known_hosts::{KnownHosts, known_hosts_name};
use super::resolve::{self, Resolve};
use super::{Transport, TransportError};
use crate::inventory::{Device, Endpoint, HostKeyCheck};

/// Wide enough that no device wraps a line of `show` output (wrapping would insert CR/LF
/// into records); 24 rows is what every CLI copes with, paging is turned off by the driver.
const PTY_COLS: u32 = 511;
const PTY_ROWS: u32 = 24;
/// How long `Drop` may spend handing the server its goodbye (it waits for no answer).
const CLOSE_BUDGET: Duration = Duration::from_millis(1000);
/// Safety net against a socket that polls readable forever while libssh2 finds nothing to
/// hand out (it should not happen; if it does we fail loudly instead of spinning).
const MAX_WAKEUPS_PER_CALL: u32 = 100_000;

/// An interactive shell on one device over SSH.
pub struct SshTransport {
    // Field order: the channel must go before the session that owns it.
    channel: Channel,
    session: Session,
    /// A second handle on the session's socket, for `poll`.
    socket: TcpStream,
    peer: String,
    /// How long a write may wait for the device to drain its input.
    send_timeout: Duration,
    keepalive: bool,
}

impl SshTransport {
    /// Connects, checks the host key, authenticates and opens a shell on a pty, all within
    /// the device's `connect_timeout`.
    pub fn connect(device: &Device) -> Result<SshTransport, TransportError> {
        SshTransport::connect_with(device, &resolve::system())
    }

    /// [`SshTransport::connect`], looking the host name up with `resolver`.
    pub fn connect_with(
        device: &Device,
        resolver: &Arc<dyn Resolve>,
    ) -> Result<SshTransport, TransportError> {
        let peer = format!("ssh {}", device.address());
        let Endpoint::Net { host, port } = &device.endpoint else {
            return Err(TransportError::Connect {
                peer,
                detail: format!(
                    "device `{}` has no host and port; set transport = \"serial\" or add host = \"...\"",
                    device.name
                ),
            });
        };
        let opening = Opening {
            device,
            deadline: Instant::now() + device.connect_timeout,
            peer,
            known_as: known_hosts_name(host, *port),
        };
        let (mut session, known, offer) = opening.prepare()?;
        let (tcp, addr) = opening.reach(resolver, host, *port)?;
        let socket = tcp
            .try_clone()
            .map_err(|e| opening.fail(format!("cannot duplicate the socket: {e}")))?;
        session.set_tcp_stream(tcp);
        opening.handshake(&mut session, addr, &offer)?;
        // Before a single credential leaves this machine.
        opening.verify_key(&session, known.as_ref())?;
        authenticate(&session, device, opening.deadline, &opening.peer)?;
        let channel = opening.open_channel(&session)?;

        let keepalive_secs = device.ssh.keepalive.as_secs().min(u32::MAX as u64) as u32;
        session.set_keepalive(true, keepalive_secs);
        session.set_blocking(false);
        Ok(SshTransport {
            channel,
            session,
            socket,
            peer: opening.peer,
            send_timeout: device.command_timeout,
            keepalive: keepalive_secs > 0,
        })
    }

    /// Waits until libssh2 can make progress in the direction it is blocked on, or `until`.
    fn wait_socket(&self, until: Instant) -> Result<(), TransportError> {
        let events = match self.session.block_directions() {
            BlockDirections::Outbound => libc::POLLOUT,
            BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
            BlockDirections::Inbound | BlockDirections::None => libc::POLLIN,
        };
        let left = until.saturating_duration_since(Instant::now());
        crate::poll::wait(self.socket.as_raw_fd(), events, left)
            .map(drop)
            .map_err(|e| TransportError::Io {
                peer: self.peer.clone(),
                detail: format!("cannot wait on the socket: {e}"),
            })
    }

    /// Sends a keepalive if one is due; returns when the next one is.
    fn keepalive_due(&self) -> Result<Option<Instant>, TransportError> {
        if !self.keepalive {
            return Ok(None);
        }
        match self.session.keepalive_send() {
            Ok(secs) => Ok(Some(
                Instant::now() + Duration::from_secs(secs.max(1) as u64),
            )),
            Err(e) if e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_EAGAIN) => {
                Ok(Some(Instant::now() + Duration::from_secs(1)))
            }
            Err(e) => Err(self.stream_error(&e.to_string())),
        }
    }

    /// Classifies a failed read or write: a gone peer is `Closed`, the rest `Io`.
    fn stream_error(&self, what: &str) -> TransportError {
        let code = ssh2::Error::last_session_error(&self.session).map(|e| e.code());
        let gone = matches!(
            code,
            Some(ErrorCode::Session(
                libssh2_sys::LIBSSH2_ERROR_SOCKET_DISCONNECT
                    | libssh2_sys::LIBSSH2_ERROR_SOCKET_RECV
                    | libssh2_sys::LIBSSH2_ERROR_SOCKET_SEND
                    | libssh2_sys::LIBSSH2_ERROR_CHANNEL_CLOSED
                    | libssh2_sys::LIBSSH2_ERROR_CHANNEL_EOF_SENT
            ))
        );
        if gone || self.channel.eof() {
            TransportError::Closed {
                peer: self.peer.clone(),
            }
        } else {
            TransportError::Io {
                peer: self.peer.clone(),
                detail: format!("{what}; the session is unusable, reconnect"),
            }
        }
    }
}

impl Transport for SshTransport {
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Err(TransportError::Io {
                peer: self.peer.clone(),
                detail: "recv called with an empty buffer (a bug in the caller)".into(),
            });
        }
        for _ in 0..MAX_WAKEUPS_PER_CALL {
            match self.channel.read(buf) {
                Ok(0) if self.channel.eof() => {
                    return Err(TransportError::Closed {
                        peer: self.peer.clone(),
                    });
                }
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.stream_error(&format!("read failed: {e}"))),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::TimedOut {
                    peer: self.peer.clone(),
                });
            }
            let until = match self.keepalive_due()? {
                Some(next) => next.min(deadline),
                None => deadline,
            };
            self.wait_socket(until)?;
        }
        Err(TransportError::Io {
            peer: self.peer.clone(),
            detail: format!(
                "the socket woke us {MAX_WAKEUPS_PER_CALL} times without data; giving up on this session"
            ),
        })
    }

    fn send(&mut self, data: &[u8]) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.send_timeout;
        let mut sent = 0;
        for _ in 0..MAX_WAKEUPS_PER_CALL {
            if sent == data.len() {
                return Ok(());
            }
            match self.channel.write(&data[sent..]) {
                Ok(n) => {
                    sent += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.stream_error(&format!("write failed: {e}"))),
            }
            if Instant::now() >= deadline {
                return Err(TransportError::Io {
                    peer: self.peer.clone(),
                    detail: format!(
                        "the device took none of our input for {:?} (command_timeout); it is stuck or the link is down",
                        self.send_timeout
                    ),
                });
            }
            self.wait_socket(deadline)?;
        }
        Err(TransportError::Io {
            peer: self.peer.clone(),
            detail: format!(
                "the socket woke us {MAX_WAKEUPS_PER_CALL} times without taking data; giving up on this session"
            ),
        })
    }

    fn peer(&self) -> &str {
        &self.peer
    }
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        // SSH_MSG_DISCONNECT ends the channel with the connection (RFC 4253 11.1) and wants
        // no answer. Closing the channel first would wait a round trip for the server's own
        // CLOSE, which OpenSSH sends only once the shell has exited: the device's answer to
        // `exit`, which a network session need not wait for (see `Session::close`).
        // Blocking with a short timeout: a goodbye must not hold a worker hostage.
        self.session.set_blocking(true);
        if arm(&self.session, Instant::now() + CLOSE_BUDGET, CLOSE_BUDGET).is_ok() {
            let _ = self
                .session
                .disconnect(None, "rackhand: collection done", None);
        }
        // With the socket shut, freeing the channel (right after this) fails to send its
        // CLOSE at once instead of waiting for the server's.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------
// Connecting

/// One connection being opened: what every step needs and the one deadline they share.
struct Opening<'a> {
    device: &'a Device,
    deadline: Instant,
    peer: String,
    /// The name `known_hosts` files the host under (`[host]:port` off port 22).
    known_as: String,
}

impl Opening<'_> {
    fn fail(&self, detail: String) -> TransportError {
        TransportError::Connect {
            peer: self.peer.clone(),
            detail,
        }
    }

    /// Gives the next step what is left of the deadline.
    fn arm(&self, session: &Session) -> Result<(), TransportError> {
        arm(session, self.deadline, self.device.connect_timeout)
            .map_err(|e| self.fail(e.to_string()))
    }

    /// A session with our algorithm offer, and the `known_hosts` to check its key against
    /// (`None` with `host_key_check = "off"`); nothing has gone on the wire yet.
    fn prepare(&self) -> Result<(Session, Option<KnownHosts>, Offer), TransportError> {
        let device = self.device;
        let session = Session::new().map_err(|e| {
            self.fail(format!(
                "cannot create an SSH session (out of memory?): {e}"
            ))
        })?;
        let known = match device.ssh.host_key_check {
            HostKeyCheck::Off => None,
            _ => Some(
                KnownHosts::load(&session, &device.ssh.known_hosts)
                    .map_err(|e| self.fail(e.to_string()))?,
            ),
        };
        let known_types = known
            .as_ref()
            .map(|k| k.key_types_for(&self.known_as))
            .unwrap_or_default();
        let offer = Offer::build(&session, &device.ssh, &known_types)
            .map_err(|e| self.fail(format!("{e} (device `{}`)", device.name)))?;
        offer
            .apply(&session)
            .map_err(|e| self.fail(e.to_string()))?;
        Ok((session, known, offer))
    }

    /// Resolves `host` and connects to the first address that answers.
    fn reach(
        &self,
        resolver: &Arc<dyn Resolve>,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, SocketAddr), TransportError> {
        let budget = self.device.connect_timeout;
        let addrs =
            resolve::resolve(resolver, host, port, self.deadline, budget).map_err(|source| {
                TransportError::Resolve {
                    peer: self.peer.clone(),
                    source,
                }
            })?;
        let (tcp, addr) =
            connect_tcp(&addrs, self.deadline, budget).map_err(|e| self.fail(e.to_string()))?;
        // Interactive traffic: one keystroke must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        Ok((tcp, addr))
    }

    fn handshake(
        &self,
        session: &mut Session,
        addr: SocketAddr,
        offer: &Offer,
    ) -> Result<(), TransportError> {
        self.arm(session)?;
        session.handshake().map_err(|e| {
            self.fail(explain_handshake_failure(
                &e,
                addr,
                self.deadline,
                offer,
                self.device,
            ))
        })
    }

    /// Checks the host key; a key not trusted ends the session with a DISCONNECT.
    fn verify_key(
        &self,
        session: &Session,
        known: Option<&KnownHosts>,
    ) -> Result<(), TransportError> {
        let Some(known) = known else {
            return Ok(());
        };
        let mode = self.device.ssh.host_key_check;
        known
            .verify(session, &self.known_as, mode, &self.peer)
            .inspect_err(|_| {
                let _ = session.disconnect(
                    Some(ssh2::DisconnectCode::HostKeyNotVerifiable),
                    "host key not verified",
                    None,
                );
            })
    }

    fn open_channel(&self, session: &Session) -> Result<Channel, TransportError> {
        self.arm(session)?;
        open_shell(session).map_err(|e| {
            if is_timeout(&e) {
                self.fail(format!(
                    "no shell within connect_timeout ({:?}): {e}",
                    self.device.connect_timeout
                ))
            } else {
                self.fail(format!(
                    "logged in but the server refused a shell on a pty: {e}; check that the account may open an interactive session"
                ))
            }
        })
    }
}

/// The connection's deadline passed before the session was ready.
#[derive(Debug, thiserror::Error)]
#[error(
    "connect_timeout ({budget:?}) used up before the session was ready; raise connect_timeout if the device is slow"
)]
struct DeadlineSpent {
    budget: Duration,
}

/// Sets the session's per-call timeout to what is left until `deadline`.
fn arm(session: &Session, deadline: Instant, budget: Duration) -> Result<(), DeadlineSpent> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(DeadlineSpent { budget });
    }
    session.set_timeout(left.as_millis().clamp(1, u32::MAX as u128) as u32);
    Ok(())
}

fn is_timeout(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_TIMEOUT)
}

/// Why one address gave no connection.
#[derive(Debug, thiserror::Error)]
enum AddressFailure {
    #[error("{addr}: not tried, connect_timeout used up")]
    NotTried { addr: SocketAddr },
    #[error("{addr}: no answer within connect_timeout ({budget:?})")]
    NoAnswer { addr: SocketAddr, budget: Duration },
    #[error("{addr}: {source}")]
    Failed {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// No address the host resolved to took the connection; each one's reason, in order.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}; check that the device is up, the port is right and no firewall drops SSH",
    .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
struct Unreachable {
    failures: Vec<AddressFailure>,
}

/// Tries every address the host resolved to, in order, within the deadline.
fn connect_tcp(
    addrs: &[SocketAddr],
    deadline: Instant,
    budget: Duration,
) -> Result<(TcpStream, SocketAddr), Unreachable> {
    let mut failures = Vec::new();
    for &addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(AddressFailure::NotTried { addr });
            continue;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(tcp) => return Ok((tcp, addr)),
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
                failures.push(AddressFailure::NoAnswer { addr, budget })
            }
            Err(source) => failures.push(AddressFailure::Failed { addr, source }),
        }
    }
    Err(Unreachable { failures })
}

/// The shell a collector needs: pty (so the CLI behaves as for a person), stderr merged.
fn open_shell(session: &Session) -> Result<Channel, ssh2::Error> {
    let mut channel = session.channel_session()?;
    channel.handle_extended_data(ExtendedData::Merge)?;
    channel.request_pty("vt100", None, Some((PTY_COLS, PTY_ROWS, 0, 0)))?;
    channel.shell()?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::resolve::tests::assert_connect_fails_at_the_dns_deadline;

    #[test]
    fn a_name_dns_does_not_resolve_in_time_is_connect_failed_at_connect_timeout() {
        assert_connect_fails_at_the_dns_deadline("ssh", SshTransport::connect_with);
    }
}

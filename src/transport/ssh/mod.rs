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

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ssh2::{
    BlockDirections, Channel, ErrorCode, ExtendedData, HashType, KeyboardInteractivePrompt,
    KnownHostFileKind, MethodType, Prompt, Session,
};

use super::resolve::{self, Resolve};
use super::{Transport, TransportError};
use crate::config::Secret;
use crate::inventory::{Device, Endpoint, HostKeyCheck, SshSettings};

/// Wide enough that no device wraps a line of `show` output (wrapping would insert CR/LF
/// into records); 24 rows is what every CLI copes with, paging is turned off by the driver.
const PTY_COLS: u32 = 511;
const PTY_ROWS: u32 = 24;
/// How long `Drop` may spend handing the server its goodbye (it waits for no answer).
const CLOSE_BUDGET: Duration = Duration::from_millis(1000);
/// Safety net against a socket that polls readable forever while libssh2 finds nothing to
/// hand out (it should not happen; if it does we fail loudly instead of spinning).
const MAX_WAKEUPS_PER_CALL: u32 = 100_000;
/// The SSH spec caps a packet at 35000 bytes; a KEXINIT is well below that.
const MAX_PROBE_PACKET: usize = 35_000;
/// Lines a server may send before its `SSH-` banner (RFC 4253 4.2) that the probe reads.
const MAX_PROBE_PREAMBLE: usize = 8 * 1024;

/// The SHA-1 family old switches and routers need, offered after the modern algorithms when
/// a device sets `legacy_ssh = true`, strongest first within each kind.
const LEGACY_KEX: &[&str] = &[
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group-exchange-sha1",
    "diffie-hellman-group1-sha1",
];
const LEGACY_HOST_KEY: &[&str] = &["ssh-rsa", "ssh-dss"];
const LEGACY_CIPHERS: &[&str] = &["aes128-cbc", "aes256-cbc", "3des-cbc"];
const LEGACY_MACS: &[&str] = &["hmac-sha1"];

/// Never offered by default: the legacy family above plus what even old gear rarely needs
/// and that is broken or pointless (MD5, RC4, `none`), and certificates (we pin keys).
const NOT_BY_DEFAULT: &[&str] = &[
    "hmac-sha1-96",
    "hmac-sha1-etm@openssh.com",
    "hmac-md5",
    "hmac-md5-96",
    "hmac-ripemd160",
    "hmac-ripemd160@openssh.com",
    "aes192-cbc",
    "rijndael-cbc@lysator.liu.se",
    "blowfish-cbc",
    "cast128-cbc",
    "arcfour",
    "arcfour128",
    "none",
];

/// Pseudo-algorithms in KEXINIT name-lists (RFC 8308, OpenSSH strict kex). libssh2 adds the
/// client ones itself; they never make a key exchange possible.
fn is_kex_marker(name: &str) -> bool {
    name.starts_with("ext-info-") || name.starts_with("kex-strict-")
}

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
        let deadline = Instant::now() + device.connect_timeout;
        let Endpoint::Net { host, port } = &device.endpoint else {
            return Err(TransportError::Connect {
                peer,
                detail: format!(
                    "device `{}` has no host and port; set transport = \"serial\" or add host = \"...\"",
                    device.name
                ),
            });
        };
        let fail = |detail: String| TransportError::Connect {
            peer: peer.clone(),
            detail,
        };

        let session = Session::new().map_err(|e| {
            fail(format!(
                "cannot create an SSH session (out of memory?): {e}"
            ))
        })?;
        let known = match device.ssh.host_key_check {
            HostKeyCheck::Off => None,
            _ => Some(KnownHosts::load(&session, &device.ssh.known_hosts).map_err(fail)?),
        };
        let lookup = known_hosts_name(host, *port);
        let known_types = known
            .as_ref()
            .map(|k| k.key_types_for(&lookup))
            .unwrap_or_default();
        let offer = Offer::build(&session, &device.ssh, &known_types)
            .map_err(|e| fail(format!("{e} (device `{}`)", device.name)))?;
        offer.apply(&session).map_err(fail)?;

        let addrs = resolve::resolve(resolver, host, *port, deadline, device.connect_timeout)
            .map_err(|source| TransportError::Resolve {
                peer: peer.clone(),
                source,
            })?;
        let (tcp, addr) = connect_tcp(&addrs, deadline, device.connect_timeout).map_err(fail)?;
        let socket = tcp
            .try_clone()
            .map_err(|e| fail(format!("cannot duplicate the socket: {e}")))?;
        // Interactive traffic: one keystroke must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let mut session = session;
        session.set_tcp_stream(tcp);

        arm(&session, deadline, device.connect_timeout).map_err(fail)?;
        if let Err(e) = session.handshake() {
            return Err(fail(explain_handshake_failure(
                &e, addr, deadline, &offer, device,
            )));
        }

        // Before a single credential leaves this machine.
        if let Some(known) = &known {
            let verdict = known.verify(&session, &lookup, device.ssh.host_key_check, &peer);
            if let Err(err) = verdict {
                let _ = session.disconnect(
                    Some(ssh2::DisconnectCode::HostKeyNotVerifiable),
                    "host key not verified",
                    None,
                );
                return Err(err);
            }
        }

        authenticate(&session, device, deadline, &peer)?;

        arm(&session, deadline, device.connect_timeout).map_err(fail)?;
        let channel = open_shell(&session).map_err(|e| {
            if is_timeout(&e) {
                fail(format!(
                    "no shell within connect_timeout ({:?}): {e}",
                    device.connect_timeout
                ))
            } else {
                fail(format!(
                    "logged in but the server refused a shell on a pty: {e}; check that the account may open an interactive session"
                ))
            }
        })?;

        let keepalive_secs = device.ssh.keepalive.as_secs().min(u32::MAX as u64) as u32;
        session.set_keepalive(true, keepalive_secs);
        session.set_blocking(false);
        Ok(SshTransport {
            channel,
            session,
            socket,
            peer,
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

/// Sets the session's per-call timeout to what is left until `deadline`.
fn arm(session: &Session, deadline: Instant, budget: Duration) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(format!(
            "connect_timeout ({budget:?}) used up before the session was ready; raise connect_timeout if the device is slow"
        ));
    }
    session.set_timeout(left.as_millis().clamp(1, u32::MAX as u128) as u32);
    Ok(())
}

fn is_timeout(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(libssh2_sys::LIBSSH2_ERROR_TIMEOUT)
}

/// Tries every address the host resolved to, in order, within the deadline.
fn connect_tcp(
    addrs: &[SocketAddr],
    deadline: Instant,
    budget: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let mut failures = Vec::new();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failures.push(format!("{addr}: not tried, connect_timeout used up"));
            continue;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(tcp) => return Ok((tcp, *addr)),
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock =>
            {
                failures.push(format!(
                    "{addr}: no answer within connect_timeout ({budget:?})"
                ))
            }
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "{}; check that the device is up, the port is right and no firewall drops SSH",
        failures.join("; ")
    ))
}

/// The shell a collector needs: pty (so the CLI behaves as for a person), stderr merged.
fn open_shell(session: &Session) -> Result<Channel, ssh2::Error> {
    let mut channel = session.channel_session()?;
    channel.handle_extended_data(ExtendedData::Merge)?;
    channel.request_pty("vt100", None, Some((PTY_COLS, PTY_ROWS, 0, 0)))?;
    channel.shell()?;
    Ok(channel)
}

// ---------------------------------------------------------------------------------------
// Authentication

struct PasswordPrompter<'a> {
    password: &'a str,
    rounds: u32,
}

impl KeyboardInteractivePrompt for PasswordPrompter<'_> {
    fn prompt<'b>(
        &mut self,
        _user: &str,
        _instructions: &str,
        prompts: &[Prompt<'b>],
    ) -> Vec<String> {
        self.rounds += 1;
        prompts
            .iter()
            .map(|p| {
                // A hidden prompt or one that asks for a password gets the password; the
                // server gives up after its own limit if we keep answering wrong.
                let wants_password = !p.echo || p.text.to_ascii_lowercase().contains("password");
                if wants_password && self.rounds <= 3 {
                    self.password.to_string()
                } else {
                    String::new()
                }
            })
            .collect()
    }
}

fn secret_value<'a>(
    secret: Option<&'a Secret>,
    what: &str,
    device: &Device,
    peer: &str,
) -> Result<&'a str, TransportError> {
    let auth = |detail: String| TransportError::Auth {
        peer: peer.to_string(),
        detail,
    };
    let Some(secret) = secret else {
        return Err(auth(format!(
            "device `{}` has no {what}; set {what}_env, {what}_file or key_file",
            device.name
        )));
    };
    secret.expose().ok_or_else(|| {
        auth(format!(
            "the {what} of device `{}` comes from {}, which is not set in rackhand's environment; set it (systemd: Environment= or EnvironmentFile=) or use {what}_file",
            device.name,
            secret.describe()
        ))
    })
}

fn authenticate(
    session: &Session,
    device: &Device,
    deadline: Instant,
    peer: &str,
) -> Result<(), TransportError> {
    let auth = |detail: String| TransportError::Auth {
        peer: peer.to_string(),
        detail,
    };
    let step_failed = |e: &ssh2::Error, what: String| {
        if is_timeout(e) {
            TransportError::Connect {
                peer: peer.to_string(),
                detail: format!(
                    "no answer to {what} within connect_timeout ({:?}): {e}",
                    device.connect_timeout
                ),
            }
        } else {
            auth(format!("{what} failed: {}", e.message()))
        }
    };
    let Some(user) = device.username.as_deref() else {
        return Err(auth(format!(
            "device `{}` has no username; set username = \"...\" on it, a group or [defaults]",
            device.name
        )));
    };
    let budget = device.connect_timeout;
    let connect = |detail: String| TransportError::Connect {
        peer: peer.to_string(),
        detail,
    };

    arm(session, deadline, budget).map_err(connect)?;
    let methods = match session.auth_methods(user) {
        Ok(list) => list.to_string(),
        // The server let us in with "none" (some consoles do).
        Err(_) if session.authenticated() => return Ok(()),
        Err(e) => {
            return Err(step_failed(
                &e,
                format!("asking which logins user `{user}` may use"),
            ));
        }
    };
    let offers = |m: &str| methods.split(',').any(|x| x == m);

    if let Some(key) = &device.ssh.key_file {
        if !offers("publickey") {
            return Err(auth(format!(
                "the server does not accept keys for `{user}` (it offers: {methods}); remove key_file to log in with a password"
            )));
        }
        check_key_file(key).map_err(auth)?;
        let passphrase = match &device.ssh.key_passphrase {
            Some(_) => Some(secret_value(
                device.ssh.key_passphrase.as_ref(),
                "key_passphrase",
                device,
                peer,
            )?),
            None => None,
        };
        arm(session, deadline, budget).map_err(connect)?;
        return session
            .userauth_pubkey_file(user, None, key, passphrase)
            .map_err(|e| {
                step_failed(
                    &e,
                    format!(
                        "key login as `{user}` with {} (is the public key in the device's authorized keys for `{user}`, and the passphrase right?)",
                        key.display()
                    ),
                )
            });
    }

    let password = secret_value(device.password.as_ref(), "password", device, peer)?;
    arm(session, deadline, budget).map_err(connect)?;
    let source = device
        .password
        .as_ref()
        .map(Secret::describe)
        .unwrap_or_default();
    if offers("password") {
        return session.userauth_password(user, password).map_err(|e| {
            step_failed(
                &e,
                format!("password login as `{user}` (password from {source}); check the username and password"),
            )
        });
    }
    if offers("keyboard-interactive") {
        let mut prompter = PasswordPrompter {
            password,
            rounds: 0,
        };
        session
            .userauth_keyboard_interactive(user, &mut prompter)
            .map_err(|e| {
                step_failed(
                    &e,
                    format!("keyboard-interactive login as `{user}` (password from {source}); check the username and password"),
                )
            })?;
        if session.authenticated() {
            return Ok(());
        }
        return Err(auth(format!(
            "keyboard-interactive login as `{user}` did not complete; check the username and password"
        )));
    }
    Err(auth(format!(
        "the server offers no password login for `{user}` (it offers: {methods}); set key_file"
    )))
}

fn check_key_file(path: &Path) -> Result<(), String> {
    fs::File::open(path).map(drop).map_err(|e| {
        format!(
            "cannot read key_file {}: {e}; check the path and that rackhand's user may read it",
            path.display()
        )
    })
}

// ---------------------------------------------------------------------------------------
// Algorithms

/// What we offer, per kind, in order of preference.
#[derive(Debug, Clone)]
struct Offer {
    kex: Vec<String>,
    host_key: Vec<String>,
    ciphers: Vec<String>,
    macs: Vec<String>,
}

/// The kinds we set preferences for: (libssh2 kind, config key, legacy additions).
fn kinds() -> [(MethodType, &'static str, &'static [&'static str]); 4] {
    [
        (MethodType::Kex, "kex", LEGACY_KEX),
        (MethodType::HostKey, "host_key_algorithms", LEGACY_HOST_KEY),
        (MethodType::CryptCs, "ciphers", LEGACY_CIPHERS),
        (MethodType::MacCs, "macs", LEGACY_MACS),
    ]
}

impl Offer {
    /// Modern defaults (+ the legacy family for `legacy_ssh`), or the device's explicit
    /// lists, checked against what this libssh2 supports. Host key algorithms whose key type
    /// `known_hosts` already holds for the host go first, as OpenSSH does, so a host known by
    /// its RSA key is not reported as changed because it also has an Ed25519 key.
    fn build(
        session: &Session,
        ssh: &SshSettings,
        known_types: &[String],
    ) -> Result<Offer, String> {
        let mut lists = Vec::with_capacity(4);
        for (kind, key, legacy) in kinds() {
            let supported = session
                .supported_algs(kind)
                .map_err(|e| format!("libssh2 cannot list its {key}: {e}"))?;
            let explicit = match kind {
                MethodType::Kex => &ssh.kex,
                MethodType::HostKey => &ssh.host_key_algorithms,
                MethodType::CryptCs => &ssh.ciphers,
                _ => &ssh.macs,
            };
            let list = if explicit.is_empty() {
                let mut list: Vec<String> = supported
                    .iter()
                    .filter(|a| {
                        !is_kex_marker(a)
                            && !a.ends_with("-cert-v01@openssh.com")
                            && !NOT_BY_DEFAULT.contains(a)
                            && !LEGACY_KEX.contains(a)
                            && !LEGACY_HOST_KEY.contains(a)
                            && !LEGACY_CIPHERS.contains(a)
                            && !LEGACY_MACS.contains(a)
                    })
                    .map(|a| a.to_string())
                    .collect();
                if ssh.legacy {
                    list.extend(
                        legacy
                            .iter()
                            .filter(|a| supported.contains(a))
                            .map(|a| a.to_string()),
                    );
                }
                list
            } else {
                let unknown: Vec<&str> = explicit
                    .iter()
                    .map(String::as_str)
                    .filter(|a| !supported.contains(a))
                    .collect();
                if !unknown.is_empty() {
                    return Err(format!(
                        "`{key}` names {} that this rackhand's libssh2 does not support; it supports: {}",
                        unknown.join(", "),
                        supported
                            .iter()
                            .filter(|a| !is_kex_marker(a))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                explicit.clone()
            };
            lists.push(list);
        }
        let mut offer = Offer {
            macs: lists.pop().unwrap_or_default(),
            ciphers: lists.pop().unwrap_or_default(),
            host_key: lists.pop().unwrap_or_default(),
            kex: lists.pop().unwrap_or_default(),
        };
        if !known_types.is_empty() {
            let (first, rest): (Vec<String>, Vec<String>) = offer
                .host_key
                .into_iter()
                .partition(|a| known_types.iter().any(|t| t == key_type_of_algorithm(a)));
            offer.host_key = first.into_iter().chain(rest).collect();
        }
        Ok(offer)
    }

    fn apply(&self, session: &Session) -> Result<(), String> {
        let set = |kind: MethodType, key: &str, list: &[String]| {
            session
                .method_pref(kind, &list.join(","))
                .map_err(|e| format!("libssh2 refused our {key} list {list:?}: {e}"))
        };
        set(MethodType::Kex, "kex", &self.kex)?;
        set(MethodType::HostKey, "host_key_algorithms", &self.host_key)?;
        set(MethodType::CryptCs, "ciphers", &self.ciphers)?;
        set(MethodType::CryptSc, "ciphers", &self.ciphers)?;
        set(MethodType::MacCs, "macs", &self.macs)?;
        set(MethodType::MacSc, "macs", &self.macs)
    }
}

/// The key type (as in `known_hosts`) a host key algorithm signs with.
fn key_type_of_algorithm(alg: &str) -> &str {
    match alg {
        "rsa-sha2-256" | "rsa-sha2-512" => "ssh-rsa",
        other => other,
    }
}

/// Ciphers that authenticate themselves: with them the MAC list does not matter.
fn is_aead(cipher: &str) -> bool {
    cipher.contains("-gcm@") || cipher.starts_with("chacha20-poly1305")
}

/// What a server offers in its KEXINIT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServerOffer {
    banner: String,
    kex: Vec<String>,
    host_key: Vec<String>,
    ciphers_cs: Vec<String>,
    ciphers_sc: Vec<String>,
    macs_cs: Vec<String>,
    macs_sc: Vec<String>,
}

/// Turns a failed handshake into a message a field engineer can act on.
fn explain_handshake_failure(
    e: &ssh2::Error,
    addr: SocketAddr,
    deadline: Instant,
    offer: &Offer,
    device: &Device,
) -> String {
    if is_timeout(e) {
        return format!(
            "no SSH handshake within connect_timeout ({:?}): {addr} accepts TCP but the server did not complete the handshake; check that it is an SSH port and not overloaded",
            device.connect_timeout
        );
    }
    match probe_server_offer(addr, deadline) {
        Ok(server) => match explain_mismatch(&server, offer, &device.ssh, &device.name) {
            Some(why) => format!("no common algorithms with {} ({why})", server.banner),
            None => format!(
                "SSH handshake failed: {} (the server, {}, shares algorithms with us, so this is not a negotiation problem)",
                e.message(),
                server.banner
            ),
        },
        Err(probe) => format!(
            "SSH handshake failed: {}; we offered kex {}, host keys {}, ciphers {}, macs {} (could not read the server's offer: {probe})",
            e.message(),
            offer.kex.join(","),
            offer.host_key.join(","),
            offer.ciphers.join(","),
            offer.macs.join(",")
        ),
    }
}

/// One kind of algorithm to compare with the server.
struct Check<'a> {
    label: &'static str,
    key: &'static str,
    legacy: &'static [&'static str],
    ours: &'a [String],
    theirs: &'a [String],
    /// Whether our list is the built-in default (not the device's explicit list).
    default: bool,
}

/// Names every kind with nothing in common and the setting that fixes it; `None` when every
/// kind has a common algorithm.
fn explain_mismatch(
    server: &ServerOffer,
    offer: &Offer,
    ssh: &SshSettings,
    device: &str,
) -> Option<String> {
    let common = |ours: &[String], theirs: &[String]| ours.iter().any(|a| theirs.contains(a));
    let first_common =
        |ours: &[String], theirs: &[String]| ours.iter().find(|a| theirs.contains(a)).cloned();
    let server_kex: Vec<String> = server
        .kex
        .iter()
        .filter(|a| !is_kex_marker(a))
        .cloned()
        .collect();
    let cipher_cs = first_common(&offer.ciphers, &server.ciphers_cs);
    let cipher_sc = first_common(&offer.ciphers, &server.ciphers_sc);
    // Name the direction that fails (they are the same list on every server we know).
    let ciphers_theirs = if cipher_cs.is_none() {
        &server.ciphers_cs
    } else {
        &server.ciphers_sc
    };
    let macs_theirs = if common(&offer.macs, &server.macs_cs) {
        &server.macs_sc
    } else {
        &server.macs_cs
    };
    let mut checks = vec![
        Check {
            label: "key exchange",
            key: "kex",
            legacy: LEGACY_KEX,
            ours: &offer.kex,
            theirs: &server_kex,
            default: ssh.kex.is_empty(),
        },
        Check {
            label: "host key",
            key: "host_key_algorithms",
            legacy: LEGACY_HOST_KEY,
            ours: &offer.host_key,
            theirs: &server.host_key,
            default: ssh.host_key_algorithms.is_empty(),
        },
        Check {
            label: "cipher",
            key: "ciphers",
            legacy: LEGACY_CIPHERS,
            ours: &offer.ciphers,
            theirs: ciphers_theirs,
            default: ssh.ciphers.is_empty(),
        },
    ];
    // Only an AEAD cipher agreed in both directions makes the MAC lists irrelevant; with no
    // cipher in common yet, the MAC must fit too for the suggested fix to work.
    let aead = |c: &Option<String>| c.as_deref().is_some_and(is_aead);
    if !(aead(&cipher_cs) && aead(&cipher_sc)) {
        checks.push(Check {
            label: "MAC",
            key: "macs",
            legacy: LEGACY_MACS,
            ours: &offer.macs,
            theirs: macs_theirs,
            default: ssh.macs.is_empty(),
        });
    }

    let failing: Vec<&Check> = checks
        .iter()
        .filter(|c| !common(c.ours, c.theirs))
        .collect();
    if failing.is_empty() {
        return None;
    }
    let problems: Vec<String> = failing
        .iter()
        .map(|c| {
            format!(
                "{}: server offers only {}; we offer {}",
                c.label,
                c.theirs.join(", "),
                c.ours.join(", ")
            )
        })
        .collect();
    let legacy_fixes = !ssh.legacy
        && failing
            .iter()
            .all(|c| c.default && c.legacy.iter().any(|a| c.theirs.iter().any(|t| t == a)));
    let fix = if legacy_fixes {
        format!("set legacy_ssh = true on device `{device}` (the server needs the SHA-1 family)")
    } else {
        let keys: Vec<String> = failing
            .iter()
            .map(|c| format!("`{} = [...]`", c.key))
            .collect();
        format!(
            "add one of the server's algorithms to {} on device `{device}` (explicit lists replace the defaults)",
            keys.join(", ")
        )
    };
    Some(format!("{}; {fix}", problems.join("; ")))
}

/// Reads the server's banner and KEXINIT on a fresh connection. Both are sent in the clear
/// before any key exchange, so this needs no cryptography and is what the server really
/// offers, whatever libssh2 made of it.
fn probe_server_offer(addr: SocketAddr, deadline: Instant) -> Result<ServerOffer, String> {
    let left = |what: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(format!("connect_timeout used up before {what}"))
        } else {
            Ok(left)
        }
    };
    let mut tcp = TcpStream::connect_timeout(&addr, left("reconnecting")?)
        .map_err(|e| format!("reconnect to {addr}: {e}"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut read_more =
        |tcp: &mut TcpStream, buf: &mut Vec<u8>, what: &str| -> Result<(), String> {
            tcp.set_read_timeout(Some(left(what)?))
                .map_err(|e| e.to_string())?;
            match tcp.read(&mut chunk) {
                Ok(0) => Err(format!("the server closed the connection before {what}")),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(())
                }
                Err(e) => Err(format!("reading {what}: {e}")),
            }
        };

    // Banner: lines until one starts with "SSH-" (servers may send text first).
    let (banner, rest) = loop {
        if let Some(found) = find_banner(&buf) {
            break found;
        }
        if buf.len() > MAX_PROBE_PREAMBLE {
            return Err(format!(
                "no SSH banner in the first {MAX_PROBE_PREAMBLE} bytes"
            ));
        }
        read_more(&mut tcp, &mut buf, "the SSH banner")?;
    };
    tcp.set_write_timeout(Some(left("sending our banner")?))
        .map_err(|e| e.to_string())?;
    tcp.write_all(b"SSH-2.0-rackhand_probe\r\n")
        .map_err(|e| format!("sending our banner: {e}"))?;
    let mut packet = rest;
    let payload = loop {
        if let Some(payload) = parse_packet(&packet)? {
            break payload;
        }
        read_more(&mut tcp, &mut packet, "the server's KEXINIT")?;
    };
    parse_kexinit(&payload, banner)
}

/// Splits off the `SSH-` line; returns it and the bytes after it.
fn find_banner(buf: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        if line.starts_with(b"SSH-") {
            let text = String::from_utf8_lossy(line).trim_end().to_string();
            return Some((text, buf[start + nl + 1..].to_vec()));
        }
        start += nl + 1;
    }
    None
}

/// One unencrypted binary packet (RFC 4253 6): `Ok(None)` until it is complete.
fn parse_packet(buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(5..=MAX_PROBE_PACKET).contains(&len) {
        return Err(format!(
            "the server sent a packet of {len} bytes, not a KEXINIT"
        ));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let padding = buf[4] as usize;
    if padding + 1 > len {
        return Err("the server's first packet is malformed".into());
    }
    Ok(Some(buf[5..4 + len - padding].to_vec()))
}

/// SSH_MSG_KEXINIT (RFC 4253 7.1): type 20, 16-byte cookie, then ten name-lists.
fn parse_kexinit(payload: &[u8], banner: String) -> Result<ServerOffer, String> {
    if payload.first() != Some(&20) || payload.len() < 17 {
        return Err(format!(
            "the server's first packet is type {:?}, not KEXINIT",
            payload.first()
        ));
    }
    let mut at = 17;
    let mut lists = Vec::with_capacity(6);
    for _ in 0..6 {
        let Some(len_bytes) = payload.get(at..at + 4) else {
            return Err("the server's KEXINIT is cut short".into());
        };
        let len =
            u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        at += 4;
        let Some(names) = payload.get(at..at + len) else {
            return Err("the server's KEXINIT is cut short".into());
        };
        at += len;
        let names = String::from_utf8_lossy(names);
        lists.push(
            names
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        );
    }
    let mut lists = lists.into_iter();
    let mut next = || lists.next().unwrap_or_default();
    Ok(ServerOffer {
        banner,
        kex: next(),
        host_key: next(),
        ciphers_cs: next(),
        ciphers_sc: next(),
        macs_cs: next(),
        macs_sc: next(),
    })
}

// ---------------------------------------------------------------------------------------
// Host keys

/// The name OpenSSH files a host under: `host` for port 22, `[host]:port` otherwise (and
/// only that: a key known for port 22 says nothing about another sshd on port 2222).
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// One usable line of a `known_hosts` file.
struct Entry {
    line: usize,
    key_type: String,
    key_b64: String,
    /// libssh2 holding this line alone: it does the host matching, hashed names included.
    /// `None` for `@revoked` lines, which apply to every host: a revoked key is refused
    /// wherever it shows up (libssh2 cannot match the usual `*` pattern anyway).
    db: Option<ssh2::KnownHosts>,
}

/// A `known_hosts` file, parsed line by line so that one line libssh2 cannot read (a key
/// type it does not know, a certificate authority) does not make the whole file unusable.
struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// A missing file is an empty one (accept-new creates it on first use).
    fn load(session: &Session, path: &Path) -> Result<KnownHosts, String> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(format!(
                    "cannot read known_hosts {}: {e}; fix its permissions or point known_hosts elsewhere",
                    path.display()
                ));
            }
        };
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields: Vec<&str> = line.split_whitespace().collect();
            let revoked = fields.first() == Some(&"@revoked");
            if fields.first().is_some_and(|f| f.starts_with('@')) {
                if !revoked {
                    // @cert-authority: we pin keys, we do not trust CAs.
                    continue;
                }
                fields.remove(0);
            }
            if fields.len() < 3 {
                log::warn!(
                    "{}:{}: not a known_hosts line (want: hosts keytype key); ignored",
                    path.display(),
                    index + 1
                );
                continue;
            }
            let db = if revoked {
                None
            } else {
                let mut db = session
                    .known_hosts()
                    .map_err(|e| format!("cannot set up host key checking: {e}"))?;
                let plain = fields[..3].join(" ");
                if let Err(e) = db.read_str(&plain, KnownHostFileKind::OpenSSH) {
                    log::debug!(
                        "{}:{}: libssh2 cannot use this line ({}); ignored",
                        path.display(),
                        index + 1,
                        e.message()
                    );
                    continue;
                }
                Some(db)
            };
            entries.push(Entry {
                line: index + 1,
                key_type: fields[1].to_string(),
                key_b64: fields[2].to_string(),
                db,
            });
        }
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Entries whose host pattern (plain or hashed) matches `name`.
    fn for_host<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        // A one-byte key never equals a real one: libssh2 answers Mismatch exactly when the
        // host matches and NotFound when it does not.
        self.entries.iter().filter(move |e| {
            e.db.as_ref()
                .is_some_and(|db| !matches!(db.check(name, b"\0"), ssh2::CheckResult::NotFound))
        })
    }

    fn key_types_for(&self, name: &str) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for e in self.for_host(name) {
            if !types.contains(&e.key_type) {
                types.push(e.key_type.clone());
            }
        }
        types
    }

    /// Checks the server's key; with accept-new, records a host seen for the first time.
    fn verify(
        &self,
        session: &Session,
        name: &str,
        mode: HostKeyCheck,
        peer: &str,
    ) -> Result<(), TransportError> {
        let file = self.path.display().to_string();
        let connect = |detail: String| TransportError::Connect {
            peer: peer.to_string(),
            detail,
        };
        let Some((key, _)) = session.host_key() else {
            return Err(connect("the server sent no host key".into()));
        };
        let key_type = blob_key_type(key).unwrap_or("unknown");
        let key_b64 = base64(key);
        let fingerprint = session
            .host_key_hash(HashType::Sha256)
            .map(|h| format!("SHA256:{}", base64(h).trim_end_matches('=')))
            .unwrap_or_else(|| "?".into());
        let presented = format!("{key_type} {fingerprint}");

        let same_key = |e: &Entry| e.key_type == key_type && e.key_b64 == key_b64;
        if let Some(e) = self.entries.iter().find(|e| e.db.is_none() && same_key(e)) {
            return Err(TransportError::HostKeyMismatch {
                peer: peer.into(),
                known_hosts: file,
                detail: format!(
                    "the server's key ({presented}) is marked @revoked on line {}; the device must get a new key",
                    e.line
                ),
            });
        }
        let mut same_type_differs = None;
        let mut other_types = Vec::new();
        for e in self.for_host(name) {
            if same_key(e) {
                return Ok(());
            }
            if e.key_type == key_type {
                same_type_differs.get_or_insert(e.line);
            } else {
                other_types.push(format!("{} (line {})", e.key_type, e.line));
            }
        }
        if let Some(line) = same_type_differs {
            return Err(TransportError::HostKeyMismatch {
                peer: peer.into(),
                known_hosts: file,
                detail: format!(
                    "the server presented {presented}, line {line} holds a different {key_type} key for {name}; nothing was sent"
                ),
            });
        }
        if !other_types.is_empty() {
            return Err(TransportError::HostKeyMismatch {
                peer: peer.into(),
                known_hosts: file,
                detail: format!(
                    "the server presented {presented} but {name} is known by {}; it no longer offers that key type",
                    other_types.join(", ")
                ),
            });
        }
        match mode {
            HostKeyCheck::Strict => Err(connect(format!(
                "host key {presented} of {name} is not in {file} and host_key_check = \"strict\"; verify it and add it (ssh-keyscan -p PORT HOST >> {file}) or use host_key_check = \"accept-new\""
            ))),
            HostKeyCheck::AcceptNew => {
                append_known_host(&self.path, &format!("{name} {key_type} {key_b64}")).map_err(
                    |e| {
                        connect(format!(
                            "cannot record the new host key of {name} in {file}: {e}; make the file and its folder writable for rackhand"
                        ))
                    },
                )?;
                log::info!("{peer}: first contact, recorded host key {presented} in {file}");
                Ok(())
            }
            HostKeyCheck::Off => Ok(()),
        }
    }
}

/// Appends one line; creates the folder (0700) and the file (0600) if needed. One `write`
/// on an `O_APPEND` file, so workers recording different hosts at once do not interleave.
fn append_known_host(path: &Path, line: &str) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // A file edited by hand may lack its final newline.
    let needs_newline = fs::metadata(path)?.len() > 0 && !ends_with_newline(path)?;
    let mut text = String::with_capacity(line.len() + 2);
    if needs_newline {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    file.write_all(text.as_bytes())
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// The key type at the start of an SSH public key blob (`string` type name).
fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

/// Standard base64 with padding, as in `known_hosts`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::resolve::tests::assert_connect_fails_at_the_dns_deadline;

    #[test]
    fn a_name_dns_does_not_resolve_in_time_is_connect_failed_at_connect_timeout() {
        assert_connect_fails_at_the_dns_deadline("ssh", SshTransport::connect_with);
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn a_non_default_port_is_filed_in_brackets_like_openssh_does() {
        assert_eq!(known_hosts_name("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_name("10.0.0.1", 2222), "[10.0.0.1]:2222");
        assert_eq!(known_hosts_name("::1", 2222), "[::1]:2222");
    }

    /// A KEXINIT as OpenSSH sends it, built by hand.
    fn kexinit(lists: [&str; 10]) -> Vec<u8> {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[7u8; 16]);
        for list in lists {
            payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
            payload.extend_from_slice(list.as_bytes());
        }
        payload.extend_from_slice(&[0, 0, 0, 0, 0]);
        let padding = 8 - (payload.len() + 5) % 8 + 4;
        let mut packet = ((payload.len() + padding + 1) as u32)
            .to_be_bytes()
            .to_vec();
        packet.push(padding as u8);
        packet.extend_from_slice(&payload);
        packet.extend(std::iter::repeat_n(0u8, padding));
        packet
    }

    fn old_switch() -> ServerOffer {
        let wire = kexinit([
            "diffie-hellman-group14-sha1,kex-strict-s-v00@openssh.com",
            "ssh-rsa",
            "aes128-cbc",
            "aes128-cbc",
            "hmac-sha1",
            "hmac-sha1",
            "none",
            "none",
            "",
            "",
        ]);
        let mut buf = b"Welcome\r\nSSH-2.0-Cisco-1.25\r\n".to_vec();
        buf.extend_from_slice(&wire);
        let (banner, rest) = find_banner(&buf).expect("banner");
        assert_eq!(banner, "SSH-2.0-Cisco-1.25");
        // Byte by byte: the parser must wait for the whole packet, never misread a part.
        for cut in 0..rest.len() {
            assert_eq!(parse_packet(&rest[..cut]).unwrap(), None, "cut at {cut}");
        }
        let payload = parse_packet(&rest).unwrap().expect("complete packet");
        parse_kexinit(&payload, banner).unwrap()
    }

    fn modern_offer() -> Offer {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Offer {
            kex: s(&["curve25519-sha256", "diffie-hellman-group14-sha256"]),
            host_key: s(&["ssh-ed25519", "rsa-sha2-512"]),
            ciphers: s(&["aes256-gcm@openssh.com", "aes128-ctr"]),
            macs: s(&["hmac-sha2-256"]),
        }
    }

    fn settings(legacy: bool) -> SshSettings {
        SshSettings {
            key_file: None,
            key_passphrase: None,
            host_key_check: HostKeyCheck::Strict,
            known_hosts: PathBuf::from("/nonexistent"),
            legacy,
            kex: vec![],
            host_key_algorithms: vec![],
            ciphers: vec![],
            macs: vec![],
            keepalive: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_sha1_only_server_is_explained_with_every_missing_kind_and_the_fix() {
        let server = old_switch();
        assert_eq!(server.host_key, vec!["ssh-rsa".to_string()]);
        let why = explain_mismatch(&server, &modern_offer(), &settings(false), "sw1").unwrap();
        for needle in [
            "key exchange: server offers only diffie-hellman-group14-sha1;",
            "host key: server offers only ssh-rsa;",
            "cipher: server offers only aes128-cbc;",
            "MAC: server offers only hmac-sha1;",
            "set legacy_ssh = true on device `sw1`",
        ] {
            assert!(why.contains(needle), "missing {needle:?} in {why}");
        }
        assert!(
            !why.contains("kex-strict"),
            "markers are not algorithms: {why}"
        );
    }

    #[test]
    fn a_server_sharing_our_algorithms_is_not_called_a_mismatch() {
        let mut server = old_switch();
        server.kex.push("curve25519-sha256".into());
        server.host_key.push("ssh-ed25519".into());
        server.ciphers_cs.push("aes256-gcm@openssh.com".into());
        server.ciphers_sc.push("aes256-gcm@openssh.com".into());
        // An AEAD cipher in common: the MAC lists no longer matter.
        assert_eq!(
            explain_mismatch(&server, &modern_offer(), &settings(false), "sw1"),
            None
        );
    }

    #[test]
    fn explicit_lists_get_a_different_fix_than_legacy() {
        let server = old_switch();
        let mut ssh = settings(false);
        ssh.kex = vec!["curve25519-sha256".into()];
        let why = explain_mismatch(&server, &modern_offer(), &ssh, "sw1").unwrap();
        assert!(why.contains("`kex = [...]`"), "{why}");
        assert!(!why.contains("legacy_ssh"), "{why}");
    }

    #[test]
    fn default_offer_leaves_sha1_out_and_legacy_appends_it_last() {
        let session = Session::new().unwrap();
        let modern = Offer::build(&session, &settings(false), &[]).unwrap();
        for alg in LEGACY_KEX
            .iter()
            .chain(LEGACY_HOST_KEY)
            .chain(LEGACY_CIPHERS)
            .chain(LEGACY_MACS)
        {
            let all = [&modern.kex, &modern.host_key, &modern.ciphers, &modern.macs];
            assert!(
                !all.iter().any(|l| l.iter().any(|a| a == alg)),
                "{alg} offered by default: {modern:?}"
            );
        }
        assert!(modern.kex.iter().all(|a| !is_kex_marker(a)));
        let legacy = Offer::build(&session, &settings(true), &[]).unwrap();
        assert_eq!(&legacy.kex[..modern.kex.len()], &modern.kex[..]);
        assert_eq!(
            legacy.kex.last().map(String::as_str),
            Some("diffie-hellman-group1-sha1")
        );
        assert!(legacy.host_key.iter().any(|a| a == "ssh-rsa"));
        assert!(legacy.macs.iter().any(|a| a == "hmac-sha1"));
        legacy.apply(&session).unwrap();
    }

    #[test]
    fn known_key_types_go_first_and_unknown_explicit_names_are_refused() {
        let session = Session::new().unwrap();
        let offer = Offer::build(&session, &settings(false), &["ssh-rsa".to_string()]).unwrap();
        assert_eq!(
            key_type_of_algorithm(&offer.host_key[0]),
            "ssh-rsa",
            "{:?}",
            offer.host_key
        );
        let mut ssh = settings(false);
        ssh.ciphers = vec!["aes128-ctr".into(), "rot13-cbc".into()];
        let err = Offer::build(&session, &ssh, &[]).unwrap_err();
        assert!(err.contains("`ciphers` names rot13-cbc"), "{err}");
    }
}

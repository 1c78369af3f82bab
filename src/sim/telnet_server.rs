//! A rack of simulated devices reachable over Telnet, one listening port per device.
//!
//! Telnet is how much old gear and every terminal server is reached, and a rack of N devices
//! on N consecutive loopback ports is what the agent's worker pool, its per-device
//! serialisation and the benchmarks are tested against. Threads are per connection (bounded
//! by [`MAX_CONNECTIONS`]); one [`StopSignal`] wakes the accept loop and every session so
//! `stop` returns promptly with nothing left blocked.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::engine::Engine;
use super::profile::Profile;
use super::session::{self, Counting, Link, StopSignal};
use super::stats::Stats;
use super::{SimError, device_hostname};
use crate::telnet_protocol::{self as proto, Event, Item, Negotiator, Parser, Verb};

/// Connections served at once over the whole rack; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Attempts at finding `count` free consecutive ports when port 0 is asked for.
const PORT_ATTEMPTS: usize = 64;

/// N simulated devices on consecutive ports; stopped (threads joined, sockets closed) on
/// [`TelnetRack::stop`] or drop.
pub struct TelnetRack {
    addrs: Vec<(String, SocketAddr)>,
    stats: Arc<Stats>,
    stop: Arc<StopSignal>,
    acceptor: Option<JoinHandle<()>>,
}

impl TelnetRack {
    /// Listens for `count` devices on `bind`'s IP, ports `bind.port()` .. `+count`; port 0
    /// picks free consecutive ports.
    pub fn start(bind: SocketAddr, count: usize, profile: Profile) -> Result<TelnetRack, SimError> {
        if count == 0 {
            return Err(SimError::NoDevices);
        }
        let listeners = bind_consecutive(bind, count)?;
        let mut addrs = Vec::with_capacity(count);
        for (i, l) in listeners.iter().enumerate() {
            let addr = l.local_addr().map_err(|e| SimError::Bind {
                addr: bind,
                source: e,
            })?;
            l.set_nonblocking(true)
                .map_err(|e| SimError::Bind { addr, source: e })?;
            addrs.push((device_hostname(&profile.hostname, i, count), addr));
        }
        let stats = Stats::new(count);
        let stop =
            StopSignal::new().map_err(|e| SimError::io("cannot create the rack's stop pipe", e))?;
        let acceptor = {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            let names: Vec<String> = addrs.iter().map(|(n, _)| n.clone()).collect();
            let profile = Arc::new(profile);
            std::thread::Builder::new()
                .name("sim-telnet-accept".into())
                .spawn(move || accept_loop(listeners, names, profile, stats, stop))
                .map_err(|e| SimError::io("cannot start the rack's accept thread", e))?
        };
        Ok(TelnetRack {
            addrs,
            stats,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// `(hostname, address)` of every device, in port order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        self.addrs.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Ends every session and the listeners, and waits for their threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.stop();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for TelnetRack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind_consecutive(bind: SocketAddr, count: usize) -> Result<Vec<TcpListener>, SimError> {
    let bind_one = |port: u16| {
        let addr = SocketAddr::new(bind.ip(), port);
        TcpListener::bind(addr).map_err(|e| SimError::Bind { addr, source: e })
    };
    let range_from = |first: TcpListener, base: u16| -> Result<Vec<TcpListener>, SimError> {
        let mut all = vec![first];
        for i in 1..count {
            let port = u16::try_from(usize::from(base) + i).map_err(|_| SimError::Bind {
                addr: bind,
                source: std::io::Error::other("port range runs past 65535"),
            })?;
            all.push(bind_one(port)?);
        }
        Ok(all)
    };
    if bind.port() != 0 {
        return range_from(bind_one(bind.port())?, bind.port());
    }
    for _ in 0..PORT_ATTEMPTS {
        let first = bind_one(0)?;
        let base = first
            .local_addr()
            .map_err(|e| SimError::Bind {
                addr: bind,
                source: e,
            })?
            .port();
        if let Ok(all) = range_from(first, base) {
            return Ok(all);
        }
    }
    Err(SimError::NoConsecutivePorts {
        ip: bind.ip(),
        count,
        attempts: PORT_ATTEMPTS,
    })
}

fn accept_loop(
    listeners: Vec<TcpListener>,
    names: Vec<String>,
    profile: Arc<Profile>,
    stats: Arc<Stats>,
    stop: Arc<StopSignal>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    // Bounded by `stop`: every round blocks in poll until a connection or the stop signal.
    while !stop.is_stopped() {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(stop.fd(), PollFlags::POLLIN));
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready: Vec<usize> = fds[..listeners.len()]
            .iter()
            .enumerate()
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        sessions.retain(|s| !s.is_finished());
        for device in ready {
            let Ok((stream, _)) = listeners[device].accept() else {
                continue;
            };
            if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                refuse(stream);
                continue;
            }
            live.fetch_add(1, Ordering::SeqCst);
            let (profile, stats, stop, done) = (
                Arc::clone(&profile),
                Arc::clone(&stats),
                Arc::clone(&stop),
                Arc::clone(&live),
            );
            let name = names[device].clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sim-telnet-{name}"))
                .spawn(move || {
                    serve(stream, &name, device, profile, &stats, &stop);
                    done.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(handle) => sessions.push(handle),
                Err(_) => {
                    live.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
    for session in sessions {
        let _ = session.join();
    }
}

fn refuse(mut stream: TcpStream) {
    use std::io::Write as _;
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(b"\r\n% Connection refused: too many sessions, try again later\r\n");
}

fn serve(
    stream: TcpStream,
    name: &str,
    device: usize,
    profile: Arc<Profile>,
    stats: &Arc<Stats>,
    stop: &StopSignal,
) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut engine = Engine::new(profile, name, false);
    let mut link = TelnetLink::new(stream);
    session::run(
        &mut link,
        &mut engine,
        Some(stop),
        Counting { stats, device },
    );
    let _ = link.stream.shutdown(std::net::Shutdown::Both);
}

/// The device side of Telnet: asks to echo and to suppress go-ahead, asks for the window
/// size, and escapes everything it sends (a garbage fault sends 0xFF).
struct TelnetLink {
    stream: TcpStream,
    parser: Parser,
    negotiator: Negotiator,
    /// The client refused our echo (DONT ECHO): it echoes locally, so we must not.
    echo_refused: bool,
}

impl TelnetLink {
    fn new(stream: TcpStream) -> TelnetLink {
        TelnetLink {
            stream,
            parser: Parser::new(),
            negotiator: Negotiator::new(
                &[proto::OPT_ECHO, proto::OPT_SGA],
                &[proto::OPT_NAWS, proto::OPT_SGA],
            ),
            echo_refused: false,
        }
    }
}

impl Link for TelnetLink {
    fn input(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn output(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn greeting(&mut self) -> Vec<u8> {
        let mut out = self.negotiator.request_local(proto::OPT_ECHO, true);
        out.extend(self.negotiator.request_local(proto::OPT_SGA, true));
        out.extend(self.negotiator.request_remote(proto::OPT_NAWS, true));
        out
    }

    fn decode(
        &mut self,
        raw: &[u8],
        engine: &mut Engine,
        typed: &mut Vec<u8>,
        replies: &mut Vec<u8>,
    ) {
        for item in self.parser.feed(raw) {
            match item {
                Item::Data(data) => typed.extend(data),
                Item::Event(Event::Negotiation(verb, option)) => {
                    let (answer, change) = self.negotiator.receive(verb, option);
                    replies.extend(answer);
                    if option == proto::OPT_ECHO {
                        if verb == Verb::Dont {
                            self.echo_refused = true;
                        }
                        if change.is_some_and(|c| c.local && c.enabled) {
                            self.echo_refused = false;
                        }
                        engine.set_echo(!self.echo_refused);
                    }
                }
                Item::Event(Event::WindowSize { width, .. }) => engine.set_width(width),
                // Interrupt Process is Ctrl-C sent the Telnet way.
                Item::Event(Event::Command(proto::IP)) => typed.push(0x03),
                Item::Event(Event::Command(proto::AYT)) => {
                    replies.extend(proto::escape(b"\r\n[Yes]\r\n", false));
                }
                Item::Event(_) => {}
            }
        }
    }

    fn encode(&mut self, data: &[u8]) -> Vec<u8> {
        proto::escape(data, self.negotiator.local_enabled(proto::OPT_BINARY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn profile() -> Profile {
        Profile::for_platform("cisco_ios").unwrap()
    }

    #[test]
    fn a_rack_gets_consecutive_ports_and_numbered_hostnames() {
        let rack = TelnetRack::start(loopback(0), 3, profile()).unwrap();
        let addrs = rack.addrs();
        let names: Vec<&str> = addrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sim-1", "sim-2", "sim-3"]);
        let base = addrs[0].1.port();
        for (i, (_, addr)) in addrs.iter().enumerate() {
            assert_eq!(addr.port(), base + i as u16);
            assert!(addr.ip().is_loopback());
        }
        rack.stop();
    }

    #[test]
    fn a_taken_port_is_reported_with_its_address() {
        let taken = TcpListener::bind(loopback(0)).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = TelnetRack::start(addr, 1, profile())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    /// Reads until `want` ends what arrived (bounded by the socket's read timeout).
    fn read_until(client: &mut TcpStream, want: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(want) {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "closed before {want:?}: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn a_client_that_refuses_our_echo_gets_none() {
        use std::io::Write as _;
        let rack = TelnetRack::start(loopback(0), 1, profile()).unwrap();
        let mut client = TcpStream::connect(rack.addrs()[0].1).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        read_until(&mut client, b"Username: ");
        client
            .write_all(&proto::command(Verb::Dont, proto::OPT_ECHO))
            .unwrap();
        client.write_all(b"admin\r\n").unwrap();
        let got = read_until(&mut client, b"Password: ");
        assert!(
            !got.windows(5).any(|w| w == b"admin"),
            "typed text echoed although the client said DONT ECHO: {got:?}"
        );
        rack.stop();
    }

    #[test]
    fn stop_ends_connected_sessions_promptly() {
        let rack = TelnetRack::start(loopback(0), 1, profile()).unwrap();
        let mut client = TcpStream::connect(rack.addrs()[0].1).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let got = read_until(&mut client, b"Username: ");
        let mut buf = [0u8; 64];
        assert!(got.starts_with(&[255, 251, 1, 255, 251, 3, 255, 253, 31]));
        let stats = rack.stats();
        assert_eq!(stats.current(), 1);
        let started = Instant::now();
        rack.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            started.elapsed()
        );
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "the session outlived stop()"
        );
        assert_eq!((stats.current(), stats.total()), (0, 1));
    }
}

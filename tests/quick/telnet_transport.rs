//! The Telnet transport as the collector uses it, against the simulator's Telnet rack
//! (`rackhand::sim::TelnetRack`, in-process on 127.0.0.1 port 0) and, where the exact bytes
//! on the wire matter, against a small recording server in this file.
//!
//! The story: negotiation settles in one round (no loops: every protocol byte we send is
//! counted), the banner and a command's output come back unchanged, binary output with 0xFF
//! in it arrives unescaped, a closed port or a vanished peer are told apart, and no read ever
//! outlives its deadline.

use crate::support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rackhand::config::Secret;
use rackhand::inventory::{Device, Endpoint, HostKeyCheck, Isolation, SshSettings, TransportKind};
use rackhand::sim::{Fault, Profile, TelnetRack};
use rackhand::telnet_protocol as proto;
use rackhand::transport::telnet::{TelnetTransport, WINDOW_HEIGHT, WINDOW_WIDTH};
use rackhand::transport::{Transport as _, TransportError};

use support::fixtures::captures;
use support::{deadline, loopback_any_port};

const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Fixtures

fn device(addr: SocketAddr) -> Device {
    Device {
        name: "tn1".into(),
        groups: vec![],
        transport: TransportKind::Telnet,
        endpoint: Endpoint::Net {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        platform: "cisco_ios".into(),
        prompt: None,
        username: Some("admin".into()),
        password: Some(Secret::inline("admin")),
        enable_secret: None,
        ssh: SshSettings {
            key_file: None,
            key_passphrase: None,
            host_key_check: HostKeyCheck::AcceptNew,
            known_hosts: "/nonexistent/known_hosts".into(),
            legacy: false,
            kex: vec![],
            host_key_algorithms: vec![],
            ciphers: vec![],
            macs: vec![],
            keepalive: Duration::from_secs(30),
        },
        commands: vec!["show clock".into()],
        ship: Default::default(),
        interval: Duration::from_secs(900),
        connect_timeout: Duration::from_secs(5),
        command_timeout: STEP,
        max_output: 16 << 20,
        isolation: Isolation::Thread,
        driver_exec: None,
        capture: None,
    }
}

/// A rack stopped when the test ends, however it ends.
struct Rack(Option<TelnetRack>);

impl Rack {
    fn start(profile: Profile) -> Rack {
        let rack = TelnetRack::start(loopback_any_port(), 1, profile)
            .unwrap_or_else(|e| panic!("cannot start a telnet rack on 127.0.0.1: {e}"));
        Rack(Some(rack))
    }

    fn addr(&self) -> SocketAddr {
        self.0.as_ref().expect("rack running").addrs()[0].1
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        if let Some(rack) = self.0.take() {
            rack.stop();
        }
    }
}

fn cisco(login: bool) -> Profile {
    let mut p = Profile::for_platform("cisco_ios").unwrap();
    p.login = login;
    p.page_lines = 0;
    p
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads until `done` holds for what arrived; panics with what came if anything else ends it.
fn read_until(t: &mut TelnetTransport, until: Instant, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        assert!(got.len() < 1 << 20, "runaway output: {}", lossy(&got));
        match t.recv(&mut buf, until) {
            Ok(0) => panic!("recv returned Ok(0), which the trait forbids"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}; received so far: {:?}", lossy(&got)),
        }
    }
    got
}

fn ends_with(suffix: &'static str) -> impl Fn(&[u8]) -> bool {
    move |g: &[u8]| g.ends_with(suffix.as_bytes())
}

/// What we must have sent for the simulator's opening (WILL ECHO, WILL SGA, DO NAWS): our
/// own WILL NAWS offer, DO ECHO, DO SGA, and the window size once.
fn expected_protocol_bytes() -> u64 {
    (3 * 3 + proto::naws(WINDOW_WIDTH, WINDOW_HEIGHT).len()) as u64
}

/// Logs in on a cisco_ios simulator; returns what came before the username prompt.
fn login(t: &mut TelnetTransport) -> Vec<u8> {
    let before = read_until(t, deadline(STEP), ends_with("Username: "));
    t.send(b"admin\n").unwrap();
    read_until(t, deadline(STEP), ends_with("Password: "));
    t.send(b"admin\n").unwrap();
    read_until(t, deadline(STEP), ends_with("sim#"));
    before
}

// ---------------------------------------------------------------------------------------
// Against the simulator

#[test]
fn negotiation_settles_once_and_the_banner_and_a_command_come_back() {
    let mut p = cisco(true);
    p.banner = Some("Authorized access only. Rack 7.".into());
    let rack = Rack::start(p);
    let mut t = TelnetTransport::connect(&device(rack.addr())).unwrap();
    assert_eq!(t.peer(), format!("telnet {}", rack.addr()));

    let before = login(&mut t);
    assert!(
        lossy(&before).contains("Authorized access only. Rack 7."),
        "no banner before the login: {:?}",
        lossy(&before)
    );
    assert!(
        t.remote_enabled(proto::OPT_ECHO),
        "server ECHO not accepted"
    );
    assert!(t.remote_enabled(proto::OPT_SGA), "server SGA not accepted");
    assert!(t.local_enabled(proto::OPT_NAWS), "NAWS not agreed");
    let settled = t.counters();
    assert_eq!(
        settled.protocol_sent,
        expected_protocol_bytes(),
        "protocol bytes we sent: {settled:?}"
    );
    assert_eq!(
        settled.negotiations_received, 3,
        "the simulator opens with exactly WILL ECHO, WILL SGA, DO NAWS: {settled:?}"
    );

    t.send(b"show clock\n").unwrap();
    let out = read_until(&mut t, deadline(STEP), ends_with("sim#"));
    let want = captures("cisco_ios")
        .into_iter()
        .find(|c| c.command == "show clock")
        .expect("a cisco_ios show clock capture");
    let text = lossy(&out).replace("\r\n", "\n");
    let body = text
        .strip_prefix("show clock\n")
        .unwrap_or_else(|| panic!("no echo of the command first: {text:?}"))
        .strip_suffix("sim#")
        .unwrap();
    assert_eq!(body.as_bytes(), want.expected(), "show clock differs");

    // Nothing more was negotiated after the opening: no loop, no second NAWS.
    let after = t.counters();
    assert_eq!(after.protocol_sent, settled.protocol_sent, "{after:?}");
    assert_eq!(after.negotiation_replies, settled.negotiation_replies);
}

#[test]
fn binary_output_with_0xff_arrives_unescaped() {
    let p = cisco(false).with_fault("show clock", Fault::Garbage);
    let rack = Rack::start(p);
    let mut t = TelnetTransport::connect(&device(rack.addr())).unwrap();
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), ends_with("sim#"));
    let negotiated = t.counters().negotiations_received;

    t.send(b"show clock\n").unwrap();
    // The opening may have shown a prompt for the connection and one for our return: read
    // past the echo of the command, not just to the next prompt.
    let out = read_until(&mut t, deadline(STEP), |g: &[u8]| {
        g.windows(10).any(|w| w == b"show clock") && g.ends_with(b"\r\nsim#")
    });
    let has = |needle: &[u8]| out.windows(needle.len()).any(|w| w == needle);
    // The simulator's garbage always holds these; doubled IACs would mean we did not
    // unescape, a missing `IAC WILL ECHO` that we took it for negotiation.
    assert!(has(&[0xff, 0xff]), "0xFF 0xFF lost: {out:?}");
    assert!(has(&[0xff, 0xfb, 0x01]), "IAC WILL ECHO data lost: {out:?}");
    assert!(has(&[0xc3, 0x28]), "invalid UTF-8 sequence lost: {out:?}");
    assert!(
        !has(&[0xff, 0xff, 0xff, 0xff]),
        "IACs still doubled: {out:?}"
    );
    assert_eq!(
        t.counters().negotiations_received,
        negotiated,
        "data bytes were taken for negotiation"
    );

    // And the session goes on.
    t.send(b"show version\n").unwrap();
    let out = read_until(&mut t, deadline(STEP), ends_with("sim#"));
    assert!(
        lossy(&out).contains("Cisco IOS Software"),
        "{:?}",
        lossy(&out)
    );
}

#[test]
fn a_closed_port_is_a_connect_error_naming_it() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = TelnetTransport::connect(&device(addr)).unwrap_err();
    let TransportError::Connect { peer, detail } = &err else {
        panic!("expected Connect, got {err:?}");
    };
    assert_eq!(peer, &format!("telnet {addr}"));
    assert!(
        detail.contains(&addr.to_string()) && detail.contains("Telnet is enabled"),
        "{err}"
    );
}

#[test]
fn the_device_hanging_up_is_closed() {
    let rack = Rack::start(cisco(false));
    let mut t = TelnetTransport::connect(&device(rack.addr())).unwrap();
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), ends_with("sim#"));
    t.send(b"exit\n").unwrap();
    let mut buf = [0u8; 1024];
    let until = deadline(STEP);
    let err = loop {
        match t.recv(&mut buf, until) {
            Ok(n) => assert!(n > 0, "recv returned Ok(0)"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, TransportError::Closed { .. }),
        "expected Closed after `exit`, got {err:?}"
    );
    // And it stays closed.
    let again = t.recv(&mut buf, deadline(STEP)).unwrap_err();
    assert!(matches!(again, TransportError::Closed { .. }), "{again:?}");
}

#[test]
fn a_silent_device_times_out_at_the_deadline_not_before() {
    let p = cisco(false).with_fault("show version", Fault::Hang);
    let rack = Rack::start(p);
    let mut t = TelnetTransport::connect(&device(rack.addr())).unwrap();
    t.send(b"\r").unwrap();
    read_until(&mut t, deadline(STEP), ends_with("sim#"));
    t.send(b"show version\n").unwrap();
    // The echo comes, then nothing.
    read_until(&mut t, deadline(STEP), ends_with("show version\r\n"));
    let wait = Duration::from_millis(400);
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let err = t.recv(&mut buf, started + wait).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, TransportError::TimedOut { .. }),
        "expected TimedOut, got {err:?}"
    );
    assert!(took >= wait, "gave up after {took:?}, before the deadline");
    assert!(took < wait + Duration::from_secs(1), "overran by {took:?}");
    // A deadline already past returns at once.
    let started = Instant::now();
    let err = t.recv(&mut buf, started).unwrap_err();
    assert!(matches!(err, TransportError::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
}

// ---------------------------------------------------------------------------------------
// The exact bytes on the wire, against a recording server

/// A one-connection server on 127.0.0.1: sends `script`, then records everything the
/// client sends until it hangs up. Joined on drop (a dummy connection wakes an accept that
/// never got its client, so a failing test cannot leave the thread behind).
struct Recorder {
    addr: SocketAddr,
    thread: Option<JoinHandle<Vec<u8>>>,
}

impl Recorder {
    fn start(script: Vec<u8>) -> Recorder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return Vec::new();
            };
            let until = deadline(STEP);
            let _ = s.write_all(&script);
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while let Some(left) = support::remaining(until) {
                s.set_read_timeout(Some(left)).unwrap();
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        });
        Recorder {
            addr,
            thread: Some(thread),
        }
    }

    /// What the client sent, once it has hung up.
    fn received(mut self) -> Vec<u8> {
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
    }
}

#[test]
fn refusals_line_ends_iac_and_break_on_the_wire() {
    use proto::{DO, DONT, IAC, OPT_ECHO, OPT_LINEMODE, OPT_TTYPE, WILL, WONT};
    // Unwanted options are refused; the peer's acknowledgements of our refusals (DONT,
    // WONT) and a repeated WILL for an option already on are not answered: that is what
    // keeps two peers from looping. Then some data.
    let script = vec![
        IAC,
        DO,
        OPT_TTYPE,
        IAC,
        DONT,
        OPT_TTYPE,
        IAC,
        WILL,
        OPT_LINEMODE,
        IAC,
        WONT,
        OPT_LINEMODE,
        IAC,
        WILL,
        OPT_ECHO,
        IAC,
        WILL,
        OPT_ECHO,
        b'o',
        b'k',
        b'>',
    ];
    let server = Recorder::start(script);
    let mut t = TelnetTransport::connect(&device(server.addr)).unwrap();
    read_until(&mut t, deadline(STEP), ends_with("ok>"));
    t.send(b"a\xffb\n").unwrap();
    t.send(b"\r").unwrap();
    t.send(b"c\r\n").unwrap();
    t.send_break().unwrap();
    let counters = t.counters();
    drop(t);
    let got = server.received();
    let mut want = vec![IAC, WILL, proto::OPT_NAWS];
    want.extend([
        IAC,
        WONT,
        OPT_TTYPE,
        IAC,
        DONT,
        OPT_LINEMODE,
        IAC,
        DO,
        OPT_ECHO,
    ]);
    want.extend(b"a\xff\xffb\r\n");
    want.extend(b"\r\0");
    want.extend(b"c\r\n");
    want.extend([IAC, proto::BRK]);
    assert_eq!(got, want, "wire bytes differ; counters {counters:?}");
    assert_eq!(counters.negotiations_received, 6);
    assert_eq!(counters.negotiation_replies, 3);
    assert_eq!(counters.wire_sent, want.len() as u64);
}

#[test]
fn negotiation_only_traffic_does_not_end_a_read_early() {
    use proto::{IAC, NOP, WILL};
    // Protocol without data must not surface as a zero-length read: recv waits for data.
    let mut script = Vec::new();
    for _ in 0..50 {
        script.extend([IAC, NOP]);
    }
    script.extend([IAC, WILL, proto::OPT_SGA]);
    script.extend(b"x");
    let server = Recorder::start(script);
    let mut t = TelnetTransport::connect(&device(server.addr)).unwrap();
    let got = read_until(&mut t, deadline(STEP), |g| !g.is_empty());
    assert_eq!(got, b"x");
    let c = t.counters();
    assert_eq!(c.negotiation_replies, 1, "{c:?}");
}

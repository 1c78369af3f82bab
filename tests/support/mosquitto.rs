//! A real Mosquitto broker for the mqtt sink's tests, on 127.0.0.1 with a generated config in
//! a temp dir and no persistence (a restart loses every session and queued message, as a
//! broker without a disk would); a subscriber that records every message it gets and
//! resubscribes after each reconnect; and a TCP relay standing for the agent's uplink, which a
//! test can cut and restore (so the receiver can be back before the agent is).
//!
//! Every piece stops in `Drop`, also when an assertion fails, and every wait takes a deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

use super::process::{ChildGuard, poll_readable};
use super::{deadline, released_loopback_port, remaining};

/// How long a broker may take to say it is running.
pub const READY_WAIT: Duration = Duration::from_secs(10);
/// Longest life of any helper thread here, a backstop should a test forget to stop it.
const LIFETIME: Duration = Duration::from_secs(300);

/// The `mosquitto` binary; a clear failure (not a skip) when it is not installed.
pub fn mosquitto_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join("mosquitto");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the mqtt sink tests need the mosquitto broker, which is not installed (looked in PATH and /usr/sbin): run scripts/install-deps (it installs Debian's mosquitto and mosquitto-clients)"
    );
}

/// Writes a mosquitto password file with one `user` (hashed by `mosquitto_passwd`).
pub fn password_file(dir: &Path, user: &str, password: &str) -> io::Result<PathBuf> {
    let path = dir.join("passwords");
    let out = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&path)
        .arg(user)
        .arg(password)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            let hint = "from Debian's mosquitto; run scripts/install-deps";
            io::Error::new(
                e.kind(),
                format!("cannot run mosquitto_passwd ({hint}): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(path)
}

/// A running `mosquitto -c <dir>/mosquitto-<port>.conf`, killed on `Drop`.
pub struct Mosquitto {
    guard: ChildGuard,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// A broker listening on a free loopback port, anonymous, no persistence.
    pub fn start(dir: &Path) -> io::Result<Mosquitto> {
        Self::start_with(dir, "")
    }

    /// As [`Mosquitto::start`], with `extra` appended to the config (more listeners, TLS).
    pub fn start_with(dir: &Path, extra: &str) -> io::Result<Mosquitto> {
        let mut last = None;
        // Another process may take the released port before mosquitto binds it: retry.
        for _ in 0..5 {
            let port = released_loopback_port()?.port();
            match Self::start_on(dir, port, extra) {
                Ok(m) => return Ok(m),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// A broker on `port` (e.g. one a sink already points at).
    pub fn start_on(dir: &Path, port: u16, extra: &str) -> io::Result<Mosquitto> {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 log_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 listener {port} 127.0.0.1\n\
                 {extra}\n"
            ),
        )?;
        Self::launch(conf, port)
    }

    fn launch(conf: PathBuf, port: u16) -> io::Result<Mosquitto> {
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c").arg(&conf);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let (tx, rx) = mpsc::channel();
        let what = format!("mosquitto on 127.0.0.1:{port}");
        let mut guard = ChildGuard::spawn(cmd, &what, Some(tx))?;
        wait_running(&mut guard, &rx, &what)?;
        Ok(Mosquitto { guard, port, conf })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What the broker logged so far (for failure messages).
    pub fn log(&self) -> String {
        self.guard.stderr_text()
    }

    /// SIGKILL, as a crash or power cut would: nothing is flushed, every session is gone.
    pub fn kill(&mut self) -> io::Result<()> {
        self.guard.signal(Signal::SIGKILL)?;
        match self.guard.wait_until(deadline(Duration::from_secs(5)))? {
            Some(_) => Ok(()),
            None => Err(io::Error::other("mosquitto outlived SIGKILL for 5s")),
        }
    }

    /// Kills the broker and starts a fresh one with the same config on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        let port = self.port;
        let mut last = None;
        for _ in 0..20 {
            match Self::launch(self.conf.clone(), port) {
                Ok(fresh) => {
                    *self = fresh;
                    return Ok(());
                }
                // The old socket may linger for a moment.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("restart failed")))
    }

    /// SIGSTOP: the broker still accepts TCP (the kernel does) but answers nothing.
    pub fn freeze(&mut self) -> io::Result<()> {
        self.guard.signal(Signal::SIGSTOP)
    }

    pub fn thaw(&mut self) -> io::Result<()> {
        self.guard.signal(Signal::SIGCONT)
    }
}

/// Waits for mosquitto's `running` line; `AddrInUse` when the port was taken.
fn wait_running(guard: &mut ChildGuard, rx: &Receiver<String>, what: &str) -> io::Result<()> {
    let until = deadline(READY_WAIT);
    let mut seen = Vec::new();
    loop {
        let left = remaining(until).unwrap_or_default();
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(" running") => return Ok(()),
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} did not log `running` within {READY_WAIT:?}: {seen:#?}"),
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.wait_until(deadline(Duration::from_secs(2)))?;
                let log = seen.join("\n");
                let kind = if log.contains("Address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("{what} ended before running (status {status:?}):\n{log}"),
                ));
            }
        }
    }
}

/// One message a subscriber received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Message {
    /// A field of the payload's JSON.
    pub fn field(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON ({e})", self.topic));
        v[name].clone()
    }
}

#[derive(Default)]
struct SubState {
    messages: Vec<Message>,
    /// SUBACKs so far: one per (re)connection once the filter is in place again.
    subscribed: u64,
    stop: bool,
    done: bool,
}

struct SubShared {
    state: Mutex<SubState>,
    changed: Condvar,
}

impl SubShared {
    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A QoS 1 subscriber (clean session, as a simple collector is) that records every message,
/// and reconnects and subscribes again by itself after the broker went away.
pub struct Subscriber {
    client: Client,
    shared: Arc<SubShared>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to `addr`, subscribes to `filter` and waits (bounded) for the SUBACK.
    pub fn start(addr: SocketAddr, filter: &str) -> Subscriber {
        Self::start_with_login(addr, filter, None)
    }

    /// As [`Subscriber::start`], logging in with `(username, password)`.
    pub fn start_with_login(
        addr: SocketAddr,
        filter: &str,
        login: Option<(&str, &str)>,
    ) -> Subscriber {
        static N: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(16 << 20, 64 << 10);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let mut network = connection.eventloop.network_options();
        network.set_connection_timeout(1);
        connection.eventloop.set_network_options(network);
        let shared = Arc::new(SubShared {
            state: Mutex::new(SubState::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let (shared, client, filter) =
                (Arc::clone(&shared), client.clone(), filter.to_string());
            std::thread::spawn(move || {
                let end = deadline(LIFETIME);
                while remaining(end).is_some() {
                    let event = connection.recv();
                    let mut st = shared.lock();
                    if st.stop {
                        break;
                    }
                    match event {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => st.subscribed += 1,
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => st.messages.push(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        }),
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                        Ok(Ok(_)) => {}
                        // Broker gone: try again shortly (woken early by a stop).
                        Ok(Err(_)) => {
                            let _ = shared
                                .changed
                                .wait_timeout(st, Duration::from_millis(50))
                                .unwrap_or_else(|e| e.into_inner());
                            continue;
                        }
                        Err(_) => break,
                    }
                    shared.changed.notify_all();
                }
                shared.lock().done = true;
                shared.changed.notify_all();
            })
        };
        let sub = Subscriber {
            client,
            shared,
            thread: Some(thread),
        };
        assert!(
            sub.wait_subscribed(1, deadline(Duration::from_secs(10))),
            "the test subscriber did not get its SUBACK from {addr} within 10s"
        );
        sub
    }

    /// Waits until the subscriber holds its `n`th subscription (after `n - 1` reconnects).
    pub fn wait_subscribed(&self, n: u64, until: Instant) -> bool {
        self.wait(until, |st| st.subscribed >= n)
    }

    pub fn subscriptions(&self) -> u64 {
        self.shared.lock().subscribed
    }

    /// Waits until `cond` holds for the messages received so far.
    pub fn wait_messages(&self, until: Instant, cond: impl Fn(&[Message]) -> bool) -> bool {
        self.wait(until, |st| cond(&st.messages))
    }

    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.clone()
    }

    fn wait(&self, until: Instant, cond: impl Fn(&SubState) -> bool) -> bool {
        let mut st = self.shared.lock();
        loop {
            if cond(&st) {
                return true;
            }
            let Some(left) = remaining(until) else {
                return false;
            };
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        let _ = self.client.try_disconnect();
        // A thread inside a connect attempt ends with it (connection timeout 1s).
        let done = self.wait(deadline(Duration::from_secs(3)), |st| st.done);
        match self.thread.take() {
            Some(t) if done => {
                let _ = t.join();
            }
            _ => {}
        }
    }
}

struct RelayShared {
    upstream: SocketAddr,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    bytes_up: AtomicU64,
}

impl RelayShared {
    fn cut_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The agent's uplink: a TCP relay on a fixed loopback port to the broker. Closed, it cuts
/// every connection and stops listening (connections are refused, as from a host whose
/// broker is down); opened, it listens on the same port again. So a test decides when the
/// agent can reach the broker, e.g. only once the receiver has subscribed again.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<RelayShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay to `upstream`, listening at once when `open`.
    pub fn start(upstream: SocketAddr, open: bool) -> io::Result<Relay> {
        let addr = released_loopback_port()?;
        let mut relay = Relay {
            addr,
            shared: Arc::new(RelayShared {
                upstream,
                stop: AtomicBool::new(false),
                conns: Mutex::new(Vec::new()),
                bytes_up: AtomicU64::new(0),
            }),
            acceptor: None,
        };
        if open {
            relay.open()?;
        }
        Ok(relay)
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Cuts every connection and stops listening until [`Relay::open`].
    pub fn close(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        self.shared.cut_all();
    }

    /// Listens again on the same port (retrying briefly should the old socket linger).
    pub fn open(&mut self) -> io::Result<()> {
        self.close();
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        self.shared.stop.store(false, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        self.acceptor = Some(std::thread::spawn(move || accept_loop(&listener, &shared)));
        Ok(())
    }

    /// Bytes relayed from the agent towards the broker so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<RelayShared>) {
    let end = deadline(LIFETIME);
    while remaining(end).is_some() && !shared.stop.load(Ordering::SeqCst) {
        if !poll_readable(listener, Duration::from_millis(20)).unwrap_or(false) {
            continue;
        }
        let Ok((down, _)) = listener.accept() else {
            continue;
        };
        let Ok(up) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(1)) else {
            let _ = down.shutdown(Shutdown::Both);
            continue;
        };
        let pair = (|| -> io::Result<_> {
            let mut conns = shared.conns.lock().unwrap();
            conns.push(down.try_clone()?);
            conns.push(up.try_clone()?);
            Ok((down.try_clone()?, up.try_clone()?))
        })();
        let Ok((down2, up2)) = pair else { continue };
        let s = Arc::clone(shared);
        std::thread::spawn(move || pump(down, up, Some(&s.bytes_up)));
        std::thread::spawn(move || pump(up2, down2, None));
    }
}

/// Copies `from` to `to` until either end closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<&AtomicU64>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if let Some(c) = count {
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

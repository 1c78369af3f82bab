//! The connection thread: rumqttc's event loop, driven on a thread of its own.
//!
//! rumqttc's `publish()` returns once the message is queued, not once the broker has it, so
//! this thread runs `Connection::recv` and notes in [`State`], per connection, every PUBLISH
//! that went out and every PUBACK that came back; the sink's attempts read that to know when
//! a batch is acknowledged. It connects only when an attempt asks (`go`), never by itself, so
//! a dead broker is not hammered, and it throws away what an earlier connection left queued,
//! so a new connection carries only what the next attempt publishes.

use std::collections::HashSet;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    ConnectReturnCode, Connection, ConnectionError, Event, Outgoing, Packet, StateError,
};

use super::StopFlag;

/// How often a wait for the broker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Where the connection thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No connection; waits for `go`.
    Idle,
    /// Connecting (TCP, TLS, CONNECT/CONNACK).
    Connecting,
    /// CONNACK received.
    Connected,
}

/// What the sink and its connection thread share, under one mutex.
#[derive(Debug)]
pub(super) struct State {
    pub(super) phase: Phase,
    /// Set by the sink: connect now (the thread is `Idle`).
    pub(super) go: bool,
    /// Set by the sink: drop the connection at the next event (it may carry stale requests).
    pub(super) close: bool,
    /// Set by `Drop`: close and end the thread.
    pub(super) shutdown: bool,
    /// CONNACKs so far: one number per connection.
    pub(super) generation: u64,
    /// Connections (or attempts to connect) that ended so far, and why the last one did:
    /// `None` when the sink asked for it.
    pub(super) ended: u64,
    pub(super) last_error: Option<String>,
    /// PUBLISHes sent on the current connection.
    pub(super) published: u64,
    /// Their packet ids still awaiting a PUBACK.
    pub(super) unacked: HashSet<u16>,
    pub(super) exited: bool,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    pub(super) fn new() -> State {
        State {
            phase: Phase::Idle,
            go: false,
            close: false,
            shutdown: false,
            generation: 0,
            ended: 0,
            last_error: None,
            published: 0,
            unacked: HashSet::new(),
            exited: false,
        }
    }
}

/// Waits for the connection thread to report something, at most until `deadline`, looking
/// at `stop` every [`STOP_POLL`]. `Err(true)` when stopped, `Err(false)` at the deadline
/// (the lock is then released).
pub(super) fn wait<'a>(
    shared: &'a Shared,
    st: MutexGuard<'a, State>,
    deadline: Instant,
    stop: &StopFlag,
) -> Result<MutexGuard<'a, State>, bool> {
    if stop.is_stopped() {
        return Err(true);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(false);
    }
    let (st, _) = shared
        .changed
        .wait_timeout(st, left.min(STOP_POLL))
        .unwrap_or_else(|e| e.into_inner());
    Ok(st)
}

/// What the connection thread needs to word its errors.
pub(super) struct Describe {
    pub(super) url: String,
    pub(super) client_id: String,
    pub(super) timeout: Duration,
}

/// The connection thread: connects when the sink asks, then reports every PUBLISH sent, every
/// PUBACK and how the connection ended, until the sink is dropped.
pub(super) fn drive(mut connection: Connection, shared: &Shared, describe: &Describe) {
    loop {
        {
            let mut st = shared.lock();
            st.phase = Phase::Idle;
            shared.changed.notify_all();
            while !st.go && !st.shutdown {
                st = shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                break;
            }
            st.go = false;
            st.close = false;
            st.phase = Phase::Connecting;
            shared.changed.notify_all();
        }
        // What the last connection left (its in-flight publishes, queued requests, buffered
        // events) belongs to attempts that failed and publish their batch again: drop it, so
        // the new connection carries only what the next attempt sends.
        let eventloop = &mut connection.eventloop;
        eventloop.network = None;
        eventloop.clean();
        eventloop.pending.clear();
        eventloop.state.events.clear();
        eventloop.state.collision = None;
        loop {
            let event = connection.recv();
            let mut st = shared.lock();
            match event {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    st.generation += 1;
                    st.phase = Phase::Connected;
                    st.published = 0;
                    st.unacked.clear();
                    log::info!(
                        "connected to {} as client `{}` (session {})",
                        describe.url,
                        describe.client_id,
                        if ack.session_present {
                            "resumed"
                        } else {
                            "new"
                        }
                    );
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    st.published += 1;
                    st.unacked.insert(pkid);
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    st.unacked.remove(&ack.pkid);
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    let text = describe_error(&error, describe);
                    if st.phase == Phase::Connected {
                        log::warn!("{text}");
                    }
                    st.phase = Phase::Idle;
                    st.ended += 1;
                    st.last_error = Some(text);
                    shared.changed.notify_all();
                    break;
                }
                // The event loop holds a sender of its own, so its queue never closes.
                Err(_) => {
                    st.shutdown = true;
                    break;
                }
            }
            if st.close || st.shutdown {
                connection.eventloop.network = None;
                st.phase = Phase::Idle;
                st.ended += 1;
                st.last_error = None;
                shared.changed.notify_all();
                break;
            }
            shared.changed.notify_all();
        }
    }
    let mut st = shared.lock();
    st.phase = Phase::Idle;
    st.exited = true;
    shared.changed.notify_all();
}

/// Says what a connection error means for the operator.
pub(super) fn describe_error(error: &ConnectionError, d: &Describe) -> String {
    let url = &d.url;
    let secs = d.timeout.as_secs_f64();
    match error {
        ConnectionError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!("connection to {url} refused: is the broker running and listening there?")
        }
        ConnectionError::Io(e)
            if e.kind() == io::ErrorKind::InvalidData && url.starts_with("mqtts:") =>
        {
            format!(
                "TLS with {url} failed ({e}); check ca_file in [upstream] (the CA that signed the broker's certificate) and that the certificate names this host"
            )
        }
        ConnectionError::Io(e) => format!("network error talking to {url}: {e}"),
        ConnectionError::Tls(e) => format!(
            "TLS with {url} failed ({e}); check ca_file in [upstream] (the CA that signed the broker's certificate) and that the certificate names this host"
        ),
        ConnectionError::NetworkTimeout => format!(
            "{url} did not accept the connection within {secs:.1}s; the broker is slow or unreachable"
        ),
        ConnectionError::FlushTimeout => {
            format!("{url} took no data for {secs:.1}s; the broker or the uplink is stuck")
        }
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => format!(
                "{url} refused the login ({code:?}); check username and password in [upstream]"
            ),
            ConnectReturnCode::BadClientId => format!(
                "{url} refused client id `{}`; set client_id in [upstream] to one the broker accepts",
                d.client_id
            ),
            ConnectReturnCode::RefusedProtocolVersion => {
                format!("{url} refused MQTT 3.1.1; the broker must accept protocol version 4")
            }
            ConnectReturnCode::ServiceUnavailable | ConnectReturnCode::Success => {
                format!("{url} refused the connection for now ({code:?})")
            }
        },
        ConnectionError::NotConnAck(packet) => format!(
            "{url} answered CONNECT with {packet:?}, not CONNACK: is an MQTT broker listening there?"
        ),
        ConnectionError::MqttState(StateError::AwaitPingResp) => format!(
            "{url} stopped answering (no PINGRESP within the keep-alive); the broker or the uplink is gone"
        ),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            format!(
                "{url} closed the connection (broker restarted, or it took this client id over)"
            )
        }
        ConnectionError::MqttState(StateError::Io(e)) => {
            format!("connection to {url} lost: {e}")
        }
        other => format!("connection to {url} failed: {other}"),
    }
}

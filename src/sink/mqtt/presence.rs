//! Fleet presence over MQTT: a retained message on `rackhand/<agent id>/status` that says
//! whether the agent runs and how it is doing, so a network team sees fifty racks on their
//! broker without logging in to any board.
//!
//! While the agent runs the message is `{"state":"online", ...}` with its version, start time,
//! device counts and LED state, published again when that changes, at most every
//! [`MIN_INTERVAL`] (what changes in between is coalesced: the latest wins). The connection's
//! last will is a retained `{"state":"offline", "reason":"connection_lost", ...}`: the broker
//! publishes it when the agent dies without a goodbye (a crash or kill -9 closes the socket
//! at once; a power cut or a dead uplink is noticed after 1.5 × `keep_alive`). A clean stop
//! publishes `{"state":"offline", "reason":"stopped", ...}` itself, then disconnects (which
//! tells the broker to drop the will).
//!
//! # Why a connection of its own
//! The record sink's connection is lazy (it connects for a batch), torn down after every
//! failed attempt (the broker would publish the will each time) and counts every PUBLISH on
//! it as a record's. Presence must never hold a batch up nor be held up by one, so it has its
//! own client (`<client_id>-presence`, clean session: nothing to resume), its own thread and a
//! queue of a few requests. The agent's loop only hands over the latest report
//! ([`Presence::offer`]: a lock and at most a non-blocking `try_publish`); it never waits on the
//! broker.
//!
//! # A broker that is down
//! The thread connects at once and, after a failure, again after [`Backoff`] (full jitter,
//! 1 s → 60 s), logging one warning per outage and the rest at debug level; on every new
//! connection it publishes the latest state again (a broker restarted without persistence
//! lost the retained message). The agent never stops for it.
//!
//! # The topic
//! Always `rackhand/<agent id>/status` (the agent id made one safe topic level, as in record
//! topics), whatever the records' `topic` template: a fleet finds every agent with one
//! subscription to `rackhand/+/status`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{Client, Connection, Event, LastWill, Outgoing, Packet, QoS};
use serde::Serialize;

use super::super::Jitter;
use super::connection::{Describe, describe_error};
use super::packet::render_topic;
use super::{Backoff, MqttConfig, MqttSinkError};
use crate::config::url::redact;
use crate::record::rfc3339_millis;

/// Two online messages are at least this far apart; changes in between are coalesced.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Requests queued to the presence connection at most: an online message now and then, the
/// offline one and the disconnect.
const QUEUE: usize = 8;
/// The presence topic, whatever the records' template.
const TOPIC: &str = "rackhand/{agent}/status";
/// How long dropping a [`Presence`] that was not stopped waits for its goodbye.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// `rackhand/<agent id>/status`, the agent id made one safe topic level.
pub(crate) fn presence_topic(agent: &str) -> String {
    render_topic(TOPIC, agent, "")
}

/// Whether device `device`'s records (on the `template` topic) would land on the presence
/// topic.
pub(crate) fn presence_collides(template: &str, agent: &str, device: &str) -> bool {
    render_topic(template, agent, device) == presence_topic(agent)
}

/// The configured devices, and how many of them collected fine or failed last time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct DeviceCounts {
    pub(crate) total: usize,
    pub(crate) ok: usize,
    pub(crate) failing: usize,
}

/// What the online message says that changes while the agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceReport {
    pub(crate) devices: DeviceCounts,
    /// `starting` | `healthy` | `degraded` | `failing`: what the status LED shows.
    pub(crate) led: &'static str,
}

/// One presence message, fields in the order a reader wants them.
#[derive(Serialize)]
struct Message<'a> {
    state: &'static str,
    agent: &'a str,
    version: &'a str,
    started_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<DeviceCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    led: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<String>,
}

/// What every message says about this run of the agent.
struct Identity {
    topic: String,
    agent: String,
    started_at: String,
}

impl Identity {
    fn message(&self, state: &'static str) -> Message<'_> {
        Message {
            state,
            agent: &self.agent,
            version: env!("CARGO_PKG_VERSION"),
            started_at: &self.started_at,
            devices: None,
            led: None,
            reason: None,
            stopped_at: None,
        }
    }

    fn online(&self, report: &PresenceReport) -> Vec<u8> {
        let message = Message {
            devices: Some(report.devices),
            led: Some(report.led),
            ..self.message("online")
        };
        serde_json::to_vec(&message).expect("a presence message serialises")
    }

    /// `stopped` (a clean stop, published by the agent) or `connection_lost` (the will).
    fn offline(&self, reason: &'static str) -> Vec<u8> {
        let message = Message {
            reason: Some(reason),
            stopped_at: (reason == "stopped").then(|| rfc3339_millis(SystemTime::now())),
            ..self.message("offline")
        };
        serde_json::to_vec(&message).expect("a presence message serialises")
    }
}

/// What the agent's side and the presence thread share.
struct State {
    /// The latest report offered.
    latest: PresenceReport,
    /// The report last handed to this connection; `None` after a (re)connect.
    published: Option<PresenceReport>,
    /// No online message before this.
    next_allowed: Instant,
    connected: bool,
    stopping: bool,
    /// The offline message and the disconnect are queued.
    goodbye_queued: bool,
    exited: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue side both the agent and the thread publish through.
struct Publisher {
    client: Client,
    identity: Identity,
}

impl Publisher {
    /// Queues the latest report (never blocks: a full queue leaves it for the next offer).
    fn online(&self, st: &mut State) {
        let payload = self.identity.online(&st.latest);
        let queued = self.client.try_publish(
            self.identity.topic.as_str(),
            QoS::AtLeastOnce,
            true,
            payload,
        );
        if queued.is_ok() {
            st.published = Some(st.latest.clone());
            st.next_allowed = Instant::now() + MIN_INTERVAL;
        }
    }

    /// Queues the offline message and the disconnect after it, once: the broker takes them
    /// in order, so the retained message says offline before the will is dropped.
    fn goodbye(&self, st: &mut State) {
        if st.goodbye_queued {
            return;
        }
        st.goodbye_queued = true;
        let payload = self.identity.offline("stopped");
        let _ = self.client.try_publish(
            self.identity.topic.as_str(),
            QoS::AtLeastOnce,
            true,
            payload,
        );
        let _ = self.client.try_disconnect();
    }
}

/// The agent's presence on the broker: a connection thread and the latest report.
pub(crate) struct Presence {
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("topic", &self.publisher.identity.topic)
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// Connects (in the background) to the sink's broker with the sink's login and TLS, and
    /// publishes `first` as soon as the broker accepts the connection.
    pub(crate) fn start(
        config: &MqttConfig,
        started_at: SystemTime,
        first: PresenceReport,
    ) -> Result<Presence, MqttSinkError> {
        let url = redact(&config.broker).into_owned();
        let identity = Identity {
            topic: presence_topic(&config.agent),
            agent: config.agent.clone(),
            started_at: rfc3339_millis(started_at),
        };
        let own = MqttConfig {
            client_id: format!("{}-presence", config.client_id),
            ..config.clone()
        };
        let (mut options, _host) = super::options::options(&own, &url)?;
        options
            .set_clean_session(true)
            .set_request_channel_capacity(QUEUE)
            .set_last_will(LastWill::new(
                identity.topic.clone(),
                identity.offline("connection_lost"),
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut connection) = Client::new(options, QUEUE);
        let mut network = connection.eventloop.network_options();
        network.set_connection_timeout(config.timeout.as_secs_f64().ceil().max(1.0) as u64);
        connection.eventloop.set_network_options(network);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                latest: first,
                published: None,
                next_allowed: Instant::now(),
                connected: false,
                stopping: false,
                goodbye_queued: false,
                exited: false,
            }),
            changed: Condvar::new(),
        });
        let publisher = Arc::new(Publisher { client, identity });
        let driver = Driver {
            shared: Arc::clone(&shared),
            publisher: Arc::clone(&publisher),
            describe: Describe {
                url: url.clone(),
                client_id: own.client_id,
                timeout: config.timeout,
            },
            backoff: config.backoff,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt-presence".into())
            .spawn(move || driver.run(connection))
            .map_err(|error| MqttSinkError::Thread { url, error })?;
        Ok(Presence {
            shared,
            publisher,
            thread: Some(thread),
        })
    }

    /// The agent's state now. Published at once when it differs from what was published last
    /// and [`MIN_INTERVAL`] has passed since; otherwise kept, and published by a later offer
    /// (the agent offers every few seconds) or at the next connection. Never blocks.
    pub(crate) fn offer(&self, report: PresenceReport) {
        let mut st = self.shared.lock();
        st.latest = report;
        let due = st.connected
            && !st.stopping
            && Instant::now() >= st.next_allowed
            && st.published.as_ref() != Some(&st.latest);
        if due {
            self.publisher.online(&mut st);
        }
    }

    /// A clean stop: the offline message, then the disconnect; waits for them at most `wait`
    /// (a broker that is not there gets none: it has published the will already, or will).
    pub(crate) fn stop(mut self, wait: Duration) {
        self.finish(wait);
    }

    fn finish(&mut self, wait: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let until = Instant::now() + wait;
        let mut st = self.shared.lock();
        st.stopping = true;
        if st.connected {
            self.publisher.goodbye(&mut st);
        }
        self.shared.changed.notify_all();
        while !st.exited {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let exited = st.exited;
        drop(st);
        if exited {
            let _ = thread.join();
        } else {
            // Inside a connect attempt: it ends with it (at most `timeout`); the process
            // usually ends first, and the broker then has the will.
            log::debug!(
                "the presence connection is still busy; its thread ends when its current network operation does"
            );
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.finish(DROP_WAIT);
    }
}

/// The presence thread's side.
struct Driver {
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    describe: Describe,
    backoff: Backoff,
}

impl Driver {
    /// Drives the connection until the goodbye went out or a stop finds it down.
    fn run(self, mut connection: Connection) {
        let mut jitter = Jitter::new();
        let mut failures = 0u32;
        loop {
            let event = connection.recv();
            let mut st = self.shared.lock();
            match event {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    self.connected(&mut st, failures);
                    failures = 0;
                }
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    st.connected = false;
                    st.published = None;
                    if st.stopping {
                        break;
                    }
                    failures = failures.saturating_add(1);
                    let text = describe_error(&error, &self.describe);
                    if failures == 1 {
                        log::warn!(
                            "presence on {}: {text}; retrying in the background (records are not held up by it)",
                            self.describe.url
                        );
                    } else {
                        log::debug!("presence: {text}");
                    }
                    let wait = self.backoff.wait(failures, &mut jitter);
                    st = self.pause(st, Instant::now() + wait);
                    if st.stopping {
                        break;
                    }
                }
                Err(_) => break,
            }
            self.shared.changed.notify_all();
        }
        let mut st = self.shared.lock();
        st.connected = false;
        st.exited = true;
        self.shared.changed.notify_all();
    }

    /// A new connection: the latest state goes out at once (or the goodbye, when stopping).
    fn connected(&self, st: &mut State, failures: u32) {
        st.connected = true;
        if failures > 0 {
            log::info!(
                "presence: connected to {} again; {} is up to date",
                self.describe.url,
                self.publisher.identity.topic
            );
        } else {
            log::info!(
                "presence: retained on {} at {}, last will offline",
                self.publisher.identity.topic,
                self.describe.url
            );
        }
        if st.stopping {
            self.publisher.goodbye(st);
        } else {
            self.publisher.online(st);
        }
    }

    /// Waits until `until` or a stop, whichever is first.
    fn pause<'a>(&self, mut st: MutexGuard<'a, State>, until: Instant) -> MutexGuard<'a, State> {
        while !st.stopping {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            topic: presence_topic("rack/a12"),
            agent: "rack/a12".into(),
            started_at: "2026-12-04T10:00:00.000Z".into(),
        }
    }

    #[test]
    fn the_topic_is_the_agents_own_level_under_rackhand() {
        assert_eq!(presence_topic("rack-a12"), "rackhand/rack-a12/status");
        assert_eq!(presence_topic("a/b#"), "rackhand/a_b_/status");
        assert!(presence_collides(
            "rackhand/{agent}/{device}",
            "a",
            "status"
        ));
        assert!(!presence_collides(
            "rackhand/{agent}/{device}",
            "a",
            "core1"
        ));
        assert!(!presence_collides("site/{agent}/{device}", "a", "status"));
    }

    #[test]
    fn online_and_offline_messages_carry_what_a_fleet_view_needs() {
        let id = identity();
        let online: serde_json::Value = serde_json::from_slice(&id.online(&PresenceReport {
            devices: DeviceCounts {
                total: 3,
                ok: 2,
                failing: 1,
            },
            led: "degraded",
        }))
        .unwrap();
        assert_eq!(online["state"], "online");
        assert_eq!(online["agent"], "rack/a12");
        assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(online["started_at"], "2026-12-04T10:00:00.000Z");
        assert_eq!(
            online["devices"],
            serde_json::json!({"total": 3, "ok": 2, "failing": 1})
        );
        assert_eq!(online["led"], "degraded");
        let text = String::from_utf8(id.online(&PresenceReport {
            devices: DeviceCounts::default(),
            led: "starting",
        }))
        .unwrap();
        assert!(text.starts_with(r#"{"state":"online","#), "{text}");

        let will: serde_json::Value =
            serde_json::from_slice(&id.offline("connection_lost")).unwrap();
        assert_eq!(will["state"], "offline");
        assert_eq!(will["reason"], "connection_lost");
        assert!(will.get("stopped_at").is_none() && will.get("led").is_none());
        let stopped: serde_json::Value = serde_json::from_slice(&id.offline("stopped")).unwrap();
        assert_eq!(stopped["reason"], "stopped");
        assert!(
            stopped["stopped_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
    }

    #[test]
    fn a_presence_whose_broker_is_down_stops_promptly_and_quietly() {
        let config = MqttConfig {
            broker: "mqtt://127.0.0.1:9".into(),
            topic: "rackhand/{agent}/{device}".into(),
            agent: "a".into(),
            client_id: "rackhand-a".into(),
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(1),
            keep_alive: super::super::KEEP_ALIVE,
            backoff: Backoff::default(),
            max_packet_size: crate::inventory::MQTT_PACKET_SIZE_MAX,
            dead_letter_dir: std::env::temp_dir(),
            dead_letter_max_bytes: super::super::dead_letter::MAX_BYTES,
        };
        let report = PresenceReport {
            devices: DeviceCounts::default(),
            led: "starting",
        };
        let presence = Presence::start(&config, SystemTime::now(), report.clone()).unwrap();
        assert_eq!(presence.publisher.identity.topic, "rackhand/a/status");
        // Offers never block, connected or not.
        for _ in 0..100 {
            presence.offer(report.clone());
        }
        let t = Instant::now();
        presence.stop(Duration::from_secs(3));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}

//! The `mqtt` sink: every record of a batch is one QoS 1 PUBLISH of its JSON to a broker, and
//! the batch counts as shipped only once the broker sent a PUBACK for each of them.
//!
//! It exists for sites whose collector already listens on an MQTT broker (Mosquitto, EMQX,
//! a cloud IoT hub): the agent then needs no HTTP endpoint, and each device's records land on
//! a topic of their own, `topic` in `[upstream]` with `{agent}` and `{device}` replaced per
//! record (default `rackhand/{agent}/{device}`). A value put in place of a placeholder never
//! changes the topic's shape: `/`, `+`, `#` and NUL (a level separator, the wildcards and a
//! character MQTT forbids) become `_`, an empty value becomes `_`, and a value is cut at
//! 1024 bytes. So device `sw/1#a` publishes to `rackhand/rack-a12/sw_1_a`.
//!
//! # How delivery is guaranteed
//! rumqttc's `publish()` returns once the message is queued, not once the broker has it. So a
//! dedicated thread drives the connection (`Connection::recv`) and notes, per connection, the
//! packet id of every PUBLISH that went out and every PUBACK that came back;
//! [`MqttSink::send`] returns `Ok` only when as many PUBLISHes as the batch has records went
//! out on one connection and none of them awaits its PUBACK. Anything else (the connection
//! drops, the broker restarts, it stops acknowledging within `timeout`) fails the attempt,
//! and the next attempt publishes the *whole* batch again on a fresh connection: the broker
//! may have lost its session (a restart without persistence drops every unacknowledged
//! message), so resuming rumqttc's own in-flight queue is not enough, and what rumqttc kept
//! from the old connection is thrown away before reconnecting. Records of a failed attempt
//! may so reach subscribers twice; none is lost (at-least-once; receivers dedupe by `id`).
//! The session is not clean (`clean_session = false`) and the client id fixed (`client_id`,
//! default `rackhand-<agent id>`), so the broker recognises the agent across reconnects.
//!
//! # Records larger than the broker takes
//! A broker drops the connection on a packet over its limit (MQTT 3.1.1 has no way to say
//! why), so publishing such a record again would fail forever and block every record behind
//! it. The broker's limit is configured as `max_packet_size`; a record whose PUBLISH (fixed
//! header, topic, packet id, payload) would pass it is not published: once the rest of the
//! batch is acknowledged it goes whole to the dead-letter file (`super::dead_letter`) and is
//! reported as rejected.
//!
//! # Connecting and waiting
//! [`MqttSink::new`] checks the URL, topic template, credentials and CA file, and starts the
//! connection thread, but connects lazily: at the first [`MqttSink::send`], so an agent starts
//! (and spools) while the broker is down. After a failed attempt the next waits with
//! [`Backoff`] (full jitter, 1 s → 60 s by default) in [`StopFlag::wait_until`]; the
//! connection thread never reconnects by itself, only when an attempt asks, so a dead broker
//! is never hammered. One attempt (connect, publish, PUBACKs) never outlasts `timeout` nor
//! `until`; while it waits for the broker it looks at the stop flag at least every 50 ms.
//! Dropping the sink closes the connection and ends its thread.
//!
//! # Where things are
//! This file holds the config, the errors and the sink (batches in, retries with backoff,
//! refused records to the dead-letter file); `connection.rs` the connection thread and the
//! state it shares with the sink (PUBLISHes and PUBACKs per connection); `attempt.rs` one
//! attempt (a clean connection, publish, every PUBACK); `options.rs` the broker URL,
//! credentials and TLS; `packet.rs` topics and the PUBLISH size; `presence.rs` the agent's
//! retained `rackhand/<agent id>/status` message and its last will, on a connection of its
//! own so it never holds a batch up.

mod attempt;
mod connection;
mod options;
mod packet;
mod presence;

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::Client;

use super::dead_letter::{self, DeadLetterError, DeadLetters, Refusal, Refuser};
pub use super::{Backoff, Retry, StopFlag};
use super::{Jitter, Shipped};
use crate::batch::Batch;
use crate::config::Secret;
use crate::config::url::redact;
use crate::inventory::{MQTT_PACKET_SIZE_MAX, MQTT_PACKET_SIZE_MIN, Upstream};
use attempt::Failure;
use connection::{Describe, Shared, State, drive};
pub use packet::publish_packet_size;
use packet::{check_topic, render_topic};
pub(crate) use presence::{DeviceCounts, Presence, PresenceReport, presence_collides};

/// What the sink needs, resolved from `[upstream]` and the agent id.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (1883 by default) or `mqtts://host[:port]` (8883).
    pub broker: String,
    /// The topic template: `{agent}` and `{device}` are replaced per record.
    pub topic: String,
    /// The agent id: the default client id, and `{agent}` for a record that lacks the field.
    pub agent: String,
    /// MQTT client id, fixed so the broker keeps the session across reconnects.
    pub client_id: String,
    pub username: Option<String>,
    /// Read when the sink is built; `Debug` never shows it.
    pub password: Option<Secret>,
    /// PEM file with the CA certificate(s) to trust instead of the bundled Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// The longest one attempt may take: connect, publish, every PUBACK.
    pub timeout: Duration,
    /// MQTT keep-alive: a silent dead connection is noticed within about twice this.
    pub keep_alive: Duration,
    pub backoff: Backoff,
    /// The largest PUBLISH packet the broker takes, in bytes (`max_packet_size`); a record
    /// whose packet would be larger is dead-lettered instead of published.
    pub max_packet_size: usize,
    /// Where `dead-letter.ndjson` goes (the agent passes its `state_dir`).
    pub dead_letter_dir: PathBuf,
    /// Where the dead-letter file rotates (see `super::dead_letter`).
    pub dead_letter_max_bytes: u64,
}

/// The broker URL is shown redacted (the password is a [`Secret`], redacted by itself).
impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker", &redact(&self.broker))
            .field("topic", &self.topic)
            .field("agent", &self.agent)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("keep_alive", &self.keep_alive)
            .field("backoff", &self.backoff)
            .field("max_packet_size", &self.max_packet_size)
            .field("dead_letter_dir", &self.dead_letter_dir)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .finish()
    }
}

/// The keep-alive unless set otherwise (`keep_alive` in `[upstream]`): cheap on a cellular
/// uplink, and a half-open connection is noticed within a minute.
pub const KEEP_ALIVE: Duration = crate::inventory::defaults::MQTT_KEEP_ALIVE;
/// Requests queued to the connection thread at most; more wait for room.
const QUEUE: usize = 256;

impl MqttConfig {
    /// From `[upstream]`: `target` is the broker URL; the client id defaults to
    /// `rackhand-<agent_id>`; the dead-letter file goes to `dead_letter_dir`.
    pub fn from_upstream(
        upstream: &Upstream,
        agent_id: &str,
        dead_letter_dir: &Path,
    ) -> MqttConfig {
        MqttConfig {
            broker: upstream.target.clone(),
            topic: upstream.topic.clone(),
            agent: agent_id.to_string(),
            client_id: upstream
                .client_id
                .clone()
                .unwrap_or_else(|| format!("rackhand-{agent_id}")),
            username: upstream.username.clone(),
            password: upstream.password.clone(),
            ca_file: upstream.ca_file.clone(),
            timeout: upstream.timeout,
            keep_alive: upstream.keep_alive,
            backoff: Backoff::default(),
            max_packet_size: upstream.max_packet_size,
            dead_letter_dir: dead_letter_dir.to_path_buf(),
            dead_letter_max_bytes: dead_letter::MAX_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttSinkError {
    #[error(
        "[upstream] broker `{url}` is not usable ({detail}); write it as mqtt://host[:port] or mqtts://host[:port]"
    )]
    BadUrl { url: String, detail: String },
    #[error("[upstream] topic `{topic}` for broker {url} is not usable: {detail}")]
    BadTopic {
        topic: String,
        url: String,
        detail: String,
    },
    #[error(
        "[upstream] client_id for broker {url} is empty; remove it (the default is rackhand-<agent id>) or name one"
    )]
    EmptyClientId { url: String },
    #[error("[upstream] credentials for broker {url}: {detail}")]
    BadCredentials { url: String, detail: String },
    #[error(
        "cannot read the CA file {path} for broker {url}: {error}; check ca_file in [upstream] and that the agent may read it"
    )]
    CaFileRead {
        path: PathBuf,
        url: String,
        error: io::Error,
    },
    #[error(
        "the CA file {path} for broker {url} {detail}; it must hold the broker's CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)"
    )]
    CaFileInvalid {
        path: PathBuf,
        url: String,
        detail: String,
    },
    #[error(
        "[upstream] max_packet_size for broker {url} is {size} bytes; it must be from {MQTT_PACKET_SIZE_MIN} to {MQTT_PACKET_SIZE_MAX} (MQTT's largest packet): set it to the broker's limit"
    )]
    BadMaxPacketSize { url: String, size: usize },
    #[error("cannot start the connection thread for broker {url}: {error}")]
    Thread { url: String, error: io::Error },
    #[error(
        "batch {key} to {url} not delivered: stopped after {attempts} attempt(s) (last: {last}); it stays in the spool and is sent again later"
    )]
    Stopped {
        url: String,
        key: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "batch {key} to {url} not delivered before its deadline, {attempts} attempt(s) (last: {last}); it stays in the spool and is sent again"
    )]
    DeadlineReached {
        url: String,
        key: String,
        attempts: u32,
        last: String,
    },
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
}

pub struct MqttSink {
    config: MqttConfig,
    dead_letters: DeadLetters,
    host: String,
    client: Client,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    jitter: Jitter,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("broker", &redact(&self.config.broker))
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl MqttSink {
    /// Checks the URL, topic, credentials and CA file now, so a mistake shows at start, and
    /// starts the (idle) connection thread; the first [`MqttSink::send`] connects.
    pub fn new(config: MqttConfig) -> Result<MqttSink, MqttSinkError> {
        let url = redact(&config.broker).into_owned();
        check_topic(&config.topic, &url)?;
        if config.client_id.is_empty() {
            return Err(MqttSinkError::EmptyClientId { url });
        }
        if !(MQTT_PACKET_SIZE_MIN..=MQTT_PACKET_SIZE_MAX).contains(&config.max_packet_size) {
            return Err(MqttSinkError::BadMaxPacketSize {
                url,
                size: config.max_packet_size,
            });
        }
        let (options, host) = options::options(&config, &url)?;
        let (client, mut connection) = Client::new(options, QUEUE);
        let mut network = connection.eventloop.network_options();
        network.set_connection_timeout(config.timeout.as_secs_f64().ceil().max(1.0) as u64);
        connection.eventloop.set_network_options(network);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let describe = Describe {
                url: url.clone(),
                client_id: config.client_id.clone(),
                timeout: config.timeout,
            };
            std::thread::Builder::new()
                .name("mqtt-sink".into())
                .spawn(move || drive(connection, &shared, &describe))
                .map_err(|error| MqttSinkError::Thread {
                    url: url.clone(),
                    error,
                })?
        };
        Ok(MqttSink {
            dead_letters: DeadLetters::new(&config.dead_letter_dir, config.dead_letter_max_bytes),
            config,
            host,
            client,
            shared,
            thread: Some(thread),
            jitter: Jitter::new(),
        })
    }

    pub fn config(&self) -> &MqttConfig {
        &self.config
    }

    /// The broker's host, as connected to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Publishes every record of `batch` until the broker acknowledged each, `until` passes
    /// or `stop` is raised; `observe` hears of every failed attempt before its wait. Records
    /// over `max_packet_size` are not published but dead-lettered, once the others are
    /// acknowledged (so a send that ends early writes no entry the next one writes again).
    pub fn send(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<Shipped, MqttSinkError> {
        let (messages, refused) = self.messages(batch);
        let attempts = if messages.is_empty() {
            0
        } else {
            self.publish_all(batch, &messages, until, stop, observe)?
        };
        let refuser = Refuser {
            sink: "mqtt",
            target: &redact(&self.config.broker),
        };
        let rejected = self.dead_letters.write(refuser, &refused)?;
        Ok(Shipped { attempts, rejected })
    }

    /// Publishes `messages` (of `batch`) until every PUBACK is in; returns the attempts taken.
    fn publish_all(
        &mut self,
        batch: &Batch,
        messages: &[(String, Vec<u8>)],
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<u32, MqttSinkError> {
        let key = batch.idempotency_key().to_string();
        let mut attempts = 0u32;
        let mut last = String::from("no attempt made");
        loop {
            if stop.is_stopped() {
                return Err(self.not_delivered(true, &key, attempts, last));
            }
            if Instant::now() >= until {
                return Err(self.not_delivered(false, &key, attempts, last));
            }
            attempts += 1;
            let error = match self.attempt(messages, until, stop) {
                Ok(()) => {
                    log::debug!(
                        "batch {key} ({} records, seq {}-{}) acknowledged by {} after {attempts} attempt(s)",
                        messages.len(),
                        batch.first_seq(),
                        batch.last_seq(),
                        redact(&self.config.broker)
                    );
                    return Ok(attempts);
                }
                Err(Failure::Stopped(error)) => {
                    return Err(self.not_delivered(true, &key, attempts, error));
                }
                Err(Failure::Deadline(error)) => {
                    return Err(self.not_delivered(false, &key, attempts, error));
                }
                Err(Failure::Retry(error)) => error,
            };
            let ceiling = self.config.backoff.ceiling(attempts);
            let wait = self.config.backoff.wait(attempts, &mut self.jitter);
            let retry = Retry {
                attempt: attempts,
                error,
                status: None,
                ceiling,
                retry_after: None,
                wait,
            };
            log::warn!(
                "batch {key}: attempt {attempts} failed: {}; retrying in {:.1}s",
                retry.error,
                wait.as_secs_f64()
            );
            observe(&retry);
            last = retry.error;
            let next = Instant::now() + wait;
            if stop.wait_until(next.min(until)) {
                return Err(self.not_delivered(true, &key, attempts, last));
            }
            if next > until {
                return Err(self.not_delivered(false, &key, attempts, last));
            }
        }
    }

    /// The batch as (topic, payload) pairs, one per NDJSON line without its newline, and the
    /// records whose PUBLISH would be over `max_packet_size`, one refusal each.
    fn messages<'b>(&self, batch: &'b Batch) -> (Vec<(String, Vec<u8>)>, Vec<Refusal<'b>>) {
        let key = batch.idempotency_key();
        let mut messages = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (i, line) in batch.lines().enumerate() {
            let payload = line.line.strip_suffix(b"\n").unwrap_or(line.line);
            if payload.is_empty() {
                continue;
            }
            let topic = self.topic_of(payload, key);
            let size = publish_packet_size(topic.len(), payload.len());
            if size > self.config.max_packet_size {
                refused.push(Refusal {
                    part: Cow::Owned(batch.part(i..i + 1)),
                    status: None,
                    reason: format!(
                        "record seq {} is a {size}-byte PUBLISH on {topic}, over max_packet_size ({} bytes) for {}",
                        line.seq, self.config.max_packet_size, redact(&self.config.broker)
                    ),
                    response: None,
                });
            } else {
                messages.push((topic, payload.to_vec()));
            }
        }
        (messages, refused)
    }

    /// The topic of one record, from its `agent` and `device` fields.
    fn topic_of(&self, line: &[u8], key: &str) -> String {
        #[derive(serde::Deserialize)]
        struct Fields {
            agent: Option<String>,
            device: Option<String>,
        }
        let (agent, device) = match serde_json::from_slice::<Fields>(line) {
            Ok(f) => (f.agent, f.device),
            Err(e) => {
                log::warn!(
                    "a record of batch {key} is not the JSON object expected ({e}); it is published with `_` for its device"
                );
                (None, None)
            }
        };
        let agent = agent.unwrap_or_else(|| self.config.agent.clone());
        render_topic(&self.config.topic, &agent, device.as_deref().unwrap_or(""))
    }

    fn not_delivered(
        &self,
        stopped: bool,
        key: &str,
        attempts: u32,
        last: String,
    ) -> MqttSinkError {
        let (url, key) = (redact(&self.config.broker).into_owned(), key.to_string());
        if stopped {
            MqttSinkError::Stopped {
                url,
                key,
                attempts,
                last,
            }
        } else {
            MqttSinkError::DeadlineReached {
                url,
                key,
                attempts,
                last,
            }
        }
    }
}
impl Drop for MqttSink {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
            st.close = true;
            self.shared.changed.notify_all();
        }
        // An event wakes a thread blocked on an idle connection; a thread still connecting
        // ends when that attempt does (at most `timeout`).
        let _ = self.client.try_disconnect();
        let limit = Instant::now() + self.config.timeout.min(Duration::from_secs(5));
        let mut st = self.shared.lock();
        while !st.exited {
            let left = limit.saturating_duration_since(Instant::now());
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
        match self.thread.take() {
            Some(thread) if exited => {
                let _ = thread.join();
            }
            Some(_) => log::warn!(
                "the connection thread for {} is still busy; it ends by itself when its current network operation does",
                redact(&self.config.broker)
            ),
            None => {}
        }
    }
}

impl super::Sink for MqttSink {
    fn ship(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<super::Shipped, super::SinkError> {
        Ok(self.send(batch, until, stop, observe)?)
    }

    fn describe(&self) -> String {
        format!("mqtt {}", redact(&self.config.broker))
    }
}

#[cfg(test)]
mod tests {
    use super::options::parse_broker;
    use super::packet::TOPIC_VALUE_MAX;
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn placeholders_become_one_safe_topic_level_each() {
        let t = "rackhand/{agent}/{device}";
        assert_eq!(
            render_topic(t, "rack-a12", "core1"),
            "rackhand/rack-a12/core1"
        );
        assert_eq!(render_topic(t, "a", "sw/1#a+b"), "rackhand/a/sw_1_a_b");
        assert_eq!(render_topic(t, "a", ""), "rackhand/a/_");
        assert_eq!(render_topic(t, "{device}", "d"), "rackhand/{device}/d");
        assert_eq!(render_topic("x/{other}/{device}", "a", "d"), "x/{other}/d");
        assert_eq!(render_topic("{device}{", "a", "d"), "d{");
        let long = "é".repeat(TOPIC_VALUE_MAX);
        assert_eq!(render_topic("{device}", "a", &long).len(), TOPIC_VALUE_MAX);
    }

    #[test]
    fn broker_urls_give_tls_host_and_port() {
        let ok = |u: &str| parse_broker(u).unwrap();
        assert_eq!(
            ok("mqtt://127.0.0.1:1884"),
            (false, "127.0.0.1".into(), 1884)
        );
        assert_eq!(ok("mqtt://broker.lan"), (false, "broker.lan".into(), 1883));
        assert_eq!(ok("mqtts://broker.lan/"), (true, "broker.lan".into(), 8883));
        assert_eq!(ok("mqtts://[::1]:9883"), (true, "::1".into(), 9883));
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://u:p@x",
            "mqtt://x:0",
            "mqtt://x:port",
            "mqtt://x/topic",
            "mqtts://[::1",
        ] {
            let err = parse_broker(bad).unwrap_err().to_string();
            let shown = redact(bad);
            assert!(
                err.contains(&*shown) && err.contains("mqtt://host"),
                "{err}"
            );
        }
        let err = parse_broker("mqtt://u:p@x").unwrap_err().to_string();
        assert!(
            err.contains("mqtt://***@x") && !err.contains("u:p"),
            "{err}"
        );
    }

    #[test]
    fn a_template_with_wildcards_or_reserved_prefix_is_refused() {
        assert!(check_topic("rackhand/{agent}/{device}", "u").is_ok());
        for bad in ["", "a/+/{device}", "a/#", "$SYS/{device}"] {
            assert!(check_topic(bad, "u").is_err(), "{bad}");
        }
    }

    fn config() -> MqttConfig {
        MqttConfig {
            broker: "mqtt://127.0.0.1:9".into(),
            topic: "rackhand/{agent}/{device}".into(),
            agent: "a".into(),
            client_id: "rackhand-a".into(),
            username: Some("u".into()),
            password: Some(Secret::inline("s3cret")),
            ca_file: None,
            timeout: Duration::from_secs(1),
            keep_alive: KEEP_ALIVE,
            backoff: Backoff::default(),
            max_packet_size: MQTT_PACKET_SIZE_MAX,
            dead_letter_dir: std::env::temp_dir(),
            dead_letter_max_bytes: dead_letter::MAX_BYTES,
        }
    }

    #[test]
    fn the_packet_size_is_the_one_rumqttc_checks_at_every_length_boundary() {
        for (topic, payload) in [
            (5, 0),
            (5, 118),
            (5, 119),
            (20, 16_357),
            (20, 16_358),
            (1, 2_097_146),
            (1, 2_097_147),
        ] {
            let mut publish =
                rumqttc::Publish::new("t".repeat(topic), QoS::AtLeastOnce, vec![b'x'; payload]);
            // rumqttc counts the packet id once it is assigned, as it is when sent.
            publish.pkid = 1;
            assert_eq!(
                publish_packet_size(topic, payload),
                publish.size(),
                "topic {topic}, payload {payload}"
            );
        }
    }

    #[test]
    fn a_max_packet_size_outside_what_mqtt_can_frame_is_refused() {
        for size in [0, MQTT_PACKET_SIZE_MIN - 1, MQTT_PACKET_SIZE_MAX + 1] {
            let err = MqttSink::new(MqttConfig {
                max_packet_size: size,
                ..config()
            })
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("max_packet_size") && err.contains("broker's limit"),
                "{err}"
            );
        }
    }

    #[test]
    fn debug_output_and_describe_never_show_the_password() {
        let sink = MqttSink::new(config()).unwrap();
        let text = format!("{:?} {:?}", sink.config(), sink);
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(
            super::super::Sink::describe(&sink),
            "mqtt mqtt://127.0.0.1:9"
        );
    }

    #[test]
    fn each_record_gets_the_topic_of_its_own_agent_and_device() {
        let sink = MqttSink::new(config()).unwrap();
        let line = br#"{"id":"x:1","agent":"rack-b","seq":1,"device":"pdu/2"}"#;
        assert_eq!(sink.topic_of(line, "k"), "rackhand/rack-b/pdu_2");
        assert_eq!(sink.topic_of(br#"{"seq":1}"#, "k"), "rackhand/a/_");
        assert_eq!(sink.topic_of(b"not json", "k"), "rackhand/a/_");
    }

    #[test]
    fn a_password_without_username_or_ca_file_without_tls_is_refused() {
        let mut c = config();
        c.username = None;
        let err = MqttSink::new(c).unwrap_err().to_string();
        assert!(err.contains("add username"), "{err}");
        let mut c = config();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let err = MqttSink::new(c).unwrap_err().to_string();
        assert!(err.contains("use mqtts://"), "{err}");
        let mut c = config();
        c.broker = "mqtts://127.0.0.1:9".into();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let err = MqttSink::new(c).unwrap_err().to_string();
        assert!(err.contains("cannot read the CA file"), "{err}");
    }
}

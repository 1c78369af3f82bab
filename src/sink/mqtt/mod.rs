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
//! [`MqttSink::ship`] returns `Ok` only when as many PUBLISHes as the batch has records went
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
//! connection thread, but connects lazily: at the first [`MqttSink::ship`], so an agent starts
//! (and spools) while the broker is down. After a failed attempt the next waits with
//! [`Backoff`] (full jitter, 1 s → 60 s by default) in [`StopFlag::wait_until`]; the
//! connection thread never reconnects by itself, only when an attempt asks, so a dead broker
//! is never hammered. One attempt (connect, publish, PUBACKs) never outlasts `timeout` nor
//! `until`; while it waits for the broker it looks at the stop flag at least every 50 ms.
//! Dropping the sink closes the connection and ends its thread.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ClientError, ConnectReturnCode, Connection, ConnectionError, Event, MqttOptions,
    Outgoing, Packet, QoS, StateError, TlsConfiguration, Transport,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::dead_letter::{self, DeadLetterError, DeadLetters, Refusal, Refuser};
pub use super::{Backoff, Retry, StopFlag};
use super::{Jitter, Shipped};
use crate::batch::Batch;
use crate::config::Secret;
use crate::config::url::redact;
use crate::inventory::{MQTT_PACKET_SIZE_MAX, MQTT_PACKET_SIZE_MIN, Upstream};

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

/// The keep-alive unless set otherwise: cheap on a cellular uplink, and a half-open
/// connection is noticed within a minute.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// The longest text put in place of `{agent}` or `{device}` (MQTT topics end at 64 KiB).
pub const TOPIC_VALUE_MAX: usize = 1024;
/// The largest packet accepted from the broker: it only sends CONNACK, PUBACK and PINGRESP.
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// How often a wait for the broker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
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
            keep_alive: KEEP_ALIVE,
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

/// Where the connection thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection; waits for `go`.
    Idle,
    /// Connecting (TCP, TLS, CONNECT/CONNACK).
    Connecting,
    /// CONNACK received.
    Connected,
}

/// What the sink and its connection thread share, under one mutex.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// Set by the sink: connect now (the thread is `Idle`).
    go: bool,
    /// Set by the sink: drop the connection at the next event (it may carry stale requests).
    close: bool,
    /// Set by `Drop`: close and end the thread.
    shutdown: bool,
    /// CONNACKs so far: one number per connection.
    generation: u64,
    /// Connections (or attempts to connect) that ended so far, and why the last one did:
    /// `None` when the sink asked for it.
    ended: u64,
    last_error: Option<String>,
    /// PUBLISHes sent on the current connection.
    published: u64,
    /// Their packet ids still awaiting a PUBACK.
    unacked: HashSet<u16>,
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

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt after the backoff.
    Retry(String),
    Stopped(String),
    Deadline(String),
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
    /// starts the (idle) connection thread; the first [`MqttSink::ship`] connects.
    pub fn new(config: MqttConfig) -> Result<MqttSink, MqttSinkError> {
        let (tls, host, port) = parse_broker(&config.broker)?;
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
        let mut options = MqttOptions::new(config.client_id.clone(), host.clone(), port);
        options
            .set_clean_session(false)
            .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
            // rumqttc refuses to send a larger packet too (and drops the connection): the
            // sink never asks it to, as such records are dead-lettered instead.
            .set_max_packet_size(MAX_INCOMING_PACKET, config.max_packet_size)
            .set_request_channel_capacity(QUEUE);
        let password = match &config.password {
            None => None,
            Some(secret) => Some(secret.expose().ok_or_else(|| MqttSinkError::BadCredentials {
                url: url.clone(),
                detail: format!(
                    "the password comes from {}, which is not set in the agent's environment",
                    secret.describe()
                ),
            })?),
        };
        match (&config.username, password) {
            (Some(user), pw) => {
                options.set_credentials(user.clone(), pw.unwrap_or_default());
            }
            (None, Some(_)) => {
                return Err(MqttSinkError::BadCredentials {
                    url,
                    detail: "a password without a username (MQTT 3.1.1 sends none); add username to [upstream]".into(),
                });
            }
            (None, None) => {}
        }
        if tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(&config, &url)?,
            )));
        } else if let Some(path) = &config.ca_file {
            return Err(MqttSinkError::BadUrl {
                url,
                detail: format!(
                    "ca_file {} is set but mqtt:// does not use TLS: use mqtts:// to talk TLS with the broker, or remove ca_file",
                    path.display()
                ),
            });
        }
        let (client, mut connection) = Client::new(options, QUEUE);
        let mut network = connection.eventloop.network_options();
        network.set_connection_timeout(config.timeout.as_secs_f64().ceil().max(1.0) as u64);
        connection.eventloop.set_network_options(network);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
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
            }),
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

    /// One attempt: a usable connection, every record published on it, every PUBACK back.
    fn attempt(
        &mut self,
        records: &[(String, Vec<u8>)],
        until: Instant,
        stop: &StopFlag,
    ) -> Result<(), Failure> {
        let url = redact(&self.config.broker).into_owned();
        let timeout = self.config.timeout;
        let deadline = (Instant::now() + timeout).min(until);
        let expired = |what: String| {
            if deadline >= until {
                Failure::Deadline(what)
            } else {
                Failure::Retry(what)
            }
        };
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();

        // 1. A connection that carries nothing of an earlier attempt.
        let mut seen = st.ended;
        let generation = loop {
            if st.phase == Phase::Connected && !st.close {
                break st.generation;
            }
            if st.ended != seen {
                seen = st.ended;
                if let Some(error) = st.last_error.clone() {
                    return Err(Failure::Retry(error));
                }
            }
            if st.phase == Phase::Idle && !st.go {
                st.go = true;
                shared.changed.notify_all();
            }
            st = match wait(&shared, st, deadline, stop) {
                Ok(st) => st,
                Err(true) => return Err(Failure::Stopped(format!("connecting to {url}"))),
                Err(false) => {
                    return Err(expired(format!(
                        "{url} did not accept the connection within {:.1}s; the broker is slow or unreachable",
                        timeout.as_secs_f64()
                    )));
                }
            };
        };
        let base = st.published;
        let lost = |st: &State| st.generation != generation || st.phase != Phase::Connected;
        let lost_error = |st: &State| {
            st.last_error
                .clone()
                .unwrap_or_else(|| format!("the connection to {url} closed"))
        };

        // 2. Publish; the connection thread takes QUEUE requests at a time.
        let n = records.len() as u64;
        let mut queued = 0;
        let failure = 'publish: {
            while queued < records.len() {
                if lost(&st) {
                    break 'publish Failure::Retry(lost_error(&st));
                }
                let (topic, payload) = &records[queued];
                match self.client.try_publish(
                    topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                ) {
                    Ok(()) => {
                        queued += 1;
                        continue;
                    }
                    Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {}
                }
                st = match wait(&shared, st, deadline, stop) {
                    Ok(st) => st,
                    Err(stopped) => {
                        let what = format!(
                            "{url} took {queued} of {n} records within {:.1}s",
                            timeout.as_secs_f64()
                        );
                        st = shared.lock();
                        break 'publish if stopped {
                            Failure::Stopped(what)
                        } else {
                            expired(what)
                        };
                    }
                };
            }

            // 3. Every PUBACK.
            loop {
                if lost(&st) {
                    break 'publish Failure::Retry(lost_error(&st));
                }
                let sent = st.published - base;
                if sent >= n && st.unacked.is_empty() {
                    return Ok(());
                }
                st = match wait(&shared, st, deadline, stop) {
                    Ok(st) => st,
                    Err(stopped) => {
                        st = shared.lock();
                        let acked = (st.published - base).saturating_sub(st.unacked.len() as u64);
                        let what = format!(
                            "{url} acknowledged {acked} of {n} records within {:.1}s",
                            timeout.as_secs_f64()
                        );
                        break 'publish if stopped {
                            Failure::Stopped(what)
                        } else {
                            expired(what)
                        };
                    }
                };
            }
        };
        // Requests of this attempt may still sit in the queue: the next attempt must not
        // count them as its own, so this connection is dropped and the next one starts clean.
        if st.phase != Phase::Idle {
            st.close = true;
            shared.changed.notify_all();
            drop(st);
            let _ = self.client.try_disconnect();
        }
        Err(failure)
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

/// Waits for the connection thread to report something, at most until `deadline`, looking
/// at `stop` every [`STOP_POLL`]. `Err(true)` when stopped, `Err(false)` at the deadline
/// (the lock is then released).
fn wait<'a>(
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

/// What the connection thread needs to word its errors.
struct Describe {
    url: String,
    client_id: String,
    timeout: Duration,
}

/// The connection thread: connects when the sink asks, then reports every PUBLISH sent, every
/// PUBACK and how the connection ended, until the sink is dropped.
fn drive(mut connection: Connection, shared: &Shared, describe: &Describe) {
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
fn describe_error(error: &ConnectionError, d: &Describe) -> String {
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

/// The bytes of a QoS 1 PUBLISH of `payload_len` bytes on a topic of `topic_len` bytes: fixed
/// header (type byte and 1 to 4 bytes of remaining length), topic with its length, packet id,
/// payload. The size rumqttc and brokers compare with their limit.
pub fn publish_packet_size(topic_len: usize, payload_len: usize) -> usize {
    let remaining = 2 + topic_len + 2 + payload_len;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// `(tls, host, port)` of `mqtt://host[:port]` or `mqtts://host[:port]`; a trailing `/` is
/// allowed, a path, user info or query is not.
fn parse_broker(url: &str) -> Result<(bool, String, u16), MqttSinkError> {
    let bad = |detail: &str| MqttSinkError::BadUrl {
        url: redact(url).into_owned(),
        detail: detail.to_string(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("it needs an mqtt:// or mqtts:// scheme"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(bad(
            "credentials do not go in the URL; set username and password_env (or password_file) in [upstream]",
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(bad("MQTT has no path or query; give only host and port"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("after `]` only `:port` may follow"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let port = match port {
        None => {
            if tls {
                8883
            } else {
                1883
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        },
    };
    Ok((tls, host.to_string(), port))
}

/// The template must make a valid topic name whatever the placeholders become.
fn check_topic(template: &str, url: &str) -> Result<(), MqttSinkError> {
    let bad = |detail: &str| MqttSinkError::BadTopic {
        topic: template.to_string(),
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let fixed = template.replace("{agent}", "").replace("{device}", "");
    if template.is_empty() {
        return Err(bad("it is empty; the default is rackhand/{agent}/{device}"));
    }
    if fixed.contains(['+', '#']) {
        return Err(bad(
            "`+` and `#` are subscription wildcards, not allowed in a topic one publishes to",
        ));
    }
    if fixed.contains('\0') {
        return Err(bad("it holds a NUL character"));
    }
    if template.starts_with('$') {
        return Err(bad("topics starting with `$` belong to the broker ($SYS)"));
    }
    if template.len() > 32 * 1024 {
        return Err(bad("it is longer than 32 KiB"));
    }
    Ok(())
}

/// The template with `{agent}` and `{device}` replaced, each value made one safe topic level.
pub fn render_topic(template: &str, agent: &str, device: &str) -> String {
    let mut topic = String::with_capacity(template.len() + agent.len() + device.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        topic.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{agent}") {
            push_level(&mut topic, agent);
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{device}") {
            push_level(&mut topic, device);
            rest = after;
        } else {
            topic.push('{');
            rest = &tail[1..];
        }
    }
    topic.push_str(rest);
    topic
}

/// `value` as one topic level: `/`, `+`, `#` and NUL become `_`, empty becomes `_`, cut at
/// [`TOPIC_VALUE_MAX`] bytes.
fn push_level(topic: &mut String, value: &str) {
    if value.is_empty() {
        topic.push('_');
        return;
    }
    let mut len = 0;
    for c in value.chars() {
        len += c.len_utf8();
        if len > TOPIC_VALUE_MAX {
            break;
        }
        topic.push(if matches!(c, '/' | '+' | '#' | '\0') {
            '_'
        } else {
            c
        });
    }
}

fn tls_config(config: &MqttConfig, url: &str) -> Result<Arc<rustls::ClientConfig>, MqttSinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let invalid = |detail: String| MqttSinkError::CaFileInvalid {
                path: path.clone(),
                url: url.to_string(),
                detail,
            };
            let pem = fs::read(path).map_err(|error| MqttSinkError::CaFileRead {
                path: path.clone(),
                url: url.to_string(),
                error,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| invalid(format!("is not valid PEM ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("holds a certificate rustls cannot use ({e})")))?;
            }
            if roots.is_empty() {
                return Err(invalid("holds no certificate".into()));
            }
        }
    }
    // The provider is named here, not taken from the process default, so nothing else
    // (aws-lc, a second provider) can change what this sink uses.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

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

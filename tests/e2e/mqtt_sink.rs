//! The mqtt sink against a real Mosquitto on loopback (no persistence): what a subscribed
//! collector receives, and how the sink behaves when the broker is down, frozen, restarts
//! and forgets everything mid-stream, or limits the size of a packet. The broker, the subscriber and the relay standing for
//! the agent's uplink live in `support::mosquitto`; all stop in `Drop`.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use rackhand::batch::{Batch, BatchLimits, Batcher};
use rackhand::config::Secret;
use rackhand::record::{Outcome, Status};
use rackhand::sink::dead_letter;
use rackhand::sink::mqtt::{
    Backoff, KEEP_ALIVE, MqttConfig, MqttSink, MqttSinkError, Retry, publish_packet_size,
};
use rackhand::sink::{Rejected, Shipped, Sink, SinkError, StopFlag};

use support::mosquitto::{Message, Mosquitto, Relay, Subscriber};
use support::tls::{SERVER_CERT, SERVER_KEY, TEST_CA};
use support::{TempDir, deadline, released_loopback_port};

const AGENT: &str = "rack-a12";

/// A sink config for `url` with short waits: retries 50 ms → 400 ms.
fn config(url: &str) -> MqttConfig {
    MqttConfig {
        broker: url.to_string(),
        topic: "rackhand/{agent}/{device}".into(),
        agent: AGENT.into(),
        client_id: format!("rackhand-{AGENT}-{}", std::process::id()),
        username: None,
        password: None,
        ca_file: None,
        timeout: Duration::from_secs(5),
        keep_alive: KEEP_ALIVE,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
        },
        max_packet_size: rackhand::inventory::defaults::MQTT_MAX_PACKET_SIZE,
        // Only a test with a packet limit writes here, and it names a folder of its own.
        dead_letter_dir: std::env::temp_dir().join("rackhand-mqtt-sink-no-dead-letters"),
        dead_letter_max_bytes: dead_letter::MAX_BYTES,
    }
}

/// Records `first..first + n` of agent rack-a12 as one batch, the device of each from `device`.
fn batch(first: u64, n: u64, device: impl Fn(u64) -> String) -> Batch {
    batch_with_output(first, n, device, |seq| {
        format!("Cisco IOS Software, run {seq}\n")
    })
}

/// As [`batch`], the output of each record from `output`.
fn batch_with_output(
    first: u64,
    n: u64,
    device: impl Fn(u64) -> String,
    output: impl Fn(u64) -> String,
) -> Batch {
    let limits = BatchLimits {
        max_records: n as usize,
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(60),
        jitter: 0.0,
    };
    let mut batcher = Batcher::new(AGENT, limits, 0);
    let now = Instant::now();
    let mut closed = Vec::new();
    for seq in first..first + n {
        let record = Outcome {
            device: device(seq),
            transport: "ssh".into(),
            command: "show version".into(),
            status: Status::Ok,
            error: None,
            output: output(seq).into_bytes(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(12),
        }
        .into_record(AGENT, seq);
        closed.extend(batcher.push(seq, record.to_json().as_bytes(), now).unwrap());
    }
    assert_eq!(closed.len(), 1);
    closed.pop().unwrap()
}

fn core1(_: u64) -> String {
    "core1".into()
}

/// The record ids of a batch, read from its NDJSON.
fn ids(batch: &Batch) -> BTreeSet<String> {
    std::str::from_utf8(batch.body())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn received_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m.field("id").as_str().unwrap().to_string())
        .collect()
}

fn has_all(messages: &[Message], want: &BTreeSet<String>) -> bool {
    received_ids(messages).is_superset(want)
}

/// Ships `batch` on another thread, so the test can act while `ship` blocks. The thread hands
/// back the sink, the result and when it returned; every failed attempt is sent on `retries`.
type ShipResult = (MqttSink, Result<Shipped, SinkError>, Instant);

fn ship_in_background(
    mut sink: MqttSink,
    batch: Batch,
    until: Instant,
    stop: Arc<StopFlag>,
) -> (mpsc::Receiver<ShipResult>, mpsc::Receiver<Retry>) {
    let (done_tx, done_rx) = mpsc::channel();
    let (retry_tx, retry_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = sink.ship(&batch, until, &stop, &mut |r: &Retry| {
            let _ = retry_tx.send(r.clone());
        });
        let _ = done_tx.send((sink, result, Instant::now()));
    });
    (done_rx, retry_rx)
}

#[test]
fn a_batch_arrives_once_per_record_on_each_devices_topic_and_ship_waits_for_every_puback() {
    let dir = TempDir::new("mqtt-basic").unwrap();
    let mut broker = Mosquitto::start(dir.path()).unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let mut sink = MqttSink::new(config(&broker.url())).unwrap();
    assert_eq!(sink.describe(), format!("mqtt {}", broker.url()));

    // A device name with a level separator and both wildcards still makes one plain level.
    let first = batch(1, 24, |seq| {
        if seq % 2 == 0 { "core1" } else { "sw/1#a+b" }.to_string()
    });
    let stop = StopFlag::new();
    let shipped = sink
        .ship(&first, deadline(Duration::from_secs(20)), &stop, &mut |r| {
            panic!("no retry expected: {r:?}")
        })
        .unwrap();
    assert_eq!(
        shipped,
        Shipped {
            attempts: 1,
            rejected: Vec::new()
        }
    );

    let want = ids(&first);
    assert!(
        subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)),
        "the subscriber got {:?}; broker log:\n{}",
        received_ids(&subscriber.messages()),
        broker.log()
    );
    let lines: Vec<&str> = std::str::from_utf8(first.body()).unwrap().lines().collect();
    for m in subscriber.messages() {
        let seq = m.field("seq").as_u64().unwrap();
        let topic = if seq % 2 == 0 {
            "rackhand/rack-a12/core1"
        } else {
            "rackhand/rack-a12/sw_1_a_b"
        };
        assert_eq!(m.topic, topic, "record {seq}");
        assert_eq!(
            m.payload,
            lines[(seq - 1) as usize].as_bytes(),
            "the payload is the record's line"
        );
    }

    // A frozen broker takes the PUBLISHes (the kernel buffers them) but acknowledges none:
    // ship must not return before it thaws.
    broker.freeze().unwrap();
    let second = batch(25, 10, core1);
    let (done, _retries) = ship_in_background(
        sink,
        second.clone(),
        deadline(Duration::from_secs(20)),
        StopFlag::new(),
    );
    assert!(
        matches!(
            done.recv_timeout(Duration::from_millis(700)),
            Err(RecvTimeoutError::Timeout)
        ),
        "ship returned while the broker could not acknowledge anything"
    );
    let thawed = Instant::now();
    broker.thaw().unwrap();
    let (_sink, result, returned) = done
        .recv_timeout(Duration::from_secs(20))
        .expect("ship returned");
    assert!(returned > thawed);
    assert_eq!(
        result.unwrap().attempts,
        1,
        "PUBACKs after a thaw complete the same attempt"
    );
    let want = ids(&second);
    assert!(subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)));
}

#[test]
fn a_broker_down_at_first_is_retried_with_growing_backoff_until_it_is_up() {
    let dir = TempDir::new("mqtt-late").unwrap();
    let broker_port = released_loopback_port().unwrap().port();
    // The agent reaches the broker through its uplink, which refuses connections until the
    // broker is up and the collector subscribed (so nothing is published into the void).
    let mut uplink = Relay::start(([127, 0, 0, 1], broker_port).into(), false).unwrap();
    let sink = MqttSink::new(config(&uplink.url())).unwrap();
    let records = batch(1, 5, core1);
    let started = Instant::now();
    let (done, retries) = ship_in_background(
        sink,
        records.clone(),
        deadline(Duration::from_secs(30)),
        StopFlag::new(),
    );

    let mut seen: Vec<Retry> = Vec::new();
    while seen.len() < 4 {
        seen.push(
            retries
                .recv_timeout(Duration::from_secs(10))
                .expect("a failed attempt is reported"),
        );
    }
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.attempt, i as u32 + 1);
        assert!(
            r.error.contains("refused") && r.error.contains(&uplink.url()),
            "{}",
            r.error
        );
        let ceiling = Duration::from_millis(50 * (1 << i)).min(Duration::from_millis(400));
        assert_eq!(r.ceiling, ceiling);
        assert!(
            r.wait >= Duration::from_millis(5) && r.wait <= ceiling,
            "{r:?}"
        );
        assert_eq!(r.status, None);
    }
    assert!(
        started.elapsed() >= seen.iter().take(3).map(|r| r.wait).sum(),
        "the sink waited between attempts"
    );

    let broker = Mosquitto::start_on(dir.path(), broker_port, "").unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    uplink.open().unwrap();
    let (_sink, result, _) = done
        .recv_timeout(Duration::from_secs(20))
        .expect("ship returned");
    let shipped = result.unwrap();
    assert!(shipped.attempts >= 5, "{shipped:?}");
    let want = ids(&records);
    assert!(
        subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)),
        "got {:?}",
        received_ids(&subscriber.messages())
    );
}

#[test]
fn a_broker_restart_without_persistence_mid_stream_loses_no_record() {
    let dir = TempDir::new("mqtt-restart").unwrap();
    let mut broker = Mosquitto::start(dir.path()).unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let mut uplink = Relay::start(broker.addr(), true).unwrap();
    let mut sink = MqttSink::new(config(&uplink.url())).unwrap();
    let stop = StopFlag::new();

    // The stream flows: three batches, each acknowledged and seen by the collector.
    let mut shipped_ids = BTreeSet::new();
    for k in 0..3 {
        let b = batch(1 + 10 * k, 10, |seq| format!("dev{}", seq % 3));
        let s = sink
            .ship(&b, deadline(Duration::from_secs(20)), &stop, &mut |_| {})
            .unwrap();
        assert_eq!(s.attempts, 1);
        shipped_ids.extend(ids(&b));
        assert!(
            subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(
                m,
                &shipped_ids
            ))
        );
    }

    // Batch 4 goes out while the broker hangs, so none of it is acknowledged...
    broker.freeze().unwrap();
    let in_flight = batch(31, 10, |seq| format!("dev{}", seq % 3));
    let sent_before = uplink.bytes_up();
    let (done, retries) = ship_in_background(
        sink,
        in_flight.clone(),
        deadline(Duration::from_secs(60)),
        Arc::clone(&stop),
    );
    let payload = in_flight.body().len() as u64;
    assert!(
        support::poll_until(deadline(Duration::from_secs(10)), || uplink.bytes_up()
            >= sent_before + payload),
        "batch 4 never left the agent"
    );
    // ...then the broker dies and comes back empty (no persistence: no session, no queue).
    // The uplink stays down until the collector has subscribed again.
    uplink.close();
    broker.restart().unwrap();
    assert!(
        subscriber.wait_subscribed(2, deadline(Duration::from_secs(10))),
        "the subscriber did not resubscribe; broker log:\n{}",
        broker.log()
    );
    let before_restart = subscriber.messages().len();
    uplink.open().unwrap();

    let (mut sink, result, _) = done
        .recv_timeout(Duration::from_secs(30))
        .expect("ship returned");
    let shipped = result.unwrap();
    assert!(shipped.attempts >= 2, "{shipped:?}");
    let retry = retries
        .try_recv()
        .expect("the lost connection was reported");
    assert_eq!(retry.attempt, 1);
    shipped_ids.extend(ids(&in_flight));

    // And the stream goes on.
    let after = batch(41, 10, |seq| format!("dev{}", seq % 3));
    sink.ship(
        &after,
        deadline(Duration::from_secs(20)),
        &stop,
        &mut |_| {},
    )
    .unwrap();
    shipped_ids.extend(ids(&after));

    assert!(
        subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(
            m,
            &shipped_ids
        )),
        "missing {:?}; broker log:\n{}",
        shipped_ids
            .difference(&received_ids(&subscriber.messages()))
            .collect::<Vec<_>>(),
        broker.log()
    );
    // Batch 4 reached the collector through the new broker: republished, not resumed.
    let late = received_ids(&subscriber.messages()[before_restart..]);
    assert!(late.is_superset(&ids(&in_flight)), "{late:?}");
}

#[test]
fn a_stop_ends_a_ship_blocked_on_a_dead_or_hung_broker_promptly() {
    // Dead: nothing listens; the sink waits out a backoff of up to a minute.
    let dead = format!("mqtt://{}", released_loopback_port().unwrap());
    let mut slow = config(&dead);
    slow.backoff = Backoff::default();
    let stop = StopFlag::new();
    let (done, retries) = ship_in_background(
        MqttSink::new(slow).unwrap(),
        batch(1, 3, core1),
        deadline(Duration::from_secs(120)),
        Arc::clone(&stop),
    );
    retries
        .recv_timeout(Duration::from_secs(10))
        .expect("the first attempt failed");
    let stopped = Instant::now();
    stop.stop();
    let (sink, result, returned) = done
        .recv_timeout(Duration::from_secs(5))
        .expect("ship returned");
    assert!(
        returned - stopped < Duration::from_millis(500),
        "{:?}",
        returned - stopped
    );
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            SinkError::Mqtt(MqttSinkError::Stopped { attempts: 1, .. })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&dead) && text.contains("refused") && text.contains("stays in the spool"),
        "{text}"
    );
    let dropping = Instant::now();
    drop(sink);
    assert!(
        dropping.elapsed() < Duration::from_secs(1),
        "dropping an idle sink is prompt"
    );

    // Hung: the broker accepts TCP but answers nothing, not even CONNACK.
    let dir = TempDir::new("mqtt-stop").unwrap();
    let mut broker = Mosquitto::start(dir.path()).unwrap();
    broker.freeze().unwrap();
    let mut hung = config(&broker.url());
    hung.timeout = Duration::from_secs(30);
    let stop = StopFlag::new();
    let (done, _retries) = ship_in_background(
        MqttSink::new(hung).unwrap(),
        batch(1, 3, core1),
        deadline(Duration::from_secs(120)),
        Arc::clone(&stop),
    );
    assert!(matches!(
        done.recv_timeout(Duration::from_millis(500)),
        Err(RecvTimeoutError::Timeout)
    ));
    let stopped = Instant::now();
    stop.stop();
    let (sink, result, returned) = done
        .recv_timeout(Duration::from_secs(5))
        .expect("ship returned");
    assert!(
        returned - stopped < Duration::from_millis(500),
        "{:?}",
        returned - stopped
    );
    assert!(
        matches!(result, Err(SinkError::Mqtt(MqttSinkError::Stopped { .. }))),
        "{result:?}"
    );
    // The connection thread is still waiting for the CONNACK: killing the broker ends it.
    broker.kill().unwrap();
    let dropping = Instant::now();
    drop(sink);
    assert!(
        dropping.elapsed() < Duration::from_secs(2),
        "{:?}",
        dropping.elapsed()
    );
}

#[test]
fn mqtts_to_a_broker_with_a_private_ca_trusts_exactly_the_ca_file() {
    let dir = TempDir::new("mqtt-tls").unwrap();
    for (name, text) in [
        ("ca.pem", TEST_CA),
        ("server.pem", SERVER_CERT),
        ("server.key", SERVER_KEY),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let tls_port = released_loopback_port().unwrap().port();
    let broker = Mosquitto::start_with(
        dir.path(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            dir.join("ca.pem").display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let stop = StopFlag::new();

    // Without ca_file the bundled public roots do not know this CA: every attempt fails and
    // says where to look.
    let mut sink = MqttSink::new(config(&url)).unwrap();
    let mut errors = Vec::new();
    let err = sink
        .ship(
            &batch(1, 2, core1),
            deadline(Duration::from_millis(1500)),
            &stop,
            &mut |r| errors.push(r.error.clone()),
        )
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Mqtt(MqttSinkError::DeadlineReached { .. })),
        "{err:?}"
    );
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e.contains("TLS") && e.contains("ca_file") && e.contains(&url)),
        "{errors:#?}"
    );
    drop(sink);

    let mut with_ca = config(&url);
    with_ca.ca_file = Some(dir.join("ca.pem"));
    let mut sink = MqttSink::new(with_ca).unwrap();
    let records = batch(1, 4, core1);
    let shipped = sink
        .ship(
            &records,
            deadline(Duration::from_secs(20)),
            &stop,
            &mut |r| panic!("{r:?}"),
        )
        .unwrap();
    assert_eq!(shipped.attempts, 1);
    let want = ids(&records);
    assert!(subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)));

    // A CA file that holds no certificate is refused when the sink is built.
    std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
    let mut bad = config(&url);
    bad.ca_file = Some(dir.join("empty.pem"));
    let err = MqttSink::new(bad).unwrap_err().to_string();
    assert!(
        err.contains("holds no certificate") && err.contains(&url),
        "{err}"
    );
}

#[test]
fn a_broker_that_wants_a_login_refuses_a_wrong_password_and_takes_the_right_one() {
    let dir = TempDir::new("mqtt-login").unwrap();
    let passwords = support::mosquitto::password_file(dir.path(), "agent", "s3cret pw").unwrap();
    let broker = Mosquitto::start_with(
        dir.path(),
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )
    .unwrap();
    let subscriber =
        Subscriber::start_with_login(broker.addr(), "rackhand/#", Some(("agent", "s3cret pw")));
    let stop = StopFlag::new();

    // A password from an environment variable the agent does not have: refused at start.
    let mut unset = config(&broker.url());
    unset.username = Some("agent".into());
    unset.password = Some(Secret::from_env("RACKHAND_TEST_MQTT_PASSWORD_NEVER_SET"));
    let err = MqttSink::new(unset).unwrap_err().to_string();
    assert!(
        err.contains("$RACKHAND_TEST_MQTT_PASSWORD_NEVER_SET") && err.contains(&broker.url()),
        "{err}"
    );

    // A wrong password: every attempt is refused, and says what to check.
    let mut wrong = config(&broker.url());
    wrong.username = Some("agent".into());
    wrong.password = Some(Secret::inline("guess"));
    let mut sink = MqttSink::new(wrong).unwrap();
    let mut errors = Vec::new();
    let err = sink
        .ship(
            &batch(1, 2, core1),
            deadline(Duration::from_millis(1500)),
            &stop,
            &mut |r| errors.push(r.error.clone()),
        )
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Mqtt(MqttSinkError::DeadlineReached { .. })),
        "{err:?}"
    );
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e.contains("refused the login") && e.contains("username and password")),
        "{errors:#?}"
    );
    assert!(!err.to_string().contains("guess"), "{err}");
    drop(sink);

    let mut right = config(&broker.url());
    right.username = Some("agent".into());
    right.password = Some(Secret::inline("s3cret pw"));
    let mut sink = MqttSink::new(right).unwrap();
    let records = batch(1, 3, core1);
    sink.ship(
        &records,
        deadline(Duration::from_secs(20)),
        &stop,
        &mut |r| panic!("{r:?}"),
    )
    .unwrap();
    let want = ids(&records);
    assert!(subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)));
}

#[test]
fn a_batch_far_larger_than_the_in_flight_window_is_shipped_whole_in_one_attempt() {
    let dir = TempDir::new("mqtt-large").unwrap();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let mut sink = MqttSink::new(config(&broker.url())).unwrap();
    // 1000 records: ten times the 100 PUBLISHes in flight, four times the request queue.
    let records = batch(1, 1000, |seq| format!("dev{}", seq % 7));
    let shipped = sink
        .ship(
            &records,
            deadline(Duration::from_secs(60)),
            &StopFlag::new(),
            &mut |r| panic!("{r:?}"),
        )
        .unwrap();
    assert_eq!(shipped.attempts, 1);
    let want = ids(&records);
    assert!(
        subscriber.wait_messages(deadline(Duration::from_secs(20)), |m| has_all(m, &want)),
        "got {} of 1000",
        received_ids(&subscriber.messages()).len()
    );
}

#[test]
fn a_record_over_the_brokers_packet_limit_is_dead_lettered_whole_and_shipping_goes_on() {
    const LIMIT: usize = 16 * 1024;
    let dir = TempDir::new("mqtt-oversized").unwrap();
    let broker = Mosquitto::start_with(dir.path(), &format!("max_packet_size {LIMIT}")).unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let state_dir = dir.path().join("state");
    let limited = MqttConfig {
        max_packet_size: LIMIT,
        dead_letter_dir: state_dir.clone(),
        ..config(&broker.url())
    };
    let mut sink = MqttSink::new(limited).unwrap();
    // Six records; seq 3 carries 40 KiB of output, over the broker's 16 KiB, and seq 5 just
    // enough for a PUBLISH of exactly 16 KiB, the most that may go.
    let topic = "rackhand/rack-a12/core1";
    let empty = batch_with_output(5, 1, core1, |_| String::new())
        .body()
        .len()
        - 1;
    // A remaining length of 16381 takes two bytes: 1 + 2 + 16381 = LIMIT.
    let at_limit = 16_381 - 4 - topic.len() - empty;
    assert_eq!(publish_packet_size(topic.len(), empty + at_limit), LIMIT);
    let first = batch_with_output(1, 6, core1, |seq| match seq {
        3 => "x".repeat(40 * 1024),
        5 => "x".repeat(at_limit),
        _ => format!("run {seq}\n"),
    });
    let big = first.part(2..3);
    let packet = publish_packet_size(topic.len(), big.body().len() - 1);
    let shipped = sink
        .ship(
            &first,
            deadline(Duration::from_secs(20)),
            &StopFlag::new(),
            &mut |r| panic!("no retry expected: {r:?}"),
        )
        .unwrap();
    let path = state_dir.join(dead_letter::FILE);
    assert_eq!(
        shipped,
        Shipped {
            attempts: 1,
            rejected: vec![Rejected {
                first_seq: 3,
                last_seq: 3,
                records: 1,
                bytes: big.body().len() as u64,
                reason: format!(
                    "record seq 3 is a {packet}-byte PUBLISH on {topic}, over max_packet_size ({LIMIT} bytes) for {}",
                    broker.url()
                ),
                dead_letter: path.clone(),
            }]
        }
    );
    let small: BTreeSet<String> = ids(&first)
        .into_iter()
        .filter(|id| id != "rack-a12:3")
        .collect();
    assert!(
        subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &small)),
        "the subscriber got {:?}; broker log:\n{}",
        received_ids(&subscriber.messages()),
        broker.log()
    );
    // The dead-letter file: one header, then the record's line byte for byte.
    let text = std::fs::read(&path).unwrap();
    let newline = text.iter().position(|b| *b == b'\n').unwrap();
    let head: serde_json::Value = serde_json::from_slice(&text[..newline]).unwrap();
    assert_eq!(head["dead_letter"]["sink"], "mqtt");
    assert_eq!(head["dead_letter"]["target"], broker.url().as_str());
    assert_eq!(head["dead_letter"]["idempotency_key"], "rack-a12:3-3");
    assert_eq!(&text[newline + 1..], big.body());

    // No stall: the next batch ships at once on the same sink.
    let second = batch(7, 3, core1);
    let shipped = sink
        .ship(
            &second,
            deadline(Duration::from_secs(20)),
            &StopFlag::new(),
            &mut |r| panic!("no retry expected: {r:?}"),
        )
        .unwrap();
    assert_eq!(
        shipped,
        Shipped {
            attempts: 1,
            rejected: Vec::new()
        }
    );
    let want = ids(&second);
    assert!(subscriber.wait_messages(deadline(Duration::from_secs(10)), |m| has_all(m, &want)));
    assert!(
        received_ids(&subscriber.messages())
            .iter()
            .all(|id| id != "rack-a12:3"),
        "the big record never reached the broker"
    );

    // What the limit prevents: a sink that does not know it publishes the record, the broker
    // drops the connection, and the batch can never be delivered.
    let mut unaware = MqttSink::new(MqttConfig {
        client_id: format!("rackhand-unaware-{}", std::process::id()),
        ..config(&broker.url())
    })
    .unwrap();
    let mut retries = 0;
    let err = unaware
        .ship(
            &first,
            deadline(Duration::from_millis(1500)),
            &StopFlag::new(),
            &mut |_| retries += 1,
        )
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Mqtt(MqttSinkError::DeadlineReached { .. })),
        "{err}"
    );
    assert!(retries >= 2, "{retries} retries: {err}");
}

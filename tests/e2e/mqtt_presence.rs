//! Fleet presence over MQTT (issue 12): with `sink = "mqtt"` the agent keeps a retained
//! `rackhand/<agent id>/status` message on a real mosquitto — online with its version, start
//! time, device counts and LED state, updated when a device starts failing (at most every
//! 10 s), offline when it stops cleanly (published by the agent) and when it dies or freezes
//! (the broker's last will). A subscriber that comes later gets the retained state.

use crate::support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rackhand::sim::{Profile, TelnetRack};
use serde_json::Value;

use support::agent::{Agent, Dev, Setup};
use support::mosquitto::{Message, Mosquitto, Subscriber};
use support::{TempDir, deadline, loopback_any_port, poll_until};

const AGENT_ID: &str = "rack-presence";
const TOPIC: &str = "rackhand/rack-presence/status";
/// Long enough for a start, a collection round, or a will on a slow machine.
const STEP: Duration = Duration::from_secs(30);
/// The presence publishes at most every 10 s; the agent offers its state every 2 s; a
/// device's failure shows after its next slot (300 ms) and a refused connect.
const COALESCING_BOUND: Duration = Duration::from_secs(10 + 2 + 5);

fn rack() -> TelnetRack {
    TelnetRack::start(
        loopback_any_port(),
        1,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start a simulated device")
}

fn setup(dir: &TempDir, broker_url: &str, devices: Vec<Dev>, extra: &[&str]) -> Setup {
    let mut upstream = vec![
        "sink = \"mqtt\"".to_string(),
        format!("broker = \"{broker_url}\""),
        "batch_max_age = \"200ms\"".into(),
        "timeout = \"2s\"".into(),
    ];
    upstream.extend(extra.iter().map(|l| l.to_string()));
    Setup {
        agent_id: AGENT_ID.into(),
        workers: 2,
        state_dir: dir.path().join("state"),
        interval: "300ms".into(),
        commands: vec!["show clock".into()],
        upstream,
        devices,
    }
}

fn json(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("presence is not JSON: {e}"))
}

/// The presence messages received so far, in order.
fn presence(sub: &Subscriber) -> Vec<Value> {
    sub.messages()
        .iter()
        .filter(|m| m.topic == TOPIC)
        .map(json)
        .collect()
}

/// Waits (bounded) for a presence message that satisfies `cond`; returns it.
fn wait_presence(
    sub: &Subscriber,
    within: Duration,
    what: &str,
    agent: Option<&Agent>,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let ok = sub.wait_messages(deadline(within), |ms| {
        ms.iter().any(|m| m.topic == TOPIC && cond(&json(m)))
    });
    assert!(
        ok,
        "no presence message {what} within {within:?}; got {:#?}\nagent log:\n{}",
        presence(sub),
        agent.map(Agent::stderr).unwrap_or_default()
    );
    presence(sub).into_iter().rev().find(|v| cond(v)).unwrap()
}

/// Waits until the agent has its presence connection (its log says so), so a subscriber that
/// comes after it gets the message as the broker retained it.
fn wait_presence_connected(agent: &Agent) {
    assert!(
        poll_until(deadline(STEP), || {
            let log = agent.stderr();
            log.contains("presence: retained on") || log.contains("presence: connected to")
        }),
        "the agent never connected its presence; log:\n{}",
        agent.stderr()
    );
}

fn online_with(v: &Value, ok: u64, failing: u64, led: &str) -> bool {
    v["state"] == "online"
        && v["devices"]["ok"] == ok
        && v["devices"]["failing"] == failing
        && v["led"] == led
}

#[test]
fn presence_is_retained_online_follows_a_failing_device_and_says_offline_at_a_clean_stop() {
    let dir = TempDir::new("mqtt-presence").unwrap();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let steady = rack();
    let flaky = rack();
    let devices = vec![
        Dev::telnet("steady", steady.addrs()[0].1),
        Dev::telnet("flaky", flaky.addrs()[0].1),
    ];
    let setup = setup(&dir, &broker.url(), devices, &[]);
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    wait_presence_connected(&agent);

    // Subscribed after the agent published: the broker hands over the retained message.
    let watcher = Subscriber::start(broker.addr(), "rackhand/+/status");
    let first = wait_presence(&watcher, STEP, "online", Some(&agent), |v| {
        v["state"] == "online"
    });
    assert_eq!(first["agent"], AGENT_ID);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        first["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    assert_eq!(first["devices"]["total"], 2, "{first}");
    assert!(
        ["starting", "healthy", "degraded", "failing"].contains(&first["led"].as_str().unwrap()),
        "{first}"
    );
    wait_presence(&watcher, STEP, "with both devices ok", Some(&agent), |v| {
        online_with(v, 2, 0, "healthy")
    });

    // A device stops answering: the presence says so within the coalescing bound.
    flaky.stop();
    let failed_at = Instant::now();
    wait_presence(
        &watcher,
        COALESCING_BOUND,
        "with one device failing",
        Some(&agent),
        |v| online_with(v, 1, 1, "degraded"),
    );
    assert!(failed_at.elapsed() <= COALESCING_BOUND);

    // Coalesced: never more online messages than one per 10 s, plus the first.
    let online = presence(&watcher)
        .iter()
        .filter(|v| v["state"] == "online")
        .count();
    let allowed = 2 + (agent.started.elapsed().as_secs() / 10) as usize;
    assert!(
        online <= allowed,
        "{online} online messages in {:?}: {:#?}",
        agent.started.elapsed(),
        presence(&watcher)
    );

    // A clean stop: the agent publishes offline itself.
    let status = agent.stop();
    assert!(status.success(), "the agent exited with {status}");
    agent.assert_no_panic("presence run");
    let bye = wait_presence(&watcher, STEP, "offline after SIGTERM", Some(&agent), |v| {
        v["state"] == "offline"
    });
    assert_eq!(bye["reason"], "stopped", "{bye}");
    assert!(bye["stopped_at"].is_string(), "{bye}");

    // Whoever looks later sees the agent offline.
    let later = Subscriber::start(broker.addr(), TOPIC);
    let retained = wait_presence(&later, STEP, "retained offline", None, |_| true);
    assert_eq!(retained["state"], "offline", "{retained}");
    assert_eq!(retained["reason"], "stopped", "{retained}");
    drop(steady);
}

#[test]
fn the_broker_publishes_the_will_when_the_agent_freezes_or_is_killed() {
    let dir = TempDir::new("mqtt-presence-will").unwrap();
    let broker = Mosquitto::start(dir.path()).unwrap();
    let device = rack();
    let devices = vec![Dev::telnet("core1", device.addrs()[0].1)];
    // A short keep-alive: the broker gives a silent client 1.5 × this.
    let setup = setup(&dir, &broker.url(), devices, &["keep_alive = \"1s\""]);
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    wait_presence_connected(&agent);
    let watcher = Subscriber::start(broker.addr(), TOPIC);
    wait_presence(&watcher, STEP, "online", Some(&agent), |v| {
        v["state"] == "online"
    });

    // Frozen (as a board that lost power, seen from the broker): the socket stays open, the
    // pings stop, and the broker publishes the will after 1.5 × keep_alive (mosquitto 2.0
    // looks at keep-alives only every few seconds: 5.4 s measured here).
    let pid = Pid::from_raw(agent.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let frozen_at = Instant::now();
    let will = wait_presence(&watcher, STEP, "offline while frozen", None, |v| {
        v["state"] == "offline"
    });
    let took = frozen_at.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(will["reason"], "connection_lost", "{will}");
    assert_eq!(will["agent"], AGENT_ID, "{will}");
    assert!(
        took >= Duration::from_millis(1000),
        "the will came {took:?} after the freeze, before the keep-alive ran out"
    );

    // Thawed, the agent connects again and says online again.
    let before = presence(&watcher).len();
    let back = watcher.wait_messages(deadline(STEP), |ms| {
        ms.iter()
            .filter(|m| m.topic == TOPIC)
            .skip(before)
            .any(|m| json(m)["state"] == "online")
    });
    assert!(
        back,
        "no online again after SIGCONT; log:\n{}",
        agent.stderr()
    );

    // Killed: the socket closes without a goodbye, and the broker publishes the will.
    let before = presence(&watcher).len();
    agent.kill9();
    let dead = watcher.wait_messages(deadline(Duration::from_secs(10)), |ms| {
        ms.iter()
            .filter(|m| m.topic == TOPIC)
            .skip(before)
            .any(|m| json(m)["state"] == "offline")
    });
    assert!(dead, "no will after SIGKILL: {:#?}", presence(&watcher));
    let later = Subscriber::start(broker.addr(), TOPIC);
    let retained = wait_presence(&later, STEP, "retained offline", None, |_| true);
    assert_eq!(retained["state"], "offline", "{retained}");
    assert_eq!(retained["reason"], "connection_lost", "{retained}");
}

#[test]
fn a_broker_that_is_down_at_start_costs_one_warning_and_presence_follows_when_it_comes() {
    let dir = TempDir::new("mqtt-presence-late").unwrap();
    let port = support::released_loopback_port().unwrap().port();
    let device = rack();
    let url = format!("mqtt://127.0.0.1:{port}");
    let devices = vec![Dev::telnet("core1", device.addrs()[0].1)];
    let setup = setup(&dir, &url, devices, &[]);
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);
    assert!(
        poll_until(deadline(STEP), || agent.stderr().contains("presence on")),
        "no warning about the presence; log:\n{}",
        agent.stderr()
    );
    // The agent works on: collections are spooled while the broker is away.
    agent.wait_status("records spooled", STEP, |s| {
        s["spool"]["last_seq"].as_u64() > Some(2)
    });
    let broker = Mosquitto::start_on(dir.path(), port, "").unwrap();
    wait_presence_connected(&agent);
    let watcher = Subscriber::start(broker.addr(), TOPIC);
    wait_presence(&watcher, STEP, "online", Some(&agent), |v| {
        v["state"] == "online"
    });
    assert!(agent.check_running().is_ok(), "the agent stopped");
    let warnings = agent.stderr().matches("presence on").count();
    assert_eq!(
        warnings,
        1,
        "one warning per outage; log:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "the agent exited with {status}");
}

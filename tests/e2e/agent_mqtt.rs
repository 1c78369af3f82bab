//! `rackhand run` shipping to a real mosquitto (issue 5): every record one QoS 1 PUBLISH on
//! its device's topic, and a broker that dies and comes back empty (no persistence: the
//! agent's session and every unacknowledged message are gone) costs no record.
//!
//! The agent reaches the broker through a relay (tests/support/mosquitto.rs) so the test
//! decides when the uplink is up: the collector (a subscriber) must have subscribed again to
//! the fresh broker before the agent may publish, otherwise MQTT itself drops what nobody
//! subscribes to. What the test checks is the agent's part: what it had not seen
//! acknowledged, it publishes again from its spool.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use rackhand::sim::{Profile, TelnetRack};

use support::agent::{Agent, Dev, Setup};
use support::mosquitto::{Message, Mosquitto, Relay, Subscriber};
use support::{TempDir, deadline, loopback_any_port};

const AGENT_ID: &str = "rack-mq";
const STEP: Duration = Duration::from_secs(40);

/// Records only: the agent's retained presence (`rackhand/<agent id>/status`, issue 12) shares
/// the `rackhand/#` filter.
fn records(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.topic != format!("rackhand/{AGENT_ID}/status"))
        .count()
}

fn seqs(messages: &[Message]) -> BTreeSet<u64> {
    messages
        .iter()
        .filter_map(|m| m.field("seq").as_u64())
        .collect()
}

#[test]
fn records_reach_the_broker_per_device_and_a_broker_restart_without_persistence_loses_none() {
    let dir = TempDir::new("agent-mqtt").unwrap();
    let mut broker = Mosquitto::start(dir.path()).unwrap();
    let subscriber = Subscriber::start(broker.addr(), "rackhand/#");
    let mut uplink = Relay::start(broker.addr(), true).unwrap();
    let rack = TelnetRack::start(
        loopback_any_port(),
        4,
        Profile::for_platform("cisco_ios").unwrap(),
    )
    .expect("start the simulated rack");
    let setup = Setup {
        agent_id: AGENT_ID.into(),
        workers: 4,
        state_dir: dir.path().join("state"),
        interval: "300ms".into(),
        commands: vec!["show clock".into(), "show version".into()],
        upstream: vec![
            "sink = \"mqtt\"".into(),
            format!("broker = \"{}\"", uplink.url()),
            "topic = \"rackhand/{agent}/{device}\"".into(),
            "batch_max_age = \"200ms\"".into(),
            "timeout = \"2s\"".into(),
        ],
        devices: rack
            .addrs()
            .iter()
            .map(|(name, addr)| Dev::telnet(name, *addr))
            .collect(),
    };
    let config = setup.write(dir.path());
    let mut agent = Agent::start(&config, &setup.state_dir);

    // Records flow, each on its device's topic.
    assert!(
        subscriber.wait_messages(deadline(STEP), |m| records(m) >= 20),
        "fewer than 20 records reached the broker; agent log:\n{}",
        agent.stderr()
    );
    for m in subscriber.messages() {
        if m.topic == format!("rackhand/{AGENT_ID}/status") {
            continue;
        }
        let device = m.field("device");
        assert_eq!(
            m.topic,
            format!("rackhand/{AGENT_ID}/{}", device.as_str().unwrap()),
            "record on the wrong topic"
        );
    }

    // The uplink drops; once the collector has all the agent saw acknowledged, the broker
    // dies and comes back empty.
    uplink.close();
    let acked = agent.wait_status("the uplink down", STEP, |s| {
        s["upstream"]["consecutive_failures"].as_u64() > Some(0)
    })["spool"]["acked_seq"]
        .as_u64()
        .unwrap();
    assert!(
        subscriber.wait_messages(deadline(STEP), |m| seqs(m).range(..=acked).count() as u64
            >= acked),
        "the broker acknowledged records up to seq {acked} but the collector has not all of them"
    );
    broker.restart().unwrap();
    assert!(
        subscriber.wait_subscribed(2, deadline(STEP)),
        "the collector did not subscribe again; broker log:\n{}",
        broker.log()
    );
    let before = records(&subscriber.messages());
    uplink.open().unwrap();

    // Collections went on meanwhile; what piled up arrives from the spool, and more after.
    assert!(
        subscriber.wait_messages(deadline(STEP), |m| records(m) >= before + 20),
        "records stopped after the broker restart; agent log:\n{}",
        agent.stderr()
    );
    let status = agent.stop();
    assert!(status.success(), "the agent exited with {status}");
    agent.assert_no_panic("mqtt run");

    // One run numbers its records without gaps: every seq up to the last must be there.
    let last = support::agent::read_status(&setup.state_dir).unwrap();
    let (last_seq, left) = (
        last["spool"]["last_seq"].as_u64().unwrap(),
        last["spool"]["records"].as_u64().unwrap(),
    );
    assert_eq!(left, 0, "records left in the spool at a clean stop: {last}");
    let got = seqs(&subscriber.messages());
    let missing: Vec<u64> = (1..=last_seq).filter(|s| !got.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {last_seq} records never reached the collector: {missing:?}",
        missing.len()
    );
}

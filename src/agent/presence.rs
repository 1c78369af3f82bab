//! The agent's side of its fleet presence (`sink = "mqtt"`; the message and its connection
//! are `crate::sink::mqtt::Presence`'s): what the agent knows about its devices, spool and
//! uplink, turned into the report the retained `rackhand/<agent id>/status` message carries,
//! and handed over every [`OFFER_EVERY`] (the presence coalesces it to at most one message per
//! 10 s, and only on change).
//!
//! The report's `led` field says what the status LED shows (or would show, on a board without
//! one), and its device counts are the LED's record of each device's last collection:
//! `crate::led` keeps both, once for the LED and the presence.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::{Inventory, SinkKind, Upstream};
use crate::sink::mqtt::{DeviceCounts, MqttConfig, Presence, PresenceReport, presence_collides};

use super::AgentLoop;

/// How often the agent hands its state to the presence (which publishes only on change).
const OFFER_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping agent waits for its offline message to go out.
const GOODBYE_WAIT: Duration = Duration::from_secs(3);

/// The presence (with an mqtt sink) and what it reports about the devices.
pub(super) struct PresenceKeeper {
    presence: Option<Presence>,
    last_offer: Option<Instant>,
}

impl PresenceKeeper {
    /// With `sink = "mqtt"`, starts the presence on the sink's broker; a presence that cannot
    /// start is a warning (records do not need it).
    pub(super) fn start(
        inventory: &Inventory,
        upstream: &Upstream,
        state_dir: &Path,
    ) -> PresenceKeeper {
        let mut keeper = PresenceKeeper {
            presence: None,
            last_offer: None,
        };
        if upstream.sink != SinkKind::Mqtt {
            return keeper;
        }
        let agent = &inventory.agent.id;
        let config = MqttConfig::from_upstream(upstream, agent, state_dir);
        for device in &inventory.devices {
            if presence_collides(&upstream.topic, agent, &device.name) {
                log::warn!(
                    "device `{}` publishes its records on the presence topic rackhand/{agent}/status; rename the device or change topic in [upstream]",
                    device.name
                );
            }
        }
        let first = PresenceReport {
            devices: DeviceCounts {
                total: inventory.devices.len(),
                ..DeviceCounts::default()
            },
            led: crate::led::LedState::Starting.as_str(),
        };
        match Presence::start(&config, SystemTime::now(), first) {
            Ok(presence) => keeper.presence = Some(presence),
            Err(e) => log::warn!("fleet presence is off: {e}"),
        }
        keeper
    }

    fn due(&self, now: Instant) -> bool {
        self.presence.is_some() && self.last_offer.is_none_or(|t| now >= t + OFFER_EVERY)
    }

    /// A clean stop: the offline message goes out (bounded wait).
    pub(super) fn stop(&mut self) {
        if let Some(presence) = self.presence.take() {
            presence.stop(GOODBYE_WAIT);
        }
    }
}

impl AgentLoop {
    /// Hands the presence the agent's state when due (it publishes only on change).
    pub(super) fn offer_presence(&mut self, now: Instant) {
        if !self.presence.due(now) {
            return;
        }
        self.presence.last_offer = Some(now);
        let report = PresenceReport {
            devices: self.led.device_counts(&self.inventory),
            led: self.led.state().as_str(),
        };
        if let Some(presence) = &self.presence.presence {
            presence.offer(report);
        }
    }
}

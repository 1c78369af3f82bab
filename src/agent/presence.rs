//! The agent's side of its fleet presence (`sink = "mqtt"`; the message and its connection
//! are `crate::sink::mqtt::Presence`'s): what the agent knows about its devices, spool and
//! uplink, turned into the report the retained `rackhand/<agent id>/status` message carries,
//! and handed over every [`OFFER_EVERY`] (the presence coalesces it to at most one message per
//! 10 s, and only on change).
//!
//! The report's `led` field says what the status LED shows (or would show, on a board without
//! one): `crate::led`'s state, decided once for both.

use std::collections::HashMap;
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
    /// Each device's last collection since the agent started: all `ok`, or not.
    last_ok: HashMap<String, bool>,
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
            last_ok: HashMap::new(),
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
            devices: keeper.counts(inventory),
            led: crate::led::LedState::Starting.as_str(),
        };
        match Presence::start(&config, SystemTime::now(), first) {
            Ok(presence) => keeper.presence = Some(presence),
            Err(e) => log::warn!("fleet presence is off: {e}"),
        }
        keeper
    }

    /// A device's collection ended.
    pub(super) fn finished(&mut self, device: &str, all_ok: bool) {
        if self.presence.is_some() {
            self.last_ok.insert(device.to_string(), all_ok);
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.presence.is_some() && self.last_offer.is_none_or(|t| now >= t + OFFER_EVERY)
    }

    /// The configured devices and how their last collections went.
    fn counts(&self, inventory: &Inventory) -> DeviceCounts {
        let mut counts = DeviceCounts {
            total: inventory.devices.len(),
            ..DeviceCounts::default()
        };
        for device in &inventory.devices {
            match self.last_ok.get(&device.name) {
                Some(true) => counts.ok += 1,
                Some(false) => counts.failing += 1,
                None => {}
            }
        }
        counts
    }

    /// Devices a reload removed are forgotten.
    fn forget_removed(&mut self, inventory: &Inventory) {
        if self.last_ok.len() > inventory.devices.len() {
            let names: std::collections::HashSet<&str> =
                inventory.devices.iter().map(|d| d.name.as_str()).collect();
            self.last_ok.retain(|name, _| names.contains(name.as_str()));
        }
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
        self.presence.forget_removed(&self.inventory);
        let report = PresenceReport {
            devices: self.presence.counts(&self.inventory),
            led: self.led.state().as_str(),
        };
        if let Some(presence) = &self.presence.presence {
            presence.offer(report);
        }
    }
}

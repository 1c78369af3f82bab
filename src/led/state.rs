//! Which state the LED shows: a pure function of what the agent knows.
//!
//! The agent hands over plain facts ([`Facts`], gathered by [`Facts::observe`] from the
//! spool's stats, the shipper's report and each device's last collection); [`state_of`] turns
//! them into one of four states. Pure, so every rule has a test without an agent.

use std::collections::BTreeMap;

use crate::device_history::DeviceHistory;
use crate::inventory::Inventory;
use crate::ship::ShipReport;
use crate::sink::mqtt::DeviceCounts;
use crate::spool::Stats;

use super::LedState;

/// What the LED state is decided on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// Every configured device has finished a collection since the agent started.
    pub(crate) first_round_done: bool,
    /// Devices that have finished a collection, and those whose last one was all ok.
    pub(crate) devices_collected: usize,
    pub(crate) devices_ok: usize,
    /// The spool cannot write (records wait in memory) or reports storage trouble.
    pub(crate) storage_failing: bool,
    /// The spool is full and new collections are held back.
    pub(crate) admission_paused: bool,
    /// The shipper's last attempt failed.
    pub(crate) uplink_failing: bool,
    /// Devices with a failed collection among their last [`RECENT_RUNS`] (their history).
    pub(crate) recently_failing: usize,
    pub(crate) spool_bytes: u64,
    pub(crate) spool_max_bytes: u64,
}

/// The rules, in order (README has them as a table):
/// 1. failing: the spool cannot write, or it is full and collections are held back — these
///    show even while starting, since they do not wait for collections;
/// 2. starting: not every device has finished its first collection yet;
/// 3. failing: devices have collected, and none of them ok the last time;
/// 4. degraded: the uplink's last attempt failed, the spool is over 3/4 full, or some device
///    failed one of its last [`RECENT_RUNS`] collections;
/// 5. healthy.
pub(crate) fn state_of(f: &Facts) -> LedState {
    if f.storage_failing || f.admission_paused {
        return LedState::Failing;
    }
    if !f.first_round_done {
        return LedState::Starting;
    }
    if f.devices_collected > 0 && f.devices_ok == 0 {
        return LedState::Failing;
    }
    let spool_filling =
        f.spool_max_bytes > 0 && u128::from(f.spool_bytes) * 4 > u128::from(f.spool_max_bytes) * 3;
    if f.uplink_failing
        || spool_filling
        || f.devices_ok < f.devices_collected
        || f.recently_failing > 0
    {
        return LedState::Degraded;
    }
    LedState::Healthy
}

/// How many of a device's last collections (its history) "recent" means for the LED: a device
/// that failed one of them keeps the LED at degraded until it has collected fine this often.
pub(crate) const RECENT_RUNS: usize = 3;

/// Each device's last collection: all ok or not.
#[derive(Debug, Default)]
pub(crate) struct DeviceRuns {
    last_ok: BTreeMap<String, bool>,
}

impl DeviceRuns {
    pub(crate) fn finished(&mut self, device: &str, ok: bool) {
        self.last_ok.insert(device.to_string(), ok);
    }

    /// The configured devices, and how many of them last collected all ok or not.
    pub(crate) fn counts(&self, inventory: &Inventory) -> DeviceCounts {
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

    /// Devices no longer configured are forgotten (a reload).
    pub(crate) fn retain(&mut self, inventory: &Inventory) {
        self.last_ok
            .retain(|name, _| inventory.devices.iter().any(|d| &d.name == name));
    }
}

impl Facts {
    /// The facts as the agent sees them now.
    pub(crate) fn observe<'a>(
        runs: &DeviceRuns,
        histories: impl Iterator<Item = (&'a str, &'a DeviceHistory)>,
        inventory: &Inventory,
        stats: &Stats,
        admission_paused: bool,
        ship: &ShipReport,
        spool_max_bytes: u64,
    ) -> Facts {
        Facts {
            first_round_done: inventory
                .devices
                .iter()
                .all(|d| runs.last_ok.contains_key(&d.name)),
            devices_collected: runs.last_ok.len(),
            devices_ok: runs.last_ok.values().filter(|ok| **ok).count(),
            storage_failing: stats.storage_trouble.is_some() || stats.waiting_in_memory > 0,
            admission_paused,
            uplink_failing: ship.consecutive_failures > 0,
            recently_failing: histories
                .filter(|(name, _)| inventory.devices.iter().any(|d| d.name == *name))
                .filter(|(_, h)| h.recent_failures(RECENT_RUNS) > 0)
                .count(),
            spool_bytes: stats.bytes,
            spool_max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            first_round_done: true,
            devices_collected: 3,
            devices_ok: 3,
            spool_bytes: 10,
            spool_max_bytes: 100,
            ..Facts::default()
        }
    }

    #[test]
    fn each_rule_gives_its_state() {
        let with = |change: fn(&mut Facts)| {
            let mut f = healthy();
            change(&mut f);
            state_of(&f)
        };
        assert_eq!(state_of(&healthy()), LedState::Healthy);
        assert_eq!(with(|f| f.first_round_done = false), LedState::Starting);
        assert_eq!(with(|f| f.devices_ok = 0), LedState::Failing);
        assert_eq!(with(|f| f.storage_failing = true), LedState::Failing);
        assert_eq!(with(|f| f.admission_paused = true), LedState::Failing);
        assert_eq!(with(|f| f.uplink_failing = true), LedState::Degraded);
        assert_eq!(with(|f| f.devices_ok = 2), LedState::Degraded);
        assert_eq!(with(|f| f.spool_bytes = 76), LedState::Degraded);
        assert_eq!(with(|f| f.recently_failing = 1), LedState::Degraded);
        assert_eq!(with(|f| f.spool_bytes = 75), LedState::Healthy);
    }

    #[test]
    fn storage_trouble_shows_while_starting_and_collections_do_not() {
        let mut f = healthy();
        f.first_round_done = false;
        f.devices_ok = 0;
        f.uplink_failing = true;
        assert_eq!(state_of(&f), LedState::Starting);
        f.admission_paused = true;
        assert_eq!(state_of(&f), LedState::Failing);
    }

    #[test]
    fn an_agent_without_devices_is_healthy_once_started() {
        let f = Facts {
            first_round_done: true,
            spool_max_bytes: 100,
            ..Facts::default()
        };
        assert_eq!(state_of(&f), LedState::Healthy);
    }

    #[test]
    fn the_first_round_is_done_once_every_device_has_finished() {
        let path = std::path::Path::new("/x/rackhand.toml");
        let text = "[agent]\nid = \"a\"\n\
            [[device]]\nname = \"r1\"\nplatform = \"cisco_ios\"\nhost = \"h\"\ncommands = [\"show clock\"]\n\
            [[device]]\nname = \"r2\"\nplatform = \"cisco_ios\"\nhost = \"h\"\ncommands = [\"show clock\"]\n";
        let (raw, mut report) = crate::config::parse_str(path, text);
        let inventory = crate::inventory::resolve(&raw, &mut report);
        assert!(!report.has_errors(), "{report}");
        let ship = ShipReport::idle("test".into());
        let stats = Stats::default();
        let mut runs = DeviceRuns::default();
        let facts = |runs: &DeviceRuns| {
            Facts::observe(
                runs,
                std::iter::empty(),
                &inventory,
                &stats,
                false,
                &ship,
                1,
            )
        };
        runs.finished("r1", false);
        assert!(!facts(&runs).first_round_done);
        runs.finished("r2", true);
        let f = facts(&runs);
        assert!(f.first_round_done);
        assert_eq!((f.devices_collected, f.devices_ok), (2, 1));
        assert_eq!(state_of(&f), LedState::Degraded);
        runs.finished("gone", true);
        runs.retain(&inventory);
        assert_eq!(facts(&runs).devices_collected, 2);

        // The history: a failure among a device's last three collections counts, an older
        // one does not, and a device no longer configured is not looked at.
        use crate::device_history::Mark;
        use crate::outcome::Status;
        let history = |marks: &[Status]| {
            let mut h = DeviceHistory::default();
            marks.iter().for_each(|s| h.push(Mark::from(*s)));
            h
        };
        let r1 = history(&[Status::Timeout, Status::Ok, Status::Ok, Status::Ok]);
        let r2 = history(&[Status::Ok, Status::AuthFailed, Status::Ok]);
        let gone = history(&[Status::Timeout]);
        let histories = [("r1", &r1), ("r2", &r2), ("gone", &gone)];
        let f = Facts::observe(
            &runs,
            histories.into_iter(),
            &inventory,
            &stats,
            false,
            &ship,
            1,
        );
        assert_eq!(f.recently_failing, 1);
    }
}

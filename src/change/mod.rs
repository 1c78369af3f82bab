//! Change-only shipping (`ship = "on_change"`, issue 13): an `ok` record whose output has not
//! changed since the last one upstream holds goes up with `"output": null`, a `digest` and
//! `changed: false`; a changed one goes up whole with `changed: true` and a `diff`.
//!
//! Why on the shipping side, not when spooling: the spool keeps every record whole, so
//! nothing is lost, and the shipper shapes each batch just before it first goes out,
//! against the baselines upstream has *acknowledged*. The shipper sends one batch at a time
//! in seq order and never skips one, so "unchanged" is only ever said of an output upstream
//! already holds; a flaky uplink costs no repeated full outputs; and a batch sent again
//! (after a failure or a restart) is shaped the same, because baselines move only on an
//! acknowledgement and the `full_every` clock is the records' own `started_at`.
//!
//! One file per role: `normalise` (volatile lines out, the digest), `diff` (the capped
//! unified diff), `store` (the baselines in `state_dir/changes/`), `shape` (the filter the
//! shipper calls). docs/change.md tells the whole story.

mod diff;
mod normalise;
mod shape;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::inventory::{Inventory, ShipMode, ShipRule};

pub use diff::{MAX_DIFF_BYTES, unified as unified_diff};
pub use normalise::{Normaliser, digest};
pub use shape::{ChangeCounts, ChangeFilter};

/// How one on_change command of one device is compared.
#[derive(Debug, Clone)]
pub(crate) struct CommandPolicy {
    pub(crate) normaliser: Arc<Normaliser>,
    pub(crate) full_every: Duration,
}

/// Every (device, command) that ships `on_change`, with how to compare its outputs.
#[derive(Debug, Clone, Default)]
pub struct ChangePolicy {
    by_device: BTreeMap<String, BTreeMap<String, CommandPolicy>>,
    /// Normalisers shared by the commands with the same platform and `ignore` list.
    normalisers: BTreeMap<(String, Vec<String>), Arc<Normaliser>>,
}

impl ChangePolicy {
    /// The on_change commands of the inventory's devices.
    pub fn from_inventory(inventory: &Inventory) -> ChangePolicy {
        let mut policy = ChangePolicy::default();
        for device in &inventory.devices {
            for (command, rule) in device.ship.on_change() {
                policy.add(&device.name, &device.platform, command, rule);
            }
        }
        policy
    }

    /// Adds `device`'s `command` when `rule` ships it `on_change` (otherwise nothing).
    pub fn add(&mut self, device: &str, platform: &str, command: &str, rule: &ShipRule) {
        if rule.mode != ShipMode::OnChange {
            return;
        }
        let normaliser = self
            .normalisers
            .entry((platform.to_string(), rule.ignore.clone()))
            .or_insert_with(|| Arc::new(Normaliser::for_platform(platform, &rule.ignore)))
            .clone();
        self.by_device
            .entry(device.to_string())
            .or_default()
            .insert(
                command.to_string(),
                CommandPolicy {
                    normaliser,
                    full_every: rule.full_every,
                },
            );
    }

    /// No command ships `on_change`: the filter passes batches through untouched.
    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    pub(crate) fn get(&self, device: &str, command: &str) -> Option<&CommandPolicy> {
        self.by_device.get(device)?.get(command)
    }

    /// Every (device, command) in the policy.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_device
            .iter()
            .flat_map(|(d, cs)| cs.keys().map(move |c| (d.as_str(), c.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_on_change_commands_are_in_the_policy_and_normalisers_are_shared() {
        let on_change = ShipRule {
            mode: ShipMode::OnChange,
            ..ShipRule::default()
        };
        let mut policy = ChangePolicy::default();
        assert!(policy.is_empty());
        policy.add("r1", "cisco_ios", "show version", &ShipRule::default());
        assert!(policy.is_empty());
        policy.add("r1", "cisco_ios", "show version", &on_change);
        policy.add("r2", "cisco_ios", "show version", &on_change);
        policy.add("r2", "cisco_ios", "show clock", &on_change);
        assert!(!policy.is_empty());
        let keys: Vec<_> = policy.keys().collect();
        assert_eq!(
            keys,
            vec![
                ("r1", "show version"),
                ("r2", "show clock"),
                ("r2", "show version")
            ]
        );
        assert_eq!(policy.normalisers.len(), 1);
        assert!(policy.get("r1", "show clock").is_none());
        assert_eq!(
            policy.get("r2", "show clock").unwrap().full_every,
            crate::inventory::defaults::FULL_EVERY
        );
    }
}

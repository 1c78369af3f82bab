//! How a command's `ok` records travel upstream: whole every time (`ship = "always"`, the
//! default) or only when the output changed (`ship = "on_change"`, issue 13).
//!
//! The inventory only resolves and checks what the config says, per device and command: the
//! mode, the user's `ignore` patterns (checked to compile where they are written) and
//! `full_every`. What a volatile line is for a platform is the platform table's
//! (`platforms.toml`), and the comparing, the digests and the diffs are `crate::change`'s.

use std::collections::BTreeMap;
use std::time::Duration;

/// `ship`: how a command's `ok` records go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShipMode {
    /// Every record whole (the default).
    #[default]
    Always,
    /// Whole only when the normalised output changed; otherwise with `"output": null`.
    OnChange,
}

impl ShipMode {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ShipMode::Always => "always",
            ShipMode::OnChange => "on_change",
        }
    }

    pub(crate) fn from_config(name: &str) -> ShipMode {
        match name {
            "on_change" => ShipMode::OnChange,
            _ => ShipMode::Always,
        }
    }
}

/// One command's resolved shipping: the command's own table over the device's `ship` and
/// `full_every` (inherited from its groups and `[defaults]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipRule {
    pub mode: ShipMode,
    /// The user's regexes for lines to leave out of the comparison (valid: checked when the
    /// config was read), on top of the platform's volatile lines.
    pub ignore: Vec<String>,
    /// An unchanged output goes up whole anyway once this long has passed since it last did.
    pub full_every: Duration,
}

impl Default for ShipRule {
    fn default() -> ShipRule {
        ShipRule {
            mode: ShipMode::Always,
            ignore: Vec::new(),
            full_every: super::defaults::FULL_EVERY,
        }
    }
}

/// A device's rule per configured command. A command not in it (one given on the command line
/// of `rackhand collect`) ships `always`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShipRules {
    by_command: BTreeMap<String, ShipRule>,
}

impl ShipRules {
    /// The rule of `command`: the first entry of `commands` that runs it.
    pub fn rule(&self, command: &str) -> Option<&ShipRule> {
        self.by_command.get(command)
    }

    /// Sets `command`'s rule unless an earlier entry set it already.
    pub(crate) fn insert(&mut self, command: &str, rule: ShipRule) {
        self.by_command.entry(command.to_string()).or_insert(rule);
    }

    /// The commands that ship `on_change`, with their rules.
    pub fn on_change(&self) -> impl Iterator<Item = (&str, &ShipRule)> {
        self.by_command
            .iter()
            .filter(|(_, r)| r.mode == ShipMode::OnChange)
            .map(|(c, r)| (c.as_str(), r))
    }
}

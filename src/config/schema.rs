//! The config's keys, their types and where each may appear: the one place that says what a
//! valid `rackhand.toml` holds.
//!
//! Keys are data (a table of [`Key`]s), so adding a setting is one line here plus its use; the
//! walker in `parse.rs` turns each TOML table into a `Layer` of type-checked values and
//! reports every unknown key and wrong type with its span.

use std::ops::Range;
use std::time::Duration;

/// What a key's value must be.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Any non-empty string.
    Str,
    /// An integer in an inclusive range.
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    /// An array of non-empty strings.
    StrList,
    /// `commands`: an array of commands, each a string or a table `{ run, ship, ignore,
    /// full_every }` (parse/commands.rs).
    Commands,
    /// A duration string (`"30s"`), strictly positive.
    Duration,
    /// A size string (`"16MiB"`), strictly positive.
    Size,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A regular expression (checked to compile).
    Regex,
    /// An inline secret: allowed, but warned about.
    InlineSecret,
    /// The name of an environment variable holding a secret.
    SecretEnv,
    /// A file holding a secret: must be readable; warned when group/other can read it.
    SecretFile,
    /// A file that must exist and be readable (e.g. an SSH key).
    ReadableFile,
    /// A filesystem path that need not exist yet.
    Path,
    /// An executable file.
    Executable,
    /// A table of string → string (e.g. HTTP headers).
    StrMap,
}

/// One config key: its name, what it must be, and a line of help for `unknown key` hints.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key { name, kind }
}

pub const TRANSPORTS: &[&str] = &["ssh", "telnet", "serial"];
pub const PLATFORMS: &[&str] = &[
    "generic",
    "cisco_ios",
    "cisco_nxos",
    "arista_eos",
    "juniper_junos",
    "linux",
];
pub const HOST_KEY_CHECKS: &[&str] = &["strict", "accept-new", "off"];
pub const ISOLATIONS: &[&str] = &["thread", "process"];
pub const PARITIES: &[&str] = &["none", "odd", "even"];
pub const FLOW_CONTROLS: &[&str] = &["none", "software", "hardware"];
pub const SINKS: &[&str] = &["file", "http", "mqtt"];
pub const SPOOL_FULL: &[&str] = &["block", "drop_oldest"];
pub const FSYNC: &[&str] = &["group", "always"];
pub const SHIP_MODES: &[&str] = &["always", "on_change"];
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Keys a device may set itself or inherit from `[defaults]` and `[[group]]`s.
pub const DEVICE_SETTINGS: &[Key] = &[
    key("transport", Kind::Enum(TRANSPORTS)),
    key("host", Kind::Str),
    key("port", Kind::Int { min: 1, max: 65535 }),
    key("platform", Kind::Enum(PLATFORMS)),
    key("prompt", Kind::Regex),
    key("username", Kind::Str),
    key("password", Kind::InlineSecret),
    key("password_env", Kind::SecretEnv),
    key("password_file", Kind::SecretFile),
    key("enable_secret", Kind::InlineSecret),
    key("enable_secret_env", Kind::SecretEnv),
    key("enable_secret_file", Kind::SecretFile),
    key("key_file", Kind::ReadableFile),
    key("key_passphrase", Kind::InlineSecret),
    key("key_passphrase_env", Kind::SecretEnv),
    key("key_passphrase_file", Kind::SecretFile),
    key("host_key_check", Kind::Enum(HOST_KEY_CHECKS)),
    key("known_hosts", Kind::Path),
    key("legacy_ssh", Kind::Bool),
    key("kex", Kind::StrList),
    key("host_key_algorithms", Kind::StrList),
    key("ciphers", Kind::StrList),
    key("macs", Kind::StrList),
    key("keepalive", Kind::Duration),
    key("serial_port", Kind::Path),
    key(
        "baud",
        Kind::Int {
            min: 50,
            max: 4_000_000,
        },
    ),
    key("data_bits", Kind::Int { min: 5, max: 8 }),
    key("parity", Kind::Enum(PARITIES)),
    key("stop_bits", Kind::Int { min: 1, max: 2 }),
    key("flow_control", Kind::Enum(FLOW_CONTROLS)),
    key("commands", Kind::Commands),
    key("ship", Kind::Enum(SHIP_MODES)),
    key("full_every", Kind::Duration),
    key("interval", Kind::Duration),
    key("connect_timeout", Kind::Duration),
    key("command_timeout", Kind::Duration),
    key("max_output", Kind::Size),
    key("isolation", Kind::Enum(ISOLATIONS)),
    key("driver_exec", Kind::Executable),
    // Console capture (issue 14, src/console/): serial only; `alert` regexes are checked in
    // the inventory, each at its own span.
    key("capture", Kind::Bool),
    key("alert", Kind::StrList),
];

/// Keys only a `[[device]]` has.
pub const DEVICE_ONLY: &[Key] = &[key("name", Kind::Str), key("groups", Kind::StrList)];

/// Keys only a `[[group]]` has.
pub const GROUP_ONLY: &[Key] = &[
    key("name", Kind::Str),
    key("max_sessions", Kind::Int { min: 1, max: 4096 }),
];

pub const AGENT_KEYS: &[Key] = &[
    key("id", Kind::Str),
    key("workers", Kind::Int { min: 1, max: 1024 }),
    key("state_dir", Kind::Path),
    key("log_level", Kind::Enum(LOG_LEVELS)),
];

pub const UPSTREAM_KEYS: &[Key] = &[
    key("sink", Kind::Enum(SINKS)),
    key("url", Kind::Str),
    key("broker", Kind::Str),
    key("topic", Kind::Str),
    key("client_id", Kind::Str),
    key("path", Kind::Path),
    key("headers", Kind::StrMap),
    key("ca_file", Kind::ReadableFile),
    key("username", Kind::Str),
    key("password", Kind::InlineSecret),
    key("password_env", Kind::SecretEnv),
    key("password_file", Kind::SecretFile),
    key("timeout", Kind::Duration),
    key(
        "batch_max_records",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    key("batch_max_bytes", Kind::Size),
    key("batch_max_age", Kind::Duration),
    key("spool_max_bytes", Kind::Size),
    key("spool_full", Kind::Enum(SPOOL_FULL)),
    key("fsync", Kind::Enum(FSYNC)),
    key("file_max_bytes", Kind::Size),
    key("max_packet_size", Kind::Size),
    key("keep_alive", Kind::Duration),
];

/// `[board]`: the board the agent runs on (its status LED).
pub const BOARD_KEYS: &[Key] = &[key("status_led", Kind::Str)];

/// `[metrics]`: Prometheus text on a loopback port and/or in a file for node_exporter.
pub const METRICS_KEYS: &[Key] = &[key("listen", Kind::Str), key("textfile", Kind::Path)];

/// The sections a config file may have at its top level.
pub const SECTIONS: &[&str] = &[
    "agent", "defaults", "group", "device", "upstream", "board", "metrics",
];

/// Secrets come from exactly one of three keys; these name the families.
pub const SECRET_FAMILIES: &[[&str; 3]] = &[
    ["password", "password_env", "password_file"],
    ["enable_secret", "enable_secret_env", "enable_secret_file"],
    [
        "key_passphrase",
        "key_passphrase_env",
        "key_passphrase_file",
    ],
];

/// A type-checked value as written in one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<(String, Range<usize>)>),
    Duration(Duration),
    Size(u64),
    Map(Vec<(String, String)>),
    Secret(super::secret::Secret),
    Commands(Vec<CommandEntry>),
}

/// One entry of `commands` as written: the command, and how its records ship when the entry
/// is a table (`None`: inherited from the device's `ship` and `full_every`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandEntry {
    pub(crate) run: String,
    pub(crate) span: Range<usize>,
    pub(crate) ship: Option<String>,
    pub(crate) ignore: Vec<String>,
    pub(crate) full_every: Option<Duration>,
}

impl CommandEntry {
    /// A command written as a plain string.
    pub(crate) fn plain(run: &str, span: Range<usize>) -> CommandEntry {
        CommandEntry {
            run: run.to_string(),
            span,
            ship: None,
            ignore: Vec::new(),
            full_every: None,
        }
    }
}

/// A value with the span it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub(crate) value: Value,
    pub(crate) span: Range<usize>,
    /// The span of the key, for messages about the key itself.
    pub(crate) key_span: Range<usize>,
}

impl Setting {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Finds the closest known key, for "did you mean" hints on typos.
pub fn suggest<'k>(unknown: &str, keys: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    keys.into_iter()
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) || (k.len() >= 4 && unknown.starts_with(k)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        let keys = DEVICE_SETTINGS.iter().map(|k| k.name);
        assert_eq!(suggest("comands", keys.clone()), Some("commands"));
        assert_eq!(suggest("hostname", keys.clone()), Some("host"));
        assert_eq!(suggest("serialport", keys.clone()), Some("serial_port"));
        assert_eq!(suggest("zzzzzzzz", keys), None);
    }

    /// docs/reference.md is the users' list of keys: a key or a choice added here must be
    /// described there too.
    #[test]
    fn every_section_key_and_choice_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let tables = [
            AGENT_KEYS,
            DEVICE_SETTINGS,
            DEVICE_ONLY,
            GROUP_ONLY,
            UPSTREAM_KEYS,
            BOARD_KEYS,
            METRICS_KEYS,
        ];
        let mut missing = Vec::new();
        for key in tables.iter().flat_map(|t| t.iter()) {
            if !reference.contains(&format!("`{}`", key.name)) {
                missing.push(key.name.to_string());
            }
            if let Kind::Enum(choices) = key.kind {
                for choice in choices {
                    if !reference.contains(&format!("`{choice}`")) {
                        missing.push(format!("{} = {choice}", key.name));
                    }
                }
            }
        }
        for section in SECTIONS {
            if !reference.contains(&format!("[{section}]")) {
                missing.push(format!("[{section}]"));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/reference.md does not describe {missing:?}"
        );
    }
}

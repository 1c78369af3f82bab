//! The inventory: every device with its settings resolved, ready for the scheduler.
//!
//! A device's value for a key is its own, else its groups' in the order it lists them, else
//! `[defaults]`, else the built-in default from [`defaults`] — the one place built-in
//! defaults live. Checks that need the resolved picture (a `host` for ssh/telnet, a
//! `serial_port` for serial, unique names, groups that exist) happen here, and add to the same
//! report as the parser so the user sees every problem at once.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::schema::{CommandEntry, SECRET_FAMILIES, Setting, Value};
use crate::config::{Layer, RawConfig, Report, Secret};

mod board;
mod capture;
mod metrics;
mod shipping;
mod upstream;

pub(crate) use board::{Board, GpioLine, StatusLed};
pub use metrics::MetricsConfig;
pub use shipping::{ShipMode, ShipRule, ShipRules};
use upstream::{default_upstream, resolve_upstream};

/// Built-in defaults, used when neither the device, its groups nor `[defaults]` set a key.
pub mod defaults {
    use std::time::Duration;

    pub const TRANSPORT: &str = "ssh";
    pub const PLATFORM: &str = "generic";
    pub const SSH_PORT: u16 = 22;
    pub const TELNET_PORT: u16 = 23;
    pub const INTERVAL: Duration = Duration::from_secs(15 * 60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
    pub const KEEPALIVE: Duration = Duration::from_secs(30);
    pub const MAX_OUTPUT: u64 = 16 << 20;
    /// `full_every`: an unchanged `on_change` output still goes up whole once a day.
    pub const FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
    /// Trust on first use, refuse a changed key: what an unattended agent can live with.
    pub const HOST_KEY_CHECK: &str = "accept-new";
    pub const BAUD: u32 = 9600;
    pub const DATA_BITS: u8 = 8;
    pub const STOP_BITS: u8 = 1;
    pub const WORKERS: usize = 8;
    pub const STATE_DIR: &str = "/var/lib/rackhand";
    pub const LOG_LEVEL: &str = "info";
    pub const BATCH_MAX_RECORDS: usize = 500;
    pub const BATCH_MAX_BYTES: u64 = 1 << 20;
    pub const BATCH_MAX_AGE: Duration = Duration::from_secs(5);
    pub const SPOOL_MAX_BYTES: u64 = 512 << 20;
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
    pub const FILE_MAX_BYTES: u64 = 64 << 20;
    pub const MQTT_TOPIC: &str = "rackhand/{agent}/{device}";
    /// Without `[upstream]`, records go to NDJSON files in this folder of `state_dir`.
    pub const OUTBOX: &str = "outbox";
    /// MQTT's largest packet: no limit below the protocol's unless the broker has one.
    pub const MQTT_MAX_PACKET_SIZE: usize = super::MQTT_PACKET_SIZE_MAX;
    /// MQTT keep-alive: cheap on a cellular uplink, and a half-open connection (or an agent
    /// that lost power: the broker then publishes its presence will) is noticed within a
    /// minute.
    pub const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);
}

/// The smallest `max_packet_size`: below it nearly every record would be dead-lettered.
pub(crate) const MQTT_PACKET_SIZE_MIN: usize = 1024;
/// The largest packet MQTT can frame (a 4-byte remaining length).
pub(crate) const MQTT_PACKET_SIZE_MAX: usize = 268_435_455;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Ssh,
    Telnet,
    Serial,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Ssh => "ssh",
            TransportKind::Telnet => "telnet",
            TransportKind::Serial => "serial",
        }
    }
}

/// Where a device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Net {
        host: String,
        port: u16,
    },
    Serial {
        port: PathBuf,
        settings: SerialSettings,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

impl SerialSettings {
    /// The most bytes the line carries in a second: one start bit, the data bits, the
    /// parity bit and the stop bits per byte (9600 8N1: 960).
    pub fn bytes_per_second(&self) -> u64 {
        let parity = u32::from(self.parity != Parity::None);
        let bits = 1 + u32::from(self.data_bits) + parity + u32::from(self.stop_bits);
        u64::from(self.baud / bits.max(1))
    }

    /// The usual short form, e.g. `9600 8N1`.
    pub fn describe(&self) -> String {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Odd => 'O',
            Parity::Even => 'E',
        };
        let flow = match self.flow_control {
            FlowControl::None => "",
            FlowControl::Software => " xon/xoff",
            FlowControl::Hardware => " rts/cts",
        };
        format!(
            "{} {}{parity}{}{flow}",
            self.baud, self.data_bits, self.stop_bits
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyCheck {
    Strict,
    AcceptNew,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Thread,
    Process,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Thread => "thread",
            Isolation::Process => "process",
        }
    }
}

/// SSH-only settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    pub key_file: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
    pub host_key_check: HostKeyCheck,
    pub known_hosts: PathBuf,
    pub legacy: bool,
    pub kex: Vec<String>,
    pub host_key_algorithms: Vec<String>,
    pub ciphers: Vec<String>,
    pub macs: Vec<String>,
    pub keepalive: Duration,
}

/// One device, every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub groups: Vec<String>,
    pub transport: TransportKind,
    pub endpoint: Endpoint,
    pub platform: String,
    pub prompt: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub enable_secret: Option<Secret>,
    pub ssh: SshSettings,
    pub commands: Vec<String>,
    /// How each configured command's `ok` records go upstream (`ship`, issue 13).
    pub ship: ShipRules,
    pub interval: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub max_output: u64,
    pub isolation: Isolation,
    pub driver_exec: Option<PathBuf>,
    /// `capture = true` (serial only): the console is read between jobs (`crate::console`).
    pub capture: Option<Capture>,
}

/// A captured console's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capture {
    /// The device's own `alert` regexes (checked to compile), on top of its platform's.
    pub alert: Vec<String>,
}

impl Device {
    /// `host:port` or the serial port with its line settings.
    pub fn address(&self) -> String {
        match &self.endpoint {
            Endpoint::Net { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Endpoint::Net { host, port } => format!("{host}:{port}"),
            Endpoint::Serial { port, settings } => {
                // by-id names are long; the unique part is at the end.
                let shown = port.display().to_string();
                let shown = shown.strip_prefix("/dev/serial/").unwrap_or(&shown);
                format!("{shown} {}", settings.describe())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub(crate) name: String,
    pub(crate) max_sessions: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub(crate) id: String,
    pub(crate) workers: usize,
    pub(crate) state_dir: PathBuf,
    pub(crate) log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    File,
    Http,
    Mqtt,
}

impl SinkKind {
    /// Its name in the config (`sink`) and in status.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Http => "http",
            SinkKind::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub(crate) sink: SinkKind,
    /// The URL, broker or path, per sink.
    pub(crate) target: String,
    pub(crate) topic: String,
    pub(crate) client_id: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) timeout: Duration,
    pub(crate) batch_max_records: usize,
    pub(crate) batch_max_bytes: u64,
    pub(crate) batch_max_age: Duration,
    pub(crate) spool_max_bytes: u64,
    pub(crate) drop_oldest_when_full: bool,
    pub(crate) fsync_always: bool,
    pub(crate) file_max_bytes: u64,
    /// mqtt: the broker's largest packet; a record whose PUBLISH is larger is dead-lettered.
    pub(crate) max_packet_size: usize,
    /// mqtt: the keep-alive (whole seconds, 1 s to 65535 s).
    pub(crate) keep_alive: Duration,
}

/// Everything the agent needs, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub(crate) agent: Agent,
    pub(crate) groups: Vec<Group>,
    pub devices: Vec<Device>,
    pub(crate) upstream: Option<Upstream>,
    /// `[board]`: the status LED.
    pub(crate) board: Board,
    /// `[metrics]`: what the agent serves for Prometheus (none of it without the table).
    pub(crate) metrics: MetricsConfig,
}

/// Where the commands a device runs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandSource {
    /// Its `commands` (the agent, `rackhand check`, `rackhand collect` without `--`): a
    /// device without any is a mistake.
    Configured,
    /// The command line (`rackhand collect -- COMMAND...`): every device can run them,
    /// whether or not it has commands of its own.
    AdHoc,
}

impl Inventory {
    /// Where records go: `[upstream]`, else NDJSON files in `state_dir/outbox`. The one place
    /// that default is made: the agent ships there and `rackhand check` says so.
    pub(crate) fn upstream_in_force(&self) -> Upstream {
        self.upstream
            .clone()
            .unwrap_or_else(|| default_upstream(&self.agent))
    }
}

/// Reads, parses and resolves the config at `path`; the report holds every finding, sorted.
pub fn load(path: &std::path::Path) -> Result<(Inventory, Report), crate::config::LoadError> {
    load_with(path, CommandSource::Configured)
}

/// [`load`], for commands that come from `source`.
pub(crate) fn load_with(
    path: &std::path::Path,
    source: CommandSource,
) -> Result<(Inventory, Report), crate::config::LoadError> {
    let (raw, mut report) = crate::config::load(path)?;
    let inventory = resolve_with(&raw, &mut report, source);
    report.sort();
    Ok((inventory, report))
}

/// A config the agent cannot run on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    // Transparent: `anyhow`'s `{:#}` prints the source chain, so a `{0}` would print the
    // message twice.
    #[error(transparent)]
    Load(#[from] crate::config::LoadError),
    #[error("the config {path} has errors:\n{report}run `rackhand check -c {path}` for details")]
    Invalid { path: PathBuf, report: String },
}

/// [`load`] for the agent (its start and every reload): warnings are logged, and a config
/// with errors is refused with every error rendered.
pub(crate) fn load_valid(path: &std::path::Path) -> Result<Inventory, ConfigError> {
    let (inventory, report) = load(path)?;
    for d in report.warnings() {
        log::warn!("{}", report.render(d));
    }
    if report.has_errors() {
        let mut text = String::new();
        for d in report.errors() {
            text.push_str(&report.render(d));
            text.push('\n');
        }
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            report: text,
        });
    }
    Ok(inventory)
}

/// Resolves inheritance and checks what needs the whole picture. Returns the inventory even
/// when the report has errors (devices with errors are left out), so callers can show both.
pub fn resolve(raw: &RawConfig, report: &mut Report) -> Inventory {
    resolve_with(raw, report, CommandSource::Configured)
}

/// [`resolve`], for commands that come from `source`.
pub(crate) fn resolve_with(
    raw: &RawConfig,
    report: &mut Report,
    source: CommandSource,
) -> Inventory {
    let groups = resolve_groups(raw, report);
    let mut devices = Vec::new();
    let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for layer in &raw.devices {
        let Some(name_setting) = layer.get("name") else {
            if !layer.written("name") {
                report.error(
                layer.header.clone(),
                "this [[device]] has no `name`; add name = \"...\" (it names the device in records and logs)",
                );
            }
            continue;
        };
        let name = name_setting.as_str().unwrap_or_default().to_string();
        if let Some(first) = seen.get(&name) {
            let (line, _) = crate::config::diag::line_col(&report.text, first.start);
            report.error(
                name_setting.span.clone(),
                format!("duplicate device name `{name}` (first defined on line {line}); device names must be unique"),
            );
            continue;
        }
        seen.insert(name.clone(), name_setting.span.clone());
        if let Some(device) = resolve_device(raw, layer, &name, source, report) {
            devices.push(device);
        }
    }
    Inventory {
        agent: resolve_agent(&raw.agent),
        groups: groups.iter().map(|(g, _)| g.clone()).collect(),
        devices,
        upstream: raw
            .upstream
            .as_ref()
            .and_then(|u| resolve_upstream(u, report)),
        board: board::resolve_board(raw.board.as_ref(), report),
        metrics: metrics::resolve_metrics(raw.metrics.as_ref(), report),
    }
}

fn resolve_groups(raw: &RawConfig, report: &mut Report) -> Vec<(Group, usize)> {
    let mut groups: Vec<(Group, usize)> = Vec::new();
    for (index, layer) in raw.groups.iter().enumerate() {
        let Some(name) = layer.get("name") else {
            report.error(
                layer.header.clone(),
                "this [[group]] has no `name`; add name = \"...\" so devices can join it with groups = [\"...\"]",
            );
            continue;
        };
        let name_str = name.as_str().unwrap_or_default().to_string();
        if groups.iter().any(|(g, _)| g.name == name_str) {
            report.error(
                name.span.clone(),
                format!("duplicate group name `{name_str}`; group names must be unique"),
            );
            continue;
        }
        let max_sessions = match layer.get("max_sessions").map(|s| &s.value) {
            Some(Value::Int(n)) => Some(*n as usize),
            _ => None,
        };
        groups.push((
            Group {
                name: name_str,
                max_sessions,
            },
            index,
        ));
    }
    groups
}

/// The layers a device inherits from, most specific first.
fn layers_of<'a>(raw: &'a RawConfig, device: &'a Layer, report: &mut Report) -> Vec<&'a Layer> {
    let mut layers = vec![device];
    if let Some(Setting {
        value: Value::List(names),
        ..
    }) = device.get("groups")
    {
        for (group, span) in names {
            match raw
                .groups
                .iter()
                .find(|g| g.str("name") == Some(group.as_str()))
            {
                Some(layer) => layers.push(layer),
                None => {
                    let known: Vec<&str> =
                        raw.groups.iter().filter_map(|g| g.str("name")).collect();
                    let hint = crate::config::schema::suggest(group, known.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    let listing = if known.is_empty() {
                        "no [[group]] is defined".to_string()
                    } else {
                        format!("defined groups: {}", known.join(", "))
                    };
                    report.error(
                        span.clone(),
                        format!("group `{group}` does not exist{hint}; {listing}"),
                    );
                }
            }
        }
    }
    layers.push(&raw.defaults);
    layers
}

/// Whether any layer writes `key`, even with a refused value (reported already).
fn written(layers: &[&Layer], key: &str) -> bool {
    layers.iter().any(|l| l.written(key))
}

/// First layer that sets `key`.
fn lookup<'a>(layers: &[&'a Layer], key: &str) -> Option<&'a Setting> {
    layers.iter().find_map(|l| l.get(key))
}

/// First layer that sets any key of a secret family wins (a device's `password_file` beats
/// the defaults' `password_env`).
fn lookup_secret(layers: &[&Layer], family: &[&str; 3]) -> Option<Secret> {
    layers.iter().find_map(|l| {
        family
            .iter()
            .find_map(|k| match l.get(k).map(|s| &s.value) {
                Some(Value::Secret(secret)) => Some(secret.clone()),
                _ => None,
            })
    })
}

fn str_of<'a>(layers: &[&'a Layer], key: &str) -> Option<&'a str> {
    lookup(layers, key).and_then(Setting::as_str)
}

fn duration_of(layers: &[&Layer], key: &str, default: Duration) -> Duration {
    match lookup(layers, key).map(|s| &s.value) {
        Some(Value::Duration(d)) => *d,
        _ => default,
    }
}

fn int_of(layers: &[&Layer], key: &str) -> Option<i64> {
    match lookup(layers, key).map(|s| &s.value) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

fn list_of(layers: &[&Layer], key: &str) -> Option<Vec<String>> {
    match lookup(layers, key).map(|s| &s.value) {
        Some(Value::List(items)) => Some(items.iter().map(|(s, _)| s.clone()).collect()),
        _ => None,
    }
}

fn resolve_device(
    raw: &RawConfig,
    layer: &Layer,
    name: &str,
    source: CommandSource,
    report: &mut Report,
) -> Option<Device> {
    let d = DeviceLayers {
        layers: layers_of(raw, layer, report),
        name,
        // Where to point when something is missing: the device's own header.
        here: layer.header.clone(),
    };
    let errors_before = report.errors().count();
    let transport = d.transport();
    let endpoint = d.endpoint(transport, report);
    let platform = str_of(&d.layers, "platform")
        .unwrap_or(defaults::PLATFORM)
        .to_string();
    let prompt = str_of(&d.layers, "prompt").map(str::to_string);
    let driver_exec = str_of(&d.layers, "driver_exec").map(PathBuf::from);
    d.check_prompt(&platform, driver_exec.is_some(), report);
    let entries = d.command_entries();
    let commands = d.commands(&entries, source, report);
    let ship = d.ship_rules(&entries, report);
    let isolation = d.isolation(driver_exec.is_some(), report);
    let capture = d.capture(transport, isolation, driver_exec.is_some(), report);
    let ssh = d.ssh(raw);
    if report.errors().count() > errors_before {
        return None;
    }
    let layers = &d.layers;
    Some(Device {
        name: name.to_string(),
        groups: list_of(layers, "groups").unwrap_or_default(),
        transport,
        endpoint: endpoint?,
        platform,
        prompt,
        username: str_of(layers, "username").map(str::to_string),
        password: lookup_secret(layers, &SECRET_FAMILIES[0]),
        enable_secret: lookup_secret(layers, &SECRET_FAMILIES[1]),
        ssh,
        ship,
        commands,
        interval: duration_of(layers, "interval", defaults::INTERVAL),
        connect_timeout: duration_of(layers, "connect_timeout", defaults::CONNECT_TIMEOUT),
        command_timeout: duration_of(layers, "command_timeout", defaults::COMMAND_TIMEOUT),
        max_output: match lookup(layers, "max_output").map(|s| &s.value) {
            Some(Value::Size(n)) => *n,
            _ => defaults::MAX_OUTPUT,
        },
        isolation,
        driver_exec,
        capture,
    })
}

/// One `[[device]]` being resolved: the layers it inherits from, most specific first.
struct DeviceLayers<'a> {
    layers: Vec<&'a Layer>,
    name: &'a str,
    /// The device's header, where a missing key is reported.
    here: Range<usize>,
}

impl DeviceLayers<'_> {
    fn transport(&self) -> TransportKind {
        match str_of(&self.layers, "transport").unwrap_or(defaults::TRANSPORT) {
            "telnet" => TransportKind::Telnet,
            "serial" => TransportKind::Serial,
            _ => TransportKind::Ssh,
        }
    }

    /// Host and port, or the serial port and its settings; `None` (reported) when missing.
    fn endpoint(&self, transport: TransportKind, report: &mut Report) -> Option<Endpoint> {
        let name = self.name;
        match transport {
            TransportKind::Ssh | TransportKind::Telnet => {
                let port = int_of(&self.layers, "port").map(|p| p as u16).unwrap_or(
                    if transport == TransportKind::Ssh {
                        defaults::SSH_PORT
                    } else {
                        defaults::TELNET_PORT
                    },
                );
                if let Some(host) = str_of(&self.layers, "host") {
                    return Some(Endpoint::Net {
                        host: host.to_string(),
                        port,
                    });
                }
                if !written(&self.layers, "host") {
                    report.error(
                        self.here.clone(),
                        format!(
                            "device `{name}` uses {} but has no `host`; add host = \"<address or name>\"",
                            transport.as_str()
                        ),
                    );
                }
                None
            }
            TransportKind::Serial => {
                if let Some(port) = str_of(&self.layers, "serial_port") {
                    return Some(Endpoint::Serial {
                        port: PathBuf::from(port),
                        settings: serial_settings(&self.layers),
                    });
                }
                if !written(&self.layers, "serial_port") {
                    report.error(
                        self.here.clone(),
                        format!(
                            "device `{name}` uses serial but has no `serial_port`; add serial_port = \"/dev/serial/by-id/...\" (stable across reboots) or \"/dev/ttyUSB0\""
                        ),
                    );
                }
                None
            }
        }
    }

    /// A `generic` device needs a prompt; an external driver knows its device (platform and
    /// prompt are only passed on to it).
    fn check_prompt(&self, platform: &str, external_driver: bool, report: &mut Report) {
        let name = self.name;
        if platform == "generic" && !written(&self.layers, "prompt") && !external_driver {
            report.error(
                self.here.clone(),
                format!(
                    "device `{name}` has platform `generic` but no `prompt`; add prompt = '<regex>' (e.g. '^{name}[>#]\\s*$') or choose a platform"
                ),
            );
        }
    }

    /// The commands as written (strings or tables), from the nearest layer that has them.
    fn command_entries(&self) -> Vec<CommandEntry> {
        match lookup(&self.layers, "commands").map(|s| &s.value) {
            Some(Value::Commands(entries)) => entries.clone(),
            _ => Vec::new(),
        }
    }

    fn commands(
        &self,
        entries: &[CommandEntry],
        source: CommandSource,
        report: &mut Report,
    ) -> Vec<String> {
        let name = self.name;
        // An empty list is a mistake; a list whose entries were all refused is reported already.
        let refused =
            written(&self.layers, "commands") && lookup(&self.layers, "commands").is_none();
        if entries.is_empty() && !refused && source == CommandSource::Configured {
            let span =
                lookup(&self.layers, "commands").map_or(self.here.clone(), |s| s.span.clone());
            report.error(
                span,
                format!("device `{name}` has no commands to run; set commands = [\"show version\", ...] on it, its groups or [defaults] (or give them for one run: rackhand collect --device {name} -- \"show version\")"),
            );
        }
        entries.iter().map(|e| e.run.clone()).collect()
    }

    /// Each configured command's `ship` rule: the command's own table over the device's
    /// `ship` and `full_every` (inherited). `ignore` or `full_every` on a command that ships
    /// `always` would do nothing: warned, at the entry.
    fn ship_rules(&self, entries: &[CommandEntry], report: &mut Report) -> ShipRules {
        let mode = ShipMode::from_config(str_of(&self.layers, "ship").unwrap_or("always"));
        let full_every = duration_of(&self.layers, "full_every", defaults::FULL_EVERY);
        let mut rules = ShipRules::default();
        for entry in entries {
            let rule = ShipRule {
                mode: entry.ship.as_deref().map_or(mode, ShipMode::from_config),
                ignore: entry.ignore.clone(),
                full_every: entry.full_every.unwrap_or(full_every),
            };
            if rule.mode == ShipMode::Always
                && (!entry.ignore.is_empty() || entry.full_every.is_some())
            {
                report.warning(
                    entry.span.clone(),
                    format!(
                        "device `{}`: `{}` ships always, so its `ignore`/`full_every` do nothing; add ship = \"on_change\" to the entry (or to the device, its groups or [defaults])",
                        self.name, entry.run
                    ),
                );
            }
            rules.insert(&entry.run, rule);
        }
        rules
    }

    /// `process` when asked for or with a `driver_exec`, which always runs isolated.
    fn isolation(&self, external_driver: bool, report: &mut Report) -> Isolation {
        let name = self.name;
        let asked = str_of(&self.layers, "isolation");
        if external_driver && asked == Some("thread") {
            let span =
                lookup(&self.layers, "isolation").map_or(self.here.clone(), |s| s.span.clone());
            report.error(
                span,
                format!("device `{name}` has a `driver_exec`, which always runs isolated; remove isolation = \"thread\""),
            );
        }
        if external_driver || asked == Some("process") {
            Isolation::Process
        } else {
            Isolation::Thread
        }
    }

    fn ssh(&self, raw: &RawConfig) -> SshSettings {
        let layers = &self.layers;
        let state_dir = raw.agent.str("state_dir").unwrap_or(defaults::STATE_DIR);
        SshSettings {
            key_file: str_of(layers, "key_file").map(PathBuf::from),
            key_passphrase: lookup_secret(layers, &SECRET_FAMILIES[2]),
            host_key_check: match str_of(layers, "host_key_check")
                .unwrap_or(defaults::HOST_KEY_CHECK)
            {
                "strict" => HostKeyCheck::Strict,
                "off" => HostKeyCheck::Off,
                _ => HostKeyCheck::AcceptNew,
            },
            known_hosts: str_of(layers, "known_hosts")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(state_dir).join("known_hosts")),
            legacy: matches!(
                lookup(layers, "legacy_ssh").map(|s| &s.value),
                Some(Value::Bool(true))
            ),
            kex: list_of(layers, "kex").unwrap_or_default(),
            host_key_algorithms: list_of(layers, "host_key_algorithms").unwrap_or_default(),
            ciphers: list_of(layers, "ciphers").unwrap_or_default(),
            macs: list_of(layers, "macs").unwrap_or_default(),
            keepalive: duration_of(layers, "keepalive", defaults::KEEPALIVE),
        }
    }
}

fn serial_settings(layers: &[&Layer]) -> SerialSettings {
    SerialSettings {
        baud: int_of(layers, "baud").map_or(defaults::BAUD, |b| b as u32),
        data_bits: int_of(layers, "data_bits").map_or(defaults::DATA_BITS, |b| b as u8),
        parity: match str_of(layers, "parity") {
            Some("odd") => Parity::Odd,
            Some("even") => Parity::Even,
            _ => Parity::None,
        },
        stop_bits: int_of(layers, "stop_bits").map_or(defaults::STOP_BITS, |b| b as u8),
        flow_control: match str_of(layers, "flow_control") {
            Some("software") => FlowControl::Software,
            Some("hardware") => FlowControl::Hardware,
            _ => FlowControl::None,
        },
    }
}

fn resolve_agent(layer: &Layer) -> Agent {
    Agent {
        id: layer.str("id").map(str::to_string).unwrap_or_else(hostname),
        workers: match layer.get("workers").map(|s| &s.value) {
            Some(Value::Int(n)) => *n as usize,
            _ => defaults::WORKERS,
        },
        state_dir: PathBuf::from(layer.str("state_dir").unwrap_or(defaults::STATE_DIR)),
        log_level: layer
            .str("log_level")
            .unwrap_or(defaults::LOG_LEVEL)
            .to_string(),
    }
}

/// The machine's hostname, the agent id when none is configured.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rackhand".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use std::path::Path;

    pub(super) fn resolve_text(text: &str) -> (Inventory, Report) {
        let (raw, mut report) = parse_str(Path::new("/etc/rackhand/rackhand.toml"), text);
        let inv = resolve(&raw, &mut report);
        (inv, report)
    }

    #[test]
    fn header_secrets_that_cannot_be_found_are_warned_about() {
        let (_, report) = resolve_text(
            r#"
[upstream]
sink = "http"
url = "http://127.0.0.1:9/ingest"
headers = { Authorization = "Bearer {env:RACKHAND_TEST_NO_SUCH_TOKEN}", X-Key = "{file:/nonexistent/key}", X-Plain = "rack {7}" }
"#,
        );
        let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("RACKHAND_TEST_NO_SUCH_TOKEN is not set"));
        assert!(warnings[1].contains("/nonexistent/key"));
    }

    #[test]
    fn a_device_value_beats_its_groups_in_order_which_beat_defaults() {
        let (inv, report) = resolve_text(
            r#"
[defaults]
platform = "cisco_ios"
commands = ["show version"]
interval = "15m"
command_timeout = "30s"
connect_timeout = "10s"

[[group]]
name = "first"
interval = "1m"
command_timeout = "5s"

[[group]]
name = "second"
interval = "2m"
connect_timeout = "3s"
commands = ["show clock"]

[[device]]
name = "sw1"
host = "192.0.2.1"
groups = ["first", "second"]
command_timeout = "7s"
"#,
        );
        assert!(!report.has_errors(), "{report}");
        let d = &inv.devices[0];
        assert_eq!(d.command_timeout, Duration::from_secs(7), "device wins");
        assert_eq!(
            d.interval,
            Duration::from_secs(60),
            "first group beats second"
        );
        assert_eq!(
            d.connect_timeout,
            Duration::from_secs(3),
            "second group beats defaults"
        );
        assert_eq!(d.commands, vec!["show clock".to_string()]);
        assert_eq!(d.platform, "cisco_ios", "defaults apply last");
        assert_eq!(
            d.max_output,
            defaults::MAX_OUTPUT,
            "built-in default at the end"
        );
        assert_eq!(
            d.endpoint,
            Endpoint::Net {
                host: "192.0.2.1".into(),
                port: 22
            }
        );
        assert_eq!(
            d.ssh.known_hosts,
            PathBuf::from("/var/lib/rackhand/known_hosts")
        );
    }

    #[test]
    fn the_most_specific_secret_source_wins_whatever_its_kind() {
        // SAFETY: the variable name is unique to this test; no other thread reads it.
        unsafe { std::env::set_var("RACKHAND_TEST_PW_7731", "from-env") };
        let (inv, report) = resolve_text(
            r#"
[defaults]
platform = "linux"
commands = ["uptime"]
password_env = "RACKHAND_TEST_PW_7731"

[[device]]
name = "a"
host = "192.0.2.1"

[[device]]
name = "b"
host = "192.0.2.2"
password = "inline"
"#,
        );
        assert!(!report.has_errors(), "{report}");
        assert_eq!(
            inv.devices[0].password.as_ref().unwrap().expose(),
            Some("from-env")
        );
        assert_eq!(
            inv.devices[1].password.as_ref().unwrap().expose(),
            Some("inline")
        );
        assert_eq!(report.warnings().count(), 1, "inline password warned once");
    }

    #[test]
    fn serial_and_telnet_devices_get_their_own_defaults() {
        let (inv, report) = resolve_text(
            r#"
[defaults]
platform = "cisco_ios"
commands = ["show version"]

[[device]]
name = "con1"
transport = "serial"
serial_port = "/dev/ttyUSB0"
parity = "even"
data_bits = 7

[[device]]
name = "t1"
transport = "telnet"
host = "192.0.2.7"
"#,
        );
        assert!(!report.has_errors(), "{report}");
        assert_eq!(inv.devices[0].address(), "/dev/ttyUSB0 9600 7E1");
        assert_eq!(inv.devices[1].address(), "192.0.2.7:23");
    }

    #[test]
    fn a_bad_value_is_reported_once_not_again_as_missing() {
        let (inv, report) = resolve_text(
            r#"
[[device]]
name = "x"
transport = "ssh"
host = 7
platform = "generic"
prompt = "(["
commands = []
"#,
        );
        let messages: Vec<String> = report.errors().map(|d| d.message.clone()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].contains("`host` must be a string"));
        assert!(messages[1].contains("not a valid regular expression"));
        assert!(messages[2].contains("no commands"));
        assert!(inv.devices.is_empty());
    }

    #[test]
    fn a_device_with_driver_exec_needs_neither_platform_nor_prompt() {
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/drivers/pdu.py");
        let (inv, report) = resolve_text(&format!(
            "[[device]]\nname = \"pdu1\"\ntransport = \"telnet\"\nhost = \"192.0.2.9\"\n\
             commands = [\"olStatus all\"]\ndriver_exec = \"{driver}\"\n\n\
             [[device]]\nname = \"sw1\"\nhost = \"192.0.2.1\"\ncommands = [\"show clock\"]\n"
        ));
        let errors: Vec<String> = report.errors().map(|d| d.message.clone()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("device `sw1` has platform `generic` but no `prompt`"),
            "the built-in driver still needs one: {errors:?}"
        );
        assert_eq!(inv.devices.len(), 1);
        assert_eq!(inv.devices[0].name, "pdu1");
        assert_eq!(inv.devices[0].prompt, None);
        assert_eq!(inv.devices[0].isolation, Isolation::Process);
    }

    #[test]
    fn a_device_without_commands_is_an_error_unless_they_come_from_the_command_line() {
        let text = "[[device]]\nname = \"bare\"\nhost = \"192.0.2.1\"\nplatform = \"cisco_ios\"\n";
        let (raw, mut report) = parse_str(Path::new("/etc/rackhand/rackhand.toml"), text);
        let inv = resolve(&raw, &mut report);
        let errors: Vec<String> = report.errors().map(|d| d.message.clone()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("no commands to run"), "{errors:?}");
        assert!(inv.devices.is_empty());

        let mut report = Report::new(Path::new("/etc/rackhand/rackhand.toml"), text);
        let inv = resolve_with(&raw, &mut report, CommandSource::AdHoc);
        assert!(!report.has_errors(), "{report}");
        assert_eq!(inv.devices.len(), 1);
        assert!(inv.devices[0].commands.is_empty());
    }

    #[test]
    fn max_packet_size_is_a_size_within_mqtts_limits_and_only_for_mqtt() {
        let mqtt = |value: &str| {
            resolve_text(&format!(
                "[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://127.0.0.1\"\nmax_packet_size = {value}\n"
            ))
        };
        let (inv, report) = mqtt("\"256KiB\"");
        assert!(
            !report.has_errors() && report.warnings().count() == 0,
            "{report}"
        );
        assert_eq!(inv.upstream.unwrap().max_packet_size, 256 * 1024);

        let (_, report) = resolve_text("[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://b\"\n");
        assert!(!report.has_errors(), "{report}");
        let (inv, _) = resolve_text("[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://b\"\n");
        assert_eq!(inv.upstream.unwrap().max_packet_size, 268_435_455);

        for (value, expect) in [
            ("\"512MiB\"", "it must be from 1024 bytes"),
            ("\"100B\"", "it must be from 1024 bytes"),
            ("65536", "write sizes with a unit"),
        ] {
            let (_, report) = mqtt(value);
            assert_eq!(report.errors().count(), 1, "{value}: {report}");
            let text = report.to_string();
            assert!(text.contains(expect), "{value}: {text}");
            assert!(
                text.contains("rackhand.toml:4:19: "),
                "at its value: {text}"
            );
        }

        let (_, report) = resolve_text(
            "[upstream]\nsink = \"http\"\nurl = \"http://c/ingest\"\nmax_packet_size = \"64KiB\"\n",
        );
        assert!(!report.has_errors(), "{report}");
        let warnings: Vec<String> = report.warnings().map(|d| d.message.clone()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("only to sink = \"mqtt\", not `http`"),
            "{warnings:?}"
        );
    }

    #[test]
    fn keep_alive_is_whole_seconds_within_mqtts_field() {
        let mqtt = |value: &str| {
            resolve_text(&format!(
                "[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://b\"\nkeep_alive = {value}\n"
            ))
        };
        let (inv, report) = mqtt("\"5s\"");
        assert!(!report.has_errors(), "{report}");
        assert_eq!(inv.upstream.unwrap().keep_alive, Duration::from_secs(5));
        let (inv, _) = resolve_text("[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://b\"\n");
        assert_eq!(inv.upstream.unwrap().keep_alive, defaults::MQTT_KEEP_ALIVE);
        for value in ["\"500ms\"", "\"1500ms\"", "\"20h\""] {
            let (_, report) = mqtt(value);
            assert_eq!(report.errors().count(), 1, "{value}: {report}");
            let text = report.to_string();
            assert!(
                text.contains("rackhand.toml:4:14: ") && text.contains("whole seconds"),
                "{value}: {text}"
            );
        }
    }

    #[test]
    fn upstream_needs_the_target_of_its_sink() {
        let (inv, report) = resolve_text("[upstream]\nsink = \"mqtt\"\nurl = \"http://x\"\n");
        assert!(inv.upstream.is_none());
        let msg = report.errors().next().unwrap().message.clone();
        assert!(msg.contains("sink `mqtt` needs `broker`"), "{msg}");
    }
}

//! The one way the tests write a rackhand config: `[agent]`, `[defaults]`, `[upstream]`,
//! `[[group]]` and `[[device]]` tables as `key = value` lines, set by key (a key set again
//! replaces its line: TOML forbids a key twice), turned into text in one place.
//!
//! Values are TOML as written (`"telnet"`, `4`, `["show clock"]`); `quote` and `list` make
//! them from Rust strings. A test whose input is a particular file (a typo at a line and
//! column, a starter config with comments) keeps that text literally: then the text is what
//! is under test, not a way to get a config.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::sshd::Sshd;

/// A config file, table by table.
#[derive(Clone, Debug, Default)]
pub struct Config {
    agent: Vec<String>,
    defaults: Vec<String>,
    /// None: no `[upstream]` at all (the agent's default, the file sink in `state_dir`).
    upstream: Vec<String>,
    metrics: Vec<String>,
    groups: Vec<Table>,
    devices: Vec<Table>,
}

/// One `[[device]]` (or `[[group]]`) table: its name and its other lines.
#[derive(Clone, Debug)]
pub struct Table {
    pub name: String,
    pub lines: Vec<String>,
}

/// A `[[device]]`.
pub type Dev = Table;

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// `[agent] key = value`.
    pub fn agent(mut self, key: &str, value: &str) -> Config {
        set_line(&mut self.agent, key, value);
        self
    }

    /// `[defaults] key = value`.
    pub fn defaults(mut self, key: &str, value: &str) -> Config {
        set_line(&mut self.defaults, key, value);
        self
    }

    /// `[defaults]` lines written as `key = value`, each replacing the key's earlier value.
    pub fn defaults_lines(mut self, lines: &[&str]) -> Config {
        for line in lines {
            let (key, value) = line.split_once(" = ").expect("a line as `key = value`");
            set_line(&mut self.defaults, key, value);
        }
        self
    }

    /// `[upstream] key = value`.
    pub fn upstream(mut self, key: &str, value: &str) -> Config {
        set_line(&mut self.upstream, key, value);
        self
    }

    /// `[upstream]` as whole lines (see `support::agent::http_upstream`).
    pub fn upstream_lines(mut self, lines: &[String]) -> Config {
        self.upstream.extend(lines.iter().cloned());
        self
    }

    /// `[metrics] key = value`.
    pub fn metrics(mut self, key: &str, value: &str) -> Config {
        set_line(&mut self.metrics, key, value);
        self
    }

    pub fn group(mut self, group: Table) -> Config {
        self.groups.push(group);
        self
    }

    pub fn device(mut self, device: Dev) -> Config {
        self.devices.push(device);
        self
    }

    pub fn devices(mut self, devices: impl IntoIterator<Item = Dev>) -> Config {
        self.devices.extend(devices);
        self
    }

    /// The file's text: the tables in the order the config reference lists them.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (header, lines) in [
            ("[agent]", &self.agent),
            ("[defaults]", &self.defaults),
            ("[upstream]", &self.upstream),
            ("[metrics]", &self.metrics),
        ] {
            if lines.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push('\n');
            }
            writeln!(text, "{header}").unwrap();
            for line in lines {
                writeln!(text, "{line}").unwrap();
            }
        }
        for (header, tables) in [("[[group]]", &self.groups), ("[[device]]", &self.devices)] {
            for table in tables {
                write!(text, "\n{header}\nname = \"{}\"\n", table.name).unwrap();
                for line in &table.lines {
                    writeln!(text, "{line}").unwrap();
                }
            }
        }
        text
    }

    /// Writes the config to `path` the way an operator's tooling should: a temp file renamed
    /// over the old one, so an agent reloading at that moment never reads half a file.
    pub fn write(&self, path: &Path) -> PathBuf {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        std::fs::write(&tmp, self.text()).unwrap();
        std::fs::rename(&tmp, path).unwrap();
        path.to_path_buf()
    }

    /// The inventory the agent would resolve from this text (as if read from `path`);
    /// panics, naming the problems, if the config has errors.
    pub fn inventory(&self, path: &Path) -> rackhand::inventory::Inventory {
        let text = self.text();
        let (raw, mut report) = rackhand::config::parse_str(path, &text);
        let inventory = rackhand::inventory::resolve(&raw, &mut report);
        assert!(!report.has_errors(), "bad test config:\n{report}\n{text}");
        inventory
    }
}

impl Table {
    /// A table with just its `name`.
    pub fn named(name: &str) -> Table {
        Table {
            name: name.to_string(),
            lines: Vec::new(),
        }
    }

    /// A device reached over `transport`.
    pub fn new(name: &str, transport: &str) -> Dev {
        Table::named(name).set("transport", &format!("\"{transport}\""))
    }

    /// A Telnet device at `addr` (the simulator's rack, or an address nobody answers on).
    pub fn telnet(name: &str, addr: SocketAddr) -> Dev {
        Dev::new(name, "telnet")
            .set("host", &format!("\"{}\"", addr.ip()))
            .set("port", &addr.port().to_string())
    }

    /// A console on the serial port (or pty link) at `path`, at 9600 baud.
    pub fn serial(name: &str, path: &Path) -> Dev {
        Dev::new(name, "serial")
            .set("serial_port", &quote(&path.display().to_string()))
            .set("baud", "9600")
    }

    /// Key login to the harness's `sshd`, its host key learned on first use.
    pub fn ssh_key(name: &str, sshd: &Sshd, known_hosts: &Path) -> Dev {
        Dev::new(name, "ssh")
            .set("host", &quote(&sshd.addr.ip().to_string()))
            .set("port", &sshd.addr.port().to_string())
            .set("username", &quote(&sshd.user))
            .set("key_file", &quote(&sshd.client_key.display().to_string()))
            .set("known_hosts", &quote(&known_hosts.display().to_string()))
            .set("host_key_check", "\"accept-new\"")
    }

    /// `commands = [...]`.
    pub fn commands<S: AsRef<str>>(self, commands: &[S]) -> Table {
        self.set("commands", &list(commands))
    }

    /// Sets `key`, replacing an earlier value (TOML forbids a key twice).
    pub fn set(mut self, key: &str, value: &str) -> Table {
        set_line(&mut self.lines, key, value);
        self
    }

    /// Adds a whole line (`key = value`) as written.
    pub fn with(mut self, line: &str) -> Table {
        self.lines.push(line.to_string());
        self
    }
}

fn set_line(lines: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key} = ");
    lines.retain(|l| !l.starts_with(&prefix));
    lines.push(format!("{prefix}{value}"));
}

/// A TOML literal string (our values never hold `'`): paths, users, anything unescaped.
pub fn quote(s: &str) -> String {
    assert!(!s.contains('\''), "{s:?} cannot be a TOML literal string");
    format!("'{s}'")
}

/// A TOML array of basic strings: `["show clock", "show version"]`.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|c| format!("{:?}", c.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

#[test]
fn a_key_set_twice_keeps_its_last_value_and_tables_come_in_reference_order() {
    let text = Config::new()
        .device(Dev::telnet("sw1", "127.0.0.1:2323".parse().unwrap()).set("port", "23"))
        .defaults("platform", "\"cisco_ios\"")
        .agent("id", "\"t\"")
        .defaults("commands", &list(&["show clock"]))
        .text();
    assert_eq!(
        text,
        "[agent]\nid = \"t\"\n\n[defaults]\nplatform = \"cisco_ios\"\ncommands = [\"show clock\"]\n\n\
         [[device]]\nname = \"sw1\"\ntransport = \"telnet\"\nhost = \"127.0.0.1\"\nport = 23\n"
    );
}

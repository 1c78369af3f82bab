//! What a simulated device is: CLI style, credentials, paging, latency and faults.
//!
//! One plain value decides everything a session does, so a test, the `rackhand sim` command
//! line and `rackhand demo` all describe a device the same way, and every transport (Telnet,
//! pty console, stdio) behaves identically for the same profile.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::SimError;
use super::outputs::Outputs;

/// How the device's CLI looks and behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Cisco IOS and look-alikes (NX-OS, EOS): `host>`, `host#`, ` --More-- `.
    Ios,
    /// Juniper Junos operational mode: `user@host> `, `---(more)---`.
    Junos,
    /// A Linux shell: `user@host:~$ `, no pager.
    Linux,
}

/// A misbehaviour on a chosen command, for testing how the agent copes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never answers; the session stays open.
    Hang,
    /// Closes the connection in the middle of the output.
    Drop,
    /// Output that never ends.
    Endless,
    /// Random binary bytes (0xFF, NUL, invalid UTF-8), then the prompt.
    Garbage,
    /// The output trickles out over a few seconds.
    Slow,
}

impl FromStr for Fault {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Fault, SimError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hang" => Ok(Fault::Hang),
            "drop" => Ok(Fault::Drop),
            "endless" => Ok(Fault::Endless),
            "garbage" => Ok(Fault::Garbage),
            "slow" => Ok(Fault::Slow),
            _ => Err(SimError::BadFault {
                spec: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Hang => "hang",
            Fault::Drop => "drop",
            Fault::Endless => "endless",
            Fault::Garbage => "garbage",
            Fault::Slow => "slow",
        })
    }
}

/// Parses `COMMAND=FAULT` as given to `--fault`.
pub fn parse_fault_spec(spec: &str) -> Result<(String, Fault), SimError> {
    let bad = || SimError::BadFault {
        spec: spec.to_string(),
    };
    let (command, fault) = spec.rsplit_once('=').ok_or_else(bad)?;
    let command = normalise_command(command);
    if command.is_empty() {
        return Err(bad());
    }
    let fault = fault.parse().map_err(|_| bad())?;
    Ok((command, fault))
}

/// Lower case, single spaces: the form commands are compared in.
pub fn normalise_command(command: &str) -> String {
    command
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The platforms the simulator knows, with their CLI style.
pub const PLATFORMS: &[(&str, Style)] = &[
    ("cisco_ios", Style::Ios),
    ("cisco_nxos", Style::Ios),
    ("arista_eos", Style::Ios),
    ("juniper_junos", Style::Junos),
    ("linux", Style::Linux),
];

/// Everything about one simulated device (with `count > 1`, the template for each).
#[derive(Debug, Clone)]
pub struct Profile {
    pub(crate) style: Style,
    pub platform: String,
    pub hostname: String,
    pub username: String,
    pub password: String,
    /// Ios style: with a secret the session starts at `host>` and `enable` asks for it;
    /// without one it starts at `host#`.
    pub enable_secret: Option<String>,
    /// Ask for username and password before the prompt.
    pub login: bool,
    /// Print "Press RETURN to get started." and wait for a key first.
    pub press_return: bool,
    /// Ask "Would you like to enter the initial configuration dialog? [yes/no]:" first, as
    /// a factory-fresh IOS box does; `no` goes on to the banner and login.
    pub(crate) config_dialog: bool,
    /// Message of the day, shown before login (Ios, Junos) or after it (Linux).
    pub banner: Option<String>,
    /// Lines per screen at session start; 0 = paging off.
    pub page_lines: usize,
    /// Answer `terminal length 0` / `set cli screen-length 0` with an authorization error,
    /// as a read-only AAA account gets; paging stays on.
    pub refuse_paging_off: bool,
    /// Delay before any output of a command.
    pub latency: Duration,
    /// Further delay before the answer to `exit`/`logout` (the logout banner, the console
    /// going back to "Press RETURN", the connection closing): a device whose logout waits
    /// on AAA accounting, say.
    pub exit_delay: Duration,
    /// How long a `slow` fault takes to trickle out one command's output.
    pub slow_duration: Duration,
    /// Faults by command (normalised: lower case, single spaces, full words).
    pub(crate) faults: Vec<(String, Fault)>,
    /// Echo typed characters (real gear always does; switch off for a client that echoes
    /// locally).
    pub(crate) echo: bool,
    /// Print numbered log lines on its own, as a console with `logging console` does: a few
    /// while idle between sessions, one right after the prompt that ends a command and one
    /// before the echo of each command line, every other one with the prompt reprinted
    /// (`logging synchronous`) and the rest without.
    pub chatty: bool,
    /// A console between sessions logs a numbered line this often, for as long as it is
    /// idle (a chatty one logs only a few): a console watched by a capture (issue 14).
    pub idle_log_every: Option<Duration>,
    /// The prompt in every mode, literally, instead of the style's: `host> ` makes a
    /// Junos-like device whose prompt the juniper_junos pattern (`user@host>`) does not match.
    pub prompt: Option<String>,
    /// A line printed above every prompt, as Junos shows `{master:0}` on a virtual chassis,
    /// `{primary:node0}` on a cluster or `[edit]` in configuration mode.
    pub context_line: Option<String>,
    pub outputs: Outputs,
}

impl Profile {
    /// A device of `platform` with the defaults a lab box has: hostname `sim`, `admin`/
    /// `admin`, login on, paging at 24 lines (Linux: off), outputs from the embedded captures.
    pub fn for_platform(platform: &str) -> Result<Profile, SimError> {
        let style = PLATFORMS
            .iter()
            .find(|(p, _)| *p == platform)
            .map(|(_, s)| *s)
            .ok_or_else(|| SimError::UnknownPlatform {
                platform: platform.to_string(),
            })?;
        Ok(Profile {
            style,
            platform: platform.to_string(),
            hostname: "sim".to_string(),
            username: "admin".to_string(),
            password: "admin".to_string(),
            enable_secret: None,
            login: true,
            press_return: false,
            config_dialog: false,
            banner: None,
            page_lines: if style == Style::Linux { 0 } else { 24 },
            refuse_paging_off: false,
            latency: Duration::ZERO,
            exit_delay: Duration::ZERO,
            slow_duration: Duration::from_secs(3),
            faults: Vec::new(),
            echo: true,
            chatty: false,
            idle_log_every: None,
            prompt: None,
            context_line: None,
            outputs: Outputs::embedded(platform),
        })
    }

    /// Replaces the outputs with one `.txt` file per command from `dir`.
    pub fn with_outputs_dir(mut self, dir: &Path) -> Result<Profile, SimError> {
        self.outputs = Outputs::from_dir(dir)?;
        Ok(self)
    }

    /// Adds a fault on `command` (any spacing or case; full words).
    pub fn with_fault(mut self, command: &str, fault: Fault) -> Profile {
        self.faults.push((normalise_command(command), fault));
        self
    }

    /// The fault configured for a (resolved, normalised) command, if any.
    pub fn fault_for(&self, command: &str) -> Option<Fault> {
        self.faults
            .iter()
            .rev()
            .find(|(c, _)| c == command)
            .map(|(_, f)| *f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_map_to_styles() {
        assert_eq!(
            Profile::for_platform("cisco_nxos").unwrap().style,
            Style::Ios
        );
        assert_eq!(
            Profile::for_platform("juniper_junos").unwrap().style,
            Style::Junos
        );
        let linux = Profile::for_platform("linux").unwrap();
        assert_eq!((linux.style, linux.page_lines), (Style::Linux, 0));
        let err = Profile::for_platform("hp_procurve")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hp_procurve") && err.contains("cisco_ios"),
            "{err}"
        );
    }

    #[test]
    fn fault_specs_parse() {
        assert_eq!(
            parse_fault_spec("Show  Version=hang").unwrap(),
            ("show version".to_string(), Fault::Hang)
        );
        assert_eq!(
            parse_fault_spec("show ip route = SLOW").unwrap().1,
            Fault::Slow
        );
        assert!(parse_fault_spec("show version").is_err());
        assert!(parse_fault_spec("=drop").is_err());
        assert!(parse_fault_spec("show version=explode").is_err());
    }
}

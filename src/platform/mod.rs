//! The platform table: what a session must know about a platform — its prompts, how to turn paging off,
//! how to enable, which output lines mean "command rejected", how to leave.
//!
//! The knowledge is data (`platforms.toml`, embedded), loaded and checked once. Code that
//! needs a platform asks for a [`Platform`] by name; a platform that is not in the table is a
//! config error long before a session starts (`config::schema::PLATFORMS` lists the same
//! names, and a test keeps the two in step).
//!
//! Named `platform`, not `driver`: in rackhand a driver is the program that runs a session in
//! a child process (`rackhand driver`, `driver_exec`, `crate::isolation`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex_lite::Regex;
use serde::Deserialize;

use crate::channel::Pager;

const TABLE: &str = include_str!("platforms.toml");

/// A platform as written in `platforms.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformSpec {
    prompt: String,
    #[serde(default)]
    prompt_context: Option<String>,
    #[serde(default)]
    privileged: Option<String>,
    #[serde(default)]
    config: Option<String>,
    #[serde(default)]
    config_exit: Option<String>,
    #[serde(default)]
    enable: Option<String>,
    #[serde(default)]
    setup: Vec<String>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    exit: Vec<String>,
    #[serde(default)]
    volatile: Vec<String>,
    alerts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PagerSpec {
    pattern: String,
    answer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonSpec {
    pagers: Vec<PagerSpec>,
    username: String,
    password: String,
    press_return: String,
    dialog: String,
    dialog_answer: String,
    login_failed: String,
}

/// A platform ready for sessions: every pattern compiled.
#[derive(Debug)]
pub struct Platform {
    pub(crate) name: String,
    /// `None` for `generic`: the device's own `prompt` setting is used.
    pub(crate) prompt: Option<Regex>,
    /// A context line printed directly above the prompt (Junos `{master:0}`, `[edit]`):
    /// part of the prompt, not of a command's output.
    pub(crate) prompt_context: Option<Regex>,
    pub(crate) privileged: Option<Regex>,
    pub(crate) config: Option<Regex>,
    pub(crate) config_exit: Option<String>,
    pub(crate) enable: Option<String>,
    pub(crate) setup: Vec<String>,
    pub(crate) errors: Vec<Regex>,
    pub(crate) exit: Vec<String>,
    /// Output lines that change on every run without a change on the device (clocks,
    /// uptimes): left out when change-only shipping compares outputs (`crate::change`).
    pub(crate) volatile: Vec<Regex>,
    /// Console lines that make a captured console's record an alert (`crate::console`).
    pub(crate) alerts: Vec<Regex>,
}

/// What every platform shares: pagers and login dialog patterns.
#[derive(Debug)]
pub struct Common {
    pub pagers: Vec<Pager>,
    pub(crate) username: Regex,
    pub(crate) password: Regex,
    pub(crate) press_return: Regex,
    pub(crate) dialog: Regex,
    pub(crate) dialog_answer: String,
    pub(crate) login_failed: Regex,
}

#[derive(Debug)]
pub struct Table {
    pub(crate) platforms: BTreeMap<String, Platform>,
    pub common: Common,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Platform> {
        self.platforms.get(name)
    }

    /// Whether `line` (one output line) says the device rejected the command.
    pub fn is_error_line(platform: &Platform, line: &str) -> bool {
        platform.errors.iter().any(|r| r.is_match(line))
    }
}

/// The embedded table, parsed and compiled on first use.
pub fn table() -> &'static Table {
    static TABLE_CELL: OnceLock<Table> = OnceLock::new();
    TABLE_CELL.get_or_init(|| parse(TABLE).expect("the embedded platforms.toml is valid"))
}

fn regex(platform: &str, key: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("platforms.toml [{platform}] {key}: {e}"))
}

fn parse(text: &str) -> Result<Table, String> {
    let mut raw: BTreeMap<String, toml::Value> =
        toml::from_str(text).map_err(|e| format!("platforms.toml: {e}"))?;
    let common_value = raw
        .remove("common")
        .ok_or("platforms.toml has no [common] table")?;
    let common: CommonSpec = common_value
        .try_into()
        .map_err(|e| format!("platforms.toml [common]: {e}"))?;
    let mut platforms = BTreeMap::new();
    for (name, value) in raw {
        let spec: PlatformSpec = value
            .try_into()
            .map_err(|e| format!("platforms.toml [{name}]: {e}"))?;
        let opt = |key: &str, p: &Option<String>| -> Result<Option<Regex>, String> {
            p.as_deref().map(|p| regex(&name, key, p)).transpose()
        };
        let platform = Platform {
            prompt: if spec.prompt.is_empty() {
                None
            } else {
                Some(regex(&name, "prompt", &spec.prompt)?)
            },
            prompt_context: opt("prompt_context", &spec.prompt_context)?,
            privileged: opt("privileged", &spec.privileged)?,
            config: opt("config", &spec.config)?,
            config_exit: spec.config_exit,
            enable: spec.enable,
            setup: spec.setup,
            errors: spec
                .errors
                .iter()
                .map(|e| regex(&name, "errors", e))
                .collect::<Result<_, _>>()?,
            exit: spec.exit,
            volatile: spec
                .volatile
                .iter()
                .map(|v| regex(&name, "volatile", v))
                .collect::<Result<_, _>>()?,
            alerts: spec
                .alerts
                .iter()
                .map(|e| regex(&name, "alerts", e))
                .collect::<Result<_, _>>()?,
            name: name.clone(),
        };
        platforms.insert(name, platform);
    }
    let common = Common {
        pagers: common
            .pagers
            .iter()
            .map(|p| {
                Ok(Pager {
                    pattern: regex("common", "pagers", &p.pattern)?,
                    answer: p.answer.as_bytes().to_vec(),
                })
            })
            .collect::<Result<_, String>>()?,
        username: regex("common", "username", &common.username)?,
        password: regex("common", "password", &common.password)?,
        press_return: regex("common", "press_return", &common.press_return)?,
        dialog: regex("common", "dialog", &common.dialog)?,
        dialog_answer: common.dialog_answer,
        login_failed: regex("common", "login_failed", &common.login_failed)?,
    };
    Ok(Table { platforms, common })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_exactly_the_platforms_the_config_accepts() {
        let names: Vec<&str> = table().platforms.keys().map(String::as_str).collect();
        let mut accepted = crate::config::schema::PLATFORMS.to_vec();
        accepted.sort();
        assert_eq!(names, accepted);
    }

    #[test]
    fn prompts_match_real_prompts_in_every_mode_and_not_output() {
        let t = table();
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "cisco_ios",
                &[
                    "router1>",
                    "router1#",
                    "sw-core.fra(config)#",
                    "r1(config-if)# ",
                ],
                &[
                    "  GigabitEthernet0/1 is up",
                    "Building configuration...",
                    "#",
                ],
            ),
            (
                "cisco_nxos",
                &["n9k-1#", "n9k-1(config)#"],
                &["show version"],
            ),
            (
                "arista_eos",
                &["leaf1>", "leaf1#", "leaf1(config-if-Et1)#"],
                &["Arista DCS"],
            ),
            (
                "juniper_junos",
                &[
                    "netops@edge1>",
                    "netops@edge1#",
                    "{master:0}\nnetops@edge1>",
                    "{master:0} netops@edge1> ",
                ],
                &["Hostname: edge1"],
            ),
            (
                "linux",
                &["ops@srv1:~$", "root@srv1:/var/log# "],
                &["total 12"],
            ),
        ];
        for (name, good, bad) in cases {
            let p = t.get(name).unwrap().prompt.as_ref().unwrap();
            for g in good.iter().filter(|g| !g.contains('\n')) {
                assert!(p.is_match(g), "{name} prompt should match {g:?}");
            }
            for b in *bad {
                assert!(!p.is_match(b), "{name} prompt should not match {b:?}");
            }
        }
    }

    #[test]
    fn pagers_of_each_vendor_are_recognised() {
        let common = &table().common;
        for pager in [
            " --More-- ",
            "-- More --",
            "---(more)---",
            "---(more 42%)---",
            " <--- More --->",
        ] {
            assert!(
                common.pagers.iter().any(|p| p.pattern.is_match(pager)),
                "{pager:?} not recognised"
            );
        }
    }

    #[test]
    fn rejected_commands_are_recognised_per_platform() {
        let t = table();
        let ios = t.get("cisco_ios").unwrap();
        assert!(Table::is_error_line(
            ios,
            "% Invalid input detected at '^' marker."
        ));
        assert!(!Table::is_error_line(
            ios,
            "Cisco IOS Software, Version 15.2"
        ));
        let junos = t.get("juniper_junos").unwrap();
        assert!(Table::is_error_line(junos, "syntax error."));
    }

    #[test]
    fn volatile_lines_of_each_platform_are_recognised_and_config_lines_are_not() {
        let t = table();
        let is_volatile = |name: &str, line: &str| {
            let p = t.get(name).unwrap();
            p.volatile.iter().any(|r| r.is_match(line))
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "cisco_ios",
                &[
                    "! Last configuration change at 10:15:32 UTC Tue Mar 3 2026 by admin",
                    "! NVRAM config last updated at 10:15:40 UTC Tue Mar 3 2026 by admin",
                    "ntp clock-period 17179868",
                    "Current configuration : 4125 bytes",
                    "router1 uptime is 2 years, 31 weeks, 6 days, 9 hours, 55 minutes",
                ],
                &[
                    "ntp server 10.0.0.1",
                    "hostname router1",
                    " description uptime is important",
                    "!",
                    "System restarted at 09:09:22 UTC Tue Apr 9 2013",
                ],
            ),
            (
                "cisco_nxos",
                &[
                    "!Time: Tue Mar  3 10:15:32 2026",
                    "Kernel uptime is 123 day(s), 5 hour(s), 15 minute(s), 19 second(s)",
                ],
                &["!Command: show running-config", "version 9.3(8)"],
            ),
            (
                "arista_eos",
                &[
                    "Uptime:                 1 hour and 5 minutes",
                    "Free memory:            301240 kB",
                ],
                &["Total memory:           2028860 kB", "! device: leaf1"],
            ),
            (
                "juniper_junos",
                &[
                    "## Last commit: 2021-07-13 16:35:35 MSK by admin",
                    "Current time: 2021-08-31 08:48:11 MSK",
                    "System booted: 2021-03-29 13:32:05 MSK (22w0d 19:16 ago)",
                    " 8:48AM  up 154 days, 19:16, 2 users, load averages: 0.04, 0.04, 0.01",
                ],
                &[
                    "Time Source:  NTP CLOCK",
                    "version 13.3R1.4;",
                    "    host-name edge1;",
                ],
            ),
            (
                "linux",
                &[" 10:15:32 up 12 days,  3:04,  2 users,  load average: 0.00, 0.01, 0.05"],
                &["total 12"],
            ),
        ];
        for (name, volatile, kept) in cases {
            for line in *volatile {
                assert!(is_volatile(name, line), "{name}: {line:?} is volatile");
            }
            for line in *kept {
                assert!(!is_volatile(name, line), "{name}: {line:?} is not volatile");
            }
        }
        assert!(t.get("generic").unwrap().volatile.is_empty());
    }

    #[test]
    fn junos_context_lines_are_recognised_and_output_lines_are_not() {
        let context = table()
            .get("juniper_junos")
            .and_then(|p| p.prompt_context.as_ref())
            .expect("juniper_junos has a prompt_context");
        for line in [
            "{master:0}",
            "{primary:node0}",
            "{secondary:node1}",
            "{backup}",
            "[edit]",
            "[edit interfaces ge-0/0/0]",
            "[edit protocols ospf area 0.0.0.0] ",
        ] {
            assert!(context.is_match(line), "{line:?} is a context line");
        }
        for line in [
            "Hostname: edge1",
            "  {master:0}",
            "[edit] interfaces",
            "inet 10.0.0.1/24 {",
            "}",
        ] {
            assert!(!context.is_match(line), "{line:?} is output");
        }
    }
    /// Each platform's built-in alert patterns (console capture): what real consoles print
    /// when something is badly wrong matches; ordinary log lines do not.
    #[test]
    fn alert_patterns_match_crashes_and_boot_loaders_and_not_ordinary_log_lines() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "cisco_ios",
                &[
                    "*Mar  1 00:10:02.123: %SYS-2-MALLOCFAIL: Memory allocation of 65536 bytes failed from 0x60A1B2C4, alignment 0",
                    "*Mar  1 00:00:05.000: %SYS-5-RESTART: System restarted --",
                    "-Traceback= 0x6054A2B0 0x6054A4C8 0x60A1B2C4",
                    "rommon 1 > ",
                    "System returned to ROM by reload at 10:00:00 UTC Mon Nov 30 2026",
                    "Unexpected exception to CPU: vector 1500, PC = 0x6054A2B0",
                ],
                &[
                    "*Mar  1 00:00:01.001: %LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up",
                    "*Mar  1 00:00:02.000: %SYS-5-CONFIG_I: Configured from console by admin on vty0",
                    "router1#show rommon",
                ],
            ),
            (
                "cisco_nxos",
                &[
                    "2026 Nov 30 10:00:00 n9k %SYSMGR-2-SERVICE_CRASHED: Service \"bgp\" (PID 4321) hasn't caught signal 11 (core will be saved).",
                    "2026 Nov 30 10:00:00 n9k %KERN-0-SYSTEM_MSG: [ 1234.5] Kernel panic - not syncing",
                    "loader> ",
                    "[ 1234.567] Kernel panic - not syncing: Fatal exception",
                ],
                &["2026 Nov 30 10:00:00 n9k %ETHPORT-5-IF_UP: Interface Ethernet1/1 is up"],
            ),
            (
                "arista_eos",
                &[
                    "[ 12.345678] Kernel panic - not syncing: Watchdog detected hard LOCKUP",
                    "Call Trace:",
                    "Aboot#",
                    "Nov 30 10:00:00 sw1 ProcMgr-worker: %PROCMGR-3-PROCESS_TERMINATED: 'Bgp' (PID=1234) has terminated",
                ],
                &[
                    "Nov 30 10:00:00 sw1 Ebra: %LINEPROTO-5-UPDOWN: Line protocol on Interface Ethernet1, changed state to up",
                ],
            ),
            (
                "juniper_junos",
                &[
                    "panic: page fault",
                    "Fatal trap 12: page fault while in kernel mode",
                    "db> ",
                    "loader>",
                    "Nov 30 10:00:00 mx1 /kernel: %KERN-2: Dumping core",
                ],
                &[
                    "Nov 30 10:00:00 mx1 mib2d[1234]: SNMP_TRAP_LINK_UP: ifIndex 512, ifAdminStatus up(1), ifOperStatus up(1), ifName ge-0/0/0",
                    "user@mx1> show system panic-info",
                ],
            ),
            (
                "linux",
                &[
                    "[ 1234.567890] Kernel panic - not syncing: Attempted to kill init!",
                    "[ 1234.567890] Call Trace:",
                    "[ 1234.567890] BUG: kernel NULL pointer dereference, address: 0000000000000000",
                    "Out of memory: Killed process 4321 (java) total-vm:1234kB",
                ],
                &[
                    "[ 1234.567890] usb 1-1: new high-speed USB device number 2 using xhci_hcd",
                    "user@host:~$ grep 'Call Trace' /var/log/kern.log",
                ],
            ),
            (
                "generic",
                &[
                    "Kernel panic - not syncing: VFS",
                    "rommon 2 >",
                    "Call Trace:",
                ],
                &["Interface up"],
            ),
        ];
        for (name, alerts, ordinary) in cases {
            let p = table().get(name).unwrap();
            let is_alert = |l: &str| p.alerts.iter().any(|r| r.is_match(l));
            for line in *alerts {
                assert!(is_alert(line), "{name}: {line:?} is an alert");
            }
            for line in *ordinary {
                assert!(!is_alert(line), "{name}: {line:?} is not an alert");
            }
        }
        for name in table().platforms.keys() {
            assert!(
                cases.iter().any(|(n, _, _)| n == name),
                "{name} has no alert test"
            );
        }
    }
}

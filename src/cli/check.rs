//! `rackhand check`: validate the config, print the resolved inventory.
//!
//! The command an engineer runs after every edit, before `systemctl reload`: every problem at
//! once as `FILE:LINE:COL: message` (exit 2), or the inventory as the agent will see it.

use std::io::Write;
use std::path::Path;

use crate::config::Report;
use crate::config::units::{format_duration, format_size};
use crate::inventory::{self, Inventory, ShipMode, SinkKind, TransportKind};

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {}

/// Loads, resolves and checks; the report carries every finding.
pub fn load(path: &Path) -> anyhow::Result<(Inventory, Report)> {
    Ok(inventory::load(path)?)
}

pub fn run(path: &Path, _args: &CheckArgs) -> anyhow::Result<i32> {
    let (inventory, report) = load(path)?;
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in report.warnings() {
        writeln!(err, "{}", report.render(d))?;
    }
    if report.has_errors() {
        let count = report.errors().count();
        for d in report.errors() {
            writeln!(err, "{}", report.render(d))?;
        }
        writeln!(
            err,
            "rackhand check: {count} error{} in {}; fix them and run check again",
            if count == 1 { "" } else { "s" },
            path.display()
        )?;
        return Ok(2);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write!(out, "{}", render_inventory(path, &inventory))?;
    Ok(0)
}

/// The inventory as a table, with a header line about the agent and upstream.
pub(crate) fn render_inventory(path: &Path, inv: &Inventory) -> String {
    // What the agent will really do, default included.
    let upstream = inv.upstream_in_force();
    let mut text = format!(
        "config {}: ok\nagent {}: {} workers, state in {}, upstream {} {}{}{}\n\n",
        path.display(),
        inv.agent.id,
        inv.agent.workers,
        inv.agent.state_dir.display(),
        upstream.sink.as_str(),
        crate::config::url::redact(&upstream.target),
        packet_limit(&upstream),
        if inv.upstream.is_none() {
            " (no [upstream]: NDJSON files in state_dir)"
        } else {
            ""
        }
    );
    if let Some(led) = &inv.board.status_led {
        // Before the blank line, so the table's position stays put.
        text.insert_str(text.len() - 1, &crate::led::describe_for_check(led));
    }
    if let Some(metrics) = describe_metrics(&inv.metrics) {
        text.insert_str(text.len() - 1, &metrics);
    }
    if inv.devices.is_empty() {
        // A starter config (a package installs one and starts the agent): not an error.
        text.push_str(
            "no devices yet: add a [[device]] table for each (name, transport, host or serial_port); \
             `rackhand run` runs idle until then and collects them after a reload \
             (SIGHUP: systemctl reload rackhand)\n",
        );
        return text;
    }
    let header = [
        "DEVICE",
        "TRANSPORT",
        "ADDRESS",
        "PLATFORM",
        "COMMANDS",
        "INTERVAL",
        "ISOLATION",
    ];
    let rows: Vec<[String; 7]> = inv
        .devices
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.transport.as_str().to_string(),
                d.address(),
                d.platform.clone(),
                summarize_commands(&d.commands, 44),
                format_duration(d.interval),
                if d.driver_exec.is_some() {
                    "process (driver_exec)".to_string()
                } else {
                    d.isolation.as_str().to_string()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    text.push_str(&line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        text.push_str(&line(&cells));
    }
    text.push_str(&shipping_summary(&inv.devices));
    text.push_str(&capture_summary(&inv.devices));
    let count = |t: TransportKind| inv.devices.iter().filter(|d| d.transport == t).count();
    text.push_str(&format!(
        "\n{} device{}: {} ssh, {} telnet, {} serial; {} commands per pass\n",
        inv.devices.len(),
        if inv.devices.len() == 1 { "" } else { "s" },
        count(TransportKind::Ssh),
        count(TransportKind::Telnet),
        count(TransportKind::Serial),
        inv.devices.iter().map(|d| d.commands.len()).sum::<usize>(),
    ));
    text
}

/// `[metrics]` as the agent will serve it: where Prometheus scrapes, where node_exporter reads.
fn describe_metrics(metrics: &inventory::MetricsConfig) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(addr) = metrics.listen {
        parts.push(format!("http://{addr}/metrics"));
    }
    if let Some(path) = &metrics.textfile {
        parts.push(format!("textfile {}", path.display()));
    }
    (!parts.is_empty()).then(|| format!("metrics {}\n", parts.join(", ")))
}

/// Which commands ship `on_change` (issue 13), device by device; every other command ships
/// `always`. Empty when none does, so the usual table stays as it was.
fn shipping_summary(devices: &[inventory::Device]) -> String {
    let mut lines = String::new();
    for d in devices {
        let described: Vec<String> = d
            .commands
            .iter()
            .filter_map(|c| d.ship.rule(c).map(|r| (c, r)))
            .filter(|(_, r)| r.mode == ShipMode::OnChange)
            .map(|(c, r)| {
                let mut notes = Vec::new();
                if !r.ignore.is_empty() {
                    notes.push(format!(
                        "ignore {} pattern{}",
                        r.ignore.len(),
                        if r.ignore.len() == 1 { "" } else { "s" }
                    ));
                }
                if r.full_every != inventory::defaults::FULL_EVERY {
                    notes.push(format!("whole every {}", format_duration(r.full_every)));
                }
                if notes.is_empty() {
                    c.clone()
                } else {
                    format!("{c} ({})", notes.join(", "))
                }
            })
            .collect();
        if !described.is_empty() {
            lines.push_str(&format!("  {}: {}\n", d.name, described.join(", ")));
        }
    }
    if lines.is_empty() {
        return lines;
    }
    format!(
        "\nship on_change (whole only when changed, else output null; whole at least every {} unless noted):\n{lines}every other command ships always\n",
        format_duration(inventory::defaults::FULL_EVERY)
    )
}

/// The devices whose console is captured between jobs (`capture = true`), with their own
/// alert patterns (the platform's apply too).
fn capture_summary(devices: &[inventory::Device]) -> String {
    let lines: String = devices
        .iter()
        .filter_map(|d| {
            let capture = d.capture.as_ref()?;
            let alerts = match capture.alert.len() {
                0 => "platform alerts".to_string(),
                n => format!("platform alerts + {n} own"),
            };
            Some(format!("  {}: {} ({alerts})\n", d.name, d.address()))
        })
        .collect();
    if lines.is_empty() {
        return lines;
    }
    format!("\nconsole captured between jobs (capture = true):\n{lines}")
}

/// `show version, show clock, +3 more`, within about `width` characters.
fn summarize_commands(commands: &[String], width: usize) -> String {
    let mut shown = String::new();
    for (i, c) in commands.iter().enumerate() {
        let rest = commands.len() - i;
        let candidate = if shown.is_empty() {
            c.clone()
        } else {
            format!("{shown}, {c}")
        };
        let reserve = if rest > 1 { 10 } else { 0 };
        if !shown.is_empty() && candidate.chars().count() + reserve > width {
            return format!("{shown}, +{rest} more");
        }
        shown = candidate;
    }
    shown
}

/// `, max_packet_size 256KiB` for an mqtt upstream whose broker limits packets below MQTT's
/// own largest: records over it go to the dead-letter file, worth seeing at a glance.
fn packet_limit(upstream: &inventory::Upstream) -> String {
    if upstream.sink == SinkKind::Mqtt
        && upstream.max_packet_size < inventory::defaults::MQTT_MAX_PACKET_SIZE
    {
        format!(
            ", max_packet_size {}",
            format_size(upstream.max_packet_size as u64)
        )
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_a_brokers_packet_limit_when_there_is_one() {
        let header = |extra: &str| {
            let path = Path::new("/etc/rackhand/rackhand.toml");
            let text = format!(
                "[agent]\nid = \"a\"\n[upstream]\nsink = \"mqtt\"\nbroker = \"mqtt://b\"\n{extra}"
            );
            let (raw, mut report) = crate::config::parse_str(path, &text);
            let inv = inventory::resolve(&raw, &mut report);
            assert!(!report.has_errors(), "{report}");
            render_inventory(path, &inv)
                .lines()
                .nth(1)
                .unwrap()
                .to_string()
        };
        let limited = header("max_packet_size = \"256KiB\"\n");
        assert!(
            limited.ends_with("upstream mqtt mqtt://b, max_packet_size 256KiB"),
            "{limited}"
        );
        let plain = header("");
        assert!(plain.ends_with("upstream mqtt mqtt://b"), "{plain}");
    }

    #[test]
    fn without_upstream_the_header_names_the_outbox_the_agent_writes() {
        let path = Path::new("/etc/rackhand/rackhand.toml");
        let (raw, mut report) =
            crate::config::parse_str(path, "[agent]\nid = \"a\"\nstate_dir = \"/srv/rh\"\n");
        let inv = inventory::resolve(&raw, &mut report);
        assert!(!report.has_errors(), "{report}");
        let header = render_inventory(path, &inv)
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        let outbox = inv.upstream_in_force();
        assert_eq!(outbox.sink, SinkKind::File);
        assert_eq!(outbox.target, "/srv/rh/outbox");
        assert!(
            header.ends_with(
                "upstream file /srv/rh/outbox (no [upstream]: NDJSON files in state_dir)"
            ),
            "{header}"
        );
    }

    #[test]
    fn long_command_lists_are_summarized_with_a_count() {
        let cmds: Vec<String> = [
            "show version",
            "show clock",
            "show inventory",
            "show ip route",
            "show vlan",
        ]
        .map(String::from)
        .to_vec();
        let s = summarize_commands(&cmds, 44);
        assert!(s.starts_with("show version, show clock"), "{s}");
        assert!(s.ends_with("more"), "{s}");
        assert_eq!(
            summarize_commands(&cmds[..2], 44),
            "show version, show clock"
        );
    }
}

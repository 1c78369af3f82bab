//! `rackhand status`: what the agent is doing, from another shell, while it runs.
//!
//! The agent keeps `status.json` in its state folder (see `crate::status_file`); this command reads
//! the config only to find that folder, reads the file, checks that the process that wrote it
//! is still a live rackhand that keeps saving, and prints a short report or the JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::units::{approx_size, format_duration, format_size};
use crate::inventory;
use crate::status_file::{
    self, Age, AgentStatus, DeviceStatus, Liveness, SpoolStatus, UpstreamStatus,
};

/// The exit status is in the help (`after_help`): 0 running; 1 stopped, stuck or never run
/// with this state_dir; 2 the config is not TOML or `[agent]` has errors (so `state_dir` is
/// unknown), or the status file cannot be read. Errors elsewhere in the config are warned.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the agent is running (its pid is a live rackhand that \
    saved the status in the last 30 s); 1 not running, stuck, or no status yet; 2 the config is \
    not TOML or [agent] has errors, or the status file is unreadable (errors elsewhere in the \
    config are only warned about: a running agent keeps the config it loaded)."
)]
pub(crate) struct StatusArgs {
    /// `text`: a short report for people; `json`: the status file as one JSON object, plus
    /// `"running": true|false`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Only this device: its collections and, for a captured console (`capture = true`),
    /// the last lines the console printed.
    #[arg(long, value_name = "NAME")]
    pub(crate) device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

/// Whether `[agent]` can be trusted in a config with errors: the file is valid TOML and no
/// error lies in the `[agent]` table (where `state_dir` is).
fn agent_table_is_sound(report: &crate::config::Report) -> bool {
    if report.text.parse::<toml::Table>().is_err() {
        return false;
    }
    let Some(agent) = agent_table_span(&report.text) else {
        return true;
    };
    report
        .errors()
        .all(|d| d.span.end <= agent.start || d.span.start >= agent.end)
}

/// The bytes from the `[agent]` header to the next table header (or the end).
fn agent_table_span(text: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let header = line.trim_start().starts_with('[');
        match start {
            None if line.trim() == "[agent]" || line.trim_start().starts_with("[agent]") => {
                start = Some(offset);
            }
            Some(begin) if header => return Some(begin..offset),
            _ => {}
        }
        offset += line.len();
    }
    start.map(|begin| begin..text.len())
}

/// Device errors longer than this are cut in the table (the JSON has them whole).
const ERROR_WIDTH: usize = 60;

pub fn run(path: &Path, args: &StatusArgs) -> anyhow::Result<i32> {
    let (inventory, report) = inventory::load(path)?;
    // An engineer who is editing the config while the agent runs on the previous one still
    // wants to see the agent: errors outside `[agent]` do not hide where its state is.
    if report.has_errors() && agent_table_is_sound(&report) {
        let count = report.errors().count();
        eprintln!(
            "rackhand status: {count} error{} in {} outside [agent] (see `rackhand check -c {}`); a running agent keeps the config it loaded last",
            if count == 1 { "" } else { "s" },
            path.display(),
            path.display()
        );
    } else if report.has_errors() {
        let stderr = std::io::stderr();
        let mut err = stderr.lock();
        let count = report.errors().count();
        for d in report.errors() {
            writeln!(err, "{}", report.render(d))?;
        }
        writeln!(
            err,
            "rackhand status: {count} error{} in {}; fix them (`rackhand check -c {}`) so status can find agent.state_dir",
            if count == 1 { "" } else { "s" },
            path.display(),
            path.display()
        )?;
        return Ok(2);
    }
    let state_dir = &inventory.agent.state_dir;
    let (status, file) = match AgentStatus::find(state_dir) {
        Ok(Some(found)) => (found.status, found.path),
        Ok(None) => {
            eprintln!(
                "rackhand status: no status in {} (nor in {}): the agent has not run with this state_dir yet; \
                 start it with `systemctl start rackhand` or `rackhand run -c {}`",
                AgentStatus::path(state_dir).display(),
                status_file::SYSTEM_RUNTIME_DIR,
                path.display()
            );
            if args.format == Format::Json {
                println!("{}", serde_json::json!({ "running": false }));
            }
            return Ok(1);
        }
        Err(err) => {
            eprintln!("rackhand status: {err}");
            return Ok(2);
        }
    };
    let now = SystemTime::now();
    let liveness = status.liveness(now);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(name) = &args.device {
        return device_report(&mut out, &status, name, liveness, args.format, now);
    }
    match args.format {
        Format::Json => {
            // `running` first, then the file's fields in their order.
            #[derive(serde::Serialize)]
            struct WithRunning<'a> {
                running: bool,
                #[serde(flatten)]
                status: &'a AgentStatus,
            }
            let json = serde_json::to_string(&WithRunning {
                running: liveness == Liveness::Running,
                status: &status,
            })?;
            writeln!(out, "{json}")?;
        }
        Format::Text => write!(out, "{}", render(&status, &file, liveness, now))?,
    }
    Ok(if liveness == Liveness::Running { 0 } else { 1 })
}

/// `--device NAME`: the device's row and its console's last lines (text), or its object from
/// the status file (JSON). Exit 1 when the agent has nothing on the device.
fn device_report(
    out: &mut impl Write,
    status: &AgentStatus,
    name: &str,
    liveness: Liveness,
    format: Format,
    now: SystemTime,
) -> anyhow::Result<i32> {
    let Some(device) = status.devices.get(name) else {
        let known: Vec<&str> = status.devices.keys().map(String::as_str).collect();
        eprintln!(
            "rackhand status: the agent has nothing on device `{name}` yet; devices it knows: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return Ok(1);
    };
    let running = liveness == Liveness::Running;
    match format {
        Format::Json => {
            let json = serde_json::json!({ "running": running, "device": name, "status": device });
            writeln!(out, "{json}")?;
        }
        Format::Text => {
            let mut lines = Lines(String::new());
            let one = BTreeMap::from([(name.to_string(), device.clone())]);
            render_devices(&mut lines, &one, now);
            lines.line(String::new());
            if device.console_tail.is_empty() {
                lines.line(
                    "no console lines (the device's console is not captured, or it has printed nothing since the agent started)".to_string(),
                );
            } else {
                lines.line(format!(
                    "last {} console lines, oldest first:",
                    device.console_tail.lines().count()
                ));
                for line in device.console_tail.lines() {
                    lines.line(format!("  {line}"));
                }
            }
            write!(out, "{}", lines.0.trim_start_matches('\n'))?;
        }
    }
    Ok(if running { 0 } else { 1 })
}

/// The report being written, one line at a time.
struct Lines(String);

impl Lines {
    fn line(&mut self, s: String) {
        self.0.push_str(&s);
        self.0.push('\n');
    }
}

/// The human report: the agent, its spool, its upstream, its devices.
pub(crate) fn render(
    status: &AgentStatus,
    file: &Path,
    liveness: Liveness,
    now: SystemTime,
) -> String {
    let mut out = Lines(String::new());
    render_agent(&mut out, status, file, liveness, now);
    out.line(String::new());
    render_spool(&mut out, &status.spool, now);
    render_spool_troubles(&mut out, &status.spool, now);
    out.line(String::new());
    render_upstream(&mut out, &status.upstream, now);
    render_devices(&mut out, &status.devices, now);
    out.0
}

/// Whether it runs, its version and start, the clock.
fn render_agent(
    out: &mut Lines,
    status: &AgentStatus,
    file: &Path,
    liveness: Liveness,
    now: SystemTime,
) {
    let updated = ago(&status.updated_at, now);
    let state = match liveness {
        Liveness::Running => format!("running (pid {}, updated {updated})", status.pid),
        Liveness::Stalled => format!(
            "stuck (pid {} alive, but the status was last saved {updated}; see `journalctl -u rackhand`)",
            status.pid
        ),
        Liveness::Gone => format!("not running (last seen {updated}, pid {})", status.pid),
    };
    out.line(format!(
        "agent {}: {state}",
        if status.agent.is_empty() {
            "(unnamed)"
        } else {
            &status.agent
        }
    ));
    out.line(format!(
        "  version {}, started {}; status file {}",
        or_unknown(&status.version),
        ago(&status.started_at, now),
        file.display()
    ));
    out.line(format!(
        "  clock: {}",
        match status.clock_synced {
            Some(true) => "synchronised",
            Some(false) => "NOT synchronised: record times and the ages below may be wrong",
            None => "unknown (cannot tell whether it is synchronised)",
        }
    ));
}

/// How full the spool is, how far shipping has come.
fn render_spool(out: &mut Lines, spool: &SpoolStatus, now: SystemTime) {
    out.line(format!(
        "spool {}: {} record{}, {} of {}{}, {} segment{}, when full: {}",
        or_unknown(&spool.dir),
        spool.records,
        plural(spool.records),
        approx_size(spool.bytes),
        format_size(spool.max_bytes),
        spool
            .bytes
            .saturating_mul(100)
            .checked_div(spool.max_bytes)
            .map_or(String::new(), |pct| format!(" ({pct}%)")),
        spool.segments,
        plural(spool.segments),
        or_unknown(&spool.full_policy)
    ));
    match (spool.oldest_unshipped_seq, &spool.oldest_unshipped_at) {
        (Some(seq), Some(at)) => out.line(format!(
            "  oldest unshipped: seq {seq}, collected {}",
            ago(at, now)
        )),
        (Some(seq), None) => out.line(format!("  oldest unshipped: seq {seq}")),
        _ => out.line("  nothing unshipped".into()),
    }
    out.line(format!(
        "  acked up to seq {}, last seq {}",
        spool.acked_seq, spool.last_seq
    ));
    if spool.dropped_records > 0 {
        out.line(format!(
            "  WARNING: {} record{} ({}) dropped since start: the spool was full (drop_oldest)",
            spool.dropped_records,
            plural(spool.dropped_records),
            approx_size(spool.dropped_bytes)
        ));
    }
}

/// What went wrong with the spool since the start: the disk refusing writes, paused
/// collections, records lost, the checkpoint.
fn render_spool_troubles(out: &mut Lines, spool: &SpoolStatus, now: SystemTime) {
    if let Some(error) = &spool.storage_error {
        let since = spool
            .storage_error_since
            .as_deref()
            .map_or(String::new(), |at| format!(" since {}", ago(at, now)));
        out.line(format!(
            "  ERROR: the disk refuses writes ({}){since}: {error}",
            spool.storage_error_cause.as_deref().unwrap_or("io_error")
        ));
        out.line(format!(
            "  {} collected record{} wait in memory; new collections pause until the disk takes writes again",
            spool.waiting_in_memory,
            plural(spool.waiting_in_memory)
        ));
    }
    if spool.paused || spool.paused_collections > 0 {
        out.line(format!(
            "  WARNING: {}{} collection{} not started since start because the spool or the disk was full",
            if spool.paused {
                "collections paused now; "
            } else {
                ""
            },
            spool.paused_collections,
            plural(spool.paused_collections)
        ));
    }
    let lost: u64 = spool.lost.values().sum();
    if lost > 0 {
        let causes: Vec<String> = spool
            .lost
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(cause, n)| format!("{n} {cause}"))
            .collect();
        out.line(format!(
            "  WARNING: {lost} record{} lost since start ({}); {}",
            plural(lost),
            causes.join(", "),
            if spool.unreported_lost > 0 {
                format!(
                    "{} not yet reported upstream in a gap record",
                    spool.unreported_lost
                )
            } else {
                "each reported upstream in a gap record".to_string()
            }
        ));
    }
    if spool.checkpoint_error {
        out.line(
            "  WARNING: the acknowledged position cannot be written (disk full?): a restart would send some records again"
                .into(),
        );
    }
}

/// The upstream's state, last ack and error, what was shipped or dead-lettered.
fn render_upstream(out: &mut Lines, up: &UpstreamStatus, now: SystemTime) {
    out.line(format!(
        "upstream {} {}: {}{}",
        or_unknown(&up.sink),
        crate::config::url::redact(&up.target),
        or_unknown(&up.state),
        if up.consecutive_failures > 0 {
            format!(
                ", {} consecutive failure{}",
                up.consecutive_failures,
                plural(u64::from(up.consecutive_failures))
            )
        } else {
            String::new()
        }
    ));
    out.line(format!(
        "  last ack: {}",
        up.last_ack_at
            .as_deref()
            .map_or("never".to_string(), |at| ago(at, now))
    ));
    if let Some(error) = &up.last_error {
        let when = up
            .last_error_at
            .as_deref()
            .map_or(String::new(), |at| format!(" ({})", ago(at, now)));
        out.line(format!("  last error{when}: {error}"));
    }
    out.line(format!(
        "  shipped since start: {} record{} in {} batch{}",
        up.shipped_records,
        plural(up.shipped_records),
        up.shipped_batches,
        if up.shipped_batches == 1 { "" } else { "es" }
    ));
    if up.unchanged_records > 0 {
        out.line(format!(
            "  of which unchanged (ship = \"on_change\", output not sent): {} record{}, {} saved",
            up.unchanged_records,
            plural(up.unchanged_records),
            approx_size(up.bytes_saved)
        ));
    }
    if up.dead_lettered_batches > 0 || up.dead_letter_file.is_some() {
        out.line(format!(
            "  dead letters: {} record{} in {} batch{} refused by the upstream for good{}",
            up.rejected_records,
            plural(up.rejected_records),
            up.dead_lettered_batches,
            if up.dead_lettered_batches == 1 {
                ""
            } else {
                "es"
            },
            up.dead_letter_file
                .as_deref()
                .map_or(String::new(), |f| format!(", kept in {f}"))
        ));
    }
}

/// One row per device: its last good collection, last status, recent collections and error;
/// the legend of the history's symbols under the table.
fn render_devices(out: &mut Lines, devices: &BTreeMap<String, DeviceStatus>, now: SystemTime) {
    out.line(String::new());
    if devices.is_empty() {
        out.line("no device has been collected yet".into());
    } else {
        let header = [
            "DEVICE",
            "LAST GOOD",
            "LAST STATUS",
            "FAILURES",
            "HISTORY",
            "LAST ERROR",
        ];
        let rows: Vec<[String; 6]> = devices
            .iter()
            .map(|(name, d)| {
                [
                    name.clone(),
                    d.last_good_at
                        .as_deref()
                        .map_or("never".to_string(), |at| ago(at, now)),
                    d.last_status.clone().unwrap_or_else(|| "-".into()),
                    d.consecutive_failures.to_string(),
                    d.history().to_string(),
                    d.last_error
                        .as_deref()
                        .map_or(String::new(), |e| truncate(e, ERROR_WIDTH)),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut row_line = |cells: [&str; 6]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    s.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.line(s.trim_end().to_string());
        };
        row_line(header);
        for row in &rows {
            row_line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
        }
        out.line(format!(
            "HISTORY: the last {} collections, oldest first: {}",
            crate::device_history::HISTORY_LEN,
            crate::device_history::legend(rows.iter().map(|row| row[4].as_str()))
        ));
    }
}

/// `5m ago`, `in the future (clock changed?)`, or the raw text when it does not parse.
fn ago(rfc3339: &str, now: SystemTime) -> String {
    match status_file::age(rfc3339, now) {
        // Within a second ahead is rounding between writer and reader, not a clock change.
        Some(Age::Past(d)) => format!("{} ago", short_duration(d)),
        Some(Age::Future(d)) if d < Duration::from_secs(1) => "0s ago".into(),
        Some(Age::Future(_)) => format!("in the future (clock changed?): {rfc3339}"),
        None if rfc3339.is_empty() => "at an unknown time".into(),
        None => format!("at `{rfc3339}` (unreadable time)"),
    }
}

/// Whole seconds, and from an hour on whole minutes: `42s`, `5m3s`, `3h12m`, `2d4h`.
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let secs = match secs {
        0..3600 => secs,
        3600..86_400 => secs - secs % 60,
        _ => secs - secs % 3600,
    };
    format_duration(Duration::from_secs(secs))
}

fn truncate(text: &str, width: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() { "?" } else { text }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_file::{DeviceStatus, parse_rfc3339};

    #[test]
    fn ages_read_naturally_and_survive_a_clock_change() {
        let now = parse_rfc3339("2026-11-25T12:00:00.000Z").unwrap();
        assert_eq!(ago("2026-11-25T11:59:58.000Z", now), "2s ago");
        assert_eq!(ago("2026-11-25T11:55:00.000Z", now), "5m ago");
        assert_eq!(ago("2026-11-25T08:47:30.000Z", now), "3h12m ago");
        assert_eq!(ago("2026-11-23T08:00:00.000Z", now), "2d4h ago");
        assert_eq!(ago("2026-11-25T12:00:00.400Z", now), "0s ago");
        assert!(
            ago("2026-11-25T13:00:00.000Z", now).starts_with("in the future (clock changed?)"),
            "{}",
            ago("2026-11-25T13:00:00.000Z", now)
        );
        assert_eq!(ago("", now), "at an unknown time");
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(approx_size(0), "0B");
        assert_eq!(approx_size(1500), "1.5KiB");
        assert_eq!(approx_size(512 << 20), "512MiB");
        assert_eq!(approx_size((3 << 20) + (1 << 19)), "3.5MiB");
    }

    #[test]
    fn long_errors_are_cut_to_one_short_line() {
        let e = "connect to 10.0.0.9:22 failed:\nconnection refused ".repeat(5);
        let cut = truncate(&e, 30);
        assert_eq!(cut.chars().count(), 30);
        assert!(cut.ends_with('…') && !cut.contains('\n'), "{cut}");
    }

    #[test]
    fn the_report_warns_about_lost_records_and_lists_devices() {
        let now = parse_rfc3339("2026-11-25T12:00:00.000Z").unwrap();
        let mut s = AgentStatus {
            agent: "rack-a12".into(),
            pid: 4242,
            updated_at: "2026-11-25T11:59:58.000Z".into(),
            clock_synced: Some(false),
            ..AgentStatus::default()
        };
        s.spool.dropped_records = 37;
        s.spool.dropped_bytes = 40_000;
        s.spool.max_bytes = 512 << 20;
        s.upstream.dead_letter_file = Some("/var/lib/rackhand/dead-letter.ndjson".into());
        s.upstream.dead_lettered_batches = 2;
        s.upstream.rejected_records = 3;
        s.spool.storage_error = Some(
            "cannot write /var/lib/rackhand/spool/00000000000000000901.seg: No space left on device (os error 28) (12.0 KiB free)".into(),
        );
        s.spool.storage_error_cause = Some("disk_full".into());
        s.spool.storage_error_since = Some("2026-11-25T11:58:00.000Z".into());
        s.spool.waiting_in_memory = 14;
        s.spool.lost.insert("corrupt".into(), 2);
        s.spool.lost.insert("rejected".into(), 3);
        let mut pdu = DeviceStatus::default();
        for status in ["ok", "ok", "timeout"] {
            pdu.collected("2026-11-25T11:00:00.000Z", status, None);
        }
        pdu.last_good_at = None;
        pdu.collected(
            "2026-11-25T11:30:00.000Z",
            "timeout",
            Some("command `show version` timed out after 30s"),
        );
        pdu.consecutive_failures = 3;
        s.devices.insert("pdu1".into(), pdu);
        let text = render(&s, Path::new("/x/status.json"), Liveness::Running, now);
        for needle in [
            "agent rack-a12: running (pid 4242, updated 2s ago)",
            "NOT synchronised",
            "WARNING: 37 records (39.1KiB) dropped",
            "3 records in 2 batches refused by the upstream for good, kept in /var/lib/rackhand/dead-letter.ndjson",
            "ERROR: the disk refuses writes (disk_full) since 2m ago: cannot write /var/lib/rackhand/spool/00000000000000000901.seg: No space left",
            "14 collected records wait in memory",
            "5 records lost since start (2 corrupt, 3 rejected); each reported upstream in a gap record",
            "last ack: never",
            "pdu1    never      timeout      3         ..tt     command `show version` timed out after 30s",
            "HISTORY: the last 32 collections, oldest first: . ok  t timeout",
        ] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
        assert!(!text.contains("paused"), "{text}");
    }
}

//! The Prometheus text exposition format 0.0.4, by hand.
//!
//! `prometheus-client` writes OpenMetrics, parts of which node_exporter's textfile collector
//! rejects, and the format is small: per metric name one `# HELP` and one `# TYPE` line before
//! all its samples, label values escaped (`\\`, `\"`, `\n`), a newline after the last line.
//! [`Exposition`] holds that rule by construction: a family is opened once and its samples
//! follow it. What the families are and what they mean is [`render`]'s list (and
//! docs/metrics.md).

use std::fmt::Write;
use std::time::SystemTime;

use crate::record::GapCause;

use super::registry::{COLLECTION_STATUSES, SESSION_BUCKETS, Snapshot, TRANSPORTS};

/// The media type of what [`render`] writes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type line.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: counts stay integers, the rest are floats.
#[derive(Debug, Clone, Copy)]
enum Number {
    Int(u64),
    Float(f64),
}

impl From<u64> for Number {
    fn from(n: u64) -> Number {
        Number::Int(n)
    }
}

impl From<f64> for Number {
    fn from(x: f64) -> Number {
        Number::Float(x)
    }
}

/// The text under construction.
struct Exposition<'w, W: Write> {
    // Errors only come from a socket going away (see `server.rs`); its writer remembers
    // the error, so the rest of the text is not worth checking for.
    out: &'w mut W,
}

impl<W: Write> Exposition<'_, W> {
    /// `# HELP` and `# TYPE` for `name`; its samples come next.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One line: `name{label="value",...} number`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Number>) {
        let _ = self.out.write_str(name);
        if !labels.is_empty() {
            let _ = self.out.write_char('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    let _ = self.out.write_char(',');
                }
                let _ = self.out.write_str(label);
                let _ = self.out.write_str("=\"");
                escape_label_into(self.out, value);
                let _ = self.out.write_char('"');
            }
            let _ = self.out.write_char('}');
        }
        let _ = self.out.write_char(' ');
        match value.into() {
            Number::Int(n) => {
                let _ = write!(self.out, "{n}");
            }
            Number::Float(x) => format_float_into(self.out, x),
        }
        let _ = self.out.write_char('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Into<Number>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The whole exposition for `snapshot` at `now`, as a string (the textfile, tests).
pub(crate) fn render(snapshot: &Snapshot, now: SystemTime) -> String {
    // About 220 bytes per device: a good guess avoids most of the copies.
    let mut out = String::with_capacity(4096 + snapshot.devices.len() * 240);
    render_into(&mut out, snapshot, now);
    out
}

/// The exposition's length in bytes, without keeping it (a `Content-Length` before the
/// text is streamed: rendering twice costs less than holding it whole per connection).
pub(crate) fn rendered_len(snapshot: &Snapshot, now: SystemTime) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    render_into(&mut count, snapshot, now);
    count.0
}

/// The exposition written to `out`, family by family; the same bytes for the same
/// `snapshot` and `now`.
pub(crate) fn render_into(out: &mut impl Write, snapshot: &Snapshot, now: SystemTime) {
    let mut e = Exposition { out };
    agent_families(&mut e, snapshot);
    device_families(&mut e, snapshot);
    session_family(&mut e, snapshot);
    spool_families(&mut e, snapshot, now);
    upstream_families(&mut e, snapshot);
}

fn agent_families(e: &mut Exposition<'_, impl Write>, s: &Snapshot) {
    e.family(
        "rackhand_build_info",
        Kind::Gauge,
        "Always 1; the version label says which rackhand runs.",
    );
    e.sample(
        "rackhand_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    e.single(
        "rackhand_start_time_seconds",
        Kind::Gauge,
        "Unix time the agent started.",
        s.start_time,
    );
    e.single(
        "rackhand_devices",
        Kind::Gauge,
        "Devices in the config in force.",
        s.devices.len() as u64,
    );
    e.single(
        "rackhand_workers",
        Kind::Gauge,
        "Worker threads (sessions the agent runs at once at most).",
        s.workers as u64,
    );
    e.single(
        "rackhand_workers_busy",
        Kind::Gauge,
        "Workers inside a session now.",
        s.pipeline.workers_busy as u64,
    );
}

fn device_families(e: &mut Exposition<'_, impl Write>, s: &Snapshot) {
    e.family(
        "rackhand_collections_total",
        Kind::Counter,
        "Collections finished since the agent started, by device and status (ok, or the status of the first record that was not).",
    );
    for (name, d) in &s.devices {
        for (i, status) in COLLECTION_STATUSES.iter().enumerate() {
            // `ok` always, so every device has a series from the start; the others once
            // they happen (eleven series per device would be mostly zeros).
            if i == 0 || d.collections[i] > 0 {
                e.sample(
                    "rackhand_collections_total",
                    &[("device", name), ("status", status)],
                    d.collections[i],
                );
            }
        }
    }
    e.family(
        "rackhand_device_up",
        Kind::Gauge,
        "1 if the device's last collection was ok, 0 if it was not; absent before its first.",
    );
    for (name, d) in &s.devices {
        if let Some(up) = d.up {
            e.sample("rackhand_device_up", &[("device", name)], u64::from(up));
        }
    }
    e.family(
        "rackhand_device_recent_failed_collections",
        Kind::Gauge,
        "Failed collections among the device's last 32 (its history, kept across restarts); absent before its first.",
    );
    for (name, d) in &s.devices {
        if let Some(n) = d.recent_failures {
            e.sample(
                "rackhand_device_recent_failed_collections",
                &[("device", name)],
                n,
            );
        }
    }
    e.family(
        "rackhand_device_last_success_timestamp_seconds",
        Kind::Gauge,
        "Unix time the device's last ok collection ended (kept across restarts in status.json).",
    );
    for (name, d) in &s.devices {
        if let Some(at) = d.last_success {
            e.sample(
                "rackhand_device_last_success_timestamp_seconds",
                &[("device", name)],
                at,
            );
        }
    }
}

fn session_family(e: &mut Exposition<'_, impl Write>, s: &Snapshot) {
    let name = "rackhand_session_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "How long a device's collection (connect, log in, every command) took, by transport.",
    );
    for (kind, h) in TRANSPORTS.iter().zip(&s.sessions) {
        let transport = kind.as_str();
        let bucket = format!("{name}_bucket");
        for (le, n) in SESSION_BUCKETS.iter().zip(h.cumulative()) {
            let le = format_float(*le);
            e.sample(&bucket, &[("transport", transport), ("le", &le)], n);
        }
        e.sample(
            &bucket,
            &[("transport", transport), ("le", "+Inf")],
            h.count,
        );
        e.sample(&format!("{name}_sum"), &[("transport", transport)], h.sum);
        e.sample(
            &format!("{name}_count"),
            &[("transport", transport)],
            h.count,
        );
    }
}

fn spool_families(e: &mut Exposition<'_, impl Write>, s: &Snapshot, now: SystemTime) {
    let p = &s.pipeline;
    e.single(
        "rackhand_spool_records",
        Kind::Gauge,
        "Records in the spool not yet acknowledged by upstream.",
        p.spool_records,
    );
    e.single(
        "rackhand_spool_bytes",
        Kind::Gauge,
        "Bytes of the spool's segment files.",
        p.spool_bytes,
    );
    e.single(
        "rackhand_spool_max_bytes",
        Kind::Gauge,
        "The spool's bound (spool_max_bytes).",
        p.spool_max_bytes,
    );
    e.family(
        "rackhand_spool_oldest_record_age_seconds",
        Kind::Gauge,
        "Age of the oldest record not yet acknowledged (0 when the spool is empty; absent until the shipper has read it).",
    );
    if let Some(age) = s.oldest_record_age(now) {
        e.sample("rackhand_spool_oldest_record_age_seconds", &[], age);
    }
    e.single(
        "rackhand_collections_paused",
        Kind::Gauge,
        "1 while new collections are held back (a full spool under spool_full = \"block\", or a disk that refuses writes).",
        u64::from(p.admission.paused),
    );
    e.single(
        "rackhand_collections_passed_over_total",
        Kind::Counter,
        "Collections not started because they came due while collections were paused.",
        p.admission.paused_collections,
    );
    e.family(
        "rackhand_lost_records_total",
        Kind::Counter,
        "Records lost since the agent started, by cause (each also reported upstream in a gap record).",
    );
    for (cause, n) in GapCause::ALL.iter().zip(p.lost) {
        e.sample(
            "rackhand_lost_records_total",
            &[("cause", cause.as_str())],
            n,
        );
    }
}

fn upstream_families(e: &mut Exposition<'_, impl Write>, s: &Snapshot) {
    let p = &s.pipeline;
    e.single(
        "rackhand_upstream_acked_records_total",
        Kind::Counter,
        "Records upstream acknowledged since the agent started.",
        p.acked_records,
    );
    e.single(
        "rackhand_upstream_unchanged_records_total",
        Kind::Counter,
        "Acknowledged records of ship = \"on_change\" commands that went up unchanged, without their output.",
        p.unchanged_records,
    );
    e.single(
        "rackhand_upstream_saved_bytes_total",
        Kind::Counter,
        "Bytes of NDJSON that change-only shipping did not send (before compression).",
        p.bytes_saved,
    );
    e.single(
        "rackhand_upstream_errors_total",
        Kind::Counter,
        "Failed attempts to ship a batch upstream since the agent started.",
        p.upstream_errors,
    );
    e.single(
        "rackhand_upstream_consecutive_failures",
        Kind::Gauge,
        "Failed attempts since upstream last acknowledged a batch.",
        u64::from(p.upstream_consecutive_failures),
    );
}

/// HELP text: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label_into(out: &mut impl Write, value: &str) {
    // Runs of plain characters are written whole.
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        let _ = out.write_str(&rest[..i]);
        let _ = out.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[i + 1..];
    }
    let _ = out.write_str(rest);
}

/// Go's `strconv.ParseFloat` reads what Rust's `Display` writes (no exponent, shortest
/// round-trip digits); only the specials are spelt differently.
fn format_float_into(out: &mut impl Write, x: f64) {
    if x.is_nan() {
        let _ = out.write_str("NaN");
    } else if x.is_infinite() {
        let _ = out.write_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{x}");
    }
}

fn format_float(x: f64) -> String {
    let mut s = String::new();
    format_float_into(&mut s, x);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::registry::DeviceMetrics;

    fn snapshot_with(devices: &[&str]) -> Snapshot {
        let mut s = Snapshot {
            workers: 4,
            start_time: 1_700_000_000.5,
            ..Snapshot::default()
        };
        for d in devices {
            s.devices.insert(d.to_string(), DeviceMetrics::default());
        }
        s
    }

    /// docs/metrics.md is the users' list: a metric added here must be described there.
    #[test]
    fn every_metric_is_in_the_docs() {
        let docs = include_str!("../../docs/metrics.md");
        let text = render(&snapshot_with(&["a"]), SystemTime::now());
        let missing: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|name| !docs.contains(&format!("| `{name}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/metrics.md does not describe {missing:?}"
        );
    }

    #[test]
    fn label_values_are_escaped_and_help_lines_too() {
        let mut out = String::new();
        escape_label_into(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
    }

    #[test]
    fn floats_are_written_as_go_reads_them() {
        assert_eq!(format_float(0.1), "0.1");
        assert_eq!(format_float(300.0), "300");
        assert_eq!(format_float(1_764_859_836.123), "1764859836.123");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
    }

    #[test]
    fn each_name_has_its_help_and_type_once_before_its_samples_and_the_text_ends_in_a_newline() {
        let mut s = snapshot_with(&["core1", "we\"ird\\name"]);
        s.devices.get_mut("core1").unwrap().collections[2] = 3;
        let text = render(&s, SystemTime::now());
        assert!(text.ends_with('\n'));
        let mut seen_types = std::collections::BTreeSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen_types.insert(name.clone()), "TYPE twice for {name}");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|b| *b == current)
                    .unwrap_or(name);
                assert_eq!(base, current, "sample {line} outside its family");
            }
        }
        assert!(text.contains(
            "rackhand_collections_total{device=\"we\\\"ird\\\\name\",status=\"ok\"} 0\n"
        ));
        assert!(text.contains(
            "rackhand_collections_total{device=\"core1\",status=\"connect_failed\"} 3\n"
        ));
        assert!(
            !text.contains("status=\"timeout\""),
            "zero counts other than ok are left out"
        );
        assert!(text.contains("rackhand_build_info{version=\""));
        assert!(text.contains("rackhand_spool_oldest_record_age_seconds 0\n"));
        assert!(text.contains(
            "rackhand_session_duration_seconds_bucket{transport=\"serial\",le=\"+Inf\"} 0\n"
        ));
        assert!(text.contains("rackhand_lost_records_total{cause=\"rejected\"} 0\n"));
    }
}

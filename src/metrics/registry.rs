//! The numbers behind `/metrics`: what the agent loop tells [`Metrics`] as things happen, kept
//! in fixed memory per device so a scrape can take a [`Snapshot`] at any time.
//!
//! The agent loop is the only writer and calls in at places that already see the events
//! (an outcome, a finished collection, the status tick); the listener's threads only read,
//! by cloning the registry under the lock and rendering after it is released, so a slow
//! scrape never holds the loop up. Label sets are bounded by design: devices come from the
//! config (a reload adds and forgets them by name), statuses, transports and loss causes are
//! fixed lists, so memory does not grow with time or with what devices print.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::device_history::{DeviceHistory, HISTORY_LEN};
use crate::inventory::{Inventory, TransportKind};
use crate::outcome::RunSummary;
use crate::record::{GapCause, Record, Status};
use crate::ship::ShipReport;
use crate::spool::Stats;
use crate::status_file::{Admission, parse_rfc3339};

/// A collection's `status` label: `ok` when every command's record was, else the status of
/// its first record that was not (`failed` when no record says).
pub(crate) const COLLECTION_STATUSES: [&str; 11] = [
    "ok",
    "timeout",
    "connect_failed",
    "auth_failed",
    "host_key_mismatch",
    "command_error",
    "output_too_large",
    "driver_crashed",
    "disconnected",
    "port_busy",
    "failed",
];
const FAILED: usize = COLLECTION_STATUSES.len() - 1;

/// The `transport` label of the session histogram, in `TransportKind` order.
pub(crate) const TRANSPORTS: [TransportKind; 3] = [
    TransportKind::Ssh,
    TransportKind::Telnet,
    TransportKind::Serial,
];

/// Upper bounds of the session duration buckets, in seconds: a quick Telnet login to a
/// five-minute serial dump (`+Inf` is implied).
pub(crate) const SESSION_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The loop goes round at least every 5 s (`MAX_IDLE`); this long without a turn means it
/// is stuck, and `/healthz` says so.
pub(crate) const LOOP_STALE: Duration = Duration::from_secs(30);

/// One device's numbers: the same few words however long the agent runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DeviceMetrics {
    /// Finished collections by [`COLLECTION_STATUSES`] index.
    pub(crate) collections: [u64; COLLECTION_STATUSES.len()],
    /// Unix time of the end of the last collection that was `ok`.
    pub(crate) last_success: Option<f64>,
    /// Whether the last collection was `ok` (none before the first).
    pub(crate) up: Option<bool>,
    /// Failed collections among the last [`HISTORY_LEN`] (the device's history, which
    /// status.json keeps across restarts); none before the first.
    pub(crate) recent_failures: Option<u64>,
    /// The first failed record of the collection under way.
    pending_failure: Option<Status>,
}

/// One transport's session durations, Prometheus style (counts per bucket, not cumulative
/// here; the renderer adds them up).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Histogram {
    pub(crate) buckets: [u64; SESSION_BUCKETS.len()],
    pub(crate) count: u64,
    pub(crate) sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = SESSION_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The cumulative count at each bound, as the exposition format wants it.
    pub(crate) fn cumulative(&self) -> [u64; SESSION_BUCKETS.len()] {
        let mut total = 0;
        self.buckets.map(|n| {
            total += n;
            total
        })
    }
}

/// The spool and the shipper as of the last status tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pipeline {
    pub(crate) spool_records: u64,
    pub(crate) spool_bytes: u64,
    pub(crate) spool_max_bytes: u64,
    /// `started_at` of the oldest record not yet acknowledged, when the shipper has read it.
    pub(crate) oldest_record_at: Option<SystemTime>,
    pub(crate) acked_records: u64,
    /// Of those, `on_change` records that went up unchanged, and the bytes that saved.
    pub(crate) unchanged_records: u64,
    pub(crate) bytes_saved: u64,
    pub(crate) upstream_errors: u64,
    pub(crate) upstream_consecutive_failures: u32,
    pub(crate) lost: [u64; GapCause::ALL.len()],
    pub(crate) admission: Admission,
    /// Why the spool takes no records now (a storage error, or full under `block`).
    pub(crate) refusing: Option<String>,
    pub(crate) workers_busy: usize,
}

/// Everything a scrape shows, taken at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) devices: BTreeMap<String, DeviceMetrics>,
    pub(crate) sessions: [Histogram; TRANSPORTS.len()],
    pub(crate) pipeline: Pipeline,
    pub(crate) workers: usize,
    /// Unix time the agent started.
    pub(crate) start_time: f64,
}

impl Snapshot {
    /// Seconds the oldest unshipped record has waited: 0 for an empty spool, none when the
    /// shipper has not read it yet.
    pub(crate) fn oldest_record_age(&self, now: SystemTime) -> Option<f64> {
        if self.pipeline.spool_records == 0 {
            return Some(0.0);
        }
        let at = self.pipeline.oldest_record_at?;
        Some(now.duration_since(at).unwrap_or_default().as_secs_f64())
    }
}

/// Whether the agent can do its job now, for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    /// One line saying why not.
    Unhealthy(String),
}

/// The registry the agent loop writes and the listener reads.
pub(crate) struct Metrics {
    state: Mutex<Snapshot>,
    /// When the loop last went round (its own lock: taken on every turn).
    last_turn: Mutex<Instant>,
}

impl Metrics {
    /// Every configured device at zero.
    pub(crate) fn new(inventory: &Inventory) -> Metrics {
        let start_time = unix_seconds(SystemTime::now());
        let metrics = Metrics {
            state: Mutex::new(Snapshot {
                start_time,
                ..Snapshot::default()
            }),
            last_turn: Mutex::new(Instant::now()),
        };
        metrics.configure(inventory);
        metrics
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The devices and workers of `inventory` (at start and after a reload): new devices
    /// start at zero, removed ones are forgotten, the others keep their counts.
    pub(crate) fn configure(&self, inventory: &Inventory) {
        let mut state = self.lock();
        state.workers = inventory.agent.workers;
        let mut devices = std::mem::take(&mut state.devices);
        state.devices = inventory
            .devices
            .iter()
            .map(|d| (d.name.clone(), devices.remove(&d.name).unwrap_or_default()))
            .collect();
    }

    /// What a previous run left in `status.json`: each device's last good collection, so
    /// an alert on its age does not start over with every restart.
    pub(crate) fn remember_last_success<'a>(
        &self,
        devices: impl IntoIterator<Item = (&'a str, SystemTime)>,
    ) {
        let mut state = self.lock();
        for (name, at) in devices {
            if let Some(d) = state.devices.get_mut(name) {
                d.last_success.get_or_insert(unix_seconds(at));
            }
        }
    }

    /// The loop went round.
    pub(crate) fn loop_turned(&self) {
        self.loop_turned_at(Instant::now());
    }

    /// The loop went round at `at` (tests move it into the past).
    pub(crate) fn loop_turned_at(&self, at: Instant) {
        *self.last_turn.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// A record was spooled: the first failed one decides its collection's status.
    pub(crate) fn record(&self, record: &Record) {
        if matches!(record.status, Status::Ok | Status::Gap) {
            return;
        }
        if let Some(device) = self.lock().devices.get_mut(&record.device) {
            device.pending_failure.get_or_insert(record.status);
        }
    }

    /// A collection ended after `elapsed` on `transport`.
    pub(crate) fn finished(
        &self,
        device: &str,
        transport: TransportKind,
        run: &RunSummary,
        elapsed: Duration,
    ) {
        let mut state = self.lock();
        let t = TRANSPORTS.iter().position(|k| *k == transport).unwrap_or(0);
        state.sessions[t].observe(elapsed.as_secs_f64());
        let Some(d) = state.devices.get_mut(device) else {
            return;
        };
        let first_failure = d.pending_failure.take();
        let ok = run.all_ok();
        let status = if ok {
            0
        } else {
            first_failure
                .or(run.session_failure)
                .map_or(FAILED, status_index)
        };
        d.collections[status] += 1;
        d.up = Some(ok);
        if ok {
            d.last_success = Some(unix_seconds(SystemTime::now()));
        }
    }

    /// The spool, the shipper and the pool as of now (the agent's status tick).
    /// Each device's history: how many of its last collections failed.
    pub(crate) fn histories<'a>(
        &self,
        histories: impl Iterator<Item = (&'a str, &'a DeviceHistory)>,
    ) {
        let mut state = self.lock();
        for (name, history) in histories {
            if let Some(d) = state.devices.get_mut(name).filter(|_| !history.is_empty()) {
                d.recent_failures = Some(history.recent_failures(HISTORY_LEN) as u64);
            }
        }
    }

    pub(crate) fn observe(
        &self,
        stats: &Stats,
        ship: &ShipReport,
        admission: Admission,
        workers_busy: usize,
    ) {
        let oldest_record_at = ship
            .oldest_unshipped
            .as_ref()
            .filter(|(seq, _)| Some(*seq) == stats.oldest_unshipped)
            .and_then(|(_, at)| at.as_deref())
            .and_then(parse_rfc3339);
        let mut lost = [0; GapCause::ALL.len()];
        for (i, cause) in GapCause::ALL.iter().enumerate() {
            lost[i] = stats.lost.get(cause).copied().unwrap_or(0);
        }
        let refusing = match &stats.storage_trouble {
            Some(trouble) => Some(format!(
                "the spool cannot write ({}): {}",
                trouble.cause.as_str(),
                trouble.error
            )),
            None if admission.paused => Some(
                "the spool is full (spool_full = \"block\"): new collections are held back until upstream takes records"
                    .to_string(),
            ),
            None => None,
        };
        let mut state = self.lock();
        let p = &mut state.pipeline;
        p.spool_records = stats.records;
        p.spool_bytes = stats.bytes;
        p.oldest_record_at = oldest_record_at;
        p.acked_records = ship.shipped_records;
        p.unchanged_records = ship.unchanged_records;
        p.bytes_saved = ship.bytes_saved;
        p.upstream_errors = ship.failed_attempts;
        p.upstream_consecutive_failures = ship.consecutive_failures;
        p.lost = lost;
        p.admission = admission;
        p.refusing = refusing;
        p.workers_busy = workers_busy;
    }

    /// The spool's bound (set once: `spool_max_bytes` changes only with a restart).
    pub(crate) fn spool_limit(&self, max_bytes: u64) {
        self.lock().pipeline.spool_max_bytes = max_bytes;
    }

    /// A copy of everything, taken under the lock.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Healthy while the loop goes round and the spool takes records.
    pub(crate) fn health(&self) -> Health {
        let last_turn = *self.last_turn.lock().unwrap_or_else(|e| e.into_inner());
        let since = last_turn.elapsed();
        if since > LOOP_STALE {
            return Health::Unhealthy(format!(
                "the agent loop has not gone round for {} s",
                since.as_secs()
            ));
        }
        match &self.lock().pipeline.refusing {
            Some(reason) => Health::Unhealthy(reason.clone()),
            None => Health::Healthy,
        }
    }
}

/// A record status's place in [`COLLECTION_STATUSES`].
fn status_index(status: Status) -> usize {
    COLLECTION_STATUSES
        .iter()
        .position(|s| *s == status.as_str())
        .unwrap_or(FAILED)
}

pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    // Milliseconds are what the records carry; more digits would only be noise.
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(devices: &[&str]) -> Inventory {
        let mut text =
            String::from("[defaults]\nplatform = \"cisco_ios\"\ncommands = [\"show clock\"]\n");
        for d in devices {
            text.push_str(&format!(
                "[[device]]\nname = \"{d}\"\nhost = \"10.0.0.1\"\n"
            ));
        }
        let path = std::path::Path::new("/etc/rackhand/rackhand.toml");
        let (raw, mut report) = crate::config::parse_str(path, &text);
        let inventory = crate::inventory::resolve(&raw, &mut report);
        assert!(!report.has_errors(), "{report}");
        inventory
    }

    #[test]
    fn a_collection_counts_under_its_first_failure_and_a_reload_keeps_the_devices_it_keeps() {
        let metrics = Metrics::new(&inventory(&["a", "b"]));
        let earlier = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        metrics.remember_last_success([("a", earlier), ("gone", earlier)]);
        metrics.finished(
            "a",
            TransportKind::Ssh,
            &RunSummary::ok(2),
            Duration::from_secs(2),
        );
        let refused = RunSummary::session_failed(2, Status::AuthFailed, "refused");
        metrics.finished(
            "b",
            TransportKind::Telnet,
            &refused,
            Duration::from_millis(80),
        );
        let s = metrics.snapshot();
        assert_eq!(s.devices["a"].collections[0], 1);
        assert_eq!(s.devices["a"].up, Some(true));
        assert!(
            s.devices["a"].last_success.unwrap() > 1_700_000_000.0,
            "a new success"
        );
        assert_eq!(
            s.devices["b"].collections[status_index(Status::AuthFailed)],
            1
        );
        assert_eq!(s.devices["b"].up, Some(false));
        assert_eq!(s.devices["b"].last_success, None);
        assert_eq!((s.sessions[0].count, s.sessions[1].count), (1, 1));

        metrics.configure(&inventory(&["b", "c"]));
        let s = metrics.snapshot();
        assert_eq!(s.devices.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(s.devices["b"].up, Some(false), "b keeps its numbers");
        assert_eq!(s.devices["c"], DeviceMetrics::default());
    }

    #[test]
    fn a_last_success_from_before_the_restart_is_remembered() {
        let metrics = Metrics::new(&inventory(&["a"]));
        let earlier = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        metrics.remember_last_success([("a", earlier)]);
        assert_eq!(
            metrics.snapshot().devices["a"].last_success,
            Some(1_700_000_000.25)
        );
    }

    #[test]
    fn every_record_status_but_gap_has_a_collection_status() {
        for status in [
            Status::Ok,
            Status::Timeout,
            Status::ConnectFailed,
            Status::AuthFailed,
            Status::HostKeyMismatch,
            Status::CommandError,
            Status::OutputTooLarge,
            Status::DriverCrashed,
            Status::Disconnected,
            Status::PortBusy,
        ] {
            assert_eq!(
                COLLECTION_STATUSES[status_index(status)],
                status.as_str(),
                "{status:?}"
            );
        }
        assert_eq!(status_index(Status::Gap), FAILED);
    }

    #[test]
    fn a_histogram_counts_each_duration_once_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        for s in [0.05, 0.1, 0.3, 4.0, 299.0, 301.0] {
            h.observe(s);
        }
        assert_eq!(h.count, 6);
        assert_eq!(h.cumulative(), [2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5]);
        assert!((h.sum - 604.45).abs() < 1e-9);
    }

    #[test]
    fn each_devices_history_gives_its_recent_failed_collections() {
        use crate::device_history::Mark;
        let metrics = Metrics::new(&inventory(&["a", "b"]));
        let mut a = DeviceHistory::default();
        for status in [Status::Ok, Status::Timeout, Status::Ok, Status::AuthFailed] {
            a.push(Mark::from(status));
        }
        let empty = DeviceHistory::default();
        let unknown = a.clone();
        metrics.histories([("a", &a), ("b", &empty), ("gone", &unknown)].into_iter());
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.devices["a"].recent_failures, Some(2));
        assert_eq!(
            snapshot.devices["b"].recent_failures, None,
            "none before a first run"
        );
        assert!(!snapshot.devices.contains_key("gone"));
        let text = crate::metrics::render::render(&snapshot, SystemTime::now());
        assert!(
            text.contains("rackhand_device_recent_failed_collections{device=\"a\"} 2\n"),
            "{text}"
        );
    }
}

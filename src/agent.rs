//! The agent: the long-running loop behind `rackhand run` (and `rackhand demo`).
//!
//! One thread owns the scheduler and reads the pool's events; workers only wait on devices.
//! Each outcome is numbered from the persisted sequence, becomes a record, and goes to the
//! sink. Signals arrive through a small thread that sets a flag and wakes the loop:
//! SIGTERM/SIGINT stop scheduling and drain in-flight work within a deadline; SIGHUP reloads
//! the config (an invalid one is logged with all its errors and the old one kept). Under
//! systemd the loop sends READY=1 once running and WATCHDOG=1 only while it goes round, so a
//! wedged agent is restarted rather than left silent.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::BatchLimits;
use crate::config::secret::{SecretRef, substitute};
use crate::inventory::{self, Device, Inventory, Isolation, SinkKind, Upstream};
use crate::isolation::Isolator;
use crate::notify::Notifier;
use crate::pool::{Pool, PoolEvent, RunSummary, Work};
use crate::record::{Gap, Outcome, Record, Status, rfc3339_millis};
use crate::scheduler::{DeviceId, Scheduler};
use crate::seq::Sequence;
use crate::ship::{ShipReport, Shipper, ShipperOptions, SpoolShare};
use crate::sink::file::FileSink;
use crate::sink::http::{HttpConfig, HttpSink};
use crate::sink::mqtt::{MqttConfig, MqttSink};
use crate::sink::{Backoff, Sink, SinkError};
use crate::spool::{Durability, FullPolicy, Spool, SpoolError, SpoolOptions};
use crate::status::{AgentStatus, SpoolStatus, UpstreamStatus};

/// How often spooled records are made durable (group commit), unless `fsync = "always"`.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often `state_dir/status.json` is rewritten for `rackhand status`.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// Under `spool_full = "block"`, at most one gap record (and one warning) per this long.
const BLOCK_REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping agent keeps shipping what is spooled before it leaves the rest for
/// the next start.
const SHIP_GRACE: Duration = Duration::from_secs(5);
/// The loop wakes at least this often, so the watchdog sees it alive while nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    // Transparent where the inner error already says it all: `anyhow`'s `{:#}` prints the
    // source chain, so a `{0}` here would print the same message twice.
    #[error(transparent)]
    Load(#[from] crate::config::LoadError),
    #[error("the config {path} has errors:\n{report}run `rackhand check -c {path}` for details")]
    Invalid { path: PathBuf, report: String },
    #[error(transparent)]
    Sequence(#[from] crate::seq::SeqError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    FileSink(#[from] crate::sink::file::FileSinkError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("[upstream] header `{name}`: {detail}")]
    Header { name: String, detail: String },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "another rackhand{holder} is running with state_dir {dir}: two agents on one spool would corrupt it; stop the other one (systemctl stop rackhand) or give this one its own [agent] state_dir"
    )]
    StateDirBusy { dir: PathBuf, holder: String },
    #[error("cannot lock {path}: {error}; check that state_dir exists and is writable")]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
    #[error(transparent)]
    Isolation(#[from] crate::isolation::IsolationError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Called for every record as it is written.
pub type RecordHook = Box<dyn FnMut(&Record) + Send>;

/// How a run is bounded and observed.
pub struct Options {
    /// How long in-flight work may take to finish after SIGTERM (or the end of `run_for`).
    pub drain: Duration,
    /// Stop by itself after this long (the demo); `None` runs until SIGTERM.
    pub run_for: Option<Duration>,
    /// Called for every record as it is written (progress displays).
    pub on_record: Option<RecordHook>,
    /// Install SIGTERM/SIGINT/SIGHUP handlers (off for in-process runs in tests and the demo).
    pub signals: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drain: Duration::from_secs(30),
            run_for: None,
            on_record: None,
            signals: true,
        }
    }
}

/// What a device did during the run.
#[derive(Debug, Clone, Default)]
pub struct DeviceTally {
    pub records: u64,
    pub ok: u64,
    pub runs: u64,
    pub last_status: Option<Status>,
    pub last_error: Option<String>,
    pub busy: Duration,
}

/// The run's outcome, per device.
#[derive(Debug, Default)]
pub struct Summary {
    pub devices: BTreeMap<String, DeviceTally>,
    pub records: u64,
    pub outbox: PathBuf,
    /// Sessions still running when the drain deadline passed.
    pub abandoned: usize,
}

struct Flags {
    stop: AtomicBool,
    reload: AtomicBool,
}

/// Loads and checks the config, refusing it with every error rendered.
pub fn load_config(path: &Path) -> Result<Inventory, AgentError> {
    let (inventory, report) = inventory::load(path)?;
    for d in report.warnings() {
        log::warn!("{}", report.render(d));
    }
    if report.has_errors() {
        let mut text = String::new();
        for d in report.errors() {
            text.push_str(&report.render(d));
            text.push('\n');
        }
        return Err(AgentError::Invalid {
            path: path.to_path_buf(),
            report: text,
        });
    }
    Ok(inventory)
}

/// The upstream in force: `[upstream]`, or the file sink in `state_dir/outbox` by default.
fn upstream_of(inventory: &Inventory) -> Upstream {
    inventory.upstream.clone().unwrap_or_else(|| Upstream {
        sink: SinkKind::File,
        target: inventory
            .agent
            .state_dir
            .join("outbox")
            .display()
            .to_string(),
        topic: inventory::defaults::MQTT_TOPIC.to_string(),
        client_id: None,
        headers: Vec::new(),
        ca_file: None,
        username: None,
        password: None,
        timeout: inventory::defaults::UPSTREAM_TIMEOUT,
        batch_max_records: inventory::defaults::BATCH_MAX_RECORDS,
        batch_max_bytes: inventory::defaults::BATCH_MAX_BYTES,
        // Files are local: no reason to hold records back for long.
        batch_max_age: Duration::from_secs(1),
        spool_max_bytes: inventory::defaults::SPOOL_MAX_BYTES,
        drop_oldest_when_full: false,
        fsync_always: false,
        file_max_bytes: inventory::defaults::FILE_MAX_BYTES,
    })
}

/// Header values may name a secret instead of holding it: `{env:NAME}` and `{file:PATH}`
/// are replaced by that variable or that file's content (trimmed), e.g.
/// `Authorization = "Bearer {file:/etc/rackhand/collector.token}"`.
pub fn resolve_header(name: &str, value: &str) -> Result<String, AgentError> {
    let failed = |detail: String| AgentError::Header {
        name: name.to_string(),
        detail,
    };
    substitute(value, |named| {
        match named {
        SecretRef::Env(var) => std::env::var(var).map_err(|_| {
            failed(format!(
                "environment variable {var} is not set; set it for the service (systemd: Environment= or EnvironmentFile=)"
            ))
        }),
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                failed(format!(
                    "cannot read {path}: {e}; check the path and that the agent may read it"
                ))
            }),
    }
    })
}

/// The sink `[upstream]` asks for, checked now so a mistake shows at start.
fn build_sink(inventory: &Inventory, upstream: &Upstream) -> Result<Box<dyn Sink>, AgentError> {
    Ok(match upstream.sink {
        SinkKind::File => Box::new(FileSink::open(
            Path::new(&upstream.target),
            upstream.file_max_bytes,
        )?),
        SinkKind::Http => {
            let mut headers = Vec::new();
            for (name, value) in &upstream.headers {
                headers.push((name.clone(), resolve_header(name, value)?));
            }
            let config = HttpConfig::from_upstream(upstream, headers, &inventory.agent.state_dir);
            Box::new(HttpSink::new(config).map_err(SinkError::from)?)
        }
        SinkKind::Mqtt => {
            let config = MqttConfig::from_upstream(upstream, &inventory.agent.id);
            Box::new(MqttSink::new(config).map_err(SinkError::from)?)
        }
    })
}

/// The spool's settings from `[upstream]`.
fn spool_options(inventory: &Inventory, upstream: &Upstream) -> SpoolOptions {
    let max_bytes = upstream.spool_max_bytes;
    // A record carries its output JSON-escaped (and base64 too when it is not UTF-8).
    let largest_output = inventory
        .devices
        .iter()
        .map(|d| d.max_output)
        .max()
        .unwrap_or(inventory::defaults::MAX_OUTPUT);
    let max_record = (largest_output.saturating_mul(2) + (1 << 20))
        .max(16 << 20)
        .min(max_bytes / 4)
        .clamp(4096, u64::from(u32::MAX)) as u32;
    SpoolOptions {
        // Small against the bound, so acknowledged space comes back in fine steps.
        segment_bytes: (max_bytes / 8).clamp(64 << 10, 4 << 20),
        max_bytes,
        full: if upstream.drop_oldest_when_full {
            FullPolicy::DropOldest
        } else {
            FullPolicy::Block
        },
        max_record_bytes: max_record,
        durability: if upstream.fsync_always {
            Durability::Always
        } else {
            Durability::Interval(SYNC_EVERY)
        },
    }
}

/// Numbers outcomes, appends them to the spool, and applies the full-spool policy.
struct Spooler {
    share: Arc<SpoolShare>,
    seq: Sequence,
    agent: String,
    policy: FullPolicy,
    max_bytes: u64,
    max_record: u32,
    /// Block policy: records refused for lack of room, appended once there is room.
    pending: VecDeque<(u64, Vec<u8>)>,
    paused_since: Option<Instant>,
    paused_collections: u64,
    paused_total: u64,
    reported_drops: (u64, u64),
    /// Drop-oldest gap records not yet shipped, with what they report.
    unshipped_gaps: BTreeMap<u64, (u64, u64)>,
    /// What gap records that were themselves dropped had reported.
    gap_carry: (u64, u64),
    clock: Option<(Instant, Option<bool>)>,
    /// The last seq given to a command's record.
    last_seq: u64,
    /// Block policy: pause time (ms) not yet in a gap record.
    block_unreported_ms: u64,
    block_reported_at: Option<Instant>,
}

impl Spooler {
    /// The clock's sync state, asked of the kernel at most every 10 s.
    fn clock_synced(&mut self) -> Option<bool> {
        match self.clock {
            Some((at, synced)) if at.elapsed() < Duration::from_secs(10) => synced,
            _ => {
                let synced = crate::clock::synchronised();
                self.clock = Some((Instant::now(), synced));
                synced
            }
        }
    }

    /// Numbers `outcome` and spools it; returns the record.
    fn outcome(&mut self, outcome: Outcome) -> Result<Record, AgentError> {
        let mut record = outcome.into_record(&self.agent, self.seq.next()?);
        self.last_seq = record.seq;
        record.clock_synced = self.clock_synced();
        self.spool_record(&mut record)?;
        Ok(record)
    }

    fn spool_record(&mut self, record: &mut Record) -> Result<(), AgentError> {
        let mut json = record.to_json().into_bytes();
        if json.len() > self.max_record as usize {
            let keep = self.max_record as usize / 8;
            log::error!(
                "{}: record {} of `{}` is {} bytes, above the spool's record limit of {} bytes; its output is cut to {keep} bytes: lower max_output for that command",
                record.device,
                record.id,
                record.command,
                json.len(),
                self.max_record
            );
            let mut cut = keep.min(record.output.len());
            while !record.output.is_char_boundary(cut) {
                cut -= 1;
            }
            record.output.truncate(cut);
            record.output_base64 = None;
            record.status = Status::OutputTooLarge;
            record.error = Some(format!(
                "output cut to {keep} bytes: the whole record was above the spool's limit of {} bytes",
                self.max_record
            ));
            json = record.to_json().into_bytes();
        }
        self.append(record.seq, json)
    }

    fn append(&mut self, seq: u64, json: Vec<u8>) -> Result<(), AgentError> {
        if !self.pending.is_empty() {
            self.pending.push_back((seq, json));
            return Ok(());
        }
        let result = self.share.lock().append(seq, &json);
        match result {
            Ok(()) => Ok(()),
            Err(SpoolError::Full { .. }) if self.policy == FullPolicy::Block => {
                self.pending.push_back((seq, json));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Appends what waited for room, as far as there is room now.
    fn retry_pending(&mut self) -> Result<(), AgentError> {
        // Each turn appends one record or stops: bounded by the queue.
        while let Some((seq, json)) = self.pending.pop_front() {
            let result = self.share.lock().append(seq, &json);
            match result {
                Ok(()) => {}
                Err(SpoolError::Full { .. }) => {
                    self.pending.push_front((seq, json));
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Block policy: whether new collections must wait. Pauses near the bound (records of
    /// sessions in flight still need room) and resumes only well below it, so the agent
    /// does not flap around the limit.
    fn update_pause(&mut self, now: Instant) -> Result<bool, AgentError> {
        if self.policy != FullPolicy::Block {
            return Ok(false);
        }
        self.retry_pending()?;
        let bytes = self.share.lock().stats().bytes;
        match self.paused_since {
            None if !self.pending.is_empty() || bytes >= self.max_bytes / 16 * 15 => {
                // A spool that flaps around its bound would otherwise log twice a second.
                let quiet = self
                    .block_reported_at
                    .is_some_and(|t| now.saturating_duration_since(t) < BLOCK_REPORT_EVERY);
                let level = if quiet {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "spool full ({bytes} of {} bytes): new collections pause until upstream takes records (spool_full = \"block\")",
                    self.max_bytes
                );
                self.paused_since = Some(now);
            }
            Some(since) if self.pending.is_empty() && bytes < self.max_bytes / 4 * 3 => {
                let paused = now.saturating_duration_since(since);
                log::info!(
                    "spool has room again: collections resume after {:.1} s paused",
                    paused.as_secs_f64()
                );
                self.paused_since = None;
                self.block_unreported_ms += paused.as_millis() as u64;
                self.report_pause(now)?;
            }
            // Pauses held back by the rate limit go out once it allows.
            None => self.report_pause(now)?,
            Some(_) => {}
        }
        Ok(self.paused_since.is_some())
    }

    /// Block policy: a gap record for the pauses since the last one, at most one per
    /// [`BLOCK_REPORT_EVERY`] (a spool flapping at its bound would send one per flap); what
    /// is held back goes out once allowed, or at stop ([`Spooler::close`]).
    fn report_pause(&mut self, now: Instant) -> Result<(), AgentError> {
        let due = self
            .block_reported_at
            .is_none_or(|t| now.saturating_duration_since(t) >= BLOCK_REPORT_EVERY);
        if !due {
            return Ok(());
        }
        let Some(gap) = self.take_pause() else {
            return Ok(());
        };
        self.block_reported_at = Some(now);
        self.gap(gap)
    }

    /// The pauses not yet reported, as a gap, and counting starts again; `None`: none.
    fn take_pause(&mut self) -> Option<Gap> {
        let (collections, ms) = (self.paused_collections, self.block_unreported_ms);
        if collections == 0 && ms == 0 {
            return None;
        }
        self.paused_collections = 0;
        self.block_unreported_ms = 0;
        Some(Gap {
            policy: FullPolicy::Block.as_str().into(),
            paused_collections: collections,
            paused_ms: ms,
            ..Gap::default()
        })
    }

    /// Drop-oldest policy: a gap record for every loss since the last one. A gap record can
    /// itself be dropped before it is shipped; what it reported then goes into the next one,
    /// so the gap records a receiver gets always add up to every record it will never get.
    fn report_drops(&mut self) -> Result<(), AgentError> {
        if self.policy != FullPolicy::DropOldest {
            return Ok(());
        }
        let (stats, lost_ranges) = {
            let mut spool = self.share.lock();
            (spool.stats(), spool.take_lost_ranges())
        };
        self.unshipped_gaps.retain(|&seq, _| seq > stats.acked);
        for (first, last) in lost_ranges {
            let lost: Vec<u64> = self
                .unshipped_gaps
                .range(first..=last)
                .map(|(&seq, _)| seq)
                .collect();
            for seq in lost {
                if let Some((records, bytes)) = self.unshipped_gaps.remove(&seq) {
                    self.gap_carry.0 += records;
                    self.gap_carry.1 += bytes;
                }
            }
        }
        let records = stats.dropped_records - self.reported_drops.0 + self.gap_carry.0;
        let bytes = stats.dropped_bytes - self.reported_drops.1 + self.gap_carry.1;
        if records == 0 && bytes == 0 {
            return Ok(());
        }
        self.reported_drops = (stats.dropped_records, stats.dropped_bytes);
        self.gap_carry = (0, 0);
        self.gap(Gap {
            policy: FullPolicy::DropOldest.as_str().into(),
            dropped_records: records,
            dropped_bytes: bytes,
            ..Gap::default()
        })
    }

    /// After the shipper stopped: records drop-oldest deleted while the shipper held them,
    /// and that upstream did not take, are lost now; reported for the next start to ship.
    fn report_held_losses(&mut self) -> Result<(), AgentError> {
        let held = self.share.lock().held_dropped_seqs();
        if held.is_empty() {
            return Ok(());
        }
        // A gap record among them takes what it reported down with it.
        let (mut records, mut bytes) = (held.len() as u64, 0);
        for seq in &held {
            if let Some((r, b)) = self.unshipped_gaps.remove(seq) {
                records += r;
                bytes += b;
            }
        }
        let record = self.gap_record(Gap {
            policy: FullPolicy::DropOldest.as_str().into(),
            dropped_records: records,
            dropped_bytes: bytes,
            ..Gap::default()
        })?;
        self.share
            .lock()
            .append_over_limit(record.seq, record.to_json().as_bytes())?;
        Ok(())
    }

    fn gap(&mut self, gap: Gap) -> Result<(), AgentError> {
        let mut record = self.gap_record(gap)?;
        self.spool_record(&mut record)
    }

    /// Numbers a gap record, logs it, and remembers what it reports until it is shipped.
    fn gap_record(&mut self, gap: Gap) -> Result<Record, AgentError> {
        let seq = self.seq.next()?;
        if gap.dropped_records > 0 || gap.dropped_bytes > 0 {
            self.unshipped_gaps
                .insert(seq, (gap.dropped_records, gap.dropped_bytes));
        }
        let mut record = Record::gap(&self.agent, seq, gap, SystemTime::now());
        record.clock_synced = self.clock_synced();
        log::warn!("{}", record.error.as_deref().unwrap_or("spool gap"));
        Ok(record)
    }

    /// At shutdown: nothing collected may be lost, so what waited for room goes in past the
    /// bound (at most what the sessions in flight produced), with the pause reported.
    fn close(&mut self) -> Result<(), AgentError> {
        if let Some(since) = self.paused_since.take() {
            self.block_unreported_ms += since.elapsed().as_millis() as u64;
        }
        if let Some(gap) = self.take_pause() {
            let record = self.gap_record(gap)?;
            self.pending
                .push_back((record.seq, record.to_json().into_bytes()));
        }
        let mut spool = self.share.lock();
        if !self.pending.is_empty() {
            log::warn!(
                "stopping with the spool full: {} records collected meanwhile go in past spool_max_bytes rather than being lost",
                self.pending.len()
            );
        }
        while let Some((seq, json)) = self.pending.pop_front() {
            spool.append_over_limit(seq, &json)?;
        }
        Ok(())
    }
}
fn work(isolator: Isolator) -> Arc<Work> {
    Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
        if device.isolation == Isolation::Process || device.driver_exec.is_some() {
            isolator.collect(device, &device.commands, emit)
        } else {
            crate::session::collect_each(device, &device.commands, emit)
        }
    })
}

fn install_signals(flags: &Arc<Flags>, pool: &Pool<DeviceId>) -> Result<(), AgentError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(AgentError::Signals)?;
    let flags = Arc::clone(flags);
    let waker = pool.waker();
    std::thread::Builder::new()
        .name("rackhand-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => flags.reload.store(true, Ordering::SeqCst),
                    _ => flags.stop.store(true, Ordering::SeqCst),
                }
                if waker.send(PoolEvent::Wake).is_err() {
                    return;
                }
            }
        })
        .map_err(AgentError::Signals)?;
    Ok(())
}

/// What the agent tracks for `status.json`, kept across restarts for `last_good_at`.
struct StatusKeeper {
    state_dir: PathBuf,
    status: AgentStatus,
    last_saved: Option<Instant>,
    oldest: Option<(u64, Option<String>)>,
    failing: BTreeMap<String, (Status, Option<String>)>,
    /// Finished collections whose records are not yet all committed: (last seq, device,
    /// when, status, error). A collection counts as done once its records are durable.
    awaiting: VecDeque<(u64, String, String, &'static str, Option<String>)>,
}

impl StatusKeeper {
    fn new(
        inventory: &Inventory,
        upstream: &Upstream,
        spool: &SpoolOptions,
        spool_dir: &Path,
    ) -> StatusKeeper {
        let state_dir = inventory.agent.state_dir.clone();
        // A status for this process (pid, version, start), keeping the devices' history.
        let mut status = AgentStatus::load_or_default(&state_dir, &inventory.agent.id);
        status.spool = SpoolStatus {
            dir: spool_dir.display().to_string(),
            max_bytes: spool.max_bytes,
            full_policy: spool.full.as_str().into(),
            ..SpoolStatus::default()
        };
        status.upstream = UpstreamStatus {
            sink: upstream.sink.as_str().into(),
            target: crate::config::url::redact(&upstream.target).into_owned(),
            state: "idle".into(),
            ..UpstreamStatus::default()
        };
        // Devices no longer configured are forgotten.
        status.retain_devices(inventory.devices.iter().map(|d| d.name.as_str()));
        StatusKeeper {
            state_dir,
            status,
            last_saved: None,
            oldest: None,
            failing: BTreeMap::new(),
            awaiting: VecDeque::new(),
        }
    }

    /// Remembers a device's first failed record of the collection under way.
    fn record(&mut self, record: &Record) {
        if record.status != Status::Ok && record.status != Status::Gap {
            self.failing
                .entry(record.device.clone())
                .or_insert_with(|| (record.status, record.error.clone()));
        }
    }

    /// A collection ended: `ok` when every record was, else its first failure. It shows in
    /// the status once every record up to `last_seq` is durable ([`Self::durable`]).
    fn finished(&mut self, device: &str, run: &RunSummary, last_seq: u64) {
        let now = rfc3339_millis(SystemTime::now());
        let first_failure = self.failing.remove(device);
        let (status, error) = match (run.all_ok(), first_failure) {
            (true, _) => ("ok", None),
            (false, Some((status, error))) => (status.as_str(), error),
            (false, None) => (
                run.session_failure.map_or("failed", Status::as_str),
                run.error.clone(),
            ),
        };
        self.awaiting
            .push_back((last_seq, device.to_string(), now, status, error));
    }

    /// Records up to `seq` are committed: the collections they complete are done.
    fn durable(&mut self, seq: u64) {
        while self.awaiting.front().is_some_and(|a| a.0 <= seq) {
            let (_, device, at, status, error) = self.awaiting.pop_front().expect("checked");
            self.status
                .devices
                .entry(device)
                .or_default()
                .collected(&at, status, error.as_deref());
        }
    }

    fn due(&self, now: Instant) -> Instant {
        self.last_saved.map_or(now, |t| t + STATUS_EVERY)
    }

    fn save(&mut self, share: &SpoolShare, spooler: &Spooler, ship: &ShipReport, now: Instant) {
        let stats = {
            let mut spool = share.lock();
            let stats = spool.stats();
            // The oldest unshipped record's time: read once per record, not per save.
            if self.oldest.as_ref().map(|o| o.0) != stats.oldest_unshipped {
                self.oldest = stats.oldest_unshipped.map(|seq| {
                    let at = spool
                        .read_from(seq)
                        .ok()
                        .and_then(|mut r| r.next())
                        .and_then(Result::ok)
                        .and_then(|(_, json)| {
                            serde_json::from_slice::<serde_json::Value>(&json).ok()
                        })
                        .and_then(|v| v["started_at"].as_str().map(str::to_string));
                    (seq, at)
                });
            }
            stats
        };
        let s = &mut self.status;
        s.updated_at = rfc3339_millis(SystemTime::now());
        s.clock_synced = crate::clock::synchronised();
        s.spool.records = stats.records;
        s.spool.bytes = stats.bytes;
        s.spool.segments = stats.segments as u64;
        s.spool.oldest_unshipped_seq = stats.oldest_unshipped;
        s.spool.oldest_unshipped_at = self.oldest.as_ref().and_then(|o| o.1.clone());
        s.spool.acked_seq = stats.acked;
        s.spool.last_seq = stats.last_seq;
        s.spool.dropped_records = stats.dropped_records;
        s.spool.dropped_bytes = stats.dropped_bytes;
        s.spool.paused = spooler.paused_since.is_some();
        s.spool.paused_collections = spooler.paused_total;
        let u = &mut s.upstream;
        u.state = ship.state.as_str().to_string();
        u.last_error = ship.last_error.clone();
        u.last_error_at = ship.last_error_at.map(rfc3339_millis);
        u.last_ack_at = ship.last_ack_at.map(rfc3339_millis);
        u.consecutive_failures = ship.consecutive_failures;
        u.shipped_records = ship.shipped_records;
        u.shipped_batches = ship.shipped_batches;
        u.dead_lettered_batches = ship.dead_lettered_batches;
        u.dead_letter_file = ship
            .dead_letter_file
            .as_ref()
            .map(|p| p.display().to_string());
        if let Err(e) = self.status.save(&self.state_dir) {
            log::warn!("{e}");
        }
        self.last_saved = Some(now);
    }
}

/// Holds `state_dir/lock` (flock) while the agent runs: one agent per spool. The kernel
/// drops the lock when the process dies, however it dies, so a crash never needs a manual
/// unlock.
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<StateLock, AgentError> {
        use std::io::{Read, Seek, Write};
        let path = state_dir.join("lock");
        let err = |error| AgentError::Lock {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut file) => {
                // The holder's pid, for the message another instance gives.
                let _ = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| writeln!(file, "{}", std::process::id()));
                Ok(StateLock { _file: file })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                Err(AgentError::StateDirBusy {
                    dir: state_dir.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                })
            }
            Err((_, errno)) => Err(err(std::io::Error::from(errno))),
        }
    }
}

/// Runs the agent until stopped; returns what each device did.
pub fn run(config: &Path, mut options: Options) -> Result<Summary, AgentError> {
    let mut inventory = load_config(config)?;
    let state_dir = inventory.agent.state_dir.clone();
    let _lock = StateLock::acquire(&state_dir)?;
    let agent_id = inventory.agent.id.clone();
    let upstream = upstream_of(&inventory);
    let sink = build_sink(&inventory, &upstream)?;
    let sink_name = sink.describe();
    let spool_dir = state_dir.join("spool");
    let spool_opts = spool_options(&inventory, &upstream);
    let (spool, recovery) = Spool::open(&spool_dir, spool_opts.clone())?;
    if recovery.found_damage() {
        for action in &recovery.actions {
            log::warn!("spool recovery: {action}");
        }
    }
    let stats = spool.stats();
    if stats.records > 0 {
        log::info!(
            "spool {}: {} records ({} bytes) from before the restart wait to be shipped",
            spool_dir.display(),
            stats.records,
            stats.bytes
        );
    }
    let seq = Sequence::open_above(&state_dir, stats.last_seq.max(stats.acked))?;
    let share = SpoolShare::new(spool);
    let mut status = StatusKeeper::new(&inventory, &upstream, &spool_opts, &spool_dir);
    let mut spooler = Spooler {
        share: Arc::clone(&share),
        seq,
        agent: agent_id.clone(),
        policy: spool_opts.full,
        max_bytes: spool_opts.max_bytes,
        max_record: spool_opts.max_record_bytes,
        pending: VecDeque::new(),
        paused_since: None,
        paused_collections: 0,
        paused_total: 0,
        reported_drops: (0, 0),
        unshipped_gaps: BTreeMap::new(),
        gap_carry: (0, 0),
        clock: None,
        last_seq: 0,
        block_unreported_ms: 0,
        block_reported_at: None,
    };

    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        log::warn!(
            "NOTIFY_SOCKET is set but unusable ({e}); running without systemd notifications"
        );
        Notifier::disabled()
    });
    let workers = inventory.agent.workers;
    let pool: Pool<DeviceId> = Pool::new(workers, workers * 2, work(Isolator::current()?))?;
    let flags = Arc::new(Flags {
        stop: AtomicBool::new(false),
        reload: AtomicBool::new(false),
    });
    if options.signals {
        install_signals(&flags, &pool)?;
    }
    let waker = pool.waker();
    let shipper = Shipper::start(
        Arc::clone(&share),
        sink,
        ShipperOptions {
            agent: agent_id.clone(),
            limits: BatchLimits::from_upstream(&upstream),
            state_dir: state_dir.clone(),
            backoff: Backoff::default(),
            seed: jitter_seed(&agent_id),
        },
        Box::new(move || {
            let _ = waker.send(PoolEvent::Wake);
        }),
    )
    .map_err(AgentError::Thread)?;

    let started = Instant::now();
    let stop_at = options.run_for.map(|d| started + d);
    let mut scheduler = Scheduler::new(&inventory, started, SystemTime::now());
    let mut summary = Summary {
        outbox: match upstream.sink {
            SinkKind::File => Path::new(&upstream.target).join(crate::sink::file::CURRENT),
            _ => spool_dir.clone(),
        },
        ..Summary::default()
    };
    let mut last_ping = Instant::now();
    let watchdog = notifier.watchdog_period();
    let _ = notifier.ready(&format!(
        "collecting {} devices with {workers} workers",
        inventory.devices.len()
    ));
    log::info!(
        "agent {agent_id} running: {} devices, {workers} workers, spool {}, shipping to {sink_name}",
        inventory.devices.len(),
        spool_dir.display(),
    );

    let mut handle = |event: PoolEvent<DeviceId>,
                      scheduler: &mut Scheduler,
                      spooler: &mut Spooler,
                      status: &mut StatusKeeper,
                      summary: &mut Summary|
     -> Result<(), AgentError> {
        match event {
            PoolEvent::Started { .. } | PoolEvent::Wake => {}
            PoolEvent::Outcome { outcome, .. } => {
                let record = spooler.outcome(outcome)?;
                status.record(&record);
                let tally = summary.devices.entry(record.device.clone()).or_default();
                tally.records += 1;
                if record.status == Status::Ok {
                    tally.ok += 1;
                }
                tally.last_status = Some(record.status);
                tally.last_error = record.error.clone();
                summary.records += 1;
                if let Some(cb) = options.on_record.as_mut() {
                    cb(&record);
                }
            }
            PoolEvent::Finished {
                key,
                summary: run,
                elapsed,
            } => {
                if let Some(device) = scheduler.device(key) {
                    let name = device.name.clone();
                    status.finished(&name, &run, spooler.last_seq);
                    let tally = summary.devices.entry(name).or_default();
                    tally.runs += 1;
                    tally.busy += elapsed;
                }
                scheduler.finished(key, &run, Instant::now());
            }
        }
        Ok(())
    };

    loop {
        let now = Instant::now();
        if flags.stop.load(Ordering::SeqCst) || stop_at.is_some_and(|t| now >= t) {
            break;
        }
        if flags.reload.swap(false, Ordering::SeqCst) {
            let _ = notifier.reloading();
            match load_config(config) {
                Ok(new) => {
                    let changes = scheduler.reload(&new, now);
                    log::info!(
                        "config reloaded: {} added, {} removed, {} changed",
                        changes.added.len(),
                        changes.removed.len(),
                        changes.changed.len()
                    );
                    if new.agent.workers != inventory.agent.workers {
                        log::warn!(
                            "workers changed to {}; this takes effect at the next restart",
                            new.agent.workers
                        );
                    }
                    if new.upstream != inventory.upstream || new.agent.state_dir != state_dir {
                        log::warn!(
                            "[upstream] or state_dir changed; this takes effect at the next restart"
                        );
                    }
                    inventory = new;
                    status
                        .status
                        .retain_devices(inventory.devices.iter().map(|d| d.name.as_str()));
                }
                Err(e) => log::error!("reload refused, keeping the running config: {e}"),
            }
            let _ = notifier.ready(&format!("collecting {} devices", inventory.devices.len()));
        }
        if spooler.update_pause(now)? {
            let passed = scheduler.pass_due(now);
            spooler.paused_collections += passed;
            spooler.paused_total += passed;
        } else {
            for d in scheduler.take_due(now, pool.vacancies()) {
                if let Err(e) = pool.submit(d.id, d.device) {
                    log::debug!("{e}");
                    scheduler.unstarted(d.id);
                }
            }
        }
        let mut wake_at = match scheduler.next_due() {
            Some(at) if pool.vacancies() > 0 => at,
            _ => now + MAX_IDLE,
        }
        .min(now + MAX_IDLE)
        .min(status.due(now));
        if let Some(at) = share.lock().commit_deadline() {
            wake_at = wake_at.min(at);
        }
        if let Some(t) = stop_at {
            wake_at = wake_at.min(t);
        }
        if let Some(period) = watchdog {
            // Until the next ping is due, not a whole period: an event just before the ping
            // would otherwise push it out to almost two periods, i.e. to systemd's limit.
            wake_at = wake_at.min(last_ping + period);
        }
        match pool
            .events()
            .recv_timeout(wake_at.saturating_duration_since(now))
        {
            Ok(event) => handle(
                event,
                &mut scheduler,
                &mut spooler,
                &mut status,
                &mut summary,
            )?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        spooler.report_drops()?;
        // Under `block` with the spool full, waiting for the next group commit would only
        // keep the shipper from freeing room: commit now.
        share.commit(now, spooler.paused_since.is_some())?;
        status.durable(share.durable());
        if now >= status.due(now) {
            status.save(&share, &spooler, &shipper.report(), now);
        }
        // The loop went round: that is the progress the watchdog vouches for.
        if watchdog.is_some_and(|p| last_ping.elapsed() >= p) {
            let _ = notifier.watchdog();
            last_ping = Instant::now();
        }
    }

    // Drain: nothing new starts; what runs may finish within the deadline.
    let _ = notifier.stopping();
    let queued = pool.close();
    for key in queued {
        scheduler.unstarted(key);
    }
    let drain_until = Instant::now() + options.drain;
    log::info!(
        "stopping: {} sessions in flight, waiting up to {:?}",
        scheduler.in_flight(),
        options.drain
    );
    while scheduler.in_flight() > 0 {
        let left = drain_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match pool.events().recv_timeout(left) {
            Ok(event) => handle(
                event,
                &mut scheduler,
                &mut spooler,
                &mut status,
                &mut summary,
            )?,
            Err(_) => break,
        }
        share.commit(Instant::now(), false)?;
        status.durable(share.durable());
    }
    summary.abandoned = scheduler.in_flight();
    if summary.abandoned > 0 {
        log::warn!(
            "{} sessions still running after the drain deadline; their records are lost",
            summary.abandoned
        );
    }
    spooler.close()?;
    spooler.report_drops()?;
    share.commit(Instant::now(), true)?;
    status.durable(share.durable());
    let report = shipper.finish(SHIP_GRACE, upstream.timeout + Duration::from_secs(1));
    spooler.report_held_losses()?;
    share.commit(Instant::now(), true)?;
    status.save(&share, &spooler, &report, Instant::now());
    let left = share.lock().stats();
    if left.records > 0 {
        log::info!(
            "{} records stay in the spool and are shipped at the next start",
            left.records
        );
    }
    for (name, tally) in &summary.devices {
        log::debug!("{name}: {} records, {} ok", tally.records, tally.ok);
    }
    Ok(summary)
}

/// Per-agent, so a fleet started together does not flush its batches in step.
fn jitter_seed(agent: &str) -> u64 {
    agent.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_state_dir() {
        let dir = std::env::temp_dir().join(format!("rackhand-lock-{}", std::process::id()));
        let first = StateLock::acquire(&dir).unwrap();
        let second = StateLock::acquire(&dir)
            .err()
            .expect("the second agent is refused");
        let text = second.to_string();
        assert!(
            text.contains(&format!("(pid {})", std::process::id())),
            "{text}"
        );
        drop(first);
        StateLock::acquire(&dir).expect("free again once the first is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn header_values_take_secrets_from_env_and_files() {
        let dir = std::env::temp_dir().join(format!("rackhand-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let value = format!("Bearer {{file:{}}}", token.display());
        assert_eq!(
            resolve_header("Authorization", &value).unwrap(),
            "Bearer s3cret"
        );
        // SAFETY: this test is the only one touching this variable.
        unsafe { std::env::set_var("RACKHAND_TEST_RACK", "a12") };
        assert_eq!(
            resolve_header("X-Rack", "rack-{env:RACKHAND_TEST_RACK}").unwrap(),
            "rack-a12"
        );
        assert_eq!(
            resolve_header("X", "{not a placeholder}").unwrap(),
            "{not a placeholder}"
        );
        let missing = resolve_header("X", "{env:RACKHAND_TEST_UNSET}").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("RACKHAND_TEST_UNSET is not set"),
            "{missing}"
        );
        let unreadable = resolve_header("X", "{file:/nonexistent/token}").unwrap_err();
        assert!(
            unreadable.to_string().contains("/nonexistent/token"),
            "{unreadable}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

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
use crate::record::{Outcome, Record, Status, rfc3339_millis};
use crate::scheduler::{DeviceId, Scheduler};
use crate::seq::Sequence;
use crate::ship::{ShipReport, Shipper, ShipperOptions};
use crate::sink::file::FileSink;
use crate::sink::http::{HttpConfig, HttpSink};
use crate::sink::mqtt::{MqttConfig, MqttSink};
use crate::sink::{Backoff, Sink, SinkError};
use crate::spool::{Durability, FullPolicy, Spool, SpoolError, SpoolOptions, Stats};
use crate::spooler::{Spooler, record_limit};
use crate::state_dir::StateLock;
use crate::status::{AgentStatus, SpoolStatus, UpstreamStatus};

/// How often spooled records are made durable (group commit), unless `fsync = "always"`.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often `state_dir/status.json` is rewritten for `rackhand status`.
const STATUS_EVERY: Duration = Duration::from_secs(2);
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
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
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
            let config = MqttConfig::from_upstream(
                upstream,
                &inventory.agent.id,
                &inventory.agent.state_dir,
            );
            Box::new(MqttSink::new(config).map_err(SinkError::from)?)
        }
    })
}

/// The spool's settings from `[upstream]`.
fn spool_options(inventory: &Inventory, upstream: &Upstream) -> SpoolOptions {
    let max_bytes = upstream.spool_max_bytes;
    let largest_output = inventory
        .devices
        .iter()
        .map(|d| d.max_output)
        .max()
        .unwrap_or(inventory::defaults::MAX_OUTPUT);
    // Any output within max_output fits whole (counted in bytes of the encoding), but no
    // record may take more than half the spool.
    let max_record = record_limit(largest_output)
        .max(16 << 20)
        .min(max_bytes / 2)
        .clamp(4096, u64::from(crate::spool::frame::MAX_PAYLOAD)) as u32;
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
    /// The last save failed (logged once until one works again).
    save_failing: bool,
    /// Collections not started while new ones were paused, since the agent started.
    paused_collections: u64,
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
            save_failing: false,
            paused_collections: 0,
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

    fn save(&mut self, stats: &Stats, paused: bool, ship: &ShipReport, now: Instant) {
        let s = &mut self.status;
        s.updated_at = rfc3339_millis(SystemTime::now());
        s.clock_synced = crate::clock::synchronised();
        s.spool.records = stats.records;
        s.spool.bytes = stats.bytes;
        s.spool.segments = stats.segments as u64;
        s.spool.oldest_unshipped_seq = stats.oldest_unshipped;
        s.spool.oldest_unshipped_at = ship
            .oldest_unshipped
            .as_ref()
            .filter(|o| Some(o.0) == stats.oldest_unshipped)
            .and_then(|o| o.1.clone());
        s.spool.acked_seq = stats.acked;
        s.spool.last_seq = stats.last_seq;
        s.spool.dropped_records = stats.dropped_records;
        s.spool.dropped_bytes = stats.dropped_bytes;
        s.spool.paused = paused;
        s.spool.paused_collections = self.paused_collections;
        s.spool.waiting_in_memory = stats.waiting_in_memory;
        s.spool.storage_error = stats.storage_trouble.as_ref().map(|t| t.error.clone());
        s.spool.storage_error_cause = stats
            .storage_trouble
            .as_ref()
            .map(|t| t.cause.as_str().to_string());
        s.spool.storage_error_since = stats
            .storage_trouble
            .as_ref()
            .map(|t| rfc3339_millis(t.since));
        s.spool.checkpoint_error = stats.checkpoint_trouble;
        s.spool.lost = stats
            .lost
            .iter()
            .map(|(cause, n)| (cause.as_str().to_string(), *n))
            .collect();
        s.spool.unreported_lost = stats.unreported_lost;
        let u = &mut s.upstream;
        u.state = ship.state.as_str().to_string();
        u.last_error = ship.last_error.clone();
        u.last_error_at = ship.last_error_at.map(rfc3339_millis);
        u.last_ack_at = ship.last_ack_at.map(rfc3339_millis);
        u.consecutive_failures = ship.consecutive_failures;
        u.shipped_records = ship.shipped_records;
        u.shipped_batches = ship.shipped_batches;
        u.dead_lettered_batches = ship.dead_lettered_batches;
        u.rejected_records = ship.rejected_records;
        u.dead_letter_file = ship
            .dead_letter_file
            .as_ref()
            .map(|p| p.display().to_string());
        match self.status.save(&self.state_dir) {
            Ok(()) if self.save_failing => {
                self.save_failing = false;
                log::info!("status.json is written again");
            }
            Ok(()) => {}
            // Once per condition: a full disk would otherwise log every two seconds.
            Err(e) if !self.save_failing => {
                self.save_failing = true;
                log::warn!("{e}");
            }
            Err(e) => log::debug!("{e}"),
        }
        self.last_saved = Some(now);
    }
}

/// Runs the agent until stopped; returns what each device did.
pub fn run(config: &Path, mut options: Options) -> Result<Summary, AgentError> {
    let mut inventory = load_config(config)?;
    let state_dir = inventory.agent.state_dir.clone();
    crate::state_dir::prepare(&state_dir)?;
    let _lock = StateLock::acquire(&state_dir)?;
    let agent_id = inventory.agent.id.clone();
    let upstream = inventory.upstream_in_force();
    let sink = build_sink(&inventory, &upstream)?;
    let sink_name = sink.describe();
    let spool_dir = state_dir.join("spool");
    let spool_opts = spool_options(&inventory, &upstream);
    let (writer, reader, recovery) = Spool::open(&spool_dir, spool_opts.clone())?;
    for action in &recovery.actions {
        log::warn!("spool recovery: {action}");
    }
    if recovery.segments_scanned > 0 {
        log::info!(
            "spool {}: {} sealed segments had no footer (written by an older rackhand) and were scanned once",
            spool_dir.display(),
            recovery.segments_scanned
        );
    }
    let stats = writer.stats();
    if stats.records > 0 {
        log::info!(
            "spool {}: {} records ({} bytes) from before the restart wait to be shipped",
            spool_dir.display(),
            stats.records,
            stats.bytes
        );
    }
    let seq = Sequence::open_above(&state_dir, stats.last_seq.max(stats.acked))?;
    let mut status = StatusKeeper::new(&inventory, &upstream, &spool_opts, &spool_dir);
    let mut spooler = Spooler::new(
        writer,
        seq,
        &agent_id,
        spool_opts.full,
        spool_opts.max_record_bytes,
    );
    // What opening found lost goes upstream first.
    spooler.report_losses(Instant::now(), true);

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
        reader,
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
    let _ = notifier.ready(&collecting(&inventory, Some(workers)));
    log::info!(
        "agent {agent_id} running: {} devices, {workers} workers, spool {}, shipping to {sink_name}",
        inventory.devices.len(),
        spool_dir.display(),
    );
    if inventory.devices.is_empty() {
        log_idle(config);
    }

    let mut handle = |event: PoolEvent<DeviceId>,
                      scheduler: &mut Scheduler,
                      spooler: &mut Spooler,
                      status: &mut StatusKeeper,
                      summary: &mut Summary| {
        match event {
            PoolEvent::Started { .. } | PoolEvent::Wake => {}
            PoolEvent::Outcome { outcome, .. } => {
                let Some(record) = spooler.outcome(outcome) else {
                    return;
                };
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
                    status.finished(&name, &run, spooler.last_seq());
                    let tally = summary.devices.entry(name).or_default();
                    tally.runs += 1;
                    tally.busy += elapsed;
                }
                scheduler.finished(key, &run, Instant::now());
            }
        }
    };

    let mut paused = false;
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
                    if inventory.devices.is_empty() {
                        log_idle(config);
                    }
                }
                Err(e) => log::error!("reload refused, keeping the running config: {e}"),
            }
            let _ = notifier.ready(&collecting(&inventory, None));
        }
        paused = spooler.paused(now);
        if paused {
            let passed = scheduler.pass_due(now);
            spooler.passed_over(passed);
            status.paused_collections += passed;
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
        if let Some(at) = spooler.deadline() {
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
            ),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        // Commits (group commit, or at once while paused for room), retries after a storage
        // error, and turns losses into gap records.
        spooler.tick(now);
        status.durable(spooler.durable_seq());
        if now >= status.due(now) {
            status.save(&spooler.stats(), paused, &shipper.report(), now);
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
            ),
            Err(_) => break,
        }
        spooler.tick(Instant::now());
        status.durable(spooler.durable_seq());
    }
    summary.abandoned = scheduler.in_flight();
    if summary.abandoned > 0 {
        log::warn!(
            "{} sessions still running after the drain deadline; their records are lost",
            summary.abandoned
        );
    }
    spooler.report_losses(Instant::now(), true);
    spooler.commit();
    status.durable(spooler.durable_seq());
    let report = shipper.finish(SHIP_GRACE, upstream.timeout + Duration::from_secs(1));
    spooler.shipper_stopped();
    spooler.close();
    status.durable(spooler.durable_seq());
    status.save(&spooler.stats(), paused, &report, Instant::now());
    let left = spooler.stats();
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

/// The systemd status line: what the agent collects, or that it waits for devices.
fn collecting(inventory: &Inventory, workers: Option<usize>) -> String {
    match (inventory.devices.len(), workers) {
        (0, _) => "idle: no devices in the config yet".to_string(),
        (n, Some(workers)) => format!("collecting {n} devices with {workers} workers"),
        (n, None) => format!("collecting {n} devices"),
    }
}

/// A config without devices is a starting point (a package's starter config), not an error:
/// the agent runs, ready for the devices a reload brings.
fn log_idle(config: &Path) {
    log::info!(
        "no devices in {} yet: running idle; add [[device]] tables and reload (SIGHUP: systemctl reload rackhand)",
        config.display()
    );
}

/// Per-agent, so a fleet started together does not flush its batches in step.
fn jitter_seed(agent: &str) -> u64 {
    crate::hash::fnv1a(agent.as_bytes()) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

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

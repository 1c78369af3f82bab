//! The agent: the long-running loop behind `rackhand run` (and `rackhand demo`).
//!
//! One thread owns the scheduler and reads the pool's events; workers only wait on devices.
//! Each outcome is numbered from the persisted sequence, becomes a record, and goes to the
//! sink. Signals arrive through a small thread that sets a flag and wakes the loop:
//! SIGTERM/SIGINT stop scheduling and drain in-flight work within a deadline; SIGHUP reloads
//! the config (an invalid one is logged with all its errors and the old one kept). Under
//! systemd the loop sends READY=1 once running and WATCHDOG=1 only while it goes round, so a
//! wedged agent is restarted rather than left silent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::{self, Device, Inventory, Isolation, SinkKind};
use crate::isolation::Isolator;
use crate::notify::Notifier;
use crate::pool::{Pool, PoolEvent, Work};
use crate::record::{Outcome, Record, Status};
use crate::scheduler::{DeviceId, Scheduler};
use crate::seq::Sequence;
use crate::sink::file::FileSink;

/// How often buffered records are made durable (group commit).
const SYNC_EVERY: Duration = Duration::from_secs(1);
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
    #[error(
        "upstream sink `{0}` is not available in this version; use sink = \"file\" (records are written as NDJSON files)"
    )]
    SinkUnavailable(&'static str),
    #[error(transparent)]
    Sequence(#[from] crate::seq::SeqError),
    #[error(transparent)]
    Sink(#[from] crate::sink::file::FileSinkError),
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

/// Where records go: the file sink's folder.
fn outbox_of(inventory: &Inventory) -> Result<(PathBuf, u64), AgentError> {
    match &inventory.upstream {
        None => Ok((
            inventory.agent.state_dir.join("outbox"),
            inventory::defaults::FILE_MAX_BYTES,
        )),
        Some(u) => match u.sink {
            SinkKind::File => Ok((PathBuf::from(&u.target), u.file_max_bytes)),
            SinkKind::Http => Err(AgentError::SinkUnavailable("http")),
            SinkKind::Mqtt => Err(AgentError::SinkUnavailable("mqtt")),
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

/// Runs the agent until stopped; returns what each device did.
pub fn run(config: &Path, mut options: Options) -> Result<Summary, AgentError> {
    let mut inventory = load_config(config)?;
    let (outbox, max_bytes) = outbox_of(&inventory)?;
    let seq = Sequence::open(&inventory.agent.state_dir)?;
    let mut sink = FileSink::open(&outbox, max_bytes)?;
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
    let started = Instant::now();
    let stop_at = options.run_for.map(|d| started + d);
    let mut scheduler = Scheduler::new(&inventory, started, SystemTime::now());
    let mut summary = Summary {
        outbox: sink.current_path(),
        ..Summary::default()
    };
    let mut last_sync = Instant::now();
    let mut last_ping = Instant::now();
    let watchdog = notifier.watchdog_period();
    let _ = notifier.ready(&format!(
        "collecting {} devices with {workers} workers",
        inventory.devices.len()
    ));
    log::info!(
        "agent {} running: {} devices, {workers} workers, records to {}",
        inventory.agent.id,
        inventory.devices.len(),
        sink.current_path().display()
    );

    let mut handle = |event: PoolEvent<DeviceId>,
                      scheduler: &mut Scheduler,
                      sink: &mut FileSink,
                      summary: &mut Summary,
                      agent_id: &str|
     -> Result<(), AgentError> {
        match event {
            PoolEvent::Started { .. } | PoolEvent::Wake => {}
            PoolEvent::Outcome { outcome, .. } => {
                let record = outcome.into_record(agent_id, seq.next()?);
                sink.write(&record)?;
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
                    let tally = summary.devices.entry(device.name.clone()).or_default();
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
                    inventory = new;
                }
                Err(e) => log::error!("reload refused, keeping the running config: {e}"),
            }
            let _ = notifier.ready(&format!("collecting {} devices", inventory.devices.len()));
        }
        for d in scheduler.take_due(now, pool.vacancies()) {
            if let Err(e) = pool.submit(d.id, d.device) {
                log::debug!("{e}");
                scheduler.unstarted(d.id);
            }
        }
        let mut wait = match scheduler.next_due() {
            Some(at) if pool.vacancies() > 0 => at.saturating_duration_since(now),
            _ => MAX_IDLE,
        }
        .min(MAX_IDLE);
        if let Some(t) = stop_at {
            wait = wait.min(t.saturating_duration_since(now));
        }
        if let Some(period) = watchdog {
            // Until the next ping is due, not a whole period: an event just before the ping
            // would otherwise push it out to almost two periods, i.e. to systemd's limit.
            wait = wait.min(period.saturating_sub(last_ping.elapsed()));
        }
        match pool.events().recv_timeout(wait) {
            Ok(event) => handle(
                event,
                &mut scheduler,
                &mut sink,
                &mut summary,
                &inventory.agent.id,
            )?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_sync.elapsed() >= SYNC_EVERY {
            sink.sync()?;
            last_sync = Instant::now();
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
                &mut sink,
                &mut summary,
                &inventory.agent.id,
            )?,
            Err(_) => break,
        }
    }
    summary.abandoned = scheduler.in_flight();
    if summary.abandoned > 0 {
        log::warn!(
            "{} sessions still running after the drain deadline; their records are lost",
            summary.abandoned
        );
    }
    sink.sync()?;
    for (name, tally) in &summary.devices {
        log::debug!("{name}: {} records, {} ok", tally.records, tally.ok);
    }
    Ok(summary)
}

//! The agent: the long-running loop behind `rackhand run` (and `rackhand demo`).
//!
//! One thread owns the scheduler and reads the pool's events; workers only wait on devices.
//! Each outcome is numbered from the persisted sequence, becomes a record, and goes to the
//! sink. Signals arrive through a small thread that sets a flag and wakes the loop:
//! SIGTERM/SIGINT stop scheduling and drain in-flight work within a deadline; SIGHUP reloads
//! the config (an invalid one is logged with all its errors and the old one kept). Under
//! systemd the loop sends READY=1 once running and WATCHDOG=1 only while it goes round, so a
//! wedged agent is restarted rather than left silent.
//!
//! The loop's state has a name, [`AgentLoop`] (after rust-analyzer's `GlobalState`), so each
//! step is a method that borrows what it needs: [`AgentLoop::start`] (`start.rs`) opens
//! everything, [`AgentLoop::next_event`] waits, [`AgentLoop::handle_event`] acts, and
//! [`AgentLoop::drain`] stops. What the status file says about collections is kept by
//! `status_keeper.rs`; what the retained MQTT presence message says, by `presence.rs`.

mod presence;
mod start;
mod status_keeper;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::inventory::{self, Inventory, Upstream};
use crate::led::StatusLight;
use crate::metrics::Exporter;
use crate::notify::Notifier;
use crate::outcome::RunSummary;
use crate::pool::{Pool, PoolEvent};
use crate::record::{Outcome, Record, Status};
use crate::scheduler::{DeviceId, Scheduler};
use crate::ship::Shipper;
use crate::spooler::Spooler;
use crate::state_dir::StateLock;

use presence::PresenceKeeper;
use status_keeper::StatusKeeper;

/// How often spooled records are made durable (group commit), unless `fsync = "always"`.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the live `status.json` is rewritten for `rackhand status` (in the runtime folder
/// under systemd, else in `state_dir`; see `status_keeper.rs`).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping agent keeps shipping what is spooled before it leaves the rest for
/// the next start.
const SHIP_GRACE: Duration = Duration::from_secs(5);
/// The loop wakes at least this often, so the watchdog sees it alive while nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    // Transparent where the inner error already says it all: `anyhow`'s `{:#}` prints the
    // source chain, so a `{0}` here would print the same message twice.
    #[error(transparent)]
    Config(#[from] inventory::ConfigError),
    #[error(transparent)]
    Sequence(#[from] crate::seq::SeqError),
    #[error(transparent)]
    Sink(#[from] crate::sink::build::BuildError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
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
pub(crate) type RecordHook = Box<dyn FnMut(&Record) + Send>;

/// How a run is bounded and observed.
pub(crate) struct Options {
    /// How long in-flight work may take to finish after SIGTERM (or the end of `run_for`).
    pub(crate) drain: Duration,
    /// Stop by itself after this long (the demo); `None` runs until SIGTERM.
    pub(crate) run_for: Option<Duration>,
    /// Called for every record as it is written (progress displays).
    pub(crate) on_record: Option<RecordHook>,
    /// Install SIGTERM/SIGINT/SIGHUP handlers (off for in-process runs in tests and the demo).
    pub(crate) signals: bool,
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
pub(crate) struct DeviceTally {
    pub(crate) records: u64,
    pub(crate) ok: u64,
    pub(crate) runs: u64,
    pub(crate) last_status: Option<Status>,
    pub(crate) last_error: Option<String>,
    pub(crate) busy: Duration,
}

/// The run's outcome, per device.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) devices: BTreeMap<String, DeviceTally>,
    pub(crate) records: u64,
    pub(crate) outbox: PathBuf,
    /// Sessions still running when the drain deadline passed.
    pub(crate) abandoned: usize,
    /// Records upstream acknowledged as unchanged (`ship = "on_change"`), and the bytes that
    /// saved, as the shipper last reported them.
    pub(crate) unchanged: u64,
    pub(crate) bytes_saved: u64,
}

impl Summary {
    fn record(&mut self, record: &Record) {
        let tally = self.devices.entry(record.device.clone()).or_default();
        tally.records += 1;
        if record.status == Status::Ok {
            tally.ok += 1;
        }
        tally.last_status = Some(record.status);
        tally.last_error = record.error.clone();
        self.records += 1;
    }

    fn finished(&mut self, device: String, elapsed: Duration) {
        let tally = self.devices.entry(device).or_default();
        tally.runs += 1;
        tally.busy += elapsed;
    }
}

/// Runs the agent until stopped; returns what each device did.
pub(crate) fn run(config: &Path, options: Options) -> Result<Summary, AgentError> {
    let inventory = inventory::load_valid(config)?;
    let mut agent = AgentLoop::start(config, inventory, options)?;
    // Ends at SIGTERM/SIGINT, at the end of `run_for`, or if the pool is gone.
    while let Some(event) = agent.next_event() {
        agent.handle_event(event);
    }
    Ok(agent.drain())
}

/// What the signal thread tells the loop (it also wakes it through the pool's waker).
#[derive(Default)]
struct SignalFlags {
    stop: AtomicBool,
    reload: AtomicBool,
}

/// What woke the loop.
enum Event {
    /// SIGHUP: read the config again.
    Reload,
    /// A worker's news (a collection started, an outcome, a collection finished), or a
    /// wake-up from the signal thread or the shipper.
    Pool(PoolEvent<DeviceId>),
    /// A deadline passed with nothing from the pool: group commit, status, watchdog.
    Timer,
}

/// systemd's watchdog, pinged only when the loop goes round.
struct Watchdog {
    period: Option<Duration>,
    last_ping: Instant,
}

impl Watchdog {
    /// When the next ping is due; `None` without a watchdog.
    fn due(&self) -> Option<Instant> {
        self.period.map(|p| self.last_ping + p)
    }

    /// The loop went round: that is the progress the watchdog vouches for.
    fn ping_if_due(&mut self, notifier: &Notifier) {
        if self.period.is_some_and(|p| self.last_ping.elapsed() >= p) {
            let _ = notifier.watchdog();
            self.last_ping = Instant::now();
        }
    }
}

/// Everything the running agent holds. Fields drop in this order: the pool's workers are
/// joined before the spool closes, and the state lock goes last.
struct AgentLoop {
    /// The config file, read again on SIGHUP.
    config: PathBuf,
    /// The config in force (replaced by a valid reload).
    inventory: Inventory,
    /// `state_dir` and `[upstream]` as the agent started: a reload changes neither.
    state_dir: PathBuf,
    upstream: Upstream,
    scheduler: Scheduler,
    shipper: Shipper,
    signals: Arc<SignalFlags>,
    pool: Pool<DeviceId>,
    notifier: Notifier,
    watchdog: Watchdog,
    spooler: Spooler,
    status: StatusKeeper,
    /// The retained MQTT presence message (`sink = "mqtt"`).
    presence: PresenceKeeper,
    /// The status LED (`[board] status_led`); gives the LED back when dropped.
    led: StatusLight,
    /// `[metrics]`: the registry, and the listener and textfile it asks for.
    metrics: Exporter,
    /// The captured consoles' port owners (`capture = true`); taken at the drain.
    consoles: Option<crate::console::Consoles>,
    /// The spool (or the disk) is full and new collections are held back.
    paused: bool,
    /// The end of `Options::run_for`.
    stop_at: Option<Instant>,
    drain: Duration,
    on_record: Option<RecordHook>,
    summary: Summary,
    _lock: StateLock,
}

impl AgentLoop {
    /// Starts what is due (or passes it over while admission is paused), then waits for the
    /// next event or deadline. `None`: time to stop (a signal, the end of `run_for`, or the
    /// pool gone). A stop is seen before a reload, and both before anything new starts.
    fn next_event(&mut self) -> Option<Event> {
        let now = Instant::now();
        if self.signals.stop.load(Ordering::SeqCst) || self.stop_at.is_some_and(|t| now >= t) {
            return None;
        }
        if self.signals.reload.swap(false, Ordering::SeqCst) {
            return Some(Event::Reload);
        }
        self.start_due(now);
        let wait = self.wake_at(now).saturating_duration_since(now);
        match self.pool.events().recv_timeout(wait) {
            Ok(event) => Some(Event::Pool(event)),
            Err(RecvTimeoutError::Timeout) => Some(Event::Timer),
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Reload => return self.reload(),
            Event::Pool(event) => self.pool_event(event),
            Event::Timer => {}
        }
        self.keep_up(Instant::now());
    }

    /// New collections start only while the spool admits records; while it does not, the
    /// ones due are passed over (counted, never piled up).
    fn start_due(&mut self, now: Instant) {
        self.paused = self.spooler.paused(now);
        if self.paused {
            let passed = self.scheduler.pass_due(now);
            self.spooler.passed_over(passed);
            self.status.paused_collections += passed;
            return;
        }
        for d in self.scheduler.take_due(now, self.pool.vacancies()) {
            if let Err(e) = self.pool.submit(d.id, d.device) {
                log::debug!("{e}");
                self.scheduler.unstarted(d.id);
            }
        }
    }

    /// The first deadline: a device due (if a worker is free), the status, the spool's
    /// commit or retry, the end of `run_for`, the watchdog; at most [`MAX_IDLE`] away.
    fn wake_at(&self, now: Instant) -> Instant {
        let mut wake_at = match self.scheduler.next_due() {
            Some(at) if self.pool.vacancies() > 0 => at,
            _ => now + MAX_IDLE,
        }
        .min(now + MAX_IDLE)
        .min(self.status.due(now));
        if let Some(at) = self.spooler.deadline() {
            wake_at = wake_at.min(at);
        }
        if let Some(t) = self.stop_at {
            wake_at = wake_at.min(t);
        }
        // Until the next ping is due, not a whole period: an event just before the ping
        // would otherwise push it out to almost two periods, i.e. to systemd's limit.
        if let Some(at) = self.watchdog.due() {
            wake_at = wake_at.min(at);
        }
        wake_at
    }

    /// A worker's news: outcomes become records, a finished collection goes to the
    /// scheduler and, once its records are durable, to the status.
    fn pool_event(&mut self, event: PoolEvent<DeviceId>) {
        match event {
            PoolEvent::Started { .. } | PoolEvent::Wake => {}
            PoolEvent::Outcome { outcome, .. } => self.spool_outcome(outcome),
            PoolEvent::Finished {
                key,
                summary,
                elapsed,
            } => self.collection_finished(key, &summary, elapsed),
        }
    }

    fn spool_outcome(&mut self, outcome: Outcome) {
        let Some(record) = self.spooler.outcome(outcome) else {
            return;
        };
        self.status.record(&record);
        self.metrics.record(&record);
        self.summary.record(&record);
        if let Some(cb) = self.on_record.as_mut() {
            cb(&record);
        }
    }

    /// What the captured consoles printed: console records.
    fn spool_console(&mut self) {
        if let Some(consoles) = &self.consoles {
            for event in consoles.take_events() {
                self.spooler.console(&event);
                self.status.console(&event);
            }
        }
    }

    fn collection_finished(&mut self, key: DeviceId, run: &RunSummary, elapsed: Duration) {
        if let Some(device) = self.scheduler.device(key) {
            let name = device.name.clone();
            self.status.finished(&name, run, self.spooler.last_seq());
            self.led.finished(&name, run.all_ok());
            self.metrics.finished(&name, device.transport, run, elapsed);
            self.summary.finished(name, elapsed);
        }
        self.scheduler.finished(key, run, Instant::now());
    }

    /// After every event: commits (group commit, or at once while paused for room), retries
    /// after a storage error, gap records for losses; the status when due; the watchdog.
    fn keep_up(&mut self, now: Instant) {
        self.spool_console();
        self.spooler.tick(now);
        self.status.durable(self.spooler.durable_seq());
        if now >= self.status.due(now) {
            let report = self.shipper.report();
            let stats = self.spooler.stats();
            self.status.save(&stats, self.paused, &report, now, false);
            let admission = self.status.admission(self.paused);
            let busy = self.pool.busy();
            let histories = self.status.histories();
            self.metrics
                .observe(&stats, &report, admission, busy, histories, now);
        }
        self.offer_presence(now);
        if self.led.due(now) {
            let (stats, ship) = (self.spooler.stats(), self.shipper.report());
            let max = self.upstream.spool_max_bytes;
            let seen = crate::led::Seen {
                inventory: &self.inventory,
                stats: &stats,
                admission_paused: self.paused,
                ship: &ship,
                spool_max_bytes: max,
            };
            self.led.observe(now, self.status.histories(), seen);
        }
        self.metrics.loop_turned();
        self.watchdog.ping_if_due(&self.notifier);
    }

    /// SIGHUP: a valid config replaces the running one (devices added, removed, changed by
    /// name); an invalid one is logged and the running one kept. Workers, `state_dir` and
    /// `[upstream]` take effect at the next start.
    fn reload(&mut self) {
        let _ = self.notifier.reloading();
        match inventory::load_valid(&self.config) {
            Ok(new) => self.take_config(new),
            Err(e) => log::error!("reload refused, keeping the running config: {e}"),
        }
        let _ = self.notifier.ready(&collecting(&self.inventory, None));
    }

    fn take_config(&mut self, new: Inventory) {
        let changes = self.scheduler.reload(&new, Instant::now());
        log::info!(
            "config reloaded: {} added, {} removed, {} changed",
            changes.added.len(),
            changes.removed.len(),
            changes.changed.len()
        );
        if new.agent.workers != self.inventory.agent.workers {
            log::warn!(
                "workers changed to {}; this takes effect at the next restart",
                new.agent.workers
            );
        }
        if new.upstream != self.inventory.upstream || new.agent.state_dir != self.state_dir {
            log::warn!("[upstream] or state_dir changed; this takes effect at the next restart");
        }
        if new.board != self.inventory.board {
            log::warn!("[board] status_led changed; this takes effect at the next restart");
        }
        self.inventory = new;
        if let Some(consoles) = self.consoles.as_mut() {
            let (spooler, status) = (&mut self.spooler, &mut self.status);
            consoles.reload(&self.inventory, &mut |event| {
                spooler.console(&event);
                status.console(&event);
            });
        }
        self.status.retain_devices(&self.inventory);
        self.led.retain(&self.inventory);
        self.metrics.reload(&self.inventory);
        self.shipper
            .set_policy(crate::change::ChangePolicy::from_inventory(&self.inventory));
        if self.inventory.devices.is_empty() {
            log_idle(&self.config);
        }
    }

    /// Stops: nothing new starts; what runs may finish within the drain deadline; what is
    /// spooled is committed and shipped for [`SHIP_GRACE`]; the rest waits for the next start.
    fn drain(mut self) -> Summary {
        let _ = self.notifier.stopping();
        // The LED goes back to the system as the agent stops, not after the drain.
        self.led.stop();
        for key in self.pool.close() {
            self.scheduler.unstarted(key);
        }
        self.wait_for_sessions();
        // After the sessions (which borrow their ports from the captures): each capture
        // flushes what it holds, and its last text is spooled with the rest.
        if let Some(consoles) = self.consoles.take() {
            let (spooler, status) = (&mut self.spooler, &mut self.status);
            consoles.stop(&mut |event| {
                spooler.console(&event);
                status.console(&event);
            });
        }
        self.summary.abandoned = self.scheduler.in_flight();
        if self.summary.abandoned > 0 {
            log::warn!(
                "{} sessions still running after the drain deadline; their records are lost",
                self.summary.abandoned
            );
        }
        self.spooler.report_losses(Instant::now(), true);
        self.spooler.commit();
        self.status.durable(self.spooler.durable_seq());
        let report = self
            .shipper
            .finish(SHIP_GRACE, self.upstream.timeout + Duration::from_secs(1));
        self.spooler.shipper_stopped();
        self.presence.stop();
        self.spooler.close();
        self.status.durable(self.spooler.durable_seq());
        let stats = self.spooler.stats();
        self.status
            .save(&stats, self.paused, &report, Instant::now(), true);
        self.metrics.observe(
            &stats,
            &report,
            self.status.admission(self.paused),
            0,
            self.status.histories(),
            Instant::now(),
        );
        self.metrics.stop();
        let left = self.spooler.stats();
        if left.records > 0 {
            log::info!(
                "{} records stay in the spool and are shipped at the next start",
                left.records
            );
        }
        for (name, tally) in &self.summary.devices {
            log::debug!("{name}: {} records, {} ok", tally.records, tally.ok);
        }
        self.summary.unchanged = report.unchanged_records;
        self.summary.bytes_saved = report.bytes_saved;
        self.summary
    }

    /// The sessions in flight finish, within the drain deadline.
    fn wait_for_sessions(&mut self) {
        let drain_until = Instant::now() + self.drain;
        log::info!(
            "stopping: {} sessions in flight, waiting up to {:?}",
            self.scheduler.in_flight(),
            self.drain
        );
        // Each turn takes an event or ends: bounded by the deadline.
        while self.scheduler.in_flight() > 0 {
            let left = drain_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.pool.events().recv_timeout(left) {
                Ok(event) => self.pool_event(event),
                Err(_) => break,
            }
            self.spool_console();
            self.spooler.tick(Instant::now());
            self.status.durable(self.spooler.durable_seq());
        }
    }
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

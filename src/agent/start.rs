//! The agent's start-up: everything [`AgentLoop`] holds, opened in an order that fails early.
//!
//! The state folder and its lock come first (two agents on one spool would corrupt it), then
//! the sink (a mistake in `[upstream]` refuses the start before any device is touched), then
//! the spool, the sequence above it and the spooler, then the threads: workers, signals, the
//! shipper. The loop announces itself to systemd only once all of that stands.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::batch::BatchLimits;
use crate::change::ChangePolicy;
use crate::inventory::{self, Device, Inventory, Isolation, SinkKind, Upstream};
use crate::isolation::Isolator;
use crate::notify::Notifier;
use crate::pool::{Pool, PoolEvent, Work};
use crate::record::Outcome;
use crate::scheduler::{DeviceId, Scheduler};
use crate::seq::Sequence;
use crate::ship::{Shipper, ShipperOptions};
use crate::sink::{Backoff, Sink};
use crate::spool::{Durability, FullPolicy, Spool, SpoolOptions, SpoolReader};
use crate::spooler::{Spooler, record_limit};
use crate::state_dir::StateLock;

use super::presence::PresenceKeeper;
use super::status_keeper::StatusKeeper;
use super::{
    AgentError, AgentLoop, Options, SYNC_EVERY, SignalFlags, Summary, Watchdog, collecting,
    log_idle,
};

impl AgentLoop {
    /// Opens everything for `inventory` (read from `config`) and tells systemd the agent is
    /// ready.
    pub(super) fn start(
        config: &Path,
        inventory: Inventory,
        options: Options,
    ) -> Result<AgentLoop, AgentError> {
        let state_dir = inventory.agent.state_dir.clone();
        crate::state_dir::prepare(&state_dir)?;
        let lock = StateLock::acquire(&state_dir)?;
        let agent_id = inventory.agent.id.clone();
        let upstream = inventory.upstream_in_force();
        let sink = crate::sink::build::build(&upstream, &agent_id, &state_dir)?;
        let sink_name = sink.describe();
        let spool_dir = state_dir.join("spool");
        let spool_opts = spool_options(&inventory, &upstream);
        let (spooler, reader) = open_spool(&inventory, &spool_dir, &spool_opts)?;
        let status = StatusKeeper::new(&inventory, &upstream, &spool_opts, &spool_dir);
        let metrics = crate::metrics::Exporter::start(&inventory, spool_opts.max_bytes);

        let notifier = notifier_from_env();
        let workers = inventory.agent.workers;
        let registry = Arc::new(crate::console::Registry::default());
        let pool: Pool<DeviceId> = Pool::new(
            workers,
            workers * 2,
            work(Isolator::current()?, Arc::clone(&registry)),
        )?;
        let signals = Arc::new(SignalFlags::default());
        if options.signals {
            install_signals(&signals, &pool)?;
        }
        // After the signal handlers, so a SIGTERM from here on stops the agent through its
        // drain and this guard's Drop gives the LED back; an error below drops it too.
        let led = crate::led::StatusLight::start(inventory.board.status_led.as_ref());
        let changes = ChangePolicy::from_inventory(&inventory);
        let shipper = start_shipper(
            reader, sink, &agent_id, &upstream, &state_dir, &pool, changes,
        )?;
        let presence = PresenceKeeper::start(&inventory, &upstream, &state_dir);
        let consoles = {
            let waker = Mutex::new(pool.waker());
            let wake = Arc::new(move || {
                let waker = waker.lock().unwrap_or_else(|e| e.into_inner());
                let _ = waker.send(PoolEvent::Wake);
            });
            crate::console::Consoles::start(&inventory, registry, wake)
        };

        let started = Instant::now();
        let agent = AgentLoop {
            config: config.to_path_buf(),
            scheduler: Scheduler::new(&inventory, started, SystemTime::now()),
            summary: Summary {
                outbox: outbox(&upstream, &spool_dir),
                ..Summary::default()
            },
            watchdog: Watchdog {
                period: notifier.watchdog_period(),
                last_ping: Instant::now(),
            },
            inventory,
            state_dir,
            upstream,
            shipper,
            signals,
            pool,
            notifier,
            spooler,
            status,
            presence,
            led,
            metrics,
            consoles: Some(consoles),
            paused: false,
            stop_at: options.run_for.map(|d| started + d),
            drain: options.drain,
            on_record: options.on_record,
            _lock: lock,
        };
        agent.announce(&spool_dir, &sink_name);
        Ok(agent)
    }

    /// READY=1 for systemd, and the log line saying what runs.
    fn announce(&self, spool_dir: &Path, sink_name: &str) {
        let workers = self.inventory.agent.workers;
        let _ = self
            .notifier
            .ready(&collecting(&self.inventory, Some(workers)));
        log::info!(
            "agent {} running: {} devices, {workers} workers, spool {}, shipping to {sink_name}",
            self.inventory.agent.id,
            self.inventory.devices.len(),
            spool_dir.display(),
        );
        if self.inventory.devices.is_empty() {
            log_idle(&self.config);
        }
    }
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

/// Opens the spool (logging what recovery did), the sequence above what it holds, and the
/// spooler over its writer; the reader is for the shipper. What opening found lost is
/// reported first, so its gap record goes upstream before anything new.
fn open_spool(
    inventory: &Inventory,
    spool_dir: &Path,
    options: &SpoolOptions,
) -> Result<(Spooler, SpoolReader), AgentError> {
    let (writer, reader, recovery) = Spool::open(spool_dir, options.clone())?;
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
    let seq = Sequence::open_above(&inventory.agent.state_dir, stats.last_seq.max(stats.acked))?;
    let mut spooler = Spooler::new(
        writer,
        seq,
        &inventory.agent.id,
        options.full,
        options.max_record_bytes,
    );
    spooler.report_losses(Instant::now(), true);
    Ok((spooler, reader))
}

/// systemd's notification socket, or none (a broken one is logged, not fatal).
fn notifier_from_env() -> Notifier {
    Notifier::from_env().unwrap_or_else(|e| {
        log::warn!(
            "NOTIFY_SOCKET is set but unusable ({e}); running without systemd notifications"
        );
        Notifier::disabled()
    })
}

/// What a worker does with a device: a session in this process, or in a child it can kill.
/// A captured console's jobs borrow the port from its capture (`crate::console`).
fn work(isolator: Isolator, consoles: Arc<crate::console::Registry>) -> Arc<Work> {
    Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
        if device.capture.is_some() {
            let lender = consoles.lender(&device.name);
            crate::console::collect_each(lender.as_ref(), device, &device.commands, emit)
        } else if device.isolation == Isolation::Process || device.driver_exec.is_some() {
            isolator.collect(device, &device.commands, emit)
        } else {
            crate::session::collect_each(device, &device.commands, emit)
        }
    })
}

/// A thread that turns SIGTERM/SIGINT/SIGHUP into flags and wakes the loop.
fn install_signals(flags: &Arc<SignalFlags>, pool: &Pool<DeviceId>) -> Result<(), AgentError> {
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

/// The shipping thread over the spool's reader; every acknowledgement wakes the loop (a full
/// spool may have room again).
fn start_shipper(
    reader: SpoolReader,
    sink: Box<dyn Sink>,
    agent_id: &str,
    upstream: &Upstream,
    state_dir: &Path,
    pool: &Pool<DeviceId>,
    changes: ChangePolicy,
) -> Result<Shipper, AgentError> {
    let waker = pool.waker();
    Shipper::start(
        reader,
        sink,
        ShipperOptions {
            agent: agent_id.to_string(),
            limits: BatchLimits::from_upstream(upstream),
            state_dir: state_dir.to_path_buf(),
            backoff: Backoff::default(),
            seed: jitter_seed(agent_id),
            changes,
        },
        Box::new(move || {
            let _ = waker.send(PoolEvent::Wake);
        }),
    )
    .map_err(AgentError::Thread)
}

/// Where the run's records can be looked at: the file sink's current file, else the spool.
fn outbox(upstream: &Upstream, spool_dir: &Path) -> PathBuf {
    match upstream.sink {
        SinkKind::File => Path::new(&upstream.target).join(crate::sink::file::CURRENT),
        _ => spool_dir.to_path_buf(),
    }
}

/// Per-agent, so a fleet started together does not flush its batches in step.
fn jitter_seed(agent: &str) -> u64 {
    crate::hash::fnv1a(agent.as_bytes()) ^ u64::from(std::process::id())
}

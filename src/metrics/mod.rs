//! Metrics for Prometheus: what the agent is doing, as the text exposition format 0.0.4, at
//! `/metrics` on a loopback port and/or in a file for node_exporter's textfile collector.
//!
//! A network team with fifty racks watches them from Prometheus, not by logging in to each
//! board for `rackhand status`. The numbers are kept by the agent loop in a small registry of
//! fixed size per configured device (`registry.rs`), rendered by hand (`render.rs`: the
//! format is simple, and the OpenMetrics that crates write is partly refused by node_exporter's
//! textfile collector), served by a bounded listener (`server.rs`) and written atomically to
//! the textfile (`textfile.rs`). [`Exporter`] is what the agent holds: the registry and
//! whichever of the two outputs `[metrics]` asks for. docs/metrics.md lists every metric.
//!
//! Nothing here can stop the agent: a port that cannot be bound or a textfile that cannot be
//! written is logged, and collection goes on.

mod registry;
mod render;
mod server;
#[doc(hidden)]
pub mod testing;
mod textfile;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::device_history::DeviceHistory;
use crate::inventory::{Inventory, MetricsConfig, TransportKind};
use crate::outcome::RunSummary;
use crate::record::Record;
use crate::ship::ShipReport;
use crate::spool::Stats;
use crate::status_file::{Admission, AgentStatus, parse_rfc3339};

use registry::Metrics;
use server::MetricsServer;
use textfile::Textfile;

/// The registry and the outputs `[metrics]` asked for, as the agent loop holds them.
pub(crate) struct Exporter {
    metrics: Arc<Metrics>,
    config: MetricsConfig,
    server: Option<MetricsServer>,
    textfile: Option<Textfile>,
}

impl Exporter {
    /// Starts what `[metrics]` asks for; `spool_max_bytes` is the spool's bound in force.
    /// Each device's last good collection is taken from the previous run's `status.json`.
    pub(crate) fn start(inventory: &Inventory, spool_max_bytes: u64) -> Exporter {
        let metrics = Arc::new(Metrics::new(inventory));
        metrics.spool_limit(spool_max_bytes);
        metrics.loop_turned();
        if let Ok(Some(previous)) = AgentStatus::load(&inventory.agent.state_dir) {
            metrics.remember_last_success(previous.devices.iter().filter_map(|(name, d)| {
                let at = parse_rfc3339(d.last_good_at.as_deref()?)?;
                Some((name.as_str(), at))
            }));
        }
        let config = inventory.metrics.clone();
        let server = config.listen.and_then(|addr| {
            match MetricsServer::start(addr, Arc::clone(&metrics)) {
                Ok(server) => {
                    log::info!("metrics: serving http://{}/metrics", server.local_addr());
                    Some(server)
                }
                Err(e) => {
                    log::error!(
                        "cannot serve metrics on {addr}: {e}; the agent runs without /metrics (is another program using the port? change [metrics] listen)"
                    );
                    None
                }
            }
        });
        let textfile = config.textfile.clone().map(Textfile::new);
        Exporter {
            metrics,
            config,
            server,
            textfile,
        }
    }

    /// A record was spooled.
    pub(crate) fn record(&self, record: &Record) {
        self.metrics.record(record);
    }

    /// A device's collection ended.
    pub(crate) fn finished(
        &self,
        device: &str,
        transport: TransportKind,
        run: &RunSummary,
        elapsed: Duration,
    ) {
        self.metrics.finished(device, transport, run, elapsed);
    }

    /// The loop went round.
    pub(crate) fn loop_turned(&self) {
        self.metrics.loop_turned();
    }

    /// The status tick: the spool, the shipper and the pool as of now; the textfile when due.
    pub(crate) fn observe<'a>(
        &mut self,
        stats: &Stats,
        ship: &ShipReport,
        admission: Admission,
        workers_busy: usize,
        histories: impl Iterator<Item = (&'a str, &'a DeviceHistory)>,
        now: Instant,
    ) {
        self.metrics.observe(stats, ship, admission, workers_busy);
        self.metrics.histories(histories);
        if let Some(file) = self.textfile.as_mut().filter(|f| f.due(now)) {
            let text = render::render(&self.metrics.snapshot(), SystemTime::now());
            file.update(&text, now);
        }
    }

    /// A reload: devices added and forgotten by name; `[metrics]` itself changes at the
    /// next start (a new port under a running Prometheus config would only confuse).
    pub(crate) fn reload(&mut self, inventory: &Inventory) {
        self.metrics.configure(inventory);
        if inventory.metrics != self.config {
            log::warn!("[metrics] changed; this takes effect at the next restart");
        }
    }

    /// The agent stops: the textfile gets the last numbers, the listener closes.
    pub(crate) fn stop(&mut self) {
        if let Some(file) = self.textfile.as_mut() {
            let text = render::render(&self.metrics.snapshot(), SystemTime::now());
            file.update(&text, Instant::now());
        }
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

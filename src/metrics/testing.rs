//! A registry filled as a busy agent would fill it, and the listener over it, for the tests
//! in tests/ and the benchmark in benches/ (which see the library from outside). Not part of
//! the agent: nothing in `src/` calls it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::inventory::Inventory;
use crate::outcome::RunSummary;
use crate::record::{GapCause, Status};
use crate::ship::{ShipReport, ShipState};
use crate::spool::Stats;
use crate::status_file::Admission;

use super::registry::Metrics;
use super::render::render;
use super::server::MetricsServer;

/// The metrics of `inventory`'s devices after `rounds` collections each: most ok, every
/// seventh device failing to connect, every eleventh timing out on a command; sessions of
/// every length; a spool with records waiting and a few losses.
pub struct Filled {
    metrics: Arc<Metrics>,
    stats: Stats,
    ship: ShipReport,
}

impl Filled {
    pub fn new(inventory: &Inventory, rounds: u64) -> Filled {
        let metrics = Arc::new(Metrics::new(inventory));
        metrics.spool_limit(512 << 20);
        metrics.loop_turned();
        for round in 0..rounds {
            for (i, device) in inventory.devices.iter().enumerate() {
                let run = if i % 7 == 3 {
                    RunSummary::session_failed(2, Status::ConnectFailed, "connection refused")
                } else if i % 11 == 5 && round % 2 == 1 {
                    RunSummary::session_failed(2, Status::Timeout, "no prompt")
                } else {
                    RunSummary::ok(2)
                };
                let seconds = 0.05 * (1 + (i as u64 * 7 + round * 13) % 6000) as f64;
                metrics.finished(
                    &device.name,
                    device.transport,
                    &run,
                    Duration::from_secs_f64(seconds),
                );
            }
        }
        let mut lost = BTreeMap::new();
        lost.insert(GapCause::SpoolFull, 12);
        lost.insert(GapCause::Corrupt, 1);
        let stats = Stats {
            records: 4_000,
            bytes: 48 << 20,
            oldest_unshipped: Some(1_000),
            lost,
            ..Stats::default()
        };
        let started_at = crate::record::rfc3339_millis(SystemTime::now() - Duration::from_secs(95));
        let ship = ShipReport {
            state: ShipState::Retrying,
            last_error: Some("connection refused".into()),
            last_error_at: Some(SystemTime::now()),
            consecutive_failures: 3,
            failed_attempts: 17,
            shipped_records: 250_000,
            shipped_batches: 500,
            unchanged_records: 1_200,
            bytes_saved: 48_000_000,
            oldest_unshipped: Some((1_000, Some(started_at))),
            ..ShipReport::idle("http https://collector.example.net/ingest".into())
        };
        let admission = Admission {
            paused: false,
            paused_collections: 4,
        };
        metrics.observe(&stats, &ship, admission, 3);
        Filled {
            metrics,
            stats,
            ship,
        }
    }

    /// The text `/metrics` serves.
    pub fn render(&self) -> String {
        render(&self.metrics.snapshot(), SystemTime::now())
    }

    /// The listener over these metrics, on `addr` (port 0: any).
    pub fn serve(&self, addr: SocketAddr) -> io::Result<Server> {
        MetricsServer::start(addr, Arc::clone(&self.metrics)).map(Server)
    }

    /// The loop last went round `ago`.
    pub fn loop_turned(&self, ago: Duration) {
        let at = std::time::Instant::now()
            .checked_sub(ago)
            .expect("the clock goes back that far");
        self.metrics.loop_turned_at(at);
    }

    /// The spool takes records (`false`: full under `block`, collections held back).
    pub fn spool_accepts(&self, accepts: bool) {
        let admission = Admission {
            paused: !accepts,
            paused_collections: 4,
        };
        self.metrics.observe(&self.stats, &self.ship, admission, 3);
    }
}

/// A running listener; stopped when dropped.
pub struct Server(MetricsServer);

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
}

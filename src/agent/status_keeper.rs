//! What the running agent knows for `status.json`, and when it writes it.
//!
//! The file's content and how it is written are `crate::status_file`'s; this is the agent's side:
//! a collection counts as done (its device's last good collection moves) only once every one
//! of its records is durable in the spool, so a crash never leaves a status that claims more
//! than the spool holds. Saves come every [`STATUS_EVERY`], and a save that keeps failing
//! (a full disk) is logged once, not every two seconds.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::inventory::{Inventory, Upstream};
use crate::outcome::RunSummary;
use crate::record::{Record, Status, rfc3339_millis};
use crate::ship::ShipReport;
use crate::spool::{SpoolOptions, Stats};
use crate::status_file::{Admission, AgentStatus, SpoolStatus, UpstreamStatus};

use super::STATUS_EVERY;

/// A device's first failed record in the collection under way.
struct FirstFailure {
    status: Status,
    error: Option<String>,
}

/// A finished collection whose records are not all committed yet.
struct AwaitingCollection {
    /// Its last record; once that is durable, so are the others.
    last_seq: u64,
    device: String,
    /// When it finished (RFC 3339).
    at: String,
    /// `ok`, or the record status of its first failure.
    status: &'static str,
    error: Option<String>,
}

/// What the agent tracks for `status.json`, kept across restarts for `last_good_at`.
pub(super) struct StatusKeeper {
    state_dir: PathBuf,
    status: AgentStatus,
    last_saved: Option<Instant>,
    /// The last save failed (logged once until one works again).
    save_failing: bool,
    /// Collections not started while new ones were paused, since the agent started.
    pub(super) paused_collections: u64,
    failing: BTreeMap<String, FirstFailure>,
    /// In the order they finished, which is the order of their last records.
    awaiting: VecDeque<AwaitingCollection>,
}

impl StatusKeeper {
    pub(super) fn new(
        inventory: &Inventory,
        upstream: &Upstream,
        spool: &SpoolOptions,
        spool_dir: &Path,
    ) -> StatusKeeper {
        let state_dir = inventory.agent.state_dir.clone();
        // A status for this process (pid, version, start), keeping the devices' history.
        let mut status = AgentStatus::load_or_default(&state_dir, &inventory.agent.id);
        status.spool = SpoolStatus::configured(spool_dir, spool);
        status.upstream = UpstreamStatus::configured(upstream);
        let mut keeper = StatusKeeper {
            state_dir,
            status,
            last_saved: None,
            save_failing: false,
            paused_collections: 0,
            failing: BTreeMap::new(),
            awaiting: VecDeque::new(),
        };
        keeper.retain_devices(inventory);
        keeper
    }

    /// Devices no longer configured are forgotten.
    pub(super) fn retain_devices(&mut self, inventory: &Inventory) {
        self.status
            .retain_devices(inventory.devices.iter().map(|d| d.name.as_str()));
    }

    /// Remembers a device's first failed record of the collection under way.
    pub(super) fn record(&mut self, record: &Record) {
        if record.status != Status::Ok && record.status != Status::Gap {
            self.failing
                .entry(record.device.clone())
                .or_insert_with(|| FirstFailure {
                    status: record.status,
                    error: record.error.clone(),
                });
        }
    }

    /// A collection ended: `ok` when every record was, else its first failure. It shows in
    /// the status once every record up to `last_seq` is durable ([`Self::durable`]).
    pub(super) fn finished(&mut self, device: &str, run: &RunSummary, last_seq: u64) {
        let at = rfc3339_millis(SystemTime::now());
        let first_failure = self.failing.remove(device);
        let (status, error) = match (run.all_ok(), first_failure) {
            (true, _) => ("ok", None),
            (false, Some(first)) => (first.status.as_str(), first.error),
            (false, None) => (
                run.session_failure.map_or("failed", Status::as_str),
                run.error.clone(),
            ),
        };
        self.awaiting.push_back(AwaitingCollection {
            last_seq,
            device: device.to_string(),
            at,
            status,
            error,
        });
    }

    /// Records up to `seq` are committed: the collections they complete are done.
    pub(super) fn durable(&mut self, seq: u64) {
        while self.awaiting.front().is_some_and(|a| a.last_seq <= seq) {
            let done = self.awaiting.pop_front().expect("checked");
            self.status
                .devices
                .entry(done.device)
                .or_default()
                .collected(&done.at, done.status, done.error.as_deref());
        }
    }

    /// When the next save is due.
    pub(super) fn due(&self, now: Instant) -> Instant {
        self.last_saved.map_or(now, |t| t + STATUS_EVERY)
    }

    /// Whether collections are held back now, and how many have been (for the metrics too).
    pub(super) fn admission(&self, paused: bool) -> Admission {
        Admission {
            paused,
            paused_collections: self.paused_collections,
        }
    }

    /// Writes the status as of now; a failure is logged once until a save works again.
    pub(super) fn save(&mut self, stats: &Stats, paused: bool, ship: &ShipReport, now: Instant) {
        let admission = self.admission(paused);
        self.status.observe(stats, ship, admission);
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

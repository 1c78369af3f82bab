//! What the running agent knows for `status.json`, and when it writes it.
//!
//! The file's content and how it is written are `crate::status_file`'s; this is the agent's side:
//! a collection counts as done (its device's last good collection moves) only once every one
//! of its records is durable in the spool, so a crash never leaves a status that claims more
//! than the spool holds. Saves come every [`STATUS_EVERY`], and a save that keeps failing
//! (a full disk) is logged once, not every two seconds.
//!
//! Where: every [`STATUS_EVERY`] to the live copy, in the runtime folder systemd gives the unit
//! (`$RUNTIME_DIRECTORY`, tmpfs: no wear on the SD card); `state_dir/status.json`, the copy
//! that survives a reboot (each device's last good collection and history, the last
//! acknowledgement), only when its content changed, at most every [`KEEP_EVERY`], and at a clean
//! stop ([`KeptCopy`]). An idle agent then writes nothing to the card. Without a runtime folder
//! (no systemd: tests, `rackhand run` by hand) the live copy is the one in `state_dir`, written
//! every [`STATUS_EVERY`] as before.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::device_history::DeviceHistory;
use crate::inventory::{Inventory, Upstream};
use crate::outcome::RunSummary;
use crate::record::{Record, Status, rfc3339_millis};
use crate::ship::ShipReport;
use crate::spool::{SpoolOptions, Stats};
use crate::status_file::{self, Admission, AgentStatus, SpoolStatus, UpstreamStatus};

use super::STATUS_EVERY;

/// At most how often `state_dir/status.json` is rewritten while a runtime folder holds the live
/// status (and only when something in it changed).
pub(super) const KEEP_EVERY: Duration = Duration::from_secs(60);

/// One folder the status is written to; a failure is logged once until a write works again.
struct StatusCopy {
    dir: PathBuf,
    /// The last write failed.
    failing: bool,
}

impl StatusCopy {
    fn new(dir: PathBuf) -> StatusCopy {
        StatusCopy {
            dir,
            failing: false,
        }
    }

    /// Whether it was written.
    fn write(&mut self, status: &AgentStatus, durably: bool) -> bool {
        let written = if durably {
            status.save_durably(&self.dir)
        } else {
            status.save(&self.dir)
        };
        match written {
            Ok(()) if self.failing => {
                self.failing = false;
                log::info!(
                    "{} is written again",
                    AgentStatus::path(&self.dir).display()
                );
            }
            Ok(()) => {}
            // Once per condition: a full disk would otherwise log every two seconds.
            Err(e) if !self.failing => {
                self.failing = true;
                log::warn!("{e}");
            }
            Err(e) => log::debug!("{e}"),
        }
        !self.failing
    }
}

/// `state_dir/status.json` while the live status is elsewhere: rewritten when its content
/// (all but `updated_at`) changed since it was last written, at most every [`KEEP_EVERY`] (a
/// failed write waits as long), atomically and synced; always at a clean stop.
struct KeptCopy {
    copy: StatusCopy,
    /// The [`fingerprint`] of what it holds.
    content: Option<u64>,
    last_try: Option<Instant>,
    /// Writes tried so far (for the tests).
    writes: u64,
}

impl KeptCopy {
    fn new(state_dir: PathBuf) -> KeptCopy {
        KeptCopy {
            copy: StatusCopy::new(state_dir),
            content: None,
            last_try: None,
            writes: 0,
        }
    }

    /// Writes `status` if it changed and the last write is [`KEEP_EVERY`] ago, or if `stop`.
    fn keep(&mut self, status: &mut AgentStatus, now: Instant, stop: bool) {
        let due = stop || self.last_try.is_none_or(|t| now >= t + KEEP_EVERY);
        if !due {
            return;
        }
        let content = fingerprint(status);
        if self.content == Some(content) && !stop {
            return;
        }
        self.last_try = Some(now);
        self.writes += 1;
        if self.copy.write(status, true) {
            self.content = Some(content);
        }
    }
}

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

/// The status without `updated_at`, in 8 bytes: what [`KeptCopy`] compares, rather than a copy
/// of the status (about 200 KB at 500 devices). Its JSON streamed through a hasher (no
/// allocation); the same build in the same process gives the same value.
fn fingerprint(status: &mut AgentStatus) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    struct Hashing(DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            Hasher::write(&mut self.0, bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let updated_at = std::mem::take(&mut status.updated_at);
    let mut hashing = Hashing(DefaultHasher::new());
    // Serialising these types cannot fail (string keys, no floats that are not numbers).
    let _ = serde_json::to_writer(&mut hashing, &*status);
    status.updated_at = updated_at;
    hashing.0.finish()
}

/// What the agent tracks for `status.json`, kept across restarts for `last_good_at`.
pub(super) struct StatusKeeper {
    status: AgentStatus,
    last_saved: Option<Instant>,
    /// Every [`STATUS_EVERY`]: the runtime folder's copy, or `state_dir`'s without one.
    live: StatusCopy,
    /// `state_dir`'s copy when the live one is in a runtime folder.
    kept: Option<KeptCopy>,
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
        status.upstream = UpstreamStatus::restarted(upstream, &status.upstream);
        status.state_dir = state_dir.display().to_string();
        let runtime_dir = runtime_dir(&state_dir);
        status.runtime_file = runtime_dir
            .as_ref()
            .map(|dir| AgentStatus::path(dir).display().to_string());
        let mut keeper = StatusKeeper {
            status,
            last_saved: None,
            live: StatusCopy::new(runtime_dir.clone().unwrap_or_else(|| state_dir.clone())),
            kept: runtime_dir.map(|_| KeptCopy::new(state_dir)),
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

    /// A captured console's text: its last lines for `rackhand status --device`.
    pub(super) fn console(&mut self, event: &crate::console::ConsoleEvent) {
        let tail = &mut self
            .status
            .devices
            .entry(event.device.clone())
            .or_default()
            .console_tail;
        match &event.what {
            crate::console::Captured::Text(chunk) => tail.push_text(&chunk.bytes),
            crate::console::Captured::Gap(gap) => tail.push_line(&format!(
                "[rackhand: the port was away {} to {}; what it printed then is lost]",
                rfc3339_millis(gap.from),
                rfc3339_millis(gap.to)
            )),
        }
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

    /// Writes the status as of now: the live copy, and `state_dir`'s when due
    /// ([`KeptCopy`]); `stop`: the last save of a clean stop, `state_dir`'s copy included.
    pub(super) fn save(
        &mut self,
        stats: &Stats,
        paused: bool,
        ship: &ShipReport,
        now: Instant,
        stop: bool,
    ) {
        let admission = self.admission(paused);
        self.status.observe(stats, ship, admission);
        self.live.write(&self.status, false);
        if let Some(kept) = self.kept.as_mut() {
            kept.keep(&mut self.status, now, stop);
        }
        self.last_saved = Some(now);
    }

    /// Each device's recent collections (for the LED state and the metrics).
    pub(super) fn histories(&self) -> impl Iterator<Item = (&str, &DeviceHistory)> {
        self.status
            .devices
            .iter()
            .map(|(name, device)| (name.as_str(), device.history()))
    }
}

/// The folder for the live status: `$RUNTIME_DIRECTORY` when set (created if need be) and not
/// `state_dir` itself; `None` (the live status stays in `state_dir`) without one, or when it
/// cannot be made (warned).
fn runtime_dir(state_dir: &Path) -> Option<PathBuf> {
    let dir = status_file::runtime_dir_from_env()?;
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(&dir, state_dir) {
        return None;
    }
    match std::fs::create_dir_all(&dir) {
        Ok(()) => {
            log::info!(
                "live status in {} (runtime folder); {} is rewritten only when it changes, at most every {}s",
                AgentStatus::path(&dir).display(),
                AgentStatus::path(state_dir).display(),
                KEEP_EVERY.as_secs()
            );
            Some(dir)
        }
        Err(e) => {
            log::warn!(
                "cannot use the runtime folder {} (RUNTIME_DIRECTORY) for the live status: {e}; writing it to {} every {}s instead",
                dir.display(),
                AgentStatus::path(state_dir).display(),
                STATUS_EVERY.as_secs()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    fn mtime(dir: &Path) -> SystemTime {
        std::fs::metadata(AgentStatus::path(dir))
            .unwrap()
            .modified()
            .unwrap()
    }

    #[test]
    fn the_state_dir_copy_is_written_when_it_changes_at_most_once_a_minute() {
        let dir = temp_dir("kept-copy");
        let mut kept = KeptCopy::new(dir.path().to_path_buf());
        let mut status = AgentStatus::new("rack-a12");
        let t0 = Instant::now();
        kept.keep(&mut status, t0, false);
        assert_eq!(kept.writes, 1, "the first save writes it");
        let first = mtime(dir.path());

        // Idle: only the time moves; nothing is written, however long.
        for secs in (2..600).step_by(2) {
            status.updated_at = format!("2026-11-25T10:{:02}:{:02}.000Z", secs / 60, secs % 60);
            kept.keep(&mut status, t0 + Duration::from_secs(secs), false);
        }
        assert_eq!(kept.writes, 1);
        assert_eq!(mtime(dir.path()), first);

        // A collection lands: written at the next minute since the last write, not before.
        let t1 = t0 + Duration::from_secs(600);
        status.devices.entry("core1".into()).or_default().collected(
            "2026-11-25T10:10:00.000Z",
            "ok",
            None,
        );
        kept.keep(&mut status, t1, false);
        assert_eq!(kept.writes, 2);
        status.devices.get_mut("core1").unwrap().collected(
            "2026-11-25T10:10:02.000Z",
            "timeout",
            None,
        );
        kept.keep(&mut status, t1 + Duration::from_secs(30), false);
        assert_eq!(kept.writes, 2, "changed, but written 30s ago");
        kept.keep(&mut status, t1 + KEEP_EVERY, false);
        assert_eq!(kept.writes, 3);
        let saved = AgentStatus::load(dir.path()).unwrap().unwrap();
        assert_eq!(saved.devices["core1"].history().to_string(), ".t");

        // A clean stop writes, changed or not, whenever.
        kept.keep(&mut status, t1 + KEEP_EVERY, true);
        assert_eq!(kept.writes, 4);
        assert_eq!(AgentStatus::load(dir.path()).unwrap().unwrap(), status);
    }

    #[test]
    fn a_failed_write_is_tried_again_a_minute_later() {
        let dir = temp_dir("kept-copy-fail");
        let gone = dir.path().join("not-yet");
        let mut kept = KeptCopy::new(gone.clone());
        let mut status = AgentStatus::new("rack-a12");
        let t0 = Instant::now();
        kept.keep(&mut status, t0, false);
        assert!(kept.copy.failing);
        std::fs::create_dir(&gone).unwrap();
        kept.keep(&mut status, t0 + Duration::from_secs(2), false);
        assert_eq!(AgentStatus::load(&gone).unwrap(), None, "not every 2 s");
        kept.keep(&mut status, t0 + KEEP_EVERY, false);
        assert!(!kept.copy.failing);
        assert!(AgentStatus::load(&gone).unwrap().is_some());
    }
}

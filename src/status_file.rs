//! The agent's status file: `status.json` in `agent.state_dir`.
//!
//! `rackhand status` runs as a separate process, often as another user, while the agent works;
//! it cannot ask the agent anything. So the agent writes what an engineer needs to know (spool
//! depth, the oldest unshipped record, the upstream's state and last error, every device's last
//! good collection) to one small JSON file every few seconds, and `status` reads it. The file
//! is also the agent's memory across restarts of each device's last good collection
//! (`AgentStatus::load_or_default`).
//!
//! The file is replaced atomically (temp file + rename), so a reader sees the previous or the
//! next status, never half of one. Fields are `#[serde(default)]`: a file written by an older
//! or newer rackhand still loads.
//!
//! Two copies, so an idle agent does not wear the SD card (issue 12): rewriting the file every
//! 2 s in `state_dir` cost about 250 MB of block writes a day. Under systemd the unit's
//! `RuntimeDirectory=rackhand` (tmpfs, `$RUNTIME_DIRECTORY`) takes the live copy every 2 s
//! ([`runtime_dir_from_env`]); `state_dir/status.json` is the copy that survives a reboot,
//! rewritten only when something in it changed, at most once a minute, and at a clean stop (the
//! agent's side: `agent/status_keeper.rs`). Without a runtime folder both are the one file in
//! `state_dir`, as before. [`AgentStatus::find`] is how `rackhand status`, another process
//! without the agent's environment, picks the copy to show.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::console::tail::ConsoleTail;
use crate::device_history::{DeviceHistory, Mark};
use crate::inventory::Upstream;
use crate::record::rfc3339_millis;
use crate::ship::ShipReport;
use crate::spool::{SpoolOptions, Stats};

/// The status file's name inside `agent.state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// The agent saves about every 2 s; a status older than this means the agent is gone or stuck.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(30);

/// The packaged unit's `RuntimeDirectory=rackhand`: where `rackhand status`, which does not
/// have the agent's `$RUNTIME_DIRECTORY`, looks for the live status.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/rackhand";

/// The temp file `save` writes before renaming it over `status.json`. One fixed name: there is
/// one writer per state folder (the agent), and a crash leaves at most this one file behind,
/// overwritten by the next save.
const TEMP_FILE: &str = ".status.json.tmp";

/// `status.json` is padded to whole blocks of this size (see [`AgentStatus::save`]).
const PAD: usize = 4096;

/// Writes `bytes` over `path` in place, padding to its current size; refuses when it does not
/// fit (that would need a new block).
fn overwrite_padded(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = fs::OpenOptions::new().write(true).open(path)?;
    let size = file.metadata()?.len() as usize;
    if bytes.len() > size {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let mut padded = bytes.to_vec();
    padded.resize(size, b' ');
    file.write_all_at(&padded, 0)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot read the agent status {path}: {source}; check that this user may read agent.state_dir (run as the agent's user or with sudo)"
    )]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "the agent status {path} is not valid JSON ({source}); a running agent rewrites it within seconds, a stopped one starts a new one: delete the file if it stays broken"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "cannot write the agent status {path}: {source}; check that its folder (agent.state_dir, or the runtime folder $RUNTIME_DIRECTORY) exists, is writable by the agent's user and that the disk is not full"
    )]
    Write { path: PathBuf, source: io::Error },
}

/// Everything `rackhand status` shows, as the agent last saved it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    pub(crate) agent: String,
    pub pid: u32,
    pub(crate) version: String,
    /// RFC 3339 with milliseconds ([`rfc3339_millis`]).
    pub(crate) started_at: String,
    /// Wall clock when saved.
    pub updated_at: String,
    /// `None`: cannot tell.
    pub clock_synced: Option<bool>,
    pub spool: SpoolStatus,
    pub upstream: UpstreamStatus,
    pub devices: BTreeMap<String, DeviceStatus>,
    /// The agent's `state_dir`: a status found in a runtime folder counts only for the config
    /// whose `state_dir` this is ([`AgentStatus::find`]).
    pub state_dir: String,
    /// Where the running agent writes its live status every 2 s, when that is not this
    /// `state_dir`'s file (`$RUNTIME_DIRECTORY/status.json`); `None` when it is.
    pub runtime_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpoolStatus {
    pub dir: String,
    /// Unshipped records.
    pub records: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub(crate) segments: u64,
    /// `block` | `drop_oldest`.
    pub full_policy: String,
    pub oldest_unshipped_seq: Option<u64>,
    /// That record's `started_at`.
    pub oldest_unshipped_at: Option<String>,
    pub(crate) acked_seq: u64,
    pub(crate) last_seq: u64,
    /// Lost to `drop_oldest` since the agent started.
    pub(crate) dropped_records: u64,
    pub(crate) dropped_bytes: u64,
    /// `block` policy: collections are paused now because the spool is full.
    pub(crate) paused: bool,
    /// Collections not started because of it, since the agent started.
    pub(crate) paused_collections: u64,
    /// Records collected that wait in memory because the disk refuses writes.
    pub(crate) waiting_in_memory: u64,
    /// The disk refuses writes: the error (naming the file and the free space), its cause
    /// (`disk_full`, `io_error`) and since when. `None` while the spool writes fine.
    pub(crate) storage_error: Option<String>,
    pub(crate) storage_error_cause: Option<String>,
    pub(crate) storage_error_since: Option<String>,
    /// The checkpoint could not be written at the last acknowledgement.
    pub(crate) checkpoint_error: bool,
    /// Records counted lost since the agent started, per cause (`corrupt`, `disk_full`, …).
    pub(crate) lost: BTreeMap<String, u64>,
    /// Records counted lost and not yet reported upstream in a gap record.
    pub(crate) unreported_lost: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamStatus {
    /// `file` | `http` | `mqtt`.
    pub sink: String,
    /// URL, broker or path; never credentials.
    pub target: String,
    /// `idle` | `shipping` | `retrying` | `stopped`.
    pub state: String,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub(crate) last_ack_at: Option<String>,
    pub consecutive_failures: u32,
    /// Since the agent started.
    pub(crate) shipped_records: u64,
    pub(crate) shipped_batches: u64,
    pub(crate) dead_lettered_batches: u64,
    /// Records upstream refused for good (reported as `rejected`).
    pub(crate) rejected_records: u64,
    /// Acknowledged `on_change` records that went up unchanged (`"output": null`), and the
    /// bytes that left out.
    pub(crate) unchanged_records: u64,
    pub(crate) bytes_saved: u64,
    pub(crate) dead_letter_file: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceStatus {
    /// The last collection whose records were all `ok` (RFC 3339).
    pub(crate) last_good_at: Option<String>,
    pub(crate) last_attempt_at: Option<String>,
    /// The record status string, e.g. `ok`, `timeout`.
    pub(crate) last_status: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) consecutive_failures: u32,
    /// The last 32 collections, oldest first, one character each (`.` ok, `t` timeout, …;
    /// see `crate::device_history`).
    pub(crate) history: DeviceHistory,
    /// A captured console's last lines, oldest first (`capture = true`; `crate::console`).
    #[serde(skip_serializing_if = "ConsoleTail::is_empty")]
    pub(crate) console_tail: ConsoleTail,
}

impl DeviceStatus {
    /// Its recent collections (for the LED, the metrics and `rackhand status`).
    pub(crate) fn history(&self) -> &DeviceHistory {
        &self.history
    }

    /// Notes one finished collection (all the records of one pass over the device): `status`
    /// and `error` are those of its first failed record, or `ok` and `None`.
    pub fn collected(&mut self, at: &str, status: &str, error: Option<&str>) {
        self.last_attempt_at = Some(at.to_string());
        self.last_status = Some(status.to_string());
        self.last_error = error.map(str::to_string);
        self.history.push(Mark::of_status(status));
        if status == "ok" {
            self.last_good_at = Some(at.to_string());
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        }
    }
}

impl SpoolStatus {
    /// The spool as configured, before anything is known of its content.
    pub(crate) fn configured(dir: &Path, options: &SpoolOptions) -> SpoolStatus {
        SpoolStatus {
            dir: dir.display().to_string(),
            max_bytes: options.max_bytes,
            full_policy: options.full.as_str().into(),
            ..SpoolStatus::default()
        }
    }

    /// Takes the spool's counters now. `oldest_unshipped_at` comes from the shipper, which
    /// read that record; it is kept only while it is still the spool's oldest.
    fn observe(&mut self, stats: &Stats, ship: &ShipReport) {
        self.records = stats.records;
        self.bytes = stats.bytes;
        self.segments = stats.segments as u64;
        self.oldest_unshipped_seq = stats.oldest_unshipped;
        self.oldest_unshipped_at = ship
            .oldest_unshipped
            .as_ref()
            .filter(|o| Some(o.0) == stats.oldest_unshipped)
            .and_then(|o| o.1.clone());
        self.acked_seq = stats.acked;
        self.last_seq = stats.last_seq;
        self.dropped_records = stats.dropped_records;
        self.dropped_bytes = stats.dropped_bytes;
        self.waiting_in_memory = stats.waiting_in_memory;
        let trouble = stats.storage_trouble.as_ref();
        self.storage_error = trouble.map(|t| t.error.clone());
        self.storage_error_cause = trouble.map(|t| t.cause.as_str().to_string());
        self.storage_error_since = trouble.map(|t| rfc3339_millis(t.since));
        self.checkpoint_error = stats.checkpoint_trouble;
        self.lost = stats
            .lost
            .iter()
            .map(|(cause, n)| (cause.as_str().to_string(), *n))
            .collect();
        self.unreported_lost = stats.unreported_lost;
    }
}

impl UpstreamStatus {
    /// The upstream in force for a starting agent, keeping from `previous` (the last run's)
    /// what outlives a restart: when upstream last acknowledged a batch.
    pub(crate) fn restarted(upstream: &Upstream, previous: &UpstreamStatus) -> UpstreamStatus {
        UpstreamStatus {
            last_ack_at: previous.last_ack_at.clone(),
            ..UpstreamStatus::configured(upstream)
        }
    }

    /// The upstream in force, idle until the shipper reports.
    pub(crate) fn configured(upstream: &Upstream) -> UpstreamStatus {
        UpstreamStatus {
            sink: upstream.sink.as_str().into(),
            target: crate::config::url::redact(&upstream.target).into_owned(),
            state: "idle".into(),
            ..UpstreamStatus::default()
        }
    }

    /// Takes the shipper's report now.
    fn observe(&mut self, ship: &ShipReport) {
        self.state = ship.state.as_str().to_string();
        self.last_error = ship.last_error.clone();
        self.last_error_at = ship.last_error_at.map(rfc3339_millis);
        // Until this run's first acknowledgement, the last one is the previous run's.
        if let Some(at) = ship.last_ack_at {
            self.last_ack_at = Some(rfc3339_millis(at));
        }
        self.consecutive_failures = ship.consecutive_failures;
        self.shipped_records = ship.shipped_records;
        self.shipped_batches = ship.shipped_batches;
        self.dead_lettered_batches = ship.dead_lettered_batches;
        self.rejected_records = ship.rejected_records;
        self.unchanged_records = ship.unchanged_records;
        self.bytes_saved = ship.bytes_saved;
        self.dead_letter_file = ship
            .dead_letter_file
            .as_ref()
            .map(|p| p.display().to_string());
    }
}

/// Whether the agent holds new collections back (the `block` policy on a full spool, or a
/// disk that refuses writes), and how many it has not started because of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(crate) paused: bool,
    /// Since the agent started.
    pub(crate) paused_collections: u64,
}

impl AgentStatus {
    /// Brings the status up to now: the wall clock and its sync, the spool's counters, the
    /// shipper's report and whether collections are paused.
    pub(crate) fn observe(&mut self, stats: &Stats, ship: &ShipReport, admission: Admission) {
        self.updated_at = rfc3339_millis(SystemTime::now());
        self.clock_synced = crate::clock::synchronised();
        self.spool.observe(stats, ship);
        self.spool.paused = admission.paused;
        self.spool.paused_collections = admission.paused_collections;
        self.upstream.observe(ship);
    }
}

impl AgentStatus {
    /// A status for this process, started now, with nothing known yet.
    pub fn new(agent: &str) -> AgentStatus {
        let now = rfc3339_millis(SystemTime::now());
        AgentStatus {
            agent: agent.to_string(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now.clone(),
            updated_at: now,
            ..AgentStatus::default()
        }
    }

    /// `state_dir/status.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATUS_FILE)
    }

    /// `dir/status.json`; Ok(None) when there is no status file yet.
    pub fn load(dir: &Path) -> Result<Option<AgentStatus>, StatusError> {
        Self::read(Self::path(dir))
    }

    /// The status for the agent of `state_dir`, as `rackhand status` (another process, often
    /// another user, without the agent's `$RUNTIME_DIRECTORY`) finds it. It looks at:
    ///
    /// 1. `$RUNTIME_DIRECTORY/status.json`, when this process has it set;
    /// 2. `/run/rackhand/status.json` ([`SYSTEM_RUNTIME_DIR`], the packaged unit's);
    /// 3. the `runtime_file` that `state_dir/status.json` names;
    /// 4. `state_dir/status.json`.
    ///
    /// The first three count only when their `state_dir` is this one (another agent's status
    /// is not this one's). Of the copies found, two of the same run (pid and start) give the
    /// runtime one, which is the live one; otherwise a live rackhand's copy beats a gone one's,
    /// then the one saved last wins. Ok(None) when there is none; an error reading
    /// `state_dir/status.json` only when no runtime copy was found either.
    pub fn find(state_dir: &Path) -> Result<Option<Found>, StatusError> {
        let state_file = Self::path(state_dir);
        let persisted = Self::load(state_dir);
        let mut paths: Vec<PathBuf> = runtime_dir_from_env()
            .into_iter()
            .chain([PathBuf::from(SYSTEM_RUNTIME_DIR)])
            .map(|dir| dir.join(STATUS_FILE))
            .collect();
        if let Ok(Some(status)) = &persisted {
            paths.extend(status.runtime_file.as_ref().map(PathBuf::from));
        }
        let mut found: Vec<Found> = Vec::new();
        for path in paths {
            if path == state_file || found.iter().any(|f| f.path == path) {
                continue;
            }
            if let Ok(Some(status)) = Self::read(path.clone())
                && same_folder(&status.state_dir, state_dir)
            {
                found.push(Found { status, path });
            }
        }
        match persisted {
            Ok(Some(status)) => found.push(Found {
                status,
                path: state_file,
            }),
            Ok(None) => {}
            Err(e) if found.is_empty() => return Err(e),
            Err(_) => {}
        }
        Ok(found
            .into_iter()
            .reduce(|best, next| if next.beats(&best) { next } else { best }))
    }

    /// Ok(None) when there is no such file.
    fn read(path: PathBuf) -> Result<Option<AgentStatus>, StatusError> {
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StatusError::Read { path, source }),
        };
        match serde_json::from_slice(&bytes) {
            Ok(status) => Ok(Some(status)),
            Err(source) => {
                // Caught in the middle of an in-place write (see `save`): one more read.
                let again = fs::read(&path).map_err(|source| StatusError::Read {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_slice(&again)
                    .map(Some)
                    .map_err(|_| StatusError::Corrupt { path, source })
            }
        }
    }

    /// The status a starting agent begins with: [`AgentStatus::new`] for this process, keeping
    /// from the previous run's file what outlives a restart (each device's last collection,
    /// the upstream's last acknowledgement). Spool and shipping counters start again. A missing
    /// file is a first start; an unreadable or corrupt one is logged as a warning and replaced.
    /// The previous run's copy is found as `rackhand status` finds it ([`AgentStatus::find`]):
    /// after a crash its live copy in the runtime folder (kept over a restart by
    /// `RuntimeDirectoryPreserve=restart`) is fresher than the one in `state_dir`.
    pub(crate) fn load_or_default(state_dir: &Path, agent: &str) -> AgentStatus {
        let mut fresh = AgentStatus::new(agent);
        match Self::find(state_dir).map(|found| found.map(|f| f.status)) {
            Ok(None) => {}
            Ok(Some(previous)) => {
                fresh.devices = previous.devices;
                fresh.upstream.last_ack_at = previous.upstream.last_ack_at;
            }
            Err(err) => {
                log::warn!("{err}; starting a new status (last good collections forgotten)")
            }
        }
        fresh
    }

    /// Forgets devices that are no longer in the inventory (after a reload or restart).
    pub(crate) fn retain_devices<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::BTreeSet<&str> = names.into_iter().collect();
        self.devices.retain(|name, _| keep.contains(name.as_str()));
    }

    /// Sets `updated_at` to now and saves.
    #[cfg(test)]
    fn touch_and_save(&mut self, state_dir: &Path) -> Result<(), StatusError> {
        self.updated_at = rfc3339_millis(SystemTime::now());
        self.save(state_dir)
    }

    /// Atomic replace of `dir/status.json` (`dir` is `state_dir` or the runtime folder): writes
    /// a temp file in the same folder and renames it over `status.json`, so readers see the
    /// old or the new status, never half of one.
    ///
    /// On a full disk there is no room for the temp file, and an agent whose status stops
    /// changing looks stuck exactly when an engineer most needs to see why. So the file is
    /// padded with spaces to whole 4 KiB blocks, and when the atomic replace fails for lack
    /// of space the new status is written over the old one in place, in blocks that already
    /// exist (a reader may then catch half of a write, and [`AgentStatus::load`] reads once
    /// more).
    pub fn save(&self, dir: &Path) -> Result<(), StatusError> {
        self.write(dir, false)
    }

    /// [`save`](Self::save), with the new content on disk before the rename: for the copy in
    /// `state_dir` when a runtime folder takes the live one, written at most once a minute,
    /// whose content must survive a power cut (each device's last good collection).
    pub(crate) fn save_durably(&self, dir: &Path) -> Result<(), StatusError> {
        self.write(dir, true)
    }

    fn write(&self, dir: &Path, sync: bool) -> Result<(), StatusError> {
        let path = Self::path(dir);
        let tmp = dir.join(TEMP_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| StatusError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        bytes.resize(bytes.len().div_ceil(PAD) * PAD, b' ');
        // No fsync for the live copy, on purpose: it is rewritten every few seconds, losing the last one
        // to a power cut is harmless (the agent writes a new one at start), and syncing this
        // often would wear the Pi's SD card for nothing. The rename alone still guarantees a
        // whole file: after a crash the name points at the old or the new content (ext4's
        // rename heuristics flush the new data first; at worst it is empty, which `load`
        // reports and the agent replaces).
        let written = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::durable_file::FILE_MODE)
                .open(&tmp)
        }
        .and_then(|mut f| {
            f.write_all(&bytes)?;
            if sync { f.sync_data() } else { Ok(()) }
        })
        .and_then(|()| fs::rename(&tmp, &path));
        match written {
            Ok(()) => Ok(()),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                if crate::durable_file::is_out_of_space(&source)
                    && overwrite_padded(&path, &bytes).is_ok()
                {
                    return Ok(());
                }
                Err(StatusError::Write { path, source })
            }
        }
    }

    /// Whether the process that wrote this status is alive and saving (see [`Liveness`]).
    pub(crate) fn liveness(&self, now: SystemTime) -> Liveness {
        if !pid_is_rackhand(self.pid) {
            return Liveness::Gone;
        }
        match age(&self.updated_at, now) {
            Some(Age::Past(a)) if a > STALE_AFTER => Liveness::Stalled,
            // In the future: the clock was set back since; the pid is the better witness.
            _ => Liveness::Running,
        }
    }
}

/// A status [`AgentStatus::find`] picked, and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub status: AgentStatus,
    pub path: PathBuf,
}

impl Found {
    /// Whether this copy is the better one to show than `other`, found before it (see
    /// [`AgentStatus::find`]).
    fn beats(&self, other: &Found) -> bool {
        let (a, b) = (&self.status, &other.status);
        if a.pid == b.pid && a.started_at == b.started_at {
            // The same run: runtime copies come first in the search, and are the live ones.
            return false;
        }
        let (a_alive, b_alive) = (pid_is_rackhand(a.pid), pid_is_rackhand(b.pid));
        if a_alive != b_alive {
            return a_alive;
        }
        parse_rfc3339(&a.updated_at) > parse_rfc3339(&b.updated_at)
    }
}

/// `$RUNTIME_DIRECTORY`, which systemd sets for `RuntimeDirectory=` (its first folder when it
/// lists several); `None` when unset or empty. Set it by hand to give an agent started without
/// systemd a folder on tmpfs for its live status.
pub(crate) fn runtime_dir_from_env() -> Option<PathBuf> {
    let value = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = match value.to_str() {
        Some(text) => PathBuf::from(text.split(':').next().unwrap_or_default()),
        None => PathBuf::from(value),
    };
    (!first.as_os_str().is_empty()).then_some(first)
}

/// Whether a status's recorded `state_dir` is `state_dir` (the same folder, however named).
fn same_folder(recorded: &str, state_dir: &Path) -> bool {
    if recorded.is_empty() {
        return false;
    }
    let recorded = Path::new(recorded);
    match (fs::canonicalize(recorded), fs::canonicalize(state_dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => recorded == state_dir,
    }
}

/// What `rackhand status` concludes about the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Its pid is a live rackhand process and the status is fresh.
    Running,
    /// Its pid is a live rackhand process, but it has not saved for longer than
    /// [`STALE_AFTER`]: the loop is stuck (systemd's watchdog should restart it).
    Stalled,
    /// No rackhand process with that pid.
    Gone,
}

/// Whether `pid` is a live process running rackhand. Signal 0 checks for existence (EPERM: it
/// exists but belongs to another user, like the `rackhand` service user); the program name in
/// `/proc/<pid>/cmdline` guards against the pid having been reused since the agent died.
pub(crate) fn pid_is_rackhand(pid: u32) -> bool {
    // 0 and negative pids address process groups, never one process.
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        // The program's own name, not any argument (`vim /etc/rackhand/rackhand.toml` is not
        // the agent). A zombie has an empty command line: it is not saving anything either.
        Ok(cmdline) => {
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            let program = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            program.starts_with(b"rackhand")
        }
        // No /proc (or hidepid): the signal is all we can go by.
        Err(_) => true,
    }
}

/// How long ago an RFC 3339 time was, by the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Age {
    Past(Duration),
    /// Later than now: the clock was set back since (or the writer's clock was ahead).
    Future(Duration),
}

/// The age of `rfc3339` at `now`; `None` when it does not parse.
pub(crate) fn age(rfc3339: &str, now: SystemTime) -> Option<Age> {
    let then = parse_rfc3339(rfc3339)?;
    Some(match now.duration_since(then) {
        Ok(d) => Age::Past(d),
        Err(e) => Age::Future(e.duration()),
    })
}

/// Parses `2026-11-25T10:00:00.123Z` (what [`rfc3339_millis`] writes), also with other
/// fraction lengths, a lowercase `t`/`z` or a `+HH:MM`/`-HH:MM` offset.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(range)?;
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

/// A proleptic Gregorian date to days since 1970-01-01 (H. Hinnant's algorithm; the inverse
/// of the one in `record`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    fn busy_agent() -> AgentStatus {
        let mut status = AgentStatus::new("rack-a12");
        status.clock_synced = Some(true);
        status.spool = SpoolStatus {
            dir: "/var/lib/rackhand/spool".into(),
            records: 1200,
            bytes: 3 << 20,
            max_bytes: 512 << 20,
            segments: 4,
            full_policy: "block".into(),
            oldest_unshipped_seq: Some(4711),
            oldest_unshipped_at: Some("2026-11-25T10:00:00.123Z".into()),
            acked_seq: 4710,
            last_seq: 5910,
            ..SpoolStatus::default()
        };
        status.upstream = UpstreamStatus {
            sink: "http".into(),
            target: "https://collector.example/ingest".into(),
            state: "retrying".into(),
            last_error: Some("HTTP 503 Service Unavailable".into()),
            last_error_at: Some("2026-11-25T10:05:00.000Z".into()),
            consecutive_failures: 3,
            ..UpstreamStatus::default()
        };
        status.devices.entry("core1".into()).or_default().collected(
            "2026-11-25T10:00:00.123Z",
            "ok",
            None,
        );
        status
    }

    #[test]
    fn what_the_agent_saves_is_what_status_reads() {
        let dir = temp_dir("status-roundtrip");
        assert_eq!(AgentStatus::load(dir.path()).unwrap(), None, "no file yet");
        let status = busy_agent();
        status.save(dir.path()).unwrap();
        assert_eq!(AgentStatus::load(dir.path()).unwrap(), Some(status));
    }

    #[test]
    fn saving_over_and_over_leaves_only_the_status_file() {
        let dir = temp_dir("status-atomic");
        let mut status = busy_agent();
        for n in 0..20 {
            status.spool.records = n;
            status.touch_and_save(dir.path()).unwrap();
        }
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [STATUS_FILE]);
        assert_eq!(
            AgentStatus::load(dir.path())
                .unwrap()
                .unwrap()
                .spool
                .records,
            19
        );
    }

    #[test]
    fn a_missing_state_folder_is_named_when_saving() {
        let dir = temp_dir("status-nofolder");
        let gone = dir.path().join("not-there");
        let err = busy_agent().save(&gone).unwrap_err().to_string();
        assert!(
            err.contains(&gone.join(STATUS_FILE).display().to_string()),
            "{err}"
        );
        assert!(err.contains("agent.state_dir"), "{err}");
    }

    #[test]
    fn a_corrupt_status_file_is_named_and_the_agent_starts_over() {
        let dir = temp_dir("status-corrupt");
        let path = AgentStatus::path(dir.path());
        fs::write(&path, "{\"agent\": \"rack-a12\", \"pid\": ").unwrap();
        let err = AgentStatus::load(dir.path()).unwrap_err();
        assert!(matches!(err, StatusError::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("delete the file"), "{text}");

        let fresh = AgentStatus::load_or_default(dir.path(), "rack-a12");
        assert_eq!(fresh.agent, "rack-a12");
        assert_eq!(fresh.pid, std::process::id());
        assert!(fresh.devices.is_empty());
    }

    #[test]
    fn a_restarted_agent_remembers_each_devices_last_good_collection() {
        let dir = temp_dir("status-restart");
        let mut before = busy_agent();
        before.pid = 1;
        before.started_at = "2026-11-25T09:00:00.000Z".into();
        before.upstream.last_ack_at = Some("2026-11-25T10:04:00.000Z".into());
        before.upstream.shipped_records = 99;
        before.save(dir.path()).unwrap();

        let after = AgentStatus::load_or_default(dir.path(), "rack-a12");
        assert_eq!(after.pid, std::process::id());
        assert_ne!(after.started_at, before.started_at);
        assert_eq!(after.devices, before.devices);
        assert_eq!(after.upstream.last_ack_at, before.upstream.last_ack_at);
        assert_eq!(after.upstream.shipped_records, 0, "counters are per run");
    }

    /// The last acknowledgement outlives a restart: the starting agent's upstream keeps it,
    /// and the shipper's first reports (no acknowledgement yet this run) do not erase it.
    #[test]
    fn the_last_ack_is_kept_across_a_restart_until_this_run_has_one() {
        let path = Path::new("/etc/rackhand/rackhand.toml");
        let (raw, mut report) = crate::config::parse_str(path, "[agent]\nid = \"a\"\n");
        let inventory = crate::inventory::resolve(&raw, &mut report);
        let upstream = inventory.upstream_in_force();
        let mut previous = UpstreamStatus::configured(&upstream);
        previous.last_ack_at = Some("2026-11-25T10:04:00.000Z".into());
        previous.shipped_records = 99;
        let mut now = UpstreamStatus::restarted(&upstream, &previous);
        assert_eq!(now.last_ack_at, previous.last_ack_at);
        assert_eq!(now.shipped_records, 0, "counters are per run");
        let mut ship = ShipReport::idle("file".into());
        now.observe(&ship);
        assert_eq!(now.last_ack_at, previous.last_ack_at);
        let acked = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        ship.last_ack_at = Some(acked);
        now.observe(&ship);
        assert_eq!(now.last_ack_at, Some(rfc3339_millis(acked)));
    }

    #[test]
    fn files_from_older_or_newer_versions_still_load() {
        let dir = temp_dir("status-compat");
        fs::write(
            AgentStatus::path(dir.path()),
            r#"{"agent":"rack-a12","pid":42,"added_in_v9":{"x":1},
                "spool":{"records":7,"future_field":true},
                "devices":{"core1":{"last_status":"timeout","whatever":null}}}"#,
        )
        .unwrap();
        let status = AgentStatus::load(dir.path()).unwrap().unwrap();
        assert_eq!(status.pid, 42);
        assert_eq!(status.spool.records, 7);
        assert_eq!(status.upstream, UpstreamStatus::default());
        assert_eq!(
            status.devices["core1"].last_status.as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn a_device_failing_keeps_its_last_good_time_and_counts_failures() {
        let mut device = DeviceStatus::default();
        device.collected("2026-11-25T10:00:00.000Z", "ok", None);
        device.collected("2026-11-25T10:15:00.000Z", "timeout", Some("timed out"));
        device.collected("2026-11-25T10:30:00.000Z", "timeout", Some("timed out"));
        assert_eq!(
            device.last_good_at.as_deref(),
            Some("2026-11-25T10:00:00.000Z")
        );
        assert_eq!(
            device.last_attempt_at.as_deref(),
            Some("2026-11-25T10:30:00.000Z")
        );
        assert_eq!(device.consecutive_failures, 2);
        device.collected("2026-11-25T10:45:00.000Z", "ok", None);
        assert_eq!(device.consecutive_failures, 0);
        assert_eq!(device.last_error, None);
    }

    /// The agent's two copies: `state_dir`'s (saved first, naming the runtime one) and the
    /// runtime folder's, saved later by the same run.
    fn two_copies(state: &Path, runtime: &Path) -> (AgentStatus, AgentStatus) {
        let mut kept = busy_agent();
        kept.state_dir = state.display().to_string();
        kept.runtime_file = Some(AgentStatus::path(runtime).display().to_string());
        kept.updated_at = "2026-11-25T10:00:00.000Z".into();
        let mut live = kept.clone();
        live.updated_at = "2026-11-25T10:00:58.000Z".into();
        live.spool.records = 7;
        (kept, live)
    }

    #[test]
    fn status_finds_the_live_copy_the_state_file_names() {
        let (state, runtime) = (temp_dir("find-state"), temp_dir("find-run"));
        let (kept, live) = two_copies(state.path(), runtime.path());
        kept.save(state.path()).unwrap();
        assert_eq!(
            AgentStatus::find(state.path()).unwrap().unwrap().path,
            AgentStatus::path(state.path()),
            "no runtime copy yet: the state file"
        );
        live.save(runtime.path()).unwrap();
        let found = AgentStatus::find(state.path()).unwrap().unwrap();
        assert_eq!(found.path, AgentStatus::path(runtime.path()));
        assert_eq!(found.status, live);

        // The same run's runtime copy wins even when the clock was set back since the state
        // file was written.
        let mut behind = live.clone();
        behind.updated_at = "2026-11-25T09:00:00.000Z".into();
        behind.save(runtime.path()).unwrap();
        assert_eq!(
            AgentStatus::find(state.path()).unwrap().unwrap().status,
            behind
        );

        // A later run that has not written its runtime copy yet: the fresher state file.
        let mut next_run = kept.clone();
        next_run.started_at = "2026-11-25T11:00:00.000Z".into();
        next_run.updated_at = "2026-11-25T11:00:00.000Z".into();
        next_run.save(state.path()).unwrap();
        assert_eq!(
            AgentStatus::find(state.path()).unwrap().unwrap().status,
            next_run
        );
    }

    #[test]
    fn another_agents_runtime_copy_is_not_this_ones() {
        let (state, runtime, other) = (
            temp_dir("find-own"),
            temp_dir("find-own-run"),
            temp_dir("find-other"),
        );
        let (kept, mut live) = two_copies(state.path(), runtime.path());
        kept.save(state.path()).unwrap();
        live.state_dir = other.path().display().to_string();
        live.save(runtime.path()).unwrap();
        let found = AgentStatus::find(state.path()).unwrap().unwrap();
        assert_eq!(found.path, AgentStatus::path(state.path()));
    }

    #[test]
    fn devices_keep_their_history_across_a_restart() {
        let dir = temp_dir("status-history");
        let mut before = busy_agent();
        before.pid = 1;
        let core1 = before.devices.get_mut("core1").unwrap();
        core1.collected("2026-11-25T10:15:00.000Z", "auth_failed", Some("refused"));
        core1.collected("2026-11-25T10:30:00.000Z", "ok", None);
        before.save(dir.path()).unwrap();
        let text = fs::read_to_string(AgentStatus::path(dir.path())).unwrap();
        assert!(text.contains(r#""history": ".a.""#), "{text}");
        let after = AgentStatus::load_or_default(dir.path(), "rack-a12");
        assert_eq!(after.devices["core1"].history().to_string(), ".a.");
    }

    /// Issue 12's budget: history and metrics together ≤ 1 MB at 500 devices. The history's
    /// share: its fixed size per device, and what it adds to `status.json` (docs/benchmarks.md).
    #[test]
    fn the_history_of_500_devices_is_small() {
        let mut status = busy_agent();
        for n in 0..500 {
            let device = status.devices.entry(format!("sw{n:03}")).or_default();
            device.collected("2026-11-25T10:00:00.000Z", "ok", None);
        }
        let without = serde_json::to_vec_pretty(&status).unwrap().len();
        for device in status.devices.values_mut() {
            for n in 0..40 {
                let s = if n % 7 == 0 { "timeout" } else { "ok" };
                device.collected("2026-11-25T10:00:00.000Z", s, None);
            }
        }
        let full = serde_json::to_vec_pretty(&status).unwrap().len();
        status
            .devices
            .values_mut()
            .for_each(|d| d.history = DeviceHistory::default());
        let emptied = serde_json::to_vec_pretty(&status).unwrap().len();
        let in_memory = 500 * std::mem::size_of::<DeviceHistory>();
        eprintln!(
            "500 devices: history {in_memory} B in memory; status.json {emptied} B with empty histories, {full} B with 32 each (+{} B); {without} B",
            full - emptied
        );
        assert!(in_memory <= 24_000, "{in_memory}");
        assert!(full - emptied <= 500 * 48, "{full} - {emptied}");
    }

    #[test]
    fn times_written_by_the_agent_parse_back_exactly() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_millis(1_764_064_800_123),
            UNIX_EPOCH + Duration::from_millis(951_782_400_999), // 2000-02-29
            SystemTime::now(),
        ] {
            let text = rfc3339_millis(t);
            let millis = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
            assert_eq!(parse_rfc3339(&text).map(millis), Some(millis(t)), "{text}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-25T12:00:00+02:00"),
            parse_rfc3339("2026-11-25T10:00:00Z")
        );
        for bad in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-11-25T10:00:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn ages_before_and_after_a_clock_change() {
        let now = parse_rfc3339("2026-11-25T10:00:10.000Z").unwrap();
        assert_eq!(
            age("2026-11-25T10:00:00.000Z", now),
            Some(Age::Past(Duration::from_secs(10)))
        );
        assert_eq!(
            age("2026-11-25T10:01:00.000Z", now),
            Some(Age::Future(Duration::from_secs(50)))
        );
        assert_eq!(age("garbage", now), None);
    }

    #[test]
    fn only_a_live_rackhand_process_counts_as_the_agent() {
        // The unit tests' binary is `rackhand-<hash>`: alive and named like the agent.
        assert!(pid_is_rackhand(std::process::id()));
        // A process that has exited (and was reaped) is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!pid_is_rackhand(dead));
        // Never process groups.
        assert!(!pid_is_rackhand(0));
        assert!(!pid_is_rackhand(u32::MAX));
    }
}

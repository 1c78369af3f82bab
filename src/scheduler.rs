//! The scheduler: which device to collect next, and when.
//!
//! The agent polls devices forever, so *when* matters as much as *what*: a rack of switches
//! all polled at :00 makes a burst on the management network, on the TACACS+ server and on
//! every terminal server; a dead device or a locked account polled at full rate hammers AAA;
//! a slow device polled again before it answered piles sessions onto itself. This module is
//! the one place those rules live, as pure logic with the clock passed in (`Instant`s, and
//! one wall-clock reading at construction), so every rule is tested without real time. It
//! never sleeps; the caller waits on the pool's events until [`Scheduler::next_due`].
//!
//! The rules:
//! - **Stable spread.** Each device runs on a grid of its `interval` shifted by an offset
//!   from a hash of its name ([`offset`]), anchored to the wall clock: device `core1` with a
//!   15 minute interval runs at, say, :03:17, :18:17, ... before and after restarts and
//!   reloads. The first run is the first grid slot after start, not at start.
//! - **No pile-up.** A grid slot that arrives while the device's previous collection is still
//!   running (or still queued) is *skipped*, counted per device and logged, as Telegraf does.
//!   Slots that pass while a due device waits for room (its group's cap, its serial port, a
//!   free worker) are counted the same way: the device then runs once, late, and goes on
//!   with the grid.
//! - **Backoff.** A run whose session never got going ([`RunSummary::session_failure`]:
//!   `connect_failed`, `auth_failed`, `timeout` at login, `host_key_mismatch`, `port_busy`,
//!   `driver_crashed`) makes the device wait `30 s × 2^(n−1)` after the n-th such run in a
//!   row, capped at `max(interval, 15 min)`, shortened by a random 0–20 % (jitter, so the
//!   devices behind one dead terminal server do not retry in step). Backoff only ever delays:
//!   the next run is at the later of the next grid slot and the end of the backoff. A run
//!   whose session opened resets it; so does a reload that changes the device (a fixed
//!   password should not wait out the old streak).
//! - **Caps.** A device never runs twice at once; two devices naming the same serial port
//!   (also through a symlink such as `/dev/serial/by-id/...`) never run at once; a device in
//!   a `[[group]]` with `max_sessions` waits, still due, while that group is at its cap.
//! - **Reload.** [`Scheduler::reload`] adds, drops and updates devices by name. Work in flight
//!   finishes and still counts against caps; a changed device takes its new settings from its
//!   next run.
//!
//! The loop that drives it (see `rackhand run`; the end-to-end test does the same):
//!
//! ```text
//! loop {
//!     let now = Instant::now();
//!     for d in scheduler.take_due(now, pool.vacancies()) {
//!         if pool.submit(d.id, d.device).is_err() { scheduler.unstarted(d.id) }
//!     }
//!     let wait = match scheduler.next_due() {
//!         Some(at) if pool.vacancies() > 0 => at.saturating_duration_since(now),
//!         _ => IDLE, // nothing due, or no room: the next pool event wakes us
//!     };
//!     match pool.events().recv_timeout(wait) {
//!         Ok(PoolEvent::Finished { key, summary, .. }) => scheduler.finished(key, &summary, Instant::now()),
//!         ...
//!     }
//! }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hash::{fnv1a, mix};
use crate::inventory::{Device, Endpoint, Inventory};
pub(crate) use crate::outcome::RunSummary;

/// Intervals below this are raised to it: a zero interval would divide by zero and a tiny
/// one would only spin the loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A device's identity in the scheduler and the pool. Stable for a name across reloads (a
/// device removed and added again gets its old id back), never reused for another name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Tunables, with the documented defaults in [`Settings::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The wait after the first session failure in a row; it doubles with each further one.
    pub backoff_first: Duration,
    /// The backoff cap is `max(interval, backoff_cap_at_least)`.
    pub backoff_cap_at_least: Duration,
    /// A backoff delay is shortened by a random fraction in `[0, jitter)`; 0 turns jitter off.
    pub jitter: f64,
    /// Seeds the jitter (with the device name and the failure count).
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backoff_first: Duration::from_secs(30),
            backoff_cap_at_least: Duration::from_secs(15 * 60),
            jitter: 0.2,
            // Different per start, so agents restarted together do not retry in step.
            seed: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed),
        }
    }
}

/// One device to start now: hand it to the pool, or give it back with
/// [`Scheduler::unstarted`].
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub id: DeviceId,
    /// The device's settings as of this run (a reload later does not change them).
    pub device: Arc<Device>,
    /// The slot (or end of backoff) this run serves; `now - due` is how late it starts.
    pub due: Instant,
}

/// What a reload changed, by device name, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// Counters of one device, for `rackhand status` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    pub(crate) id: DeviceId,
    pub name: String,
    /// Collections that finished.
    pub runs: u64,
    /// Grid slots that passed without a collection starting for them.
    pub skipped: u64,
    /// Finished collections with at least one record not `ok`.
    pub failures: u64,
    /// Session failures in a row (what the backoff grows with); 0 after a session opened.
    pub consecutive_session_failures: u32,
    /// When the last collection with every record `ok` finished.
    pub last_success: Option<SystemTime>,
    /// A collection is queued or running now.
    pub running: bool,
    /// The next run waits for a backoff, not for the grid.
    pub backing_off: bool,
    /// When the next run is due (in the past while it waits for room).
    pub next_due: Instant,
    /// The same on the wall clock.
    pub next_due_at: SystemTime,
}

/// Where the device's schedule stands.
#[derive(Debug)]
struct Entry {
    id: DeviceId,
    device: Arc<Device>,
    interval: Duration,
    offset: Duration,
    due: Instant,
    backing_off: bool,
    runs: u64,
    skipped: u64,
    failures: u64,
    streak: u32,
    last_success: Option<SystemTime>,
}

/// A dispatched run: what it holds (group slots, serial port) until it finishes, kept even
/// when a reload removes its device.
#[derive(Debug)]
struct InFlight {
    name: String,
    groups: Vec<String>,
    port: Option<PathBuf>,
    /// To undo the dispatch when the pool refuses it.
    previous_due: Instant,
    previous_skipped: u64,
    previous_backing_off: bool,
}

/// Decides which devices run when; see the module docs for the rules.
#[derive(Debug)]
pub struct Scheduler {
    settings: Settings,
    /// `anchor` is `anchor_wall` on the wall clock: the grid is computed from this pair.
    anchor: Instant,
    anchor_wall: Duration,
    entries: BTreeMap<DeviceId, Entry>,
    ids: HashMap<String, DeviceId>,
    caps: HashMap<String, usize>,
    in_flight: BTreeMap<DeviceId, InFlight>,
}

impl Scheduler {
    /// Schedules every device of `inventory`; `now` and `wall` are the same moment on the
    /// monotonic and the wall clock.
    pub fn new(inventory: &Inventory, now: Instant, wall: SystemTime) -> Scheduler {
        Scheduler::with_settings(inventory, now, wall, Settings::default())
    }

    pub fn with_settings(
        inventory: &Inventory,
        now: Instant,
        wall: SystemTime,
        settings: Settings,
    ) -> Scheduler {
        let mut scheduler = Scheduler {
            settings,
            anchor: now,
            anchor_wall: wall.duration_since(UNIX_EPOCH).unwrap_or_default(),
            entries: BTreeMap::new(),
            ids: HashMap::new(),
            caps: HashMap::new(),
            in_flight: BTreeMap::new(),
        };
        scheduler.reload(inventory, now);
        scheduler
    }

    /// Takes a new inventory: devices are matched by name.
    pub fn reload(&mut self, inventory: &Inventory, now: Instant) -> Reloaded {
        let mut report = Reloaded::default();
        self.caps = inventory
            .groups
            .iter()
            .filter_map(|g| g.max_sessions.map(|cap| (g.name.clone(), cap)))
            .collect();
        let mut keep = HashSet::with_capacity(inventory.devices.len());
        for device in &inventory.devices {
            let id = self.id_for(&device.name);
            keep.insert(id);
            let interval = device.interval.max(MIN_INTERVAL);
            match self.entries.get(&id) {
                None => {
                    let offset = offset(&device.name, interval);
                    let due = self.next_slot_after(now, offset, interval);
                    self.entries.insert(
                        id,
                        Entry {
                            id,
                            device: Arc::new(device.clone()),
                            interval,
                            offset,
                            due,
                            backing_off: false,
                            runs: 0,
                            skipped: 0,
                            failures: 0,
                            streak: 0,
                            last_success: None,
                        },
                    );
                    report.added.push(device.name.clone());
                }
                Some(entry) if *entry.device != *device => {
                    let regrid = entry.interval != interval || entry.backing_off;
                    let offset = offset(&device.name, interval);
                    let due = if regrid {
                        self.next_slot_after(now, offset, interval)
                    } else {
                        entry.due
                    };
                    let entry = self.entries.get_mut(&id).expect("looked up above");
                    entry.device = Arc::new(device.clone());
                    entry.interval = interval;
                    entry.offset = offset;
                    entry.due = due;
                    entry.backing_off = false;
                    entry.streak = 0;
                    report.changed.push(device.name.clone());
                }
                Some(_) => {}
            }
        }
        let gone: Vec<DeviceId> = self
            .entries
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(entry) = self.entries.remove(&id) {
                report.removed.push(entry.device.name.clone());
            }
        }
        report
    }

    fn id_for(&mut self, name: &str) -> DeviceId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = DeviceId(self.ids.len() as u32);
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The earliest moment [`take_due`](Self::take_due) has something to do: a device to
    /// start, or a slot of a running device to count as skipped. Devices that wait for their
    /// group or serial port are left out (only a finished run frees them). `None`: no devices.
    /// A moment in the past means "now, if the pool has room".
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| self.in_flight.contains_key(&e.id) || self.blocked_by(e).is_none())
            .map(|e| e.due)
            .min()
    }

    /// The devices to start at `now`, at most `limit` (the pool's room), earliest due first.
    /// Each is in flight from here until [`finished`](Self::finished) or
    /// [`unstarted`](Self::unstarted). Slots of devices still in flight are counted as
    /// skipped.
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<Dispatch> {
        self.count_skips_in_flight(now);
        let mut due: Vec<(Instant, DeviceId)> = self
            .entries
            .values()
            .filter(|e| e.due <= now && !self.in_flight.contains_key(&e.id))
            .map(|e| (e.due, e.id))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, id) in due {
            if out.len() >= limit {
                break;
            }
            let entry = &self.entries[&id];
            if let Some(reason) = self.blocked_by(entry) {
                log::debug!("{}: due, waiting for {reason}", entry.device.name);
                continue;
            }
            let slot = self.next_slot_after(now, entry.offset, entry.interval);
            let missed = self.slots_in(entry.due, now, entry.offset, entry.interval);
            let entry = self.entries.get_mut(&id).expect("listed above");
            let flight = InFlight {
                name: entry.device.name.clone(),
                groups: entry.device.groups.clone(),
                port: serial_port_key(&entry.device),
                previous_due: entry.due,
                previous_skipped: entry.skipped,
                previous_backing_off: entry.backing_off,
            };
            if missed > 0 {
                log::warn!(
                    "{}: starts {:.1}s late (it waited for a worker, its group or its serial port); {missed} slot(s) skipped; consider more [agent] workers, a higher max_sessions or a longer interval",
                    entry.device.name,
                    now.saturating_duration_since(entry.due).as_secs_f64()
                );
                entry.skipped += missed;
            }
            out.push(Dispatch {
                id,
                device: Arc::clone(&entry.device),
                due: entry.due,
            });
            entry.due = slot;
            entry.backing_off = false;
            self.in_flight.insert(id, flight);
        }
        out
    }

    /// The agent is paused (its spool is full): every device due at `now` and not running
    /// passes this slot, counted as skipped, and waits for its next one. Returns how many
    /// collections were passed over, for the gap record that reports the pause.
    pub fn pass_due(&mut self, now: Instant) -> u64 {
        let due: Vec<DeviceId> = self
            .entries
            .values()
            .filter(|e| e.due <= now && !self.in_flight.contains_key(&e.id))
            .map(|e| e.id)
            .collect();
        let mut passed = 0;
        for id in due {
            let entry = &self.entries[&id];
            let (offset, interval, was_due) = (entry.offset, entry.interval, entry.due);
            let missed = 1 + self.slots_in(was_due, now, offset, interval);
            let slot = self.next_slot_after(now, offset, interval);
            let entry = self.entries.get_mut(&id).expect("listed above");
            entry.skipped += missed;
            entry.due = slot;
            passed += missed;
        }
        passed
    }

    /// Slots that arrive while a device is in flight are skipped: count them and move on.
    fn count_skips_in_flight(&mut self, now: Instant) {
        let anchor = (self.anchor, self.anchor_wall);
        for (id, flight) in &self.in_flight {
            let Some(entry) = self.entries.get_mut(id) else {
                continue;
            };
            if entry.due > now {
                continue;
            }
            // `due` is the grid slot after the dispatch (set by `take_due`): it and every
            // slot up to now came while the run went.
            entry.skipped += 1 + slots_in(anchor, entry.due, now, entry.offset, entry.interval);
            entry.due = next_slot_after(anchor, now, entry.offset, entry.interval);
            log::warn!(
                "{}: previous collection still running at its next due time; skipped ({} so far); consider a longer interval or a shorter command_timeout",
                flight.name,
                entry.skipped
            );
        }
    }

    /// The pool refused a dispatched device (queue full, pool closed): it is due again as if
    /// never taken.
    pub fn unstarted(&mut self, id: DeviceId) {
        let Some(flight) = self.in_flight.remove(&id) else {
            return;
        };
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.due = flight.previous_due;
            entry.skipped = flight.previous_skipped;
            entry.backing_off = flight.previous_backing_off;
        }
    }

    /// A run ended (`summary` from the pool's `Finished` event). Frees its group slot and
    /// serial port, updates the counters and backoff. Unknown ids (a run started before a
    /// reload removed its device) only free what they held.
    pub fn finished(&mut self, id: DeviceId, summary: &RunSummary, now: Instant) {
        if self.in_flight.remove(&id).is_none() {
            log::debug!("scheduler: finished {id} that was not in flight; ignored");
            return;
        }
        let anchor = (self.anchor, self.anchor_wall);
        let wall = self.wall(now);
        let cap_floor = self.settings.backoff_cap_at_least;
        let first = self.settings.backoff_first;
        let (jitter, seed) = (self.settings.jitter, self.settings.seed);
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.runs += 1;
        // Slots that came while the run went are skipped, not made up for.
        // `due` is a grid slot set at dispatch, as in `count_skips_in_flight`.
        if entry.due <= now {
            entry.skipped += 1 + slots_in(anchor, entry.due, now, entry.offset, entry.interval);
            entry.due = next_slot_after(anchor, now, entry.offset, entry.interval);
        }
        if !summary.all_ok() {
            entry.failures += 1;
        } else {
            entry.last_success = Some(wall);
        }
        match summary.session_failure {
            None => {
                entry.streak = 0;
                entry.backing_off = false;
            }
            Some(status) => {
                entry.streak = entry.streak.saturating_add(1);
                let cap = entry.interval.max(cap_floor);
                let delay =
                    backoff_delay(first, cap, entry.streak, jitter, seed, &entry.device.name);
                let until = now + delay;
                if until > entry.due {
                    entry.due = until;
                    entry.backing_off = true;
                }
                log::warn!(
                    "{}: {} ({} in a row){}; next try in {:.0}s",
                    entry.device.name,
                    status.as_str(),
                    entry.streak,
                    summary
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                    entry.due.saturating_duration_since(now).as_secs_f64()
                );
            }
        }
    }

    /// Why a due device cannot start now, if it cannot.
    fn blocked_by(&self, entry: &Entry) -> Option<String> {
        if self.in_flight.contains_key(&entry.id) {
            return Some("its previous collection".into());
        }
        for group in &entry.device.groups {
            let Some(cap) = self.caps.get(group) else {
                continue;
            };
            let running = self
                .in_flight
                .values()
                .filter(|f| f.groups.contains(group))
                .count();
            if running >= *cap {
                return Some(format!(
                    "group `{group}` (max_sessions = {cap}, {running} running)"
                ));
            }
        }
        if let Some(port) = serial_port_key(&entry.device)
            && let Some(holder) = self
                .in_flight
                .values()
                .find(|f| f.port.as_deref() == Some(port.as_path()))
        {
            return Some(format!(
                "serial port {} (in use by `{}`)",
                port.display(),
                holder.name
            ));
        }
        None
    }

    /// Runs queued or running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_in_flight(&self, id: DeviceId) -> bool {
        self.in_flight.contains_key(&id)
    }

    pub fn id_of(&self, name: &str) -> Option<DeviceId> {
        self.ids
            .get(name)
            .copied()
            .filter(|id| self.entries.contains_key(id))
    }

    /// The device's current settings (scheduled devices only).
    pub fn device(&self, id: DeviceId) -> Option<&Arc<Device>> {
        self.entries.get(&id).map(|e| &e.device)
    }

    /// Counters of every scheduled device, by id (the order devices were first seen).
    pub fn stats(&self) -> Vec<DeviceStats> {
        self.entries.values().map(|e| self.stats_of(e)).collect()
    }

    pub fn device_stats(&self, name: &str) -> Option<DeviceStats> {
        self.id_of(name)
            .and_then(|id| self.entries.get(&id))
            .map(|e| self.stats_of(e))
    }

    fn stats_of(&self, e: &Entry) -> DeviceStats {
        DeviceStats {
            id: e.id,
            name: e.device.name.clone(),
            runs: e.runs,
            skipped: e.skipped,
            failures: e.failures,
            consecutive_session_failures: e.streak,
            last_success: e.last_success,
            running: self.in_flight.contains_key(&e.id),
            backing_off: e.backing_off,
            next_due: e.due,
            next_due_at: self.wall(e.due),
        }
    }

    /// `at` on the wall clock, as the scheduler's anchor maps it.
    pub fn wall(&self, at: Instant) -> SystemTime {
        let since = UNIX_EPOCH + self.anchor_wall;
        if at >= self.anchor {
            since + (at - self.anchor)
        } else {
            since - (self.anchor - at)
        }
    }

    fn next_slot_after(&self, t: Instant, offset: Duration, interval: Duration) -> Instant {
        next_slot_after((self.anchor, self.anchor_wall), t, offset, interval)
    }

    fn slots_in(&self, after: Instant, upto: Instant, offset: Duration, interval: Duration) -> u64 {
        slots_in(
            (self.anchor, self.anchor_wall),
            after,
            upto,
            offset,
            interval,
        )
    }
}

type Anchor = (Instant, Duration);

/// Position of `t` on a device's grid, in nanoseconds: slots are at multiples of the
/// interval.
fn grid_pos(anchor: Anchor, t: Instant, offset: Duration) -> i128 {
    let (at, wall) = anchor;
    let rel = if t >= at {
        (t - at).as_nanos() as i128
    } else {
        -((at - t).as_nanos() as i128)
    };
    rel + wall.as_nanos() as i128 - offset.as_nanos() as i128
}

fn at_pos(anchor: Anchor, pos: i128, offset: Duration) -> Instant {
    let (at, wall) = anchor;
    let rel = pos + offset.as_nanos() as i128 - wall.as_nanos() as i128;
    if rel >= 0 {
        at + nanos(rel)
    } else {
        at - nanos(-rel)
    }
}

fn nanos(n: i128) -> Duration {
    Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32)
}

/// The first grid slot strictly after `t`.
fn next_slot_after(anchor: Anchor, t: Instant, offset: Duration, interval: Duration) -> Instant {
    let step = interval.as_nanos() as i128;
    let k = grid_pos(anchor, t, offset).div_euclid(step) + 1;
    at_pos(anchor, k * step, offset)
}

/// Grid slots `s` with `after < s <= upto`.
fn slots_in(
    anchor: Anchor,
    after: Instant,
    upto: Instant,
    offset: Duration,
    interval: Duration,
) -> u64 {
    if upto <= after {
        return 0;
    }
    let step = interval.as_nanos() as i128;
    let a = grid_pos(anchor, after, offset).div_euclid(step);
    let b = grid_pos(anchor, upto, offset).div_euclid(step);
    (b - a).max(0) as u64
}

/// The device's place in its interval: a hash of its name (FNV-1a, then a mixer so similar
/// names such as `sw-1`, `sw-2` land far apart) scaled to `[0, interval)`. Fixed algorithms,
/// so the offset is the same in every build and after every restart.
pub fn offset(name: &str, interval: Duration) -> Duration {
    let hash = mix(fnv1a(name.as_bytes()));
    let span = interval.as_nanos().max(1);
    let scaled = (u128::from(hash) * span) >> 64;
    nanos(scaled as i128)
}

/// The backoff before retrying after the `streak`-th session failure in a row:
/// `first × 2^(streak−1)`, at most `cap`, shortened by up to `jitter` (a fraction) at random
/// (seeded by `seed`, the device name and the streak, so tests can pin it).
pub fn backoff_delay(
    first: Duration,
    cap: Duration,
    streak: u32,
    jitter: f64,
    seed: u64,
    name: &str,
) -> Duration {
    let doublings = streak.saturating_sub(1);
    let full = if doublings >= 31 {
        cap
    } else {
        first.saturating_mul(1u32 << doublings).min(cap)
    };
    let jitter = jitter.clamp(0.0, 1.0);
    let random = mix(seed ^ fnv1a(name.as_bytes()) ^ u64::from(streak).rotate_left(32));
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    full.mul_f64(1.0 - jitter * unit)
}

/// Identifies a device's serial port: the real device node where the path resolves (so
/// `/dev/serial/by-id/...` and `/dev/ttyUSB0` are the same port), else the path as written.
fn serial_port_key(device: &Device) -> Option<PathBuf> {
    match &device.endpoint {
        Endpoint::Serial { port, .. } => Some(canonical(port)),
        Endpoint::Net { .. } => None,
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor() -> Anchor {
        (Instant::now(), Duration::from_secs(1_795_600_800))
    }

    #[test]
    fn next_slot_is_strictly_after_and_on_the_grid() {
        let a = anchor();
        let interval = Duration::from_secs(60);
        let offset = Duration::from_secs(17);
        let t = a.0 + Duration::from_secs(5);
        let s = next_slot_after(a, t, offset, interval);
        assert!(s > t);
        assert!(s - t <= interval);
        assert_eq!(grid_pos(a, s, offset).rem_euclid(60_000_000_000), 0);
        // On a slot itself: the next one, a whole interval on.
        assert_eq!(next_slot_after(a, s, offset, interval), s + interval);
    }

    #[test]
    fn slots_in_counts_half_open_ranges() {
        let a = anchor();
        let interval = Duration::from_secs(10);
        let offset = Duration::from_secs(3);
        let s = next_slot_after(a, a.0, offset, interval);
        assert_eq!(slots_in(a, s, s, offset, interval), 0);
        assert_eq!(slots_in(a, s, s + interval, offset, interval), 1);
        assert_eq!(
            slots_in(a, s - Duration::from_nanos(1), s, offset, interval),
            1
        );
        assert_eq!(
            slots_in(
                a,
                s,
                s + interval * 3 - Duration::from_nanos(1),
                offset,
                interval
            ),
            2
        );
    }

    #[test]
    fn backoff_without_jitter_doubles_from_first_and_caps() {
        let first = Duration::from_secs(30);
        let cap = Duration::from_secs(900);
        let got: Vec<u64> = (1..=8)
            .map(|n| backoff_delay(first, cap, n, 0.0, 1, "x").as_secs())
            .collect();
        assert_eq!(got, vec![30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(backoff_delay(first, cap, u32::MAX, 0.0, 1, "x"), cap);
    }

    #[test]
    fn mix_spreads_neighbouring_inputs() {
        // Avalanche: one flipped input bit flips about half the output bits.
        let flipped: u32 = (0..1000u64)
            .map(|i| (mix(i) ^ mix(i ^ 1)).count_ones())
            .sum();
        let mean = f64::from(flipped) / 1000.0;
        assert!((28.0..=36.0).contains(&mean), "{mean}");
    }
}

//! The scheduler's rules, told with a clock the test moves (no real waiting), then the whole
//! story for real: 100 simulated Telnet devices collected through scheduler and worker pool,
//! with the simulator's own counters as the witness.
//!
//! Inventories come from config text through the same parser and resolver the agent uses, so
//! the tests also pin how `interval`, `[[group]] max_sessions` and `serial_port` reach the
//! scheduler.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rackhand::inventory::{Device, Inventory};
use rackhand::pool::{Pool, PoolEvent, RunSummary, Work};
use rackhand::record::{Outcome, Status};
use rackhand::scheduler::{DeviceId, Scheduler, Settings, backoff_delay, offset};
use rackhand::sim::{Fault, Profile, TelnetRack};

use support::config::{Config, Dev, Table, list};
use support::{TempDir, loopback_any_port};

/// `[agent]` and `[defaults]` of every config here (no `interval`: each test sets its own).
fn base() -> Config {
    Config::new()
        .agent("id", "\"t\"")
        .defaults("platform", "\"cisco_ios\"")
        .defaults("username", "\"admin\"")
        .defaults("password", "\"admin\"")
        .defaults("commands", &list(&["show clock"]))
}

fn inventory(config: &Config) -> Inventory {
    config.inventory(Path::new("/etc/rackhand/test.toml"))
}

/// `count` telnet devices `sw-1`.. with `interval`.
fn rack(count: usize, interval: &str) -> Config {
    let devices = (1..=count)
        .map(|i| Dev::new(&format!("sw-{i}"), "telnet").set("host", &format!("\"192.0.2.{i}\"")));
    base()
        .defaults("interval", &format!("\"{interval}\""))
        .devices(devices)
}

fn no_jitter() -> Settings {
    Settings {
        jitter: 0.0,
        seed: 7,
        ..Settings::default()
    }
}

/// A fixed wall-clock reading so grid positions are reproducible.
fn wall0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_600_800)
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap()
}

fn names(d: &[rackhand::scheduler::Dispatch]) -> Vec<String> {
    d.iter().map(|d| d.device.name.clone()).collect()
}

fn ok() -> RunSummary {
    RunSummary::ok(1)
}

fn refused() -> RunSummary {
    RunSummary::session_failed(1, Status::AuthFailed, "sw-1: login refused")
}

// ---------------------------------------------------------------------------------------
// Spread

#[test]
fn offsets_are_pinned_so_they_survive_restarts_and_upgrades() {
    // If this changes, every deployed device moves in its interval: do that on purpose only.
    let got = offset("core1", Duration::from_secs(900));
    let again = offset("core1", Duration::from_secs(900));
    assert_eq!(got, again);
    assert_eq!(
        got.as_nanos(),
        PINNED_CORE1_900S,
        "offset algorithm changed"
    );
    assert!(offset("x", Duration::from_secs(60)) < Duration::from_secs(60));
}

/// Computed outside Rust (FNV-1a 64, SplitMix64's finaliser, `hash × span >> 64`):
/// python3 -c "M=2**64-1;h=0xcbf29ce484222325
/// for b in b'core1': h^=b; h=(h*0x100000001b3)&M
/// z=(h+0x9e3779b97f4a7c15)&M; z=((z^(z>>30))*0xbf58476d1ce4e5b9)&M
/// z=((z^(z>>27))*0x94d049bb133111eb)&M; z^=z>>31; print((z*900_000_000_000)>>64)"
const PINNED_CORE1_900S: u128 = 351_201_595_097;

#[test]
fn devices_sharing_an_interval_spread_across_it() {
    let interval = Duration::from_secs(60);
    let mut buckets = [0usize; 10];
    for i in 1..=100 {
        let o = offset(&format!("sw-{i}"), interval);
        buckets[(o.as_secs_f64() / 6.0) as usize] += 1;
    }
    // A fair hash puts ~10 in each; all at :00 would be [100, 0, ...].
    assert!(
        buckets.iter().all(|&n| (2..=25).contains(&n)),
        "{buckets:?}"
    );
}

#[test]
fn the_grid_is_anchored_to_the_wall_clock_not_to_the_start() {
    let inv = inventory(&rack(20, "1m"));
    let t0 = Instant::now();
    let first = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    // A restart 7 min 13 s later.
    let later = wall0() + Duration::from_secs(433);
    let second = Scheduler::with_settings(&inv, t0, later, no_jitter());
    let mut dues = BTreeSet::new();
    for (a, b) in first.stats().iter().zip(second.stats()) {
        assert_eq!(a.name, b.name);
        let expected = offset(&a.name, Duration::from_secs(60));
        for s in [a, &b] {
            let phase = since_epoch(s.next_due_at).as_nanos() % 60_000_000_000;
            assert_eq!(phase, expected.as_nanos(), "{} off its grid", s.name);
            assert!(s.next_due > t0 && s.next_due <= t0 + Duration::from_secs(60));
        }
        dues.insert(a.next_due);
    }
    assert!(dues.len() >= 18, "devices should not share due times");
}

// ---------------------------------------------------------------------------------------
// No pile-up

#[test]
fn a_slow_collection_is_not_queued_again_and_its_slots_count_as_skipped() {
    let inv = inventory(&rack(1, "1s"));
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    let due = s.next_due().unwrap();
    assert!(s.take_due(due - Duration::from_millis(1), 8).is_empty());
    let run = s.take_due(due, 8);
    assert_eq!(names(&run), ["sw-1"]);
    let id = run[0].id;
    // While it runs, the next slots come and go.
    assert_eq!(s.next_due(), Some(due + Duration::from_secs(1)));
    assert!(s.take_due(due + Duration::from_secs(1), 8).is_empty());
    assert_eq!(s.device_stats("sw-1").unwrap().skipped, 1);
    assert!(
        s.take_due(due + Duration::from_millis(3500), 8).is_empty(),
        "never a second session to a device"
    );
    let st = s.device_stats("sw-1").unwrap();
    assert_eq!(st.skipped, 3, "slots at +1 s, +2 s and +3 s");
    assert!(st.running);
    assert_eq!(st.runs, 0);
    s.finished(id, &ok(), due + Duration::from_millis(3600));
    let st = s.device_stats("sw-1").unwrap();
    assert_eq!((st.runs, st.skipped, st.failures), (1, 3, 0));
    assert_eq!(
        st.next_due,
        due + Duration::from_secs(4),
        "back on the grid"
    );
    assert!(st.last_success.is_some());
    assert_eq!(
        names(&s.take_due(due + Duration::from_secs(4), 8)),
        ["sw-1"]
    );
}

#[test]
fn slots_that_pass_while_the_run_goes_are_counted_at_the_finish_too() {
    let inv = inventory(&rack(1, "1s"));
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    let due = s.next_due().unwrap();
    let id = s.take_due(due, 1)[0].id;
    // The loop did not call take_due in between (it was busy): the finish counts them.
    s.finished(id, &ok(), due + Duration::from_millis(2500));
    let st = s.device_stats("sw-1").unwrap();
    assert_eq!(st.skipped, 2);
    assert_eq!(st.next_due, due + Duration::from_secs(3));
}

#[test]
fn a_refused_dispatch_stays_due_as_if_never_taken() {
    let inv = inventory(&rack(3, "1s"));
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    let late = t0 + Duration::from_secs(5);
    let first = s.take_due(late, 1);
    assert_eq!(first.len(), 1, "the limit is the pool's room");
    let before = s.device_stats(&first[0].device.name).unwrap();
    assert!(before.running);
    s.unstarted(first[0].id);
    let after = s.device_stats(&first[0].device.name).unwrap();
    assert!(!after.running);
    assert_eq!(after.next_due, first[0].due, "still due");
    assert_eq!(after.skipped, 0, "the late start's skips are undone too");
    assert_eq!(s.take_due(late, 8).len(), 3);
}

// ---------------------------------------------------------------------------------------
// Backoff

/// Fails sw-1's session at each due time; returns the waits the scheduler chose.
fn fail_repeatedly(s: &mut Scheduler, times: usize, summary: &RunSummary) -> Vec<Duration> {
    let mut waits = Vec::new();
    for _ in 0..times {
        let due = s.next_due().unwrap();
        let run = s.take_due(due, 8);
        assert_eq!(run.len(), 1);
        let end = due + Duration::from_millis(100);
        s.finished(run[0].id, summary, end);
        waits.push(s.device_stats("sw-1").unwrap().next_due - end);
    }
    waits
}

#[test]
fn backoff_doubles_from_30s_caps_at_15min_and_resets_on_success() {
    let inv = inventory(&rack(1, "1s"));
    let mut s = Scheduler::with_settings(&inv, Instant::now(), wall0(), no_jitter());
    let waits = fail_repeatedly(&mut s, 8, &refused());
    let secs: Vec<u64> = waits.iter().map(|w| w.as_secs()).collect();
    assert_eq!(secs, [30, 60, 120, 240, 480, 900, 900, 900]);
    let st = s.device_stats("sw-1").unwrap();
    assert!(st.backing_off);
    assert_eq!(st.consecutive_session_failures, 8);
    assert_eq!(st.failures, 8);

    // It came back: straight back to the 1 s grid, and a new failure starts at 30 s again.
    let due = s.next_due().unwrap();
    let id = s.take_due(due, 8)[0].id;
    s.finished(id, &ok(), due + Duration::from_millis(100));
    let st = s.device_stats("sw-1").unwrap();
    assert_eq!(st.consecutive_session_failures, 0);
    assert!(!st.backing_off);
    assert!(st.next_due - (due + Duration::from_millis(100)) <= Duration::from_secs(1));
    assert_eq!(fail_repeatedly(&mut s, 1, &refused())[0].as_secs(), 30);
}

#[test]
fn a_command_error_is_not_a_reason_to_back_off() {
    let inv = inventory(&rack(1, "1s"));
    let mut s = Scheduler::with_settings(&inv, Instant::now(), wall0(), no_jitter());
    let mut rejected = RunSummary::ok(2);
    rejected.ok = 1;
    let waits = fail_repeatedly(&mut s, 3, &rejected);
    assert!(
        waits.iter().all(|w| *w <= Duration::from_secs(1)),
        "{waits:?}"
    );
    let st = s.device_stats("sw-1").unwrap();
    assert_eq!((st.failures, st.consecutive_session_failures), (3, 0));
    assert!(st.last_success.is_none());
}

#[test]
fn the_cap_follows_a_long_interval() {
    let inv = inventory(&rack(1, "2h"));
    let mut s = Scheduler::with_settings(&inv, Instant::now(), wall0(), no_jitter());
    let waits = fail_repeatedly(&mut s, 12, &refused());
    // Never earlier than the grid, never longer than one interval.
    assert!(waits.iter().all(|w| *w <= Duration::from_secs(7200)));
    assert_eq!(waits[11], Duration::from_secs(7200));
}

#[test]
fn jitter_shortens_by_at_most_a_fifth_and_really_varies() {
    let first = Duration::from_secs(30);
    let cap = Duration::from_secs(900);
    let mut seen = BTreeSet::new();
    for streak in 1..=8u32 {
        let full = first.saturating_mul(1 << (streak - 1)).min(cap);
        for i in 0..200 {
            let d = backoff_delay(first, cap, streak, 0.2, 42, &format!("sw-{i}"));
            assert!(d <= full, "{d:?} > {full:?}");
            assert!(d >= full.mul_f64(0.8), "{d:?} < 80 % of {full:?}");
            seen.insert(d.as_millis());
        }
    }
    assert!(seen.len() > 1000, "jitter should spread devices apart");
    // Through the scheduler, with the default 20 %.
    let inv = inventory(&rack(1, "1s"));
    let settings = Settings {
        seed: 99,
        ..Settings::default()
    };
    let mut s = Scheduler::with_settings(&inv, Instant::now(), wall0(), settings);
    let w = fail_repeatedly(&mut s, 1, &refused())[0];
    assert!(
        w >= Duration::from_secs(24) && w <= Duration::from_secs(30),
        "{w:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Caps

#[test]
fn a_group_at_its_cap_keeps_its_devices_due_until_a_session_ends() {
    let behind = (1..=5).map(|i| {
        Dev::new(&format!("behind-{i}"), "telnet")
            .set("host", "\"192.0.2.100\"")
            .set("port", &(2000 + i).to_string())
            .set("groups", &list(&["ts1"]))
    });
    let config = base()
        .defaults("interval", "\"1s\"")
        .group(Table::named("ts1").set("max_sessions", "2"))
        .devices(behind)
        .device(Dev::new("free", "telnet").set("host", "\"192.0.2.9\""));
    let inv = inventory(&config);
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    let now = t0 + Duration::from_secs(2);
    let first = s.take_due(now, 100);
    let behind: Vec<_> = first
        .iter()
        .filter(|d| d.device.name.starts_with("behind"))
        .collect();
    assert_eq!(behind.len(), 2, "{:?}", names(&first));
    assert!(names(&first).contains(&"free".to_string()));
    // The waiting ones do not make the loop spin: next_due skips them.
    let next = s.next_due().unwrap();
    assert!(next > now, "only running devices' next slots are left");
    assert!(s.take_due(now, 100).is_empty());
    let waiting = s
        .stats()
        .into_iter()
        .filter(|st| !st.running && st.next_due <= now)
        .count();
    assert_eq!(waiting, 3, "still due");

    // One ends: exactly one more of the group may start, the longest waiting first.
    s.finished(behind[0].id, &ok(), now + Duration::from_millis(10));
    let more = s.take_due(now + Duration::from_millis(10), 100);
    assert_eq!(more.len(), 1, "{:?}", names(&more));
    assert!(more[0].device.name.starts_with("behind"));

    // Drive the group for a while: never more than 2 at once, everyone gets a turn.
    let mut running: Vec<DeviceId> = vec![behind[1].id, more[0].id];
    let mut t = now + Duration::from_millis(20);
    let mut started = BTreeSet::new();
    for step in 0..200 {
        for d in s.take_due(t, 100) {
            if d.device.name.starts_with("behind") {
                running.push(d.id);
                started.insert(d.device.name.clone());
            } else {
                s.finished(d.id, &ok(), t);
            }
        }
        assert!(running.len() <= 2, "step {step}: {running:?}");
        if step % 3 == 0 && !running.is_empty() {
            s.finished(running.remove(0), &ok(), t);
        }
        t += Duration::from_millis(250);
    }
    assert_eq!(started.len(), 5, "{started:?}");
}

/// A directory with a stand-in device node and a by-id style symlink to it.
struct Ports {
    dir: TempDir,
}

impl Ports {
    fn new() -> Ports {
        let dir = TempDir::new("sched-ports").unwrap();
        std::fs::write(dir.join("ttyUSB0"), b"").unwrap();
        std::os::unix::fs::symlink(dir.join("ttyUSB0"), dir.join("usb-FTDI-A50285BI")).unwrap();
        Ports { dir }
    }
}

#[test]
fn one_serial_port_is_never_opened_twice_whatever_its_name() {
    let ports = Ports::new();
    let real = ports.dir.join("ttyUSB0");
    let link = ports.dir.join("usb-FTDI-A50285BI");
    let mut config = base().defaults("interval", "\"1s\"");
    for (name, path) in [("con-a", &real), ("con-b", &link), ("con-c", &real)] {
        config = config.device(
            Dev::new(name, "serial").set("serial_port", &format!("\"{}\"", path.display())),
        );
    }
    let config = config.device(
        Dev::new("con-other", "serial").set("serial_port", "\"/dev/ttyUSB-rackhand-test-none\""),
    );
    let inv = inventory(&config);
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&inv, t0, wall0(), no_jitter());
    let mut t = t0 + Duration::from_secs(2);
    let mut served = BTreeSet::new();
    for _ in 0..10 {
        let run = s.take_due(t, 100);
        let on_shared: Vec<_> = run
            .iter()
            .filter(|d| d.device.name != "con-other")
            .collect();
        assert!(on_shared.len() <= 1, "{:?}", names(&run));
        for d in &run {
            served.insert(d.device.name.clone());
        }
        t += Duration::from_millis(100);
        for d in run {
            s.finished(d.id, &ok(), t);
        }
    }
    assert_eq!(served.len(), 4, "each gets its turn: {served:?}");
}

// ---------------------------------------------------------------------------------------
// Reload

#[test]
fn reload_adds_drops_and_updates_devices_and_lets_running_work_finish() {
    let base = base()
        .defaults("interval", "\"1s\"")
        .group(Table::named("ts").set("max_sessions", "1"));
    let dev = |name: &str| {
        Dev::new(name, "telnet")
            .set("host", "\"192.0.2.1\"")
            .set("groups", &list(&["ts"]))
    };
    let old = inventory(&base.clone().device(dev("a")).device(dev("b")));
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&old, t0, wall0(), no_jitter());
    let now = t0 + Duration::from_secs(2);
    let run = s.take_due(now, 10);
    assert_eq!(run.len(), 1, "group cap 1");
    let (running_id, running_name) = (run[0].id, run[0].device.name.clone());
    let other = if running_name == "a" { "b" } else { "a" };

    // The running device is removed, the other changes, c is added.
    let new = inventory(
        &base
            .device(
                dev(other)
                    .set("commands", &list(&["show version"]))
                    .set("interval", "\"5s\""),
            )
            .device(dev("c")),
    );
    let r = s.reload(&new, now);
    assert_eq!(r.added, ["c"]);
    assert_eq!(r.removed, [running_name.as_str()]);
    assert_eq!(r.changed, [other]);
    assert!(s.device_stats(&running_name).is_none());
    assert_eq!(s.in_flight(), 1, "its run goes on");
    // And it still holds the group's only slot.
    assert!(s.take_due(now + Duration::from_secs(10), 10).is_empty());
    s.finished(running_id, &ok(), now + Duration::from_secs(10));
    assert_eq!(s.in_flight(), 0);
    let t = now + Duration::from_secs(10);
    let next = s.take_due(t, 10);
    assert_eq!(next.len(), 1);
    let d = &next[0];
    if d.device.name == other {
        assert_eq!(d.device.commands, ["show version"], "new settings");
        assert_eq!(d.device.interval, Duration::from_secs(5));
    } else {
        assert_eq!(d.device.name, "c");
    }
    s.finished(d.id, &ok(), t);
    let later = s.take_due(t + Duration::from_secs(10), 10);
    assert_eq!(later.len(), 1);
    assert_ne!(later[0].device.name, d.device.name, "the other one's turn");
    // The changed device keeps to its new 5 s grid.
    let st = s.device_stats(other).unwrap();
    let phase = since_epoch(st.next_due_at).as_nanos() % 5_000_000_000;
    assert_eq!(phase, offset(other, Duration::from_secs(5)).as_nanos());
}

#[test]
fn a_device_removed_and_added_back_while_running_is_not_run_twice() {
    let one = inventory(&rack(1, "1s"));
    let t0 = Instant::now();
    let mut s = Scheduler::with_settings(&one, t0, wall0(), no_jitter());
    let now = t0 + Duration::from_secs(2);
    let id = s.take_due(now, 1)[0].id;
    let empty = inventory(&base());
    assert_eq!(s.reload(&empty, now).removed, ["sw-1"]);
    assert_eq!(s.reload(&one, now).added, ["sw-1"]);
    assert_eq!(s.id_of("sw-1"), Some(id), "same name, same id");
    assert!(s.take_due(now + Duration::from_secs(5), 8).is_empty());
    s.finished(id, &ok(), now + Duration::from_secs(5));
    assert_eq!(s.take_due(now + Duration::from_secs(6), 8).len(), 1);
}

#[test]
fn a_changed_device_forgets_its_backoff() {
    let inv = inventory(&rack(1, "1s"));
    let mut s = Scheduler::with_settings(&inv, Instant::now(), wall0(), no_jitter());
    fail_repeatedly(&mut s, 4, &refused());
    let st = s.device_stats("sw-1").unwrap();
    assert!(st.backing_off);
    let now = st.next_due - Duration::from_secs(100);
    let fixed = inventory(&rack(1, "1s").defaults("password", "\"fixed\""));
    assert_eq!(s.reload(&fixed, now).changed, ["sw-1"]);
    let st = s.device_stats("sw-1").unwrap();
    assert!(!st.backing_off);
    assert_eq!(st.consecutive_session_failures, 0);
    assert!(st.next_due <= now + Duration::from_secs(1));
}

// ---------------------------------------------------------------------------------------
// End to end: scheduler + pool + simulated devices

/// The agent's loop in small (what `rackhand run` does): start what is due and fits, wait
/// for the pool's events until the next due time, feed finished runs back. Ends when
/// `done` holds; fails the test at `deadline`.
fn drive(
    scheduler: &mut Scheduler,
    pool: &Pool<DeviceId>,
    deadline: Instant,
    done: impl Fn(&Scheduler) -> bool,
    mut seen: impl FnMut(&Outcome),
) {
    while !done(scheduler) {
        let now = Instant::now();
        assert!(
            now < deadline,
            "the loop did not get there in time; devices: {:#?}",
            scheduler.stats()
        );
        for d in scheduler.take_due(now, pool.vacancies()) {
            if let Err(e) = pool.submit(d.id, d.device) {
                panic!("the loop only submits what fits: {e}");
            }
        }
        let wait = match scheduler.next_due() {
            Some(at) if pool.vacancies() > 0 => at.saturating_duration_since(now),
            _ => Duration::from_secs(1),
        };
        match pool.events().recv_timeout(wait.min(deadline - now)) {
            Ok(PoolEvent::Outcome { outcome, .. }) => seen(&outcome),
            Ok(PoolEvent::Finished { key, summary, .. }) => {
                scheduler.finished(key, &summary, Instant::now())
            }
            Ok(PoolEvent::Started { .. } | PoolEvent::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!("the pool's workers are gone"),
        }
    }
}

fn collect_work() -> Arc<Work> {
    Arc::new(|device: &Device, emit: &mut dyn FnMut(Outcome)| {
        rackhand::session::collect_each(device, &device.commands, emit)
    })
}

/// Sessions the collector holds at once, counted on its side: the simulator's own count also
/// holds, for a moment, sessions the collector has hung up on (it closes a network session
/// without waiting for the device's answer to `exit`) and the simulator has not noticed yet.
#[derive(Default)]
struct SessionsAtOnce {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl SessionsAtOnce {
    /// [`collect_work`], counted.
    fn counted_work(self: &Arc<Self>) -> Arc<Work> {
        let counter = Arc::clone(self);
        Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
            let now = counter.now.fetch_add(1, Ordering::SeqCst) + 1;
            counter.max.fetch_max(now, Ordering::SeqCst);
            rackhand::session::collect_each(device, &device.commands, emit);
            counter.now.fetch_sub(1, Ordering::SeqCst);
        })
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// The config for the devices of a simulated rack.
fn sim_config(rack: &TelnetRack, interval: &str) -> Config {
    let addrs = rack.addrs();
    let devices = (addrs.iter().enumerate())
        .map(|(i, (_, addr))| Dev::telnet(&format!("sim-{}", i + 1), *addr));
    base()
        .defaults("interval", &format!("\"{interval}\""))
        .defaults("connect_timeout", "\"10s\"")
        .defaults("command_timeout", "\"10s\"")
        .devices(devices)
}

#[test]
fn a_slow_device_is_not_collected_again_while_its_collection_runs() {
    let mut profile = Profile::for_platform("cisco_ios")
        .unwrap()
        .with_fault("show version", Fault::Slow);
    profile.slow_duration = Duration::from_millis(700);
    let rack = TelnetRack::start(loopback_any_port(), 1, profile).expect("start the simulator");
    // `show version` has many lines to trickle out over the slow fault's 700 ms.
    let config = sim_config(&rack, "100ms").defaults("commands", &list(&["show version"]));
    let inv = inventory(&config);
    let pool: Pool<DeviceId> = Pool::new(4, 4, collect_work()).unwrap();
    let mut scheduler = Scheduler::new(&inv, Instant::now(), SystemTime::now());
    let mut statuses = Vec::new();
    drive(
        &mut scheduler,
        &pool,
        Instant::now() + Duration::from_secs(30),
        |s| s.device_stats("sim-1").unwrap().runs == 1,
        |o| statuses.push(o.status),
    );
    assert_eq!(statuses, [Status::Ok], "slow, not failed");
    let st = scheduler.device_stats("sim-1").unwrap();
    assert!(st.skipped >= 5, "a 700 ms run over 100 ms slots: {st:?}");
    assert_eq!(
        rack.stats().total(),
        1,
        "one session while four workers sat idle"
    );
    assert_eq!(rack.stats().max_concurrent_per_device(), 1);
    drop(pool);
    rack.stop();
}

#[test]
fn a_hundred_simulated_devices_are_each_collected_through_scheduler_and_pool() {
    const DEVICES: usize = 100;
    const WORKERS: usize = 8;
    // A little latency per command, so sessions overlap and devices wait for workers.
    let mut profile = Profile::for_platform("cisco_ios").unwrap();
    profile.latency = Duration::from_millis(20);
    let rack =
        TelnetRack::start(loopback_any_port(), DEVICES, profile).expect("start the simulated rack");
    let inv = inventory(&sim_config(&rack, "200ms"));
    let sessions = Arc::new(SessionsAtOnce::default());
    let pool: Pool<DeviceId> = Pool::new(WORKERS, WORKERS, sessions.counted_work()).unwrap();
    let mut scheduler = Scheduler::new(&inv, Instant::now(), SystemTime::now());

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut outcomes: BTreeMap<String, Vec<Status>> = BTreeMap::new();
    let mut errors = Vec::new();
    drive(
        &mut scheduler,
        &pool,
        deadline,
        |s| s.stats().iter().all(|s| s.runs > 0),
        |outcome| {
            if outcome.status != Status::Ok {
                errors.push(format!("{}: {:?}", outcome.device, outcome.error));
            }
            outcomes
                .entry(outcome.device.clone())
                .or_default()
                .push(outcome.status);
        },
    );
    // Drain as `rackhand run` does on SIGTERM: nothing new starts, running work finishes.
    for key in pool.close() {
        scheduler.unstarted(key);
    }
    while scheduler.in_flight() > 0 {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("in-flight runs should finish before the deadline");
        match pool.events().recv_timeout(left) {
            Ok(PoolEvent::Finished { key, summary, .. }) => {
                scheduler.finished(key, &summary, Instant::now())
            }
            Ok(PoolEvent::Outcome { outcome, .. }) if outcome.status != Status::Ok => {
                errors.push(format!("{}: {:?}", outcome.device, outcome.error));
            }
            Ok(_) => {}
            Err(e) => panic!("draining the pool: {e}"),
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(outcomes.len(), DEVICES);
    assert!(
        outcomes
            .values()
            .all(|s| s.iter().all(|s| *s == Status::Ok))
    );
    let stats = rack.stats();
    assert!(
        sessions.max() <= WORKERS,
        "the collector held {} sessions at once",
        sessions.max()
    );
    assert!(
        sessions.max() >= 2 && stats.max_concurrent() >= 2,
        "sessions should overlap with {WORKERS} workers"
    );
    assert_eq!(stats.max_concurrent_per_device(), 1);
    let runs: u64 = scheduler.stats().iter().map(|s| s.runs).sum();
    assert_eq!(stats.total(), runs, "one session per finished run");
    // 100 sessions of 40 ms and more on 8 workers take longer than one 200 ms interval: the
    // devices served last waited past a slot, which counts as skipped rather than piling up.
    let skipped: u64 = scheduler.stats().iter().map(|s| s.skipped).sum();
    assert!(skipped > 0);
    drop(pool);
    rack.stop();
}

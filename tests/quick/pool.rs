//! The agent's worker pool from the outside: exactly `workers` threads, a queue that refuses
//! when full instead of growing, a panicking driver turned into `driver_crashed` records while
//! the worker goes on, and a shutdown that drops what never started and waits (bounded) for
//! what runs.
//!
//! Jobs here are closures standing in for sessions; they block on gates the test opens (with
//! a deadline each), so every ordering is an event, never a sleep.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant, SystemTime};

use rackhand::inventory::Device;
use rackhand::pool::{Pool, PoolError, PoolEvent, RunSummary, Work};
use rackhand::record::{Outcome, Status};

use crate::support::config::{Config, Dev, list};

const STEP: Duration = Duration::from_secs(10);

/// Devices `names`, each with `commands`, resolved from config text as the agent does.
fn devices(names: &[&str], commands: &[&str]) -> Vec<Arc<Device>> {
    let devices = names
        .iter()
        .enumerate()
        .map(|(i, n)| Dev::new(n, "telnet").set("host", &format!("\"192.0.2.{}\"", i + 1)));
    let config = Config::new()
        .defaults("platform", "\"cisco_ios\"")
        .defaults("username", "\"u\"")
        .defaults("password", "\"p\"")
        .defaults("commands", &list(commands))
        .devices(devices);
    let inv = config.inventory(Path::new("/tmp/pool-test.toml"));
    inv.devices.into_iter().map(Arc::new).collect()
}

fn ok_outcome(device: &Device, command: &str) -> Outcome {
    Outcome {
        device: device.name.clone(),
        transport: device.transport.as_str().to_string(),
        command: command.to_string(),
        status: Status::Ok,
        error: None,
        output: b"fine\n".to_vec(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
    }
}

/// Work that reports every command `ok`.
fn all_ok(device: &Device, emit: &mut dyn FnMut(Outcome)) {
    for c in &device.commands {
        emit(ok_outcome(device, c));
    }
}

/// Reads events until `count` runs finished; returns them with every outcome seen.
fn finished<K: Copy + std::fmt::Debug>(
    events: &Receiver<PoolEvent<K>>,
    count: usize,
) -> (Vec<(K, RunSummary)>, Vec<Outcome>) {
    let deadline = Instant::now() + STEP;
    let (mut done, mut outcomes) = (Vec::new(), Vec::new());
    while done.len() < count {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("only {} of {count} runs finished", done.len()));
        match events.recv_timeout(left) {
            Ok(PoolEvent::Finished { key, summary, .. }) => done.push((key, summary)),
            Ok(PoolEvent::Outcome { outcome, .. }) => outcomes.push(outcome),
            Ok(PoolEvent::Started { .. } | PoolEvent::Wake) => {}
            Err(e) => panic!("waiting for runs to finish: {e}"),
        }
    }
    (done, outcomes)
}

fn started<K: Copy + std::fmt::Debug + PartialEq>(events: &Receiver<PoolEvent<K>>, key: K) {
    match events.recv_timeout(STEP) {
        Ok(PoolEvent::Started { key: k, .. }) if k == key => {}
        other => panic!("expected {key:?} to start, got {other:?}"),
    }
}

/// A gate jobs wait at until the test opens it (or their deadline passes).
#[derive(Clone)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn new() -> Gate {
        Gate(Arc::new((Mutex::new(false), Condvar::new())))
    }

    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// True if opened before `limit`.
    fn wait(&self, limit: Duration) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, limit, |open| !*open)
            .unwrap();
        *guard
    }
}

#[test]
fn exactly_n_worker_threads_run_the_jobs() {
    const N: usize = 4;
    // Each job records its thread, then waits until N jobs are inside at once: that can only
    // happen with N threads, and 3N jobs on more threads would show more ids.
    let inside = Arc::new((Mutex::new(0usize), Condvar::new()));
    let (ids_tx, ids_rx): (Sender<(ThreadId, String, bool)>, _) = mpsc::channel();
    let ids_tx = Mutex::new(ids_tx);
    let work: Arc<Work> = {
        let inside = Arc::clone(&inside);
        Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
            let (count, cond) = &*inside;
            let mut n = count.lock().unwrap();
            *n += 1;
            cond.notify_all();
            let (n, timeout) = cond.wait_timeout_while(n, STEP, |n| *n < N).unwrap();
            drop(n);
            let me = std::thread::current();
            ids_tx
                .lock()
                .unwrap()
                .send((
                    me.id(),
                    me.name().unwrap_or("").to_string(),
                    !timeout.timed_out(),
                ))
                .unwrap();
            all_ok(device, emit);
        })
    };
    let names: Vec<String> = (0..3 * N).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let devs = devices(&refs, &["show clock"]);
    let pool: Pool<usize> = Pool::new(N, 3 * N, work).unwrap();
    assert_eq!(pool.workers(), N);
    for (i, d) in devs.iter().enumerate() {
        pool.submit(i, Arc::clone(d)).unwrap();
    }
    let (done, outcomes) = finished(pool.events(), 3 * N);
    assert_eq!(done.len(), 3 * N);
    assert_eq!(outcomes.len(), 3 * N);
    assert!(done.iter().all(|(_, s)| s.all_ok()));
    let seen: Vec<_> = ids_rx.try_iter().collect();
    assert_eq!(seen.len(), 3 * N);
    assert!(
        seen.iter().all(|(_, _, met)| *met),
        "N jobs never ran at once"
    );
    let threads: BTreeSet<String> = seen.iter().map(|(id, _, _)| format!("{id:?}")).collect();
    assert_eq!(threads.len(), N, "distinct worker threads");
    assert!(
        seen.iter()
            .all(|(_, name, _)| name.starts_with("rackhand-worker-"))
    );
    assert!(!threads.contains(&format!("{:?}", std::thread::current().id())));
}

#[test]
fn a_full_queue_refuses_and_takes_again_once_there_is_room() {
    let gate = Gate::new();
    let work: Arc<Work> = {
        let gate = gate.clone();
        Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
            assert!(gate.wait(STEP), "the test never opened the gate");
            all_ok(device, emit);
        })
    };
    let devs = devices(&["a", "b", "c", "d"], &["show clock"]);
    let pool: Pool<usize> = Pool::new(1, 2, work).unwrap();
    assert_eq!(pool.vacancies(), 2);
    pool.submit(0, Arc::clone(&devs[0])).unwrap();
    started(pool.events(), 0);
    assert_eq!(pool.busy(), 1);
    pool.submit(1, Arc::clone(&devs[1])).unwrap();
    pool.submit(2, Arc::clone(&devs[2])).unwrap();
    assert_eq!((pool.queued(), pool.vacancies()), (2, 0));
    let err = pool.submit(3, Arc::clone(&devs[3])).unwrap_err();
    assert!(matches!(err, PoolError::Full { queued: 2, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`d`") && msg.contains("workers"), "{msg}");

    gate.open();
    let (done, _) = finished(pool.events(), 3);
    let keys: BTreeSet<usize> = done.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, BTreeSet::from([0, 1, 2]));
    assert_eq!(pool.vacancies(), 2);
    pool.submit(3, Arc::clone(&devs[3])).unwrap();
    let (done, _) = finished(pool.events(), 1);
    assert_eq!(done[0].0, 3);
}

#[test]
fn a_panicking_driver_yields_driver_crashed_and_the_worker_goes_on() {
    let (tid_tx, tid_rx) = mpsc::channel::<ThreadId>();
    let tid_tx = Mutex::new(tid_tx);
    let work: Arc<Work> = Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
        tid_tx
            .lock()
            .unwrap()
            .send(std::thread::current().id())
            .unwrap();
        if device.name == "boom" {
            emit(ok_outcome(device, &device.commands[0]));
            panic!("index out of range in the fake driver");
        }
        all_ok(device, emit);
    });
    let devs = devices(
        &["boom", "fine"],
        &["show version", "show clock", "show users"],
    );
    let pool: Pool<&'static str> = Pool::new(1, 4, work).unwrap();
    pool.submit("boom", Arc::clone(&devs[0])).unwrap();
    let (done, outcomes) = finished(pool.events(), 1);
    let statuses: Vec<(String, Status)> = outcomes
        .iter()
        .map(|o| (o.command.clone(), o.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("show version".to_string(), Status::Ok),
            ("show clock".to_string(), Status::DriverCrashed),
            ("show users".to_string(), Status::DriverCrashed),
        ]
    );
    let error = outcomes[1].error.as_deref().unwrap();
    assert!(
        error.contains("boom") && error.contains("index out of range"),
        "{error}"
    );
    let summary = &done[0].1;
    assert_eq!(summary.session_failure, Some(Status::DriverCrashed));
    assert_eq!((summary.commands, summary.ok), (3, 1));

    pool.submit("fine", Arc::clone(&devs[1])).unwrap();
    let (done, outcomes) = finished(pool.events(), 1);
    assert!(done[0].1.all_ok());
    assert_eq!(outcomes.len(), 3);
    let threads: Vec<ThreadId> = tid_rx.try_iter().collect();
    assert_eq!(threads.len(), 2);
    assert_eq!(threads[0], threads[1], "the same worker lived on");
}

#[test]
fn close_drops_what_never_started_and_join_waits_for_what_runs() {
    let gate = Gate::new();
    let work: Arc<Work> = {
        let gate = gate.clone();
        Arc::new(move |device: &Device, emit: &mut dyn FnMut(Outcome)| {
            assert!(gate.wait(STEP), "the test never opened the gate");
            all_ok(device, emit);
        })
    };
    let devs = devices(&["a", "b", "c"], &["show clock"]);
    let mut pool: Pool<usize> = Pool::new(1, 4, work).unwrap();
    pool.submit(0, Arc::clone(&devs[0])).unwrap();
    started(pool.events(), 0);
    pool.submit(1, Arc::clone(&devs[1])).unwrap();
    pool.submit(2, Arc::clone(&devs[2])).unwrap();
    assert_eq!(pool.close(), [1, 2], "queued jobs come back, never started");
    assert!(matches!(
        pool.submit(1, Arc::clone(&devs[1])),
        Err(PoolError::Closed { .. })
    ));
    assert_eq!(pool.vacancies(), 0);
    // The running session outlives a short deadline...
    let err = pool
        .join(Instant::now() + Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(err, PoolError::StillRunning { running: 1 }),
        "{err:?}"
    );
    // ...and finishes, reported as usual, once it can.
    gate.open();
    pool.join(Instant::now() + STEP).unwrap();
    let (done, _) = finished(pool.events(), 1);
    assert_eq!(done[0].0, 0);
    match pool.events().recv_timeout(Duration::from_millis(10)) {
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        Ok(e) => panic!("nothing else should run after close: {e:?}"),
    }
}

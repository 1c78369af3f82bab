//! Worker pools: a fixed number of threads that run device sessions.
//!
//! Threads are for waiting on devices (blocking I/O), and a Raspberry Pi has little memory,
//! so their number is fixed: exactly `workers` threads, never one per device. Two shapes
//! share the per-device part ([`work_on`]): a panic in one device's work is caught and becomes
//! `driver_crashed` outcomes for the commands it did not finish, and the worker goes on.
//!
//! - [`run`]: one pass over a list (`rackhand collect`), scoped threads, returns when done.
//! - [`Pool`]: the agent's long-running pool. The scheduler submits devices into a **bounded**
//!   queue; [`Pool::submit`] refuses when it is full rather than letting work pile up in
//!   memory (the scheduler keeps the device due). Workers report on one channel
//!   ([`Pool::events`]) that the scheduler loop reads: each outcome as it comes, then a
//!   `Finished` event with the run's [`RunSummary`].
//!
//! The pool does not decide *which* device may run: the scheduler guarantees one run per
//! device, per serial port, and group caps before it submits.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::inventory::Device;
pub use crate::outcome::RunSummary;
use crate::outcome::{Outcome, Status};

/// How long dropping a [`Pool`] waits for running sessions before leaving their threads to
/// end on their own (each session is bounded by its own timeouts).
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// What a device's work does: run its session, handing each outcome to the callback.
pub type Work = dyn Fn(&Device, &mut dyn FnMut(Outcome)) + Send + Sync;

/// The same, borrowed by scoped threads (which need not move it: no `Send`).
pub type ScopedWork<'a> = dyn Fn(&Device, &mut dyn FnMut(Outcome)) + Sync + 'a;

/// What [`run`]'s workers report while they work.
#[derive(Debug)]
pub enum Event {
    /// A device's session starts (for progress displays).
    Started { device: usize },
    /// One command's outcome.
    Outcome { device: usize, outcome: Outcome },
    /// A device is done.
    Finished { device: usize, elapsed: Duration },
}

/// Runs `work` for every device on `workers` threads, sending events as they happen. Returns
/// when every device is done.
pub fn run<F>(devices: &[Device], workers: usize, events: Sender<Event>, work: F)
where
    F: Fn(&Device, &mut dyn FnMut(Outcome)) + Sync,
{
    let next = AtomicUsize::new(0);
    let workers = workers.clamp(1, devices.len().max(1));
    std::thread::scope(|scope| {
        for w in 0..workers {
            let events = events.clone();
            let next = &next;
            let work = &work;
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn_scoped(scope, move || {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(device) = devices.get(index) else {
                            break;
                        };
                        let _ = events.send(Event::Started { device: index });
                        let start = Instant::now();
                        work_on(device, work, &mut |outcome| {
                            let _ = events.send(Event::Outcome {
                                device: index,
                                outcome,
                            });
                        });
                        let _ = events.send(Event::Finished {
                            device: index,
                            elapsed: start.elapsed(),
                        });
                    }
                })
                .expect("spawn a worker thread");
        }
    });
}

/// Runs `work` for one device, catching a panic: the commands it had not reported yet get
/// `driver_crashed` outcomes. Every outcome goes to `emit`; the summary of them all is
/// returned.
pub fn work_on(
    device: &Device,
    work: &ScopedWork<'_>,
    emit: &mut dyn FnMut(Outcome),
) -> RunSummary {
    let mut summary = RunSummary::default();
    let result = catch_unwind(AssertUnwindSafe(|| {
        work(device, &mut |outcome| {
            summary.observe(&outcome);
            emit(outcome);
        })
    }));
    if let Err(panic) = result {
        let why = panic_message(&panic);
        log::error!(
            "{}: driver panicked: {why}; the device backs off, the agent goes on",
            device.name
        );
        let remaining = device.commands.iter().skip(summary.commands);
        let mut crashed_any = false;
        for command in remaining {
            let outcome = crashed(device, command, &why);
            summary.observe(&outcome);
            emit(outcome);
            crashed_any = true;
        }
        // A panic after the last outcome still says the driver is broken.
        if !crashed_any {
            summary.session_failure = Some(Status::DriverCrashed);
            summary.error = Some(format!("{}: the driver panicked: {why}", device.name));
        }
    }
    summary.settle();
    summary
}

fn crashed(device: &Device, command: &str, why: &str) -> Outcome {
    Outcome {
        device: device.name.clone(),
        transport: device.transport.as_str().to_string(),
        command: command.to_string(),
        status: Status::DriverCrashed,
        error: Some(format!("{}: the driver panicked: {why}", device.name)),
        output: Vec::new(),
        started_at: SystemTime::now(),
        duration: Duration::ZERO,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

// ---------------------------------------------------------------------------------------
// The long-running pool

/// Why the pool would not take a job or did not stop in time.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "cannot queue device `{device}`: the worker queue is full ({queued} waiting for {workers} workers); it stays due. If this persists, raise [agent] workers or lengthen the interval"
    )]
    Full {
        device: String,
        queued: usize,
        workers: usize,
    },
    #[error("cannot queue device `{device}`: the worker pool is shutting down")]
    Closed { device: String },
    #[error(
        "cannot start worker thread {index}: {source}; lower [agent] workers or raise the process's thread limit"
    )]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
    #[error(
        "{running} worker(s) still busy with a session at the stop deadline; they end at their session's own timeouts"
    )]
    StillRunning { running: usize },
}

/// What the pool's workers report, keyed by the submitter's `K` (the scheduler's id).
#[derive(Debug)]
pub enum PoolEvent<K> {
    /// A worker took the device from the queue.
    Started { key: K, device: String },
    /// One command's outcome, as soon as it is known.
    Outcome { key: K, outcome: Outcome },
    /// The device's run is over: every outcome was sent before this.
    Finished {
        key: K,
        summary: RunSummary,
        elapsed: Duration,
    },
    /// Sent through [`Pool::waker`] by someone other than a worker (a signal handler thread)
    /// so the loop reading events wakes up at once.
    Wake,
}

struct Job<K> {
    key: K,
    device: Arc<Device>,
}

struct State<K> {
    queue: VecDeque<Job<K>>,
    closed: bool,
    /// Workers inside a job.
    busy: usize,
    /// Workers whose thread has not ended.
    live: usize,
}

struct Shared<K> {
    state: Mutex<State<K>>,
    /// A job was queued, or the pool closed.
    wake: Condvar,
    /// A worker ended (for `join`).
    ended: Condvar,
}

impl<K> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Jobs run outside the lock and panics are caught, so a poisoned lock only means a
        // bug in this file; the state is still consistent counters and a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Exactly `workers` threads and a queue of at most `queue` waiting jobs.
pub struct Pool<K: Copy + Send + fmt::Debug + 'static> {
    shared: Arc<Shared<K>>,
    events: Receiver<PoolEvent<K>>,
    waker: mpsc::Sender<PoolEvent<K>>,
    threads: Vec<JoinHandle<()>>,
    workers: usize,
    capacity: usize,
}

impl<K: Copy + Send + fmt::Debug + 'static> Pool<K> {
    /// Starts `workers` threads (at least 1) running `work` for each submitted device; at
    /// most `queue` (at least 1) devices wait for a free worker.
    pub fn new(workers: usize, queue: usize, work: Arc<Work>) -> Result<Pool<K>, PoolError> {
        let workers = workers.max(1);
        let capacity = queue.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(capacity),
                closed: false,
                busy: 0,
                live: 0,
            }),
            wake: Condvar::new(),
            ended: Condvar::new(),
        });
        // Unbounded, yet bounded in practice: only jobs the loop submitted report, and the
        // loop that submits is the one that reads.
        let (tx, events) = mpsc::channel();
        let mut pool = Pool {
            shared,
            events,
            waker: tx.clone(),
            threads: Vec::with_capacity(workers),
            workers,
            capacity,
        };
        for index in 0..workers {
            let (shared, tx, work) = (Arc::clone(&pool.shared), tx.clone(), Arc::clone(&work));
            shared.lock().live += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("rackhand-worker-{index}"))
                .spawn(move || worker(&shared, &tx, &*work));
            match spawned {
                Ok(handle) => pool.threads.push(handle),
                Err(source) => {
                    pool.shared.lock().live -= 1;
                    // Dropping `pool` stops the workers already started.
                    return Err(PoolError::Spawn { index, source });
                }
            }
        }
        Ok(pool)
    }

    /// A sender into the event channel, for waking the loop with [`PoolEvent::Wake`].
    pub fn waker(&self) -> mpsc::Sender<PoolEvent<K>> {
        self.waker.clone()
    }

    /// Queues `device` for the next free worker, or refuses at once when the queue is full.
    pub fn submit(&self, key: K, device: Arc<Device>) -> Result<(), PoolError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(PoolError::Closed {
                device: device.name.clone(),
            });
        }
        if state.queue.len() >= self.capacity {
            return Err(PoolError::Full {
                device: device.name.clone(),
                queued: state.queue.len(),
                workers: self.workers,
            });
        }
        state.queue.push_back(Job { key, device });
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// How many more devices [`submit`](Self::submit) takes right now (0 once closed).
    pub fn vacancies(&self) -> usize {
        let state = self.shared.lock();
        if state.closed {
            0
        } else {
            self.capacity - state.queue.len()
        }
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Workers inside a job now.
    pub fn busy(&self) -> usize {
        self.shared.lock().busy
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Where workers report; read it from the scheduler loop.
    pub fn events(&self) -> &Receiver<PoolEvent<K>> {
        &self.events
    }

    /// Stops taking jobs and drops the queued ones (returned, never started); running jobs
    /// finish and report as usual. Workers end when their job is done.
    pub fn close(&self) -> Vec<K> {
        let mut state = self.shared.lock();
        state.closed = true;
        let cancelled = state.queue.drain(..).map(|j| j.key).collect();
        drop(state);
        self.shared.wake.notify_all();
        cancelled
    }

    /// Closes the pool and waits until every worker has ended or `deadline` passed. Events
    /// of the last jobs stay readable on [`events`](Self::events).
    pub fn join(&mut self, deadline: Instant) -> Result<(), PoolError> {
        self.close();
        let mut state = self.shared.lock();
        while state.live > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(PoolError::StillRunning {
                    running: state.busy,
                });
            }
            state = self
                .shared
                .ended
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(state);
        for handle in self.threads.drain(..) {
            // A worker catches its jobs' panics; one that still died has nothing to hand back.
            let _ = handle.join();
        }
        Ok(())
    }
}

impl<K: Copy + Send + fmt::Debug + 'static> Drop for Pool<K> {
    fn drop(&mut self) {
        if let Err(e) = self.join(Instant::now() + DROP_GRACE) {
            log::warn!("worker pool dropped: {e}");
        }
    }
}

/// A worker: takes jobs until the pool closes.
fn worker<K: Copy + Send + fmt::Debug>(
    shared: &Shared<K>,
    events: &Sender<PoolEvent<K>>,
    work: &Work,
) {
    // Runs on every exit path, so `join` never waits for a worker that is gone.
    struct Ended<'a, K>(&'a Shared<K>);
    impl<K> Drop for Ended<'_, K> {
        fn drop(&mut self) {
            self.0.lock().live -= 1;
            self.0.ended.notify_all();
        }
    }
    let _ended = Ended(shared);
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if let Some(job) = state.queue.pop_front() {
                    state.busy += 1;
                    break job;
                }
                if state.closed {
                    return;
                }
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let _ = events.send(PoolEvent::Started {
            key: job.key,
            device: job.device.name.clone(),
        });
        let start = Instant::now();
        let summary = work_on(&job.device, work, &mut |outcome| {
            let _ = events.send(PoolEvent::Outcome {
                key: job.key,
                outcome,
            });
        });
        shared.lock().busy -= 1;
        let _ = events.send(PoolEvent::Finished {
            key: job.key,
            summary,
            elapsed: start.elapsed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn outcome(status: Status, at: u64, output: &[u8], error: Option<&str>) -> Outcome {
        Outcome {
            device: "d".into(),
            transport: "telnet".into(),
            command: "show clock".into(),
            status,
            error: error.map(str::to_string),
            output: output.to_vec(),
            started_at: UNIX_EPOCH + Duration::from_secs(at),
            duration: Duration::ZERO,
        }
    }

    fn summary(outcomes: &[Outcome]) -> RunSummary {
        let mut s = RunSummary::default();
        for o in outcomes {
            s.observe(o);
        }
        s.settle();
        s
    }

    #[test]
    fn a_failed_open_is_a_session_failure() {
        for status in [
            Status::ConnectFailed,
            Status::AuthFailed,
            Status::HostKeyMismatch,
            Status::PortBusy,
            Status::DriverCrashed,
        ] {
            let o = outcome(status, 1, b"", Some("no"));
            let s = summary(&[o.clone(), o]);
            assert_eq!(s.session_failure, Some(status));
            assert!(!s.all_ok());
        }
    }

    #[test]
    fn a_login_timeout_backs_off_a_command_timeout_does_not() {
        let login = outcome(Status::Timeout, 1, b"", Some("no CLI prompt"));
        assert_eq!(
            summary(&[login.clone(), login]).session_failure,
            Some(Status::Timeout)
        );
        // The first command timed out after the session opened; the second ran on its own.
        let first = outcome(
            Status::Timeout,
            1,
            b"",
            Some("no prompt within command_timeout"),
        );
        let second = outcome(Status::Ok, 3, b"12:00\n", None);
        assert_eq!(summary(&[first.clone(), second]).session_failure, None);
        // ... but a reconnect that then failed is one.
        let reconnect = outcome(Status::ConnectFailed, 3, b"", Some("refused"));
        assert_eq!(
            summary(&[first, reconnect]).session_failure,
            Some(Status::ConnectFailed)
        );
        // Output came: the session was open.
        let partial = outcome(Status::Timeout, 1, b"half", Some("no prompt"));
        assert_eq!(summary(&[partial]).session_failure, None);
    }

    #[test]
    fn command_errors_count_as_failures_not_session_failures() {
        let s = summary(&[
            outcome(Status::Ok, 1, b"x", None),
            outcome(Status::CommandError, 2, b"% Invalid", Some("rejected")),
        ]);
        assert_eq!(s.commands, 2);
        assert_eq!(s.ok, 1);
        assert_eq!(s.session_failure, None);
        assert_eq!(s.error.as_deref(), Some("rejected"));
        assert!(!s.all_ok());
        assert!(summary(&[outcome(Status::Ok, 1, b"x", None)]).all_ok());
        assert!(!RunSummary::default().all_ok(), "no outcome is no success");
    }
}

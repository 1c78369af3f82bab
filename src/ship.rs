//! The shipper: the thread that moves records from the spool to the sink.
//!
//! The agent's loop appends records to the spool and commits them (group commit); only then
//! does it tell the shipper how far the spool is durable. The shipper reads from the first
//! record upstream has not acknowledged, cuts batches ([`Batcher`]), hands each to the sink
//! and acknowledges it in the spool only once the sink returned `Ok`. So a record leaves the
//! spool after upstream has it, never before, and nothing is shipped that a crash could take
//! back: delivery is at-least-once across crashes of the agent and outages of the uplink.
//!
//! One batch is in flight at a time, and its last seq is written to `state_dir/ship-cut`
//! before it is sent; after a restart the batcher cuts the resend at the same place, so it
//! carries the same `Idempotency-Key`. Memory stays bounded however large the spool: one
//! open batch, one batch in flight, one record read ahead.
//!
//! The sink retries by itself; the shipper only adds a backoff between calls that failed
//! outright (a full disk under the file sink) and keeps the [`ShipReport`] that logs and
//! `rackhand status` show.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{Batch, BatchLimits, Batcher};
use crate::seq::write_atomically;
use crate::sink::{Backoff, Jitter, Retry, Sink, StopFlag};
use crate::spool::{Reader, Spool, SpoolError};

/// The file in `state_dir` that names the last seq of the batch in flight.
pub const SHIP_CUT_FILE: &str = "ship-cut";

/// How long one call to the sink may retry by itself before the shipper looks again (it
/// calls again at once with the same batch; this only bounds a single call).
const SHIP_CALL: Duration = Duration::from_secs(3600);

/// The spool, shared by the agent's loop (append, commit) and the shipper (read, ack), and
/// how far it is durable.
pub struct SpoolShare {
    spool: Mutex<Spool>,
    progress: Mutex<Progress>,
    changed: Condvar,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every record up to this seq is committed.
    durable: u64,
    /// The agent stops: ship what is durable, then end.
    closing: bool,
    stopped: bool,
}

impl SpoolShare {
    /// Everything a freshly opened spool holds is on disk already.
    pub fn new(spool: Spool) -> Arc<SpoolShare> {
        let durable = spool.stats().last_seq;
        Arc::new(SpoolShare {
            spool: Mutex::new(spool),
            progress: Mutex::new(Progress {
                durable,
                closing: false,
                stopped: false,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every record up to this seq is committed.
    pub fn durable(&self) -> u64 {
        self.progress().durable
    }

    /// Records up to `seq` are committed: the shipper may send them.
    pub fn committed(&self, seq: u64) {
        let mut p = self.progress();
        if seq > p.durable {
            p.durable = seq;
            self.changed.notify_all();
        }
    }

    /// Commits the spool if its cadence says so (or now, with `force`, when anything waits),
    /// and tells the shipper.
    pub fn commit(&self, now: Instant, force: bool) -> Result<bool, SpoolError> {
        let last = {
            let mut spool = self.lock();
            let done = if force {
                if spool.stats().uncommitted_records > 0 {
                    spool.commit()?;
                }
                true
            } else {
                spool.commit_if_due(now)?
            };
            if !done {
                return Ok(false);
            }
            spool.stats().last_seq
        };
        self.committed(last);
        Ok(true)
    }

    fn set(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress());
        self.changed.notify_all();
    }

    /// Waits until records after `seen` are durable, the agent closes or stops, or
    /// `deadline` passes.
    fn wait(&self, seen: u64, deadline: Option<Instant>) -> Progress {
        let mut p = self.progress();
        // Spurious wakeups loop; each turn waits for what is left of a fixed deadline.
        while p.durable <= seen && !p.closing && !p.stopped {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(60),
            };
            if left.is_zero() {
                break;
            }
            p = self
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if deadline.is_none() {
                break;
            }
        }
        *p
    }
}

/// Where the shipper stands, for logs and `rackhand status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipReport {
    pub sink: String,
    pub state: ShipState,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub last_ack_at: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub shipped_records: u64,
    pub shipped_batches: u64,
    pub dead_lettered_batches: u64,
    pub dead_letter_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipState {
    /// Nothing to send.
    Idle,
    /// A batch is on its way.
    Shipping,
    /// Upstream failed; waiting to try again.
    Retrying,
    /// The shipper has ended (agent stopping).
    Stopped,
}

impl ShipState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShipState::Idle => "idle",
            ShipState::Shipping => "shipping",
            ShipState::Retrying => "retrying",
            ShipState::Stopped => "stopped",
        }
    }
}

pub struct ShipperOptions {
    pub agent: String,
    pub limits: BatchLimits,
    /// Where `ship-cut` is kept.
    pub state_dir: PathBuf,
    /// Between failed calls to the sink (the sinks' own retries come first).
    pub backoff: Backoff,
    /// Seeds the batch-age jitter.
    pub seed: u64,
}

/// The running shipper thread.
pub struct Shipper {
    share: Arc<SpoolShare>,
    stop: Arc<StopFlag>,
    report: Arc<Mutex<ShipReport>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Starts shipping from the first unacknowledged record. `on_ack` runs after every
    /// acknowledgement (the agent wakes up: a full spool may have room again).
    pub fn start(
        share: Arc<SpoolShare>,
        sink: Box<dyn Sink>,
        options: ShipperOptions,
        on_ack: Box<dyn Fn() + Send>,
    ) -> io::Result<Shipper> {
        let stop = StopFlag::new();
        let report = Arc::new(Mutex::new(ShipReport {
            sink: sink.describe(),
            state: ShipState::Idle,
            last_error: None,
            last_error_at: None,
            last_ack_at: None,
            consecutive_failures: 0,
            shipped_records: 0,
            shipped_batches: 0,
            dead_lettered_batches: 0,
            dead_letter_file: None,
        }));
        let (done_tx, done) = mpsc::channel();
        let mut worker = Worker {
            share: Arc::clone(&share),
            sink,
            stop: Arc::clone(&stop),
            report: Arc::clone(&report),
            on_ack,
            cut_path: options.state_dir.join(SHIP_CUT_FILE),
            backoff: options.backoff,
            batcher: Batcher::new(&options.agent, options.limits, options.seed),
            jitter: Jitter::from_seed(options.seed),
        };
        let thread = std::thread::Builder::new()
            .name("rackhand-ship".into())
            .spawn(move || {
                worker.run();
                worker.report().state = ShipState::Stopped;
                let _ = done_tx.send(());
            })?;
        Ok(Shipper {
            share,
            stop,
            report,
            done,
            thread: Some(thread),
        })
    }

    pub fn report(&self) -> ShipReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ships what is durable for up to `grace`, then stops; what is left stays in the spool
    /// for the next start. Waits at most `attempt` more for a request already on the wire.
    pub fn finish(mut self, grace: Duration, attempt: Duration) -> ShipReport {
        self.share.set(|p| p.closing = true);
        if self.done.recv_timeout(grace).is_err() {
            self.stop.stop();
            self.share.set(|p| p.stopped = true);
            if self.done.recv_timeout(attempt).is_err() {
                log::warn!(
                    "the shipper did not stop within {attempt:?} (a request to upstream is still open); the batch stays in the spool and is sent again at the next start"
                );
                self.thread.take();
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.report()
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            self.share.set(|p| p.stopped = true);
        }
    }
}

struct Worker {
    share: Arc<SpoolShare>,
    sink: Box<dyn Sink>,
    stop: Arc<StopFlag>,
    report: Arc<Mutex<ShipReport>>,
    on_ack: Box<dyn Fn() + Send>,
    cut_path: PathBuf,
    backoff: Backoff,
    batcher: Batcher,
    jitter: Jitter,
}

impl Worker {
    fn report(&self) -> MutexGuard<'_, ShipReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&mut self) {
        let acked = self.share.lock().stats().acked;
        let mut cut_written = read_cut(&self.cut_path);
        if let Some(cut) = cut_written.filter(|&c| c > acked) {
            log::info!("resuming the batch that ends at seq {cut} (sent before the restart)");
            self.batcher.resume_cut(cut);
        }
        // The first seq not yet given to the batcher.
        let mut next = acked + 1;
        let mut reader: Option<Reader> = None;
        let mut generation = self.share.lock().generation();
        let mut held: Option<(u64, Vec<u8>)> = None;
        let mut ready: VecDeque<Batch> = VecDeque::new();
        loop {
            if self.stop.is_stopped() {
                return;
            }
            if let Some(batch) = ready.front() {
                if cut_written != Some(batch.last_seq()) {
                    match write_atomically(
                        &self.cut_path,
                        format!("{}\n", batch.last_seq()).as_bytes(),
                    ) {
                        Ok(()) => cut_written = Some(batch.last_seq()),
                        // Only the resend's key depends on it; the records do not.
                        Err(e) => log::warn!(
                            "cannot write {}: {e}; a resend after a restart may carry a different Idempotency-Key",
                            self.cut_path.display()
                        ),
                    }
                }
                if self.ship(batch) {
                    ready.pop_front();
                }
                continue;
            }
            let progress = *self.share.progress();
            if progress.stopped {
                return;
            }
            // Read durable records into the batcher until a batch closes or none are left.
            let now = Instant::now();
            let mut drained = false;
            // Bounded: each turn consumes one record or ends the reader.
            loop {
                let item = match held.take() {
                    Some(item) => Some(Ok(item)),
                    None => {
                        // Under the spool's lock, so drop-oldest sees exactly what was read:
                        // a record read before its segment is dropped is in memory and will
                        // be shipped; one not read by then is lost, and never read after.
                        let mut spool = self.share.lock();
                        if spool.generation() != generation {
                            generation = spool.generation();
                            reader = None;
                        }
                        if reader.is_none() {
                            match spool.read_from(next) {
                                Ok(r) => reader = Some(r),
                                Err(e) => {
                                    drop(spool);
                                    self.failed(&format!("cannot read the spool: {e}"));
                                    break;
                                }
                            }
                        }
                        let item = reader.as_mut().and_then(Iterator::next);
                        if let Some(Ok((seq, _))) = &item {
                            spool.note_read(*seq);
                        }
                        item
                    }
                };
                match item {
                    None => {
                        reader = None;
                        drained = true;
                        break;
                    }
                    Some(Err(e)) => {
                        // The reader goes on with the next segment; the damaged part is
                        // repaired (and counted) at the next start.
                        log::error!("{e}");
                        self.note(&e.to_string());
                    }
                    Some(Ok((seq, payload))) => {
                        if seq > progress.durable {
                            held = Some((seq, payload));
                            drained = true;
                            break;
                        }
                        if seq < next {
                            continue;
                        }
                        next = seq + 1;
                        match self.batcher.push(seq, &payload, now) {
                            Ok(closed) => ready.extend(closed),
                            Err(e) => log::error!("{e}"),
                        }
                        if !ready.is_empty() {
                            break;
                        }
                    }
                }
            }
            if !ready.is_empty() {
                continue;
            }
            if let Some(batch) = self.batcher.poll(Instant::now()) {
                ready.push_back(batch);
                continue;
            }
            if drained && progress.closing && next > progress.durable {
                match self.batcher.flush() {
                    Some(batch) => {
                        ready.push_back(batch);
                        continue;
                    }
                    None => return,
                }
            }
            if drained {
                self.report().state = ShipState::Idle;
                self.share.wait(next - 1, self.batcher.deadline());
            }
        }
    }

    /// One call to the sink for `batch`; true once it is acknowledged in the spool.
    fn ship(&mut self, batch: &Batch) -> bool {
        self.report().state = ShipState::Shipping;
        let report = Arc::clone(&self.report);
        let mut observe = |retry: &Retry| {
            let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
            r.state = ShipState::Retrying;
            r.last_error = Some(retry.error.clone());
            r.last_error_at = Some(SystemTime::now());
            r.consecutive_failures += 1;
        };
        let until = Instant::now() + SHIP_CALL;
        match self.sink.ship(batch, until, &self.stop, &mut observe) {
            Ok(shipped) => {
                let acked = self.share.lock().ack(batch.last_seq());
                if let Err(e) = acked {
                    // Delivered, but not marked: it is sent again later (a duplicate, not a
                    // loss). Wait before trying, so a broken disk does not spin.
                    self.failed(&format!(
                        "batch {} was delivered but cannot be acknowledged in the spool: {e}",
                        batch.idempotency_key()
                    ));
                    return false;
                }
                let mut r = self.report();
                if r.consecutive_failures > 0 {
                    log::info!(
                        "{}: delivering again after {} failed attempt(s)",
                        r.sink,
                        r.consecutive_failures
                    );
                }
                r.state = ShipState::Idle;
                r.consecutive_failures = 0;
                r.last_ack_at = Some(SystemTime::now());
                r.shipped_records += batch.len() as u64;
                r.shipped_batches += 1;
                if let Some(first) = shipped.rejected.first() {
                    r.dead_lettered_batches += 1;
                    r.dead_letter_file = Some(first.dead_letter.clone());
                }
                drop(r);
                (self.on_ack)();
                true
            }
            Err(e) => {
                if self.stop.is_stopped() {
                    log::info!("{e}");
                    return false;
                }
                log::warn!("{e}");
                self.failed(&e.to_string());
                false
            }
        }
    }

    /// Records an error that does not stop shipping (a damaged record skipped).
    fn note(&mut self, error: &str) {
        let mut r = self.report();
        r.last_error = Some(error.to_string());
        r.last_error_at = Some(SystemTime::now());
    }

    /// Records a failure and waits the backoff (or until stopped).
    fn failed(&mut self, error: &str) {
        let n = {
            let mut r = self.report();
            r.state = ShipState::Retrying;
            r.last_error = Some(error.to_string());
            r.last_error_at = Some(SystemTime::now());
            r.consecutive_failures += 1;
            r.consecutive_failures
        };
        let wait = self.backoff.wait(n, &mut self.jitter);
        self.stop.wait_until(Instant::now() + wait);
    }
}

fn read_cut(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Shipped, SinkError};
    use crate::spool::SpoolOptions;

    /// A sink that keeps what it was given and fails its first `fail` calls.
    #[derive(Clone, Default)]
    struct Recorder {
        got: Arc<Mutex<Vec<(String, u64, u64)>>>,
        calls: Arc<Mutex<u32>>,
        fail: u32,
    }

    impl Sink for Recorder {
        fn ship(
            &mut self,
            batch: &Batch,
            _until: Instant,
            _stop: &StopFlag,
            _observe: &mut dyn FnMut(&Retry),
        ) -> Result<Shipped, SinkError> {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            if *calls <= self.fail {
                return Err(SinkError::File(crate::sink::file::FileSinkError {
                    path: "/nowhere".into(),
                    error: io::Error::other("disk full"),
                }));
            }
            self.got.lock().unwrap().push((
                batch.idempotency_key().to_string(),
                batch.first_seq(),
                batch.last_seq(),
            ));
            Ok(Shipped {
                attempts: 1,
                rejected: Vec::new(),
            })
        }

        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    fn options(dir: &Path, max_records: usize) -> ShipperOptions {
        ShipperOptions {
            agent: "a".into(),
            limits: BatchLimits {
                max_records,
                max_bytes: 1 << 20,
                max_age: Duration::from_millis(50),
                jitter: 0.0,
            },
            state_dir: dir.to_path_buf(),
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(40),
            },
            seed: 7,
        }
    }

    fn spool(dir: &Path) -> Arc<SpoolShare> {
        SpoolShare::new(
            Spool::open(&dir.join("spool"), SpoolOptions::default())
                .unwrap()
                .0,
        )
    }

    fn append(share: &SpoolShare, seqs: std::ops::RangeInclusive<u64>) {
        let mut spool = share.lock();
        for seq in seqs {
            spool
                .append(seq, format!("{{\"seq\":{seq}}}").as_bytes())
                .unwrap();
        }
    }

    /// The shipper's `on_ack` hook, and a wait on it.
    fn acks() -> (Box<dyn Fn() + Send>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        (
            Box::new(move || {
                let _ = tx.send(());
            }),
            rx,
        )
    }

    /// Waits (bounded) until the spool has acknowledged `seq`, woken by each ack.
    fn wait_acked(share: &SpoolShare, acked: &mpsc::Receiver<()>, seq: u64) {
        let until = Instant::now() + Duration::from_secs(10);
        while share.lock().stats().acked < seq {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                acked.recv_timeout(left).is_ok(),
                "seq {seq} not acknowledged in 10 s"
            );
        }
    }

    #[test]
    fn committed_records_leave_in_seq_ordered_batches_and_uncommitted_ones_wait() {
        let tmp = TempDir::new();
        let dir = tmp.0.clone();
        let share = spool(&dir);
        let sink = Recorder::default();
        let (on_ack, acked) = acks();
        let shipper = Shipper::start(
            Arc::clone(&share),
            Box::new(sink.clone()),
            options(&dir, 4),
            on_ack,
        )
        .unwrap();
        append(&share, 1..=10);
        share.commit(Instant::now(), true).unwrap();
        append(&share, 11..=12);
        wait_acked(&share, &acked, 10);
        // 11 and 12 are in the spool but not durable: nothing of them may be shipped.
        assert!(sink.got.lock().unwrap().iter().all(|b| b.2 <= 10));
        share.commit(Instant::now(), true).unwrap();
        let report = shipper.finish(Duration::from_secs(5), Duration::from_secs(1));
        let got = sink.got.lock().unwrap().clone();
        let ranges: Vec<(u64, u64)> = got.iter().map(|b| (b.1, b.2)).collect();
        assert_eq!(ranges, vec![(1, 4), (5, 8), (9, 10), (11, 12)]);
        assert_eq!(got[0].0, "a:1-4");
        assert_eq!(report.shipped_records, 12);
        assert_eq!(share.lock().stats().records, 0);
        assert_eq!(report.state, ShipState::Stopped);
    }

    #[test]
    fn a_failing_sink_gets_the_same_batch_again_until_it_takes_it() {
        let tmp = TempDir::new();
        let dir = tmp.0.clone();
        let share = spool(&dir);
        let sink = Recorder {
            fail: 3,
            ..Recorder::default()
        };
        let (on_ack, acked) = acks();
        let shipper = Shipper::start(
            Arc::clone(&share),
            Box::new(sink.clone()),
            options(&dir, 5),
            on_ack,
        )
        .unwrap();
        append(&share, 1..=5);
        share.commit(Instant::now(), true).unwrap();
        wait_acked(&share, &acked, 5);
        let report = shipper.finish(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(*sink.calls.lock().unwrap(), 4);
        assert_eq!(sink.got.lock().unwrap()[0].0, "a:1-5");
        assert_eq!(report.consecutive_failures, 0);
        assert!(report.last_error.unwrap().contains("disk full"));
    }

    #[test]
    fn after_a_restart_the_unacknowledged_batch_is_cut_at_the_same_place() {
        let tmp = TempDir::new();
        let dir = tmp.0.clone();
        // Before the crash: a batch 1-3 was cut by its age and sent, never acknowledged.
        std::fs::write(dir.join(SHIP_CUT_FILE), "3\n").unwrap();
        let share = spool(&dir);
        append(&share, 1..=8);
        share.commit(Instant::now(), true).unwrap();
        let sink = Recorder::default();
        let (on_ack, acked) = acks();
        let shipper = Shipper::start(
            Arc::clone(&share),
            Box::new(sink.clone()),
            options(&dir, 100),
            on_ack,
        )
        .unwrap();
        wait_acked(&share, &acked, 8);
        shipper.finish(Duration::from_secs(5), Duration::from_secs(1));
        let keys: Vec<String> = sink
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.0.clone())
            .collect();
        assert_eq!(keys, vec!["a:1-3".to_string(), "a:4-8".to_string()]);
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rackhand-ship-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

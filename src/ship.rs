//! The shipper: the thread that moves records from the spool to the sink.
//!
//! The agent's loop appends records to the spool and commits them (group commit); the
//! shipper holds the spool's reader, which sees only committed records. It reads from the
//! first record upstream has not acknowledged, cuts batches ([`Batcher`]), hands each to the
//! sink and acknowledges it in the spool only once the sink returned `Ok`; records the sink
//! says upstream refused for good are counted lost (`rejected`) before that. So a record leaves the
//! spool after upstream has it, never before, and nothing is shipped that a crash could take
//! back: delivery is at-least-once across crashes of the agent and outages of the uplink.
//!
//! One batch is in flight at a time, and its last seq is written to `state_dir/ship-cut`
//! before it is sent; after a restart the batcher cuts the resend at the same place, so it
//! carries the same `Idempotency-Key`. Memory stays bounded however large the spool: one
//! open batch, one batch in flight, one record read ahead.
//!
//! The sink retries by itself; the shipper only adds a backoff between calls that failed
//! outright (a full disk under the file sink) and keeps the `ShipReport` that logs and
//! `rackhand status` show. Damage met while reading is the reader's to count; the shipper
//! never sees it.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::{Batch, BatchLimits, Batcher};
use crate::change::{ChangeFilter, ChangePolicy};
use crate::durable_file::write_durably;
use crate::sink::{Backoff, Jitter, Retry, Shipped, Sink, StopFlag};
use crate::spool::{Loss, SpoolReader, Waker};

/// The file in `state_dir` that names the last seq of the batch in flight.
pub(crate) const SHIP_CUT_FILE: &str = "ship-cut";

/// How long one call to the sink may retry by itself before the shipper looks again (it
/// calls again at once with the same batch; this only bounds a single call).
const SHIP_CALL: Duration = Duration::from_secs(3600);

/// Where the shipper stands, for logs and `rackhand status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShipReport {
    pub(crate) sink: String,
    pub(crate) state: ShipState,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<SystemTime>,
    pub(crate) last_ack_at: Option<SystemTime>,
    pub(crate) consecutive_failures: u32,
    /// Failed attempts since the shipper started (for the metrics' errors counter).
    pub(crate) failed_attempts: u64,
    pub(crate) shipped_records: u64,
    pub(crate) shipped_batches: u64,
    pub(crate) dead_lettered_batches: u64,
    /// Records upstream refused for good (in the dead-letter file, reported as `rejected`).
    pub(crate) rejected_records: u64,
    /// Of the acknowledged records, those of `on_change` commands that went up unchanged
    /// (`"output": null`), and the bytes that left out (issue 13).
    pub(crate) unchanged_records: u64,
    pub(crate) bytes_saved: u64,
    pub(crate) dead_letter_file: Option<PathBuf>,
    /// The oldest record not yet acknowledged: its seq and `started_at`.
    pub(crate) oldest_unshipped: Option<(u64, Option<String>)>,
}

impl ShipReport {
    /// A shipper of `sink` that has done nothing yet.
    pub(crate) fn idle(sink: String) -> ShipReport {
        ShipReport {
            sink,
            state: ShipState::Idle,
            last_error: None,
            last_error_at: None,
            last_ack_at: None,
            consecutive_failures: 0,
            failed_attempts: 0,
            shipped_records: 0,
            shipped_batches: 0,
            dead_lettered_batches: 0,
            rejected_records: 0,
            unchanged_records: 0,
            bytes_saved: 0,
            dead_letter_file: None,
            oldest_unshipped: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShipState {
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

pub(crate) struct ShipperOptions {
    pub(crate) agent: String,
    pub(crate) limits: BatchLimits,
    /// Where `ship-cut` is kept.
    pub(crate) state_dir: PathBuf,
    /// Between failed calls to the sink (the sinks' own retries come first).
    pub(crate) backoff: Backoff,
    /// Seeds the batch-age jitter.
    pub(crate) seed: u64,
    /// Which commands ship `on_change` (issue 13); their baselines live in `state_dir`.
    pub(crate) changes: ChangePolicy,
}

/// The running shipper thread.
pub(crate) struct Shipper {
    waker: Waker,
    /// A new policy after a reload, taken by the thread before it shapes its next batch.
    next_policy: Arc<Mutex<Option<ChangePolicy>>>,
    stop: Arc<StopFlag>,
    report: Arc<Mutex<ShipReport>>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Starts shipping from the first unacknowledged record. `on_ack` runs after every
    /// acknowledgement (the agent wakes up: a full spool may have room again).
    pub fn start(
        reader: SpoolReader,
        sink: Box<dyn Sink>,
        options: ShipperOptions,
        on_ack: Box<dyn Fn() + Send>,
    ) -> io::Result<Shipper> {
        let stop = StopFlag::new();
        let report = Arc::new(Mutex::new(ShipReport::idle(sink.describe())));
        let (done_tx, done) = mpsc::channel();
        let waker = reader.waker();
        let next_policy = Arc::new(Mutex::new(None));
        let mut worker = Worker {
            changes: ChangeFilter::open(&options.state_dir, options.changes),
            next_policy: Arc::clone(&next_policy),
            reader,
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
            waker,
            next_policy,
            stop,
            report,
            done,
            thread: Some(thread),
        })
    }

    /// Ships by `policy` from the next batch on (a reload). The batch in flight keeps the shape
    /// it was first sent with, so its resends stay the same.
    pub fn set_policy(&self, policy: ChangePolicy) {
        *self.next_policy.lock().unwrap_or_else(|e| e.into_inner()) = Some(policy);
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
        self.waker.close();
        if self.done.recv_timeout(grace).is_err() {
            self.stop.stop();
            self.waker.wake();
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
            self.waker.wake();
        }
    }
}

struct Worker {
    reader: SpoolReader,
    sink: Box<dyn Sink>,
    stop: Arc<StopFlag>,
    report: Arc<Mutex<ShipReport>>,
    on_ack: Box<dyn Fn() + Send>,
    cut_path: PathBuf,
    backoff: Backoff,
    batcher: Batcher,
    jitter: Jitter,
    /// Shapes each batch for upstream right before its first sending (change-only shipping).
    changes: ChangeFilter,
    next_policy: Arc<Mutex<Option<ChangePolicy>>>,
}

impl Worker {
    fn report(&self) -> MutexGuard<'_, ShipReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&mut self) {
        let acked = self.reader.acked();
        let mut cut_written = read_cut(&self.cut_path);
        if let Some(cut) = cut_written.filter(|&c| c > acked) {
            log::info!("resuming the batch that ends at seq {cut} (sent before the restart)");
            self.batcher.resume_cut(cut);
        }
        let mut ready: VecDeque<Batch> = VecDeque::new();
        // Whether the front batch is in the shape it goes upstream in: shaped once, against
        // what upstream has acknowledged, and sent in that shape until it is acknowledged.
        let mut front_shaped = false;
        let mut cut_failing = false;
        loop {
            if self.stop.is_stopped() {
                return;
            }
            if let Some(batch) = ready.front_mut() {
                if !front_shaped {
                    self.shape(batch);
                    front_shaped = true;
                }
                let batch = &*batch;
                if cut_written != Some(batch.last_seq()) {
                    match write_durably(
                        &self.cut_path,
                        format!("{}\n", batch.last_seq()).as_bytes(),
                    ) {
                        Ok(()) => {
                            cut_written = Some(batch.last_seq());
                            cut_failing = false;
                        }
                        // Only the resend's key depends on it; the records do not. Once per
                        // condition: a full disk would otherwise warn at every batch.
                        Err(e) if !cut_failing => {
                            cut_failing = true;
                            log::warn!(
                                "cannot write {}: {e}; a resend after a restart may carry a different Idempotency-Key",
                                self.cut_path.display()
                            );
                        }
                        Err(_) => {}
                    }
                }
                if self.ship(batch) {
                    front_shaped = false;
                    ready.pop_front();
                    let next = ready
                        .front()
                        .map(|b| b.body())
                        .or_else(|| self.batcher.open_body());
                    let oldest = next.and_then(first_record);
                    self.report().oldest_unshipped = oldest;
                }
                continue;
            }
            // Read committed records into the batcher until a batch closes or none are left.
            let now = Instant::now();
            let mut drained = false;
            // Bounded: each turn consumes one record or ends.
            loop {
                let Some((seq, payload)) = self.reader.next_record() else {
                    drained = true;
                    break;
                };
                let mut report = self.report();
                if report.oldest_unshipped.is_none() {
                    report.oldest_unshipped = first_record(&payload);
                }
                drop(report);
                match self.batcher.push(seq, &payload, now) {
                    Ok(closed) => ready.extend(closed),
                    Err(e) => log::error!("{e}"),
                }
                if !ready.is_empty() {
                    break;
                }
            }
            if !ready.is_empty() {
                continue;
            }
            if let Some(batch) = self.batcher.poll(Instant::now()) {
                ready.push_back(batch);
                continue;
            }
            if drained && self.reader.closing() {
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
                self.reader.wait(self.batcher.deadline());
            }
        }
    }

    /// Puts `batch` in the shape it goes upstream in (change-only shipping), under the policy
    /// of the last reload. Without any `on_change` command it stays as it is, uncopied.
    fn shape(&mut self, batch: &mut Batch) {
        let policy = self
            .next_policy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(policy) = policy {
            self.changes.set_policy(policy);
        }
        if self.changes.is_active() {
            *batch = self.changes.shape(batch);
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
            r.failed_attempts += 1;
        };
        let until = Instant::now() + SHIP_CALL;
        match self.sink.ship(batch, until, &self.stop, &mut observe) {
            Ok(shipped) => {
                self.delivered(batch, shipped);
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

    /// Upstream took `batch` (but what it refused for good, which is counted lost first):
    /// it leaves the spool.
    fn delivered(&mut self, batch: &Batch, shipped: Shipped) {
        let mut rejected_records = 0;
        for r in &shipped.rejected {
            rejected_records += r.records;
            log::error!(
                "{} record(s) (seq {}-{}) refused for good: {}; they are in {}",
                r.records,
                r.first_seq,
                r.last_seq,
                r.reason,
                r.dead_letter.display()
            );
            self.reader.rejected(
                Loss::range(r.first_seq, r.last_seq, r.records, r.bytes).with_detail(format!(
                    "{}; written whole to {}",
                    r.reason,
                    r.dead_letter.display()
                )),
            );
        }
        if let Err(e) = self.reader.ack(batch.last_seq()) {
            // Only a bug gets here (acknowledging what was never read).
            log::error!("batch {}: {e}", batch.idempotency_key());
        }
        // After the spool's ack: a crash between the two costs one whole output again, never
        // an "unchanged" record about an output upstream does not hold.
        let refused: Vec<(u64, u64)> = shipped
            .rejected
            .iter()
            .map(|r| (r.first_seq, r.last_seq))
            .collect();
        self.changes.delivered(&refused);
        let counts = self.changes.counts();
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
        r.shipped_records += batch.len() as u64 - rejected_records;
        r.shipped_batches += 1;
        r.unchanged_records = counts.unchanged;
        r.bytes_saved = counts.bytes_saved;
        if let Some(first) = shipped.rejected.first() {
            r.dead_lettered_batches += 1;
            r.rejected_records += rejected_records;
            r.dead_letter_file = Some(first.dead_letter.clone());
        }
        drop(r);
        (self.on_ack)();
    }

    /// Records a failure and waits the backoff (or until stopped).
    fn failed(&mut self, error: &str) {
        let n = {
            let mut r = self.report();
            r.state = ShipState::Retrying;
            r.last_error = Some(error.to_string());
            r.last_error_at = Some(SystemTime::now());
            r.consecutive_failures += 1;
            r.failed_attempts += 1;
            r.consecutive_failures
        };
        let wait = self.backoff.wait(n, &mut self.jitter);
        self.stop.wait_until(Instant::now() + wait);
    }
}

/// The seq and `started_at` of the first record in an NDJSON body (or one record's JSON).
fn first_record(body: &[u8]) -> Option<(u64, Option<String>)> {
    let line = body.split(|&b| b == b'\n').next()?;
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = v["seq"].as_u64()?;
    Some((seq, v["started_at"].as_str().map(str::to_string)))
}

fn read_cut(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkError;
    use crate::spool::{Spool, SpoolOptions, SpoolWriter};
    use crate::test_support::temp_dir;

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
            changes: ChangePolicy::default(),
        }
    }

    fn spool(dir: &Path) -> (SpoolWriter, SpoolReader) {
        let (w, r, _) = Spool::open(&dir.join("spool"), SpoolOptions::default()).unwrap();
        (w, r)
    }

    fn append(writer: &mut SpoolWriter, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            writer
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
    fn wait_acked(writer: &SpoolWriter, acked: &mpsc::Receiver<()>, seq: u64) {
        let until = Instant::now() + Duration::from_secs(10);
        while writer.stats().acked < seq {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                acked.recv_timeout(left).is_ok(),
                "seq {seq} not acknowledged in 10 s"
            );
        }
    }

    #[test]
    fn committed_records_leave_in_seq_ordered_batches_and_uncommitted_ones_wait() {
        let tmp = temp_dir("ship");
        let dir = tmp.path().to_path_buf();
        let (mut writer, reader) = spool(&dir);
        let sink = Recorder::default();
        let (on_ack, acked) = acks();
        let shipper =
            Shipper::start(reader, Box::new(sink.clone()), options(&dir, 4), on_ack).unwrap();
        append(&mut writer, 1..=10);
        writer.commit();
        append(&mut writer, 11..=12);
        wait_acked(&writer, &acked, 10);
        // 11 and 12 are in the spool but not durable: nothing of them may be shipped.
        assert!(sink.got.lock().unwrap().iter().all(|b| b.2 <= 10));
        writer.commit();
        let report = shipper.finish(Duration::from_secs(5), Duration::from_secs(1));
        let got = sink.got.lock().unwrap().clone();
        let ranges: Vec<(u64, u64)> = got.iter().map(|b| (b.1, b.2)).collect();
        assert_eq!(ranges, vec![(1, 4), (5, 8), (9, 10), (11, 12)]);
        assert_eq!(got[0].0, "a:1-4");
        assert_eq!(report.shipped_records, 12);
        assert_eq!(writer.stats().records, 0);
        assert_eq!(report.state, ShipState::Stopped);
    }

    #[test]
    fn a_failing_sink_gets_the_same_batch_again_until_it_takes_it() {
        let tmp = temp_dir("ship");
        let dir = tmp.path().to_path_buf();
        let (mut writer, reader) = spool(&dir);
        let sink = Recorder {
            fail: 3,
            ..Recorder::default()
        };
        let (on_ack, acked) = acks();
        let shipper =
            Shipper::start(reader, Box::new(sink.clone()), options(&dir, 5), on_ack).unwrap();
        append(&mut writer, 1..=5);
        writer.commit();
        wait_acked(&writer, &acked, 5);
        let report = shipper.finish(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(*sink.calls.lock().unwrap(), 4);
        assert_eq!(sink.got.lock().unwrap()[0].0, "a:1-5");
        assert_eq!(report.consecutive_failures, 0);
        assert!(report.last_error.unwrap().contains("disk full"));
    }

    #[test]
    fn after_a_restart_the_unacknowledged_batch_is_cut_at_the_same_place() {
        let tmp = temp_dir("ship");
        let dir = tmp.path().to_path_buf();
        // Before the crash: a batch 1-3 was cut by its age and sent, never acknowledged.
        std::fs::write(dir.join(SHIP_CUT_FILE), "3\n").unwrap();
        let (mut writer, reader) = spool(&dir);
        append(&mut writer, 1..=8);
        writer.commit();
        let sink = Recorder::default();
        let (on_ack, acked) = acks();
        let shipper =
            Shipper::start(reader, Box::new(sink.clone()), options(&dir, 100), on_ack).unwrap();
        wait_acked(&writer, &acked, 8);
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
}

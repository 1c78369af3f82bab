//! Sinks: where records leave the agent, one [`Batch`] at a time.
//!
//! Every sink sits behind the spool (`spool` → `batch` → sink): the shipper hands it a
//! batch cut from the spool and removes those records only once [`Sink::ship`] returns
//! `Ok`, i.e. once upstream acknowledged them (a 2xx, every PUBACK, or the file written and
//! fsynced). So a sink never needs its own buffer, and a crash anywhere leaves the batch in
//! the spool to be sent again (at-least-once). What the sinks share lives here: the trait,
//! the retry backoff, the stop flag that ends every wait, the description of a failed
//! attempt that logs and `rackhand status` show, and the dead-letter file for records
//! upstream refuses for good (`dead_letter`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::Batch;

pub(crate) mod build;
pub mod dead_letter;
pub(crate) mod file;
pub mod http;
pub mod mqtt;

/// How a batch left the agent: every record either acknowledged by upstream or, when
/// upstream refused it for good, in the dead-letter file. Either way the batch may leave the
/// spool, so one record upstream will never take cannot block the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    /// Attempts it took (requests, or publishing rounds), counted over all parts of the
    /// batch; 0 when every record was refused before anything needed sending.
    pub attempts: u32,
    /// Records upstream refused for good: each went whole to the dead-letter file and is lost
    /// to upstream; the shipper reports them in a gap record with cause `rejected`.
    pub rejected: Vec<Rejected>,
}

/// A contiguous run of a batch's records upstream refused for good, now in the dead-letter
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// A contiguous run of the batch's records (a single record, or a whole batch/part).
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    /// NDJSON bytes of those records.
    pub bytes: u64,
    /// In words, e.g. `https://c/ingest answered 413 (Payload Too Large): ...`; never a URL
    /// with credentials.
    pub reason: String,
    pub dead_letter: PathBuf,
}

/// Why a batch did not leave; it stays in the spool and is shipped again.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Http(#[from] http::HttpSinkError),
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSinkError),
    #[error(transparent)]
    File(#[from] file::FileSinkError),
}

/// Where batches go. Implementations block, retrying by themselves with [`Backoff`], until
/// the batch is acknowledged, `until` passes or `stop` is raised; every wait between
/// attempts is a [`StopFlag::wait_until`], so the agent can always stop a sink promptly.
pub trait Sink: Send {
    /// Delivers `batch`, telling `observe` about every failed attempt before its wait.
    fn ship(
        &mut self,
        batch: &Batch,
        until: Instant,
        stop: &StopFlag,
        observe: &mut dyn FnMut(&Retry),
    ) -> Result<Shipped, SinkError>;

    /// The sink and its target for logs and `rackhand status`, e.g. `http https://c/ingest`.
    /// Never includes credentials.
    fn describe(&self) -> String;
}

/// Exponential backoff with full jitter: the wait before retry `n` (1-based) is uniform in
/// `0 ..= min(cap, base * 2^(n-1))`, but never under `base / 10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(30);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `n`: full jitter under [`Backoff::ceiling`], floored at a tenth
    /// of `base`, so a run of near-zero draws never turns an instant failure (a refused
    /// connection) into back-to-back attempts.
    pub fn wait(&self, n: u32, jitter: &mut Jitter) -> Duration {
        self.ceiling(n).mul_f64(jitter.unit()).max(self.base / 10)
    }
}

/// The random draws behind [`Backoff::wait`]: xorshift64*, good enough to spread retries.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Different per process and per instance.
    pub fn new() -> Jitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        Jitter::from_seed(
            nanos
                ^ u64::from(std::process::id()).rotate_left(32)
                ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        )
    }

    /// Reproducible draws (never zero: xorshift's one fixed point).
    pub(crate) fn from_seed(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

/// One failed attempt and the wait chosen before the next, for logs and `rackhand status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The attempt that failed, 1-based.
    pub attempt: u32,
    /// What went wrong, in words (names the URL).
    pub error: String,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The backoff's upper bound for this retry.
    pub ceiling: Duration,
    /// The collector's `Retry-After`, when it sent one (already capped).
    pub retry_after: Option<Duration>,
    /// The wait before the next attempt: jittered backoff, at least `retry_after`.
    pub wait: Duration,
}

/// A stop request the agent raises once; waits between attempts end at once when it does.
#[derive(Debug, Default)]
pub struct StopFlag {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopFlag {
    pub fn new() -> Arc<StopFlag> {
        Arc::new(StopFlag::default())
    }

    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.changed.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `deadline` or a stop, whichever is first; true when stopped.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        // Spurious wakeups loop; each turn waits for what is left of a fixed deadline.
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stopped = self
                .changed
                .wait_timeout(stopped, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_uniform_enough_and_never_leaves_zero_to_one() {
        let mut jitter = Jitter::new();
        let draws: Vec<f64> = (0..10_000).map(|_| jitter.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|u| **u < 0.5).count();
        assert!((4500..5500).contains(&low), "{low}");
    }
}

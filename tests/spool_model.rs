//! Model-based test of the spool (after Vector's disk_v2 `tests/model/`): random sequences of
//! append / commit / read / ack / crash, checked against a plain in-memory model.
//!
//! The model, precisely:
//! - `committed`: records appended before the last `commit` (or recovered at the last open),
//!   not acknowledged. They must survive any crash, byte for byte.
//! - `pending`: records appended since. A crash keeps a prefix of them (possibly empty,
//!   possibly all): the process died but the kernel may have written some; a torn write cuts
//!   the last segment anywhere after the last commit point.
//! - `acked`: the last `ack` that returned. The checkpoint is fsynced and renamed before
//!   `ack` returns and crashes here happen between operations, so it is never lost: nothing
//!   at or below it may be read again. (A crash *inside* `ack` may bring acknowledged records
//!   back, which at-least-once delivery allows; that case is not generated here.)
//! - Every read returns `committed ++ pending` above `max(from, acked + 1)`, in strictly
//!   increasing seq order.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use rackhand::spool::{FullPolicy, Spool, SpoolError, SpoolOptions};

#[derive(Debug, Clone)]
enum Op {
    /// Appends a payload; the seq jumps by `gap` (the sequence skips numbers after a crash).
    Append {
        len: usize,
        gap: u64,
    },
    Commit,
    /// Reads from the seq at this fraction of the live records (or past the end).
    Read {
        at: f64,
    },
    /// Acknowledges the live record at this fraction.
    Ack {
        at: f64,
    },
    /// Drops the spool without a commit; `tear` cuts this fraction of the bytes written since
    /// the last commit off the last segment.
    Crash {
        tear: Option<f64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..300, 1u64..4).prop_map(|(len, gap)| Op::Append { len, gap }),
        2 => Just(Op::Commit),
        2 => (0.0f64..1.2).prop_map(|at| Op::Read { at }),
        1 => (0.0f64..1.0).prop_map(|at| Op::Ack { at }),
        1 => proptest::option::of(0.0f64..=1.0).prop_map(|tear| Op::Crash { tear }),
    ]
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("rackhand-spool-model-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

type Rec = (u64, Vec<u8>);

#[derive(Default)]
struct Model {
    committed: Vec<Rec>,
    pending: Vec<Rec>,
    acked: u64,
    next_seq: u64,
    dropped: u64,
    blocked: u64,
}

impl Model {
    fn live(&self) -> Vec<Rec> {
        self.committed
            .iter()
            .chain(&self.pending)
            .cloned()
            .collect()
    }

    /// `DropOldest` deletes whole oldest segments: the oldest live records, in order.
    fn drop_oldest(&mut self, n: u64) {
        let n = n as usize;
        let from_committed = n.min(self.committed.len());
        self.committed.drain(..from_committed);
        self.pending.drain(..n - from_committed);
    }
}

/// Small segments so that rolls, multi-segment reads and segment deletion all happen; a
/// `max_bytes` of two segments so that the full policy is exercised too.
fn options(full: Option<FullPolicy>) -> SpoolOptions {
    let mut options = SpoolOptions {
        segment_bytes: 1024,
        ..SpoolOptions::default()
    };
    if let Some(full) = full {
        options.max_bytes = 2 * 1024;
        options.full = full;
    }
    options
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

fn read_all(spool: &mut Spool, from: u64) -> Vec<Rec> {
    spool.read_from(from).unwrap().map(Result::unwrap).collect()
}

fn last_segment(dir: &Path) -> Option<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop()
}

fn check_stats(spool: &Spool, model: &Model) -> Result<(), TestCaseError> {
    let live = model.live();
    let stats = spool.stats();
    prop_assert_eq!(stats.records, live.len() as u64);
    prop_assert_eq!(stats.oldest_unshipped, live.first().map(|r| r.0));
    prop_assert_eq!(stats.acked, model.acked);
    prop_assert_eq!(stats.dropped_records, model.dropped);
    prop_assert_eq!(stats.blocked_records, model.blocked);
    Ok(())
}

fn run(ops: Vec<Op>, full: Option<FullPolicy>) -> Result<(), TestCaseError> {
    let dir = TempDir::new();
    let options = options(full);
    let (mut spool, report) = Spool::open(&dir.0, options.clone()).unwrap();
    prop_assert!(!report.found_damage());
    let mut model = Model {
        next_seq: 1,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Append { len, gap } => {
                let seq = model.next_seq + gap - 1;
                model.next_seq = seq + 1;
                let bytes = payload(seq, len);
                let before = spool.stats();
                match spool.append(seq, &bytes) {
                    Ok(()) => model.pending.push((seq, bytes)),
                    Err(SpoolError::Full { .. }) if options.full == FullPolicy::Block => {
                        let needed = 16 + len as u64;
                        prop_assert!(
                            before.bytes + needed > options.max_bytes,
                            "refused with room left"
                        );
                        model.blocked += 1;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("append {seq}: {e}"))),
                }
                let dropped = spool.stats().dropped_records - before.dropped_records;
                model.dropped += dropped;
                model.drop_oldest(dropped);
                prop_assert!(spool.stats().bytes <= options.max_bytes);
            }
            Op::Commit => {
                spool.commit().unwrap();
                let pending = std::mem::take(&mut model.pending);
                model.committed.extend(pending);
            }
            Op::Read { at } => {
                let live = model.live();
                let from = match live.get((at * live.len() as f64) as usize) {
                    Some(r) => r.0,
                    None => model.next_seq,
                };
                let expect: Vec<Rec> = live.into_iter().filter(|r| r.0 >= from).collect();
                prop_assert_eq!(read_all(&mut spool, from), expect);
            }
            Op::Ack { at } => {
                let live = model.live();
                let Some(&(seq, _)) = live.get((at * live.len() as f64) as usize) else {
                    continue;
                };
                spool.ack(seq).unwrap();
                model.acked = seq;
                model.committed.retain(|r| r.0 > seq);
                model.pending.retain(|r| r.0 > seq);
            }
            Op::Crash { tear } => {
                drop(spool);
                let pending_bytes: u64 = model.pending.iter().map(|r| 16 + r.1.len() as u64).sum();
                if let (Some(frac), Some(seg)) = (tear, last_segment(&dir.0)) {
                    // Only bytes written since the last commit can be torn: the last segment
                    // holds them at its end (a roll after the commit puts them all in it).
                    let len = fs::metadata(&seg).unwrap().len();
                    let cut = (frac * len.min(pending_bytes) as f64) as u64;
                    OpenOptions::new()
                        .write(true)
                        .open(&seg)
                        .unwrap()
                        .set_len(len - cut)
                        .unwrap();
                }
                let (reopened, report) = Spool::open(&dir.0, options.clone()).unwrap();
                spool = reopened;
                // Loss counters belong to one run of the agent (it reports them as gaps).
                model.dropped = 0;
                model.blocked = 0;
                prop_assert_eq!(
                    report.corrupt_spans,
                    0,
                    "a torn tail is not mid-segment damage"
                );
                if tear.is_none() {
                    prop_assert!(!report.found_damage(), "{:?}", report);
                }
                let got = read_all(&mut spool, 0);
                let n = model.committed.len();
                prop_assert!(
                    got.len() >= n,
                    "committed records lost: {} of {}",
                    got.len(),
                    n
                );
                prop_assert_eq!(&got[..n], &model.committed[..]);
                let survivors = &got[n..];
                prop_assert!(survivors.len() <= model.pending.len());
                prop_assert_eq!(survivors, &model.pending[..survivors.len()]);
                prop_assert!(
                    got.iter().all(|r| r.0 > model.acked),
                    "an acknowledged record came back"
                );
                // Recovery makes the survivors durable.
                model.committed = got;
                model.pending.clear();
            }
        }
        let live = model.live();
        prop_assert!(live.windows(2).all(|w| w[0].0 < w[1].0));
        check_stats(&spool, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_spool_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, None)?;
    }

    #[test]
    fn a_full_spool_blocks_exactly_when_full(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, Some(FullPolicy::Block))?;
    }

    #[test]
    fn a_full_spool_drops_exactly_the_oldest(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, Some(FullPolicy::DropOldest))?;
    }
}

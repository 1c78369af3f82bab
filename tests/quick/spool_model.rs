//! Model-based test of the spool (after Vector's disk_v2 `tests/model/`): random sequences of
//! append / commit / read / ack / crash, flipped bytes, and injected I/O errors (ENOSPC, EIO,
//! torn writes, a disk that fills up), on the in-memory filesystem, checked against what was
//! appended.
//!
//! The promise checked, precisely:
//! - the reader returns records in strictly increasing seq order, each byte for byte as it
//!   was appended, and only records the writer had committed (`durable_seq`);
//! - every record appended is, in the end, either delivered by the reader, or counted lost in
//!   the ledger (a lost range of a loss taken for a gap record), or was not yet committed
//!   when a crash came (the crash semantics: a power cut takes at most what was not synced);
//! - no I/O error ever makes an append fail, and once the faults are gone everything that
//!   waited in memory is written;
//! - an acknowledged record never comes back, unless a crash came before the checkpoint
//!   could be written (then it may come again: at-least-once, never a loss);
//! - the stats agree: `acked` is the last acknowledgement.
//!
//! Not generated: faults on the ledger file itself. The ledger is written in place in a
//! preallocated file precisely so that a full disk cannot fail it; an EIO there followed by
//! a crash is the one double fault that can forget a loss, and the agent logs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use rackhand::spool::memfs::{Fault, FaultKind, MemFs, Op as FsOp};
use rackhand::spool::{Filesystem, FullPolicy, Spool, SpoolOptions, SpoolReader, SpoolWriter};

#[derive(Debug, Clone)]
enum Op {
    /// Appends a payload; the seq jumps by `gap` (the sequence skips numbers after a crash).
    Append {
        len: usize,
        gap: u64,
    },
    Commit,
    /// Reads up to this many records.
    Read {
        n: usize,
    },
    /// Acknowledges the delivered record at this fraction of those not yet acknowledged.
    Ack {
        at: f64,
    },
    /// A power cut; `tear` keeps this fraction of each file's unsynced bytes.
    Crash {
        tear: f64,
    },
    /// Flips a bit in a segment file (chosen by `file`, at `at` of its length).
    Flip {
        file: f64,
        at: f64,
        bit: u8,
    },
    /// The next `skip`-th matching operation on segment files fails.
    Fault {
        op: FsOp,
        skip: u64,
        kind: FaultKind,
    },
    /// The disk fills up: only this many more bytes fit.
    Fill {
        room: u64,
    },
    /// Faults cleared and the disk has room again; the writer retries.
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    let fs_op = prop_oneof![
        Just(FsOp::Write),
        Just(FsOp::Sync),
        Just(FsOp::Read),
        Just(FsOp::Open),
        Just(FsOp::SetLen),
        Just(FsOp::WriteSmall),
    ];
    let kind = prop_oneof![
        Just(FaultKind::NoSpace),
        Just(FaultKind::Io),
        (1usize..40).prop_map(FaultKind::Torn),
    ];
    prop_oneof![
        12 => (0usize..300, 1u64..4).prop_map(|(len, gap)| Op::Append { len, gap }),
        3 => Just(Op::Commit),
        3 => (1usize..20).prop_map(|n| Op::Read { n }),
        2 => (0.0f64..1.0).prop_map(|at| Op::Ack { at }),
        1 => (0.0f64..=1.0).prop_map(|tear| Op::Crash { tear }),
        1 => (0.0f64..1.0, 0.0f64..1.0, 0u8..8).prop_map(|(file, at, bit)| Op::Flip { file, at, bit }),
        1 => (fs_op, 0u64..4, kind).prop_map(|(op, skip, kind)| Op::Fault { op, skip, kind }),
        1 => (0u64..600).prop_map(|room| Op::Fill { room }),
        2 => Just(Op::Heal),
    ]
}

/// Small segments so that rolls, footers, multi-segment reads and deletion all happen; a
/// bound of a few segments so that the full policy is exercised too.
fn options(full: Option<FullPolicy>) -> SpoolOptions {
    let mut options = SpoolOptions {
        segment_bytes: 1024,
        ..SpoolOptions::default()
    };
    if let Some(full) = full {
        options.max_bytes = 3 * 1024;
        options.full = full;
    }
    options
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

const DIR: &str = "/state/spool";

fn open(fs: &MemFs, options: &SpoolOptions) -> (SpoolWriter, SpoolReader) {
    let fs_dyn: Arc<dyn Filesystem> = Arc::new(fs.clone());
    let (w, r, _) = Spool::open_with(fs_dyn, Path::new(DIR), options.clone())
        .expect("opening never fails for damage");
    (w, r)
}

fn segment_paths(fs: &MemFs) -> Vec<PathBuf> {
    fs.names(Path::new(DIR))
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .map(|n| Path::new(DIR).join(n))
        .collect()
}

#[derive(Default)]
struct Model {
    appended: BTreeMap<u64, Vec<u8>>,
    next_seq: u64,
    /// Seqs the reader gave since the last (re)open, in order.
    delivered: BTreeSet<u64>,
    last_read: u64,
    /// Delivered and not yet acknowledged, in order.
    unacked: Vec<u64>,
    acked: u64,
    /// Uncommitted when a crash came: they may be gone without a count.
    may_vanish: BTreeSet<u64>,
    /// Every seq a loss taken from the ledger names.
    counted_lost: BTreeSet<u64>,
    /// The losses taken, for the failure message.
    notes: Vec<String>,
}

impl Model {
    fn take_losses(&mut self, writer: &mut SpoolWriter) {
        for (_, loss) in writer.take_losses(Instant::now(), true) {
            self.notes.push(format!("{loss:?}"));
            for (a, b) in loss.lost {
                self.counted_lost.extend(a..=b);
            }
        }
    }

    fn read(
        &mut self,
        reader: &mut SpoolReader,
        durable: u64,
        n: usize,
    ) -> Result<(), TestCaseError> {
        for _ in 0..n {
            let Some((seq, bytes)) = reader.next_record() else {
                break;
            };
            prop_assert!(seq > self.last_read, "{seq} after {}", self.last_read);
            prop_assert!(
                seq <= durable,
                "{seq} read before it was committed ({durable})"
            );
            prop_assert_eq!(Some(&bytes), self.appended.get(&seq), "payload of {}", seq);
            self.last_read = seq;
            self.delivered.insert(seq);
            self.unacked.push(seq);
        }
        Ok(())
    }
}

fn run(ops: Vec<Op>, full: Option<FullPolicy>) -> Result<(), TestCaseError> {
    let fs = MemFs::new();
    let options = options(full);
    let (mut writer, mut reader) = open(&fs, &options);
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
                writer
                    .append(seq, &bytes)
                    .map_err(|e| TestCaseError::fail(format!("append {seq}: {e}")))?;
                model.appended.insert(seq, bytes);
                writer.tick(Instant::now());
            }
            Op::Commit => writer.commit(),
            Op::Read { n } => {
                let durable = writer.durable_seq();
                model.read(&mut reader, durable, n)?;
            }
            Op::Ack { at } => {
                let Some(&seq) = model
                    .unacked
                    .get((at * model.unacked.len() as f64) as usize)
                else {
                    continue;
                };
                reader.ack(seq).unwrap();
                model.acked = seq;
                model.unacked.retain(|&s| s > seq);
            }
            Op::Crash { tear } => {
                model.take_losses(&mut writer);
                let durable = writer.durable_seq();
                model
                    .may_vanish
                    .extend(model.appended.range(durable + 1..).map(|(s, _)| *s));
                drop((writer, reader));
                fs.clear_faults();
                fs.set_capacity(None);
                fs.crash(&mut |_, unsynced| (unsynced as f64 * tear) as usize);
                (writer, reader) = open(&fs, &options);
                let stats = writer.stats();
                // Replay starts after what the spool knows acknowledged (a checkpoint that
                // could not be written brings some back: at-least-once).
                model.acked = stats.acked;
                model.last_read = stats.acked;
                model.unacked.clear();
                model.next_seq = model.next_seq.max(stats.last_seq + 1);
            }
            Op::Flip { file, at, bit } => {
                // Sealed segments only: damage at the very end of the tail found after a
                // crash has nothing checksummed after it to bound it (tests/quick/spool_recovery.rs
                // covers the tail's own cases).
                let mut segs = segment_paths(&fs);
                segs.pop();
                if segs.is_empty() {
                    continue;
                }
                let path = &segs[((file * segs.len() as f64) as usize).min(segs.len() - 1)];
                let len = fs.read(path).map_or(0, |d| d.len());
                if len == 0 {
                    continue;
                }
                fs.flip(
                    path,
                    ((at * len as f64) as u64).min(len as u64 - 1),
                    1 << bit,
                );
            }
            Op::Fault { op, skip, kind } => {
                let path = if op == FsOp::WriteSmall {
                    "checkpoint"
                } else {
                    ".seg"
                };
                fs.inject(Fault {
                    op,
                    path: Some(path.into()),
                    skip,
                    times: 1,
                    kind,
                });
            }
            Op::Fill { room } => fs.set_capacity(Some(fs.used() + room)),
            Op::Heal => {
                fs.clear_faults();
                fs.set_capacity(None);
                // The retry comes at the writer's own deadline; the model does not wait.
                if let Some(at) = writer.deadline() {
                    writer.tick(at.max(Instant::now()));
                }
            }
        }
        model.take_losses(&mut writer);
        prop_assert_eq!(writer.stats().acked, model.acked);
    }
    // The faults go; everything that waited is written, and read.
    fs.clear_faults();
    fs.set_capacity(None);
    // Bounded: each retry either succeeds or waits its backoff, which a far deadline covers.
    for _ in 0..3 {
        if let Some(at) = writer.deadline() {
            writer.tick(at.max(Instant::now()) + std::time::Duration::from_secs(60));
        }
    }
    writer.commit();
    let stats = writer.stats();
    prop_assert!(stats.storage_trouble.is_none(), "{:?}", stats);
    prop_assert_eq!(stats.waiting_in_memory, 0);
    let durable = writer.durable_seq();
    model.read(&mut reader, durable, usize::MAX)?;
    model.take_losses(&mut writer);
    for seq in model.appended.keys() {
        prop_assert!(
            model.delivered.contains(seq)
                || model.counted_lost.contains(seq)
                || model.may_vanish.contains(seq)
                || *seq <= model.acked,
            "record {} was neither delivered nor counted lost (losses: {:#?})",
            seq,
            model.notes
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: crate::support::proptest_regressions(), ..ProptestConfig::default() })]

    #[test]
    fn every_record_is_delivered_or_counted_whatever_the_disk_does(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, None)?;
    }

    #[test]
    fn under_block_nothing_is_lost_but_what_the_disk_damaged(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, Some(FullPolicy::Block))?;
    }

    #[test]
    fn under_drop_oldest_every_dropped_record_is_counted(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, Some(FullPolicy::DropOldest))?;
    }
}

#[test]
fn a_full_disk_never_fails_an_append_and_drains_as_upstream_takes_records() {
    let fs = MemFs::new();
    let options = options(None);
    let (mut writer, mut reader) = open(&fs, &options);
    for seq in 1..=20 {
        writer.append(seq, &payload(seq, 100)).unwrap();
    }
    writer.commit();
    fs.set_capacity(Some(fs.used() + 50));
    for seq in 21..=60 {
        writer.append(seq, &payload(seq, 100)).unwrap();
    }
    writer.commit();
    let stats = writer.stats();
    let trouble = stats.storage_trouble.clone().expect("the disk is full");
    assert_eq!(trouble.cause.as_str(), "disk_full");
    assert!(trouble.error.contains("free"), "{}", trouble.error);
    assert!(stats.waiting_in_memory > 0, "{stats:?}");
    assert!(
        writer.admission(Instant::now()).is_some(),
        "collections pause"
    );
    // Upstream takes what is durable, batch after batch: acknowledged segments go even
    // though the checkpoint cannot be written, and the space they free lets the writer
    // write what waited. The disk stays as full as it was all along.
    fs.inject(Fault::always(
        FsOp::WriteSmall,
        Some("checkpoint"),
        FaultKind::NoSpace,
    ));
    let mut got = Vec::new();
    // Bounded: each round ships what is durable; 60 records need far fewer rounds.
    for _ in 0..60 {
        while let Some((seq, bytes)) = reader.next_record() {
            assert_eq!(bytes, payload(seq, 100));
            got.push(seq);
        }
        if let Some(&last) = got.last() {
            reader.ack(last).unwrap();
        }
        if got.len() == 60 {
            break;
        }
        let at = writer.deadline().unwrap_or_else(Instant::now);
        writer.tick(at + std::time::Duration::from_secs(60));
        writer.commit();
    }
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
    let stats = writer.stats();
    assert!(stats.storage_trouble.is_none(), "{stats:?}");
    assert!(stats.checkpoint_trouble, "{stats:?}");
    assert_eq!(stats.waiting_in_memory, 0);
    assert!(writer.admission(Instant::now()).is_none());
    // The pause is reported (its length may round to 0 ms); no record is lost.
    let losses = writer.take_losses(Instant::now(), true);
    assert!(
        losses
            .iter()
            .all(|(_, l)| l.records == 0 && l.lost.is_empty() && l.bytes == 0),
        "nothing lost: {losses:?}"
    );
}

#[test]
fn a_full_disk_that_holds_only_the_acknowledged_segment_being_written_frees_it_and_goes_on() {
    let fs = MemFs::new();
    let options = options(None);
    let (mut writer, mut reader) = open(&fs, &options);
    for seq in 1..=5 {
        writer.append(seq, &payload(seq, 100)).unwrap();
    }
    writer.commit();
    while reader.next_record().is_some() {}
    reader.ack(5).unwrap();
    // Nothing else fits on the disk: only the ledger and the acknowledged segment are there.
    fs.set_capacity(Some(fs.used()));
    for seq in 6..=8 {
        writer.append(seq, &payload(seq, 100)).unwrap();
    }
    writer.commit();
    assert!(writer.stats().storage_trouble.is_some(), "the disk is full");
    let at = writer.deadline().expect("a retry is due");
    writer.tick(at + std::time::Duration::from_secs(60));
    writer.commit();
    let stats = writer.stats();
    assert!(stats.storage_trouble.is_none(), "{stats:?}");
    let got: Vec<u64> = std::iter::from_fn(|| reader.next_record())
        .map(|(seq, bytes)| {
            assert_eq!(bytes, payload(seq, 100));
            seq
        })
        .collect();
    assert_eq!(got, vec![6, 7, 8]);
    assert!(writer.take_losses(Instant::now(), true).is_empty());
}

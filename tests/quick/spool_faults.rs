//! Every write and read point of the spool, failed in turn.
//!
//! One fixed workload (appends that roll segments, commits, reads, acks, a clean stop and
//! restart in the middle, under both full-spool policies) runs once without faults to count
//! how often it calls each filesystem operation; then once per call of each operation with
//! exactly that call failing, as ENOSPC, as EIO and as a write torn after a few bytes. In
//! every run: no append fails, nothing panics, and once the disk behaves again every record
//! appended is delivered by the reader or counted lost in the ledger. (The random
//! interleavings, crashes and flipped bits are in tests/quick/spool_model.rs.)

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackhand::spool::memfs::{Fault, FaultKind, MemFs, Op};
use rackhand::spool::{Filesystem, FullPolicy, Spool, SpoolOptions, SpoolReader, SpoolWriter};

const DIR: &str = "/state/spool";
const RECORDS: u64 = 60;

fn options(full: FullPolicy) -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 1024,
        // Room for about five segments: drop_oldest has to drop.
        max_bytes: 5 * 1024,
        full,
        ..SpoolOptions::default()
    }
}

fn payload(seq: u64) -> Vec<u8> {
    (0..100).map(|i| (seq * 7 + i) as u8).collect()
}

fn open(fs: &MemFs, full: FullPolicy) -> (SpoolWriter, SpoolReader) {
    let fs_dyn: Arc<dyn Filesystem> = Arc::new(fs.clone());
    let (w, r, _) = Spool::open_with(fs_dyn, Path::new(DIR), options(full))
        .expect("opening never fails for a fault in a file");
    (w, r)
}

/// What a run saw: seqs delivered, seqs counted lost.
#[derive(Default)]
struct Seen {
    delivered: BTreeSet<u64>,
    lost: BTreeSet<u64>,
}

impl Seen {
    fn read(&mut self, reader: &mut SpoolReader, last: &mut u64) {
        while let Some((seq, bytes)) = reader.next_record() {
            assert_eq!(bytes, payload(seq), "payload of {seq}");
            self.delivered.insert(seq);
            *last = seq;
        }
    }

    fn take(&mut self, writer: &mut SpoolWriter) {
        for (_, loss) in writer.take_losses(Instant::now(), true) {
            for (a, b) in loss.lost {
                self.lost.extend(a..=b);
            }
        }
    }
}

/// Lets the writer retry now, as its deadline would (far enough ahead for any backoff).
fn retry(writer: &mut SpoolWriter) {
    for _ in 0..3 {
        if let Some(at) = writer.deadline() {
            writer.tick(at.max(Instant::now()) + Duration::from_secs(60));
        }
    }
}

/// The workload; `fault` is injected before it starts. Returns a description of anything
/// wrong (empty: the promise held).
fn run(fs: &MemFs, full: FullPolicy, fault: Option<Fault>) -> Vec<String> {
    if let Some(f) = fault {
        fs.inject(f);
    }
    let mut seen = Seen::default();
    let mut problems = Vec::new();
    let (mut writer, mut reader) = open(fs, full);
    let mut last_read = 0;
    for seq in 1..=RECORDS {
        if let Err(e) = writer.append(seq, &payload(seq)) {
            problems.push(format!("append {seq} failed: {e}"));
        }
        writer.tick(Instant::now());
        if seq % 10 == 0 {
            writer.commit();
            seen.read(&mut reader, &mut last_read);
            if last_read > 0 {
                reader.ack(last_read).expect("ack of a delivered record");
            }
            seen.take(&mut writer);
        }
        if seq == RECORDS / 2 {
            // A clean stop and start in the middle: close writes what it can and counts
            // what it cannot.
            writer.shipper_stopped();
            writer.close();
            seen.take(&mut writer);
            drop((writer, reader));
            (writer, reader) = open(fs, full);
            seen.take(&mut writer);
        }
    }
    // The disk behaves again: what waited is written, and read.
    fs.clear_faults();
    retry(&mut writer);
    writer.commit();
    let stats = writer.stats();
    if stats.storage_trouble.is_some() || stats.waiting_in_memory > 0 {
        problems.push(format!("still in trouble after the faults went: {stats:?}"));
    }
    seen.read(&mut reader, &mut last_read);
    seen.take(&mut writer);
    for seq in 1..=RECORDS {
        if !seen.delivered.contains(&seq) && !seen.lost.contains(&seq) {
            problems.push(format!("record {seq} neither delivered nor counted lost"));
        }
    }
    problems
}

fn sweep(full: FullPolicy) {
    let clean = MemFs::new();
    let problems = run(&clean, full, None);
    assert!(problems.is_empty(), "without faults: {problems:?}");
    let ops = [
        Op::Open,
        Op::Write,
        Op::Sync,
        Op::SetLen,
        Op::Read,
        Op::OpenRead,
        Op::Remove,
        Op::Rename,
        Op::SyncDir,
        Op::WriteSmall,
    ];
    let kinds = [FaultKind::NoSpace, FaultKind::Io, FaultKind::Torn(7)];
    let mut runs = 0;
    let mut failures = Vec::new();
    for op in ops {
        let calls = clean.calls(op);
        for n in 0..calls {
            for kind in kinds {
                if !matches!(op, Op::Write) && matches!(kind, FaultKind::Torn(_)) {
                    continue;
                }
                runs += 1;
                let fs = MemFs::new();
                let fault = Fault::nth(op, None, n, kind);
                let problems = run(&fs, full, Some(fault.clone()));
                if !problems.is_empty() {
                    failures.push(format!("{fault:?}: {problems:?}"));
                }
            }
        }
    }
    assert!(runs > 100, "the sweep covered only {runs} runs");
    assert!(
        failures.is_empty(),
        "{} of {runs} runs broke the promise:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_write_and_read_point_failed_in_turn_under_block_loses_nothing_silently() {
    sweep(FullPolicy::Block);
}

#[test]
fn every_write_and_read_point_failed_in_turn_under_drop_oldest_loses_nothing_silently() {
    sweep(FullPolicy::DropOldest);
}

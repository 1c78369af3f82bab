//! The crash-safe spool: records wait here, on the Pi's own card, until upstream has them.
//!
//! The uplink and the power of a rack fail, and SD cards fill up, flip bits and die; records
//! collected meanwhile must survive all of it and be shipped later, at least once, or be
//! counted lost in a gap record. The design follows Vector's disk_v2 buffer:
//! - append-only segment files of framed, checksummed records ([`frame`]), one fsync for
//!   many records (group commit), the acknowledged position in a `checkpoint`;
//! - [`Spool::open`] hands out two handles with two roles, enforced by types: the
//!   [`SpoolWriter`] (the agent's loop: append, commit, the full-spool policy, storage
//!   errors) and the [`SpoolReader`] (the shipper: read committed records, acknowledge);
//! - every loss, whatever its cause, is counted in one place, the ledger (`losses.rs`),
//!   durably before it becomes irreversible, and reported upstream as gap records;
//! - every byte goes through a [`Filesystem`] (`io`), so the fault tests can fill the disk,
//!   fail a write or tear it at any point ([`memfs`]).
//!
//! Opening is fast whatever the spool holds: sealed segments end with a footer that names
//! their records ([`frame::Footer`]), so only the unsealed tail segment is scanned; the
//! others are checked record by record as the reader reads them, and a damaged frame then
//! costs itself, not its neighbours (`scan.rs`). Limits come from the frame format and the
//! files' real sizes, never from the current config, so records spooled under an older
//! config are delivered whole.
//!
//! Layout in `dir` (the agent passes `state_dir/spool`):
//! - `<first seq, 20 digits>.seg`: segments, rolled at about `segment_bytes`;
//! - `checkpoint`: the highest seq upstream acknowledged, as decimal text;
//! - `ledger`: losses not yet reported upstream (`losses.rs`).

pub mod frame;
pub(crate) mod io;
mod losses;
pub mod memfs;
mod open;
mod reader;
mod scan;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

pub use io::{Filesystem, RealFs};
pub use losses::{LEDGER_FILE, Loss, REPORT_EVERY};
pub use reader::{SpoolReader, Wake, Waker};
pub use writer::SpoolWriter;

use crate::record::GapCause;
use losses::Ledger;
use scan::{Cursor, Damage, Item};

const CHECKPOINT: &str = "checkpoint";
const SEGMENT_EXT: &str = "seg";
const UNREADABLE_EXT: &str = "unreadable";

/// How often appended records are made durable (issue 5: about once a second by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// One fsync for everything appended in this interval (group commit): the SD card sees
    /// few, large writes, and a crash loses at most this much uncommitted work.
    Interval(Duration),
    /// An fsync after every append: the slowest, for racks where every record counts more
    /// than the card's wear.
    Always,
}

/// What to do when the spool reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Pause new collections (near the bound) until upstream takes records: nothing spooled
    /// is lost. Records of sessions already running still go in, past the bound if need be.
    Block,
    /// Delete the oldest segments to make room; the records lost are counted.
    DropOldest,
}

impl FullPolicy {
    /// Its name in the config (`spool_full`), status and gap records.
    pub fn as_str(self) -> &'static str {
        match self {
            FullPolicy::Block => "block",
            FullPolicy::DropOldest => "drop_oldest",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// A segment is sealed and a new one started when the next frame would pass this size.
    pub segment_bytes: u64,
    /// Upper bound of all segments on disk together.
    pub max_bytes: u64,
    pub full: FullPolicy,
    /// Largest payload [`SpoolWriter::append`] accepts (at most [`frame::MAX_PAYLOAD`]).
    /// Reads are bounded by the frame format, not by this.
    pub max_record_bytes: u32,
    /// The cadence [`SpoolWriter::commit_due`] applies.
    pub durability: Durability,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 4 * 1024 * 1024,
            max_bytes: 512 * 1024 * 1024,
            full: FullPolicy::Block,
            max_record_bytes: 16 * 1024 * 1024,
            durability: Durability::Interval(Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {error}; check that state_dir exists and is writable")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "record {seq} is {len} bytes, above the spool's limit of {max} bytes; lower max_output for that command"
    )]
    TooLarge { seq: u64, len: usize, max: u32 },
    #[error(
        "record {seq} does not follow {last} in spool {dir}: seqs must increase; the seq file in state_dir is behind the spool, restore it or start the sequence above {last}"
    )]
    NotIncreasing { dir: PathBuf, seq: u64, last: u64 },
    #[error(
        "acknowledging {seq} in spool {dir}, but the last record spooled is {last}: only records read from the spool can be acknowledged"
    )]
    AckBeyondData { dir: PathBuf, seq: u64, last: u64 },
}

/// What opening found and did; every field zero/false on a clean start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Records present after recovery, acknowledged or not.
    pub records: u64,
    /// Bytes cut off the tail segment (torn, zero-filled or garbage).
    pub tail_bytes_cut: u64,
    /// Damaged spans found in segments scanned at open; each is noted in the ledger.
    pub corrupt_spans: u64,
    pub corrupt_bytes_skipped: u64,
    /// Segments removed because nothing good was left in them.
    pub segments_removed: u64,
    /// Segments that could not be read (I/O error) and were renamed to `*.unreadable`.
    pub segments_set_aside: u64,
    /// Segments removed because all their records were acknowledged.
    pub acked_segments_removed: u64,
    /// Sealed segments without a footer (written by an older rackhand, or sealed by a crash)
    /// that had to be scanned whole.
    pub segments_scanned: u64,
    /// Temp files left by an interrupted atomic write.
    pub temp_files_removed: u64,
    /// The checkpoint could not be read; replay starts at the oldest record (duplicates
    /// upstream, never a loss).
    pub checkpoint_reset: bool,
    /// The checkpoint is above every record on disk (normal after all was acknowledged).
    pub checkpoint_ahead: bool,
    /// Records noted lost at open (in the ledger; they go upstream in a gap record).
    pub records_lost: u64,
    /// One line per action taken, naming the file, for the log.
    pub actions: Vec<String>,
}

impl RecoveryReport {
    /// True when something was damaged: the caller logs the actions.
    pub fn found_damage(&self) -> bool {
        self.tail_bytes_cut > 0
            || self.corrupt_spans > 0
            || self.segments_removed > 0
            || self.segments_set_aside > 0
            || self.checkpoint_reset
    }
}

/// The writer cannot write: why, since when, and what waits in memory meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageTrouble {
    /// `disk_full` or `io_error`.
    pub cause: GapCause,
    pub(crate) since: SystemTime,
    /// The error, naming the file and the free space.
    pub error: String,
}

/// Depth and losses, for `rackhand status` and gap records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records spooled and not yet acknowledged (those waiting in memory included).
    pub records: u64,
    /// Bytes of all segment files (acknowledged records in a live segment included).
    pub bytes: u64,
    pub(crate) segments: usize,
    pub oldest_unshipped: Option<u64>,
    pub acked: u64,
    /// Highest seq appended (or acknowledged, after a restart with an empty spool).
    pub last_seq: u64,
    /// Every record up to this seq is committed.
    pub(crate) durable_seq: u64,
    /// Records and bytes `drop_oldest` deleted unshipped since the spool was opened.
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    /// Records appended but not yet made durable.
    pub(crate) uncommitted_records: u64,
    /// Records drop-oldest deleted while the shipper held them in memory, not yet acked:
    /// lost if the agent stops now.
    pub held_dropped: u64,
    /// Records waiting in memory because the disk cannot take them.
    pub waiting_in_memory: u64,
    pub storage_trouble: Option<StorageTrouble>,
    /// Records noted lost since the spool was opened, per cause.
    pub(crate) lost: BTreeMap<GapCause, u64>,
    /// Records noted lost and not yet in a gap record.
    pub(crate) unreported_lost: u64,
    /// The checkpoint could not be written at the last acknowledgement (a restart then sends
    /// some records twice; nothing is lost).
    pub checkpoint_trouble: bool,
}

/// One segment file as the spool knows it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    /// On disk, footer included (and, for the tail, what the writer buffers).
    pub(crate) bytes: u64,
    /// Readers may read this far: everything up to it is committed.
    pub(crate) durable: u64,
    /// The last record's seq within `durable` (0: none).
    pub(crate) durable_last: u64,
    pub(crate) sealed: bool,
    /// The last record's seq (0 while it has none).
    pub(crate) last_seq: u64,
    pub(crate) records: u64,
    /// Records at or below the checkpoint (only the oldest live segment has any).
    pub(crate) acked_records: u64,
    pub(crate) first_unacked: Option<u64>,
}

impl Segment {
    fn unacked(&self) -> u64 {
        self.records.saturating_sub(self.acked_records)
    }
}

/// What the writer and the reader share, behind one lock.
pub(crate) struct State {
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) acked: u64,
    pub(crate) last_seq: u64,
    pub(crate) durable_seq: u64,
    pub(crate) ledger: Ledger,
    /// The highest seq the reader has handed out: drop-oldest tells lost from held by it.
    pub(crate) read_through: u64,
    /// Bumped by every commit: a waiting reader looks again.
    pub(crate) commits: u64,
    /// Bumped by [`Waker::wake`].
    pub(crate) wakes: u64,
    /// No more appends will come ([`Waker::close`]).
    pub(crate) closing: bool,
    pub(crate) dropped_records: u64,
    pub(crate) dropped_bytes: u64,
    pub(crate) uncommitted: u64,
    pub(crate) waiting_in_memory: u64,
    pub(crate) storage_trouble: Option<StorageTrouble>,
    pub(crate) checkpoint_trouble: bool,
    pub policy: FullPolicy,
}

impl State {
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn segment(&self, first_seq: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.first_seq == first_seq)
    }

    /// Notes damage met in segment `segment` (once per place), clipped to what is not
    /// acknowledged. `upper`: the seq no record of that segment reaches. `stays`: the
    /// damaged bytes stay in the file (a cut tail is gone, and its place is written again).
    pub fn note_damage(
        &mut self,
        segment: u64,
        upper: u64,
        d: &Damage,
        where_: &Path,
        stays: bool,
    ) {
        if self.ledger.seen(segment, (d.from, d.to)) {
            return;
        }
        if stays {
            self.ledger.mark_seen(segment, (d.from, d.to));
        }
        let loss = damage_loss(d, upper, self.acked, where_);
        if let Some(seg) = self.segments.iter_mut().find(|s| s.first_seq == segment) {
            seg.records = seg.records.saturating_sub(loss.records);
        }
        if loss.records > 0 || !loss.lost.is_empty() || loss.bytes > 0 {
            log::error!(
                "spool: {} damaged bytes in {} at byte {}: {} record(s) lost ({}); check the SD card",
                d.bytes(),
                where_.display(),
                d.from,
                loss.records,
                ranges_text(&loss.lost)
            );
            self.ledger.note(GapCause::Corrupt, loss);
        } else {
            self.ledger.persist();
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            records: self.segments.iter().map(Segment::unacked).sum::<u64>()
                + self.waiting_in_memory,
            bytes: self.bytes(),
            segments: self.segments.len(),
            oldest_unshipped: self.segments.iter().find_map(|s| s.first_unacked),
            acked: self.acked,
            last_seq: self.last_seq,
            durable_seq: self.durable_seq,
            dropped_records: self.dropped_records,
            dropped_bytes: self.dropped_bytes,
            uncommitted_records: self.uncommitted,
            held_dropped: self.ledger.held(),
            waiting_in_memory: self.waiting_in_memory,
            storage_trouble: self.storage_trouble.clone(),
            lost: self.ledger.totals().clone(),
            unreported_lost: self.ledger.pending_records(),
            checkpoint_trouble: self.checkpoint_trouble,
        }
    }
}

/// The loss a damaged span stands for, nothing at or below `acked`. Which seqs: those
/// between the good records around the span (checksummed, so trusted), or up to the
/// segment's last record when nothing good follows; only at the unbounded end of the tail
/// segment at open do the unverified headers inside the span have to name them. How many:
/// the headers that still chain through the span, when they do and fit, else the width of
/// the range (a range may name seqs that never existed: seqs skip after a restart).
fn damage_loss(d: &Damage, upper: u64, acked: u64, where_: &Path) -> Loss {
    let mut loss = Loss::default().with_detail(format!("{} at byte {}", where_.display(), d.from));
    let first = (d.after_seq + 1).max(acked + 1);
    let walked: Option<Vec<(u64, u64)>> = d
        .frames
        .as_ref()
        .map(|f| f.iter().filter(|x| x.0 > acked).copied().collect());
    let bound = d
        .next_seq
        .or((upper != u64::MAX && upper > 0).then_some(upper));
    if let Some(bound) = bound {
        if bound <= first {
            // Nothing unacknowledged in it (or only the footer).
            return loss;
        }
        let last = bound - 1;
        let width = last - first + 1;
        loss.lost.push((first, last));
        match walked {
            Some(w)
                if (w.len() as u64) <= width && w.iter().all(|f| (first..=last).contains(&f.0)) =>
            {
                loss.records = w.len() as u64;
                loss.bytes = w.iter().map(|f| f.1).sum();
            }
            _ => {
                loss.records = width;
                loss.bytes = d.bytes();
            }
        }
        return loss;
    }
    let plausible = |s: u64| s >= first && s - d.after_seq <= scan::PLAUSIBLE_JUMP;
    match walked {
        Some(w) if !w.is_empty() && w.iter().all(|f| plausible(f.0)) => {
            loss.records = w.len() as u64;
            loss.bytes = w.iter().map(|f| f.1).sum();
            loss.lost = joined(w.iter().map(|f| (f.0, f.0)).collect());
        }
        _ => match d.head_seq.filter(|&s| plausible(s)) {
            Some(s) => {
                loss.records = 1;
                loss.bytes = d.bytes();
                loss.lost.push((s, s));
            }
            // Bytes at the end of the tail that name no record (a zero-filled block):
            // reported by size only.
            None if d.after_seq >= acked => loss.bytes = d.bytes(),
            None => {}
        },
    }
    loss
}

fn joined(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `5-9, 12` for log lines.
pub fn ranges_text(ranges: &[(u64, u64)]) -> String {
    if ranges.is_empty() {
        return "seqs unknown".into();
    }
    let parts: Vec<String> = ranges
        .iter()
        .take(8)
        .map(|&(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    let more = if ranges.len() > 8 { ", …" } else { "" };
    format!("seq {}{more}", parts.join(", "))
}

/// The spool's shared core: the files, the options, and the state behind its lock.
pub(crate) struct Core {
    pub(crate) dir: PathBuf,
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) options: SpoolOptions,
    state: Mutex<State>,
    changed: Condvar,
}

impl Core {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits (at most `left`) for a [`Core::notify`].
    pub fn wait<'a>(&self, st: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

fn segment_seq(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Namespace of [`Spool::open`].
pub struct Spool;

/// How many of `seg`'s records are at or below `acked`, and the first above it. Reads
/// frames; damage is passed over (the reader notes it when it gets there).
pub(crate) fn count_acked(fs: &dyn Filesystem, seg: &Segment, acked: u64) -> (u64, Option<u64>) {
    let Ok(file) = fs.open_read(&seg.path) else {
        return (0, Some(seg.first_seq));
    };
    let mut cursor = Cursor::new(file, seg.durable, 0, None);
    let mut count = 0;
    // Each turn consumes one item; bounded by the segment.
    loop {
        match cursor.next() {
            Ok(Item::Record { seq, .. }) if seq <= acked => count += 1,
            Ok(Item::Record { seq, .. }) => return (count, Some(seq)),
            Ok(Item::Damage(_)) => {}
            Ok(Item::Footer(_)) | Ok(Item::End) | Err(_) => return (count, None),
        }
    }
}

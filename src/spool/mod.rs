//! The crash-safe spool: records wait here, on the Pi's own card, until upstream has them.
//!
//! The uplink and the power of a rack fail; records collected meanwhile must survive both
//! and be shipped later, at least once. The trusted shippers get this wrong in known ways
//! (acknowledging before fsync, panicking on a torn log), so the design follows Vector's
//! disk_v2 buffer: append-only segment files of framed, checksummed records
//! ([`frame`]), one fsync for many records (group commit: the caller decides the cadence),
//! the acknowledged position in a checkpoint written atomically, and explicit recovery at
//! open for every known kind of damage ([`recover`]) — never a panic, never a manual step.
//!
//! Layout in `dir` (the agent passes `state_dir/spool`):
//! - `<first seq, 20 digits>.seg`: segments, rolled at about `segment_bytes`;
//! - `checkpoint`: the highest seq upstream acknowledged, as decimal text.
//!
//! A record is durable only once [`Spool::commit`] returned after its append. Records at or
//! below the checkpoint are never read again; a segment whose records are all acknowledged
//! is deleted. The size bound is enforced at append: `Block` refuses the record (the agent
//! pauses collections), `DropOldest` deletes the oldest segments; both are counted in
//! [`Stats`] so the caller can log them and send a gap record upstream.

mod frame;
mod reader;
mod recover;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reader::Extent;
pub use reader::Reader;

use crate::seq::write_atomically;

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

/// What to do when an append would pass `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Refuse the record with [`SpoolError::Full`]: nothing spooled is lost, collection pauses.
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
    /// A segment is closed and a new one started when the next frame would pass this size.
    pub segment_bytes: u64,
    /// Upper bound of all segments on disk together.
    pub max_bytes: u64,
    pub full: FullPolicy,
    /// Largest payload accepted; also the bound on memory a read or a recovery needs.
    pub max_record_bytes: u32,
    /// The cadence [`Spool::commit_if_due`] applies.
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
    #[error("spool {path}: {error}; check that state_dir is writable and the disk has space")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "spool {dir} is full ({bytes} of {max_bytes} bytes; record {seq} needs {needed}): collections pause until upstream takes records; raise spool_max_bytes or set spool_full = \"drop_oldest\""
    )]
    Full {
        dir: PathBuf,
        seq: u64,
        bytes: u64,
        needed: u64,
        max_bytes: u64,
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
    #[error(
        "spool segment {path} is corrupt at byte {offset} ({detail}); the records after it in that segment are recovered at the next start of the agent"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

/// What recovery at open found and did; every field zero/false on a clean start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Records present after recovery, acknowledged or not.
    pub records: u64,
    /// Bytes cut off segment tails (torn, zero-filled or garbage).
    pub tail_bytes_cut: u64,
    /// Corrupt spans skipped in the middle of segments; each held at least one record.
    pub corrupt_spans: u64,
    pub corrupt_bytes_skipped: u64,
    /// Segments removed because nothing good was left in them.
    pub segments_removed: u64,
    /// Segments that could not be read (I/O error) and were renamed to `*.unreadable`.
    pub segments_set_aside: u64,
    /// Segments removed because all their records were acknowledged (a crash between the
    /// checkpoint write and the delete).
    pub acked_segments_removed: u64,
    /// Temp files left by an interrupted atomic write.
    pub temp_files_removed: u64,
    /// The checkpoint could not be read; replay starts at the oldest record (duplicates
    /// upstream, never a loss).
    pub checkpoint_reset: bool,
    /// The checkpoint is above every record on disk (normal after all was acknowledged).
    pub checkpoint_ahead: bool,
    /// One line per action taken, naming the file, for the log.
    pub actions: Vec<String>,
}

impl RecoveryReport {
    /// True when something was damaged: the caller logs it and sends a gap record.
    pub fn found_damage(&self) -> bool {
        self.tail_bytes_cut > 0
            || self.corrupt_spans > 0
            || self.segments_removed > 0
            || self.segments_set_aside > 0
            || self.checkpoint_reset
    }
}

/// Depth and losses, for `rackhand status` and gap records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records spooled and not yet acknowledged.
    pub records: u64,
    /// Bytes of all segment files (acknowledged records in a live segment included).
    pub bytes: u64,
    pub segments: usize,
    pub oldest_unshipped: Option<u64>,
    pub acked: u64,
    /// Highest seq appended (or acknowledged, after a restart with an empty spool).
    pub last_seq: u64,
    /// Records and bytes deleted unshipped by `DropOldest`.
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    /// Appends refused by `Block`.
    pub blocked_records: u64,
    pub blocked_bytes: u64,
    /// Records appended but not yet made durable by [`Spool::commit`].
    pub uncommitted_records: u64,
    /// Records drop-oldest deleted while the shipper held them in memory, not yet acked:
    /// lost if the agent stops now.
    pub held_dropped: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    bytes: u64,
    /// Records at or below the checkpoint (only the oldest live segment has any).
    acked_records: u64,
    first_unacked: Option<u64>,
}

impl Segment {
    fn unacked(&self) -> u64 {
        self.records - self.acked_records
    }
}

pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    segments: VecDeque<Segment>,
    /// Appends go to the last segment while this is open.
    writer: Option<BufWriter<File>>,
    acked: u64,
    last_seq: u64,
    bytes: u64,
    /// A segment was created or deleted since the last fsync of the folder.
    dir_dirty: bool,
    uncommitted: u64,
    last_commit: Instant,
    dropped_records: u64,
    dropped_bytes: u64,
    blocked_records: u64,
    blocked_bytes: u64,
    /// The highest seq the shipper has read into memory ([`Spool::note_read`]).
    read_through: u64,
    /// Seqs deleted by drop-oldest that the shipper had already read (so not lost yet: they
    /// are lost only if the agent stops before upstream takes them). In seq order.
    at_risk: VecDeque<u64>,
    /// Seq ranges deleted by drop-oldest before anyone read them: lost.
    lost_ranges: Vec<(u64, u64)>,
    /// Counts drop-oldest deletions, so a reader knows its snapshot went stale.
    generation: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(".seg")
        .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, repairing what a crash left behind.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, RecoveryReport), SpoolError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| SpoolError::Io { path, error }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut report = RecoveryReport::default();
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
                report.temp_files_removed += 1;
                report.actions.push(format!(
                    "removed {}: an interrupted atomic write",
                    path.display()
                ));
            } else if is_segment_name(&name) {
                names.push(name);
            }
        }
        names.sort();

        let checkpoint = dir.join(CHECKPOINT);
        let acked = match fs::read_to_string(&checkpoint) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    report.checkpoint_reset = true;
                    report.actions.push(format!(
                        "{} is unreadable (`{}`): replay starts at the oldest record, upstream may see duplicates",
                        checkpoint.display(),
                        text.trim().chars().take(40).collect::<String>()
                    ));
                    0
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => {
                return Err(SpoolError::Io {
                    path: checkpoint,
                    error,
                });
            }
        };

        let cap = options
            .segment_bytes
            .max(frame::HEADER as u64 + u64::from(options.max_record_bytes));
        let mut segments = VecDeque::new();
        let mut floor = 0u64;
        for name in names {
            let path = dir.join(&name);
            if let Some(seg) = recover_segment(&path, floor, acked, cap, &options, &mut report)? {
                floor = seg.last_seq;
                segments.push_back(seg);
            }
        }
        if report.checkpoint_reset {
            // Replace it now: left as it is, every start would report the same damage.
            write_atomically(&checkpoint, b"0\n").map_err(io_err(&checkpoint))?;
        }
        if acked > floor {
            report.checkpoint_ahead = true;
        }
        report.segments = segments.len();
        report.records = segments.iter().map(|s| s.records).sum();
        let dir_dirty = report.segments_removed
            + report.segments_set_aside
            + report.acked_segments_removed
            + report.temp_files_removed
            > 0
            || report.corrupt_spans > 0;

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments,
            writer: None,
            acked,
            last_seq: floor.max(acked),
            dir_dirty,
            uncommitted: 0,
            last_commit: Instant::now(),
            dropped_records: 0,
            dropped_bytes: 0,
            blocked_records: 0,
            blocked_bytes: 0,
            read_through: 0,
            at_risk: VecDeque::new(),
            lost_ranges: Vec::new(),
            generation: 0,
            options,
        };
        if let Some(last) = spool.segments.back() {
            // Records recovered from the last segment may sit only in the page cache (the
            // process died, the machine did not); from here on they count as durable.
            File::open(&last.path)
                .and_then(|f| f.sync_data())
                .map_err(io_err(&last.path))?;
        }
        if let Some(last) = spool.segments.back()
            && last.bytes < spool.options.segment_bytes
        {
            let file = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(io_err(&last.path))?;
            spool.writer = Some(BufWriter::with_capacity(64 * 1024, file));
        }
        spool.sync_dir()?;
        Ok((spool, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
        let path = path.to_path_buf();
        move |error| SpoolError::Io { path, error }
    }

    fn sync_dir(&mut self) -> Result<(), SpoolError> {
        if self.dir_dirty {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io(&self.dir))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Appends one record (buffered). It is durable only after the next [`Spool::commit`].
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), SpoolError> {
        self.append_inner(seq, payload, true)
    }

    /// Appends past `max_bytes` if need be. Only for records already collected when the
    /// agent stops under `FullPolicy::Block`: the bound is there to protect the disk, and
    /// the overshoot is limited to what the sessions in flight produced, whereas refusing
    /// would lose records that exist nowhere else.
    pub fn append_over_limit(&mut self, seq: u64, payload: &[u8]) -> Result<(), SpoolError> {
        self.append_inner(seq, payload, false)
    }

    fn append_inner(&mut self, seq: u64, payload: &[u8], bounded: bool) -> Result<(), SpoolError> {
        let max = self.options.max_record_bytes;
        if payload.len() > max as usize {
            return Err(SpoolError::TooLarge {
                seq,
                len: payload.len(),
                max,
            });
        }
        if seq <= self.last_seq {
            return Err(SpoolError::NotIncreasing {
                dir: self.dir.clone(),
                seq,
                last: self.last_seq,
            });
        }
        let needed = frame::HEADER as u64 + payload.len() as u64;
        if bounded {
            self.make_room(seq, needed)?;
        }
        let roll = match (&self.writer, self.segments.back()) {
            (Some(_), Some(seg)) => seg.bytes + needed > self.options.segment_bytes,
            _ => true,
        };
        if roll {
            self.roll(seq)?;
        }
        let Some(writer) = self.writer.as_mut() else {
            unreachable!("roll opened a segment");
        };
        let seg = self.segments.back_mut().expect("roll created a segment");
        let path = seg.path.clone();
        writer
            .write_all(&frame::header(seq, payload))
            .and_then(|()| writer.write_all(payload))
            .map_err(|error| SpoolError::Io { path, error })?;
        seg.last_seq = seq;
        seg.records += 1;
        seg.bytes += needed;
        if seg.first_unacked.is_none() {
            seg.first_unacked = Some(seq);
        }
        self.bytes += needed;
        self.last_seq = seq;
        self.uncommitted += 1;
        Ok(())
    }

    /// Applies the size bound before an append of `needed` bytes.
    fn make_room(&mut self, seq: u64, needed: u64) -> Result<(), SpoolError> {
        let max_bytes = self.options.max_bytes;
        let full = |spool: &Spool| SpoolError::Full {
            dir: spool.dir.clone(),
            seq,
            bytes: spool.bytes,
            needed,
            max_bytes,
        };
        if self.bytes + needed <= max_bytes {
            return Ok(());
        }
        if self.options.full == FullPolicy::Block || needed > max_bytes {
            self.blocked_records += 1;
            self.blocked_bytes += needed;
            return Err(full(self));
        }
        // Each turn deletes one segment: bounded by their number.
        while self.bytes + needed > max_bytes && !self.segments.is_empty() {
            if self.segments.len() == 1 {
                // The only segment is the one being written: close it durably first, its
                // records are about to be counted as dropped, not silently lost.
                self.seal()?;
            }
            let seg = self.segments.pop_front().expect("checked non-empty");
            let (lost, lost_bytes, held) = self.sort_out_dropped(&seg);
            fs::remove_file(&seg.path).map_err(self.io(&seg.path))?;
            self.dir_dirty = true;
            self.generation += 1;
            self.bytes -= seg.bytes;
            self.dropped_records += lost;
            self.dropped_bytes += lost_bytes;
            log::warn!(
                "spool {} is full: dropped {lost} unshipped records ({lost_bytes} bytes) of {}{}",
                self.dir.display(),
                seg.path.display(),
                if held > 0 {
                    format!(
                        "; {held} more were already read for shipping and are lost only if the agent stops before upstream takes them"
                    )
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    /// A segment drop-oldest is about to delete: which of its records are lost (not yet read
    /// by the shipper; their seq range is noted) and which the shipper holds in memory (at
    /// risk). Returns (lost, lost bytes, held).
    fn sort_out_dropped(&mut self, seg: &Segment) -> (u64, u64, u64) {
        let extent = Extent {
            path: seg.path.clone(),
            end: seg.bytes,
        };
        let frames = match reader::frame_seqs(&extent) {
            Ok(frames) => frames,
            Err(e) => {
                log::warn!(
                    "cannot list the records of {} before dropping it ({e}); all its unshipped records count as lost",
                    seg.path.display()
                );
                return (seg.unacked(), seg.bytes, 0);
            }
        };
        let (mut lost, mut lost_bytes, mut held) = (0, 0, 0);
        let mut range: Option<(u64, u64)> = None;
        for (seq, len) in frames {
            if seq <= self.acked {
                continue;
            }
            if seq <= self.read_through {
                self.at_risk.push_back(seq);
                held += 1;
            } else {
                lost += 1;
                lost_bytes += len;
                range = Some(range.map_or((seq, seq), |(first, _)| (first, seq)));
            }
        }
        self.lost_ranges.extend(range);
        (lost, lost_bytes, held)
    }

    /// The shipper has read `seq` into memory: should drop-oldest delete it now, it is not
    /// lost unless the agent stops before upstream takes it.
    pub fn note_read(&mut self, seq: u64) {
        self.read_through = self.read_through.max(seq);
    }

    /// The seqs counted in [`Stats::held_dropped`].
    pub fn held_dropped_seqs(&self) -> Vec<u64> {
        self.at_risk.iter().copied().collect()
    }

    /// Changes whenever drop-oldest deletes a segment: a [`Reader`] made before may hold
    /// records that now count as lost, and must be made again.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The seq ranges drop-oldest deleted unread since the last call (each range may hold
    /// fewer records than its width: seqs need not be consecutive).
    pub fn take_lost_ranges(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.lost_ranges)
    }

    /// Closes the segment being written (flush and fsync), if any.
    fn seal(&mut self) -> Result<(), SpoolError> {
        if let Some(mut w) = self.writer.take() {
            let path = self
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .map_err(|error| SpoolError::Io { path, error })?;
        }
        Ok(())
    }

    /// Starts a new segment whose first record is `seq`.
    fn roll(&mut self, seq: u64) -> Result<(), SpoolError> {
        // The old segment is synced now, so commit only has to sync the newest one.
        self.seal()?;
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(self.io(&path))?;
        self.writer = Some(BufWriter::with_capacity(64 * 1024, file));
        self.dir_dirty = true;
        self.segments.push_back(Segment {
            path,
            first_seq: seq,
            last_seq: 0,
            records: 0,
            bytes: 0,
            acked_records: 0,
            first_unacked: None,
        });
        Ok(())
    }

    /// Makes every record appended so far durable (one fsync for all of them).
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        if let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back()) {
            let path = seg.path.clone();
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .map_err(|error| SpoolError::Io { path, error })?;
        }
        self.sync_dir()?;
        self.uncommitted = 0;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Commits when the cadence in [`SpoolOptions::durability`] says so at `now`; true when
    /// it did. The caller calls it after appends and from its idle tick, so records never
    /// wait much longer than the interval to become durable.
    pub fn commit_if_due(&mut self, now: Instant) -> Result<bool, SpoolError> {
        if !self.commit_due(now) {
            return Ok(false);
        }
        self.commit()?;
        Ok(true)
    }

    /// Whether records are waiting and the cadence allows an fsync at `now`.
    pub fn commit_due(&self, now: Instant) -> bool {
        self.uncommitted > 0
            && match self.options.durability {
                Durability::Always => true,
                Durability::Interval(every) => {
                    now.saturating_duration_since(self.last_commit) >= every
                }
            }
    }

    /// When the records waiting now must be committed at the latest (`None`: none wait).
    /// An event loop waits until this deadline instead of polling.
    pub fn commit_deadline(&self) -> Option<Instant> {
        (self.uncommitted > 0).then(|| match self.options.durability {
            Durability::Always => self.last_commit,
            Durability::Interval(every) => self.last_commit + every,
        })
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        if let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.back()) {
            let path = seg.path.clone();
            w.flush().map_err(|error| SpoolError::Io { path, error })?;
        }
        Ok(())
    }

    /// Records upstream has: persists the position, then deletes segments that hold nothing
    /// newer. A crash between the two leaves segments that the next open deletes.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.acked {
            return Ok(());
        }
        if seq > self.last_seq {
            return Err(SpoolError::AckBeyondData {
                dir: self.dir.clone(),
                seq,
                last: self.last_seq,
            });
        }
        let checkpoint = self.dir.join(CHECKPOINT);
        write_atomically(&checkpoint, format!("{seq}\n").as_bytes())
            .map_err(self.io(&checkpoint))?;
        self.acked = seq;
        while self.at_risk.front().is_some_and(|&s| s <= seq) {
            self.at_risk.pop_front();
        }
        // Each turn deletes one segment: bounded by their number.
        while self.segments.front().is_some_and(|s| s.last_seq <= seq) {
            if self.segments.len() == 1 {
                self.seal()?;
            }
            let seg = self.segments.pop_front().expect("checked");
            fs::remove_file(&seg.path).map_err(self.io(&seg.path))?;
            self.bytes -= seg.bytes;
            self.dir_dirty = true;
        }
        if self.segments.front().is_some_and(|s| s.first_seq <= seq) {
            self.flush()?;
            let seg = self.segments.front().expect("checked");
            let extent = Extent {
                path: seg.path.clone(),
                end: seg.bytes,
            };
            let (acked_records, first_unacked) =
                reader::count_acked(&extent, seq).map_err(self.io(&extent.path))?;
            let seg = self.segments.front_mut().expect("checked");
            seg.acked_records = acked_records;
            seg.first_unacked = first_unacked;
        }
        Ok(())
    }

    /// Streams the records with `seq >= from` that are not acknowledged, in seq order, one
    /// at a time. Sees everything appended before the call, committed or not.
    pub fn read_from(&mut self, from: u64) -> Result<Reader, SpoolError> {
        self.flush()?;
        let from = from.max(self.acked.saturating_add(1));
        let extents = self
            .segments
            .iter()
            .filter(|s| s.last_seq >= from)
            .map(|s| Extent {
                path: s.path.clone(),
                end: s.bytes,
            })
            .collect();
        Ok(Reader::new(extents, from, self.options.max_record_bytes))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            records: self.segments.iter().map(Segment::unacked).sum(),
            bytes: self.bytes,
            segments: self.segments.len(),
            oldest_unshipped: self.segments.iter().find_map(|s| s.first_unacked),
            acked: self.acked,
            last_seq: self.last_seq,
            dropped_records: self.dropped_records,
            dropped_bytes: self.dropped_bytes,
            blocked_records: self.blocked_records,
            blocked_bytes: self.blocked_bytes,
            uncommitted_records: self.uncommitted,
            held_dropped: self.at_risk.len() as u64,
        }
    }
}

/// Reads one segment (at most `cap` bytes: nothing longer is ever written), repairs it on
/// disk, and returns what is left of it, or `None` when nothing is.
fn recover_segment(
    path: &Path,
    floor: u64,
    acked: u64,
    cap: u64,
    options: &SpoolOptions,
    report: &mut RecoveryReport,
) -> Result<Option<Segment>, SpoolError> {
    let io_err = |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    };
    let read = || -> io::Result<(u64, Vec<u8>)> {
        let file = File::open(path)?;
        let on_disk = file.metadata()?.len();
        let mut buf = Vec::with_capacity(on_disk.min(cap) as usize);
        file.take(cap).read_to_end(&mut buf)?;
        Ok((on_disk, buf))
    };
    let (on_disk, buf) = match read() {
        Ok(read) => read,
        Err(error) => {
            // A bad sector (EIO) would fail every start the same way: set the file aside,
            // where it is kept for inspection but no longer stops the agent.
            let aside = path.with_extension(UNREADABLE_EXT);
            fs::rename(path, &aside).map_err(io_err)?;
            report.segments_set_aside += 1;
            report.actions.push(format!(
                "{} is unreadable ({error}): moved to {}, its records are lost",
                path.display(),
                aside.display()
            ));
            return Ok(None);
        }
    };
    let scan = recover::scan(&buf, floor, options.max_record_bytes);
    // Corrupt spans lie before `good_end`; everything after it is the bad tail.
    let tail = on_disk - scan.good_end as u64;
    let skipped: u64 = scan.spans.iter().map(|(a, b)| (b - a) as u64).sum();
    let remove = |report: &mut RecoveryReport, why: &str| -> Result<Option<Segment>, SpoolError> {
        fs::remove_file(path).map_err(|error| SpoolError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        report
            .actions
            .push(format!("removed {}: {why}", path.display()));
        Ok(None)
    };
    if scan.frames.is_empty() {
        report.tail_bytes_cut += on_disk;
        report.segments_removed += 1;
        return remove(report, "no intact record in it");
    }
    if scan.frames.last().is_some_and(|f| f.seq <= acked) {
        report.acked_segments_removed += 1;
        return remove(report, "all its records were acknowledged");
    }
    let bytes = if !scan.spans.is_empty() {
        // Rewrite without the corrupt spans (atomically), so that readers and the next
        // open see a clean segment and the spans are counted exactly once.
        let mut clean = Vec::with_capacity(buf.len() - skipped as usize);
        for f in &scan.frames {
            clean.extend_from_slice(&buf[f.offset..f.offset + f.len]);
        }
        write_atomically(path, &clean).map_err(io_err)?;
        report.corrupt_spans += scan.spans.len() as u64;
        report.corrupt_bytes_skipped += skipped;
        report.tail_bytes_cut += tail;
        report.actions.push(format!(
            "{}: skipped {} corrupt span(s), {skipped} bytes, and cut a tail of {tail} bytes",
            path.display(),
            scan.spans.len()
        ));
        clean.len() as u64
    } else {
        if tail > 0 {
            let f = OpenOptions::new().write(true).open(path).map_err(io_err)?;
            f.set_len(scan.good_end as u64)
                .and_then(|()| f.sync_all())
                .map_err(io_err)?;
            report.tail_bytes_cut += tail;
            report.actions.push(format!(
                "{}: cut a torn, zero-filled or garbage tail of {tail} bytes",
                path.display()
            ));
        }
        scan.good_end as u64
    };
    let acked_records = scan.frames.iter().take_while(|f| f.seq <= acked).count() as u64;
    Ok(Some(Segment {
        path: path.to_path_buf(),
        first_seq: scan.frames[0].seq,
        last_seq: scan.last_seq().unwrap_or(0),
        records: scan.frames.len() as u64,
        bytes,
        acked_records,
        first_unacked: scan.frames.iter().map(|f| f.seq).find(|&s| s > acked),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("rackhand-spool-unit-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    #[test]
    fn group_commit_waits_for_the_interval_and_always_does_not() {
        let dir = temp("cadence");
        let (mut spool, _) = Spool::open(&dir.0, SpoolOptions::default()).unwrap();
        let start = Instant::now();
        assert!(
            !spool.commit_due(start + Duration::from_secs(5)),
            "nothing waits"
        );
        assert_eq!(spool.commit_deadline(), None);
        spool.append(1, b"{}").unwrap();
        let deadline = spool.commit_deadline().expect("a record waits");
        assert!(
            !spool
                .commit_if_due(deadline - Duration::from_millis(1))
                .unwrap()
        );
        assert_eq!(spool.stats().uncommitted_records, 1);
        assert!(spool.commit_if_due(deadline).unwrap());
        assert_eq!(spool.stats().uncommitted_records, 0);
        drop(spool);

        let always = SpoolOptions {
            durability: Durability::Always,
            ..SpoolOptions::default()
        };
        let (mut spool, _) = Spool::open(&dir.0, always).unwrap();
        spool.append(2, b"{}").unwrap();
        assert!(spool.commit_if_due(Instant::now()).unwrap());
        assert!(
            !spool.commit_if_due(Instant::now()).unwrap(),
            "nothing left to commit"
        );
    }
}

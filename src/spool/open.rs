//! Opening the spool: what a crash left behind, repaired or counted, before the writer and
//! the reader are handed out.
//!
//! In steps, each named: leftover temp files go and segments are listed
//! ([`list_segments`]), the checkpoint is read ([`read_checkpoint`]), each segment is known
//! by its footer or scanned ([`Opener::segment`]), segments already acknowledged go, the
//! ledger is reconciled with what is left ([`settle_ledger`]), and the tail is reopened for
//! appending and synced ([`reopen_tail`]). Damage is repaired or noted as lost, never an
//! error: only a folder that cannot be created or listed fails.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use super::io::{self, Filesystem, ReadFile, RealFs};
use super::losses::Ledger;
use super::scan::{Cursor, Damage, Item};
use super::{
    CHECKPOINT, Core, FullPolicy, Loss, RecoveryReport, Segment, Spool, SpoolError, SpoolOptions,
    SpoolReader, SpoolWriter, State, UNREADABLE_EXT, count_acked, frame, segment_name, segment_seq,
    writer,
};
use crate::record::GapCause;

impl Spool {
    /// Opens (or creates) the spool in `dir` on the machine's filesystem.
    pub fn open(
        dir: &Path,
        options: SpoolOptions,
    ) -> Result<(SpoolWriter, SpoolReader, RecoveryReport), SpoolError> {
        Spool::open_with(Arc::new(RealFs), dir, options)
    }

    /// Opens (or creates) the spool in `dir`, repairing what a crash left behind, and hands
    /// out its writer and its reader. Damage is repaired or noted as lost, never an error:
    /// only a folder that cannot be created or listed fails.
    pub fn open_with(
        fs: Arc<dyn Filesystem>,
        dir: &Path,
        options: SpoolOptions,
    ) -> Result<(SpoolWriter, SpoolReader, RecoveryReport), SpoolError> {
        let io_err = |error| SpoolError::Io {
            path: dir.to_path_buf(),
            error,
        };
        fs.create_dir_all(dir).map_err(io_err)?;
        let mut report = RecoveryReport::default();
        let seqs = list_segments(&*fs, dir, &mut report).map_err(io_err)?;
        let acked = read_checkpoint(&*fs, dir, &mut report);
        let ledger = Ledger::open(Arc::clone(&fs), dir, &mut report.actions);
        let mut state = State::opened(acked, ledger, options.full);
        let mut opener = Opener {
            fs: &*fs,
            dir,
            report: &mut report,
            state: &mut state,
        };
        let floor = opener.segments(&seqs);
        opener.drop_acknowledged();
        opener.count_acked();
        if acked > floor {
            report.checkpoint_ahead = true;
        }
        state.last_seq = floor.max(acked);
        state.durable_seq = state.last_seq;
        settle_ledger(&mut state, acked, options.full);
        report.segments = state.segments.len();
        report.records = state.segments.iter().map(|s| s.records).sum();
        report.records_lost = state.ledger.pending_records();
        let tail = reopen_tail(&*fs, &mut state, &mut report);
        let dir_synced = match fs.sync_dir(dir) {
            Ok(()) => true,
            Err(e) => {
                report.actions.push(format!(
                    "cannot sync {}: {e}; tried again at the next commit",
                    dir.display()
                ));
                false
            }
        };
        let core = Arc::new(Core {
            dir: dir.to_path_buf(),
            fs,
            options,
            state: Mutex::new(state),
            changed: Condvar::new(),
        });
        let writer = SpoolWriter::new(Arc::clone(&core), tail, !dir_synced);
        let reader = SpoolReader::new(core, acked + 1);
        Ok((writer, reader, report))
    }
}

impl State {
    /// The shared state of a spool being opened, before its segments are known.
    fn opened(acked: u64, ledger: Ledger, policy: FullPolicy) -> State {
        State {
            segments: VecDeque::new(),
            acked,
            last_seq: 0,
            durable_seq: 0,
            ledger,
            read_through: 0,
            commits: 0,
            wakes: 0,
            closing: false,
            dropped_records: 0,
            dropped_bytes: 0,
            uncommitted: 0,
            waiting_in_memory: 0,
            storage_trouble: None,
            checkpoint_trouble: false,
            policy,
        }
    }
}

/// The first seqs of the segments in `dir`, in order; temp files an interrupted atomic write
/// left are removed on the way.
fn list_segments(
    fs: &dyn Filesystem,
    dir: &Path,
    report: &mut RecoveryReport,
) -> std::io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for name in fs.list(dir)? {
        let path = dir.join(&name);
        if name.ends_with(".tmp") {
            if fs.remove(&path).is_ok() {
                report.temp_files_removed += 1;
                report.actions.push(format!(
                    "removed {}: an interrupted atomic write",
                    path.display()
                ));
            }
        } else if let Some(seq) = segment_seq(&name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The highest seq upstream acknowledged; 0 when the checkpoint is missing, and, noted in
/// the report, when it cannot be read or parsed (replay then starts at the oldest record).
fn read_checkpoint(fs: &dyn Filesystem, dir: &Path, report: &mut RecoveryReport) -> u64 {
    let checkpoint = dir.join(CHECKPOINT);
    match fs.read_small(&checkpoint) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            match text.trim().parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    report.checkpoint_reset = true;
                    report.actions.push(format!(
                        "{} is unreadable (`{}`): replay starts at the oldest record, upstream may see duplicates",
                        checkpoint.display(),
                        text.trim().chars().take(40).collect::<String>()
                    ));
                    // Replaced now: left as it is, every start would report the same.
                    let _ = fs.write_small(&checkpoint, b"0\n");
                    0
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            report.checkpoint_reset = true;
            report.actions.push(format!(
                "cannot read {} ({e}): replay starts at the oldest record, upstream may see duplicates",
                checkpoint.display()
            ));
            0
        }
    }
}

/// The ledger made consistent with the segments found: losses for records no segment holds
/// any more, records a previous run's shipper held when drop-oldest deleted them, and damage
/// below the oldest segment forgotten; then persisted.
fn settle_ledger(state: &mut State, acked: u64, policy: FullPolicy) {
    let ranges: Vec<(u64, u64)> = state
        .segments
        .iter()
        .map(|s| (s.first_seq, s.last_seq))
        .collect();
    state.ledger.reconcile(acked, |seq| {
        ranges.iter().any(|&(a, b)| a <= seq && seq <= b)
    });
    // Records drop-oldest deleted while a previous run's shipper held them, and that
    // upstream did not acknowledge before it ended, are lost.
    state.ledger.held_lost(acked, policy.as_str());
    if let Some(first) = state.segments.front().map(|s| s.first_seq) {
        state.ledger.forget_seen_below(first);
    }
    state.ledger.persist();
}

/// The unsealed tail, opened for appending. Records recovered from it may sit only in the
/// page cache (the process died, the machine did not): synced now, they count as durable.
/// None of this stops the agent: a tail that cannot be opened for writing is sealed as it
/// is (the next append starts a segment), an fsync that fails is tried again at the first
/// commit.
fn reopen_tail(
    fs: &dyn Filesystem,
    state: &mut State,
    report: &mut RecoveryReport,
) -> Option<writer::Tail> {
    let last = state.segments.back_mut().filter(|last| !last.sealed)?;
    match fs.open_write(&last.path, false) {
        Ok(mut file) => {
            let synced = match file.sync() {
                Ok(()) => last.bytes,
                Err(e) => {
                    report.actions.push(format!(
                        "cannot sync {}: {e}; tried again at the next commit",
                        last.path.display()
                    ));
                    0
                }
            };
            Some(writer::Tail {
                first_seq: last.first_seq,
                path: last.path.clone(),
                file,
                written: last.bytes,
                synced,
            })
        }
        Err(e) => {
            report.actions.push(format!(
                "cannot open {} to append to it: {e}; new records go to a new segment",
                last.path.display()
            ));
            last.sealed = true;
            None
        }
    }
}

/// What a scan of a segment found.
#[derive(Default)]
struct Scanned {
    records: u64,
    first_seq: Option<u64>,
    last_seq: u64,
    footer: Option<frame::Footer>,
    /// Where a damaged tail was cut off.
    cut_at: Option<u64>,
    /// Each damage, and whether it stays in the file (false: cut off with the tail).
    damages: Vec<(Damage, bool)>,
}

/// The work of [`Spool::open_with`] on each segment.
struct Opener<'a> {
    fs: &'a dyn Filesystem,
    dir: &'a Path,
    report: &'a mut RecoveryReport,
    state: &'a mut State,
}

impl Opener<'_> {
    /// Every segment of `seqs`, in order, into the state; returns the highest seq found.
    fn segments(&mut self, seqs: &[u64]) -> u64 {
        let mut floor = 0;
        for (i, &first) in seqs.iter().enumerate() {
            let next = seqs.get(i + 1).copied();
            if let Some(seg) = self.segment(first, floor, next, next.is_none()) {
                floor = seg.last_seq.max(floor);
                self.state.segments.push_back(seg);
            }
        }
        floor
    }

    /// What is left of segment `first` (`None`: nothing). A sealed one is known by its
    /// footer; the tail, or a sealed one without a footer, is scanned.
    fn segment(
        &mut self,
        first: u64,
        floor: u64,
        next: Option<u64>,
        is_tail: bool,
    ) -> Option<Segment> {
        let path = self.dir.join(segment_name(first));
        let opened = self.fs.open_read(&path).and_then(|file| {
            let len = file.size()?;
            Ok((file, len))
        });
        let (file, len) = match opened {
            Ok(opened) => opened,
            Err(e) => return self.set_aside(first, floor, next, &path, &e),
        };
        let mut records_end = len;
        if !is_tail && len >= frame::FOOTER as u64 {
            match self.footer(&*file, first, floor, len, &path) {
                Footed::Sealed(footer) => {
                    return Some(Segment {
                        first_seq: first,
                        path,
                        bytes: len,
                        durable: len,
                        durable_last: footer.last_seq,
                        sealed: true,
                        last_seq: footer.last_seq,
                        records: footer.records,
                        acked_records: 0,
                        first_unacked: None,
                    });
                }
                Footed::Damaged => records_end = len - frame::FOOTER as u64,
                Footed::No => {}
            }
        }
        if !is_tail {
            self.report.segments_scanned += 1;
        }
        let cursor = Cursor::new(file, records_end, floor.max(first.saturating_sub(1)), next);
        let scanned = match self.scan(cursor, &path, len, is_tail) {
            Ok(scanned) => scanned,
            Err(e) => return self.set_aside(first, floor, next, &path, &e),
        };
        // Counted once the scan is done: a footer found after the damage bounds it.
        let upper = match (scanned.footer, is_tail) {
            (Some(f), _) => f.last_seq.saturating_add(1),
            (None, true) => u64::MAX,
            (None, false) => next.unwrap_or(u64::MAX),
        };
        for (d, stays) in &scanned.damages {
            self.state.note_damage(first, upper, d, &path, *stays);
        }
        if scanned.records == 0 {
            self.remove_empty(&path);
            return None;
        }
        let mut bytes = records_end;
        if let Some(at) = scanned.cut_at {
            let cut = self
                .fs
                .open_write(&path, false)
                .and_then(|mut f| f.set_len(at).and_then(|()| f.sync()));
            match cut {
                Ok(()) => bytes = at,
                Err(e) => return self.set_aside(first, floor, next, &path, &e),
            }
        }
        if scanned.footer.is_none() && !is_tail && scanned.cut_at.is_none() {
            bytes += self.add_footer(&path, first, &scanned, bytes);
        }
        Some(Segment {
            first_seq: first,
            path,
            bytes,
            durable: bytes,
            durable_last: scanned.last_seq,
            sealed: scanned.footer.is_some() || !is_tail,
            last_seq: scanned.last_seq,
            records: scanned.records,
            acked_records: 0,
            first_unacked: scanned.first_seq,
        })
    }

    /// The footer of a sealed segment of `len` bytes, if it is intact and names records
    /// above `floor`. Where the records end matters for a damaged one: scanned as damage,
    /// that footer would be bounded only by the next segment's first seq, and after a restart
    /// (seqs skip the rest of a reserved block) the seqs in between, which never existed,
    /// would be counted lost.
    fn footer(
        &mut self,
        file: &dyn ReadFile,
        first: u64,
        floor: u64,
        len: u64,
        path: &Path,
    ) -> Footed {
        let mut tail = [0u8; frame::FOOTER];
        if io::read_exact_at(file, &mut tail, len - frame::FOOTER as u64).is_err() {
            return Footed::No;
        }
        let damaged = frame::Footer::is_damaged(&tail);
        if damaged {
            self.report.actions.push(format!(
                "{}: its footer is damaged; the segment is scanned and given a new one",
                path.display()
            ));
        }
        if let Some(footer) = frame::Footer::decode(&tail)
            && footer.first_seq == first
            && footer.last_seq > floor
        {
            return Footed::Sealed(footer);
        }
        if damaged { Footed::Damaged } else { Footed::No }
    }

    /// Reads every frame of a segment of `len` bytes: records counted, damage noted (a
    /// damaged end of the tail is cut off, so appends go on from the last good frame).
    fn scan(
        &mut self,
        mut cursor: Cursor,
        path: &Path,
        len: u64,
        is_tail: bool,
    ) -> std::io::Result<Scanned> {
        let mut scanned = Scanned::default();
        // Each turn consumes one item; the cursor moves forward every time.
        loop {
            match cursor.next()? {
                Item::Record { seq, .. } => {
                    scanned.records += 1;
                    scanned.last_seq = seq;
                    scanned.first_seq.get_or_insert(seq);
                }
                Item::Footer(f) => {
                    scanned.footer = Some(f);
                    return Ok(scanned);
                }
                Item::End => return Ok(scanned),
                Item::Damage(d) => {
                    if is_tail && d.to == len {
                        // A torn, zero-filled or garbage tail: cut, so appends go on
                        // from the last good frame.
                        scanned.cut_at = Some(d.from);
                        self.report.tail_bytes_cut += d.bytes();
                    } else {
                        self.report.corrupt_spans += 1;
                        self.report.corrupt_bytes_skipped += d.bytes();
                    }
                    self.report.actions.push(format!(
                        "{}: {} damaged bytes at byte {}{}",
                        path.display(),
                        d.bytes(),
                        d.from,
                        if scanned.cut_at.is_some() {
                            ", cut off"
                        } else {
                            ""
                        }
                    ));
                    let stays = scanned.cut_at.is_none();
                    scanned.damages.push((d, stays));
                }
            }
        }
    }

    /// A segment with no intact record goes.
    fn remove_empty(&mut self, path: &Path) {
        if let Err(e) = self.fs.remove(path) {
            self.report
                .actions
                .push(format!("cannot remove {}: {e}", path.display()));
        }
        self.report.segments_removed += 1;
        self.report.actions.push(format!(
            "removed {}: no intact record in it",
            path.display()
        ));
    }

    /// A sealed segment without a footer (sealed by an older rackhand, or by a crash before
    /// the footer) gets one at `at`, so the next open does not scan it again. Returns the
    /// bytes added (0 when it could not be written).
    fn add_footer(&mut self, path: &Path, first: u64, scanned: &Scanned, at: u64) -> u64 {
        let f = frame::Footer {
            first_seq: first,
            last_seq: scanned.last_seq,
            records: scanned.records,
        };
        if let Ok(mut w) = self.fs.open_write(path, false)
            && w.write_at(&f.encode(), at).and_then(|()| w.sync()).is_ok()
        {
            return frame::FOOTER as u64;
        }
        0
    }

    /// An unreadable segment (EIO): renamed aside for inspection, its unacknowledged
    /// records noted lost. A bad sector would otherwise fail every start the same way.
    fn set_aside(
        &mut self,
        first: u64,
        floor: u64,
        next: Option<u64>,
        path: &Path,
        error: &std::io::Error,
    ) -> Option<Segment> {
        let aside = path.with_extension(UNREADABLE_EXT);
        let _ = self.fs.rename(path, &aside);
        self.report.segments_set_aside += 1;
        self.report.actions.push(format!(
            "{} is unreadable ({error}): moved to {}, its records are lost",
            path.display(),
            aside.display()
        ));
        let from = first.max(floor + 1).max(self.state.acked + 1);
        let to = next.map(|n| n - 1);
        let loss = match to {
            Some(to) if to >= from => Loss::range(from, to, to - from + 1, 0),
            Some(_) => Loss::default(),
            None => Loss::default(),
        }
        .with_detail(format!("{}: {error}", path.display()));
        if !loss.lost.is_empty() || next.is_none() {
            let mut loss = loss;
            if next.is_none() && loss.lost.is_empty() {
                // The tail's extent is unknown: at least its first record is gone.
                loss = Loss::range(from, from, 1, 0).with_detail(loss.detail.unwrap_or_default());
            }
            self.state.ledger.note(GapCause::Unreadable, loss);
        }
        None
    }

    /// Segments holding only acknowledged records (a crash between the checkpoint write and
    /// their deletion) go.
    fn drop_acknowledged(&mut self) {
        let acked = self.state.acked;
        // Each turn removes one segment: bounded by their number.
        while self
            .state
            .segments
            .front()
            .is_some_and(|s| s.last_seq <= acked)
        {
            let seg = self.state.segments.pop_front().expect("checked");
            if self.fs.remove(&seg.path).is_ok() {
                self.report.acked_segments_removed += 1;
                self.report.actions.push(format!(
                    "removed {}: all its records were acknowledged",
                    seg.path.display()
                ));
            }
        }
    }

    /// For the oldest segment: how many of its records are acknowledged, and the first that
    /// is not (reads its headers; the others have none acknowledged).
    fn count_acked(&mut self) {
        let acked = self.state.acked;
        for seg in self.state.segments.iter_mut().skip(1) {
            seg.first_unacked = Some(seg.first_unacked.unwrap_or(seg.first_seq));
        }
        let Some(seg) = self.state.segments.front_mut() else {
            return;
        };
        if seg.first_seq > acked {
            seg.first_unacked = Some(seg.first_unacked.unwrap_or(seg.first_seq));
            return;
        }
        let (count, first) = count_acked(self.fs, seg, acked);
        seg.acked_records = count;
        seg.first_unacked = first;
    }
}

/// What the last bytes of a sealed segment say.
enum Footed {
    /// An intact footer: the segment is known without a scan.
    Sealed(frame::Footer),
    /// A footer spoiled by a flipped bit: the records end before it.
    Damaged,
    /// No footer to go by.
    No,
}

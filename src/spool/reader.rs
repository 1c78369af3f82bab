//! The spool's reading side, owned by the shipper: committed records in seq order, and
//! acknowledgements.
//!
//! The reader sees only what the writer has committed, one record at a time (a spool may
//! hold hundreds of MiB while the uplink is down, and the Pi has little memory). It checks
//! every frame as it reads it, which is what lets opening skip the sealed segments: damage
//! found here is noted in the ledger (durably, once per place) and the reader goes on with
//! the next good frame of the same segment, so one flipped bit costs one record, and the
//! acknowledgement that later deletes the segment never passes a loss that was not counted.
//! An unreadable segment (EIO) is noted likewise and passed over.
//!
//! [`SpoolReader::ack`] persists the acknowledged position and deletes the segments it
//! covers. On a full card the checkpoint may not be writable: the segments are deleted all
//! the same (a crash then replays some records, never loses any) and the space they free
//! lets the writer go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::losses::Loss;
use super::scan::{Cursor, Item};
use super::{CHECKPOINT, Core, SpoolError, count_acked, ranges_text};
use crate::durable_file::human_bytes;
use crate::record::GapCause;

/// Where the reader is: a segment (by its first seq) and a cursor in it.
struct Position {
    segment: u64,
    cursor: Cursor,
}

/// The part of a segment one read may cover: up to what is committed (`end`), below
/// `upper` (`u64::MAX`: unbounded).
struct Window {
    segment: u64,
    end: u64,
    upper: u64,
    sealed: bool,
}

/// One step of [`SpoolReader::next_record`].
enum Step<T> {
    /// Go on with this.
    Go(T),
    /// Look again (another item, another segment).
    Again,
    /// Nothing more is committed for now.
    CaughtUp,
}

/// The spool's reader; see the module doc.
pub struct SpoolReader {
    core: Arc<Core>,
    /// Records below this seq are not returned.
    next: u64,
    at: Option<Position>,
    /// The segment last read to its end: the next one read comes after it.
    finished: Option<u64>,
    seen_commits: u64,
    seen_wakes: u64,
}

/// Why [`SpoolReader::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something was committed since the reader last found nothing.
    Committed,
    /// [`Waker::wake`] was called.
    Woken,
    /// [`Waker::close`]: nothing more will be appended.
    Closing,
    TimedOut,
}

/// Wakes or closes a [`SpoolReader`] waiting in another thread.
#[derive(Clone)]
pub struct Waker(Arc<Core>);

impl Waker {
    pub fn wake(&self) {
        self.0.lock().wakes += 1;
        self.0.notify();
    }

    /// Nothing more will be appended: a reader that has read everything may finish.
    pub fn close(&self) {
        self.0.lock().closing = true;
        self.0.notify();
    }
}

impl SpoolReader {
    pub(super) fn new(core: Arc<Core>, next: u64) -> SpoolReader {
        SpoolReader {
            core,
            next,
            at: None,
            finished: None,
            seen_commits: 0,
            seen_wakes: 0,
        }
    }

    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.core))
    }

    /// The highest seq upstream acknowledged.
    pub fn acked(&self) -> u64 {
        self.core.lock().acked
    }

    /// Starts reading again at `seq` (records below it are passed over).
    pub fn seek(&mut self, seq: u64) {
        self.next = seq;
        self.at = None;
        self.finished = None;
    }

    /// The next committed record above everything returned so far, or `None` when the reader
    /// has caught up with the writer (then [`Self::wait`]). Damage is noted and passed over,
    /// never returned.
    pub fn next_record(&mut self) -> Option<(u64, Vec<u8>)> {
        // Each turn consumes one item of a segment or moves to the next segment: bounded by
        // the spool's content.
        loop {
            let window = match self.window() {
                Step::Go(window) => window,
                Step::Again => continue,
                Step::CaughtUp => return None,
            };
            let item = self.read_item(&window);
            match self.take_item(item, &window) {
                Step::Go(record) => return Some(record),
                Step::Again => continue,
                Step::CaughtUp => return None,
            }
        }
    }

    /// The segment to read from now, opened at the reader's place: the current one while it
    /// exists, else the next after the one finished (or the one holding `next`).
    fn window(&mut self) -> Step<Window> {
        let mut st = self.core.lock();
        self.seen_commits = st.commits;
        let current = self
            .at
            .as_ref()
            .and_then(|p| st.segment(p.segment).map(|s| (p.segment, s)));
        let seg = match current {
            Some((_, s)) => s,
            None => {
                if let Some(p) = self.at.take() {
                    // Deleted under us (dropped or acknowledged): what it held is
                    // counted where it was deleted.
                    self.finished = Some(p.segment);
                }
                let chosen = match self.finished {
                    Some(done) => st.segments.iter().find(|s| s.first_seq > done),
                    None => st
                        .segments
                        .iter()
                        .rev()
                        .find(|s| s.first_seq <= self.next)
                        .or(st.segments.front()),
                };
                let Some(seg) = chosen else {
                    return Step::CaughtUp;
                };
                match self.core.fs.open_read(&seg.path) {
                    Ok(file) => {
                        let floor = seg.first_seq.saturating_sub(1);
                        self.at = Some(Position {
                            segment: seg.first_seq,
                            cursor: Cursor::new(file, seg.durable, floor, None),
                        });
                        seg
                    }
                    Err(e) if seg.sealed => {
                        let (first, path) = (seg.first_seq, seg.path.clone());
                        let upper = seg.last_seq.saturating_add(1);
                        unreadable(&mut st, first, 0, first, upper, &path, &e);
                        self.finished = Some(first);
                        return Step::Again;
                    }
                    Err(e) => {
                        // The tail, which the writer holds open: try again at the
                        // next call rather than pass over what it will still get.
                        log::warn!("cannot open {} to read it: {e}", seg.path.display());
                        return Step::CaughtUp;
                    }
                }
            }
        };
        // What bounds the records this read can meet: the segment's last record,
        // or in the tail, the last one committed (later ones may still be buffered).
        let last = if seg.sealed {
            seg.last_seq
        } else {
            seg.durable_last
        };
        let upper = if last > 0 {
            last.saturating_add(1)
        } else {
            u64::MAX
        };
        Step::Go(Window {
            segment: seg.first_seq,
            end: seg.durable,
            upper,
            sealed: seg.sealed,
        })
    }

    /// The next item of the window, outside the lock. A read error may pass (a busy card):
    /// two more tries before the rest counts as unreadable.
    fn read_item(&mut self, window: &Window) -> std::io::Result<Item> {
        let pos = self.at.as_mut().expect("chosen by window");
        pos.cursor.end = window.end;
        pos.cursor
            .set_upper((window.upper != u64::MAX).then_some(window.upper));
        let mut item = pos.cursor.next();
        for _ in 0..2 {
            if item.is_ok() {
                break;
            }
            item = pos.cursor.next();
        }
        item
    }

    /// What an item means: a record to return, the segment's end, damage or an unreadable
    /// rest to note and pass over.
    fn take_item(&mut self, item: std::io::Result<Item>, window: &Window) -> Step<(u64, Vec<u8>)> {
        let segment = window.segment;
        let mut st = self.core.lock();
        if st.segment(segment).is_none() {
            // Deleted while we read: see `window`.
            return Step::Again;
        }
        match item {
            Ok(Item::Record { seq, payload }) => {
                if seq < self.next || seq <= st.acked {
                    return Step::Again;
                }
                self.next = seq + 1;
                st.read_through = st.read_through.max(seq);
                return Step::Go((seq, payload));
            }
            Ok(Item::Footer(_)) => {
                self.at = None;
                self.finished = Some(segment);
            }
            Ok(Item::End) if window.sealed => {
                self.at = None;
                self.finished = Some(segment);
            }
            Ok(Item::End) => return Step::CaughtUp,
            Ok(Item::Damage(d)) => {
                let path = st
                    .segment(segment)
                    .map(|s| s.path.clone())
                    .unwrap_or_default();
                st.note_damage(segment, window.upper, &d, &path, true);
            }
            Err(e) => {
                let Some(path) = st.segment(segment).map(|s| s.path.clone()) else {
                    return Step::Again;
                };
                let pos = self.at.as_mut().expect("reading it");
                let from = pos.cursor.last_seq + 1;
                let at = pos.cursor.pos;
                unreadable(&mut st, segment, at, from, window.upper, &path, &e);
                if window.sealed {
                    self.at = None;
                    self.finished = Some(segment);
                } else {
                    // The tail goes on growing: pass over what is committed of it now
                    // and read on from there.
                    pos.cursor.pos = window.end;
                    pos.cursor.last_seq = window.upper.saturating_sub(1).max(pos.cursor.last_seq);
                }
            }
        }
        Step::Again
    }

    /// Waits until something is committed after the last [`Self::next_record`] that found nothing,
    /// a [`Waker`] wakes or closes, or `deadline` passes (`None`: at most a minute).
    pub fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        let mut st = self.core.lock();
        // Spurious wakeups loop; each turn waits for what is left of a fixed deadline.
        loop {
            if st.wakes != self.seen_wakes {
                self.seen_wakes = st.wakes;
                return Wake::Woken;
            }
            if st.closing {
                return Wake::Closing;
            }
            if st.commits != self.seen_commits {
                return Wake::Committed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::TimedOut;
            }
            st = self.core.wait(st, left);
        }
    }

    /// Whether [`Waker::close`] was called.
    pub fn closing(&self) -> bool {
        self.core.lock().closing
    }

    /// Upstream has every record up to `seq`: persists the position, then deletes the
    /// sealed segments that hold nothing newer (see the module doc for a full card).
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let mut st = self.core.lock();
        if seq <= st.acked {
            return Ok(());
        }
        if seq > st.last_seq {
            return Err(SpoolError::AckBeyondData {
                dir: self.core.dir.clone(),
                seq,
                last: st.last_seq,
            });
        }
        st.acked = seq;
        st.ledger.acked(seq);
        let checkpoint = self.core.path(CHECKPOINT);
        match self
            .core
            .fs
            .write_small(&checkpoint, format!("{seq}\n").as_bytes())
        {
            Ok(()) if st.checkpoint_trouble => {
                st.checkpoint_trouble = false;
                log::info!("{} is written again", checkpoint.display());
            }
            Ok(()) => {}
            Err(e) if !st.checkpoint_trouble => {
                st.checkpoint_trouble = true;
                let free = self
                    .core
                    .fs
                    .free_bytes(&self.core.dir)
                    .map_or_else(|| "unknown space".to_string(), human_bytes);
                log::error!(
                    "cannot write {}: {e} ({free} free); acknowledged segments are deleted all the same, and a restart now would send some records twice",
                    checkpoint.display()
                );
            }
            Err(_) => {}
        }
        // Each turn deletes one segment: bounded by their number. The last segment is the
        // writer's while it is open, so only sealed ones go here.
        while st
            .segments
            .front()
            .is_some_and(|s| s.sealed && s.last_seq <= seq)
        {
            let seg = st.segments.pop_front().expect("checked");
            if let Err(e) = self.core.fs.remove(&seg.path) {
                log::warn!(
                    "cannot delete the acknowledged segment {}: {e}; it is deleted at the next start",
                    seg.path.display()
                );
            }
        }
        if let Some(first) = st.segments.front().map(|s| s.first_seq) {
            st.ledger.forget_seen_below(first);
        }
        if let Some(seg) = st.segments.front()
            && seg.first_seq <= seq
        {
            let (count, first) = count_acked(&*self.core.fs, seg, seq);
            let seg = st.segments.front_mut().expect("checked");
            seg.acked_records = count;
            seg.first_unacked = first;
        }
        Ok(())
    }

    /// Records upstream refused for good (each gone whole to the dead-letter file): lost to
    /// upstream, reported in a gap record with cause `rejected`.
    pub fn rejected(&mut self, loss: Loss) {
        self.core.lock().ledger.note(GapCause::Rejected, loss);
    }
}

/// Notes the unacknowledged records `from..upper` of segment `segment` (met at byte `at`) as
/// lost to an I/O error.
fn unreadable(
    st: &mut super::State,
    segment: u64,
    at: u64,
    from: u64,
    upper: u64,
    path: &std::path::Path,
    error: &std::io::Error,
) {
    if st.ledger.seen(segment, (at, upper)) {
        return;
    }
    st.ledger.mark_seen(segment, (at, upper));
    let from = from.max(st.acked + 1);
    let last = upper.saturating_sub(1);
    let loss = if last >= from && upper != u64::MAX {
        Loss::range(from, last, last - from + 1, 0)
    } else {
        Loss::default()
    }
    .with_detail(format!("{}: {error}", path.display()));
    log::error!(
        "spool segment {} cannot be read ({error}): {} record(s) lost ({}); the SD card is failing",
        path.display(),
        loss.records,
        ranges_text(&loss.lost)
    );
    if let Some(seg) = st.segments.iter_mut().find(|s| s.first_seq == segment) {
        seg.records = seg.records.saturating_sub(loss.records);
    }
    if loss.records > 0 {
        st.ledger.note(GapCause::Unreadable, loss);
    } else {
        st.ledger.persist();
    }
}

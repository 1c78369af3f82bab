//! The spool's writing side, owned by the agent's loop: append, group commit, the full-spool
//! policy, and what to do when the card cannot take a write.
//!
//! Frames are encoded into a small buffer and written at offsets the writer tracks itself,
//! so a write that fails half way (the card filled up mid-frame) is cut back to the last
//! whole frame and the file never holds half a record in the middle. When a write or a sync
//! fails, nothing is given up and the agent does not stop: the writer keeps what it could
//! not write in memory, tells the agent to pause new collections ([`SpoolWriter::admission`],
//! as `block` does), logs once with the path and the free space, and tries again with a
//! growing backoff; once the disk takes writes again it writes what waited and goes on.
//! Under `drop_oldest` a full disk is treated like a full spool: the oldest segments go, and
//! their loss is counted. Only if the agent stops while the disk still refuses are the
//! records in memory lost, and then the ledger (written in place, it needs no new block)
//! counts them for a gap record at the next start.
//!
//! The full-spool policy lives in one place, `writer/full.rs`.

mod full;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::frame::{FOOTER, Footer, HEADER, MAX_PAYLOAD, header};
use super::io::WriteFile;
use super::losses::Loss;
use super::{
    Core, Durability, FullPolicy, Segment, SpoolError, Stats, StorageTrouble, joined, ranges_text,
    segment_name,
};
use crate::durable_file::{human_bytes, is_out_of_space};
use crate::record::GapCause;

/// Frames are written to the file once this much is buffered (and at every commit).
const FLUSH_AT: usize = 64 * 1024;
/// The first retry after a storage error; the wait doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The segment being appended to.
pub(super) struct Tail {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Box<dyn WriteFile>,
    /// Bytes known to be in the file, all whole frames.
    pub(crate) written: u64,
    /// Bytes made durable.
    pub(crate) synced: u64,
}

/// A write that failed, and where.
struct Failure {
    path: PathBuf,
    error: io::Error,
}

fn failure(path: &std::path::Path) -> impl FnOnce(io::Error) -> Failure + '_ {
    move |error| Failure {
        path: path.to_path_buf(),
        error,
    }
}

/// The disk refuses writes: since when, why, and when to try again.
struct Trouble {
    cause: GapCause,
    since: Instant,
    attempts: u32,
    next_try: Instant,
    /// The acknowledged position at the last attempt: an acknowledgement since has deleted
    /// segments, so there may be room now, whatever the backoff says.
    acked: u64,
}

/// A record that could not be placed while the disk refused writes; it waits in memory.
struct Waiting {
    seq: u64,
    payload: Vec<u8>,
    /// Subject to the full-spool policy (false: a gap record, which may pass the bound, or
    /// a record taken back from an acknowledged tail).
    bounded: bool,
}

/// The spool's writer; see the module doc.
pub struct SpoolWriter {
    core: Arc<Core>,
    tail: Option<Tail>,
    /// Encoded frames not yet written, all for the tail segment.
    buf: Vec<u8>,
    /// (seq, frame length) of each frame in `buf`.
    buf_frames: Vec<(u64, u64)>,
    /// Records that could not be placed while the disk refused writes, oldest first.
    waiting: VecDeque<Waiting>,
    trouble: Option<Trouble>,
    uncommitted: u64,
    last_commit: Instant,
    /// A segment was created or deleted since the last fsync of the folder.
    dir_dirty: bool,
    /// Admission is paused, for this cause, since then.
    pause: Option<(GapCause, Instant)>,
    last_full_warning: Option<Instant>,
}

impl SpoolWriter {
    /// `tail`: the segment opening found to go on appending to; `dir_dirty`: the folder
    /// still needs an fsync.
    pub(super) fn new(core: Arc<Core>, tail: Option<Tail>, dir_dirty: bool) -> SpoolWriter {
        SpoolWriter {
            core,
            tail,
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            buf_frames: Vec::new(),
            waiting: VecDeque::new(),
            trouble: None,
            uncommitted: 0,
            last_commit: Instant::now(),
            dir_dirty,
            pause: None,
            last_full_warning: None,
        }
    }

    pub fn stats(&self) -> Stats {
        self.core.lock().stats()
    }

    /// Every record up to this seq is committed.
    pub fn durable_seq(&self) -> u64 {
        self.core.lock().durable_seq
    }

    /// Appends one record. It is durable after the next [`SpoolWriter::commit`]; should the
    /// disk refuse it, it waits in memory (see the module doc). Errors only for a record
    /// that breaks the spool's rules (too large, seq not increasing).
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> Result<(), SpoolError> {
        self.append_inner(seq, payload, true)
    }

    fn append_inner(&mut self, seq: u64, payload: &[u8], bounded: bool) -> Result<(), SpoolError> {
        let max = self.core.options.max_record_bytes.min(MAX_PAYLOAD);
        if payload.len() > max as usize {
            return Err(SpoolError::TooLarge {
                seq,
                len: payload.len(),
                max,
            });
        }
        {
            let mut st = self.core.lock();
            if seq <= st.last_seq {
                return Err(SpoolError::NotIncreasing {
                    dir: self.core.dir.clone(),
                    seq,
                    last: st.last_seq,
                });
            }
            st.last_seq = seq;
            st.uncommitted += 1;
        }
        self.uncommitted += 1;
        if self.trouble.is_some() || !self.waiting.is_empty() {
            self.wait_in_memory(seq, payload.to_vec(), bounded);
            return Ok(());
        }
        if let Err(f) = self.place(seq, payload, bounded) {
            self.wait_in_memory(seq, payload.to_vec(), bounded);
            self.fail(f);
        } else if self.buf.len() >= FLUSH_AT
            && let Err(f) = self.flush_buf()
        {
            self.fail(f);
        }
        Ok(())
    }

    fn wait_in_memory(&mut self, seq: u64, payload: Vec<u8>, bounded: bool) {
        self.waiting.push_back(Waiting {
            seq,
            payload,
            bounded,
        });
        self.core.lock().waiting_in_memory = self.waiting.len() as u64;
    }

    /// Puts one frame into the buffer of the tail segment: room first (`drop_oldest`), a new
    /// segment if this one is full.
    fn place(&mut self, seq: u64, payload: &[u8], bounded: bool) -> Result<(), Failure> {
        let needed = (HEADER + payload.len()) as u64;
        if bounded && self.core.options.full == FullPolicy::DropOldest {
            self.make_room(needed)?;
        }
        let roll = match &self.tail {
            None => true,
            Some(t) => {
                let st = self.core.lock();
                st.segment(t.first_seq).is_none_or(|s| {
                    s.records > 0 && s.bytes + needed > self.core.options.segment_bytes
                })
            }
        };
        if roll {
            self.roll(seq)?;
        }
        self.buf.extend_from_slice(&header(seq, payload));
        self.buf.extend_from_slice(payload);
        self.buf_frames.push((seq, needed));
        let first = self.tail.as_ref().expect("rolled above").first_seq;
        let mut st = self.core.lock();
        if let Some(seg) = st.segments.iter_mut().rev().find(|s| s.first_seq == first) {
            seg.bytes += needed;
            seg.records += 1;
            seg.last_seq = seq;
            seg.first_unacked.get_or_insert(seq);
        }
        Ok(())
    }

    /// Seals the tail (if any) and starts a segment whose first record is `seq`.
    fn roll(&mut self, seq: u64) -> Result<(), Failure> {
        if self.tail.is_some() {
            self.seal()?;
        }
        let path = self.core.path(&segment_name(seq));
        let mut file = self
            .core
            .fs
            .open_write(&path, true)
            .map_err(failure(&path))?;
        if file.size().map_err(failure(&path))? > 0 {
            // Left by a create that a crash interrupted: nothing in it counts.
            file.set_len(0).map_err(failure(&path))?;
        }
        self.dir_dirty = true;
        self.core.lock().segments.push_back(Segment {
            first_seq: seq,
            path: path.clone(),
            bytes: 0,
            durable: 0,
            durable_last: 0,
            sealed: false,
            last_seq: 0,
            records: 0,
            acked_records: 0,
            first_unacked: None,
        });
        self.tail = Some(Tail {
            first_seq: seq,
            path,
            file,
            written: 0,
            synced: 0,
        });
        Ok(())
    }

    /// Writes what is buffered and the footer, syncs, and closes the tail. A segment whose
    /// records are all acknowledged goes at once.
    fn seal(&mut self) -> Result<(), Failure> {
        self.flush_buf()?;
        let tail = self.tail.as_mut().expect("seal needs a tail");
        let (last_seq, records) = {
            let st = self.core.lock();
            st.segment(tail.first_seq)
                .map_or((0, 0), |s| (s.last_seq, s.records))
        };
        let footer = Footer {
            first_seq: tail.first_seq,
            last_seq,
            records,
        }
        .encode();
        let written = tail
            .file
            .write_at(&footer, tail.written)
            .and_then(|()| tail.file.sync());
        if let Err(error) = written {
            // Cut back so the retry writes the footer again, after the last whole frame.
            let _ = tail.file.set_len(tail.written);
            return Err(Failure {
                path: tail.path.clone(),
                error,
            });
        }
        let tail = self.tail.take().expect("checked");
        let bytes = tail.written + FOOTER as u64;
        let mut st = self.core.lock();
        let acked = st.acked;
        let mut gone = None;
        if let Some(i) = st
            .segments
            .iter()
            .position(|s| s.first_seq == tail.first_seq)
        {
            let seg = &mut st.segments[i];
            seg.bytes = bytes;
            seg.durable = bytes;
            seg.durable_last = seg.last_seq;
            seg.sealed = true;
            if seg.last_seq <= acked && i == 0 {
                gone = st.segments.pop_front();
            }
        }
        st.durable_seq = st.durable_seq.max(last_seq);
        st.commits += 1;
        drop(st);
        self.core.notify();
        if let Some(seg) = gone
            && self.core.fs.remove(&seg.path).is_ok()
        {
            self.dir_dirty = true;
        }
        Ok(())
    }

    /// Writes the buffered frames after the last whole frame in the file; on failure cuts
    /// the file back there and keeps the buffer for the retry.
    fn flush_buf(&mut self) -> Result<(), Failure> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let tail = self
            .tail
            .as_mut()
            .expect("buffered frames belong to the tail");
        if let Err(error) = tail.file.write_at(&self.buf, tail.written) {
            let _ = tail.file.set_len(tail.written);
            return Err(Failure {
                path: tail.path.clone(),
                error,
            });
        }
        tail.written += self.buf.len() as u64;
        self.buf.clear();
        self.buf_frames.clear();
        Ok(())
    }

    /// Makes every record appended so far durable (one fsync for all of them). Never fails:
    /// when the disk refuses, the writer is in trouble and retries from [`Self::tick`].
    pub fn commit(&mut self) {
        if self.trouble.is_some() {
            return;
        }
        if let Err(f) = self.sync_all() {
            self.fail(f);
        }
    }

    fn sync_all(&mut self) -> Result<(), Failure> {
        self.flush_buf()?;
        if let Some(tail) = self.tail.as_mut()
            && tail.synced < tail.written
        {
            tail.file.sync().map_err(failure(&tail.path))?;
            tail.synced = tail.written;
        }
        if self.dir_dirty {
            self.core
                .fs
                .sync_dir(&self.core.dir)
                .map_err(failure(&self.core.dir))?;
            self.dir_dirty = false;
        }
        let mut st = self.core.lock();
        if let Some(tail) = &self.tail
            && let Some(seg) = st
                .segments
                .iter_mut()
                .rev()
                .find(|s| s.first_seq == tail.first_seq)
        {
            seg.durable = tail.synced;
            seg.durable_last = seg.last_seq;
        }
        if self.waiting.is_empty() {
            st.durable_seq = st.last_seq;
        }
        st.uncommitted = 0;
        st.commits += 1;
        drop(st);
        self.core.notify();
        self.uncommitted = 0;
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Whether records wait and the cadence allows an fsync at `now`.
    pub fn commit_due(&self, now: Instant) -> bool {
        self.uncommitted > 0
            && match self.core.options.durability {
                Durability::Always => true,
                Durability::Interval(every) => {
                    now.saturating_duration_since(self.last_commit) >= every
                }
            }
    }

    /// When the writer wants to run next at the latest: the next commit, or the next retry
    /// after a storage error (`None`: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        if let Some(t) = &self.trouble {
            return Some(t.next_try);
        }
        if self.uncommitted == 0 {
            return None;
        }
        if self.pause.is_some() {
            // Paused for room: commit at once so the shipper can free some.
            return Some(self.last_commit);
        }
        Some(match self.core.options.durability {
            Durability::Always => self.last_commit,
            Durability::Interval(every) => self.last_commit + every,
        })
    }

    /// Commits when due, or retries after a storage error when its backoff allows or an
    /// acknowledgement may have freed room (the agent's loop is woken by each one); the
    /// caller calls it after appends and whenever [`Self::deadline`] passes.
    pub fn tick(&mut self, now: Instant) {
        if let Some(t) = &self.trouble {
            let freed = self.core.lock().acked > t.acked;
            if now >= t.next_try || freed {
                self.retry();
            }
            return;
        }
        if self.commit_due(now) || (self.pause.is_some() && self.uncommitted > 0) {
            self.commit();
        }
    }

    /// One attempt to write what waits and make it durable.
    fn retry(&mut self) {
        self.release_acknowledged_tail();
        match self.drain_waiting().and_then(|()| self.sync_all()) {
            Ok(()) => {
                if let Some(t) = self.trouble.take() {
                    log::info!(
                        "spool {}: the disk takes writes again after {:.1} s; what waited in memory is written",
                        self.core.dir.display(),
                        t.since.elapsed().as_secs_f64()
                    );
                }
                self.core.lock().storage_trouble = None;
            }
            Err(f) => self.fail(f),
        }
    }

    /// What the segment being written has on disk is all acknowledged: it goes, and what
    /// was buffered for it waits with the rest, so a full disk that holds nothing else of
    /// the spool gets that space back (the reader deletes only sealed segments, and sealing
    /// needs room for a footer).
    fn release_acknowledged_tail(&mut self) {
        let Some(tail) = &self.tail else {
            return;
        };
        let mut st = self.core.lock();
        let acked = st.acked;
        let Some(seg) = st.segments.back().filter(|s| s.first_seq == tail.first_seq) else {
            return;
        };
        // Seqs on disk are all below the first buffered one.
        let written_last = self
            .buf_frames
            .first()
            .map_or(seg.last_seq, |f| f.0.saturating_sub(1));
        if tail.written == 0 || written_last > acked {
            return;
        }
        st.segments.pop_back();
        let mut at = 0usize;
        let mut back = Vec::with_capacity(self.buf_frames.len());
        for (seq, len) in self.buf_frames.drain(..) {
            let len = len as usize;
            back.push(Waiting {
                seq,
                payload: self.buf[at + HEADER..at + len].to_vec(),
                bounded: false,
            });
            at += len;
        }
        self.buf.clear();
        for record in back.into_iter().rev() {
            self.waiting.push_front(record);
        }
        st.waiting_in_memory = self.waiting.len() as u64;
        drop(st);
        let tail = self.tail.take().expect("checked");
        if self.core.fs.remove(&tail.path).is_ok() {
            self.dir_dirty = true;
        }
    }

    fn drain_waiting(&mut self) -> Result<(), Failure> {
        self.flush_buf()?;
        // Each turn places one record or stops: bounded by the queue.
        while let Some(record) = self.waiting.pop_front() {
            if let Err(f) = self.place(record.seq, &record.payload, record.bounded) {
                self.waiting.push_front(record);
                return Err(f);
            }
            self.core.lock().waiting_in_memory = self.waiting.len() as u64;
            if self.buf.len() >= FLUSH_AT {
                self.flush_buf()?;
            }
        }
        self.flush_buf()
    }

    /// A write or sync failed: note the trouble (logged once per condition), and under
    /// `drop_oldest` with a full disk, make room by dropping the oldest segment.
    fn fail(&mut self, f: Failure) {
        let cause = if is_out_of_space(&f.error) {
            GapCause::DiskFull
        } else {
            GapCause::IoError
        };
        let now = Instant::now();
        let mut next_try = None;
        if cause == GapCause::DiskFull && self.core.options.full == FullPolicy::DropOldest {
            match self.drop_front(GapCause::DiskFull) {
                Ok(true) => next_try = Some(now),
                Ok(false) => {}
                Err(e) => log::debug!("{}: {}", e.path.display(), e.error),
            }
        }
        let free = self
            .core
            .fs
            .free_bytes(&self.core.dir)
            .map_or_else(|| "unknown space".to_string(), human_bytes);
        let error = format!(
            "cannot write {}: {} ({free} free)",
            f.path.display(),
            f.error
        );
        let acked = self.core.lock().acked;
        match &mut self.trouble {
            Some(t) if t.cause == cause => {
                t.attempts += 1;
                t.next_try = next_try.unwrap_or(now + backoff(t.attempts));
                t.acked = acked;
                log::debug!("spool: still {error} (attempt {})", t.attempts);
            }
            _ => {
                let what = match cause {
                    GapCause::DiskFull => {
                        "the disk is full: free space on it or lower spool_max_bytes below the free space"
                    }
                    _ => "an I/O error: check the SD card (dmesg) and replace it if errors go on",
                };
                log::error!(
                    "spool {error}; {what}. New collections pause; records already collected wait in memory and are written as soon as the disk takes them"
                );
                let since = self.trouble.as_ref().map_or(now, |t| t.since);
                self.trouble = Some(Trouble {
                    cause,
                    since,
                    attempts: 1,
                    next_try: next_try.unwrap_or(now + RETRY_FIRST),
                    acked,
                });
            }
        }
        let mut st = self.core.lock();
        let since_wall = match &st.storage_trouble {
            Some(t) => t.since,
            None => SystemTime::now(),
        };
        st.storage_trouble = Some(StorageTrouble {
            cause,
            since: since_wall,
            error,
        });
    }

    /// The losses to report now as gap records (see `Ledger::take_due` in `losses.rs`).
    /// With `force` (at stop: no collection starts any more), a pause under way ends now
    /// and goes too.
    pub fn take_losses(&mut self, now: Instant, force: bool) -> Vec<(GapCause, Loss)> {
        let mut st = self.core.lock();
        if force && let Some((cause, since)) = self.pause.take() {
            let ms = now.saturating_duration_since(since).as_millis() as u64;
            st.ledger.note_pause(cause, 0, ms);
        }
        st.ledger.take_due(now, force, self.pause.map(|p| p.0))
    }

    /// Appends the gap record `seq` that reports `loss` (past the bound if need be: it is
    /// small, and it is what says what the bound cost).
    pub fn append_gap(
        &mut self,
        seq: u64,
        payload: &[u8],
        cause: GapCause,
        loss: Loss,
    ) -> Result<(), SpoolError> {
        match self.append_inner(seq, payload, false) {
            Ok(()) => {
                self.core.lock().ledger.reported(seq, cause, loss);
                Ok(())
            }
            Err(e) => {
                self.core.lock().ledger.unreport(cause, loss);
                Err(e)
            }
        }
    }

    /// Counts a loss found outside the spool (a record that could not be spooled).
    pub fn note_loss(&mut self, cause: GapCause, loss: Loss) {
        self.core.lock().ledger.note(cause, loss);
    }

    /// A loss taken with [`Self::take_losses`] that could not become a gap record.
    pub fn unreport(&mut self, cause: GapCause, loss: Loss) {
        self.core.lock().ledger.unreport(cause, loss);
    }

    /// The shipper has stopped: records drop-oldest deleted while it held them, and that
    /// upstream did not acknowledge, are lost now.
    pub fn shipper_stopped(&mut self) {
        let mut st = self.core.lock();
        let acked = st.acked;
        let policy = st.policy.as_str();
        st.ledger.held_lost(acked, policy);
    }

    /// At stop: a last attempt to write what waits. What the disk still refuses is noted
    /// lost in the ledger (in place: it needs no new block), to be reported at the next
    /// start. Returns how many records that was.
    pub fn close(&mut self) -> u64 {
        let now = Instant::now();
        if let Some((cause, since)) = self.pause.take() {
            let ms = now.saturating_duration_since(since).as_millis() as u64;
            self.core.lock().ledger.note_pause(cause, 0, ms);
        }
        if self.trouble.is_some() {
            self.retry();
        } else {
            self.commit();
        }
        let Some(trouble) = &self.trouble else {
            self.core.lock().closing = true;
            self.core.notify();
            return 0;
        };
        let mut lost: Vec<(u64, u64)> = Vec::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for &(seq, len) in &self.buf_frames {
            records += 1;
            bytes += len;
            lost.push((seq, seq));
        }
        for record in &self.waiting {
            records += 1;
            bytes += (HEADER + record.payload.len()) as u64;
            lost.push((record.seq, record.seq));
        }
        let lost = joined(lost);
        log::error!(
            "stopping while the disk refuses writes: {records} collected records ({}) could not be spooled and are lost; a gap record reports them at the next start",
            ranges_text(&lost)
        );
        let mut st = self.core.lock();
        st.ledger.note(
            trouble.cause,
            Loss {
                records,
                bytes,
                lost,
                detail: Some("the agent stopped before the disk took them".into()),
                ..Loss::default()
            },
        );
        st.closing = true;
        drop(st);
        self.core.notify();
        records
    }
}

/// The wait before retry `attempts` (1-based) after a storage error.
fn backoff(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

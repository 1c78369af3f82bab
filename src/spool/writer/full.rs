//! The full-spool policy, applied here and only here: `drop_oldest` deletes whole segments
//! before an append would pass `max_bytes` (and when the disk is full), counting what each
//! cost; `block` never refuses an append (records of sessions already running still go in)
//! but pauses admission near the bound and resumes it well below, so the agent does not flap
//! around the limit.

use std::time::Instant;

use super::super::io::Filesystem;
use super::super::scan::{Cursor, Item};
use super::super::{FullPolicy, Loss, REPORT_EVERY, Segment, damage_loss, joined, ranges_text};
use super::{Failure, HEADER, SpoolWriter};
use crate::record::GapCause;

/// Under `block`, admission pauses at 15/16 of the bound and resumes below 3/4 of it.
const PAUSE_AT: (u64, u64) = (15, 16);
const RESUME_BELOW: (u64, u64) = (3, 4);

impl SpoolWriter {
    /// `drop_oldest`: deletes the oldest segments until `needed` more bytes fit the bound.
    pub(super) fn make_room(&mut self, needed: u64) -> Result<(), Failure> {
        let max = self.core.options.max_bytes;
        // Each turn deletes one segment: bounded by their number.
        loop {
            let bytes = {
                let st = self.core.lock();
                if st.segments.is_empty() {
                    return Ok(());
                }
                st.bytes()
            };
            if bytes + needed <= max {
                return Ok(());
            }
            if !self.drop_front(GapCause::SpoolFull)? {
                return Ok(());
            }
        }
    }

    /// Deletes the oldest segment, noting its unacknowledged records as lost (those the
    /// shipper has not read) or held (those it has: lost only if it stops before upstream
    /// takes them). Durable in the ledger before the file goes. False: nothing to drop (the
    /// only segment is the one being written and the disk, not the bound, is full).
    pub(super) fn drop_front(&mut self, cause: GapCause) -> Result<bool, Failure> {
        let front = match self.core.lock().segments.front() {
            Some(s) => s.first_seq,
            None => return Ok(false),
        };
        if self.tail.as_ref().is_some_and(|t| t.first_seq == front) {
            if cause == GapCause::DiskFull {
                return Ok(false);
            }
            // The only segment is the one being written: its frames go with it.
            self.flush_buf()?;
            self.tail = None;
        }
        let mut st = self.core.lock();
        let seg = st.segments.pop_front().expect("checked");
        let Dropped {
            records,
            bytes,
            lost,
            held,
        } = dropped(&*self.core.fs, &seg, st.acked, st.read_through);
        let why = match cause {
            GapCause::DiskFull => "the disk is full",
            _ => "the spool is full",
        };
        log::warn!(
            "{why} (spool_full = \"drop_oldest\"): dropped {records} unshipped records ({bytes} bytes, {}) of {}{}",
            ranges_text(&lost),
            seg.path.display(),
            if held.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} more were already read for shipping and are lost only if the agent stops before upstream takes them",
                    held.len()
                )
            }
        );
        st.ledger.note_held(cause, held);
        st.dropped_records += records;
        st.dropped_bytes += bytes;
        st.ledger.note(
            cause,
            Loss {
                records,
                bytes,
                lost,
                detail: Some(format!("dropped {}", seg.path.display())),
                ..Loss::default()
            },
        );
        if let Some(first) = st.segments.front().map(|s| s.first_seq) {
            st.ledger.forget_seen_below(first);
        }
        drop(st);
        if let Err(e) = self.core.fs.remove(&seg.path) {
            log::error!(
                "cannot delete {}: {e}; its records are counted lost all the same",
                seg.path.display()
            );
        }
        self.dir_dirty = true;
        Ok(true)
    }

    /// Whether new collections may start; `Some(cause)` while they must wait: the spool is
    /// near its bound under `block` (hysteresis, see the module doc), or the disk refuses
    /// writes. Pauses are counted in the ledger and reported in gap records.
    pub fn admission(&mut self, now: Instant) -> Option<GapCause> {
        let want = if let Some(t) = &self.trouble {
            Some(t.cause)
        } else if self.core.options.full == FullPolicy::Block {
            let bytes = self.core.lock().bytes();
            let max = self.core.options.max_bytes;
            let paused_full = matches!(self.pause, Some((GapCause::SpoolFull, _)));
            let threshold = if paused_full {
                max / RESUME_BELOW.1 * RESUME_BELOW.0
            } else {
                max / PAUSE_AT.1 * PAUSE_AT.0
            };
            (bytes >= threshold).then_some(GapCause::SpoolFull)
        } else {
            None
        };
        let current = self.pause.map(|p| p.0);
        if want != current {
            if let Some((cause, since)) = self.pause.take() {
                let paused = now.saturating_duration_since(since);
                self.core
                    .lock()
                    .ledger
                    .note_pause(cause, 0, paused.as_millis() as u64);
                if want.is_none() {
                    log::info!("collections resume: the spool takes records again");
                }
            }
            if let Some(cause) = want {
                self.pause = Some((cause, now));
                if cause == GapCause::SpoolFull {
                    // A spool flapping at its bound would otherwise warn twice a second.
                    let quiet = self
                        .last_full_warning
                        .is_some_and(|t| now.saturating_duration_since(t) < REPORT_EVERY);
                    let level = if quiet {
                        log::Level::Debug
                    } else {
                        log::Level::Warn
                    };
                    self.last_full_warning = Some(now);
                    let bytes = self.core.lock().bytes();
                    log::log!(
                        level,
                        "spool full ({bytes} of {} bytes): new collections pause until upstream takes records (spool_full = \"block\")",
                        self.core.options.max_bytes
                    );
                }
            }
        }
        want
    }

    /// `collections` due collections were not started because admission is paused.
    pub fn passed_over(&mut self, collections: u64) {
        if let Some((cause, _)) = self.pause {
            self.core.lock().ledger.note_pause(cause, collections, 0);
        }
    }
}

/// What dropping a segment costs: its unacknowledged records the shipper has not read
/// (`records`, `bytes`, `lost` as joined ranges) and those it has read (`held`: seq, bytes).
struct Dropped {
    records: u64,
    bytes: u64,
    lost: Vec<(u64, u64)>,
    held: Vec<(u64, u64)>,
}

/// Reads `seg` before it is dropped, to know what it costs; what cannot be read of it counts
/// as lost (or held, below `read_through`).
fn dropped(fs: &dyn Filesystem, seg: &Segment, acked: u64, read_through: u64) -> Dropped {
    let mut lost = Vec::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut held = Vec::new();
    match fs.open_read(&seg.path) {
        Ok(file) => {
            let mut cursor = Cursor::new(file, seg.durable.max(seg.bytes), 0, None);
            // Each turn consumes one item; bounded by the segment.
            loop {
                match cursor.next() {
                    Ok(Item::Record { seq, payload }) if seq > acked => {
                        let len = (HEADER + payload.len()) as u64;
                        if seq <= read_through {
                            held.push((seq, len));
                        } else {
                            records += 1;
                            bytes += len;
                            lost.push((seq, seq));
                        }
                    }
                    Ok(Item::Damage(d)) => {
                        // Damaged and dropped: lost either way, unless the shipper
                        // read it before the damage came (then it is held).
                        let upper = seg.last_seq.saturating_add(1);
                        let unread = damage_loss(&d, upper, acked.max(read_through), &seg.path);
                        records += unread.records;
                        bytes += unread.bytes;
                        lost.extend(unread.lost);
                        let first = (d.after_seq + 1).max(acked + 1);
                        let last = d.next_seq.unwrap_or(upper).saturating_sub(1);
                        held.extend((first..=last.min(read_through)).map(|s| (s, 0)));
                    }
                    Ok(Item::Record { .. }) => {}
                    Ok(Item::Footer(_)) | Ok(Item::End) => break,
                    Err(e) => {
                        // The rest cannot be read: what it held is gone with it.
                        let from = (cursor.last_seq + 1).max(acked + 1);
                        let unread_from = from.max(read_through + 1);
                        if seg.last_seq >= unread_from {
                            records += seg.last_seq - unread_from + 1;
                            lost.push((unread_from, seg.last_seq));
                        }
                        held.extend((from..=seg.last_seq.min(read_through)).map(|s| (s, 0)));
                        log::warn!(
                            "cannot read the rest of {} before dropping it ({e}); its unshipped records count as lost",
                            seg.path.display()
                        );
                        break;
                    }
                }
            }
        }
        Err(e) => {
            log::warn!(
                "cannot list the records of {} before dropping it ({e}); all its unshipped records count as lost",
                seg.path.display()
            );
            records = seg.unacked();
            bytes = seg.bytes;
            lost.push((seg.first_seq.max(acked + 1), seg.last_seq));
        }
    }
    Dropped {
        records,
        bytes,
        lost: joined(lost),
        held,
    }
}

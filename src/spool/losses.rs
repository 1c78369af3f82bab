//! The one owner of loss accounting: every record the agent collected either reaches upstream
//! or is counted here, whatever lost it, until a gap record that says so has reached
//! upstream.
//!
//! Losses are found in many places: the writer drops the oldest segments (`drop_oldest`) or
//! cannot write at all (a full or failing card), the reader meets a damaged frame or an
//! unreadable segment, opening the spool cuts a torn tail, upstream refuses a record. Each
//! place calls [`Ledger::note`] with a [`GapCause`], and nothing else: the ledger merges
//! them per cause, hands them out at most once per [`REPORT_EVERY`] per cause to become gap
//! records ([`Ledger::take_due`]), and keeps each reported loss until upstream acknowledged
//! its gap record. Should that gap record itself be lost (dropped, damaged, rejected), what
//! it reported goes back to pending and into the next one, so the gap records a receiver
//! gets always add up to everything it will never get.
//!
//! The ledger is durable *before* the loss it notes becomes irreversible (a damaged segment
//! deleted, a record given up at stop): it lives in `spool/ledger`, a file preallocated at
//! creation and rewritten in place, in one of two slots by turns (a torn write leaves the
//! other), so a note needs no new block even when the card is full. Damage already noted is
//! remembered by its place (segment and offset) until the segment is gone, so a restart
//! between the note and the segment's deletion does not count it twice.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::io::{Filesystem, WriteFile, read_exact_at};
use crate::record::GapCause;

/// The ledger's file in the spool folder.
pub const LEDGER_FILE: &str = "ledger";
/// At most one gap record per cause per this long (a spool flapping at its bound, or a card
/// failing on every write, would otherwise send one per event); all go out at stop.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Ranges a loss lists at most; beyond, the counts stay exact and the list says it is
/// incomplete.
const MAX_RANGES: usize = 256;
/// One slot of the ledger file; the file holds two.
const SLOT: usize = 64 * 1024;
const SLOT_HEADER: usize = 20;
const SLOT_MAGIC: &[u8; 4] = b"RHLG";

/// What was lost (or paused) for one cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Loss {
    pub records: u64,
    pub bytes: u64,
    /// `[first, last]` seq ranges, sorted, adjacent ones joined.
    pub lost: Vec<(u64, u64)>,
    pub(crate) lost_incomplete: bool,
    pub paused_collections: u64,
    pub(crate) paused_ms: u64,
    /// Where and why, for the gap record's message (the first one noted).
    pub detail: Option<String>,
}

impl Loss {
    /// `records` records in the seq range `first..=last` (a single record: first == last).
    pub fn range(first: u64, last: u64, records: u64, bytes: u64) -> Loss {
        Loss {
            records,
            bytes,
            lost: vec![(first, last)],
            ..Loss::default()
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Loss {
        self.detail = Some(detail.into());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
            && self.bytes == 0
            && self.paused_collections == 0
            && self.paused_ms == 0
            && self.lost.is_empty()
    }

    fn merge(&mut self, other: Loss) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.paused_collections += other.paused_collections;
        self.paused_ms += other.paused_ms;
        self.lost_incomplete |= other.lost_incomplete;
        if self.detail.is_none() {
            self.detail = other.detail;
        }
        self.lost.extend(other.lost);
        self.lost.sort_unstable();
        let mut joined: Vec<(u64, u64)> = Vec::with_capacity(self.lost.len());
        for (a, b) in self.lost.drain(..) {
            match joined.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => joined.push((a, b)),
            }
        }
        if joined.len() > MAX_RANGES {
            joined.truncate(MAX_RANGES);
            self.lost_incomplete = true;
        }
        self.lost = joined;
    }
}

/// A gap record written to the spool and not yet acknowledged upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Report {
    cause: GapCause,
    loss: Loss,
}

/// A record deleted while the shipper held it in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Held {
    seq: u64,
    bytes: u64,
    /// Why it was deleted: the spool was full, or the disk.
    cause: GapCause,
}

/// What the ledger file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct Book {
    /// Not yet in a gap record.
    pending: BTreeMap<GapCause, Loss>,
    /// In a gap record (by its seq) that upstream has not acknowledged.
    unshipped: BTreeMap<u64, Report>,
    /// Records deleted (`drop_oldest`) while the shipper held them in memory: delivered if
    /// upstream acknowledges them, lost if the agent stops first.
    held: Vec<Held>,
    /// Damage already noted, by (segment's first seq, first byte, end byte): the same span
    /// met again (after a restart) is not counted twice; a span that grew (more damage
    /// since) is counted again, which may count a record twice but never misses one.
    seen: BTreeSet<DamageSpan>,
}

/// A damaged byte span of a segment, as the ledger remembers it. Kept on disk as the
/// `[segment, from, to]` array it always was, so ledgers written before keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "(u64, u64, u64)", into = "(u64, u64, u64)")]
struct DamageSpan {
    /// The segment's first seq (its name).
    segment: u64,
    /// First byte of the damage.
    from: u64,
    /// End byte of the damage (exclusive).
    to: u64,
}

impl From<(u64, u64, u64)> for DamageSpan {
    fn from((segment, from, to): (u64, u64, u64)) -> DamageSpan {
        DamageSpan { segment, from, to }
    }
}

impl From<DamageSpan> for (u64, u64, u64) {
    fn from(d: DamageSpan) -> (u64, u64, u64) {
        (d.segment, d.from, d.to)
    }
}

/// The ledger: in memory, mirrored in `spool/ledger`.
pub(crate) struct Ledger {
    book: Book,
    file: Option<LedgerFile>,
    path: PathBuf,
    fs: Arc<dyn Filesystem>,
    last_report: BTreeMap<GapCause, Instant>,
    /// Records noted lost since the agent started, per cause (for status).
    totals: BTreeMap<GapCause, u64>,
    /// The last persist failed (logged once until it works again).
    trouble: bool,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`. A ledger that cannot be read or created is
    /// logged and replaced by an empty one in memory; nothing here stops the agent.
    pub fn open(fs: Arc<dyn Filesystem>, dir: &Path, actions: &mut Vec<String>) -> Ledger {
        let path = dir.join(LEDGER_FILE);
        let (file, book) = match LedgerFile::open(&*fs, &path) {
            Ok((file, content)) => {
                let book = match content {
                    Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        actions.push(format!(
                            "{} does not parse ({e}); losses noted before are not reported again",
                            path.display()
                        ));
                        Book::default()
                    }),
                    None => Book::default(),
                };
                (Some(file), book)
            }
            Err(e) => {
                actions.push(format!(
                    "cannot open {} ({e}); losses are kept in memory until it can be written",
                    path.display()
                ));
                (None, Book::default())
            }
        };
        Ledger {
            book,
            file,
            path,
            fs,
            last_report: BTreeMap::new(),
            totals: BTreeMap::new(),
            trouble: false,
        }
    }

    /// Notes a loss; what it covers of unshipped gap records goes back to pending with it.
    pub fn note(&mut self, cause: GapCause, loss: Loss) {
        if loss.is_empty() {
            return;
        }
        *self.totals.entry(cause).or_default() += loss.records;
        self.carry(|seq| loss.lost.iter().any(|&(a, b)| (a..=b).contains(&seq)));
        self.book.pending.entry(cause).or_default().merge(loss);
        self.persist();
    }

    /// Collections passed over while paused for `cause` (not persisted by itself: a count of
    /// collections not started is worth less than a write per collection).
    pub fn note_pause(&mut self, cause: GapCause, collections: u64, ms: u64) {
        if collections == 0 && ms == 0 {
            return;
        }
        let loss = self.book.pending.entry(cause).or_default();
        loss.paused_collections += collections;
        loss.paused_ms += ms;
    }

    /// Records deleted for `cause` while the shipper held them (seq, bytes).
    pub fn note_held(&mut self, cause: GapCause, held: impl IntoIterator<Item = (u64, u64)>) {
        let before = self.book.held.len();
        self.book.held.extend(
            held.into_iter()
                .map(|(seq, bytes)| Held { seq, bytes, cause }),
        );
        if self.book.held.len() != before {
            self.book.held.sort_unstable();
            self.persist();
        }
    }

    /// Upstream has everything up to `seq`.
    pub fn acked(&mut self, seq: u64) {
        let before = (self.book.unshipped.len(), self.book.held.len());
        self.book.unshipped.retain(|&s, _| s > seq);
        self.book.held.retain(|h| h.seq > seq);
        if (self.book.unshipped.len(), self.book.held.len()) != before {
            self.persist();
        }
    }

    /// Held records above `acked` will not be delivered now (the shipper stopped, or the
    /// agent died): they are lost.
    pub fn held_lost(&mut self, acked: u64, policy: &str) {
        let held: Vec<Held> = std::mem::take(&mut self.book.held)
            .into_iter()
            .filter(|h| h.seq > acked)
            .collect();
        if held.is_empty() {
            self.persist();
            return;
        }
        let mut lost: BTreeMap<GapCause, Loss> = BTreeMap::new();
        for h in held {
            lost.entry(h.cause)
                .or_insert_with(|| {
                    Loss::default().with_detail(format!(
                        "dropped to make room while being shipped (spool_full = \"{policy}\"), and the agent stopped before upstream took them"
                    ))
                })
                .merge(Loss::range(h.seq, h.seq, 1, h.bytes));
        }
        for (cause, loss) in lost {
            self.note(cause, loss);
        }
    }

    /// Gap records written at or below `last_seq` that are in no segment any more (a crash
    /// before they were made durable): what they reported is pending again.
    pub fn reconcile(&mut self, acked: u64, present: impl Fn(u64) -> bool) {
        self.book.unshipped.retain(|&s, _| s > acked);
        self.carry(|seq| !present(seq));
    }

    /// Unshipped gap records that `lost` says are gone: what they reported is pending again.
    fn carry(&mut self, lost: impl Fn(u64) -> bool) {
        let gone: Vec<u64> = self
            .book
            .unshipped
            .keys()
            .copied()
            .filter(|&seq| lost(seq))
            .collect();
        for seq in gone {
            if let Some(report) = self.book.unshipped.remove(&seq) {
                self.book
                    .pending
                    .entry(report.cause)
                    .or_default()
                    .merge(report.loss);
            }
        }
    }

    /// The losses to report now: every cause whose last report is [`REPORT_EVERY`] old, or
    /// all of them with `force`. They leave pending; give each back to [`Ledger::reported`]
    /// once its gap record is in the spool, or to [`Ledger::unreport`] if it could not be.
    ///
    /// A pause still going on (`pausing`) is reported once it ends, in one gap record with
    /// its whole length, not every interval while it lasts (an outage of hours would
    /// otherwise send hundreds): its cause waits unless records were lost too, or `force`.
    pub fn take_due(
        &mut self,
        now: Instant,
        force: bool,
        pausing: Option<GapCause>,
    ) -> Vec<(GapCause, Loss)> {
        let due: Vec<GapCause> = self
            .book
            .pending
            .iter()
            .filter(|(_, loss)| !loss.is_empty())
            .filter(|(cause, loss)| {
                force || Some(**cause) != pausing || loss.records > 0 || !loss.lost.is_empty()
            })
            .map(|(cause, _)| *cause)
            .filter(|cause| {
                force
                    || self
                        .last_report
                        .get(cause)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= REPORT_EVERY)
            })
            .collect();
        due.into_iter()
            .filter_map(|cause| {
                self.last_report.insert(cause, now);
                self.book.pending.remove(&cause).map(|loss| (cause, loss))
            })
            .collect()
    }

    /// The gap record `seq` reporting `loss` is in the spool.
    pub fn reported(&mut self, seq: u64, cause: GapCause, loss: Loss) {
        self.book.unshipped.insert(seq, Report { cause, loss });
        self.persist();
    }

    /// A loss taken for a gap record that could not be written goes back to pending.
    pub fn unreport(&mut self, cause: GapCause, loss: Loss) {
        self.book.pending.entry(cause).or_default().merge(loss);
    }

    /// Whether damage over this byte span of a segment was noted already.
    pub fn seen(&self, segment: u64, span: (u64, u64)) -> bool {
        self.book
            .seen
            .contains(&DamageSpan::from((segment, span.0, span.1)))
    }

    /// Notes that damage at this place is counted (persisted with the next note).
    pub fn mark_seen(&mut self, segment: u64, span: (u64, u64)) {
        self.book
            .seen
            .insert(DamageSpan::from((segment, span.0, span.1)));
    }

    /// Segments before `first_seq` are gone: their damage cannot be met again.
    pub fn forget_seen_below(&mut self, first_seq: u64) {
        self.book.seen.retain(|d| d.segment >= first_seq);
    }

    /// Records drop-oldest deleted while the shipper held them, not yet acknowledged.
    pub fn held(&self) -> u64 {
        self.book.held.len() as u64
    }

    /// Records noted lost and not yet in a gap record.
    pub fn pending_records(&self) -> u64 {
        self.book.pending.values().map(|l| l.records).sum()
    }

    /// Records noted lost since the agent started, per cause.
    pub fn totals(&self) -> &BTreeMap<GapCause, u64> {
        &self.totals
    }

    /// Writes the ledger (in place, see the module doc). A failure is logged once and
    /// retried at the next change; the in-memory ledger stays right meanwhile.
    pub fn persist(&mut self) {
        let result = (|| -> io::Result<()> {
            let content = self.encode()?;
            if self.file.is_none() {
                self.file = Some(LedgerFile::open(&*self.fs, &self.path)?.0);
            }
            self.file.as_mut().expect("opened above").write(&content)
        })();
        match result {
            Ok(()) if self.trouble => {
                self.trouble = false;
                log::info!("{} is written again", self.path.display());
            }
            Ok(()) => {}
            Err(e) if !self.trouble => {
                self.trouble = true;
                log::error!(
                    "cannot write the loss ledger {}: {e}; losses are kept in memory and reported all the same, but a crash now would forget them",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    /// The book as JSON that fits a slot, dropping detail it can live without if need be.
    fn encode(&mut self) -> io::Result<Vec<u8>> {
        let max = SLOT - SLOT_HEADER;
        let json = serde_json::to_vec(&self.book).map_err(io::Error::other)?;
        if json.len() <= max {
            return Ok(json);
        }
        // Too many ranges to keep: the counts stay exact, the lists say they are cut.
        for report in self.book.unshipped.values_mut() {
            if !report.loss.lost.is_empty() {
                report.loss.lost.clear();
                report.loss.lost_incomplete = true;
            }
        }
        for loss in self.book.pending.values_mut() {
            if loss.lost.len() > 8 {
                loss.lost.truncate(8);
                loss.lost_incomplete = true;
            }
        }
        let json = serde_json::to_vec(&self.book).map_err(io::Error::other)?;
        if json.len() <= max {
            return Ok(json);
        }
        Err(io::Error::other(format!(
            "{} unshipped gap records do not fit the ledger's {SLOT} bytes",
            self.book.unshipped.len()
        )))
    }
}

/// The ledger file: two fixed slots, written in turns, in place.
struct LedgerFile {
    file: Box<dyn WriteFile>,
    generation: u64,
}

impl LedgerFile {
    /// Opens the file, creating and preallocating it (zeros, synced: the blocks exist from
    /// then on) when missing; returns the newest slot that verifies.
    fn open(fs: &dyn Filesystem, path: &Path) -> io::Result<(LedgerFile, Option<Vec<u8>>)> {
        let mut newest: Option<(u64, Vec<u8>)> = None;
        match fs.open_read(path) {
            Ok(f) => {
                let len = f.size()?;
                for slot in 0..2u64 {
                    if len < (slot + 1) * SLOT as u64 {
                        continue;
                    }
                    let mut buf = vec![0u8; SLOT];
                    if read_exact_at(&*f, &mut buf, slot * SLOT as u64).is_err() {
                        continue;
                    }
                    if let Some((generation, content)) = decode_slot(&buf)
                        && newest.as_ref().is_none_or(|n| generation > n.0)
                    {
                        newest = Some((generation, content.to_vec()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = fs.open_write(path, true)?;
        if file.size()? < 2 * SLOT as u64 {
            file.write_at(&vec![0u8; 2 * SLOT], 0)?;
            file.sync()?;
            if let Some(dir) = path.parent() {
                fs.sync_dir(dir)?;
            }
        }
        let generation = newest.as_ref().map_or(0, |n| n.0);
        Ok((LedgerFile { file, generation }, newest.map(|n| n.1)))
    }

    fn write(&mut self, content: &[u8]) -> io::Result<()> {
        let generation = self.generation + 1;
        let mut slot = Vec::with_capacity(SLOT_HEADER + content.len());
        slot.extend_from_slice(SLOT_MAGIC);
        slot.extend_from_slice(&(content.len() as u32).to_le_bytes());
        slot.extend_from_slice(&generation.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), content);
        slot.extend_from_slice(&crc.to_le_bytes());
        slot.extend_from_slice(content);
        self.file.write_at(&slot, (generation % 2) * SLOT as u64)?;
        self.file.sync()?;
        self.generation = generation;
        Ok(())
    }
}

/// A slot's generation and content, if it verifies.
fn decode_slot(buf: &[u8]) -> Option<(u64, &[u8])> {
    if buf.get(..4)? != SLOT_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?) as usize;
    let generation = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    let crc = u32::from_le_bytes(buf.get(16..20)?.try_into().ok()?);
    let content = buf.get(SLOT_HEADER..SLOT_HEADER + len)?;
    let expect = crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), content);
    (crc == expect).then_some((generation, content))
}

#[cfg(test)]
mod tests {
    use super::super::memfs::{Fault, FaultKind, MemFs, Op};
    use super::*;

    fn ledger(fs: &MemFs) -> Ledger {
        let fs: Arc<dyn Filesystem> = Arc::new(fs.clone());
        fs.create_dir_all(Path::new("/spool")).unwrap();
        Ledger::open(fs, Path::new("/spool"), &mut Vec::new())
    }

    #[test]
    fn losses_merge_per_cause_and_survive_a_reopen() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        l.note(GapCause::Corrupt, Loss::range(5, 5, 1, 100));
        l.note(GapCause::Corrupt, Loss::range(6, 9, 4, 400));
        l.note(GapCause::Rejected, Loss::range(20, 20, 1, 10));
        drop(l);
        let mut l = ledger(&fs);
        let due = l.take_due(Instant::now(), false, None);
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].0, GapCause::Corrupt);
        assert_eq!(due[0].1.records, 5);
        assert_eq!(due[0].1.lost, vec![(5, 9)]);
    }

    #[test]
    fn a_lost_gap_record_hands_what_it_reported_to_the_next_one() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        l.note(GapCause::SpoolFull, Loss::range(1, 10, 10, 1000));
        let (cause, loss) = l.take_due(Instant::now(), true, None).remove(0);
        l.reported(11, cause, loss);
        // The gap record 11 is dropped in turn, with record 12.
        l.note(GapCause::SpoolFull, Loss::range(11, 12, 2, 200));
        let due = l.take_due(Instant::now(), true, None);
        assert_eq!(due[0].1.records, 12);
        assert_eq!(due[0].1.lost, vec![(1, 12)]);
    }

    #[test]
    fn reports_of_a_cause_come_at_most_once_per_interval_unless_forced() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        let t0 = Instant::now();
        l.note(GapCause::Corrupt, Loss::range(1, 1, 1, 1));
        assert_eq!(l.take_due(t0, false, None).len(), 1);
        l.note(GapCause::Corrupt, Loss::range(2, 2, 1, 1));
        assert!(
            l.take_due(t0 + Duration::from_secs(1), false, None)
                .is_empty()
        );
        assert_eq!(l.take_due(t0 + REPORT_EVERY, false, None).len(), 1);
        l.note(GapCause::Corrupt, Loss::range(3, 3, 1, 1));
        assert_eq!(l.take_due(t0 + REPORT_EVERY, true, None).len(), 1);
    }

    #[test]
    fn the_ledger_is_written_in_place_on_a_full_disk_and_a_torn_slot_leaves_the_other() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        l.note(GapCause::DiskFull, Loss::range(1, 1, 1, 1));
        fs.set_capacity(Some(fs.used()));
        l.note(GapCause::DiskFull, Loss::range(2, 2, 1, 1));
        assert!(!l.trouble, "a note needs no new block");
        // The next slot write is torn: the one before stands.
        fs.inject(Fault::nth(
            Op::Write,
            Some("ledger"),
            0,
            FaultKind::Torn(30),
        ));
        l.note(GapCause::DiskFull, Loss::range(3, 3, 1, 1));
        drop(l);
        let mut l = ledger(&fs);
        let due = l.take_due(Instant::now(), true, None);
        assert_eq!(due[0].1.lost, vec![(1, 2)]);
    }

    #[test]
    fn a_pause_is_reported_once_it_ends_unless_records_were_lost_meanwhile() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        let t0 = Instant::now();
        l.note_pause(GapCause::DiskFull, 3, 10_000);
        assert!(l.take_due(t0, false, Some(GapCause::DiskFull)).is_empty());
        l.note_pause(GapCause::DiskFull, 2, 5_000);
        let due = l.take_due(t0, false, None);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].1.paused_collections, due[0].1.paused_ms),
            (5, 15_000)
        );
        l.note(GapCause::SpoolFull, Loss::range(4, 4, 1, 10));
        assert_eq!(l.take_due(t0, false, Some(GapCause::SpoolFull)).len(), 1);
    }

    #[test]
    fn acknowledged_gap_records_and_held_records_leave_the_ledger() {
        let fs = MemFs::new();
        let mut l = ledger(&fs);
        l.note_held(GapCause::SpoolFull, [(7, 70), (8, 80)]);
        l.acked(7);
        l.held_lost(7, "drop_oldest");
        let due = l.take_due(Instant::now(), true, None);
        assert_eq!(due[0].1.lost, vec![(8, 8)]);
        assert_eq!(due[0].1.bytes, 80);
    }

    #[test]
    fn damage_spans_keep_their_array_form_on_disk() {
        let mut book = Book::default();
        book.seen.insert(DamageSpan::from((7, 128, 512)));
        let json = serde_json::to_string(&book).unwrap();
        assert!(json.contains("\"seen\":[[7,128,512]]"), "{json}");
        let back: Book = serde_json::from_str(&json).unwrap();
        assert_eq!(back, book);
    }
}

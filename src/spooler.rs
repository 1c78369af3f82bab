//! Records in: the agent's side of the spool. Numbers each outcome from the persisted
//! sequence, turns it into a record that fits the spool, appends it, and turns the losses the
//! spool's ledger counted into gap records.
//!
//! Nothing here ends the agent. A record larger than the spool takes keeps a cut output
//! (status `output_too_large`); a seq file that cannot be written leaves the outcome waiting
//! in memory (collections pause) until it can; the spool's writer deals with a disk that
//! refuses writes the same way. What is lost is counted by the ledger and reported.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::record::{Gap, GapCause, Outcome, Record, Status};
use crate::seq::Sequence;
use crate::spool::{FullPolicy, Loss, SpoolWriter, Stats};

/// Room kept for a record's fields other than its output, when sizing a cut.
const RECORD_OVERHEAD: usize = 64 * 1024;
/// How long the clock's sync state is trusted before the kernel is asked again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// The largest record an output of `max_output` bytes can make: every byte may become six
/// (a control character JSON-escapes as `\u00XX`), and output that is not UTF-8 is carried
/// again as base64 (4/3 per byte). Records are limited in bytes of their encoding, so an
/// output within `max_output` always fits, whatever bytes it holds.
pub(crate) fn record_limit(max_output: u64) -> u64 {
    max_output
        .saturating_mul(22)
        .div_ceil(3)
        .saturating_add(RECORD_OVERHEAD as u64)
}

/// See the module doc.
pub(crate) struct Spooler {
    writer: SpoolWriter,
    seq: Sequence,
    agent: String,
    policy: FullPolicy,
    max_record: u32,
    clock: Option<(Instant, Option<bool>)>,
    /// Outcomes not yet numbered: the seq file could not be written.
    waiting: VecDeque<Outcome>,
    /// The last seq given to a record.
    last_seq: u64,
    seq_trouble: bool,
}

impl Spooler {
    pub fn new(
        writer: SpoolWriter,
        seq: Sequence,
        agent: &str,
        policy: FullPolicy,
        max_record: u32,
    ) -> Spooler {
        Spooler {
            writer,
            seq,
            agent: agent.to_string(),
            policy,
            max_record,
            clock: None,
            waiting: VecDeque::new(),
            last_seq: 0,
            seq_trouble: false,
        }
    }

    pub fn stats(&self) -> Stats {
        self.writer.stats()
    }

    /// The last seq given to a record (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Every record up to this seq is committed.
    pub fn durable_seq(&self) -> u64 {
        self.writer.durable_seq()
    }

    /// The clock's sync state, asked of the kernel at most every [`CLOCK_EVERY`].
    fn clock_synced(&mut self) -> Option<bool> {
        match self.clock {
            Some((at, synced)) if at.elapsed() < CLOCK_EVERY => synced,
            _ => {
                let synced = crate::clock::synchronised();
                self.clock = Some((Instant::now(), synced));
                synced
            }
        }
    }

    /// Numbers `outcome` and spools it; returns the record, or `None` when it waits for the
    /// seq file (see the module doc).
    pub fn outcome(&mut self, outcome: Outcome) -> Option<Record> {
        if !self.waiting.is_empty() {
            self.waiting.push_back(outcome);
            return None;
        }
        match self.seq.next() {
            Ok(seq) => Some(self.spool(outcome, seq)),
            Err(e) => {
                if !self.seq_trouble {
                    log::error!(
                        "{e}; new collections pause and this record waits in memory until the sequence can be written"
                    );
                    self.seq_trouble = true;
                }
                self.waiting.push_back(outcome);
                None
            }
        }
    }

    fn spool(&mut self, outcome: Outcome, seq: u64) -> Record {
        let synced = self.clock_synced();
        let (record, json) = self.fit(outcome, seq, synced);
        self.append(seq, &json);
        record
    }

    /// Appends record `seq`. Only a record that breaks the spool's rules fails here (records
    /// are kept within the limit, and seqs increase): counted, never silent.
    fn append(&mut self, seq: u64, json: &str) {
        self.last_seq = seq;
        if let Err(e) = self.writer.append(seq, json.as_bytes()) {
            log::error!("{e}");
            self.writer.note_loss(
                GapCause::IoError,
                Loss::range(seq, seq, 1, 0).with_detail(e.to_string()),
            );
        }
    }

    /// The record of `outcome` and its JSON, its output cut (in bytes of the encoding) if
    /// the whole record would pass the spool's record limit. The output is neither copied
    /// nor encoded twice for a record that fits.
    fn fit(&self, outcome: Outcome, seq: u64, synced: Option<bool>) -> (Record, String) {
        let limit = self.max_record as usize;
        let encode = |o: Outcome| {
            let mut record = o.into_record(&self.agent, seq);
            record.clock_synced = synced;
            let json = record.to_json();
            (record, json)
        };
        let mut template = outcome;
        let output = std::mem::take(&mut template.output);
        let (record, json) = encode(Outcome {
            output,
            ..template.clone()
        });
        let len = json.len();
        if len <= limit {
            return (record, json);
        }
        let raw = record.output_bytes();
        let budget = limit.saturating_sub(RECORD_OVERHEAD).max(1024);
        // Shrink in proportion until it fits; each turn cuts at least a tenth.
        let mut keep = ((raw.len() as f64) * (budget as f64 / len as f64)) as usize;
        let mut cut = (record, json);
        for _ in 0..32 {
            let mut o = template.clone();
            o.output = raw[..keep.min(raw.len())].to_vec();
            o.status = Status::OutputTooLarge;
            o.error = Some(format!(
                "output cut to {keep} of {} bytes: the whole record would pass the spool's record limit of {limit} bytes; lower max_output for this command or raise spool_max_bytes",
                raw.len()
            ));
            cut = encode(o);
            if cut.1.len() <= limit {
                break;
            }
            keep = keep * 9 / 10;
        }
        log::error!(
            "{}: record {} of `{}` would be {len} bytes, above the spool's record limit of {limit} bytes; its output is cut to {keep} bytes: lower max_output for that command",
            cut.0.device,
            cut.0.id,
            cut.0.command,
        );
        cut
    }

    /// Numbers a captured console's chunk (or port gap) and spools it; returns its seq. One
    /// that gets no seq (the seq file cannot be written) is counted as lost (`io_error`):
    /// console text keeps coming, so it does not wait in memory as outcomes do.
    ///
    /// While the spool admits no records (full under `block`, or the disk failing), console
    /// text is not kept either: a console never stops talking, and waiting in memory would
    /// grow without bound. It is counted as lost under that cause and reported in a gap
    /// record.
    pub fn console(&mut self, event: &crate::console::ConsoleEvent) -> Option<u64> {
        if let Some(cause) = self.writer.admission(Instant::now()) {
            let bytes = match &event.what {
                crate::console::Captured::Text(chunk) => chunk.bytes.len() as u64,
                crate::console::Captured::Gap(_) => 0,
            };
            self.writer.note_loss(
                cause,
                Loss {
                    records: 1,
                    bytes,
                    detail: Some(format!(
                        "console text of {} not kept while the spool takes no records",
                        event.device
                    )),
                    ..Loss::default()
                },
            );
            return None;
        }
        let seq = match self.seq.next() {
            Ok(seq) => seq,
            Err(e) => {
                log::error!("{e}; a console record of {} is lost", event.device);
                self.writer.note_loss(
                    GapCause::IoError,
                    Loss {
                        records: 1,
                        detail: Some("the seq file could not be written".into()),
                        ..Loss::default()
                    },
                );
                return None;
            }
        };
        let synced = self.clock_synced();
        let json = crate::console::record::to_json(&self.agent, seq, synced, event);
        self.append(seq, &json);
        if crate::console::record::is_alert(event) {
            // Shipped at once: the shipper reads committed records only.
            self.writer.commit();
        }
        Some(seq)
    }

    /// Whether new collections must wait now (the spool's writer or the seq file).
    pub fn paused(&mut self, now: Instant) -> bool {
        let writer = self.writer.admission(now).is_some();
        writer || !self.waiting.is_empty()
    }

    /// Due collections not started because [`Self::paused`].
    pub fn passed_over(&mut self, collections: u64) {
        self.writer.passed_over(collections);
    }

    /// When [`Self::tick`] must run at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.writer.deadline()
    }

    /// Commits when due, retries what waits, and reports losses due for a gap record.
    pub fn tick(&mut self, now: Instant) {
        self.retry_waiting();
        self.report_losses(now, false);
        self.writer.tick(now);
    }

    /// Commits now whatever waits (at stop).
    pub fn commit(&mut self) {
        self.writer.commit();
    }

    fn retry_waiting(&mut self) {
        // Each turn numbers one outcome or stops: bounded by the queue.
        while let Some(outcome) = self.waiting.pop_front() {
            match self.seq.next() {
                Ok(seq) => {
                    self.spool(outcome, seq);
                }
                Err(_) => {
                    self.waiting.push_front(outcome);
                    return;
                }
            }
        }
        if self.seq_trouble {
            log::info!("the record sequence is written again; collections resume");
            self.seq_trouble = false;
        }
    }

    /// Turns the ledger's losses into gap records: those due (at most one per cause per
    /// [`crate::spool::REPORT_EVERY`]), or all of them with `force`.
    pub(crate) fn report_losses(&mut self, now: Instant, force: bool) {
        for (cause, loss) in self.writer.take_losses(now, force) {
            let seq = match self.seq.next() {
                Ok(seq) => seq,
                Err(e) => {
                    log::warn!("{e}; the gap record waits");
                    self.writer.unreport(cause, loss);
                    continue;
                }
            };
            let gap = Gap {
                cause,
                policy: self.policy.as_str().into(),
                lost: loss.lost.iter().map(|&(a, b)| [a, b]).collect(),
                lost_incomplete: loss.lost_incomplete,
                dropped_records: loss.records,
                dropped_bytes: loss.bytes,
                paused_collections: loss.paused_collections,
                paused_ms: loss.paused_ms,
            };
            let mut record = Record::gap(
                &self.agent,
                seq,
                gap,
                loss.detail.as_deref(),
                SystemTime::now(),
            );
            record.clock_synced = self.clock_synced();
            log::warn!(
                "gap record {}: {}",
                record.id,
                record.error.as_deref().unwrap_or("")
            );
            self.last_seq = seq;
            if let Err(e) = self
                .writer
                .append_gap(seq, record.to_json().as_bytes(), cause, loss)
            {
                log::error!("{e}");
            }
        }
    }

    /// The shipper has stopped: what drop-oldest took from under it is lost now, and is
    /// reported with everything else still pending.
    pub fn shipper_stopped(&mut self) {
        self.writer.shipper_stopped();
        self.report_losses(Instant::now(), true);
        self.writer.commit();
    }

    /// At stop: outcomes still waiting for a seq get one if they can, every pending loss
    /// goes into a gap record, and the writer makes what it can durable (see
    /// [`SpoolWriter::close`]).
    pub fn close(&mut self) {
        self.retry_waiting();
        if !self.waiting.is_empty() {
            log::error!(
                "stopping with {} collected records that never got a seq (the seq file cannot be written): they are lost",
                self.waiting.len()
            );
            self.writer.note_loss(
                GapCause::IoError,
                Loss {
                    records: self.waiting.len() as u64,
                    detail: Some("the seq file could not be written".into()),
                    ..Loss::default()
                },
            );
            self.waiting.clear();
        }
        self.report_losses(Instant::now(), true);
        self.writer.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_output_within_max_output_fits_the_record_limit() {
        let max_output = 4096u64;
        // Control characters escape to six bytes each, and one invalid byte adds base64 of all.
        let worst: Vec<u8> = (0..max_output)
            .map(|i| if i == 0 { 0xff } else { 1 })
            .collect();
        let record = Outcome {
            device: "d".repeat(200),
            transport: "serial".into(),
            command: "c".repeat(200),
            status: Status::Ok,
            error: Some("e".repeat(1000)),
            output: worst,
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::ZERO,
        }
        .into_record("rack", u64::MAX);
        assert!(
            (record.to_json().len() as u64) <= record_limit(max_output),
            "{} > {}",
            record.to_json().len(),
            record_limit(max_output)
        );
    }
    /// A full spool under `block` keeps no console text (a console never stops talking):
    /// each chunk is counted as lost (`spool_full`), none waits in memory.
    #[test]
    fn console_text_is_counted_as_lost_not_kept_while_a_full_spool_blocks() {
        use crate::console::{Captured, ConsoleChunk, ConsoleEvent};
        use crate::spool::{Durability, FullPolicy, Spool, SpoolOptions};
        let dir = crate::test_support::temp_dir("spooler-console-full");
        let options = SpoolOptions {
            segment_bytes: 16 * 1024,
            max_bytes: 64 * 1024,
            full: FullPolicy::Block,
            max_record_bytes: 32 * 1024,
            durability: Durability::Always,
        };
        let (writer, _reader, _) = Spool::open(&dir.path().join("spool"), options).unwrap();
        let seq = Sequence::open_above(dir.path(), 0).unwrap();
        let mut spooler = Spooler::new(writer, seq, "rack", FullPolicy::Block, 32 * 1024);
        let event = ConsoleEvent {
            device: "con1".into(),
            what: Captured::Text(ConsoleChunk {
                offset: 0,
                started_at: SystemTime::UNIX_EPOCH,
                ended_at: SystemTime::UNIX_EPOCH,
                bytes: vec![b'x'; 8 * 1024],
                alert: false,
                during_job: false,
            }),
        };
        let mut kept = 0;
        for _ in 0..20 {
            if spooler.console(&event).is_some() {
                kept += 1;
            }
            spooler.commit();
        }
        let stats = spooler.stats();
        assert!((4..20).contains(&kept), "{kept} kept");
        assert_eq!(stats.lost.get(&GapCause::SpoolFull), Some(&(20 - kept)));
        assert_eq!(stats.waiting_in_memory, 0);
        assert!(stats.bytes <= 80 * 1024, "{} bytes on disk", stats.bytes);
    }
}

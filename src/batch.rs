//! The batcher: cuts the spool's record stream into the batches a sink sends.
//!
//! One request per record would be slow and chatty over a rack's uplink; one request for
//! everything would be unbounded. So records are grouped, and a batch closes at
//! `batch_max_records`, `batch_max_bytes` or `batch_max_age` (minus a jitter, so a fleet of
//! agents started together does not post in lockstep).
//!
//! Delivery is at-least-once: a batch that was not acknowledged is sent again, and the
//! receiver must be able to tell it is the same batch. A batch is therefore named by its seq
//! range, and its `Idempotency-Key` is `"<agent>:<first seq>-<last seq>"`: the same records
//! always give the same key. A cut decided by the clock (the age limit) cannot be repeated
//! after a restart by replaying the records alone, so the caller can persist the last seq of
//! a batch in flight and hand it back with `Batcher::resume_cut`; the batch is then cut at
//! the same place and carries the same key.
//!
//! The struct does no I/O and never sleeps: the caller passes `now` and waits for
//! [`Batcher::deadline`] itself, so tests drive it with a made-up clock.

use std::ops::Range;
use std::time::{Duration, Instant};

/// When a batch closes. Built from `[upstream]` (see [`BatchLimits::from_upstream`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchLimits {
    /// Records per batch, at least 1.
    pub max_records: usize,
    /// Uncompressed NDJSON bytes per batch. A single record larger than this is sent alone.
    pub max_bytes: u64,
    /// How long the first record of a batch may wait for more.
    pub max_age: Duration,
    /// Up to this fraction of `max_age` is taken off each batch's age limit (0.0 ..= 1.0).
    pub jitter: f64,
}

impl BatchLimits {
    /// Default jitter: a batch waits between 80 % and 100 % of `batch_max_age`.
    pub(crate) const DEFAULT_JITTER: f64 = 0.2;

    pub fn from_upstream(upstream: &crate::inventory::Upstream) -> BatchLimits {
        BatchLimits {
            max_records: upstream.batch_max_records,
            max_bytes: upstream.batch_max_bytes,
            max_age: upstream.batch_max_age,
            jitter: Self::DEFAULT_JITTER,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error(
        "record seq {seq} arrived after seq {last}; the batcher needs the spool's records in increasing seq order (a replay must start after the last record already batched)"
    )]
    OutOfOrder { seq: u64, last: u64 },
}

/// A closed batch: consecutive records of one agent's stream, as an NDJSON body.
///
/// A batch can be cut into parts by record ([`Batch::part`]), e.g. when upstream refuses it
/// as too large; a part is a batch of its own, named by its own seq range, so a part sent
/// again carries the same `Idempotency-Key` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    agent: String,
    first_seq: u64,
    last_seq: u64,
    body: Vec<u8>,
    /// Each record's seq and where its line ends in `body` (one past its `\n`).
    lines: Vec<(u64, usize)>,
    key: String,
}

/// One record of a batch: its seq and its NDJSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLine<'a> {
    pub(crate) seq: u64,
    /// The record's JSON with its `\n`, exactly as in [`Batch::body`].
    pub(crate) line: &'a [u8],
}

impl Batch {
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The records, one per line, each line ending in `\n` (uncompressed).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The same for every sending of this batch: `"<agent>:<first>-<last>"`.
    pub fn idempotency_key(&self) -> &str {
        &self.key
    }

    /// The records in seq order.
    pub fn lines(&self) -> impl ExactSizeIterator<Item = BatchLine<'_>> + '_ {
        self.lines.iter().enumerate().map(|(i, &(seq, end))| {
            let start = if i == 0 { 0 } else { self.lines[i - 1].1 };
            BatchLine {
                seq,
                line: &self.body[start..end],
            }
        })
    }

    /// The same batch (agent, seqs, `Idempotency-Key`) with each record's line replaced by
    /// `lines[i]` (in seq order, one per record; a `\n` is added where missing): what
    /// change-only shipping sends in place of the spooled records (`crate::change`).
    ///
    /// # Panics
    /// When `lines` does not hold one line per record.
    pub(crate) fn with_lines(&self, lines: Vec<Vec<u8>>) -> Batch {
        assert_eq!(lines.len(), self.len(), "one line per record");
        let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        let mut ends = Vec::with_capacity(lines.len());
        for (line, &(seq, _)) in lines.iter().zip(&self.lines) {
            body.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                body.push(b'\n');
            }
            ends.push((seq, body.len()));
        }
        Batch {
            agent: self.agent.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            body,
            lines: ends,
            key: self.key.clone(),
        }
    }

    /// The records at positions `records` (0-based, in seq order) as a batch of their own,
    /// keyed by its own first and last seq.
    ///
    /// # Panics
    /// When `records` is empty or reaches past [`Batch::len`]: a part holds at least one
    /// record of this batch.
    pub fn part(&self, records: Range<usize>) -> Batch {
        assert!(
            !records.is_empty() && records.end <= self.len(),
            "part {records:?} of a batch of {} records",
            self.len()
        );
        let start = if records.start == 0 {
            0
        } else {
            self.lines[records.start - 1].1
        };
        let lines: Vec<(u64, usize)> = self.lines[records]
            .iter()
            .map(|&(seq, end)| (seq, end - start))
            .collect();
        let end = start + lines.last().map_or(0, |l| l.1);
        let (first_seq, last_seq) = (lines[0].0, lines[lines.len() - 1].0);
        Batch {
            key: idempotency_key(&self.agent, first_seq, last_seq),
            agent: self.agent.clone(),
            first_seq,
            last_seq,
            body: self.body[start..end].to_vec(),
            lines,
        }
    }
}

/// The `Idempotency-Key` of the batch of `agent`'s records `first..=last`.
///
/// Characters that may not appear in an HTTP header value (or would make the key ambiguous)
/// are percent-encoded, so any agent id gives a valid, unique key.
pub fn idempotency_key(agent: &str, first: u64, last: u64) -> String {
    let mut key = String::with_capacity(agent.len() + 24);
    for b in agent.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b':' {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    key.push_str(&format!(":{first}-{last}"));
    key
}

#[derive(Debug)]
struct Open {
    first_seq: u64,
    last_seq: u64,
    body: Vec<u8>,
    lines: Vec<(u64, usize)>,
    deadline: Instant,
}

/// Groups `(seq, payload)` in seq order into [`Batch`]es.
#[derive(Debug)]
pub struct Batcher {
    agent: String,
    limits: BatchLimits,
    jitter_seed: u64,
    open: Option<Open>,
    last_seq: Option<u64>,
    resume_cut: Option<u64>,
}

impl Batcher {
    /// `jitter_seed` makes the age jitter reproducible (the agent passes something per-host,
    /// tests a constant).
    pub fn new(agent: &str, limits: BatchLimits, jitter_seed: u64) -> Batcher {
        Batcher {
            agent: agent.to_string(),
            limits: BatchLimits {
                max_records: limits.max_records.max(1),
                max_bytes: limits.max_bytes.max(1),
                max_age: limits.max_age,
                jitter: if limits.jitter.is_finite() {
                    limits.jitter.clamp(0.0, 1.0)
                } else {
                    0.0
                },
            },
            jitter_seed,
            open: None,
            last_seq: None,
            resume_cut: None,
        }
    }

    /// A batch ending at `last_seq` was cut (and maybe sent) before a restart and not
    /// acknowledged: the batch holding `last_seq` closes exactly there, so its resend has the
    /// same key. Count and byte limits still apply (they can only cut earlier if the config
    /// was lowered meanwhile).
    pub(crate) fn resume_cut(&mut self, last_seq: u64) {
        self.resume_cut = Some(last_seq);
    }

    /// Adds one record (`payload` is its JSON, without a trailing newline; one is added if
    /// missing). Returns the batches this closed: none, one, or two (the open batch, when the
    /// record did not fit, and the record alone when it is itself over a limit).
    pub fn push(
        &mut self,
        seq: u64,
        payload: &[u8],
        now: Instant,
    ) -> Result<Vec<Batch>, BatchError> {
        match self.last_seq {
            Some(last) if seq <= last => return Err(BatchError::OutOfOrder { seq, last }),
            _ => {}
        }
        self.last_seq = Some(seq);
        let mut closed = Vec::new();
        let line_len = payload.len() as u64 + u64::from(!payload.ends_with(b"\n"));
        if let Some(open) = &self.open {
            let past_resume_cut = self.resume_cut.is_some_and(|cut| seq > cut);
            let too_big = open.body.len() as u64 + line_len > self.limits.max_bytes;
            if past_resume_cut || too_big {
                closed.extend(self.close());
            }
        }
        if self.resume_cut.is_some_and(|cut| seq > cut) {
            self.resume_cut = None;
        }
        let open = self.open.get_or_insert_with(|| Open {
            first_seq: seq,
            last_seq: seq,
            body: Vec::new(),
            lines: Vec::new(),
            deadline: now + jittered_age(self.limits, self.jitter_seed, seq),
        });
        open.body.extend_from_slice(payload);
        if !payload.ends_with(b"\n") {
            open.body.push(b'\n');
        }
        open.lines.push((seq, open.body.len()));
        open.last_seq = seq;
        let full = open.lines.len() >= self.limits.max_records
            || open.body.len() as u64 >= self.limits.max_bytes;
        // An alert (a console record that matched an alert pattern) goes out at once, not
        // after the batch's age; a cut decided by the record itself repeats after a restart.
        if full || is_alert(payload) || self.resume_cut == Some(seq) {
            if self.resume_cut == Some(seq) {
                self.resume_cut = None;
            }
            closed.extend(self.close());
        }
        Ok(closed)
    }

    /// The batch whose age limit has passed at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Batch> {
        match &self.open {
            Some(open) if now >= open.deadline => self.close(),
            _ => None,
        }
    }

    /// When the open batch's age limit passes: the caller waits (on its own events) until
    /// then and calls [`Batcher::poll`]. `None` when no batch is open.
    /// The NDJSON body of the batch still open (not yet closed), if any.
    pub(crate) fn open_body(&self) -> Option<&[u8]> {
        self.open.as_ref().map(|o| o.body.as_slice())
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.deadline)
    }

    /// Closes the open batch now (shutdown, or the spool has nothing more to replay).
    pub fn flush(&mut self) -> Option<Batch> {
        self.close()
    }

    /// Records and bytes waiting in the open batch.
    pub fn pending(&self) -> (usize, usize) {
        self.open
            .as_ref()
            .map_or((0, 0), |o| (o.lines.len(), o.body.len()))
    }

    fn close(&mut self) -> Option<Batch> {
        let open = self.open.take()?;
        Some(Batch {
            key: idempotency_key(&self.agent, open.first_seq, open.last_seq),
            agent: self.agent.clone(),
            first_seq: open.first_seq,
            last_seq: open.last_seq,
            body: open.body,
            lines: open.lines,
        })
    }
}

/// Whether a record's JSON is an alert: `"alert":true` as a key of the record (inside a
/// JSON string the quotes would be escaped, so an output that says it does not count).
fn is_alert(payload: &[u8]) -> bool {
    const KEY: &[u8] = br#""alert":true"#;
    payload.windows(KEY.len()).any(|w| w == KEY)
}

/// `max_age` minus up to `jitter` of it, chosen by a hash of the seed and the batch's first
/// seq: spread across agents and batches, yet the same in every run of a test.
fn jittered_age(limits: BatchLimits, seed: u64, first_seq: u64) -> Duration {
    let unit =
        (crate::hash::mix(seed ^ first_seq.rotate_left(32)) >> 11) as f64 / (1u64 << 53) as f64;
    limits.max_age.mul_f64(1.0 - limits.jitter * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(records: usize, bytes: u64, age_ms: u64, jitter: f64) -> BatchLimits {
        BatchLimits {
            max_records: records,
            max_bytes: bytes,
            max_age: Duration::from_millis(age_ms),
            jitter,
        }
    }

    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq}}}").into_bytes()
    }

    /// Feeds seqs at the same instant and returns the closed ranges.
    fn cut(
        batcher: &mut Batcher,
        seqs: impl IntoIterator<Item = u64>,
        now: Instant,
    ) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        for seq in seqs {
            for b in batcher.push(seq, &payload(seq), now).unwrap() {
                ranges.push((b.first_seq(), b.last_seq()));
            }
        }
        ranges
    }

    #[test]
    fn an_alert_record_closes_its_batch_at_once_and_an_output_saying_alert_does_not() {
        let now = Instant::now();
        let mut b = Batcher::new("rack", limits(100, 1 << 20, 60_000, 0.0), 7);
        assert!(b.push(1, &payload(1), now).unwrap().is_empty());
        // A command whose output holds the text `"alert":true` (escaped in the JSON string).
        let sneaky = br#"{"seq":2,"output":"{\"alert\":true}"}"#;
        assert!(b.push(2, sneaky, now).unwrap().is_empty());
        let alert = br#"{"seq":3,"kind":"console","output":"%SYS-2-MALLOCFAIL","alert":true}"#;
        let closed = b.push(3, alert, now).unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].first_seq(), closed[0].last_seq()), (1, 3));
        assert!(b.flush().is_none());
    }

    #[test]
    fn batches_close_at_the_record_limit_with_keys_from_their_seq_range() {
        let now = Instant::now();
        let mut b = Batcher::new("rack-a12", limits(3, 1 << 20, 5000, 0.2), 7);
        let mut batches = Vec::new();
        for seq in 1..=7 {
            batches.extend(b.push(seq, &payload(seq), now).unwrap());
        }
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].idempotency_key(), "rack-a12:1-3");
        assert_eq!(batches[1].idempotency_key(), "rack-a12:4-6");
        assert_eq!(batches[0].len(), 3);
        assert_eq!(
            batches[0].body(),
            b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n"
        );
        assert_eq!(b.pending(), (1, 10));
        let last = b.flush().unwrap();
        assert_eq!(last.idempotency_key(), "rack-a12:7-7");
        assert!(b.flush().is_none());
    }

    #[test]
    fn batches_close_before_they_would_pass_the_byte_limit() {
        let now = Instant::now();
        // Each line is 10 bytes ({"seq":N}\n for one-digit N): 3 fit in 30, a 4th would not.
        let mut b = Batcher::new("a", limits(100, 35, 5000, 0.0), 0);
        assert_eq!(cut(&mut b, 1..=7, now), vec![(1, 3), (4, 6)]);
        let rest = b.flush().unwrap();
        assert_eq!((rest.first_seq(), rest.last_seq()), (7, 7));
    }

    #[test]
    fn a_record_over_the_byte_limit_travels_alone_and_closes_the_open_batch() {
        let now = Instant::now();
        let mut b = Batcher::new("a", limits(100, 25, 5000, 0.0), 0);
        b.push(1, b"{}", now).unwrap();
        let big = vec![b'x'; 40];
        let closed = b.push(2, &big, now).unwrap();
        let ranges: Vec<_> = closed
            .iter()
            .map(|b| (b.first_seq(), b.last_seq()))
            .collect();
        assert_eq!(ranges, vec![(1, 1), (2, 2)]);
        assert_eq!(closed[1].body().len(), 41);
        assert_eq!(b.pending(), (0, 0));
    }

    #[test]
    fn the_same_stream_gives_the_same_batches_whatever_the_push_timing() {
        let start = Instant::now();
        let seqs: Vec<u64> = (1..=50).chain(60..=90).collect();
        let mut fast = Batcher::new("a", limits(7, 1 << 20, 60_000, 0.2), 1);
        let mut slow = Batcher::new("a", limits(7, 1 << 20, 60_000, 0.2), 2);
        let a = cut(&mut fast, seqs.clone(), start);
        let mut b = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            let now = start + Duration::from_millis(100 * i as u64);
            for batch in slow.push(*seq, &payload(*seq), now).unwrap() {
                b.push((batch.first_seq(), batch.last_seq()));
            }
        }
        assert_eq!(a, b);
        assert_eq!(
            a[7],
            (50, 65),
            "gaps in seq are fine: a batch is a range of what exists"
        );
    }

    #[test]
    fn a_batch_closes_at_its_jittered_age_and_no_later_than_max_age() {
        let start = Instant::now();
        let max_age = Duration::from_millis(1000);
        let mut ages = Vec::new();
        for first in 1..=40u64 {
            let mut b = Batcher::new("a", limits(100, 1 << 20, 1000, 0.5), 99);
            b.push(first, b"{}", start).unwrap();
            let deadline = b.deadline().unwrap();
            let age = deadline - start;
            assert!(age <= max_age && age >= max_age / 2, "{age:?}");
            assert!(b.poll(deadline - Duration::from_millis(1)).is_none());
            let batch = b.poll(deadline).expect("due at its deadline");
            assert_eq!((batch.first_seq(), batch.last_seq()), (first, first));
            assert!(b.deadline().is_none() && b.poll(deadline + max_age).is_none());
            ages.push(age);
        }
        ages.sort();
        ages.dedup();
        assert!(ages.len() > 30, "jitter spreads the ages: {ages:?}");
        // The same seed and first seq give the same age: a test (or a replay) is reproducible.
        let mut again = Batcher::new("a", limits(100, 1 << 20, 1000, 0.5), 99);
        again.push(1, b"{}", start).unwrap();
        let mut first = Batcher::new("a", limits(100, 1 << 20, 1000, 0.5), 99);
        first.push(1, b"{}", start).unwrap();
        assert_eq!(again.deadline(), first.deadline());
    }

    #[test]
    fn the_age_counts_from_the_first_record_of_the_batch() {
        let start = Instant::now();
        let mut b = Batcher::new("a", limits(100, 1 << 20, 1000, 0.0), 0);
        b.push(1, b"{}", start).unwrap();
        b.push(2, b"{}", start + Duration::from_millis(900))
            .unwrap();
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(1000)));
        let batch = b.poll(start + Duration::from_millis(1000)).unwrap();
        assert_eq!(batch.len(), 2);
        b.push(3, b"{}", start + Duration::from_millis(1500))
            .unwrap();
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(2500)));
    }

    #[test]
    fn a_resumed_cut_repeats_an_age_cut_made_before_a_restart() {
        let start = Instant::now();
        let lim = limits(10, 1 << 20, 1000, 0.0);
        // Before the crash: 4 records, then the age limit cut 1-4 (sent, never acknowledged).
        let mut before = Batcher::new("rack", lim, 0);
        cut(&mut before, 1..=4, start);
        let sent = before.poll(start + Duration::from_secs(1)).unwrap();
        assert_eq!(sent.idempotency_key(), "rack:1-4");
        // After the restart the spool replays 1..=30 at once; without the hint it would cut 1-10.
        let mut plain = Batcher::new("rack", lim, 0);
        assert_eq!(cut(&mut plain, 1..=30, start)[0], (1, 10));
        let mut resumed = Batcher::new("rack", lim, 0);
        resumed.resume_cut(sent.last_seq());
        let mut batches = Vec::new();
        for seq in 1..=30 {
            batches.extend(resumed.push(seq, &payload(seq), start).unwrap());
        }
        assert_eq!(batches[0], sent, "same records, same body, same key");
        let ranges: Vec<_> = batches
            .iter()
            .map(|b| (b.first_seq(), b.last_seq()))
            .collect();
        assert_eq!(ranges, vec![(1, 4), (5, 14), (15, 24)]);
    }

    #[test]
    fn a_resumed_cut_at_a_seq_that_is_gone_cuts_before_the_next_one() {
        let now = Instant::now();
        let mut b = Batcher::new("a", limits(10, 1 << 20, 1000, 0.0), 0);
        b.resume_cut(5);
        // seq 5 was dropped (spool full): the batch still ends at the last seq before the cut.
        assert_eq!(cut(&mut b, [1, 2, 3, 4, 6, 7], now), vec![(1, 4)]);
        assert_eq!(b.pending().0, 2);
    }

    #[test]
    fn records_out_of_order_are_refused_with_both_seqs() {
        let now = Instant::now();
        let mut b = Batcher::new("a", limits(10, 1 << 20, 1000, 0.0), 0);
        b.push(5, b"{}", now).unwrap();
        let err = b.push(5, b"{}", now).unwrap_err();
        assert_eq!(err, BatchError::OutOfOrder { seq: 5, last: 5 });
        assert!(err.to_string().contains("seq 5"));
        assert_eq!(b.pending().0, 1);
    }

    #[test]
    fn parts_of_a_batch_hold_its_lines_unchanged_with_keys_of_their_own_seq_range() {
        let now = Instant::now();
        let mut b = Batcher::new("rack-a12", limits(10, 1 << 20, 1000, 0.0), 0);
        // Gaps in seq (records dropped by the spool) stay gaps in every part.
        for seq in [3, 4, 7, 8, 9] {
            b.push(seq, &payload(seq), now).unwrap();
        }
        let batch = b.flush().unwrap();
        let seqs: Vec<u64> = batch.lines().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![3, 4, 7, 8, 9]);
        let joined: Vec<u8> = batch.lines().flat_map(|l| l.line.to_vec()).collect();
        assert_eq!(joined, batch.body());

        let left = batch.part(0..2);
        let right = batch.part(2..5);
        assert_eq!(left.idempotency_key(), "rack-a12:3-4");
        assert_eq!(right.idempotency_key(), "rack-a12:7-9");
        assert_eq!(
            (right.first_seq(), right.last_seq(), right.len()),
            (7, 9, 3)
        );
        assert_eq!([left.body(), right.body()].concat(), batch.body());
        let one = right.part(1..2);
        assert_eq!(one.idempotency_key(), "rack-a12:8-8");
        assert_eq!(one.body(), b"{\"seq\":8}\n");
        assert_eq!(one.lines().next().unwrap().line, one.body());
        // The same part cut again is the same batch (what a resend after a restart sees).
        assert_eq!(batch.part(2..5), right);
        assert_eq!(batch.part(0..5), batch);
    }

    #[test]
    fn a_batch_with_new_lines_keeps_its_seqs_and_key() {
        let now = Instant::now();
        let mut b = Batcher::new("rack", limits(10, 1 << 20, 1000, 0.0), 0);
        for seq in [3, 5] {
            b.push(seq, &payload(seq), now).unwrap();
        }
        let batch = b.flush().unwrap();
        let new = batch.with_lines(vec![b"{\"a\":1}".to_vec(), b"{}\n".to_vec()]);
        assert_eq!(new.idempotency_key(), batch.idempotency_key());
        assert_eq!((new.first_seq(), new.last_seq(), new.len()), (3, 5, 2));
        assert_eq!(new.body(), b"{\"a\":1}\n{}\n");
        let lines: Vec<(u64, &[u8])> = new.lines().map(|l| (l.seq, l.line)).collect();
        assert_eq!(lines, vec![(3, &b"{\"a\":1}\n"[..]), (5, &b"{}\n"[..])]);
    }

    #[test]
    #[should_panic(expected = "part 2..2 of a batch of 2 records")]
    fn an_empty_part_is_a_bug() {
        let now = Instant::now();
        let mut b = Batcher::new("a", limits(10, 1 << 20, 1000, 0.0), 0);
        b.push(1, b"{}", now).unwrap();
        b.push(2, b"{}", now).unwrap();
        b.flush().unwrap().part(2..2);
    }

    #[test]
    fn keys_are_valid_header_values_for_any_agent_id() {
        assert_eq!(idempotency_key("rack-a12", 1, 500), "rack-a12:1-500");
        assert_eq!(idempotency_key("rack a:ü", 2, 3), "rack%20a%3A%C3%BC:2-3");
        // ':' is encoded, so "a:1" as an agent id cannot collide with agent "a".
        assert_ne!(idempotency_key("a:1", 2, 3), idempotency_key("a", 12, 3));
        let key = idempotency_key("x\r\ny", 1, 1);
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
    }
}

//! The filter the shipper puts between the spool and the sink: [`ChangeFilter::shape`] turns
//! a batch into the one that goes upstream, and [`ChangeFilter::delivered`] moves the
//! baselines once upstream acknowledged it.
//!
//! Shaping is a pure function of the batch and the acknowledged baselines (the `full_every`
//! clock is the record's own `started_at`, not the wall clock), so the same batch sent again
//! after a failure or a restart is shaped byte for byte the same and keeps its
//! `Idempotency-Key` honest. Within a batch, an earlier record of the same device and command
//! is the baseline of a later one: the batch reaches upstream whole or not at all.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::diff::{MAX_DIFF_BYTES, unified};
use super::normalise::{digest_text, sha256};
use super::store::{Baseline, Store, file_name};
use super::{ChangePolicy, CommandPolicy};
use crate::batch::{Batch, BatchLine};

/// What change-only shipping saved, over the batches upstream acknowledged (records it
/// refused for good not counted). Cheap to read, for a later metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// `ok` records of on_change commands that went up with a `digest`.
    pub shaped: u64,
    /// Of those, the ones that went up with `"output": null`.
    pub unchanged: u64,
    /// NDJSON bytes those left out (the record as spooled minus the record as sent).
    pub bytes_saved: u64,
}

/// Shapes batches for change-only shipping; owns the baselines and their files.
#[derive(Debug)]
pub struct ChangeFilter {
    policy: ChangePolicy,
    store: Store,
    /// The acknowledged baseline per device and command (no texts: those stay on disk).
    baselines: BTreeMap<String, BTreeMap<String, Baseline>>,
    /// What the batch shaped last will set once upstream acknowledges it.
    pending: Option<Pending>,
    counts: ChangeCounts,
}

#[derive(Debug, Default)]
struct Pending {
    /// Records shipped whole, in seq order: each becomes its key's baseline when delivered.
    updates: Vec<Update>,
    /// Per shaped record: its seq, whether it went up unchanged, the bytes it saved.
    shaped: Vec<(u64, bool, u64)>,
}

#[derive(Debug)]
struct Update {
    seq: u64,
    device: String,
    command: String,
    baseline: Baseline,
    /// The normalised output: the file's text, and the diff base of later records of the batch.
    text: String,
}

/// How one record goes up.
enum Shape {
    /// Whole, with `changed` and maybe a `diff`.
    Whole { changed: bool, diff: Option<String> },
    /// `"output": null`, `changed: false`.
    Unchanged,
}

impl ChangeFilter {
    /// The filter with the baselines kept in `state_dir/changes/` for `policy`'s commands
    /// (files of other commands removed). Never fails: what cannot be read or written is a
    /// warning, and the baselines then live in memory.
    pub fn open(state_dir: &Path, policy: ChangePolicy) -> ChangeFilter {
        let mut filter = ChangeFilter {
            policy,
            store: Store::open(state_dir),
            baselines: BTreeMap::new(),
            pending: None,
            counts: ChangeCounts::default(),
        };
        filter.sync_with_policy();
        filter
    }

    /// A reloaded config's policy: baselines of commands no longer on_change are forgotten
    /// (and their files removed), those of new ones read from disk.
    pub fn set_policy(&mut self, policy: ChangePolicy) {
        self.policy = policy;
        self.sync_with_policy();
    }

    /// Whether any command ships `on_change`: without one, [`ChangeFilter::shape`] would
    /// only copy the batch.
    pub fn is_active(&self) -> bool {
        !self.policy.is_empty()
    }

    /// The batch as it goes upstream: the same seqs and `Idempotency-Key`, each `ok` record
    /// of an on_change command with `digest` and `changed`, and `"output": null` when it is
    /// unchanged. Everything else passes byte for byte. Remembers the baselines it would set,
    /// for [`ChangeFilter::delivered`].
    pub fn shape(&mut self, batch: &Batch) -> Batch {
        self.pending = None;
        if self.policy.is_empty() {
            return batch.clone();
        }
        let mut pending = Pending::default();
        let mut in_batch: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut shaped_any = false;
        let lines: Vec<Vec<u8>> = batch
            .lines()
            .map(
                |line| match self.shape_line(line, &mut pending, &mut in_batch) {
                    Some(shaped) => {
                        shaped_any = true;
                        shaped
                    }
                    None => line.line.to_vec(),
                },
            )
            .collect();
        self.pending = Some(pending);
        if shaped_any {
            batch.with_lines(lines)
        } else {
            batch.clone()
        }
    }

    /// Upstream acknowledged the batch shaped last; `rejected` are the seq ranges
    /// (`first..=last`) it refused for good: no baseline is taken from those.
    pub fn delivered(&mut self, rejected: &[(u64, u64)]) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let refused = |seq: u64| rejected.iter().any(|&(a, b)| a <= seq && seq <= b);
        for &(seq, unchanged, saved) in &pending.shaped {
            if !refused(seq) {
                self.counts.shaped += 1;
                self.counts.unchanged += u64::from(unchanged);
                self.counts.bytes_saved += saved;
            }
        }
        // The last whole record of each key upstream took is its new baseline.
        let mut last: BTreeMap<(&str, &str), &Update> = BTreeMap::new();
        for u in pending.updates.iter().filter(|u| !refused(u.seq)) {
            last.insert((&u.device, &u.command), u);
        }
        for ((device, command), u) in last {
            if self.policy.get(device, command).is_none() {
                continue;
            }
            self.store.save(device, command, &u.baseline, &u.text);
            self.baselines
                .entry(device.to_string())
                .or_default()
                .insert(command.to_string(), u.baseline);
        }
    }

    /// What change-only shipping saved so far in this run.
    pub fn counts(&self) -> ChangeCounts {
        self.counts
    }

    fn sync_with_policy(&mut self) {
        let keep = self.policy.keys().map(|(d, c)| file_name(d, c)).collect();
        self.store.prune(&keep);
        let policy = &self.policy;
        self.baselines.retain(|device, commands| {
            commands.retain(|command, _| policy.get(device, command).is_some());
            !commands.is_empty()
        });
        for (device, command) in self.policy.keys() {
            let known = self
                .baselines
                .get(device)
                .is_some_and(|c| c.contains_key(command));
            if !known && let Some(b) = self.store.load(device, command) {
                self.baselines
                    .entry(device.to_string())
                    .or_default()
                    .insert(command.to_string(), b);
            }
        }
    }

    /// The shaped line of an `ok` record of an on_change command; `None` for every other
    /// line (which then passes as it is).
    fn shape_line(
        &self,
        line: BatchLine<'_>,
        pending: &mut Pending,
        in_batch: &mut BTreeMap<(String, String), usize>,
    ) -> Option<Vec<u8>> {
        let mut record: Map<String, Value> = serde_json::from_slice(line.line).ok()?;
        if record.get("status")?.as_str()? != "ok" {
            return None;
        }
        let device = record.get("device")?.as_str()?.to_string();
        let command = record.get("command")?.as_str()?.to_string();
        let policy = self.policy.get(&device, &command)?;
        let normalised = policy.normaliser.normalise(&output_bytes(&record)?);
        let digest = sha256(&normalised);
        let started_ms = record
            .get("started_at")
            .and_then(Value::as_str)
            .and_then(unix_ms);
        let key = (device, command);
        let shape = self.decide(
            &key,
            policy,
            &normalised,
            &digest,
            started_ms,
            pending,
            in_batch,
        );
        if let Shape::Whole { .. } = shape {
            in_batch.insert(key.clone(), pending.updates.len());
            pending.updates.push(Update {
                seq: line.seq,
                device: key.0,
                command: key.1,
                baseline: Baseline {
                    digest,
                    last_full_ms: started_ms.unwrap_or(0),
                },
                text: normalised,
            });
        }
        let unchanged = matches!(shape, Shape::Unchanged);
        let mut shaped = write_fields(&mut record, &digest, shape)?;
        shaped.push(b'\n');
        let saved = (line.line.len() as u64).saturating_sub(shaped.len() as u64);
        pending
            .shaped
            .push((line.seq, unchanged, if unchanged { saved } else { 0 }));
        Some(shaped)
    }

    /// Whole or unchanged, against the baseline: an earlier record of this batch, or the
    /// acknowledged one.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        key: &(String, String),
        policy: &CommandPolicy,
        normalised: &str,
        digest: &[u8; 32],
        started_ms: Option<u64>,
        pending: &Pending,
        in_batch: &BTreeMap<(String, String), usize>,
    ) -> Shape {
        let earlier = in_batch.get(key).map(|&i| &pending.updates[i]);
        let baseline = earlier.map(|u| u.baseline).or_else(|| {
            self.baselines
                .get(&key.0)
                .and_then(|c| c.get(&key.1))
                .copied()
        });
        let Some(baseline) = baseline else {
            return Shape::Whole {
                changed: true,
                diff: None,
            };
        };
        if &baseline.digest != digest {
            let previous = match earlier {
                Some(u) => Ok(u.text.clone()),
                None => self.store.text(&key.0, &key.1, &baseline.digest),
            };
            let diff = match previous {
                Ok(previous) => Some(unified(&previous, normalised, MAX_DIFF_BYTES)),
                Err(why) => {
                    log::warn!(
                        "no diff for the changed output of {:?} {:?}: the previous one cannot be read ({why}); the record carries the whole output",
                        key.0,
                        key.1
                    );
                    None
                }
            };
            return Shape::Whole {
                changed: true,
                diff,
            };
        }
        let due = match started_ms {
            // A clock that went back (a board without RTC before NTP) counts as due.
            Some(now) => {
                now < baseline.last_full_ms
                    || now - baseline.last_full_ms >= policy.full_every.as_millis() as u64
            }
            None => true,
        };
        if due {
            Shape::Whole {
                changed: false,
                diff: None,
            }
        } else {
            Shape::Unchanged
        }
    }
}

/// The record's exact output: `output_base64` when present, else `output`.
fn output_bytes(record: &Map<String, Value>) -> Option<Vec<u8>> {
    let text = record.get("output")?.as_str()?;
    match record.get("output_base64").and_then(Value::as_str) {
        Some(b64) => {
            Some(crate::record::base64_decode(b64).unwrap_or_else(|| text.as_bytes().to_vec()))
        }
        None => Some(text.as_bytes().to_vec()),
    }
}

/// The record with `digest`, `changed` (and `diff`) after its output, as JSON.
fn write_fields(
    record: &mut Map<String, Value>,
    digest: &[u8; 32],
    shape: Shape,
) -> Option<Vec<u8>> {
    let (changed, diff) = match shape {
        Shape::Whole { changed, diff } => (changed, diff),
        Shape::Unchanged => {
            record.insert("output".into(), Value::Null);
            record.shift_remove("output_base64");
            (false, None)
        }
    };
    let after = ["output_base64", "output"]
        .iter()
        .find_map(|k| record.keys().position(|key| key == k))?
        + 1;
    record.shift_insert(after, "digest".into(), Value::String(digest_text(digest)));
    record.shift_insert(after + 1, "changed".into(), Value::Bool(changed));
    if let Some(diff) = diff {
        record.shift_insert(after + 2, "diff".into(), Value::String(diff));
    }
    serde_json::to_vec(record).ok()
}

/// `2026-11-25T10:00:00.123Z` (what `record::rfc3339_millis` writes) as Unix milliseconds.
fn unix_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (H. Hinnant), for years ≥ 1970.
    let (y, m) = if m <= 2 {
        (y.checked_sub(1)?, m + 9)
    } else {
        (y, m - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[cfg(test)]
#[path = "shape_tests.rs"]
mod tests;

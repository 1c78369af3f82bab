//! Issue 9's promise, checked from the receiving end: every record the agent numbered either
//! arrived at the collector or is named in the `gap.lost` ranges of a gap record that
//! arrived, nothing else.
//!
//! Which seqs the agent numbered: within one run of `rackhand run`, consecutive ones from the
//! first (one above the reservation in `state_dir/seq` when it started: a restart skips the
//! rest of the block reserved before) to the last (`spool.last_seq` in the `status.json` it
//! saved as it stopped). Gap records are numbered from the same sequence, so they count too.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

use serde_json::Value;

use super::agent::read_status;
use super::collector::Collector;

/// Every record the collector received, first arrival per seq: its line and its JSON.
pub fn received(collector: &Collector) -> BTreeMap<u64, (Vec<u8>, Value)> {
    collector.with_posts(|posts| {
        let mut out = BTreeMap::new();
        for post in posts {
            for (line, r) in post.lines.iter().zip(&post.records) {
                if let Some(seq) = r["seq"].as_u64() {
                    out.entry(seq).or_insert_with(|| (line.clone(), r.clone()));
                }
            }
        }
        out
    })
}

/// The gap records received, in seq order.
pub fn gap_records(collector: &Collector) -> Vec<Value> {
    received(collector)
        .into_values()
        .map(|(_, r)| r)
        .filter(|r| r["status"] == "gap")
        .collect()
}

/// The first seq the next run of the agent on `state_dir` hands out (one above the block its
/// `seq` file reserved; 1 on a fresh state_dir).
pub fn next_run_first_seq(state_dir: &Path) -> u64 {
    match std::fs::read_to_string(state_dir.join("seq")) {
        Ok(text) => {
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{}/seq holds {text:?}: {e}", state_dir.display()))
                + 1
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => panic!("cannot read {}/seq: {e}", state_dir.display()),
    }
}

/// The last seq a stopped agent handed out, from the status it saved as it stopped.
pub fn stopped_run_last_seq(state_dir: &Path) -> u64 {
    let status = read_status(state_dir)
        .unwrap_or_else(|| panic!("no status.json in {} after a stop", state_dir.display()));
    status["spool"]["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("status.json has no spool.last_seq: {status}"))
}

/// One lost range a gap record named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    pub first: u64,
    pub last: u64,
    pub cause: String,
    /// The seq of the gap record that named it.
    pub reported_by: u64,
}

/// What reached the collector, judged against the seqs the agent handed out.
pub struct Delivery {
    pub by_seq: BTreeMap<u64, (Vec<u8>, Value)>,
    pub gaps: Vec<Value>,
    pub lost: Vec<LostRange>,
}

impl Delivery {
    pub fn of(collector: &Collector) -> Delivery {
        let by_seq = received(collector);
        let gaps: Vec<Value> = by_seq
            .values()
            .map(|(_, r)| r)
            .filter(|r| r["status"] == "gap")
            .cloned()
            .collect();
        let mut lost = Vec::new();
        for g in &gaps {
            let ranges = g["gap"]["lost"].as_array().cloned().unwrap_or_default();
            for r in ranges {
                let (Some(first), Some(last)) = (r[0].as_u64(), r[1].as_u64()) else {
                    panic!("a gap.lost range that is not [first, last]: {g}");
                };
                lost.push(LostRange {
                    first,
                    last,
                    cause: g["gap"]["cause"].as_str().unwrap_or("").to_string(),
                    reported_by: g["seq"].as_u64().unwrap_or(0),
                });
            }
        }
        Delivery { by_seq, gaps, lost }
    }

    /// The cause of the first lost range naming `seq`, if any.
    pub fn lost_cause(&self, seq: u64) -> Option<&str> {
        self.lost
            .iter()
            .find(|r| (r.first..=r.last).contains(&seq))
            .map(|r| r.cause.as_str())
    }

    /// The gap records of `cause`.
    pub fn gaps_of(&self, cause: &str) -> Vec<&Value> {
        self.gaps
            .iter()
            .filter(|g| g["gap"]["cause"] == cause)
            .collect()
    }

    /// Sum of the numeric field `gap.<field>` over the gap records of `cause`.
    pub fn gap_sum(&self, cause: &str, field: &str) -> u64 {
        self.gaps_of(cause)
            .iter()
            .map(|g| g["gap"][field].as_u64().unwrap_or(0))
            .sum()
    }

    /// Seqs the collector did not receive, of those in `runs`.
    pub fn missing(&self, runs: &[RangeInclusive<u64>]) -> Vec<u64> {
        runs.iter()
            .flat_map(|r| r.clone())
            .filter(|s| !self.by_seq.contains_key(s))
            .collect()
    }

    /// Every problem with the promise over the seqs `runs` handed out: a seq neither received
    /// nor in a lost range, a gap record whose list of ranges is cut, a record received that
    /// no run handed out. Empty when it holds.
    pub fn problems(&self, runs: &[RangeInclusive<u64>]) -> Vec<String> {
        let mut problems = Vec::new();
        let unaccounted: Vec<u64> = self
            .missing(runs)
            .into_iter()
            .filter(|&s| self.lost_cause(s).is_none())
            .collect();
        if !unaccounted.is_empty() {
            problems.push(format!(
                "{} seq(s) neither received nor in any gap record's lost ranges: {}",
                unaccounted.len(),
                ranges_text(&unaccounted)
            ));
        }
        for g in &self.gaps {
            if g["gap"]["lost_incomplete"] == true {
                problems.push(format!(
                    "gap record {} says its lost ranges are incomplete: {}",
                    g["seq"], g["gap"]
                ));
            }
        }
        let stray: Vec<u64> = self
            .by_seq
            .keys()
            .copied()
            .filter(|s| !runs.iter().any(|r| r.contains(s)))
            .collect();
        if !stray.is_empty() {
            problems.push(format!(
                "{} record(s) received with seqs no run handed out (the test's idea of the runs is wrong): {}",
                stray.len(),
                ranges_text(&stray)
            ));
        }
        problems
    }

    /// Panics with everything needed to find the cause unless [`Self::problems`] is empty.
    pub fn assert_accounted(&self, runs: &[RangeInclusive<u64>], what: &str, log: &str) {
        let problems = self.problems(runs);
        assert!(
            problems.is_empty(),
            "{what}: every record must be received or reported lost:\n{}\nruns: {runs:?}\ngap records:\n{}\nagent log:\n{log}",
            problems.join("\n"),
            self.gaps
                .iter()
                .map(|g| format!("  {} {}", g["seq"], g["gap"]))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
}

/// `3-7, 9, 12-13` (at most 20 ranges).
pub fn ranges_text(seqs: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match ranges.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => ranges.push((s, s)),
        }
    }
    let mut parts: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > 20 {
        parts.push(format!("… ({} ranges)", ranges.len()));
    }
    parts.join(", ")
}

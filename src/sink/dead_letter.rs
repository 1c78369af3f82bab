//! The dead-letter file: where records go that upstream refused for good.
//!
//! Delivery is at-least-once, so a record stays in the spool until upstream takes it. A record
//! upstream will never take (larger than the collector or broker accepts, a body it rejects)
//! would then block every record behind it forever. Such records leave the spool into this
//! file instead, and the shipper reports them upstream in a gap record (cause `rejected`), so
//! nothing disappears unnoticed and an operator can fix the cause and replay them. Every sink
//! that can be refused (http, mqtt) writes here, in one format:
//!
//! - `state_dir/dead-letter.ndjson`, entries appended: one header line
//!   `{"dead_letter":{"at","sink","target","status","reason","response","idempotency_key",
//!   "first_seq","last_seq","records","bytes"}}`, then the refused records' NDJSON lines exactly
//!   as they were sent (byte for byte; these records exist nowhere else any more).
//! - Bounded by rotation, not by cutting: when an append would take the file past its cap, the
//!   file becomes `dead-letter.old.ndjson` (replacing the one before) and a new one starts, so
//!   at most two files of about the cap each. An entry larger than the cap is still written
//!   whole, into a file of its own.
//! - Durable before it counts: `DeadLetters::write` fsyncs the file (and the folder, when the
//!   file is new) before it returns, i.e. before the batch may leave the spool. When it fails,
//!   the file is cut back to where this write began and the batch stays in the spool.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Rejected;
use crate::batch::Batch;

/// The dead-letter file in its folder (the agent's `state_dir`).
pub const FILE: &str = "dead-letter.ndjson";
/// The previous dead-letter file, kept when the current one reached its cap.
pub const OLD: &str = "dead-letter.old.ndjson";
/// Default cap of one dead-letter file (two at most: [`FILE`] and [`OLD`]).
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Who refused: each header names the sink and its target (a URL without credentials, or a
/// broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refuser<'a> {
    /// `http` or `mqtt`.
    pub(crate) sink: &'static str,
    pub(crate) target: &'a str,
}

/// A contiguous run of a batch's records upstream refused for good, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal<'a> {
    /// The refused records: the whole batch, a part of it, or a single record.
    pub(crate) part: Cow<'a, Batch>,
    /// The HTTP status that refused them (none for mqtt).
    pub(crate) status: Option<u16>,
    /// In words, for the header, the log and [`Rejected::reason`].
    pub(crate) reason: String,
    /// The start of upstream's answer, when it gave one.
    pub(crate) response: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{target} refused records {first_seq}-{last_seq} for good, and the dead-letter file {path} cannot be written ({error}); they stay in the spool and are sent again: free space in or fix the permissions of that folder"
)]
pub struct DeadLetterError {
    pub(crate) target: String,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) error: io::Error,
}

/// The dead-letter file of one sink: its folder and cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetters {
    dir: PathBuf,
    max_bytes: u64,
}

impl DeadLetters {
    /// `max_bytes` is where the file rotates (see the module docs), at least 1.
    pub fn new(dir: &Path, max_bytes: u64) -> DeadLetters {
        DeadLetters {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The file entries are appended to.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Appends one entry per refusal, whole, and makes them durable: only then may the batch
    /// leave the spool. Returns what the shipper reports as rejected, in the same order.
    pub fn write(
        &self,
        refuser: Refuser<'_>,
        refusals: &[Refusal<'_>],
    ) -> Result<Vec<Rejected>, DeadLetterError> {
        let (Some(first), Some(last)) = (refusals.first(), refusals.last()) else {
            return Ok(Vec::new());
        };
        let path = self.path();
        let at = crate::record::rfc3339_millis(SystemTime::now());
        let headers: Vec<Vec<u8>> = refusals.iter().map(|r| header(refuser, r, &at)).collect();
        let total: u64 = refusals
            .iter()
            .zip(&headers)
            .map(|(r, h)| (h.len() + r.part.body().len()) as u64)
            .sum();
        self.append(&path, total, |file| {
            for (refusal, header) in refusals.iter().zip(&headers) {
                file.write_all(header)?;
                file.write_all(refusal.part.body())?;
            }
            Ok(())
        })
        .map_err(|error| DeadLetterError {
            target: refuser.target.to_string(),
            first_seq: first.part.first_seq(),
            last_seq: last.part.last_seq(),
            path: path.clone(),
            error,
        })?;
        Ok(refusals
            .iter()
            .map(|r| {
                let part = &r.part;
                log::error!(
                    "{}: records {}-{} ({} records, {} bytes) were written whole to {} and will not be sent again; they are reported upstream as rejected",
                    r.reason,
                    part.first_seq(),
                    part.last_seq(),
                    part.len(),
                    part.body().len(),
                    path.display()
                );
                Rejected {
                    first_seq: part.first_seq(),
                    last_seq: part.last_seq(),
                    records: part.len() as u64,
                    bytes: part.body().len() as u64,
                    reason: r.reason.clone(),
                    dead_letter: path.clone(),
                }
            })
            .collect())
    }

    /// Rotates when `total` more bytes would pass the cap, then appends with `write` and
    /// fsyncs; on an error the file is cut back to where it was.
    fn append(
        &self,
        path: &Path,
        total: u64,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut size = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        // The folder is synced when the file is new, so the entry survives a power cut.
        let mut new_file = size == 0;
        if size > 0 && size.saturating_add(total) > self.max_bytes {
            // Replacing the previous .old file is the rotation: the cap bounds two files.
            fs::rename(path, self.dir.join(OLD))?;
            size = 0;
            new_file = true;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if let Err(e) = write(&mut file).and_then(|()| file.sync_data()) {
            // Never leave half an entry: a retry writes it again from its header.
            let _ = file.set_len(size).and_then(|()| file.sync_data());
            return Err(e);
        }
        if new_file {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The `{"dead_letter":{...}}` line before a refusal's records.
fn header(refuser: Refuser<'_>, r: &Refusal<'_>, at: &str) -> Vec<u8> {
    let mut line = serde_json::json!({
        "dead_letter": {
            "at": at,
            "sink": refuser.sink,
            "target": refuser.target,
            "status": r.status,
            "reason": r.reason,
            "response": r.response,
            "idempotency_key": r.part.idempotency_key(),
            "first_seq": r.part.first_seq(),
            "last_seq": r.part.last_seq(),
            "records": r.part.len(),
            "bytes": r.part.body().len(),
        }
    })
    .to_string();
    line.push('\n');
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchLimits, Batcher};
    use crate::test_support::temp_dir;
    use std::time::{Duration, Instant};

    fn batch(first: u64, n: u64, line_len: usize) -> Batch {
        let limits = BatchLimits {
            max_records: n as usize,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(60),
            jitter: 0.0,
        };
        let mut b = Batcher::new("a", limits, 0);
        let mut out = Vec::new();
        for seq in first..first + n {
            let mut payload = format!("{{\"seq\":{seq},\"pad\":\"");
            payload.push_str(&"x".repeat(line_len.saturating_sub(payload.len() + 2)));
            payload.push_str("\"}");
            out.extend(b.push(seq, payload.as_bytes(), Instant::now()).unwrap());
        }
        out.pop().unwrap()
    }

    fn refusal(part: &Batch) -> Refusal<'_> {
        Refusal {
            part: Cow::Borrowed(part),
            status: Some(413),
            reason: "http://c/ingest answered 413 (Payload Too Large)".into(),
            response: None,
        }
    }

    const HTTP: Refuser<'static> = Refuser {
        sink: "http",
        target: "http://c/ingest",
    };

    /// Each entry: its header and the record lines after it.
    fn entries(path: &Path) -> Vec<(serde_json::Value, Vec<u8>)> {
        let bytes = fs::read(path).unwrap();
        let mut out: Vec<(serde_json::Value, Vec<u8>)> = Vec::new();
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            if value.get("dead_letter").is_some() {
                out.push((value, Vec::new()));
            } else {
                out.last_mut().unwrap().1.extend_from_slice(line);
            }
        }
        out
    }

    #[test]
    fn an_entry_larger_than_the_cap_is_written_whole_and_the_next_one_rotates() {
        let tmp = temp_dir("dead-letter-cap");
        let dir = tmp.path().join("dead-letters");
        let letters = DeadLetters::new(&dir, 1000);
        let small = batch(1, 2, 100);
        let big = batch(3, 3, 2000);
        letters.write(HTTP, &[refusal(&small)]).unwrap();
        let rejected = letters.write(HTTP, &[refusal(&big)]).unwrap();
        assert_eq!(
            rejected,
            vec![Rejected {
                first_seq: 3,
                last_seq: 5,
                records: 3,
                bytes: big.body().len() as u64,
                reason: "http://c/ingest answered 413 (Payload Too Large)".into(),
                dead_letter: dir.join(FILE),
            }]
        );
        // The small entry went to .old; the big one is alone and whole, past the cap.
        let current = entries(&dir.join(FILE));
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].1, big.body());
        let head = &current[0].0["dead_letter"];
        assert_eq!(head["idempotency_key"], "a:3-5");
        assert_eq!(head["records"], 3);
        assert_eq!(head["bytes"], big.body().len());
        assert_eq!(head["status"], 413);
        assert_eq!(head["sink"], "http");
        assert_eq!(entries(&dir.join(OLD))[0].1, small.body());
        // The next entry starts a new file again: the big one becomes .old.
        letters.write(HTTP, &[refusal(&small)]).unwrap();
        assert_eq!(entries(&dir.join(OLD))[0].1, big.body());
        assert_eq!(entries(&dir.join(FILE))[0].1, small.body());
    }

    #[test]
    fn several_refusals_are_one_append_in_order_and_none_is_nothing() {
        let tmp = temp_dir("dead-letter-many");
        let dir = tmp.path().join("dead-letters");
        let letters = DeadLetters::new(&dir, MAX_BYTES);
        assert_eq!(letters.write(HTTP, &[]).unwrap(), vec![]);
        assert!(!dir.join(FILE).exists(), "nothing refused, no file");
        let b = batch(10, 4, 80);
        let (one, three) = (b.part(0..1), b.part(2..4));
        let mqtt = Refuser {
            sink: "mqtt",
            target: "mqtt://broker:1883",
        };
        let rejected = letters
            .write(
                mqtt,
                &[
                    Refusal {
                        status: None,
                        ..refusal(&one)
                    },
                    refusal(&three),
                ],
            )
            .unwrap();
        let runs: Vec<(u64, u64, u64)> = rejected
            .iter()
            .map(|r| (r.first_seq, r.last_seq, r.records))
            .collect();
        assert_eq!(runs, vec![(10, 10, 1), (12, 13, 2)]);
        let got = entries(&dir.join(FILE));
        assert_eq!(got[0].1, one.body());
        assert_eq!(got[1].1, three.body());
        assert_eq!(got[0].0["dead_letter"]["status"], serde_json::Value::Null);
        assert_eq!(got[0].0["dead_letter"]["target"], "mqtt://broker:1883");
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_an_error_naming_the_file_and_the_fix() {
        let tmp = temp_dir("dead-letter-unwritable");
        let dir = tmp.path().join("dead-letters");
        // A file where the folder should be: create_dir_all fails, as on a read-only disk.
        fs::write(&dir, b"not a folder").unwrap();
        let letters = DeadLetters::new(&dir.join("sub"), MAX_BYTES);
        let b = batch(1, 1, 50);
        let err = letters.write(HTTP, &[refusal(&b)]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("dead-letter.ndjson"), "{text}");
        assert!(text.contains("records 1-1"), "{text}");
        assert!(text.contains("stay in the spool"), "{text}");
    }
}

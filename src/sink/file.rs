//! The `file` sink: records as NDJSON lines in a folder, one file at a time, rotated by size.
//!
//! The current file is `records.ndjson`; when it passes `max_bytes` it is renamed to
//! `records-<first seq>.ndjson` (12 digits, so the folder sorts in record order) and a new one
//! starts. The first seq is that of the file's first line, also for a `records.ndjson` an
//! earlier run left behind (read at open); a file whose first line names no seq becomes
//! `records-unknown-<nanoseconds since 1970>.ndjson`.
//!
//! A rotated file is never replaced, as it may hold the only copy of its records: a name can be
//! taken (a batch written again after a crash starts a file with the same seq as one before it;
//! a wiped `state_dir` starts seqs over), so the next free name is used,
//! `records-<first seq>_1.ndjson`, `_2`, … (sorting after the first), and the rename itself
//! refuses to replace a file (`renameat2(RENAME_NOREPLACE)`), so a race or a mistake fails
//! instead of losing a file.
//!
//! Writes are buffered and made durable by [`FileSink::sync`], which the agent calls at most
//! about once a second and on shutdown (group commit: one fsync for many records).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use crate::batch::Batch;
#[cfg(test)]
use crate::record::Record;

use super::{Retry, Shipped, Sink, SinkError, StopFlag};

#[derive(Debug, thiserror::Error)]
#[error("file sink {path}: {error}; check that the folder exists, is writable and has space")]
pub struct FileSinkError {
    pub(crate) path: PathBuf,
    pub(crate) error: io::Error,
}

pub struct FileSink {
    dir: PathBuf,
    max_bytes: u64,
    out: BufWriter<File>,
    size: u64,
    first: First,
    dirty: bool,
}

/// What the current file begins with, for its name when it rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Empty,
    Seq(u64),
    /// An earlier run's file whose first line names no seq.
    Unknown,
}

/// The file records are appended to; rotated ones are named by their first seq.
pub const CURRENT: &str = "records.ndjson";
/// How many rotated files may share a first seq (`records-<seq>_<n>.ndjson`) before rotating
/// fails: far more than restarts can make, few enough to fail fast on a folder gone wrong.
const SAME_FIRST_SEQ_MAX: u32 = 1000;

impl FileSink {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<FileSink, FileSinkError> {
        let err = |error| FileSinkError {
            path: dir.to_path_buf(),
            error,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let path = dir.join(CURRENT);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let first = match size {
            0 => First::Empty,
            _ => match first_seq_of(&path) {
                Some(seq) => First::Seq(seq),
                None => {
                    log::warn!(
                        "file sink: the first line of {} (left by an earlier run) names no seq; it will be rotated to records-unknown-<time>.ndjson",
                        path.display()
                    );
                    First::Unknown
                }
            },
        };
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            first,
            dirty: false,
        })
    }

    /// The file records are appended to now.
    pub(crate) fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn err(&self, error: io::Error) -> FileSinkError {
        FileSinkError {
            path: self.current_path(),
            error,
        }
    }

    /// Appends one record as one line (buffered; durable after [`FileSink::sync`]). The sink
    /// itself writes whole batches; tests write record by record.
    #[cfg(test)]
    pub fn write(&mut self, record: &Record) -> Result<(), FileSinkError> {
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        let mut line = record.to_json();
        line.push('\n');
        self.out
            .write_all(line.as_bytes())
            .map_err(|e| self.err(e))?;
        self.size += line.len() as u64;
        self.started_with(record.seq);
        self.dirty = true;
        Ok(())
    }

    /// Appends a batch's NDJSON lines and makes them durable before returning (the spool
    /// may then drop them). A batch is never split across two files.
    pub(crate) fn write_batch(&mut self, batch: &Batch) -> Result<(), FileSinkError> {
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        // Straight to the file, not through the buffer: should the disk fill up half way, the
        // file is cut back to where the batch began, so a retry never leaves half a line.
        self.out.flush().map_err(|e| self.err(e))?;
        let before = self.size;
        let written = self
            .out
            .get_mut()
            .write_all(batch.body())
            .and_then(|()| self.out.get_ref().sync_data());
        if let Err(e) = written {
            let _ = self.out.get_ref().set_len(before);
            return Err(self.err(e));
        }
        self.size += batch.body().len() as u64;
        self.started_with(batch.first_seq());
        Ok(())
    }

    /// Notes `seq` as the first of the current file if it was empty.
    fn started_with(&mut self, seq: u64) {
        if self.first == First::Empty {
            self.first = First::Seq(seq);
        }
    }

    /// Flushes and fsyncs what was written since the last sync.
    pub fn sync(&mut self) -> Result<(), FileSinkError> {
        if !self.dirty {
            return Ok(());
        }
        self.out.flush().map_err(|e| self.err(e))?;
        self.out.get_ref().sync_data().map_err(|e| self.err(e))?;
        self.dirty = false;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), FileSinkError> {
        self.sync()?;
        let stem = match self.first {
            First::Seq(seq) => format!("records-{seq:012}"),
            First::Empty | First::Unknown => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("records-unknown-{nanos}")
            }
        };
        let rotated =
            rename_to_free_name(&self.dir, &self.current_path(), &stem).map_err(|e| self.err(e))?;
        log::debug!(
            "file sink: {} rotated to {}",
            self.current_path().display(),
            rotated.display()
        );
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.current_path())
            .map_err(|e| self.err(e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err(e))?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        self.first = First::Empty;
        Ok(())
    }
}

/// The `seq` of the first record in `path`, read as far as that record's end (not the file).
fn first_seq_of(path: &Path) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head {
        seq: u64,
    }
    let file = File::open(path).ok()?;
    serde_json::Deserializer::from_reader(BufReader::new(file))
        .into_iter::<Head>()
        .next()?
        .ok()
        .map(|head| head.seq)
}

/// Renames `from` in `dir` to `<stem>.ndjson`, or to `<stem>_1.ndjson`, `_2`, … when that is
/// taken, and returns the path used. Never replaces a file.
fn rename_to_free_name(dir: &Path, from: &Path, stem: &str) -> io::Result<PathBuf> {
    for n in 0..SAME_FIRST_SEQ_MAX {
        let to = dir.join(match n {
            0 => format!("{stem}.ndjson"),
            n => format!("{stem}_{n}.ndjson"),
        });
        match rename_without_replacing(from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{SAME_FIRST_SEQ_MAX} files named {stem}*.ndjson exist already; move the rotated files elsewhere"
        ),
    ))
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_without_replacing(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: a hard link refuses an existing name too.
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

impl Sink for FileSink {
    /// A local disk either takes the batch or fails in a way a retry within this call would
    /// not fix (full, read-only): the error goes back and the shipper's own backoff retries.
    fn ship(
        &mut self,
        batch: &Batch,
        _until: Instant,
        _stop: &StopFlag,
        _observe: &mut dyn FnMut(&Retry),
    ) -> Result<Shipped, SinkError> {
        self.write_batch(batch)?;
        Ok(Shipped {
            attempts: 1,
            rejected: Vec::new(),
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Outcome, Status};
    use crate::test_support::temp_dir;
    use std::time::{Duration, SystemTime};

    fn record(seq: u64) -> Record {
        Outcome {
            device: "sw1".into(),
            transport: "telnet".into(),
            command: "show clock".into(),
            status: Status::Ok,
            error: None,
            output: b"10:00\n".to_vec(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(3),
        }
        .into_record("a", seq)
    }

    /// Every file in `dir` by name, with its content.
    fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn seqs(bytes: &[u8]) -> Vec<u64> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn lines(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        seqs.into_iter()
            .flat_map(|seq| {
                let mut line = record(seq).to_json().into_bytes();
                line.push(b'\n');
                line
            })
            .collect()
    }

    #[test]
    fn records_are_lines_and_files_rotate_by_size() {
        let tmp = temp_dir("filesink-rotate");
        let dir = tmp.path().join("records");
        let mut sink = FileSink::open(&dir, 600).unwrap();
        for seq in 1..=10 {
            sink.write(&record(seq)).unwrap();
        }
        sink.sync().unwrap();
        let files = files(&dir);
        let names: Vec<&String> = files.keys().collect();
        assert!(names.len() > 1, "rotated: {names:?}");
        assert_eq!(names[0], "records-000000000001.ndjson");
        let mut all: Vec<u64> = Vec::new();
        for (name, content) in &files {
            let s = seqs(content);
            if let Some(first) = name.strip_prefix("records-") {
                assert_eq!(
                    first,
                    format!("{:012}.ndjson", s[0]),
                    "named by its first seq"
                );
            }
            all.extend(s);
        }
        all.sort();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_restart_with_a_current_file_and_rotated_ones_never_replaces_or_loses_a_file() {
        let tmp = temp_dir("filesink-restart");
        let dir = tmp.path().join("records");
        fs::create_dir_all(&dir).unwrap();
        // An earlier run: two rotated files, and records.ndjson starting at seq 5, a first seq
        // a rotated file already has (its last batch was written again after a crash).
        let before = [
            ("records-000000000001.ndjson", lines(1..=4)),
            ("records-000000000005.ndjson", lines(5..=6)),
            ("records-000000000005_1.ndjson", lines([5])),
            (CURRENT, lines(5..=8)),
        ];
        for (name, content) in &before {
            fs::write(dir.join(name), content).unwrap();
        }
        let mut sink = FileSink::open(&dir, 1).unwrap();
        let batch = {
            let limits = crate::batch::BatchLimits {
                max_records: 2,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
                jitter: 0.0,
            };
            let mut b = crate::batch::Batcher::new("a", limits, 0);
            let now = std::time::Instant::now();
            b.push(9, record(9).to_json().as_bytes(), now).unwrap();
            b.push(10, record(10).to_json().as_bytes(), now)
                .unwrap()
                .pop()
                .unwrap()
        };
        sink.write_batch(&batch).unwrap();
        // And once more after a restart with the same records (the spool sends them again).
        drop(sink);
        let mut sink = FileSink::open(&dir, 1).unwrap();
        sink.write_batch(&batch).unwrap();
        drop(sink);

        let after = files(&dir);
        for (name, content) in &before[..3] {
            assert_eq!(&after[*name], content, "{name} is untouched");
        }
        // The old current file kept its first line's seq: 5 is taken twice, so `_2`.
        assert_eq!(after["records-000000000005_2.ndjson"], lines(5..=8));
        assert_eq!(after["records-000000000009.ndjson"], lines(9..=10));
        assert_eq!(after[CURRENT], lines(9..=10));
        assert_eq!(after.len(), 6, "{:?}", after.keys());
    }

    #[test]
    fn a_current_file_whose_first_line_names_no_seq_rotates_to_a_name_of_its_own() {
        let tmp = temp_dir("filesink-unknown");
        let dir = tmp.path().join("records");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(CURRENT), b"{\"half a line").unwrap();
        let mut sink = FileSink::open(&dir, 1).unwrap();
        sink.write(&record(3)).unwrap();
        sink.sync().unwrap();
        let after = files(&dir);
        let unknown: Vec<&String> = after
            .keys()
            .filter(|n| n.starts_with("records-unknown-") && n.ends_with(".ndjson"))
            .collect();
        assert_eq!(unknown.len(), 1, "{:?}", after.keys());
        assert_eq!(after[unknown[0]], b"{\"half a line");
        assert_eq!(seqs(&after[CURRENT]), vec![3]);
    }

    #[test]
    fn the_rename_refuses_an_existing_name_and_the_next_free_one_is_taken() {
        let tmp = temp_dir("filesink-noreplace");
        let dir = tmp.path().join("records");
        fs::create_dir_all(&dir).unwrap();
        let (from, to) = (dir.join("a"), dir.join("b.ndjson"));
        fs::write(&from, b"new").unwrap();
        fs::write(&to, b"old").unwrap();
        let err = rename_without_replacing(&from, &to).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&to).unwrap(), b"old");
        assert_eq!(fs::read(&from).unwrap(), b"new");
        let used = rename_to_free_name(&dir, &from, "b").unwrap();
        assert_eq!(used, dir.join("b_1.ndjson"));
        assert_eq!(fs::read(&used).unwrap(), b"new");
        assert_eq!(fs::read(&to).unwrap(), b"old");
        assert!(!from.exists());
    }
}

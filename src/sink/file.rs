//! The `file` sink: records as NDJSON lines in a folder, one file at a time, rotated by size.
//!
//! The current file is `records.ndjson`; when it passes `max_bytes` it is renamed to
//! `records-<first seq>.ndjson` (so the folder sorts in record order) and a new one starts.
//! Writes are buffered and made durable by [`FileSink::sync`], which the agent calls at most
//! about once a second and on shutdown (group commit: one fsync for many records).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::time::Instant;

use crate::batch::Batch;
use crate::record::Record;

use super::{Retry, Shipped, Sink, SinkError, StopFlag};

#[derive(Debug, thiserror::Error)]
#[error("file sink {path}: {error}; check that the folder exists, is writable and has space")]
pub struct FileSinkError {
    pub path: PathBuf,
    pub error: io::Error,
}

pub struct FileSink {
    dir: PathBuf,
    max_bytes: u64,
    out: BufWriter<File>,
    size: u64,
    first_seq: Option<u64>,
    dirty: bool,
}

/// The file records are appended to; rotated ones are named by their first seq.
pub const CURRENT: &str = "records.ndjson";

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
        Ok(FileSink {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            out: BufWriter::with_capacity(64 * 1024, file),
            size,
            first_seq: None,
            dirty: false,
        })
    }

    /// The file records are appended to now.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, error: io::Error) -> FileSinkError {
        FileSinkError {
            path: self.current_path(),
            error,
        }
    }

    /// Appends one record as one line (buffered; durable after [`FileSink::sync`]).
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
        self.first_seq.get_or_insert(record.seq);
        self.dirty = true;
        Ok(())
    }

    /// Appends a batch's NDJSON lines and makes them durable before returning (the spool
    /// may then drop them). A batch is never split across two files.
    pub fn write_batch(&mut self, batch: &Batch) -> Result<(), FileSinkError> {
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
        self.first_seq.get_or_insert(batch.first_seq());
        Ok(())
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
        let name = match self.first_seq {
            Some(seq) => format!("records-{seq:012}.ndjson"),
            None => format!("records-{}.ndjson", std::process::id()),
        };
        fs::rename(self.current_path(), self.dir.join(name)).map_err(|e| self.err(e))?;
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
        self.first_seq = None;
        Ok(())
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

    #[test]
    fn records_are_lines_and_files_rotate_by_size() {
        let dir = std::env::temp_dir().join(format!("rackhand-filesink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut sink = FileSink::open(&dir, 600).unwrap();
        for seq in 1..=10 {
            sink.write(&record(seq)).unwrap();
        }
        sink.sync().unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.len() > 1, "rotated: {names:?}");
        assert_eq!(names[0], "records-000000000001.ndjson");
        let mut seqs = Vec::new();
        for name in &names {
            for line in fs::read_to_string(dir.join(name)).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        seqs.sort();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }
}

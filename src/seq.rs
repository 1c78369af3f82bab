//! The agent's record sequence: strictly increasing, persisted, never reused after a crash.
//!
//! Record ids are `<agent>:<seq>`, and a receiver deduplicates on them, so a number handed out
//! twice would make two different records look like one. The clock cannot help (a Pi has no
//! RTC and may boot in 1970), so the sequence lives in `state_dir/seq`. Writing the file for
//! every record would wear the SD card; instead a block of numbers is *reserved* on disk
//! (temp file, fsync, rename, fsync of the folder) before any of it is handed out. After a
//! crash the agent starts above the reservation: numbers may be skipped, never repeated.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::durable_file::write_durably;

/// How many numbers one write of the seq file reserves.
pub(crate) const BLOCK: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    #[error(
        "cannot keep the record sequence in {path}: {error}; check that state_dir exists and the agent may write it"
    )]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{path} is corrupt ({detail}); it holds the record sequence: restore it from a backup, or remove it only if no receiver keeps record ids"
    )]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Debug)]
struct State {
    next: u64,
    reserved: u64,
}

/// A persisted, strictly increasing sequence.
#[derive(Debug)]
pub(crate) struct Sequence {
    path: PathBuf,
    state: Mutex<State>,
}

impl Sequence {
    /// Opens (or creates) `dir/seq`. The first number handed out is above anything a previous
    /// run could have used.
    pub fn open(dir: &Path) -> Result<Sequence, SeqError> {
        let path = dir.join("seq");
        let io_err = |error| SeqError::Io {
            path: path.clone(),
            error,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let reserved = match File::open(&path) {
            Ok(mut f) => {
                let mut text = String::new();
                f.read_to_string(&mut text).map_err(io_err)?;
                text.trim().parse::<u64>().map_err(|e| SeqError::Corrupt {
                    path: path.clone(),
                    detail: format!("`{}`: {e}", text.trim()),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(e)),
        };
        Ok(Sequence {
            path,
            state: Mutex::new(State {
                next: reserved + 1,
                reserved,
            }),
        })
    }

    /// As [`Sequence::open`], but never hands out `floor` or anything below: the agent passes
    /// the last seq found in its spool, so a lost or restored-from-backup `seq` file cannot
    /// make a new record reuse an id that may already be upstream.
    ///
    /// A damaged `seq` file does not stop the agent either (no crash loop, no manual step):
    /// every seq that can have reached upstream is at most `floor` (the shipper sends only
    /// records committed to the spool, and the spool's last and acked seqs cover those), so
    /// continuing above `floor` reuses nothing.
    pub(crate) fn open_above(dir: &Path, floor: u64) -> Result<Sequence, SeqError> {
        let sequence = match Sequence::open(dir) {
            // Unreadable (a bad sector) is no better than damaged; neither stops the agent.
            Err(SeqError::Io { path, error }) => Sequence::damaged(path, &error.to_string(), floor),
            Err(SeqError::Corrupt { path, detail }) => Sequence::damaged(path, &detail, floor),
            other => other?,
        };
        Ok(sequence.above(floor))
    }

    fn damaged(path: PathBuf, detail: &str, floor: u64) -> Sequence {
        log::warn!(
            "{} is damaged ({detail}); continuing above seq {floor}, the highest the spool has seen",
            path.display()
        );
        Sequence {
            path,
            state: Mutex::new(State {
                next: floor + 1,
                reserved: floor,
            }),
        }
    }

    /// Never hands out `floor` or below.
    fn above(self, floor: u64) -> Sequence {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.next <= floor {
                log::warn!(
                    "{} is behind the spool (next {} but the spool holds seq {floor}); continuing above {floor}",
                    self.path.display(),
                    state.next
                );
                state.next = floor + 1;
                state.reserved = floor;
            }
        }
        self
    }

    /// The next number; persists a new reservation first when the current one is used up.
    pub fn next(&self) -> Result<u64, SeqError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.next > state.reserved {
            let reserved = state.next - 1 + BLOCK;
            write_durably(&self.path, format!("{reserved}\n").as_bytes()).map_err(|error| {
                SeqError::Io {
                    path: self.path.clone(),
                    error,
                }
            })?;
            state.reserved = reserved;
        }
        let n = state.next;
        state.next += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_dir;

    #[test]
    fn numbers_increase_and_are_never_reused_after_a_restart() {
        let tmp = temp_dir("seq-restart");
        let dir = tmp.path().join("state");
        let seq = Sequence::open(&dir).unwrap();
        let first: Vec<u64> = (0..10).map(|_| seq.next().unwrap()).collect();
        assert_eq!(first, (1..=10).collect::<Vec<_>>());
        drop(seq); // a crash: nothing flushed beyond the reservation
        let seq = Sequence::open(&dir).unwrap();
        let n = seq.next().unwrap();
        assert!(
            n > 10,
            "after a restart {n} must be above every number handed out"
        );
        assert_eq!(n, BLOCK + 1);
    }

    #[test]
    fn the_file_is_written_once_per_block() {
        let tmp = temp_dir("seq-block");
        let dir = tmp.path().join("state");
        let seq = Sequence::open(&dir).unwrap();
        seq.next().unwrap();
        let written = fs::read_to_string(dir.join("seq")).unwrap();
        for _ in 1..BLOCK {
            seq.next().unwrap();
        }
        assert_eq!(fs::read_to_string(dir.join("seq")).unwrap(), written);
        assert_eq!(seq.next().unwrap(), BLOCK + 1);
        assert_eq!(
            fs::read_to_string(dir.join("seq")).unwrap().trim(),
            (2 * BLOCK).to_string()
        );
    }

    #[test]
    fn the_agent_continues_above_its_spool_when_the_file_is_lost_or_damaged() {
        let tmp = temp_dir("seq-above");
        let dir = tmp.path().join("state");
        fs::create_dir_all(&dir).unwrap();
        // Lost (restored from an old backup, say): behind what the spool holds.
        fs::write(dir.join("seq"), "5\n").unwrap();
        let seq = Sequence::open_above(&dir, 5000).unwrap();
        assert_eq!(seq.next().unwrap(), 5001);
        drop(seq);
        // Zero-filled by a power cut on a filesystem that lied about fsync.
        fs::write(dir.join("seq"), [0u8; 8]).unwrap();
        let seq = Sequence::open_above(&dir, 7000).unwrap();
        assert_eq!(seq.next().unwrap(), 7001);
        let reserved: u64 = fs::read_to_string(dir.join("seq"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(reserved >= 7001, "the file is whole again: {reserved}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_says_what_to_do() {
        let tmp = temp_dir("seq-corrupt");
        let dir = tmp.path().join("state");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("seq"), "not a number").unwrap();
        let err = Sequence::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("record ids"),
            "{err}"
        );
    }
}

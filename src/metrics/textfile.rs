//! The metrics as a file for node_exporter's textfile collector.
//!
//! node_exporter reads every `*.prom` file in its textfile folder at each scrape, so the file
//! must never be seen half written: the text goes to `PATH.tmp` beside it (a name the
//! collector ignores) and is renamed over it. No fsync: after a power cut the file is either
//! the old one or the new one, and the next tick rewrites it anyway; the card is spared a
//! flush every few seconds. It is rewritten only when the text changed, except once every
//! [`REFRESH_EVERY`], so `node_textfile_mtime_seconds` tells a stopped agent from an idle one.
//! A write that fails (a full disk, a folder taken away) is logged once until one works.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the text is rendered and compared with the file's.
pub(crate) const TEXTFILE_EVERY: Duration = Duration::from_secs(10);
/// The file is rewritten at least this often, changed or not.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Readable by node_exporter, which runs as its own user.
const MODE: u32 = 0o644;

/// The textfile and what was last written to it.
pub(crate) struct Textfile {
    path: PathBuf,
    /// FNV-1a of the text last written.
    written: Option<u64>,
    last_write: Option<Instant>,
    last_check: Option<Instant>,
    /// The last write failed (logged once until one works again).
    failing: bool,
}

impl Textfile {
    pub(crate) fn new(path: PathBuf) -> Textfile {
        Textfile {
            path,
            written: None,
            last_write: None,
            last_check: None,
            failing: false,
        }
    }

    /// Whether [`TEXTFILE_EVERY`] has passed since the last look.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last_check
            .is_none_or(|t| now.duration_since(t) >= TEXTFILE_EVERY)
    }

    /// Writes `text` if it differs from what the file holds, or the file is due a refresh.
    /// Returns whether it wrote.
    pub(crate) fn update(&mut self, text: &str, now: Instant) -> bool {
        self.last_check = Some(now);
        let hash = crate::hash::fnv1a(text.as_bytes());
        let stale = self
            .last_write
            .is_none_or(|t| now.duration_since(t) >= REFRESH_EVERY);
        if self.written == Some(hash) && !stale {
            return false;
        }
        match write_replacing(&self.path, text.as_bytes()) {
            Ok(()) => {
                if self.failing {
                    log::info!("metrics textfile {} is written again", self.path.display());
                }
                self.failing = false;
                self.written = Some(hash);
                self.last_write = Some(now);
                true
            }
            Err(e) => {
                if !self.failing {
                    log::warn!(
                        "cannot write the metrics textfile {}: {e}; check the folder exists and the agent's user may write in it",
                        self.path.display()
                    );
                }
                self.failing = true;
                false
            }
        }
    }
}

/// `PATH.tmp` written and renamed over `path` (removed again if anything fails).
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(MODE)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_written_when_the_text_changes_and_refreshed_when_it_does_not() {
        let dir = crate::test_support::temp_dir("metrics-textfile");
        let path = dir.path().join("rackhand.prom");
        let mut file = Textfile::new(path.clone());
        let t0 = Instant::now();
        assert!(file.due(t0));
        assert!(file.update("a 1\n", t0));
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "node_exporter must read it: {mode:o}");
        assert!(!file.due(t0 + Duration::from_secs(1)));
        assert!(!file.update("a 1\n", t0 + TEXTFILE_EVERY), "unchanged");
        assert!(file.update("a 2\n", t0 + 2 * TEXTFILE_EVERY), "changed");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        assert!(file.update("a 2\n", t0 + 2 * TEXTFILE_EVERY + REFRESH_EVERY));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("rackhand.prom")],
            "no temp file left"
        );
    }

    #[test]
    fn a_write_that_fails_is_retried_and_leaves_no_temp_file() {
        let dir = crate::test_support::temp_dir("metrics-textfile-gone");
        let folder = dir.path().join("gone");
        let path = folder.join("rackhand.prom");
        let mut file = Textfile::new(path.clone());
        let t0 = Instant::now();
        assert!(!file.update("a 1\n", t0));
        assert!(file.failing);
        fs::create_dir(&folder).unwrap();
        assert!(
            file.update("a 1\n", t0 + TEXTFILE_EVERY),
            "written once it can be"
        );
        assert!(!file.failing);
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
    }
}

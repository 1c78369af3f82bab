//! The last output upstream acknowledged per device and command, kept in `state_dir/changes/`
//! so change-only shipping survives a restart and kill -9.
//!
//! One small file per (device, command), named by the FNV-1a of `device NUL command` in hex,
//! and written only when upstream acknowledged a new baseline (a changed output, or the
//! `full_every` refresh of an unchanged one), atomically (`durable_file::write_durably`).
//! Layout, little-endian:
//!
//! ```text
//! "RHCHANGE" | version u8 = 1 | device len u32 | device | command len u32 | command
//! | digest [32] | last_full_ms u64 | text len u64 | gzip len u64 | gzip of the normalised text
//! | CRC32 u32 of everything before it
//! ```
//!
//! In memory the filter keeps only the digest and the last full time per key (800 running
//! configs of 200 KB would not fit a Pi's memory); a text is read back only to make a diff.
//!
//! Nothing here stops anything: a damaged file, an unreadable folder or a failed write (a
//! full card, EIO) is a warning naming the file and what it costs (the next such output goes
//! up whole, or has no diff), and the filter's memory stays right for this run.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::durable_file;
use crate::hash::fnv1a;

const MAGIC: &[u8; 8] = b"RHCHANGE";
const VERSION: u8 = 1;
/// The folder in `state_dir`.
pub(crate) const FOLDER: &str = "changes";
/// A normalised text longer than this is not read back (no output comes near it: outputs are
/// capped by `max_output`, 16 MiB by default).
const MAX_TEXT: u64 = 256 << 20;

/// What the filter remembers of the last output upstream acknowledged for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Baseline {
    pub(crate) digest: [u8; 32],
    /// `started_at` (Unix ms) of the last record of the key shipped whole.
    pub(crate) last_full_ms: u64,
}

/// The folder of baseline files.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    /// A write failed and was logged as a warning: the next failures are logged at debug
    /// level until a write works again (a full card would otherwise log one warning per
    /// device and command).
    failing: Cell<bool>,
}

impl Store {
    /// `state_dir/changes`, created 0750 when missing. A folder that cannot be created is a
    /// warning: every later write then warns too, and baselines live in memory only.
    pub(crate) fn open(state_dir: &Path) -> Store {
        let dir = state_dir.join(FOLDER);
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(durable_file::DIR_MODE)
            .create(&dir)
        {
            log::warn!(
                "cannot create {}: {e}; change-only shipping keeps its baselines in memory only, so after a restart the first output of every on_change command is shipped whole",
                dir.display()
            );
        }
        Store {
            dir,
            failing: Cell::new(false),
        }
    }

    /// The file of `device`'s `command`.
    pub(crate) fn path(&self, device: &str, command: &str) -> PathBuf {
        self.dir.join(file_name(device, command))
    }

    /// The baseline kept for the key, if its file is there and sound (a damaged one is a
    /// warning and counts as absent).
    pub(crate) fn load(&self, device: &str, command: &str) -> Option<Baseline> {
        let path = self.path(device, command);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn_unusable(&path, &e.to_string(), device, command);
                return None;
            }
        };
        match decode(&bytes, device, command) {
            Ok(file) => Some(file.baseline),
            Err(what) => {
                warn_unusable(&path, &what, device, command);
                None
            }
        }
    }

    /// The normalised text kept for the key, if the file holds the baseline `digest`;
    /// otherwise why not (for the log).
    pub(crate) fn text(
        &self,
        device: &str,
        command: &str,
        digest: &[u8; 32],
    ) -> Result<String, String> {
        let path = self.path(device, command);
        let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file =
            decode(&bytes, device, command).map_err(|e| format!("{}: {e}", path.display()))?;
        if &file.baseline.digest != digest {
            return Err(format!(
                "{} holds another output than the one upstream acknowledged last (a write failed)",
                path.display()
            ));
        }
        inflate(file.gzip, file.text_len).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the key's file. A failure is a warning: the caller's memory stays right for
    /// this run.
    pub(crate) fn save(
        &self,
        device: &str,
        command: &str,
        baseline: &Baseline,
        text: &str,
    ) -> bool {
        let path = self.path(device, command);
        let result = encode(device, command, baseline, text)
            .and_then(|bytes| durable_file::write_durably(&path, &bytes));
        match result {
            Ok(()) => {
                if self.failing.replace(false) {
                    log::info!("{} can be written again", self.dir.display());
                }
                true
            }
            Err(e) => {
                let free = durable_file::free_bytes(&self.dir)
                    .map(|n| format!(" ({} free)", durable_file::human_bytes(n)))
                    .unwrap_or_default();
                let level = if self.failing.replace(true) {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "cannot write {}{free}: {e}; the baseline of {device:?} {command:?} is kept in memory for this run, but after a restart its next output is shipped whole (further failures are logged at debug level until a write works)",
                    path.display()
                );
                false
            }
        }
    }

    /// Removes every file in the folder that is not one of `keep` (file names): baselines of
    /// commands no longer shipped `on_change`, and temp files a crash left.
    pub(crate) fn prune(&self, keep: &BTreeSet<String>) {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!(
                    "cannot list {}: {e}; baselines of commands no longer shipped on_change stay there",
                    self.dir.display()
                );
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if keep.contains(&*name.to_string_lossy()) {
                continue;
            }
            if let Err(e) = fs::remove_file(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The file name of a key: 16 hex digits of FNV-1a over `device NUL command`.
pub(crate) fn file_name(device: &str, command: &str) -> String {
    let mut key = Vec::with_capacity(device.len() + 1 + command.len());
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key.extend_from_slice(command.as_bytes());
    format!("{:016x}", fnv1a(&key))
}

fn warn_unusable(path: &Path, what: &str, device: &str, command: &str) {
    log::warn!(
        "change state file {} is not usable ({what}); it is ignored, so the next output of {device:?} {command:?} is shipped whole",
        path.display()
    );
}

fn encode(device: &str, command: &str, baseline: &Baseline, text: &str) -> io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::default());
    gz.write_all(text.as_bytes())?;
    let gzip = gz.finish()?;
    let mut out = Vec::with_capacity(gzip.len() + device.len() + command.len() + 80);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for s in [device, command] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&baseline.digest);
    out.extend_from_slice(&baseline.last_full_ms.to_le_bytes());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&(gzip.len() as u64).to_le_bytes());
    out.extend_from_slice(&gzip);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A sound file's content (the gzip not yet inflated).
struct Decoded<'a> {
    baseline: Baseline,
    text_len: u64,
    gzip: &'a [u8],
}

fn decode<'a>(bytes: &'a [u8], device: &str, command: &str) -> Result<Decoded<'a>, String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or("shorter than its header")?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32(body).to_le_bytes() != crc {
        return Err("bad CRC32".into());
    }
    let mut r = Reader(body);
    if r.take(8)? != MAGIC {
        return Err("not a change state file".into());
    }
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(format!("version {version}, this build reads {VERSION}"));
    }
    let file_device = r.string()?;
    let file_command = r.string()?;
    if file_device != device.as_bytes() || file_command != command.as_bytes() {
        return Err(format!(
            "it holds {:?} {:?}",
            String::from_utf8_lossy(file_device),
            String::from_utf8_lossy(file_command)
        ));
    }
    let digest: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
    let last_full_ms = r.u64()?;
    let text_len = r.u64()?;
    let gzip_len = usize::try_from(r.u64()?).map_err(|_| "gzip length out of range")?;
    let gzip = r.take(gzip_len)?;
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(Decoded {
        baseline: Baseline {
            digest,
            last_full_ms,
        },
        text_len,
        gzip,
    })
}

fn inflate(gzip: &[u8], text_len: u64) -> Result<String, String> {
    if text_len > MAX_TEXT {
        return Err(format!("a text of {text_len} bytes, over {MAX_TEXT}"));
    }
    let mut text = Vec::with_capacity(text_len as usize);
    GzDecoder::new(gzip)
        .take(text_len + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("bad gzip: {e}"))?;
    if text.len() as u64 != text_len {
        return Err(format!(
            "{} bytes inflated, {text_len} expected",
            text.len()
        ));
    }
    String::from_utf8(text).map_err(|_| "a text that is not UTF-8".into())
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn baseline(n: u8) -> Baseline {
        Baseline {
            digest: [n; 32],
            last_full_ms: 1_795_600_800_123 + n as u64,
        }
    }

    #[test]
    fn a_baseline_and_its_text_survive_a_reopen() {
        let dir = crate::test_support::temp_dir("change-store");
        let store = Store::open(dir.path());
        let text = "hostname router1\n".repeat(1000);
        assert!(store.save("core1", "show running-config", &baseline(7), &text));
        let again = Store::open(dir.path());
        assert_eq!(
            again.load("core1", "show running-config"),
            Some(baseline(7))
        );
        assert_eq!(
            again.text("core1", "show running-config", &[7; 32]),
            Ok(text.clone())
        );
        assert!(again.load("core1", "show version").is_none());
        let file = fs::metadata(again.path("core1", "show running-config")).unwrap();
        assert!(file.len() < 200, "compressed: {}", file.len());
        assert_eq!(file.permissions().mode() & 0o777, 0o640);
        let folder = fs::metadata(dir.path().join(FOLDER)).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o750);
    }

    #[test]
    fn a_text_for_another_digest_than_the_acknowledged_one_is_refused() {
        let dir = crate::test_support::temp_dir("change-store");
        let store = Store::open(dir.path());
        store.save("d", "c", &baseline(1), "a\n");
        let err = store.text("d", "c", &[2; 32]).unwrap_err();
        assert!(err.contains("another output"), "{err}");
    }

    #[test]
    fn damaged_files_are_ignored_and_named_in_the_reason() {
        let dir = crate::test_support::temp_dir("change-store");
        let store = Store::open(dir.path());
        store.save("d", "c", &baseline(1), "some text\n");
        let path = store.path("d", "c");
        let good = fs::read(&path).unwrap();
        // A flipped bit anywhere: the CRC catches it.
        for at in [0, 12, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            assert_eq!(store.load("d", "c"), None, "flipped at {at}");
            assert!(
                store
                    .text("d", "c", &[1; 32])
                    .unwrap_err()
                    .contains("bad CRC32")
            );
        }
        // Cut short, empty, or another key's file under this name (an FNV collision).
        for bad in [&good[..good.len() - 9], &[][..]] {
            fs::write(&path, bad).unwrap();
            assert_eq!(store.load("d", "c"), None);
        }
        fs::write(&path, &good).unwrap();
        assert_eq!(store.load("d", "c"), Some(baseline(1)));
        let err = decode(&good, "other", "c").err().unwrap();
        assert!(err.contains("\"d\" \"c\""), "{err}");
        // A sound header over gzip that is not: the text is refused, with the reason.
        let mut bad_gzip = encode("d", "c", &baseline(1), "x\n").unwrap();
        let n = bad_gzip.len();
        bad_gzip[n - 10] ^= 0xff;
        bad_gzip.truncate(n - 4);
        let crc = crc32(&bad_gzip);
        bad_gzip.extend_from_slice(&crc.to_le_bytes());
        fs::write(&path, &bad_gzip).unwrap();
        assert_eq!(store.load("d", "c"), Some(baseline(1)));
        let err = store.text("d", "c", &[1; 32]).unwrap_err();
        assert!(err.contains("gzip") || err.contains("inflated"), "{err}");
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_not_fatal() {
        let dir = crate::test_support::temp_dir("change-store");
        // state_dir is a file: the folder cannot be created, every write fails, nothing panics.
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, b"x").unwrap();
        let store = Store::open(&not_a_dir);
        assert!(!store.save("d", "c", &baseline(1), "text\n"));
        assert_eq!(store.load("d", "c"), None);
        assert!(store.text("d", "c", &[1; 32]).is_err());
        store.prune(&BTreeSet::new());
    }

    #[test]
    fn prune_removes_files_of_other_keys_and_leftover_temp_files() {
        let dir = crate::test_support::temp_dir("change-store");
        let store = Store::open(dir.path());
        store.save("d", "kept", &baseline(1), "a\n");
        store.save("d", "gone", &baseline(2), "b\n");
        fs::write(
            dir.path().join(FOLDER).join("0123456789abcdef.tmp"),
            b"half",
        )
        .unwrap();
        store.prune(&[file_name("d", "kept")].into_iter().collect());
        let names: Vec<String> = fs::read_dir(dir.path().join(FOLDER))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![file_name("d", "kept")]);
        assert_eq!(file_name("d", "kept").len(), 16);
        assert_ne!(file_name("ab", "c"), file_name("a", "bc"));
    }
}

//! Small state files that must survive a crash *and* a full card: `seq`, the spool's
//! `checkpoint`, `ship-cut`.
//!
//! The usual way to replace such a file is a temp file, fsync, rename, fsync of the folder:
//! a crash leaves the old or the new content, never half of one. But the temp file needs a
//! free block, and on a full SD card there is none: the agent could then neither reserve
//! record numbers nor note what upstream acknowledged, which is exactly what it needs to
//! free space. Each of these files holds a few bytes in a block that is already allocated,
//! so when the atomic replace fails for lack of space the content is written in place
//! instead (one write of under a sector, which storage does atomically in practice), and the
//! agent goes on. On a copy-on-write filesystem that needs blocks for any write, the in-place
//! write fails too and the caller gets the error.
//!
//! Files are created 0640 (see `FILE_MODE`) whatever the umask: they sit in `state_dir`
//! beside device output.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file the agent creates in `state_dir`: the owner reads and writes, its
/// group (operators running `rackhand status`) reads, others nothing.
pub(crate) const FILE_MODE: u32 = 0o640;
/// Mode of `state_dir` and the folders in it.
pub(crate) const DIR_MODE: u32 = 0o750;

/// Replaces `path` with `bytes` atomically: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether `error` means the filesystem has no room (or the user's quota is used up).
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT)
    )
}

/// [`write_atomically`], or, when that fails for lack of space and the file exists, the
/// content written over the old one in place (see the module doc). Short files only.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match write_atomically(path, bytes) {
        Ok(()) => Ok(()),
        Err(e) if is_out_of_space(&e) => {
            let _ = fs::remove_file(path.with_extension("tmp"));
            overwrite_in_place(path, bytes).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` at offset 0 of the existing `path`, cuts it to that length and syncs.
pub(crate) fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    f.sync_data()
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`, for messages.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// `12.3 MB`-style text for log lines about space.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_created_0640_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::test_support::temp_dir("durable");
        let path = dir.path().join("seq");
        // SAFETY: umask is process-wide; this test restores it at once.
        let old = unsafe { libc::umask(0) };
        let written = write_atomically(&path, b"7\n");
        unsafe { libc::umask(old) };
        written.unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE, "{mode:o}");
        overwrite_in_place(&path, b"12\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "12\n");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}

//! The spool's filesystem seam: every byte the spool reads or writes goes through
//! [`Filesystem`].
//!
//! A full card, a bad sector and a write torn by a power cut are the failures a Pi in a rack
//! actually has, and the spool's promise (every record reaches upstream or is counted lost)
//! must hold through each of them at every write and read point. Real disks cannot be made
//! to fail on cue, so the spool takes its filesystem as a trait, as Vector's disk buffer
//! does (`io.rs`): [`RealFs`] is the machine's, and [`super::memfs::MemFs`] is an in-memory
//! one that runs out of space, returns EIO, tears writes and forgets unsynced data when told
//! to, for the model and fault tests.
//!
//! Files are written at offsets the spool tracks itself (no `O_APPEND`), so a write that
//! failed half way can be cut back to where it began.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::durable_file::{self, FILE_MODE};

/// What the spool needs of a filesystem.
pub trait Filesystem: Send + Sync + Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for writing, creating it (empty) when it does not exist.
    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (files created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Replaces `path` with `data`, crash-safe; in place when there is no room for a temp
    /// file (see `crate::durable_file`).
    fn write_small(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Reads a whole small file.
    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Free bytes where `dir` lives, for messages; `None` when it cannot be told.
    fn free_bytes(&self, dir: &Path) -> Option<u64>;
}

/// A file open for writing at explicit offsets.
pub trait WriteFile: Send {
    /// Writes all of `data` at `offset`. On error some prefix of it may have been written.
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes what was written durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A file open for reading at explicit offsets (a reader and the writer may use the same
/// file at once).
pub trait ReadFile: Send {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The file's size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// Reads exactly `buf.len()` bytes at `offset` (an `UnexpectedEof` error when the file is
/// shorter).
pub fn read_exact_at(file: &dyn ReadFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    // Each turn reads at least one byte or ends.
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The machine's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(File);

impl WriteFile for RealFile {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl ReadFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Filesystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(false)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn write_small(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        durable_file::write_durably(path, data)
    }

    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn free_bytes(&self, dir: &Path) -> Option<u64> {
        durable_file::free_bytes(dir)
    }
}

//! An in-memory [`Filesystem`] that fails on cue: the spool's test double.
//!
//! It keeps, per file, what was written and what was made durable (synced), so a simulated
//! crash ([`MemFs::crash`]) keeps the durable bytes and any prefix of the rest, as a real
//! power cut would. Faults are injected per operation and path ([`Fault`]): ENOSPC, EIO, or a
//! write torn after some bytes; a capacity ([`MemFs::set_capacity`]) makes the "disk" full
//! the way a card fills up, so freeing space (an acknowledged segment deleted) lets writes
//! through again. Bytes can be flipped in place ([`MemFs::flip`]) for corruption tests.
//!
//! It is part of the library (not `cfg(test)`) because the integration tests and benches
//! use it; the agent never does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{Filesystem, ReadFile, WriteFile};

/// An operation a [`Fault`] can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Opening a file for writing (creating it or not).
    Open,
    Write,
    Sync,
    SetLen,
    Read,
    OpenRead,
    List,
    Remove,
    Rename,
    SyncDir,
    /// [`Filesystem::write_small`] (checkpoint, ledger slot): both the atomic and the in-place
    /// way fail.
    WriteSmall,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// ENOSPC; a write stores nothing.
    NoSpace,
    /// EIO; a write stores nothing.
    Io,
    /// A write stores this many bytes (at most), then fails with EIO.
    Torn(usize),
}

/// One injected failure: the first `skip` matching calls pass, the next `times` fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    /// Matches paths containing this text; `None`: every path.
    pub path: Option<String>,
    pub skip: u64,
    pub times: u64,
    pub kind: FaultKind,
}

impl Fault {
    /// Every `op` on paths containing `path` fails with `kind` from now on.
    pub fn always(op: Op, path: Option<&str>, kind: FaultKind) -> Fault {
        Fault {
            op,
            path: path.map(str::to_string),
            skip: 0,
            times: u64::MAX,
            kind,
        }
    }

    /// The `n`-th (0-based) matching call fails, once.
    pub fn nth(op: Op, path: Option<&str>, n: u64, kind: FaultKind) -> Fault {
        Fault {
            op,
            path: path.map(str::to_string),
            skip: n,
            times: 1,
            kind,
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    files: BTreeMap<PathBuf, Arc<Mutex<Node>>>,
    dirs: BTreeSet<PathBuf>,
    capacity: Option<u64>,
    faults: Vec<Fault>,
    /// Calls per operation, for tests that place a fault at "every point".
    calls: BTreeMap<String, u64>,
}

impl Inner {
    /// `path` holds `data`, synced (a new node: readers of the old one keep theirs).
    fn put_durably(&mut self, path: &Path, data: &[u8]) {
        if let Some(dir) = path.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
        self.files.insert(
            path.to_path_buf(),
            Arc::new(Mutex::new(Node {
                data: data.to_vec(),
                durable: data.to_vec(),
            })),
        );
    }

    fn used(&self) -> u64 {
        self.files.values().map(|n| lock(n).data.len() as u64).sum()
    }

    /// The fault that fires for this call, if any (and counts the call).
    fn fault(&mut self, op: Op, path: &Path) -> Option<FaultKind> {
        *self.calls.entry(format!("{op:?}")).or_default() += 1;
        let text = path.to_string_lossy();
        for f in &mut self.faults {
            if f.op != op || f.path.as_deref().is_some_and(|p| !text.contains(p)) {
                continue;
            }
            if f.skip > 0 {
                f.skip -= 1;
                return None;
            }
            if f.times > 0 {
                f.times -= 1;
                return Some(f.kind);
            }
        }
        None
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        FaultKind::Io | FaultKind::Torn(_) => io::Error::from_raw_os_error(libc::EIO),
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

/// The in-memory filesystem; clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    inner: Arc<Mutex<Inner>>,
}

impl MemFs {
    pub fn new() -> MemFs {
        MemFs::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub fn inject(&self, fault: Fault) {
        self.inner().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.inner().faults.clear();
    }

    /// Total bytes all files may hold; `None`: unlimited.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.inner().capacity = bytes;
    }

    /// Bytes all files hold now.
    pub fn used(&self) -> u64 {
        self.inner().used()
    }

    /// How often `op` was called so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.inner()
            .calls
            .get(&format!("{op:?}"))
            .copied()
            .unwrap_or(0)
    }

    /// A power cut: every file keeps its durable bytes and, of what was written after its
    /// last sync, the prefix `keep(path, unsynced)` says (clamped).
    pub fn crash(&self, keep: &mut dyn FnMut(&Path, usize) -> usize) {
        let inner = self.inner();
        for (path, node) in &inner.files {
            let mut n = lock(node);
            let Node { data, durable } = &mut *n;
            if data.starts_with(durable) {
                let unsynced = data.len() - durable.len();
                let k = keep(path, unsynced).min(unsynced);
                data.truncate(durable.len() + k);
            } else {
                *data = durable.clone();
            }
            *durable = data.clone();
        }
    }

    /// Flips the bits of `mask` in the byte at `offset` of `path` (durably).
    pub fn flip(&self, path: &Path, offset: u64, mask: u8) {
        let inner = self.inner();
        let node = inner.files.get(path).expect("flip: no such file");
        let mut n = lock(node);
        let i = offset as usize;
        n.data[i] ^= mask;
        if i < n.durable.len() {
            n.durable[i] ^= mask;
        }
    }

    /// A file's content now.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let inner = self.inner();
        inner.files.get(path).map(|n| lock(n).data.clone())
    }

    /// Writes a file durably, bypassing faults and capacity (test setup).
    pub fn put(&self, path: &Path, data: &[u8]) {
        self.inner().put_durably(path, data);
    }

    /// The names of the files in `dir`, sorted.
    pub fn names(&self, dir: &Path) -> Vec<String> {
        self.list(dir).unwrap_or_default()
    }
}

struct MemFile {
    fs: MemFs,
    path: PathBuf,
    node: Arc<Mutex<Node>>,
}

impl WriteFile for MemFile {
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut inner = self.fs.inner();
        let fault = inner.fault(Op::Write, &self.path);
        let used = inner.used();
        let mut n = lock(&self.node);
        let offset = offset as usize;
        let end = offset + data.len();
        let growth = end.saturating_sub(n.data.len()) as u64;
        let room = inner.capacity.map_or(u64::MAX, |c| c.saturating_sub(used));
        let (keep, result) = match fault {
            Some(FaultKind::Torn(k)) => (k.min(data.len()), Err(error(FaultKind::Torn(k)))),
            Some(kind) => (0, Err(error(kind))),
            None if growth > room => {
                // The card fills up half way through the write, as a real one does.
                let fits = (n.data.len().saturating_sub(offset) as u64 + room) as usize;
                (fits.min(data.len()), Err(error(FaultKind::NoSpace)))
            }
            None => (data.len(), Ok(())),
        };
        if keep > 0 {
            if n.data.len() < offset + keep {
                n.data.resize(offset + keep, 0);
            }
            n.data[offset..offset + keep].copy_from_slice(&data[..keep]);
        }
        result
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(kind) = self.fs.inner().fault(Op::Sync, &self.path) {
            return Err(error(kind));
        }
        let mut n = lock(&self.node);
        n.durable = n.data.clone();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut inner = self.fs.inner();
        if let Some(kind) = inner.fault(Op::SetLen, &self.path) {
            return Err(error(kind));
        }
        let used = inner.used();
        let mut n = lock(&self.node);
        let growth = (len as usize).saturating_sub(n.data.len()) as u64;
        if inner.capacity.is_some_and(|c| used + growth > c) {
            return Err(error(FaultKind::NoSpace));
        }
        n.data.resize(len as usize, 0);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.node).data.len() as u64)
    }
}

impl ReadFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(kind) = self.fs.inner().fault(Op::Read, &self.path) {
            return Err(error(kind));
        }
        let n = lock(&self.node);
        let start = (offset as usize).min(n.data.len());
        let len = buf.len().min(n.data.len() - start);
        buf[..len].copy_from_slice(&n.data[start..start + len]);
        Ok(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.node).data.len() as u64)
    }
}

impl Filesystem for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.inner();
        for d in dir.ancestors() {
            inner.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::List, dir) {
            return Err(error(kind));
        }
        if !inner.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(inner
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::Open, path) {
            return Err(error(kind));
        }
        let node = match inner.files.get(path) {
            Some(node) => Arc::clone(node),
            None if create => {
                let node = Arc::new(Mutex::new(Node::default()));
                inner.files.insert(path.to_path_buf(), Arc::clone(&node));
                node
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(MemFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            node,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::OpenRead, path) {
            return Err(error(kind));
        }
        let node = inner
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            node,
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::Remove, path) {
            return Err(error(kind));
        }
        inner
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::Rename, from) {
            return Err(error(kind));
        }
        let node = inner.files.remove(from).ok_or_else(|| not_found(from))?;
        inner.files.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        match self.inner().fault(Op::SyncDir, dir) {
            Some(kind) => Err(error(kind)),
            None => Ok(()),
        }
    }

    fn write_small(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::WriteSmall, path) {
            return Err(error(kind));
        }
        let used = inner.used();
        let existing = inner.files.get(path).cloned();
        // The atomic way needs room for the whole temp file; in place needs room only to
        // grow the existing one.
        let room = inner.capacity.map_or(u64::MAX, |c| c.saturating_sub(used));
        let old_len = existing.as_ref().map_or(0, |n| lock(n).data.len() as u64);
        let fits = data.len() as u64 <= room
            || (existing.is_some() && (data.len() as u64).saturating_sub(old_len) <= room);
        if !fits {
            return Err(error(FaultKind::NoSpace));
        }
        inner.put_durably(path, data);
        Ok(())
    }

    fn read_small(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut inner = self.inner();
        if let Some(kind) = inner.fault(Op::OpenRead, path) {
            return Err(error(kind));
        }
        inner
            .files
            .get(path)
            .map(|n| lock(n).data.clone())
            .ok_or_else(|| not_found(path))
    }

    fn free_bytes(&self, _dir: &Path) -> Option<u64> {
        let inner = self.inner();
        inner.capacity.map(|c| c.saturating_sub(inner.used()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_takes_part_of_a_write_and_room_comes_back_when_a_file_goes() {
        let fs = MemFs::new();
        let dir = Path::new("/s");
        fs.create_dir_all(dir).unwrap();
        fs.set_capacity(Some(10));
        let mut a = fs.open_write(&dir.join("a"), true).unwrap();
        let e = a.write_at(b"0123456789abc", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"0123456789");
        fs.remove(&dir.join("a")).unwrap();
        let mut b = fs.open_write(&dir.join("b"), true).unwrap();
        b.write_at(b"xyz", 0).unwrap();
        assert_eq!(fs.free_bytes(dir), Some(7));
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_a_prefix_of_the_rest() {
        let fs = MemFs::new();
        let path = Path::new("/s/f");
        fs.create_dir_all(Path::new("/s")).unwrap();
        let mut f = fs.open_write(path, true).unwrap();
        f.write_at(b"abc", 0).unwrap();
        f.sync().unwrap();
        f.write_at(b"defg", 3).unwrap();
        fs.crash(&mut |_, unsynced| {
            assert_eq!(unsynced, 4);
            1
        });
        assert_eq!(fs.read(path).unwrap(), b"abcd");
    }

    #[test]
    fn faults_fire_after_their_skip_for_their_count() {
        let fs = MemFs::new();
        let path = Path::new("/s/f");
        fs.create_dir_all(Path::new("/s")).unwrap();
        fs.inject(Fault::nth(Op::Write, Some("/s/f"), 1, FaultKind::Torn(2)));
        let mut f = fs.open_write(path, true).unwrap();
        f.write_at(b"ab", 0).unwrap();
        assert!(f.write_at(b"cdef", 2).is_err());
        f.write_at(b"gh", 4).unwrap();
        assert_eq!(fs.read(path).unwrap(), b"abcdgh");
    }
}

//! Streaming reads of the spool: replay after a restart and the batcher's source.
//!
//! A spool may hold hundreds of MiB while the uplink is down, and the Pi has little memory,
//! so a read holds one record at a time behind a buffered reader. The reader owns a snapshot
//! of the segment list (paths and lengths at the time of the call) and does not borrow the
//! spool: appends can go on meanwhile, and a segment deleted under it (acknowledged or
//! dropped) is simply passed over.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use super::SpoolError;
use super::frame::{HEADER, Header};

/// One segment as the reader sees it: read up to `end`, no further.
#[derive(Debug, Clone)]
pub(crate) struct Extent {
    pub path: PathBuf,
    pub end: u64,
}

/// Records with `seq >= from`, in seq order; see [`super::Spool::read_from`].
pub struct Reader {
    pending: VecDeque<Extent>,
    current: Option<(BufReader<File>, Extent, u64)>,
    from: u64,
    max_record: u32,
}

impl Reader {
    pub(crate) fn new(extents: Vec<Extent>, from: u64, max_record: u32) -> Reader {
        Reader {
            pending: extents.into(),
            current: None,
            from,
            max_record,
        }
    }

    fn corrupt(
        &mut self,
        path: PathBuf,
        offset: u64,
        detail: String,
    ) -> Option<Result<(u64, Vec<u8>), SpoolError>> {
        // The rest of this segment cannot be trusted; the next open repairs it. Go on with
        // the next segment so one bad sector does not stall the whole replay.
        self.current = None;
        Some(Err(SpoolError::Corrupt {
            path,
            offset,
            detail,
        }))
    }
}

impl Iterator for Reader {
    type Item = Result<(u64, Vec<u8>), SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Each turn skips one record or opens one segment: bounded by the snapshot.
        loop {
            let Some((file, extent, pos)) = self.current.as_mut() else {
                let extent = self.pending.pop_front()?;
                match File::open(&extent.path) {
                    Ok(f) => {
                        self.current = Some((BufReader::with_capacity(64 * 1024, f), extent, 0))
                    }
                    // Acknowledged or dropped since the snapshot: its records are not wanted.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Some(Err(SpoolError::Io {
                            path: extent.path,
                            error,
                        }));
                    }
                }
                continue;
            };
            if *pos + HEADER as u64 > extent.end {
                self.current = None;
                continue;
            }
            let at = *pos;
            let path = extent.path.clone();
            let mut head = [0u8; HEADER];
            if let Err(error) = file.read_exact(&mut head) {
                self.current = None;
                return Some(Err(SpoolError::Io { path, error }));
            }
            let h = Header::parse(&head);
            if h.len > self.max_record || at + h.frame_len() > extent.end {
                let detail = format!("frame length {} does not fit", h.len);
                return self.corrupt(path, at, detail);
            }
            *pos += h.frame_len();
            if h.seq < self.from {
                if let Err(error) = file.seek_relative(i64::from(h.len)) {
                    self.current = None;
                    return Some(Err(SpoolError::Io { path, error }));
                }
                continue;
            }
            let mut payload = vec![0u8; h.len as usize];
            if let Err(error) = file.read_exact(&mut payload) {
                self.current = None;
                return Some(Err(SpoolError::Io { path, error }));
            }
            if !h.verifies(&payload) {
                return self.corrupt(path, at, format!("checksum mismatch on seq {}", h.seq));
            }
            return Some(Ok((h.seq, payload)));
        }
    }
}

/// For the segment the acknowledged position falls into: how many of its records are
/// acknowledged, and the first one that is not. Reads headers only.
pub(crate) fn count_acked(extent: &Extent, acked: u64) -> io::Result<(u64, Option<u64>)> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(&extent.path)?);
    let mut pos = 0u64;
    let mut count = 0u64;
    while pos + HEADER as u64 <= extent.end {
        let mut head = [0u8; HEADER];
        file.read_exact(&mut head)?;
        let h = Header::parse(&head);
        if h.seq > acked {
            return Ok((count, Some(h.seq)));
        }
        count += 1;
        pos += h.frame_len();
        file.seek_relative(i64::from(h.len))?;
    }
    Ok((count, None))
}

/// Every record's seq and frame length in a segment, in order. Reads headers only.
pub(crate) fn frame_seqs(extent: &Extent) -> io::Result<Vec<(u64, u64)>> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(&extent.path)?);
    let mut pos = 0u64;
    let mut out = Vec::new();
    // Bounded by the extent: each turn moves past one frame.
    while pos + HEADER as u64 <= extent.end {
        let mut head = [0u8; HEADER];
        file.read_exact(&mut head)?;
        let h = Header::parse(&head);
        out.push((h.seq, h.frame_len()));
        pos += h.frame_len();
        file.seek_relative(i64::from(h.len))?;
    }
    Ok(out)
}

//! The agent's spool segments as files: where each frame lies, and bytes flipped in them, as
//! a failing SD card flips them. The frame layout comes from the library's `spool::frame`
//! (`len u32 LE | crc32c u32 LE | seq u64 LE | payload`, a seq-0 footer closing a sealed
//! segment); only whole frames whose checksum verifies are listed, so a segment the agent is
//! still writing is read up to its last whole frame.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rackhand::spool::frame::{FOOTER, Footer, HEADER, Header};

/// One frame in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    pub offset: u64,
    pub len: u32,
    pub seq: u64,
}

/// One `<first seq>.seg` file as it is on disk now.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub first_seq: u64,
    /// It ends with a footer: the agent no longer writes to it.
    pub sealed: bool,
    pub frames: Vec<FrameAt>,
    pub bytes: u64,
}

/// The segments in `spool_dir`, by first seq. A segment deleted while it is read is left out.
pub fn segments(spool_dir: &Path) -> Vec<SegmentFile> {
    let Ok(entries) = std::fs::read_dir(spool_dir) else {
        return Vec::new();
    };
    let mut out: Vec<SegmentFile> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let first_seq = name.strip_suffix(".seg")?.parse().ok()?;
            let bytes = std::fs::read(e.path()).ok()?;
            Some(parse(e.path(), first_seq, &bytes))
        })
        .collect();
    out.sort_by_key(|s| s.first_seq);
    out
}

fn parse(path: PathBuf, first_seq: u64, bytes: &[u8]) -> SegmentFile {
    let mut frames = Vec::new();
    let mut sealed = false;
    let mut pos = 0usize;
    // Each turn moves past one whole frame or ends.
    while pos + HEADER <= bytes.len() {
        let head: &[u8; HEADER] = bytes[pos..pos + HEADER].try_into().expect("HEADER bytes");
        let h = Header::parse(head);
        if h.seq == 0 {
            sealed = pos + FOOTER == bytes.len() && Footer::decode(&bytes[pos..]).is_some();
            break;
        }
        let end = pos + HEADER + h.len as usize;
        if end > bytes.len() || !h.verifies(&bytes[pos + HEADER..end]) {
            break;
        }
        frames.push(FrameAt {
            offset: pos as u64,
            len: h.len,
            seq: h.seq,
        });
        pos = end;
    }
    SegmentFile {
        path,
        first_seq,
        sealed,
        frames,
        bytes: bytes.len() as u64,
    }
}

/// Where in a frame a byte is flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlipAt {
    /// A byte in the middle of the payload: only the checksum tells.
    Payload,
    /// The high byte of the length field: the frame seems to run far past its end, so the
    /// reader must find the next frame by scanning.
    Length,
}

/// Flips one bit of `frame` in `seg` (in place, as a card would); returns the byte offset.
pub fn flip_frame(seg: &SegmentFile, frame: &FrameAt, at: FlipAt) -> u64 {
    let offset = match at {
        FlipAt::Payload => frame.offset + HEADER as u64 + u64::from(frame.len) / 2,
        FlipAt::Length => frame.offset + 3,
    };
    flip_byte(&seg.path, offset, 0x10);
    offset
}

/// XORs the byte at `offset` of `path` with `mask`, and syncs.
pub fn flip_byte(path: &Path, offset: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} to flip a byte: {e}", path.display()));
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset)
        .unwrap_or_else(|e| panic!("cannot read byte {offset} of {}: {e}", path.display()));
    b[0] ^= mask;
    file.write_all_at(&b, offset)
        .unwrap_or_else(|e| panic!("cannot write byte {offset} of {}: {e}", path.display()));
    file.sync_data().expect("sync the flipped byte");
}

/// Like [`flip_byte`], but `Ok(false)` when the file is gone (deleted by the agent since it
/// was listed: its records were acknowledged or dropped).
pub fn flip_byte_if_there(path: &Path, offset: u64, mask: u8) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    let mut b = [0u8];
    if file.read_exact_at(&mut b, offset).is_err() {
        return false;
    }
    b[0] ^= mask;
    file.write_all_at(&b, offset)
        .expect("write the flipped byte");
    file.sync_data().expect("sync the flipped byte");
    true
}

/// The size of a file, 0 when it is gone.
pub fn file_len(path: &Path) -> u64 {
    File::open(path)
        .and_then(|f| f.metadata())
        .map_or(0, |m| m.len())
}

//! What recovery at open does with one segment's bytes: find the good frames, the corrupt
//! spans between them, and the tail that is not a frame.
//!
//! A power cut on an SD card leaves known kinds of damage (Vector's disk_v2 lists the same):
//! a frame written halfway (torn tail), blocks the card never wrote (zero-filled tail),
//! garbage after the last good frame, and rarely a flipped bit inside older data. Each is
//! handled here without a human: a bad tail is cut, a bad frame in the middle is skipped by
//! scanning forward for the next frame whose checksum verifies. The scan is bounded (by the
//! segment's size and a checksum budget) so a segment full of garbage cannot stall the start.

use super::frame::{HEADER, Header};

/// Checksum work allowed per segment while looking for the next good frame after a bad one.
/// Past it the rest of the segment is treated as a bad tail: start-up time stays bounded
/// even when a segment is garbage from end to end.
const RESYNC_CRC_BUDGET: u64 = 64 * 1024 * 1024;

/// A good frame inside a segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub offset: usize,
    pub len: usize,
    pub seq: u64,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub frames: Vec<FrameRef>,
    /// Corrupt spans in the middle (start, end): each held at least one frame.
    pub spans: Vec<(usize, usize)>,
    /// Where the last good frame ends; everything after it is a bad tail.
    pub good_end: usize,
}

impl Scan {
    pub fn last_seq(&self) -> Option<u64> {
        self.frames.last().map(|f| f.seq)
    }
}

/// The frame at `pos` if it is whole, verifies, and continues the sequence above `floor`.
fn frame_at(
    buf: &[u8],
    pos: usize,
    floor: u64,
    max_record: u32,
    crc_spent: &mut u64,
) -> Option<FrameRef> {
    let head: &[u8; HEADER] = buf.get(pos..pos + HEADER)?.try_into().ok()?;
    let h = Header::parse(head);
    if h.len > max_record || h.seq <= floor {
        return None;
    }
    let end = pos + HEADER + h.len as usize;
    let payload = buf.get(pos + HEADER..end)?;
    *crc_spent += payload.len() as u64 + 8;
    h.verifies(payload).then_some(FrameRef {
        offset: pos,
        len: end - pos,
        seq: h.seq,
    })
}

/// Walks `buf` (one segment) from the start. `floor` is the highest seq of the segments
/// before it: a frame at or below it would break the strictly increasing order replay
/// relies on, so it counts as corrupt.
pub fn scan(buf: &[u8], floor: u64, max_record: u32) -> Scan {
    let mut out = Scan::default();
    let mut last = floor;
    let mut pos = 0usize;
    let mut crc_spent = 0u64;
    // Each turn moves `pos` forward by a frame or to the next good frame, or ends.
    while pos < buf.len() {
        if let Some(f) = frame_at(buf, pos, last, max_record, &mut crc_spent) {
            out.frames.push(f);
            last = f.seq;
            pos += f.len;
            out.good_end = pos;
            continue;
        }
        let next = (pos + 1..buf.len()).find_map(|p| {
            if crc_spent > RESYNC_CRC_BUDGET {
                return Some(None);
            }
            frame_at(buf, p, last, max_record, &mut crc_spent).map(Some)
        });
        match next {
            Some(Some(f)) => {
                out.spans.push((pos, f.offset));
                pos = f.offset;
            }
            // Nothing good follows (or the budget ran out): the rest is a bad tail.
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::frame::header;
    use super::*;

    fn frames(seqs: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &s in seqs {
            let payload = format!("{{\"seq\":{s}}}");
            out.extend_from_slice(&header(s, payload.as_bytes()));
            out.extend_from_slice(payload.as_bytes());
        }
        out
    }

    #[test]
    fn a_clean_segment_has_every_frame_and_no_tail() {
        let buf = frames(&[1, 2, 3]);
        let s = scan(&buf, 0, 1024);
        assert_eq!(
            s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(s.good_end, buf.len());
        assert!(s.spans.is_empty());
    }

    #[test]
    fn a_torn_frame_at_the_end_is_tail() {
        let whole = frames(&[1, 2]);
        let mut buf = whole.clone();
        buf.extend_from_slice(&frames(&[3])[..10]);
        let s = scan(&buf, 0, 1024);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.good_end, whole.len());
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_a_span_and_the_rest_survives() {
        let mut buf = frames(&[1, 2, 3, 4]);
        let second = frames(&[1]).len();
        buf[second + HEADER + 2] ^= 0x10;
        let s = scan(&buf, 0, 1024);
        assert_eq!(
            s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(s.spans.len(), 1);
        assert_eq!(s.good_end, buf.len());
    }

    #[test]
    fn frames_at_or_below_the_floor_are_not_replayed() {
        let buf = frames(&[5, 6]);
        let s = scan(&buf, 5, 1024);
        assert_eq!(s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [6]);
        assert_eq!(s.spans.len(), 1);
    }

    #[test]
    fn an_impossible_length_is_corrupt() {
        let mut buf = frames(&[1, 2]);
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let s = scan(&buf, 0, 1024);
        assert_eq!(s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [2]);
    }
}

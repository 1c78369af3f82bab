//! Reading one segment frame by frame, and finding the next good frame after a bad one.
//!
//! A power cut on an SD card leaves known kinds of damage (Vector's disk_v2 lists the same):
//! a frame written halfway (torn tail), blocks the card never wrote (zero-filled tail),
//! garbage after the last good frame, and rarely a flipped bit inside older data. One
//! [`Cursor`] serves both places that meet them: opening the spool (the unsealed tail
//! segment) and reading records to ship (every segment). A bad frame costs itself, not its
//! neighbours: the cursor scans forward for the next frame whose checksum verifies and
//! reports the span in between as [`Damage`]. The scan is bounded by a checksum budget, so
//! a segment of garbage cannot stall the agent, and memory stays at one read window plus
//! one record: a damaged length field never makes it allocate what the field claims.
//!
//! Limits come from the frame format ([`MAX_PAYLOAD`]) and the file's real length, never
//! from the current config: records spooled under an older config are read back whole.

use std::io;

use super::frame::{FOOTER, Footer, HEADER, Header, MAX_PAYLOAD};
use super::io::{ReadFile, read_exact_at};

/// Checksum work allowed per damaged span while looking for the next good frame. Past it
/// the rest of the segment counts as damaged: the time a span costs stays bounded even when
/// a segment is garbage from end to end.
const RESYNC_CRC_BUDGET: u64 = 64 * 1024 * 1024;
/// A frame found while resynchronising (or a header read inside damage) must not claim a seq
/// further than this above the last good one: seqs jump after a restart, by far less, and a
/// flipped high bit in a seq field does not pass.
pub(crate) const PLAUSIBLE_JUMP: u64 = 1 << 24;
/// Payloads up to this size are read and then verified; larger ones are verified in chunks
/// first, so a length field that was damaged into a huge value costs no memory.
const VERIFY_IN_MEMORY: u64 = 16 * 1024 * 1024;
/// The read window.
const WINDOW: usize = 64 * 1024;

/// What the cursor found next.
#[derive(Debug)]
pub(crate) enum Item {
    Record {
        seq: u64,
        payload: Vec<u8>,
    },
    /// The segment's footer: it is sealed and nothing follows.
    Footer(Footer),
    Damage(Damage),
    /// Nothing more up to the end the cursor was given.
    End,
}

/// Bytes that are not good frames, between two good ones (or up to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The byte span `[from, to)`.
    pub(crate) from: u64,
    pub(crate) to: u64,
    /// The seq of the last good frame before the span (or the floor the cursor began with).
    pub(crate) after_seq: u64,
    /// The seq of the good record at `to`; `None` when no record follows in this segment
    /// (the span runs to the end, or to the footer).
    pub(crate) next_seq: Option<u64>,
    /// When the frame headers inside the span still chain from `from` to exactly `to` (only
    /// payload bytes were damaged), the seq and frame length of each: the lost records are
    /// known exactly.
    pub(crate) frames: Option<Vec<(u64, u64)>>,
    /// The seq the header at `from` claims, when it is a plausible successor of `after_seq`
    /// (a torn last frame still names its record).
    pub(crate) head_seq: Option<u64>,
}

impl Damage {
    pub fn bytes(&self) -> u64 {
        self.to - self.from
    }
}

/// Sequential reads of one segment file.
pub(crate) struct Cursor {
    file: Box<dyn ReadFile>,
    /// Read no further than this (the segment's durable length).
    pub(crate) end: u64,
    pub(crate) pos: u64,
    /// Seqs must be above this: the last good frame's, or the floor given at the start.
    pub(crate) last_seq: u64,
    /// Seqs must be below this (the next segment's first seq), when known.
    upper: Option<u64>,
    buf: Vec<u8>,
    buf_at: u64,
}

impl Cursor {
    pub fn new(file: Box<dyn ReadFile>, end: u64, floor: u64, upper: Option<u64>) -> Cursor {
        Cursor {
            file,
            end,
            pos: 0,
            last_seq: floor,
            upper,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    pub fn set_upper(&mut self, upper: Option<u64>) {
        self.upper = upper;
    }

    /// `n` bytes at `off` (which must lie below `end`), through the read window.
    fn bytes_at(&mut self, off: u64, n: usize) -> io::Result<&[u8]> {
        let have = off >= self.buf_at && off + n as u64 <= self.buf_at + self.buf.len() as u64;
        if !have {
            let len = (self.end - off).min(WINDOW.max(n) as u64) as usize;
            self.buf.resize(len, 0);
            if let Err(e) = read_exact_at(&*self.file, &mut self.buf, off) {
                // Never serve a window that was not read.
                self.buf.clear();
                return Err(e);
            }
            self.buf_at = off;
        }
        let start = (off - self.buf_at) as usize;
        Ok(&self.buf[start..start + n])
    }

    fn header_at(&mut self, off: u64) -> io::Result<Header> {
        let bytes: [u8; HEADER] = self
            .bytes_at(off, HEADER)?
            .try_into()
            .expect("HEADER bytes");
        Ok(Header::parse(&bytes))
    }

    /// The footer at `off` if one is there and it closes the segment exactly.
    fn footer_at(&mut self, off: u64) -> io::Result<Option<Footer>> {
        if off + FOOTER as u64 != self.end {
            return Ok(None);
        }
        Ok(Footer::decode(self.bytes_at(off, FOOTER)?))
    }

    /// The payload of `h` at `off` if it verifies. `spent` counts the checksum work.
    fn verified_payload(
        &mut self,
        h: &Header,
        off: u64,
        spent: &mut u64,
    ) -> io::Result<Option<Vec<u8>>> {
        let start = off + HEADER as u64;
        let len = u64::from(h.len);
        *spent += len + 8;
        if len > VERIFY_IN_MEMORY {
            let mut crc = crc32c::crc32c(&h.seq.to_le_bytes());
            let mut chunk = vec![0u8; WINDOW];
            let mut done = 0u64;
            // Bounded by `len`: each turn reads one chunk.
            while done < len {
                let n = (len - done).min(WINDOW as u64) as usize;
                read_exact_at(&*self.file, &mut chunk[..n], start + done)?;
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                done += n as u64;
            }
            if crc != h.crc {
                return Ok(None);
            }
        }
        let mut payload = vec![0u8; len as usize];
        if len <= WINDOW as u64 {
            payload.copy_from_slice(self.bytes_at(start, len as usize)?);
        } else {
            read_exact_at(&*self.file, &mut payload, start)?;
        }
        Ok(h.verifies(&payload).then_some(payload))
    }

    /// Whether a frame with header `h` at `off` may be a record that follows `last_seq`.
    fn plausible(&self, h: &Header, off: u64, resync: bool) -> bool {
        h.len <= MAX_PAYLOAD
            && off + HEADER as u64 + u64::from(h.len) <= self.end
            && h.seq > self.last_seq
            && self.upper.is_none_or(|u| h.seq < u)
            && (!resync || h.seq - self.last_seq <= PLAUSIBLE_JUMP)
    }

    /// The next item; I/O errors are the caller's to judge (an unreadable segment).
    pub fn next(&mut self) -> io::Result<Item> {
        if self.pos >= self.end {
            return Ok(Item::End);
        }
        let at = self.pos;
        if self.end - at >= HEADER as u64 {
            let h = self.header_at(at)?;
            if h.seq == 0 {
                if let Some(footer) = self.footer_at(at)? {
                    self.pos = self.end;
                    return Ok(Item::Footer(footer));
                }
            } else if self.plausible(&h, at, false) {
                let mut spent = 0;
                if let Some(payload) = self.verified_payload(&h, at, &mut spent)? {
                    self.pos = at + h.frame_len();
                    self.last_seq = h.seq;
                    return Ok(Item::Record {
                        seq: h.seq,
                        payload,
                    });
                }
            }
        }
        let head_seq = if self.end - at >= HEADER as u64 {
            let h = self.header_at(at)?;
            (h.seq > self.last_seq && h.seq - self.last_seq <= PLAUSIBLE_JUMP).then_some(h.seq)
        } else {
            None
        };
        let (to, next_seq) = self.resync(at + 1)?;
        let frames = self.walk(at, to, next_seq)?;
        self.pos = to;
        Ok(Item::Damage(Damage {
            from: at,
            to,
            after_seq: self.last_seq,
            next_seq,
            frames,
            head_seq,
        }))
    }

    /// The offset of the next good frame (or footer) at or after `from`, and its seq (`None`
    /// for a footer); `(end, None)` when there is none or the budget ran out.
    fn resync(&mut self, from: u64) -> io::Result<(u64, Option<u64>)> {
        let mut spent = 0u64;
        let mut p = from;
        // Each turn moves one byte forward; bounded by `end` and the checksum budget.
        while p + HEADER as u64 <= self.end && spent <= RESYNC_CRC_BUDGET {
            let h = self.header_at(p)?;
            if h.seq == 0 {
                if self.footer_at(p)?.is_some() {
                    return Ok((p, None));
                }
            } else if self.plausible(&h, p, true)
                && self.verified_payload(&h, p, &mut spent)?.is_some()
            {
                return Ok((p, Some(h.seq)));
            }
            p += 1;
        }
        Ok((self.end, None))
    }

    /// The frames whose headers chain from `from` to exactly `to`, if they do (see
    /// [`Damage::frames`]); their seqs must lie between the good frames around the span.
    fn walk(
        &mut self,
        from: u64,
        to: u64,
        next_seq: Option<u64>,
    ) -> io::Result<Option<Vec<(u64, u64)>>> {
        let upper = next_seq.or(self.upper);
        let mut out = Vec::new();
        let mut q = from;
        let mut last = self.last_seq;
        // Each turn moves past one frame header chain link; bounded by `to`.
        while q + HEADER as u64 <= to {
            let h = self.header_at(q)?;
            let fits = h.len <= MAX_PAYLOAD && q + h.frame_len() <= to;
            if !fits || h.seq <= last || upper.is_some_and(|u| h.seq >= u) {
                return Ok(None);
            }
            out.push((h.seq, h.frame_len()));
            last = h.seq;
            q += h.frame_len();
        }
        Ok((q == to && !out.is_empty()).then_some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::frame::header;
    use super::super::io::Filesystem;
    use super::super::memfs::MemFs;
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

    fn cursor(bytes: &[u8], floor: u64) -> Cursor {
        let fs = MemFs::new();
        let path = Path::new("/seg");
        fs.put(path, bytes);
        Cursor::new(fs.open_read(path).unwrap(), bytes.len() as u64, floor, None)
    }

    /// Everything the cursor yields: seqs of records, and damage as (from, to, lost seqs).
    fn scan(bytes: &[u8], floor: u64) -> (Vec<u64>, Vec<Damage>) {
        let mut c = cursor(bytes, floor);
        let (mut seqs, mut damage) = (Vec::new(), Vec::new());
        // Bounded: every item moves the cursor forward.
        for _ in 0..10_000 {
            match c.next().unwrap() {
                Item::Record { seq, .. } => seqs.push(seq),
                Item::Damage(d) => damage.push(d),
                Item::Footer(_) | Item::End => break,
            }
        }
        (seqs, damage)
    }

    #[test]
    fn a_clean_segment_has_every_frame_and_no_damage() {
        let (seqs, damage) = scan(&frames(&[1, 2, 3]), 0);
        assert_eq!(seqs, [1, 2, 3]);
        assert!(damage.is_empty());
    }

    #[test]
    fn a_torn_frame_at_the_end_is_damage_up_to_the_end() {
        let whole = frames(&[1, 2]);
        let mut buf = whole.clone();
        buf.extend_from_slice(&frames(&[3])[..10]);
        let (seqs, damage) = scan(&buf, 0);
        assert_eq!(seqs, [1, 2]);
        assert_eq!(damage.len(), 1);
        assert_eq!(
            (damage[0].from, damage[0].to),
            (whole.len() as u64, buf.len() as u64)
        );
        assert_eq!(damage[0].next_seq, None);
    }

    #[test]
    fn a_flipped_bit_in_a_payload_loses_that_record_only_and_names_it() {
        let mut buf = frames(&[1, 2, 3, 4]);
        let second = frames(&[1]).len();
        buf[second + HEADER + 2] ^= 0x10;
        let (seqs, damage) = scan(&buf, 0);
        assert_eq!(seqs, [1, 3, 4]);
        assert_eq!(damage.len(), 1);
        let d = &damage[0];
        assert_eq!((d.after_seq, d.next_seq), (1, Some(3)));
        assert_eq!(
            d.frames
                .as_ref()
                .unwrap()
                .iter()
                .map(|f| f.0)
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn a_damaged_length_field_is_resynchronised_and_bounded_by_its_neighbours() {
        let mut buf = frames(&[1, 2, 3, 4]);
        let second = frames(&[1]).len();
        buf[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let (seqs, damage) = scan(&buf, 0);
        assert_eq!(seqs, [1, 3, 4]);
        assert_eq!(damage[0].frames, None, "the framing itself is damaged");
        assert_eq!((damage[0].after_seq, damage[0].next_seq), (1, Some(3)));
    }

    #[test]
    fn frames_at_or_below_the_floor_are_damage() {
        let (seqs, damage) = scan(&frames(&[5, 6]), 5);
        assert_eq!(seqs, [6]);
        assert_eq!(damage.len(), 1);
    }

    #[test]
    fn a_footer_ends_the_segment() {
        let mut buf = frames(&[3, 4]);
        buf.extend_from_slice(
            &Footer {
                first_seq: 3,
                last_seq: 4,
                records: 2,
            }
            .encode(),
        );
        let mut c = cursor(&buf, 0);
        assert!(matches!(c.next().unwrap(), Item::Record { seq: 3, .. }));
        assert!(matches!(c.next().unwrap(), Item::Record { seq: 4, .. }));
        assert!(matches!(c.next().unwrap(), Item::Footer(f) if f.records == 2));
        assert!(matches!(c.next().unwrap(), Item::End));
    }

    #[test]
    fn garbage_from_end_to_end_is_one_span_found_in_bounded_time() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u8> = (0..512 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (seqs, damage) = scan(&garbage, 0);
        assert!(seqs.is_empty());
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].bytes(), garbage.len() as u64);
    }
}

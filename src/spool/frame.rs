//! The on-disk frame of one record: `len u32 LE | crc32c u32 LE | seq u64 LE | payload`.
//!
//! Every record carries its own length and checksum so that recovery can tell a good frame
//! from a torn, zero-filled or bit-rotted one without trusting anything else on the card,
//! and can find the next good frame after a bad one. The checksum covers the seq as well as
//! the payload: a frame whose seq was damaged must not be replayed under another record id.
//!
//! A sealed segment ends with a footer: a frame with seq 0 (never a record's) whose payload
//! names the segment's first and last seq and its record count. Opening a spool then reads
//! 48 bytes per sealed segment instead of the whole segment, so a full 1 GiB spool on an SD
//! card is ready in well under a second; the records themselves are checked as they are read.

/// Bytes before the payload.
pub const HEADER: usize = 16;

/// The largest payload a frame may carry, whatever the config: recovery and readers trust no
/// length above it, and the agent never writes a record above it. Records spooled under an
/// older config with a larger `max_output` are still below it, so they are read back whole.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Payload of a footer: magic, first seq, last seq, records.
const FOOTER_PAYLOAD: usize = 32;
/// Bytes a footer takes at the end of a sealed segment.
pub const FOOTER: usize = HEADER + FOOTER_PAYLOAD;
const FOOTER_MAGIC: &[u8; 8] = b"RHSEGEND";

/// What a sealed segment's footer says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) records: u64,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER] {
        let mut payload = [0u8; FOOTER_PAYLOAD];
        payload[0..8].copy_from_slice(FOOTER_MAGIC);
        payload[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        payload[16..24].copy_from_slice(&self.last_seq.to_le_bytes());
        payload[24..32].copy_from_slice(&self.records.to_le_bytes());
        let mut out = [0u8; FOOTER];
        out[..HEADER].copy_from_slice(&header(0, &payload));
        out[HEADER..].copy_from_slice(&payload);
        out
    }

    /// The footer in `bytes` (a frame with seq 0), if it is one and verifies.
    pub fn decode(bytes: &[u8]) -> Option<Footer> {
        let head: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        let h = Header::parse(head);
        let payload = bytes.get(HEADER..FOOTER)?;
        if h.seq != 0 || h.len as usize != FOOTER_PAYLOAD || !h.verifies(payload) {
            return None;
        }
        if &payload[0..8] != FOOTER_MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8"));
        Some(Footer {
            first_seq: u64_at(8),
            last_seq: u64_at(16),
            records: u64_at(24),
        })
    }

    /// Whether `bytes` (the last [`FOOTER`] bytes of a segment) are a footer that no longer
    /// verifies: a flipped bit spoils either its header (the magic is still in place) or
    /// its payload (the header still says seq 0 with a footer's length). Record bytes never
    /// look like that: a record's JSON holds no NUL bytes.
    pub(crate) fn is_damaged(bytes: &[u8]) -> bool {
        let Some(head) = bytes
            .get(..HEADER)
            .and_then(|h| <&[u8; HEADER]>::try_from(h).ok())
        else {
            return false;
        };
        let h = Header::parse(head);
        let framed_as_footer = h.seq == 0 && h.len as usize == FOOTER_PAYLOAD;
        let magic = bytes.get(HEADER..HEADER + 8) == Some(&FOOTER_MAGIC[..]);
        bytes.len() == FOOTER && Footer::decode(bytes).is_none() && (framed_as_footer || magic)
    }
}

/// The fields in front of a payload, as read from disk (not yet verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub(crate) crc: u32,
    pub seq: u64,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER]) -> Header {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[8..16]);
        Header {
            len: u32_at(0),
            crc: u32_at(4),
            seq: u64::from_le_bytes(seq),
        }
    }

    /// Bytes the whole frame takes on disk.
    pub(crate) fn frame_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }

    pub fn verifies(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && checksum(self.seq, payload) == self.crc
    }
}

pub fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// The header for `payload`; the caller has checked that it fits in a `u32`.
pub fn header(seq: u64, payload: &[u8]) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[4..8].copy_from_slice(&checksum(seq, payload).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_verifies_only_its_own_payload() {
        let h = header(42, b"{\"a\":1}");
        let parsed = Header::parse(&h);
        assert_eq!(parsed.len, 7);
        assert_eq!(parsed.seq, 42);
        assert!(parsed.verifies(b"{\"a\":1}"));
        assert!(!parsed.verifies(b"{\"a\":2}"));
        let other_seq = Header { seq: 43, ..parsed };
        assert!(!other_seq.verifies(b"{\"a\":1}"));
    }

    #[test]
    fn a_footer_round_trips_and_a_flipped_bit_spoils_it() {
        let f = Footer {
            first_seq: 7,
            last_seq: 99,
            records: 80,
        };
        let mut bytes = f.encode();
        assert_eq!(Footer::decode(&bytes), Some(f));
        bytes[30] ^= 4;
        assert_eq!(Footer::decode(&bytes), None);
    }

    #[test]
    fn a_footer_with_a_flipped_bit_anywhere_is_known_as_a_damaged_footer() {
        let good = Footer {
            first_seq: 7,
            last_seq: 99,
            records: 80,
        }
        .encode();
        assert!(!Footer::is_damaged(&good), "a good footer is not damaged");
        for i in 0..FOOTER {
            let mut bytes = good;
            bytes[i] ^= 0x20;
            assert!(Footer::is_damaged(&bytes), "bit flipped in byte {i}");
        }
        let mut record = header(5, &[b'x'; 32]).to_vec();
        record.extend_from_slice(&[b'x'; 32]);
        assert!(!Footer::is_damaged(&record), "a record is not a footer");
    }

    #[test]
    fn a_zero_filled_header_never_verifies() {
        let zeros = Header::parse(&[0u8; HEADER]);
        assert!(!zeros.verifies(b""));
    }
}

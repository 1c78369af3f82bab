//! The on-disk frame of one record: `len u32 LE | crc32c u32 LE | seq u64 LE | payload`.
//!
//! Every record carries its own length and checksum so that recovery can tell a good frame
//! from a torn, zero-filled or bit-rotted one without trusting anything else on the card,
//! and can find the next good frame after a bad one. The checksum covers the seq as well as
//! the payload: a frame whose seq was damaged must not be replayed under another record id.

/// Bytes before the payload.
pub const HEADER: usize = 16;

/// The fields in front of a payload, as read from disk (not yet verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub crc: u32,
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
    pub fn frame_len(&self) -> u64 {
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
    fn a_zero_filled_header_never_verifies() {
        let zeros = Header::parse(&[0u8; HEADER]);
        assert!(!zeros.verifies(b""));
    }
}

//! Commitlog entry framing.
//!
//! Little-endian header, 40 bytes:
//! `magic u32 | total_size u32 | index u64 | term u64 | pos u64 | body_crc u32 | header_crc u32`
//! followed by the body. `total_size` includes the header. `header_crc` is CRC32C over the
//! 36 bytes before it; `body_crc` is CRC32C of the body. Entries never span segments: when
//! the next entry does not fit, the rest of the segment starts with `BLANK_MAGIC` (if 4 bytes
//! remain) and the entry goes to the next segment. A zero magic means "nothing written yet".

use crate::error::{Result, corrupt};

pub const ENTRY_MAGIC: u32 = 0x5157_4D31; // "1MWQ" little-endian: wasmq entry v1
pub const BLANK_MAGIC: u32 = 0xB1A4_4B4E; // segment end padding
pub const HEADER_SIZE: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub total_size: u32,
    pub index: u64,
    pub term: u64,
    pub pos: u64,
    pub body_crc: u32,
}

impl EntryHeader {
    pub fn body_len(&self) -> usize {
        self.total_size as usize - HEADER_SIZE
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        assert!(self.total_size as usize >= HEADER_SIZE);
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.total_size.to_le_bytes());
        h[8..16].copy_from_slice(&self.index.to_le_bytes());
        h[16..24].copy_from_slice(&self.term.to_le_bytes());
        h[24..32].copy_from_slice(&self.pos.to_le_bytes());
        h[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// What the bytes at a position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A header whose magic and header CRC are valid (the body is not checked here).
    Entry(EntryHeader),
    /// Segment-end padding: continue at the next segment.
    Blank,
    /// Never written (zero magic).
    Empty,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Classify the frame starting at `bytes` (at least 4 bytes, ideally `HEADER_SIZE`).
/// `where_` names the position for error messages.
pub fn decode_frame(bytes: &[u8], where_: impl FnOnce() -> String) -> Result<Frame> {
    assert!(bytes.len() >= 4);
    match u32_at(bytes, 0) {
        0 => Ok(Frame::Empty),
        BLANK_MAGIC => Ok(Frame::Blank),
        ENTRY_MAGIC => {
            if bytes.len() < HEADER_SIZE {
                return Err(corrupt(where_(), "entry header crosses the segment end"));
            }
            let stored = u32_at(bytes, 36);
            let actual = crc32c::crc32c(&bytes[0..36]);
            if stored != actual {
                return Err(corrupt(where_(), format!("header crc {stored:#010x} != computed {actual:#010x}")));
            }
            let header = EntryHeader {
                total_size: u32_at(bytes, 4),
                index: u64_at(bytes, 8),
                term: u64_at(bytes, 16),
                pos: u64_at(bytes, 24),
                body_crc: u32_at(bytes, 32),
            };
            if (header.total_size as usize) < HEADER_SIZE {
                return Err(corrupt(where_(), format!("total size {} below header size", header.total_size)));
            }
            Ok(Frame::Entry(header))
        }
        other => Err(corrupt(where_(), format!("bad magic {other:#010x}"))),
    }
}

/// Check a body against the header's CRC.
pub fn verify_body(header: &EntryHeader, body: &[u8], where_: impl FnOnce() -> String) -> Result<()> {
    debug_assert_eq!(body.len(), header.body_len());
    let actual = crc32c::crc32c(body);
    if actual != header.body_crc {
        return Err(corrupt(
            where_(),
            format!("index {} body crc {:#010x} != computed {actual:#010x}", header.index, header.body_crc),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trip(size in 40u32.., index: u64, term: u64, pos: u64, body_crc: u32) {
            let h = EntryHeader { total_size: size, index, term, pos, body_crc };
            let bytes = h.encode();
            prop_assert_eq!(decode_frame(&bytes, String::new).unwrap(), Frame::Entry(h));
        }

        #[test]
        fn any_bit_flip_in_header_is_detected(index: u64, term: u64, pos: u64, bit in 0usize..HEADER_SIZE * 8) {
            let h = EntryHeader { total_size: 100, index, term, pos, body_crc: 7 };
            let mut bytes = h.encode();
            bytes[bit / 8] ^= 1 << (bit % 8);
            // Either an error, or (flip in the magic turning it into something else) never the
            // same valid entry.
            match decode_frame(&bytes, String::new) {
                Ok(Frame::Entry(got)) => prop_assert!(false, "flip accepted: {got:?}"),
                Ok(Frame::Blank) | Ok(Frame::Empty) => prop_assert!(bit < 32),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn body_crc_mismatch_is_corrupt() {
        let body = b"payload";
        let h = EntryHeader {
            total_size: (HEADER_SIZE + body.len()) as u32,
            index: 1,
            term: 1,
            pos: 0,
            body_crc: crc32c::crc32c(body),
        };
        verify_body(&h, body, String::new).unwrap();
        let err = verify_body(&h, b"paXload", String::new).unwrap_err();
        assert!(err.to_string().contains("body crc"), "{err}");
    }
}

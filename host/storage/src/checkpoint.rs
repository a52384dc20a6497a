//! A small record rewritten in place, crash-safe by alternating between two slots.
//!
//! Each slot is 512 bytes (one sector, so a write is not torn in practice; the CRC catches
//! it if it is): `seq u64 | len u32 | payload | crc32c u32` where the CRC covers everything
//! before it. The reader takes the valid slot with the higher sequence number.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub const SLOT_SIZE: usize = 512;
pub const PAYLOAD_SIZE_MAX: usize = SLOT_SIZE - 16;

pub struct CheckpointFile {
    path: PathBuf,
    file: File,
    seq: u64,
}

impl CheckpointFile {
    /// Open (creating) the file; returns the latest valid payload, if any.
    pub fn open(path: &Path) -> Result<(CheckpointFile, Option<Vec<u8>>)> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)?;
        let mut best: Option<(u64, Vec<u8>)> = None;
        for slot in 0..2u64 {
            let mut buf = [0u8; SLOT_SIZE];
            let n = read_fully_at(&file, &mut buf, slot * SLOT_SIZE as u64).at(path)?;
            if n < SLOT_SIZE {
                continue;
            }
            if let Some((seq, payload)) = decode_slot(&buf)
                && best.as_ref().is_none_or(|(s, _)| seq > *s)
            {
                best = Some((seq, payload.to_vec()));
            }
        }
        let seq = best.as_ref().map_or(0, |(s, _)| *s);
        Ok((CheckpointFile { path: path.to_path_buf(), file, seq }, best.map(|(_, p)| p)))
    }

    /// Write a new version into the older slot. Durable only after `sync`.
    pub fn write(&mut self, payload: &[u8]) -> Result<()> {
        assert!(payload.len() <= PAYLOAD_SIZE_MAX, "checkpoint payload {} bytes", payload.len());
        self.seq += 1;
        let mut buf = [0u8; SLOT_SIZE];
        buf[0..8].copy_from_slice(&self.seq.to_le_bytes());
        buf[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        buf[12..12 + payload.len()].copy_from_slice(payload);
        let crc_at = 12 + payload.len();
        let crc = crc32c::crc32c(&buf[..crc_at]);
        buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        let slot = self.seq % 2;
        self.file.write_all_at(&buf, slot * SLOT_SIZE as u64).at(&self.path)
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.path)
    }
}

fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn decode_slot(buf: &[u8; SLOT_SIZE]) -> Option<(u64, &[u8])> {
    let seq = u64::from_le_bytes(buf[0..8].try_into().ok()?);
    let len = u32::from_le_bytes(buf[8..12].try_into().ok()?) as usize;
    if seq == 0 || len > PAYLOAD_SIZE_MAX {
        return None;
    }
    let crc_at = 12 + len;
    let crc = u32::from_le_bytes(buf[crc_at..crc_at + 4].try_into().ok()?);
    (crc == crc32c::crc32c(&buf[..crc_at])).then(|| (seq, &buf[12..crc_at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let (mut cp, first) = CheckpointFile::open(&path).unwrap();
        assert!(first.is_none());
        cp.write(b"one").unwrap();
        cp.write(b"two").unwrap();
        cp.sync().unwrap();
        drop(cp);
        let (mut cp, got) = CheckpointFile::open(&path).unwrap();
        assert_eq!(got.as_deref(), Some(&b"two"[..]));
        cp.write(b"three").unwrap();
        drop(cp);
        // Tear the newest slot: the previous version is returned.
        let data = std::fs::read(&path).unwrap();
        let mut torn = data.clone();
        torn[SLOT_SIZE + 14] ^= 0xff; // seq 3 lives in slot 1
        std::fs::write(&path, &torn).unwrap();
        let (_, got) = CheckpointFile::open(&path).unwrap();
        assert_eq!(got.as_deref(), Some(&b"two"[..]));
    }
}

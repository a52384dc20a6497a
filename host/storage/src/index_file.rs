//! Index of the commitlog by Raft index: fixed-width entries in fixed-size mmap files, so
//! `pos`/`size`/`term` of index `i` is one multiplication away (DLedger keeps one too).
//!
//! Entry (24 bytes, little-endian): `pos u64 | size u32 | term u64 | crc32c u32` where the
//! CRC covers the first 20 bytes, so a torn or zeroed slot reads as "absent", never as a
//! wrong position. Files hold `entries_per_file` slots and are named by the first index they
//! hold (20 digits); index `i` (1-based) lives in file `(i-1) / entries_per_file`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{IoContext, Result, corrupt};
use crate::mapped_file::{self, MappedFile};

pub const INDEX_ENTRY_SIZE: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub pos: u64,
    pub size: u32,
    pub term: u64,
}

impl IndexEntry {
    fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut b = [0u8; INDEX_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.pos.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.term.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<IndexEntry> {
        let crc = u32::from_le_bytes(b[20..24].try_into().expect("4"));
        if crc != crc32c::crc32c(&b[0..20]) {
            return None;
        }
        Some(IndexEntry {
            pos: u64::from_le_bytes(b[0..8].try_into().expect("8")),
            size: u32::from_le_bytes(b[8..12].try_into().expect("4")),
            term: u64::from_le_bytes(b[12..20].try_into().expect("8")),
        })
    }
}

pub struct IndexFile {
    dir: PathBuf,
    entries_per_file: u64,
    /// file number (`(index-1)/entries_per_file`) -> file
    files: RwLock<BTreeMap<u64, Arc<MappedFile>>>,
}

impl IndexFile {
    pub fn open(dir: &Path, entries_per_file: u64) -> Result<IndexFile> {
        assert!(entries_per_file > 0);
        std::fs::create_dir_all(dir).at(dir)?;
        let file_size = entries_per_file * INDEX_ENTRY_SIZE as u64;
        let mut files = BTreeMap::new();
        let listed = mapped_file::list_numbered_files(dir)?;
        let count = listed.len();
        for (i, (base, path)) in listed.into_iter().enumerate() {
            if base == 0 || (base - 1) % entries_per_file != 0 {
                return Err(corrupt(path.display().to_string(), "index file name not aligned to entries_per_file"));
            }
            let last = i + 1 == count;
            files.insert((base - 1) / entries_per_file, Arc::new(MappedFile::open(&path, file_size, last)?));
        }
        Ok(IndexFile { dir: dir.to_path_buf(), entries_per_file, files: RwLock::new(files) })
    }

    fn locate(&self, index: u64) -> (u64, usize) {
        assert!(index >= 1);
        let file_no = (index - 1) / self.entries_per_file;
        let slot = ((index - 1) % self.entries_per_file) as usize;
        (file_no, slot * INDEX_ENTRY_SIZE)
    }

    fn file(&self, file_no: u64) -> Option<Arc<MappedFile>> {
        self.files.read().get(&file_no).cloned()
    }

    /// Make sure the file for `index` exists (preallocating it). Called before any byte of an
    /// append is written, so disk-full leaves the log untouched.
    pub fn ensure(&self, index: u64) -> Result<()> {
        let (file_no, _) = self.locate(index);
        if self.files.read().contains_key(&file_no) {
            return Ok(());
        }
        let path = self.dir.join(mapped_file::file_name(file_no * self.entries_per_file + 1));
        let file = MappedFile::create(&path, self.entries_per_file * INDEX_ENTRY_SIZE as u64)?;
        self.files.write().insert(file_no, Arc::new(file));
        Ok(())
    }

    /// Write slot `index`. The writer lock of the commitlog is held; `ensure` was called.
    pub fn put(&self, index: u64, entry: IndexEntry) {
        let (file_no, offset) = self.locate(index);
        let file = self.file(file_no).expect("index file ensured before put");
        file.write(offset, &entry.encode());
    }

    /// Slot `index`, or `None` when never written, zeroed or damaged.
    pub fn get(&self, index: u64) -> Option<IndexEntry> {
        let (file_no, offset) = self.locate(index);
        let file = self.file(file_no)?;
        // SAFETY: slots are written before the commitlog publishes their index and are only
        // rewritten under the truncation lock; a racing torn read fails the CRC.
        IndexEntry::decode(unsafe { file.slice(offset, INDEX_ENTRY_SIZE) })
    }

    /// msync slots `from..=to`.
    pub fn flush(&self, from: u64, to: u64) -> Result<()> {
        let mut index = from;
        while index <= to {
            let (file_no, offset) = self.locate(index);
            let file_last = (file_no + 1) * self.entries_per_file;
            let last = to.min(file_last);
            if let Some(file) = self.file(file_no) {
                file.flush_range(offset, (last - index + 1) as usize * INDEX_ENTRY_SIZE)?;
            }
            index = last + 1;
        }
        Ok(())
    }

    /// fsync the newest file.
    pub fn sync_last(&self) -> Result<()> {
        let last = self.files.read().last_key_value().map(|(_, f)| f.clone());
        match last {
            Some(f) => f.sync_all(),
            None => Ok(()),
        }
    }

    /// Forget slots `index..`: zero the rest of its file and delete later files.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        let (file_no, offset) = self.locate(index);
        let mut files = self.files.write();
        let later: Vec<u64> = files.range(file_no + 1..).map(|(k, _)| *k).collect();
        for k in later {
            let file = files.remove(&k).expect("listed");
            std::fs::remove_file(file.path()).at(file.path())?;
        }
        if let Some(file) = files.get(&file_no) {
            file.zero_range(offset, file.len() - offset)?;
            file.sync_all()?;
        }
        mapped_file::sync_dir(&self.dir)
    }

    /// Delete files whose every slot is below `index`.
    pub fn delete_before(&self, index: u64) -> Result<usize> {
        let (file_no, _) = self.locate(index.max(1));
        let mut files = self.files.write();
        let old: Vec<u64> = files.range(..file_no).map(|(k, _)| *k).collect();
        for k in &old {
            let file = files.remove(k).expect("listed");
            std::fs::remove_file(file.path()).at(file.path())?;
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_truncate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexFile::open(dir.path(), 4).unwrap();
        for i in 1..=10u64 {
            idx.ensure(i).unwrap();
            idx.put(i, IndexEntry { pos: i * 100, size: 50, term: i / 3 });
        }
        assert_eq!(idx.get(7), Some(IndexEntry { pos: 700, size: 50, term: 2 }));
        assert_eq!(idx.get(11), None);
        idx.truncate_from(6).unwrap();
        assert_eq!(idx.get(5).map(|e| e.pos), Some(500));
        assert_eq!(idx.get(6), None);
        assert_eq!(idx.get(9), None);
        idx.flush(1, 5).unwrap();
        drop(idx);
        let idx = IndexFile::open(dir.path(), 4).unwrap();
        assert_eq!(idx.get(5).map(|e| e.pos), Some(500));
        assert_eq!(idx.delete_before(5).unwrap(), 1);
        assert_eq!(idx.get(4), None);
        assert_eq!(idx.get(5).map(|e| e.pos), Some(500));
    }
}

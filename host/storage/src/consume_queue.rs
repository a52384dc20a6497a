//! Consume queue: per topic and queue id, the positions of that queue's messages in the
//! commitlog, so reading queue offset `N` is one multiplication away.
//!
//! Entry (20 bytes, little-endian, RocketMQ's layout): `pos u64 | size u32 | tag_hash u64`;
//! `size` is the framed entry size and never 0, so a zero slot means "not written". Files
//! hold `entries_per_file` slots and are named by their first queue offset (20 digits).
//! The queue is derived state: the `MessageStore` writes it only when applying committed
//! entries and repairs it from the commitlog on open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{IoContext, Result, corrupt};
use crate::mapped_file::{self, MappedFile};

pub const CQ_ENTRY_SIZE: usize = 20;
/// RocketMQ's `mappedFileSizeConsumeQueue` is 300k entries (6 MB).
pub const CQ_ENTRIES_PER_FILE_DEFAULT: u64 = 300_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub pos: u64,
    pub size: u32,
    pub tag_hash: u64,
}

impl CqEntry {
    fn encode(&self) -> [u8; CQ_ENTRY_SIZE] {
        let mut b = [0u8; CQ_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.pos.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<CqEntry> {
        let size = u32::from_le_bytes(b[8..12].try_into().expect("4"));
        (size != 0).then(|| CqEntry {
            pos: u64::from_le_bytes(b[0..8].try_into().expect("8")),
            size,
            tag_hash: u64::from_le_bytes(b[12..20].try_into().expect("8")),
        })
    }
}

pub struct ConsumeQueue {
    topic: String,
    queue_id: u32,
    dir: PathBuf,
    entries_per_file: u64,
    files: RwLock<BTreeMap<u64, Arc<MappedFile>>>,
    /// First readable offset (entries below point at deleted log segments).
    min_offset: AtomicU64,
    /// Next offset to write; slots below it are published.
    max_offset: AtomicU64,
    /// Slots below this are durable.
    flushed_offset: Mutex<u64>,
}

impl std::fmt::Debug for ConsumeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueue")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .field("min_offset", &self.min_offset())
            .field("max_offset", &self.max_offset())
            .finish()
    }
}

impl ConsumeQueue {
    /// Open (or create) the queue in `dir`, finding its end by binary search for the first
    /// empty slot of the last file (slots are written in order; the store cross-checks the
    /// count against its checkpoint).
    pub fn open(dir: &Path, topic: &str, queue_id: u32, entries_per_file: u64) -> Result<ConsumeQueue> {
        assert!(entries_per_file > 0);
        std::fs::create_dir_all(dir).at(dir)?;
        let file_size = entries_per_file * CQ_ENTRY_SIZE as u64;
        let mut files = BTreeMap::new();
        let listed = mapped_file::list_numbered_files(dir)?;
        let count = listed.len();
        for (i, (base, path)) in listed.into_iter().enumerate() {
            if base % entries_per_file != 0 {
                return Err(corrupt(path.display().to_string(), "consume queue file not aligned to entries_per_file"));
            }
            files.insert(base / entries_per_file, Arc::new(MappedFile::open(&path, file_size, i + 1 == count)?));
        }
        let q = ConsumeQueue {
            topic: topic.to_owned(),
            queue_id,
            dir: dir.to_path_buf(),
            entries_per_file,
            files: RwLock::new(files),
            min_offset: AtomicU64::new(0),
            max_offset: AtomicU64::new(0),
            flushed_offset: Mutex::new(0),
        };
        let (min, max) = {
            let files = q.files.read();
            match (files.first_key_value(), files.last_key_value()) {
                (Some((&first_no, _)), Some((&last_no, last))) => {
                    // SAFETY (both closures): the queue is not shared yet.
                    let full = |slot: u64| {
                        CqEntry::decode(unsafe { last.slice(slot as usize * CQ_ENTRY_SIZE, CQ_ENTRY_SIZE) }).is_some()
                    };
                    // Slots before a re-based start are empty; that only happens in the
                    // first file, rarely, so a linear skip is fine there.
                    let mut lo = 0u64;
                    if first_no == last_no {
                        while lo < entries_per_file && !full(lo) {
                            lo += 1;
                        }
                        if lo == entries_per_file {
                            lo = 0;
                        }
                    }
                    let min = first_no * entries_per_file + if first_no == last_no { lo } else { 0 };
                    let mut hi = entries_per_file;
                    while lo < hi {
                        let mid = (lo + hi) / 2;
                        if full(mid) { lo = mid + 1 } else { hi = mid }
                    }
                    (min, last_no * entries_per_file + lo)
                }
                _ => (0, 0),
            }
        };
        q.min_offset.store(min, Ordering::Release);
        q.max_offset.store(max, Ordering::Release);
        *q.flushed_offset.lock() = max;
        Ok(q)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    fn locate(&self, offset: u64) -> (u64, usize) {
        (offset / self.entries_per_file, (offset % self.entries_per_file) as usize * CQ_ENTRY_SIZE)
    }

    /// Append at `max_offset()` (single writer: the store's apply lock). Returns the offset.
    pub fn append(&self, entry: CqEntry) -> Result<u64> {
        assert!(entry.size > 0, "a consume queue entry has a size");
        let offset = self.max_offset();
        let (file_no, at) = self.locate(offset);
        let existing = self.files.read().get(&file_no).cloned();
        let file = match existing {
            Some(f) => f,
            None => {
                let path = self.dir.join(mapped_file::file_name(file_no * self.entries_per_file));
                let f = Arc::new(MappedFile::create(&path, self.entries_per_file * CQ_ENTRY_SIZE as u64)?);
                self.files.write().insert(file_no, f.clone());
                f
            }
        };
        file.write(at, &entry.encode());
        self.max_offset.store(offset + 1, Ordering::Release);
        Ok(offset)
    }

    /// Start an empty queue at `offset` (rebuilding a lost queue whose earlier entries are
    /// gone with retention).
    pub fn reset_empty_at(&self, offset: u64) {
        assert_eq!(self.max_offset(), self.min_offset(), "only an empty queue can be re-based");
        assert!(self.files.read().is_empty(), "only a queue without files can be re-based");
        self.min_offset.store(offset, Ordering::Release);
        self.max_offset.store(offset, Ordering::Release);
        *self.flushed_offset.lock() = offset;
    }

    pub fn get(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        let (file_no, at) = self.locate(offset);
        let file = self.files.read().get(&file_no).cloned()?;
        // SAFETY: published slot; slots are only rewritten by truncation under the apply lock
        // after max_offset moved below them.
        CqEntry::decode(unsafe { file.slice(at, CQ_ENTRY_SIZE) })
    }

    /// Drop offsets `offset..` (entries applied after the last checkpoint).
    pub fn truncate_to(&self, offset: u64) -> Result<()> {
        let max = self.max_offset();
        if offset >= max {
            return Ok(());
        }
        self.max_offset.store(offset, Ordering::Release);
        let (file_no, at) = self.locate(offset);
        let mut files = self.files.write();
        let later: Vec<u64> = files.range(file_no + 1..).map(|(k, _)| *k).collect();
        for k in later {
            let f = files.remove(&k).expect("listed");
            std::fs::remove_file(f.path()).at(f.path())?;
        }
        if let Some(f) = files.get(&file_no) {
            f.zero_range(at, f.len() - at)?;
            f.sync_all()?;
        }
        if offset < self.min_offset() {
            self.min_offset.store(offset, Ordering::Release);
        }
        let mut flushed = self.flushed_offset.lock();
        *flushed = (*flushed).min(offset);
        Ok(())
    }

    /// msync slots written since the last flush.
    pub fn flush(&self) -> Result<()> {
        let mut flushed = self.flushed_offset.lock();
        let max = self.max_offset();
        let mut offset = (*flushed).max(self.min_offset());
        while offset < max {
            let (file_no, at) = self.locate(offset);
            let stop = max.min((file_no + 1) * self.entries_per_file);
            if let Some(f) = self.files.read().get(&file_no).cloned() {
                f.flush_range(at, (stop - offset) as usize * CQ_ENTRY_SIZE)?;
            }
            offset = stop;
        }
        *flushed = max;
        Ok(())
    }

    /// First offset whose entry points at or after `log_min_pos` (binary search: positions
    /// grow with offsets). Moves `min_offset` there and deletes files entirely below it
    /// (never the last file). Returns the number of files deleted.
    pub fn correct_min_offset(&self, log_min_pos: u64) -> Result<usize> {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if e.pos >= log_min_pos => hi = mid,
                _ => lo = mid + 1,
            }
        }
        self.min_offset.store(lo, Ordering::Release);
        let (keep_no, _) = self.locate(lo);
        let mut files = self.files.write();
        let last_no = files.last_key_value().map(|(k, _)| *k);
        let doomed: Vec<u64> = files.range(..keep_no).map(|(k, _)| *k).filter(|k| Some(*k) != last_no).collect();
        for k in &doomed {
            let f = files.remove(k).expect("listed");
            std::fs::remove_file(f.path()).at(f.path())?;
        }
        Ok(doomed.len())
    }

    /// Remove the queue's files (topic deletion).
    pub fn destroy(&self) -> Result<()> {
        let mut files = self.files.write();
        files.clear();
        self.min_offset.store(0, Ordering::Release);
        self.max_offset.store(0, Ordering::Release);
        match std::fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err).at(&self.dir),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(i: u64) -> CqEntry {
        CqEntry { pos: i * 100, size: 60, tag_hash: i % 3 }
    }

    #[test]
    fn append_get_reopen_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), "T", 0, 8).unwrap();
        for i in 0..30 {
            assert_eq!(q.append(e(i)).unwrap(), i);
        }
        assert_eq!(q.get(17), Some(e(17)));
        assert_eq!(q.get(30), None);
        q.flush().unwrap();
        drop(q);
        let q = ConsumeQueue::open(dir.path(), "T", 0, 8).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 30));
        q.truncate_to(20).unwrap();
        assert_eq!(q.max_offset(), 20);
        assert_eq!(q.get(20), None);
        drop(q);
        let q = ConsumeQueue::open(dir.path(), "T", 0, 8).unwrap();
        assert_eq!(q.max_offset(), 20, "truncation is durable");
        assert_eq!(q.append(e(99)).unwrap(), 20);
        assert_eq!(q.get(20), Some(e(99)));
    }

    #[test]
    fn min_offset_follows_log_start() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), "T", 1, 8).unwrap();
        for i in 0..30 {
            q.append(e(i)).unwrap();
        }
        // Log now starts at pos 1750: offsets 0..=17 point below it.
        assert_eq!(q.correct_min_offset(1750).unwrap(), 2, "files [0,8) and [8,16) deleted");
        assert_eq!(q.min_offset(), 18);
        assert_eq!(q.get(17), None);
        assert_eq!(q.get(18), Some(e(18)));
        drop(q);
        let q = ConsumeQueue::open(dir.path(), "T", 1, 8).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (16, 30));
        q.correct_min_offset(1750).unwrap();
        assert_eq!(q.min_offset(), 18);
    }

    #[test]
    fn rebased_empty_queue() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), "T", 2, 8).unwrap();
        q.reset_empty_at(21);
        assert_eq!(q.append(e(1)).unwrap(), 21);
        drop(q);
        let q = ConsumeQueue::open(dir.path(), "T", 2, 8).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (21, 22));
        assert_eq!(q.get(21), Some(e(1)));
        assert_eq!(q.get(20), None);
    }
}

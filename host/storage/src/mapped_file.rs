//! A fixed-size, preallocated file mapped shared into memory.
//!
//! Every on-disk structure of this crate (commitlog segments, index files, consume queue
//! files) is one of these. The size is reserved with `posix_fallocate` when the file is
//! created, so running out of disk is an `Err` at creation time and never a SIGBUS when a
//! page of the mapping is first touched.
//!
//! Concurrency contract: the owner serialises writers and only publishes a region to
//! readers after it has been written; a region is never rewritten while a reader can see it
//! (truncation excludes readers with a lock, see `CommitLog`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{IoContext, Result, StorageError};

/// Largest file this crate maps (1 TiB): a sanity bound on configuration.
pub const MAPPED_FILE_SIZE_MAX_BYTES: u64 = 1 << 40;

pub struct MappedFile {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    len: usize,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl MappedFile {
    /// Create a new file of exactly `len` bytes, reserving its blocks up front.
    /// On any failure the half-created file is removed and nothing else changes.
    pub fn create(path: &Path, len: u64) -> Result<MappedFile> {
        assert!(len > 0 && len <= MAPPED_FILE_SIZE_MAX_BYTES, "mapped file size {len}");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path).at(path)?;
        if let Err(err) = preallocate(&file, 0, len) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(StorageError::Preallocate { path: path.to_path_buf(), size_bytes: len, source: err });
        }
        Self::map(path.to_path_buf(), file, len)
    }

    /// Open an existing file that must be `len` bytes. A shorter file (a crash while it was
    /// being created or a truncated copy) is extended and preallocated again when
    /// `extend_if_short`, otherwise reported as corrupt.
    pub fn open(path: &Path, len: u64, extend_if_short: bool) -> Result<MappedFile> {
        assert!(len > 0 && len <= MAPPED_FILE_SIZE_MAX_BYTES, "mapped file size {len}");
        let file = OpenOptions::new().read(true).write(true).open(path).at(path)?;
        let actual = file.metadata().at(path)?.len();
        if actual != len {
            if actual < len && extend_if_short {
                tracing::warn!(path = %path.display(), actual, len, "extending short file");
                preallocate(&file, 0, len).map_err(|source| StorageError::Preallocate {
                    path: path.to_path_buf(),
                    size_bytes: len,
                    source,
                })?;
            } else {
                return Err(crate::error::corrupt(
                    path.display().to_string(),
                    format!("file is {actual} bytes, expected {len} (segment size changed?)"),
                ));
            }
        }
        Self::map(path.to_path_buf(), file, len)
    }

    fn map(path: PathBuf, file: File, len: u64) -> Result<MappedFile> {
        let len_usize = usize::try_from(len).expect("64-bit platform");
        let map = MmapOptions::new().len(len_usize).map_raw(&file).at(&path)?;
        Ok(MappedFile { path, file, map, len: len_usize })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: mapped files have a positive size (asserted at creation).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Borrow `len` bytes at `offset`.
    ///
    /// # Safety
    /// No writer may modify this range while the returned slice is alive.
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "slice out of bounds");
        // SAFETY: in bounds (asserted), mapping lives as long as &self, no concurrent writer
        // by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), len) }
    }

    /// Copy `data` to `offset`. Callers hold the owner's writer lock and write only regions
    /// that no reader can see yet.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset.checked_add(data.len()).is_some_and(|end| end <= self.len), "write out of bounds");
        // SAFETY: in bounds; the region is unpublished (owner contract), so no reference to
        // it exists.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(offset), data.len()) }
    }

    /// Fault `[offset, offset+len)` in with one madvise(MADV_POPULATE_READ) instead of one
    /// page-cache fault per page (the first write to each page still takes a write-protect
    /// fault). READ, not WRITE: WRITE would dirty pages of zeros ahead of the writer, which
    /// background writeback may then write twice. Zero-filling the pages is most of the cost
    /// and is paid whichever way; READ, WRITE and no prefault measured within noise of each
    /// other at 64 producers (session 8). The commitlog calls this from a thread of its own
    /// (`prefaulter`), so the cost is off the Raft thread.
    /// Best effort: older kernels refuse and the pages fault in on first touch as usual. The
    /// pages' contents are not changed.
    pub fn prefault_write(&self, offset: usize, len: usize) {
        let page = 4096;
        let start = offset - offset % page;
        let end = (offset + len).min(self.len);
        if start >= end {
            return;
        }
        // SAFETY: in-bounds range of our own mapping; POPULATE_READ does not modify data.
        unsafe {
            libc::madvise(self.map.as_mut_ptr().add(start).cast(), end - start, libc::MADV_POPULATE_READ);
        }
    }

    /// Durably write back `[offset, offset+len)` (msync, MS_SYNC).
    pub fn flush_range(&self, offset: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        assert!(offset + len <= self.len);
        self.map.flush_range(offset, len).at(&self.path)
    }

    /// Make `[offset, offset+len)` read as zeros and keep its blocks reserved. Uses
    /// FALLOC_FL_ZERO_RANGE (a metadata operation on ext4/xfs) and falls back to writing
    /// zeros through the mapping. The caller excludes readers of that range.
    pub fn zero_range(&self, offset: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "zero_range out of bounds");
        // SAFETY: plain syscall on our own fd with in-bounds arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            // SAFETY: in bounds; the caller guarantees no reader sees this range.
            unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(offset), 0, len) };
        }
        Ok(())
    }

    /// fsync file data and metadata (used after `zero_range` and at creation).
    pub fn sync_all(&self) -> Result<()> {
        self.map.flush().at(&self.path)?;
        self.file.sync_all().at(&self.path)
    }
}

/// Reserve `[offset, offset+len)` on disk. `posix_fallocate` returns the error number
/// instead of setting errno.
fn preallocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) }
}

/// fsync a directory so that created/removed names are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Parse a file name made of exactly 20 decimal digits (RocketMQ style).
pub fn parse_file_base(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) { name.parse().ok() } else { None }
}

pub fn file_name(base: u64) -> String {
    format!("{base:020}")
}

/// List `(base, path)` of the 20-digit files in `dir`, sorted by base. Other names are ignored
/// (with a debug trace), so temporary files never confuse recovery.
pub fn list_numbered_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_file_base) {
            Some(base) => out.push((base, entry.path())),
            None => tracing::debug!(file = ?entry.path(), "ignoring unexpected file"),
        }
    }
    out.sort_unstable_by_key(|(base, _)| *base);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        let f = MappedFile::create(&path, 8192).unwrap();
        f.write(100, b"hello");
        f.flush_range(0, 8192).unwrap();
        drop(f);
        let f = MappedFile::open(&path, 8192, false).unwrap();
        assert_eq!(unsafe { f.slice(100, 5) }, b"hello");
        f.zero_range(0, 4096).unwrap();
        assert_eq!(unsafe { f.slice(100, 5) }, &[0u8; 5]);
        assert!(MappedFile::open(&path, 4096, false).is_err(), "size mismatch must be refused");
    }

    #[test]
    fn numbered_files() {
        assert_eq!(parse_file_base("00000000000000001024"), Some(1024));
        assert_eq!(parse_file_base("1024"), None);
        assert_eq!(parse_file_base("0000000000000000102x"), None);
        assert_eq!(file_name(7), "00000000000000000007");
    }
}

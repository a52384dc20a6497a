//! The segmented, append-only commitlog. It is the Raft log: entry `i` of the log is Raft
//! index `i`, and every entry carries its term.
//!
//! Layout under `dir`:
//! - `commitlog/<20-digit base pos>`: fixed-size, preallocated segment files (see `frame`).
//! - `index/<20-digit first index>`: fixed-width slots by Raft index (see `index_file`).
//! - `checkpoint`: last flushed entry and the retained start (see `LogCheckpoint`).
//!
//! Concurrency: appends, truncation and retention are serialised by a writer mutex; readers
//! never take it. Bytes are written before the new bounds are published (RwLock, so the
//! release/acquire pairing is implied), and readers only look inside published bounds.
//! Truncation rewrites bytes that readers may hold, so every `EntryRef` is registered with a
//! `TruncationGate` and a truncation waits until none is outstanding: an `EntryRef` never
//! sees its bytes change.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::checkpoint::CheckpointFile;
use crate::error::{IoContext, Result, StorageError, corrupt};
use crate::frame::{self, BLANK_MAGIC, EntryHeader, Frame, HEADER_SIZE};
use crate::index_file::{IndexEntry, IndexFile};
use crate::mapped_file::{self, MappedFile};
use crate::prefaulter::{PrefaultRequests, Prefaulter};
use crate::recovery::{self, RecoveryReport};

/// Default segment size, as RocketMQ's `mappedFileSizeCommitLog`.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 1 << 30;
/// Smallest segment accepted (tests use tiny segments to exercise roll-over).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4096;
/// Default largest entry body (RocketMQ `maxMessageSize`).
pub const ENTRY_SIZE_MAX_BYTES_DEFAULT: u32 = 4 << 20;
/// One append call may carry at most this many entries / bytes, so one call holds the writer
/// lock for a bounded time.
pub const APPEND_BATCH_ENTRIES_MAX: usize = 1 << 16;
pub const APPEND_BATCH_BYTES_MAX: u64 = 256 << 20;
/// 4M slots of 24 bytes = 96 MiB per index file.
pub const INDEX_ENTRIES_PER_FILE_DEFAULT: u64 = 1 << 22;
/// The index file is rebuilt from the log by recovery, so it is fsynced at most this often
/// (not on every group commit); the recovery checkpoint only advances with it.
const INDEX_SYNC_INTERVAL: Duration = Duration::from_millis(1000);
/// Pages of the segment ahead of the writer are faulted in this many bytes at a time
/// (one madvise instead of a page-cache fault per 4 KiB; see `MappedFile::prefault_write`),
/// by a thread of its own (`prefaulter`).
const PREFAULT_CHUNK_BYTES: u64 = 4 << 20;
/// The writer asks for the log to be faulted in this far ahead of its end whenever less
/// than one chunk ahead is asked for: one request per chunk written.
const PREFAULT_AHEAD_BYTES: u64 = 2 * PREFAULT_CHUNK_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Callers call `flush`/`flush_to` (group commit) before acknowledging.
    Sync,
    /// A background thread flushes every `flush_interval_ms`.
    Async,
}

#[derive(Debug, Clone)]
pub struct CommitLogConfig {
    pub dir: PathBuf,
    pub segment_size_bytes: u64,
    pub flush_mode: FlushMode,
    /// Largest body of one entry (the frame adds `HEADER_SIZE`).
    pub entry_size_max_bytes: u32,
    pub flush_interval_ms: u64,
    pub index_entries_per_file: u64,
}

impl CommitLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> CommitLogConfig {
        CommitLogConfig {
            dir: dir.into(),
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            flush_mode: FlushMode::Async,
            entry_size_max_bytes: ENTRY_SIZE_MAX_BYTES_DEFAULT,
            flush_interval_ms: 500,
            index_entries_per_file: INDEX_ENTRIES_PER_FILE_DEFAULT,
        }
    }

    /// A small log for tests: 1 MiB segments (so tests cross segment ends quickly) and
    /// 64 KiB entries, with the other defaults of `new`.
    pub fn small(dir: impl Into<PathBuf>) -> CommitLogConfig {
        CommitLogConfig { segment_size_bytes: 1 << 20, entry_size_max_bytes: 64 * 1024, ..CommitLogConfig::new(dir) }
    }

    fn validate(&self) -> Result<()> {
        let seg = self.segment_size_bytes;
        if !(SEGMENT_SIZE_BYTES_MIN..=mapped_file::MAPPED_FILE_SIZE_MAX_BYTES).contains(&seg) {
            return Err(StorageError::Config(format!(
                "segment_size_bytes {seg} outside [{SEGMENT_SIZE_BYTES_MIN}, {}]",
                mapped_file::MAPPED_FILE_SIZE_MAX_BYTES
            )));
        }
        if self.entry_size_max_bytes == 0 || HEADER_SIZE as u64 + self.entry_size_max_bytes as u64 > seg {
            return Err(StorageError::Config(format!(
                "entry_size_max_bytes {} must be > 0 and fit a segment of {seg} bytes with its {HEADER_SIZE}-byte header",
                self.entry_size_max_bytes
            )));
        }
        if self.flush_mode == FlushMode::Async && !(1..=60_000).contains(&self.flush_interval_ms) {
            return Err(StorageError::Config(format!(
                "flush_interval_ms {} outside [1, 60000]",
                self.flush_interval_ms
            )));
        }
        if !(1..=1 << 30).contains(&self.index_entries_per_file) {
            return Err(StorageError::Config("index_entries_per_file outside [1, 2^30]".into()));
        }
        Ok(())
    }
}

/// The published extent of the log. Copied out under a short read lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// Index of the first retained entry; `last_index + 1` when empty.
    pub first_index: u64,
    /// Term of entry `first_index - 1` (0 when that is index 0).
    pub prev_term: u64,
    pub last_index: u64,
    pub last_term: u64,
    /// Position of the first retained entry (== `end_pos` when empty).
    pub min_pos: u64,
    /// End of the last entry: the next entry goes here (or to the next segment).
    pub end_pos: u64,
    /// Position of the last entry (meaningless when empty).
    pub last_pos: u64,
}

impl Bounds {
    pub fn is_empty(&self) -> bool {
        self.last_index < self.first_index
    }
}

/// What `flush` persisted last, plus the retained start, so that `open` knows where to begin
/// scanning and what precedes the first segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogCheckpoint {
    pub flushed_index: u64,
    pub flushed_pos: u64,
    pub flushed_term: u64,
    pub prev_index: u64,
    pub prev_term: u64,
    pub min_pos: u64,
    /// Layout parameters the files were written with; reopening with others is refused.
    pub segment_size_bytes: u64,
    pub index_entries_per_file: u64,
}

impl LogCheckpoint {
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        for v in [
            self.flushed_index,
            self.flushed_pos,
            self.flushed_term,
            self.prev_index,
            self.prev_term,
            self.min_pos,
            self.segment_size_bytes,
            self.index_entries_per_file,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<LogCheckpoint> {
        if b.len() != 65 || b[0] != Self::VERSION {
            return None;
        }
        let v = |i: usize| u64::from_le_bytes(b[1 + i * 8..9 + i * 8].try_into().expect("8"));
        Some(LogCheckpoint {
            flushed_index: v(0),
            flushed_pos: v(1),
            flushed_term: v(2),
            prev_index: v(3),
            prev_term: v(4),
            min_pos: v(5),
            segment_size_bytes: v(6),
            index_entries_per_file: v(7),
        })
    }
}

/// Fingerprint of a log, for comparing replicas and for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSummary {
    pub min_pos: u64,
    /// End of the last entry (exclusive).
    pub max_pos: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub last_term: u64,
    /// CRC32C of the last entry's full frame (header + body); 0 when empty.
    pub last_entry_crc: u32,
}

/// One log segment as retention sees it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub base_pos: u64,
    pub size_bytes: u64,
    /// Index of the first entry in this segment (None if it holds none yet).
    pub first_index: Option<u64>,
    pub modified: SystemTime,
    pub path: PathBuf,
}

/// A verified entry, borrowed zero-copy from its segment mapping. `Send + Sync`. Holding it
/// keeps the mapping alive (even if retention deletes the file) and delays `truncate_from`
/// until it is dropped: do not call `truncate_from` on a thread that holds one (it would wait
/// forever).
pub struct EntryRef {
    _truncation_guard: GatePass,
    segment: Arc<MappedFile>,
    offset: usize,
    header: EntryHeader,
}

impl EntryRef {
    pub fn index(&self) -> u64 {
        self.header.index
    }
    pub fn term(&self) -> u64 {
        self.header.term
    }
    pub fn pos(&self) -> u64 {
        self.header.pos
    }
    /// Framed size (header + body) in bytes.
    pub fn size_bytes(&self) -> u32 {
        self.header.total_size
    }
    /// Position of the byte after this entry.
    pub fn end_pos(&self) -> u64 {
        self.header.pos + self.header.total_size as u64
    }
    pub fn body_crc(&self) -> u32 {
        self.header.body_crc
    }
    pub fn body(&self) -> &[u8] {
        // SAFETY: verified in bounds at read time; the truncation guard we own keeps writers
        // off these bytes, and the Arc keeps the mapping alive.
        unsafe { self.segment.slice(self.offset + HEADER_SIZE, self.header.body_len()) }
    }
    /// Header and body as stored.
    pub fn frame_bytes(&self) -> &[u8] {
        // SAFETY: as in `body`.
        unsafe { self.segment.slice(self.offset, self.header.total_size as usize) }
    }
}

impl std::fmt::Debug for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRef")
            .field("index", &self.header.index)
            .field("term", &self.header.term)
            .field("pos", &self.header.pos)
            .field("body_len", &self.header.body_len())
            .finish()
    }
}

pub(crate) type Segments = BTreeMap<u64, Arc<MappedFile>>;

/// Keeps truncation away from the bytes `EntryRef`s lend out. Readers register (a counter)
/// for as long as they hold an entry; truncation waits until none is registered and then
/// blocks registration while it rewrites. Registration never waits for the count, so a thread
/// holding entries can always read more (no deadlock), at the price that a truncation may
/// wait while readers keep overlapping (it is rare: Raft follower repair).
#[derive(Default)]
struct TruncationGate {
    registration: RwLock<()>,
    readers: AtomicUsize,
}

/// A registered reader; deregisters on drop. Send + Sync, so entries can cross threads.
struct GatePass(Arc<TruncationGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TruncationGate {
    fn enter(self: &Arc<Self>) -> GatePass {
        let _registering = self.registration.read();
        self.readers.fetch_add(1, Ordering::AcqRel);
        GatePass(self.clone())
    }

    /// Wait until no reader is registered and hold registration closed.
    fn exclusive(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        loop {
            while self.readers.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let closed = self.registration.write();
            if self.readers.load(Ordering::Acquire) == 0 {
                return closed;
            }
        }
    }
}

pub(crate) struct Inner {
    pub cfg: CommitLogConfig,
    pub seg_dir: PathBuf,
    pub segments: RwLock<Segments>,
    pub index: IndexFile,
    pub bounds: RwLock<Bounds>,
    writer: Mutex<WriterState>,
    flush_state: Mutex<FlushState>,
    flushed_index: AtomicU64,
    flush_count: AtomicU64,
    /// Log bytes below this have been faulted in by the prefault thread (lowered by a
    /// truncation; a stale value only costs the writer page faults).
    prefaulted_to: AtomicU64,
    prefault_requests: PrefaultRequests,
    /// Group commit: true while a leader flushes; followers wait on `group_commit_done`.
    group_commit: Mutex<bool>,
    group_commit_done: parking_lot::Condvar,
    truncation: Arc<TruncationGate>,
}

struct FlushState {
    checkpoint: CheckpointFile,
    /// Log bytes below this are durable.
    flushed_end_pos: u64,
    /// Index slots up to this index are durable; the recovery checkpoint points here.
    index_synced: u64,
    index_synced_at: std::time::Instant,
}

struct WriterState {
    /// The writer has asked the prefault thread for the log up to here.
    prefault_requested_to: u64,
}

pub struct CommitLog {
    inner: Arc<Inner>,
    flusher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    _prefaulter: Prefaulter,
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLog")
            .field("dir", &self.inner.cfg.dir)
            .field("bounds", &*self.inner.bounds.read())
            .finish()
    }
}

/// One entry of a write plan: where it goes and whether the previous segment needs padding.
struct Placement {
    pos: u64,
    pad_at: Option<u64>,
}

impl CommitLog {
    /// Open (or create) the log in `cfg.dir`, recovering the tail after a crash.
    pub fn open(cfg: CommitLogConfig) -> Result<(CommitLog, RecoveryReport)> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir).at(&cfg.dir)?;
        let seg_dir = cfg.dir.join("commitlog");
        std::fs::create_dir_all(&seg_dir).at(&seg_dir)?;
        let (checkpoint_file, checkpoint_payload) = CheckpointFile::open(&cfg.dir.join("checkpoint"))?;
        let checkpoint = checkpoint_payload.as_deref().and_then(LogCheckpoint::decode);
        if checkpoint_payload.is_some() && checkpoint.is_none() {
            tracing::warn!(dir = %cfg.dir.display(), "commitlog checkpoint has an unknown format; scanning without it");
        }
        if let Some(cp) = checkpoint
            && (cp.segment_size_bytes != cfg.segment_size_bytes
                || cp.index_entries_per_file != cfg.index_entries_per_file)
        {
            return Err(StorageError::Config(format!(
                "{} was written with segment_size_bytes {} and index_entries_per_file {}, configured {} and {}",
                cfg.dir.display(),
                cp.segment_size_bytes,
                cp.index_entries_per_file,
                cfg.segment_size_bytes,
                cfg.index_entries_per_file
            )));
        }
        let index = IndexFile::open(&cfg.dir.join("index"), cfg.index_entries_per_file)?;
        let (segments, bounds, report) = recovery::recover(&cfg, &seg_dir, &index, checkpoint)?;
        let inner = Arc::new(Inner {
            seg_dir,
            segments: RwLock::new(segments),
            index,
            bounds: RwLock::new(bounds),
            writer: Mutex::new(WriterState { prefault_requested_to: bounds.end_pos }),
            flush_state: Mutex::new(FlushState {
                checkpoint: checkpoint_file,
                flushed_end_pos: bounds.end_pos,
                index_synced: bounds.last_index,
                index_synced_at: std::time::Instant::now(),
            }),
            flushed_index: AtomicU64::new(bounds.last_index),
            flush_count: AtomicU64::new(0),
            prefaulted_to: AtomicU64::new(bounds.end_pos),
            prefault_requests: PrefaultRequests::default(),
            group_commit: Mutex::new(false),
            group_commit_done: parking_lot::Condvar::new(),
            truncation: Arc::new(TruncationGate::default()),
            cfg,
        });
        // What recovery kept may still be only in the page cache (a process crash): make the
        // tail durable before the checkpoint says so.
        inner.sync_tail()?;
        inner.write_checkpoint(&mut inner.flush_state.lock(), true)?;
        let flusher = match inner.cfg.flush_mode {
            FlushMode::Sync => None,
            FlushMode::Async => Some(spawn_flusher(&inner)),
        };
        tracing::info!(
            dir = %inner.cfg.dir.display(),
            first_index = bounds.first_index,
            last_index = bounds.last_index,
            scanned_entries = report.scanned_entries,
            "commitlog opened"
        );
        let weak = Arc::downgrade(&inner);
        let prefaulter = Prefaulter::spawn(&inner.prefault_requests, move |to| {
            if let Some(inner) = weak.upgrade() {
                inner.prefault_to(to);
            }
        });
        Ok((CommitLog { inner, flusher, _prefaulter: prefaulter }, report))
    }

    pub fn config(&self) -> &CommitLogConfig {
        &self.inner.cfg
    }

    /// Leader append: assigns indexes `last_index+1 ..` with `term`. All or nothing.
    pub fn append(&self, term: u64, bodies: &[&[u8]]) -> Result<Range<u64>> {
        let mut w = self.inner.writer.lock();
        let first = self.inner.bounds.read().last_index + 1;
        let entries: Vec<(u64, u64, &[u8])> =
            bodies.iter().enumerate().map(|(i, body)| (first + i as u64, term, *body)).collect();
        self.inner.write_batch(&mut w, &entries)?;
        Ok(first..first + bodies.len() as u64)
    }

    /// Follower append of entries received from the leader. The first index must be
    /// `last_index() + 1`, indexes contiguous, terms non-decreasing. All or nothing.
    pub fn append_replicated(&self, entries: &[(u64, u64, &[u8])]) -> Result<()> {
        let mut w = self.inner.writer.lock();
        self.inner.write_batch(&mut w, entries)
    }

    /// Drop entries `index..` (Raft follower repair). Waits for outstanding `EntryRef`s.
    /// Refuses to cut below `flushed`-independent retained start: `index >= first_index()`.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        self.inner.truncate_from(index)
    }

    pub fn read(&self, index: u64) -> Result<EntryRef> {
        self.inner.read(index)
    }

    pub fn read_at_pos(&self, pos: u64) -> Result<EntryRef> {
        self.inner.read_at_pos(pos)
    }

    /// Term of `index`; `Some(0)` for index 0; the remembered term for `first_index()-1`
    /// after retention; `None` outside the log.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        let b = *self.inner.bounds.read();
        if index == b.first_index.wrapping_sub(1) {
            return Some(b.prev_term);
        }
        if index < b.first_index || index > b.last_index {
            return None;
        }
        match self.inner.index.get(index) {
            Some(e) => Some(e.term),
            // Damaged index slot: fall back to the (CRC-checked) entry itself.
            None => self.inner.read(index).ok().map(|e| e.term()),
        }
    }

    pub fn first_index(&self) -> u64 {
        self.inner.bounds.read().first_index
    }
    pub fn last_index(&self) -> u64 {
        self.inner.bounds.read().last_index
    }
    pub fn last_term(&self) -> u64 {
        self.inner.bounds.read().last_term
    }
    /// (last_index, last_term) read together.
    pub fn last_index_term(&self) -> (u64, u64) {
        let b = self.inner.bounds.read();
        (b.last_index, b.last_term)
    }
    pub fn flushed_index(&self) -> u64 {
        self.inner.flushed_index.load(Ordering::Acquire)
    }
    /// Number of flushes that wrote something back (group commit effectiveness).
    pub fn flush_count(&self) -> u64 {
        self.inner.flush_count.load(Ordering::Relaxed)
    }
    pub fn min_pos(&self) -> u64 {
        self.inner.bounds.read().min_pos
    }
    pub fn end_pos(&self) -> u64 {
        self.inner.bounds.read().end_pos
    }
    /// How far the prefault thread has faulted the log in (tests).
    #[cfg(test)]
    pub(crate) fn prefaulted_to(&self) -> u64 {
        self.inner.prefaulted_to.load(Ordering::Acquire)
    }

    /// Make everything appended so far durable; returns the flushed index. Concurrent callers
    /// queue on one lock, and whoever gets it flushes everything appended so far, so many
    /// producers share one fsync (group commit).
    pub fn flush(&self) -> Result<u64> {
        self.inner.flush()
    }

    /// Make the index file durable and move the recovery checkpoint (where the next open
    /// starts scanning) to the flushed index. `flush` does this at most once per second on
    /// its own; `close` does it too.
    pub fn sync_checkpoint(&self) -> Result<()> {
        self.inner.flush()?;
        let mut fs = self.inner.flush_state.lock();
        self.inner.sync_index(&mut fs)
    }

    /// Group commit: return once `index` is durable, flushing only if nobody did already.
    pub fn flush_to(&self, index: u64) -> Result<u64> {
        // Leader/follower: one caller flushes (covering every append so far) while the
        // others sleep on the condvar and are all woken together when it is done.
        loop {
            let flushed = self.flushed_index();
            if flushed >= index {
                return Ok(flushed);
            }
            let mut flushing = self.inner.group_commit.lock();
            if self.flushed_index() >= index {
                continue;
            }
            if *flushing {
                self.inner.group_commit_done.wait(&mut flushing);
                continue;
            }
            *flushing = true;
            drop(flushing);
            let result = self.inner.flush_covering(index);
            *self.inner.group_commit.lock() = false;
            self.inner.group_commit_done.notify_all();
            return result;
        }
    }

    pub fn summary(&self) -> LogSummary {
        let b = *self.inner.bounds.read();
        let last_entry_crc = if b.is_empty() {
            0
        } else {
            match self.inner.read(b.last_index) {
                Ok(e) => crc32c::crc32c(e.frame_bytes()),
                Err(err) => {
                    tracing::error!(%err, "last entry unreadable for summary");
                    0
                }
            }
        };
        LogSummary {
            min_pos: b.min_pos,
            max_pos: b.end_pos,
            first_index: b.first_index,
            last_index: b.last_index,
            last_term: b.last_term,
            last_entry_crc,
        }
    }

    /// CRC32C over the full frames of the entries starting in `[start_pos, end_pos)`, chained
    /// in log order. `start_pos` must be an entry position (or `end_pos()`); padding is not
    /// included, so equal logs give equal checksums.
    pub fn range_checksum(&self, start_pos: u64, end_pos: u64) -> Result<u32> {
        let b = *self.inner.bounds.read();
        if start_pos > end_pos || start_pos < b.min_pos || end_pos > b.end_pos {
            return Err(StorageError::PosOutOfRange {
                pos: start_pos.max(end_pos),
                min_pos: b.min_pos,
                max_pos: b.end_pos,
            });
        }
        let mut crc = 0u32;
        let mut pos = start_pos;
        while pos < end_pos {
            let entry = self.inner.read_at_pos(pos)?;
            crc = crc32c::crc32c_append(crc, entry.frame_bytes());
            pos = self.inner.next_entry_pos(entry.end_pos(), b.end_pos);
        }
        Ok(crc)
    }

    /// Segments in position order (for retention decisions).
    pub fn segment_infos(&self) -> Vec<SegmentInfo> {
        let segments: Vec<(u64, Arc<MappedFile>)> =
            self.inner.segments.read().iter().map(|(b, s)| (*b, s.clone())).collect();
        let b = *self.inner.bounds.read();
        segments
            .into_iter()
            .map(|(base, seg)| {
                let first_index = if base.max(b.min_pos) < b.end_pos {
                    self.inner.read_at_pos(base.max(b.min_pos)).ok().map(|e| e.index())
                } else {
                    None
                };
                let modified =
                    std::fs::metadata(seg.path()).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                SegmentInfo {
                    base_pos: base,
                    size_bytes: seg.len() as u64,
                    first_index,
                    modified,
                    path: seg.path().to_path_buf(),
                }
            })
            .collect()
    }

    /// Delete whole segments whose entries all have an index below `keep_from_index`. The
    /// segment holding the last entry is never deleted. `first_index()` moves up and the term
    /// of the entry before it is remembered. Returns the deleted segments' base positions.
    pub fn delete_segments_before(&self, keep_from_index: u64) -> Result<Vec<u64>> {
        self.inner.delete_segments_before(keep_from_index)
    }

    /// Flush and stop the background flusher.
    pub fn close(mut self) -> Result<()> {
        self.stop_flusher();
        self.sync_checkpoint()
    }

    fn stop_flusher(&mut self) {
        if let Some((stop, handle)) = self.flusher.take() {
            drop(stop);
            if handle.join().is_err() {
                tracing::error!("commitlog flusher thread panicked");
            }
        }
    }
}

impl Drop for CommitLog {
    fn drop(&mut self) {
        // No flush here: a dropped log behaves like a crashed process (data stays in the page
        // cache); `close` is the orderly shutdown.
        self.stop_flusher();
    }
}

fn spawn_flusher(inner: &Arc<Inner>) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let weak = Arc::downgrade(inner);
    let interval = Duration::from_millis(inner.cfg.flush_interval_ms);
    let handle = std::thread::Builder::new()
        .name("commitlog-flush".into())
        .spawn(move || {
            // Disconnection of the channel (sender dropped) is the stop signal.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                let Some(inner) = weak.upgrade() else { return };
                if let Err(err) = inner.flush() {
                    tracing::error!(%err, "background commitlog flush failed");
                }
            }
        })
        .expect("spawn commitlog flusher");
    (stop_tx, handle)
}

impl Inner {
    fn seg_size(&self) -> u64 {
        self.cfg.segment_size_bytes
    }

    fn segment(&self, base: u64) -> Option<Arc<MappedFile>> {
        self.segments.read().get(&base).cloned()
    }

    /// Where the entry after one ending at `end` starts (skipping padding), given the log end.
    fn next_entry_pos(&self, end: u64, log_end: u64) -> u64 {
        if end >= log_end {
            return end;
        }
        let seg = self.seg_size();
        let off = end % seg;
        if seg - off < 4 {
            return end - off + seg;
        }
        let Some(segment) = self.segment(end - off) else { return end };
        // SAFETY: below the published end, never rewritten without the truncation lock.
        let magic = u32::from_le_bytes(unsafe { segment.slice(off as usize, 4) }.try_into().expect("4"));
        if magic == BLANK_MAGIC { end - off + seg } else { end }
    }

    fn write_batch(&self, w: &mut WriterState, entries: &[(u64, u64, &[u8])]) -> Result<()> {
        let b = *self.bounds.read();
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > APPEND_BATCH_ENTRIES_MAX {
            return Err(StorageError::Invalid(format!(
                "append batch of {} entries exceeds {APPEND_BATCH_ENTRIES_MAX}",
                entries.len()
            )));
        }
        let mut total_bytes = 0u64;
        let (mut expect_index, mut prev_term) = (b.last_index + 1, b.last_term);
        for &(index, term, body) in entries {
            if index != expect_index {
                return Err(StorageError::NonContiguous { expected: expect_index, got: index });
            }
            if term < prev_term {
                return Err(StorageError::TermRegression { index, term, previous_term: prev_term });
            }
            if body.len() as u64 > self.cfg.entry_size_max_bytes as u64 {
                return Err(StorageError::EntryTooLarge {
                    size_bytes: body.len() as u64,
                    size_max_bytes: self.cfg.entry_size_max_bytes as u64,
                });
            }
            total_bytes += (HEADER_SIZE + body.len()) as u64;
            expect_index += 1;
            prev_term = term;
        }
        if total_bytes > APPEND_BATCH_BYTES_MAX {
            return Err(StorageError::Invalid(format!(
                "append batch of {total_bytes} bytes exceeds {APPEND_BATCH_BYTES_MAX}"
            )));
        }

        // Plan positions, then reserve every new file before writing a byte: disk full
        // fails here and leaves the log exactly as it was.
        let seg = self.seg_size();
        let mut placements = Vec::with_capacity(entries.len());
        let mut new_bases = Vec::new();
        let mut pos = b.end_pos;
        {
            let segments = self.segments.read();
            for &(_, _, body) in entries {
                let size = (HEADER_SIZE + body.len()) as u64;
                let off = pos % seg;
                let mut pad_at = None;
                if off + size > seg {
                    if seg - off >= 4 {
                        pad_at = Some(pos);
                    }
                    pos += seg - off;
                }
                let base = pos - pos % seg;
                if !segments.contains_key(&base) && new_bases.last() != Some(&base) {
                    new_bases.push(base);
                }
                placements.push(Placement { pos, pad_at });
                pos += size;
            }
        }
        let end_pos = pos;
        let first = entries[0].0;
        let last = entries[entries.len() - 1].0;
        let mut index_file_no = None;
        for index in first..=last {
            let no = (index - 1) / self.cfg.index_entries_per_file;
            if index_file_no != Some(no) {
                self.index.ensure(index)?;
                index_file_no = Some(no);
            }
        }
        let mut created = Vec::with_capacity(new_bases.len());
        for &base in &new_bases {
            let path = self.seg_dir.join(mapped_file::file_name(base));
            match MappedFile::create(&path, seg) {
                Ok(file) => created.push((base, Arc::new(file))),
                Err(err) => {
                    for (_, file) in created {
                        let _ = std::fs::remove_file(file.path());
                    }
                    return Err(err);
                }
            }
        }
        if !created.is_empty() {
            mapped_file::sync_dir(&self.seg_dir)?;
            let mut segments = self.segments.write();
            for (base, file) in created {
                segments.insert(base, file);
            }
        }

        // Write frames (unpublished region: no reader can look here yet).
        // Also on a new segment: a request made before it existed stopped short of it.
        if !new_bases.is_empty() || w.prefault_requested_to < end_pos + PREFAULT_CHUNK_BYTES {
            w.prefault_requested_to = end_pos + PREFAULT_AHEAD_BYTES;
            self.prefault_requests.request(w.prefault_requested_to);
        }
        let segments = self.segments.read();
        for (&(index, term, body), placement) in entries.iter().zip(&placements) {
            if let Some(pad) = placement.pad_at {
                let file = &segments[&(pad - pad % seg)];
                file.write((pad % seg) as usize, &BLANK_MAGIC.to_le_bytes());
            }
            let file = &segments[&(placement.pos - placement.pos % seg)];
            let off = (placement.pos % seg) as usize;
            file.write(off + HEADER_SIZE, body);
            // CRC of the bytes as they sit in the mapping: what we checksum is what is stored.
            // SAFETY: unpublished region written just above by this (the only) writer.
            let body_crc = crc32c::crc32c(unsafe { file.slice(off + HEADER_SIZE, body.len()) });
            debug_assert_eq!(body_crc, crc32c::crc32c(body));
            let header = EntryHeader {
                total_size: (HEADER_SIZE + body.len()) as u32,
                index,
                term,
                pos: placement.pos,
                body_crc,
            };
            file.write(off, &header.encode());
            self.index.put(index, IndexEntry { pos: placement.pos, size: header.total_size, term });
        }
        drop(segments);

        let last_placement = placements.last().expect("non-empty");
        let mut bounds = self.bounds.write();
        assert_eq!(bounds.last_index + 1, first, "writer lock held: bounds cannot move");
        if bounds.is_empty() {
            bounds.min_pos = placements[0].pos;
        }
        bounds.last_index = last;
        bounds.last_term = entries[entries.len() - 1].1;
        bounds.end_pos = end_pos;
        bounds.last_pos = last_placement.pos;
        Ok(())
    }

    fn flush(&self) -> Result<u64> {
        self.flush_covering(u64::MAX)
    }

    /// Flush everything appended so far unless `index` became durable while this caller
    /// waited for the lock (then a concurrent flush already covered it: group commit).
    fn flush_covering(&self, index: u64) -> Result<u64> {
        let mut fs = self.flush_state.lock();
        let b = *self.bounds.read();
        let flushed = self.flushed_index.load(Ordering::Acquire);
        if b.last_index <= flushed || index <= flushed {
            return Ok(flushed);
        }
        self.msync_log(fs.flushed_end_pos.max(b.min_pos), b.end_pos)?;
        fs.flushed_end_pos = b.end_pos;
        self.flushed_index.store(b.last_index, Ordering::Release);
        self.flush_count.fetch_add(1, Ordering::Relaxed);
        if fs.index_synced_at.elapsed() >= INDEX_SYNC_INTERVAL {
            self.sync_index(&mut fs)?;
        }
        Ok(b.last_index)
    }

    /// fsync index slots up to the flushed index and move the recovery checkpoint there.
    /// The checkpoint is a hint written without fsync: any version on disk was written after
    /// the syncs that cover it.
    fn sync_index(&self, fs: &mut FlushState) -> Result<()> {
        let b = *self.bounds.read();
        let flushed = self.flushed_index.load(Ordering::Acquire).min(b.last_index);
        if flushed > fs.index_synced {
            self.index.flush(fs.index_synced.max(b.first_index.saturating_sub(1)) + 1, flushed)?;
        }
        fs.index_synced = flushed;
        fs.index_synced_at = std::time::Instant::now();
        self.write_checkpoint(fs, false)
    }

    /// fsync the newest segment and index file (used on open).
    fn sync_tail(&self) -> Result<()> {
        if let Some((_, seg)) = self.segments.read().last_key_value() {
            seg.sync_all()?;
        }
        self.index.sync_last()
    }

    /// Fault in the log up to `to`, a chunk at a time, as far as segments exist (the
    /// prefault thread; the writer creates segments). Holds no lock while it faults.
    fn prefault_to(&self, to: u64) {
        let seg = self.seg_size();
        loop {
            let at = self.prefaulted_to.load(Ordering::Acquire);
            if at >= to {
                return;
            }
            let base = at - at % seg;
            let Some(file) = self.segments.read().get(&base).cloned() else { return };
            let off = at - base;
            let len = PREFAULT_CHUNK_BYTES.min(seg - off);
            file.prefault_write(off as usize, len as usize);
            // Not past a truncation that lowered the mark meanwhile: then start again there.
            let _ = self.prefaulted_to.compare_exchange(at, at + len, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn msync_log(&self, from: u64, to: u64) -> Result<()> {
        let seg = self.seg_size();
        let mut pos = from;
        while pos < to {
            let base = pos - pos % seg;
            let stop = to.min(base + seg);
            if let Some(file) = self.segment(base) {
                file.flush_range((pos - base) as usize, (stop - pos) as usize)?;
            }
            pos = stop;
        }
        Ok(())
    }

    fn write_checkpoint(&self, fs: &mut FlushState, sync: bool) -> Result<()> {
        let b = *self.bounds.read();
        let flushed = fs.index_synced.min(self.flushed_index.load(Ordering::Acquire)).min(b.last_index);
        let (flushed_pos, flushed_term) = if flushed >= b.first_index {
            let e = self.index.get(flushed).ok_or_else(|| corrupt("index", format!("slot {flushed} unreadable")))?;
            (e.pos, e.term)
        } else {
            (b.min_pos, b.prev_term)
        };
        let cp = LogCheckpoint {
            flushed_index: flushed,
            flushed_pos,
            flushed_term,
            prev_index: b.first_index - 1,
            prev_term: b.prev_term,
            min_pos: b.min_pos,
            segment_size_bytes: self.cfg.segment_size_bytes,
            index_entries_per_file: self.cfg.index_entries_per_file,
        };
        fs.checkpoint.write(&cp.encode())?;
        if sync {
            fs.checkpoint.sync()?;
        }
        Ok(())
    }

    /// Verify and lend the entry at `pos`, which must be below the published end.
    fn entry_at(&self, guard: GatePass, pos: u64, b: &Bounds) -> Result<EntryRef> {
        if pos < b.min_pos || pos >= b.end_pos {
            return Err(StorageError::PosOutOfRange { pos, min_pos: b.min_pos, max_pos: b.end_pos });
        }
        let seg = self.seg_size();
        let base = pos - pos % seg;
        let off = (pos % seg) as usize;
        let segment = self.segment(base).ok_or_else(|| corrupt(format!("pos {pos}"), "segment file missing"))?;
        let where_ = || format!("commitlog pos {pos}");
        let avail = (seg as usize - off).min(HEADER_SIZE);
        if avail < 4 {
            return Err(StorageError::Invalid(format!("no entry at pos {pos} (segment end)")));
        }
        // SAFETY: published region; writers stay out (truncation guard held).
        let header = match frame::decode_frame(unsafe { segment.slice(off, avail) }, where_)? {
            Frame::Entry(h) => h,
            Frame::Blank => return Err(StorageError::Invalid(format!("no entry at pos {pos} (segment padding)"))),
            Frame::Empty => return Err(corrupt(where_(), "zero bytes inside the published log")),
        };
        if header.pos != pos {
            return Err(corrupt(where_(), format!("header says pos {}", header.pos)));
        }
        if off + header.total_size as usize > seg as usize || header.body_len() > self.cfg.entry_size_max_bytes as usize
        {
            return Err(corrupt(where_(), format!("impossible size {}", header.total_size)));
        }
        if header.index < b.first_index || header.index > b.last_index {
            return Err(corrupt(where_(), format!("header index {} outside the log", header.index)));
        }
        // SAFETY: as above, size checked against the segment.
        let body = unsafe { segment.slice(off + HEADER_SIZE, header.body_len()) };
        frame::verify_body(&header, body, where_)?;
        Ok(EntryRef { _truncation_guard: guard, segment, offset: off, header })
    }

    pub(crate) fn read(&self, index: u64) -> Result<EntryRef> {
        let guard = self.truncation.enter();
        let b = *self.bounds.read();
        if index < b.first_index || index > b.last_index {
            return Err(StorageError::IndexOutOfRange { index, first_index: b.first_index, last_index: b.last_index });
        }
        let slot = self.index.get(index).ok_or_else(|| corrupt(format!("index slot {index}"), "slot CRC mismatch"))?;
        let entry = self.entry_at(guard, slot.pos, &b)?;
        if entry.index() != index || entry.term() != slot.term || entry.size_bytes() != slot.size {
            return Err(corrupt(
                format!("index slot {index}"),
                format!("points at entry index {} term {} (slot term {})", entry.index(), entry.term(), slot.term),
            ));
        }
        Ok(entry)
    }

    fn read_at_pos(&self, pos: u64) -> Result<EntryRef> {
        let guard = self.truncation.enter();
        let b = *self.bounds.read();
        self.entry_at(guard, pos, &b)
    }

    fn truncate_from(&self, index: u64) -> Result<()> {
        let mut w = self.writer.lock();
        let mut fs = self.flush_state.lock();
        let _t = self.truncation.exclusive();
        let b = *self.bounds.read();
        if index > b.last_index {
            return Ok(());
        }
        if index < b.first_index {
            return Err(StorageError::IndexOutOfRange { index, first_index: b.first_index, last_index: b.last_index });
        }
        let (new_end, new_last_term, new_last_pos) = if index == b.first_index {
            (b.min_pos, b.prev_term, b.min_pos)
        } else {
            let prev = self
                .index
                .get(index - 1)
                .ok_or_else(|| corrupt(format!("index slot {}", index - 1), "slot CRC mismatch"))?;
            (prev.pos + prev.size as u64, prev.term, prev.pos)
        };
        let seg = self.seg_size();
        {
            let mut segments = self.segments.write();
            let doomed: Vec<u64> = segments.range(new_end..).map(|(k, _)| *k).collect();
            for base in doomed {
                let file = segments.remove(&base).expect("listed");
                std::fs::remove_file(file.path()).at(file.path())?;
            }
            let off = new_end % seg;
            if off != 0
                && let Some(file) = segments.get(&(new_end - off))
            {
                // Zero everything after the new end (padding included) so no stale frame can
                // ever be mistaken for a successor of the new last entry.
                file.zero_range(off as usize, (seg - off) as usize)?;
                file.sync_all()?;
            }
        }
        mapped_file::sync_dir(&self.seg_dir)?;
        self.index.truncate_from(index)?;
        {
            let mut bounds = self.bounds.write();
            bounds.last_index = index - 1;
            bounds.last_term = new_last_term;
            bounds.end_pos = new_end;
            bounds.last_pos = new_last_pos;
            if bounds.is_empty() {
                bounds.min_pos = new_end;
            }
        }
        if self.flushed_index.load(Ordering::Acquire) > index - 1 {
            self.flushed_index.store(index - 1, Ordering::Release);
        }
        fs.flushed_end_pos = fs.flushed_end_pos.min(new_end);
        fs.index_synced = fs.index_synced.min(index - 1);
        w.prefault_requested_to = w.prefault_requested_to.min(new_end);
        self.prefaulted_to.fetch_min(new_end, Ordering::AcqRel);
        // Durable right away: the on-disk checkpoint must never point at truncated entries.
        self.write_checkpoint(&mut fs, true)?;
        tracing::info!(from_index = index, removed = b.last_index - index + 1, "commitlog truncated");
        Ok(())
    }

    fn delete_segments_before(&self, keep_from_index: u64) -> Result<Vec<u64>> {
        let _w = self.writer.lock();
        let b = *self.bounds.read();
        if b.is_empty() {
            return Ok(Vec::new());
        }
        let keep = keep_from_index.min(b.last_index);
        let bases: Vec<u64> = self.segments.read().keys().copied().collect();
        // Segment i can go when segment i+1 starts at an index <= keep (so everything in i is
        // below keep). The last segment always stays.
        let mut doomed = Vec::new();
        let mut new_first = None;
        for pair in bases.windows(2) {
            let next_base = pair[1];
            let next_first = self.read_at_pos(next_base.max(b.min_pos))?.index();
            if next_first <= keep {
                doomed.push(pair[0]);
                new_first = Some((next_base, next_first));
            } else {
                break;
            }
        }
        let Some((new_min_pos, new_first_index)) = new_first else { return Ok(Vec::new()) };
        let prev_term = self
            .index
            .get(new_first_index - 1)
            .map(|e| e.term)
            .ok_or_else(|| corrupt(format!("index slot {}", new_first_index - 1), "slot CRC mismatch"))?;
        {
            let mut bounds = self.bounds.write();
            bounds.first_index = new_first_index;
            bounds.prev_term = prev_term;
            bounds.min_pos = new_min_pos;
        }
        // Durable before the files go, so a crash in between never loses the start.
        {
            let mut fs = self.flush_state.lock();
            self.write_checkpoint(&mut fs, true)?;
        }
        {
            let mut segments = self.segments.write();
            for base in &doomed {
                if let Some(file) = segments.remove(base) {
                    std::fs::remove_file(file.path()).at(file.path())?;
                }
            }
        }
        self.index.delete_before(new_first_index)?;
        mapped_file::sync_dir(&self.seg_dir)?;
        tracing::info!(segments = doomed.len(), first_index = new_first_index, "commitlog segments deleted");
        Ok(doomed)
    }
}

/// Directory of a log's segments (for tests and tools).
pub fn segment_dir(dir: &Path) -> PathBuf {
    dir.join("commitlog")
}

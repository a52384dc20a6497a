//! [`RaftLog`] over the storage crate's [`CommitLog`]: the commitlog *is* the Raft log
//! (entry index = Raft index, every entry carries its term), so a message body is written
//! once, by the append that replicates it.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use wasmq_raft::{Entry, RaftLog};
use wasmq_storage::StorageError;
use wasmq_storage::commitlog::CommitLog;

/// Most payload bytes [`RecentEntries`] keeps: twice a follower's in-flight window
/// (`RaftConfig::inflight_bytes_max`, 8 MiB), so a follower that keeps up is served from it.
const RECENT_BYTES_MAX: usize = 16 << 20;
/// Most entries it keeps (16 Ki of 1 KiB messages fill `RECENT_BYTES_MAX`).
const RECENT_ENTRIES_MAX: usize = 16 * 1024;

pub struct CommitLogRaftLog {
    log: Arc<CommitLog>,
    recent: RecentEntries,
}

/// The entries this member appended as leader most recently, as the very `Bytes` it
/// appended. A leader sends every entry to each follower right after appending it; from
/// here that is a reference-counted clone per follower, where a read of the mapped segment
/// cost an index lookup, a CRC check and a copy per follower per entry.
///
/// Invariant: when not empty, it holds a contiguous run of entries ending at the log's
/// last index, each with the term and bytes the log holds at that index. Leader appends
/// extend it; truncation cuts it with the log; a follower append (entries from elsewhere)
/// empties it.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl RecentEntries {
    fn push(&mut self, entry: Entry) {
        if let Some(back) = self.entries.back() {
            assert_eq!(back.index + 1, entry.index, "recent entries stay contiguous");
        }
        self.bytes += entry.data.len();
        self.entries.push_back(entry);
        while self.bytes > RECENT_BYTES_MAX || self.entries.len() > RECENT_ENTRIES_MAX {
            let old = self.entries.pop_front().expect("over a bound, so not empty");
            self.bytes -= old.data.len();
        }
    }

    /// Drops entries `index ..`.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let gone = self.entries.pop_back().expect("checked");
            self.bytes -= gone.data.len();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries from `from` on, if `from` is held.
    fn from(&self, from: u64) -> Option<impl Iterator<Item = &Entry>> {
        let first = self.entries.front()?.index;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        (skip < self.entries.len()).then(|| self.entries.range(skip..))
    }
}

/// At most `count_max` of `entries` and, after the first, at most `bytes_max` payload bytes.
/// (An entry is taken from `entries` only while there is room by count: each may be a read.)
fn take_batch<E>(
    mut entries: impl Iterator<Item = Result<Entry, E>>,
    bytes_max: usize,
    count_max: usize,
) -> Result<Vec<Entry>, E> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < count_max {
        let Some(entry) = entries.next() else { break };
        let entry = entry?;
        if !out.is_empty() && bytes + entry.data.len() > bytes_max {
            break;
        }
        bytes += entry.data.len();
        out.push(entry);
    }
    Ok(out)
}

impl CommitLogRaftLog {
    pub fn new(log: Arc<CommitLog>) -> Self {
        CommitLogRaftLog { log, recent: RecentEntries::default() }
    }

    pub fn commit_log(&self) -> &Arc<CommitLog> {
        &self.log
    }
}

impl RaftLog for CommitLogRaftLog {
    type Error = StorageError;

    fn first_index(&self) -> u64 {
        self.log.first_index()
    }

    fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    fn last_term(&self) -> u64 {
        self.log.last_term()
    }

    fn term_at(&self, index: u64) -> Result<Option<u64>, StorageError> {
        Ok(self.log.term_at(index))
    }

    fn entries(&self, from: u64, bytes_max: usize, count_max: usize) -> Result<Vec<Entry>, StorageError> {
        if let Some(recent) = self.recent.from(from) {
            // The log's end is read (a lock) only to check the invariant, not per batch in
            // release builds: this path runs once per follower per batch.
            debug_assert_eq!(
                self.recent.entries.back().map(|e| e.index),
                Some(self.log.last_index()),
                "recent entries end at the log's end"
            );
            return take_batch(recent.map(|e| Ok(e.clone())), bytes_max, count_max);
        }
        let last = self.log.last_index();
        let read = (from..=last).map(|index| {
            let e = self.log.read(index)?;
            // The one copy out of the mapped segment; the transport moves these bytes as is.
            Ok(Entry { index: e.index(), term: e.term(), data: Bytes::copy_from_slice(e.body()) })
        });
        take_batch(read, bytes_max, count_max)
    }

    fn append_leader(&mut self, term: u64, data: &[Bytes]) -> Result<Range<u64>, StorageError> {
        let bodies: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
        let range = self.log.append(term, &bodies);
        match &range {
            Ok(range) => {
                assert_eq!(range.end - range.start, data.len() as u64, "one index per appended body");
                for (index, data) in range.clone().zip(data) {
                    self.recent.push(Entry { index, term, data: data.clone() });
                }
            }
            // What reached the log of a failed append is unknown here: hold nothing.
            Err(_) => self.recent.clear(),
        }
        range
    }

    fn append_follower(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.recent.clear();
        let tuples: Vec<(u64, u64, &[u8])> = entries.iter().map(|e| (e.index, e.term, e.data.as_ref())).collect();
        self.log.append_replicated(&tuples)
    }

    fn truncate_from(&mut self, index: u64) -> Result<(), StorageError> {
        let result = self.log.truncate_from(index);
        match result {
            Ok(()) => self.recent.truncate_from(index),
            Err(_) => self.recent.clear(),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_storage::commitlog::CommitLogConfig;

    fn open(dir: &std::path::Path) -> CommitLogRaftLog {
        CommitLogRaftLog::new(Arc::new(CommitLog::open(CommitLogConfig::small(dir)).unwrap().0))
    }

    fn bodies(n: usize, tag: u8, len: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(vec![tag.wrapping_add(i as u8); len + i % 7])).collect()
    }

    /// What the log itself holds from `from`, read from the segment (the path without
    /// recent entries), with the same limits.
    fn read_back(log: &CommitLogRaftLog, from: u64, bytes_max: usize, count_max: usize) -> Vec<Entry> {
        CommitLogRaftLog::new(log.commit_log().clone()).entries(from, bytes_max, count_max).unwrap()
    }

    #[test]
    fn recent_entries_answer_as_the_log_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let range = log.append_leader(1, &bodies(40, 1, 100)).unwrap();
        assert_eq!(range, 1..41);
        log.append_leader(2, &bodies(10, 9, 300)).unwrap();
        for (from, bytes_max, count_max) in
            [(1, 1 << 20, 1024), (5, 700, 1024), (38, 1 << 20, 4), (50, 1, 1), (41, 0, 8)]
        {
            let served = log.entries(from, bytes_max, count_max).unwrap();
            assert!(log.recent.from(from).is_some(), "from {from} is held");
            assert_eq!(served, read_back(&log, from, bytes_max, count_max), "from {from}");
            assert!(!served.is_empty());
        }
        assert!(log.entries(51, 1 << 20, 1024).unwrap().is_empty());

        // A truncated tail leaves both; appends after it are the new entries.
        log.truncate_from(45).unwrap();
        assert_eq!(log.last_index(), 44);
        assert_eq!(log.recent.entries.back().unwrap().index, 44);
        log.append_leader(3, &bodies(3, 77, 50)).unwrap();
        let served = log.entries(43, 1 << 20, 1024).unwrap();
        assert_eq!(
            served.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            [(43, 2), (44, 2), (45, 3), (46, 3), (47, 3)]
        );
        assert_eq!(served, read_back(&log, 43, 1 << 20, 1024));

        // Entries from another leader: nothing recent is kept, the log answers.
        let theirs: Vec<Entry> =
            (48..51).map(|index| Entry { index, term: 4, data: Bytes::from(vec![index as u8; 64]) }).collect();
        log.append_follower(&theirs).unwrap();
        assert!(log.recent.entries.is_empty());
        assert_eq!(log.entries(47, 1 << 20, 1024).unwrap(), read_back(&log, 47, 1 << 20, 1024));
        assert_eq!(&log.entries(48, 1 << 20, 1024).unwrap()[..], &theirs[..]);
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CommitLogConfig::new(dir.path());
        cfg.segment_size_bytes = 64 << 20;
        let mut log = CommitLogRaftLog::new(Arc::new(CommitLog::open(cfg).unwrap().0));
        // Small entries: the count bound.
        for _ in 0..(RECENT_ENTRIES_MAX / 1000 + 2) {
            log.append_leader(1, &bodies(1000, 3, 8)).unwrap();
        }
        assert_eq!(log.recent.entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(log.recent.entries.back().unwrap().index, log.last_index());
        let oldest = log.recent.entries.front().unwrap().index;
        assert!(log.recent.from(oldest - 1).is_none(), "older entries come from the log");
        assert_eq!(log.entries(oldest - 5, 1 << 20, 10).unwrap(), read_back(&log, oldest - 5, 1 << 20, 10));
        // Large entries: the byte bound.
        for _ in 0..40 {
            log.append_leader(1, &bodies(16, 5, 32 * 1024)).unwrap(); // 20 MiB in all
        }
        assert!(log.recent.bytes <= RECENT_BYTES_MAX, "{} bytes", log.recent.bytes);
        assert_eq!(log.recent.bytes, log.recent.entries.iter().map(|e| e.data.len()).sum::<usize>());
        assert!(log.recent.bytes > RECENT_BYTES_MAX - 64 * 1024);
    }
}

//! The log abstraction the node drives, and an in-memory implementation for the simulation
//! and tests.

use std::ops::Range;

use bytes::Bytes;

use crate::Entry;

/// The replicated log as the node sees it. Indexes start at 1; an empty log has
/// `last_index() == 0` and `last_term() == 0`.
///
/// Durability is not part of this trait: the runtime flushes (one fsync per batch of
/// appends) and reports the flushed index with [`crate::RaftNode::on_flushed`]. A log that
/// is reopened after a crash must contain exactly the entries that were flushed (or more:
/// unflushed entries that happened to reach the disk are harmless).
pub trait RaftLog {
    type Error: std::error::Error + Send + Sync + 'static;

    /// First index still stored. Entries below it were removed by retention and must have
    /// been committed.
    fn first_index(&self) -> u64;
    fn last_index(&self) -> u64;
    fn last_term(&self) -> u64;
    /// Term of entry `index`: `Some(0)` for index 0, `Some(term)` for
    /// `first_index()-1 ..= last_index()` when known, `None` outside.
    fn term_at(&self, index: u64) -> Result<Option<u64>, Self::Error>;
    /// Entries from `from` (inclusive), at most `count_max` and, except for the first one,
    /// at most `bytes_max` payload bytes. At least one entry if `from <= last_index()`.
    fn entries(&self, from: u64, bytes_max: usize, count_max: usize) -> Result<Vec<Entry>, Self::Error>;
    /// Leader append of new entries in `term`; returns their index range.
    fn append_leader(&mut self, term: u64, data: &[Bytes]) -> Result<Range<u64>, Self::Error>;
    /// Follower append; `entries[0].index == last_index() + 1`, contiguous.
    fn append_follower(&mut self, entries: &[Entry]) -> Result<(), Self::Error>;
    /// Removes entries `index ..`; `index > commit index` always.
    fn truncate_from(&mut self, index: u64) -> Result<(), Self::Error>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemLogError {
    #[error("append at {got} but last index is {last}")]
    NotContiguous { got: u64, last: u64 },
    #[error("entry term {term} below last term {last_term}")]
    TermRegression { term: u64, last_term: u64 },
}

/// In-memory log with an explicit flush point, so the simulation can model a crash that
/// loses unflushed entries.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    entries: Vec<Entry>,
    flushed: u64,
}

impl MemLog {
    pub fn new() -> Self {
        MemLog::default()
    }

    /// Makes every entry durable; returns the flushed index.
    pub fn flush(&mut self) -> u64 {
        self.flushed = self.last_index();
        self.flushed
    }

    pub fn flushed_index(&self) -> u64 {
        self.flushed
    }

    /// What survives a crash: the flushed prefix.
    pub fn crash(&mut self) {
        self.entries.truncate(self.flushed as usize);
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1)
    }

    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    fn push(&mut self, entry: Entry) -> Result<(), MemLogError> {
        let last = self.last_index();
        if entry.index != last + 1 {
            return Err(MemLogError::NotContiguous { got: entry.index, last });
        }
        if entry.term < self.last_term() {
            return Err(MemLogError::TermRegression { term: entry.term, last_term: self.last_term() });
        }
        self.entries.push(entry);
        Ok(())
    }
}

impl RaftLog for MemLog {
    type Error = MemLogError;

    fn first_index(&self) -> u64 {
        1
    }

    fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.term)
    }

    fn term_at(&self, index: u64) -> Result<Option<u64>, MemLogError> {
        if index == 0 {
            return Ok(Some(0));
        }
        Ok(self.entry(index).map(|e| e.term))
    }

    fn entries(&self, from: u64, bytes_max: usize, count_max: usize) -> Result<Vec<Entry>, MemLogError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from.max(1);
        while let Some(e) = self.entry(index) {
            if out.len() >= count_max || (!out.is_empty() && bytes + e.data.len() > bytes_max) {
                break;
            }
            bytes += e.data.len();
            out.push(e.clone());
            index += 1;
        }
        Ok(out)
    }

    fn append_leader(&mut self, term: u64, data: &[Bytes]) -> Result<Range<u64>, MemLogError> {
        let first = self.last_index() + 1;
        for d in data {
            let index = self.last_index() + 1;
            self.push(Entry { index, term, data: d.clone() })?;
        }
        Ok(first..self.last_index() + 1)
    }

    fn append_follower(&mut self, entries: &[Entry]) -> Result<(), MemLogError> {
        for e in entries {
            self.push(e.clone())?;
        }
        Ok(())
    }

    fn truncate_from(&mut self, index: u64) -> Result<(), MemLogError> {
        assert!(index >= 1, "truncate_from(0)");
        self.entries.truncate(index as usize - 1);
        self.flushed = self.flushed.min(index - 1);
        Ok(())
    }
}

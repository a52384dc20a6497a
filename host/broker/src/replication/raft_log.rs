//! [`RaftLog`] over the storage crate's [`CommitLog`]: the commitlog *is* the Raft log
//! (entry index = Raft index, every entry carries its term), so a message body is written
//! once, by the append that replicates it.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use wasmq_raft::{Entry, RaftLog};
use wasmq_storage::StorageError;
use wasmq_storage::commitlog::CommitLog;

pub struct CommitLogRaftLog {
    log: Arc<CommitLog>,
}

impl CommitLogRaftLog {
    pub fn new(log: Arc<CommitLog>) -> Self {
        CommitLogRaftLog { log }
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
        let last = self.log.last_index();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from;
        while index <= last && out.len() < count_max {
            let e = self.log.read(index)?;
            let body = e.body();
            if !out.is_empty() && bytes + body.len() > bytes_max {
                break;
            }
            bytes += body.len();
            // The one copy out of the mapped segment; the transport moves these bytes as is.
            out.push(Entry { index: e.index(), term: e.term(), data: Bytes::copy_from_slice(body) });
            index += 1;
        }
        Ok(out)
    }

    fn append_leader(&mut self, term: u64, data: &[Bytes]) -> Result<Range<u64>, StorageError> {
        let bodies: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
        self.log.append(term, &bodies)
    }

    fn append_follower(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let tuples: Vec<(u64, u64, &[u8])> = entries.iter().map(|e| (e.index, e.term, e.data.as_ref())).collect();
        self.log.append_replicated(&tuples)
    }

    fn truncate_from(&mut self, index: u64) -> Result<(), StorageError> {
        self.log.truncate_from(index)
    }
}

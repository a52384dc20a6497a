//! Single-node replication (`enableDLegerCommitLog = false`): an entry is committed once it
//! is in the local commitlog (ASYNC_FLUSH) or fsynced (SYNC_FLUSH).
//!
//! One writer thread owns appends. It takes every proposal waiting in its queue, appends
//! them as one batch (one writer-lock acquisition), fsyncs once for the whole batch under
//! SYNC_FLUSH (group commit), calls the commit hook, publishes the new commit index, then
//! answers each proposer with its own index range. A thread, not a task: appends and fsyncs block.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use wasmq_storage::commitlog::CommitLog;

use super::{
    CommitHook, CommittedRange, EntryIndex, PROPOSE_ENTRIES_MAX, ReplicationError, ReplicationStatus, Replicator, Role,
};
use crate::config::FlushDiskType;

/// Proposals queued for the writer thread; more wait in `propose` (backpressure).
const QUEUE_PROPOSALS_MAX: usize = 1024;
/// One writer batch: bounded so that one fsync does not hold many producers hostage to a
/// single huge write, and within the commitlog's per-append limits.
const BATCH_ENTRIES_MAX: usize = 8192;
const BATCH_BYTES_MAX: u64 = 64 << 20;

struct Proposal {
    payloads: Vec<Bytes>,
    bytes: u64,
    reply: oneshot::Sender<Result<CommittedRange, ReplicationError>>,
}

pub struct StandaloneReplicator {
    log: Arc<CommitLog>,
    self_id: String,
    /// `None` after shutdown. Proposers clone it out; the writer thread exits once every
    /// clone is gone and the queue is drained.
    queue: parking_lot::RwLock<Option<mpsc::Sender<Proposal>>>,
    committed_rx: watch::Receiver<EntryIndex>,
    /// Shared with the writer thread, which calls it on every commit.
    commit_hook: Arc<OnceLock<CommitHook>>,
    stopping: Arc<AtomicBool>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    entry_size_max_bytes: u64,
}

impl StandaloneReplicator {
    /// Starts the writer thread. Everything already in `log` counts as committed: a
    /// standalone log has no uncommitted suffix to repair.
    pub fn start(
        log: Arc<CommitLog>,
        self_id: String,
        flush: FlushDiskType,
    ) -> Result<StandaloneReplicator, ReplicationError> {
        let (committed_tx, committed_rx) = watch::channel(log.last_index());
        let (queue, queue_rx) = mpsc::channel(QUEUE_PROPOSALS_MAX);
        let stopping = Arc::new(AtomicBool::new(false));
        let entry_size_max_bytes = u64::from(log.config().entry_size_max_bytes);
        let writer_log = log.clone();
        let commit_hook = Arc::new(OnceLock::new());
        let writer_hook = commit_hook.clone();
        let writer = std::thread::Builder::new()
            .name("wasmq-standalone-writer".into())
            .spawn(move || writer_loop(writer_log, flush, queue_rx, committed_tx, writer_hook))
            .map_err(|e| ReplicationError::Storage(format!("spawn writer thread: {e}")))?;
        Ok(StandaloneReplicator {
            log,
            self_id,
            queue: parking_lot::RwLock::new(Some(queue)),
            committed_rx,
            commit_hook,
            stopping,
            writer: parking_lot::Mutex::new(Some(writer)),
            entry_size_max_bytes,
        })
    }
}

fn writer_loop(
    log: Arc<CommitLog>,
    flush: FlushDiskType,
    mut queue: mpsc::Receiver<Proposal>,
    committed: watch::Sender<EntryIndex>,
    commit_hook: Arc<OnceLock<CommitHook>>,
) {
    let mut batch: Vec<Proposal> = Vec::new();
    // `blocking_recv` returns None once every sender is gone (shutdown) and the queue is empty.
    while let Some(first) = queue.blocking_recv() {
        let mut entries = first.payloads.len();
        let mut bytes = first.bytes;
        batch.push(first);
        while entries < BATCH_ENTRIES_MAX && bytes < BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(p) => {
                    entries += p.payloads.len();
                    bytes += p.bytes;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let result = write_batch(&log, flush, &batch, entries);
        match result {
            Ok((first_index, last_index, term)) => {
                if let Some(hook) = commit_hook.get() {
                    hook(last_index);
                }
                committed.send_modify(|c| {
                    assert!(*c < first_index, "commit index {c} ahead of new entries");
                    *c = last_index;
                });
                let mut next = first_index;
                for p in batch.drain(..) {
                    let n = p.payloads.len() as u64;
                    let range = CommittedRange { first: next, last: next + n - 1, term };
                    next += n;
                    // A proposer that gave up (dropped its future) still had its entries
                    // committed; nothing to undo.
                    let _ = p.reply.send(Ok(range));
                }
                assert_eq!(next, last_index + 1);
            }
            Err(e) => {
                tracing::error!(error = %e, proposals = batch.len(), "commitlog append failed");
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(ReplicationError::Storage(e.to_string())));
                }
            }
        }
    }
    if let Err(e) = log.flush() {
        tracing::error!(error = %e, "final commitlog flush failed");
    }
}

/// Appends the whole batch in one call and, under SYNC_FLUSH, makes it durable with one
/// fsync. Returns (first index, last index, term).
fn write_batch(
    log: &CommitLog,
    flush: FlushDiskType,
    batch: &[Proposal],
    entries: usize,
) -> Result<(EntryIndex, EntryIndex, u64), wasmq_storage::error::StorageError> {
    let bodies: Vec<&[u8]> = batch.iter().flat_map(|p| p.payloads.iter().map(|b| b.as_ref())).collect();
    assert_eq!(bodies.len(), entries);
    // Standalone nodes never change term; keep whatever the log has (0 when new).
    let term = log.last_term();
    let range = log.append(term, &bodies)?;
    assert_eq!(range.end - range.start, entries as u64);
    let last = range.end - 1;
    if flush == FlushDiskType::SyncFlush {
        let flushed = log.flush_to(last)?;
        assert!(flushed >= last, "flush_to({last}) returned {flushed}");
    }
    Ok((range.start, last, term))
}

#[async_trait]
impl Replicator for StandaloneReplicator {
    async fn propose(&self, payloads: Vec<Bytes>) -> Result<CommittedRange, ReplicationError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ReplicationError::ShuttingDown);
        }
        if payloads.is_empty() || payloads.len() > PROPOSE_ENTRIES_MAX {
            return Err(ReplicationError::Rejected(format!(
                "{} entries; a proposal holds 1..={PROPOSE_ENTRIES_MAX}",
                payloads.len()
            )));
        }
        let mut bytes = 0u64;
        for p in &payloads {
            if p.len() as u64 > self.entry_size_max_bytes {
                return Err(ReplicationError::Rejected(format!(
                    "entry of {} bytes exceeds the {}-byte entry limit",
                    p.len(),
                    self.entry_size_max_bytes
                )));
            }
            bytes += p.len() as u64;
        }
        let n = payloads.len() as u64;
        let (reply, reply_rx) = oneshot::channel();
        let queue = self.queue.read().clone().ok_or(ReplicationError::ShuttingDown)?;
        queue.send(Proposal { payloads, bytes, reply }).await.map_err(|_| ReplicationError::ShuttingDown)?;
        let range = reply_rx.await.map_err(|_| ReplicationError::ShuttingDown)??;
        assert_eq!(range.len(), n);
        Ok(range)
    }

    fn status(&self) -> ReplicationStatus {
        ReplicationStatus {
            self_id: self.self_id.clone(),
            role: Role::Standalone,
            term: self.log.last_term(),
            leader_id: Some(self.self_id.clone()),
            commit_index: *self.committed_rx.borrow(),
            last_index: self.log.last_index(),
            peers: Vec::new(),
        }
    }

    fn committed(&self) -> watch::Receiver<EntryIndex> {
        self.committed_rx.clone()
    }

    fn set_commit_hook(&self, hook: CommitHook) -> bool {
        let _ = self.commit_hook.set(hook);
        true
    }

    async fn transfer_leadership(&self, target_id: &str) -> Result<(), ReplicationError> {
        Err(ReplicationError::Transfer(format!(
            "standalone broker `{}` has no peers; cannot transfer to `{target_id}`",
            self.self_id
        )))
    }

    async fn shutdown(&self) -> Result<(), ReplicationError> {
        self.stopping.store(true, Ordering::Release);
        // Dropping our sender lets the writer finish the queued proposals (their callers
        // still get answers), flush, and exit.
        drop(self.queue.write().take());
        let handle = self.writer.lock().take();
        let Some(handle) = handle else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| ReplicationError::Storage(format!("join writer: {e}")))?
            .map_err(|_| ReplicationError::Storage("writer thread panicked".into()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmq_storage::commitlog::{CommitLogConfig, FlushMode};

    fn open(dir: &std::path::Path, flush: FlushDiskType) -> Arc<CommitLog> {
        let mut cfg = CommitLogConfig::small(dir);
        cfg.flush_mode = match flush {
            FlushDiskType::SyncFlush => FlushMode::Sync,
            FlushDiskType::AsyncFlush => FlushMode::Async,
        };
        Arc::new(CommitLog::open(cfg).unwrap().0)
    }

    async fn concurrent_proposals_get_disjoint_contiguous_ranges(flush: FlushDiskType) {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), flush);
        let r = Arc::new(StandaloneReplicator::start(log.clone(), "b".into(), flush).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u32 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let mut ranges = Vec::new();
                for i in 0..50u32 {
                    let n = (i % 3 + 1) as usize;
                    let payloads = (0..n).map(|k| Bytes::from(format!("{t}-{i}-{k}"))).collect();
                    ranges.push((t, i, r.propose(payloads).await.unwrap()));
                }
                ranges
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_by_key(|(_, _, r)| r.first);
        let mut next = 1;
        for (t, i, range) in &all {
            assert_eq!(range.first, next);
            next = range.last + 1;
            // Each entry holds what its proposer sent, in order.
            for (k, index) in range.indexes().enumerate() {
                let entry = log.read(index).unwrap();
                assert_eq!(entry.body(), format!("{t}-{i}-{k}").as_bytes());
            }
        }
        assert_eq!(*r.committed().borrow(), next - 1);
        assert_eq!(r.status().commit_index, next - 1);
        assert_eq!(r.status().role, Role::Standalone);
        if flush == FlushDiskType::SyncFlush {
            assert!(log.flushed_index() >= next - 1);
        }
        r.shutdown().await.unwrap();
        assert!(matches!(r.propose(vec![Bytes::from_static(b"x")]).await, Err(ReplicationError::ShuttingDown)));
        drop(r);
        drop(log);
        // Reopened: everything is there and counts as committed.
        let log = open(dir.path(), flush);
        let r = StandaloneReplicator::start(log, "b".into(), flush).unwrap();
        assert_eq!(*r.committed().borrow(), next - 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_flush_group_commit() {
        concurrent_proposals_get_disjoint_contiguous_ranges(FlushDiskType::SyncFlush).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_flush() {
        concurrent_proposals_get_disjoint_contiguous_ranges(FlushDiskType::AsyncFlush).await;
    }

    #[tokio::test]
    async fn limits_are_rejected_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), FlushDiskType::AsyncFlush);
        let r = StandaloneReplicator::start(log.clone(), "b".into(), FlushDiskType::AsyncFlush).unwrap();
        assert!(matches!(r.propose(vec![]).await, Err(ReplicationError::Rejected(_))));
        let big = Bytes::from(vec![0u8; 64 * 1024 + 1]);
        assert!(matches!(r.propose(vec![big]).await, Err(ReplicationError::Rejected(_))));
        assert_eq!(log.last_index(), 0);
        assert!(r.transfer_leadership("n1").await.is_err());
        r.shutdown().await.unwrap();
    }
}

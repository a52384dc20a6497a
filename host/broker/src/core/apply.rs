//! Applying committed entries: commit index → derived state.
//!
//! Every apply is one [`BrokerCore::apply_step`] under one lock: the step applies
//! `applied+1 ..= to` (bounded), records placements, publishes the applied index (which wakes
//! long polls) and wakes the senders it covers. Two callers take steps:
//! - the replicator's **commit hook** ([`BrokerCore::on_commit`]), on the replicator's own
//!   thread, before it answers the proposals the commit covers. The common path: a sender
//!   wakes once, to its entry applied. Before, a commit woke an apply thread, which then
//!   woke the sender a second time; on a small VM every wake-up costs tens of microseconds
//!   of CPU, and those two were on every send's critical path;
//! - the **apply loop** ([`spawn`]), on a thread of its own, for whatever the hook left: a
//!   step already running, more than one step's worth behind (a follower catching up), a
//!   failed apply (retried), or a replicator without a hook (it then follows `committed`).
//!
//! Entries are applied once each, in index order, whoever applies them, so queue offsets
//! are the same on every replica.
//!
//! The store's **checkpoints** are the loop's alone: the hook only hands one over when it is
//! due. Why: a checkpoint flushes the log and the consume queues and fsyncs a file, which
//! took up to 16 ms (`perf` at 64 producers, sched-switch stacks of the Raft thread in
//! `msync`); on the hook that stalled every send in flight on the member, once per 100,000
//! entries. The checkpoint holds the apply lock only to copy the state, so the hook keeps
//! applying while the loop writes it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use wasmq_storage::StorageError;

use super::BrokerCore;
use crate::replication::EntryIndex;

/// Entries applied per step: bounds the latency one step adds to the senders waiting
/// behind it, and the time the commit hook holds the replicator's thread.
const APPLY_BATCH_ENTRIES_MAX: u64 = 4096;
/// Pause before retrying a failed apply or checkpoint (disk error): the loop must not spin.
const APPLY_RETRY_MS: u64 = 200;

impl BrokerCore {
    /// One apply step through `to` (which must be committed), at most
    /// [`APPLY_BATCH_ENTRIES_MAX`] entries. `applied_tx` is the guard of `apply_lock`: a
    /// step is atomic, so the published applied index only grows. Returns the applied
    /// index after the step.
    fn apply_step(&self, applied_tx: &watch::Sender<EntryIndex>, to: EntryIndex) -> Result<EntryIndex, StorageError> {
        let applied = *applied_tx.borrow();
        if to <= applied {
            return Ok(applied);
        }
        let last_index = self.log.last_index();
        assert!(to <= last_index, "apply through {to} beyond the local log's last index {last_index}");
        let to = to.min(applied + APPLY_BATCH_ENTRIES_MAX);
        let placements = self.store.apply_up_to(to)?;
        let now = self.store.applied_index();
        assert_eq!(now, to, "store applied to {now}, asked for {to}");
        self.record_outcomes(placements);
        applied_tx.send_replace(to);
        self.apply_waiters.applied(to);
        Ok(to)
    }

    /// The replicator's commit hook: one step through `commit` on the caller's thread,
    /// unless a step is running (never waits for the lock: this is the replicator's critical
    /// path). Whatever it leaves goes to the apply loop.
    pub(super) fn on_commit(&self, commit: EntryIndex) {
        self.commit_seen.fetch_max(commit, Ordering::AcqRel);
        let reached = match self.apply_lock.try_lock() {
            Some(applied_tx) => match self.apply_step(&applied_tx, commit) {
                Ok(applied) => applied >= commit,
                Err(e) => {
                    // Debug only: the loop retries and reports it every 200 ms, while this
                    // runs on every commit.
                    tracing::debug!(error = %e, commit, "apply from the commit hook failed; the apply loop retries");
                    false
                }
            },
            None => false,
        };
        if !reached || self.store.checkpoint_due() {
            // Stores a permit if the loop is busy: the hand-over is never lost.
            self.apply_needed.notify_one();
        }
    }
}

/// Runs the apply loop on a dedicated blocking thread with a current-thread runtime.
/// `hooked`: the replicator calls [`BrokerCore::on_commit`], so the loop waits for its
/// hand-overs instead of following every commit.
///
/// The loop holds the core only while it applies a step, never while it waits: a core
/// dropped without [`BrokerCore::stop`] (a start that fails after the core started, a test
/// that panics) ends the loop through its stop channel, so the process's runtime can shut
/// down instead of waiting for this thread forever.
pub(super) fn spawn(core: &Arc<BrokerCore>, hooked: bool, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let loop_state = Loop {
        committed: core.replicator.committed(),
        applied: core.applied.clone(),
        needed: core.apply_needed.clone(),
        hooked,
        stop,
        core: Arc::downgrade(core),
    };
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime for the apply loop");
        runtime.block_on(loop_state.run());
    })
}

struct Loop {
    core: Weak<BrokerCore>,
    committed: watch::Receiver<EntryIndex>,
    applied: watch::Receiver<EntryIndex>,
    needed: Arc<Notify>,
    hooked: bool,
    stop: watch::Receiver<bool>,
}

impl Loop {
    async fn run(mut self) {
        // After a failed checkpoint, the next try waits until then; applying does not.
        let mut checkpoint_retry_at: Option<std::time::Instant> = None;
        loop {
            if *self.stop.borrow() {
                break;
            }
            let Some(core) = self.core.upgrade() else { break };
            // Before the next step: a follower catching up still checkpoints every interval.
            if core.store.checkpoint_due() && checkpoint_retry_at.is_none_or(|at| std::time::Instant::now() >= at) {
                let checkpoint = core.store.checkpoint();
                drop(core);
                checkpoint_retry_at = match checkpoint {
                    Ok(_) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "store checkpoint failed; retrying");
                        Some(std::time::Instant::now() + Duration::from_millis(APPLY_RETRY_MS))
                    }
                };
                continue;
            }
            // The hook sees a commit before the replicator publishes it.
            let commit = (*self.committed.borrow_and_update()).max(core.commit_seen.load(Ordering::Acquire));
            if commit > *self.applied.borrow() {
                let step = core.apply_step(&core.apply_lock.lock(), commit);
                drop(core);
                if let Err(e) = step {
                    tracing::error!(error = %e, from = *self.applied.borrow() + 1, to = commit, "apply failed; retrying");
                    tokio::time::sleep(Duration::from_millis(APPLY_RETRY_MS)).await;
                }
                continue;
            }
            drop(core);
            let hooked = self.hooked;
            tokio::select! {
                changed = self.committed.changed(), if !hooked => {
                    if changed.is_err() {
                        // The replicator is gone: nothing more will commit.
                        break;
                    }
                }
                // With a hook, the loop sleeps until the hook hands it work. No timer
                // backs this up, and none is needed: the hook runs on every commit advance
                // before `committed` is published (and records it in `commit_seen` first);
                // a hook installed after some commits finds the loop not yet started, and
                // the loop's first look covers them; `notify_one` keeps a permit while the
                // loop is busy, so no hand-over is lost.
                () = self.needed.notified() => {}
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        // The core is gone (its stop sender with it).
                        break;
                    }
                }
            }
        }
        if let Some(core) = self.core.upgrade() {
            core.apply_waiters.close();
        }
        tracing::debug!(applied = *self.applied.borrow(), "apply loop stopped");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::{BrokerConfig, FlushDiskType, StoreCheck};
    use crate::core::CoreOptions;
    use crate::replication::Replicator;
    use crate::replication::standalone::StandaloneReplicator;

    async fn start(dir: &std::path::Path) -> (Arc<BrokerCore>, Arc<dyn Replicator>) {
        start_checkpointing_every(dir, wasmq_storage::store::CHECKPOINT_INTERVAL_ENTRIES_DEFAULT).await
    }

    async fn start_checkpointing_every(
        dir: &std::path::Path,
        checkpoint_interval_entries: u64,
    ) -> (Arc<BrokerCore>, Arc<dyn Replicator>) {
        let mut c = BrokerConfig::default();
        c.store_path_root_dir = dir.display().to_string();
        c.mapped_file_size_commit_log = 4 << 20;
        c.max_message_size = 64 * 1024;
        // The shared disk's fill level is not this test's subject.
        c.disk_max_used_space_ratio = 95;
        c.validate(std::path::Path::new("test"), StoreCheck::Create).unwrap();
        let mut store_config = crate::core::store_handle::store_config(&c).unwrap();
        store_config.checkpoint_interval_entries = checkpoint_interval_entries;
        let opened = crate::core::store_handle::open_with(store_config).unwrap();
        let replicator: Arc<dyn Replicator> =
            Arc::new(StandaloneReplicator::start(opened.log.clone(), c.node_id(), FlushDiskType::AsyncFlush).unwrap());
        let core = BrokerCore::start(CoreOptions::from_config(&c), opened, replicator.clone(), None).await.unwrap();
        (core, replicator)
    }

    fn noop() -> Vec<Bytes> {
        vec![Bytes::from(wasmq_storage::Record::Noop.encode().unwrap())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_hook_applies_before_the_proposer_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (core, replicator) = start(dir.path()).await;
        // Without the hook the apply thread races the proposer: some answers would come
        // before their entry is applied.
        for i in 0..200 {
            let range = replicator.propose(noop()).await.unwrap();
            assert!(core.applied_index() >= range.last, "proposal {i}: entry {} answered before applied", range.last);
        }
        replicator.shutdown().await.unwrap();
        core.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_takes_the_checkpoints_the_hook_hands_over_and_apply_goes_on_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (core, replicator) = start_checkpointing_every(dir.path(), 20).await;
        let mut last = 0;
        for _ in 0..100 {
            let range = replicator.propose(noop()).await.unwrap();
            // The hook applied it (the apply is not held up by a checkpoint being written).
            assert!(core.applied_index() >= range.last);
            last = range.last;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while core.store.checkpoint_due() || core.store.checkpointed_index() + 20 <= last {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint near {last}: at {}",
                core.store.checkpointed_index()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(core.store.checkpointed_index() > 0);
        replicator.shutdown().await.unwrap();
        core.stop().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_hook_cannot_apply_the_loop_does() {
        let dir = tempfile::tempdir().unwrap();
        let (core, replicator) = start(dir.path()).await;
        let range = {
            // A step "running": the hook must not wait for it, and hands over instead.
            let _step = core.apply_lock.lock();
            let range = replicator.propose(noop()).await.unwrap();
            assert!(core.applied_index() < range.last, "the hook applied while a step held the lock");
            range
        };
        core.wait_applied(range.last, Duration::from_secs(5)).await.expect("the apply loop took over");
        replicator.shutdown().await.unwrap();
        core.stop().await.unwrap();
    }
}

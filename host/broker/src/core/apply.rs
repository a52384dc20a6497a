//! The apply loop: commit index → derived state.
//!
//! Watches the replicator's commit index and applies `applied+1 ..= commit` in bounded
//! batches on a blocking thread, then publishes the applied index (which wakes long polls
//! and senders waiting for their entry).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::BrokerCore;
use crate::replication::EntryIndex;

/// Entries applied per blocking call: bounds the latency one batch adds to the senders
/// waiting behind it.
const APPLY_BATCH_ENTRIES_MAX: u64 = 4096;
/// Pause before retrying a failed apply (disk error): the loop must not spin.
const APPLY_RETRY_MS: u64 = 200;

pub(super) async fn run(core: Arc<BrokerCore>, applied_tx: watch::Sender<EntryIndex>, mut stop: watch::Receiver<bool>) {
    let mut committed = core.replicator.committed();
    let mut applied = *applied_tx.borrow();
    loop {
        if *stop.borrow() {
            break;
        }
        let commit = *committed.borrow_and_update();
        if commit > applied {
            let last_index = core.log.last_index();
            assert!(commit <= last_index, "commit index {commit} beyond the local log's last index {last_index}");
            let to = commit.min(applied + APPLY_BATCH_ENTRIES_MAX);
            let store = core.store.clone();
            let result = tokio::task::spawn_blocking(move || store.apply_up_to(to)).await;
            match result {
                Ok(Ok(placements)) => {
                    let now = core.store.applied_index();
                    assert_eq!(now, to, "store applied to {now}, asked for {to}");
                    core.record_outcomes(placements);
                    applied = to;
                    applied_tx.send_replace(applied);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, from = applied + 1, to, "apply failed; retrying");
                    tokio::time::sleep(Duration::from_millis(APPLY_RETRY_MS)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "apply task panicked; retrying");
                    tokio::time::sleep(Duration::from_millis(APPLY_RETRY_MS)).await;
                }
            }
            continue;
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    // The replicator is gone: nothing more will commit.
                    break;
                }
            }
            _ = stop.changed() => {}
        }
    }
    tracing::debug!(applied, "apply loop stopped");
}

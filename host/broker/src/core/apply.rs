//! The apply loop: commit index → derived state.
//!
//! Watches the replicator's commit index and applies `applied+1 ..= commit` in bounded
//! batches, then publishes the applied index (which wakes long polls and senders waiting
//! for their entry). The loop has a thread of its own ([`spawn`]): applying blocks (page
//! faults, a new consume-queue file), and handing each step to the blocking pool cost two
//! thread hand-offs per step on the send path.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::BrokerCore;
use crate::replication::EntryIndex;

/// Entries applied per blocking call: bounds the latency one batch adds to the senders
/// waiting behind it.
const APPLY_BATCH_ENTRIES_MAX: u64 = 4096;
/// Pause before retrying a failed apply (disk error): the loop must not spin.
const APPLY_RETRY_MS: u64 = 200;

/// Runs the loop on a dedicated blocking thread with a current-thread runtime.
///
/// The loop holds the core only while it applies a step, never while it waits: a core
/// dropped without [`BrokerCore::stop`] (a start that fails after the core started, a test
/// that panics) ends the loop through its stop channel, so the process's runtime can shut
/// down instead of waiting for this thread forever.
pub(super) fn spawn(
    core: &Arc<BrokerCore>,
    applied_tx: watch::Sender<EntryIndex>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let committed = core.replicator.committed();
    let core = Arc::downgrade(core);
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime for the apply loop");
        runtime.block_on(run(core, committed, applied_tx, stop));
    })
}

async fn run(
    core: Weak<BrokerCore>,
    mut committed: watch::Receiver<EntryIndex>,
    applied_tx: watch::Sender<EntryIndex>,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = *applied_tx.borrow();
    loop {
        if *stop.borrow() {
            break;
        }
        let commit = *committed.borrow_and_update();
        if commit > applied {
            let Some(core) = core.upgrade() else { break };
            let last_index = core.log.last_index();
            assert!(commit <= last_index, "commit index {commit} beyond the local log's last index {last_index}");
            let to = commit.min(applied + APPLY_BATCH_ENTRIES_MAX);
            match core.store.apply_up_to(to) {
                Ok(placements) => {
                    let now = core.store.applied_index();
                    assert_eq!(now, to, "store applied to {now}, asked for {to}");
                    core.record_outcomes(placements);
                    applied = to;
                    applied_tx.send_replace(applied);
                    core.apply_waiters.applied(applied);
                }
                Err(e) => {
                    tracing::error!(error = %e, from = applied + 1, to, "apply failed; retrying");
                    drop(core);
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
            changed = stop.changed() => {
                if changed.is_err() {
                    // The core is gone (its stop sender with it).
                    break;
                }
            }
        }
    }
    if let Some(core) = core.upgrade() {
        core.apply_waiters.close();
    }
    tracing::debug!(applied, "apply loop stopped");
}

//! The core's view of `wasmq_storage::store::MessageStore`: opening it from the broker config
//! and the handful of calls the core makes, in the core's terms.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use wasmq_storage::StorageError;
use wasmq_storage::commitlog::{CommitLog, FlushMode};
use wasmq_storage::record::{MessageRecord, TopicConfigRecord};
use wasmq_storage::store::{Applied, MessageStore, MessageStoreConfig};

use super::Placement;
use crate::config::{BrokerConfig, FlushDiskType};
use crate::replication::EntryIndex;

/// Room for a message's record header (topic, tag, keys, properties, ids) on top of its
/// body: the commitlog's entry limit is `maxMessageSize` plus this.
pub const RECORD_OVERHEAD_BYTES_MAX: u32 = 128 * 1024;

/// A store opened by [`open`], not yet handed to the core.
pub struct OpenedStore {
    pub(super) store: StoreHandle,
    /// The commitlog inside the store: the replicator appends to it.
    pub log: Arc<CommitLog>,
}

#[derive(Clone)]
pub(crate) struct StoreHandle {
    inner: Arc<MessageStore>,
}

/// Opens (creating if needed) the store under `storePathRootDir`. With `storePathCommitLog`
/// set, `<storePathRootDir>/log` is a symlink to it.
pub fn open(config: &BrokerConfig) -> anyhow::Result<OpenedStore> {
    open_with(store_config(config)?)
}

/// The store's configuration from the broker's; creates the root (and the log link).
pub(crate) fn store_config(config: &BrokerConfig) -> anyhow::Result<MessageStoreConfig> {
    let root = config.store_root();
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    if !config.store_path_commit_log.is_empty() {
        link_commit_log_dir(&root.join("log"), &config.commit_log_dir())?;
    }
    let mut cfg = MessageStoreConfig::new(&root);
    cfg.commitlog.segment_size_bytes = config.mapped_file_size_commit_log;
    cfg.commitlog.entry_size_max_bytes = config.max_message_size + RECORD_OVERHEAD_BYTES_MAX;
    cfg.commitlog.flush_interval_ms = config.flush_interval_commit_log;
    cfg.commitlog.flush_mode = match config.flush_disk_type {
        FlushDiskType::SyncFlush => FlushMode::Sync,
        FlushDiskType::AsyncFlush => FlushMode::Async,
    };
    Ok(cfg)
}

/// [`open`] with the store's configuration made.
pub(crate) fn open_with(cfg: MessageStoreConfig) -> anyhow::Result<OpenedStore> {
    let root = cfg.dir.clone();
    let (store, report) =
        MessageStore::open(cfg).with_context(|| format!("open message store in {}", root.display()))?;
    tracing::debug!(
        applied_index = report.applied_index,
        checkpoint_found = report.checkpoint_found,
        "broker store ready"
    );
    let log = store.log().clone();
    Ok(OpenedStore { store: StoreHandle { inner: Arc::new(store) }, log })
}

fn link_commit_log_dir(link: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
    match std::fs::read_link(link) {
        Ok(existing) if existing == target => Ok(()),
        Ok(existing) => {
            bail!("{} links to {}, but storePathCommitLog is {}", link.display(), existing.display(), target.display())
        }
        Err(_) if link.exists() => bail!(
            "{} is a directory, but storePathCommitLog is {}: move it there or unset storePathCommitLog",
            link.display(),
            target.display()
        ),
        Err(_) => std::os::unix::fs::symlink(target, link)
            .with_context(|| format!("link {} -> {}", link.display(), target.display())),
    }
}

impl StoreHandle {
    pub fn applied_index(&self) -> EntryIndex {
        self.inner.applied_index()
    }

    /// Applies committed entries through `to`; returns where each message landed.
    pub fn apply_up_to(&self, to: EntryIndex) -> Result<Vec<(EntryIndex, Placement)>, StorageError> {
        let applied = self.inner.apply_committed(to)?;
        let mut placements = Vec::new();
        for a in applied {
            match a {
                Applied::Message { index, queue_id, queue_offset, .. } => {
                    placements.push((index, Placement { queue_id, queue_offset }))
                }
                Applied::Skipped { index, reason } => {
                    tracing::warn!(index, %reason, "committed entry skipped by apply");
                }
                _ => {}
            }
        }
        Ok(placements)
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfigRecord> {
        self.inner.topic(name)
    }

    pub fn topics(&self) -> Vec<TopicConfigRecord> {
        self.inner.topics()
    }

    /// `(min, max)` offsets, `None` when the queue has never had a message.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> Option<(u64, u64)> {
        let max = self.inner.queue_max_offset(topic, queue_id);
        (max > 0).then(|| (self.inner.queue_min_offset(topic, queue_id), max))
    }

    pub fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_count: u32,
        max_bytes: u64,
    ) -> Result<Vec<(u64, MessageRecord)>, StorageError> {
        Ok(self
            .inner
            .read_queue(topic, queue_id, offset, max_count as usize, usize::try_from(max_bytes).unwrap_or(usize::MAX))?
            .into_iter()
            .map(|m| (m.queue_offset, m.message))
            .collect())
    }

    pub fn consumer_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.inner.consumer_offset(group, topic, queue_id)
    }

    pub fn consumer_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.inner.consumer_offsets()
    }

    pub fn enforce_retention(
        &self,
        policy: &wasmq_storage::retention::RetentionPolicy,
        now: std::time::SystemTime,
    ) -> Result<wasmq_storage::retention::RetentionReport, StorageError> {
        self.inner.enforce_retention(policy, now)
    }

    /// Whether enough entries were applied since the last checkpoint (cheap: two atomics).
    pub fn checkpoint_due(&self) -> bool {
        self.inner.checkpoint_due()
    }

    /// The applied index the last checkpoint holds.
    #[cfg(test)]
    pub fn checkpointed_index(&self) -> EntryIndex {
        self.inner.checkpointed_index()
    }

    /// Checkpoints the derived state (the log flushed through it): when it is due, and on an
    /// orderly stop. Apply runs on meanwhile. Returns the checkpointed index.
    pub fn checkpoint(&self) -> Result<EntryIndex, StorageError> {
        self.inner.checkpoint()
    }
}

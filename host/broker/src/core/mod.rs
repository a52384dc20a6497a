//! The broker core: topics, consumer offsets, the send and read paths, and the apply loop
//! that turns committed commitlog entries into derived state.
//!
//! Write path: encode a [`Record`] → [`Replicator::propose`] → wait until the entry is
//! applied (by the commit hook, else the apply loop) → answer (for messages: the queue
//! offset the apply assigned). Read path: only from the derived state, which holds applied
//! (hence committed) entries only.
//!
//! Every apply is one step under one lock (`apply`), on leaders and followers alike: from
//! the replicator's commit hook, or from the apply loop for what the hook left. Entries are
//! applied once each, in index order, so queue offsets are the same on every replica.

mod apply;
mod apply_waiters;
mod backend;
pub mod disk_guard;
pub mod queue_choice;
mod send;
pub mod status;
mod store_handle;
pub mod topics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use wasmq_plugin::PluginRegistry;
use wasmq_storage::commitlog::CommitLog;
use wasmq_storage::record::Record;

use crate::config::BrokerConfig;
use crate::messaging::backend::{BackendError, BackendResult};
use crate::replication::{EntryIndex, ReplicationError, Replicator};
pub use store_handle::OpenedStore;
use store_handle::StoreHandle;
pub use topics::TopicSpec;

/// Entry outcomes kept for senders that have not picked theirs up yet. Senders pick up
/// within microseconds of the apply; the cap only matters for outcomes nobody waits for
/// (followers, senders that gave up).
const OUTCOMES_MAX: usize = 65_536;
/// Bound on waiting for a proposal to commit and apply before answering a timeout (the
/// entry may still commit later: at-least-once).
pub const COMMIT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Opens the commitlog and the derived state under the config's store paths (blocking).
pub fn open_store(config: &BrokerConfig) -> anyhow::Result<OpenedStore> {
    store_handle::open(config)
}

/// Core settings, from the broker config.
#[derive(Clone, Debug)]
pub struct CoreOptions {
    pub broker_name: String,
    pub cluster_name: String,
    pub node_id: String,
    /// `host:port` clients use for this node (`StoredMessage::store_host`).
    pub self_endpoint: String,
    pub max_message_size_bytes: u32,
    pub auto_create_topic: bool,
    pub default_topic_queue_nums: u32,
    pub send_concurrency_max: u32,
    pub commit_timeout_ms: u64,
    /// Member id → client endpoint (for leader hints and routes), in `dLegerPeers` order.
    pub members: Vec<(String, String)>,
    pub store_root: std::path::PathBuf,
    pub disk: disk_guard::DiskLimits,
}

impl CoreOptions {
    pub fn from_config(config: &BrokerConfig) -> CoreOptions {
        let self_endpoint = format!("{}:{}", config.broker_ip1, config.listen_port);
        let members = if config.enable_d_leger_commit_log {
            config
                .dledger_peers()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| config.client_endpoint_of(&p.id).map(|e| (p.id, e)))
                .collect()
        } else {
            vec![(config.node_id(), self_endpoint.clone())]
        };
        CoreOptions {
            broker_name: config.broker_name.clone(),
            cluster_name: config.broker_cluster_name.clone(),
            node_id: config.node_id(),
            self_endpoint,
            max_message_size_bytes: config.max_message_size,
            auto_create_topic: config.auto_create_topic_enable,
            default_topic_queue_nums: config.default_topic_queue_nums,
            send_concurrency_max: config.send_message_thread_pool_nums,
            commit_timeout_ms: COMMIT_TIMEOUT_MS_DEFAULT,
            members,
            store_root: config.store_root(),
            disk: disk_guard::DiskLimits {
                max_used_percent: config.disk_max_used_space_ratio,
                full_percent: config.disk_full_percent(),
                file_reserved_time_hours: config.file_reserved_time,
            },
        }
    }
}

/// Where an applied message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    pub queue_id: u32,
    pub queue_offset: u64,
}

pub struct BrokerCore {
    options: CoreOptions,
    store: StoreHandle,
    log: Arc<CommitLog>,
    replicator: Arc<dyn Replicator>,
    plugins: Option<Arc<PluginRegistry>>,
    /// Highest applied entry index (long polls watch it).
    applied: watch::Receiver<EntryIndex>,
    /// Senders waiting for their entry, woken precisely by the apply step that covers it.
    apply_waiters: apply_waiters::ApplyWaiters,
    /// The applied index's sender, held by every apply step (`apply`): a step (apply, record
    /// placements, publish, wake) is atomic, so the published index only grows.
    apply_lock: parking_lot::Mutex<watch::Sender<EntryIndex>>,
    /// Highest commit index the commit hook was called with (it runs before the replicator
    /// publishes the index, so the apply loop looks here too).
    commit_seen: std::sync::atomic::AtomicU64,
    /// The commit hook's hand-over to the apply loop: work it left.
    apply_needed: Arc<tokio::sync::Notify>,
    /// Entry index → placement of the message it holds, for senders to pick up.
    outcomes: parking_lot::Mutex<BTreeMap<EntryIndex, Placement>>,
    chooser: queue_choice::QueueChooser,
    send_permits: Semaphore,
    /// Set by the disk guard: the file system is past the full mark; sends are refused.
    disk_full: std::sync::atomic::AtomicBool,
    stop_tx: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl BrokerCore {
    /// Starts the apply loop and returns once the entries committed before the start are
    /// applied (so reads right after start see everything the log had).
    pub async fn start(
        options: CoreOptions,
        opened: OpenedStore,
        replicator: Arc<dyn Replicator>,
        plugins: Option<Arc<PluginRegistry>>,
    ) -> anyhow::Result<Arc<BrokerCore>> {
        assert!(options.max_message_size_bytes > 0 && options.send_concurrency_max > 0);
        let store = opened.store;
        let (applied_tx, applied) = watch::channel(store.applied_index());
        let (stop_tx, stop_rx) = watch::channel(false);
        let core = Arc::new(BrokerCore {
            send_permits: Semaphore::new(options.send_concurrency_max as usize),
            options,
            store,
            log: opened.log,
            replicator,
            plugins,
            applied,
            apply_waiters: Default::default(),
            apply_lock: parking_lot::Mutex::new(applied_tx),
            commit_seen: std::sync::atomic::AtomicU64::new(0),
            apply_needed: Arc::new(tokio::sync::Notify::new()),
            outcomes: parking_lot::Mutex::new(BTreeMap::new()),
            chooser: Default::default(),
            disk_full: std::sync::atomic::AtomicBool::new(false),
            stop_tx,
            tasks: parking_lot::Mutex::new(Vec::new()),
        });
        // The hook holds the core weakly: the core owns the replicator.
        let weak = Arc::downgrade(&core);
        let hooked = core.replicator.set_commit_hook(Arc::new(move |commit| {
            if let Some(core) = weak.upgrade() {
                core.on_commit(commit);
            }
        }));
        let apply = apply::spawn(&core, hooked, stop_rx.clone());
        let disk = tokio::spawn(disk_guard::run(core.clone(), stop_rx));
        core.tasks.lock().extend([apply, disk]);
        let commit_at_start = *core.replicator.committed().borrow();
        core.wait_applied(commit_at_start, Duration::from_secs(3600))
            .await
            .map_err(|e| anyhow::anyhow!("applying the existing log: {e}"))?;
        Ok(core)
    }

    /// Stops the apply loop and the disk guard, then checkpoints the store. Call after the replicator stopped (nothing new commits).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.stop_tx.send_replace(true);
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            task.await?;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.checkpoint()).await??;
        Ok(())
    }

    pub fn options(&self) -> &CoreOptions {
        &self.options
    }

    pub fn replicator(&self) -> &Arc<dyn Replicator> {
        &self.replicator
    }

    pub fn plugins(&self) -> Option<&Arc<PluginRegistry>> {
        self.plugins.as_ref()
    }

    pub fn commit_log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    pub fn applied_index(&self) -> EntryIndex {
        *self.applied.borrow()
    }

    /// Client endpoint of the current leader, if known.
    pub fn leader_endpoint(&self) -> Option<String> {
        let leader = self.replicator.status().leader_id?;
        self.endpoint_of(&leader)
    }

    fn endpoint_of(&self, id: &str) -> Option<String> {
        self.options.members.iter().find(|(member, _)| member == id).map(|(_, endpoint)| endpoint.clone())
    }

    fn not_leader(&self) -> BackendError {
        BackendError::NotLeader { leader: self.leader_endpoint() }
    }

    /// Waits until entry `index` is applied.
    pub(crate) async fn wait_applied(&self, index: EntryIndex, timeout: Duration) -> BackendResult<()> {
        match tokio::time::timeout(timeout, self.applied(index)).await {
            Ok(r) => r,
            Err(_) => {
                Err(BackendError::Timeout(format!("entry {index} not applied within {} ms", timeout.as_millis())))
            }
        }
    }

    /// Waits, without a bound of its own, until `index` is applied; the caller bounds it.
    async fn applied(&self, index: EntryIndex) -> BackendResult<()> {
        let Some(applied) = self.apply_waiters.register(index, || self.applied_index()) else {
            return Ok(());
        };
        applied.await.map_err(|_| BackendError::Internal("broker core stopped".into()))
    }

    /// Proposes records and waits until they are applied. Returns the entry range.
    pub(crate) async fn replicate(&self, records: &[Record]) -> BackendResult<crate::replication::CommittedRange> {
        let mut payloads = Vec::with_capacity(records.len());
        for r in records {
            payloads.push(encode_record(r)?);
        }
        self.replicate_encoded(payloads).await
    }

    /// [`Self::replicate`] for records already encoded (with [`encode_record`]), so a
    /// caller can tell which record of a batch was malformed before proposing the rest.
    pub(crate) async fn replicate_encoded(
        &self,
        payloads: Vec<Bytes>,
    ) -> BackendResult<crate::replication::CommittedRange> {
        if !self.replicator.role().is_writable() {
            return Err(self.not_leader());
        }
        let records_len = payloads.len();
        // One deadline, one timer, for commit and apply together: a send is answered within
        // `commit_timeout_ms` in all (the replicator keeps no timer of its own).
        let timeout_ms = self.options.commit_timeout_ms;
        let mut committed = None;
        let replicated = async {
            let range = self.replicator.propose(payloads).await.map_err(|e| self.replication_error(e))?;
            assert_eq!(range.len(), records_len as u64, "one entry per proposed record");
            committed = Some(range.last);
            self.applied(range.last).await?;
            Ok(range)
        };
        let outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), replicated).await;
        match outcome {
            Ok(r) => r,
            // The entries may still commit (and apply) later: at-least-once.
            Err(_) => Err(BackendError::Timeout(match committed {
                None => format!("not committed within {timeout_ms} ms"),
                Some(last) => format!("entry {last} committed but not applied within {timeout_ms} ms"),
            })),
        }
    }

    fn replication_error(&self, e: ReplicationError) -> BackendError {
        match e {
            ReplicationError::NotLeader { leader_id } => {
                BackendError::NotLeader { leader: leader_id.and_then(|id| self.endpoint_of(&id)) }
            }
            ReplicationError::Rejected(m) => BackendError::BadRequest(m),
            e @ (ReplicationError::Storage(_) | ReplicationError::ShuttingDown | ReplicationError::Transfer(_)) => {
                BackendError::Internal(e.to_string())
            }
        }
    }

    /// Records placements of applied messages (apply step).
    pub(crate) fn record_outcomes(&self, placements: impl IntoIterator<Item = (EntryIndex, Placement)>) {
        let mut outcomes = self.outcomes.lock();
        outcomes.extend(placements);
        while outcomes.len() > OUTCOMES_MAX {
            outcomes.pop_first();
        }
    }

    pub(crate) fn take_outcome(&self, index: EntryIndex) -> Option<Placement> {
        self.outcomes.lock().remove(&index)
    }

    /// Creates or updates a topic through the replicated log (leader only). Returns the
    /// entry index of the change.
    pub async fn update_topic(&self, spec: TopicSpec) -> BackendResult<EntryIndex> {
        wasmq_storage::record::validate_topic(&spec.name).map_err(|e| BackendError::BadRequest(e.to_string()))?;
        if spec.write_queue_nums == 0 || spec.read_queue_nums == 0 {
            return Err(BackendError::BadRequest(format!(
                "topic {}: read and write queue counts must be at least 1",
                spec.name
            )));
        }
        let range = self.replicate(&[Record::TopicConfig(spec.to_record())]).await?;
        tracing::info!(topic = %spec.name, read = spec.read_queue_nums, write = spec.write_queue_nums, index = range.last, "topic updated");
        Ok(range.last)
    }

    /// The topic's config, creating reserved (`%RETRY%`, `%DLQ%`) topics and, with
    /// `autoCreateTopicEnable`, any topic on first use.
    pub(crate) async fn topic_for_write(&self, name: &str) -> BackendResult<wasmq_storage::record::TopicConfigRecord> {
        if let Some(t) = self.store.topic(name) {
            return Ok(t);
        }
        let queues = if topics::is_reserved(name) {
            topics::RESERVED_TOPIC_QUEUES
        } else if self.options.auto_create_topic {
            self.options.default_topic_queue_nums
        } else {
            return Err(BackendError::TopicNotFound(name.to_string()));
        };
        self.update_topic(TopicSpec::new(name, queues)).await?;
        self.store.topic(name).ok_or_else(|| BackendError::Internal(format!("topic {name} missing after create")))
    }

    pub fn topic(&self, name: &str) -> Option<wasmq_storage::record::TopicConfigRecord> {
        self.store.topic(name)
    }

    pub fn topics(&self) -> Vec<wasmq_storage::record::TopicConfigRecord> {
        self.store.topics()
    }

    /// `(min, max)` offsets of a queue: max is one past the last applied message.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> Option<(u64, u64)> {
        self.store.queue_offsets(topic, queue_id)
    }

    /// Every consumer offset: (group, topic, queue id, next offset).
    pub fn consumer_offsets(&self) -> Vec<(String, String, u32, u64)> {
        self.store.consumer_offsets()
    }
}

/// A record as the bytes of one log entry; a record past the storage limits is a bad request.
pub(crate) fn encode_record(record: &Record) -> BackendResult<Bytes> {
    record.encode().map(Bytes::from).map_err(|e| BackendError::BadRequest(e.to_string()))
}

//! [`RaftReplicator`]: the broker's commitlog replicated by a Raft group.
//!
//! One driver owns the [`RaftNode`]. Where it runs is [`DriverPlacement`]:
//! - **its own thread** (the default): a tokio runtime with one worker, so it can wait on its
//!   channels and a tick at once; the peer gRPC service and the peer senders run on
//!   that runtime too, so Raft traffic never crosses threads inside a member; after its
//!   inputs it keeps polling for a while before it sleeps ([`super::idle_poll`]);
//! - **the caller's runtime**, for a broker whose runtime has one worker: client calls, Raft
//!   traffic and the driver then share that worker, and a send crosses no thread inside the
//!   leader. Its blocking steps (fsync, hard state) go through `block_in_place`, so the
//!   worker's other tasks move to another thread meanwhile.
//!
//! Each round:
//! 1. take a batch of inputs (peer messages from the gRPC service, proposals, control),
//! 2. tick the node,
//! 3. group fsync: flush the commitlog once for everything appended, tell the node,
//! 4. persist the hard state if it changed, *then* hand messages to the peer senders,
//! 5. call the commit hook (the core applies), publish the commit index, answer proposals
//!    whose entries committed (or were lost), refresh the status snapshot.
//!
//! Followers publish only their commit index, which never passes entries they hold that
//! match the leader, so followers only serve committed entries.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use wasmq_proto::cancellable_io::CancellableIo;
use wasmq_raft::{HardState, Message, NodeId, ProposeError, RaftConfig, RaftError, RaftNode, Role as RaftRole};
use wasmq_storage::commitlog::CommitLog;

use super::idle_poll::IdlePoll;
use super::raft_hard_state::{HardStateFile, StoredHardState};
use super::raft_log::CommitLogRaftLog;
use super::raft_transport::{Members, RaftPeerService, listen_address, serve_peers, spawn_peer_sender};
use super::{
    CommitHook, CommittedRange, EntryIndex, PROPOSE_ENTRIES_MAX, PeerStatus, ProposeLatency, ReplicationError,
    ReplicationStatus, Replicator, Role,
};
use crate::config::{BrokerConfig, FlushDiskType};

/// Messages from peers waiting for the driver; beyond, the gRPC service drops them.
const INBOX_MESSAGES_MAX: usize = 8192;
/// Messages waiting for one peer's sender; beyond, the driver drops them.
const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
const PROPOSAL_QUEUE_MAX: usize = 1024;
/// Proposals parked while the leader is at its uncommitted-entries limit or transferring
/// leadership; while full, the driver stops taking proposals (callers wait in `propose`).
const DEFERRED_PROPOSALS_MAX: usize = 256;
/// Inputs handled between two flushes: bounds the latency of one group commit.
const INPUTS_PER_ROUND_MAX: usize = 1024;

/// Everything a Raft replicator needs, independent of the broker's config format.
#[derive(Clone, Debug)]
pub struct RaftGroupConfig {
    pub group: String,
    pub self_id: String,
    /// All members including this one: `(id, host:port)`.
    pub members: Vec<(String, String)>,
    /// Where the hard state file lives.
    pub data_dir: PathBuf,
    /// Timeouts and limits; `preferred_leader_id` and `rng_seed` are set from the fields
    /// below and from entropy.
    pub raft: RaftConfig,
    pub preferred_leader: Option<String>,
    /// SYNC_FLUSH: fsync before counting an entry as durable. ASYNC_FLUSH: written to the
    /// page cache counts (survives a process crash, not a power loss), as RocketMQ.
    pub sync_flush: bool,
    pub tick_interval_ms: u64,
    pub driver_placement: DriverPlacement,
    /// How long the driver's own thread keeps polling after its last input before it sleeps
    /// ([`super::idle_poll`]); 0: it sleeps at once.
    pub idle_poll_us: u64,
}

/// Where the driver runs (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverPlacement {
    /// A thread of its own, with the peer service and senders on its runtime: the broker's
    /// workers are free for clients (a member with a machine of its own and several workers).
    OwnThread,
    /// A task on the runtime that calls [`RaftReplicator::start`]. Measured with three
    /// members and the load generator on 2 cores (`examples/bench/ab.sh`, one worker per
    /// broker): one producer sends ~10 % more per second and the leader spends ~13 % less
    /// CPU per message; at 64 producers throughput is the same and p99 ~35 % lower. With
    /// several workers the driver task would wander between them: no gain measured there.
    CallerRuntime,
}

impl RaftGroupConfig {
    /// From the broker config (`dLeger*` keys, `preferredLeaderId`, `flushDiskType`).
    pub fn from_broker(config: &BrokerConfig) -> Result<RaftGroupConfig, String> {
        let peers = config.dledger_peers()?;
        let noop = wasmq_storage::Record::Noop.encode().map_err(|e| format!("encode no-op record: {e}"))?;
        Ok(RaftGroupConfig {
            group: config.d_leger_group.clone(),
            self_id: config.d_leger_self_id.clone(),
            members: peers.into_iter().map(|p| (p.id, p.address)).collect(),
            data_dir: config.store_root().join("raft"),
            raft: RaftConfig {
                heartbeat_interval_ms: config.d_leger_heartbeat_interval_ms,
                election_timeout_min_ms: config.d_leger_election_timeout_min_ms,
                election_timeout_max_ms: config.d_leger_election_timeout_max_ms,
                entry_bytes_max: config.max_message_size as usize + 64 * 1024,
                noop_entry: Bytes::from(noop),
                ..RaftConfig::default()
            },
            preferred_leader: Some(config.preferred_leader_id.clone()).filter(|s| !s.is_empty()),
            sync_flush: config.flush_disk_type == FlushDiskType::SyncFlush,
            tick_interval_ms: 10,
            driver_placement: if config.server_worker_threads == 1 {
                DriverPlacement::CallerRuntime
            } else {
                DriverPlacement::OwnThread
            },
            idle_poll_us: config.raft_idle_poll_us,
        })
    }
}

struct ProposeRequest {
    payloads: Vec<Bytes>,
    reply: oneshot::Sender<Result<Committed, ReplicationError>>,
}

/// A proposal's answer: its entries, and when the driver appended and answered them (for
/// [`ProposeLatency`]).
struct Committed {
    range: CommittedRange,
    appended: Instant,
    answered: Instant,
}

struct PendingProposal {
    range: CommittedRange,
    appended: Instant,
    reply: oneshot::Sender<Result<Committed, ReplicationError>>,
}

enum Control {
    Transfer {
        target: String,
        reply: oneshot::Sender<Result<(), ReplicationError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), ReplicationError>>,
    },
    /// Makes the driver panic, as a failed assertion in it would.
    #[cfg(test)]
    Panic,
}

pub struct RaftReplicator {
    members: Arc<Members>,
    self_node: NodeId,
    proposals: parking_lot::RwLock<Option<mpsc::Sender<ProposeRequest>>>,
    control: mpsc::Sender<Control>,
    status: Arc<Mutex<ReplicationStatus>>,
    committed_rx: watch::Receiver<EntryIndex>,
    /// Shared with the driver, which calls it on every commit advance.
    commit_hook: Arc<OnceLock<CommitHook>>,
    /// Set when the driver stopped on a storage error or a panic (fail-stop).
    failure: Arc<Mutex<Option<String>>>,
    stop_tx: watch::Sender<bool>,
    driver: Mutex<Option<DriverHandle>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    entry_bytes_max: usize,
    local_addr: SocketAddr,
    /// Recorded by `propose` from the instants the driver stamps on its answer.
    latency: ProposeLatency,
    /// The driver thread's runtime (`OwnThread`).
    driver_runtime: Option<tokio::runtime::Handle>,
}

impl RaftReplicator {
    /// Opens the hard state, starts the peer service on this member's address, the peer
    /// senders and the driver thread. Must run inside a tokio runtime.
    pub async fn start(cfg: RaftGroupConfig, log: Arc<CommitLog>) -> Result<RaftReplicator, ReplicationError> {
        let bad = |m: String| ReplicationError::Rejected(format!("raft config: {m}"));
        let members = Arc::new(Members::new(cfg.group.clone(), cfg.members.clone()).map_err(bad)?);
        let self_node = members
            .node_id(&cfg.self_id)
            .ok_or_else(|| bad(format!("self id `{}` is not among the members", cfg.self_id)))?;
        let (hs_file, stored) =
            HardStateFile::open(&cfg.data_dir).map_err(|e| ReplicationError::Storage(e.to_string()))?;
        let hard_state =
            HardState { term: stored.term, voted_for: stored.voted_for.as_deref().and_then(|id| members.node_id(id)) };
        let preferred_leader_id = match &cfg.preferred_leader {
            None => None,
            Some(id) => {
                Some(members.node_id(id).ok_or_else(|| bad(format!("preferred leader `{id}` is not a member")))?)
            }
        };
        let raft_config = RaftConfig { preferred_leader_id, rng_seed: rand::random(), ..cfg.raft.clone() };
        let node = RaftNode::new(
            self_node,
            &members.node_ids(),
            raft_config,
            hard_state,
            CommitLogRaftLog::new(log.clone()),
            0,
        )
        .map_err(|e| bad(e.to_string()))?;

        // The driver's runtime (its own thread's, or with `CallerRuntime` the broker's one
        // worker) also runs the peer service and the peer senders: a Raft message then goes
        // socket → inbox → node → outbox → socket on one thread, without a hand-off between
        // threads at every step (each one a futex wake-up, on the critical path of every
        // send).
        let listen = listen_address(members.address(self_node)).map_err(bad)?;
        let bind_error =
            |e: std::io::Error| ReplicationError::Storage(format!("bind raft peer service on {listen}: {e}"));
        let listener = std::net::TcpListener::bind(listen).and_then(|l| l.set_nonblocking(true).map(|()| l));
        let listener = listener.map_err(bind_error)?;
        let runtime = if cfg.driver_placement == DriverPlacement::CallerRuntime {
            PendingRuntime(None)
        } else {
            // One worker, not a current-thread runtime: the driver, the peer tasks and the
            // client connections placed here hand work to each other, and the worker runs a
            // task another one just woke next (its LIFO slot) instead of behind the queue.
            // Measured against the current-thread runtime (alternating rounds, 3 members and
            // mqbench on 2 cores, idle polling on): 64 producers 1.01–1.18× msg/s (4 pairs;
            // 0.98–1.12× in 6 more with an earlier build), 1 producer 0.99–1.05×.
            PendingRuntime(Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name(format!("wasmq-raft-{}", cfg.self_id))
                    .enable_all()
                    .build()
                    .map_err(|e| ReplicationError::Storage(format!("raft driver runtime: {e}")))?,
            ))
        };
        let driver_runtime = runtime.0.as_ref().map(|r| r.handle().clone());
        let on_driver_runtime = runtime.0.as_ref().map(|r| r.enter());
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(|e| ReplicationError::Storage(e.to_string()))?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_MESSAGES_MAX);
        let (proposals_tx, proposals_rx) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        let (control_tx, control_rx) = mpsc::channel(16);
        let dropped_inbound = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();

        let service = RaftPeerService::new(members.clone(), self_node, inbox_tx, dropped_inbound);
        let mut server_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            // However this task ends (stopped, or aborted with a `CallerRuntime` driver), the
            // connections it accepted, which the server runs as tasks of their own, end with it.
            let connections = tokio_util::sync::CancellationToken::new();
            let _end_connections = connections.clone().drop_guard();
            // `Server::tcp_nodelay` only applies to listeners tonic binds itself; a listener we
            // bound (to report its address and fail early) needs it set on the incoming stream,
            // or the small `DeliverReply` waits on Nagle + the peer's delayed ACK while the
            // sender holds its next batch for it.
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |s| s.map(|s| CancellableIo::new(s, connections.clone())));
            serve_peers(service, incoming, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await;
        }));

        // On whichever runtime the driver runs: with `CallerRuntime` the poller keeps the
        // broker's worker awake, and its yields let the client tasks there run first.
        let idle_poll = (cfg.idle_poll_us > 0).then(|| IdlePoll::new(Duration::from_micros(cfg.idle_poll_us)));
        if let Some(poll) = &idle_poll {
            tasks.push(tokio::spawn(poll.clone().run()));
        }
        let mut peers = BTreeMap::new();
        for peer in members.node_ids().into_iter().filter(|&p| p != self_node) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            let task = spawn_peer_sender(members.clone(), self_node, peer, rx, stop_rx.clone()).map_err(bad)?;
            tasks.push(task);
            peers.insert(peer, tx);
        }

        let (committed_tx, committed_rx) = watch::channel(node.commit_index());
        let status = Arc::new(Mutex::new(ReplicationStatus {
            self_id: cfg.self_id.clone(),
            role: Role::Follower,
            term: node.term(),
            leader_id: None,
            commit_index: node.commit_index(),
            last_index: log.last_index(),
            peers: Vec::new(),
        }));
        let failure = Arc::new(Mutex::new(None));
        let commit_hook = Arc::new(OnceLock::new());
        let mut driver = Driver {
            node,
            log,
            members: members.clone(),
            hs_file,
            sync_flush: cfg.sync_flush,
            shared_runtime: cfg.driver_placement == DriverPlacement::CallerRuntime,
            inbox: inbox_rx,
            proposals: proposals_rx,
            control: control_rx,
            peers,
            committed: committed_tx,
            commit_hook: commit_hook.clone(),
            status: status.clone(),
            failure: failure.clone(),
            pending: VecDeque::new(),
            deferred: VecDeque::new(),
            transfer: None,
            started: Instant::now(),
            tick_interval_ms: cfg.tick_interval_ms.max(1),
            dropped_outbound: 0,
            peer_tasks: Vec::new(),
            idle_poll,
        };
        // Everything that runs on the driver runtime is spawned.
        drop(on_driver_runtime);
        let driver = if cfg.driver_placement == DriverPlacement::CallerRuntime {
            driver.peer_tasks = tasks.iter().map(|t| t.abort_handle()).collect();
            DriverHandle::Task(tokio::spawn(async move {
                let stop = driver.run_until_stopped().await;
                // As the own thread's runtime does when it is dropped: connections close,
                // like a crash's.
                for t in &driver.peer_tasks {
                    t.abort();
                }
                driver.finish(stop);
            }))
        } else {
            DriverHandle::Thread(
                std::thread::Builder::new()
                    .name(format!("wasmq-raft-run-{}", cfg.self_id))
                    .spawn(move || driver.run(runtime))
                    .map_err(|e| ReplicationError::Storage(format!("spawn raft driver thread: {e}")))?,
            )
        };
        tracing::info!(group = %cfg.group, id = %cfg.self_id, %local_addr, members = members.list.len(), "raft replicator started");
        Ok(RaftReplicator {
            members,
            self_node,
            proposals: parking_lot::RwLock::new(Some(proposals_tx)),
            control: control_tx,
            status,
            committed_rx,
            commit_hook,
            failure,
            stop_tx,
            driver: Mutex::new(Some(driver)),
            tasks: Mutex::new(tasks),
            entry_bytes_max: cfg.raft.entry_bytes_max,
            local_addr,
            latency: ProposeLatency::default(),
            driver_runtime,
        })
    }

    /// Address the peer service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn self_id(&self) -> &str {
        self.members.name(self.self_node)
    }

    fn stopped_error(&self) -> ReplicationError {
        match self.failure.lock().clone() {
            Some(why) => ReplicationError::Storage(why),
            None => ReplicationError::ShuttingDown,
        }
    }
}

impl Drop for RaftReplicator {
    fn drop(&mut self) {
        // The driver exits when its control channel closes (dropped with `self`).
        let _ = self.stop_tx.send(true);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

#[async_trait]
impl Replicator for RaftReplicator {
    async fn propose(&self, payloads: Vec<Bytes>) -> Result<CommittedRange, ReplicationError> {
        if payloads.is_empty() || payloads.len() > PROPOSE_ENTRIES_MAX {
            return Err(ReplicationError::Rejected(format!(
                "{} entries; a proposal holds 1..={PROPOSE_ENTRIES_MAX}",
                payloads.len()
            )));
        }
        if let Some(p) = payloads.iter().find(|p| p.is_empty() || p.len() > self.entry_bytes_max) {
            return Err(ReplicationError::Rejected(format!(
                "entry of {} bytes outside 1..={}",
                p.len(),
                self.entry_bytes_max
            )));
        }
        let Some(tx) = self.proposals.read().clone() else {
            return Err(self.stopped_error());
        };
        let n = payloads.len() as u64;
        let submitted = Instant::now();
        let (reply, reply_rx) = oneshot::channel();
        tx.send(ProposeRequest { payloads, reply }).await.map_err(|_| self.stopped_error())?;
        let Committed { range, appended, answered } = reply_rx.await.map_err(|_| self.stopped_error())??;
        self.latency.record(submitted, appended, answered, Instant::now());
        assert_eq!(range.len(), n, "committed range does not match the proposal");
        Ok(range)
    }

    fn status(&self) -> ReplicationStatus {
        self.status.lock().clone()
    }

    fn role(&self) -> Role {
        self.status.lock().role
    }

    fn committed(&self) -> watch::Receiver<EntryIndex> {
        self.committed_rx.clone()
    }

    fn driver_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.driver_runtime.clone()
    }

    fn propose_latency(&self) -> Option<&ProposeLatency> {
        Some(&self.latency)
    }

    fn set_commit_hook(&self, hook: CommitHook) -> bool {
        let _ = self.commit_hook.set(hook);
        true
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    async fn transfer_leadership(&self, target_id: &str) -> Result<(), ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Transfer { target: target_id.to_string(), reply })
            .await
            .map_err(|_| self.stopped_error())?;
        rx.await.map_err(|_| self.stopped_error())?
    }

    async fn shutdown(&self) -> Result<(), ReplicationError> {
        drop(self.proposals.write().take());
        let (reply, rx) = oneshot::channel();
        let result = match self.control.send(Control::Shutdown { reply }).await {
            Ok(()) => rx.await.unwrap_or(Ok(())),
            // Already stopped.
            Err(_) => Ok(()),
        };
        let _ = self.stop_tx.send(true);
        let driver = self.driver.lock().take();
        match driver {
            Some(DriverHandle::Thread(handle)) => {
                tokio::task::spawn_blocking(move || handle.join())
                    .await
                    .map_err(|e| ReplicationError::Storage(format!("join raft driver: {e}")))?
                    .map_err(|_| ReplicationError::Storage("raft driver thread panicked".into()))?;
            }
            Some(DriverHandle::Task(handle)) => {
                handle.await.map_err(|e| ReplicationError::Storage(format!("join raft driver: {e}")))?;
            }
            None => {}
        }
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            t.abort();
        }
        result
    }
}

/// The driver's runtime until its thread runs it. Dropped on an error path of `start` (in the
/// caller's async context, where a runtime's blocking shutdown panics), it shuts down in the
/// background instead.
struct PendingRuntime(Option<tokio::runtime::Runtime>);

impl Drop for PendingRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Driver {
    node: RaftNode<CommitLogRaftLog>,
    log: Arc<CommitLog>,
    members: Arc<Members>,
    hs_file: HardStateFile,
    sync_flush: bool,
    /// `DriverPlacement::CallerRuntime`: blocking steps leave the worker to its other tasks.
    shared_runtime: bool,
    inbox: mpsc::Receiver<(NodeId, Message)>,
    proposals: mpsc::Receiver<ProposeRequest>,
    control: mpsc::Receiver<Control>,
    peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    committed: watch::Sender<EntryIndex>,
    commit_hook: Arc<OnceLock<CommitHook>>,
    status: Arc<Mutex<ReplicationStatus>>,
    failure: Arc<Mutex<Option<String>>>,
    /// Proposals appended and waiting for commit, in index order.
    pending: VecDeque<PendingProposal>,
    deferred: VecDeque<ProposeRequest>,
    transfer: Option<(NodeId, oneshot::Sender<Result<(), ReplicationError>>)>,
    started: Instant,
    tick_interval_ms: u64,
    dropped_outbound: u64,
    /// The peer service and senders, when they share the caller's runtime: stopped with the
    /// loop.
    peer_tasks: Vec<tokio::task::AbortHandle>,
    /// Keeps the driver's thread polling after work ([`IdlePoll`]); `None`: off.
    idle_poll: Option<Arc<IdlePoll>>,
}

/// How [`RaftReplicator::shutdown`] waits for the driver to end.
enum DriverHandle {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// Why the driver loop ends.
enum Stop {
    Shutdown(oneshot::Sender<Result<(), ReplicationError>>),
    Dropped,
    Failed(String),
}

impl Driver {
    /// Runs the loop, and with it the peer service and senders, on `runtime`'s worker; this
    /// thread only waits for it.
    fn run(mut self, mut runtime: PendingRuntime) {
        let rt = runtime.0.take().expect("a runtime is pending until its driver runs");
        let task = rt.spawn(async move {
            let stop = self.run_until_stopped().await;
            (self, stop)
        });
        // The runtime lives until `drop` below and nothing aborts this task: it ends by
        // returning (a panic in the loop is already a `Stop::Failed`).
        let (driver, stop) = rt.block_on(task).expect("the driver task ends by returning");
        // The peer service and senders stop with it (connections close, like a crash's).
        drop(rt);
        driver.finish(stop);
    }

    /// [`Self::run_loop`], with a panic (an assertion on an invariant failed) made a
    /// fail-stop like a storage error's. Unseen, it would end the driver's task or thread
    /// and leave the member answering clients with nothing replicated.
    async fn run_until_stopped(&mut self) -> Stop {
        use futures::FutureExt;
        match std::panic::AssertUnwindSafe(self.run_loop()).catch_unwind().await {
            Ok(stop) => stop,
            Err(panic) => Stop::Failed(format!("raft driver panicked: {}", wasmq_panic::message(&*panic))),
        }
    }

    fn finish(mut self, stop: Stop) {
        let (reason, reply) = match stop {
            Stop::Shutdown(reply) => ("replicator is shutting down".to_string(), Some(reply)),
            Stop::Dropped => ("replicator dropped".to_string(), None),
            Stop::Failed(why) => {
                tracing::error!(error = %why, "raft driver stopped (fail-stop)");
                *self.failure.lock() = Some(why.clone());
                (why, None)
            }
        };
        let failed = self.failure.lock().is_some();
        let err = || if failed { ReplicationError::Storage(reason.clone()) } else { ReplicationError::ShuttingDown };
        for p in self.deferred.drain(..) {
            let _ = p.reply.send(Err(err()));
        }
        for p in self.pending.drain(..) {
            let _ = p.reply.send(Err(err()));
        }
        if let Some((_, reply)) = self.transfer.take() {
            let _ = reply.send(Err(err()));
        }
        self.proposals.close();
        while let Ok(p) = self.proposals.try_recv() {
            let _ = p.reply.send(Err(err()));
        }
        let flushed = blocking(self.shared_runtime, || self.log.flush())
            .map(|_| ())
            .map_err(|e| ReplicationError::Storage(e.to_string()));
        let mut status = self.status.lock();
        status.role = Role::Follower;
        status.leader_id = None;
        drop(status);
        if let Some(reply) = reply {
            let _ = reply.send(flushed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run_loop(&mut self) -> Stop {
        let mut tick = tokio::time::interval(Duration::from_millis(self.tick_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Graceful stop: (reply, deadline) while a leader hands over before exiting.
        let mut stopping: Option<(oneshot::Sender<Result<(), ReplicationError>>, Instant)> = None;
        loop {
            if let Some((_, deadline)) = &stopping
                && (self.node.role() != RaftRole::Leader || Instant::now() >= *deadline)
            {
                let (reply, _) = stopping.take().expect("checked");
                return Stop::Shutdown(reply);
            }
            let accepting = stopping.is_none() && self.deferred.len() < DEFERRED_PROPOSALS_MAX;
            // `input`: not a tick. Inputs keep the thread polling; an idle member sleeps
            // between heartbeats.
            let (result, input) = tokio::select! {
                biased;
                c = self.control.recv(), if stopping.is_none() => (match c {
                    None => return Stop::Dropped,
                    Some(Control::Shutdown { reply }) => {
                        stopping = Some((reply, self.hand_over_leadership()));
                        Ok(())
                    }
                    Some(Control::Transfer { target, reply }) => { self.start_transfer(&target, reply); Ok(()) }
                    #[cfg(test)]
                    Some(Control::Panic) => panic!("the driver was told to panic"),
                }, true),
                Some((from, msg)) = self.inbox.recv() => (self.on_messages(from, msg), true),
                Some(p) = self.proposals.recv(), if accepting => (self.on_proposals(p), true),
                _ = tick.tick() => (Ok(()), false),
            };
            if input && let Some(poll) = &self.idle_poll {
                poll.active();
            }
            if let Err(why) = result.and_then(|()| self.round()) {
                return Stop::Failed(why);
            }
        }
    }

    /// On a graceful stop, a leader hands leadership to its most caught-up peer so the group
    /// does not wait an election timeout (rolling restarts). Returns until when to wait.
    fn hand_over_leadership(&mut self) -> Instant {
        let now = Instant::now();
        if self.node.role() != RaftRole::Leader {
            return now;
        }
        let Some(best) = self.node.progress().into_iter().max_by_key(|p| (p.match_index, p.last_heard_ms)) else {
            return now;
        };
        if let Some((_, previous)) = self.transfer.take() {
            let _ = previous.send(Err(ReplicationError::Transfer("member is shutting down".into())));
        }
        match self.node.transfer_leadership(best.id) {
            Ok(()) => {
                tracing::info!(to = self.members.name(best.id), "shutting down: handing leadership over");
                now + Duration::from_millis(self.node.config().transfer_timeout_ms)
            }
            Err(e) => {
                tracing::warn!(error = %e, "shutting down without handing leadership over");
                now
            }
        }
    }

    fn on_messages(&mut self, from: NodeId, msg: Message) -> Result<(), String> {
        self.node.step(from, msg).map_err(err_text)?;
        for _ in 1..INPUTS_PER_ROUND_MAX {
            let Ok((from, msg)) = self.inbox.try_recv() else { break };
            self.node.step(from, msg).map_err(err_text)?;
        }
        Ok(())
    }

    fn on_proposals(&mut self, first: ProposeRequest) -> Result<(), String> {
        // One clock read for the batch: its appends are microseconds apart.
        let now = Instant::now();
        self.propose(first, now)?;
        for _ in 1..INPUTS_PER_ROUND_MAX {
            if self.deferred.len() >= DEFERRED_PROPOSALS_MAX {
                break;
            }
            let Ok(p) = self.proposals.try_recv() else { break };
            self.propose(p, now)?;
        }
        Ok(())
    }

    /// A new proposal: behind any parked ones (order is kept), else tried at once.
    fn propose(&mut self, req: ProposeRequest, now: Instant) -> Result<(), String> {
        if !self.deferred.is_empty() {
            self.deferred.push_back(req);
            return Ok(());
        }
        if let Some(req) = self.try_propose(req, now)? {
            self.deferred.push_back(req);
        }
        Ok(())
    }

    /// Appends one proposal or answers it with an error; gives it back when it has to wait
    /// (uncommitted-entries limit reached, or a leadership transfer in progress). `now` is
    /// when it counts as appended.
    fn try_propose(&mut self, req: ProposeRequest, now: Instant) -> Result<Option<ProposeRequest>, String> {
        if req.reply.is_closed() {
            return Ok(None); // the caller gave up before anything was written
        }
        match self.node.propose(&req.payloads) {
            Ok(p) => {
                self.pending.push_back(PendingProposal {
                    range: CommittedRange { first: p.range.start, last: p.range.end - 1, term: p.term },
                    appended: now,
                    reply: req.reply,
                });
                Ok(None)
            }
            Err(RaftError::Propose(ProposeError::Backpressure { .. } | ProposeError::TransferInProgress)) => {
                Ok(Some(req))
            }
            Err(RaftError::Propose(ProposeError::NotLeader { leader_hint })) => {
                let leader_id = leader_hint.map(|l| self.members.name(l).to_string());
                let _ = req.reply.send(Err(ReplicationError::NotLeader { leader_id }));
                Ok(None)
            }
            Err(RaftError::Propose(ProposeError::Invalid(why))) => {
                let _ = req.reply.send(Err(ReplicationError::Rejected(why)));
                Ok(None)
            }
            Err(RaftError::Log(e)) => Err(format!("commitlog append: {e}")),
        }
    }

    fn retry_deferred(&mut self) -> Result<(), String> {
        let now = Instant::now();
        while let Some(req) = self.deferred.pop_front() {
            if let Some(req) = self.try_propose(req, now)? {
                self.deferred.push_front(req);
                break;
            }
        }
        Ok(())
    }

    fn start_transfer(&mut self, target: &str, reply: oneshot::Sender<Result<(), ReplicationError>>) {
        let Some(to) = self.members.node_id(target) else {
            let _ = reply.send(Err(ReplicationError::Transfer(format!("`{target}` is not a member of the group"))));
            return;
        };
        if self.node.role() != RaftRole::Leader {
            let leader = self.node.leader_id().map(|l| self.members.name(l).to_string());
            let _ = reply.send(Err(ReplicationError::Transfer(format!(
                "this member is not the leader (leader: {})",
                leader.as_deref().unwrap_or("unknown")
            ))));
            return;
        }
        if let Some((_, previous)) = self.transfer.take() {
            let _ = previous.send(Err(ReplicationError::Transfer("superseded by a newer transfer".into())));
        }
        match self.node.transfer_leadership(to) {
            Ok(()) if to == self.node.id() => {
                let _ = reply.send(Ok(()));
            }
            Ok(()) => self.transfer = Some((to, reply)),
            Err(e) => {
                let _ = reply.send(Err(ReplicationError::Transfer(e.to_string())));
            }
        }
    }

    /// Steps 2–5 of the module docs.
    fn round(&mut self) -> Result<(), String> {
        let now = self.now_ms();
        self.node.tick(now).map_err(err_text)?;
        self.retry_deferred()?;

        let last = self.log.last_index();
        if self.node.flushed_index() < last {
            let flushed = if self.sync_flush {
                blocking(self.shared_runtime, || self.log.flush()).map_err(|e| format!("commitlog flush: {e}"))?
            } else {
                last
            };
            self.node.on_flushed(flushed.min(last)).map_err(err_text)?;
        }

        let ready = self.node.take_ready();
        if let Some(hs) = ready.hard_state {
            let stored =
                StoredHardState { term: hs.term, voted_for: hs.voted_for.map(|v| self.members.name(v).to_string()) };
            let hs_file = &self.hs_file;
            blocking(self.shared_runtime, || hs_file.store(&stored))
                .map_err(|e| format!("persist raft hard state: {e}"))?;
        }
        for (to, msg) in ready.messages {
            let Some(tx) = self.peers.get(&to) else { continue };
            if tx.try_send(msg).is_err() {
                self.dropped_outbound += 1;
                if self.dropped_outbound.is_power_of_two() {
                    tracing::warn!(
                        peer = self.members.name(to),
                        dropped = self.dropped_outbound,
                        "raft peer queue full, messages dropped"
                    );
                }
            }
        }

        let commit = self.node.commit_index();
        if commit > *self.committed.borrow() {
            // Before publishing and answering: proposers then wake to applied entries.
            if let Some(hook) = self.commit_hook.get() {
                hook(commit);
            }
            self.committed.send_replace(commit);
        }
        self.resolve_pending(commit);
        self.resolve_transfer();
        self.publish_status(now);
        Ok(())
    }

    /// Answers proposals whose last entry is committed (still in their term: success) or
    /// was replaced by another leader's entry (lost: retry on the leader).
    fn resolve_pending(&mut self, commit: EntryIndex) {
        // One clock read for every answer of this call, taken at the first.
        let mut answered = None;
        while let Some(p) = self.pending.front() {
            let term_now = self.log.term_at(p.range.last);
            let lost = term_now != Some(p.range.term);
            if !lost && p.range.last > commit {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let result = if lost {
                let leader_id =
                    self.node.leader_id().filter(|&l| l != self.node.id()).map(|l| self.members.name(l).to_string());
                Err(ReplicationError::NotLeader { leader_id })
            } else {
                Ok(Committed {
                    range: p.range,
                    appended: p.appended,
                    answered: *answered.get_or_insert_with(Instant::now),
                })
            };
            let _ = p.reply.send(result);
        }
    }

    fn resolve_transfer(&mut self) {
        let Some((to, _)) = &self.transfer else { return };
        let to = *to;
        let outcome = if self.node.leader_id() == Some(to) {
            Some(Ok(()))
        } else if self.node.role() == RaftRole::Leader && self.node.transfer_target().is_none() {
            Some(Err(format!("`{}` did not take over in time", self.members.name(to))))
        } else if self.node.role() != RaftRole::Leader && self.node.leader_id().is_some() {
            Some(Err(format!(
                "leadership went to `{}` instead",
                self.members.name(self.node.leader_id().expect("checked"))
            )))
        } else {
            None
        };
        if let Some(outcome) = outcome {
            let (_, reply) = self.transfer.take().expect("checked");
            let _ = reply.send(outcome.map_err(ReplicationError::Transfer));
        }
    }

    fn publish_status(&self, now: u64) {
        let progress = self.node.progress();
        let peers = self
            .members
            .node_ids()
            .into_iter()
            .filter(|&p| p != self.node.id())
            .map(|p| {
                let pr = progress.iter().find(|x| x.id == p);
                PeerStatus {
                    id: self.members.name(p).to_string(),
                    address: self.members.address(p).to_string(),
                    match_index: pr.map_or(0, |x| x.match_index),
                    last_contact_ms: pr.and_then(|x| x.last_heard_ms).map(|t| now.saturating_sub(t)),
                }
            })
            .collect();
        let role = match self.node.role() {
            RaftRole::Leader => Role::Leader,
            RaftRole::Follower => Role::Follower,
            RaftRole::PreCandidate | RaftRole::Candidate => Role::Candidate,
        };
        *self.status.lock() = ReplicationStatus {
            self_id: self.members.name(self.node.id()).to_string(),
            role,
            term: self.node.term(),
            leader_id: self.node.leader_id().map(|l| self.members.name(l).to_string()),
            commit_index: self.node.commit_index(),
            last_index: self.log.last_index(),
            peers,
        };
    }
}

/// Runs a blocking step of the driver (fsync). On the caller's runtime (`shared`), if it is
/// multi-threaded, the worker's other tasks move to another thread meanwhile. On the driver's
/// own runtime it blocks the worker: nothing there waits but Raft itself and its peers, and
/// with SYNC_FLUSH no client connection is placed there.
fn blocking<T>(shared: bool, f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if shared && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn err_text<E: std::error::Error>(e: RaftError<E>) -> String {
    format!("raft: {e}")
}

/// What `mqbroker` plugs into [`crate::server::Extensions::replicator`]: builds the Raft
/// replicator from the broker config when `enableDLegerCommitLog = true`.
pub fn replicator_factory() -> crate::server::ReplicatorFactory {
    Box::new(|inputs: crate::server::ReplicatorInputs| {
        Box::pin(async move {
            let cfg = RaftGroupConfig::from_broker(&inputs.config).map_err(|e| anyhow::anyhow!("raft config: {e}"))?;
            let replicator = RaftReplicator::start(cfg, inputs.log).await?;
            Ok(Arc::new(replicator) as Arc<dyn Replicator>)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group_config(extra: &str) -> RaftGroupConfig {
        let text = format!(
            "enableDLegerCommitLog = true\ndLegerGroup = \"g\"\ndLegerSelfId = \"n0\"\n\
             dLegerPeers = \"n0-127.0.0.1:30911;n1-127.0.0.1:30912;n2-127.0.0.1:30913\"\n{extra}"
        );
        let loaded = crate::config::parse_toml(&text, std::path::Path::new("broker.toml")).unwrap();
        RaftGroupConfig::from_broker(&loaded.config).unwrap()
    }

    #[test]
    fn the_driver_shares_the_runtime_only_when_it_has_one_worker() {
        assert_eq!(group_config("").driver_placement, DriverPlacement::OwnThread);
        assert_eq!(group_config("serverWorkerThreads = 1").driver_placement, DriverPlacement::CallerRuntime);
        assert_eq!(group_config("serverWorkerThreads = 2").driver_placement, DriverPlacement::OwnThread);
    }

    /// A panic in the driver (an invariant's assertion) stops replication for good, as a
    /// storage error does, in both placements: `failure()` names it (so `mqbroker` exits
    /// with its fail-stop code) and proposals are refused, instead of the driver's task or
    /// thread ending unseen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_driver_fail_stops_in_both_placements() {
        for placement in [DriverPlacement::CallerRuntime, DriverPlacement::OwnThread] {
            let dir = tempfile::tempdir().unwrap();
            // The cluster tests' picker (the integration tests' `common::free_ports`): below
            // the ephemeral range, never the same port twice in this test binary.
            let ports: Vec<u16> =
                (0..3).map(|_| wasmq_cluster_tests::cluster::free_port().expect("a free loopback port")).collect();
            let log_cfg = wasmq_storage::commitlog::CommitLogConfig::small(dir.path().join("log"));
            let log = Arc::new(CommitLog::open(log_cfg).unwrap().0);
            // The broker's own mapping from its config, on free ports and a fresh directory.
            let cfg = RaftGroupConfig {
                members: ["n0", "n1", "n2"]
                    .iter()
                    .zip(&ports)
                    .map(|(id, p)| (id.to_string(), format!("127.0.0.1:{p}")))
                    .collect(),
                data_dir: dir.path().join("raft"),
                driver_placement: placement,
                ..group_config("")
            };
            let r = RaftReplicator::start(cfg, log).await.unwrap();
            assert_eq!(r.failure(), None);
            r.control.send(Control::Panic).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let why = loop {
                if let Some(why) = r.failure() {
                    break why;
                }
                assert!(Instant::now() < deadline, "{placement:?}: no failure recorded after the driver panicked");
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert!(why.contains("raft driver panicked: the driver was told to panic"), "{placement:?}: {why}");
            // Bounded here: the replicator keeps no timer of its own.
            let answer = tokio::time::timeout(Duration::from_secs(5), r.propose(vec![Bytes::from_static(b"after")]));
            match answer.await {
                Ok(Err(ReplicationError::Storage(e))) => assert!(e.contains("panicked"), "{placement:?}: {e}"),
                other => panic!("{placement:?}: a proposal after the panic got {other:?}"),
            }
        }
    }

    #[test]
    fn a_blocking_step_runs_on_any_runtime_and_outside_one() {
        for shared in [false, true] {
            assert_eq!(blocking(shared, || 1), 1);
            let current = tokio::runtime::Builder::new_current_thread().build().unwrap();
            assert_eq!(current.block_on(async { blocking(shared, || 2) }), 2);
            let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
            // Shared, on a worker: block_in_place (it panics on a current-thread runtime, hence
            // the check); own: in place.
            assert_eq!(multi.block_on(async { tokio::spawn(async move { blocking(shared, || 3) }).await.unwrap() }), 3);
        }
    }
}

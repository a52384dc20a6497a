//! Replication runtime: how a proposed batch of commitlog payloads becomes *committed*.
//!
//! The broker core never writes the commitlog itself. It hands encoded records (opaque
//! payload bytes, one commitlog entry each) to a [`Replicator`], which
//! - assigns them contiguous entry indexes and appends them to the local `CommitLog`,
//! - makes them durable on enough nodes (one node for [`standalone::StandaloneReplicator`],
//!   a Raft majority for the Raft replicator),
//! - advances the commit index published on [`Replicator::committed`].
//!
//! The core applies entries `applied+1 ..= commit` from the local commitlog into the derived
//! state (consume queues, topic configs, consumer offsets), the same way on a leader and on a
//! follower, which is what makes queue offsets identical on every replica. It applies from
//! the replicator's [`CommitHook`] when the replicator calls one (both of ours do), else from
//! an apply loop watching `committed`.
//!
//! Contract every implementation keeps (asserted by the core's apply step):
//! - the value on `committed()` never decreases and never exceeds the local last entry index;
//! - every entry `<= committed` is readable from the local commitlog and will never change;
//! - `propose` returns only after *all* of its entries are committed, with their index range;
//!   on error, none of the batch is acknowledged (it may still commit later: a client retry
//!   can then duplicate, as in RocketMQ — at-least-once).

pub mod idle_poll;
pub mod raft_group;
mod raft_hard_state;
pub mod raft_log;
pub mod raft_transport;
pub mod standalone;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::latency_histogram::LatencyHistogram;

/// Raft / commitlog entry index. Entry indexes start at 1; 0 means "nothing".
pub type EntryIndex = u64;
/// Raft term. Standalone brokers stay in term 0.
pub type Term = u64;

/// Called by a replicator on its own thread each time its commit index advances, with the
/// new commit index, *before* it publishes that index on [`Replicator::committed`] and answers
/// the proposals it covers. The broker core applies there, so a proposer wakes once, to an
/// entry already applied, and no apply thread wakes per commit (on a small VM each thread
/// wake-up costs tens of microseconds of CPU). It runs on the replication critical path: it
/// must be short and must never wait for a lock.
pub type CommitHook = Arc<dyn Fn(EntryIndex) + Send + Sync>;

/// Upper bound on entries in one `propose` call: bounds memory held per call and the size
/// of one group commit.
pub const PROPOSE_ENTRIES_MAX: usize = 4096;

/// What this node is in its replication group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Single node, no replication (`enableDLegerCommitLog = false`): always writable.
    Standalone,
    Leader,
    Follower,
    Candidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "STANDALONE",
            Role::Leader => "LEADER",
            Role::Follower => "FOLLOWER",
            Role::Candidate => "CANDIDATE",
        }
    }

    /// Whether proposals are accepted on this node.
    pub fn is_writable(self) -> bool {
        matches!(self, Role::Standalone | Role::Leader)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replication progress of one peer as seen by this node (meaningful on a leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// DLedger id, e.g. `n1`.
    pub id: String,
    /// Raft peer address, `host:port`.
    pub address: String,
    /// Highest entry index known to be replicated on that peer.
    pub match_index: EntryIndex,
    /// Milliseconds since the last successful exchange with the peer; `None` if never.
    pub last_contact_ms: Option<u64>,
}

/// A snapshot of the replication state, for admin status, metrics and routing decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// This node's id (`dLegerSelfId`, or the broker name when standalone).
    pub self_id: String,
    pub role: Role,
    pub term: Term,
    /// Id of the current leader, if known (`Some(self_id)` when standalone).
    pub leader_id: Option<String>,
    /// Highest committed entry index.
    pub commit_index: EntryIndex,
    /// Highest entry index in the local commitlog (may exceed `commit_index`).
    pub last_index: EntryIndex,
    /// Other members of the group (empty when standalone).
    pub peers: Vec<PeerStatus>,
}

/// Errors of the replication layer. Each says whether the caller may retry elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// This node cannot accept proposals; retry on the leader.
    #[error("not the leader (leader: {})", leader_id.as_deref().unwrap_or("unknown"))]
    NotLeader { leader_id: Option<String> },
    /// The batch breaks a limit (entry count, bytes); retrying the same batch cannot succeed.
    #[error("proposal rejected: {0}")]
    Rejected(String),
    /// The entries could not be written or flushed to the local commitlog.
    #[error("commitlog write failed: {0}")]
    Storage(String),
    /// The replicator is stopping or stopped.
    #[error("replicator is shutting down")]
    ShuttingDown,
    /// Leadership transfer failed or is not possible.
    #[error("leadership transfer failed: {0}")]
    Transfer(String),
}

/// Entries `first ..= last` committed by one `propose` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedRange {
    pub first: EntryIndex,
    pub last: EntryIndex,
    /// Term the entries were written in.
    pub term: Term,
}

impl CommittedRange {
    pub fn indexes(&self) -> RangeInclusive<EntryIndex> {
        self.first..=self.last
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Where the time of a successful proposal goes on the leader, one histogram per stage.
/// Beside the client-service send latency (`wasmq_send_latency_seconds`) it tells a
/// replication round from the time before and after it; the stages add up to one
/// `propose` call.
#[derive(Default)]
pub struct ProposeLatency {
    /// From `propose` to the driver appending the entries: the proposal channel, the
    /// driver's wake-up and its current round, and any wait behind the uncommitted-entries
    /// limit.
    pub queued: LatencyHistogram,
    /// From the append to the answer: the followers' round trip, the group flush, and the
    /// commit hook (which applies the entries).
    pub replicated: LatencyHistogram,
    /// From the answer to the proposer running again: its task's wake-up.
    pub resumed: LatencyHistogram,
}

impl ProposeLatency {
    /// Records one proposal from its four instants, in order.
    pub fn record(&self, submitted: Instant, appended: Instant, answered: Instant, resumed: Instant) {
        self.queued.record(appended.saturating_duration_since(submitted));
        self.replicated.record(answered.saturating_duration_since(appended));
        self.resumed.record(resumed.saturating_duration_since(answered));
    }
}

/// The replication runtime the broker core writes through. See the module docs for the
/// contract.
#[async_trait]
pub trait Replicator: Send + Sync + 'static {
    /// Appends `payloads` (one commitlog entry each, in order, contiguous indexes) and returns
    /// once all of them are committed. `payloads` is non-empty and at most
    /// [`PROPOSE_ENTRIES_MAX`] long. No timer of its own: the caller bounds the wait (one
    /// deadline per send, covering apply too); a dropped call may still commit later.
    async fn propose(&self, payloads: Vec<Bytes>) -> Result<CommittedRange, ReplicationError>;

    /// Current replication state. Cheap: no I/O.
    fn status(&self) -> ReplicationStatus;

    /// This member's role: `status().role` without copying the rest (the send path asks
    /// on every message).
    fn role(&self) -> Role {
        self.status().role
    }

    /// Watch of the commit index (highest committed entry index). Never decreases.
    fn committed(&self) -> watch::Receiver<EntryIndex>;

    /// Why replication stopped for good (fail-stop on a storage error: a failed append,
    /// flush or hard-state write; or on a panic in the Raft driver), if it did. Such a member takes no further part in its
    /// group until it is restarted.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Installs the hook called on every commit advance (the first install wins). Returns
    /// whether this replicator calls it; one that does not (the default) leaves applying to
    /// a watcher of [`Replicator::committed`].
    fn set_commit_hook(&self, hook: CommitHook) -> bool {
        let _ = hook;
        false
    }

    /// The stages of this member's successful proposals, if it times them (a Raft group
    /// does; a standalone store appends in the caller's task and has no stages).
    fn propose_latency(&self) -> Option<&ProposeLatency> {
        None
    }

    /// The runtime this member's Raft driver runs on, if it has one of its own thread:
    /// client connections placed there reach the driver without crossing threads.
    fn driver_runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }

    /// Asks the leader to hand leadership to `target_id` (RocketMQ's `preferredLeaderId`,
    /// `mqadmin` leader transfer). Returns once the transfer is done or has failed.
    async fn transfer_leadership(&self, target_id: &str) -> Result<(), ReplicationError>;

    /// Graceful stop: refuse new proposals, finish or fail those in flight, flush the
    /// commitlog. Idempotent.
    async fn shutdown(&self) -> Result<(), ReplicationError>;
}

//! Tunables of one Raft node. Every queue and batch has a limit here.

use bytes::Bytes;

use crate::NodeId;

/// Configuration of a [`crate::RaftNode`]. Defaults aim at ~1 s failover on a LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// Leader heartbeat period; also the probe retry period for lagging followers.
    pub heartbeat_interval_ms: u64,
    /// Election timeouts are drawn uniformly from `[min, max)` at every reset, so that
    /// split votes resolve quickly.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Pre-vote (Raft thesis §9.6): a node only increments its term after a majority says it
    /// could win, so a partitioned node does not inflate terms and disrupt the group.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority for `election_timeout_min_ms` steps down;
    /// followers that heard from a leader within that time refuse (pre-)votes.
    pub check_quorum: bool,
    /// Upper bound on payload bytes in one append message (at least one entry is always
    /// sent, so an entry larger than this travels alone).
    pub append_batch_bytes_max: usize,
    /// Upper bound on entries in one append message.
    pub append_batch_entries_max: usize,
    /// Pipelining window per follower: unacknowledged append messages …
    pub inflight_batches_max: usize,
    /// … and unacknowledged payload bytes.
    pub inflight_bytes_max: usize,
    /// A pipelined follower that acknowledged nothing for this long is probed again from
    /// its match index (covers a lost tail message).
    pub append_retransmit_ms: u64,
    /// Entries appended by the leader but not yet committed; proposals beyond are refused
    /// (back-pressure instead of unbounded memory on followers that cannot keep up).
    pub uncommitted_entries_max: u64,
    /// Entries in one `propose` call.
    pub propose_entries_max: usize,
    /// Payload bytes of one entry.
    pub entry_bytes_max: usize,
    /// Messages waiting in the outbox between two `take_ready` calls; beyond, messages are
    /// dropped (Raft tolerates loss) and counted.
    pub outbox_messages_max: usize,
    /// Leader transfer gives up if the target has not taken over within this time.
    pub transfer_timeout_ms: u64,
    /// DLedger `preferredLeaderId`: a leader that is not this node hands leadership to it
    /// once it is caught up.
    pub preferred_leader_id: Option<NodeId>,
    /// After a failed transfer to the preferred leader, wait this long before trying again.
    pub preferred_leader_retry_ms: u64,
    /// Bound on the backwards scan a follower does to find where a conflicting term starts.
    pub conflict_scan_entries_max: u64,
    /// Payload of the no-op entry a new leader appends (so that entries of earlier terms can
    /// commit). The application must recognise and skip it; the broker uses its record
    /// codec's no-op record. Empty by default.
    pub noop_entry: Bytes,
    /// Seed for the election timeout randomisation (the runtime passes real entropy; the
    /// simulation passes a derived seed so runs replay).
    pub rng_seed: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1200,
            pre_vote: true,
            check_quorum: true,
            append_batch_bytes_max: 1 << 20,
            append_batch_entries_max: 1024,
            inflight_batches_max: 16,
            inflight_bytes_max: 8 << 20,
            append_retransmit_ms: 400,
            uncommitted_entries_max: 100_000,
            propose_entries_max: 4096,
            entry_bytes_max: 8 << 20,
            outbox_messages_max: 16_384,
            transfer_timeout_ms: 1000,
            preferred_leader_id: None,
            preferred_leader_retry_ms: 5000,
            conflict_scan_entries_max: 4096,
            noop_entry: Bytes::new(),
            rng_seed: 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid raft config: {0}")]
    Invalid(String),
}

impl RaftConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError::Invalid(why.to_string()));
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms must be > 0");
        }
        if self.election_timeout_min_ms < 2 * self.heartbeat_interval_ms {
            return bad("election_timeout_min_ms must be at least 2 x heartbeat_interval_ms");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad("election_timeout_max_ms must be > election_timeout_min_ms");
        }
        if self.append_batch_bytes_max == 0 || self.append_batch_entries_max == 0 {
            return bad("append batch limits must be > 0");
        }
        if self.inflight_batches_max == 0 || self.inflight_bytes_max == 0 {
            return bad("inflight limits must be > 0");
        }
        if self.append_retransmit_ms == 0 || self.transfer_timeout_ms == 0 {
            return bad("retransmit and transfer timeouts must be > 0");
        }
        if self.uncommitted_entries_max == 0 || self.propose_entries_max == 0 {
            return bad("proposal limits must be > 0");
        }
        if self.entry_bytes_max == 0 || self.outbox_messages_max == 0 {
            return bad("entry_bytes_max and outbox_messages_max must be > 0");
        }
        if self.conflict_scan_entries_max == 0 {
            return bad("conflict_scan_entries_max must be > 0");
        }
        Ok(())
    }
}

//! The Raft state machine of one group member.
//!
//! Roles: Follower → (election timeout) PreCandidate → (pre-vote majority) Candidate →
//! (vote majority) Leader. Replication follows DLedger: the leader probes a follower until
//! the match point is found (compare, using the follower's conflict hints), the follower
//! truncates its divergent tail and appends; then appends are pipelined in byte-capped
//! batches within a per-follower window.
//!
//! Durability: followers acknowledge separately what they *appended* (`match_index`, drives
//! the pipeline) and what they *flushed* (`durable_index`, counts towards commit); the leader
//! counts itself only up to its own flushed index. So a committed entry is on the disks of a
//! majority, whatever crashes later.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, info, warn};

use crate::progress::{PeerProgress, Progress, ProgressState};
use crate::{ConfigError, Entry, Message, NodeId, RaftConfig, RaftLog};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// What must be on disk before any message of the same [`Ready`] is sent: a vote or an
/// acknowledgement given in a term must survive a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub voted_for: Option<NodeId>,
}

/// Output of the node since the last [`RaftNode::take_ready`]. Persist `hard_state` (when
/// `Some`) first, then send `messages`.
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub messages: Vec<(NodeId, Message)>,
}

/// Entries accepted by the leader. They are acknowledged once `commit_index() >=
/// range.end - 1` *and* the log still holds them in `term` (otherwise a new leader replaced
/// them and they are lost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub range: Range<u64>,
    pub term: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("too many uncommitted entries ({uncommitted} + {proposed} > {max})")]
    Backpressure { uncommitted: u64, proposed: usize, max: u64 },
    #[error("invalid proposal: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {0} is not a member of the group")]
    UnknownTarget(NodeId),
    #[error("a transfer to node {0} is already in progress")]
    InProgress(NodeId),
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError<E: std::error::Error + 'static> {
    /// The log failed; the node's state can no longer be trusted (fail-stop).
    #[error("raft log: {0}")]
    Log(#[source] E),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    deadline_ms: u64,
    timeout_now_sent: bool,
}

pub struct RaftNode<L: RaftLog> {
    id: NodeId,
    /// All members including this node, sorted.
    voters: Vec<NodeId>,
    peers: Vec<NodeId>,
    config: RaftConfig,
    log: L,
    rng: ChaCha8Rng,

    term: u64,
    voted_for: Option<NodeId>,
    hard_state_dirty: bool,

    role: Role,
    leader_id: Option<NodeId>,
    commit: u64,
    /// Highest index known flushed locally.
    flushed: u64,
    /// Follower: highest index known to match the current leader's log (>= commit).
    verified: u64,
    /// Follower: last durable index acknowledged to the current leader.
    durable_acked: u64,

    now_ms: u64,
    election_deadline_ms: u64,
    heartbeat_due_ms: u64,
    last_leader_contact_ms: Option<u64>,
    became_leader_ms: u64,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    transfer: Option<Transfer>,
    preferred_retry_after_ms: u64,

    outbox: Vec<(NodeId, Message)>,
    dropped_messages: u64,
}

type NodeResult<L> = Result<(), RaftError<<L as RaftLog>::Error>>;

impl<L: RaftLog> RaftNode<L> {
    /// Starts (or restarts) a member from its persisted hard state and log. Everything in
    /// `log` is taken as flushed (a reopened log holds what reached the disk).
    pub fn new(
        id: NodeId,
        voters: &[NodeId],
        config: RaftConfig,
        hard_state: HardState,
        log: L,
        now_ms: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut sorted = voters.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != voters.len() {
            return Err(ConfigError::Invalid("duplicate voter id".into()));
        }
        if !sorted.contains(&id) {
            return Err(ConfigError::Invalid(format!("node {id} is not in the voter list")));
        }
        let peers = sorted.iter().copied().filter(|&p| p != id).collect();
        // A crash between flushing the log and persisting the hard state can leave entries
        // of a newer term; adopting that term (with no vote) is safe.
        let (term, voted_for) = if log.last_term() > hard_state.term {
            (log.last_term(), None)
        } else {
            (hard_state.term, hard_state.voted_for)
        };
        let commit = log.first_index().saturating_sub(1);
        let flushed = log.last_index();
        let seed = config.rng_seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut node = RaftNode {
            id,
            voters: sorted,
            peers,
            config,
            log,
            rng: ChaCha8Rng::seed_from_u64(seed),
            term,
            voted_for,
            hard_state_dirty: term != hard_state.term,
            role: Role::Follower,
            leader_id: None,
            commit,
            flushed,
            verified: commit,
            durable_acked: 0,
            now_ms,
            election_deadline_ms: now_ms,
            heartbeat_due_ms: now_ms,
            last_leader_contact_ms: None,
            became_leader_ms: now_ms,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            transfer: None,
            preferred_retry_after_ms: now_ms,
            outbox: Vec::new(),
            dropped_messages: 0,
        };
        node.reset_election_timer();
        Ok(node)
    }

    // ---- accessors -------------------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.term
    }
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn commit_index(&self) -> u64 {
        self.commit
    }
    pub fn flushed_index(&self) -> u64 {
        self.flushed
    }
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for }
    }
    pub fn config(&self) -> &RaftConfig {
        &self.config
    }
    pub fn log(&self) -> &L {
        &self.log
    }
    /// For the runtime's flush (and nothing that changes entries).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }
    pub fn into_log(self) -> L {
        self.log
    }
    /// Messages dropped because the outbox was full.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped_messages
    }
    /// Target of the leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|t| t.target)
    }
    /// Per-follower replication progress (empty unless leader).
    pub fn progress(&self) -> Vec<PeerProgress> {
        self.progress
            .iter()
            .map(|(&id, p)| PeerProgress {
                id,
                match_index: p.match_index,
                durable_index: p.durable_index,
                next_index: p.next_index,
                replicating: p.state == ProgressState::Replicate,
                last_heard_ms: p.last_heard_ms,
            })
            .collect()
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    // ---- inputs ----------------------------------------------------------------------

    /// Advances the clock (monotonic milliseconds): elections, heartbeats, retransmits,
    /// check-quorum, transfer timeouts, preferred leader.
    pub fn tick(&mut self, now_ms: u64) -> NodeResult<L> {
        assert!(now_ms >= self.now_ms, "clock went backwards: {now_ms} < {}", self.now_ms);
        self.now_ms = now_ms;
        if self.role != Role::Leader {
            if now_ms >= self.election_deadline_ms {
                if self.config.pre_vote {
                    self.campaign_pre()?;
                } else {
                    self.campaign(false)?;
                }
            }
            return Ok(());
        }
        if self.config.check_quorum && now_ms - self.became_leader_ms >= self.config.election_timeout_min_ms {
            let horizon = now_ms.saturating_sub(self.config.election_timeout_min_ms);
            let active = 1 + self.progress.values().filter(|p| p.last_heard_ms.is_some_and(|t| t >= horizon)).count();
            if active < self.quorum() {
                info!(id = self.id, term = self.term, active, "leader lost contact with a majority, stepping down");
                self.become_follower(self.term, None);
                return Ok(());
            }
        }
        if let Some(t) = self.transfer
            && now_ms >= t.deadline_ms
        {
            warn!(id = self.id, target = t.target, "leadership transfer timed out");
            if Some(t.target) == self.config.preferred_leader_id {
                self.preferred_retry_after_ms = now_ms + self.config.preferred_leader_retry_ms;
            }
            self.transfer = None;
        }
        let retransmit_ms = self.config.append_retransmit_ms;
        let mut stalled = Vec::new();
        for (&id, p) in self.progress.iter_mut() {
            if p.state == ProgressState::Replicate
                && !p.inflight.is_empty()
                && now_ms - p.last_progress_ms >= retransmit_ms
            {
                p.become_probe(p.match_index + 1);
                stalled.push(id);
            }
        }
        for id in stalled {
            self.send_append(id)?;
        }
        if now_ms >= self.heartbeat_due_ms {
            self.heartbeat_due_ms = now_ms + self.config.heartbeat_interval_ms;
            for i in 0..self.peers.len() {
                let peer = self.peers[i];
                self.send(peer, Message::Heartbeat { term: self.term, commit: self.commit });
                let p = self.progress.get_mut(&peer).expect("progress for every peer");
                if p.state == ProgressState::Probe {
                    p.probe_sent = false;
                }
                self.send_append(peer)?;
            }
            self.maybe_transfer_to_preferred();
        }
        Ok(())
    }

    /// Handles one message from `from`. Unknown senders and malformed messages are dropped.
    pub fn step(&mut self, from: NodeId, msg: Message) -> NodeResult<L> {
        if from == self.id || !self.peers.contains(&from) {
            warn!(id = self.id, from, "message from a non-member dropped");
            return Ok(());
        }
        if let Err(why) = self.validate(&msg) {
            warn!(id = self.id, from, why, "malformed message dropped");
            return Ok(());
        }
        let msg_term = msg.term();
        if msg_term > self.term {
            match &msg {
                Message::PreVote { .. } | Message::PreVoteResponse { granted: true, .. } => {}
                Message::Vote { transfer: false, .. } if self.in_lease() => {
                    debug!(id = self.id, from, "vote refused: leader lease");
                    self.send(from, Message::VoteResponse { term: self.term, granted: false });
                    return Ok(());
                }
                Message::Append { .. } | Message::Heartbeat { .. } => self.become_follower(msg_term, Some(from)),
                _ => self.become_follower(msg_term, None),
            }
        } else if msg_term < self.term {
            // Tell a stale sender about the newer term so it steps down.
            let term = self.term;
            match msg {
                Message::Append { .. } | Message::Heartbeat { .. } => self.send(from, reject(term, 0, 0, 0)),
                Message::PreVote { .. } => self.send(from, Message::PreVoteResponse { term, granted: false }),
                Message::Vote { .. } => self.send(from, Message::VoteResponse { term, granted: false }),
                _ => {}
            }
            return Ok(());
        }
        match msg {
            Message::PreVote { term, last_index, last_term } => {
                let granted = term > self.term && self.log_up_to_date(last_index, last_term) && !self.in_lease();
                let term = if granted { term } else { self.term };
                self.send(from, Message::PreVoteResponse { term, granted });
            }
            Message::PreVoteResponse { term, granted } => {
                if self.role == Role::PreCandidate && term == self.term + 1 {
                    self.votes.insert(from, granted);
                    if self.granted_votes() >= self.quorum() {
                        self.campaign(false)?;
                    }
                }
            }
            Message::Vote { last_index, last_term, .. } => {
                let can_vote = self.voted_for.is_none_or(|v| v == from)
                    && self.role != Role::Leader
                    && (self.leader_id.is_none() || self.voted_for == Some(from));
                let granted = can_vote && self.log_up_to_date(last_index, last_term);
                if granted {
                    if self.voted_for != Some(from) {
                        self.voted_for = Some(from);
                        self.hard_state_dirty = true;
                    }
                    self.reset_election_timer();
                }
                self.send(from, Message::VoteResponse { term: self.term, granted });
            }
            Message::VoteResponse { granted, .. } => {
                if self.role == Role::Candidate {
                    self.votes.insert(from, granted);
                    if self.granted_votes() >= self.quorum() {
                        self.become_leader()?;
                    }
                }
            }
            Message::Append { prev_index, prev_term, entries, commit, .. } => {
                self.follow(from);
                self.handle_append(from, prev_index, prev_term, entries, commit)?;
            }
            Message::Heartbeat { commit, .. } => {
                self.follow(from);
                self.advance_follower_commit(commit);
                self.ack(from);
            }
            Message::AppendResponse {
                success,
                match_index,
                durable_index,
                reject_prev_index,
                hint_index,
                hint_term,
                ..
            } => {
                if self.role == Role::Leader {
                    if success {
                        self.handle_append_success(from, match_index, durable_index)?;
                    } else {
                        self.handle_append_reject(from, reject_prev_index, hint_index, hint_term)?;
                    }
                }
            }
            Message::TimeoutNow { .. } => {
                if self.role == Role::Follower && self.leader_id == Some(from) {
                    info!(id = self.id, term = self.term, "leadership transfer: starting election now");
                    self.campaign(true)?;
                }
            }
        }
        Ok(())
    }

    /// Appends `data` (one entry each) on the leader.
    pub fn propose(&mut self, data: &[Bytes]) -> Result<Proposal, RaftError<L::Error>> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader_id }.into());
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress.into());
        }
        if data.is_empty() || data.len() > self.config.propose_entries_max {
            return Err(ProposeError::Invalid(format!(
                "{} entries, expected 1..={}",
                data.len(),
                self.config.propose_entries_max
            ))
            .into());
        }
        for d in data {
            if d.is_empty() {
                return Err(ProposeError::Invalid("empty entries are not allowed".into()).into());
            }
            if d.len() > self.config.entry_bytes_max {
                return Err(ProposeError::Invalid(format!(
                    "entry of {} bytes exceeds {}",
                    d.len(),
                    self.config.entry_bytes_max
                ))
                .into());
            }
        }
        let uncommitted = self.log.last_index() - self.commit;
        if uncommitted + data.len() as u64 > self.config.uncommitted_entries_max {
            return Err(ProposeError::Backpressure {
                uncommitted,
                proposed: data.len(),
                max: self.config.uncommitted_entries_max,
            }
            .into());
        }
        let range = self.log.append_leader(self.term, data).map_err(RaftError::Log)?;
        assert_eq!(range.end - range.start, data.len() as u64, "log appended a different count");
        assert_eq!(range.end - 1, self.log.last_index());
        for i in 0..self.peers.len() {
            self.send_append(self.peers[i])?;
        }
        Ok(Proposal { range, term: self.term })
    }

    /// The runtime flushed the log up to `index` (group fsync).
    pub fn on_flushed(&mut self, index: u64) -> NodeResult<L> {
        assert!(index <= self.log.last_index(), "flushed {index} beyond last index {}", self.log.last_index());
        if index <= self.flushed {
            return Ok(());
        }
        self.flushed = index;
        match (self.role, self.leader_id) {
            (Role::Leader, _) => self.maybe_commit()?,
            (Role::Follower, Some(leader)) if self.flushed.min(self.verified) > self.durable_acked => self.ack(leader),
            _ => {}
        }
        Ok(())
    }

    /// Hands leadership to `to` once it is caught up (TimeoutNow). Proposals are refused
    /// until the transfer completes or times out.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader_id });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.peers.contains(&to) {
            return Err(TransferError::UnknownTarget(to));
        }
        if let Some(t) = self.transfer {
            return if t.target == to { Ok(()) } else { Err(TransferError::InProgress(t.target)) };
        }
        info!(id = self.id, to, term = self.term, "leadership transfer started");
        self.transfer = Some(Transfer {
            target: to,
            deadline_ms: self.now_ms + self.config.transfer_timeout_ms,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// Hard state to persist and messages to send, in that order.
    pub fn take_ready(&mut self) -> Ready {
        let hard_state = if self.hard_state_dirty {
            self.hard_state_dirty = false;
            Some(self.hard_state())
        } else {
            None
        };
        Ready { hard_state, messages: std::mem::take(&mut self.outbox) }
    }

    // ---- elections -------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        let timeout = self.rng.random_range(self.config.election_timeout_min_ms..self.config.election_timeout_max_ms);
        self.election_deadline_ms = self.now_ms + timeout;
    }

    /// Whether this node believes a leader is alive, so (non-transfer) votes are refused.
    fn in_lease(&self) -> bool {
        if !self.config.check_quorum {
            return false;
        }
        match self.role {
            Role::Leader => true,
            _ => {
                self.leader_id.is_some()
                    && self
                        .last_leader_contact_ms
                        .is_some_and(|t| self.now_ms - t < self.config.election_timeout_min_ms)
            }
        }
    }

    fn log_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        let (my_index, my_term) = (self.log.last_index(), self.log.last_term());
        last_term > my_term || (last_term == my_term && last_index >= my_index)
    }

    fn granted_votes(&self) -> usize {
        self.votes.values().filter(|&&g| g).count()
    }

    fn campaign_pre(&mut self) -> NodeResult<L> {
        debug!(id = self.id, term = self.term, "pre-vote campaign");
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.progress.clear();
        self.transfer = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.granted_votes() >= self.quorum() {
            return self.campaign(false);
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for i in 0..self.peers.len() {
            self.send(self.peers[i], Message::PreVote { term: self.term + 1, last_index, last_term });
        }
        Ok(())
    }

    fn campaign(&mut self, transfer: bool) -> NodeResult<L> {
        self.term += 1;
        info!(id = self.id, term = self.term, transfer, "election campaign");
        self.voted_for = Some(self.id);
        self.hard_state_dirty = true;
        self.role = Role::Candidate;
        self.leader_id = None;
        self.progress.clear();
        self.transfer = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.reset_election_timer();
        if self.granted_votes() >= self.quorum() {
            return self.become_leader();
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for i in 0..self.peers.len() {
            self.send(self.peers[i], Message::Vote { term: self.term, last_index, last_term, transfer });
        }
        Ok(())
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.hard_state_dirty = true;
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.last_leader_contact_ms = leader.map(|_| self.now_ms);
        // Entries up to commit are in every future leader's log, so they always match.
        self.verified = self.commit;
        self.durable_acked = 0;
        self.progress.clear();
        self.transfer = None;
        self.votes.clear();
        self.reset_election_timer();
    }

    /// A leader message in the current term: follow its sender.
    fn follow(&mut self, from: NodeId) {
        assert!(
            self.role != Role::Leader,
            "node {} got a leader message from {from} in its own term {}",
            self.id,
            self.term
        );
        if let Some(l) = self.leader_id {
            assert_eq!(l, from, "two leaders in term {}", self.term);
        }
        if self.role != Role::Follower || self.leader_id.is_none() {
            self.become_follower(self.term, Some(from));
        }
        self.last_leader_contact_ms = Some(self.now_ms);
        self.reset_election_timer();
    }

    fn become_leader(&mut self) -> NodeResult<L> {
        assert_eq!(self.role, Role::Candidate);
        info!(id = self.id, term = self.term, last_index = self.log.last_index(), "became leader");
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.became_leader_ms = self.now_ms;
        self.transfer = None;
        self.votes.clear();
        let next = self.log.last_index() + 1;
        self.progress = self.peers.iter().map(|&p| (p, Progress::new(next, self.now_ms))).collect();
        // The no-op lets entries of earlier terms commit (only current-term entries are
        // committed by counting).
        let range =
            self.log.append_leader(self.term, std::slice::from_ref(&self.config.noop_entry)).map_err(RaftError::Log)?;
        assert_eq!(range, next..next + 1);
        self.heartbeat_due_ms = self.now_ms + self.config.heartbeat_interval_ms;
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            self.send(peer, Message::Heartbeat { term: self.term, commit: self.commit });
            self.send_append(peer)?;
        }
        self.maybe_commit()
    }

    // ---- replication: leader side ----------------------------------------------------

    /// Sends what the window allows to `peer`: one probe, or pipelined batches.
    fn send_append(&mut self, peer: NodeId) -> NodeResult<L> {
        let last = self.log.last_index();
        let mut out = Vec::new();
        {
            let p = self.progress.get_mut(&peer).expect("progress for every peer");
            loop {
                match p.state {
                    ProgressState::Probe if p.probe_sent => break,
                    ProgressState::Probe => {}
                    ProgressState::Replicate => {
                        if p.next_index > last
                            || p.inflight.len() >= self.config.inflight_batches_max
                            || p.inflight_bytes >= self.config.inflight_bytes_max
                        {
                            break;
                        }
                    }
                }
                assert!(p.next_index >= 1 && p.next_index <= last + 1);
                let prev_index = p.next_index - 1;
                let Some(prev_term) = self.log.term_at(prev_index).map_err(RaftError::Log)? else {
                    // No snapshot transfer: a follower this far behind needs an operator.
                    warn!(
                        id = self.id,
                        peer,
                        prev_index,
                        first = self.log.first_index(),
                        "follower needs entries removed by retention"
                    );
                    break;
                };
                let entries = if p.next_index <= last {
                    self.log
                        .entries(p.next_index, self.config.append_batch_bytes_max, self.config.append_batch_entries_max)
                        .map_err(RaftError::Log)?
                } else {
                    Vec::new()
                };
                assert!(p.next_index > last || !entries.is_empty(), "log returned no entries");
                assert!(entries.len() <= self.config.append_batch_entries_max);
                let count = entries.len() as u64;
                let bytes: usize = entries.iter().map(|e| e.data.len()).sum();
                out.push(Message::Append { term: self.term, prev_index, prev_term, entries, commit: self.commit });
                match p.state {
                    ProgressState::Probe => {
                        p.probe_sent = true;
                        break;
                    }
                    ProgressState::Replicate => {
                        if p.inflight.is_empty() {
                            p.last_progress_ms = self.now_ms;
                        }
                        p.inflight.push_back((prev_index + count, bytes));
                        p.inflight_bytes += bytes;
                        p.next_index = prev_index + count + 1;
                    }
                }
            }
        }
        for m in out {
            self.send(peer, m);
        }
        Ok(())
    }

    fn handle_append_success(&mut self, from: NodeId, match_index: u64, durable_index: u64) -> NodeResult<L> {
        let last = self.log.last_index();
        if match_index > last || durable_index > match_index {
            warn!(id = self.id, from, match_index, durable_index, last, "impossible append response dropped");
            return Ok(());
        }
        let now = self.now_ms;
        let p = self.progress.get_mut(&from).expect("progress for every peer");
        p.last_heard_ms = Some(now);
        if match_index > p.match_index {
            p.match_index = match_index;
            p.last_progress_ms = now;
        }
        p.durable_index = p.durable_index.max(durable_index).min(p.match_index);
        p.ack_through(p.match_index);
        match p.state {
            ProgressState::Probe => p.become_replicate(now),
            ProgressState::Replicate => p.next_index = p.next_index.max(p.match_index + 1),
        }
        self.maybe_commit()?;
        self.maybe_send_timeout_now();
        self.send_append(from)
    }

    fn handle_append_reject(
        &mut self,
        from: NodeId,
        reject_prev_index: u64,
        hint_index: u64,
        hint_term: u64,
    ) -> NodeResult<L> {
        let now = self.now_ms;
        let p = self.progress.get_mut(&from).expect("progress for every peer");
        p.last_heard_ms = Some(now);
        let stale = match p.state {
            // Replicate starts after the match point; an older rejection is from the probe
            // phase (or a follower that lost unflushed entries, which the next append finds).
            ProgressState::Replicate => reject_prev_index <= p.match_index,
            ProgressState::Probe => reject_prev_index + 1 != p.next_index,
        };
        if stale || reject_prev_index == 0 {
            return Ok(());
        }
        if reject_prev_index <= p.match_index {
            // The follower lost entries it had appended but not flushed (crash/restart).
            let lost_from = hint_index.max(1);
            if lost_from <= p.durable_index {
                warn!(id = self.id, from, lost_from, durable = p.durable_index, "follower lost durable entries");
            }
            p.match_index = p.match_index.min(lost_from - 1);
            p.durable_index = p.durable_index.min(p.match_index);
        }
        let _ = hint_term; // the hint index already points at the start of the conflicting term
        let next = hint_index.clamp(p.match_index + 1, reject_prev_index.max(p.match_index + 1));
        debug!(id = self.id, from, reject_prev_index, hint_index, next, "follower diverges, probing");
        p.become_probe(next);
        self.send_append(from)
    }

    /// Commits the highest index durable on a majority, if it is from the current term.
    fn maybe_commit(&mut self) -> NodeResult<L> {
        assert_eq!(self.role, Role::Leader);
        let mut durable: Vec<u64> = self.progress.values().map(|p| p.durable_index).collect();
        durable.push(self.flushed);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = durable[self.quorum() - 1];
        if candidate > self.commit && self.log.term_at(candidate).map_err(RaftError::Log)? == Some(self.term) {
            assert!(candidate <= self.log.last_index());
            self.commit = candidate;
        }
        Ok(())
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else { return };
        if t.timeout_now_sent {
            return;
        }
        let caught_up = self.progress.get(&t.target).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            info!(id = self.id, target = t.target, "transfer target caught up, sending TimeoutNow");
            self.transfer = Some(Transfer { timeout_now_sent: true, ..t });
            self.send(t.target, Message::TimeoutNow { term: self.term });
        }
    }

    fn maybe_transfer_to_preferred(&mut self) {
        let Some(preferred) = self.config.preferred_leader_id else { return };
        if preferred == self.id
            || !self.peers.contains(&preferred)
            || self.transfer.is_some()
            || self.now_ms < self.preferred_retry_after_ms
        {
            return;
        }
        let horizon = self.now_ms.saturating_sub(self.config.election_timeout_min_ms);
        let ready = self
            .progress
            .get(&preferred)
            .is_some_and(|p| p.match_index == self.log.last_index() && p.last_heard_ms.is_some_and(|t| t >= horizon));
        if ready {
            info!(id = self.id, preferred, "handing leadership to the preferred leader");
            let _ = self.transfer_leadership(preferred);
        }
    }

    // ---- replication: follower side --------------------------------------------------

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: u64,
        prev_term: u64,
        mut entries: Vec<Entry>,
        leader_commit: u64,
    ) -> NodeResult<L> {
        let mut prev_index = prev_index;
        let mut prev_term = prev_term;
        // Entries at or below our commit index already match (Leader Completeness).
        if prev_index < self.commit {
            let skip = (entries.len() as u64).min(self.commit - prev_index) as usize;
            entries.drain(..skip);
            prev_index += skip as u64;
            if prev_index < self.commit {
                self.advance_follower_commit(leader_commit);
                self.ack(from);
                return Ok(());
            }
            prev_term = self.log.term_at(prev_index).map_err(RaftError::Log)?.expect("term of committed entry");
        }
        let last = self.log.last_index();
        if prev_index > last {
            self.send(from, reject(self.term, prev_index, last + 1, 0));
            return Ok(());
        }
        let my_prev_term =
            self.log.term_at(prev_index).map_err(RaftError::Log)?.expect("prev_index >= commit >= first-1");
        if my_prev_term != prev_term {
            // Find where our conflicting term starts so the leader skips it in one step.
            let mut hint = prev_index;
            let floor = (self.commit + 1).max(prev_index.saturating_sub(self.config.conflict_scan_entries_max));
            while hint > floor && self.log.term_at(hint - 1).map_err(RaftError::Log)? == Some(my_prev_term) {
                hint -= 1;
            }
            self.send(from, reject(self.term, prev_index, hint, my_prev_term));
            return Ok(());
        }
        let mut append_from = entries.len();
        for (i, e) in entries.iter().enumerate() {
            if e.index > self.log.last_index() {
                append_from = i;
                break;
            }
            if self.log.term_at(e.index).map_err(RaftError::Log)? != Some(e.term) {
                assert!(e.index > self.commit, "truncating committed entry {} (commit {})", e.index, self.commit);
                debug!(id = self.id, from = e.index, "truncating divergent tail");
                self.log.truncate_from(e.index).map_err(RaftError::Log)?;
                self.flushed = self.flushed.min(e.index - 1);
                append_from = i;
                break;
            }
        }
        if append_from < entries.len() {
            self.log.append_follower(&entries[append_from..]).map_err(RaftError::Log)?;
        }
        let matched = prev_index + entries.len() as u64;
        assert!(matched <= self.log.last_index());
        self.verified = self.verified.max(matched);
        self.advance_follower_commit(leader_commit);
        self.ack(from);
        Ok(())
    }

    fn advance_follower_commit(&mut self, leader_commit: u64) {
        let commit = leader_commit.min(self.verified);
        if commit > self.commit {
            assert!(commit <= self.log.last_index());
            self.commit = commit;
        }
    }

    fn ack(&mut self, leader: NodeId) {
        let durable = self.flushed.min(self.verified);
        self.durable_acked = self.durable_acked.max(durable);
        self.send(
            leader,
            Message::AppendResponse {
                term: self.term,
                success: true,
                match_index: self.verified,
                durable_index: durable,
                reject_prev_index: 0,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    // ---- plumbing --------------------------------------------------------------------

    fn send(&mut self, to: NodeId, msg: Message) {
        if self.outbox.len() >= self.config.outbox_messages_max {
            self.dropped_messages += 1;
            return;
        }
        self.outbox.push((to, msg));
    }

    fn validate(&self, msg: &Message) -> Result<(), &'static str> {
        if let Message::Append { term, prev_index, prev_term, entries, commit } = msg {
            if prev_term > term {
                return Err("prev_term above term");
            }
            let mut last_term = *prev_term;
            for (i, e) in entries.iter().enumerate() {
                if e.index != prev_index + 1 + i as u64 {
                    return Err("entries not contiguous");
                }
                if e.term < last_term || e.term > *term {
                    return Err("entry term out of order");
                }
                last_term = e.term;
            }
            if entries.len() > self.config.append_batch_entries_max.max(1) * 4 {
                return Err("too many entries");
            }
            let _ = commit;
        }
        Ok(())
    }
}

fn reject(term: u64, reject_prev_index: u64, hint_index: u64, hint_term: u64) -> Message {
    Message::AppendResponse {
        term,
        success: false,
        match_index: 0,
        durable_index: 0,
        reject_prev_index,
        hint_index,
        hint_term,
    }
}

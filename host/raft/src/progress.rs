//! The leader's view of one follower: how far it matches, and the pipelined window of
//! append messages in flight to it.

use std::collections::VecDeque;

use crate::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Match point unknown: one append at a time, from `next_index`, until it is accepted
    /// (DLedger's "compare" phase).
    Probe,
    /// Match point known: appends are pipelined, `next_index` advances optimistically.
    Replicate,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub match_index: u64,
    pub durable_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    pub probe_sent: bool,
    /// (last index, payload bytes) of each unacknowledged append, oldest first.
    pub inflight: VecDeque<(u64, usize)>,
    pub inflight_bytes: usize,
    /// Any response in the current term (check-quorum, lag metrics).
    pub last_heard_ms: Option<u64>,
    /// Last time `match_index` advanced or the window was (re)started (retransmit timer).
    pub last_progress_ms: u64,
}

impl Progress {
    pub fn new(next_index: u64, now_ms: u64) -> Self {
        Progress {
            match_index: 0,
            durable_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            last_heard_ms: None,
            last_progress_ms: now_ms,
        }
    }

    pub fn become_probe(&mut self, next_index: u64) {
        assert!(next_index > self.match_index, "probe below match");
        self.state = ProgressState::Probe;
        self.next_index = next_index;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub fn become_replicate(&mut self, now_ms: u64) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.last_progress_ms = now_ms;
    }

    /// Drops acknowledged messages from the window.
    pub fn ack_through(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
    }
}

/// Replication progress of one follower, as exposed for status and lag metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    /// Highest index known to match the leader's log on that follower.
    pub match_index: u64,
    /// Highest index known flushed there (what counts towards commit).
    pub durable_index: u64,
    pub next_index: u64,
    /// Whether appends are pipelined (match point found) or probing.
    pub replicating: bool,
    /// Simulated/runtime clock value of the last response in the current term.
    pub last_heard_ms: Option<u64>,
}

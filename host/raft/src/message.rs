//! Messages between group members. The runtime maps them 1:1 onto its wire format; entry
//! payloads are opaque bytes and are never re-encoded.

use bytes::Bytes;

/// One log entry. Its `data` is opaque to Raft; the leader's no-op entry carries
/// [`crate::RaftConfig::noop_entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Would you vote for me in `term`?" (`term` is the sender's term + 1; nobody changes
    /// term because of it).
    PreVote {
        term: u64,
        last_index: u64,
        last_term: u64,
    },
    /// `term` is the requested term when granted, the responder's term when refused.
    PreVoteResponse {
        term: u64,
        granted: bool,
    },
    /// `transfer`: sent after `TimeoutNow`, so voters ignore their leader lease.
    Vote {
        term: u64,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResponse {
        term: u64,
        granted: bool,
    },
    /// Entries `prev_index+1 ..` (contiguous, possibly none) and the leader's commit index.
    Append {
        term: u64,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// Answer to `Append` and `Heartbeat`.
    /// - `success`: `match_index` is the highest index known to match the leader's log,
    ///   `durable_index <= match_index` the highest of those flushed to disk (only durable
    ///   entries count towards commit).
    /// - refused: `reject_prev_index` echoes the append's `prev_index`; the follower's hint
    ///   is `hint_index` (first index of conflicting term `hint_term`, or its last index + 1
    ///   when `hint_term == 0`).
    AppendResponse {
        term: u64,
        success: bool,
        match_index: u64,
        durable_index: u64,
        reject_prev_index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    Heartbeat {
        term: u64,
        commit: u64,
    },
    /// Leader transfer: "start an election now, skipping pre-vote".
    TimeoutNow {
        term: u64,
    },
}

impl Message {
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteResponse { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteResponse { term, .. }
            | Message::Append { term, .. }
            | Message::AppendResponse { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }

    /// Payload bytes carried (for byte-capped windows and simulation accounting).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Message::Append { entries, .. } => entries.iter().map(|e| e.data.len()).sum(),
            _ => 0,
        }
    }
}

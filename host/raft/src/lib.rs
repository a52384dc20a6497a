//! DLedger-style Raft as a sans-IO state machine.
//!
//! [`RaftNode`] owns no sockets, threads, clocks or files: the runtime feeds it time
//! ([`RaftNode::tick`]), peer messages ([`RaftNode::step`]), client proposals
//! ([`RaftNode::propose`]) and flush completions ([`RaftNode::on_flushed`]), and drains a
//! [`Ready`] (hard state to persist, then messages to send). The log is behind the
//! [`RaftLog`] trait so the broker can make its commitlog *be* the Raft log.
//!
//! The [`sim`] module drives N nodes through a seeded deterministic simulation (clock,
//! lossy network, partitions, crashes that lose unflushed entries) and checks the Raft
//! safety properties plus liveness after healing.

mod config;
mod log;
mod message;
mod node;
mod progress;
pub mod sim;

pub use config::{ConfigError, RaftConfig};
pub use log::{MemLog, MemLogError, RaftLog};
pub use message::{Entry, Message};
pub use node::{HardState, Proposal, ProposeError, RaftError, RaftNode, Ready, Role, TransferError};
pub use progress::PeerProgress;

/// Identifier of a group member. The runtime maps it to an address (DLedger's `n0`, `n1`…).
pub type NodeId = u64;

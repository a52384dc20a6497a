//! Upgrading a non-replicated cluster (one broker, or a master with slaves, all with
//! `enableDLegerCommitLog = false`) to a Raft group, offline, as RocketMQ's DLedger upgrade
//! guide does it: stop the brokers, check, copy, start the group.
//!
//! - [`log_scan`]: read-only reading of a stopped node's commitlog (no recovery writes).
//! - [`divergence`]: range checksums on a common grid, bisection to the first differing entry.
//! - [`plan`]: `upgradeCheck` — summaries, divergence, source choice, config checks,
//!   upgrade-validator plugins.
//! - [`apply`]: `upgrade` (stage, verify, back up, swap; all or nothing) and `upgradeFinish`
//!   (drop backups once the new group has committed past the old end).
//! - [`cli`]: the `mqadmin upgradeCheck | upgrade | upgradeFinish` commands.
//! - [`config_change`]: rolling config changes — a broker restarted with a changed config asks
//!   the validators before it opens its store.
//! - [`validators`]: running a plugin directory's upgrade-validator plugins outside a broker.

pub mod apply;
pub mod cli;
pub mod config_change;
pub mod divergence;
pub mod log_scan;
pub mod plan;
pub mod validators;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Usage(String),
    #[error("config {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("reading the commitlog of node {node}: {why}")]
    Scan { node: String, why: String },
    #[error("upgrade-validator plugins: {0}")]
    Plugins(String),
    #[error("upgrade refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("{path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("copied commitlog does not match the source: {0}")]
    Verify(String),
    #[error("not finished yet: {0}")]
    NotYet(String),
}

//! Disk protection, once a second on a background task:
//! - `diskMaxUsedSpaceRatio`: above it, retention deletes the oldest segments (even ones
//!   some consumer group has not read) until the file system is back under the ratio;
//! - `diskSpaceWarningLevelRatio` (RocketMQ's default 90 %): above it, sends are refused
//!   until space is back, so the commitlog never fills the disk;
//! - `fileReservedTime`: every [`RETENTION_EVERY_TICKS`] ticks, segments older than that
//!   are deleted (sparing unconsumed messages, see `wasmq_storage::retention`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use wasmq_storage::retention::RetentionPolicy;

use super::BrokerCore;
use super::status::DiskStatus;
use crate::replication::Role;

const TICK_MS: u64 = 1_000;
/// Age-based retention runs once a minute; the disk ratio is checked every tick.
pub const RETENTION_EVERY_TICKS: u64 = 60;
/// Settings of the guard, from the broker config.
#[derive(Clone, Copy, Debug)]
pub struct DiskLimits {
    pub max_used_percent: u32,
    /// Sends are refused at or above this used percent.
    pub full_percent: u32,
    pub file_reserved_time_hours: u64,
}

pub(super) async fn run(core: Arc<BrokerCore>, mut stop: watch::Receiver<bool>) {
    let limits = core.options.disk;
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        tick += 1;
        let disk = core.disk_status();
        if disk.fs_total_bytes == 0 {
            continue; // statvfs failed; nothing to decide on
        }
        let full = disk.fs_used_percent >= limits.full_percent;
        if core.disk_full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::error!(
                    used_percent = disk.fs_used_percent,
                    limit = limits.full_percent,
                    "disk full: refusing sends until space is freed"
                );
            } else {
                tracing::info!(used_percent = disk.fs_used_percent, "disk below the full mark again; accepting sends");
            }
        }
        let budget = commit_log_budget(&disk, limits.max_used_percent);
        if budget.is_none() && tick % RETENTION_EVERY_TICKS != 0 {
            continue;
        }
        let policy = RetentionPolicy {
            file_reserved_time_hours: limits.file_reserved_time_hours,
            disk_budget_bytes: budget,
            keep_from_index_min: core.raft_keep_from_index(),
        };
        let store = core.store.clone();
        let result = tokio::task::spawn_blocking(move || store.enforce_retention(&policy, SystemTime::now())).await;
        match result {
            Ok(Ok(report)) if !report.deleted_segments.is_empty() => tracing::info!(
                deleted = report.deleted_segments.len(),
                forced = report.forced_segments.len(),
                first_index = report.first_index,
                "retention deleted commitlog segments"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task panicked"),
        }
    }
}

/// Over the ratio: the commitlog bytes to keep so that the file system gets back under it
/// (the commitlog gives up the whole excess). Under the ratio: `None` (no budget).
pub fn commit_log_budget(disk: &DiskStatus, max_used_percent: u32) -> Option<u64> {
    if disk.fs_total_bytes == 0 || disk.fs_used_percent < max_used_percent {
        return None;
    }
    let allowed = disk.fs_total_bytes / 100 * u64::from(max_used_percent);
    let used = disk.fs_total_bytes.saturating_sub(disk.fs_available_bytes);
    Some(disk.commit_log_bytes.saturating_sub(used.saturating_sub(allowed)))
}

impl BrokerCore {
    /// On a Raft leader: entries a follower still lacks must stay (it would otherwise need
    /// a snapshot, which wasmq does not have).
    fn raft_keep_from_index(&self) -> Option<u64> {
        let status = self.replicator.status();
        if status.role != Role::Leader {
            return None;
        }
        status.peers.iter().map(|p| p.match_index + 1).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(total: u64, available: u64, commit_log: u64) -> DiskStatus {
        DiskStatus {
            commit_log_bytes: commit_log,
            segments: 1,
            fs_total_bytes: total,
            fs_available_bytes: available,
            fs_used_percent: ((total - available) * 100 / total) as u32,
        }
    }

    #[test]
    fn no_budget_under_the_ratio() {
        assert_eq!(commit_log_budget(&disk(1000, 300, 500), 75), None);
        assert_eq!(commit_log_budget(&DiskStatus::default(), 75), None);
    }

    #[test]
    fn budget_frees_exactly_the_excess() {
        // 900 of 1000 used, 750 allowed: the 600-byte commitlog must shrink to 450.
        assert_eq!(commit_log_budget(&disk(1000, 100, 600), 75), Some(450));
        // Excess larger than the commitlog: keep nothing deletable.
        assert_eq!(commit_log_budget(&disk(1000, 0, 100), 75), Some(0));
    }
}

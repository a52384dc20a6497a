//! Retention: delete whole commitlog segments, oldest first, when they are older than
//! `file_reserved_time_hours` or when the log exceeds its disk budget.
//!
//! Rules, in order:
//! 1. The segment holding the last entry is never deleted, nor any segment holding entries
//!    not yet applied to the consume queues (`index > applied_index`), nor any at or after
//!    `keep_from_index_min` (e.g. what Raft still has to send to a lagging follower).
//! 2. Age-based deletion spares segments holding messages some consumer group has not
//!    consumed yet (its committed offset points into or before them).
//! 3. The disk budget overrides rule 2: such a segment is deleted anyway, with a warning.
//!
//! Afterwards every consume queue drops the files that only point below the new log start
//! and moves its minimum offset up.

use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::store::MessageStore;

/// RocketMQ's `fileReservedTime` default.
pub const FILE_RESERVED_TIME_HOURS_DEFAULT: u64 = 72;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub file_reserved_time_hours: u64,
    /// Most bytes of commitlog segments to keep (None: no budget).
    pub disk_budget_bytes: Option<u64>,
    /// Never delete entries at or after this index (Raft's needs).
    pub keep_from_index_min: Option<u64>,
}

impl Default for RetentionPolicy {
    fn default() -> RetentionPolicy {
        RetentionPolicy {
            file_reserved_time_hours: FILE_RESERVED_TIME_HOURS_DEFAULT,
            disk_budget_bytes: None,
            keep_from_index_min: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: Vec<u64>,
    pub first_index: u64,
    /// Segments deleted although a consumer group still had unconsumed messages in them.
    pub forced_segments: Vec<u64>,
    pub cq_files_deleted: usize,
}

impl MessageStore {
    /// Apply `policy` as of `now`.
    pub fn enforce_retention(&self, policy: &RetentionPolicy, now: SystemTime) -> Result<RetentionReport> {
        // Apply is paused and no checkpoint runs: the consume queues and applied index hold
        // still meanwhile, and no checkpoint copies extents from before the deletion.
        let _locks = self.retention_guard();
        let log = self.log();
        let applied = self.applied_index();
        let infos = log.segment_infos();
        let seg = log.config().segment_size_bytes;
        let reserved = Duration::from_secs(policy.file_reserved_time_hours.saturating_mul(3600));
        let needed_pos = self.lowest_unconsumed_pos();
        let mut total_bytes: u64 = infos.iter().map(|s| s.size_bytes).sum();
        let mut report = RetentionReport::default();
        let mut keep_from = None;
        for pair in infos.windows(2) {
            let (this, next) = (&pair[0], &pair[1]);
            let Some(next_first) = next.first_index else { break };
            let expired = this.modified + reserved <= now;
            let over_budget = policy.disk_budget_bytes.is_some_and(|budget| total_bytes > budget);
            if !expired && !over_budget {
                break;
            }
            // Everything in `this` is below next_first.
            if next_first - 1 > applied || policy.keep_from_index_min.is_some_and(|k| next_first > k) {
                break;
            }
            let needed = needed_pos.is_some_and(|pos| this.base_pos + seg > pos);
            if needed {
                if !over_budget {
                    break;
                }
                tracing::warn!(
                    segment = this.base_pos,
                    "retention: disk budget forces deleting a segment with messages not yet consumed"
                );
                report.forced_segments.push(this.base_pos);
            }
            keep_from = Some(next_first);
            total_bytes -= this.size_bytes;
        }
        if let Some(keep_from) = keep_from {
            report.deleted_segments = log.delete_segments_before(keep_from)?;
            let min_pos = log.min_pos();
            for q in self.queues_snapshot() {
                report.cq_files_deleted += q.correct_min_offset(min_pos)?;
            }
        }
        report.first_index = log.first_index();
        Ok(report)
    }

    /// Lowest log position any consumer group still has to read, if any.
    fn lowest_unconsumed_pos(&self) -> Option<u64> {
        let mut lowest: Option<u64> = None;
        for (_, topic, queue_id, offset) in self.consumer_offsets() {
            if offset >= self.queue_max_offset(&topic, queue_id) {
                continue;
            }
            let from = offset.max(self.queue_min_offset(&topic, queue_id));
            if let Some(pos) = self.queue_entry_pos(&topic, queue_id, from) {
                lowest = Some(lowest.map_or(pos, |l: u64| l.min(pos)));
            }
        }
        lowest
    }
}

//! A broker's status for `mqadmin`, the name server heartbeat and metrics: replication state,
//! topics with their queue offsets, consumer offsets and disk usage. No I/O beyond statvfs.

use std::path::Path;

use super::BrokerCore;
use crate::replication::ReplicationStatus;

/// Offsets of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    pub queue_id: u32,
    pub min_offset: u64,
    /// One past the last applied message.
    pub max_offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStatus {
    pub name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub message_type: wasmq_storage::record::MessageType,
    pub queues: Vec<QueueStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerOffsetStatus {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// Disk of the commitlog.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DiskStatus {
    /// Bytes of commitlog segment files (preallocated size).
    pub commit_log_bytes: u64,
    pub segments: u64,
    pub fs_total_bytes: u64,
    pub fs_available_bytes: u64,
    /// Used share of the file system, percent (compare with `diskMaxUsedSpaceRatio`).
    pub fs_used_percent: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerStatus {
    pub cluster_name: String,
    pub broker_name: String,
    pub node_id: String,
    /// This node's client endpoint.
    pub endpoint: String,
    pub leader_endpoint: Option<String>,
    pub replication: ReplicationStatus,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub topics: Vec<TopicStatus>,
    pub consumer_offsets: Vec<ConsumerOffsetStatus>,
    pub disk: DiskStatus,
}

impl BrokerCore {
    pub fn status(&self) -> BrokerStatus {
        let mut topics: Vec<TopicStatus> = self.store.topics().into_iter().map(|t| self.topic_status_of(t)).collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let mut consumer_offsets: Vec<ConsumerOffsetStatus> = self
            .store
            .consumer_offsets()
            .into_iter()
            .map(|(group, topic, queue_id, offset)| ConsumerOffsetStatus { group, topic, queue_id, offset })
            .collect();
        consumer_offsets.sort_by(|a, b| (&a.group, &a.topic, a.queue_id).cmp(&(&b.group, &b.topic, b.queue_id)));
        BrokerStatus {
            cluster_name: self.options.cluster_name.clone(),
            broker_name: self.options.broker_name.clone(),
            node_id: self.options.node_id.clone(),
            endpoint: self.options.self_endpoint.clone(),
            leader_endpoint: self.leader_endpoint(),
            replication: self.replicator.status(),
            applied_index: self.applied_index(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            topics,
            consumer_offsets,
            disk: self.disk_status(),
        }
    }

    /// Status of one topic, `None` if it does not exist.
    pub fn topic_status(&self, name: &str) -> Option<TopicStatus> {
        self.store.topic(name).map(|t| self.topic_status_of(t))
    }

    fn topic_status_of(&self, t: wasmq_storage::record::TopicConfigRecord) -> TopicStatus {
        let queue_count = t.read_queue_nums.max(t.write_queue_nums);
        let queues = (0..queue_count)
            .map(|queue_id| {
                let (min_offset, max_offset) = self.store.queue_offsets(&t.topic, queue_id).unwrap_or((0, 0));
                QueueStatus { queue_id, min_offset, max_offset }
            })
            .collect();
        TopicStatus {
            name: t.topic,
            read_queue_nums: t.read_queue_nums,
            write_queue_nums: t.write_queue_nums,
            perm: t.perm,
            message_type: t.message_type,
            queues,
        }
    }

    pub fn disk_status(&self) -> DiskStatus {
        let segments = self.log.segment_infos();
        let (fs_total_bytes, fs_available_bytes) = fs_space(&self.log.config().dir).unwrap_or((0, 0));
        let used = fs_total_bytes.saturating_sub(fs_available_bytes);
        DiskStatus {
            commit_log_bytes: segments.iter().map(|s| s.size_bytes).sum(),
            segments: segments.len() as u64,
            fs_total_bytes,
            fs_available_bytes,
            fs_used_percent: (used * 100).checked_div(fs_total_bytes).unwrap_or(0) as u32,
        }
    }
}

/// (total, available) bytes of the file system holding `path`.
fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is a valid out-pointer for the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    // As df counts it: total = used + available, used = blocks - free. Blocks reserved
    // beyond `f_bavail` (for root, or by a thin-provisioned disk: seen here as 160 of 252 GB)
    // are neither, else a 60%-full disk looks 85% full and sends get refused.
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * frsize;
    let available = st.f_bavail as u64 * frsize;
    Some((used + available, available))
}
